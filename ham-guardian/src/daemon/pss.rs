//! The entities' checkpoint stores (`ham_core::pss`): a region per entity, made when its
//! process first opens it, kept across the process's death, a takeover and a warm start
//! (it is a named shm object of ham's own, found again by its slot and checked to be the
//! entity's), and emptied by a stateless restart. Durable keys are also kept on disk, one
//! file per entity under `state_dir`, written whole (write, fsync, rename, fsync the
//! folder), so that a put is on disk all or not at all; a cold start (a reboot, or a new
//! ham after `hamctl shutdown`) fills a new region from that file.

use std::io::Write as _;

use ham_core::protocol::PssItem;
use ham_core::pss::{FLAG_DURABLE, PssMap};

use super::*;

/// `HAM_PREVIOUS_EXIT`: how the previous process ended (`none` if there was none).
pub(super) fn previous_exit(rec: &EntityRecord) -> String {
    if rec.exited_unix_ns == 0 {
        return "none".into();
    }
    match rec.last_exit {
        LastExit::Code(c) => format!("exit:{c}"),
        LastExit::Signal(s) => format!("signal:{s}"),
        LastExit::Unknown => "unknown".into(),
        LastExit::None => "none".into(),
    }
}

impl Daemon {
    fn pss_name(&self, i: EntityId) -> String {
        ham_core::paths::pss_region(&self.cfg.instance.name, self.entities[i].slot.0)
    }

    fn pss_file(&self, i: EntityId) -> std::path::PathBuf {
        ham_core::paths::pss_file(
            &self.cfg.instance.state_dir,
            &self.cfg.instance.name,
            &self.entities[i].cfg.name,
        )
    }

    /// Entity `i`'s region: the one this HAM holds, the one a predecessor left (if it is
    /// this entity's), or a new one, filled from its durable file if there is one. With
    /// `make` false, no new region is made unless there is a durable file (a reader of an
    /// entity that never used its store costs no memory): `Ok(None)`.
    fn pss_region(&mut self, i: EntityId, make: bool) -> Result<Option<&PssMap>, String> {
        if self.entities[i].stores.pss.is_none() {
            let name = self.pss_name(i);
            let entity = self.entities[i].cfg.name.clone();
            let found = match PssMap::open(&name) {
                Ok(m) if m.owner().as_deref() == Some(entity.as_str()) => Some(m),
                Ok(_) => {
                    // Another entity's, from before this slot was given to this one.
                    PssMap::unlink(&name);
                    None
                }
                Err(SegmentError::NotFound { .. }) => None,
                Err(e) => return Err(format!("{entity}: its checkpoint store: {e}")),
            };
            let map = match found {
                Some(m) => m,
                None if make || self.pss_file(i).exists() => self.pss_create(i, &name)?,
                None => return Ok(None),
            };
            self.entities[i].stores.pss = Some(map);
        }
        Ok(self.entities[i].stores.pss.as_ref())
    }

    /// A new region for entity `i`, with its durable keys from disk.
    fn pss_create(&mut self, i: EntityId, name: &str) -> Result<PssMap, String> {
        let e = &self.entities[i];
        let entity = e.cfg.name.clone();
        let (map, _fd) = PssMap::create(name, e.cfg.rare.pss, &entity)
            .map_err(|err| format!("{entity}: cannot make its checkpoint store: {err}"))?;
        let path = self.pss_file(i);
        match std::fs::read(&path) {
            Ok(bytes) => match ham_core::pss::decode_durable(&bytes) {
                Ok(values) => {
                    let n = values.len();
                    for v in values {
                        if let Err(err) = map.put(&v.key, &v.bytes, v.flags) {
                            say!(
                                self,
                                "{entity}: durable key `{}` not restored: {err}",
                                v.key
                            );
                        }
                    }
                    say!(
                        self,
                        "{entity}: {n} durable checkpoint(s) restored from {}",
                        path.display()
                    );
                }
                Err(why) => say!(
                    self,
                    "{entity}: {} is not used: {why}; its durable checkpoints are lost",
                    path.display()
                ),
            },
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => say!(self, "{entity}: cannot read {}: {err}", path.display()),
        }
        Ok(map)
    }

    /// `pss-open`: a descriptor of entity `i`'s region, for its own processes.
    pub(super) fn pss_open(&mut self, i: EntityId, peer: Peer) -> (Response, Option<OwnedFd>) {
        let entity = self.entities[i].cfg.name.clone();
        if let Err((errno, why)) = self.with_caller(peer, |c| authz::may_write_pss(c, &entity)) {
            return (Response::errno(errno, why), None);
        }
        if let Err(why) = self.pss_region(i, true) {
            return (Response::errno(libc::ENOSPC, why), None);
        }
        match PssMap::descriptor(&self.pss_name(i)) {
            Ok(fd) => (
                Response::ok(format!("checkpoint store of `{entity}`")),
                Some(fd),
            ),
            Err(e) => (Response::errno(libc::EIO, e.to_string()), None),
        }
    }

    /// `pss-sync`: answered once entity `i`'s durable keys as they are now are on disk.
    /// Every request that comes while a write is under way is answered by the next one
    /// (group commit), and the writing happens on the committer's thread: the loop never
    /// waits for a disk.
    pub(super) fn pss_sync(&mut self, i: EntityId, peer: Peer, stream: UnixStream) {
        let entity = self.entities[i].cfg.name.clone();
        if let Err((errno, why)) = self.with_caller(peer, |c| authz::may_write_pss(c, &entity)) {
            reply(stream, &Response::errno(errno, why));
            return;
        }
        let seq = match self.pss_region(i, false) {
            Ok(Some(map)) => map.seq(),
            Ok(None) => 0,
            Err(why) => {
                reply(stream, &Response::errno(libc::EIO, why));
                return;
            }
        };
        let e = &mut self.entities[i];
        if seq <= e.stores.pss_durable.committed {
            reply(stream, &Response::ok(format!("`{entity}`: on disk")));
            return;
        }
        e.stores.pss_durable.waiters.push((stream, seq));
        self.pss_commit(i);
    }

    /// Hands entity `i`'s durable keys to the committer, unless a write of them is under
    /// way (its waiters then get the next one).
    fn pss_commit(&mut self, i: EntityId) {
        if self.entities[i].stores.pss_durable.writing.is_some() {
            return;
        }
        let Some(map) = self.entities[i].stores.pss.as_ref() else {
            return;
        };
        let seq = map.seq();
        let values: Vec<_> = map
            .entries()
            .into_iter()
            .filter(|v| v.flags & FLAG_DURABLE != 0)
            .collect();
        let job = Job {
            store: Store::Pss,
            entity: i,
            epoch: self.entities[i].stores.pss_durable.epoch,
            seq,
            path: self.pss_file(i),
            bytes: ham_core::pss::encode_durable(&values),
        };
        match self.submit(job) {
            Ok(()) => self.entities[i].stores.pss_durable.writing = Some(seq),
            Err(why) => {
                say!(self, "{why}");
                self.pss_answer(i, Err(why));
            }
        }
    }

    /// Hands a file to the committer (started on first use).
    pub(super) fn submit(&mut self, job: Job) -> Result<(), String> {
        let committer = match &self.committer {
            Some(c) => c,
            None => match Committer::start(&self.epoll) {
                Ok(c) => self.committer.insert(c),
                Err(e) => return Err(format!("cannot start the committer: {e}")),
            },
        };
        if committer.jobs.send(job).is_err() {
            self.committer = None; // its thread is gone: a new one next time
            return Err("the committer stopped".into());
        }
        Ok(())
    }

    /// The committer finished some writes: their waiters are answered, and an entity whose
    /// keys changed meanwhile (a waiter asked for more) is written again.
    pub(super) fn on_pss_committed(&mut self) {
        let Some(c) = &self.committer else { return };
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&c.done_fd, &mut buf);
        let done: Vec<Done> =
            std::mem::take(&mut *c.done.lock().unwrap_or_else(|p| p.into_inner()));
        for d in done {
            if d.entity.index() >= self.entities.len() {
                continue;
            }
            if d.store == Store::Mts {
                self.mts_committed(d);
                continue;
            }
            let e = &mut self.entities[d.entity];
            if d.epoch != e.stores.pss_durable.epoch {
                // Written for a store emptied since (a stateless restart): not its keys.
                if d.result.is_ok() && e.stores.pss.is_none() {
                    let _ = std::fs::remove_file(&d.path);
                }
                e.stores.pss_durable.writing = None;
                continue;
            }
            e.stores.pss_durable.writing = None;
            match d.result {
                Ok(()) => {
                    e.stores.pss_durable.committed = e.stores.pss_durable.committed.max(d.seq);
                    self.pss_answer(d.entity, Ok(d.seq));
                }
                Err(why) => {
                    let why = format!(
                        "{}: cannot write {}: {why}",
                        self.entities[d.entity].cfg.name,
                        d.path.display()
                    );
                    self.say_limited("pss-commit", format_args!("{why}"));
                    self.pss_answer(d.entity, Err(why));
                }
            }
            if !self.entities[d.entity]
                .stores
                .pss_durable
                .waiters
                .is_empty()
            {
                self.pss_commit(d.entity);
            }
        }
    }

    /// Answers entity `i`'s sync waiters that a commit of `seq` covers (all of them on an
    /// error).
    fn pss_answer(&mut self, i: EntityId, result: Result<u64, String>) {
        let name = self.entities[i].cfg.name.clone();
        let waiters = std::mem::take(&mut self.entities[i].stores.pss_durable.waiters);
        for (stream, want) in waiters {
            match &result {
                Ok(seq) if want <= *seq => {
                    reply(stream, &Response::ok(format!("`{name}`: on disk")));
                }
                Ok(_) => self.entities[i]
                    .stores
                    .pss_durable
                    .waiters
                    .push((stream, want)),
                Err(why) => reply(stream, &Response::errno(libc::EIO, why.clone())),
            }
        }
    }

    /// `pss-read`: entity `i`'s key (or every key) as the caller may see them: all of
    /// them for its own processes and operators, the shared ones for anyone else.
    pub(super) fn pss_read(&mut self, i: EntityId, key: Option<String>, peer: Peer) -> Response {
        let entity = self.entities[i].cfg.name.clone();
        let all = self.with_caller(peer, |c| authz::may_write_pss(c, &entity).is_ok());
        let values = match (self.pss_region(i, false), &key) {
            (Err(why), _) => return Response::errno(libc::EIO, why),
            (Ok(None), _) => Vec::new(),
            (Ok(Some(map)), Some(k)) => match map.get(k) {
                Ok(v) => v.into_iter().collect(),
                Err(e) => return Response::errno(libc::EINVAL, e.to_string()),
            },
            (Ok(Some(map)), None) => map.entries(),
        };
        let (visible, hidden): (Vec<_>, Vec<_>) =
            values.into_iter().partition(|v| all || v.shared());
        if let (Some(k), true) = (&key, visible.is_empty() && !hidden.is_empty()) {
            return Response::errno(
                libc::EACCES,
                format!("key `{k}` of `{entity}` is private to its processes"),
            );
        }
        if let (Some(k), true) = (&key, visible.is_empty()) {
            return Response::errno(libc::ENOENT, format!("`{entity}` has no key `{k}`"));
        }
        let mut r = Response::ok(format!("{} key(s) of `{entity}`", visible.len()));
        r.pss = Some(
            visible
                .into_iter()
                .map(|v| PssItem {
                    shared: v.shared(),
                    durable: v.durable(),
                    key: v.key,
                    value: v.bytes,
                    generation: v.generation,
                })
                .collect(),
        );
        r
    }

    /// A stateless restart of entity `i`: its next process starts from an empty store (the
    /// region and the durable file go; a process of the old one still mapping the region
    /// writes into memory no one reads).
    pub(super) fn pss_clear(&mut self, i: EntityId) {
        self.pss_reset(i);
        PssMap::unlink(&self.pss_name(i));
        let path = self.pss_file(i);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => say!(self, "cannot remove {}: {e}", path.display()),
        }
    }

    /// Entity `i`'s store is dropped: what it had on disk, and writes under way, are void;
    /// its sync waiters are answered (their keys are gone).
    fn pss_reset(&mut self, i: EntityId) {
        // Stores never used have no write to void and no one waiting: they stay at rest
        // (a stateless restart of any entity comes here).
        if !self.entities[i].stores.is_allocated() {
            return;
        }
        let d = &mut self.entities[i].stores.pss_durable;
        d.epoch += 1;
        d.committed = 0;
        self.entities[i].stores.pss = None;
        self.pss_answer(i, Err("the checkpoint store was emptied".into()));
    }

    /// Entity `i` is no longer this entity (removed, or its slot given to another): its
    /// region goes (its durable file stays, under its name).
    pub(super) fn pss_forget(&mut self, i: EntityId) {
        self.pss_reset(i);
        PssMap::unlink(&self.pss_name(i));
    }
}

/// Where an entity's durable keys stand.
pub(super) struct Durable {
    /// The region's sequence number the file on disk has (this HAM's knowledge: a
    /// successor starts at 0 and writes once more).
    pub committed: u64,
    /// A write under way, of that sequence number.
    pub writing: Option<u64>,
    /// `pss-sync` requests waiting, with the sequence number each needs on disk.
    pub waiters: Vec<(UnixStream, u64)>,
    /// Bumped when the store is emptied or forgotten: a write begun before is void.
    pub epoch: u64,
    /// It changed while a write was under way (an acknowledged message): write again.
    pub again: bool,
}

impl Durable {
    /// Nothing on disk known, nothing under way.
    pub const NONE: Self = Self {
        committed: 0,
        writing: None,
        waiters: Vec::new(),
        epoch: 0,
        again: false,
    };
}

/// What a committed file is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Store {
    /// An entity's durable checkpoints.
    Pss,
    /// An entity's durable message queue.
    Mts,
}

/// A file to write.
pub(super) struct Job {
    pub store: Store,
    pub entity: EntityId,
    pub epoch: u64,
    pub seq: u64,
    pub path: std::path::PathBuf,
    pub bytes: Vec<u8>,
}

/// A file written (or not).
pub(super) struct Done {
    pub store: Store,
    pub entity: EntityId,
    pub epoch: u64,
    pub seq: u64,
    pub path: std::path::PathBuf,
    pub result: Result<(), String>,
}

/// The thread that writes durable checkpoint files, so that the loop never waits for a
/// disk: jobs in through a channel, results back through a list and an eventfd the loop
/// watches. It takes every job waiting at once and writes each file once (the newest).
pub(super) struct Committer {
    jobs: std::sync::mpsc::Sender<Job>,
    done: std::sync::Arc<std::sync::Mutex<Vec<Done>>>,
    done_fd: std::sync::Arc<OwnedFd>,
    thread: std::thread::JoinHandle<()>,
}

impl Committer {
    fn start(epoll: &OwnedFd) -> io::Result<Self> {
        let done_fd = std::sync::Arc::new(rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?);
        epoll::add(
            epoll,
            &*done_fd,
            Token::PssCommitted.data(),
            epoll::EventFlags::IN,
        )?;
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let done = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (out, bell) = (done.clone(), done_fd.clone());
        let thread = std::thread::Builder::new()
            .name("ham-pss-commit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    jobs.extend(rx.try_iter());
                    let results: Vec<Done> = jobs
                        .into_iter()
                        .map(|j| Done {
                            result: write_whole(&j.path, &j.bytes).map_err(|e| e.to_string()),
                            store: j.store,
                            entity: j.entity,
                            epoch: j.epoch,
                            seq: j.seq,
                            path: j.path,
                        })
                        .collect();
                    out.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(results);
                    let _ = rustix::io::write(&*bell, &1u64.to_ne_bytes());
                }
            })?;
        Ok(Self {
            jobs: tx,
            done,
            done_fd,
            thread,
        })
    }

    /// Writes what it was given, then stops (at a shutdown); what could not be written.
    pub(super) fn finish(self) -> Result<(), String> {
        drop(self.jobs);
        let _ = self.thread.join();
        let failed: Vec<String> =
            std::mem::take(&mut *self.done.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .filter_map(|d| d.result.err().map(|e| format!("{}: {e}", d.path.display())))
                .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "durable files not written at shutdown: {}",
                failed.join("; ")
            ))
        }
    }
}

/// Replaces `path` with `bytes` so that it is the old file or the new one, never a mix,
/// even if power is cut: a temporary file, written and synced, renamed over it, and the
/// folder synced.
fn write_whole(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    failpoint::hit("pss:before-rename");
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

use std::os::unix::fs::OpenOptionsExt as _;
