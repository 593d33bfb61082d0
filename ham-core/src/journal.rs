//! The run journal: each condition run in progress (its entity, which condition fired and
//! why, where in its action lists it is, and what it waits for) is a record in the state
//! segment, published with the same A/B protocol as entity records. A successor HAM reads
//! the journal and carries every run on from where it was: an action already done is never
//! done again, and none is forgotten.
//!
//! What "where it is" means: the run's stack of action lists, as the `at` of each level
//! (level 0 is the condition's actions; level d + 1 is the fail list of the action at
//! `at[d] - 1` of level d). `in_progress` says the action at `at[last] - 1` has begun: a
//! successor finishes waiting for it if it can (a command still running, a delay, a
//! waitfor), and otherwise counts it as done or failed, never runs it twice.

use crate::LastExit;
use crate::layout::{RecordError, Slot};

/// Body words of a run record (word 0 is the generation).
pub const RUN_WORDS: usize = 31;
/// A run slot: two copies of a run record.
pub type RunSlot = Slot<RUN_WORDS>;
/// Run slots in every state segment.
pub const RUN_SLOTS: u32 = 128;
/// Deepest stack of fail lists a run can record.
pub const MAX_DEPTH: usize = 8;
/// `condition` of a run made of an entity's `run_now` actions.
pub const COND_RUN_NOW: u8 = 255;
/// `condition` of an escalation to a device restart decided by a recovery policy.
pub const COND_ESCALATION: u8 = 254;
/// Longest text a run record keeps (a raise's class, an escalation's reason).
pub const TEXT_BYTES: usize = 32;

const _: () = assert!(std::mem::size_of::<RunSlot>() == 512);

mod w {
    pub const GEN: usize = 0;
    pub const ID: usize = 1; // id | entity slot << 32
    pub const FLAGS: usize = 2; // see `flag`
    pub const PATH: usize = 3; // `at` per level, one byte each
    pub const WAIT_PID: usize = 4; // pid (u32) | wait kind << 32
    pub const WAIT_START: usize = 5; // the command's start time
    pub const WAIT_DEADLINE: usize = 6;
    pub const GONE_PID: usize = 7;
    pub const GONE_EXIT: usize = 8;
    pub const SEVERITY: usize = 9;
    pub const VALUE: usize = 10;
    pub const TEXT: usize = 11; // 4 words
    pub const STATE: usize = 15; // from | to << 32
}

mod flag {
    pub const CONDITION: u64 = 0xff; // bits 0..8
    pub const INDEPENDENT: u64 = 1 << 8;
    pub const STARTED: u64 = 1 << 9;
    pub const IN_PROGRESS: u64 = 1 << 10;
    pub const GONE: u64 = 1 << 11;
    pub const RAISE: u64 = 1 << 12;
    pub const STATE: u64 = 1 << 13;
    pub const DEPTH_SHIFT: u64 = 16; // 4 bits
}

/// What a run's current action waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunWait {
    None,
    /// A command (execute, device restart) forked as `pid`, killed at `deadline` (0:
    /// never). `released`: journaled just before the HAM lets it run; a child orphaned
    /// before its release runs only if this says so (see `RunSlot::says_released`), so a
    /// successor knows exactly whether it ran.
    Exec {
        pid: i32,
        start_time: u64,
        deadline: u64,
        released: bool,
    },
    /// A delay until `until` (CLOCK_MONOTONIC).
    Delay {
        until: u64,
    },
    /// A waitfor, failing at `deadline`.
    Path {
        deadline: u64,
    },
}

/// One run in progress (or queued behind another run of its entity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    pub id: u32,
    pub entity_slot: u32,
    /// Index of the condition in the entity's configuration, or `COND_*`.
    pub condition: u8,
    pub independent: bool,
    /// False while queued behind another run of the same entity.
    pub started: bool,
    pub path: Vec<u8>,
    pub in_progress: bool,
    pub wait: RunWait,
    /// The process whose death fired it, and how it ended.
    pub gone: Option<(i32, LastExit)>,
    /// A raise's class, severity and value.
    pub raise: Option<(String, u32, i64)>,
    /// A state change's from and to.
    pub state: Option<(u32, u32)>,
    /// An escalation's reason (truncated to `TEXT_BYTES`).
    pub reason: String,
}

fn pack(text: &str) -> [u64; 4] {
    let mut bytes = [0u8; TEXT_BYTES];
    let mut n = text.len().min(TEXT_BYTES);
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    bytes[..n].copy_from_slice(&text.as_bytes()[..n]);
    std::array::from_fn(|i| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8")))
}

fn unpack(words: &[u64]) -> Result<String, RecordError> {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8(bytes[..end].to_vec()).map_err(|_| RecordError::Corrupt("text not UTF-8"))
}

impl RunRecord {
    pub(crate) fn encode(&self, generation: u64) -> [u64; RUN_WORDS] {
        let mut b = [0u64; RUN_WORDS];
        b[w::GEN] = generation;
        b[w::ID] = u64::from(self.id) | (u64::from(self.entity_slot) << 32);
        let depth = self.path.len().min(MAX_DEPTH);
        let mut f = u64::from(self.condition) | ((depth as u64) << flag::DEPTH_SHIFT);
        for (set, bit) in [
            (self.independent, flag::INDEPENDENT),
            (self.started, flag::STARTED),
            (self.in_progress, flag::IN_PROGRESS),
            (self.gone.is_some(), flag::GONE),
            (self.raise.is_some(), flag::RAISE),
            (self.state.is_some(), flag::STATE),
        ] {
            if set {
                f |= bit;
            }
        }
        b[w::FLAGS] = f;
        for (k, at) in self.path.iter().take(MAX_DEPTH).enumerate() {
            b[w::PATH] |= u64::from(*at) << (8 * k);
        }
        match self.wait {
            RunWait::None => {}
            RunWait::Exec {
                pid,
                start_time,
                deadline,
                released,
            } => {
                let kind = if released { WAIT_EXEC_RELEASED } else { 1 };
                b[w::WAIT_PID] = u64::from(pid as u32) | (kind << 32);
                b[w::WAIT_START] = start_time;
                b[w::WAIT_DEADLINE] = deadline;
            }
            RunWait::Delay { until } => {
                b[w::WAIT_PID] = 2 << 32;
                b[w::WAIT_DEADLINE] = until;
            }
            RunWait::Path { deadline } => {
                b[w::WAIT_PID] = 3 << 32;
                b[w::WAIT_DEADLINE] = deadline;
            }
        }
        if let Some((pid, exit)) = self.gone {
            b[w::GONE_PID] = u64::from(pid as u32);
            b[w::GONE_EXIT] = exit.to_word();
        }
        let text = match &self.raise {
            Some((class, severity, value)) => {
                b[w::SEVERITY] = u64::from(*severity);
                b[w::VALUE] = *value as u64;
                class.as_str()
            }
            None => self.reason.as_str(),
        };
        b[w::TEXT..w::TEXT + 4].copy_from_slice(&pack(text));
        if let Some((from, to)) = self.state {
            b[w::STATE] = u64::from(from) | (u64::from(to) << 32);
        }
        b
    }

    pub(crate) fn decode(b: &[u64; RUN_WORDS]) -> Result<Self, RecordError> {
        let f = b[w::FLAGS];
        let depth = ((f >> flag::DEPTH_SHIFT) & 0xf) as usize;
        if depth > MAX_DEPTH {
            return Err(RecordError::Corrupt("run stack too deep"));
        }
        let path = (0..depth).map(|k| (b[w::PATH] >> (8 * k)) as u8).collect();
        let wait = match b[w::WAIT_PID] >> 32 {
            0 => RunWait::None,
            k @ (1 | WAIT_EXEC_RELEASED) => RunWait::Exec {
                pid: (b[w::WAIT_PID] & 0xffff_ffff) as u32 as i32,
                start_time: b[w::WAIT_START],
                deadline: b[w::WAIT_DEADLINE],
                released: k == WAIT_EXEC_RELEASED,
            },
            2 => RunWait::Delay {
                until: b[w::WAIT_DEADLINE],
            },
            3 => RunWait::Path {
                deadline: b[w::WAIT_DEADLINE],
            },
            _ => return Err(RecordError::Corrupt("unknown wait kind")),
        };
        let text = unpack(&b[w::TEXT..w::TEXT + 4])?;
        let gone = if f & flag::GONE != 0 {
            let exit = LastExit::from_word(b[w::GONE_EXIT])
                .ok_or(RecordError::Corrupt("unknown exit kind"))?;
            Some(((b[w::GONE_PID] & 0xffff_ffff) as u32 as i32, exit))
        } else {
            None
        };
        let raise = (f & flag::RAISE != 0).then(|| {
            (
                text.clone(),
                (b[w::SEVERITY] & 0xffff_ffff) as u32,
                b[w::VALUE] as i64,
            )
        });
        Ok(Self {
            id: (b[w::ID] & 0xffff_ffff) as u32,
            entity_slot: (b[w::ID] >> 32) as u32,
            condition: (f & flag::CONDITION) as u8,
            independent: f & flag::INDEPENDENT != 0,
            started: f & flag::STARTED != 0,
            path,
            in_progress: f & flag::IN_PROGRESS != 0,
            wait,
            gone,
            reason: if raise.is_some() { String::new() } else { text },
            raise,
            state: (f & flag::STATE != 0).then(|| {
                (
                    (b[w::STATE] & 0xffff_ffff) as u32,
                    (b[w::STATE] >> 32) as u32,
                )
            }),
        })
    }
}

/// The wait kind of a released command (1: forked, not released yet).
const WAIT_EXEC_RELEASED: u64 = 4;

impl RunSlot {
    /// Whether the newest valid record says command `pid` was released. Allocates nothing
    /// and takes no lock: a forked child calls it before `execve`.
    pub fn says_released(&self, pid: i32) -> bool {
        matches!(self.newest(), Ok(Some(body))
            if body[w::WAIT_PID] == u64::from(pid as u32) | (WAIT_EXEC_RELEASED << 32))
    }

    /// Reads the run: `Ok(None)` for a free slot.
    pub fn read_run(&self) -> Result<Option<RunRecord>, RecordError> {
        match self.newest()? {
            None => Ok(None),
            Some(body) => RunRecord::decode(&body).map(Some),
        }
    }

    pub(crate) fn publish_run(&self, rec: &RunRecord, hook: Option<crate::layout::Hook>) -> u64 {
        self.publish_body(|generation| rec.encode(generation), hook)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_records_round_trip() {
        let recs = [
            RunRecord {
                id: 7,
                entity_slot: 3,
                condition: 2,
                independent: false,
                started: true,
                path: vec![2, 1],
                in_progress: true,
                wait: RunWait::Exec {
                    pid: 4242,
                    start_time: 99,
                    deadline: 123,
                    released: true,
                },
                gone: Some((77, LastExit::Signal(9))),
                raise: None,
                state: None,
                reason: String::new(),
            },
            RunRecord {
                id: u32::MAX,
                entity_slot: 0,
                condition: COND_ESCALATION,
                independent: true,
                started: false,
                path: vec![],
                in_progress: false,
                wait: RunWait::Path { deadline: 5 },
                gone: None,
                raise: Some(("temperature".into(), 3, -90)),
                state: Some((1, 2)),
                reason: String::new(),
            },
            RunRecord {
                id: 1,
                entity_slot: 1,
                condition: COND_ESCALATION,
                independent: true,
                started: true,
                path: vec![1; MAX_DEPTH],
                in_progress: false,
                wait: RunWait::Delay { until: 1 << 40 },
                gone: None,
                raise: None,
                state: None,
                reason: "web: services cannot be restored"
                    .chars()
                    .take(32)
                    .collect(),
            },
        ];
        for r in recs {
            let b = r.encode(9);
            assert_eq!(RunRecord::decode(&b).unwrap(), r);
        }
    }
}
