//! Request handlers: one function per method, reached through an exhaustive match on
//! `ClientRequest`, so adding a method to the protocol crate fails to compile until it is handled
//! here.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crush_protocol::{
    ClientRequest, ConfigGetResult, DEFAULT_MESSAGE_PAGE, DaemonShutdownResult, DaemonStatusResult,
    DebugSleepResult, DebugStatsResult, ErrorCode, InitializeParams, InitializeResult,
    MAX_MESSAGE_PAGE, MessageInfo, ModelListResult, PROTOCOL_VERSION, PermissionRespondResult,
    RestoredSubscription, RpcError, RunInfo, ServerCapabilities, ServerInfo, SessionDeleteResult,
    SessionInfo, SessionListResult, SessionMessagesResult, SessionSetYoloResult,
    SessionSubscribeParams, SessionUnsubscribeResult, WorkspaceCloseResult, WorkspaceInfo,
    WorkspaceListResult, methods::parse_params,
};

use crate::peer::{ClientIdentity, Peer};
use crate::server::Daemon;
use crate::store::{MessageRow, RunRow, SessionRow, Store, StoreError, WorkspaceRow};

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
pub async fn initialize(
    daemon: &Arc<Daemon>,
    peer: &Arc<Peer>,
    params: Option<&RawValue>,
) -> Result<Value, RpcError> {
    let params: InitializeParams = parse_params(params)?;
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
    ok(InitializeResult {
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
                .daemon
                .idle_timeout
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        }),
        ClientRequest::DaemonShutdown(p) => {
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
            ok(DaemonShutdownResult {
                shutting_down: true,
            })
        }
        ClientRequest::WorkspaceOpen(p) => {
            let path = canonical_dir(&p.path).await?;
            let row = daemon.store.open_workspace(&path).await.map_err(storage)?;
            // Claimed first, so the idle reaper cannot unload it between the two.
            daemon.clients.claim(&ctx.peer, &row.id);
            daemon.runtime.reopen_workspace(&row.id);
            ok(workspace_info(daemon, row))
        }
        ClientRequest::WorkspaceClose(p) => {
            require_workspace(daemon, &p.workspace_id).await?;
            let (released, remaining) = daemon.clients.release(&ctx.peer, &p.workspace_id);
            let cancelled_runs = if p.force {
                daemon.runtime.close_workspace(&p.workspace_id).await
            } else {
                Vec::new()
            };
            ok(WorkspaceCloseResult {
                released,
                remaining_claims: remaining as u32,
                cancelled_runs,
            })
        }
        ClientRequest::AgentSend(p) => ok(daemon.runtime.send(Some(ctx.peer.clone()), p).await?),
        ClientRequest::AgentCancel(p) => ok(daemon
            .runtime
            .cancel(&p.session_id, p.run_id.as_deref())
            .await?),
        ClientRequest::AgentStatus(p) => ok(daemon.runtime.status(&p.session_id).await?),
        ClientRequest::SessionSubscribe(p) => ok(daemon.runtime.subscribe(&ctx.peer, &p).await?),
        ClientRequest::SessionUnsubscribe(p) => ok(SessionUnsubscribeResult {
            unsubscribed: daemon.runtime.unsubscribe(&ctx.peer, &p.session_id).await?,
        }),
        ClientRequest::ModelList(_) => {
            let models = daemon.runtime.models();
            ok(ModelListResult {
                default: models.default_name().map(str::to_owned),
                models: models.list(),
            })
        }
        ClientRequest::SessionSetModel(p) => {
            let model = p.model.as_deref().map(str::trim).filter(|m| !m.is_empty());
            if let Some(m) = model {
                daemon.runtime.models().check(m)?;
            }
            let row = daemon
                .store
                .set_session_model(&p.session_id, model)
                .await
                .map_err(storage)?
                .ok_or_else(|| session_not_found(&p.session_id))?;
            daemon.runtime.set_session_model(&row.id, model);
            ok(session_info(row))
        }
        ClientRequest::SessionSetYolo(p) => {
            require_session(&daemon.store, &p.session_id).await?;
            daemon.runtime.set_yolo(&p.session_id, p.yolo);
            ok(SessionSetYoloResult { yolo: p.yolo })
        }
        ClientRequest::PermissionRespond(p) => {
            daemon.runtime.answer_permission(
                None,
                &p.request_id,
                p.decision,
                &ctx.peer.display_name(),
            )?;
            ok(PermissionRespondResult {})
        }
        ClientRequest::ConfigGet(_) => ok(ConfigGetResult {
            config: daemon.config.redacted(),
        }),
        ClientRequest::WorkspaceList(_) => {
            let rows = daemon.store.list_workspaces().await.map_err(storage)?;
            ok(WorkspaceListResult {
                workspaces: rows
                    .into_iter()
                    .map(|r| workspace_info(daemon, r))
                    .collect(),
            })
        }
        ClientRequest::SessionCreate(p) => {
            require_workspace(daemon, &p.workspace_id).await?;
            let title = p
                .title
                .as_deref()
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .unwrap_or("New session");
            let model = p.model.as_deref().map(str::trim).filter(|m| !m.is_empty());
            if let Some(m) = model {
                daemon.runtime.models().check(m)?;
            }
            let row = daemon
                .store
                .create_session(&p.workspace_id, title, model)
                .await
                .map_err(storage)?;
            if p.yolo {
                daemon.runtime.set_yolo(&row.id, true);
            }
            ok(session_info(row))
        }
        ClientRequest::SessionList(p) => {
            require_workspace(daemon, &p.workspace_id).await?;
            let rows = daemon
                .store
                .list_sessions(&p.workspace_id)
                .await
                .map_err(storage)?;
            ok(SessionListResult {
                sessions: rows.into_iter().map(session_info).collect(),
            })
        }
        ClientRequest::SessionGet(p) => ok(session_info(
            require_session(&daemon.store, &p.session_id).await?,
        )),
        ClientRequest::SessionRename(p) => {
            let title = p.title.trim();
            if title.is_empty() {
                return Err(RpcError::invalid_params(
                    "invalid params: title: must not be empty",
                ));
            }
            match daemon
                .store
                .rename_session(&p.session_id, title)
                .await
                .map_err(storage)?
            {
                Some(row) => ok(session_info(row)),
                None => Err(session_not_found(&p.session_id)),
            }
        }
        ClientRequest::SessionDelete(p) => {
            if daemon.runtime.session_busy(&p.session_id) {
                return Err(RpcError::new(
                    ErrorCode::RunsActive,
                    "the session has an active or queued run; cancel it first (agent/cancel)",
                ));
            }
            if !daemon
                .store
                .delete_session(&p.session_id)
                .await
                .map_err(storage)?
            {
                return Err(session_not_found(&p.session_id));
            }
            daemon.runtime.forget_session(&p.session_id);
            ok(SessionDeleteResult { deleted: true })
        }
        ClientRequest::SessionMessages(p) => {
            require_session(&daemon.store, &p.session_id).await?;
            let limit = p.limit.unwrap_or(DEFAULT_MESSAGE_PAGE);
            if !(1..=MAX_MESSAGE_PAGE).contains(&limit) {
                return Err(RpcError::invalid_params(format!(
                    "invalid params: limit: must be between 1 and {MAX_MESSAGE_PAGE}"
                )));
            }
            let page = daemon
                .store
                .list_messages(&p.session_id, p.before, i64::from(limit))
                .await
                .map_err(storage)?;
            let next_before = if page.has_more {
                page.messages.first().map(|m| m.seq)
            } else {
                None
            };
            ok(SessionMessagesResult {
                messages: page
                    .messages
                    .into_iter()
                    .map(message_info)
                    .collect::<Result<_, _>>()
                    .map_err(storage)?,
                has_more: page.has_more,
                next_before,
            })
        }
        ClientRequest::RunGet(p) => {
            if let Some(live) = daemon.runtime.live_run(&p.run_id) {
                return ok(live);
            }
            match daemon.store.get_run(&p.run_id).await.map_err(storage)? {
                Some(row) => ok(run_info(row).map_err(storage)?),
                None => Err(RpcError::new(
                    ErrorCode::RunNotFound,
                    format!("no run with id {:?}", p.run_id),
                )),
            }
        }
        ClientRequest::DebugSleep(p) => {
            require_debug(daemon, "debug/sleep")?;
            tokio::time::sleep(Duration::from_millis(p.ms)).await;
            ok(DebugSleepResult { slept_ms: p.ms })
        }
        ClientRequest::DebugStats(_) => {
            require_debug(daemon, "debug/stats")?;
            let n = |v: usize| v as u64;
            ok(DebugStatsResult {
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
        ClientRequest::DebugClientRequest(p) => {
            require_debug(daemon, "debug/clientRequest")?;
            let timeout = Duration::from_millis(p.timeout_ms.unwrap_or(10_000));
            let raw = ctx.peer.request(&p.method, &p.params, timeout).await?;
            serde_json::from_str(raw.get())
                .map_err(|e| RpcError::internal(format!("client answer is not JSON: {e}")))
        }
    }
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

/// A database failure as the client sees it (logged once, here).
pub(crate) fn storage(e: StoreError) -> RpcError {
    tracing::error!(error = %e, "database failure");
    RpcError::new(
        ErrorCode::StorageFailed,
        format!("the database failed: {e}"),
    )
}

pub(crate) fn session_not_found(id: &str) -> RpcError {
    RpcError::new(
        ErrorCode::SessionNotFound,
        format!("no session with id {id:?}"),
    )
}

async fn require_workspace(daemon: &Daemon, id: &str) -> Result<WorkspaceRow, RpcError> {
    daemon
        .store
        .get_workspace(id)
        .await
        .map_err(storage)?
        .ok_or_else(|| {
            RpcError::new(
                ErrorCode::WorkspaceNotFound,
                format!("no workspace with id {id:?}"),
            )
        })
}

pub(crate) async fn require_session(store: &Store, id: &str) -> Result<SessionRow, RpcError> {
    store
        .get_session(id)
        .await
        .map_err(storage)?
        .ok_or_else(|| session_not_found(id))
}

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

fn session_info(r: SessionRow) -> SessionInfo {
    SessionInfo {
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
    })
}

fn run_info(r: RunRow) -> Result<RunInfo, StoreError> {
    Ok(RunInfo {
        state: r.run_state()?,
        run_id: r.run_id,
        session_id: r.session_id,
        prompt: r.prompt,
        error: r.error,
        user_message_id: r.user_message_id,
        assistant_message_id: r.assistant_message_id,
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
        folded_into: r.folded_into,
    })
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
