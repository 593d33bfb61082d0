//! Run-time definitions: entities, conditions and actions created through the API (QNX's
//! `ham_attach`, `ham_condition*`, `ham_action*`), beside the configured ones.
//!
//! They are kept as a TOML document in the state segment (`ham_core::blob`, A/B copies):
//! `[[entity]]` tables for run-time entities and top-level `[[condition]]` tables (with
//! `entity = "…"`) for conditions, in exactly the configuration file's schema. Every change
//! builds the new document, validates the configuration file's text followed by it with the
//! same parser that checks configuration files (so a run-time definition can be nothing a
//! configuration could not be), publishes it, and then applies it to the running state. A
//! successor HAM (or a warm start) parses the same text and so has the same entities and
//! conditions, with the same indices (removed conditions and actions stay as disabled
//! tombstones until the next cold start, so the run journal's indices stay valid).

use std::collections::HashMap;

use ham_core::EntityRecord;
use ham_core::EntityState;
use ham_core::protocol::{Change, ControlCommand, Response};
use toml::{Table, Value};

use super::{Daemon, Entity, EntityId, log};
use crate::config::{Config, EntityConfig};
use ham_core::layout::SlotIndex;

/// What an unprivileged process may define on its own entity, in bytes of the definitions
/// document (removed definitions stay as tombstones until a cold start, and count).
pub const DEFS_PER_ENTITY: usize = 8 * 1024;
/// The share of the definitions document unprivileged processes may fill together: the
/// rest is always left for root and ham's user.
pub const DEFS_UNPRIVILEGED: usize = ham_core::blob::BLOB_WORDS * 8 / 2;

/// Whether `defs` (`len` bytes as text) keeps an unprivileged requester's entity `own`
/// within [`DEFS_PER_ENTITY`], and the document within [`DEFS_UNPRIVILEGED`].
fn within_share(defs: &Table, own: &str, len: usize) -> Result<(), String> {
    let mine: usize = defs
        .get("condition")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c.get("entity").and_then(Value::as_str) == Some(own))
        .map(|c| toml::to_string(c).map_or(0, |t| t.len()))
        .sum();
    if mine > DEFS_PER_ENTITY {
        return Err(format!(
            "the definitions of `{own}` would take {mine} bytes, over its quota of \
             {DEFS_PER_ENTITY} (removed ones count until ham starts cold)"
        ));
    }
    if len > DEFS_UNPRIVILEGED {
        return Err(format!(
            "the run-time definitions would take {len} bytes; processes that are not root \
             or ham's user may fill {DEFS_UNPRIVILEGED} (the rest is kept for operators)"
        ));
    }
    Ok(())
}

/// QNX flag bits, as `ham.h` defines them.
pub mod flags {
    pub const HREARMAFTERRESTART: u32 = 0x1;
    pub const HCONDINDEPENDENT: u32 = 0x2;
    pub const HCONDNOWAIT: u32 = 0x4;
    pub const HACTIONDONOW: u32 = 0x2;
    pub const HACTIONBREAKONFAIL: u32 = 0x4;
    pub const HACTIONKEEPONFAIL: u32 = 0x8;
}

const EINVAL: i32 = libc::EINVAL;
const ENOENT: i32 = libc::ENOENT;
const EEXIST: i32 = libc::EEXIST;

pub(super) type Refusal = (i32, String);

pub(super) fn tables<'a>(defs: &'a mut Table, key: &str) -> &'a mut Vec<Value> {
    let v = defs
        .entry(key.to_owned())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !v.is_array() {
        *v = Value::Array(Vec::new());
    }
    v.as_array_mut().expect("made an array above")
}

pub(super) fn name_of(t: &Value) -> Option<&str> {
    t.get("name").and_then(Value::as_str)
}

fn json_to_table(map: &serde_json::Map<String, serde_json::Value>) -> Result<Table, Refusal> {
    Table::try_from(map).map_err(|e| (EINVAL, format!("not a table: {e}")))
}

/// A name as QNX accepts it: not empty, no `/`.
fn check_name(what: &str, name: &str) -> Result<(), Refusal> {
    if name.is_empty() || name.contains('/') || name.len() > 63 {
        return Err((
            EINVAL,
            format!("{what} name `{name}` must be 1 to 63 bytes without `/`"),
        ));
    }
    Ok(())
}

impl Daemon {
    /// At start (and takeover): folds the definitions a predecessor left into the
    /// configuration, before the entity table is built.
    pub(super) fn load_defs(&mut self) {
        let Some(bytes) = self.writer.segment().defs().read() else {
            return;
        };
        let text = String::from_utf8_lossy(&bytes);
        let parsed = toml::from_str::<Table>(&text)
            .map_err(|e| e.to_string())
            .and_then(|t| self.parse_with(&t, false).map(|cfg| (t, cfg)));
        match parsed {
            Ok((t, cfg)) => {
                self.defs = t;
                self.cfg = cfg;
            }
            Err(e) => log(
                &self.cfg.instance.name,
                format_args!(
                    "the run-time definitions no longer fit the configuration ({e}); dropped"
                ),
            ),
        }
    }

    /// The configuration file's text followed by `defs`, parsed.
    /// Publishes the definitions document `text`: a fenced HAM exits (see `wrote`); one
    /// that does not fit is refused with `ENOSPC`.
    pub(super) fn publish_defs(&self, text: &str) -> Result<(), Refusal> {
        match self.writer.publish_defs(text.as_bytes()) {
            Ok(_) => Ok(()),
            Err(e @ ham_core::SegmentError::Fenced { .. }) => {
                let why = e.to_string();
                self.wrote::<u64>(Err(e)); // exits
                Err((libc::ENOSPC, why))
            }
            Err(e) => Err((libc::ENOSPC, e.to_string())),
        }
    }

    pub(super) fn parse_with(&self, defs: &Table, strict: bool) -> Result<Config, String> {
        let extra = toml::to_string(defs).map_err(|e| e.to_string())?;
        let head = format!("{}\n\n# run-time definitions\n", self.config_text);
        let text = format!("{head}{extra}");
        let parsed = if strict {
            crate::config::parse_with_runtime(&self.cfg.path, &text, head.len())
        } else {
            crate::config::parse_validated(&self.cfg.path, &text)
        };
        parsed.map_err(|e| match e.key {
            Some(k) => format!("`{k}`: {}", e.message),
            None => e.message,
        })
    }

    /// Carries out a `define` request. `limit` names the entity an unprivileged requester
    /// is (it may add to that entity only what runs nothing); `None` for root or ham's user.
    pub(super) fn define(&mut self, change: Change, limit: Option<&str>) -> Response {
        let answer = match change {
            Change::Control {
                entity,
                condition,
                action,
                command: ControlCommand::GetFlags,
                ..
            } => match self.get_flags(&entity, condition.as_deref(), action.as_deref()) {
                Ok(f) => {
                    let mut r = Response::ok(format!("flags {f:#x}"));
                    r.flags = Some(f);
                    return r;
                }
                Err(e) => Err(e),
            },
            change => self.redefine(change, limit),
        };
        match answer {
            Ok(msg) => Response::ok(msg),
            Err((errno, msg)) => Response::errno(errno, msg),
        }
    }

    fn redefine(&mut self, change: Change, limit: Option<&str>) -> Result<String, Refusal> {
        let mut defs = self.defs.clone();
        let mut new_entity = None;
        let mut run_now_action = None;
        let what = match &change {
            Change::Entity { name, pid, command } => {
                check_name("entity", name)?;
                if let Some(i) = self.entities.id_of(name) {
                    // QNX: attaching a process under a placeholder's name fills it in.
                    let e = &self.entities[i];
                    if let (Some(pid), None, true, false) = (
                        pid.filter(|&p| p > 0),
                        command,
                        e.cfg.attach_only,
                        e.rec.state.has_process(),
                    ) {
                        if crate::procfs::start_time(pid).is_none() {
                            return Err((libc::ESRCH, format!("no process {pid}")));
                        }
                        self.attach_pid(i, pid).map_err(|why| (libc::ESRCH, why))?;
                        return Ok(format!("pid {pid} attached to `{name}`"));
                    }
                    return Err((EEXIST, format!("an entity named `{name}` exists")));
                }
                let free = tables(&mut defs, "entity")
                    .iter()
                    .position(|t| name_of(t).is_some_and(crate::config::is_free_entry));
                if free.is_none()
                    && self.entities.len() >= self.writer.segment().capacity() as usize
                {
                    return Err((
                        libc::ENOSPC,
                        format!(
                            "the state segment holds {} entities ([ham] max_entities)",
                            self.writer.segment().capacity()
                        ),
                    ));
                }
                if let Some(pid) = pid.filter(|&p| p > 0) {
                    if crate::procfs::start_time(pid).is_none() {
                        return Err((libc::ESRCH, format!("no process {pid}")));
                    }
                }
                let mut t = Table::new();
                t.insert("name".into(), Value::String(name.clone()));
                match command {
                    Some(argv) if !argv.is_empty() => {
                        t.insert(
                            "command".into(),
                            Value::Array(argv.iter().cloned().map(Value::String).collect()),
                        );
                        // QNX: an entity ham runs is restarted only by a restart action.
                        t.insert("restart".into(), Value::String("never".into()));
                    }
                    _ => {
                        t.insert("attach_only".into(), Value::Boolean(true));
                        // Restarted only by a restart action (which gives it a command).
                        t.insert("restart".into(), Value::String("never".into()));
                    }
                }
                // In a removed entity's place if there is one (indices and slots stay).
                match free {
                    Some(k) => tables(&mut defs, "entity")[k] = Value::Table(t),
                    None => tables(&mut defs, "entity").push(Value::Table(t)),
                }
                new_entity = Some((name.clone(), *pid));
                format!("entity `{name}` defined")
            }
            Change::Condition { entity, table } => {
                self.entity_index(entity)?;
                let mut t = json_to_table(table)?;
                let name = t
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or((EINVAL, "a condition needs a name".to_owned()))?
                    .to_owned();
                check_name("condition", &name)?;
                t.insert("entity".into(), Value::String(entity.clone()));
                if let Ok((i, k)) = self.condition_index(entity, &name) {
                    // The same definition again (a restarted QNX client re-adds its
                    // conditions at start-up): nothing to add; one a restart pruned is
                    // armed again, as a condition added anew would be.
                    let same = self
                        .defs_condition(&mut defs, entity, &name)
                        .is_ok_and(|ct| same_definition(ct, &t, "action"));
                    if !same {
                        return Err((EEXIST, format!("`{entity}` has a condition `{name}`")));
                    }
                    super::authz::may_touch(limit, entity)?;
                    let e = &mut self.entities[i];
                    if k < 64 && e.rec.disarmed & (1 << k) != 0 {
                        e.rec.disarmed &= !(1 << k);
                        self.publish(i);
                        return Ok(format!("condition `{entity}/{name}` armed again"));
                    }
                    return Ok(format!("condition `{entity}/{name}` already defined"));
                }
                tables(&mut defs, "condition").push(Value::Table(t));
                format!("condition `{entity}/{name}` defined")
            }
            Change::Action {
                entity,
                condition,
                fail_of,
                table,
            } => {
                let t = json_to_table(table)?;
                let name = t
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or((EINVAL, "an action needs a name".to_owned()))?
                    .to_owned();
                check_name("action", &name)?;
                let (i, k) = self.condition_index(entity, condition)?;
                let cond = &self.entities[i].cfg.conditions[k];
                let kind = t.get("do").and_then(Value::as_str).unwrap_or_default();
                // A waitfor with no path (QNX's plain delay) arrives as a `delay`.
                if matches!(kind, "waitfor" | "delay") && cond.nowait {
                    return Err((
                        EINVAL,
                        format!("`{condition}` is HCONDNOWAIT: no waitfor action"),
                    ));
                }
                // The same action again in the same list: already there (idempotent).
                if let Ok(ct) = self.defs_condition(&mut defs, entity, condition) {
                    let list = match fail_of {
                        None => Some(tables(ct, "action")),
                        Some(parent) => tables(ct, "action")
                            .iter_mut()
                            .find(|a| name_of(a) == Some(parent.as_str()) && !is_removed(a))
                            .and_then(Value::as_table_mut)
                            .map(|p| tables(p, "on_fail")),
                    };
                    let existing = list.and_then(|l| {
                        l.iter()
                            .find(|a| name_of(a) == Some(name.as_str()) && !is_removed(a))
                    });
                    if let Some(a) = existing.and_then(Value::as_table) {
                        if same_definition(a, &t, "on_fail") {
                            super::authz::may_touch(limit, entity)?;
                            return Ok(format!(
                                "action `{entity}/{condition}/{name}` already defined"
                            ));
                        }
                    }
                }
                if kind == "restart" && fail_of.is_none() {
                    use crate::actions::Trigger;
                    if !matches!(cond.trigger, Trigger::Death | Trigger::AbnormalDeath) {
                        return Err((
                            EINVAL,
                            "a restart action belongs to a death condition".to_owned(),
                        ));
                    }
                    let has_restart = self.entities[i].cfg.conditions.iter().any(|c| {
                        c.enabled
                            && c.actions.iter().any(|a| {
                                a.enabled
                                    && matches!(a.kind, crate::actions::ActionKind::Restart { .. })
                            })
                    });
                    if has_restart {
                        return Err((EINVAL, format!("`{entity}` already has a restart action")));
                    }
                }
                let ct = self.defs_condition(&mut defs, entity, condition)?;
                let list = match fail_of {
                    None => tables(ct, "action"),
                    Some(parent) => {
                        let p = tables(ct, "action")
                            .iter_mut()
                            .find(|a| name_of(a) == Some(parent.as_str()))
                            .and_then(Value::as_table_mut)
                            .ok_or((ENOENT, format!("no run-time action `{parent}`")))?;
                        tables(p, "on_fail")
                    }
                };
                if list
                    .iter()
                    .any(|a| name_of(a) == Some(name.as_str()) && !is_removed(a))
                {
                    return Err((EEXIST, format!("an action `{name}` exists there")));
                }
                let run_now =
                    fail_of.is_none() && t.get("run_now").and_then(Value::as_bool) == Some(true);
                list.push(Value::Table(t));
                if run_now {
                    run_now_action = Some((entity.clone(), condition.clone(), name.clone()));
                }
                format!("action `{entity}/{condition}/{name}` defined")
            }
            Change::Remove {
                entity,
                condition,
                action,
                fail,
            } => {
                let Some(condition) = condition else {
                    return Err((EINVAL, "remove needs a condition".to_owned()));
                };
                let ct = self.defs_condition(&mut defs, entity, condition)?;
                match (action, fail) {
                    (None, _) => {
                        ct.insert("enabled".into(), Value::Boolean(false));
                        ct.insert("removed".into(), Value::Boolean(true));
                    }
                    (Some(a), None) => {
                        let at = find_action(ct, a)?;
                        at.insert("enabled".into(), Value::Boolean(false));
                        at.insert("removed".into(), Value::Boolean(true));
                    }
                    (Some(a), Some(f)) => {
                        let at = find_action(ct, a)?;
                        let ft = tables(at, "on_fail")
                            .iter_mut()
                            .find(|x| name_of(x) == Some(f.as_str()) && !is_removed(x))
                            .and_then(Value::as_table_mut)
                            .ok_or((ENOENT, format!("no fail action `{f}`")))?;
                        ft.insert("enabled".into(), Value::Boolean(false));
                        ft.insert("removed".into(), Value::Boolean(true));
                    }
                }
                format!("removed from `{entity}`")
            }
            Change::Control {
                entity,
                condition,
                action,
                command,
                flags,
            } => {
                let Some(condition) = condition else {
                    // Entity level: enable / disable all its run-time conditions.
                    self.entity_index(entity)?;
                    let enable = match command {
                        ControlCommand::Enable => true,
                        ControlCommand::Disable => false,
                        _ => {
                            return Err((EINVAL, "an entity takes HENABLE or HDISABLE".to_owned()));
                        }
                    };
                    for c in tables(&mut defs, "condition").iter_mut() {
                        if c.get("entity").and_then(Value::as_str) == Some(entity.as_str())
                            && c.get("removed").and_then(Value::as_bool) != Some(true)
                        {
                            if let Some(t) = c.as_table_mut() {
                                t.insert("enabled".into(), Value::Boolean(enable));
                            }
                        }
                    }
                    return self
                        .commit(defs, None, limit)
                        .map(|()| format!("`{entity}` updated"));
                };
                let ct = self.defs_condition(&mut defs, entity, condition)?;
                let (t, bits): (&mut Table, &[(u32, &str)]) = match action {
                    None => (
                        ct,
                        &[
                            (flags::HREARMAFTERRESTART, "rearm"),
                            (flags::HCONDINDEPENDENT, "independent"),
                            (flags::HCONDNOWAIT, "nowait"),
                        ],
                    ),
                    Some(a) => (
                        find_action(ct, a)?,
                        &[
                            (flags::HACTIONDONOW, "run_now"),
                            (flags::HACTIONBREAKONFAIL, "break_on_fail"),
                        ],
                    ),
                };
                let current = bits
                    .iter()
                    .filter(|(_, k)| t.get(*k).and_then(Value::as_bool).unwrap_or(*k == "rearm"))
                    .fold(0, |m, (b, _)| m | b);
                let next = match command {
                    ControlCommand::Enable | ControlCommand::Disable => {
                        t.insert(
                            "enabled".into(),
                            Value::Boolean(*command == ControlCommand::Enable),
                        );
                        current
                    }
                    ControlCommand::AddFlags => current | flags,
                    ControlCommand::RemoveFlags => current & !flags,
                    ControlCommand::SetFlags => *flags,
                    ControlCommand::GetFlags => current,
                };
                for (b, k) in bits {
                    t.insert((*k).into(), Value::Boolean(next & b != 0));
                }
                format!("`{entity}/{condition}` updated")
            }
        };
        self.commit(defs, new_entity, limit)?;
        // QNX HACTIONDONOW: an action added with it also runs once, now.
        if let Some((entity, condition, action)) = run_now_action {
            if let Ok((i, k)) = self.condition_index(&entity, &condition) {
                let a = self.entities[i].cfg.conditions[k]
                    .actions
                    .iter()
                    .find(|a| a.name.as_deref() == Some(action.as_str()) && !a.removed)
                    .cloned();
                if let Some(a) = a {
                    self.run_now(i, vec![a], false);
                }
            }
        }
        Ok(what)
    }

    /// Validates `defs` with the configuration, checks that an unprivileged requester
    /// (`limit`: the entity it is) adds nothing but harmless actions to itself, publishes
    /// it, and applies it.
    fn commit(
        &mut self,
        defs: Table,
        new_entity: Option<(String, Option<i32>)>,
        limit: Option<&str>,
    ) -> Result<(), Refusal> {
        let cfg = self.parse_with(&defs, true).map_err(|e| (EINVAL, e))?;
        let text = toml::to_string(&defs).map_err(|e| (EINVAL, e.to_string()))?;
        if let Some(own) = limit {
            self.may_add(&cfg, own)?;
            if let Err(why) = within_share(&defs, own, text.len()) {
                self.wrote(self.writer.bump_limit(ham_core::layout::LIMIT_DEFS));
                return Err((libc::ENOSPC, why));
            }
        }
        self.publish_defs(&text)?;
        self.defs = defs;
        // Conditions (and their actions) of every entity come from the new configuration;
        // what runs keeps running.
        let by_name: HashMap<&str, &EntityConfig> =
            cfg.entities.iter().map(|e| (e.name.as_str(), e)).collect();
        for e in &mut self.entities {
            if let Some(ec) = by_name.get(e.cfg.name.as_str()) {
                e.cfg.conditions = ec.conditions.clone();
            }
        }
        let added = new_entity.and_then(|(name, pid)| {
            let k = cfg.entities.iter().position(|e| e.name == name)?;
            Some((cfg.entities[k].clone(), k, pid))
        });
        self.cfg = cfg;
        if let Some((ec, k, pid)) = added {
            let i = self.add_entity(ec, EntityId::from_index(k));
            match pid {
                Some(pid) if pid > 0 => {
                    if let Err(why) = self.attach_pid(i, pid) {
                        return Err((ENOENT, why));
                    }
                }
                _ => self.start_when_ready(i),
            }
        }
        Ok(())
    }

    /// The permission rule for definitions, checked on what they parse to, in one place:
    /// compared with what runs now, `cfg` may differ only in conditions of entity `own`,
    /// and only by actions that run nothing (log, notify, heartbeat-healthy) at any depth
    /// of any fail list. Everything else runs with ham's privileges.
    fn may_add(&self, cfg: &Config, own: &str) -> Result<(), Refusal> {
        let denied = |what: String| {
            Err((
                libc::EPERM,
                format!(
                    "permission denied: {what}; a process may add to its own entity only \
                     conditions and actions that run nothing (log, notify, heartbeat-healthy)"
                ),
            ))
        };
        if cfg.entities.len() != self.entities.len() {
            return denied("it would define an entity".into());
        }
        for (e, new) in self.entities.iter().zip(&cfg.entities) {
            let old = &e.cfg.conditions;
            if new.name != e.cfg.name {
                return denied(format!("it would change entity `{}`", e.cfg.name));
            }
            for (k, c) in new.conditions.iter().enumerate() {
                if old.get(k) == Some(c) {
                    continue;
                }
                if new.name != own {
                    return denied(format!("it would change entity `{}`", new.name));
                }
                if !c.adds_only_harmless(old.get(k)) {
                    return denied(format!(
                        "condition `{}` of `{own}` would run an action that acts",
                        c.name.as_deref().unwrap_or("?")
                    ));
                }
            }
            if new.conditions.len() < old.len() {
                return denied(format!("it would remove a condition of `{}`", new.name));
            }
        }
        Ok(())
    }

    /// A new entity, in a free slot of the segment.
    /// A new entity at index `i` of the configuration: a free entry's place (and slot), or
    /// a new one at the end, in a free slot of the segment.
    fn add_entity(&mut self, ec: EntityConfig, i: EntityId) -> EntityId {
        let rec = EntityRecord::new(&ec.name);
        if i.index() < self.entities.len() {
            let slot = self.entities[i].slot;
            self.entities.replace(i, Entity::new(ec, slot, rec));
        } else {
            let used: std::collections::HashSet<SlotIndex> =
                self.entities.iter().map(|e| e.slot).collect();
            let slot = (0..self.writer.segment().capacity())
                .map(SlotIndex)
                .find(|s| !used.contains(s))
                .unwrap_or(SlotIndex(u32::MAX));
            let pushed = self.entities.push(Entity::new(ec, slot, rec));
            debug_assert_eq!(pushed, i, "a new entity's place is its configuration index");
        }
        self.prepare_cgroup(i);
        self.prepare_output(i, &mut HashMap::new());
        self.publish(i);
        i
    }

    fn attach_pid(&mut self, i: EntityId, pid: i32) -> Result<(), String> {
        self.adopt_attached(i, pid)?;
        debug_assert_eq!(self.entities[i].rec.state, EntityState::Running);
        Ok(())
    }

    fn entity_index(&self, name: &str) -> Result<EntityId, Refusal> {
        self.entities
            .id_of(name)
            .ok_or((ENOENT, format!("no entity named `{name}`")))
    }

    /// Entity and condition indices of `entity/condition`.
    pub(super) fn condition_index(
        &self,
        entity: &str,
        condition: &str,
    ) -> Result<(EntityId, usize), Refusal> {
        let i = self.entity_index(entity)?;
        let k = self.entities[i]
            .cfg
            .conditions
            .iter()
            .position(|c| c.name.as_deref() == Some(condition) && !c.removed)
            .ok_or((ENOENT, format!("`{entity}` has no condition `{condition}`")))?;
        Ok((i, k))
    }

    /// The run-time table of `entity/condition` in `defs` (configured ones cannot change).
    fn defs_condition<'a>(
        &self,
        defs: &'a mut Table,
        entity: &str,
        condition: &str,
    ) -> Result<&'a mut Table, Refusal> {
        tables(defs, "condition")
            .iter_mut()
            .find(|c| {
                c.get("entity").and_then(Value::as_str) == Some(entity)
                    && name_of(c) == Some(condition)
                    && c.get("removed").and_then(Value::as_bool) != Some(true)
            })
            .and_then(Value::as_table_mut)
            .ok_or((
                ENOENT,
                format!("`{entity}` has no run-time condition `{condition}`"),
            ))
    }

    fn get_flags(
        &self,
        entity: &str,
        condition: Option<&str>,
        action: Option<&str>,
    ) -> Result<u32, Refusal> {
        let Some(condition) = condition else {
            self.entity_index(entity)?;
            return Ok(0);
        };
        let (i, k) = self.condition_index(entity, condition)?;
        let c = &self.entities[i].cfg.conditions[k];
        match action {
            None => Ok([
                (c.rearm, flags::HREARMAFTERRESTART),
                (c.independent && !c.nowait, flags::HCONDINDEPENDENT),
                (c.nowait, flags::HCONDNOWAIT),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .fold(0, |m, (_, b)| m | b)),
            Some(a) => {
                let a = c
                    .actions
                    .iter()
                    .find(|x| x.name.as_deref() == Some(a))
                    .ok_or((ENOENT, format!("no action `{a}`")))?;
                Ok([
                    (a.run_now, flags::HACTIONDONOW),
                    (a.break_on_fail, flags::HACTIONBREAKONFAIL),
                    (true, flags::HACTIONKEEPONFAIL),
                ]
                .iter()
                .filter(|(on, _)| *on)
                .fold(0, |m, (_, b)| m | b))
            }
        }
    }
}

fn is_removed(t: &Value) -> bool {
    t.get("removed").and_then(Value::as_bool) == Some(true)
}

fn find_action<'a>(ct: &'a mut Table, name: &str) -> Result<&'a mut Table, Refusal> {
    tables(ct, "action")
        .iter_mut()
        .find(|a| name_of(a) == Some(name) && !is_removed(a))
        .and_then(Value::as_table_mut)
        .ok_or((ENOENT, format!("no run-time action `{name}`")))
}

/// Whether a definition in the document (`old`) is the one asked for again (`new`), its
/// `nested` list (actions, fail actions: added one by one) aside.
fn same_definition(old: &Table, new: &Table, nested: &str) -> bool {
    let strip = |t: &Table| {
        let mut t = t.clone();
        t.remove(nested);
        t
    };
    strip(old) == strip(new)
}

/// The definition of a free entry (what a removed run-time entity leaves).
pub(super) fn free_entry(name: &str) -> Table {
    let mut t = Table::new();
    t.insert("name".into(), Value::String(name.to_owned()));
    t.insert("attach_only".into(), Value::Boolean(true));
    t.insert("restart".into(), Value::String("never".into()));
    t
}
