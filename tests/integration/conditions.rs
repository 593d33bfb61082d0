//! QNX-style conditions and actions: a death runs a hook with the details in its
//! environment; a detector's raise runs an action whose failure runs its fail list.

use crate::util::*;

/// Waits for a hook to have written a whole line to `path`, and returns the file.
fn wait_for_file(ham: &Ham, path: &std::path::Path) -> String {
    let line_written = || std::fs::read_to_string(path).is_ok_and(|t| t.ends_with('\n'));
    wait_until(ham, &path.display().to_string(), line_written);
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn an_abnormal_death_runs_its_execute_action_with_the_details() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("hook");
    let body = format!(
        "{}[[entity.condition]]\non = \"abnormal-death\"\n[[entity.condition.action]]\ndo = \"execute\"\n\
         command = [\"/bin/sh\", \"-c\", \"echo $HAM_ENTITY $HAM_CONDITION $HAM_PID $HAM_EXIT_SIGNAL >> {}\"]\n",
        sleeper("web"),
        out.display()
    );
    let ham = Ham::start("cond-death", &body);
    let s = ham.wait_for("web running", |s| running(s, "web"));
    let pid = pid_of(&s, "web");
    sigkill(pid);
    assert_eq!(
        wait_for_file(&ham, &out),
        format!("web abnormal-death {pid} 9\n")
    );
    // The restart happened as usual.
    ham.wait_for("web restarted", |s| {
        running(s, "web") && entity(s, "web")["restarts"] == 1
    });
}

#[test]
fn a_raised_condition_runs_its_action_and_a_failure_runs_the_fail_list() {
    let work = tempfile::tempdir().unwrap();
    let failed = work.path().join("failed");
    let other = work.path().join("other");
    let body = format!(
        "{}[[entity.condition]]\non = \"raise\"\nclass = \"temperature\"\n\
         [[entity.condition.action]]\ndo = \"execute\"\ncommand = [\"/bin/sh\", \"-c\", \"exit 4\"]\nbreak_on_fail = true\n\
         on_fail = [{{ do = \"execute\", command = [\"/bin/sh\", \"-c\", \"echo $HAM_RAISE_CLASS $HAM_RAISE_SEVERITY $HAM_RAISE_VALUE > {f}\"] }}]\n\
         [[entity.condition.action]]\ndo = \"log\"\nmessage = \"after\"\n\n\
         [[entity.condition]]\non = \"raise\"\nclass = \"fan\"\n\
         [[entity.condition.action]]\ndo = \"execute\"\ncommand = [\"/bin/sh\", \"-c\", \"echo ran > {o}\"]\n",
        sleeper("sensor"),
        f = failed.display(),
        o = other.display()
    );
    let ham = Ham::start("cond-raise", &body);
    ham.wait_for("sensor running", |s| running(s, "sensor"));
    let out = ham.ctl(&["raise", "sensor", "temperature", "3", "92"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("1 condition(s) matched"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(wait_for_file(&ham, &failed), "temperature 3 92\n");
    // The fail list has run; break_on_fail skipped the rest (a `log` action, which would have
    // been recorded in the same turn of ham's loop as the fail list's result), and the other
    // class never fired.
    let start = std::time::Instant::now();
    let log = loop {
        let steps: Vec<(String, String)> = ham
            .log_of("sensor")
            .iter()
            .map(|r| {
                (
                    r["action"].as_str().unwrap().to_owned(),
                    r["result"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        if steps.len() >= 3 {
            break steps;
        }
        assert!(start.elapsed() < DEADLINE, "{steps:?}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(log[0].0, "raise");
    assert_eq!(log[1].0, "execute");
    assert!(
        log[1].1.contains("failed") && log[1].1.contains("code 4"),
        "{log:?}"
    );
    assert_eq!(log[2].0, "execute");
    assert!(log[2].1.ends_with("exited 0"), "{log:?}");
    assert_eq!(log.len(), 3, "{log:?}");
    assert!(!other.exists(), "a condition of another class fired");
    let out = ham.ctl(&["raise", "nobody", "x"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn an_exits_within_condition_fires_once_when_its_count_is_reached() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("burst");
    let body = format!(
        "[[entity]]\nname = \"crashy\"\ncommand = [\"/bin/sh\", \"-c\", \"exit 1\"]\n\
         policy = {{ kind = \"immediate\" }}\nbackoff = {{ kind = \"fixed\", delay = \"20ms\" }}\n\
         [[entity.condition]]\non = \"exits-within\"\ncount = 3\nwithin = \"60s\"\n\
         [[entity.condition.action]]\ndo = \"execute\"\ncommand = [\"/bin/sh\", \"-c\", \"echo $HAM_CONDITION >> {}\"]\n",
        out.display()
    );
    let ham = Ham::start("cond-window", &body);
    assert_eq!(wait_for_file(&ham, &out), "exits-within\n");
    ham.wait_for("more exits past the count", |s| {
        entity(s, "crashy")["restarts"].as_u64() >= Some(8)
    });
    // Its record: fired at the third exit only.
    let log = ham.log_of("crashy");
    let hooks = log.iter().filter(|r| r["action"] == "execute").count();
    assert_eq!(hooks, 1, "{log:?}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "exits-within\n");
}

#[test]
fn waitfor_waits_for_its_path_and_fails_at_its_timeout() {
    let work = tempfile::tempdir().unwrap();
    let ready = work.path().join("ready");
    let done = work.path().join("done");
    let body = format!(
        "{}[[entity.condition]]\non = \"raise\"\nclass = \"go\"\n\
         [[entity.condition.action]]\ndo = \"waitfor\"\npath = \"{}\"\ntimeout = \"30s\"\n\
         [[entity.condition.action]]\ndo = \"execute\"\ncommand = [\"/bin/sh\", \"-c\", \"echo done > {}\"]\n\n\
         [[entity.condition]]\non = \"raise\"\nclass = \"never\"\n\
         [[entity.condition.action]]\ndo = \"waitfor\"\npath = \"{}/never\"\ntimeout = \"100ms\"\n\
         on_fail = [{{ do = \"log\", message = \"gave up waiting\" }}]\n",
        sleeper("app"),
        ready.display(),
        done.display(),
        work.path().display()
    );
    let ham = Ham::start("waitfor", &body);
    ham.wait_for("app running", |s| running(s, "app"));
    assert!(ham.ctl(&["raise", "app", "go"]).status.success());
    // The next action waits for the path: once it exists, the run goes on.
    std::fs::write(&ready, "").unwrap();
    assert_eq!(wait_for_file(&ham, &done), "done\n");

    assert!(ham.ctl(&["raise", "app", "never"]).status.success());
    let failed = || {
        let log = ham.log_of("app");
        log.iter().any(|r| {
            r["action"] == "waitfor" && r["result"].as_str().unwrap().contains("did not appear")
        }) && log
            .iter()
            .any(|r| r["action"] == "log" && r["result"] == "gave up waiting")
    };
    wait_until(&ham, "the waitfor timeout and its fail list", failed);
}

/// SIGKILLs the HAM (the test's child) and waits for its Guardian to take over.
fn take_over(ham: &mut Ham) {
    let s = ham.status();
    let g = s["guardian"]["pid"].clone();
    sigkill(ham.pid());
    assert_eq!(ham.wait_exit(), -1);
    ham.wait_for("the guardian promoted, with a new guardian", |s| {
        s["ham"]["pid"] == g && s["ham"]["alive"] == true && s["guardian"]["alive"] == true
    });
}

#[test]
fn a_condition_that_does_not_rearm_is_pruned_by_the_first_restart_even_across_a_takeover() {
    let work = tempfile::tempdir().unwrap();
    let (once, always) = (work.path().join("once"), work.path().join("always"));
    let hook = |f: &std::path::Path| {
        format!(
            "[[entity.condition.action]]\ndo = \"execute\"\ncommand = [\"/bin/sh\", \"-c\", \"echo $HAM_CONDITION >> {}\"]\n",
            f.display()
        )
    };
    let body = format!(
        "{}[[entity.condition]]\non = \"death\"\nrearm = false\n{}[[entity.condition]]\non = \"death\"\n{}",
        sleeper("app"),
        hook(&once),
        hook(&always)
    );
    let mut ham = Ham::start("cond-rearm", &body);
    let lines = |f: &std::path::Path| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .count()
    };
    for kill in 1..=4 {
        if kill == 3 {
            take_over(&mut ham);
        }
        let s = ham.wait_for("app running", |s| running(s, "app"));
        sigkill(pid_of(&s, "app"));
        wait_until(&ham, "the re-arming condition's hook", || {
            lines(&always) == kill
        });
    }
    ham.wait_for("app running", |s| running(s, "app"));
    assert_eq!(std::fs::read_to_string(&once).unwrap(), "death\n");
}

#[test]
fn an_entitys_conditions_run_one_after_another_unless_independent() {
    let work = tempfile::tempdir().unwrap();
    let (out, gate) = (work.path().join("out"), work.path().join("gate"));
    let cond = |class: &str, independent: bool, first: &str| {
        format!(
            "[[entity.condition]]\non = \"raise\"\nclass = \"{class}\"\nindependent = {independent}\n{first}\
             [[entity.condition.action]]\ndo = \"execute\"\ncommand = [\"/bin/sh\", \"-c\", \"echo $HAM_RAISE_CLASS >> {}\"]\n",
            out.display()
        )
    };
    let wait_gate = format!(
        "[[entity.condition.action]]\ndo = \"waitfor\"\npath = \"{}\"\ntimeout = \"60s\"\n",
        gate.display()
    );
    let body = format!(
        "{}{}{}{}",
        sleeper("app"),
        cond("slow", false, &wait_gate),
        cond("queued", false, ""),
        cond("free", true, "")
    );
    let ham = Ham::start("cond-fifo", &body);
    ham.wait_for("app running", |s| running(s, "app"));
    let read = || std::fs::read_to_string(&out).unwrap_or_default();
    for class in ["slow", "queued", "free"] {
        assert!(ham.ctl(&["raise", "app", class]).status.success());
    }
    // The independent run does not wait for the slow one; the queued one does.
    wait_until(&ham, "the independent run", || read() == "free\n");
    std::fs::write(&gate, "").unwrap();
    wait_until(&ham, "the queued run after the slow one", || {
        read() == "free\nslow\nqueued\n"
    });
}

#[test]
fn a_run_now_action_runs_at_a_cold_start_and_not_again_at_a_takeover() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let body = format!(
        "{}[[entity.condition]]\non = \"death\"\n[[entity.condition.action]]\ndo = \"execute\"\nrun_now = true\n\
         command = [\"/bin/sh\", \"-c\", \"echo $HAM_CONDITION >> {}\"]\n",
        sleeper("app"),
        out.display()
    );
    let mut ham = Ham::start("cond-runnow", &body);
    let read = || std::fs::read_to_string(&out).unwrap_or_default();
    wait_until(&ham, "the run-now action", || read() == "run-now\n");
    take_over(&mut ham);
    let s = ham.wait_for("app running", |s| running(s, "app"));
    sigkill(pid_of(&s, "app"));
    wait_until(&ham, "the death action", || read().ends_with("death\n"));
    assert_eq!(read(), "run-now\ndeath\n");
}

#[test]
fn a_nowait_condition_with_a_waitfor_action_is_a_configuration_error() {
    let work = tempfile::tempdir().unwrap();
    let body = format!(
        "{}[[entity.condition]]\non = \"death\"\nnowait = true\n\
         [[entity.condition.action]]\ndo = \"waitfor\"\npath = \"/x\"\ntimeout = \"1s\"\n",
        sleeper("app")
    );
    let config = write_config(work.path(), "nowait", &body);
    let out = std::process::Command::new(HAM)
        .arg("--check-config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("entity[0].condition[0].action[0]") && err.contains("nowait"),
        "{err}"
    );
}

/// A run of three actions (a command, a wait for `gate`, a command), raised on `app`.
fn gated_run(out: &std::path::Path, gate: &std::path::Path) -> String {
    let echo = |what: &str| {
        format!(
            "[[entity.condition.action]]\ndo = \"execute\"\ncommand = [\"/bin/sh\", \"-c\", \"echo {what} >> {}\"]\n",
            out.display()
        )
    };
    format!(
        "{}[[entity.condition]]\non = \"raise\"\n{}\
         [[entity.condition.action]]\ndo = \"waitfor\"\npath = \"{}\"\ntimeout = \"60s\"\n{}",
        sleeper("app"),
        echo("a"),
        gate.display(),
        echo("b")
    )
}

#[test]
fn a_run_in_flight_is_carried_on_by_the_promoted_ham_and_nothing_is_done_twice() {
    let work = tempfile::tempdir().unwrap();
    let (out, gate) = (work.path().join("out"), work.path().join("gate"));
    let mut ham = Ham::start("run-journal", &gated_run(&out, &gate));
    ham.wait_for("app running", |s| running(s, "app"));
    assert!(ham.ctl(&["raise", "app", "go"]).status.success());
    let read = || std::fs::read_to_string(&out).unwrap_or_default();
    wait_until(&ham, "the first action", || read() == "a\n");
    take_over(&mut ham);
    std::fs::write(&gate, "").unwrap();
    wait_until(&ham, "the rest of the run", || read() == "a\nb\n");
    assert!(
        ham.stderr().contains("carrying on a `raise` run"),
        "{}",
        ham.stderr()
    );
}

#[test]
fn a_command_the_ham_died_before_releasing_runs_once_under_its_successor() {
    for fp in ["run:after-begin", "run:after-exec-pid"] {
        let work = tempfile::tempdir().unwrap();
        let (out, gate) = (work.path().join("out"), work.path().join("gate"));
        let fired = work.path().join("fired");
        let fired_s = fired.display().to_string();
        let ham = Ham::start_with(
            "run-fp",
            "",
            &gated_run(&out, &gate),
            &[("HAM_FAILPOINT", fp), ("HAM_FAILPOINT_FILE", &fired_s)],
        );
        let s = ham.wait_for("app running", |s| running(s, "app"));
        let h = s["ham"]["pid"].clone();
        std::fs::write(format!("{fired_s}.armed"), "").unwrap();
        // The HAM dies before it answers: the answer is not what is tested.
        let _ = ham.ctl(&["--timeout", "2s", "raise", "app", "go"]);
        wait_until(&ham, &format!("failpoint {fp}"), || fired.exists());
        ham.wait_for("the guardian promoted", |s| {
            s["ham"]["pid"] != h && s["ham"]["alive"] == true
        });
        let read = || std::fs::read_to_string(&out).unwrap_or_default();
        wait_until(&ham, "the first action, once", || read() == "a\n");
        std::fs::write(&gate, "").unwrap();
        wait_until(&ham, "the rest of the run", || read() == "a\nb\n");
    }
}

#[test]
fn restart_hold_off_and_stop_actions_act_on_their_entity() {
    let act = |class: &str, action: &str| {
        format!(
            "[[entity.condition]]\non = \"raise\"\nclass = \"{class}\"\n[[entity.condition.action]]\n{action}\n"
        )
    };
    let body = format!(
        "{}{}{}{}",
        sleeper("app"),
        act("restart", "do = \"restart\""),
        act("hold", "do = \"hold-off\"\ndelay = \"300ms\""),
        act("stop", "do = \"stop\"")
    );
    let ham = Ham::start("cond-actions", &body);
    let s = ham.wait_for("app running", |s| running(s, "app"));
    let first = pid_of(&s, "app");
    assert!(ham.ctl(&["raise", "app", "restart"]).status.success());
    let s = ham.wait_for("app restarted", |s| {
        running(s, "app") && entity(s, "app")["restarts"] == 1
    });
    assert_ne!(pid_of(&s, "app"), first);
    assert!(ham.ctl(&["raise", "app", "hold"]).status.success());
    ham.wait_for("app held off", |s| entity(s, "app")["state"] == "held-off");
    ham.wait_for("app running again after the hold-off", |s| {
        running(s, "app") && entity(s, "app")["restarts"] == 2
    });
    assert!(ham.ctl(&["raise", "app", "stop"]).status.success());
    let s = ham.wait_for("app stopped", |s| entity(s, "app")["state"] == "stopped");
    assert_eq!(entity(&s, "app")["restarts"], 2);
}
