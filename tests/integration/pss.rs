//! The checkpoint store (issue 14): what a service puts survives its kills and the HAM's,
//! a stateless restart starts it from nothing, durable keys survive a shutdown and a new
//! ham (the reboot stand-in), and only the entity's processes write or read its private
//! keys.

use std::path::PathBuf;
use std::time::Duration;

use ham_guardian::control::{self, Request};
use serde_json::Value;

use crate::util::*;

const CLIENT: &str = env!("CARGO_BIN_EXE_ham-client");

/// Durable checkpoints go under the test's folder, never the machine's /var/lib/ham.
const STATE: &str = "state_dir = \"state\"\n";

/// `examples/pss_counter.rs`, which `cargo test` builds with the package's examples.
fn counter_bin() -> PathBuf {
    let p = std::path::Path::new(HAM)
        .parent()
        .unwrap()
        .join("examples/pss_counter");
    // (`cargo test --test integration` alone does not rebuild the examples: an old one
    // speaks an older layout, and says so in ham's log, which a timeout shows.)
    assert!(
        p.exists(),
        "{} is missing: `cargo test` builds it (or `cargo build -p ham-guardian --examples`)",
        p.display()
    );
    p
}

/// The keys of `entity`, read through ham as root (all of them).
fn read(ham: &Ham, entity: &str) -> Vec<ham_core::protocol::PssItem> {
    let req = Request::PssRead {
        entity: entity.into(),
        key: None,
    };
    match control::request(&ham.socket_path(), &req, Duration::from_secs(10)) {
        Ok(r) if r.ok => r.pss.map(Vec::from).unwrap_or_default(),
        Ok(r) => panic!("pss-read refused: {:?}", r.error),
        // A takeover under way: nothing yet.
        Err(_) => Vec::new(),
    }
}

fn key<'a>(
    items: &'a [ham_core::protocol::PssItem],
    k: &str,
) -> Option<&'a ham_core::protocol::PssItem> {
    items.iter().find(|i| i.key == k)
}

/// The counter's count (checked whole: 32 equal words), and how its process started.
fn count(ham: &Ham) -> Option<(u64, u64, u64)> {
    let items = read(ham, "counter");
    let c = key(&items, "count")?;
    let first: [u8; 8] = c.value[..8].try_into().unwrap();
    assert!(
        c.value.len() == 256 && c.value.chunks(8).all(|w| w == first),
        "a torn count: {:?}",
        c.value
    );
    let from = key(&items, "started-from")?;
    Some((
        u64::from_le_bytes(first),
        u64::from_le_bytes(from.value[..8].try_into().unwrap()),
        from.generation,
    ))
}

fn counter_config(policy: &str) -> String {
    format!(
        "[[entity]]\nname = \"counter\"\ncommand = [\"{}\", \"--pause\", \"200\"]\npolicy = {policy}\n",
        counter_bin().display()
    )
}

#[test]
fn a_killed_counter_goes_on_from_its_last_checkpoint_through_its_kills_and_the_hams() {
    let ham = Ham::start_with(
        "pss-counter",
        STATE,
        &counter_config("{ kind = \"immediate\" }"),
        &[],
    );
    ham.wait_for("counter running", |s| running(s, "counter"));
    let mut rng = ham_guardian::unix_ns() | 1;
    let mut random = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let (mut entity_kills, mut ham_kills) = (0u32, 0u32);
    let mut last = 0u64;
    while entity_kills < 100 || ham_kills < 20 {
        // It counts (and has said where it started from) before each kill.
        wait_until(&ham, "the counter counting", || {
            count(&ham).is_some_and(|(c, _, _)| c > last)
        });
        std::thread::sleep(Duration::from_micros(random(3_000)));
        let s = ham.status();
        let (c, _, from_gen) = count(&ham).expect("a count");
        assert!(c >= last, "the count went back from {last} to {c}");
        last = c;
        if ham_kills < 20 && (entity_kills >= 100 || random(6) == 0) {
            let (Some(h), true) = (
                s["ham"]["pid"]
                    .as_i64()
                    .filter(|_| s["ham"]["alive"] == true),
                s["guardian"]["alive"] == true,
            ) else {
                continue;
            };
            assert!(kill_and_wait(h as i32));
            ham_kills += 1;
            ham.wait_for("the guardian promoted", |s| {
                s["ham"]["alive"] == true && s["ham"]["pid"].as_i64() != Some(h)
            });
            continue;
        }
        let pid = pid_of(&s, "counter");
        if pid <= 0 || !kill_and_wait(pid) {
            continue;
        }
        entity_kills += 1;
        // Its next process has read its count: `started-from` is put again.
        wait_until(&ham, "the next process's start", || {
            count(&ham).is_some_and(|(_, _, g)| g > from_gen)
        });
        let (now, from, _) = count(&ham).unwrap();
        assert!(
            from >= last && from <= now,
            "kill {entity_kills}: the count was {last} at the kill, the next process started \
             from {from} (now {now})"
        );
        last = from;
    }
    let restart = key(&read(&ham, "counter"), "restart")
        .map(|i| String::from_utf8_lossy(&i.value).into_owned())
        .unwrap();
    assert_eq!(
        restart, "stateful signal:9",
        "HAM_RESTART and HAM_PREVIOUS_EXIT"
    );
    // It never read a torn count (it would have exited 3).
    let log = ham.log_of("counter");
    assert!(
        log.iter().all(|r| r["exit"]["code"] != 3),
        "an exit 3 in {log:?}"
    );
}

#[test]
fn a_stateless_restart_starts_from_an_empty_store_and_a_stateful_one_keeps_it() {
    // Every death counts as a failed try (none lives an hour): one stateful restart, then
    // stateless ones.
    let policy = "{ kind = \"stages\", stages = [\
        { action = \"stateful-restart\", retries = 1, min_lifetime = \"1h\" }, \
        { action = \"stateless-restart\", retries = 5, min_lifetime = \"1h\" }] }";
    let ham = Ham::start_with("pss-stateless", STATE, &counter_config(policy), &[]);
    let mut from_gen = 0;
    let mut seen = Vec::new();
    for _ in 0..2 {
        // The current process has started (put `started-from`) and counted a little.
        wait_until(&ham, "the counter counting", || {
            count(&ham).is_some_and(|(c, _, g)| c > 10 && g >= from_gen)
        });
        let s = ham.status();
        from_gen = count(&ham).unwrap().2;
        assert!(kill_and_wait(pid_of(&s, "counter")));
        wait_until(&ham, "the next process's start", || {
            count(&ham).is_some_and(|(_, _, g)| g != from_gen)
        });
        let items = read(&ham, "counter");
        let restart = String::from_utf8_lossy(&key(&items, "restart").unwrap().value).into_owned();
        let (_, from, g) = count(&ham).unwrap();
        seen.push((restart, from));
        from_gen = g;
    }
    assert_eq!(seen[0].0, "stateful signal:9");
    assert!(
        seen[0].1 > 10,
        "a stateful restart keeps the count: {seen:?}"
    );
    assert_eq!(seen[1].0, "stateless signal:9");
    assert_eq!(
        seen[1].1, 0,
        "a stateless restart starts from nothing: {seen:?}"
    );
}

/// An entity that puts through `ham-client` (a helper its process runs) and then sleeps.
fn putter(puts: &str) -> String {
    format!(
        "[[entity]]\nname = \"app\"\ncommand = [\"/bin/sh\", \"-c\", \"{puts} && exec sleep 1000\"]\n\
         env = {{ PATH = \"/usr/bin:/bin\" }}\n"
    )
}

#[test]
fn durable_keys_survive_a_shutdown_and_a_new_ham_and_volatile_ones_do_not() {
    let work = tempfile::tempdir().unwrap();
    let done = work.path().join("done");
    let puts = format!(
        "{CLIENT} pss put boot-id 42 --durable && {CLIENT} pss put scratch 1 && \
         {CLIENT} pss put shared-note hi --shared --durable && touch {}",
        done.display()
    );
    let mut ham = Ham::start_with("pss-durable", STATE, &putter(&puts), &[]);
    // Every put has returned (the durable ones once on disk).
    wait_until(&ham, "the puts", || done.exists());
    assert_eq!(read(&ham, "app").len(), 3);
    let state = ham.dir.path().join("state");
    assert!(ham.ctl(&["shutdown"]).status.success());
    assert_eq!(ham.wait_exit(), 0);
    // The reboot stand-in: a new ham, nothing in shared memory, the same state_dir.
    let body = putter("true");
    std::fs::write(
        &ham.config,
        std::fs::read_to_string(&ham.config)
            .unwrap()
            .replace(&puts, "true"),
    )
    .unwrap();
    assert!(body.contains("true"));
    ham.spawn(&[]);
    ham.wait_for("app running again", |s| running(s, "app"));
    let items = read(&ham, "app");
    let mut keys: Vec<(&str, &[u8], bool, bool)> = items
        .iter()
        .map(|i| (i.key.as_str(), i.value.as_slice(), i.shared, i.durable))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            ("boot-id", &b"42"[..], false, true),
            ("shared-note", &b"hi"[..], true, true),
        ],
        "state_dir: {}",
        state.display()
    );
}

#[test]
fn a_durable_write_killed_mid_way_leaves_the_old_value() {
    let work = tempfile::tempdir().unwrap();
    let fired = work.path().join("fired");
    let fired_s = fired.display().to_string();
    let first = work.path().join("first");
    let puts = format!(
        "{CLIENT} pss put k old --durable && touch {}",
        first.display()
    );
    let ham = Ham::start_with(
        "pss-torn",
        STATE,
        &putter(&puts),
        &[
            ("HAM_FAILPOINT", "pss:before-rename"),
            ("HAM_FAILPOINT_FILE", &fired_s),
        ],
    );
    // The first durable put has returned: it is on disk.
    wait_until(&ham, "the first put", || first.exists());
    let file = ham
        .dir
        .path()
        .join(format!("state/{}/pss/app.pss", ham.name));
    let before = std::fs::read(&file).unwrap();
    // A second value, and one request (as an operator, never asked again) to write it: the
    // HAM dies between the synced new file and the rename.
    // (The region mapped directly, as root: the SDK's durable put would ask again.)
    let region = ham_core::paths::pss_region(&ham.name, 0);
    let store = ham_core::pss::PssMap::open(&region).unwrap();
    store.put("k", b"new", ham_core::pss::FLAG_DURABLE).unwrap();
    std::fs::write(format!("{fired_s}.armed"), "").unwrap();
    let sync = Request::PssSync {
        entity: "app".into(),
    };
    let answer = control::request(&ham.socket_path(), &sync, Duration::from_secs(5));
    assert!(
        answer.is_err() || answer.as_ref().is_ok_and(|r| !r.ok),
        "{answer:?}"
    );
    wait_until(&ham, "the HAM to die writing the file", || fired.exists());
    ham.wait_for("the guardian promoted", |s| s["ham"]["alive"] == true);
    // The file is the old one, whole: the new one never replaced it.
    assert_eq!(std::fs::read(&file).unwrap(), before);
    let decoded = ham_core::pss::decode_durable(&before).unwrap();
    assert_eq!(decoded[0].bytes, b"old");
    // Asked again, the successor writes the new value whole.
    let r = control::request(&ham.socket_path(), &sync, Duration::from_secs(5)).unwrap();
    assert!(r.ok, "{:?}", r.error);
    let now = ham_core::pss::decode_durable(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(now[0].bytes, b"new");
}

#[test]
fn only_an_entitys_processes_write_its_store_and_others_read_only_its_shared_keys() {
    if !nix::unistd::geteuid().is_root() {
        return; // its entities run as another user
    }
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let out = |name: &str| work.path().join(name);
    // `app` puts a private and a shared key; `other` (another entity, same user, a member
    // of the client group) tries to read both and to write.
    // `other` starts once `app` is ready, which `app` says after its puts.
    let app = format!(
        "{CLIENT} pss put secret s3 && {CLIENT} pss put note hello --shared && \
         {CLIENT} ready app && exec sleep 1000"
    );
    let other = format!(
        "{c} --entity app pss get note > {note}; echo $? > {note}.rc; \
         {c} --entity app pss get secret > {secret} 2>&1; echo $? > {secret}.rc; \
         {c} --entity app pss put secret stolen > {put} 2>&1; echo $? > {put}.rc; \
         exec sleep 1000",
        c = CLIENT,
        note = out("note").display(),
        secret = out("secret").display(),
        put = out("put").display(),
    );
    let entity = |name: &str, script: &str| {
        format!(
            "[[entity]]\nname = \"{name}\"\nuser = \"nobody\"\n\
             command = [\"/bin/sh\", \"-c\", {}]\n",
            serde_json::to_string(script).unwrap()
        )
    };
    let body = format!(
        "{}wait_ready = true\n{}after = [\"app\"]\n",
        entity("app", &app),
        entity("other", &other)
    );
    let ham = Ham::start_with(
        "pss-access",
        &format!("{STATE}client_group = \"65534\"\n"),
        &body,
        &[],
    );
    wait_until(&ham, "the puts", || read(&ham, "app").len() == 2);
    // `echo $? > put.rc` creates the file before it writes the status: waited for whole.
    wait_until(&ham, "other's tries", || {
        std::fs::read_to_string(out("put.rc")).is_ok_and(|s| s.ends_with('\n'))
    });
    let rc = |name: &str| {
        std::fs::read_to_string(out(&format!("{name}.rc")))
            .unwrap()
            .trim()
            .to_owned()
    };
    let file = |name: &str| std::fs::read_to_string(out(name)).unwrap();
    assert_eq!((rc("note"), file("note")), ("0".into(), "hello".into()));
    assert_eq!(rc("secret"), "1");
    assert!(file("secret").contains("private"), "{}", file("secret"));
    assert_eq!(rc("put"), "1");
    assert!(
        file("put").contains("only its processes"),
        "{}",
        file("put")
    );
    // Nothing was written by `other`.
    let items = read(&ham, "app");
    assert_eq!(key(&items, "secret").unwrap().value, b"s3");
    // An operator: every key; absent is exit 1, silently.
    let get = |k: &str| {
        std::process::Command::new(CLIENT)
            .args(["--entity", "app", "pss", "get", k])
            .env("HAM_CONFIG", &ham.config)
            .output()
            .unwrap()
    };
    let o = get("secret");
    assert_eq!((o.status.code(), text(&o.stdout)), (Some(0), "s3".into()));
    let o = get("nothing");
    assert_eq!(o.status.code(), Some(1), "absent is exit 1");
    assert!(o.stdout.is_empty() && o.stderr.is_empty());
    // hamctl pss: the operator's view.
    let v: Value = serde_json::from_slice(&ham.ctl(&["pss", "app", "--json"]).stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    let table = text(&ham.ctl(&["pss", "app"]).stdout);
    assert!(
        table.contains("secret") && table.contains("private") && table.contains("shared"),
        "{table}"
    );
}

#[test]
fn concurrent_durable_puts_all_reach_the_disk() {
    let work = tempfile::tempdir().unwrap();
    let done = work.path().join("done");
    // 20 helpers put at once; each returns once its key is on disk.
    let puts = format!(
        "for i in $(seq 20); do {CLIENT} pss put k$i v$i --durable || echo $i >> {f}.failed & done; \
         wait; touch {f}",
        f = done.display()
    );
    let ham = Ham::start_with("pss-group", STATE, &putter(&puts), &[]);
    wait_until(&ham, "the puts", || done.exists());
    assert!(
        !work.path().join("done.failed").exists(),
        "failed puts: {:?}",
        std::fs::read_to_string(work.path().join("done.failed"))
    );
    let file = ham
        .dir
        .path()
        .join(format!("state/{}/pss/app.pss", ham.name));
    let on_disk = ham_core::pss::decode_durable(&std::fs::read(file).unwrap()).unwrap();
    let mut keys: Vec<String> = on_disk.into_iter().map(|v| v.key).collect();
    keys.sort();
    let mut want: Vec<String> = (1..=20).map(|i| format!("k{i}")).collect();
    want.sort();
    assert_eq!(keys, want);
}

#[test]
fn a_successor_tells_a_restarted_process_what_its_predecessor_decided() {
    // HAM_RESTART was kept only in the HAM's memory: a HAM killed after it had decided a
    // stateful restart (and published `starting`) and before the fork left its successor to
    // start the process as `first`. It is in the entity's record now.
    let marks = tempfile::tempdir().unwrap();
    let fired = marks.path().join("fired");
    let fired_s = fired.display().to_string();
    let seen = marks.path().join("seen");
    let body = format!(
        "[[entity]]\nname = \"app\"\ncommand = [\"/bin/sh\", \"-c\", \
         \"echo \\\"$HAM_RESTART $HAM_PREVIOUS_EXIT\\\" >> {}; exec sleep 1000\"]\n",
        seen.display()
    );
    let env = [
        ("HAM_FAILPOINT", "spawn:after-starting"),
        ("HAM_FAILPOINT_FILE", fired_s.as_str()),
    ];
    let mut ham = Ham::start_with("pss-restart-kind", "", &body, &env);
    let s = ham.wait_for("app running", |s| running(s, "app"));
    // The first start is past its failpoint once the loop answers (one thread, one call).
    assert!(ham.ctl(&["ping"]).status.success());
    std::fs::write(format!("{fired_s}.armed"), "").unwrap();
    let first = pid_of(&s, "app");
    assert!(kill_and_wait(first));
    // The HAM dies between publishing `starting` and forking; its Guardian takes over and
    // starts the process.
    assert_eq!(ham.wait_exit(), -1);
    assert!(fired.exists());
    let s = ham.wait_for("app running under the successor", |s| {
        s["ham"]["alive"] == true && running(s, "app") && pid_of(s, "app") != first
    });
    assert_eq!(entity(&s, "app")["restarts"], 1, "{s}");
    wait_until(&ham, "the second process's line", || {
        std::fs::read_to_string(&seen).is_ok_and(|t| t.lines().count() >= 2)
    });
    let lines: Vec<String> = std::fs::read_to_string(&seen)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        lines,
        ["first none", "stateful signal:9"],
        "{}",
        ham.stderr()
    );
}
