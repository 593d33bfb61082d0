//! The configuration parser's unit tests.

use super::*;

fn parse_str(text: &str) -> Result<Config, ConfigError> {
    parse(Path::new("/tmp/ham-test/ham.toml"), text)
}

const OK: &str = r#"
[ham]
name = "demo"
run_dir = "run"

[[entity]]
name = "web"
command = ["sleep", "100"]
env = { FOO = "bar" }
stop_signal = "INT"
stop_timeout = "2s"
restart = "on-failure"

[[entity]]
name = "db"
command = ["/bin/sh", "-c", "exit 3"]
stop_signal = 9
"#;

#[test]
fn a_valid_file_resolves() {
    let c = parse_str(OK).unwrap();
    assert_eq!(c.instance.name, "demo");
    assert_eq!(c.instance.run_dir, Path::new("/tmp/ham-test/run"));
    assert_eq!(c.instance.segment_name(), "/ham.demo.state");
    assert_eq!(c.entities.len(), 2);
    let web = &c.entities[0];
    assert!(web.exec_path.is_absolute() && web.exec_path.ends_with("sleep"));
    assert_eq!(web.stop_signal, libc::SIGINT);
    assert_eq!(web.stop_timeout_ns, 2_000_000_000);
    assert_eq!(web.restart, RestartMode::OnFailure);
    assert_eq!(c.entities[1].stop_signal, 9);
    assert_eq!(c.entities[1].restart, RestartMode::Always);
}

fn err_of(text: &str) -> ConfigError {
    parse_str(text).unwrap_err()
}

#[test]
fn unknown_key_is_located() {
    let e = err_of(
        "[ham]\nname = \"x\"\n\n[[entity]]\nname = \"a\"\ncommand = [\"true\"]\ncolour = \"red\"\n",
    );
    assert_eq!((e.line, e.column), (7, 1), "{e}");
    assert!(e.message.contains("colour"), "{e}");
}

#[test]
fn bad_type_is_located() {
    let e = err_of("[ham]\nname = \"x\"\n[[entity]]\nname = \"a\"\ncommand = \"true\"\n");
    assert_eq!(e.line, 5, "{e}");
    assert_eq!(e.key.as_deref(), Some("entity[0].command"), "{e}");
    assert!(e.message.contains("expected a list"), "{e}");
}

#[test]
fn every_error_is_told_in_one_pass_with_its_path_and_the_key_meant() {
    let e = err_of(
        "[ham]\nname = \"x\"\nliveness_timout = \"2s\"\n\n[[entity]]\nname = \"a\"\ncommand = [\"true\"]\nstop_timeout = 5\n\n[[entity]]\ncomand = [\"true\"]\n\n[[entity]]\nname = \"c\"\ncommand = [\"true\"]\nrestrat = \"always\"\n",
    );
    let all: Vec<(usize, Option<&str>, &str)> = std::iter::once(&e)
        .chain(&e.more)
        .map(|e| (e.line, e.key.as_deref(), e.message.as_str()))
        .collect();
    assert_eq!(
        all,
        [
            (
                3,
                Some("ham.liveness_timout"),
                "unknown key `liveness_timout`; did you mean `liveness_timeout`?"
            ),
            (
                8,
                Some("entity[0].stop_timeout"),
                "expected text in quotes, found the number 5 (a duration is text with a unit, like \"5s\")"
            ),
            (
                10,
                Some("entity[1]"),
                "the key `name` is required here and missing"
            ),
            (
                11,
                Some("entity[1].comand"),
                "unknown key `comand`; did you mean `command`?"
            ),
            (
                16,
                Some("entity[2].restrat"),
                "unknown key `restrat`; did you mean `restart`?"
            ),
        ],
        "{e}"
    );
    assert!(e.to_string().ends_with("5 errors"), "{e}");
    // Past the data errors, each entity's own errors are told together too.
    let e = err_of(
        "[ham]\nname = \"x\"\n[[entity]]\nname = \"a\"\ncommand = [\"/no/such\"]\n[[entity]]\nname = \"b\"\ncommand = [\"true\"]\nstop_timeout = \"5 parsecs\"\n",
    );
    assert_eq!(e.more.len(), 1, "{e}");
    assert_eq!(e.key.as_deref(), Some("entity[0].command"), "{e}");
    assert_eq!(
        e.more[0].key.as_deref(),
        Some("entity[1].stop_timeout"),
        "{e}"
    );
}

#[test]
fn duplicate_names_point_at_the_second() {
    let e = err_of(
        "[ham]\nname = \"x\"\n[[entity]]\nname = \"a\"\ncommand = [\"true\"]\n[[entity]]\nname = \"a\"\ncommand = [\"true\"]\n",
    );
    assert_eq!((e.line, e.column), (7, 8), "{e}");
    assert!(e.message.contains("first defined on line 4"), "{e}");
    assert_eq!(e.key.as_deref(), Some("entity[1].name"));
}

#[test]
fn missing_executable_is_refused() {
    let e = err_of(
        "[ham]\nname = \"x\"\n[[entity]]\nname = \"a\"\ncommand = [\"/nonexistent/prog\"]\n",
    );
    assert_eq!(e.line, 5);
    assert!(e.message.contains("does not exist"), "{e}");
    let e = err_of(
        "[ham]\nname = \"x\"\n[[entity]]\nname = \"a\"\ncommand = [\"no-such-program-ham\"]\n",
    );
    assert!(e.message.contains("not found in PATH"), "{e}");
}

#[test]
fn bad_values_are_refused_with_their_key() {
    let base = "[ham]\nname = \"x\"\n[[entity]]\nname = \"a\"\ncommand = [\"true\"]\n";
    for (extra, key, words) in [
        ("restart = \"sometimes\"", "restart", "unknown restart mode"),
        ("stop_signal = \"SIGNOPE\"", "stop_signal", "unknown signal"),
        ("stop_signal = 99", "stop_signal", "out of range"),
        (
            "stop_timeout = \"5 fortnights\"",
            "stop_timeout",
            "unknown unit",
        ),
        ("user = \"no-such-user-ham\"", "user", "no such user"),
        ("cwd = \"/nonexistent\"", "cwd", "not a directory"),
    ] {
        let e = err_of(&format!("{base}{extra}\n"));
        assert_eq!(e.line, 6, "{extra}: {e}");
        assert_eq!(
            e.key.as_deref(),
            Some(format!("entity[0].{key}").as_str()),
            "{e}"
        );
        assert!(e.message.contains(words), "{extra}: {e}");
    }
}

#[test]
fn policies_parse_with_defaults_and_precise_errors() {
    use ham_core::engine::{Policy, Window};
    let base = "[ham]\nname = \"x\"\n[[entity]]\nname = \"a\"\ncommand = [\"true\"]\n";
    let c = parse_str(base).unwrap();
    assert_eq!(
        c.entities[0].policy,
        Recovery::Engine(Policy::switch_preset())
    );
    let c = parse_str(&format!(
        "{base}policy = {{ kind = \"switch\", exits = 3, within = \"2s\", hold_off = \"1s\" }}\n"
    ))
    .unwrap();
    match &c.entities[0].policy {
        Recovery::Engine(Policy::Switch {
            exits, hold_off, ..
        }) => {
            assert_eq!(
                *exits,
                Window {
                    count: 3,
                    within: 2_000_000_000
                }
            );
            assert_eq!(*hold_off, 1_000_000_000);
        }
        other => panic!("{other:?}"),
    }
    let c = parse_str(&format!("{base}policy = {{ kind = \"immediate\" }}\n")).unwrap();
    assert_eq!(c.entities[0].policy, Recovery::Immediate);
    for (extra, k, words) in [
        (
            "policy = { kind = \"sometimes\" }",
            "entity[0].policy.kind",
            "unknown policy kind",
        ),
        (
            "policy = { kind = \"switch\", max = 3 }",
            "entity[0].policy.max",
            "does not apply",
        ),
        (
            "policy = { kind = \"switch\", within = \"soon\" }",
            "entity[0].policy.within",
            "not a duration",
        ),
        (
            "policy = { kind = \"switch\", exits = 0 }",
            "entity[0].policy.exits",
            "at least 1",
        ),
        (
            "policy = { kind = \"stages\", stages = [{ action = \"pray\", retries = 1 }] }",
            "entity[0].policy.stages[0].action",
            "unknown stage action",
        ),
        (
            "policy = { kind = \"intensity\", then = \"panic\" }",
            "entity[0].policy.then",
            "unknown escalation",
        ),
    ] {
        let e = err_of(&format!("{base}{extra}\n"));
        assert_eq!(e.line, 6, "{extra}: {e}");
        assert_eq!(e.key.as_deref(), Some(k), "{e}");
        assert!(e.message.contains(words), "{extra}: {e}");
    }
    let e = err_of(&format!(
        "[device]\nrestart_command = [\"/no/such/reboot\"]\n{base}"
    ));
    assert_eq!(
        (e.line, e.key.as_deref()),
        (2, Some("device.restart_command"))
    );
}

#[test]
fn after_is_resolved_and_cycles_are_refused() {
    let ent = |n: &str, after: &str| {
        format!("[[entity]]\nname = \"{n}\"\ncommand = [\"true\"]\nafter = [{after}]\n")
    };
    let c = parse_str(&format!(
        "[ham]\nname = \"x\"\n{}{}{}",
        ent("db", ""),
        ent("web", "\"db\""),
        ent("cache", "\"db\", \"web\"")
    ))
    .unwrap();
    assert_eq!(c.entities[2].after, vec![0, 1]);
    let e = err_of(&format!(
        "[ham]\nname = \"x\"\n{}{}",
        ent("a", "\"b\""),
        ent("b", "\"a\"")
    ));
    assert!(e.message.contains("cycle: a → b → a"), "{e}");
    assert_eq!((e.line, e.key.as_deref()), (6, Some("entity[0].after")));
    let e = err_of(&format!("[ham]\nname = \"x\"\n{}", ent("a", "\"nope\"")));
    assert!(e.message.contains("no entity named `nope`"), "{e}");
    assert_eq!(e.key.as_deref(), Some("entity[0].after[0]"));
    let e = err_of(&format!("[ham]\nname = \"x\"\n{}", ent("a", "\"a\"")));
    assert!(e.message.contains("itself"), "{e}");
}

#[test]
fn backoffs_parse_and_refuse_misplaced_keys() {
    use ham_core::engine::Backoff;
    let base = "[ham]\nname = \"x\"\n[[entity]]\nname = \"a\"\ncommand = [\"true\"]\n";
    let c = parse_str(&format!(
        "{base}backoff = {{ kind = \"fixed\", delay = \"2s\" }}\n"
    ))
    .unwrap();
    assert_eq!(
        c.entities[0].rare.backoff,
        Some(Backoff::Fixed {
            delay: 2_000_000_000,
            reset_after: 60_000_000_000
        })
    );
    let e = err_of(&format!("{base}backoff = {{ kind = \"fixed\" }}\n"));
    assert!(e.message.contains("`delay` is required"), "{e}");
    let e = err_of(&format!(
        "{base}backoff = {{ kind = \"fixed\", delay = \"1s\", max = \"2s\" }}\n"
    ));
    assert_eq!(e.key.as_deref(), Some("entity[0].backoff.max"), "{e}");
    let e = err_of(&format!("{base}backoff = {{ kind = \"random\" }}\n"));
    assert!(e.message.contains("unknown back-off kind"), "{e}");
}

#[test]
fn conditions_and_actions_parse_with_precise_errors() {
    use crate::actions::{ActionKind, Trigger};
    let base = "[ham]\nname = \"x\"\n[[entity]]\nname = \"a\"\ncommand = [\"true\"]\n";
    let c = parse_str(&format!(
        "{base}[[entity.condition]]\non = \"raise\"\nclass = \"temp\"\n[[entity.condition.action]]\ndo = \"execute\"\ncommand = [\"true\"]\nbreak_on_fail = true\non_fail = [{{ do = \"log\", message = \"hook failed\" }}]\n"
    ))
    .unwrap();
    let cond = &c.entities[0].conditions[0];
    assert_eq!(
        cond.trigger,
        Trigger::Raise {
            class: Some("temp".into()),
            severity: None,
            rtype: None
        }
    );
    assert!(matches!(cond.actions[0].kind, ActionKind::Execute { .. }));
    assert!(cond.actions[0].break_on_fail);
    assert_eq!(
        cond.actions[0].on_fail[0].kind,
        ActionKind::Log {
            message: "hook failed".into()
        }
    );
    let e = err_of(&format!("{base}[[entity.condition]]\non = \"eclipse\"\n"));
    assert_eq!(e.key.as_deref(), Some("entity[0].condition[0].on"), "{e}");
    let e = err_of(&format!(
        "{base}[[entity.condition]]\non = \"death\"\n[[entity.condition.action]]\ndo = \"signal\"\nentity = \"ghost\"\nsignal = \"HUP\"\n"
    ));
    assert_eq!(
        e.key.as_deref(),
        Some("entity[0].condition[0].action[0].entity"),
        "{e}"
    );
    assert_eq!(e.line, 10, "{e}");
    let e = err_of(&format!(
        "{base}[[entity.condition]]\non = \"death\"\n[[entity.condition.action]]\ndo = \"execute\"\n"
    ));
    assert!(e.message.contains("needs `command`"), "{e}");
}

#[test]
fn a_watchdog_needs_notify() {
    let base = "[ham]\nname = \"x\"\n[[entity]]\nname = \"a\"\ncommand = [\"true\"]\n";
    let e = err_of(&format!("{base}watchdog = \"1s\"\n"));
    assert_eq!(
        (e.line, e.key.as_deref()),
        (6, Some("entity[0].watchdog")),
        "{e}"
    );
    let c = parse_str(&format!("{base}notify = true\nwatchdog = \"1s\"\n")).unwrap();
    assert_eq!(c.entities[0].rare.watchdog_ns, Some(1_000_000_000));
    assert!(c.entities[0].notify);
}

#[test]
fn groups_resolve_and_refuse_double_membership() {
    let ents = "[[entity]]\nname = \"a\"\ncommand = [\"true\"]\n[[entity]]\nname = \"b\"\ncommand = [\"true\"]\n";
    let c = parse_str(&format!(
        "[ham]\nname = \"x\"\n{ents}[[group]]\nname = \"g\"\nstrategy = \"rest_for_one\"\nmembers = [\"b\", \"a\"]\n"
    ))
    .unwrap();
    assert_eq!(c.groups[0].strategy, Strategy::RestForOne);
    assert_eq!(c.groups[0].members, vec![1, 0]);
    assert_eq!(c.entities[0].group, Some(0));
    let e = err_of(&format!(
        "[ham]\nname = \"x\"\n{ents}[[group]]\nname = \"g\"\nmembers = [\"a\", \"a\"]\n"
    ));
    assert!(e.message.contains("already a member of group `g`"), "{e}");
    assert_eq!(e.key.as_deref(), Some("group[0].members[1]"));
    let e = err_of(&format!(
        "[ham]\nname = \"x\"\n{ents}[[group]]\nname = \"g\"\nstrategy = \"all_for_none\"\nmembers = []\n"
    ));
    assert!(e.message.contains("unknown strategy"), "{e}");
}

#[test]
fn bad_instance_names_are_refused() {
    let e = err_of("[ham]\nname = \"a/b\"\n");
    assert_eq!((e.line, e.key.as_deref()), (2, Some("ham.name")));
    let e = err_of("[ham]\nname = \"\"\n");
    assert_eq!(e.line, 2);
}

#[test]
fn missing_ham_table_is_an_error() {
    let e = err_of("[[entity]]\nname = \"a\"\ncommand = [\"true\"]\n");
    assert!(e.message.contains("ham"), "{e}");
}

#[test]
fn display_shows_the_line() {
    let e = err_of("[ham]\nname = \"x\"\nbogus = 1\n");
    let s = e.to_string();
    assert!(s.starts_with("/tmp/ham-test/ham.toml:3:1: "), "{s}");
    assert!(s.contains("bogus = 1"), "{s}");
}

/// The SDK reads `[ham] name` and `run_dir` with `ham_core::paths::instance_keys`, without a
/// TOML parser: it must find what the daemon's parser finds, in the bundled examples and in
/// the ways the keys are written.
#[test]
fn the_sdks_reading_of_name_and_run_dir_agrees_with_the_parser() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut texts: Vec<String> = std::fs::read_dir(root.join("examples"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.path().extension().is_some_and(|x| x == "toml") && e.file_name() != "Cargo.toml"
        })
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert!(!texts.is_empty());
    for ham in [
        "name = \"demo\"",
        "name = 'demo' # literal\nrun_dir = \"run\"",
        "run_dir = '/abs/run'\nname = \"d\\u0065mo\"",
        "\"name\" = \"demo\"\nrun_dir = \"a b/c\"",
    ] {
        texts.push(format!(
            "# top\n[ham]\n{ham}\n\n[[entity]]\nname = \"web\"\ncommand = [\"/bin/true\"]\n"
        ));
    }
    for text in texts {
        let path = dir.path().join("ham.toml");
        std::fs::write(&path, &text).unwrap();
        let parsed = load_instance(&path).unwrap();
        let keys = ham_core::paths::instance_keys(&text).unwrap();
        assert_eq!(keys.name, parsed.name, "{text}");
        let run_dir = keys
            .run_dir
            .map_or_else(|| PathBuf::from(DEFAULT_RUN_DIR), |d| dir.path().join(d));
        assert_eq!(run_dir, parsed.run_dir, "{text}");
    }
}

#[test]
fn a_watchdog_needs_whole_seconds_and_room_for_a_takeover() {
    let base = "[ham]\nname = \"w\"\nliveness_timeout = \"2s\"\n";
    // A stand-in path: the test only parses it, but never names the machine's device.
    let ok = parse_str(&format!(
        "{base}[watchdog]\ndevice = \"/run/ham-test/wd\"\n"
    ))
    .unwrap();
    let w = ok.watchdog.unwrap();
    assert_eq!(w.device, Path::new("/run/ham-test/wd"));
    assert_eq!(w.timeout_ns, 30_000_000_000);
    assert!(w.magic_close);
    let e = parse_str(&format!(
        "{base}[watchdog]\ndevice = \"wd\"\ntimeout = \"1500ms\"\n"
    ))
    .unwrap_err();
    assert_eq!(e.key.as_deref(), Some("watchdog.timeout"));
    assert!(e.message.contains("whole seconds"), "{e}");
    let e = parse_str(&format!(
        "{base}[watchdog]\ndevice = \"wd\"\ntimeout = \"3s\"\n"
    ))
    .unwrap_err();
    assert!(
        e.message.contains("twice ham.liveness_timeout (4.00s)"),
        "{e}"
    );
    let e = parse_str(&format!("{base}[watchdog]\ntimeout = \"3s\"\n")).unwrap_err();
    assert!(e.to_string().contains("device"), "{e}");
    assert!(parse_str(base).unwrap().watchdog.is_none());
}

#[test]
fn an_entity_named_dot_or_dot_dot_is_refused() {
    // Names become folders (its cgroup, its output, its cores): `..` would be the parent.
    for bad in [".", ".."] {
        let e = parse_str(&format!(
            "[ham]\nname = \"x\"\n[[entity]]\nname = \"{bad}\"\ncommand = [\"true\"]\n"
        ))
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("entity[0].name"), "{e}");
    }
    assert!(
        parse_str("[ham]\nname = \"x\"\n[[entity]]\nname = \"a.b\"\ncommand = [\"true\"]\n")
            .is_ok()
    );
}
