//! ham under a service manager that speaks sd_notify (systemd's `Type=notify`): `READY=1`
//! once the entities are started, `MAINPID=` when a Guardian takes over (the unit's main
//! process changes), `WATCHDOG=1` from the loop when the manager asked for it
//! (`WATCHDOG_USEC`), and `STOPPING=1` at a shutdown. Every message is one non-blocking
//! datagram: a manager that does not read never stalls the loop. Without `NOTIFY_SOCKET`
//! nothing here does anything.

use std::os::unix::net::{SocketAddr, UnixDatagram};

use super::*;

pub(super) struct Manager {
    sock: UnixDatagram,
    addr: SocketAddr,
    /// Half of `WATCHDOG_USEC`, and the next ping the timer waits for.
    watchdog_every: Option<u64>,
    pub(super) watchdog_next: u64,
    /// `READY=1` is still to be sent.
    pub(super) ready_pending: bool,
}

impl Manager {
    /// The manager named by `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
    pub(super) fn from_env() -> Option<Manager> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name).ok()?
            }
            None => SocketAddr::from_pathname(&path).ok()?,
        };
        let sock = UnixDatagram::unbound().ok()?;
        sock.set_nonblocking(true).ok()?;
        let watchdog_every = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&us| us > 0)
            .map(|us| us * 1000 / 2);
        Some(Manager {
            sock,
            addr,
            watchdog_every,
            watchdog_next: 0,
            ready_pending: true,
        })
    }

    fn send(&self, msg: &str) {
        let _ = self.sock.send_to_addr(msg.as_bytes(), &self.addr);
    }
}

impl Daemon {
    /// At the start of the loop: a promoted Guardian tells the manager it is the main
    /// process now; the watchdog pings begin.
    pub(super) fn systemd_begin(&mut self, promoted: bool) {
        let Some(m) = &self.systemd else {
            return;
        };
        if promoted {
            m.send(&format!(
                "MAINPID={}\nSTATUS=took over (epoch {})",
                std::process::id(),
                self.writer.epoch()
            ));
        }
        self.systemd_watchdog(mono_ns());
    }

    /// Once per turn of the loop until sent: `READY=1` when no entity is still to be
    /// started (none `starting` or `waiting`, no spawn deferred).
    pub(super) fn systemd_ready(&mut self) {
        if !self.systemd.as_ref().is_some_and(|m| m.ready_pending) || !self.deferred.is_empty() {
            return;
        }
        if self
            .entities
            .iter()
            .any(|e| matches!(e.rec.state, EntityState::Starting | EntityState::Waiting))
        {
            return;
        }
        let up = self
            .entities
            .iter()
            .filter(|e| e.rec.state == EntityState::Running)
            .count();
        if let Some(m) = &mut self.systemd {
            m.ready_pending = false;
            m.send(&format!(
                "READY=1\nMAINPID={}\nSTATUS={up} of {} entities running",
                std::process::id(),
                self.entities.len()
            ));
        }
    }

    /// `WATCHDOG=1`, and the next one half of `WATCHDOG_USEC` on.
    pub(super) fn systemd_watchdog(&mut self, now: u64) {
        let Some(m) = &mut self.systemd else {
            return;
        };
        let Some(every) = m.watchdog_every else {
            return;
        };
        m.send("WATCHDOG=1");
        m.watchdog_next = now + every.max(1);
        let at = m.watchdog_next;
        self.schedule(at, Deadline::SystemdWatchdog);
    }

    /// At the start of a shutdown.
    pub(super) fn systemd_stopping(&self) {
        if let Some(m) = &self.systemd {
            m.send("STOPPING=1\nSTATUS=shutting down");
        }
    }
}
