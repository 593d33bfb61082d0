//! The configuration file (TOML) in two layers: the raw file as written (with spans), then
//! the resolved, validated [`Config`] the daemon runs. Every error names the file, line,
//! column and key.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use ham_core::duration;
use ham_core::layout::NAME_MAX;
use ham_core::policy::RestartMode;
use serde::Deserialize;
use toml::Spanned;

/// Default control socket and pid-file directory.
pub const DEFAULT_RUN_DIR: &str = "/run/ham";
/// Default process-log directory.
pub const DEFAULT_LOG_DIR: &str = "/var/log/ham";
/// Default syslog socket.
pub const DEFAULT_SYSLOG: &str = "/dev/log";
/// Default config file, when neither `-c` nor `HAM_CONFIG` names one.
pub const DEFAULT_CONFIG: &str = "/etc/ham/ham.toml";
/// Longest instance name (it becomes part of a shm object name and a socket path).
pub const INSTANCE_NAME_MAX: usize = 32;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    ham: Spanned<RawHam>,
    device: Option<RawDevice>,
    #[serde(default)]
    entity: Vec<Spanned<RawEntity>>,
    #[serde(default)]
    group: Vec<Spanned<RawGroup>>,
    /// Conditions kept apart from their entity's table (`entity = "name"`): how run-time
    /// definitions add conditions to configured entities.
    #[serde(default)]
    condition: Vec<Spanned<RawCondition>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: Spanned<String>,
    strategy: Option<Spanned<String>>,
    members: Spanned<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    restart_command: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    kind: Spanned<String>,
    exits: Option<Spanned<u32>>,
    within: Option<Spanned<String>>,
    hold_off: Option<Spanned<String>>,
    holdoffs: Option<Spanned<u32>>,
    holdoffs_within: Option<Spanned<String>>,
    max: Option<Spanned<u32>>,
    then: Option<Spanned<String>>,
    stages: Option<Spanned<Vec<RawStage>>>,
    secondary: Option<Spanned<Vec<RawStage>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    action: Spanned<String>,
    retries: Spanned<u32>,
    min_lifetime: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHam {
    name: Spanned<String>,
    run_dir: Option<Spanned<String>>,
    log_dir: Option<Spanned<String>>,
    max_entities: Option<Spanned<u32>>,
    liveness_timeout: Option<Spanned<String>>,
    syslog: Option<Spanned<String>>,
    client_group: Option<Spanned<String>>,
    heartbeat_grid: Option<Spanned<String>>,
    ring_slots: Option<Spanned<u32>>,
    ring_abandon_after: Option<Spanned<String>>,
    cgroup: Option<Spanned<String>>,
}

/// Only the `[ham]` table; everything else is ignored. What `hamctl` needs to find an
/// instance, even when the rest of the file has been edited into something invalid.
#[derive(Debug, Deserialize)]
struct RawInstanceOnly {
    ham: RawHamLenient,
}

#[derive(Debug, Deserialize)]
struct RawHamLenient {
    name: Spanned<String>,
    run_dir: Option<Spanned<String>>,
    log_dir: Option<Spanned<String>>,
    cgroup: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntity {
    name: Spanned<String>,
    command: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    attach_only: bool,
    #[serde(default)]
    raise_from: Vec<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    stop_signal: Option<Spanned<SignalSpec>>,
    stop_timeout: Option<Spanned<String>>,
    restart: Option<Spanned<String>>,
    output: Option<Spanned<String>>,
    policy: Option<Spanned<RawPolicy>>,
    #[serde(default)]
    after: Vec<Spanned<String>>,
    ready_after: Option<Spanned<String>>,
    backoff: Option<Spanned<RawBackoff>>,
    #[serde(default)]
    condition: Vec<Spanned<RawCondition>>,
    #[serde(default)]
    notify: bool,
    notify_access: Option<Spanned<String>>,
    #[serde(default)]
    wait_ready: bool,
    watchdog: Option<Spanned<String>>,
    memory_max: Option<Spanned<u64>>,
    pids_max: Option<Spanned<u64>>,
    cpu_weight: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCondition {
    on: Spanned<String>,
    entity: Option<Spanned<String>>,
    name: Option<Spanned<String>>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    removed: bool,
    class: Option<Spanned<String>>,
    severity: Option<Spanned<u32>>,
    count: Option<Spanned<u32>>,
    within: Option<Spanned<String>>,
    than: Option<Spanned<String>>,
    from: Option<Spanned<u32>>,
    to: Option<Spanned<u32>>,
    rtype: Option<Spanned<u32>>,
    rearm: Option<bool>,
    #[serde(default)]
    independent: bool,
    #[serde(default)]
    nowait: bool,
    #[serde(default)]
    action: Vec<Spanned<RawAction>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    #[serde(rename = "do")]
    act: Spanned<String>,
    name: Option<Spanned<String>>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    removed: bool,
    command: Option<Spanned<Vec<String>>>,
    timeout: Option<Spanned<String>>,
    message: Option<Spanned<String>>,
    delay: Option<Spanned<String>>,
    entity: Option<Spanned<String>>,
    signal: Option<Spanned<SignalSpec>>,
    path: Option<Spanned<String>>,
    topic: Option<Spanned<String>>,
    pid: Option<Spanned<i32>>,
    value: Option<Spanned<i32>>,
    code: Option<Spanned<i32>>,
    #[serde(default)]
    break_on_fail: bool,
    #[serde(default)]
    run_now: bool,
    #[serde(default)]
    on_fail: Vec<Spanned<RawAction>>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackoff {
    kind: Spanned<String>,
    delay: Option<Spanned<String>>,
    initial: Option<Spanned<String>>,
    max: Option<Spanned<String>>,
    reset_after: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SignalSpec {
    Number(i64),
    Name(String),
}

/// A configuration error, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the error has no place in the file (e.g. it cannot be read).
    pub line: usize,
    pub column: usize,
    /// The key the error is about, when known (`entity[2].command`).
    pub key: Option<String>,
    pub message: String,
    /// The offending line of the file, for display.
    pub source_line: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "`{key}`: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(src) = &self.source_line {
            write!(
                f,
                "\n  {:>4} | {}\n       | {}^",
                self.line,
                src,
                " ".repeat(self.column.saturating_sub(1))
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Where an entity's stdout and stderr go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// ham's own stdout/stderr.
    Inherit,
    /// Appended to this file (created if missing).
    File(PathBuf),
}

/// Whose sd_notify messages an entity accepts (systemd's `NotifyAccess=`): `main` its main
/// process; `exec` also the commands ham runs for its conditions (ham's nearest to
/// systemd's `ExecStartPre=` / `ExecReload=` … control processes); `all` every process of
/// the entity (its cgroup, or without cgroup tracking the main process's descendants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NotifyAccess {
    #[default]
    Main,
    Exec,
    All,
}

/// One supervised process, resolved.
#[derive(Debug, Clone)]
pub struct EntityConfig {
    pub name: String,
    /// argv as written; `argv[0]` is what the program sees.
    pub argv: Vec<String>,
    /// The absolute path that is executed.
    pub exec_path: PathBuf,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub stop_signal: i32,
    pub stop_timeout_ns: u64,
    pub restart: RestartMode,
    pub output: Output,
    pub policy: Recovery,
    /// Indices of the entities that must be ready before this one starts (and that are
    /// stopped only after it).
    pub after: Vec<usize>,
    /// Running this long makes it ready (0: as soon as it runs).
    pub ready_after_ns: u64,
    /// The group it belongs to (index into `Config::groups`).
    pub group: Option<usize>,
    /// Delay before automatic restarts, if any.
    pub backoff: Option<ham_core::engine::Backoff>,
    /// Conditions and their actions (resolved once every entity name is known).
    pub conditions: Vec<crate::actions::Condition>,
    /// It speaks sd_notify: it gets `NOTIFY_SOCKET`, and is ready once it sends `READY=1`.
    pub notify: bool,
    /// Whose sd_notify messages count (systemd's `NotifyAccess=`).
    pub notify_access: NotifyAccess,
    /// Ready only once the process says so (SDK `ready()`, or `READY=1`).
    pub wait_ready: bool,
    /// sd_notify watchdog: `WATCHDOG=1` expected at least this often (`WATCHDOG_USEC`).
    pub watchdog_ns: Option<u64>,
    /// ham never starts it: a process attaches itself under its name (QNX's self-attached
    /// entity). `argv` is empty.
    pub attach_only: bool,
    /// Resource limits for its cgroup (`memory_max`, `pids_max`, `cpu_weight`).
    pub limits: CgroupLimits,
    /// Other entities whose processes may raise events on this one (indices).
    pub raise_from: Vec<usize>,
}

/// How an entity that is to be restarted is restarted (the recovery engine's).
pub use ham_core::engine::Recovery;

/// A whole instance, resolved and valid.
#[derive(Debug, Clone)]
pub struct Config {
    /// Absolute path of the file it came from.
    pub path: PathBuf,
    pub instance: Instance,
    /// Where each automatic restart is reported at LOG_ERR (None: not at all).
    pub syslog: Option<PathBuf>,
    pub max_entities: u32,
    /// How long the HAM may go without turning its loop before the Guardian fences it.
    pub liveness_timeout_ns: u64,
    /// `[device] restart_command`: what a device restart runs (argv, `argv[0]` resolved).
    pub device_restart: Option<(PathBuf, Vec<String>)>,
    /// Group that may use the client segment and the control socket as a client.
    pub client_gid: Option<u32>,
    /// Heartbeat deadlines are rounded up to multiples of this (0: exact).
    pub heartbeat_grid_ns: u64,
    /// Slots in the detector ring (a power of two).
    pub ring_slots: u32,
    /// How long a claimed ring slot may stay unpublished before it is abandoned.
    pub ring_abandon_after_ns: u64,
    pub entities: Vec<EntityConfig>,
    pub groups: Vec<Group>,
}

/// `[ham] cgroup`: how entities' processes are tracked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupMode {
    /// A cgroup v2 per entity under ham's own cgroup, if there is a writable v2
    /// hierarchy (found through /proc/self/mountinfo); process groups otherwise.
    Auto,
    /// Process groups only.
    Off,
    /// A cgroup v2 per entity under this directory (which must be in a v2 hierarchy).
    Under(PathBuf),
}

/// Limits written into an entity's cgroup where the controllers exist.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupLimits {
    /// `memory.max`, bytes.
    pub memory_max: Option<u64>,
    /// `pids.max`.
    pub pids_max: Option<u64>,
    /// `cpu.weight` (1–10000).
    pub cpu_weight: Option<u64>,
}

/// Erlang/OTP's restart strategies for a group of entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Only the entity that died is restarted.
    OneForOne,
    /// One dies → every member is restarted.
    OneForAll,
    /// One dies → it and the members listed after it are restarted.
    RestForOne,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub strategy: Strategy,
    /// Entity indices, in the order given.
    pub members: Vec<usize>,
}

/// What names an instance: enough for `hamctl` to find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub name: String,
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
    /// `[ham] cgroup`: how entities' processes are tracked.
    pub cgroup: CgroupMode,
}

impl Instance {
    /// The POSIX shm name of the state segment.
    pub fn segment_name(&self) -> String {
        format!("/ham.{}.state", self.name)
    }
    /// The control socket.
    pub fn socket_path(&self) -> PathBuf {
        self.run_dir.join(format!("{}.sock", self.name))
    }
    /// The pid file.
    pub fn pid_path(&self) -> PathBuf {
        self.run_dir.join(format!("{}.pid", self.name))
    }
    /// The sd_notify socket (`NOTIFY_SOCKET` of entities with `notify = true`).
    pub fn notify_path(&self) -> PathBuf {
        self.run_dir.join(format!("{}.notify", self.name))
    }
    /// The process log.
    pub fn process_log_path(&self) -> PathBuf {
        self.log_dir.join(format!("{}.log", self.name))
    }
}

pub const DEFAULT_STOP_TIMEOUT: &str = "10s";
pub const DEFAULT_LIVENESS_TIMEOUT: &str = "2s";
const MIN_LIVENESS_TIMEOUT_NS: u64 = 20_000_000;
pub const DEFAULT_MAX_ENTITIES: u32 = 1024;
/// Conditions per entity (each has a bit in the record: pruned or not).
pub const MAX_CONDITIONS: usize = 64;
/// Detector ring slots (128 bytes each) unless `[ham] ring_slots` says otherwise.
pub const DEFAULT_RING_SLOTS: u32 = 1024;
/// A ring slot claimed by a live producer and not published this long is abandoned.
pub const DEFAULT_RING_ABANDON_AFTER_NS: u64 = 100_000_000;

/// A group name (or number) to its gid.
fn resolve_group(name: &str) -> Result<u32, String> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(format!("no such group `{name}`")),
        Err(err) => Err(format!("cannot look up group: {err}")),
    }
}
const MAX_ENTITIES_LIMIT: u32 = 65_536;

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    dir: PathBuf,
    /// Check that executables, folders, users and groups exist now. Off when a Guardian
    /// re-reads the text its HAM already validated: a program deleted since then must make
    /// that entity fail to start, not the takeover.
    strict: bool,
    /// Where run-time definitions begin in `text`: the programs they name are not looked
    /// for now (QNX checks at spawn time: a program may be installed later), only when
    /// they run.
    runtime_from: usize,
}

impl Ctx<'_> {
    /// The program of a command at `at` (its span's start): where it is, or why not (an
    /// error only where programs must exist now). Unchecked, a bare name is kept as it is
    /// and looked up in `PATH` when it runs.
    fn program(&self, program: &str, at: usize, search_path: &str) -> Result<PathBuf, String> {
        match resolve_program(self, program, search_path) {
            Ok(p) => Ok(p),
            Err(_) if !self.strict || at >= self.runtime_from => Ok(if program.contains('/') {
                self.path(program)
            } else {
                PathBuf::from(program)
            }),
            Err(why) => Err(why),
        }
    }

    fn err(
        &self,
        span: Option<Range<usize>>,
        key: Option<String>,
        msg: impl Into<String>,
    ) -> ConfigError {
        let (line, column, source_line) = match span {
            Some(r) => {
                let (l, c) = line_col(self.text, r.start);
                let src = self.text.lines().nth(l - 1).map(str::to_owned);
                (l, c, src)
            }
            None => (0, 0, None),
        };
        ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            key,
            message: msg.into(),
            source_line,
        }
    }

    /// Resolves a path written in the file: relative paths are relative to the file's folder.
    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.dir.join(p)
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The key on the line of `offset`, for errors the TOML parser reports without one.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let start = text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    (!key.is_empty() && !key.starts_with('#')).then(|| key.to_owned())
}

fn read(path: &Path) -> Result<(PathBuf, String), ConfigError> {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let text = std::fs::read_to_string(&abs).map_err(|e| ConfigError {
        file: abs.clone(),
        line: 0,
        column: 0,
        key: None,
        message: format!("cannot read: {e}"),
        source_line: None,
    })?;
    Ok((abs, text))
}

fn de_error(ctx: &Ctx, e: toml::de::Error) -> ConfigError {
    let span = e.span();
    let key = span.clone().and_then(|s| key_at(ctx.text, s.start));
    ctx.err(span, key, e.message().trim().to_owned())
}

fn instance_name(ctx: &Ctx, name: &Spanned<String>) -> Result<String, ConfigError> {
    let n = name.get_ref();
    let ok = !n.is_empty()
        && n.len() <= INSTANCE_NAME_MAX
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c));
    if !ok {
        return Err(ctx.err(
            Some(name.span()),
            Some("ham.name".into()),
            format!(
                "instance name `{n}` must be 1 to {INSTANCE_NAME_MAX} characters of A-Z a-z 0-9 - _"
            ),
        ));
    }
    Ok(n.clone())
}

/// Reads only what identifies the instance (`[ham] name`, `run_dir`).
pub fn load_instance(path: &Path) -> Result<Instance, ConfigError> {
    let (abs, text) = read(path)?;
    let ctx = Ctx {
        file: &abs,
        text: &text,
        dir: abs.parent().unwrap_or(Path::new("/")).to_owned(),
        strict: true,
        runtime_from: usize::MAX,
    };
    let raw: RawInstanceOnly = toml::from_str(&text).map_err(|e| de_error(&ctx, e))?;
    Ok(Instance {
        name: instance_name(&ctx, &raw.ham.name)?,
        run_dir: raw
            .ham
            .run_dir
            .map_or_else(|| PathBuf::from(DEFAULT_RUN_DIR), |d| ctx.path(d.get_ref())),
        log_dir: raw
            .ham
            .log_dir
            .map_or_else(|| PathBuf::from(DEFAULT_LOG_DIR), |d| ctx.path(d.get_ref())),
        cgroup: cgroup_mode(&ctx, raw.ham.cgroup.as_ref())?,
    })
}

/// `[ham] cgroup`.
fn cgroup_mode(ctx: &Ctx, c: Option<&Spanned<String>>) -> Result<CgroupMode, ConfigError> {
    Ok(match c {
        None => CgroupMode::Auto,
        Some(c) => match c.get_ref().as_str() {
            "auto" => CgroupMode::Auto,
            "off" => CgroupMode::Off,
            p if p.starts_with('/') => CgroupMode::Under(PathBuf::from(p)),
            _ => {
                return Err(ctx.err(
                    Some(c.span()),
                    Some("ham.cgroup".into()),
                    "must be \"auto\", \"off\" or an absolute path in a cgroup v2 hierarchy",
                ));
            }
        },
    })
}

/// Reads and validates a whole configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let (abs, text) = read(path)?;
    parse(&abs, &text)
}

/// Validates configuration text as if it were the file `file`.
pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
    parse_with(file, text, true, usize::MAX)
}

/// Re-reads text that a HAM already validated (see `Ctx::strict`).
pub fn parse_validated(file: &Path, text: &str) -> Result<Config, ConfigError> {
    parse_with(file, text, false, usize::MAX)
}

/// Validates a configuration file's text followed, from byte `runtime_from`, by run-time
/// definitions (whose programs need not exist yet).
pub fn parse_with_runtime(
    file: &Path,
    text: &str,
    runtime_from: usize,
) -> Result<Config, ConfigError> {
    parse_with(file, text, true, runtime_from)
}

fn parse_with(
    file: &Path,
    text: &str,
    strict: bool,
    runtime_from: usize,
) -> Result<Config, ConfigError> {
    let ctx = Ctx {
        file,
        text,
        dir: file.parent().unwrap_or(Path::new("/")).to_owned(),
        strict,
        runtime_from,
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| de_error(&ctx, e))?;
    let ham = raw.ham.get_ref();
    let instance = Instance {
        name: instance_name(&ctx, &ham.name)?,
        run_dir: ham
            .run_dir
            .as_ref()
            .map_or_else(|| PathBuf::from(DEFAULT_RUN_DIR), |d| ctx.path(d.get_ref())),
        log_dir: ham
            .log_dir
            .as_ref()
            .map_or_else(|| PathBuf::from(DEFAULT_LOG_DIR), |d| ctx.path(d.get_ref())),
        cgroup: cgroup_mode(&ctx, ham.cgroup.as_ref())?,
    };
    // Syslog: `/dev/log` unless configured; "" turns it off.
    let syslog = match &ham.syslog {
        None => Some(PathBuf::from(DEFAULT_SYSLOG)),
        Some(p) if p.get_ref().is_empty() => None,
        Some(p) => Some(ctx.path(p.get_ref())),
    };
    let max_entities = match &ham.max_entities {
        None => DEFAULT_MAX_ENTITIES,
        Some(m) if (1..=MAX_ENTITIES_LIMIT).contains(m.get_ref()) => *m.get_ref(),
        Some(m) => {
            return Err(ctx.err(
                Some(m.span()),
                Some("ham.max_entities".into()),
                format!("must be between 1 and {MAX_ENTITIES_LIMIT}"),
            ));
        }
    };
    let liveness_timeout_ns = match &ham.liveness_timeout {
        None => duration::parse_ns(DEFAULT_LIVENESS_TIMEOUT).expect("default parses"),
        Some(t) => {
            let ns = duration::parse_ns(t.get_ref())
                .map_err(|why| ctx.err(Some(t.span()), Some("ham.liveness_timeout".into()), why))?;
            if ns < MIN_LIVENESS_TIMEOUT_NS {
                return Err(ctx.err(
                    Some(t.span()),
                    Some("ham.liveness_timeout".into()),
                    "must be at least 20ms",
                ));
            }
            ns
        }
    };
    let client_gid = match &ham.client_group {
        None => None,
        Some(g) => Some(
            resolve_group(g.get_ref())
                .map_err(|why| ctx.err(Some(g.span()), Some("ham.client_group".into()), why))?,
        ),
    };
    let heartbeat_grid_ns = match &ham.heartbeat_grid {
        None => 0,
        Some(t) => duration::parse_ns(t.get_ref())
            .map_err(|why| ctx.err(Some(t.span()), Some("ham.heartbeat_grid".into()), why))?,
    };
    let ring_slots = match &ham.ring_slots {
        None => DEFAULT_RING_SLOTS,
        Some(n) if (2..=1 << 20).contains(n.get_ref()) && n.get_ref().is_power_of_two() => {
            *n.get_ref()
        }
        Some(n) => {
            return Err(ctx.err(
                Some(n.span()),
                Some("ham.ring_slots".into()),
                "must be a power of two between 2 and 1048576",
            ));
        }
    };
    let ring_abandon_after_ns = match &ham.ring_abandon_after {
        None => DEFAULT_RING_ABANDON_AFTER_NS,
        Some(t) => duration::parse_ns(t.get_ref())
            .map_err(|why| ctx.err(Some(t.span()), Some("ham.ring_abandon_after".into()), why))?,
    };
    if raw.entity.len() > max_entities as usize {
        return Err(ctx.err(
            Some(raw.entity[max_entities as usize].span()),
            Some("entity".into()),
            format!(
                "{} entities configured but ham.max_entities is {max_entities}",
                raw.entity.len()
            ),
        ));
    }

    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut entities = Vec::with_capacity(raw.entity.len());
    for (i, e) in raw.entity.iter().enumerate() {
        let ent = entity(&ctx, i, e.get_ref())?;
        if let Some(first) = seen.insert(ent.name.clone(), i) {
            let (line, _) = line_col(text, raw.entity[first].get_ref().name.span().start);
            return Err(ctx.err(
                Some(e.get_ref().name.span()),
                Some(format!("entity[{i}].name")),
                format!(
                    "duplicate entity name `{}` (first defined on line {line})",
                    ent.name
                ),
            ));
        }
        entities.push(ent);
    }
    resolve_after(&ctx, &raw.entity, &mut entities)?;
    let groups = groups(&ctx, &raw.group, &mut entities)?;
    for (i, e) in raw.entity.iter().enumerate() {
        if let Some(c) = e.get_ref().condition.get(MAX_CONDITIONS) {
            return Err(ctx.err(
                Some(c.span()),
                Some(format!("entity[{i}].condition")),
                format!("at most {MAX_CONDITIONS} conditions per entity"),
            ));
        }
        let names: Vec<String> = entities.iter().map(|e| e.name.clone()).collect();
        entities[i].raise_from = e
            .get_ref()
            .raise_from
            .iter()
            .map(|r| {
                names.iter().position(|n| n == r.get_ref()).ok_or_else(|| {
                    ctx.err(
                        Some(r.span()),
                        Some(format!("entity[{i}].raise_from")),
                        format!("no entity named `{}`", r.get_ref()),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        entities[i].conditions = e
            .get_ref()
            .condition
            .iter()
            .enumerate()
            .map(|(n, c)| {
                if let Some(t) = &c.get_ref().entity {
                    return Err(ctx.err(
                        Some(t.span()),
                        Some(format!("entity[{i}].condition[{n}].entity")),
                        "a condition inside an entity's table belongs to that entity",
                    ));
                }
                condition(&ctx, &format!("entity[{i}].condition[{n}]"), c, &names)
            })
            .collect::<Result<_, _>>()?;
    }
    // Top-level conditions go after the entity's own, in the order written.
    let names: Vec<String> = entities.iter().map(|e| e.name.clone()).collect();
    for (n, c) in raw.condition.iter().enumerate() {
        let key = format!("condition[{n}]");
        let Some(target) = &c.get_ref().entity else {
            return Err(ctx.err(
                Some(c.span()),
                Some(format!("{key}.entity")),
                "a top-level condition names its `entity`",
            ));
        };
        let Some(i) = names.iter().position(|x| x == target.get_ref()) else {
            return Err(ctx.err(
                Some(target.span()),
                Some(format!("{key}.entity")),
                format!("no entity named `{}`", target.get_ref()),
            ));
        };
        let cond = condition(&ctx, &key, c, &names)?;
        entities[i].conditions.push(cond);
        if entities[i].conditions.len() > MAX_CONDITIONS {
            return Err(ctx.err(
                Some(c.span()),
                Some(key),
                format!("at most {MAX_CONDITIONS} conditions per entity"),
            ));
        }
    }

    let device_restart = match raw.device.as_ref().and_then(|d| d.restart_command.as_ref()) {
        None => None,
        Some(cmd) => {
            let key = Some("device.restart_command".to_owned());
            let Some(program) = cmd.get_ref().first() else {
                return Err(ctx.err(Some(cmd.span()), key, "command is empty"));
            };
            let search = std::env::var("PATH").unwrap_or_default();
            let path = match ctx.program(program, cmd.span().start, &search) {
                Ok(p) => p,
                Err(why) => return Err(ctx.err(Some(cmd.span()), key, why)),
            };
            Some((path, cmd.get_ref().clone()))
        }
    };

    Ok(Config {
        path: file.to_owned(),
        instance,
        syslog,
        max_entities,
        liveness_timeout_ns,
        device_restart,
        client_gid,
        heartbeat_grid_ns,
        ring_slots,
        ring_abandon_after_ns,
        entities,
        groups,
    })
}

/// The name prefix of a free entry: the place a removed run-time entity leaves in the
/// run-time definitions (`~` is not allowed in entity names).
pub const FREE_ENTRY: &str = "~free.";

/// Whether `name` is a free entry's.
pub fn is_free_entry(name: &str) -> bool {
    name.strip_prefix(FREE_ENTRY)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn entity(ctx: &Ctx, i: usize, e: &RawEntity) -> Result<EntityConfig, ConfigError> {
    let key = |k: &str| Some(format!("entity[{i}].{k}"));
    let name = e.name.get_ref();
    // A free entry, only among run-time definitions.
    let free = is_free_entry(name)
        && e.attach_only
        && (!ctx.strict || e.name.span().start >= ctx.runtime_from);
    let name_ok = free
        || !name.is_empty()
            && name.len() <= NAME_MAX
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@:".contains(c));
    if !name_ok {
        return Err(ctx.err(
            Some(e.name.span()),
            key("name"),
            format!(
                "entity name `{name}` must be 1 to {NAME_MAX} characters of A-Z a-z 0-9 - _ . @ :"
            ),
        ));
    }

    let command = match (&e.command, e.attach_only) {
        (Some(c), false) => c,
        (None, true) => &Spanned::new(0..0, Vec::new()),
        (Some(c), true) => {
            return Err(ctx.err(
                Some(c.span()),
                key("command"),
                "an `attach_only` entity has no `command`: a process attaches itself",
            ));
        }
        (None, false) => {
            return Err(ctx.err(
                Some(e.name.span()),
                key("command"),
                "missing `command` (or `attach_only = true` for a process that attaches itself)",
            ));
        }
    };
    let argv = command.get_ref().clone();
    let program = match argv.first() {
        Some(p) => p.clone(),
        None if e.attach_only => String::new(),
        None => {
            return Err(ctx.err(Some(command.span()), key("command"), "command is empty"));
        }
    };
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(ctx.err(
            Some(command.span()),
            key("command"),
            "command contains a NUL byte",
        ));
    }

    for (k, v) in &e.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(ctx.err(
                Some(e.name.span()),
                key("env"),
                format!("environment variable `{k}` has an invalid name or value"),
            ));
        }
    }
    let search_path = e
        .env
        .get("PATH")
        .cloned()
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let exec_path = match ctx.program(&program, command.span().start, &search_path) {
        _ if e.attach_only => PathBuf::new(),
        Ok(p) => p,
        Err(why) => return Err(ctx.err(Some(command.span()), key("command"), why)),
    };

    let cwd = match &e.cwd {
        None => None,
        Some(c) => {
            let p = ctx.path(c.get_ref());
            if ctx.strict && !p.is_dir() {
                return Err(ctx.err(
                    Some(c.span()),
                    key("cwd"),
                    format!("{} is not a directory", p.display()),
                ));
            }
            Some(p)
        }
    };

    let (mut uid, mut gid) = (None, None);
    if let Some(u) = &e.user {
        match nix::unistd::User::from_name(u.get_ref()) {
            Ok(Some(user)) => {
                uid = Some(user.uid.as_raw());
                gid = Some(user.gid.as_raw());
            }
            Ok(None) => {
                return Err(ctx.err(
                    Some(u.span()),
                    key("user"),
                    format!("no such user `{}`", u.get_ref()),
                ));
            }
            Err(err) => {
                return Err(ctx.err(
                    Some(u.span()),
                    key("user"),
                    format!("cannot look up user: {err}"),
                ));
            }
        }
    }
    if let Some(g) = &e.group {
        gid = Some(
            resolve_group(g.get_ref()).map_err(|why| ctx.err(Some(g.span()), key("group"), why))?,
        );
    }

    let stop_signal = match &e.stop_signal {
        None => libc::SIGTERM,
        Some(s) => parse_signal(s.get_ref())
            .map_err(|why| ctx.err(Some(s.span()), key("stop_signal"), why))?,
    };
    let stop_timeout_ns = match &e.stop_timeout {
        None => duration::parse_ns(DEFAULT_STOP_TIMEOUT).expect("default parses"),
        Some(t) => duration::parse_ns(t.get_ref())
            .map_err(|why| ctx.err(Some(t.span()), key("stop_timeout"), why))?,
    };
    let restart = match &e.restart {
        None => RestartMode::default(),
        Some(r) => RestartMode::parse(r.get_ref()).ok_or_else(|| {
            ctx.err(
                Some(r.span()),
                key("restart"),
                format!(
                    "unknown restart mode `{}` (use \"always\", \"on-failure\" or \"never\")",
                    r.get_ref()
                ),
            )
        })?,
    };
    let output = match &e.output {
        None => Output::Inherit,
        Some(o) if o.get_ref() == "inherit" => Output::Inherit,
        Some(o) if o.get_ref().is_empty() => {
            return Err(ctx.err(Some(o.span()), key("output"), "output path is empty"));
        }
        Some(o) => {
            let p = ctx.path(o.get_ref());
            match p.parent() {
                Some(dir) if dir.is_dir() || !ctx.strict => Output::File(p),
                _ => {
                    return Err(ctx.err(
                        Some(o.span()),
                        key("output"),
                        format!("the folder of {} does not exist", p.display()),
                    ));
                }
            }
        }
    };

    let policy = match &e.policy {
        None => Recovery::Engine(ham_core::engine::Policy::switch_preset()),
        Some(p) => policy(ctx, i, p)?,
    };

    let ready_after_ns = match &e.ready_after {
        None => 0,
        Some(t) => duration::parse_ns(t.get_ref())
            .map_err(|why| ctx.err(Some(t.span()), key("ready_after"), why))?,
    };

    let backoff = match &e.backoff {
        None => None,
        Some(b) => Some(backoff(ctx, i, b)?),
    };

    let notify_access = match &e.notify_access {
        None => NotifyAccess::Main,
        Some(a) if !e.notify => {
            return Err(ctx.err(
                Some(a.span()),
                key("notify_access"),
                "`notify_access` needs `notify = true`",
            ));
        }
        Some(a) => match a.get_ref().as_str() {
            "main" => NotifyAccess::Main,
            "exec" => NotifyAccess::Exec,
            "all" => NotifyAccess::All,
            other => {
                return Err(ctx.err(
                    Some(a.span()),
                    key("notify_access"),
                    format!("unknown notify_access `{other}` (use \"main\", \"exec\" or \"all\")"),
                ));
            }
        },
    };

    let watchdog_ns = match &e.watchdog {
        None => None,
        Some(_) if !e.notify => {
            return Err(ctx.err(
                e.watchdog.as_ref().map(|w| w.span()),
                key("watchdog"),
                "`watchdog` needs `notify = true` (the process pets it with WATCHDOG=1)",
            ));
        }
        Some(w) => Some(
            duration::parse_ns(w.get_ref())
                .map_err(|why| ctx.err(Some(w.span()), key("watchdog"), why))?,
        ),
    };

    if let Some(w) = &e.cpu_weight {
        if !(1..=10_000).contains(w.get_ref()) {
            return Err(ctx.err(
                Some(w.span()),
                key("cpu_weight"),
                "must be between 1 and 10000 (cgroup v2 cpu.weight)",
            ));
        }
    }
    let limits = CgroupLimits {
        memory_max: e.memory_max.as_ref().map(|v| *v.get_ref()),
        pids_max: e.pids_max.as_ref().map(|v| *v.get_ref()),
        cpu_weight: e.cpu_weight.as_ref().map(|v| *v.get_ref()),
    };

    Ok(EntityConfig {
        limits,
        attach_only: e.attach_only,
        wait_ready: e.wait_ready || e.notify,
        raise_from: Vec::new(), // resolved once every name is known
        notify: e.notify,
        notify_access,
        watchdog_ns,
        conditions: Vec::new(), // resolved once every name is known
        backoff,
        after: Vec::new(), // resolved once every name is known
        group: None,       // likewise
        ready_after_ns,
        policy,
        name: name.clone(),
        argv,
        exec_path,
        env: e.env.clone(),
        cwd,
        uid,
        gid,
        stop_signal,
        stop_timeout_ns,
        restart,
        output,
    })
}

fn policy(ctx: &Ctx, i: usize, p: &Spanned<RawPolicy>) -> Result<Recovery, ConfigError> {
    use ham_core::engine::{Escalation, Policy, Stage, StageAction, Window};
    let r = p.get_ref();
    let key = |k: &str| Some(format!("entity[{i}].policy.{k}"));
    let dur = |v: &Option<Spanned<String>>, k: &str, default: u64| -> Result<u64, ConfigError> {
        match v {
            None => Ok(default),
            Some(t) => {
                duration::parse_ns(t.get_ref()).map_err(|why| ctx.err(Some(t.span()), key(k), why))
            }
        }
    };
    let positive = |v: &Option<Spanned<u32>>, k: &str, default: u32| -> Result<u32, ConfigError> {
        match v {
            None => Ok(default),
            Some(n) if *n.get_ref() > 0 => Ok(*n.get_ref()),
            Some(n) => Err(ctx.err(Some(n.span()), key(k), "must be at least 1")),
        }
    };
    let kind = r.kind.get_ref().as_str();
    // Keys that belong to another kind are mistakes, not options to ignore.
    let allowed: &[&str] = match kind {
        "immediate" => &[],
        "switch" => &["exits", "within", "hold_off", "holdoffs", "holdoffs_within"],
        "intensity" => &["max", "within", "then"],
        "stages" => &["stages", "secondary"],
        other => {
            return Err(ctx.err(
                Some(r.kind.span()),
                key("kind"),
                format!(
                    "unknown policy kind `{other}` (use \"switch\", \"stages\", \"intensity\" or \"immediate\")"
                ),
            ));
        }
    };
    let present: [(&str, Option<std::ops::Range<usize>>); 9] = [
        ("exits", r.exits.as_ref().map(|v| v.span())),
        ("within", r.within.as_ref().map(|v| v.span())),
        ("hold_off", r.hold_off.as_ref().map(|v| v.span())),
        ("holdoffs", r.holdoffs.as_ref().map(|v| v.span())),
        (
            "holdoffs_within",
            r.holdoffs_within.as_ref().map(|v| v.span()),
        ),
        ("max", r.max.as_ref().map(|v| v.span())),
        ("then", r.then.as_ref().map(|v| v.span())),
        ("stages", r.stages.as_ref().map(|v| v.span())),
        ("secondary", r.secondary.as_ref().map(|v| v.span())),
    ];
    for (k, span) in present {
        if let Some(span) = span {
            if !allowed.contains(&k) {
                return Err(ctx.err(
                    Some(span),
                    key(k),
                    format!("`{k}` does not apply to a policy of kind \"{kind}\""),
                ));
            }
        }
    }
    let preset = Policy::switch_preset();
    let Policy::Switch {
        exits: p_exits,
        hold_off: p_hold,
        holdoffs: p_holdoffs,
    } = preset
    else {
        unreachable!("the preset is a switch policy")
    };
    Ok(match kind {
        "immediate" => Recovery::Immediate,
        "switch" => Recovery::Engine(Policy::Switch {
            exits: Window {
                count: positive(&r.exits, "exits", p_exits.count)?,
                within: dur(&r.within, "within", p_exits.within)?,
            },
            hold_off: dur(&r.hold_off, "hold_off", p_hold)?,
            holdoffs: Window {
                count: positive(&r.holdoffs, "holdoffs", p_holdoffs.count)?,
                within: dur(&r.holdoffs_within, "holdoffs_within", p_holdoffs.within)?,
            },
        }),
        "intensity" => {
            Recovery::Engine(Policy::Intensity {
                max: r.max.as_ref().map_or(1, |m| *m.get_ref()),
                within: dur(&r.within, "within", 5_000_000_000)?,
                then: match r.then.as_ref().map(|t| (t.get_ref().as_str(), t.span())) {
                    None | Some(("give-up", _)) => Escalation::GiveUp,
                    Some(("device-restart", _)) => Escalation::DeviceRestart,
                    Some((other, span)) => {
                        return Err(ctx.err(
                        Some(span),
                        key("then"),
                        format!("unknown escalation `{other}` (use \"give-up\" or \"device-restart\")"),
                    ));
                    }
                },
            })
        }
        _ => {
            let stages = |v: &Option<Spanned<Vec<RawStage>>>,
                          k: &str|
             -> Result<Vec<Stage>, ConfigError> {
                let Some(list) = v else { return Ok(Vec::new()) };
                list.get_ref()
                    .iter()
                    .enumerate()
                    .map(|(n, st)| {
                        let sk = |f: &str| key(&format!("{k}[{n}].{f}"));
                        let action = match st.action.get_ref().as_str() {
                            "stateful-restart" => StageAction::StatefulRestart,
                            "stateless-restart" => StageAction::StatelessRestart,
                            "device-restart" => StageAction::DeviceRestart,
                            other => {
                                return Err(ctx.err(
                                    Some(st.action.span()),
                                    sk("action"),
                                    format!("unknown stage action `{other}` (use \"stateful-restart\", \"stateless-restart\" or \"device-restart\")"),
                                ));
                            }
                        };
                        let min_lifetime = match &st.min_lifetime {
                            None => 0,
                            Some(t) => duration::parse_ns(t.get_ref())
                                .map_err(|why| ctx.err(Some(t.span()), sk("min_lifetime"), why))?,
                        };
                        Ok(Stage {
                            action,
                            retries: *st.retries.get_ref(),
                            min_lifetime,
                        })
                    })
                    .collect()
            };
            let primary = stages(&r.stages, "stages")?;
            if primary.is_empty() {
                return Err(ctx.err(
                    Some(p.span()),
                    key("stages"),
                    "a policy of kind \"stages\" needs at least one stage",
                ));
            }
            Recovery::Engine(Policy::Stages {
                primary,
                secondary: stages(&r.secondary, "secondary")?,
            })
        }
    })
}

fn backoff(
    ctx: &Ctx,
    i: usize,
    b: &Spanned<RawBackoff>,
) -> Result<ham_core::engine::Backoff, ConfigError> {
    use ham_core::engine::Backoff;
    let r = b.get_ref();
    let key = |k: &str| Some(format!("entity[{i}].backoff.{k}"));
    let dur =
        |v: &Option<Spanned<String>>, k: &str, default: Option<u64>| -> Result<u64, ConfigError> {
            match (v, default) {
                (Some(t), _) => duration::parse_ns(t.get_ref())
                    .map_err(|why| ctx.err(Some(t.span()), key(k), why)),
                (None, Some(d)) => Ok(d),
                (None, None) => Err(ctx.err(Some(b.span()), key(k), format!("`{k}` is required"))),
            }
        };
    let misplaced = |v: &Option<Spanned<String>>, k: &str, kind: &str| -> Result<(), ConfigError> {
        match v {
            Some(t) => Err(ctx.err(
                Some(t.span()),
                key(k),
                format!("`{k}` does not apply to a back-off of kind \"{kind}\""),
            )),
            None => Ok(()),
        }
    };
    let reset_after = dur(&r.reset_after, "reset_after", Some(60_000_000_000))?;
    match r.kind.get_ref().as_str() {
        "fixed" => {
            misplaced(&r.initial, "initial", "fixed")?;
            misplaced(&r.max, "max", "fixed")?;
            Ok(Backoff::Fixed {
                delay: dur(&r.delay, "delay", None)?,
                reset_after,
            })
        }
        "exponential" => {
            misplaced(&r.delay, "delay", "exponential")?;
            Ok(Backoff::Exponential {
                initial: dur(&r.initial, "initial", Some(100_000_000))?,
                max: dur(&r.max, "max", Some(30_000_000_000))?,
                reset_after,
            })
        }
        other => Err(ctx.err(
            Some(r.kind.span()),
            key("kind"),
            format!("unknown back-off kind `{other}` (use \"fixed\" or \"exponential\")"),
        )),
    }
}

fn condition(
    ctx: &Ctx,
    key: &str,
    c: &Spanned<RawCondition>,
    names: &[String],
) -> Result<crate::actions::Condition, ConfigError> {
    use crate::actions::{Condition, Trigger};
    let r = c.get_ref();
    let mut trigger = Trigger::parse(r.on.get_ref()).ok_or_else(|| {
        ctx.err(
            Some(r.on.span()),
            Some(format!("{key}.on")),
            format!(
                "unknown condition `{}` (use \"death\", \"abnormal-death\", \"restart\", \"raise\", \"state\", \"attach\", \"detach\", \"heartbeat-missed-low\", \"heartbeat-missed-high\", \"any\", \"exits-within\", \"restarts-within\" or \"lifetime-shorter\")",
                r.on.get_ref()
            ),
        )
    })?;
    let need = |what: &str| {
        ctx.err(
            Some(r.on.span()),
            Some(format!("{key}.{what}")),
            format!("`on = \"{}\"` needs `{what}`", r.on.get_ref()),
        )
    };
    let window = |trigger: &str| -> Result<(u32, u64), ConfigError> {
        let count = r.count.as_ref().ok_or_else(|| need("count"))?;
        let max = ham_core::engine::STAMPS as u32;
        if !(1..=max).contains(count.get_ref()) {
            return Err(ctx.err(
                Some(count.span()),
                Some(format!("{key}.count")),
                format!("`{trigger}` counts 1 to {max} events"),
            ));
        }
        let within = r.within.as_ref().ok_or_else(|| need("within"))?;
        let ns = duration::parse_ns(within.get_ref())
            .map_err(|why| ctx.err(Some(within.span()), Some(format!("{key}.within")), why))?;
        Ok((*count.get_ref(), ns))
    };
    match &mut trigger {
        Trigger::ExitsWithin { count, within } | Trigger::RestartsWithin { count, within } => {
            (*count, *within) = window(r.on.get_ref())?;
        }
        Trigger::LifetimeShorter { than } => {
            let t = r.than.as_ref().ok_or_else(|| need("than"))?;
            *than = duration::parse_ns(t.get_ref())
                .map_err(|why| ctx.err(Some(t.span()), Some(format!("{key}.than")), why))?;
        }
        _ => {}
    }
    if let Trigger::State { from, to } = &mut trigger {
        *from = r.from.as_ref().map(|v| *v.get_ref());
        *to = r.to.as_ref().map(|v| *v.get_ref());
    } else if let Some(span) = r
        .from
        .as_ref()
        .map(|v| v.span())
        .or_else(|| r.to.as_ref().map(|v| v.span()))
    {
        return Err(ctx.err(
            Some(span),
            Some(key.to_owned()),
            "`from` and `to` apply to `on = \"state\"` only",
        ));
    }
    if let Trigger::Raise {
        class,
        severity,
        rtype,
    } = &mut trigger
    {
        *class = r.class.as_ref().map(|c| c.get_ref().clone());
        *severity = r.severity.as_ref().map(|s| *s.get_ref());
        *rtype = r.rtype.as_ref().map(|s| *s.get_ref());
    } else if let Some(span) = r
        .class
        .as_ref()
        .map(|v| v.span())
        .or_else(|| r.severity.as_ref().map(|v| v.span()))
    {
        return Err(ctx.err(
            Some(span),
            Some(key.to_owned()),
            "`class` and `severity` apply to `on = \"raise\"` only",
        ));
    }
    let actions = r
        .action
        .iter()
        .enumerate()
        .map(|(n, a)| action(ctx, &format!("{key}.action[{n}]"), a, names))
        .collect::<Result<Vec<_>, _>>()?;
    // The run journal records a run's place as one byte per list, eight lists deep.
    fn too_big(list: &[crate::actions::Action], depth: usize) -> bool {
        list.len() > 255
            || depth >= ham_core::journal::MAX_DEPTH
            || list.iter().any(|a| too_big(&a.on_fail, depth + 1))
    }
    if too_big(&actions, 0) {
        return Err(ctx.err(
            Some(c.span()),
            Some(key.to_owned()),
            format!(
                "at most 255 actions per list, and fail lists nested at most {} deep",
                ham_core::journal::MAX_DEPTH - 1
            ),
        ));
    }
    if r.nowait {
        fn waits(a: &crate::actions::Action) -> bool {
            matches!(
                a.kind,
                crate::actions::ActionKind::WaitFor { .. }
                    | crate::actions::ActionKind::Delay { .. }
            ) || a.on_fail.iter().any(waits)
        }
        if let Some(n) = actions.iter().position(waits) {
            return Err(ctx.err(
                Some(r.action[n].span()),
                Some(format!("{key}.action[{n}]")),
                "a `nowait` condition cannot have a `waitfor` or `delay` action (QNX: EINVAL)",
            ));
        }
    }
    Ok(Condition {
        name: r.name.as_ref().map(|n| n.get_ref().clone()),
        enabled: r.enabled && !r.removed,
        removed: r.removed,
        trigger,
        actions,
        rearm: r.rearm.unwrap_or(true),
        independent: r.independent || r.nowait,
        nowait: r.nowait,
    })
}

fn action(
    ctx: &Ctx,
    key: &str,
    a: &Spanned<RawAction>,
    names: &[String],
) -> Result<crate::actions::Action, ConfigError> {
    use crate::actions::{Action, ActionKind};
    let r = a.get_ref();
    let k = |f: &str| Some(format!("{key}.{f}"));
    let need = |what: &str| {
        ctx.err(
            Some(a.span()),
            k(what),
            format!("`do = \"{}\"` needs `{what}`", r.act.get_ref()),
        )
    };
    let dur = |v: &Spanned<String>, f: &str| {
        duration::parse_ns(v.get_ref()).map_err(|why| ctx.err(Some(v.span()), k(f), why))
    };
    // An entity named by an action, or (absent) the condition's own.
    let target = |t: Option<&Spanned<String>>| -> Result<Option<usize>, ConfigError> {
        t.map(|t| {
            names.iter().position(|n| n == t.get_ref()).ok_or_else(|| {
                ctx.err(
                    Some(t.span()),
                    k("entity"),
                    format!("no entity named `{}`", t.get_ref()),
                )
            })
        })
        .transpose()
    };
    let kind = match r.act.get_ref().as_str() {
        "execute" => {
            let cmd = r.command.as_ref().ok_or_else(|| need("command"))?;
            let Some(program) = cmd.get_ref().first() else {
                return Err(ctx.err(Some(cmd.span()), k("command"), "command is empty"));
            };
            let search = std::env::var("PATH").unwrap_or_default();
            let path = match ctx.program(program, cmd.span().start, &search) {
                Ok(p) => p,
                Err(why) => return Err(ctx.err(Some(cmd.span()), k("command"), why)),
            };
            ActionKind::Execute {
                path,
                argv: cmd.get_ref().clone(),
                timeout_ns: match &r.timeout {
                    Some(t) => dur(t, "timeout")?,
                    None => 60_000_000_000,
                },
            }
        }
        "log" => ActionKind::Log {
            message: r
                .message
                .as_ref()
                .ok_or_else(|| need("message"))?
                .get_ref()
                .clone(),
        },
        "delay" => ActionKind::Delay {
            ns: dur(r.delay.as_ref().ok_or_else(|| need("delay"))?, "delay")?,
        },
        "signal" if r.pid.is_some() => {
            let pid = r.pid.as_ref().expect("checked");
            if *pid.get_ref() <= 0 {
                return Err(ctx.err(Some(pid.span()), k("pid"), "a pid is positive"));
            }
            let sig = r.signal.as_ref().ok_or_else(|| need("signal"))?;
            let signal = parse_signal(sig.get_ref())
                .map_err(|why| ctx.err(Some(sig.span()), k("signal"), why))?;
            ActionKind::SignalPid {
                pid: *pid.get_ref(),
                signal,
                value: r.value.as_ref().map_or(0, |v| *v.get_ref()),
            }
        }
        "signal" => {
            let target = r.entity.as_ref().ok_or_else(|| need("entity"))?;
            let entity = names
                .iter()
                .position(|n| n == target.get_ref())
                .ok_or_else(|| {
                    ctx.err(
                        Some(target.span()),
                        k("entity"),
                        format!("no entity named `{}`", target.get_ref()),
                    )
                })?;
            let sig = r.signal.as_ref().ok_or_else(|| need("signal"))?;
            let signal = parse_signal(sig.get_ref())
                .map_err(|why| ctx.err(Some(sig.span()), k("signal"), why))?;
            ActionKind::Signal { entity, signal }
        }
        "device-restart" => ActionKind::DeviceRestart,
        "notify" => {
            let topic = r.topic.as_ref().ok_or_else(|| need("topic"))?;
            if topic.get_ref().is_empty() || topic.get_ref() == "*" {
                return Err(ctx.err(
                    Some(topic.span()),
                    k("topic"),
                    "a topic is a non-empty name (`*` is for subscribers)",
                ));
            }
            ActionKind::Notify {
                topic: topic.get_ref().clone(),
                code: r.code.as_ref().map(|c| *c.get_ref()),
                value: r.value.as_ref().map(|v| *v.get_ref()),
            }
        }
        "heartbeat-healthy" => ActionKind::HeartbeatHealthy,
        "restart" => ActionKind::Restart {
            entity: target(r.entity.as_ref())?,
            command: match &r.command {
                None => None,
                Some(cmd) => {
                    let Some(program) = cmd.get_ref().first() else {
                        return Err(ctx.err(Some(cmd.span()), k("command"), "command is empty"));
                    };
                    let search = std::env::var("PATH").unwrap_or_default();
                    let path = match ctx.program(program, cmd.span().start, &search) {
                        Ok(p) => p,
                        Err(why) => return Err(ctx.err(Some(cmd.span()), k("command"), why)),
                    };
                    Some((path, cmd.get_ref().clone()))
                }
            },
        },
        "stop" => ActionKind::Stop {
            entity: target(r.entity.as_ref())?,
        },
        "hold-off" => ActionKind::HoldOff {
            entity: target(r.entity.as_ref())?,
            ns: dur(r.delay.as_ref().ok_or_else(|| need("delay"))?, "delay")?,
        },
        "waitfor" => ActionKind::WaitFor {
            path: ctx.path(r.path.as_ref().ok_or_else(|| need("path"))?.get_ref()),
            timeout_ns: dur(
                r.timeout.as_ref().ok_or_else(|| need("timeout"))?,
                "timeout",
            )?,
        },
        other => {
            return Err(ctx.err(
                Some(r.act.span()),
                k("do"),
                format!(
                    "unknown action `{other}` (use \"execute\", \"log\", \"delay\", \"waitfor\", \"signal\", \"notify\", \"heartbeat-healthy\", \"restart\", \"stop\", \"hold-off\" or \"device-restart\")"
                ),
            ));
        }
    };
    let on_fail = r
        .on_fail
        .iter()
        .enumerate()
        .map(|(n, f)| action(ctx, &format!("{key}.on_fail[{n}]"), f, names))
        .collect::<Result<_, _>>()?;
    Ok(Action {
        name: r.name.as_ref().map(|n| n.get_ref().clone()),
        enabled: r.enabled && !r.removed,
        removed: r.removed,
        kind,
        break_on_fail: r.break_on_fail,
        on_fail,
        run_now: r.run_now,
    })
}

/// Resolves `[[group]]` tables; an entity belongs to one group at most.
fn groups(
    ctx: &Ctx,
    raw: &[Spanned<RawGroup>],
    entities: &mut [EntityConfig],
) -> Result<Vec<Group>, ConfigError> {
    let mut out: Vec<Group> = Vec::new();
    for (g, rg) in raw.iter().enumerate() {
        let r = rg.get_ref();
        let key = |k: &str| Some(format!("group[{g}].{k}"));
        if out.iter().any(|o| o.name == *r.name.get_ref()) {
            return Err(ctx.err(
                Some(r.name.span()),
                key("name"),
                format!("duplicate group name `{}`", r.name.get_ref()),
            ));
        }
        let strategy = match r
            .strategy
            .as_ref()
            .map(|s| (s.get_ref().as_str(), s.span()))
        {
            None | Some(("one_for_one", _)) => Strategy::OneForOne,
            Some(("one_for_all", _)) => Strategy::OneForAll,
            Some(("rest_for_one", _)) => Strategy::RestForOne,
            Some((other, span)) => {
                return Err(ctx.err(
                    Some(span),
                    key("strategy"),
                    format!(
                        "unknown strategy `{other}` (use \"one_for_one\", \"one_for_all\" or \"rest_for_one\")"
                    ),
                ));
            }
        };
        let mut members = Vec::new();
        for (n, m) in r.members.get_ref().iter().enumerate() {
            let mk = Some(format!("group[{g}].members[{n}]"));
            let Some(i) = entities.iter().position(|e| e.name == *m.get_ref()) else {
                return Err(ctx.err(
                    Some(m.span()),
                    mk,
                    format!("no entity named `{}`", m.get_ref()),
                ));
            };
            if let Some(other) = entities[i].group {
                let other = if other == g {
                    r.name.get_ref().clone()
                } else {
                    out[other].name.clone()
                };
                return Err(ctx.err(
                    Some(m.span()),
                    mk,
                    format!("`{}` is already a member of group `{other}`", m.get_ref()),
                ));
            }
            entities[i].group = Some(g);
            members.push(i);
        }
        out.push(Group {
            name: r.name.get_ref().clone(),
            strategy,
            members,
        });
    }
    Ok(out)
}

/// Resolves `after` names to indices; refuses unknown names, self-references and cycles.
fn resolve_after(
    ctx: &Ctx,
    raw: &[Spanned<RawEntity>],
    entities: &mut [EntityConfig],
) -> Result<(), ConfigError> {
    let index: HashMap<&str, usize> = raw
        .iter()
        .enumerate()
        .map(|(i, e)| (e.get_ref().name.get_ref().as_str(), i))
        .collect();
    for (i, e) in raw.iter().enumerate() {
        for (n, dep) in e.get_ref().after.iter().enumerate() {
            let key = Some(format!("entity[{i}].after[{n}]"));
            match index.get(dep.get_ref().as_str()) {
                Some(&j) if j == i => {
                    return Err(ctx.err(Some(dep.span()), key, "an entity cannot wait for itself"));
                }
                Some(&j) => entities[i].after.push(j),
                None => {
                    return Err(ctx.err(
                        Some(dep.span()),
                        key,
                        format!("no entity named `{}`", dep.get_ref()),
                    ));
                }
            }
        }
    }
    // Depth-first search for a cycle: 0 unvisited, 1 on the path, 2 done.
    fn visit(
        i: usize,
        es: &[EntityConfig],
        mark: &mut [u8],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        mark[i] = 1;
        path.push(i);
        for &j in &es[i].after {
            if mark[j] == 1 {
                let from = path.iter().position(|&k| k == j).unwrap_or(0);
                let mut cycle = path[from..].to_vec();
                cycle.push(j);
                return Some(cycle);
            }
            if mark[j] == 0 {
                if let Some(c) = visit(j, es, mark, path) {
                    return Some(c);
                }
            }
        }
        path.pop();
        mark[i] = 2;
        None
    }
    let mut mark = vec![0u8; entities.len()];
    for i in 0..entities.len() {
        if mark[i] == 0 {
            if let Some(cycle) = visit(i, entities, &mut mark, &mut Vec::new()) {
                let names: Vec<&str> = cycle.iter().map(|&k| entities[k].name.as_str()).collect();
                let first = cycle[0];
                let span = raw[first].get_ref().after.first().map(|a| a.span());
                return Err(ctx.err(
                    span,
                    Some(format!("entity[{first}].after")),
                    format!("`after` makes a cycle: {}", names.join(" → ")),
                ));
            }
        }
    }
    Ok(())
}

fn parse_signal(s: &SignalSpec) -> Result<i32, String> {
    match s {
        SignalSpec::Number(n) => i32::try_from(*n)
            .ok()
            .filter(|n| (1..=64).contains(n))
            .ok_or_else(|| format!("signal number {n} is out of range (1-64)")),
        SignalSpec::Name(name) => {
            let upper = name.to_ascii_uppercase();
            let full = if upper.starts_with("SIG") {
                upper
            } else {
                format!("SIG{upper}")
            };
            full.parse::<nix::sys::signal::Signal>()
                .map(|s| s as i32)
                .map_err(|_| format!("unknown signal `{name}`"))
        }
    }
}

fn is_executable(p: &Path) -> bool {
    p.is_file() && rustix::fs::access(p, rustix::fs::Access::EXEC_OK).is_ok()
}

fn resolve_program(ctx: &Ctx, program: &str, search_path: &str) -> Result<PathBuf, String> {
    if program.contains('/') {
        let p = ctx.path(program);
        if !p.exists() {
            return Err(format!("executable {} does not exist", p.display()));
        }
        if !is_executable(&p) {
            return Err(format!("{} is not an executable file", p.display()));
        }
        return Ok(p);
    }
    search_path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| is_executable(p))
        .ok_or_else(|| format!("executable `{program}` not found in PATH ({search_path})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("/tmp/ham-test/ham.toml"), text)
    }

    const OK: &str = r#"
[ham]
name = "demo"
run_dir = "run"

[[entity]]
name = "web"
command = ["sleep", "100"]
env = { FOO = "bar" }
stop_signal = "INT"
stop_timeout = "2s"
restart = "on-failure"

[[entity]]
name = "db"
command = ["/bin/sh", "-c", "exit 3"]
stop_signal = 9
"#;

    #[test]
    fn a_valid_file_resolves() {
        let c = parse_str(OK).unwrap();
        assert_eq!(c.instance.name, "demo");
        assert_eq!(c.instance.run_dir, Path::new("/tmp/ham-test/run"));
        assert_eq!(c.instance.segment_name(), "/ham.demo.state");
        assert_eq!(c.entities.len(), 2);
        let web = &c.entities[0];
        assert!(web.exec_path.is_absolute() && web.exec_path.ends_with("sleep"));
        assert_eq!(web.stop_signal, libc::SIGINT);
        assert_eq!(web.stop_timeout_ns, 2_000_000_000);
        assert_eq!(web.restart, RestartMode::OnFailure);
        assert_eq!(c.entities[1].stop_signal, 9);
        assert_eq!(c.entities[1].restart, RestartMode::Always);
    }

    fn err_of(text: &str) -> ConfigError {
        parse_str(text).unwrap_err()
    }

    #[test]
    fn unknown_key_is_located() {
        let e = err_of(
            "[ham]\nname = \"x\"\n\n[[entity]]\nname = \"a\"\ncommand = [\"true\"]\ncolour = \"red\"\n",
        );
        assert_eq!((e.line, e.column), (7, 1), "{e}");
        assert!(e.message.contains("colour"), "{e}");
    }

    #[test]
    fn bad_type_is_located() {
        let e = err_of("[ham]\nname = \"x\"\n[[entity]]\nname = \"a\"\ncommand = \"true\"\n");
        assert_eq!(e.line, 5, "{e}");
        assert_eq!(e.key.as_deref(), Some("command"), "{e}");
    }

    #[test]
    fn duplicate_names_point_at_the_second() {
        let e = err_of(
            "[ham]\nname = \"x\"\n[[entity]]\nname = \"a\"\ncommand = [\"true\"]\n[[entity]]\nname = \"a\"\ncommand = [\"true\"]\n",
        );
        assert_eq!((e.line, e.column), (7, 8), "{e}");
        assert!(e.message.contains("first defined on line 4"), "{e}");
        assert_eq!(e.key.as_deref(), Some("entity[1].name"));
    }

    #[test]
    fn missing_executable_is_refused() {
        let e = err_of(
            "[ham]\nname = \"x\"\n[[entity]]\nname = \"a\"\ncommand = [\"/nonexistent/prog\"]\n",
        );
        assert_eq!(e.line, 5);
        assert!(e.message.contains("does not exist"), "{e}");
        let e = err_of(
            "[ham]\nname = \"x\"\n[[entity]]\nname = \"a\"\ncommand = [\"no-such-program-ham\"]\n",
        );
        assert!(e.message.contains("not found in PATH"), "{e}");
    }

    #[test]
    fn bad_values_are_refused_with_their_key() {
        let base = "[ham]\nname = \"x\"\n[[entity]]\nname = \"a\"\ncommand = [\"true\"]\n";
        for (extra, key, words) in [
            ("restart = \"sometimes\"", "restart", "unknown restart mode"),
            ("stop_signal = \"SIGNOPE\"", "stop_signal", "unknown signal"),
            ("stop_signal = 99", "stop_signal", "out of range"),
            (
                "stop_timeout = \"5 fortnights\"",
                "stop_timeout",
                "unknown unit",
            ),
            ("user = \"no-such-user-ham\"", "user", "no such user"),
            ("cwd = \"/nonexistent\"", "cwd", "not a directory"),
        ] {
            let e = err_of(&format!("{base}{extra}\n"));
            assert_eq!(e.line, 6, "{extra}: {e}");
            assert_eq!(
                e.key.as_deref(),
                Some(format!("entity[0].{key}").as_str()),
                "{e}"
            );
            assert!(e.message.contains(words), "{extra}: {e}");
        }
    }

    #[test]
    fn policies_parse_with_defaults_and_precise_errors() {
        use ham_core::engine::{Policy, Window};
        let base = "[ham]\nname = \"x\"\n[[entity]]\nname = \"a\"\ncommand = [\"true\"]\n";
        let c = parse_str(base).unwrap();
        assert_eq!(
            c.entities[0].policy,
            Recovery::Engine(Policy::switch_preset())
        );
        let c = parse_str(&format!("{base}policy = {{ kind = \"switch\", exits = 3, within = \"2s\", hold_off = \"1s\" }}\n")).unwrap();
        match &c.entities[0].policy {
            Recovery::Engine(Policy::Switch {
                exits, hold_off, ..
            }) => {
                assert_eq!(
                    *exits,
                    Window {
                        count: 3,
                        within: 2_000_000_000
                    }
                );
                assert_eq!(*hold_off, 1_000_000_000);
            }
            other => panic!("{other:?}"),
        }
        let c = parse_str(&format!("{base}policy = {{ kind = \"immediate\" }}\n")).unwrap();
        assert_eq!(c.entities[0].policy, Recovery::Immediate);
        for (extra, k, words) in [
            (
                "policy = { kind = \"sometimes\" }",
                "entity[0].policy.kind",
                "unknown policy kind",
            ),
            (
                "policy = { kind = \"switch\", max = 3 }",
                "entity[0].policy.max",
                "does not apply",
            ),
            (
                "policy = { kind = \"switch\", within = \"soon\" }",
                "entity[0].policy.within",
                "not a duration",
            ),
            (
                "policy = { kind = \"switch\", exits = 0 }",
                "entity[0].policy.exits",
                "at least 1",
            ),
            (
                "policy = { kind = \"stages\", stages = [{ action = \"pray\", retries = 1 }] }",
                "entity[0].policy.stages[0].action",
                "unknown stage action",
            ),
            (
                "policy = { kind = \"intensity\", then = \"panic\" }",
                "entity[0].policy.then",
                "unknown escalation",
            ),
        ] {
            let e = err_of(&format!("{base}{extra}\n"));
            assert_eq!(e.line, 6, "{extra}: {e}");
            assert_eq!(e.key.as_deref(), Some(k), "{e}");
            assert!(e.message.contains(words), "{extra}: {e}");
        }
        let e = err_of(&format!(
            "[device]\nrestart_command = [\"/no/such/reboot\"]\n{base}"
        ));
        assert_eq!(
            (e.line, e.key.as_deref()),
            (2, Some("device.restart_command"))
        );
    }

    #[test]
    fn after_is_resolved_and_cycles_are_refused() {
        let ent = |n: &str, after: &str| {
            format!("[[entity]]\nname = \"{n}\"\ncommand = [\"true\"]\nafter = [{after}]\n")
        };
        let c = parse_str(&format!(
            "[ham]\nname = \"x\"\n{}{}{}",
            ent("db", ""),
            ent("web", "\"db\""),
            ent("cache", "\"db\", \"web\"")
        ))
        .unwrap();
        assert_eq!(c.entities[2].after, vec![0, 1]);
        let e = err_of(&format!(
            "[ham]\nname = \"x\"\n{}{}",
            ent("a", "\"b\""),
            ent("b", "\"a\"")
        ));
        assert!(e.message.contains("cycle: a → b → a"), "{e}");
        assert_eq!((e.line, e.key.as_deref()), (6, Some("entity[0].after")));
        let e = err_of(&format!("[ham]\nname = \"x\"\n{}", ent("a", "\"nope\"")));
        assert!(e.message.contains("no entity named `nope`"), "{e}");
        assert_eq!(e.key.as_deref(), Some("entity[0].after[0]"));
        let e = err_of(&format!("[ham]\nname = \"x\"\n{}", ent("a", "\"a\"")));
        assert!(e.message.contains("itself"), "{e}");
    }

    #[test]
    fn backoffs_parse_and_refuse_misplaced_keys() {
        use ham_core::engine::Backoff;
        let base = "[ham]\nname = \"x\"\n[[entity]]\nname = \"a\"\ncommand = [\"true\"]\n";
        let c = parse_str(&format!(
            "{base}backoff = {{ kind = \"fixed\", delay = \"2s\" }}\n"
        ))
        .unwrap();
        assert_eq!(
            c.entities[0].backoff,
            Some(Backoff::Fixed {
                delay: 2_000_000_000,
                reset_after: 60_000_000_000
            })
        );
        let e = err_of(&format!("{base}backoff = {{ kind = \"fixed\" }}\n"));
        assert!(e.message.contains("`delay` is required"), "{e}");
        let e = err_of(&format!(
            "{base}backoff = {{ kind = \"fixed\", delay = \"1s\", max = \"2s\" }}\n"
        ));
        assert_eq!(e.key.as_deref(), Some("entity[0].backoff.max"), "{e}");
        let e = err_of(&format!("{base}backoff = {{ kind = \"random\" }}\n"));
        assert!(e.message.contains("unknown back-off kind"), "{e}");
    }

    #[test]
    fn conditions_and_actions_parse_with_precise_errors() {
        use crate::actions::{ActionKind, Trigger};
        let base = "[ham]\nname = \"x\"\n[[entity]]\nname = \"a\"\ncommand = [\"true\"]\n";
        let c = parse_str(&format!(
            "{base}[[entity.condition]]\non = \"raise\"\nclass = \"temp\"\n[[entity.condition.action]]\ndo = \"execute\"\ncommand = [\"true\"]\nbreak_on_fail = true\non_fail = [{{ do = \"log\", message = \"hook failed\" }}]\n"
        ))
        .unwrap();
        let cond = &c.entities[0].conditions[0];
        assert_eq!(
            cond.trigger,
            Trigger::Raise {
                class: Some("temp".into()),
                severity: None,
                rtype: None
            }
        );
        assert!(matches!(cond.actions[0].kind, ActionKind::Execute { .. }));
        assert!(cond.actions[0].break_on_fail);
        assert_eq!(
            cond.actions[0].on_fail[0].kind,
            ActionKind::Log {
                message: "hook failed".into()
            }
        );
        let e = err_of(&format!("{base}[[entity.condition]]\non = \"eclipse\"\n"));
        assert_eq!(e.key.as_deref(), Some("entity[0].condition[0].on"), "{e}");
        let e = err_of(&format!(
            "{base}[[entity.condition]]\non = \"death\"\n[[entity.condition.action]]\ndo = \"signal\"\nentity = \"ghost\"\nsignal = \"HUP\"\n"
        ));
        assert_eq!(
            e.key.as_deref(),
            Some("entity[0].condition[0].action[0].entity"),
            "{e}"
        );
        assert_eq!(e.line, 10, "{e}");
        let e = err_of(&format!(
            "{base}[[entity.condition]]\non = \"death\"\n[[entity.condition.action]]\ndo = \"execute\"\n"
        ));
        assert!(e.message.contains("needs `command`"), "{e}");
    }

    #[test]
    fn a_watchdog_needs_notify() {
        let base = "[ham]\nname = \"x\"\n[[entity]]\nname = \"a\"\ncommand = [\"true\"]\n";
        let e = err_of(&format!("{base}watchdog = \"1s\"\n"));
        assert_eq!(
            (e.line, e.key.as_deref()),
            (6, Some("entity[0].watchdog")),
            "{e}"
        );
        let c = parse_str(&format!("{base}notify = true\nwatchdog = \"1s\"\n")).unwrap();
        assert_eq!(c.entities[0].watchdog_ns, Some(1_000_000_000));
        assert!(c.entities[0].notify);
    }

    #[test]
    fn groups_resolve_and_refuse_double_membership() {
        let ents = "[[entity]]\nname = \"a\"\ncommand = [\"true\"]\n[[entity]]\nname = \"b\"\ncommand = [\"true\"]\n";
        let c = parse_str(&format!(
            "[ham]\nname = \"x\"\n{ents}[[group]]\nname = \"g\"\nstrategy = \"rest_for_one\"\nmembers = [\"b\", \"a\"]\n"
        ))
        .unwrap();
        assert_eq!(c.groups[0].strategy, Strategy::RestForOne);
        assert_eq!(c.groups[0].members, vec![1, 0]);
        assert_eq!(c.entities[0].group, Some(0));
        let e = err_of(&format!(
            "[ham]\nname = \"x\"\n{ents}[[group]]\nname = \"g\"\nmembers = [\"a\", \"a\"]\n"
        ));
        assert!(e.message.contains("already a member of group `g`"), "{e}");
        assert_eq!(e.key.as_deref(), Some("group[0].members[1]"));
        let e = err_of(&format!(
            "[ham]\nname = \"x\"\n{ents}[[group]]\nname = \"g\"\nstrategy = \"all_for_none\"\nmembers = []\n"
        ));
        assert!(e.message.contains("unknown strategy"), "{e}");
    }

    #[test]
    fn bad_instance_names_are_refused() {
        let e = err_of("[ham]\nname = \"a/b\"\n");
        assert_eq!((e.line, e.key.as_deref()), (2, Some("ham.name")));
        let e = err_of("[ham]\nname = \"\"\n");
        assert_eq!(e.line, 2);
    }

    #[test]
    fn missing_ham_table_is_an_error() {
        let e = err_of("[[entity]]\nname = \"a\"\ncommand = [\"true\"]\n");
        assert!(e.message.contains("ham"), "{e}");
    }

    #[test]
    fn display_shows_the_line() {
        let e = err_of("[ham]\nname = \"x\"\nbogus = 1\n");
        let s = e.to_string();
        assert!(s.starts_with("/tmp/ham-test/ham.toml:3:1: "), "{s}");
        assert!(s.contains("bogus = 1"), "{s}");
    }
}
