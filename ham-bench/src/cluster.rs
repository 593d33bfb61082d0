//! `cluster_failover`: three etcd members and three ham nodes on loopback (`lease_ttl` 2 s),
//! a one-of-n singleton that appends `<token> <node>` to a file every 5 ms. Its owner's agent
//! is stopped (SIGSTOP): `ham` is the time until a write with a higher token comes from
//! another node (the singleton running elsewhere); `view` is the time until both other nodes'
//! views no longer have the owner (its lease expired and they saw it) — the floor any
//! failover built on etcd leases waits for. Each round then lets the agent go on and waits
//! for the view to re-form with all three. Needs `etcd` on PATH (Debian's `etcd-server`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::report::{Outcome, ScenarioResult};
use crate::scenarios::{Params, Problems, progress};
use crate::sdk::measured;
use crate::sys::{self, Result, mono_ns};
use crate::systems::Ctx;

const TTL_S: u64 = 2;
const NODES: [&str; 3] = ["a", "b", "c"];
const WAIT: Duration = Duration::from_secs(30);

#[path = "../../tests/support/etcd.rs"]
mod etcd_support;

fn until(what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let end = Instant::now() + WAIT;
    while !cond() {
        sys::check_interrupted()?;
        if Instant::now() > end {
            return Err(format!("{what}: not within {WAIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

struct Node {
    config: PathBuf,
    child: Child,
}

fn cluster_status(hamctl: &Path, config: &Path) -> Option<Value> {
    let out = Command::new(hamctl)
        .arg("-c")
        .arg(config)
        .args(["cluster", "status", "--json"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn members(s: &Value) -> Vec<String> {
    s["view"]["members"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|m| m["node"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Every write: (token, node, wall-clock ns).
fn writes(resource: &Path) -> Vec<(u64, String, u64)> {
    std::fs::read_to_string(resource)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut w = l.split(' ');
            Some((
                w.next()?.parse().ok()?,
                w.next()?.to_owned(),
                w.next()?.parse().ok()?,
            ))
        })
        .collect()
}

fn last_write(resource: &Path) -> Option<(u64, String)> {
    writes(resource).pop().map(|(t, n, _)| (t, n))
}

/// The time between the old owner's last write and the new owner's first (ms).
fn gap(resource: &Path, old: u64) -> Option<f64> {
    let w = writes(resource);
    let last_old = w.iter().rev().find(|x| x.0 == old)?.2;
    let first_new = w.iter().find(|x| x.0 > old)?.2;
    Some(first_new.saturating_sub(last_old) as f64 / 1e6)
}

pub fn cluster_failover(ctx: &Ctx, p: &Params, problems: &mut Problems) -> Result<ScenarioResult> {
    let rounds = if p.n < 100 { 3 } else { 20 };
    let mut res = ScenarioResult {
        scenario: "cluster_failover",
        unit: "ms",
        title: format!(
            "3 etcd members + 3 ham nodes on loopback, lease_ttl {TTL_S}s, {rounds} rounds: the \
             owner's agent stopped -> ham = the singleton writing on another node; view = both \
             other nodes' views without the owner; gap = the old owner's last write to the new \
             owner's first"
        ),
        systems: Vec::new(),
        ratios: true,
        ratio_pairs: vec![("ham", "view")],
        columns: Vec::new(),
        ratio_metrics: Vec::new(),
        notes: Vec::new(),
    };
    let etcd = match sys::which("etcd") {
        Some(e) => e,
        None => {
            for s in ["ham", "view"] {
                res.systems.push((
                    s.into(),
                    Outcome::Skipped("etcd not installed (apt-get install etcd-server)".into()),
                ));
            }
            return Ok(res);
        }
    };
    let agent = ctx.ham.with_file_name("ham-cluster");
    if !agent.exists() {
        return Err(format!(
            "{} missing (cargo build --release -p ham-cluster)",
            agent.display()
        ));
    }
    let dir = ctx.base.join(format!("cluster-{}", mono_ns()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir: {e}"))?;
    let (failover, view, gaps) = run(ctx, &etcd, &agent, &dir, rounds)?;
    let extra = |v: &[f64]| {
        let mut m = Map::new();
        m.insert("lease_ttl_ms".into(), json!(TTL_S * 1000));
        m.insert("rounds".into(), json!(v.len()));
        m
    };
    res.systems
        .push(("ham".into(), measured(&failover, 0, extra(&failover))));
    res.systems
        .push(("view".into(), measured(&view, 0, extra(&view))));
    // How long the singleton ran nowhere: the old owner's last write to the new one's first
    // (the fence's margin and stop, then the expiry, the campaign, the start).
    res.systems
        .push(("gap".into(), measured(&gaps, 0, extra(&gaps))));
    for (name, o) in &res.systems {
        if let Outcome::Measured { stats, .. } = o {
            progress(format!(
                "{name}: median {:.0} ms ({:.2}x lease_ttl)",
                stats.median,
                stats.median / (TTL_S * 1000) as f64
            ));
        }
    }
    res.notes.push(format!(
        "ham holds the fence deadline: the owner's copy is stopped before its lease (TTL \
         {TTL_S} s) can expire; the failover then waits for etcd to expire it, the others to \
         see it, one campaign and one start"
    ));
    let _ = problems;
    Ok(res)
}

fn run(
    ctx: &Ctx,
    etcd: &Path,
    agent: &Path,
    dir: &Path,
    rounds: usize,
) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    // Ports below the ephemeral range, started again on fresh ones if a member exits before
    // it is healthy (another process took one meanwhile): shared with the tests.
    let members = etcd_support::start(etcd, dir, 3, &format!("hb{}", ctx.pid), WAIT)?;
    let resource = dir.join("resource");
    let cluster = format!("hb{}", ctx.pid);
    let mut nodes = Vec::new();
    for (i, n) in NODES.iter().enumerate() {
        let ndir = dir.join(n);
        std::fs::create_dir_all(&ndir).map_err(|e| format!("mkdir: {e}"))?;
        let config = ndir.join("ham.toml");
        let text = format!(
            "[ham]\nname = \"{}cl{n}\"\nrun_dir = \"run\"\nlog_dir = \"log\"\nsyslog = \"\"\n\n\
             [cluster]\nname = \"{cluster}\"\nnode = \"{n}\"\n\
             endpoints = [\"http://127.0.0.1:{}\"]\nlease_ttl = \"{TTL_S}s\"\nagent = \"{}\"\n\n\
             [[entity]]\nname = \"writer\"\nplacement = \"one-of-n\"\nstop_timeout = \"300ms\"\n\
             env = {{ NODE = \"{n}\" }}\n\
             command = [\"/bin/sh\", \"-c\", \"while :; do echo \\\"$HAM_FENCING_TOKEN $NODE $(date +%s%N)\\\" \
             >> {}; sleep 0.005; done\"]\n",
            ctx.instance_prefix(),
            members[i].client,
            agent.display(),
            resource.display()
        );
        std::fs::write(&config, text).map_err(|e| format!("config: {e}"))?;
        let out = std::fs::File::create(ndir.join("out.log")).map_err(|e| format!("log: {e}"))?;
        let child = Command::new(&ctx.ham)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .map_err(|e| format!("ham: {e}"))?;
        nodes.push(Node { config, child });
    }
    let result = rounds_of(ctx, &nodes, &resource, rounds);
    for n in &mut nodes {
        let _ = Command::new(&ctx.hamctl)
            .arg("-c")
            .arg(&n.config)
            .args(["--timeout", "20s", "shutdown"])
            .output();
        let _ = n.child.kill();
        let _ = n.child.wait();
    }
    drop(members);
    result
}

fn rounds_of(
    ctx: &Ctx,
    nodes: &[Node],
    resource: &Path,
    rounds: usize,
) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let status = |k: usize| cluster_status(&ctx.hamctl, &nodes[k].config);
    let all3 =
        || (0..3).all(|k| status(k).is_some_and(|s| s["stale"] == false && members(&s) == NODES));
    until("the view with all three", all3)?;
    until("the singleton writing", || last_write(resource).is_some())?;
    let (mut failover, mut view, mut gaps) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        // The owner every node agrees on, and the last writer.
        let mut owner = None;
        until("an agreed owner", || {
            let Some((t, n)) = last_write(resource) else {
                return false;
            };
            let agree = (0..3).all(|k| {
                status(k).is_some_and(|s| {
                    s["singletons"].as_array().is_some_and(|v| {
                        v.iter().any(|x| {
                            x["owner"].as_str() == Some(n.as_str())
                                && x["token"].as_u64() == Some(t)
                        })
                    })
                })
            });
            if agree {
                owner = Some((t, n));
            }
            agree
        })?;
        let (token, from) = owner.expect("set above");
        let i = NODES.iter().position(|n| *n == from).expect("a node");
        let agent = status(i)
            .and_then(|_| {
                let out = Command::new(&ctx.hamctl)
                    .arg("-c")
                    .arg(&nodes[i].config)
                    .args(["status", "--json"])
                    .output()
                    .ok()?;
                let s: Value = serde_json::from_slice(&out.stdout).ok()?;
                s["entities"]
                    .as_array()?
                    .iter()
                    .find(|e| e["name"] == "ham-cluster")?["pid"]
                    .as_i64()
            })
            .ok_or("the owner's agent pid")? as i32;
        let t0 = Instant::now();
        sys::kill(agent, libc::SIGSTOP);
        let (mut moved, mut left) = (None, None);
        let r2 = until("the failover and the view", || {
            if moved.is_none() && last_write(resource).is_some_and(|(t, n)| t > token && n != from)
            {
                moved = Some(t0.elapsed());
            }
            if left.is_none()
                && (0..3)
                    .filter(|&k| k != i)
                    .all(|k| status(k).is_some_and(|s| !members(&s).contains(&from)))
            {
                left = Some(t0.elapsed());
            }
            moved.is_some() && left.is_some()
        });
        sys::kill(agent, libc::SIGCONT);
        r2?;
        failover.push(moved.expect("set").as_secs_f64() * 1000.0);
        view.push(left.expect("set").as_secs_f64() * 1000.0);
        gaps.push(gap(resource, token).ok_or("no gap: writes missing")?);
        until("the view re-formed", all3)?;
        eprintln!(
            "[cluster_failover] round {}: failover {:.0} ms, view {:.0} ms, gap {:.0} ms",
            r + 1,
            failover[r],
            view[r],
            gaps[r]
        );
    }
    Ok((failover, view, gaps))
}
