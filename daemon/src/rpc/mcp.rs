//! `mcp/list` and `mcp/restart`: what the MCP pool (`crate::mcp`) answers.

use crush_protocol::{
    ErrorCode, McpListResult, McpRestartParams, McpServerInfo, NoParams, RpcError,
};

use super::RequestCtx;
use crate::mcp::McpError;

pub(super) fn list(ctx: &RequestCtx, _: NoParams) -> Result<McpListResult, RpcError> {
    Ok(McpListResult {
        servers: ctx.daemon.runtime.mcp().list(),
    })
}

pub(super) fn restart(ctx: &RequestCtx, p: McpRestartParams) -> Result<McpServerInfo, RpcError> {
    Ok(ctx
        .daemon
        .runtime
        .mcp()
        .restart(&p.name, p.workspace_id.as_deref())?)
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
