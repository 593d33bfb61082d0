//! What a HAM hands its Guardian: descriptors inherited across `execve`, and a pidfd for
//! every entity process as soon as it exists (`SCM_RIGHTS` over a `SOCK_SEQPACKET` pair).
//! At a takeover the Guardian then needs no pid lookup for any process the HAM knew, and it
//! can read the exit status of one that died in the gap through the pidfd it holds.

use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd, RawFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// The Guardian's end of the socket pair.
pub const FD_SOCKET: RawFd = 3;
/// A memfd holding the configuration text the HAM runs.
pub const FD_CONFIG: RawFd = 4;
/// The control socket's listener, so requests queue through a takeover.
pub const FD_LISTENER: RawFd = 5;
/// The sd_notify datagram socket, so notifications are not lost in a takeover.
pub const FD_NOTIFY: RawFd = 6;
/// The hardware watchdog (`[watchdog]` only), so a takeover never closes it.
pub const FD_WATCHDOG: RawFd = 7;

/// The `pid` of a message that carries an entity's output pipe (`output = "log"`): its read
/// end, or its write end. The Guardian holds both, so that a takeover never leaves the pipe
/// without a reader and its successor can give new processes the same pipe.
pub const PIPE_READ: i32 = -1;
pub const PIPE_WRITE: i32 = -2;

/// The `pid` of a message that carries the HAM's bell (the eventfd SDK clients ring,
/// `ClientHeader::bell_id`): the successor listens on the same one, so clients' bells keep
/// working through a takeover.
pub const BELL: i32 = -3;

/// Where [`recv_all`] files the bell (no slot or pipe key is ever all ones).
pub const BELL_KEY: u32 = u32::MAX;

/// Where [`recv_all`] files the end `end` ([`PIPE_READ`] or [`PIPE_WRITE`]) of slot
/// `slot`'s pipe (slots are below 2^30).
pub fn pipe_key(slot: u32, end: i32) -> u32 {
    slot | if end == PIPE_READ { 1 << 31 } else { 1 << 30 }
}

/// One message: slot, pid, start time (16 bytes), with the pidfd attached.
const MSG_LEN: usize = 16;

/// A pidfd the HAM handed over, with what it was for.
pub struct Passed {
    pub pid: i32,
    pub start_time: u64,
    pub pidfd: OwnedFd,
}

/// Sends one entity's pidfd. Non-blocking: a Guardian that does not read must not stall
/// the HAM.
pub fn send(
    sock: &OwnedFd,
    slot: u32,
    pid: i32,
    start_time: u64,
    pidfd: impl AsFd,
) -> io::Result<()> {
    let mut msg = [0u8; MSG_LEN];
    msg[0..4].copy_from_slice(&slot.to_ne_bytes());
    msg[4..8].copy_from_slice(&pid.to_ne_bytes());
    msg[8..16].copy_from_slice(&start_time.to_ne_bytes());
    let fds = [pidfd.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    anc.push(SendAncillaryMessage::ScmRights(&fds));
    rustix::net::sendmsg(
        sock,
        &[io::IoSlice::new(&msg)],
        &mut anc,
        SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// The Guardian's side of its liveness: one byte each turn of its timer, the other way
/// along the same socket pair. Non-blocking; a full socket (a HAM that does not read, i.e.
/// a stopped one) drops it.
pub fn beat(sock: &OwnedFd) {
    let _ = rustix::net::send(sock, &[1], SendFlags::DONTWAIT | SendFlags::NOSIGNAL);
}

/// The HAM's side: reads every beat its Guardian sent; whether there was one.
pub fn drain_beats(sock: &OwnedFd) -> bool {
    let mut any = false;
    let mut buf = [0u8; 16];
    loop {
        match rustix::net::recv(sock, &mut buf, RecvFlags::DONTWAIT) {
            Ok((0, _)) => return any,
            Ok(_) => any = true,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return any,
        }
    }
}

/// Receives every queued message into `into` (newest per slot wins; an output pipe's ends
/// under [`pipe_key`]). Returns `false` once the HAM's end is closed.
pub fn recv_all(sock: &OwnedFd, into: &mut HashMap<u32, Passed>) -> bool {
    loop {
        let mut msg = [0u8; MSG_LEN];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut anc = RecvAncillaryBuffer::new(&mut space);
        let r = rustix::net::recvmsg(
            sock,
            &mut [io::IoSliceMut::new(&mut msg)],
            &mut anc,
            RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
        );
        let n = match r {
            Ok(r) => r.bytes,
            Err(rustix::io::Errno::AGAIN) => return true,
            // The HAM closed its end with bytes of ours unread (a beat): the kernel reports
            // ECONNRESET once, before what is still queued. What is queued must be read:
            // taking the error for the end would drop the pidfds and output pipes in flight,
            // and an entity's pipe would lose its last reader.
            Err(rustix::io::Errno::INTR | rustix::io::Errno::CONNRESET) => continue,
            Err(_) => return false,
        };
        let mut fd = None;
        for m in anc.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = m {
                for f in fds {
                    fd.get_or_insert(f);
                }
            }
        }
        if n == 0 && fd.is_none() {
            return false; // end of stream
        }
        let (Some(pidfd), MSG_LEN) = (fd, n) else {
            continue; // malformed: ignore it
        };
        let slot = u32::from_ne_bytes(msg[0..4].try_into().expect("4 bytes"));
        let pid = i32::from_ne_bytes(msg[4..8].try_into().expect("4 bytes"));
        let start_time = u64::from_ne_bytes(msg[8..16].try_into().expect("8 bytes"));
        let key = match pid {
            PIPE_READ | PIPE_WRITE => pipe_key(slot, pid),
            BELL => BELL_KEY,
            _ => slot,
        };
        into.insert(
            key,
            Passed {
                pid,
                start_time,
                // Held for as long as its process lives, here and in a promoted HAM: out of
                // the way of what each new child needs (see `sys::high_fd`).
                pidfd: crate::sys::high_fd(pidfd),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfds_cross_the_pair() {
        let (a, b) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let me = rustix::process::pidfd_open(
            rustix::process::getpid(),
            rustix::process::PidfdFlags::empty(),
        )
        .unwrap();
        send(&a, 7, 1234, 99, &me).unwrap();
        send(&a, 7, 1235, 100, &me).unwrap();
        send(&a, 2, 42, 1, &me).unwrap();
        let mut got = HashMap::new();
        assert!(recv_all(&b, &mut got));
        assert_eq!(got.len(), 2);
        assert_eq!((got[&7].pid, got[&7].start_time), (1235, 100));
        drop(a);
        assert!(!recv_all(&b, &mut got));
    }

    /// A HAM killed before it read its Guardian's beat: the Guardian's first read reports
    /// ECONNRESET, and everything the HAM sent is still queued behind it.
    #[test]
    fn what_was_sent_is_received_after_the_ham_died_with_a_beat_unread() {
        let (ham, guardian) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
            None,
        )
        .unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        send(&ham, 3, PIPE_READ, 0, &r).unwrap();
        send(&ham, 3, PIPE_WRITE, 0, &w).unwrap();
        beat(&guardian);
        drop(ham);
        drop(r);
        let mut got = HashMap::new();
        assert!(!recv_all(&guardian, &mut got), "the HAM's end is closed");
        assert_eq!(got.len(), 2);
        // The read end received is the pipe's: a write still finds a reader.
        assert!(got.contains_key(&pipe_key(3, PIPE_READ)));
        assert_eq!(rustix::io::write(&w, b"x"), Ok(1));
    }
}
