//! Captured output (`output = "log"`), as s6-log keeps it: each line an entity writes to
//! its stdout or stderr gets a timestamp and goes to `<dir>/current`, which is rotated by
//! size into archived files `@<time>.s`, the oldest deleted past `keep`.
//!
//! The entity writes into a pipe that ham opened once for the entity and holds for the
//! instance's life: both ends in the HAM and in its Guardian (handed over with the pidfds),
//! so a takeover never leaves the pipe without a reader (no SIGPIPE) and what is in it
//! waits for the next HAM. A thread of the HAM — never its loop — takes lines out:
//!
//! 1. `tee` copies the pipe's head without consuming it, up to the last whole line;
//! 2. `state` records (size of `current` before, size after, bytes to take);
//! 3. the stamped lines are appended to `current`;
//! 4. those bytes are read out of the pipe; 5. `state` is cleared.
//!
//! A HAM killed anywhere in 2–5 leaves `state` saying what its successor does: if
//! `current` reached the size after, the lines were written, and are taken out of the pipe
//! if its head is still them (killed before step 4; after it, the head is newer lines);
//! otherwise `current` is cut back to the size before and the lines are written again. No
//! line is lost, none is written twice — short of a run of identical lines, identical in
//! its batch's bounds too, of which a HAM killed between steps 4 and 5 loses one batch. A disk that cannot keep up makes ham
//! drop the oldest lines (counted and said) rather than let the pipe fill and block the
//! entity; the loop is never touched by the disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::event::epoll;

/// Bytes a pipe holds (F_SETPIPE_SZ; the kernel may round up).
pub const PIPE_SIZE: usize = 256 * 1024;
/// Lines are taken in batches of at most this many bytes.
const BATCH: usize = 64 * 1024;
/// A partial line (no newline yet) is written after waiting this long for the rest.
const PARTIAL_WAIT: Duration = Duration::from_secs(1);

/// How an entity's output is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keep {
    /// `<log_dir>/<instance>/<entity>`.
    pub dir: PathBuf,
    /// `current` is archived once it holds this many bytes.
    pub max_bytes: u64,
    /// Archived files kept (the oldest go first).
    pub keep: u32,
    /// Each line also goes to syslog (LOG_INFO, facility daemon, tagged with the entity).
    pub syslog: Option<PathBuf>,
}

/// A new pipe for an entity's output: (read end, write end), close-on-exec, enlarged.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let _ = rustix::pipe::fcntl_setpipe_size(&r, PIPE_SIZE);
    // Held for the entity's life: out of the way of what each new child needs.
    Ok((crate::sys::high_fd(r), crate::sys::high_fd(w)))
}

/// What the loop tells the thread.
enum Cmd {
    /// Take `name`'s lines from `read` into `keep.dir`; `resumed` when the pipe comes from
    /// a predecessor (its `state` is to be finished).
    Add {
        slot: u32,
        name: String,
        read: OwnedFd,
        keep: Keep,
        resumed: bool,
    },
    /// Stop taking `slot`'s lines (after what is in its pipe now).
    Remove(u32),
}

/// The thread, seen from the loop.
pub struct Logger {
    tx: mpsc::Sender<Cmd>,
    wake: OwnedFd,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Logger {
    /// Starts the thread; `say` writes a line in ham's log.
    pub fn start(say: Say) -> io::Result<Logger> {
        let (tx, rx) = mpsc::channel();
        let wake = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        let theirs = wake.try_clone()?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ham-output".into())
            .spawn(move || {
                if let Err(e) =
                    Thread::new(rx, theirs, stopping, say.clone()).and_then(|mut t| t.run())
                {
                    say(&format!("the output thread stopped: {e}"));
                }
            })?;
        Ok(Logger {
            tx,
            wake,
            stop,
            thread: Some(thread),
        })
    }

    fn send(&self, cmd: Cmd) {
        let _ = self.tx.send(cmd);
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    /// Takes the lines of entity `name` (slot `slot`) from its pipe's read end.
    pub fn add(&self, slot: u32, name: &str, read: OwnedFd, keep: Keep, resumed: bool) {
        self.send(Cmd::Add {
            slot,
            name: name.to_owned(),
            read,
            keep,
            resumed,
        });
    }

    pub fn remove(&self, slot: u32) {
        self.send(Cmd::Remove(slot));
    }

    /// Writes what every pipe holds (partial lines too) and stops the thread.
    pub fn finish(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How the thread writes a line in ham's log.
pub type Say = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// One entity's output.
struct Sink {
    name: String,
    read: OwnedFd,
    keep: Keep,
    current: Option<File>,
    size: u64,
    state: Option<File>,
    /// Since when a partial line has waited in the pipe.
    partial_since: Option<Instant>,
    dropped: u64,
    /// Removed: written out, then forgotten.
    leaving: bool,
}

struct Thread {
    rx: mpsc::Receiver<Cmd>,
    wake: OwnedFd,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    epoll: OwnedFd,
    timer: OwnedFd,
    scratch: (OwnedFd, OwnedFd),
    sinks: std::collections::HashMap<u32, Sink>,
    buf: Vec<u8>,
    say: Say,
    syslog: Option<std::os::unix::net::UnixDatagram>,
}

const TOK_WAKE: u64 = u64::MAX;
const TOK_TIMER: u64 = u64::MAX - 1;

impl Thread {
    fn new(
        rx: mpsc::Receiver<Cmd>,
        wake: OwnedFd,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
        say: Say,
    ) -> io::Result<Thread> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let timer = rustix::time::timerfd_create(
            rustix::time::TimerfdClockId::Monotonic,
            rustix::time::TimerfdFlags::CLOEXEC | rustix::time::TimerfdFlags::NONBLOCK,
        )?;
        epoll::add(
            &epoll,
            &wake,
            epoll::EventData::new_u64(TOK_WAKE),
            epoll::EventFlags::IN,
        )?;
        epoll::add(
            &epoll,
            &timer,
            epoll::EventData::new_u64(TOK_TIMER),
            epoll::EventFlags::IN,
        )?;
        let scratch = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )?;
        let _ = rustix::pipe::fcntl_setpipe_size(&scratch.0, BATCH);
        Ok(Thread {
            rx,
            wake,
            stop,
            epoll,
            timer,
            scratch,
            sinks: Default::default(),
            buf: vec![0; BATCH],
            say,
            syslog: None,
        })
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events = Vec::with_capacity(32);
        loop {
            self.commands();
            if self.stop.load(std::sync::atomic::Ordering::SeqCst) {
                let slots: Vec<u32> = self.sinks.keys().copied().collect();
                for s in slots {
                    self.drain(s, true);
                }
                return Ok(());
            }
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                None,
            ) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            for ev in events.drain(..) {
                match ev.data.u64() {
                    TOK_WAKE => {
                        let mut b = [0u8; 8];
                        let _ = rustix::io::read(&self.wake, &mut b);
                    }
                    TOK_TIMER => {
                        let mut b = [0u8; 8];
                        let _ = rustix::io::read(&self.timer, &mut b);
                        let due: Vec<u32> = self
                            .sinks
                            .iter()
                            .filter(|(_, s)| {
                                s.partial_since.is_some_and(|t| t.elapsed() >= PARTIAL_WAIT)
                            })
                            .map(|(k, _)| *k)
                            .collect();
                        for s in due {
                            self.drain(s, true);
                        }
                    }
                    slot => self.drain(slot as u32, false),
                }
            }
            self.arm_timer();
        }
    }

    fn commands(&mut self) {
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                Cmd::Add {
                    slot,
                    name,
                    read,
                    keep,
                    resumed,
                } => {
                    if let Some(old) = self.sinks.remove(&slot) {
                        let _ = epoll::delete(&self.epoll, &old.read);
                    }
                    let mut sink = Sink {
                        name,
                        read,
                        keep,
                        current: None,
                        size: 0,
                        state: None,
                        partial_since: None,
                        dropped: 0,
                        leaving: false,
                    };
                    if let Err(e) = sink.open(resumed) {
                        (self.say)(&format!(
                            "{}: output: cannot open {}: {e}; its lines wait in the pipe",
                            sink.name,
                            sink.keep.dir.display()
                        ));
                    }
                    let _ = rustix::fs::fcntl_setfl(&sink.read, rustix::fs::OFlags::NONBLOCK);
                    // Edge-triggered: a partial line left in the pipe does not wake us
                    // again until more comes (or its timer).
                    let _ = epoll::add(
                        &self.epoll,
                        &sink.read,
                        epoll::EventData::new_u64(u64::from(slot)),
                        epoll::EventFlags::IN | epoll::EventFlags::ET,
                    );
                    self.sinks.insert(slot, sink);
                    self.drain(slot, false);
                }
                Cmd::Remove(slot) => {
                    if let Some(s) = self.sinks.get_mut(&slot) {
                        s.leaving = true;
                    }
                    self.drain(slot, true);
                    if let Some(s) = self.sinks.remove(&slot) {
                        let _ = epoll::delete(&self.epoll, &s.read);
                    }
                }
            }
        }
    }

    fn arm_timer(&self) {
        let next = self
            .sinks
            .values()
            .filter_map(|s| s.partial_since)
            .map(|t| PARTIAL_WAIT.saturating_sub(t.elapsed()))
            .min();
        let zero = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let value = next.map_or(zero, |d| {
            let d = d.max(Duration::from_millis(1));
            rustix::time::Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: i64::from(d.subsec_nanos()),
            }
        });
        let _ = rustix::time::timerfd_settime(
            &self.timer,
            rustix::time::TimerfdTimerFlags::empty(),
            &rustix::time::Itimerspec {
                it_interval: zero,
                it_value: value,
            },
        );
    }

    /// Takes every whole line out of `slot`'s pipe (and a partial one if `all`).
    fn drain(&mut self, slot: u32, all: bool) {
        let Some(sink) = self.sinks.get_mut(&slot) else {
            return;
        };
        if sink.current.is_none() && sink.open(false).is_err() {
            return; // the lines wait in the pipe
        }
        loop {
            let avail = rustix::io::ioctl_fionread(&sink.read).unwrap_or(0) as usize;
            if avail == 0 {
                sink.partial_since = None;
                return;
            }
            // Behind by more than three quarters of the pipe: drop the oldest lines rather
            // than let the entity block on a full pipe.
            let size = rustix::pipe::fcntl_getpipe_size(&sink.read).unwrap_or(PIPE_SIZE);
            if avail > size / 4 * 3 {
                let lines = sink.skip(avail - size / 2, &mut self.buf);
                sink.dropped += lines;
                (self.say)(&format!(
                    "{}: output: the disk could not keep up; {lines} lines dropped ({} so far)",
                    sink.name, sink.dropped
                ));
                continue;
            }
            let want = avail.min(BATCH);
            let n = match rustix::pipe::tee(
                &sink.read,
                &self.scratch.1,
                want,
                rustix::pipe::SpliceFlags::NONBLOCK,
            ) {
                Ok(n) if n > 0 => n,
                _ => return,
            };
            let got = read_exact_fd(&self.scratch.0, &mut self.buf[..n]);
            if got != n {
                return;
            }
            let data = &self.buf[..n];
            let take = match data.iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                None if all || n == BATCH => n,
                None => {
                    sink.partial_since.get_or_insert_with(Instant::now);
                    return;
                }
            };
            let text = stamp(&data[..take], crate::unix_ns());
            if let Err(e) = sink.append(&text, take) {
                let lines = data[..take].iter().filter(|&&b| b == b'\n').count().max(1) as u64;
                sink.dropped += lines;
                (self.say)(&format!(
                    "{}: output: cannot write {}: {e}; {lines} lines dropped",
                    sink.name,
                    sink.keep.dir.join("current").display()
                ));
            }
            if let Some(path) = &sink.keep.syslog {
                let sock = self.syslog.get_or_insert_with(|| {
                    let s = std::os::unix::net::UnixDatagram::unbound().expect("a socket");
                    let _ = s.set_nonblocking(true);
                    s
                });
                for line in data[..take]
                    .split(|&b| b == b'\n')
                    .filter(|l| !l.is_empty())
                {
                    let mut msg = format!("<30>{}: ", sink.name).into_bytes();
                    msg.extend_from_slice(line);
                    let _ = sock.send_to(&msg, path);
                }
            }
            // Out of the pipe only once written (or dropped for good).
            sink.consume(take, &mut self.buf);
            sink.clear_state();
            sink.partial_since = None;
            if sink.size >= sink.keep.max_bytes {
                if let Err(e) = sink.rotate() {
                    (self.say)(&format!("{}: output: cannot rotate: {e}", sink.name));
                }
            }
        }
    }
}

/// Reads exactly `buf.len()` bytes from `fd` (a pipe that holds them), or fewer on error.
fn read_exact_fd(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => break,
        }
    }
    got
}

impl Sink {
    /// Opens `current` and `state`, finishing what a predecessor left in `state` when the
    /// pipe is the same (`resumed`); otherwise its pipe is gone, and a half-written batch is
    /// cut back.
    fn open(&mut self, resumed: bool) -> io::Result<()> {
        // What services print may be secret: ham's user and group only.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&self.keep.dir)?;
        let current = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o640)
            .open(self.keep.dir.join("current"))?;
        let state = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o640)
            .open(self.keep.dir.join("state"))?;
        let mut size = current.metadata()?.len();
        let mut text = String::new();
        let _ = (&state).read_to_string(&mut text);
        if let Some((before, after, take)) = parse_state(&text) {
            if resumed && size >= after {
                // Written by the predecessor. Taken out of the pipe too, unless the pipe's
                // head is still those lines (killed between the write and the taking out).
                let mut written = vec![0u8; (after - before) as usize];
                current.read_exact_at(&mut written, before)?;
                let raw = unstamp(&written);
                let mut head = vec![0u8; take as usize];
                let _ = rustix::fs::fcntl_setfl(&self.read, rustix::fs::OFlags::NONBLOCK);
                let (scratch_r, scratch_w) =
                    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
                let _ = rustix::pipe::fcntl_setpipe_size(&scratch_r, BATCH);
                let n = rustix::pipe::tee(
                    &self.read,
                    &scratch_w,
                    head.len(),
                    rustix::pipe::SpliceFlags::NONBLOCK,
                )
                .unwrap_or(0);
                let got = read_exact_fd(&scratch_r, &mut head[..n]);
                if got == head.len() && raw.get(..head.len()) == Some(&head[..]) {
                    read_exact_fd(&self.read, &mut head);
                }
            } else if size > before {
                // Half written: cut back; the lines are written again (resumed) or, their
                // pipe gone with the pair, were never whole.
                current.set_len(before)?;
                size = before;
            }
        }
        state.set_len(0)?;
        self.current = Some(current);
        self.state = Some(state);
        self.size = size;
        Ok(())
    }

    fn append(&mut self, text: &[u8], take: usize) -> io::Result<()> {
        let (Some(current), Some(state)) = (&mut self.current, &self.state) else {
            return Err(io::Error::other("not open"));
        };
        let after = self.size + text.len() as u64;
        state.write_all_at(format!("{} {after} {take}\n", self.size).as_bytes(), 0)?;
        match current.write_all(text) {
            Ok(()) => {
                self.size = after;
                Ok(())
            }
            Err(e) => {
                // Nothing half written stays: back to where it was.
                let _ = current.set_len(self.size);
                Err(e)
            }
        }
    }

    fn clear_state(&mut self) {
        if let Some(state) = &self.state {
            let _ = state.set_len(0);
        }
    }

    /// Reads `n` bytes out of the pipe.
    fn consume(&mut self, n: usize, buf: &mut [u8]) {
        let mut left = n;
        while left > 0 {
            let k = left.min(buf.len());
            let got = read_exact_fd(&self.read, &mut buf[..k]);
            if got == 0 {
                return;
            }
            left -= got;
        }
    }

    /// Drops at least `n` bytes of whole lines from the pipe; returns how many lines.
    fn skip(&mut self, n: usize, buf: &mut [u8]) -> u64 {
        let mut lines = 0;
        let mut gone = 0;
        while gone < n {
            let k = (n - gone).min(buf.len());
            let got = read_exact_fd(&self.read, &mut buf[..k]);
            if got == 0 {
                break;
            }
            lines += buf[..got].iter().filter(|&&b| b == b'\n').count() as u64;
            gone += got;
        }
        // To the end of the line cut into, so the next batch starts at a line.
        let mut b = [0u8; 1];
        while read_exact_fd(&self.read, &mut b) == 1 {
            if b[0] == b'\n' {
                lines += 1;
                break;
            }
        }
        lines
    }

    /// `current` becomes `@<time>.s`; the oldest archives past `keep` go.
    fn rotate(&mut self) -> io::Result<()> {
        let dir = &self.keep.dir;
        let archived = dir.join(format!("@{}.s", compact_time(crate::unix_ns())));
        std::fs::rename(dir.join("current"), &archived)?;
        self.current = Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .mode(0o640)
                .open(dir.join("current"))?,
        );
        self.size = 0;
        let mut old = archives(dir);
        while old.len() > self.keep.keep as usize {
            let _ = std::fs::remove_file(old.remove(0));
        }
        Ok(())
    }
}

/// `before after take` in `state`, if a batch was under way.
fn parse_state(text: &str) -> Option<(u64, u64, u64)> {
    let mut it = text.split_whitespace().map(|w| w.parse::<u64>().ok());
    let (b, a, t) = (it.next()??, it.next()??, it.next()??);
    (t > 0).then_some((b, a, t))
}

/// The archived files of `dir`, oldest first.
pub fn archives(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('@') && n.ends_with(".s"))
        })
        .collect();
    v.sort();
    v
}

/// Each line of `data` prefixed with the time, UTC to the microsecond; a last line without
/// its newline gets one.
fn stamp(data: &[u8], now_ns: u64) -> Vec<u8> {
    let ts = iso_time(now_ns);
    let mut out = Vec::with_capacity(data.len() + 32 * 8);
    for line in data.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(ts.as_bytes());
        out.push(b' ');
        out.extend_from_slice(line);
        if !line.ends_with(b"\n") {
            out.push(b'\n');
        }
    }
    out
}

/// What [`stamp`] was given, from what it made (each line without its stamp).
fn unstamp(stamped: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(stamped.len());
    for line in stamped.split_inclusive(|&b| b == b'\n') {
        match line.iter().position(|&b| b == b' ') {
            Some(i) => out.extend_from_slice(&line[i + 1..]),
            None => out.extend_from_slice(line),
        }
    }
    out
}

/// `2026-11-26T10:12:13.123456Z`.
pub fn iso_time(unix_ns: u64) -> String {
    let (y, m, d, hh, mm, ss) = crate::civil(unix_ns / 1_000_000_000);
    format!(
        "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{:06}Z",
        unix_ns % 1_000_000_000 / 1000
    )
}

/// `20261126T101213.123456Z` (sorts as it reads).
fn compact_time(unix_ns: u64) -> String {
    let (y, m, d, hh, mm, ss) = crate::civil(unix_ns / 1_000_000_000);
    format!(
        "{y:04}{m:02}{d:02}T{hh:02}{mm:02}{ss:02}.{:06}Z",
        unix_ns % 1_000_000_000 / 1000
    )
}

/// The last `n` lines of an entity's output (across archives when `current` has fewer), and
/// how many bytes of `current` they were read from: where following must go on, so that no
/// line written meanwhile is lost.
pub fn tail(dir: &Path, n: usize) -> io::Result<(Vec<Vec<u8>>, u64)> {
    let mut files = archives(dir);
    let current = dir.join("current");
    files.push(current.clone());
    let mut lines: std::collections::VecDeque<Vec<u8>> = Default::default();
    let mut read_of_current = 0;
    for f in files.iter().rev() {
        let Ok(mut file) = File::open(f) else {
            continue;
        };
        let mut all = Vec::new();
        file.read_to_end(&mut all)?;
        if *f == current {
            read_of_current = all.len() as u64;
        }
        let mut these: Vec<Vec<u8>> = all
            .split_inclusive(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect();
        while let Some(l) = these.pop() {
            if lines.len() >= n {
                break;
            }
            lines.push_front(l);
        }
        if lines.len() >= n {
            break;
        }
    }
    Ok((lines.into(), read_of_current))
}

/// Writes new lines of `current` to `out` as they come (following rotations), from byte
/// `from` on; returns only on error.
pub fn follow(dir: &Path, mut from: u64, out: &mut dyn Write) -> io::Result<()> {
    use rustix::fs::inotify;
    let ino = inotify::init(inotify::CreateFlags::CLOEXEC)?;
    inotify::add_watch(
        &ino,
        dir,
        inotify::WatchFlags::MODIFY | inotify::WatchFlags::CREATE | inotify::WatchFlags::MOVED_TO,
    )?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    loop {
        let path = dir.join("current");
        if let Ok(f) = File::open(&path) {
            let len = f.metadata()?.len();
            if len < from {
                from = 0; // rotated: the new current from its start
            }
            while from < len {
                let k = f.read_at(&mut buf, from)?;
                if k == 0 {
                    break;
                }
                out.write_all(&buf[..k])?;
                from += k as u64;
            }
            out.flush()?;
        }
        let mut reader = inotify::Reader::new(&ino, &mut events);
        reader.next()?;
        while !reader.is_buffer_empty() {
            let _ = reader.next();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_stamped_and_a_partial_one_is_ended() {
        let s = stamp(b"one\ntwo", 1_795_687_769_123_456_789);
        let s = String::from_utf8(s).unwrap();
        assert_eq!(
            s,
            "2026-11-26T10:09:29.123456Z one\n2026-11-26T10:09:29.123456Z two\n"
        );
    }

    #[test]
    fn unstamping_gives_back_the_lines() {
        let raw = b"a b\n\nc\n";
        assert_eq!(unstamp(&stamp(raw, 1_795_687_769_123_456_789)), raw);
    }

    #[test]
    fn the_tail_says_where_following_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("current"), b"one\ntwo\nthree\n").unwrap();
        let (lines, end) = tail(dir.path(), 2).unwrap();
        assert_eq!(lines, [b"two\n".to_vec(), b"three\n".to_vec()]);
        assert_eq!(end, 14);
        // No output at all yet: following starts at the beginning.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(tail(empty.path(), 3).unwrap(), (Vec::new(), 0));
    }

    #[test]
    fn state_says_a_batch_under_way_or_none() {
        assert_eq!(parse_state("10 50 30\n"), Some((10, 50, 30)));
        assert_eq!(parse_state(""), None);
        assert_eq!(parse_state("0 0 0\n"), None);
    }
}
