//! Where the daemon and its clients meet: the socket (or named pipe) path and the daemon's state
//! directory, resolved the same way on both sides so any client finds the daemon any other
//! client started.

use std::path::{Path, PathBuf};

/// Overrides the socket path for the daemon and for every client.
pub const SOCKET_ENV: &str = "CRUSHD_SOCKET";
/// File name prefix of the daemon's rotated log files inside [`state_dir`].
pub const LOG_FILE_PREFIX: &str = "crushd.log";
/// Where a daemon started in the background writes anything printed outside the logger
/// (start-up failures before logging is set up, panics).
pub const STDIO_LOG_FILE: &str = "crushd.stdio.log";
/// Lock file that makes the daemon one per user; it sits beside the socket.
pub const LOCK_FILE: &str = "crushd.lock";

fn project_dirs() -> Option<directories::ProjectDirs> {
    directories::ProjectDirs::from("", "", "crushd")
}

/// The socket path: `explicit`, else `$CRUSHD_SOCKET`, else the per-user default.
pub fn resolve_socket(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    match std::env::var_os(SOCKET_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => default_socket(),
    }
}

/// `$XDG_RUNTIME_DIR/crushd/crushd.sock`, or `<tmp>/crushd-<uid>/crushd.sock` without it.
#[cfg(unix)]
pub fn default_socket() -> PathBuf {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() && Path::new(&d).is_absolute() => PathBuf::from(d).join("crushd"),
        _ => std::env::temp_dir().join(format!("crushd-{}", rustix::process::getuid().as_raw())),
    };
    dir.join("crushd.sock")
}

/// `\\.\pipe\crushd-<user>`: named pipes have their own namespace, one per user by name.
#[cfg(windows)]
pub fn default_socket() -> PathBuf {
    let user = std::env::var("USERNAME").unwrap_or_else(|_| "user".to_owned());
    PathBuf::from(format!(r"\\.\pipe\crushd-{user}"))
}

/// The daemon's state directory (`$XDG_STATE_HOME/crushd` on Linux), where its logs live.
pub fn state_dir() -> PathBuf {
    project_dirs()
        .map(|d| {
            d.state_dir()
                .unwrap_or_else(|| d.data_local_dir())
                .to_path_buf()
        })
        .unwrap_or_else(|| std::env::temp_dir().join("crushd-state"))
}

/// The directory holding the lock file: the socket's directory (on Windows, the state dir).
pub fn lock_dir(socket: &Path) -> PathBuf {
    if cfg!(windows) {
        return state_dir();
    }
    socket
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The newest log file in `dir`, if any (rotation appends the date to the prefix).
pub fn newest_log_file(dir: &Path) -> Option<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(LOG_FILE_PREFIX))
        })
        .collect();
    // Dates in the suffix are ISO-8601, so the lexicographic maximum is the newest.
    files.sort();
    files.pop()
}
