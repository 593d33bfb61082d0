//! One entity's lifecycle as a pure table: `step(state, wanted, input)` gives the next state,
//! what is wanted of it, and the effects the daemon carries out, in order. Nothing here
//! spawns, signals, publishes or reads a clock; the daemon executes the effects (and feeds
//! back what they bring about: a spawn's outcome, a recovery decision).
//!
//! The whole table (every state × wanted × input) is written out by
//! `ham-core/tests/lifecycle.rs` and compared with `ham-core/tests/lifecycle.table`: a
//! change of behaviour is a reviewed change of that file.
//!
//! Ordering is part of the contract: where an effect acts on the world (spawn, signal), the
//! record that explains it is published first (`Publish` comes before it), so a successor
//! that finds the record never does it twice and never misses it.

use crate::layout::EntityState as State;
use crate::policy::Wanted;

/// What happens to an entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// An operator asks it to run (`hamctl start`).
    Start,
    /// An operator asks it to stop (`hamctl stop`, a `stop` action, a shutdown's layer).
    Stop,
    /// An operator asks for a restart (`hamctl restart`).
    Restart,
    /// ham restarts it on its own account: its group restarts, a restart action on a
    /// running process.
    AutoRestart,
    /// Its process is gone. `restartable`: its restart mode starts it again after such an
    /// exit (never for an attach-only entity). `hold`: it was stopped by a `hold-off`
    /// action, to be held off and then restarted.
    Exit { restartable: bool, hold: bool },
    /// What its recovery policy decided, after an `Exit` asked it (`Effect::Recover`).
    Recovered(Recovery),
    /// Its process runs (released into its program).
    Spawned,
    /// Its process could not be started.
    SpawnFailed,
    /// Backoff's retry deadline came.
    RetryDue,
    /// A hold-off's deadline came.
    HoldOffOver,
    /// A hold-off asked for (a `hold-off` action) of an entity without a process.
    HoldOff,
    /// The stop signal's deadline came and it is still there.
    StopTimeout,
    /// It missed its watchdog (or a missed-high heartbeat no condition handles).
    WatchdogMissed,
    /// The entities it starts after are ready.
    DepsReady,
    /// A process attached itself to it (or was attached by pid): ham watches it now.
    Attached,
    /// Its attached process detached: ham no longer watches it.
    Detached,
    /// Listed at a cold start, before anything starts: `waits` for entities it starts
    /// after, or about to start.
    Listed { waits: bool },
    /// The entities it starts after are not ready: it waits for them.
    DepsNotReady,
    /// ham has nothing to run for it (a self-attached entity without a command): it waits
    /// for a process to attach itself.
    NothingToRun,
    /// A takeover found it `stopping` with its process still there: the stop goes on
    /// (signalled again, a fresh deadline), with the intent the record gave.
    ResumeStop,
}

/// A recovery decision, as far as the lifecycle needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Start it again now (an automatic restart).
    Restart,
    /// Hold it off until a deadline, then restart it.
    HoldOff,
    /// Leave it down.
    GiveUp,
}

/// What the daemon does, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Publish the entity's record (state, wanted intent, counters) to the segment.
    Publish,
    /// Count an operator start (`starts`) and reset the policy's memory for it.
    CountStart,
    /// Count an automatic restart (`restarts`, its stamp), pruning the conditions that do
    /// not re-arm.
    CountRestart,
    /// Start its process.
    Spawn,
    /// Arm the SIGKILL deadline (`stop_timeout`).
    ArmStopKill,
    /// Arm the retry deadline of a failed spawn.
    ArmRetry,
    /// Arm the hold-off deadline.
    ArmHoldOff,
    /// Send its stop signal.
    SignalStop,
    /// Send SIGABRT (a hang: it leaves a core).
    SignalAbort,
    /// Send SIGKILL (the stop signal was not enough).
    SignalKill,
    /// Record that a successor finding it `stopping` starts it again, as an automatic
    /// restart (it is being stopped for a hang).
    MarkAutoRestart,
    /// Ask its recovery policy (answered with `Input::Recovered`).
    Recover,
    /// Fire its `restart` conditions once it runs.
    FireRestart,
    /// Answer the operators waiting for it to be up or down.
    AnswerWaiters,
    /// Write the process log's line for an exit that is not a restart (an operator's stop
    /// or restart, a hold-off a condition asked, a restart mode that leaves it down).
    RecordExit,
    /// Restart the other members of its group (`one-for-all`, `rest-for-one`) if this exit
    /// was restarted by its recovery policy.
    RestartGroup,
    /// Fire the death's conditions (`death`, `abnormal-death`, `exits-within`): last of an
    /// exit's effects, once the record that explains them is published, and before the
    /// `restart` conditions of the restart it led to.
    FireDeath,
}

/// The outcome of one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub state: State,
    pub wanted: Wanted,
    pub effects: Vec<Effect>,
}

/// Every state, for tables and tests.
pub const STATES: [State; 8] = [
    State::Waiting,
    State::Starting,
    State::Running,
    State::Stopping,
    State::Stopped,
    State::Exited,
    State::Backoff,
    State::HeldOff,
];

/// Every wanted intent, for tables and tests.
pub const WANTED: [Wanted; 4] = [
    Wanted::Up,
    Wanted::Down,
    Wanted::Restart,
    Wanted::AutoRestart,
];

/// Every input, for tables and tests.
pub const INPUTS: [Input; 25] = [
    Input::Start,
    Input::Stop,
    Input::Restart,
    Input::AutoRestart,
    Input::Exit {
        restartable: true,
        hold: false,
    },
    Input::Exit {
        restartable: false,
        hold: false,
    },
    Input::Exit {
        restartable: false,
        hold: true,
    },
    Input::Recovered(Recovery::Restart),
    Input::Recovered(Recovery::HoldOff),
    Input::Recovered(Recovery::GiveUp),
    Input::Spawned,
    Input::SpawnFailed,
    Input::RetryDue,
    Input::HoldOffOver,
    Input::HoldOff,
    Input::StopTimeout,
    Input::WatchdogMissed,
    Input::DepsReady,
    Input::Attached,
    Input::Detached,
    Input::Listed { waits: false },
    Input::Listed { waits: true },
    Input::DepsNotReady,
    Input::NothingToRun,
    Input::ResumeStop,
];

/// One step of the lifecycle.
pub fn step(state: State, wanted: Wanted, input: Input) -> Step {
    use Effect::*;
    let to = |state: State, wanted: Wanted, effects: &[Effect]| Step {
        state,
        wanted,
        effects: effects.to_vec(),
    };
    let same = |effects: &[Effect]| to(state, wanted, effects);
    // A process that starts again: counted (operator or automatic), recorded, spawned.
    let start = |count: Effect| {
        let fire: &[Effect] = if count == CountRestart {
            &[count, Publish, Spawn, FireRestart]
        } else {
            &[count, Publish, Spawn]
        };
        to(State::Starting, Wanted::Up, fire)
    };
    let has_process = matches!(state, State::Running | State::Stopping);
    let waits = matches!(
        state,
        State::Backoff | State::Starting | State::HeldOff | State::Waiting
    );
    match input {
        Input::Start => match state {
            State::Running => same(&[AnswerWaiters]),
            // Stopping: started again once it is down.
            State::Stopping => to(state, Wanted::Restart, &[]),
            State::Starting | State::Waiting => same(&[]),
            State::Stopped | State::Exited | State::Backoff | State::HeldOff => start(CountStart),
        },
        Input::Stop | Input::Restart | Input::AutoRestart => {
            let w = match input {
                Input::Stop => Wanted::Down,
                Input::Restart => Wanted::Restart,
                _ => Wanted::AutoRestart,
            };
            if state == State::Running {
                // Recorded (with the intent, for a successor to finish) before the signal.
                return to(State::Stopping, w, &[ArmStopKill, Publish, SignalStop]);
            }
            if state == State::Stopping {
                return to(state, w, &[]);
            }
            match (w, waits) {
                (Wanted::Down, true) => to(State::Stopped, w, &[Publish, AnswerWaiters]),
                (Wanted::Down, false) => same(&[AnswerWaiters]),
                (Wanted::Restart, _) => start(CountStart),
                (_, true) => start(CountRestart),
                // Down already: nothing of its own to restart (a restart action on an
                // entity without a process goes through `Exit` and its recovery).
                (_, false) => same(&[AnswerWaiters]),
            }
        }
        Input::Exit { restartable, hold } => {
            let mut next = match wanted {
                // Straight to held off (never published as stopped: a successor would
                // leave it down).
                Wanted::Down if hold => to(State::HeldOff, wanted, &[ArmHoldOff, Publish]),
                Wanted::Down => to(State::Stopped, wanted, &[Publish, AnswerWaiters]),
                Wanted::Restart => start(CountStart),
                Wanted::AutoRestart => start(CountRestart),
                // Left down by its restart mode, or its policy decides (answered with
                // `Recovered`); until then it is down.
                Wanted::Up if restartable => to(State::Exited, wanted, &[Recover]),
                Wanted::Up => to(State::Exited, wanted, &[Publish, AnswerWaiters]),
            };
            // Every death is logged, may restart its group, and fires its conditions, in
            // that order, after what it led to is published. (A `FireRestart` above, or
            // from the recovery, is carried out after these: the death's conditions first.)
            next.effects.extend([RecordExit, RestartGroup, FireDeath]);
            next
        }
        // After an exit (or, for a restart action, an entity already down).
        Input::Recovered(r) if matches!(state, State::Exited | State::Stopped) => match r {
            Recovery::Restart => start(CountRestart),
            Recovery::HoldOff => to(State::HeldOff, wanted, &[ArmHoldOff, Publish]),
            Recovery::GiveUp => to(State::Exited, wanted, &[Publish, AnswerWaiters]),
        },
        Input::Recovered(_) => same(&[]),
        // From `starting`, or from the `running` the spawn records before it releases the
        // child (the release protocol: a successor must count the child's death as a death).
        Input::Spawned if matches!(state, State::Starting | State::Running) => {
            to(State::Running, wanted, &[Publish, AnswerWaiters])
        }
        Input::SpawnFailed if matches!(state, State::Starting | State::Running) => {
            to(State::Backoff, wanted, &[ArmRetry, Publish, AnswerWaiters])
        }
        Input::Spawned | Input::SpawnFailed => same(&[]),
        Input::RetryDue if state == State::Backoff => to(State::Starting, wanted, &[Spawn]),
        Input::RetryDue => same(&[]),
        Input::HoldOffOver if state == State::HeldOff => start(CountRestart),
        Input::HoldOffOver => same(&[]),
        Input::HoldOff if !has_process => to(State::HeldOff, wanted, &[ArmHoldOff, Publish]),
        Input::HoldOff => same(&[]),
        Input::StopTimeout if state == State::Stopping => same(&[SignalKill]),
        Input::StopTimeout => same(&[]),
        // A hang: its death then goes to its policy like any other.
        Input::WatchdogMissed if state == State::Running => to(
            State::Stopping,
            Wanted::Up,
            &[ArmStopKill, MarkAutoRestart, Publish, SignalAbort],
        ),
        Input::WatchdogMissed => same(&[]),
        Input::DepsReady if state == State::Waiting => to(State::Starting, wanted, &[Spawn]),
        Input::DepsReady => same(&[]),
        Input::Attached if !has_process => to(State::Running, Wanted::Up, &[Publish]),
        Input::Attached => same(&[]),
        Input::Detached if has_process => to(State::Stopped, wanted, &[Publish, AnswerWaiters]),
        Input::Detached => same(&[]),
        Input::Listed { waits: false } if !has_process => to(State::Starting, wanted, &[Publish]),
        Input::Listed { waits: true } if !has_process => to(State::Waiting, wanted, &[Publish]),
        Input::Listed { .. } => same(&[]),
        Input::DepsNotReady if !has_process && state != State::Waiting => {
            to(State::Waiting, wanted, &[Publish])
        }
        Input::DepsNotReady => same(&[]),
        Input::NothingToRun if !has_process => to(State::Stopped, wanted, &[Publish]),
        Input::NothingToRun => same(&[]),
        Input::ResumeStop if state == State::Stopping => same(&[ArmStopKill, Publish, SignalStop]),
        Input::ResumeStop => same(&[]),
    }
}

/// The table as text, one line per state × wanted × input (what the golden file holds).
pub fn table() -> String {
    let mut out = String::new();
    for s in STATES {
        for w in WANTED {
            for i in INPUTS {
                let st = step(s, w, i);
                out.push_str(&format!(
                    "{:<8} {:<11} {:<41} -> {:<8} {:<11} {:?}\n",
                    s.as_str(),
                    format!("{w:?}"),
                    format!("{i:?}"),
                    st.state.as_str(),
                    format!("{:?}", st.wanted),
                    st.effects
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spawn_and_signal_is_published_first() {
        for s in STATES {
            for w in WANTED {
                for i in INPUTS {
                    let e = step(s, w, i).effects;
                    for act in [Effect::Spawn, Effect::SignalStop, Effect::SignalAbort] {
                        if let Some(k) = e.iter().position(|&x| x == act) {
                            // A retry or a dependency's readiness spawns from a record
                            // already saying `starting`.
                            let published = e[..k].contains(&Effect::Publish)
                                || matches!(i, Input::RetryDue | Input::DepsReady);
                            assert!(published, "{s:?} {w:?} {i:?}: {e:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn every_exit_and_only_an_exit_fires_death_conditions_last() {
        for s in STATES {
            for w in WANTED {
                for i in INPUTS {
                    let e = step(s, w, i).effects;
                    let exit = matches!(i, Input::Exit { .. });
                    assert_eq!(e.contains(&Effect::FireDeath), exit, "{s:?} {w:?} {i:?}");
                    if exit {
                        assert_eq!(
                            e[e.len() - 3..],
                            [Effect::RecordExit, Effect::RestartGroup, Effect::FireDeath],
                            "{s:?} {w:?} {i:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn only_a_recovery_restart_or_an_automatic_one_fires_restart_conditions() {
        for s in STATES {
            for w in WANTED {
                for i in INPUTS {
                    let e = step(s, w, i).effects;
                    let fires = e.contains(&Effect::FireRestart);
                    assert_eq!(
                        fires,
                        e.contains(&Effect::CountRestart),
                        "{s:?} {w:?} {i:?}"
                    );
                }
            }
        }
    }
}
