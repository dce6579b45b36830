//! Request handlers: one function per method, reached through an exhaustive match on
//! `ClientRequest`, so adding a method to the protocol crate fails to compile until it is handled
//! here.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crush_protocol::{
    ClientRequest, DaemonShutdownResult, DaemonStatusResult, DebugSleepResult, ErrorCode,
    InitializeParams, InitializeResult, PROTOCOL_VERSION, RpcError, ServerCapabilities, ServerInfo,
    methods::parse_params,
};

use crate::peer::{ClientIdentity, Peer};
use crate::server::Daemon;

/// What a handler may use: the daemon and the connection that asked.
#[derive(Clone)]
pub struct RequestCtx {
    pub daemon: Arc<Daemon>,
    pub peer: Arc<Peer>,
}

fn ok<T: Serialize>(value: T) -> Result<Value, RpcError> {
    serde_json::to_value(value)
        .map_err(|e| RpcError::internal(format!("cannot encode the result: {e}")))
}

/// `initialize`, handled inline by the connection so its state change is ordered before any
/// later request.
pub fn initialize(
    daemon: &Daemon,
    peer: &Peer,
    params: Option<&RawValue>,
) -> Result<Value, RpcError> {
    let params: InitializeParams = parse_params(params)?;
    let client_id = params
        .client_id
        .clone()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| format!("conn-{}", peer.id));
    let info = params.client_info.clone().unwrap_or_default();
    tracing::info!(
        client = %info.name,
        version = info.version.as_deref().unwrap_or(""),
        client_id = %client_id,
        protocol = params.protocol_version.unwrap_or(PROTOCOL_VERSION),
        "client initialized"
    );
    peer.set_identity(ClientIdentity {
        name: Some(info.name).filter(|n| !n.is_empty()),
        version: info.version,
        client_id: client_id.clone(),
    });
    ok(InitializeResult {
        server_info: ServerInfo {
            name: "crushd".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        },
        protocol_version: PROTOCOL_VERSION,
        capabilities: ServerCapabilities {
            max_message_size: daemon.config.max_message_size as u64,
            debug_methods: daemon.config.debug_methods,
        },
        pid: std::process::id(),
        client_id,
    })
}

/// Runs one request of an initialized connection.
pub async fn handle(ctx: RequestCtx, request: ClientRequest) -> Result<Value, RpcError> {
    let daemon = &ctx.daemon;
    match request {
        // Both are answered by the connection itself before dispatch reaches here.
        ClientRequest::Initialize(_) | ClientRequest::Shutdown(_) => Err(
            RpcError::invalid_request("initialize and shutdown are handled by the connection"),
        ),
        ClientRequest::DaemonStatus(_) => ok(DaemonStatusResult {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol_version: PROTOCOL_VERSION,
            uptime_ms: daemon.uptime().as_millis() as u64,
            connections: daemon.connection_count() as u64,
            socket: daemon.config.socket.display().to_string(),
            log_dir: daemon.config.state_dir.display().to_string(),
            idle_timeout_ms: daemon
                .config
                .idle_timeout
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        }),
        ClientRequest::DaemonShutdown(p) => {
            tracing::info!(force = p.force, "shutdown requested by a client");
            daemon.begin_shutdown("request");
            ok(DaemonShutdownResult {
                shutting_down: true,
            })
        }
        ClientRequest::DebugSleep(p) => {
            require_debug(daemon, "debug/sleep")?;
            tokio::time::sleep(Duration::from_millis(p.ms)).await;
            ok(DebugSleepResult { slept_ms: p.ms })
        }
        ClientRequest::DebugClientRequest(p) => {
            require_debug(daemon, "debug/clientRequest")?;
            let timeout = Duration::from_millis(p.timeout_ms.unwrap_or(10_000));
            let raw = ctx.peer.request(&p.method, &p.params, timeout).await?;
            serde_json::from_str(raw.get())
                .map_err(|e| RpcError::internal(format!("client answer is not JSON: {e}")))
        }
    }
}

fn require_debug(daemon: &Daemon, method: &str) -> Result<(), RpcError> {
    if daemon.config.debug_methods {
        Ok(())
    } else {
        Err(RpcError::new(
            ErrorCode::MethodNotFound,
            format!("unknown method {method:?} (diagnostic methods need `crushd --debug-methods`)"),
        ))
    }
}
