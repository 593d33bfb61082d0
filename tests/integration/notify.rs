//! sd_notify: `READY=1` gates the entities that start after it; a program written for
//! systemd's watchdog that stops petting it is aborted and restarted.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::util::*;

/// Python that sends READY=1 as itself (its own pid in its credentials).
const SEND_READY: &str = "import os, socket; socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'READY=1', os.environ['NOTIFY_SOCKET'])";

/// A Python stand-in for a systemd service: sends `msgs` (one datagram each, `sleep:S`
/// pauses) to $NOTIFY_SOCKET, then sleeps.
fn notifier(name: &str, msgs: &[&str], extra: &str) -> String {
    let steps: Vec<String> = msgs
        .iter()
        .map(|m| match m.strip_prefix("sleep:") {
            Some(s) => format!("time.sleep({s})"),
            None => format!("s.sendto(b'{m}', os.environ['NOTIFY_SOCKET'])"),
        })
        .collect();
    let script = format!(
        "import os, socket, time\\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\\n{}\\ntime.sleep(1000)",
        steps.join("\\n")
    );
    format!(
        "[[entity]]\nname = \"{name}\"\ncommand = [\"python3\", \"-c\", \"{script}\"]\nnotify = true\n{extra}\n"
    )
}

#[test]
fn ready_1_releases_the_entities_that_start_after_it() {
    let body = format!(
        "{}{}\nafter = [\"db\"]\n",
        notifier("db", &["sleep:0.4", "READY=1"], ""),
        sleeper("web").trim_end()
    );
    let ham = Ham::start("notify-ready", &body);
    let s = ham.wait_for("both running", |s| running(s, "db") && running(s, "web"));
    let up = |n: &str| entity(&s, n)["uptime_ns"].as_u64().unwrap();
    assert!(
        up("db") >= up("web") + 400_000_000,
        "web started before db said READY=1: {s}"
    );
    assert!(ham.stderr().contains("db: READY=1"), "{}", ham.stderr());
}

#[test]
fn a_program_that_stops_petting_its_watchdog_is_aborted_and_restarted() {
    let body = notifier(
        "svc",
        &[
            "READY=1",
            "WATCHDOG=1",
            "sleep:0.1",
            "WATCHDOG=1",
            "sleep:0.1",
            "WATCHDOG=1",
        ],
        "watchdog = \"500ms\"\nstop_timeout = \"2s\"\npolicy = { kind = \"immediate\" }",
    );
    let ham = Ham::start("notify-watchdog", &body);
    let s = ham.wait_for("svc aborted and restarted", |s| {
        entity(s, "svc")["restarts"].as_u64() >= Some(1)
    });
    assert_eq!(entity(&s, "svc")["last_exit"]["signal"], 6, "{s}");
    assert!(
        ham.stderr().contains("missed its watchdog"),
        "{}",
        ham.stderr()
    );
}

#[test]
fn the_notify_socket_is_removed_at_shutdown() {
    // Issue 12, point 13: the sd_notify socket was left behind after a shutdown.
    let mut ham = Ham::start("notify-gone", &notifier("db", &["READY=1"], ""));
    let path = ham
        .dir
        .path()
        .join("run")
        .join(format!("{}.notify", ham.name));
    ham.wait_for("db running", |s| running(s, "db"));
    assert!(path.exists());
    assert!(ham.ctl(&["shutdown"]).status.success());
    assert_eq!(ham.wait_exit(), 0);
    assert!(!path.exists(), "{} left behind", path.display());
}

/// `systemd-notify`, the real client (Debian's `systemd` package; `.ci/run` installs it).
fn systemd_notify() -> &'static str {
    let path = "/usr/bin/systemd-notify";
    assert!(
        Path::new(path).exists(),
        "{path} is needed (apt-get install systemd)"
    );
    path
}

#[test]
fn the_watchdog_starts_when_the_service_says_ready_1() {
    // Issue 12, point 10: a start-up longer than the watchdog period is not a hang.
    let body = format!(
        "{}{}\nafter = [\"slow\"]\n",
        notifier(
            "slow",
            &[
                "sleep:1.2",
                "READY=1",
                "WATCHDOG=1",
                "sleep:0.1",
                "WATCHDOG=1",
                "sleep:0.1",
                "WATCHDOG=1",
            ],
            "watchdog = \"400ms\"\npolicy = { kind = \"immediate\" }"
        ),
        sleeper("web").trim_end()
    );
    let ham = Ham::start("notify-slow-start", &body);
    let s = ham.wait_for("web started after slow was ready", |s| running(s, "web"));
    assert_eq!(entity(&s, "slow")["restarts"], 0, "{s}");
    // Once it is ready and stops petting, its watchdog does act.
    ham.wait_for("slow aborted once silent", |s| {
        entity(s, "slow")["restarts"].as_u64() >= Some(1)
    });
}

#[test]
fn watchdog_trigger_acts_at_once_and_watchdog_pid_names_the_main_process() {
    // Issue 12, point 11.
    let work = tempfile::tempdir().unwrap();
    let seen = work.path().join("pids");
    let script = format!(
        "import os, socket, time\\nopen('{}', 'a').write(os.environ.get('WATCHDOG_PID', '-') + ' ' + str(os.getpid()) + '\\\\n')\\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\\ns.sendto(b'READY=1', os.environ['NOTIFY_SOCKET'])\\ntime.sleep(0.2)\\ns.sendto(b'WATCHDOG=trigger', os.environ['NOTIFY_SOCKET'])\\ntime.sleep(1000)",
        seen.display()
    );
    let body = format!(
        "[[entity]]\nname = \"svc\"\ncommand = [\"python3\", \"-c\", \"{script}\"]\nnotify = true\n\
         watchdog = \"1h\"\nstop_timeout = \"2s\"\npolicy = {{ kind = \"immediate\" }}\n"
    );
    let ham = Ham::start("notify-trigger", &body);
    let s = ham.wait_for("svc aborted by its trigger and restarted", |s| {
        entity(s, "svc")["restarts"].as_u64() >= Some(1)
    });
    assert_eq!(entity(&s, "svc")["last_exit"]["signal"], 6, "{s}");
    assert!(
        ham.stderr().contains("svc: WATCHDOG=trigger"),
        "{}",
        ham.stderr()
    );
    let first = std::fs::read_to_string(&seen).unwrap();
    let (wd, pid) = first.lines().next().unwrap().split_once(' ').unwrap();
    assert_eq!(wd, pid, "WATCHDOG_PID is the main process's pid");
}

/// A shell entity whose child (a Python sd_notify sender, which sends as itself) says
/// READY=1, and `web` after it.
fn child_sender(access: &str) -> String {
    let send = SEND_READY;
    format!(
        "[[entity]]\nname = \"db\"\ncommand = [\"/bin/sh\", \"-c\", \"python3 -c \\\"{send}\\\"; exec sleep 1000\"]\n\
         notify = true\n{access}\n{}\nafter = [\"db\"]\n",
        sleeper("web").trim_end()
    )
}

#[test]
fn a_child_may_notify_only_with_notify_access_all_and_a_dropped_message_is_logged() {
    // Issue 12, point 12.
    let ham = Ham::start("notify-all", &child_sender("notify_access = \"all\""));
    ham.wait_for("web started: a child's READY=1 counted", |s| {
        running(s, "web")
    });
    drop(ham);

    let ham = Ham::start("notify-main", &child_sender(""));
    ham.wait_for("db running", |s| running(s, "db"));
    wait_until(&ham, "the dropped message said", || {
        ham.stderr()
            .contains("sd_notify message `READY=1` from pid")
    });
    let s = ham.status();
    assert_eq!(entity(&s, "web")["state"], "waiting", "{s}");
}

#[test]
fn systemd_notify_run_by_a_shell_main_process_speaks_for_it() {
    // systemd-notify (before systemd 254) sends on behalf of its parent: from a shell
    // script that is the main process, as under systemd's NotifyAccess=main.
    let notify = systemd_notify();
    let body = format!(
        "[[entity]]\nname = \"db\"\ncommand = [\"/bin/sh\", \"-c\", \"{notify} --ready; exec sleep 1000\"]\n\
         notify = true\n{}\nafter = [\"db\"]\n",
        sleeper("web").trim_end()
    );
    let ham = Ham::start("notify-shell", &body);
    ham.wait_for("web started after db's READY=1", |s| running(s, "web"));
    assert!(ham.stderr().contains("db: READY=1"), "{}", ham.stderr());
}

#[test]
fn exec_systemd_notify_from_the_main_process_is_answered_at_once() {
    // Issue 12, point 12: the main process execs systemd-notify, which sends READY=1 and
    // BARRIER=1 and waits (5 s, then fails) until ham has handled them.
    let notify = systemd_notify();
    let body = format!(
        "[[entity]]\nname = \"once\"\ncommand = [\"/bin/sh\", \"-c\", \"exec {notify} --ready\"]\n\
         notify = true\nrestart = \"never\"\n{}\nafter = [\"once\"]\n",
        sleeper("web").trim_end()
    );
    let ham = Ham::start("notify-exec", &body);
    let s = ham.wait_for("once exited, web started", |s| {
        entity(s, "once")["state"] == "exited" && running(s, "web")
    });
    assert_eq!(
        entity(&s, "once")["last_exit"]["code"],
        0,
        "systemd-notify's barrier was answered: {s}"
    );
    assert!(ham.stderr().contains("once: READY=1"), "{}", ham.stderr());
}

#[test]
fn notify_access_exec_admits_the_commands_ham_runs_for_the_entity() {
    let send = SEND_READY;
    let body = format!(
        "[[entity]]\nname = \"db\"\ncommand = [\"sleep\", \"1000\"]\nnotify = true\nnotify_access = \"exec\"\n\
         [[entity.condition]]\non = \"raise\"\n[[entity.condition.action]]\ndo = \"execute\"\n\
         command = [\"python3\", \"-c\", \"{send}\"]\n{}\nafter = [\"db\"]\n",
        sleeper("web").trim_end()
    );
    let ham = Ham::start("notify-exec-access", &body);
    ham.wait_for("db running", |s| running(s, "db"));
    assert_eq!(entity(&ham.status(), "web")["state"], "waiting");
    assert!(ham.ctl(&["raise", "db", "go"]).status.success());
    ham.wait_for("web started after the hook's READY=1", |s| {
        running(s, "web")
    });
}

#[test]
fn a_notify_flood_from_an_outsider_keeps_no_descriptor_and_stops_no_service() {
    // Any local user can write the notify socket. Datagrams carrying descriptors, forging
    // READY=1 and WATCHDOG=trigger, for 2 s: the real service keeps its watchdog, ham keeps
    // no descriptor, and the drops are said at most once a second.
    let body = notifier(
        "svc",
        &["READY=1"; 1]
            .iter()
            .copied()
            .chain(std::iter::repeat_n(["WATCHDOG=1", "sleep:0.1"], 100).flatten())
            .collect::<Vec<_>>(),
        "watchdog = \"1s\"",
    );
    let ham = Ham::start("notify-flood", &body);
    ham.wait_for("svc running", |s| running(s, "svc"));
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", ham.pid()))
            .unwrap()
            .count()
    };
    let before = fds();
    let sock = ham
        .dir
        .path()
        .join("run")
        .join(format!("{}.notify", ham.name));
    std::fs::set_permissions(ham.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        sock.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let script = format!(
        "import socket, os, array, time\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         fds = array.array('i', [os.open('/dev/null', os.O_RDONLY) for _ in range(20)])\n\
         end = time.time() + 2\n\
         while time.time() < end:\n\
         \x20   try: s.sendmsg([b'READY=1\\nWATCHDOG=trigger'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)], 0, '{}')\n\
         \x20   except OSError: time.sleep(0.001)\n",
        sock.display()
    );
    let mut flood = Command::new("python3");
    flood.args(["-c", &script]);
    std::os::unix::process::CommandExt::uid(&mut flood, 65534);
    std::os::unix::process::CommandExt::gid(&mut flood, 65534);
    let out = flood.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = ham.status();
    assert!(running(&s, "svc"), "{s}");
    assert_eq!(entity(&s, "svc")["restarts"], 0, "{s}");
    assert!(fds() <= before, "{} descriptors, {before} before", fds());
    let said = ham.stderr().matches("dropped: not a process").count();
    assert!(
        (1..=4).contains(&said),
        "{said} drop lines:\n{}",
        ham.stderr()
    );
}

#[test]
fn libsystemd_sd_notify_and_its_barrier_work_unchanged() {
    // libsystemd's own sd_notify and sd_notify_barrier (through ctypes: no header needed).
    let work = tempfile::tempdir().unwrap();
    let done = work.path().join("barrier");
    let script = format!(
        "import ctypes, time\\nl = ctypes.CDLL('libsystemd.so.0')\\n\
         assert l.sd_notify(0, b'READY=1\\\\nSTATUS=up') > 0\\n\
         r = l.sd_notify_barrier(0, ctypes.c_uint64(5000000))\\n\
         open('{}', 'w').write(str(r))\\ntime.sleep(1000)",
        done.display()
    );
    let body = format!(
        "[[entity]]\nname = \"lib\"\ncommand = [\"python3\", \"-c\", \"{script}\"]\nnotify = true\n{}\nafter = [\"lib\"]\n",
        sleeper("web").trim_end()
    );
    let ham = Ham::start("notify-libsystemd", &body);
    ham.wait_for("web started after lib's READY=1", |s| running(s, "web"));
    wait_until(&ham, "the barrier answered", || {
        std::fs::read_to_string(&done).is_ok_and(|r| r == "1")
    });
    assert!(ham.stderr().contains("lib: STATUS=up"), "{}", ham.stderr());
}

#[test]
fn dbus_daemon_says_ready_and_its_dependants_start() {
    let dbus = "/usr/bin/dbus-daemon";
    assert!(
        Path::new(dbus).exists(),
        "{dbus} is needed (apt-get install dbus-daemon)"
    );
    let work = tempfile::tempdir().unwrap();
    let address = format!("unix:path={}", work.path().join("bus").display());
    let body = format!(
        "[[entity]]\nname = \"bus\"\ncommand = [\"{dbus}\", \"--session\", \"--nofork\", \"--nopidfile\", \"--address={address}\"]\n\
         notify = true\n{}\nafter = [\"bus\"]\n",
        sleeper("web").trim_end()
    );
    let ham = Ham::start("notify-dbus", &body);
    ham.wait_for("web started after dbus-daemon's READY=1", |s| {
        running(s, "web")
    });
    assert!(ham.stderr().contains("bus: READY=1"), "{}", ham.stderr());
}
