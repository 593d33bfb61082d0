//! `mts_roundtrip`: a message from `send` to its receipt by a receiver already waiting in
//! `recv` (ham holds its request), against the floor of any cross-process message through
//! the kernel: a datagram over a Unix socket pair to a thread blocked in `recv`.

use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Map;

use crate::report::{Outcome, ScenarioResult};
use crate::scenarios::{Params, Problems, finish, progress};
use crate::sdk::{connect, measured, plain_entity};
use crate::sys::{self, Result, mono_ns};
use crate::systems::{Ctx, Sup};

/// Between samples: the receiver is back in `recv` (its request held by ham) long before.
const GAP: Duration = Duration::from_millis(3);

pub fn mts_roundtrip(ctx: &Ctx, p: &Params, problems: &mut Problems) -> Result<ScenarioResult> {
    let samples = p.lat_samples;
    let mut res = ScenarioResult {
        scenario: "mts_roundtrip",
        unit: "us",
        title: format!(
            "a message from Client::send until a receiver waiting in Client::recv has it \
             (the receiver acknowledges it, then waits again; {GAP:?} between samples), \
             {samples} samples; unix-dgram = a datagram over a Unix socket pair to a thread \
             blocked in recv"
        ),
        systems: Vec::new(),
        ratios: true,
        ratio_pairs: vec![("ham", "unix-dgram")],
        columns: Vec::new(),
        ratio_metrics: Vec::new(),
        notes: Vec::new(),
    };
    eprintln!("[mts_roundtrip] ham");
    let ham = (|| -> Result<Vec<f64>> {
        let mut sup = Sup::start_ham(ctx, "mts", "", &plain_entity("rx"))?;
        let sender = connect(&sup)?;
        let receiver = connect(&sup)?;
        let (tx, rx) = mpsc::channel::<u64>();
        let v = std::thread::scope(|sc| -> Result<Vec<f64>> {
            sc.spawn(move || {
                while let Ok(Some(m)) = receiver.recv("rx", Duration::from_secs(5)) {
                    let at = mono_ns();
                    let _ = receiver.ack("rx", m.id);
                    if m.data == b"stop" || tx.send(at).is_err() {
                        break;
                    }
                }
            });
            let mut v = Vec::with_capacity(samples);
            for _ in 0..samples + 5 {
                sys::check_interrupted()?;
                std::thread::sleep(GAP);
                let t0 = mono_ns();
                sender
                    .send("rx", b"ping")
                    .map_err(|e| format!("send: {e}"))?;
                let at = rx
                    .recv_timeout(Duration::from_secs(10))
                    .map_err(|_| "the receiver got nothing in 10 s".to_string())?;
                v.push((at.saturating_sub(t0)) as f64 / 1000.0);
            }
            let _ = sender.send("rx", b"stop");
            Ok(v.split_off(5))
        })?;
        finish(&mut sup, problems);
        Ok(v)
    })();
    sys::check_interrupted()?;
    res.systems.push((
        "ham".into(),
        match ham {
            Ok(v) => measured(&v, 0, Map::new()),
            Err(e) => Outcome::Failed(e),
        },
    ));
    eprintln!("[mts_roundtrip] unix-dgram");
    res.systems.push((
        "unix-dgram".into(),
        match unix_dgram(samples) {
            Ok(v) => measured(&v, 0, Map::new()),
            Err(e) => Outcome::Failed(e),
        },
    ));
    for (name, o) in &res.systems {
        if let Outcome::Measured { stats, .. } = o {
            progress(format!("{name}: median {:.1} us", stats.median));
        }
    }
    res.notes.push(
        "ham's path: the sender's connection and request, ham's loop, the queue's store, the \
         held recv request's answer, the receiver's read; on this 2-vCPU VM a wake-up of an \
         idle vCPU costs tens of µs (see ring_latency)"
            .into(),
    );
    Ok(res)
}

fn unix_dgram(samples: usize) -> Result<Vec<f64>> {
    let (a, b) = UnixDatagram::pair().map_err(|e| format!("socketpair: {e}"))?;
    let (tx, rx) = mpsc::channel::<u64>();
    std::thread::scope(|sc| {
        sc.spawn(move || {
            let mut buf = [0u8; 16];
            while let Ok(n) = b.recv(&mut buf) {
                let at = mono_ns();
                if n == 4 || tx.send(at).is_err() {
                    break;
                }
            }
        });
        let mut v = Vec::with_capacity(samples);
        for _ in 0..samples + 5 {
            std::thread::sleep(GAP);
            let t0 = mono_ns();
            a.send(b"ping!").map_err(|e| format!("send: {e}"))?;
            let at = rx
                .recv_timeout(Duration::from_secs(10))
                .map_err(|_| "nothing in 10 s".to_string())?;
            v.push((at.saturating_sub(t0)) as f64 / 1000.0);
        }
        let _ = a.send(b"stop");
        Ok(v.split_off(5))
    })
}
