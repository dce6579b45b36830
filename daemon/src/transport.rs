//! The listening endpoint: the private socket directory, the one-daemon-per-user lock, the
//! socket itself (Unix domain socket, or a named pipe on Windows, both through `interprocess`),
//! and the peer check on every accepted connection.
//!
//! Architecture invariant: a daemon that has returned from [`bind`] holds the lock, and the socket
//! file it listens on was created by it; nothing else may remove that file while it runs.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use interprocess::local_socket::tokio::{Listener, Stream};
use interprocess::local_socket::traits::tokio::Listener as _;
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};

use crush_protocol::paths;

/// Why the daemon cannot listen.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(
        "socket directory {0} is a symbolic link; refusing to use it (remove it or choose another --socket)"
    )]
    DirIsSymlink(PathBuf),
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error(
        "socket directory {path} is owned by uid {owner}, not by you (uid {me}); refusing to use it"
    )]
    DirNotOwned { path: PathBuf, owner: u32, me: u32 },
    #[error(
        "socket directory {path} has mode {mode:04o}; it must be private (run `chmod 700 {path}`)"
    )]
    DirNotPrivate { path: PathBuf, mode: u32 },
    #[error("{0} is a symbolic link; refusing to use it (remove it)")]
    LockIsSymlink(PathBuf),
    #[error("{0} is not a regular file; refusing to use it as the lock (remove it)")]
    LockNotAFile(PathBuf),
    #[error(
        "{0} exists and is not a socket; refusing to remove it (move it away or choose another --socket)"
    )]
    NotASocket(PathBuf),
    #[error("crushd is already running{} (socket {socket})", pid.map(|p| format!(" as pid {p}")).unwrap_or_default())]
    AlreadyRunning { pid: Option<u32>, socket: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TransportError + '_ {
    move |source| TransportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates the socket directory if needed (mode 0700) and checks it is private to this user:
/// a real directory, not a symlink, owned by us, with no group or other permission bits.
#[cfg(unix)]
pub fn prepare_private_dir(dir: &Path) -> Result<(), TransportError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err(dir))?;
        }
        Err(e) => return Err(io_err(dir)(e)),
        Ok(_) => {}
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io_err(dir))?;
    check_private_dir(dir, &meta, rustix::process::geteuid().as_raw())
}

/// The checks of [`prepare_private_dir`] on given metadata (separate so tests can feed it any).
#[cfg(unix)]
pub fn check_private_dir(
    dir: &Path,
    meta: &std::fs::Metadata,
    me: u32,
) -> Result<(), TransportError> {
    use std::os::unix::fs::MetadataExt;
    if meta.file_type().is_symlink() {
        return Err(TransportError::DirIsSymlink(dir.to_path_buf()));
    }
    if !meta.is_dir() {
        return Err(TransportError::NotADirectory(dir.to_path_buf()));
    }
    if meta.uid() != me {
        return Err(TransportError::DirNotOwned {
            path: dir.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TransportError::DirNotPrivate {
            path: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(windows)]
pub fn prepare_private_dir(dir: &Path) -> Result<(), TransportError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))
}

/// The held one-daemon-per-user lock. Released when dropped (or when the process dies).
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
    path: PathBuf,
}

impl InstanceLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes the instance lock in `dir`, writing our pid into it. When another daemon holds it,
/// waits up to `wait` for it to go away (a daemon that is shutting down still holds the lock
/// for a moment after its socket stopped answering), then gives up naming that daemon's pid.
pub fn acquire_lock(
    dir: &Path,
    socket: &Path,
    wait: Duration,
) -> Result<InstanceLock, TransportError> {
    let path = dir.join(paths::LOCK_FILE);
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Never through a symlink: a planted `crushd.lock -> ~/.bashrc` would have us truncate
        // and write our pid into its target.
        opts.mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    }
    let mut file = match opts.open(&path) {
        Ok(f) => f,
        Err(e) => {
            let link = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
            return Err(if link {
                TransportError::LockIsSymlink(path)
            } else {
                io_err(&path)(e)
            });
        }
    };
    if !file.metadata().map_err(io_err(&path))?.is_file() {
        return Err(TransportError::LockNotAFile(path));
    }
    #[cfg(unix)]
    crush_protocol::paths::make_file_private(&file).map_err(io_err(&path))?;
    let deadline = Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) => {
                // A live daemon answers on its socket: no point waiting for it.
                if Instant::now() >= deadline || socket_is_live(socket) {
                    let mut text = String::new();
                    let _ = file.read_to_string(&mut text);
                    return Err(TransportError::AlreadyRunning {
                        pid: text.trim().parse().ok(),
                        socket: socket.to_path_buf(),
                    });
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
        }
    }
    file.set_len(0).map_err(io_err(&path))?;
    writeln!(file, "{}", std::process::id()).map_err(io_err(&path))?;
    file.flush().map_err(io_err(&path))?;
    Ok(InstanceLock { _file: file, path })
}

/// Whether something accepts connections on `socket` right now.
pub fn socket_is_live(socket: &Path) -> bool {
    use interprocess::local_socket::ConnectOptions;
    let Ok(name) = socket.to_fs_name::<GenericFilePath>() else {
        return false;
    };
    ConnectOptions::new().name(name).connect_sync().is_ok()
}

/// The bound endpoint: the listener plus the lock that makes it ours.
pub struct Endpoint {
    pub listener: Listener,
    pub socket: PathBuf,
    pub lock: InstanceLock,
}

/// Prepares the directory, takes the lock, replaces a stale socket file and listens.
pub fn bind(socket: &Path) -> Result<Endpoint, TransportError> {
    let dir = paths::lock_dir(socket);
    prepare_private_dir(&dir)?;
    let lock = acquire_lock(&dir, socket, Duration::from_secs(3))?;

    #[cfg(unix)]
    if let Ok(meta) = std::fs::symlink_metadata(socket) {
        use std::os::unix::fs::FileTypeExt;
        // Only a socket is ours to replace; anything else under that name is someone's file.
        if !meta.file_type().is_socket() {
            return Err(TransportError::NotASocket(socket.to_path_buf()));
        }
        // We hold the lock, so no daemon of ours is behind this file; still, never steal a
        // socket that something answers on.
        if socket_is_live(socket) {
            return Err(TransportError::AlreadyRunning {
                pid: None,
                socket: socket.to_path_buf(),
            });
        }
        tracing::info!(socket = %socket.display(), "replacing stale socket file");
        std::fs::remove_file(socket).map_err(io_err(socket))?;
    }

    let name = socket
        .to_fs_name::<GenericFilePath>()
        .map_err(io_err(socket))?;
    let opts = ListenerOptions::new().name(name).reclaim_name(true);
    #[cfg(unix)]
    let opts = {
        use interprocess::os::unix::local_socket::ListenerOptionsExt;
        opts.mode(0o600)
    };
    let listener = opts.create_tokio().map_err(io_err(socket))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Belt and braces: whatever the umask and the platform's bind did, the file is 0600.
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(socket))?;
    }
    Ok(Endpoint {
        listener,
        socket: socket.to_path_buf(),
        lock,
    })
}

/// Accepts the next connection.
pub async fn accept(listener: &Listener) -> std::io::Result<Stream> {
    listener.accept().await
}

/// Whether the peer of `stream` may talk to us: on Unix, the same effective uid as ours.
/// Returns the refused peer's uid on refusal.
#[cfg(unix)]
pub fn check_peer(stream: &Stream) -> Result<(), String> {
    use interprocess::local_socket::traits::StreamCommon as _;
    let me = rustix::process::geteuid().as_raw();
    match stream.peer_creds() {
        Ok(creds) => match creds.euid() {
            Some(uid) if uid == me => Ok(()),
            Some(uid) => Err(format!("peer uid {uid} is not ours ({me})")),
            None => Err("peer credentials carry no uid".to_owned()),
        },
        Err(e) => Err(format!("cannot read peer credentials: {e}")),
    }
}

/// Named pipes are created with the default security descriptor, which grants full access only
/// to the creating user, SYSTEM and administrators; we add no check on top (untested here).
#[cfg(windows)]
pub fn check_peer(_stream: &Stream) -> Result<(), String> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_a_private_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        prepare_private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn refuses_symlinks_open_modes_and_foreign_owners() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(
            prepare_private_dir(&link),
            Err(TransportError::DirIsSymlink(_))
        ));

        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = prepare_private_dir(&real).unwrap_err();
        assert!(err.to_string().contains("chmod 700"), "{err}");

        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
        let meta = std::fs::symlink_metadata(&real).unwrap();
        let someone_else = rustix::process::geteuid().as_raw() + 1;
        assert!(matches!(
            check_private_dir(&real, &meta, someone_else),
            Err(TransportError::DirNotOwned { .. })
        ));
    }

    #[test]
    fn a_lock_symlink_is_refused_and_never_written_through() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "keep\n").unwrap();
        std::os::unix::fs::symlink(&victim, tmp.path().join(paths::LOCK_FILE)).unwrap();
        let sock = tmp.path().join("s.sock");
        assert!(matches!(
            acquire_lock(tmp.path(), &sock, Duration::ZERO),
            Err(TransportError::LockIsSymlink(_))
        ));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep\n");
    }

    #[test]
    fn second_lock_names_the_first_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("s.sock");
        let _held = acquire_lock(tmp.path(), &sock, Duration::ZERO).unwrap();
        match acquire_lock(tmp.path(), &sock, Duration::ZERO) {
            Err(TransportError::AlreadyRunning { pid, .. }) => {
                assert_eq!(pid, Some(std::process::id()))
            }
            other => panic!("{other:?}"),
        }
    }
}
