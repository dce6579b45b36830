//! `session/revert` and `session/unrevert`: the workspace's files put back as they were before a
//! message's run (from the snapshots, `crate::snapshots`) and the messages from there on hidden
//! from the model — and both taken back while no prompt was sent since.
//!
//! Only the files the runs changed are touched (per run, its first snapshot against its last),
//! and of those, none that changed outside the runs since (someone edited it after the last
//! run): such a file is a conflict, reported with nothing done, unless `force`. The session must
//! be idle; its `reading` lock keeps a prompt sent meanwhile from reading the history until the
//! revert is recorded.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use crush_protocol::{
    ErrorCode, RpcError, SessionEvent, SessionRevertParams, SessionRevertResult,
    SessionUnrevertParams,
};

use super::{Runtime, SessionRt};
use crate::snapshots::{GitError, Snapshots};
use crate::store::{NewRevert, new_id};
use crate::sync::lock;

fn busy() -> RpcError {
    RpcError::new(
        ErrorCode::RunsActive,
        "the session is busy: wait for its runs to end (or cancel them) before undoing",
    )
}

fn git_failed(e: GitError) -> RpcError {
    RpcError::internal(format!("cannot restore the files from the snapshots: {e}"))
}

impl Runtime {
    /// The session's live state, idle and held for a revert (its `reading` lock).
    async fn idle_session(
        &self,
        session_id: &str,
    ) -> Result<(Arc<SessionRt>, tokio::sync::OwnedMutexGuard<()>, String), RpcError> {
        let row = self.store.require_session(session_id).await?;
        let s = self.session(session_id, &row.workspace_id, row.model.as_deref());
        if lock(&s.inner).runs.is_busy() {
            return Err(busy());
        }
        let Ok(guard) = s.reading.clone().try_lock_owned() else {
            return Err(busy());
        };
        if lock(&s.inner).runs.is_busy() {
            return Err(busy());
        }
        Ok((s, guard, row.workspace_id))
    }

    pub async fn revert(&self, p: &SessionRevertParams) -> Result<SessionRevertResult, RpcError> {
        let (s, _guard, workspace_id) = self.idle_session(&p.session_id).await?;
        let message = self
            .store
            .require_message_of(&p.session_id, &p.message_id)
            .await?;
        if message.reverted_by.is_some() {
            return Err(RpcError::invalid_params(format!(
                "invalid params: messageId: message {} of session {} is undone already",
                p.message_id, p.session_id
            )));
        }
        // The whole turn of the message goes, from its prompt.
        let from_seq = match &message.run_id {
            Some(run) => self
                .store
                .first_seq_of_run(&p.session_id, run)
                .await?
                .unwrap_or(message.seq),
            None => message.seq,
        };
        let ws = self.store.get_workspace(&workspace_id).await?;
        let mut files = Vec::new();
        let mut trees = (None, None);
        if let (Some(snaps), Some(ws)) = (&self.snapshots, &ws) {
            let root = Path::new(&ws.path);
            let rows = self.store.snapshots_from(&p.session_id, from_seq).await?;
            if let Some(first) = rows.first() {
                // What each run changed, its first snapshot against its last.
                let mut paths = BTreeSet::new();
                let mut i = 0;
                while i < rows.len() {
                    let run = &rows[i].run_id;
                    let end = rows[i..]
                        .iter()
                        .position(|r| &r.run_id != run)
                        .map_or(rows.len(), |n| i + n);
                    for c in snaps
                        .changes(&ws.id, root, &rows[i].tree, &rows[end - 1].tree)
                        .await
                        .map_err(git_failed)?
                    {
                        paths.insert(c.path);
                    }
                    i = end;
                }
                let last = self
                    .store
                    .last_snapshot(&p.session_id)
                    .await?
                    .map_or_else(|| first.tree.clone(), |r| r.tree);
                let paths: Vec<String> = paths.into_iter().collect();
                let now = self
                    .snapshot_now(snaps, &ws.id, root, &p.session_id)
                    .await?;
                let conflicts = changed_among(snaps, &ws.id, root, &last, &now, &paths).await?;
                if !conflicts.is_empty() && !p.force {
                    return Ok(SessionRevertResult {
                        done: false,
                        conflicts,
                        ..SessionRevertResult::default()
                    });
                }
                files = snaps
                    .restore(&ws.id, root, &first.tree, &paths)
                    .await
                    .map_err(git_failed)?;
                trees = (Some(now), Some(first.tree.clone()));
            }
        }
        let id = new_id();
        let paths = serde_json::to_string(&files).unwrap_or_else(|_| "[]".into());
        let hidden = self
            .store
            .record_revert(&NewRevert {
                id: &id,
                session_id: &p.session_id,
                message_id: &p.message_id,
                from_seq,
                undo_tree: trees.0.as_deref(),
                target_tree: trees.1.as_deref(),
                paths: &paths,
            })
            .await?;
        let messages = u32::try_from(hidden).unwrap_or(u32::MAX);
        lock(&s.inner).events.publish(
            None,
            SessionEvent::Reverted {
                revert_id: id.clone(),
                message_id: p.message_id.clone(),
                files: files.clone(),
                messages,
            },
        );
        Ok(SessionRevertResult {
            done: true,
            revert_id: Some(id),
            files,
            conflicts: Vec::new(),
            messages,
        })
    }

    pub async fn unrevert(
        &self,
        p: &SessionUnrevertParams,
    ) -> Result<SessionRevertResult, RpcError> {
        let (s, _guard, workspace_id) = self.idle_session(&p.session_id).await?;
        let Some(r) = self.store.undoable_revert(&p.session_id).await? else {
            return Ok(SessionRevertResult::default());
        };
        let paths: Vec<String> = serde_json::from_str(&r.paths).unwrap_or_default();
        let ws = self.store.get_workspace(&workspace_id).await?;
        let mut files = Vec::new();
        if let (Some(snaps), Some(ws), Some(undo), Some(target)) =
            (&self.snapshots, &ws, &r.undo_tree, &r.target_tree)
            && !paths.is_empty()
        {
            let root = Path::new(&ws.path);
            let now = self
                .snapshot_now(snaps, &ws.id, root, &p.session_id)
                .await?;
            let conflicts = changed_among(snaps, &ws.id, root, target, &now, &paths).await?;
            if !conflicts.is_empty() && !p.force {
                return Ok(SessionRevertResult {
                    done: false,
                    revert_id: Some(r.id),
                    conflicts,
                    ..SessionRevertResult::default()
                });
            }
            files = snaps
                .restore(&ws.id, root, undo, &paths)
                .await
                .map_err(git_failed)?;
        }
        let shown = self.store.undo_revert(&r.id).await?;
        let messages = u32::try_from(shown).unwrap_or(u32::MAX);
        lock(&s.inner).events.publish(
            None,
            SessionEvent::Unreverted {
                revert_id: r.id.clone(),
                files: files.clone(),
                messages,
            },
        );
        Ok(SessionRevertResult {
            done: true,
            revert_id: Some(r.id),
            files,
            conflicts: Vec::new(),
            messages,
        })
    }

    /// A snapshot of the workspace as it is now (kept with the session's).
    async fn snapshot_now(
        &self,
        snaps: &Snapshots,
        workspace_id: &str,
        root: &Path,
        session_id: &str,
    ) -> Result<String, RpcError> {
        snaps
            .snapshot(workspace_id, root, session_id)
            .await
            .map(|s| s.tree)
            .map_err(|e| RpcError::internal(format!("cannot snapshot the workspace first: {e}")))
    }
}

/// Which of `paths` differ between snapshots `from` and `to`.
async fn changed_among(
    snaps: &Snapshots,
    workspace_id: &str,
    root: &Path,
    from: &str,
    to: &str,
    paths: &[String],
) -> Result<Vec<String>, RpcError> {
    let changed: BTreeSet<String> = snaps
        .changes(workspace_id, root, from, to)
        .await
        .map_err(git_failed)?
        .into_iter()
        .map(|c| c.path)
        .collect();
    Ok(paths
        .iter()
        .filter(|p| changed.contains(*p))
        .cloned()
        .collect())
}
