//! Workspaces and sessions: their rows and the statements that read and write them. A session's
//! messages and runs go with it (`ON DELETE CASCADE`).

use super::{Result, Store, WriteTx, new_id, now_ms};

#[derive(Debug, Clone, PartialEq)]
pub struct WorkspaceRow {
    pub id: String,
    pub path: String,
    pub created_at: i64,
    pub last_opened_at: i64,
}

/// A session's own sandbox choice as stored (`mode` is a `SandboxMode` name).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SessionSandboxRow {
    pub(crate) id: String,
    pub(crate) mode: Option<String>,
    pub(crate) network: Option<bool>,
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
    pub cached_tokens: i64,
    pub reasoning_tokens: i64,
    /// Tokens spent at an unknown price: while not 0, the session's total cost is unknown.
    pub unpriced_tokens: i64,
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

    /// A session with the title its creator chose.
    pub async fn create_session(
        &self,
        workspace_id: &str,
        title: &str,
        model: Option<&str>,
    ) -> Result<SessionRow> {
        self.insert_session(workspace_id, title, model, false).await
    }

    /// A session whose creator chose no title: `placeholder` until its first turn titles it
    /// from the prompt.
    pub(crate) async fn create_untitled_session(
        &self,
        workspace_id: &str,
        placeholder: &str,
        model: Option<&str>,
    ) -> Result<SessionRow> {
        self.insert_session(workspace_id, placeholder, model, true)
            .await
    }

    async fn insert_session(
        &self,
        workspace_id: &str,
        title: &str,
        model: Option<&str>,
        auto_title: bool,
    ) -> Result<SessionRow> {
        let now = now_ms();
        let id = new_id();
        sqlx::query!(
            "INSERT INTO sessions (id, workspace_id, title, model, created_at, updated_at, auto_title)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
            id,
            workspace_id,
            title,
            model,
            now,
            now,
            auto_title
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
            cached_tokens: 0,
            reasoning_tokens: 0,
            unpriced_tokens: 0,
        })
    }

    pub(crate) async fn get_session(&self, id: &str) -> Result<Option<SessionRow>> {
        Ok(sqlx::query_as!(
            SessionRow,
            "SELECT id, workspace_id, title, model, created_at, updated_at, message_count,
                    prompt_tokens, completion_tokens, cost, cached_tokens, reasoning_tokens,
                    unpriced_tokens
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
                    prompt_tokens, completion_tokens, cost, cached_tokens, reasoning_tokens,
                    unpriced_tokens
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
            "UPDATE sessions SET title = ?, auto_title = 0, updated_at = ? WHERE id = ?",
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

    /// Replaces the title `from` by `to` unless the session's title changed meanwhile (a
    /// rename), adding what writing it cost to the session's totals in the same transaction.
    /// `None` when the title was not replaced.
    pub(crate) async fn retitle(
        &self,
        id: &str,
        from: &str,
        to: &str,
        spent: &super::TurnUsage,
    ) -> Result<Option<SessionRow>> {
        let now = now_ms();
        let mut tx = WriteTx::begin(self.pool()).await?;
        let changed = sqlx::query!(
            "UPDATE sessions SET title = ?, updated_at = ? WHERE id = ? AND title = ?",
            to,
            now,
            id,
            from
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        super::turns::add_session_usage_in(&mut tx, id, spent, now).await?;
        tx.commit().await?;
        if changed == 0 {
            return Ok(None);
        }
        self.get_session(id).await
    }

    /// Sets (or clears) the session's model; `None` when the session does not exist.
    /// Saves a session's own sandbox choice (`None`s: the config's). `false` when no session
    /// has the id.
    pub(crate) async fn set_session_sandbox(
        &self,
        id: &str,
        mode: Option<&str>,
        network: Option<bool>,
    ) -> Result<bool> {
        let changed = sqlx::query!(
            "UPDATE sessions SET sandbox_mode = ?, sandbox_network = ? WHERE id = ?",
            mode,
            network,
            id
        )
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(changed > 0)
    }

    /// Every session's own sandbox choice (the sessions that made one).
    pub(crate) async fn session_sandboxes(&self) -> Result<Vec<SessionSandboxRow>> {
        Ok(sqlx::query_as!(
            SessionSandboxRow,
            r#"SELECT id AS "id!", sandbox_mode AS "mode", sandbox_network AS "network: bool"
               FROM sessions WHERE sandbox_mode IS NOT NULL OR sandbox_network IS NOT NULL"#
        )
        .fetch_all(self.pool())
        .await?)
    }

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
}
