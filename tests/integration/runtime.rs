//! Run-time definitions (what the C API's `ham_attach`, `ham_condition*` and `ham_action*`
//! make): entities, conditions and actions created through the SDK act like configured
//! ones, survive a takeover, and bad calls fail with QNX's errnos.

use ham_detector_sdk::{Change, Client, ControlCommand, Error, Location};
use serde_json::{Map, Value, json};

use crate::util::*;

fn client(ham: &Ham) -> Client {
    Client::connect_to(&Location::from_config(&ham.config).unwrap()).unwrap()
}

fn table(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn condition(entity: &str, t: Value) -> Change {
    Change::Condition {
        entity: entity.into(),
        table: table(t),
    }
}

fn action(entity: &str, cond: &str, t: Value) -> Change {
    Change::Action {
        entity: entity.into(),
        condition: cond.into(),
        fail_of: None,
        table: table(t),
    }
}

fn errno_of(r: Result<u32, Error>) -> Option<i32> {
    match r {
        Err(Error::Refused { errno, .. }) => errno,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn run_time_definitions_act_and_survive_a_takeover() {
    let work = tempfile::tempdir().unwrap();
    let (died, raised) = (work.path().join("died"), work.path().join("raised"));
    let mut ham = Ham::start("rt-defs", &sleeper("db"));
    ham.wait_for("db running", |s| running(s, "db"));
    let c = client(&ham);
    c.define(Change::Entity {
        name: "rt".into(),
        pid: None,
        command: Some(vec!["sleep".into(), "1000".into()]),
    })
    .unwrap();
    c.define(condition("rt", json!({"name": "died", "on": "death"})))
        .unwrap();
    let echo = |f: &std::path::Path| {
        json!([
            "/bin/sh",
            "-c",
            format!("echo $HAM_ENTITY >> {}", f.display())
        ])
    };
    c.define(action(
        "rt",
        "died",
        json!({"name": "mark", "do": "execute", "command": echo(&died)}),
    ))
    .unwrap();
    c.define(action(
        "rt",
        "died",
        json!({"name": "again", "do": "restart"}),
    ))
    .unwrap();
    c.define(condition(
        "db",
        json!({"name": "hot", "on": "raise", "class": "temp"}),
    ))
    .unwrap();
    c.define(action(
        "db",
        "hot",
        json!({"name": "mark", "do": "execute", "command": echo(&raised)}),
    ))
    .unwrap();
    let s = ham.wait_for("rt running", |s| running(s, "rt"));
    let rt = pid_of(&s, "rt");

    // The promoted HAM has the same definitions: same process, and they act.
    let g = s["guardian"]["pid"].clone();
    sigkill(ham.pid());
    assert_eq!(ham.wait_exit(), -1);
    let s = ham.wait_for("the guardian promoted", |s| {
        s["ham"]["pid"] == g && s["ham"]["alive"] == true
    });
    assert_eq!(pid_of(&s, "rt"), rt, "rt was restarted by the takeover");
    sigkill(rt);
    wait_until(&ham, "rt's death action", || {
        std::fs::read_to_string(&died).is_ok_and(|t| t == "rt\n")
    });
    ham.wait_for("rt restarted by its restart action", |s| {
        running(s, "rt") && entity(s, "rt")["restarts"] == 1
    });
    assert!(ham.ctl(&["raise", "db", "temp"]).status.success());
    wait_until(&ham, "db's run-time raise action", || {
        std::fs::read_to_string(&raised).is_ok_and(|t| t == "db\n")
    });
    let tree = text(&ham.ctl(&["status", "--tree"]).stdout);
    assert!(
        tree.contains("rt") && tree.contains("died") && tree.contains("again"),
        "{tree}"
    );
}

#[test]
fn bad_run_time_definitions_fail_with_qnx_errnos() {
    let ham = Ham::start("rt-errno", &sleeper("db"));
    ham.wait_for("db running", |s| running(s, "db"));
    let c = client(&ham);
    let cond = |e: &str, t: Value| c.define(condition(e, t));
    assert_eq!(
        errno_of(cond("nobody", json!({"name": "x", "on": "death"}))),
        Some(libc::ENOENT)
    );
    assert_eq!(
        errno_of(c.define(Change::Entity {
            name: "db".into(),
            pid: None,
            command: None
        })),
        Some(libc::EEXIST)
    );
    assert_eq!(
        errno_of(cond("db", json!({"name": "a/b", "on": "death"}))),
        Some(libc::EINVAL)
    );
    assert_eq!(
        errno_of(c.define(Change::Entity {
            name: "ghost".into(),
            pid: Some(i32::MAX),
            command: None
        })),
        Some(libc::ESRCH)
    );
    cond("db", json!({"name": "d", "on": "death"})).unwrap();
    // The same definition again is accepted (a restarted QNX client re-adds its own);
    // another under the same name is not.
    cond("db", json!({"name": "d", "on": "death"})).unwrap();
    assert_eq!(
        errno_of(cond("db", json!({"name": "d", "on": "abnormal-death"}))),
        Some(libc::EEXIST)
    );
    // Not a condition a configuration could hold: refused, nothing kept.
    assert_eq!(
        errno_of(cond("db", json!({"name": "bad", "on": "sunrise"}))),
        Some(libc::EINVAL)
    );
    // One restart action per entity, under a death condition only.
    c.define(action("db", "d", json!({"name": "r", "do": "restart"})))
        .unwrap();
    cond("db", json!({"name": "d2", "on": "abnormal-death"})).unwrap();
    assert_eq!(
        errno_of(c.define(action("db", "d2", json!({"name": "r", "do": "restart"})))),
        Some(libc::EINVAL)
    );
    cond("db", json!({"name": "hot", "on": "raise"})).unwrap();
    assert_eq!(
        errno_of(c.define(action("db", "hot", json!({"name": "r", "do": "restart"})))),
        Some(libc::EINVAL)
    );
    // A waitfor under an HCONDNOWAIT condition.
    cond(
        "db",
        json!({"name": "quick", "on": "death", "nowait": true}),
    )
    .unwrap();
    assert_eq!(
        errno_of(c.define(action(
            "db",
            "quick",
            json!({"name": "w", "do": "waitfor", "path": "/x", "timeout": "1s"})
        ))),
        Some(libc::EINVAL)
    );
    // Flags: HCONDNOWAIT (4) and the default HREARMAFTERRESTART (1).
    let get = Change::Control {
        entity: "db".into(),
        condition: Some("quick".into()),
        action: None,
        command: ControlCommand::GetFlags,
        flags: 0,
    };
    assert_eq!(c.define(get.clone()).unwrap(), 0x1 | 0x4);
    c.define(Change::Control {
        entity: "db".into(),
        condition: Some("quick".into()),
        action: None,
        command: ControlCommand::RemoveFlags,
        flags: 0x1,
    })
    .unwrap();
    assert_eq!(c.define(get).unwrap(), 0x4);
    // A removed condition's name can be used again; ham keeps supervising throughout.
    c.define(Change::Remove {
        entity: "db".into(),
        condition: Some("hot".into()),
        action: None,
        fail: None,
    })
    .unwrap();
    cond("db", json!({"name": "hot", "on": "raise"})).unwrap();
    // A removed action's name can be used again; the removed one cannot be turned back on.
    c.define(action(
        "db",
        "hot",
        json!({"name": "a", "do": "log", "message": "one"}),
    ))
    .unwrap();
    let remove_a = Change::Remove {
        entity: "db".into(),
        condition: Some("hot".into()),
        action: Some("a".into()),
        fail: None,
    };
    c.define(remove_a.clone()).unwrap();
    assert_eq!(errno_of(c.define(remove_a)), Some(libc::ENOENT));
    c.define(action(
        "db",
        "hot",
        json!({"name": "a", "do": "log", "message": "two"}),
    ))
    .unwrap();
    assert!(running(&ham.status(), "db"));
}

#[test]
fn a_placeholder_is_filled_by_a_pid_and_a_do_now_action_runs_at_once() {
    let work = tempfile::tempdir().unwrap();
    let now = work.path().join("now");
    let ham = Ham::start("rt-placeholder", &sleeper("db"));
    ham.wait_for("db running", |s| running(s, "db"));
    let c = client(&ham);
    c.define(Change::Entity {
        name: "later".into(),
        pid: None,
        command: None,
    })
    .unwrap();
    assert_eq!(entity(&ham.status(), "later")["state"], "stopped");
    let mut proc_ = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    let pid = proc_.id() as i32;
    c.define(Change::Entity {
        name: "later".into(),
        pid: Some(pid),
        command: None,
    })
    .unwrap();
    let s = ham.wait_for("later attached", |s| running(s, "later"));
    assert_eq!(pid_of(&s, "later"), pid);
    c.define(condition("later", json!({"name": "d", "on": "death"})))
        .unwrap();
    c.define(action(
        "later",
        "d",
        json!({"name": "mark", "do": "execute", "run_now": true,
               "command": ["/bin/sh", "-c", format!("echo $HAM_CONDITION >> {}", now.display())]}),
    ))
    .unwrap();
    wait_until(&ham, "the do-now action", || {
        std::fs::read_to_string(&now).is_ok_and(|t| t == "run-now\n")
    });
    proc_.kill().unwrap();
    proc_.wait().unwrap();
    wait_until(&ham, "the death action", || {
        std::fs::read_to_string(&now).is_ok_and(|t| t == "run-now\ndeath\n")
    });
}

#[test]
fn the_log_verbosity_changes_and_survives_a_takeover() {
    use ham_core::protocol::VerboseOp;
    let mut ham = Ham::start("rt-verbose", &sleeper("db"));
    ham.wait_for("db running", |s| running(s, "db"));
    let c = client(&ham);
    assert_eq!(c.verbose(VerboseOp::Get, 0).unwrap(), 1);
    assert_eq!(c.verbose(VerboseOp::Incr, 1).unwrap(), 2);
    assert!(ham.ctl(&["ping"]).status.success());
    wait_until(&ham, "a request logged at verbosity 2", || {
        ham.stderr().contains("request from pid") && ham.stderr().contains("Ping")
    });
    let g = ham.status()["guardian"]["pid"].clone();
    sigkill(ham.pid());
    assert_eq!(ham.wait_exit(), -1);
    ham.wait_for("the guardian promoted", |s| {
        s["ham"]["pid"] == g && s["ham"]["alive"] == true
    });
    assert_eq!(c.verbose(VerboseOp::Get, 0).unwrap(), 2);
    assert_eq!(c.verbose(VerboseOp::Set, 0).unwrap(), 0);
}

#[test]
fn an_entity_may_add_only_harmless_actions_to_itself() {
    // A process running as nobody, the entity it defines on: a condition and a log action
    // are accepted; an execute action (it would run with ham's privileges) is refused.
    let work = tempfile::tempdir().unwrap();
    let define = |change: Value| format!("'{change}'");
    let script = work.path().join("define.sh");
    let c = env!("CARGO_BIN_EXE_ham-client");
    std::fs::write(
        &script,
        format!(
            "{c} define {} && {c} define {} && {c} define {}\n",
            define(
                json!({"op": "condition", "entity": "self", "table": {"name": "d", "on": "death"}})
            ),
            define(json!({"op": "action", "entity": "self", "condition": "d",
                          "table": {"name": "l", "do": "log", "message": "hi"}})),
            define(json!({"op": "action", "entity": "self", "condition": "d",
                          "table": {"name": "x", "do": "execute", "command": ["/bin/true"]}})),
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let body = format!(
        "[[entity]]\nname = \"self\"\nuser = \"nobody\"\nrestart = \"never\"\n\
         command = [\"/bin/sh\", \"{}\"]\n",
        script.display()
    );
    let ham = Ham::start_with("rt-own", "client_group = \"65534\"\n", &body, &[]);
    let s = ham.wait_for("self exited", |s| entity(s, "self")["state"] == "exited");
    // The first two defines succeeded, the third (execute) was refused: exit status 1.
    assert_eq!(
        entity(&s, "self")["last_exit"]["code"],
        1,
        "{}",
        ham.stderr()
    );
    assert!(
        ham.stderr().contains("permission denied"),
        "{}",
        ham.stderr()
    );
    let tree = text(&ham.ctl(&["status", "--tree"]).stdout);
    assert!(tree.contains("l  log"), "{tree}");
    assert!(!tree.contains("x  execute"), "{tree}");
}
