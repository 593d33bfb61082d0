//! The restart, takeover, footprint and idle scenarios (the SDK's are in `sdk.rs`).

use std::time::Duration;

use ham_core::layout::{EntityState, FLAG_STOP_INTENT, HeaderSnapshot};
use ham_core::segment::Segment;
use serde_json::{Map, json};

use crate::report::{Outcome, ScenarioResult, stats};
use crate::stamps::{Stamps, index_of, service_id};
use crate::sys::{self, Result, mono_ns, ms};
use crate::systems::{ALL, Ctx, Kind, Sup};

/// Each victim has been up at least this long before it is killed: stays clear of the
/// peers' 1 s restart throttles (runsv, s6 at default settings), as the peers' harness does.
const MIN_ALIVE_NS: u64 = 1_100_000_000;
/// Quiet time after a replacement reported, before the next kill.
const GAP_NS: u64 = 10_000_000;
/// How long a restart may take before it counts as failed.
const RESTART_TIMEOUT_NS: u64 = 10_000_000_000;
/// After the pair looks complete, how long it must stay so before the next takeover kill
/// (the new Guardian has to finish starting: exec, config, segment, pidfd).
const PAIR_SETTLE_NS: u64 = 50_000_000;

pub struct Params {
    /// Services for the restart and takeover scenarios.
    pub n: usize,
    pub kills: usize,
    pub storm_reps: usize,
    /// restart_latency / restart_storm: the kills and storms of each system are split into
    /// this many rounds, the systems taking turns (each round on a freshly started
    /// supervisor), so that a stretch of a noisy host falls on every system alike rather
    /// than on whichever ran then.
    pub restart_rounds: usize,
    pub takeover_kills: usize,
    pub idle_s: f64,
    /// heartbeat_cost: batches of 10 000 beats (and datagrams).
    pub hb_batches: usize,
    /// ring_throughput: events per producer, and repetitions per producer count.
    pub ring_events: u64,
    pub ring_reps: usize,
    /// ring_latency: samples.
    pub lat_samples: usize,
    /// heartbeat_miss_delay: entities, and how many of them stop beating in turn.
    pub miss_entities: usize,
    pub miss_samples: usize,
    /// footprint / idle: how long a freshly started supervisor settles (× the per-system
    /// time), and how many PSS samples are taken.
    pub settle_scale: f64,
    pub pss_samples: usize,
    /// footprint: the numbers of services measured (quick: 100 only).
    pub footprint_sizes: &'static [usize],
    /// scale: the numbers of entities.
    pub scale_sizes: &'static [usize],
}

impl Params {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                // Under a minute with every peer installed (supervisord's restart alone is
                // about a second per kill): a smoke test of the machinery, not figures.
                n: 10,
                kills: 6,
                storm_reps: 1,
                restart_rounds: 1,
                takeover_kills: 5,
                idle_s: 1.0,
                settle_scale: 0.3,
                pss_samples: 2,
                footprint_sizes: &[100],
                scale_sizes: &[10, 100],
                hb_batches: 20,
                ring_events: 20_000,
                ring_reps: 2,
                lat_samples: 100,
                miss_entities: 100,
                miss_samples: 10,
            }
        } else {
            Self {
                n: 100,
                kills: 400,
                storm_reps: 10,
                restart_rounds: 5,
                takeover_kills: 100,
                idle_s: 30.0,
                hb_batches: 100,
                ring_events: 100_000,
                ring_reps: 5,
                settle_scale: 1.0,
                pss_samples: 5,
                footprint_sizes: &[1, 100],
                scale_sizes: &[10, 100, 1000, 10_000],
                lat_samples: 500,
                miss_entities: 1000,
                miss_samples: 40,
            }
        }
    }
}

/// Findings about ham worth reporting (takeover trouble, log errors, stop problems).
#[derive(Default)]
pub struct Problems(pub Vec<String>);

impl Problems {
    pub fn add(&mut self, s: impl Into<String>) {
        let s = s.into();
        eprintln!("  ! {s}");
        self.0.push(s);
    }
}

pub(crate) fn progress(msg: impl AsRef<str>) {
    eprintln!("  {}", msg.as_ref());
}

/// Starts `kind` with `n` services and waits until each has reported once.
fn start_up<'a>(
    ctx: &'a Ctx,
    stamps: &mut Stamps,
    kind: Kind,
    n: usize,
    label: &str,
) -> Result<Sup<'a>> {
    stamps.reset(n);
    let t0 = mono_ns();
    let sup = Sup::start(ctx, kind, n, label)?;
    stamps.wait_all(60)?;
    progress(format!(
        "{} with {n} services up in {:.0} ms",
        kind.name(),
        ms(mono_ns() - t0)
    ));
    Ok(sup)
}

pub(crate) fn finish(sup: &mut Sup<'_>, problems: &mut Problems) {
    for f in sup.log_findings() {
        problems.add(format!("ham log ({}): {f}", sup.dir.display()));
    }
    if let Err(e) = sup.stop() {
        problems.add(format!("stopping {}: {e}", sup.kind.name()));
    }
}

// ---------------------------------------------------------------------------------------------
// restart_latency, restart_storm
// ---------------------------------------------------------------------------------------------

struct RestartRun {
    lat: Vec<f64>,
    lat_fail: usize,
    storm: Vec<f64>,
    storm_fail: usize,
}

/// Sequential SIGKILLs, round robin over the services: latency = the replacement's own
/// stamp − the stamp taken just before `kill()`.
fn latency_loop(
    ctx: &Ctx,
    stamps: &mut Stamps,
    kills: usize,
    run: &mut RestartRun,
    name: &str,
) -> Result<()> {
    let n = stamps.slots.len();
    let mut last_done = 0;
    for it in 0..kills {
        let idx = it % n;
        stamps.drain();
        let Some(old) = stamps.slots[idx] else {
            run.lat_fail += 1;
            continue;
        };
        sys::sleep_until((old.ns + MIN_ALIVE_NS).max(last_done + GAP_NS));
        sys::check_interrupted()?;
        stamps.drain();
        let old = stamps.slots[idx].expect("reported above");
        if !ctx.is_our_service(old.pid) {
            return Err(format!("pid {} is not a service of this run", old.pid));
        }
        let t0 = mono_ns();
        if !sys::kill(old.pid, libc::SIGKILL) {
            run.lat_fail += 1;
            continue;
        }
        let back = stamps.wait_for(t0 + RESTART_TIMEOUT_NS, |s| {
            s[idx].is_some_and(|x| x.pid != old.pid)
        })?;
        last_done = mono_ns();
        match stamps.slots[idx] {
            Some(new) if back => run.lat.push(ms(new.ns.saturating_sub(t0))),
            _ => {
                run.lat_fail += 1;
                eprintln!("  ! {name}: service {idx} not back within 10 s");
            }
        }
    }
    Ok(())
}

/// Every service SIGKILLed at once; the time until the last replacement stamped.
fn storm_loop(ctx: &Ctx, stamps: &mut Stamps, reps: usize, run: &mut RestartRun) -> Result<()> {
    for _ in 0..reps {
        stamps.drain();
        let latest = stamps
            .slots
            .iter()
            .flatten()
            .map(|s| s.ns)
            .max()
            .unwrap_or(0);
        sys::sleep_until(latest + MIN_ALIVE_NS);
        sys::check_interrupted()?;
        stamps.drain();
        let old = stamps.pids();
        if old.len() != stamps.slots.len() {
            run.storm_fail += 1;
            continue;
        }
        if let Some(p) = old.iter().find(|&&p| !ctx.is_our_service(p)) {
            return Err(format!("pid {p} is not a service of this run"));
        }
        let t0 = mono_ns();
        for &p in &old {
            sys::kill(p, libc::SIGKILL);
        }
        let back = stamps.wait_for(t0 + 60_000_000_000, |s| {
            s.iter()
                .zip(&old)
                .all(|(x, &o)| x.is_some_and(|x| x.pid != o))
        })?;
        if back {
            let last = stamps
                .slots
                .iter()
                .flatten()
                .map(|s| s.ns)
                .max()
                .unwrap_or(t0);
            run.storm.push(ms(last.saturating_sub(t0)));
        } else {
            run.storm_fail += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

pub fn restart(
    ctx: &Ctx,
    stamps: &mut Stamps,
    p: &Params,
    want_lat: bool,
    want_storm: bool,
    problems: &mut Problems,
) -> Result<Vec<ScenarioResult>> {
    let mut lat = ScenarioResult {
        scenario: "restart_latency",
        unit: "ms",
        title: format!(
            "SIGKILL of one service → the replacement's first instruction; {} services, {} kills round robin",
            p.n, p.kills
        ),
        systems: Vec::new(),
        ratios: true,
        ratio_pairs: Vec::new(),
        columns: Vec::new(),
        ratio_metrics: Vec::new(),
        notes: Vec::new(),
    };
    let mut storm = ScenarioResult {
        scenario: "restart_storm",
        unit: "ms",
        title: format!(
            "all {} services SIGKILLed at once → the last replacement stamped; {} repetitions",
            p.n, p.storm_reps
        ),
        systems: Vec::new(),
        ratios: true,
        ratio_pairs: Vec::new(),
        columns: Vec::new(),
        ratio_metrics: Vec::new(),
        notes: Vec::new(),
    };
    // The systems that can run, each with what its rounds measured so far and the first
    // error that ended them.
    let mut runs: Vec<(Kind, RestartRun, Result<()>)> = Vec::new();
    for kind in ALL {
        match kind.available() {
            Ok(()) => runs.push((
                kind,
                RestartRun {
                    lat: Vec::new(),
                    lat_fail: 0,
                    storm: Vec::new(),
                    storm_fail: 0,
                },
                Ok(()),
            )),
            Err(why) => {
                let name = kind.name().to_owned();
                lat.systems
                    .push((name.clone(), Outcome::Skipped(why.clone())));
                storm.systems.push((name, Outcome::Skipped(why)));
            }
        }
    }
    let rounds = p.restart_rounds.max(1);
    // Round `i` of `rounds` gets its share of `total`.
    let share = |total: usize, i: usize| total / rounds + usize::from(i < total % rounds);
    for round in 0..rounds {
        for (kind, run, result) in &mut runs {
            if result.is_err() {
                continue;
            }
            let kind = *kind;
            let name = kind.name().to_owned();
            // supervisord restarts about once a second: fewer kills keep the run short.
            let kills = if kind == Kind::Supervisord {
                p.kills.min(50)
            } else {
                p.kills
            };
            eprintln!("[restart] {name}, round {} of {rounds}", round + 1);
            *result = (|| -> Result<()> {
                let mut sup = start_up(ctx, stamps, kind, p.n, "restart")?;
                std::thread::sleep(Duration::from_millis(300));
                if want_lat {
                    latency_loop(ctx, stamps, share(kills, round), run, &name)?;
                }
                if want_storm {
                    storm_loop(ctx, stamps, share(p.storm_reps, round), run)?;
                }
                finish(&mut sup, problems);
                Ok(())
            })();
            sys::check_interrupted()?;
        }
    }
    for (kind, run, result) in runs {
        let name = kind.name().to_owned();
        let outcome = |v: &[f64], fails: usize| match (&result, stats(v)) {
            (Err(e), _) => Outcome::Failed(e.clone()),
            (Ok(()), Some(stats)) => Outcome::Measured {
                stats,
                failures: fails,
                extra: Map::new(),
            },
            (Ok(()), None) => Outcome::Failed(format!("no measurement ({fails} failures)")),
        };
        if let (Some(s), true) = (stats(&run.lat), want_lat) {
            progress(format!(
                "{name}: restart latency: median {:.3} ms, p99 {:.3} ms, {} failures",
                s.median, s.p99, run.lat_fail
            ));
        }
        if let (Some(s), true) = (stats(&run.storm), want_storm) {
            progress(format!("{name}: storm: median {:.2} ms", s.median));
        }
        if kind == Kind::Ham && (run.lat_fail > 0 || run.storm_fail > 0) {
            problems.add(format!(
                "ham: {} restart(s) and {} storm(s) did not come back within the timeout",
                run.lat_fail, run.storm_fail
            ));
        }
        lat.systems
            .push((name.clone(), outcome(&run.lat, run.lat_fail)));
        storm
            .systems
            .push((name, outcome(&run.storm, run.storm_fail)));
    }
    lat.notes.push(format!(
        "each victim up ≥ {} ms before its kill, {} ms quiet after each restart",
        MIN_ALIVE_NS / 1_000_000,
        GAP_NS / 1_000_000
    ));
    if rounds > 1 {
        let note = format!(
            "in {rounds} rounds, the systems taking turns (each round on a freshly started \
             supervisor)"
        );
        lat.notes.push(note.clone());
        storm.notes.push(note);
    }
    if lat
        .systems
        .iter()
        .any(|(n, o)| n == "supervisord" && !matches!(o, Outcome::Skipped(_)))
    {
        lat.notes
            .push("supervisord: at most 50 kills (it restarts about once a second)".into());
    }
    let mut out = Vec::new();
    if want_lat {
        out.push(lat);
    }
    if want_storm {
        out.push(storm);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// takeover
// ---------------------------------------------------------------------------------------------

/// `Ok(header)` when the HAM and the Guardian are both alive, the epoch is at least
/// `min_epoch`, and every entity runs the process that last reported for it.
fn pair_state(
    seg: &Segment,
    stamps: &Stamps,
    n: usize,
    min_epoch: u64,
) -> std::result::Result<HeaderSnapshot, String> {
    let h = seg.header().snapshot();
    if h.epoch < min_epoch {
        return Err(format!("epoch {} (waiting for {min_epoch})", h.epoch));
    }
    if h.flags & FLAG_STOP_INTENT != 0 {
        return Err("stop intent set".into());
    }
    if !sys::alive(h.ham_pid, Some(h.ham_start_time)) {
        return Err(format!("HAM pid {} not alive", h.ham_pid));
    }
    if h.guardian_pid <= 0 || !sys::alive(h.guardian_pid, Some(h.guardian_start_time)) {
        return Err(format!("guardian pid {} not alive", h.guardian_pid));
    }
    let mut running = 0;
    for (slot, rec) in seg.records() {
        let r = rec.map_err(|e| format!("slot {slot}: {e}"))?;
        let Some(i) = index_of(&r.name) else { continue };
        if r.state != EntityState::Running {
            return Err(format!("{} is {}", r.name, r.state.as_str()));
        }
        if stamps.slots.get(i).copied().flatten().map(|s| s.pid) != Some(r.pid) {
            return Err(format!("{} pid {} has not reported", r.name, r.pid));
        }
        if !sys::alive(r.pid, Some(r.start_time)) {
            return Err(format!("{} pid {} is not alive", r.name, r.pid));
        }
        running += 1;
    }
    if running != n {
        return Err(format!("{running} of {n} entities running"));
    }
    Ok(h)
}

/// After a HAM kill: reaps what the killed HAM left, waits for the pair to be complete at the
/// next epoch, and counts the services (other than `killed`) whose process changed — a
/// takeover must re-adopt them, pids unchanged.
fn settle(
    seg: &Segment,
    stamps: &mut Stamps,
    n: usize,
    h: &HeaderSnapshot,
    before: &[Option<crate::stamps::Stamp>],
    killed: Option<usize>,
) -> Result<(HeaderSnapshot, usize)> {
    sys::reap();
    let next = wait_pair_up(seg, stamps, n, h.epoch + 1)?;
    let moved = stamps
        .slots
        .iter()
        .zip(before)
        .enumerate()
        .filter(|(i, (a, b))| Some(*i) != killed && a.map(|x| x.pid) != b.map(|x| x.pid))
        .count();
    Ok((next, moved))
}

fn wait_pair_up(
    seg: &Segment,
    stamps: &mut Stamps,
    n: usize,
    min_epoch: u64,
) -> Result<HeaderSnapshot> {
    let deadline = mono_ns() + 30_000_000_000;
    loop {
        sys::check_interrupted()?;
        sys::reap();
        stamps.drain();
        let why = match pair_state(seg, stamps, n, min_epoch) {
            Ok(h) => {
                sys::sleep_until(mono_ns() + PAIR_SETTLE_NS);
                stamps.drain();
                match pair_state(seg, stamps, n, min_epoch) {
                    Ok(h2)
                        if (h2.epoch, h2.ham_pid, h2.guardian_pid)
                            == (h.epoch, h.ham_pid, h.guardian_pid) =>
                    {
                        return Ok(h2);
                    }
                    Ok(_) => "the pair changed while settling".to_owned(),
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        if mono_ns() > deadline {
            return Err(format!(
                "the HAM/Guardian pair did not come back within 30 s: {why}"
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Kills the HAM named in `h` after checking it is ours (ham binary, start time).
fn check_ham_is_ours(ctx: &Ctx, h: &HeaderSnapshot) -> Result<()> {
    if sys::exe(h.ham_pid).as_deref() != Some(ctx.ham.as_path())
        || !sys::alive(h.ham_pid, Some(h.ham_start_time))
    {
        return Err(format!("HAM pid {} is not ours or not alive", h.ham_pid));
    }
    Ok(())
}

pub fn takeover(
    ctx: &Ctx,
    stamps: &mut Stamps,
    p: &Params,
    problems: &mut Problems,
) -> Result<ScenarioResult> {
    let mut res = ScenarioResult {
        scenario: "takeover",
        unit: "ms",
        title: format!(
            "SIGKILL of the HAM; {} entities, {} kills each: ham_supervising = HAM + one entity \
             killed together → that entity's replacement stamped; ham_new_guardian = HAM killed → \
             the header names a new, live Guardian",
            p.n, p.takeover_kills
        ),
        systems: Vec::new(),
        ratios: false,
        ratio_pairs: Vec::new(),
        columns: Vec::new(),
        ratio_metrics: Vec::new(),
        notes: Vec::new(),
    };
    eprintln!("[takeover] ham");
    let n = p.n;
    let mut sup_lat = Vec::new();
    let mut sup_fail = 0usize;
    let mut guard_lat = Vec::new();
    let mut guard_fail = 0usize;
    let mut readopt_restarts = 0usize;
    let result = (|| -> Result<HeaderSnapshot> {
        let mut sup = start_up(ctx, stamps, Kind::Ham, n, "takeover")?;
        let seg = &sup.ham.as_ref().expect("a ham instance").seg;
        let mut h = wait_pair_up(seg, stamps, n, 0)?;
        sys::tight_timer_slack();

        // (a) HAM and one entity killed at the same instant.
        for it in 0..p.takeover_kills {
            let idx = it % n;
            let victim = stamps.slots[idx].expect("all reported").pid;
            if !ctx.is_our_service(victim) {
                return Err(format!("pid {victim} is not a service of this run"));
            }
            check_ham_is_ours(ctx, &h)?;
            let others: Vec<_> = stamps.slots.clone();
            let t0 = mono_ns();
            sys::kill(h.ham_pid, libc::SIGKILL);
            sys::kill(victim, libc::SIGKILL);
            let back = stamps.wait_for(t0 + RESTART_TIMEOUT_NS, |s| {
                s[idx].is_some_and(|x| x.pid != victim)
            })?;
            match stamps.slots[idx] {
                Some(new) if back => sup_lat.push(ms(new.ns.saturating_sub(t0))),
                _ => {
                    sup_fail += 1;
                    problems.add(format!(
                        "takeover (a) #{it}: entity {idx} not restarted within 10 s"
                    ));
                }
            }
            let (next, moved) = settle(seg, stamps, n, &h, &others, Some(idx))?;
            h = next;
            readopt_restarts += moved;
        }
        progress(format!(
            "(a) HAM + entity: {} measured, {sup_fail} failed",
            sup_lat.len()
        ));

        // (b) HAM killed; poll the header until it names a new, live Guardian.
        for it in 0..p.takeover_kills {
            check_ham_is_ours(ctx, &h)?;
            let before: Vec<_> = stamps.slots.clone();
            let t0 = mono_ns();
            sys::kill(h.ham_pid, libc::SIGKILL);
            let deadline = t0 + RESTART_TIMEOUT_NS;
            let mut seen = None;
            while mono_ns() < deadline {
                let s = seg.header().snapshot();
                let g = s.guardian_pid;
                if g > 0 && g != h.guardian_pid && g != h.ham_pid {
                    let t = mono_ns();
                    if sys::alive(g, None) {
                        seen = Some(t);
                        break;
                    }
                }
                std::thread::sleep(Duration::from_micros(20));
            }
            match seen {
                Some(t) => guard_lat.push(ms(t - t0)),
                None => {
                    guard_fail += 1;
                    problems.add(format!(
                        "takeover (b) #{it}: no new live guardian within 10 s"
                    ));
                }
            }
            let (next, moved) = settle(seg, stamps, n, &h, &before, None)?;
            h = next;
            readopt_restarts += moved;
        }
        progress(format!(
            "(b) HAM alone: {} measured, {guard_fail} failed",
            guard_lat.len()
        ));
        let last = seg.header().snapshot();
        finish(&mut sup, problems);
        Ok(last)
    })();
    sys::check_interrupted()?;
    if readopt_restarts > 0 {
        problems.add(format!(
            "takeover: {readopt_restarts} entities that were not killed got a new process \
             (a takeover should re-adopt them with their pids unchanged)"
        ));
    }
    let mut extra_a = Map::new();
    let mut extra_b = Map::new();
    match &result {
        Ok(h) => {
            extra_b.insert("ham_failures_in_header".into(), json!(h.ham_failures));
            extra_b.insert("final_epoch".into(), json!(h.epoch));
        }
        Err(e) => problems.add(format!("takeover aborted: {e}")),
    }
    extra_a.insert(
        "unkilled_entities_restarted".into(),
        json!(readopt_restarts),
    );
    for (name, v, fails, extra) in [
        ("ham_supervising", &sup_lat, sup_fail, extra_a),
        ("ham_new_guardian", &guard_lat, guard_fail, extra_b),
    ] {
        let o = match (stats(v), &result) {
            (Some(stats), Ok(_)) => Outcome::Measured {
                stats,
                failures: fails,
                extra,
            },
            (Some(stats), Err(e)) => {
                let mut extra = extra;
                extra.insert("aborted".into(), json!(e));
                Outcome::Measured {
                    stats,
                    failures: fails,
                    extra,
                }
            }
            (None, Err(e)) => Outcome::Failed(e.clone()),
            (None, Ok(_)) => Outcome::Failed("no measurement".into()),
        };
        res.systems.push((name.into(), o));
    }
    res.notes.push(format!(
        "between kills: HAM and Guardian alive, all entities running, stable for {} ms",
        PAIR_SETTLE_NS / 1_000_000
    ));
    Ok(res)
}

// ---------------------------------------------------------------------------------------------
// footprint, idle
// ---------------------------------------------------------------------------------------------

fn settle_s(kind: Kind) -> f64 {
    match kind {
        Kind::Ham | Kind::Bare => 1.0,
        _ => 1.5,
    }
}

pub fn footprint(
    ctx: &Ctx,
    stamps: &mut Stamps,
    p: &Params,
    problems: &mut Problems,
) -> Result<ScenarioResult> {
    let mut res = ScenarioResult {
        scenario: "footprint",
        unit: "KiB",
        title: "PSS of all supervisor processes with 100 services (median of its samples: 5, quick 2); \
                RSS/PSS from smaps_rollup at 1 and 100 services"
            .into(),
        systems: Vec::new(),
        ratios: true,
        ratio_pairs: Vec::new(),
        columns: vec![
            ("rss_kib_1", "RSS@1"),
            ("pss_kib_1", "PSS@1"),
            ("rss_kib_100", "RSS@100"),
            ("pss_kib_100", "PSS@100"),
            ("processes", "procs"),
        ],
        ratio_metrics: vec!["rss_kib_1", "pss_kib_1", "rss_kib_100", "pss_kib_100"],
        notes: Vec::new(),
    };
    for kind in ALL {
        let name = kind.name().to_owned();
        if let Err(why) = kind.available() {
            res.systems.push((name, Outcome::Skipped(why)));
            continue;
        }
        eprintln!("[footprint] {name}");
        let r = (|| -> Result<Outcome> {
            let mut extra = Map::new();
            let mut pss100 = Vec::new();
            for &n in p.footprint_sizes {
                let mut sup = start_up(ctx, stamps, kind, n, &format!("mem{n}"))?;
                sys::sleep_interruptible(settle_s(kind) * p.settle_scale)?;
                let mut rss = Vec::new();
                let mut pss = Vec::new();
                let mut procs = 0;
                for _ in 0..p.pss_samples {
                    let s = sys::sample(&sup.sup_pids());
                    rss.push(s.rss_kib as f64);
                    pss.push(s.pss_kib as f64);
                    procs = s.nproc;
                    std::thread::sleep(Duration::from_millis(200));
                }
                let (r, p) = (stats(&rss).expect("samples"), stats(&pss).expect("samples"));
                progress(format!(
                    "{n} services: RSS {:.0} KiB, PSS {:.0} KiB, {procs} processes",
                    r.median, p.median
                ));
                extra.insert(format!("rss_kib_{n}"), json!(r.median));
                extra.insert(format!("pss_kib_{n}"), json!(p.median));
                extra.insert(format!("processes_{n}"), json!(procs));
                if n == 100 {
                    extra.insert("processes".into(), json!(procs));
                    pss100 = pss;
                }
                finish(&mut sup, problems);
            }
            Ok(Outcome::Measured {
                stats: stats(&pss100).expect("samples"),
                failures: 0,
                extra,
            })
        })();
        sys::check_interrupted()?;
        res.systems.push((name, r.unwrap_or_else(Outcome::Failed)));
    }
    Ok(res)
}

/// Services the idle scenario stops (with each supervisor's own command) before it measures.
const IDLE_DOWN: usize = 10;

/// How long ham settles before an idle window: two of the bench's liveness timeouts (2 s)
/// and a second for the housekeeping tick's rounding to whole seconds.
const HAM_SETTLE_S: f64 = 5.0;

/// ham's idle instance also holds what an operator's box holds besides running services:
/// entities that exited for good (`restart = "never"`) and crash-loopers held off by their
/// policy (a busy loop once hid there). Not counted among the 100 services.
const IDLE_HAM_MORE: &str = "
[[entity]]
name = \"idle-exited-1\"
command = [\"/bin/true\"]
restart = \"never\"

[[entity]]
name = \"idle-exited-2\"
command = [\"/bin/false\"]
restart = \"never\"

[[entity]]
name = \"idle-held-1\"
command = [\"/bin/false\"]
policy = { kind = \"switch\", exits = 1, within = \"1m\", hold_off = \"10m\", holdoffs = 1000 }

[[entity]]
name = \"idle-held-2\"
command = [\"/bin/false\"]
policy = { kind = \"switch\", exits = 1, within = \"1m\", hold_off = \"10m\", holdoffs = 1000 }
";

/// One idle window: the supervisor's wake-ups and CPU over `p.idle_s`.
fn idle_window(
    sup: &Sup<'_>,
    name: &str,
    p: &Params,
    problems: &mut Problems,
) -> Result<Map<String, serde_json::Value>> {
    let hz = sys::clock_ticks_per_s();
    let pids = sup.sup_pids();
    let a = sys::sample(&pids);
    let t0 = mono_ns();
    sys::sleep_interruptible(p.idle_s)?;
    let b = sys::sample(&pids);
    let secs = ms(mono_ns() - t0) / 1000.0;
    let after = sup.sup_pids();
    if after != pids || b.nproc != a.nproc {
        problems.add(format!(
            "idle {name}: supervisor processes changed during the window ({pids:?} → {after:?})"
        ));
    }
    let wake = (b.voluntary + b.nonvoluntary) - (a.voluntary + a.nonvoluntary);
    let per30 = wake as f64 * 30.0 / secs;
    let cpu_ms = (b.ticks - a.ticks) as f64 * 1000.0 / hz as f64;
    let sched_ms = ms(b.sched_ns - a.sched_ns);
    progress(format!(
        "{name}: {wake} wake-ups in {secs:.1} s ({per30:.0}/30 s), CPU {cpu_ms:.0} ms (schedstat {sched_ms:.2} ms)"
    ));
    let mut extra = Map::new();
    extra.insert("per30".into(), json!(per30));
    extra.insert("seconds".into(), json!((secs * 100.0).round() / 100.0));
    extra.insert("wakeups".into(), json!(wake));
    extra.insert("voluntary".into(), json!(b.voluntary - a.voluntary));
    extra.insert(
        "nonvoluntary".into(),
        json!(b.nonvoluntary - a.nonvoluntary),
    );
    extra.insert("cpu_ms".into(), json!(cpu_ms));
    extra.insert(
        "cpu_ms_schedstat".into(),
        json!((sched_ms * 1000.0).round() / 1000.0),
    );
    extra.insert("processes".into(), json!(a.nproc));
    Ok(extra)
}

fn idle_outcome(mut extra: Map<String, serde_json::Value>) -> Outcome {
    let per30 = extra
        .remove("per30")
        .and_then(|v| v.as_f64())
        .unwrap_or(0.0);
    Outcome::Measured {
        stats: stats(&[per30]).expect("one value"),
        failures: 0,
        extra,
    }
}

pub fn idle(
    ctx: &Ctx,
    stamps: &mut Stamps,
    p: &Params,
    problems: &mut Problems,
) -> Result<ScenarioResult> {
    let mut res = ScenarioResult {
        scenario: "idle",
        unit: "wakeups/30s",
        title: format!(
            "100 services, 10 of them stopped, idle for {} s: context switches (voluntary + \
             involuntary) of all supervisor processes, scaled to 30 s; CPU = utime+stime. \
             ham-quiet: ham with no heartbeats, and 2 exited and 2 held-off entities besides; \
             ham: then each running service attached with a heartbeat (period {} s, missed-low \
             after {}, beaten by the bench)",
            p.idle_s,
            crate::sdk::IDLE_HB_PERIOD.as_secs(),
            crate::sdk::IDLE_HB_LOW
        ),
        systems: Vec::new(),
        ratios: true,
        ratio_pairs: Vec::new(),
        columns: vec![
            ("wakeups", "wakeups"),
            ("cpu_ms", "CPU ms"),
            ("cpu_ms_schedstat", "sched ms"),
            ("processes", "procs"),
        ],
        ratio_metrics: vec!["cpu_ms", "cpu_ms_schedstat"],
        notes: Vec::new(),
    };
    for kind in ALL {
        let name = kind.name().to_owned();
        if let Err(why) = kind.available() {
            if kind == Kind::Ham {
                res.systems
                    .push(("ham-quiet".into(), Outcome::Skipped(why.clone())));
            }
            res.systems.push((name, Outcome::Skipped(why)));
            continue;
        }
        eprintln!("[idle] {name}");
        let mut quiet = None;
        let r = (|| -> Result<Outcome> {
            stamps.reset(100);
            let t0 = mono_ns();
            let more = if kind == Kind::Ham { IDLE_HAM_MORE } else { "" };
            let mut sup = Sup::start_plus(ctx, kind, 100, "idle", more)?;
            stamps.wait_all(60)?;
            progress(format!(
                "{name} with 100 services up in {:.0} ms",
                ms(mono_ns() - t0)
            ));
            // An operator leaves some services down: a supervisor must not spend anything on
            // them either (ham once spun at 100 % with any entity down).
            let mut down = 0;
            for i in 100 - IDLE_DOWN..100 {
                if sup.stop_service(&service_id(i))? {
                    down += 1;
                }
            }
            if kind == Kind::Ham {
                // The held-off entities are held off before the window starts.
                let deadline = mono_ns() + 10_000_000_000;
                while !sup.ham_states_settled(&["idle-held-1", "idle-held-2"], "held-off") {
                    if mono_ns() > deadline {
                        return Err("the idle crash-loopers were not held off within 10 s".into());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                // What an operator's last command set going ends within two liveness
                // timeouts (2 s here): a housekeeping tick while its connection was open, the
                // Guardian's checks of that connection and of the HAM's deadlines. Idle is
                // measured after that.
                sys::sleep_interruptible((settle_s(kind).max(HAM_SETTLE_S)) * p.settle_scale)?;
                let mut extra = idle_window(&sup, "ham-quiet", p, problems)?;
                extra.insert("stopped_services".into(), json!(down));
                extra.insert("exited_entities".into(), json!(2));
                extra.insert("held_off_entities".into(), json!(2));
                quiet = Some(idle_outcome(extra));
            }
            // ham's services heartbeat, as the SDK lets them (the bench beats for them; its
            // own wake-ups are not counted).
            let beats = if kind == Kind::Ham {
                // The services still up (the stopped ones have no process to attach).
                let services: Vec<(String, i32)> = stamps
                    .slots
                    .iter()
                    .enumerate()
                    .take(100 - down)
                    .map(|(i, s)| (service_id(i), s.map_or(0, |s| s.pid)))
                    .collect();
                Some(crate::sdk::idle_heartbeats(&sup, &services)?)
            } else {
                None
            };
            let settle = settle_s(kind) * p.settle_scale;
            let settle = if kind == Kind::Ham {
                HAM_SETTLE_S * p.settle_scale
            } else {
                settle
            };
            sys::sleep_interruptible(settle)?;
            let mut extra = idle_window(&sup, &name, p, problems)?;
            let heartbeating = beats.is_some();
            drop(beats);
            finish(&mut sup, problems);
            if heartbeating {
                extra.insert("heartbeating_services".into(), json!(100 - down));
            }
            extra.insert("stopped_services".into(), json!(down));
            Ok(idle_outcome(extra))
        })();
        sys::check_interrupted()?;
        if kind == Kind::Ham {
            let q = match (&r, quiet) {
                (_, Some(q)) => q,
                (Err(e), None) => Outcome::Failed(e.clone()),
                (Ok(_), None) => Outcome::Failed("no quiet window".into()),
            };
            res.systems.push(("ham-quiet".into(), q));
        }
        res.systems.push((name, r.unwrap_or_else(Outcome::Failed)));
    }
    res.notes.push(format!(
        "median = wake-ups per 30 s (one window of {} s); CPU ms = utime+stime over the window \
         ({} ms ticks); sched ms = /proc/PID/schedstat on-CPU time",
        p.idle_s,
        1000 / sys::clock_ticks_per_s()
    ));
    res.notes.push(format!(
        "{IDLE_DOWN} of the 100 services are stopped first with the supervisor's own command \
         (hamctl stop, s6-svc -d, sv down) and stay down during the window; the bare loop and \
         supervisord (no RPC socket configured) keep all 100 up (stopped_services says how many)"
    ));
    res.notes.push(format!(
        "ham: every running service attached (attach_pid) with a {} s heartbeat, missed-low after {}; \
         the bench beats service i once a period at i/100 of it, as independent processes \
         would; ham checks every client at multiples of the period, so they share its \
         wake-ups; peers: no heartbeats",
        crate::sdk::IDLE_HB_PERIOD.as_secs(),
        crate::sdk::IDLE_HB_LOW,
    ));
    Ok(res)
}

// ---------------------------------------------------------------------------------------------
// storm_service: the control socket and a healthy service while others crash-loop
// ---------------------------------------------------------------------------------------------

/// Entities crash-looping under `immediate` in the storm_service scenario.
const STORM_LOOPERS: usize = 100;

/// One `ping` over ham's control socket, connect to answer, in ms.
fn ping_once(socket: &std::path::Path) -> Result<f64> {
    use std::io::{BufRead, Write};
    let t0 = mono_ns();
    let s = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("connect {}: {e}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_vec(&ham_core::protocol::Request::Ping).expect("serialises");
    line.push(b'\n');
    (&s).write_all(&line).map_err(|e| format!("ping: {e}"))?;
    let mut answer = String::new();
    std::io::BufReader::new(&s)
        .read_line(&mut answer)
        .map_err(|e| format!("ping: {e}"))?;
    if !answer.contains("pong") {
        return Err(format!("ping answered {answer:?}"));
    }
    Ok(ms(mono_ns() - t0))
}

/// Pings of ham's control socket and SIGKILLs of one healthy service, first with ham
/// otherwise idle, then while `STORM_LOOPERS` other entities crash-loop under `immediate`:
/// the targets are ping p99 ≤ 50 ms and a healthy restart ≤ 2× its idle figure.
pub fn storm_service(
    ctx: &Ctx,
    stamps: &mut Stamps,
    p: &Params,
    problems: &mut Problems,
) -> Result<Vec<ScenarioResult>> {
    let (pings, kills) = if p.idle_s < 10.0 { (50, 3) } else { (1000, 30) };
    let result = |scenario, title: String| ScenarioResult {
        scenario,
        unit: "ms",
        title,
        systems: Vec::new(),
        ratios: false,
        ratio_pairs: vec![("ham-storm", "ham-idle")],
        columns: Vec::new(),
        ratio_metrics: Vec::new(),
        notes: Vec::new(),
    };
    let mut ping = result(
        "storm_ping",
        format!(
            "`ping` over ham's control socket (connect → answer), {pings} in a row: ham idle, \
             and while {STORM_LOOPERS} entities crash-loop under `immediate`"
        ),
    );
    let mut restart = result(
        "storm_restart",
        format!(
            "SIGKILL of a healthy service → its replacement's first instruction, {kills} kills: \
             ham idle, and while {STORM_LOOPERS} entities crash-loop under `immediate`"
        ),
    );
    for (row, loopers) in [("ham-idle", 0), ("ham-storm", STORM_LOOPERS)] {
        eprintln!("[storm_service] {row}");
        let r = (|| -> Result<(Outcome, Outcome)> {
            let child = ctx.child.to_string_lossy().into_owned();
            let fifo = ctx.fifo.to_string_lossy().into_owned();
            let mut entities = format!(
                "[[entity]]\nname = \"{}\"\ncommand = [{:?}, {:?}, {:?}]\nstop_timeout = \"1s\"\n\
                 policy = {{ kind = \"immediate\" }}\n",
                service_id(0),
                child,
                service_id(0),
                fifo
            );
            for k in 0..loopers {
                entities += &format!(
                    "[[entity]]\nname = \"loop{k}\"\ncommand = [\"/bin/false\"]\n\
                     policy = {{ kind = \"immediate\" }}\n"
                );
            }
            stamps.reset(1);
            let mut sup = Sup::start_ham(ctx, &format!("storm{loopers}"), "", &entities)?;
            stamps.wait_all(60)?;
            // Let the storm get going.
            sys::sleep_interruptible(0.5 * p.settle_scale.max(1.0))?;
            let socket = sup
                .ham
                .as_ref()
                .map(|h| h.run_dir.join(format!("{}.sock", h.name)))
                .ok_or("no ham instance")?;
            let mut lat = Vec::new();
            let mut failed = 0;
            for _ in 0..pings {
                match ping_once(&socket) {
                    Ok(v) => lat.push(v),
                    Err(_) => failed += 1,
                }
            }
            let mut run = RestartRun {
                lat: Vec::new(),
                lat_fail: 0,
                storm: Vec::new(),
                storm_fail: 0,
            };
            latency_loop(ctx, stamps, kills, &mut run, row)?;
            let failures = sup
                .ham
                .as_ref()
                .map_or(0, |h| h.seg.header().snapshot().ham_failures);
            if failures > 0 {
                problems.add(format!("{row}: the HAM was replaced {failures} time(s)"));
            }
            finish(&mut sup, problems);
            let measured = |v: &[f64], fails: usize| match stats(v) {
                Some(stats) => Outcome::Measured {
                    stats,
                    failures: fails,
                    extra: Map::new(),
                },
                None => Outcome::Failed("no sample".into()),
            };
            Ok((measured(&lat, failed), measured(&run.lat, run.lat_fail)))
        })();
        sys::check_interrupted()?;
        match r {
            Ok((a, b)) => {
                ping.systems.push((row.into(), a));
                restart.systems.push((row.into(), b));
            }
            Err(e) => {
                ping.systems.push((row.into(), Outcome::Failed(e.clone())));
                restart.systems.push((row.into(), Outcome::Failed(e)));
            }
        }
    }
    ping.notes
        .push("targets (issue 11): p99 ≤ 50 ms during the storm".into());
    restart
        .notes
        .push("target (issue 11): ham-storm / ham-idle ≤ 2 (median)".into());
    Ok(vec![ping, restart])
}
