//! Metrics: `hamctl metrics` and `[metrics] textfile` in Prometheus text format, checked by
//! `promtool check metrics` (Debian's `prometheus` package). Without promtool the format
//! checks are skipped, saying so; `HAM_REQUIRE_PROMTOOL=1` (set by `.ci/run`, which installs
//! it) makes that a failure.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::util::*;

/// `promtool check metrics` on `text`: None when promtool is missing (and allowed to be).
fn promtool(text: &str) -> Option<String> {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var_os("HAM_REQUIRE_PROMTOOL").is_none(),
                "HAM_REQUIRE_PROMTOOL is set and there is no promtool (apt-get install prometheus)"
            );
            eprintln!("skipping the promtool check: no promtool on PATH");
            return None;
        }
        Err(e) => panic!("promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- the text:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value of the series `name{ham="<instance>",labels}`.
fn value(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, v) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once("{ham=\"")?;
        let (_instance, rest) = rest.split_once('"')?;
        let want = if labels.is_empty() {
            "}".to_owned()
        } else {
            format!(",{labels}}}")
        };
        (n == name && rest == want).then(|| v.parse().ok())?
    })
}

fn crasher(name: &str) -> String {
    format!(
        "[[entity]]\nname = \"{name}\"\ncommand = [\"/bin/sh\", \"-c\", \"sleep 0.2; exit 3\"]\n\
         [entity.policy]\nkind = \"intensity\"\nmax = 1000\nwithin = \"1s\"\n\n"
    )
}

#[test]
fn hamctl_metrics_and_the_textfile_are_valid_prometheus_text_and_follow_the_state() {
    let body = format!(
        "[metrics]\ntextfile = \"ham.prom\"\ninterval = \"200ms\"\n\n{}{}",
        sleeper("a"),
        crasher("b")
    );
    let mut ham = Ham::start_with("metrics", "liveness_timeout = \"300ms\"", &body, &[]);
    let s = ham.wait_for("b restarted twice", |s| {
        running(s, "a") && entity(s, "b")["restarts"].as_u64() >= Some(2)
    });

    let out = ham.ctl(&["metrics"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m = text(&out.stdout);
    promtool(&m);
    assert_eq!(value(&m, "ham_up", ""), Some(1.0), "{m}");
    assert_eq!(value(&m, "ham_entity_up", "entity=\"a\""), Some(1.0), "{m}");
    assert_eq!(
        value(&m, "ham_entity_state", "entity=\"a\",state=\"running\""),
        Some(1.0)
    );
    assert_eq!(
        value(&m, "ham_entity_state", "entity=\"a\",state=\"held-off\""),
        Some(0.0)
    );
    assert_eq!(
        value(&m, "ham_entity_restarts_total", "entity=\"a\""),
        Some(0.0)
    );
    let restarts = value(&m, "ham_entity_restarts_total", "entity=\"b\"").unwrap();
    assert!(
        restarts >= entity(&s, "b")["restarts"].as_u64().unwrap() as f64,
        "{m}"
    );
    assert_eq!(value(&m, "ham_takeovers_total", ""), Some(0.0), "{m}");
    assert_eq!(
        value(&m, "ham_ring_events_total", "outcome=\"consumed\""),
        Some(0.0)
    );

    // The textfile: written atomically, valid, and following a takeover.
    let file = ham.dir.path().join("ham.prom");
    wait_until(&ham, "the textfile", || file.exists());
    promtool(&std::fs::read_to_string(&file).unwrap());
    let h = ham.pid();
    sigkill(h);
    assert_eq!(ham.wait_exit(), -1);
    wait_until(&ham, "the textfile to count the takeover", || {
        std::fs::read_to_string(&file)
            .is_ok_and(|t| value(&t, "ham_takeovers_total", "") == Some(1.0))
    });
    let t = std::fs::read_to_string(&file).unwrap();
    promtool(&t);
    assert_eq!(value(&t, "ham_entity_up", "entity=\"a\""), Some(1.0), "{t}");
    let leftovers: Vec<_> = std::fs::read_dir(ham.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.len() <= 1,
        "temporary files left behind: {leftovers:?}"
    );

    // A clean shutdown removes it: no series saying entities are up after ham stopped.
    let out = ham.ctl(&["shutdown"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until(&ham, "the textfile removed", || !file.exists());

    // Not running: ham_up 0, exit 3.
    let out = ham.ctl(&["metrics"]);
    assert_eq!(out.status.code(), Some(3));
    let m = text(&out.stdout);
    assert_eq!(value(&m, "ham_up", ""), Some(0.0), "{m}");
    promtool(&m);
}
