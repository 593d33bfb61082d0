//! An entity as the daemon holds it: its configuration, its published record, and what
//! only this HAM knows (its pidfd, deadlines, waiters). Entities are kept in a table indexed
//! by [`EntityId`]; a place is never reused for another entity while this daemon lives (a
//! detached run-time entity leaves a free entry).

use super::*;

/// A request that is answered once an entity reaches a state.
#[derive(Clone, Copy)]
pub(super) enum WaitFor {
    Down,
    Up,
}

pub(super) struct Entity {
    pub(super) cfg: EntityConfig,
    pub(super) slot: u32,
    pub(super) rec: EntityRecord,
    pub(super) pidfd: Option<OwnedFd>,
    /// The process is not our child (adopted after a takeover or a warm start): its exit
    /// status comes from the proc connector or its pidfd, not from `waitid`.
    pub(super) adopted: bool,
    pub(super) wanted: Wanted,
    pub(super) stop_deadline: Option<u64>,
    pub(super) retry_at: Option<u64>,
    pub(super) spawn_failures: u32,
    pub(super) last_spawn_error: Option<String>,
    /// Deaths seen by this HAM; a late exit status is applied only to the death it is for.
    pub(super) deaths: u64,
    /// Running for its `ready_after`: entities that start `after` it may start.
    pub(super) ready: bool,
    /// Its environment, built once (see `entity_env`).
    pub(super) env: Vec<(String, String)>,
    /// When its next sd_notify `WATCHDOG=1` is due, and the period it asked for.
    pub(super) watchdog_at: Option<u64>,
    pub(super) watchdog_ns: Option<u64>,
    /// Its SDK heartbeat monitor, while a client is attached with one.
    pub(super) hb: Option<clients::Heartbeat>,
    /// The attached client's heartbeat page (`ham_core::beat`), while it has one.
    pub(super) beat: Option<ham_core::beat::BeatMap>,
    /// Conditions the restart being handled has just pruned (they still fire for it).
    pub(super) pruned_now: u64,
    /// A `hold-off` action stops it: once down, it is held off this long.
    pub(super) hold_after_stop: Option<u64>,
    pub(super) waiters: Vec<(UnixStream, WaitFor)>,
}

impl Entity {
    pub(super) fn new(
        mut cfg: EntityConfig,
        slot: u32,
        rec: EntityRecord,
        env: Vec<(String, String)>,
    ) -> Self {
        // A self-attached entity that ham (re)starts runs its restart action's command line
        // (QNX: "from now on with `path`"); a successor finds it there too.
        if cfg.attach_only && cfg.argv.is_empty() {
            if let Some((path, argv)) = own_restart_command(&cfg) {
                cfg.exec_path = path;
                cfg.argv = argv;
            }
        }
        let ready = rec.ready && rec.state == EntityState::Running;
        Self {
            cfg,
            slot,
            rec,
            pidfd: None,
            beat: None,
            adopted: false,
            wanted: Wanted::Up,
            stop_deadline: None,
            retry_at: None,
            spawn_failures: 0,
            last_spawn_error: None,
            deaths: 0,
            // Ready as its record says (a successor goes on from there).
            ready,
            watchdog_at: None,
            watchdog_ns: None,
            hb: None,
            pruned_now: 0,
            hold_after_stop: None,
            env,
            waiters: Vec::new(),
        }
    }
}

/// An entity's place in the daemon's table (`Daemon::entities`, and the tables kept beside
/// it such as `dependents`). Not its segment slot: see `Entity::slot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct EntityId(u32);

impl EntityId {
    /// The id of the `i`th entity of the table. Tables hold at most a segment's worth of
    /// entities (`u32` slots), so this never truncates.
    pub(super) fn from_index(i: usize) -> Self {
        Self(u32::try_from(i).expect("an entity table is indexed by u32"))
    }

    pub(super) fn index(self) -> usize {
        self.0 as usize
    }

    /// As carried in an epoll token.
    pub(super) fn raw(self) -> u32 {
        self.0
    }

    pub(super) fn from_raw(raw: u32) -> Self {
        Self(raw)
    }

    /// Every id of a table of `len` entities, in order.
    pub(super) fn all(len: usize) -> impl DoubleEndedIterator<Item = Self> {
        (0..len).map(Self::from_index)
    }
}

impl std::fmt::Display for EntityId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

impl<T> std::ops::Index<EntityId> for Vec<T> {
    type Output = T;
    fn index(&self, id: EntityId) -> &T {
        &self[id.index()]
    }
}

impl<T> std::ops::IndexMut<EntityId> for Vec<T> {
    fn index_mut(&mut self, id: EntityId) -> &mut T {
        &mut self[id.index()]
    }
}

impl Daemon {
    /// The first entity that `pred` holds for.
    pub(super) fn find_entity(&self, pred: impl FnMut(&Entity) -> bool) -> Option<EntityId> {
        self.entities
            .iter()
            .position(pred)
            .map(EntityId::from_index)
    }
}
