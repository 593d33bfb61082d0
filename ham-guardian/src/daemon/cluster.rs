//! `[cluster]`: ham keeps what its agent (`ham-cluster`, an entity ham runs) last reported,
//! and answers `cluster-status` with it, stale when the agent has not reported within the
//! lease's TTL (it died, hangs, or cannot reach ham).

use ham_core::protocol::ClusterState;

use super::*;

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
