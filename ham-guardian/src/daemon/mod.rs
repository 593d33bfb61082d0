//! The HAM role: one epoll loop over a pidfd per entity, the Guardian's pidfd, a signalfd,
//! one timerfd for every deadline, and the control socket. Nothing polls: an idle HAM
//! sleeps in `epoll_wait` until its next deadline (the liveness tick the Guardian watches).
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
    FLAG_DEVICE_RESTART_OFF, FLAG_STOP_INTENT, FLAG_WARM_START,
};
use ham_core::policy::{self, AfterExit, Wanted};
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

mod authz;
mod clients;
mod conns;
mod journal;
mod lifecycle;
mod runtime;
mod token;

use clients::{Clients, Peer, Subscriber};
use token::Token;

/// Spawns a turn's budget did not allow, each with whether its restart conditions fire
/// once it runs: entities that were not crash-looping first, each queue in order.
#[derive(Default)]
struct Deferred {
    healthy: std::collections::VecDeque<(usize, bool)>,
    looping: std::collections::VecDeque<(usize, bool)>,
}

impl Deferred {
    fn push(&mut self, i: usize, healthy: bool) {
        if self.find(i).is_none() {
            let q = if healthy {
                &mut self.healthy
            } else {
                &mut self.looping
            };
            q.push_back((i, false));
        }
    }
    fn find(&mut self, i: usize) -> Option<&mut (usize, bool)> {
        self.healthy
            .iter_mut()
            .chain(self.looping.iter_mut())
            .find(|(j, _)| *j == i)
    }
    fn pop(&mut self) -> Option<(usize, bool)> {
        self.healthy
            .pop_front()
            .or_else(|| self.looping.pop_front())
    }
    fn is_empty(&self) -> bool {
        self.healthy.is_empty() && self.looping.is_empty()
    }
    fn remove(&mut self, i: usize) {
        self.healthy.retain(|(j, _)| *j != i);
        self.looping.retain(|(j, _)| *j != i);
    }
}

/// Processes one turn of the loop may start: a restart storm (or a cold start of many
/// entities) goes on over several turns, each of which also serves the control socket,
/// the timers and the liveness word. The rest wait, in order, as `starting` (an entity
/// that was not crash-looping is restarted at once all the same).
const SPAWNS_PER_TURN: u32 = 2;

/// Condition runs (running or queued) one entity may have open: a detector raising in a
/// loop must not grow ham without bound. Further firings are dropped and counted.
const RUNS_PER_ENTITY: usize = 16;

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

/// A request that is answered once an entity reaches a state.
#[derive(Clone, Copy)]
enum WaitFor {
    Down,
    Up,
}

struct Entity {
    cfg: EntityConfig,
    slot: u32,
    rec: EntityRecord,
    pidfd: Option<OwnedFd>,
    /// The process is not our child (adopted after a takeover or a warm start): its exit
    /// status comes from the proc connector or its pidfd, not from `waitid`.
    adopted: bool,
    wanted: Wanted,
    stop_deadline: Option<u64>,
    retry_at: Option<u64>,
    spawn_failures: u32,
    last_spawn_error: Option<String>,
    /// Deaths seen by this HAM; a late exit status is applied only to the death it is for.
    deaths: u64,
    /// Running for its `ready_after`: entities that start `after` it may start.
    ready: bool,
    /// Its environment, built once (see `entity_env`).
    env: Vec<(String, String)>,
    /// When its next sd_notify `WATCHDOG=1` is due, and the period it asked for.
    watchdog_at: Option<u64>,
    watchdog_ns: Option<u64>,
    /// Its SDK heartbeat monitor, while a client is attached with one.
    hb: Option<clients::Heartbeat>,
    /// The attached client's heartbeat page (`ham_core::beat`), while it has one.
    beat: Option<ham_core::beat::BeatMap>,
    /// Conditions the restart being handled has just pruned (they still fire for it).
    pruned_now: u64,
    /// A `hold-off` action stops it: once down, it is held off this long.
    hold_after_stop: Option<u64>,
    waiters: Vec<(UnixStream, WaitFor)>,
}

impl Entity {
    fn new(
        mut cfg: EntityConfig,
        slot: u32,
        rec: EntityRecord,
        env: Vec<(String, String)>,
    ) -> Self {
        // A self-attached entity that ham (re)starts runs its restart action's command line
        // (QNX: "from now on with `path`"); a successor finds it there too.
        if cfg.attach_only && cfg.argv.is_empty() {
            if let Some((path, argv)) = own_restart_command(&cfg) {
                cfg.exec_path = path;
                cfg.argv = argv;
            }
        }
        let ready = rec.ready && rec.state == EntityState::Running;
        Self {
            cfg,
            slot,
            rec,
            pidfd: None,
            beat: None,
            adopted: false,
            wanted: Wanted::Up,
            stop_deadline: None,
            retry_at: None,
            spawn_failures: 0,
            last_spawn_error: None,
            deaths: 0,
            // Ready as its record says (a successor goes on from there).
            ready,
            watchdog_at: None,
            watchdog_ns: None,
            hb: None,
            pruned_now: 0,
            hold_after_stop: None,
            env,
            waiters: Vec::new(),
        }
    }
}

/// What a deadline is for: the heap of deadlines orders by time, then by this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Deadline {
    /// An entity's stop signal was not enough: SIGKILL.
    StopKill(usize),
    /// A failed spawn is tried again.
    Retry(usize),
    /// The liveness word, and the tick's chores.
    Liveness,
    /// A Guardian that could not be started is tried again.
    GuardianRetry,
    /// A late exit status may have become readable.
    StatusPatch(usize),
    /// A hold-off ends.
    HoldOff(usize),
    /// An entity's `ready_after`.
    Ready(usize),
    /// A condition run's delay, waitfor poll or command deadline.
    Action(u32),
    /// An sd_notify watchdog.
    Watchdog(usize),
    /// An attached client's heartbeat window.
    Heartbeat(usize),
    /// The ring's stalled-slot check.
    RingStall,
}

/// An adopted entity died before anyone could tell how; its status may still come through
/// its pidfd once something reaps it.
struct StatusPatch {
    entity: usize,
    pid: i32,
    death: u64,
    pidfd: OwnedFd,
    tries: u32,
    at: u64,
}

struct GuardianProc {
    pid: i32,
    start_time: u64,
    pidfd: OwnedFd,
    sock: OwnedFd,
    /// When it last showed it turns its loop (a beat on `sock`), or was started.
    seen_at: u64,
}

struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    peer: Peer,
    /// When it was accepted: a request not complete `CONN_TIMEOUT_NS` later is dropped.
    opened: u64,
}

/// The sockets an instance keeps through takeovers: handed to each Guardian.
pub struct Sockets {
    /// The control socket.
    pub listener: UnixListener,
    /// The sd_notify socket (SO_PASSCRED: each datagram names its sender).
    pub notify: std::os::unix::net::UnixDatagram,
}

/// How this HAM came to be.
pub enum Origin {
    /// `ham -c FILE`: cold, or warm from a segment left by a dead pair.
    Started,
    /// A Guardian promoting itself after its HAM died or was fenced, with what the HAM
    /// handed over.
    Promoted { passed: HashMap<u32, Passed> },
}

/// The HAM role.
pub struct Daemon {
    cfg: Config,
    config_text: String,
    writer: SegmentWriter,
    epoll: OwnedFd,
    signals: SignalFd,
    timerfd: OwnedFd,
    armed_at: Option<u64>,
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
    /// the next liveness tick or a connection closes.
    accept_paused: bool,
    /// Repeated log lines, at most one a second per kind.
    limited: conns::RateLimit,
    entities: Vec<Entity>,
    by_name: HashMap<String, usize>,
    timers: BinaryHeap<Reverse<(u64, Deadline)>>,
    shutdown: Option<Vec<UnixStream>>,
    my_uid: u32,
    guardian: Option<GuardianProc>,
    guardian_retry_at: Option<u64>,
    tick_ns: u64,
    next_tick: u64,
    proc_conn: Option<ProcConnector>,
    exit_cache: HashMap<i32, i32>,
    patches: Vec<StatusPatch>,
    origin: Option<Origin>,
    plog: ProcessLog,
    syslog: Syslog,
    /// Condition runs in progress, and the pids of the commands they wait for.
    runs: HashMap<u32, Run>,
    next_run: u32,
    /// Per entity, its non-independent runs in firing order (the first one is running).
    run_queue: HashMap<usize, std::collections::VecDeque<u32>>,
    journal_full_logged: bool,
    exec_pids: HashMap<i32, u32>,
    /// For each entity, the entities that start `after` it (they stop before it).
    dependents: Vec<Vec<usize>>,
    /// The client segment (heartbeats, detector ring), if it could be set up.
    clients: Option<Clients>,
    subscribers: HashMap<u64, Subscriber>,
    next_sub: u64,
    /// The run-time definitions document (see `runtime.rs`).
    defs: toml::Table,
    /// Pidfds waiting for room in the Guardian's socket (sent in order).
    handoff_backlog: std::cell::RefCell<std::collections::VecDeque<(u32, i32, u64, OwnedFd)>>,
}

/// The actions of one fired condition, as a stack of lists (a fail list is pushed on top of
/// the list whose action failed).
struct Run {
    entity: usize,
    condition: &'static str,
    env: Vec<(String, String)>,
    stack: Vec<(Vec<Action>, usize)>,
    waiting: Option<Wait>,
    independent: bool,
    /// Which condition (its index, or `journal::COND_*`) and why: what the journal keeps.
    cond: u8,
    event: journal::RunEvent,
    /// Its journal slot, and what the journal last said of its current action.
    jslot: Option<u32>,
    in_progress: bool,
    jwait: ham_core::journal::RunWait,
    /// Kept in the run journal (see `run_now`).
    journaled: bool,
}

enum Wait {
    Exec {
        pid: i32,
        pidfd: OwnedFd,
        deadline: u64,
        action: Action,
    },
    Delay {
        until: u64,
    },
    Path {
        path: std::path::PathBuf,
        deadline: u64,
        next: u64,
    },
}

/// sd_notify datagrams read per loop turn at most.
const NOTIFY_PER_TURN: usize = 64;

/// How often a `waitfor` action looks for its path.
const WAITFOR_EVERY_NS: u64 = 20_000_000;

/// ham's log verbosity (`ham_verbose`, `hamctl`): 0 quiet, 1 normal, 2 and up also each
/// request. Kept in the state segment so a successor logs alike.
static VERBOSITY: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

fn log(instance: &str, msg: std::fmt::Arguments) {
    if VERBOSITY.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        crate::log_line(format_args!("ham[{instance}]"), msg);
    }
}

fn verbose(instance: &str, msg: std::fmt::Arguments) {
    if VERBOSITY.load(std::sync::atomic::Ordering::Relaxed) > 1 {
        crate::log_line(format_args!("ham[{instance}]"), msg);
    }
}

macro_rules! say {
    ($self:expr, $($arg:tt)*) => {
        log(&$self.cfg.instance.name, format_args!($($arg)*))
    };
}

impl Daemon {
    /// `ham -c FILE`: refuses if the instance runs; starts warm from a valid segment whose
    /// HAM and Guardian are both gone, cold otherwise.
    pub fn start(cfg: Config, config_text: String) -> Result<Self, DaemonError> {
        let inst = cfg.instance.clone();
        std::fs::create_dir_all(&inst.run_dir).map_err(io_ctx(format!(
            "creating run_dir {}",
            inst.run_dir.display()
        )))?;
        let seg_name = inst.segment_name();
        // A name someone else created (`/dev/shm` is world-writable) is refused, never used,
        // replaced or trusted; so is a client segment name.
        ham_core::segment::probe_foreign(&seg_name, ham_core::segment::STATE_MODE)?;
        ham_core::segment::probe_foreign(
            &ham_core::client::segment_name(&inst.name),
            ham_core::client::CLIENT_MODE,
        )?;
        let needed = cfg.max_entities.max(cfg.entities.len() as u32);
        let mut warm = None;
        match Segment::open(&seg_name, Access::ReadOnly) {
            Ok(old) => {
                let h = old.header().snapshot();
                for (pid, st) in [
                    (h.ham_pid, h.ham_start_time),
                    (h.guardian_pid, h.guardian_start_time),
                ] {
                    if procfs::is_alive(pid, st) && procfs::is_mine(pid) {
                        return Err(DaemonError::AlreadyRunning {
                            name: inst.name.clone(),
                            pid: h.ham_pid,
                        });
                    }
                }
                if old.capacity() < cfg.entities.len() as u32 {
                    log(
                        &inst.name,
                        format_args!(
                            "cold start: the segment {seg_name} holds {} entities, the configuration {}",
                            old.capacity(),
                            cfg.entities.len()
                        ),
                    );
                    stop_recorded_processes(&inst.name, &old);
                    Segment::unlink(&seg_name)?;
                } else {
                    drop(old);
                    warm = Some(Segment::open(&seg_name, Access::ReadWrite)?);
                }
            }
            Err(SegmentError::NotFound { .. }) => {
                log(
                    &inst.name,
                    format_args!("cold start: no segment {seg_name}"),
                );
            }
            Err(e @ SegmentError::Foreign { .. }) => return Err(e.into()),
            Err(e) => {
                // A segment this ham cannot read may be a live instance's of another
                // version: never replace it under a ham that still answers.
                if std::os::unix::net::UnixStream::connect(inst.socket_path()).is_ok() {
                    return Err(DaemonError::Unreadable {
                        name: inst.name.clone(),
                        why: e.to_string(),
                    });
                }
                log(
                    &inst.name,
                    format_args!(
                        "cold start: the segment {seg_name} is invalid ({e}); replacing it"
                    ),
                );
                Segment::unlink(&seg_name)?;
            }
        }
        let me = std::process::id() as i32;
        let my_start = procfs::start_time(me).unwrap_or(0);
        let (seg, flags) = match warm {
            Some(seg) => {
                let h = seg.header().snapshot();
                log(
                    &inst.name,
                    format_args!(
                        "warm start: re-adopting the segment {seg_name} (epoch {}, ham pid {} gone)",
                        h.epoch, h.ham_pid
                    ),
                );
                (seg, FLAG_WARM_START)
            }
            None => (Segment::create(&seg_name, needed, unix_ns())?, 0),
        };
        let writer = SegmentWriter::take(seg, me, my_start)?;
        // The device-restart switch survives warm starts (header) and cold ones (log_dir).
        let old_flags = writer.segment().header().flags();
        let off = old_flags & FLAG_DEVICE_RESTART_OFF != 0 || device_restart_marker(&cfg).exists();
        writer.set_flags(flags | if off { FLAG_DEVICE_RESTART_OFF } else { 0 })?;
        writer.set_guardian(0, 0)?;
        let sockets = Sockets {
            listener: bind_socket(&inst.socket_path(), cfg.client_gid)?,
            notify: bind_notify(&inst.notify_path())?,
        };
        Self::build(cfg, config_text, writer, sockets, Origin::Started)
    }

    /// A Guardian taking over: the old HAM is dead (or fenced and dead).
    pub fn promote(
        cfg: Config,
        config_text: String,
        sockets: Sockets,
        passed: HashMap<u32, Passed>,
    ) -> Result<Self, DaemonError> {
        let seg_name = cfg.instance.segment_name();
        let seg = match Segment::open(&seg_name, Access::ReadWrite) {
            Ok(seg) => seg,
            Err(e @ (SegmentError::BadMagic { .. } | SegmentError::Geometry { .. })) => {
                // Corrupted under us: the HAM we watched is dead, so no one else can be
                // using it. Start cold in its place rather than leave the box unsupervised;
                // each entity's cgroup keeps a copy that still runs from running twice.
                log(
                    &cfg.instance.name,
                    format_args!(
                        "the segment {seg_name} is unreadable ({e}): taking over cold with a \
                         new one"
                    ),
                );
                Segment::unlink(&seg_name)?;
                let needed = cfg.max_entities.max(cfg.entities.len() as u32);
                Segment::create(&seg_name, needed, unix_ns())?
            }
            Err(e) => return Err(e.into()),
        };
        let me = std::process::id() as i32;
        // A new Guardian first: if this process dies anywhere in the takeover, that one
        // finds its parent gone and takes over in turn.
        let guardian = match spawn_guardian_process(&cfg, &config_text, &sockets) {
            Ok(g) => Some(g),
            Err(e) => {
                log(
                    &cfg.instance.name,
                    format_args!("cannot start a guardian yet: {e}"),
                );
                None
            }
        };
        let writer = SegmentWriter::take(seg, me, procfs::start_time(me).unwrap_or(0))?;
        failpoint::hit("promote:after-epoch");
        writer.bump_ham_failures()?;
        // The device-restart switch, as `start` keeps it (a new segment has only the marker).
        let off = if device_restart_marker(&cfg).exists() {
            FLAG_DEVICE_RESTART_OFF
        } else {
            0
        };
        let flags = writer.segment().header().flags();
        writer.set_flags(flags | FLAG_WARM_START | off)?;
        match &guardian {
            Some(g) => writer.set_guardian(g.pid, g.start_time)?,
            None => writer.set_guardian(0, 0)?,
        }
        log(
            &cfg.instance.name,
            format_args!(
                "guardian pid {me} promoted to HAM (epoch {})",
                writer.epoch()
            ),
        );
        sockets
            .listener
            .set_nonblocking(true)
            .map_err(io_ctx("socket O_NONBLOCK"))?;
        let mut d = Self::build(
            cfg,
            config_text,
            writer,
            sockets,
            Origin::Promoted { passed },
        )?;
        d.guardian = guardian;
        Ok(d)
    }

    fn build(
        cfg: Config,
        config_text: String,
        mut writer: SegmentWriter,
        sockets: Sockets,
        origin: Origin,
    ) -> Result<Self, DaemonError> {
        let Sockets { listener, notify } = sockets;
        notify
            .set_nonblocking(true)
            .map_err(io_ctx("notify socket O_NONBLOCK"))?;
        let inst = cfg.instance.clone();
        if cfg!(debug_assertions) {
            writer.set_hook(Some(failpoint::hit));
        }
        // Signals are blocked before anything else exists, so none is lost and none kills us.
        let signals = signalfd().map_err(io_ctx("signalfd"))?;
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .map_err(io_ctx("PR_SET_CHILD_SUBREAPER"))?;

        let mut sources = EXIT_SOURCE_WAITID;
        if sys::pidfd_info_exit_supported() {
            sources |= EXIT_SOURCE_PIDFD_INFO;
        }
        if ProcConnector::open().is_ok() {
            sources |= EXIT_SOURCE_PROC_CONNECTOR;
        }
        writer.set_exit_sources(sources)?;

        let me = std::process::id();
        std::fs::write(inst.pid_path(), format!("{me}\n"))
            .map_err(io_ctx(format!("writing {}", inst.pid_path().display())))?;

        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(io_ctx("epoll_create"))?;
        let timerfd = rustix::time::timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
        )
        .map_err(io_ctx("timerfd_create"))?;
        let add = |fd: std::os::fd::BorrowedFd, tok: Token| {
            epoll::add(&epoll, fd, tok.data(), epoll::EventFlags::IN).map_err(io_ctx("epoll_ctl"))
        };
        add(signals.as_fd(), Token::Signal)?;
        add(timerfd.as_fd(), Token::Timer)?;
        add(listener.as_fd(), Token::Listen)?;
        add(notify.as_fd(), Token::Notify)?;

        let capacity = writer.segment().capacity();
        log(
            &inst.name,
            format_args!(
                "pid {me}, epoch {}, {} entities, segment {} ({} KiB), socket {}",
                writer.epoch(),
                cfg.entities.len(),
                inst.segment_name(),
                segment_size(capacity) / 1024,
                inst.socket_path().display()
            ),
        );
        if let Ok((limit, _)) = sys::rlimit_nofile() {
            // The HAM holds a pidfd per running entity (two while a command of its runs)
            // and ~32 of its own; the Guardian a pidfd per entity. Control connections and
            // subscriptions take what is left (each is capped, none is reserved).
            let room = limit.saturating_sub(32) / 2;
            log(
                &inst.name,
                format_args!(
                    "descriptors: limit {limit}, room for about {room} running entities (fewer \
                     while up to {} control connections are open){}",
                    conns::CONN_MAX,
                    if (cfg.entities.len() as u64) > room {
                        " — fewer than this configuration has: raise RLIMIT_NOFILE's hard limit"
                    } else {
                        ""
                    }
                ),
            );
        }
        let tick_ns = (cfg.liveness_timeout_ns / 4).max(1);
        let (plog, err) = ProcessLog::open(inst.process_log_path());
        if let Some(e) = err {
            log(
                &inst.name,
                format_args!(
                    "cannot open the process log {}: {e}; going on without it",
                    inst.process_log_path().display()
                ),
            );
        }
        let syslog = Syslog::new(cfg.syslog.clone());
        // The client-token key: made once per segment, kept by every successor.
        let mut key = writer.segment().header().client_key();
        if key == [0, 0] {
            key = random_key().map_err(io_ctx("getrandom (the client-token key)"))?;
            writer.set_client_key(key)?;
        }
        let warm = writer.segment().header().flags() & FLAG_WARM_START != 0;
        // The log verbosity a predecessor was told to use.
        let v = writer.segment().header().verbosity();
        if v > 0 {
            VERBOSITY.store((v - 1) as u32, std::sync::atomic::Ordering::Relaxed);
        }
        let clients = match Clients::open(&cfg, &origin, warm, key, &writer) {
            Ok(c) => Some(c),
            Err(e) => {
                log(
                    &inst.name,
                    format_args!(
                        "cannot set up the client segment: {e}; going on without SDK clients"
                    ),
                );
                None
            }
        };
        let cgroups = match crate::cgroup::Cgroups::open(&inst.cgroup, &inst.name) {
            Ok(Some(cg)) => {
                log(
                    &inst.name,
                    format_args!(
                        "each entity's processes are tracked in a cgroup under {}",
                        cg.dir().display()
                    ),
                );
                Some(cg)
            }
            Ok(None) => None,
            Err(why) => {
                log(
                    &inst.name,
                    format_args!(
                        "no cgroups ({why}): entities are tracked by process group, and a \
                         process that leaves its group is not stopped with its entity"
                    ),
                );
                None
            }
        };
        Ok(Self {
            clients,
            subscribers: HashMap::new(),
            next_sub: 0,
            defs: toml::Table::new(),
            handoff_backlog: Default::default(),
            my_uid: rustix::process::geteuid().as_raw(),
            config_text,
            writer,
            epoll,
            signals,
            timerfd,
            armed_at: None,
            listener,
            notify,
            conns: HashMap::new(),
            accept_paused: false,
            cgroups,
            deferred: Default::default(),
            spawn_budget: SPAWNS_PER_TURN,
            limited: conns::RateLimit::default(),
            next_conn: 0,
            entities: Vec::new(),
            by_name: HashMap::new(),
            timers: BinaryHeap::new(),
            shutdown: None,
            guardian: None,
            guardian_retry_at: None,
            tick_ns,
            next_tick: 0,
            proc_conn: None,
            exit_cache: HashMap::new(),
            patches: Vec::new(),
            origin: Some(origin),
            plog,
            syslog,
            runs: HashMap::new(),
            next_run: 0,
            run_queue: HashMap::new(),
            journal_full_logged: false,
            exec_pids: HashMap::new(),
            dependents: Vec::new(),
            cfg,
        })
    }

    /// Starts the Guardian, takes over or starts every entity, and runs until a shutdown
    /// completes. Returns the exit code.
    pub fn run(mut self) -> Result<i32, DaemonError> {
        let promoted = matches!(self.origin, Some(Origin::Promoted { .. }));
        // The Guardian comes first: from here on, a death of this HAM is covered.
        if self.guardian.is_some() {
            self.guardian_started();
        } else {
            self.spawn_guardian();
        }
        if promoted {
            failpoint::hit("promote:after-guardian");
        }
        let passed = match self.origin.take() {
            Some(Origin::Promoted { passed }) => passed,
            _ => HashMap::new(),
        };
        let cold = !promoted && self.writer.segment().header().flags() & FLAG_WARM_START == 0;
        self.load_defs();
        self.adopt(passed);
        self.resume_heartbeats();
        self.resume_runs();
        if cold {
            self.run_now_actions();
        }
        if let Err(e) = self.watch_clients() {
            say!(self, "cannot watch the doorbell: {e}");
        }
        if self.writer.segment().header().flags() & FLAG_STOP_INTENT != 0 {
            say!(
                self,
                "the previous HAM was shutting down: finishing the shutdown"
            );
            self.begin_shutdown(None);
        }
        self.schedule_tick(mono_ns());
        sys::trim_heap();
        let mut events = Vec::with_capacity(64);
        let no_wait = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        loop {
            self.spawn_budget = SPAWNS_PER_TURN;
            self.run_deferred();
            if self.shutdown.is_some() && self.entities.iter().all(|e| e.pidfd.is_none()) {
                self.finish();
                return Ok(crate::exit::OK);
            }
            self.rearm_timer();
            self.arm_ring();
            events.clear();
            // With spawns still deferred, look at what came in and come straight back.
            let timeout = (!self.deferred.is_empty()).then_some(&no_wait);
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                timeout,
            ) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(io_ctx("epoll_wait")(e)),
            }
            let _ = self.writer.set_liveness(mono_ns());
            for ev in events.drain(..) {
                match Token::decode(ev.data.u64()) {
                    Some(Token::Signal) => self.on_signals(),
                    Some(Token::Timer) => self.on_timer(),
                    Some(Token::Listen) => self.on_accept(),
                    Some(Token::Guardian) => self.on_guardian_exit(),
                    Some(Token::ProcConn) => self.drain_proc_connector(),
                    Some(Token::Notify) => self.on_notify(),
                    Some(Token::Doorbell) => self.on_doorbell(),
                    Some(Token::Handoff) => self.on_handoff_writable(),
                    Some(Token::Conn(id)) => self.on_conn(id),
                    Some(Token::Pidfd(i)) => self.on_pidfd(i),
                    Some(Token::Action(id)) => self.on_action_exit(id),
                    Some(Token::Sub(id)) => self.on_subscriber(id),
                    None => {}
                }
            }
        }
    }

    // -- taking over the state -------------------------------------------------------------

    /// Builds the entity table from the configuration and whatever the segment holds:
    /// records of configured entities are resumed (their processes adopted, checked by pid +
    /// start time), records of entities no longer configured are stopped and freed, and
    /// new entities get a free slot and are started.
    fn adopt(&mut self, mut passed: HashMap<u32, Passed>) {
        let mut found: HashMap<String, (u32, EntityRecord)> = HashMap::new();
        for (slot, rec) in self.writer.segment().records() {
            match rec {
                Ok(r) => {
                    found.insert(r.name.clone(), (slot, r));
                }
                Err(e) => {
                    say!(self, "slot {slot} is unreadable ({e}); freeing it");
                    let _ = self.writer.clear(slot);
                }
            }
        }
        let configured: HashSet<&str> = self.cfg.entities.iter().map(|e| e.name.as_str()).collect();
        let orphans: Vec<(u32, EntityRecord)> = found
            .iter()
            .filter(|(name, _)| !configured.contains(name.as_str()))
            .map(|(_, v)| v.clone())
            .collect();
        for (slot, rec) in orphans {
            found.remove(&rec.name);
            say!(
                self,
                "{}: no longer configured; stopping it and freeing slot {slot}",
                rec.name
            );
            if rec.state.has_process() || rec.state == EntityState::Starting {
                signal_recorded(&rec, libc::SIGTERM);
            }
            let _ = self.writer.clear(slot);
        }
        let mut used: HashSet<u32> = found.values().map(|(s, _)| *s).collect();
        let mut next_free = 0u32;
        let cfgs = self.cfg.entities.clone();
        let mut to_resume = Vec::new();
        let mut to_start = Vec::new();
        for ec in cfgs {
            let env = entity_env(&ec, &self.cfg);
            let (slot, rec, existing) = match found.remove(&ec.name) {
                Some((slot, rec)) => (slot, rec, true),
                None => {
                    while used.contains(&next_free) {
                        next_free += 1;
                    }
                    used.insert(next_free);
                    (next_free, EntityRecord::new(&ec.name), false)
                }
            };
            let i = self.entities.len();
            if !crate::config::is_free_entry(&ec.name) {
                self.by_name.insert(ec.name.clone(), i);
            }
            self.entities.push(Entity::new(ec, slot, rec, env));
            if existing {
                to_resume.push(i);
            } else {
                to_start.push(i);
            }
        }
        self.dependents = vec![Vec::new(); self.entities.len()];
        for (d, e) in self.entities.iter().enumerate() {
            for &j in &e.cfg.after {
                self.dependents[j].push(d);
            }
        }
        // Records of processes that may still run come first, so that the proc connector is
        // listening before any of them can die unseen.
        if to_resume.iter().any(|&i| self.entities[i].rec.pid > 0) {
            self.ensure_proc_connector();
        }
        for i in to_resume {
            let p = passed.remove(&self.entities[i].slot);
            self.resume(i, p);
        }
        for i in 0..self.entities.len() {
            self.prepare_cgroup(i);
        }
        for &i in &to_start {
            // No record: whatever still runs in its cgroup (a record lost or unreadable, a
            // segment replaced) is an earlier copy. It goes before a new one starts.
            if let Some(cg) = &self.cgroups {
                let name = self.entities[i].cfg.name.clone();
                if cg.populated(&name) {
                    // Bounded well inside the liveness timeout: the Guardian must not take
                    // this wait for a stuck HAM.
                    let wait_ms = self.cfg.liveness_timeout_ns / 4_000_000;
                    let gone = cg.kill_and_wait(&name, wait_ms);
                    say!(
                        self,
                        "{name}: processes without a record were left in its cgroup; {}",
                        if gone {
                            "killed".to_owned()
                        } else {
                            format!("still there {wait_ms} ms after SIGKILL (stuck in the kernel?)")
                        }
                    );
                }
            }
            // Listed as what it is about to be (and what a successor carries on from).
            let e = &mut self.entities[i];
            e.rec.state = if e.cfg.after.is_empty() {
                EntityState::Starting
            } else {
                EntityState::Waiting
            };
            self.publish(i);
        }
        // Every entity is listed before any starts.
        for i in to_start {
            self.entities[i].rec.starts += 1;
            self.start_when_ready(i);
        }
        self.release_proc_connector_if_idle();
    }

    /// Makes entity `i`'s cgroup and writes its limits, saying which cannot be applied.
    pub(super) fn prepare_cgroup(&mut self, i: usize) {
        let Some(cg) = &self.cgroups else { return };
        let e = &self.entities[i];
        if crate::config::is_free_entry(&e.cfg.name) {
            return;
        }
        match cg.prepare(&e.cfg.name, &e.cfg.limits) {
            Ok(not_applied) => {
                for why in not_applied {
                    say!(self, "{}: limit not applied: {why}", e.cfg.name);
                }
            }
            Err(err) => say!(self, "{}: cannot make its cgroup: {err}", e.cfg.name),
        }
    }

    /// Carries on from one entity's record.
    fn resume(&mut self, i: usize, passed: Option<Passed>) {
        let rec = self.entities[i].rec.clone();
        match rec.state {
            EntityState::Stopped | EntityState::Exited => self.publish(i),
            EntityState::Backoff => self.spawn(i),
            EntityState::HeldOff => {
                // The hold-off's deadline is in the record (same monotonic clock).
                let at = rec.policy.held_until.max(mono_ns());
                self.schedule(at, Deadline::HoldOff(i));
                self.entities[i].rec.policy.held_until = at;
                self.publish(i);
            }
            EntityState::Starting if rec.pid <= 0 => self.spawn(i),
            EntityState::Waiting => self.start_when_ready(i),
            EntityState::Starting | EntityState::Running | EntityState::Stopping => {
                let passed = passed.filter(|p| p.pid == rec.pid && p.start_time == rec.start_time);
                match open_verified(rec.pid, rec.start_time, passed.as_ref()) {
                    Some(pidfd) if rec.state == EntityState::Starting => {
                        // `starting` with a pid: forked but never released (the release is
                        // recorded as `running` before it happens), whatever /proc shows —
                        // a zombie has no exe to read. It exits on its own; make sure, then
                        // start it for real, counting nothing.
                        let _ = rustix::process::pidfd_send_signal(
                            &pidfd,
                            rustix::process::Signal::KILL,
                        );
                        wait_pidfd(&pidfd, 5_000);
                        say!(
                            self,
                            "{}: pid {} was never released; starting it again",
                            rec.name,
                            rec.pid
                        );
                        self.spawn(i);
                    }
                    Some(pidfd) => {
                        if let Err(e) = self.watch(i, &pidfd) {
                            say!(self, "{}: cannot watch pid {}: {e}", rec.name, rec.pid);
                        }
                        self.send_to_guardian(
                            self.entities[i].slot,
                            rec.pid,
                            rec.start_time,
                            &pidfd,
                        );
                        let e = &mut self.entities[i];
                        e.pidfd = Some(pidfd);
                        e.adopted = true;
                        if e.rec.state == EntityState::Starting {
                            e.rec.state = EntityState::Running;
                            e.rec.started_mono_ns = mono_ns();
                            e.rec.started_unix_ns = unix_ns();
                        }
                        let stopping = e.rec.state == EntityState::Stopping;
                        say!(self, "{}: adopted pid {}", rec.name, rec.pid);
                        if stopping {
                            // Resume the stop (or the restart it was part of): signal again
                            // and arm a fresh deadline.
                            self.entities[i].rec.state = EntityState::Running;
                            let wanted = match (rec.restart_pending, rec.restart_automatic) {
                                (true, true) => Wanted::AutoRestart,
                                (true, false) => Wanted::Restart,
                                _ => Wanted::Down,
                            };
                            self.begin_stop(i, wanted);
                        } else {
                            self.publish(i);
                            self.became_running(i, mono_ns());
                        }
                    }
                    None => {
                        // It died while no HAM was watching.
                        let status = passed
                            .as_ref()
                            .and_then(|p| sys::pidfd_exit_status(&p.pidfd).ok().flatten())
                            .map_or(LastExit::Unknown, decode_wait_status);
                        if rec.state == EntityState::Starting {
                            self.spawn(i);
                        } else {
                            say!(
                                self,
                                "{}: pid {} died while no HAM was watching",
                                rec.name,
                                rec.pid
                            );
                            if rec.state == EntityState::Stopping {
                                self.entities[i].wanted = Wanted::Down;
                            }
                            self.on_exit(i, status);
                        }
                    }
                }
            }
        }
    }

    // -- the Guardian ----------------------------------------------------------------------

    /// Starts a Guardian (or schedules another try).
    fn spawn_guardian(&mut self) {
        if self.shutdown.is_some() {
            return;
        }
        let sockets = (&self.listener, &self.notify);
        match spawn_guardian_process(&self.cfg, &self.config_text, sockets) {
            Ok(g) => {
                let _ = self.writer.set_guardian(g.pid, g.start_time);
                self.guardian = Some(g);
                self.guardian_started();
            }
            Err(e) => {
                let at = mono_ns() + 1_000_000_000;
                say!(self, "cannot start the guardian: {e}; retrying in 1s");
                self.guardian_retry_at = Some(at);
                self.schedule(at, Deadline::GuardianRetry);
            }
        }
    }

    /// Watches a new Guardian and hands it every live entity's pidfd.
    fn guardian_started(&mut self) {
        let Some(g) = &self.guardian else { return };
        say!(self, "guardian pid {}", g.pid);
        let _ = epoll::add(
            &self.epoll,
            &g.pidfd,
            Token::Guardian.data(),
            epoll::EventFlags::IN,
        );
        self.guardian_retry_at = None;
        for e in &self.entities {
            if let Some(fd) = &e.pidfd {
                self.send_to_guardian(e.slot, e.rec.pid, e.rec.start_time, fd);
            }
        }
    }

    /// The HAM watches its Guardian's liveness as the Guardian watches the HAM's: one
    /// that has not beaten for `liveness_timeout` (stopped, or stuck) is fenced — SIGKILL
    /// through its pidfd — and its death then starts a new one (`on_guardian_exit`).
    /// Otherwise a stopped Guardian would leave the box unsupervised once the HAM died.
    fn check_guardian(&mut self, now: u64) {
        let timeout = self.cfg.liveness_timeout_ns;
        let Some(g) = &mut self.guardian else { return };
        if handoff::drain_beats(&g.sock) {
            g.seen_at = now;
        }
        let silent = now.saturating_sub(g.seen_at);
        if silent >= timeout {
            g.seen_at = now; // one fence per silence
            let pid = g.pid;
            let _ = rustix::process::pidfd_send_signal(&g.pidfd, rustix::process::Signal::KILL);
            say!(
                self,
                "the guardian (pid {pid}) has not turned its loop for {}: fencing it",
                ham_core::duration::format_ns(silent)
            );
        }
    }

    fn on_guardian_exit(&mut self) {
        let Some(g) = self.guardian.take() else {
            return;
        };
        // Its successor gets every pidfd afresh (`guardian_started`).
        self.handoff_backlog.borrow_mut().clear();
        let how = match rustix::process::waitid(
            WaitId::PidFd(g.pidfd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        ) {
            Ok(Some(st)) => decode_waitid(&st),
            Ok(None) => {
                self.guardian = Some(g); // not dead after all
                return;
            }
            Err(_) => LastExit::Unknown,
        };
        let _ = self.writer.set_guardian(0, 0);
        if self.shutdown.is_some() {
            return;
        }
        say!(
            self,
            "guardian pid {} died ({}); starting a new one",
            g.pid,
            describe(how)
        );
        let _ = self.writer.bump_guardian_failures();
        self.spawn_guardian();
    }

    /// Gives the Guardian a duplicate of an entity's pidfd (best effort: without it the
    /// Guardian falls back to pidfd_open + start time at a takeover).
    fn send_to_guardian(&self, slot: u32, pid: i32, start_time: u64, pidfd: &OwnedFd) {
        // (sendmsg duplicates the descriptor into the message; ours stays ours)
        let Some(g) = &self.guardian else { return };
        let mut backlog = self.handoff_backlog.borrow_mut();
        if backlog.is_empty() {
            match handoff::send(&g.sock, slot, pid, start_time, pidfd) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The socket is full (many attachments at once): keep it, in order,
                    // and send when the Guardian has read some.
                    let _ = epoll::add(
                        &self.epoll,
                        &g.sock,
                        Token::Handoff.data(),
                        epoll::EventFlags::OUT,
                    );
                }
                Err(e) => {
                    say!(self, "cannot hand pid {pid} to the guardian: {e}");
                    return;
                }
            }
        }
        match pidfd.try_clone() {
            Ok(fd) => backlog.push_back((slot, pid, start_time, fd)),
            Err(e) => say!(self, "cannot keep pid {pid} for the guardian: {e}"),
        }
    }

    /// The Guardian's socket has room again: send what waits, in order.
    fn on_handoff_writable(&mut self) {
        let Some(g) = &self.guardian else {
            self.handoff_backlog.borrow_mut().clear();
            return;
        };
        let mut backlog = self.handoff_backlog.borrow_mut();
        while let Some((slot, pid, start_time, fd)) = backlog.front() {
            match handoff::send(&g.sock, *slot, *pid, *start_time, fd) {
                Ok(()) => {
                    backlog.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    say!(self, "cannot hand pid {pid} to the guardian: {e}");
                    backlog.pop_front();
                }
            }
        }
        let _ = epoll::delete(&self.epoll, &g.sock);
    }

    /// Adds entity `i`'s pidfd to the loop.
    fn watch(&self, i: usize, pidfd: &OwnedFd) -> rustix::io::Result<()> {
        epoll::add(
            &self.epoll,
            pidfd,
            Token::Pidfd(i).data(),
            epoll::EventFlags::IN,
        )
    }

    // -- segment ---------------------------------------------------------------------------

    fn publish(&mut self, i: usize) {
        self.publish_record(i);
        self.answer_waiters(i);
    }

    /// Publishes entity `i`'s record without answering its waiters (a state that may not
    /// last: the release recorded before it is known to have worked).
    fn publish_record(&mut self, i: usize) {
        let e = &mut self.entities[i];
        match self.writer.publish(e.slot, &e.rec) {
            Ok(g) => e.rec.generation = g,
            Err(SegmentError::Fenced { ours, current }) => {
                // Another HAM owns the state now: this one must not act on anything more.
                log(
                    &self.cfg.instance.name,
                    format_args!("fenced (epoch {ours}, segment at {current}): exiting"),
                );
                std::process::exit(crate::exit::FAILED);
            }
            Err(err) => log(
                &self.cfg.instance.name,
                format_args!("{}: cannot publish: {err}", e.cfg.name),
            ),
        }
    }

    fn schedule_tick(&mut self, now: u64) {
        self.next_tick = now + self.tick_ns;
        self.schedule(self.next_tick, Deadline::Liveness);
    }

    // -- processes -------------------------------------------------------------------------

    /// Starts entity `i`'s program. The order is what makes a crash at any step safe:
    /// 1. publish `starting` (no pid): a successor starts it;
    /// 2. fork a child that waits before `execve`;
    /// 3. publish `starting` + pid + start time, and hand the pidfd to the Guardian;
    /// 4. publish `running` (the release, recorded);
    /// 5. release the child into its program.
    ///
    /// A HAM killed before step 4 leaves a child that exits on its own without running
    /// anything (a successor starts the entity, counting nothing); one killed after it
    /// leaves a record naming a process that runs — a child orphaned between 4 and 5 reads
    /// the record and runs — so its death, whenever it comes, is counted.
    fn spawn(&mut self, i: usize) {
        let now = mono_ns();
        if self.entities[i].cfg.attach_only && self.entities[i].cfg.argv.is_empty() {
            // ham cannot start it: it waits for a process to attach itself.
            let e = &mut self.entities[i];
            if !e.rec.state.has_process() {
                e.rec.state = EntityState::Stopped;
                e.rec.restart_pending = false;
                self.publish(i);
            }
            return;
        }
        {
            let e = &mut self.entities[i];
            e.stop_deadline = None;
            e.retry_at = None;
            e.wanted = Wanted::Up;
            e.adopted = false;
            e.ready = false;
            e.rec.ready = false;
            e.rec.restart_pending = false;
            e.rec.restart_automatic = false;
            e.rec.state = EntityState::Starting;
            e.rec.pid = 0;
            e.rec.start_time = 0;
            // The first process ham starts for it is its first start, whatever started
            // it (the configuration, a `ham_attach` line, a restart action).
            e.rec.starts = e.rec.starts.max(1);
        }
        self.publish(i);
        // An entity that was not crash-looping (its last process lived a second or more)
        // is restarted at once, whatever the budget: a storm must not delay it. The others,
        // and first starts, wait for a later turn once this one has started enough
        // (published `starting` with no pid, which is also what a successor starts), the
        // first starts before the crash-loopers.
        let r = &self.entities[i].rec;
        let lived = r.exited_mono_ns.saturating_sub(r.started_mono_ns);
        let healthy = r.started_mono_ns != 0 && lived >= 1_000_000_000;
        if self.spawn_budget == 0 && !healthy {
            self.deferred.push(i, r.started_mono_ns == 0);
            return;
        }
        self.spawn_budget = self.spawn_budget.saturating_sub(1);
        failpoint::hit("spawn:after-starting");
        let e = &self.entities[i];
        let slot = self.writer.segment().slot(e.slot);
        let cgroup_dir = self
            .cgroups
            .as_ref()
            .and_then(|cg| cg.open_dir(&e.cfg.name).ok());
        let forked = build_spec(&e.cfg, &e.env).and_then(|mut spec| {
            if let Some(slot) = slot {
                spec.released_in(slot);
            }
            if let Some(dir) = cgroup_dir {
                spec.into_cgroup(dir);
            }
            spec.fork()
        });
        let result = match forked {
            Ok(pending) => {
                failpoint::hit("spawn:after-fork");
                let pid = pending.pid;
                // Into its cgroup before it runs anything (it waits for its release), if
                // it was not created there.
                if let (Some(cg), false) = (&self.cgroups, pending.in_cgroup) {
                    let name = &self.entities[i].cfg.name;
                    if let Err(e) = cg.enter(name, pid) {
                        let msg = format!("{name}: cannot put pid {pid} in its cgroup: {e}");
                        self.say_limited("cgroup-enter", format_args!("{msg}"));
                    }
                }
                let st = procfs::start_time(pid).unwrap_or(0);
                {
                    let e = &mut self.entities[i];
                    e.rec.pid = pid;
                    e.rec.start_time = st;
                }
                self.publish(i);
                self.send_to_guardian(self.entities[i].slot, pid, st, &pending.pidfd);
                failpoint::hit("spawn:after-record-pid");
                // The release is recorded before it happens: from here on the child runs
                // even if this HAM dies (it reads this record), and its death is a death.
                {
                    let e = &mut self.entities[i];
                    e.rec.state = EntityState::Running;
                    e.rec.started_mono_ns = now;
                    e.rec.started_unix_ns = unix_ns();
                }
                self.publish_record(i);
                let released = pending.release();
                failpoint::hit("spawn:after-release");
                released.map_err(|(err, pidfd)| {
                    // The child reported the failure and exits: reap it here.
                    let _ = rustix::process::waitid(
                        WaitId::PidFd(pidfd.as_fd()),
                        WaitIdOptions::EXITED,
                    );
                    err
                })
            }
            Err(e) => Err(e),
        };
        let watched = match &result {
            Ok((_, pidfd)) => self.watch(i, pidfd),
            Err(_) => Ok(()),
        };
        let e = &mut self.entities[i];
        match result {
            Ok((pid, pidfd)) => {
                if let Err(err) = watched {
                    // Without a watch we would never see it die: kill it; the kill is seen
                    // through SIGCHLD.
                    log(
                        &self.cfg.instance.name,
                        format_args!("{}: cannot watch pid {pid}: {err}", e.cfg.name),
                    );
                    let _ =
                        rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
                }
                e.rec.state = EntityState::Running;
                e.rec.started_mono_ns = now;
                e.rec.started_unix_ns = unix_ns();
                e.pidfd = Some(pidfd);
                e.spawn_failures = 0;
                e.last_spawn_error = None;
                self.publish(i);
                failpoint::hit("spawn:after-running");
                self.became_running(i, now);
            }
            Err(err) => {
                e.rec.pid = 0;
                e.rec.start_time = 0;
                e.spawn_failures += 1;
                let delay = policy::spawn_retry_delay_ns(e.spawn_failures);
                let msg = format!("cannot start {}: {err}", e.cfg.exec_path.display());
                log(
                    &self.cfg.instance.name,
                    format_args!(
                        "{}: {msg}; retrying in {}",
                        e.cfg.name,
                        ham_core::duration::format_ns(delay)
                    ),
                );
                e.last_spawn_error = Some(msg);
                e.retry_at = Some(now + delay);
                e.rec.state = EntityState::Backoff;
                self.schedule(now + delay, Deadline::Retry(i));
                self.publish(i);
            }
        }
    }

    /// The entity's pidfd is readable: its process has exited.
    fn on_pidfd(&mut self, i: usize) {
        let Some(e) = self.entities.get(i) else {
            return;
        };
        if e.pidfd.is_none() {
            return;
        }
        let (pid, adopted) = (e.rec.pid, e.adopted);
        if adopted {
            self.drain_proc_connector();
        }
        let fd = self.entities[i].pidfd.as_ref().expect("checked above");
        let status = if adopted {
            match self.exit_cache.remove(&pid) {
                Some(ws) => Some(decode_wait_status(ws)),
                None => sys::pidfd_exit_status(fd)
                    .ok()
                    .flatten()
                    .map(decode_wait_status),
            }
        } else {
            match rustix::process::waitid(
                WaitId::PidFd(fd.as_fd()),
                WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
            ) {
                // A stale event from this batch for a process already handled: still running.
                Ok(None) => return,
                Ok(Some(st)) => Some(decode_waitid(&st)),
                Err(_) => None,
            }
        };
        let late = match status {
            Some(s) => s,
            None => {
                // Dead (the pidfd said so), status not known yet: go on, and fill it in if
                // its pidfd gives it once something reaps the process.
                // (The proc connector's message is sent just after the pidfd wakes us.)
                if let Ok(dup) = fd.try_clone() {
                    let at = mono_ns() + 1_000_000;
                    self.patches.push(StatusPatch {
                        entity: i,
                        pid,
                        death: self.entities[i].deaths + 1,
                        pidfd: dup,
                        tries: 0,
                        at,
                    });
                    self.schedule(at, Deadline::StatusPatch(i));
                }
                LastExit::Unknown
            }
        };
        failpoint::hit("exit:before-record");
        self.on_exit(i, late);
        if self.shutdown.is_some() {
            self.stop_next_layer();
        }
        self.release_proc_connector_if_idle();
    }

    /// SIGKILLs whatever is left in entity `i`'s cgroup (its main process has exited, or
    /// did not stop in time).
    fn kill_cgroup(&mut self, i: usize) {
        if let Some(cg) = &self.cgroups {
            let name = &self.entities[i].cfg.name;
            if cg.populated(name) {
                if let Err(e) = cg.kill(name) {
                    let msg = format!("{name}: cannot kill its cgroup: {e}");
                    self.say_limited("cgroup-kill", format_args!("{msg}"));
                }
            }
        }
    }

    /// Stops watching entity `i`'s pidfd and closes ham's copy. epoll watches the open
    /// file, not the descriptor: the Guardian holds another descriptor of it, so a pidfd
    /// closed without `EPOLL_CTL_DEL` stays registered, readable for ever (a busy loop).
    pub(super) fn unwatch_pidfd(&mut self, i: usize) {
        if let Some(fd) = self.entities[i].pidfd.take() {
            let _ = epoll::delete(&self.epoll, &fd);
        }
    }

    fn on_exit(&mut self, i: usize, exit: LastExit) {
        self.unwatch_pidfd(i);
        // What the process left behind in its cgroup dies with it.
        self.kill_cgroup(i);
        // An attachment ends with its process.
        self.end_attachment(i);
        let now = mono_ns();
        let shutting_down = self.shutdown.is_some();
        let e = &mut self.entities[i];
        let old_pid = e.rec.pid;
        e.deaths += 1;
        e.ready = false;
        e.rec.ready = false;
        e.watchdog_at = None;
        e.adopted = false;
        e.stop_deadline = None;
        e.rec.pid = 0;
        e.rec.start_time = 0;
        e.rec.last_exit = exit;
        e.rec.exited_mono_ns = now;
        e.rec.exited_unix_ns = unix_ns();
        if shutting_down {
            e.wanted = Wanted::Down;
        }
        let wanted = e.wanted;
        // Its restart mode would start it again after this exit (never an attach-only one:
        // not ours to start; a restart action may).
        let restartable = !e.cfg.attach_only
            && policy::after_exit(e.cfg.restart, Wanted::Up, exit) == AfterExit::Restart;
        let how = describe(exit);
        let name = e.cfg.name.clone();
        // Exits the entity made on its own are stamped in the record (published below with
        // the decision), for the `exits-within` conditions.
        let automatic = wanted == Wanted::Up;
        if automatic {
            e.rec.exit_stamps.push(now);
        }
        let death = Event::Death {
            abnormal: exit.is_abnormal(),
            lifetime: now.saturating_sub(e.rec.started_mono_ns),
            exits: automatic.then_some(e.rec.exit_stamps),
            now,
        };
        let restarts_before = e.rec.restarts;
        let hold = e.hold_after_stop.take().filter(|_| !shutting_down);
        let gone = Some((old_pid, exit));
        let text = format!("pid {old_pid} {how}");
        let cond = condition_of(exit);
        let mode = if e.cfg.attach_only {
            "attach-only"
        } else {
            e.cfg.restart.as_str()
        };
        match wanted {
            Wanted::AutoRestart => {
                e.rec.restart_automatic = false;
                say!(
                    self,
                    "{name}: {text}; stopped by ham to be restarted; restarting"
                );
            }
            Wanted::Restart => say!(self, "{name}: {text}; starting again as asked"),
            Wanted::Down if hold.is_some() => {
                say!(self, "{name}: {text}; held off as a condition asked");
            }
            Wanted::Down => say!(self, "{name}: {text}; stopped"),
            Wanted::Up if !restartable => {
                say!(self, "{name}: {text}; not restarted (restart = {mode})");
            }
            Wanted::Up => {}
        }
        // The lifecycle, and (for a death its restart mode restarts) the recovery policy.
        let why = lifecycle::Why::new(cond, &text)
            .gone(gone)
            .until(now + hold.unwrap_or(0));
        let exited = ham_core::lifecycle::Input::Exit {
            restartable,
            hold: hold.is_some(),
        };
        let mut fire_restart = self.step(i, exited, &why);
        match wanted {
            Wanted::Restart => self.record(i, gone, "operator", "restart", "as asked"),
            Wanted::Down => match hold {
                // A `hold-off` action: down for a while, then an automatic restart.
                Some(ns) => {
                    let wait = ham_core::duration::format_ns(ns);
                    self.record(i, None, "condition", "hold-off", &format!("for {wait}"));
                }
                None => self.record(i, gone, "operator", "stop", "stopped"),
            },
            Wanted::Up if !restartable => {
                let what = format!("restart = {mode}");
                self.record(i, gone, cond, "stay-down", &what);
            }
            Wanted::Up if self.entities[i].rec.restarts > restarts_before => {
                self.restart_group(i);
            }
            _ => {}
        }
        // Conditions fire once the record that explains them is published: a successor that
        // finds the old record decides again, but never runs these twice. Only a restart
        // made above fires `restart` here: one that a death condition's restart action
        // makes fires it itself, once, with the new pid.
        if shutting_down {
            fire_restart = false;
        } else {
            self.fire(i, death, gone);
        }
        if fire_restart {
            self.fire_restarted(i);
        }
    }

    /// Entity `i` died and is being restarted: its group's strategy may restart others too
    /// (stopped first, then started again, each counted as an automatic restart).
    fn restart_group(&mut self, i: usize) {
        let Some(g) = self.entities[i].cfg.group else {
            return;
        };
        let group = &self.cfg.groups[g];
        let others: Vec<usize> = match group.strategy {
            Strategy::OneForOne => return,
            Strategy::OneForAll => group.members.iter().copied().filter(|&m| m != i).collect(),
            Strategy::RestForOne => group
                .members
                .iter()
                .skip_while(|&&m| m != i)
                .skip(1)
                .copied()
                .collect(),
        };
        let (gname, dead) = (group.name.clone(), self.entities[i].cfg.name.clone());
        for m in others {
            if self.entities[m].rec.state == EntityState::Running {
                say!(
                    self,
                    "group {gname}: restarting {} because {dead} died",
                    self.entities[m].cfg.name
                );
                self.record(m, None, "group", "restart", &format!("{dead} died"));
                self.begin_stop(m, Wanted::AutoRestart);
            }
        }
    }

    // -- conditions and actions ------------------------------------------------------------

    /// Fires the conditions of entity `i` that match `event`: each matching condition's
    /// actions start as a run of their own.
    fn fire(&mut self, i: usize, event: Event, gone: Option<(i32, LastExit)>) {
        let conds: Vec<(usize, Condition)> = self
            .matching_indexed(i, &event)
            .map(|(k, c)| (k, c.clone()))
            .collect();
        if conds.is_empty() {
            return;
        }
        let event_rec = journal::RunEvent::of(&event, gone);
        let mut dropped = 0;
        for (k, c) in conds {
            if self.at_run_quota(i) {
                dropped += 1;
                continue;
            }
            let id = self.next_run;
            self.next_run = self.next_run.wrapping_add(1);
            // HAM_CONDITION names the condition that fired (`exits-within`, `raise`, …).
            let env = self.run_env(i, c.trigger.name(), &event_rec);
            self.start_run(
                id,
                Run {
                    entity: i,
                    condition: c.trigger.name(),
                    env,
                    stack: vec![(c.actions, 0)],
                    waiting: None,
                    independent: c.independent,
                    cond: k as u8,
                    event: event_rec.clone(),
                    jslot: None,
                    in_progress: false,
                    jwait: ham_core::journal::RunWait::None,
                    journaled: true,
                },
            );
        }
        if dropped > 0 {
            for _ in 0..dropped {
                let _ = self.writer.bump_limit(ham_core::layout::LIMIT_RUNS);
            }
            let name = self.entities[i].cfg.name.clone();
            self.say_limited(
                "runs-dropped",
                format_args!(
                    "{name}: {} condition run(s) of `{}` dropped: it has {RUNS_PER_ENTITY} \
                     open, its quota (status --json: limits.runs_dropped)",
                    dropped,
                    event.name()
                ),
            );
        }
    }

    /// Whether entity `i` has [`RUNS_PER_ENTITY`] condition runs open (running or
    /// queued). Counted only when the runs of all entities together could reach it.
    fn at_run_quota(&self, i: usize) -> bool {
        self.runs.len() >= RUNS_PER_ENTITY
            && self.runs.values().filter(|r| r.entity == i).count() >= RUNS_PER_ENTITY
    }

    /// Actions flagged `run_now` run once when the instance starts cold (QNX
    /// `HACTIONDONOW`), as well as when their condition fires. A takeover or a warm start
    /// does not run them again.
    fn run_now_actions(&mut self) {
        for i in 0..self.entities.len() {
            let now: Vec<Action> = self.entities[i]
                .cfg
                .conditions
                .iter()
                .flat_map(|c| c.actions.iter().filter(|a| a.run_now).cloned())
                .collect();
            if !now.is_empty() {
                self.run_now(i, now, true);
            }
        }
    }

    /// Runs `actions` of entity `i` once, now (`run-now`). Journaled only when they are all
    /// of the entity's `run_now` actions (what a successor can rebuild); an action added at
    /// run time with HACTIONDONOW runs at most once across a takeover.
    fn run_now(&mut self, i: usize, actions: Vec<Action>, journaled: bool) {
        let env = self.run_env(i, "run-now", &journal::RunEvent::default());
        let id = self.next_run;
        self.next_run = self.next_run.wrapping_add(1);
        self.start_run(
            id,
            Run {
                entity: i,
                condition: "run-now",
                env,
                stack: vec![(actions, 0)],
                waiting: None,
                independent: true,
                cond: ham_core::journal::COND_RUN_NOW,
                event: journal::RunEvent::default(),
                jslot: None,
                in_progress: false,
                jwait: ham_core::journal::RunWait::None,
                journaled,
            },
        );
    }

    /// Starts a run, or queues it behind the entity's run in progress: an entity's
    /// conditions run one after another in the order they fired, unless `independent`.
    fn start_run(&mut self, id: u32, run: Run) {
        let (i, independent) = (run.entity, run.independent);
        self.runs.insert(id, run);
        if !independent {
            let queue = self.run_queue.entry(i).or_default();
            queue.push_back(id);
            if queue.len() > 1 {
                self.journal(id, false); // queued: a successor queues it again
                return; // it starts when the one before it ends
            }
        }
        self.advance(id);
    }

    /// Run `id` is over: the next queued run of its entity starts.
    fn end_run(&mut self, id: u32) {
        let Some(run) = self.runs.remove(&id) else {
            return;
        };
        self.unjournal(&run);
        if run.independent {
            return;
        }
        let next = self.run_queue.get_mut(&run.entity).and_then(|q| {
            q.retain(|&r| r != id);
            q.front().copied()
        });
        if let Some(next) = next {
            self.advance(next);
        }
    }

    /// The conditions of entity `i` that `event` fires, with their indices: enabled, not
    /// pruned (those pruned by the restart this event is about still fire for it), matching.
    fn matching_indexed<'a>(
        &'a self,
        i: usize,
        event: &'a Event,
    ) -> impl Iterator<Item = (usize, &'a Condition)> + 'a {
        let e = &self.entities[i];
        let disarmed = e.rec.disarmed & !e.pruned_now;
        e.cfg.conditions.iter().enumerate().filter(move |(k, c)| {
            c.enabled && (*k >= 64 || disarmed & (1 << k) == 0) && c.trigger.matches(event)
        })
    }

    /// [`matching_indexed`](Self::matching_indexed) without the indices.
    fn matching<'a>(
        &'a self,
        i: usize,
        event: &'a Event,
    ) -> impl Iterator<Item = &'a Condition> + 'a {
        self.matching_indexed(i, event).map(|(_, c)| c)
    }

    /// Runs the actions of run `id` until one has to wait (a command, a delay) or none is left.
    fn advance(&mut self, id: u32) {
        loop {
            let Some(run) = self.runs.get_mut(&id) else {
                return;
            };
            let next = loop {
                let Some((list, at)) = run.stack.last_mut() else {
                    break None;
                };
                if *at < list.len() {
                    *at += 1;
                    break Some(list[*at - 1].clone());
                }
                run.stack.pop();
            };
            let Some(action) = next else {
                self.end_run(id);
                return;
            };
            if !action.enabled {
                continue; // disabled (or removed) at run time
            }
            // The journal says this action has begun before it has any effect: a successor
            // never does it twice.
            run.in_progress = true;
            run.jwait = ham_core::journal::RunWait::None;
            let (i, cond) = (run.entity, run.condition);
            self.journal(id, true);
            failpoint::hit("run:after-begin");
            let name = self.entities[i].cfg.name.clone();
            if let Some(result) = self.run_client_action(i, cond, &action.kind) {
                match result {
                    Ok(what) => self.record(i, None, cond, action.kind.name(), &what),
                    Err(why) => self.action_failed(id, &action, action.kind.name(), &why),
                }
                continue;
            }
            match &action.kind {
                ActionKind::Notify { .. }
                | ActionKind::HeartbeatHealthy
                | ActionKind::Restart { .. }
                | ActionKind::SignalPid { .. }
                | ActionKind::Stop { .. }
                | ActionKind::HoldOff { .. } => {}
                ActionKind::Log { message } => {
                    say!(self, "{name}: {cond}: {message}");
                    self.record(i, None, cond, "log", message);
                }
                ActionKind::Delay { ns } => {
                    let until = mono_ns() + ns;
                    if let Some(run) = self.runs.get_mut(&id) {
                        run.waiting = Some(Wait::Delay { until });
                        run.jwait = ham_core::journal::RunWait::Delay { until };
                    }
                    self.journal(id, true);
                    self.schedule(until, Deadline::Action(id));
                    return;
                }
                ActionKind::WaitFor { path, timeout_ns } => {
                    if path.exists() {
                        let what = format!("{} exists", path.display());
                        self.record(i, None, cond, "waitfor", &what);
                        continue;
                    }
                    let now = mono_ns();
                    let deadline = now + timeout_ns;
                    let next = (now + WAITFOR_EVERY_NS).min(deadline);
                    if let Some(run) = self.runs.get_mut(&id) {
                        run.waiting = Some(Wait::Path {
                            path: path.clone(),
                            deadline,
                            next,
                        });
                        run.jwait = ham_core::journal::RunWait::Path { deadline };
                    }
                    self.journal(id, true);
                    self.schedule(next, Deadline::Action(id));
                    return;
                }
                ActionKind::Signal { entity, signal } => {
                    let target = &self.entities[*entity];
                    if target.pidfd.is_some() && target.rec.state.has_process() {
                        signal_entity(target, *signal);
                        let what = format!("signal {signal} to {}", target.cfg.name);
                        self.record(i, None, cond, "signal", &what);
                    } else {
                        let why = format!("{} is not running", target.cfg.name);
                        self.action_failed(id, &action, "signal", &why);
                    }
                }
                ActionKind::DeviceRestart => {
                    let run = &self.runs[&id];
                    let (reason, gone) = if run.event.reason.is_empty() {
                        (format!("{name}: {cond}"), None)
                    } else {
                        (run.event.reason.clone(), run.event.gone)
                    };
                    let result = self.device_restart(&reason, Some(id));
                    if result.starts_with("running") {
                        self.record(i, gone, cond, "device-restart", &result);
                    } else {
                        self.action_failed(id, &action, "device-restart", &result);
                    }
                }
                ActionKind::Execute {
                    path,
                    argv,
                    timeout_ns,
                } => {
                    let env = self.runs[&id].env.clone();
                    let record = self.release_record(id);
                    let started = SpawnSpec::new(path, argv, &env).and_then(|mut spec| {
                        spec.new_process_group();
                        if let Some(slot) = record {
                            spec.released_in_run(slot);
                        }
                        spec.fork()
                    });
                    let deadline = mono_ns() + timeout_ns;
                    // Its pid is in the journal before it may run (the release handshake).
                    let started = started.map(|p| {
                        self.journal_exec(id, p.pid, deadline);
                        p.release()
                    });
                    match started {
                        Ok(Ok((pid, pidfd))) => {
                            self.wait_exec(id, pid, pidfd, deadline, action);
                            return;
                        }
                        Ok(Err((e, pidfd))) => {
                            let _ = rustix::process::waitid(
                                WaitId::PidFd(pidfd.as_fd()),
                                WaitIdOptions::EXITED,
                            );
                            let why = format!("cannot run {}: {e}", path.display());
                            self.action_failed(id, &action, "execute", &why);
                        }
                        Err(e) => {
                            let why = format!("cannot run {}: {e}", path.display());
                            self.action_failed(id, &action, "execute", &why);
                        }
                    }
                }
            }
        }
    }

    /// Run `id` waits for its command `pid` (its exit, or `deadline`, whichever comes first).
    fn wait_exec(&mut self, id: u32, pid: i32, pidfd: OwnedFd, deadline: u64, action: Action) {
        let _ = epoll::add(
            &self.epoll,
            &pidfd,
            Token::Action(id).data(),
            epoll::EventFlags::IN,
        );
        self.exec_pids.insert(pid, id);
        self.schedule(deadline, Deadline::Action(id));
        if let Some(run) = self.runs.get_mut(&id) {
            run.waiting = Some(Wait::Exec {
                pid,
                pidfd,
                deadline,
                action,
            });
        }
    }

    /// An action failed: log it, skip the rest of its list if it says so, and run its fail
    /// list next.
    fn action_failed(&mut self, id: u32, action: &Action, what: &str, why: &str) {
        let Some(run) = self.runs.get_mut(&id) else {
            return;
        };
        let (i, cond) = (run.entity, run.condition);
        if action.break_on_fail {
            if let Some((list, at)) = run.stack.last_mut() {
                *at = list.len();
            }
        }
        if !action.on_fail.is_empty() {
            run.stack.push((action.on_fail.clone(), 0));
        }
        let name = self.entities[i].cfg.name.clone();
        say!(self, "{name}: {cond}: {what} failed: {why}");
        self.record(i, None, cond, what, &format!("failed: {why}"));
    }

    /// A command run by an action exited.
    fn on_action_exit(&mut self, id: u32) {
        let Some(run) = self.runs.get_mut(&id) else {
            return;
        };
        let Some(Wait::Exec { pidfd, .. }) = &run.waiting else {
            return;
        };
        let status = match rustix::process::waitid(
            WaitId::PidFd(pidfd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        ) {
            Ok(None) => return, // still running
            Ok(Some(st)) => decode_waitid(&st),
            // Not our child: a command a predecessor started. Its pidfd is readable, so it
            // ended; the kernel may still tell how.
            Err(_) => match sys::pidfd_exit_status(pidfd) {
                Ok(Some(ws)) => decode_wait_status(ws),
                _ => LastExit::Unknown,
            },
        };
        let Some(Wait::Exec { pid, action, .. }) = run.waiting.take() else {
            return;
        };
        let (i, cond) = (run.entity, run.condition);
        self.exec_pids.remove(&pid);
        if status == LastExit::Code(0) {
            self.record(i, None, cond, "execute", &format!("pid {pid} exited 0"));
        } else {
            let why = format!("pid {pid} {}", describe(status));
            self.action_failed(id, &action, "execute", &why);
        }
        self.advance(id);
    }

    /// A delay ended, or a command ran past its timeout (it is killed; its exit reports the
    /// failure).
    fn on_action_timer(&mut self, id: u32, at: u64) {
        let Some(run) = self.runs.get_mut(&id) else {
            return;
        };
        match &run.waiting {
            Some(Wait::Delay { until }) if *until == at => {
                run.waiting = None;
                let (i, cond) = (run.entity, run.condition);
                self.record(i, None, cond, "delay", "waited");
                self.advance(id);
            }
            Some(Wait::Exec {
                pidfd, deadline, ..
            }) if *deadline == at => {
                let _ = rustix::process::pidfd_send_signal(pidfd, rustix::process::Signal::KILL);
            }
            Some(Wait::Path {
                path,
                deadline,
                next,
            }) if *next == at => {
                let (path, deadline) = (path.clone(), *deadline);
                let (i, cond) = (run.entity, run.condition);
                if path.exists() {
                    run.waiting = None;
                    let what = format!("{} exists", path.display());
                    self.record(i, None, cond, "waitfor", &what);
                    self.advance(id);
                } else if at >= deadline {
                    run.waiting = None;
                    let Some((list, idx)) = run.stack.last() else {
                        return;
                    };
                    let action = list[*idx - 1].clone();
                    let why = format!("{} did not appear in time", path.display());
                    self.action_failed(id, &action, "waitfor", &why);
                    self.advance(id);
                } else {
                    let next = (at + WAITFOR_EVERY_NS).min(deadline);
                    if let Some(Wait::Path { next: n, .. }) = &mut run.waiting {
                        *n = next;
                    }
                    self.schedule(next, Deadline::Action(id));
                }
            }
            _ => {}
        }
    }

    /// Starts entity `i` now if everything it starts `after` is ready, else marks it waiting.
    fn start_when_ready(&mut self, i: usize) {
        let deps_ready = self.entities[i].cfg.after.iter().all(|&j| {
            let d = &self.entities[j];
            d.rec.state == EntityState::Running && d.ready
        });
        if deps_ready {
            self.spawn(i);
        } else if self.entities[i].rec.state != EntityState::Waiting {
            self.entities[i].rec.state = EntityState::Waiting;
            self.publish(i);
        }
    }

    /// Starts what earlier turns deferred, within this turn's budget, unless it was asked
    /// otherwise meanwhile (stopped, or the instance is shutting down).
    fn run_deferred(&mut self) {
        while self.spawn_budget > 0 {
            let Some((i, restarted)) = self.deferred.pop() else {
                return;
            };
            let e = &mut self.entities[i];
            if e.rec.state != EntityState::Starting || e.rec.pid != 0 || e.wanted != Wanted::Up {
                continue;
            }
            if self.shutdown.is_some() {
                e.rec.state = EntityState::Stopped;
                e.pruned_now = 0;
                self.publish(i);
                continue;
            }
            self.spawn(i);
            if restarted {
                self.fire_restarted(i);
            }
        }
    }

    /// Entity `i` runs (started or adopted): it is ready now, or at its `ready_after`.
    fn became_running(&mut self, i: usize, now: u64) {
        let e = &mut self.entities[i];
        // A watchdog counts from now: after a takeover every process is taken as having
        // just petted it, so the takeover itself never looks like a missed beat. A
        // `notify` entity's starts when it says READY=1 (as systemd's), so a slow start-up
        // is not a hang.
        if let Some(ns) = e.cfg.watchdog_ns.filter(|_| !e.cfg.notify || e.ready) {
            let at = now + ns;
            e.watchdog_at = Some(at);
            self.schedule(at, Deadline::Watchdog(i));
        }
        let e = &self.entities[i];
        if e.cfg.wait_ready {
            return; // ready when it says so (SDK `ready()`, or `READY=1`)
        }
        let at = e.rec.started_mono_ns + e.cfg.ready_after_ns;
        if at <= now {
            self.on_ready(i);
        } else {
            self.schedule(at, Deadline::Ready(i));
        }
    }

    /// Datagrams on the sd_notify socket: `READY=1`, `WATCHDOG=1`, `WATCHDOG_USEC=`,
    /// `STOPPING=1`, `STATUS=`, from the main process of an entity with `notify = true`
    /// (identified by the kernel-supplied credentials, as systemd's NotifyAccess=main).
    fn on_notify(&mut self) {
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
    fn notify_sender(&self, pid: i32) -> Option<usize> {
        use crate::config::NotifyAccess;
        let listening = |e: &Entity| e.cfg.notify && e.rec.state == EntityState::Running;
        if pid == std::process::id() as i32 {
            // A message that claims to be ham's own: systemd-notify (before systemd 254)
            // speaks for its parent, and ham is the parent when an entity's main process
            // execs it. It is that main process, if exactly one runs systemd-notify.
            let mut running_it = self.entities.iter().enumerate().filter(|(_, e)| {
                listening(e)
                    && std::fs::read_link(format!("/proc/{}/exe", e.rec.pid))
                        .is_ok_and(|x| x.file_name().is_some_and(|n| n == "systemd-notify"))
            });
            return match (running_it.next(), running_it.next()) {
                (Some((i, _)), None) => Some(i),
                _ => None,
            };
        }
        if let Some(i) = self
            .entities
            .iter()
            .position(|e| listening(e) && e.rec.pid == pid)
        {
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
        let all: Vec<usize> = (0..self.entities.len())
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
    fn pet_watchdog(&mut self, i: usize, now: u64, period: Option<u64>) {
        let e = &mut self.entities[i];
        if let Some(p) = period {
            e.watchdog_ns = Some(p);
        }
        let Some(ns) = e.watchdog_ns.or(e.cfg.watchdog_ns) else {
            return;
        };
        let at = now + ns;
        e.watchdog_at = Some(at);
        self.schedule(at, Deadline::Watchdog(i));
    }

    /// A missed sd_notify watchdog: SIGABRT (so it leaves a core), SIGKILL after its
    /// `stop_timeout`, and the death is then handled like any other (its policy decides).
    fn watchdog_missed(&mut self, i: usize) {
        let now = mono_ns();
        let e = &mut self.entities[i];
        e.watchdog_at = None;
        let deadline = now + e.cfg.stop_timeout_ns;
        e.stop_deadline = Some(deadline);
        e.rec.state = EntityState::Stopping;
        e.wanted = Wanted::Up;
        // A successor finishing this stop starts it again, as an automatic restart.
        e.rec.restart_pending = true;
        e.rec.restart_automatic = true;
        let name = e.cfg.name.clone();
        self.schedule(deadline, Deadline::StopKill(i));
        self.publish(i);
        say!(self, "{name}: missed its watchdog; sending SIGABRT");
        self.record(i, None, "watchdog-missed", "abort", "SIGABRT");
        signal_entity(&self.entities[i], libc::SIGABRT);
    }

    /// Entity `i` is ready: start whatever was waiting for it.
    fn on_ready(&mut self, i: usize) {
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
        let waiting: Vec<usize> = (0..self.entities.len())
            .filter(|&j| {
                self.entities[j].rec.state == EntityState::Waiting
                    && self.entities[j].cfg.after.contains(&i)
            })
            .collect();
        for j in waiting {
            self.start_when_ready(j);
        }
    }

    /// Appends to the process log.
    fn record(
        &mut self,
        i: usize,
        gone: Option<(i32, LastExit)>,
        condition: &str,
        action: &str,
        result: &str,
    ) {
        let e = &self.entities[i];
        let rec = LogRecord {
            time_unix_ms: unix_ns() / 1_000_000,
            entity: e.cfg.name.clone(),
            pid: gone
                .map(|(p, _)| p)
                .or((e.rec.pid > 0).then_some(e.rec.pid)),
            exit: gone.and_then(|(_, x)| crate::status::ExitJson::from(x)),
            condition: condition.to_owned(),
            action: action.to_owned(),
            result: result.to_owned(),
        };
        self.plog.append(&rec);
    }

    /// A `restart` action: an automatic restart of entity `j`. One without a process goes
    /// through its recovery policy and back-off like any automatic restart after a death
    /// (a client that dies at once is held off, not restarted in a loop); a running one is
    /// stopped and started again.
    fn restart_asked(&mut self, j: usize, cond: &str) {
        if self.shutdown.is_some() {
            return;
        }
        match self.entities[j].rec.state {
            EntityState::Stopped | EntityState::Exited => {
                let why = lifecycle::Why::new(cond, "a condition asked");
                if self.recover(j, &why) {
                    self.fire_restarted(j);
                }
            }
            _ => self.begin_stop(j, Wanted::AutoRestart),
        }
    }

    /// Holds entity `j` (which has no process) off until `until`, then restarts it.
    fn hold_off(&mut self, j: usize, until: u64) {
        let why = lifecycle::Why::new("condition", "a condition asked").until(until);
        self.step(j, ham_core::lifecycle::Input::HoldOff, &why);
        let wait = ham_core::duration::format_ns(until.saturating_sub(mono_ns()));
        self.record(j, None, "condition", "hold-off", &format!("for {wait}"));
    }

    /// Fires the `restart` conditions of entity `i` if its restart got it running.
    fn fire_restarted(&mut self, i: usize) {
        if let Some(d) = self.deferred.find(i) {
            d.1 = true; // it fires once the deferred spawn has it running
            return;
        }
        let e = &self.entities[i];
        if e.rec.state == EntityState::Running {
            // Now, not the exit's time: the stamp of this restart is newer than the exit.
            let restarted = Event::Restart {
                restarts: e.rec.restart_stamps,
                now: mono_ns(),
            };
            // As QNX's CONDRESTART: about the new process (HAM_PID is its pid).
            self.fire(i, restarted, None);
        }
        self.entities[i].pruned_now = 0;
    }

    /// Runs `[device] restart_command`, unless an operator switched device restarts off or
    /// none is configured; says what happened.
    fn device_restart(&mut self, reason: &str, run: Option<u32>) -> String {
        let result = if self.writer.segment().header().flags() & FLAG_DEVICE_RESTART_OFF != 0 {
            "skipped: switched off (hamctl device-restart disable)".to_owned()
        } else if let Some((path, argv)) = self.cfg.device_restart.clone() {
            // What led here must be on disk before the device goes down.
            self.plog.sync();
            let env = [
                ("PATH".to_owned(), std::env::var("PATH").unwrap_or_default()),
                ("HAM_INSTANCE".to_owned(), self.cfg.instance.name.clone()),
                ("HAM_CONDITION".to_owned(), "device-restart".to_owned()),
                ("HAM_REASON".to_owned(), reason.to_owned()),
            ];
            let record = run.and_then(|id| self.release_record(id));
            let started = SpawnSpec::new(&path, &argv, &env).and_then(|mut spec| {
                spec.new_process_group();
                if let Some(slot) = record {
                    spec.released_in_run(slot);
                }
                spec.fork()
            });
            let started = started.map(|p| {
                if let Some(id) = run {
                    self.journal_exec(id, p.pid, 0);
                }
                p.release()
            });
            match started {
                Ok(Ok((pid, _pidfd))) => format!("running {} (pid {pid})", path.display()),
                Ok(Err((e, _))) | Err(e) => format!("failed: cannot run {}: {e}", path.display()),
            }
        } else {
            "skipped: no [device] restart_command configured".to_owned()
        };
        say!(self, "device restart: {reason}: {result}");
        result
    }

    /// Switches device restarts on or off; kept in the segment's header (so takeovers and
    /// warm starts keep it) and in `log_dir` (so a cold start after a reboot keeps it too).
    fn set_device_restart(&mut self, enabled: bool) -> Result<(), String> {
        let flags = self.writer.segment().header().flags();
        let flags = if enabled {
            flags & !FLAG_DEVICE_RESTART_OFF
        } else {
            flags | FLAG_DEVICE_RESTART_OFF
        };
        self.writer.set_flags(flags).map_err(|e| e.to_string())?;
        let marker = device_restart_marker(&self.cfg);
        let persisted = if enabled {
            match std::fs::remove_file(&marker) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        } else {
            std::fs::create_dir_all(&self.cfg.instance.log_dir)
                .and_then(|()| std::fs::write(&marker, "off\n"))
        };
        persisted
            .map_err(|e| format!("switched, but not persisted in {}: {e}", marker.display()))?;
        say!(
            self,
            "device restart {}",
            if enabled { "enabled" } else { "disabled" }
        );
        Ok(())
    }

    /// Sends the stop signal to a running entity (its process group, and the process itself
    /// if it left the group) and arms the SIGKILL deadline.
    fn begin_stop(&mut self, i: usize, wanted: Wanted) {
        let e = &mut self.entities[i];
        if !matches!(e.rec.state, EntityState::Running | EntityState::Stopping) {
            // Whatever it was waiting for (a retry, a hold-off) is off.
            e.retry_at = None;
            e.rec.policy.held_until = 0;
        }
        let input = match wanted {
            Wanted::Down => ham_core::lifecycle::Input::Stop,
            Wanted::Restart => ham_core::lifecycle::Input::Restart,
            Wanted::AutoRestart | Wanted::Up => ham_core::lifecycle::Input::AutoRestart,
        };
        let why = lifecycle::Why::new("restart", "restarted by ham");
        if self.step(i, input, &why) {
            self.fire_restarted(i);
        }
    }

    fn on_timer(&mut self) {
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
                    let _ = self.writer.set_liveness(now);
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
                        if self.step(i, ham_core::lifecycle::Input::HoldOffOver, &why) {
                            self.fire_restarted(i);
                        }
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
                    let e = &self.entities[i];
                    if e.rec.state == EntityState::Backoff && self.shutdown.is_none() {
                        self.spawn(i);
                    }
                }
            }
        }
    }

    /// Applies exit statuses that became readable through an adopted process's pidfd.
    fn try_patches(&mut self, now: u64) {
        self.drain_proc_connector();
        let mut keep = Vec::new();
        for mut p in std::mem::take(&mut self.patches) {
            if p.at > now {
                keep.push(p);
                continue;
            }
            let status = match self.exit_cache.remove(&p.pid) {
                Some(ws) => Ok(Some(ws)),
                None => sys::pidfd_exit_status(&p.pidfd),
            };
            match status {
                Ok(Some(ws)) => {
                    let e = &mut self.entities[p.entity];
                    if e.deaths == p.death {
                        let exit = decode_wait_status(ws);
                        e.rec.last_exit = exit;
                        self.publish(p.entity);
                        // The process log said "unknown" when the death was handled: it
                        // says what it was as soon as it is known.
                        let what = format!("pid {} {}", p.pid, describe(exit));
                        self.record(
                            p.entity,
                            Some((p.pid, exit)),
                            "exit-status",
                            "learned",
                            &what,
                        );
                        let name = self.entities[p.entity].cfg.name.clone();
                        log(&self.cfg.instance.name, format_args!("{name}: {what}"));
                    }
                }
                _ if p.tries < 14 => {
                    p.tries += 1;
                    p.at = now + (1_000_000u64 << p.tries);
                    self.schedule(p.at, Deadline::StatusPatch(p.entity));
                    keep.push(p);
                }
                _ => {} // nobody reaped it within ~30 s: it stays "unknown"
            }
        }
        self.patches = keep;
        self.release_proc_connector_if_idle();
    }

    /// Whether a heap entry is still the deadline its owner waits for (entries are never
    /// removed when a deadline moves; stale ones are skipped here).
    fn timer_is_current(&self, deadline: Deadline, at: u64) -> bool {
        match deadline {
            Deadline::Watchdog(i) => self.entities[i].watchdog_at == Some(at),
            Deadline::StopKill(i) => self.entities[i].stop_deadline == Some(at),
            Deadline::Retry(i) => self.entities[i].retry_at == Some(at),
            Deadline::Liveness => self.next_tick == at,
            Deadline::GuardianRetry => self.guardian_retry_at == Some(at),
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
    fn schedule(&mut self, at: u64, deadline: Deadline) {
        self.timers.push(Reverse((at, deadline)));
    }

    fn rearm_timer(&mut self) {
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

    fn on_signals(&mut self) {
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

    /// Reaps exited children. Entity processes and the Guardian go through their own exit
    /// paths (so the status lands where it belongs); anything else is an orphan that ham, as
    /// subreaper, inherited.
    fn reap_children(&mut self) {
        loop {
            let pid = match sys::peek_exited_child() {
                Ok(Some(pid)) => pid,
                Ok(None) => return,
                Err(e) => {
                    say!(self, "waitid: {e}");
                    return;
                }
            };
            if let Some(i) = self
                .entities
                .iter()
                .position(|e| e.pidfd.is_some() && !e.adopted && e.rec.pid == pid)
            {
                self.on_pidfd(i);
            } else if self.guardian.as_ref().is_some_and(|g| g.pid == pid) {
                self.on_guardian_exit();
            } else if let Some(&id) = self.exec_pids.get(&pid) {
                self.on_action_exit(id);
            } else if let Some(p) = Pid::from_raw(pid) {
                let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG);
            }
        }
    }

    fn ensure_proc_connector(&mut self) {
        if self.proc_conn.is_some() {
            return;
        }
        match ProcConnector::open() {
            Ok(pc) => {
                let _ = epoll::add(
                    &self.epoll,
                    &pc,
                    Token::ProcConn.data(),
                    epoll::EventFlags::IN,
                );
                self.proc_conn = Some(pc);
            }
            Err(e) => say!(
                self,
                "proc connector unavailable ({e}); exit statuses of adopted processes come from their pidfds"
            ),
        }
    }

    fn release_proc_connector_if_idle(&mut self) {
        if self.proc_conn.is_some()
            && self.patches.is_empty()
            && !self.entities.iter().any(|e| e.adopted)
        {
            self.proc_conn = None;
            self.exit_cache.clear();
        }
    }

    fn drain_proc_connector(&mut self) {
        let Some(pc) = &self.proc_conn else { return };
        let adopted: HashSet<i32> = self
            .entities
            .iter()
            .filter(|e| e.adopted)
            .map(|e| e.rec.pid)
            .chain(self.patches.iter().map(|p| p.pid))
            .collect();
        pc.drain(|pid| adopted.contains(&pid), &mut self.exit_cache);
    }

    // -- control socket --------------------------------------------------------------------

    fn handle(&mut self, req: Request, stream: UnixStream, peer: Peer) {
        if !matches!(req, Request::Ping) {
            failpoint::hit("control:request");
        }
        verbose(
            &self.cfg.instance.name,
            format_args!("request from pid {} (uid {}): {req:?}", peer.pid, peer.uid),
        );
        if self.shutdown.is_some() && !matches!(req, Request::Ping | Request::Shutdown) {
            reply(stream, &Response::err("ham is shutting down"));
            return;
        }
        // Who may ask what: one rule (`authz::may`). A process may define conditions and
        // actions on the entity it is; what they may hold (nothing that runs a command,
        // signals or acts on another entity: that would run with ham's privileges) is
        // checked on the parsed result, in `may_add`.
        let grant = {
            let process_of = |name: &str| self.by_name.get(name).map(|&k| self.entities[k].rec.pid);
            let caller = authz::Caller {
                pid: peer.pid,
                uid: peer.uid,
                ham_uid: self.my_uid,
                process_of: &process_of,
                parent_of: &procfs::parent,
            };
            authz::may(&caller, &req)
        };
        let own_entity = match grant {
            Ok(authz::Grant::Entity(name)) => Some(name),
            Ok(_) => None,
            Err((errno, why)) => {
                say!(
                    self,
                    "refused a request from uid {} (pid {})",
                    peer.uid,
                    peer.pid
                );
                reply(stream, &Response::errno(errno, why));
                return;
            }
        };
        let entity = match &req {
            Request::Start { entity }
            | Request::Stop { entity }
            | Request::Restart { entity }
            | Request::Attach { entity, .. }
            | Request::Detach { entity }
            | Request::Ready { entity }
            | Request::Raise { entity, .. } => match self.by_name.get(entity) {
                Some(&i) => Some(i),
                None => {
                    reply(
                        stream,
                        &Response::errno(libc::ENOENT, format!("no entity named `{entity}`")),
                    );
                    return;
                }
            },
            _ => None,
        };
        match (req, entity) {
            (Request::Ping, _) => reply(stream, &Response::ok("pong")),
            (Request::Hello, _) => {
                let key = self.clients.as_ref().map(|c| c.key);
                match key {
                    Some(key) => {
                        let mut r = Response::ok(format!("hello pid {}", peer.pid));
                        r.token = Some(ham_core::client::client_token(
                            key,
                            peer.pid as u32,
                            peer.uid,
                        ));
                        r.peer = Some((peer.pid, peer.uid));
                        reply(stream, &r);
                    }
                    None => reply(
                        stream,
                        &Response::err("this ham has no client segment (see its log)"),
                    ),
                }
            }
            (
                Request::Attach {
                    pid,
                    period_ns,
                    missed_low,
                    missed_high,
                    ..
                },
                Some(i),
            ) => {
                let spec = ham_core::layout::HeartbeatSpec {
                    period_ns,
                    missed_low,
                    missed_high,
                };
                let (r, page) = self.attach(i, peer, pid, spec);
                reply_with_fd(stream, &r, page.as_ref());
            }
            (Request::Detach { .. }, Some(i)) => {
                let r = self.detach(i, peer);
                reply(stream, &r);
            }
            (
                Request::Lookup {
                    entity,
                    condition,
                    action,
                },
                _,
            ) => {
                let found = match (condition, action) {
                    (None, _) => self
                        .by_name
                        .contains_key(&entity)
                        .then_some(())
                        .ok_or(format!("no entity `{entity}`")),
                    (Some(c), a) => self
                        .condition_index(&entity, &c)
                        .map_err(|(_, m)| m)
                        .and_then(|(i, k)| match a {
                            None => Ok(()),
                            Some(a) => self.entities[i].cfg.conditions[k]
                                .actions
                                .iter()
                                .any(|x| x.name.as_deref() == Some(a.as_str()) && !x.removed)
                                .then_some(())
                                .ok_or(format!("no action `{a}`")),
                        }),
                };
                match found {
                    Ok(()) => reply(stream, &Response::ok("found")),
                    Err(m) => reply(stream, &Response::errno(libc::ENOENT, m)),
                }
            }
            (Request::Verbose { op, value }, _) => {
                use ham_core::protocol::VerboseOp;
                use std::sync::atomic::Ordering::Relaxed;
                let now = VERBOSITY.load(Relaxed);
                let next = match op {
                    VerboseOp::Get => now,
                    VerboseOp::Set => value.max(0) as u32,
                    VerboseOp::Incr => now.saturating_add(value.max(1) as u32),
                    VerboseOp::Decr => now.saturating_sub(value.max(1) as u32),
                };
                if next != now {
                    VERBOSITY.store(next, Relaxed);
                    let _ = self.writer.set_verbosity(next);
                }
                let mut r = Response::ok(format!("verbosity {next}"));
                r.flags = Some(next);
                reply(stream, &r);
            }
            (Request::Define { change }, _) => {
                let r = self.define(change, own_entity.as_deref());
                reply(stream, &r);
            }
            (Request::Subscribe { topic, signal }, _) => {
                self.subscribe(topic, signal, peer, stream)
            }
            (Request::Ready { .. }, Some(i)) => {
                let e = &self.entities[i];
                let name = e.cfg.name.clone();
                // The process itself, a helper it runs (`ham-client ready` from a script),
                // root or ham's user.
                let caller = authz::Caller {
                    pid: peer.pid,
                    uid: peer.uid,
                    ham_uid: self.my_uid,
                    process_of: &|_| Some(e.rec.pid),
                    parent_of: &procfs::parent,
                };
                if !(caller.privileged() || caller.is_process_of(&name)) {
                    reply(
                        stream,
                        &Response::err(format!(
                            "permission denied: pid {} is not `{name}`",
                            peer.pid
                        )),
                    );
                } else if e.rec.state != EntityState::Running {
                    reply(stream, &Response::err(format!("`{name}` is not running")));
                } else {
                    if !e.ready {
                        say!(self, "{name}: ready (SDK)");
                        self.on_ready(i);
                    }
                    reply(stream, &Response::ok(format!("`{name}` is ready")));
                }
            }
            (
                Request::Raise {
                    class,
                    severity,
                    value,
                    ..
                },
                Some(i),
            ) => {
                let n = self.raise(i, class, (severity, value, 0), 0);
                reply(
                    stream,
                    &Response::ok(format!("raised; {n} condition(s) matched")),
                );
            }
            (Request::Shutdown, _) => self.begin_shutdown(Some(stream)),
            (Request::DeviceRestart { enabled }, _) => match self.set_device_restart(enabled) {
                Ok(()) => reply(
                    stream,
                    &Response::ok(format!(
                        "device restart {}",
                        if enabled { "enabled" } else { "disabled" }
                    )),
                ),
                Err(e) => reply(stream, &Response::err(e)),
            },
            (Request::Stop { .. }, Some(i)) => {
                self.record(i, None, "operator", "stop", "asked");
                self.entities[i].waiters.push((stream, WaitFor::Down));
                self.begin_stop(i, Wanted::Down);
                self.answer_waiters(i);
            }
            (Request::Start { .. }, Some(i)) => {
                let e = &mut self.entities[i];
                e.waiters.push((stream, WaitFor::Up));
                if matches!(
                    e.rec.state,
                    EntityState::Stopped
                        | EntityState::Exited
                        | EntityState::Backoff
                        | EntityState::HeldOff
                ) {
                    // An operator start begins the policy's count afresh.
                    e.rec.policy = engine::decide_operator_start(&e.rec.policy);
                    self.record(i, None, "operator", "start", "asked");
                }
                let why = lifecycle::Why::new("operator", "started as asked");
                self.step(i, ham_core::lifecycle::Input::Start, &why);
            }
            (Request::Restart { .. }, Some(i)) => {
                self.record(i, None, "operator", "restart", "asked");
                self.entities[i].waiters.push((stream, WaitFor::Up));
                self.begin_stop(i, Wanted::Restart);
            }
            (_, None) => reply(stream, &Response::err("request needs an entity")),
        }
    }

    /// Answers the requests waiting on entity `i` whose condition now holds.
    fn answer_waiters(&mut self, i: usize) {
        let e = &mut self.entities[i];
        if e.waiters.is_empty() {
            return;
        }
        let state = e.rec.state;
        let name = e.cfg.name.clone();
        let pid = e.rec.pid;
        let spawn_error = e.last_spawn_error.clone();
        let wanted = e.wanted;
        let mut keep = Vec::new();
        for (stream, want) in e.waiters.drain(..) {
            let answer = match (want, state) {
                (WaitFor::Down, EntityState::Stopped | EntityState::Exited) => {
                    Some(Response::ok(format!("{name} stopped")))
                }
                (WaitFor::Down, EntityState::Running | EntityState::Starting)
                    if wanted != Wanted::Down =>
                {
                    Some(Response::err(format!(
                        "{name} was started again before it stopped"
                    )))
                }
                (WaitFor::Up, EntityState::Running) => {
                    Some(Response::ok(format!("{name} running as pid {pid}")))
                }
                (WaitFor::Up, EntityState::Backoff) => Some(Response::err(format!(
                    "{name}: {}; ham keeps retrying",
                    spawn_error.as_deref().unwrap_or("cannot start")
                ))),
                (WaitFor::Up, EntityState::Stopped | EntityState::Exited)
                    if wanted == Wanted::Down =>
                {
                    Some(Response::err(format!(
                        "{name} was stopped before it started"
                    )))
                }
                _ => None,
            };
            match answer {
                Some(r) => reply(stream, &r),
                None => keep.push((stream, want)),
            }
        }
        e.waiters = keep;
    }

    fn begin_shutdown(&mut self, requester: Option<UnixStream>) {
        if let Some(waiters) = &mut self.shutdown {
            waiters.extend(requester);
            return;
        }
        // Written before anything is stopped, so a Guardian never mistakes this for a crash:
        // if this HAM dies now, the Guardian finishes the shutdown instead of resurrecting.
        if let Err(e) = self.writer.set_stop_intent() {
            say!(self, "cannot record the stop intent: {e}");
        }
        self.shutdown = Some(requester.into_iter().collect());
        self.stop_next_layer();
    }

    /// During a shutdown: stops every entity that no live entity starts `after`, in reverse
    /// order of the configuration; called again as entities exit, so dependents always stop
    /// before what they depend on.
    fn stop_next_layer(&mut self) {
        let alive = |e: &Entity| {
            matches!(
                e.rec.state,
                EntityState::Running | EntityState::Stopping | EntityState::Starting
            )
        };
        for i in (0..self.entities.len()).rev() {
            if matches!(
                self.entities[i].rec.state,
                EntityState::Stopping | EntityState::Stopped | EntityState::Exited
            ) {
                continue;
            }
            let needed = self.dependents[i].iter().any(|&d| alive(&self.entities[d]));
            if !needed {
                self.begin_stop(i, Wanted::Down);
            }
        }
    }

    /// Everything is stopped: stop the Guardian, remove what this instance made, answer.
    fn finish(&mut self) {
        if let Some(cg) = &self.cgroups {
            for left in cg.remove_all() {
                say!(self, "cgroup left behind: {left}");
            }
        }
        if let Some(g) = self.guardian.take() {
            let _ = rustix::process::pidfd_send_signal(&g.pidfd, rustix::process::Signal::TERM);
            if !wait_pidfd(&g.pidfd, 5_000) {
                let _ = rustix::process::pidfd_send_signal(&g.pidfd, rustix::process::Signal::KILL);
                wait_pidfd(&g.pidfd, 5_000);
            }
            let _ = rustix::process::waitid(
                WaitId::PidFd(g.pidfd.as_fd()),
                WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
            );
        }
        let inst = &self.cfg.instance;
        let _ = std::fs::remove_file(inst.socket_path());
        let _ = std::fs::remove_file(inst.notify_path());
        let _ = std::fs::remove_file(inst.pid_path());
        if let Err(e) = Segment::unlink(&inst.segment_name()) {
            say!(self, "{e}");
        }
        ham_core::client::ClientSegment::unlink(&ham_core::client::segment_name(&inst.name));
        for e in &self.entities {
            ham_core::beat::BeatMap::unlink(&ham_core::beat::page_name(&inst.name, e.slot));
        }
        for e in &mut self.entities {
            for (stream, _) in e.waiters.drain(..) {
                reply(stream, &Response::err("ham shut down"));
            }
        }
        say!(self, "all entities stopped; exiting");
        for stream in self.shutdown.take().unwrap_or_default() {
            reply(stream, &Response::ok("ham stopped"));
        }
    }
}

/// Starts a Guardian: this same binary in the Guardian role, told which process is its HAM,
/// and handed the config text, a socket for pidfds, and the control listener (so clients
/// queue through a takeover). If this process dies before releasing it, the child runs
/// anyway, finds its HAM gone, and takes over.
fn spawn_guardian_process<'a>(
    cfg: &Config,
    config_text: &str,
    sockets: impl Into<SocketRefs<'a>>,
) -> io::Result<GuardianProc> {
    let SocketRefs(listener, notify) = sockets.into();
    let (ours, theirs) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
        None,
    )?;
    let memfd = rustix::fs::memfd_create("ham-config", rustix::fs::MemfdFlags::CLOEXEC)?;
    rustix::io::write(&memfd, config_text.as_bytes())?;
    rustix::fs::seek(&memfd, rustix::fs::SeekFrom::Start(0))?;
    let listener = listener.as_fd().try_clone_to_owned()?;
    let notify = notify.as_fd().try_clone_to_owned()?;
    let me = std::process::id() as i32;
    let env: Vec<(String, String)> = std::env::vars().collect();
    let mut spec = SpawnSpec::new(
        Path::new("/proc/self/exe"),
        &[
            "ham".into(),
            "--guardian".into(),
            "--config".into(),
            cfg.path.display().to_string(),
            "--ham-pid".into(),
            me.to_string(),
            "--ham-start".into(),
            procfs::start_time(me).unwrap_or(0).to_string(),
        ],
        &env,
    )?;
    spec.fd(theirs, handoff::FD_SOCKET)
        .fd(memfd, handoff::FD_CONFIG)
        .fd(listener, handoff::FD_LISTENER)
        .fd(notify, handoff::FD_NOTIFY)
        .exec_if_orphaned();
    let pending = spec.fork()?;
    failpoint::hit("guardian:after-fork");
    let (pid, pidfd) = pending.release().map_err(|(e, pidfd)| {
        let _ = wait_pidfd(&pidfd, 1_000);
        e
    })?;
    Ok(GuardianProc {
        seen_at: mono_ns(),
        pid,
        start_time: procfs::start_time(pid).unwrap_or(0),
        pidfd,
        sock: ours,
    })
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

/// 128 random bits (the client-token key), or the reason there are none: a predictable
/// key would let any client pass for root.
fn random_key() -> io::Result<[u64; 2]> {
    let mut b = [0u8; 16];
    let mut got = 0;
    while got < b.len() {
        match rustix::rand::getrandom(&mut b[got..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let key = [
        u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
        u64::from_le_bytes(b[8..].try_into().expect("8 bytes")),
    ];
    if key == [0, 0] {
        return Err(io::Error::other("getrandom gave zeros"));
    }
    Ok(key)
}

/// The file whose presence says device restarts are switched off, across cold starts.
fn device_restart_marker(cfg: &Config) -> std::path::PathBuf {
    cfg.instance
        .log_dir
        .join(format!("{}.device-restart-disabled", cfg.instance.name))
}

/// The QNX-style condition an exit raises.
/// The command line of the restart action an entity has on itself, if one gives one.
fn own_restart_command(cfg: &EntityConfig) -> Option<(std::path::PathBuf, Vec<String>)> {
    fn find(list: &[Action]) -> Option<(std::path::PathBuf, Vec<String>)> {
        list.iter().find_map(|a| match &a.kind {
            ActionKind::Restart {
                entity: None,
                command: Some(c),
            } if !a.removed => Some(c.clone()),
            _ => find(&a.on_fail),
        })
    }
    cfg.conditions.iter().find_map(|c| find(&c.actions))
}

fn condition_of(exit: LastExit) -> &'static str {
    if exit.is_abnormal() {
        "abnormal-death"
    } else {
        "death"
    }
}

fn describe(exit: LastExit) -> String {
    match exit {
        LastExit::Code(c) => format!("exited with code {c}"),
        LastExit::Signal(s) => format!("killed by signal {s}"),
        LastExit::Unknown => "died (status unknown)".into(),
        LastExit::None => "ended".into(),
    }
}

fn decode_waitid(st: &rustix::process::WaitIdStatus) -> LastExit {
    if let Some(code) = st.exit_status() {
        LastExit::Code(code)
    } else if let Some(sig) = st.terminating_signal() {
        LastExit::Signal(sig)
    } else {
        LastExit::Unknown
    }
}

/// Decodes a `wait(2)` status word.
pub fn decode_wait_status(ws: i32) -> LastExit {
    let sig = ws & 0x7f;
    if sig == 0 {
        LastExit::Code((ws >> 8) & 0xff)
    } else if sig != 0x7f {
        LastExit::Signal(sig)
    } else {
        LastExit::Unknown
    }
}

/// A pidfd for `pid` if it is still the process that started at `start_time`: the passed
/// descriptor when it names it, otherwise `pidfd_open` *then* the start-time check (checking
/// first would race with pid reuse).
fn open_verified(pid: i32, start_time: u64, passed: Option<&Passed>) -> Option<OwnedFd> {
    // A handed-over pidfd was opened by the HAM on this very process (pid + start time
    // recorded with it), and a pidfd never refers to another process: only liveness is left
    // to check.
    let (pidfd, known) = match passed {
        Some(p) if p.pid == pid && p.start_time == start_time => (p.pidfd.try_clone().ok()?, true),
        _ => (
            rustix::process::pidfd_open(Pid::from_raw(pid)?, PidfdFlags::empty()).ok()?,
            false,
        ),
    };
    // Alive and not a zombie (a zombie's pidfd is already readable).
    let exited = rustix::event::poll(
        &mut [rustix::event::PollFd::new(
            &pidfd,
            rustix::event::PollFlags::IN,
        )],
        Some(&Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        }),
    )
    .map_or(true, |n| n > 0);
    (!exited && (known || procfs::start_time(pid) == Some(start_time))).then_some(pidfd)
}

/// Waits up to `ms` for a pidfd to report its process's exit.
fn wait_pidfd(pidfd: &OwnedFd, ms: u64) -> bool {
    let ts = Timespec {
        tv_sec: (ms / 1000) as i64,
        tv_nsec: ((ms % 1000) * 1_000_000) as i64,
    };
    rustix::event::poll(
        &mut [rustix::event::PollFd::new(
            pidfd,
            rustix::event::PollFlags::IN,
        )],
        Some(&ts),
    )
    .is_ok_and(|n| n > 0)
}

/// Stops the processes a segment records (it is being replaced): SIGTERM to each one still
/// verified by pid + start time.
fn stop_recorded_processes(instance: &str, seg: &Segment) {
    for (_, rec) in seg.records() {
        if let Ok(rec) = rec {
            if rec.pid > 0 && procfs::is_alive(rec.pid, rec.start_time) {
                log(
                    instance,
                    format_args!("{}: stopping pid {}", rec.name, rec.pid),
                );
                signal_recorded(&rec, libc::SIGTERM);
            }
        }
    }
}

/// Signals a process named only by a record, after opening a pidfd and checking its start
/// time, so a reused pid is never signalled.
fn signal_recorded(rec: &EntityRecord, sig: i32) {
    if let Some(fd) = open_verified(rec.pid, rec.start_time, None) {
        if let Some(s) = rustix::process::Signal::from_named_raw(sig) {
            let _ = rustix::process::pidfd_send_signal(&fd, s);
        }
    }
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

/// Borrowed sockets to hand to a Guardian.
struct SocketRefs<'a>(&'a UnixListener, &'a std::os::unix::net::UnixDatagram);

impl<'a> From<&'a Sockets> for SocketRefs<'a> {
    fn from(s: &'a Sockets) -> Self {
        Self(&s.listener, &s.notify)
    }
}

impl<'a> From<(&'a UnixListener, &'a std::os::unix::net::UnixDatagram)> for SocketRefs<'a> {
    fn from((l, n): (&'a UnixListener, &'a std::os::unix::net::UnixDatagram)) -> Self {
        Self(l, n)
    }
}

/// Binds the sd_notify socket (mode 0666 so entities running as other users can notify;
/// senders are identified by their credentials, not by the path).
fn bind_notify(path: &Path) -> Result<std::os::unix::net::UnixDatagram, DaemonError> {
    if path.exists() {
        std::fs::remove_file(path).map_err(io_ctx(format!("removing stale {}", path.display())))?;
    }
    let sock = std::os::unix::net::UnixDatagram::bind(path)
        .map_err(io_ctx(format!("binding {}", path.display())))?;
    rustix::net::sockopt::set_socket_passcred(&sock, true).map_err(io_ctx("SO_PASSCRED"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(io_ctx(format!("chmod {}", path.display())))?;
    Ok(sock)
}

fn bind_socket(path: &Path, client_gid: Option<u32>) -> Result<UnixListener, DaemonError> {
    // Only reached once no live HAM owns this instance, so an existing socket is stale.
    if path.exists() {
        std::fs::remove_file(path).map_err(io_ctx(format!("removing stale {}", path.display())))?;
    }
    let listener =
        UnixListener::bind(path).map_err(io_ctx(format!("binding {}", path.display())))?;
    // 0660: ham's user and the client group may connect; each request is then checked
    // against the peer's credentials (operator requests need root or ham's user).
    if let Some(gid) = client_gid {
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(io_ctx(format!("chown {}", path.display())))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(io_ctx(format!("chmod {}", path.display())))?;
    listener
        .set_nonblocking(true)
        .map_err(io_ctx("socket O_NONBLOCK"))?;
    Ok(listener)
}

/// Signals an entity's process group, and the process itself if it has left the group.
/// Only called while the process is unreaped (we hold its pidfd), so its pid and process
/// group id cannot have been reused.
fn signal_entity(e: &Entity, sig: i32) {
    let Some(pidfd) = &e.pidfd else { return };
    let Ok(signal) = Signal::try_from(sig) else {
        return;
    };
    let pid = nix::unistd::Pid::from_raw(e.rec.pid);
    let _ = nix::sys::signal::killpg(pid, signal);
    if nix::unistd::getpgid(Some(pid)).is_ok_and(|g| g != pid) {
        if let Some(s) = rustix::process::Signal::from_named_raw(sig) {
            let _ = rustix::process::pidfd_send_signal(pidfd, s);
        }
    }
}

/// An entity's environment: ham's own (without its HAM_* and failpoint variables), the
/// entity's `env`, and the variables that name its instance. Computed once per entity.
fn entity_env(ec: &EntityConfig, cfg: &Config) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| !failpoint::ENV.contains(&k.as_str()) && !ec.env.contains_key(k))
        .filter(|(k, _)| !k.starts_with("HAM_"))
        // ham's own sd_notify variables (if a service manager started it) are not its
        // entities'.
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "NOTIFY_SOCKET" | "WATCHDOG_USEC" | "WATCHDOG_PID"
            )
        })
        .collect();
    env.extend(ec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.push(("HAM_INSTANCE".into(), cfg.instance.name.clone()));
    env.push((
        "HAM_RUN_DIR".into(),
        cfg.instance.run_dir.display().to_string(),
    ));
    env.push(("HAM_CONFIG".into(), cfg.path.display().to_string()));
    env.push(("HAM_ENTITY".into(), ec.name.clone()));
    if ec.notify {
        env.push((
            "NOTIFY_SOCKET".into(),
            cfg.instance.notify_path().display().to_string(),
        ));
        if let Some(ns) = ec.watchdog_ns {
            env.push(("WATCHDOG_USEC".into(), (ns / 1000).to_string()));
        }
    }
    env
}

/// What an entity's child gets: its own process group, stdin from /dev/null, output as
/// configured, and `env` (see [`entity_env`]).
fn build_spec(ec: &EntityConfig, env: &[(String, String)]) -> io::Result<SpawnSpec> {
    let mut spec = SpawnSpec::new(&ec.exec_path, &ec.argv, env)?;
    spec.new_process_group();
    spec.user(ec.uid, ec.gid);
    if let Some(dir) = &ec.cwd {
        spec.cwd(dir)?;
    }
    if ec.notify && ec.watchdog_ns.is_some() {
        // As systemd: the watchdog is the main process's, not its children's.
        spec.env_own_pid("WATCHDOG_PID");
    }
    let devnull = OpenOptions::new().read(true).open("/dev/null")?;
    spec.fd(devnull.into(), 0);
    if let Output::File(path) = &ec.output {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
        spec.fd(f.try_clone()?.into(), 1);
        spec.fd(f.into(), 2);
    }
    Ok(spec)
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
