//! The HAM's side of the pair: starting, watching and feeding its Guardian.

use super::*;

pub(super) struct GuardianProc {
    pub(super) pid: i32,
    pub(super) start_time: u64,
    pub(super) pidfd: OwnedFd,
    pub(super) sock: OwnedFd,
    /// It has beaten (once, as it enters its loop): it runs its loop (its configuration
    /// read, the segment mapped), so it can take over.
    pub(super) beaten: bool,
    /// It was seen stopped (SIGSTOP): when to fence it if it still is.
    pub(super) stop_check: Option<u64>,
    /// Started by a takeover, which does not wait for its `execve`: how that went, asked
    /// when it beats (long past its `execve`) or dies.
    pub(super) execing: Option<sys::Execing>,
}

impl Daemon {
    /// Starts a Guardian (or schedules another try).
    pub(super) fn spawn_guardian(&mut self) {
        if self.shutdown.is_some() {
            return;
        }
        self.guardian.retry_at = None;
        self.mend_header();
        let binary = self.guardian_binary();
        let sockets = SocketRefs(
            &self.listener,
            &self.notify,
            self.hw_watchdog.as_ref().map(|h| &h.fd),
        );
        let pipes: Vec<(u32, &OwnedFd, &OwnedFd)> = self
            .entities
            .iter()
            .filter_map(|e| e.out.as_ref().map(|(r, w)| (e.slot.0, r, w)))
            .collect();
        let bell = self.clients.as_ref().map(|c| &c.bell);
        match spawn_guardian_process(
            &self.cfg,
            &self.config_text,
            sockets,
            &pipes,
            bell,
            &binary,
            GuardianStart::Wait,
        ) {
            Ok(g) => {
                self.wrote(self.writer.set_guardian(g.pid, g.start_time));
                self.guardian.proc = Some(g);
                self.guardian_started();
            }
            Err(e) if self.upgrade.is_some() => {
                self.upgrade_failed(&e.to_string());
                self.spawn_guardian();
            }
            Err(e) => {
                let at = mono_ns() + 1_000_000_000;
                say!(self, "cannot start the guardian: {e}; retrying in 1s");
                let what = format!("cannot start one: {e}; retrying in 1s");
                self.record_ham(None, "guardian-start", "retry", &what);
                self.guardian.retry_at = Some(at);
                self.schedule(at, Deadline::GuardianRetry);
            }
        }
    }

    /// Watches a new Guardian and hands it every live entity's pidfd.
    pub(super) fn guardian_started(&mut self) {
        let Some(g) = &self.guardian.proc else { return };
        say!(self, "guardian pid {}", g.pid);
        let _ = epoll::add(
            &self.epoll,
            &g.pidfd,
            Token::Guardian.data(),
            epoll::EventFlags::IN,
        );
        // Its socket: readable when it beats (once, entering its loop), writable again
        // when the backlog of pidfds can go on.
        let _ = epoll::add(
            &self.epoll,
            &g.sock,
            Token::Handoff.data(),
            epoll::EventFlags::IN,
        );
        self.guardian.retry_at = None;
        for i in EntityId::all(self.entities.len()) {
            let e = &self.entities[i];
            if let Some(fd) = &e.pidfd {
                let who = (e.slot, e.rec.pid, e.rec.start_time);
                if let Err(err) = self.guardian.send(&self.epoll, who, fd, Some(i)) {
                    say!(self, "cannot hand pid {} to the guardian: {err}", e.rec.pid);
                }
            }
        }
        for i in EntityId::all(self.entities.len()) {
            self.send_output_to_guardian(i);
        }
        if let Some(c) = &self.clients {
            let who = (ham_core::layout::SlotIndex(0), handoff::BELL, 0);
            if let Err(err) = self.guardian.send(&self.epoll, who, &c.bell, None) {
                say!(self, "cannot hand the clients' bell to the guardian: {err}");
            }
        }
    }

    /// A child stopped or went on (SIGCHLD): if it is the Guardian and it is stopped
    /// (SIGSTOP), it is fenced once it has been for `liveness_timeout` — SIGKILL through its
    /// pidfd — and its death then starts a new one (`on_guardian_exit`). Otherwise a
    /// stopped Guardian would leave the box unsupervised once the HAM died. The kernel
    /// tells the parent of a stop: no tick is needed to notice one.
    pub(super) fn check_guardian_stopped(&mut self) {
        let Some(g) = &mut self.guardian.proc else {
            return;
        };
        let stopped = matches!(
            rustix::process::waitid(
                WaitId::PidFd(g.pidfd.as_fd()),
                WaitIdOptions::STOPPED | WaitIdOptions::NOHANG,
            ),
            Ok(Some(st)) if st.stopped()
        );
        if stopped && g.stop_check.is_none() {
            let at = mono_ns() + self.cfg.liveness_timeout_ns;
            g.stop_check = Some(at);
            self.schedule(at, Deadline::GuardianStopped);
        }
    }

    /// `liveness_timeout` after the Guardian was seen stopped: fenced if it still is.
    pub(super) fn guardian_still_stopped(&mut self) {
        let timeout = self.cfg.liveness_timeout_ns;
        let Some(g) = &mut self.guardian.proc else {
            return;
        };
        g.stop_check = None;
        if !procfs::is_stopped(g.pid, g.start_time) {
            return; // it went on (SIGCONT)
        }
        let pid = g.pid;
        self.guardian.fenced = Some(pid);
        let _ = rustix::process::pidfd_send_signal(&g.pidfd, rustix::process::Signal::KILL);
        say!(
            self,
            "the guardian (pid {pid}) has been stopped for {}: fencing it",
            ham_core::duration::format_ns(timeout)
        );
    }

    /// The Guardian's socket: a beat (it runs its loop), or room for the backlog.
    pub(super) fn on_handoff(&mut self) {
        if let Some(g) = &mut self.guardian.proc {
            if handoff::drain_beats(&g.sock) {
                g.beaten = true;
                // It runs its loop, so it is long past its execve.
                if let Some(e) = g.execing.take() {
                    let _ = e.finish();
                }
                // It mapped the segment just before: if the header it found was scribbled
                // over, it watches blind until told to look again.
                if self.mend_header() {
                    if let Some(g) = &self.guardian.proc {
                        handoff::beat(&g.sock);
                    }
                }
            }
        }
        self.on_handoff_writable();
    }

    /// A Guardian must be able to read what it guards: a header scribbled over (its magic,
    /// layout or sizes) is written again, from this HAM's mapping and capacity. Checked
    /// when a Guardian starts and when it beats (a few loads); whether it was mended.
    fn mend_header(&mut self) -> bool {
        let Some(what) = self.wrote(self.writer.mend_header()).flatten() else {
            return false;
        };
        say!(
            self,
            "the state segment's header was scribbled over ({what}): mended"
        );
        let what = format!("header scribbled over ({what}): mended");
        self.record_ham(None, "segment-header", "mend", &what);
        true
    }

    pub(super) fn on_guardian_exit(&mut self) {
        let Some(mut g) = self.guardian.take() else {
            return;
        };
        // A beat it sent before it died counts: it had entered its loop.
        if handoff::drain_beats(&g.sock) {
            g.beaten = true;
        }
        let how = match rustix::process::waitid(
            WaitId::PidFd(g.pidfd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        ) {
            Ok(Some(st)) => decode_waitid(&st),
            Ok(None) => {
                self.guardian.proc = Some(g); // not dead after all
                return;
            }
            Err(_) => LastExit::Unknown,
        };
        // Started by a takeover without waiting for its execve: say why that failed.
        if let Some(Err(e)) = g.execing.take().map(sys::Execing::finish) {
            say!(self, "the guardian (pid {}) could not run ham: {e}", g.pid);
        }
        self.wrote(self.writer.set_guardian(0, 0));
        if self.shutdown.is_some() {
            return;
        }
        if self.upgrade.as_ref().is_some_and(|u| !u.started) {
            // Stopped for the upgrade: its successor runs the new binary.
            self.spawn_guardian();
            if let (Some(n), Some(u)) = (&self.guardian.proc, &self.upgrade) {
                let what = format!(
                    "guardian pid {} stopped; pid {} runs {}",
                    g.pid,
                    n.pid,
                    u.binary.display()
                );
                self.record_ham(Some(g.pid), "upgrade", "replace", &what);
            }
            return;
        }
        self.wrote(self.writer.bump_guardian_failures());
        let fenced = self.guardian.fenced.take() == Some(g.pid);
        // One that died before it watched (its configuration, the segment or a descriptor
        // failed it) is likely to be followed by another: after the second in a row the
        // next start waits, doubling, so that a Guardian that cannot start does not make
        // the HAM a busy loop. One that watched resets the count.
        let early = if g.beaten {
            self.guardian.early_deaths = 0;
            None
        } else {
            self.guardian.early_deaths += 1;
            guardian_backoff_ns(self.guardian.early_deaths)
        };
        let now = match early {
            None => {
                self.spawn_guardian();
                match &self.guardian.proc {
                    Some(n) => format!("guardian pid {} started", n.pid),
                    None => "no new guardian yet (retrying)".to_owned(),
                }
            }
            Some(wait) => {
                let at = mono_ns() + wait;
                self.guardian.retry_at = Some(at);
                self.schedule(at, Deadline::GuardianRetry);
                format!(
                    "the {} in a row to die before it watched; the next starts in {}",
                    ordinal(self.guardian.early_deaths),
                    ham_core::duration::format_ns(wait)
                )
            }
        };
        say!(
            self,
            "guardian pid {} died ({}); {now}",
            g.pid,
            describe(how)
        );
        let (cond, what) = if fenced {
            (
                "guardian-fenced",
                format!("stopped turning its loop; {now}"),
            )
        } else {
            ("guardian-died", format!("{}; {now}", describe(how)))
        };
        self.record_ham(Some(g.pid), cond, "replace", &what);
    }

    /// Gives the Guardian a duplicate of an entity's pidfd (best effort: without it the
    /// Guardian falls back to pidfd_open + start time at a takeover).
    pub(super) fn send_to_guardian(
        &mut self,
        i: EntityId,
        pid: i32,
        start_time: u64,
        pidfd: &OwnedFd,
    ) {
        let who = (self.entities[i].slot, pid, start_time);
        if let Err(e) = self.guardian.send(&self.epoll, who, pidfd, Some(i)) {
            say!(self, "cannot hand pid {pid} to the guardian: {e}");
        }
    }

    /// The Guardian's socket has room again: send what waits, in order.
    pub(super) fn on_handoff_writable(&mut self) {
        let entities = &self.entities;
        // An entity's process waiting in the backlog: its pidfd as the entity holds it now
        // (running, or released with its `execve` pending), if it is still that process.
        let lookup = |i: EntityId, pid: i32| {
            entities.get(i).filter(|e| e.rec.pid == pid).and_then(|e| {
                e.pidfd
                    .as_ref()
                    .or(e.exec.as_ref().map(|x| &x.pidfd))
                    .map(|fd| fd.as_fd())
            })
        };
        for (pid, e) in self.guardian.flush(&self.epoll, lookup) {
            say!(self, "cannot hand pid {pid} to the guardian: {e}");
        }
    }
}

/// A descriptor waiting for room in the Guardian's socket.
enum Waiting {
    /// An entity's process: the pidfd the entity holds when its turn comes. A cold start of
    /// thousands, faster than the Guardian reads, would otherwise hold a second descriptor
    /// per entity, up to the limit.
    Entity(EntityId),
    /// The bell or an output pipe, which belong to no process: a duplicate.
    Fd(OwnedFd),
}

/// The link to the Guardian: its process, when to try starting one again, and the pidfds
/// its socket had no room for yet. Owned by the daemon and borrowed `&mut` by the loop.
#[derive(Default)]
pub(super) struct GuardianLink {
    pub(super) proc: Option<GuardianProc>,
    /// A Guardian that could not be started is tried again then.
    pub(super) retry_at: Option<u64>,
    /// The pid of the Guardian this HAM fenced, until its death is seen.
    pub(super) fenced: Option<i32>,
    /// Guardians in a row that died before they watched (see [`guardian_backoff_ns`]).
    pub(super) early_deaths: u32,
    /// (slot, pid, start time) and what to send, in order.
    backlog: std::collections::VecDeque<((ham_core::layout::SlotIndex, i32, u64), Waiting)>,
}

impl GuardianLink {
    /// The Guardian is gone: it takes its process out and forgets what waited for it (its
    /// successor gets every pidfd afresh in `guardian_started`).
    pub(super) fn take(&mut self) -> Option<GuardianProc> {
        self.backlog.clear();
        self.proc.take()
    }

    /// Nothing waits to be sent to the Guardian.
    pub(super) fn idle(&self) -> bool {
        self.backlog.is_empty()
    }

    pub(super) fn is(&self, pid: i32) -> bool {
        self.proc.as_ref().is_some_and(|g| g.pid == pid)
    }

    /// Sends `who`'s descriptor now, or keeps it waiting (in order) while the socket is
    /// full, watching it for room: as entity `entity`'s process (its pidfd looked up when
    /// it is sent), or else as a duplicate.
    pub(super) fn send(
        &mut self,
        epoll: &OwnedFd,
        who: (ham_core::layout::SlotIndex, i32, u64),
        pidfd: &OwnedFd,
        entity: Option<EntityId>,
    ) -> io::Result<()> {
        // (sendmsg duplicates the descriptor into the message; ours stays ours)
        let Some(g) = &self.proc else { return Ok(()) };
        if self.backlog.is_empty() {
            match handoff::send(&g.sock, who.0.0, who.1, who.2, pidfd) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Full (many attachments at once): keep it, and send when the Guardian
                    // has read some.
                    let _ = epoll::modify(
                        epoll,
                        &g.sock,
                        Token::Handoff.data(),
                        epoll::EventFlags::IN | epoll::EventFlags::OUT,
                    );
                }
                Err(e) => return Err(e),
            }
        }
        let waiting = match entity {
            Some(i) => Waiting::Entity(i),
            None => Waiting::Fd(crate::sys::high_fd(pidfd.try_clone()?)),
        };
        self.backlog.push_back((who, waiting));
        Ok(())
    }

    /// Sends what waits, in order, until the socket is full again; the ones that could not
    /// be sent at all are dropped and returned (pid, why).
    fn flush<'a>(
        &mut self,
        epoll: &OwnedFd,
        entity_pidfd: impl Fn(EntityId, i32) -> Option<std::os::fd::BorrowedFd<'a>>,
    ) -> Vec<(i32, io::Error)> {
        let mut failed = Vec::new();
        let Some(g) = &self.proc else {
            self.backlog.clear();
            return failed;
        };
        while let Some(((slot, pid, start_time), fd)) = self.backlog.front() {
            let fd = match fd {
                Waiting::Fd(fd) => fd.as_fd(),
                Waiting::Entity(i) => match entity_pidfd(*i, *pid) {
                    Some(fd) => fd,
                    // Gone or replaced since: its successor's pidfd is queued after it.
                    None => {
                        self.backlog.pop_front();
                        continue;
                    }
                },
            };
            match handoff::send(&g.sock, slot.0, *pid, *start_time, fd) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return failed,
                Err(e) => failed.push((*pid, e)),
            }
            self.backlog.pop_front();
        }
        let _ = epoll::modify(epoll, &g.sock, Token::Handoff.data(), epoll::EventFlags::IN);
        failed
    }
}

/// How long to wait before starting a Guardian after `early` in a row died before they
/// watched: at once after the first, then 10 ms doubling up to 1 s (`None`: at once).
pub(super) fn guardian_backoff_ns(early: u32) -> Option<u64> {
    const FIRST: u64 = 10_000_000;
    const MOST: u64 = 1_000_000_000;
    let n = early.checked_sub(2)?;
    Some(FIRST.saturating_mul(1u64 << n.min(16)).min(MOST))
}

/// "1st", "2nd", "3rd", "4th", ...
fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// How [`spawn_guardian_process`] lets the new Guardian go.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum GuardianStart {
    /// Released, and its `execve` waited for (a failed upgrade is told at once).
    Wait,
    /// Held before its `execve` until [`Daemon::release_guardian`], or until
    /// [`GUARDIAN_HOLD_NS`] has passed, or this process dies: a takeover's, so that the
    /// Guardian's start-up (about a millisecond and a half of CPU) does not compete with
    /// the restarts of the entities that died with the HAM.
    Held,
}

/// Longest a takeover holds its new Guardian back (see [`GuardianStart::Held`]), or the
/// liveness timeout if shorter: a HAM hung in its takeover is then watched, and fenced,
/// as any other.
pub(super) const GUARDIAN_HOLD_NS: u64 = 100_000_000;

impl Daemon {
    /// Whether a Guardian is held by the takeover (see [`GuardianStart::Held`]).
    pub(super) fn guardian_held(&self) -> bool {
        self.guardian
            .proc
            .as_ref()
            .and_then(|g| g.execing.as_ref())
            .is_some_and(|x| x.held())
    }

    /// Lets a Guardian held by the takeover go (see [`GuardianStart::Held`]).
    pub(super) fn release_guardian(&mut self) {
        if let Some(x) = self.guardian.proc.as_mut().and_then(|g| g.execing.as_mut()) {
            x.release();
        }
    }
}

/// A Guardian's start, prepared: its socket, its configuration's memfd, its descriptors,
/// environment and command line, all but the fork. A Guardian prepares its successor's
/// while it watches, so that its takeover only forks it.
pub struct GuardianSpec {
    pub(super) spec: SpawnSpec,
    ours: OwnedFd,
}

/// Prepares a Guardian: this same binary in the Guardian role, told which process is its HAM
/// (this one, or the Guardian preparing it, which will be), and handed the config text, a
/// socket for pidfds, and the control listener (so clients queue through a takeover).
pub(super) fn prepare_guardian<'a>(
    cfg: &Config,
    config_text: &str,
    sockets: impl Into<SocketRefs<'a>>,
    binary: &Path,
) -> io::Result<GuardianSpec> {
    let SocketRefs(listener, notify, watchdog) = sockets.into();
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
    // What the Guardian needs travels in its environment, so that its command line is
    // only its name (`ps` shows `ham: guardian NAME`).
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k != crate::guardian::ENV)
        .collect();
    env.push((
        crate::guardian::ENV.into(),
        crate::guardian::env_value(me, procfs::own_start_time().unwrap_or(0), &cfg.path),
    ));
    let mut spec = SpawnSpec::new(
        binary,
        &[format!("ham: guardian {}", cfg.instance.name)],
        &env,
    )?;
    spec.fd(theirs, handoff::FD_SOCKET)
        .fd(memfd, handoff::FD_CONFIG)
        .fd(listener, handoff::FD_LISTENER)
        .fd(notify, handoff::FD_NOTIFY);
    if let Some(w) = watchdog {
        spec.fd(w.try_clone()?, handoff::FD_WATCHDOG);
    }
    spec.exec_if_orphaned();
    Ok(GuardianSpec { spec, ours })
}

/// Starts a Guardian (see [`prepare_guardian`]). If this process dies before releasing it,
/// the child runs anyway, finds its HAM gone, and takes over.
pub(super) fn spawn_guardian_process<'a>(
    cfg: &Config,
    config_text: &str,
    sockets: impl Into<SocketRefs<'a>>,
    pipes: &[(u32, &OwnedFd, &OwnedFd)],
    bell: Option<&OwnedFd>,
    binary: &Path,
    start: GuardianStart,
) -> io::Result<GuardianProc> {
    let prepared = prepare_guardian(cfg, config_text, sockets, binary)?;
    start_guardian(prepared, cfg, pipes, bell, start)
}

/// Starts a prepared Guardian.
pub(super) fn start_guardian(
    prepared: GuardianSpec,
    cfg: &Config,
    pipes: &[(u32, &OwnedFd, &OwnedFd)],
    bell: Option<&OwnedFd>,
    start: GuardianStart,
) -> io::Result<GuardianProc> {
    let GuardianSpec { mut spec, ours } = prepared;
    // The output pipes go into the socket before the Guardian exists: in flight, they are
    // held open even if this process dies before the Guardian reads them, so an entity's
    // pipe never loses its last reader in a takeover. (What does not fit now is sent again
    // by `guardian_started`.)
    for (slot, r, w) in pipes {
        let _ = handoff::send(&ours, *slot, handoff::PIPE_READ, 0, r);
        let _ = handoff::send(&ours, *slot, handoff::PIPE_WRITE, 0, w);
    }
    // The clients' bell likewise: the next HAM listens on the one they hold.
    if let Some(b) = bell {
        let _ = handoff::send(&ours, 0, handoff::BELL, 0, b);
    }
    if start == GuardianStart::Held {
        spec.release_within(GUARDIAN_HOLD_NS.min(cfg.liveness_timeout_ns));
    }
    let pending = spec.fork()?;
    failpoint::hit("guardian:after-fork");
    let start_time = pending.start_time;
    // A takeover does not wait for the Guardian's execve (the child runs even if we die,
    // and a failed execve is seen as its death); any other start does, so that a failed
    // upgrade is told at once.
    let (pid, pidfd, execing) = if start == GuardianStart::Held {
        let (pid, pidfd, execing) = pending.hold();
        (pid, pidfd, Some(execing))
    } else {
        let (pid, pidfd) = pending.release().map_err(|(e, pidfd)| {
            let _ = wait_pidfd(&pidfd, 1_000);
            e
        })?;
        (pid, pidfd, None)
    };
    Ok(GuardianProc {
        execing,
        beaten: false,
        stop_check: None,
        pid,
        start_time: start_time.or_else(|| procfs::start_time(pid)).unwrap_or(0),
        pidfd,
        sock: ours,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guardians_that_die_before_they_watch_are_started_again_ever_later_up_to_a_second() {
        let waits: Vec<Option<u64>> = (0..12).map(guardian_backoff_ns).collect();
        let ms = |n: u64| Some(n * 1_000_000);
        assert_eq!(waits[..4], [None, None, ms(10), ms(20)]);
        assert_eq!(waits[8], ms(640));
        assert!(waits[9..].iter().all(|&w| w == ms(1000)), "{waits:?}");
        assert_eq!(guardian_backoff_ns(u32::MAX), ms(1000));
    }

    #[test]
    fn ordinals() {
        let got: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111]
            .map(ordinal)
            .into();
        let want = [
            "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st", "111th",
        ];
        assert_eq!(got, want);
    }
}
