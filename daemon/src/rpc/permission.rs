//! The `permission/*` methods: answering a prompt (`permission/respond`), the saved rules
//! (`permission/rules/list`, `permission/rules/remove`) and the audit log (`permission/log`).
//! The rules and the answers are the run runtime's (`runs/permissions.rs`); the log is read
//! from the store.

use crush_protocol::{
    PermissionLogParams, PermissionLogResult, PermissionRequestResult, PermissionRespondParams,
    PermissionRespondResult, PermissionRulesListParams, PermissionRulesListResult,
    PermissionRulesRemoveParams, PermissionRulesRemoveResult, RpcError,
};

use super::RequestCtx;
use crate::runs::Answerer;

/// `permission/log`'s default and largest page.
const LOG_DEFAULT: u32 = 100;
const LOG_MAX: u32 = 1000;

pub(super) fn respond(
    ctx: &RequestCtx,
    p: PermissionRespondParams,
) -> Result<PermissionRespondResult, RpcError> {
    let reply = PermissionRequestResult {
        decision: p.decision,
        scope: p.scope,
        pattern: p.pattern,
    };
    ctx.daemon
        .runtime
        .answer_permission(None, &p.request_id, reply, Answerer::peer(&ctx.peer))?;
    Ok(PermissionRespondResult {})
}

pub(super) async fn rules_list(
    ctx: &RequestCtx,
    p: PermissionRulesListParams,
) -> Result<PermissionRulesListResult, RpcError> {
    // A session's rules include its workspace's: the session names the workspace.
    let workspace_id = match (&p.session_id, p.workspace_id) {
        (Some(s), None) => Some(ctx.daemon.store.require_session(s).await?.workspace_id),
        (_, w) => w,
    };
    let rules = ctx
        .daemon
        .runtime
        .permission_rules(workspace_id.as_deref(), p.session_id.as_deref())
        .await?;
    Ok(PermissionRulesListResult { rules })
}

pub(super) async fn rules_remove(
    ctx: &RequestCtx,
    p: PermissionRulesRemoveParams,
) -> Result<PermissionRulesRemoveResult, RpcError> {
    ctx.daemon.runtime.remove_permission_rule(&p.id).await?;
    Ok(PermissionRulesRemoveResult {})
}

pub(super) async fn log(
    ctx: &RequestCtx,
    p: PermissionLogParams,
) -> Result<PermissionLogResult, RpcError> {
    let limit = p.limit.unwrap_or(LOG_DEFAULT).min(LOG_MAX);
    let entries = ctx
        .daemon
        .store
        .permission_log(p.session_id.as_deref(), p.workspace_id.as_deref(), limit)
        .await?;
    Ok(PermissionLogResult { entries })
}
