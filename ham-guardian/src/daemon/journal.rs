//! Condition runs in the state segment's run journal (`ham_core::journal`): every run is
//! published when it is queued, when each action begins, when a command's pid is known
//! (before the command may run), and when it waits; it is cleared when it ends. A
//! successor HAM rebuilds each run from the configuration and its record and carries it on:
//!
//! * a command still running is waited for (its pidfd, checked by start time); one that
//!   ended meanwhile counts as failed, its outcome unknown (its fail list runs);
//! * a command whose pid never reached the journal never ran (the release handshake), so
//!   it is run now;
//! * a delay or a waitfor goes on to its recorded deadline;
//! * any other action that had begun (log, signal, notify, heartbeat-healthy) may or may
//!   not have taken effect: it is not repeated.

use ham_core::LastExit;
use ham_core::journal::{COND_ESCALATION, COND_RUN_NOW, RUN_SLOTS, RunRecord, RunWait};

use super::{Daemon, Deadline, EntityId, Run, RunId, Wait, log};
use crate::actions::{Action, ActionKind, Event};
use crate::{mono_ns, procfs};

/// Why a run fired, as far as its actions' environment and the journal need to know.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct RunEvent {
    pub gone: Option<(i32, LastExit)>,
    pub raise: Option<(String, u32, i64)>,
    pub state: Option<(u32, u32)>,
    /// An escalation's reason.
    pub reason: String,
}

impl RunEvent {
    pub fn of(event: &Event, gone: Option<(i32, LastExit)>) -> Self {
        let mut r = Self {
            gone,
            ..Self::default()
        };
        match event {
            Event::Raise {
                class,
                severity,
                value,
                ..
            } => r.raise = Some((class.clone(), *severity, *value)),
            Event::State { from, to } => r.state = Some((*from, *to)),
            // The core's path is kept (and journaled) as the run's reason.
            Event::Core { path } => r.reason = path.clone(),
            _ => {}
        }
        r
    }
}

/// What became of a command a predecessor forked (its pid was journaled before its
/// release, and its release before it happened).
enum Outcome {
    /// Never released: it exits without running anything (made sure of), or has.
    NeverRan,
    /// Released and still there (running its program, or about to).
    Running(std::os::fd::OwnedFd),
    /// Released, and ended with this wait status (read from its zombie).
    Exited(i32),
    /// Released, gone and reaped: how it ended is not known.
    Unknown,
}

/// Decided from the journal alone, never by waiting to see: a command whose release was
/// not journaled never ran (an orphaned child reads the same record and exits), one whose
/// release was journaled ran, or runs.
fn command_outcome(pid: i32, start_time: u64, released: bool) -> Outcome {
    let pidfd = || {
        rustix::process::Pid::from_raw(pid)
            .filter(|_| procfs::is_alive(pid, start_time))
            .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok())
    };
    if !released {
        // Still waiting for its go byte, or on its way out: make sure it runs nothing.
        if let Some(fd) = pidfd() {
            let _ = rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL);
        }
        return Outcome::NeverRan;
    }
    if let Some(ws) = procfs::zombie_status(pid, start_time) {
        return Outcome::Exited(ws);
    }
    match pidfd() {
        Some(fd) => Outcome::Running(fd),
        None => Outcome::Unknown,
    }
}

/// The synthetic action list of an escalation to a device restart.
fn escalation_actions() -> Vec<Action> {
    vec![Action {
        name: None,
        enabled: true,
        removed: false,
        kind: ActionKind::DeviceRestart,
        break_on_fail: false,
        on_fail: Vec::new(),
        run_now: false,
    }]
}

impl Daemon {
    /// The environment of a condition's actions.
    pub(super) fn run_env(
        &self,
        i: EntityId,
        condition: &str,
        ev: &RunEvent,
    ) -> Vec<(String, String)> {
        let e = &self.entities[i];
        let mut env = vec![
            ("PATH".to_owned(), std::env::var("PATH").unwrap_or_default()),
            ("HAM_INSTANCE".to_owned(), self.cfg.instance.name.clone()),
            ("HAM_ENTITY".to_owned(), e.cfg.name.clone()),
            ("HAM_CONDITION".to_owned(), condition.to_owned()),
        ];
        if e.cfg.notify {
            // As systemd gives its control processes: with `notify_access = "exec"` (or
            // "all") a hook may speak sd_notify for the entity.
            env.push((
                "NOTIFY_SOCKET".to_owned(),
                self.cfg.instance.notify_path().display().to_string(),
            ));
        }
        if let Some((pid, exit)) = ev.gone {
            env.push(("HAM_PID".to_owned(), pid.to_string()));
            match exit {
                LastExit::Code(c) => env.push(("HAM_EXIT_CODE".to_owned(), c.to_string())),
                LastExit::Signal(s) => env.push(("HAM_EXIT_SIGNAL".to_owned(), s.to_string())),
                LastExit::Unknown => env.push(("HAM_EXIT_UNKNOWN".to_owned(), "1".to_owned())),
                LastExit::None => {}
            }
        } else if e.rec.pid > 0 {
            env.push(("HAM_PID".to_owned(), e.rec.pid.to_string()));
        }
        if let Some((class, severity, value)) = &ev.raise {
            env.push(("HAM_RAISE_CLASS".to_owned(), class.clone()));
            env.push(("HAM_RAISE_SEVERITY".to_owned(), severity.to_string()));
            env.push(("HAM_RAISE_VALUE".to_owned(), value.to_string()));
        }
        if let Some((from, to)) = ev.state {
            env.push(("HAM_STATE_FROM".to_owned(), from.to_string()));
            env.push(("HAM_STATE_TO".to_owned(), to.to_string()));
        }
        if !ev.reason.is_empty() {
            let var = if condition == "core" {
                "HAM_CORE"
            } else {
                "HAM_REASON"
            };
            env.push((var.to_owned(), ev.reason.clone()));
        }
        env
    }

    /// Publishes run `id` (allocating its journal slot on first use).
    pub(super) fn journal(&mut self, id: RunId, started: bool) {
        let Some(run) = self.runs.get(&id).filter(|r| r.journaled) else {
            return;
        };
        let slot = match run.jslot {
            Some(s) => s,
            None => {
                let used: std::collections::HashSet<u32> =
                    self.runs.values().filter_map(|r| r.jslot).collect();
                let Some(free) = (0..RUN_SLOTS).find(|s| !used.contains(s)) else {
                    if !self.runs.journal_full_logged {
                        self.runs.journal_full_logged = true;
                        log(
                            &self.cfg.instance.name,
                            format_args!(
                                "the run journal is full ({RUN_SLOTS} runs): further runs are not kept across a takeover"
                            ),
                        );
                    }
                    return;
                };
                free
            }
        };
        let e = &self.entities[run.entity];
        let rec = RunRecord {
            id: id.raw(),
            entity_slot: e.slot.0,
            condition: run.cond,
            independent: run.independent,
            started,
            path: run.stack.iter().map(|(_, at)| *at as u8).collect(),
            in_progress: run.in_progress,
            wait: run.jwait,
            gone: run.event.gone,
            raise: run.event.raise.clone(),
            state: run.event.state,
            reason: run.event.reason.clone(),
        };
        let written = self.writer.publish_run(slot, &rec);
        if self.wrote(written).is_some() {
            if let Some(run) = self.runs.get_mut(&id) {
                run.jslot = Some(slot);
            }
        }
    }

    /// The journal record run `id`'s command will read if this HAM dies before releasing
    /// it (the run is journaled now if it was not yet); `None` if the journal is full.
    pub(super) fn release_record(&mut self, id: RunId) -> Option<&ham_core::journal::RunSlot> {
        self.journal(id, true);
        let slot = self.runs.get(&id)?.jslot?;
        self.writer.segment().run_slot(slot)
    }

    /// A command of run `id` was forked as `pid` and waits for its release: the journal
    /// gets its pid (and start time), then its release, and only then is it released.
    pub(super) fn journal_exec(&mut self, id: RunId, pid: i32, deadline: u64) {
        let start_time = procfs::start_time(pid).unwrap_or(0);
        for released in [false, true] {
            if let Some(run) = self.runs.get_mut(&id) {
                run.jwait = RunWait::Exec {
                    pid,
                    start_time,
                    deadline,
                    released,
                };
            }
            self.journal(id, true);
            if !released {
                crate::failpoint::hit("run:after-exec-pid");
            }
        }
    }

    pub(super) fn unjournal(&mut self, run: &Run) {
        if let Some(slot) = run.jslot {
            self.wrote(self.writer.clear_run(slot));
        }
    }

    /// A recovery policy escalated to a device restart for entity `i`: journaled as a run
    /// before the record's pending flag is cleared, then run. (The flag was published with
    /// the decision; see `apply`.)
    pub(super) fn escalate(&mut self, i: EntityId, reason: String, gone: Option<(i32, LastExit)>) {
        let id = self.next_run_id();
        let event = RunEvent {
            gone,
            reason,
            ..RunEvent::default()
        };
        let env = self.run_env(i, "escalation", &event);
        self.runs.add(
            id,
            Run {
                entity: i,
                condition: "escalation",
                env,
                stack: vec![(escalation_actions(), 0)],
                waiting: None,
                independent: true,
                cond: COND_ESCALATION,
                event,
                jslot: None,
                in_progress: false,
                jwait: RunWait::None,
                journaled: true,
            },
        );
        crate::failpoint::hit("escalate:before-journal");
        self.journal(id, true);
        crate::failpoint::hit("escalate:after-journal");
        self.entities[i].rec.device_restart_pending = false;
        self.publish(i);
        self.advance(id);
    }

    /// The action lists of a journaled run, rebuilt from the configuration; `None` if the
    /// configuration no longer has them (it changed across a warm start).
    fn rebuild_stack(&self, i: EntityId, rec: &RunRecord) -> Option<Vec<(Vec<Action>, usize)>> {
        let e = &self.entities[i];
        let base: Vec<Action> = match rec.condition {
            COND_RUN_NOW => e
                .cfg
                .conditions
                .iter()
                .flat_map(|c| c.actions.iter().filter(|a| a.run_now).cloned())
                .collect(),
            COND_ESCALATION => escalation_actions(),
            k => e.cfg.conditions.get(k as usize)?.actions.clone(),
        };
        let mut stack: Vec<(Vec<Action>, usize)> = Vec::new();
        let mut list = base;
        let depth = rec.path.len().max(1);
        for d in 0..depth {
            let at = rec.path.get(d).copied().unwrap_or(0) as usize;
            if at > list.len() {
                return None;
            }
            let next = if d + 1 < depth {
                Some(list.get(at.checked_sub(1)?)?.on_fail.clone())
            } else {
                None
            };
            stack.push((std::mem::take(&mut list), at));
            match next {
                Some(n) => list = n,
                None => break,
            }
        }
        Some(stack)
    }

    /// After a takeover or a warm start: carries on every run the journal holds, then
    /// starts the escalations a predecessor decided but did not journal.
    pub(super) fn resume_runs(&mut self) {
        let mut runs: Vec<(u32, RunRecord)> = Vec::new();
        for (slot, rec) in self.writer.segment().runs() {
            match rec {
                Ok(r) => runs.push((slot, r)),
                Err(e) => {
                    log(
                        &self.cfg.instance.name,
                        format_args!("run journal slot {slot}: {e}; dropped"),
                    );
                    self.wrote(self.writer.clear_run(slot));
                }
            }
        }
        // Firing order: ids grow (wrapping is not a concern for a journal of 128).
        runs.sort_by_key(|(_, r)| r.id);
        let mut escalating = std::collections::HashSet::new();
        for (slot, rec) in runs {
            let Some(i) = self.find_entity(|e| e.slot.0 == rec.entity_slot) else {
                self.wrote(self.writer.clear_run(slot));
                continue;
            };
            let Some(stack) = self.rebuild_stack(i, &rec) else {
                log(
                    &self.cfg.instance.name,
                    format_args!(
                        "{}: a run left by the previous HAM no longer matches the configuration; dropped",
                        self.entities[i].cfg.name
                    ),
                );
                self.wrote(self.writer.clear_run(slot));
                continue;
            };
            if rec.condition == COND_ESCALATION {
                escalating.insert(i);
            }
            let condition: &'static str = match rec.condition {
                COND_RUN_NOW => "run-now",
                COND_ESCALATION => "escalation",
                k => self.entities[i].cfg.conditions[k as usize].trigger.name(),
            };
            let event = RunEvent {
                gone: rec.gone,
                raise: rec.raise.clone(),
                state: rec.state,
                reason: rec.reason.clone(),
            };
            let env = self.run_env(i, condition, &event);
            let id = RunId::from_raw(rec.id);
            self.runs.numbered_after(id);
            let starts = self.runs.add(
                id,
                Run {
                    entity: i,
                    condition,
                    env,
                    stack,
                    waiting: None,
                    independent: rec.independent,
                    cond: rec.condition,
                    event,
                    jslot: Some(slot),
                    in_progress: rec.in_progress,
                    jwait: rec.wait,
                    journaled: true,
                },
            );
            if !starts {
                continue; // queued behind the entity's earlier run
            }
            self.resume_run(id, &rec);
        }
        for i in EntityId::all(self.entities.len()) {
            if self.entities[i].rec.device_restart_pending && !escalating.contains(&i) {
                let reason = format!(
                    "{}: services cannot be restored (decided by the previous HAM)",
                    self.entities[i].cfg.name
                );
                self.escalate(i, reason, None);
            }
        }
    }

    /// Runs the current action of run `id` again (it never ran).
    fn redo(&mut self, id: RunId) {
        if let Some(run) = self.runs.get_mut(&id) {
            if let Some((_, at)) = run.stack.last_mut() {
                *at = at.saturating_sub(1);
            }
        }
        self.advance(id);
    }

    /// Carries one journaled run on from its record.
    fn resume_run(&mut self, id: RunId, rec: &RunRecord) {
        let Some(run) = self.runs.get(&id) else {
            return;
        };
        let (i, cond) = (run.entity, run.condition);
        let current = run
            .stack
            .last()
            .and_then(|(list, at)| at.checked_sub(1).and_then(|k| list.get(k)).cloned());
        let name = self.entities[i].cfg.name.clone();
        log(
            &self.cfg.instance.name,
            format_args!("{name}: carrying on a `{cond}` run left by the previous HAM"),
        );
        let (true, Some(action)) = (rec.in_progress && rec.started, current) else {
            // Queued, or between actions: it goes on from here.
            self.advance(id);
            return;
        };
        let now = mono_ns();
        match (rec.wait, &action.kind) {
            (
                RunWait::Exec {
                    pid,
                    start_time,
                    deadline,
                    released,
                },
                kind @ (ActionKind::Execute { .. } | ActionKind::DeviceRestart),
            ) => match command_outcome(pid, start_time, released) {
                Outcome::NeverRan => self.redo(id),
                Outcome::Running(pidfd) if matches!(kind, ActionKind::Execute { .. }) => {
                    self.wait_exec(id, pid, pidfd, deadline, action);
                }
                Outcome::Exited(ws) if matches!(kind, ActionKind::Execute { .. }) => {
                    match super::decode_wait_status(ws) {
                        LastExit::Code(0) => {
                            self.run_record(id, "execute", &format!("pid {pid} exited 0"));
                        }
                        other => {
                            let why = format!("pid {pid} {}", super::describe(other));
                            self.action_failed(id, &action, "execute", &why);
                        }
                    }
                    self.advance(id);
                }
                Outcome::Unknown if matches!(kind, ActionKind::Execute { .. }) => {
                    let why = format!("pid {pid} ended while no HAM watched it: outcome unknown");
                    self.action_failed(id, &action, "execute", &why);
                    self.advance(id);
                }
                _ => {
                    // A device restart that ran (or may have: it is not repeated).
                    let what = format!("pid {pid}, started by the previous HAM");
                    self.run_record(id, "device-restart", &what);
                    self.advance(id);
                }
            },
            (RunWait::None, ActionKind::Execute { .. } | ActionKind::DeviceRestart) => {
                // Begun, but its pid never reached the journal: it was never released into
                // its program. Run it now.
                self.redo(id);
            }
            (RunWait::Delay { until }, ActionKind::Delay { .. }) => {
                let until = until.max(now);
                if let Some(run) = self.runs.get_mut(&id) {
                    run.waiting = Some(Wait::Delay { until });
                }
                self.schedule(until, Deadline::Action(id));
            }
            (RunWait::Path { deadline }, ActionKind::WaitFor { path, .. }) => {
                // Look now; the usual polling (and the recorded deadline) go on from there.
                if let Some(run) = self.runs.get_mut(&id) {
                    run.waiting = Some(Wait::Path {
                        path: path.clone(),
                        deadline,
                        next: now,
                    });
                }
                self.schedule(now, Deadline::Action(id));
            }
            (_, kind) => {
                let what = format!("{}: interrupted by a takeover; not repeated", kind.name());
                self.record(i, None, cond, kind.name(), &what);
                self.advance(id);
            }
        }
    }
}
