//! Captured output (`output = "log"`): lines stamped into `<log_dir>/<instance>/<entity>/
//! current`, rotated by size, kept across takeovers with no line lost or written twice, and
//! read back with `hamctl logs`.

use std::process::{Command, Stdio};

use crate::util::*;

/// An entity that writes `line 1` … `line N` (in bursts of 100), then sleeps.
fn writer(name: &str, n: u32, extra: &str) -> String {
    format!(
        "[[entity]]\nname = \"{name}\"\ncommand = [\"/bin/sh\", \"-c\", \"i=0; while [ $i -lt {n} ]; do i=$((i+1)); echo line $i; [ $((i % 100)) = 0 ] && sleep 0.02; done; exec sleep 100000\"]\noutput = \"log\"\n{extra}\n"
    )
}

/// Every line kept for `entity` (archives oldest first, then `current`), checked to be
/// stamped; returns the numbers they carry.
fn kept_numbers(ham: &Ham, entity: &str) -> Vec<u32> {
    let dir = ham.dir.path().join("log").join(&ham.name).join(entity);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('@'))
        .collect();
    files.sort();
    files.push(dir.join("current"));
    let mut nums = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for l in text.lines() {
            let (ts, rest) = l.split_once(' ').expect("a stamp, then the line");
            assert!(
                ts.len() == 27 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
                "not a stamp: {l}"
            );
            let n = rest
                .strip_prefix("line ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{}: not a numbered line: {l}", f.display()));
            nums.push(n);
        }
    }
    nums
}

/// The number of the last line kept: in `current`, or in the newest archive when `current`
/// was just rotated and is empty.
fn last_kept(ham: &Ham, entity: &str) -> Option<u32> {
    let dir = ham.dir.path().join("log").join(&ham.name).join(entity);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('@'))
        .collect();
    files.sort();
    files.push(dir.join("current"));
    files.iter().rev().find_map(|f| {
        let text = std::fs::read_to_string(f).ok()?;
        text.lines().last()?.rsplit(' ').next()?.parse().ok()
    })
}

#[test]
fn output_is_kept_across_20_ham_kills_with_no_line_lost_or_written_twice() {
    const N: u32 = 20_000;
    let body = writer("w", N, "output_max_bytes = 65536\noutput_keep = 1000\n");
    let mut ham = Ham::start_with("out20", "liveness_timeout = \"300ms\"", &body, &[]);
    let s = ham.wait_for("w running", |s| running(s, "w"));
    let w = pid_of(&s, "w");
    let mut killed = 0;
    while killed < 20 {
        let s = ham.wait_for("a HAM with its guardian", |s| {
            s["ham"]["alive"] == true && s["guardian"]["alive"] == true
        });
        let h = s["ham"]["pid"].as_i64().unwrap() as i32;
        let g = s["guardian"]["pid"].clone();
        sigkill(h);
        if killed == 0 {
            assert_eq!(ham.wait_exit(), -1);
        }
        ham.wait_for("the guardian promoted", |s| {
            s["ham"]["pid"] == g && s["ham"]["alive"] == true
        });
        killed += 1;
    }
    wait_until(&ham, "the last line kept", || {
        last_kept(&ham, "w") == Some(N)
    });
    // The writer never saw its pipe without a reader (SIGPIPE): same process, never
    // restarted.
    let s = ham.status();
    assert_eq!(pid_of(&s, "w"), w, "{}", ham.stderr());
    assert_eq!(entity(&s, "w")["restarts"], 0);
    let nums = kept_numbers(&ham, "w");
    let expected: Vec<u32> = (1..=N).collect();
    if nums != expected {
        let missing: Vec<u32> = expected
            .iter()
            .filter(|n| !nums.contains(n))
            .take(10)
            .copied()
            .collect();
        let mut seen = std::collections::HashSet::new();
        let doubled: Vec<u32> = nums
            .iter()
            .filter(|n| !seen.insert(**n))
            .take(10)
            .copied()
            .collect();
        panic!(
            "{} lines kept for {N} written; missing {missing:?}…, doubled {doubled:?}…",
            nums.len()
        );
    }
    let archives = std::fs::read_dir(ham.dir.path().join("log").join(&ham.name).join("w"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('@'))
        .count();
    assert!(
        archives >= 2,
        "current was rotated while ham was killed: {archives}"
    );
}

/// A HAM killed after its Guardian beat and before it read the beat: the Guardian's next read
/// of the handoff socket reports ECONNRESET, ahead of the output pipe's ends still queued in
/// it. They must be received all the same: otherwise the promoted HAM makes a new pipe, the
/// old one loses its last reader, and the writer dies of SIGPIPE.
#[test]
fn output_keeps_its_reader_when_the_ham_dies_with_its_guardians_beat_unread() {
    // Still writing after both takeovers (200 bursts, 20 ms apart).
    const N: u32 = 20_000;
    let marks = tempfile::tempdir().unwrap();
    let fired = marks.path().join("fired");
    let fired_s = fired.display().to_string();
    let body = writer("w", N, "");
    let mut ham = Ham::start_with(
        "beat",
        "",
        &body,
        &[
            ("HAM_FAILPOINT", "guardian:beat-unread"),
            ("HAM_FAILPOINT_FILE", &fired_s),
        ],
    );
    let s = ham.wait_for("w running", |s| running(s, "w"));
    let w = pid_of(&s, "w");
    // Armed now: the next Guardian to beat kills its HAM. That is the Guardian started by
    // the HAM promoted when the first HAM is killed (the first Guardian, which may beat only
    // now on a loaded machine, is spared: the armed file names its HAM).
    let first = s["ham"]["pid"].as_i64().unwrap() as i32;
    std::fs::write(format!("{fired_s}.armed"), first.to_string()).unwrap();
    let promoted = s["guardian"]["pid"].clone();
    sigkill(first);
    assert_eq!(ham.wait_exit(), -1);
    wait_until(&ham, "the failpoint to fire", || fired.exists());
    // The failpoint killed the promoted HAM, perhaps still in its takeover (its new
    // Guardian can beat before it has taken the segment): the HAM now is a third process.
    ham.wait_for("the HAM after the failpoint's", |s| {
        s["ham"]["pid"] != first
            && s["ham"]["pid"] != promoted
            && s["ham"]["alive"] == true
            && s["guardian"]["alive"] == true
    });
    wait_until(&ham, "the last line kept", || {
        last_kept(&ham, "w") == Some(N)
    });
    let s = ham.status();
    assert_eq!(pid_of(&s, "w"), w, "{}", ham.stderr());
    assert_eq!(entity(&s, "w")["restarts"], 0, "{}", ham.stderr());
    assert_eq!(kept_numbers(&ham, "w"), (1..=N).collect::<Vec<_>>());
}

/// Both HAM and Guardian killed: the pipe of a writer that still runs is gone with them. The
/// warm start says so, and the writer's next process writes into a new pipe that is kept.
#[test]
fn a_warm_start_says_a_running_writers_output_was_lost_and_its_next_process_is_kept() {
    let body = "[[entity]]\nname = \"w\"\ncommand = [\"/bin/sh\", \"-c\", \"echo line 1; exec sleep 100000\"]\noutput = \"log\"\n";
    let mut ham = Ham::start("lostpipe", body);
    let s = ham.wait_for("w running", |s| running(s, "w"));
    let w = pid_of(&s, "w");
    wait_until(&ham, "its line kept", || last_kept(&ham, "w") == Some(1));
    let (h, g) = (
        s["ham"]["pid"].as_i64().unwrap() as i32,
        s["guardian"]["pid"].as_i64().unwrap() as i32,
    );
    kill_pair(&mut ham, h, g);
    ham.spawn(&[]);
    let s = ham.wait_for("a warm start", |s| {
        s["ham"]["pid"] == ham.pid() && running(s, "w")
    });
    assert_eq!(pid_of(&s, "w"), w, "adopted, not restarted");
    // (The status shows the new HAM once it owns the segment, before it has adopted.)
    let said = format!("w: its output pipe was not handed over; what pid {w} writes is not kept");
    wait_until(&ham, "the warm start to say the pipe was lost", || {
        ham.stderr().contains(&said)
    });
    assert_eq!(pid_of(&ham.status(), "w"), w, "adopted, not restarted");
    assert!(ham.ctl(&["restart", "w"]).status.success());
    wait_until(&ham, "the new process's line kept", || {
        kept_numbers(&ham, "w") == [1, 1]
    });
}

#[test]
fn rotation_keeps_current_and_the_newest_archives() {
    const N: u32 = 3000;
    let body = writer("r", N, "output_max_bytes = 8192\noutput_keep = 3\n");
    let ham = Ham::start("rotate", &body);
    let dir = ham.dir.path().join("log").join(&ham.name).join("r");
    let archives = || -> Vec<u64> {
        std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('@'))
            .map(|e| e.metadata().unwrap().len())
            .collect()
    };
    // The last line can be kept by a rotation still under way (its archive made, the
    // oldest not yet deleted): wait for the rotation to finish too, not only for the line.
    wait_until(&ham, "the last line kept and 3 archives", || {
        last_kept(&ham, "r") == Some(N) && archives().len() == 3
    });
    let archives = archives();
    assert_eq!(archives.len(), 3, "{archives:?}");
    assert!(
        archives.iter().all(|&b| (8192..8192 + 65536).contains(&b)),
        "each archive is current as it reached the limit: {archives:?}"
    );
    // What is kept is the newest lines, in order, none missing.
    let nums = kept_numbers(&ham, "r");
    let first = nums[0];
    assert!(first > 1, "the oldest archives went");
    assert_eq!(nums, (first..=N).collect::<Vec<_>>());
}

#[test]
fn hamctl_logs_prints_the_last_lines_and_follows_new_ones() {
    let body = format!(
        "{}[[entity]]\nname = \"plain\"\ncommand = [\"sleep\", \"1000\"]\n",
        writer("l", 50, "output_syslog = true\n")
    );
    let ham = Ham::start_with("logs", "syslog = \"syslog.sock\"", &body, &[]);
    wait_until(&ham, "50 lines", || last_kept(&ham, "l") == Some(50));
    let out = ham.ctl(&["logs", "l", "-n", "3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| l.split_once(' ').unwrap().1.to_owned())
        .collect();
    assert_eq!(shown, ["line 48", "line 49", "line 50"]);
    // What a service prints may be secret: ham's user and group only.
    use std::os::unix::fs::PermissionsExt;
    let dir = ham.dir.path().join("log").join(&ham.name).join("l");
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o750
    );
    assert_eq!(
        std::fs::metadata(dir.join("current"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o640
    );
    // An entity without captured output: said so.
    let out = ham.ctl(&["logs", "plain"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("output = \"log\""),
        "{}",
        text(&out.stderr)
    );

    // -f: a restart of l writes 50 more lines; the follower sees them arrive.
    let mut follower = Reaped(
        Command::new(HAMCTL)
            .args([
                "-c",
                ham.config.to_str().unwrap(),
                "logs",
                "l",
                "-n",
                "1",
                "-f",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = Lines::new(follower.0.stdout.take().unwrap(), "hamctl logs -f");
    assert!(lines.next_line().ends_with(" line 50"));
    let out = ham.ctl(&["restart", "l"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut seen = Vec::new();
    while seen.len() < 50 {
        let l = lines.next_line();
        seen.push(l.split_once(' ').unwrap().1.to_owned());
    }
    drop(follower);
    assert_eq!(
        seen,
        (1..=50).map(|n| format!("line {n}")).collect::<Vec<_>>()
    );
}

#[test]
fn captured_lines_can_also_go_to_syslog() {
    let mut ham = Ham::configured(
        "outsys",
        "syslog = \"syslog.sock\"",
        &writer("s", 3, "output_syslog = true\n"),
    );
    let sock = std::os::unix::net::UnixDatagram::bind(ham.dir.path().join("syslog.sock")).unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    ham.spawn(&[]);
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while got.len() < 3 {
        let n = recv_retrying(&sock, &mut buf).expect("a syslog line");
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        // The process log's restart lines go there too; only s's output is counted.
        if m.starts_with("<30>s: ") {
            got.push(m);
        }
    }
    assert_eq!(got, ["<30>s: line 1", "<30>s: line 2", "<30>s: line 3"]);
}
