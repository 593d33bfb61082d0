//! `ham-bench`: ham side by side with a bare restart loop (the floor) and, where installed,
//! s6, runit and supervisord — all measured in the same run, from the outside, the way the
//! peers' harness (`../shared/bench-peers` beside the repository) measures them.
//!
//! ```text
//! cargo build --release -p ham-bench -p ham-guardian
//! cargo run --release -p ham-bench -- [--quick] [--json FILE] [--keep] [SCENARIO...]
//! ```
//! SCENARIO is any of `restart_latency restart_storm takeover footprint idle` (default: all).
//! `--quick`: 20 services, 40 kills, 2 storms, 10 takeover kills of each kind, 3 s idle
//! (under a minute). Full: 100 services, 200 kills, 5 storms, 100 + 100 takeover kills, 30 s
//! idle (a few minutes). `--keep` keeps the work directory (configs, supervisor logs).
//!
//! # Method
//! * **Service** (`ham-bench-child`, src/child.rs): the first statement of its C `main` reads
//!   CLOCK_MONOTONIC; it then writes `"<id> <pid> <ns>\n"` to a FIFO the bench holds open and
//!   `pause()`s. Every system runs this same binary (s6 and runit through a `./run` symlink,
//!   taking the id from the service directory). It is a dynamically linked Rust binary, so its
//!   loader time is in every figure alike; compare ratios, not absolutes, with the C peers'.
//! * **restart_latency**: the bench stamps CLOCK_MONOTONIC just before `kill(pid, SIGKILL)`;
//!   latency = the replacement's own stamp − that stamp. Victims go round robin over the
//!   services; each has been up ≥ 1.1 s (clear of the peers' 1 s throttles) and the previous
//!   restart is ≥ 10 ms old.
//! * **restart_storm**: all services SIGKILLed in one loop; time until the last replacement
//!   stamped.
//! * **takeover** (ham only): (a) the HAM and one entity SIGKILLed back to back → that entity's
//!   replacement stamp (the Guardian noticed, promoted itself and supervises again);
//!   (b) the HAM SIGKILLed → the state segment's header names a new Guardian that is alive
//!   (header polled every ~20 µs through a read-only mapping). Before each kill the pair must
//!   be complete — HAM and Guardian alive, every entity running the process that last
//!   reported — and stay so for 50 ms. Any entity that got a new process without having been
//!   killed is reported as a problem (a takeover re-adopts them, pids unchanged).
//! * **footprint**: RSS and PSS from `/proc/PID/smaps_rollup`, summed over the supervisor's own
//!   processes (ham: HAM + Guardian; bare: its one process; s6: s6-svscan + s6-supervise;
//!   runit: runsvdir + runsv; supervisord: its process), with 1 and with 100 services.
//! * **idle**: over 30 s with 100 idle services: voluntary + involuntary context switches
//!   (wake-ups) and utime + stime of the same processes.
//! * **bare** (src/bare.rs): this binary re-executed as a one-process supervisor:
//!   `sigwaitinfo(SIGCHLD)`, `waitpid(-1, WNOHANG)`, `posix_spawn` again at once.
//! * **s6** runs at its minimum throttle (`notification-fd` + `max-death-tally` = 0),
//!   **runit** as `runsvdir -P`, **supervisord** with `startsecs=0`; each only if installed
//!   (`s6-svscan`, `runsvdir`, `supervisord` on $PATH), otherwise reported as "skipped".
//!
//! Everything lives in `$TMPDIR/ham-bench-<pid>/`; ham instances are named `hb<pid>-<k>`.
//! Only processes the bench started (or that those started, checked by executable and by the
//! FIFO in their command line or environment) are signalled, by pid. The bench is a child
//! subreaper, so the processes a killed HAM orphans are reaped. At the end every ham is shut
//! down with `hamctl shutdown`, leftovers are killed and this run's state segments removed.

mod bare;
mod report;
mod scenarios;
mod stamps;
mod sys;
mod systems;

use std::path::PathBuf;
use std::process::ExitCode;

use report::ScenarioResult;
use scenarios::{Params, Problems};
use stamps::Stamps;
use sys::Result;
use systems::{ALL, Ctx};

const SCENARIOS: [&str; 5] = [
    "restart_latency",
    "restart_storm",
    "takeover",
    "footprint",
    "idle",
];

const USAGE: &str = "usage: ham-bench [--quick] [--json FILE] [--keep] [SCENARIO...]
scenarios: restart_latency restart_storm takeover footprint idle (default: all)";

struct Opts {
    quick: bool,
    json: Option<PathBuf>,
    keep: bool,
    scenarios: Vec<&'static str>,
}

fn parse_args(args: &[String]) -> std::result::Result<Opts, String> {
    let mut o = Opts {
        quick: false,
        json: None,
        keep: false,
        scenarios: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--keep" => o.keep = true,
            "--json" => o.json = Some(it.next().ok_or("--json needs a FILE")?.into()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            s => match SCENARIOS.iter().find(|&&x| x == s) {
                Some(&x) if !o.scenarios.contains(&x) => o.scenarios.push(x),
                Some(_) => {}
                None => return Err(format!("unknown argument `{s}`")),
            },
        }
    }
    if o.scenarios.is_empty() {
        o.scenarios = SCENARIOS.to_vec();
    }
    Ok(o)
}

/// Cleans up whatever a run leaves, however it ends.
struct Cleanup<'a> {
    ctx: &'a Ctx,
    keep: bool,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let n = self.ctx.kill_our_services();
        if n > 0 {
            eprintln!("cleanup: killed {n} leftover service process(es)");
        }
        self.ctx.unlink_our_segments();
        sys::reap();
        if self.keep {
            eprintln!("work directory kept: {}", self.ctx.base.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.ctx.base);
        }
    }
}

fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    format!("kernel {}, {cpus} CPUs, {model}", kernel.trim())
}

fn run(o: &Opts) -> Result<bool> {
    sys::install_interrupt_handler();
    sys::become_subreaper();
    let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let bin_dir = me
        .parent()
        .ok_or("no directory for current_exe")?
        .to_owned();
    let base = std::env::temp_dir().join(format!("ham-bench-{}", std::process::id()));
    if base.exists() {
        return Err(format!("{} exists already", base.display()));
    }
    std::fs::create_dir_all(&base).map_err(|e| format!("mkdir {}: {e}", base.display()))?;
    let ctx = match Ctx::new(base.clone(), &bin_dir, me) {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&base);
            return Err(e);
        }
    };
    let _cleanup = Cleanup {
        ctx: &ctx,
        keep: o.keep,
    };
    let mut stamps = Stamps::create(&ctx.fifo)?;
    let p = Params::new(o.quick);
    let mode = if o.quick { "quick" } else { "full" };
    let header = format!(
        "ham-bench ({mode}): {}\nham {}\nwork dir {}\nsystems: {}",
        machine(),
        ctx.ham.display(),
        ctx.base.display(),
        ALL.iter()
            .map(|k| match k.available() {
                Ok(()) => k.name().to_owned(),
                Err(why) => format!("{} (skipped: {why})", k.name()),
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!("{header}");
    let started = sys::mono_ns();
    let mut problems = Problems::default();
    let mut results: Vec<(ScenarioResult, usize)> = Vec::new();
    let want = |s: &str| o.scenarios.contains(&s);
    for &sc in &o.scenarios {
        let r: Vec<(ScenarioResult, usize)> = match sc {
            "restart_latency" | "restart_storm" => {
                // Both come from the same instances; run them once, at the first of the two.
                if results
                    .iter()
                    .any(|(r, _)| r.scenario.starts_with("restart_"))
                {
                    continue;
                }
                scenarios::restart(
                    &ctx,
                    &mut stamps,
                    &p,
                    want("restart_latency"),
                    want("restart_storm"),
                    &mut problems,
                )?
                .into_iter()
                .map(|r| (r, p.n))
                .collect()
            }
            "takeover" => vec![(
                scenarios::takeover(&ctx, &mut stamps, &p, &mut problems)?,
                p.n,
            )],
            "footprint" => vec![(scenarios::footprint(&ctx, &mut stamps, &mut problems)?, 100)],
            "idle" => vec![(scenarios::idle(&ctx, &mut stamps, &p, &mut problems)?, 100)],
            _ => unreachable!("checked in parse_args"),
        };
        for (res, _) in &r {
            println!("{}", res.to_table());
        }
        results.extend(r);
    }
    // Keep the order the scenarios were asked in (latency before storm).
    results.sort_by_key(|(r, _)| SCENARIOS.iter().position(|s| *s == r.scenario));

    println!("==================== summary ====================");
    println!("{header}");
    println!(
        "elapsed {:.1} s\n",
        sys::ms(sys::mono_ns() - started) / 1000.0
    );
    for (r, _) in &results {
        println!("{}", r.to_table());
    }
    if problems.0.is_empty() {
        println!("problems seen in ham: none");
    } else {
        println!("problems seen in ham:");
        for pr in &problems.0 {
            println!("  - {pr}");
        }
    }
    if let Some(path) = &o.json {
        let list: Vec<serde_json::Value> =
            results.iter().map(|(r, n)| r.to_json(mode, *n)).collect();
        let text = serde_json::to_string_pretty(&serde_json::Value::Array(list))
            .map_err(|e| format!("json: {e}"))?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("JSON written to {}", path.display());
    }
    Ok(problems.0.is_empty())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("__bare-sup") {
        let (Some(n), Some(child), Some(fifo)) = (
            args.get(1).and_then(|n| n.parse().ok()),
            args.get(2),
            args.get(3),
        ) else {
            eprintln!("usage: ham-bench __bare-sup N CHILD FIFO");
            return ExitCode::from(2);
        };
        bare::run(n, child.as_ref(), fifo.as_ref());
    }
    let opts = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ham-bench: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ham-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
