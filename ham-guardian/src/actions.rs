//! QNX-style conditions and actions on an entity: when a condition fires (its entity died,
//! died abnormally, was restarted, or a detector raised an event), its actions run in
//! order, each with its own fail list. The daemon runs them as state machines driven by its
//! loop (a command is a child watched through its pidfd, a delay is a timer), so a slow
//! action never holds up another entity's restart.
//!
//! This module holds the resolved configuration and the matching rules; `daemon.rs` runs
//! them.

use std::path::PathBuf;

use ham_core::engine::Stamps;

/// What fires a condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// Any death (QNX CONDDEATH).
    Death,
    /// A death with a non-zero status, a signal, or an unknown end (CONDABNORMALDEATH).
    AbnormalDeath,
    /// The entity was restarted automatically (CONDRESTART).
    Restart,
    /// A detector raised an event (CONDRAISE); `None` matches any class / severity.
    Raise {
        class: Option<String>,
        severity: Option<u32>,
        /// QNX's `rtype` (`ham_condition_raise`): the SDK's `raise_typed`.
        rtype: Option<u32>,
    },
    /// The entity reported a state change (CONDSTATE); `None` matches any state.
    State { from: Option<u32>, to: Option<u32> },
    /// A process attached itself to the entity (CONDATTACH).
    Attach,
    /// An attached process detached (CONDDETACH).
    Detach,
    /// `missed_low` heartbeat periods passed without a beat (CONDHBEATMISSEDLOW).
    HeartbeatMissedLow,
    /// `missed_high` heartbeat periods passed without a beat (CONDHBEATMISSEDHIGH).
    HeartbeatMissedHigh,
    /// Any of the above (CONDANY).
    Any,
    /// The entity's `count`-th exit within `within` (automatic exits only).
    ExitsWithin { count: u32, within: u64 },
    /// The entity's `count`-th automatic restart within `within`.
    RestartsWithin { count: u32, within: u64 },
    /// A death after a lifetime shorter than this (a restart that did not live its minimum
    /// lifetime).
    LifetimeShorter { than: u64 },
    /// A core of the entity was collected (`cores = true`); `HAM_CORE` is its path.
    Core,
}

impl Trigger {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "death" => Self::Death,
            "abnormal-death" => Self::AbnormalDeath,
            "restart" => Self::Restart,
            "raise" => Self::Raise {
                class: None,
                severity: None,
                rtype: None,
            },
            "state" => Self::State {
                from: None,
                to: None,
            },
            "attach" => Self::Attach,
            "detach" => Self::Detach,
            "heartbeat-missed-low" => Self::HeartbeatMissedLow,
            "heartbeat-missed-high" => Self::HeartbeatMissedHigh,
            "any" => Self::Any,
            "exits-within" => Self::ExitsWithin {
                count: 0,
                within: 0,
            },
            "restarts-within" => Self::RestartsWithin {
                count: 0,
                within: 0,
            },
            "lifetime-shorter" => Self::LifetimeShorter { than: 0 },
            "core" => Self::Core,
            _ => return None,
        })
    }

    /// The name given to actions (`HAM_CONDITION`) and the process log.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Death => "death",
            Self::AbnormalDeath => "abnormal-death",
            Self::Restart => "restart",
            Self::Raise { .. } => "raise",
            Self::State { .. } => "state",
            Self::Attach => "attach",
            Self::Detach => "detach",
            Self::HeartbeatMissedLow => "heartbeat-missed-low",
            Self::HeartbeatMissedHigh => "heartbeat-missed-high",
            Self::Any => "any",
            Self::ExitsWithin { .. } => "exits-within",
            Self::RestartsWithin { .. } => "restarts-within",
            Self::LifetimeShorter { .. } => "lifetime-shorter",
            Self::Core => "core",
        }
    }

    /// Whether this condition fires for `event`.
    pub fn matches(&self, event: &Event) -> bool {
        match (self, event) {
            (Self::Any, _) => true,
            (Self::Death, Event::Death { .. }) => true,
            (Self::AbnormalDeath, Event::Death { abnormal, .. }) => *abnormal,
            (Self::Restart, Event::Restart { .. }) => true,
            (Self::Attach, Event::Attach) | (Self::Detach, Event::Detach) => true,
            (Self::Core, Event::Core { .. }) => true,
            (Self::HeartbeatMissedLow, Event::HeartbeatMissed { high: false })
            | (Self::HeartbeatMissedHigh, Event::HeartbeatMissed { high: true }) => true,
            (Self::State { from, to }, Event::State { from: f, to: t }) => {
                from.is_none_or(|want| want == *f) && to.is_none_or(|want| want == *t)
            }
            // Fires when the count is reached, not again for every exit past it.
            (
                Self::ExitsWithin { count, within },
                Event::Death {
                    exits: Some(exits),
                    now,
                    ..
                },
            ) => exits.within(*now, *within) == *count,
            (Self::RestartsWithin { count, within }, Event::Restart { restarts, now }) => {
                restarts.within(*now, *within) == *count
            }
            (Self::LifetimeShorter { than }, Event::Death { lifetime, .. }) => lifetime < than,
            (
                Self::Raise {
                    class,
                    severity,
                    rtype,
                },
                Event::Raise {
                    class: c,
                    severity: s,
                    rtype: t,
                    ..
                },
            ) => {
                class.as_ref().is_none_or(|want| want == c)
                    && severity.is_none_or(|want| want == *s)
                    && rtype.is_none_or(|want| want == *t)
            }
            _ => false,
        }
    }
}

/// Something that happened to an entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Death {
        abnormal: bool,
        lifetime: u64,
        /// Recent automatic exits, this one included (`None` for an asked-for stop).
        exits: Option<Stamps>,
        now: u64,
    },
    Restart {
        /// Recent automatic restarts, this one included.
        restarts: Stamps,
        now: u64,
    },
    Raise {
        class: String,
        severity: u32,
        value: i64,
        rtype: u32,
    },
    State {
        from: u32,
        to: u32,
    },
    Attach,
    Detach,
    HeartbeatMissed {
        high: bool,
    },
    /// A core was collected, at `path`.
    Core {
        path: String,
    },
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Death { abnormal: true, .. } => "abnormal-death",
            Self::Death {
                abnormal: false, ..
            } => "death",
            Self::Restart { .. } => "restart",
            Self::Raise { .. } => "raise",
            Self::State { .. } => "state",
            Self::Attach => "attach",
            Self::Detach => "detach",
            Self::HeartbeatMissed { high: false } => "heartbeat-missed-low",
            Self::HeartbeatMissed { high: true } => "heartbeat-missed-high",
            Self::Core { .. } => "core",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionKind {
    /// Run a command; it succeeds if it exits 0 within `timeout`.
    Execute {
        path: PathBuf,
        argv: Vec<String>,
        timeout_ns: u64,
    },
    /// Write a line to ham's log and the process log (never fails).
    Log { message: String },
    /// Wait before the next action (never fails).
    Delay { ns: u64 },
    /// Wait until `path` exists; fails after `timeout_ns` (QNX `ham_action_waitfor`). The path
    /// is checked every 20 ms while the action waits, and never otherwise.
    WaitFor { path: PathBuf, timeout_ns: u64 },
    /// Send a signal to another entity's process group; fails if it is not running.
    Signal { entity: usize, signal: i32 },
    /// Send a signal with a value (`sigqueue`) to a process by pid (QNX
    /// `ham_action_notify_signal`); fails if there is no such process.
    SignalPid { pid: i32, signal: i32, value: i32 },
    /// Restart the device (`[device] restart_command`); fails if it is switched off, not
    /// configured, or cannot be run.
    DeviceRestart,
    /// Send a [`Notification`](ham_core::protocol::Notification) to every subscriber of
    /// `topic` (QNX's notify actions); never fails (no subscriber is not a failure).
    Notify {
        topic: String,
        /// A pulse's code and value (QNX `ham_action_notify_pulse`), passed on.
        code: Option<i32>,
        value: Option<i32>,
    },
    /// Restart an entity (the condition's own if `None`): stopped and started again, or
    /// started if it is down; counted as an automatic restart.
    Restart {
        entity: Option<usize>,
        /// The command line to run it with from now on (QNX `ham_action_restart`'s line:
        /// how an entity ham did not start gets restarted).
        command: Option<(PathBuf, Vec<String>)>,
    },
    /// Stop an entity and leave it down (ham stops supervising it until it is started).
    Stop { entity: Option<usize> },
    /// Stop an entity (if it runs) and start it again `ns` later (held off meanwhile).
    HoldOff { entity: Option<usize>, ns: u64 },
    /// Treat the entity as having just beaten: the missed-heartbeat conditions can fire
    /// again one window from now (QNX `ham_action_heartbeat_healthy`).
    HeartbeatHealthy,
}

impl ActionKind {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Execute { .. } => "execute",
            Self::Log { .. } => "log",
            Self::Delay { .. } => "delay",
            Self::WaitFor { .. } => "waitfor",
            Self::Signal { .. } | Self::SignalPid { .. } => "signal",
            Self::DeviceRestart => "device-restart",
            Self::Notify { .. } => "notify",
            Self::Restart { .. } => "restart",
            Self::Stop { .. } => "stop",
            Self::HoldOff { .. } => "hold-off",
            Self::HeartbeatHealthy => "heartbeat-healthy",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub name: Option<String>,
    /// A disabled action (QNX `HDISABLE`, or removed at run time) is skipped.
    pub enabled: bool,
    /// Removed at run time (kept, disabled: the run journal counts positions in lists).
    pub removed: bool,
    pub kind: ActionKind,
    /// On failure, skip the rest of the list (after the fail list) — QNX HACTIONBREAKONFAIL.
    pub break_on_fail: bool,
    /// Run when this action fails (QNX's action-fail list).
    pub on_fail: Vec<Action>,
    /// Also run once when the instance starts cold (QNX `HACTIONDONOW`).
    pub run_now: bool,
}

impl Action {
    /// Whether this action, and everything in its fail lists at any depth, runs nothing and
    /// acts on nothing but its own entity's bookkeeping: what a process may add to itself
    /// (everything else runs with ham's privileges).
    pub fn runs_nothing(&self) -> bool {
        matches!(
            self.kind,
            ActionKind::Log { .. } | ActionKind::Notify { .. } | ActionKind::HeartbeatHealthy
        ) && self.on_fail.iter().all(Action::runs_nothing)
    }

    /// Whether `self`, replacing `old` (`None`: new), adds only actions that run nothing:
    /// an action equal to its old self is not new, and one that differs only in its fail
    /// list is new only there.
    pub fn adds_only_harmless(&self, old: Option<&Action>) -> bool {
        match old {
            Some(old) if old == self => true,
            Some(old) if old.same_but_fail_list(self) => self
                .on_fail
                .iter()
                .enumerate()
                .all(|(k, a)| a.adds_only_harmless(old.on_fail.get(k))),
            _ => self.runs_nothing(),
        }
    }
    fn same_but_fail_list(&self, other: &Action) -> bool {
        self.name == other.name
            && self.enabled == other.enabled
            && self.removed == other.removed
            && self.kind == other.kind
            && self.break_on_fail == other.break_on_fail
            && self.run_now == other.run_now
    }
}

impl Condition {
    /// Whether `self`, replacing `old` (`None`: new), adds only actions that run nothing
    /// ([`Action::adds_only_harmless`]), at any depth. A condition whose own fields changed
    /// (trigger, enabled, flags) is new as a whole: it would run its actions on new terms.
    pub fn adds_only_harmless(&self, old: Option<&Condition>) -> bool {
        let old = old.filter(|o| {
            o.name == self.name
                && o.enabled == self.enabled
                && o.removed == self.removed
                && o.trigger == self.trigger
                && o.rearm == self.rearm
                && o.independent == self.independent
                && o.nowait == self.nowait
        });
        self.actions
            .iter()
            .enumerate()
            .all(|(k, a)| a.adds_only_harmless(old.and_then(|o| o.actions.get(k))))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// Its name (QNX: a condition's name under its entity), if it was given one.
    pub name: Option<String>,
    /// A disabled condition (QNX `HDISABLE`, or removed at run time) never fires.
    pub enabled: bool,
    /// Removed at run time (kept, disabled, so later conditions keep their indices).
    pub removed: bool,
    pub trigger: Trigger,
    pub actions: Vec<Action>,
    /// Kept across an automatic restart of its entity (QNX `HREARMAFTERRESTART`); when
    /// false the condition is pruned by the first restart after it was armed.
    pub rearm: bool,
    /// Runs at once, beside the entity's other runs (QNX `HCONDINDEPENDENT`); otherwise
    /// an entity's condition runs go one after another, in the order they fired.
    pub independent: bool,
    /// Promises no `waitfor` action (QNX `HCONDNOWAIT`): checked at load, and runs at once.
    pub nowait: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn death(abnormal: bool) -> Event {
        Event::Death {
            abnormal,
            lifetime: 10,
            exits: None,
            now: 0,
        }
    }

    #[test]
    fn window_triggers_fire_when_their_count_is_reached() {
        let s = 1_000_000_000;
        let mut exits = Stamps::default();
        let t = Trigger::ExitsWithin {
            count: 3,
            within: 10 * s,
        };
        let mut fired = Vec::new();
        for k in 1..=5u64 {
            exits.push(k * s);
            fired.push(t.matches(&Event::Death {
                abnormal: true,
                lifetime: s,
                exits: Some(exits.clone()),
                now: k * s,
            }));
        }
        assert_eq!(fired, vec![false, false, true, false, false]);
        let short = Trigger::LifetimeShorter { than: 2 * s };
        assert!(short.matches(&Event::Death {
            abnormal: false,
            lifetime: s,
            exits: None,
            now: 0
        }));
        assert!(!short.matches(&Event::Death {
            abnormal: false,
            lifetime: 3 * s,
            exits: None,
            now: 0
        }));
        let mut restarts = Stamps::default();
        restarts.push(s);
        restarts.push(2 * s);
        let r = Trigger::RestartsWithin {
            count: 2,
            within: 5 * s,
        };
        assert!(r.matches(&Event::Restart {
            restarts,
            now: 2 * s
        }));
    }

    #[test]
    fn triggers_match_their_events() {
        let abnormal = death(true);
        let clean = death(false);
        assert!(Trigger::Death.matches(&abnormal) && Trigger::Death.matches(&clean));
        assert!(Trigger::AbnormalDeath.matches(&abnormal));
        assert!(!Trigger::AbnormalDeath.matches(&clean));
        assert!(!Trigger::Restart.matches(&clean));
        assert!(Trigger::Any.matches(&Event::Restart {
            restarts: Stamps::default(),
            now: 0
        }));
        let raise = Event::Raise {
            class: "temp".into(),
            severity: 3,
            value: 90,
            rtype: 0,
        };
        assert!(Trigger::parse("raise").unwrap().matches(&raise));
        let exact = Trigger::Raise {
            class: Some("temp".into()),
            severity: Some(3),
            rtype: None,
        };
        assert!(exact.matches(&raise));
        let other = Trigger::Raise {
            class: Some("fan".into()),
            severity: None,
            rtype: None,
        };
        assert!(!other.matches(&raise));
        assert!(!exact.matches(&abnormal));
        let to3 = Trigger::State {
            from: None,
            to: Some(3),
        };
        assert!(to3.matches(&Event::State { from: 1, to: 3 }));
        assert!(!to3.matches(&Event::State { from: 3, to: 1 }));
        assert!(Trigger::HeartbeatMissedHigh.matches(&Event::HeartbeatMissed { high: true }));
        assert!(!Trigger::HeartbeatMissedHigh.matches(&Event::HeartbeatMissed { high: false }));
        assert!(!Trigger::Attach.matches(&Event::Detach));
    }
}
