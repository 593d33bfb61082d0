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
             blocked in recv; unix-relay = the same through a relay process (the floor of \
             any broker in a process of its own)"
        ),
        systems: Vec::new(),
        ratios: true,
        ratio_pairs: vec![("ham", "unix-relay"), ("ham", "unix-dgram")],
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
        match unix_dgram(samples, false) {
            Ok(v) => measured(&v, 0, Map::new()),
            Err(e) => Outcome::Failed(e),
        },
    ));
    eprintln!("[mts_roundtrip] unix-relay");
    res.systems.push((
        "unix-relay".into(),
        match unix_dgram(samples, true) {
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
        "ham's path: the request on the sender's session, ham's loop, the queue's store, the \
         held recv request's answer, the receiver's read: two wake-ups across address spaces, \
         as unix-relay; on this 2-vCPU VM a wake-up of an idle vCPU costs tens of µs"
            .into(),
    );
    Ok(res)
}

/// Datagrams from this thread to a thread blocked in `recv`; with `relay`, through a
/// process in between (`ham-bench __relay`) that receives each and sends it on: the floor
/// of a message through a broker in a process of its own, as ham is (two wake-ups instead
/// of one, and two switches between address spaces).
fn unix_dgram(samples: usize, relay: bool) -> Result<Vec<f64>> {
    let (a, mid) = UnixDatagram::pair().map_err(|e| format!("socketpair: {e}"))?;
    let (b, relay_proc) = if relay {
        let (out, b) = UnixDatagram::pair().map_err(|e| format!("socketpair: {e}"))?;
        let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let child = std::process::Command::new(me)
            .arg("__relay")
            .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(mid)))
            .stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(out)))
            .spawn()
            .map_err(|e| format!("the relay process: {e}"))?;
        (b, Some(KillOnDrop(child)))
    } else {
        (mid, None)
    };
    let (tx, rx) = mpsc::channel::<u64>();
    let v = std::thread::scope(|sc| {
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
    });
    drop(relay_proc);
    v
}

/// The relay process: datagrams from its stdin's socket go on to its stdout's, until a
/// 4-byte one (the bench's "stop") or an error.
pub fn relay() -> ! {
    use std::os::fd::FromRawFd;
    // SAFETY: the bench made this process with fds 0 and 1 set to datagram sockets, owned
    // by nothing else in this process (only `main` runs, and it comes straight here).
    let (from, to) = unsafe { (UnixDatagram::from_raw_fd(0), UnixDatagram::from_raw_fd(1)) };
    let mut buf = [0u8; 16];
    while let Ok(n) = from.recv(&mut buf) {
        if to.send(&buf[..n]).is_err() || n == 4 {
            break;
        }
    }
    std::process::exit(0)
}

/// A helper process of the bench (the relay, the bare ring consumer), killed and reaped
/// however the measurement ends.
pub(crate) struct KillOnDrop(pub(crate) std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
