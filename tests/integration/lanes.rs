//! Detector lanes (`ham_core::lane`): a ring of one client's own, beside the shared one.
//! A client gets one at connect and its pushing thread uses it; ham removes it when the
//! client's process exits; a producer that shrinks its lane does not bring ham down; no
//! process gets more than its share.

use crate::sdk::HAM_CLIENT;
use crate::util::*;

/// The names under `/dev/shm` of instance `name`'s lanes made for `pid`.
fn lanes_of(name: &str, pid: u32) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|f| ham_core::paths::parse_lane(name, f).is_some_and(|(p, ..)| p == pid))
        .collect()
}

fn raise_condition(entity: &str) -> String {
    format!(
        "{}[[entity.condition]]\non = \"raise\"\nclass = \"mark\"\n\
         [[entity.condition.action]]\ndo = \"log\"\nmessage = \"marked\"\n",
        sleeper(entity)
    )
}

#[test]
fn a_clients_pushing_thread_has_a_lane_of_its_own_which_ham_removes_when_it_exits() {
    let ham = Ham::start("lane", &raise_condition("db"));
    ham.wait_for("db running", |s| running(s, "db"));
    let loc = ham_detector_sdk::Location::from_config(&ham.config).unwrap();
    let c = ham_detector_sdk::Client::connect_to(&loc).unwrap();
    let me = std::process::id();
    assert_eq!(lanes_of(&ham.name, me).len(), 1, "one lane made at connect");
    assert!(c.on_lane(), "the first thread to push takes the lane");
    // This thread pushes on the lane, another on the shared ring (the lane has one
    // producer at a time): every event is consumed, none rejected.
    const N: i64 = 5_000;
    let push = |c: &ham_detector_sdk::Client| {
        for v in 0..N {
            loop {
                match c.raise("db", "flood", 0, v) {
                    Ok(()) => break,
                    Err(ham_detector_sdk::Error::Push(ham_core::client::PushError::Full)) => {
                        std::thread::yield_now()
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            assert!(!c.on_lane(), "another thread while the first holds it");
            push(&c)
        });
        push(&c);
    });
    let shared =
        ham_core::client::ClientSegment::open(&ham_core::paths::client_segment(&ham.name)).unwrap();
    assert_eq!(
        shared
            .header()
            .head
            .load(std::sync::atomic::Ordering::Relaxed),
        N as u64,
        "only the second thread's events went through the shared ring"
    );
    let s = ham.wait_for("every event consumed", |s| {
        s["ring"]["consumed"] == 2 * N as u64
    });
    assert_eq!(s["ring"]["rejected"], 0);
    // An event on the lane is acted on as the client's.
    c.raise("db", "mark", 0, 0).unwrap();
    wait_until(&ham, "the raise condition's log", || {
        ham.log_of("db").iter().any(|r| r["condition"] == "raise")
    });
    // A process that connects, raises and exits: its lane goes when it does.
    let mut child = std::process::Command::new(HAM_CLIENT)
        .arg("-c")
        .arg(&ham.config)
        .args(["raise", "db", "mark", "0", "7"])
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    wait_until(&ham, "the exited client's lane removed", || {
        lanes_of(&ham.name, pid).is_empty()
    });
    ham.wait_for("its event consumed", |s| {
        s["ring"]["consumed"] == 2 * N as u64 + 2
    });
    assert_eq!(
        lanes_of(&ham.name, me).len(),
        1,
        "this process's lane stays"
    );
}

#[test]
fn a_producer_that_shrinks_its_lane_does_not_bring_ham_down() {
    let ham = Ham::start("lane-shrink", &raise_condition("db"));
    let s = ham.wait_for("db running", |s| running(s, "db"));
    let pid = s["ham"]["pid"].clone();
    let (answer, fd) = ask_fd(&ham, r#"{"cmd":"lane"}"#);
    assert_eq!(answer["ok"], true, "{answer}");
    let fd = fd.expect("the lane's descriptor");
    // The producer holds a descriptor it can write: it shrinks the object to nothing. The
    // HAM looks at the lane each time it goes to sleep, and would die of SIGBUS.
    rustix::fs::ftruncate(&fd, 0).unwrap();
    // A client's events go on being consumed, by the same HAM.
    let loc = ham_detector_sdk::Location::from_config(&ham.config).unwrap();
    let c = ham_detector_sdk::Client::connect_to(&loc).unwrap();
    for v in 0..10 {
        c.raise("db", "mark", 0, v).unwrap();
        ham.wait_for("the event consumed", |s| {
            s["ring"]["consumed"].as_u64() == Some(v as u64 + 1)
        });
    }
    let s = ham.status();
    assert_eq!(s["ham"]["pid"], pid, "the HAM died:\n{}", ham.stderr());
    assert_eq!(s["ham"]["failures"], 0);
    // The object was grown back (its producer's own problem from now on, not ham's).
    let size = rustix::fs::fstat(&fd).unwrap().st_size;
    assert!(size > 0, "the lane is {size} bytes");
}

#[test]
fn a_process_gets_no_more_lanes_than_its_share() {
    let ham = Ham::start("lane-share", &sleeper("db"));
    ham.wait_for("db running", |s| running(s, "db"));
    let mut held = Vec::new();
    let limit = loop {
        let (answer, fd) = ask_fd(&ham, r#"{"cmd":"lane"}"#);
        if answer["ok"] != true {
            assert_eq!(answer["errno"], libc::EAGAIN, "{answer}");
            assert!(
                answer["error"].as_str().unwrap().contains("no lane left"),
                "{answer}"
            );
            break held.len();
        }
        held.push(fd.expect("a descriptor with each lane"));
        assert!(held.len() <= 64, "lanes without end");
    };
    assert_eq!(limit, 16, "the per-process share");
    assert_eq!(lanes_of(&ham.name, std::process::id()).len(), limit);
    // A client refused a lane still raises, through the shared ring.
    let loc = ham_detector_sdk::Location::from_config(&ham.config).unwrap();
    let c = ham_detector_sdk::Client::connect_to(&loc).unwrap();
    assert!(!c.on_lane());
    c.raise("db", "any", 0, 0).unwrap();
    ham.wait_for("the event consumed", |s| s["ring"]["consumed"] == 1);
}
