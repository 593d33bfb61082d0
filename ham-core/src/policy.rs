//! Pure restart decisions: (entity state, event, time) → what the daemon does next.
//!
//! This is the seam the recovery engine grows from. Nothing here spawns, signals or sleeps;
//! the daemon carries the decision out.

use crate::layout::LastExit;

/// When an entity that exited on its own is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartMode {
    /// After every exit, clean or not.
    #[default]
    Always,
    /// Only after an abnormal exit (non-zero status, a signal, or unknown).
    OnFailure,
    /// Never: the entity stays down.
    Never,
}

impl RestartMode {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "always" => Self::Always,
            "on-failure" => Self::OnFailure,
            "never" => Self::Never,
            _ => return None,
        })
    }
    /// Whether this mode starts the entity again after an exit it made on its own.
    pub fn restarts_after(self, exit: LastExit) -> bool {
        match self {
            Self::Always => true,
            Self::OnFailure => exit.is_abnormal(),
            Self::Never => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::OnFailure => "on-failure",
            Self::Never => "never",
        }
    }
}

/// What to do after an entity's process is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterExit {
    /// Start it again now; counts as an automatic restart.
    Restart,
    /// Start it again now because an operator asked (`hamctl restart`); not counted as an
    /// automatic restart.
    OperatorStart,
    /// Start it again now because ham stopped it to restart it (its group restarts, or it
    /// missed its watchdog and a takeover came): an automatic restart, but not one its own
    /// policy's windows count.
    AutoRestart,
    /// It was asked to stop: it stays stopped.
    Stopped,
    /// Its restart mode keeps it down.
    Exited,
}

/// Why the process is gone, from the daemon's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// Nobody asked it to stop.
    Up,
    /// An operator asked it to stop.
    Down,
    /// An operator asked for a restart: stop, then start.
    Restart,
    /// ham restarts it on its own account (its group restarts): stop, then start.
    AutoRestart,
}

/// Decides what follows an exit.
pub fn after_exit(mode: RestartMode, wanted: Wanted, exit: LastExit) -> AfterExit {
    match wanted {
        Wanted::Down => AfterExit::Stopped,
        Wanted::Restart => AfterExit::OperatorStart,
        Wanted::AutoRestart => AfterExit::AutoRestart,
        Wanted::Up if mode.restarts_after(exit) => AfterExit::Restart,
        Wanted::Up => AfterExit::Exited,
    }
}

/// Delay before trying again after spawning failed (`attempt` counts from 1): 100 ms,
/// doubling, capped at 5 s. A missing executable must not turn ham into a busy loop.
pub fn spawn_retry_delay_ns(attempt: u32) -> u64 {
    const BASE: u64 = 100_000_000;
    const CAP: u64 = 5_000_000_000;
    let shift = attempt.saturating_sub(1).min(16);
    (BASE << shift).min(CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_modes() {
        let cases = [
            (RestartMode::Always, LastExit::Code(0), AfterExit::Restart),
            (RestartMode::Always, LastExit::Signal(9), AfterExit::Restart),
            (RestartMode::OnFailure, LastExit::Code(0), AfterExit::Exited),
            (
                RestartMode::OnFailure,
                LastExit::Code(3),
                AfterExit::Restart,
            ),
            (
                RestartMode::OnFailure,
                LastExit::Unknown,
                AfterExit::Restart,
            ),
            (RestartMode::Never, LastExit::Signal(9), AfterExit::Exited),
        ];
        for (mode, exit, want) in cases {
            assert_eq!(
                after_exit(mode, Wanted::Up, exit),
                want,
                "{mode:?} {exit:?}"
            );
        }
    }

    #[test]
    fn operator_intent_wins_over_the_mode() {
        for mode in [
            RestartMode::Always,
            RestartMode::OnFailure,
            RestartMode::Never,
        ] {
            let exit = LastExit::Signal(15);
            assert_eq!(after_exit(mode, Wanted::Down, exit), AfterExit::Stopped);
            assert_eq!(
                after_exit(mode, Wanted::Restart, exit),
                AfterExit::OperatorStart
            );
        }
    }

    #[test]
    fn retry_delay_doubles_and_caps() {
        assert_eq!(spawn_retry_delay_ns(1), 100_000_000);
        assert_eq!(spawn_retry_delay_ns(2), 200_000_000);
        assert_eq!(spawn_retry_delay_ns(6), 3_200_000_000);
        assert_eq!(spawn_retry_delay_ns(7), 5_000_000_000);
        assert_eq!(spawn_retry_delay_ns(u32::MAX), 5_000_000_000);
    }

    #[test]
    fn modes_parse_back() {
        for m in [
            RestartMode::Always,
            RestartMode::OnFailure,
            RestartMode::Never,
        ] {
            assert_eq!(RestartMode::parse(m.as_str()), Some(m));
        }
        assert_eq!(RestartMode::parse("sometimes"), None);
    }
}
