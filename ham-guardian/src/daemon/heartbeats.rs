//! Attachments and their heartbeats: attach, detach, the deadlines of each attached client, what a miss does.

use std::os::fd::OwnedFd;

use ham_core::EntityState;
use ham_core::layout::HeartbeatSpec;
use ham_core::protocol::Response;
use rustix::process::{Pid, PidfdFlags};

use super::clients::*;
use super::{Daemon, Deadline, EntityId, log};
use crate::actions::{Event, Trigger};
use crate::{mono_ns, procfs, unix_ns};

/// A heartbeat page as the HAM holds it: mapped, its descriptor kept, and guarded. Its
/// client holds a descriptor it can `ftruncate`; the HAM reading a shrunk page died of
/// SIGBUS (and its successor found the page unreadable): the guard grows it back instead.
pub(super) struct HamBeat {
    /// First: given back before the mapping and the descriptor go (fields drop in order).
    _guard: crate::sys::Guard,
    page: ham_core::beat::BeatMap,
    _fd: std::os::fd::OwnedFd,
}

impl HamBeat {
    fn new(page: ham_core::beat::BeatMap, fd: std::os::fd::OwnedFd) -> Result<Self, String> {
        use std::os::fd::AsRawFd;
        let (base, len) = page.mapping();
        match crate::sys::guard_more(base, len, fd.as_raw_fd()) {
            Ok(Some(guard)) => Ok(Self {
                _guard: guard,
                page,
                _fd: fd,
            }),
            Ok(None) => Err("no entry left in the SIGBUS guard".into()),
            Err(e) => Err(format!("cannot guard it: {e}")),
        }
    }
}

impl std::ops::Deref for HamBeat {
    type Target = ham_core::beat::BeatMap;
    fn deref(&self) -> &Self::Target {
        &self.page
    }
}

/// How many monitors ahead a check asks for their pages: enough misses in flight to
/// overlap them, few enough that the first asked for are still cached when their turn comes.
const PREFETCH_AHEAD: usize = 32;

/// Where a heartbeat monitor sits in [`Monitors`].
pub(super) type MonitorId = u32;

/// An attached client's heartbeat monitor and its page: all a check reads.
pub(super) struct Monitor {
    pub entity: EntityId,
    pub hb: Heartbeat,
    pub beat: HamBeat,
}

/// Every heartbeat monitor, in one table. A check reads a monitor and its client's page,
/// and nothing of the entity's unless it reports a miss: with a thousand clients, the
/// pointers from each entity to a monitor and a page of their own (each a cache miss, and
/// the pages' TLB misses besides) were most of the check's time. A monitor never moves while
/// it lives (an ended one's place is reused), so the instants' lists name monitors by place;
/// an entry whose monitor's deadline is not that instant (moved, ended, another's) is stale.
#[derive(Default)]
pub(super) struct Monitors {
    slots: Vec<Option<Monitor>>,
    free: Vec<MonitorId>,
}

impl Monitors {
    fn insert(&mut self, m: Monitor) -> MonitorId {
        match self.free.pop() {
            Some(k) => {
                self.slots[k as usize] = Some(m);
                k
            }
            None => {
                self.slots.push(Some(m));
                (self.slots.len() - 1) as MonitorId
            }
        }
    }

    fn remove(&mut self, k: MonitorId) -> Option<Monitor> {
        let m = self.slots.get_mut(k as usize)?.take()?;
        self.free.push(k);
        Some(m)
    }

    fn get_mut(&mut self, k: MonitorId) -> Option<&mut Monitor> {
        self.slots.get_mut(k as usize)?.as_mut()
    }

    /// Monitor `k`'s page, asked for ahead of its check.
    fn prefetch_page(&self, k: MonitorId) {
        if let Some(Some(m)) = self.slots.get(k as usize) {
            m.beat.prefetch();
        }
    }

    /// Whether monitor `k` is due at `at` (its deadline is that instant).
    fn due_at(&self, k: MonitorId, at: u64) -> bool {
        matches!(self.slots.get(k as usize), Some(Some(m)) if m.hb.deadline == at)
    }
}

impl Daemon {
    /// Attaches a process to entity `i`; with a heartbeat, the answer comes with the
    /// descriptor of the client's heartbeat page.
    pub(super) fn attach(
        &mut self,
        i: EntityId,
        peer: Peer,
        pid: Option<i32>,
        spec: HeartbeatSpec,
    ) -> (Response, Option<OwnedFd>) {
        match self.attach_checked(i, peer, pid, spec) {
            Ok(answer) => answer,
            Err(r) => (*r, None),
        }
    }

    pub(super) fn attach_checked(
        &mut self,
        i: EntityId,
        peer: Peer,
        pid: Option<i32>,
        spec: HeartbeatSpec,
    ) -> Result<(Response, Option<OwnedFd>), Box<Response>> {
        let target = pid.unwrap_or(peer.pid);
        let name = self.entities[i].cfg.name.clone();
        if let Err((errno, why)) = self.with_caller(peer, |c| super::authz::may_attach(c, target)) {
            return Err(Response::errno(errno, why).into());
        }
        if spec.period_ns < MIN_HEARTBEAT_PERIOD_NS && (spec.missed_low | spec.missed_high) != 0 {
            return Err(Response::err(format!(
                "heartbeat period {} is below the floor of 1ms",
                ham_core::duration::format_ns(spec.period_ns)
            ))
            .into());
        }
        if spec.missed_high != 0 && spec.missed_low > spec.missed_high {
            return Err(Response::err("missed_low must not exceed missed_high").into());
        }
        let e = &self.entities[i];
        let adopt = e.cfg.attach_only && (e.rec.pid != target || e.pidfd.is_none());
        if e.cfg.attach_only {
            if e.rec.state.has_process() && e.pidfd.is_some() && e.rec.pid != target {
                return Err(Response::err(format!(
                    "`{name}` is attached by pid {}; detach it first",
                    e.rec.pid
                ))
                .into());
            }
        } else if !(e.rec.pid == target && e.rec.state == EntityState::Running) {
            return Err(Response::err(format!(
                "`{name}` is ham-started and runs pid {} ({}); pid {target} cannot attach to it",
                e.rec.pid,
                e.rec.state.as_str()
            ))
            .into());
        }
        let now = mono_ns();
        let slot = self.entities[i].slot;
        // A new attachment replaces the old one, and its heartbeat page with it.
        self.end_attachment(i);
        // The client's own heartbeat page (no other client can write it), made before
        // anything else changes: a refusal here leaves nothing half done.
        let beats = spec.missed_low | spec.missed_high != 0;
        let page = if beats {
            let name = ham_core::paths::beat_page(&self.cfg.instance.name, slot.0);
            let made = ham_core::beat::BeatMap::create(&name, target as u32)
                .map_err(|e| e.to_string())
                .and_then(|(map, fd)| {
                    let handed = fd.try_clone().map_err(|e| format!("dup: {e}"))?;
                    HamBeat::new(map, fd)
                        .map(|b| (b, handed))
                        .inspect_err(|_| ham_core::beat::BeatMap::unlink(&name))
                });
            match made {
                Ok(page) => Some(page),
                Err(e) => {
                    self.say_limited("beat-page", format_args!("{name}: attach: {e}"));
                    self.publish(i);
                    return Err(
                        Response::errno(libc::ENOMEM, format!("no heartbeat page: {e}")).into(),
                    );
                }
            }
        } else {
            None
        };
        if adopt {
            if let Err(why) = self.adopt_attached(i, target) {
                ham_core::beat::BeatMap::unlink(&ham_core::paths::beat_page(
                    &self.cfg.instance.name,
                    slot.0,
                ));
                return Err(Response::err(why).into());
            }
        }
        let (beat, page_fd) = page.unzip();
        let e = &mut self.entities[i];
        e.rec.heartbeat = beats.then_some(spec);
        self.publish(i);
        if let Some(beat) = beat {
            self.watch_heartbeat(i, beat, now);
        }
        let what = if beats {
            format!(
                "pid {target}, heartbeat every {}, missed low {} high {}",
                ham_core::duration::format_ns(spec.period_ns),
                spec.missed_low,
                spec.missed_high
            )
        } else {
            format!("pid {target}, no heartbeat")
        };
        self.record(i, None, "attach", "attach", &what);
        log(
            &self.cfg.instance.name,
            format_args!("{name}: attached: {what}"),
        );
        self.fire(i, Event::Attach, None);
        let mut r = Response::ok(format!("attached to `{name}`"));
        r.slot = Some(slot.0);
        Ok((r, page_fd))
    }

    /// A process attaches itself to an `attach_only` entity: it is watched like an adopted
    /// entity (pidfd, handed to the Guardian) but never started or restarted by ham.
    pub(super) fn adopt_attached(&mut self, i: EntityId, pid: i32) -> Result<(), String> {
        let Some(p) = Pid::from_raw(pid) else {
            return Err(format!("pid {pid} is not a process"));
        };
        let pidfd = rustix::process::pidfd_open(p, PidfdFlags::empty())
            .map_err(|e| format!("pid {pid}: {e}"))?;
        let start_time = procfs::start_time(pid).ok_or(format!("pid {pid} is gone"))?;
        self.unwatch_pidfd(i);
        let now = mono_ns();
        {
            let e = &mut self.entities[i];
            e.rec.pid = pid;
            e.rec.start_time = start_time;
            e.rec.started_mono_ns = now;
            e.rec.started_unix_ns = unix_ns();
            e.adopted = true;
        }
        self.exit_watch_changed();
        let why = super::lifecycle::Why::new("attach", "attached");
        self.step(i, ham_core::lifecycle::Input::Attached, &why);
        self.watch(i, &pidfd).map_err(|e| format!("epoll: {e}"))?;
        self.send_to_guardian(i, pid, start_time, &pidfd);
        self.entities[i].pidfd = Some(pidfd);
        self.became_running(i, now);
        Ok(())
    }

    pub(super) fn detach(&mut self, i: EntityId, peer: Peer) -> Response {
        let e = &self.entities[i];
        let name = e.cfg.name.clone();
        let attached = e.rec.pid;
        if let Err((errno, why)) =
            self.with_caller(peer, |c| super::authz::may_detach(c, &name, attached))
        {
            return Response::errno(errno, why);
        }
        let e = &self.entities[i];
        // A run-time entity (`ham_attach`, `ham_attach_self`, `ham_entity`) is removed by
        // its detach, as QNX removes it "from its context": whatever ham runs for it.
        let runtime = self.is_runtime(i);
        if !runtime && e.rec.heartbeat.is_none() && !(e.cfg.attach_only && e.pidfd.is_some()) {
            return Response::err(format!("nothing is attached to `{name}`"));
        }
        let pid = e.rec.pid;
        if runtime {
            return match self.remove_entity(i) {
                Ok(()) => Response::ok(format!("detached from `{name}`; removed")),
                Err((errno, why)) => Response::errno(errno, why),
            };
        }
        if self.entities[i].cfg.attach_only {
            self.unwatch_pidfd(i);
        }
        self.end_attachment(i);
        let e = &mut self.entities[i];
        if e.cfg.attach_only {
            e.rec.pid = 0;
            e.rec.start_time = 0;
            e.ready = false;
            e.rec.ready = false;
            let why = super::lifecycle::Why::new("detach", "detached");
            self.step(i, ham_core::lifecycle::Input::Detached, &why);
        } else {
            self.publish(i);
        }
        self.record(i, None, "detach", "detach", &format!("pid {pid}"));
        log(
            &self.cfg.instance.name,
            format_args!("{name}: pid {pid} detached"),
        );
        self.fire(i, Event::Detach, None);
        Response::ok(format!("detached from `{name}`"))
    }

    // -- heartbeat deadlines ---------------------------------------------------------------

    /// Starts the heartbeat monitor of entity `i` from its record, with its client's page,
    /// counting from `now` (as if it had just beaten).
    fn watch_heartbeat(&mut self, i: EntityId, beat: HamBeat, now: u64) {
        let Some(spec) = self.entities[i].rec.heartbeat else {
            // Not reached (a page is made only for an attachment with a heartbeat), but a
            // page with no monitor would keep its name: nothing else would unlink it.
            drop(beat);
            ham_core::beat::BeatMap::unlink(&ham_core::paths::beat_page(
                &self.cfg.instance.name,
                self.entities[i].slot.0,
            ));
            return;
        };
        let hb = Heartbeat {
            spec,
            seen: now,
            fired: 0,
            deadline: next_check(&spec, now, self.cfg.heartbeat_grid_ns),
        };
        let at = hb.deadline;
        let k = self.monitors.insert(Monitor {
            entity: i,
            hb,
            beat,
        });
        self.entities[i].monitor = Some(k);
        self.schedule_heartbeats(at, [k]);
    }

    /// Monitors `ks`' next check is at `at`: listed there, with one timer entry per instant.
    fn schedule_heartbeats(&mut self, at: u64, ks: impl IntoIterator<Item = MonitorId>) {
        let due = self.hb_due.entry(at).or_default();
        if due.is_empty() {
            self.timers.push(at, Deadline::Heartbeats);
        }
        due.extend(ks);
    }

    /// Treat entity `i` as having just beaten (`heartbeat-healthy`).
    pub(super) fn heartbeat_healthy(&mut self, i: EntityId) -> bool {
        let Some(k) = self.entities[i].monitor else {
            return false;
        };
        let now = mono_ns();
        let grid = self.cfg.heartbeat_grid_ns;
        let Some(m) = self.monitors.get_mut(k) else {
            return false;
        };
        m.hb.seen = now;
        m.hb.fired = 0;
        m.hb.deadline = next_check(&m.hb.spec, now, grid);
        let at = m.hb.deadline;
        self.schedule_heartbeats(at, [k]);
        true
    }

    /// The ending of a process ends its attachment, and its heartbeat page with it.
    pub(super) fn end_attachment(&mut self, i: EntityId) {
        let e = &mut self.entities[i];
        e.rec.heartbeat = None;
        let ended = e.monitor.take().and_then(|k| self.monitors.remove(k));
        if ended.is_some() {
            ham_core::beat::BeatMap::unlink(&ham_core::paths::beat_page(
                &self.cfg.instance.name,
                self.entities[i].slot.0,
            ));
        }
    }

    /// Heartbeat checks came (each `(monitor, at)`, `at` a multiple of its period): a beat
    /// since the last check moves the client's last-seen time to `at`; otherwise what is now
    /// missed fires. Checks of every client with the same period fall on the same instants,
    /// so they share the HAM's wake-ups however many clients there are. Every client is
    /// looked at first (its monitor and its page, nothing else), then the misses are
    /// reported, then the next checks are listed: a miss is not kept waiting behind the
    /// rescheduling of a thousand clients that beat.
    pub(super) fn check_heartbeats(&mut self, due: &[(MonitorId, u64)]) {
        let now = mono_ns();
        let grid = self.cfg.heartbeat_grid_ns;
        let mut missed = Vec::new();
        let mut next = Vec::with_capacity(due.len());
        for (n, &(k, at)) in due.iter().enumerate() {
            if let Some(&(ahead, _)) = due.get(n + PREFETCH_AHEAD) {
                self.monitors.prefetch_page(ahead);
            }
            // Listed at `at` for a check that has moved since, or ended: not this one's.
            let Some(m) = self.monitors.get_mut(k).filter(|m| m.hb.deadline == at) else {
                continue;
            };
            let beaten = m.beat.take_beat();
            let (low, high) = m.hb.check(at, beaten);
            m.hb.deadline = next_check(&m.hb.spec, at.max(now), grid);
            next.push((m.hb.deadline, k));
            if low || high {
                missed.push((m.entity, low, high, at.saturating_sub(m.hb.seen)));
            }
        }
        // What is said about the misses is written once they are reported (their
        // notifications sent, their actions begun), in the same order.
        if !missed.is_empty() {
            self.hold_logs();
        }
        for &(i, low, high, silent) in &missed {
            for (missed, is_high) in [(low, false), (high, true)] {
                if missed {
                    self.heartbeat_missed(i, is_high, silent);
                }
            }
        }
        if !missed.is_empty() {
            self.write_held_logs();
        }
        // Unless a miss's handling ended the attachment, or made it anew (which listed its
        // own check). The clients of one period share their next instant: one list each.
        next.retain(|&(at, k)| self.monitors.due_at(k, at));
        for group in next.chunk_by(|a, b| a.0 == b.0) {
            self.schedule_heartbeats(group[0].0, group.iter().map(|&(_, k)| k));
        }
    }

    pub(super) fn heartbeat_missed(&mut self, i: EntityId, high: bool, silent_ns: u64) {
        let e = &self.entities[i];
        let name = e.cfg.name.clone();
        let cond = if high {
            "heartbeat-missed-high"
        } else {
            "heartbeat-missed-low"
        };
        let what = format!("no beat for {}", ham_core::duration::format_ns(silent_ns));
        let event = Event::HeartbeatMissed { high };
        let handled = self.matching(i, &event).any(|c| c.trigger != Trigger::Any);
        log(
            &self.cfg.instance.name,
            format_args!("{name}: {cond}: {what}"),
        );
        self.record(i, None, cond, "detected", &what);
        self.fire(i, event, None);
        // With no condition of its own, a missed-high is a hung process: handled like a
        // missed sd_notify watchdog (SIGABRT for a core, SIGKILL, restart).
        let e = &self.entities[i];
        if high
            && !handled
            && !e.cfg.attach_only
            && e.rec.state == EntityState::Running
            && self.shutdown.is_none()
        {
            self.watchdog_missed(i);
        }
    }

    // -- subscribers -----------------------------------------------------------------------

    /// After a takeover or a warm start: every attached client counts as having beaten now.
    /// After a takeover or a warm start: each attachment goes on with the heartbeat page
    /// its predecessor made (opened by name, if it is ham's own); one whose page is gone
    /// or not ham's ends (the client must attach again) rather than look hung.
    pub(super) fn resume_heartbeats(&mut self) {
        let now = mono_ns();
        for i in EntityId::all(self.entities.len()) {
            if self.entities[i].rec.heartbeat.is_none() {
                continue;
            }
            let name = ham_core::paths::beat_page(&self.cfg.instance.name, self.entities[i].slot.0);
            let page = if self.entities[i].rec.state.has_process() {
                ham_core::beat::BeatMap::open_with_fd(&name)
                    .map_err(|e| e.to_string())
                    .and_then(|(map, fd)| HamBeat::new(map, fd))
            } else {
                Err("its process is gone".to_owned())
            };
            match page {
                Ok(page) => self.watch_heartbeat(i, page, now),
                Err(why) => {
                    let entity = self.entities[i].cfg.name.clone();
                    log(
                        &self.cfg.instance.name,
                        format_args!(
                            "{entity}: its heartbeat attachment ended ({why}); attach again"
                        ),
                    );
                    self.end_attachment(i);
                    self.publish(i);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ham_core::beat::BeatMap;

    /// A heartbeat page as the HAM holds it, its name already gone.
    fn page(tag: &str) -> (HamBeat, BeatMap) {
        let name = format!("/ham-guardian-test-monitor-{}-{tag}", std::process::id());
        let (map, fd) = BeatMap::create(&name, 1).unwrap();
        let client = BeatMap::open(&name).unwrap();
        BeatMap::unlink(&name);
        (HamBeat::new(map, fd).unwrap(), client)
    }

    fn monitor(entity: usize, deadline: u64, beat: HamBeat) -> Monitor {
        Monitor {
            entity: EntityId::from_index(entity),
            hb: Heartbeat {
                spec: HeartbeatSpec {
                    period_ns: 10 * MIN_HEARTBEAT_PERIOD_NS,
                    missed_low: 2,
                    missed_high: 0,
                },
                seen: 0,
                fired: 0,
                deadline,
            },
            beat,
        }
    }

    #[test]
    fn an_ended_monitors_place_is_reused_and_its_old_entries_stay_stale() {
        let mut ms = Monitors::default();
        let (a_page, _) = page("a");
        let (b_page, _) = page("b");
        let (c_page, c_client) = page("c");
        let a = ms.insert(monitor(0, 100, a_page));
        let b = ms.insert(monitor(1, 100, b_page));
        assert_ne!(a, b);
        assert!(ms.due_at(a, 100) && ms.due_at(b, 100));
        assert!(!ms.due_at(a, 200), "listed at another instant");
        // `a` ends: its entry at 100 is stale, and stays so when its place is taken by a
        // monitor due at another instant.
        assert_eq!(ms.remove(a).map(|m| m.entity.index()), Some(0));
        assert!(ms.remove(a).is_none(), "ended once");
        assert!(!ms.due_at(a, 100));
        let c = ms.insert(monitor(2, 300, c_page));
        assert_eq!(c, a, "an ended monitor's place is reused");
        assert!(!ms.due_at(c, 100) && ms.due_at(c, 300));
        // The others never moved.
        assert!(ms.due_at(b, 100));
        assert!(!ms.due_at(7, 100), "a place never used");
        // Asking for a page ahead changes nothing of what the check then takes.
        ms.prefetch_page(c);
        ms.prefetch_page(7);
        c_client.beat();
        ms.prefetch_page(c);
        let m = ms.get_mut(c).unwrap();
        assert_eq!(m.entity.index(), 2);
        assert!(m.beat.take_beat());
        assert!(!m.beat.take_beat(), "taken once");
    }
}
