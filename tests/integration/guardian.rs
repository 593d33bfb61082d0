//! The HAM/Guardian pair: takeover, replacement, fencing, warm start, failpoints.

use serde_json::{Value, json};

use crate::util::*;

fn pid_at(s: &Value, who: &str) -> i32 {
    s[who]["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no {who} pid in {s}")) as i32
}

/// The HAM's pid, the Guardian's pid and the epoch, from a status.
fn pair(s: &Value) -> (i32, i32, u64) {
    (
        pid_at(s, "ham"),
        pid_at(s, "guardian"),
        s["ham"]["epoch"].as_u64().unwrap(),
    )
}

/// The status once Guardian `g` has been promoted (alive, the HAM) and has a new, live
/// Guardian.
fn promoted(ham: &Ham, g: i32) -> Value {
    ham.wait_for("the guardian promoted, with a new guardian", |s| {
        s["ham"]["pid"] == g
            && s["ham"]["alive"] == true
            && s["guardian"]["alive"] == true
            && s["guardian"]["pid"] != g
    })
}

fn two_sleepers() -> String {
    format!("{}{}", sleeper("a"), sleeper("b"))
}

/// Two sleepers, both running, under a pair whose Guardian fences 300 ms after the first
/// event its HAM leaves unhandled: the instance and its status then.
fn quick_fencing(tag: &str) -> (Ham, Value) {
    let ham = Ham::start_with(tag, "liveness_timeout = \"300ms\"", &two_sleepers(), &[]);
    let s = ham.wait_for("both running", |s| running(s, "a") && running(s, "b"));
    (ham, s)
}

#[test]
fn a_sigkilled_ham_is_replaced_by_its_guardian_and_nothing_is_lost() {
    let mut ham = Ham::start("takeover", &two_sleepers());
    let s = ham.wait_for("both running", |s| running(s, "a") && running(s, "b"));
    let (h, g, epoch) = pair(&s);
    let (a, b) = (pid_of(&s, "a"), pid_of(&s, "b"));

    sigkill(h);
    assert_eq!(ham.wait_exit(), -1, "the HAM died of the signal");
    let s = promoted(&ham, g);
    assert_eq!(s["ham"]["epoch"], epoch + 1);
    assert_eq!(s["ham"]["failures"], 1);
    // Entities kept running, each exactly once.
    assert_eq!((pid_of(&s, "a"), pid_of(&s, "b")), (a, b));
    assert_eq!(entity_processes(&ham.name, "a"), vec![a]);
    assert_eq!(entity_processes(&ham.name, "b"), vec![b]);
    assert_eq!(entity(&s, "a")["restarts"], 0);

    // A death after the takeover (of a process the new HAM did not start) is handled, with
    // its real exit status.
    sigkill(a);
    let s = ham.wait_for("a restarted by the new HAM with its status", |s| {
        running(s, "a") && entity(s, "a")["last_exit"] == json!({"signal": 9})
    });
    assert_eq!(entity(&s, "a")["restarts"], 1);
    assert_eq!(entity_processes_n(&ham.name, "a", 1).len(), 1);
    assert!(
        ham.ctl(&["ping"]).status.success(),
        "the control socket survived"
    );
}

/// Whether Guardian `g`'s lock watcher (its thread `ham-lock`) is asleep on the lock word
/// holding HAM `h`'s id (`FUTEX_WAITERS | h`): it has seen `h` hold the lock, and will be
/// told of its death. Read from `/proc/G/task/T/syscall` (number, then arguments: the word,
/// the operation, the value waited on). A death before that look reads, to the watcher,
/// as a predecessor's mark, and is left to the pidfd.
#[cfg(debug_assertions)]
fn lock_watched(g: i32, h: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{g}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let call = std::fs::read_to_string(t.path().join("syscall")).unwrap_or_default();
        let f: Vec<&str> = call.split_whitespace().collect();
        comm.trim() == "ham-lock"
            && f.first() == Some(&libc::SYS_futex.to_string().as_str())
            && f.get(3)
                .and_then(|v| u32::from_str_radix(v.trim_start_matches("0x"), 16).ok())
                == Some(h as u32 | 0x8000_0000)
    })
}

#[cfg(debug_assertions)]
#[test]
fn the_hams_lock_alone_tells_its_guardian_of_its_death_takeover_after_takeover() {
    // The kernel tells a Guardian of its HAM's death twice: through the lock in the
    // segment's header as the HAM's exit begins, through its pidfd as it ends. Here every
    // Guardian is deaf to the pidfd (failpoint `guardian:deaf-pidfd`), and no event is left
    // unhandled for a fence to find: only the lock can bring the takeover. Twice: the
    // second HAM holds the lock as a promoted Guardian, and the watcher it ran as a Guardian
    // must be gone (the kernel wakes one waiter on the word, which a stale watcher would take).
    let work = tempfile::tempdir().unwrap();
    let fp = work.path().join("fp");
    std::fs::write(work.path().join("fp.armed"), b"").unwrap();
    let mut ham = Ham::start_with(
        "lock",
        "",
        &two_sleepers(),
        &[
            ("HAM_FAILPOINT", "guardian:deaf-pidfd"),
            ("HAM_FAILPOINT_FILE", fp.to_str().unwrap()),
        ],
    );
    let s = ham.wait_for("both running", |s| running(s, "a") && running(s, "b"));
    let (a, b) = (pid_of(&s, "a"), pid_of(&s, "b"));
    let (mut h, mut g, mut epoch) = pair(&s);
    for round in 1..=2 {
        wait_until(&ham, "the guardian watching its HAM's lock", || {
            lock_watched(g, h)
        });
        sigkill(h);
        if round == 1 {
            assert_eq!(ham.wait_exit(), -1, "the HAM died of the signal");
        }
        let s = promoted(&ham, g);
        assert_eq!(s["ham"]["epoch"], epoch + 1);
        // What a takeover says is held until its adoption is done, which the status may
        // show before: waited for.
        let told = "the HAM is gone (its lock says so)";
        wait_until(&ham, "the takeover saying what told it", || {
            ham.stderr().matches(told).count() >= round
        });
        let err = ham.stderr();
        assert_eq!(err.matches(told).count(), round, "{err}");
        assert!(!err.contains("its pidfd says so"), "{err}");
        assert!(!err.contains("fencing"), "{err}");
        assert_eq!(
            (pid_of(&s, "a"), pid_of(&s, "b")),
            (a, b),
            "nothing restarted"
        );
        (h, g, epoch) = pair(&s);
    }
}

#[test]
fn a_ham_and_an_entity_killed_at_once_the_entity_is_restarted_once_and_the_other_adopted() {
    // The Guardian tells its takeover which handed-over processes are dead (one look at its
    // epoll set): those are restarted first, every other one is adopted as it runs.
    let mut ham = Ham::start("ham-and-entity", &two_sleepers());
    let s = ham.wait_for("both running", |s| running(s, "a") && running(s, "b"));
    let (h, g, _) = pair(&s);
    let (a, b) = (pid_of(&s, "a"), pid_of(&s, "b"));
    // The Guardian holds both pidfds before the kills.
    let watching = format!("guardian: pid {g} watching HAM pid {h}");
    wait_until(&ham, "the guardian watching", || {
        ham.stderr().contains(&watching)
    });
    sigkill(h);
    sigkill(a);
    assert_eq!(ham.wait_exit(), -1);
    let s = ham.wait_for("taken over, a restarted", |s| {
        s["ham"]["pid"] == g && running(s, "a") && pid_of(s, "a") != a
    });
    assert_eq!(entity(&s, "a")["restarts"], 1, "{s}");
    assert_eq!(pid_of(&s, "b"), b, "b was adopted, not restarted");
    assert_eq!(entity(&s, "b")["restarts"], 0);
    assert_eq!(entity_processes(&ham.name, "a"), vec![pid_of(&s, "a")]);
    assert_eq!(entity_processes(&ham.name, "b"), vec![b]);
    // How a died is filled in after its restart: from its zombie, which root can read until
    // something reaps it (its parent was the HAM), or from its pidfd once reaped (Linux
    // 6.15). Without either it stays `unknown`.
    let pidfd_info = s["exit_sources"]
        .as_array()
        .is_some_and(|v| v.iter().any(|x| x == "pidfd_info_exit"));
    if nix::unistd::geteuid().is_root() && pidfd_info {
        let s = ham.wait_for("a's status learned", |s| {
            entity(s, "a")["last_exit"] == json!({"signal": 9})
        });
        assert_eq!(entity(&s, "a")["restarts"], 1, "{s}");
        // The process log says it too: in the restart's record if something had reaped a by
        // then, or in an `exit-status` record after it (written just after the status).
        let plog = ham.dir.path().join("log").join(format!("{}.log", ham.name));
        wait_until(&ham, "the process log says how a died", || {
            std::fs::read_to_string(&plog).is_ok_and(|log| {
                log.lines()
                    .any(|l| l.contains("\"entity\":\"a\"") && l.contains("\"signal\":9"))
            })
        });
    }
}

#[test]
fn a_sigkilled_guardian_is_replaced() {
    let ham = Ham::start("guardian", &two_sleepers());
    let s = ham.wait_for("both running", |s| running(s, "a") && running(s, "b"));
    let (h, g, epoch) = pair(&s);
    sigkill(g);
    let s = ham.wait_for("a new guardian", |s| {
        s["guardian"]["alive"] == true && s["guardian"]["pid"] != g
    });
    assert_eq!(pid_at(&s, "ham"), h);
    assert_eq!(s["ham"]["epoch"], epoch);
    assert_eq!(s["guardian"]["failures"], 1);
    assert_eq!(entity(&s, "a")["restarts"], 0);
}

#[test]
fn a_stopped_ham_is_fenced_and_replaced() {
    let (mut ham, s) = quick_fencing("fence");
    let (h, g, epoch) = pair(&s);
    let (a, b) = (pid_of(&s, "a"), pid_of(&s, "b"));
    // Nothing happens, so nothing is left undone: the pair has no periodic wake-up, and a
    // stopped HAM with nothing to do harms no one. Then `a` dies: the stopped HAM cannot
    // handle it, and the Guardian (which holds a's pidfd) fences it `liveness_timeout`
    // later.
    sigstop_landed(&ham, h);
    sigkill(a);
    // The stopped HAM was killed (fenced) before anyone took its place: never two HAMs.
    assert_eq!(ham.wait_exit(), -1, "the stopped HAM was killed");
    // (The promoted HAM's first records still name the dead `a` as running, until it
    // handles that death: wait for the new process.)
    let s = ham.wait_for("the guardian promoted, a restarted", |s| {
        s["ham"]["pid"] == g
            && s["ham"]["alive"] == true
            && s["guardian"]["alive"] == true
            && running(s, "a")
            && pid_of(s, "a") != a
    });
    assert_eq!(s["ham"]["epoch"], epoch + 1);
    assert_eq!(entity(&s, "a")["restarts"], 1);
    assert_eq!(pid_of(&s, "b"), b, "b was left alone");
    assert!(
        ham.stderr().contains("has not handled the death of pid")
            && ham.stderr().contains("fencing it"),
        "{}",
        ham.stderr()
    );
}

#[test]
fn a_stopped_ham_is_fenced_at_the_first_request_it_does_not_take_and_the_request_answered() {
    let (mut ham, s) = quick_fencing("fence-conn");
    let (h, g, epoch) = pair(&s);
    let a = pid_of(&s, "a");
    sigstop_landed(&ham, h);
    // The request waits on the listener the pair shares: the Guardian sees it, fences the
    // HAM that does not take it, and answers it as the new HAM.
    let out = ham.ctl(&["--timeout", "10s", "ping"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(ham.wait_exit(), -1, "the stopped HAM was killed");
    let s = ham.status();
    assert_eq!(pid_at(&s, "ham"), g);
    assert_eq!(s["ham"]["epoch"], epoch + 1);
    assert_eq!(pid_of(&s, "a"), a, "nothing restarted");
    assert!(
        ham.stderr().contains("has not taken a control connection"),
        "{}",
        ham.stderr()
    );
}

#[test]
fn a_deadline_dropped_unhandled_is_not_taken_for_a_hang() {
    // A stop arms a SIGKILL deadline (stop_timeout, 2 s); the process exits at once on
    // SIGTERM, so the deadline is dropped without the HAM ever turning at it, and the HAM
    // has nothing else to do. Its Guardian watched that deadline: it must see the HAM
    // published another (none) and not fence it.
    let (ham, s) = quick_fencing("dropped-deadline");
    let (h, _, epoch) = pair(&s);
    assert!(ham.ctl(&["stop", "a"]).status.success());
    let stopped = std::time::Instant::now();
    ham.wait_for("a stopped", |s| entity(s, "a")["state"] == "stopped");
    // Absence over a bounded window: past the dropped deadline (2 s) + liveness_timeout,
    // with a margin, nothing may have been fenced.
    while stopped.elapsed() < std::time::Duration::from_millis(3_000) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let s = ham.status();
    assert_eq!(pid_at(&s, "ham"), h, "{}", ham.stderr());
    assert_eq!(s["ham"]["epoch"], epoch, "{}", ham.stderr());
    assert!(!ham.stderr().contains("fencing"), "{}", ham.stderr());
}

#[test]
fn a_stopped_ham_with_a_deadline_is_fenced_at_it() {
    // A HAM with a deadline (a held-off entity's, here) must turn its loop after it: stopped
    // before it, it is fenced `liveness_timeout` after it, with nothing else happening.
    let body = format!(
        "{}\n[[entity]]\nname = \"held\"\ncommand = [\"/bin/false\"]\n\
         policy = {{ kind = \"switch\", exits = 1, within = \"1m\", hold_off = \"1s\", \
         holdoffs = 1000 }}\n",
        sleeper("a")
    );
    let mut ham = Ham::start_with("fence-deadline", "liveness_timeout = \"300ms\"", &body, &[]);
    let s = ham.wait_for("held held off", |s| {
        entity(s, "held")["state"] == "held-off"
    });
    let (h, g, epoch) = pair(&s);
    sigstop(h);
    assert_eq!(ham.wait_exit(), -1, "the stopped HAM was killed");
    let s = ham.wait_for("the guardian promoted", |s| {
        s["ham"]["pid"] == g && s["ham"]["alive"] == true && s["guardian"]["alive"] == true
    });
    assert_eq!(s["ham"]["epoch"], epoch + 1);
    assert!(
        ham.stderr().contains("past its deadline"),
        "{}",
        ham.stderr()
    );
}

#[test]
fn after_both_die_a_new_ham_starts_warm() {
    let mut ham = Ham::start("warm", &two_sleepers());
    let s = ham.wait_for("both running", |s| running(s, "a") && running(s, "b"));
    let (h, g, epoch) = pair(&s);
    let (a, b) = (pid_of(&s, "a"), pid_of(&s, "b"));
    assert_eq!(s["ham"]["start"], "cold");
    kill_pair(&mut ham, h, g);
    // While nobody supervises, b dies.
    sigkill(b);
    ham.spawn(&[]);
    // Once it has adopted, it says so.
    let s = ham.wait_for("a warm start with b restarted, adopted", |s| {
        s["ham"]["pid"] == ham.pid()
            && running(s, "b")
            && entity(s, "b")["restarts"] == 1
            && s["ham"]["adopting"] == false
    });
    assert_eq!(s["ham"]["start"], "warm");
    assert_eq!(s["ham"]["epoch"], epoch + 1);
    assert_eq!(
        pid_of(&s, "a"),
        a,
        "the healthy entity was re-adopted, not restarted"
    );
    assert_eq!(entity(&s, "a")["restarts"], 0);
    assert_ne!(pid_of(&s, "b"), b);
    assert_eq!(entity_processes(&ham.name, "a"), vec![a]);
    assert_eq!(entity_processes(&ham.name, "b").len(), 1);
    ham.wait_for("a new guardian", |s| s["guardian"]["alive"] == true);
}

#[test]
fn shutdown_is_not_a_crash_the_guardian_goes_too() {
    let mut ham = Ham::start("shutdown-pair", &two_sleepers());
    let s = ham.wait_for("both running", |s| running(s, "a") && running(s, "b"));
    let g = pid_at(&s, "guardian");
    let g_start = start_time(g).unwrap();
    assert!(ham.ctl(&["shutdown"]).status.success());
    assert_eq!(ham.wait_exit(), 0);
    assert!(!alive(g, g_start), "the guardian outlived the shutdown");
    assert!(entity_processes(&ham.name, "a").is_empty());
    assert!(!ham.segment_path().exists());
}

/// How a failpoint's write path is reached.
enum Trigger {
    KillEntity,
    Stop,
    KillGuardian,
    KillHam,
}

fn trigger_of(fp: &str) -> Trigger {
    match fp {
        "stop:after-record" | "stop:after-signal" => Trigger::Stop,
        "guardian:after-fork" => Trigger::KillGuardian,
        "promote:after-epoch" | "promote:after-guardian" => Trigger::KillHam,
        _ => Trigger::KillEntity,
    }
}

/// Kills the HAM at one failpoint and checks the state the pair ends in.
fn survive_failpoint(fp: &str) {
    let marks = tempfile::tempdir().unwrap();
    let fired = marks.path().join("fired");
    let fired_s = fired.display().to_string();
    let ham = Ham::start_with(
        "fp",
        "",
        &two_sleepers(),
        &[("HAM_FAILPOINT", fp), ("HAM_FAILPOINT_FILE", &fired_s)],
    );
    let s = ham.wait_for("both running", |s| running(s, "a") && running(s, "b"));
    let (h, g) = (pid_at(&s, "ham"), pid_at(&s, "guardian"));
    let (a, b) = (pid_of(&s, "a"), pid_of(&s, "b"));
    std::fs::write(format!("{fired_s}.armed"), "").unwrap();
    match trigger_of(fp) {
        Trigger::KillEntity => sigkill(a),
        Trigger::Stop => {
            // The HAM dies before answering; the answer is not what is tested.
            let _ = ham.ctl(&["--timeout", "2s", "stop", "a"]);
        }
        Trigger::KillGuardian => sigkill(g),
        Trigger::KillHam => sigkill(h),
    }
    // First the failpoint fires (the HAM kills itself there), then the pair recovers.
    wait_until(&ham, &format!("failpoint {fp} to fire"), || fired.exists());
    // One takeover, or two when the failpoint killed a HAM that was itself taking over.
    let takeovers = if let Trigger::KillHam = trigger_of(fp) {
        2
    } else {
        1
    };
    // The final epoch too: a HAM that hit its failpoint looks alive for a moment between
    // marking it fired and its SIGKILL landing.
    let s = ham.wait_for(&format!("recovery from failpoint {fp}"), |s| {
        let pair_up = s["ham"]["alive"] == true
            && s["guardian"]["alive"] == true
            && s["ham"]["pid"] != h
            && s["ham"]["epoch"] == 1 + takeovers
            // A HAM killed while adopting left the flag set; its successor clears it.
            && s["ham"]["adopting"] == false;
        let a_ok = match trigger_of(fp) {
            Trigger::KillEntity => running(s, "a") && entity(s, "a")["restarts"] == 1,
            Trigger::Stop => entity(s, "a")["state"] == "stopped",
            _ => running(s, "a"),
        };
        pair_up && a_ok
    });
    eprintln!(
        "failpoint {fp}: fired; ham pid {} (was {h}), epoch {}",
        s["ham"]["pid"], s["ham"]["epoch"]
    );
    assert_eq!(pid_of(&s, "b"), b, "{fp}: b was restarted");
    assert_eq!(entity(&s, "b")["restarts"], 0, "{fp}");
    let expected_a = match trigger_of(fp) {
        Trigger::Stop => 0,
        _ => 1,
    };
    assert_eq!(
        entity_processes_n(&ham.name, "a", expected_a).len(),
        expected_a,
        "{fp}: processes of a: status {s}"
    );
    assert_eq!(s["ham"]["epoch"], 1 + takeovers, "{fp}: {s}");
    if let Trigger::KillGuardian | Trigger::KillHam = trigger_of(fp) {
        assert_eq!(pid_of(&s, "a"), a, "{fp}: a was restarted");
    }
    assert_eq!(entity_processes(&ham.name, "b"), vec![b], "{fp}");
}

#[test]
fn a_kill_at_every_failpoint_ends_in_a_correct_state() {
    if !cfg!(debug_assertions) {
        panic!("failpoints exist in debug builds only: run the tests without --release");
    }
    for fp in ham_guardian::failpoint::ALL {
        survive_failpoint(fp);
    }
}

#[test]
fn a_promoted_ham_with_no_deadline_of_its_own_is_not_fenced_for_its_predecessors() {
    // The HAM publishes its earliest deadline in the state segment for the Guardian. A
    // promoted HAM finds its predecessor's there; with no deadline of its own it must still
    // replace it, or its Guardian waits for a turn after a deadline no one has, fences it,
    // and so on with each successor (seen once in CI: a takeover every 2 × liveness_timeout).
    let (mut ham, s) = quick_fencing("stale-deadline");
    let (h, g, epoch) = pair(&s);
    // An idle control connection makes the HAM tick (housekeeping): a deadline is published.
    let conn = std::os::unix::net::UnixStream::connect(ham.socket_path()).unwrap();
    let seg = ham_core::segment::Segment::open(
        &ham_core::paths::state_segment(&ham.name),
        ham_core::segment::Access::ReadOnly,
    )
    .unwrap();
    wait_until(&ham, "a deadline published", || {
        seg.header().deadline() != 0
    });
    sigkill(h);
    assert_eq!(ham.wait_exit(), -1);
    // The connection was the dead HAM's: its successor has nothing to tick for.
    drop(conn);
    ham.wait_for("the guardian promoted", |s| {
        s["ham"]["pid"] == g && s["ham"]["alive"] == true && s["guardian"]["alive"] == true
    });
    let promoted = std::time::Instant::now();
    wait_until(&ham, "the predecessor's deadline replaced", || {
        seg.header().deadline() == 0
    });
    // Absence over a bounded window: past twice the liveness timeout, with a margin,
    // nothing may have been fenced.
    while promoted.elapsed() < std::time::Duration::from_millis(1_500) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let s = ham.status();
    assert_eq!(pid_at(&s, "ham"), g, "{}", ham.stderr());
    assert_eq!(s["ham"]["epoch"], epoch + 1, "{}", ham.stderr());
    assert!(!ham.stderr().contains("fencing"), "{}", ham.stderr());
}

/// Eight sleepers killed at once under a HAM that takes 300 ms to handle each death
/// (failpoint `exit:slow`, debug builds), with `liveness_timeout` 1 s: the last death is
/// handled about 2.4 s after it happened. The instance, its status before the deaths, the
/// failpoint's directory, the entities' names and their dead pids.
fn a_backlog_of_deaths(tag: &str) -> (Ham, Value, tempfile::TempDir, Vec<String>, Vec<i32>) {
    let work = tempfile::tempdir().unwrap();
    let fp = work.path().join("fp");
    let names: Vec<String> = (0..8).map(|k| format!("s{k}")).collect();
    let body: String = names.iter().map(|n| sleeper(n)).collect();
    let ham = Ham::start_with(
        tag,
        "liveness_timeout = \"1s\"",
        &body,
        &[
            ("HAM_FAILPOINT", "exit:slow"),
            ("HAM_FAILPOINT_FILE", fp.to_str().unwrap()),
        ],
    );
    let s = ham.wait_for("all running", |s| names.iter().all(|n| running(s, n)));
    let pids: Vec<i32> = names.iter().map(|n| pid_of(&s, n)).collect();
    std::fs::write(work.path().join("fp.armed"), b"300").unwrap();
    for &p in &pids {
        sigkill(p);
    }
    (ham, s, work, names, pids)
}

/// How many of `pids` the HAM has said it handled the death of.
fn deaths_said(ham: &Ham, pids: &[i32]) -> usize {
    let err = ham.stderr();
    pids.iter()
        .filter(|p| err.contains(&format!("pid {p} killed by signal 9")))
        .count()
}

#[test]
fn a_ham_working_through_a_backlog_of_deaths_is_not_taken_for_a_hung_one() {
    // The HAM handles one death every 300 ms, later than `liveness_timeout` after it for the
    // last ones: it is working, not hung (at 10,000 entities a storm of 1,000 is handled so,
    // and its Guardian fenced it three times in one storm). Watched through the log, not
    // `hamctl`: the deaths of one batch are handled in one turn of the loop, and a request
    // left waiting a second is a hang of its own.
    let (ham, s, _work, names, pids) = a_backlog_of_deaths("backlog");
    let (h, _, epoch) = pair(&s);
    wait_until(&ham, "every death handled", || {
        deaths_said(&ham, &pids) == pids.len()
    });
    let s = ham.wait_for("all restarted", |s| {
        names
            .iter()
            .zip(&pids)
            .all(|(n, &p)| running(s, n) && pid_of(s, n) != p)
    });
    assert_eq!(pair(&s).0, h, "{}", ham.stderr());
    assert_eq!(s["ham"]["epoch"], epoch, "{}", ham.stderr());
    assert!(!ham.stderr().contains("fencing"), "{}", ham.stderr());
}

#[test]
fn a_ham_that_stops_in_a_backlog_of_deaths_is_fenced() {
    // The same backlog; the HAM is stopped once it has handled two deaths. It handles no
    // other: fenced `liveness_timeout` after the last it handled, and its successor restarts
    // the rest.
    // (Its status was taken before: a request during the backlog waits for the turn.)
    let (mut ham, s, work, names, pids) = a_backlog_of_deaths("backlog-stop");
    let (h, g, epoch) = pair(&s);
    wait_until(&ham, "two deaths handled", || deaths_said(&ham, &pids) >= 2);
    sigstop_landed(&ham, h);
    std::fs::remove_file(work.path().join("fp.armed")).unwrap();
    assert_eq!(ham.wait_exit(), -1, "the stopped HAM was killed");
    let s = ham.wait_for("the guardian promoted, all restarted", |s| {
        s["ham"]["pid"] == g
            && s["ham"]["alive"] == true
            && names
                .iter()
                .zip(&pids)
                .all(|(n, &p)| running(s, n) && pid_of(s, n) != p)
    });
    assert_eq!(s["ham"]["epoch"], epoch + 1);
    for n in &names {
        assert_eq!(entity(&s, n)["restarts"], 1, "{n}: {}", ham.stderr());
    }
    assert!(
        ham.stderr().contains("nor any other for"),
        "{}",
        ham.stderr()
    );
}
