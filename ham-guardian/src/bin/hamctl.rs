//! `hamctl` — status and control of a running `ham`. See the README for exit codes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ham_guardian::control::{self, Request};
use ham_guardian::{config, exit, mono_ns, status};

const USAGE: &str = "\
usage: hamctl [-c|--config FILE] [--timeout DURATION] COMMAND
commands:
  status [--json|--tree]   entities, pids, restarts, last exits (read from the state segment);
                           --tree: entities → conditions → actions with their flags, as
                           QNX's /proc/ham, and the HAM's and Guardian's failure counts
  start ENTITY             start a stopped entity
  stop ENTITY              stop an entity; it stays stopped
  restart ENTITY           stop then start an entity
  shutdown                 stop every entity and ham itself
  device-restart enable|disable
                           allow or forbid escalations to a device restart
  log [ENTITY] [--json]    the process log: conditions seen and actions taken, newest last
  raise ENTITY CLASS [SEVERITY [VALUE]]
                           a detector's event: fires the entity's matching raise conditions
  ping                     check that ham's loop answers
FILE defaults to $HAM_CONFIG, then /etc/ham/ham.toml. DURATION defaults to 60s.
exit codes: 0 ok, 1 the command failed, 2 usage, 3 ham not reachable";

struct Args {
    config: PathBuf,
    timeout: Duration,
    command: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1).peekable();
    let mut config = None;
    let mut timeout = Duration::from_secs(60);
    let mut command = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(exit::OK);
            }
            "-c" | "--config" => {
                config = Some(PathBuf::from(args.next().ok_or("--config needs a FILE")?));
            }
            "--timeout" => {
                let v = args.next().ok_or("--timeout needs a DURATION")?;
                timeout = Duration::from_nanos(
                    ham_core::duration::parse_ns(&v).map_err(|e| format!("--timeout: {e}"))?,
                );
            }
            _ => command.push(a),
        }
    }
    let config = config
        .or_else(|| std::env::var_os("HAM_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG));
    Ok(Args {
        config,
        timeout,
        command,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => return usage(&e),
    };
    let inst = match config::load_instance(&args.config) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("hamctl: {e}");
            return ExitCode::from(exit::FAILED as u8);
        }
    };
    let words: Vec<&str> = args.command.iter().map(String::as_str).collect();
    let req = match words.as_slice() {
        ["status", "--tree"] => {
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
        ["status"] | ["status", "--json"] => {
            return match status::read(&inst.segment_name(), mono_ns()).map(|mut s| {
                s.look_up_tracking(&inst);
                s
            }) {
                Ok(s) if words.len() == 2 => {
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
                    eprintln!("hamctl: instance `{}` is not running: {e}", inst.name);
                    ExitCode::from(exit::UNAVAILABLE as u8)
                }
            };
        }
        ["log", rest @ ..] if rest.len() <= 2 => {
            let json = rest.contains(&"--json");
            let entity = rest.iter().find(|w| **w != "--json").copied();
            if rest.iter().filter(|w| **w != "--json").count() > 1 {
                return usage("log takes at most one ENTITY");
            }
            return print_log(&inst, entity, json);
        }
        ["start", e] => Request::Start {
            entity: e.to_string(),
        },
        ["stop", e] => Request::Stop {
            entity: e.to_string(),
        },
        ["restart", e] => Request::Restart {
            entity: e.to_string(),
        },
        ["shutdown"] => Request::Shutdown,
        ["raise", e, class, rest @ ..] if rest.len() <= 2 => {
            let severity = match rest.first().map(|s| s.parse::<u32>()) {
                None => 0,
                Some(Ok(s)) => s,
                Some(Err(_)) => return usage("SEVERITY must be a whole number"),
            };
            let value = match rest.get(1).map(|s| s.parse::<i64>()) {
                None => 0,
                Some(Ok(v)) => v,
                Some(Err(_)) => return usage("VALUE must be a whole number"),
            };
            Request::Raise {
                entity: e.to_string(),
                class: class.to_string(),
                severity,
                value,
            }
        }
        ["device-restart", "enable"] => Request::DeviceRestart { enabled: true },
        ["device-restart", "disable"] => Request::DeviceRestart { enabled: false },
        ["ping"] => Request::Ping,
        [] => return usage("no command given"),
        _ => return usage(&format!("unknown command `{}`", args.command.join(" "))),
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
                r.condition,
                r.action,
                r.result
            );
        }
    }
    ExitCode::SUCCESS
}

/// `YYYY-MM-DD HH:MM:SS.mmm` UTC from milliseconds since the Unix epoch.
fn utc(ms: u64) -> String {
    let (secs, milli) = (ms / 1000, ms % 1000);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{milli:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("hamctl: {msg}\n{USAGE}");
    ExitCode::from(exit::USAGE as u8)
}
