//! Stopping: entities, layer by layer; the instance; device restarts.

use super::*;

/// Entities a shutdown stops per turn of the loop (see `Daemon::stop_next_layer`).
const STOPS_PER_TURN: u32 = 256;

impl Daemon {
    /// Runs `[device] restart_command`, unless an operator switched device restarts off or
    /// none is configured; says what happened.
    pub(super) fn device_restart(&mut self, reason: &str, run: Option<RunId>) -> String {
        let result = if self.writer.segment().header().flags() & FLAG_DEVICE_RESTART_OFF != 0 {
            "skipped: switched off (hamctl device-restart disable)".to_owned()
        } else if let Some(standby) = self.switchover_standby() {
            // The active supervisor with a healthy standby: NX-OS switches over where a
            // lone supervisor resets.
            self.cluster_switchover(None);
            format!("a switchover instead: this node's role and singletons go to {standby}")
        } else if let Some((path, argv)) = self.cfg.device_restart.clone() {
            // What led here must be on disk before the device goes down.
            self.write_held_logs();
            self.plog.sync();
            let env = [
                ("PATH".to_owned(), std::env::var("PATH").unwrap_or_default()),
                ("HAM_INSTANCE".to_owned(), self.cfg.instance.name.clone()),
                ("HAM_CONDITION".to_owned(), "device-restart".to_owned()),
                ("HAM_REASON".to_owned(), reason.to_owned()),
            ];
            let record = run.and_then(|id| self.release_record(id));
            let started = SpawnSpec::new(&path, &argv, &env).and_then(|mut spec| {
                spec.new_process_group();
                if let Some(slot) = record {
                    spec.released_in_run(slot);
                }
                spec.fork()
            });
            let started = started.map(|p| {
                if let Some(id) = run {
                    self.journal_exec(id, p.pid, 0);
                }
                p.release()
            });
            match started {
                Ok(Ok((pid, _pidfd))) => format!("running {} (pid {pid})", path.display()),
                Ok(Err((e, _))) | Err(e) => format!("failed: cannot run {}: {e}", path.display()),
            }
        } else {
            "skipped: no [device] restart_command configured".to_owned()
        };
        say!(self, "device restart: {reason}: {result}");
        result
    }

    /// Switches device restarts on or off; kept in the segment's header (so takeovers and
    /// warm starts keep it) and in `log_dir` (so a cold start after a reboot keeps it too).
    pub(super) fn set_device_restart(&mut self, enabled: bool) -> Result<(), String> {
        let flags = self.writer.segment().header().flags();
        let flags = if enabled {
            flags & !FLAG_DEVICE_RESTART_OFF
        } else {
            flags | FLAG_DEVICE_RESTART_OFF
        };
        let written = self.writer.set_flags(flags);
        self.wrote(written)
            .ok_or_else(|| "cannot write the state segment".to_owned())?;
        let marker = device_restart_marker(&self.cfg);
        let persisted = if enabled {
            match std::fs::remove_file(&marker) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        } else {
            std::fs::create_dir_all(&self.cfg.instance.log_dir)
                .and_then(|()| std::fs::write(&marker, "off\n"))
        };
        persisted
            .map_err(|e| format!("switched, but not persisted in {}: {e}", marker.display()))?;
        say!(
            self,
            "device restart {}",
            if enabled { "enabled" } else { "disabled" }
        );
        Ok(())
    }

    /// Sends the stop signal to a running entity (its process group, and the process itself
    /// if it left the group) and arms the SIGKILL deadline.
    pub(super) fn begin_stop(&mut self, i: EntityId, wanted: Wanted) {
        let e = &mut self.entities[i];
        if !matches!(e.rec.state, EntityState::Running | EntityState::Stopping) {
            // Whatever it was waiting for (a retry, a hold-off) is off.
            e.retry_at = None;
            e.rec.policy.held_until = 0;
        }
        let input = match wanted {
            Wanted::Down => ham_core::lifecycle::Input::Stop,
            Wanted::Restart => ham_core::lifecycle::Input::Restart,
            Wanted::AutoRestart | Wanted::Up => ham_core::lifecycle::Input::AutoRestart,
        };
        let why = lifecycle::Why::new("restart", "restarted by ham");
        self.step(i, input, &why);
    }

    pub(super) fn begin_shutdown(&mut self, requester: Option<UnixStream>) {
        if let Some(waiters) = &mut self.shutdown {
            waiters.extend(requester);
            return;
        }
        self.systemd_stopping();
        // Written before anything is stopped, so a Guardian never mistakes this for a crash:
        // if this HAM dies now, the Guardian finishes the shutdown instead of resurrecting.
        let written = self.writer.set_stop_intent();
        if self.wrote(written).is_none() {
            say!(self, "cannot record the stop intent");
        }
        self.shutdown = Some(requester.into_iter().collect());
        self.stop_next_layer();
    }

    /// During a shutdown: stops every entity that no live entity starts `after`, in reverse
    /// order of the configuration, up to `STOPS_PER_TURN` of them per turn of the loop (the
    /// loop comes straight back for the rest: stopping 10,000 at once took one turn over
    /// `liveness_timeout`, and the Guardian fenced the HAM). Called again when an entity
    /// that starts `after` others exits, so dependents always stop before what they
    /// depend on.
    pub(super) fn stop_next_layer(&mut self) {
        self.stops_left = false;
        let mut budget = STOPS_PER_TURN;
        let alive = |e: &Entity| {
            matches!(
                e.rec.state,
                EntityState::Running | EntityState::Stopping | EntityState::Starting
            )
        };
        for i in EntityId::all(self.entities.len()).rev() {
            if matches!(
                self.entities[i].rec.state,
                EntityState::Stopping | EntityState::Stopped | EntityState::Exited
            ) {
                continue;
            }
            let needed = self
                .entities
                .dependents(i)
                .iter()
                .any(|&d| alive(&self.entities[d]));
            if !needed {
                if budget == 0 {
                    self.stops_left = true;
                    return;
                }
                budget -= 1;
                self.begin_stop(i, Wanted::Down);
            }
        }
    }

    /// Everything is stopped: stop the Guardian, remove what this instance made, answer.
    pub(super) fn finish(&mut self) {
        // Durable queues as they are now (an acknowledgement's write may be pending), then
        // every write the committer has, before the files are the only copy.
        for i in EntityId::all(self.entities.len()) {
            if self.entities[i].cfg.mts_durable && self.entities[i].stores.mts.is_some() {
                self.entities[i].stores.mts_durable.writing = None;
                self.mts_commit(i);
            }
        }
        if let Some(c) = self.committer.take() {
            if let Err(why) = c.finish() {
                say!(self, "{why}");
            }
        }
        if let Some(cg) = &self.cgroups {
            // The loop does not turn meanwhile: each cgroup counts as a turn (a deadline of
            // now, met at once), or the Guardian, seeing the last deadline pass with no turn
            // after it, fences the HAM (SIGKILL) in the middle of the shutdown of 10,000
            // entities, and the `shutdown` request that waits here gets no answer. A HAM
            // stuck on one cgroup is still fenced.
            let writer = &self.writer;
            let left = cg.remove_all(|| {
                let now = mono_ns();
                let _ = writer.set_liveness(now);
                let _ = writer.set_deadline(now);
            });
            for left in left {
                say!(self, "cgroup left behind: {left}");
            }
        }
        if let Some(g) = self.guardian.take() {
            let _ = rustix::process::pidfd_send_signal(&g.pidfd, rustix::process::Signal::TERM);
            if !wait_pidfd(&g.pidfd, 5_000) {
                let _ = rustix::process::pidfd_send_signal(&g.pidfd, rustix::process::Signal::KILL);
                wait_pidfd(&g.pidfd, 5_000);
            }
            let _ = rustix::process::waitid(
                WaitId::PidFd(g.pidfd.as_fd()),
                WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
            );
        }
        self.finish_output();
        self.disarm_watchdog();
        if let Some(m) = self.metrics.take() {
            m.finish();
        }
        let inst = &self.cfg.instance;
        let _ = std::fs::remove_file(inst.socket_path());
        let _ = std::fs::remove_file(inst.notify_path());
        let _ = std::fs::remove_file(inst.pid_path());
        let _ = std::fs::remove_file(inst.config_note_path());
        if let Err(e) = Segment::unlink(&inst.segment_name()) {
            say!(self, "{e}");
        }
        ham_core::client::ClientSegment::unlink(&ham_core::paths::client_segment(&inst.name));
        if let Some(c) = &self.clients {
            c.lanes.unlink_all();
        }
        for e in &self.entities {
            ham_core::beat::BeatMap::unlink(&ham_core::paths::beat_page(&inst.name, e.slot.0));
            // As a reboot would: only durable checkpoints (on disk) outlive a shutdown.
            ham_core::pss::PssMap::unlink(&ham_core::paths::pss_region(&inst.name, e.slot.0));
            ham_core::mts::MtsMap::unlink(&ham_core::paths::mts_queue(&inst.name, e.slot.0));
        }
        for e in &mut self.entities {
            for (stream, _) in e.waiters.drain(..) {
                reply(stream, &Response::err("ham shut down"));
            }
        }
        say!(self, "all entities stopped; exiting");
        for stream in self.shutdown.take().unwrap_or_default() {
            reply(stream, &Response::ok("ham stopped"));
        }
    }
}
