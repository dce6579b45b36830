//! Saved permission rules ("always allow" answers, `permission_rules`) and the audit log of
//! every permission decision (`permission_log`). The daemon keeps the rules in memory too
//! (`runs/permissions.rs`) and writes here first, so what it matches is what survives a restart.

use crush_protocol::{PermissionLogEntry, PermissionRule};

use super::{Result, Store, StoreError};

/// How many audit log entries are kept; older ones are deleted as new ones arrive.
pub const LOG_KEEP: i64 = 10_000;

struct RuleRow {
    id: String,
    scope: String,
    workspace_id: Option<String>,
    session_id: Option<String>,
    tool: String,
    pattern: Option<String>,
    created_at: i64,
    created_by: String,
}

struct LogRow {
    at: i64,
    session_id: String,
    workspace_id: String,
    run_id: String,
    tool_call_id: String,
    tool: String,
    title: String,
    decision: String,
    source: String,
    rule: Option<String>,
    rule_id: Option<String>,
    client: Option<String>,
    connection: Option<i64>,
}

fn decode(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Db(sqlx::Error::Decode(Box::new(e)))
}

impl TryFrom<RuleRow> for PermissionRule {
    type Error = StoreError;

    fn try_from(r: RuleRow) -> Result<Self> {
        Ok(PermissionRule {
            id: r.id,
            scope: r.scope.parse().map_err(decode)?,
            workspace_id: r.workspace_id,
            session_id: r.session_id,
            tool: r.tool,
            pattern: r.pattern,
            created_at: r.created_at,
            created_by: r.created_by,
        })
    }
}

impl TryFrom<LogRow> for PermissionLogEntry {
    type Error = StoreError;

    fn try_from(r: LogRow) -> Result<Self> {
        Ok(PermissionLogEntry {
            at: r.at,
            session_id: r.session_id,
            workspace_id: r.workspace_id,
            run_id: r.run_id,
            tool_call_id: r.tool_call_id,
            tool: r.tool,
            title: r.title,
            decision: r.decision.parse().map_err(decode)?,
            source: r.source.parse().map_err(decode)?,
            rule: r.rule,
            rule_id: r.rule_id,
            client: r.client,
            connection: r.connection.and_then(|c| u64::try_from(c).ok()),
        })
    }
}

impl Store {
    /// Every saved rule, oldest first.
    pub(crate) async fn permission_rules(&self) -> Result<Vec<PermissionRule>> {
        sqlx::query_as!(
            RuleRow,
            "SELECT id, scope, workspace_id, session_id, tool, pattern, created_at, created_by
             FROM permission_rules ORDER BY created_at, id"
        )
        .fetch_all(self.pool())
        .await?
        .into_iter()
        .map(PermissionRule::try_from)
        .collect()
    }

    pub async fn insert_permission_rule(&self, rule: &PermissionRule) -> Result<()> {
        let scope = rule.scope.as_str();
        sqlx::query!(
            "INSERT INTO permission_rules
               (id, scope, workspace_id, session_id, tool, pattern, created_at, created_by)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rule.id,
            scope,
            rule.workspace_id,
            rule.session_id,
            rule.tool,
            rule.pattern,
            rule.created_at,
            rule.created_by
        )
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Deletes a rule; `false` when there was none with that id.
    pub(crate) async fn remove_permission_rule(&self, id: &str) -> Result<bool> {
        let done = sqlx::query!("DELETE FROM permission_rules WHERE id = ?", id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Appends a decision to the audit log, dropping entries older than the last `LOG_KEEP`.
    pub async fn log_permission(&self, e: &PermissionLogEntry) -> Result<()> {
        let (decision, source) = (e.decision.as_str(), e.source.as_str());
        let connection = e.connection.and_then(|c| i64::try_from(c).ok());
        let mut tx = self.pool().begin().await?;
        let id = sqlx::query_scalar!(
            r#"INSERT INTO permission_log
               (at, session_id, workspace_id, run_id, tool_call_id, tool, title, decision, source,
                rule, rule_id, client, connection)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id AS "id!: i64""#,
            e.at,
            e.session_id,
            e.workspace_id,
            e.run_id,
            e.tool_call_id,
            e.tool,
            e.title,
            decision,
            source,
            e.rule,
            e.rule_id,
            e.client,
            connection
        )
        .fetch_one(&mut *tx)
        .await?;
        let oldest_kept = id - LOG_KEEP;
        sqlx::query!("DELETE FROM permission_log WHERE id <= ?", oldest_kept)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The newest `limit` audit log entries, of one session and/or workspace when given.
    pub(crate) async fn permission_log(
        &self,
        session_id: Option<&str>,
        workspace_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<PermissionLogEntry>> {
        sqlx::query_as!(
            LogRow,
            "SELECT at, session_id, workspace_id, run_id, tool_call_id, tool, title, decision,
                    source, rule, rule_id, client, connection
             FROM permission_log
             WHERE (?1 IS NULL OR session_id = ?1) AND (?2 IS NULL OR workspace_id = ?2)
             ORDER BY id DESC LIMIT ?3",
            session_id,
            workspace_id,
            limit
        )
        .fetch_all(self.pool())
        .await?
        .into_iter()
        .map(PermissionLogEntry::try_from)
        .collect()
    }
}
