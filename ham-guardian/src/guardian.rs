//! The Guardian role: maps the state segment read-only, watches its HAM through a pidfd and
//! through the HAM's liveness word, keeps the pidfds the HAM hands it, and waits. When the
//! HAM dies — or stops turning its loop for `liveness_timeout`, in which case the Guardian
//! fences it first (SIGKILL through the pidfd, then waits for the exit) — it promotes
//! itself to HAM and carries on from the segment.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use ham_core::layout::FLAG_STOP_INTENT;
use ham_core::segment::{Access, Segment, SegmentError};
use rustix::event::epoll;
use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec};

use crate::daemon::{Daemon, DaemonError, Sockets};
use crate::handoff::{self, Passed};
use crate::{config, exit, mono_ns, procfs, sys};

const TOK_HAM: u64 = 1;
const TOK_SOCK: u64 = 2;
const TOK_SIGNAL: u64 = 3;
const TOK_TIMER: u64 = 4;

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

    let seg = Segment::open(&cfg.instance.segment_name(), Access::ReadOnly)?;
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
            let flags = seg.header().flags();
            drop(seg);
            // What the HAM handed over before it went (pidfds, output pipes) is in the
            // socket, and takes over with us.
            let mut passed = HashMap::new();
            handoff::recv_all(&sock, &mut passed);
            return promote(cfg, text, sockets, passed, flags, Some((ham_pid, false)));
        }
    };

    let epoll =
        epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| io_err("epoll")(e.into()))?;
    let timerfd = rustix::time::timerfd_create(
        TimerfdClockId::Monotonic,
        TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
    )
    .map_err(|e| io_err("timerfd")(e.into()))?;
    let period = (cfg.liveness_timeout_ns / 4).max(1);
    let ts = Timespec {
        tv_sec: (period / 1_000_000_000) as i64,
        tv_nsec: (period % 1_000_000_000) as i64,
    };
    rustix::time::timerfd_settime(
        &timerfd,
        TimerfdTimerFlags::empty(),
        &Itimerspec {
            it_interval: ts,
            it_value: ts,
        },
    )
    .map_err(|e| io_err("timerfd_settime")(e.into()))?;
    for (fd, tok) in [
        (ham_pidfd.as_fd(), TOK_HAM),
        (sock.as_fd(), TOK_SOCK),
        (signals.as_fd(), TOK_SIGNAL),
        (timerfd.as_fd(), TOK_TIMER),
    ] {
        epoll::add(
            &epoll,
            fd,
            epoll::EventData::new_u64(tok),
            epoll::EventFlags::IN,
        )
        .map_err(|e| io_err("epoll_ctl")(e.into()))?;
    }

    log(
        &name,
        format_args!("pid {} watching HAM pid {ham_pid}", std::process::id()),
    );
    sys::trim_heap();
    let mut passed: HashMap<u32, Passed> = HashMap::new();
    let from;
    let mut sock_open = true;
    let mut last_liveness = seg.header().snapshot().liveness_ns;
    let mut seen_at = mono_ns();
    let mut events = Vec::with_capacity(8);
    loop {
        events.clear();
        match epoll::wait(&epoll, rustix::buffer::spare_capacity(&mut events), None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(io_err("epoll_wait")(e.into())),
        }
        let mut ham_gone = false;
        let mut fenced = false;
        for ev in events.drain(..) {
            match ev.data.u64() {
                TOK_HAM => ham_gone = true,
                TOK_SOCK if sock_open && !handoff::recv_all(&sock, &mut passed) => {
                    sock_open = false;
                    let _ = epoll::delete(&epoll, &sock);
                }
                TOK_SIGNAL => {
                    while let Ok(Some(info)) = signals.read_signal() {
                        let sig = info.ssi_signo as i32;
                        if sig != libc::SIGTERM && sig != libc::SIGINT {
                            continue;
                        }
                        if seg.header().flags() & FLAG_STOP_INTENT != 0 {
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
                    // Our own liveness, for the HAM (which fences a Guardian that stops).
                    if sock_open {
                        handoff::beat(&sock);
                    }
                    // The log verbosity the HAM was told (kept as level + 1; 0: never set).
                    if let Some(v) = seg.header().verbosity().checked_sub(1) {
                        crate::log::set_verbosity(v as u32);
                    }
                    let now = mono_ns();
                    let live = seg.header().snapshot().liveness_ns;
                    if live != last_liveness {
                        last_liveness = live;
                        seen_at = now;
                    } else if now.saturating_sub(seen_at) >= cfg.liveness_timeout_ns {
                        log(
                            &name,
                            format_args!(
                                "the HAM (pid {}) has not turned its loop for {}: fencing it",
                                ham_pid,
                                ham_core::duration::format_ns(now - seen_at)
                            ),
                        );
                        fence(&name, &ham_pidfd);
                        ham_gone = true;
                        fenced = true;
                    }
                }
                _ => {}
            }
        }
        if ham_gone {
            if sock_open {
                handoff::recv_all(&sock, &mut passed);
            }
            from = Some((ham_pid, fenced));
            break;
        }
    }
    drop(sock);
    let flags = seg.header().flags();
    drop(seg);
    promote(cfg, text, sockets, passed, flags, from)
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

fn promote(
    cfg: config::Config,
    text: String,
    sockets: Sockets,
    passed: HashMap<u32, Passed>,
    flags: u32,
    from: Option<(i32, bool)>,
) -> Result<i32, DaemonError> {
    let name = cfg.instance.name.clone();
    match Segment::open(&cfg.instance.segment_name(), Access::ReadOnly) {
        Ok(seg) => {
            let h = seg.header().snapshot();
            if procfs::is_alive(h.ham_pid, h.ham_start_time)
                && h.ham_pid != std::process::id() as i32
            {
                // Someone else (a new `ham`) owns it already: we are not needed.
                log(
                    &name,
                    format_args!("ham pid {} already owns the segment; exiting", h.ham_pid),
                );
                return Ok(exit::OK);
            }
        }
        Err(SegmentError::NotFound { .. }) if flags & FLAG_STOP_INTENT != 0 => {
            // The HAM finished its shutdown and removed the segment: nothing to take over.
            return Ok(exit::OK);
        }
        // Corrupted: taken over cold (`Daemon::promote`), never left unsupervised.
        Err(SegmentError::BadMagic { .. } | SegmentError::Geometry { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    log(&name, format_args!("the HAM is gone: taking over"));
    sys::set_title(&format!("ham: HAM {name}"));
    Daemon::promote(cfg, text, sockets, passed, from)?.run()
}
