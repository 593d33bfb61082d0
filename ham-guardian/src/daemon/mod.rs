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
mod conns;
mod exits;
mod guardian_link;
mod heartbeats;
mod journal;
mod lifecycle;
mod notify;
mod removal;
mod requests;
mod runs;
mod runtime;
mod shutdown;
mod spawn;
mod start;
mod subscribers;
mod takeover;
mod timers;
mod token;

use clients::{Clients, Peer, Subscriber};
use exits::{decode_wait_status, decode_waitid, describe};
use guardian_link::spawn_guardian_process;
use spawn::{entity_env, own_restart_command};
use start::device_restart_marker;
use takeover::{stop_recorded_processes, wait_pidfd};
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

impl Daemon {
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
            self.wrote(self.writer.set_liveness(mono_ns()));
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

    fn publish(&mut self, i: usize) {
        self.publish_record(i);
        self.answer_waiters(i);
    }

    /// Publishes entity `i`'s record without answering its waiters (a state that may not
    /// last: the release recorded before it is known to have worked).
    fn publish_record(&mut self, i: usize) {
        let e = &self.entities[i];
        let written = self.writer.publish(e.slot, &e.rec);
        if let Some(g) = self.wrote(written) {
            self.entities[i].rec.generation = g;
        }
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
