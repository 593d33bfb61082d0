//! The detector SDK scenarios — `heartbeat_cost`, `ring_throughput`, `ring_latency`,
//! `heartbeat_miss_delay` — and the heartbeats of the `idle` scenario. Ham only: no peer
//! has a comparable client library, so each scenario brings its own same-run baseline
//! where one is meaningful (an sd_notify datagram, a bare futex consumer).

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use ham_core::client::{
    self as ring, ClientSegment, Consumer, KIND_RAISE, Name, Polled, PushError, RingEvent,
};
use ham_detector_sdk::{Client, Error as SdkError, Heartbeat, Location};
use serde_json::{Map, json};

use crate::report::{Outcome, ScenarioResult, stats};
use crate::scenarios::{Params, Problems, finish, progress};
use crate::sys::{self, Result, mono_ns, ms};
use crate::systems::{Ctx, Sup};

/// Beats or datagrams timed together in `heartbeat_cost`.
const BEAT_BATCH: usize = 10_000;
/// `ring_throughput`: a tail that does not move for this long (with events waiting) fails
/// the run.
const STALL_NS: u64 = 2_000_000_000;
/// Quiet time before each `ring_latency` sample: the consumer is asleep again long before.
const LATENCY_GAP_NS: u64 = 3_000_000;
/// `ring_latency` samples taken first and thrown away (cold caches, first futex wake).
const LATENCY_WARMUP: usize = 5;
/// `heartbeat_miss_delay`: the attach period, the missed-low threshold and how often the
/// bench beats every other entity.
const MISS_PERIOD: Duration = Duration::from_millis(50);
const MISS_LOW: u32 = 2;
const MISS_BEAT_EVERY_NS: u64 = 10_000_000;
/// `idle`: each of ham's services heartbeats with this period and missed-low threshold.
pub const IDLE_HB_PERIOD: Duration = Duration::from_secs(1);
pub const IDLE_HB_LOW: u32 = 3;

/// An `attach_only` entity with no conditions (a heartbeat or ring target).
pub(crate) fn plain_entity(name: &str) -> String {
    format!("\n[[entity]]\nname = \"{name}\"\nattach_only = true\n")
}

/// Sets the flag when dropped, so that a scoped thread looping until it is set ends however
/// the scope's body returns.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A client of `sup`'s ham (retried for a while: the control socket may come up a little
/// after the state segment names the HAM).
pub(crate) fn connect(sup: &Sup<'_>) -> Result<Client> {
    let h = sup.ham.as_ref().ok_or("not a ham instance")?;
    let loc = Location {
        name: h.name.clone(),
        run_dir: h.run_dir.clone(),
    };
    let deadline = mono_ns() + 10_000_000_000;
    loop {
        sys::check_interrupted()?;
        match Client::connect_to(&loc) {
            Ok(c) => return Ok(c),
            Err(e) if mono_ns() > deadline => return Err(format!("connecting to ham: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// `attach_only` entities the bench attached its own pid to. At shutdown ham stops an
/// attached process like any entity's (stop signal, then SIGKILL) — here that would be the
/// bench — so they are detached before the ham is stopped, on every path: dropping this
/// detaches whatever is still attached. Declare it after the `Sup` so it drops first.
struct Attached<'c> {
    client: &'c Client,
    names: Vec<String>,
}

impl<'c> Attached<'c> {
    fn new(client: &'c Client) -> Self {
        Self {
            client,
            names: Vec::new(),
        }
    }

    fn attach(
        &mut self,
        entity: &str,
        pid: Option<i32>,
        period: Duration,
        low: u32,
    ) -> Result<Heartbeat> {
        let hb = self
            .client
            .attach_pid(entity, pid, period, low, 0)
            .map_err(|e| format!("attach {entity}: {e}"))?;
        self.names.push(entity.to_owned());
        Ok(hb)
    }

    fn detach_all(&mut self) -> Result<()> {
        let mut failed = Vec::new();
        for n in self.names.drain(..) {
            if let Err(e) = self.client.detach(&n) {
                failed.push(format!("{n}: {e}"));
            }
        }
        match failed.first() {
            None => Ok(()),
            Some(first) => Err(format!(
                "detaching: {} entities failed (first: {first}); ham's shutdown signals the \
                 process still attached — this bench",
                failed.len()
            )),
        }
    }
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.detach_all() {
            eprintln!("warning: {e}");
        }
    }
}

/// ham's ring counters (consumed, rejected, abandoned), once `consumed` reached `expect`
/// (the HAM publishes them after each drain) or after 2 s.
fn ring_counts(sup: &Sup<'_>, expect: u64) -> [u64; 3] {
    let Some(h) = &sup.ham else { return [0; 3] };
    let deadline = mono_ns() + 2_000_000_000;
    loop {
        let c = h.seg.header().ring_counts();
        if c[0] >= expect || mono_ns() > deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Reports ring trouble: anything rejected or abandoned, or (given how many were pushed)
/// fewer events consumed than were pushed.
fn check_ring(
    sup: &Sup<'_>,
    scenario: &str,
    pushed: Option<u64>,
    problems: &mut Problems,
) -> [u64; 3] {
    let c = ring_counts(sup, pushed.unwrap_or(0));
    let [consumed, rejected, abandoned] = c;
    if rejected != 0 || abandoned != 0 {
        problems.add(format!(
            "{scenario}: ham's ring counts {rejected} rejected and {abandoned} abandoned events \
             (should be 0)"
        ));
    }
    if let Some(pushed) = pushed.filter(|&n| n != consumed) {
        problems.add(format!(
            "{scenario}: ham consumed {consumed} ring events, the bench pushed {pushed}"
        ));
    }
    c
}

pub(crate) fn measured(
    v: &[f64],
    failures: usize,
    extra: Map<String, serde_json::Value>,
) -> Outcome {
    match stats(v) {
        Some(stats) => Outcome::Measured {
            stats,
            failures,
            extra,
        },
        None => Outcome::Failed(format!("no measurement ({failures} failures)")),
    }
}

// ---------------------------------------------------------------------------------------------
// heartbeat_cost
// ---------------------------------------------------------------------------------------------

/// Runs `op` `batches` × `BEAT_BATCH` times (after one warm-up batch); per-op ns per batch.
pub(crate) fn time_batches(batches: usize, mut op: impl FnMut()) -> Result<Vec<f64>> {
    for _ in 0..BEAT_BATCH {
        op();
    }
    let mut v = Vec::with_capacity(batches);
    for _ in 0..batches {
        sys::check_interrupted()?;
        let t0 = mono_ns();
        for _ in 0..BEAT_BATCH {
            op();
        }
        let t1 = mono_ns();
        v.push((t1 - t0) as f64 / BEAT_BATCH as f64);
    }
    Ok(v)
}

/// Asks the kernel to attach the sender's credentials to every datagram, as systemd's
/// notify socket does (and ham's).
fn set_passcred(sock: &UnixDatagram) -> Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd, a pointer to a live c_int and its exact size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(format!("SO_PASSCRED: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The sd_notify baseline: `WATCHDOG=1` sent with `sendto` to a bound datagram socket that
/// a thread drains.
fn sd_notify_batches(ctx: &Ctx, batches: usize) -> Result<Vec<f64>> {
    let dir = ctx.base.join("sd_notify");
    std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let path = dir.join("notify.sock");
    let rx = UnixDatagram::bind(&path).map_err(|e| format!("bind {}: {e}", path.display()))?;
    set_passcred(&rx)?;
    rx.set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(|e| format!("SO_RCVTIMEO: {e}"))?;
    let tx = UnixDatagram::unbound().map_err(|e| format!("socket: {e}"))?;
    let stop = AtomicBool::new(false);
    let received = AtomicU64::new(0);
    let mut errors = 0usize;
    let v = std::thread::scope(|s| {
        s.spawn(|| {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::SeqCst) {
                if rx.recv(&mut buf).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let _stop = SetOnDrop(&stop);
        time_batches(batches, || {
            if tx.send_to(b"WATCHDOG=1", &path).is_err() {
                errors += 1;
            }
        })
    })?;
    let _ = std::fs::remove_file(&path);
    if errors > 0 {
        return Err(format!("{errors} datagrams could not be sent"));
    }
    Ok(v)
}

pub fn heartbeat_cost(ctx: &Ctx, p: &Params, problems: &mut Problems) -> Result<ScenarioResult> {
    let mut res = ScenarioResult {
        scenario: "heartbeat_cost",
        unit: "ns",
        title: format!(
            "one heartbeat: ham = Heartbeat::beat() (one store of a flag into the attachment's \
             page, no clock read); store = the same store into the bench's own memory (the \
             floor); sd_notify = a WATCHDOG=1 datagram sendto() a bound Unix socket (SO_PASSCRED) that a \
             thread drains; {} batches of {BEAT_BATCH}, per-op time = batch time / {BEAT_BATCH}",
            p.hb_batches
        ),
        systems: Vec::new(),
        ratios: true,
        ratio_pairs: Vec::new(),
        columns: Vec::new(),
        ratio_metrics: Vec::new(),
        notes: Vec::new(),
    };
    eprintln!("[heartbeat_cost] ham");
    let ham = (|| -> Result<Vec<f64>> {
        let mut sup = Sup::start_ham(ctx, "hbcost", "", &plain_entity("hb"))?;
        let client = connect(&sup)?;
        let mut attached = Attached::new(&client);
        let hb = attached.attach("hb", None, IDLE_HB_PERIOD, IDLE_HB_LOW)?;
        let v = time_batches(p.hb_batches, || std::hint::black_box(&hb).beat());
        if let Err(e) = attached.detach_all() {
            problems.add(format!("heartbeat_cost: {e}"));
        }
        drop(attached);
        finish(&mut sup, problems);
        v
    })();
    sys::check_interrupted()?;
    res.systems.push((
        "ham".into(),
        match ham {
            Ok(v) => measured(&v, 0, Map::new()),
            Err(e) => Outcome::Failed(e),
        },
    ));
    eprintln!("[heartbeat_cost] store");
    let word = std::sync::atomic::AtomicU64::new(0);
    let floor = time_batches(p.hb_batches, || {
        std::hint::black_box(&word).store(1, Ordering::Relaxed)
    });
    res.systems.push((
        "store".into(),
        match floor {
            Ok(v) => measured(&v, 0, Map::new()),
            Err(e) => Outcome::Failed(e),
        },
    ));
    eprintln!("[heartbeat_cost] sd_notify");
    let sd = sd_notify_batches(ctx, p.hb_batches);
    sys::check_interrupted()?;
    res.systems.push((
        "sd_notify".into(),
        match sd {
            Ok(v) => measured(&v, 0, Map::new()),
            Err(e) => Outcome::Failed(e),
        },
    ));
    for (name, o) in &res.systems {
        if let Outcome::Measured { stats, .. } = o {
            progress(format!("{name}: median {:.1} ns", stats.median));
        }
    }
    res.notes.push(
        "the beat reads no clock: ham checks each page at multiples of the period; \
         libsystemd's sd_notify also opens and closes a socket per call, so that baseline is \
         its floor"
            .into(),
    );
    Ok(res)
}

// ---------------------------------------------------------------------------------------------
// ring_throughput
// ---------------------------------------------------------------------------------------------

/// How one `ring_throughput` run ended.
enum RingRun {
    /// Events per second, and how many pushes found the ring full (and were retried).
    Done(f64, u64),
    /// ham stopped consuming (why), and the full-ring retries until then.
    Stalled(String, u64),
}

/// One producer's push of event `i`: `Ok(true)` pushed, `Ok(false)` the ring was full.
type Push<'a> = &'a (dyn Fn(u64) -> Result<bool> + Sync);

/// `Client::raise` as a [`Push`].
fn raise_push(c: &Client) -> impl Fn(u64) -> Result<bool> + Sync + '_ {
    move |i| match c.raise("sink", "bench", 0, i as i64) {
        Ok(()) => Ok(true),
        Err(SdkError::Push(PushError::Full)) => Ok(false),
        Err(e) => Err(format!("raise: {e}")),
    }
}

/// Where a ring is: events pushed (as far as the consumer's side can tell) and consumed.
type Position<'a> = &'a (dyn Fn() -> (u64, u64) + Sync);

/// One run: every producer pushes `each` events from its own thread; `position` tells
/// when the consumer has taken them all, and `seg` (the client segment) what its doorbell
/// says if it stops.
fn ring_run(
    producers: &[Push<'_>],
    seg: &ClientSegment,
    position: Position<'_>,
    each: u64,
) -> Result<RingRun> {
    let deadline = mono_ns() + 5_000_000_000;
    let tail0 = loop {
        let (h, t) = position();
        if h == t {
            break t;
        }
        if mono_ns() > deadline {
            return Err(format!("the ring did not drain (head {h}, tail {t})"));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let total = each * producers.len() as u64;
    let target = tail0 + total;
    let go = AtomicBool::new(false);
    let abort = AtomicBool::new(false);
    let ready = AtomicUsize::new(0);
    let first = AtomicU64::new(u64::MAX);
    let full = AtomicU64::new(0);
    let (t0, t1, stalled) = std::thread::scope(|s| -> Result<(u64, u64, Option<String>)> {
        let _abort = SetOnDrop(&abort);
        let threads: Vec<_> = producers
            .iter()
            .map(|push| {
                let (go, abort, ready, first, full) = (&go, &abort, &ready, &first, &full);
                s.spawn(move || -> Result<()> {
                    ready.fetch_add(1, Ordering::SeqCst);
                    while !go.load(Ordering::Acquire) {
                        if abort.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                        std::thread::yield_now();
                    }
                    first.fetch_min(mono_ns(), Ordering::AcqRel);
                    for i in 0..each {
                        while !push(i)? {
                            full.fetch_add(1, Ordering::Relaxed);
                            if abort.load(Ordering::Relaxed) {
                                return Ok(());
                            }
                            std::thread::yield_now();
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        while ready.load(Ordering::SeqCst) < producers.len() {
            std::thread::yield_now();
        }
        go.store(true, Ordering::Release);
        let mut last_tail = tail0;
        let mut moved_at = mono_ns();
        let mut stalled = None;
        let t1 = loop {
            let (head, tail) = position();
            let now = mono_ns();
            if tail >= target {
                break now;
            }
            sys::check_interrupted()?;
            if tail != last_tail {
                (last_tail, moved_at) = (tail, now);
            } else if now - moved_at > STALL_NS {
                // Nothing consumed for a while, with events waiting or producers gone.
                let h = seg.header();
                let bell = h.sleeping.load(Ordering::SeqCst);
                stalled = Some(format!(
                    "ham stopped consuming: tail {tail} unchanged for {} s with head {head} \
                     (doorbell {}, generation {}; {} wake-ups rung)",
                    STALL_NS / 1_000_000_000,
                    match bell & 3 {
                        ring::BELL_AWAKE => "awake",
                        ring::BELL_ASLEEP => "asleep",
                        ring::BELL_RUNG => "rung",
                        _ => "invalid",
                    },
                    bell >> 2,
                    h.wakes.load(Ordering::Relaxed)
                ));
                abort.store(true, Ordering::SeqCst);
                break 0;
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        for h in threads {
            h.join().map_err(|_| "a producer panicked".to_owned())??;
        }
        Ok((first.load(Ordering::Acquire), t1, stalled))
    })?;
    let full = full.load(Ordering::Relaxed);
    Ok(match stalled {
        Some(why) => RingRun::Stalled(why, full),
        None => RingRun::Done(total as f64 * 1e9 / (t1 - t0) as f64, full),
    })
}

/// The event the bare consumers' producers push (what `Client::raise("sink", "bench", ..)`
/// builds).
fn bench_event() -> RingEvent {
    RingEvent {
        kind: KIND_RAISE,
        pid: std::process::id(),
        uid: 0,
        token: 0,
        entity: Name::new("sink").expect("short"),
        class: Name::new("bench").expect("short"),
        severity: 0,
        value: 0,
        from: 0,
        to: 0,
    }
}

/// The floor for `ring_throughput`: the same ring (ham-core's, 1024 slots) in a segment of
/// the bench's own, drained by [`bare_consumer`] (a thread asleep on the futex doorbell when
/// the ring is empty, no validation past the ring's own, nothing done per event), with the
/// producers pushing the event `Client::raise` builds.
fn bare_ring_run(ctx: &Ctx, producers: usize, each: u64) -> Result<RingRun> {
    let name = format!("/ham.{}bare-tp.client", ctx.instance_prefix());
    ClientSegment::unlink(&name);
    let seg = ClientSegment::create(&name, 1, 1024, None).map_err(|e| e.to_string())?;
    let ev = bench_event();
    let stop = AtomicBool::new(false);
    let r = std::thread::scope(|s| {
        s.spawn(|| bare_consumer(&seg, &stop));
        let _stop = StopConsumer(&stop, &seg, &ev);
        let push = |i: u64| {
            let mut e = ev.clone();
            e.value = i as i64;
            match seg.push(&e) {
                Ok(()) => Ok(true),
                Err(PushError::Full) => Ok(false),
                Err(e) => Err(format!("push: {e}")),
            }
        };
        let pushes: Vec<Push<'_>> = (0..producers).map(|_| &push as Push<'_>).collect();
        let h = seg.header();
        let position = || {
            (
                h.head.load(Ordering::Acquire),
                h.tail.load(Ordering::Acquire),
            )
        };
        ring_run(&pushes, &seg, &position, each)
    });
    ClientSegment::unlink(&name);
    r
}

/// The floor for `ring_throughput` with lanes (what `Client::raise` pushes on): one lane
/// per producer (`ham_core::lane`, as ham makes them) and a doorbell word in a client segment of the bench's own, drained by
/// [`bare_lane_consumer`] (a thread that takes each lane's events in turn, does nothing per
/// event, and sleeps on the doorbell as the HAM does).
fn bare_lane_run(ctx: &Ctx, producers: usize, each: u64) -> Result<RingRun> {
    use ham_core::lane::{LaneMap, LaneProducer};
    let prefix = format!("/ham.{}bare-lane", ctx.instance_prefix());
    let seg_name = format!("{prefix}.client");
    ClientSegment::unlink(&seg_name);
    let seg = ClientSegment::create(&seg_name, 0, 1024, None).map_err(|e| e.to_string())?;
    let names: Vec<String> = (0..producers).map(|k| format!("{prefix}.{k}")).collect();
    let made = names
        .iter()
        .map(|n| LaneMap::create(n, std::process::id(), 0))
        .collect::<std::result::Result<Vec<_>, _>>();
    for n in &names {
        LaneMap::unlink(n);
    }
    let (lanes, fds): (Vec<_>, Vec<_>) = made.map_err(|e| e.to_string())?.into_iter().unzip();
    ClientSegment::unlink(&seg_name);
    let mut made = Vec::new();
    for fd in &fds {
        let map = LaneMap::from_fd(fd).map_err(|e| e.to_string())?;
        made.push(LaneProducer::new(map).map_err(|e| e.to_string())?);
    }
    let ev = bench_event();
    let stop = AtomicBool::new(false);
    let taken = AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| bare_lane_consumer(&seg, &lanes, &stop, &taken));
        let _stop = StopLaneConsumer(&stop, &seg);
        let pushes: Vec<_> = made
            .iter()
            .map(|p| {
                let seg = &seg;
                let ev = &ev;
                move |i: u64| {
                    let mut e = ev.clone();
                    e.value = i as i64;
                    match p.push(&e, &seg.header().sleeping) {
                        Ok(wake) => {
                            if wake {
                                seg.ring_doorbell();
                            }
                            Ok(true)
                        }
                        Err(PushError::Full) => Ok(false),
                        Err(e) => Err(format!("push: {e}")),
                    }
                }
            })
            .collect();
        let pushes: Vec<Push<'_>> = pushes.iter().map(|p| p as Push<'_>).collect();
        let position = || {
            let t = taken.load(Ordering::Acquire);
            (t, t)
        };
        ring_run(&pushes, &seg, &position, each)
    })
}

/// The bare lane consumer: every lane in turn until all are empty, then the doorbell as the
/// HAM rings it down ("asleep", fence, a last look, the futex).
fn bare_lane_consumer(
    seg: &ClientSegment,
    lanes: &[ham_core::lane::LaneMap],
    stop: &AtomicBool,
    taken: &AtomicU64,
) {
    use ham_core::lane::{LaneConsumer, LanePolled};
    let mut shared = Consumer::new(seg, 100_000_000);
    let mut cs: Vec<LaneConsumer> = lanes.iter().map(LaneConsumer::resume).collect();
    let h = seg.header();
    loop {
        let mut any = true;
        while any {
            any = false;
            for (c, l) in cs.iter_mut().zip(lanes) {
                let mut n = 0;
                while let LanePolled::Event(_) | LanePolled::Rejected(_) = c.poll(l, 0, 0, 0) {
                    n += 1;
                    if n == 1024 {
                        break;
                    }
                }
                if n > 0 {
                    taken.fetch_add(n, Ordering::Release);
                    any = true;
                }
            }
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if shared.prepare_sleep(seg) {
            if cs.iter().zip(lanes).any(|(c, l)| c.has_published(l)) || stop.load(Ordering::SeqCst)
            {
                shared.awake(seg);
                continue;
            }
            sleep_on_doorbell(h);
            shared.awake(seg);
        }
    }
}

/// Stops the bare lane consumer: the flag, then a ring of its doorbell.
struct StopLaneConsumer<'a>(&'a AtomicBool, &'a ClientSegment);

impl Drop for StopLaneConsumer<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
        let h = self.1.header();
        // Whatever state the word is in: a new value and a wake.
        h.sleeping.fetch_add(4, Ordering::SeqCst);
        ring::futex_wake(&h.sleeping);
    }
}

/// A ham for `ring_throughput`: one entity, four clients, and a second mapping of its
/// client segment (for the doorbell word and counter the SDK does not show).
struct RingHam<'a> {
    sup: Sup<'a>,
    clients: Vec<Client>,
    seg: ClientSegment,
    pushed: u64,
}

fn ring_ham(ctx: &Ctx) -> Result<RingHam<'_>> {
    let sup = Sup::start_ham(ctx, "ring", "", &plain_entity("sink"))?;
    let clients = (0..4).map(|_| connect(&sup)).collect::<Result<Vec<_>>>()?;
    let name = &sup.ham.as_ref().expect("a ham instance").name;
    let seg =
        ClientSegment::open(&ham_core::paths::client_segment(name)).map_err(|e| e.to_string())?;
    Ok(RingHam {
        sup,
        clients,
        seg,
        pushed: 0,
    })
}

pub fn ring_throughput(ctx: &Ctx, p: &Params, problems: &mut Problems) -> Result<ScenarioResult> {
    let mut res = ScenarioResult {
        scenario: "ring_throughput",
        unit: "events/s",
        title: format!(
            "Client::raise from 1, 2 and 4 producer threads (a client each, so a lane each), \
             {} events each, on an entity with no raise condition: events ÷ (first push → ham \
             has taken the last event); {} repetitions; a full ring is retried after a yield. \
             bare: the same lanes and event, drained by a thread of the bench's own that does \
             nothing per event and sleeps as the HAM does (the floor); shared: the shared ring \
             (ham-core's, 1024 slots) drained the same way, the floor before lanes",
            p.ring_events, p.ring_reps
        ),
        systems: Vec::new(),
        ratios: false,
        ratio_pairs: vec![
            ("ham-1p", "bare-1p"),
            ("ham-2p", "bare-2p"),
            ("ham-4p", "bare-4p"),
            ("ham-2p", "ham-1p"),
            ("ham-4p", "ham-1p"),
        ],
        columns: vec![("full_retries", "full")],
        ratio_metrics: Vec::new(),
        notes: Vec::new(),
    };
    eprintln!("[ring_throughput] bare");
    for (lanes, producers) in [1usize, 2, 4]
        .into_iter()
        .map(|n| (true, n))
        .chain([1usize, 2, 4].into_iter().map(|n| (false, n)))
    {
        let k = producers.ilog2() as usize;
        let name = if lanes {
            ["bare-1p", "bare-2p", "bare-4p"][k]
        } else {
            ["shared-1p", "shared-2p", "shared-4p"][k]
        };
        let mut rates = Vec::new();
        let mut full = 0;
        let mut fails = 0;
        for _ in 0..p.ring_reps {
            sys::check_interrupted()?;
            let run = if lanes {
                bare_lane_run(ctx, producers, p.ring_events)?
            } else {
                bare_ring_run(ctx, producers, p.ring_events)?
            };
            match run {
                RingRun::Done(rate, f) => {
                    rates.push(rate);
                    full += f;
                }
                RingRun::Stalled(why, f) => {
                    full += f;
                    fails += 1;
                    problems.add(format!("ring_throughput, {name}: {why}"));
                }
            }
        }
        if let Some(s) = stats(&rates) {
            progress(format!(
                "{name}: median {:.0} events/s, {full} full-ring retries",
                s.median
            ));
        }
        let mut extra = Map::new();
        extra.insert("producers".into(), json!(producers));
        extra.insert("events_per_producer".into(), json!(p.ring_events));
        extra.insert("full_retries".into(), json!(full));
        res.systems
            .push((name.into(), measured(&rates, fails, extra)));
    }
    eprintln!("[ring_throughput] ham");
    let mut runs: Vec<(usize, Vec<f64>, u64, usize, u64)> = Vec::new();
    let mut counts = [0u64; 3];
    let result = (|| -> Result<()> {
        let mut ham = ring_ham(ctx)?;
        for producers in [1usize, 2, 4] {
            let mut rates = Vec::new();
            let mut full = 0;
            let mut stalls = 0;
            // Wake-ups producers rang (ham asleep when an event came), over the runs.
            let wakes0 = ham.seg.header().wakes.load(Ordering::Relaxed);
            for _ in 0..p.ring_reps {
                sys::check_interrupted()?;
                let run = {
                    let pushes: Vec<_> = ham.clients[..producers].iter().map(raise_push).collect();
                    let pushes: Vec<Push<'_>> = pushes.iter().map(|p| p as Push<'_>).collect();
                    // Each client pushes on a lane of its own (the SDK asks one at connect),
                    // or on the shared ring: what the HAM has taken off all of them is in its
                    // state segment's ring counts, published after each drain.
                    let state = &ham.sup.ham.as_ref().expect("a ham instance").seg;
                    let pushed = ham.pushed;
                    let taken = || {
                        let c = state.header().ring_counts();
                        c[0] + c[1] + c[2]
                    };
                    let position = || {
                        let t = taken();
                        (t.max(pushed), t)
                    };
                    ring_run(&pushes, &ham.seg, &position, p.ring_events)?
                };
                match run {
                    RingRun::Done(rate, f) => {
                        ham.pushed += p.ring_events * producers as u64;
                        rates.push(rate);
                        full += f;
                    }
                    RingRun::Stalled(why, f) => {
                        // A ham that stopped consuming stays stopped: go on with a new one.
                        full += f;
                        stalls += 1;
                        problems.add(format!(
                            "ring_throughput, {producers} producer(s): {why}; run counted as \
                             failed, next run on a new ham"
                        ));
                        check_ring(&ham.sup, "ring_throughput", None, problems);
                        finish(&mut ham.sup, problems);
                        ham = ring_ham(ctx)?;
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let wakes = ham
                .seg
                .header()
                .wakes
                .load(Ordering::Relaxed)
                .wrapping_sub(wakes0);
            if let Some(s) = stats(&rates) {
                progress(format!(
                    "{producers} producer(s): median {:.0} events/s, {full} full-ring retries, \
                     {wakes} wake-ups rung, {stalls} stalled",
                    s.median
                ));
            }
            runs.push((producers, rates, full, stalls, wakes));
        }
        counts = check_ring(&ham.sup, "ring_throughput", Some(ham.pushed), problems);
        finish(&mut ham.sup, problems);
        Ok(())
    })();
    sys::check_interrupted()?;
    for (k, name) in [(1, "ham-1p"), (2, "ham-2p"), (4, "ham-4p")] {
        let o = match (runs.iter().find(|r| r.0 == k), &result) {
            (Some((_, rates, full, stalls, wakes)), _) => {
                let mut extra = Map::new();
                extra.insert("producers".into(), json!(k));
                extra.insert("events_per_producer".into(), json!(p.ring_events));
                extra.insert("full_retries".into(), json!(full));
                extra.insert("wakes".into(), json!(wakes));
                measured(rates, *stalls, extra)
            }
            (None, Err(e)) => Outcome::Failed(e.clone()),
            (None, Ok(())) => Outcome::Failed("not run".into()),
        };
        res.systems.push((name.into(), o));
    }
    if let Err(e) = &result {
        problems.add(format!("ring_throughput aborted: {e}"));
    }
    res.notes.push(format!(
        "ham's ring counts (last instance): {} consumed, {} rejected, {} abandoned; ring of \
         1024 slots (the default); producers and ham share {} CPUs; fails = runs where ham \
         stopped consuming for {} s",
        counts[0],
        counts[1],
        counts[2],
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        STALL_NS / 1_000_000_000
    ));
    Ok(res)
}

// ---------------------------------------------------------------------------------------------
// ring_latency
// ---------------------------------------------------------------------------------------------

/// `n` samples of push → tail past the event, each after `LATENCY_GAP_NS` of quiet; µs.
fn latency_samples(
    n: usize,
    mut push: impl FnMut(u64) -> Result<()>,
    pos: impl Fn() -> (u64, u64),
) -> Result<Vec<f64>> {
    sys::tight_timer_slack();
    let mut v = Vec::with_capacity(n);
    let mut last = mono_ns();
    for i in 0..n + LATENCY_WARMUP {
        sys::check_interrupted()?;
        sys::sleep_until(last + LATENCY_GAP_NS);
        let (head, _) = pos();
        let t0 = mono_ns();
        push(i as u64)?;
        let deadline = t0 + 1_000_000_000;
        while pos().1 <= head {
            if mono_ns() > deadline {
                return Err(format!("event {i} not consumed within 1 s"));
            }
            std::thread::yield_now();
        }
        let t1 = mono_ns();
        last = t1;
        if i >= LATENCY_WARMUP {
            v.push((t1 - t0) as f64 / 1e3);
        }
    }
    Ok(v)
}

/// Takes every event the ring holds, doing nothing with them (a floor's consumer).
fn drain_all(c: &mut Consumer, seg: &ClientSegment) {
    loop {
        match c.poll(seg, mono_ns(), |_| false) {
            Polled::Empty => break,
            Polled::Stalled { .. } => std::thread::yield_now(),
            _ => {}
        }
    }
}

/// The floor: a consumer thread of the bench's own, asleep on the same futex doorbell,
/// draining with ham-core's `Consumer` (the HAM's path adds its doorbell thread, an eventfd
/// and its epoll loop).
fn bare_consumer(seg: &ClientSegment, stop: &AtomicBool) {
    let mut c = Consumer::new(seg, 100_000_000);
    let h = seg.header();
    loop {
        drain_all(&mut c, seg);
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if c.prepare_sleep(seg) {
            // Asleep now as far as producers (and `StopConsumer`) know: look at the flag
            // once more, or a stop between the look above and here would never be seen.
            if stop.load(Ordering::SeqCst) {
                return;
            }
            sleep_on_doorbell(h);
            c.awake(seg);
        }
    }
}

/// A bare consumer's sleep: on the doorbell word, while it says "asleep".
fn sleep_on_doorbell(h: &ring::ClientHeader) {
    let v = h.sleeping.load(Ordering::Acquire);
    if v & 3 == ring::BELL_ASLEEP {
        ring::futex_wait(&h.sleeping, v);
    }
}

/// Stops the bare consumer: the flag, then one event through the ring, which rings the
/// doorbell if the consumer sleeps (and keeps it from going to sleep if it is about to).
struct StopConsumer<'a>(&'a AtomicBool, &'a ClientSegment, &'a RingEvent);

impl Drop for StopConsumer<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
        let _ = self.1.push(self.2);
    }
}

/// The bare consumer of a process that waits on many descriptors, as the HAM does: asleep
/// in `epoll_wait` on an eventfd (`bell`, inherited) that producers write, the loop's own
/// mechanism without the loop. Returns only if it cannot set that up.
fn bare_epoll_consumer(
    seg: &ClientSegment,
    bell: std::os::fd::OwnedFd,
) -> Result<std::convert::Infallible> {
    use rustix::event::epoll;
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| format!("epoll: {e}"))?;
    epoll::add(
        &ep,
        &bell,
        epoll::EventData::new_u64(1),
        epoll::EventFlags::IN,
    )
    .map_err(|e| format!("epoll_ctl: {e}"))?;
    let mut c = Consumer::new(seg, 100_000_000);
    let mut events = Vec::with_capacity(4);
    loop {
        drain_all(&mut c, seg);
        if c.prepare_sleep(seg) {
            events.clear();
            let _ = epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), None);
            let mut buf = [0u8; 8];
            let _ = rustix::io::read(&bell, &mut buf);
            c.awake(seg);
        }
    }
}

/// `ham-bench __bare-consumer SEGMENT [BELL_FD]`: the bare consumer as a process of its own,
/// on a segment the bench made, until the bench kills it; with a descriptor number, the
/// epoll one on that inherited eventfd.
pub fn bare_consumer_process(name: &str, bell: Option<&String>) -> ! {
    match ClientSegment::open(name) {
        Ok(seg) => {
            if let Some(fd) = bell {
                let Ok(fd) = fd.parse::<i32>() else {
                    eprintln!("ham-bench __bare-consumer: {fd}: not a descriptor number");
                    std::process::exit(2)
                };
                // SAFETY: the bench started this process with the eventfd open at that
                // number, for this process alone to own.
                #[allow(unsafe_code)]
                let bell =
                    unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                let Err(e) = bare_epoll_consumer(&seg, bell);
                eprintln!("ham-bench __bare-consumer: {e}");
                std::process::exit(2)
            }
            bare_consumer(&seg, &AtomicBool::new(false));
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("ham-bench __bare-consumer: {e}");
            std::process::exit(2)
        }
    }
}

/// Where the floor's consumer runs and what it sleeps on.
#[derive(Clone, Copy, PartialEq)]
enum Floor {
    /// A thread of the bench, on the futex.
    Thread,
    /// A process of its own, as the HAM is, on the futex.
    Process,
    /// A process of its own in `epoll_wait`, on an eventfd the producer writes: what a loop
    /// that waits on many descriptors (the HAM's) can sleep on.
    Epoll,
}

/// The floor's latency, its consumer as `floor` says.
fn bare_latency(ctx: &Ctx, n: usize, floor: Floor) -> Result<(Vec<f64>, u64)> {
    let name = format!(
        "/ham.{}bare-ring{}.client",
        ctx.instance_prefix(),
        match floor {
            Floor::Thread => "",
            Floor::Process => "-proc",
            Floor::Epoll => "-epoll",
        }
    );
    let seg = ClientSegment::create(&name, 1, 1024, None).map_err(|e| e.to_string())?;
    let ev = bench_event();
    let stop = AtomicBool::new(false);
    let r = std::thread::scope(|s| {
        let _child = if floor == Floor::Thread {
            s.spawn(|| bare_consumer(&seg, &stop));
            None
        } else {
            let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
            let mut cmd = std::process::Command::new(exe);
            cmd.args(["__bare-consumer", &name]);
            // The consumer's eventfd: inherited (not close-on-exec), and a copy of it for
            // the producer, which writes it as an SDK client writes the HAM's bell.
            let inherited = if floor == Floor::Epoll {
                let fd = rustix::event::eventfd(0, rustix::event::EventfdFlags::empty())
                    .map_err(|e| format!("eventfd: {e}"))?;
                let ours =
                    rustix::io::fcntl_dupfd_cloexec(&fd, 3).map_err(|e| format!("dup: {e}"))?;
                seg.set_bell_id(1);
                let _ = seg.set_bell(ours, 1);
                cmd.arg(fd.as_raw_fd().to_string());
                Some(fd)
            } else {
                None
            };
            let child = cmd
                .spawn()
                .map_err(|e| format!("starting the bare consumer process: {e}"))?;
            drop(inherited);
            Some(crate::mts::KillOnDrop(child))
        };
        let _stop = StopConsumer(&stop, &seg, &ev);
        let h = seg.header();
        // Let the consumer go to sleep first.
        let deadline = mono_ns() + 1_000_000_000;
        while h.sleeping.load(Ordering::SeqCst) & 3 != ring::BELL_ASLEEP && mono_ns() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let w0 = h.wakes.load(Ordering::Relaxed);
        let v = latency_samples(
            n,
            |_| seg.push(&ev).map_err(|e| format!("push: {e}")),
            || {
                (
                    h.head.load(Ordering::Acquire),
                    h.tail.load(Ordering::Acquire),
                )
            },
        )?;
        Ok((v, h.wakes.load(Ordering::Relaxed) - w0))
    });
    ClientSegment::unlink(&name);
    r
}

pub fn ring_latency(ctx: &Ctx, p: &Params, problems: &mut Problems) -> Result<ScenarioResult> {
    let mut res = ScenarioResult {
        scenario: "ring_latency",
        unit: "µs",
        title: format!(
            "one Client::raise with the consumer asleep → the ring's tail passes the event; {} \
             samples ≥ {} ms apart; ham = the HAM (the client writes the bell, an eventfd in \
             ham's epoll set, handed over at hello); bare = a consumer thread in the bench \
             asleep on the futex; bare-proc = the same consumer in a process of its own, as \
             the HAM is; bare-epoll = that process asleep in epoll_wait on an eventfd the \
             producer writes (the HAM's mechanism, without its loop)",
            p.lat_samples,
            LATENCY_GAP_NS / 1_000_000
        ),
        systems: Vec::new(),
        ratios: true,
        ratio_pairs: Vec::new(),
        columns: vec![("doorbell_wakes", "wakes")],
        ratio_metrics: Vec::new(),
        notes: Vec::new(),
    };
    eprintln!("[ring_latency] ham");
    let ham = (|| -> Result<(Vec<f64>, u64)> {
        let mut sup = Sup::start_ham(ctx, "ringlat", "", &plain_entity("sink"))?;
        let client = connect(&sup)?;
        let name = &sup.ham.as_ref().expect("a ham instance").name;
        // A second mapping, for the doorbell counter the SDK does not show.
        let seg = ClientSegment::open(&ham_core::paths::client_segment(name))
            .map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(20));
        let w0 = seg.header().wakes.load(Ordering::Relaxed);
        let v = latency_samples(
            p.lat_samples,
            |i| {
                client
                    .raise("sink", "bench", 0, i as i64)
                    .map_err(|e| format!("raise: {e}"))
            },
            || client.ring_position(),
        )?;
        let wakes = seg.header().wakes.load(Ordering::Relaxed) - w0;
        let pushed = (p.lat_samples + LATENCY_WARMUP) as u64;
        check_ring(&sup, "ring_latency", Some(pushed), problems);
        finish(&mut sup, problems);
        Ok((v, wakes))
    })();
    sys::check_interrupted()?;
    eprintln!("[ring_latency] bare");
    let bare = bare_latency(ctx, p.lat_samples, Floor::Thread);
    sys::check_interrupted()?;
    eprintln!("[ring_latency] bare-proc");
    let bare_proc = bare_latency(ctx, p.lat_samples, Floor::Process);
    sys::check_interrupted()?;
    eprintln!("[ring_latency] bare-epoll");
    let bare_epoll = bare_latency(ctx, p.lat_samples, Floor::Epoll);
    sys::check_interrupted()?;
    let total = (p.lat_samples + LATENCY_WARMUP) as u64;
    for (name, r) in [
        ("ham", ham),
        ("bare", bare),
        ("bare-proc", bare_proc),
        ("bare-epoll", bare_epoll),
    ] {
        let o = match r {
            Ok((v, wakes)) => {
                if wakes != total {
                    res.notes.push(format!(
                        "{name}: {wakes} doorbell wake-ups for {total} events (the consumer \
                         was not asleep before every one)"
                    ));
                }
                let mut extra = Map::new();
                extra.insert("doorbell_wakes".into(), json!(wakes));
                let o = measured(&v, 0, extra);
                if let Outcome::Measured { stats, .. } = &o {
                    progress(format!(
                        "{name}: median {:.1} µs, p99 {:.1} µs, {wakes} doorbell wake-ups",
                        stats.median, stats.p99
                    ));
                }
                o
            }
            Err(e) => {
                if name == "ham" {
                    problems.add(format!("ring_latency: {e}"));
                }
                Outcome::Failed(e)
            }
        };
        res.systems.push((name.into(), o));
    }
    res.notes.push(format!(
        "the first {LATENCY_WARMUP} samples are dropped; the bench polls the tail with \
         sched_yield between looks, so a consumer thread queued on its CPU runs at once"
    ));
    Ok(res)
}

// ---------------------------------------------------------------------------------------------
// heartbeat_miss_delay
// ---------------------------------------------------------------------------------------------

fn miss_name(i: usize) -> String {
    format!("hb{i:04}")
}

/// Beats every heartbeat but `skip` each `MISS_BEAT_EVERY_NS`, counting rounds.
fn miss_beater(hbs: &[Heartbeat], skip: &AtomicUsize, rounds: &AtomicU64, stop: &AtomicBool) {
    sys::tight_timer_slack();
    let mut next = mono_ns();
    while !stop.load(Ordering::SeqCst) {
        let v = skip.load(Ordering::SeqCst);
        for (i, h) in hbs.iter().enumerate() {
            if i != v {
                h.beat();
            }
        }
        rounds.fetch_add(1, Ordering::SeqCst);
        next = (next + MISS_BEAT_EVERY_NS).max(mono_ns());
        sys::sleep_until(next);
    }
}

pub fn heartbeat_miss_delay(
    ctx: &Ctx,
    p: &Params,
    problems: &mut Problems,
) -> Result<ScenarioResult> {
    let n = p.miss_entities;
    let period_ns = MISS_PERIOD.as_nanos() as u64;
    let mut res = ScenarioResult {
        scenario: "heartbeat_miss_delay",
        unit: "ms",
        title: format!(
            "{n} attach_only entities attached to the bench (period {} ms, missed_low {MISS_LOW}), \
             all beaten every {} ms; one stops → its heartbeat-missed-low notify reaches a \
             subscriber: delay past the deadline (the check that saw the last beat + {MISS_LOW} \
             periods; checks at multiples of the period); {} entities in turn",
            period_ns / 1_000_000,
            MISS_BEAT_EVERY_NS / 1_000_000,
            p.miss_samples
        ),
        systems: Vec::new(),
        ratios: false,
        ratio_pairs: Vec::new(),
        columns: vec![("spurious", "spurious")],
        ratio_metrics: Vec::new(),
        notes: Vec::new(),
    };
    eprintln!("[heartbeat_miss_delay] ham, {n} entities");
    let mut entities = String::new();
    for i in 0..n {
        entities.push_str(&format!(
            "\n[[entity]]\nname = \"{}\"\nattach_only = true\n\
             [[entity.condition]]\non = \"heartbeat-missed-low\"\n\
             [[entity.condition.action]]\ndo = \"notify\"\ntopic = \"miss\"\n",
            miss_name(i)
        ));
    }
    let extra_cfg = format!("max_entities = {}\n", n.max(1024));
    let mut delays = Vec::new();
    let mut failures = 0usize;
    let mut spurious = 0usize;
    let result = (|| -> Result<()> {
        let mut sup = Sup::start_ham(ctx, "miss", &extra_cfg, &entities)?;
        let client = connect(&sup)?;
        // Notifications are stamped on arrival by a thread of their own. It ends when ham
        // does (end of stream, no reconnecting) or when nobody listens any more.
        let mut sub = client
            .subscribe("miss")
            .map_err(|e| format!("subscribe: {e}"))?;
        let (tx, rx) = mpsc::channel::<(String, u64)>();
        std::thread::spawn(move || {
            while let Ok(note) = sub.recv_within(Duration::ZERO) {
                if tx.send((note.entity, mono_ns())).is_err() {
                    return;
                }
            }
        });
        let mut attached = Attached::new(&client);
        let me = Some(std::process::id() as i32);
        let t_attach = mono_ns();
        let mut hbs = Vec::with_capacity(n);
        let mut round = mono_ns();
        for i in 0..n {
            sys::check_interrupted()?;
            hbs.push(attached.attach(&miss_name(i), me, MISS_PERIOD, MISS_LOW)?);
            // Keep the ones attached so far beating while the rest attach.
            if mono_ns() - round > MISS_BEAT_EVERY_NS {
                hbs.iter().for_each(Heartbeat::beat);
                round = mono_ns();
            }
        }
        progress(format!(
            "{n} entities attached in {:.0} ms",
            ms(mono_ns() - t_attach)
        ));
        let skip = AtomicUsize::new(usize::MAX);
        let rounds = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        let r = std::thread::scope(|s| -> Result<()> {
            s.spawn(|| miss_beater(&hbs, &skip, &rounds, &stop));
            let _stop = SetOnDrop(&stop);
            // Settle: a few periods with everything beating; nothing may fire.
            sys::sleep_interruptible(4.0 * MISS_PERIOD.as_secs_f64())?;
            spurious += rx.try_iter().count();
            for k in 0..p.miss_samples {
                sys::check_interrupted()?;
                // Victims spread over the entities, a different one each time.
                let v = (k * n / p.miss_samples + k * 7) % n;
                skip.store(v, Ordering::SeqCst);
                let r0 = rounds.load(Ordering::SeqCst);
                let until = mono_ns() + 1_000_000_000;
                while rounds.load(Ordering::SeqCst) < r0 + 2 {
                    if mono_ns() > until {
                        return Err("the beating thread stalled".into());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                // ham checks every client at multiples of the period (CLOCK_MONOTONIC),
                // and the check after a beat is when it saw it. The last beat goes half
                // a period past a check, so that the check that sees it is known: the
                // next multiple of the period. The deadline is that check + missed_low
                // periods: the first check at which the miss is due.
                let now = mono_ns();
                let mid = now - now % period_ns + period_ns / 2;
                sys::sleep_until(if mid > now { mid } else { mid + period_ns });
                let last = mono_ns();
                hbs[v].beat();
                let after = mono_ns();
                let seen_at = (last / period_ns + 1) * period_ns;
                if after >= seen_at {
                    // Descheduled across the check: which check saw the beat is unknown.
                    failures += 1;
                    skip.store(usize::MAX, Ordering::SeqCst);
                    sys::sleep_interruptible(3.0 * MISS_PERIOD.as_secs_f64())?;
                    continue;
                }
                let deadline = seen_at + u64::from(MISS_LOW) * period_ns;
                let give_up = deadline + 2_000_000_000;
                let want = miss_name(v);
                loop {
                    let wait = give_up.saturating_sub(mono_ns());
                    match rx.recv_timeout(Duration::from_nanos(wait)) {
                        Ok((e, t)) if e == want => {
                            delays.push((t as f64 - deadline as f64) / 1e6);
                            break;
                        }
                        Ok(_) => spurious += 1,
                        Err(_) => {
                            failures += 1;
                            problems.add(format!(
                                "heartbeat_miss_delay: no notification for {want} within 2 s \
                                 of its deadline"
                            ));
                            break;
                        }
                    }
                }
                skip.store(usize::MAX, Ordering::SeqCst);
                // Beating again ends the episode; give ham a period to see it.
                sys::sleep_interruptible(MISS_PERIOD.as_secs_f64())?;
            }
            // Detach while everything still beats, so nothing fires on the way out.
            attached.detach_all()
        });
        if let Err(e) = r {
            drop(attached);
            return Err(e);
        }
        spurious += rx.try_iter().count();
        drop(attached);
        finish(&mut sup, problems);
        Ok(())
    })();
    sys::check_interrupted()?;
    if spurious > 0 {
        problems.add(format!(
            "heartbeat_miss_delay: {spurious} notification(s) for entities that kept beating"
        ));
    }
    let mut extra = Map::new();
    extra.insert("entities".into(), json!(n));
    extra.insert("period_ms".into(), json!(period_ns / 1_000_000));
    extra.insert("missed_low".into(), json!(MISS_LOW));
    extra.insert("spurious".into(), json!(spurious));
    let o = match (&result, delays.is_empty()) {
        (Err(e), true) => Outcome::Failed(e.clone()),
        _ => {
            if let Err(e) = &result {
                problems.add(format!("heartbeat_miss_delay aborted: {e}"));
                extra.insert("aborted".into(), json!(e));
            }
            measured(&delays, failures, extra)
        }
    };
    if let Outcome::Measured { stats, .. } = &o {
        progress(format!(
            "delay past the deadline: median {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            stats.median, stats.p99, stats.max
        ));
    }
    res.systems.push(("ham".into(), o));
    eprintln!("[heartbeat_miss_delay] bare");
    let bare = match bare_miss_floor(p.miss_samples, period_ns) {
        Ok(v) => measured(&v, 0, Map::new()),
        Err(e) => Outcome::Failed(e),
    };
    res.systems.push(("bare".into(), bare));
    res.ratios = true;
    res.notes.push(
        "delay = the notification read by the subscriber − (the check that saw the victim's \
         last beat + missed_low × period): ham checks every client at multiples of its period"
            .into(),
    );
    res.notes.push(
        "bare (the floor): a thread asleep until the same kind of instant (clock_nanosleep, \
         TIMER_ABSTIME, a multiple of the period) sends a datagram to a thread blocked on it, \
         which stamps it: the timer's and one hand-off's wake-ups, nothing checked"
            .into(),
    );
    Ok(res)
}

/// `heartbeat_miss_delay`'s floor: `n` delays (ms) from a deadline (a multiple of
/// `period_ns`, CLOCK_MONOTONIC) to a datagram sent at it by a timer-woken thread being read
/// by another thread.
fn bare_miss_floor(n: usize, period_ns: u64) -> Result<Vec<f64>> {
    let (a, b) = UnixDatagram::pair().map_err(|e| format!("socketpair: {e}"))?;
    let (to_timer, deadlines) = mpsc::channel::<u64>();
    let timer = std::thread::spawn(move || {
        while let Ok(at) = deadlines.recv() {
            let ts = libc::timespec {
                tv_sec: (at / 1_000_000_000) as libc::time_t,
                tv_nsec: (at % 1_000_000_000) as libc::c_long,
            };
            // SAFETY: `ts` is a valid timespec that lives across the call; the remaining-time
            // pointer may be null with TIMER_ABSTIME.
            while unsafe {
                libc::clock_nanosleep(
                    libc::CLOCK_MONOTONIC,
                    libc::TIMER_ABSTIME,
                    &ts,
                    std::ptr::null_mut(),
                )
            } == libc::EINTR
            {}
            if a.send(&[1]).is_err() {
                return;
            }
        }
    });
    let mut v = Vec::with_capacity(n);
    let r = (|| -> Result<()> {
        for _ in 0..n {
            sys::check_interrupted()?;
            let now = mono_ns();
            let at = (now / period_ns + 2) * period_ns;
            to_timer
                .send(at)
                .map_err(|_| "the timer thread ended".to_owned())?;
            let mut buf = [0u8; 1];
            b.recv(&mut buf).map_err(|e| format!("recv: {e}"))?;
            v.push((mono_ns() as f64 - at as f64) / 1e6);
        }
        Ok(())
    })();
    drop(to_timer);
    let _ = timer.join();
    r.map(|()| v)
}

// ---------------------------------------------------------------------------------------------
// idle: heartbeating services
// ---------------------------------------------------------------------------------------------

/// A thread beating ham's services for the `idle` scenario; stops (and is joined) on drop.
pub struct IdleBeats {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for IdleBeats {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Attaches each `(entity, pid)` with a heartbeat (`IDLE_HB_PERIOD`, missed-low after
/// `IDLE_HB_LOW` periods) and beats each once a period, at its own phase: entity i at
/// `i / n` of the period, as independent processes would.
pub fn idle_heartbeats(sup: &Sup<'_>, services: &[(String, i32)]) -> Result<IdleBeats> {
    let client = connect(sup)?;
    let hbs = services
        .iter()
        .map(|(name, pid)| {
            client
                .attach_pid(name, Some(*pid), IDLE_HB_PERIOD, IDLE_HB_LOW, 0)
                .map_err(|e| format!("attach {name} (pid {pid}): {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("idle-beats".into())
        .spawn(move || {
            let p = IDLE_HB_PERIOD.as_nanos() as u64;
            let n = hbs.len().max(1) as u64;
            let t0 = mono_ns();
            for k in 0u64.. {
                let due = t0 + (k / n) * p + (k % n) * p / n;
                loop {
                    if flag.load(Ordering::SeqCst) {
                        return;
                    }
                    let now = mono_ns();
                    if now >= due {
                        break;
                    }
                    std::thread::sleep(Duration::from_nanos((due - now).min(50_000_000)));
                }
                if let Some(h) = hbs.get((k % n) as usize) {
                    h.beat();
                }
            }
        })
        .map_err(|e| format!("spawning the beating thread: {e}"))?;
    Ok(IdleBeats {
        stop,
        thread: Some(thread),
    })
}
