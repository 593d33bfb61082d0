//! Issue 11: ham holds against hostile local users, exhausted resources and a loaded
//! machine. Each test here reproduces an attack or a fault that once succeeded.

use std::os::unix::fs::PermissionsExt;

use serde_json::{Value, json};

use crate::util::*;

/// Runs `script` (shell) as entity `self` under uid/gid 65534 (nobody, the client group's
/// member), in a world-writable work folder; returns the instance once `self` has exited.
fn as_entity_process(tag: &str, work: &std::path::Path, script: &str) -> Ham {
    std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = work.join("script.sh");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let body = format!(
        "[[entity]]\nname = \"self\"\nuser = \"nobody\"\nrestart = \"never\"\n\
         command = [\"/bin/sh\", \"{}\"]\n",
        path.display()
    );
    let ham = Ham::start_with(tag, "client_group = \"65534\"\n", &body, &[]);
    ham.wait_for("self exited", |s| entity(s, "self")["state"] == "exited");
    ham
}

fn define_line(change: Value, out: &std::path::Path) -> String {
    format!(
        "{} define '{change}'; echo $? > {}\n",
        env!("CARGO_BIN_EXE_ham-client"),
        out.display()
    )
}

fn code(path: std::path::PathBuf) -> i32 {
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn an_entity_cannot_smuggle_a_command_in_a_nested_or_fail_list() {
    // Point 1: the permission rule is checked on the whole tree a process defines on
    // itself: a condition's own action list and every fail list, at any depth.
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let marker = w.join("ran-as-root");
    let touch = json!({"do": "execute", "command": ["/bin/touch", marker.to_str().unwrap()]});
    let mut script = String::new();
    // A condition carrying an execute in its own action list.
    script += &define_line(
        json!({"op": "condition", "entity": "self",
               "table": {"name": "nested", "on": "death", "action": [touch.clone()]}}),
        &w.join("nested"),
    );
    // A harmless condition, then a heartbeat-healthy action whose fail list (two deep)
    // holds an execute.
    script += &define_line(
        json!({"op": "condition", "entity": "self", "table": {"name": "d", "on": "death"}}),
        &w.join("cond"),
    );
    script += &define_line(
        json!({"op": "action", "entity": "self", "condition": "d",
               "table": {"name": "hh", "do": "heartbeat-healthy",
                         "on_fail": [{"do": "log", "message": "m",
                                      "on_fail": [touch.clone()]}]}}),
        &w.join("fail"),
    );
    // What is allowed still is: a condition whose actions only log and notify.
    script += &define_line(
        json!({"op": "condition", "entity": "self",
               "table": {"name": "ok", "on": "death",
                         "action": [{"do": "log", "message": "bye",
                                     "on_fail": [{"do": "notify", "topic": "t"}]}]}}),
        &w.join("ok"),
    );
    let ham = as_entity_process("own-nested", w, &script);
    assert_ne!(code(w.join("nested")), 0, "{}", ham.stderr());
    assert_eq!(code(w.join("cond")), 0, "{}", ham.stderr());
    assert_ne!(code(w.join("fail")), 0, "{}", ham.stderr());
    assert_eq!(code(w.join("ok")), 0, "{}", ham.stderr());
    let tree = text(&ham.ctl(&["status", "--tree"]).stdout);
    assert!(!tree.contains("execute"), "{tree}");
    assert!(tree.contains("log"), "{tree}");
    // The death conditions that were accepted have run (their log line is written after
    // the run); nothing ran as root.
    wait_until(&ham, "the `ok` condition ran", || {
        ham.log_of("self")
            .iter()
            .any(|l| l["action"] == "log" && l["result"] == "bye")
    });
    assert!(
        !marker.exists(),
        "a command defined by an entity ran as root"
    );
}

/// A second `ham` on `ham`'s configuration, run to its end: how it ended, and what it said
/// on stderr (kept in `<tag>.stderr` in the test's folder).
fn second_ham(ham: &Ham, tag: &str) -> (Option<std::process::ExitStatus>, String) {
    let err_path = ham.dir.path().join(format!("{tag}.stderr"));
    let mut child = ham
        .command(&[])
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let status = wait_child(&mut child);
    (status, std::fs::read_to_string(&err_path).unwrap())
}

/// `ham` as root on `squatted`'s configuration: it must refuse, naming the squatter.
fn refused_as_squatted(squatted: &Ham, uid: u32) {
    let (status, err) = second_ham(squatted, "refused");
    assert!(
        status.is_some_and(|s| !s.success()),
        "ham started on a squatted name: {err}"
    );
    assert!(
        err.contains(&format!("belongs to uid {uid}")),
        "the refusal names the owner: {err}"
    );
}

#[test]
fn a_segment_squatted_by_another_user_is_refused_never_used() {
    // Point 2: a local user runs ham under root's instance name first. Root's ham refuses
    // while it runs, and after it is gone refuses its leftover file (which the squatter
    // could read and write, key included) instead of warm-starting on it.
    let mut squatter = Ham::configured("squat", "", &sleeper("victim"));
    std::fs::set_permissions(squatter.dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut cmd = squatter.command(&[]);
    std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
    std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
    squatter.child = Some(cmd.spawn().unwrap());
    squatter.wait_for("the squatter's ham", |s| {
        s["entities"].as_array().is_some_and(|v| {
            v.iter()
                .any(|e| e["name"] == "victim" && e["pid"].as_i64() > Some(0))
        })
    });
    let seg = squatter.segment_path();
    let forged = std::fs::read(&seg).unwrap();
    refused_as_squatted(&squatter, 65534);

    // The squatter stops (root may ask it), leaving a copy of its segment behind.
    assert!(squatter.ctl(&["shutdown"]).status.success());
    assert_eq!(squatter.wait_exit(), 0);
    std::fs::write(&seg, &forged).unwrap();
    std::os::unix::fs::chown(&seg, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&seg, std::fs::Permissions::from_mode(0o600)).unwrap();
    refused_as_squatted(&squatter, 65534);
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        forged,
        "the squatter's file is left alone"
    );
    assert!(
        entity_processes(&squatter.name, "victim").is_empty(),
        "nothing was started from a forged segment"
    );
    std::fs::remove_file(&seg).unwrap();

    // The client segment's name, squatted alone, is refused the same way.
    let client = format!("/dev/shm/ham.{}.client", squatter.name);
    std::fs::write(&client, b"").unwrap();
    std::os::unix::fs::chown(&client, Some(65534), Some(65534)).unwrap();
    refused_as_squatted(&squatter, 65534);
    std::fs::remove_file(&client).unwrap();
}

/// CPU time (user + system, in clock ticks) that `pid` has used so far.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    // Fields 14 and 15 of stat(5), counted after the command's closing parenthesis.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn a_ham_with_entities_down_uses_no_cpu() {
    // Point 6: a dead entity's pidfd stayed registered (the Guardian holds another
    // descriptor of the same open file) and the loop spun at 100 % while any entity was
    // exited, stopped or held off.
    let body = "[[entity]]\nname = \"up\"\ncommand = [\"/bin/sleep\", \"100000\"]\n\
                [[entity]]\nname = \"stopped\"\ncommand = [\"/bin/sleep\", \"100000\"]\n\
                [[entity]]\nname = \"exited\"\ncommand = [\"/bin/true\"]\nrestart = \"on-failure\"\n\
                [[entity]]\nname = \"crashy\"\ncommand = [\"/bin/false\"]\n\
                policy = { kind = \"switch\", exits = 2, within = \"1m\", hold_off = \"10m\" }\n";
    let ham = Ham::start("idle-down", body);
    assert!(ham.ctl(&["stop", "stopped"]).status.success());
    let s = ham.wait_for("every entity settled", |s| {
        entity(s, "up")["state"] == "running"
            && entity(s, "stopped")["state"] == "stopped"
            && entity(s, "exited")["state"] == "exited"
            && entity(s, "crashy")["state"] == "held-off"
    });
    let pids = [
        s["ham"]["pid"].as_i64().unwrap() as i32,
        s["guardian"]["pid"].as_i64().unwrap() as i32,
    ];
    let before: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
    // Several seconds of nothing to do: the measurement window, not a synchronisation.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let used: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum::<u64>() - before;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as u64;
    // A spinning loop uses ~3 s; an idle pair a tick or two (its liveness ticks).
    assert!(
        used * 10 <= 3 * hz,
        "the pair used {used} ticks ({hz}/s) in 3 s with nothing to do"
    );
}

/// Starts `ham` with RLIMIT_NOFILE set to `soft` and `hard`.
fn spawn_with_nofile(ham: &mut Ham, soft: u64, hard: u64) {
    let mut cmd = ham.command(&[]);
    // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    ham.child = Some(cmd.spawn().unwrap());
}

#[test]
fn a_low_descriptor_limit_still_starts_entities_and_says_how_many_fit() {
    // Point 10: at RLIMIT_NOFILE 64 no entity and no Guardian ever started (the child
    // moved its descriptors to 64, which that limit forbids).
    let body: String = (0..8).map(|k| sleeper(&format!("s{k}"))).collect();
    for (soft, hard) in [(64, 64), (64, 4096)] {
        let mut ham = Ham::configured("nofile", "", &body);
        spawn_with_nofile(&mut ham, soft, hard);
        ham.wait_for("every entity and the guardian up", |s| {
            s["guardian"]["alive"] == true
                && s["entities"]
                    .as_array()
                    .is_some_and(|v| v.len() == 8 && v.iter().all(|e| e["state"] == "running"))
        });
        // ham raised its soft limit to the hard one, and says what fits.
        assert!(
            ham.stderr()
                .contains(&format!("descriptors: limit {hard}, room for about")),
            "{}",
            ham.stderr()
        );
        // What the entities got is the soft limit ham was started with.
        let pid = pid_of(&ham.status(), "s0");
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        assert_eq!(line.split_whitespace().nth(3), Some("64"), "{line}");
    }
}

/// Runs `f` as uid/gid 65534 (a client-group member), on a thread that changes only its
/// own credentials (raw `setresuid`, not glibc's, which would change every thread's): the
/// kernel records them at `connect`, and checks them at `open`.
pub(crate) fn as_member<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: plain system calls on this thread's credentials.
        unsafe {
            assert_eq!(libc::syscall(libc::SYS_setresgid, 65534, 65534, 0), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, 65534, 65534, 0), 0);
        }
        let _ = tx.send(f());
    });
    rx.recv_timeout(DEADLINE).expect("the member's work ended")
}

/// Opens `n` connections to `socket` as a client-group member.
fn connect_as_member(socket: &std::path::Path, n: usize) -> Vec<std::os::unix::net::UnixStream> {
    let socket = socket.to_owned();
    as_member(move || {
        (0..n)
            .map(|_| std::os::unix::net::UnixStream::connect(&socket).unwrap())
            .collect()
    })
}

/// How many of `conns` ham still holds open (a read would block rather than end).
fn still_open(conns: &[std::os::unix::net::UnixStream]) -> usize {
    use std::io::Read;
    conns
        .iter()
        .filter(|c| {
            c.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 512];
            loop {
                match (&**c).read(&mut buf) {
                    Ok(0) => return false,
                    Ok(_) => continue, // a refusal's answer, then the end
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                    Err(_) => return false,
                }
            }
        })
        .count()
}

/// Opens `n` sessions (`{"cmd":"session"}`, answered) to `socket` as a client-group member.
fn sessions_as_member(socket: &std::path::Path, n: usize) -> Vec<std::os::unix::net::UnixStream> {
    use std::io::{BufRead, Write};
    let socket = socket.to_owned();
    as_member(move || {
        (0..n)
            .map(|_| {
                let c = std::os::unix::net::UnixStream::connect(&socket).unwrap();
                c.set_read_timeout(Some(DEADLINE)).unwrap();
                (&c).write_all(b"{\"cmd\":\"session\"}\n").unwrap();
                let mut answer = String::new();
                // One byte at a time: nothing of a later answer is taken from the socket.
                let mut r = std::io::BufReader::with_capacity(1, &c);
                r.read_line(&mut answer).unwrap();
                assert!(answer.contains("\"ok\":true"), "{answer}");
                c
            })
            .collect()
    })
}

#[test]
fn a_members_idle_sessions_give_way_to_its_new_connections() {
    // Sessions (a connection the SDK keeps for its requests) count toward the member's 16
    // connections, but hold nothing: when the member needs another connection, ham closes
    // its longest idle session instead of refusing, and idle sessions are not closed as
    // silent connections are.
    let ham = Ham::configured("sessions", "client_group = \"65534\"\n", &sleeper("a"));
    let mut ham = ham;
    ham.spawn(&[]);
    ham.wait_for("running", |s| running(s, "a"));
    let sessions = sessions_as_member(&ham.socket_path(), 16);
    assert_eq!(still_open(&sessions[..1]), 1);
    // A 17th connection of the member: answered, and the first session (idle longest) closed.
    let socket = ham.socket_path();
    let answer = as_member(move || {
        use std::io::{Read, Write};
        let mut c = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        c.set_read_timeout(Some(DEADLINE)).unwrap();
        c.write_all(b"{\"cmd\":\"ping\"}\n").unwrap();
        let mut a = String::new();
        c.read_to_string(&mut a).unwrap();
        a
    });
    assert!(answer.contains("pong"), "{answer}");
    assert_eq!(
        still_open(&sessions[..1]),
        0,
        "the longest idle session was closed"
    );
    assert_eq!(still_open(&sessions[1..]), 15, "the others stay");
    // Silent connections (no request) are closed after 5 s; sessions are not.
    let silent = connect_as_member(&ham.socket_path(), 1);
    wait_until(&ham, "the silent connection closed", || {
        still_open(&silent) == 0
    });
    assert_eq!(still_open(&sessions[1..]), 15, "idle sessions are kept");
    for c in &sessions[1..] {
        c.set_nonblocking(false).unwrap();
    }
    let a = {
        use std::io::{BufRead, Write};
        (&sessions[1]).write_all(b"{\"cmd\":\"ping\"}\n").unwrap();
        let mut a = String::new();
        std::io::BufReader::new(&sessions[1])
            .read_line(&mut a)
            .unwrap();
        a
    };
    assert!(a.contains("pong"), "a kept session still answers: {a}");
}

#[test]
fn a_member_holding_many_connections_cannot_starve_ham() {
    // Point 5: a member held 1,100 idle connections at RLIMIT_NOFILE 1024; the HAM spun on
    // "accept: Too many open files" (187 MB of log in 10 s) and did not restart a killed
    // entity.
    let mut ham = Ham::configured(
        "conn-flood",
        "client_group = \"65534\"\n",
        &sleeper("victim"),
    );
    spawn_with_nofile(&mut ham, 1024, 1024);
    let s = ham.wait_for("up", |s| {
        s["guardian"]["alive"] == true
            && s["entities"]
                .as_array()
                .is_some_and(|v| v.iter().any(|e| e["state"] == "running"))
    });
    let hp = s["ham"]["pid"].as_i64().unwrap() as i32;
    let conns = connect_as_member(&ham.socket_path(), 1100);
    // ham answers root, and keeps supervising.
    assert!(ham.ctl(&["ping"]).status.success(), "{}", ham.stderr());
    let old = pid_of(&ham.status(), "victim");
    sigkill(old);
    ham.wait_for("victim restarted", |s| {
        running(s, "victim") && pid_of(s, "victim") != old
    });
    let before = cpu_ticks(hp);
    // A measurement window while the connections are held.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let used = cpu_ticks(hp) - before;
    assert!(
        used <= 20,
        "the HAM used {used} ticks in 2 s while they were held"
    );
    let open = still_open(&conns);
    assert!(open <= 16, "ham holds {open} connections of one member");
    let log_len = std::fs::metadata(ham.dir.path().join("ham.stderr"))
        .unwrap()
        .len();
    assert!(log_len < 64 * 1024, "ham wrote {log_len} bytes of log");
    // Connections that ask nothing are closed.
    wait_until(&ham, "the idle connections closed", || {
        still_open(&conns) == 0
    });
}

#[test]
fn a_member_cannot_forge_or_suppress_another_clients_heartbeat() {
    // Point 3: a client-group member wrote "future" beats into another client's slot of
    // the group-writable client segment, made it look hung, got it aborted and (through
    // its policy) the device restarted. Each attachment now beats into its own page.
    let beater = format!(
        "[[entity]]\nname = \"victim\"\ncommand = [\"{}\", \"heartbeat\", \"victim\", \
         \"--period\", \"100ms\", \"--low\", \"10\", \"--high\", \"20\"]\n",
        env!("CARGO_BIN_EXE_ham-client")
    );
    let ham = Ham::start_with("hb-forge", "client_group = \"65534\"\n", &beater, &[]);
    let s = ham.wait_for("victim attached", |s| {
        !entity(s, "victim")["heartbeat"].is_null()
    });
    let pid = pid_of(&s, "victim");
    let client_seg = ham_core::paths::client_segment(&ham.name);
    let instance = ham.name.clone();
    let pages = as_member(move || {
        // The member maps the client segment as any client does...
        let seg = ham_core::client::ClientSegment::open(&client_seg).expect("a member maps it");
        // ...and cannot open any attachment's heartbeat page.
        let pages: Vec<_> = (0..4)
            .map(|slot| ham_core::paths::beat_page(&instance, slot))
            .filter(|n| std::path::Path::new(&format!("/dev/shm{n}")).exists())
            .map(|n| ham_core::beat::BeatMap::open(&n).is_ok())
            .collect();
        // Every heartbeat word it can reach gets beats from the future, every millisecond
        // for 3 s: longer than the victim's missed-high window (20 × 100 ms), which is
        // wide enough that a loaded machine alone never makes it miss.
        let until = std::time::Instant::now() + std::time::Duration::from_millis(3000);
        while std::time::Instant::now() < until {
            for slot in 0..seg.hb_slots() {
                seg.beat(slot, u64::MAX / 2);
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        pages
    });
    let s = ham.status();
    assert_eq!(pid_of(&s, "victim"), pid, "the victim was restarted");
    assert_eq!(entity(&s, "victim")["restarts"], 0);
    assert!(
        !ham.stderr().contains("heartbeat-missed"),
        "{}",
        ham.stderr()
    );
    assert!(!pages.is_empty(), "the victim has a heartbeat page");
    assert!(
        pages.iter().all(|opened| !opened),
        "a member opened a heartbeat page"
    );
}

#[test]
fn a_stopped_guardian_is_fenced_and_replaced() {
    // Point 17: with the Guardian SIGSTOPped, a killed HAM left the box unsupervised until
    // SIGCONT. The HAM now watches the Guardian's liveness and replaces a stopped one.
    let mut ham = Ham::start("stopped-guardian", &sleeper("app"));
    let s = ham.status();
    let old_guardian = s["guardian"]["pid"].as_i64().unwrap() as i32;
    sigstop(old_guardian);
    let s = ham.wait_for("a new guardian", |s| {
        s["guardian"]["alive"] == true && s["guardian"]["pid"].as_i64() != Some(old_guardian.into())
    });
    assert!(
        ham.stderr().contains("has been stopped for") && ham.stderr().contains("fencing it"),
        "{}",
        ham.stderr()
    );
    // The new pair holds: the HAM dies, the new Guardian takes over and supervises.
    let g = s["guardian"]["pid"].clone();
    sigkill(ham.pid());
    assert_eq!(ham.wait_exit(), -1);
    let s = ham.wait_for("the new guardian promoted", |s| {
        s["ham"]["pid"] == g && s["ham"]["alive"] == true
    });
    let app = pid_of(&s, "app");
    sigkill(app);
    ham.wait_for("app restarted", |s| {
        running(s, "app") && pid_of(s, "app") != app
    });
}

#[test]
fn an_entity_cannot_fill_the_definitions_and_root_keeps_its_share() {
    // Point 4: one unprivileged entity filled the shared definitions document in 78
    // requests, after which root's own definitions were refused.
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let big = "x".repeat(4000);
    let c = env!("CARGO_BIN_EXE_ham-client");
    let script = format!(
        "n=0\nfor k in $(seq 200); do\n  {c} define \"{{\\\"op\\\": \\\"condition\\\", \
         \\\"entity\\\": \\\"self\\\", \\\"table\\\": {{\\\"name\\\": \\\"c$k\\\", \\\"on\\\": \
         \\\"death\\\", \\\"action\\\": [{{\\\"do\\\": \\\"log\\\", \\\"message\\\": \\\"{big}\\\"}}]}}}}\" \
         2>>{err} || break\n  n=$k\ndone\necho $n > {out}\n",
        err = w.join("err").display(),
        out = w.join("n").display()
    );
    let ham = as_entity_process("defs-quota", w, &script);
    let accepted = code(w.join("n"));
    assert!(
        (1..10).contains(&accepted),
        "accepted {accepted} definitions of ~4 KB: {}",
        std::fs::read_to_string(w.join("err")).unwrap_or_default()
    );
    let err = std::fs::read_to_string(w.join("err")).unwrap();
    assert!(err.contains("quota"), "{err}");
    // Root's definitions still fit.
    let out = std::process::Command::new(c)
        .args(["-c", ham.config.to_str().unwrap(), "define"])
        .arg(
            json!({"op": "condition", "entity": "self", "table": {"name": "root", "on": "death"}})
                .to_string(),
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = ham.status();
    assert!(
        s["limits"]["definitions_refused"].as_u64() >= Some(1),
        "{s}"
    );
}

#[test]
fn a_raising_loop_cannot_queue_condition_runs_without_bound() {
    // Point 4: one detector raising in a loop grew the HAM from 3.5 MiB to 144 MiB of
    // queued condition runs. An entity has at most 16 open; the rest are dropped, counted.
    let body = "[[entity]]\nname = \"e\"\ncommand = [\"/bin/sleep\", \"100000\"]\n\
                [[entity.condition]]\non = \"raise\"\n\
                [[entity.condition.action]]\ndo = \"delay\"\ndelay = \"1h\"\n";
    let ham = Ham::start("runs-quota", body);
    ham.wait_for("e running", |s| running(s, "e"));
    let script = format!(
        "for k in $(seq 100); do {} -c {} raise e c >/dev/null || exit 1; done",
        HAMCTL,
        ham.config.display()
    );
    let st = std::process::Command::new("/bin/sh")
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(st.success());
    let s = ham.wait_for("the raises counted", |s| {
        s["limits"]["runs_dropped"].as_u64() == Some(100 - 16)
    });
    assert!(running(&s, "e"));
    assert!(ham.stderr().contains("dropped"), "{}", ham.stderr());
}

#[test]
fn a_member_cannot_hold_unbounded_subscriptions() {
    // Point 4: each subscription holds a descriptor in ham.
    let ham = Ham::start_with(
        "subs-quota",
        "client_group = \"65534\"\n",
        &sleeper("s"),
        &[],
    );
    let socket = ham.socket_path();
    let (accepted, _held) = as_member(move || {
        use std::io::{BufRead, Write};
        let line = serde_json::to_string(&ham_core::protocol::Request::Subscribe {
            topic: "t".into(),
            signal: None,
        })
        .unwrap();
        let mut held = Vec::new();
        for _ in 0..40 {
            let c = std::os::unix::net::UnixStream::connect(&socket).unwrap();
            (&c).write_all(format!("{line}\n").as_bytes()).unwrap();
            c.set_read_timeout(Some(DEADLINE)).unwrap();
            let mut answer = String::new();
            std::io::BufReader::new(&c).read_line(&mut answer).unwrap();
            if answer.contains("\"ok\":true") {
                held.push(c);
            }
        }
        (held.len(), held)
    });
    assert_eq!(accepted, 32, "one uid holds at most 32 subscriptions");
    let s = ham.status();
    assert_eq!(s["limits"]["subscriptions_refused"], 8);
}

/// A `ham` in a mount namespace of its own whose /dev/shm is a tmpfs of `shm_kib` KiB:
/// exhausting it touches nothing outside the test.
struct ShmNs {
    ham: Ham,
    /// The namespace's first process (ham, once `sh` has exec'd it).
    pid: u32,
}

impl ShmNs {
    fn start(tag: &str, body: &str, shm_kib: u64) -> ShmNs {
        let mut ham = Ham::configured(tag, "", body);
        let inner = ham.command(&[]);
        let args: Vec<String> = std::iter::once(inner.get_program())
            .chain(inner.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let mut cmd = std::process::Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs -o size={shm_kib}k tmpfs /dev/shm && exec {}",
                args.join(" ")
            ))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(ham.dir.path().join("ham.stderr"))
                    .unwrap(),
            );
        let child = cmd.spawn().unwrap();
        let pid = child.id();
        ham.child = Some(child);
        ShmNs { ham, pid }
    }

    /// Runs `args` inside the namespace (as root, or as uid 65534 with `member`).
    fn run(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("nsenter")
            .arg(format!("--mount=/proc/{}/ns/mnt", self.pid))
            .args(args)
            .output()
            .unwrap()
    }

    fn status(&self) -> Option<Value> {
        let out = self.run(&[
            HAMCTL,
            "-c",
            self.ham.config.to_str().unwrap(),
            "status",
            "--json",
        ]);
        serde_json::from_slice(&out.stdout).ok()
    }

    fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let start = std::time::Instant::now();
        loop {
            if let Some(s) = self.status().filter(|s| pred(s)) {
                return s;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}: {}",
                self.ham.stderr()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for ShmNs {
    fn drop(&mut self) {
        let _ = self.run(&[HAMCTL, "-c", self.ham.config.to_str().unwrap(), "shutdown"]);
        // Whatever of this instance is left, its pair or its entities (its segments vanish
        // with the namespace).
        let pair = ham_processes_of(&self.ham.name);
        let entities = processes_where(|env| env_has(env, "HAM_INSTANCE", &self.ham.name));
        for pid in pair.into_iter().chain(entities) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[test]
fn a_full_dev_shm_fails_the_start_with_a_message_not_a_crash_loop() {
    // Point 8: the segments were sparse; with /dev/shm nearly full the HAM died of SIGBUS
    // on first touch, the Guardian took over and died the same way, ~2,000 times in 4 s.
    let mut ns = ShmNs::start("shm-small", &sleeper("s"), 1024);
    let status = wait_child(ns.ham.child.as_mut().unwrap());
    ns.ham.child = None;
    let err = ns.ham.stderr();
    assert!(
        status.is_some_and(|s| !s.success()),
        "ham ran on a /dev/shm too small for its segment: {err}"
    );
    assert!(err.contains("is /dev/shm full?"), "{err}");
    assert!(!err.contains("guardian"), "a pair was started: {err}");
}

#[test]
fn a_dev_shm_filled_while_running_leaves_supervision_going() {
    // Point 8: with /dev/shm filled while running, attaching a client wedged the HAM
    // until it was fenced; a truncated client segment made its SIGBUS handler retry for
    // ever.
    let body = format!(
        "{}[[entity]]\nname = \"ext\"\nattach_only = true\n",
        sleeper("app")
    );
    let ns = ShmNs::start("shm-fill", &body, 8 * 1024);
    let s = ns.wait_for("up", |s| {
        s["guardian"]["alive"] == true
            && s["entities"]
                .as_array()
                .is_some_and(|v| v.iter().any(|e| e["state"] == "running"))
    });
    // Fill what is left.
    let fill = ns.run(&["dd", "if=/dev/zero", "of=/dev/shm/fill", "bs=64k"]);
    assert!(!fill.status.success(), "the tmpfs filled up");
    // A client attaching with a heartbeat gets a clear refusal (no page to be had).
    let attach = ns.run(&[
        env!("CARGO_BIN_EXE_ham-client"),
        "-c",
        ns.ham.config.to_str().unwrap(),
        "heartbeat",
        "ext",
        "--period",
        "1s",
        "--beats",
        "1",
    ]);
    assert!(!attach.status.success());
    assert!(
        text(&attach.stderr).contains("no heartbeat page"),
        "{}",
        text(&attach.stderr)
    );
    // A client shrinks the client segment, as any member can, and what that frees is taken
    // at once (the HAM held still meanwhile, so it cannot grow the segment back between):
    // at its next tick ham touches the segment, and its pages cannot be had again.
    let client_seg = format!("/dev/shm/ham.{}.client", ns.ham.name);
    let hp = nix::unistd::Pid::from_raw(ns.pid as i32);
    nix::sys::signal::kill(hp, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let shrunk = ns
        .run(&["truncate", "-s", "0", &client_seg])
        .status
        .success();
    let refill = ns.run(&["dd", "if=/dev/zero", "of=/dev/shm/fill2", "bs=4k"]);
    nix::sys::signal::kill(hp, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(shrunk && !refill.status.success());
    wait_until(&ns.ham, "ham noticed the lost pages", || {
        ns.ham.stderr().contains("could not be allocated again")
    });
    let app = pid_of(&s, "app");
    sigkill(app);
    let s = ns.wait_for("app restarted", |s| {
        s["entities"][0]["state"] == "running"
            && s["entities"][0]["pid"].as_i64() != Some(app.into())
    });
    assert_eq!(
        s["ham"]["failures"],
        0,
        "the HAM was replaced: {}",
        ns.ham.stderr()
    );
    assert!(
        ns.run(&[HAMCTL, "-c", ns.ham.config.to_str().unwrap(), "ping"])
            .status
            .success()
    );
}

#[test]
fn a_successor_that_could_not_set_up_the_client_segment_tries_again() {
    // Point 9: a takeover while fork failed left the new HAM without its client segment
    // (no ring, no hello) for good, even after pids were freed. The failure is injected
    // here (failpoint `clients:setup`, debug builds) for as long as it is armed.
    let work = tempfile::tempdir().unwrap();
    let fp_file = work.path().join("fp");
    let armed = work.path().join("fp.armed");
    let fp = fp_file.to_str().unwrap();
    let mut ham = Ham::start_with(
        "clients-retry",
        "",
        &sleeper("app"),
        &[
            ("HAM_FAILPOINT", "clients:setup"),
            ("HAM_FAILPOINT_FILE", fp),
        ],
    );
    let raise = |ham: &Ham| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ham-client"))
            .args(["-c", ham.config.to_str().unwrap(), "raise", "app", "x"])
            .output()
            .unwrap()
    };
    assert!(raise(&ham).status.success(), "{}", ham.stderr());
    std::fs::write(&armed, b"").unwrap();
    let g = ham.status()["guardian"]["pid"].clone();
    sigkill(ham.pid());
    assert_eq!(ham.wait_exit(), -1);
    ham.wait_for("the guardian promoted", |s| {
        s["ham"]["pid"] == g && s["ham"]["alive"] == true
    });
    wait_until(&ham, "the successor failed to set up clients", || {
        ham.stderr().contains("failpoint clients:setup")
    });
    assert!(!raise(&ham).status.success(), "no client segment yet");
    // The shortage ends: the successor sets the client segment up again by itself.
    std::fs::remove_file(&armed).unwrap();
    wait_until(&ham, "the client segment set up at a retry", || {
        ham.stderr()
            .contains("client segment is set up (at a retry)")
    });
    assert!(raise(&ham).status.success(), "{}", ham.stderr());
    // The Guardian that was started before the retry is given the new bell, so that its
    // successor listens on the one clients hold (it keeps its id).
    let seg =
        ham_core::client::ClientSegment::open(&ham_core::paths::client_segment(&ham.name)).unwrap();
    let bell = seg.bell_id();
    assert_ne!(bell, 0);
    // A client of this HAM holds its bell.
    let loc = ham_detector_sdk::Location::from_config(&ham.config).unwrap();
    let c = ham_detector_sdk::Client::connect_to(&loc).unwrap();
    let s = ham.status();
    let (h, g) = (
        s["ham"]["pid"].as_i64().unwrap() as i32,
        s["guardian"]["pid"].clone(),
    );
    assert!(kill_and_wait(h));
    ham.wait_for("the guardian promoted again", |s| {
        s["ham"]["pid"] == g && s["ham"]["alive"] == true
    });
    // Answered: the successor has set its clients up.
    assert!(raise(&ham).status.success(), "{}", ham.stderr());
    assert_eq!(seg.bell_id(), bell, "{}", ham.stderr());
    // ...and it listens on that bell: the client's ring wakes it (a ring into a bell no one
    // listens on would wait for the housekeeping check, which says so).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while seg
        .header()
        .sleeping
        .load(std::sync::atomic::Ordering::SeqCst)
        & 3
        != ham_core::client::BELL_ASLEEP
    {
        assert!(std::time::Instant::now() < deadline, "the HAM never slept");
        std::thread::yield_now();
    }
    // Consumed once the ring's tail passes the ticket it takes (not counted in the status:
    // the CLI's event above may be consumed only now, the CLI does not wait for that).
    let (ticket, _) = c.ring_position();
    c.raise("app", "y", 0, 0).unwrap();
    wait_until(&ham, "the event consumed", || c.ring_position().1 > ticket);
    assert!(
        !ham.stderr().contains("no doorbell rung"),
        "{}",
        ham.stderr()
    );
}

#[test]
fn a_ham_that_cannot_read_a_live_instances_segment_refuses_to_start() {
    // Point 18: a binary with another segment layout treated a live instance's segment as
    // invalid, replaced it, and started every entity a second time. Another layout is
    // played here by changing the live segment's layout version (header bytes 8..12).
    let ham = Ham::start("other-layout", &sleeper("app"));
    let s = ham.wait_for("app running", |s| running(s, "app"));
    let app = pid_of(&s, "app");
    let seg = ham.segment_path();
    let original = std::fs::read(&seg).unwrap();
    let mut bytes = original[..12].to_vec();
    bytes[8..12].copy_from_slice(&999u32.to_ne_bytes());
    let patch = |b: &[u8]| {
        use std::os::unix::fs::FileExt;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .write_all_at(b, 0)
            .unwrap();
    };
    // The HAM mends a header scribbled over when its Guardian beats (once, entering its
    // loop): a patch made before that beat is handled may be undone, and the second `ham`
    // then finds a readable live instance ("already running"). Patched again until it holds.
    let mut tries = 0;
    let (status, err) = loop {
        patch(&bytes);
        let (status, err) = second_ham(&ham, "second");
        let mended = std::fs::read(&seg).unwrap()[8..12] != bytes[8..12];
        patch(&original[..12]);
        if !(mended && err.contains("already running")) {
            break (status, err);
        }
        tries += 1;
        assert!(tries < 50, "the header kept being mended: {}", ham.stderr());
    };
    assert!(status.is_some_and(|s| !s.success()), "{err}");
    assert!(err.contains("cannot be read by this ham"), "{err}");
    assert_eq!(
        entity_processes(&ham.name, "app"),
        vec![app],
        "the entity was started a second time"
    );
    assert_eq!(pid_of(&ham.status(), "app"), app);
}

#[test]
fn a_restart_storm_leaves_the_loop_serving() {
    // Point 7: 100 entities crash-looping under `immediate` made every `hamctl ping` fail,
    // the Guardian fenced the busy HAM 4-5 times in 12 s, a killed healthy entity waited
    // seconds and `shutdown` failed. Each turn now starts at most 16 processes.
    let mut body = sleeper("healthy");
    for k in 0..100 {
        body += &format!(
            "[[entity]]\nname = \"crash{k}\"\ncommand = [\"/bin/false\"]\n\
             policy = {{ kind = \"immediate\" }}\n"
        );
    }
    let mut ham = Ham::start("storm", &body);
    ham.wait_for("the storm going", |s| {
        s["entities"].as_array().is_some_and(|v| {
            v.iter()
                .filter(|e| e["restarts"].as_u64() > Some(3))
                .count()
                > 50
        })
    });
    // Served during the storm: pings (each answered within hamctl's timeout)...
    for _ in 0..20 {
        let out = ham.ctl(&["--timeout", "5s", "ping"]);
        assert!(out.status.success(), "ping failed: {}", text(&out.stderr));
    }
    // ...and a healthy entity's restart.
    let s = ham.status();
    let healthy = pid_of(&s, "healthy");
    sigkill(healthy);
    ham.wait_for("healthy restarted", |s| {
        running(s, "healthy") && pid_of(s, "healthy") != healthy
    });
    let s = ham.status();
    assert_eq!(
        s["ham"]["failures"],
        0,
        "the HAM was fenced: {}",
        ham.stderr()
    );
    assert!(!ham.stderr().contains("fencing"), "{}", ham.stderr());
    let out = ham.ctl(&["--timeout", "30s", "shutdown"]);
    assert!(out.status.success(), "shutdown: {}", text(&out.stderr));
    assert_eq!(ham.wait_exit(), 0);
}

#[test]
fn a_death_between_the_release_and_running_is_counted() {
    // Point 12: the pair died right after a restart had released the new process and
    // before it was recorded running; the process died too before a warm start, which
    // then started it again without counting the death (restarts one short, no death
    // conditions, last_exit and the policy windows missed it).
    let marks = tempfile::tempdir().unwrap();
    let fired = marks.path().join("fired");
    let fired_s = fired.display().to_string();
    let env = [
        ("HAM_FAILPOINT", "spawn:after-release"),
        ("HAM_FAILPOINT_FILE", fired_s.as_str()),
    ];
    let mut ham = Ham::start_with("release-gap", "", &sleeper("app"), &env);
    let s = ham.wait_for("app running", |s| running(s, "app"));
    // `running` is recorded before the release, so the first start may not have passed its
    // own `spawn:after-release` yet: a request answered by the loop after it proves it has
    // (the loop is one thread; the whole spawn is one call). Armed before that, the
    // failpoint fired in the first start (1 soak run in 20).
    assert!(ham.ctl(&["ping"]).status.success());
    let (app, guardian) = (
        pid_of(&s, "app"),
        s["guardian"]["pid"].as_i64().unwrap() as i32,
    );
    // The Guardian holds still, so the pair dies together.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(guardian),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    std::fs::write(format!("{fired_s}.armed"), "").unwrap();
    sigkill(app); // restart 1; the HAM dies right after releasing the new process
    assert_eq!(ham.wait_exit(), -1);
    assert!(fired.exists());
    let s = ham.status();
    let released = pid_of(&s, "app");
    assert_ne!(released, app, "{s}\n{}", ham.stderr());
    assert!(kill_and_wait(released), "the released process ran");
    assert!(kill_and_wait(guardian));
    std::fs::remove_file(format!("{fired_s}.armed")).unwrap();
    // A warm start: the released process's death is a death.
    ham.spawn(&env);
    let s = ham.wait_for("app running again", |s| {
        s["ham"]["alive"] == true && running(s, "app") && pid_of(s, "app") != released
    });
    assert_eq!(entity(&s, "app")["restarts"], 2, "{}", ham.stderr());
    // It died while no HAM watched and no Guardian held its pidfd: how is unknown, and
    // said so (no longer the previous death's signal).
    assert_eq!(entity(&s, "app")["last_exit"]["unknown"], true, "{s}");
    assert!(ham.stderr().contains("died while no HAM was watching"));
}

#[test]
fn sdk_requests_caught_by_a_dying_ham_are_answered_by_its_successor() {
    // Point 16: a request caught by a dying HAM failed ("connection reset", "closed
    // without an answer"), and `ham-client heartbeat` exited when its attach did. The HAM
    // here dies holding the first request it accepted from the client (failpoint
    // `control:request`).
    let marks = tempfile::tempdir().unwrap();
    let fired = marks.path().join("fired");
    let fired_s = fired.display().to_string();
    let body = "[[entity]]\nname = \"ext\"\nattach_only = true\n";
    let mut ham = Ham::start_with(
        "sdk-retry",
        "",
        body,
        &[
            ("HAM_FAILPOINT", "control:request"),
            ("HAM_FAILPOINT_FILE", fired_s.as_str()),
        ],
    );
    std::fs::write(format!("{fired_s}.armed"), "").unwrap();
    let mut client = std::process::Command::new(env!("CARGO_BIN_EXE_ham-client"))
        .args(["-c", ham.config.to_str().unwrap()])
        .args(["heartbeat", "ext", "--period", "100ms", "--low", "5"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let client_pid = client.id() as i32;
    assert_eq!(ham.wait_exit(), -1, "the HAM died holding the attach");
    assert!(fired.exists());
    let s = ham.wait_for("ext attached through the successor", |s| {
        s["ham"]["alive"] == true
            && s["entities"].as_array().is_some_and(|v| {
                v.iter()
                    .any(|e| e["name"] == "ext" && !e["heartbeat"].is_null())
            })
    });
    assert_eq!(pid_of(&s, "ext"), client_pid);
    assert!(
        client.try_wait().unwrap().is_none(),
        "ham-client exited: {:?}",
        client.wait_with_output().map(|o| text(&o.stderr))
    );
    let _ = client.kill();
    let _ = client.wait();
}

#[test]
fn processes_that_leave_an_entity_die_with_it() {
    // Point 11: `sh -c "sleep 1e5 & exit 1"` and a `setsid` daemonizer left 42 processes
    // behind in 4 s, all surviving `hamctl shutdown`. Each entity's processes now live in
    // its own cgroup (v2), killed with it.
    let body = "[[entity]]\nname = \"leaky\"\n\
                command = [\"/bin/sh\", \"-c\", \"sleep 100000 & exit 1\"]\n\
                policy = { kind = \"immediate\" }\n\
                [[entity]]\nname = \"daemon\"\n\
                command = [\"/bin/sh\", \"-c\", \"setsid sleep 100000 & sleep 100000\"]\n";
    let mut ham = Ham::start("leftovers", body);
    let s = ham.wait_for("leaky restarted 5 times, daemon up", |s| {
        s["entities"].as_array().is_some_and(|v| {
            v.iter()
                .any(|e| e["name"] == "leaky" && e["restarts"].as_u64() >= Some(5))
                && v.iter()
                    .any(|e| e["name"] == "daemon" && e["state"] == "running")
        })
    });
    let json = ham.ctl(&["status", "--json"]);
    let st: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(entity(&st, "leaky")["tracking"], "cgroup", "{st}");
    // At most the last run's `sleep` is left: each death took what it left with it. It
    // restarts at once, so a look at /proc may catch one more (the previous run's `sleep`
    // killed with its cgroup but not yet gone); left behind, they would only add up.
    wait_until(&ham, "leaky down to its last run's processes", || {
        entity_processes(&ham.name, "leaky").len() <= 2
    });
    // The daemonizer's child left its process group, not its cgroup.
    let daemon_pid = pid_of(&s, "daemon");
    let escaped: Vec<i32> = entity_processes(&ham.name, "daemon")
        .into_iter()
        .filter(|&p| p != daemon_pid)
        .collect();
    assert!(!escaped.is_empty(), "the setsid child runs");
    let out = ham.ctl(&["--timeout", "30s", "shutdown"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(ham.wait_exit(), 0);
    wait_until(&ham, "nothing of the instance left", || {
        entity_processes(&ham.name, "leaky").is_empty()
            && entity_processes(&ham.name, "daemon").is_empty()
    });
}

#[test]
fn an_entity_whose_cgroup_folder_was_made_anew_while_it_was_down_still_has_its_leftovers_killed() {
    // An administrator may remove an idle entity's cgroup folder and make it again (it can
    // be removed while it holds no process): the entity's next process must go into the new
    // folder, and what that process leaves behind must still be found and killed at the
    // restart after it (nothing of ham's may still point at the folder that is gone).
    let body = "[[entity]]\nname = \"app\"\n\
                command = [\"/bin/sh\", \"-c\", \"sleep 100000 & exec sleep 100000\"]\n\
                policy = { kind = \"immediate\" }\nstop_timeout = \"2s\"\n";
    let ham = Ham::start("cg-anew", body);
    let s = ham.wait_for("app running", |s| running(s, "app"));
    let json = ham.ctl(&["status", "--json"]);
    let st: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(entity(&st, "app")["tracking"], "cgroup", "{st}");
    // A restart, then a stop: the cgroup is empty.
    sigkill(pid_of(&s, "app"));
    ham.wait_for("app restarted", |s| {
        running(s, "app") && entity(s, "app")["restarts"] == 1
    });
    let out = ham.ctl(&["stop", "app"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    ham.wait_for("app stopped", |s| entity(s, "app")["state"] == "stopped");
    wait_until(&ham, "app's processes gone", || {
        entity_processes(&ham.name, "app").is_empty()
    });
    // Its folder made anew, as an administrator could.
    let mode = ham_guardian::config::CgroupMode::Auto;
    let folder = ham_guardian::cgroup::instance_dir(&mode, &ham.name, "self")
        .expect("the instance's cgroup")
        .join("app");
    std::fs::remove_dir(&folder).unwrap();
    std::fs::create_dir(&folder).unwrap();
    let out = ham.ctl(&["start", "app"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = ham.wait_for("app running again", |s| running(s, "app"));
    let main = pid_of(&s, "app");
    let procs = entity_processes_n(&ham.name, "app", 2);
    let left: Vec<i32> = procs.iter().copied().filter(|&p| p != main).collect();
    assert_eq!(
        left.len(),
        1,
        "app's sleep beside its main process: {procs:?}"
    );
    let cg = std::fs::read_to_string(format!("/proc/{main}/cgroup")).unwrap();
    assert!(
        cg.trim_end().ends_with("/app"),
        "app is in its (new) folder: {cg}"
    );
    // Its death leaves the background sleep behind; the restart kills it.
    sigkill(main);
    ham.wait_for("app restarted after its folder was made anew", |s| {
        running(s, "app") && pid_of(s, "app") != main
    });
    wait_until_showing(
        &ham,
        "the sleep app left behind killed at its restart",
        || !entity_processes(&ham.name, "app").contains(&left[0]),
        || describe_process(left[0]),
    );
}

/// Overwrites `len` bytes at `offset` of the instance's state segment with 0xA5.
fn scribble(ham: &Ham, offset: u64, len: usize) {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(ham.segment_path())
        .unwrap()
        .write_all_at(&vec![0xA5; len], offset)
        .unwrap();
}

#[test]
fn a_corrupted_record_or_header_never_leaves_two_copies_or_none() {
    // Point 13: one unreadable record made the successor free the slot and start a second
    // copy of the entity; a corrupted header made the Guardian exit, leaving nothing
    // supervised. Each entity's cgroup now makes re-adoption exact.
    for (what, offset, len) in [("record", 512, 1536), ("header", 0, 8)] {
        let mut ham = Ham::start(&format!("corrupt-{what}"), &sleeper("app"));
        let s = ham.wait_for("app running", |s| running(s, "app"));
        let (app, g) = (pid_of(&s, "app"), s["guardian"]["pid"].clone());
        // (A process just past its `execve` shows no environment for a moment.)
        assert_eq!(entity_processes_n(&ham.name, "app", 1), vec![app]);
        // The Guardian must have mapped the segment before it is corrupted: one that starts
        // after cannot read it, and exits (a soak run scribbled first).
        let watching = format!("guardian: pid {g} watching HAM pid {}", ham.pid());
        wait_until(&ham, "the guardian watching", || {
            ham.stderr().contains(&watching)
        });
        // Slot 0 (after the 512-byte header) holds app's record.
        scribble(&ham, offset, len);
        sigkill(ham.pid());
        assert_eq!(ham.wait_exit(), -1);
        let s = ham.wait_for(&format!("taken over after a corrupted {what}"), |s| {
            s["ham"]["pid"] == g && s["ham"]["alive"] == true && running(s, "app")
        });
        let now = pid_of(&s, "app");
        wait_until(&ham, "one copy of app", || {
            entity_processes(&ham.name, "app") == vec![now]
        });
        assert!(
            ham.stderr().contains("left in its cgroup") || now == app,
            "{}",
            ham.stderr()
        );
    }
}

/// SIGKILLs the HAM; Guardian `g` must take over warm: `app` adopted (pid `app`, one copy).
fn kill_ham_and_see_app_adopted_by(ham: &mut Ham, g: i32, app: i32) {
    sigkill(ham.pid());
    assert_eq!(ham.wait_exit(), -1);
    let s = ham.wait_for("taken over", |s| {
        s["ham"]["pid"] == g && s["ham"]["alive"] == true && running(s, "app")
    });
    assert_eq!(pid_of(&s, "app"), app, "{}", ham.stderr());
    assert_eq!(entity_processes(&ham.name, "app"), vec![app]);
}

#[test]
fn a_header_scribbled_over_is_mended_before_the_next_guardian_maps_it() {
    // A Guardian that started on a scribbled header could not read the segment and exited;
    // its HAM started another at once, which exited too (a busy loop), and once the HAM
    // died nothing took over. The HAM now mends the header before it starts a Guardian.
    let mut ham = Ham::start("mend-header", &sleeper("app"));
    let s = ham.wait_for("app running", |s| running(s, "app"));
    let (app, g) = (
        pid_of(&s, "app"),
        s["guardian"]["pid"].as_i64().unwrap() as i32,
    );
    let watching = |g: i32| format!("guardian: pid {g} watching HAM pid {}", ham.pid());
    wait_until(&ham, "the guardian watching", || {
        ham.stderr().contains(&watching(g))
    });
    scribble(&ham, 0, 8);
    sigkill(g);
    let s = ham.wait_for("a new guardian", |s| {
        s["guardian"]["alive"] == true && s["guardian"]["pid"].as_i64() != Some(g.into())
    });
    let g2 = s["guardian"]["pid"].as_i64().unwrap() as i32;
    wait_until(&ham, "the new guardian watching", || {
        ham.stderr().contains(&watching(g2))
    });
    let log = ham.stderr();
    assert!(log.contains("header was scribbled over (magic"), "{log}");
    assert!(!log.contains("pidfd only"), "{log}");
    // It read the segment: the takeover is warm, app is adopted, not started again.
    kill_ham_and_see_app_adopted_by(&mut ham, g2, app);
}

#[test]
fn a_guardian_that_finds_the_header_scribbled_over_watches_blind_until_the_ham_mends_it() {
    // The scribble lands after the HAM's check and before the Guardian maps the segment (a
    // failpoint makes the Guardian write it). The Guardian must not exit: it watches its
    // HAM by the pidfd alone, the HAM mends the header when it beats, and it reads again.
    let work = tempfile::tempdir().unwrap();
    let fp = work.path().join("fp");
    let fp_s = fp.display().to_string();
    let env = [
        ("HAM_FAILPOINT", "guardian:scribble-header"),
        ("HAM_FAILPOINT_FILE", fp_s.as_str()),
    ];
    let mut ham = Ham::start_with("blind-guardian", "", &sleeper("app"), &env);
    let s = ham.wait_for("app running", |s| running(s, "app"));
    let (app, g) = (
        pid_of(&s, "app"),
        s["guardian"]["pid"].as_i64().unwrap() as i32,
    );
    let watching = |g: i32| format!("guardian: pid {g} watching HAM pid {}", ham.pid());
    wait_until(&ham, "the guardian watching", || {
        ham.stderr().contains(&watching(g))
    });
    std::fs::write(format!("{fp_s}.armed"), "").unwrap();
    sigkill(g);
    wait_until(&ham, "the new guardian reading the segment again", || {
        ham.stderr()
            .contains("guardian: the state segment reads again")
    });
    assert!(fp.exists(), "the scribble failpoint fired");
    let log = ham.stderr();
    let blind = log.find("by its pidfd only").expect("watched blind");
    let mended = log
        .find("header was scribbled over (magic")
        .expect("mended");
    let again = log.find("reads again").unwrap();
    assert!(blind < again && mended < again, "{log}");
    let g2 = ham.status()["guardian"]["pid"].as_i64().unwrap() as i32;
    assert!(log.contains(&watching(g2)), "{log}");
    kill_ham_and_see_app_adopted_by(&mut ham, g2, app);
}

#[test]
fn guardians_that_cannot_start_are_started_again_ever_later_not_in_a_busy_loop() {
    // A Guardian that died before it watched (here a failpoint fails its start, as a
    // shortage of descriptors would) was replaced at once, again and again: the HAM spun.
    let work = tempfile::tempdir().unwrap();
    let fp = work.path().join("fp");
    let fp_s = fp.display().to_string();
    let armed = format!("{fp_s}.armed");
    let env = [
        ("HAM_FAILPOINT", "guardian:start"),
        ("HAM_FAILPOINT_FILE", fp_s.as_str()),
    ];
    let ham = Ham::start_with("guardian-backoff", "", &sleeper("app"), &env);
    let s = ham.wait_for("app running", |s| running(s, "app"));
    let g = s["guardian"]["pid"].as_i64().unwrap() as i32;
    let watching = |g: i32| format!("guardian: pid {g} watching HAM pid {}", ham.pid());
    wait_until(&ham, "the guardian watching", || {
        ham.stderr().contains(&watching(g))
    });
    std::fs::write(&armed, "").unwrap();
    sigkill(g);
    wait_until(&ham, "four guardians in a row failing", || {
        ham.stderr()
            .contains("the 4th in a row to die before it watched")
    });
    let log = ham.stderr();
    for (nth, wait) in [("2nd", "10ms"), ("3rd", "20ms"), ("4th", "40ms")] {
        let line =
            format!("the {nth} in a row to die before it watched; the next starts in {wait}");
        assert!(log.contains(&line), "{line}\n{log}");
    }
    // The first to fail was replaced at once.
    assert!(!log.contains("the 1st in a row"), "{log}");
    std::fs::remove_file(&armed).unwrap();
    let s = ham.wait_for("a guardian watching again", |s| {
        s["guardian"]["alive"] == true
            && s["guardian"]["pid"]
                .as_i64()
                .is_some_and(|p| ham.stderr().contains(&watching(p as i32)))
    });
    // One that watched resets the count: its death is followed by a new one at once.
    let g = s["guardian"]["pid"].as_i64().unwrap() as i32;
    let before = ham.stderr().len();
    sigkill(g);
    wait_until(&ham, "the next guardian started at once", || {
        ham.stderr()[before..].contains(&format!(
            "guardian pid {g} died (killed by signal 9); guardian pid"
        ))
    });
    assert_eq!(entity_processes(&ham.name, "app"), vec![pid_of(&s, "app")]);
}

#[test]
fn a_command_journaled_but_never_released_runs_after_a_takeover() {
    // Point 14: the HAM died after forking a condition's command and journaling its pid,
    // before releasing it; init reaped the unreleased child before the successor looked,
    // and the successor logged the run as done without ever running it. The release is now
    // journaled too, and the successor decides from the journal alone.
    let work = tempfile::tempdir().unwrap();
    let marker = work.path().join("ran");
    let fp = work.path().join("fp");
    let fp_s = fp.display().to_string();
    let body = format!(
        "{}[[entity.condition]]\non = \"death\"\n[[entity.condition.action]]\n\
         do = \"execute\"\ncommand = [\"/bin/sh\", \"-c\", \"echo ran >> {}\"]\n",
        sleeper("app"),
        marker.display()
    );
    let env = [
        ("HAM_FAILPOINT", "run:after-exec-pid"),
        ("HAM_FAILPOINT_FILE", fp_s.as_str()),
    ];
    let mut ham = Ham::start_with("unreleased-cmd", "", &body, &env);
    let s = ham.wait_for("app running", |s| running(s, "app"));
    let guardian = s["guardian"]["pid"].as_i64().unwrap() as i32;
    let g = nix::unistd::Pid::from_raw(guardian);
    nix::sys::signal::kill(g, nix::sys::signal::Signal::SIGSTOP).unwrap();
    std::fs::write(format!("{fp_s}.armed"), "").unwrap();
    sigkill(pid_of(&s, "app"));
    assert_eq!(ham.wait_exit(), -1, "the HAM died at the failpoint");
    // The unreleased command (a fork of ham, with ham's environment) exits and init reaps
    // it, all before anything takes over. Its pid is the one the dead HAM journaled (it
    // waits for that command, not released); it and each process seen with this test's
    // environment are waited for until /proc has no entry of them (reaped). (Other tests'
    // orphaned zombies, which init may be slow to reap on a loaded box, are not this
    // test's business: looking for any zombie `ham` of init's instead failed once in a soak.)
    let seg = ham_core::segment::Segment::open(
        &ham_core::paths::state_segment(&ham.name),
        ham_core::segment::Access::ReadOnly,
    )
    .unwrap();
    let unreleased: Vec<i32> = seg
        .runs()
        .into_iter()
        .filter_map(|(_, r)| match r.ok()?.wait {
            ham_core::journal::RunWait::Exec {
                pid,
                released: false,
                ..
            } => Some(pid),
            _ => None,
        })
        .collect();
    assert_eq!(unreleased.len(), 1, "one command journaled, not released");
    let seen = std::cell::RefCell::new(
        unreleased
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<i32>>(),
    );
    let in_proc = |p: &i32| std::path::Path::new(&format!("/proc/{p}")).exists();
    let left = || {
        seen.borrow()
            .iter()
            .filter(|p| in_proc(p))
            .map(|&p| describe_process(p))
            .collect::<Vec<_>>()
            .join("\n")
    };
    wait_until_showing(
        &ham,
        "the unreleased command gone and reaped",
        || {
            let live: Vec<i32> = processes_where(|env| env_has(env, "HAM_FAILPOINT_FILE", &fp_s))
                .into_iter()
                .filter(|&p| p != guardian)
                .collect();
            seen.borrow_mut().extend(live.iter().copied());
            live.is_empty() && !seen.borrow().iter().any(in_proc)
        },
        left,
    );
    nix::sys::signal::kill(g, nix::sys::signal::Signal::SIGCONT).unwrap();
    ham.wait_for("the guardian took over", |s| {
        s["ham"]["pid"].as_i64() == Some(guardian.into()) && s["ham"]["alive"] == true
    });
    wait_until(&ham, "the command ran", || {
        std::fs::read_to_string(&marker).is_ok_and(|t| t == "ran\n")
    });
    ham.wait_for("app running again", |s| running(s, "app"));
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "ran\n",
        "it ran once"
    );
}

#[test]
fn a_client_that_shrinks_its_heartbeat_page_does_not_bring_ham_down() {
    // The client holds a descriptor of its heartbeat page it can `ftruncate`; the HAM reads
    // the page at each check, and died of SIGBUS (one takeover per attachment, as often as
    // a client liked). Now the page is grown back, and the client only loses its beats.
    let body = format!(
        "{}[[entity]]\nname = \"probe\"\nattach_only = true\n\
         [[entity.condition]]\non = \"heartbeat-missed-low\"\n\
         [[entity.condition.action]]\ndo = \"log\"\nmessage = \"missed\"\n",
        sleeper("db")
    );
    let ham = Ham::start("beat-shrink", &body);
    let s = ham.wait_for("db running", |s| running(s, "db"));
    let pid = s["ham"]["pid"].clone();
    let child = Reaped(
        std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap(),
    );
    let (answer, fd) = ask_fd(
        &ham,
        &format!(
            r#"{{"cmd":"attach","entity":"probe","pid":{},"period_ns":10000000,"missed_low":3,"missed_high":0}}"#,
            child.0.id()
        ),
    );
    assert_eq!(answer["ok"], true, "{answer}");
    let fd = fd.expect("the heartbeat page's descriptor");
    rustix::fs::ftruncate(&fd, 0).unwrap();
    // The HAM reads the page at its next checks: the miss it reports proves it did.
    wait_until(&ham, "the missed heartbeat reported", || {
        ham.log_of("probe")
            .iter()
            .any(|r| r["condition"] == "heartbeat-missed-low")
    });
    let s = ham.status();
    assert_eq!(s["ham"]["pid"], pid, "the HAM died:\n{}", ham.stderr());
    assert_eq!(s["ham"]["failures"], 0);
    assert!(
        rustix::fs::fstat(&fd).unwrap().st_size > 0,
        "the page grown back"
    );
}
