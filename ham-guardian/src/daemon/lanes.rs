//! Lanes (`ham_core::lane`): a detector ring of one producer's own. ham makes one when a
//! client asks (`Request::Lane`, which the SDK sends at connect), hands the producer its
//! descriptor, consumes it beside the shared ring, and retires it when the producer's
//! process exits (its pidfd). A successor (takeover, warm start) finds the lanes by name
//! under `/dev/shm`, which says whose each is, and carries on; a cold start removes them
//! (their producers hold a client segment that is gone).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use ham_core::client::client_token;
use ham_core::lane::{LaneConsumer, LaneMap, LanePolled};
use ham_core::protocol::Response;
use rustix::event::epoll;
use rustix::process::{Pid, PidfdFlags};

use super::clients::LetThrough;
use super::{Daemon, Peer, Token, log};
use crate::config::{LANES_MAX, LANES_PER_PID, LANES_PER_UID};

/// Events taken off one lane in one drain before the next lane's turn.
const LANE_BUDGET: usize = 1024;
/// Events taken off all lanes in one drain (the loop then turns, and comes back).
const LANES_BUDGET: usize = 8192;

/// One lane, as the HAM holds it.
pub(super) struct Lane {
    /// First: given back before the mapping and the descriptor go (fields drop in order).
    _guard: crate::sys::Guard,
    name: String,
    map: LaneMap,
    /// Kept open for the SIGBUS guard, which grows the object back if its producer shrinks it.
    _fd: OwnedFd,
    consumer: LaneConsumer,
    pid: u32,
    uid: u32,
    /// The token the owner's events would carry on the shared ring: they are checked alike.
    token: u64,
    /// The owner's pidfd, in the epoll set as `Token::Lane`; `None`: the owner is gone, and
    /// the lane is retired once drained.
    owner: Option<OwnedFd>,
}

/// The lanes of the client segment.
#[derive(Default)]
pub(super) struct Lanes {
    pub open: BTreeMap<u64, Lane>,
    /// The next lane's number (also past every number a predecessor used).
    next: u64,
    /// Where the last drain stopped (lanes take turns).
    cursor: u64,
}

/// The pidfd of `pid`, if it is still the process that started at `start`.
fn owner_pidfd(pid: u32, start: u64) -> Option<OwnedFd> {
    let p = Pid::from_raw(i32::try_from(pid).ok()?)?;
    let fd = rustix::process::pidfd_open(p, PidfdFlags::empty()).ok()?;
    // Read after the pidfd is held: the pid cannot be reused meanwhile.
    (crate::procfs::start_time(pid as i32) == Some(start)).then_some(fd)
}

/// The lanes of instance `inst` under `/dev/shm`: each one's shm name and what that name
/// says (owner pid, start time, uid, number).
fn lane_files(inst: &str) -> impl Iterator<Item = (String, (u32, u64, u32, u64))> + '_ {
    std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(move |entry| {
            let file = entry.file_name();
            let (pid, start, uid, n) = ham_core::paths::parse_lane(inst, file.to_str()?)?;
            Some((
                ham_core::paths::lane(inst, pid, start, uid, n),
                (pid, start, uid, n),
            ))
        })
}

impl Lanes {
    /// No lanes.
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// Every lane of instance `inst` under `/dev/shm`, with its owner (if it still runs) and
    /// where its consumer stopped. A lane that cannot be read or guarded is removed.
    pub(super) fn adopt(inst: &str, key: [u64; 2]) -> Self {
        let mut lanes = Self::new();
        for (name, (pid, start, uid, n)) in lane_files(inst) {
            lanes.next = lanes.next.max(n.saturating_add(1));
            let (map, fd) = match LaneMap::open(&name) {
                Ok(x) => x,
                Err(e) => {
                    // Not ham's own is left alone (and never used); ham's own that cannot be
                    // read is of no use to anyone.
                    log(inst, format_args!("detector lane {name}: {e}; not used"));
                    if !matches!(e, ham_core::SegmentError::Foreign { .. }) {
                        LaneMap::unlink(&name);
                    }
                    continue;
                }
            };
            let (base, len) = map.mapping();
            let guard = match crate::sys::guard_more(base, len, fd.as_raw_fd()) {
                Ok(Some(g)) => g,
                _ => {
                    log(
                        inst,
                        format_args!("detector lane {name}: cannot guard it; removed"),
                    );
                    LaneMap::unlink(&name);
                    continue;
                }
            };
            let consumer = LaneConsumer::resume(&map);
            lanes.open.insert(
                n,
                Lane {
                    name,
                    map,
                    _fd: fd,
                    consumer,
                    pid,
                    uid,
                    token: client_token(key, pid, uid),
                    owner: owner_pidfd(pid, start),
                    _guard: guard,
                },
            );
        }
        lanes
    }

    /// A cold start: the lanes a previous run left are of no use (their producers hold a
    /// client segment that is gone); they are removed.
    pub(super) fn remove_stale(inst: &str) {
        for (name, _) in lane_files(inst) {
            // Only ham's own (a name someone else squats is left to the operator).
            if LaneMap::open(&name).is_ok() {
                LaneMap::unlink(&name);
            }
        }
    }

    /// Whether any lane holds a published event, or must be retired (its owner is gone).
    pub(super) fn need_drain(&self) -> bool {
        self.open
            .values()
            .any(|l| l.owner.is_none() || l.consumer.has_published(&l.map))
    }

    /// Events taken off the lanes after the ring record of generation `generation`.
    pub(super) fn taken_since_record(&self, generation: u64) -> u64 {
        self.open
            .values()
            .map(|l| l.consumer.taken_since_record(&l.map, generation))
            .fold(0, u64::wrapping_add)
    }

    /// Before the ring record of generation `generation` is published.
    pub(super) fn note_record(&self, generation: u64) {
        for l in self.open.values() {
            l.consumer.note_record(&l.map, generation);
        }
    }

    /// Removes every lane's name (a shutdown).
    pub(super) fn unlink_all(&self) {
        for l in self.open.values() {
            LaneMap::unlink(&l.name);
        }
    }

    /// The owners' pidfds in the epoll set (after an adoption).
    pub(super) fn watch(&self, epoll: &OwnedFd) -> std::io::Result<()> {
        for (&n, l) in &self.open {
            if let Some(fd) = &l.owner {
                epoll::add(
                    epoll,
                    fd.as_fd(),
                    Token::Lane(n).data(),
                    epoll::EventFlags::IN,
                )?;
            }
        }
        Ok(())
    }
}

impl Daemon {
    /// `Request::Lane`: a new lane for the caller, and the descriptor to hand over.
    pub(super) fn open_lane(&mut self, peer: Peer) -> (Response, Option<OwnedFd>) {
        match self.make_lane(peer) {
            Ok((n, fd)) => (Response::ok(format!("lane {n}")), Some(fd)),
            Err((errno, why)) => (Response::errno(errno, why), None),
        }
    }

    fn make_lane(&mut self, peer: Peer) -> Result<(u64, OwnedFd), (i32, String)> {
        let inst = self.cfg.instance.name.clone();
        let privileged = peer.uid == 0 || peer.uid == self.my_uid;
        let Some(c) = &mut self.clients else {
            return Err((
                libc::ENOSYS,
                "this ham has no client segment (see its log)".into(),
            ));
        };
        let lanes = &mut c.lanes;
        let pid = u32::try_from(peer.pid).map_err(|_| (libc::EINVAL, "no pid".to_owned()))?;
        let full = |what: String| Err((libc::EAGAIN, format!("no lane left: {what}")));
        if lanes.open.len() >= LANES_MAX {
            return full(format!("{LANES_MAX} in use"));
        }
        if lanes.open.values().filter(|l| l.pid == pid).count() >= LANES_PER_PID {
            return full(format!("pid {pid} holds {LANES_PER_PID}"));
        }
        if !privileged && lanes.open.values().filter(|l| l.uid == peer.uid).count() >= LANES_PER_UID
        {
            return full(format!("uid {} holds {LANES_PER_UID}", peer.uid));
        }
        let gone = || (libc::ESRCH, format!("pid {pid} is gone"));
        let start = crate::procfs::start_time(peer.pid).ok_or_else(gone)?;
        let owner = owner_pidfd(pid, start).ok_or_else(gone)?;
        let n = lanes.next;
        lanes.next += 1;
        let name = ham_core::paths::lane(&inst, pid, start, peer.uid, n);
        let (map, fd) =
            LaneMap::create(&name, pid, peer.uid).map_err(|e| (libc::ENOSPC, e.to_string()))?;
        let fail = |why: String| {
            LaneMap::unlink(&name);
            (libc::ENOSPC, why)
        };
        let handed = fd.try_clone().map_err(|e| fail(format!("dup: {e}")))?;
        let (base, len) = map.mapping();
        let guard = crate::sys::guard_more(base, len, fd.as_raw_fd())
            .ok()
            .flatten()
            .ok_or_else(|| fail("cannot guard the lane".into()))?;
        let mut lane = Lane {
            name: name.clone(),
            consumer: LaneConsumer::resume(&map),
            map,
            _fd: fd,
            pid,
            uid: peer.uid,
            token: client_token(c.key, pid, peer.uid),
            owner: None,
            _guard: guard,
        };
        if let Err(e) = epoll::add(
            &self.epoll,
            owner.as_fd(),
            Token::Lane(n).data(),
            epoll::EventFlags::IN,
        ) {
            drop(lane);
            return Err(fail(format!("cannot watch pid {pid}: {e}")));
        }
        lane.owner = Some(owner);
        c.lanes.open.insert(n, lane);
        Ok((n, handed))
    }

    /// The owner of lane `n` exited: what it published is taken, then the lane goes.
    pub(super) fn on_lane_owner_exit(&mut self, n: u64) {
        if let Some(l) = self.clients.as_mut().and_then(|c| c.lanes.open.get_mut(&n)) {
            l.owner = None;
        }
        self.drain_ring();
    }

    /// Takes what the lanes hold, lanes in turn, within the budgets. Called from the ring's
    /// drain; returns the lanes to retire (owner gone, nothing left) once it has recorded.
    pub(super) fn drain_lanes(&mut self, passed: &mut Option<LetThrough>) -> Vec<u64> {
        let mut total = 0;
        let mut retire = Vec::new();
        // The lanes from the cursor on, then those before it (their numbers, copied: at most
        // LANES_MAX, on the stack).
        let mut order = [0u64; LANES_MAX];
        let mut count = 0;
        if let Some(c) = &self.clients {
            let lanes = &c.lanes.open;
            let turn = lanes
                .range(c.lanes.cursor..)
                .chain(lanes.range(..c.lanes.cursor));
            for ((&n, _), slot) in turn.zip(order.iter_mut()) {
                *slot = n;
                count += 1;
            }
        }
        for &n in &order[..count] {
            let mut taken = 0;
            loop {
                if taken == LANE_BUDGET || total == LANES_BUDGET {
                    break;
                }
                let Some(c) = &mut self.clients else {
                    return retire;
                };
                let Some(l) = c.lanes.open.get_mut(&n) else {
                    break;
                };
                let polled = l.consumer.poll(&l.map, l.pid, l.uid, l.token);
                let pid = l.pid;
                match polled {
                    LanePolled::Event(ev) => {
                        c.consumer.stats.consumed += 1;
                        self.on_ring_event(ev, passed);
                    }
                    LanePolled::Rejected(why) => {
                        c.consumer.stats.rejected += 1;
                        self.ring_reject(format_args!("lane of pid {pid}: rejected: {why}"));
                    }
                    LanePolled::Empty => {
                        if l.owner.is_none() {
                            retire.push(n);
                        }
                        break;
                    }
                }
                taken += 1;
                total += 1;
            }
            if total == LANES_BUDGET {
                if let Some(c) = &mut self.clients {
                    c.lanes.cursor = n;
                }
                break;
            }
        }
        retire
    }

    pub(super) fn retire_lanes(&mut self, retire: Vec<u64>) {
        let Some(c) = &mut self.clients else { return };
        for n in retire {
            if let Some(l) = c.lanes.open.remove(&n) {
                LaneMap::unlink(&l.name);
            }
        }
    }
}
