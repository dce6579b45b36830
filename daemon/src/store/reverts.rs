//! Reverts: which messages `session/revert` hid from the model and what it did to the files,
//! so that `session/unrevert` can take it back while no prompt was sent since.

use super::{Result, Store, WriteTx, now_ms};

/// Where a revert stands (the `reverts.state` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RevertState {
    /// Can be undone by `session/unrevert`.
    Active,
    Undone,
    /// A prompt was sent after it.
    Final,
}

impl RevertState {
    fn as_str(self) -> &'static str {
        match self {
            RevertState::Active => "active",
            RevertState::Undone => "undone",
            RevertState::Final => "final",
        }
    }
}

/// A revert as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RevertRow {
    pub(crate) id: String,
    pub(crate) message_id: String,
    /// The workspace just before the revert, and what the revert wrote (snapshot trees).
    pub(crate) undo_tree: Option<String>,
    pub(crate) target_tree: Option<String>,
    /// JSON array of the paths it restored.
    pub(crate) paths: String,
}

/// A revert to record.
#[derive(Debug, Clone)]
pub(crate) struct NewRevert<'a> {
    pub(crate) id: &'a str,
    pub(crate) session_id: &'a str,
    pub(crate) message_id: &'a str,
    pub(crate) from_seq: i64,
    pub(crate) undo_tree: Option<&'a str>,
    pub(crate) target_tree: Option<&'a str>,
    pub(crate) paths: &'a str,
}

impl Store {
    /// Records a revert and hides the session's messages from `from_seq` on (those not hidden
    /// already) in one transaction; returns how many it hid.
    pub(crate) async fn record_revert(&self, r: &NewRevert<'_>) -> Result<u64> {
        let now = now_ms();
        let active = RevertState::Active.as_str();
        let mut tx = WriteTx::begin(self.pool()).await?;
        sqlx::query!(
            "INSERT INTO reverts (id, session_id, message_id, from_seq, undo_tree, target_tree, paths, state, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            r.id,
            r.session_id,
            r.message_id,
            r.from_seq,
            r.undo_tree,
            r.target_tree,
            r.paths,
            active,
            now
        )
        .execute(&mut *tx)
        .await?;
        let hidden = sqlx::query!(
            "UPDATE messages SET reverted_by = ? WHERE session_id = ? AND seq >= ? AND reverted_by IS NULL",
            r.id,
            r.session_id,
            r.from_seq
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(hidden)
    }

    /// The session's revert that can still be undone: its latest, while no prompt was sent
    /// after it.
    pub(crate) async fn undoable_revert(&self, session_id: &str) -> Result<Option<RevertRow>> {
        let active = RevertState::Active.as_str();
        Ok(sqlx::query_as!(
            RevertRow,
            "SELECT id, message_id, undo_tree, target_tree, paths FROM reverts
             WHERE session_id = ? AND state = ? ORDER BY created_at DESC, rowid DESC LIMIT 1",
            session_id,
            active
        )
        .fetch_optional(self.pool())
        .await?)
    }

    /// The `seq` of the first message of a run in a session (its prompt).
    pub(crate) async fn first_seq_of_run(
        &self,
        session_id: &str,
        run_id: &str,
    ) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar!(
            r#"SELECT MIN(seq) AS "seq: i64" FROM messages WHERE session_id = ? AND run_id = ?"#,
            session_id,
            run_id
        )
        .fetch_one(self.pool())
        .await?)
    }

    /// Undoes a revert's hiding of messages; returns how many are shown again.
    pub(crate) async fn undo_revert(&self, id: &str) -> Result<u64> {
        let undone = RevertState::Undone.as_str();
        let mut tx = WriteTx::begin(self.pool()).await?;
        sqlx::query!("UPDATE reverts SET state = ? WHERE id = ?", undone, id)
            .execute(&mut *tx)
            .await?;
        let shown = sqlx::query!(
            "UPDATE messages SET reverted_by = NULL WHERE reverted_by = ?",
            id
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(shown)
    }
}

/// A prompt after a revert makes it final (inside the turn's first transaction).
pub(super) async fn finalize_reverts_in(
    tx: &mut sqlx::SqliteConnection,
    session_id: &str,
) -> Result<()> {
    let (last, active) = (RevertState::Final.as_str(), RevertState::Active.as_str());
    sqlx::query!(
        "UPDATE reverts SET state = ? WHERE session_id = ? AND state = ?",
        last,
        session_id,
        active
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}
