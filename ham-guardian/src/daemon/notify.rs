//! sd_notify: the notify socket, readiness and the watchdog.

use super::*;

/// sd_notify datagrams read per loop turn at most.
pub(super) const NOTIFY_PER_TURN: usize = 64;

impl Daemon {
    /// Datagrams on the sd_notify socket: `READY=1`, `WATCHDOG=1`, `WATCHDOG_USEC=`,
    /// `STOPPING=1`, `STATUS=`, from the main process of an entity with `notify = true`
    /// (identified by the kernel-supplied credentials, as systemd's NotifyAccess=main).
    pub(super) fn on_notify(&mut self) {
        // A bounded share of each turn (the socket is level-triggered: the rest is read on
        // the next), so a flood of datagrams delays nothing else.
        for _ in 0..NOTIFY_PER_TURN {
            let mut buf = [0u8; 4096];
            let msg = match sys::recv_notify(&self.notify, &mut buf) {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(e) => {
                    self.say_limited("notify-recv", format_args!("sd_notify socket: {e}"));
                    return;
                }
            };
            let n = msg.len;
            // Who sent it: the pid its credentials name. The kernel checks it for
            // unprivileged senders; a privileged one may name another (systemd-notify names
            // its parent: see `notify_sender`).
            let Some(pid) = msg.claimed_pid else {
                continue;
            };
            // Descriptors that came with the message: closed when this message has been
            // handled, which is how a BARRIER=1 sender learns that everything it sent
            // before has been (sd_notify_barrier(3)).
            let fds = msg.fds;
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let Some(i) = self.notify_sender(pid) else {
                // Not a process this socket listens to: dropped, as systemd does, and said.
                let first = text.lines().next().unwrap_or("").chars().take(40);
                let first: String = first.collect();
                self.say_limited(
                    "notify-dropped",
                    format_args!(
                        "sd_notify message `{first}` from pid {pid} dropped: not a process \
                         of an entity with notify = true that its notify_access admits"
                    ),
                );
                continue;
            };
            let now = mono_ns();
            for line in text.lines() {
                match line.split_once('=') {
                    Some(("READY", "1")) if !self.entities[i].ready => {
                        let name = self.entities[i].cfg.name.clone();
                        say!(self, "{name}: READY=1");
                        self.on_ready(i);
                    }
                    // As systemd: a pet before READY=1 arms the watchdog too.
                    Some(("WATCHDOG", "1")) => self.pet_watchdog(i, now, None),
                    // systemd: act as if the watchdog timed out, now.
                    Some(("WATCHDOG", "trigger"))
                        if self.entities[i].rec.state == EntityState::Running =>
                    {
                        let name = self.entities[i].cfg.name.clone();
                        say!(self, "{name}: WATCHDOG=trigger");
                        self.watchdog_missed(i);
                    }
                    Some(("WATCHDOG_USEC", us)) => {
                        if let Ok(us) = us.parse::<u64>() {
                            self.pet_watchdog(i, now, Some(us.saturating_mul(1000)));
                        }
                    }
                    Some(("STOPPING", "1")) => {
                        let name = self.entities[i].cfg.name.clone();
                        say!(self, "{name}: STOPPING=1");
                    }
                    Some(("STATUS", status)) => {
                        let name = self.entities[i].cfg.name.clone();
                        self.record(i, None, "status", "status", status);
                        say!(self, "{name}: STATUS={status}");
                    }
                    _ => {}
                }
            }
            drop(fds);
        }
    }

    /// The entity whose sd_notify messages pid `pid` may send, by its `notify_access`:
    /// its main process; with `exec`, also a command ham runs for its conditions; with
    /// `all`, any process of its cgroup (or, without cgroups, a descendant of its main
    /// process).
    pub(super) fn notify_sender(&self, pid: i32) -> Option<EntityId> {
        use crate::config::NotifyAccess;
        let listening = |e: &Entity| e.cfg.notify && e.rec.state == EntityState::Running;
        if pid == std::process::id() as i32 {
            // A message that claims to be ham's own: systemd-notify (before systemd 254)
            // speaks for its parent, and ham is the parent when an entity's main process
            // execs it. It is that main process, if exactly one runs systemd-notify.
            let mut running_it = EntityId::all(self.entities.len()).filter(|&i| {
                let e = &self.entities[i];
                listening(e)
                    && std::fs::read_link(format!("/proc/{}/exe", e.rec.pid))
                        .is_ok_and(|x| x.file_name().is_some_and(|n| n == "systemd-notify"))
            });
            return match (running_it.next(), running_it.next()) {
                (Some(i), None) => Some(i),
                _ => None,
            };
        }
        if let Some(i) = self.find_entity(|e| listening(e) && e.rec.pid == pid) {
            return Some(i);
        }
        let exec = self.runs.values().find_map(|r| match &r.waiting {
            Some(Wait::Exec { pid: p, .. }) if *p == pid => Some(r.entity),
            _ => None,
        });
        if let Some(i) = exec {
            let e = &self.entities[i];
            if listening(e) && e.cfg.notify_access != NotifyAccess::Main {
                return Some(i);
            }
        }
        let all: Vec<EntityId> = EntityId::all(self.entities.len())
            .filter(|&i| {
                let e = &self.entities[i];
                listening(e) && e.cfg.notify_access == NotifyAccess::All
            })
            .collect();
        if all.is_empty() {
            return None;
        }
        if let Some(cg) = &self.cgroups {
            return all
                .into_iter()
                .find(|&i| cg.holds(&self.entities[i].cfg.name, pid));
        }
        // Up its ancestry (bounded) to a main process.
        let mut p = pid;
        for _ in 0..64 {
            p = procfs::parent(p)?;
            if p <= 1 {
                return None;
            }
            if let Some(&i) = all.iter().find(|&&i| self.entities[i].rec.pid == p) {
                return Some(i);
            }
        }
        None
    }

    /// `WATCHDOG=1` (and `WATCHDOG_USEC=`): the next beat is due one period from now.
    pub(super) fn pet_watchdog(&mut self, i: EntityId, now: u64, period: Option<u64>) {
        let e = &mut self.entities[i];
        if let Some(p) = period {
            e.watchdog_ns = Some(p);
        }
        let Some(ns) = e.watchdog_ns.or(e.cfg.rare.watchdog_ns) else {
            return;
        };
        let at = now + ns;
        e.watchdog_at = Some(at);
        self.schedule(at, Deadline::Watchdog(i));
    }

    /// A missed sd_notify watchdog: SIGABRT (so it leaves a core), SIGKILL after its
    /// `stop_timeout`, and the death is then handled like any other (its policy decides).
    pub(super) fn watchdog_missed(&mut self, i: EntityId) {
        let e = &mut self.entities[i];
        e.watchdog_at = None;
        let name = e.cfg.name.clone();
        say!(self, "{name}: missed its watchdog; sending SIGABRT");
        // A successor finishing this stop starts it again, as an automatic restart.
        let why = super::lifecycle::Why::new("watchdog-missed", "missed its watchdog");
        self.step(i, ham_core::lifecycle::Input::WatchdogMissed, &why);
        self.record(i, None, "watchdog-missed", "abort", "SIGABRT");
    }

    /// Entity `i` is ready: start whatever was waiting for it.
    pub(super) fn on_ready(&mut self, i: EntityId) {
        let e = &mut self.entities[i];
        e.ready = true;
        if !e.rec.ready {
            e.rec.ready = true;
            self.publish(i);
        }
        // systemd arms a notify service's watchdog when its start-up completes.
        if self.entities[i].cfg.notify && self.entities[i].watchdog_at.is_none() {
            self.pet_watchdog(i, mono_ns(), None);
        }
        if self.shutdown.is_some() {
            return;
        }
        // Its dependents only (a look at every entity, at every start, was O(entities)
        // per restart: a cache miss each, 10,000 of them at 10,000 entities).
        let waiting: Vec<EntityId> = self
            .entities
            .dependents(i)
            .iter()
            .copied()
            .filter(|&j| self.entities[j].rec.state == EntityState::Waiting)
            .collect();
        for j in waiting {
            self.start_when_ready(j);
        }
    }
}
