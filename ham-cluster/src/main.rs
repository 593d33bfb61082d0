//! `ham-cluster`: the cluster agent. ham starts it as an entity of its own when the
//! configuration has a `[cluster]` table; it registers this node in etcd under a lease,
//! keeps the lease alive, follows the membership view, and reports what it knows to its
//! ham (`cluster-report`), which `hamctl cluster status` shows. It holds no deadline that
//! keeps anything safe: ham does (a dead or hung agent is a stale view, never two owners).
//!
//! Usage: `ham-cluster [--fence] [-c FILE]` (FILE: `$HAM_CONFIG`, which ham sets for its
//! entities; `--fence`: the fence keeper, see `fence.rs`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use ham_cluster::etcd::{Etcd, EtcdError};
use ham_cluster::placement::{self, Decision};
use ham_cluster::view::{Registration, View};
use ham_core::protocol::{ClusterSetting, ClusterSingleton, ClusterState, ClusterWork, Request};
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
    /// The node holding `roles/master`, as last read.
    master: Option<String>,
    /// The cluster-wide settings, as last read (and applied here).
    settings: BTreeMap<String, ClusterSetting>,
    /// The active supervisor, as last read.
    active: Option<String>,
    /// Handing over (a switchover): until then this node takes neither the supervisor
    /// role nor singletons, and gives up those it holds.
    resigning_until: Option<Instant>,
}

impl Known {
    /// The lease was renewed within `ttl` and etcd could be read: this node may vouch for
    /// what it knows (and place something new).
    fn fresh(&self, ttl: Duration) -> bool {
        self.renewed.is_some_and(|t| t.elapsed() < ttl) && self.view_error.is_none()
    }
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
    /// What the agent knows (a thread that panicked holding it left nothing half-written
    /// that matters: every field is replaced whole).
    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn prefix(&self) -> String {
        format!("/ham/{}/", self.cfg.name)
    }

    fn members_prefix(&self) -> String {
        format!("{}members/", self.prefix())
    }

    fn singletons_prefix(&self) -> String {
        format!("{}singletons/", self.prefix())
    }

    /// Where the marks of held singleton keys live (`held/<what follows singletons/>`).
    fn held_prefix(&self) -> String {
        format!("{}held/", self.prefix())
    }

    /// The mark that singleton key `key` is held (see `Etcd::claim`).
    fn marker(&self, key: &str) -> String {
        let rel = key.strip_prefix(&self.singletons_prefix()).unwrap_or(key);
        format!("{}{rel}", self.held_prefix())
    }

    fn ttl(&self) -> Duration {
        Duration::from_nanos(self.cfg.lease_ttl_ns)
    }

    /// What ham shows: stale when the lease was not renewed within its TTL, or the view
    /// could not be read.
    fn state(&self) -> ClusterState {
        let k = self.known();
        let stale = !k.fresh(self.ttl());
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
            master: k.master.clone(),
            singletons: k.singletons.clone(),
            settings: k.settings.clone(),
            stale,
            why,
            lease: k.lease.unwrap_or(0),
            fence_at: k.fence_at,
            standbys: k
                .view
                .supervisors()
                .filter(|n| Some(*n) != k.active.as_deref())
                .map(str::to_owned)
                .collect(),
            active: k.active.clone(),
        }
    }

    /// Tells ham what the agent knows (ignored when ham cannot be reached: a takeover; the
    /// next report comes within a third of the TTL).
    fn report(&self) {
        let req = Request::ClusterReport {
            state: Box::new(self.state()),
        };
        if let Err(e) = ham_guardian::control::request(&self.socket, &req, Duration::from_secs(2)) {
            ham_cluster::say!("ham-cluster: reporting to ham: {e}");
        }
    }

    /// Records a renewal's outcome (said once when it starts failing, and when it
    /// recovers); `sent`: when the renewal that succeeded was sent (CLOCK_MONOTONIC ns).
    fn set_lease(&self, lease: Option<u64>, sent: u64, r: Result<(), String>) {
        let mut k = self.known();
        k.lease = lease;
        match r {
            Ok(()) => {
                if k.lease_error.take().is_some() {
                    ham_cluster::say!("ham-cluster: the lease is renewed again");
                }
                k.renewed = Some(Instant::now());
                // etcd counts the TTL from when its leader took the renewal, which is
                // after it was sent: stopped by then, a process is gone before the lease.
                // The margin is for a HAM that runs late (a loaded box, a stolen vCPU):
                // 200 ms was seen to fall short under the soak's load.
                let ttl = self.cfg.lease_ttl_ns;
                let margin = (ttl / 5).max(400_000_000);
                k.fence_at = sent + ttl - margin;
            }
            Err(why) => {
                if k.lease_error.as_deref() != Some(why.as_str()) {
                    ham_cluster::say!("ham-cluster: renewing the lease: {why}");
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
            supervisor: self.cfg.supervisor,
        };
        let key = format!("{}{}", self.members_prefix(), self.cfg.node);
        self.etcd
            .put(&key, &serde_json::to_vec(&me).expect("serialises"), lease)?;
        Ok(())
    }

    /// The lease an earlier agent of this node reported to ham. Asked before this agent
    /// reports anything: its first report (no lease yet) would replace it.
    fn reported_lease(&self) -> Option<u64> {
        let r = ham_guardian::control::request(
            &self.socket,
            &Request::ClusterStatus,
            Duration::from_secs(2),
        )
        .ok()?;
        Some(r.cluster.filter(|c| c.lease != 0)?.lease)
    }

    /// `lease` (an earlier agent's), if it still lives: taken up again, so that what is
    /// placed here under it stays placed.
    fn take_up(&self, lease: u64) -> Option<u64> {
        // The lease outlives the earlier agent by at most a TTL. Until then only etcd's
        // "gone" says it is gone: an etcd that does not answer in time (a loaded box) says
        // nothing of it, and registering anew would give up what is placed under it (its
        // singletons would fence themselves and move for nothing).
        let until = Instant::now() + self.ttl();
        let mut said = None;
        loop {
            match self.etcd.keepalive(lease) {
                Ok(_) => {
                    ham_cluster::say!("ham-cluster: taking up lease {lease:x} again");
                    return Some(lease);
                }
                Err(EtcdError::LeaseGone) => {
                    ham_cluster::say!("ham-cluster: lease {lease:x} of the earlier agent is gone");
                    return None;
                }
                Err(why) if Instant::now() < until => {
                    let why = why.to_string();
                    if said.as_ref() != Some(&why) {
                        ham_cluster::say!(
                            "ham-cluster: taking up lease {lease:x} again: {why}; trying again"
                        );
                        said = Some(why);
                    }
                    std::thread::sleep(self.ttl() / 10);
                }
                Err(why) => {
                    ham_cluster::say!(
                        "ham-cluster: lease {lease:x} of the earlier agent not renewed within \
                         its TTL ({why}): registering anew"
                    );
                    return None;
                }
            }
        }
    }

    /// Keeps this node registered: renews its lease every third of the TTL, registers again
    /// when the lease is gone (it expired while etcd could not be reached).
    fn keep_registered(&self, earlier: Option<u64>) -> ! {
        let period = self.ttl() / 3;
        let mut lease = earlier.and_then(|l| self.take_up(l));
        if let Some(l) = lease {
            // Its registration may have been written by the earlier agent: again, the same.
            let _ = self.put_registration(l);
        }
        loop {
            let round = Instant::now();
            let sent = ham_core::clock::mono_ns();
            let r = match lease {
                None => self.register().map(|l| {
                    ham_cluster::say!(
                        "ham-cluster: node {} registered (lease {l:x})",
                        self.cfg.node
                    );
                    lease = Some(l);
                }),
                Some(l) => match self.etcd.keepalive(l) {
                    Err(EtcdError::LeaseGone) => {
                        ham_cluster::say!("ham-cluster: lease {l:x} expired; registering again");
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
                    let mut k = self.known();
                    k.view_error = None;
                    k.view.relist(&prefix, rev, &kvs)
                };
                if changed {
                    self.report();
                }
                self.etcd
                    .watch_prefix(&prefix, rev + 1, self.ttl(), |events| {
                        let changed = {
                            let mut k = self.known();
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
                    let mut k = self.known();
                    let first = k.view_error.as_deref() != Some(why.as_str());
                    k.view_error = Some(why.clone());
                    first
                };
                if first {
                    ham_cluster::say!("ham-cluster: the view: {why}");
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
        self.ask_ham(&Request::ClusterPlace {
            entity: name.to_owned(),
            token,
        })
    }

    /// Asks ham to stop entity `name` (answered once it is down).
    fn unplace(&self, name: &str) -> Result<(), String> {
        self.ask_ham(&Request::ClusterUnplace {
            entity: name.to_owned(),
        })
    }

    /// ham did not run `name` under `key` (`why`): the key is given up once ham says the
    /// entity is down here, never before. A refusal can come while a copy still runs (the
    /// fence deadline is near and ham is stopping it), and a request can fail while it runs
    /// on (ham is being taken over): another node must not win the key meanwhile. Whether
    /// the key went.
    fn give_up(&self, name: &str, key: &str, token: u64, why: &str) -> bool {
        match self.unplace(name) {
            Ok(()) => {
                ham_cluster::say!(
                    "ham-cluster: {name}: ham did not run it ({why}); giving up its key"
                );
                let _ = self.etcd.release(key, token, &self.marker(key));
                true
            }
            Err(e) => {
                ham_cluster::say!(
                    "ham-cluster: {name}: ham did not run it ({why}) and cannot say it is down \
                     ({e}); keeping its key"
                );
                false
            }
        }
    }

    /// `req` to ham, which may hold it while an entity starts or stops.
    fn ask_ham(&self, req: &Request) -> Result<(), String> {
        match ham_guardian::control::request(&self.socket, req, Duration::from_secs(30)) {
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
        let prefix = self.singletons_prefix();
        let step = self.ttl() / 4;
        let lock_delay = Duration::from_nanos(self.cfg.lock_delay_ns);
        // Entity → the token it runs with here (as ham confirmed).
        let mut held: BTreeMap<String, u64> = BTreeMap::new();
        // Key → when it was first seen free (campaigns wait their rank's steps from there).
        let mut free_since: BTreeMap<String, Instant> = BTreeMap::new();
        // Free keys whose last owner did not hand them over, said once per free spell.
        let mut said_unreleased: std::collections::BTreeSet<String> = Default::default();
        loop {
            let (lease, fresh, view) = {
                let k = self.known();
                let view: Vec<String> = k.view.nodes().map(str::to_owned).collect();
                (k.lease, k.fresh(self.ttl()), view)
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
            // The marks of held keys, read once a turn if something is free here to campaign
            // for (None: not read yet; unreadable counts as marked: the safe side).
            let mut marks: Option<Result<Vec<String>, EtcdError>> = None;
            let view: Vec<&str> = view.iter().map(String::as_str).collect();
            let mut wake = self.ttl() / 2;
            for (name, p) in &self.placed {
                let me = placement::Me {
                    node: &self.cfg.node,
                    lease,
                    view: &view,
                    fresh,
                };
                let mut d = placement::decide(name, p, &prefix, &holders, me);
                if self.resigning() {
                    // Handing over: what it holds goes (stopped first), nothing new.
                    d = match d {
                        Decision::Run { key, token } | Decision::Resign { key, token } => {
                            Decision::Resign { key, token }
                        }
                        _ => Decision::Nothing,
                    };
                }
                match d {
                    Decision::Run { key, token } => {
                        // Asked every turn (ham answers at once when it runs it already):
                        // ham may have stopped it meanwhile (a fence deadline passed while
                        // the lease still lived, a warm start), and the key is still ours.
                        match self.place(name, token) {
                            Ok(()) => {
                                if held.insert(name.clone(), token) != Some(token) {
                                    ham_cluster::say!(
                                        "ham-cluster: {name}: runs here (token {token})"
                                    );
                                }
                            }
                            Err(why) => {
                                if self.give_up(name, &key, token, &why) {
                                    held.remove(name);
                                }
                            }
                        }
                    }
                    Decision::Campaign { key, rank } => {
                        if held.remove(name).is_some() {
                            let _ = self.unplace(name);
                        }
                        let since = *free_since.entry(key.clone()).or_insert_with(Instant::now);
                        // Its last owner did not hand it over (the mark is still there): its
                        // lease ended, maybe early (a stale etcd leader revokes leases it
                        // did not see renewed, etcd-io/etcd#15247) while that owner, told
                        // nothing, runs it on until its own fence deadline — at most a TTL
                        // after it last saw the lease renewed. So the campaign waits the
                        // lock delay too, counted from when the key was seen free.
                        let marker = self.marker(&key);
                        let unreleased = match marks.get_or_insert_with(|| {
                            self.etcd
                                .range_prefix(&self.held_prefix())
                                .map(|(_, kvs)| kvs.into_iter().map(|kv| kv.key).collect())
                        }) {
                            Ok(m) => m.contains(&marker),
                            Err(_) => true,
                        };
                        let mut turn = step * rank as u32;
                        if unreleased && !lock_delay.is_zero() {
                            turn += lock_delay;
                            if said_unreleased.insert(key.clone()) {
                                ham_cluster::say!(
                                    "ham-cluster: {name}: its last owner did not hand it over \
                                     (its lease ended); campaigning after the lock delay ({} \
                                     ms), by when that owner has fenced itself",
                                    lock_delay.as_millis()
                                );
                            }
                        }
                        if since.elapsed() < turn {
                            wake = wake.min(turn - since.elapsed());
                            continue;
                        }
                        free_since.remove(&key);
                        said_unreleased.remove(&key);
                        match self
                            .etcd
                            .claim(&key, self.cfg.node.as_bytes(), lease, &marker)
                        {
                            Ok(Some(token)) => {
                                ham_cluster::say!("ham-cluster: {name}: won with token {token}");
                                match self.place(name, token) {
                                    Ok(()) => {
                                        held.insert(name.clone(), token);
                                        ham_cluster::say!(
                                            "ham-cluster: {name}: runs here (token {token})"
                                        );
                                    }
                                    Err(why) => {
                                        if !self.give_up(name, &key, token, &why) {
                                            // Kept: asked again (Run) at the next turn.
                                            held.insert(name.clone(), token);
                                        }
                                    }
                                }
                            }
                            Ok(None) => {} // another node was first
                            Err(e) => ham_cluster::say!("ham-cluster: {name}: campaign: {e}"),
                        }
                        wake = Duration::ZERO; // read again at once
                    }
                    Decision::Resign { key, token } => {
                        ham_cluster::say!(
                            "ham-cluster: {name}: a more preferred node is here; handing over"
                        );
                        // Stopped first, then the key goes: never two at once.
                        if self.unplace(name).is_ok() {
                            held.remove(name);
                            let _ = self.etcd.release(&key, token, &self.marker(&key));
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
            said_unreleased.retain(|k| !holders.contains_key(k));
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
                let mut k = self.known();
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

/// What a node asks the master to write (`requests/<node>-<id>-<ns>`).
#[derive(serde::Serialize, serde::Deserialize)]
struct SetRequest {
    key: String,
    value: String,
    origin: String,
}

/// What `config/<key>` holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Setting {
    value: String,
    origin: String,
}

impl Agent {
    /// Whether this node is handing over (a switchover under way).
    fn resigning(&self) -> bool {
        let k = self.known();
        k.resigning_until.is_some_and(|t| Instant::now() < t)
    }

    /// The supervisor role: `roles/active`, created if absent under the holder's lease by a
    /// `role = "supervisor"` node (every node follows who holds it). A node handing over
    /// deletes it (guarded) and waits.
    fn active_forever(&self) {
        let role = format!("{}roles/active", self.prefix());
        loop {
            let (lease, fresh) = self.lease_now();
            let resigning = self.resigning();
            let holder = match (lease, self.etcd.get(&role)) {
                (Some(lease), Ok(h)) => {
                    let mine = h.as_ref().is_some_and(|kv| {
                        kv.value == self.cfg.node.as_bytes() && kv.lease == lease
                    });
                    match h {
                        Some(kv) if mine && resigning => {
                            let _ = self.etcd.delete_if_created_at(&role, kv.create_revision);
                            ham_cluster::say!("ham-cluster: gave up the active supervisor role");
                            None
                        }
                        None if fresh && !resigning && self.cfg.supervisor => {
                            if let Ok(Some(_)) =
                                self.etcd.create(&role, self.cfg.node.as_bytes(), lease)
                            {
                                ham_cluster::say!(
                                    "ham-cluster: this node is the active supervisor"
                                );
                            }
                            self.etcd.get(&role).ok().flatten()
                        }
                        h => h,
                    }
                }
                _ => {
                    std::thread::sleep(self.ttl() / 4);
                    continue;
                }
            };
            let active = holder.map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
            let changed = {
                let mut k = self.known();
                let changed = k.active != active;
                k.active = active;
                changed
            };
            if changed {
                self.report();
            }
            std::thread::sleep(self.ttl() / 4);
        }
    }

    /// A switchover: this node, the active supervisor, stops what the cluster placed here
    /// and gives up its keys and its role; a standby takes the role. Done when it has.
    fn switchover(&self) -> Result<String, String> {
        let (active, standbys) = {
            let s = self.state();
            (s.active, s.standbys)
        };
        if active.as_deref() != Some(self.cfg.node.as_str()) {
            return Err(format!(
                "this node is not the active supervisor (active: {})",
                active.unwrap_or_else(|| "none".into())
            ));
        }
        if standbys.is_empty() {
            return Err("no standby supervisor in the view".into());
        }
        ham_cluster::say!(
            "ham-cluster: switching over (standbys: {})",
            standbys.join(", ")
        );
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .resigning_until = Some(Instant::now() + self.ttl() * 3);
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            // Done when another node is active and this one holds no singleton any more.
            let (now, holds) = {
                let k = self.known();
                let holds = k
                    .singletons
                    .iter()
                    .any(|s| s.owner.as_deref() == Some(self.cfg.node.as_str()));
                (k.active.clone(), holds)
            };
            if let Some(n) = now.filter(|n| *n != self.cfg.node && !holds) {
                return Ok(format!("switched over: {n} is the active supervisor"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("no standby took the active role (and this node's singletons) within 15 s".into())
    }

    /// This node's lease and whether it is fresh (renewed within its TTL, etcd read).
    fn lease_now(&self) -> (Option<u64>, bool) {
        let k = self.known();
        (k.lease, k.fresh(self.ttl()))
    }

    /// The master role: held by whoever created `roles/master` (under its lease); the
    /// master writes what nodes ask (`requests/`) into `config/`, each write guarded by its
    /// key's create revision, so that a deposed master's write fails.
    fn master_forever(&self) {
        let role = format!("{}roles/master", self.prefix());
        let requests = format!("{}requests/", self.prefix());
        let config = format!("{}config/", self.prefix());
        loop {
            let (lease, fresh) = self.lease_now();
            let Some(lease) = lease else {
                std::thread::sleep(self.ttl() / 4);
                continue;
            };
            let holder = match self.etcd.get(&role) {
                Ok(h) => h,
                Err(_) => {
                    std::thread::sleep(self.ttl() / 4);
                    continue;
                }
            };
            let holder = match holder {
                Some(kv) => Some(kv),
                None if fresh => match self.etcd.create(&role, self.cfg.node.as_bytes(), lease) {
                    Ok(Some(rev)) => {
                        ham_cluster::say!("ham-cluster: this node is the master (revision {rev})");
                        self.etcd.get(&role).ok().flatten()
                    }
                    _ => self.etcd.get(&role).ok().flatten(),
                },
                None => None,
            };
            let master = holder
                .as_ref()
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
            let changed = {
                let mut k = self.known();
                let changed = k.master != master;
                k.master = master;
                changed
            };
            if changed {
                self.report();
            }
            let mine = holder
                .as_ref()
                .filter(|kv| kv.value == self.cfg.node.as_bytes() && kv.lease == lease)
                .map(|kv| kv.create_revision);
            let mut rev = 0;
            if let (Some(my_rev), true) = (mine, fresh) {
                if let Ok((r, asked)) = self.etcd.range_prefix(&requests) {
                    rev = r;
                    for kv in asked {
                        let Ok(req) = serde_json::from_slice::<SetRequest>(&kv.value) else {
                            let _ = self.etcd.txn_guarded(&role, my_rev, &[], &[&kv.key]);
                            continue;
                        };
                        if ham_core::protocol::check_cluster_setting(&req.key, &req.value).is_err()
                        {
                            let _ = self.etcd.txn_guarded(&role, my_rev, &[], &[&kv.key]);
                            continue;
                        }
                        let value = serde_json::to_vec(&Setting {
                            value: req.value.clone(),
                            origin: req.origin.clone(),
                        })
                        .expect("serialises");
                        let key = format!("{config}{}", req.key);
                        match self.etcd.txn_guarded(
                            &role,
                            my_rev,
                            &[(key.as_str(), value.as_slice())],
                            &[&kv.key],
                        ) {
                            Ok(true) => ham_cluster::say!(
                                "ham-cluster: master: {} = {} (asked by {})",
                                req.key,
                                req.value,
                                req.origin
                            ),
                            Ok(false) => {
                                ham_cluster::say!("ham-cluster: no longer the master; not writing");
                                break;
                            }
                            Err(e) => ham_cluster::say!("ham-cluster: master: {e}"),
                        }
                    }
                }
            }
            // Until a request or the role changes, or a while.
            let from = if rev == 0 { 0 } else { rev + 1 };
            let watched = self.prefix();
            let (req_p, role_p) = (requests.clone(), role.clone());
            if from == 0 {
                std::thread::sleep(self.ttl() / 4);
            } else {
                let _ = self
                    .etcd
                    .watch_prefix(&watched, from, self.ttl() / 2, |events| {
                        !events.iter().any(|e| {
                            let k = match e {
                                ham_cluster::etcd::Event::Put(kv) => kv.key.as_str(),
                                ham_cluster::etcd::Event::Delete { key, .. } => key.as_str(),
                            };
                            k.starts_with(&req_p) || k == role_p
                        })
                    });
            }
        }
    }

    /// Applies the cluster-wide settings here, in revision order: all of them at start (a
    /// node that was down catches up), then each change.
    fn apply_settings_forever(&self) {
        let config = format!("{}config/", self.prefix());
        let mut applied: BTreeMap<String, u64> = BTreeMap::new();
        loop {
            let (rev, kvs) = match self.etcd.range_prefix(&config) {
                Ok(r) => r,
                Err(_) => {
                    std::thread::sleep(self.ttl() / 4);
                    continue;
                }
            };
            let mut kvs = kvs;
            kvs.sort_by_key(|kv| kv.mod_revision);
            for kv in &kvs {
                self.apply(&config, kv, &mut applied);
            }
            let _ = self
                .etcd
                .watch_prefix(&config, rev + 1, self.ttl(), |events| {
                    for e in events {
                        if let ham_cluster::etcd::Event::Put(kv) = e {
                            self.apply(&config, &kv, &mut applied);
                        }
                    }
                    true
                });
        }
    }

    /// Applies one setting (once per revision), and records it for the status.
    fn apply(&self, prefix: &str, kv: &ham_cluster::etcd::Kv, applied: &mut BTreeMap<String, u64>) {
        let Some(key) = kv.key.strip_prefix(prefix) else {
            return;
        };
        if applied.get(key) == Some(&kv.mod_revision) {
            return;
        }
        let Ok(s) = serde_json::from_slice::<Setting>(&kv.value) else {
            ham_cluster::say!("ham-cluster: setting {key}: not a setting, left alone");
            return;
        };
        let req = Request::ClusterApply {
            key: key.to_owned(),
            value: s.value.clone(),
            origin: s.origin.clone(),
            revision: kv.mod_revision,
        };
        match ham_guardian::control::request(&self.socket, &req, Duration::from_secs(5)) {
            Ok(r) if r.ok => {
                applied.insert(key.to_owned(), kv.mod_revision);
                {
                    let mut k = self.known();
                    k.settings.insert(
                        key.to_owned(),
                        ClusterSetting {
                            value: s.value,
                            origin: s.origin,
                            revision: kv.mod_revision,
                        },
                    );
                }
                self.report();
            }
            Ok(r) => ham_cluster::say!(
                "ham-cluster: setting {key}: ham refused it: {}",
                r.error.unwrap_or_default()
            ),
            // Not applied: read again at the next turn (the watch's time limit).
            Err(e) => ham_cluster::say!("ham-cluster: setting {key}: {e}"),
        }
    }

    /// Takes the settings asked on this node (`hamctl cluster set`) from ham, asks the
    /// master for each, and tells ham how it went.
    fn work_forever(&self) {
        loop {
            let work = match ham_guardian::control::request(
                &self.socket,
                &Request::ClusterNext,
                Duration::from_secs(60),
            ) {
                Ok(r) if r.ok => r
                    .message
                    .and_then(|m| serde_json::from_str::<ClusterWork>(&m).ok()),
                _ => {
                    std::thread::sleep(Duration::from_millis(200));
                    None
                }
            };
            let Some(work) = work else {
                continue;
            };
            let error = if work.key == ham_core::protocol::SWITCHOVER {
                self.switchover().err()
            } else {
                self.ask_master(&work).err()
            };
            let done = Request::ClusterDone { id: work.id, error };
            let _ = ham_guardian::control::request(&self.socket, &done, Duration::from_secs(5));
        }
    }

    /// Puts a request for the master and waits until `config/<key>` holds it.
    fn ask_master(&self, work: &ClusterWork) -> Result<(), String> {
        let (lease, fresh) = self.lease_now();
        let (Some(lease), true) = (lease, fresh) else {
            return Err("this node's view of the cluster is stale: not asking the master".into());
        };
        let key = format!(
            "{}requests/{}-{}-{}",
            self.prefix(),
            self.cfg.node,
            work.id,
            ham_core::clock::mono_ns()
        );
        let req = serde_json::to_vec(&SetRequest {
            key: work.key.clone(),
            value: work.value.clone(),
            origin: self.cfg.node.clone(),
        })
        .expect("serialises");
        let rev = self
            .etcd
            .put(&key, &req, lease)
            .map_err(|e| e.to_string())?;
        let target = format!("{}config/{}", self.prefix(), work.key);
        let written = |kv: &ham_cluster::etcd::Kv| {
            kv.mod_revision > rev
                && serde_json::from_slice::<Setting>(&kv.value)
                    .is_ok_and(|s| s.value == work.value && s.origin == self.cfg.node)
        };
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(kv)) = self.etcd.get(&target) {
                if written(&kv) {
                    return Ok(());
                }
            }
            let left = until.saturating_duration_since(Instant::now());
            let _ = self.etcd.watch_prefix(&target, rev + 1, left, |_| false);
        }
        let master = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .master
            .clone()
            .unwrap_or_else(|| "none".into());
        Err(format!(
            "the master (now: {master}) did not write {} = {} within 10 s",
            work.key, work.value
        ))
    }
}

/// The configuration's path, and whether this is the fence keeper (`--fence`).
fn config_path() -> Result<(PathBuf, bool), String> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let fence = args.first().is_some_and(|a| a == "--fence");
    if fence {
        args.remove(0);
    }
    let path = match args.as_slice() {
        [] => std::env::var_os("HAM_CONFIG")
            .map(PathBuf::from)
            .ok_or_else(|| "no configuration: -c FILE, or HAM_CONFIG".to_owned())?,
        [flag, file] if flag == "-c" || flag == "--config" => file.into(),
        _ => return Err("usage: ham-cluster [--fence] [-c FILE]".into()),
    };
    Ok((path, fence))
}

fn main() -> ExitCode {
    let (path, fence) = match config_path() {
        Ok(p) => p,
        Err(why) => {
            ham_cluster::say!("ham-cluster: {why}");
            return ExitCode::from(2);
        }
    };
    let cfg = match ham_guardian::config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            ham_cluster::say!("ham-cluster: {e}");
            return ExitCode::from(1);
        }
    };
    if fence {
        ham_cluster::fence::keep(&cfg.instance.segment_name());
    }
    let Some(cluster) = cfg.cluster.clone() else {
        ham_cluster::say!(
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
        .filter_map(|e| e.rare.placement.clone().map(|p| (e.name.clone(), p)))
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
            master: None,
            settings: BTreeMap::new(),
            active: None,
            resigning_until: None,
        }),
    });
    ham_cluster::say!(
        "ham-cluster: cluster {}, node {}, etcd {}",
        agent.cfg.name,
        agent.cfg.node,
        agent.cfg.endpoints.join(", ")
    );
    // The earlier agent's lease, from ham, before any thread of this one reports: it is
    // what this agent reports until it knows whether it can take it up again.
    let earlier = agent.reported_lease();
    agent.known().lease = earlier;
    let follower = Arc::clone(&agent);
    std::thread::spawn(move || follower.follow_view());
    let placer = Arc::clone(&agent);
    std::thread::spawn(move || placer.place_forever());
    let master = Arc::clone(&agent);
    std::thread::spawn(move || master.master_forever());
    let applier = Arc::clone(&agent);
    std::thread::spawn(move || applier.apply_settings_forever());
    let worker = Arc::clone(&agent);
    std::thread::spawn(move || worker.work_forever());
    let active = Arc::clone(&agent);
    std::thread::spawn(move || active.active_forever());
    agent.keep_registered(earlier)
}
