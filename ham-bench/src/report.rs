//! Statistics, the human tables and the JSON objects.

use serde_json::{Map, Value, json};

#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub n: usize,
    pub min: f64,
    pub median: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Nearest-rank percentile (as the peers' report uses).
fn pct(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len() as f64;
    let k = ((p / 100.0 * n + 0.5).round() as isize - 1).clamp(0, sorted.len() as isize - 1);
    sorted[k as usize]
}

pub fn stats(v: &[f64]) -> Option<Stats> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some(Stats {
        n,
        min: s[0],
        median,
        p90: pct(&s, 90.0),
        p99: pct(&s, 99.0),
        max: s[n - 1],
        mean: s.iter().sum::<f64>() / n as f64,
    })
}

/// What one system gave in one scenario.
pub enum Outcome {
    Measured {
        stats: Stats,
        failures: usize,
        /// Scenario-specific figures (memory at 1 and 100 services, CPU, ...).
        extra: Map<String, Value>,
    },
    Skipped(String),
    Failed(String),
}

pub struct ScenarioResult {
    pub scenario: &'static str,
    pub unit: &'static str,
    pub title: String,
    pub systems: Vec<(String, Outcome)>,
    /// Whether `ham/<system>` ratios make sense here.
    pub ratios: bool,
    /// Ratios between named systems (`a/b`), reported instead of the `ham/<system>` ones
    /// when given (e.g. `ham-2p/ham-1p`).
    pub ratio_pairs: Vec<(&'static str, &'static str)>,
    /// Extra columns for the table: (key in `extra`, header).
    pub columns: Vec<(&'static str, &'static str)>,
    /// Further metrics whose ham/x ratios are reported too (keys in `extra`).
    pub ratio_metrics: Vec<&'static str>,
    pub notes: Vec<String>,
}

fn round(x: f64) -> Value {
    json!((x * 10_000.0).round() / 10_000.0)
}

impl ScenarioResult {
    fn median_of(&self, name: &str) -> Option<f64> {
        self.systems.iter().find_map(|(n, o)| match o {
            Outcome::Measured { stats, .. } if n == name => Some(stats.median),
            _ => None,
        })
    }

    fn extra_of(&self, name: &str, key: &str) -> Option<f64> {
        self.systems.iter().find_map(|(n, o)| match o {
            Outcome::Measured { extra, .. } if n == name => extra.get(key)?.as_f64(),
            _ => None,
        })
    }

    /// `ham/<x>` for every other measured system (or the `ratio_pairs`); `None` where x is 0.
    fn ratios_for(&self, get: impl Fn(&str) -> Option<f64>) -> Vec<(String, Option<f64>)> {
        if !self.ratio_pairs.is_empty() {
            return self
                .ratio_pairs
                .iter()
                .filter_map(|(a, b)| {
                    let (x, y) = (get(a)?, get(b)?);
                    Some((format!("{a}/{b}"), (y != 0.0).then(|| x / y)))
                })
                .collect();
        }
        if !self.ratios {
            return Vec::new();
        }
        let Some(h) = get("ham") else {
            return Vec::new();
        };
        self.systems
            .iter()
            .filter(|(n, _)| n != "ham")
            .filter_map(|(n, _)| {
                let x = get(n)?;
                Some((format!("ham/{n}"), (x != 0.0).then(|| h / x)))
            })
            .collect()
    }

    pub fn to_json(&self, mode: &str, services: usize) -> Value {
        let mut systems = Map::new();
        for (name, o) in &self.systems {
            let v = match o {
                Outcome::Measured {
                    stats,
                    failures,
                    extra,
                } => {
                    let mut m = Map::new();
                    m.insert("n".into(), json!(stats.n));
                    m.insert("median".into(), round(stats.median));
                    m.insert("p90".into(), round(stats.p90));
                    m.insert("p99".into(), round(stats.p99));
                    m.insert("max".into(), round(stats.max));
                    m.insert("min".into(), round(stats.min));
                    m.insert("mean".into(), round(stats.mean));
                    m.insert("failures".into(), json!(failures));
                    for (k, v) in extra {
                        m.insert(k.clone(), v.clone());
                    }
                    Value::Object(m)
                }
                Outcome::Skipped(_) => json!("skipped"),
                Outcome::Failed(e) => json!({ "error": e }),
            };
            systems.insert(name.clone(), v);
        }
        let skipped: Map<String, Value> = self
            .systems
            .iter()
            .filter_map(|(n, o)| match o {
                Outcome::Skipped(why) => Some((n.clone(), json!(why))),
                _ => None,
            })
            .collect();
        let to_map = |r: Vec<(String, Option<f64>)>| -> Value {
            Value::Object(
                r.into_iter()
                    .map(|(k, v)| (k, v.map_or(Value::Null, round)))
                    .collect(),
            )
        };
        let mut obj = Map::new();
        obj.insert("scenario".into(), json!(self.scenario));
        obj.insert("unit".into(), json!(self.unit));
        obj.insert("description".into(), json!(self.title));
        obj.insert("mode".into(), json!(mode));
        obj.insert("services".into(), json!(services));
        obj.insert("systems".into(), Value::Object(systems));
        obj.insert(
            "ratios".into(),
            to_map(self.ratios_for(|n| self.median_of(n))),
        );
        if !self.ratio_metrics.is_empty() {
            let by: Map<String, Value> = self
                .ratio_metrics
                .iter()
                .map(|k| {
                    (
                        (*k).to_owned(),
                        to_map(self.ratios_for(|n| self.extra_of(n, k))),
                    )
                })
                .collect();
            obj.insert("ratios_by_metric".into(), Value::Object(by));
        }
        if !skipped.is_empty() {
            obj.insert("skipped_because".into(), Value::Object(skipped));
        }
        if !self.notes.is_empty() {
            obj.insert("notes".into(), json!(self.notes));
        }
        Value::Object(obj)
    }

    pub fn to_table(&self) -> String {
        let mut out = format!("== {} — {} [{}]\n", self.scenario, self.title, self.unit);
        let mut header = vec![
            "system".to_owned(),
            "n".into(),
            "median".into(),
            "p90".into(),
            "p99".into(),
            "max".into(),
            "fails".into(),
        ];
        header.extend(self.columns.iter().map(|(_, h)| (*h).to_owned()));
        let ratios: Vec<(String, Option<f64>)> = self.ratios_for(|n| self.median_of(n));
        let ratio_column = self.ratios || !self.ratio_pairs.is_empty();
        if !self.ratio_pairs.is_empty() {
            header.push("ratio".into());
        } else if self.ratios {
            header.push("ham/x".into());
        }
        let mut rows: Vec<Vec<String>> = Vec::new();
        for (name, o) in &self.systems {
            match o {
                Outcome::Measured {
                    stats,
                    failures,
                    extra,
                } => {
                    let mut r = vec![
                        name.clone(),
                        stats.n.to_string(),
                        fmt(stats.median),
                        fmt(stats.p90),
                        fmt(stats.p99),
                        fmt(stats.max),
                        failures.to_string(),
                    ];
                    for (k, _) in &self.columns {
                        r.push(
                            extra
                                .get(*k)
                                .and_then(Value::as_f64)
                                .map_or("-".into(), fmt),
                        );
                    }
                    if ratio_column {
                        // The ratio this row is the numerator of (`ham/<row>` for the
                        // default ham/x column).
                        let found = if self.ratio_pairs.is_empty() {
                            let key = format!("ham/{name}");
                            ratios.iter().find(|(k, _)| *k == key)
                        } else {
                            let prefix = format!("{name}/");
                            ratios.iter().find(|(k, _)| k.starts_with(&prefix))
                        };
                        r.push(match found {
                            Some((k, Some(x))) if !self.ratio_pairs.is_empty() => {
                                format!("{}× {}", fmt_ratio(*x), &k[name.len() + 1..])
                            }
                            Some((_, Some(x))) => format!("{}×", fmt_ratio(*x)),
                            Some((_, None)) => "∞".into(),
                            None => "".into(),
                        });
                    }
                    rows.push(r);
                }
                Outcome::Skipped(why) => rows.push(vec![name.clone(), format!("skipped ({why})")]),
                Outcome::Failed(e) => rows.push(vec![name.clone(), format!("FAILED: {e}")]),
            }
        }
        let cols = header.len();
        let mut width = vec![0usize; cols];
        for r in std::iter::once(&header).chain(rows.iter().filter(|r| r.len() == cols)) {
            for (i, c) in r.iter().enumerate() {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let line = |r: &[String]| -> String {
            let mut s = String::new();
            for (i, c) in r.iter().enumerate() {
                let pad = width[i].saturating_sub(c.chars().count());
                if i == 0 {
                    s.push_str(c);
                    s.push_str(&" ".repeat(pad));
                } else {
                    s.push_str("  ");
                    s.push_str(&" ".repeat(pad));
                    s.push_str(c);
                }
            }
            s.trim_end().to_owned()
        };
        out.push_str(&line(&header));
        out.push('\n');
        for r in &rows {
            if r.len() == cols {
                out.push_str(&line(r));
            } else {
                out.push_str(&format!("{:w$}  {}", r[0], r[1], w = width[0]));
            }
            out.push('\n');
        }
        for n in &self.notes {
            out.push_str(&format!("  note: {n}\n"));
        }
        out
    }
}

/// Two decimals, or three significant digits below 0.1 (0.0079×, not 0.01×).
fn fmt_ratio(x: f64) -> String {
    if x != 0.0 && x.abs() < 0.1 {
        let digits = (2 - x.abs().log10().floor() as i32).clamp(2, 9) as usize;
        format!("{x:.digits$}")
    } else {
        format!("{x:.2}")
    }
}

fn fmt(x: f64) -> String {
    if x.fract() == 0.0 || x.abs() >= 1000.0 {
        format!("{x:.0}")
    } else if x.abs() >= 100.0 {
        format!("{x:.1}")
    } else if x.abs() >= 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}
