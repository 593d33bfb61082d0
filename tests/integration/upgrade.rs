//! `hamctl upgrade`: a running instance hands over to another build of ham — here one with
//! the next state-segment layout (ham-core's `next-layout` feature: layout 9, which
//! migrates layout 8 in place) — with no entity restarted, no pid changed, and its output
//! pipes, watchdog and sockets kept; and the way back, which that build's layout forbids,
//! is refused with nothing changed.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::*;

/// The `next-layout` build of `ham` (built here on first use, into its own target
/// folder, unless `HAM_NEXT_LAYOUT_BIN` names one).
fn next_layout_ham() -> PathBuf {
    if let Some(p) = std::env::var_os("HAM_NEXT_LAYOUT_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = root.join("target/next-layout");
    // One build at a time across the test threads.
    static BUILT: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !*built {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(&root)
            .args([
                "build",
                "-p",
                "ham-guardian",
                "--bin",
                "ham",
                "--bin",
                "hamctl",
                "--features",
                "ham-core/next-layout",
                "--target-dir",
            ])
            .arg(&target)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "building the next-layout ham: {}",
            text(&out.stderr)
        );
        *built = true;
    }
    target.join("debug/ham")
}

/// `hamctl` of the next-layout build: the layout-8 one cannot read a layout-9 segment.
fn next_hamctl() -> PathBuf {
    next_layout_ham().with_file_name("hamctl")
}

fn ctl_with(hamctl: &Path, ham: &Ham, args: &[&str]) -> std::process::Output {
    Command::new(hamctl)
        .arg("-c")
        .arg(&ham.config)
        .args(args)
        .output()
        .unwrap()
}

/// Waits, reading the status with `hamctl`, until `pred` holds.
fn wait_with(
    hamctl: &Path,
    ham: &Ham,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = std::time::Instant::now();
    loop {
        let out = ctl_with(hamctl, ham, &["status", "--json"]);
        if let Ok(s) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            if pred(&s) {
                return s;
            }
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}:\n{}",
            ham.stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn layout_of(ham: &Ham) -> u32 {
    // What the segment says, read from /dev/shm (magic, then the version word).
    let bytes = std::fs::read(format!("/dev/shm/ham.{}.state", ham.name)).unwrap();
    u32::from_ne_bytes(bytes[8..12].try_into().unwrap())
}

fn exe_of(pid: i32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
}

#[test]
fn an_upgrade_to_the_next_layout_keeps_every_process_pipe_and_socket_and_the_way_back_is_refused() {
    let next = next_layout_ham();
    assert_eq!(
        text(
            &Command::new(&next)
                .arg("--layouts")
                .output()
                .unwrap()
                .stdout
        )
        .trim(),
        "9 8",
        "the next-layout build runs layout 9 and migrates 8"
    );
    // A sleeper, a writer whose output ham captures, and a watchdog stand-in (a FIFO).
    let body = format!(
        "[watchdog]\ndevice = \"wd\"\ntimeout = \"1s\"\n\n{}[[entity]]\nname = \"w\"\ncommand = [\"/bin/sh\", \"-c\", \"i=0; while :; do i=$((i+1)); echo line $i; sleep 0.01; done\"]\noutput = \"log\"\n",
        sleeper("a")
    );
    let mut ham = Ham::configured("upgrade", "liveness_timeout = \"250ms\"", &body);
    let fifo = ham.dir.path().join("wd");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let wd = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    ham.spawn(&[]);
    let s = ham.wait_for("a and w running", |s| {
        running(s, "a") && running(s, "w") && s["guardian"]["alive"] == true
    });
    let (a, w) = (pid_of(&s, "a"), pid_of(&s, "w"));
    let old_ham = s["ham"]["pid"].as_i64().unwrap() as i32;
    assert_eq!(layout_of(&ham), 8);

    let out = ham.ctl(&["upgrade", "--binary", next.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        ham.stderr()
    );
    let said = text(&out.stdout);
    assert!(said.contains("upgraded: ham pid"), "{said}");
    assert!(said.contains("migrated to 9"), "{said}");
    assert_eq!(ham.wait_exit(), 0, "the old HAM exits 0 after handing over");

    // The new HAM runs the new binary, on the migrated segment, with a Guardian of it.
    let nctl = next_hamctl();
    let s = wait_with(&nctl, &ham, "the new HAM and its guardian", |s| {
        s["ham"]["alive"] == true && s["guardian"]["alive"] == true && s["ham"]["pid"] != old_ham
    });
    let h = s["ham"]["pid"].as_i64().unwrap() as i32;
    let g = s["guardian"]["pid"].as_i64().unwrap() as i32;
    let next_real = next.canonicalize().unwrap();
    assert_eq!(exe_of(h), next_real);
    assert_eq!(exe_of(g), next_real);
    assert_eq!(layout_of(&ham), 9);
    // Nothing restarted, no pid changed.
    assert_eq!((pid_of(&s, "a"), pid_of(&s, "w")), (a, w));
    assert_eq!(entity(&s, "a")["restarts"], 0);
    assert_eq!(entity(&s, "w")["restarts"], 0);
    assert!(
        ham.stderr().contains("migrated from layout 8 to 9"),
        "{}",
        ham.stderr()
    );
    // The process log says it was an upgrade.
    let log = ctl_with(&nctl, &ham, &["log", "[ham]", "--json"]);
    let log: serde_json::Value = serde_json::from_slice(&log.stdout).unwrap();
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|r| r["condition"] == "upgrade" && r["action"] == "take-over"),
        "{log}"
    );
    // The control socket is the same (hamctl reached it above); the output pipe is the
    // same (w is the same process and its lines go on, numbered without a gap); the
    // watchdog was never closed (no EOF on the FIFO: its only writers were ham's).
    let dir = ham.dir.path().join("log").join(&ham.name).join("w");
    let count = || {
        std::fs::read_to_string(dir.join("current"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let before = count();
    wait_until(&ham, "w's lines going on", || count() > before + 20);
    let nums: Vec<u64> = std::fs::read_to_string(dir.join("current"))
        .unwrap()
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(nums, (1..=nums.len() as u64).collect::<Vec<_>>());
    let mut buf = [0u8; 4096];
    let mut wd = wd;
    use std::io::Read;
    loop {
        match wd.read(&mut buf) {
            Ok(0) => panic!("the watchdog was closed in the upgrade"),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }

    // Back to the layout-8 build: it cannot read layout 9. Refused, nothing changed.
    let out = ctl_with(&nctl, &ham, &["upgrade", "--binary", HAM]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot take it over") && err.contains("Nothing was changed"),
        "{err}"
    );
    let s2 = wait_with(&nctl, &ham, "the status", |_| true);
    assert_eq!(s2["ham"]["pid"], s["ham"]["pid"]);
    assert_eq!(s2["guardian"]["pid"], s["guardian"]["pid"]);
    assert_eq!(layout_of(&ham), 9);
    assert_eq!((pid_of(&s2, "a"), pid_of(&s2, "w")), (a, w));
    // Something that is not ham at all: refused too.
    let out = ctl_with(&nctl, &ham, &["upgrade", "--binary", "/bin/true"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        wait_with(&nctl, &ham, "the status", |_| true)["ham"]["pid"],
        s["ham"]["pid"]
    );
    // Shut down with the binary that runs it (Drop's own hamctl cannot read layout 9).
    let out = ctl_with(&nctl, &ham, &["shutdown"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
