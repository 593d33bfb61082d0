//! The process log: every condition seen and action taken, appended as one JSON line each to
//! `<log_dir>/<name>.log`, so it survives ham's restarts (and, being a file on disk, the
//! device's: it is synced before a device restart). A line torn by a crash is skipped when
//! read. At 4 MiB the file is renamed to `.log.1` (the previous `.1` is dropped).
//!
//! Each automatic restart also goes to syslog at LOG_ERR (facility daemon), to the socket
//! `[ham] syslog` names (`/dev/log` by default; tests point it at their own).

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::status::ExitJson;

/// Size at which the log is rotated.
const ROTATE_AT: u64 = 4 << 20;

/// The entity name of the process log's lines about the pair itself (not a valid entity
/// name, so never an entity's).
pub const HAM_ENTRY: &str = "[ham]";

/// One line of the process log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Wall-clock milliseconds since the Unix epoch.
    pub time_unix_ms: u64,
    pub entity: String,
    pub pid: Option<i32>,
    pub exit: Option<ExitJson>,
    /// What happened: `death`, `abnormal-death`, `hold-off-over`, `escalation`, `operator`.
    pub condition: String,
    /// The configured name of the condition whose action this line is, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What ham did: `restart`, `hold-off`, `give-up`, `stay-down`, `device-restart`, `start`,
    /// `stop`.
    pub action: String,
    /// How it went.
    pub result: String,
}

pub struct ProcessLog {
    path: PathBuf,
    file: Option<File>,
    /// The file's size, as this process has made it (only one HAM writes at a time): not
    /// asked of the kernel after each record.
    size: u64,
    /// Lines held back (see [`ProcessLog::hold`]).
    held: Option<Vec<u8>>,
}

impl ProcessLog {
    /// Opens (creating the folder and file) for appending. A log that cannot be opened is
    /// reported and then skipped: supervision does not depend on it.
    pub fn open(path: PathBuf) -> (Self, Option<io::Error>) {
        let opened = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| OpenOptions::new().create(true).append(true).open(&path));
        match opened {
            Ok(mut f) => {
                // A line torn by a crash must not swallow the next record: end it.
                if ends_without_newline(&path) {
                    let _ = f.write_all(b"\n");
                }
                let size = f.metadata().map_or(0, |m| m.len());
                (
                    Self {
                        path,
                        file: Some(f),
                        size,
                        held: None,
                    },
                    None,
                )
            }
            Err(e) => (
                Self {
                    path,
                    file: None,
                    size: 0,
                    held: None,
                },
                Some(e),
            ),
        }
    }

    /// Appends one record in a single write, or holds it (see [`ProcessLog::hold`]).
    pub fn append(&mut self, rec: &LogRecord) {
        if self.file.is_none() {
            return;
        }
        let mut line = serde_json::to_vec(rec).expect("a log record always serialises");
        line.push(b'\n');
        match &mut self.held {
            Some(held) => held.extend_from_slice(&line),
            None => self.write(&line),
        }
    }

    /// Holds the records appended from now on until [`ProcessLog::write_held`] (as
    /// `log::hold` does for ham's log).
    pub fn hold(&mut self) {
        self.held.get_or_insert_with(Vec::new);
    }

    /// Writes the records held since [`ProcessLog::hold`], in one write, and stops holding.
    pub fn write_held(&mut self) {
        if let Some(held) = self.held.take()
            && !held.is_empty()
        {
            self.write(&held);
        }
    }

    fn write(&mut self, lines: &[u8]) {
        let Some(f) = &mut self.file else { return };
        self.size = match f.write_all(lines) {
            Ok(()) => self.size + lines.len() as u64,
            // Perhaps written in part: asked.
            Err(_) => f.metadata().map_or(self.size, |m| m.len()),
        };
        if self.size > ROTATE_AT {
            self.size = 0;
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            let _ = std::fs::rename(&self.path, &old);
            if let Ok(new) = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
            {
                self.file = Some(new);
            }
        }
    }

    /// Forces what was appended to disk, held records included (before a device restart).
    pub fn sync(&mut self) {
        self.write_held();
        if let Some(f) = &self.file {
            let _ = f.sync_data();
        }
    }
}

fn ends_without_newline(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = File::open(path) else {
        return false;
    };
    let mut last = [0u8; 1];
    f.seek(SeekFrom::End(-1)).is_ok() && f.read_exact(&mut last).is_ok() && last[0] != b'\n'
}

/// Reads the log (the rotated part first), oldest first; torn or foreign lines are skipped.
pub fn read(path: &Path) -> io::Result<Vec<LogRecord>> {
    let mut out = Vec::new();
    let mut rotated = path.to_owned().into_os_string();
    rotated.push(".1");
    for p in [PathBuf::from(rotated), path.to_owned()] {
        let f = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in io::BufReader::new(f).lines() {
            if let Ok(rec) = serde_json::from_str::<LogRecord>(&line?) {
                out.push(rec);
            }
        }
    }
    Ok(out)
}

/// A syslog sender (RFC 3164 datagrams on a Unix socket).
pub struct Syslog {
    sock: Option<UnixDatagram>,
    /// This process's pid, in every message (asked once, not at each).
    pid: u32,
    path: Option<PathBuf>,
    /// Messages held back (see [`ProcessLog::hold`]).
    held: std::cell::RefCell<Option<Vec<String>>>,
}

/// LOG_DAEMON (3) × 8 + LOG_ERR (3).
const PRI_DAEMON_ERR: u32 = 3 * 8 + 3;

impl Syslog {
    pub fn new(path: Option<PathBuf>) -> Self {
        let sock = path.as_ref().and_then(|_| UnixDatagram::unbound().ok());
        if let Some(s) = &sock {
            let _ = s.set_nonblocking(true);
        }
        Self {
            sock,
            pid: std::process::id(),
            path,
            held: std::cell::RefCell::new(None),
        }
    }

    /// Holds the messages sent from now on until [`Syslog::write_held`].
    pub fn hold(&self) {
        self.held.borrow_mut().get_or_insert_with(Vec::new);
    }

    /// Sends the messages held since [`Syslog::hold`] and stops holding.
    pub fn write_held(&self) {
        let held = self.held.borrow_mut().take();
        for msg in held.into_iter().flatten() {
            self.send(&msg);
        }
    }

    /// Sends one LOG_ERR message, or holds it; a missing or full syslog never blocks ham.
    pub fn err(&self, msg: &str) {
        if self.sock.is_none() {
            return;
        }
        if let Some(held) = self.held.borrow_mut().as_mut() {
            held.push(msg.to_owned());
            return;
        }
        self.send(msg);
    }

    fn send(&self, msg: &str) {
        if let (Some(sock), Some(path)) = (&self.sock, &self.path) {
            let line = format!("<{PRI_DAEMON_ERR}>ham[{}]: {msg}", self.pid);
            let _ = sock.send_to(line.as_bytes(), path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: u64) -> LogRecord {
        LogRecord {
            time_unix_ms: n,
            entity: "e".into(),
            pid: Some(1),
            exit: Some(ExitJson::Signal(9)),
            condition: "abnormal-death".into(),
            name: None,
            action: "restart".into(),
            result: "ok".into(),
        }
    }

    #[test]
    fn appends_read_back_in_order_and_torn_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/x.log");
        let (mut log, err) = ProcessLog::open(path.clone());
        assert!(err.is_none());
        log.append(&rec(1));
        log.append(&rec(2));
        // A crash in the middle of a line.
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"time_unix_ms\":3,\"ent")
            .unwrap();
        // The next HAM opens it again: its first record is not swallowed by the torn line.
        let (mut log, _) = ProcessLog::open(path.clone());
        log.append(&rec(4));
        log.append(&rec(5));
        let got: Vec<u64> = read(&path)
            .unwrap()
            .iter()
            .map(|r| r.time_unix_ms)
            .collect();
        assert_eq!(got, vec![1, 2, 4, 5]);
    }

    /// The log is rotated once it passes its size, counting what was there when it was
    /// opened (a new HAM goes on with its predecessor's file), and nothing is lost.
    #[test]
    fn the_log_is_rotated_at_its_size_counting_what_an_earlier_ham_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let rotated = dir.path().join("x.log.1");
        // Records of one length: times of as many digits.
        let at = |n: u64| rec(1_000_000 + n);
        let line_len = {
            let mut l = serde_json::to_vec(&at(0)).unwrap();
            l.push(b'\n');
            l.len() as u64
        };
        // The record that takes the file past its size is the last one it holds.
        let per_file = ROTATE_AT / line_len + 1;
        // An earlier HAM wrote all but the last two records a file holds.
        let (mut log, _) = ProcessLog::open(path.clone());
        for n in 0..per_file - 2 {
            log.append(&at(n));
        }
        drop(log);
        assert!(!rotated.exists());
        let (mut log, _) = ProcessLog::open(path.clone());
        log.append(&at(per_file - 2));
        assert!(!rotated.exists(), "rotated before its size");
        log.append(&at(per_file - 1));
        assert!(rotated.exists(), "not rotated past its size");
        log.append(&at(per_file));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), line_len);
        let got: Vec<u64> = read(&path)
            .unwrap()
            .iter()
            .map(|r| r.time_unix_ms - 1_000_000)
            .collect();
        assert_eq!(got, (0..=per_file).collect::<Vec<u64>>());
    }

    #[test]
    fn syslog_messages_carry_the_priority() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        Syslog::new(Some(path)).err("web restarted");
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).unwrap();
        let msg = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(msg.starts_with("<27>ham["), "{msg}");
        assert!(msg.ends_with("]: web restarted"), "{msg}");
    }

    /// What is held comes out at `write_held`, in order, after what was written before;
    /// a sync (before a device restart) writes what is held first.
    #[test]
    fn held_records_and_messages_come_out_in_order_when_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let (mut log, _) = ProcessLog::open(path.clone());
        let times =
            |p: &Path| -> Vec<u64> { read(p).unwrap().iter().map(|r| r.time_unix_ms).collect() };
        log.append(&rec(1));
        log.hold();
        log.append(&rec(2));
        log.append(&rec(3));
        assert_eq!(times(&path), vec![1]);
        log.write_held();
        assert_eq!(times(&path), vec![1, 2, 3]);
        log.append(&rec(4));
        assert_eq!(times(&path), vec![1, 2, 3, 4]);
        log.hold();
        log.append(&rec(5));
        log.sync();
        assert_eq!(times(&path), vec![1, 2, 3, 4, 5]);

        let sock = dir.path().join("log.sock");
        let rx = UnixDatagram::bind(&sock).unwrap();
        rx.set_nonblocking(true).unwrap();
        let sys = Syslog::new(Some(sock));
        sys.hold();
        sys.err("one");
        sys.err("two");
        let mut buf = [0u8; 256];
        assert!(rx.recv(&mut buf).is_err(), "a held message was sent");
        sys.write_held();
        for want in ["one", "two"] {
            let n = rx.recv(&mut buf).unwrap();
            let msg = std::str::from_utf8(&buf[..n]).unwrap();
            assert!(msg.ends_with(&format!("]: {want}")), "{msg}");
        }
        sys.err("three");
        let n = rx.recv(&mut buf).unwrap();
        assert!(
            std::str::from_utf8(&buf[..n])
                .unwrap()
                .ends_with("]: three")
        );
    }
}
