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
        let page_fd = page.map(|(map, fd)| {
            self.entities[i].beat = Some(Box::new(map));
            fd
        });
        let e = &mut self.entities[i];
        e.rec.heartbeat = beats.then_some(spec);
        self.publish(i);
        self.watch_heartbeat(i, now);
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

    /// (Re)starts the heartbeat monitor of entity `i` from its record, counting from `now`
    /// (as if it had just beaten).
    pub(super) fn watch_heartbeat(&mut self, i: EntityId, now: u64) {
        let e = &mut self.entities[i];
        let Some(spec) = e.rec.heartbeat else {
            e.hb = None;
            return;
        };
        let hb = Heartbeat {
            spec,
            seen: now,
            fired: 0,
            deadline: next_check(&spec, now, self.cfg.heartbeat_grid_ns),
        };
        let at = hb.deadline;
        e.hb = Some(Box::new(hb));
        self.schedule_heartbeat(i, at);
    }

    /// Entity `i`'s next heartbeat check is at `at`: listed there, with one timer entry per
    /// instant.
    fn schedule_heartbeat(&mut self, i: EntityId, at: u64) {
        let due = self.hb_due.entry(at).or_default();
        if due.is_empty() {
            self.timers.push(at, Deadline::Heartbeats);
        }
        due.push(i);
    }

    /// Treat entity `i` as having just beaten (`heartbeat-healthy`).
    pub(super) fn heartbeat_healthy(&mut self, i: EntityId) -> bool {
        if self.entities[i].hb.is_none() {
            return false;
        }
        self.watch_heartbeat(i, mono_ns());
        true
    }

    /// The ending of a process ends its attachment, and its heartbeat page with it.
    pub(super) fn end_attachment(&mut self, i: EntityId) {
        let e = &mut self.entities[i];
        e.hb = None;
        e.rec.heartbeat = None;
        if e.beat.take().is_some() {
            ham_core::beat::BeatMap::unlink(&ham_core::paths::beat_page(
                &self.cfg.instance.name,
                e.slot.0,
            ));
        }
    }

    /// Heartbeat checks came (each `(entity, at)`, `at` a multiple of its period): a beat
    /// since the last check moves the entity's last-seen time to `at`; otherwise what is now
    /// missed fires. Checks of every client with the same period fall on the same instants,
    /// so they share the HAM's wake-ups however many clients there are. Every client is
    /// looked at first, then the misses are reported, then the next checks are scheduled:
    /// a miss is not kept waiting behind the rescheduling of a thousand clients that beat.
    pub(super) fn check_heartbeats(&mut self, due: &[(EntityId, u64)]) {
        let now = mono_ns();
        let grid = self.cfg.heartbeat_grid_ns;
        let mut missed = Vec::new();
        let mut next = Vec::with_capacity(due.len());
        for &(i, at) in due {
            let e = &mut self.entities[i];
            // Listed at `at` for a check that has moved since, or ended: not this one's.
            if e.hb.as_ref().is_none_or(|hb| hb.deadline != at) {
                continue;
            }
            let beaten = e.beat.as_ref().is_some_and(|b| b.take_beat());
            let Some(hb) = &mut e.hb else { continue };
            let (low, high) = hb.check(at, beaten);
            hb.deadline = next_check(&hb.spec, at.max(now), grid);
            next.push((i, hb.deadline));
            if low || high {
                missed.push((i, low, high, at.saturating_sub(hb.seen)));
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
        for (i, at) in next {
            // Unless a miss's handling ended the attachment, or made it anew (which scheduled
            // its own check).
            if self.entities[i]
                .hb
                .as_ref()
                .is_some_and(|hb| hb.deadline == at)
            {
                self.schedule_heartbeat(i, at);
            }
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
                Ok(page) => {
                    self.entities[i].beat = Some(Box::new(page));
                    self.watch_heartbeat(i, now);
                }
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
