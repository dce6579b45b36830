//! Runs: accepting prompts, the per-session queue, cancellation, and the one `$/runComplete` of
//! every accepted run. The [`Runtime`] is made of owned parts, one file each:
//!
//! - `state.rs` — the session state machine (accept, cancel, step boundary, finish turn): pure;
//! - `events.rs` — a session's event stream: seq, replay log, streaming snapshot, subscribers;
//! - `registry.rs` — every live run by id, and the ends that could not be saved yet;
//! - `permissions.rs` — pending permission requests and what a session was granted;
//! - `workspaces.rs` — loading, idle unload, close and shutdown;
//!
//! and the code that performs a transition's effects: `accept.rs` (`agent/send`), `cancel.rs`
//! (`agent/cancel`), `subscribe.rs` (`session/subscribe`), the driver (`driver.rs` the turn and
//! the hand-off, `step.rs` one model call, `tool_calls.rs` a step's tools, `history.rs` what the
//! model is shown) and `unsaved.rs` (retrying an end the store refused).
//!
//! Architecture invariant: every transition of a session happens synchronously under that
//! session's lock, together with the events that announce it, and `agent/send` answers only
//! after its transition. A cancel therefore sees every run accepted before it, as the active run
//! (its token is registered before the answer) or waiting; there is no
//! accepted-but-unregistered window to cover. See ARCHITECTURE.md ("Runs") for the argument.
//!
//! Architecture invariant: a run's events are published under its session's lock, and a delta
//! is published only if the run's token is not cancelled at that moment. Cancel fires the token
//! under the same lock, so no delta of a run follows the event that announced its cancel.
//!
//! Lock order: workspace gate → session → run registry. No lock is held across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crush_protocol::{
    AgentState, AgentStatusResult, Attachment, ErrorCode, ImageInput, Part, RpcError, SessionEvent,
};

use crate::config::{AgentSettings, PermissionRules};
use crate::model::{Model, Models};
use crate::peer::Peer;
use crate::snapshots::Snapshots;
use crate::store::{Store, new_id};
use crate::sync::lock;
use events::SessionEvents;
pub use permissions::Answerer;
use permissions::{PendingPermissions, Permissions};
use registry::RunRegistry;
pub use replay::ReplayBudget;
use state::{RunHandle, SessionState};
use workspaces::Workspace;

mod accept;
mod budget;
mod cancel;
mod checkpoints;
mod compact;
mod driver;
mod events;
mod history;
mod images;
mod permissions;
mod prompt;
mod registry;
mod replay;
mod revert;
mod state;
mod step;
mod subscribe;
mod summary;
#[cfg(test)]
mod tests;
mod title;
mod tool_calls;
mod unsaved;
mod usage;
mod workspaces;

/// Longest client-supplied run id.
pub const MAX_RUN_ID_LEN: usize = 128;

/// Live state of every workspace, session and run of the daemon.
pub struct Runtime {
    store: Store,
    models: Models,
    flush_interval: Duration,
    grace: Duration,
    agent: AgentSettings,
    shutting_down: AtomicBool,
    /// This process's stream epoch: seqs are comparable only within it.
    epoch: String,
    /// Loaded workspaces by id.
    workspaces: Mutex<HashMap<String, Arc<Workspace>>>,
    /// Sessions with live state by id.
    sessions: Mutex<HashMap<String, Arc<SessionRt>>>,
    /// The last seq of every session whose live state was unloaded, so seqs never go back
    /// within one epoch.
    seqs: Mutex<HashMap<String, u64>>,
    replay: ReplayLimits,
    /// What every session's replay log holds together (`[daemon] replay_budget`).
    replay_budget: Arc<ReplayBudget>,
    registry: RunRegistry,
    permissions: Permissions,
    /// The retries of run ends the store refused (`unsaved.rs`); stopped by `stop_retries` at
    /// shutdown.
    retries: TaskTracker,
    stop_retries: CancellationToken,
    /// The MCP servers whose tools runs offer and call (`mcp/`).
    mcp: crate::mcp::Mcp,
    /// The workspace snapshot stores (`None`: snapshots are off).
    snapshots: Option<Arc<Snapshots>>,
    /// How `bash` commands are confined: the config's sandbox and each session's own.
    sandboxes: crate::tools::sandbox::Sandboxes,
}

/// How much of each session's event stream is kept for `session/subscribe {afterSeq}`.
#[derive(Debug, Clone, Copy)]
pub struct ReplayLimits {
    pub events: usize,
    pub bytes: usize,
}

impl Default for ReplayLimits {
    fn default() -> Self {
        // `[daemon] replay_events` and `replay_bytes` as declared.
        let d = crate::config::DaemonSettings::default();
        Self {
            events: d.replay_events,
            bytes: d.replay_bytes,
        }
    }
}

/// One session's live state.
pub struct SessionRt {
    pub id: String,
    /// The session's own model, if it has one (else the daemon default).
    model: Mutex<Option<String>>,
    /// Replaced when a closed workspace is opened again.
    ws: Mutex<Arc<Workspace>>,
    /// Everything that changes with a transition, behind the one lock transitions take.
    inner: Mutex<SessionInner>,
    /// The context budget's memory (correction factor, last compaction announced): only the
    /// driver of the session's one active turn uses it, so it needs no transition's lock.
    budget: Mutex<budget::Memory>,
    /// Held while a turn reads the session's history and while `session/compact` summarises
    /// it, so that a prompt sent during an on-demand compaction reads the summary.
    reading: Arc<tokio::sync::Mutex<()>>,
}

impl SessionRt {
    fn ws(&self) -> Arc<Workspace> {
        lock(&self.ws).clone()
    }
}

struct SessionInner {
    /// Removed from the runtime's map; whoever holds this `Arc` must look the session up again.
    evicted: bool,
    /// Since when the session was seen idle and unwatched (for unloading it alone).
    idle_since: Option<Instant>,
    runs: SessionState<Arc<RunMeta>>,
    events: SessionEvents,
    /// Permission requests of the active run waiting for an answer.
    permissions: PendingPermissions,
}

impl SessionInner {
    /// What `agent/status` and `session/subscribe` report.
    fn status(&self) -> AgentStatusResult {
        match self.runs.active_run() {
            None => idle_status(),
            Some(run) => AgentStatusResult {
                state: if self.permissions.is_empty() {
                    AgentState::Active
                } else {
                    AgentState::WaitingForPermission
                },
                pending_permissions: self.permissions.params(),
                active_run_id: Some(run.run_id.clone()),
                queued: self.runs.waiting().map(|r| r.run_id.clone()).collect(),
            },
        }
    }

    /// Whether anything keeps the session loaded: a run, a subscriber or a pending request.
    fn in_use(&self) -> bool {
        self.runs.is_busy() || self.events.has_subscribers() || !self.permissions.is_empty()
    }
}

fn idle_status() -> AgentStatusResult {
    AgentStatusResult {
        state: AgentState::Idle,
        ..AgentStatusResult::default()
    }
}

/// What a run is, fixed at accept.
#[derive(Debug)]
pub struct RunMeta {
    pub run_id: String,
    pub session_id: String,
    pub prompt: String,
    pub attachments: Vec<Attachment>,
    pub images: Vec<ImageInput>,
    pub model: Arc<dyn Model>,
    /// The connection that sent it: it gets the `$/runComplete` even when not subscribed.
    /// Replaced by the client's new connection when it reconnects with the same `clientId`.
    pub sender: Mutex<Option<Arc<Peer>>>,
    /// Tool calls of this prompt run without asking.
    pub yolo: bool,
    pub created_at: i64,
}

impl RunMeta {
    pub fn sender(&self) -> Option<Arc<Peer>> {
        lock(&self.sender).clone()
    }

    /// The user message's parts.
    fn user_parts(&self) -> Vec<Part> {
        history::user_parts(&self.prompt, &self.attachments, &self.images)
    }
}

impl RunHandle for Arc<RunMeta> {
    fn run_id(&self) -> &str {
        &self.run_id
    }
}

fn shutting_down() -> RpcError {
    RpcError::new(
        ErrorCode::ShuttingDown,
        "the daemon is shutting down and accepts no new runs",
    )
}

impl Runtime {
    pub fn new(store: Store, models: Models, flush_interval: Duration, grace: Duration) -> Self {
        Self {
            store,
            models,
            flush_interval,
            grace,
            agent: AgentSettings::default(),
            shutting_down: AtomicBool::new(false),
            epoch: new_id(),
            workspaces: Mutex::default(),
            sessions: Mutex::default(),
            seqs: Mutex::default(),
            replay: ReplayLimits::default(),
            replay_budget: ReplayBudget::new(
                crate::config::DaemonSettings::default().replay_budget,
            ),
            registry: RunRegistry::default(),
            permissions: Permissions::default(),
            retries: TaskTracker::new(),
            stop_retries: CancellationToken::new(),
            mcp: crate::mcp::Mcp::default(),
            snapshots: None,
            sandboxes: crate::tools::sandbox::Sandboxes::default(),
        }
    }

    /// Sets how `bash` commands are confined (`[sandbox]`).
    pub fn with_sandbox(mut self, settings: crate::config::SandboxSettings) -> Self {
        self.sandboxes = crate::tools::sandbox::Sandboxes::new(settings);
        self
    }

    /// How `bash` commands are confined by the config (`daemon/status`, `model/list`).
    pub fn sandbox_status(&self) -> crush_protocol::SandboxStatus {
        self.sandboxes.status(None)
    }

    /// The sandboxes, with the sessions' saved choices read from the store the first time. A
    /// store that cannot be read is retried at the next call; until then the config applies.
    pub(super) async fn sandboxes(&self) -> &crate::tools::sandbox::Sandboxes {
        let loaded = self
            .sandboxes
            .loaded
            .get_or_try_init(|| async {
                let saved = self.store.session_sandboxes().await?;
                self.sandboxes.restore(saved);
                Ok::<_, crate::store::StoreError>(())
            })
            .await;
        if let Err(e) = loaded {
            tracing::warn!(error = %e, "cannot read the sessions' sandbox choices; the config's applies");
        }
        &self.sandboxes
    }

    /// Sets a session's own sandbox mode and network choice (`None`: the config's), saved in
    /// the store first so that it outlives a restart; returns the session's status now.
    pub async fn set_session_sandbox(
        &self,
        session_id: &str,
        mode: Option<crush_protocol::SandboxMode>,
        network: Option<bool>,
    ) -> Result<crush_protocol::SandboxStatus, RpcError> {
        let sandboxes = self.sandboxes().await;
        let saved = self
            .store
            .set_session_sandbox(session_id, mode.map(|m| m.as_str()), network)
            .await?;
        if !saved {
            return Err(crate::store::StoreError::SessionNotFound(session_id.to_owned()).into());
        }
        sandboxes.set_session(session_id, mode, network);
        Ok(sandboxes.status(Some(session_id)))
    }

    /// Sets the MCP servers runs may use.
    pub fn with_mcp(mut self, mcp: crate::mcp::Mcp) -> Self {
        self.mcp = mcp;
        self
    }

    /// The MCP servers (`mcp/list`, `mcp/restart`, shutdown).
    pub fn mcp(&self) -> &crate::mcp::Mcp {
        &self.mcp
    }

    /// Takes snapshots of the workspaces' files during runs (`session/diff`).
    pub fn with_snapshots(mut self, snapshots: Snapshots) -> Self {
        self.snapshots = Some(Arc::new(snapshots));
        self
    }

    /// The snapshot stores, when snapshots are on.
    pub fn snapshots(&self) -> Option<&Arc<Snapshots>> {
        self.snapshots.as_ref()
    }

    /// Sets how much of each session's stream is kept for replay.
    pub fn with_replay(mut self, replay: ReplayLimits, budget: usize) -> Self {
        self.replay = replay;
        self.replay_budget = ReplayBudget::new(budget);
        self
    }

    /// Sets how runs behave and what tools may do without asking.
    pub fn configure(mut self, agent: AgentSettings, rules: PermissionRules) -> Self {
        self.agent = agent;
        self.permissions = Permissions::new(rules);
        self
    }

    pub fn replay_budget(&self) -> &Arc<ReplayBudget> {
        &self.replay_budget
    }

    /// This process's stream epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn models(&self) -> &Models {
        &self.models
    }

    /// Number of accepted runs that have not completed yet (active, steered or queued).
    pub fn live_runs(&self) -> usize {
        self.registry.live_count()
    }

    /// Changes whenever [`Self::live_runs`] does.
    pub fn watch_live_runs(&self) -> watch::Receiver<usize> {
        self.registry.watch_live()
    }

    /// How many runs have an end waiting to be saved, as it changes.
    pub fn watch_unsaved(&self) -> watch::Receiver<usize> {
        self.registry.watch_unsaved()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// The live state of a session, created on first use.
    fn session(&self, session_id: &str, workspace_id: &str, model: Option<&str>) -> Arc<SessionRt> {
        let mut map = lock(&self.sessions);
        if let Some(s) = map.get(session_id) {
            return s.clone();
        }
        let seq = lock(&self.seqs).get(session_id).copied().unwrap_or(0);
        let inner = SessionInner {
            evicted: false,
            idle_since: None,
            runs: SessionState::default(),
            events: SessionEvents::new(
                session_id,
                seq,
                replay::ReplayLog::new(self.replay, self.replay_budget.clone()),
            ),
            permissions: PendingPermissions::default(),
        };
        let s = Arc::new(SessionRt {
            id: session_id.to_owned(),
            model: Mutex::new(model.map(str::to_owned)),
            ws: Mutex::new(self.workspace(workspace_id)),
            inner: Mutex::new(inner),
            budget: Mutex::default(),
            reading: Arc::default(),
        });
        map.insert(session_id.to_owned(), s.clone());
        s
    }

    fn existing_session(&self, session_id: &str) -> Option<Arc<SessionRt>> {
        lock(&self.sessions).get(session_id).cloned()
    }

    fn sessions_of(&self, workspace_id: Option<&str>) -> Vec<Arc<SessionRt>> {
        lock(&self.sessions)
            .values()
            .filter(|s| workspace_id.is_none_or(|w| lock(&s.ws).id == w))
            .cloned()
            .collect()
    }

    pub async fn status(&self, session_id: &str) -> Result<AgentStatusResult, RpcError> {
        match self.existing_session(session_id) {
            Some(s) => Ok(lock(&s.inner).status()),
            None => {
                self.store.require_session(session_id).await?;
                Ok(idle_status())
            }
        }
    }

    /// Drops a deleted session's live state (its subscribers stop hearing about it).
    pub fn forget_session(&self, session_id: &str) {
        self.permissions.forget_session_rules(session_id);
        self.mcp.forget_session(session_id);
        let mut map = lock(&self.sessions);
        if let Some(s) = map.get(session_id) {
            let mut inner = lock(&s.inner);
            if !inner.runs.is_busy() {
                self.permissions.forget_session(session_id);
                self.sandboxes.forget_session(session_id);
                inner.evicted = true;
                inner.events.forget_subscribers();
                drop(inner);
                map.remove(session_id);
            }
        }
    }

    /// Whether the session has an active or queued run.
    pub fn session_busy(&self, session_id: &str) -> bool {
        self.existing_session(session_id)
            .is_some_and(|s| lock(&s.inner).runs.is_busy())
    }

    /// The session's model changed: the next runs use it.
    pub fn set_session_model(&self, session_id: &str, model: Option<&str>) {
        if let Some(s) = self.existing_session(session_id) {
            *lock(&s.model) = model.map(str::to_owned);
        }
    }

    /// The session's title or model changed: its subscribers hear it (`sessionUpdated`, kept
    /// for replay like every event). A session without live state has no subscriber to tell.
    pub fn session_updated(&self, session_id: &str, title: &str, model: Option<&str>) {
        if let Some(s) = self.existing_session(session_id) {
            lock(&s.inner).events.publish(
                None,
                SessionEvent::SessionUpdated {
                    title: title.to_owned(),
                    model: model.map(str::to_owned),
                },
            );
        }
    }

    /// `session/fork` copied the session into `fork_id`: its subscribers hear it (`forked`).
    pub fn forked(&self, session_id: &str, fork_id: &str, message_id: Option<&str>) {
        if let Some(s) = self.existing_session(session_id) {
            lock(&s.inner).events.publish(
                None,
                SessionEvent::Forked {
                    fork_session_id: fork_id.to_owned(),
                    message_id: message_id.map(str::to_owned),
                },
            );
        }
    }

    /// A client is on a new connection: the runs its closed connections sent report their
    /// `$/runComplete` to the new one. See [`RunRegistry::rebind_sender`].
    pub fn rebind_sender(&self, client_id: &str, to: &Arc<Peer>) -> usize {
        self.registry.rebind_sender(client_id, to)
    }

    /// A run's state as `run/get` shows it while the database does not know it yet: live, or
    /// ended but not saved. `None`: ask the database.
    pub fn live_run(&self, run_id: &str) -> Option<crush_protocol::RunInfo> {
        self.registry.lookup(run_id)
    }
}
