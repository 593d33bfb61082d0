//! Taking over the state a predecessor left: re-adopting processes, carrying on stops and starts.

use super::*;

impl Daemon {
    /// Builds the entity table from the configuration and whatever the segment holds:
    /// records of configured entities are resumed (their processes adopted, checked by pid +
    /// start time), records of entities no longer configured are stopped and freed, and
    /// new entities get a free slot and are started.
    /// `known_dead`: the handed-over processes the Guardian can tell dead (looked at when the
    /// table is made, see [`crate::guardian::Deaths`]); `None`: each is looked at.
    pub(super) fn adopt(
        &mut self,
        mut passed: HashMap<u32, Passed>,
        known_dead: Option<crate::guardian::Deaths>,
    ) {
        // What the cluster placed here stops when the predecessor would have stopped it.
        let (lease, at) = self.writer.segment().header().fence();
        let mut found: HashMap<String, (SlotIndex, EntityRecord)> = HashMap::new();
        let records = self
            .pre_read
            .take()
            .and_then(|p| p.take())
            .unwrap_or_else(|| self.writer.segment().records());
        for (slot, rec) in records {
            match rec {
                Ok(r) => {
                    found.insert(r.name.clone(), (slot, r));
                }
                Err(e) => {
                    say!(self, "slot {slot} is unreadable ({e}); freeing it");
                    self.wrote(self.writer.clear(slot));
                }
            }
        }
        let configured: HashSet<&str> = self.cfg.entities.iter().map(|e| e.name.as_str()).collect();
        let orphans: Vec<(SlotIndex, EntityRecord)> = found
            .iter()
            .filter(|(name, _)| !configured.contains(name.as_str()))
            .map(|(_, v)| v.clone())
            .collect();
        for (slot, rec) in orphans {
            found.remove(&rec.name);
            say!(
                self,
                "{}: no longer configured; stopping it and freeing slot {slot}",
                rec.name
            );
            ham_core::pss::PssMap::unlink(&ham_core::paths::pss_region(
                &self.cfg.instance.name,
                slot.0,
            ));
            ham_core::mts::MtsMap::unlink(&ham_core::paths::mts_queue(
                &self.cfg.instance.name,
                slot.0,
            ));
            if rec.state.has_process() || rec.state == EntityState::Starting {
                signal_recorded(&rec, libc::SIGTERM);
            }
            self.wrote(self.writer.clear(slot));
        }
        let mut used: HashSet<SlotIndex> = found.values().map(|(s, _)| *s).collect();
        let mut next_free = SlotIndex(0);
        // Moved, not copied: each entity keeps its own configuration from here on (a reload
        // brings a whole new one).
        let cfgs = std::mem::take(&mut self.cfg.entities);
        let mut to_resume = Vec::new();
        let mut to_start = Vec::new();
        let mut existing_ids = HashSet::new();
        // The table's size is known: allocated once, not doubled (and copied) ten times.
        self.entities.reserve(cfgs.len());
        for ec in cfgs {
            let (slot, rec, existing) = match found.remove(&ec.name) {
                Some((slot, rec)) => (slot, rec, true),
                None => {
                    while used.contains(&next_free) {
                        next_free.0 += 1;
                    }
                    used.insert(next_free);
                    (next_free, EntityRecord::new(&ec.name), false)
                }
            };
            let i = self.entities.push(Entity::new(ec, slot, rec));
            if existing {
                to_resume.push(i);
                existing_ids.insert(i);
            } else {
                to_start.push(i);
            }
        }
        self.entities.link_dependents();
        // Output pipes before anything starts or is resumed (a dead one is restarted there).
        for i in EntityId::all(self.entities.len()) {
            self.prepare_output(i, &mut passed);
        }
        if at != 0 {
            self.set_fence(lease, at);
        }
        let known_dead = known_dead.map(|d| d.now(&passed));
        // What died while no HAM watched (or never started) first: its restart must not
        // wait for the adoption of everything that still runs. A process handed over is
        // dead if the Guardian found it so (one look for all) or else if its pidfd is
        // readable; one not handed over is looked at in turn.
        let dead = |d: &Self, i: EntityId| {
            let (r, slot) = (&d.entities[i].rec, d.entities[i].slot.0);
            !r.state.has_process()
                || passed.get(&slot).is_some_and(|p| {
                    p.pid == r.pid
                        && match &known_dead {
                            Some(known) => known.contains(&(slot, r.pid)),
                            None => sys::readable(&p.pidfd),
                        }
                })
        };
        let (first, then): (Vec<EntityId>, Vec<EntityId>) =
            to_resume.into_iter().partition(|&i| dead(self, i));
        let mut adopted = 0usize;
        for i in first {
            let p = passed.remove(&self.entities[i].slot.0);
            self.resume(i, p);
        }
        // Then the records of processes that may still run, the proc connector listening
        // first so that none of them can die unseen (those above are dead already: their
        // exit status is in their pidfd, or unknown).
        if then.iter().any(|&i| self.entities[i].rec.pid > 0) {
            self.ensure_proc_connector();
        }
        for i in then {
            let p = passed.remove(&self.entities[i].slot.0);
            self.resume(i, p);
            adopted += usize::from(self.entities[i].adopted);
        }
        if adopted > 0 {
            say!(self, "adopted {adopted} running process(es)");
        }
        // A takeover's cgroups were made by its predecessor from the same configuration;
        // a warm start (perhaps a new configuration) makes them, and writes their limits.
        let promoted =
            self.writer.segment().header().flags() & ham_core::layout::FLAG_TOOK_OVER != 0;
        for i in EntityId::all(self.entities.len()) {
            if !(promoted && existing_ids.contains(&i)) {
                self.prepare_cgroup(i);
            }
        }
        // The cluster places these: they start when it does, not now.
        let (placed, to_start): (Vec<EntityId>, Vec<EntityId>) = to_start
            .into_iter()
            .partition(|&i| self.entities[i].cfg.rare.placement.is_some());
        for i in placed {
            self.publish(i);
        }
        for &i in &to_start {
            // No record: whatever still runs in its cgroup (a record lost or unreadable, a
            // segment replaced) is an earlier copy. It goes before a new one starts.
            if let Some(cg) = &self.cgroups {
                let name = self.entities[i].cfg.name.clone();
                if cg.populated(&name) {
                    // Bounded well inside the liveness timeout: the Guardian must not take
                    // this wait for a stuck HAM.
                    let wait_ms = self.cfg.liveness_timeout_ns / 4_000_000;
                    let gone = cg.kill_and_wait(&name, wait_ms);
                    say!(
                        self,
                        "{name}: processes without a record were left in its cgroup; {}",
                        if gone {
                            "killed".to_owned()
                        } else {
                            format!("still there {wait_ms} ms after SIGKILL (stuck in the kernel?)")
                        }
                    );
                }
            }
            // Listed as what it is about to be (and what a successor carries on from).
            let waits = !self.entities[i].cfg.after.is_empty();
            let why = super::lifecycle::Why::new("start", "listed");
            self.step(i, ham_core::lifecycle::Input::Listed { waits }, &why);
        }
        // Every entity is listed before any starts.
        for i in to_start {
            self.entities[i].rec.starts += 1;
            self.start_when_ready(i);
        }
        self.release_proc_connector_if_idle();
    }

    /// Makes entity `i`'s cgroup and writes its limits, saying which cannot be applied.
    pub(super) fn prepare_cgroup(&mut self, i: EntityId) {
        let Some(cg) = &self.cgroups else { return };
        let e = &self.entities[i];
        if crate::config::is_free_entry(&e.cfg.name) {
            return;
        }
        match cg.prepare(&e.cfg.name, &e.cfg.rare.limits) {
            Ok(not_applied) => {
                for why in not_applied {
                    say!(self, "{}: limit not applied: {why}", e.cfg.name);
                }
            }
            Err(err) => say!(self, "{}: cannot make its cgroup: {err}", e.cfg.name),
        }
    }

    /// Carries on from one entity's record.
    pub(super) fn resume(&mut self, i: EntityId, passed: Option<Passed>) {
        let rec = self.entities[i].rec.clone();
        match rec.state {
            EntityState::Stopped | EntityState::Exited => self.publish(i),
            EntityState::Backoff => self.spawn(i),
            EntityState::HeldOff => {
                // The hold-off's deadline is in the record (same monotonic clock).
                let at = rec.policy.held_until.max(mono_ns());
                self.schedule(at, Deadline::HoldOff(i));
                self.entities[i].rec.policy.held_until = at;
                self.publish(i);
            }
            EntityState::Starting if rec.pid <= 0 => self.spawn(i),
            EntityState::Waiting => self.start_when_ready(i),
            EntityState::Starting | EntityState::Running | EntityState::Stopping => {
                let passed = passed.filter(|p| p.pid == rec.pid && p.start_time == rec.start_time);
                match open_verified(rec.pid, rec.start_time, passed.as_ref()) {
                    Some(pidfd) if rec.state == EntityState::Starting => {
                        // `starting` with a pid: forked but never released (the release is
                        // recorded as `running` before it happens), whatever /proc shows —
                        // a zombie has no exe to read. It exits on its own; make sure, then
                        // start it for real, counting nothing.
                        let _ = rustix::process::pidfd_send_signal(
                            &pidfd,
                            rustix::process::Signal::KILL,
                        );
                        wait_pidfd(&pidfd, 5_000);
                        say!(
                            self,
                            "{}: pid {} was never released; starting it again",
                            rec.name,
                            rec.pid
                        );
                        self.spawn(i);
                    }
                    Some(pidfd) => {
                        if let Err(e) = self.watch(i, &pidfd) {
                            say!(self, "{}: cannot watch pid {}: {e}", rec.name, rec.pid);
                        }
                        self.send_to_guardian(i, rec.pid, rec.start_time, &pidfd);
                        let e = &mut self.entities[i];
                        e.pidfd = Some(pidfd);
                        e.adopted = true;
                        self.exit_watch = None;
                        let starting = e.rec.state == EntityState::Starting;
                        if starting {
                            e.rec.started_mono_ns = mono_ns();
                            e.rec.started_unix_ns = unix_ns();
                        }
                        let stopping = e.rec.state == EntityState::Stopping;
                        // One line for all of them (`adopt`); each at a verbose log.
                        crate::log::ham_verbose(
                            &self.cfg.instance.name,
                            format_args!("{}: adopted pid {}", rec.name, rec.pid),
                        );
                        if stopping {
                            // Resume the stop (or the restart it was part of): signal again
                            // and arm a fresh deadline, with the intent the record gave.
                            self.entities[i].wanted =
                                match (rec.restart_pending, rec.restart_automatic) {
                                    (true, true) => Wanted::AutoRestart,
                                    (true, false) => Wanted::Restart,
                                    _ => Wanted::Down,
                                };
                            let why = super::lifecycle::Why::new("operator", "stop resumed");
                            self.step(i, ham_core::lifecycle::Input::ResumeStop, &why);
                        } else {
                            // Released before its HAM died: it runs (`Spawned` from
                            // `starting`), or it ran already.
                            let why = super::lifecycle::Why::new("start", "adopted");
                            if starting {
                                self.step(i, ham_core::lifecycle::Input::Spawned, &why);
                            } else {
                                self.publish(i);
                            }
                            self.became_running(i, mono_ns());
                        }
                    }
                    None => {
                        // It died while no HAM was watching.
                        if rec.state == EntityState::Starting {
                            self.spawn(i);
                        } else {
                            // How, its handed-over pidfd says once something reaps it (its
                            // parent was the HAM), its zombie until then: filled in after the
                            // restart, off its path.
                            let status = passed
                                .as_ref()
                                .and_then(|p| sys::pidfd_exit_status(&p.pidfd).ok().flatten())
                                .map_or(LastExit::Unknown, decode_wait_status);
                            if status == LastExit::Unknown
                                && let Some(p) = passed
                            {
                                self.expect_status(i, rec.pid, rec.start_time, p.pidfd);
                            }
                            say!(
                                self,
                                "{}: pid {} died while no HAM was watching",
                                rec.name,
                                rec.pid
                            );
                            if rec.state == EntityState::Stopping {
                                self.entities[i].wanted = Wanted::Down;
                            }
                            self.on_exit(i, status);
                            self.kill_leftovers(i);
                        }
                    }
                }
            }
        }
    }

    // -- the Guardian ----------------------------------------------------------------------
}

/// A pidfd for `pid` if it is still the process that started at `start_time`: the passed
/// descriptor when it names it, otherwise `pidfd_open` *then* the start-time check (checking
/// first would race with pid reuse).
pub(super) fn open_verified(pid: i32, start_time: u64, passed: Option<&Passed>) -> Option<OwnedFd> {
    // A handed-over pidfd was opened by the HAM on this very process (pid + start time
    // recorded with it), and a pidfd never refers to another process: only liveness is left
    // to check.
    let (pidfd, known) = match passed {
        Some(p) if p.pid == pid && p.start_time == start_time => (p.pidfd.try_clone().ok()?, true),
        _ => (
            rustix::process::pidfd_open(Pid::from_raw(pid)?, PidfdFlags::empty()).ok()?,
            false,
        ),
    };
    // Alive and not a zombie (a zombie's pidfd is already readable).
    let exited = rustix::event::poll(
        &mut [rustix::event::PollFd::new(
            &pidfd,
            rustix::event::PollFlags::IN,
        )],
        Some(&Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        }),
    )
    .map_or(true, |n| n > 0);
    (!exited && (known || procfs::start_time(pid) == Some(start_time))).then_some(pidfd)
}

/// Waits up to `ms` for a pidfd to report its process's exit.
pub(super) fn wait_pidfd(pidfd: &OwnedFd, ms: u64) -> bool {
    let ts = Timespec {
        tv_sec: (ms / 1000) as i64,
        tv_nsec: ((ms % 1000) * 1_000_000) as i64,
    };
    rustix::event::poll(
        &mut [rustix::event::PollFd::new(
            pidfd,
            rustix::event::PollFlags::IN,
        )],
        Some(&ts),
    )
    .is_ok_and(|n| n > 0)
}

/// Stops the processes a segment records (it is being replaced): SIGTERM to each one still
/// verified by pid + start time.
pub(super) fn stop_recorded_processes(instance: &str, seg: &Segment) {
    for (_, rec) in seg.records() {
        if let Ok(rec) = rec {
            if rec.pid > 0 && procfs::is_alive(rec.pid, rec.start_time) {
                log(
                    instance,
                    format_args!("{}: stopping pid {}", rec.name, rec.pid),
                );
                signal_recorded(&rec, libc::SIGTERM);
            }
        }
    }
}

/// Signals a process named only by a record, after opening a pidfd and checking its start
/// time, so a reused pid is never signalled.
pub(super) fn signal_recorded(rec: &EntityRecord, sig: i32) {
    if let Some(fd) = open_verified(rec.pid, rec.start_time, None) {
        if let Some(s) = rustix::process::Signal::from_named_raw(sig) {
            let _ = rustix::process::pidfd_send_signal(&fd, s);
        }
    }
}
