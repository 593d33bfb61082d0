//! `ham-bench --compare OLD.json NEW.json [--noise A.json B.json]`: the judge of
//! regressions.
//!
//! For every figure both files hold (each system's median and p99, and each in-run ratio)
//! it prints new ÷ old. A figure is flagged `WORSE` when it moved the wrong way by more
//! than the noise: the same figure's spread between two runs of one build (`--noise`,
//! two JSON files of the same binary), and never less than [`MIN_NOISE`]. Whether higher
//! is better comes from the unit (`events/s`); everything else is a time, a size or a
//! count, where lower is better. Ratios within one run are the fair comparison across
//! runs (absolute figures move with the machine's load); both are shown.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::sys::Result;

/// The smallest relative change that can count as a regression (10 %): two runs of one
/// build on this shared VM differ by that much on their quietest figures.
pub const MIN_NOISE: f64 = 0.10;

/// One comparable figure: its value and whether higher is better.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figure {
    pub value: f64,
    pub higher_is_better: bool,
}

/// Every figure of a JSON report, keyed `scenario · system · stat` or `scenario · ratio`.
pub fn figures(report: &Value) -> BTreeMap<String, Figure> {
    let mut out = BTreeMap::new();
    let Some(list) = report.as_array() else {
        return out;
    };
    for sc in list {
        let Some(name) = sc.get("scenario").and_then(Value::as_str) else {
            continue;
        };
        let unit = sc.get("unit").and_then(Value::as_str).unwrap_or("");
        let higher = unit.contains("/s");
        if let Some(systems) = sc.get("systems").and_then(Value::as_object) {
            for (sys, v) in systems {
                for stat in ["median", "p99"] {
                    if let Some(x) = v.get(stat).and_then(Value::as_f64) {
                        out.insert(
                            format!("{name} · {sys} · {stat}"),
                            Figure {
                                value: x,
                                higher_is_better: higher,
                            },
                        );
                    }
                }
            }
        }
        if let Some(ratios) = sc.get("ratios").and_then(Value::as_object) {
            for (pair, v) in ratios {
                if let Some(x) = v.as_f64() {
                    out.insert(
                        format!("{name} · {pair}"),
                        Figure {
                            value: x,
                            higher_is_better: higher,
                        },
                    );
                }
            }
        }
    }
    out
}

/// How one figure moved.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub key: String,
    pub old: f64,
    pub new: f64,
    /// new ÷ old.
    pub ratio: f64,
    /// The relative change that counts as noise for this figure.
    pub noise: f64,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Better,
    Same,
    Worse,
}

/// Compares `old` with `new`; `noise` holds each figure's relative spread between two runs
/// of one build (figures it lacks get [`MIN_NOISE`]).
pub fn compare(
    old: &BTreeMap<String, Figure>,
    new: &BTreeMap<String, Figure>,
    noise: &BTreeMap<String, f64>,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for (key, o) in old {
        let Some(n) = new.get(key) else { continue };
        if o.value <= 0.0 || n.value < 0.0 {
            continue; // a zero (idle wake-ups, say) has no ratio; shown by the tables
        }
        let ratio = n.value / o.value;
        let tol = noise.get(key).copied().unwrap_or(0.0).max(MIN_NOISE);
        // Worse: a lower-is-better figure grew past the noise, or a higher-is-better one
        // fell past it.
        let (worse, better) = if o.higher_is_better {
            (ratio < 1.0 / (1.0 + tol), ratio > 1.0 + tol)
        } else {
            (ratio > 1.0 + tol, ratio < 1.0 / (1.0 + tol))
        };
        let verdict = if worse {
            Verdict::Worse
        } else if better {
            Verdict::Better
        } else {
            Verdict::Same
        };
        rows.push(Row {
            key: key.clone(),
            old: o.value,
            new: n.value,
            ratio,
            noise: tol,
            verdict,
        });
    }
    rows
}

/// Each figure's relative spread between two runs of one build: |b − a| ÷ min(a, b).
pub fn noise(a: &BTreeMap<String, Figure>, b: &BTreeMap<String, Figure>) -> BTreeMap<String, f64> {
    a.iter()
        .filter_map(|(k, x)| {
            let y = b.get(k)?;
            let lo = x.value.min(y.value);
            (lo > 0.0).then(|| (k.clone(), (y.value - x.value).abs() / lo))
        })
        .collect()
}

fn load(path: &Path) -> Result<BTreeMap<String, Figure>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    let f = figures(&v);
    if f.is_empty() {
        return Err(format!(
            "{}: no figures (not a ham-bench --json report)",
            path.display()
        ));
    }
    Ok(f)
}

/// Runs `--compare`; `Ok(false)` when any figure got worse past its noise.
pub fn run(old: &Path, new: &Path, noise_pair: Option<(&Path, &Path)>) -> Result<bool> {
    let (o, n) = (load(old)?, load(new)?);
    let tol = match noise_pair {
        Some((a, b)) => noise(&load(a)?, &load(b)?),
        None => BTreeMap::new(),
    };
    let rows = compare(&o, &n, &tol);
    println!(
        "{:<58} {:>12} {:>12} {:>8} {:>7}  verdict",
        "figure", "old", "new", "new/old", "noise"
    );
    for r in &rows {
        println!(
            "{:<58} {:>12.4} {:>12.4} {:>7.3}× {:>6.0}%  {}",
            r.key,
            r.old,
            r.new,
            r.ratio,
            r.noise * 100.0,
            match r.verdict {
                Verdict::Better => "better",
                Verdict::Same => "same",
                Verdict::Worse => "WORSE",
            }
        );
    }
    let worse: Vec<&Row> = rows
        .iter()
        .filter(|r| r.verdict == Verdict::Worse)
        .collect();
    let only_old = o.keys().filter(|k| !n.contains_key(*k)).count();
    let only_new = n.keys().filter(|k| !o.contains_key(*k)).count();
    println!(
        "\n{} figures compared ({} better, {} worse, {} within noise); {only_old} only in OLD, {only_new} only in NEW; noise {}",
        rows.len(),
        rows.iter().filter(|r| r.verdict == Verdict::Better).count(),
        worse.len(),
        rows.iter().filter(|r| r.verdict == Verdict::Same).count(),
        if noise_pair.is_some() {
            "from --noise (at least 10 %)"
        } else {
            "10 % (no --noise pair given)"
        }
    );
    Ok(worse.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(ham: f64, bare: f64, rate: f64) -> Value {
        json!([
            {"scenario": "restart_latency", "unit": "ms",
             "systems": {"ham": {"median": ham, "p99": ham * 2.0}, "bare": {"median": bare, "p99": bare * 2.0}, "s6": "skipped"},
             "ratios": {"ham/bare": ham / bare, "ham/s6": null}},
            {"scenario": "ring_throughput", "unit": "events/s",
             "systems": {"ham-1p": {"median": rate, "p99": rate}}, "ratios": {}}
        ])
    }

    #[test]
    fn figures_are_medians_p99s_and_ratios_and_skip_what_was_not_measured() {
        let f = figures(&report(2.0, 1.0, 1e6));
        assert_eq!(f["restart_latency · ham · median"].value, 2.0);
        assert_eq!(f["restart_latency · bare · p99"].value, 2.0);
        assert_eq!(f["restart_latency · ham/bare"].value, 2.0);
        assert!(!f.contains_key("restart_latency · ham/s6"));
        assert!(!f.keys().any(|k| k.contains("s6 ·")));
        assert!(f["ring_throughput · ham-1p · median"].higher_is_better);
        assert!(!f["restart_latency · ham · median"].higher_is_better);
    }

    #[test]
    fn a_slower_restart_and_a_lower_rate_are_worse_and_noise_absorbs_small_moves() {
        let old = figures(&report(2.0, 1.0, 1e6));
        let new = figures(&report(3.0, 1.0, 0.5e6));
        let rows = compare(&old, &new, &BTreeMap::new());
        let v = |k: &str| rows.iter().find(|r| r.key == k).unwrap().verdict;
        assert_eq!(v("restart_latency · ham · median"), Verdict::Worse);
        assert_eq!(v("restart_latency · bare · median"), Verdict::Same);
        assert_eq!(v("ring_throughput · ham-1p · median"), Verdict::Worse);
        // Within the noise measured between two runs of one build, a 50 % move is not a
        // regression.
        let mut tol = BTreeMap::new();
        tol.insert("restart_latency · ham · median".to_owned(), 0.6);
        let rows = compare(&old, &new, &tol);
        let v = |k: &str| rows.iter().find(|r| r.key == k).unwrap().verdict;
        assert_eq!(v("restart_latency · ham · median"), Verdict::Same);
        // Faster is better.
        let rows = compare(&new, &old, &BTreeMap::new());
        let v = |k: &str| rows.iter().find(|r| r.key == k).unwrap().verdict;
        assert_eq!(v("restart_latency · ham · median"), Verdict::Better);
        assert_eq!(v("ring_throughput · ham-1p · median"), Verdict::Better);
    }

    #[test]
    fn noise_is_the_relative_spread_of_two_runs() {
        let a = figures(&report(2.0, 1.0, 1e6));
        let b = figures(&report(2.5, 1.0, 1e6));
        let n = noise(&a, &b);
        assert!((n["restart_latency · ham · median"] - 0.25).abs() < 1e-9);
        assert_eq!(n["restart_latency · bare · median"], 0.0);
    }
}
