//! `ham` — the supervisor. See the README for the configuration and exit codes.

use std::process::ExitCode;

use ham_guardian::cli::{self, ham::Mode};
use ham_guardian::{config, daemon::Daemon, exit};

fn main() -> ExitCode {
    // A Guardian, as its HAM starts it: what it needs is in its environment.
    if let Some(v) = std::env::var_os(ham_guardian::guardian::ENV) {
        let Some((path, pid, start)) = v.to_str().and_then(ham_guardian::guardian::parse_env)
        else {
            eprintln!("ham: {} is malformed", ham_guardian::guardian::ENV);
            return ExitCode::from(exit::USAGE as u8);
        };
        ham_guardian::sys::raise_nofile();
        return ExitCode::from(ham_guardian::guardian::run(path, pid, start) as u8);
    }
    let mode = match cli::ham::parse(std::env::args_os().skip(1), std::env::var_os("HAM_CONFIG")) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{}", cli::usage_error(&cli::HAM, &e));
            return ExitCode::from(exit::USAGE as u8);
        }
    };
    // Before anything opens a descriptor: ham holds one per entity (and per connection).
    ham_guardian::sys::raise_nofile();
    let mut wait = false;
    let (path, check) = match mode {
        Mode::Help => {
            println!("{}", cli::HAM.usage());
            return ExitCode::SUCCESS;
        }
        Mode::Version => {
            println!("ham {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Mode::Layouts => {
            let mut all = vec![ham_core::layout::LAYOUT_VERSION];
            all.extend_from_slice(ham_core::layout::MIGRATES_FROM);
            let words: Vec<String> = all.iter().map(u32::to_string).collect();
            println!("{}", words.join(" "));
            return ExitCode::SUCCESS;
        }
        Mode::Generate(g) => {
            return match g.to_generate().render(&cli::HAM) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}", cli::usage_error(&cli::HAM, &e));
                    ExitCode::from(exit::USAGE as u8)
                }
            };
        }
        Mode::Run(p) => (p, false),
        Mode::RunWhenGone(p) => {
            wait = true;
            (p, false)
        }
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
    if wait {
        match ham_guardian::respawned::wait(&cfg) {
            Ok(ham_guardian::respawned::Waited::Free) => {}
            Ok(ham_guardian::respawned::Waited::ShutDown) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ham: {e}");
                return ExitCode::from(exit::UNAVAILABLE as u8);
            }
        }
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
