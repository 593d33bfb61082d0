//! The control protocol: one JSON request line over the Unix socket in `run_dir`, one JSON
//! response line back. Requests that take time (stop, restart, shutdown) are answered when
//! they are done.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A request to the running HAM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Answers at once; proves the HAM's loop is turning.
    Ping,
    /// Start a stopped entity (an operator start: not an automatic restart).
    Start { entity: String },
    /// Stop an entity; it stays stopped until started.
    Stop { entity: String },
    /// Stop then start an entity.
    Restart { entity: String },
    /// Stop every entity, remove the segment and the socket, and exit 0.
    Shutdown,
    /// Switch escalations to a device restart on or off (kept across takeovers and starts).
    DeviceRestart { enabled: bool },
    /// A detector's event on an entity: fires its matching `raise` conditions.
    Raise {
        entity: String,
        class: String,
        severity: u32,
        value: i64,
    },
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(message: impl Into<String>) -> Self {
        Self {
            ok: true,
            message: Some(message.into()),
            error: None,
        }
    }
    pub fn err(error: impl Into<String>) -> Self {
        Self {
            ok: false,
            message: None,
            error: Some(error.into()),
        }
    }
    /// The response as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("a response always serialises");
        v.push(b'\n');
        v
    }
}

/// Longest request line the HAM accepts.
pub const MAX_REQUEST: usize = 4096;

/// Why a request could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source} (is ham running?)")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to ham: {0}")]
    Io(#[from] std::io::Error),
    #[error("ham closed the connection without answering")]
    NoAnswer,
    #[error("ham sent an answer that is not valid: {0}")]
    BadAnswer(String),
}

/// Sends one request and waits (at most `timeout`) for its answer.
pub fn request(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(req).expect("a request always serialises");
    line.push(b'\n');
    // A refused peer is answered and disconnected before its request is read; the write
    // then fails, but the answer is waiting to be read.
    let written = stream.write_all(&line);
    let mut answer = String::new();
    let read = BufReader::new(stream).read_line(&mut answer);
    if answer.is_empty() {
        written?;
        read?;
    }
    if answer.is_empty() {
        return Err(ClientError::NoAnswer);
    }
    serde_json::from_str(answer.trim_end()).map_err(|e| ClientError::BadAnswer(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let r = Request::Stop {
            entity: "web".into(),
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"cmd":"stop","entity":"web"}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        assert_eq!(
            serde_json::to_string(&Request::Shutdown).unwrap(),
            r#"{"cmd":"shutdown"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).is_err());
        assert_eq!(
            String::from_utf8(Response::err("no").to_line()).unwrap(),
            "{\"ok\":false,\"error\":\"no\"}\n"
        );
    }
}
