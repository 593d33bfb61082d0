//! `[watchdog]`: the HAM's loop feeds a hardware watchdog, a takeover never closes it, a
//! stopped pair stops feeding it, and a clean shutdown disarms it (the magic `V`). The
//! device is a stand-in: a FIFO the test reads, never the machine's watchdog.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::util::*;

/// The watchdog's timeout in the test (fed every third of it).
const TIMEOUT: Duration = Duration::from_secs(1);

/// The read end of the stand-in device.
struct Device(File);

/// What one wait on the device saw.
#[derive(Debug, PartialEq)]
enum Seen {
    Bytes(Vec<u8>),
    /// Every writer closed it.
    Closed,
    /// Nothing within the wait.
    Nothing,
}

impl Device {
    fn open(path: &std::path::Path) -> Device {
        let st = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap();
        assert!(st.success(), "mkfifo {}", path.display());
        // Non-blocking: opening does not wait for a writer, reading does not block.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .unwrap();
        Device(f)
    }

    /// Waits up to `within` for bytes or the last writer's close.
    fn wait(&mut self, within: Duration) -> Seen {
        let end = Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let ts = rustix::time::Timespec::try_from(left).unwrap();
            let fd = self.0.as_fd();
            let mut fds = [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::IN,
            )];
            let n = match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => panic!("poll: {e}"),
            };
            if n == 0 {
                return Seen::Nothing;
            }
            let mut buf = [0u8; 256];
            match self.0.read(&mut buf) {
                Ok(0) => return Seen::Closed,
                Ok(n) => return Seen::Bytes(buf[..n].to_vec()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= end {
                        return Seen::Nothing;
                    }
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Waits for `n` feeds, failing on a close or on silence longer than the deadline.
    fn feeds(&mut self, n: usize, what: &str) {
        let mut got = 0;
        while got < n {
            match self.wait(DEADLINE) {
                Seen::Bytes(b) => {
                    assert!(b.iter().all(|&c| c == b'1'), "{what}: fed {b:?}");
                    got += b.len();
                }
                other => panic!("{what}: {other:?} after {got} feeds"),
            }
        }
    }

    /// Reads whatever is queued now.
    fn drain(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        while let Seen::Bytes(b) = self.wait(Duration::ZERO) {
            all.extend(b);
        }
        all
    }
}

/// Continues the stopped processes when dropped, even if the test failed meanwhile.
struct Stopped(Vec<i32>);

impl Stopped {
    fn new(pids: &[i32]) -> Stopped {
        for &p in pids {
            sigstop(p);
        }
        let s = Stopped(pids.to_vec());
        for &p in pids {
            let start = Instant::now();
            // Field 3 of /proc/PID/stat is the state: `T` once the stop has taken effect.
            while std::fs::read_to_string(format!("/proc/{p}/stat"))
                .map(|s| s.rsplit(") ").next().unwrap_or("").starts_with('T'))
                .ok()
                != Some(true)
            {
                assert!(start.elapsed() < DEADLINE, "pid {p} did not stop");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        s
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        for &p in &self.0 {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), Signal::SIGCONT);
        }
    }
}

fn pair(s: &serde_json::Value) -> (i32, i32) {
    (
        s["ham"]["pid"].as_i64().unwrap() as i32,
        s["guardian"]["pid"].as_i64().unwrap() as i32,
    )
}

#[test]
fn the_watchdog_is_fed_kept_through_takeovers_starved_by_a_stopped_pair_and_disarmed_at_shutdown() {
    let body = format!(
        "[watchdog]\ndevice = \"wd\"\ntimeout = \"{}s\"\n\n{}",
        TIMEOUT.as_secs(),
        sleeper("a")
    );
    let mut ham = Ham::configured("wd", "liveness_timeout = \"250ms\"", &body);
    let mut dev = Device::open(&ham.dir.path().join("wd"));
    ham.spawn(&[]);
    let s = ham.wait_for("a running", |s| running(s, "a"));
    dev.feeds(3, "fed while running");
    assert!(
        ham.stderr().contains("timeout not set"),
        "a FIFO is no watchdog device, and ham says so: {}",
        ham.stderr()
    );

    // HAM killed: the Guardian holds the same open device, so it is never closed (a
    // close here would be `Closed` below), and the promoted HAM feeds it.
    let (h, g) = pair(&s);
    let a = pid_of(&s, "a");
    sigkill(h);
    assert_eq!(ham.wait_exit(), -1);
    let s = ham.wait_for("the guardian promoted, with a new guardian", |s| {
        s["ham"]["pid"] == g && s["guardian"]["alive"] == true
    });
    dev.feeds(3, "fed after the takeover");
    assert_eq!(pid_of(&s, "a"), a);

    // Both stopped: nothing feeds it, and it is still open (a real device would reset the
    // box after its timeout).
    let (h, g) = pair(&s);
    {
        let _stopped = Stopped::new(&[h, g]);
        dev.drain();
        assert_eq!(
            dev.wait(2 * TIMEOUT),
            Seen::Nothing,
            "a stopped pair must not feed the watchdog"
        );
    }
    // Continued: fed again (by the same HAM, or by its Guardian if it fenced the HAM for
    // its silence).
    dev.feeds(2, "fed once the pair runs again");

    // A clean shutdown: the last write is the magic `V`, then every writer has closed it.
    let out = ham.ctl(&["shutdown"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut last = Vec::new();
    loop {
        match dev.wait(DEADLINE) {
            Seen::Bytes(b) => last.extend(b),
            Seen::Closed => break,
            Seen::Nothing => panic!("the device was not closed after the shutdown"),
        }
    }
    assert_eq!(last.last(), Some(&b'V'), "the magic close: {last:?}");
    assert!(
        last.iter().filter(|&&c| c == b'V').count() == 1,
        "one magic close: {last:?}"
    );
    if ham.child.is_some() {
        assert_eq!(ham.wait_exit(), 0);
    }
    assert!(
        ham.stderr().contains("watchdog disarmed"),
        "{}",
        ham.stderr()
    );
}

#[test]
fn a_watchdog_that_cannot_be_opened_stops_the_start_with_its_path() {
    // A FIFO with no reader: the non-blocking open fails (ENXIO) at once, naming the path.
    let body = format!("[watchdog]\ndevice = \"wd\"\n\n{}", sleeper("a"));
    let mut ham = Ham::configured("wdbad", "", &body);
    let st = std::process::Command::new("mkfifo")
        .arg(ham.dir.path().join("wd"))
        .status()
        .unwrap();
    assert!(st.success());
    ham.spawn(&[]);
    assert_ne!(ham.wait_exit(), 0);
    let err = ham.stderr();
    assert!(
        err.contains("opening the watchdog") && err.contains("/wd"),
        "{err}"
    );
}
