//! The RPC layer: one function per method, typed by the method's marker type in
//! `crush_protocol::request`, reached through an exhaustive match on `ClientRequest` — adding a
//! method to the protocol's table fails to compile until it is handled here.
//!
//! Each handler returns `Result<R::Result, RpcError>` for its method `R`, and [`reply`] checks
//! that at compile time (rust-analyzer's `.on::<R>(handler)`); the result becomes JSON once,
//! there. Errors of the layers below become protocol errors by `From` (`error.rs`): handlers use
//! `?` on store calls. Handlers are grouped by area: `daemon` (the daemon's own methods and the
//! diagnostics), `workspace`, `session`, `agent` (what the run runtime answers).

mod agent;
mod daemon;
mod error;
mod mcp;
mod permission;
mod session;
mod workspace;

use std::sync::Arc;

use serde_json::Value;
use serde_json::value::RawValue;

use crush_protocol::methods::parse_params;
use crush_protocol::{ClientRequest, Request, RpcError, request as r};

use crate::peer::Peer;
use crate::shared::Daemon;

/// The dispatch `match`, one arm per method written `Name(params) => handler`. The variant of
/// `ClientRequest` and the marker type in `crush_protocol::request` are the same name in the
/// protocol's table, so each arm replies under its own method's result type and cannot pick
/// another's; the `match` stays exhaustive, so a method the table gains fails to compile here.
macro_rules! on_method {
    ($request:expr; $( $name:ident($p:pat) => $handler:expr, )*) => {
        match $request {
            // Both are answered by the connection itself before dispatch reaches here.
            ClientRequest::Initialize(_) | ClientRequest::Shutdown(_) => Err(
                RpcError::invalid_request("initialize and shutdown are handled by the connection"),
            ),
            $( ClientRequest::$name($p) => reply::<r::$name>($handler), )*
        }
    };
}

/// What a handler may use: the daemon and the connection that asked.
#[derive(Clone)]
pub(crate) struct RequestCtx {
    pub daemon: Arc<Daemon>,
    pub peer: Arc<Peer>,
}

/// `initialize`, awaited inline by the connection so that its state change (identity, restored
/// claims and subscriptions) is in place before any later request of the connection runs.
pub(crate) async fn initialize(
    ctx: &RequestCtx,
    params: Option<&RawValue>,
) -> Result<Value, RpcError> {
    let params = parse_params(params)?;
    reply::<r::Initialize>(daemon::initialize(ctx, params).await)
}

/// Runs one request of an initialized connection.
pub(crate) async fn handle(ctx: RequestCtx, request: ClientRequest) -> Result<Value, RpcError> {
    let c = &ctx;
    on_method! { request;
        DaemonStatus(p) => daemon::status(c, p),
        DaemonShutdown(p) => daemon::shutdown(c, p),
        ConfigGet(p) => daemon::config_get(c, p),
        ModelList(p) => daemon::model_list(c, p),
        DebugSleep(p) => daemon::debug_sleep(c, p).await,
        DebugStats(p) => daemon::debug_stats(c, p),
        DebugClientRequest(p) => daemon::debug_client_request(c, p).await,
        WorkspaceOpen(p) => workspace::open(c, p).await,
        WorkspaceList(p) => workspace::list(c, p).await,
        WorkspaceClose(p) => workspace::close(c, p).await,
        SessionCreate(p) => session::create(c, p).await,
        SessionList(p) => session::list(c, p).await,
        SessionGet(p) => session::get(c, p).await,
        SessionRename(p) => session::rename(c, p).await,
        SessionDelete(p) => session::delete(c, p).await,
        SessionMessages(p) => session::messages(c, p).await,
        SessionCompact(p) => session::compact(c, p).await,
        SessionFork(p) => session::fork(c, p).await,
        SessionDiff(p) => session::diff(c, p).await,
        SessionRevert(p) => c.daemon.runtime.revert(&p).await,
        SessionUnrevert(p) => c.daemon.runtime.unrevert(&p).await,
        SessionSetModel(p) => session::set_model(c, p).await,
        SessionSetYolo(p) => session::set_yolo(c, p).await,
        SessionSetSandbox(p) => session::set_sandbox(c, p).await,
        AgentSend(p) => agent::send(c, p).await,
        AgentCancel(p) => agent::cancel(c, p).await,
        AgentStatus(p) => agent::status(c, p).await,
        SessionSubscribe(p) => agent::subscribe(c, p).await,
        SessionUnsubscribe(p) => agent::unsubscribe(c, p).await,
        RunGet(p) => agent::run_get(c, p).await,
        PermissionRespond(p) => permission::respond(c, p),
        PermissionRulesList(p) => permission::rules_list(c, p).await,
        PermissionRulesRemove(p) => permission::rules_remove(c, p).await,
        PermissionLog(p) => permission::log(c, p).await,
        McpList(p) => mcp::list(c, p),
        McpRestart(p) => mcp::restart(c, p),
        SessionSetMcpServers(p) => mcp::set_session_servers(c, p).await,
    }
}

/// The one place a result becomes JSON. Through a `Value`, as it always has: without serde_json's
/// `preserve_order` a `Value` writes object keys sorted, and clients have seen results in that
/// order since the first version, so serializing the struct directly (field order) would change
/// the bytes on the wire.
fn reply<R: Request>(result: Result<R::Result, RpcError>) -> Result<Value, RpcError> {
    serde_json::to_value(result?)
        .map_err(|e| RpcError::internal(format!("cannot encode the result: {e}")))
}
