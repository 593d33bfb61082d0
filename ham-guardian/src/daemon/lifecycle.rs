//! Carrying out an entity's lifecycle (`ham_core::lifecycle`): an input goes through the
//! pure table, the entity takes the state and intent it gives, and its effects run here, in
//! order. The recovery policy is asked from here too (`Effect::Recover`), and its answer goes
//! back through the table.

use ham_core::LastExit;
use ham_core::engine::Decision;
use ham_core::lifecycle::{self, Effect, Input, Recovery};
use ham_core::policy::Wanted;

use super::{Daemon, Deadline, EntityId, log, signal_entity};
use crate::{failpoint, mono_ns};

/// A restart counted and published, its lines not said yet (see `Daemon::say_restart`).
pub(super) struct RestartSaid {
    i: EntityId,
    n: u32,
    stateless: bool,
    gone: Option<(i32, LastExit)>,
    cond: String,
    text: String,
}

/// Why an input happens, for the effects that log, record or wait.
pub(super) struct Why<'a> {
    /// The process that is gone and how, when a death caused it.
    pub gone: Option<(i32, LastExit)>,
    /// The condition name for the process log (`death`, `operator`, `hold-off-over`, …).
    pub cond: &'a str,
    /// What happened, for ham's log (`pid 12 killed by signal 9`, `a condition asked`).
    pub text: &'a str,
    /// A hold-off's deadline (`ArmHoldOff`).
    pub hold_until: u64,
    /// The restart is stateless (a stage of an NX-OS-style policy).
    pub stateless: bool,
    /// The death an `Exit` is, for its effects (`RecordExit`, `RestartGroup`, `FireDeath`).
    pub death: Option<&'a Death>,
}

/// What an exit's last effects need to know of the death.
pub(super) struct Death {
    /// For the death's conditions.
    pub event: crate::actions::Event,
    /// The intent it died under (the step changes it).
    pub wanted: Wanted,
    /// A `hold-off` action's duration, if one stopped it.
    pub hold: Option<u64>,
    /// Its restart mode restarts it after this exit (else it stays down).
    pub restartable: bool,
    /// Its restart mode, for the process log.
    pub mode: &'static str,
    /// Its automatic restarts before this death (a restart of its own restarts its group).
    pub restarts_before: u32,
}

impl<'a> Why<'a> {
    pub fn new(cond: &'a str, text: &'a str) -> Self {
        Self {
            gone: None,
            cond,
            text,
            hold_until: 0,
            stateless: false,
            death: None,
        }
    }
    pub fn death(mut self, death: &'a Death) -> Self {
        self.death = Some(death);
        self
    }
    pub fn gone(mut self, gone: Option<(i32, LastExit)>) -> Self {
        self.gone = gone;
        self
    }
    pub fn until(mut self, at: u64) -> Self {
        self.hold_until = at;
        self
    }
}

impl Daemon {
    /// Feeds `input` to entity `i`'s lifecycle and carries out the effects, then fires its
    /// `restart` conditions if they asked to (after the event that led here has fired its
    /// own: a death's conditions come first; never while shutting down).
    pub(super) fn step(&mut self, i: EntityId, input: Input, why: &Why) {
        if self.step_effects(i, input, why) && self.shutdown.is_none() {
            self.fire_restarted(i);
        }
    }

    /// [`Daemon::step`] without firing the `restart` conditions: returns whether they are
    /// to fire (for a step inside another, the recovery's answer to an exit).
    fn step_effects(&mut self, i: EntityId, input: Input, why: &Why) -> bool {
        // What a step says comes after a restart counted before it.
        self.say_restart();
        // An entity whose `execve` is pending is settled first: what comes next acts on a
        // started process or a failed start, not on the release in between.
        if !matches!(input, Input::Spawned | Input::SpawnFailed) {
            self.settle_exec(i);
        }
        let e = &mut self.entities[i];
        let next = lifecycle::step(e.rec.state, e.wanted, input);
        e.rec.state = next.state;
        e.wanted = next.wanted;
        let mut fire_restart = false;
        // A restart counted, logged once its record is out.
        let mut restarted = None;
        for effect in next.effects {
            match effect {
                Effect::Publish => {
                    self.publish(i);
                    if let Some(n) = restarted.take() {
                        failpoint::hit("exit:after-record");
                        // Said once the replacement is released (`say_restart`), not before
                        // its fork: three lines formatted were 15 µs of the restart's path.
                        self.say_restart();
                        self.restart_unsaid = Some(RestartSaid {
                            i,
                            n,
                            stateless: why.stateless,
                            gone: why.gone,
                            cond: why.cond.to_owned(),
                            text: why.text.to_owned(),
                        });
                    }
                }
                Effect::CountStart => {
                    let e = &mut self.entities[i];
                    e.rec.starts += 1;
                    e.rec.restart_kind = ham_core::layout::RestartKind::First;
                }
                Effect::CountRestart => {
                    restarted = Some(self.count_restart(i));
                    self.entities[i].rec.restart_kind = if why.stateless {
                        // Its next process starts from an empty checkpoint store, and with
                        // no message waiting.
                        self.pss_clear(i);
                        self.mts_drop(i);
                        ham_core::layout::RestartKind::Stateless
                    } else {
                        ham_core::layout::RestartKind::Stateful
                    };
                }
                Effect::Spawn => self.spawn(i),
                Effect::ArmStopKill => {
                    let e = &mut self.entities[i];
                    let deadline = mono_ns() + e.cfg.stop_timeout_ns;
                    e.stop_deadline = Some(deadline);
                    // A successor that finds it `stopping` finishes what was asked.
                    e.rec.restart_pending =
                        matches!(e.wanted, Wanted::Restart | Wanted::AutoRestart);
                    e.rec.restart_automatic = e.wanted == Wanted::AutoRestart;
                    self.schedule(deadline, Deadline::StopKill(i));
                }
                Effect::ArmRetry => {
                    // 100 ms, doubling to 5 s: a missing program is no busy loop.
                    let e = &mut self.entities[i];
                    e.spawn_failures += 1;
                    let at = mono_ns() + ham_core::policy::spawn_retry_delay_ns(e.spawn_failures);
                    e.retry_at = Some(at);
                    self.schedule(at, Deadline::Retry(i));
                }
                Effect::MarkAutoRestart => {
                    let e = &mut self.entities[i];
                    e.rec.restart_pending = true;
                    e.rec.restart_automatic = true;
                }
                Effect::ArmHoldOff => {
                    let e = &mut self.entities[i];
                    e.retry_at = None;
                    e.rec.policy.held_until = why.hold_until;
                    self.schedule(why.hold_until, Deadline::HoldOff(i));
                }
                Effect::SignalStop => {
                    failpoint::hit("stop:after-record");
                    let e = &self.entities[i];
                    signal_entity(e, e.cfg.stop_signal);
                    failpoint::hit("stop:after-signal");
                }
                Effect::SignalAbort => signal_entity(&self.entities[i], libc::SIGABRT),
                Effect::SignalKill => {
                    signal_entity(&self.entities[i], libc::SIGKILL);
                    self.kill_cgroup(i);
                }
                Effect::Recover => fire_restart |= self.recover(i, why),
                Effect::FireRestart => fire_restart = true,
                Effect::AnswerWaiters => self.answer_waiters(i),
                Effect::RecordExit => {
                    if let Some(d) = why.death {
                        self.record_exit(i, d, why);
                    }
                }
                Effect::RestartGroup => {
                    let restarted = self.entities[i].rec.restarts;
                    if why
                        .death
                        .is_some_and(|d| d.wanted == Wanted::Up && restarted > d.restarts_before)
                    {
                        self.restart_group(i);
                    }
                }
                Effect::FireDeath => {
                    if let Some(d) = why.death.filter(|_| self.shutdown.is_none()) {
                        self.fire(i, d.event.clone(), why.gone);
                    }
                }
            }
        }
        // Unless its spawn said it already (or there was none).
        self.say_restart();
        fire_restart
    }

    /// Asks entity `i`'s recovery policy (and back-off) what follows (`engine::recover`,
    /// pure: its memory goes into the record the step publishes), and carries it out
    /// through the lifecycle. Returns whether `restart` conditions are to fire.
    pub(super) fn recover(&mut self, i: EntityId, why: &Why) -> bool {
        let now = mono_ns();
        let e = &mut self.entities[i];
        let lifetime = now.saturating_sub(e.rec.started_mono_ns);
        let (mem, decision) = ham_core::engine::recover(
            &e.cfg.policy,
            e.cfg.rare.backoff.as_ref(),
            &e.rec.policy,
            lifetime,
            now,
        );
        e.rec.policy = mem;
        self.carry_out(i, decision, why)
    }

    fn carry_out(&mut self, i: EntityId, decision: Decision, why: &Why) -> bool {
        let name = self.entities[i].cfg.name.clone();
        let text = why.text;
        match decision {
            Decision::Restart { stateless } => {
                let why = Why {
                    stateless,
                    gone: why.gone,
                    ..Why::new(why.cond, why.text)
                };
                self.step_effects(i, Input::Recovered(Recovery::Restart), &why)
            }
            Decision::HoldOff { until } => {
                let wait = ham_core::duration::format_ns(until.saturating_sub(mono_ns()));
                say!(
                    self,
                    "{name}: {text}; held off for {wait} by its recovery policy"
                );
                let held = Why::new(why.cond, why.text).gone(why.gone).until(until);
                let fire = self.step_effects(i, Input::Recovered(Recovery::HoldOff), &held);
                self.record(i, why.gone, why.cond, "hold-off", &format!("for {wait}"));
                fire
            }
            Decision::DeviceRestart { otherwise } => {
                // The fallback is recorded first, with the escalation flagged in the same
                // record: whatever becomes of this HAM, the device restart is not lost
                // (a successor journals and runs it) and runs once (see `escalate`).
                self.entities[i].rec.device_restart_pending = true;
                let fire = self.carry_out(i, otherwise.as_decision(), why);
                let reason = format!("{name}: services cannot be restored ({text})");
                self.escalate(i, reason, why.gone);
                fire
            }
            Decision::GiveUp => {
                say!(
                    self,
                    "{name}: {text}; its recovery policy gives up (hamctl start {name} to try again)"
                );
                let fire = self.step_effects(i, Input::Recovered(Recovery::GiveUp), why);
                self.record(i, why.gone, why.cond, "give-up", "left down");
                fire
            }
        }
    }

    /// The process log's line for an exit that is not a restart (`Effect::RecordExit`).
    fn record_exit(&mut self, i: EntityId, d: &Death, why: &Why) {
        let gone = why.gone;
        match d.wanted {
            Wanted::Restart => self.record(i, gone, "operator", "restart", "as asked"),
            // A `hold-off` action: down for a while, then an automatic restart.
            Wanted::Down => match d.hold {
                Some(ns) => {
                    let wait = ham_core::duration::format_ns(ns);
                    self.record(i, None, "condition", "hold-off", &format!("for {wait}"));
                }
                None => self.record(i, gone, "operator", "stop", "stopped"),
            },
            Wanted::Up if !d.restartable => {
                let what = format!("restart = {}", d.mode);
                self.record(i, gone, why.cond, "stay-down", &what);
            }
            Wanted::Up | Wanted::AutoRestart => {}
        }
    }

    /// An automatic restart: counted and stamped (published by the step's next effect),
    /// pruning the conditions that do not re-arm. Returns its number.
    fn count_restart(&mut self, i: EntityId) -> u32 {
        let e = &mut self.entities[i];
        let prune = e
            .cfg
            .conditions
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.rearm)
            .fold(0u64, |m, (k, _)| m | (1 << k));
        e.pruned_now |= prune & !e.rec.disarmed;
        e.rec.disarmed |= prune;
        e.rec.restarts += 1;
        e.rec.restart_stamps.push(mono_ns());
        e.rec.policy.held_until = 0;
        e.rec.restarts
    }

    /// Says the restart its record published (ham's log, the process log, syslog at
    /// LOG_ERR), if one is unsaid: at the replacement's release, or before anything else is
    /// said about the entity (a failed start), or at the end of the step that counted it.
    pub(super) fn say_restart(&mut self) {
        let Some(r) = self.restart_unsaid.take() else {
            return;
        };
        let name = self.entities[r.i].cfg.name.clone();
        let kind = if r.stateless { " (stateless)" } else { "" };
        let (n, text) = (r.n, &r.text);
        say!(self, "{name}: {text}; restarting{kind} (restart {n})");
        self.record(
            r.i,
            r.gone,
            &r.cond,
            "restart",
            &format!("restart {n}{kind}"),
        );
        self.syslog
            .err(&format!("{name}: {text}; restarted (restart {n})"));
    }
}
