//! `ham-client` — the SDK from the shell: heartbeats, detector events, subscriptions.
//! What `systemd-notify` is to sd_notify, for scripts and tests.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ham_detector_sdk::{Client, Location};
use ham_guardian::exit;

use ham_guardian::cli::{Generate, HAM_CLIENT, negative_number, usage_error};

fn usage(why: &str) -> ExitCode {
    eprintln!("{}", usage_error(&HAM_CLIENT, why));
    ExitCode::from(exit::USAGE as u8)
}

/// The command line: options anywhere (`--period 1s` or `--period=1s`), the rest in order.
#[derive(Default)]
struct Args {
    config: Option<PathBuf>,
    period: Option<String>,
    low: Option<String>,
    high: Option<String>,
    beats: Option<String>,
    count: Option<String>,
    signal: Option<String>,
    entity: Option<String>,
    shared: bool,
    durable: bool,
    wait: Option<String>,
    ack: bool,
    generate: Option<Generate>,
    words: Vec<String>,
}

fn parse_args() -> Result<Args, lexopt::Error> {
    use lexopt::prelude::*;
    let mut a = Args::default();
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Short('h') | Long("help") => {
                println!("{}", HAM_CLIENT.usage());
                std::process::exit(exit::OK);
            }
            Short('V') | Long("version") => {
                println!("ham-client {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(exit::OK);
            }
            Long("man") => a.generate = Some(Generate::Man),
            Long("completions") => a.generate = Some(Generate::Completions(p.value()?.string()?)),
            Short('c') | Long("config") => a.config = Some(p.value()?.into()),
            Long("period") => a.period = Some(p.value()?.string()?),
            Long("low") => a.low = Some(p.value()?.string()?),
            Long("high") => a.high = Some(p.value()?.string()?),
            Long("beats") => a.beats = Some(p.value()?.string()?),
            Long("count") => a.count = Some(p.value()?.string()?),
            Long("signal") => a.signal = Some(p.value()?.string()?),
            Long("entity") => a.entity = Some(p.value()?.string()?),
            Long("shared") => a.shared = true,
            Long("durable") => a.durable = true,
            Long("wait") => a.wait = Some(p.value()?.string()?),
            Long("ack") => a.ack = true,
            // A negative number (a raise's VALUE) is a word, not an option.
            Short(d) if d.is_ascii_digit() => a.words.push(negative_number(&mut p, d)?),
            Value(v) => a.words.push(v.string()?),
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let mut a = match parse_args() {
        Ok(a) => a,
        Err(e) => return usage(&e.to_string()),
    };
    if let Some(g) = &a.generate {
        return match g.render(&HAM_CLIENT) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => usage(&e),
        };
    }
    let location = match &a.config {
        None => None,
        Some(file) => match Location::from_config(file) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("ham-client: {e}");
                return ExitCode::from(exit::FAILED as u8);
            }
        },
    };
    let args = std::mem::take(&mut a.words);
    if args.is_empty() {
        return usage("no command");
    }
    let client = match location.map_or_else(Client::connect, |l| Client::connect_to(&l)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ham-client: {e}");
            return ExitCode::from(exit::UNAVAILABLE as u8);
        }
    };
    let result = match (args[0].as_str(), args.len()) {
        ("heartbeat", 2) => {
            let Some(period) = a.period.as_deref() else {
                return usage("heartbeat needs --period");
            };
            let period = match ham_core::duration::parse_ns(period) {
                Ok(ns) => Duration::from_nanos(ns),
                Err(e) => return usage(&format!("--period: {e}")),
            };
            let num = |v: &Option<String>, d: u64| v.as_deref().map_or(Ok(d), str::parse::<u64>);
            let (Ok(low), Ok(high), Ok(beats)) =
                (num(&a.low, 3), num(&a.high, 0), num(&a.beats, u64::MAX))
            else {
                return usage("--low, --high and --beats take numbers");
            };
            match client.attach_self(&args[1], period, low as u32, high as u32) {
                Ok(hb) => {
                    println!("attached slot {}", hb.slot());
                    let _ = std::io::stdout().flush();
                    let mut n = 0;
                    while n < beats {
                        hb.beat();
                        n += 1;
                        std::thread::sleep(period);
                    }
                    println!("stopped beating after {n} beats");
                    let _ = std::io::stdout().flush();
                    loop {
                        std::thread::park();
                    }
                }
                Err(e) => Err(e),
            }
        }
        ("raise", 3..=5) => {
            let sev = args.get(3).map_or(Ok(0), |s| s.parse::<u32>());
            let val = args.get(4).map_or(Ok(0), |s| s.parse::<i64>());
            let (Ok(sev), Ok(val)) = (sev, val) else {
                return usage("SEVERITY and VALUE are numbers");
            };
            client.raise(&args[1], &args[2], sev, val)
        }
        ("state", 4) => {
            let (Ok(from), Ok(to)) = (args[2].parse::<u32>(), args[3].parse::<u32>()) else {
                return usage("FROM and TO are numbers");
            };
            client.state(&args[1], from, to)
        }
        ("pss", _) => return pss(&client, &args[1..], &a),
        ("send", 3) => client.send(&args[1], args[2].as_bytes()).map(|_| ()),
        ("recv", 1) => return recv(&client, &a),
        ("ack", 2) => {
            let Ok(id) = args[1].parse::<u64>() else {
                return usage("ack takes a message ID (a number)");
            };
            match own_entity(&a) {
                Some(e) => client.ack(&e, id),
                None => return usage("ack: --entity ENTITY (or run it from an entity)"),
            }
        }
        ("detach", 2) => client.detach(&args[1]),
        ("ready", 2) => client.ready(&args[1]),
        ("define", 2) => match serde_json::from_str::<ham_detector_sdk::Change>(&args[1]) {
            Ok(change) => client.define(change).map(|_| ()),
            Err(e) => return usage(&format!("define: {e}")),
        },
        ("subscribe", 2) => {
            let count = a.count.as_deref().map_or(Ok(u64::MAX), str::parse::<u64>);
            let Ok(count) = count else {
                return usage("--count takes a number");
            };
            let sub = match a.signal.as_deref().map(str::parse::<i32>) {
                None => client.subscribe(&args[1]),
                Some(Ok(sig)) => client.subscribe_signal(&args[1], sig),
                Some(Err(_)) => return usage("--signal takes a signal number"),
            };
            match sub {
                Ok(mut sub) => {
                    println!("subscribed {}", sub.topic());
                    let _ = std::io::stdout().flush();
                    let mut got = 0;
                    let mut r = Ok(());
                    while got < count {
                        match sub.recv() {
                            Ok(n) => {
                                println!(
                                    "{}",
                                    serde_json::to_string(&n).expect("a notification serialises")
                                );
                                let _ = std::io::stdout().flush();
                                got += 1;
                            }
                            Err(e) => {
                                r = Err(e);
                                break;
                            }
                        }
                    }
                    r
                }
                Err(e) => Err(e),
            }
        }
        _ => return usage(&format!("bad command `{}`", args.join(" "))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ham-client: {e}");
            ExitCode::from(exit::FAILED as u8)
        }
    }
}

/// `ham-client pss put|get|delete|list`.
fn pss(client: &Client, words: &[String], a: &Args) -> ExitCode {
    use ham_detector_sdk::{Durability, Scope};
    let Some(entity) = own_entity(a) else {
        return usage("pss: --entity ENTITY (or run it from an entity: $HAM_ENTITY)");
    };
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    if (a.shared || a.durable) && words.first() != Some(&"put") {
        return usage("--shared and --durable go with pss put");
    }
    let failed = |e: ham_detector_sdk::Error| {
        eprintln!("ham-client: {e}");
        ExitCode::from(exit::FAILED as u8)
    };
    match words.as_slice() {
        ["put", key, value] => {
            let scope = if a.shared {
                Scope::Shared
            } else {
                Scope::Private
            };
            let durability = if a.durable {
                Durability::Durable
            } else {
                Durability::Volatile
            };
            match client
                .pss(&entity)
                .and_then(|s| s.put(key, value.as_bytes(), scope, durability))
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failed(e),
            }
        }
        ["get", key] => match client.pss_read(&entity, Some(key)) {
            Ok(items) => match items.first() {
                Some(it) => {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&it.value);
                    let _ = out.flush();
                    ExitCode::SUCCESS
                }
                None => ExitCode::from(exit::FAILED as u8),
            },
            // Absent is exit 1 without a word on stderr: scripts test for it.
            Err(ham_detector_sdk::Error::Refused {
                errno: Some(libc::ENOENT),
                ..
            }) => ExitCode::from(exit::FAILED as u8),
            Err(e) => failed(e),
        },
        ["delete", key] => match client.pss(&entity).and_then(|s| s.delete(key)) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(exit::FAILED as u8),
            Err(e) => failed(e),
        },
        ["list"] => match client.pss_read(&entity, None) {
            Ok(items) => {
                for it in items {
                    println!(
                        "{}\t{}\t{}\t{}",
                        it.key,
                        if it.shared { "shared" } else { "private" },
                        if it.durable { "durable" } else { "volatile" },
                        it.value.len()
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => failed(e),
        },
        _ => usage("pss put KEY VALUE [--shared] [--durable] | get KEY | delete KEY | list"),
    }
}

/// The entity a `pss` or `recv` command is about: `--entity`, else this process's.
fn own_entity(a: &Args) -> Option<String> {
    a.entity
        .clone()
        .or_else(|| std::env::var("HAM_ENTITY").ok())
}

/// `ham-client recv [--wait DURATION] [--ack]`: `ID<TAB>DELIVERIES<TAB>MESSAGE`.
fn recv(client: &Client, a: &Args) -> ExitCode {
    let Some(entity) = own_entity(a) else {
        return usage("recv: --entity ENTITY (or run it from an entity: $HAM_ENTITY)");
    };
    let wait = match a.wait.as_deref().map(ham_core::duration::parse_ns) {
        None => Duration::ZERO,
        Some(Ok(ns)) => Duration::from_nanos(ns),
        Some(Err(e)) => return usage(&format!("--wait: {e}")),
    };
    match client.recv(&entity, wait) {
        Ok(Some(m)) => {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "{}\t{}\t", m.id, m.deliveries);
            let _ = out.write_all(&m.data);
            let _ = writeln!(out);
            let _ = out.flush();
            drop(out);
            if a.ack {
                if let Err(e) = client.ack(&entity, m.id) {
                    eprintln!("ham-client: {e}");
                    return ExitCode::from(exit::FAILED as u8);
                }
            }
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::from(exit::FAILED as u8),
        Err(e) => {
            eprintln!("ham-client: {e}");
            ExitCode::from(exit::FAILED as u8)
        }
    }
}
