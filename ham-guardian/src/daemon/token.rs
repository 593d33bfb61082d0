//! What an epoll event is about: each registration carries a [`Token`], encoded in the
//! event's 64-bit data (a kind in the high byte, an id in the low 56 bits: connection and
//! subscriber ids are counters that never wrap into each other's kind in practice, 2^56).

use rustix::event::epoll::EventData;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Token {
    /// The signalfd (SIGTERM, SIGINT, SIGHUP, SIGCHLD).
    Signal,
    /// The timerfd armed at the earliest deadline.
    Timer,
    /// The control socket's listener.
    Listen,
    /// The Guardian's pidfd.
    Guardian,
    /// The proc connector's netlink socket.
    ProcConn,
    /// The sd_notify socket.
    Notify,
    /// The client segment's doorbell (an eventfd the doorbell thread writes).
    Doorbell,
    /// The bell (an eventfd clients write themselves).
    Bell,
    /// The handoff socket to the Guardian became writable.
    Handoff,
    /// The checkpoint committer finished writes.
    PssCommitted,
    /// A core was collected.
    CoreCollected,
    /// A control connection.
    Conn(u64),
    /// The pidfd of the process of entity `i`.
    Pidfd(super::EntityId),
    /// The status pipe of entity `i`'s released child (its `execve` went, or failed).
    Exec(super::EntityId),
    /// The pidfd of a command condition run `id` waits for.
    Action(super::RunId),
    /// A subscriber's connection.
    Sub(u64),
    /// The pidfd of the process lane `id` was made for.
    Lane(u64),
}

const KIND: u64 = 56;
const ID: u64 = (1 << KIND) - 1;

impl Token {
    pub fn encode(self) -> u64 {
        let (kind, id) = match self {
            Self::Signal => (0, 1),
            Self::Timer => (0, 2),
            Self::Listen => (0, 3),
            Self::Guardian => (0, 4),
            Self::ProcConn => (0, 5),
            Self::Notify => (0, 6),
            Self::Doorbell => (0, 7),
            Self::Handoff => (0, 8),
            Self::PssCommitted => (0, 9),
            Self::CoreCollected => (0, 10),
            Self::Bell => (0, 11),
            Self::Conn(id) => (1, id & ID),
            Self::Pidfd(i) => (2, u64::from(i.raw())),
            Self::Action(id) => (3, u64::from(id.raw())),
            Self::Sub(id) => (4, id & ID),
            Self::Exec(i) => (5, u64::from(i.raw())),
            Self::Lane(id) => (6, id & ID),
        };
        (kind << KIND) | id
    }

    pub fn decode(v: u64) -> Option<Self> {
        let id = v & ID;
        Some(match (v >> KIND, id) {
            (0, 1) => Self::Signal,
            (0, 2) => Self::Timer,
            (0, 3) => Self::Listen,
            (0, 4) => Self::Guardian,
            (0, 5) => Self::ProcConn,
            (0, 6) => Self::Notify,
            (0, 7) => Self::Doorbell,
            (0, 8) => Self::Handoff,
            (0, 9) => Self::PssCommitted,
            (0, 10) => Self::CoreCollected,
            (0, 11) => Self::Bell,
            (1, id) => Self::Conn(id),
            (2, id) => Self::Pidfd(super::EntityId::from_raw(u32::try_from(id).ok()?)),
            (3, id) => Self::Action(super::RunId::from_raw(u32::try_from(id).ok()?)),
            (4, id) => Self::Sub(id),
            (5, id) => Self::Exec(super::EntityId::from_raw(u32::try_from(id).ok()?)),
            (6, id) => Self::Lane(id),
            _ => return None,
        })
    }

    /// The epoll registration's data.
    pub fn data(self) -> EventData {
        EventData::new_u64(self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::Token;

    #[test]
    fn tokens_decode_to_what_was_encoded() {
        for t in [
            Token::Signal,
            Token::Timer,
            Token::Listen,
            Token::Guardian,
            Token::ProcConn,
            Token::Notify,
            Token::Doorbell,
            Token::Handoff,
            Token::PssCommitted,
            Token::CoreCollected,
            Token::Bell,
            Token::Conn(0),
            Token::Conn(0xffff_ffff),
            Token::Conn((1 << 56) - 1),
            Token::Pidfd(super::super::EntityId::from_raw(7)),
            Token::Exec(super::super::EntityId::from_raw(7)),
            Token::Exec(super::super::EntityId::from_raw(u32::MAX)),
            Token::Pidfd(super::super::EntityId::from_raw(u32::MAX)),
            Token::Action(super::super::RunId::from_raw(u32::MAX)),
            Token::Sub(42),
            Token::Lane(0),
            Token::Lane((1 << 56) - 1),
        ] {
            assert_eq!(Token::decode(t.encode()), Some(t), "{t:?}");
        }
        assert_eq!(Token::decode(0), None);
        assert_eq!(Token::decode(9 << 56), None);
        assert_eq!(
            Token::decode((2 << 56) | (1 << 32)),
            None,
            "an entity id beyond u32"
        );
    }
}
