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
                (
                    Self {
                        path,
                        file: Some(f),
                    },
                    None,
                )
            }
            Err(e) => (Self { path, file: None }, Some(e)),
        }
    }

    /// Appends one record in a single write.
    pub fn append(&mut self, rec: &LogRecord) {
        let Some(f) = &mut self.file else { return };
        let mut line = serde_json::to_vec(rec).expect("a log record always serialises");
        line.push(b'\n');
        let _ = f.write_all(&line);
        if f.metadata().is_ok_and(|m| m.len() > ROTATE_AT) {
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

    /// Forces what was appended to disk (before a device restart).
    pub fn sync(&self) {
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
    path: Option<PathBuf>,
}

/// LOG_DAEMON (3) × 8 + LOG_ERR (3).
const PRI_DAEMON_ERR: u32 = 3 * 8 + 3;

impl Syslog {
    pub fn new(path: Option<PathBuf>) -> Self {
        let sock = path.as_ref().and_then(|_| UnixDatagram::unbound().ok());
        if let Some(s) = &sock {
            let _ = s.set_nonblocking(true);
        }
        Self { sock, path }
    }

    /// Sends one LOG_ERR message; a missing or full syslog never blocks ham.
    pub fn err(&self, msg: &str) {
        if let (Some(sock), Some(path)) = (&self.sock, &self.path) {
            let line = format!("<{PRI_DAEMON_ERR}>ham[{}]: {msg}", std::process::id());
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
}
