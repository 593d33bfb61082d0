//! An entity as the daemon holds it: its configuration, its published record, and what
//! only this HAM knows (its pidfd, deadlines, waiters). Entities are kept in a table indexed
//! by [`EntityId`]; a place is never reused for another entity while this daemon lives (a
//! detached run-time entity leaves a free entry).

use super::*;
use crate::cold::{AtRest, Cold};

/// A request that is answered once an entity reaches a state.
#[derive(Clone, Copy)]
pub(super) enum WaitFor {
    Down,
    Up,
}

pub(super) struct Entity {
    pub(super) cfg: EntityConfig,
    pub(super) slot: SlotIndex,
    pub(super) rec: EntityRecord,
    pub(super) pidfd: Option<OwnedFd>,
    /// Its process, released, while its `execve` is not known yet (`Daemon::settle_exec`).
    pub(super) exec: Option<Box<super::spawn::PendingExec>>,
    /// The process is not our child (adopted after a takeover or a warm start): its exit
    /// status comes from the proc connector or its pidfd, not from `waitid`.
    pub(super) adopted: bool,
    /// Its process died and what it may have left in its cgroup is not killed yet: by its
    /// restart, between the fork and the release (off the restart's path), or at the end
    /// of the death's handling if nothing starts it (`Daemon::kill_leftovers`).
    pub(super) leftovers: bool,
    pub(super) wanted: Wanted,
    pub(super) stop_deadline: Option<u64>,
    pub(super) retry_at: Option<u64>,
    pub(super) spawn_failures: u32,
    pub(super) last_spawn_error: Option<String>,
    /// Deaths seen by this HAM; a late exit status is applied only to the death it is for.
    pub(super) deaths: u64,
    /// Running for its `ready_after`: entities that start `after` it may start.
    pub(super) ready: bool,
    /// When its next sd_notify `WATCHDOG=1` is due, and the period it asked for.
    pub(super) watchdog_at: Option<u64>,
    pub(super) watchdog_ns: Option<u64>,
    /// Its SDK heartbeat monitor (and the client's page) in `Daemon::monitors`, while a
    /// client is attached with a heartbeat.
    pub(super) monitor: Option<super::heartbeats::MonitorId>,
    /// Conditions the restart being handled has just pruned (they still fire for it).
    pub(super) pruned_now: u64,
    /// A `hold-off` action stops it: once down, it is held off this long.
    pub(super) hold_after_stop: Option<u64>,
    pub(super) waiters: Vec<(UnixStream, WaitFor)>,
    /// Its checkpoint store and message queue: allocated when first used.
    pub(super) stores: Cold<Stores>,
    /// Its output pipe (`output = "log"`): read end, write end.
    pub(super) out: Option<super::output::Pipe>,
}

impl Entity {
    pub(super) fn new(mut cfg: EntityConfig, slot: SlotIndex, rec: EntityRecord) -> Self {
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
            exec: None,
            adopted: false,
            leftovers: false,
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
            monitor: None,
            pruned_now: 0,
            hold_after_stop: None,
            waiters: Vec::new(),
            stores: Cold::rest(),
            out: None,
        }
    }
}

/// An entity's checkpoint store and message queue, with who waits on them: few entities
/// have either, so the table keeps them in a [`Cold`] (allocated at first use).
pub(super) struct Stores {
    /// Its checkpoint store, once a process opened it (or a reader asked).
    pub(super) pss: Option<ham_core::pss::PssMap>,
    /// Its durable checkpoints: what is on disk, what is being written, who waits.
    pub(super) pss_durable: super::pss::Durable,
    /// Its message queue, once a message was sent to it (or a predecessor's was found).
    pub(super) mts: Option<ham_core::mts::MtsMap>,
    /// Its processes waiting for a message.
    pub(super) mts_waiters: Vec<super::mts::MtsWaiter>,
    /// Its durable queue's file: the last message id on disk, a write under way, the
    /// senders waiting for theirs.
    pub(super) mts_durable: super::pss::Durable,
}

impl Stores {
    /// Neither store, no one waiting.
    const NONE: Self = Self {
        pss: None,
        pss_durable: super::pss::Durable::NONE,
        mts: None,
        mts_waiters: Vec::new(),
        mts_durable: super::pss::Durable::NONE,
    };
}

static NO_STORES: Stores = Stores::NONE;

impl AtRest for Stores {
    fn at_rest() -> &'static Self {
        &NO_STORES
    }
    fn fresh() -> Self {
        Stores::NONE
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

impl Daemon {
    /// The first entity that `pred` holds for.
    pub(super) fn find_entity(&self, pred: impl FnMut(&Entity) -> bool) -> Option<EntityId> {
        self.entities.find(pred)
    }
}

/// The entities, in the order of the configuration (then run-time entities), with their
/// names and who starts `after` whom. A place is an entity's [`EntityId`] for the daemon's
/// life: a removed run-time entity leaves a free entry, which the next new entity takes.
#[derive(Default)]
pub(super) struct EntityTable {
    list: Vec<Entity>,
    by_name: HashMap<String, EntityId>,
    /// For each entity, the entities that start `after` it (they stop before it).
    dependents: Vec<Vec<EntityId>>,
    /// Each entity's pid as last indexed (its record's, once published), and the entity
    /// each such pid is: who a SIGCHLD's pid is, without a look at every entity.
    pids: Vec<i32>,
    by_pid: HashMap<i32, EntityId>,
}

impl EntityTable {
    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    pub(super) fn iter(&self) -> std::slice::Iter<'_, Entity> {
        self.list.iter()
    }

    pub(super) fn get(&self, i: EntityId) -> Option<&Entity> {
        self.list.get(i.index())
    }

    /// The first entity that `pred` holds for.
    pub(super) fn find(&self, pred: impl FnMut(&Entity) -> bool) -> Option<EntityId> {
        self.list.iter().position(pred).map(EntityId::from_index)
    }

    /// The entity named `name` (free entries have no name).
    pub(super) fn id_of(&self, name: &str) -> Option<EntityId> {
        self.by_name.get(name).copied()
    }

    /// Adds an entity at the end.
    /// Room for `n` more entities.
    pub(super) fn reserve(&mut self, n: usize) {
        self.list.reserve_exact(n);
        self.dependents.reserve_exact(n);
        self.pids.reserve_exact(n);
        self.by_name.reserve(n);
    }

    pub(super) fn push(&mut self, e: Entity) -> EntityId {
        let i = EntityId::from_index(self.list.len());
        if !crate::config::is_free_entry(&e.cfg.name) {
            self.by_name.insert(e.cfg.name.clone(), i);
        }
        self.list.push(e);
        self.dependents.push(Vec::new());
        self.pids.push(0);
        self.index_pid(i);
        i
    }

    /// Puts `e` in place `i` (a free entry's, or a removed entity's that becomes a free
    /// entry): the old name is forgotten, the new one (unless free) is known.
    pub(super) fn replace(&mut self, i: EntityId, e: Entity) {
        let old = std::mem::replace(&mut self.list[i.index()], e);
        if self.by_name.get(&old.cfg.name) == Some(&i) {
            self.by_name.remove(&old.cfg.name);
        }
        let name = &self.list[i.index()].cfg.name;
        if !crate::config::is_free_entry(name) {
            self.by_name.insert(name.clone(), i);
        }
        self.dependents[i.index()].clear();
        self.index_pid(i);
    }

    /// Entity `i`'s pid is the one in its record now (called as the record is published,
    /// and for a new entity).
    pub(super) fn index_pid(&mut self, i: EntityId) {
        let pid = self.list[i.index()].rec.pid;
        let old = std::mem::replace(&mut self.pids[i.index()], pid);
        if old == pid {
            return;
        }
        if old > 0 && self.by_pid.get(&old) == Some(&i) {
            self.by_pid.remove(&old);
        }
        if pid > 0 {
            self.by_pid.insert(pid, i);
        }
    }

    /// The first entity that `pred` holds for, among those whose record names `pid` (as
    /// last published); any entity `pred` holds for if none does (a pid not indexed yet).
    pub(super) fn find_by_pid(
        &self,
        pid: i32,
        mut pred: impl FnMut(&Entity) -> bool,
    ) -> Option<EntityId> {
        match self.by_pid.get(&pid) {
            Some(&i) if pred(&self.list[i.index()]) => Some(i),
            _ => self.find(pred),
        }
    }

    /// The entities that start `after` entity `i`.
    pub(super) fn dependents(&self, i: EntityId) -> &[EntityId] {
        &self.dependents[i.index()]
    }

    /// Works out `dependents` from each entity's `after` (indices of the configuration's
    /// entities, which are the table's first places).
    pub(super) fn link_dependents(&mut self) {
        let mut deps = vec![Vec::new(); self.list.len()];
        for (d, e) in self.list.iter().enumerate() {
            for &j in &e.cfg.after {
                deps[j].push(EntityId::from_index(d));
            }
        }
        self.dependents = deps;
    }
}

impl std::ops::Index<EntityId> for EntityTable {
    type Output = Entity;
    fn index(&self, i: EntityId) -> &Entity {
        &self.list[i.index()]
    }
}

impl std::ops::IndexMut<EntityId> for EntityTable {
    fn index_mut(&mut self, i: EntityId) -> &mut Entity {
        &mut self.list[i.index()]
    }
}

impl<'a> IntoIterator for &'a EntityTable {
    type Item = &'a Entity;
    type IntoIter = std::slice::Iter<'a, Entity>;
    fn into_iter(self) -> Self::IntoIter {
        self.list.iter()
    }
}

impl<'a> IntoIterator for &'a mut EntityTable {
    type Item = &'a mut Entity;
    type IntoIter = std::slice::IterMut<'a, Entity>;
    fn into_iter(self) -> Self::IntoIter {
        self.list.iter_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> (EntityTable, Vec<EntityConfig>) {
        let cfg = crate::config::parse(
            std::path::Path::new("/tmp/ham-test/ham.toml"),
            r#"
[ham]
name = "t"
[[entity]]
name = "db"
command = ["/bin/true"]
[[entity]]
name = "web"
command = ["/bin/true"]
after = ["db"]
[[entity]]
name = "cache"
command = ["/bin/true"]
after = ["db"]
"#,
        )
        .expect("valid");
        let mut t = EntityTable::default();
        for (k, ec) in cfg.entities.iter().enumerate() {
            let rec = EntityRecord::new(&ec.name);
            let id = t.push(Entity::new(ec.clone(), SlotIndex(k as u32), rec));
            assert_eq!(id.index(), k);
        }
        t.link_dependents();
        (t, cfg.entities)
    }

    #[test]
    fn names_and_dependents_are_found() {
        let (t, _) = table();
        let (db, web, cache) = (
            t.id_of("db").unwrap(),
            t.id_of("web").unwrap(),
            t.id_of("cache").unwrap(),
        );
        assert_eq!(t.dependents(db), [web, cache]);
        assert!(t.dependents(web).is_empty());
        assert_eq!(t.id_of("nope"), None);
        assert_eq!(t.find(|e| e.cfg.name == "cache"), Some(cache));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn a_free_entry_has_no_name_and_its_place_is_taken_again() {
        let (mut t, cfgs) = table();
        let cache = t.id_of("cache").unwrap();
        // Removed: its place becomes a free entry, and its name is free.
        let mut free_cfg = cfgs[2].clone();
        free_cfg.name = format!("{}{}", crate::config::FREE_ENTRY, 2);
        let rec = EntityRecord::new(&free_cfg.name);
        t.replace(cache, Entity::new(free_cfg.clone(), SlotIndex(2), rec));
        assert_eq!(t.id_of("cache"), None);
        assert_eq!(t.id_of(&free_cfg.name), None, "free entries are not named");
        // A new entity takes the place, under its own name.
        let mut new_cfg = cfgs[2].clone();
        new_cfg.name = "queue".into();
        let rec = EntityRecord::new("queue");
        t.replace(cache, Entity::new(new_cfg, SlotIndex(2), rec));
        assert_eq!(t.id_of("queue"), Some(cache));
        assert_eq!(t.len(), 3);
    }
}
