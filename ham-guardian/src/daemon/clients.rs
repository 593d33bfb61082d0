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

use std::io::{self};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ham_core::client::{
    ClientSegment, Consumer, KIND_RAISE, KIND_STATE, Name, Polled, RingEvent, RingRecord,
    client_token,
};
use ham_core::layout::HeartbeatSpec;
use ham_core::segment::SegmentWriter;
use rustix::event::epoll;
use rustix::process::{Pid, PidfdFlags};

use super::{Daemon, Deadline, EntityId, Origin, Token, log};
use crate::actions::Event;
use crate::mono_ns;

/// The shortest heartbeat period accepted (QNX's floor is 1 s; ours is the timer's
/// resolution that still leaves the loop idle between deadlines).
pub const MIN_HEARTBEAT_PERIOD_NS: u64 = 1_000_000;

/// How many ring events one turn of the loop takes before it lets other events in.
const DRAIN_BUDGET: usize = 4096;

/// Rejected-event log lines per HAM (then only counted).
const LOG_REJECTS: u64 = 20;
/// A drain that takes this many events is a flood's: before it sleeps, the HAM looks at the
/// rings for up to [`FLOOD_SPIN_NS`] more. Each sleep costs a wake-up (the producer's write to
/// the bell, the scheduler); a HAM faster than a steady
/// producer slept after every few dozen events and spent its time there (about 11,000 sleeps
/// for 500,000 events in `ring_throughput`). A lone event or a small burst never spins.
const FLOOD_EVENTS: u64 = 8;
const FLOOD_SPIN_NS: u64 = 50_000;
const FLOOD_LOOK_NS: u64 = 4_000;
const FLOOD_TURN_NS: u64 = 500_000;

/// The heartbeat monitor of one attached entity (in the daemon's memory; what it was
/// attached with is in the entity record, so a successor rebuilds it).
pub(super) struct Heartbeat {
    pub spec: HeartbeatSpec,
    /// The check at which a beat was last seen, or when watching began (attach, takeover,
    /// `heartbeat-healthy`).
    pub seen: u64,
    /// 0: no miss reported; 1: missed-low fired; 2: missed-high fired. A beat seen ends the
    /// episode.
    pub fired: u8,
    /// The next check.
    pub deadline: u64,
}

impl Heartbeat {
    /// The check at `at`, having seen a beat since the last one or not: which misses
    /// (low, high) are now due. A client is missed-low at the first check at least
    /// `missed_low` periods after the check that last saw it beat: between `missed_low`
    /// and `missed_low + 1` periods after its last beat.
    pub fn check(&mut self, at: u64, beaten: bool) -> (bool, bool) {
        if beaten {
            self.seen = self.seen.max(at);
            self.fired = 0;
        }
        let p = self.spec.period_ns;
        let due = |n: u32| n != 0 && at >= self.seen.saturating_add(p.saturating_mul(u64::from(n)));
        let low = self.fired == 0 && due(self.spec.missed_low);
        if low {
            self.fired = 1;
        }
        let high = self.fired <= 1 && due(self.spec.missed_high);
        if high {
            self.fired = 2;
        }
        (low, high)
    }
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
pub(super) const SUBS_PER_UID: usize = 32;
pub(super) const SUBS_MAX: usize = 512;
pub(super) const SUBS_RESERVED: usize = 64;

/// The client segment and its consumer.
pub(super) struct Clients {
    pub seg: Arc<ClientSegment>,
    pub consumer: Consumer,
    /// Written by the doorbell thread when a producer rang the futex.
    pub doorbell: OwnedFd,
    /// The bell clients ring directly (an eventfd handed to them at `hello`), and its id.
    pub bell: OwnedFd,
    pub bell_id: u64,
    pub armed: bool,
    /// The stalled-claim deadline a timer is set for (one at a time).
    pub stall_timer: Option<u64>,
    pub key: [u64; 2],
    pub logged: u64,
    /// `sys::GUARD_LOST_PAGES` when it was last reported.
    pub lost_pages: u64,
    /// The last drain took a flood's worth of events: look again for a while before
    /// sleeping (see [`FLOOD_EVENTS`]).
    pub flood: bool,
    /// Lanes: detector rings of one producer's own, beside the shared one.
    pub lanes: super::lanes::Lanes,
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
        handed_bell: Option<OwnedFd>,
    ) -> io::Result<Self> {
        if crate::failpoint::fails("clients:setup") {
            return Err(io::Error::other("failpoint clients:setup"));
        }
        let name = ham_core::paths::client_segment(&cfg.instance.name);
        let reuse = (warm || matches!(origin, Origin::Promoted { .. }))
            .then(|| ClientSegment::open(&name).ok())
            .flatten()
            .filter(|s| s.check_owned().is_ok())
            .filter(|s| s.hb_slots() == 0 && s.ring_slots() == cfg.ring_slots);
        let reused = reuse.is_some();
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
        // A predecessor's lanes go with its client segment: kept with it, or removed.
        let lanes = if reused {
            super::lanes::Lanes::adopt(&cfg.instance.name, key)
        } else {
            super::lanes::Lanes::remove_stale(&cfg.instance.name);
            super::lanes::Lanes::new()
        };
        let (base, len, fd) = seg.mapping();
        crate::sys::guard_mapping(base, len, fd)?;
        let seg = Arc::new(seg);
        // The counts go on from the predecessor's (they describe the ring, not a HAM); the
        // tickets it took after its last record count as consumed. Recorded at once, not
        // at the next drain (which may never come).
        let mut consumer = Consumer::resume_recorded(&seg, start, cfg.ring_abandon_after_ns);
        // The lanes' events taken after the predecessor's last record count as consumed too.
        let generation = writer.segment().header().ring_generation();
        consumer.stats.consumed += lanes.taken_since_record(generation);
        lanes.note_record(generation + 1);
        let _ = writer.set_ring_state(consumer.record());
        let doorbell = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        // The predecessor's bell, on the ring it was made for, goes on: its clients hold it.
        // Otherwise a new one, with another id (clients holding an older bell see the id
        // differ and ring the futex).
        let (bell, bell_id) = match handed_bell {
            Some(fd) if reused && seg.bell_id() != 0 => (fd, seg.bell_id()),
            _ => (
                rustix::event::eventfd(
                    0,
                    rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
                )?,
                seg.bell_id().wrapping_add(1).max(1),
            ),
        };
        seg.set_bell_id(bell_id);
        let ring = doorbell.try_clone()?;
        let waiter = Arc::clone(&seg);
        std::thread::Builder::new()
            .name("doorbell".into())
            .spawn(move || doorbell_thread(&waiter, &ring))?;
        Ok(Self {
            seg,
            consumer,
            doorbell,
            bell,
            bell_id,
            armed: false,
            stall_timer: None,
            key,
            logged: 0,
            lost_pages: 0,
            flood: false,
            lanes,
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

/// The last ring event a drain let through: its sender, token and entity, checked (token,
/// entity lookup, right to raise), and the entity's id.
pub(super) struct LetThrough {
    pid: u32,
    uid: u32,
    token: u64,
    entity: Name,
    id: EntityId,
}

impl LetThrough {
    fn of(ev: &RingEvent, id: EntityId) -> Self {
        Self {
            pid: ev.pid,
            uid: ev.uid,
            token: ev.token,
            entity: ev.entity,
            id,
        }
    }

    /// The entity `ev` is for, if `ev` is from the same sender with the same token for the
    /// same entity (so the same checks would let it through).
    fn entity_of(&self, ev: &RingEvent) -> Option<EntityId> {
        ((self.pid, self.uid, self.token, self.entity) == (ev.pid, ev.uid, ev.token, ev.entity))
            .then_some(self.id)
    }
}

/// Whether a process is proven gone (a ring claimer): no such pid, or its pidfd says so.
pub(super) fn is_dead(pid: u32) -> bool {
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
        let Some(c) = &self.clients else { return };
        if c.armed {
            return;
        }
        // In a flood, more is on its way: look for it a while before sleeping, and drain what
        // comes here, for up to FLOOD_TURN_NS (a turn of the loop, the doorbell's write,
        // epoll_wait and its read, cost more than the events it came for); then the loop
        // turns and serves whatever else is ready. The flood ends after FLOOD_SPIN_NS of
        // nothing.
        if c.flood {
            let turn = mono_ns();
            let mut quiet = turn;
            let mut look = turn;
            loop {
                // A look every few microseconds, not at every instant: a look takes the line
                // the producer is writing, and events taken a few dozen at a time are read
                // from lines it has finished with.
                let now = mono_ns();
                if now >= look {
                    let Some(c) = &self.clients else { return };
                    if c.consumer.has_published(&c.seg) || c.lanes.need_drain() {
                        if now >= turn + FLOOD_TURN_NS {
                            let _ = rustix::io::write(&c.doorbell, &1u64.to_ne_bytes());
                            return;
                        }
                        self.drain_ring();
                        quiet = mono_ns();
                    } else if now >= quiet + FLOOD_SPIN_NS {
                        break;
                    }
                    look = now + FLOOD_LOOK_NS;
                }
                // A producer woken on this CPU (wake-ups go to the waker's CPU) gets it:
                // spinning here would starve the very thread the HAM waits for, until the
                // scheduler moved one of them (milliseconds).
                std::thread::yield_now();
            }
            if let Some(c) = &mut self.clients {
                c.flood = false;
            }
        }
        let Some(c) = &mut self.clients else { return };
        // The shared ring's look, then the lanes' (both after "asleep" and its fence).
        let idle = c.consumer.prepare_sleep(&c.seg) && !c.lanes.need_drain();
        if idle {
            // No wake-up for the doorbell thread: a producer's FUTEX_WAKE reaches it whatever
            // value it waits on, and it then finds this generation's "rung".
            c.armed = true;
        } else {
            c.consumer.awake(&c.seg);
            let _ = rustix::io::write(&c.doorbell, &1u64.to_ne_bytes());
        }
    }

    /// The doorbell (`bell` false: the doorbell thread's, or ours) or the bell rang: read
    /// that eventfd (only the one that rang), then take what the ring holds.
    pub(super) fn on_doorbell(&mut self, bell: bool) {
        if let Some(c) = &mut self.clients {
            let mut buf = [0u8; 8];
            let _ = rustix::io::read(if bell { &c.bell } else { &c.doorbell }, &mut buf);
            c.armed = false;
            c.consumer.awake(&c.seg);
        }
        self.drain_ring();
    }

    /// At each housekeeping tick: a ring with a published event while the HAM is armed means a
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
            c.seg.set_bell_id(c.bell_id);
        }
        if c.armed && (c.consumer.has_published(&c.seg) || c.lanes.need_drain()) {
            log(
                &self.cfg.instance.name,
                format_args!("detector ring: events waited with no doorbell rung; draining"),
            );
            self.drain_ring();
        }
    }

    /// A HAM that could not set up the client segment (no memory, no process for its
    /// doorbell thread, …) tries again at each housekeeping tick: a transient failure must not
    /// leave it without heartbeats and the ring for good.
    fn retry_clients(&mut self) {
        if let Err(e) = self.set_up_clients_late(None) {
            self.say_limited(
                "clients-retry",
                format_args!("cannot set up the client segment yet: {e}; retrying"),
            );
        } else {
            log(
                &self.cfg.instance.name,
                format_args!("the client segment is set up (at a retry)"),
            );
        }
    }

    /// A takeover sets up the client segment once the entities that died with the HAM are
    /// started again: mapping it and starting the doorbell thread take a tenth of a
    /// millisecond they need not wait for (clients' events wait in the ring meanwhile).
    /// `bell`: the predecessor's, handed over.
    pub(super) fn set_up_clients_after_takeover(&mut self, bell: Option<OwnedFd>) {
        if let Err(e) = self.set_up_clients_late(bell) {
            log(
                &self.cfg.instance.name,
                format_args!(
                    "cannot set up the client segment: {e}; going on without SDK clients \
                     (retrying)"
                ),
            );
        }
    }

    /// Sets up the client segment after the loop's start, as a successor would (reusing a
    /// client segment of ham's own if one is there), and watches it.
    fn set_up_clients_late(&mut self, bell: Option<OwnedFd>) -> io::Result<()> {
        let h = self.writer.segment().header();
        let key = h.client_key();
        let origin = Origin::Promoted {
            passed: Default::default(),
            from: None,
            dead: None,
        };
        let c = Clients::open(&self.cfg, &origin, true, key, &self.writer, bell)?;
        self.clients = Some(c);
        if let Err(e) = self.watch_clients() {
            log(
                &self.cfg.instance.name,
                format_args!("cannot watch the doorbell: {e}"),
            );
        }
        // The Guardian running now may have been started without this bell: it gets it, so
        // that a successor listens on the bell clients are given from now on.
        if let Some(c) = &self.clients {
            let who = (ham_core::layout::SlotIndex(0), crate::handoff::BELL, 0);
            if let Err(err) = self.guardian.send(&self.epoll, who, &c.bell, None) {
                say!(self, "cannot hand the clients' bell to the guardian: {err}");
            }
        }
        Ok(())
    }

    pub(super) fn drain_ring(&mut self) {
        let now = mono_ns();
        let taken = |c: &Clients| {
            let s = c.consumer.stats;
            s.consumed + s.rejected + s.abandoned
        };
        let before = self.clients.as_ref().map_or(0, taken);
        // The last event let through in this drain: a detector's burst (same process, same
        // entity) is checked once per drain, not once per event.
        let mut passed = None;
        for _ in 0..DRAIN_BUDGET {
            let Some(c) = &mut self.clients else { return };
            let polled = c.consumer.poll(&c.seg, now, is_dead);
            match polled {
                Polled::Event(ev) => self.on_ring_event(ev, &mut passed),
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
        let retire = self.drain_lanes(&mut passed);
        if let Some(c) = &mut self.clients {
            c.flood |= taken(c).wrapping_sub(before) >= FLOOD_EVENTS;
        }
        self.record_ring();
        // After the record: a successor finds a retired lane's events counted, or the lane.
        self.retire_lanes(retire);
    }

    /// Records the consumer's position and counts (the lanes' positions first, under the
    /// record's generation).
    pub(super) fn record_ring(&mut self) {
        if let Some(c) = &self.clients {
            c.lanes
                .note_record(self.writer.segment().header().ring_generation() + 1);
            self.wrote(self.writer.set_ring_state(c.consumer.record()));
        }
    }

    pub(super) fn ring_reject(&mut self, msg: std::fmt::Arguments) {
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

    /// One event off the ring. `passed`: the last event let through in this drain (an event
    /// like it need not be checked again).
    pub(super) fn on_ring_event(&mut self, ev: RingEvent, passed: &mut Option<LetThrough>) {
        if let Some(i) = passed.as_ref().and_then(|p| p.entity_of(&ev)) {
            if self.act_on_ring_event(i, ev) {
                *passed = None;
            }
            return;
        }
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
        let Some(i) = self.entities.id_of(ev.entity.as_str()) else {
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
        let remember = LetThrough::of(&ev, i);
        if !self.act_on_ring_event(i, ev) {
            *passed = Some(remember);
        }
    }

    /// What a ring event let through does; whether it fired anything. What fires runs
    /// actions, and those may change what the next event must be checked against: the next
    /// one is then checked in full.
    fn act_on_ring_event(&mut self, i: EntityId, ev: RingEvent) -> bool {
        match ev.kind {
            // Most events have no condition listening (a detector reporting as it goes).
            KIND_RAISE if !self.listens_to_raise(i) => false,
            KIND_RAISE => {
                self.raise(
                    i,
                    &ev.class,
                    (ev.severity, ev.value, ev.from),
                    ev.pid as i32,
                ) > 0
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
                true
            }
            _ => false,
        }
    }

    /// Whether any condition of entity `i` may fire on a raise.
    fn listens_to_raise(&self, i: EntityId) -> bool {
        self.entities[i].cfg.conditions.iter().any(|c| {
            c.enabled
                && matches!(
                    c.trigger,
                    crate::actions::Trigger::Raise { .. } | crate::actions::Trigger::Any
                )
        })
    }

    /// The rule for acting on an entity (raise, attach, detach): root and ham's own user
    /// may act on any; any other process only on the entity it is, or on an entity whose
    /// `raise_from` names the entity it is.
    pub(super) fn may_act_on(&self, i: EntityId, pid: i32, uid: u32) -> bool {
        // Called for every ring event: no allocation, the entities' own records.
        let e = &self.entities[i];
        let from = e
            .cfg
            .rare
            .raise_from
            .iter()
            .map(|&j| self.entities[EntityId::from_index(j)].cfg.name.as_str());
        self.with_caller(Peer { pid, uid }, |c| {
            super::authz::may_raise(c, &e.cfg.name, from)
        })
    }

    /// A detector's event (from the ring or `hamctl raise`): fires the matching conditions.
    /// Returns how many matched.
    pub(super) fn raise(
        &mut self,
        i: EntityId,
        class: &str,
        (severity, value, rtype): (u32, i64, u32),
        from_pid: i32,
    ) -> usize {
        // Most events have no condition listening (a detector reporting as it goes): they
        // cost no allocation.
        if !self.listens_to_raise(i) {
            return 0;
        }
        let event = Event::Raise {
            class: class.to_owned(),
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

    /// The doorbell and subscribers in the epoll set.
    pub(super) fn watch_clients(&self) -> io::Result<()> {
        if let Some(c) = &self.clients {
            for (fd, tok) in [(&c.doorbell, Token::Doorbell), (&c.bell, Token::Bell)] {
                epoll::add(&self.epoll, fd.as_fd(), tok.data(), epoll::EventFlags::IN)?;
            }
            c.lanes.watch(&self.epoll)?;
        }
        Ok(())
    }
}

/// `at` rounded up to the next multiple of `grid` (0: unchanged): checks of clients with
/// different periods then share wake-ups too, each miss reported at most `grid` late.
pub(super) fn on_grid(at: u64, grid: u64) -> u64 {
    if grid == 0 {
        at
    } else {
        at.div_ceil(grid).saturating_mul(grid)
    }
}

/// The check after `now`: the next multiple of the period (CLOCK_MONOTONIC), so that
/// every client with that period is checked at the same instants; then onto `grid`.
pub(super) fn next_check(spec: &HeartbeatSpec, now: u64, grid: u64) -> u64 {
    let p = spec.period_ns.max(MIN_HEARTBEAT_PERIOD_NS);
    on_grid((now / p).saturating_add(1).saturating_mul(p), grid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = MIN_HEARTBEAT_PERIOD_NS;

    fn hb(low: u32, high: u32) -> Heartbeat {
        Heartbeat {
            spec: HeartbeatSpec {
                period_ns: 10 * MS,
                missed_low: low,
                missed_high: high,
            },
            seen: 3 * MS,
            fired: 0,
            deadline: 0,
        }
    }

    #[test]
    fn checks_fall_on_multiples_of_the_period_and_share_a_grid() {
        let spec = hb(2, 4).spec;
        assert_eq!(next_check(&spec, 3 * MS, 0), 10 * MS);
        assert_eq!(next_check(&spec, 10 * MS, 0), 20 * MS, "strictly after now");
        assert_eq!(next_check(&spec, 10 * MS + 1, 0), 20 * MS);
        // Periods below the floor count as the floor.
        let tiny = HeartbeatSpec {
            period_ns: 10,
            ..spec
        };
        assert_eq!(next_check(&tiny, 0, 0), MS);
        assert_eq!(next_check(&spec, 3 * MS, 25 * MS), 25 * MS);
        assert_eq!(on_grid(1001, 0), 1001);
        assert_eq!(on_grid(1001, 250), 1250);
        assert_eq!(on_grid(1250, 250), 1250);
    }

    #[test]
    fn a_miss_is_due_n_periods_after_the_check_that_last_saw_a_beat_and_fires_once() {
        let mut h = hb(2, 4);
        // Watching began at 3 ms: checks at 10 and 20 ms see nothing, and missed-low
        // waits for 2 whole periods past 3 ms (the check at 30 ms).
        assert_eq!(h.check(10 * MS, false), (false, false));
        assert_eq!(h.check(20 * MS, false), (false, false));
        assert_eq!(h.check(30 * MS, false), (true, false));
        assert_eq!(h.check(40 * MS, false), (false, false), "low fires once");
        assert_eq!(
            h.check(50 * MS, true),
            (false, false),
            "a beat ends the episode"
        );
        assert_eq!(h.seen, 50 * MS);
        assert_eq!(h.check(60 * MS, false), (false, false));
        assert_eq!(
            h.check(70 * MS, false),
            (true, false),
            "a new episode is reported"
        );
        assert_eq!(h.check(80 * MS, false), (false, false));
        assert_eq!(h.check(90 * MS, false), (false, true), "high at 4 periods");
        assert_eq!(h.check(200 * MS, false), (false, false), "and once");
        // Missed-high only: both thresholds at once are reported as high alone.
        let mut h = hb(0, 1);
        assert_eq!(h.check(20 * MS, false), (false, true));
    }
}
