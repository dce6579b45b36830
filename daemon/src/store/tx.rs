//! Write transactions that cannot outlive a failure.
//!
//! sqlx's own `Transaction` keeps a per-connection nesting counter next to SQLite's real state,
//! and the two drift apart on exactly the errors a full disk causes: SQLite may roll a transaction
//! back by itself on `SQLITE_FULL`/`SQLITE_IOERR`, sqlx's `ROLLBACK` then fails ("no transaction
//! is active") and its counter stays at 1, so the connection's next `begin` issues a `SAVEPOINT`
//! (which silently opens a transaction) and a later failure's `ROLLBACK TO` leaves that
//! transaction open — holding the write lock. Every other writer then gets "database is locked"
//! until the daemon restarts, and whatever that connection "committed" meanwhile was never
//! committed at all.
//!
//! `WriteTx` keeps no counter. It issues `BEGIN IMMEDIATE` (so a writer waits for the lock at its
//! start, within the busy timeout, instead of failing on a lock upgrade) and `COMMIT` itself, and
//! a transaction that does not commit — an error, an early return, a dropped future — closes its
//! connection instead of returning it to the pool. Closing makes SQLite roll back whatever is
//! still open and release its locks, whatever state the failure left behind; the pool opens a
//! fresh connection on demand. A success is therefore answered only for what was committed.

use std::ops::{Deref, DerefMut};

use sqlx::pool::PoolConnection;
use sqlx::{Executor, Sqlite, SqliteConnection, SqlitePool};

use super::Result;

/// An open write transaction on a pooled connection. Dereferences to the connection, so
/// statements run on it with `.execute(&mut *tx)`.
pub(crate) struct WriteTx {
    conn: PoolConnection<Sqlite>,
    committed: bool,
}

impl WriteTx {
    /// Takes a connection from the pool and starts an immediate (write-locking) transaction.
    pub(crate) async fn begin(pool: &SqlitePool) -> Result<WriteTx> {
        let conn = pool.acquire().await?;
        let mut tx = WriteTx {
            conn,
            committed: false,
        };
        // On failure `tx` drops uncommitted and its connection is closed, never reused.
        tx.conn.execute("BEGIN IMMEDIATE").await?;
        Ok(tx)
    }

    /// Commits. On failure the connection is closed (see the module comment), so nothing of the
    /// transaction survives and the next writer finds the database unlocked.
    pub(crate) async fn commit(mut self) -> Result<()> {
        self.conn.execute("COMMIT").await?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if !self.committed {
            self.conn.close_on_drop();
        }
    }
}

impl Deref for WriteTx {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}
