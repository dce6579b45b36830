//! Log output: stderr in the foreground, daily-rotated files in the state directory otherwise.
//! `CRUSHD_LOG` filters with `RUST_LOG` syntax (default `info`).

use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{Builder, Rotation};
use tracing_subscriber::EnvFilter;

pub const LOG_ENV: &str = "CRUSHD_LOG";

/// Installs the global subscriber. Keep the returned guard alive until exit so buffered lines are
/// written.
pub fn init(foreground: bool, state_dir: &Path) -> anyhow::Result<Option<WorkerGuard>> {
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    if foreground {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .try_init()
            .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
        return Ok(None);
    }
    let tightened = private_state_dir(state_dir)?;
    let appender = Builder::new()
        .rotation(Rotation::DAILY)
        .filename_prefix(crush_protocol::paths::LOG_FILE_PREFIX)
        .max_log_files(14)
        .build(state_dir)
        .map_err(|e| anyhow::anyhow!("cannot open the log file in {}: {e}", state_dir.display()))?;
    let (writer, guard) = tracing_appender::non_blocking(appender);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    if let Some(old) = tightened {
        tracing::warn!(
            "{}: mode {old:04o} was open to others; made it 0700",
            state_dir.display()
        );
    }
    Ok(Some(guard))
}

/// The state directory, private like everything the daemon writes (0700, ours; a looser one is
/// tightened — its old mode is returned so it can be logged once logging works), and the log
/// files already in it 0600. New log files are 0600 because the `crushd` binary runs with umask
/// 077 (the appender cannot be given a mode).
fn private_state_dir(state_dir: &Path) -> anyhow::Result<Option<u32>> {
    let cannot = |e: std::io::Error| {
        anyhow::anyhow!(
            "cannot create the log directory {}: {e}",
            state_dir.display()
        )
    };
    #[cfg(unix)]
    {
        let tightened = crush_protocol::paths::create_private_dir(state_dir).map_err(cannot)?;
        for entry in std::fs::read_dir(state_dir).map_err(cannot)?.flatten() {
            let name = entry.file_name();
            let ours = name.to_str().is_some_and(|n| {
                n.starts_with(crush_protocol::paths::LOG_FILE_PREFIX)
                    || n == crush_protocol::paths::STDIO_LOG_FILE
            });
            if ours
                && entry.file_type().is_ok_and(|t| t.is_file())
                && let Ok(file) = std::fs::File::open(entry.path())
            {
                crush_protocol::paths::make_file_private(&file).map_err(cannot)?;
            }
        }
        Ok(tightened)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(state_dir).map_err(cannot)?;
        Ok(None)
    }
}
