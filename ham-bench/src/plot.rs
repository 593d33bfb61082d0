//! `--plot DIR`: the `scale` curves as SVG files, one per figure, log-log (entities on x).
//!
//! Written by hand (a polyline and two log axes): a plotting crate would add more code to
//! the build than this file has.

use std::fmt::Write as _;
use std::path::Path;

use crate::scale::Point;
use crate::sys::Result;

const W: f64 = 640.0;
const H: f64 = 400.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

/// One chart: a title, a y-axis label and (entities, value) points.
pub struct Chart<'a> {
    pub file: &'a str,
    pub title: &'a str,
    pub y_label: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// The decades `10^a ..= 10^b` that cover `lo..=hi` (both > 0).
fn decades(lo: f64, hi: f64) -> (i32, i32) {
    let a = lo.log10().floor() as i32;
    let mut b = hi.log10().ceil() as i32;
    if b <= a {
        b = a + 1;
    }
    (a, b)
}

fn label(exp: i32) -> String {
    let v = 10f64.powi(exp);
    if exp >= 0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// The SVG text of a log-log chart.
pub fn svg(c: &Chart<'_>) -> String {
    let pts: Vec<(f64, f64)> = c
        .points
        .iter()
        .copied()
        .filter(|&(x, y)| x > 0.0 && y > 0.0)
        .collect();
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        esc(c.title)
    );
    if pts.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">no data</text></svg>"#,
            W / 2.0,
            H / 2.0
        );
        return s;
    }
    let (x0, x1) = decades(
        pts.iter().map(|p| p.0).fold(f64::MAX, f64::min),
        pts.iter().map(|p| p.0).fold(0.0, f64::max),
    );
    let (y0, y1) = decades(
        pts.iter().map(|p| p.1).fold(f64::MAX, f64::min),
        pts.iter().map(|p| p.1).fold(0.0, f64::max),
    );
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let px = |x: f64| LEFT + (x.log10() - f64::from(x0)) / f64::from(x1 - x0) * pw;
    let py = |y: f64| TOP + ph - (y.log10() - f64::from(y0)) / f64::from(y1 - y0) * ph;
    for e in x0..=x1 {
        let x = px(10f64.powi(e));
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + ph,
            TOP + ph + 18.0,
            label(e)
        );
    }
    for e in y0..=y1 {
        let y = py(10f64.powi(e));
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0,
            label(e)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">entities</text>"#,
        LEFT + pw / 2.0,
        H - 10.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        esc(c.y_label)
    );
    let line: Vec<String> = pts
        .iter()
        .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
        .collect();
    let _ = writeln!(
        s,
        r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="2"/>"##,
        line.join(" ")
    );
    for &(x, y) in &pts {
        let _ = writeln!(
            s,
            r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="#1f77b4"><title>{x}: {y:.4}</title></circle>"##,
            px(x),
            py(y)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The charts of a `scale` run.
pub fn charts(points: &[Point]) -> Vec<Chart<'static>> {
    let by = |f: fn(&Point) -> f64| -> Vec<(f64, f64)> {
        points.iter().map(|p| (p.n as f64, f(p))).collect()
    };
    vec![
        Chart {
            file: "scale-restart.svg",
            title: "restart median (SIGKILL → replacement running)",
            y_label: "ms",
            points: by(|p| p.restart_ms),
        },
        Chart {
            file: "scale-startup.svg",
            title: "start-up: ham started → every entity running",
            y_label: "ms",
            points: by(|p| p.startup_ms),
        },
        Chart {
            file: "scale-status.svg",
            title: "hamctl status, run to completion",
            y_label: "ms",
            points: by(|p| p.status_ms),
        },
        Chart {
            file: "scale-pss.svg",
            title: "PSS of HAM + Guardian",
            y_label: "KiB",
            points: by(|p| p.pss_kib),
        },
        Chart {
            file: "scale-storm.svg",
            title: "storm: 10 % killed at once → all back",
            y_label: "ms",
            points: by(|p| p.storm_ms),
        },
    ]
}

/// Writes every chart into `dir` (created if needed); returns the files written.
pub fn write_all(dir: &Path, points: &[Point]) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for c in charts(points) {
        let path = dir.join(c.file);
        std::fs::write(&path, svg(&c)).map_err(|e| format!("writing {}: {e}", path.display()))?;
        files.push(path.display().to_string());
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_has_one_point_per_size_inside_the_plot_area_and_decade_ticks() {
        let c = Chart {
            file: "x.svg",
            title: "t <&>",
            y_label: "ms",
            points: vec![(10.0, 1.0), (100.0, 2.0), (1000.0, 40.0)],
        };
        let s = svg(&c);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert_eq!(s.matches("<circle").count(), 3);
        assert!(s.contains("t &lt;&amp;&gt;"));
        // x decades 10..1000, y decades 1..100.
        for t in [">10<", ">100<", ">1000<", ">1<"] {
            assert!(s.contains(t), "{t} missing");
        }
        // Every point lies in the plot area.
        for cap in s.split("<circle cx=\"").skip(1) {
            let mut it = cap.split('"');
            let cx: f64 = it.next().unwrap().parse().unwrap();
            let cy: f64 = it.nth(1).unwrap().parse().unwrap();
            assert!((LEFT..=W - RIGHT).contains(&cx), "cx {cx}");
            assert!((TOP..=H - BOTTOM).contains(&cy), "cy {cy}");
        }
    }

    #[test]
    fn no_points_is_said_not_drawn() {
        let c = Chart {
            file: "x.svg",
            title: "t",
            y_label: "ms",
            points: vec![(10.0, 0.0)],
        };
        assert!(svg(&c).contains("no data"));
    }
}
