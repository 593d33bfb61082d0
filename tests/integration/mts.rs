//! Message queues that outlive a restart (issue 14): nothing sent is lost through the
//! receiver's kills or the HAM's, a message it died handling comes again counted, order is
//! kept, and only accepted senders may send.

use std::collections::HashMap;
use std::time::Duration;

use ham_guardian::control::{self, Request};

use crate::util::*;

const CLIENT: &str = env!("CARGO_BIN_EXE_ham-client");

/// `rx` receives in a loop: a line `ID<TAB>DELIVERIES<TAB>MESSAGE` in `log` for each
/// message, then the acknowledgement (a kill between the two leaves it queued).
fn receiver(log: &std::path::Path, queue: u32) -> String {
    let script = format!(
        "while :; do m=$({CLIENT} recv --wait 10s) || continue; \
         printf '%s\\n' \"$m\" >> {log}; {CLIENT} ack $(printf '%s' \"$m\" | cut -f1); done",
        log = log.display()
    );
    format!(
        "[[entity]]\nname = \"rx\"\ncommand = [\"/bin/sh\", \"-c\", {}]\n\
         policy = {{ kind = \"immediate\" }}\nmts_queue = {queue}\n",
        serde_json::to_string(&script).unwrap()
    )
}

/// Sends `data` to `rx` as root, asking again (same key) through a takeover.
fn send(socket: &std::path::Path, key: u64, data: &str) {
    let req = Request::MtsSend {
        to: "rx".into(),
        key,
        data: data.as_bytes().to_vec(),
    };
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        match control::request(socket, &req, Duration::from_secs(5)) {
            Ok(r) if r.ok => return,
            Ok(r) => panic!("send {data} refused: {:?}", r.error),
            // The HAM died under the request: its successor answers the same key.
            Err(e) => assert!(std::time::Instant::now() < deadline, "send {data}: {e}"),
        }
    }
}

#[test]
fn a_thousand_messages_reach_a_receiver_killed_every_fifty_and_its_ham_every_two_hundred() {
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("received");
    let ham = Ham::start("mts-1000", &receiver(&log, 1024));
    ham.wait_for("rx running", |s| running(s, "rx"));
    let lines = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let socket = ham.socket_path();
    std::thread::scope(|sc| {
        // The sender: 1000 messages, paced, while the receiver and the HAM are killed.
        let sender = sc.spawn(|| {
            for k in 0..1000u64 {
                send(&socket, 0x5eed_0000 + k, &format!("m{k}"));
                std::thread::sleep(Duration::from_micros(500));
            }
        });
        let (mut rx_kills, mut ham_kills) = (0, 0);
        let mut next = 50;
        while next <= 950 {
            wait_until(&ham, &format!("{next} messages received"), || {
                lines() >= next
            });
            let s = ham.status();
            if next % 200 == 0 {
                let h = s["ham"]["pid"].as_i64().unwrap() as i32;
                if s["guardian"]["alive"] == true && kill_and_wait(h) {
                    ham_kills += 1;
                    ham.wait_for("the guardian promoted", |s| {
                        s["ham"]["alive"] == true && s["ham"]["pid"].as_i64() != Some(h.into())
                    });
                }
            } else if kill_and_wait(pid_of(&s, "rx")) {
                rx_kills += 1;
            }
            next += 50;
        }
        sender.join().unwrap();
        eprintln!("mts: {rx_kills} receiver kills, {ham_kills} HAM kills");
        assert!(rx_kills >= 10 && ham_kills >= 3, "{rx_kills} {ham_kills}");
    });
    // Every message, once handled; a second time only as a counted redelivery.
    let received = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let mut firsts = Vec::new();
        let mut seen: HashMap<String, u32> = HashMap::new();
        for line in text.lines() {
            let f: Vec<&str> = line.splitn(3, '\t').collect();
            let (deliveries, msg) = (f[1].parse::<u32>().unwrap(), f[2].to_owned());
            if let Some(before) = seen.insert(msg.clone(), deliveries) {
                assert!(
                    deliveries > before,
                    "{msg} received again with {deliveries} deliveries (had {before})"
                );
            } else {
                firsts.push(msg);
            }
        }
        firsts
    };
    wait_until(&ham, "all 1000 received", || received().len() >= 1000);
    let firsts = received();
    let expect: Vec<String> = (0..1000).map(|k| format!("m{k}")).collect();
    assert_eq!(firsts, expect, "every message, in the order sent");
}

#[test]
fn only_accepted_senders_send_and_a_full_queue_refuses_without_blocking() {
    if !nix::unistd::geteuid().is_root() {
        return; // its senders run as another user
    }
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let out = |n: &str| work.path().join(n);
    let sends = |who: &str, n: u32| {
        let mut s = String::new();
        for k in 0..n {
            s.push_str(&format!(
                "{CLIENT} send rx {who}{k} > {o}.{k} 2>&1; echo $? >> {o}.rc; ",
                o = out(who).display()
            ));
        }
        s + "exec sleep 1000"
    };
    let entity = |name: &str, script: &str, extra: &str| {
        format!(
            "[[entity]]\nname = \"{name}\"\nuser = \"nobody\"\n{extra}\
             command = [\"/bin/sh\", \"-c\", {}]\n",
            serde_json::to_string(script).unwrap()
        )
    };
    let body = format!(
        "{}{}{}",
        entity(
            "rx",
            "exec sleep 1000",
            "accept_from = [\"tx\"]\nmts_queue = 2\n"
        ),
        entity("tx", &sends("tx", 3), ""),
        entity("other", &sends("other", 1), ""),
    );
    let ham = Ham::start_with("mts-access", "client_group = \"65534\"\n", &body, &[]);
    let rcs = |who: &str| std::fs::read_to_string(out(&format!("{who}.rc"))).unwrap_or_default();
    wait_until(&ham, "the sends", || {
        rcs("tx").lines().count() == 3 && rcs("other").lines().count() == 1
    });
    assert_eq!(rcs("tx"), "0\n0\n1\n", "the third finds the queue full");
    let full = std::fs::read_to_string(out("tx.2")).unwrap();
    assert!(
        full.contains("queue is full") && full.contains("mts_queue"),
        "{full}"
    );
    assert_eq!(rcs("other"), "1\n");
    let refused = std::fs::read_to_string(out("other.0")).unwrap();
    assert!(refused.contains("accept_from"), "{refused}");
    // What rx has: tx's two, in order, named by their sender.
    let recv = |ack: bool| {
        let mut cmd = std::process::Command::new(CLIENT);
        cmd.args(["--entity", "rx", "recv"])
            .env("HAM_CONFIG", &ham.config);
        if ack {
            cmd.arg("--ack");
        }
        text(&cmd.output().unwrap().stdout)
    };
    assert!(recv(true).ends_with("\t1\ttx0\n"));
    assert!(recv(true).ends_with("\t1\ttx1\n"));
    assert_eq!(recv(false), "", "empty");
}

#[test]
fn a_receiver_that_checkpoints_the_last_id_counts_each_message_exactly_once_through_kills() {
    let adder = std::path::Path::new(HAM)
        .parent()
        .unwrap()
        .join("examples/mts_exactly_once");
    assert!(
        adder.exists(),
        "{}: `cargo test` builds it",
        adder.display()
    );
    let body = format!(
        "[[entity]]\nname = \"adder\"\ncommand = [\"{}\"]\npolicy = {{ kind = \"immediate\" }}\n\
         mts_queue = 512\n",
        adder.display()
    );
    let ham = Ham::start("mts-once", &body);
    ham.wait_for("adder running", |s| running(s, "adder"));
    let state = || -> Option<(u64, u64)> {
        let req = Request::PssRead {
            entity: "adder".into(),
            key: Some("state".into()),
        };
        let r = control::request(&ham.socket_path(), &req, Duration::from_secs(5)).ok()?;
        let v = Vec::from(r.pss?).into_iter().next()?.value;
        Some((
            u64::from_le_bytes(v[..8].try_into().ok()?),
            u64::from_le_bytes(v[8..16].try_into().ok()?),
        ))
    };
    let socket = ham.socket_path();
    let mut kills = 0;
    for n in 1..=300u64 {
        let req = Request::MtsSend {
            to: "adder".into(),
            key: 0xadd0_0000 + n,
            data: n.to_string().into_bytes(),
        };
        let r = control::request(&socket, &req, Duration::from_secs(5)).unwrap();
        assert!(r.ok, "{:?}", r.error);
        // Every 30 messages, kill the adder wherever it is.
        if n % 30 == 0 {
            // Wherever it is, once it runs again (the last kill's restart may still be on
            // its way).
            let s = ham.wait_for("adder running", |s| running(s, "adder"));
            if kill_and_wait(pid_of(&s, "adder")) {
                kills += 1;
            }
        }
    }
    assert!(kills >= 5, "{kills} kills");
    wait_until(&ham, "every message counted", || {
        state().is_some_and(|(_, sum)| sum >= 45_150)
    });
    let (_, sum) = state().unwrap();
    assert_eq!(
        sum,
        (1..=300u64).sum::<u64>(),
        "each message counted exactly once"
    );
}

#[test]
fn a_durable_queue_survives_a_shutdown_and_a_new_ham_with_its_ids_and_order() {
    let body = "[[entity]]\nname = \"rx\"\ncommand = [\"sleep\", \"1000\"]\nmts_durable = true\n";
    let mut ham = Ham::start_with("mts-durable", "state_dir = \"state\"\n", body, &[]);
    let socket = ham.socket_path();
    // A send to a durable queue is answered once the message is on disk.
    let mut ids = Vec::new();
    for (k, m) in ["one", "two", "three"].iter().enumerate() {
        let r = control::request(
            &socket,
            &Request::MtsSend {
                to: "rx".into(),
                key: 0xd0_0000 + k as u64,
                data: m.as_bytes().to_vec(),
            },
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(r.ok, "{:?}", r.error);
        ids.push(r.message.unwrap());
    }
    let recv = |ham: &Ham, ack: bool| {
        let mut cmd = std::process::Command::new(CLIENT);
        cmd.args(["--entity", "rx", "recv"])
            .env("HAM_CONFIG", &ham.config);
        if ack {
            cmd.arg("--ack");
        }
        text(&cmd.output().unwrap().stdout)
    };
    let first = recv(&ham, true);
    assert!(first.ends_with("\t1\tone\n"), "{first}");
    assert!(ham.ctl(&["shutdown"]).status.success());
    assert_eq!(ham.wait_exit(), 0);
    // The reboot stand-in: nothing in shared memory, the same state_dir.
    ham.spawn(&[]);
    ham.wait_for("rx running again", |s| running(s, "rx"));
    let second = recv(&ham, true);
    let third = recv(&ham, true);
    assert!(
        second.ends_with("\ttwo\n") && ids[1].ends_with(second.split('\t').next().unwrap()),
        "{second} {ids:?}"
    );
    assert!(third.ends_with("\tthree\n"), "{third}");
    assert_eq!(recv(&ham, false), "", "nothing more");
}

#[test]
fn a_stateless_restart_drops_the_queue_and_a_stateful_one_keeps_it() {
    // Every death a failed try (none lives an hour): a stateful restart, then stateless.
    let body = "[[entity]]\nname = \"rx\"\ncommand = [\"sleep\", \"1000\"]\n\
        policy = { kind = \"stages\", stages = [\
        { action = \"stateful-restart\", retries = 1, min_lifetime = \"1h\" }, \
        { action = \"stateless-restart\", retries = 5, min_lifetime = \"1h\" }] }\n";
    let ham = Ham::start("mts-stateless", body);
    let send = |k: u64| {
        let r = control::request(
            &ham.socket_path(),
            &Request::MtsSend {
                to: "rx".into(),
                key: 0x57a7_0000 + k,
                data: format!("m{k}").into_bytes(),
            },
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(r.ok, "{:?}", r.error);
    };
    let queued = || {
        let r = control::request(
            &ham.socket_path(),
            &Request::MtsRecv {
                entity: "rx".into(),
                wait_ns: 0,
            },
            Duration::from_secs(5),
        )
        .unwrap();
        r.mts.map(|m| String::from_utf8_lossy(&m.data).into_owned())
    };
    let kill = |restarts: u64| {
        let s = ham.wait_for("rx running", |s| running(s, "rx"));
        assert!(kill_and_wait(pid_of(&s, "rx")));
        ham.wait_for("rx restarted", |s| {
            running(s, "rx") && entity(s, "rx")["restarts"] == restarts
        });
    };
    send(1);
    kill(1); // stateful
    assert_eq!(
        queued().as_deref(),
        Some("m1"),
        "kept through a stateful restart"
    );
    kill(2); // stateless
    assert_eq!(queued(), None, "dropped by a stateless restart");
}

/// Whether process `pid` is blocked reading a Unix socket (ham-client waiting for an
/// answer).
fn reading_socket(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/wchan"))
        .is_ok_and(|w| w.starts_with("unix_stream_read"))
}

#[test]
fn receivers_killed_while_waiting_leave_no_place_taken_and_get_nothing() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    // The receiver is ham-client itself, waiting up to an hour.
    let body = format!(
        "[[entity]]\nname = \"rx\"\ncommand = [\"/bin/sh\", \"-c\", \"exec {CLIENT} recv --wait 1h --ack >> {}\"]\n\
         policy = {{ kind = \"immediate\" }}\n",
        out.display()
    );
    let ham = Ham::start("mts-waiters", &body);
    // More kills than there are places for waiting receivers (16), each while it waits.
    for k in 1..=20u64 {
        let s = ham.wait_for("rx running", |s| {
            running(s, "rx") && entity(s, "rx")["restarts"] == k - 1
        });
        let pid = pid_of(&s, "rx");
        // Blocked reading, and still after a while: its `recv` is held by ham (its `hello`
        // before it is answered at once).
        wait_until(&ham, "rx waiting", || reading_socket(pid));
        std::thread::sleep(Duration::from_millis(20));
        wait_until(&ham, "rx still waiting", || reading_socket(pid));
        assert!(kill_and_wait(pid));
    }
    ham.wait_for("rx running", |s| {
        running(s, "rx") && entity(s, "rx")["restarts"] == 20
    });
    let r = control::request(
        &ham.socket_path(),
        &Request::MtsSend {
            to: "rx".into(),
            key: 0x1a57,
            data: b"last".to_vec(),
        },
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(r.ok, "{:?}", r.error);
    // The live receiver gets it (not one of the dead, not refused for want of a place).
    wait_until(&ham, "the message received", || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.ends_with("\tlast\n"))
    });
}
