//! Deaths: reading how a process ended, and what follows (through the lifecycle).

use super::*;

/// An adopted entity died before anyone could tell how; its status may still come through
/// its pidfd once something reaps it, or from its zombie until then.
pub(super) struct StatusPatch {
    pub(super) entity: EntityId,
    pub(super) pid: i32,
    /// The process's start time (its zombie is told from a process that reused the pid).
    pub(super) start_time: u64,
    pub(super) death: u64,
    pub(super) pidfd: OwnedFd,
    pub(super) tries: u32,
    pub(super) at: u64,
}

/// How many reaped pids [`Daemon::on_sigchld`] remembers.
const REAPED_KEPT: usize = 64;

/// How long after a SIGCHLD that named a handled child the orphans' sweep runs.
const SWEEP_AFTER_NS: u64 = 1_000_000_000;

impl Daemon {
    /// The entity's pidfd is readable: its process has exited.
    pub(super) fn on_pidfd(&mut self, i: EntityId) {
        // What is said about the death is written while its replacement execs (or at the
        // end, if nothing is started), and the dead process reaped then too.
        self.hold_logs();
        self.on_pidfd_held(i);
        self.after_deaths();
    }

    fn on_pidfd_held(&mut self, i: EntityId) {
        let Some(e) = self.entities.get(i) else {
            return;
        };
        if e.pidfd.is_none() {
            return;
        }
        let (pid, start_time, adopted) = (e.rec.pid, e.rec.start_time, e.adopted);
        if adopted {
            self.drain_proc_connector();
        }
        let fd = self.entities[i].pidfd.as_ref().expect("checked above");
        let status = if adopted {
            match self.exit_cache.remove(&pid) {
                Some(ws) => Some(decode_wait_status(ws)),
                None => sys::pidfd_exit_status(fd)
                    .ok()
                    .flatten()
                    .map(decode_wait_status),
            }
        } else {
            // Its status without reaping it: the zombie is reaped after the replacement is
            // started (`reap_handled`).
            match rustix::process::waitid(
                WaitId::PidFd(fd.as_fd()),
                WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
            ) {
                // A stale event from this batch for a process already handled: still running.
                Ok(None) => return,
                Ok(Some(st)) => {
                    self.unreaped.push(pid);
                    Some(decode_waitid(&st))
                }
                Err(_) => None,
            }
        };
        let late = match status {
            Some(s) => s,
            None => {
                // Dead (the pidfd said so), status not known yet: go on, and fill it in
                // once it is. (The proc connector's message is sent just after the pidfd
                // wakes us.)
                if let Ok(dup) = fd.try_clone() {
                    self.expect_status(i, pid, start_time, dup);
                }
                LastExit::Unknown
            }
        };
        failpoint::slow("exit:slow");
        failpoint::hit("exit:before-record");
        self.on_exit(i, late);
        self.kill_leftovers(i);
        // What it starts after may be free to stop now (nothing else can be: looking at
        // every entity at every exit made a shutdown O(n²)).
        if self.shutdown.is_some() && !self.entities[i].cfg.after.is_empty() {
            self.stop_next_layer();
        }
        self.release_proc_connector_if_idle();
    }

    /// Entity `i`'s process `pid` (started at `start_time`) died with its status unknown:
    /// it is filled in when the proc connector, the pidfd (once something reaps it) or,
    /// until then, its zombie tells it, for the death about to be counted.
    pub(super) fn expect_status(&mut self, i: EntityId, pid: i32, start_time: u64, pidfd: OwnedFd) {
        let at = mono_ns() + 1_000_000;
        self.exit_watch_changed();
        self.patches.push(StatusPatch {
            entity: i,
            pid,
            start_time,
            death: self.entities[i].deaths + 1,
            pidfd,
            tries: 0,
            at,
        });
        self.schedule(at, Deadline::StatusPatch(i));
    }

    /// Holds ham's log, the process log and syslog back (see `log::hold`).
    pub(super) fn hold_logs(&mut self) {
        crate::log::hold();
        self.plog.hold();
        self.syslog.hold();
    }

    /// Writes what [`hold_logs`](Self::hold_logs) held, and stops holding.
    pub(super) fn write_held_logs(&mut self) {
        crate::log::write_held();
        self.plog.write_held();
        self.syslog.write_held();
    }

    /// What waits until a death's replacement is released: the held lines written and the
    /// dead process reaped (both cheap to repeat: nothing held, nothing unreaped).
    pub(super) fn after_deaths(&mut self) {
        self.unwatch_dead();
        self.write_held_logs();
        self.reap_handled();
    }

    /// Reaps the children whose deaths were handled (`unreaped`).
    fn reap_handled(&mut self) {
        for pid in self.unreaped.drain(..) {
            if let Some(p) = Pid::from_raw(pid) {
                // Reaped already if the SIGCHLD scan came first (ECHILD): nothing to do.
                let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG);
                if self.reaped_recently.len() == REAPED_KEPT {
                    self.reaped_recently.pop_front();
                }
                self.reaped_recently.push_back(pid);
            }
        }
    }

    /// A SIGCHLD, naming child `pid` (signals of a kind merge: others may have died too).
    /// When `pid` is a child whose death its pidfd told and that is reaped already (the
    /// usual case: the pidfd's event comes first), the walk over every child that finds
    /// orphans (`reap_children`, O(children): 30 µs at 100 entities, on every restart) is
    /// left to one sweep a second later, however many deaths come meanwhile; any other
    /// pid is looked for now.
    pub(super) fn on_sigchld(&mut self, pid: i32) {
        // Or one whose pidfd will tell (its event is in this batch or the next): the walk
        // would find it first and handle it, and the next zombie with a walk of its own, so
        // a storm of 1,000 at 10,000 entities cost a walk per death (3 s in one turn, the
        // HAM fenced by its Guardian for not handling deaths in time).
        let told_by_pidfd = |e: &Entity| e.pidfd.is_some() && !e.adopted && e.rec.pid == pid;
        if pid > 0
            && (self.reaped_recently.contains(&pid)
                || self.entities.find_by_pid(pid, told_by_pidfd).is_some())
        {
            self.sweep_later();
        } else {
            self.reap_children();
        }
    }

    /// Kills what entity `i`'s dead process left in its cgroup, if that is still to do
    /// (see `Entity::leftovers`).
    pub(super) fn kill_leftovers(&mut self, i: EntityId) {
        if std::mem::take(&mut self.entities[i].leftovers) {
            self.kill_cgroup(i);
        }
    }

    /// What entity `i`'s dead process left in its cgroup, killed while its replacement
    /// `child` (already in that cgroup) waits for its release.
    pub(super) fn kill_leftovers_but(&mut self, i: EntityId, child: i32) {
        if std::mem::take(&mut self.entities[i].leftovers) {
            self.kill_cgroup_but(i, child);
        }
    }

    /// SIGKILLs whatever is left in entity `i`'s cgroup (its main process has exited, or
    /// did not stop in time).
    pub(super) fn kill_cgroup(&mut self, i: EntityId) {
        // No process has pid 0: nothing spared.
        self.kill_cgroup_but(i, 0);
    }

    /// [`kill_cgroup`](Self::kill_cgroup), sparing process `keep`: one read of
    /// `cgroup.procs` when the cgroup holds nothing else.
    fn kill_cgroup_but(&mut self, i: EntityId, keep: i32) {
        if let Some(cg) = &self.cgroups {
            let name = &self.entities[i].cfg.name;
            if let Err(e) = cg.kill_but(name, keep) {
                let msg = format!("{name}: cannot kill its cgroup: {e}");
                self.say_limited("cgroup-kill", format_args!("{msg}"));
            }
        }
    }

    /// Stops watching entity `i`'s pidfd and closes ham's copy. epoll watches the open
    /// file, not the descriptor: the Guardian holds another descriptor of it, so a pidfd
    /// closed without `EPOLL_CTL_DEL` stays registered, readable for ever (a busy loop).
    pub(super) fn unwatch_pidfd(&mut self, i: EntityId) {
        if let Some(fd) = self.entities[i].pidfd.take() {
            let _ = epoll::delete(&self.epoll, &fd);
        }
    }

    /// [`unwatch_pidfd`](Self::unwatch_pidfd) for a process that died, left to
    /// `unwatch_dead` (after its replacement is released, before the loop waits again):
    /// two system calls off the restart's path.
    fn unwatch_dead_pidfd(&mut self, i: EntityId) {
        if let Some(fd) = self.entities[i].pidfd.take() {
            self.dead_pidfds.push(fd);
        }
    }

    /// Stops watching the pidfds of the dead (`unwatch_dead_pidfd`) and closes them.
    pub(super) fn unwatch_dead(&mut self) {
        for fd in self.dead_pidfds.drain(..) {
            let _ = epoll::delete(&self.epoll, &fd);
        }
    }

    pub(super) fn on_exit(&mut self, i: EntityId, exit: LastExit) {
        self.unwatch_dead_pidfd(i);
        // What the process left behind in its cgroup dies with it: before its replacement
        // runs anything, but after that is forked if it is restarted at once (a cgroup's
        // `cgroup.procs` opened and read was a quarter of the way from the death to the
        // fork); the caller kills them if nothing was started (`kill_leftovers`).
        self.entities[i].leftovers = self.cgroups.is_some();
        // An attachment ends with its process.
        self.end_attachment(i);
        // Its core, if it left one.
        if let LastExit::Signal(sig) = exit {
            let pid = self.entities[i].rec.pid;
            self.collect_core(i, pid, sig);
        }
        let now = mono_ns();
        let shutting_down = self.shutdown.is_some();
        let e = &mut self.entities[i];
        let old_pid = e.rec.pid;
        e.deaths += 1;
        e.ready = false;
        e.rec.ready = false;
        e.watchdog_at = None;
        let was_adopted = std::mem::take(&mut e.adopted);
        e.stop_deadline = None;
        e.rec.pid = 0;
        e.rec.start_time = 0;
        e.rec.last_exit = exit;
        e.rec.exited_mono_ns = now;
        e.rec.exited_unix_ns = unix_ns();
        if shutting_down {
            e.wanted = Wanted::Down;
        }
        let wanted = e.wanted;
        // Its restart mode would start it again after this exit (never an attach-only one:
        // not ours to start; a restart action may).
        let restartable = !e.cfg.attach_only && e.cfg.restart.restarts_after(exit);
        let how = describe(exit);
        let name = e.cfg.name.clone();
        // Exits the entity made on its own are stamped in the record (published below with
        // the decision), for the `exits-within` conditions.
        let automatic = wanted == Wanted::Up;
        if automatic {
            e.rec.exit_stamps.push(now);
        }
        let death = Event::Death {
            abnormal: exit.is_abnormal(),
            lifetime: now.saturating_sub(e.rec.started_mono_ns),
            exits: automatic.then(|| e.rec.exit_stamps.clone()),
            now,
        };
        let restarts_before = e.rec.restarts;
        let hold = e.hold_after_stop.take().filter(|_| !shutting_down);
        if was_adopted {
            self.exit_watch_changed();
        }
        let e = &mut self.entities[i];
        let gone = Some((old_pid, exit));
        let text = format!("pid {old_pid} {how}");
        let cond = condition_of(exit);
        let mode = if e.cfg.attach_only {
            "attach-only"
        } else {
            e.cfg.restart.as_str()
        };
        match wanted {
            Wanted::AutoRestart => {
                e.rec.restart_automatic = false;
                say!(
                    self,
                    "{name}: {text}; stopped by ham to be restarted; restarting"
                );
            }
            Wanted::Restart => say!(self, "{name}: {text}; starting again as asked"),
            Wanted::Down if hold.is_some() => {
                say!(self, "{name}: {text}; held off as a condition asked");
            }
            Wanted::Down => say!(self, "{name}: {text}; stopped"),
            Wanted::Up if !restartable => {
                say!(self, "{name}: {text}; not restarted (restart = {mode})");
            }
            Wanted::Up => {}
        }
        // From here on the lifecycle: the record, the recovery policy (for a death its
        // restart mode restarts), the process log, the group, then the death's conditions
        // and those of the restart it led to, once each (see `Effect::FireDeath`).
        let death = lifecycle::Death {
            event: death,
            wanted,
            hold,
            restartable,
            mode,
            restarts_before,
        };
        let why = lifecycle::Why::new(cond, &text)
            .gone(gone)
            .until(now + hold.unwrap_or(0))
            .death(&death);
        let exited = ham_core::lifecycle::Input::Exit {
            restartable,
            hold: hold.is_some(),
        };
        self.step(i, exited, &why);
    }

    /// Entity `i` died and is being restarted: its group's strategy may restart others too
    /// (stopped first, then started again, each counted as an automatic restart).
    pub(super) fn restart_group(&mut self, i: EntityId) {
        let Some(g) = self.entities[i].cfg.group else {
            return;
        };
        let group = &self.cfg.groups[g];
        // A group's members are indices of the configuration's entities, which are the
        // first entries of the entity table.
        let members = group.members.iter().map(|&m| EntityId::from_index(m));
        let others: Vec<EntityId> = match group.strategy {
            Strategy::OneForOne => return,
            Strategy::OneForAll => members.filter(|&m| m != i).collect(),
            Strategy::RestForOne => members.skip_while(|&m| m != i).skip(1).collect(),
        };
        let (gname, dead) = (group.name.clone(), self.entities[i].cfg.name.clone());
        for m in others {
            if self.entities[m].rec.state == EntityState::Running {
                say!(
                    self,
                    "group {gname}: restarting {} because {dead} died",
                    self.entities[m].cfg.name
                );
                self.record(m, None, "group", "restart", &format!("{dead} died"));
                self.begin_stop(m, Wanted::AutoRestart);
            }
        }
    }

    // -- conditions and actions ------------------------------------------------------------

    /// Applies exit statuses that became readable through an adopted process's pidfd.
    pub(super) fn try_patches(&mut self, now: u64) {
        self.drain_proc_connector();
        let mut keep = Vec::new();
        for mut p in std::mem::take(&mut self.patches) {
            if p.at > now {
                keep.push(p);
                continue;
            }
            let status = match self.exit_cache.remove(&p.pid) {
                Some(ws) => Ok(Some(ws)),
                None => sys::pidfd_exit_status(&p.pidfd).map(|ws| ws.or_else(|| zombie(&p))),
            };
            match status {
                Ok(Some(ws)) => {
                    let e = &mut self.entities[p.entity];
                    if e.deaths == p.death {
                        let exit = decode_wait_status(ws);
                        e.rec.last_exit = exit;
                        self.publish(p.entity);
                        // The process log said "unknown" when the death was handled: it
                        // says what it was as soon as it is known.
                        let what = format!("pid {} {}", p.pid, describe(exit));
                        self.record(
                            p.entity,
                            Some((p.pid, exit)),
                            "exit-status",
                            "learned",
                            &what,
                        );
                        let name = self.entities[p.entity].cfg.name.clone();
                        log(&self.cfg.instance.name, format_args!("{name}: {what}"));
                    }
                }
                _ if p.tries < 14 => {
                    p.tries += 1;
                    p.at = now + (1_000_000u64 << p.tries);
                    self.schedule(p.at, Deadline::StatusPatch(p.entity));
                    keep.push(p);
                }
                _ => {} // nobody reaped it within ~30 s: it stays "unknown"
            }
        }
        if keep.len() != self.patches.len() {
            self.exit_watch_changed();
        }
        self.patches = keep;
        self.release_proc_connector_if_idle();
    }

    /// Reaps exited children. Entity processes and the Guardian go through their own exit
    /// paths (so the status lands where it belongs); anything else is an orphan that ham, as
    /// subreaper, inherited.
    ///
    /// A zombie that is an entity's process whose pidfd will tell the loop (in this turn's
    /// batch or a later one) ends the walk: it is handled there, and what lies behind it is
    /// for the next sweep. Each zombie found costs a walk over every child: a sweep that
    /// came during a storm at 10,000 entities handled 357 of its deaths so, ~1 ms each.
    pub(super) fn reap_children(&mut self) {
        loop {
            let pid = match sys::peek_exited_child() {
                Ok(Some(pid)) => pid,
                Ok(None) => return,
                Err(e) => {
                    say!(self, "waitid: {e}");
                    return;
                }
            };
            if let Some(i) = self
                .entities
                .find_by_pid(pid, |e| e.pidfd.is_some() && !e.adopted && e.rec.pid == pid)
            {
                // (Unless the last sweep was left to its pidfd already: one not in the loop's
                // set, its watch refused, never tells.)
                if std::mem::replace(&mut self.sweep_left_to, pid) != pid {
                    self.sweep_later();
                    return;
                }
                self.on_pidfd(i);
            } else if let Some(i) = self
                .entities
                .find_by_pid(pid, |e| e.exec.as_ref().is_some_and(|x| x.pid == pid))
            {
                // Dead before its `execve` was taken up: taken up now, then its death
                // (its pidfd is watched from here on).
                self.settle_exec(i);
            } else if self.guardian.is(pid) {
                self.on_guardian_exit();
            } else if let Some(id) = self.runs.waiting_for(pid) {
                self.on_action_exit(id);
            } else if let Some(p) = Pid::from_raw(pid) {
                let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG);
            }
        }
    }

    /// Schedules the sweep for orphans (`reap_children`) a second from now, unless one is.
    fn sweep_later(&mut self) {
        if self.sweep_at.is_none() {
            let at = mono_ns() + SWEEP_AFTER_NS;
            self.sweep_at = Some(at);
            self.schedule(at, Deadline::ReapSweep);
        }
    }

    pub(super) fn ensure_proc_connector(&mut self) {
        if self.proc_conn.is_some() {
            return;
        }
        match ProcConnector::open() {
            Ok(pc) => {
                let _ = epoll::add(
                    &self.epoll,
                    &pc,
                    Token::ProcConn.data(),
                    epoll::EventFlags::IN,
                );
                self.proc_conn = Some(pc);
            }
            Err(e) => say!(
                self,
                "proc connector unavailable ({e}); exit statuses of adopted processes come from their pidfds"
            ),
        }
    }

    pub(super) fn release_proc_connector_if_idle(&mut self) {
        if self.proc_conn.is_some()
            && self.patches.is_empty()
            && !self.entities.iter().any(|e| e.adopted)
        {
            self.proc_conn = None;
            self.exit_cache.clear();
            self.exit_watch = None;
        }
    }

    pub(super) fn drain_proc_connector(&mut self) {
        let Some(pc) = &self.proc_conn else { return };
        let (entities, patches) = (&self.entities, &self.patches);
        let watched = self.exit_watch.get_or_insert_with(|| {
            entities
                .iter()
                .filter(|e| e.adopted)
                .map(|e| e.rec.pid)
                .chain(patches.iter().map(|p| p.pid))
                .collect()
        });
        pc.drain(|pid| watched.contains(&pid), &mut self.exit_cache);
    }

    /// An entity was adopted or no longer is, or a status patch came or went: the pids the
    /// proc connector is read for are gathered again when next needed.
    pub(super) fn exit_watch_changed(&mut self) {
        self.exit_watch = None;
    }

    // -- control socket --------------------------------------------------------------------
}

pub(super) fn condition_of(exit: LastExit) -> &'static str {
    if exit.is_abnormal() {
        "abnormal-death"
    } else {
        "death"
    }
}

pub(super) fn describe(exit: LastExit) -> String {
    match exit {
        LastExit::Code(c) => format!("exited with code {c}"),
        LastExit::Signal(s) => format!("killed by signal {s}"),
        LastExit::Unknown => "died (status unknown)".into(),
        LastExit::None => "ended".into(),
    }
}

pub(super) fn decode_waitid(st: &rustix::process::WaitIdStatus) -> LastExit {
    if let Some(code) = st.exit_status() {
        LastExit::Code(code)
    } else if let Some(sig) = st.terminating_signal() {
        LastExit::Signal(sig)
    } else {
        LastExit::Unknown
    }
}

/// Decodes a `wait(2)` status word.
pub fn decode_wait_status(ws: i32) -> LastExit {
    let sig = ws & 0x7f;
    if sig == 0 {
        LastExit::Code((ws >> 8) & 0xff)
    } else if sig != 0x7f {
        LastExit::Signal(sig)
    } else {
        LastExit::Unknown
    }
}

/// The wait status of a patch's process while it is a zombie no one has reaped (its exit
/// code in `/proc/PID/stat`). Root only: to another user the kernel shows 0 there, which
/// would read as a clean exit.
fn zombie(p: &StatusPatch) -> Option<i32> {
    rustix::process::geteuid()
        .is_root()
        .then(|| procfs::zombie_status(p.pid, p.start_time))
        .flatten()
}
