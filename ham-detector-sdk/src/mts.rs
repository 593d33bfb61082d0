//! Message queues that outlive a restart (NX-OS's Message and Transaction Service): a
//! message sent to an entity waits in ham until the entity's process acknowledges it, so
//! messages sent while it was down, restarting or being taken over are not lost, and one it
//! died processing comes again (with `deliveries` above 1).
//!
//! ```no_run
//! use std::time::Duration;
//! let ham = ham_detector_sdk::Client::connect()?;
//! ham.send("billing", b"charge 42")?;                       // from an entity it accepts
//! // In the receiver:
//! while let Some(m) = ham.recv("billing", Duration::from_secs(5))? {
//!     // … handle m.data (m.deliveries > 1: it may have been handled before) …
//!     ham.ack("billing", m.id)?;
//! }
//! # Ok::<(), ham_detector_sdk::Error>(())
//! ```
//!
//! Exactly-once for a receiver that checkpoints the last id it handled in its store
//! ([`crate::Pss`]) in the same put as its result, and skips ids up to it.

use std::sync::atomic::{AtomicU64, Ordering};

use ham_core::protocol::MtsItem;

use super::*;

/// A message received.
pub type Received = MtsItem;

/// Idempotency keys: random per process, then counted (a send asked again after a takeover
/// carries the same key, so it is not queued twice).
static NEXT_KEY: AtomicU64 = AtomicU64::new(0);

fn next_key() -> u64 {
    if NEXT_KEY.load(Ordering::Relaxed) == 0 {
        let mut seed = [0u8; 8];
        let _ = rustix::rand::getrandom(&mut seed, rustix::rand::GetRandomFlags::empty());
        let seed = u64::from_ne_bytes(seed) | 1;
        let _ = NEXT_KEY.compare_exchange(0, seed, Ordering::Relaxed, Ordering::Relaxed);
    }
    NEXT_KEY.fetch_add(1, Ordering::Relaxed).max(1)
}

impl Client {
    /// Sends `data` to entity `to`'s queue: from root or ham's user, or from the process of
    /// an entity in `to`'s `accept_from`. Never blocks on a full queue: refused (`ENOSPC`).
    /// Returns ham's id for the message.
    pub fn send(&self, to: &str, data: &[u8]) -> Result<u64, Error> {
        let r = self.request(&Request::MtsSend {
            to: to.to_owned(),
            key: next_key(),
            data: data.to_vec(),
        })?;
        r.message
            .as_deref()
            .and_then(|m| m.rsplit(' ').next()?.parse().ok())
            .ok_or_else(|| Error::BadAnswer("mts-send without an id".into()))
    }

    /// The oldest message of `entity`'s queue (this process must be the entity's), waiting
    /// up to `wait` for one; `None` if none came. The same message comes again until it is
    /// acknowledged with [`Client::ack`].
    pub fn recv(&self, entity: &str, wait: Duration) -> Result<Option<Received>, Error> {
        let req = Request::MtsRecv {
            entity: entity.to_owned(),
            wait_ns: u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX),
        };
        match ask_waiting(&self.location.socket(), &req, wait) {
            Ok(r) => Ok(r.mts.map(|m| *m)),
            Err(Error::Refused {
                errno: Some(libc::EAGAIN),
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Message `id` of `entity`'s queue is handled: it leaves the queue.
    pub fn ack(&self, entity: &str, id: u64) -> Result<(), Error> {
        self.request(&Request::MtsAck {
            entity: entity.to_owned(),
            id,
        })
        .map(|_| ())
    }
}

/// [`ask`] for a request ham holds up to `wait`: the connection's read timeout is longer.
fn ask_waiting(path: &Path, req: &Request, wait: Duration) -> Result<Response, Error> {
    ask_within(path, req, wait + Duration::from_secs(10)).map(|(r, _)| r)
}
