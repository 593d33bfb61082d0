//! The proc connector (netlink): exit statuses of processes ham did not start.

use super::*;

/// The netlink process-events connector: the kernel's multicast of every process's exit,
/// with its wait status. Needs CAP_NET_ADMIN. ham listens only while it supervises
/// processes that are not its children (after a takeover or a warm start).
pub struct ProcConnector {
    fd: OwnedFd,
}

impl ProcConnector {
    pub fn open() -> io::Result<Self> {
        // SAFETY: socket() has no memory preconditions; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                NETLINK_CONNECTOR,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; all-zero is valid.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = libc::CN_IDX_PROC;
        // SAFETY: addr is a valid sockaddr_nl and its size is passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // nlmsghdr + cn_msg{idx, val, seq, ack, len, flags} + PROC_CN_MCAST_LISTEN.
        let total = NLMSG_HDRLEN + CN_MSG_LEN + 4;
        let mut msg = Vec::with_capacity(total);
        msg.extend_from_slice(&(total as u32).to_ne_bytes()); // nlmsg_len
        msg.extend_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes()); // nlmsg_type
        msg.extend_from_slice(&0u16.to_ne_bytes()); // nlmsg_flags
        msg.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_seq
        msg.extend_from_slice(&std::process::id().to_ne_bytes()); // nlmsg_pid
        msg.extend_from_slice(&libc::CN_IDX_PROC.to_ne_bytes()); // cb_id.idx
        msg.extend_from_slice(&1u32.to_ne_bytes()); // cb_id.val (CN_VAL_PROC)
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&0u32.to_ne_bytes()); // ack
        msg.extend_from_slice(&4u16.to_ne_bytes()); // len
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&1u32.to_ne_bytes()); // PROC_CN_MCAST_LISTEN
        rustix::io::write(&fd, &msg)?;
        Ok(Self { fd })
    }

    /// Reads every queued event and keeps the exits of the pids in `wanted`
    /// (pid → wait status).
    pub fn drain(&self, wanted: impl Fn(i32) -> bool, out: &mut HashMap<i32, i32>) {
        let mut buf = [0u8; 8192];
        loop {
            let n = match rustix::io::read(&self.fd, &mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return, // EAGAIN, or ENOBUFS after an overrun
            };
            let mut off = 0;
            while off + NLMSG_HDRLEN <= n {
                let len = u32_at(&buf, off) as usize;
                if len < NLMSG_HDRLEN || off + len > n {
                    break;
                }
                let ev = off + NLMSG_HDRLEN + CN_MSG_LEN;
                if ev + 32 <= off + len && u32_at(&buf, ev) == PROC_EVENT_EXIT {
                    let pid = u32_at(&buf, ev + 16) as i32;
                    let tgid = u32_at(&buf, ev + 20) as i32;
                    let code = u32_at(&buf, ev + 24) as i32;
                    if pid == tgid && wanted(pid) {
                        out.insert(pid, code);
                    }
                }
                off += (len + 3) & !3;
            }
        }
    }
}

impl AsFd for ProcConnector {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

pub(super) fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
