//! A run's snapshots of the workspace (`crate::snapshots`): one before the first step whose tools
//! may change files and one after each such step, recorded with the message they follow (the
//! turn's prompt, the step's assistant message); and `session/diff`,
//! which compares them. A snapshot that cannot be taken never fails the run: it is logged, and
//! the diff of that run then shows less.

use std::path::Path;

use crush_protocol::{FileChange, RpcError, SessionDiffParams, SessionDiffResult};
use tracing::warn;

use super::Runtime;
use crate::store::SnapshotKind;

impl Runtime {
    /// Snapshots the workspace for `run_id`, after (or, for `Before`, at the start of) the
    /// message `message_id`.
    pub(super) async fn take_snapshot(
        &self,
        (session_id, workspace_id, root): (&str, &str, &Path),
        run_id: &str,
        message_id: &str,
        kind: SnapshotKind,
    ) {
        let Some(snaps) = &self.snapshots else {
            return;
        };
        let snap = match snaps.snapshot(workspace_id, root, session_id).await {
            Ok(s) => s,
            Err(e) => {
                warn!(run = %run_id, error = %e, "no snapshot of the workspace");
                return;
            }
        };
        if !snap.skipped.is_empty() {
            warn!(run = %run_id, files = ?snap.skipped, "files too large to snapshot were left out");
        }
        let skipped = serde_json::to_string(&snap.skipped).unwrap_or_else(|_| "[]".into());
        if let Err(e) = self
            .store
            .record_snapshot(session_id, run_id, message_id, kind, &snap.tree, &skipped)
            .await
        {
            warn!(run = %run_id, error = %e, "cannot record a snapshot");
        }
    }

    /// `session/diff`: what the run of `messageId` (or the whole session) changed, from its
    /// first snapshot to its last.
    pub async fn diff(&self, p: &SessionDiffParams) -> Result<SessionDiffResult, RpcError> {
        let session = self.store.require_session(&p.session_id).await?;
        let run_id = match &p.message_id {
            None => None,
            Some(id) => match self
                .store
                .require_message_of(&p.session_id, id)
                .await?
                .run_id
            {
                Some(run) => Some(run),
                // A message of no run (a summary written on demand, a fork's copy).
                None => return Ok(SessionDiffResult::default()),
            },
        };
        let (Some(snaps), Some(ws)) = (
            &self.snapshots,
            self.store.get_workspace(&session.workspace_id).await?,
        ) else {
            return Ok(SessionDiffResult::default());
        };
        let Some((first, last)) = self
            .store
            .snapshot_bounds(&p.session_id, run_id.as_deref())
            .await?
        else {
            return Ok(SessionDiffResult::default());
        };
        let root = Path::new(&ws.path);
        let failed = |e: crate::snapshots::GitError| {
            RpcError::internal(format!("cannot read the snapshots: {e}"))
        };
        let changes = snaps
            .changes(&ws.id, root, &first.tree, &last.tree)
            .await
            .map_err(failed)?;
        let diff = snaps
            .diff(&ws.id, root, &first.tree, &last.tree)
            .await
            .map_err(failed)?;
        let skipped = self
            .store
            .snapshot_skipped(&p.session_id, run_id.as_deref())
            .await?;
        Ok(SessionDiffResult {
            diff,
            files: changes
                .into_iter()
                .map(|c| FileChange {
                    status: match c.status {
                        'A' => "added",
                        'D' => "deleted",
                        'T' => "typeChanged",
                        _ => "modified",
                    }
                    .to_owned(),
                    path: c.path,
                })
                .collect(),
            skipped,
        })
    }
}
