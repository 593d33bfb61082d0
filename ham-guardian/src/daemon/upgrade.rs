//! `hamctl upgrade`: the running instance hands over to a new binary the way a takeover
//! does. The HAM replaces its Guardian with one of the new binary and hands it everything
//! a Guardian holds (pidfds, output pipes, the control and notify sockets, the watchdog);
//! once the Guardian has it all, the HAM says so to the operator, marks the handover in
//! the segment and exits. The new Guardian takes over as after any HAM death — no entity
//! restarted, no pid changed — migrating the segment if its layout is older, and starts a
//! Guardian of its own binary. Whether the new binary can take this segment over at all
//! is asked before (`hamctl` runs `BINARY --layouts`): if not, nothing is changed.

use super::*;

/// An upgrade under way.
pub(super) struct Upgrade {
    pub(super) binary: std::path::PathBuf,
    requester: Option<UnixStream>,
    /// The Guardian of the new binary has been started.
    pub(super) started: bool,
}

impl Daemon {
    pub(super) fn begin_upgrade(&mut self, binary: String, stream: UnixStream) {
        let path = std::path::PathBuf::from(&binary);
        let refuse = |why: String| Response::errno(libc::EINVAL, why);
        if self.upgrade.is_some() {
            reply(
                stream,
                &Response::errno(libc::EBUSY, "an upgrade is under way"),
            );
            return;
        }
        if !path.is_absolute() {
            reply(
                stream,
                &refuse(format!("{binary}: the new binary's path must be absolute")),
            );
            return;
        }
        if let Err(e) = rustix::fs::access(&path, rustix::fs::Access::EXEC_OK) {
            reply(stream, &refuse(format!("{binary}: cannot be run: {e}")));
            return;
        }
        say!(
            self,
            "upgrade to {binary}: replacing the guardian with one of it"
        );
        self.upgrade = Some(Upgrade {
            binary: path,
            requester: Some(stream),
            started: false,
        });
        match &self.guardian.proc {
            // Its death starts the new one (`on_guardian_exit` → `spawn_guardian`).
            Some(g) => {
                let _ = rustix::process::pidfd_send_signal(&g.pidfd, rustix::process::Signal::KILL);
            }
            None => self.spawn_guardian(),
        }
    }

    /// The binary the next Guardian runs: the upgrade's, or this one's.
    pub(super) fn guardian_binary(&mut self) -> std::path::PathBuf {
        match &mut self.upgrade {
            Some(u) => {
                u.started = true;
                u.binary.clone()
            }
            None => std::path::PathBuf::from("/proc/self/exe"),
        }
    }

    /// Once the new Guardian holds everything (nothing left to send), the HAM hands over:
    /// it answers the operator, marks the handover and leaves the loop.
    pub(super) fn maybe_hand_over(&mut self) -> bool {
        // The new Guardian has all it must hold, and has beaten: it runs its loop (it read
        // the configuration and mapped the segment), so it can take over.
        let ready = self.upgrade.as_ref().is_some_and(|u| u.started)
            && self.guardian.proc.as_ref().is_some_and(|g| g.beaten)
            && self.guardian.idle();
        if !ready {
            return false;
        }
        let u = self.upgrade.take().expect("checked above");
        let g = self.guardian.proc.as_ref().map_or(0, |g| g.pid);
        say!(
            self,
            "upgrade: handing over to guardian pid {g} ({})",
            u.binary.display()
        );
        // What the successor would otherwise redo: durable checkpoints, output lines.
        if let Some(c) = self.committer.take() {
            if let Err(why) = c.finish() {
                say!(self, "{why}");
            }
        }
        self.finish_output();
        let flags = self.writer.segment().header().flags();
        self.wrote(
            self.writer
                .set_flags(flags | ham_core::layout::FLAG_UPGRADING),
        );
        if let Some(s) = u.requester {
            reply(
                s,
                &Response::ok(format!(
                    "handing over to guardian pid {g} running {}",
                    u.binary.display()
                )),
            );
        }
        true
    }

    /// A Guardian that could not be started of the new binary: the upgrade is given up
    /// (this HAM goes on, with a Guardian of its own binary).
    pub(super) fn upgrade_failed(&mut self, why: &str) {
        if let Some(u) = self.upgrade.take() {
            say!(self, "upgrade to {} failed: {why}", u.binary.display());
            if let Some(s) = u.requester {
                reply(
                    s,
                    &Response::errno(
                        libc::EIO,
                        format!(
                            "cannot start a guardian of {}: {why}; nothing was handed over",
                            u.binary.display()
                        ),
                    ),
                );
            }
        }
    }
}
