//! QNX HAM programs work as QNX's documentation says (issue 12): each test runs
//! `tests/c/qnx_client.c`, a C program built against `<ha/ham.h>`, against a real ham.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::capi::{build_c_at, run_c};
use crate::util::*;

fn client(dir: &Path) -> PathBuf {
    build_c_at("tests/c/qnx_client.c", dir)
}

/// Runs the client to completion and checks it printed `expect`.
fn run_ok(ham: &Ham, prog: &Path, args: &[&str], expect: &str) {
    let out = run_c(ham, prog, args).output().unwrap();
    assert!(
        out.status.success() && text(&out.stdout).trim_end() == expect,
        "qnx_client {args:?}: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn victim() -> Reaped {
    Reaped(Command::new("sleep").arg("1000").spawn().unwrap())
}

fn kill(mut v: Reaped) {
    v.0.kill().unwrap();
    v.0.wait().unwrap();
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Kills (by pid) whatever still runs as `entity` of this instance when dropped: processes
/// a detach left unsupervised.
struct Leftovers<'a>(&'a Ham, &'a str);
impl Drop for Leftovers<'_> {
    fn drop(&mut self) {
        for pid in entity_processes(&self.0.name, self.1) {
            kill_and_wait(pid);
        }
    }
}

#[test]
fn a_restart_action_fires_condrestart_once_with_the_new_pid() {
    let work = tempfile::tempdir().unwrap();
    let prog = client(work.path());
    let marker = work.path().join("events");
    let ham = Ham::start("qnx-once", &sleeper("anchor"));
    ham.wait_for("anchor running", |s| running(s, "anchor"));
    let v = victim();
    let vpid = v.0.id().to_string();
    let m = marker.to_str().unwrap();
    run_ok(
        &ham,
        &prog,
        &["restart-once", "victim", &vpid, m],
        "defined",
    );
    kill(v);
    let s = ham.wait_for("victim restarted", |s| {
        running(s, "victim") && entity(s, "victim")["restarts"] == 1
    });
    let new = pid_of(&s, "victim");
    // The sentinel's run queues behind every run the death and the restart queued.
    let out = ham.ctl(&["raise", "victim", "poke"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until(&ham, "the sentinel", || {
        lines_of(&marker).last().map(String::as_str) == Some("end")
    });
    let mut lines = lines_of(&marker);
    lines.pop();
    lines.sort();
    // CONDANY fired for the death, the restart and the raise: once each.
    assert_eq!(
        lines,
        [
            "any any".to_owned(),
            "any any".to_owned(),
            "any any".to_owned(),
            format!("restart {new}"),
        ],
        "one restart, one CONDRESTART (with the new pid), one CONDANY per event"
    );
}

#[test]
fn a_restart_action_goes_through_the_recovery_policy() {
    let work = tempfile::tempdir().unwrap();
    let prog = client(work.path());
    let ham = Ham::start("qnx-storm", &sleeper("anchor"));
    ham.wait_for("anchor running", |s| running(s, "anchor"));
    let v = victim();
    run_ok(
        &ham,
        &prog,
        &["storm", "crasher", &v.0.id().to_string()],
        "defined",
    );
    kill(v);
    // The default policy (5 exits in 2 minutes) holds it off instead of a restart loop.
    let s = ham.wait_for("crasher held off", |s| {
        entity(s, "crasher")["state"] == "held-off"
    });
    let restarts = entity(&s, "crasher")["restarts"].as_u64().unwrap();
    assert!((1..=5).contains(&restarts), "{s}");
    assert!(ham.stderr().contains("held off"), "{}", ham.stderr());
    // And it stays held off: nothing restarts it meanwhile.
    let s = ham.status();
    assert_eq!(entity(&s, "crasher")["restarts"].as_u64(), Some(restarts));
}

#[test]
fn detach_removes_a_run_time_entity_so_the_name_can_be_attached_again() {
    let work = tempfile::tempdir().unwrap();
    let prog = client(work.path());
    let ham = Ham::start("qnx-reattach", &sleeper("anchor"));
    ham.wait_for("anchor running", |s| running(s, "anchor"));
    let (a, b) = (victim(), victim());
    let (pa, pb) = (a.0.id() as i32, b.0.id() as i32);
    // 20 times around: slots and definitions are reused, not used up.
    let args = [
        "reattach",
        "watched",
        &pa.to_string(),
        &pb.to_string(),
        "20",
    ];
    run_ok(&ham, &prog, &args, "attached");
    let s = ham.status();
    assert_eq!(pid_of(&s, "watched"), pb, "{s}");
    assert_eq!(s["entities"].as_array().unwrap().len(), 2, "{s}");
    // Detaching does not kill: the first process was only watched.
    assert!(alive(pa, start_time(pa).unwrap()));

    // An entity ham runs from a line, detached and attached again.
    let _left = Leftovers(&ham, "liner");
    run_ok(&ham, &prog, &["line", "liner", "3"], "attached");
    let s = ham.wait_for("liner running", |s| running(s, "liner"));
    assert_eq!(entity(&s, "liner")["starts"], 1, "{s}");
    assert_eq!(s["entities"].as_array().unwrap().len(), 3, "{s}");
    // The detached ones go on running, unsupervised (counted once /proc shows the newest
    // one's environment: just past its execve it reads empty).
    assert_eq!(entity_processes_n(&ham.name, "liner", 4).len(), 4);
    drop((a, b));
}

#[test]
fn a_self_attached_service_restarted_by_ham_starts_again_and_its_silence_is_its_own() {
    let work = tempfile::tempdir().unwrap();
    let prog = client(work.path());
    let marker = work.path().join("svc");
    let m = marker.to_str().unwrap();
    let ham = Ham::start("qnx-service", &sleeper("anchor"));
    ham.wait_for("anchor running", |s| running(s, "anchor"));
    let first = Reaped(
        run_c(&ham, &prog, &["service", "svc", m, "1000000"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let p1 = first.0.id();
    wait_until(&ham, "the service ready", || {
        lines_of(&marker).contains(&format!("ready {p1}"))
    });
    // A monitor: when it dies, ham restarts it with a line that beats 5 times, then stops.
    let line = format!("{} service svc {m} 5", prog.display());
    run_ok(&ham, &prog, &["respawn", "svc", &line], "defined");
    kill(first);
    let s = ham.wait_for("svc restarted by its restart action", |s| {
        running(s, "svc") && entity(s, "svc")["restarts"] == 1
    });
    let p2 = pid_of(&s, "svc");
    // It re-added its own death condition (the same one): accepted, and it got going.
    wait_until(&ham, "the restarted service ready, then silent", || {
        let l = lines_of(&marker);
        l.contains(&format!("ready {p2}")) && l.last().map(String::as_str) == Some("silent")
    });
    wait_until(&ham, "its missed-high detected", || {
        ham.log_of("svc")
            .iter()
            .any(|r| r["condition"] == "heartbeat-missed-high" && r["action"] == "detected")
    });
    // A self-attached entity's silence is for its conditions: ham does not abort it, the
    // same as before its restart.
    let s = ham.status();
    let e = entity(&s, "svc");
    assert_eq!(e["pid"], p2, "{s}");
    assert_eq!(e["restarts"], 1, "{s}");
    assert_eq!(e["starts"], 1, "ham started its process once: {s}");
    assert!(alive(p2, start_time(p2).unwrap()));
    assert!(
        !ham.log_of("svc").iter().any(|r| r["action"] == "abort"),
        "{:?}",
        ham.log_of("svc")
    );
    let _left = Leftovers(&ham, "svc");
}

#[test]
fn a_program_that_is_not_there_yet_is_accepted_and_fails_when_it_runs() {
    let work = tempfile::tempdir().unwrap();
    let prog = client(work.path());
    let later = work.path().join("later.sh");
    let marker = work.path().join("failed");
    let ham = Ham::start("qnx-late", &sleeper("anchor"));
    ham.wait_for("anchor running", |s| running(s, "anchor"));
    let v = victim();
    let args = [
        "late",
        "watched",
        &v.0.id().to_string(),
        later.to_str().unwrap(),
        marker.to_str().unwrap(),
    ];
    run_ok(&ham, &prog, &args, "defined");
    kill(v);
    // Both actions fail at run time: their fail lists run.
    wait_until(&ham, "both fail lists", || {
        let mut l = lines_of(&marker);
        l.sort();
        l == ["hook-failed", "restart-failed"]
    });
    // Once the program is there, ham's retries start it.
    std::fs::write(&later, "#!/bin/sh\nexec sleep 1000\n").unwrap();
    std::fs::set_permissions(&later, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let _left = Leftovers(&ham, "watched");
    ham.wait_for("watched started from the new program", |s| {
        running(s, "watched")
    });
}

#[test]
fn a_self_attachment_without_heartbeat_and_its_death_are_logged_as_they_are() {
    let work = tempfile::tempdir().unwrap();
    let prog = client(work.path());
    let ham = Ham::start("qnx-nobeat", &sleeper("anchor"));
    ham.wait_for("anchor running", |s| running(s, "anchor"));
    let mut c = Reaped(
        run_c(&ham, &prog, &["nobeat", "quiet"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = c.0.id();
    let mut out = Lines::new(c.0.stdout.take().unwrap(), "the C client");
    assert_eq!(out.next_line(), "attached");
    let said = format!("quiet: attached: pid {pid}, no heartbeat");
    assert!(ham.stderr().contains(&said), "{}", ham.stderr());
    c.0.kill().unwrap();
    c.0.wait().unwrap();
    // Its exit status reaches the process log, whenever ham learns it.
    wait_until(&ham, "the death's signal in the process log", || {
        ham.log_of("quiet").iter().any(|r| r["exit"]["signal"] == 9)
    });
    ham.wait_for("status agrees", |s| {
        entity(s, "quiet")["last_exit"]["signal"] == 9
    });
}

#[test]
fn a_waitfor_without_a_path_is_a_delay() {
    let work = tempfile::tempdir().unwrap();
    let prog = client(work.path());
    let ham = Ham::start("qnx-waitfor", &sleeper("w"));
    let s = ham.wait_for("w running", |s| running(s, "w"));
    run_ok(&ham, &prog, &["waitfor", "w"], "defined");
    sigkill(pid_of(&s, "w"));
    wait_until(&ham, "the delay ran", || {
        ham.log_of("w")
            .iter()
            .any(|r| r["condition"] == "death" && r["action"] == "delay")
    });
}

#[test]
fn a_c_client_receives_pulses_on_a_descriptor_across_a_takeover() {
    let work = tempfile::tempdir().unwrap();
    let prog = client(work.path());
    let mut ham = Ham::start("qnx-pulse", &sleeper("src"));
    let s = ham.wait_for("src running", |s| running(s, "src"));
    let src = pid_of(&s, "src");
    let mut w = Reaped(
        run_c(&ham, &prog, &["pulse-wait", "7", "2"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = Lines::new(w.0.stdout.take().unwrap(), "the pulse waiter");
    assert_eq!(out.next_line(), "open");
    run_ok(
        &ham,
        &prog,
        &["pulse-define", "src", "7", "42", "99"],
        "defined",
    );
    assert!(ham.ctl(&["raise", "src", "poke"]).status.success());
    let want = format!("pulse 7 42 99 src raise {src}");
    assert_eq!(out.next_line(), want);
    // The HAM dies; the descriptor stays the client's, and the next pulse comes through.
    let g = ham.status()["guardian"]["pid"].clone();
    sigkill(ham.pid());
    ham.wait_exit();
    ham.wait_for("the guardian promoted", |s| {
        s["ham"]["pid"] == g && s["ham"]["alive"] == true
    });
    // A pulse goes to the subscribers of the moment: wait until the client has subscribed
    // again with the new HAM (a raise before that reaches no one).
    assert_eq!(out.next_line(), "reconnected");
    assert!(ham.ctl(&["raise", "src", "poke"]).status.success());
    assert_eq!(out.next_line(), want);
    assert!(wait_child(&mut w.0).is_some_and(|s| s.success()));
}
