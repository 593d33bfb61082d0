//! Deaths, restarts and exit statuses.

use serde_json::json;

use crate::util::*;

#[test]
fn three_entities_start_and_a_sigkilled_one_is_restarted() {
    let body = format!(
        "{}{}{}",
        sleeper("a"),
        sleeper("b"),
        "[[entity]]\nname = \"c\"\ncommand = [\"/bin/sh\", \"-c\", \"exit 3\"]\nrestart = \"never\"\n"
    );
    let ham = Ham::start("three", &body);
    let s = ham.wait_for("a and b running, c exited", |s| {
        running(s, "a") && running(s, "b") && entity(s, "c")["state"] == "exited"
    });
    assert_eq!(entity(&s, "c")["last_exit"], json!({"code": 3}));
    assert_eq!(entity(&s, "c")["pid"], json!(null));
    let (a, b) = (pid_of(&s, "a"), pid_of(&s, "b"));
    let a_start = start_time(a).unwrap();

    sigkill(a);
    let s = ham.wait_for("a restarted with a new pid", |s| {
        running(s, "a") && entity(s, "a")["pid"] != json!(a)
    });
    let ea = entity(&s, "a");
    assert_eq!(ea["restarts"], 1, "{s}");
    assert_eq!(ea["last_exit"], json!({"signal": 9}), "{s}");
    assert!(!alive(a, a_start), "the killed process is gone (reaped)");
    // The others were not touched.
    assert_eq!(pid_of(&s, "b"), b);
    assert_eq!(entity(&s, "b")["restarts"], 0);
    assert_eq!(entity(&s, "c")["restarts"], 0);
}

#[test]
fn exit_codes_and_signals_are_recorded_as_they_happened() {
    // Exits 3 once, then (from the marker file) waits to be killed.
    let work = tempfile::tempdir().unwrap();
    let body = format!(
        r#"
[[entity]]
name = "e"
command = ["/bin/sh", "-c", "if [ -e done ]; then exec sleep 1000; fi; touch done; exit 3"]
cwd = "{}"
"#,
        work.path().display()
    );
    let ham = Ham::start("codes", &body);
    let s = ham.wait_for("e restarted after exit 3", |s| {
        running(s, "e") && entity(s, "e")["restarts"] == 1
    });
    assert_eq!(entity(&s, "e")["last_exit"], json!({"code": 3}));
    let pid = pid_of(&s, "e");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let s = ham.wait_for("e restarted after SIGTERM", |s| {
        running(s, "e") && entity(s, "e")["restarts"] == 2
    });
    assert_eq!(entity(&s, "e")["last_exit"], json!({"signal": 15}));
}

#[test]
fn restart_modes_decide_after_clean_and_failed_exits() {
    let work = tempfile::tempdir().unwrap();
    let body = format!(
        r#"
[[entity]]
name = "clean-on-failure"
command = ["/bin/sh", "-c", "exit 0"]
restart = "on-failure"

[[entity]]
name = "never"
command = ["/bin/sh", "-c", "exit 7"]
restart = "never"

[[entity]]
name = "fails-once"
command = ["/bin/sh", "-c", "if [ -e ran ]; then exit 0; fi; touch ran; exit 1"]
restart = "on-failure"
cwd = "{}"
"#,
        work.path().display()
    );
    let ham = Ham::start("modes", &body);
    let s = ham.wait_for("all three settled", |s| {
        ["clean-on-failure", "never", "fails-once"]
            .iter()
            .all(|n| entity(s, n)["state"] == "exited")
    });
    assert_eq!(entity(&s, "clean-on-failure")["restarts"], 0);
    assert_eq!(
        entity(&s, "clean-on-failure")["last_exit"],
        json!({"code": 0})
    );
    assert_eq!(entity(&s, "never")["restarts"], 0);
    assert_eq!(entity(&s, "never")["last_exit"], json!({"code": 7}));
    // It failed (restarted once) and then exited cleanly (kept down).
    assert_eq!(entity(&s, "fails-once")["restarts"], 1);
    assert_eq!(entity(&s, "fails-once")["last_exit"], json!({"code": 0}));
}

#[test]
fn environment_cwd_and_output_file_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let out = dir.path().join("out.log");
    let body = format!(
        r#"
[[entity]]
name = "env"
command = ["/bin/sh", "-c", "echo \"$GREETING $HAM_ENTITY $HAM_INSTANCE $FROM_HAM\"; env | grep -c ^GREETING=; pwd; echo oops >&2"]
env = {{ GREETING = "hello" }}
cwd = "{}"
output = "{}"
restart = "never"
"#,
        work.display(),
        out.display()
    );
    // ham's own environment is inherited, less what the entity's `env` sets (once).
    let ham = Ham::start_with(
        "env",
        "",
        &body,
        &[("FROM_HAM", "inherited"), ("GREETING", "ham's")],
    );
    ham.wait_for("env exited", |s| entity(s, "env")["state"] == "exited");
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        text,
        format!(
            "hello env {} inherited\n1\n{}\noops\n",
            ham.name,
            work.display()
        )
    );
}

#[test]
fn a_process_that_ignores_its_stop_signal_is_killed_at_the_deadline() {
    let body = r#"
[[entity]]
name = "stubborn"
command = ["/bin/sh", "-c", "trap '' TERM; while :; do sleep 1; done"]
stop_timeout = "200ms"
"#;
    let ham = Ham::start("stubborn", body);
    ham.wait_for("running", |s| running(s, "stubborn"));
    let out = ham.ctl(&["stop", "stubborn"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = ham.status();
    assert_eq!(entity(&s, "stubborn")["state"], "stopped");
    assert_eq!(entity(&s, "stubborn")["last_exit"], json!({"signal": 9}));
}

#[test]
fn a_missing_executable_backs_off_and_recovers_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let prog = dir.path().join("prog");
    std::fs::copy("/bin/sleep", &prog).unwrap();
    let body = format!(
        "[[entity]]\nname = \"p\"\ncommand = [\"{}\", \"1000\"]\n",
        prog.display()
    );
    let ham = Ham::start("backoff", &body);
    ham.wait_for("p running", |s| running(s, "p"));
    assert!(ham.ctl(&["stop", "p"]).status.success());
    std::fs::remove_file(&prog).unwrap();

    let out = ham.ctl(&["start", "p"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "start of a missing program fails"
    );
    assert!(
        text(&out.stderr).contains("cannot start"),
        "{}",
        text(&out.stderr)
    );
    let s = ham.status();
    assert_eq!(entity(&s, "p")["state"], "backoff");

    std::fs::copy("/bin/sleep", &prog).unwrap();
    ham.wait_for("p running again after the retry", |s| running(s, "p"));
    // The daemon stayed up throughout.
    assert!(ham.ctl(&["ping"]).status.success());
}

#[test]
fn an_idle_pair_wakes_only_at_its_liveness_deadlines() {
    // liveness_timeout 4s: the HAM refreshes its liveness word and the Guardian checks it
    // every second; nothing else may wake either of them.
    let ham = Ham::start_with(
        "idle",
        "liveness_timeout = \"4s\"",
        &format!("{}{}", sleeper("a"), sleeper("b")),
        &[],
    );
    let s = ham.wait_for("both running", |s| running(s, "a") && running(s, "b"));
    let guardian = s["guardian"]["pid"].as_i64().unwrap() as i32;
    let switches = |pid: i32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .filter(|l| l.contains("ctxt_switches"))
            .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
            .sum::<u64>()
    };
    // A measurement window, not a synchronisation: nothing but one deadline each (at most
    // two, at the window's edges) may happen in it.
    let before = (switches(ham.pid()), switches(guardian));
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let after = (switches(ham.pid()), switches(guardian));
    let woke = (after.0 - before.0, after.1 - before.1);
    assert!(
        woke.0 <= 3 && woke.1 <= 3,
        "woke (ham, guardian) = {woke:?} times in 1 s"
    );
}

#[test]
fn deaths_of_one_wake_up_come_back_once_each_and_a_missing_program_backs_off() {
    // The restarts of one wake-up are released without waiting for each `execve` (they
    // exec side by side): each entity comes back once, as its own program, in one copy; one
    // whose program went missing meanwhile fails its start (backoff, said) and holds up
    // none of the others.
    let work = tempfile::tempdir().unwrap();
    let script = work.path().join("gone.sh");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 1000\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let sleepers: Vec<String> = (0..30).map(|k| format!("s{k}")).collect();
    let mut body: String = sleepers.iter().map(|n| sleeper(n)).collect();
    body += &format!(
        "[[entity]]\nname = \"gone\"\ncommand = [\"{}\"]\n",
        script.display()
    );
    let ham = Ham::start("exec-side-by-side", &body);
    let s = ham.wait_for("all running", |s| {
        sleepers.iter().all(|n| running(s, n)) && running(s, "gone")
    });
    let before: Vec<i32> = sleepers.iter().map(|n| pid_of(&s, n)).collect();
    std::fs::remove_file(&script).unwrap();
    sigkill(pid_of(&s, "gone"));
    for &p in &before {
        sigkill(p);
    }
    let s = ham.wait_for("the sleepers back, gone backing off", |s| {
        sleepers
            .iter()
            .zip(&before)
            .all(|(n, &p)| running(s, n) && pid_of(s, n) != p)
            && entity(s, "gone")["state"] == "backoff"
    });
    for n in &sleepers {
        let e = entity(&s, n);
        assert_eq!(e["restarts"], 1, "{n}: {e}");
        let pid = pid_of(&s, n);
        // Past its `execve`: the process runs `sleep`, and it is the entity's only one.
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert!(
            exe.ends_with("sleep"),
            "{n}: pid {pid} runs {}",
            exe.display()
        );
        assert_eq!(entity_processes_n(&ham.name, n, 1), vec![pid], "{n}");
    }
    let log = ham.stderr();
    assert!(
        log.contains(&format!("gone: cannot start {}", script.display())),
        "{log}"
    );
}
