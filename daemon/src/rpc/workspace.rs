//! `workspace/open`, `workspace/list`, `workspace/close`.

use crush_protocol::{
    NoParams, RpcError, WorkspaceCloseParams, WorkspaceCloseResult, WorkspaceInfo,
    WorkspaceListResult, WorkspaceOpenParams,
};

use super::RequestCtx;
use crate::shared::Daemon;
use crate::store::WorkspaceRow;

pub(super) async fn open(
    ctx: &RequestCtx,
    p: WorkspaceOpenParams,
) -> Result<WorkspaceInfo, RpcError> {
    let daemon = &ctx.daemon;
    let path = canonical_dir(&p.path).await?;
    let row = daemon.store.open_workspace(&path).await?;
    // Claimed first, so the idle reaper cannot unload it between the two.
    daemon.clients.claim(&ctx.peer, &row.id);
    daemon.runtime.reopen_workspace(&row.id);
    Ok(workspace_info(daemon, row))
}

pub(super) async fn list(ctx: &RequestCtx, _: NoParams) -> Result<WorkspaceListResult, RpcError> {
    let daemon = &ctx.daemon;
    let rows = daemon.store.list_workspaces().await?;
    Ok(WorkspaceListResult {
        workspaces: rows
            .into_iter()
            .map(|r| workspace_info(daemon, r))
            .collect(),
    })
}

pub(super) async fn close(
    ctx: &RequestCtx,
    p: WorkspaceCloseParams,
) -> Result<WorkspaceCloseResult, RpcError> {
    let daemon = &ctx.daemon;
    daemon.store.require_workspace(&p.workspace_id).await?;
    let (released, remaining) = daemon.clients.release(&ctx.peer, &p.workspace_id);
    let cancelled_runs = if p.force {
        daemon.runtime.close_workspace(&p.workspace_id).await
    } else {
        Vec::new()
    };
    Ok(WorkspaceCloseResult {
        released,
        remaining_claims: remaining as u32,
        cancelled_runs,
    })
}

/// Resolves a client-given path to a canonical directory, or says precisely why not.
async fn canonical_dir(path: &str) -> Result<String, RpcError> {
    let p = std::path::Path::new(path);
    if path.trim().is_empty() || !p.is_absolute() {
        return Err(RpcError::invalid_params(format!(
            "invalid params: path: {path:?} is not an absolute path"
        )));
    }
    let canonical = tokio::fs::canonicalize(p).await.map_err(|e| {
        RpcError::invalid_params(format!("invalid params: path: cannot open {path:?}: {e}"))
    })?;
    let meta = tokio::fs::metadata(&canonical).await.map_err(|e| {
        RpcError::invalid_params(format!("invalid params: path: cannot open {path:?}: {e}"))
    })?;
    if !meta.is_dir() {
        return Err(RpcError::invalid_params(format!(
            "invalid params: path: {path:?} is not a directory"
        )));
    }
    canonical.to_str().map(str::to_owned).ok_or_else(|| {
        RpcError::invalid_params(format!("invalid params: path: {path:?} is not valid UTF-8"))
    })
}

/// A workspace row with what only the live daemon knows: loaded, claims, busy sessions.
fn workspace_info(daemon: &Daemon, r: WorkspaceRow) -> WorkspaceInfo {
    WorkspaceInfo {
        loaded: daemon.runtime.is_loaded(&r.id),
        claims: daemon.clients.claims_on(&r.id),
        busy_sessions: daemon.runtime.busy_sessions(&r.id),
        workspace_id: r.id,
        path: r.path,
        created_at: r.created_at,
        last_opened_at: r.last_opened_at,
    }
}
