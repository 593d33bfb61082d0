//! The recovery policies as pure decisions: (policy, memory, event, now) → (memory, decision).
//!
//! Nothing here reads a clock, spawns or signals: the daemon passes the time in and carries
//! the decision out, so every policy is tested with simulated time and no processes. The
//! [`Memory`] is fixed-size plain data meant to be published with the entity's record, in
//! the same A/B copy as the state it explains, so a takeover neither forgets a window nor
//! repeats a decision already taken.
//!
//! Three policy families, as the systems ham learns from write them:
//! * [`Policy::Switch`] — a network switch's HAM (the default): each death is restarted at
//!   once; an entity that exits `exits.count` times within `exits.within` is held off and
//!   started again after `hold_off`; when such a hold-off happens `holdoffs.count` times within
//!   `holdoffs.within`, services cannot be restored and ham escalates to a device restart
//!   (which an operator can switch off, e.g. during a patch upgrade).
//! * [`Policy::Stages`] — Cisco NX-OS: ordered stages, each an action with a number of retries
//!   and a minimum lifetime; a restart that dies younger than the minimum counts as failed;
//!   when a stage's retries are spent the next stage runs; after the last, the secondary
//!   policy's stages, then give up.
//! * [`Policy::Intensity`] — Erlang/OTP: at most `max` restarts within `within`, then
//!   escalate.

/// Nanoseconds on the caller's monotonic clock.
pub type Nanos = u64;

/// `count` events within `within` nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub count: u32,
    pub within: Nanos,
}

/// What a stage of a staged policy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageAction {
    /// Restart keeping the entity's checkpointed state.
    StatefulRestart,
    /// Restart from scratch (its checkpoint is discarded).
    StatelessRestart,
    /// Restart the device.
    DeviceRestart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    pub action: StageAction,
    /// How many times this stage's action is tried before the next stage.
    pub retries: u32,
    /// A restart that dies younger than this counted as failed; one that lived longer
    /// resets the policy to its first stage.
    pub min_lifetime: Nanos,
}

/// Where a policy goes when it has nothing left to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escalation {
    DeviceRestart,
    /// Leave the entity down ("stop supervising").
    GiveUp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    Switch {
        exits: Window,
        hold_off: Nanos,
        holdoffs: Window,
    },
    Stages {
        primary: Vec<Stage>,
        secondary: Vec<Stage>,
    },
    Intensity {
        max: u32,
        within: Nanos,
        then: Escalation,
    },
}

const MIN: Nanos = 60_000_000_000;

impl Policy {
    /// The switch preset with the published numbers: 5 exits in 2 minutes → hold off
    /// 5 minutes; 2 hold-offs in 10 minutes → device restart.
    pub fn switch_preset() -> Self {
        Self::Switch {
            exits: Window {
                count: 5,
                within: 2 * MIN,
            },
            hold_off: 5 * MIN,
            holdoffs: Window {
                count: 2,
                within: 10 * MIN,
            },
        }
    }
}

/// How many timestamps a window remembers; a window's count is at most this.
pub const STAMPS: usize = 16;

/// The most recent timestamps of one kind of event, newest last.
///
/// The ring is allocated at the first stamp: most entities never exit, and each entity's
/// record holds four of these (136 bytes each, inline, in the HAM's table of entities).
#[derive(Debug, Clone, Default)]
pub struct Stamps {
    /// `None` while empty (`len` is then 0).
    at: Option<Box<[Nanos; STAMPS]>>,
    len: u8,
}

/// Two rings are equal when they hold the same stamps (what lies past `len` is no stamp).
impl PartialEq for Stamps {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Stamps {}

impl Stamps {
    pub fn push(&mut self, t: Nanos) {
        let at = self.at.get_or_insert_with(|| Box::new([0; STAMPS]));
        if (self.len as usize) < STAMPS {
            at[self.len as usize] = t;
            self.len += 1;
        } else {
            at.rotate_left(1);
            at[STAMPS - 1] = t;
        }
    }
    /// Events in the half-open window `(now - within, now]`.
    pub fn within(&self, now: Nanos, within: Nanos) -> u32 {
        let from = now.saturating_sub(within);
        self.as_slice()
            .iter()
            .filter(|&&t| t > from && t <= now)
            .count() as u32
    }
    pub fn clear(&mut self) {
        *self = Self::default();
    }
    /// The stamps as `STAMPS` words plus the length (for a record); words past the length
    /// are 0.
    pub fn to_words(&self) -> ([u64; STAMPS], u8) {
        let mut w = [0; STAMPS];
        let s = self.as_slice();
        w[..s.len()].copy_from_slice(s);
        (w, s.len() as u8)
    }
    /// The inverse of [`Stamps::to_words`]; a length out of range is clamped.
    pub fn from_words(at: [u64; STAMPS], len: u8) -> Self {
        let len = len.min(STAMPS as u8);
        Self {
            at: (len > 0).then(|| Box::new(at)),
            len,
        }
    }
    pub fn as_slice(&self) -> &[Nanos] {
        match &self.at {
            Some(at) => &at[..(self.len as usize).min(STAMPS)],
            None => &[],
        }
    }
}

/// What a policy remembers about one entity.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Memory {
    /// Exits that counted towards the policy (automatic restarts only).
    pub exits: Stamps,
    /// Hold-offs begun (switch policy).
    pub holdoffs: Stamps,
    /// Current stage (staged policy): primary stages, then secondary.
    pub stage: u32,
    /// Failed tries in the current stage.
    pub tries: u32,
    /// Held off until this time (0: not held off).
    pub held_until: Nanos,
    /// Set once the policy gave up; cleared by an operator start.
    pub gave_up: bool,
    /// Consecutive restarts delayed by a back-off (reset after a healthy lifetime).
    pub backoff_n: u16,
}

/// Words [`Memory::to_words`] produces: two stamp rings, their lengths and flags, stage and
/// tries, the hold-off deadline.
pub const MEMORY_WORDS: usize = 2 * STAMPS + 3;

impl Memory {
    /// Encodes the memory as plain words for the state segment's record.
    pub fn to_words(&self) -> [u64; MEMORY_WORDS] {
        let mut w = [0u64; MEMORY_WORDS];
        let (exits, exits_len) = self.exits.to_words();
        let (holdoffs, holdoffs_len) = self.holdoffs.to_words();
        w[..STAMPS].copy_from_slice(&exits);
        w[STAMPS..2 * STAMPS].copy_from_slice(&holdoffs);
        w[2 * STAMPS] = u64::from(exits_len)
            | (u64::from(holdoffs_len) << 8)
            | (u64::from(self.gave_up) << 16)
            | (u64::from(self.backoff_n) << 24);
        w[2 * STAMPS + 1] = u64::from(self.stage) | (u64::from(self.tries) << 32);
        w[2 * STAMPS + 2] = self.held_until;
        w
    }

    /// Decodes words written by [`Memory::to_words`]; out-of-range lengths are clamped, so
    /// any bit pattern gives a usable memory.
    pub fn from_words(w: &[u64; MEMORY_WORDS]) -> Self {
        let ring = |from: usize| -> [u64; STAMPS] {
            w[from..from + STAMPS].try_into().expect("STAMPS words")
        };
        let flags = w[2 * STAMPS];
        Self {
            exits: Stamps::from_words(ring(0), (flags & 0xff) as u8),
            holdoffs: Stamps::from_words(ring(STAMPS), ((flags >> 8) & 0xff) as u8),
            gave_up: (flags >> 16) & 1 == 1,
            backoff_n: ((flags >> 24) & 0xffff) as u16,
            stage: (w[2 * STAMPS + 1] & 0xffff_ffff) as u32,
            tries: (w[2 * STAMPS + 1] >> 32) as u32,
            held_until: w[2 * STAMPS + 2],
        }
    }
}

/// Something that happened to an entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// It exited on its own after living `lifetime`.
    Exit { lifetime: Nanos },
    /// An operator started it (never counts toward a window).
    OperatorStart,
}

/// What the daemon does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start it again now.
    Restart { stateless: bool },
    /// Start it again at `until` (a hold-off).
    HoldOff { until: Nanos },
    /// Restart the device; if that is switched off or fails, do `otherwise`.
    DeviceRestart { otherwise: Fallback },
    /// Leave it down.
    GiveUp,
}

/// What follows a device restart that did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    HoldOff { until: Nanos },
    Restart { stateless: bool },
    GiveUp,
}

impl Fallback {
    pub fn as_decision(self) -> Decision {
        match self {
            Self::HoldOff { until } => Decision::HoldOff { until },
            Self::Restart { stateless } => Decision::Restart { stateless },
            Self::GiveUp => Decision::GiveUp,
        }
    }
}

/// Back-off between restarts (an option on restarts, whatever the policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    /// The same delay before every restart.
    Fixed { delay: Nanos, reset_after: Nanos },
    /// `initial`, doubling at each consecutive restart, at most `max`.
    Exponential {
        initial: Nanos,
        max: Nanos,
        reset_after: Nanos,
    },
}

impl Backoff {
    /// The delay before restart number `n` (0-based) of a run of quick restarts.
    pub fn delay(&self, n: u16) -> Nanos {
        match *self {
            Self::Fixed { delay, .. } => delay,
            Self::Exponential { initial, max, .. } => initial
                .saturating_mul(1u64 << u32::from(n).min(40))
                .min(max),
        }
    }
    fn reset_after(&self) -> Nanos {
        match *self {
            Self::Fixed { reset_after, .. } | Self::Exponential { reset_after, .. } => reset_after,
        }
    }
}

/// Applies a back-off to a decision: an immediate restart becomes a hold-off of the back-off's
/// delay. A process that lived `reset_after` or longer starts a new run of restarts.
pub fn with_backoff(
    backoff: &Backoff,
    mem: &mut Memory,
    decision: Decision,
    lifetime: Nanos,
    now: Nanos,
) -> Decision {
    if lifetime >= backoff.reset_after() {
        mem.backoff_n = 0;
    }
    match decision {
        Decision::Restart { .. } => {
            let delay = backoff.delay(mem.backoff_n);
            mem.backoff_n = mem.backoff_n.saturating_add(1);
            if delay == 0 {
                return decision;
            }
            let until = now.saturating_add(delay);
            mem.held_until = until;
            Decision::HoldOff { until }
        }
        other => other,
    }
}

/// How an entity that is to be restarted is restarted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// At once, every time (no windows, no escalation).
    Immediate,
    /// As the recovery engine's policy decides.
    Engine(Policy),
}

/// The whole recovery decision after a death its restart mode restarts (or a restart
/// action): the policy (or at once), then the back-off. Pure, as [`decide`]: the memory it
/// returns is published with the decision.
pub fn recover(
    recovery: &Recovery,
    backoff: Option<&Backoff>,
    mem: &Memory,
    lifetime: Nanos,
    now: Nanos,
) -> (Memory, Decision) {
    let (mut mem, decision) = match recovery {
        Recovery::Immediate => (mem.clone(), Decision::Restart { stateless: false }),
        Recovery::Engine(p) => decide(p, mem, Event::Exit { lifetime }, now),
    };
    let decision = match backoff {
        Some(b) => with_backoff(b, &mut mem, decision, lifetime, now),
        None => decision,
    };
    (mem, decision)
}

/// The memory after an operator start (see [`decide`]).
pub fn decide_operator_start(mem: &Memory) -> Memory {
    let mut m = mem.clone();
    m.gave_up = false;
    m.held_until = 0;
    m.backoff_n = 0;
    m
}

/// Decides what follows `event` at `now`. Pure: the same inputs give the same outputs, so a
/// successor that finds the new memory published knows the decision was taken, and one that
/// finds the old memory takes the same decision again.
pub fn decide(policy: &Policy, mem: &Memory, event: Event, now: Nanos) -> (Memory, Decision) {
    let mut m = mem.clone();
    let lifetime = match event {
        Event::OperatorStart => {
            // An operator start resets what the policy concluded, but not the history of
            // exits: a long-standing complaint about start limits is that manual starts
            // count; here they neither count nor erase.
            return (
                decide_operator_start(&m),
                Decision::Restart { stateless: false },
            );
        }
        Event::Exit { lifetime } => lifetime,
    };
    if m.gave_up {
        return (m, Decision::GiveUp);
    }
    m.held_until = 0;
    match policy {
        Policy::Switch {
            exits,
            hold_off,
            holdoffs,
        } => {
            m.exits.push(now);
            if m.exits.within(now, exits.within) < exits.count {
                return (m, Decision::Restart { stateless: false });
            }
            let until = now.saturating_add(*hold_off);
            m.exits.clear();
            m.holdoffs.push(now);
            m.held_until = until;
            if m.holdoffs.within(now, holdoffs.within) >= holdoffs.count {
                m.holdoffs.clear();
                return (
                    m,
                    Decision::DeviceRestart {
                        otherwise: Fallback::HoldOff { until },
                    },
                );
            }
            (m, Decision::HoldOff { until })
        }
        Policy::Stages { primary, secondary } => {
            let stages: Vec<&Stage> = primary.iter().chain(secondary.iter()).collect();
            if stages.is_empty() {
                return (m, Decision::Restart { stateless: false });
            }
            let current = (m.stage as usize).min(stages.len() - 1);
            if lifetime >= stages[current].min_lifetime && m.stage as usize >= 1 {
                // The last attempt was healthy: start over from the first stage.
                m.stage = 0;
                m.tries = 0;
            } else if lifetime >= stages[current].min_lifetime {
                m.tries = 0;
            }
            loop {
                let Some(stage) = stages.get(m.stage as usize) else {
                    m.gave_up = true;
                    return (m, Decision::GiveUp);
                };
                if m.tries < stage.retries {
                    m.tries += 1;
                    let d = match stage.action {
                        StageAction::StatefulRestart => Decision::Restart { stateless: false },
                        StageAction::StatelessRestart => Decision::Restart { stateless: true },
                        StageAction::DeviceRestart => Decision::DeviceRestart {
                            otherwise: Fallback::Restart { stateless: true },
                        },
                    };
                    return (m, d);
                }
                m.stage += 1;
                m.tries = 0;
            }
        }
        Policy::Intensity { max, within, then } => {
            m.exits.push(now);
            if m.exits.within(now, *within) <= *max {
                return (m, Decision::Restart { stateless: false });
            }
            m.exits.clear();
            match then {
                Escalation::DeviceRestart => (
                    m,
                    Decision::DeviceRestart {
                        otherwise: Fallback::Restart { stateless: false },
                    },
                ),
                Escalation::GiveUp => {
                    m.gave_up = true;
                    (m, Decision::GiveUp)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_is_the_policy_then_the_back_off() {
        const S: Nanos = 1_000_000_000;
        let quick = S / 10;
        let fresh = Memory::default();
        // At once, whatever came before.
        let (_, d) = recover(&Recovery::Immediate, None, &fresh, quick, 10 * S);
        assert_eq!(d, Decision::Restart { stateless: false });
        // The switch preset: the 5th quick exit within 2 minutes holds it off for 5 minutes.
        let switch = Recovery::Engine(Policy::switch_preset());
        let mut mem = fresh.clone();
        let mut now = 100 * S;
        for _ in 0..4 {
            let (m, d) = recover(&switch, None, &mem, quick, now);
            assert_eq!(d, Decision::Restart { stateless: false });
            mem = m;
            now += S;
        }
        let (_, d) = recover(&switch, None, &mem, quick, now);
        assert_eq!(
            d,
            Decision::HoldOff {
                until: now + 300 * S
            }
        );
        // A back-off turns each quick restart into a hold-off of its delay, doubling, and a
        // process that lived `reset_after` starts the count again.
        let b = Backoff::Exponential {
            initial: S,
            max: 4 * S,
            reset_after: 60 * S,
        };
        let (m1, d1) = recover(&Recovery::Immediate, Some(&b), &fresh, quick, now);
        assert_eq!(d1, Decision::HoldOff { until: now + S });
        let (m2, d2) = recover(&Recovery::Immediate, Some(&b), &m1, quick, now);
        assert_eq!(d2, Decision::HoldOff { until: now + 2 * S });
        let (_, d3) = recover(&Recovery::Immediate, Some(&b), &m2, 61 * S, now);
        assert_eq!(d3, Decision::HoldOff { until: now + S });
    }

    const S: Nanos = 1_000_000_000;

    fn exit(lifetime: Nanos) -> Event {
        Event::Exit { lifetime }
    }

    /// Runs exits at the given times through a policy; returns the decisions.
    fn run(policy: &Policy, times: &[Nanos]) -> Vec<Decision> {
        let mut m = Memory::default();
        times
            .iter()
            .map(|&t| {
                let (n, d) = decide(policy, &m, exit(S), t);
                m = n;
                d
            })
            .collect()
    }

    #[test]
    fn switch_preset_holds_off_after_five_exits_in_two_minutes() {
        let p = Policy::switch_preset();
        let d = run(&p, &[10 * S, 20 * S, 30 * S, 40 * S, 50 * S]);
        assert!(
            d[..4]
                .iter()
                .all(|d| *d == Decision::Restart { stateless: false })
        );
        assert_eq!(
            d[4],
            Decision::HoldOff {
                until: 50 * S + 300 * S
            }
        );
    }

    #[test]
    fn switch_exits_spread_over_more_than_two_minutes_never_hold_off() {
        let p = Policy::switch_preset();
        let times: Vec<Nanos> = (1..=50).map(|i| i * 31 * S).collect();
        assert!(
            run(&p, &times)
                .iter()
                .all(|d| *d == Decision::Restart { stateless: false })
        );
    }

    #[test]
    fn switch_second_hold_off_within_ten_minutes_restarts_the_device() {
        let p = Policy::switch_preset();
        // Five quick exits, hold-off 5 min, started again at 6 min, five more quick exits.
        let mut times: Vec<Nanos> = (1..=5).map(|i| i * S).collect();
        times.extend((0..5).map(|i| 360 * S + i * S));
        let d = run(&p, &times);
        assert_eq!(d[4], Decision::HoldOff { until: 305 * S });
        assert_eq!(
            d[9],
            Decision::DeviceRestart {
                otherwise: Fallback::HoldOff {
                    until: 364 * S + 300 * S
                }
            }
        );
    }

    #[test]
    fn switch_hold_offs_far_apart_do_not_escalate() {
        let p = Policy::switch_preset();
        let mut times: Vec<Nanos> = (1..=5).map(|i| i * S).collect();
        times.extend((0..5).map(|i| 1000 * S + i * S));
        let d = run(&p, &times);
        assert_eq!(
            d[9],
            Decision::HoldOff {
                until: 1004 * S + 300 * S
            }
        );
    }

    fn nxos() -> Policy {
        Policy::Stages {
            primary: vec![
                Stage {
                    action: StageAction::StatefulRestart,
                    retries: 2,
                    min_lifetime: 10 * S,
                },
                Stage {
                    action: StageAction::StatelessRestart,
                    retries: 1,
                    min_lifetime: 10 * S,
                },
            ],
            secondary: vec![Stage {
                action: StageAction::DeviceRestart,
                retries: 1,
                min_lifetime: 10 * S,
            }],
        }
    }

    #[test]
    fn stages_escalate_when_restarts_die_young_then_give_up() {
        let p = nxos();
        let mut m = Memory::default();
        let mut got = Vec::new();
        for _ in 0..6 {
            let (n, d) = decide(&p, &m, exit(S), 0);
            m = n;
            got.push(d);
        }
        assert_eq!(
            got,
            vec![
                Decision::Restart { stateless: false },
                Decision::Restart { stateless: false },
                Decision::Restart { stateless: true },
                Decision::DeviceRestart {
                    otherwise: Fallback::Restart { stateless: true }
                },
                Decision::GiveUp,
                Decision::GiveUp,
            ]
        );
        // An operator start clears the verdict.
        let (m2, d) = decide(&p, &m, Event::OperatorStart, 0);
        assert_eq!(d, Decision::Restart { stateless: false });
        assert!(!m2.gave_up);
    }

    #[test]
    fn a_healthy_lifetime_resets_the_stages() {
        let p = nxos();
        let mut m = Memory::default();
        for _ in 0..3 {
            m = decide(&p, &m, exit(S), 0).0;
        }
        assert_eq!(m.stage, 1);
        let (m, d) = decide(&p, &m, exit(60 * S), 0);
        assert_eq!(d, Decision::Restart { stateless: false });
        assert_eq!((m.stage, m.tries), (0, 1));
    }

    #[test]
    fn intensity_allows_max_restarts_in_the_period_then_escalates() {
        let p = Policy::Intensity {
            max: 3,
            within: 5 * S,
            then: Escalation::GiveUp,
        };
        let d = run(&p, &[S, 2 * S, 3 * S, 4 * S]);
        assert_eq!(d[..3], [Decision::Restart { stateless: false }; 3]);
        assert_eq!(d[3], Decision::GiveUp);
        // Spread out, it never escalates.
        let times: Vec<Nanos> = (1..40).map(|i| i * 2 * S).collect();
        assert!(run(&p, &times).iter().all(|d| *d != Decision::GiveUp));
    }

    #[test]
    fn memory_round_trips_through_words() {
        let p = Policy::switch_preset();
        let mut m = Memory::default();
        for t in 1..=7 {
            m = decide(&p, &m, exit(S), t * S).0;
        }
        m.stage = 3;
        m.tries = 2;
        m.gave_up = true;
        assert_eq!(Memory::from_words(&m.to_words()), m);
        // Garbage decodes to something usable.
        let junk = Memory::from_words(&[u64::MAX; MEMORY_WORDS]);
        assert_eq!(junk.exits.as_slice().len(), STAMPS);
    }

    #[test]
    fn exponential_backoff_doubles_caps_and_resets_after_a_healthy_run() {
        let b = Backoff::Exponential {
            initial: S / 10,
            max: 2 * S,
            reset_after: 60 * S,
        };
        let mut m = Memory::default();
        let restart = Decision::Restart { stateless: false };
        let mut delays = Vec::new();
        for k in 0..7 {
            let now = k * 100 * S;
            match with_backoff(&b, &mut m, restart, S, now) {
                Decision::HoldOff { until } => delays.push(until - now),
                d => panic!("{d:?}"),
            }
        }
        assert_eq!(
            delays,
            vec![S / 10, S / 5, 2 * S / 5, 4 * S / 5, 8 * S / 5, 2 * S, 2 * S]
        );
        // A process that lived a minute starts over.
        let d = with_backoff(&b, &mut m, restart, 61 * S, 0);
        assert_eq!(d, Decision::HoldOff { until: S / 10 });
        // Other decisions pass through.
        assert_eq!(
            with_backoff(&b, &mut m, Decision::GiveUp, S, 0),
            Decision::GiveUp
        );
        assert_eq!(Memory::from_words(&m.to_words()), m);
    }

    #[test]
    fn stamps_keep_the_newest() {
        let mut s = Stamps::default();
        for t in 1..=40 {
            s.push(t);
        }
        assert_eq!(s.as_slice().len(), STAMPS);
        assert_eq!(*s.as_slice().last().unwrap(), 40);
        assert_eq!(s.within(40, 5), 5);
    }

    #[test]
    fn an_empty_ring_holds_no_stamp_memory_and_compares_by_its_stamps() {
        // What an entity that never exited keeps: a pointer and a length, not 16 words.
        assert!(std::mem::size_of::<Stamps>() <= 16);
        assert_eq!(Stamps::default().as_slice(), &[] as &[Nanos]);
        // Read from a record: a length of 0 is empty whatever the words past it say.
        assert_eq!(Stamps::from_words([7; STAMPS], 0), Stamps::default());
        let mut s = Stamps::from_words([9; STAMPS], 2);
        assert_eq!(s.as_slice(), &[9, 9]);
        s.clear();
        assert_eq!(s, Stamps::default());
        // Words past the length are written as 0, and read back to the same ring.
        let mut s = Stamps::default();
        for t in [5, 6, 7] {
            s.push(t);
        }
        let (w, len) = s.to_words();
        assert_eq!((&w[..4], len), (&[5, 6, 7, 0][..], 3));
        assert_eq!(Stamps::from_words(w, len), s);
        let mut m = Memory::default();
        m.holdoffs.push(11);
        assert_eq!(Memory::from_words(&m.to_words()), m);
        assert_eq!(
            Memory::from_words(&Memory::default().to_words()),
            Memory::default()
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn any_policy() -> impl Strategy<Value = Policy> {
            prop_oneof![
                (1u32..8, 1u64..200, 1u64..600, 1u32..4, 1u64..900).prop_map(
                    |(n, w, h, hn, hw)| Policy::Switch {
                        exits: Window {
                            count: n,
                            within: w * S
                        },
                        hold_off: h * S,
                        holdoffs: Window {
                            count: hn,
                            within: hw * S
                        },
                    }
                ),
                (0u32..5, 1u64..60).prop_map(|(max, w)| Policy::Intensity {
                    max,
                    within: w * S,
                    then: Escalation::GiveUp,
                }),
                Just(nxos()),
            ]
        }

        proptest! {
            /// A takeover between any two events changes nothing: a successor that finds
            /// the memory published with a decision, and replays nothing, continues exactly
            /// as the original would have; one that finds the previous memory takes the same
            /// decision again (the decision is a function of the memory).
            #[test]
            fn decisions_are_a_function_of_memory(
                policy in any_policy(),
                gaps in proptest::collection::vec(0u64..120, 1..60),
                cut in 0usize..60,
            ) {
                let mut now = 0;
                let mut m = Memory::default();
                let mut decisions = Vec::new();
                let mut at_cut = None;
                for (i, g) in gaps.iter().enumerate() {
                    now += g * S;
                    if i == cut {
                        at_cut = Some((m.clone(), now));
                    }
                    let (n, d) = decide(&policy, &m, Event::Exit { lifetime: g * S }, now);
                    m = n;
                    decisions.push(d);
                }
                if let Some((saved, t)) = at_cut {
                    let (_, again) = decide(&policy, &saved, Event::Exit { lifetime: gaps[cut] * S }, t);
                    prop_assert_eq!(again, decisions[cut]);
                }
            }

            /// The switch policy never holds off before `exits.count` exits within the
            /// window, and always does at the count.
            #[test]
            fn switch_holds_off_exactly_at_the_count(
                n in 1u32..8,
                gaps in proptest::collection::vec(0u64..30, 1..40),
            ) {
                let p = Policy::Switch {
                    exits: Window { count: n, within: 120 * S },
                    hold_off: 300 * S,
                    holdoffs: Window { count: 100, within: S },
                };
                let mut now = 0;
                let mut m = Memory::default();
                let mut since_hold: Vec<Nanos> = Vec::new();
                for g in gaps {
                    now += g * S + 1;
                    let (next, d) = decide(&p, &m, Event::Exit { lifetime: S }, now);
                    since_hold.push(now);
                    let recent = since_hold.iter().filter(|&&t| t > now.saturating_sub(120 * S)).count() as u32;
                    if recent >= n {
                        prop_assert_eq!(d, Decision::HoldOff { until: now + 300 * S });
                        since_hold.clear();
                    } else {
                        prop_assert_eq!(d, Decision::Restart { stateless: false });
                    }
                    m = next;
                }
            }

            /// Operator starts never count towards any window.
            #[test]
            fn operator_starts_do_not_count(policy in any_policy(), starts in 1usize..50) {
                let mut m = Memory::default();
                for _ in 0..starts {
                    let (n, d) = decide(&policy, &m, Event::OperatorStart, 0);
                    prop_assert_eq!(d, Decision::Restart { stateless: false });
                    m = n;
                }
                prop_assert_eq!(m.exits.as_slice().len(), 0);
                prop_assert_eq!(m.stage, 0);
            }
        }
    }
}
