//! Forking a session: a new session of the same workspace whose messages are copies of the
//! original's up to one of them, written in one transaction. Copies get new ids and consecutive
//! `seq`s from 1 (so the copy's first message is its first instruction, as the context budget
//! expects); a summary part's message ids are mapped to the copies'. A message still streaming
//! (an assistant message without a finish reason) is not copied: it is the original's run's.
//! Run ids are not copied either — those runs belong to the original session.

use std::collections::HashMap;

use crush_protocol::Part;

use super::{MessageRow, Result, SessionRow, Store, WriteTx, new_id, now_ms};

/// Messages read per page while copying.
const PAGE: i64 = 1_000;

impl Store {
    /// Copies session `source` into a new session titled `title`, with its messages up to
    /// `through_seq` (all of them when `None`). `None` when `source` does not exist.
    pub(crate) async fn fork_session(
        &self,
        source: &str,
        through_seq: Option<i64>,
        title: &str,
    ) -> Result<Option<SessionRow>> {
        let Some(original) = self.get_session(source).await? else {
            return Ok(None);
        };
        let mut rows: Vec<MessageRow> = Vec::new();
        let mut before = through_seq.map(|s| s.saturating_add(1));
        loop {
            let page = self.list_messages(source, before, PAGE).await?;
            before = page.messages.first().map(|m| m.seq);
            let mut older = page.messages;
            older.append(&mut rows);
            rows = older;
            if !page.has_more {
                break;
            }
        }
        rows.retain(|m| !(m.role == "assistant" && m.finish_reason.is_none()));
        let ids: HashMap<String, String> = rows.iter().map(|m| (m.id.clone(), new_id())).collect();

        let now = now_ms();
        let id = new_id();
        let count = rows.len() as i64;
        let mut tx = WriteTx::begin(self.pool()).await?;
        sqlx::query!(
            "INSERT INTO sessions (id, workspace_id, title, model, created_at, updated_at, message_count)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
            id,
            original.workspace_id,
            title,
            original.model,
            now,
            now,
            count
        )
        .execute(&mut *tx)
        .await?;
        for (seq, m) in (1i64..).zip(&rows) {
            let copy_id = &ids[&m.id];
            let parts = remap_summaries(&m.parts, &ids);
            sqlx::query!(
                "INSERT INTO messages (id, session_id, seq, role, parts, model, provider,
                                       finish_reason, error, created_at, updated_at, finished_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                copy_id,
                id,
                seq,
                m.role,
                parts,
                m.model,
                m.provider,
                m.finish_reason,
                m.error,
                m.created_at,
                now,
                m.finished_at
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.get_session(&id).await
    }
}

/// `parts` with the message ids of its summary parts mapped to the copies'.
fn remap_summaries(parts: &str, ids: &HashMap<String, String>) -> String {
    let Ok(mut list) = serde_json::from_str::<Vec<Part>>(parts) else {
        return parts.to_owned();
    };
    let mut changed = false;
    for p in &mut list {
        if let Part::Summary {
            from_message_id,
            to_message_id,
            ..
        } = p
        {
            for id in [from_message_id, to_message_id] {
                if let Some(new) = ids.get(id.as_str()) {
                    *id = new.clone();
                    changed = true;
                }
            }
        }
    }
    if !changed {
        return parts.to_owned();
    }
    serde_json::to_string(&list).unwrap_or_else(|_| parts.to_owned())
}
