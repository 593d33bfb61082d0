//! `scale`: ham with 10, 100, 1,000 and 10,000 entities (quick: 10 and 100). For each size,
//! one instance of the static service:
//!
//! * **start-up**: from spawning `ham` until every entity's service has stamped;
//! * **restart**: SIGKILL of one entity → its replacement's stamp, 30 kills spread over the
//!   entities (as `restart_latency`, without the peers' 1 s spacing: ham restarts at once);
//! * **status**: `hamctl status` run to completion, 10 times (its output is one line per
//!   entity: what an operator waits for);
//! * **PSS** of HAM + Guardian, and its growth per entity over the smallest size;
//! * **storm**: 10 % of the entities SIGKILLed at once → the last replacement stamped, 3
//!   repetitions.
//!
//! Cost per entity must stay flat: the curves (`--plot DIR`) should be straight lines on
//! the log-log plots with slope 1 for totals (start-up, storm, PSS) and 0 for per-event
//! figures (restart, per-entity PSS).

use std::time::Duration;

use serde_json::{Map, json};

use crate::report::{Outcome, ScenarioResult, stats};
use crate::scenarios::{Params, Problems, finish, progress};
use crate::stamps::Stamps;
use crate::sys::{self, Result, mono_ns, ms};
use crate::systems::{Ctx, Kind, Sup};

/// Kills per size for the restart median.
const KILLS: usize = 30;
/// `hamctl status` runs per size.
const STATUS_RUNS: usize = 10;
/// Storm repetitions per size.
const STORM_REPS: usize = 3;

/// What one size gave.
pub struct Point {
    pub n: usize,
    pub startup_ms: f64,
    pub restart_ms: f64,
    pub status_ms: f64,
    pub pss_kib: f64,
    pub storm_ms: f64,
}

pub fn scale(
    ctx: &Ctx,
    stamps: &mut Stamps,
    p: &Params,
    problems: &mut Problems,
) -> Result<(ScenarioResult, Vec<Point>)> {
    let mut res = ScenarioResult {
        scenario: "scale",
        unit: "ms",
        title: format!(
            "ham with {:?} entities: restart median (the stats; {KILLS} kills), start-up to all \
             running, `hamctl status` median ({STATUS_RUNS} runs), PSS of HAM + Guardian and \
             per entity past the smallest size, storm of 10 % killed → all back (median of \
             {STORM_REPS})",
            p.scale_sizes
        ),
        systems: Vec::new(),
        ratios: false,
        ratio_pairs: Vec::new(),
        columns: vec![
            ("startup_ms", "start ms"),
            ("status_ms", "status ms"),
            ("pss_kib", "PSS KiB"),
            ("pss_kib_per_entity", "KiB/ent"),
            ("storm_ms", "storm ms"),
        ],
        ratio_metrics: Vec::new(),
        notes: vec![
            "restart median should stay flat, start-up, status and storm grow linearly \
             (per-entity cost flat); see --plot"
                .into(),
        ],
    };
    let mut points: Vec<Point> = Vec::new();
    for &n in p.scale_sizes {
        eprintln!("[scale] ham with {n} entities");
        let r = one_size(ctx, stamps, n, problems);
        sys::check_interrupted()?;
        let name = format!("ham-{n}");
        match r {
            Ok((point, lat)) => {
                let mut extra = Map::new();
                extra.insert("entities".into(), json!(n));
                extra.insert("startup_ms".into(), json!(round(point.startup_ms)));
                extra.insert("status_ms".into(), json!(round(point.status_ms)));
                extra.insert("pss_kib".into(), json!(round(point.pss_kib)));
                extra.insert("storm_ms".into(), json!(round(point.storm_ms)));
                if let Some(first) = points.first().filter(|f| f.n < n) {
                    let per = (point.pss_kib - first.pss_kib) / (n - first.n) as f64;
                    extra.insert("pss_kib_per_entity".into(), json!(round(per)));
                }
                res.systems.push((
                    name,
                    Outcome::Measured {
                        stats: stats(&lat).expect("measured"),
                        failures: 0,
                        extra,
                    },
                ));
                points.push(point);
            }
            Err(e) => {
                problems.add(format!("scale with {n} entities: {e}"));
                res.systems.push((name, Outcome::Failed(e)));
            }
        }
    }
    Ok((res, points))
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn one_size(
    ctx: &Ctx,
    stamps: &mut Stamps,
    n: usize,
    problems: &mut Problems,
) -> Result<(Point, Vec<f64>)> {
    stamps.reset(n);
    let t0 = mono_ns();
    let mut sup = Sup::start(ctx, Kind::Ham, n, &format!("scale{n}"))?;
    let r = (|| -> Result<(Point, Vec<f64>)> {
        // 50 ms per entity, at least 60 s (10,000 took 12 s at worst).
        stamps.wait_all((n as u64 / 20).max(60))?;
        let startup_ms = ms(mono_ns() - t0);
        progress(format!("{n} entities up in {startup_ms:.0} ms"));
        // The footprint at rest: once every service runs, the HAM may still be handing
        // thousands of pidfds to the Guardian, whose heap is larger meanwhile (at 10,000
        // entities the Guardian was seen at 74 MiB of PSS while it caught up, 20 MiB
        // after). Sampled every 500 ms until the pair used no CPU between two samples and
        // their PSS agrees within 1 % (at most 20 s).
        let mut sample = sys::sample(&sup.sup_pids());
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(500));
            let next = sys::sample(&sup.sup_pids());
            let settled = next.ticks == sample.ticks
                && next.pss_kib.abs_diff(sample.pss_kib) * 100 <= sample.pss_kib;
            sample = next;
            if settled {
                break;
            }
        }
        let pss_kib = sample.pss_kib as f64;

        let mut status = Vec::new();
        for _ in 0..STATUS_RUNS {
            let t = mono_ns();
            sup.hamctl_quiet(&["status"])?;
            status.push(ms(mono_ns() - t));
        }
        let status_ms = stats(&status).expect("runs").median;

        let lat = restarts(ctx, stamps, n)?;
        let restart_ms = stats(&lat).expect("kills").median;
        let storm_ms = storms(ctx, stamps, n)?;
        progress(format!(
            "restart median {restart_ms:.3} ms, status {status_ms:.1} ms, PSS {pss_kib:.0} KiB, \
             storm of {} {storm_ms:.1} ms",
            (n / 10).max(1)
        ));
        Ok((
            Point {
                n,
                startup_ms,
                restart_ms,
                status_ms,
                pss_kib,
                storm_ms,
            },
            lat,
        ))
    })();
    finish(&mut sup, problems);
    r
}

/// SIGKILLs `KILLS` entities spread over the list, one at a time.
fn restarts(ctx: &Ctx, stamps: &mut Stamps, n: usize) -> Result<Vec<f64>> {
    let mut lat = Vec::new();
    let stride = (n / KILLS).max(1);
    for k in 0..KILLS {
        let idx = (k * stride + k / n.max(1)) % n;
        std::thread::sleep(Duration::from_millis(10));
        sys::check_interrupted()?;
        stamps.drain();
        let old = stamps.slots[idx].ok_or("a service never reported")?;
        if !ctx.is_our_service(old.pid) {
            return Err(format!("pid {} is not a service of this run", old.pid));
        }
        let t0 = mono_ns();
        sys::kill(old.pid, libc::SIGKILL);
        let back = stamps.wait_for(t0 + 10_000_000_000, |s| {
            s[idx].is_some_and(|x| x.pid != old.pid)
        })?;
        match stamps.slots[idx] {
            Some(new) if back => lat.push(ms(new.ns.saturating_sub(t0))),
            _ => return Err(format!("entity {idx} not back within 10 s")),
        }
    }
    Ok(lat)
}

/// 10 % of the entities (at least one) SIGKILLed at once; median time until all are back.
fn storms(ctx: &Ctx, stamps: &mut Stamps, n: usize) -> Result<f64> {
    let k = (n / 10).max(1);
    let mut times = Vec::new();
    for rep in 0..STORM_REPS {
        std::thread::sleep(Duration::from_millis(200));
        sys::check_interrupted()?;
        stamps.drain();
        // A different tenth each time, spread over the list.
        let victims: Vec<usize> = (0..k).map(|j| (j * 10 + rep * 3) % n).collect();
        let old: Vec<i32> = victims
            .iter()
            .map(|&i| stamps.slots[i].map_or(0, |s| s.pid))
            .collect();
        if let Some(p) = old.iter().find(|&&p| !ctx.is_our_service(p)) {
            return Err(format!("pid {p} is not a service of this run"));
        }
        let t0 = mono_ns();
        for &p in &old {
            sys::kill(p, libc::SIGKILL);
        }
        let back = stamps.wait_for(t0 + 120_000_000_000, |s| {
            victims
                .iter()
                .zip(&old)
                .all(|(&i, &o)| s[i].is_some_and(|x| x.pid != o))
        })?;
        if !back {
            return Err(format!("storm of {k}: not all back within 120 s"));
        }
        let last = victims
            .iter()
            .filter_map(|&i| stamps.slots[i].map(|s| s.ns))
            .max()
            .unwrap_or(t0);
        times.push(ms(last.saturating_sub(t0)));
    }
    Ok(stats(&times).expect("reps").median)
}
