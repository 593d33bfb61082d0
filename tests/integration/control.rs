//! `hamctl` start/stop/restart/shutdown and the control socket's rules.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use serde_json::json;

use crate::util::*;

#[test]
fn stop_keeps_an_entity_down_and_start_brings_it_back() {
    let ham = Ham::start("stopstart", &format!("{}{}", sleeper("a"), sleeper("b")));
    let s = ham.wait_for("both running", |s| running(s, "a") && running(s, "b"));
    let a = pid_of(&s, "a");
    let a_start = start_time(a).unwrap();

    let out = ham.ctl(&["stop", "a"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "a stopped");
    // hamctl stop answers once the process is gone.
    assert!(!alive(a, a_start));
    let s = ham.status();
    assert_eq!(entity(&s, "a")["state"], "stopped");
    assert_eq!(entity(&s, "a")["pid"], json!(null));

    // It stays stopped: kill b and let ham restart it, so the loop has turned since.
    sigkill(pid_of(&s, "b"));
    let s = ham.wait_for("b restarted", |s| {
        running(s, "b") && entity(s, "b")["restarts"] == 1
    });
    assert_eq!(entity(&s, "a")["state"], "stopped");
    assert_eq!(entity(&s, "a")["restarts"], 0);

    let out = ham.ctl(&["start", "a"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = ham.status();
    let ea = entity(&s, "a");
    assert_eq!(ea["state"], "running");
    assert!(text(&out.stdout).contains(&format!("running as pid {}", ea["pid"])));
    // An operator start is not an automatic restart.
    assert_eq!(ea["restarts"], 0);
    assert_eq!(ea["starts"], 2);

    let before = pid_of(&s, "a");
    let out = ham.ctl(&["restart", "a"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = ham.status();
    assert!(running(&s, "a"));
    assert_ne!(pid_of(&s, "a"), before);
    assert_eq!(entity(&s, "a")["restarts"], 0);
    assert_eq!(entity(&s, "a")["starts"], 3);
}

#[test]
fn unknown_entities_and_bad_commands_are_refused() {
    let ham = Ham::start("unknown", &sleeper("a"));
    let out = ham.ctl(&["stop", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no entity named `nope`"));
    let out = ham.ctl(&["explode"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown command"));
    assert!(ham.ctl(&["ping"]).status.success());
}

#[test]
fn shutdown_stops_everything_and_leaves_nothing_behind() {
    let body = format!(
        "{}{}{}",
        sleeper("a"),
        sleeper("b"),
        "[[entity]]\nname = \"stubborn\"\ncommand = [\"/bin/sh\", \"-c\", \"trap '' TERM; while :; do sleep 1; done\"]\nstop_timeout = \"300ms\"\n"
    );
    let mut ham = Ham::start("shutdown", &body);
    let s = ham.wait_for("all running", |s| {
        ["a", "b", "stubborn"].iter().all(|n| running(s, n))
    });
    let procs: Vec<(i32, u64)> = ["a", "b", "stubborn"]
        .iter()
        .map(|n| {
            let p = pid_of(&s, n);
            (p, start_time(p).unwrap())
        })
        .collect();
    assert!(ham.segment_path().exists() && ham.socket_path().exists() && ham.pid_file().exists());

    let out = ham.ctl(&["shutdown"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(ham.wait_exit(), 0);
    for (pid, st) in procs {
        assert!(!alive(pid, st), "entity pid {pid} survived the shutdown");
    }
    assert!(!ham.segment_path().exists(), "segment left behind");
    assert!(!ham.socket_path().exists(), "socket left behind");
    assert!(!ham.pid_file().exists(), "pid file left behind");
    assert_eq!(ham.ctl(&["status"]).status.code(), Some(3));
}

#[test]
fn sigterm_to_ham_is_a_shutdown() {
    let mut ham = Ham::start("sigterm", &sleeper("a"));
    let s = ham.wait_for("running", |s| running(s, "a"));
    let a = pid_of(&s, "a");
    let a_start = start_time(a).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ham.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(ham.wait_exit(), 0);
    assert!(!alive(a, a_start));
    assert!(!ham.segment_path().exists());
}

#[test]
fn a_second_ham_for_a_running_instance_is_refused() {
    let ham = Ham::start("twice", &sleeper("a"));
    let s = ham.wait_for("running", |s| running(s, "a"));
    let out = Command::new(HAM)
        .arg("-c")
        .arg(&ham.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("already running"),
        "{}",
        text(&out.stderr)
    );
    // The first one is untouched.
    let s2 = ham.status();
    assert_eq!(pid_of(&s2, "a"), pid_of(&s, "a"));
    assert_eq!(s2["ham"]["pid"], ham.pid());
}

#[test]
fn the_control_socket_refuses_other_users() {
    if !nix::unistd::geteuid().is_root() {
        panic!("this test needs root, to act as another user (CI runs as root)");
    }
    let ham = Ham::start("peercred", &sleeper("a"));
    ham.wait_for("running", |s| running(s, "a"));
    // Open the socket's file mode so only SO_PEERCRED stands in the way.
    std::fs::set_permissions(ham.socket_path(), std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(&ham.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = ham.socket_path().parent().unwrap().to_owned();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = Command::new(HAMCTL);
    std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
    let out = cmd
        .arg("-c")
        .arg(&ham.config)
        .args(["stop", "a"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("permission denied"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        running(&ham.status(), "a"),
        "the refused request had no effect"
    );
}

#[test]
fn garbage_on_the_control_socket_is_answered_and_ham_carries_on() {
    use std::io::{Read, Write};
    let ham = Ham::start("garbage", &sleeper("a"));
    let s = ham.wait_for("running", |s| running(s, "a"));
    let ask = |bytes: &[u8]| {
        let mut c = std::os::unix::net::UnixStream::connect(ham.socket_path()).unwrap();
        c.set_read_timeout(Some(DEADLINE)).unwrap();
        let _ = c.write_all(bytes);
        let _ = c.shutdown(std::net::Shutdown::Write);
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        answer
    };
    let a = ask(b"{\"cmd\": \"stop\", \"entity\": 42}\n");
    assert!(
        a.contains("\"ok\":false") && a.contains("bad request"),
        "{a}"
    );
    let a = ask(b"\xff\xfe not json at all\n");
    assert!(a.contains("bad request"), "{a}");
    let a = ask(&vec![b'x'; 10_000]);
    assert!(a.contains("at most 4096 bytes"), "{a}");
    // A client that connects and says nothing is simply dropped.
    drop(std::os::unix::net::UnixStream::connect(ham.socket_path()).unwrap());
    // Still supervising: same process, and a death is still handled.
    assert_eq!(pid_of(&ham.status(), "a"), pid_of(&s, "a"));
    sigkill(pid_of(&s, "a"));
    ham.wait_for("a restarted", |s| {
        running(s, "a") && entity(s, "a")["restarts"] == 1
    });
}

/// Sends `line` on `c` and reads one answer line.
fn ask_on(c: &std::os::unix::net::UnixStream, line: &str) -> serde_json::Value {
    use std::io::{BufRead, Write};
    (&*c).write_all(line.as_bytes()).unwrap();
    let mut answer = String::new();
    std::io::BufReader::new(c).read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
}

#[test]
fn a_session_answers_request_after_request_on_one_connection() {
    use std::io::Write;
    let ham = Ham::start("session", &sleeper("a"));
    ham.wait_for("running", |s| running(s, "a"));
    let c = std::os::unix::net::UnixStream::connect(ham.socket_path()).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    // Without asking for a session, a connection answers one request and ends.
    let one = std::os::unix::net::UnixStream::connect(ham.socket_path()).unwrap();
    one.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(ask_on(&one, "{\"cmd\":\"ping\"}\n")["message"], "pong");
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut &one, &mut rest).unwrap();
    assert!(rest.is_empty(), "more after the answer: {rest:?}");

    let a = ask_on(&c, "{\"cmd\":\"session\"}\n");
    assert_eq!(a["ok"], true, "{a}");
    for _ in 0..3 {
        assert_eq!(ask_on(&c, "{\"cmd\":\"ping\"}\n")["message"], "pong");
    }
    // A bad line is answered, and the session goes on.
    let a = ask_on(&c, "{\"cmd\": \"stop\", \"entity\": 42}\n");
    assert!(a["error"].as_str().unwrap().contains("bad request"), "{a}");
    let a = ask_on(&c, "{\"cmd\":\"hello\"}\n");
    assert_eq!(a["peer"][0], std::process::id(), "{a}");
    // A request that acts: stop `a` on the session, then start it again.
    let a = ask_on(&c, "{\"cmd\":\"stop\",\"entity\":\"a\"}\n");
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(entity(&ham.status(), "a")["state"], "stopped");
    let a = ask_on(&c, "{\"cmd\":\"start\",\"entity\":\"a\"}\n");
    assert_eq!(a["ok"], true, "{a}");
    ham.wait_for("a running again", |s| running(s, "a"));
    // A session that asks again before reading its answers is answered once, then closed
    // (its answers would fill the socket, and each further write hold ham's loop).
    {
        use std::io::Read;
        (&c).write_all(b"{\"cmd\":\"ping\"}\n{\"cmd\":\"hello\"}\n")
            .unwrap();
        // Read nothing until ham has closed its end (so the first answer is unread when
        // ham takes the second line, whatever the timing).
        let mut pfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&c),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, alive for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, DEADLINE.as_millis() as i32) };
        assert_eq!(n, 1, "ham did not close the session");
        let mut rest = String::new();
        (&c).read_to_string(&mut rest).unwrap();
        assert!(rest.contains("pong") && !rest.contains("token"), "{rest}");
    }
    assert!(ham.ctl(&["ping"]).status.success());
    assert!(
        ham.stderr()
            .contains("asked again before reading its answers"),
        "{}",
        ham.stderr()
    );
}
