//! Exactly once, from at-least-once delivery and a checkpoint: a receiver that adds up the
//! numbers sent to it, killed at any moment, and still counts each message exactly once.
//!
//! Its checkpoint `state` holds, in one put (all or nothing), the last message id it
//! handled and the sum so far. A message it gets again (its process died before the
//! acknowledgement) has an id at most the one in `state`: it is acknowledged and skipped.
//! Killed before the put, the message was not counted, and comes again; killed after it,
//! it was counted, and is skipped. Ids grow: the queue is first in, first out.
//!
//! ```toml
//! [[entity]]
//! name = "adder"
//! command = ["target/debug/examples/mts_exactly_once"]
//! accept_from = ["producer"]
//! ```

use std::time::Duration;

use ham_detector_sdk::{Client, Durability, Scope};

fn main() {
    let entity = std::env::var("HAM_ENTITY").expect("run by ham as an entity");
    let ham = Client::connect().expect("connect to ham");
    let store = ham.pss_own().expect("open the checkpoint store");
    let (mut last, mut sum) = match store.get("state").expect("read state") {
        Some(v) if v.len() == 16 => (
            u64::from_le_bytes(v[..8].try_into().unwrap()),
            u64::from_le_bytes(v[8..].try_into().unwrap()),
        ),
        _ => (0, 0),
    };
    loop {
        let Some(m) = ham.recv(&entity, Duration::from_secs(60)).expect("receive") else {
            continue;
        };
        if m.id > last {
            let n: u64 = String::from_utf8_lossy(&m.data).trim().parse().unwrap_or(0);
            sum += n;
            last = m.id;
            let mut state = last.to_le_bytes().to_vec();
            state.extend_from_slice(&sum.to_le_bytes());
            store
                .put("state", &state, Scope::Shared, Durability::Volatile)
                .expect("checkpoint");
        }
        ham.ack(&entity, m.id).expect("acknowledge");
    }
}
