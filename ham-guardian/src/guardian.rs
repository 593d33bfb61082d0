//! The Guardian role: maps the state segment read-only, watches its HAM through a pidfd and
//! through the HAM's liveness word, keeps the pidfds the HAM hands it, and waits. When the
//! HAM dies — or stops turning its loop for `liveness_timeout`, in which case the Guardian
//! fences it first (SIGKILL through the pidfd, then waits for the exit) — it promotes
//! itself to HAM and carries on from the segment.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use ham_core::layout::{FLAG_ACCEPT_PAUSED, FLAG_STOP_INTENT};
use ham_core::segment::{Access, Segment, SegmentError};
use rustix::event::epoll;
use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec};

use crate::daemon::{Daemon, DaemonError, Found, PreRead, Sockets};
use crate::handoff::{self, Passed};
use crate::sys::readable;
use crate::{config, exit, mono_ns, procfs, sys};

const TOK_HAM: u64 = 1;
const TOK_SOCK: u64 = 2;
const TOK_SIGNAL: u64 = 3;
const TOK_TIMER: u64 = 4;
const TOK_LISTEN: u64 = 5;
/// The HAM's lock says it died (`sys::robust`).
const TOK_LOCK: u64 = 6;
/// Or'ed with a slot: that slot's entity pidfd.
const TOK_PIDFD: u64 = 1 << 40;

use crate::log::guardian as log;

/// The environment variable a HAM starts its Guardian with: `PID START CONFIG` (the HAM's
/// pid and start time, and the configuration's path).
pub const ENV: &str = "HAM_GUARDIAN";

/// The value of [`ENV`].
pub fn env_value(ham_pid: i32, ham_start: u64, config: &std::path::Path) -> String {
    format!("{ham_pid} {ham_start} {}", config.display())
}

/// Parses [`ENV`]'s value: the configuration's path, the HAM's pid and start time.
pub fn parse_env(v: &str) -> Option<(PathBuf, i32, u64)> {
    let mut it = v.splitn(3, ' ');
    let pid = it.next()?.parse().ok()?;
    let start = it.next()?.parse().ok()?;
    let path = it.next().filter(|p| !p.is_empty())?;
    Some((PathBuf::from(path), pid, start))
}

/// Runs the Guardian role for the HAM `ham_pid` (started at `ham_start`); returns the
/// process's exit code.
pub fn run(config_path: PathBuf, ham_pid: i32, ham_start: u64) -> i32 {
    match guard(config_path, ham_pid, ham_start) {
        Ok(code) => code,
        Err(e) => {
            crate::log::line(format_args!("ham guardian"), format_args!("{e}"));
            exit::UNAVAILABLE
        }
    }
}

fn io_err(what: &str) -> impl FnOnce(std::io::Error) -> DaemonError + '_ {
    move |source| DaemonError::Io {
        what: what.to_owned(),
        source,
    }
}

fn guard(config_path: PathBuf, ham_pid: i32, ham_start: u64) -> Result<i32, DaemonError> {
    if crate::failpoint::fails("guardian:start") {
        return Err(io_err("starting (failpoint guardian:start)")(
            std::io::Error::from_raw_os_error(libc::EMFILE),
        ));
    }
    let sock = sys::take_inherited(handoff::FD_SOCKET).map_err(io_err("handoff socket"))?;
    let memfd = sys::take_inherited(handoff::FD_CONFIG).map_err(io_err("config memfd"))?;
    let listener = sys::take_inherited(handoff::FD_LISTENER).map_err(io_err("control listener"))?;
    let notify = sys::take_inherited(handoff::FD_NOTIFY).map_err(io_err("notify socket"))?;
    let mut sockets = Sockets {
        listener: UnixListener::from(listener),
        notify: std::os::unix::net::UnixDatagram::from(notify),
        watchdog: None,
    };
    let mut text = String::new();
    std::fs::File::from(memfd)
        .read_to_string(&mut text)
        .map_err(io_err("reading the config memfd"))?;
    let cfg = config::parse_validated(&config_path, &text).map_err(|e| DaemonError::Io {
        what: "configuration handed over by the HAM".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let name = cfg.instance.name.clone();
    sys::set_title(&format!("ham: guardian {name}"));
    if cfg.watchdog.is_some() {
        sockets.watchdog = sys::take_inherited(handoff::FD_WATCHDOG).ok();
        if sockets.watchdog.is_none() {
            log(
                &name,
                format_args!(
                    "no watchdog descriptor was handed over: it is not fed after a takeover"
                ),
            );
        }
    }

    let signals = crate::daemon::signalfd().map_err(|e| io_err("signalfd")(e.into()))?;

    // A segment this Guardian cannot read (its header scribbled over) leaves the HAM watched
    // by its pidfd alone: were it to exit instead, its HAM would start another, as blind,
    // and nothing would take over once the HAM died.
    crate::failpoint::scribble_header(&cfg.instance.segment_name(), ham_pid);
    let mut seg = open_segment(&cfg, &name, ham_pid, false)?;
    // Our HAM is our parent. Open its pidfd first, then check that it is still our parent
    // and the process that started at `ham_start`: if it died before or meanwhile, we were
    // reparented and take over at once.
    let ham_pidfd = rustix::process::Pid::from_raw(ham_pid)
        .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok());
    let ham_pidfd = match ham_pidfd {
        Some(fd)
            if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) == Some(ham_pid)
                && procfs::start_time(ham_pid) == Some(ham_start) =>
        {
            fd
        }
        _ => {
            log(
                &name,
                format_args!("HAM pid {ham_pid} died before this guardian started"),
            );
            let flags = seg.as_ref().map_or(0, |s| s.header().flags());
            // What the HAM handed over before it went (pidfds, output pipes) is in the
            // socket, and takes over with us.
            let mut passed = HashMap::new();
            handoff::recv_all(&sock, &mut passed);
            let from = Some((ham_pid, false));
            return promote(
                cfg,
                text,
                sockets,
                passed,
                (flags, seg),
                (from, None),
                Box::new(sock),
                Found::default(),
            );
        }
    };

    let epoll =
        epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| io_err("epoll")(e.into()))?;
    let timerfd = rustix::time::timerfd_create(
        TimerfdClockId::Monotonic,
        TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
    )
    .map_err(|e| io_err("timerfd")(e.into()))?;
    if !crate::failpoint::fails("guardian:deaf-pidfd") {
        epoll::add(
            &epoll,
            &ham_pidfd,
            epoll::EventData::new_u64(TOK_HAM),
            epoll::EventFlags::IN,
        )
        .map_err(|e| io_err("epoll_ctl")(e.into()))?;
    }
    for (fd, tok, flags) in [
        (sock.as_fd(), TOK_SOCK, epoll::EventFlags::IN),
        (signals.as_fd(), TOK_SIGNAL, epoll::EventFlags::IN),
        (timerfd.as_fd(), TOK_TIMER, epoll::EventFlags::IN),
        // A connection waiting: seen once, then looked at again only at its check.
        (
            sockets.listener.as_fd(),
            TOK_LISTEN,
            epoll::EventFlags::IN | epoll::EventFlags::ONESHOT,
        ),
    ] {
        epoll::add(&epoll, fd, epoll::EventData::new_u64(tok), flags)
            .map_err(|e| io_err("epoll_ctl")(e.into()))?;
    }

    // The HAM's lock (`sys::robust`): its death told by the kernel as it begins, not once
    // the HAM is torn down.
    let lock_watch = seg
        .as_ref()
        .and_then(|_| watch_lock(&cfg, &name, ham_pid, &epoll));
    // The entities' cgroups, found now (the HAM's are this process's: it is our parent), so
    // that a takeover need not look for them while entities wait.
    let cgroups = crate::cgroup::Cgroups::open(&cfg.instance.cgroup, &name);
    let _ = procfs::own_start_time();
    // The start of the Guardian a takeover would need: made now, forked then.
    let successor = crate::daemon::prepare_successor(&cfg, &text, &sockets);
    sys::warm_up_spawns();
    sys::trim_heap();
    sys::unmap_startup_code();
    let timeout = cfg.liveness_timeout_ns;
    let mut passed: HashMap<u32, Passed> = HashMap::new();
    // The keys whose pidfd in `passed` is in the epoll set (not yet seen dead): a replaced
    // or dead one is taken out once, not again (a wasted call at every restart).
    let mut watched: HashSet<u32> = HashSet::new();
    let from;
    let told_by;
    let mut sock_open = true;
    // What the HAM had to do before this Guardian watched it counts from now: a promoted HAM
    // inherits its predecessor's deadline, which may be long past when its first turn comes.
    let mut watch = Watch {
        since: mono_ns(),
        ..Watch::default()
    };
    if let Some(s) = &seg {
        watch.deadline_published(s.header().deadline());
    }
    // Once, entering the loop: the HAM knows this Guardian runs (a live upgrade waits for
    // it). There is no periodic beat: the HAM learns of a stopped Guardian from the kernel.
    let beat_unread = crate::failpoint::fires_in_guardian_of("guardian:beat-unread", ham_pid);
    if beat_unread {
        // The HAM stopped first, so that it cannot read the beat before it dies.
        let _ = rustix::process::pidfd_send_signal(&ham_pidfd, rustix::process::Signal::STOP);
        while procfs::is_alive(ham_pid, ham_start) && !procfs::is_stopped(ham_pid, ham_start) {
            std::thread::yield_now();
        }
    }
    handoff::beat(&sock);
    // Said once the beat is sent: a Guardian that has said it counts as one that watched.
    log(
        &name,
        format_args!("pid {} watching HAM pid {ham_pid}", std::process::id()),
    );
    if beat_unread {
        fence(&name, &ham_pidfd);
    }
    let mut armed_at = None;
    let mut events = Vec::with_capacity(8);
    loop {
        events.clear();
        match epoll::wait(&epoll, rustix::buffer::spare_capacity(&mut events), None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(io_err("epoll_wait")(e.into())),
        }
        let now = mono_ns();
        let mut ham_gone = false;
        let mut fenced = false;
        let mut told = None;
        // The keys given a new pidfd in this batch: an event of theirs later in the batch
        // may be their previous pidfd's.
        let mut replaced: Vec<u32> = Vec::new();
        for ev in events.drain(..) {
            match ev.data.u64() {
                TOK_HAM => {
                    ham_gone = true;
                    told.get_or_insert("its pidfd");
                }
                TOK_LOCK => {
                    // First in time whenever both are ready: the lock is marked at the
                    // start of the HAM's exit, its pidfd at the end.
                    ham_gone = true;
                    told = Some("its lock");
                }
                TOK_SOCK if sock_open => {
                    let mut fresh = HashMap::new();
                    if !handoff::recv_all(&sock, &mut fresh) {
                        sock_open = false;
                        let _ = epoll::delete(&epoll, &sock);
                    }
                    for (key, p) in fresh {
                        if let Some(old) = passed.remove(&key) {
                            replaced.push(key);
                            if watched.remove(&key) {
                                // Out of the epoll set before it is closed: the HAM holds
                                // the same open file, which would keep a closed
                                // descriptor's registration alive (and readable for ever
                                // once it died).
                                let _ = epoll::delete(&epoll, &old.pidfd);
                            }
                        }
                        if p.pid > 0
                            && epoll::add(
                                &epoll,
                                &p.pidfd,
                                epoll::EventData::new_u64(TOK_PIDFD | u64::from(key)),
                                epoll::EventFlags::IN,
                            )
                            .is_ok()
                        {
                            watched.insert(key);
                        }
                        passed.insert(key, p);
                    }
                    if seg.is_none() {
                        // Read again: the HAM mends the header it owns when this Guardian
                        // beats, and then says so (a beat of its own).
                        seg = open_segment(&cfg, &name, ham_pid, true).unwrap_or(None);
                    }
                    // A byte from the HAM says its deadline moved earlier.
                    if let Some(s) = &seg {
                        watch.deadline_published(s.header().deadline());
                    }
                }
                TOK_SIGNAL => {
                    while let Ok(Some(info)) = signals.read_signal() {
                        let sig = info.ssi_signo as i32;
                        if sig != libc::SIGTERM && sig != libc::SIGINT {
                            continue;
                        }
                        let Some(s) = &seg else {
                            // Whether our HAM is shutting down cannot be read: it is asked
                            // to (if it already is, nothing changes), and this Guardian
                            // goes. A HAM that goes on starts another.
                            log(
                                &name,
                                format_args!(
                                    "signal {sig}, the state segment unreadable: asking the \
                                     HAM to shut down, and exiting"
                                ),
                            );
                            let _ = rustix::process::pidfd_send_signal(
                                &ham_pidfd,
                                rustix::process::Signal::TERM,
                            );
                            return Ok(exit::OK);
                        };
                        if s.header().flags() & FLAG_STOP_INTENT != 0 {
                            // Our HAM is shutting down and asks us to go.
                            return Ok(exit::OK);
                        }
                        // Someone asked the pair to stop through us: tell the HAM.
                        log(
                            &name,
                            format_args!("signal {sig}: asking the HAM to shut down"),
                        );
                        let _ = rustix::process::pidfd_send_signal(
                            &ham_pidfd,
                            rustix::process::Signal::TERM,
                        );
                    }
                }
                TOK_TIMER => {
                    let mut buf = [0u8; 8];
                    let _ = rustix::io::read(&timerfd, &mut buf);
                    armed_at = None;
                }
                TOK_LISTEN => {
                    watch.conn.get_or_insert(now);
                }
                tok if tok & TOK_PIDFD != 0 => {
                    let key = (tok & !TOK_PIDFD) as u32;
                    // The event may be stale if this batch also brought the slot's next
                    // pidfd (handled above), which may name a live process: looked at then.
                    let stale = |p: &Passed| replaced.contains(&key) && !readable(&p.pidfd);
                    if let Some(p) = passed.get(&key).filter(|p| !stale(p)) {
                        // Dead: seen once (it stays readable), then the HAM must handle it.
                        if watched.remove(&key) {
                            let _ = epoll::delete(&epoll, &p.pidfd);
                        }
                        watch.deaths.push((key, p.pid, now));
                    }
                }
                _ => {}
            }
        }
        if seg.is_none() {
            // Nothing to check them against: the HAM's death alone is watched.
            watch.deaths.clear();
            watch.conn = None;
        }
        if let (false, Some(seg)) = (ham_gone, &seg) {
            // The log verbosity the HAM was told (kept as level + 1; 0: never set).
            if let Some(v) = seg.header().verbosity().checked_sub(1) {
                crate::log::set_verbosity(v as u32);
            }
            let h = seg.header();
            let view = HamView {
                liveness: h.snapshot().liveness_ns,
                deadline: h.deadline(),
                accept_paused: h.flags() & FLAG_ACCEPT_PAUSED != 0,
            };
            let pending = || listener_pending(&sockets.listener);
            let exited = |slot: u32, pid: i32| {
                match seg
                    .slot(ham_core::layout::SlotIndex(slot))
                    .and_then(|s| s.read().ok().flatten())
                {
                    Some(r) if r.pid == pid && r.state.has_process() => None,
                    Some(r) => Some(r.exited_mono_ns),
                    // Gone or unreadable: not named as running, and no progress known.
                    None => Some(0),
                }
            };
            let conn_before = watch.conn;
            match watch.check(now, timeout, &view, pending, exited) {
                Ok(()) => {}
                Err(why) => {
                    log(
                        &name,
                        format_args!("the HAM (pid {ham_pid}) {why}: fencing it"),
                    );
                    fence(&name, &ham_pidfd);
                    ham_gone = true;
                    fenced = true;
                }
            }
            if conn_before.is_some() && watch.conn.is_none() {
                // Looked at: watch for the next waiting connection.
                let _ = epoll::modify(
                    &epoll,
                    &sockets.listener,
                    epoll::EventData::new_u64(TOK_LISTEN),
                    epoll::EventFlags::IN | epoll::EventFlags::ONESHOT,
                );
            }
        }
        if ham_gone {
            // Put back first, if the watcher raised this thread: the takeover runs as this
            // thread ran before.
            if let Some((w, _, _)) = &lock_watch {
                w.rung();
            }
            if sock_open {
                handoff::recv_all(&sock, &mut passed);
            }
            from = Some((ham_pid, fenced));
            told_by = told.filter(|_| !fenced);
            break;
        }
        let next = watch.next_check(timeout);
        if next != armed_at {
            arm(&timerfd, next);
            armed_at = next;
        }
    }
    // The watching is over: nothing of it goes on in the promoted HAM, which drops it once
    // the takeover is done (closing an epoll set of a pidfd per entity, and unmapping,
    // take a fraction of a millisecond the takeover need not wait for).
    let flags = seg.as_ref().map_or(0, |s| s.header().flags());
    let dead = Deaths {
        seen: watch.deaths.iter().map(|&(s, p, _)| (s, p)).collect(),
        set: epoll.try_clone().ok(),
    };
    let pre_read = lock_watch.as_ref().map(|(_, _, p)| p.clone());
    // Dropped (the lock's watcher stopped) before the promoted HAM holds the lock itself.
    let watching = Box::new((sock, epoll, timerfd, lock_watch));
    let found = Found {
        cgroups: Some(cgroups),
        dead: Some(dead),
        successor,
        ham_dead: Some((ham_pid, ham_start)),
        pre_read,
    };
    promote(
        cfg,
        text,
        sockets,
        passed,
        (flags, seg),
        (from, told_by),
        watching,
        found,
    )
}

/// Starts a [`sys::robust::Watcher`] on the lock word of the HAM `ham_pid`, ringing an
/// eventfd in `epoll` under [`TOK_LOCK`]; `None` (said in the log) if it cannot: the HAM's
/// death is then seen by its pidfd alone.
fn watch_lock(
    cfg: &config::Config,
    name: &str,
    ham_pid: i32,
    epoll: &OwnedFd,
) -> Option<(sys::robust::Watcher, OwnedFd, PreRead)> {
    let started = (|| -> Result<_, String> {
        let bell = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .map_err(|e| format!("eventfd: {e}"))?;
        // A mapping of its own, never unmapped: the watcher's thread sleeps on it for the
        // life of the process.
        let seg = Segment::open(&cfg.instance.segment_name(), Access::ReadOnly)
            .map_err(|e| e.to_string())?
            .into_static();
        epoll::add(
            epoll,
            &bell,
            epoll::EventData::new_u64(TOK_LOCK),
            epoll::EventFlags::IN,
        )
        .map_err(|e| format!("epoll_ctl: {e}"))?;
        let ring = bell.try_clone().map_err(|e| format!("dup: {e}"))?;
        let pre_read = PreRead::default();
        let put = pre_read.clone();
        // Once it has rung: the records read for the takeover, on whatever CPU is free
        // (`SCHED_IDLE`: where the takeover's thread runs, this gives way to it at once).
        let read_ahead = move || {
            sys::sched::give_way();
            put.put(seg.records());
        };
        // The loop's thread (this one), raised to run first as the watcher rings.
        let w = sys::robust::Watcher::start(
            seg.header().ham_lock(),
            ham_pid as u32,
            ring,
            true,
            read_ahead,
        )
        .map_err(|e| format!("thread: {e}"))?;
        Ok((w, bell, pre_read))
    })();
    started
        .inspect_err(|e| {
            log(
                name,
                format_args!(
                    "cannot watch the HAM's lock ({e}): its death is seen by its pidfd alone"
                ),
            )
        })
        .ok()
}

/// The handed-over processes a takeover finds dead: those the Guardian saw die, and those
/// whose pidfd is readable when the takeover looks ([`Deaths::now`]), in one look at the
/// Guardian's set that holds them all (not a look per entity: the takeover restarts these
/// first, and must not wait for a walk).
pub struct Deaths {
    /// (slot, pid) seen dying while the HAM lived.
    seen: HashSet<(u32, i32)>,
    /// The Guardian's epoll set (a second descriptor of it: the set itself is closed with
    /// the rest of the watching, after the takeover).
    set: Option<OwnedFd>,
}

impl Deaths {
    /// The handed-over processes (slot, pid) dead now. Looked at when the adoption begins,
    /// not when the HAM was seen dead: an entity killed with its HAM (a chaos test, an OOM
    /// kill) dies a little after it, its pidfd readable once its exit is done, and the
    /// lock tells of the HAM's death before that. One seen alive here is adopted in turn,
    /// and restarted then if it is found dead.
    pub fn now(self, passed: &HashMap<u32, Passed>) -> HashSet<(u32, i32)> {
        let mut dead = self.seen;
        if let Some(set) = &self.set {
            ready_pidfds(set, passed, &mut dead);
        }
        dead
    }
}

/// Adds to `dead` the handed-over processes whose pidfd in the set `epoll` is readable.
/// An event names a slot, and the set may still hold a registration of that slot's
/// previous pidfd (its process replaced, the old descriptor still open in the dying HAM):
/// only a slot whose *current* pidfd is readable counts, asked of all of them in one
/// `poll`.
fn ready_pidfds(epoll: &OwnedFd, passed: &HashMap<u32, Passed>, dead: &mut HashSet<(u32, i32)>) {
    use rustix::event::{PollFd, PollFlags, poll};
    // Room for every descriptor in the set: one call returns every ready one.
    let mut events = Vec::with_capacity(passed.len() + 8);
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    if epoll::wait(
        epoll,
        rustix::buffer::spare_capacity(&mut events),
        Some(&zero),
    )
    .is_err()
    {
        return;
    }
    let said: Vec<(u32, &Passed)> = events
        .iter()
        .map(|ev| ev.data.u64())
        .filter(|tok| tok & TOK_PIDFD != 0)
        .filter_map(|tok| {
            let key = (tok & !TOK_PIDFD) as u32;
            passed.get(&key).filter(|p| p.pid > 0).map(|p| (key, p))
        })
        .collect();
    if said.is_empty() {
        return;
    }
    let mut fds: Vec<PollFd<'_>> = said
        .iter()
        .map(|(_, p)| PollFd::new(&p.pidfd, PollFlags::IN))
        .collect();
    if poll(&mut fds, Some(&zero)).is_err() {
        // Not known which are exact: every one said counts (a live one is then found
        // alive when it is adopted in turn).
        dead.extend(said.iter().map(|(key, p)| (*key, p.pid)));
        return;
    }
    for ((key, p), fd) in said.iter().zip(&fds) {
        if !fd.revents().is_empty() {
            dead.insert((*key, p.pid));
        }
    }
}

/// Maps the state segment read-only. One that is not ham's (its magic or geometry
/// scribbled over) gives `None`, said in the log: the first time as what this Guardian
/// does about it; when read `again`, only once it reads.
fn open_segment(
    cfg: &config::Config,
    name: &str,
    ham_pid: i32,
    again: bool,
) -> Result<Option<Segment>, DaemonError> {
    // Mapped read-only; made writable in place should this Guardian take over.
    match Segment::open_promotable(&cfg.instance.segment_name()) {
        Ok(seg) => {
            if again {
                log(name, format_args!("the state segment reads again"));
            }
            // Not needed: what is not mapped now is faulted in at a takeover.
            let _ = seg.populate_used();
            Ok(Some(seg))
        }
        Err(e @ (SegmentError::BadMagic { .. } | SegmentError::Geometry { .. })) => {
            if !again {
                log(
                    name,
                    format_args!(
                        "{e}: watching HAM pid {ham_pid} by its pidfd only (a hang is not \
                         detected); if it dies, this guardian takes over without the segment"
                    ),
                );
            }
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// SIGKILL through the pidfd, then wait until the kernel reports the exit: only then is it
/// certain the old HAM will never write again.
fn fence(name: &str, ham_pidfd: &OwnedFd) {
    let _ = rustix::process::pidfd_send_signal(ham_pidfd, rustix::process::Signal::KILL);
    loop {
        let mut fds = [rustix::event::PollFd::new(
            ham_pidfd,
            rustix::event::PollFlags::IN,
        )];
        match rustix::event::poll(
            &mut fds,
            Some(&Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            }),
        ) {
            Ok(n) if n > 0 => return,
            _ => log(
                name,
                format_args!("still waiting for the fenced HAM to exit"),
            ),
        }
    }
}

/// What the Guardian reads of its HAM at each look.
struct HamView {
    /// When the HAM last began a turn of its loop.
    liveness: u64,
    /// Its earliest deadline as published (0: none).
    deadline: u64,
    /// It stopped accepting connections on purpose (no descriptor left, or at its cap).
    accept_paused: bool,
}

/// What the Guardian waits for its HAM to handle, each at most `liveness_timeout` after
/// it happened: the HAM's own deadline, the deaths of entity processes (the Guardian holds
/// their pidfds), a waiting control connection. Nothing else wakes it: an idle pair has no
/// periodic wake-up, and a HAM that hangs (or is stopped) is fenced `liveness_timeout`
/// after the first of these it fails to handle.
#[derive(Default)]
struct Watch {
    /// When this watch began. A deadline published before it is checked `timeout` after it
    /// instead: a HAM that has just taken over has its predecessor's deadline, which may have
    /// passed during the takeover, and it had no turn to handle it in.
    since: u64,
    /// The HAM's deadline being watched: it must begin a turn after it.
    deadline: Option<u64>,
    /// The watched deadline passed and a turn began after it, but that turn had not ended
    /// (the deadline published was still that one) at this time: (deadline, time).
    turn_unfinished: Option<(u64, u64)>,
    /// Deaths seen and not known handled yet: (slot, pid, when).
    deaths: Vec<(u32, i32, u64)>,
    /// When the HAM last handled one of them (the exit time it wrote in the record). A HAM
    /// working through a backlog of deaths (a storm of thousands, the stops of a large
    /// shutdown) handles the last of them later than `timeout` after they happened, but one
    /// at least every `timeout`: a death is overdue `timeout` after itself or after the last
    /// one handled, whichever is later. A hung HAM handles none: it is fenced `timeout` after
    /// the first death it leaves, or, hung in the middle of a backlog, after the last death it
    /// handled.
    handled: u64,
    /// A control connection seen waiting, when.
    conn: Option<u64>,
}

impl Watch {
    /// The HAM published `d` (0: no deadline): watched if earlier than what is watched.
    fn deadline_published(&mut self, d: u64) {
        if d != 0 && self.deadline.is_none_or(|w| d < w) {
            self.deadline = Some(d);
        }
    }

    /// When to look next: `timeout` after the earliest thing watched.
    fn next_check(&self, timeout: u64) -> Option<u64> {
        self.deadline
            .map(|w| w.max(self.since))
            .into_iter()
            .chain(self.turn_unfinished.map(|(_, t)| t))
            .chain(self.deaths.iter().map(|d| d.2.max(self.handled)))
            .chain(self.conn)
            .min()
            .map(|t| t.saturating_add(timeout))
    }

    /// Looks at everything due at `now`; `Err(why)` when the HAM failed to handle one in
    /// time. `pending`: a connection waits on the listener; `exited(slot, pid)`: `None`
    /// while the slot's record still names that (dead) process as running, else the time
    /// the record says its last process exited (when the HAM handled that death).
    fn check(
        &mut self,
        now: u64,
        timeout: u64,
        ham: &HamView,
        pending: impl Fn() -> bool,
        exited: impl Fn(u32, i32) -> Option<u64>,
    ) -> Result<(), String> {
        let due = |t: u64| now >= t.saturating_add(timeout);
        if let Some(w) = self.deadline.filter(|&w| due(w.max(self.since))) {
            self.deadline = None;
            if ham.deadline == w {
                // Still its earliest deadline: it must have begun a turn after it...
                if ham.liveness < w {
                    return Err(format!(
                        "has not turned its loop for {} past its deadline",
                        ham_core::duration::format_ns(now - w)
                    ));
                }
                // ...and end it (a turn ends by publishing its next deadline).
                self.turn_unfinished = Some((w, now));
            } else {
                // It published another since: this one was handled, or dropped (a stop
                // timeout whose process exited first). The new one is watched.
                self.deadline_published(ham.deadline);
            }
        }
        if let Some((w, since)) = self.turn_unfinished.filter(|&(_, t)| due(t)) {
            if ham.deadline == w {
                return Err(format!(
                    "has not finished a turn of its loop for {}",
                    ham_core::duration::format_ns(now - since)
                ));
            }
            self.turn_unfinished = None;
            self.deadline_published(ham.deadline);
        }
        // The records are read only once a death is due: a storm brings deaths by the
        // thousand, and the Guardian wakes for each.
        if self.deaths.iter().any(|d| due(d.2.max(self.handled))) {
            let mut handled = self.handled;
            self.deaths
                .retain(|&(slot, pid, _)| match exited(slot, pid) {
                    Some(t) => {
                        // (A time ahead of ours is not believed: it would hold the fence off.)
                        handled = handled.max(t.min(now));
                        false
                    }
                    None => true,
                });
            self.handled = handled;
            if let Some(&(slot, pid, at)) = self.deaths.iter().find(|d| due(d.2.max(handled))) {
                let fmt = ham_core::duration::format_ns;
                let backlog = if handled > at {
                    format!(", nor any other for {}", fmt(now - handled))
                } else {
                    String::new()
                };
                return Err(format!(
                    "has not handled the death of pid {pid} (slot {slot}) in {}{backlog}",
                    fmt(now - at)
                ));
            }
        }
        if let Some(at) = self.conn.filter(|&at| due(at)) {
            if pending() && ham.liveness < at && !ham.accept_paused {
                return Err(format!(
                    "has not taken a control connection in {}",
                    ham_core::duration::format_ns(now - at)
                ));
            }
            self.conn = None;
        }
        Ok(())
    }
}

/// Whether a connection waits on the control listener (a look, no wait).
fn listener_pending(listener: &UnixListener) -> bool {
    readable(listener)
}

/// Arms the timer at `at` (CLOCK_MONOTONIC ns), or disarms it.
fn arm(timerfd: &OwnedFd, at: Option<u64>) {
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let value = at.map_or(zero, |at| Timespec {
        tv_sec: (at / 1_000_000_000) as i64,
        tv_nsec: (at % 1_000_000_000).max(1) as i64,
    });
    let _ = rustix::time::timerfd_settime(
        timerfd,
        TimerfdTimerFlags::ABSTIME,
        &Itimerspec {
            it_interval: zero,
            it_value: value,
        },
    );
}

#[allow(clippy::too_many_arguments)]
fn promote(
    cfg: config::Config,
    text: String,
    sockets: Sockets,
    passed: HashMap<u32, Passed>,
    (flags, watched): (u32, Option<Segment>),
    (from, told_by): (Option<(i32, bool)>, Option<&str>),
    watching: Box<dyn std::any::Any>,
    found: Found,
) -> Result<i32, DaemonError> {
    let name = cfg.instance.name.clone();
    // Writable at once: this process owns it from here on (`Daemon::promote` takes the
    // next epoch, which fences any other owner). The mapping this Guardian watched through
    // is made writable (mapping it again took a tenth of a millisecond); after a shutdown
    // the name is looked up, to see whether the HAM removed it.
    let by_name = || Segment::open(&cfg.instance.segment_name(), Access::ReadWrite);
    let opened = match watched {
        Some(mut seg) if flags & FLAG_STOP_INTENT == 0 => match seg.make_writable() {
            Ok(()) => Ok(seg),
            Err(_) => by_name(),
        },
        _ => by_name(),
    };
    let seg = match opened {
        Ok(seg) => {
            let h = seg.header().snapshot();
            let seen_dead = found.ham_dead == Some((h.ham_pid, h.ham_start_time));
            if !seen_dead
                && procfs::is_alive(h.ham_pid, h.ham_start_time)
                && h.ham_pid != std::process::id() as i32
            {
                // Someone else (a new `ham`) owns it already: we are not needed.
                log(
                    &name,
                    format_args!("ham pid {} already owns the segment; exiting", h.ham_pid),
                );
                return Ok(exit::OK);
            }
            Ok(seg)
        }
        Err(SegmentError::NotFound { .. }) if flags & FLAG_STOP_INTENT != 0 => {
            // The HAM finished its shutdown and removed the segment: nothing to take over.
            return Ok(exit::OK);
        }
        // Corrupted: taken over cold (`Daemon::promote`), never left unsupervised.
        Err(e @ (SegmentError::BadMagic { .. } | SegmentError::Geometry { .. })) => Err(e),
        Err(e) => return Err(e.into()),
    };
    // What is said until the entities that died with the HAM are started again is held
    // and written then (`Daemon::run`): a write to the log is time they would wait.
    crate::log::hold();
    match told_by {
        Some(by) => log(
            &name,
            format_args!("the HAM is gone ({by} says so): taking over"),
        ),
        None => log(&name, format_args!("the HAM is gone: taking over")),
    }
    sys::set_title(&format!("ham: HAM {name}"));
    let mut ham = Daemon::promote(cfg, text, sockets, passed, from, seg, found)
        .inspect_err(|_| crate::log::write_held())?;
    ham.drop_after_takeover(watching);
    ham.run()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_000;

    fn ham(liveness: u64, deadline: u64) -> HamView {
        HamView {
            liveness,
            deadline,
            accept_paused: false,
        }
    }

    fn no_conn() -> bool {
        false
    }

    /// Every death's record names another process, or none (no exit time known).
    fn all_handled(_: u32, _: i32) -> Option<u64> {
        Some(0)
    }

    /// A `sleep` killed and reaped when dropped (should an assertion fail first), and its
    /// pidfd.
    struct Sleeper(std::process::Child);
    impl Drop for Sleeper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    fn sleeper() -> (Sleeper, OwnedFd, i32) {
        let child = Sleeper(
            std::process::Command::new("sleep")
                .arg("100")
                .spawn()
                .unwrap(),
        );
        let pid = child.0.id() as i32;
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(pid).unwrap(),
            rustix::process::PidfdFlags::empty(),
        )
        .unwrap();
        (child, pidfd, pid)
    }

    /// Registers `pidfd` in `epoll` as slot `key`'s, as the Guardian's loop does.
    fn watch_slot(epoll: &OwnedFd, pidfd: &OwnedFd, key: u64) {
        epoll::add(
            epoll,
            pidfd,
            epoll::EventData::new_u64(TOK_PIDFD | key),
            epoll::EventFlags::IN,
        )
        .unwrap();
    }

    /// A process handed over that dies after the HAM (killed with it, its exit done a
    /// little later) is known dead when the adoption looks, not only if it was dead when
    /// the Guardian saw the HAM go; those seen dying before are kept.
    #[test]
    fn deaths_are_looked_at_again_when_the_adoption_begins() {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
        let (child, pidfd, pid) = sleeper();
        watch_slot(&epoll, &pidfd, 7);
        let passed = HashMap::from([(
            7,
            Passed {
                pid,
                start_time: 1,
                pidfd,
            },
        )]);
        let deaths = || Deaths {
            seen: HashSet::from([(3, 42)]),
            set: Some(epoll.try_clone().unwrap()),
        };
        // Alive when the HAM was seen dead.
        let at_the_hams_death = deaths();
        assert_eq!(deaths().now(&passed), HashSet::from([(3, 42)]));
        drop(child);
        assert_eq!(
            at_the_hams_death.now(&passed),
            HashSet::from([(3, 42), (7, pid)])
        );
    }

    #[test]
    fn a_replaced_pidfd_still_in_the_set_does_not_make_its_successor_dead() {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
        // Slot 7's first process, registered, then replaced: its registration stays while
        // a descriptor of it is open (the dying HAM's copy).
        let (old, old_fd, _) = sleeper();
        watch_slot(&epoll, &old_fd, 7);
        let (new, new_fd, new_pid) = sleeper();
        let passed = HashMap::from([(
            7,
            Passed {
                pid: new_pid,
                start_time: 1,
                pidfd: new_fd.try_clone().unwrap(),
            },
        )]);
        watch_slot(&epoll, &new_fd, 7);
        let deaths = || Deaths {
            seen: HashSet::new(),
            set: Some(epoll.try_clone().unwrap()),
        };
        drop(old);
        assert!(readable(&old_fd), "the old registration is ready");
        assert_eq!(deaths().now(&passed), HashSet::new());
        drop(new);
        assert_eq!(deaths().now(&passed), HashSet::from([(7, new_pid)]));
    }

    #[test]
    fn nothing_watched_means_no_wake_up() {
        let w = Watch::default();
        assert_eq!(w.next_check(T), None);
    }

    #[test]
    fn a_deadline_is_checked_timeout_after_it_and_the_next_one_is_taken() {
        let mut w = Watch::default();
        w.deadline_published(5_000);
        w.deadline_published(0);
        w.deadline_published(7_000); // later: not what is watched
        assert_eq!(w.next_check(T), Some(6_000));
        w.deadline_published(4_000); // earlier (the HAM said so): watched instead
        assert_eq!(w.next_check(T), Some(5_000));
        // Not due yet: nothing looked at.
        assert_eq!(
            w.check(4_999, T, &ham(0, 4_000), no_conn, all_handled),
            Ok(())
        );
        // The HAM turned after it and published the next one.
        assert_eq!(
            w.check(5_000, T, &ham(4_001, 9_000), no_conn, all_handled),
            Ok(())
        );
        assert_eq!(w.next_check(T), Some(10_000));
        // It did not turn after that one: hung.
        let r = w.check(10_000, T, &ham(8_000, 9_000), no_conn, all_handled);
        assert!(r.unwrap_err().contains("not turned its loop"));
        // A deadline dropped unhandled (a stop timeout whose process exited first): the HAM
        // published a later one without turning at the first. Not a hang.
        let mut w = Watch::default();
        w.deadline_published(5_000);
        assert_eq!(
            w.check(6_000, T, &ham(1_000, 20_000), no_conn, all_handled),
            Ok(())
        );
        assert_eq!(w.next_check(T), Some(21_000));
        // A HAM with no deadline left: nothing watched.
        let mut w = Watch::default();
        w.deadline_published(1_000);
        assert_eq!(
            w.check(2_000, T, &ham(1_500, 0), no_conn, all_handled),
            Ok(())
        );
        assert_eq!(w.next_check(T), None);
    }

    #[test]
    fn a_deadline_past_when_the_watch_began_counts_from_then() {
        // A promoted HAM publishes its predecessor's deadline, passed during the takeover.
        let mut w = Watch {
            since: 10_000,
            ..Watch::default()
        };
        w.deadline_published(5_000);
        assert_eq!(w.next_check(T), Some(11_000));
        // Its first turn has not come yet, a timeout after the deadline: not a hang.
        assert_eq!(
            w.check(10_500, T, &ham(4_000, 5_000), no_conn, all_handled),
            Ok(())
        );
        // It has not come a timeout after the watch began: a hang.
        let r = w.check(11_000, T, &ham(4_000, 5_000), no_conn, all_handled);
        assert!(r.unwrap_err().contains("not turned its loop"));
        // One that came in time and handled the deadline is fine.
        let mut w = Watch {
            since: 10_000,
            ..Watch::default()
        };
        w.deadline_published(5_000);
        assert_eq!(
            w.check(11_000, T, &ham(10_200, 12_000), no_conn, all_handled),
            Ok(())
        );
        assert_eq!(w.next_check(T), Some(13_000));
    }

    #[test]
    fn a_turn_that_began_after_the_deadline_must_end_within_the_timeout() {
        let mut w = Watch::default();
        w.deadline_published(1_000);
        // It began a turn after the deadline, still publishing it: not ended yet.
        assert_eq!(
            w.check(2_000, T, &ham(1_200, 1_000), no_conn, all_handled),
            Ok(())
        );
        assert_eq!(w.next_check(T), Some(3_000));
        let r = w.check(3_000, T, &ham(1_200, 1_000), no_conn, all_handled);
        assert!(r.unwrap_err().contains("not finished a turn"));
        // One that ended it meanwhile is fine, and its new deadline is watched.
        let mut w = Watch::default();
        w.deadline_published(1_000);
        assert_eq!(
            w.check(2_000, T, &ham(1_200, 1_000), no_conn, all_handled),
            Ok(())
        );
        assert_eq!(
            w.check(3_000, T, &ham(1_200, 8_000), no_conn, all_handled),
            Ok(())
        );
        assert_eq!(w.next_check(T), Some(9_000));
    }

    #[test]
    fn a_death_must_leave_the_record_within_the_timeout() {
        let mut w = Watch::default();
        w.deaths.push((3, 42, 1_000));
        assert_eq!(w.next_check(T), Some(2_000));
        let runs = |slot: u32, pid: i32| (slot != 3 || pid != 42).then_some(0);
        assert_eq!(w.check(1_500, T, &ham(0, 0), no_conn, runs), Ok(()));
        let r = w.check(2_000, T, &ham(0, 0), no_conn, runs);
        assert!(r.unwrap_err().contains("death of pid 42"));
        // Handled (the record names another process, or none): forgotten.
        let mut w = Watch::default();
        w.deaths.push((3, 42, 1_000));
        assert_eq!(w.check(2_000, T, &ham(0, 0), no_conn, all_handled), Ok(()));
        assert!(w.deaths.is_empty());
        assert_eq!(w.next_check(T), None);
    }

    #[test]
    fn a_backlog_of_deaths_worked_through_is_not_a_hang_and_a_stall_in_it_is() {
        use std::cell::RefCell;
        // Four deaths at once; the HAM handles one every 600 (more than the timeout for
        // the last of them all the same).
        let mut w = Watch::default();
        for pid in 1..=4 {
            w.deaths.push((pid as u32, pid, 1_000));
        }
        let handled_at: RefCell<Vec<Option<u64>>> = RefCell::new(vec![None; 5]);
        let exited = |slot: u32, _: i32| handled_at.borrow()[slot as usize];
        handled_at.borrow_mut()[1] = Some(1_600);
        // Due at 2 000: one was handled 400 ago, the others wait their turn.
        assert_eq!(w.check(2_000, T, &ham(0, 0), no_conn, exited), Ok(()));
        assert_eq!(w.deaths.len(), 3, "the handled one is forgotten");
        assert_eq!(w.next_check(T), Some(2_600));
        handled_at.borrow_mut()[2] = Some(2_200);
        assert_eq!(w.check(2_600, T, &ham(0, 0), no_conn, exited), Ok(()));
        assert_eq!(w.next_check(T), Some(3_200));
        handled_at.borrow_mut()[3] = Some(2_800);
        assert_eq!(w.check(3_200, T, &ham(0, 0), no_conn, exited), Ok(()));
        // Then it stops handling them: fenced a timeout after the last one it handled.
        assert_eq!(w.next_check(T), Some(3_800));
        assert_eq!(w.check(3_799, T, &ham(0, 0), no_conn, exited), Ok(()));
        let r = w.check(3_800, T, &ham(0, 0), no_conn, exited).unwrap_err();
        assert!(
            r.contains("death of pid 4") && r.contains("nor any other"),
            "{r}"
        );
        // An exit time ahead of the Guardian's clock does not hold the fence off.
        let mut w = Watch::default();
        w.deaths.push((1, 1, 1_000));
        w.deaths.push((2, 2, 1_000));
        let future = |slot: u32, _: i32| (slot == 1).then_some(u64::MAX);
        assert_eq!(w.check(2_000, T, &ham(0, 0), no_conn, future), Ok(()));
        assert_eq!(w.next_check(T), Some(3_000));
        assert!(w.check(3_000, T, &ham(0, 0), no_conn, future).is_err());
    }

    #[test]
    fn a_waiting_connection_is_a_hang_unless_taken_turned_for_or_paused_on_purpose() {
        let pending = || true;
        let mut w = Watch {
            conn: Some(1_000),
            ..Watch::default()
        };
        let r = w.check(2_000, T, &ham(900, 0), pending, all_handled);
        assert!(r.unwrap_err().contains("control connection"));
        for (view, waits) in [
            (ham(1_100, 0), true), // it turned after: a new connection waits
            (ham(900, 0), false),  // it was taken
            (
                HamView {
                    accept_paused: true,
                    ..ham(900, 0)
                },
                true,
            ),
        ] {
            let mut w = Watch {
                conn: Some(1_000),
                ..Watch::default()
            };
            assert_eq!(w.check(2_000, T, &view, move || waits, all_handled), Ok(()));
            assert_eq!(w.conn, None);
        }
    }
}
