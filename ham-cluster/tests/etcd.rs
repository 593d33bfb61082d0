//! The agent's etcd client against a real etcd (one member of the test's own, on loopback):
//! leases, create-if-absent, the guarded write that a deposed master cannot make, and the
//! watch. Skipped without `etcd` on PATH, unless `HAM_REQUIRE_ETCD=1`.

use std::time::{Duration, Instant};

use ham_cluster::etcd::{Etcd, EtcdError, Event};

#[path = "../../tests/support/etcd.rs"]
mod support;

/// One etcd member of the test's own, and its client URL (None: skipped).
fn etcd(dir: &std::path::Path) -> Option<(support::Member, String)> {
    let bin = support::etcd_bin()?;
    let mut members = support::start(&bin, dir, 1, "ham-cluster-test", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    let m = members.pop().unwrap();
    let url = format!("http://127.0.0.1:{}", m.client);
    Some((m, url))
}

/// A loopback port nothing listens on (taken by the kernel, then let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_deposed_masters_guarded_write_fails_and_tokens_only_grow() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_member, url)) = etcd(dir.path()) else {
        return;
    };
    let e = Etcd::new(vec![url], Duration::from_secs(2));
    let l1 = e.grant(5).unwrap();
    let r1 = e
        .create("/t/roles/master", b"a", l1)
        .unwrap()
        .expect("created");
    assert_eq!(
        e.create("/t/roles/master", b"b", l1).unwrap(),
        None,
        "only once"
    );
    assert!(
        e.txn_guarded("/t/roles/master", r1, &[("/t/config/k", b"x")], &[])
            .unwrap()
    );
    // a's lease goes: the role is free, b takes it with a higher revision.
    e.revoke(l1).unwrap();
    assert!(matches!(e.keepalive(l1), Err(EtcdError::LeaseGone)));
    let l2 = e.grant(5).unwrap();
    let r2 = e
        .create("/t/roles/master", b"b", l2)
        .unwrap()
        .expect("free again");
    assert!(
        r2 > r1,
        "a later holder's token is higher ({r2} after {r1})"
    );
    // a, deposed, tries to write with its old revision: refused, nothing written.
    assert!(
        !e.txn_guarded("/t/roles/master", r1, &[("/t/config/k", b"stale")], &[])
            .unwrap()
    );
    assert_eq!(e.get("/t/config/k").unwrap().unwrap().value, b"x");
    // Deletes only what this holder made.
    assert!(!e.delete_if_created_at("/t/roles/master", r1).unwrap());
    assert!(e.delete_if_created_at("/t/roles/master", r2).unwrap());
    assert!(e.get("/t/roles/master").unwrap().is_none());
}

#[test]
fn a_watch_reports_puts_and_deletes_in_order_and_ends_at_its_time_limit() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_member, url)) = etcd(dir.path()) else {
        return;
    };
    let e = Etcd::new(vec![url], Duration::from_secs(2));
    let (rev, kvs) = e.range_prefix("/w/").unwrap();
    assert!(kvs.is_empty());
    e.put("/w/a", b"1", 0).unwrap();
    e.put("/w/b", b"2", 0).unwrap();
    e.put("/x/other", b"3", 0).unwrap();
    assert!(
        e.delete_if_created_at("/w/a", e.get("/w/a").unwrap().unwrap().create_revision)
            .unwrap()
    );
    let mut seen = Vec::new();
    let started = Instant::now();
    e.watch_prefix("/w/", rev + 1, Duration::from_millis(500), |events| {
        seen.extend(events);
        true
    })
    .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "ended at its limit"
    );
    let keys: Vec<String> = seen
        .iter()
        .map(|ev| match ev {
            Event::Put(kv) => format!("put {}", kv.key),
            Event::Delete { key, .. } => format!("delete {key}"),
        })
        .collect();
    assert_eq!(keys, ["put /w/a", "put /w/b", "delete /w/a"]);
    // Unreachable endpoints are said so, each with why.
    let dead = Etcd::new(
        vec![format!("http://127.0.0.1:{}", free_port())],
        Duration::from_millis(300),
    );
    match dead.get("/w/b") {
        Err(EtcdError::Unreachable(why)) => assert!(why.contains("127.0.0.1"), "{why}"),
        other => panic!("{other:?}"),
    }
}
