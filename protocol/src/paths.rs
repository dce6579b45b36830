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

/// Creates `dir` (and any missing parent) with mode 0700, whatever the umask, and makes sure it
/// is private to this user: it must be a directory owned by us (else an error that says so); an
/// existing one open to group or others is tightened to 0700 and its old mode returned, so the
/// caller can say what it changed. A symlink to such a directory is followed: data and state
/// directories are often links to another disk (the socket directory, checked in the daemon's
/// transport, is stricter).
#[cfg(unix)]
pub fn create_private_dir(dir: &Path) -> std::io::Result<Option<u32>> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(std::io::Error::other(format!(
            "{} is owned by uid {}, not by you (uid {me}); refusing to use it",
            dir.display(),
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(Some(mode))
}

/// Makes an open file 0600 if it is open to anyone else (a file an older version or another
/// umask left readable).
#[cfg(unix)]
pub fn make_file_private(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if file.metadata()?.mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}
