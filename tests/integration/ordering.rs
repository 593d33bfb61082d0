//! `after` and `ready_after`: start order, reverse stop order, and a restart that a takeover
//! interrupts.

use std::process::{Command, Stdio};

use crate::util::*;

#[test]
fn an_entity_starts_after_its_dependency_is_ready_and_stops_before_it() {
    let work = tempfile::tempdir().unwrap();
    let order = work.path().join("order");
    // Each says when its trap is set (a SIGTERM before that kills it without a word: a
    // soak run stopped web that early).
    let up_file = |name: &str| work.path().join(format!("{name}.up"));
    let svc = |name: &str| {
        format!(
            "[\"/bin/sh\", \"-c\", \"trap 'echo {name} >> {}; exit 0' TERM; : > {}; while :; do sleep 0.05; done\"]",
            order.display(),
            up_file(name).display()
        )
    };
    let body = format!(
        "[[entity]]\nname = \"web\"\ncommand = {}\nafter = [\"db\"]\n\n\
         [[entity]]\nname = \"db\"\ncommand = {}\nready_after = \"300ms\"\n",
        svc("web"),
        svc("db")
    );
    let mut ham = Ham::start("order", &body);
    // A status read before web's start time was written shows web's uptime as 0 (clamped),
    // not as the negative it is: compare uptimes from a status taken after it.
    let s = ham.wait_for("both running", |s| {
        running(s, "db") && running(s, "web") && entity(s, "web")["uptime_ns"].as_u64() > Some(0)
    });
    let up = |n: &str| entity(&s, n)["uptime_ns"].as_u64().unwrap();
    assert!(
        up("db") >= up("web") + 300_000_000,
        "web started before db had run 300 ms: {s}"
    );
    wait_until(&ham, "both traps set", || {
        up_file("web").exists() && up_file("db").exists()
    });
    assert!(ham.ctl(&["shutdown"]).status.success());
    assert_eq!(ham.wait_exit(), 0);
    // web (which needs db) was stopped, and gone, before db was asked to stop.
    assert_eq!(std::fs::read_to_string(&order).unwrap(), "web\ndb\n");
}

#[test]
fn a_restart_interrupted_by_a_takeover_is_finished_by_the_new_ham() {
    let body = "[[entity]]\nname = \"slow\"\n\
                command = [\"/bin/sh\", \"-c\", \"trap '' TERM; while :; do sleep 0.05; done\"]\n\
                stop_timeout = \"1s\"\n";
    let mut ham = Ham::start("restart-takeover", body);
    let s = ham.wait_for("running", |s| running(s, "slow"));
    let old = pid_of(&s, "slow");
    let old_start = start_time(old).unwrap();
    let g = s["guardian"]["pid"].clone();
    // `hamctl restart` waits for the new process; the HAM dies while `slow` is stopping.
    let mut req = Command::new(HAMCTL)
        .arg("-c")
        .arg(&ham.config)
        .args(["restart", "slow"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    ham.wait_for("slow stopping", |s| {
        entity(s, "slow")["state"] == "stopping"
    });
    sigkill(ham.pid());
    ham.wait_exit();
    let s = ham.wait_for("the new HAM finished the restart", |s| {
        s["ham"]["pid"] == g && running(s, "slow") && entity(s, "slow")["pid"] != old
    });
    assert_eq!(entity(&s, "slow")["starts"], 2);
    assert_eq!(entity(&s, "slow")["restarts"], 0);
    // The old process is gone (ham waits for its exit before it starts the new one; its loop's
    // short-lived `sleep` children share its environment, so count by pid, not by scan).
    assert!(
        !alive(old, old_start),
        "the old process outlived the restart"
    );
    let _ = req.wait();
}

fn group_of_three(strategy: &str) -> String {
    format!(
        "{}{}{}[[group]]\nname = \"trio\"\nstrategy = \"{strategy}\"\nmembers = [\"a\", \"b\", \"c\"]\n",
        sleeper("a"),
        sleeper("b"),
        sleeper("c")
    )
}

#[test]
fn one_for_all_restarts_every_member_when_one_dies() {
    let ham = Ham::start("one-for-all", &group_of_three("one_for_all"));
    let s = ham.wait_for("all running", |s| {
        ["a", "b", "c"].iter().all(|n| running(s, n))
    });
    let before: Vec<i32> = ["a", "b", "c"].iter().map(|n| pid_of(&s, n)).collect();
    sigkill(before[1]);
    let s = ham.wait_for("the whole group restarted", |s| {
        ["a", "b", "c"]
            .iter()
            .all(|n| running(s, n) && entity(s, n)["restarts"] == 1)
    });
    for (n, old) in ["a", "b", "c"].iter().zip(&before) {
        assert_ne!(pid_of(&s, n), *old, "{n} kept its process");
        assert_eq!(entity_processes_n(&ham.name, n, 1).len(), 1, "{n}");
    }
}

#[test]
fn rest_for_one_restarts_the_dead_member_and_those_after_it() {
    let ham = Ham::start("rest-for-one", &group_of_three("rest_for_one"));
    let s = ham.wait_for("all running", |s| {
        ["a", "b", "c"].iter().all(|n| running(s, n))
    });
    let (a, b, c) = (pid_of(&s, "a"), pid_of(&s, "b"), pid_of(&s, "c"));
    sigkill(b);
    let s = ham.wait_for("b and c restarted", |s| {
        ["b", "c"]
            .iter()
            .all(|n| running(s, n) && entity(s, n)["restarts"] == 1)
    });
    assert_eq!(pid_of(&s, "a"), a, "a comes before b and is left alone");
    assert_eq!(entity(&s, "a")["restarts"], 0);
    assert_ne!(pid_of(&s, "b"), b);
    assert_ne!(pid_of(&s, "c"), c);
}
