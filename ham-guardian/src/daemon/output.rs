//! `output = "log"` in the loop: each such entity's pipe (made once, or handed over by the
//! predecessor), given to the output thread (`crate::outlog`) and to the Guardian, and
//! dup'ed onto fds 1 and 2 of every process the entity starts.

use super::*;

use crate::config::Output;
use crate::outlog;

/// An entity's output pipe: (read end, write end).
pub(super) type Pipe = (OwnedFd, OwnedFd);

impl Daemon {
    /// Gives entity `i` its output pipe if it captures output: the one the predecessor
    /// handed over in `passed` (its lines resume where they were), else a new one.
    pub(super) fn prepare_output(&mut self, i: EntityId, passed: &mut HashMap<u32, Passed>) {
        let Output::Log(how) = self.entities[i].cfg.output.clone() else {
            return;
        };
        let slot = self.entities[i].slot.0;
        let handed = (
            passed.remove(&handoff::pipe_key(slot, handoff::PIPE_READ)),
            passed.remove(&handoff::pipe_key(slot, handoff::PIPE_WRITE)),
        );
        let name = self.entities[i].cfg.name.clone();
        let (pipe, resumed) = match handed {
            (Some(r), Some(w)) => ((r.pidfd, w.pidfd), true),
            _ => {
                let rec = &self.entities[i].rec;
                if rec.state.has_process() && rec.pid > 0 {
                    // Taken over (or started warm) without the pipe: a process still running
                    // writes into the old one, which this HAM cannot read.
                    say!(
                        self,
                        "{name}: its output pipe was not handed over; what pid {} writes is \
                         not kept until it restarts",
                        rec.pid
                    );
                }
                match outlog::pipe() {
                    Ok(p) => (p, false),
                    Err(e) => {
                        say!(
                            self,
                            "{name}: cannot make its output pipe: {e}; its output goes to ham's"
                        );
                        return;
                    }
                }
            }
        };
        let keep = outlog::Keep {
            dir: self.cfg.instance.output_dir(&name),
            max_bytes: how.max_bytes,
            keep: how.keep,
            syslog: how.syslog.then(|| self.cfg.syslog.clone()).flatten(),
        };
        let Some(logger) = self.logger() else {
            return;
        };
        match pipe.0.try_clone() {
            Ok(read) => logger.add(slot, &name, read, keep, resumed),
            Err(e) => say!(self, "{name}: output: {e}"),
        }
        self.entities[i].out = Some(pipe);
        self.send_output_to_guardian(i);
    }

    /// The output thread, started on first need.
    fn logger(&mut self) -> Option<&outlog::Logger> {
        if self.logger.is_none() {
            let name = self.cfg.instance.name.clone();
            let say: outlog::Say =
                std::sync::Arc::new(move |line: &str| log(&name, format_args!("{line}")));
            match outlog::Logger::start(say) {
                Ok(l) => self.logger = Some(l),
                Err(e) => {
                    say!(
                        self,
                        "cannot start the output thread: {e}; output goes to ham's"
                    );
                    return None;
                }
            }
        }
        self.logger.as_ref()
    }

    /// Hands both ends of entity `i`'s pipe to the Guardian.
    pub(super) fn send_output_to_guardian(&mut self, i: EntityId) {
        let e = &self.entities[i];
        let Some((r, w)) = &e.out else { return };
        let slot = e.slot;
        for (end, fd) in [(handoff::PIPE_READ, r), (handoff::PIPE_WRITE, w)] {
            if let Err(err) = self.guardian.send(&self.epoll, (slot, end, 0), fd, None) {
                say!(self, "cannot hand an output pipe to the guardian: {err}");
            }
        }
    }

    /// Entity `i` leaves (removed at run time): what its pipe holds is written, then the
    /// pipe goes.
    pub(super) fn drop_output(&mut self, i: EntityId) {
        if self.entities[i].out.take().is_some() {
            if let Some(l) = &self.logger {
                l.remove(self.entities[i].slot.0);
            }
        }
    }

    /// At the end of a shutdown: every line left is written.
    pub(super) fn finish_output(&mut self) {
        if let Some(l) = self.logger.take() {
            l.finish();
        }
    }
}
