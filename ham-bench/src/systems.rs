//! The supervisors under test: how each is set up, started, found and stopped.
//!
//! Every process is signalled by pid, and only after checking it is one the bench started
//! (its own spawn, checked by start time) or one those started (checked by executable, and
//! for services by the report FIFO in their command line or environment).

use std::cell::Cell;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ham_core::client::ClientSegment;
use ham_core::segment::{Access, Segment};

use crate::stamps::service_id;
use crate::sys::{self, Result, mono_ns};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ham,
    Bare,
    S6,
    Runit,
    Supervisord,
}

pub const ALL: [Kind; 5] = [
    Kind::Ham,
    Kind::Bare,
    Kind::S6,
    Kind::Runit,
    Kind::Supervisord,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ham => "ham",
            Kind::Bare => "bare",
            Kind::S6 => "s6",
            Kind::Runit => "runit",
            Kind::Supervisord => "supervisord",
        }
    }

    /// The programs this system needs from $PATH (none for ham and bare, which the bench
    /// brings along).
    fn programs(self) -> &'static [&'static str] {
        match self {
            Kind::Ham | Kind::Bare => &[],
            Kind::S6 => &["s6-svscan", "s6-supervise"],
            Kind::Runit => &["runsvdir", "runsv"],
            Kind::Supervisord => &["supervisord"],
        }
    }

    /// `Err(reason)` when it cannot be run here.
    pub fn available(self) -> std::result::Result<(), String> {
        match self.programs().iter().find(|p| sys::which(p).is_none()) {
            Some(p) => Err(format!("{p} not installed")),
            None => Ok(()),
        }
    }
}

/// What every system shares: paths, and the counter that makes names unique.
pub struct Ctx {
    pub base: PathBuf,
    pub child: PathBuf,
    pub fifo: PathBuf,
    pub ham: PathBuf,
    pub hamctl: PathBuf,
    pub me: PathBuf,
    pub pid: u32,
    counter: Cell<u32>,
}

/// The C source of the static service.
const CHILD_C: &str = include_str!("child.c");

/// Compiles [`CHILD_C`] into `base/ham-bench-child-static` (`$CC`, else `cc`).
fn compile_static_child(base: &Path) -> Result<PathBuf> {
    let src = base.join("child.c");
    let out = base.join("ham-bench-child-static");
    fs::write(&src, CHILD_C).map_err(|e| format!("writing {}: {e}", src.display()))?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let res = std::process::Command::new(&cc)
        .args(["-O2", "-static", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .map_err(|e| {
            format!("{cc}: {e} (the static service needs a C compiler; or --dynamic-child)")
        })?;
    if !res.status.success() {
        return Err(format!(
            "{cc} -static child.c failed ({}): {} (static libc: Debian's libc6-dev; or \
             --dynamic-child)",
            res.status,
            String::from_utf8_lossy(&res.stderr).trim()
        ));
    }
    fs::canonicalize(&out).map_err(|e| format!("{}: {e}", out.display()))
}

impl Ctx {
    /// `static_child`: the service is `src/child.c`, compiled here into `base` with
    /// `cc -O2 -static` (the floor, no dynamic loader); else the Rust `ham-bench-child`.
    pub fn new(base: PathBuf, bin_dir: &Path, me: PathBuf, static_child: bool) -> Result<Self> {
        let find = |name: &str| -> Result<PathBuf> {
            let p = bin_dir.join(name);
            fs::canonicalize(&p).map_err(|e| {
                format!(
                    "{}: {e} (build it first: cargo build --release -p ham-bench -p ham-guardian)",
                    p.display()
                )
            })
        };
        Ok(Self {
            child: if static_child {
                compile_static_child(&base)?
            } else {
                find("ham-bench-child")?
            },
            ham: find("ham")?,
            hamctl: find("hamctl")?,
            fifo: base.join("stamps.fifo"),
            base,
            me,
            pid: std::process::id(),
            counter: Cell::new(0),
        })
    }

    fn next(&self) -> u32 {
        let k = self.counter.get() + 1;
        self.counter.set(k);
        k
    }

    /// A new folder for one supervisor run, and its number.
    fn new_dir(&self, kind: Kind, label: &str) -> Result<(u32, PathBuf)> {
        let k = self.next();
        let dir = self.base.join(format!("{}-{label}-{k}", kind.name()));
        fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        Ok((k, dir))
    }

    /// The prefix of every ham instance name of this run.
    pub fn instance_prefix(&self) -> String {
        format!("hb{}-", self.pid)
    }

    /// A service process of this run: our child binary, reporting to our FIFO.
    pub fn is_our_service(&self, pid: i32) -> bool {
        if sys::exe(pid).as_deref() != Some(self.child.as_path()) {
            return false;
        }
        let fifo = self.fifo.to_string_lossy();
        sys::cmdline(pid).get(2).map(String::as_str) == Some(&*fifo)
            || sys::environ_has(pid, &format!("ANCHOR_FIFO={fifo}"))
    }

    /// SIGKILLs every service process of this run that is still there; returns how many.
    pub fn kill_our_services(&self) -> usize {
        let victims: Vec<i32> = sys::all_processes()
            .into_iter()
            .filter(|(pid, s)| s.state != 'Z' && self.is_our_service(*pid))
            .map(|(pid, _)| pid)
            .collect();
        for &p in &victims {
            sys::kill(p, libc::SIGKILL);
        }
        let deadline = mono_ns() + 5_000_000_000;
        while victims.iter().any(|&p| sys::alive(p, None)) && mono_ns() < deadline {
            sys::reap();
            std::thread::sleep(Duration::from_millis(2));
        }
        sys::reap();
        victims.len()
    }

    /// Removes every state and client segment a ham (or a ring scenario) of this run may
    /// have left.
    pub fn unlink_our_segments(&self) {
        let prefix = format!("ham.{}", self.instance_prefix());
        let Ok(dir) = fs::read_dir("/dev/shm") else {
            return;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && name.ends_with(".state") {
                let _ = Segment::unlink(&format!("/{name}"));
            }
            if name.starts_with(&prefix) && name.ends_with(".client") {
                ClientSegment::unlink(&format!("/{name}"));
            }
        }
    }
}

/// A ham instance: its name, run directory and mapped state segment.
pub struct HamInst {
    pub name: String,
    pub run_dir: PathBuf,
    pub seg: Segment,
}

/// One running supervisor under test.
pub struct Sup<'a> {
    pub kind: Kind,
    ctx: &'a Ctx,
    pub dir: PathBuf,
    /// The process the bench spawned, and its start time.
    main: (i32, u64),
    /// Executables our supervisor's other processes may have.
    exes: Vec<PathBuf>,
    pub ham: Option<HamInst>,
    /// ham's configuration, known from the start (`ham` is set only once its segment is
    /// mapped): a ham whose segment the bench could not use is still shut down through it.
    ham_config: Option<PathBuf>,
    stopped: bool,
}

fn canon(p: Option<PathBuf>) -> Vec<PathBuf> {
    p.and_then(|p| fs::canonicalize(p).ok())
        .into_iter()
        .collect()
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

fn toml_str(s: &str) -> String {
    // A JSON string literal is a valid TOML basic string.
    serde_json::Value::String(s.to_owned()).to_string()
}

impl<'a> Sup<'a> {
    /// Sets up and starts `kind` running `n` services. The caller has reset the stamps.
    pub fn start(ctx: &'a Ctx, kind: Kind, n: usize, label: &str) -> Result<Self> {
        Self::start_plus(ctx, kind, n, label, "")
    }

    /// [`Sup::start`], and for ham the entities `ham_more` (TOML) besides the services.
    pub fn start_plus(
        ctx: &'a Ctx,
        kind: Kind,
        n: usize,
        label: &str,
        ham_more: &str,
    ) -> Result<Self> {
        let child = ctx.child.to_string_lossy().into_owned();
        let fifo = ctx.fifo.to_string_lossy().into_owned();
        if kind == Kind::Ham {
            let mut entities = ham_more.to_owned();
            for i in 0..n {
                let id = service_id(i);
                let _ = writeln!(
                    entities,
                    // Restart at once, every time, like the bare loop and the peers: the
                    // default switch policy would hold a service off after 5 exits.
                    "\n[[entity]]\nname = {}\ncommand = [{}, {}, {}]\nstop_timeout = \"1s\"\npolicy = {{ kind = \"immediate\" }}",
                    toml_str(&id),
                    toml_str(&child),
                    toml_str(&id),
                    toml_str(&fifo)
                );
            }
            // Past ham's default capacity (1024 entities), room for them all.
            let extra = if n + 16 > 1024 {
                format!("max_entities = {}\n", n + 16)
            } else {
                String::new()
            };
            return Self::start_ham(ctx, label, &extra, &entities);
        }
        let (_, dir) = ctx.new_dir(kind, label)?;
        let mut exes = Vec::new();
        let cmd = match kind {
            Kind::Ham => unreachable!("started above"),
            Kind::Bare => {
                exes.push(ctx.me.clone());
                let mut c = Command::new(&ctx.me);
                c.arg("__bare-sup")
                    .arg(n.to_string())
                    .arg(&ctx.child)
                    .arg(&ctx.fifo);
                c
            }
            Kind::S6 => {
                let scan = dir.join("scan");
                for i in 0..n {
                    let s = scan.join(service_id(i));
                    fs::create_dir_all(&s).map_err(|e| format!("mkdir {}: {e}", s.display()))?;
                    symlink(&ctx.child, s.join("run")).map_err(|e| format!("symlink: {e}"))?;
                    // The "min" settings: readiness notification and no death tally, so
                    // s6-supervise does not wait 1 s before a restart.
                    write(&s.join("notification-fd"), "3\n")?;
                    write(&s.join("max-death-tally"), "0\n")?;
                }
                exes.extend(canon(sys::which("s6-svscan")));
                exes.extend(canon(sys::which("s6-supervise")));
                let mut c = Command::new("s6-svscan");
                c.arg(&scan);
                c
            }
            Kind::Runit => {
                let sv = dir.join("sv");
                for i in 0..n {
                    let s = sv.join(service_id(i));
                    fs::create_dir_all(&s).map_err(|e| format!("mkdir {}: {e}", s.display()))?;
                    symlink(&ctx.child, s.join("run")).map_err(|e| format!("symlink: {e}"))?;
                }
                exes.extend(canon(sys::which("runsvdir")));
                exes.extend(canon(sys::which("runsv")));
                let mut c = Command::new("runsvdir");
                c.arg("-P").arg(&sv);
                c
            }
            Kind::Supervisord => {
                let d = dir.to_string_lossy();
                fs::create_dir_all(dir.join("childlogs")).map_err(|e| format!("mkdir: {e}"))?;
                let mut t = format!(
                    "[supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\nloglevel=info\n\
                     pidfile={d}/supervisord.pid\nchildlogdir={d}/childlogs\n"
                );
                for i in 0..n {
                    let id = service_id(i);
                    // startsecs=0: a process counts as started at once (the minimum setting).
                    let _ = write!(
                        t,
                        "\n[program:{id}]\ncommand={child} {id} {fifo}\nautorestart=true\nstartsecs=0\n"
                    );
                }
                let conf = dir.join("supervisord.conf");
                write(&conf, &t)?;
                let mut c = Command::new("supervisord");
                c.arg("-n").arg("-c").arg(&conf);
                c
            }
        };
        Self::launch(ctx, kind, dir, cmd, exes, None)
    }

    /// Starts a ham instance with `ham_extra` added to its `[ham]` table and `entities`
    /// (`[[entity]]` tables) as the rest of its configuration.
    pub fn start_ham(ctx: &'a Ctx, label: &str, ham_extra: &str, entities: &str) -> Result<Self> {
        let (k, dir) = ctx.new_dir(Kind::Ham, label)?;
        let name = format!("{}{k}", ctx.instance_prefix());
        let run_dir = dir.join("run");
        let mut t = String::new();
        let _ = writeln!(t, "[ham]\nname = {}", toml_str(&name));
        let _ = writeln!(t, "run_dir = {}", toml_str(&run_dir.to_string_lossy()));
        let _ = writeln!(
            t,
            "log_dir = {}",
            toml_str(&dir.join("log").to_string_lossy())
        );
        let _ = writeln!(t, "liveness_timeout = \"2s\"");
        t.push_str(ham_extra);
        if !ham_extra.is_empty() && !ham_extra.ends_with('\n') {
            t.push('\n');
        }
        t.push_str(entities);
        let config = dir.join("ham.toml");
        write(&config, &t)?;
        let mut cmd = Command::new(&ctx.ham);
        cmd.arg("-c").arg(&config);
        let exes = vec![ctx.ham.clone()];
        Self::launch(
            ctx,
            Kind::Ham,
            dir,
            cmd,
            exes,
            Some((config, name, run_dir)),
        )
    }

    /// Spawns `cmd` as the supervisor (its output to `out.log` in `dir`); for ham, waits until
    /// its state segment names a HAM.
    fn launch(
        ctx: &'a Ctx,
        kind: Kind,
        dir: PathBuf,
        mut cmd: Command,
        exes: Vec<PathBuf>,
        ham: Option<(PathBuf, String, PathBuf)>,
    ) -> Result<Self> {
        let log = File::create(dir.join("out.log")).map_err(|e| format!("log file: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("log file: {e}"))?;
        cmd.stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .current_dir(&dir)
            .env("ANCHOR_FIFO", &ctx.fifo)
            .process_group(0);
        let child_proc = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", kind.name()))?;
        let pid = child_proc.id() as i32;
        drop(child_proc); // reaped by sys::reap (the bench is a subreaper anyway)
        let start = sys::stat(pid).map(|s| s.start_time).unwrap_or(0);
        let mut sup = Self {
            kind,
            ctx,
            dir,
            main: (pid, start),
            exes,
            ham: None,
            ham_config: ham.as_ref().map(|(config, _, _)| config.clone()),
            stopped: false,
        };
        if let Some((_, name, run_dir)) = ham {
            let seg_name = format!("/ham.{name}.state");
            let deadline = mono_ns() + 20_000_000_000;
            let seg = loop {
                sys::check_interrupted()?;
                let why = match Segment::open(&seg_name, Access::ReadOnly) {
                    Ok(s) if s.header().snapshot().ham_pid > 0 => break s,
                    Ok(_) => "no HAM named in it".to_owned(),
                    // e.g. a layout version other than the bench's: ham and the bench were
                    // built from different sources (build both: -p ham-bench -p ham-guardian).
                    Err(e) => e.to_string(),
                };
                if !sys::alive(pid, None) {
                    return Err(format!(
                        "ham exited at start; see {}",
                        sup.dir.join("out.log").display()
                    ));
                }
                if mono_ns() > deadline {
                    return Err(format!("segment {seg_name} not usable after 20 s: {why}"));
                }
                std::thread::sleep(Duration::from_millis(2));
            };
            sup.ham = Some(HamInst { name, run_dir, seg });
        }
        Ok(sup)
    }

    /// The supervisor's own processes (never the services).
    pub fn sup_pids(&self) -> Vec<i32> {
        let main = self.main.0;
        match self.kind {
            Kind::Ham => {
                let Some(h) = &self.ham else {
                    return vec![main];
                };
                let s = h.seg.header().snapshot();
                [s.ham_pid, s.guardian_pid]
                    .into_iter()
                    .filter(|&p| p > 0 && sys::alive(p, None))
                    .collect()
            }
            Kind::Bare | Kind::Supervisord => vec![main],
            Kind::S6 => std::iter::once(main)
                .chain(sys::children_named(main, "s6-supervise"))
                .collect(),
            Kind::Runit => std::iter::once(main)
                .chain(sys::children_named(main, "runsv"))
                .collect(),
        }
    }

    /// Sends `sig` to `pid` if it is the process we spawned or runs one of our executables.
    fn signal_ours(&self, pid: i32, sig: i32) -> bool {
        let ours = if pid == self.main.0 {
            sys::alive(pid, Some(self.main.1))
        } else {
            sys::exe(pid).is_some_and(|e| self.exes.contains(&e))
        };
        ours && sys::kill(pid, sig)
    }

    /// Stops the supervisor and everything it ran; idempotent. `Err` lists what went wrong
    /// (everything is cleaned up anyway).
    pub fn stop(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let mut problems = Vec::new();
        let mut pids = self.sup_pids();
        if !pids.contains(&self.main.0) && sys::alive(self.main.0, Some(self.main.1)) {
            pids.push(self.main.0);
        }
        if self.kind == Kind::Ham && self.ham.is_none() {
            // No segment to name the Guardian: it is the HAM's child (killing the HAM alone
            // would only promote it).
            pids.extend(sys::children_named(self.main.0, "ham"));
        }
        match self.kind {
            Kind::Ham => {
                let config = self.ham_config.clone();
                if let Some(config) = config {
                    if let Err(e) = self.hamctl_shutdown(&config) {
                        problems.push(e);
                    }
                }
            }
            Kind::Bare | Kind::Supervisord => {
                self.signal_ours(self.main.0, libc::SIGTERM);
            }
            Kind::S6 => {
                // SIGTERM to s6-svscan and to each s6-supervise: bring the service down, exit.
                for &p in &pids {
                    self.signal_ours(p, libc::SIGTERM);
                }
            }
            Kind::Runit => {
                // runsvdir: SIGHUP = SIGTERM every runsv, then exit.
                self.signal_ours(self.main.0, libc::SIGHUP);
            }
        }
        let deadline = mono_ns() + 15_000_000_000;
        while pids.iter().any(|&p| sys::alive(p, None)) && mono_ns() < deadline {
            sys::reap();
            std::thread::sleep(Duration::from_millis(5));
        }
        for &p in &pids {
            if sys::alive(p, None) && self.signal_ours(p, libc::SIGKILL) {
                problems.push(format!(
                    "{}: pid {p} still there 15 s after the stop; SIGKILLed",
                    self.kind.name()
                ));
            }
        }
        sys::reap();
        let left = self.ctx.kill_our_services();
        if left > 0 {
            problems.push(format!(
                "{}: {left} service process(es) left after the stop; SIGKILLed",
                self.kind.name()
            ));
        }
        if let Some(h) = &self.ham {
            let seg_name = format!("/ham.{}.state", h.name);
            if Path::new(&format!("/dev/shm{seg_name}")).exists() {
                problems.push(format!(
                    "ham: segment {seg_name} left after shutdown; removed"
                ));
                let _ = Segment::unlink(&seg_name);
            }
            let client_name = ham_core::paths::client_segment(&h.name);
            if Path::new(&format!("/dev/shm{client_name}")).exists() {
                problems.push(format!(
                    "ham: client segment {client_name} left after shutdown; removed"
                ));
                ClientSegment::unlink(&client_name);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Stops service `id` and leaves it down, with the supervisor's own command (an
    /// operator's `stop`): `Ok(false)` when this supervisor has none the bench can use.
    /// Runs `hamctl ARGS` against this ham to completion, its output discarded; `Err` if it
    /// fails.
    pub fn hamctl_quiet(&self, args: &[&str]) -> Result<()> {
        let config = self.ham_config.as_ref().ok_or("not a ham")?;
        let st = Command::new(&self.ctx.hamctl)
            .arg("-c")
            .arg(config)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("hamctl: {e}"))?;
        if st.success() {
            Ok(())
        } else {
            Err(format!("hamctl {}: {st}", args.join(" ")))
        }
    }

    /// Whether ham's entities `names` are all in `state` (as `hamctl status` names states).
    pub fn ham_states_settled(&self, names: &[&str], state: &str) -> bool {
        let Some(h) = &self.ham else { return false };
        let recs: Vec<_> = h
            .seg
            .records()
            .into_iter()
            .filter_map(|(_, r)| r.ok())
            .collect();
        names.iter().all(|n| {
            recs.iter()
                .any(|r| r.name == *n && r.state.as_str() == state)
        })
    }

    pub fn stop_service(&self, id: &str) -> Result<bool> {
        let mut c = match self.kind {
            Kind::Ham => {
                let Some(config) = &self.ham_config else {
                    return Ok(false);
                };
                let mut c = Command::new(&self.ctx.hamctl);
                c.arg("-c")
                    .arg(config)
                    .args(["--timeout", "15s", "stop", id]);
                c
            }
            Kind::S6 => {
                let mut c = Command::new("s6-svc");
                c.args(["-wD", "-d"]).arg(self.dir.join("scan").join(id));
                c
            }
            Kind::Runit => {
                let mut c = Command::new("sv");
                c.args(["-w", "15", "down"])
                    .arg(self.dir.join("sv").join(id));
                c
            }
            // The bare loop has no control; supervisord's needs an RPC socket the bench does
            // not configure.
            Kind::Bare | Kind::Supervisord => return Ok(false),
        };
        let out = c
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("stopping {id}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "stopping {id}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(true)
    }

    fn hamctl_shutdown(&self, config: &Path) -> Result<()> {
        let mut c = Command::new(&self.ctx.hamctl)
            .arg("-c")
            .arg(config)
            .arg("shutdown")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("hamctl: {e}"))?;
        let deadline = mono_ns() + 30_000_000_000;
        loop {
            match c.try_wait() {
                Ok(Some(st)) if st.success() => return Ok(()),
                Ok(Some(st)) => {
                    let mut err = String::new();
                    if let Some(mut e) = c.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut err);
                    }
                    return Err(format!("hamctl shutdown: {st}: {}", err.trim()));
                }
                Ok(None) if mono_ns() > deadline => {
                    let _ = c.kill();
                    let _ = c.wait();
                    return Err("hamctl shutdown did not return within 30 s".into());
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(format!("hamctl: {e}")),
            }
        }
    }

    /// Lines of ham's log that look like trouble (deduplicated, with counts).
    pub fn log_findings(&self) -> Vec<String> {
        if self.kind != Kind::Ham {
            return Vec::new();
        }
        let Ok(text) = fs::read_to_string(self.dir.join("out.log")) else {
            return Vec::new();
        };
        let mut seen: Vec<(String, usize, String)> = Vec::new();
        for line in text.lines() {
            let l = line.to_ascii_lowercase();
            let bad = [
                "cannot", "error", "panick", "fenced", "fail", "invalid", "corrupt",
            ]
            .iter()
            .any(|w| l.contains(w))
                && !l.contains("ham_failures");
            if !bad {
                continue;
            }
            let key: String = line.chars().filter(|c| !c.is_ascii_digit()).collect();
            match seen.iter_mut().find(|(k, _, _)| *k == key) {
                Some(e) => e.1 += 1,
                None => seen.push((key, 1, line.to_owned())),
            }
        }
        seen.into_iter()
            .map(|(_, n, example)| format!("{n}× {example}"))
            .collect()
    }
}

impl Drop for Sup<'_> {
    fn drop(&mut self) {
        if !self.stopped {
            for f in self.log_findings() {
                eprintln!("warning: ham log ({}): {f}", self.dir.display());
            }
        }
        if let Err(e) = self.stop() {
            eprintln!("warning: {e}");
        }
    }
}
