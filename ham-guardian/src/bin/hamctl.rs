//! `hamctl` — status and control of a running `ham`. See the README for exit codes.

use std::process::ExitCode;

use ham_guardian::control;
use ham_guardian::{config, exit, mono_ns, status};

use ham_guardian::cli::hamctl::{self, Command};
use ham_guardian::cli::{HAMCTL, usage_error};

fn main() -> ExitCode {
    let args = match hamctl::parse(std::env::args_os().skip(1), std::env::var_os("HAM_CONFIG")) {
        Ok(a) => a,
        Err(e) => return usage(&e),
    };
    match &args.command {
        Command::Help => {
            println!("{}", HAMCTL.usage());
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("hamctl {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Generate(g) => {
            return match g.to_generate().render(&HAMCTL) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => usage(&e),
            };
        }
        _ => {}
    }
    let inst = match config::load_instance(&args.config) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("hamctl: {e}");
            return ExitCode::from(exit::FAILED as u8);
        }
    };
    other_config_note(&inst, &args.config);
    let req = match args.command {
        Command::Status { tree: true, .. } => {
            return match status::tree(&args.config, &inst.segment_name(), mono_ns()) {
                Ok(t) => {
                    print!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("hamctl: {e}");
                    ExitCode::from(exit::UNAVAILABLE as u8)
                }
            };
        }
        Command::Status { json, .. } => {
            return match status::read(&inst.segment_name(), mono_ns()).map(|mut s| {
                s.look_up_tracking(&inst);
                s.look_up_backoff(&inst.process_log_path());
                s
            }) {
                Ok(s) if json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&s).expect("serialisable")
                    );
                    ExitCode::SUCCESS
                }
                Ok(s) => {
                    print!("{}", s.to_table());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("hamctl: {}", unreadable(&inst, &e));
                    ExitCode::from(exit::UNAVAILABLE as u8)
                }
            };
        }
        Command::Metrics => {
            return match status::read(&inst.segment_name(), mono_ns()) {
                Ok(s) => {
                    print!("{}", ham_guardian::metrics::render(&inst.name, &s));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    print!("{}", ham_guardian::metrics::render_down(&inst.name));
                    eprintln!("hamctl: {}", unreadable(&inst, &e));
                    ExitCode::from(exit::UNAVAILABLE as u8)
                }
            };
        }
        Command::Logs {
            entity,
            lines,
            follow,
        } => return print_logs(&inst, &entity, lines, follow),
        Command::Upgrade { binary } => return upgrade(&inst, binary, args.timeout),
        Command::Log { entity, json } => return print_log(&inst, entity.as_deref(), json),
        Command::Pss { entity, json } => return print_pss(&inst, &entity, json, args.timeout),
        Command::ClusterStatus { json } => return print_cluster(&inst, json, args.timeout),
        Command::Cores { entity, json } => {
            let cores = ham_guardian::cores::list(&inst.cores_dir, entity.as_deref());
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&cores).expect("serialisable")
                );
            } else {
                println!(
                    "{:<23}  {:<16} {:>7} {:>6} {:>10}  PATH",
                    "TIME (UTC)", "ENTITY", "PID", "SIGNAL", "BYTES"
                );
                for c in &cores {
                    println!(
                        "{}  {:<16} {:>7} {:>6} {:>10}  {}",
                        utc(c.time_unix_ms),
                        c.entity,
                        c.pid,
                        c.signal,
                        c.bytes,
                        c.path.display()
                    );
                }
            }
            return ExitCode::SUCCESS;
        }
        Command::Send(req) => req,
        Command::Help | Command::Version | Command::Generate(_) => {
            unreachable!("answered above")
        }
    };
    match control::request(&inst.socket_path(), &req, args.timeout) {
        Ok(r) if r.ok => {
            if let Some(m) = r.message {
                println!("{m}");
            }
            ExitCode::SUCCESS
        }
        Ok(r) => {
            eprintln!(
                "hamctl: {}",
                r.error.unwrap_or_else(|| "request failed".into())
            );
            ExitCode::from(exit::FAILED as u8)
        }
        Err(e) => {
            eprintln!("hamctl: {e}");
            ExitCode::from(exit::UNAVAILABLE as u8)
        }
    }
}

fn print_log(inst: &config::Instance, entity: Option<&str>, json: bool) -> ExitCode {
    let path = inst.process_log_path();
    let records = match ham_guardian::proclog::read(&path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hamctl: cannot read {}: {e}", path.display());
            return ExitCode::from(exit::UNAVAILABLE as u8);
        }
    };
    let records: Vec<_> = records
        .into_iter()
        .filter(|r| entity.is_none_or(|e| r.entity == e))
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&records).expect("serialisable")
        );
    } else {
        for r in &records {
            println!(
                "{}  {:<16} {:>7}  {:<10} {:<15} {:<14} {}",
                utc(r.time_unix_ms),
                r.entity,
                r.pid.map_or("-".into(), |p| p.to_string()),
                r.exit.as_ref().map_or("-".into(), |x| x.human()),
                match &r.name {
                    Some(n) if *n != r.condition => format!("{} ({n})", r.condition),
                    _ => r.condition.clone(),
                },
                r.action,
                r.result
            );
        }
    }
    ExitCode::SUCCESS
}

/// `hamctl pss ENTITY`: the entity's keys, as ham reads them.
/// `req`'s answer when ham granted it; otherwise says why and gives the exit code.
fn ask(
    inst: &config::Instance,
    req: &control::Request,
    timeout: std::time::Duration,
) -> Result<control::Response, ExitCode> {
    match control::request(&inst.socket_path(), req, timeout) {
        Ok(r) if r.ok => Ok(r),
        Ok(r) => {
            eprintln!(
                "hamctl: {}",
                r.error.unwrap_or_else(|| "request failed".into())
            );
            Err(ExitCode::from(exit::FAILED as u8))
        }
        Err(e) => {
            eprintln!("hamctl: {e}");
            Err(ExitCode::from(exit::UNAVAILABLE as u8))
        }
    }
}

fn print_cluster(inst: &config::Instance, json: bool, timeout: std::time::Duration) -> ExitCode {
    let r = match ask(inst, &control::Request::ClusterStatus, timeout) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let Some(state) = r.cluster.map(|c| *c) else {
        eprintln!("hamctl: ham answered cluster-status without a state");
        return ExitCode::from(exit::FAILED as u8);
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&state).expect("serialisable")
        );
        return ExitCode::SUCCESS;
    }
    println!("cluster {}, node {}", state.cluster, state.node);
    match (&state.stale, &state.why) {
        (true, Some(why)) => println!("view STALE: {why}"),
        (true, None) => println!("view STALE"),
        (false, _) => {}
    }
    println!(
        "view {} ({} members)",
        state.view.id,
        state.view.members.len()
    );
    for m in &state.view.members {
        let me = if m.node == state.node {
            "  (this node)"
        } else {
            ""
        };
        println!("  {:<24} since {}{me}", m.node, utc(m.since));
    }
    if let Some(m) = &state.master {
        println!("master {m}");
    }
    for s in &state.singletons {
        println!(
            "singleton {:<24} owner {:<16} token {}",
            s.name,
            s.owner.as_deref().unwrap_or("-"),
            s.token
        );
    }
    for (k, v) in &state.settings {
        println!(
            "setting {k} = {} (from {}, revision {})",
            v.value, v.origin, v.revision
        );
    }
    ExitCode::SUCCESS
}

fn print_pss(
    inst: &config::Instance,
    entity: &str,
    json: bool,
    timeout: std::time::Duration,
) -> ExitCode {
    let req = control::Request::PssRead {
        entity: entity.to_owned(),
        key: None,
    };
    let items = match ask(inst, &req, timeout) {
        Ok(r) => r.pss.map(Vec::from).unwrap_or_default(),
        Err(code) => return code,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&items).expect("serialisable")
        );
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<24} {:<8} {:<8} {:>7} {:>6}  VALUE",
        "KEY", "SCOPE", "DURABLE", "BYTES", "GEN"
    );
    for it in &items {
        println!(
            "{:<24} {:<8} {:<8} {:>7} {:>6}  {}",
            it.key,
            if it.shared { "shared" } else { "private" },
            if it.durable { "yes" } else { "no" },
            it.value.len(),
            it.generation,
            preview(&it.value)
        );
    }
    ExitCode::SUCCESS
}

/// A value as text when it is printable, else its first bytes in hex.
fn preview(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => {
            let mut s: String = s.chars().take(40).collect();
            if v.len() > s.len() {
                s.push('…');
            }
            s
        }
        _ => {
            let hex: String = v.iter().take(16).map(|b| format!("{b:02x}")).collect();
            format!("0x{hex}{}", if v.len() > 16 { "…" } else { "" })
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS.mmm` UTC from milliseconds since the Unix epoch.
fn utc(ms: u64) -> String {
    let (y, m, d, hh, mm, ss) = ham_guardian::civil(ms / 1000);
    format!(
        "{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02}.{:03}",
        ms % 1000
    )
}

/// `hamctl upgrade`: asks the new binary which layouts it runs on, refuses (changing
/// nothing) if the running segment's is not one, else asks ham to hand over and waits
/// until a HAM of the new binary runs the instance.
fn upgrade(
    inst: &config::Instance,
    binary: Option<std::path::PathBuf>,
    timeout: std::time::Duration,
) -> ExitCode {
    use ham_core::segment::Segment;
    let fail = |code: i32, msg: String| {
        eprintln!("hamctl: {msg}");
        ExitCode::from(code as u8)
    };
    let seg = inst.segment_name();
    let running = match Segment::peek_version(&seg) {
        Ok(v) => v,
        Err(e) => return fail(exit::UNAVAILABLE, format!("instance `{}`: {e}", inst.name)),
    };
    let pid = std::fs::read_to_string(inst.pid_path())
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .unwrap_or(0);
    // The file the running HAM was started from (a package upgrade replaces it: the link
    // then ends in " (deleted)").
    let binary = match binary {
        Some(b) => std::path::absolute(&b).unwrap_or(b),
        None => match std::fs::read_link(format!("/proc/{pid}/exe")) {
            Ok(p) => {
                let s = p.to_string_lossy();
                std::path::PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(&s))
            }
            Err(e) => {
                return fail(
                    exit::UNAVAILABLE,
                    format!("cannot tell which binary ham pid {pid} runs ({e}); give --binary"),
                );
            }
        },
    };
    let layouts = std::process::Command::new(&binary)
        .arg("--layouts")
        .output()
        .map_err(|e| e.to_string())
        .and_then(|o| {
            if o.status.success() {
                Ok(String::from_utf8_lossy(&o.stdout).into_owned())
            } else {
                Err(String::from_utf8_lossy(&o.stderr).trim().to_owned())
            }
        });
    let layouts: Vec<u32> = match layouts {
        Ok(t) => t
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect(),
        Err(e) => {
            return fail(
                exit::FAILED,
                format!(
                    "{}: not a ham that can take over ({e}); nothing was changed",
                    binary.display()
                ),
            );
        }
    };
    let Some(&theirs) = layouts.first() else {
        return fail(
            exit::FAILED,
            format!("{}: says no layout; nothing was changed", binary.display()),
        );
    };
    if !layouts.contains(&running) {
        return fail(
            exit::FAILED,
            format!(
                "{} runs on state-segment layout {theirs}{}, and instance `{}`'s segment is \
                 layout {running}: it cannot take it over. Nothing was changed; to switch, \
                 stop the instance (hamctl shutdown) and start the new binary (its \
                 entities restart)",
                binary.display(),
                match &layouts[1..] {
                    [] => " and migrates none".to_owned(),
                    older => format!(
                        " and migrates {}",
                        older
                            .iter()
                            .map(u32::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                },
                inst.name
            ),
        );
    }
    let req = control::Request::Upgrade {
        binary: binary.display().to_string(),
    };
    match control::request(&inst.socket_path(), &req, timeout) {
        Ok(r) if r.ok => {
            if let Some(m) = &r.message {
                println!("{m}");
            }
        }
        Ok(r) => {
            return fail(
                exit::FAILED,
                r.error.unwrap_or_else(|| "upgrade refused".into()),
            );
        }
        Err(e) => return fail(exit::UNAVAILABLE, e.to_string()),
    }
    // The new HAM writes its pid file once it has taken over.
    let start = std::time::Instant::now();
    loop {
        let now = std::fs::read_to_string(inst.pid_path())
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .unwrap_or(0);
        let exe = std::fs::read_link(format!("/proc/{now}/exe")).ok();
        let wanted = binary.canonicalize().ok();
        if now != pid && now > 0 && exe.is_some() && exe == wanted {
            let layout = Segment::peek_version(&seg).unwrap_or(0);
            println!(
                "upgraded: ham pid {now} runs {} (state-segment layout {running}{})",
                binary.display(),
                if layout != running {
                    format!(", migrated to {layout}")
                } else {
                    String::new()
                }
            );
            return ExitCode::SUCCESS;
        }
        if start.elapsed() > timeout {
            return fail(
                exit::UNAVAILABLE,
                format!(
                    "no HAM of {} took over within {timeout:?}",
                    binary.display()
                ),
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `hamctl logs ENTITY`: the last lines of its captured output, then (`-f`) the new ones.
fn print_logs(inst: &config::Instance, entity: &str, lines: usize, follow: bool) -> ExitCode {
    use std::io::Write;
    let dir = inst.output_dir(entity);
    if !dir.is_dir() {
        eprintln!(
            "hamctl: no captured output for `{entity}` in {} (is its output = \"log\"?)",
            dir.display()
        );
        return ExitCode::from(exit::FAILED as u8);
    }
    let out = std::io::stdout();
    let mut out = out.lock();
    let from = match ham_guardian::outlog::tail(&dir, lines) {
        Ok((ls, end)) => {
            for l in ls {
                let _ = out.write_all(&l);
            }
            end
        }
        Err(e) => {
            eprintln!("hamctl: reading {}: {e}", dir.display());
            return ExitCode::from(exit::UNAVAILABLE as u8);
        }
    };
    let _ = out.flush();
    if follow {
        // From where the tail read, not from the file's length now: lines written since
        // (a restart's, say, while this was printing) would otherwise never be shown.
        if let Err(e) = ham_guardian::outlog::follow(&dir, from, &mut out) {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                eprintln!("hamctl: following {}: {e}", dir.display());
                return ExitCode::from(exit::UNAVAILABLE as u8);
            }
        }
    }
    ExitCode::SUCCESS
}

/// Says so when the instance this file names runs from another configuration file: the
/// answers are that one's.
fn other_config_note(inst: &config::Instance, given: &std::path::Path) {
    let Ok(running) = std::fs::read_to_string(inst.config_note_path()) else {
        return;
    };
    let running = std::path::PathBuf::from(running.trim_end_matches('\n'));
    let same = |a: &std::path::Path, b: &std::path::Path| {
        a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
    };
    let given = std::path::absolute(given).unwrap_or_else(|_| given.to_owned());
    if !same(&running, &given) {
        eprintln!(
            "hamctl: note: instance `{}` runs {}, not {}",
            inst.name,
            running.display(),
            given.display()
        );
    }
}

/// Why the state segment could not be read, in an operator's words.
fn unreadable(inst: &config::Instance, e: &ham_core::segment::SegmentError) -> String {
    use ham_core::segment::SegmentError;
    match e {
        SegmentError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            format!(
                "permission denied reading instance `{}`'s state segment: only root, the user \
                 ham runs as and members of its client_group may",
                inst.name
            )
        }
        SegmentError::NotFound { .. } => format!("instance `{}` is not running ({e})", inst.name),
        _ => format!("cannot read instance `{}`'s state: {e}", inst.name),
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("{}", usage_error(&HAMCTL, msg));
    ExitCode::from(exit::USAGE as u8)
}
