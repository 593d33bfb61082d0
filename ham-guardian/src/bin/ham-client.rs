//! `ham-client` — the SDK from the shell: heartbeats, detector events, subscriptions.
//! What `systemd-notify` is to sd_notify, for scripts and tests.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use ham_detector_sdk::{Client, Location};

const USAGE: &str = "\
usage: ham-client [-c|--config FILE] COMMAND
commands:
  heartbeat ENTITY --period DURATION [--low N] [--high N] [--beats N]
                        attach this process to ENTITY and beat every period; after N
                        beats (default: never) stop beating and wait to be killed
  raise ENTITY CLASS [SEVERITY [VALUE]]
                        a detector event through the ring
  state ENTITY FROM TO  a state change through the ring
  detach ENTITY         end this process's attachment
  ready ENTITY          this process (ENTITY's) is ready: entities `after` it may start
  define JSON           a run-time definition (a JSON `Change`, as the control protocol has it)
  subscribe TOPIC [--count N] [--signal SIGNUM]
                        print each notification on TOPIC (`*`: all) as a JSON line;
                        with --signal, ham also sends this process SIGNUM for each
FILE defaults to the instance this process was started by, then $HAM_CONFIG, then
/etc/ham/ham.toml. exit codes: 0 ok, 1 refused or failed, 2 usage, 3 ham not reachable";

fn usage(why: &str) -> ExitCode {
    eprintln!("ham-client: {why}\n{USAGE}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut location = None;
    if matches!(args.first().map(String::as_str), Some("-c" | "--config")) {
        if args.len() < 2 {
            return usage("-c needs a file");
        }
        let file = args.remove(1);
        args.remove(0);
        match Location::from_config(std::path::Path::new(&file)) {
            Ok(l) => location = Some(l),
            Err(e) => {
                eprintln!("ham-client: {e}");
                return ExitCode::from(1);
            }
        }
    }
    if args.is_empty() || args[0] == "-h" || args[0] == "--help" {
        return usage("no command");
    }
    let client = match location.map_or_else(Client::connect, |l| Client::connect_to(&l)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ham-client: {e}");
            return ExitCode::from(3);
        }
    };
    let flag = |name: &str| -> Option<String> {
        args.iter()
            .position(|a| a == name)
            .and_then(|p| args.get(p + 1).cloned())
    };
    let result = match (args[0].as_str(), args.len()) {
        ("heartbeat", n) if n >= 2 => {
            let Some(period) = flag("--period") else {
                return usage("heartbeat needs --period");
            };
            let period = match ham_core::duration::parse_ns(&period) {
                Ok(ns) => Duration::from_nanos(ns),
                Err(e) => return usage(&format!("--period: {e}")),
            };
            let num = |f: &str, d: u64| flag(f).map_or(Ok(d), |v| v.parse::<u64>());
            let (Ok(low), Ok(high), Ok(beats)) =
                (num("--low", 3), num("--high", 0), num("--beats", u64::MAX))
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
        ("detach", 2) => client.detach(&args[1]),
        ("ready", 2) => client.ready(&args[1]),
        ("define", 2) => match serde_json::from_str::<ham_detector_sdk::Change>(&args[1]) {
            Ok(change) => client.define(change).map(|_| ()),
            Err(e) => return usage(&format!("define: {e}")),
        },
        ("subscribe", n) if n >= 2 => {
            let count = flag("--count").map_or(Ok(u64::MAX), |v| v.parse::<u64>());
            let Ok(count) = count else {
                return usage("--count takes a number");
            };
            let sub = match flag("--signal").map(|s| s.parse::<i32>()) {
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
            ExitCode::from(1)
        }
    }
}
