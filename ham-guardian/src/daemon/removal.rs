//! Run-time entities leave (a QNX detach): their place becomes a free entry that keeps every index and slot.

use ham_core::EntityRecord;
use libc::{EINVAL, ENOENT};
use toml::Value;

use super::runtime::{Refusal, free_entry, name_of, tables};
use super::*;

impl Daemon {
    /// Whether entity `i` was defined at run time (not by the configuration file).
    pub(super) fn is_runtime(&self, i: EntityId) -> bool {
        let name = self.entities[i].cfg.name.as_str();
        self.defs
            .get("entity")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|t| name_of(t) == Some(name)))
    }

    /// Removes run-time entity `i` (a QNX detach): its `detach` conditions fire, then it,
    /// its conditions and their actions leave the definitions. Its place becomes a free
    /// entry (a tombstone, invisible to status) that keeps every other entity at its index
    /// and its segment slot, and that the next new entity takes. A process of its keeps
    /// running, no longer supervised (ham reaps it if it is ham's child).
    pub(super) fn remove_entity(&mut self, i: EntityId) -> Result<(), Refusal> {
        let name = self.entities[i].cfg.name.clone();
        let slot = self.entities[i].slot;
        let free = format!("{}{slot}", crate::config::FREE_ENTRY);
        let mut defs = self.defs.clone();
        let entry = tables(&mut defs, "entity")
            .iter_mut()
            .find(|t| name_of(t) == Some(name.as_str()))
            .and_then(Value::as_table_mut)
            .ok_or((ENOENT, format!("`{name}` is not a run-time entity")))?;
        *entry = free_entry(&free);
        tables(&mut defs, "condition")
            .retain(|c| c.get("entity").and_then(Value::as_str) != Some(name.as_str()));
        // Another entity's actions may name it (restart, signal, …): then it stays.
        let cfg = self
            .parse_with(&defs, true)
            .map_err(|e| (libc::EBUSY, format!("`{name}` cannot be removed: {e}")))?;
        let text = toml::to_string(&defs).map_err(|e| (EINVAL, e.to_string()))?;
        // Its detach conditions, while it is still there.
        let pid = self.entities[i].rec.pid;
        self.record(i, None, "detach", "detach", &format!("pid {pid}; removed"));
        self.fire(i, crate::actions::Event::Detach, None);
        self.publish_defs(&text)?;
        self.defs = defs;
        // Its checkpoint store and queue are not the next entity's of this slot.
        self.pss_forget(i);
        self.mts_drop(i);
        // What runs for it ends here (a command it started goes on, unwatched).
        // (Its queue first: ending its runs must not start the ones queued behind them.)
        self.runs.forget_queue(i);
        for id in self.runs.of(i) {
            self.end_run(id);
        }
        self.unwatch_pidfd(i);
        self.end_attachment(i);
        self.drop_output(i);
        self.patches.retain(|p| p.entity != i);
        self.exit_watch_changed();
        self.deferred.remove(i);
        if pid > 0 {
            if let Some(cg) = &self.cgroups {
                // Out of the cgroup a later entity of that name gets.
                if let Err(e) = cg.release(&name, pid) {
                    self.say_limited("cgroup-release", format_args!("{name}: pid {pid}: {e}"));
                }
            }
        }
        let ec = cfg.entities[i.index()].clone();
        debug_assert_eq!(ec.name, free);
        self.entities
            .replace(i, Entity::new(ec, slot, EntityRecord::new(&free)));
        self.entities[i].rec.state = EntityState::Stopped;
        self.cfg = cfg;
        self.publish(i);
        log(
            &self.cfg.instance.name,
            format_args!("{name}: detached (pid {pid}) and removed"),
        );
        Ok(())
    }
}
