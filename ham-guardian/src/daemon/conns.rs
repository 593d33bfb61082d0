//! The control socket's connections: accepted within limits, read without blocking, and
//! dropped when they hold ham's descriptors without asking anything.
//!
//! Anyone in the client group can connect, so what a connection may hold is bounded: at
//! most [`CONN_PER_UID`] open connections per unprivileged uid, at most [`CONN_MAX`] in all
//! with [`CONN_RESERVED`] of them kept for root and ham's own user, and
//! [`CONN_TIMEOUT_NS`] to send a whole request. When no descriptor is left for a new
//! connection (`EMFILE`, `ENFILE`) the listener stays readable: ham takes it out of the
//! epoll set until the next liveness tick or until a connection closes, and says so once a
//! second at most, instead of spinning on `accept`.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use rustix::event::epoll;

use super::{Daemon, Peer, Token, log, reply};
use crate::control::{MAX_REQUEST, Request, Response};

pub(super) struct Conn {
    pub(super) stream: UnixStream,
    pub(super) buf: Vec<u8>,
    pub(super) peer: Peer,
    /// When it was accepted: a request not complete `CONN_TIMEOUT_NS` later is dropped.
    pub(super) opened: u64,
}

/// Open connections in all.
pub(super) const CONN_MAX: usize = 256;
/// Of [`CONN_MAX`], kept for root and ham's user.
pub(super) const CONN_RESERVED: usize = 64;
/// Open connections per unprivileged uid.
pub(super) const CONN_PER_UID: usize = 16;
/// How long a connection may take to send its request.
pub(super) const CONN_TIMEOUT_NS: u64 = 5_000_000_000;

/// Log lines that may repeat (one per refused connection, say) are written at most once a
/// second per kind; the next one written counts those left out.
#[derive(Default)]
pub(super) struct RateLimit {
    /// Per kind: when a line was last written, and how many were left out since.
    seen: HashMap<&'static str, (u64, u64)>,
}

impl RateLimit {
    /// `Some(left_out)` if a line of `kind` may be written at `now`.
    pub(super) fn allow(&mut self, kind: &'static str, now: u64) -> Option<u64> {
        let (last, left_out) = self.seen.entry(kind).or_insert((0, 0));
        if *last != 0 && now.saturating_sub(*last) < 1_000_000_000 {
            *left_out += 1;
            return None;
        }
        *last = now;
        Some(std::mem::take(left_out))
    }
}

impl Daemon {
    /// Writes a log line of `kind` unless one was written less than a second ago.
    pub(super) fn say_limited(&mut self, kind: &'static str, msg: std::fmt::Arguments) {
        if let Some(left_out) = self.limited.allow(kind, crate::mono_ns()) {
            if left_out > 0 {
                log(
                    &self.cfg.instance.name,
                    format_args!("{msg} ({left_out} more like it in the last second)"),
                );
            } else {
                log(&self.cfg.instance.name, msg);
            }
        }
    }

    pub(super) fn on_accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors (or memory): the pending connection stays and the
                    // listener readable. Wait for a descriptor instead of spinning.
                    self.pause_accept();
                    self.say_limited(
                        "accept",
                        format_args!(
                            "accept: {e}; new control connections wait ({} open)",
                            self.conns.len()
                        ),
                    );
                    return;
                }
            };
            // Anyone who can open the socket (mode 0660, the client group) may speak;
            // what each may ask is decided per request from these credentials.
            let peer = match rustix::net::sockopt::socket_peercred(&stream) {
                Ok(cred) => Peer {
                    pid: cred.pid.as_raw_nonzero().get(),
                    uid: cred.uid.as_raw(),
                },
                Err(e) => {
                    self.say_limited("peercred", format_args!("SO_PEERCRED: {e}"));
                    continue;
                }
            };
            if let Err(why) = self.may_connect(peer) {
                self.wrote(self.writer.bump_limit(ham_core::layout::LIMIT_CONNS));
                let _ = stream.set_write_timeout(Some(std::time::Duration::from_millis(100)));
                reply(stream, &Response::errno(libc::EAGAIN, why.clone()));
                self.say_limited(
                    "conn-refused",
                    format_args!(
                        "refused a connection from uid {} (pid {}): {why}",
                        peer.uid, peer.pid
                    ),
                );
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let id = self.next_conn;
            self.next_conn += 1;
            if epoll::add(
                &self.epoll,
                &stream,
                Token::Conn(id).data(),
                epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
            )
            .is_ok()
            {
                self.conns.insert(
                    id,
                    Conn {
                        stream,
                        buf: Vec::new(),
                        peer,
                        opened: crate::mono_ns(),
                    },
                );
                // A client writes its request right after it connects: read it now, and
                // save the loop a wake-up (if it is not there yet, epoll says when it is).
                self.on_conn(id);
            }
            if self.conns.len() >= CONN_MAX {
                // The rest wait in the listen backlog until a connection closes.
                self.pause_accept();
                return;
            }
        }
    }

    /// The connection limits, for a new connection from `peer`.
    fn may_connect(&self, peer: Peer) -> Result<(), String> {
        if peer.uid == 0 || peer.uid == self.my_uid {
            return Ok(()); // the reserve is theirs; CONN_MAX pauses accepting
        }
        let from_uid = self
            .conns
            .values()
            .filter(|c| c.peer.uid == peer.uid)
            .count();
        if from_uid >= CONN_PER_UID {
            return Err(format!(
                "uid {} has {from_uid} control connections open (at most {CONN_PER_UID})",
                peer.uid
            ));
        }
        if self.conns.len() >= CONN_MAX - CONN_RESERVED {
            return Err(format!(
                "{} control connections are open (at most {} for unprivileged users)",
                self.conns.len(),
                CONN_MAX - CONN_RESERVED
            ));
        }
        Ok(())
    }

    fn pause_accept(&mut self) {
        if !self.accept_paused {
            let _ = epoll::delete(&self.epoll, &self.listener);
            self.accept_paused = true;
        }
    }

    fn resume_accept(&mut self) {
        if self.accept_paused && self.conns.len() < CONN_MAX {
            let added = epoll::add(
                &self.epoll,
                self.listener.as_fd(),
                Token::Listen.data(),
                epoll::EventFlags::IN,
            );
            self.accept_paused = added.is_err();
        }
    }

    /// At each liveness tick: drops connections that have not sent a whole request in
    /// [`CONN_TIMEOUT_NS`], and listens again if accepting was paused.
    pub(super) fn sweep_conns(&mut self, now: u64) {
        let stale: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| now.saturating_sub(c.opened) > CONN_TIMEOUT_NS)
            .map(|(&id, _)| id)
            .collect();
        for id in &stale {
            if let Some(c) = self.conns.remove(id) {
                let _ = epoll::delete(&self.epoll, &c.stream);
            }
        }
        if !stale.is_empty() {
            self.say_limited(
                "conn-timeout",
                format_args!(
                    "closed {} control connection(s) that sent no request in {} s",
                    stale.len(),
                    CONN_TIMEOUT_NS / 1_000_000_000
                ),
            );
        }
        self.resume_accept();
    }

    pub(super) fn on_conn(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let mut chunk = [0u8; 1024];
        let mut closed = false;
        loop {
            match conn.stream.read(&mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
            if conn.buf.len() > MAX_REQUEST {
                break;
            }
        }
        let line_end = conn.buf.iter().position(|&b| b == b'\n');
        if line_end.is_none() && !closed && conn.buf.len() <= MAX_REQUEST {
            return; // wait for the rest of the line
        }
        let conn = self.conns.remove(&id).expect("present above");
        let _ = epoll::delete(&self.epoll, &conn.stream);
        self.resume_accept();
        let _ = conn.stream.set_nonblocking(false);
        let _ = conn
            .stream
            .set_write_timeout(Some(std::time::Duration::from_secs(1)));
        let Some(end) = line_end else {
            if !conn.buf.is_empty() {
                reply(
                    conn.stream,
                    &Response::err(format!(
                        "request is not one line of at most {MAX_REQUEST} bytes"
                    )),
                );
            }
            return;
        };
        match serde_json::from_slice::<Request>(&conn.buf[..end]) {
            Ok(req) => self.handle(req, conn.stream, conn.peer),
            Err(e) => reply(conn.stream, &Response::err(format!("bad request: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RateLimit;

    #[test]
    fn a_repeated_line_is_written_once_a_second_with_a_count() {
        let s = 1_000_000_000;
        let mut r = RateLimit::default();
        assert_eq!(r.allow("a", 5 * s), Some(0));
        assert_eq!(r.allow("a", 5 * s + 1), None);
        assert_eq!(r.allow("a", 5 * s + 2), None);
        assert_eq!(r.allow("b", 5 * s + 3), Some(0), "kinds are apart");
        assert_eq!(r.allow("a", 6 * s + 1), Some(2));
        assert_eq!(r.allow("a", 6 * s + 2), None);
    }
}
