//! Approvals of a workspace's project MCP servers (`.mcp.json`), one row per exact server
//! definition, so an edited definition is asked for again.

use super::{Result, Store, now_ms};

impl Store {
    /// Whether `spec` (the server's canonical definition) was approved for the workspace.
    pub(crate) async fn mcp_approved(
        &self,
        workspace_id: &str,
        name: &str,
        spec: &str,
    ) -> Result<bool> {
        let row = sqlx::query_scalar!(
            r#"SELECT 1 AS "one!: i64" FROM mcp_approvals WHERE workspace_id = ? AND name = ? AND spec = ?"#,
            workspace_id,
            name,
            spec
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(row.is_some())
    }

    /// Remembers that a client approved `spec` for the workspace.
    pub(crate) async fn approve_mcp(
        &self,
        workspace_id: &str,
        name: &str,
        spec: &str,
    ) -> Result<()> {
        let now = now_ms();
        sqlx::query!(
            "INSERT INTO mcp_approvals (workspace_id, name, spec, approved_at) VALUES (?, ?, ?, ?)
             ON CONFLICT(workspace_id, name, spec) DO UPDATE SET approved_at = excluded.approved_at",
            workspace_id,
            name,
            spec,
            now
        )
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
