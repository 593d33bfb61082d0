//! The configuration file (TOML) in two layers: the raw file as written (with spans), then
//! the resolved, validated [`Config`] the daemon runs. Every error names the file, line,
//! column and key.

// A configuration error carries every other error of the same pass: larger than clippy's
// threshold, on a path taken once per start.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::cold::{AtRest, Cold};
use ham_core::duration;
use ham_core::layout::NAME_MAX;
use ham_core::policy::RestartMode;
use serde::Deserialize;
use toml::Spanned;

mod entity;
mod file;
mod recover;
mod rules;

use entity::entity;
use file::{parse_with, resolve_program};
use rules::{backoff, condition, groups, parse_signal, policy, resolve_after};

/// The default run directory, log directory and configuration file (ham-core's, shared
/// with the SDK).
pub use ham_core::paths::{DEFAULT_CONFIG, DEFAULT_LOG_DIR, DEFAULT_RUN_DIR, DEFAULT_STATE_DIR};
/// Default syslog socket.
pub const DEFAULT_SYSLOG: &str = "/dev/log";
/// Longest instance name (it becomes part of a shm object name and a socket path).
pub const INSTANCE_NAME_MAX: usize = 32;

/// Lanes (`ham_core::lane`, 32 KiB of `/dev/shm` each) ham hands out at most: in all, to one
/// process, and to one user other than root and ham's own. A client refused one uses the
/// shared ring.
pub const LANES_MAX: usize = 128;
pub const LANES_PER_PID: usize = 16;
pub const LANES_PER_UID: usize = 32;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    ham: Spanned<RawHam>,
    device: Option<RawDevice>,
    watchdog: Option<Spanned<RawWatchdog>>,
    metrics: Option<RawMetrics>,
    cluster: Option<Spanned<RawCluster>>,
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
struct RawCluster {
    name: Spanned<String>,
    node: Spanned<String>,
    endpoints: Spanned<Vec<Spanned<String>>>,
    lease_ttl: Option<Spanned<String>>,
    lock_delay: Option<Spanned<String>>,
    agent: Option<Spanned<String>>,
    role: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    restart_command: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatchdog {
    device: Spanned<String>,
    timeout: Option<Spanned<String>>,
    magic_close: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    textfile: Spanned<String>,
    interval: Option<Spanned<String>>,
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
    state_dir: Option<Spanned<String>>,
    cores_dir: Option<Spanned<String>>,
    cores_keep: Option<Spanned<u32>>,
    cores_max_bytes: Option<Spanned<u64>>,
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
    state_dir: Option<Spanned<String>>,
    cores_dir: Option<Spanned<String>>,
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
    accept_from: Vec<Spanned<String>>,
    #[serde(default)]
    cores: bool,
    mts_queue: Option<Spanned<u32>>,
    mts_message_max: Option<Spanned<u32>>,
    #[serde(default)]
    mts_durable: bool,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    stop_signal: Option<Spanned<SignalSpec>>,
    stop_timeout: Option<Spanned<String>>,
    restart: Option<Spanned<String>>,
    output: Option<Spanned<String>>,
    output_max_bytes: Option<Spanned<u64>>,
    output_keep: Option<Spanned<u32>>,
    output_syslog: Option<Spanned<bool>>,
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
    pss_max: Option<Spanned<RawPssMax>>,
    /// `one-of-n` or `m-of-n`: the cluster places it ([cluster]).
    placement: Option<Spanned<String>>,
    #[serde(default)]
    preferred: Vec<Spanned<String>>,
    #[serde(default)]
    fail_back: bool,
    #[serde(default)]
    preferred_only: bool,
    count: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPssMax {
    keys: Option<u32>,
    bytes: Option<u32>,
    value: Option<u32>,
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
    /// The other errors found in the same pass, in the order of the file.
    pub more: Vec<ConfigError>,
}

impl ConfigError {
    /// One error that carries all of `errors` (the first, then the rest in `more`).
    fn all(mut errors: Vec<ConfigError>) -> ConfigError {
        errors.sort_by_key(|e| (e.line, e.column));
        let mut first = errors.remove(0);
        first.more = errors;
        first
    }
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
        for e in &self.more {
            write!(f, "\n{e}")?;
        }
        if !self.more.is_empty() {
            write!(f, "\n{} errors", self.more.len() + 1)?;
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
    /// `output = "log"`: captured through a pipe, stamped and kept in
    /// `<log_dir>/<instance>/<entity>/current`, rotated (see `outlog`).
    Log(OutputLog),
}

/// How captured output is kept (`output = "log"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLog {
    /// `current` is archived once it holds this many bytes (`output_max_bytes`).
    pub max_bytes: u64,
    /// Archived files kept (`output_keep`).
    pub keep: u32,
    /// Each line also goes to syslog (`output_syslog`).
    pub syslog: bool,
}

/// `output_max_bytes` and `output_keep` when unset (s6-log's defaults are 99999 bytes and
/// 10 files; a megabyte suits a box that keeps its logs on flash).
pub const DEFAULT_OUTPUT_MAX_BYTES: u64 = 1 << 20;
pub const DEFAULT_OUTPUT_KEEP: u32 = 10;

impl Instance {
    /// Where entity `entity`'s captured output is kept.
    pub fn output_dir(&self, entity: &str) -> PathBuf {
        self.log_dir.join(&self.name).join(entity)
    }
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
    /// Conditions and their actions (resolved once every entity name is known).
    pub conditions: Vec<crate::actions::Condition>,
    /// It speaks sd_notify: it gets `NOTIFY_SOCKET`, and is ready once it sends `READY=1`.
    pub notify: bool,
    /// Whose sd_notify messages count (systemd's `NotifyAccess=`).
    pub notify_access: NotifyAccess,
    /// Ready only once the process says so (SDK `ready()`, or `READY=1`).
    pub wait_ready: bool,
    /// ham never starts it: a process attaches itself under its name (QNX's self-attached
    /// entity). `argv` is empty.
    pub attach_only: bool,
    /// It runs with RLIMIT_CORE raised, and its cores are collected (`cores`).
    pub cores: bool,
    /// Its queue is also on disk: it survives a reboot (`mts_durable`).
    pub mts_durable: bool,
    /// The settings most entities leave unset, behind one pointer (see [`RareSettings`]).
    pub rare: Cold<RareSettings>,
}

/// An entity's settings that most entities leave at their defaults. They are kept apart
/// (in a [`Cold`]) so that an entity that sets none of them costs 8 bytes for them, in the
/// HAM's table and in the Guardian's copy of the configuration alike.
#[derive(Debug, Clone, PartialEq)]
pub struct RareSettings {
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
    /// Delay before automatic restarts, if any.
    pub backoff: Option<ham_core::engine::Backoff>,
    /// sd_notify watchdog: `WATCHDOG=1` expected at least this often (`WATCHDOG_USEC`).
    pub watchdog_ns: Option<u64>,
    /// Resource limits for its cgroup (`memory_max`, `pids_max`, `cpu_weight`).
    pub limits: CgroupLimits,
    /// Other entities whose processes may raise events on this one (indices).
    pub raise_from: Vec<usize>,
    /// The shape of its checkpoint store (`pss_max`).
    pub pss: ham_core::pss::Geometry,
    /// Entities whose processes may send it messages (indices; root may too).
    pub accept_from: Vec<usize>,
    /// The shape of its message queue (`mts_queue`, `mts_message_max`).
    pub mts: ham_core::mts::Shape,
    /// Where the cluster runs it (`placement`); `None`: here, as any entity.
    pub placement: Option<Placement>,
}

/// Every rare setting at its default.
static NO_RARE_SETTINGS: RareSettings = RareSettings {
    env: BTreeMap::new(),
    cwd: None,
    backoff: None,
    watchdog_ns: None,
    limits: CgroupLimits {
        memory_max: None,
        pids_max: None,
        cpu_weight: None,
    },
    raise_from: Vec::new(),
    pss: DEFAULT_PSS,
    accept_from: Vec::new(),
    mts: DEFAULT_MTS,
    placement: None,
};

impl AtRest for RareSettings {
    fn at_rest() -> &'static Self {
        &NO_RARE_SETTINGS
    }
    fn fresh() -> Self {
        NO_RARE_SETTINGS.clone()
    }
}

/// `placement`: the entity runs on as many nodes of the cluster as it says, and only where
/// the cluster placed it (WebSphere's "One of N" and "M of N" policies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// How many nodes run it at once (1: one-of-n).
    pub count: u32,
    /// Nodes in the order they are preferred.
    pub preferred: Vec<String>,
    /// When a more preferred node joins, the one running it gives it up to it.
    pub fail_back: bool,
    /// Only the preferred nodes may run it.
    pub preferred_only: bool,
}

/// `mts_queue` and `mts_message_max` when not given (a queue of about 290 KiB, made on the
/// first message sent to the entity).
pub const DEFAULT_MTS: ham_core::mts::Shape = ham_core::mts::Shape {
    capacity: 256,
    message_max: 1024,
};

/// `pss_max` when not given: 32 keys, 64 KiB of values, 4 KiB a value (a region of about
/// 270 KiB, made only for an entity whose process opens its store).
pub const DEFAULT_PSS: ham_core::pss::Geometry = ham_core::pss::Geometry {
    keys: 32,
    bytes_max: 64 * 1024,
    value_max: 4096,
};

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
    /// Collected cores kept per entity, and their bytes at most (the newest win).
    pub cores_keep: u32,
    pub cores_max_bytes: u64,
    /// How long a claimed ring slot may stay unpublished before it is abandoned.
    pub ring_abandon_after_ns: u64,
    pub entities: Vec<EntityConfig>,
    pub groups: Vec<Group>,
    /// `[cluster]`: this box is a node of a cluster kept in etcd (None: single box).
    pub cluster: Option<ClusterConfig>,
    /// `[watchdog]`: a hardware watchdog the HAM's loop feeds (None: none).
    pub watchdog: Option<WatchdogConfig>,
    /// `[metrics] textfile`: where the Prometheus exposition is written, and how often.
    pub metrics: Option<(PathBuf, u64)>,
}

/// `[metrics] interval` when unset (node_exporter's default scrape interval).
pub const DEFAULT_METRICS_INTERVAL: &str = "15s";

/// `[watchdog]`: the device, its timeout, and whether a clean shutdown disarms it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchdogConfig {
    pub device: PathBuf,
    /// Set on the device (`WDIOC_SETTIMEOUT`, whole seconds); the loop feeds it every third.
    pub timeout_ns: u64,
    /// Write `V` before the last close at a clean shutdown, so the device stops counting.
    pub magic_close: bool,
}

/// `[watchdog] timeout` when unset.
pub const DEFAULT_WATCHDOG_TIMEOUT: &str = "30s";

/// The entity ham adds to run its cluster agent when `[cluster]` is set.
pub const CLUSTER_AGENT_ENTITY: &str = "ham-cluster";
/// The entity ham adds to keep the fence deadline if ham itself and the agent are gone
/// (`ham-cluster --fence`).
pub const CLUSTER_FENCE_ENTITY: &str = "ham-fence";
/// `[cluster] lease_ttl` when unset, and its floor (etcd raises shorter TTLs to its own
/// minimum, about 1.5 s with default timing).
pub const DEFAULT_LEASE_TTL: &str = "5s";
pub const MIN_LEASE_TTL_NS: u64 = 2_000_000_000;

/// `[cluster]`: the cluster this box is a node of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The cluster's name: its keys live under `/ham/<name>/` in etcd.
    pub name: String,
    /// This box's name in the cluster.
    pub node: String,
    /// etcd client URLs (`http://host:port`), this box's own member first.
    pub endpoints: Vec<String>,
    /// The lease this node's registration (and its placements) hang on.
    pub lease_ttl_ns: u64,
    /// How long a node that finds a singleton's key free waits before it campaigns for it,
    /// when the key's last owner did not hand it over (its lease ended): that owner may
    /// have been told nothing (etcd ended the lease early: a stale leader's revocation,
    /// etcd-io/etcd#15247) and fences itself only at its own deadline. Default: the TTL.
    pub lock_delay_ns: u64,
    /// The agent's program (default: `ham-cluster` beside the `ham` binary).
    pub agent: PathBuf,
    /// `role = "supervisor"`: one of the nodes that elect an active supervisor (NX-OS's dual
    /// supervisors); an escalation to a device restart on the active one, with a standby in
    /// the view, becomes a switchover.
    pub supervisor: bool,
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
    /// `[ham] state_dir`: what must survive a reboot (durable checkpoints).
    pub state_dir: PathBuf,
    /// `[ham] cores_dir`: collected core files (default `<state_dir>/<name>/cores`).
    pub cores_dir: PathBuf,
    /// `[ham] cgroup`: how entities' processes are tracked.
    pub cgroup: CgroupMode,
}

impl Instance {
    /// The POSIX shm name of the state segment.
    pub fn segment_name(&self) -> String {
        ham_core::paths::state_segment(&self.name)
    }
    /// The control socket.
    pub fn socket_path(&self) -> PathBuf {
        ham_core::paths::socket(&self.run_dir, &self.name)
    }
    /// The pid file.
    pub fn pid_path(&self) -> PathBuf {
        ham_core::paths::pid_file(&self.run_dir, &self.name)
    }
    /// The file that names the configuration the running HAM was started with (so hamctl
    /// can say when it was given another one for the same instance).
    pub fn config_note_path(&self) -> PathBuf {
        self.run_dir.join(format!("{}.config", self.name))
    }
    /// The sd_notify socket (`NOTIFY_SOCKET` of entities with `notify = true`).
    pub fn notify_path(&self) -> PathBuf {
        ham_core::paths::notify_socket(&self.run_dir, &self.name)
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
            more: Vec::new(),
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
        more: Vec::new(),
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
        cores_dir: cores_dir(
            &ctx,
            raw.ham.cores_dir.as_ref(),
            raw.ham.state_dir.as_ref(),
            &raw.ham.name,
        ),
        state_dir: raw.ham.state_dir.map_or_else(
            || PathBuf::from(DEFAULT_STATE_DIR),
            |d| ctx.path(d.get_ref()),
        ),
        cgroup: cgroup_mode(&ctx, raw.ham.cgroup.as_ref())?,
    })
}

/// `[ham] cores_dir`, by default `<state_dir>/<name>/cores`.
fn cores_dir(
    ctx: &Ctx,
    cores: Option<&Spanned<String>>,
    state: Option<&Spanned<String>>,
    name: &Spanned<String>,
) -> PathBuf {
    match cores {
        Some(d) => ctx.path(d.get_ref()),
        None => state
            .map_or_else(
                || PathBuf::from(DEFAULT_STATE_DIR),
                |d| ctx.path(d.get_ref()),
            )
            .join(name.get_ref())
            .join("cores"),
    }
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

/// The name prefix of a free entry: the place a removed run-time entity leaves in the
/// run-time definitions (`~` is not allowed in entity names).
pub const FREE_ENTRY: &str = "~free.";

/// Whether `name` is a free entry's.
pub fn is_free_entry(name: &str) -> bool {
    name.strip_prefix(FREE_ENTRY)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests;
