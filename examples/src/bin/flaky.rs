//! A service that crashes now and then: it ticks once a second and, at a random moment
//! between 3 and 10 seconds, aborts (SIGABRT) or exits with status 3.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn main() {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.subsec_nanos() as u64 ^ std::process::id() as u64);
    // xorshift: enough randomness for a demo, no dependency.
    let mut x = seed | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    let lifetime = 3 + x % 8;
    println!(
        "flaky[{}]: up; will fail after {lifetime}s",
        std::process::id()
    );
    for t in 1..=lifetime {
        std::thread::sleep(Duration::from_secs(1));
        println!("flaky[{}]: tick {t}", std::process::id());
    }
    if x % 2 == 0 {
        println!("flaky[{}]: aborting", std::process::id());
        std::process::abort();
    }
    println!("flaky[{}]: exiting with status 3", std::process::id());
    std::process::exit(3);
}
