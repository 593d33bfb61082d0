//! The control protocol's wire types: one JSON request line over the Unix socket in
//! `run_dir`, one JSON response line back (a subscription then streams [`Notification`]
//! lines). Shared by the daemon, `hamctl` and the SDK.

use serde::{Deserialize, Serialize};

/// A request to the running HAM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Answers at once; proves the HAM's loop is turning.
    Ping,
    /// Start a stopped entity (an operator start: not an automatic restart).
    Start { entity: String },
    /// Stop an entity; it stays stopped until started.
    Stop { entity: String },
    /// Stop then start an entity.
    Restart { entity: String },
    /// Stop every entity, remove the segment and the socket, and exit 0.
    Shutdown,
    /// Hand the instance over to the ham binary at `binary` (absolute), as a takeover:
    /// answered once its Guardian holds everything, just before this HAM exits.
    Upgrade { binary: String },
    /// Switch escalations to a device restart on or off (kept across takeovers and starts).
    DeviceRestart { enabled: bool },
    /// A client's first words: answered with its token (for the detector ring).
    Hello,
    /// A client asks for a lane of its own (`ham_core::lane`): answered with the lane's
    /// descriptor attached, or refused (no lanes left for it; it then uses the shared ring).
    Lane,
    /// This connection stays open: every further request line on it is answered on it,
    /// in turn (the SDK's `Client` asks this once, and saves a connection per request).
    /// ham may close an idle session when its uid needs the connection for another.
    Session,
    /// A client attaches a heartbeat to an entity (its own, unless it is privileged):
    /// answered with the heartbeat slot.
    Attach {
        entity: String,
        /// The process to attach; the caller itself if absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<i32>,
        period_ns: u64,
        missed_low: u32,
        missed_high: u32,
    },
    /// Ends an attachment (no death is reported for a self-attached entity).
    Detach { entity: String },
    /// Keeps the connection open and sends a [`Notification`] line for each `notify`
    /// action on `topic` (`*`: every topic); with `signal`, also sends the subscriber that
    /// signal (QNX `ham_action_notify_signal`).
    Subscribe {
        topic: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
    },
    /// The caller (an entity's process) is ready: entities that start `after` it may start.
    Ready { entity: String },
    /// A run-time definition (QNX's `ham_attach`, `ham_condition*`, `ham_action*`, their
    /// `_remove` and `_control`): kept in the state segment beside the configuration.
    Define { change: Change },
    /// QNX `ham_verbose`: reads or changes ham's log verbosity (answered in `flags`).
    Verbose { op: VerboseOp, value: i32 },
    /// Whether an entity (and its condition, and its action) exists: QNX's `*_handle`.
    Lookup {
        entity: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        condition: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        action: Option<String>,
    },
    /// A detector's event on an entity: fires its matching `raise` conditions.
    Raise {
        entity: String,
        class: String,
        severity: u32,
        value: i64,
    },
    /// The entity's checkpoint store (its own processes only): answered with a descriptor
    /// of the region (`ham_core::pss`), made on first use.
    PssOpen { entity: String },
    /// Writes the entity's durable keys to disk: answered once they are there.
    PssSync { entity: String },
    /// Reads an entity's checkpoint store through ham: one key, or every key (`None`).
    /// Another entity's process sees only its shared keys; an operator sees all.
    PssRead {
        entity: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// A message to entity `to`'s queue: from root, or from the process of an entity its
    /// `accept_from` names. `key` makes asking again (after a takeover) harmless: a key
    /// already queued is not queued twice.
    MtsSend { to: String, key: u64, data: Vec<u8> },
    /// The oldest message of entity `entity`'s queue (its own processes only; the same one
    /// until it is acknowledged), waiting up to `wait_ns` for one; answered in `mts`, or
    /// `EAGAIN` when none came.
    MtsRecv { entity: String, wait_ns: u64 },
    /// Message `id` of entity `entity`'s queue is handled: it leaves the queue.
    MtsAck { entity: String, id: u64 },
    /// The cluster agent's report of what it knows (only from the agent's process, or root
    /// and ham's user); ham keeps the last one for `cluster-status`.
    ClusterReport { state: Box<ClusterState> },
    /// The cluster as this node knows it: answered in `cluster`.
    ClusterStatus,
    /// The cluster placed entity `entity` on this node with fencing token `token` (only
    /// from the agent): ham starts it (again, if it ran with an older token), and answers
    /// once it runs.
    ClusterPlace { entity: String, token: u64 },
    /// Entity `entity` is no longer placed here (only from the agent): ham stops it, and
    /// answers once it is down.
    ClusterUnplace { entity: String },
    /// A cluster-wide setting, written through the cluster's master (`hamctl cluster set`,
    /// `hamctl device-restart … --cluster`): answered once the master wrote it, or why not.
    ClusterSet { key: String, value: String },
    /// The active supervisor hands its role and its singletons to a standby (`hamctl
    /// cluster switchover`): answered once a standby is active, or why not.
    ClusterSwitchover,
    /// The agent waits for work (held until there is some): answered with a
    /// [`ClusterWork`] as JSON in `message`.
    ClusterNext,
    /// The agent's outcome of work `id` (no error: done).
    ClusterDone {
        id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A setting the cluster holds, for this node to apply (the agent sends them in
    /// revision order, and all again when it starts).
    ClusterApply {
        key: String,
        value: String,
        origin: String,
        revision: u64,
    },
}

/// Work ham hands its cluster agent (`cluster-next`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterWork {
    pub id: u64,
    /// A setting to write through the master, or [`SWITCHOVER`].
    pub key: String,
    pub value: String,
}

/// [`ClusterWork::key`] of a switchover (not a setting).
pub const SWITCHOVER: &str = "switchover";

/// The cluster-wide settings, and the values each takes.
pub const CLUSTER_SETTINGS: &[(&str, &[&str])] = &[
    ("device-restart", &["enabled", "disabled"]),
    ("verbosity", &["0", "1", "2", "3"]),
];

/// Whether `key` = `value` is a cluster-wide setting, or why not.
pub fn check_cluster_setting(key: &str, value: &str) -> Result<(), String> {
    match CLUSTER_SETTINGS.iter().find(|(k, _)| *k == key) {
        None => Err(format!(
            "no cluster-wide setting `{key}` (there are: {})",
            CLUSTER_SETTINGS
                .iter()
                .map(|(k, _)| *k)
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Some((_, values)) if !values.contains(&value) => Err(format!(
            "`{key}` takes {}, not `{value}`",
            values.join(", ")
        )),
        Some(_) => Ok(()),
    }
}

/// What a node knows of its cluster (`hamctl cluster status --json` prints it).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClusterState {
    pub cluster: String,
    pub node: String,
    pub view: ClusterView,
    /// The node holding the master role, if one is known.
    #[serde(default)]
    pub master: Option<String>,
    #[serde(default)]
    pub singletons: Vec<ClusterSingleton>,
    #[serde(default)]
    pub settings: std::collections::BTreeMap<String, ClusterSetting>,
    /// This node cannot vouch for the view: its lease was not renewed within its TTL, etcd
    /// could not be read (no majority), or the agent has not reported.
    pub stale: bool,
    /// Why it is stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// The agent's lease (0: none), so that an agent that was restarted can take it up
    /// again while it lives.
    #[serde(default)]
    pub lease: u64,
    /// CLOCK_MONOTONIC ns by which what is placed here must be stopped: the send time of
    /// the last renewal etcd accepted, plus the TTL, less a margin (0: nothing may run).
    #[serde(default)]
    pub fence_at: u64,
    /// The active supervisor (`role = "supervisor"` nodes elect one), and the other
    /// supervisors in the view: its standbys.
    #[serde(default)]
    pub active: Option<String>,
    #[serde(default)]
    pub standbys: Vec<String>,
}

/// The members of the cluster, and the id of this view of them (the etcd revision of the
/// change that made it: a new one at every join and leave).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClusterView {
    pub id: u64,
    pub members: Vec<ClusterMember>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMember {
    pub node: String,
    /// When it joined (Unix ms).
    pub since: u64,
}

/// A singleton entity: its owner (if any) and the fencing token it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSingleton {
    pub name: String,
    pub owner: Option<String>,
    pub token: u64,
}

/// A cluster-wide setting: its value, the node it was set on and the etcd revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSetting {
    pub value: String,
    pub origin: String,
    pub revision: u64,
}

/// A message as `MtsRecv` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MtsItem {
    pub id: u64,
    /// Times it was handed out, this time included: more than 1 after its receiver died
    /// before acknowledging it.
    pub deliveries: u32,
    /// The sending entity (or `uid N` for a privileged sender that is no entity).
    pub sender: String,
    pub data: Vec<u8>,
}

/// One key of a checkpoint store, as `PssRead` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PssItem {
    pub key: String,
    pub shared: bool,
    pub durable: bool,
    pub value: Vec<u8>,
    pub generation: u64,
}

impl Request {
    /// Whether asking twice does what asking once does, so a client may ask again when the
    /// HAM it asked died before answering (a takeover): the successor answers the retry.
    pub fn is_idempotent(&self) -> bool {
        match self {
            Self::Ping
            | Self::Hello
            | Self::Lane
            | Self::Session
            | Self::Attach { .. }
            | Self::Ready { .. }
            | Self::Lookup { .. }
            | Self::Subscribe { .. }
            | Self::DeviceRestart { .. }
            | Self::PssOpen { .. }
            | Self::PssSync { .. }
            | Self::PssRead { .. }
            | Self::MtsSend { .. }
            | Self::MtsRecv { .. }
            | Self::MtsAck { .. }
            | Self::ClusterReport { .. }
            | Self::ClusterStatus
            | Self::ClusterPlace { .. }
            | Self::ClusterUnplace { .. }
            | Self::ClusterNext
            | Self::ClusterDone { .. }
            | Self::ClusterApply { .. } => true,
            Self::Verbose { op, .. } => *op == VerboseOp::Get,
            Self::Define {
                change: Change::Control { command, .. },
            } => *command == ControlCommand::GetFlags,
            _ => false,
        }
    }
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `hello`: the client's token, and the pid and uid it was made for (as the kernel
    /// reports the client to ham: another pid namespace, or a setuid program, differ from
    /// what the client sees itself as).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<(i32, u32)>,
    /// `hello`: the id of the bell attached to the answer (`ClientHeader::bell_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bell: Option<u64>,
    /// `attach`: the heartbeat slot in the client segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    /// On failure: the errno a C caller gets (QNX's conventions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    /// `define` with a `get` control: the flags asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<u32>,
    /// `pss-read`: the keys read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pss: Option<Box<[PssItem]>>,
    /// `mts-recv`: the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mts: Option<Box<MtsItem>>,
    /// `cluster-status`: what this node knows of its cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Box<ClusterState>>,
}

impl Response {
    pub fn ok(message: impl Into<String>) -> Self {
        Self {
            ok: true,
            message: Some(message.into()),
            error: None,
            token: None,
            peer: None,
            bell: None,
            slot: None,
            errno: None,
            flags: None,
            pss: None,
            mts: None,
            cluster: None,
        }
    }
    /// A refusal with the errno a C caller gets.
    pub fn errno(errno: i32, error: impl Into<String>) -> Self {
        let mut r = Self::err(error);
        r.errno = Some(errno);
        r
    }
    pub fn err(error: impl Into<String>) -> Self {
        Self {
            ok: false,
            message: None,
            error: Some(error.into()),
            token: None,
            peer: None,
            bell: None,
            slot: None,
            errno: None,
            flags: None,
            pss: None,
            mts: None,
            cluster: None,
        }
    }
    /// The response as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("a response always serialises");
        v.push(b'\n');
        v
    }
}

/// A change to the run-time definitions. Conditions and actions are tables with the keys of
/// a configuration file's `[[condition]]` / `[[entity.condition.action]]` (and `name`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Change {
    /// A run-time entity: with `pid`, that running process is watched; with `command`, ham
    /// runs it (and restarts it only through a `restart` action); with neither, a
    /// placeholder a process attaches to later (QNX `ham_entity`).
    Entity {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        command: Option<Vec<String>>,
    },
    /// A condition on `entity`; `table` has at least `name` and `on`.
    Condition {
        entity: String,
        table: serde_json::Map<String, serde_json::Value>,
    },
    /// An action of `condition`; into the fail list of action `fail_of` if given.
    Action {
        entity: String,
        condition: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fail_of: Option<String>,
        table: serde_json::Map<String, serde_json::Value>,
    },
    /// Removes a run-time condition, action or fail action (the most specific one named).
    Remove {
        entity: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        condition: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        action: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fail: Option<String>,
    },
    /// QNX `ham_*_control`: enable / disable, or add / remove / set / get flags (QNX bits).
    Control {
        entity: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        condition: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        action: Option<String>,
        command: ControlCommand,
        #[serde(default)]
        flags: u32,
    },
}

/// `ham_verbose`'s operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerboseOp {
    Get,
    Set,
    Incr,
    Decr,
}

/// QNX's `HENABLE`, `HDISABLE`, `HADDFLAGS`, `HREMOVEFLAGS`, `HSETFLAGS`, `HGETFLAGS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ControlCommand {
    Enable,
    Disable,
    AddFlags,
    RemoveFlags,
    SetFlags,
    GetFlags,
}

/// Longest request line the HAM accepts.
pub const MAX_REQUEST: usize = 4096;

/// One event sent to a subscriber by a `notify` action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub topic: String,
    pub entity: String,
    /// The condition that fired (`death`, `heartbeat-missed-high`, `raise`, …).
    pub condition: String,
    /// The entity's pid when it fired (0 if it had none).
    pub pid: i32,
    /// Wall-clock nanoseconds since the Unix epoch.
    pub time_unix_ns: u64,
    /// The action's `code` and `value`, if it has them (a QNX pulse's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<i32>,
}
