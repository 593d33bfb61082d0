//! Subscribers (`notify` actions' receivers) and the actions that reach clients.

use std::io::Write;
use std::os::unix::net::UnixStream;

use ham_core::EntityState;
use ham_core::protocol::{Notification, Response};
use rustix::event::epoll;
use rustix::process::{Pid, PidfdFlags};

use super::clients::*;
use super::{Daemon, EntityId, Token};
use crate::actions::ActionKind;
use crate::{mono_ns, unix_ns};

impl Daemon {
    pub(super) fn subscribe(
        &mut self,
        topic: String,
        signal: Option<i32>,
        peer: Peer,
        stream: UnixStream,
    ) {
        // Each subscription holds a descriptor: bounded per unprivileged uid, and in all
        // with a share kept for root and ham's user.
        if peer.uid != 0 && peer.uid != self.my_uid {
            let mine = self
                .subscribers
                .values()
                .filter(|s| s.uid == peer.uid)
                .count();
            if mine >= SUBS_PER_UID || self.subscribers.len() >= SUBS_MAX - SUBS_RESERVED {
                self.wrote(self.writer.bump_limit(ham_core::layout::LIMIT_SUBS));
                self.say_limited(
                    "subs-refused",
                    format_args!(
                        "refused a subscription from uid {} (pid {}): {mine} open",
                        peer.uid, peer.pid
                    ),
                );
                super::reply(
                    stream,
                    &Response::errno(
                        libc::EAGAIN,
                        format!(
                            "uid {} has {mine} subscriptions (at most {SUBS_PER_UID}), or \
                             unprivileged users hold their share of {}",
                            peer.uid,
                            SUBS_MAX - SUBS_RESERVED
                        ),
                    ),
                );
                return;
            }
        } else if self.subscribers.len() >= SUBS_MAX {
            self.wrote(self.writer.bump_limit(ham_core::layout::LIMIT_SUBS));
            super::reply(
                stream,
                &Response::errno(libc::EAGAIN, format!("{SUBS_MAX} subscriptions are open")),
            );
            return;
        }
        let signal = match signal {
            None => None,
            Some(sig) => {
                let fd = Pid::from_raw(peer.pid)
                    .and_then(|p| rustix::process::pidfd_open(p, PidfdFlags::empty()).ok());
                match (fd, rustix::process::Signal::from_named_raw(sig)) {
                    (Some(fd), Some(_)) => Some((fd, sig)),
                    _ => {
                        super::reply(
                            stream,
                            &Response::err(format!("cannot signal pid {} with {sig}", peer.pid)),
                        );
                        return;
                    }
                }
            }
        };
        let first = Response::ok(format!("subscribed to `{topic}`")).to_line();
        let ok = (&stream).write_all(&first).is_ok() && stream.set_nonblocking(true).is_ok();
        if !ok {
            return;
        }
        let id = self.next_sub;
        self.next_sub += 1;
        if epoll::add(
            &self.epoll,
            &stream,
            Token::Sub(id).data(),
            epoll::EventFlags::RDHUP | epoll::EventFlags::IN,
        )
        .is_ok()
        {
            self.subscribers.insert(
                id,
                super::clients::Subscriber {
                    topic,
                    stream,
                    uid: peer.uid,
                    signal,
                },
            );
        }
    }

    /// A subscriber hung up (or wrote to us, which it must not): drop it.
    pub(super) fn on_subscriber(&mut self, id: u64) {
        if let Some(s) = self.subscribers.remove(&id) {
            let _ = epoll::delete(&self.epoll, &s.stream);
        }
    }

    /// A `notify` action: one line to each subscriber of the topic. Returns how many got it.
    pub(super) fn notify(
        &mut self,
        i: EntityId,
        topic: &str,
        condition: &str,
        (code, value): (Option<i32>, Option<i32>),
    ) -> usize {
        let e = &self.entities[i];
        let n = Notification {
            topic: topic.to_owned(),
            entity: e.cfg.name.clone(),
            condition: condition.to_owned(),
            pid: e.rec.pid,
            time_unix_ns: unix_ns(),
            code,
            value,
        };
        let mut line = serde_json::to_vec(&n).expect("a notification serialises");
        line.push(b'\n');
        let mut sent = 0;
        let mut gone = Vec::new();
        for (id, s) in &self.subscribers {
            if s.topic != topic && s.topic != "*" {
                continue;
            }
            if let Some((pidfd, sig)) = &s.signal {
                if let Some(sig) = rustix::process::Signal::from_named_raw(*sig) {
                    let _ = rustix::process::pidfd_send_signal(pidfd, sig);
                }
            }
            // Non-blocking: a subscriber that does not read is dropped, not waited for.
            match (&s.stream).write(&line) {
                Ok(k) if k == line.len() => sent += 1,
                _ => gone.push(*id),
            }
        }
        for id in gone {
            self.on_subscriber(id);
        }
        sent
    }

    /// Whether an action kind is carried out here, and how it went.
    pub(super) fn run_client_action(
        &mut self,
        i: EntityId,
        cond: &str,
        kind: &ActionKind,
    ) -> Option<Result<String, String>> {
        Some(match kind {
            ActionKind::Notify { topic, code, value } => {
                let n = self.notify(i, topic, cond, (*code, *value));
                Ok(format!("{topic}: {n} subscriber(s)"))
            }
            ActionKind::SignalPid { pid, signal, value } => {
                match crate::sys::sigqueue(*pid, *signal, *value) {
                    Ok(()) => Ok(format!("signal {signal} (value {value}) to pid {pid}")),
                    Err(e) => Err(format!("pid {pid}: {e}")),
                }
            }
            ActionKind::HeartbeatHealthy => {
                if self.heartbeat_healthy(i) {
                    Ok("heartbeat marked healthy".into())
                } else if self.entities[i].watchdog_at.is_some() {
                    // An sd_notify watchdog: one full period from now.
                    self.pet_watchdog(i, mono_ns(), None);
                    Ok("watchdog marked healthy".into())
                } else {
                    Err("no heartbeat is attached".into())
                }
            }
            ActionKind::Restart { entity, command } => {
                let j = entity.map(EntityId::from_index).unwrap_or(i);
                let target = &self.entities[j];
                // Under a death condition, an entity its own policy already started again (or
                // holds off) is not restarted a second time, nor one an operator stopped.
                if matches!(cond, "death" | "abnormal-death") {
                    let already = match target.rec.state {
                        EntityState::Starting | EntityState::Running => {
                            Some("was already restarted by its policy")
                        }
                        EntityState::HeldOff | EntityState::Backoff => {
                            Some("is held off by its policy")
                        }
                        _ if target.wanted == ham_core::policy::Wanted::Down => {
                            Some("was stopped by an operator")
                        }
                        _ => None,
                    };
                    if let Some(why) = already {
                        return Some(Ok(format!("{} {why}", target.cfg.name)));
                    }
                }
                // From now on it runs this command line. What the entity is does not change:
                // a self-attached one stays self-attached (its missed heartbeats are its
                // conditions' business, never a hang ham acts on by itself).
                if let Some((path, argv)) = command {
                    let e = &mut self.entities[j];
                    e.cfg.exec_path = path.clone();
                    e.cfg.argv = argv.clone();
                }
                self.restart_asked(j, cond);
                // Whether its program ran is part of the answer.
                self.settle_exec(j);
                let e = &self.entities[j];
                match (e.rec.state, &e.last_spawn_error) {
                    // Its program could not be run (QNX checks it at spawn time): the
                    // action fails (its fail list runs); ham keeps retrying.
                    (EntityState::Backoff, Some(why)) => Err(why.clone()),
                    (EntityState::HeldOff, _) => {
                        Ok(format!("{} held off by its policy", e.cfg.name))
                    }
                    (EntityState::Exited, _) => Ok(format!("{}: its policy gives up", e.cfg.name)),
                    _ => Ok(format!("restarting {}", e.cfg.name)),
                }
            }
            ActionKind::Stop { entity } => {
                let j = entity.map(EntityId::from_index).unwrap_or(i);
                self.begin_stop(j, ham_core::policy::Wanted::Down);
                Ok(format!("stopping {}", self.entities[j].cfg.name))
            }
            ActionKind::HoldOff { entity, ns } => {
                let j = entity.map(EntityId::from_index).unwrap_or(i);
                let e = &mut self.entities[j];
                if e.rec.state.has_process() {
                    e.hold_after_stop = Some(*ns);
                    self.begin_stop(j, ham_core::policy::Wanted::Down);
                } else {
                    self.hold_off(j, mono_ns() + ns);
                }
                Ok(format!(
                    "{} held off for {}",
                    self.entities[j].cfg.name,
                    ham_core::duration::format_ns(*ns)
                ))
            }
            _ => return None,
        })
    }
}
