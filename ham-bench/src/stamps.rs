//! The report FIFO: every child writes `"<id> <pid> <mono_ns>\n"` to it as it starts.
//!
//! The bench holds it open read-write and non-blocking, so a child's open never blocks and
//! never fails for want of a reader, and reads never see end-of-file.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::sys::{self, Result, mono_ns};

/// One report: the process `pid` started at `ns` (CLOCK_MONOTONIC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub pid: i32,
    pub ns: u64,
}

pub struct Stamps {
    file: File,
    buf: Vec<u8>,
    /// Latest report per service (`svc001` is index 0).
    pub slots: Vec<Option<Stamp>>,
}

/// `svcNNN` → NNN − 1.
pub fn index_of(id: &str) -> Option<usize> {
    id.strip_prefix("svc")?
        .parse::<usize>()
        .ok()?
        .checked_sub(1)
}

pub fn service_id(index: usize) -> String {
    format!("svc{:03}", index + 1)
}

impl Stamps {
    pub fn create(path: &Path) -> Result<Self> {
        sys::mkfifo(path).map_err(|e| format!("mkfifo {}: {e}", path.display()))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        // A storm of thousands of services writes thousands of lines at once: a report
        // that finds the FIFO full is lost (the services write non-blocking). 1 MiB holds
        // about 30 000 lines; failing to grow it only makes large runs fragile.
        // SAFETY: F_SETPIPE_SZ on a descriptor we own; no memory is passed.
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
        Ok(Self {
            file,
            buf: Vec::with_capacity(1 << 16),
            slots: Vec::new(),
        })
    }

    /// Forgets every report and expects `n` services.
    pub fn reset(&mut self, n: usize) {
        self.drain();
        self.slots = vec![None; n];
    }

    /// Reads whatever is available, without blocking.
    pub fn drain(&mut self) {
        let mut chunk = [0u8; 16384];
        loop {
            match self.file.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
            }
        }
        let mut start = 0;
        while let Some(nl) = self.buf[start..].iter().position(|&c| c == b'\n') {
            let line = String::from_utf8_lossy(&self.buf[start..start + nl]).into_owned();
            start += nl + 1;
            let mut it = line.split_ascii_whitespace();
            let (Some(id), Some(pid), Some(ns)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            let (Some(i), Ok(pid), Ok(ns)) = (index_of(id), pid.parse(), ns.parse()) else {
                continue;
            };
            if let Some(slot) = self.slots.get_mut(i) {
                *slot = Some(Stamp { pid, ns });
            }
        }
        self.buf.drain(..start);
    }

    /// Waits until `done(slots)` holds or CLOCK_MONOTONIC passes `deadline`; true if it held.
    pub fn wait_for(
        &mut self,
        deadline: u64,
        mut done: impl FnMut(&[Option<Stamp>]) -> bool,
    ) -> Result<bool> {
        loop {
            self.drain();
            if done(&self.slots) {
                return Ok(true);
            }
            let now = mono_ns();
            if now >= deadline {
                return Ok(false);
            }
            sys::check_interrupted()?;
            sys::reap();
            sys::poll_readable(self.file.as_raw_fd(), (deadline - now).min(50_000_000));
        }
    }

    /// Waits until every service has reported (`timeout_s`), or fails saying how many did.
    pub fn wait_all(&mut self, timeout_s: u64) -> Result<()> {
        let ok = self.wait_for(mono_ns() + timeout_s * 1_000_000_000, |s| {
            s.iter().all(Option::is_some)
        })?;
        if ok {
            Ok(())
        } else {
            let up = self.slots.iter().filter(|s| s.is_some()).count();
            Err(format!(
                "only {up} of {} services reported within {timeout_s} s",
                self.slots.len()
            ))
        }
    }

    pub fn pids(&self) -> Vec<i32> {
        self.slots.iter().flatten().map(|s| s.pid).collect()
    }
}
