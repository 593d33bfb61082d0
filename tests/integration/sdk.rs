//! The SDK against a real `ham`: heartbeats that stop fire missed-low then missed-high and
//! their actions; a detector's event through the shared-memory ring runs an action and
//! reaches a subscriber; the permission rule of the client segment and the ring.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::util::*;

pub const HAM_CLIENT: &str = env!("CARGO_BIN_EXE_ham-client");

fn client(ham: &Ham, args: &[&str]) -> Command {
    let mut c = Command::new(HAM_CLIENT);
    c.arg("-c").arg(&ham.config).args(args);
    c
}

/// The (condition, action) pairs of an entity's process log, oldest first.
fn steps(ham: &Ham, entity: &str) -> Vec<(String, String)> {
    ham.log_of(entity)
        .iter()
        .map(|r| {
            (
                r["condition"].as_str().unwrap_or_default().to_owned(),
                r["action"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn beater(name: &str, beats: u32, extra: &str) -> String {
    format!(
        "[[entity]]\nname = \"{name}\"\ncommand = [\"{HAM_CLIENT}\", \"heartbeat\", \"{name}\", \"--period\", \"40ms\", \"--low\", \"2\", \"--high\", \"4\", \"--beats\", \"{beats}\"]\nstop_timeout = \"2s\"\n{extra}\n"
    )
}

#[test]
fn a_client_that_stops_beating_fires_missed_low_then_missed_high_and_their_actions_run() {
    let work = tempfile::tempdir().unwrap();
    let marker = work.path().join("high");
    let conditions = format!(
        "[[entity.condition]]\non = \"heartbeat-missed-low\"\n\
         [[entity.condition.action]]\ndo = \"log\"\nmessage = \"late\"\n\
         [[entity.condition]]\non = \"heartbeat-missed-high\"\n\
         [[entity.condition.action]]\ndo = \"execute\"\ncommand = [\"/bin/sh\", \"-c\", \"echo $HAM_CONDITION > {}\"]\n",
        marker.display()
    );
    let ham = Ham::start("hb-missed", &beater("app", 5, &conditions));
    let s = ham.wait_for("app attached", |s| {
        entity(s, "app")["heartbeat"]["missed_high"] == 4
    });
    assert_eq!(entity(&s, "app")["heartbeat"]["period_ns"], 40_000_000);
    wait_until(&ham, "the missed-high action", || {
        std::fs::read_to_string(&marker).is_ok_and(|t| t == "heartbeat-missed-high\n")
    });
    let want = [
        ("attach", "attach"),
        ("heartbeat-missed-low", "detected"),
        ("heartbeat-missed-low", "log"),
        ("heartbeat-missed-high", "detected"),
        ("heartbeat-missed-high", "execute"),
    ];
    wait_until(&ham, "every step in the process log", || {
        steps(&ham, "app").len() >= want.len()
    });
    let got = steps(&ham, "app");
    let got: Vec<(&str, &str)> = got.iter().map(|(c, a)| (c.as_str(), a.as_str())).collect();
    // On a loaded machine a beat can itself come late while the client still beats: that
    // is a missed-low too (detected, its action run), re-armed by the next beat. Those may
    // come between the attach and the final silence; nothing else may.
    let (first, rest) = got.split_first().expect("steps");
    assert_eq!(*first, want[0], "{got:?}");
    let tail = rest.len().saturating_sub(want.len() - 1);
    assert_eq!(&rest[tail..], &want[1..], "{got:?}");
    assert!(
        rest[..tail].chunks(2).all(|c| c == [want[1], want[2]]),
        "only late beats' missed-lows before the silence: {got:?}"
    );
    // Its own condition handled the miss: the process was not restarted.
    let s = ham.status();
    assert_eq!(entity(&s, "app")["restarts"], 0);
    assert!(running(&s, "app"));
}

#[test]
fn a_missed_high_with_no_condition_of_its_own_restarts_the_hung_process() {
    let ham = Ham::start("hb-default", &beater("hung", 3, ""));
    let s = ham.wait_for("hung attached", |s| running(s, "hung"));
    let first = pid_of(&s, "hung");
    let s = ham.wait_for("hung restarted", |s| {
        entity(s, "hung")["restarts"].as_u64() >= Some(1) && running(s, "hung")
    });
    assert_ne!(pid_of(&s, "hung"), first);
    // SIGABRT first, so that a hung process leaves a core to look at.
    let log = ham.log_of("hung");
    assert!(
        log.iter()
            .any(|r| r["action"] == "abort" && r["result"] == "SIGABRT"),
        "{log:?}"
    );
}

#[test]
fn a_detector_event_through_the_ring_runs_an_action_and_reaches_a_subscriber() {
    let work = tempfile::tempdir().unwrap();
    let marker = work.path().join("raised");
    let body = format!(
        "{}[[entity.condition]]\non = \"raise\"\nclass = \"disk\"\nseverity = 2\n\
         [[entity.condition.action]]\ndo = \"notify\"\ntopic = \"db-alarm\"\n\
         [[entity.condition.action]]\ndo = \"execute\"\ncommand = [\"/bin/sh\", \"-c\", \"echo $HAM_RAISE_CLASS $HAM_RAISE_VALUE > {}\"]\n",
        sleeper("db"),
        marker.display()
    );
    let ham = Ham::start("ring-raise", &body);
    ham.wait_for("db running", |s| running(s, "db"));
    let mut sub = Reaped(
        client(&ham, &["subscribe", "db-alarm", "--count", "1"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(sub.0.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "subscribed db-alarm");
    let out = client(&ham, &["raise", "db", "disk", "2", "95"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let note: serde_json::Value =
        serde_json::from_str(&lines.next().expect("a notification").unwrap()).unwrap();
    assert_eq!(note["topic"], "db-alarm");
    assert_eq!(note["entity"], "db");
    assert_eq!(note["condition"], "raise");
    wait_until(&ham, "the execute action", || {
        std::fs::read_to_string(&marker).is_ok_and(|t| t == "disk 95\n")
    });
    assert!(sub.0.wait().unwrap().success());
    // A raise of another severity matches nothing; both went through the ring.
    let out = client(&ham, &["raise", "db", "disk", "1", "5"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = ham.wait_for("both events consumed", |s| s["ring"]["consumed"] == 2);
    assert_eq!(s["ring"]["rejected"], 0);
    let log = ham.log_of("db");
    assert!(
        log.iter()
            .any(|r| r["action"] == "notify" && r["result"] == "db-alarm: 1 subscriber(s)"),
        "{log:?}"
    );
}

#[test]
fn clients_outside_the_group_cannot_connect_and_members_may_raise_only_on_themselves() {
    // nobody:nogroup (65534) is the client group's member; 65533 is not in it.
    let body = format!("{}{}", sleeper("db"), sleeper("other"));
    let ham = Ham::start_with("ring-perm", "client_group = \"65534\"\n", &body, &[]);
    ham.wait_for("db running", |s| running(s, "db"));
    let run_as = |uid: u32, gid: u32, args: &[&str]| {
        let mut c = client(&ham, args);
        c.uid(uid).gid(gid);
        c.output().unwrap()
    };
    let out = run_as(65534, 65533, &["raise", "db", "disk"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("permission denied"),
        "{}",
        text(&out.stderr)
    );
    // A member may connect, but `db` is not the process it is: the event is rejected.
    let out = run_as(65534, 65534, &["raise", "db", "disk"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = ham.wait_for("the event rejected", |s| s["ring"]["rejected"] == 1);
    assert_eq!(
        s["ring"]["consumed"], 0,
        "a denied event is rejected, not consumed"
    );
    assert!(!ham.log_of("db").iter().any(|r| r["action"] == "raise"));
    // Nor may it attach to an entity that is not itself, or stop one.
    let out = run_as(
        65534,
        65534,
        &["heartbeat", "db", "--period", "1s", "--beats", "0"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot attach"),
        "{}",
        text(&out.stderr)
    );
    let mut stop = Command::new(HAMCTL);
    stop.arg("-c").arg(&ham.config).args(["stop", "db"]);
    stop.uid(65534).gid(65534);
    let out = stop.output().unwrap();
    assert!(
        text(&out.stderr).contains("permission denied"),
        "{}",
        text(&out.stderr)
    );
    assert!(running(&ham.status(), "db"));
}

#[test]
fn a_process_ham_did_not_start_attaches_itself_and_its_death_is_a_death() {
    let work = tempfile::tempdir().unwrap();
    let marker = work.path().join("died");
    let body = format!(
        "[[entity]]\nname = \"ext\"\nattach_only = true\n\
         [[entity.condition]]\non = \"death\"\n\
         [[entity.condition.action]]\ndo = \"execute\"\ncommand = [\"/bin/sh\", \"-c\", \"echo $HAM_PID > {}\"]\n",
        marker.display()
    );
    let ham = Ham::start("attach-self", &body);
    let s = ham.status();
    assert_eq!(entity(&s, "ext")["state"], "stopped");
    let mut ext = Reaped(
        client(&ham, &["heartbeat", "ext", "--period", "1s", "--low", "0"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(ext.0.stdout.take().unwrap()).lines();
    assert!(lines.next().unwrap().unwrap().starts_with("attached slot"));
    let pid = ext.0.id() as i32;
    let s = ham.wait_for("ext running", |s| running(s, "ext"));
    assert_eq!(pid_of(&s, "ext"), pid);
    ext.0.kill().unwrap();
    ext.0.wait().unwrap();
    wait_until(&ham, "the death action", || {
        std::fs::read_to_string(&marker).is_ok_and(|t| t == format!("{pid}\n"))
    });
    let s = ham.wait_for("ext exited, not restarted", |s| {
        entity(s, "ext")["state"] == "exited"
    });
    assert_eq!(entity(&s, "ext")["restarts"], 0);
}

#[test]
fn a_state_change_through_the_ring_fires_its_state_condition() {
    let work = tempfile::tempdir().unwrap();
    let marker = work.path().join("state");
    let body = format!(
        "{}[[entity.condition]]\non = \"state\"\nto = 3\n\
         [[entity.condition.action]]\ndo = \"execute\"\ncommand = [\"/bin/sh\", \"-c\", \"echo $HAM_CONDITION >> {}\"]\n",
        sleeper("app"),
        marker.display()
    );
    let ham = Ham::start("ring-state", &body);
    ham.wait_for("app running", |s| running(s, "app"));
    for (from, to) in [("1", "2"), ("2", "3")] {
        let out = client(&ham, &["state", "app", from, to]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    ham.wait_for("both events consumed", |s| s["ring"]["consumed"] == 2);
    wait_until(&ham, "the state action", || {
        std::fs::read_to_string(&marker).is_ok_and(|t| t == "state\n")
    });
    let states: Vec<String> = ham
        .log_of("app")
        .iter()
        .filter(|r| r["action"] == "state")
        .map(|r| r["result"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states.len(), 2, "{states:?}");
    assert!(states[1].ends_with("state 2 -> 3"), "{states:?}");
}

#[test]
fn heartbeats_and_subscriptions_carry_on_across_a_takeover_without_a_false_miss() {
    // ~2 s of beats: the takeover happens while the client beats; the one miss reported
    // must be the real one, after its last beat, found by the promoted HAM.
    let conditions = "[[entity.condition]]\non = \"heartbeat-missed-low\"\n\
                      [[entity.condition.action]]\ndo = \"notify\"\ntopic = \"late\"\n";
    let mut ham = Ham::start("hb-takeover", &beater("app", 50, conditions));
    ham.wait_for("app attached", |s| !entity(s, "app")["heartbeat"].is_null());
    let mut sub = Reaped(
        client(&ham, &["subscribe", "late", "--count", "1"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(sub.0.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "subscribed late");
    let g = ham.status()["guardian"]["pid"].clone();
    sigkill(ham.pid());
    assert_eq!(ham.wait_exit(), -1);
    ham.wait_for("the guardian promoted", |s| {
        s["ham"]["pid"] == g && s["ham"]["alive"] == true
    });
    // The subscriber reconnected to the new HAM and gets the real miss.
    let note: serde_json::Value =
        serde_json::from_str(&lines.next().expect("a notification").unwrap()).unwrap();
    assert_eq!(note["condition"], "heartbeat-missed-low");
    assert!(sub.0.wait().unwrap().success());
    let misses = || {
        ham.log_of("app")
            .iter()
            .filter(|r| r["condition"] == "heartbeat-missed-low" && r["action"] == "detected")
            .count()
    };
    // The notification can come before the log line: the HAM writes the lines about the
    // misses of one check after it has acted on them all.
    wait_until(&ham, "the miss in the process log", || misses() > 0);
    assert_eq!(misses(), 1);
}

#[test]
fn a_process_that_says_ready_through_the_sdk_releases_the_entities_after_it() {
    let work = tempfile::tempdir().unwrap();
    let gate = work.path().join("gate");
    let body = format!(
        "[[entity]]\nname = \"db\"\nwait_ready = true\n\
         command = [\"/bin/sh\", \"-c\", \"while [ ! -e {gate} ]; do sleep 0.01; done; {HAM_CLIENT} ready db && exec sleep 1000\"]\n\n\
         {}after = [\"db\"]\n",
        sleeper("web"),
        gate = gate.display()
    );
    let ham = Ham::start("sdk-ready", &body);
    let s = ham.wait_for("db running", |s| running(s, "db"));
    assert_eq!(entity(&s, "web")["state"], "waiting", "{s}");
    std::fs::write(&gate, "").unwrap();
    ham.wait_for("web started once db said ready", |s| running(s, "web"));
    assert!(ham.stderr().contains("db: ready (SDK)"), "{}", ham.stderr());
}

#[test]
fn a_signal_subscriber_is_sent_its_signal() {
    let body = format!(
        "{}[[entity.condition]]\non = \"raise\"\n[[entity.condition.action]]\ndo = \"notify\"\ntopic = \"t\"\n",
        sleeper("app")
    );
    let ham = Ham::start("sub-signal", &body);
    ham.wait_for("app running", |s| running(s, "app"));
    let mut sub = Reaped(
        client(&ham, &["subscribe", "t", "--signal", "10"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(sub.0.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "subscribed t");
    assert!(ham.ctl(&["raise", "app", "x"]).status.success());
    // SIGUSR1 at its default disposition: the subscriber dies of it.
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(sub.0.wait().unwrap().signal(), Some(10));
}

#[test]
fn a_flood_from_several_producers_is_consumed_entirely_through_a_small_ring() {
    // A 64-slot ring and 4 producers that retry when it is full: ham sleeps and is woken by
    // the doorbell many times over, and must never miss a ring.
    let ham = Ham::start_with("ring-flood", "ring_slots = 64\n", &sleeper("sink"), &[]);
    ham.wait_for("sink running", |s| running(s, "sink"));
    let loc = ham_detector_sdk::Location::from_config(&ham.config).unwrap();
    let per = 20_000;
    let producers: Vec<_> = (0..4)
        .map(|_| {
            let loc = loc.clone();
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                let c = ham_detector_sdk::Client::connect_to(&loc).unwrap();
                let mut full = 0u64;
                for v in 0..per {
                    loop {
                        match c.raise("sink", "flood", 0, v) {
                            Ok(()) => break,
                            Err(ham_detector_sdk::Error::Push(
                                ham_core::client::PushError::Full,
                            )) => {
                                full += 1;
                                // A HAM that missed its doorbell never drains the ring.
                                assert!(
                                    started.elapsed() < DEADLINE,
                                    "the ring stayed full for {DEADLINE:?}: ham stopped consuming"
                                );
                                std::thread::yield_now();
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                full
            })
        })
        .collect();
    for p in producers {
        assert!(p.join().is_ok(), "a producer failed:\n{}", ham.stderr());
    }
    let s = ham.wait_for("every event consumed", |s| s["ring"]["consumed"] == 4 * per);
    assert_eq!(s["ring"]["rejected"], 0);
    assert_eq!(s["ring"]["abandoned"], 0);
}

#[test]
fn clients_notice_nothing_of_repeated_takeovers() {
    // A client beating every 20 ms (a miss after 500 ms of silence) and a detector raising
    // without pause, while the HAM is SIGKILLed again and again: no miss is reported, no
    // event is rejected, and every event is consumed.
    let conditions = "[[entity.condition]]\non = \"heartbeat-missed-low\"\n\
                      [[entity.condition.action]]\ndo = \"log\"\nmessage = \"missed\"\n";
    let body = format!(
        "[[entity]]\nname = \"beater\"\ncommand = [\"{HAM_CLIENT}\", \"heartbeat\", \"beater\", \"--period\", \"20ms\", \"--low\", \"25\"]\n\
         {conditions}\n{}",
        sleeper("sink")
    );
    let mut ham = Ham::start("sdk-chaos", &body);
    ham.wait_for("beater attached", |s| {
        !entity(s, "beater")["heartbeat"].is_null()
    });
    let loc = ham_detector_sdk::Location::from_config(&ham.config).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (started, on_lane) = std::sync::mpsc::channel();
    let producer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let c = ham_detector_sdk::Client::connect_to(&loc).unwrap();
            // Its events go through its lane (and the takeovers must carry it on).
            let _ = started.send(c.on_lane());
            let mut pushed = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match c.raise("sink", "tick", 0, pushed as i64) {
                    Ok(()) => pushed += 1,
                    Err(ham_detector_sdk::Error::Push(ham_core::client::PushError::Full)) => {}
                    Err(e) => panic!("{e}"),
                }
                std::thread::yield_now();
            }
            pushed
        })
    };
    assert_eq!(
        on_lane.recv_timeout(DEADLINE),
        Ok(true),
        "the producer has a lane"
    );
    for k in 0..20 {
        let s = ham.status();
        let h = s["ham"]["pid"].as_i64().unwrap() as i32;
        let g = s["guardian"]["pid"].clone();
        assert!(kill_and_wait(h), "kill {k}");
        if k == 0 {
            let _ = ham.wait_exit(); // the first HAM is the test's child
        }
        ham.wait_for("the guardian promoted, with a new guardian", |s| {
            s["ham"]["pid"] == g && s["ham"]["alive"] == true && s["guardian"]["alive"] == true
        });
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let pushed = producer.join().unwrap();
    assert!(pushed > 0);
    // Every event pushed is counted exactly once (consumed, rejected or abandoned), and,
    // with no stray write and no producer dying, consumed.
    let counted = |s: &serde_json::Value| {
        ["consumed", "rejected", "abandoned"]
            .iter()
            .map(|k| s["ring"][k].as_u64().unwrap())
            .sum::<u64>()
    };
    let s = ham.wait_for(&format!("all {pushed} events counted"), |s| {
        counted(s) >= pushed
    });
    assert_eq!(counted(&s), pushed, "{s}");
    assert_eq!(s["ring"]["consumed"], pushed, "{s}");
    assert_eq!(s["ring"]["rejected"], 0, "{s}");
    assert_eq!(s["ring"]["abandoned"], 0, "{s}");
    // Nothing is counted again later.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(ham.status()["ring"], s["ring"]);
    assert_eq!(s["ham"]["failures"], 20);
    let misses = ham
        .log_of("beater")
        .iter()
        .filter(|r| r["condition"] == "heartbeat-missed-low")
        .count();
    assert_eq!(misses, 0, "a takeover looked like a missed heartbeat");
    assert_eq!(entity(&s, "beater")["restarts"], 0);
}

#[test]
fn a_thousand_attachments_at_once_all_reach_the_guardian() {
    // Each attachment hands the Guardian a pidfd; a burst fills its socket, and what does
    // not fit must wait its turn, not be dropped.
    let body: String = (0..1000)
        .map(|k| format!("[[entity]]\nname = \"a{k}\"\nattach_only = true\n"))
        .collect();
    let mut ham = Ham::start("hb-burst", &body);
    let c = ham_detector_sdk::Client::connect_to(
        &ham_detector_sdk::Location::from_config(&ham.config).unwrap(),
    )
    .unwrap();
    // One process of our own stands for all of them (ham may stop it at the end).
    let stand_in = Reaped(Command::new("sleep").arg("1000").spawn().unwrap());
    let me = stand_in.0.id() as i32;
    for k in 0..1000 {
        c.attach_pid(
            &format!("a{k}"),
            Some(me),
            std::time::Duration::from_secs(60),
            0,
            0,
        )
        .unwrap();
    }
    ham.wait_for("all attached", |s| {
        s["entities"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["state"] == "running")
    });
    assert!(
        !ham.stderr().contains("cannot hand pid"),
        "{}",
        ham.stderr()
    );
    // The promoted Guardian takes them over through the pidfds it was handed.
    let g = ham.status()["guardian"]["pid"].clone();
    sigkill(ham.pid());
    assert_eq!(ham.wait_exit(), -1);
    let s = ham.wait_for("the guardian promoted", |s| {
        s["ham"]["pid"] == g && s["ham"]["alive"] == true
    });
    let attached = s["entities"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["state"] == "running" && e["pid"] == me)
        .count();
    assert_eq!(attached, 1000);
}

#[test]
fn a_client_that_shrinks_the_client_segment_does_not_bring_ham_down() {
    // Any member of the client group can write the segment, so it can truncate it: ham
    // touching a truncated mapping gets SIGBUS. ham grows it back and carries on.
    let work = tempfile::tempdir().unwrap();
    let marker = work.path().join("raised");
    let body = format!(
        "{}[[entity.condition]]\non = \"raise\"\n[[entity.condition.action]]\ndo = \"execute\"\n\
         command = [\"/bin/sh\", \"-c\", \"echo $HAM_RAISE_CLASS >> {}\"]\n",
        sleeper("db"),
        marker.display()
    );
    let ham = Ham::start("shrink", &body);
    ham.wait_for("db running", |s| running(s, "db"));
    let path = format!("/dev/shm/ham.{}.client", ham.name);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    // ham keeps answering, and grows the segment back (its next touch of it, at the latest
    // its next liveness tick), with a valid header.
    wait_until(
        &ham,
        "the segment grown back and its header written again",
        || {
            ham.ctl(&["ping"]).status.success()
                && ham_detector_sdk::Client::connect_to(
                    &ham_detector_sdk::Location::from_config(&ham.config).unwrap(),
                )
                .is_ok()
        },
    );
    assert!(
        ham.stderr().contains("shrunk or overwritten"),
        "{}",
        ham.stderr()
    );
    let c = ham_detector_sdk::Client::connect_to(
        &ham_detector_sdk::Location::from_config(&ham.config).unwrap(),
    )
    .unwrap();
    c.raise("db", "after", 0, 0).unwrap();
    wait_until(&ham, "a raise after the repair", || {
        std::fs::read_to_string(&marker).is_ok_and(|t| t == "after\n")
    });
    assert!(running(&ham.status(), "db"));
}

#[test]
fn ham_client_takes_options_anywhere_and_a_negative_value() {
    let client = env!("CARGO_BIN_EXE_ham-client");
    let help = std::process::Command::new(client)
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success() && text(&help.stdout).contains("usage: ham-client"));
    let bad = std::process::Command::new(client)
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("raised");
    let body = format!(
        "{}[[entity.condition]]\non = \"raise\"\n[[entity.condition.action]]\ndo = \"execute\"\n\
         command = [\"/bin/sh\", \"-c\", \"echo $HAM_RAISE_SEVERITY $HAM_RAISE_VALUE > {}\"]\n",
        sleeper("db"),
        out.display()
    );
    let ham = Ham::start("client-args", &body);
    ham.wait_for("db running", |s| running(s, "db"));
    // The configuration option after the words, a negative value among them.
    let r = std::process::Command::new(client)
        .args(["raise", "db", "temp", "3", "-5", "--config"])
        .arg(&ham.config)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", text(&r.stderr));
    wait_until(&ham, "the raise's action", || {
        std::fs::read_to_string(&out).is_ok_and(|t| t == "3 -5\n")
    });
}

#[test]
fn a_client_rings_the_hams_bell_which_a_takeover_keeps_and_a_new_pair_replaces() {
    let body = format!(
        "{}[[entity.condition]]\non = \"raise\"\nclass = \"ping\"\n\
         [[entity.condition.action]]\ndo = \"notify\"\ntopic = \"pong\"\n",
        sleeper("db")
    );
    let mut ham = Ham::start("bell", &body);
    ham.wait_for("db running", |s| running(s, "db"));
    let loc = ham_detector_sdk::Location::from_config(&ham.config).unwrap();
    let c = ham_detector_sdk::Client::connect_to(&loc).unwrap();
    let seg =
        ham_core::client::ClientSegment::open(&ham_core::paths::client_segment(&ham.name)).unwrap();
    let first_bell = seg.bell_id();
    assert_ne!(first_bell, 0);
    // A raise while the HAM sleeps reaches a subscriber (whose connection, idle, does not
    // wake the HAM): the ring woke it. `rings` raises; returns the wake-ups the producer
    // rang over them, and how many of them on the bell (the rest rang the futex).
    let rings = |ham: &Ham, n: usize| -> (u64, u64) {
        let mut sub = Reaped(
            client(ham, &["subscribe", "pong", "--count", &n.to_string()])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut lines = BufReader::new(sub.0.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "subscribed pong");
        let h = seg.header();
        let before = (
            h.wakes.load(std::sync::atomic::Ordering::SeqCst),
            h.bell_rings.load(std::sync::atomic::Ordering::SeqCst),
        );
        for k in 0..n {
            // Raised once the HAM is asleep (it says so in the doorbell word), so that each
            // raise must ring.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while h.sleeping.load(std::sync::atomic::Ordering::SeqCst) & 3
                != ham_core::client::BELL_ASLEEP
            {
                assert!(std::time::Instant::now() < deadline, "the HAM never slept");
                std::thread::yield_now();
            }
            c.raise("db", "ping", 0, k as i64).unwrap();
            let note = lines.next().expect("a notification").unwrap();
            assert!(note.contains("\"topic\":\"pong\""), "{note}");
        }
        assert!(sub.0.wait().unwrap().success());
        (
            h.wakes.load(std::sync::atomic::Ordering::SeqCst) - before.0,
            h.bell_rings.load(std::sync::atomic::Ordering::SeqCst) - before.1,
        )
    };
    // (A raise can find the HAM woken for something else since it looked asleep: at least
    // one of the five rang, and every ring went to the bell.)
    let (woke, on_bell) = rings(&ham, 5);
    assert!(woke >= 1);
    assert_eq!(on_bell, woke, "the bell, not the futex, woke the HAM");

    // A takeover: the successor listens on the same bell.
    let s = ham.status();
    let (h, g) = (
        s["ham"]["pid"].as_i64().unwrap() as i32,
        s["guardian"]["pid"].clone(),
    );
    sigkill(h);
    assert_eq!(ham.wait_exit(), -1);
    ham.wait_for("the guardian promoted, with a guardian", |s| {
        s["ham"]["pid"] == g && s["guardian"]["alive"] == true
    });
    assert_eq!(seg.bell_id(), first_bell);
    let (woke, on_bell) = rings(&ham, 5);
    assert!(woke >= 1);
    assert_eq!(on_bell, woke, "the bell went on through the takeover");

    // Both die: the new pair has a bell of its own; the client's is not it, so it rings the
    // futex, and its events still come through.
    let s = ham.status();
    let (h, g) = (
        s["ham"]["pid"].as_i64().unwrap() as i32,
        s["guardian"]["pid"].as_i64().unwrap() as i32,
    );
    kill_pair(&mut ham, h, g);
    ham.spawn(&[]);
    ham.wait_for("a warm start", |s| {
        s["ham"]["pid"] == ham.pid() && running(s, "db")
    });
    // (The status shows the new HAM once it owns the segment, before it has set up its
    // clients: its bell comes a moment later.)
    wait_until(&ham, "the new HAM's bell", || seg.bell_id() != first_bell);
    assert_eq!(seg.bell_id(), first_bell + 1);
    let (woke, on_bell) = rings(&ham, 5);
    assert!(woke >= 1);
    assert_eq!(on_bell, 0, "the futex woke the HAM, not the old bell");
}
