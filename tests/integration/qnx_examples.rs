//! QNX's documented HAM examples (simple restart, compound restart, a heartbeating client),
//! written for ham as `examples/c/qnx_*.c`: compiled against `<ha/ham.h>` and run against
//! a real ham.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::capi::{build_c, run_c};
use crate::util::*;

/// A process standing in for a daemon that runs before anyone attaches it to ham.
fn daemon() -> (Reaped, i32) {
    let d = Reaped(Command::new("sleep").arg("1000").spawn().unwrap());
    let pid = d.0.id() as i32;
    (d, pid)
}

/// Runs a monitor example to completion; it must print "defined" and exit 0.
fn define(ham: &Ham, prog: &Path, args: &[&str]) {
    let out = run_c(ham, prog, args).output().unwrap();
    assert!(
        out.status.success(),
        "{} {args:?}: {}\n{}",
        prog.display(),
        out.status,
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "defined\n");
}

/// Kills the daemon the test started (it is the test's child) and reaps it.
fn kill_daemon(d: &mut Reaped) {
    d.0.kill().unwrap();
    d.0.wait().unwrap();
}

fn result(r: &Value) -> &str {
    r["result"].as_str().unwrap_or_default()
}

/// Paths go into command lines that ham splits like a shell: keep them plain.
fn plain(p: &Path) -> &str {
    let s = p.to_str().unwrap();
    assert!(
        !s.contains(['\'', '"', '\\', ' ', '$', '`']),
        "a test path needs quoting: {s}"
    );
    s
}

#[test]
fn qnx_simple_restart_attaches_a_running_daemon_and_restarts_it_once_with_its_command_line() {
    let work = tempfile::tempdir().unwrap();
    let prog = build_c("qnx_simple_restart", work.path());
    let ham = Ham::start("qnx-simple", &sleeper("anchor"));
    ham.wait_for("anchor running", |s| running(s, "anchor"));
    let (mut inetd, old) = daemon();
    define(&ham, &prog, &["inetd", &old.to_string(), "/bin/sleep 1000"]);
    let s = ham.wait_for("inetd attached", |s| running(s, "inetd"));
    assert_eq!(pid_of(&s, "inetd"), old);
    assert_eq!(entity(&s, "inetd")["restarts"], 0);

    kill_daemon(&mut inetd);
    let s = ham.wait_for("inetd restarted by its restart action", |s| {
        running(s, "inetd") && entity(s, "inetd")["restarts"] == 1 && pid_of(s, "inetd") != old
    });
    // The new process runs the command line the action gave, not the old daemon's.
    let new = pid_of(&s, "inetd");
    wait_until(&ham, "the restarted inetd to run /bin/sleep 1000", || {
        std::fs::read(format!("/proc/{new}/cmdline")).is_ok_and(|c| c == b"/bin/sleep\x001000\x00")
    });

    // The action is logged as it runs ("restarting inetd"), the restart it made as the
    // entity's restart ("restart 1"): each exactly once for this one death.
    let acted = |r: &Value| r["action"] == "restart" && result(r).starts_with("restarting");
    wait_until(&ham, "the restart action's record", || {
        ham.log_of("inetd").iter().any(acted)
    });
    let log = ham.log_of("inetd");
    let restarts: Vec<&Value> = log.iter().filter(|r| r["action"] == "restart").collect();
    assert_eq!(restarts.iter().filter(|r| acted(r)).count(), 1, "{log:?}");
    let made: Vec<&str> = restarts
        .iter()
        .filter(|r| !acted(r))
        .map(|r| result(r))
        .collect();
    assert_eq!(made, ["restart 1"], "{log:?}");
    assert!(
        restarts.iter().all(|r| r["condition"] == "death"),
        "{log:?}"
    );
}

#[test]
fn qnx_compound_restart_restarts_waits_for_the_daemon_to_be_ready_then_remounts() {
    let work = tempfile::tempdir().unwrap();
    let prog = build_c("qnx_compound_restart", work.path());
    let marker = work.path().join("mounts");
    let ready = work.path().join("ready");
    // The restarted daemon says it is ready by creating READYPATH, then stays up.
    let line = format!("/bin/sh -c 'touch \"{}\"; exec sleep 1000'", plain(&ready));
    let ham = Ham::start("qnx-compound", &sleeper("anchor"));
    ham.wait_for("anchor running", |s| running(s, "anchor"));
    let (mut nfs, old) = daemon();
    define(
        &ham,
        &prog,
        &[
            "fs-nfs",
            &old.to_string(),
            &line,
            plain(&marker),
            plain(&ready),
        ],
    );
    ham.wait_for("fs-nfs attached", |s| running(s, "fs-nfs"));
    let tree = text(&ham.ctl(&["status", "--tree"]).stdout);
    for name in ["restart", "settle", "ready", "not-ready", "remount"] {
        assert!(tree.contains(name), "no {name} in\n{tree}");
    }
    assert!(!ready.exists() && !marker.exists());

    kill_daemon(&mut nfs);
    wait_until(&ham, "the remount action", || {
        std::fs::read_to_string(&marker).is_ok_and(|t| t == "remounted\n")
    });
    assert!(ready.exists(), "remounted before the daemon was ready");
    let s = ham.wait_for("fs-nfs running again", |s| {
        running(s, "fs-nfs") && pid_of(s, "fs-nfs") != old
    });
    assert_eq!(entity(&s, "fs-nfs")["restarts"], 1);

    // In order: the restart, the wait that saw READYPATH, then the remount; the wait's fail
    // log never ran.
    let is_exec = |r: &Value| r["action"] == "execute" && result(r).ends_with("exited 0");
    wait_until(&ham, "the remount's record", || {
        ham.log_of("fs-nfs").iter().any(is_exec)
    });
    let log = ham.log_of("fs-nfs");
    let at = |what: &dyn Fn(&Value) -> bool| {
        let found: Vec<usize> = log
            .iter()
            .enumerate()
            .filter(|(_, r)| what(r))
            .map(|(k, _)| k)
            .collect();
        assert_eq!(found.len(), 1, "{log:?}");
        found[0]
    };
    let restart = at(&|r: &Value| r["action"] == "restart" && result(r) == "restart 1");
    let waited = at(&|r: &Value| r["action"] == "waitfor" && result(r).contains(plain(&ready)));
    let remount = at(&is_exec);
    assert!(restart < waited && waited < remount, "{log:?}");
    assert!(!log.iter().any(|r| r["action"] == "log"), "{log:?}");
}

#[test]
fn qnx_heartbeat_client_that_goes_silent_fires_its_missed_conditions_and_is_not_killed() {
    let work = tempfile::tempdir().unwrap();
    let prog = build_c("qnx_heartbeat", work.path());
    let marker = work.path().join("missed");
    let body = format!(
        "[[entity]]\nname = \"hb\"\nattach_only = true\n\
         [[entity.condition]]\non = \"heartbeat-missed-high\"\n[[entity.condition.action]]\n\
         do = \"execute\"\ncommand = [\"/bin/sh\", \"-c\", \"echo $HAM_CONDITION > {}\"]\n",
        plain(&marker)
    );
    let ham = Ham::start("qnx-heartbeat", &body);
    let mut client = Reaped(
        run_c(&ham, &prog, &["hb", "50", "5"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = client.0.id() as i32;
    let mut lines = Lines::new(client.0.stdout.take().unwrap(), "the heartbeating client");
    assert_eq!(lines.next_line(), "attached");
    let s = ham.wait_for("hb attached", |s| running(s, "hb"));
    assert_eq!(pid_of(&s, "hb"), pid);
    assert_eq!(entity(&s, "hb")["heartbeat"]["period_ns"], 50_000_000);
    assert_eq!(lines.next_line(), "stopped beating");

    // The configured condition, and the two the client added to itself, fire.
    wait_until(&ham, "the configured missed-high action", || {
        std::fs::read_to_string(&marker).is_ok_and(|t| t == "heartbeat-missed-high\n")
    });
    for said in ["hb is late", "hb is hung"] {
        wait_until(&ham, &format!("the client's log action \"{said}\""), || {
            ham.log_of("hb")
                .iter()
                .any(|r| r["action"] == "log" && result(r) == said)
        });
    }

    // Silent is not dead: ham reports a self-attached process's misses and leaves it be.
    assert!(
        client.0.try_wait().unwrap().is_none(),
        "ham killed a self-attached client for its silence"
    );
    let log = ham.log_of("hb");
    assert!(
        !log.iter()
            .any(|r| ["abort", "restart", "stop"].contains(&r["action"].as_str().unwrap_or(""))),
        "{log:?}"
    );
    let s = ham.status();
    assert!(running(&s, "hb"), "{s}");
    assert_eq!(pid_of(&s, "hb"), pid);
    assert_eq!(entity(&s, "hb")["restarts"], 0);
}
