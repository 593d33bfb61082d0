//! `ham-bench`: ham side by side with a bare restart loop (the floor) and, where installed,
//! s6, runit and supervisord — all measured in the same run, from the outside, the way the
//! peers' harness (`../shared/bench-peers` beside the repository) measures them — and the
//! detector SDK's costs against same-run baselines.
//!
//! ```text
//! cargo build --release -p ham-bench -p ham-guardian
//! cargo run --release -p ham-bench -- [--quick] [--json FILE] [--keep] [SCENARIO...]
//! ```
//! SCENARIO is any of `restart_latency restart_storm takeover footprint idle heartbeat_cost
//! ring_throughput ring_latency heartbeat_miss_delay` (default: all).
//! `--quick`: 10 services, 6 kills, 1 storm, 5 takeover kills of each kind, 1 s idle, the
//! footprint at 100 services only, short settling; SDK:
//! 20 beat batches, 20 000 ring events per producer × 2, 100 latency samples, 100 heartbeating
//! entities with 10 misses. Full: 100 services, 400 kills and 10 storms (in 5 rounds, the
//! systems taking turns), 100 + 100 takeover kills,
//! 30 s idle; SDK: 100 batches, 100 000 events per producer × 5, 500 samples, 1000 entities
//! with 40 misses. `--keep` keeps the work directory (configs, supervisor logs).
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
//!   (wake-ups) and utime + stime of the same processes. For ham every service is attached
//!   with a heartbeat (`attach_pid`, period 1 s, missed-low after 3 periods) that a thread of
//!   the bench beats once a period per service, service i at i/100 of the period (as
//!   independent processes would); the bench's own wake-ups are not counted. The peers have
//!   no heartbeats.
//! * **bare** (src/bare.rs): this binary re-executed as a one-process supervisor:
//!   `sigwaitinfo(SIGCHLD)`, `waitpid(-1, WNOHANG)`, `posix_spawn` again at once.
//! * **s6** runs at its minimum throttle (`notification-fd` + `max-death-tally` = 0),
//!   **runit** as `runsvdir -P`, **supervisord** with `startsecs=0`; each only if installed
//!   (`s6-svscan`, `runsvdir`, `supervisord` on $PATH), otherwise reported as "skipped".
//!
//! The SDK scenarios (src/sdk.rs) run ham with `attach_only` entities and the bench as the
//! SDK client (`ham_detector_sdk::Client`); no peer has such a library, so each brings its
//! own same-run baseline. Entities the bench attached its own pid to are detached before the
//! ham is shut down (ham's shutdown would otherwise send the bench the stop signal).
//! * **heartbeat_cost** (ns): batches of 10 000 `Heartbeat::beat()` (one atomic store of
//!   CLOCK_MONOTONIC into the bench's slot of an attached entity) timed together; per-op =
//!   batch time / 10 000. Baseline `sd_notify`: `sendto("WATCHDOG=1")` on one unbound
//!   datagram socket to a bound one with SO_PASSCRED that a thread drains — the datagram
//!   systemd's sd_notify sends, without the socket it also opens and closes per call.
//! * **ring_throughput** (events/s): 1, 2 and 4 producer threads (one `Client` each) push
//!   M events each with `Client::raise` on an entity with no `raise` condition; time from
//!   the first push until the ring's `tail` (hidden `Client::ring_position`) has passed them
//!   all. A full ring is retried after `yield` (counted as `full_retries`). A tail that stays
//!   put for 2 s with events waiting fails the run (next run on a new ham). ham's ring
//!   counters (state segment) must show 0 rejected, 0 abandoned, and every event consumed.
//!   Ratios `ham-2p/ham-1p`, `ham-4p/ham-1p`.
//! * **ring_latency** (µs): with the consumer asleep, note `head`, stamp, `raise` one event,
//!   poll (`sched_yield` between looks) until `tail > head`; ≥ 3 ms between samples, so each
//!   one rings the futex doorbell
//!   (the producers' wake-up counter is checked). `ham`: the HAM (doorbell thread → eventfd →
//!   its epoll loop); `bare`: a consumer thread of the bench asleep on the same kind of futex
//!   doorbell of a ring of its own, draining with ham-core's `Consumer`.
//! * **heartbeat_miss_delay** (ms): N `attach_only` entities (1000; quick 100), each with a
//!   `heartbeat-missed-low` condition whose action is `notify` on topic `miss`, all attached
//!   to the bench's pid (period 50 ms, missed-low after 2) and beaten every 10 ms by a
//!   thread; the bench subscribes to `miss`. One entity at a time stops being beaten: the
//!   bench stamps just before its last beat (T); delay = the notification's arrival (stamped
//!   by the subscriber thread) − (T + 2 × 50 ms). Then it beats again (a new episode) and the
//!   next entity stops. Notifications for entities still beating are reported as problems.
//!
//! Everything lives in `$TMPDIR/ham-bench-<pid>/`; ham instances are named `hb<pid>-<k>`.
//! Only processes the bench started (or that those started, checked by executable and by the
//! FIFO in their command line or environment) are signalled, by pid. The bench is a child
//! subreaper, so the processes a killed HAM orphans are reaped. At the end every ham is shut
//! down with `hamctl shutdown`, leftovers are killed and this run's state and client
//! segments removed.

mod bare;
mod cluster;
mod compare;
mod mts;
mod plot;
mod pss;
mod report;
mod scale;
mod scenarios;
mod sdk;
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

const SCENARIOS: [&str; 15] = [
    "restart_latency",
    "restart_storm",
    "takeover",
    "footprint",
    "idle",
    "heartbeat_cost",
    "ring_throughput",
    "ring_latency",
    "heartbeat_miss_delay",
    "storm_ping",
    "storm_restart",
    "pss_put",
    "mts_roundtrip",
    "cluster_failover",
    "scale",
];

const USAGE: &str =
    "usage: ham-bench [--quick] [--json FILE] [--keep] [--dynamic-child] [--plot DIR] [SCENARIO...]
       ham-bench --compare OLD.json NEW.json [--noise A.json B.json]
scenarios: restart_latency restart_storm takeover footprint idle heartbeat_cost
           ring_throughput ring_latency heartbeat_miss_delay storm_ping storm_restart
           pss_put mts_roundtrip cluster_failover scale (default: all)
--dynamic-child: the services are the dynamically linked Rust ham-bench-child, not the
                 static C one (compiled with cc -static at start)
--plot DIR:      the scale scenario's curves as SVG files in DIR";

struct Opts {
    quick: bool,
    json: Option<PathBuf>,
    keep: bool,
    dynamic_child: bool,
    compare: Option<(PathBuf, PathBuf)>,
    noise: Option<(PathBuf, PathBuf)>,
    plot: Option<PathBuf>,
    scenarios: Vec<&'static str>,
}

fn parse_args(args: &[String]) -> std::result::Result<Opts, String> {
    let mut o = Opts {
        quick: false,
        json: None,
        keep: false,
        dynamic_child: false,
        compare: None,
        noise: None,
        plot: None,
        scenarios: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--keep" => o.keep = true,
            "--dynamic-child" => o.dynamic_child = true,
            "--plot" => o.plot = Some(it.next().ok_or("--plot needs a DIR")?.into()),
            "--compare" => {
                let old = it.next().ok_or("--compare needs OLD.json NEW.json")?;
                let new = it.next().ok_or("--compare needs OLD.json NEW.json")?;
                o.compare = Some((old.into(), new.into()));
            }
            "--noise" => {
                let a = it.next().ok_or("--noise needs A.json B.json")?;
                let b = it.next().ok_or("--noise needs A.json B.json")?;
                o.noise = Some((a.into(), b.into()));
            }
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
    if o.noise.is_some() && o.compare.is_none() {
        return Err("--noise goes with --compare".into());
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
    // scale's 10,000 entities: ham's pidfds with room to spare (where we may raise it).
    let nofile = sys::raise_nofile_hard(65_536);
    eprintln!("RLIMIT_NOFILE hard limit for the supervisors: {nofile}");
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
    let ctx = match Ctx::new(base.clone(), &bin_dir, me, !o.dynamic_child) {
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
            "footprint" => vec![(
                scenarios::footprint(&ctx, &mut stamps, &p, &mut problems)?,
                100,
            )],
            "idle" => vec![(scenarios::idle(&ctx, &mut stamps, &p, &mut problems)?, 100)],
            "storm_ping" | "storm_restart" => {
                // Both come from the same instances; run them once.
                if results
                    .iter()
                    .any(|(r, _)| r.scenario.starts_with("storm_"))
                {
                    continue;
                }
                scenarios::storm_service(&ctx, &mut stamps, &p, &mut problems)?
                    .into_iter()
                    .filter(|r| want(r.scenario))
                    .map(|r| (r, 1))
                    .collect()
            }
            "heartbeat_cost" => vec![(sdk::heartbeat_cost(&ctx, &p, &mut problems)?, 1)],
            "ring_throughput" => vec![(sdk::ring_throughput(&ctx, &p, &mut problems)?, 1)],
            "ring_latency" => vec![(sdk::ring_latency(&ctx, &p, &mut problems)?, 1)],
            "heartbeat_miss_delay" => vec![(
                sdk::heartbeat_miss_delay(&ctx, &p, &mut problems)?,
                p.miss_entities,
            )],
            "pss_put" => vec![(pss::pss_put(&ctx, &p, &mut problems)?, 1)],
            "mts_roundtrip" => vec![(mts::mts_roundtrip(&ctx, &p, &mut problems)?, 1)],
            "cluster_failover" => vec![(cluster::cluster_failover(&ctx, &p, &mut problems)?, 1)],
            "scale" => {
                let (res, points) = scale::scale(&ctx, &mut stamps, &p, &mut problems)?;
                if let Some(dir) = &o.plot {
                    for f in plot::write_all(dir, &points)? {
                        eprintln!("  plot written: {f}");
                    }
                }
                vec![(res, 1)]
            }
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
    if args.first().map(String::as_str) == Some("__bare-consumer") {
        let Some(seg) = args.get(1) else {
            eprintln!("usage: ham-bench __bare-consumer SEGMENT [BELL_FD]");
            return ExitCode::from(2);
        };
        sdk::bare_consumer_process(seg, args.get(2));
    }
    if args.first().map(String::as_str) == Some("__relay") {
        mts::relay();
    }
    let opts = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ham-bench: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Some((old, new)) = &opts.compare {
        let noise = opts.noise.as_ref().map(|(a, b)| (a.as_path(), b.as_path()));
        return match compare::run(old, new, noise) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("ham-bench: {e}");
                ExitCode::from(2)
            }
        };
    }
    match run(&opts) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ham-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
