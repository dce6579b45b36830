//! Pieces of a streaming message (table `message_pieces`, migration 0004). A flush appends what
//! arrived since the previous flush instead of rewriting the whole message, so the bytes written
//! for a reply grow with its length rather than its square. A message reads as its `parts`
//! followed by its pieces; the message's final write, and recovery after a crash, fold the
//! pieces into `parts` and delete them, so only a message still streaming has any.

use crush_protocol::Part;
use sqlx::SqliteConnection;

use super::live::parts_json;
use super::{Result, Store, StoreError, WriteTx, now_ms};

fn decode(e: serde_json::Error) -> StoreError {
    StoreError::Db(sqlx::Error::Decode(Box::new(e)))
}

/// Applies `pieces` — the JSON array `[[extend, parts], …]` the reads select, oldest first — to
/// a message's `parts` and returns the parts as one JSON array.
pub(super) fn fold(parts: &str, pieces: Option<&str>) -> Result<String> {
    let pieces: Vec<(Option<String>, Vec<Part>)> = match pieces {
        None => return Ok(parts.to_owned()),
        Some(p) => serde_json::from_str(p).map_err(decode)?,
    };
    if pieces.is_empty() {
        return Ok(parts.to_owned());
    }
    let mut folded: Vec<Part> = serde_json::from_str(parts).map_err(decode)?;
    for (extend, more) in pieces {
        if let Some(extend) = extend
            && let Some(text) = folded.last_mut().and_then(Part::streamed_text_mut)
        {
            text.push_str(&extend);
        }
        folded.extend(more);
    }
    Ok(parts_json(&folded))
}

/// Deletes a message's pieces; the caller has just written its folded `parts` in the same
/// transaction.
pub(super) async fn delete_pieces_in(tx: &mut SqliteConnection, message_id: &str) -> Result<()> {
    sqlx::query!(
        "DELETE FROM message_pieces WHERE message_id = ?",
        message_id
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Folds the pieces of every message still streaming into its `parts` (crash recovery: the
/// message is about to be marked interrupted, and a finished message has no pieces).
pub(super) async fn fold_unfinished_in(tx: &mut SqliteConnection) -> Result<()> {
    let unfinished = sqlx::query!(
        r#"SELECT m.id AS "id!", m.parts,
                  (SELECT json_group_array(json_array(p.extend, json(p.parts)) ORDER BY p.id)
                     FROM message_pieces p WHERE p.message_id = m.id) AS "pieces?: String"
             FROM messages m
            WHERE m.finish_reason IS NULL
              AND EXISTS (SELECT 1 FROM message_pieces p WHERE p.message_id = m.id)"#
    )
    .fetch_all(&mut *tx)
    .await?;
    for m in unfinished {
        let parts = fold(&m.parts, m.pieces.as_deref())?;
        sqlx::query!("UPDATE messages SET parts = ? WHERE id = ?", parts, m.id)
            .execute(&mut *tx)
            .await?;
        delete_pieces_in(tx, &m.id).await?;
    }
    Ok(())
}

impl Store {
    /// A flush: appends to a streaming message `extend` (text continuing its last part) and
    /// `parts` (a JSON array of whole parts after it).
    pub(crate) async fn append_message_piece(
        &self,
        message_id: &str,
        extend: Option<&str>,
        parts: &str,
    ) -> Result<()> {
        let now = now_ms();
        let mut tx = WriteTx::begin(self.pool()).await?;
        sqlx::query!(
            "INSERT INTO message_pieces (message_id, extend, parts) VALUES (?, ?, ?)",
            message_id,
            extend,
            parts
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            "UPDATE messages SET updated_at = ? WHERE id = ?",
            now,
            message_id
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }
}
