//! Where the entities with a `placement` run: pure decisions over what etcd holds under
//! `singletons/` (the agent reads it, decides here, then acts: a guarded create, a place or
//! an unplace at its ham, a guarded delete).
//!
//! A one-of-n entity `E` has one key, `singletons/E`; an m-of-n one has `count` keys,
//! `singletons/E/0` … `singletons/E/<count-1>`. A key is created only if absent (etcd
//! transaction on its create revision), attached to its node's lease, and its value is the
//! node's name. Its create revision is the fencing token: etcd's revision only grows, so a
//! new owner's token is higher than every earlier one's.

use std::collections::BTreeMap;

use ham_guardian::config::Placement;

use crate::etcd::Kv;

/// One key's holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub node: String,
    pub token: u64,
    pub lease: u64,
}

/// The keys of entity `name` with `p`'s count.
pub fn keys(prefix: &str, name: &str, p: &Placement) -> Vec<String> {
    if p.count == 1 {
        vec![format!("{prefix}{name}")]
    } else {
        (0..p.count)
            .map(|k| format!("{prefix}{name}/{k}"))
            .collect()
    }
}

/// Who holds which key under `prefix`.
pub fn holders(prefix: &str, kvs: &[Kv]) -> BTreeMap<String, Holder> {
    kvs.iter()
        .filter(|kv| kv.key.starts_with(prefix))
        .map(|kv| {
            (
                kv.key.clone(),
                Holder {
                    node: String::from_utf8_lossy(&kv.value).into_owned(),
                    token: kv.create_revision,
                    lease: kv.lease,
                },
            )
        })
        .collect()
}

/// This node's rank for `p`: its place in `preferred`, or after all of them. A node of
/// rank r waits r steps before it tries a free key, so the most preferred free node wins.
pub fn rank(p: &Placement, node: &str) -> usize {
    p.preferred
        .iter()
        .position(|n| n == node)
        .unwrap_or(p.preferred.len())
}

/// What this node should do about one placed entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing (it holds what it runs, or it waits, or it may not run it).
    Nothing,
    /// It holds `key` with `token` and should be running it.
    Run { key: String, token: u64 },
    /// Try to create `key` (free), after waiting `rank` steps from when it was seen free.
    Campaign { key: String, rank: usize },
    /// It holds `key` with `token` but a more preferred node is in the view (fail back):
    /// stop it, then give the key up.
    Resign { key: String, token: u64 },
}

/// The node deciding: its name, its lease, the view's nodes, and whether it is fresh (its
/// lease renewed within its TTL and etcd read: a stale node places nothing new).
#[derive(Debug, Clone, Copy)]
pub struct Me<'a> {
    pub node: &'a str,
    pub lease: u64,
    pub view: &'a [&'a str],
    pub fresh: bool,
}

/// The decision for entity `name` on node `me`, given who holds the keys under `prefix`.
pub fn decide(
    name: &str,
    p: &Placement,
    prefix: &str,
    holders: &BTreeMap<String, Holder>,
    me: Me<'_>,
) -> Decision {
    let Me {
        node: me,
        lease,
        view,
        fresh,
    } = me;
    let keys = keys(prefix, name, p);
    let mine = keys.iter().find(|k| {
        holders
            .get(*k)
            .is_some_and(|h| h.node == me && h.lease == lease)
    });
    if let Some(key) = mine {
        let token = holders[key].token;
        let my_rank = rank(p, me);
        let better_in_view = p.fail_back
            && view.iter().any(|n| {
                rank(p, n) < my_rank
                    && !keys
                        .iter()
                        .any(|k| holders.get(k).is_some_and(|h| h.node == *n))
            });
        if better_in_view && fresh {
            return Decision::Resign {
                key: key.clone(),
                token,
            };
        }
        return Decision::Run {
            key: key.clone(),
            token,
        };
    }
    if !fresh || (p.preferred_only && !p.preferred.iter().any(|n| n == me)) {
        return Decision::Nothing;
    }
    // A node runs one copy at most: it takes a free key only if it holds none.
    match keys.iter().find(|k| !holders.contains_key(*k)) {
        Some(key) => Decision::Campaign {
            key: key.clone(),
            rank: rank(p, me),
        },
        None => Decision::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/ham/c/singletons/";

    fn me<'a>(node: &'a str, lease: u64, view: &'a [&'a str], fresh: bool) -> Me<'a> {
        Me {
            node,
            lease,
            view,
            fresh,
        }
    }

    fn one(preferred: &[&str], fail_back: bool, only: bool) -> Placement {
        Placement {
            count: 1,
            preferred: preferred.iter().map(|s| s.to_string()).collect(),
            fail_back,
            preferred_only: only,
        }
    }

    fn held(entries: &[(&str, &str, u64, u64)]) -> BTreeMap<String, Holder> {
        entries
            .iter()
            .map(|(k, node, token, lease)| {
                (
                    format!("{P}{k}"),
                    Holder {
                        node: node.to_string(),
                        token: *token,
                        lease: *lease,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_free_key_is_campaigned_for_by_rank() {
        let p = one(&["b", "a"], false, false);
        let h = held(&[]);
        let d = |node| decide("db", &p, P, &h, me(node, 7, &["a", "b", "c"], true));
        assert_eq!(
            d("b"),
            Decision::Campaign {
                key: format!("{P}db"),
                rank: 0
            }
        );
        assert_eq!(
            d("a"),
            Decision::Campaign {
                key: format!("{P}db"),
                rank: 1
            }
        );
        assert_eq!(
            d("c"),
            Decision::Campaign {
                key: format!("{P}db"),
                rank: 2
            }
        );
    }

    #[test]
    fn the_holder_runs_it_and_others_wait() {
        let p = one(&[], false, false);
        let h = held(&[("db", "a", 42, 7)]);
        assert_eq!(
            decide("db", &p, P, &h, me("a", 7, &["a", "b"], true)),
            Decision::Run {
                key: format!("{P}db"),
                token: 42
            }
        );
        assert_eq!(
            decide("db", &p, P, &h, me("b", 9, &["a", "b"], true)),
            Decision::Nothing
        );
        // A key of this node under another lease (an earlier incarnation) is not this
        // lease's: not run on it (it expires with its lease).
        assert_eq!(
            decide("db", &p, P, &h, me("a", 8, &["a", "b"], true)),
            Decision::Nothing
        );
    }

    #[test]
    fn a_stale_node_places_nothing_new_but_keeps_what_it_holds_until_ham_fences_it() {
        let p = one(&[], false, false);
        assert_eq!(
            decide("db", &p, P, &held(&[]), me("a", 7, &["a"], false)),
            Decision::Nothing
        );
        assert_eq!(
            decide(
                "db",
                &p,
                P,
                &held(&[("db", "a", 5, 7)]),
                me("a", 7, &["a"], false)
            ),
            Decision::Run {
                key: format!("{P}db"),
                token: 5
            }
        );
    }

    #[test]
    fn preferred_only_keeps_others_out_and_fail_back_hands_over() {
        let p = one(&["a", "b"], true, true);
        assert_eq!(
            decide("db", &p, P, &held(&[]), me("c", 7, &["a", "b", "c"], true)),
            Decision::Nothing
        );
        // b holds it; a (more preferred) is in the view: b resigns.
        let h = held(&[("db", "b", 11, 9)]);
        assert_eq!(
            decide("db", &p, P, &h, me("b", 9, &["a", "b"], true)),
            Decision::Resign {
                key: format!("{P}db"),
                token: 11
            }
        );
        // a not in the view: b keeps it.
        assert_eq!(
            decide("db", &p, P, &h, me("b", 9, &["b"], true)),
            Decision::Run {
                key: format!("{P}db"),
                token: 11
            }
        );
    }

    #[test]
    fn m_of_n_takes_one_free_slot_per_node() {
        let p = Placement {
            count: 2,
            preferred: vec![],
            fail_back: false,
            preferred_only: false,
        };
        let h = held(&[("web/0", "a", 3, 7)]);
        assert_eq!(
            decide("web", &p, P, &h, me("b", 9, &["a", "b", "c"], true)),
            Decision::Campaign {
                key: format!("{P}web/1"),
                rank: 0
            }
        );
        assert_eq!(
            decide("web", &p, P, &h, me("a", 7, &["a", "b", "c"], true)),
            Decision::Run {
                key: format!("{P}web/0"),
                token: 3
            }
        );
        let full = held(&[("web/0", "a", 3, 7), ("web/1", "b", 4, 9)]);
        assert_eq!(
            decide("web", &p, P, &full, me("c", 5, &["a", "b", "c"], true)),
            Decision::Nothing
        );
    }
}
