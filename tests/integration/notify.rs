//! sd_notify: `READY=1` gates the entities that start after it; a program written for
//! systemd's watchdog that stops petting it is aborted and restarted.

use crate::util::*;

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
