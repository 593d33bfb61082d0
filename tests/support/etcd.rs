//! etcd members of a test's own, on loopback: shared by the integration tests
//! (`tests/integration/cluster.rs`), the agent's client tests (`ham-cluster/tests/etcd.rs`)
//! and the benchmark's `cluster_failover` (`ham-bench/src/cluster.rs`), which include this
//! file by path.
//!
//! Ports: a port found free and then let go can be taken before etcd binds it, by another
//! test's outgoing connection (those come from the kernel's ephemeral range) or by another
//! test's etcd. So the ports are drawn below the ephemeral range, held together while they
//! are chosen, and a member that exits before it is healthy (its log says why) has the whole
//! set started again on fresh ports, a few times, before the test fails with that log.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One etcd member: the test's child, killed and reaped on drop.
pub struct Member {
    pub child: Child,
    pub client: u16,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// etcd's server on PATH, or `None`: the test is skipped and says so (it fails instead when
/// `HAM_REQUIRE_ETCD` is set, as CI sets it).
pub fn etcd_bin() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("etcd"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("HAM_REQUIRE_ETCD").is_none(),
            "HAM_REQUIRE_ETCD is set and there is no etcd on PATH (apt-get install etcd-server)"
        );
        eprintln!("skipped: no etcd on PATH (apt-get install etcd-server)");
    }
    found
}

/// Whether the member on `port` answers `/health` with true.
pub fn healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = write!(
        s,
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    );
    let mut t = String::new();
    let _ = s.read_to_string(&mut t);
    t.contains("\"health\":\"true\"")
}

/// The lowest port of the kernel's ephemeral range (outgoing connections and `bind(:0)` take
/// theirs from it); 32768 if it cannot be read.
fn ephemeral_floor() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// `n` distinct loopback ports below the ephemeral range, each free when chosen (all held
/// until the last is found).
fn ports(n: usize, salt: u64) -> Result<Vec<u16>, String> {
    let floor = u64::from(ephemeral_floor()).max(20_000);
    let span = floor - 10_000;
    // A start that differs between processes and attempts (std has no random numbers; the
    // hasher's keys are random per process).
    let mut h =
        std::hash::BuildHasher::build_hasher(&std::collections::hash_map::RandomState::new());
    std::hash::Hasher::write_u64(&mut h, salt);
    let mut next = std::hash::Hasher::finish(&h) % span;
    let mut held = Vec::new();
    for _ in 0..span {
        if held.len() == n {
            break;
        }
        let port = (10_000 + next) as u16;
        next = (next + 7919) % span;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    if held.len() < n {
        return Err(format!("no {n} free loopback ports below {floor}"));
    }
    held.iter()
        .map(|l| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string()))
        .collect()
}

/// The arguments of member `m{i}` of a new cluster: its data under `data`, its client and
/// peer URLs, every member's peer URL (`initial`), the cluster's `token`.
pub fn member_args<'c>(
    cmd: &'c mut Command,
    i: usize,
    data: &Path,
    (client, peer): (&str, &str),
    initial: &str,
    token: &str,
) -> &'c mut Command {
    cmd.arg("--name")
        .arg(format!("m{i}"))
        .arg("--data-dir")
        .arg(data)
        .args([
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
        ])
        .args([
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
        ])
        .args([
            "--initial-cluster",
            initial,
            "--initial-cluster-token",
            token,
        ])
        .args(["--initial-cluster-state", "new"])
}

/// The last lines of a member's log.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Starts an `n`-member cluster under `dir` (data and logs there) and returns once every
/// member is healthy; if it cannot within `deadline`, why, with the member's log.
pub fn start(
    bin: &Path,
    dir: &Path,
    n: usize,
    token: &str,
    deadline: Duration,
) -> Result<Vec<Member>, String> {
    const ATTEMPTS: u64 = 5;
    for attempt in 0..ATTEMPTS {
        let base = dir.join(format!("try{attempt}"));
        std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
        let p = ports(2 * n, attempt ^ u64::from(std::process::id()))?;
        let initial: Vec<String> = (0..n)
            .map(|i| format!("m{i}=http://127.0.0.1:{}", p[2 * i + 1]))
            .collect();
        let logs: Vec<PathBuf> = (0..n).map(|i| base.join(format!("m{i}.log"))).collect();
        let mut members: Vec<Member> = Vec::with_capacity(n);
        for i in 0..n {
            let (client, peer) = (p[2 * i], p[2 * i + 1]);
            let log = std::fs::File::create(&logs[i])
                .map_err(|e| format!("{}: {e}", logs[i].display()))?;
            let urls = (
                &format!("http://127.0.0.1:{client}")[..],
                &format!("http://127.0.0.1:{peer}")[..],
            );
            let data = base.join(format!("m{i}"));
            let child = member_args(
                &mut Command::new(bin),
                i,
                &data,
                urls,
                &initial.join(","),
                token,
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
            members.push(Member { child, client });
        }
        let until = Instant::now() + deadline;
        let (i, status) = 'wait: loop {
            let mut all = true;
            for (i, m) in members.iter_mut().enumerate() {
                if let Ok(Some(status)) = m.child.try_wait() {
                    break 'wait (i, status);
                }
                all &= healthy(m.client);
            }
            if all {
                return Ok(members);
            }
            if Instant::now() >= until {
                return Err(format!(
                    "etcd not healthy after {deadline:?} (ports {p:?}); member 0's log ends:\n{}",
                    tail(&logs[0])
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let why = tail(&logs[i]);
        eprintln!(
            "etcd member m{i} exited ({status}) before it was healthy, attempt {}; its log ends:\n{why}",
            attempt + 1
        );
        members.clear();
    }
    Err(format!(
        "etcd: no attempt of {ATTEMPTS} started (see the logs above)"
    ))
}
