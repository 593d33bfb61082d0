//! The HAM role: one epoll loop over a pidfd per entity, the Guardian's pidfd, a signalfd,
//! one timerfd for every deadline, and the control socket. Nothing polls: an idle HAM
//! sleeps in `epoll_wait` until its next deadline, and with none it sleeps until something
//! happens (the Guardian watches the events and the deadline it publishes, not a tick).
//!
//! Each entity is a small state machine (`EntityState`); every transition is published to
//! the state segment in the order `docs/ARCHITECTURE.md` argues is crash-safe. What to do
//! after an exit is decided by `ham_core::policy`. The same code starts cold, starts warm
//! from a segment left by a dead pair, and runs a promoted Guardian.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use ham_core::engine;
use ham_core::layout::{
    EXIT_SOURCE_PIDFD_INFO, EXIT_SOURCE_PROC_CONNECTOR, EXIT_SOURCE_WAITID,
    FLAG_DEVICE_RESTART_OFF, FLAG_STOP_INTENT, FLAG_WARM_START, SlotIndex,
};
use ham_core::policy::Wanted;
use ham_core::segment::{Access, Segment, SegmentError, SegmentWriter, segment_size};
use ham_core::{EntityRecord, EntityState, LastExit};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use rustix::event::epoll;
use rustix::process::{Pid, PidfdFlags, WaitId, WaitIdOptions};
use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec};

use crate::actions::{Action, ActionKind, Condition, Event};
use crate::config::{Config, EntityConfig, Output, Strategy};
use crate::control::{Request, Response};
use crate::failpoint;
use crate::handoff::{self, Passed};
use crate::proclog::{LogRecord, ProcessLog, Syslog};
use crate::sys::{self, ProcConnector, SpawnSpec};
use crate::{mono_ns, procfs, unix_ns};

/// `say!(self, …)`: a line in ham's log.
macro_rules! say {
    ($self:expr, $($arg:tt)*) => {
        log(&$self.cfg.instance.name, format_args!($($arg)*))
    };
}

mod authz;
mod clients;
mod cluster;
mod conns;
mod cores;
mod entity;
mod exits;
mod guardian_link;
mod heartbeats;
mod journal;
mod lanes;
mod lifecycle;
mod mts;
mod notify;
mod output;
mod pss;
mod removal;
mod requests;
mod runs;
mod runtime;
mod shutdown;
mod spawn;
mod start;
mod subscribers;
mod systemd;
mod takeover;
mod timers;
mod token;
mod upgrade;
mod watchdog;

use clients::{Clients, Peer, Subscriber};
use exits::{decode_wait_status, decode_waitid, describe};
pub use guardian_link::GuardianSpec;
use guardian_link::{GuardianStart, prepare_guardian, start_guardian};

/// A Guardian prepares the start of the Guardian its takeover will need (see
/// [`GuardianSpec`]); `None` if it cannot now (the takeover then prepares it).
pub fn prepare_successor(
    cfg: &crate::config::Config,
    config_text: &str,
    sockets: &Sockets,
) -> Option<GuardianSpec> {
    let mut g = prepare_guardian(cfg, config_text, sockets, Path::new("/proc/self/exe")).ok()?;
    // Without them now, the fork makes them: the prepared rest is kept.
    let _ = g.spec.make_pipes_now();
    Some(g)
}
use spawn::own_restart_command;
use start::device_restart_marker;
use takeover::{stop_recorded_processes, wait_pidfd};
use token::Token;

use conns::Conn;
use entity::{Entity, EntityId, WaitFor};
use exits::StatusPatch;
use runs::{Run, RunId, Wait};
use spawn::{Deferred, SPAWNS_PER_TURN};
use timers::Deadline;

/// How long one turn of the loop goes on handling deaths (a storm's) before it lets the
/// others wait for the next turn.
const DEATHS_PER_TURN_NS: u64 = 20_000_000;

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("instance `{name}` is already running (ham pid {pid})")]
    AlreadyRunning { name: String, pid: i32 },
    #[error(
        "instance `{name}` is running but its segment cannot be read by this ham ({why}); \
         stop it (hamctl shutdown, with the binary that runs it) before starting this one"
    )]
    Unreadable { name: String, why: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Segment(#[from] SegmentError),
}

fn io_ctx<E: Into<io::Error>>(what: impl Into<String>) -> impl FnOnce(E) -> DaemonError {
    let what = what.into();
    move |e| DaemonError::Io {
        what,
        source: e.into(),
    }
}

/// The descriptors an instance keeps through takeovers: handed to each Guardian.
pub struct Sockets {
    /// The control socket.
    pub listener: UnixListener,
    /// The sd_notify socket (SO_PASSCRED: each datagram names its sender).
    pub notify: std::os::unix::net::UnixDatagram,
    /// The hardware watchdog (`[watchdog] device`), open once for the instance's life: a
    /// takeover must never close it.
    pub watchdog: Option<OwnedFd>,
}

/// How this HAM came to be.
pub enum Origin {
    /// `ham -c FILE`: cold, or warm from a segment left by a dead pair.
    Started,
    /// A Guardian promoting itself after its HAM died or was fenced, with what the HAM
    /// handed over.
    Promoted {
        passed: HashMap<u32, Passed>,
        /// The HAM it replaced, and whether it fenced it (a stopped or hung HAM) rather
        /// than saw it die.
        from: Option<(i32, bool)>,
        /// The handed-over processes the Guardian knows dead (`None`: it did not look;
        /// each is then looked at).
        dead: Option<crate::guardian::Deaths>,
    },
}

/// What a Guardian found while it watched, for its takeover (each `None`: looked for then).
#[derive(Default)]
pub struct Found {
    /// The entities' cgroups.
    pub cgroups: Option<crate::cgroup::Opened>,
    /// The handed-over processes dead (looked at again when the adoption begins).
    pub dead: Option<crate::guardian::Deaths>,
    /// The start of the next Guardian, prepared.
    pub successor: Option<GuardianSpec>,
    /// The HAM this Guardian watched (pid, start time), seen dead through its pidfd: if the
    /// segment still names it, no look in /proc is needed to know it is not running.
    pub ham_dead: Option<(i32, u64)>,
    /// The records, as the Guardian's lock thread read them once the HAM was dead.
    pub pre_read: Option<PreRead>,
}

/// The records, read by the Guardian's lock thread on another CPU once its HAM was dead
/// (`guardian::watch_lock`), while the takeover's thread starts the next Guardian and
/// builds the HAM: about 0.2 ms of cold memory at 100 entities that the restart of an
/// entity dead with the HAM no longer waits for. Read after the HAM's main thread stopped
/// writing (its lock marked) and before this process writes any record, so they are what
/// the takeover would read itself; taken only if they are there (never waited for) and the
/// segment needed no migration.
#[derive(Clone, Default)]
pub struct PreRead(std::sync::Arc<std::sync::Mutex<Option<ham_core::segment::Records>>>);

impl PreRead {
    pub fn put(&self, records: ham_core::segment::Records) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(records);
        }
    }

    fn take(&self) -> Option<ham_core::segment::Records> {
        self.0.try_lock().ok()?.take()
    }
}

/// The HAM role.
pub struct Daemon {
    /// The heartbeat monitors whose check falls at each instant (an entry may be stale: the
    /// monitor's deadline moved, or it ended; it is then skipped).
    hb_due: std::collections::BTreeMap<u64, Vec<heartbeats::MonitorId>>,
    /// Every heartbeat monitor, with its client's page.
    monitors: heartbeats::Monitors,
    cfg: Config,
    config_text: String,
    writer: SegmentWriter,
    epoll: OwnedFd,
    signals: SignalFd,
    timers: timers::Timers,
    listener: UnixListener,
    notify: std::os::unix::net::UnixDatagram,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    /// The entities' cgroups (`None`: tracked by process group only).
    cgroups: Option<crate::cgroup::Cgroups>,
    /// Spawns the per-turn budget did not allow (see [`Deferred`]).
    deferred: Deferred,
    /// Spawns left in this turn of the loop.
    spawn_budget: u32,
    /// The listener is out of the epoll set (no fd for a connection, or at the cap) until
    /// the next housekeeping tick or a connection closes.
    accept_paused: bool,
    /// A client was given a ring token (`hello`): the ring's safety net ticks from then on.
    ring_used: bool,
    /// The deadline last published for the Guardian (0: none).
    published_deadline: u64,
    /// Repeated log lines, at most one a second per kind.
    limited: conns::RateLimit,
    /// The cluster agent's last report, and when it came.
    cluster: Option<(ham_core::protocol::ClusterState, u64)>,
    /// CLOCK_MONOTONIC ns by which what the cluster placed here is stopped (0: none; kept
    /// in the segment's header too).
    fence_at: u64,
    /// The cluster lease `fence_at` belongs to.
    fence_lease: u64,
    /// Entities whose released child's `execve` is not known yet (`settle_exec`).
    execing: Vec<EntityId>,
    /// How many deaths (pidfd events) the loop's current turn brought.
    deaths_in_turn: usize,
    /// A restart whose lines are still to be said (`lifecycle::RestartSaid`).
    restart_unsaid: Option<lifecycle::RestartSaid>,
    /// Settings to write through the cluster's master, the requests waiting for how it went,
    /// and the agent's request waiting for work.
    cluster_work: cluster::Work,
    entities: entity::EntityTable,
    shutdown: Option<Vec<UnixStream>>,
    /// During a shutdown: entities left to stop once this turn's budget was spent (the
    /// next turn stops more, without waiting).
    stops_left: bool,
    my_uid: u32,
    guardian: guardian_link::GuardianLink,
    proc_conn: Option<ProcConnector>,
    exit_cache: HashMap<i32, i32>,
    /// The pids whose exits the proc connector is read for (adopted entities' and those of
    /// `patches`), made when it is first needed: `None` after any of them changes
    /// ([`Daemon::exit_watch_changed`]), so that an exit elsewhere on the box costs a
    /// lookup, not a walk over every entity.
    exit_watch: Option<HashSet<i32>>,
    patches: Vec<StatusPatch>,
    /// Children whose death was handled but who are not reaped yet (a zombie keeps its
    /// pid, so nothing else can have it): reaped while the replacement execs, off the
    /// restart's path (`reap_handled`).
    unreaped: Vec<i32>,
    /// The last pids `reap_handled` reaped (at most `exits::REAPED_KEPT`): a SIGCHLD that names
    /// one of them needs no walk over every child, only a sweep later (`on_sigchld`).
    reaped_recently: std::collections::VecDeque<i32>,
    /// The zombie at which the last walk for orphans stopped, left to its pidfd (0: none).
    sweep_left_to: i32,
    /// Pidfds of processes that died, still in the epoll set until `unwatch_dead`.
    dead_pidfds: Vec<OwnedFd>,
    /// When the deferred sweep for orphans runs, if one is due.
    sweep_at: Option<u64>,
    origin: Option<Origin>,
    plog: ProcessLog,
    syslog: Syslog,
    /// Condition runs in progress or queued, and the pids of the commands they wait for.
    runs: runs::Runs,
    /// The client segment (heartbeats, detector ring), if it could be set up.
    clients: Option<Clients>,
    /// A takeover sets up the client segment after its first restarts
    /// (`set_up_clients_after_takeover`): until then, the predecessor's bell, if handed over.
    takeover_bell: Option<Option<OwnedFd>>,
    subscribers: HashMap<u64, Subscriber>,
    next_sub: u64,
    /// The run-time definitions document (see `runtime.rs`).
    defs: toml::Table,
    /// The thread that writes durable checkpoints, once one was needed.
    committer: Option<pss::Committer>,
    /// How collected cores reach the loop, once one was.
    core_news: Option<cores::CoreNews>,
    /// The hardware watchdog this loop feeds.
    hw_watchdog: Option<watchdog::Hw>,
    /// The `[metrics] textfile` writer.
    metrics: Option<crate::metrics::Textfile>,
    /// The service manager that started ham, if it speaks sd_notify.
    systemd: Option<systemd::Manager>,
    /// The thread that keeps captured output (`output = "log"`), once one is needed.
    logger: Option<crate::outlog::Logger>,
    /// `hamctl upgrade` under way.
    upgrade: Option<upgrade::Upgrade>,
    /// What a promoted Guardian watched with, dropped once the takeover is done.
    leftovers: Option<Box<dyn std::any::Any>>,
    /// The heap was trimmed once the start-up's spawns were done (see `run`).
    trimmed_after_start: bool,
    /// A takeover's records, read ahead ([`PreRead`]).
    pre_read: Option<PreRead>,
}

use crate::log::{ham as log, ham_verbose as verbose};

impl Daemon {
    /// Keeps `what` until the takeover is done (the promoted Guardian's watching set).
    pub fn drop_after_takeover(&mut self, what: Box<dyn std::any::Any>) {
        self.leftovers = Some(what);
    }

    /// Holds the HAM's lock (`sys::robust`), through a mapping of the header kept for the
    /// life of the process; if it cannot, the Guardian sees this HAM's death by its pidfd.
    fn hold_lock(&mut self) {
        let held = Segment::open(&self.cfg.instance.segment_name(), Access::ReadWrite)
            .map_err(|e| e.to_string())
            .and_then(|seg| {
                sys::robust::hold(seg.into_static().header().ham_lock()).map_err(|e| e.to_string())
            });
        if let Err(e) = held {
            say!(
                self,
                "cannot hold the HAM's lock ({e}): the guardian sees this HAM's death by its \
                 pidfd alone"
            );
        }
    }

    /// Starts the Guardian, takes over or starts every entity, and runs until a shutdown
    /// completes. Returns the exit code.
    pub fn run(mut self) -> Result<i32, DaemonError> {
        let promoted = matches!(self.origin, Some(Origin::Promoted { .. }));
        if promoted {
            // Held (as `promote` began to) until the first restart is released, or the
            // adoption is done.
            self.hold_logs();
        }
        // The Guardian comes first: from here on, a death of this HAM is covered.
        if self.guardian.proc.is_some() {
            self.guardian_started();
        } else {
            self.spawn_guardian();
        }
        if promoted {
            failpoint::hit("promote:after-guardian");
        }
        let (passed, dead) = match self.origin.take() {
            Some(Origin::Promoted { passed, from, dead }) => {
                let flags = self.writer.segment().header().flags();
                let upgraded = flags & ham_core::layout::FLAG_UPGRADING != 0;
                if upgraded {
                    self.wrote(
                        self.writer
                            .set_flags(flags & !ham_core::layout::FLAG_UPGRADING),
                    );
                }
                if let Some((pid, fenced)) = from {
                    let (cond, how) = if upgraded {
                        ("upgrade", "handed over")
                    } else if fenced {
                        ("ham-fenced", "stopped turning its loop and was fenced")
                    } else {
                        ("ham-died", "died")
                    };
                    let what = format!(
                        "HAM pid {pid} {how}; guardian pid {} took over (epoch {})",
                        std::process::id(),
                        self.writer.epoch()
                    );
                    self.record_ham(Some(pid), cond, "take-over", &what);
                }
                (passed, dead)
            }
            _ => {
                if self.writer.segment().header().flags() & FLAG_WARM_START != 0 {
                    let what = format!(
                        "the HAM and its guardian were gone; pid {} re-adopted the segment \
                         (epoch {})",
                        std::process::id(),
                        self.writer.epoch()
                    );
                    self.record_ham(None, "pair-gone", "warm-start", &what);
                }
                (HashMap::new(), None)
            }
        };
        let cold = !promoted && self.writer.segment().header().flags() & FLAG_WARM_START == 0;
        self.load_defs();
        self.adopt(passed, dead);
        if promoted {
            // Written already if a restart was released (`spawn`); otherwise now.
            self.write_held_logs();
        }
        if let Some(bell) = self.takeover_bell.take() {
            self.set_up_clients_after_takeover(bell);
        }
        if promoted && let Err(e) = start::write_pid_files(&self.cfg) {
            let path = self.cfg.instance.pid_path();
            say!(self, "cannot write {}: {e}", path.display());
        }
        // The promoted Guardian's watching goes (its lock watcher first) before this HAM
        // holds the lock its own Guardian watches.
        self.leftovers = None;
        self.hold_lock();
        self.resume_heartbeats();
        self.resume_runs();
        // Adopted: the records are this HAM's now (`hamctl status` stops saying "adopting").
        let flags = self.writer.segment().header().flags();
        if flags & ham_core::layout::FLAG_ADOPTING != 0 {
            self.wrote(
                self.writer
                    .set_flags(flags & !ham_core::layout::FLAG_ADOPTING),
            );
        }
        if cold {
            self.run_now_actions();
        }
        // (A takeover's are watched where they are set up, after `adopt`.)
        if !promoted && let Err(e) = self.watch_clients() {
            say!(self, "cannot watch the doorbell: {e}");
        }
        if self.writer.segment().header().flags() & FLAG_STOP_INTENT != 0 {
            say!(
                self,
                "the previous HAM was shutting down: finishing the shutdown"
            );
            self.begin_shutdown(None);
        }
        self.ensure_housekeeping();
        self.feed_watchdog(mono_ns());
        self.systemd_begin(promoted);
        // Start-up code and heap given back now, before the loop; a takeover's once its
        // restarts have exec'd (see below), which must not wait for it.
        if !promoted {
            sys::trim_heap();
            sys::unmap_startup_code();
        }
        let mut events = Vec::with_capacity(64);
        let no_wait = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        loop {
            self.spawn_budget = SPAWNS_PER_TURN;
            self.run_deferred();
            // A takeover's Guardian goes once the first restarts are under way.
            self.release_guardian();
            // The start-up's spawns (thousands, for a large box) leave the heap holed with
            // what each start allocated and freed between what stays: given back once,
            // when the last of them has exec'd; a takeover's start-up code too (its
            // restarts did not wait for it: reading smaps alone takes about 0.1 ms, and
            // they would have faulted back in the code they run).
            if !self.trimmed_after_start && self.deferred.is_empty() && self.execing.is_empty() {
                self.trimmed_after_start = true;
                sys::trim_heap();
                if promoted {
                    sys::unmap_startup_code();
                }
            }
            if self.shutdown.is_some()
                && self.execing.is_empty()
                && self.entities.iter().all(|e| e.pidfd.is_none())
            {
                self.finish();
                return Ok(crate::exit::OK);
            }
            if self.upgrade.is_some() {
                self.settle_execs();
            }
            if self.maybe_hand_over() {
                return Ok(crate::exit::OK);
            }
            self.systemd_ready();
            self.ensure_housekeeping();
            self.rearm_timer();
            self.arm_ring();
            events.clear();
            // A dead process's pidfd is readable for ever: out of the set before waiting.
            self.unwatch_dead();
            // The next child's pipes, made while nothing waits for them (not while children
            // of a storm are still starting: their turns come first).
            if self.execing.is_empty() {
                sys::stock_pipes();
            }
            // With spawns still deferred, look at what came in and come straight back.
            if self.stops_left && self.shutdown.is_some() {
                self.stop_next_layer();
            }
            let timeout = (!self.deferred.is_empty() || self.stops_left).then_some(&no_wait);
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                timeout,
            ) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(io_ctx("epoll_wait")(e)),
            }
            let turn_began = mono_ns();
            self.wrote(self.writer.set_liveness(turn_began));
            self.deaths_in_turn = events
                .iter()
                .filter(|ev| matches!(Token::decode(ev.data.u64()), Some(Token::Pidfd(_))))
                .count();
            for ev in events.drain(..) {
                let token = Token::decode(ev.data.u64());
                // Deaths are handled for a bounded time per turn; the rest come back at the
                // next (a dead process's pidfd stays readable), so that a storm at 10,000
                // entities, or a slow box, still turns the loop: its deadlines, requests and
                // liveness do not wait for the whole storm.
                if matches!(token, Some(Token::Pidfd(_)))
                    && mono_ns().saturating_sub(turn_began) > DEATHS_PER_TURN_NS
                {
                    continue;
                }
                // Deaths are handled with execs still pending (a storm's restarts exec side
                // by side), SIGCHLD among them (`on_signals` settles them first for any other
                // signal); anything else sees every entity's start complete.
                if !self.execing.is_empty()
                    && !matches!(
                        token,
                        Some(Token::Pidfd(_) | Token::Exec(_) | Token::Signal)
                    )
                {
                    self.settle_execs();
                }
                match token {
                    Some(Token::Signal) => self.on_signals(),
                    Some(Token::Timer) => self.on_timer(),
                    Some(Token::Listen) => self.on_accept(),
                    Some(Token::Guardian) => self.on_guardian_exit(),
                    Some(Token::ProcConn) => self.drain_proc_connector(),
                    Some(Token::Notify) => self.on_notify(),
                    Some(Token::Doorbell) => self.on_doorbell(false),
                    Some(Token::Bell) => self.on_doorbell(true),
                    Some(Token::Handoff) => self.on_handoff(),
                    Some(Token::Conn(id)) => self.on_conn(id),
                    Some(Token::Pidfd(i)) => self.on_pidfd(i),
                    Some(Token::Exec(i)) => self.on_exec(i),
                    Some(Token::Action(id)) => self.on_action_exit(id),
                    Some(Token::Sub(id)) => self.on_subscriber(id),
                    Some(Token::PssCommitted) => self.on_pss_committed(),
                    Some(Token::CoreCollected) => self.on_core_collected(),
                    Some(Token::Lane(n)) => self.on_lane_owner_exit(n),
                    None => {}
                }
            }
        }
    }

    // -- taking over the state -------------------------------------------------------------

    fn publish(&mut self, i: EntityId) {
        self.publish_record(i);
        self.answer_waiters(i);
    }

    /// Publishes entity `i`'s record without answering its waiters (a state that may not
    /// last: the release recorded before it is known to have worked).
    fn publish_record(&mut self, i: EntityId) {
        let e = &self.entities[i];
        let written = self.writer.publish(e.slot, &e.rec);
        if let Some(g) = self.wrote(written) {
            self.entities[i].rec.generation = g;
        }
        self.entities.index_pid(i);
    }

    /// What became of a write to the state segment. Every write goes through here: a HAM
    /// that is fenced (a successor owns the state now) must not act on anything more, so it
    /// exits at once, whatever it was writing; other failures are said.
    pub(super) fn wrote<T>(&self, result: Result<T, SegmentError>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(SegmentError::Fenced { ours, current }) => {
                log(
                    &self.cfg.instance.name,
                    format_args!("fenced (epoch {ours}, segment at {current}): exiting"),
                );
                std::process::exit(crate::exit::FAILED);
            }
            Err(err) => {
                log(
                    &self.cfg.instance.name,
                    format_args!("cannot write the state segment: {err}"),
                );
                None
            }
        }
    }
}

/// Blocks the signals ham reads (SIGTERM, SIGINT, SIGHUP, SIGCHLD) and returns a signalfd
/// for them. Both roles use it; children get an empty mask back (see `sys::SpawnSpec`).
pub(crate) fn signalfd() -> nix::Result<SignalFd> {
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        mask.add(s);
    }
    mask.thread_block()?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
}

fn reply(mut stream: UnixStream, r: &Response) {
    let _ = stream.write_all(&r.to_line());
}

/// [`reply`], with a descriptor for the client attached to the answer's first byte
/// (`SCM_RIGHTS`).
fn reply_with_fd(mut stream: UnixStream, r: &Response, fd: Option<&OwnedFd>) {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let Some(fd) = fd else {
        return reply(stream, r);
    };
    let line = r.to_line();
    let fds = [fd.as_fd()];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    anc.push(SendAncillaryMessage::ScmRights(&fds));
    match rustix::net::sendmsg(
        &stream,
        &[io::IoSlice::new(&line)],
        &mut anc,
        SendFlags::NOSIGNAL,
    ) {
        Ok(n) if n < line.len() => {
            let _ = stream.write_all(&line[n..]);
        }
        _ => {}
    }
}

/// Borrowed descriptors to hand to a Guardian: the control listener, the notify socket
/// and the hardware watchdog, if any.
struct SocketRefs<'a>(
    &'a UnixListener,
    &'a std::os::unix::net::UnixDatagram,
    Option<&'a OwnedFd>,
);

impl<'a> From<&'a Sockets> for SocketRefs<'a> {
    fn from(s: &'a Sockets) -> Self {
        Self(&s.listener, &s.notify, s.watchdog.as_ref())
    }
}

/// Signals an entity's process group, and the process itself if it has left the group.
/// Only called while the process is unreaped (we hold its pidfd), so its pid and process
/// group id cannot have been reused.
fn signal_entity(e: &Entity, sig: i32) {
    use rustix::process::{Pid, Signal, getpgid, kill_process_group, pidfd_send_signal};
    let (Some(pidfd), Some(signal), Some(pid)) = (
        &e.pidfd,
        Signal::from_named_raw(sig),
        Pid::from_raw(e.rec.pid),
    ) else {
        return;
    };
    let _ = kill_process_group(pid, signal);
    if getpgid(Some(pid)).is_ok_and(|g| g != pid) {
        let _ = pidfd_send_signal(pidfd, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses_decode() {
        assert_eq!(decode_wait_status(3 << 8), LastExit::Code(3));
        assert_eq!(decode_wait_status(0), LastExit::Code(0));
        assert_eq!(decode_wait_status(9), LastExit::Signal(9));
        assert_eq!(decode_wait_status(6 | 0x80), LastExit::Signal(6)); // core dumped
        assert_eq!(decode_wait_status(0x137f), LastExit::Unknown); // stopped, not an exit
    }
}
