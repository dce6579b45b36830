//! `crushctl acp`: an ACP agent on stdin/stdout that is a client of crushd. The editor spawns
//! it and speaks ACP (newline-delimited JSON-RPC); it translates to the daemon's protocol
//! through the same [`ReconnectingClient`] every crushctl command uses. Sessions, runs and
//! permission prompts are the daemon's, so the same session is live in the editor, in
//! `crushctl attach` and in Neovim at once, and outlives this process: when the editor goes
//! away mid-prompt, the run goes on in the daemon and `session/load` shows it later.
//!
//! One task owns all state and handles, in arrival order, the client's lines, the daemon's
//! events and the daemon's permission prompts; daemon calls are awaited in that task, so a
//! `session/load` streams its whole history before the live events that follow it.
//!
//! Modules: [`wire`] (JSON-RPC lines, requests decoded by method), [`schema`] (the ACP
//! messages as types), [`translate`] (daemon events and messages → `session/update`),
//! [`shown`] (what the editor has of each session, so that a rebuild after `session/load` or a
//! resync sends each piece once).

mod schema;
mod shown;
mod translate;
mod wire;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crush_client::{ClientError, ClientEvent, OutcomeState, ReconnectingClient, Resync};
use crush_protocol::{
    AgentCancelParams, AgentSendParams, Attachment, ErrorCode, ImageInput, MessageInfo, NoParams,
    PermissionDecision, PermissionRequestParams, PermissionRequestResult, RuleScope, RunState,
    RunStopReason, SendMode, SessionCreateParams, SessionEvent, SessionListParams, SessionRef,
    SessionSetMcpServersParams, SessionSubscribeParams, request,
};

use crate::prompts::{PromptRequest, decided, permission_handler};
use crate::{Global, WorkspaceArg};
use wire::ClientRequest as Req;
use wire::{Incoming, WireError, code};

/// `crushctl acp` options.
#[derive(Debug, clap::Args)]
pub struct AcpArgs {
    /// The directory relative `cwd`s of the client are taken from [default: the current
    /// directory].
    #[command(flatten)]
    pub ws: WorkspaceArg,
}

/// The ACP permission options crushd's answers map to. "Allow always" saves a lasting rule for
/// the workspace (the request's suggested pattern) when the daemon offers that scope, else it is
/// allow-for-this-session (ARCHITECTURE.md "ACP bridge").
const ALLOW_ONCE: &str = "allow-once";
const ALLOW_ALWAYS: &str = "allow-always";
const REJECT_ONCE: &str = "reject-once";

pub async fn acp(g: &Global, a: AcpArgs) -> anyhow::Result<u8> {
    // Over --remote the editor's directories are on this machine and mean nothing to the
    // remote daemon: every session is in the remote workspace `-w` names.
    let remote_workspace = match &g.remote {
        Some(r) => Some(PathBuf::from(crate::remote_workspace_dir(&a.ws, r)?)),
        None => None,
    };
    let base = match &a.ws.workspace {
        Some(d) => d.clone(),
        None => std::env::current_dir()?,
    };
    let (out, out_rx) = mpsc::unbounded_channel::<String>();
    let stdout_closed = CancellationToken::new();
    tokio::spawn(write_lines(out_rx, stdout_closed.clone()));
    let (line_tx, mut lines) = mpsc::channel::<std::io::Result<String>>(64);
    tokio::spawn(read_lines(line_tx));
    let (prompt_tx, mut prompts) = mpsc::unbounded_channel::<PromptRequest>();
    let mut b = Bridge {
        g: g.clone(),
        base,
        remote_workspace,
        out,
        prompt_tx,
        client: None,
        events: None,
        sessions: HashMap::new(),
        prompts: HashMap::new(),
        answered: HashSet::new(),
        asks: HashMap::new(),
        resolved: HashSet::new(),
        next_id: 0,
        windows: None,
        images: false,
    };
    loop {
        tokio::select! {
            line = lines.recv() => match line {
                Some(Ok(l)) => b.line(&l).await,
                // stdin closed (or unreadable): the editor is gone. Runs go on in the daemon.
                Some(Err(_)) | None => break,
            },
            ev = next_event(&mut b.events) => match ev {
                Some(ev) => if !b.event(ev).await { break },
                None => b.events = None,
            },
            Some(p) = prompts.recv() => b.ask(p),
            _ = stdout_closed.cancelled() => break,
        }
    }
    if let Some(c) = b.client.take() {
        crate::leave(c).await;
    }
    Ok(0)
}

async fn next_event(
    events: &mut Option<mpsc::UnboundedReceiver<ClientEvent>>,
) -> Option<ClientEvent> {
    match events {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// Lines of stdin, as they come.
async fn read_lines(tx: mpsc::Sender<std::io::Result<String>>) {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(l)) => {
                if tx.send(Ok(l)).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

/// Writes each message as one line; cancels `closed` when stdout is gone.
async fn write_lines(mut rx: mpsc::UnboundedReceiver<String>, closed: CancellationToken) {
    let mut stdout = tokio::io::stdout();
    while let Some(line) = rx.recv().await {
        let mut bytes = line.into_bytes();
        bytes.push(b'\n');
        if stdout.write_all(&bytes).await.is_err() || stdout.flush().await.is_err() {
            break;
        }
    }
    closed.cancel();
}

/// A session the client opened (`session/new`, `load`, `resume`) in this process.
struct Open {
    cwd: PathBuf,
    /// The model of the session's latest assistant message (for `usage_update`'s `size`).
    model: Option<String>,
    /// The seq of the last event applied, or of the subscribe answer or resync the view was
    /// built from: events not above it are in the view already (docs/protocol.md, "Sharing
    /// sessions between clients"). The client library drops them too, except on a connection
    /// that was subscribed already (a session loaded again).
    cursor: u64,
    shown: shown::Shown,
}

/// A `session/prompt` waiting for its run to end.
struct Prompt {
    id: Value,
    session_id: String,
    /// The run's last message stopped at the model's output limit.
    max_tokens: bool,
}

/// The "allow always" option's label: what it will save.
fn always_label(p: &PermissionRequestParams) -> String {
    if !p.scopes.contains(&RuleScope::Workspace) {
        return format!("Allow {} for this session", p.tool);
    }
    match &p.suggested_pattern {
        Some(pattern) => format!("Always allow {} {pattern} in this workspace", p.tool),
        None => format!("Always allow {} in this workspace", p.tool),
    }
}

/// A `session/request_permission` the client has not answered.
struct Ask {
    request_id: String,
    /// "Allow always" can be saved as a workspace rule.
    lasting: bool,
    reply: oneshot::Sender<PermissionRequestResult>,
}

struct Bridge {
    g: Global,
    /// Where relative client paths are taken from (`-w`).
    base: PathBuf,
    /// With `--remote`: the workspace on the remote machine every session is in.
    remote_workspace: Option<PathBuf>,
    out: mpsc::UnboundedSender<String>,
    prompt_tx: mpsc::UnboundedSender<PromptRequest>,
    client: Option<ReconnectingClient>,
    events: Option<mpsc::UnboundedReceiver<ClientEvent>>,
    sessions: HashMap<String, Open>,
    /// By run id.
    prompts: HashMap<String, Prompt>,
    /// Runs of this client's prompts that were answered: nothing of theirs is sent after the
    /// answer.
    answered: HashSet<String>,
    /// By the id of our `session/request_permission`.
    asks: HashMap<u64, Ask>,
    /// Permission requests another client answered. The daemon's prompt and the event saying
    /// it was answered come on different paths; a prompt that arrives after its answer is not
    /// put to the client.
    resolved: HashSet<String>,
    next_id: u64,
    /// Context windows by model name (`model/list`, asked once).
    windows: Option<HashMap<String, u64>>,
    /// The daemon's default model accepts images (`model/list` at `initialize`): prompts may
    /// carry them, and `initialize` says so.
    images: bool,
}

/// Gives the session the editor's MCP servers (`session/setMcpServers`), replacing what it had:
/// the editor that opens a session last decides its servers.
async fn set_mcp_servers(
    client: &ReconnectingClient,
    session_id: &str,
    servers: &[Value],
) -> Result<(), WireError> {
    let servers = schema::mcp_servers(servers).map_err(WireError::invalid_params)?;
    client
        .request::<request::SessionSetMcpServers>(SessionSetMcpServersParams {
            session_id: session_id.to_owned(),
            servers,
        })
        .await
        .map_err(daemon_error)?;
    Ok(())
}

/// The session's stored messages, oldest first.
async fn history(
    client: &ReconnectingClient,
    session_id: &str,
) -> Result<Vec<MessageInfo>, WireError> {
    crate::attach::history(client, session_id, true, 0)
        .await
        .map_err(daemon_error)
}

/// Which stored messages a catch-up counts as shown without sending them (by role and run):
/// every message of a run whose prompt was answered (nothing of it is sent after the answer),
/// and the editor's own prompts (it shows them itself).
fn hidden<'a>(
    prompts: &'a HashMap<String, Prompt>,
    answered: &'a HashSet<String>,
) -> impl Fn(&str, Option<&str>) -> bool + 'a {
    move |role, run| {
        run.is_some_and(|r| answered.contains(r) || (role == "user" && prompts.contains_key(r)))
    }
}

fn daemon_error(e: ClientError) -> WireError {
    match &e {
        ClientError::Rpc(r) if r.code == ErrorCode::SessionNotFound as i32 => {
            WireError::new(code::RESOURCE_NOT_FOUND, r.message.clone())
        }
        ClientError::Rpc(r) if r.code == ErrorCode::InvalidParams as i32 => {
            WireError::invalid_params(r.message.clone())
        }
        ClientError::Rpc(r) => WireError::internal(format!("crushd: {}", r.message)),
        _ => WireError::internal(format!("crushd: {e}")),
    }
}

fn to_value(v: impl serde::Serialize) -> Result<Value, WireError> {
    serde_json::to_value(v).map_err(|e| WireError::internal(e.to_string()))
}

impl Bridge {
    fn send(&self, line: String) {
        let _ = self.out.send(line);
    }

    fn update(&self, session_id: &str, u: schema::SessionUpdate) {
        self.send(wire::update_line(session_id, u));
    }

    /// The daemon connection, made on first use (normally by `initialize`).
    async fn daemon(&mut self, editor: Option<&str>) -> Result<&ReconnectingClient, WireError> {
        if self.client.is_none() {
            let mut opts = self.g.options(true);
            // Other clients see who is on the session ("allowed by Zed via crushctl acp").
            opts.client_info.name = format!(
                "{} via crushctl acp (pid {})",
                editor.unwrap_or("ACP client"),
                std::process::id()
            );
            opts.request_handler = Some(permission_handler(self.prompt_tx.clone(), "crushctl acp"));
            let client = self
                .g
                .reconnecting(opts)
                .await
                .map_err(|e| WireError::internal(format!("cannot reach crushd: {e}")))?;
            self.events = client.take_events();
            self.client = Some(client);
        }
        self.client
            .as_ref()
            .ok_or_else(|| WireError::internal("no daemon connection"))
    }

    async fn line(&mut self, line: &str) {
        if line.trim().is_empty() {
            return;
        }
        match wire::parse(line) {
            Err(answer) => self.send(answer),
            Ok(Incoming::Request { id, method, params }) => self.request(id, &method, params).await,
            Ok(Incoming::Notification { method, params }) => {
                self.notification(&method, &params).await
            }
            Ok(Incoming::Response { id, result }) => self.answered(&id, result),
        }
    }

    async fn request(&mut self, id: Value, method: &str, params: Value) {
        let answer = match wire::client_request(method, &params) {
            Err(e) => Err(e),
            Ok(Req::Initialize(r)) => self.initialize(r).await,
            Ok(Req::NewSession(r)) => self.new_session(r).await,
            Ok(Req::LoadSession(r)) => self
                .open_session(&r.session_id, &r.cwd, &r.mcp_servers, true)
                .await
                .and_then(|()| to_value(schema::Empty {})),
            Ok(Req::ResumeSession(r)) => self
                .open_session(&r.session_id, &r.cwd, &r.mcp_servers, false)
                .await
                .and_then(|()| to_value(schema::Empty {})),
            Ok(Req::ListSessions(r)) => self.list(r).await,
            Ok(Req::DeleteSession(r)) => self.delete(&r.session_id).await,
            Ok(Req::Prompt(r)) => match self.prompt(id.clone(), r).await {
                // Answered when the run ends.
                Ok(()) => return,
                Err(e) => Err(e),
            },
        };
        self.send(match answer {
            Ok(v) => wire::result_line(&id, v),
            Err(e) => wire::error_line(&id, &e),
        });
    }

    async fn notification(&mut self, method: &str, params: &Value) {
        // `$/cancel_request` for our answers and `_…` extensions: nothing to do. Notifications
        // get no answer, so an unreadable one is only ignored.
        if let Some(c) = wire::cancel_notification(method, params) {
            self.cancel(&c.session_id).await;
        }
    }

    async fn initialize(&mut self, r: schema::InitializeRequest) -> Result<Value, WireError> {
        let editor = r
            .client_info
            .as_ref()
            .map(|i| i.title.clone().unwrap_or_else(|| i.name.clone()));
        let client = self.daemon(editor.as_deref()).await?;
        // Images where the model accepts them: the default model's `images` decides what is
        // advertised (a session on another model is told by the daemon that one was left out).
        let images = client
            .request::<request::ModelList>(NoParams)
            .await
            .ok()
            .is_some_and(|l| {
                l.models
                    .iter()
                    .any(|m| Some(&m.name) == l.default.as_ref() && m.images)
            });
        self.images = images;
        to_value(schema::InitializeResponse {
            protocol_version: wire::PROTOCOL_VERSION,
            agent_capabilities: schema::AgentCapabilities {
                load_session: true,
                // Text and resource links are the baseline; embedded text resources become
                // attachments; images go to models that accept them; no audio.
                prompt_capabilities: schema::PromptCapabilities {
                    image: images,
                    audio: false,
                    embedded_context: true,
                },
                // stdio servers always (ACP requires them), streamable HTTP too; not SSE.
                mcp_capabilities: schema::McpCapabilities {
                    http: true,
                    sse: false,
                },
                session_capabilities: schema::SessionCapabilities {
                    list: schema::Empty {},
                    resume: schema::Empty {},
                    delete: schema::Empty {},
                },
            },
            auth_methods: Vec::new(),
            agent_info: schema::Implementation {
                name: "crushd".to_owned(),
                title: Some("crushd".to_owned()),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            },
        })
    }

    /// The client's directory, absolute.
    fn dir(&self, cwd: &Path) -> PathBuf {
        if let Some(w) = &self.remote_workspace {
            return w.clone();
        }
        if cwd.is_absolute() {
            cwd.to_owned()
        } else {
            self.base.join(cwd)
        }
    }

    async fn new_session(&mut self, r: schema::NewSessionRequest) -> Result<Value, WireError> {
        // Refuse a server list that cannot be run before anything is created.
        schema::mcp_servers(&r.mcp_servers).map_err(WireError::invalid_params)?;
        let cwd = self.dir(&r.cwd);
        let client = self.daemon(None).await?;
        let ws = client
            .open_workspace(&cwd.to_string_lossy())
            .await
            .map_err(daemon_error)?;
        let s = client
            .request::<request::SessionCreate>(SessionCreateParams {
                workspace_id: ws.workspace_id,
                title: None,
                model: None,
                yolo: false,
            })
            .await
            .map_err(daemon_error)?;
        set_mcp_servers(client, &s.session_id, &r.mcp_servers).await?;
        let sub = client
            .subscribe(SessionSubscribeParams {
                session_id: s.session_id.clone(),
                after_seq: None,
                epoch: None,
            })
            .await
            .map_err(daemon_error)?;
        self.sessions.insert(
            s.session_id.clone(),
            Open {
                cwd: PathBuf::from(ws.path),
                model: s.model,
                cursor: sub.seq,
                shown: shown::Shown::default(),
            },
        );
        to_value(schema::NewSessionResponse {
            session_id: s.session_id,
        })
    }

    /// `session/load` (`replay`: the history as updates first) and `session/resume`.
    async fn open_session(
        &mut self,
        session_id: &str,
        cwd: &Path,
        servers: &[Value],
        replay: bool,
    ) -> Result<(), WireError> {
        schema::mcp_servers(servers).map_err(WireError::invalid_params)?;
        let cwd = self.dir(cwd);
        let client = self.daemon(None).await?;
        let info = client
            .request::<request::SessionGet>(SessionRef {
                session_id: session_id.to_owned(),
            })
            .await
            .map_err(daemon_error)?;
        // The session's own workspace (the client's cwd may be a subdirectory of it); held
        // open by this client while it is connected.
        let ws = client
            .request::<request::WorkspaceList>(NoParams)
            .await
            .map_err(daemon_error)?
            .workspaces
            .into_iter()
            .find(|w| w.workspace_id == info.workspace_id);
        let ws_path = match ws {
            Some(w) => {
                client
                    .open_workspace(&w.path)
                    .await
                    .map_err(daemon_error)?
                    .path
            }
            None => cwd.to_string_lossy().into_owned(),
        };
        set_mcp_servers(client, session_id, servers).await?;
        // `session/resume`: the editor has the history, which counts as shown. It is read
        // before subscribing: read after, it could hold events past the cursor, which would
        // then not be sent.
        let before = if replay {
            Vec::new()
        } else {
            history(client, session_id).await?
        };
        // The cursor is the answer's seq (the client library delivers only the events after
        // it); `session/messages` is read after it, and `shown` sends what both hold once.
        let sub = client
            .subscribe(SessionSubscribeParams {
                session_id: session_id.to_owned(),
                after_seq: None,
                epoch: None,
            })
            .await
            .map_err(daemon_error)?;
        let messages = if replay {
            history(client, session_id).await?
        } else {
            before
        };
        let mut open = Open {
            cwd: PathBuf::from(ws_path),
            model: info.model,
            cursor: sub.seq,
            shown: shown::Shown::default(),
        };
        let updates = open.shown.catch_up(
            &open.cwd,
            &messages,
            sub.streaming.as_ref(),
            hidden(&self.prompts, &self.answered),
        );
        if replay {
            for u in updates {
                self.update(session_id, u);
            }
        }
        self.sessions.insert(session_id.to_owned(), open);
        Ok(())
    }

    /// The client library could not continue a session's stream from where it was (the
    /// daemon's replay log had moved on, or it restarted): send the editor what it has not
    /// been shown of the session as the database and the streaming message now have it.
    async fn resync(&mut self, r: Resync) {
        let (Some(client), true) = (&self.client, self.sessions.contains_key(&r.session_id)) else {
            return;
        };
        let messages = match history(client, &r.session_id).await {
            Ok(m) => m,
            Err(e) => {
                eprintln!(
                    "crushctl acp: cannot catch up with session {}: {}",
                    r.session_id, e.message
                );
                return;
            }
        };
        let hidden = hidden(&self.prompts, &self.answered);
        let Some(open) = self.sessions.get_mut(&r.session_id) else {
            return;
        };
        open.cursor = r.seq;
        let updates = open
            .shown
            .catch_up(&open.cwd, &messages, r.streaming.as_ref(), hidden);
        for u in updates {
            self.update(&r.session_id, u);
        }
    }

    async fn list(&mut self, r: schema::ListSessionsRequest) -> Result<Value, WireError> {
        if r.cursor.is_some() {
            // We never hand out cursors: one page holds every session.
            return Err(WireError::invalid_params("unknown cursor"));
        }
        let want = r.cwd.as_deref().map(|c| {
            let c = self.dir(c);
            std::fs::canonicalize(&c).unwrap_or(c)
        });
        let client = self.daemon(None).await?;
        let workspaces = client
            .request::<request::WorkspaceList>(NoParams)
            .await
            .map_err(daemon_error)?
            .workspaces;
        let mut all = Vec::new();
        for w in workspaces {
            if want.as_deref().is_some_and(|c| Path::new(&w.path) != c) {
                continue;
            }
            let sessions = client
                .request::<request::SessionList>(SessionListParams {
                    workspace_id: w.workspace_id.clone(),
                })
                .await
                .map_err(daemon_error)?
                .sessions;
            all.extend(sessions.into_iter().map(|s| (w.path.clone(), s)));
        }
        all.sort_by_key(|(_, s)| std::cmp::Reverse(s.updated_at));
        let sessions = all
            .into_iter()
            .map(|(path, s)| schema::SessionInfo {
                session_id: s.session_id,
                cwd: PathBuf::from(path),
                title: s.title,
                updated_at: translate::iso8601(s.updated_at),
            })
            .collect();
        to_value(schema::ListSessionsResponse { sessions })
    }

    async fn delete(&mut self, session_id: &str) -> Result<Value, WireError> {
        self.sessions.remove(session_id);
        let client = self.daemon(None).await?;
        match client
            .request::<request::SessionDelete>(SessionRef {
                session_id: session_id.to_owned(),
            })
            .await
        {
            Ok(_) => {}
            // Deleting what is not there succeeds, as the spec asks.
            Err(ClientError::Rpc(r)) if r.code == ErrorCode::SessionNotFound as i32 => {}
            Err(e) => return Err(daemon_error(e)),
        }
        to_value(schema::Empty {})
    }

    /// Sends the prompt; the answer comes when its run ends ([`Self::outcome`]).
    async fn prompt(&mut self, id: Value, r: schema::PromptRequest) -> Result<(), WireError> {
        let session_id = r.session_id;
        if !self.sessions.contains_key(&session_id) {
            return Err(WireError::new(
                code::RESOURCE_NOT_FOUND,
                format!(
                    "session {session_id} is not open here: call session/new or session/load first"
                ),
            ));
        }
        let mut text = Vec::new();
        let mut attachments = Vec::new();
        let mut images = Vec::new();
        for block in r.prompt {
            match block {
                schema::ContentBlock::Text { text: t } => text.push(t),
                schema::ContentBlock::ResourceLink { uri, name } => {
                    text.push(format!("[{name}]({uri})"));
                }
                schema::ContentBlock::Resource { resource } => match resource.text {
                    Some(t) => attachments.push(Attachment {
                        name: Some(resource.uri),
                        mime_type: resource.mime_type,
                        text: t,
                    }),
                    None => {
                        return Err(WireError::invalid_params(
                            "binary resources are not supported (promptCapabilities)",
                        ));
                    }
                },
                schema::ContentBlock::Image {
                    data,
                    mime_type,
                    uri,
                } if self.images => images.push(ImageInput {
                    mime_type,
                    data,
                    name: uri,
                }),
                schema::ContentBlock::Image { .. } | schema::ContentBlock::Audio {} => {
                    return Err(WireError::invalid_params(
                        "this content is not supported (see promptCapabilities)",
                    ));
                }
            }
        }
        let prompt = text.join("\n");
        if prompt.trim().is_empty() && attachments.is_empty() && images.is_empty() {
            return Err(WireError::invalid_params("the prompt is empty"));
        }
        let run_id = uuid::Uuid::now_v7().to_string();
        let client = self.daemon(None).await?;
        client
            .send(AgentSendParams {
                session_id: session_id.clone(),
                prompt,
                attachments,
                images,
                run_id: Some(run_id.clone()),
                mode: SendMode::Queue,
                ..AgentSendParams::default()
            })
            .await
            .map_err(daemon_error)?;
        self.prompts.insert(
            run_id,
            Prompt {
                id,
                session_id,
                max_tokens: false,
            },
        );
        Ok(())
    }

    /// `session/cancel`: cancels the runs of this client's prompts in the session (other
    /// clients' runs in it go on). Each prompt is answered `cancelled` when its run ends.
    async fn cancel(&mut self, session_id: &str) {
        let runs: Vec<String> = self
            .prompts
            .iter()
            .filter(|(_, p)| p.session_id == session_id)
            .map(|(run, _)| run.clone())
            .collect();
        let Ok(client) = self.daemon(None).await else {
            return;
        };
        for run_id in runs {
            let _ = client
                .request::<request::AgentCancel>(AgentCancelParams {
                    session_id: session_id.to_owned(),
                    run_id: Some(run_id),
                })
                .await;
        }
    }

    /// A daemon event; false when the bridge should end.
    async fn event(&mut self, ev: ClientEvent) -> bool {
        match ev {
            ClientEvent::Update(u) => {
                let run = u.run_id.as_deref();
                let own = run.is_some_and(|r| self.prompts.contains_key(r));
                let answered = run.is_some_and(|r| self.answered.contains(r));
                let Some(open) = self
                    .sessions
                    .get_mut(&u.session_id)
                    .filter(|o| u.seq > o.cursor)
                else {
                    return true;
                };
                open.cursor = u.seq;
                // Counted as shown even when it is not sent (an answered run's, the client's
                // own prompt), so that a later catch-up does not send it either.
                let update = open.shown.event(&open.cwd, &u.event);
                if answered {
                    return true;
                }
                match &u.event {
                    SessionEvent::AssistantStarted { model, .. } => {
                        open.model = Some(model.clone());
                    }
                    SessionEvent::MessageFinished { finish_reason, .. } => {
                        if let Some(p) = run.and_then(|r| self.prompts.get_mut(r)) {
                            p.max_tokens = translate::is_max_tokens(*finish_reason);
                        }
                    }
                    // The client showed its own prompt already; others' prompts it has not seen.
                    SessionEvent::UserMessage { .. } if own => return true,
                    SessionEvent::PermissionResolved { request_id, .. } => {
                        self.withdraw(request_id);
                    }
                    SessionEvent::SessionUpdated { title, .. } => {
                        self.update(
                            &u.session_id,
                            schema::SessionUpdate::SessionInfoUpdate {
                                title: title.clone(),
                            },
                        );
                        return true;
                    }
                    _ => {}
                }
                if let Some(update) = update {
                    self.update(&u.session_id, update);
                }
            }
            ClientEvent::Resync(r) => self.resync(r).await,
            ClientEvent::RunOutcome(o) => {
                if let Some(p) = self.prompts.remove(&o.run_id) {
                    self.answered.insert(o.run_id.clone());
                    self.outcome(p, o).await;
                }
            }
            ClientEvent::SubscriptionLost { session_id, error } => {
                self.sessions.remove(&session_id);
                let lost: Vec<String> = self
                    .prompts
                    .iter()
                    .filter(|(_, p)| p.session_id == session_id)
                    .map(|(r, _)| r.clone())
                    .collect();
                for run in lost {
                    if let Some(p) = self.prompts.remove(&run) {
                        self.send(wire::error_line(
                            &p.id,
                            &WireError::internal(format!("lost the session: {error}")),
                        ));
                    }
                }
            }
            ClientEvent::GaveUp { error } => {
                eprintln!("crushctl acp: lost crushd: {error}");
                for (_, p) in self.prompts.drain() {
                    let e = WireError::internal(format!("lost crushd: {error}"));
                    let _ = self.out.send(wire::error_line(&p.id, &e));
                }
                return false;
            }
            // Resyncs, reconnects and other notifications: the live stream goes on.
            _ => {}
        }
        true
    }

    /// Answers a prompt from its run's outcome, after a `usage_update`.
    async fn outcome(&mut self, p: Prompt, o: crush_client::RunOutcome) {
        if let Some(u) = o.usage {
            self.usage(&p.session_id, u).await;
        }
        let stop = match o.state {
            OutcomeState::Ended(RunState::Completed) if p.max_tokens => {
                schema::StopReason::MaxTokens
            }
            OutcomeState::Ended(RunState::Completed) => schema::StopReason::EndTurn,
            OutcomeState::Ended(RunState::Cancelled) => schema::StopReason::Cancelled,
            // The daemon's `[agent] max_steps` limit is ACP's limit on model requests per turn.
            OutcomeState::Ended(RunState::Failed)
                if o.stop_reason == Some(RunStopReason::MaxSteps) =>
            {
                schema::StopReason::MaxTurnRequests
            }
            state => {
                let why = o.error.unwrap_or_else(|| format!("the run ended {state}"));
                self.send(wire::error_line(&p.id, &WireError::internal(why)));
                return;
            }
        };
        self.send(wire::result_line(
            &p.id,
            schema::PromptResponse { stop_reason: stop },
        ));
    }

    /// `usage_update`: the tokens of the last turn against the model's context window, and
    /// the session's cost so far.
    async fn usage(&mut self, session_id: &str, u: crush_protocol::Usage) {
        let model = self.sessions.get(session_id).and_then(|s| s.model.clone());
        let need_windows = self.windows.is_none();
        let Ok(client) = self.daemon(None).await else {
            return;
        };
        let list = if need_windows {
            client.request::<request::ModelList>(NoParams).await.ok()
        } else {
            None
        };
        if let Some(list) = list {
            let mut w = HashMap::new();
            for m in list.models {
                if let Some(c) = m.context_window {
                    w.insert(m.model.clone(), c);
                    w.insert(m.name.clone(), c);
                }
            }
            self.windows = Some(w);
        }
        let Some(client) = self.client.as_ref() else {
            return;
        };
        let cost = client
            .request::<request::SessionGet>(SessionRef {
                session_id: session_id.to_owned(),
            })
            .await
            .ok()
            .map(|s| s.cost);
        let size = model
            .and_then(|m| self.windows.as_ref().and_then(|w| w.get(&m).copied()))
            .unwrap_or(0);
        let update = schema::UsageUpdate {
            used: u.input_tokens + u.output_tokens,
            size,
            cost: cost.map(|amount| schema::Cost {
                amount,
                currency: "USD",
            }),
        };
        self.update(session_id, schema::SessionUpdate::UsageUpdate(update));
    }

    /// A permission prompt of the daemon for a session open here: ask the client.
    fn ask(&mut self, (p, reply): PromptRequest) {
        let open = self
            .sessions
            .get(&p.session_id)
            .filter(|_| !self.resolved.contains(&p.request_id));
        let Some(open) = open else {
            let _ = reply.send(decided(PermissionDecision::Deferred));
            return;
        };
        // The change as a unified diff to read before answering (the old and new text come
        // with the tool call's result).
        let content = p.diff.as_ref().map(|diff| {
            vec![schema::ToolCallContent::Content {
                content: translate::text_block(format!("```diff\n{}\n```", diff.trim_end())),
            }]
        });
        let call = translate::tool_call(&open.cwd, &p.tool_call_id, &p.tool, &p.input);
        let tool_call = schema::ToolCallUpdate {
            tool_call_id: p.tool_call_id.clone(),
            title: Some(p.title.clone()),
            kind: Some(call.kind),
            status: Some(schema::ToolCallStatus::Pending),
            content,
            locations: Some(call.locations),
            raw_input: Some(call.raw_input),
            raw_output: None,
        };
        let option = |option_id, name: String, kind| schema::PermissionOption {
            option_id,
            name,
            kind,
        };
        let options = vec![
            option(
                ALLOW_ONCE,
                "Allow once".to_owned(),
                schema::PermissionOptionKind::AllowOnce,
            ),
            option(
                ALLOW_ALWAYS,
                always_label(&p),
                schema::PermissionOptionKind::AllowAlways,
            ),
            option(
                REJECT_ONCE,
                "Reject".to_owned(),
                schema::PermissionOptionKind::RejectOnce,
            ),
        ];
        self.next_id += 1;
        let id = self.next_id;
        self.send(wire::request_line(
            id,
            "session/request_permission",
            schema::RequestPermissionRequest {
                session_id: p.session_id.clone(),
                tool_call,
                options,
            },
        ));
        self.asks.insert(
            id,
            Ask {
                lasting: p.scopes.contains(&RuleScope::Workspace),
                request_id: p.request_id,
                reply,
            },
        );
    }

    /// The client answered a request of ours.
    fn answered(&mut self, id: &Value, result: Result<Value, Value>) {
        let Some(ask) = id.as_u64().and_then(|id| self.asks.remove(&id)) else {
            return;
        };
        let decision = match result
            .ok()
            .and_then(|v| serde_json::from_value::<schema::RequestPermissionResponse>(v).ok())
            .map(|r| r.outcome)
        {
            Some(schema::PermissionOutcome::Selected { option_id }) => match option_id.as_str() {
                ALLOW_ONCE => decided(PermissionDecision::Allow),
                ALLOW_ALWAYS if ask.lasting => PermissionRequestResult {
                    decision: PermissionDecision::AllowAlways,
                    scope: Some(RuleScope::Workspace),
                    pattern: None,
                },
                ALLOW_ALWAYS => decided(PermissionDecision::AllowSession),
                _ => decided(PermissionDecision::Deny),
            },
            // `cancelled` (the turn was cancelled), an error or an unreadable answer: no.
            _ => decided(PermissionDecision::Deny),
        };
        let _ = ask.reply.send(decision);
    }

    /// Another client answered a prompt first: withdraw ours with `$/cancel_request`.
    fn withdraw(&mut self, request_id: &str) {
        self.resolved.insert(request_id.to_owned());
        let ids: Vec<u64> = self
            .asks
            .iter()
            .filter(|(_, a)| a.request_id == request_id)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(a) = self.asks.remove(&id) {
                let _ = a.reply.send(decided(PermissionDecision::Deferred));
                self.send(wire::cancel_request_line(id));
            }
        }
    }
}
