//! The test harness: an instance of `ham` in its own temporary directory, with helpers to
//! run `hamctl`, read the status and wait for a state. Dropping it stops everything it
//! started, even when the test failed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const HAM: &str = env!("CARGO_BIN_EXE_ham");
pub const HAMCTL: &str = env!("CARGO_BIN_EXE_hamctl");

/// How long a test waits for a state before it fails. Generous: CI machines are slow and
/// the speed of recovery is the benchmark's business, not the tests'.
pub const DEADLINE: Duration = Duration::from_secs(30);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique instance name for this test process.
pub fn unique_name(tag: &str) -> String {
    format!(
        "t{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        tag
    )
}

pub struct Ham {
    pub dir: tempfile::TempDir,
    pub name: String,
    pub config: PathBuf,
    pub child: Option<Child>,
    /// Entity pids seen in any status, so Drop can clean up after a crashed ham.
    seen: std::cell::RefCell<Vec<(i32, u64)>>,
}

/// Writes a configuration with a fresh instance name; `body` holds the `[[entity]]` tables.
pub fn write_config(dir: &Path, name: &str, body: &str) -> PathBuf {
    write_config_with(dir, name, "", body)
}

/// Like [`write_config`], with extra lines for the `[ham]` table.
pub fn write_config_with(dir: &Path, name: &str, ham_extra: &str, body: &str) -> PathBuf {
    let path = dir.join("ham.toml");
    // Tests never write to the machine's syslog unless they bring their own socket.
    let syslog = if ham_extra.contains("syslog") {
        ""
    } else {
        "syslog = \"\"\n"
    };
    let text = format!(
        "[ham]\nname = \"{name}\"\nrun_dir = \"run\"\nlog_dir = \"log\"\n{syslog}{ham_extra}\n{body}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

impl Ham {
    /// Starts `ham` on a configuration made of `body`, and waits until its status answers
    /// and its Guardian runs.
    pub fn start(tag: &str, body: &str) -> Ham {
        Self::start_with(tag, "", body, &[])
    }

    /// Starts `ham` with extra `[ham]` lines and environment variables.
    pub fn start_with(tag: &str, ham_extra: &str, body: &str, env: &[(&str, &str)]) -> Ham {
        let mut ham = Self::configured(tag, ham_extra, body);
        ham.spawn(env);
        // Every configured entity listed too: the pair can be up a moment before the HAM
        // has published the records, and a test looking an entity up then found none.
        let configured = body.matches("[[entity]]").count();
        ham.wait_for("ham and its guardian to be up", |s| {
            s["guardian"]["alive"] == true
                && s["ham"]["alive"] == true
                && s["entities"].as_array().map_or(0, Vec::len) >= configured
        });
        ham
    }

    /// An instance with its configuration written, not started.
    pub fn configured(tag: &str, ham_extra: &str, body: &str) -> Ham {
        let dir = tempfile::Builder::new()
            .prefix("ham-test-")
            .tempdir()
            .unwrap();
        // World-readable so tests can run hamctl as another user.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let name = unique_name(tag);
        let config = write_config_with(dir.path(), &name, ham_extra, body);
        Ham {
            dir,
            name,
            config,
            child: None,
            seen: Default::default(),
        }
    }

    /// Starts `ham` on this instance's configuration (again), as the test's child.
    pub fn spawn(&mut self, env: &[(&str, &str)]) {
        let mut cmd = self.command(env);
        self.child = Some(cmd.spawn().expect("ham starts"));
    }

    /// The command that [`Ham::spawn`] runs: `ham --config CONFIG`, output to ham.stderr.
    pub fn command(&self, env: &[(&str, &str)]) -> Command {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("ham.stderr"))
            .unwrap();
        let mut cmd = Command::new(HAM);
        cmd.arg("--config")
            .arg(&self.config)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        cmd
    }

    /// Starts `ham` as [`Ham::spawn`] does, inside network namespace `netns`
    /// (`ip netns exec NS ham …`, which becomes ham: the child's pid is ham's).
    pub fn spawn_in_netns(&mut self, netns: &str) {
        let plain = self.command(&[]);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns])
            .arg(plain.get_program())
            .args(plain.get_args());
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("ham.stderr"))
            .unwrap();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        self.child = Some(cmd.spawn().expect("ip netns exec ham starts"));
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Runs `hamctl -c CONFIG ARGS…`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(HAMCTL)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("hamctl runs")
    }

    /// `hamctl status --json`, parsed; `None` if it fails (e.g. not up yet).
    pub fn try_status(&self) -> Option<Value> {
        let out = self.ctl(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
        let mut seen = self.seen.borrow_mut();
        for e in v["entities"].as_array().into_iter().flatten() {
            if let Some(pid) = e["pid"].as_i64() {
                let pid = pid as i32;
                if let Some(st) = start_time(pid) {
                    if !seen.contains(&(pid, st)) {
                        seen.push((pid, st));
                    }
                }
            }
        }
        Some(v)
    }

    pub fn status(&self) -> Value {
        self.try_status().expect("hamctl status --json succeeds")
    }

    /// Polls the status until `pred` holds; fails the test with the last status otherwise.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < DEADLINE {
            if let Some(s) = self.try_status() {
                if pred(&s) {
                    return s;
                }
                last = Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "timed out after {DEADLINE:?} waiting for {what}; last status: {}\nham stderr:\n{}",
            last.map_or("none".into(), |s| s.to_string()),
            self.stderr()
        );
    }

    /// `hamctl log ENTITY --json`: the entity's process-log records, oldest first.
    pub fn log_of(&self, entity: &str) -> Vec<Value> {
        let out = self.ctl(&["log", entity, "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).expect("log --json is JSON");
        v.as_array().expect("a list").clone()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ham.stderr")).unwrap_or_default()
    }

    /// Waits for `ham` itself to exit and returns its exit code.
    pub fn wait_exit(&mut self) -> i32 {
        let child = self.child.as_mut().expect("running");
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st.code().unwrap_or(-1);
            }
            assert!(
                start.elapsed() < DEADLINE,
                "ham did not exit:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn segment_path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/shm/ham.{}.state", self.name))
    }
    pub fn socket_path(&self) -> PathBuf {
        self.dir
            .path()
            .join("run")
            .join(format!("{}.sock", self.name))
    }
    pub fn pid_file(&self) -> PathBuf {
        self.dir
            .path()
            .join("run")
            .join(format!("{}.pid", self.name))
    }
}

impl Drop for Ham {
    fn drop(&mut self) {
        // Whoever is the HAM now (it may be a promoted Guardian): ask it to shut down.
        if let Some(s) = self.try_status() {
            if s["ham"]["alive"] == true {
                let _ = Command::new(HAMCTL)
                    .arg("-c")
                    .arg(&self.config)
                    .args(["--timeout", "20s", "shutdown"])
                    .output();
            }
            // Anything of this instance's pair still alive after that is killed.
            for who in ["ham", "guardian"] {
                if let Some(pid) = s[who]["pid"].as_i64() {
                    let pid = pid as i32;
                    if pid > 0 && instance_of(pid).as_deref() == Some(self.name.as_str()) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
        }
        // Any process still running this instance's configuration (a Guardian promoted
        // after the status above was read, say) is killed: a test never leaves a pair behind.
        let start = Instant::now();
        loop {
            let ours = self.child.as_ref().map_or(0, |c| c.id() as i32);
            let pair: Vec<i32> = ham_processes_of(&self.name)
                .into_iter()
                .filter(|&pid| pid != ours)
                .collect();
            if pair.is_empty() || start.elapsed() > Duration::from_secs(10) {
                break;
            }
            for pid in pair {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(mut child) = self.child.take() {
            // Ask first (that stops the entities), then insist.
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Entities of a ham that died: only processes this test's ham started, checked by
        // pid and start time.
        for &(pid, st) in self.seen.borrow().iter() {
            if start_time(pid) == Some(st) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        // Entities of this instance that anything above missed.
        for pid in processes_where(|env| env_has(env, "HAM_INSTANCE", &self.name)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = std::fs::remove_file(self.segment_path());
        // Its client segment and heartbeat pages, if a ham that died left them.
        if let Ok(entries) = std::fs::read_dir("/dev/shm") {
            let prefix = format!("ham.{}.", self.name);
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        // The instance's cgroups, if a ham that died left them (ham runs in this process's
        // cgroup, so they are where it would have put them).
        let mode = ham_guardian::config::CgroupMode::Auto;
        if let Some(dir) = ham_guardian::cgroup::instance_dir(&mode, &self.name, "self") {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten().filter(|e| e.path().is_dir()) {
                    let _ = std::fs::write(e.path().join("cgroup.kill"), "1");
                    let start = Instant::now();
                    while std::fs::remove_dir(e.path()).is_err()
                        && start.elapsed() < Duration::from_secs(5)
                    {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// The instance a `ham` process (HAM or Guardian) serves, from its command line.
fn instance_of(pid: i32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let i = args.iter().position(|a| *a == b"--config")?;
    let config = std::str::from_utf8(args.get(i + 1)?).ok()?;
    let text = std::fs::read_to_string(config).ok()?;
    let line = text.lines().find(|l| l.starts_with("name = "))?;
    Some(
        line.trim_start_matches("name = ")
            .trim_matches('"')
            .to_owned(),
    )
}

pub fn env_has(env: &[u8], key: &str, value: &str) -> bool {
    let want = format!("{key}={value}");
    env.split(|&b| b == 0).any(|kv| kv == want.as_bytes())
}

/// Live (non-zombie) processes whose environment satisfies `pred`.
pub fn processes_where(pred: impl Fn(&[u8]) -> bool) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Some(st) = start_time(pid) else { continue };
        if !alive(pid, st) {
            continue;
        }
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
            if pred(&env) {
                out.push(pid);
            }
        }
    }
    out
}

/// The live processes running entity `entity` of instance `instance`.
pub fn entity_processes(instance: &str, entity: &str) -> Vec<i32> {
    processes_where(|env| {
        env_has(env, "HAM_INSTANCE", instance) && env_has(env, "HAM_ENTITY", entity)
    })
}

/// The processes of `entity` ([`entity_processes`]) once `/proc` shows `n` of them, or as
/// they are after [`DEADLINE`] (for the caller's assertion to show). A process just past its
/// `execve` shows an empty environment for a moment — the kernel sets it up after closing
/// the descriptors whose end tells ham the `execve` went — and is missed until then.
pub fn entity_processes_n(instance: &str, entity: &str, n: usize) -> Vec<i32> {
    let start = Instant::now();
    loop {
        let procs = entity_processes(instance, entity);
        if procs.len() == n || start.elapsed() >= DEADLINE {
            return procs;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `cond` holds (e.g. a file a hook writes), failing the test with `what` and
/// ham's stderr after [`DEADLINE`].
pub fn wait_until(ham: &Ham, what: &str, cond: impl Fn() -> bool) {
    wait_until_showing(ham, what, cond, || "(nothing to show)".into());
}

/// [`wait_until`], with `left()` (what is still in the way) in the failure.
pub fn wait_until_showing(
    ham: &Ham,
    what: &str,
    cond: impl Fn() -> bool,
    left: impl Fn() -> String,
) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}; still there:\n{}\nham's stderr:\n{}",
            left(),
            ham.stderr()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What `/proc` says of process `pid`: its stat line, where it sleeps, its parent's, and
/// where its descriptors lead (for a failure's message).
pub fn describe_process(pid: i32) -> String {
    let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let to = std::fs::read_link(e.path()).unwrap_or_default();
                    format!("{}→{}", e.file_name().to_string_lossy(), to.display())
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "pid {pid}: {} wchan {} fds [{}]",
        read("stat").trim(),
        read("wchan"),
        fds.join(" ")
    )
}

/// A child process killed and reaped when dropped (also when the test fails).
pub struct Reaped(pub Child);
impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines a child writes on a pipe (its stdout), each awaited for at most [`DEADLINE`]:
/// a line that never comes fails the test with what came before, instead of hanging it. A
/// thread reads the pipe; it ends when the pipe closes (the child's death).
pub struct Lines {
    rx: std::sync::mpsc::Receiver<std::io::Result<String>>,
    what: String,
    seen: Vec<String>,
}

impl Lines {
    /// `what` names the child in a failure's message.
    pub fn new(pipe: impl std::io::Read + Send + 'static, what: &str) -> Self {
        use std::io::BufRead;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(pipe).lines() {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Self {
            rx,
            what: what.to_owned(),
            seen: Vec::new(),
        }
    }

    /// The next line, failing the test if none comes within [`DEADLINE`] or the pipe
    /// closes first.
    pub fn next_line(&mut self) -> String {
        match self.rx.recv_timeout(DEADLINE) {
            Ok(Ok(l)) => {
                self.seen.push(l.clone());
                l
            }
            Ok(Err(e)) => panic!("reading {}: {e}; lines so far: {:?}", self.what, self.seen),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!(
                "no line from {} within {DEADLINE:?}; lines so far: {:?}",
                self.what, self.seen
            ),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!(
                "{} closed its output; lines so far: {:?}",
                self.what, self.seen
            ),
        }
    }
}

/// Field 22 of /proc/PID/stat, or None if no such process.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// True while `pid` with `start_time` exists and is not a zombie.
pub fn alive(pid: i32, st: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let state = stat[close + 1..].split_ascii_whitespace().next();
    start_time(pid) == Some(st) && state != Some("Z")
}

/// The entity named `name` in a status.
pub fn entity<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["entities"]
        .as_array()
        .expect("entities is a list")
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no entity {name} in {status}"))
}

pub fn pid_of(status: &Value, name: &str) -> i32 {
    entity(status, name)["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("{name} has no pid in {status}")) as i32
}

/// Whether entity `name` runs (false while the status does not list it yet).
pub fn running(status: &Value, name: &str) -> bool {
    status["entities"].as_array().is_some_and(|v| {
        v.iter()
            .any(|e| e["name"] == name && e["state"] == "running")
    })
}

pub fn sigkill(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
}

pub fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// An entity table running `sleep` for a long time.
pub fn sleeper(name: &str) -> String {
    format!(
        "[[entity]]\nname = \"{name}\"\ncommand = [\"sleep\", \"1000\"]\nstop_timeout = \"2s\"\n\n"
    )
}

/// `sock.recv`, again after a signal: a socket with a read timeout returns EINTR when any
/// signal with a handler reaches this thread, whatever `SA_RESTART` says (tests in this
/// process subscribe to signals).
pub fn recv_retrying(
    sock: &std::os::unix::net::UnixDatagram,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    loop {
        match sock.recv(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// SIGSTOPs `pid` (one of `ham`'s processes) and waits until the stop has landed (state `T`).
pub fn sigstop_landed(ham: &Ham, pid: i32) {
    sigstop(pid);
    wait_until(ham, &format!("pid {pid} stopped"), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|t| t.rsplit(") ").next().unwrap_or("").starts_with('T'))
    });
}

/// SIGSTOPs `pid` (a process the test started, or one of its instance's).
pub fn sigstop(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
}

/// SIGKILLs one of the pair and waits until it has really exited. A killed process that has
/// not been scheduled yet still looks alive in /proc; without the wait, a loaded machine lets
/// the next kill hit its partner too, and that is a double fault (a warm start), not chaos.
/// Both processes of the pair die and neither takes over: the Guardian `g` is stopped
/// first, then the HAM `h` is killed (and reaped, if it is the one `ham` started), then `g`.
pub fn kill_pair(ham: &mut Ham, h: i32, g: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(g),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    if ham.child.is_some() && h == ham.pid() {
        sigkill(h);
        assert_eq!(ham.wait_exit(), -1);
    } else {
        assert!(kill_and_wait(h));
    }
    // Dead, not only killed: a new ham rightly refuses to start while the old Guardian runs.
    assert!(kill_and_wait(g));
}

pub fn kill_and_wait(pid: i32) -> bool {
    let Some(p) = rustix::process::Pid::from_raw(pid) else {
        return false;
    };
    let Ok(fd) = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()) else {
        return false;
    };
    if rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL).is_err() {
        return false;
    }
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let ready = rustix::event::poll(
        &mut fds,
        Some(&rustix::time::Timespec {
            tv_sec: 30,
            tv_nsec: 0,
        }),
    );
    assert!(
        ready.is_ok_and(|n| n > 0),
        "pid {pid} did not die within 30 s of SIGKILL"
    );
    true
}

/// Waits for `child` up to [`DEADLINE`]; still running then, it is killed (SIGTERM, then
/// SIGKILL) and `None` returned.
pub fn wait_child(child: &mut Child) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    std::thread::sleep(Duration::from_secs(2));
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// The live `ham` processes (HAMs and Guardians) of instance `name`: they name themselves
/// `ham: HAM NAME` and `ham: guardian NAME`.
pub fn ham_processes_of(name: &str) -> Vec<i32> {
    let titles = [format!("ham: HAM {name}"), format!("ham: guardian {name}")];
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let first = c.split(|&b| b == 0).next().unwrap_or_default();
                titles.iter().any(|t| first == t.as_bytes())
            })
        })
        .collect()
}

/// One request line on a new connection, and the answer with the descriptor attached.
pub fn ask_fd(ham: &Ham, line: &str) -> (serde_json::Value, Option<std::os::fd::OwnedFd>) {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(ham.socket_path()).unwrap();
    s.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut first = [0u8; 4096];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let n = rustix::net::recvmsg(
        &s,
        &mut [std::io::IoSliceMut::new(&mut first)],
        &mut anc,
        RecvFlags::CMSG_CLOEXEC,
    )
    .unwrap()
    .bytes;
    let mut fd = None;
    for msg in anc.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = msg {
            fd = fds.into_iter().next();
        }
    }
    let mut answer = String::from_utf8_lossy(&first[..n]).into_owned();
    if !answer.ends_with('\n') {
        std::io::BufReader::new(&s).read_line(&mut answer).unwrap();
    }
    (serde_json::from_str(answer.trim_end()).unwrap(), fd)
}
