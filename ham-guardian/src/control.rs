//! The control protocol: one JSON request line over the Unix socket in `run_dir`, one JSON
//! response line back. Requests that take time (stop, restart, shutdown) are answered when
//! they are done.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub use ham_core::protocol::{Notification, Request, Response};

pub use ham_core::protocol::MAX_REQUEST;

/// Why a request could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source} (is ham running?)")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "permission denied on {path}: only root, the user ham runs as and members of its \
         client_group may use it"
    )]
    Denied { path: String },
    #[error("talking to ham: {0}")]
    Io(#[from] std::io::Error),
    #[error("ham closed the connection without answering")]
    NoAnswer,
    #[error("ham sent an answer that is not valid: {0}")]
    BadAnswer(String),
}

/// Sends one request and waits (at most `timeout`) for its answer.
pub fn request(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| {
        let path = socket.display().to_string();
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            ClientError::Denied { path }
        } else {
            ClientError::Connect { path, source }
        }
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
