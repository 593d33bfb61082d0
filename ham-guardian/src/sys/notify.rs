//! sd_notify datagrams: read with their credentials and descriptors.

use super::*;

/// One datagram read from an sd_notify socket.
pub struct NotifyMessage {
    pub len: usize,
    /// The pid its credentials name (`SCM_CREDENTIALS`): the sender's own unless it is
    /// privileged.
    pub claimed_pid: Option<i32>,
    /// Descriptors that came with it (a `BARRIER=1`'s): closing them answers the barrier.
    pub fds: Vec<OwnedFd>,
}

/// Reads one datagram from `sock` without waiting (`Ok(None)`: none is there).
pub fn recv_notify(sock: impl AsFd, buf: &mut [u8]) -> io::Result<Option<NotifyMessage>> {
    // Room for credentials and a few descriptors (a barrier sends one): the kernel closes
    // any beyond without giving them to ham.
    let mut control = [0u64; 12];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty one; the fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    let n = loop {
        // SAFETY: `msg` points to `iov` (over `buf`) and `control`, all alive and writable
        // for this call.
        let n = unsafe {
            libc::recvmsg(
                sock.as_fd().as_raw_fd(),
                &raw mut msg,
                libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
            )
        };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(e),
        }
    };
    let mut out = NotifyMessage {
        len: n,
        claimed_pid: None,
        fds: Vec::new(),
    };
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled in, within
    // `msg_controllen`; each payload is read as the type its level and type say, with
    // unaligned reads; every descriptor read is new to this process and owned from here.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            let len = (*c).cmsg_len as usize - (data as usize - c as usize);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_CREDENTIALS) => {
                    let cred: libc::ucred = std::ptr::read_unaligned(data.cast());
                    out.claimed_pid = Some(cred.pid);
                }
                (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                    for k in 0..len / std::mem::size_of::<libc::c_int>() {
                        let fd: libc::c_int =
                            std::ptr::read_unaligned(data.cast::<libc::c_int>().add(k));
                        out.fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
    }
    Ok(Some(out))
}
