//! The session methods that read or change its row: `session/create`, `list`, `get`, `rename`,
//! `delete`, `messages`, `setModel`, `setYolo`, `setSandbox`, `fork`; `session/compact`, which writes a
//! summary, and `session/diff`, which reads the snapshots.

use crush_protocol::{
    DEFAULT_MESSAGE_PAGE, ErrorCode, MAX_MESSAGE_PAGE, MessageInfo, RpcError, SandboxStatus,
    SessionCompactResult, SessionCreateParams, SessionDeleteResult, SessionDiffParams,
    SessionDiffResult, SessionForkParams, SessionInfo, SessionListParams, SessionListResult,
    SessionMessagesParams, SessionMessagesResult, SessionRef, SessionRenameParams,
    SessionSetModelParams, SessionSetSandboxParams, SessionSetYoloParams, SessionSetYoloResult,
};
use serde_json::Value;

use super::RequestCtx;
use crate::store::{MessageRow, SessionRow, StoreError};

/// The title of a session created without one, until its first prompt titles it.
const DEFAULT_TITLE: &str = "New session";

pub(super) async fn create(
    ctx: &RequestCtx,
    p: SessionCreateParams,
) -> Result<SessionInfo, RpcError> {
    let daemon = &ctx.daemon;
    daemon.store.require_workspace(&p.workspace_id).await?;
    let title = p.title.as_deref().map(str::trim).filter(|t| !t.is_empty());
    let model = p.model.as_deref().map(str::trim).filter(|m| !m.is_empty());
    if let Some(m) = model {
        daemon.runtime.models().check(m)?;
    }
    let row = match title {
        Some(title) => {
            daemon
                .store
                .create_session(&p.workspace_id, title, model)
                .await?
        }
        // Its first prompt will title it (runs/title.rs).
        None => {
            daemon
                .store
                .create_untitled_session(&p.workspace_id, DEFAULT_TITLE, model)
                .await?
        }
    };
    if p.yolo {
        daemon.runtime.set_yolo(&row.id, true);
    }
    Ok(session_info(row))
}

pub(super) async fn list(
    ctx: &RequestCtx,
    p: SessionListParams,
) -> Result<SessionListResult, RpcError> {
    let store = &ctx.daemon.store;
    store.require_workspace(&p.workspace_id).await?;
    let rows = store.list_sessions(&p.workspace_id).await?;
    Ok(SessionListResult {
        sessions: rows.into_iter().map(session_info).collect(),
    })
}

pub(super) async fn compact(
    ctx: &RequestCtx,
    p: SessionRef,
) -> Result<SessionCompactResult, RpcError> {
    ctx.daemon.runtime.compact(&p.session_id).await
}

pub(super) async fn fork(ctx: &RequestCtx, p: SessionForkParams) -> Result<SessionInfo, RpcError> {
    let store = &ctx.daemon.store;
    let original = store.require_session(&p.session_id).await?;
    let through = match &p.message_id {
        None => None,
        Some(id) => Some(store.require_message_of(&p.session_id, id).await?.seq),
    };
    let title = format!("{} (fork)", original.title);
    let Some(row) = store.fork_session(&p.session_id, through, &title).await? else {
        // Deleted meanwhile.
        return Err(StoreError::SessionNotFound(p.session_id).into());
    };
    ctx.daemon
        .runtime
        .forked(&p.session_id, &row.id, p.message_id.as_deref());
    Ok(session_info(row))
}

pub(super) async fn diff(
    ctx: &RequestCtx,
    p: SessionDiffParams,
) -> Result<SessionDiffResult, RpcError> {
    ctx.daemon.runtime.diff(&p).await
}

pub(super) async fn get(ctx: &RequestCtx, p: SessionRef) -> Result<SessionInfo, RpcError> {
    Ok(session_info(
        ctx.daemon.store.require_session(&p.session_id).await?,
    ))
}

pub(super) async fn rename(
    ctx: &RequestCtx,
    p: SessionRenameParams,
) -> Result<SessionInfo, RpcError> {
    let title = p.title.trim();
    if title.is_empty() {
        return Err(RpcError::invalid_params(
            "invalid params: title: must not be empty",
        ));
    }
    let row = ctx
        .daemon
        .store
        .rename_session(&p.session_id, title)
        .await?
        .ok_or(StoreError::SessionNotFound(p.session_id))?;
    ctx.daemon
        .runtime
        .session_updated(&row.id, &row.title, row.model.as_deref());
    Ok(session_info(row))
}

pub(super) async fn delete(
    ctx: &RequestCtx,
    p: SessionRef,
) -> Result<SessionDeleteResult, RpcError> {
    let daemon = &ctx.daemon;
    if daemon.runtime.session_busy(&p.session_id) {
        return Err(RpcError::new(
            ErrorCode::RunsActive,
            "the session has an active or queued run; cancel it first (agent/cancel)",
        ));
    }
    let workspace = match daemon.store.get_session(&p.session_id).await? {
        Some(s) => daemon.store.get_workspace(&s.workspace_id).await?,
        None => None,
    };
    if !daemon.store.delete_session(&p.session_id).await? {
        return Err(StoreError::SessionNotFound(p.session_id).into());
    }
    daemon.runtime.forget_session(&p.session_id);
    // Its snapshots go with it (done here, not in the background: deleting is rare, and the
    // space is free when the answer comes).
    if let (Some(snaps), Some(w)) = (daemon.runtime.snapshots(), workspace)
        && let Err(e) = snaps
            .forget_session(&w.id, std::path::Path::new(&w.path), &p.session_id)
            .await
    {
        tracing::warn!(session = %p.session_id, error = %e, "cannot drop a deleted session's snapshots");
    }
    Ok(SessionDeleteResult { deleted: true })
}

pub(super) async fn messages(
    ctx: &RequestCtx,
    p: SessionMessagesParams,
) -> Result<SessionMessagesResult, RpcError> {
    let store = &ctx.daemon.store;
    store.require_session(&p.session_id).await?;
    let limit = p.limit.unwrap_or(DEFAULT_MESSAGE_PAGE);
    if !(1..=MAX_MESSAGE_PAGE).contains(&limit) {
        return Err(RpcError::invalid_params(format!(
            "invalid params: limit: must be between 1 and {MAX_MESSAGE_PAGE}"
        )));
    }
    let page = store
        .list_messages(&p.session_id, p.before, i64::from(limit))
        .await?;
    let next_before = if page.has_more {
        page.messages.first().map(|m| m.seq)
    } else {
        None
    };
    Ok(SessionMessagesResult {
        messages: page
            .messages
            .into_iter()
            .map(message_info)
            .collect::<Result<_, _>>()?,
        has_more: page.has_more,
        next_before,
    })
}

pub(super) async fn set_model(
    ctx: &RequestCtx,
    p: SessionSetModelParams,
) -> Result<SessionInfo, RpcError> {
    let daemon = &ctx.daemon;
    let model = p.model.as_deref().map(str::trim).filter(|m| !m.is_empty());
    if let Some(m) = model {
        daemon.runtime.models().check(m)?;
    }
    let row = daemon
        .store
        .set_session_model(&p.session_id, model)
        .await?
        .ok_or_else(|| StoreError::SessionNotFound(p.session_id.clone()))?;
    daemon.runtime.set_session_model(&row.id, model);
    daemon
        .runtime
        .session_updated(&row.id, &row.title, row.model.as_deref());
    Ok(session_info(row))
}

pub(super) async fn set_yolo(
    ctx: &RequestCtx,
    p: SessionSetYoloParams,
) -> Result<SessionSetYoloResult, RpcError> {
    let daemon = &ctx.daemon;
    daemon.store.require_session(&p.session_id).await?;
    daemon.runtime.set_yolo(&p.session_id, p.yolo);
    Ok(SessionSetYoloResult { yolo: p.yolo })
}

/// `session/setSandbox`: the session's own sandbox mode and network choice, from its next
/// `bash` call on.
pub(super) async fn set_sandbox(
    ctx: &RequestCtx,
    p: SessionSetSandboxParams,
) -> Result<SandboxStatus, RpcError> {
    let daemon = &ctx.daemon;
    daemon
        .runtime
        .set_session_sandbox(&p.session_id, p.mode, p.network)
        .await
}

fn session_info(r: SessionRow) -> SessionInfo {
    SessionInfo {
        usage: Some(r.usage()),
        session_id: r.id,
        workspace_id: r.workspace_id,
        title: r.title,
        model: r.model,
        created_at: r.created_at,
        updated_at: r.updated_at,
        message_count: r.message_count,
        prompt_tokens: r.prompt_tokens,
        completion_tokens: r.completion_tokens,
        cost: r.cost,
    }
}

fn message_info(r: MessageRow) -> Result<MessageInfo, StoreError> {
    // Parts are written only by the daemon as JSON; an unreadable value is shown, not hidden.
    let parts = r
        .part_list()
        .unwrap_or_else(|_| vec![crush_protocol::Part::Other(Value::String(r.parts.clone()))]);
    let finish_reason = r.finish()?;
    Ok(MessageInfo {
        message_id: r.id,
        session_id: r.session_id,
        seq: r.seq,
        run_id: r.run_id,
        role: r.role,
        parts,
        model: r.model,
        provider: r.provider,
        finish_reason,
        error: r.error,
        created_at: r.created_at,
        updated_at: r.updated_at,
        finished_at: r.finished_at,
        reverted: r.reverted_by.is_some(),
    })
}
