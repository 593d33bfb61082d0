//! `ham` — the supervisor. See the README for the configuration and exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use ham_guardian::{config, daemon::Daemon, exit};

const USAGE: &str = "\
usage: ham [-c|--config FILE]        run the instance FILE describes
       ham --check-config FILE       validate FILE and exit
       ham -h|--help | -V|--version

FILE defaults to $HAM_CONFIG, then /etc/ham/ham.toml.
exit codes: 0 stopped on request / config valid, 1 invalid config or failure,
            2 usage, 3 system error";

enum Mode {
    Run(PathBuf),
    Check(PathBuf),
    Guardian(PathBuf, i32, u64),
}

fn parse_args() -> Result<Mode, String> {
    let mut args = std::env::args().skip(1);
    let mut config: Option<PathBuf> = None;
    let mut check = false;
    let mut guardian = false;
    let (mut ham_pid, mut ham_start) = (0i32, 0u64);
    while let Some(a) = args.next() {
        match a.as_str() {
            // Internal: how a HAM starts its Guardian (see ham_guardian::handoff).
            "--guardian" => guardian = true,
            "--ham-pid" => {
                ham_pid = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--ham-pid needs a pid")?;
            }
            "--ham-start" => {
                ham_start = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--ham-start needs a start time")?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(exit::OK);
            }
            "-V" | "--version" => {
                println!("ham {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(exit::OK);
            }
            "-c" | "--config" | "--check-config" => {
                check |= a == "--check-config";
                let v = args.next().ok_or_else(|| format!("{a} needs a FILE"))?;
                if config.replace(PathBuf::from(v)).is_some() {
                    return Err("only one configuration file may be given".into());
                }
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    let path = config
        .or_else(|| std::env::var_os("HAM_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG));
    Ok(if guardian {
        Mode::Guardian(path, ham_pid, ham_start)
    } else if check {
        Mode::Check(path)
    } else {
        Mode::Run(path)
    })
}

fn main() -> ExitCode {
    let mode = match parse_args() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("ham: {e}\n{USAGE}");
            return ExitCode::from(exit::USAGE as u8);
        }
    };
    // Before anything opens a descriptor: ham holds one per entity (and per connection).
    ham_guardian::sys::raise_nofile();
    let (path, check) = match mode {
        Mode::Run(p) => (p, false),
        Mode::Check(p) => (p, true),
        Mode::Guardian(p, pid, start) => {
            return ExitCode::from(ham_guardian::guardian::run(p, pid, start) as u8);
        }
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "ham: invalid configuration: {}: cannot read: {e}",
                path.display()
            );
            return ExitCode::from(exit::FAILED as u8);
        }
    };
    let abs = std::path::absolute(&path).unwrap_or(path);
    let cfg = match config::parse(&abs, &text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ham: invalid configuration: {e}");
            return ExitCode::from(exit::FAILED as u8);
        }
    };
    if check {
        println!(
            "{}: valid: instance `{}`, {} entities",
            cfg.path.display(),
            cfg.instance.name,
            cfg.entities.len()
        );
        return ExitCode::SUCCESS;
    }
    let code = match Daemon::start(cfg, text).and_then(Daemon::run) {
        Ok(code) => code,
        Err(e @ ham_guardian::daemon::DaemonError::AlreadyRunning { .. }) => {
            eprintln!("ham: {e}");
            exit::FAILED
        }
        Err(e) => {
            eprintln!("ham: {e}");
            exit::UNAVAILABLE
        }
    };
    ExitCode::from(code as u8)
}
