//! Chaos: SIGKILLs at random moments of the HAM, the Guardian and the entities.
//!
//! `HAM_CHAOS_SEED` replays a run (the seed is printed); `HAM_CHAOS_KILLS` (default 200)
//! makes it a long soak. The pair is never killed both at once (that is a warm start, tested
//! on its own): the HAM is killed only while its Guardian runs, and the other way round.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::util::*;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn live_pid(s: &Value, who: &str) -> Option<i32> {
    (s[who]["alive"] == true).then(|| s[who]["pid"].as_i64().unwrap() as i32)
}

#[test]
fn chaos_kills_end_in_one_process_per_entity_and_matching_counters() {
    let seed = std::env::var("HAM_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| ham_guardian::unix_ns() | 1);
    let kills: u32 = std::env::var("HAM_CHAOS_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    eprintln!("chaos: HAM_CHAOS_SEED={seed} HAM_CHAOS_KILLS={kills}");
    let mut rng = Rng(seed);
    let names = ["e0", "e1", "e2", "e3"];
    // Restarted at once however often they die (the default switch policy would hold them
    // off after 5 exits in 2 minutes; that policy has its own tests).
    let body: String = names
        .iter()
        .map(|n| {
            format!(
                "{}\npolicy = {{ kind = \"immediate\" }}\n\n",
                sleeper(n).trim_end()
            )
        })
        .collect();
    let ham = Ham::start("chaos", &body);
    ham.wait_for("all running", |s| names.iter().all(|n| running(s, n)));

    let mut expected: HashMap<&str, u64> = names.iter().map(|n| (*n, 0)).collect();
    let mut killed = std::collections::HashSet::new();
    let (mut ham_kills, mut guardian_kills) = (0, 0);
    let mut done = 0;
    let mut pair_gone_since: Option<std::time::Instant> = None;
    while done < kills {
        let s = ham.status();
        let (h, g) = (live_pid(&s, "ham"), live_pid(&s, "guardian"));
        // The pair may be between a death and a takeover, never gone for long.
        if h.is_none() && g.is_none() {
            let since = *pair_gone_since.get_or_insert_with(std::time::Instant::now);
            assert!(
                since.elapsed() < DEADLINE,
                "seed {seed}: no HAM and no Guardian for {DEADLINE:?}: {s}\n{}",
                ham.stderr()
            );
            continue;
        }
        pair_gone_since = None;
        let roll = rng.below(10);
        let killed = if roll < 2 {
            // The HAM, only while a Guardian stands by.
            match (h, g) {
                (Some(h), Some(_)) if kill_and_wait(h) => {
                    ham_kills += 1;
                    true
                }
                _ => false,
            }
        } else if roll < 4 {
            match (h, g) {
                (Some(_), Some(g)) if kill_and_wait(g) => {
                    guardian_kills += 1;
                    true
                }
                _ => false,
            }
        } else {
            let name = names[rng.below(names.len() as u64) as usize];
            // Only the live process of that entity, checked through its environment, and
            // not one killed already (a process that is still exiting is still listed: a
            // second kill of it is no second death).
            let procs = entity_processes(&ham.name, name);
            match procs.as_slice() {
                [pid]
                    if start_time(*pid).is_some_and(|st| killed.insert((*pid, st)))
                        && nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(*pid),
                            nix::sys::signal::Signal::SIGKILL,
                        )
                        .is_ok() =>
                {
                    *expected.get_mut(name).unwrap() += 1;
                    true
                }
                _ => false,
            }
        };
        if killed {
            done += 1;
        }
        // Random moments: from back-to-back to a few milliseconds apart.
        std::thread::sleep(Duration::from_micros(rng.below(8_000)));
    }
    eprintln!(
        "chaos: {ham_kills} HAM kills, {guardian_kills} guardian kills, entity kills {expected:?}"
    );

    let s = ham.wait_for(
        "every entity running with the restarts its kills caused",
        |s| {
            s["ham"]["alive"] == true
                && s["guardian"]["alive"] == true
                && names.iter().all(|n| {
                    running(s, n) && entity(s, n)["restarts"].as_u64() == Some(expected[n])
                })
        },
    );
    for n in names {
        let procs = entity_processes_n(&ham.name, n, 1);
        assert_eq!(
            procs,
            vec![pid_of(&s, n)],
            "seed {seed}: processes of {n}: {s}"
        );
    }
    // No zombie left under the pair.
    let (h, g) = (
        live_pid(&s, "ham").unwrap(),
        live_pid(&s, "guardian").unwrap(),
    );
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if f.first() == Some(&"Z") {
            let ppid: i32 = f[1].parse().unwrap();
            assert!(
                ppid != h && ppid != g,
                "seed {seed}: zombie {stat} under the pair"
            );
        }
    }
    eprintln!(
        "chaos: ham failures {}, guardian failures {}",
        s["ham"]["failures"], s["guardian"]["failures"]
    );
}
