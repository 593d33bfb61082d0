//! The control socket's connections: accepted within limits, read without blocking, and
//! dropped when they hold ham's descriptors without asking anything.
//!
//! Anyone in the client group can connect, so what a connection may hold is bounded: at
//! most [`CONN_PER_UID`] open connections per unprivileged uid, at most [`CONN_MAX`] in all
//! with [`CONN_RESERVED`] of them kept for root and ham's own user, and
//! [`CONN_TIMEOUT_NS`] to send a whole request. When no descriptor is left for a new
//! connection (`EMFILE`, `ENFILE`) the listener stays readable: ham takes it out of the
//! epoll set until the next housekeeping tick or until a connection closes, and says so once a
//! second at most, instead of spinning on `accept`.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use rustix::event::epoll;

use super::{Daemon, Peer, Token, log, reply};
use crate::control::{MAX_REQUEST, Request, Response};

pub(super) struct Conn {
    pub(super) stream: UnixStream,
    pub(super) buf: Vec<u8>,
    pub(super) peer: Peer,
    /// When it was accepted, or (a session) when its last request was whole: a request
    /// not whole `CONN_TIMEOUT_NS` later is dropped.
    pub(super) opened: u64,
    /// It asked to stay open (`Request::Session`): each request line is answered on a
    /// duplicate of it, and it is read again. Idle, it may be closed for another
    /// connection of its uid (the SDK then opens a new one).
    pub(super) session: bool,
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
        // After a restart not said yet (a cgroup's trouble while its replacement starts).
        self.say_restart();
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
            // Answers are written blocking, within a second; requests are read with
            // MSG_DONTWAIT, so the descriptor's own mode never changes.
            if stream
                .set_write_timeout(Some(std::time::Duration::from_secs(1)))
                .is_err()
            {
                continue;
            }
            let mut conn = Conn {
                stream,
                buf: Vec::new(),
                peer,
                opened: crate::mono_ns(),
                session: false,
            };
            // A client writes its request right after it connects: most often the whole
            // line is there now, and the connection never enters the epoll set.
            let closed = read_available(&mut conn);
            if request_ended(&conn, closed) {
                if let Some(conn) = self.take_requests(conn, closed) {
                    self.keep(conn);
                }
            } else {
                self.keep(conn);
            }
            if self.conns.len() >= CONN_MAX && !self.close_idle_session(None) {
                // The rest wait in the listen backlog until a connection closes.
                self.pause_accept();
                return;
            }
        }
    }

    /// Watches `conn` for its (next) request.
    fn keep(&mut self, conn: Conn) {
        let id = self.next_conn;
        self.next_conn += 1;
        if epoll::add(
            &self.epoll,
            &conn.stream,
            Token::Conn(id).data(),
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
        )
        .is_ok()
        {
            self.conns.insert(id, conn);
        }
    }

    /// Closes the session of `uid` (any uid: `None`) that has been idle longest, for a
    /// new connection: whether there was one. Its client sees the connection closed before
    /// it writes its next request, and opens a new one.
    fn close_idle_session(&mut self, uid: Option<u32>) -> bool {
        let mut idle: Vec<(u64, u64)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.session && c.buf.is_empty() && uid.is_none_or(|u| c.peer.uid == u))
            .map(|(&id, c)| (c.opened, id))
            .collect();
        idle.sort_unstable();
        // Not one whose next request is there already, unread.
        let mut peek = [0u8; 1];
        let Some(id) = idle.into_iter().map(|(_, id)| id).find(|id| {
            matches!(
                rustix::net::recv(
                    &self.conns[id].stream,
                    &mut peek,
                    rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
                ),
                Err(rustix::io::Errno::AGAIN)
            )
        }) else {
            return false;
        };
        let c = self.conns.remove(&id).expect("found above");
        let _ = epoll::delete(&self.epoll, &c.stream);
        // Every duplicate too (a request it holds): the client must not wait on it.
        let _ = c.stream.shutdown(std::net::Shutdown::Both);
        true
    }

    /// The connection limits, for a new connection from `peer`.
    fn may_connect(&mut self, peer: Peer) -> Result<(), String> {
        if peer.uid == 0 || peer.uid == self.my_uid {
            return Ok(()); // the reserve is theirs; CONN_MAX pauses accepting
        }
        let from_uid = self
            .conns
            .values()
            .filter(|c| c.peer.uid == peer.uid)
            .count();
        if from_uid >= CONN_PER_UID && !self.close_idle_session(Some(peer.uid)) {
            return Err(format!(
                "uid {} has {from_uid} control connections open (at most {CONN_PER_UID})",
                peer.uid
            ));
        }
        if self.conns.len() >= CONN_MAX - CONN_RESERVED && !self.close_idle_session(None) {
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
            self.publish_accept_paused();
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
            self.publish_accept_paused();
        }
    }

    /// Tells the Guardian whether a waiting connection is left waiting on purpose.
    fn publish_accept_paused(&mut self) {
        let flags = self.writer.segment().header().flags();
        let want = if self.accept_paused {
            flags | ham_core::layout::FLAG_ACCEPT_PAUSED
        } else {
            flags & !ham_core::layout::FLAG_ACCEPT_PAUSED
        };
        if want != flags {
            self.wrote(self.writer.set_flags(want));
        }
    }

    /// At each housekeeping tick: drops connections that have not sent a whole request in
    /// [`CONN_TIMEOUT_NS`], and listens again if accepting was paused.
    pub(super) fn sweep_conns(&mut self, now: u64) {
        let stale: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                (!c.session || !c.buf.is_empty()) && now.saturating_sub(c.opened) > CONN_TIMEOUT_NS
            })
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
        let was_empty = conn.buf.is_empty();
        let closed = read_available(conn);
        if conn.session && was_empty && !conn.buf.is_empty() {
            conn.opened = crate::mono_ns(); // a new request begins: its 5 s start now
        }
        if !request_ended(conn, closed) {
            return; // wait for the rest of the line
        }
        let conn = self.conns.remove(&id).expect("present above");
        let was_session = conn.session;
        if !was_session {
            // Answered and done (unless it asks for a session): out of the epoll set before
            // its descriptor goes to whoever answers it.
            let _ = epoll::delete(&self.epoll, &conn.stream);
        }
        match self.take_requests(conn, closed) {
            Some(conn) if was_session => {
                self.conns.insert(id, conn); // still watched under its id
            }
            Some(conn) => self.keep(conn),
            None => self.resume_accept(),
        }
    }

    /// Answers `conn`'s request (its line is whole, or will not be); a session's every
    /// whole line. Gives back a session to read again, `None` when the connection is done.
    fn take_requests(&mut self, mut conn: Conn, closed: bool) -> Option<Conn> {
        // A session ends here: out of the epoll set first (a request it holds keeps the
        // socket open, and an event for an id no longer known would come again for ever).
        let end_session = |d: &Self, c: &Conn| {
            if c.session {
                let _ = epoll::delete(&d.epoll, &c.stream);
            }
        };
        loop {
            let Some(end) = conn.buf.iter().position(|&b| b == b'\n') else {
                if conn.session && !closed && conn.buf.len() <= MAX_REQUEST {
                    return Some(conn); // the rest of the next line comes later
                }
                end_session(self, &conn);
                if !conn.buf.is_empty() {
                    reply(
                        conn.stream,
                        &Response::err(format!(
                            "request is not one line of at most {MAX_REQUEST} bytes"
                        )),
                    );
                }
                return None;
            };
            let parsed = serde_json::from_slice::<Request>(&conn.buf[..end]);
            conn.buf.drain(..=end);
            if matches!(parsed, Ok(Request::Session)) {
                conn.session = true;
            }
            if !conn.session {
                match parsed {
                    Ok(req) => self.handle(req, conn.stream, conn.peer),
                    Err(e) => reply(conn.stream, &Response::err(format!("bad request: {e}"))),
                }
                return None;
            }
            // A session: the request is answered on a duplicate, the connection stays. Its
            // client reads each answer before it asks again; one that does not would fill
            // the socket with answers until each write held the loop for its timeout.
            if crate::sys::unread_bytes(&conn.stream) > 0 {
                end_session(self, &conn);
                self.say_limited(
                    "session-unread",
                    format_args!(
                        "closed a control session of uid {} (pid {}): it asked again before \
                         reading its answers",
                        conn.peer.uid, conn.peer.pid
                    ),
                );
                return None;
            }
            conn.opened = crate::mono_ns();
            let Ok(answer_on) = conn.stream.try_clone() else {
                end_session(self, &conn); // no descriptor: closed, the client opens another
                return None;
            };
            match parsed {
                Ok(req) => self.handle(req, answer_on, conn.peer),
                Err(e) => reply(answer_on, &Response::err(format!("bad request: {e}"))),
            }
            if closed && !conn.buf.contains(&b'\n') {
                end_session(self, &conn);
                return None;
            }
        }
    }
}

/// Reads what `conn`'s peer has sent, without blocking, until its line ends or it is over
/// [`MAX_REQUEST`]: whether the peer closed (or the connection broke).
fn read_available(conn: &mut Conn) -> bool {
    let mut chunk = [0u8; 1024];
    loop {
        match rustix::net::recv(&conn.stream, &mut chunk, rustix::net::RecvFlags::DONTWAIT) {
            Ok((0, _)) => return true,
            Ok((n, _)) => {
                conn.buf.extend_from_slice(&chunk[..n]);
                if chunk[..n].contains(&b'\n') || conn.buf.len() > MAX_REQUEST {
                    return false;
                }
            }
            Err(rustix::io::Errno::AGAIN) => return false,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return true,
        }
    }
}

/// Whether `conn`'s request is as whole as it will be: its line ended, it is too long, or
/// its peer closed.
fn request_ended(conn: &Conn, closed: bool) -> bool {
    closed || conn.buf.len() > MAX_REQUEST || conn.buf.contains(&b'\n')
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
