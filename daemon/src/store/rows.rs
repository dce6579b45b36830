//! Typed rows and the statements that read and write them.

use sqlx::SqliteConnection;

use super::{Result, Store, WriteTx, new_id, now_ms, pieces};

#[derive(Debug, Clone, PartialEq)]
pub struct WorkspaceRow {
    pub id: String,
    pub path: String,
    pub created_at: i64,
    pub last_opened_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    pub id: String,
    pub workspace_id: String,
    pub title: String,
    pub model: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub message_count: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost: f64,
}

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
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunRow {
    pub(crate) run_id: String,
    pub(crate) session_id: String,
    pub(crate) state: String,
    pub(crate) prompt: String,
    pub(crate) error: Option<String>,
    pub(crate) user_message_id: Option<String>,
    pub(crate) assistant_message_id: Option<String>,
    pub(crate) created_at: i64,
    pub(crate) started_at: Option<i64>,
    pub(crate) finished_at: Option<i64>,
    pub(crate) folded_into: Option<String>,
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
    // ---- workspaces ----

    /// Creates the workspace for a canonical path, or refreshes its `last_opened_at`.
    pub async fn open_workspace(&self, canonical_path: &str) -> Result<WorkspaceRow> {
        let now = now_ms();
        let id = new_id();
        let row = sqlx::query_as!(
            WorkspaceRow,
            r#"INSERT INTO workspaces (id, path, created_at, last_opened_at) VALUES (?, ?, ?, ?)
               ON CONFLICT(path) DO UPDATE SET last_opened_at = excluded.last_opened_at
               RETURNING id AS "id!", path AS "path!", created_at AS "created_at!", last_opened_at AS "last_opened_at!""#,
            id,
            canonical_path,
            now,
            now
        )
        .fetch_one(self.pool())
        .await?;
        Ok(row)
    }

    pub(crate) async fn get_workspace(&self, id: &str) -> Result<Option<WorkspaceRow>> {
        Ok(sqlx::query_as!(
            WorkspaceRow,
            "SELECT id, path, created_at, last_opened_at FROM workspaces WHERE id = ?",
            id
        )
        .fetch_optional(self.pool())
        .await?)
    }

    pub(crate) async fn list_workspaces(&self) -> Result<Vec<WorkspaceRow>> {
        Ok(sqlx::query_as!(
            WorkspaceRow,
            "SELECT id, path, created_at, last_opened_at FROM workspaces ORDER BY last_opened_at DESC, id"
        )
        .fetch_all(self.pool())
        .await?)
    }

    // ---- sessions ----

    pub async fn create_session(
        &self,
        workspace_id: &str,
        title: &str,
        model: Option<&str>,
    ) -> Result<SessionRow> {
        let now = now_ms();
        let id = new_id();
        sqlx::query!(
            "INSERT INTO sessions (id, workspace_id, title, model, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
            id,
            workspace_id,
            title,
            model,
            now,
            now
        )
        .execute(self.pool())
        .await?;
        Ok(SessionRow {
            id,
            workspace_id: workspace_id.to_owned(),
            title: title.to_owned(),
            model: model.map(str::to_owned),
            created_at: now,
            updated_at: now,
            message_count: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            cost: 0.0,
        })
    }

    pub(crate) async fn get_session(&self, id: &str) -> Result<Option<SessionRow>> {
        Ok(sqlx::query_as!(
            SessionRow,
            "SELECT id, workspace_id, title, model, created_at, updated_at, message_count,
                    prompt_tokens, completion_tokens, cost
             FROM sessions WHERE id = ?",
            id
        )
        .fetch_optional(self.pool())
        .await?)
    }

    /// Sessions of a workspace, most recently updated first.
    pub(crate) async fn list_sessions(&self, workspace_id: &str) -> Result<Vec<SessionRow>> {
        Ok(sqlx::query_as!(
            SessionRow,
            "SELECT id, workspace_id, title, model, created_at, updated_at, message_count,
                    prompt_tokens, completion_tokens, cost
             FROM sessions WHERE workspace_id = ? ORDER BY updated_at DESC, id DESC",
            workspace_id
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// Renames a session; `None` when it does not exist.
    pub(crate) async fn rename_session(&self, id: &str, title: &str) -> Result<Option<SessionRow>> {
        let now = now_ms();
        let changed = sqlx::query!(
            "UPDATE sessions SET title = ?, updated_at = ? WHERE id = ?",
            title,
            now,
            id
        )
        .execute(self.pool())
        .await?
        .rows_affected();
        if changed == 0 {
            return Ok(None);
        }
        self.get_session(id).await
    }

    /// Sets (or clears) the session's model; `None` when the session does not exist.
    pub(crate) async fn set_session_model(
        &self,
        id: &str,
        model: Option<&str>,
    ) -> Result<Option<SessionRow>> {
        let now = now_ms();
        let changed = sqlx::query!(
            "UPDATE sessions SET model = ?, updated_at = ? WHERE id = ?",
            model,
            now,
            id
        )
        .execute(self.pool())
        .await?
        .rows_affected();
        if changed == 0 {
            return Ok(None);
        }
        self.get_session(id).await
    }

    /// Deletes a session with its messages and runs; false when it did not exist.
    pub(crate) async fn delete_session(&self, id: &str) -> Result<bool> {
        let deleted = sqlx::query!("DELETE FROM sessions WHERE id = ?", id)
            .execute(self.pool())
            .await?
            .rows_affected();
        Ok(deleted > 0)
    }

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

    /// One message with what was flushed of it. The daemon reads messages by page
    /// ([`Store::list_messages`]); tests read one to check what a write left.
    #[cfg(test)]
    pub(crate) async fn get_message(&self, id: &str) -> Result<Option<MessageRow>> {
        // One statement reads the row and its pieces: a consistent snapshot even while a
        // flush or the final write (which folds and deletes the pieces) commits.
        sqlx::query_as!(
            StoredMessage,
            r#"SELECT m.id, m.session_id, m.seq, m.run_id, m.role, m.parts, m.model, m.provider,
                    m.finish_reason, m.error, m.created_at, m.updated_at, m.finished_at,
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

    // ---- runs ----

    pub(crate) async fn get_run(&self, run_id: &str) -> Result<Option<RunRow>> {
        Ok(sqlx::query_as!(
            RunRow,
            "SELECT run_id, session_id, state, prompt, error, user_message_id, assistant_message_id,
                    created_at, started_at, finished_at, folded_into
             FROM runs WHERE run_id = ?",
            run_id
        )
        .fetch_optional(self.pool())
        .await?)
    }

    // ---- turns: the writes of a run, each one transaction ----

    /// Deletes the row of a run accepted but then refused before it was admitted. A run that
    /// already moved past `accepted` is left alone.
    pub(crate) async fn withdraw_accept(&self, run_id: &str) -> Result<()> {
        sqlx::query!(
            "DELETE FROM runs WHERE run_id = ? AND state = 'accepted'",
            run_id
        )
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Starts a turn: the run's user message, the empty assistant message it streams into, and
    /// the run row marked running, in one transaction.
    pub async fn start_turn(&self, t: &StartTurn<'_>) -> Result<(MessageRow, MessageRow)> {
        let now = now_ms();
        let mut tx = WriteTx::begin(self.pool()).await?;
        let user = insert_message_in(
            &mut tx,
            &new_id(),
            &NewMessage {
                session_id: t.session_id,
                run_id: Some(t.run_id),
                role: "user",
                parts: t.user_parts,
                model: None,
                provider: None,
            },
            now,
        )
        .await?;
        let assistant = insert_message_in(
            &mut tx,
            &new_id(),
            &NewMessage {
                session_id: t.session_id,
                run_id: Some(t.run_id),
                role: "assistant",
                parts: "[]",
                model: Some(t.model),
                provider: Some(t.provider),
            },
            now,
        )
        .await?;
        upsert_running_run(
            &mut tx,
            t.run_id,
            t.session_id,
            t.prompt,
            &user.id,
            &assistant.id,
            None,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok((user, assistant))
    }

    /// A further step of a turn, in one transaction: the previous assistant message finished,
    /// the step's tool results as a `tool` message, the user messages of steered runs folded in
    /// (their run rows marked running and `folded_into` the turn's run), then a new empty
    /// assistant message.
    pub(crate) async fn add_step(&self, n: &NextStep<'_>) -> Result<(Vec<MessageRow>, MessageRow)> {
        let now = now_ms();
        let mut tx = WriteTx::begin(self.pool()).await?;
        sqlx::query!(
            "UPDATE messages SET parts = ?, finish_reason = ?, error = ?, updated_at = ?, finished_at = ?
                 WHERE id = ?",
            n.previous_parts,
            n.previous_finish,
            None::<String>,
            now,
            now,
            n.previous_id
        )
        .execute(&mut *tx)
        .await?;
        pieces::delete_pieces_in(&mut tx, n.previous_id).await?;
        if let Some(results) = n.tool_results {
            insert_message_in(
                &mut tx,
                &new_id(),
                &NewMessage {
                    session_id: n.session_id,
                    run_id: Some(n.run_id),
                    role: "tool",
                    parts: results,
                    model: None,
                    provider: None,
                },
                now,
            )
            .await?;
        }
        let mut users = Vec::with_capacity(n.folded.len());
        for f in n.folded {
            let user = insert_message_in(
                &mut tx,
                &new_id(),
                &NewMessage {
                    session_id: n.session_id,
                    run_id: Some(f.run_id),
                    role: "user",
                    parts: f.user_parts,
                    model: None,
                    provider: None,
                },
                now,
            )
            .await?;
            users.push(user);
        }
        let assistant = insert_message_in(
            &mut tx,
            &new_id(),
            &NewMessage {
                session_id: n.session_id,
                run_id: Some(n.run_id),
                role: "assistant",
                parts: "[]",
                model: Some(n.model),
                provider: Some(n.provider),
            },
            now,
        )
        .await?;
        for (f, user) in n.folded.iter().zip(&users) {
            upsert_running_run(
                &mut tx,
                f.run_id,
                n.session_id,
                f.prompt,
                &user.id,
                &assistant.id,
                Some(n.run_id),
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok((users, assistant))
    }

    /// Ends a turn: the last assistant message's final parts and finish reason, the terminal
    /// state of every run that took part, and the session's token usage, in one transaction.
    pub async fn finish_turn(&self, f: &FinishTurn<'_>) -> Result<()> {
        let now = now_ms();
        let mut tx = WriteTx::begin(self.pool()).await?;
        if let Some(id) = f.message_id {
            sqlx::query!(
                "UPDATE messages SET parts = ?, finish_reason = ?, error = ?, updated_at = ?, finished_at = ?
                 WHERE id = ?",
                f.parts,
                f.finish_reason,
                f.error,
                now,
                now,
                id
            )
            .execute(&mut *tx)
            .await?;
            pieces::delete_pieces_in(&mut tx, id).await?;
        }
        for run_id in f.run_ids {
            sqlx::query!(
                "UPDATE runs SET state = ?, error = ?, finished_at = ?,
                        assistant_message_id = COALESCE(?, assistant_message_id)
                 WHERE run_id = ?",
                f.run_state,
                f.error,
                now,
                f.message_id,
                run_id
            )
            .execute(&mut *tx)
            .await?;
        }
        if f.prompt_tokens != 0 || f.completion_tokens != 0 {
            sqlx::query!(
                "UPDATE sessions SET prompt_tokens = prompt_tokens + ?, completion_tokens = completion_tokens + ?,
                        updated_at = ? WHERE id = ?",
                f.prompt_tokens,
                f.completion_tokens,
                now,
                f.session_id
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records how runs ended that have no turn to finish: prompts dropped before they ran (a
    /// cancel cleared the queue), or runs that failed before their first write. A run that
    /// already reached a terminal state keeps it.
    pub(crate) async fn record_run_ends(&self, runs: &[RunEnd<'_>]) -> Result<()> {
        let now = now_ms();
        let mut tx = WriteTx::begin(self.pool()).await?;
        for r in runs {
            sqlx::query!(
                "INSERT INTO runs (run_id, session_id, state, prompt, error, created_at, finished_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT(run_id) DO UPDATE SET state = excluded.state, error = excluded.error,
                        finished_at = excluded.finished_at
                 WHERE runs.state IN ('accepted', 'queued', 'running')",
                r.run_id,
                r.session_id,
                r.state,
                r.prompt,
                r.error,
                now,
                now
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// The first write of a turn.
#[derive(Debug, Clone)]
pub struct StartTurn<'a> {
    pub run_id: &'a str,
    pub session_id: &'a str,
    pub prompt: &'a str,
    /// JSON array of the user message's parts.
    pub user_parts: &'a str,
    pub model: &'a str,
    pub provider: &'a str,
}

/// A steered prompt joining a turn.
#[derive(Debug, Clone)]
pub(crate) struct FoldedPrompt<'a> {
    pub(crate) run_id: &'a str,
    pub(crate) prompt: &'a str,
    pub(crate) user_parts: &'a str,
}

/// The boundary between two model steps of a turn.
#[derive(Debug, Clone)]
pub(crate) struct NextStep<'a> {
    pub(crate) session_id: &'a str,
    pub(crate) run_id: &'a str,
    /// The assistant message of the step that ended, with its final parts.
    pub(crate) previous_id: &'a str,
    pub(crate) previous_parts: &'a str,
    pub(crate) previous_finish: &'a str,
    /// JSON array of the step's tool results, if it called tools.
    pub(crate) tool_results: Option<&'a str>,
    pub(crate) folded: &'a [FoldedPrompt<'a>],
    pub(crate) model: &'a str,
    pub(crate) provider: &'a str,
}

/// The last write of a turn.
#[derive(Debug, Clone)]
pub struct FinishTurn<'a> {
    pub session_id: &'a str,
    /// The turn's last assistant message, if one was started.
    pub message_id: Option<&'a str>,
    pub parts: &'a str,
    pub finish_reason: &'a str,
    pub error: Option<&'a str>,
    /// `completed`, `cancelled` or `failed`.
    pub run_state: &'a str,
    /// The turn's run and the runs folded into it.
    pub run_ids: &'a [&'a str],
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

/// How a run without a turn to finish ended (see [`Store::record_run_ends`]).
#[derive(Debug, Clone)]
pub(crate) struct RunEnd<'a> {
    pub(crate) run_id: &'a str,
    pub(crate) session_id: &'a str,
    pub(crate) prompt: &'a str,
    /// `cancelled` or `failed`.
    pub(crate) state: &'a str,
    pub(crate) error: Option<&'a str>,
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
    })
}

#[allow(clippy::too_many_arguments)]
async fn upsert_running_run(
    tx: &mut SqliteConnection,
    run_id: &str,
    session_id: &str,
    prompt: &str,
    user_message_id: &str,
    assistant_message_id: &str,
    folded_into: Option<&str>,
    now: i64,
) -> Result<()> {
    sqlx::query!(
        "INSERT INTO runs (run_id, session_id, state, prompt, user_message_id, assistant_message_id,
                           created_at, started_at, folded_into)
         VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?)
         ON CONFLICT(run_id) DO UPDATE SET state = 'running', started_at = excluded.started_at,
                user_message_id = excluded.user_message_id,
                assistant_message_id = excluded.assistant_message_id,
                folded_into = excluded.folded_into
         WHERE runs.state IN ('accepted', 'queued')",
        run_id,
        session_id,
        prompt,
        user_message_id,
        assistant_message_id,
        now,
        now,
        folded_into
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}
