//! Boot integration: ham under a service manager that speaks sd_notify (systemd's
//! `Type=notify`, with a socket the test reads standing in for systemd), under an init
//! that respawns its child (`--wait-running`), and as PID 1 of a PID namespace.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::util::*;

/// Reads datagrams from the stand-in manager's socket until one satisfies `pred`.
fn await_message(sock: &UnixDatagram, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    loop {
        let left = DEADLINE.saturating_sub(start.elapsed());
        assert!(!left.is_zero(), "no {what}; the manager got {seen:?}");
        sock.set_read_timeout(Some(left)).unwrap();
        match recv_retrying(sock, &mut buf) {
            Ok(n) => {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                if pred(&m) {
                    return m;
                }
                seen.push(m);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
}

fn has_line(m: &str, line: &str) -> bool {
    m.lines().any(|l| l == line)
}

#[test]
fn a_service_manager_hears_ready_once_entities_run_the_new_main_pid_watchdog_and_stopping() {
    // `b` waits for `a` to be ready (running 300 ms): READY=1 must wait for both.
    let body = format!(
        "{}ready_after = \"300ms\"\n\n[[entity]]\nname = \"b\"\ncommand = [\"sleep\", \"1000\"]\nafter = [\"a\"]\n",
        sleeper("a")
    );
    let mut ham = Ham::configured("sdnotify", "", &body);
    let path = ham.dir.path().join("systemd.sock");
    let manager = UnixDatagram::bind(&path).unwrap();
    ham.spawn(&[
        ("NOTIFY_SOCKET", path.to_str().unwrap()),
        ("WATCHDOG_USEC", "200000"),
    ]);
    let ready = await_message(&manager, "READY=1", |m| has_line(m, "READY=1"));
    // What READY=1 promises: the entities are started (read after it arrived).
    let s = ham.status();
    assert!(
        running(&s, "a") && running(&s, "b"),
        "READY=1 before both ran: {s}"
    );
    assert!(
        has_line(&ready, &format!("MAINPID={}", ham.pid())),
        "{ready}"
    );
    await_message(&manager, "a WATCHDOG=1", |m| m == "WATCHDOG=1");
    await_message(&manager, "another WATCHDOG=1", |m| m == "WATCHDOG=1");

    // The HAM killed: its Guardian is the main process now, and says so.
    let g = s["guardian"]["pid"].as_i64().unwrap();
    sigkill(ham.pid());
    assert_eq!(ham.wait_exit(), -1);
    let m = await_message(&manager, "MAINPID of the promoted Guardian", |m| {
        m.lines().any(|l| l.starts_with("MAINPID="))
    });
    assert!(has_line(&m, &format!("MAINPID={g}")), "{m}");
    // ... and keeps the manager's watchdog fed.
    await_message(&manager, "WATCHDOG=1 after the takeover", |m| {
        m == "WATCHDOG=1"
    });
    // The entities never see the manager's socket (they get ham's, if `notify = true`).
    let a = pid_of(&ham.status(), "a");
    let env = std::fs::read(format!("/proc/{a}/environ")).unwrap();
    assert!(
        !String::from_utf8_lossy(&env).contains("systemd.sock"),
        "an entity inherited the manager's NOTIFY_SOCKET"
    );

    let out = ham.ctl(&["shutdown"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    await_message(&manager, "STOPPING=1", |m| has_line(m, "STOPPING=1"));
}

/// `ham --config FILE --wait-running`, as an init system would respawn it.
fn respawned(ham: &Ham) -> Reaped {
    let mut cmd = ham.command(&[]);
    cmd.arg("--wait-running");
    Reaped(cmd.spawn().unwrap())
}

#[test]
fn a_respawned_ham_waits_for_the_running_instance_starts_it_warm_and_stops_it_on_sigterm() {
    let mut ham = Ham::start("respawn", &sleeper("a"));
    let s = ham.wait_for("a running", |s| running(s, "a"));
    let a = pid_of(&s, "a");
    let g = s["guardian"]["pid"].as_i64().unwrap() as i32;
    // The HAM an init system started is killed: its Guardian runs the instance now.
    sigkill(ham.pid());
    assert_eq!(ham.wait_exit(), -1);
    ham.wait_for("the guardian promoted", |s| {
        s["ham"]["pid"] == g && s["guardian"]["alive"] == true
    });
    // The init system respawns ham: it waits, rather than fail (and be respawned again).
    let mut b = respawned(&ham);
    wait_until(&ham, "the respawned ham to wait", || {
        ham.stderr()
            .contains(&format!("the instance runs (pid {g}): waiting"))
    });
    assert!(
        b.0.try_wait().unwrap().is_none(),
        "the respawned ham exited"
    );

    // Both of the pair die (the double fault): the waiting ham starts the instance warm and
    // adopts `a` where it stands.
    let s = ham.status();
    let g2 = s["guardian"]["pid"].as_i64().unwrap() as i32;
    sigstop(g2);
    assert!(kill_and_wait(g));
    assert!(kill_and_wait(g2));
    let bpid = b.0.id() as i64;
    let s = ham.wait_for("the respawned ham running the instance", |s| {
        s["ham"]["pid"] == bpid && s["guardian"]["alive"] == true
    });
    assert_eq!(s["ham"]["start"], "warm");
    assert_eq!(pid_of(&s, "a"), a, "a was adopted, not restarted");

    // Its HAM killed in turn, and another respawned ham waiting: SIGTERM to the waiting one
    // (an init system's stop) shuts the whole instance down, and it exits 0.
    let g3 = s["guardian"]["pid"].as_i64().unwrap() as i32;
    sigkill(bpid as i32);
    assert!(b.0.wait().unwrap().code().is_none());
    ham.wait_for("the guardian promoted again", |s| {
        s["ham"]["pid"] == g3 && s["guardian"]["alive"] == true
    });
    let mut c = respawned(&ham);
    wait_until(&ham, "the second respawned ham to wait", || {
        ham.stderr()
            .contains(&format!("the instance runs (pid {g3}): waiting"))
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = wait_child(&mut c.0).expect("the waiting ham exits after the shutdown");
    assert_eq!(st.code(), Some(0));
    assert!(
        !alive(a, start_time(a).unwrap_or(0)) || start_time(a).is_none(),
        "the instance's entity outlived its shutdown"
    );
    assert!(ham.try_status().is_none(), "the instance still runs");
}

#[test]
fn ham_as_pid_1_of_a_pid_namespace_reaps_orphans_and_stops_on_sigterm() {
    // `orphans` leaves a grandchild behind every 20 ms: each is reparented to PID 1 (ham)
    // and must be reaped there, or zombies pile up.
    let body = format!(
        "{}[[entity]]\nname = \"orphans\"\ncommand = [\"/bin/sh\", \"-c\", \"while :; do sh -c 'sleep 0.01 &'; echo x >> orphans.count; sleep 0.02; done\"]\ncwd = \".\"\n",
        sleeper("a")
    );
    let mut ham = Ham::configured("pid1", "", &body);
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        assert!(
            std::env::var_os("HAM_REQUIRE_PIDNS").is_none(),
            "HAM_REQUIRE_PIDNS is set and unshare --pid fails here"
        );
        eprintln!("skipping: cannot create a PID namespace here (needs CAP_SYS_ADMIN)");
        return;
    }
    let plain = ham.command(&[]);
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(plain.get_program())
        .args(plain.get_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(ham.dir.path().join("ham.stderr"))
                .unwrap(),
        );
    ham.child = Some(cmd.spawn().unwrap());
    let unshare = ham.child.as_ref().unwrap().id() as i32;
    // ham, seen from here: unshare's only child.
    let the_ham = || {
        children_of(unshare).into_iter().find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.starts_with(b"ham: HAM "))
        })
    };
    wait_until(&ham, "ham to start in the namespace", || {
        the_ham().is_some()
    });
    let ham_pid = the_ham().unwrap();
    let nspid = std::fs::read_to_string(format!("/proc/{ham_pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:").map(str::to_owned))
        .unwrap();
    assert!(
        nspid.split_whitespace().last() == Some("1"),
        "ham is not PID 1 in its namespace: NSpid {nspid}"
    );
    let count = ham.dir.path().join("orphans.count");
    wait_until(&ham, "100 orphans made", || {
        std::fs::read_to_string(&count).is_ok_and(|t| t.lines().count() >= 100)
    });
    // Every orphan is reaped: no zombie children of PID 1 stay (each lives ~10 ms).
    wait_until(&ham, "no zombie left under ham", || {
        zombies_of(ham_pid).is_empty()
    });
    // The guardian is replaced inside the namespace like anywhere else.
    let guardian = children_of(ham_pid)
        .into_iter()
        .find(|&p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.starts_with(b"ham: guardian "))
        })
        .expect("a guardian under ham");
    assert!(kill_and_wait(guardian));
    wait_until(&ham, "a new guardian", || {
        children_of(ham_pid).into_iter().any(|p| {
            p != guardian
                && std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| c.starts_with(b"ham: guardian "))
        })
    });
    // SIGTERM (a container runtime's stop) shuts it down in order; PID 1's exit ends the
    // namespace and unshare reports ham's exit code.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ham_pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(ham.wait_exit(), 0, "{}", ham.stderr());
    assert!(
        ham.stderr().contains("all entities stopped"),
        "{}",
        ham.stderr()
    );
}

/// A SIGCHLD that names an entity's process can stand for an orphan's death as well
/// (signals of one kind merge while pending). The HAM no longer walks every child at each
/// entity death (a SIGCHLD naming a child it reaped already waits for a sweep a second
/// later): the orphans still go. Each round kills an entity's process group at once (its
/// shell and the shell's background child, which ham inherits as subreaper as its parent
/// dies), and at the end no zombie is left under the HAM.
#[test]
fn orphans_that_die_with_their_entity_are_reaped_too() {
    let body = "[[entity]]\nname = \"family\"\ncommand = [\"/bin/sh\", \"-c\", \"sleep 1000 & \
                echo started >> family.count; wait\"]\ncwd = \".\"\n\
                policy = { kind = \"immediate\" }\n";
    let ham = Ham::start("orph", body);
    let count = ham.dir.path().join("family.count");
    let started = || {
        std::fs::read_to_string(&count)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let ham_pid = ham.pid();
    for round in 1..=10 {
        wait_until(&ham, &format!("start {round}"), || started() >= round);
        let s = ham.wait_for("the entity running", |s| running(s, "family"));
        let pid = pid_of(&s, "family");
        // Its own process group (ham starts every entity in one): the shell and its child.
        nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        wait_until(&ham, "the entity's restart", || {
            ham.try_status()
                .is_some_and(|s| running(&s, "family") && pid_of(&s, "family") != pid)
        });
    }
    wait_until(&ham, "no zombie left under the HAM", || {
        zombies_of(ham_pid).is_empty()
    });
}

/// The children of `pid` (from /proc/PID/task/*/children).
fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The children of `pid` that are zombies.
fn zombies_of(pid: i32) -> Vec<i32> {
    children_of(pid)
        .into_iter()
        .filter(|c| {
            std::fs::read_to_string(format!("/proc/{c}/stat"))
                .is_ok_and(|s| s.rsplit(") ").next().is_some_and(|r| r.starts_with('Z')))
        })
        .collect()
}

#[test]
fn on_an_older_kernel_the_fallbacks_keep_supervision_whole() {
    // HAM_KERNEL_COMPAT=5.4: no clone3 into a cgroup (children are moved), no PIDFD_INFO_EXIT
    // (exit statuses of orphans from the proc connector, or unknown).
    let mut ham = Ham::configured("compat", "", &format!("{}{}", sleeper("a"), sleeper("b")));
    ham.spawn(&[("HAM_KERNEL_COMPAT", "5.4")]);
    let s = ham.wait_for("both running", |s| {
        running(s, "a") && running(s, "b") && s["guardian"]["alive"] == true
    });
    let err = ham.stderr();
    assert!(err.contains("acting as 5.4 (HAM_KERNEL_COMPAT)"), "{err}");
    assert!(err.contains("PIDFD_INFO_EXIT needs 6.15"), "{err}");
    let sources: Vec<&str> = s["exit_sources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(!sources.contains(&"pidfd_info_exit"), "{sources:?}");
    if entity(&s, "a")["tracking"] == "cgroup" {
        // Moved into its cgroup after the fork, as on 5.4.
        assert!(err.contains("clone3 into a cgroup needs 5.7"), "{err}");
        let a = pid_of(&s, "a");
        let cg = std::fs::read_to_string(format!("/proc/{a}/cgroup")).unwrap();
        assert!(
            cg.trim_end().ends_with(&format!("/ham.{}/a", ham.name)),
            "a is not in its cgroup: {cg}"
        );
    }
    // The HAM killed, then b: the promoted Guardian is not b's parent, so without
    // PIDFD_INFO_EXIT b's exit status comes from the proc connector where it runs, or is
    // `unknown`; either way b is restarted.
    let (h, a, b) = (ham.pid(), pid_of(&s, "a"), pid_of(&s, "b"));
    let g = s["guardian"]["pid"].clone();
    sigkill(h);
    assert_eq!(ham.wait_exit(), -1);
    ham.wait_for("the guardian promoted", |s| {
        s["ham"]["pid"] == g && s["guardian"]["alive"] == true
    });
    let killed = serde_json::json!({"signal": 9});
    let unknown = serde_json::json!({"unknown": true});
    let connector = sources.contains(&"proc_connector");
    sigkill(b);
    let s = ham.wait_for("b restarted under the promoted guardian", |s| {
        running(s, "b")
            && entity(s, "b")["restarts"] == 1
            && (!connector || entity(s, "b")["last_exit"] == killed)
    });
    let last = &entity(&s, "b")["last_exit"];
    assert_eq!(last, if connector { &killed } else { &unknown });
    assert_eq!(pid_of(&s, "a"), a, "a was adopted, not restarted");
    // a is still adopted after b's death changed what the connector is read for.
    sigkill(a);
    let s = ham.wait_for("a restarted with what is known of its exit", |s| {
        running(s, "a")
            && entity(s, "a")["restarts"] == 1
            && (!connector || entity(s, "a")["last_exit"] == killed)
    });
    let last = &entity(&s, "a")["last_exit"];
    assert_eq!(last, if connector { &killed } else { &unknown });
}
