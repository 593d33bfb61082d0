//! Condition runs: firing conditions and interpreting their actions.

use super::*;

/// A condition run's id: its key in `Daemon::runs`, its epoll token and deadline, and its
/// id in the run journal (a successor goes on numbering after the highest it finds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct RunId(u32);

impl RunId {
    pub(super) fn raw(self) -> u32 {
        self.0
    }

    pub(super) fn from_raw(raw: u32) -> Self {
        Self(raw)
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "run {}", self.0)
    }
}

/// Condition runs (running or queued) one entity may have open: a detector raising in a
/// loop must not grow ham without bound. Further firings are dropped and counted.
pub(super) const RUNS_PER_ENTITY: usize = 16;

/// The actions of one fired condition, as a stack of lists (a fail list is pushed on top of
/// the list whose action failed).
pub(super) struct Run {
    pub(super) entity: EntityId,
    pub(super) condition: &'static str,
    pub(super) env: Vec<(String, String)>,
    pub(super) stack: Vec<(Vec<Action>, usize)>,
    pub(super) waiting: Option<Wait>,
    pub(super) independent: bool,
    /// Which condition (its index, or `journal::COND_*`) and why: what the journal keeps.
    pub(super) cond: u8,
    pub(super) event: journal::RunEvent,
    /// Its journal slot, and what the journal last said of its current action.
    pub(super) jslot: Option<u32>,
    pub(super) in_progress: bool,
    pub(super) jwait: ham_core::journal::RunWait,
    /// Kept in the run journal (see `run_now`).
    pub(super) journaled: bool,
}

pub(super) enum Wait {
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

/// How often a `waitfor` action looks for its path.
pub(super) const WAITFOR_EVERY_NS: u64 = 20_000_000;

/// The condition runs in progress or queued: each entity's runs that are not `independent`
/// run one after another in the order they fired (a queue per entity, whose first run is
/// the one running), and the commands they wait for, by pid.
#[derive(Default)]
pub(super) struct Runs {
    active: HashMap<RunId, Run>,
    next: u32,
    queues: HashMap<EntityId, std::collections::VecDeque<RunId>>,
    exec_pids: HashMap<i32, RunId>,
    /// The run journal was full, and the log said so.
    pub(super) journal_full_logged: bool,
}

impl Runs {
    /// A run id no run in progress has: the counter wraps after 2^32 runs, and skips ids
    /// still in use (there are at most `RUNS_PER_ENTITY` per entity).
    pub(super) fn next_id(&mut self) -> RunId {
        loop {
            let id = RunId(self.next);
            self.next = self.next.wrapping_add(1);
            if !self.active.contains_key(&id) {
                return id;
            }
        }
    }

    /// New ids come after `id` (a successor goes on numbering after its predecessor's).
    pub(super) fn numbered_after(&mut self, id: RunId) {
        self.next = self.next.max(id.0.wrapping_add(1));
    }

    /// Adds `run` as `id`. Returns whether it starts now: it is independent, or the first
    /// of its entity's queue.
    pub(super) fn add(&mut self, id: RunId, run: Run) -> bool {
        let (i, independent) = (run.entity, run.independent);
        self.active.insert(id, run);
        if independent {
            return true;
        }
        let queue = self.queues.entry(i).or_default();
        queue.push_back(id);
        queue.len() == 1
    }

    /// Run `id` is over: it, and the next queued run of its entity (which starts now).
    pub(super) fn end(&mut self, id: RunId) -> Option<(Run, Option<RunId>)> {
        let run = self.active.remove(&id)?;
        if run.independent {
            return Some((run, None));
        }
        let next = self.queues.get_mut(&run.entity).and_then(|q| {
            q.retain(|&r| r != id);
            q.front().copied()
        });
        Some((run, next))
    }

    /// The runs of entity `i` (for its removal).
    pub(super) fn of(&self, i: EntityId) -> Vec<RunId> {
        self.active
            .iter()
            .filter(|(_, r)| r.entity == i)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Entity `i` is gone: its queue with it (its runs are ended one by one).
    pub(super) fn forget_queue(&mut self, i: EntityId) {
        self.queues.remove(&i);
    }

    /// Whether entity `i` has [`RUNS_PER_ENTITY`] runs open (running or queued). Counted
    /// only when the runs of all entities together could reach it.
    pub(super) fn at_quota(&self, i: EntityId) -> bool {
        self.active.len() >= RUNS_PER_ENTITY
            && self.active.values().filter(|r| r.entity == i).count() >= RUNS_PER_ENTITY
    }

    pub(super) fn get(&self, id: &RunId) -> Option<&Run> {
        self.active.get(id)
    }

    pub(super) fn get_mut(&mut self, id: &RunId) -> Option<&mut Run> {
        self.active.get_mut(id)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Run> {
        self.active.values()
    }

    /// Run `id` waits for the command `pid`.
    pub(super) fn exec_started(&mut self, pid: i32, id: RunId) {
        self.exec_pids.insert(pid, id);
    }

    pub(super) fn exec_ended(&mut self, pid: i32) {
        self.exec_pids.remove(&pid);
    }

    /// The run that waits for the command `pid`.
    pub(super) fn waiting_for(&self, pid: i32) -> Option<RunId> {
        self.exec_pids.get(&pid).copied()
    }
}

impl std::ops::Index<&RunId> for Runs {
    type Output = Run;
    fn index(&self, id: &RunId) -> &Run {
        &self.active[id]
    }
}

impl Daemon {
    pub(super) fn next_run_id(&mut self) -> RunId {
        self.runs.next_id()
    }

    /// Fires the conditions of entity `i` that match `event`: each matching condition's
    /// actions start as a run of their own.
    pub(super) fn fire(&mut self, i: EntityId, event: Event, gone: Option<(i32, LastExit)>) {
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
            let id = self.next_run_id();
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
                self.wrote(self.writer.bump_limit(ham_core::layout::LIMIT_RUNS));
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
    pub(super) fn at_run_quota(&self, i: EntityId) -> bool {
        self.runs.at_quota(i)
    }

    /// Actions flagged `run_now` run once when the instance starts cold (QNX
    /// `HACTIONDONOW`), as well as when their condition fires. A takeover or a warm start
    /// does not run them again.
    pub(super) fn run_now_actions(&mut self) {
        for i in EntityId::all(self.entities.len()) {
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
    pub(super) fn run_now(&mut self, i: EntityId, actions: Vec<Action>, journaled: bool) {
        let env = self.run_env(i, "run-now", &journal::RunEvent::default());
        let id = self.next_run_id();
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
    pub(super) fn start_run(&mut self, id: RunId, run: Run) {
        if !self.runs.add(id, run) {
            self.journal(id, false); // queued: a successor queues it again
            return; // it starts when the one before it ends
        }
        self.advance(id);
    }

    /// Run `id` is over: the next queued run of its entity starts.
    pub(super) fn end_run(&mut self, id: RunId) {
        let Some((run, next)) = self.runs.end(id) else {
            return;
        };
        self.unjournal(&run);
        if let Some(next) = next {
            self.advance(next);
        }
    }

    /// The conditions of entity `i` that `event` fires, with their indices: enabled, not
    /// pruned (those pruned by the restart this event is about still fire for it), matching.
    pub(super) fn matching_indexed<'a>(
        &'a self,
        i: EntityId,
        event: &'a Event,
    ) -> impl Iterator<Item = (usize, &'a Condition)> + 'a {
        let e = &self.entities[i];
        let disarmed = e.rec.disarmed & !e.pruned_now;
        e.cfg.conditions.iter().enumerate().filter(move |(k, c)| {
            c.enabled && (*k >= 64 || disarmed & (1 << k) == 0) && c.trigger.matches(event)
        })
    }

    /// [`matching_indexed`](Self::matching_indexed) without the indices.
    pub(super) fn matching<'a>(
        &'a self,
        i: EntityId,
        event: &'a Event,
    ) -> impl Iterator<Item = &'a Condition> + 'a {
        self.matching_indexed(i, event).map(|(_, c)| c)
    }

    /// Runs the actions of run `id` until one has to wait (a command, a delay) or none is left.
    pub(super) fn advance(&mut self, id: RunId) {
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
                    Ok(what) => self.run_record(id, action.kind.name(), &what),
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
                    self.run_record(id, "log", message);
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
                        self.run_record(id, "waitfor", &what);
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
                    // A target restarted by the same wake-up is signalled past its `execve`.
                    self.settle_exec(EntityId::from_index(*entity));
                    let target = &self.entities[EntityId::from_index(*entity)];
                    if target.pidfd.is_some() && target.rec.state.has_process() {
                        signal_entity(target, *signal);
                        let what = format!("signal {signal} to {}", target.cfg.name);
                        self.run_record(id, "signal", &what);
                    } else {
                        let why = format!("{} is not running", target.cfg.name);
                        self.action_failed(id, &action, "signal", &why);
                    }
                }
                ActionKind::DeviceRestart => {
                    let run = &self.runs[&id];
                    let reason = if run.event.reason.is_empty() {
                        format!("{name}: {cond}")
                    } else {
                        run.event.reason.clone()
                    };
                    let result = self.device_restart(&reason, Some(id));
                    if result.starts_with("running") {
                        self.run_record(id, "device-restart", &result);
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
    pub(super) fn wait_exec(
        &mut self,
        id: RunId,
        pid: i32,
        pidfd: OwnedFd,
        deadline: u64,
        action: Action,
    ) {
        let _ = epoll::add(
            &self.epoll,
            &pidfd,
            Token::Action(id).data(),
            epoll::EventFlags::IN,
        );
        self.runs.exec_started(pid, id);
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
    pub(super) fn action_failed(&mut self, id: RunId, action: &Action, what: &str, why: &str) {
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
        self.run_record(id, what, &format!("failed: {why}"));
    }

    /// A command run by an action exited.
    pub(super) fn on_action_exit(&mut self, id: RunId) {
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
        self.runs.exec_ended(pid);
        if status == LastExit::Code(0) {
            self.run_record(id, "execute", &format!("pid {pid} exited 0"));
        } else {
            let why = format!("pid {pid} {}", describe(status));
            self.action_failed(id, &action, "execute", &why);
        }
        self.advance(id);
    }

    /// A delay ended, or a command ran past its timeout (it is killed; its exit reports the
    /// failure).
    pub(super) fn on_action_timer(&mut self, id: RunId, at: u64) {
        let Some(run) = self.runs.get_mut(&id) else {
            return;
        };
        match &run.waiting {
            Some(Wait::Delay { until }) if *until == at => {
                run.waiting = None;
                self.run_record(id, "delay", "waited");
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
                if path.exists() {
                    run.waiting = None;
                    let what = format!("{} exists", path.display());
                    self.run_record(id, "waitfor", &what);
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

    /// Appends a condition run's line to the process log: the condition by its type and,
    /// if it has one, its name; the pid of the death that fired it.
    pub(super) fn run_record(&mut self, id: RunId, action: &str, result: &str) {
        let Some(run) = self.runs.get(&id) else {
            return;
        };
        let (i, kind, gone) = (run.entity, run.condition, run.event.gone);
        let named = self.entities[i]
            .cfg
            .conditions
            .get(usize::from(run.cond))
            .and_then(|c| c.name.as_deref());
        let name = named.map(str::to_owned);
        self.record_named(i, gone, kind, name, action, result);
    }

    /// Appends a line about the pair itself (takeovers, Guardians, warm starts) to the
    /// process log, under the entity name `[ham]` (no entity can be named so).
    pub(super) fn record_ham(
        &mut self,
        pid: Option<i32>,
        condition: &str,
        action: &str,
        result: &str,
    ) {
        let rec = LogRecord {
            time_unix_ms: unix_ns() / 1_000_000,
            entity: crate::proclog::HAM_ENTRY.to_owned(),
            pid,
            exit: None,
            condition: condition.to_owned(),
            name: None,
            action: action.to_owned(),
            result: result.to_owned(),
        };
        self.plog.append(&rec);
    }

    /// Appends to the process log.
    pub(super) fn record(
        &mut self,
        i: EntityId,
        gone: Option<(i32, LastExit)>,
        condition: &str,
        action: &str,
        result: &str,
    ) {
        self.record_named(i, gone, condition, None, action, result);
    }

    fn record_named(
        &mut self,
        i: EntityId,
        gone: Option<(i32, LastExit)>,
        condition: &str,
        name: Option<String>,
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
            name,
            action: action.to_owned(),
            result: result.to_owned(),
        };
        self.plog.append(&rec);
    }

    /// A `restart` action: an automatic restart of entity `j`. One without a process goes
    /// through its recovery policy and back-off like any automatic restart after a death
    /// (a client that dies at once is held off, not restarted in a loop); a running one is
    /// stopped and started again.
    pub(super) fn restart_asked(&mut self, j: EntityId, cond: &str) {
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
    pub(super) fn hold_off(&mut self, j: EntityId, until: u64) {
        let why = lifecycle::Why::new("condition", "a condition asked").until(until);
        self.step(j, ham_core::lifecycle::Input::HoldOff, &why);
        let wait = ham_core::duration::format_ns(until.saturating_sub(mono_ns()));
        self.record(j, None, "condition", "hold-off", &format!("for {wait}"));
    }

    /// Fires the `restart` conditions of entity `i` if its restart got it running.
    pub(super) fn fire_restarted(&mut self, i: EntityId) {
        if let Some(d) = self.deferred.find(i) {
            d.1 = true; // it fires once the deferred spawn has it running
            return;
        }
        let e = &self.entities[i];
        if e.rec.state == EntityState::Running {
            // Now, not the exit's time: the stamp of this restart is newer than the exit.
            let restarted = Event::Restart {
                restarts: e.rec.restart_stamps.clone(),
                now: mono_ns(),
            };
            // As QNX's CONDRESTART: about the new process (HAM_PID is its pid).
            self.fire(i, restarted, None);
        }
        self.entities[i].pruned_now = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(entity: usize, independent: bool) -> Run {
        Run {
            entity: EntityId::from_index(entity),
            condition: "death",
            env: Vec::new(),
            stack: Vec::new(),
            waiting: None,
            independent,
            cond: 0,
            event: journal::RunEvent::default(),
            jslot: None,
            in_progress: false,
            jwait: ham_core::journal::RunWait::None,
            journaled: false,
        }
    }

    #[test]
    fn an_entitys_runs_go_one_after_another_in_firing_order() {
        let mut runs = Runs::default();
        let (a, b, c) = (runs.next_id(), runs.next_id(), runs.next_id());
        assert!(runs.add(a, run(0, false)), "the first starts");
        assert!(!runs.add(b, run(0, false)), "queued behind a");
        assert!(!runs.add(c, run(0, false)), "queued behind b");
        // Another entity's, and an independent one, start at once.
        let (d, e) = (runs.next_id(), runs.next_id());
        assert!(runs.add(d, run(1, false)));
        assert!(runs.add(e, run(0, true)));
        assert_eq!(runs.end(e).map(|(_, next)| next), Some(None));
        assert_eq!(runs.end(a).map(|(_, next)| next), Some(Some(b)));
        assert_eq!(runs.end(b).map(|(_, next)| next), Some(Some(c)));
        assert_eq!(runs.end(c).map(|(_, next)| next), Some(None));
        assert!(runs.end(c).is_none(), "ended once");
        assert_eq!(runs.of(EntityId::from_index(1)), [d]);
    }

    #[test]
    fn a_forgotten_queue_starts_nothing_more() {
        let mut runs = Runs::default();
        let (a, b) = (runs.next_id(), runs.next_id());
        runs.add(a, run(0, false));
        runs.add(b, run(0, false));
        runs.forget_queue(EntityId::from_index(0));
        assert_eq!(runs.end(a).map(|(_, next)| next), Some(None));
    }

    #[test]
    fn ids_skip_runs_still_in_progress_when_the_counter_wraps() {
        let mut runs = Runs::default();
        runs.numbered_after(RunId(u32::MAX - 1));
        let last = runs.next_id();
        assert_eq!(last, RunId(u32::MAX));
        runs.add(last, run(0, true));
        let zero = runs.next_id();
        runs.add(zero, run(0, true));
        assert_eq!(zero, RunId(0));
        // Both ends of the wrap are in use: the next free one.
        runs.next = u32::MAX;
        assert_eq!(runs.next_id(), RunId(1), "MAX and 0 are in use");
    }

    #[test]
    fn the_quota_counts_an_entitys_open_runs() {
        let mut runs = Runs::default();
        for _ in 0..RUNS_PER_ENTITY - 1 {
            let id = runs.next_id();
            runs.add(id, run(0, false));
        }
        assert!(!runs.at_quota(EntityId::from_index(0)));
        let id = runs.next_id();
        runs.add(id, run(0, true));
        assert!(runs.at_quota(EntityId::from_index(0)));
        assert!(!runs.at_quota(EntityId::from_index(1)));
    }

    #[test]
    fn commands_are_found_by_pid_until_they_end() {
        let mut runs = Runs::default();
        let id = runs.next_id();
        runs.exec_started(42, id);
        assert_eq!(runs.waiting_for(42), Some(id));
        runs.exec_ended(42);
        assert_eq!(runs.waiting_for(42), None);
    }
}
