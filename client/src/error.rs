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
    #[error("crushd did not start{}: see {}", status.as_ref().map(|s| format!(" ({s})")).unwrap_or_default(), log.display())]
    DaemonStartFailed {
        log: PathBuf,
        status: Option<String>,
    },
    #[error("the connection to crushd closed")]
    Closed,
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
        )
    }
}
