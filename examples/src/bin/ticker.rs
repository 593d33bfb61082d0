//! A well-behaved service: prints a line every 2 seconds until it is asked to stop
//! (SIGTERM), then exits cleanly with status 0.
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: i32) {
    STOP.store(true, Ordering::Relaxed);
}

fn main() {
    #[allow(unsafe_code)]
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc_signal(15, on_term);
    }
    let me = std::process::id();
    println!("ticker[{me}]: up");
    let mut n = 0u64;
    while !STOP.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        n += 1;
        if n % 10 == 0 {
            println!("ticker[{me}]: still here ({}s)", n / 5);
        }
    }
    println!("ticker[{me}]: SIGTERM received, exiting cleanly");
}

unsafe extern "C" {
    #[link_name = "signal"]
    fn libc_signal(sig: i32, handler: extern "C" fn(i32)) -> usize;
}
