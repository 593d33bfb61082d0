//! The C API: the programs in `examples/c/` are compiled against `include/ham.h` and the
//! library Cargo built, and run against a real ham.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::*;

/// Compiles `examples/c/NAME.c` into `dir` against the SDK's header and shared library:
/// an installed copy if `HAM_C_SDK_PREFIX` names one (`scripts/install-sdk.sh PREFIX`, as
/// CI does), else the ones in the source tree and Cargo's build folder.
pub fn build_c(name: &str, dir: &Path) -> PathBuf {
    build_c_at(&format!("examples/c/{name}.c"), dir)
}

/// Compiles the C file at `source` (relative to the repository's root) into `dir`, named
/// after the file, as [`build_c`] does.
pub fn build_c_at(source: &str, dir: &Path) -> PathBuf {
    let name = Path::new(source)
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("a C file name");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (include, libdir, lib) = match std::env::var_os("HAM_C_SDK_PREFIX") {
        Some(p) => {
            let p = PathBuf::from(p);
            (p.join("include"), p.join("lib"), "ham")
        }
        None => (
            root.join("ham-detector-sdk/include"),
            Path::new(HAM).parent().unwrap().join("deps"),
            "ham_detector_sdk",
        ),
    };
    assert!(
        libdir.join(format!("lib{lib}.so")).exists(),
        "no lib{lib}.so in {}",
        libdir.display()
    );
    let out = dir.join(name);
    let cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .arg("-Wall")
        .arg("-Werror")
        .arg("-I")
        .arg(&include)
        .arg(root.join(source))
        .arg("-o")
        .arg(&out)
        .arg(format!("-L{}", libdir.display()))
        .arg(format!("-Wl,-rpath,{}", libdir.display()))
        .arg(format!("-l{lib}"))
        .output()
        .expect("a C compiler (cc) runs");
    assert!(cc.status.success(), "cc {name}.c:\n{}", text(&cc.stderr));
    out
}

pub fn run_c(ham: &Ham, prog: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(prog);
    c.args(args).env("HAM_CONFIG", &ham.config);
    c
}

#[test]
fn a_c_monitor_attaches_adds_a_death_condition_and_survives_a_takeover_between_calls() {
    let work = tempfile::tempdir().unwrap();
    let monitor = build_c("monitor", work.path());
    let marker = work.path().join("marker");
    let mut ham = Ham::start("c-monitor", &sleeper("anchor"));
    ham.wait_for("anchor running", |s| running(s, "anchor"));
    let victim = Reaped(Command::new("sleep").arg("1000").spawn().unwrap());
    let vpid = victim.0.id().to_string();
    let mut mon = Reaped(
        run_c(
            &ham,
            &monitor,
            &["victim", &vpid, marker.to_str().unwrap(), "--pause"],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let mut lines = Lines::new(mon.0.stdout.take().unwrap(), "the monitor");
    assert_eq!(lines.next_line(), "paused");
    // Between ham_condition and ham_action_restart: the HAM dies.
    let g = ham.status()["guardian"]["pid"].clone();
    sigkill(ham.pid());
    assert_eq!(ham.wait_exit(), -1);
    ham.wait_for("the guardian promoted", |s| {
        s["ham"]["pid"] == g && s["ham"]["alive"] == true
    });
    writeln!(mon.0.stdin.take().unwrap(), "go").unwrap();
    assert_eq!(lines.next_line(), "done");
    assert!(mon.0.wait().unwrap().success());
    // What the first call made is there, and the actions added after the takeover act.
    let s = ham.status();
    assert_eq!(pid_of(&s, "victim").to_string(), vpid);
    let tree = text(&ham.ctl(&["status", "--tree"]).stdout);
    assert!(tree.contains("death") && tree.contains("restart"), "{tree}");
    let mut victim = victim;
    victim.0.kill().unwrap();
    victim.0.wait().unwrap();
    wait_until(&ham, "the execute action", || {
        std::fs::read_to_string(&marker).is_ok_and(|t| t == "victim died\n")
    });
    ham.wait_for("victim restarted by its restart action", |s| {
        running(s, "victim") && entity(s, "victim")["restarts"] == 1
    });
}

#[test]
fn a_c_client_heartbeats_then_stops_and_its_missed_condition_fires() {
    let work = tempfile::tempdir().unwrap();
    let prog = build_c("heartbeat", work.path());
    let marker = work.path().join("missed");
    let body = format!(
        "[[entity]]\nname = \"hb\"\nattach_only = true\n\
         [[entity.condition]]\non = \"heartbeat-missed-low\"\n[[entity.condition.action]]\n\
         do = \"execute\"\ncommand = [\"/bin/sh\", \"-c\", \"echo $HAM_CONDITION > {}\"]\n",
        marker.display()
    );
    let ham = Ham::start("c-heartbeat", &body);
    let mut client = Reaped(
        run_c(&ham, &prog, &["hb", "5"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = Lines::new(client.0.stdout.take().unwrap(), "the C client");
    assert_eq!(lines.next_line(), "attached");
    let s = ham.wait_for("hb attached", |s| running(s, "hb"));
    assert_eq!(entity(&s, "hb")["heartbeat"]["period_ns"], 50_000_000);
    assert_eq!(lines.next_line(), "stopped beating");
    wait_until(&ham, "the missed-low action", || {
        std::fs::read_to_string(&marker).is_ok_and(|t| t == "heartbeat-missed-low\n")
    });
}

#[test]
fn a_c_detector_raises_a_condition_matched_by_type_class_and_severity() {
    let work = tempfile::tempdir().unwrap();
    let prog = build_c("detector", work.path());
    let marker = work.path().join("raised");
    let ham = Ham::start("c-detector", &sleeper("db"));
    ham.wait_for("db running", |s| running(s, "db"));
    let out = run_c(&ham, &prog, &["db", marker.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    ham.wait_for("both events consumed", |s| s["ring"]["consumed"] == 2);
    wait_until(&ham, "the matching raise's action", || {
        std::fs::read_to_string(&marker).is_ok_and(|t| t == "42 2\n")
    });
    // Both reached ham (consumed above); only the one a condition listened to is logged.
    let raises = ham
        .log_of("db")
        .iter()
        .filter(|r| r["action"] == "raise")
        .count();
    assert_eq!(raises, 1);
}

#[test]
fn a_c_counter_goes_on_from_its_checkpoint_after_each_kill() {
    let work = tempfile::tempdir().unwrap();
    let counter = build_c("pss_counter", work.path());
    let body = format!(
        "[[entity]]\nname = \"counter\"\ncommand = [\"{}\"]\npolicy = {{ kind = \"immediate\" }}\n",
        counter.display()
    );
    let ham = Ham::start("c-pss", &body);
    let read = |k: &str| -> Option<(u64, u64)> {
        let req = ham_guardian::control::Request::PssRead {
            entity: "counter".into(),
            key: Some(k.into()),
        };
        let r = ham_guardian::control::request(
            &ham.socket_path(),
            &req,
            std::time::Duration::from_secs(10),
        )
        .ok()?;
        let it = Vec::from(r.pss?).into_iter().next()?;
        Some((
            u64::from_ne_bytes(it.value[..8].try_into().unwrap()),
            it.generation,
        ))
    };
    let mut last = 0;
    for kill in 0..5 {
        wait_until(&ham, "the counter counting", || {
            read("count").is_some_and(|(c, _)| c > last + 10)
        });
        let (_, from_gen) = read("started-from").unwrap();
        let s = ham.status();
        let (c, _) = read("count").unwrap();
        assert!(kill_and_wait(pid_of(&s, "counter")));
        wait_until(&ham, "the next process's start", || {
            read("started-from").is_some_and(|(_, g)| g > from_gen)
        });
        let (from, _) = read("started-from").unwrap();
        assert!(
            from >= c,
            "kill {kill}: count {c} at the kill, started from {from}"
        );
        last = from;
        // It listed its keys (`ham_pss_keys`) before putting any.
        let req = ham_guardian::control::Request::PssRead {
            entity: "counter".into(),
            key: Some("keys-at-start".into()),
        };
        let r = ham_guardian::control::request(
            &ham.socket_path(),
            &req,
            std::time::Duration::from_secs(10),
        )
        .unwrap();
        let listed = Vec::from(r.pss.unwrap()).remove(0).value;
        assert_eq!(listed, b"count\0keys-at-start\0started-from\0");
    }
}

#[test]
fn a_c_program_sends_receives_and_acknowledges_messages_in_order() {
    let work = tempfile::tempdir().unwrap();
    let prog = build_c("mts_roundtrip", work.path());
    let ham = Ham::start("c-mts", &sleeper("rx"));
    let out = run_c(&ham, &prog, &[]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "alpha 1\nbeta 1\ngamma 1\n");
}
