//! Deadlines and signals: one timerfd armed at the earliest deadline.

use super::*;

/// What a deadline is for: the heap of deadlines orders by time, then by this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Deadline {
    /// An entity's stop signal was not enough: SIGKILL.
    StopKill(EntityId),
    /// A failed spawn is tried again.
    Retry(EntityId),
    /// Housekeeping, only while something needs it (open control connections, a paused
    /// listener, a ring clients were given tokens for, a client segment still to set up):
    /// stale connections, the ring's safety net.
    Housekeeping,
    /// A Guardian seen stopped (SIGSTOP) is fenced if it still is.
    GuardianStopped,
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
    /// The heartbeat checks due at this instant (`Daemon::hb_due`): one timer entry for all
    /// the clients whose checks fall on it, however many.
    Heartbeats,
    /// The ring's stalled-slot check.
    RingStall,
    /// A receiver waiting for a message gives up.
    MtsWait(EntityId),
    /// The cluster lease was not renewed in time: what the cluster placed here stops.
    ClusterFence,
    /// The hardware watchdog is fed.
    Feed,
    /// The service manager's watchdog (`WATCHDOG_USEC`) is pinged.
    SystemdWatchdog,
    /// Children no exit path of their own reaps (orphans ham inherited as subreaper) whose
    /// SIGCHLD may have merged into one that named a child already handled.
    ReapSweep,
}

/// Every deadline, in one heap, behind one timerfd armed at the earliest. Entries are never
/// removed when a deadline moves: the owner keeps the deadline it waits for, and an entry
/// that no longer matches it is stale (skipped, and dropped before the timer is armed).
pub(super) struct Timers {
    fd: OwnedFd,
    heap: BinaryHeap<Reverse<(u64, Deadline)>>,
    armed_at: Option<u64>,
    /// The housekeeping tick's period, and the tick the heap holds.
    tick_ns: u64,
    next_tick: u64,
}

impl Timers {
    pub(super) fn new(fd: OwnedFd, tick_ns: u64) -> Self {
        Self {
            fd,
            heap: BinaryHeap::new(),
            armed_at: None,
            tick_ns,
            next_tick: 0,
        }
    }

    /// Adds a deadline.
    pub(super) fn push(&mut self, at: u64, deadline: Deadline) {
        self.heap.push(Reverse((at, deadline)));
    }

    /// The next housekeeping tick from `now`: one period on, rounded up to a whole second
    /// (for periods of a second or more) so that it shares the wake-ups of heartbeat checks,
    /// which fall on multiples of their periods.
    pub(super) fn next_tick(&mut self, now: u64) -> u64 {
        let grid = self.tick_ns.min(1_000_000_000);
        self.next_tick = (now + self.tick_ns).div_ceil(grid) * grid;
        self.next_tick
    }

    /// A housekeeping tick is pending (0: none, since the last one fired).
    pub(super) fn tick_pending(&self) -> bool {
        self.next_tick != 0
    }

    /// The earliest deadline, due or not.
    pub(super) fn peek(&self) -> Option<(u64, Deadline)> {
        self.heap.peek().map(|Reverse(e)| *e)
    }

    /// Removes the earliest deadline.
    pub(super) fn pop(&mut self) -> Option<(u64, Deadline)> {
        self.heap.pop().map(|Reverse(e)| e)
    }

    /// The earliest deadline if it is due at `now`, removed.
    pub(super) fn pop_due(&mut self, now: u64) -> Option<(u64, Deadline)> {
        self.peek().filter(|(at, _)| *at <= now)?;
        self.pop()
    }

    /// The timer fired: it is read, and disarmed until [`Timers::arm`].
    pub(super) fn fired(&mut self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.fd, &mut buf);
        self.armed_at = None;
    }

    /// Arms the timerfd at the earliest deadline (disarms it when there is none); nothing
    /// to do when it is armed there already.
    pub(super) fn arm(&mut self) -> rustix::io::Result<()> {
        let next = self.peek().map(|(at, _)| at);
        if next == self.armed_at {
            return Ok(());
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
        rustix::time::timerfd_settime(&self.fd, TimerfdTimerFlags::ABSTIME, &spec)?;
        self.armed_at = next;
        Ok(())
    }

    /// Where the timer is armed (for tests).
    #[cfg(test)]
    fn armed_at(&self) -> Option<u64> {
        self.armed_at
    }
}

impl AsFd for Timers {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Daemon {
    pub(super) fn schedule_tick(&mut self, now: u64) {
        let at = self.timers.next_tick(now);
        self.schedule(at, Deadline::Housekeeping);
    }

    // -- processes -------------------------------------------------------------------------

    pub(super) fn on_timer(&mut self) {
        self.timers.fired();
        let now = mono_ns();
        // Heartbeat checks due together (every client of a period falls on the same
        // instants) are made together, after the rest (see `check_heartbeats`).
        let mut heartbeats = Vec::new();
        while let Some((at, deadline)) = self.timers.pop_due(now) {
            if !self.timer_is_current(deadline, at) {
                continue;
            }
            match deadline {
                Deadline::Housekeeping => {
                    // The next one, if still needed, at the loop's next turn
                    // (`ensure_housekeeping`).
                    self.timers.next_tick = 0;
                    self.ring_safety_net();
                    self.sweep_conns(now);
                }
                Deadline::GuardianStopped => self.guardian_still_stopped(),
                Deadline::GuardianRetry => self.spawn_guardian(),
                Deadline::Feed => self.feed_watchdog(now),
                Deadline::SystemdWatchdog => self.systemd_watchdog(now),
                Deadline::ReapSweep => {
                    self.sweep_at = None;
                    self.reap_children();
                }
                Deadline::StatusPatch(_) => self.try_patches(now),
                Deadline::Action(id) => self.on_action_timer(id, at),
                Deadline::Heartbeats => {
                    if let Some(due) = self.hb_due.remove(&at) {
                        heartbeats.extend(due.into_iter().map(|i| (i, at)));
                    }
                }
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
                        let silent = e.watchdog_ns.or(e.cfg.rare.watchdog_ns).unwrap_or(0);
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
                Deadline::MtsWait(i) => self.mts_timeouts(i, now),
                Deadline::ClusterFence => self.self_fence(),
                Deadline::Retry(i) => {
                    if self.shutdown.is_none() {
                        let why = super::lifecycle::Why::new("start", "retrying");
                        self.step(i, ham_core::lifecycle::Input::RetryDue, &why);
                    }
                }
            }
        }
        if !heartbeats.is_empty() {
            self.check_heartbeats(&heartbeats);
        }
    }

    /// Whether a heap entry is still the deadline its owner waits for (entries are never
    /// removed when a deadline moves; stale ones are skipped here).
    pub(super) fn timer_is_current(&self, deadline: Deadline, at: u64) -> bool {
        match deadline {
            Deadline::Watchdog(i) => self.entities[i].watchdog_at == Some(at),
            Deadline::StopKill(i) => self.entities[i].stop_deadline == Some(at),
            Deadline::Retry(i) => self.entities[i].retry_at == Some(at),
            Deadline::Housekeeping => self.timers.next_tick == at,
            Deadline::GuardianRetry => self.guardian.retry_at == Some(at),
            Deadline::GuardianStopped => self
                .guardian
                .proc
                .as_ref()
                .is_some_and(|g| g.stop_check == Some(at)),
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
            Deadline::Heartbeats => self.hb_due.contains_key(&at),
            Deadline::RingStall => self
                .clients
                .as_ref()
                .is_some_and(|c| c.stall_timer == Some(at)),
            Deadline::MtsWait(i) => self.mts_deadline(i) == Some(at),
            Deadline::ClusterFence => self.fence_timer_at() == at,
            Deadline::Feed => self.hw_watchdog.as_ref().is_some_and(|h| h.next == at),
            Deadline::SystemdWatchdog => {
                self.systemd.as_ref().is_some_and(|m| m.watchdog_next == at)
            }
            Deadline::ReapSweep => self.sweep_at == Some(at),
        }
    }

    /// Adds a deadline (the one place they are made).
    pub(super) fn schedule(&mut self, at: u64, deadline: Deadline) {
        self.timers.push(at, deadline);
    }

    pub(super) fn rearm_timer(&mut self) {
        // Drop entries that no longer match their owner, so the timer never wakes us for
        // nothing.
        while let Some((at, deadline)) = self.timers.peek() {
            if self.timer_is_current(deadline, at) {
                break;
            }
            self.timers.pop();
        }
        if let Err(e) = self.timers.arm() {
            say!(self, "cannot arm the timer: {e}");
        }
        self.publish_deadline();
    }

    /// Whether housekeeping must tick (see [`Deadline::Housekeeping`]); with nothing of that
    /// kind an idle HAM has no periodic wake-up at all.
    pub(super) fn housekeeping_needed(&self) -> bool {
        !self.conns.is_empty() || self.accept_paused || self.clients.is_none() || self.ring_used
    }

    /// Schedules a housekeeping tick if one is needed and none is pending (once per turn
    /// of the loop: the clock is read only when one is scheduled).
    pub(super) fn ensure_housekeeping(&mut self) {
        if self.housekeeping_needed() && !self.timers.tick_pending() {
            self.schedule_tick(mono_ns());
        }
    }

    /// Publishes the earliest deadline for the Guardian, which checks that this HAM turned
    /// its loop after it (within `liveness_timeout`). A deadline earlier than the one
    /// published before may be earlier than the one the Guardian watches: it is told (one
    /// byte on its socket, which wakes it to read the new one).
    ///
    /// Not for the ring's stalled-slot retries: during a flood with several producers the
    /// consumer often meets a slot mid-publish and retries a moment later, and a Guardian
    /// woken for each took CPU from the HAM (ring throughput fell by a third). The deadline
    /// is still published, and the Guardian reads it at its next look; the ring is not
    /// among what it watches anyway.
    fn publish_deadline(&mut self) {
        let (next, kind) = self
            .timers
            .peek()
            .map_or((0, None), |(at, d)| (at, Some(d)));
        if next == self.published_deadline {
            return;
        }
        let earlier = next != 0
            && kind != Some(Deadline::RingStall)
            && (self.published_deadline == 0 || next < self.published_deadline);
        self.published_deadline = next;
        self.wrote(self.writer.set_deadline(next));
        if earlier {
            if let Some(g) = &self.guardian.proc {
                handoff::beat(&g.sock);
            }
        }
    }

    pub(super) fn on_signals(&mut self) {
        loop {
            match self.signals.read_signal() {
                Ok(Some(info)) => {
                    let signal = Signal::try_from(info.ssi_signo as i32);
                    if matches!(signal, Ok(Signal::SIGCHLD)) {
                        self.on_sigchld(info.ssi_pid as i32);
                        self.check_guardian_stopped();
                        continue;
                    }
                    // Anything but a death sees every entity's start complete (as any other
                    // event of the loop does).
                    self.settle_execs();
                    match signal {
                        Ok(Signal::SIGTERM | Signal::SIGINT) => {
                            say!(self, "signal {} received: shutting down", info.ssi_signo);
                            self.begin_shutdown(None);
                        }
                        Ok(Signal::SIGHUP) => {
                            say!(
                                self,
                                "SIGHUP: configuration reload is not supported; ignored"
                            )
                        }
                        _ => {}
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    say!(self, "reading signals: {e}");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timers() -> Timers {
        let fd = rustix::time::timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
        )
        .expect("timerfd");
        Timers::new(fd, 1_000)
    }

    #[test]
    fn deadlines_come_due_in_order_of_time() {
        let mut t = timers();
        let e = EntityId::from_index(3);
        t.push(30, Deadline::Retry(e));
        t.push(10, Deadline::Housekeeping);
        t.push(20, Deadline::StopKill(e));
        t.push(20, Deadline::HoldOff(e));
        assert_eq!(t.pop_due(5), None, "nothing due yet");
        assert_eq!(t.pop_due(25), Some((10, Deadline::Housekeeping)));
        // Same time: by kind, so the order is the same on every run.
        assert_eq!(t.pop_due(25), Some((20, Deadline::StopKill(e))));
        assert_eq!(t.pop_due(25), Some((20, Deadline::HoldOff(e))));
        assert_eq!(t.pop_due(25), None);
        assert_eq!(t.peek(), Some((30, Deadline::Retry(e))));
    }

    #[test]
    fn the_timer_is_armed_at_the_earliest_deadline_and_fires_there() {
        let mut t = timers();
        t.arm().unwrap();
        assert_eq!(t.armed_at(), None, "nothing to wait for");
        let soon = mono_ns() + 2_000_000;
        t.push(soon + 1_000_000_000, Deadline::Housekeeping);
        t.push(soon, Deadline::RingStall);
        t.arm().unwrap();
        assert_eq!(t.armed_at(), Some(soon));
        // The timerfd becomes readable at that deadline (waited for, not slept).
        let mut fds = [rustix::event::PollFd::new(&t, rustix::event::PollFlags::IN)];
        let ready = rustix::event::poll(
            &mut fds,
            Some(&Timespec {
                tv_sec: 10,
                tv_nsec: 0,
            }),
        );
        assert_eq!(ready.unwrap(), 1);
        assert!(mono_ns() >= soon);
        t.fired();
        assert_eq!(t.armed_at(), None);
        assert_eq!(t.pop_due(mono_ns()), Some((soon, Deadline::RingStall)));
        t.arm().unwrap();
        assert_eq!(t.armed_at(), Some(soon + 1_000_000_000));
    }

    #[test]
    fn the_liveness_tick_is_one_period_on() {
        let mut t = timers();
        assert_eq!(t.next_tick(5_000), 6_000);
        assert_eq!(t.next_tick, 6_000);
    }
}
