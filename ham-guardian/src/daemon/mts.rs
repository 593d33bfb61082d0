//! The entities' message queues (`ham_core::mts`): made on the first message sent to an
//! entity, kept across its restarts, ham's takeovers and warm starts (a named shm object of
//! ham's own, found again by slot and checked to be the entity's), dropped by a stateless
//! restart. A receiver that waits holds its request until a message comes or its wait ends
//! (no polling); a message leaves the queue only when the receiver acknowledges it.

use ham_core::mts::{MtsError, MtsMap};
use ham_core::protocol::MtsItem;

use super::*;

/// Receivers waiting at most, per entity (each holds a connection).
const WAITERS_PER_ENTITY: usize = 16;

/// A receiver waiting for a message.
pub(super) struct MtsWaiter {
    stream: UnixStream,
    until: u64,
}

impl MtsWaiter {
    /// The receiver closed its end (it was killed, or gave up): a message must not be
    /// handed to it.
    fn gone(&self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            rustix::net::recv(
                &self.stream,
                &mut b,
                rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT
            ),
            Ok((0, _)) | Err(rustix::io::Errno::CONNRESET | rustix::io::Errno::PIPE)
        )
    }
}

impl Daemon {
    fn mts_file(&self, i: EntityId) -> std::path::PathBuf {
        ham_core::paths::mts_file(
            &self.cfg.instance.state_dir,
            &self.cfg.instance.name,
            &self.entities[i].cfg.name,
        )
    }

    fn mts_name(&self, i: EntityId) -> String {
        ham_core::paths::mts_queue(&self.cfg.instance.name, self.entities[i].slot.0)
    }

    /// The receiver's incarnation: which process of it a message was handed to (each
    /// start or restart is a new one).
    fn incarnation(&self, i: EntityId) -> u32 {
        let r = &self.entities[i].rec;
        r.starts.wrapping_add(r.restarts).max(1)
    }

    /// Entity `i`'s queue: held, left by a predecessor (if it is this entity's), or (with
    /// `make`) new.
    fn mts_queue(&mut self, i: EntityId, make: bool) -> Result<Option<&MtsMap>, String> {
        if self.entities[i].stores.mts.is_none() {
            let name = self.mts_name(i);
            let entity = self.entities[i].cfg.name.clone();
            let found = match MtsMap::open(&name) {
                Ok(q) if q.owner() == entity => Some(q),
                Ok(_) => {
                    MtsMap::unlink(&name);
                    None
                }
                Err(SegmentError::NotFound { .. }) => None,
                Err(e) => return Err(format!("{entity}: its message queue: {e}")),
            };
            let durable = self.entities[i].cfg.mts_durable && self.mts_file(i).exists();
            let q = match found {
                Some(q) => q,
                None if make || durable => {
                    let q = MtsMap::create(&name, self.entities[i].cfg.rare.mts, &entity)
                        .map_err(|e| format!("{entity}: cannot make its message queue: {e}"))?;
                    if durable {
                        self.mts_restore(&q, i);
                    }
                    q
                }
                None => return Ok(None),
            };
            self.entities[i].stores.mts = Some(q);
        }
        Ok(self.entities[i].stores.mts.as_ref())
    }

    /// Fills a new queue from entity `i`'s durable file (a cold start: a reboot).
    fn mts_restore(&self, q: &MtsMap, i: EntityId) {
        let (path, entity) = (self.mts_file(i), &self.entities[i].cfg.name);
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| ham_core::mts::decode_queue(&b))
        {
            Ok(messages) => {
                let n = messages.len();
                for m in &messages {
                    if let Err(e) = q.restore(m) {
                        say!(self, "{entity}: message {} not restored: {e}", m.id);
                    }
                }
                say!(
                    self,
                    "{entity}: {n} queued message(s) restored from {}",
                    path.display()
                );
            }
            Err(why) => say!(
                self,
                "{entity}: {} is not used: {why}; its queued messages are lost",
                path.display()
            ),
        }
    }

    /// `mts-send`, answered: at once, or for a durable queue once the message is on disk.
    pub(super) fn mts_send_answer(
        &mut self,
        i: EntityId,
        peer: Peer,
        key: u64,
        data: &[u8],
        stream: UnixStream,
    ) {
        let (r, id) = self.mts_send(i, peer, key, data);
        match id.filter(|_| self.entities[i].cfg.mts_durable) {
            Some(id) if id > self.entities[i].stores.mts_durable.committed => {
                self.entities[i]
                    .stores
                    .mts_durable
                    .waiters
                    .push((stream, id));
                self.mts_commit(i);
            }
            _ => reply(stream, &r),
        }
    }

    /// Hands entity `i`'s queue to the committer, unless a write of it is under way.
    pub(super) fn mts_commit(&mut self, i: EntityId) {
        if self.entities[i].stores.mts_durable.writing.is_some() {
            self.entities[i].stores.mts_durable.again = true;
            return;
        }
        let Some(q) = self.entities[i].stores.mts.as_ref() else {
            return;
        };
        let seq = q.last_id();
        let job = super::pss::Job {
            store: super::pss::Store::Mts,
            entity: i,
            epoch: self.entities[i].stores.mts_durable.epoch,
            seq,
            path: self.mts_file(i),
            bytes: ham_core::mts::encode_queue(&q.messages()),
        };
        match self.submit(job) {
            Ok(()) => {
                let d = &mut self.entities[i].stores.mts_durable;
                d.writing = Some(seq);
                d.again = false;
            }
            Err(why) => {
                say!(self, "{why}");
                self.mts_answer(i, Err(why));
            }
        }
    }

    /// The committer wrote (or not) a queue's file.
    pub(super) fn mts_committed(&mut self, d: super::pss::Done) {
        let i = d.entity;
        let dur = &mut self.entities[i].stores.mts_durable;
        dur.writing = None;
        if d.epoch != dur.epoch {
            if d.result.is_ok() && self.entities[i].stores.mts.is_none() {
                let _ = std::fs::remove_file(&d.path);
            }
            return;
        }
        match d.result {
            Ok(()) => {
                dur.committed = dur.committed.max(d.seq);
                self.mts_answer(i, Ok(d.seq));
            }
            Err(why) => {
                let why = format!(
                    "{}: cannot write {}: {why}",
                    self.entities[i].cfg.name,
                    d.path.display()
                );
                self.say_limited("mts-commit", format_args!("{why}"));
                self.mts_answer(i, Err(why));
            }
        }
        let dur = &self.entities[i].stores.mts_durable;
        if dur.again || !dur.waiters.is_empty() {
            self.mts_commit(i);
        }
    }

    /// Answers the senders whose message a commit of ids up to `seq` has on disk (all of
    /// them on an error: their message is queued, not durable).
    fn mts_answer(&mut self, i: EntityId, result: Result<u64, String>) {
        let to = self.entities[i].cfg.name.clone();
        for (stream, id) in std::mem::take(&mut self.entities[i].stores.mts_durable.waiters) {
            match &result {
                Ok(seq) if id <= *seq => reply(
                    stream,
                    &Response::ok(format!("queued for `{to}` as message {id}")),
                ),
                Ok(_) => self.entities[i]
                    .stores
                    .mts_durable
                    .waiters
                    .push((stream, id)),
                Err(why) => reply(stream, &Response::errno(libc::EIO, why.clone())),
            }
        }
    }

    /// `mts-send`: queues a message for entity `i`, from root or from the process of an
    /// entity its `accept_from` names; a waiting receiver gets it at once.
    /// The answer, and the message's id when it was queued.
    fn mts_send(
        &mut self,
        i: EntityId,
        peer: Peer,
        key: u64,
        data: &[u8],
    ) -> (Response, Option<u64>) {
        let to = self.entities[i].cfg.name.clone();
        let senders: Vec<String> = self.entities[i]
            .cfg
            .rare
            .accept_from
            .iter()
            .map(|&j| self.entities[EntityId::from_index(j)].cfg.name.clone())
            .collect();
        let sender = self.with_caller(peer, |c| {
            authz::may_send(c, &to, senders.iter().map(String::as_str))
        });
        let sender = match sender {
            Ok(s) => s,
            Err((errno, why)) => return (Response::errno(errno, why), None),
        };
        let queue = match self.mts_queue(i, true) {
            Ok(Some(q)) => q,
            Ok(None) => {
                return (
                    Response::errno(libc::EIO, format!("`{to}` has no queue")),
                    None,
                );
            }
            Err(why) => return (Response::errno(libc::ENOSPC, why), None),
        };
        match queue.push(key, &sender, peer.uid, data) {
            Ok(id) => {
                self.mts_wake(i);
                let r = Response::ok(format!("queued for `{to}` as message {id}"));
                (r, Some(id))
            }
            Err(e @ MtsError::Full { .. }) => {
                (Response::errno(libc::ENOSPC, format!("`{to}`: {e}")), None)
            }
            Err(e @ MtsError::TooLarge { .. }) => (
                Response::errno(libc::EMSGSIZE, format!("`{to}`: {e}")),
                None,
            ),
        }
    }

    /// `mts-recv`: the oldest message of entity `i`'s queue for its own process, now, or
    /// once one comes within `wait_ns`.
    pub(super) fn mts_recv(&mut self, i: EntityId, peer: Peer, wait_ns: u64, stream: UnixStream) {
        let entity = self.entities[i].cfg.name.clone();
        if let Err((errno, why)) = self.with_caller(peer, |c| authz::may_receive(c, &entity)) {
            reply(stream, &Response::errno(errno, why));
            return;
        }
        if let Some(r) = self.mts_take(i) {
            reply(stream, &r);
            return;
        }
        if wait_ns == 0 {
            reply(stream, &no_message(&entity));
            return;
        }
        // Receivers that went away while waiting (killed) hold no place.
        self.entities[i].stores.mts_waiters.retain(|w| !w.gone());
        if self.entities[i].stores.mts_waiters.len() >= WAITERS_PER_ENTITY {
            reply(
                stream,
                &Response::errno(
                    libc::EBUSY,
                    format!("`{entity}` has {WAITERS_PER_ENTITY} receivers waiting already"),
                ),
            );
            return;
        }
        let until = mono_ns().saturating_add(wait_ns.min(3_600_000_000_000));
        self.entities[i]
            .stores
            .mts_waiters
            .push(MtsWaiter { stream, until });
        self.mts_schedule(i);
    }

    /// The oldest message, handed to entity `i`'s current incarnation, as an answer.
    fn mts_take(&mut self, i: EntityId) -> Option<Response> {
        let inc = self.incarnation(i);
        let q = self.mts_queue(i, false).ok()??;
        let m = q.deliver(inc)?;
        let mut r = Response::ok(format!("message {}", m.id));
        r.mts = Some(Box::new(MtsItem {
            id: m.id,
            deliveries: m.deliveries,
            sender: m.sender,
            data: m.bytes,
        }));
        Some(r)
    }

    /// A message came for entity `i`: its first waiting receiver gets it.
    fn mts_wake(&mut self, i: EntityId) {
        self.entities[i].stores.mts_waiters.retain(|w| !w.gone());
        if self.entities[i].stores.mts_waiters.is_empty() {
            return;
        }
        if let Some(r) = self.mts_take(i) {
            let w = self.entities[i].stores.mts_waiters.remove(0);
            reply(w.stream, &r);
        }
    }

    /// `mts-ack`: message `id` of entity `i`'s queue is handled (its own processes only).
    pub(super) fn mts_ack(&mut self, i: EntityId, peer: Peer, id: u64) -> Response {
        let entity = self.entities[i].cfg.name.clone();
        if let Err((errno, why)) = self.with_caller(peer, |c| authz::may_receive(c, &entity)) {
            return Response::errno(errno, why);
        }
        let acked = matches!(self.mts_queue(i, false), Ok(Some(q)) if q.ack(id));
        if acked && self.entities[i].cfg.mts_durable {
            self.mts_commit(i);
        }
        if acked {
            // The next message, for a receiver that waits.
            self.mts_wake(i);
            Response::ok(format!("message {id} of `{entity}` handled"))
        } else {
            Response::errno(
                libc::ENOENT,
                format!("`{entity}` has no message {id} queued"),
            )
        }
    }

    /// Waiting receivers of entity `i` whose wait is over get `EAGAIN`.
    pub(super) fn mts_timeouts(&mut self, i: EntityId, now: u64) {
        let entity = self.entities[i].cfg.name.clone();
        let (over, still): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.entities[i].stores.mts_waiters)
                .into_iter()
                .partition(|w| w.until <= now);
        self.entities[i].stores.mts_waiters = still;
        for w in over {
            reply(w.stream, &no_message(&entity));
        }
        self.mts_schedule(i);
    }

    /// The deadline of entity `i`'s first waiting receiver.
    pub(super) fn mts_deadline(&self, i: EntityId) -> Option<u64> {
        self.entities[i]
            .stores
            .mts_waiters
            .iter()
            .map(|w| w.until)
            .min()
    }

    fn mts_schedule(&mut self, i: EntityId) {
        if let Some(at) = self.mts_deadline(i) {
            self.schedule(at, Deadline::MtsWait(i));
        }
    }

    /// A stateless restart, or entity `i` is gone: its queue goes with what it held.
    pub(super) fn mts_drop(&mut self, i: EntityId) {
        self.entities[i].stores.mts = None;
        MtsMap::unlink(&self.mts_name(i));
        // Stores never used have no write to void and no one waiting: they stay at rest.
        if self.entities[i].stores.is_allocated() {
            let d = &mut self.entities[i].stores.mts_durable;
            d.epoch += 1;
            d.committed = 0;
            d.again = false;
            self.mts_answer(i, Err("the queue was dropped".into()));
        }
        let path = self.mts_file(i);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => say!(self, "cannot remove {}: {e}", path.display()),
        }
    }
}

fn no_message(entity: &str) -> Response {
    Response::errno(libc::EAGAIN, format!("no message for `{entity}`"))
}
