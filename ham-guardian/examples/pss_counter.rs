//! A service that counts, and keeps its count in its checkpoint store: killed at any
//! moment, its next process goes on from the last count it put, never from a torn one.
//!
//! It puts `count` (256 bytes: the count as a little-endian u64, 32 times, so that a value
//! made of two puts would show) after each increment, and at start `started-from` (the
//! count it found) and `restart` (`HAM_RESTART`, `HAM_PREVIOUS_EXIT`). Both are shared, so
//! any client can read them through ham (`hamctl pss ENTITY`). Every `--pause` between puts
//! (default: none). Exits 3 if it ever reads a torn count.
//!
//! Run it as an entity of ham:
//! ```toml
//! [[entity]]
//! name = "counter"
//! command = ["target/debug/examples/pss_counter"]
//! policy = { kind = "immediate" }
//! ```

use std::time::Duration;

use ham_detector_sdk::{Client, Durability, Scope};

fn encode(n: u64) -> Vec<u8> {
    n.to_le_bytes().repeat(32)
}

fn decode(v: &[u8]) -> Option<u64> {
    let first: [u8; 8] = v.get(..8)?.try_into().ok()?;
    (v.len() == 256 && v.chunks(8).all(|c| c == first)).then(|| u64::from_le_bytes(first))
}

fn main() {
    let pause = std::env::args()
        .skip_while(|a| a != "--pause")
        .nth(1)
        .map(|p| Duration::from_micros(p.parse().expect("--pause MICROSECONDS")));
    let ham = Client::connect().expect("connect to ham");
    let store = ham.pss_own().expect("open the checkpoint store");
    let mut n = match store.get("count").expect("read count") {
        None => 0,
        Some(v) => decode(&v).unwrap_or_else(|| {
            eprintln!("pss_counter: a torn count: {v:?}");
            std::process::exit(3);
        }),
    };
    let restart = format!(
        "{} {}",
        std::env::var("HAM_RESTART").unwrap_or_default(),
        std::env::var("HAM_PREVIOUS_EXIT").unwrap_or_default()
    );
    store
        .put(
            "restart",
            restart.as_bytes(),
            Scope::Shared,
            Durability::Volatile,
        )
        .expect("put restart");
    store
        .put(
            "started-from",
            &n.to_le_bytes(),
            Scope::Shared,
            Durability::Volatile,
        )
        .expect("put started-from");
    loop {
        n += 1;
        store
            .put("count", &encode(n), Scope::Shared, Durability::Volatile)
            .expect("put count");
        if let Some(p) = pause {
            std::thread::sleep(p);
        }
    }
}
