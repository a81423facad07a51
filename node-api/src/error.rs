//! One error type for the node contract: every variant names the file or socket and what was
//! being done; `Display` never repeats the `#[source]`.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A state file that must be a regular file is a FIFO, a device, a directory, ...
    #[error("{} is a {kind}, not a regular file", path.display())]
    NotRegularFile { path: PathBuf, kind: &'static str },
    #[error("{} holds {size} bytes, more than the {max} allowed", path.display())]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("{} is not a valid {what}", path.display())]
    Decode {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("encoding {what}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A value of the contract that breaks its rules (container ID, interface name, address).
    #[error("{field} {value:?} {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
    /// Nobody answers at the socket path: no file there, or nothing listening.
    #[error("no agent listens on {} ({reason})", socket.display())]
    NotListening {
        socket: PathBuf,
        reason: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("agent socket {}: {op}", socket.display())]
    Socket {
        op: &'static str,
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("agent at {} sent an answer that is not a response: {answer:?}", socket.display())]
    BadAnswer { socket: PathBuf, answer: String },
    /// The agent answered `ok: false`.
    #[error("agent at {} did not accept {op}: {message}", socket.display())]
    Refused {
        op: &'static str,
        socket: PathBuf,
        message: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub fn invalid(
        field: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Error {
        Error::Invalid {
            field,
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// This error, then its sources, joined by ": " (for one-line reports).
    pub fn chain(&self) -> String {
        let mut s = self.to_string();
        let mut src = std::error::Error::source(self);
        while let Some(e) = src {
            s.push_str(": ");
            s.push_str(&e.to_string());
            src = e.source();
        }
        s
    }
}
