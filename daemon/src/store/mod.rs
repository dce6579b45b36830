//! The store: every byte crushd persists goes through here, and nothing else in the daemon writes
//! SQL. One SQLite file per user (WAL, `synchronous=NORMAL`, foreign keys on, a busy timeout),
//! opened by the daemon that holds the instance lock — the only writer. Migrations are embedded;
//! a database newer than this binary is refused, never downgraded. Queries are checked at compile
//! time against the schema (`.sqlx/` holds the offline data for builds without a database).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

mod accept;
mod fork;
pub mod live;
mod mcp;
mod messages;
mod permissions;
pub use permissions::LOG_KEEP;
mod pieces;
mod require;
mod reverts;
mod sessions;
mod snapshots;
mod turns;
mod tx;
mod vocab;

use accept::AcceptLog;
pub use accept::NewRun;
pub use messages::*;
pub(crate) use reverts::NewRevert;
pub use sessions::*;
pub(crate) use snapshots::SnapshotKind;
pub use turns::*;
use tx::WriteTx;

/// The embedded migrations (daemon/migrations).
pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The file name of the database inside the data directory.
pub(crate) const DB_FILE: &str = "crushd.db";

/// How long a statement waits for a lock held by another connection before failing.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The error a recovered run carries.
pub(crate) const INTERRUPTED_ERROR: &str = "the daemon stopped before the run finished";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {path}: {source}")]
    Open { path: PathBuf, source: sqlx::Error },
    #[error(
        "the database {path} is unreadable or corrupt ({detail}); move it aside to start afresh"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "the database {path} was written by a newer crushd (schema version {found}, this binary knows up to {known}); upgrade crushd or use another --data-dir"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("cannot migrate the database {path}: {source}")]
    Migrate {
        path: PathBuf,
        source: sqlx::migrate::MigrateError,
    },
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("the database is closed: the daemon is shutting down")]
    Closed,
    /// A lookup that needs the row found none (`Store::require_*`); the id is the caller's.
    #[error("no workspace with id {0:?}")]
    WorkspaceNotFound(String),
    #[error("no session with id {0:?}")]
    SessionNotFound(String),
    #[error("no run with id {0:?}")]
    RunNotFound(String),
    /// A message id the request names is not one of the session's messages.
    #[error("invalid params: messageId: session {session} has no message {message}")]
    MessageNotInSession { session: String, message: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A new time-ordered id.
pub(crate) fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The database handle. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    path: PathBuf,
    accepts: Arc<AcceptLog>,
}

impl Store {
    /// Opens (creating if needed) the database in `data_dir`, migrates it, and turns runs left
    /// unfinished by a previous daemon into `interrupted` ones.
    pub async fn open(data_dir: &Path) -> Result<Store> {
        create_private_dir(data_dir)?;
        let path = data_dir.join(DB_FILE);
        Self::open_file(&path).await
    }

    pub(crate) async fn open_file(path: &Path) -> Result<Store> {
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|source| StoreError::Open {
                path: path.to_path_buf(),
                source,
            })?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(|e| classify_open_error(path, e))?;
        let store = Store {
            accepts: Arc::new(AcceptLog::start(pool.clone())),
            pool,
            path: path.to_path_buf(),
        };
        store.check_readable().await?;
        store.refuse_newer_schema().await?;
        MIGRATOR
            .run(&store.pool)
            .await
            .map_err(|source| StoreError::Migrate {
                path: path.to_path_buf(),
                source,
            })?;
        let recovered = store.recover_interrupted().await?;
        if recovered > 0 {
            tracing::info!(
                runs = recovered,
                "marked runs left unfinished by a previous daemon as interrupted"
            );
        }
        Ok(store)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for queued accepts and in-flight statements and closes every connection
    /// (checkpointing the WAL).
    pub async fn close(&self) {
        self.accepts.close().await;
        self.pool.close().await;
    }

    /// Records an accepted run (state `accepted`), committed before this returns; accepts that
    /// arrive together share one transaction (`accept.rs`). `Ok(false)`: a run with this id
    /// exists already and nothing was written.
    pub async fn accept_run(&self, run: NewRun) -> Result<bool> {
        self.accepts.record(run).await
    }

    /// Reads the header and the schema: enough to refuse a file that is not a database (or is
    /// unreadable) before anything is written to it. A full `PRAGMA quick_check` would read every
    /// page — seconds on a large database, on the path of a client waiting for autostart — so
    /// damage deeper in the file is left to surface as an error on the request that touches it.
    async fn check_readable(&self) -> Result<()> {
        let read: std::result::Result<i64, sqlx::Error> =
            sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master")
                .fetch_one(&self.pool)
                .await;
        read.map(|_| ())
            .map_err(|e| classify_open_error(&self.path, e))
    }

    async fn refuse_newer_schema(&self) -> Result<()> {
        let has_table: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_optional(&self.pool)
        .await?;
        if has_table.is_none() {
            return Ok(());
        }
        let found: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
            .fetch_one(&self.pool)
            .await?;
        let known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        match found {
            Some(found) if found > known => Err(StoreError::NewerSchema {
                path: self.path.clone(),
                found,
                known,
            }),
            _ => Ok(()),
        }
    }

    /// Crash recovery: every run in a non-terminal state becomes `interrupted` (one that never
    /// started gets its prompt into the session first), and every assistant message still
    /// streaming gets finish reason `interrupted` (its flushed text stays). Returns the number of
    /// runs changed.
    pub(crate) async fn recover_interrupted(&self) -> Result<u64> {
        let now = now_ms();
        let mut tx = WriteTx::begin(&self.pool).await?;
        // Accepted runs that never started: their prompts join the end of their sessions, in
        // the order they were accepted, so an acknowledged prompt is never lost.
        let unstarted = sqlx::query!(
            r#"SELECT run_id AS "run_id!", session_id, user_parts AS "user_parts!" FROM runs
             WHERE state IN ('accepted', 'queued', 'running') AND user_message_id IS NULL
                   AND user_parts IS NOT NULL
             ORDER BY created_at, run_id"#
        )
        .fetch_all(&mut *tx)
        .await?;
        for run in &unstarted {
            let message = messages::insert_message_in(
                &mut tx,
                &new_id(),
                &NewMessage {
                    session_id: &run.session_id,
                    run_id: Some(&run.run_id),
                    role: "user",
                    parts: &run.user_parts,
                    model: None,
                    provider: None,
                },
                now,
            )
            .await?;
            sqlx::query!(
                "UPDATE runs SET user_message_id = ?, user_parts = NULL WHERE run_id = ?",
                message.id,
                run.run_id
            )
            .execute(&mut *tx)
            .await?;
        }
        let runs = sqlx::query!(
            "UPDATE runs SET state = 'interrupted', error = ?, finished_at = ?
             WHERE state IN ('accepted', 'queued', 'running')",
            INTERRUPTED_ERROR,
            now
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // The pieces a flush appended become the message's parts before it is finished, so
        // `session/messages` shows its flushed text (finished messages have no pieces).
        pieces::fold_unfinished_in(&mut tx).await?;
        sqlx::query!(
            "UPDATE messages SET finish_reason = 'interrupted', error = ?, finished_at = ?, updated_at = ?
             WHERE finish_reason IS NULL AND role = 'assistant'",
            INTERRUPTED_ERROR,
            now,
            now
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(runs)
    }

    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn classify_open_error(path: &Path, e: sqlx::Error) -> StoreError {
    let corrupt = match &e {
        sqlx::Error::Database(db) => {
            let m = db.message();
            m.contains("not a database") || m.contains("malformed") || m.contains("corrupt")
        }
        _ => false,
    };
    if corrupt {
        StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }
    } else {
        StoreError::Open {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

/// The data directory, private (0700, ours; a looser one is tightened and logged), and the
/// database's files 0600 if an older version or another umask left them open. New files are
/// private already: the `crushd` binary runs with umask 077, and SQLite gives `-wal` and `-shm`
/// the database file's mode.
fn create_private_dir(dir: &Path) -> Result<()> {
    let err = |source| StoreError::DataDir {
        path: dir.to_path_buf(),
        source,
    };
    #[cfg(unix)]
    {
        if let Some(old) = crush_protocol::paths::create_private_dir(dir).map_err(err)? {
            tracing::warn!(
                "{}: mode {old:04o} was open to others; made it 0700",
                dir.display()
            );
        }
        for suffix in ["", "-wal", "-shm"] {
            let path = dir.join(format!("{DB_FILE}{suffix}"));
            if let Ok(file) = std::fs::File::open(&path) {
                crush_protocol::paths::make_file_private(&file).map_err(err)?;
            }
        }
        Ok(())
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir).map_err(err)
}

#[cfg(test)]
mod tests;
