//! `ham --wait-running`: for init systems that start one process and respawn it when it
//! exits (busybox's `respawn`, OpenWrt's procd). Their child is the first HAM; once it is
//! killed its Guardian takes over and runs on, so the respawned `ham` would only find the
//! instance running and exit, to be respawned again at once. With `--wait-running` it
//! waits instead: for whichever HAM and Guardian run the instance, through their pidfds
//! (no polling), until both are gone — then it starts the instance warm, adopting its
//! entities. SIGTERM or SIGINT while it waits asks the running instance to shut down (as
//! `hamctl shutdown`), so the init system's stop still stops ham.

use std::os::fd::AsFd;
use std::time::Duration;

use ham_core::segment::{Access, Segment};
use rustix::event::{PollFd, PollFlags};

use crate::config::Config;
use crate::control::{self, Request};
use crate::procfs;

/// What the wait ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum Waited {
    /// Nothing runs the instance: start it.
    Free,
    /// The instance was shut down (by an operator, or by us on SIGTERM): do not start it.
    ShutDown,
}

/// The live process (HAM first, else its Guardian) that runs `cfg`'s instance, if any, and
/// whether the instance is shutting down.
fn running(cfg: &Config) -> Option<(i32, bool)> {
    let seg = Segment::open(&cfg.instance.segment_name(), Access::ReadOnly).ok()?;
    let h = seg.header().snapshot();
    let stopping = h.flags & ham_core::layout::FLAG_STOP_INTENT != 0;
    [
        (h.ham_pid, h.ham_start_time),
        (h.guardian_pid, h.guardian_start_time),
    ]
    .into_iter()
    .find(|&(pid, st)| pid > 0 && procfs::is_alive(pid, st) && procfs::is_mine(pid))
    .map(|(pid, _)| (pid, stopping))
}

/// Waits until no process runs the instance. Says what it waits for on stderr.
pub fn wait(cfg: &Config) -> Result<Waited, String> {
    let name = &cfg.instance.name;
    let signals = crate::daemon::signalfd().map_err(|e| format!("signalfd: {e}"))?;
    let mut seen_running = false;
    let mut asked_to_stop = false;
    while let Some((pid, stopping)) = running(cfg) {
        seen_running = true;
        let Some(pidfd) = rustix::process::Pid::from_raw(pid).and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
        }) else {
            continue; // gone meanwhile
        };
        crate::log::ham(
            name,
            format_args!(
                "the instance runs (pid {pid}{}): waiting until it is gone (--wait-running)",
                if stopping { ", shutting down" } else { "" }
            ),
        );
        loop {
            let mut fds = [
                PollFd::new(&pidfd, PollFlags::IN),
                PollFd::from_borrowed_fd(signals.as_fd(), PollFlags::IN),
            ];
            match rustix::event::poll(&mut fds, None) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(format!("poll: {e}")),
            }
            let (died, signalled) = (!fds[0].revents().is_empty(), !fds[1].revents().is_empty());
            if signalled {
                while let Ok(Some(sig)) = signals.read_signal() {
                    let sig = sig.ssi_signo as i32;
                    if matches!(sig, libc::SIGTERM | libc::SIGINT) && !asked_to_stop {
                        asked_to_stop = true;
                        crate::log::ham(
                            name,
                            format_args!("signal {sig} while waiting: shutting the instance down"),
                        );
                        let r = control::request(
                            &cfg.instance.socket_path(),
                            &Request::Shutdown,
                            Duration::from_secs(3600),
                        );
                        if let Err(e) = r {
                            crate::log::ham(name, format_args!("cannot ask it to shut down: {e}"));
                        }
                    }
                }
            }
            if died {
                break;
            }
        }
    }
    // Gone with its segment (a clean shutdown removes it), or stopped on our request: done.
    let segment_gone = Segment::open(&cfg.instance.segment_name(), Access::ReadOnly).is_err();
    if asked_to_stop || (seen_running && segment_gone) {
        return Ok(Waited::ShutDown);
    }
    Ok(Waited::Free)
}
