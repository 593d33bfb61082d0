//! The proc connector (netlink): exit statuses of processes ham did not start. Safe code
//! only: rustix opens and binds the socket, and the kernel's messages are parsed as bytes.

use super::*;
use rustix::net::{AddressFamily, SocketFlags, SocketType, netlink, socket_with};

/// `enum proc_cn_mcast_op`'s `PROC_CN_MCAST_LISTEN`, `CN_IDX_PROC`/`CN_VAL_PROC`
/// (`linux/cn_proc.h`, `linux/connector.h`).
const PROC_CN_MCAST_LISTEN: u32 = 1;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
/// `what` of a `struct proc_event` for an exit.
const PROC_EVENT_EXIT: u32 = 0x8000_0000;
/// `struct nlmsghdr` and `struct cn_msg` (without its payload).
const NLMSG_HDRLEN: usize = 16;
const CN_MSG_LEN: usize = 20;
const NLMSG_DONE: u16 = 3;

/// The netlink process-events connector: the kernel's multicast of every process's exit,
/// with its wait status. Needs CAP_NET_ADMIN. ham listens only while it supervises
/// processes that are not its children (after a takeover or a warm start).
pub struct ProcConnector {
    fd: OwnedFd,
}

impl ProcConnector {
    pub fn open() -> io::Result<Self> {
        let fd = socket_with(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            Some(netlink::CONNECTOR),
        )?;
        rustix::net::bind(&fd, &netlink::SocketAddrNetlink::new(0, CN_IDX_PROC))?;
        // Exits only, where the kernel filters (Linux ≥ 6.6): otherwise every fork and exec
        // on the box would wake the HAM too.
        let exits_only = kernel::at_least(6, 6);
        rustix::io::write(&fd, &listen_message(std::process::id(), exits_only))?;
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
            for (pid, status) in exits(&buf[..n]) {
                if wanted(pid) {
                    out.insert(pid, status);
                }
            }
        }
    }
}

/// `nlmsghdr` + `cn_msg { id: {idx, val}, seq, ack, len, flags }` + `PROC_CN_MCAST_LISTEN`,
/// and with `exits_only` the event filter after it (`struct proc_input`, Linux ≥ 6.6: an
/// older kernel ignores a payload of that size, and would not listen at all).
fn listen_message(port: u32, exits_only: bool) -> Vec<u8> {
    let payload: u16 = if exits_only { 8 } else { 4 };
    let total = NLMSG_HDRLEN + CN_MSG_LEN + usize::from(payload);
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(&(total as u32).to_ne_bytes()); // nlmsg_len
    msg.extend_from_slice(&NLMSG_DONE.to_ne_bytes()); // nlmsg_type
    msg.extend_from_slice(&0u16.to_ne_bytes()); // nlmsg_flags
    msg.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_seq
    msg.extend_from_slice(&port.to_ne_bytes()); // nlmsg_pid
    msg.extend_from_slice(&CN_IDX_PROC.to_ne_bytes()); // id.idx
    msg.extend_from_slice(&CN_VAL_PROC.to_ne_bytes()); // id.val
    msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // ack
    msg.extend_from_slice(&payload.to_ne_bytes()); // len
    msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
    msg.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
    if exits_only {
        msg.extend_from_slice(&PROC_EVENT_EXIT.to_ne_bytes()); // proc_input.event_type
    }
    msg
}

/// The process exits (pid, wait status) in one datagram of netlink messages; thread exits
/// (pid ≠ tgid) and anything truncated or malformed are skipped.
fn exits(buf: &[u8]) -> impl Iterator<Item = (i32, i32)> + '_ {
    let mut off = 0;
    std::iter::from_fn(move || {
        while off + NLMSG_HDRLEN <= buf.len() {
            let len = u32_at(buf, off) as usize;
            if len < NLMSG_HDRLEN || off + len > buf.len() {
                return None;
            }
            let msg = &buf[off..off + len];
            off += (len + 3) & !3;
            // struct proc_event: what, cpu, timestamp_ns, then exit_proc_event's
            // process_pid, process_tgid, exit_code, exit_signal.
            let ev = NLMSG_HDRLEN + CN_MSG_LEN;
            if ev + 32 <= msg.len() && u32_at(msg, ev) == PROC_EVENT_EXIT {
                let pid = u32_at(msg, ev + 16) as i32;
                let tgid = u32_at(msg, ev + 20) as i32;
                if pid == tgid {
                    return Some((pid, u32_at(msg, ev + 24) as i32));
                }
            }
        }
        None
    })
}

impl AsFd for ProcConnector {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One netlink message carrying a `proc_event` of kind `what` for `pid`/`tgid`.
    fn event(what: u32, pid: u32, tgid: u32, code: u32) -> Vec<u8> {
        let mut m = listen_message(0, false);
        m.truncate(NLMSG_HDRLEN + CN_MSG_LEN);
        m.extend_from_slice(&what.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes()); // cpu
        m.extend_from_slice(&0u64.to_ne_bytes()); // timestamp_ns
        for w in [pid, tgid, code, 17, 0] {
            m.extend_from_slice(&w.to_ne_bytes());
        }
        let len = m.len() as u32;
        m[..4].copy_from_slice(&len.to_ne_bytes());
        m
    }

    #[test]
    fn exits_keeps_process_exits_only() {
        let mut buf = event(PROC_EVENT_EXIT, 10, 10, 0x0900);
        buf.extend(event(PROC_EVENT_EXIT, 11, 10, 0)); // a thread
        buf.extend(event(0x0000_0002, 12, 12, 0)); // an exec
        buf.extend(event(PROC_EVENT_EXIT, 13, 13, 3 << 8));
        assert_eq!(
            exits(&buf).collect::<Vec<_>>(),
            [(10, 0x0900), (13, 3 << 8)]
        );
    }

    #[test]
    fn exits_stops_at_a_malformed_length() {
        let mut buf = event(PROC_EVENT_EXIT, 10, 10, 0);
        let mut bad = event(PROC_EVENT_EXIT, 11, 11, 0);
        bad[..4].copy_from_slice(&4000u32.to_ne_bytes());
        buf.extend(bad);
        assert_eq!(exits(&buf).collect::<Vec<_>>(), [(10, 0)]);
        assert_eq!(exits(&buf[..20]).count(), 0);
    }

    #[test]
    fn listen_message_is_the_kernels_layout() {
        let m = listen_message(7, false);
        assert_eq!(m.len(), 40);
        assert_eq!(u32_at(&m, 0), 40);
        assert_eq!(u32_at(&m, 12), 7);
        assert_eq!(u32::from(u16::from_ne_bytes([m[32], m[33]])), 4);
        assert_eq!(u32_at(&m, 36), PROC_CN_MCAST_LISTEN);
        let m = listen_message(7, true);
        assert_eq!((m.len(), u32_at(&m, 0)), (44, 44));
        assert_eq!(u32::from(u16::from_ne_bytes([m[32], m[33]])), 8);
        assert_eq!(u32_at(&m, 36), PROC_CN_MCAST_LISTEN);
        assert_eq!(u32_at(&m, 40), PROC_EVENT_EXIT);
    }

    /// Every message's `what`, and the two pids a fork's or an exec's event names (the
    /// parent's and the child's, or the process's twice), in one datagram.
    fn kinds(buf: &[u8]) -> Vec<(u32, u32, u32)> {
        let mut off = 0;
        let mut out = Vec::new();
        let ev = NLMSG_HDRLEN + CN_MSG_LEN;
        while off + ev + 32 <= buf.len() {
            let len = u32_at(buf, off) as usize;
            if len < NLMSG_HDRLEN || off + len > buf.len() {
                break;
            }
            let m = &buf[off..off + len];
            if m.len() >= ev + 32 {
                out.push((u32_at(m, ev), u32_at(m, ev + 16), u32_at(m, ev + 24)));
            }
            off += (len + 3) & !3;
        }
        out
    }

    #[test]
    fn the_kernel_sends_exits_only_and_the_exit_of_a_child_arrives() {
        // Needs CAP_NET_ADMIN (root, as the other cgroup and connector tests).
        let Ok(pc) = ProcConnector::open() else {
            eprintln!("skipped: no proc connector here (not root?)");
            return;
        };
        let child = std::process::Command::new("/bin/sh")
            .args(["-c", "exit 3"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let status = child.wait_with_output().unwrap().status;
        assert_eq!(status.code(), Some(3));
        // The exit is queued by the time the child is reaped; other processes' events may
        // be there too.
        let mut seen = Vec::new();
        let mut found = None;
        let mut buf = [0u8; 8192];
        while let Ok(n) = rustix::io::read(&pc.fd, &mut buf) {
            if n == 0 {
                break;
            }
            seen.extend(kinds(&buf[..n]));
            found = found.or(exits(&buf[..n]).find(|&(p, _)| p == pid));
        }
        assert_eq!(found, Some((pid, 3 << 8)), "kinds seen: {seen:x?}");
        if kernel::at_least(6, 6) {
            // The fork and the exec of the child were not sent. (Others' events may come
            // first, unfiltered: the socket joins the group at its bind, and the filter
            // holds from the listen message on.)
            let child = pid as u32;
            assert!(
                seen.iter()
                    .all(|&(k, a, b)| k == PROC_EVENT_EXIT || (a != child && b != child)),
                "{seen:x?}"
            );
        }
    }
}
