//! The checkpoint store from the entity's side (NX-OS's Persistent Storage Service): what a
//! process puts survives its death, ham's takeovers and (for durable keys) a reboot, so a
//! restarted process carries on where the last one stopped.
//!
//! ```no_run
//! use ham_detector_sdk::{Client, Durability, Scope};
//! let ham = Client::connect()?;
//! let store = ham.pss_own()?;
//! let n = store.get("count")?.map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap()));
//! store.put("count", &(n + 1).to_le_bytes(), Scope::Private, Durability::Volatile)?;
//! # Ok::<(), ham_detector_sdk::Error>(())
//! ```
//!
//! A put writes shared memory and costs no system call; a durable put then asks ham to
//! write the entity's durable keys to disk, and returns once they are there. A put is all
//! or nothing, whatever kills the writer. `HAM_RESTART` (`first`, `stateful`, `stateless`)
//! says whether the store was kept, `HAM_PREVIOUS_EXIT` how the process before ended.

use ham_core::protocol::PssItem;
use ham_core::pss::{FLAG_DURABLE, FLAG_SHARED, PssMap};

use super::*;

/// Who may read a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Only the entity's own processes (and ham's operators).
    Private,
    /// Other entities too (through ham, [`Client::pss_read`]); only the owner writes.
    Shared,
}

/// Whether a key survives a reboot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Kept in memory by ham: survives the process, a takeover, a warm start.
    Volatile,
    /// Also on disk (`[ham] state_dir`): survives a reboot. Slower: each put waits for it.
    Durable,
}

/// An entity's checkpoint store, mapped.
pub struct Pss {
    map: PssMap,
    entity: String,
    socket: PathBuf,
}

impl Client {
    /// The checkpoint store of `entity`: this process must be the entity's (or a helper
    /// its process runs, or root / ham's user).
    pub fn pss(&self, entity: &str) -> Result<Pss, Error> {
        let req = Request::PssOpen {
            entity: entity.to_owned(),
        };
        let (_, fd) = self.request_fd(&req)?;
        let fd = fd.ok_or_else(|| Error::BadAnswer("pss-open without a descriptor".into()))?;
        let map = PssMap::from_fd(&fd)
            .map_err(|e| Error::BadAnswer(format!("the checkpoint store ham handed over: {e}")))?;
        Ok(Pss {
            map,
            entity: entity.to_owned(),
            socket: self.location.socket(),
        })
    }

    /// The checkpoint store of the entity ham started this process as (`HAM_ENTITY`).
    pub fn pss_own(&self) -> Result<Pss, Error> {
        let entity = std::env::var("HAM_ENTITY").map_err(|_| Error::Config {
            path: PathBuf::from("HAM_ENTITY"),
            why: "this process was not started by ham as an entity (no HAM_ENTITY)".into(),
        })?;
        self.pss(&entity)
    }

    /// Reads `entity`'s key (or all its keys) through ham: another entity's shared keys,
    /// or all of them for its own processes and operators.
    pub fn pss_read(&self, entity: &str, key: Option<&str>) -> Result<Vec<PssItem>, Error> {
        let r = self.request(&Request::PssRead {
            entity: entity.to_owned(),
            key: key.map(str::to_owned),
        })?;
        Ok(r.pss.map(Vec::from).unwrap_or_default())
    }
}

impl Pss {
    /// Writes `value` under `key`: all or nothing. A durable put returns once it is on
    /// disk.
    pub fn put(
        &self,
        key: &str,
        value: &[u8],
        scope: Scope,
        durability: Durability,
    ) -> Result<(), Error> {
        let mut flags = 0;
        if scope == Scope::Shared {
            flags |= FLAG_SHARED;
        }
        if durability == Durability::Durable {
            flags |= FLAG_DURABLE;
        }
        self.map.put(key, value, flags)?;
        if durability == Durability::Durable {
            self.sync()?;
        }
        Ok(())
    }

    /// The value of `key`, if it is there.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.map.get(key)?.map(|v| v.bytes))
    }

    /// Deletes `key`; whether it was there. A durable key is gone from disk on return.
    pub fn delete(&self, key: &str) -> Result<bool, Error> {
        let durable = self.map.get(key)?.is_some_and(|v| v.durable());
        let there = self.map.delete(key)?;
        if durable {
            self.sync()?;
        }
        Ok(there)
    }

    /// Every key, with its scope and durability.
    pub fn keys(&self) -> Vec<(String, Scope, Durability)> {
        self.map
            .entries()
            .into_iter()
            .map(|v| {
                let scope = if v.shared() {
                    Scope::Shared
                } else {
                    Scope::Private
                };
                let durability = if v.durable() {
                    Durability::Durable
                } else {
                    Durability::Volatile
                };
                (v.key, scope, durability)
            })
            .collect()
    }

    /// The entity this store is of.
    pub fn entity(&self) -> &str {
        &self.entity
    }

    /// Asks ham to write the durable keys to disk, and waits until they are.
    fn sync(&self) -> Result<(), Error> {
        ask(
            &self.socket,
            &Request::PssSync {
                entity: self.entity.clone(),
            },
        )
        .map(|_| ())
    }
}
