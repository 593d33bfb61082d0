//! The HAM: one epoll loop over a pidfd per entity, a signalfd, one timerfd for every
//! deadline, and the control socket. Nothing polls: an idle HAM sleeps in `epoll_wait`.
//!
//! Each entity is a small state machine (see `EntityState`); every transition is published
//! to the state segment before or after the side effect it describes, as documented in
//! `docs/ARCHITECTURE.md`. What to do after an exit is decided by `ham_core::policy`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use ham_core::layout::FLAG_STOP_INTENT;
use ham_core::policy::{self, AfterExit, Wanted};
use ham_core::segment::{Access, Segment, SegmentError, SegmentWriter, segment_size};
use ham_core::{EntityRecord, EntityState, LastExit};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use rustix::event::epoll;
use rustix::process::{Pid, PidfdFlags, WaitId, WaitIdOptions};
use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec};

use crate::config::{Config, EntityConfig, Output};
use crate::control::{MAX_REQUEST, Request, Response};
use crate::{mono_ns, procfs, unix_ns};

const TOK_SIGNAL: u64 = 1;
const TOK_TIMER: u64 = 2;
const TOK_LISTEN: u64 = 3;
const TOK_CONN: u64 = 1 << 32;
const TOK_PIDFD: u64 = 2 << 32;
const TOK_KIND_MASK: u64 = !0xffff_ffff;

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("instance `{name}` is already running (ham pid {pid})")]
    AlreadyRunning { name: String, pid: i32 },
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
    wanted: Wanted,
    stop_deadline: Option<u64>,
    retry_at: Option<u64>,
    spawn_failures: u32,
    last_spawn_error: Option<String>,
    waiters: Vec<(UnixStream, WaitFor)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    StopKill,
    Retry,
}

struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
}

/// The HAM role.
pub struct Daemon {
    cfg: Config,
    writer: SegmentWriter,
    epoll: OwnedFd,
    signals: SignalFd,
    timerfd: OwnedFd,
    armed_at: Option<u64>,
    listener: UnixListener,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    entities: Vec<Entity>,
    by_name: HashMap<String, usize>,
    timers: BinaryHeap<Reverse<(u64, TimerKind, usize)>>,
    shutdown: Option<Vec<UnixStream>>,
    my_uid: u32,
}

fn log(instance: &str, msg: std::fmt::Arguments) {
    eprintln!("ham[{instance}]: {msg}");
}

macro_rules! say {
    ($self:expr, $($arg:tt)*) => {
        log(&$self.cfg.instance.name, format_args!($($arg)*))
    };
}

impl Daemon {
    /// Sets up the instance: refuses if one is already running, creates the segment, the
    /// control socket and the pid file, and blocks the signals the loop reads.
    pub fn new(cfg: Config) -> Result<Self, DaemonError> {
        let inst = cfg.instance.clone();
        std::fs::create_dir_all(&inst.run_dir).map_err(io_ctx(format!(
            "creating run_dir {}",
            inst.run_dir.display()
        )))?;

        // An existing segment: refuse if its HAM lives, otherwise it is stale.
        let seg_name = inst.segment_name();
        match Segment::open(&seg_name, Access::ReadOnly) {
            Ok(old) => {
                let h = old.header().snapshot();
                if procfs::is_alive(h.ham_pid, h.ham_start_time) {
                    return Err(DaemonError::AlreadyRunning {
                        name: inst.name.clone(),
                        pid: h.ham_pid,
                    });
                }
                log(
                    &inst.name,
                    format_args!(
                        "cold start: removing the stale segment {seg_name} of ham pid {} (not running)",
                        h.ham_pid
                    ),
                );
                Segment::unlink(&seg_name)?;
            }
            Err(SegmentError::NotFound { .. }) => {
                log(
                    &inst.name,
                    format_args!("cold start: no segment {seg_name}"),
                );
            }
            Err(e) => {
                log(
                    &inst.name,
                    format_args!(
                        "cold start: the segment {seg_name} is invalid ({e}); replacing it"
                    ),
                );
                Segment::unlink(&seg_name)?;
            }
        }

        // Signals are blocked before anything else exists, so none is lost and none kills us.
        let mut mask = SigSet::empty();
        for s in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGCHLD,
            Signal::SIGHUP,
        ] {
            mask.add(s);
        }
        mask.thread_block().map_err(io_ctx("blocking signals"))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(io_ctx("signalfd"))?;

        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .map_err(io_ctx("PR_SET_CHILD_SUBREAPER"))?;

        let capacity = cfg.max_entities.max(cfg.entities.len() as u32);
        let seg = Segment::create(&seg_name, capacity, unix_ns())?;
        let me = std::process::id() as i32;
        let writer = SegmentWriter::take(seg, me, procfs::start_time(me).unwrap_or(0))?;

        let listener = bind_socket(&inst.socket_path())?;
        std::fs::write(inst.pid_path(), format!("{me}\n"))
            .map_err(io_ctx(format!("writing {}", inst.pid_path().display())))?;

        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(io_ctx("epoll_create"))?;
        let timerfd = rustix::time::timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
        )
        .map_err(io_ctx("timerfd_create"))?;
        let add = |fd: std::os::fd::BorrowedFd, tok: u64| {
            epoll::add(
                &epoll,
                fd,
                epoll::EventData::new_u64(tok),
                epoll::EventFlags::IN,
            )
            .map_err(io_ctx("epoll_ctl"))
        };
        add(signals.as_fd(), TOK_SIGNAL)?;
        add(timerfd.as_fd(), TOK_TIMER)?;
        add(listener.as_fd(), TOK_LISTEN)?;

        let entities: Vec<Entity> = cfg
            .entities
            .iter()
            .enumerate()
            .map(|(i, ec)| Entity {
                cfg: ec.clone(),
                slot: i as u32,
                rec: EntityRecord::new(&ec.name),
                pidfd: None,
                wanted: Wanted::Up,
                stop_deadline: None,
                retry_at: None,
                spawn_failures: 0,
                last_spawn_error: None,
                waiters: Vec::new(),
            })
            .collect();
        let by_name = entities
            .iter()
            .enumerate()
            .map(|(i, e)| (e.cfg.name.clone(), i))
            .collect();
        log(
            &inst.name,
            format_args!(
                "pid {me}, {} entities, segment {seg_name} ({} KiB), socket {}",
                entities.len(),
                segment_size(capacity) / 1024,
                inst.socket_path().display()
            ),
        );
        Ok(Self {
            my_uid: rustix::process::geteuid().as_raw(),
            cfg,
            writer,
            epoll,
            signals,
            timerfd,
            armed_at: None,
            listener,
            conns: HashMap::new(),
            next_conn: 0,
            entities,
            by_name,
            timers: BinaryHeap::new(),
            shutdown: None,
        })
    }

    /// Starts every entity and runs until a shutdown completes. Returns the exit code.
    pub fn run(mut self) -> Result<i32, DaemonError> {
        for i in 0..self.entities.len() {
            self.publish(i);
        }
        for i in 0..self.entities.len() {
            self.entities[i].rec.starts += 1;
            self.spawn(i);
        }
        let mut events = Vec::with_capacity(64);
        loop {
            events.clear();
            match epoll::wait(&self.epoll, spare(&mut events), None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(io_ctx("epoll_wait")(e)),
            }
            let _ = self.writer.set_liveness(mono_ns());
            for ev in events.drain(..) {
                let tok = ev.data.u64();
                match tok & TOK_KIND_MASK {
                    0 => match tok {
                        TOK_SIGNAL => self.on_signals(),
                        TOK_TIMER => self.on_timer(),
                        TOK_LISTEN => self.on_accept(),
                        _ => {}
                    },
                    TOK_CONN => self.on_conn(tok & !TOK_KIND_MASK),
                    TOK_PIDFD => self.on_pidfd((tok & !TOK_KIND_MASK) as usize),
                    _ => {}
                }
            }
            if self.shutdown.is_some() && self.entities.iter().all(|e| e.pidfd.is_none()) {
                self.finish();
                return Ok(crate::exit::OK);
            }
            self.rearm_timer();
        }
    }

    // -- segment ---------------------------------------------------------------------------

    fn publish(&mut self, i: usize) {
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
        self.answer_waiters(i);
    }

    // -- processes -------------------------------------------------------------------------

    fn spawn(&mut self, i: usize) {
        let now = mono_ns();
        {
            let e = &mut self.entities[i];
            e.stop_deadline = None;
            e.retry_at = None;
            e.wanted = Wanted::Up;
            e.rec.state = EntityState::Starting;
            e.rec.pid = 0;
            e.rec.start_time = 0;
        }
        self.publish(i);
        let e = &mut self.entities[i];
        match spawn_process(&e.cfg, &self.cfg) {
            Ok((pid, pidfd)) => {
                let tok = TOK_PIDFD | i as u64;
                if let Err(err) = epoll::add(
                    &self.epoll,
                    &pidfd,
                    epoll::EventData::new_u64(tok),
                    epoll::EventFlags::IN,
                ) {
                    // Without a watch we would never see it die: kill it and retry later.
                    log(
                        &self.cfg.instance.name,
                        format_args!("{}: cannot watch pid {pid}: {err}", e.cfg.name),
                    );
                    let _ =
                        rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
                }
                e.rec.pid = pid;
                e.rec.start_time = procfs::start_time(pid).unwrap_or(0);
                e.rec.state = EntityState::Running;
                e.rec.started_mono_ns = now;
                e.rec.started_unix_ns = unix_ns();
                e.pidfd = Some(pidfd);
                e.spawn_failures = 0;
                e.last_spawn_error = None;
                self.publish(i);
            }
            Err(err) => {
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
                self.timers
                    .push(Reverse((now + delay, TimerKind::Retry, i)));
                self.publish(i);
            }
        }
    }

    /// The entity's pidfd is readable: its process has exited.
    fn on_pidfd(&mut self, i: usize) {
        let Some(fd) = self.entities.get(i).and_then(|e| e.pidfd.as_ref()) else {
            return;
        };
        let status = match rustix::process::waitid(
            WaitId::PidFd(fd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        ) {
            // A stale event from this batch for a process already handled: still running.
            Ok(None) => return,
            Ok(Some(st)) => {
                if let Some(code) = st.exit_status() {
                    LastExit::Code(code)
                } else if let Some(sig) = st.terminating_signal() {
                    LastExit::Signal(sig)
                } else {
                    LastExit::Unknown
                }
            }
            // Not our child (cannot happen before a takeover): no status source here.
            Err(_) => LastExit::Unknown,
        };
        self.on_exit(i, status);
    }

    fn on_exit(&mut self, i: usize, exit: LastExit) {
        let now = mono_ns();
        let shutting_down = self.shutdown.is_some();
        let e = &mut self.entities[i];
        let old_pid = e.rec.pid;
        e.pidfd = None; // closing it also removes it from the epoll set
        e.stop_deadline = None;
        e.rec.pid = 0;
        e.rec.start_time = 0;
        e.rec.last_exit = exit;
        e.rec.exited_mono_ns = now;
        e.rec.exited_unix_ns = unix_ns();
        let wanted = if shutting_down {
            Wanted::Down
        } else {
            e.wanted
        };
        let decision = policy::after_exit(e.cfg.restart, wanted, exit);
        let how = match exit {
            LastExit::Code(c) => format!("exited with code {c}"),
            LastExit::Signal(s) => format!("killed by signal {s}"),
            LastExit::Unknown => "died (status unknown)".into(),
            LastExit::None => "ended".into(),
        };
        match decision {
            AfterExit::Restart => {
                e.rec.restarts += 1;
                say!(
                    self,
                    "{}: pid {old_pid} {how}; restarting (restart {})",
                    self.entities[i].cfg.name,
                    self.entities[i].rec.restarts
                );
                self.spawn(i);
            }
            AfterExit::OperatorStart => {
                e.rec.starts += 1;
                say!(
                    self,
                    "{}: pid {old_pid} {how}; starting again as asked",
                    self.entities[i].cfg.name
                );
                self.spawn(i);
            }
            AfterExit::Stopped => {
                e.rec.state = EntityState::Stopped;
                say!(
                    self,
                    "{}: pid {old_pid} {how}; stopped",
                    self.entities[i].cfg.name
                );
                self.publish(i);
            }
            AfterExit::Exited => {
                e.rec.state = EntityState::Exited;
                say!(
                    self,
                    "{}: pid {old_pid} {how}; not restarted (restart = {})",
                    self.entities[i].cfg.name,
                    self.entities[i].cfg.restart.as_str()
                );
                self.publish(i);
            }
        }
    }

    /// Sends the stop signal to a running entity (its process group, and the process itself
    /// if it left the group) and arms the SIGKILL deadline.
    fn begin_stop(&mut self, i: usize, wanted: Wanted) {
        let now = mono_ns();
        let e = &mut self.entities[i];
        e.wanted = wanted;
        match e.rec.state {
            EntityState::Running => {
                let sig = e.cfg.stop_signal;
                signal_entity(e, sig);
                let deadline = now + e.cfg.stop_timeout_ns;
                e.stop_deadline = Some(deadline);
                e.rec.state = EntityState::Stopping;
                self.timers
                    .push(Reverse((deadline, TimerKind::StopKill, i)));
                self.publish(i);
            }
            EntityState::Stopping => {}
            EntityState::Backoff | EntityState::Starting => {
                e.retry_at = None;
                if wanted == Wanted::Restart {
                    e.rec.starts += 1;
                    self.spawn(i);
                } else {
                    e.rec.state = EntityState::Stopped;
                    self.publish(i);
                }
            }
            EntityState::Stopped | EntityState::Exited => {
                if wanted == Wanted::Restart {
                    e.rec.starts += 1;
                    self.spawn(i);
                } else {
                    self.answer_waiters(i);
                }
            }
        }
    }

    fn on_timer(&mut self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.timerfd, &mut buf);
        self.armed_at = None;
        let now = mono_ns();
        while let Some(Reverse((at, kind, i))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let e = &mut self.entities[i];
            match kind {
                TimerKind::StopKill
                    if e.stop_deadline == Some(at) && e.rec.state == EntityState::Stopping =>
                {
                    say!(
                        self,
                        "{}: did not stop within {}; sending SIGKILL",
                        e.cfg.name,
                        ham_core::duration::format_ns(e.cfg.stop_timeout_ns)
                    );
                    let e = &mut self.entities[i];
                    e.stop_deadline = None;
                    signal_entity(e, libc::SIGKILL);
                }
                TimerKind::Retry
                    if e.retry_at == Some(at)
                        && e.rec.state == EntityState::Backoff
                        && self.shutdown.is_none() =>
                {
                    self.spawn(i);
                }
                _ => {}
            }
        }
    }

    fn rearm_timer(&mut self) {
        // Drop entries that no longer match their entity, so the timer never wakes us for
        // nothing.
        while let Some(Reverse((at, kind, i))) = self.timers.peek().copied() {
            let e = &self.entities[i];
            let live = match kind {
                TimerKind::StopKill => e.stop_deadline == Some(at),
                TimerKind::Retry => e.retry_at == Some(at),
            };
            if live {
                break;
            }
            self.timers.pop();
        }
        let next = self.timers.peek().map(|Reverse((at, _, _))| *at);
        if next == self.armed_at {
            return;
        }
        let value = match next {
            Some(at) => Timespec {
                tv_sec: (at / 1_000_000_000) as i64,
                tv_nsec: (at % 1_000_000_000).max(1) as i64,
            },
            None => Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
        };
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
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

    /// Reaps exited children. Entity processes go through their own exit path (so the status
    /// lands in their record); anything else is an orphan that ham, as subreaper, inherited.
    fn reap_children(&mut self) {
        loop {
            let pid = match crate::sys::peek_exited_child() {
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
                .position(|e| e.pidfd.is_some() && e.rec.pid == pid)
            {
                self.on_pidfd(i);
            } else if let Some(p) = Pid::from_raw(pid) {
                let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG);
            }
        }
    }

    // -- control socket --------------------------------------------------------------------

    fn on_accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    say!(self, "accept: {e}");
                    return;
                }
            };
            match rustix::net::sockopt::socket_peercred(&stream) {
                Ok(cred) if cred.uid.is_root() || cred.uid.as_raw() == self.my_uid => {}
                Ok(cred) => {
                    let uid = cred.uid.as_raw();
                    say!(
                        self,
                        "refused a control connection from uid {uid} (pid {})",
                        cred.pid.as_raw_nonzero()
                    );
                    reply(
                        stream,
                        &Response::err(format!(
                            "permission denied: uid {uid} is neither root nor the owner of this ham (uid {})",
                            self.my_uid
                        )),
                    );
                    continue;
                }
                Err(e) => {
                    say!(self, "SO_PEERCRED: {e}");
                    continue;
                }
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let id = self.next_conn;
            self.next_conn += 1;
            if epoll::add(
                &self.epoll,
                &stream,
                epoll::EventData::new_u64(TOK_CONN | id),
                epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
            )
            .is_ok()
            {
                self.conns.insert(
                    id,
                    Conn {
                        stream,
                        buf: Vec::new(),
                    },
                );
            }
        }
    }

    fn on_conn(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let mut chunk = [0u8; 1024];
        let mut closed = false;
        loop {
            match conn.stream.read(&mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
            if conn.buf.len() > MAX_REQUEST {
                break;
            }
        }
        let line_end = conn.buf.iter().position(|&b| b == b'\n');
        if line_end.is_none() && !closed && conn.buf.len() <= MAX_REQUEST {
            return; // wait for the rest of the line
        }
        let conn = self.conns.remove(&id).expect("present above");
        let _ = epoll::delete(&self.epoll, &conn.stream);
        let _ = conn.stream.set_nonblocking(false);
        let _ = conn
            .stream
            .set_write_timeout(Some(std::time::Duration::from_secs(1)));
        let Some(end) = line_end else {
            if !conn.buf.is_empty() {
                reply(
                    conn.stream,
                    &Response::err(format!(
                        "request is not one line of at most {MAX_REQUEST} bytes"
                    )),
                );
            }
            return;
        };
        match serde_json::from_slice::<Request>(&conn.buf[..end]) {
            Ok(req) => self.handle(req, conn.stream),
            Err(e) => reply(conn.stream, &Response::err(format!("bad request: {e}"))),
        }
    }

    fn handle(&mut self, req: Request, stream: UnixStream) {
        if self.shutdown.is_some() && !matches!(req, Request::Ping | Request::Shutdown) {
            reply(stream, &Response::err("ham is shutting down"));
            return;
        }
        let entity = match &req {
            Request::Start { entity } | Request::Stop { entity } | Request::Restart { entity } => {
                match self.by_name.get(entity) {
                    Some(&i) => Some(i),
                    None => {
                        reply(
                            stream,
                            &Response::err(format!("no entity named `{entity}`")),
                        );
                        return;
                    }
                }
            }
            _ => None,
        };
        match (req, entity) {
            (Request::Ping, _) => reply(stream, &Response::ok("pong")),
            (Request::Shutdown, _) => self.begin_shutdown(Some(stream)),
            (Request::Stop { .. }, Some(i)) => {
                self.entities[i].waiters.push((stream, WaitFor::Down));
                self.begin_stop(i, Wanted::Down);
                self.answer_waiters(i);
            }
            (Request::Start { .. }, Some(i)) => {
                let e = &mut self.entities[i];
                e.waiters.push((stream, WaitFor::Up));
                match e.rec.state {
                    EntityState::Running => self.answer_waiters(i),
                    EntityState::Stopping => e.wanted = Wanted::Restart,
                    EntityState::Starting => {}
                    EntityState::Stopped | EntityState::Exited | EntityState::Backoff => {
                        e.rec.starts += 1;
                        self.spawn(i);
                    }
                }
            }
            (Request::Restart { .. }, Some(i)) => {
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
        // Written before anything is stopped, so a Guardian never mistakes this for a crash.
        if let Err(e) = self.writer.set_stop_intent() {
            say!(self, "cannot record the stop intent: {e}");
        }
        self.shutdown = Some(requester.into_iter().collect());
        for i in (0..self.entities.len()).rev() {
            self.begin_stop(i, Wanted::Down);
        }
    }

    /// Everything is stopped: remove what this instance made, answer, and return.
    fn finish(&mut self) {
        let inst = &self.cfg.instance;
        let _ = std::fs::remove_file(inst.socket_path());
        let _ = std::fs::remove_file(inst.pid_path());
        if let Err(e) = Segment::unlink(&inst.segment_name()) {
            say!(self, "{e}");
        }
        let _ = self.writer.set_flags(FLAG_STOP_INTENT);
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

/// The spare capacity of `v` as an epoll buffer.
fn spare(v: &mut Vec<epoll::Event>) -> rustix::buffer::SpareCapacity<'_, epoll::Event> {
    rustix::buffer::spare_capacity(v)
}

fn reply(mut stream: UnixStream, r: &Response) {
    let _ = stream.write_all(&r.to_line());
}

fn bind_socket(path: &Path) -> Result<UnixListener, DaemonError> {
    // Only reached once no live HAM owns this instance, so an existing socket is stale.
    if path.exists() {
        std::fs::remove_file(path).map_err(io_ctx(format!("removing stale {}", path.display())))?;
    }
    let listener =
        UnixListener::bind(path).map_err(io_ctx(format!("binding {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
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
    if e.pidfd.is_none() || e.rec.pid <= 0 {
        return;
    }
    let Ok(signal) = Signal::try_from(sig) else {
        return;
    };
    let pid = nix::unistd::Pid::from_raw(e.rec.pid);
    let _ = nix::sys::signal::killpg(pid, signal);
    if nix::unistd::getpgid(Some(pid)).is_ok_and(|g| g != pid) {
        let _ = nix::sys::signal::kill(pid, signal);
    }
}

/// Starts one entity's process: its own process group, stdin from /dev/null, output as
/// configured, an empty signal mask and SIGPIPE at its default, and the
/// variables that tell it which instance it belongs to. Returns its pid and a pidfd.
fn spawn_process(ec: &EntityConfig, cfg: &Config) -> io::Result<(i32, OwnedFd)> {
    let mut cmd = Command::new(&ec.exec_path);
    cmd.arg0(&ec.argv[0]).args(&ec.argv[1..]);
    cmd.envs(&ec.env);
    cmd.env("HAM_INSTANCE", &cfg.instance.name)
        .env("HAM_RUN_DIR", &cfg.instance.run_dir)
        .env("HAM_CONFIG", &cfg.path)
        .env("HAM_ENTITY", &ec.name);
    cmd.stdin(Stdio::null());
    cmd.process_group(0);
    crate::sys::reset_signals_in_child(&mut cmd);
    if let Some(dir) = &ec.cwd {
        cmd.current_dir(dir);
    }
    if let Some(gid) = ec.gid {
        cmd.gid(gid);
    }
    if let Some(uid) = ec.uid {
        cmd.uid(uid);
    }
    if let Output::File(path) = &ec.output {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
        cmd.stdout(f.try_clone()?);
        cmd.stderr(f);
    }
    let child = cmd.spawn()?;
    let pid = child.id() as i32;
    // The child is not reaped until we reap it, so this pidfd names exactly it.
    let pidfd = rustix::process::pidfd_open(
        Pid::from_raw(pid).expect("a spawned child has a positive pid"),
        PidfdFlags::empty(),
    )?;
    drop(child); // std's Child neither waits nor kills on drop
    Ok((pid, pidfd))
}
