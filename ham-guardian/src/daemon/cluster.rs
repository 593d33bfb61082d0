//! `[cluster]`: ham keeps what its agent (`ham-cluster`, an entity ham runs) last reported,
//! and answers `cluster-status` with it, stale when the agent has not reported within the
//! lease's TTL (it died, hangs, or cannot reach ham).

use std::collections::{HashMap, VecDeque};

use ham_core::protocol::{ClusterState, ClusterWork};

use super::*;

/// Settings waiting to be written through the master (at most [`WORK_MAX`]).
#[derive(Default)]
pub(super) struct Work {
    queued: VecDeque<ClusterWork>,
    /// Requests waiting for their work's outcome, by work id (with what was asked).
    asked: HashMap<u64, (UnixStream, String)>,
    /// The agent's `cluster-next`, held until there is work.
    agent: Option<UnixStream>,
    next_id: u64,
}

const WORK_MAX: usize = 64;

/// [`reply`], saying whether the answer was written.
fn reply_sent(mut stream: UnixStream, r: &Response) -> io::Result<()> {
    stream.write_all(&r.to_line())
}

impl Daemon {
    /// The agent's report (the caller is the agent's process: `authz::may`).
    pub(super) fn cluster_report(&mut self, state: ClusterState) -> Response {
        let Some(cfg) = &self.cfg.cluster else {
            return Response::errno(libc::ENOENT, "this ham has no [cluster]");
        };
        if state.cluster != cfg.name || state.node != cfg.node {
            return Response::errno(
                libc::EINVAL,
                format!(
                    "a report for cluster `{}` node `{}`: this is cluster `{}` node `{}`",
                    state.cluster, state.node, cfg.name, cfg.node
                ),
            );
        }
        // Said when it goes stale or fresh, and at every new view.
        let before = self.cluster.as_ref().map(|(s, _)| (s.stale, s.view.id));
        if before != Some((state.stale, state.view.id)) {
            match &state.why {
                Some(why) if state.stale => say!(self, "cluster view stale: {why}"),
                _ => {
                    let names: Vec<&str> =
                        state.view.members.iter().map(|m| m.node.as_str()).collect();
                    say!(
                        self,
                        "cluster view {}: {}",
                        state.view.id,
                        if names.is_empty() {
                            "no members".to_owned()
                        } else {
                            names.join(", ")
                        }
                    );
                }
            }
        }
        if state.lease != 0 && state.fence_at != 0 {
            self.set_fence(state.lease, state.fence_at);
        }
        self.cluster = Some((state, mono_ns()));
        Response::ok("reported")
    }

    /// What this node knows of its cluster.
    pub(super) fn cluster_status(&self) -> Response {
        let Some(cfg) = &self.cfg.cluster else {
            return Response::errno(
                libc::ENOENT,
                format!("{} has no [cluster] table", self.cfg.path.display()),
            );
        };
        let state = match &self.cluster {
            Some((s, at)) => {
                let mut s = s.clone();
                let age = mono_ns().saturating_sub(*at);
                if age > cfg.lease_ttl_ns {
                    s.stale = true;
                    s.why = Some(format!(
                        "no report from the agent for {} ms",
                        age / 1_000_000
                    ));
                }
                s
            }
            None => ClusterState {
                cluster: cfg.name.clone(),
                node: cfg.node.clone(),
                stale: true,
                why: Some("the agent has not reported yet".into()),
                ..Default::default()
            },
        };
        let mut r = Response::ok("cluster");
        r.cluster = Some(Box::new(state));
        r
    }
}

impl Daemon {
    /// The longest `stop_timeout` of the entities the cluster places: ham begins stopping
    /// them that long before the fence deadline, so that each is gone (SIGKILL at its stop
    /// timeout) by then.
    fn fence_lead(&self) -> u64 {
        self.entities
            .iter()
            .filter(|e| e.cfg.rare.placement.is_some())
            .map(|e| e.cfg.stop_timeout_ns)
            .max()
            .unwrap_or(0)
    }

    /// When the self-fencing deadline's timer fires (0: none).
    pub(super) fn fence_timer_at(&self) -> u64 {
        if self.fence_at == 0 {
            0
        } else {
            self.fence_at.saturating_sub(self.fence_lead())
        }
    }

    /// A renewal of lease `lease`, good until `at` (from the agent, or a predecessor's
    /// header): kept in the segment, and its timer armed. What was placed under another
    /// lease hangs on that one, which is gone or going (the agent takes a new lease only
    /// when its old one expired, or it could not take it up again): it stops now.
    pub(super) fn set_fence(&mut self, lease: u64, at: u64) {
        if (lease, at) == (self.fence_lease, self.fence_at) {
            return;
        }
        if self.fence_lease != 0 && lease != self.fence_lease {
            self.self_fence();
        }
        self.fence_lease = lease;
        self.fence_at = at;
        let written = self.writer.set_fence(lease, at);
        self.wrote(written);
        let t = self.fence_timer_at();
        if t != 0 {
            self.schedule(t, Deadline::ClusterFence);
        }
    }

    /// The fence deadline came without a renewal: everything the cluster placed here is
    /// stopped, so that it is gone before the lease can expire and another node take it.
    pub(super) fn self_fence(&mut self) {
        let now = mono_ns();
        let why = if now >= self.fence_timer_at() {
            format!(
                "the cluster lease was not renewed in time (its deadline, less the stop \
                 timeout, passed {} ms ago)",
                (now - self.fence_timer_at()) / 1_000_000
            )
        } else {
            "the cluster lease it was placed under is gone".to_owned()
        };
        for i in EntityId::all(self.entities.len()) {
            let e = &mut self.entities[i];
            if e.cfg.rare.placement.is_none() || e.rec.fencing_token == 0 {
                continue;
            }
            let (name, token) = (e.cfg.name.clone(), e.rec.fencing_token);
            e.rec.fencing_token = 0;
            say!(
                self,
                "{name}: self-fencing (token {token}): {why}; stopping it"
            );
            self.record(i, None, "cluster", "stop", "self-fenced");
            self.begin_stop(i, Wanted::Down);
            self.publish(i);
            self.answer_waiters(i);
        }
    }

    /// `cluster-place`: the agent won entity `i` (one with a placement: `handle` checks) for
    /// this node with `token`.
    pub(super) fn cluster_place(&mut self, i: EntityId, token: u64, stream: UnixStream) {
        let name = self.entities[i].cfg.name.clone();
        let lead = self.fence_lead();
        if self.fence_at == 0 || mono_ns() + lead >= self.fence_at {
            reply(
                stream,
                &Response::errno(
                    libc::EAGAIN,
                    "this node's cluster lease is not current: nothing is placed here until \
                     the agent has renewed it",
                ),
            );
            return;
        }
        let e = &mut self.entities[i];
        if token < e.rec.fencing_token {
            let held = e.rec.fencing_token;
            reply(
                stream,
                &Response::errno(
                    libc::EINVAL,
                    format!("`{name}`: token {token} is older than the one it runs with ({held})"),
                ),
            );
            return;
        }
        let up = matches!(e.wanted, Wanted::Up | Wanted::AutoRestart | Wanted::Restart)
            && !matches!(e.rec.state, EntityState::Stopped | EntityState::Exited);
        if token == e.rec.fencing_token && up {
            reply(stream, &Response::ok(format!("{name} placed here already")));
            return;
        }
        let had_process = e.rec.state.has_process();
        e.rec.fencing_token = token;
        e.waiters.push((stream, WaitFor::Up));
        say!(self, "{name}: placed here by the cluster (token {token})");
        if had_process {
            // It runs with an older token in its environment: a new process gets this one.
            self.record(i, None, "cluster", "restart", "placed with a new token");
            self.begin_stop(i, Wanted::Restart);
        } else {
            let e = &mut self.entities[i];
            e.rec.policy = ham_core::engine::decide_operator_start(&e.rec.policy);
            self.record(i, None, "cluster", "start", "placed");
            let why = lifecycle::Why::new("cluster", "placed here");
            self.step(i, ham_core::lifecycle::Input::Start, &why);
        }
        self.publish(i);
        self.answer_waiters(i);
        let t = self.fence_timer_at();
        if t != 0 {
            self.schedule(t, Deadline::ClusterFence);
        }
    }

    /// `cluster-unplace`: entity `i` no longer runs here (answered once it is down).
    pub(super) fn cluster_unplace(&mut self, i: EntityId, stream: UnixStream) {
        let name = self.entities[i].cfg.name.clone();
        let token = std::mem::take(&mut self.entities[i].rec.fencing_token);
        if token != 0 {
            say!(self, "{name}: no longer placed here (token {token})");
            self.record(i, None, "cluster", "stop", "unplaced");
        }
        self.entities[i].waiters.push((stream, WaitFor::Down));
        self.begin_stop(i, Wanted::Down);
        self.publish(i);
        self.answer_waiters(i);
    }
}

impl Daemon {
    /// `cluster-set`: queued for the agent (which writes it through the master); answered
    /// when the agent says how it went.
    pub(super) fn cluster_set(&mut self, key: String, value: String, stream: UnixStream) {
        if self.cfg.cluster.is_none() {
            reply(
                stream,
                &Response::errno(
                    libc::ENOENT,
                    format!("{} has no [cluster] table", self.cfg.path.display()),
                ),
            );
            return;
        }
        if let Err(why) = ham_core::protocol::check_cluster_setting(&key, &value) {
            reply(stream, &Response::errno(libc::EINVAL, why));
            return;
        }
        let w = &mut self.cluster_work;
        if w.asked.len() >= WORK_MAX {
            reply(
                stream,
                &Response::errno(libc::EAGAIN, "too many cluster settings waiting"),
            );
            return;
        }
        w.next_id += 1;
        let id = w.next_id;
        w.queued.push_back(ClusterWork {
            id,
            key: key.clone(),
            value,
        });
        w.asked.insert(id, (stream, key));
        self.hand_work();
    }

    /// `cluster-switchover` (an operator's), or `None` for the one an escalation asks: the
    /// agent hands this node's supervisor role and singletons to a standby.
    pub(super) fn cluster_switchover(&mut self, asker: Option<UnixStream>) {
        if self.cfg.cluster.as_ref().is_none_or(|c| !c.supervisor) {
            if let Some(s) = asker {
                reply(
                    s,
                    &Response::errno(
                        libc::EINVAL,
                        "this node is not a supervisor ([cluster] role)",
                    ),
                );
            }
            return;
        }
        let w = &mut self.cluster_work;
        w.next_id += 1;
        let id = w.next_id;
        w.queued.push_back(ClusterWork {
            id,
            key: ham_core::protocol::SWITCHOVER.into(),
            value: String::new(),
        });
        if let Some(s) = asker {
            w.asked
                .insert(id, (s, ham_core::protocol::SWITCHOVER.into()));
        }
        self.hand_work();
    }

    /// The standby a switchover would hand over to, if this node is the active supervisor
    /// of a fresh view that has one.
    pub(super) fn switchover_standby(&self) -> Option<String> {
        let cfg = self.cfg.cluster.as_ref().filter(|c| c.supervisor)?;
        let (s, at) = self.cluster.as_ref()?;
        let fresh = !s.stale && mono_ns().saturating_sub(*at) <= cfg.lease_ttl_ns;
        if !fresh || s.active.as_deref() != Some(cfg.node.as_str()) {
            return None;
        }
        s.standbys.first().cloned()
    }

    /// `cluster-next`: the agent's request for work, answered now or held.
    pub(super) fn cluster_next(&mut self, stream: UnixStream) {
        self.cluster_work.agent = Some(stream);
        self.hand_work();
    }

    /// Hands the oldest queued work to a waiting agent.
    fn hand_work(&mut self) {
        let w = &mut self.cluster_work;
        if w.agent.is_none() || w.queued.is_empty() {
            return; // held until both are there
        }
        let (Some(agent), Some(work)) = (w.agent.take(), w.queued.pop_front()) else {
            return;
        };
        let r = Response::ok(serde_json::to_string(&work).expect("serialises"));
        if reply_sent(agent, &r).is_err() {
            // The agent went away: the work waits for the next one.
            self.cluster_work.queued.push_front(work);
        }
    }

    /// `cluster-done`: the outcome of work `id`, for the request that asked it.
    pub(super) fn cluster_done(&mut self, id: u64, error: Option<String>) {
        let Some((asker, key)) = self.cluster_work.asked.remove(&id) else {
            return;
        };
        let r = match error {
            None if key == ham_core::protocol::SWITCHOVER => {
                Response::ok("switched over: a standby is the active supervisor")
            }
            None => Response::ok("written through the cluster's master"),
            Some(why) => Response::errno(libc::EIO, why),
        };
        reply(asker, &r);
    }

    /// `cluster-apply`: a setting the cluster holds, applied on this node.
    pub(super) fn cluster_apply(
        &mut self,
        key: &str,
        value: &str,
        origin: &str,
        revision: u64,
    ) -> Response {
        if let Err(why) = ham_core::protocol::check_cluster_setting(key, value) {
            return Response::errno(libc::EINVAL, why);
        }
        let changed = match key {
            "device-restart" => {
                let enabled = value == "enabled";
                let off = self.writer.segment().header().flags()
                    & ham_core::layout::FLAG_DEVICE_RESTART_OFF
                    != 0;
                if off == enabled {
                    if let Err(e) = self.set_device_restart(enabled) {
                        return Response::err(e);
                    }
                    true
                } else {
                    false
                }
            }
            "verbosity" => {
                let level: u32 = value.parse().unwrap_or(1);
                let changed = crate::log::verbosity() != level;
                if changed {
                    crate::log::set_verbosity(level);
                    self.wrote(self.writer.set_verbosity(level));
                }
                changed
            }
            _ => false,
        };
        if changed {
            say!(
                self,
                "cluster setting {key} = {value} (set on {origin}, revision {revision})"
            );
        }
        Response::ok("applied")
    }
}
