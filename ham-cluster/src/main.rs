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

use ham_cluster::etcd::{Etcd, EtcdError};
use ham_cluster::view::{Registration, View};
use ham_core::protocol::{ClusterState, Request};
use ham_guardian::config::ClusterConfig;

/// What the agent knows, shared by its two threads.
struct Known {
    view: View,
    /// When a keepalive last succeeded (None: never, since the last registration).
    renewed: Option<Instant>,
    /// The last failure, cleared by the next success of the same thread.
    lease_error: Option<String>,
    view_error: Option<String>,
}

struct Agent {
    cfg: ClusterConfig,
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
            singletons: Vec::new(),
            settings: Default::default(),
            stale,
            why,
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

    /// Records a renewal's outcome (said once when it starts failing, and when it recovers).
    fn set_lease(&self, r: Result<(), String>) {
        let mut k = self.known.lock().unwrap_or_else(|p| p.into_inner());
        match r {
            Ok(()) => {
                if k.lease_error.take().is_some() {
                    eprintln!("ham-cluster: the lease is renewed again");
                }
                k.renewed = Some(Instant::now());
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
        Ok(lease)
    }

    /// Keeps this node registered: renews its lease every third of the TTL, registers again
    /// when the lease is gone (it expired while etcd could not be reached).
    fn keep_registered(&self) -> ! {
        let period = self.ttl() / 3;
        let mut lease = None;
        loop {
            let round = Instant::now();
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
            self.set_lease(r.map_err(|e| e.to_string()));
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
    let agent = Arc::new(Agent {
        etcd: Etcd::new(cluster.endpoints.clone(), timeout),
        socket: cfg.instance.socket_path(),
        cfg: cluster,
        known: Mutex::new(Known {
            view: View::default(),
            renewed: None,
            lease_error: None,
            view_error: None,
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
    agent.keep_registered()
}
