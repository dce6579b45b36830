//! Errors a client of crushd can meet, each with a message that says what to do.

use std::path::PathBuf;

use crush_protocol::RpcError;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("crushd is not running (no answer on {socket})")]
    NotRunning { socket: PathBuf },
    #[error("cannot connect to crushd on {socket}: {source}")]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot find the crushd executable (looked next to this program, on PATH and in $CRUSHD_BIN)"
    )]
    DaemonNotFound,
    #[error("crushd did not start{}: {}", status.as_ref().map(|s| format!(" ({s})")).unwrap_or_default(), match output {
        Some(o) => format!("{o}\n(log: {})", log.display()),
        None => format!("see {}", log.display()),
    })]
    DaemonStartFailed {
        log: PathBuf,
        status: Option<String>,
        /// What the daemon printed before it exited, when it printed anything.
        output: Option<String>,
    },
    /// The daemon refused to start because its config file is unusable; `message` is its own
    /// (file, line and key). A configuration error, not an unreachable daemon.
    #[error("{message}")]
    DaemonConfig { message: String },
    /// The SSH connection to a remote daemon could not be made or ended before `initialize`
    /// was answered; `reason` is what ssh (or the remote crushctl) said.
    #[error("cannot reach crushd on {host} over SSH: {reason}")]
    Remote { host: String, reason: String },
    #[error("the connection to crushd closed")]
    Closed,
    /// The connection dropped after the request was written and before its answer came: the
    /// daemon may or may not have acted on it.
    #[error(
        "the connection to crushd dropped while {method} was in flight; it may or may not have taken effect"
    )]
    ConnectionLost { method: String },
    /// A reconnecting client stopped trying.
    #[error("lost the connection to crushd and could not reconnect within {}: {reason}", human(*after))]
    GaveUp {
        after: std::time::Duration,
        reason: String,
    },
    #[error("crushd: {0}")]
    Rpc(#[from] RpcError),
    #[error("unexpected answer from crushd: {0}")]
    Decode(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// Whether the daemon could not be reached or started at all (`crushctl` exit code 3).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::NotRunning { .. }
                | ClientError::Connect { .. }
                | ClientError::DaemonNotFound
                | ClientError::DaemonStartFailed { .. }
                | ClientError::GaveUp { .. }
                | ClientError::Remote { .. }
        )
    }
}

fn human(d: std::time::Duration) -> String {
    if d.as_secs() >= 1 && d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}
