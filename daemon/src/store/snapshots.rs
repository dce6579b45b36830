//! The snapshot records of a session's runs (the trees themselves are in the shadow Git store,
//! `crate::snapshots`).

use super::{Result, Store, now_ms};

/// When a snapshot was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SnapshotKind {
    /// Before the first step of a turn whose tools may change files.
    Before,
    /// After a step whose tools may change files.
    After,
}

impl SnapshotKind {
    fn as_str(self) -> &'static str {
        match self {
            SnapshotKind::Before => "before",
            SnapshotKind::After => "after",
        }
    }
}

/// A snapshot taken during a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SnapshotRow {
    pub(crate) id: i64,
    pub(crate) kind: String,
    pub(crate) run_id: String,
    pub(crate) message_id: String,
    pub(crate) tree: String,
}

impl Store {
    pub(crate) async fn record_snapshot(
        &self,
        session_id: &str,
        run_id: &str,
        message_id: &str,
        kind: SnapshotKind,
        tree: &str,
        skipped: &str,
    ) -> Result<()> {
        let now = now_ms();
        let kind = kind.as_str();
        sqlx::query!(
            "INSERT INTO snapshots (session_id, run_id, message_id, kind, tree, skipped, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
            session_id,
            run_id,
            message_id,
            kind,
            tree,
            skipped,
            now
        )
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The first and the last snapshot of a run (`None` without any), or of the whole session
    /// when `run_id` is `None`.
    pub(crate) async fn snapshot_bounds(
        &self,
        session_id: &str,
        run_id: Option<&str>,
    ) -> Result<Option<(SnapshotRow, SnapshotRow)>> {
        let rows = sqlx::query_as!(
            SnapshotRow,
            r#"SELECT id AS "id!", kind, run_id, message_id, tree FROM snapshots
               WHERE session_id = ? AND (? IS NULL OR run_id = ?)
                 AND id IN (
                   (SELECT MIN(id) FROM snapshots WHERE session_id = ? AND (? IS NULL OR run_id = ?)),
                   (SELECT MAX(id) FROM snapshots WHERE session_id = ? AND (? IS NULL OR run_id = ?)))
               ORDER BY id"#,
            session_id,
            run_id,
            run_id,
            session_id,
            run_id,
            run_id,
            session_id,
            run_id,
            run_id
        )
        .fetch_all(self.pool())
        .await?;
        Ok(match rows.as_slice() {
            [only] => Some((only.clone(), only.clone())),
            [first, last] => Some((first.clone(), last.clone())),
            _ => None,
        })
    }

    /// Every path a run's (or the session's) snapshots left out as too large.
    pub(crate) async fn snapshot_skipped(
        &self,
        session_id: &str,
        run_id: Option<&str>,
    ) -> Result<Vec<String>> {
        let lists = sqlx::query_scalar!(
            "SELECT skipped FROM snapshots WHERE session_id = ? AND (? IS NULL OR run_id = ?)",
            session_id,
            run_id,
            run_id
        )
        .fetch_all(self.pool())
        .await?;
        let mut all: Vec<String> = lists
            .iter()
            .flat_map(|l| serde_json::from_str::<Vec<String>>(l).unwrap_or_default())
            .collect();
        all.sort();
        all.dedup();
        Ok(all)
    }

    /// The session's snapshots taken for messages from `from_seq` on, oldest first.
    pub(crate) async fn snapshots_from(
        &self,
        session_id: &str,
        from_seq: i64,
    ) -> Result<Vec<SnapshotRow>> {
        Ok(sqlx::query_as!(
            SnapshotRow,
            r#"SELECT s.id AS "id!", s.kind, s.run_id, s.message_id, s.tree FROM snapshots s
               JOIN messages m ON m.id = s.message_id
               WHERE s.session_id = ? AND m.seq >= ? ORDER BY s.id"#,
            session_id,
            from_seq
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// The session's latest snapshot.
    pub(crate) async fn last_snapshot(&self, session_id: &str) -> Result<Option<SnapshotRow>> {
        Ok(sqlx::query_as!(
            SnapshotRow,
            r#"SELECT id AS "id!", kind, run_id, message_id, tree FROM snapshots
               WHERE session_id = ? ORDER BY id DESC LIMIT 1"#,
            session_id
        )
        .fetch_optional(self.pool())
        .await?)
    }
}
