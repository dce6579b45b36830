//! The daemon's own methods: `initialize`, `daemon/status`, `daemon/shutdown`, `config/get`,
//! `model/list`, and the diagnostics behind `crushd --debug-methods`.

use std::time::Duration;

use crush_protocol::{
    ConfigGetResult, DaemonShutdownParams, DaemonShutdownResult, DaemonStatusResult,
    DebugClientRequestParams, DebugSleepParams, DebugSleepResult, DebugStatsResult, ErrorCode,
    InitializeParams, InitializeResult, ModelListResult, NoParams, PROTOCOL_VERSION,
    RestoredSubscription, RpcError, ServerCapabilities, ServerInfo, SessionSubscribeParams,
};
use serde_json::Value;

use super::RequestCtx;
use crate::peer::ClientIdentity;
use crate::shared::Daemon;

/// `initialize`: who the client is, and what it left behind on a connection that dropped within
/// its grace period (claims, and subscriptions restored here unless it keeps its own cursors).
pub(super) async fn initialize(
    ctx: &RequestCtx,
    params: InitializeParams,
) -> Result<InitializeResult, RpcError> {
    let RequestCtx { daemon, peer } = ctx;
    let explicit = params.client_id.clone().filter(|s| !s.trim().is_empty());
    if explicit
        .as_deref()
        .is_some_and(|id| id.starts_with("conn-"))
    {
        return Err(RpcError::invalid_params(
            "invalid params: clientId: ids starting with \"conn-\" are reserved for clients that give none",
        ));
    }
    let explicit_id = explicit.is_some();
    let client_id = explicit.unwrap_or_else(|| format!("conn-{}", peer.id));
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
        explicit_id,
    });
    let resumed = daemon.clients.attach(peer);
    if explicit_id {
        daemon.runtime.rebind_sender(&client_id, peer);
    }
    let mut restored = Vec::new();
    if let Some(r) = &resumed {
        tracing::info!(
            client = %client_id,
            claims = r.claims,
            subscriptions = r.subscriptions.len(),
            "client came back within its grace period"
        );
        if params.restore_subscriptions.unwrap_or(true) {
            for kept in &r.subscriptions {
                let sub = SessionSubscribeParams {
                    session_id: kept.session_id.clone(),
                    after_seq: kept.cursor,
                    epoch: None,
                };
                match daemon.runtime.subscribe(peer, &sub).await {
                    Ok(res) => restored.push(RestoredSubscription {
                        session_id: kept.session_id.clone(),
                        after_seq: kept.cursor.unwrap_or(res.seq),
                        resync: res.resync,
                    }),
                    // A session deleted meanwhile is simply not restored.
                    Err(e) if e.code == ErrorCode::SessionNotFound.code() => {}
                    Err(e) => tracing::warn!(
                        session = %kept.session_id,
                        error = %e.message,
                        "cannot restore a subscription; the client must subscribe again"
                    ),
                }
            }
        }
    }
    Ok(InitializeResult {
        server_info: ServerInfo {
            name: "crushd".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        },
        protocol_version: PROTOCOL_VERSION,
        capabilities: ServerCapabilities {
            max_message_size: daemon.config.daemon.max_message_size as u64,
            debug_methods: daemon.config.debug_methods,
        },
        pid: std::process::id(),
        client_id,
        epoch: daemon.runtime.epoch().to_owned(),
        resumed: resumed.is_some(),
        restored,
    })
}

pub(super) fn status(ctx: &RequestCtx, _: NoParams) -> Result<DaemonStatusResult, RpcError> {
    let daemon = &ctx.daemon;
    Ok(DaemonStatusResult {
        snapshot_bytes: daemon.runtime.snapshots().map(|s| s.disk_usage()),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        protocol_version: PROTOCOL_VERSION,
        uptime_ms: daemon.uptime().as_millis() as u64,
        connections: daemon.connection_count() as u64,
        socket: daemon.config.socket.display().to_string(),
        log_dir: daemon.config.state_dir.display().to_string(),
        idle_timeout_ms: daemon
            .config
            .daemon
            .idle_timeout
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        sandbox: Some(daemon.runtime.sandbox_status()),
    })
}

pub(super) fn shutdown(
    ctx: &RequestCtx,
    p: DaemonShutdownParams,
) -> Result<DaemonShutdownResult, RpcError> {
    let daemon = &ctx.daemon;
    let live = daemon.runtime.live_runs();
    if live > 0 && !p.force {
        return Err(RpcError::new(
            ErrorCode::RunsActive,
            format!(
                "{live} run(s) are active or queued; cancel them, or pass force: true to \
                 end them as cancelled"
            ),
        ));
    }
    tracing::info!(
        force = p.force,
        runs = live,
        "shutdown requested by a client"
    );
    daemon.begin_shutdown("request");
    Ok(DaemonShutdownResult {
        shutting_down: true,
    })
}

pub(super) fn config_get(ctx: &RequestCtx, _: NoParams) -> Result<ConfigGetResult, RpcError> {
    Ok(ConfigGetResult {
        config: ctx.daemon.config.redacted(),
    })
}

pub(super) fn model_list(ctx: &RequestCtx, _: NoParams) -> Result<ModelListResult, RpcError> {
    let models = ctx.daemon.runtime.models();
    Ok(ModelListResult {
        default: models.default_name().map(str::to_owned),
        models: models.list(),
        sandbox: Some(ctx.daemon.runtime.sandbox_status()),
    })
}

pub(super) async fn debug_sleep(
    ctx: &RequestCtx,
    p: DebugSleepParams,
) -> Result<DebugSleepResult, RpcError> {
    require_debug(&ctx.daemon, "debug/sleep")?;
    tokio::time::sleep(Duration::from_millis(p.ms)).await;
    Ok(DebugSleepResult { slept_ms: p.ms })
}

pub(super) fn debug_stats(ctx: &RequestCtx, _: NoParams) -> Result<DebugStatsResult, RpcError> {
    let daemon = &ctx.daemon;
    require_debug(daemon, "debug/stats")?;
    let n = |v: usize| v as u64;
    Ok(DebugStatsResult {
        connections: n(daemon.connection_count()),
        in_flight_requests: n(daemon.requests_in_flight()),
        live_runs: n(daemon.runtime.live_runs()),
        live_sessions: n(daemon.runtime.live_sessions()),
        loaded_workspaces: n(daemon.runtime.loaded_workspaces()),
        runtime_tasks: n(daemon.runtime.tasks()),
        parked_clients: n(daemon.parked_clients()),
        async_tasks: n(tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()),
        replay_bytes: n(daemon.runtime.replay_budget().used()),
        inbound_bytes: n(daemon.inbound.used()),
    })
}

pub(super) async fn debug_client_request(
    ctx: &RequestCtx,
    p: DebugClientRequestParams,
) -> Result<Value, RpcError> {
    require_debug(&ctx.daemon, "debug/clientRequest")?;
    let timeout = Duration::from_millis(p.timeout_ms.unwrap_or(10_000));
    let raw = ctx.peer.request(&p.method, &p.params, timeout).await?;
    serde_json::from_str(raw.get())
        .map_err(|e| RpcError::internal(format!("client answer is not JSON: {e}")))
}

/// The diagnostics answer as an unknown method unless the daemon was started to offer them.
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
