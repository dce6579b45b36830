//! `mcp/list`, `mcp/restart` and `session/setMcpServers`: what the MCP pool (`crate::mcp`)
//! answers.

use crush_protocol::{
    ErrorCode, McpListResult, McpRestartParams, McpServerInfo, NoParams, RpcError,
    SessionSetMcpServersParams,
};

use super::RequestCtx;
use crate::mcp::McpError;

pub(super) fn list(ctx: &RequestCtx, _: NoParams) -> Result<McpListResult, RpcError> {
    Ok(McpListResult {
        servers: ctx.daemon.runtime.mcp().list(),
    })
}

pub(super) fn restart(ctx: &RequestCtx, p: McpRestartParams) -> Result<McpServerInfo, RpcError> {
    Ok(ctx.daemon.runtime.mcp().restart(
        &p.name,
        p.workspace_id.as_deref(),
        p.session_id.as_deref(),
    )?)
}

/// A session's own servers (an ACP editor's); stdio servers run in the session's workspace.
pub(super) async fn set_session_servers(
    ctx: &RequestCtx,
    p: SessionSetMcpServersParams,
) -> Result<McpListResult, RpcError> {
    let store = &ctx.daemon.store;
    let session = store.require_session(&p.session_id).await?;
    let cwd = store
        .get_workspace(&session.workspace_id)
        .await?
        .map(|w| std::path::PathBuf::from(w.path));
    let servers = ctx
        .daemon
        .runtime
        .mcp()
        .set_session(&p.session_id, &p.servers, cwd)
        .map_err(|(i, field, message)| {
            RpcError::invalid_params(format!("invalid params: servers[{i}].{field}: {message}"))
        })?;
    Ok(McpListResult { servers })
}

/// The pool's errors as the client sees them.
impl From<McpError> for RpcError {
    fn from(e: McpError) -> Self {
        let code = match e {
            McpError::NotFound(_) => ErrorCode::McpServerNotFound,
            McpError::Disabled(_) | McpError::Unapproved(_) => ErrorCode::McpServerDisabled,
        };
        RpcError::new(code, e.to_string())
    }
}
