//! `ham-detector-sdk`: the client side of ham.
//!
//! ```no_run
//! use std::time::Duration;
//! let ham = ham_detector_sdk::Client::connect()?;
//! // Heartbeats: one atomic store each, no syscall.
//! let hb = ham.attach_self("web", Duration::from_millis(100), 3, 6)?;
//! hb.beat();
//! // A detector's event, through the shared-memory ring.
//! ham.raise("db", "disk-full", 2, 95)?;
//! # Ok::<(), ham_detector_sdk::Error>(())
//! ```
//!
//! **Finding ham.** A process that ham starts inherits `HAM_INSTANCE`, `HAM_RUN_DIR`,
//! `HAM_CONFIG` and `HAM_ENTITY`; any other process names its instance with `HAM_CONFIG`
//! (the variable `hamctl` reads), or uses the default instance (`/etc/ham/ham.toml`).
//!
//! **Takeovers are invisible.** Heartbeats and events go through the client segment, which
//! the promoted HAM keeps; nothing needs to re-attach. A [`Subscription`] reconnects by
//! itself (notifications sent while no HAM was running are not replayed).
//!
//! **After `fork`**, a child must [`Client::connect`] again: events carry the pid the
//! token was given to, and ham rejects them from another pid.
#![deny(unsafe_code)]

pub mod capi;
mod mts;
mod pss;

pub use ham_core::protocol::PssItem;
pub use mts::Received;
pub use pss::{Durability, Pss, Scope};

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

use ham_core::beat::BeatMap;
use ham_core::client::{ClientSegment, KIND_RAISE, KIND_STATE, Name, PushError, RingEvent};
pub use ham_core::protocol::Notification;
pub use ham_core::protocol::{Change, ControlCommand};
use ham_core::protocol::{Request, Response};

/// Default configuration file of the default instance.
pub use ham_core::paths::DEFAULT_CONFIG;

/// How this process found its ham instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instance {
    /// Started by ham: the instance name, its run directory, and this process's entity name.
    Supervised {
        name: String,
        run_dir: PathBuf,
        config: Option<PathBuf>,
        entity: String,
    },
    /// Not started by ham: the configuration file that names the instance.
    Config(PathBuf),
}

/// Finds the instance from an environment lookup (`std::env::var` in [`from_env`]).
pub fn find(get: impl Fn(&str) -> Option<String>) -> Instance {
    match (get("HAM_INSTANCE"), get("HAM_RUN_DIR"), get("HAM_ENTITY")) {
        (Some(name), Some(run_dir), Some(entity)) if !name.is_empty() => Instance::Supervised {
            name,
            run_dir: run_dir.into(),
            config: get("HAM_CONFIG").map(PathBuf::from),
            entity,
        },
        _ => Instance::Config(
            get("HAM_CONFIG")
                .filter(|c| !c.is_empty())
                .map_or_else(|| PathBuf::from(DEFAULT_CONFIG), PathBuf::from),
        ),
    }
}

/// Finds the instance of the current process.
pub fn from_env() -> Instance {
    find(|k| std::env::var(k).ok())
}

/// What went wrong talking to ham.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read ham's configuration {path}: {why}")]
    Config { path: PathBuf, why: String },
    #[error(transparent)]
    Segment(#[from] ham_core::client::ClientSegmentError),
    #[error(
        "cannot reach ham at {path}: {source} (is it running? is this process in its client group?)"
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to ham: {0}")]
    Io(#[from] std::io::Error),
    #[error("ham sent an answer that is not valid: {0}")]
    BadAnswer(String),
    /// The connection ended before an answer (the HAM died: a takeover is under way).
    #[error("ham closed the connection without an answer")]
    NoAnswer,
    /// ham answered, and refused (with the errno a C caller gets, when it says one).
    #[error("ham refused: {message}")]
    Refused { errno: Option<i32>, message: String },
    #[error(transparent)]
    Push(#[from] PushError),
    /// The checkpoint store refused a put, a delete or a read.
    #[error("checkpoint store: {0}")]
    Pss(#[from] ham_core::pss::PssError),
}

/// The instance's name and run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub name: String,
    pub run_dir: PathBuf,
}

impl Location {
    /// Where `instance` says ham is (reading the configuration file if it has to).
    pub fn of(instance: &Instance) -> Result<Self, Error> {
        match instance {
            Instance::Supervised { name, run_dir, .. } => Ok(Self {
                name: name.clone(),
                run_dir: run_dir.clone(),
            }),
            Instance::Config(path) => Self::from_config(path),
        }
    }

    /// Reads `[ham] name` and `run_dir` (relative to the file's directory) from a
    /// configuration file; the rest of the file is not looked at.
    pub fn from_config(path: &Path) -> Result<Self, Error> {
        let err = |why: String| Error::Config {
            path: path.to_owned(),
            why,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let keys = ham_core::paths::instance_keys(&text).map_err(err)?;
        let dir = path.parent().unwrap_or(Path::new("/"));
        let run_dir = keys
            .run_dir
            .map_or_else(|| PathBuf::from(DEFAULT_RUN_DIR), |d| dir.join(d));
        Ok(Self {
            name: keys.name,
            run_dir,
        })
    }

    /// The control socket.
    pub fn socket(&self) -> PathBuf {
        ham_core::paths::socket(&self.run_dir, &self.name)
    }
}

/// ham's default run directory.
pub use ham_core::paths::DEFAULT_RUN_DIR;

/// A connection to a ham instance: its client segment, mapped, and the token its events
/// carry.
pub struct Client {
    seg: Arc<ClientSegment>,
    location: Location,
    token: u64,
    pid: u32,
    uid: u32,
    /// The connection requests go over, kept open ([`Request::Session`]); made again
    /// whenever ham closed it (a takeover, or its uid needed the connection).
    session: Mutex<Option<Session>>,
    /// This client's own detector ring, if ham gave it one (see [`Lane`]).
    lane: Option<Lane>,
}

/// A lane (`ham_core::lane`): a detector ring this client alone writes, with no locked
/// instruction per event. One thread at a time is its producer: the first that pushes,
/// until it exits (the next to push then takes it). Events from any other thread, and from
/// a child forked after `connect`, go through the shared ring.
struct Lane {
    producer: ham_core::lane::LaneProducer,
    /// The tag of the thread that pushes here (0: none now).
    owner: Arc<std::sync::atomic::AtomicU64>,
}

/// The lanes this thread holds, let go when it exits.
struct Held(Vec<Arc<std::sync::atomic::AtomicU64>>, u64);

impl Drop for Held {
    fn drop(&mut self) {
        for owner in &self.0 {
            // Release: the next owner (its Acquire) sees this thread's last ticket.
            let _ = owner.compare_exchange(
                self.1,
                0,
                std::sync::atomic::Ordering::Release,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }
}

thread_local! {
    static HELD: std::cell::RefCell<Held> = std::cell::RefCell::new(Held(Vec::new(), {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }));
}

/// This thread's tag: a number no other thread of this process has (0 is never one).
fn thread_tag() -> u64 {
    HELD.try_with(|h| h.borrow().1).unwrap_or(u64::MAX)
}

impl Lane {
    /// Whether the calling thread pushes here: the owner, or it takes the lane now that no
    /// thread holds it.
    #[inline]
    fn mine(&self) -> bool {
        use std::sync::atomic::Ordering::{Acquire, Relaxed};
        if !self.producer.usable_here() {
            return false;
        }
        let me = thread_tag();
        match self.owner.load(Relaxed) {
            0 if me != u64::MAX => {
                let took = self.owner.compare_exchange(0, me, Acquire, Relaxed).is_ok();
                if took {
                    HELD.with(|h| h.borrow_mut().0.push(Arc::clone(&self.owner)));
                }
                took
            }
            o => o == me,
        }
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        // This thread's list of held lanes forgets it (another thread holding it keeps only
        // the word alive until it exits). ham retires the lane when this process exits.
        let _ = HELD.try_with(|h| h.borrow_mut().0.retain(|o| !Arc::ptr_eq(o, &self.owner)));
    }
}

/// A control connection ham keeps open, and the process that made it (ham knows the
/// connection by that process: a child that inherited it makes its own).
struct Session {
    stream: UnixStream,
    pid: u32,
}

pub use ham_core::clock::mono_ns;

/// Sends one request line and reads one answer line.
fn request_on(stream: &UnixStream, req: &Request) -> Result<Response, Error> {
    exchange(stream, &request_line(req)).map(|(r, _)| r)
}

/// `req` as the line the control protocol sends.
fn request_line(req: &Request) -> Vec<u8> {
    let mut line = serde_json::to_vec(req).expect("a request always serialises");
    line.push(b'\n');
    line
}

/// Sends `line` and reads one answer line, also taking a descriptor ham attached to the
/// answer (`SCM_RIGHTS`).
fn exchange(stream: &UnixStream, line: &[u8]) -> Result<(Response, Option<OwnedFd>), Error> {
    (&*stream).write_all(line)?;
    read_answer(stream)
}

/// Reads one answer line (and a descriptor attached to it).
fn read_answer(stream: &UnixStream) -> Result<(Response, Option<OwnedFd>), Error> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    // The first bytes of the answer carry the descriptor, if any.
    let mut first = [0u8; 4096];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let n = loop {
        match rustix::net::recvmsg(
            stream,
            &mut [std::io::IoSliceMut::new(&mut first)],
            &mut anc,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(r) => break r.bytes,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(Error::Io(e.into())),
        }
    };
    let mut fd = None;
    for msg in anc.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = msg {
            // One is expected; any other is closed as it drops.
            fd = fds.into_iter().next();
        }
    }
    let mut answer = String::from_utf8_lossy(&first[..n]).into_owned();
    if n > 0 && !answer.ends_with('\n') {
        BufReader::new(stream).read_line(&mut answer)?;
    }
    if answer.is_empty() {
        return Err(Error::NoAnswer);
    }
    let r: Response =
        serde_json::from_str(answer.trim_end()).map_err(|e| Error::BadAnswer(e.to_string()))?;
    if r.ok {
        Ok((r, fd))
    } else {
        Err(Error::Refused {
            errno: r.errno,
            message: r.error.unwrap_or_default(),
        })
    }
}

/// How long a client asks again, through a takeover, before it gives up.
const RETRY_FOR: Duration = Duration::from_secs(15);

impl Error {
    /// Whether the HAM may have died under the request (a takeover), so that the same
    /// request, if idempotent, can be asked of its successor.
    fn is_takeover(&self) -> bool {
        use std::io::ErrorKind as K;
        match self {
            Self::NoAnswer => true,
            Self::Connect { source, .. } => {
                matches!(source.kind(), K::ConnectionRefused | K::NotFound)
            }
            Self::Io(e) => matches!(
                e.kind(),
                K::ConnectionReset | K::BrokenPipe | K::UnexpectedEof | K::ConnectionAborted
            ),
            _ => false,
        }
    }
}

/// Runs `once` (a whole request) again while it fails as a takeover would make it fail and
/// `req` is idempotent, for up to [`RETRY_FOR`]: a takeover is invisible to clients. The
/// pause between tries grows from 20 ms to 500 ms.
fn retrying<T>(req: &Request, mut once: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
    let deadline = Instant::now() + RETRY_FOR;
    let mut pause = Duration::from_millis(20);
    loop {
        match once() {
            Err(e) if e.is_takeover() && req.is_idempotent() && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            r => return r,
        }
    }
}

/// How long a client waits for the answer to a request ham does not hold.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// One request on a new connection, asked again through a takeover if it is idempotent.
fn ask(path: &Path, req: &Request) -> Result<(Response, Option<OwnedFd>), Error> {
    ask_within(path, req, ANSWER_WITHIN)
}

/// [`ask`], waiting up to `answer_within` for the answer.
fn ask_within(
    path: &Path,
    req: &Request,
    answer_within: Duration,
) -> Result<(Response, Option<OwnedFd>), Error> {
    let line = request_line(req);
    retrying(req, || {
        exchange(&connect_socket(path, answer_within)?, &line)
    })
}

/// A connection to ham's control socket, reads timing out after `answer_within`.
///
/// Everything is set up before `connect`, and the caller writes its request right after:
/// ham wakes at the connection and reads the request in the same turn when it is there
/// already. (Set up after `connect`, the request came a few µs late; ham found nothing,
/// slept, and woke again for it: a second wake-up on every request.)
fn connect_socket(path: &Path, answer_within: Duration) -> Result<UnixStream, Error> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType, sockopt};
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(std::io::Error::from)?;
    sockopt::set_socket_timeout(&fd, sockopt::Timeout::Recv, Some(answer_within))
        .map_err(std::io::Error::from)?;
    sockopt::set_socket_timeout(&fd, sockopt::Timeout::Send, Some(Duration::from_secs(10)))
        .map_err(std::io::Error::from)?;
    let connected = SocketAddrUnix::new(path).and_then(|addr| {
        loop {
            match rustix::net::connect(&fd, &addr) {
                Err(rustix::io::Errno::INTR) => continue,
                r => break r,
            }
        }
    });
    connected.map_err(|e| Error::Connect {
        path: path.to_owned(),
        source: e.into(),
    })?;
    Ok(UnixStream::from(fd))
}

/// Whether `fd` is an eventfd (what ham hands over as its bell).
fn is_eventfd(fd: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|p| p.as_os_str() == "anon_inode:[eventfd]")
}

impl Client {
    /// Connects to the instance this process belongs to (see [`from_env`]).
    pub fn connect() -> Result<Self, Error> {
        Self::connect_to(&Location::of(&from_env())?)
    }

    /// Connects to the instance at `location`.
    pub fn connect_to(location: &Location) -> Result<Self, Error> {
        let seg = ClientSegment::open(&ham_core::paths::client_segment(&location.name))?;
        let mut client = Self {
            seg: Arc::new(seg),
            location: location.clone(),
            token: 0,
            pid: 0,
            uid: 0,
            session: Mutex::new(None),
            lane: None,
        };
        let (r, bell) = client.request_fd(&Request::Hello)?;
        let (Some(token), Some((pid, uid))) = (r.token, r.peer) else {
            return Err(Error::BadAnswer("hello without a token".into()));
        };
        // ham's bell: pushes then wake its loop directly. Only an eventfd is rung (a
        // descriptor of any other kind is dropped, and the futex doorbell is used).
        if let (Some(fd), Some(id)) = (bell, r.bell) {
            if is_eventfd(&fd) {
                let _ = client.seg.set_bell(fd, id);
            }
        }
        // The pid and uid ham knows this process by (its pid namespace, its effective uid).
        client.token = token;
        client.pid = pid as u32;
        client.uid = uid;
        // A lane of its own, if ham has one to give (an older ham, or one out of lanes,
        // refuses: the shared ring serves).
        client.lane = client.open_lane();
        Ok(client)
    }

    fn open_lane(&self) -> Option<Lane> {
        let (r, fd) = self.request_fd(&Request::Lane).ok()?;
        let map = ham_core::lane::LaneMap::from_fd(&fd.filter(|_| r.ok)?).ok()?;
        let producer = ham_core::lane::LaneProducer::new(map).ok()?;
        Some(Lane {
            producer,
            owner: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        })
    }

    /// Publishes `ev`: on this client's lane if the calling thread is its producer, else on
    /// the shared ring. Never blocks.
    #[inline]
    fn push(&self, ev: &RingEvent) -> Result<(), Error> {
        match &self.lane {
            Some(l) if l.mine() => {
                if l.producer.push(ev, &self.seg.header().sleeping)? {
                    self.seg.ring_doorbell();
                }
                Ok(())
            }
            _ => Ok(self.seg.push(ev)?),
        }
    }

    /// Whether this thread's events go through a lane of this client's own (for tests and
    /// the benchmark).
    #[doc(hidden)]
    pub fn on_lane(&self) -> bool {
        self.lane.as_ref().is_some_and(Lane::mine)
    }

    /// Where this client's ham is.
    pub fn location(&self) -> &Location {
        &self.location
    }

    fn request(&self, req: &Request) -> Result<Response, Error> {
        self.request_fd(req).map(|(r, _)| r)
    }

    /// `req` over this client's session (a new connection when another thread is using
    /// it), asked again through a takeover if it is idempotent.
    fn request_fd(&self, req: &Request) -> Result<(Response, Option<OwnedFd>), Error> {
        let line = request_line(req);
        retrying(req, || match self.session.try_lock() {
            Ok(mut session) => self.on_session(&mut session, &line),
            Err(TryLockError::Poisoned(p)) => self.on_session(&mut p.into_inner(), &line),
            Err(TryLockError::WouldBlock) => exchange(
                &connect_socket(&self.location.socket(), ANSWER_WITHIN)?,
                &line,
            ),
        })
    }

    /// Sends `line` on the session (made first if there is none, or ham closed it) and
    /// reads the answer.
    fn on_session(
        &self,
        session: &mut Option<Session>,
        line: &[u8],
    ) -> Result<(Response, Option<OwnedFd>), Error> {
        let me = std::process::id();
        if let Some(s) = session.as_ref().filter(|s| s.pid == me) {
            // A session ham closed refuses the write (EPIPE): nothing was asked, so any
            // request may go on a new one. Once written, an answer that does not come is a
            // takeover's (asked again only if idempotent).
            if (&s.stream).write_all(line).is_ok() {
                let r = read_answer(&s.stream);
                if matches!(&r, Err(e) if !matches!(e, Error::Refused { .. })) {
                    *session = None;
                }
                return r;
            }
        }
        *session = None;
        let stream = connect_socket(&self.location.socket(), ANSWER_WITHIN)?;
        match exchange(&stream, &request_line(&Request::Session)) {
            Ok(_) => {}
            // A ham that has no sessions: a connection per request.
            Err(Error::Refused { .. }) => {
                return exchange(
                    &connect_socket(&self.location.socket(), ANSWER_WITHIN)?,
                    line,
                );
            }
            Err(e) => return Err(e),
        }
        let r = exchange(&stream, line);
        if !matches!(&r, Err(e) if !matches!(e, Error::Refused { .. })) {
            *session = Some(Session { stream, pid: me });
        }
        r
    }

    /// Attaches this process to `entity` with a heartbeat: `missed_low` / `missed_high`
    /// periods without [`Heartbeat::beat`] fire the entity's `heartbeat-missed-low` /
    /// `-high` conditions (0: never). The entity is either the one ham started this
    /// process as, or an `attach_only` entity (QNX's self-attached entity).
    pub fn attach_self(
        &self,
        entity: &str,
        period: Duration,
        missed_low: u32,
        missed_high: u32,
    ) -> Result<Heartbeat, Error> {
        self.attach_pid(entity, None, period, missed_low, missed_high)
    }

    /// Attaches another process (root or ham's user only); its heartbeat is then beaten
    /// through the returned handle.
    pub fn attach_pid(
        &self,
        entity: &str,
        pid: Option<i32>,
        period: Duration,
        missed_low: u32,
        missed_high: u32,
    ) -> Result<Heartbeat, Error> {
        let (r, fd) = self.request_fd(&Request::Attach {
            entity: entity.to_owned(),
            pid,
            period_ns: u64::try_from(period.as_nanos()).unwrap_or(u64::MAX),
            missed_low,
            missed_high,
        })?;
        let slot = r
            .slot
            .ok_or_else(|| Error::BadAnswer("attach without a slot".into()))?;
        // With a heartbeat, ham hands over this attachment's own page.
        let page = match fd {
            Some(fd) => Some(Arc::new(BeatMap::from_fd(&fd).map_err(|e| {
                Error::BadAnswer(format!("the heartbeat page ham handed over: {e}"))
            })?)),
            None if missed_low | missed_high != 0 => {
                return Err(Error::BadAnswer(
                    "attach with a heartbeat came without its page".into(),
                ));
            }
            None => None,
        };
        Ok(Heartbeat { page, slot })
    }

    /// Ends this process's attachment to `entity` (a self-attached entity is then not
    /// supervised until something attaches again; no death is reported).
    pub fn detach(&self, entity: &str) -> Result<(), Error> {
        self.request(&Request::Detach {
            entity: entity.to_owned(),
        })
        .map(|_| ())
    }

    fn event(&self, kind: u32, entity: &str, class: &str) -> Result<RingEvent, PushError> {
        Ok(RingEvent {
            kind,
            pid: self.pid,
            uid: self.uid,
            token: self.token,
            entity: Name::new(entity)?,
            class: Name::new(class)?,
            severity: 0,
            value: 0,
            from: 0,
            to: 0,
        })
    }

    /// Raises a detector event on `entity`: its `raise` conditions that match `class`
    /// (and `severity`) fire. Never blocks; a full ring returns [`PushError::Full`].
    pub fn raise(&self, entity: &str, class: &str, severity: u32, value: i64) -> Result<(), Error> {
        let mut ev = self.event(KIND_RAISE, entity, class)?;
        ev.severity = severity;
        ev.value = value;
        self.push(&ev)
    }

    /// Reports that `entity` went from state `from` to `to` (its `state` conditions fire).
    pub fn state(&self, entity: &str, from: u32, to: u32) -> Result<(), Error> {
        let mut ev = self.event(KIND_STATE, entity, "")?;
        ev.from = from;
        ev.to = to;
        self.push(&ev)
    }

    /// [`raise`](Self::raise) with a hook between claiming and publishing the slot: for
    /// tests that kill a producer mid-publish.
    #[doc(hidden)]
    pub fn raise_with(
        &self,
        entity: &str,
        class: &str,
        value: i64,
        hook: impl FnOnce(),
    ) -> Result<(), Error> {
        let mut ev = self.event(KIND_RAISE, entity, class)?;
        ev.value = value;
        Ok(self.seg.push_with(&ev, hook)?)
    }

    /// The ring's `head` (tickets claimed) and `tail` (tickets consumed by ham): a producer
    /// that notes `head` before a push knows its event is consumed once `tail` passes it
    /// (the benchmark's publish-to-consume latency).
    #[doc(hidden)]
    pub fn ring_position(&self) -> (u64, u64) {
        if let Some(l) = self.lane.as_ref().filter(|l| l.mine()) {
            return (
                l.producer.next(),
                l.producer
                    .header()
                    .tail
                    .load(std::sync::atomic::Ordering::Acquire),
            );
        }
        let h = self.seg.header();
        (
            h.head.load(std::sync::atomic::Ordering::Acquire),
            h.tail.load(std::sync::atomic::Ordering::Acquire),
        )
    }

    /// A run-time definition (entity, condition, action, removal, control): kept by ham in
    /// its state segment, so it outlives this process and any takeover. Conditions and
    /// actions are tables with a configuration file's keys (and a `name`). Returns the flags
    /// for a `GetFlags` control, 0 otherwise.
    pub fn define(&self, change: Change) -> Result<u32, Error> {
        self.request(&Request::Define { change })
            .map(|r| r.flags.unwrap_or(0))
    }

    /// Raises a QNX-style event: `rtype`, `rclass`, `severity` as `ham_entity_condition_raise`
    /// gives them (matched by conditions' `rtype`, `class` = rclass in decimal, `severity`).
    pub fn raise_typed(
        &self,
        entity: &str,
        rtype: u32,
        rclass: u32,
        severity: u32,
    ) -> Result<(), Error> {
        let mut ev = self.event(KIND_RAISE, entity, &rclass.to_string())?;
        ev.severity = severity;
        ev.from = rtype;
        self.push(&ev)
    }

    /// Whether `entity` (and its `condition`, and that condition's `action`) exists.
    pub fn lookup(
        &self,
        entity: &str,
        condition: Option<&str>,
        action: Option<&str>,
    ) -> Result<(), Error> {
        self.request(&Request::Lookup {
            entity: entity.to_owned(),
            condition: condition.map(str::to_owned),
            action: action.map(str::to_owned),
        })
        .map(|_| ())
    }

    /// Stops ham: every entity, then the HAM and its Guardian (root or ham's user only).
    /// Answers once everything is down (each entity may take its `stop_timeout`).
    pub fn shutdown(&self) -> Result<(), Error> {
        let s = connect_socket(&self.location.socket(), Duration::from_secs(600))?;
        request_on(&s, &Request::Shutdown).map(|_| ())
    }

    /// ham's log verbosity: `op` reads it or changes it; returns the level now in force
    /// (0 quiet, 1 normal, 2 and up also every request). Changing it needs root or ham's user.
    pub fn verbose(&self, op: ham_core::protocol::VerboseOp, value: i32) -> Result<u32, Error> {
        self.request(&Request::Verbose { op, value })
            .map(|r| r.flags.unwrap_or(0))
    }

    /// Events producers dropped because the ring was full (all producers, this run of ham),
    /// and those this client dropped because its lane was.
    pub fn dropped(&self) -> u64 {
        let lane = self.lane.as_ref().map_or(0, |l| {
            l.producer
                .header()
                .dropped_full
                .load(std::sync::atomic::Ordering::Relaxed)
        });
        self.seg
            .header()
            .dropped_full
            .load(std::sync::atomic::Ordering::Relaxed)
            + lane
    }

    /// Subscribes to the `notify` actions on `topic` (`*`: all topics).
    pub fn subscribe(&self, topic: &str) -> Result<Subscription, Error> {
        Subscription::open(self.location.clone(), topic.to_owned(), None)
    }

    /// Like [`subscribe`](Self::subscribe), and ham also sends this process `signal` for
    /// each notification (QNX `ham_action_notify_signal`).
    pub fn subscribe_signal(&self, topic: &str, signal: i32) -> Result<Subscription, Error> {
        Subscription::open(self.location.clone(), topic.to_owned(), Some(signal))
    }

    /// Tells ham this process is ready (the entity it runs as): entities configured to
    /// start `after` it may start. The SDK's `READY=1`.
    pub fn ready(&self, entity: &str) -> Result<(), Error> {
        self.request(&Request::Ready {
            entity: entity.to_owned(),
        })
        .map(|_| ())
    }
}

/// A heartbeat attachment. [`beat`](Self::beat) is one plain store to shared memory (no
/// clock read, no syscall): call it at least once per period. It stays valid across
/// takeovers.
///
/// The beat goes to a page of shared memory that ham made for this attachment alone and
/// handed over as a descriptor: no other client can write it, so none can forge or
/// suppress this one's beats.
#[derive(Clone)]
pub struct Heartbeat {
    /// `None` for an attachment without a heartbeat (missed-low and -high both 0).
    page: Option<Arc<BeatMap>>,
    slot: u32,
}

impl Heartbeat {
    /// "I am alive": marks this attachment's heartbeat page as beaten. ham looks at it at
    /// multiples of the period: a client is reported missed-low at the first such check
    /// that comes `missed_low` periods after the check that last saw a beat, that is
    /// between `missed_low` and `missed_low + 1` periods after its last beat.
    #[inline]
    pub fn beat(&self) {
        if let Some(p) = &self.page {
            p.beat();
        }
    }
    /// The entity's slot in ham's state segment.
    pub fn slot(&self) -> u32 {
        self.slot
    }
}

/// A stream of [`Notification`]s: poll [`as_fd`](AsFd::as_fd) for readability, then call
/// [`recv`](Self::recv).
pub struct Subscription {
    location: Location,
    topic: String,
    signal: Option<i32>,
    reader: BufReader<UnixStream>,
}

impl Subscription {
    fn open(location: Location, topic: String, signal: Option<i32>) -> Result<Self, Error> {
        let req = Request::Subscribe {
            topic: topic.clone(),
            signal,
        };
        retrying(&req, || {
            Self::open_once(location.clone(), topic.clone(), signal, &req)
        })
    }

    fn open_once(
        location: Location,
        topic: String,
        signal: Option<i32>,
        req: &Request,
    ) -> Result<Self, Error> {
        let line = request_line(req);
        let stream = connect_socket(&location.socket(), Duration::from_secs(10))?;
        (&stream).write_all(&line)?;
        stream.set_read_timeout(None)?;
        let mut reader = BufReader::new(stream);
        let mut answer = String::new();
        reader.read_line(&mut answer)?;
        if answer.is_empty() {
            return Err(Error::NoAnswer);
        }
        let r: Response = serde_json::from_str(answer.trim_end())
            .map_err(|e| Error::BadAnswer(format!("{e}: {answer:?}")))?;
        if !r.ok {
            return Err(Error::Refused {
                errno: r.errno,
                message: r.error.unwrap_or_default(),
            });
        }
        Ok(Self {
            location,
            topic,
            signal,
            reader,
        })
    }

    /// The next notification, waiting for it. If ham's HAM is replaced meanwhile, this
    /// reconnects to its successor (for up to `reconnect_for`) and goes on waiting.
    pub fn recv(&mut self) -> Result<Notification, Error> {
        self.recv_within(Duration::from_secs(10))
    }

    /// [`recv`](Self::recv), reconnecting for at most `reconnect_for` after a takeover.
    pub fn recv_within(&mut self, reconnect_for: Duration) -> Result<Notification, Error> {
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line)?;
            if n > 0 && line.ends_with('\n') {
                return serde_json::from_str(line.trim_end())
                    .map_err(|e| Error::BadAnswer(e.to_string()));
            }
            // EOF: the HAM went away. Its successor listens on the same socket.
            self.reconnect(reconnect_for)?;
        }
    }

    /// The next notification if one has come, without waiting: for a loop that polls
    /// this subscription's descriptor ([`AsFd`]) for input. After a takeover (the
    /// descriptor reads as ended) it reconnects to the successor, waiting up to 10 s for
    /// it, on the same descriptor number, so a poll set stays valid.
    pub fn try_recv(&mut self) -> Result<Option<Notification>, Error> {
        loop {
            if !self.reader.buffer().contains(&b'\n') {
                let mut fds = [rustix::event::PollFd::new(
                    self.reader.get_ref(),
                    rustix::event::PollFlags::IN,
                )];
                let zero = rustix::time::Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                match rustix::event::poll(&mut fds, Some(&zero)) {
                    Ok(0) => return Ok(None),
                    Ok(_) => {}
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(Error::Io(e.into())),
                }
            }
            // ham writes a notification as one whole line: the rest of a partial one is
            // already on its way.
            let mut line = String::new();
            let n = self.reader.read_line(&mut line)?;
            if n > 0 && line.ends_with('\n') {
                return serde_json::from_str(line.trim_end())
                    .map(Some)
                    .map_err(|e| Error::BadAnswer(e.to_string()));
            }
            self.reconnect(Duration::from_secs(10))?;
        }
    }

    /// Subscribes again (the HAM that had this subscription is gone; its successor
    /// listens on the same socket), for up to `within`, keeping the descriptor's number.
    fn reconnect(&mut self, within: Duration) -> Result<(), Error> {
        let until = Instant::now() + within;
        let mut wait = Duration::from_millis(1);
        let fresh = loop {
            match Self::open(self.location.clone(), self.topic.clone(), self.signal) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= until => return Err(e),
                Err(_) => {
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_millis(50));
                }
            }
        };
        // The fresh connection (and whatever it has buffered) replaces the ended one, then
        // moves onto the ended one's descriptor number.
        let ended = std::mem::replace(&mut self.reader, fresh.reader);
        let mut fd: OwnedFd = ended.into_inner().into();
        if rustix::io::dup2(self.reader.get_ref(), &mut fd).is_ok() {
            drop(std::mem::replace(
                self.reader.get_mut(),
                UnixStream::from(fd),
            ));
        }
        Ok(())
    }

    /// The topic subscribed to.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}

impl AsFd for Subscription {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.reader.get_ref().as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn supervised_process_uses_inherited_variables() {
        let got = find(env(&[
            ("HAM_INSTANCE", "demo"),
            ("HAM_RUN_DIR", "/run/ham"),
            ("HAM_ENTITY", "web"),
            ("HAM_CONFIG", "/etc/ham/demo.toml"),
        ]));
        assert_eq!(
            got,
            Instance::Supervised {
                name: "demo".into(),
                run_dir: "/run/ham".into(),
                config: Some("/etc/ham/demo.toml".into()),
                entity: "web".into()
            }
        );
    }

    #[test]
    fn other_processes_use_ham_config_or_the_default() {
        assert_eq!(
            find(env(&[("HAM_CONFIG", "/x.toml")])),
            Instance::Config("/x.toml".into())
        );
        assert_eq!(find(env(&[])), Instance::Config(DEFAULT_CONFIG.into()));
        // A partial inheritance is not trusted.
        assert_eq!(
            find(env(&[("HAM_INSTANCE", "demo")])),
            Instance::Config(DEFAULT_CONFIG.into())
        );
    }
}
