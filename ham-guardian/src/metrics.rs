//! Prometheus text exposition (format 0.0.4) of an instance's status: what `hamctl metrics`
//! prints and what `[metrics] textfile` writes for node_exporter's textfile collector. Every
//! series carries `ham="<instance>"`, so several instances on one box can share a
//! collector directory.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use ham_core::EntityState;

use crate::status::{ExitJson, Status};

/// One metric family: its samples are added with [`Family::sample`].
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
    instance: &'a str,
}

impl<'a> Family<'a> {
    fn new(
        out: &'a mut String,
        instance: &'a str,
        name: &'static str,
        kind: &str,
        help: &str,
    ) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family {
            out,
            name,
            instance,
        }
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = write!(self.out, "{}{{ham=\"{}\"", self.name, escape(self.instance));
        for (k, v) in labels {
            let _ = write!(self.out, ",{k}=\"{}\"", escape(v));
        }
        let _ = writeln!(self.out, "}} {value}");
    }
}

/// A label value as the exposition format writes it: `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Every state an entity's record can be in, so each gets a series (0 or 1) that exists
/// before the state first happens.
const STATES: [EntityState; 8] = [
    EntityState::Stopped,
    EntityState::Starting,
    EntityState::Running,
    EntityState::Stopping,
    EntityState::Exited,
    EntityState::Backoff,
    EntityState::HeldOff,
    EntityState::Waiting,
];

/// The exposition text for an instance whose status cannot be read (not running).
pub fn render_down(instance: &str) -> String {
    let mut out = String::new();
    Family::new(
        &mut out,
        instance,
        "ham_up",
        "gauge",
        "1 if the instance's HAM runs.",
    )
    .sample(&[], 0);
    out
}

/// The exposition text of `s` for instance `instance`.
pub fn render(instance: &str, s: &Status) -> String {
    let mut out = String::new();
    let o = &mut out;
    let alive = u8::from(s.ham.alive);
    Family::new(
        o,
        instance,
        "ham_up",
        "gauge",
        "1 if the instance's HAM runs.",
    )
    .sample(&[], alive);
    Family::new(
        o,
        instance,
        "ham_info",
        "gauge",
        "The HAM's version and how it started (cold or warm).",
    )
    .sample(
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("start", s.ham.start),
        ],
        1,
    );
    Family::new(
        o,
        instance,
        "ham_epoch",
        "gauge",
        "The state segment's epoch: one more at each takeover or warm start.",
    )
    .sample(&[], s.ham.epoch);
    Family::new(
        o,
        instance,
        "ham_takeovers_total",
        "counter",
        "Guardians that took over from a dead or fenced HAM.",
    )
    .sample(&[], s.ham.failures);
    Family::new(
        o,
        instance,
        "ham_guardian_up",
        "gauge",
        "1 if the HAM's Guardian runs.",
    )
    .sample(&[], u8::from(s.guardian.as_ref().is_some_and(|g| g.alive)));
    Family::new(
        o,
        instance,
        "ham_guardian_replacements_total",
        "counter",
        "Guardians that died (or were fenced) and were replaced.",
    )
    .sample(&[], s.guardian.as_ref().map_or(0, |g| g.failures));
    Family::new(
        o,
        instance,
        "ham_device_restart_enabled",
        "gauge",
        "1 if an escalation to a device restart is carried out (hamctl device-restart).",
    )
    .sample(&[], u8::from(s.device_restart));

    let mut f = Family::new(
        o,
        instance,
        "ham_entity_up",
        "gauge",
        "1 if the entity's process runs.",
    );
    for e in &s.entities {
        f.sample(&[("entity", &e.name)], u8::from(e.state == "running"));
    }
    let mut f = Family::new(
        o,
        instance,
        "ham_entity_state",
        "gauge",
        "1 for the state the entity is in, 0 for the others.",
    );
    for e in &s.entities {
        for st in STATES.map(EntityState::as_str) {
            f.sample(
                &[("entity", &e.name), ("state", st)],
                u8::from(e.state == st),
            );
        }
    }
    let mut f = Family::new(
        o,
        instance,
        "ham_entity_restarts_total",
        "counter",
        "Automatic restarts after a death.",
    );
    for e in &s.entities {
        f.sample(&[("entity", &e.name)], e.restarts);
    }
    let mut f = Family::new(
        o,
        instance,
        "ham_entity_starts_total",
        "counter",
        "Starts that were not automatic restarts (the first start, hamctl start and restart).",
    );
    for e in &s.entities {
        f.sample(&[("entity", &e.name)], e.starts);
    }
    let mut f = Family::new(
        o,
        instance,
        "ham_entity_uptime_seconds",
        "gauge",
        "Seconds since the running process started (0 when none runs).",
    );
    for e in &s.entities {
        let up = e.uptime_ns.unwrap_or(0) as f64 / 1e9;
        f.sample(&[("entity", &e.name)], format_args!("{up:.3}"));
    }
    let mut f = Family::new(
        o,
        instance,
        "ham_entity_last_exit",
        "gauge",
        "How the last process ended: 1 with kind=\"code\" or kind=\"signal\" and its value.",
    );
    for e in &s.entities {
        let (kind, value) = match &e.last_exit {
            None => continue,
            Some(ExitJson::Code(c)) => ("code", c.to_string()),
            Some(ExitJson::Signal(n)) => ("signal", n.to_string()),
            Some(ExitJson::Unknown(_)) => ("unknown", String::new()),
        };
        f.sample(&[("entity", &e.name), ("kind", kind), ("value", &value)], 1);
    }
    let mut f = Family::new(
        o,
        instance,
        "ham_heartbeat_missed_total",
        "counter",
        "Heartbeat deadlines an attached client missed, by level (low, then high).",
    );
    for e in &s.entities {
        if let Some(h) = &e.heartbeat {
            f.sample(&[("entity", &e.name), ("level", "low")], h.missed_low);
            f.sample(&[("entity", &e.name), ("level", "high")], h.missed_high);
        }
    }
    let mut f = Family::new(
        o,
        instance,
        "ham_ring_events_total",
        "counter",
        "Detector ring events by outcome: consumed, rejected (invalid or not allowed), \
         abandoned (the producer died mid-publish).",
    );
    for (outcome, n) in [
        ("consumed", s.ring.consumed),
        ("rejected", s.ring.rejected),
        ("abandoned", s.ring.abandoned),
    ] {
        f.sample(&[("outcome", outcome)], n);
    }
    let mut f = Family::new(
        o,
        instance,
        "ham_limit_refusals_total",
        "counter",
        "What the limits on clients refused or dropped, by limit.",
    );
    for (limit, n) in [
        ("runs", s.limits.runs_dropped),
        ("definitions", s.limits.definitions_refused),
        ("subscriptions", s.limits.subscriptions_refused),
        ("connections", s.limits.connections_refused),
    ] {
        f.sample(&[("limit", limit)], n);
    }
    out
}

/// Writes `text` to `path` atomically: a temporary file beside it, synced, then renamed
/// over it (node_exporter never reads half a file).
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_data()?;
    drop(f);
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The textfile writer: a thread of the HAM, apart from its loop so a slow disk never
/// stalls supervision. It reads the segment as `hamctl status` does.
pub struct Textfile {
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
    path: PathBuf,
}

impl Textfile {
    /// Starts writing `path` every `interval` (the first at once).
    pub fn start(
        instance: String,
        segment: String,
        path: PathBuf,
        interval: Duration,
    ) -> std::io::Result<Textfile> {
        let (stop, stopped) = mpsc::channel::<()>();
        let p = path.clone();
        let thread = std::thread::Builder::new()
            .name("ham-metrics".into())
            .spawn(move || {
                let mut failing = false;
                loop {
                    let r = crate::status::read(&segment, crate::mono_ns())
                        .map_err(|e| std::io::Error::other(e.to_string()))
                        .and_then(|s| write_atomic(&p, &render(&instance, &s)));
                    match r {
                        Err(e) if !failing => {
                            crate::log::ham(
                                &instance,
                                format_args!("cannot write metrics to {}: {e}", p.display()),
                            );
                            failing = true;
                        }
                        Err(_) => {}
                        Ok(()) => failing = false,
                    }
                    match stopped.recv_timeout(interval) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                }
            })?;
        Ok(Textfile { stop, thread, path })
    }

    /// Stops the writer and removes the file: a stopped instance must not leave series that
    /// say its entities are up.
    pub fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
    }
}
