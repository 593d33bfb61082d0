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
}

fn parse_args() -> Result<Mode, String> {
    let mut args = std::env::args().skip(1);
    let mut config: Option<PathBuf> = None;
    let mut check = false;
    while let Some(a) = args.next() {
        match a.as_str() {
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
    Ok(if check {
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
    let (path, check) = match &mode {
        Mode::Run(p) => (p, false),
        Mode::Check(p) => (p, true),
    };
    let cfg = match config::load(path) {
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
    let code = match Daemon::new(cfg).and_then(Daemon::run) {
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
