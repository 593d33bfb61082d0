//! The hardware watchdog (`[watchdog]`): NX-OS's last line of defence. The HAM's loop feeds
//! it every third of its timeout; the descriptor is opened once and handed to every
//! Guardian, so a takeover never closes it (closing `/dev/watchdog` without the magic
//! character leaves it counting, and a second open fails with EBUSY). A clean shutdown
//! writes `V` before the last close, which disarms the device; anything else — both
//! processes stopped, wedged or killed — lets it reset the box.

use super::*;

/// The open device and the feed the timer waits for.
pub(super) struct Hw {
    pub(super) fd: OwnedFd,
    pub(super) next: u64,
}

/// Opens the device (write-only, non-blocking: a stand-in FIFO with no reader, or a device
/// another process holds, is refused at once) and sets its timeout.
pub(super) fn open(
    instance: &str,
    w: &crate::config::WatchdogConfig,
) -> Result<OwnedFd, DaemonError> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        &w.device,
        OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(io_ctx(format!(
        "opening the watchdog {}",
        w.device.display()
    )))?;
    let asked = i32::try_from(w.timeout_ns / 1_000_000_000).unwrap_or(i32::MAX);
    let r = sys::watchdog_set_timeout(&fd, asked);
    let what = match r {
        Ok(secs) if secs == asked => format!("timeout {secs}s"),
        Ok(secs) => format!("timeout {secs}s (the device's nearest to the {asked}s asked)"),
        Err(e) => format!(
            "timeout not set ({e}): fed every {} as if it were {asked}s",
            ham_core::duration::format_ns(w.timeout_ns / 3)
        ),
    };
    log(
        instance,
        format_args!("watchdog {}: {what}", w.device.display()),
    );
    Ok(fd)
}

impl Daemon {
    /// Feeds the watchdog and schedules the next feed a third of its timeout on.
    pub(super) fn feed_watchdog(&mut self, now: u64) {
        let (Some(hw), Some(w)) = (&mut self.hw_watchdog, &self.cfg.watchdog) else {
            return;
        };
        let at = now + (w.timeout_ns / 3).max(1);
        hw.next = at;
        match rustix::io::write(&hw.fd, b"1") {
            Ok(_) | Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                if self.limited.allow("watchdog", now).is_some() {
                    say!(self, "cannot feed the watchdog {}: {e}", w.device.display());
                }
            }
        }
        self.schedule(at, Deadline::Feed);
    }

    /// At the end of a clean shutdown: the magic close (the Guardian's copy is closed when
    /// it exits, which the shutdown has waited for).
    pub(super) fn disarm_watchdog(&mut self) {
        let Some(Hw { fd, .. }) = self.hw_watchdog.take() else {
            return;
        };
        if self.cfg.watchdog.as_ref().is_some_and(|w| w.magic_close) {
            match rustix::io::write(&fd, b"V") {
                Ok(_) => say!(self, "watchdog disarmed (magic close)"),
                Err(e) => say!(
                    self,
                    "cannot disarm the watchdog: {e}; it will reset the box"
                ),
            }
        }
        drop(fd);
    }
}
