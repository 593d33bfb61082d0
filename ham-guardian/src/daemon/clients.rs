//! The HAM's side of the SDK: the client segment (heartbeat slots and the detector ring),
//! the doorbell, attach / detach, heartbeat deadlines, and subscribers.
//!
//! * One heartbeat deadline per attached entity sits in the daemon's timer heap like every
//!   other deadline (one timerfd for all); the slot is read only when its deadline comes.
//! * The ring is drained when the doorbell rings (a producer found the HAM asleep), and
//!   again at a stalled slot's deadline. A small thread waits on the doorbell futex and
//!   turns it into an eventfd event for the loop; it holds no lock and allocates nothing.
//! * Subscribers are control connections kept open; a slow or gone subscriber is dropped,
//!   never waited for.

use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ham_core::EntityState;
use ham_core::client::{
    ClientSegment, Consumer, KIND_RAISE, KIND_STATE, Polled, RingEvent, RingRecord, client_token,
};
use ham_core::layout::HeartbeatSpec;
use ham_core::protocol::{Notification, Response};
use ham_core::segment::SegmentWriter;
use rustix::event::epoll;
use rustix::process::{Pid, PidfdFlags};

use super::{Daemon, Deadline, Origin, Token, log};
use crate::actions::{ActionKind, Event, Trigger};
use crate::{mono_ns, procfs, unix_ns};

/// The shortest heartbeat period accepted (QNX's floor is 1 s; ours is the timer's
/// resolution that still leaves the loop idle between deadlines).
pub const MIN_HEARTBEAT_PERIOD_NS: u64 = 1_000_000;

/// How many ring events one turn of the loop takes before it lets other events in.
const DRAIN_BUDGET: usize = 4096;

/// Rejected-event log lines per HAM (then only counted).
const LOG_REJECTS: u64 = 20;

/// The heartbeat monitor of one attached entity (in the daemon's memory; what it was
/// attached with is in the entity record, so a successor rebuilds it).
pub(super) struct Heartbeat {
    pub spec: HeartbeatSpec,
    /// Beats before this time do not count (attach, takeover, `heartbeat-healthy`).
    pub base: u64,
    /// 0: no miss reported; 1: missed-low fired; 2: missed-high fired.
    pub fired: u8,
    /// The last beat the fired conditions were about: a newer beat ends the episode.
    pub fired_last: u64,
    pub deadline: u64,
}

/// A control connection's peer, as the kernel reported it at connect.
#[derive(Clone, Copy, Debug)]
pub(super) struct Peer {
    pub pid: i32,
    pub uid: u32,
}

pub(super) struct Subscriber {
    pub topic: String,
    pub stream: UnixStream,
    /// Whose it is (subscriptions are counted per uid).
    pub uid: u32,
    /// The subscriber's process and the signal it asked for.
    pub signal: Option<(OwnedFd, i32)>,
}

/// Subscriptions per unprivileged uid, in all, and kept for root and ham's user.
const SUBS_PER_UID: usize = 32;
const SUBS_MAX: usize = 512;
const SUBS_RESERVED: usize = 64;

/// The client segment and its consumer.
pub(super) struct Clients {
    pub seg: Arc<ClientSegment>,
    pub consumer: Consumer,
    pub doorbell: OwnedFd,
    pub armed: bool,
    /// The stalled-claim deadline a timer is set for (one at a time).
    pub stall_timer: Option<u64>,
    pub key: [u64; 2],
    pub logged: u64,
    /// `sys::GUARD_LOST_PAGES` when it was last reported.
    pub lost_pages: u64,
}

impl Clients {
    /// Opens the client segment a predecessor left (a takeover or a warm start keeps the
    /// clients' mappings valid), or creates it.
    pub(super) fn open(
        cfg: &crate::config::Config,
        origin: &Origin,
        warm: bool,
        key: [u64; 2],
        writer: &SegmentWriter,
    ) -> io::Result<Self> {
        if crate::failpoint::fails("clients:setup") {
            return Err(io::Error::other("failpoint clients:setup"));
        }
        let name = ham_core::client::segment_name(&cfg.instance.name);
        let reuse = (warm || matches!(origin, Origin::Promoted { .. }))
            .then(|| ClientSegment::open(&name).ok())
            .flatten()
            .filter(|s| s.check_owned().is_ok())
            .filter(|s| s.hb_slots() == 0 && s.ring_slots() == cfg.ring_slots);
        let (seg, start) = match reuse {
            // The predecessor's record, from the state segment (a client cannot move it).
            Some(s) => (s, writer.segment().header().ring_state()),
            None => {
                // A new ring starts a new record, before it exists: a successor must never
                // find this ring with the record of the one it replaces.
                let _ = writer.set_ring_state(RingRecord::default());
                let seg = ClientSegment::create(&name, 0, cfg.ring_slots, cfg.client_gid)
                    .map_err(io::Error::other)?;
                (seg, None)
            }
        };
        seg.set_ham_pid(std::process::id());
        let (base, len, fd) = seg.mapping();
        crate::sys::guard_mapping(base, len, fd)?;
        let seg = Arc::new(seg);
        // The counts go on from the predecessor's (they describe the ring, not a HAM); the
        // tickets it took after its last record count as consumed. Recorded at once, not
        // at the next drain (which may never come).
        let consumer = Consumer::resume_recorded(&seg, start, cfg.ring_abandon_after_ns);
        let _ = writer.set_ring_state(consumer.record());
        let doorbell = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        let ring = doorbell.try_clone()?;
        let waiter = Arc::clone(&seg);
        std::thread::Builder::new()
            .name("doorbell".into())
            .spawn(move || doorbell_thread(&waiter, &ring))?;
        Ok(Self {
            seg,
            consumer,
            doorbell,
            armed: false,
            stall_timer: None,
            key,
            logged: 0,
            lost_pages: 0,
        })
    }
}

/// Turns a ring of the doorbell into an eventfd event for the loop. It blocks on whatever
/// value the doorbell word holds and looks again whenever that changes: every "rung" is a
/// value of its own (the consumer takes a new generation for each sleep), so a ring that
/// comes while this thread is between two looks changes the value and cannot be missed; it
/// tells the loop once per "rung" value.
fn doorbell_thread(seg: &ClientSegment, ring: &OwnedFd) {
    let word = &seg.header().sleeping;
    let mut told = None;
    loop {
        let v = word.load(Ordering::Acquire);
        if v & 3 == ham_core::client::BELL_RUNG && told != Some(v) {
            let _ = rustix::io::write(ring, &1u64.to_ne_bytes());
            told = Some(v);
        }
        ham_core::client::futex_wait(word, v);
    }
}

/// Whether a process is proven gone (a ring claimer): no such pid, or its pidfd says so.
fn is_dead(pid: u32) -> bool {
    // A claim word is a client's write: a pid out of range is no process of ours to test.
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
        Err(rustix::io::Errno::SRCH) => true,
        Err(_) => false,
        Ok(fd) => {
            let mut fds = [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::IN,
            )];
            matches!(rustix::event::poll(&mut fds, Some(&rustix::time::Timespec::default())), Ok(n) if n > 0)
        }
    }
}

impl Daemon {
    /// Before the loop sleeps: tell producers to ring the doorbell. If the ring already has
    /// work, ring it ourselves so the next wait returns at once (with any other event that
    /// is ready: a flood on the ring never starves the rest).
    pub(super) fn arm_ring(&mut self) {
        let Some(c) = &mut self.clients else { return };
        if c.armed {
            return;
        }
        if c.consumer.prepare_sleep(&c.seg) {
            // No wake-up for the doorbell thread: a producer's FUTEX_WAKE reaches it whatever
            // value it waits on, and it then finds this generation's "rung".
            c.armed = true;
        } else {
            let _ = rustix::io::write(&c.doorbell, &1u64.to_ne_bytes());
        }
    }

    /// The doorbell rang (or we rang it): take what the ring holds.
    pub(super) fn on_doorbell(&mut self) {
        if let Some(c) = &mut self.clients {
            let mut buf = [0u8; 8];
            let _ = rustix::io::read(&c.doorbell, &mut buf);
            c.armed = false;
            c.consumer.awake(&c.seg);
        }
        self.drain_ring();
    }

    /// At each liveness tick: a ring with a published event while the HAM is armed means a
    /// doorbell was missed (it must not happen; if it does, this says so and recovers).
    pub(super) fn ring_safety_net(&mut self) {
        let Some(c) = &mut self.clients else {
            self.retry_clients();
            return;
        };
        let lost = crate::sys::GUARD_LOST_PAGES.load(Ordering::Relaxed);
        if lost > c.lost_pages {
            c.lost_pages = lost;
            self.say_limited(
                "lost-pages",
                format_args!(
                    "the client segment lost {lost} page(s) that could not be allocated again \
                     (is /dev/shm full?): events there are not seen until ham restarts"
                ),
            );
        }
        let Some(c) = &mut self.clients else { return };
        // A client shrank the segment (ham's SIGBUS handler grew it back, as zeros).
        if !c.seg.header_intact() {
            c.armed = false; // the doorbell word was lost with the rest: arm it again
            let repairs = crate::sys::GUARD_REPAIRS.load(Ordering::Relaxed);
            log(
                &self.cfg.instance.name,
                format_args!(
                    "the client segment was shrunk or overwritten by a client ({repairs} time(s) grown back); its header is written again"
                ),
            );
            c.seg.rewrite_header();
        }
        if c.armed && c.consumer.has_published(&c.seg) {
            log(
                &self.cfg.instance.name,
                format_args!("detector ring: events waited with no doorbell rung; draining"),
            );
            self.drain_ring();
        }
    }

    /// A HAM that could not set up the client segment (no memory, no process for its
    /// doorbell thread, …) tries again at each liveness tick: a transient failure must not
    /// leave it without heartbeats and the ring for good.
    fn retry_clients(&mut self) {
        let h = self.writer.segment().header();
        let key = h.client_key();
        // As a successor would: reuse a client segment of ham's own if one is there.
        let origin = Origin::Promoted {
            passed: Default::default(),
        };
        match Clients::open(&self.cfg, &origin, true, key, &self.writer) {
            Ok(c) => {
                self.clients = Some(c);
                match self.watch_clients() {
                    Ok(()) => log(
                        &self.cfg.instance.name,
                        format_args!("the client segment is set up (at a retry)"),
                    ),
                    Err(e) => log(
                        &self.cfg.instance.name,
                        format_args!("cannot watch the doorbell: {e}"),
                    ),
                }
            }
            Err(e) => self.say_limited(
                "clients-retry",
                format_args!("cannot set up the client segment yet: {e}; retrying"),
            ),
        }
    }

    pub(super) fn drain_ring(&mut self) {
        let now = mono_ns();
        for _ in 0..DRAIN_BUDGET {
            let Some(c) = &mut self.clients else { return };
            let polled = c.consumer.poll(&c.seg, now, is_dead);
            match polled {
                Polled::Event(ev) => self.on_ring_event(ev),
                Polled::Rejected(why) => {
                    self.ring_reject(format_args!("rejected: {why}"));
                    if why.ends_with("ring repaired") {
                        // A repair rewrote the whole ring: let the loop breathe (a client that
                        // keeps scribbling must not keep ham repairing).
                        if let Some(c) = &self.clients {
                            let _ = rustix::io::write(&c.doorbell, &1u64.to_ne_bytes());
                        }
                        break;
                    }
                }
                Polled::Abandoned { pid } => self.ring_reject(format_args!(
                    "abandoned a slot claimed by pid {pid} and never published"
                )),
                Polled::Empty => break,
                Polled::Stalled { retry_at } if retry_at <= now => continue,
                Polled::Stalled { retry_at } => {
                    if let Some(c) = &mut self.clients {
                        if c.stall_timer != Some(retry_at) {
                            c.stall_timer = Some(retry_at);
                            self.schedule(retry_at, Deadline::RingStall);
                        }
                    }
                    break;
                }
            }
        }
        if let Some(c) = &self.clients {
            let _ = self.writer.set_ring_state(c.consumer.record());
        }
    }

    fn ring_reject(&mut self, msg: std::fmt::Arguments) {
        let Some(c) = &mut self.clients else { return };
        c.logged += 1;
        if c.logged <= LOG_REJECTS {
            log(
                &self.cfg.instance.name,
                format_args!("detector ring: {msg}"),
            );
            if c.logged == LOG_REJECTS {
                log(
                    &self.cfg.instance.name,
                    format_args!(
                        "detector ring: further rejections are only counted (hamctl status)"
                    ),
                );
            }
        }
    }

    fn on_ring_event(&mut self, ev: RingEvent) {
        let Some(c) = &mut self.clients else { return };
        // A denied event was taken off the ring but not acted on: it counts as rejected,
        // not consumed.
        if ev.token != client_token(c.key, ev.pid, ev.uid) {
            c.consumer.deny();
            return self.ring_reject(format_args!(
                "event from pid {} (uid {}) carries a token ham did not give it",
                ev.pid, ev.uid
            ));
        }
        let Some(&i) = self.by_name.get(&ev.entity) else {
            c.consumer.deny();
            return self.ring_reject(format_args!(
                "event from pid {} for unknown entity `{}`",
                ev.pid, ev.entity
            ));
        };
        if !self.may_act_on(i, ev.pid as i32, ev.uid) {
            if let Some(c) = &mut self.clients {
                c.consumer.deny();
            }
            let name = self.entities[i].cfg.name.clone();
            return self.ring_reject(format_args!(
                "pid {} (uid {}) may not raise on `{name}`",
                ev.pid, ev.uid
            ));
        }
        match ev.kind {
            KIND_RAISE => {
                self.raise(i, ev.class, (ev.severity, ev.value, ev.from), ev.pid as i32);
            }
            KIND_STATE => {
                let what = format!("pid {}: state {} -> {}", ev.pid, ev.from, ev.to);
                self.record(i, None, "state", "state", &what);
                self.fire(
                    i,
                    Event::State {
                        from: ev.from,
                        to: ev.to,
                    },
                    None,
                );
            }
            _ => {}
        }
    }

    /// The rule for acting on an entity (raise, attach, detach): root and ham's own user
    /// may act on any; any other process only on the entity it is, or on an entity whose
    /// `raise_from` names the entity it is.
    pub(super) fn may_act_on(&self, i: usize, pid: i32, uid: u32) -> bool {
        if uid == 0 || uid == self.my_uid {
            return true;
        }
        let is = |j: usize| {
            let e = &self.entities[j];
            e.rec.pid == pid && pid > 0 && e.rec.state.has_process()
        };
        is(i) || self.entities[i].cfg.raise_from.iter().any(|&j| is(j))
    }

    /// A detector's event (from the ring or `hamctl raise`): fires the matching conditions.
    /// Returns how many matched.
    pub(super) fn raise(
        &mut self,
        i: usize,
        class: String,
        (severity, value, rtype): (u32, i64, u32),
        from_pid: i32,
    ) -> usize {
        let event = Event::Raise {
            class,
            severity,
            value,
            rtype,
        };
        let n = self.matching(i, &event).count();
        // A raise no condition listens to is not a condition fired: it is not logged (a
        // chatty detector would otherwise push every entity's history out of the log).
        if let (
            1..,
            Event::Raise {
                class,
                severity,
                value,
                ..
            },
        ) = (n, &event)
        {
            let from = if from_pid > 0 {
                format!("pid {from_pid}: ")
            } else {
                String::new()
            };
            let what =
                format!("{from}class {class} severity {severity} value {value}: {n} condition(s)");
            self.record(i, None, "raise", "raise", &what);
        }
        self.fire(i, event, None);
        n
    }

    // -- attach / detach -------------------------------------------------------------------

    /// Attaches a process to entity `i`; with a heartbeat, the answer comes with the
    /// descriptor of the client's heartbeat page.
    pub(super) fn attach(
        &mut self,
        i: usize,
        peer: Peer,
        pid: Option<i32>,
        spec: HeartbeatSpec,
    ) -> (Response, Option<OwnedFd>) {
        match self.attach_checked(i, peer, pid, spec) {
            Ok(answer) => answer,
            Err(r) => (r, None),
        }
    }

    fn attach_checked(
        &mut self,
        i: usize,
        peer: Peer,
        pid: Option<i32>,
        spec: HeartbeatSpec,
    ) -> Result<(Response, Option<OwnedFd>), Response> {
        let target = pid.unwrap_or(peer.pid);
        let name = self.entities[i].cfg.name.clone();
        if target != peer.pid && !(peer.uid == 0 || peer.uid == self.my_uid) {
            return Err(Response::errno(
                libc::EPERM,
                format!(
                    "permission denied: pid {} may attach only itself (or be root or ham's user)",
                    peer.pid
                ),
            ));
        }
        if spec.period_ns < MIN_HEARTBEAT_PERIOD_NS && (spec.missed_low | spec.missed_high) != 0 {
            return Err(Response::err(format!(
                "heartbeat period {} is below the floor of 1ms",
                ham_core::duration::format_ns(spec.period_ns)
            )));
        }
        if spec.missed_high != 0 && spec.missed_low > spec.missed_high {
            return Err(Response::err("missed_low must not exceed missed_high"));
        }
        let e = &self.entities[i];
        let adopt = e.cfg.attach_only && (e.rec.pid != target || e.pidfd.is_none());
        if e.cfg.attach_only {
            if e.rec.state.has_process() && e.pidfd.is_some() && e.rec.pid != target {
                return Err(Response::err(format!(
                    "`{name}` is attached by pid {}; detach it first",
                    e.rec.pid
                )));
            }
        } else if !(e.rec.pid == target && e.rec.state == EntityState::Running) {
            return Err(Response::err(format!(
                "`{name}` is ham-started and runs pid {} ({}); pid {target} cannot attach to it",
                e.rec.pid,
                e.rec.state.as_str()
            )));
        }
        let now = mono_ns();
        let slot = self.entities[i].slot;
        // A new attachment replaces the old one, and its heartbeat page with it.
        self.end_attachment(i);
        // The client's own heartbeat page (no other client can write it), made before
        // anything else changes: a refusal here leaves nothing half done.
        let beats = spec.missed_low | spec.missed_high != 0;
        let page = if beats {
            let name = ham_core::beat::page_name(&self.cfg.instance.name, slot);
            match ham_core::beat::BeatMap::create(&name, target as u32, now) {
                Ok(page) => Some(page),
                Err(e) => {
                    self.say_limited("beat-page", format_args!("{name}: attach: {e}"));
                    self.publish(i);
                    return Err(Response::errno(
                        libc::ENOMEM,
                        format!("no heartbeat page: {e}"),
                    ));
                }
            }
        } else {
            None
        };
        if adopt {
            if let Err(why) = self.adopt_attached(i, target) {
                ham_core::beat::BeatMap::unlink(&ham_core::beat::page_name(
                    &self.cfg.instance.name,
                    slot,
                ));
                return Err(Response::err(why));
            }
        }
        let page_fd = page.map(|(map, fd)| {
            self.entities[i].beat = Some(map);
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
        r.slot = Some(slot);
        Ok((r, page_fd))
    }

    /// A process attaches itself to an `attach_only` entity: it is watched like an adopted
    /// entity (pidfd, handed to the Guardian) but never started or restarted by ham.
    pub(super) fn adopt_attached(&mut self, i: usize, pid: i32) -> Result<(), String> {
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
            e.rec.state = EntityState::Running;
            e.rec.started_mono_ns = now;
            e.rec.started_unix_ns = unix_ns();
            e.adopted = true;
            e.wanted = ham_core::policy::Wanted::Up;
        }
        self.publish(i);
        self.watch(i, &pidfd).map_err(|e| format!("epoll: {e}"))?;
        self.send_to_guardian(self.entities[i].slot, pid, start_time, &pidfd);
        self.entities[i].pidfd = Some(pidfd);
        self.became_running(i, now);
        Ok(())
    }

    pub(super) fn detach(&mut self, i: usize, peer: Peer) -> Response {
        let e = &self.entities[i];
        let name = e.cfg.name.clone();
        if !(peer.uid == 0 || peer.uid == self.my_uid || (e.rec.pid == peer.pid && peer.pid > 0)) {
            return Response::errno(
                libc::EPERM,
                format!(
                    "permission denied: pid {} is not attached to `{name}`",
                    peer.pid
                ),
            );
        }
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
            e.rec.state = EntityState::Stopped;
            e.ready = false;
            e.rec.ready = false;
        }
        self.publish(i);
        self.record(i, None, "detach", "detach", &format!("pid {pid}"));
        log(
            &self.cfg.instance.name,
            format_args!("{name}: pid {pid} detached"),
        );
        self.fire(i, Event::Detach, None);
        Response::ok(format!("detached from `{name}`"))
    }

    // -- heartbeat deadlines ---------------------------------------------------------------

    /// (Re)starts the heartbeat monitor of entity `i` from its record, counting from `now`.
    pub(super) fn watch_heartbeat(&mut self, i: usize, now: u64) {
        let e = &mut self.entities[i];
        let Some(spec) = e.rec.heartbeat else {
            e.hb = None;
            return;
        };
        let mut hb = Heartbeat {
            spec,
            base: now,
            fired: 0,
            fired_last: 0,
            deadline: 0,
        };
        hb.deadline = on_grid(next_deadline(&hb, now, now), self.cfg.heartbeat_grid_ns);
        let at = hb.deadline;
        e.hb = Some(hb);
        self.schedule(at, Deadline::Heartbeat(i));
    }

    /// Treat entity `i` as having just beaten (`heartbeat-healthy`).
    pub(super) fn heartbeat_healthy(&mut self, i: usize) -> bool {
        if self.entities[i].hb.is_none() {
            return false;
        }
        self.watch_heartbeat(i, mono_ns());
        true
    }

    /// The ending of a process ends its attachment, and its heartbeat page with it.
    pub(super) fn end_attachment(&mut self, i: usize) {
        let e = &mut self.entities[i];
        e.hb = None;
        e.rec.heartbeat = None;
        if e.beat.take().is_some() {
            ham_core::beat::BeatMap::unlink(&ham_core::beat::page_name(
                &self.cfg.instance.name,
                e.slot,
            ));
        }
    }

    /// A heartbeat deadline came: fire what was missed, and set the next one.
    pub(super) fn check_heartbeat(&mut self, i: usize) {
        let now = mono_ns();
        let beat = self.entities[i]
            .beat
            .as_ref()
            .map_or(0, ham_core::beat::BeatMap::last_beat);
        // A beat "from the future" is a stray write: it counts as no beat (it must not keep
        // a hung process looking alive).
        let beat = if beat > now { 0 } else { beat };
        let grid = self.cfg.heartbeat_grid_ns;
        let Some(hb) = &mut self.entities[i].hb else {
            return;
        };
        let last = beat.max(hb.base);
        if hb.fired > 0 && last > hb.fired_last {
            hb.fired = 0; // it beat again: a new miss will be reported again
        }
        let p = hb.spec.period_ns;
        let due = |n: u32| n != 0 && now >= last.saturating_add(p.saturating_mul(u64::from(n)));
        let low = hb.fired == 0 && due(hb.spec.missed_low);
        if low {
            hb.fired = 1;
            hb.fired_last = last;
        }
        let high = hb.fired <= 1 && due(hb.spec.missed_high);
        if high {
            hb.fired = 2;
            hb.fired_last = last;
        }
        hb.deadline = on_grid(next_deadline(hb, last, now), grid);
        let at = hb.deadline;
        self.schedule(at, Deadline::Heartbeat(i));
        for (missed, is_high) in [(low, false), (high, true)] {
            if missed {
                self.heartbeat_missed(i, is_high, now.saturating_sub(last));
            }
        }
    }

    pub(super) fn heartbeat_missed(&mut self, i: usize, high: bool, silent_ns: u64) {
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

    pub(super) fn subscribe(
        &mut self,
        topic: String,
        signal: Option<i32>,
        peer: Peer,
        stream: UnixStream,
    ) {
        // Each subscription holds a descriptor: bounded per unprivileged uid, and in all
        // with a share kept for root and ham's user.
        if peer.uid != 0 && peer.uid != self.my_uid {
            let mine = self
                .subscribers
                .values()
                .filter(|s| s.uid == peer.uid)
                .count();
            if mine >= SUBS_PER_UID || self.subscribers.len() >= SUBS_MAX - SUBS_RESERVED {
                let _ = self.writer.bump_limit(ham_core::layout::LIMIT_SUBS);
                self.say_limited(
                    "subs-refused",
                    format_args!(
                        "refused a subscription from uid {} (pid {}): {mine} open",
                        peer.uid, peer.pid
                    ),
                );
                super::reply(
                    stream,
                    &Response::errno(
                        libc::EAGAIN,
                        format!(
                            "uid {} has {mine} subscriptions (at most {SUBS_PER_UID}), or \
                             unprivileged users hold their share of {}",
                            peer.uid,
                            SUBS_MAX - SUBS_RESERVED
                        ),
                    ),
                );
                return;
            }
        } else if self.subscribers.len() >= SUBS_MAX {
            let _ = self.writer.bump_limit(ham_core::layout::LIMIT_SUBS);
            super::reply(
                stream,
                &Response::errno(libc::EAGAIN, format!("{SUBS_MAX} subscriptions are open")),
            );
            return;
        }
        let signal = match signal {
            None => None,
            Some(sig) => {
                let fd = Pid::from_raw(peer.pid)
                    .and_then(|p| rustix::process::pidfd_open(p, PidfdFlags::empty()).ok());
                match (fd, rustix::process::Signal::from_named_raw(sig)) {
                    (Some(fd), Some(_)) => Some((fd, sig)),
                    _ => {
                        super::reply(
                            stream,
                            &Response::err(format!("cannot signal pid {} with {sig}", peer.pid)),
                        );
                        return;
                    }
                }
            }
        };
        let first = Response::ok(format!("subscribed to `{topic}`")).to_line();
        let ok = (&stream).write_all(&first).is_ok() && stream.set_nonblocking(true).is_ok();
        if !ok {
            return;
        }
        let id = self.next_sub;
        self.next_sub += 1;
        if epoll::add(
            &self.epoll,
            &stream,
            Token::Sub(id).data(),
            epoll::EventFlags::RDHUP | epoll::EventFlags::IN,
        )
        .is_ok()
        {
            self.subscribers.insert(
                id,
                super::clients::Subscriber {
                    topic,
                    stream,
                    uid: peer.uid,
                    signal,
                },
            );
        }
    }

    /// A subscriber hung up (or wrote to us, which it must not): drop it.
    pub(super) fn on_subscriber(&mut self, id: u64) {
        if let Some(s) = self.subscribers.remove(&id) {
            let _ = epoll::delete(&self.epoll, &s.stream);
        }
    }

    /// A `notify` action: one line to each subscriber of the topic. Returns how many got it.
    pub(super) fn notify(
        &mut self,
        i: usize,
        topic: &str,
        condition: &str,
        (code, value): (Option<i32>, Option<i32>),
    ) -> usize {
        let e = &self.entities[i];
        let n = Notification {
            topic: topic.to_owned(),
            entity: e.cfg.name.clone(),
            condition: condition.to_owned(),
            pid: e.rec.pid,
            time_unix_ns: unix_ns(),
            code,
            value,
        };
        let mut line = serde_json::to_vec(&n).expect("a notification serialises");
        line.push(b'\n');
        let mut sent = 0;
        let mut gone = Vec::new();
        for (id, s) in &self.subscribers {
            if s.topic != topic && s.topic != "*" {
                continue;
            }
            if let Some((pidfd, sig)) = &s.signal {
                if let Some(sig) = rustix::process::Signal::from_named_raw(*sig) {
                    let _ = rustix::process::pidfd_send_signal(pidfd, sig);
                }
            }
            // Non-blocking: a subscriber that does not read is dropped, not waited for.
            match (&s.stream).write(&line) {
                Ok(k) if k == line.len() => sent += 1,
                _ => gone.push(*id),
            }
        }
        for id in gone {
            self.on_subscriber(id);
        }
        sent
    }

    /// After a takeover or a warm start: every attached client counts as having beaten now.
    /// After a takeover or a warm start: each attachment goes on with the heartbeat page
    /// its predecessor made (opened by name, if it is ham's own); one whose page is gone
    /// or not ham's ends (the client must attach again) rather than look hung.
    pub(super) fn resume_heartbeats(&mut self) {
        let now = mono_ns();
        for i in 0..self.entities.len() {
            if self.entities[i].rec.heartbeat.is_none() {
                continue;
            }
            let name = ham_core::beat::page_name(&self.cfg.instance.name, self.entities[i].slot);
            let page = if self.entities[i].rec.state.has_process() {
                ham_core::beat::BeatMap::open(&name).map_err(|e| e.to_string())
            } else {
                Err("its process is gone".to_owned())
            };
            match page {
                Ok(page) => {
                    self.entities[i].beat = Some(page);
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

    /// The doorbell and subscribers in the epoll set.
    pub(super) fn watch_clients(&self) -> io::Result<()> {
        if let Some(c) = &self.clients {
            epoll::add(
                &self.epoll,
                c.doorbell.as_fd(),
                Token::Doorbell.data(),
                epoll::EventFlags::IN,
            )?;
        }
        Ok(())
    }

    /// Whether an action kind is carried out here, and how it went.
    pub(super) fn run_client_action(
        &mut self,
        i: usize,
        cond: &str,
        kind: &ActionKind,
    ) -> Option<Result<String, String>> {
        Some(match kind {
            ActionKind::Notify { topic, code, value } => {
                let n = self.notify(i, topic, cond, (*code, *value));
                Ok(format!("{topic}: {n} subscriber(s)"))
            }
            ActionKind::SignalPid { pid, signal, value } => {
                match crate::sys::sigqueue(*pid, *signal, *value) {
                    Ok(()) => Ok(format!("signal {signal} (value {value}) to pid {pid}")),
                    Err(e) => Err(format!("pid {pid}: {e}")),
                }
            }
            ActionKind::HeartbeatHealthy => {
                if self.heartbeat_healthy(i) {
                    Ok("heartbeat marked healthy".into())
                } else if self.entities[i].watchdog_at.is_some() {
                    // An sd_notify watchdog: one full period from now.
                    self.pet_watchdog(i, mono_ns(), None);
                    Ok("watchdog marked healthy".into())
                } else {
                    Err("no heartbeat is attached".into())
                }
            }
            ActionKind::Restart { entity, command } => {
                let j = entity.unwrap_or(i);
                let target = &self.entities[j];
                // Under a death condition, an entity its own policy already started again (or
                // holds off) is not restarted a second time, nor one an operator stopped.
                if matches!(cond, "death" | "abnormal-death") {
                    let already = match target.rec.state {
                        EntityState::Starting | EntityState::Running => {
                            Some("was already restarted by its policy")
                        }
                        EntityState::HeldOff | EntityState::Backoff => {
                            Some("is held off by its policy")
                        }
                        _ if target.wanted == ham_core::policy::Wanted::Down => {
                            Some("was stopped by an operator")
                        }
                        _ => None,
                    };
                    if let Some(why) = already {
                        return Some(Ok(format!("{} {why}", target.cfg.name)));
                    }
                }
                // From now on it runs this command line. What the entity is does not change:
                // a self-attached one stays self-attached (its missed heartbeats are its
                // conditions' business, never a hang ham acts on by itself).
                if let Some((path, argv)) = command {
                    let e = &mut self.entities[j];
                    e.cfg.exec_path = path.clone();
                    e.cfg.argv = argv.clone();
                }
                self.restart_asked(j, cond);
                let e = &self.entities[j];
                match (e.rec.state, &e.last_spawn_error) {
                    // Its program could not be run (QNX checks it at spawn time): the
                    // action fails (its fail list runs); ham keeps retrying.
                    (EntityState::Backoff, Some(why)) => Err(why.clone()),
                    (EntityState::HeldOff, _) => {
                        Ok(format!("{} held off by its policy", e.cfg.name))
                    }
                    (EntityState::Exited, _) => Ok(format!("{}: its policy gives up", e.cfg.name)),
                    _ => Ok(format!("restarting {}", e.cfg.name)),
                }
            }
            ActionKind::Stop { entity } => {
                let j = entity.unwrap_or(i);
                self.begin_stop(j, ham_core::policy::Wanted::Down);
                Ok(format!("stopping {}", self.entities[j].cfg.name))
            }
            ActionKind::HoldOff { entity, ns } => {
                let j = entity.unwrap_or(i);
                let e = &mut self.entities[j];
                if e.rec.state.has_process() {
                    e.hold_after_stop = Some(*ns);
                    self.begin_stop(j, ham_core::policy::Wanted::Down);
                } else {
                    self.hold_off(j, mono_ns() + ns);
                }
                Ok(format!(
                    "{} held off for {}",
                    self.entities[j].cfg.name,
                    ham_core::duration::format_ns(*ns)
                ))
            }
            _ => return None,
        })
    }
}

/// `at` rounded up to the next multiple of `grid` (0: unchanged): deadlines of many clients
/// then share one wake-up, each miss reported at most `grid` late.
fn on_grid(at: u64, grid: u64) -> u64 {
    if grid == 0 {
        at
    } else {
        at.div_ceil(grid).saturating_mul(grid)
    }
}

/// When the monitor next needs to look: at the next threshold not yet reported, or one
/// period from now once everything was reported (to notice beats resuming).
fn next_deadline(hb: &Heartbeat, last: u64, now: u64) -> u64 {
    let p = hb.spec.period_ns.max(MIN_HEARTBEAT_PERIOD_NS);
    let at = |n: u32| last.saturating_add(p.saturating_mul(u64::from(n)));
    let t = match hb.fired {
        0 if hb.spec.missed_low != 0 => at(hb.spec.missed_low),
        0 | 1 if hb.spec.missed_high != 0 => at(hb.spec.missed_high),
        _ => now + p,
    };
    t.max(now + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(low: u32, high: u32, fired: u8) -> Heartbeat {
        Heartbeat {
            spec: HeartbeatSpec {
                period_ns: 100,
                missed_low: low,
                missed_high: high,
            },
            base: 0,
            fired,
            fired_last: 0,
            deadline: 0,
        }
    }

    #[test]
    fn deadlines_are_the_next_unreported_threshold_and_share_a_grid() {
        let ms = MIN_HEARTBEAT_PERIOD_NS; // periods below the floor count as the floor
        assert_eq!(next_deadline(&hb(2, 4, 0), 1000, 1000), 1000 + 2 * ms);
        assert_eq!(next_deadline(&hb(2, 4, 1), 1000, 1000), 1000 + 4 * ms);
        assert_eq!(next_deadline(&hb(0, 4, 0), 1000, 1000), 1000 + 4 * ms);
        // Everything reported: look again one period on, for the beats to resume.
        assert_eq!(next_deadline(&hb(2, 4, 2), 0, 5000), 5000 + ms);
        assert_eq!(on_grid(1001, 0), 1001);
        assert_eq!(on_grid(1001, 250), 1250);
        assert_eq!(on_grid(1250, 250), 1250);
    }
}
