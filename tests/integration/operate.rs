//! What an operator sees: process names in `ps`/`top`, `hamctl`'s answers to mistakes.

use std::os::unix::process::CommandExt;

use crate::util::*;

/// `/proc/PID/cmdline` as `ps` shows it (NULs as spaces, trailing ones dropped), and `comm`.
fn names(pid: i32) -> (String, String) {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let shown = String::from_utf8_lossy(&cmdline)
        .replace('\0', " ")
        .trim_end()
        .to_owned();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    (shown, comm.trim_end().to_owned())
}

#[test]
fn the_pair_is_named_ham_hams_and_guardian_in_ps_and_top_and_after_a_takeover() {
    let mut ham = Ham::start("names", &sleeper("a"));
    let s = ham.wait_for("a running", |s| running(s, "a"));
    let (h, g) = (
        s["ham"]["pid"].as_i64().unwrap() as i32,
        s["guardian"]["pid"].as_i64().unwrap() as i32,
    );
    let n = ham.name.clone();
    assert_eq!(names(h), (format!("ham: HAM {n}"), "ham".into()));
    // A new Guardian names itself once it runs (its pid is recorded at its fork).
    let guardian = (format!("ham: guardian {n}"), "ham".to_owned());
    wait_until(&ham, "the guardian's name", || names(g) == guardian);
    sigkill(h);
    assert_eq!(ham.wait_exit(), -1);
    let s = ham.wait_for("the guardian promoted", |s| {
        s["ham"]["pid"] == g && s["guardian"]["alive"] == true
    });
    let g2 = s["guardian"]["pid"].as_i64().unwrap() as i32;
    // The promoted Guardian's command line no longer names a Guardian or a dead pid.
    assert_eq!(names(g), (format!("ham: HAM {n}"), "ham".into()));
    wait_until(&ham, "the new guardian's name", || names(g2) == guardian);
}

fn hamctl(args: &[&str]) -> std::process::Output {
    std::process::Command::new(HAMCTL)
        .args(args)
        .env("HAM_CONFIG", "/nonexistent/ham.toml")
        .output()
        .unwrap()
}

#[test]
fn hamctl_answers_mistakes_plainly_and_briefly() {
    // Alone: the help, on stdout.
    let out = hamctl(&[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).starts_with("usage: hamctl "));
    // --version needs no configuration.
    let out = hamctl(&["--version"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("hamctl {}", env!("CARGO_PKG_VERSION"))
    );
    // A missing entity is named as missing, in a few lines rather than the whole help.
    let out = hamctl(&["stop"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("hamctl: stop: which entity? (hamctl stop ENTITY)"),
        "{err}"
    );
    assert!(err.lines().count() <= 4, "{err}");
    assert!(err.contains("--help"), "{err}");
}

#[test]
fn hamctl_says_permission_denied_and_which_configuration_an_instance_runs() {
    let ham = Ham::start("ops", &sleeper("a"));
    ham.wait_for("a running", |s| running(s, "a"));
    // An outsider (not root, not ham's user, not in client_group).
    let config = ham.config.to_str().unwrap().to_owned();
    for cmd in ["ping", "status"] {
        let out = std::process::Command::new(HAMCTL)
            .args(["-c", &config, cmd])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{cmd}");
        let err = text(&out.stderr);
        assert!(err.contains("permission denied"), "{cmd}: {err}");
        assert!(!err.contains("is ham running"), "{cmd}: {err}");
    }
    // The same instance named by another file: the answer is the running one's, and
    // hamctl says so.
    let other = ham.dir.path().join("other.toml");
    std::fs::copy(&ham.config, &other).unwrap();
    let out = std::process::Command::new(HAMCTL)
        .arg("-c")
        .arg(&other)
        .arg("ping")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "instance `{}` runs {}, not {}",
            ham.name,
            ham.config.display(),
            other.display()
        )),
        "{err}"
    );
    // With its own file: no note.
    let out = ham.ctl(&["ping"]);
    assert!(!text(&out.stderr).contains("note"), "{}", text(&out.stderr));
}

#[test]
fn the_process_log_and_status_tell_takeovers_guardian_replacements_and_failed_starts() {
    let script = "#!/bin/sh\nexec sleep 1000\n";
    let mut ham = Ham::configured(
        "oplog",
        "",
        &format!(
            "{}[[entity]]\nname = \"b\"\ncommand = [\"./b.sh\"]\n",
            sleeper("a")
        ),
    );
    let b_path = ham.dir.path().join("b.sh");
    std::fs::write(&b_path, script).unwrap();
    std::fs::set_permissions(&b_path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    ham.spawn(&[]);
    let s = ham.wait_for("a and b running", |s| {
        running(s, "a") && running(s, "b") && s["guardian"]["alive"] == true
    });
    // b's program disappears, then b dies: its restarts fail, and say why.
    std::fs::remove_file(&b_path).unwrap();
    sigkill(pid_of(&s, "b"));
    let s = ham.wait_for("b in backoff", |s| entity(s, "b")["state"] == "backoff");
    let out = ham.ctl(&["status"]);
    let table = text(&out.stdout);
    assert!(
        table.contains("b: backoff: cannot start") && table.contains("b.sh"),
        "{table}"
    );
    assert!(
        table.contains("signal 9 ("),
        "the last exit's time: {table}"
    );
    let log = ham.log_of("b");
    assert!(
        log.iter().any(|r| r["action"] == "backoff"
            && r["result"]
                .as_str()
                .is_some_and(|t| t.contains("cannot start"))),
        "{log:?}"
    );
    // The restart is said (at its release, or here before its failed start) before what
    // its start says, in the process log and in ham's.
    let first = |action: &str| log.iter().position(|r| r["action"] == action);
    assert!(
        matches!((first("restart"), first("backoff")), (Some(r), Some(b)) if r < b),
        "{log:?}"
    );
    let err = ham.stderr();
    let at = |what: &str| err.find(what);
    assert!(
        matches!((at("b: pid"), at("restarting (restart 1)"), at("b: cannot start")),
            (Some(d), Some(r), Some(c)) if d < r && r < c),
        "{err}"
    );

    // The Guardian killed: replaced, and the process log says so under `[ham]`.
    let (h, g) = (
        s["ham"]["pid"].as_i64().unwrap() as i32,
        s["guardian"]["pid"].as_i64().unwrap() as i32,
    );
    assert!(kill_and_wait(g));
    wait_until(&ham, "the guardian's replacement logged", || {
        ham.log_of("[ham]")
            .iter()
            .any(|r| r["condition"] == "guardian-died" && r["action"] == "replace" && r["pid"] == g)
    });
    // The HAM killed: the takeover is logged with the dead HAM's pid, and status says
    // "took over".
    let s = ham.wait_for("a new guardian", |s| {
        s["guardian"]["alive"] == true && s["guardian"]["pid"] != g
    });
    let g2 = s["guardian"]["pid"].as_i64().unwrap() as i32;
    sigkill(h);
    assert_eq!(ham.wait_exit(), -1);
    let s = ham.wait_for("the guardian promoted", |s| {
        s["ham"]["pid"] == g2 && s["guardian"]["alive"] == true
    });
    assert_eq!(s["ham"]["start"], "took-over");
    assert!(text(&ham.ctl(&["status"]).stdout).contains("· took over"));
    wait_until(&ham, "the takeover logged", || {
        ham.log_of("[ham]").iter().any(|r| {
            r["condition"] == "ham-died"
                && r["action"] == "take-over"
                && r["pid"] == h
                && r["result"]
                    .as_str()
                    .is_some_and(|t| t.contains(&format!("guardian pid {g2} took over")))
        })
    });
}

#[test]
fn a_condition_line_names_its_condition_and_carries_the_dead_pid() {
    let body = format!(
        "{}[[entity.condition]]\nname = \"page-ops\"\non = \"death\"\n[[entity.condition.action]]\ndo = \"log\"\nmessage = \"paged\"\n",
        sleeper("a")
    );
    let ham = Ham::start("condlog", &body);
    let s = ham.wait_for("a running", |s| running(s, "a"));
    let dead = pid_of(&s, "a");
    sigkill(dead);
    wait_until(&ham, "the condition's line", || {
        ham.log_of("a").iter().any(|r| {
            r["condition"] == "death"
                && r["name"] == "page-ops"
                && r["action"] == "log"
                && r["pid"] == dead
                && r["exit"] == serde_json::json!({"signal": 9})
        })
    });
    let shown = text(&ham.ctl(&["log", "a"]).stdout);
    assert!(shown.contains("death (page-ops)"), "{shown}");
}
