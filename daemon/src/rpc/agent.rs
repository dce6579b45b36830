//! The methods the run runtime answers: `agent/send`, `agent/cancel`, `agent/status`,
//! `session/subscribe`, `session/unsubscribe` and `run/get`. Each is a
//! call into `runs::Runtime`; what is here is only the translation to the method's result.

use crush_protocol::{
    AgentCancelParams, AgentCancelResult, AgentSendParams, AgentSendResult, AgentStatusResult,
    RpcError, RunInfo, RunRef, SessionRef, SessionSubscribeParams, SessionSubscribeResult,
    SessionUnsubscribeResult,
};

use super::RequestCtx;
use crate::store::{RunRow, StoreError};

pub(super) async fn send(
    ctx: &RequestCtx,
    p: AgentSendParams,
) -> Result<AgentSendResult, RpcError> {
    ctx.daemon.runtime.send(Some(ctx.peer.clone()), p).await
}

pub(super) async fn cancel(
    ctx: &RequestCtx,
    p: AgentCancelParams,
) -> Result<AgentCancelResult, RpcError> {
    ctx.daemon
        .runtime
        .cancel(&p.session_id, p.run_id.as_deref())
        .await
}

pub(super) async fn status(ctx: &RequestCtx, p: SessionRef) -> Result<AgentStatusResult, RpcError> {
    ctx.daemon.runtime.status(&p.session_id).await
}

pub(super) async fn subscribe(
    ctx: &RequestCtx,
    p: SessionSubscribeParams,
) -> Result<SessionSubscribeResult, RpcError> {
    ctx.daemon.runtime.subscribe(&ctx.peer, &p).await
}

pub(super) async fn unsubscribe(
    ctx: &RequestCtx,
    p: SessionRef,
) -> Result<SessionUnsubscribeResult, RpcError> {
    Ok(SessionUnsubscribeResult {
        unsubscribed: ctx
            .daemon
            .runtime
            .unsubscribe(&ctx.peer, &p.session_id)
            .await?,
    })
}

/// A run from memory while it is live, else as persisted.
pub(super) async fn run_get(ctx: &RequestCtx, p: RunRef) -> Result<RunInfo, RpcError> {
    let daemon = &ctx.daemon;
    if let Some(live) = daemon.runtime.live_run(&p.run_id) {
        return Ok(live);
    }
    Ok(run_info(daemon.store.require_run(&p.run_id).await?)?)
}

fn run_info(r: RunRow) -> Result<RunInfo, StoreError> {
    Ok(RunInfo {
        state: r.run_state()?,
        usage: r.usage(),
        run_id: r.run_id,
        session_id: r.session_id,
        prompt: r.prompt,
        error: r.error,
        user_message_id: r.user_message_id,
        assistant_message_id: r.assistant_message_id,
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
        stop_reason: r.stop_reason.as_deref().and_then(|n| n.parse().ok()),
        folded_into: r.folded_into,
    })
}
