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
    std::fs::create_dir_all(state_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the log directory {}: {e}",
            state_dir.display()
        )
    })?;
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
    Ok(Some(guard))
}
