//! The status view: read from the state segment, read-only, so it answers even when the HAM
//! is busy (or gone: a stale segment is shown as such).

use ham_core::duration::format_ns;
use ham_core::layout::{
    EXIT_SOURCE_PIDFD_INFO, EXIT_SOURCE_PROC_CONNECTOR, EXIT_SOURCE_WAITID,
    FLAG_DEVICE_RESTART_OFF, FLAG_STOP_INTENT, FLAG_WARM_START,
};
use ham_core::segment::{Segment, SegmentError};
use ham_core::{EntityState, LastExit};
use serde::Serialize;

use crate::procfs;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Status {
    pub ham: HamStatus,
    pub guardian: Option<GuardianStatus>,
    pub entities: Vec<EntityStatus>,
    /// Whether escalations to a device restart are carried out (`hamctl device-restart`).
    pub device_restart: bool,
    /// Where the HAM gets exit statuses: "waitid" (its own children), "pidfd_info_exit"
    /// (Linux ≥ 6.15, any reaped process), "proc_connector" (netlink, needs CAP_NET_ADMIN).
    /// Without the last two, a process that dies while no HAM is its parent ends "unknown".
    pub exit_sources: Vec<&'static str>,
    /// The detector ring's consumer counts (events consumed, rejected as invalid or not
    /// allowed, and slots abandoned by producers that died mid-publish).
    pub ring: RingStatus,
    /// What the limits on what clients can make ham hold have refused or dropped.
    pub limits: LimitStatus,
    /// Slots that could not be read (corrupt), as messages.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HamStatus {
    pub pid: i32,
    pub epoch: u64,
    /// Whether that pid still runs with the recorded start time.
    pub alive: bool,
    /// "cold" (a new segment), "warm" (a segment left by a dead pair, re-adopted) or
    /// "took-over" (a Guardian that replaced its dead or fenced HAM).
    pub start: &'static str,
    /// A warm start or takeover under way: the records are still the predecessor's.
    pub adopting: bool,
    /// A shutdown has been asked for.
    pub stopping: bool,
    pub failures: u32,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct RingStatus {
    pub consumed: u64,
    pub rejected: u64,
    pub abandoned: u64,
}

/// Counts of the limits' refusals (see the README's "Limits").
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct LimitStatus {
    /// Condition runs dropped because their entity had `RUNS_PER_ENTITY` open.
    pub runs_dropped: u64,
    /// Run-time definitions refused over an entity's or unprivileged users' share.
    pub definitions_refused: u64,
    /// Subscriptions refused over a user's share.
    pub subscriptions_refused: u64,
    /// Control connections refused over a user's or unprivileged users' share.
    pub connections_refused: u64,
}

/// What a client attached with.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct HeartbeatStatus {
    pub period_ns: u64,
    pub missed_low: u32,
    pub missed_high: u32,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GuardianStatus {
    pub pid: i32,
    pub alive: bool,
    pub failures: u32,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EntityStatus {
    pub name: String,
    pub pid: Option<i32>,
    pub state: &'static str,
    /// Automatic restarts after a death.
    pub restarts: u32,
    /// Starts that were not automatic restarts: the first process ham started for it
    /// (whatever had it started: the configuration, a `ham_attach` line, a restart action)
    /// and `hamctl start|restart`.
    pub starts: u32,
    pub last_exit: Option<ExitJson>,
    /// Nanoseconds since the current process started, when running.
    pub uptime_ns: Option<u64>,
    /// The heartbeat an SDK client attached with, if any.
    pub heartbeat: Option<HeartbeatStatus>,
    /// When its last process ended (wall clock, ms since the Unix epoch).
    pub last_exit_unix_ms: Option<u64>,
    /// While `held-off`: nanoseconds until its policy lets it start again.
    pub held_off_left_ns: Option<u64>,
    /// While `backoff`: why its start failed (from the process log; `null` until looked up
    /// by `hamctl`, or if the log does not say).
    pub backoff_reason: Option<String>,
    /// How its processes are tracked: `cgroup` (every process it starts, in its cgroup),
    /// `process-group` (its process group only), or `unknown` before it is looked up.
    pub tracking: &'static str,
}

/// `{"code": N}`, `{"signal": N}` or `{"unknown": true}`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ExitJson {
    Code(i32),
    Signal(i32),
    Unknown(bool),
}

impl ExitJson {
    pub fn from(e: LastExit) -> Option<Self> {
        match e {
            LastExit::None => None,
            LastExit::Code(c) => Some(Self::Code(c)),
            LastExit::Signal(s) => Some(Self::Signal(s)),
            LastExit::Unknown => Some(Self::Unknown(true)),
        }
    }
    pub fn human(&self) -> String {
        match self {
            Self::Code(c) => format!("code {c}"),
            Self::Signal(s) => format!("signal {s}"),
            Self::Unknown(_) => "unknown".into(),
        }
    }
}

/// Reads the status of the instance whose segment is `segment_name`.
pub fn read(segment_name: &str, now_mono_ns: u64) -> Result<Status, SegmentError> {
    let seg = Segment::open_for_status(segment_name)?;
    Ok(from_segment(&seg, now_mono_ns))
}

impl Status {
    /// Fills in why each entity in `backoff` could not start: the newest `backoff` line of
    /// the process log `log` for it.
    pub fn look_up_backoff(&mut self, log: &std::path::Path) {
        if !self.entities.iter().any(|e| e.state == "backoff") {
            return;
        }
        let Ok(records) = crate::proclog::read(log) else {
            return;
        };
        for e in self.entities.iter_mut().filter(|e| e.state == "backoff") {
            e.backoff_reason = records
                .iter()
                .rev()
                .find(|r| r.entity == e.name && r.action == "backoff")
                .map(|r| r.result.clone());
        }
    }

    /// Fills in each entity's `tracking`: `cgroup` when the running HAM keeps it in a
    /// cgroup (its directory exists where that HAM puts them), else `process-group`.
    pub fn look_up_tracking(&mut self, inst: &crate::config::Instance) {
        let dir = self
            .ham
            .alive
            .then(|| {
                crate::cgroup::instance_dir(&inst.cgroup, &inst.name, &self.ham.pid.to_string())
            })
            .flatten();
        for e in &mut self.entities {
            e.tracking = match &dir {
                Some(d) if d.join(&e.name).is_dir() => "cgroup",
                _ => "process-group",
            };
        }
    }
}

/// Builds the status from a mapped segment.
pub fn from_segment(seg: &Segment, now_mono_ns: u64) -> Status {
    let h = seg.header().snapshot();
    let guardian = (h.guardian_pid > 0).then(|| GuardianStatus {
        pid: h.guardian_pid,
        alive: procfs::is_alive(h.guardian_pid, h.guardian_start_time),
        failures: h.guardian_failures,
    });
    let mut entities = Vec::new();
    let mut errors = Vec::new();
    for (index, rec) in seg.records() {
        match rec {
            // A removed run-time entity's place: nothing to show.
            Ok(r) if crate::config::is_free_entry(&r.name) => {}
            Ok(r) => {
                let running = r.state.has_process() && r.pid > 0;
                entities.push(EntityStatus {
                    pid: running.then_some(r.pid),
                    state: r.state.as_str(),
                    restarts: r.restarts,
                    starts: r.starts,
                    last_exit: ExitJson::from(r.last_exit),
                    uptime_ns: (r.state == EntityState::Running)
                        .then(|| now_mono_ns.saturating_sub(r.started_mono_ns)),
                    heartbeat: r.heartbeat.map(|h| HeartbeatStatus {
                        period_ns: h.period_ns,
                        missed_low: h.missed_low,
                        missed_high: h.missed_high,
                    }),
                    last_exit_unix_ms: (r.exited_unix_ns > 0 && r.last_exit != LastExit::None)
                        .then_some(r.exited_unix_ns / 1_000_000),
                    held_off_left_ns: (r.state == EntityState::HeldOff)
                        .then(|| r.policy.held_until.saturating_sub(now_mono_ns)),
                    backoff_reason: None,
                    tracking: "unknown",
                    name: r.name,
                });
            }
            Err(e) => errors.push(format!("slot {index}: {e}")),
        }
    }
    Status {
        ham: HamStatus {
            pid: h.ham_pid,
            epoch: h.epoch,
            alive: procfs::is_alive(h.ham_pid, h.ham_start_time),
            start: if h.flags & ham_core::layout::FLAG_TOOK_OVER != 0 {
                "took-over"
            } else if h.flags & FLAG_WARM_START != 0 {
                "warm"
            } else {
                "cold"
            },
            adopting: h.flags & ham_core::layout::FLAG_ADOPTING != 0,
            stopping: h.flags & FLAG_STOP_INTENT != 0,
            failures: h.ham_failures,
        },
        guardian,
        entities,
        device_restart: h.flags & FLAG_DEVICE_RESTART_OFF == 0,
        exit_sources: [
            (EXIT_SOURCE_WAITID, "waitid"),
            (EXIT_SOURCE_PIDFD_INFO, "pidfd_info_exit"),
            (EXIT_SOURCE_PROC_CONNECTOR, "proc_connector"),
        ]
        .into_iter()
        .filter(|(bit, _)| h.exit_sources & bit != 0)
        .map(|(_, name)| name)
        .collect(),
        ring: {
            let [consumed, rejected, abandoned] = seg.header().ring_counts();
            RingStatus {
                consumed,
                rejected,
                abandoned,
            }
        },
        limits: {
            use ham_core::layout::{LIMIT_CONNS, LIMIT_DEFS, LIMIT_RUNS, LIMIT_SUBS};
            let c = seg.header().limit_counts();
            LimitStatus {
                runs_dropped: c[LIMIT_RUNS],
                definitions_refused: c[LIMIT_DEFS],
                subscriptions_refused: c[LIMIT_SUBS],
                connections_refused: c[LIMIT_CONNS],
            }
        },
        errors,
    }
}

impl Status {
    /// The aligned table `hamctl status` prints.
    pub fn to_table(&self) -> String {
        let mut out = format!(
            "ham pid {}{} · epoch {} · {}{}",
            self.ham.pid,
            if self.ham.alive { "" } else { " (not running)" },
            self.ham.epoch,
            match self.ham.start {
                "took-over" => "took over",
                "warm" => "warm start",
                _ => "cold start",
            },
            if self.ham.adopting {
                ", still adopting: the entities below are as its predecessor left them"
            } else {
                ""
            }
        );
        match &self.guardian {
            Some(g) => out.push_str(&format!(
                " · guardian pid {}{}",
                g.pid,
                if g.alive { "" } else { " (not running)" }
            )),
            None => out.push_str(" · no guardian"),
        }
        if self.ham.failures > 0 || self.guardian.as_ref().is_some_and(|g| g.failures > 0) {
            out.push_str(&format!(
                " · takeovers {}, guardians replaced {}",
                self.ham.failures,
                self.guardian.as_ref().map_or(0, |g| g.failures)
            ));
        }
        if self.ham.stopping {
            out.push_str(" · shutting down");
        }
        if !self.device_restart {
            out.push_str(" · device restart off");
        }
        out.push('\n');
        let header = [
            "NAME",
            "STATE",
            "PID",
            "RESTARTS",
            "STARTS",
            "LAST EXIT",
            "UPTIME",
        ];
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let rows: Vec<[String; 7]> = self
            .entities
            .iter()
            .map(|e| {
                let state = match e.held_off_left_ns {
                    Some(left) => format!("{} ({} left)", e.state, format_ns(left)),
                    None => e.state.to_owned(),
                };
                let exit = match (&e.last_exit, e.last_exit_unix_ms) {
                    (Some(x), Some(at)) => format!(
                        "{} ({} ago)",
                        x.human(),
                        format_ns(now_ms.saturating_sub(at) * 1_000_000)
                    ),
                    (Some(x), None) => x.human(),
                    (None, _) => "-".into(),
                };
                [
                    e.name.clone(),
                    state,
                    e.pid.map_or("-".into(), |p| p.to_string()),
                    e.restarts.to_string(),
                    e.starts.to_string(),
                    exit,
                    e.uptime_ns.map_or("-".into(), format_ns),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut line = |cells: Vec<&str>| {
            let mut l = String::new();
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                if i + 1 == cells.len() {
                    l.push_str(cell);
                } else {
                    l.push_str(&format!("{cell:<w$}  "));
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(header.to_vec());
        for row in &rows {
            line(row.iter().map(String::as_str).collect());
        }
        for e in &self.entities {
            if let Some(why) = &e.backoff_reason {
                out.push_str(&format!("{}: backoff: {why}\n", e.name));
            }
        }
        for e in &self.errors {
            out.push_str(&format!("error: {e}\n"));
        }
        out.push_str(
            "RESTARTS: automatic restarts after a death; STARTS: the other starts (the first, \
             hamctl start and restart)\n",
        );
        out
    }
}

/// `hamctl status --tree`: QNX's `/proc/ham` view. Entities (configured and run-time) →
/// conditions → actions (→ fail actions), with their flags, from the configuration file and
/// the run-time definitions in the state segment; the pair's failure counts from its header.
pub fn tree(
    config: &std::path::Path,
    segment_name: &str,
    now_mono_ns: u64,
) -> Result<String, String> {
    use std::fmt::Write;
    let seg = Segment::open_for_status(segment_name).map_err(|e| e.to_string())?;
    let status = from_segment(&seg, now_mono_ns);
    let text = std::fs::read_to_string(config).map_err(|e| format!("{}: {e}", config.display()))?;
    let defs = seg
        .defs()
        .read()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let full = format!("{text}\n\n# run-time definitions\n{defs}");
    let cfg = crate::config::parse_validated(config, &full).map_err(|e| e.to_string())?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ham pid {} · Ham Failures {} · Guardian pid {} · Guardian Failures {}",
        status.ham.pid,
        status.ham.failures,
        status.guardian.as_ref().map_or(0, |g| g.pid),
        status.guardian.as_ref().map_or(0, |g| g.failures)
    );
    let runtime: std::collections::HashSet<String> = toml::from_str::<toml::Table>(&defs)
        .ok()
        .and_then(|t| t.get("entity").and_then(|e| e.as_array()).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e.get("name").and_then(|n| n.as_str()).map(str::to_owned))
        .collect();
    for e in cfg
        .entities
        .iter()
        .filter(|e| !crate::config::is_free_entry(&e.name))
    {
        let st = status.entities.iter().find(|s| s.name == e.name);
        let _ = writeln!(
            out,
            "{}  pid {} · {} · restarts {} · {}{}",
            e.name,
            st.and_then(|s| s.pid)
                .map_or("-".to_owned(), |p| p.to_string()),
            st.map_or("unknown", |s| s.state),
            st.map_or(0, |s| s.restarts),
            if e.attach_only {
                "attached"
            } else {
                "started by ham"
            },
            if runtime.contains(&e.name) {
                " · run-time"
            } else {
                ""
            }
        );
        for (k, c) in e.conditions.iter().enumerate() {
            if c.removed {
                continue;
            }
            let mut flags = Vec::new();
            if c.rearm {
                flags.push("REARM");
            }
            if c.nowait {
                flags.push("NOWAIT");
            } else if c.independent {
                flags.push("INDEPENDENT");
            }
            if !c.enabled {
                flags.push("DISABLED");
            }
            let name = c.name.clone().unwrap_or_else(|| format!("condition[{k}]"));
            let _ = writeln!(out, "  {name}  {} [{}]", c.trigger.name(), flags.join(" "));
            fn actions(out: &mut String, list: &[crate::actions::Action], depth: usize) {
                for (n, a) in list.iter().enumerate() {
                    let mut flags = Vec::new();
                    if a.run_now {
                        flags.push("DONOW");
                    }
                    if a.break_on_fail {
                        flags.push("BREAKONFAIL");
                    }
                    if !a.enabled {
                        flags.push("DISABLED");
                    }
                    let name = a.name.clone().unwrap_or_else(|| format!("action[{n}]"));
                    let pad = "  ".repeat(depth);
                    let fail = if depth > 2 { "on fail: " } else { "" };
                    let _ = writeln!(
                        out,
                        "{pad}{fail}{name}  {} [{}]",
                        a.kind.name(),
                        flags.join(" ")
                    );
                    actions(out, &a.on_fail, depth + 1);
                }
            }
            actions(&mut out, &c.actions, 2);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_json_shapes() {
        assert_eq!(
            serde_json::to_string(&ExitJson::Code(3)).unwrap(),
            r#"{"code":3}"#
        );
        assert_eq!(
            serde_json::to_string(&ExitJson::Signal(9)).unwrap(),
            r#"{"signal":9}"#
        );
        assert_eq!(ExitJson::from(LastExit::None), None);
    }

    #[test]
    fn the_table_says_a_ham_still_adopting() {
        let mut s = Status {
            ham: HamStatus {
                pid: 10,
                epoch: 2,
                alive: true,
                start: "took-over",
                adopting: true,
                stopping: false,
                failures: 1,
            },
            guardian: None,
            entities: Vec::new(),
            device_restart: true,
            exit_sources: Vec::new(),
            ring: RingStatus::default(),
            limits: LimitStatus::default(),
            errors: Vec::new(),
        };
        let first = |s: &Status| s.to_table().lines().next().unwrap_or_default().to_owned();
        assert!(
            first(&s).contains("took over, still adopting"),
            "{}",
            first(&s)
        );
        s.ham.adopting = false;
        assert!(!first(&s).contains("adopting"), "{}", first(&s));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["ham"]["adopting"], false);
    }

    #[test]
    fn table_is_aligned() {
        let s = Status {
            ham: HamStatus {
                pid: 10,
                epoch: 1,
                alive: true,
                start: "cold",
                adopting: false,
                stopping: false,
                failures: 0,
            },
            guardian: None,
            entities: vec![
                EntityStatus {
                    name: "a-long-name".into(),
                    pid: Some(123),
                    state: "running",
                    restarts: 2,
                    starts: 1,
                    last_exit: Some(ExitJson::Signal(9)),
                    uptime_ns: Some(1_500_000_000),
                    heartbeat: None,
                    last_exit_unix_ms: None,
                    held_off_left_ns: None,
                    backoff_reason: None,
                    tracking: "unknown",
                },
                EntityStatus {
                    name: "b".into(),
                    pid: None,
                    state: "held-off",
                    restarts: 5,
                    starts: 1,
                    last_exit: Some(ExitJson::Code(3)),
                    uptime_ns: None,
                    heartbeat: None,
                    last_exit_unix_ms: Some(1),
                    held_off_left_ns: Some(250_000_000_000),
                    backoff_reason: None,
                    tracking: "unknown",
                },
                EntityStatus {
                    name: "c".into(),
                    pid: None,
                    state: "backoff",
                    restarts: 0,
                    starts: 1,
                    last_exit: None,
                    uptime_ns: None,
                    heartbeat: None,
                    last_exit_unix_ms: None,
                    held_off_left_ns: None,
                    backoff_reason: Some("cannot start /x: No such file".into()),
                    tracking: "unknown",
                },
            ],
            device_restart: true,
            exit_sources: vec![],
            ring: RingStatus::default(),
            limits: LimitStatus::default(),
            errors: vec![],
        };
        let t = s.to_table();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 7, "{t}");
        assert!(lines[0].contains("cold start"), "{t}");
        let col = lines[1].find("STATE").unwrap();
        assert_eq!(lines[2].find("running"), Some(col), "{t}");
        assert_eq!(lines[3].find("held-off (4m10s left)"), Some(col), "{t}");
        assert!(
            lines[3].contains("code 3 ("),
            "the time since the exit: {t}"
        );
        assert!(lines[2].ends_with("1.50s"), "{t}");
        assert_eq!(lines[5], "c: backoff: cannot start /x: No such file", "{t}");
        assert!(lines[6].starts_with("RESTARTS: automatic restarts"), "{t}");
    }
}
