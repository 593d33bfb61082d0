//! Starting entities' processes, in order and within each turn's budget.

use super::*;
use std::ffi::{CStr, CString};

/// Spawns a turn's budget did not allow, each with whether its restart conditions fire
/// once it runs: entities that were not crash-looping first, each queue in order.
#[derive(Default)]
pub(super) struct Deferred {
    healthy: std::collections::VecDeque<(EntityId, bool)>,
    looping: std::collections::VecDeque<(EntityId, bool)>,
    /// Who is in either queue: a push (each of 10,000 first starts) or a restart's look
    /// does not search them.
    members: std::collections::HashSet<EntityId>,
}

impl Deferred {
    pub(super) fn push(&mut self, i: EntityId, healthy: bool) {
        if self.members.insert(i) {
            let q = if healthy {
                &mut self.healthy
            } else {
                &mut self.looping
            };
            q.push_back((i, false));
        }
    }
    pub(super) fn find(&mut self, i: EntityId) -> Option<&mut (EntityId, bool)> {
        if !self.members.contains(&i) {
            return None;
        }
        self.healthy
            .iter_mut()
            .chain(self.looping.iter_mut())
            .find(|(j, _)| *j == i)
    }
    pub(super) fn pop(&mut self) -> Option<(EntityId, bool)> {
        let popped = self
            .healthy
            .pop_front()
            .or_else(|| self.looping.pop_front());
        if let Some((i, _)) = popped {
            self.members.remove(&i);
        }
        popped
    }
    pub(super) fn is_empty(&self) -> bool {
        self.healthy.is_empty() && self.looping.is_empty()
    }
    pub(super) fn remove(&mut self, i: EntityId) {
        if self.members.remove(&i) {
            self.healthy.retain(|(j, _)| *j != i);
            self.looping.retain(|(j, _)| *j != i);
        }
    }
}

/// How long a restart alone waits for its child's `execve` (see [`Daemon::spawn`]).
const EXEC_WAIT_NS: u64 = 1_000_000;

/// A released child whose `execve` is not known yet, with what its start needs then.
pub(super) struct PendingExec {
    execing: sys::Execing,
    pub(super) pid: i32,
    pub(super) pidfd: OwnedFd,
    /// When its start began (`spawn`'s clock).
    started: u64,
}

/// Processes one turn of the loop may start: a restart storm (or a cold start of many
/// entities) goes on over several turns, each of which also serves the control socket,
/// the timers and the liveness word. The rest wait, in order, as `starting` (an entity
/// that was not crash-looping is restarted at once all the same).
pub(super) const SPAWNS_PER_TURN: u32 = 2;

impl Daemon {
    /// Adds entity `i`'s pidfd to the loop.
    pub(super) fn watch(&self, i: EntityId, pidfd: &OwnedFd) -> rustix::io::Result<()> {
        epoll::add(
            &self.epoll,
            pidfd,
            Token::Pidfd(i).data(),
            epoll::EventFlags::IN,
        )
    }

    // -- segment ---------------------------------------------------------------------------

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
    pub(super) fn spawn(&mut self, i: EntityId) {
        self.settle_exec(i);
        let now = mono_ns();
        if self.entities[i].cfg.attach_only && self.entities[i].cfg.argv.is_empty() {
            // ham cannot start it: it waits for a process to attach itself.
            let e = &mut self.entities[i];
            if !e.rec.state.has_process() {
                e.rec.restart_pending = false;
            }
            let why = super::lifecycle::Why::new("start", "nothing to run");
            self.step(i, ham_core::lifecycle::Input::NothingToRun, &why);
            return;
        }
        if std::mem::take(&mut self.entities[i].adopted) {
            self.exit_watch_changed();
        }
        {
            let e = &mut self.entities[i];
            e.stop_deadline = None;
            e.retry_at = None;
            e.wanted = Wanted::Up;
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
        // How it starts: first, or restarted with or without its checkpoints, and how the
        // process before it ended.
        // Built at each start rather than kept: a few strings per entity, the same for
        // every start, and most entities start seldom.
        let mut env = entity_env(&e.cfg, &self.cfg);
        env.push(("HAM_RESTART".into(), e.rec.restart_kind.as_str().into()));
        env.push((
            "HAM_PREVIOUS_EXIT".into(),
            super::pss::previous_exit(&e.rec),
        ));
        // Placed by the cluster: the token it shows with every write to what it shares
        // (strictly higher at each new owner), and its name.
        if e.cfg.rare.placement.is_some() {
            env.push(("HAM_FENCING_TOKEN".into(), e.rec.fencing_token.to_string()));
            env.push(("HAM_SINGLETON".into(), e.cfg.name.clone()));
        }
        let out = e.out.as_ref().map(|(_, w)| w);
        // A restart alone: of a healthy entity (not a first start, and not a crash-looper,
        // whose restarts, many a second, would each hold the loop until their `execve`),
        // with no other child between its fork and its `execve`, no other death in this
        // turn, no start deferred, no takeover's Guardian held until the takeover's
        // restarts are released (see below, at its release).
        let alone = healthy
            && self.execing.is_empty()
            && self.deaths_in_turn <= 1
            && self.deferred.is_empty()
            && !self.guardian_held();
        let forked = build_spec(&e.cfg, &env, out).and_then(|mut spec| {
            spec.env_shared(inherited_env_for(&e.cfg));
            // Alone, it is created on our CPU, where it runs once we sleep (`execve` moves it
            // to an idle CPU if there is one): moved to another CPU at once, it had to wake
            // that CPU, which on a virtual machine took the host up to milliseconds.
            // Otherwise the first one prepares itself and execs beside us while we go on
            // (with the takeover, with the other deaths); in a storm (other children not
            // past `execve` yet) the kernel spreads them.
            spec.apart(!alone && self.execing.is_empty());
            if let Some(slot) = slot {
                spec.released_in(slot);
            }
            if let Some(dir) = cgroup_dir {
                spec.into_cgroup(dir);
            }
            spec.fork()
        });
        let pending = match forked {
            Ok(pending) => pending,
            // Its step (`SpawnFailed`) says the restart before the failure.
            Err(e) => return self.spawned(i, Err(e), now),
        };
        failpoint::hit("spawn:after-fork");
        let pid = pending.pid;
        // What the process before it left in the cgroup, killed now that the child is
        // forked (it prepares itself meanwhile) and before it is released.
        self.kill_leftovers_but(i, pid);
        // Into its cgroup before it runs anything (it waits for its release), if it was not
        // created there.
        if let (Some(cg), false) = (&self.cgroups, pending.in_cgroup) {
            let name = &self.entities[i].cfg.name;
            if let Err(e) = cg.enter(name, pid) {
                let msg = format!("{name}: cannot put pid {pid} in its cgroup: {e}");
                self.say_limited("cgroup-enter", format_args!("{msg}"));
            }
        }
        let st = pending
            .start_time
            .or_else(|| procfs::start_time(pid))
            .unwrap_or(0);
        debug_assert!(
            pending.start_time.is_none() || pending.start_time == procfs::start_time(pid),
            "the start time known at the clone is not /proc's"
        );
        {
            let e = &mut self.entities[i];
            e.rec.pid = pid;
            e.rec.start_time = st;
        }
        self.publish(i);
        failpoint::hit("spawn:after-record-pid");
        // The release is recorded before it happens: from here on the child runs even if
        // this HAM dies (it reads this record), and its death is a death.
        {
            let e = &mut self.entities[i];
            e.rec.state = EntityState::Running;
            e.rec.started_mono_ns = now;
            e.rec.started_unix_ns = unix_ns();
        }
        self.publish_record(i);
        // Released without waiting for its `execve` (unless alone, below): meanwhile, what
        // was said about the death it replaces is written and that death's process reaped
        // (see `on_pidfd`), and the other deaths of the same wake-up are handled, their
        // children exec'ing side by side. How the `execve` went is taken up when its status
        // pipe says (`Token::Exec`), or before anything else may look at the entity
        // (`settle_exec`).
        let (pid, pidfd, mut execing) = pending.release_detached();
        // Alone, it is waited for (at most `EXEC_WAIT_NS`: a child someone stopped does not
        // hold the loop) as `vfork` would: asleep, this CPU is the child's at once, with no
        // other CPU to wake, and what follows (the Guardian told, the logs, the reap) does
        // not run ahead of it (the restart's p99 4.18 → 2.83 ms against a child moved to
        // another CPU, the median the same: ARCHITECTURE, *Creating the child*).
        let exec_known = alone && execing.ready_within(EXEC_WAIT_NS);
        self.say_restart();
        // The Guardian watches it from its release on: a HAM that hangs before it takes the
        // `execve` up is still fenced when the process dies (a failed `execve` is a death
        // the HAM handles at once, as `SpawnFailed`).
        self.send_to_guardian(i, pid, st, &pidfd);
        self.after_deaths();
        failpoint::hit("spawn:after-release");
        let watched = !exec_known
            && epoll::add(
                &self.epoll,
                &execing,
                Token::Exec(i).data(),
                epoll::EventFlags::IN,
            )
            .is_ok();
        self.entities[i].exec = Some(Box::new(PendingExec {
            execing,
            pid,
            pidfd,
            started: now,
        }));
        self.execing.push(i);
        if !watched {
            self.settle_exec(i);
        }
    }

    /// Takes up entity `i`'s `execve` (waiting for it if it is not known yet): the rest of
    /// its start ([`Daemon::spawned`]). Nothing to do if none is pending.
    pub(super) fn settle_exec(&mut self, i: EntityId) {
        let Some(p) = self.entities[i].exec.take() else {
            return;
        };
        self.execing.retain(|&j| j != i);
        let _ = epoll::delete(&self.epoll, &p.execing);
        let PendingExec {
            execing,
            pid,
            pidfd,
            started,
        } = *p;
        let result = match execing.finish() {
            Ok(()) => Ok((pid, pidfd)),
            Err(err) => {
                // The child reported the failure and exits: reap it here.
                let _ =
                    rustix::process::waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED);
                Err(err)
            }
        };
        self.spawned(i, result, started);
    }

    /// Entity `i`'s status pipe said something: its `execve` is taken up if that was it
    /// (not the child saying it has a descriptor table of its own).
    pub(super) fn on_exec(&mut self, i: EntityId) {
        if let Some(p) = self.entities[i].exec.as_mut()
            && p.execing.ready()
        {
            self.settle_exec(i);
        }
    }

    /// Takes up every `execve` still pending: before anything but a death is handled, so
    /// that nothing else sees an entity between its release and its `execve`.
    pub(super) fn settle_execs(&mut self) {
        while let Some(&i) = self.execing.first() {
            self.settle_exec(i);
        }
    }

    /// The end of entity `i`'s start, begun at `now`: running (its pidfd watched), or a
    /// failed start retried after its backoff.
    fn spawned(&mut self, i: EntityId, result: io::Result<(i32, OwnedFd)>, now: u64) {
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
                e.rec.started_mono_ns = now;
                e.rec.started_unix_ns = unix_ns();
                e.pidfd = Some(pidfd);
                e.spawn_failures = 0;
                e.last_spawn_error = None;
                let why = super::lifecycle::Why::new("start", "started");
                self.step(i, ham_core::lifecycle::Input::Spawned, &why);
                failpoint::hit("spawn:after-running");
                self.became_running(i, now);
            }
            Err(err) => {
                e.rec.pid = 0;
                e.rec.start_time = 0;
                let msg = format!("cannot start {}: {err}", e.cfg.exec_path.display());
                e.last_spawn_error = Some(msg.clone());
                let why = super::lifecycle::Why::new("start", &msg);
                self.step(i, ham_core::lifecycle::Input::SpawnFailed, &why);
                let e = &self.entities[i];
                let delay =
                    ham_core::duration::format_ns(e.retry_at.unwrap_or(now).saturating_sub(now));
                log(
                    &self.cfg.instance.name,
                    format_args!("{}: {msg}; retrying in {delay}", e.cfg.name),
                );
                self.record(
                    i,
                    None,
                    "start",
                    "backoff",
                    &format!("{msg}; retrying in {delay}"),
                );
            }
        }
    }

    /// Starts entity `i` now if everything it starts `after` is ready, else marks it waiting.
    pub(super) fn start_when_ready(&mut self, i: EntityId) {
        let deps_ready = self.entities[i].cfg.after.iter().all(|&j| {
            let d = &self.entities[EntityId::from_index(j)];
            d.rec.state == EntityState::Running && d.ready
        });
        if deps_ready {
            self.spawn(i);
        } else {
            let why = super::lifecycle::Why::new("start", "waiting for what it starts after");
            self.step(i, ham_core::lifecycle::Input::DepsNotReady, &why);
        }
    }

    /// Starts what earlier turns deferred, within this turn's budget, unless it was asked
    /// otherwise meanwhile (stopped, or the instance is shutting down).
    pub(super) fn run_deferred(&mut self) {
        while self.spawn_budget > 0 {
            let Some((i, restarted)) = self.deferred.pop() else {
                return;
            };
            let e = &mut self.entities[i];
            if e.rec.state != EntityState::Starting || e.rec.pid != 0 || e.wanted != Wanted::Up {
                continue;
            }
            if self.shutdown.is_some() {
                e.pruned_now = 0;
                let why = super::lifecycle::Why::new("operator", "shutting down");
                self.step(i, ham_core::lifecycle::Input::Stop, &why);
                continue;
            }
            self.spawn(i);
            if restarted {
                self.fire_restarted(i);
            }
        }
    }

    /// Entity `i` runs (started or adopted): it is ready now, or at its `ready_after`.
    pub(super) fn became_running(&mut self, i: EntityId, now: u64) {
        let e = &mut self.entities[i];
        // A watchdog counts from now: after a takeover every process is taken as having
        // just petted it, so the takeover itself never looks like a missed beat. A
        // `notify` entity's starts when it says READY=1 (as systemd's), so a slow start-up
        // is not a hang.
        if let Some(ns) = e.cfg.rare.watchdog_ns.filter(|_| !e.cfg.notify || e.ready) {
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
}

/// The QNX-style condition an exit raises.
/// The command line of the restart action an entity has on itself, if one gives one.
pub(super) fn own_restart_command(cfg: &EntityConfig) -> Option<(std::path::PathBuf, Vec<String>)> {
    pub(super) fn find(list: &[Action]) -> Option<(std::path::PathBuf, Vec<String>)> {
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

/// ham's environment as every entity inherits it (without the failpoints', the `HAM_*` and
/// ham's own sd_notify variables), as `NAME=value` strings with the length of each name:
/// built once and shared by every spawn — not copied into each entity (a few KiB each: the
/// bulk of the HAM's heap per entity once), nor formatted again at each start.
fn inherited_env() -> &'static [(usize, CString)] {
    static ENV: std::sync::OnceLock<Vec<(usize, CString)>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        std::env::vars()
            .filter(|(k, _)| !failpoint::ENV.contains(&k.as_str()))
            .filter(|(k, _)| !k.starts_with("HAM_"))
            // ham's own sd_notify variables (if a service manager started it) are not its
            // entities'.
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "NOTIFY_SOCKET" | "WATCHDOG_USEC" | "WATCHDOG_PID"
                )
            })
            // A variable with a NUL byte cannot be passed on (std::env::vars never has one).
            .filter_map(|(k, v)| Some((k.len(), CString::new(format!("{k}={v}")).ok()?)))
            .collect()
    })
}

/// What entity `ec`'s process inherits from ham: [`inherited_env`] less what its own `env`
/// sets (its own variables come after, see [`entity_env`]).
fn inherited_env_for(ec: &EntityConfig) -> impl Iterator<Item = &'static CStr> + '_ {
    inherited_env()
        .iter()
        .filter(move |(klen, var)| {
            ec.rare.env.is_empty()
                || std::str::from_utf8(&var.as_bytes()[..*klen])
                    .is_ok_and(|k| !ec.rare.env.contains_key(k))
        })
        .map(|(_, var)| var.as_c_str())
}

/// What entity `ec`'s environment adds to ham's: its own `env`, and ham's variables.
pub(super) fn entity_env(ec: &EntityConfig, cfg: &Config) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = ec
        .rare
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
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
        if let Some(ns) = ec.rare.watchdog_ns {
            env.push(("WATCHDOG_USEC".into(), (ns / 1000).to_string()));
        }
    }
    env
}

/// `/dev/null`, opened once (at a low number, so a child sharing our descriptor table keeps
/// few: see `sys::spawn`); each child gets a copy (one `fcntl`, not an `open` each time).
fn dev_null() -> io::Result<&'static OwnedFd> {
    static NULL: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    if let Some(fd) = NULL.get() {
        return Ok(fd);
    }
    let fd: OwnedFd = OpenOptions::new().read(true).open("/dev/null")?.into();
    Ok(NULL.get_or_init(|| fd))
}

/// What an entity's child gets: its own process group, stdin from /dev/null, output as
/// configured, and `env` (see [`entity_env`]).
pub(super) fn build_spec(
    ec: &EntityConfig,
    env: &[(String, String)],
    out: Option<&OwnedFd>,
) -> io::Result<SpawnSpec> {
    let mut spec = SpawnSpec::new(&ec.exec_path, &ec.argv, env)?;
    spec.new_process_group();
    spec.user(ec.uid, ec.gid);
    if ec.cores {
        spec.core_unlimited();
    }
    if let Some(dir) = &ec.rare.cwd {
        spec.cwd(dir)?;
    }
    if ec.notify && ec.rare.watchdog_ns.is_some() {
        // As systemd: the watchdog is the main process's, not its children's.
        spec.env_own_pid("WATCHDOG_PID");
    }
    spec.fd_static(dev_null()?, 0);
    match (&ec.output, out) {
        (Output::File(path), _) => {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("opening {}: {e}", path.display()))
                })?;
            spec.fd(f.try_clone()?.into(), 1);
            spec.fd(f.into(), 2);
        }
        (Output::Log(_), Some(w)) => {
            spec.fd(w.try_clone()?, 1);
            spec.fd(w.try_clone()?, 2);
        }
        _ => {}
    }
    Ok(spec)
}
