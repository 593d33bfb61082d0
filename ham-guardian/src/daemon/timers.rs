//! Deadlines and signals: one timerfd armed at the earliest deadline.

use super::*;

/// What a deadline is for: the heap of deadlines orders by time, then by this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Deadline {
    /// An entity's stop signal was not enough: SIGKILL.
    StopKill(EntityId),
    /// A failed spawn is tried again.
    Retry(EntityId),
    /// The liveness word, and the tick's chores.
    Liveness,
    /// A Guardian that could not be started is tried again.
    GuardianRetry,
    /// A late exit status may have become readable.
    StatusPatch(EntityId),
    /// A hold-off ends.
    HoldOff(EntityId),
    /// An entity's `ready_after`.
    Ready(EntityId),
    /// A condition run's delay, waitfor poll or command deadline.
    Action(RunId),
    /// An sd_notify watchdog.
    Watchdog(EntityId),
    /// An attached client's heartbeat window.
    Heartbeat(EntityId),
    /// The ring's stalled-slot check.
    RingStall,
}

impl Daemon {
    pub(super) fn schedule_tick(&mut self, now: u64) {
        self.next_tick = now + self.tick_ns;
        self.schedule(self.next_tick, Deadline::Liveness);
    }

    // -- processes -------------------------------------------------------------------------

    pub(super) fn on_timer(&mut self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.timerfd, &mut buf);
        self.armed_at = None;
        let now = mono_ns();
        while let Some(Reverse((at, deadline))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if !self.timer_is_current(deadline, at) {
                continue;
            }
            match deadline {
                Deadline::Liveness => {
                    self.wrote(self.writer.set_liveness(now));
                    self.schedule_tick(now);
                    self.ring_safety_net();
                    self.sweep_conns(now);
                    self.check_guardian(now);
                }
                Deadline::GuardianRetry => self.spawn_guardian(),
                Deadline::StatusPatch(_) => self.try_patches(now),
                Deadline::Action(id) => self.on_action_timer(id, at),
                Deadline::Heartbeat(i) => self.check_heartbeat(i),
                Deadline::RingStall => {
                    if let Some(c) = &mut self.clients {
                        c.stall_timer = None;
                    }
                    self.drain_ring();
                }
                Deadline::Watchdog(i) => {
                    let e = &self.entities[i];
                    if e.rec.state == EntityState::Running && self.shutdown.is_none() {
                        // A heartbeat-missed-high like any other: the entity's conditions
                        // decide, SIGABRT + restart if it has none.
                        let silent = e.watchdog_ns.or(e.cfg.watchdog_ns).unwrap_or(0);
                        self.heartbeat_missed(i, true, silent);
                    }
                }
                Deadline::Ready(i) => {
                    let e = &self.entities[i];
                    if e.rec.state == EntityState::Running && !e.ready {
                        self.on_ready(i);
                    }
                }
                Deadline::HoldOff(i) => {
                    if self.shutdown.is_none() {
                        let why = lifecycle::Why::new("hold-off-over", "hold-off over");
                        self.step(i, ham_core::lifecycle::Input::HoldOffOver, &why);
                    }
                }
                Deadline::StopKill(i) => {
                    let e = &mut self.entities[i];
                    if e.rec.state == EntityState::Stopping {
                        let (name, t) = (e.cfg.name.clone(), e.cfg.stop_timeout_ns);
                        e.stop_deadline = None;
                        say!(
                            self,
                            "{name}: did not stop within {}; sending SIGKILL",
                            ham_core::duration::format_ns(t)
                        );
                    }
                    let why = lifecycle::Why::new("operator", "stop timeout");
                    self.step(i, ham_core::lifecycle::Input::StopTimeout, &why);
                }
                Deadline::Retry(i) => {
                    if self.shutdown.is_none() {
                        let why = super::lifecycle::Why::new("start", "retrying");
                        self.step(i, ham_core::lifecycle::Input::RetryDue, &why);
                    }
                }
            }
        }
    }

    /// Whether a heap entry is still the deadline its owner waits for (entries are never
    /// removed when a deadline moves; stale ones are skipped here).
    pub(super) fn timer_is_current(&self, deadline: Deadline, at: u64) -> bool {
        match deadline {
            Deadline::Watchdog(i) => self.entities[i].watchdog_at == Some(at),
            Deadline::StopKill(i) => self.entities[i].stop_deadline == Some(at),
            Deadline::Retry(i) => self.entities[i].retry_at == Some(at),
            Deadline::Liveness => self.next_tick == at,
            Deadline::GuardianRetry => self.guardian.retry_at == Some(at),
            Deadline::StatusPatch(_) => self.patches.iter().any(|p| p.at == at),
            Deadline::Action(id) => self.runs.get(&id).is_some_and(|r| match &r.waiting {
                Some(Wait::Delay { until }) => *until == at,
                Some(Wait::Exec { deadline, .. }) => *deadline == at,
                Some(Wait::Path { next, .. }) => *next == at,
                None => false,
            }),
            Deadline::Ready(i) => {
                let e = &self.entities[i];
                e.rec.started_mono_ns + e.cfg.ready_after_ns == at
            }
            Deadline::HoldOff(i) => self.entities[i].rec.policy.held_until == at,
            Deadline::Heartbeat(i) => self.entities[i]
                .hb
                .as_ref()
                .is_some_and(|h| h.deadline == at),
            Deadline::RingStall => self
                .clients
                .as_ref()
                .is_some_and(|c| c.stall_timer == Some(at)),
        }
    }

    /// Adds a deadline (the one place they are made).
    pub(super) fn schedule(&mut self, at: u64, deadline: Deadline) {
        self.timers.push(Reverse((at, deadline)));
    }

    pub(super) fn rearm_timer(&mut self) {
        // Drop entries that no longer match their owner, so the timer never wakes us for
        // nothing.
        while let Some(Reverse((at, deadline))) = self.timers.peek().copied() {
            let live = self.timer_is_current(deadline, at);
            if live {
                break;
            }
            self.timers.pop();
        }
        let next = self.timers.peek().map(|Reverse((at, _))| *at);
        if next == self.armed_at {
            return;
        }
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let value = match next {
            Some(at) => Timespec {
                tv_sec: (at / 1_000_000_000) as i64,
                tv_nsec: (at % 1_000_000_000).max(1) as i64,
            },
            None => zero,
        };
        let spec = Itimerspec {
            it_interval: zero,
            it_value: value,
        };
        match rustix::time::timerfd_settime(&self.timerfd, TimerfdTimerFlags::ABSTIME, &spec) {
            Ok(_) => self.armed_at = next,
            Err(e) => say!(self, "cannot arm the timer: {e}"),
        }
    }

    pub(super) fn on_signals(&mut self) {
        loop {
            match self.signals.read_signal() {
                Ok(Some(info)) => match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGTERM | Signal::SIGINT) => {
                        say!(self, "signal {} received: shutting down", info.ssi_signo);
                        self.begin_shutdown(None);
                    }
                    Ok(Signal::SIGCHLD) => self.reap_children(),
                    Ok(Signal::SIGHUP) => {
                        say!(
                            self,
                            "SIGHUP: configuration reload is not supported; ignored"
                        )
                    }
                    _ => {}
                },
                Ok(None) => break,
                Err(e) => {
                    say!(self, "reading signals: {e}");
                    break;
                }
            }
        }
    }
}
