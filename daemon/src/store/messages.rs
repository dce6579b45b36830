//! Messages: their rows, the one statement that appends a message to its session (next `seq`,
//! the session's count), and the reads, which fold in the pieces a streaming message was flushed
//! in (`pieces.rs`).

use sqlx::SqliteConnection;

use super::{Result, Store, WriteTx, new_id, now_ms, pieces};

#[derive(Debug, Clone, PartialEq)]
pub struct MessageRow {
    pub id: String,
    pub session_id: String,
    pub seq: i64,
    pub run_id: Option<String>,
    pub role: String,
    /// JSON array of parts.
    pub parts: String,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub finish_reason: Option<String>,
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
    /// The revert that hid it from the model (`session/revert`); `None` while it is shown.
    pub reverted_by: Option<String>,
}

/// A message row as read, with the pieces appended to it while it streams (`pieces.rs`).
struct StoredMessage {
    id: String,
    session_id: String,
    seq: i64,
    run_id: Option<String>,
    role: String,
    parts: String,
    model: Option<String>,
    provider: Option<String>,
    finish_reason: Option<String>,
    error: Option<String>,
    created_at: i64,
    updated_at: i64,
    finished_at: Option<i64>,
    reverted_by: Option<String>,
    /// JSON `[[extend, parts], …]`, oldest first; `[]` once the message is finished.
    pieces: Option<String>,
}

impl StoredMessage {
    fn folded(self) -> Result<MessageRow> {
        Ok(MessageRow {
            parts: pieces::fold(&self.parts, self.pieces.as_deref())?,
            id: self.id,
            session_id: self.session_id,
            seq: self.seq,
            run_id: self.run_id,
            role: self.role,
            model: self.model,
            provider: self.provider,
            finish_reason: self.finish_reason,
            error: self.error,
            created_at: self.created_at,
            updated_at: self.updated_at,
            finished_at: self.finished_at,
            reverted_by: self.reverted_by,
        })
    }
}

/// A new message to insert.
#[derive(Debug, Clone, Default)]
pub struct NewMessage<'a> {
    pub session_id: &'a str,
    pub run_id: Option<&'a str>,
    pub role: &'a str,
    pub parts: &'a str,
    pub model: Option<&'a str>,
    pub provider: Option<&'a str>,
}

/// One page of a session's messages, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MessagePage {
    pub(crate) messages: Vec<MessageRow>,
    /// Whether older messages exist before this page.
    pub(crate) has_more: bool,
}

impl Store {
    // ---- messages ----

    /// Appends a message to its session (next `seq`), bumping the session's count and time.
    pub async fn insert_message(&self, m: NewMessage<'_>) -> Result<MessageRow> {
        // The transaction's first statement writes: a deferred transaction that read first
        // would have to upgrade its lock, and SQLite answers that with SQLITE_BUSY at once
        // instead of waiting out the busy timeout.
        let mut tx = WriteTx::begin(self.pool()).await?;
        let row = insert_message_in(&mut tx, &new_id(), &m, now_ms()).await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Stores a model-written summary: a finished `system` message holding its `summary`
    /// part. `spent` is what writing it cost when no run's turn accounts for it (a compaction
    /// asked for by `session/compact`): added to the session's totals in the same transaction.
    pub(crate) async fn insert_summary(
        &self,
        m: NewMessage<'_>,
        spent: Option<&super::TurnUsage>,
    ) -> Result<MessageRow> {
        let now = now_ms();
        let mut tx = WriteTx::begin(self.pool()).await?;
        let mut row = insert_message_in(&mut tx, &new_id(), &m, now).await?;
        sqlx::query!(
            "UPDATE messages SET finished_at = ? WHERE id = ?",
            now,
            row.id
        )
        .execute(&mut *tx)
        .await?;
        if let Some(u) = spent {
            super::turns::add_session_usage_in(&mut tx, m.session_id, u, now).await?;
        }
        tx.commit().await?;
        row.finished_at = Some(now);
        Ok(row)
    }

    /// The empty assistant message a run streams into (its finish reason stays null until the
    /// final write).
    pub async fn start_assistant_message(
        &self,
        session_id: &str,
        run_id: Option<&str>,
        model: Option<&str>,
        provider: Option<&str>,
    ) -> Result<MessageRow> {
        self.insert_message(NewMessage {
            session_id,
            run_id,
            role: "assistant",
            parts: "[]",
            model,
            provider,
        })
        .await
    }

    /// Replaces a streaming message's parts, and drops the pieces appended to it (they are in
    /// `parts`): the flush after a change to a part already written, such as a signature.
    pub(crate) async fn update_message_parts(&self, id: &str, parts: &str) -> Result<()> {
        let now = now_ms();
        let mut tx = WriteTx::begin(self.pool()).await?;
        sqlx::query!(
            "UPDATE messages SET parts = ?, updated_at = ? WHERE id = ?",
            parts,
            now,
            id
        )
        .execute(&mut *tx)
        .await?;
        pieces::delete_pieces_in(&mut tx, id).await?;
        tx.commit().await
    }

    /// One message with what was flushed of it (the daemon reads messages by page,
    /// [`Store::list_messages`]; this one for the end of a summary's range).
    pub(crate) async fn get_message(&self, id: &str) -> Result<Option<MessageRow>> {
        // One statement reads the row and its pieces: a consistent snapshot even while a
        // flush or the final write (which folds and deletes the pieces) commits.
        sqlx::query_as!(
            StoredMessage,
            r#"SELECT m.id, m.session_id, m.seq, m.run_id, m.role, m.parts, m.model, m.provider,
                    m.finish_reason, m.error, m.created_at, m.updated_at, m.finished_at,
                    m.reverted_by,
                    (SELECT json_group_array(json_array(p.extend, json(p.parts)) ORDER BY p.id)
                       FROM message_pieces p WHERE p.message_id = m.id) AS "pieces?: String"
             FROM messages m WHERE m.id = ?"#,
            id
        )
        .fetch_optional(self.pool())
        .await?
        .map(StoredMessage::folded)
        .transpose()
    }

    /// Up to `limit` messages with `seq < before` (all when `before` is `None`), the newest of
    /// them, returned oldest first.
    pub(crate) async fn list_messages(
        &self,
        session_id: &str,
        before: Option<i64>,
        limit: i64,
    ) -> Result<MessagePage> {
        let before = before.unwrap_or(i64::MAX);
        let fetch = limit + 1;
        let mut rows = sqlx::query_as!(
            StoredMessage,
            r#"SELECT m.id, m.session_id, m.seq, m.run_id, m.role, m.parts, m.model, m.provider,
                    m.finish_reason, m.error, m.created_at, m.updated_at, m.finished_at,
                    m.reverted_by,
                    (SELECT json_group_array(json_array(p.extend, json(p.parts)) ORDER BY p.id)
                       FROM message_pieces p WHERE p.message_id = m.id) AS "pieces?: String"
             FROM messages m WHERE m.session_id = ? AND m.seq < ? ORDER BY m.seq DESC LIMIT ?"#,
            session_id,
            before,
            fetch
        )
        .fetch_all(self.pool())
        .await?
        .into_iter()
        .map(StoredMessage::folded)
        .collect::<Result<Vec<_>>>()?;
        let has_more = rows.len() as i64 > limit;
        rows.truncate(limit.max(0) as usize);
        rows.reverse();
        Ok(MessagePage {
            messages: rows,
            has_more,
        })
    }
}

pub(super) async fn insert_message_in(
    tx: &mut SqliteConnection,
    id: &str,
    m: &NewMessage<'_>,
    now: i64,
) -> Result<MessageRow> {
    let seq = sqlx::query_scalar!(
        r#"INSERT INTO messages (id, session_id, seq, run_id, role, parts, model, provider, created_at, updated_at)
           VALUES (?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM messages WHERE session_id = ?), ?, ?, ?, ?, ?, ?, ?)
           RETURNING seq AS "seq!: i64""#,
        id,
        m.session_id,
        m.session_id,
        m.run_id,
        m.role,
        m.parts,
        m.model,
        m.provider,
        now,
        now
    )
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query!(
        "UPDATE sessions SET message_count = message_count + 1, updated_at = ? WHERE id = ?",
        now,
        m.session_id
    )
    .execute(&mut *tx)
    .await?;
    Ok(MessageRow {
        id: id.to_owned(),
        session_id: m.session_id.to_owned(),
        seq,
        run_id: m.run_id.map(str::to_owned),
        role: m.role.to_owned(),
        parts: m.parts.to_owned(),
        model: m.model.map(str::to_owned),
        provider: m.provider.map(str::to_owned),
        finish_reason: None,
        error: None,
        created_at: now,
        updated_at: now,
        finished_at: None,
        reverted_by: None,
    })
}
