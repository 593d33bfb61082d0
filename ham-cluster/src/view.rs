//! The membership view: the nodes registered under `members/`, each key attached to its
//! node's lease, so a node that stops renewing leaves the view when etcd expires the lease.
//! The view's id is the etcd revision of the change that made it what it is: every join and
//! every leave gives a new id; reading the same members again does not.

use std::collections::BTreeMap;

use ham_core::protocol::{ClusterMember, ClusterView};
use serde::{Deserialize, Serialize};

use crate::etcd::{Event, Kv};

/// What a node writes under `members/<node>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub node: String,
    /// When it registered (Unix ms).
    pub since: u64,
    pub pid: u32,
    /// `role = "supervisor"`.
    #[serde(default)]
    pub supervisor: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    since: u64,
    supervisor: bool,
    /// The create revision of its key: a node that left and came back has a new one.
    created: u64,
}

/// The view as this node knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    id: u64,
    members: BTreeMap<String, Member>,
}

impl View {
    /// The node a key under `prefix` names (`None`: not a member key).
    fn node_of<'k>(prefix: &str, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(prefix)
            .filter(|n| !n.is_empty() && !n.contains('/'))
    }

    fn member_of(prefix: &str, kv: &Kv) -> Option<(String, Member)> {
        let node = Self::node_of(prefix, &kv.key)?;
        let (since, supervisor) = serde_json::from_slice::<Registration>(&kv.value)
            .map(|r| (r.since, r.supervisor))
            .unwrap_or((0, false));
        Some((
            node.to_owned(),
            Member {
                since,
                supervisor,
                created: kv.create_revision,
            },
        ))
    }

    /// The members read whole at revision `rev` (after an outage, a compaction, or a
    /// watch's time limit): whether the view changed. Unchanged, it keeps its id.
    pub fn relist(&mut self, prefix: &str, rev: u64, kvs: &[Kv]) -> bool {
        let members: BTreeMap<String, Member> = kvs
            .iter()
            .filter_map(|kv| Self::member_of(prefix, kv))
            .collect();
        if members == self.members && self.id != 0 {
            return false;
        }
        // The newest key's revision if that change is what made the view; a leave leaves
        // no key, so the read's revision stands for it.
        let newest = members.values().map(|m| m.created).max().unwrap_or(0);
        let left = self.members.keys().any(|n| !members.contains_key(n));
        self.id = if left || newest == 0 {
            rev
        } else {
            newest.max(self.id)
        };
        self.members = members;
        true
    }

    /// Changes a watch reported: whether the view changed.
    pub fn apply(&mut self, prefix: &str, events: &[Event]) -> bool {
        let mut changed = false;
        for e in events {
            match e {
                Event::Put(kv) => {
                    let Some((node, m)) = Self::member_of(prefix, kv) else {
                        continue;
                    };
                    if self.members.get(&node).map(|x| x.created) != Some(m.created) {
                        self.id = kv.mod_revision;
                        changed = true;
                    }
                    self.members.insert(node, m);
                }
                Event::Delete { key, revision } => {
                    let Some(node) = Self::node_of(prefix, key) else {
                        continue;
                    };
                    if self.members.remove(node).is_some() {
                        self.id = *revision;
                        changed = true;
                    }
                }
            }
        }
        changed
    }

    pub fn contains(&self, node: &str) -> bool {
        self.members.contains_key(node)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.members.keys().map(String::as_str)
    }

    /// The supervisors in the view.
    pub fn supervisors(&self) -> impl Iterator<Item = &str> {
        self.members
            .iter()
            .filter(|(_, m)| m.supervisor)
            .map(|(n, _)| n.as_str())
    }

    /// As `hamctl cluster status` shows it.
    pub fn to_protocol(&self) -> ClusterView {
        ClusterView {
            id: self.id,
            members: self
                .members
                .iter()
                .map(|(node, m)| ClusterMember {
                    node: node.clone(),
                    since: m.since,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/ham/c/members/";

    fn kv(node: &str, created: u64, modified: u64) -> Kv {
        Kv {
            key: format!("{P}{node}"),
            value: serde_json::to_vec(&Registration {
                node: node.into(),
                since: created * 1000,
                pid: 1,
                supervisor: false,
            })
            .unwrap(),
            create_revision: created,
            mod_revision: modified,
            lease: 9,
        }
    }

    #[test]
    fn every_join_and_leave_gives_a_new_id_and_a_same_read_keeps_it() {
        let mut v = View::default();
        assert!(v.relist(P, 10, &[kv("a", 4, 4), kv("b", 7, 7)]));
        assert_eq!(v.id, 7);
        assert!(
            !v.relist(P, 12, &[kv("a", 4, 4), kv("b", 7, 7)]),
            "same members"
        );
        assert_eq!(v.id, 7);
        assert!(v.apply(P, &[Event::Put(kv("c", 13, 13))]));
        assert_eq!(v.id, 13);
        // A put that renews nothing (same key, same create revision) is no change.
        assert!(!v.apply(P, &[Event::Put(kv("c", 13, 14))]));
        assert!(v.apply(
            P,
            &[Event::Delete {
                key: format!("{P}b"),
                revision: 15
            }]
        ));
        assert_eq!(v.id, 15);
        assert_eq!(v.nodes().collect::<Vec<_>>(), ["a", "c"]);
        // Left while nobody watched: the read's revision stands for the leave.
        assert!(v.relist(P, 20, &[kv("a", 4, 4)]));
        assert_eq!(v.id, 20);
        // A node that left and came back is a new member (a new create revision).
        assert!(v.relist(P, 25, &[kv("a", 22, 22)]));
        assert_eq!(v.id, 22);
    }

    #[test]
    fn keys_that_are_not_members_are_not_in_the_view() {
        let mut v = View::default();
        let mut other = kv("x", 3, 3);
        other.key = format!("{P}x/extra");
        assert!(v.relist(P, 5, &[kv("a", 2, 2), other]));
        assert_eq!(v.nodes().collect::<Vec<_>>(), ["a"]);
        assert_eq!(v.to_protocol().members[0].since, 2000);
    }
}
