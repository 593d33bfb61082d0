//! The three programs' command lines.

use super::{Cmd, Opt, Spec};
use crate::exit;

const CONFIG_NOTE: &str = "FILE defaults to $HAM_CONFIG, then /etc/ham/ham.toml.";

const GENERATE: [Opt; 2] = [
    Opt {
        long: "completions",
        short: None,
        value: Some("SHELL"),
        help: "print the shell completion script (bash, zsh or fish) and exit",
    },
    Opt {
        long: "man",
        short: None,
        value: None,
        help: "print the man page (roff) and exit",
    },
];

const CONFIG: Opt = Opt {
    long: "config",
    short: Some('c'),
    value: Some("FILE"),
    help: "the instance's configuration",
};

const VERSION: Opt = Opt {
    long: "version",
    short: Some('V'),
    value: None,
    help: "print the version and exit",
};

const HELP: Opt = Opt {
    long: "help",
    short: Some('h'),
    value: None,
    help: "print this help and exit",
};

pub static HAM: Spec = Spec {
    name: "ham",
    section: 8,
    about: "self-healing process supervisor (the HAM and its Guardian)",
    synopsis: &[
        "[-c|--config FILE] [--wait-running]",
        "--check-config FILE",
        "-h|--help | -V|--version | --layouts | --man | --completions SHELL",
    ],
    options: &[
        Opt {
            long: "config",
            short: Some('c'),
            value: Some("FILE"),
            help: "run the instance FILE describes",
        },
        Opt {
            long: "wait-running",
            short: None,
            value: None,
            help: "for init systems that respawn ham (busybox, procd): if the instance \
                   already runs (its Guardian took over from the HAM they started), wait \
                   until it is gone, then start it warm; SIGTERM while waiting shuts the \
                   instance down",
        },
        Opt {
            long: "check-config",
            short: None,
            value: Some("FILE"),
            help: "validate FILE, say what it defines, and exit",
        },
        Opt {
            long: "version",
            short: Some('V'),
            value: None,
            help: "print the version and exit",
        },
        Opt {
            long: "layouts",
            short: None,
            value: None,
            help: "print the state-segment layouts this binary runs on (its own, then those \
                   it migrates) and exit: what hamctl upgrade asks a new binary",
        },
        HELP,
        GENERATE[0],
        GENERATE[1],
    ],
    commands: &[],
    notes: &[CONFIG_NOTE],
    exit_codes: &[
        (
            exit::OK,
            "stopped on request, or the configuration is valid",
        ),
        (
            exit::FAILED,
            "invalid configuration, or the instance already runs",
        ),
        (exit::USAGE, "bad command line"),
        (exit::UNAVAILABLE, "a system error"),
    ],
};

pub static HAMCTL: Spec = Spec {
    name: "hamctl",
    section: 8,
    about: "status and control of a running ham",
    synopsis: &["[-c|--config FILE] [--timeout DURATION] COMMAND"],
    options: &[
        CONFIG,
        Opt {
            long: "timeout",
            short: None,
            value: Some("DURATION"),
            help: "how long to wait for ham's answer (default 60s)",
        },
        Opt {
            long: "json",
            short: None,
            value: None,
            help: "status, log, pss, cores, cluster status: JSON instead of a table",
        },
        Opt {
            long: "cluster",
            short: None,
            value: None,
            help: "device-restart: on every node of the cluster, through its master",
        },
        Opt {
            long: "binary",
            short: None,
            value: Some("FILE"),
            help: "upgrade: the new ham binary (an absolute path)",
        },
        Opt {
            long: "follow",
            short: Some('f'),
            value: None,
            help: "logs: go on printing new lines",
        },
        Opt {
            long: "lines",
            short: Some('n'),
            value: Some("N"),
            help: "logs: how many of the last lines (default 10)",
        },
        Opt {
            long: "tree",
            short: None,
            value: None,
            help: "status: entities, conditions and actions with their flags",
        },
        VERSION,
        HELP,
        GENERATE[0],
        GENERATE[1],
    ],
    commands: &[
        Cmd {
            name: "status",
            args: "[--json|--tree]",
            help: "entities, pids, restarts, last exits (read from the state segment); \
                   --tree: entities, conditions and actions with their flags, as QNX's \
                   /proc/ham, and the HAM's and Guardian's failure counts",
            words: &[],
        },
        Cmd {
            name: "start",
            args: "ENTITY",
            help: "start a stopped entity",
            words: &[],
        },
        Cmd {
            name: "stop",
            args: "ENTITY",
            help: "stop an entity; it stays stopped",
            words: &[],
        },
        Cmd {
            name: "restart",
            args: "ENTITY",
            help: "stop then start an entity",
            words: &[],
        },
        Cmd {
            name: "shutdown",
            args: "",
            help: "stop every entity and ham itself",
            words: &[],
        },
        Cmd {
            name: "device-restart",
            args: "enable|disable [--cluster]",
            help: "allow or forbid escalations to a device restart (--cluster: on every node, \
                   written through the cluster's master)",
            words: &["enable", "disable"],
        },
        Cmd {
            name: "log",
            args: "[ENTITY] [--json]",
            help: "the process log: conditions seen and actions taken, newest last",
            words: &[],
        },
        Cmd {
            name: "logs",
            args: "ENTITY [-n N] [-f]",
            help: "the captured output of an entity with output = \"log\": its last N lines \
                   (10), each stamped with the time ham read it; -f: then the new lines as \
                   they come, across rotations, until interrupted",
            words: &[],
        },
        Cmd {
            name: "raise",
            args: "ENTITY CLASS [SEVERITY [VALUE]]",
            help: "a detector's event: fires the entity's matching raise conditions",
            words: &[],
        },
        Cmd {
            name: "cores",
            args: "[ENTITY] [--json]",
            help: "the core files collected from entities with `cores = true`: entity, pid, \
                   signal, time, size and path, oldest first (read from cores_dir)",
            words: &[],
        },
        Cmd {
            name: "pss",
            args: "ENTITY [--json]",
            help: "an entity's checkpoint store: each key with its scope, durability, size, \
                   generation and value",
            words: &[],
        },
        Cmd {
            name: "cluster",
            args: "status [--json] | set KEY VALUE | switchover",
            help: "status: the cluster as this node knows it ([cluster]): the view's id and \
                   members, the master, singletons and settings, and whether the view is \
                   stale; set: a cluster-wide setting (device-restart enabled|disabled, \
                   verbosity 0-3), written through the master and applied on every node; \
                   switchover: the active supervisor hands its role and singletons to a standby",
            words: &["status", "set", "switchover"],
        },
        Cmd {
            name: "upgrade",
            args: "[--binary PATH]",
            help: "hand the running instance over to another ham binary (default: the file \
                   the running HAM was started from, as replaced by a package upgrade) the \
                   way a takeover does: no entity restarted, no pid changed, output pipes, \
                   watchdog and sockets kept; the segment is migrated if the new binary's \
                   layout is newer, and the upgrade is refused, changing nothing, if it \
                   cannot take this segment over",
            words: &[],
        },
        Cmd {
            name: "metrics",
            args: "",
            help: "the instance's status in Prometheus text format (read from the state \
                   segment, as status): ham_up, ham_takeovers_total, ham_entity_up, \
                   ham_entity_restarts_total, ham_heartbeat_missed_total, \
                   ham_ring_events_total and more; only ham_up 0 when it is not running",
            words: &[],
        },
        Cmd {
            name: "ping",
            args: "",
            help: "check that ham's loop answers",
            words: &[],
        },
    ],
    notes: &[
        CONFIG_NOTE,
        "Options may come anywhere, as --opt VALUE or --opt=VALUE.",
    ],
    exit_codes: &[
        (exit::OK, "done"),
        (
            exit::FAILED,
            "the command failed (unknown entity, refused request)",
        ),
        (exit::USAGE, "bad command line"),
        (exit::UNAVAILABLE, "ham not reachable"),
    ],
};

pub static HAM_CLIENT: Spec = Spec {
    name: "ham-client",
    section: 1,
    about: "the detector SDK from the shell: heartbeats, detector events, subscriptions",
    synopsis: &["[-c|--config FILE] COMMAND"],
    options: &[
        CONFIG,
        Opt {
            long: "period",
            short: None,
            value: Some("DURATION"),
            help: "heartbeat: the beat period",
        },
        Opt {
            long: "low",
            short: None,
            value: Some("N"),
            help: "heartbeat: missed beats that fire missed-low (default 3)",
        },
        Opt {
            long: "high",
            short: None,
            value: Some("N"),
            help: "heartbeat: missed beats that fire missed-high (default: none)",
        },
        Opt {
            long: "beats",
            short: None,
            value: Some("N"),
            help: "heartbeat: stop beating after N beats and wait to be killed",
        },
        Opt {
            long: "count",
            short: None,
            value: Some("N"),
            help: "subscribe: exit after N notifications",
        },
        Opt {
            long: "signal",
            short: None,
            value: Some("SIGNUM"),
            help: "subscribe: ham also sends this process SIGNUM for each notification",
        },
        Opt {
            long: "entity",
            short: None,
            value: Some("ENTITY"),
            help: "pss: the entity whose store (default: $HAM_ENTITY, this process's)",
        },
        Opt {
            long: "shared",
            short: None,
            value: None,
            help: "pss put: other entities may read the key",
        },
        Opt {
            long: "durable",
            short: None,
            value: None,
            help: "pss put: the key survives a reboot (the put returns once it is on disk)",
        },
        Opt {
            long: "wait",
            short: None,
            value: Some("DURATION"),
            help: "recv: wait this long for a message (default: do not wait)",
        },
        Opt {
            long: "ack",
            short: None,
            value: None,
            help: "recv: acknowledge the message once printed (it leaves the queue)",
        },
        VERSION,
        HELP,
        GENERATE[0],
        GENERATE[1],
    ],
    commands: &[
        Cmd {
            name: "heartbeat",
            args: "ENTITY --period DURATION [--low N] [--high N] [--beats N]",
            help: "attach this process to ENTITY and beat every period",
            words: &[],
        },
        Cmd {
            name: "raise",
            args: "ENTITY CLASS [SEVERITY [VALUE]]",
            help: "a detector event through the ring",
            words: &[],
        },
        Cmd {
            name: "state",
            args: "ENTITY FROM TO",
            help: "a state change through the ring",
            words: &[],
        },
        Cmd {
            name: "detach",
            args: "ENTITY",
            help: "end this process's attachment",
            words: &[],
        },
        Cmd {
            name: "ready",
            args: "ENTITY",
            help: "this process (ENTITY's) is ready: entities `after` it may start",
            words: &[],
        },
        Cmd {
            name: "define",
            args: "JSON",
            help: "a run-time definition (a JSON `Change`, as the control protocol has it)",
            words: &[],
        },
        Cmd {
            name: "pss",
            args: "put KEY VALUE [--shared] [--durable] | get KEY | delete KEY | list",
            help: "the checkpoint store of this process's entity (--entity: another's; get \
                   prints the value on stdout and exits 1 when the key is absent)",
            words: &["put", "get", "delete", "list"],
        },
        Cmd {
            name: "send",
            args: "ENTITY MESSAGE",
            help: "a message to ENTITY's queue (from a process of an entity it accepts \
                   messages from, or root)",
            words: &[],
        },
        Cmd {
            name: "recv",
            args: "[--wait DURATION] [--ack]",
            help: "the oldest message of this process's entity's queue (--entity: another's, \
                   as root): prints its id, its deliveries and the message, tab-separated; \
                   exit 1 when none came",
            words: &[],
        },
        Cmd {
            name: "ack",
            args: "ID",
            help: "message ID of this process's entity's queue is handled",
            words: &[],
        },
        Cmd {
            name: "subscribe",
            args: "TOPIC [--count N] [--signal SIGNUM]",
            help: "print each notification on TOPIC (`*`: all) as a JSON line",
            words: &[],
        },
    ],
    notes: &[
        "FILE defaults to the instance this process was started by, then $HAM_CONFIG, \
         then /etc/ham/ham.toml.",
        "Options may come anywhere, as --opt VALUE or --opt=VALUE; a negative number is a \
         word.",
    ],
    exit_codes: &[
        (exit::OK, "done"),
        (exit::FAILED, "refused or failed"),
        (exit::USAGE, "bad command line"),
        (exit::UNAVAILABLE, "ham not reachable"),
    ],
};
