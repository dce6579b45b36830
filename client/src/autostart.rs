//! Finding and starting the daemon. A client that finds nobody on the socket spawns `crushd`
//! detached (it calls `setsid` itself), with its output appended to a file in the state
//! directory, and waits, bounded, until the socket answers. When two clients race, both spawn,
//! one daemon wins the instance lock, the other exits with [`EXIT_ALREADY_RUNNING`], and both
//! clients connect to the winner.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use interprocess::local_socket::tokio::Stream;
use interprocess::local_socket::traits::tokio::Stream as _;
use interprocess::local_socket::{GenericFilePath, ToFsName};

use crush_protocol::paths;

use crate::error::ClientError;

/// Exit status of a `crushd` that found another daemon already running.
pub const EXIT_ALREADY_RUNNING: i32 = 75;

/// Exit status of a `crushd` whose config file is unusable (its output says why).
pub const EXIT_CONFIG: i32 = 2;

/// Environment variable naming the `crushd` executable (the last place looked).
pub const DAEMON_BIN_ENV: &str = "CRUSHD_BIN";

/// Connects to whatever listens on `socket`.
pub async fn connect(socket: &Path) -> Result<Stream, ClientError> {
    let name = socket
        .to_fs_name::<GenericFilePath>()
        .map_err(|source| ClientError::Connect {
            socket: socket.to_path_buf(),
            source,
        })?;
    match Stream::connect(name).await {
        Ok(s) => Ok(s),
        Err(e) if is_absent(&e) => Err(ClientError::NotRunning {
            socket: socket.to_path_buf(),
        }),
        Err(source) => Err(ClientError::Connect {
            socket: socket.to_path_buf(),
            source,
        }),
    }
}

fn is_absent(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
    )
}

/// `crushd` next to this executable, else on `PATH`, else `$CRUSHD_BIN`.
pub fn find_daemon_binary() -> Option<PathBuf> {
    let exe_name = format!("crushd{}", std::env::consts::EXE_SUFFIX);
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(&exe_name)))
        .filter(|p| p.is_file());
    let on_path = || {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(&exe_name))
                .find(|p| p.is_file())
        })
    };
    let from_env = || {
        std::env::var_os(DAEMON_BIN_ENV)
            .map(PathBuf::from)
            .filter(|p| p.is_file())
    };
    beside.or_else(on_path).or_else(from_env)
}

/// Connects, starting the daemon first when nobody answers. `daemon_bin` overrides the search.
pub async fn connect_or_start(
    socket: &Path,
    daemon_bin: Option<&Path>,
    timeout: Duration,
) -> Result<Stream, ClientError> {
    match connect(socket).await {
        Err(ClientError::NotRunning { .. }) => {}
        other => return other,
    }
    let bin = match daemon_bin {
        Some(b) => b.to_path_buf(),
        None => find_daemon_binary().ok_or(ClientError::DaemonNotFound)?,
    };
    let state = paths::state_dir();
    let stdio_log = state.join(paths::STDIO_LOG_FILE);
    let out = open_stdio_log(&state, &stdio_log)?;
    // Where this daemon's own output starts, so a failed start can quote it.
    let output_start = out.metadata().map(|m| m.len()).unwrap_or(0);
    let err = out.try_clone()?;
    let mut child = tokio::process::Command::new(&bin)
        .arg("--socket")
        .arg(socket)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| ClientError::Connect {
            socket: socket.to_path_buf(),
            source: std::io::Error::new(e.kind(), format!("cannot run {}: {e}", bin.display())),
        })?;
    tracing::debug!(bin = %bin.display(), pid = child.id(), "started crushd");

    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(5);
    let mut child_status = None;
    loop {
        match connect(socket).await {
            Ok(s) => return Ok(s),
            Err(ClientError::NotRunning { .. }) => {}
            Err(e) => return Err(e),
        }
        if child_status.is_none()
            && let Some(status) = child.try_wait()?
        {
            // Losing the lock race is fine: the winner is about to answer. Anything else is a
            // failed start.
            if status.code() != Some(EXIT_ALREADY_RUNNING) {
                let output = output_since(&stdio_log, output_start);
                if status.code() == Some(EXIT_CONFIG)
                    && let Some(message) = output
                {
                    return Err(ClientError::DaemonConfig { message });
                }
                return Err(start_failed(
                    &state,
                    &stdio_log,
                    Some(status.to_string()),
                    output,
                ));
            }
            child_status = Some(status);
        }
        if Instant::now() >= deadline {
            return Err(start_failed(&state, &stdio_log, None, None));
        }
        // Waiting for another process to bind: poll with a short, growing delay.
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

/// What the spawned daemon wrote to the stdio log after `start` (its last 4 KiB at most), if
/// anything: its own words are what the user needs (a bad config names file, line and key).
fn output_since(stdio_log: &Path, start: u64) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    const MAX: u64 = 4096;
    let mut f = std::fs::File::open(stdio_log).ok()?;
    let len = f.metadata().ok()?.len();
    let from = start.max(len.saturating_sub(MAX));
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut buf = Vec::new();
    f.take(MAX).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// The daemon's start-up output file, in its state directory: both private (0700, 0600)
/// whatever the umask, like everything the daemon writes.
fn open_stdio_log(state: &Path, stdio_log: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let tightened = paths::create_private_dir(state)?;
        opts.mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
        let mut file = opts.open(stdio_log)?;
        paths::make_file_private(&file)?;
        if let Some(old) = tightened {
            // Said where the user looks when the daemon is in doubt.
            use std::io::Write;
            let _ = writeln!(
                file,
                "crushctl: {}: mode {old:04o} was open to others; made it 0700",
                state.display()
            );
        }
        Ok(file)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(state)?;
        opts.open(stdio_log)
    }
}

fn start_failed(
    state: &Path,
    stdio_log: &Path,
    status: Option<String>,
    output: Option<String>,
) -> ClientError {
    // Point at whichever file has something to say: early failures land in the stdio log,
    // everything after logging starts in the rotated log.
    let log = match paths::newest_log_file(state) {
        Some(l)
            if std::fs::metadata(stdio_log)
                .map(|m| m.len() == 0)
                .unwrap_or(true) =>
        {
            l
        }
        _ => stdio_log.to_path_buf(),
    };
    ClientError::DaemonStartFailed {
        log,
        status,
        output,
    }
}
