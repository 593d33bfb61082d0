//! `ham-cluster`: the cluster agent. ham starts it as an entity of its own when the
//! configuration has a `[cluster]` table; it registers this node in etcd under a lease,
//! keeps the lease alive, follows the membership view, and reports what it knows to its
//! ham (`cluster-report`), which `hamctl cluster status` shows. It holds no deadline that
//! keeps anything safe: ham does (a dead or hung agent is a stale view, never two owners).
//!
//! Usage: `ham-cluster [-c FILE]` (FILE: `$HAM_CONFIG`, which ham sets for its entities).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use ham_cluster::etcd::{Etcd, EtcdError};
use ham_cluster::placement::{self, Decision};
use ham_cluster::view::{Registration, View};
use ham_core::protocol::{ClusterSingleton, ClusterState, Request};
use ham_guardian::config::{ClusterConfig, Placement};

/// What the agent knows, shared by its two threads.
struct Known {
    view: View,
    /// When a keepalive last succeeded (None: never, since the last registration).
    renewed: Option<Instant>,
    /// The last failure, cleared by the next success of the same thread.
    lease_error: Option<String>,
    view_error: Option<String>,
    /// This node's lease (None: not registered).
    lease: Option<u64>,
    /// CLOCK_MONOTONIC ns by which ham must have stopped what is placed here: the send
    /// time of the last renewal etcd accepted, plus the TTL, less a margin.
    fence_at: u64,
    /// The placed entities' holders, as last read.
    singletons: Vec<ClusterSingleton>,
}

struct Agent {
    cfg: ClusterConfig,
    /// The entities the cluster places, with their placement.
    placed: Vec<(String, Placement)>,
    socket: PathBuf,
    etcd: Etcd,
    known: Mutex<Known>,
}

impl Agent {
    fn prefix(&self) -> String {
        format!("/ham/{}/", self.cfg.name)
    }

    fn members_prefix(&self) -> String {
        format!("{}members/", self.prefix())
    }

    fn ttl(&self) -> Duration {
        Duration::from_nanos(self.cfg.lease_ttl_ns)
    }

    /// What ham shows: stale when the lease was not renewed within its TTL, or the view
    /// could not be read.
    fn state(&self) -> ClusterState {
        let k = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let renewed_lately = k.renewed.is_some_and(|t| t.elapsed() < self.ttl());
        let stale = !renewed_lately || k.view_error.is_some();
        let why = if stale {
            Some(
                k.lease_error
                    .clone()
                    .or_else(|| k.view_error.clone())
                    .unwrap_or_else(|| "not registered yet".into()),
            )
        } else {
            None
        };
        ClusterState {
            cluster: self.cfg.name.clone(),
            node: self.cfg.node.clone(),
            view: k.view.to_protocol(),
            master: None,
            singletons: k.singletons.clone(),
            settings: Default::default(),
            stale,
            why,
            lease: k.lease.unwrap_or(0),
            fence_at: k.fence_at,
        }
    }

    /// Tells ham what the agent knows (ignored when ham cannot be reached: a takeover; the
    /// next report comes within a third of the TTL).
    fn report(&self) {
        let req = Request::ClusterReport {
            state: Box::new(self.state()),
        };
        if let Err(e) = ham_guardian::control::request(&self.socket, &req, Duration::from_secs(2)) {
            eprintln!("ham-cluster: reporting to ham: {e}");
        }
    }

    /// Records a renewal's outcome (said once when it starts failing, and when it
    /// recovers); `sent`: when the renewal that succeeded was sent (CLOCK_MONOTONIC ns).
    fn set_lease(&self, lease: Option<u64>, sent: u64, r: Result<(), String>) {
        let mut k = self.known.lock().unwrap_or_else(|p| p.into_inner());
        k.lease = lease;
        match r {
            Ok(()) => {
                if k.lease_error.take().is_some() {
                    eprintln!("ham-cluster: the lease is renewed again");
                }
                k.renewed = Some(Instant::now());
                // etcd counts the TTL from when its leader took the renewal, which is
                // after it was sent: stopped by then, a process is gone before the lease.
                let ttl = self.cfg.lease_ttl_ns;
                let margin = (ttl / 10).max(200_000_000);
                k.fence_at = sent + ttl - margin;
            }
            Err(why) => {
                if k.lease_error.as_deref() != Some(why.as_str()) {
                    eprintln!("ham-cluster: renewing the lease: {why}");
                }
                k.lease_error = Some(why);
            }
        }
    }

    /// Registers this node under a new lease: the lease.
    fn register(&self) -> Result<u64, EtcdError> {
        let ttl_s = self.ttl().as_secs().max(1);
        let lease = self.etcd.grant(ttl_s)?;
        self.put_registration(lease)?;
        Ok(lease)
    }

    /// Writes `members/<node>` under `lease`.
    fn put_registration(&self, lease: u64) -> Result<(), EtcdError> {
        let me = Registration {
            node: self.cfg.node.clone(),
            since: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            pid: std::process::id(),
        };
        let key = format!("{}{}", self.members_prefix(), self.cfg.node);
        self.etcd
            .put(&key, &serde_json::to_vec(&me).expect("serialises"), lease)?;
        Ok(())
    }

    /// The lease an earlier agent of this node reported to ham, if it still lives: taken
    /// up again, so that what is placed here under it stays placed.
    fn earlier_lease(&self) -> Option<u64> {
        let r = ham_guardian::control::request(
            &self.socket,
            &Request::ClusterStatus,
            Duration::from_secs(2),
        )
        .ok()?;
        let lease = r.cluster.filter(|c| c.lease != 0)?.lease;
        match self.etcd.keepalive(lease) {
            Ok(_) => {
                eprintln!("ham-cluster: taking up lease {lease:x} again");
                Some(lease)
            }
            Err(_) => None,
        }
    }

    /// Keeps this node registered: renews its lease every third of the TTL, registers again
    /// when the lease is gone (it expired while etcd could not be reached).
    fn keep_registered(&self) -> ! {
        let period = self.ttl() / 3;
        let mut lease = self.earlier_lease();
        if let Some(l) = lease {
            // Its registration may have been written by the earlier agent: again, the same.
            let _ = self.put_registration(l);
        }
        loop {
            let round = Instant::now();
            let sent = ham_core::clock::mono_ns();
            let r = match lease {
                None => self.register().map(|l| {
                    eprintln!(
                        "ham-cluster: node {} registered (lease {l:x})",
                        self.cfg.node
                    );
                    lease = Some(l);
                }),
                Some(l) => match self.etcd.keepalive(l) {
                    Err(EtcdError::LeaseGone) => {
                        eprintln!("ham-cluster: lease {l:x} expired; registering again");
                        lease = None;
                        Err(EtcdError::LeaseGone)
                    }
                    r => r.map(|_| ()),
                },
            };
            self.set_lease(lease, sent, r.map_err(|e| e.to_string()));
            self.report();
            std::thread::sleep(period.saturating_sub(round.elapsed()));
        }
    }

    /// Follows the view: reads the members whole, then watches them for at most a TTL, and
    /// again (a gap, a compaction or an outage costs one read).
    fn follow_view(&self) -> ! {
        let prefix = self.members_prefix();
        loop {
            let r = self.etcd.range_prefix(&prefix).and_then(|(rev, kvs)| {
                let changed = {
                    let mut k = self.known.lock().unwrap_or_else(|p| p.into_inner());
                    k.view_error = None;
                    k.view.relist(&prefix, rev, &kvs)
                };
                if changed {
                    self.report();
                }
                self.etcd
                    .watch_prefix(&prefix, rev + 1, self.ttl(), |events| {
                        let changed = {
                            let mut k = self.known.lock().unwrap_or_else(|p| p.into_inner());
                            k.view.apply(&prefix, &events)
                        };
                        if changed {
                            self.report();
                        }
                        true
                    })
            });
            if let Err(e) = r {
                let why = e.to_string();
                let first = {
                    let mut k = self.known.lock().unwrap_or_else(|p| p.into_inner());
                    let first = k.view_error.as_deref() != Some(why.as_str());
                    k.view_error = Some(why.clone());
                    first
                };
                if first {
                    eprintln!("ham-cluster: the view: {why}");
                    self.report();
                }
                // Not a busy loop on an unreachable etcd: each try waits its timeout, and
                // between tries a pause.
                std::thread::sleep(self.ttl() / 5);
            }
        }
    }
}

impl Agent {
    /// Asks ham to run entity `name` with `token` (answered once it runs).
    fn place(&self, name: &str, token: u64) -> Result<(), String> {
        let req = Request::ClusterPlace {
            entity: name.to_owned(),
            token,
        };
        match ham_guardian::control::request(&self.socket, &req, Duration::from_secs(30)) {
            Ok(r) if r.ok => Ok(()),
            Ok(r) => Err(r.error.unwrap_or_else(|| "refused".into())),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Asks ham to stop entity `name` (answered once it is down).
    fn unplace(&self, name: &str) -> Result<(), String> {
        let req = Request::ClusterUnplace {
            entity: name.to_owned(),
        };
        match ham_guardian::control::request(&self.socket, &req, Duration::from_secs(30)) {
            Ok(r) if r.ok => Ok(()),
            Ok(r) => Err(r.error.unwrap_or_else(|| "refused".into())),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Places the entities with a `placement`: reads who holds their keys, decides
    /// (`placement::decide`), acts, and waits for the next change (a watch) or the next
    /// campaign's turn.
    fn place_forever(&self) {
        if self.placed.is_empty() {
            return;
        }
        let prefix = format!("{}singletons/", self.prefix());
        let step = self.ttl() / 4;
        // Entity → the token it runs with here (as ham confirmed).
        let mut held: BTreeMap<String, u64> = BTreeMap::new();
        // Key → when it was first seen free (campaigns wait their rank's steps from there).
        let mut free_since: BTreeMap<String, Instant> = BTreeMap::new();
        loop {
            let (lease, fresh, view) = {
                let k = self.known.lock().unwrap_or_else(|p| p.into_inner());
                let fresh =
                    k.renewed.is_some_and(|t| t.elapsed() < self.ttl()) && k.view_error.is_none();
                let view: Vec<String> = k.view.nodes().map(str::to_owned).collect();
                (k.lease, fresh, view)
            };
            let Some(lease) = lease else {
                std::thread::sleep(step);
                continue;
            };
            let (rev, kvs) = match self.etcd.range_prefix(&prefix) {
                Ok(r) => r,
                Err(_) => {
                    // Stale meanwhile (the lease thread says why); ham fences at the
                    // deadline if this lasts.
                    std::thread::sleep(step);
                    continue;
                }
            };
            let holders = placement::holders(&prefix, &kvs);
            let view: Vec<&str> = view.iter().map(String::as_str).collect();
            let mut wake = self.ttl() / 2;
            for (name, p) in &self.placed {
                let me = placement::Me {
                    node: &self.cfg.node,
                    lease,
                    view: &view,
                    fresh,
                };
                let d = placement::decide(name, p, &prefix, &holders, me);
                match d {
                    Decision::Run { key, token } => {
                        // Asked every turn (ham answers at once when it runs it already):
                        // ham may have stopped it meanwhile (a fence deadline passed while
                        // the lease still lived, a warm start), and the key is still ours.
                        match self.place(name, token) {
                            Ok(()) => {
                                if held.insert(name.clone(), token) != Some(token) {
                                    eprintln!("ham-cluster: {name}: runs here (token {token})");
                                }
                            }
                            Err(why) => {
                                eprintln!(
                                    "ham-cluster: {name}: ham did not run it ({why}); giving \
                                     up its key"
                                );
                                held.remove(name);
                                let _ = self.etcd.delete_if_created_at(&key, token);
                            }
                        }
                    }
                    Decision::Campaign { key, rank } => {
                        if held.remove(name).is_some() {
                            let _ = self.unplace(name);
                        }
                        let since = *free_since.entry(key.clone()).or_insert_with(Instant::now);
                        let turn = step * rank as u32;
                        if since.elapsed() < turn {
                            wake = wake.min(turn - since.elapsed());
                            continue;
                        }
                        free_since.remove(&key);
                        match self.etcd.create(&key, self.cfg.node.as_bytes(), lease) {
                            Ok(Some(token)) => {
                                eprintln!("ham-cluster: {name}: won with token {token}");
                                match self.place(name, token) {
                                    Ok(()) => {
                                        held.insert(name.clone(), token);
                                        eprintln!("ham-cluster: {name}: runs here (token {token})");
                                    }
                                    Err(why) => {
                                        eprintln!(
                                            "ham-cluster: {name}: ham did not run it ({why}); \
                                             giving up its key"
                                        );
                                        let _ = self.etcd.delete_if_created_at(&key, token);
                                    }
                                }
                            }
                            Ok(None) => {} // another node was first
                            Err(e) => eprintln!("ham-cluster: {name}: campaign: {e}"),
                        }
                        wake = Duration::ZERO; // read again at once
                    }
                    Decision::Resign { key, token } => {
                        eprintln!(
                            "ham-cluster: {name}: a more preferred node is here; handing over"
                        );
                        // Stopped first, then the key goes: never two at once.
                        if self.unplace(name).is_ok() {
                            held.remove(name);
                            let _ = self.etcd.delete_if_created_at(&key, token);
                        }
                    }
                    Decision::Nothing => {
                        if held.remove(name).is_some() {
                            let _ = self.unplace(name);
                        }
                    }
                }
            }
            free_since.retain(|k, _| !holders.contains_key(k));
            let singletons: Vec<ClusterSingleton> = self
                .placed
                .iter()
                .flat_map(|(name, p)| {
                    placement::keys(&prefix, name, p)
                        .into_iter()
                        .map(|k| {
                            let h = holders.get(&k);
                            ClusterSingleton {
                                name: k.strip_prefix(&prefix).unwrap_or(&k).to_owned(),
                                owner: h.map(|h| h.node.clone()),
                                token: h.map_or(0, |h| h.token),
                            }
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            let changed = {
                let mut k = self.known.lock().unwrap_or_else(|p| p.into_inner());
                let changed = k.singletons != singletons;
                k.singletons = singletons;
                changed
            };
            if changed {
                self.report();
            }
            if wake.is_zero() {
                continue;
            }
            // Until something under singletons/ changes, or the next turn.
            let _ = self.etcd.watch_prefix(
                &prefix,
                rev + 1,
                wake.max(Duration::from_millis(50)),
                |_| false,
            );
        }
    }
}

fn config_path() -> Result<PathBuf, String> {
    let mut args = std::env::args_os().skip(1);
    match (args.next(), args.next(), args.next()) {
        (None, ..) => std::env::var_os("HAM_CONFIG")
            .map(PathBuf::from)
            .ok_or_else(|| "no configuration: -c FILE, or HAM_CONFIG".into()),
        (Some(flag), Some(file), None) if flag == "-c" || flag == "--config" => Ok(file.into()),
        _ => Err("usage: ham-cluster [-c FILE]".into()),
    }
}

fn main() -> ExitCode {
    let path = match config_path() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("ham-cluster: {why}");
            return ExitCode::from(2);
        }
    };
    let cfg = match ham_guardian::config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ham-cluster: {e}");
            return ExitCode::from(1);
        }
    };
    let Some(cluster) = cfg.cluster.clone() else {
        eprintln!(
            "ham-cluster: {} has no [cluster] table: nothing to do",
            path.display()
        );
        return ExitCode::from(1);
    };
    // A request may take a third of the TTL, so that a renewal that cannot get through is
    // known to have failed before the lease could expire.
    let timeout = Duration::from_nanos(cluster.lease_ttl_ns / 3).max(Duration::from_millis(200));
    let placed = cfg
        .entities
        .iter()
        .filter_map(|e| e.placement.clone().map(|p| (e.name.clone(), p)))
        .collect();
    let agent = Arc::new(Agent {
        placed,
        etcd: Etcd::new(cluster.endpoints.clone(), timeout),
        socket: cfg.instance.socket_path(),
        cfg: cluster,
        known: Mutex::new(Known {
            view: View::default(),
            renewed: None,
            lease_error: None,
            view_error: None,
            lease: None,
            fence_at: 0,
            singletons: Vec::new(),
        }),
    });
    eprintln!(
        "ham-cluster: cluster {}, node {}, etcd {}",
        agent.cfg.name,
        agent.cfg.node,
        agent.cfg.endpoints.join(", ")
    );
    let follower = Arc::clone(&agent);
    std::thread::spawn(move || follower.follow_view());
    let placer = Arc::clone(&agent);
    std::thread::spawn(move || placer.place_forever());
    agent.keep_registered()
}
