//! Runs: accepting prompts, the per-session queue, cancellation, and the one `$/runComplete` of
//! every accepted run. The [`Runtime`] owns the live state of every workspace and session; the
//! turn itself (model stream → deltas → database) is in [`driver`].
//!
//! Architecture invariant: every transition of a session — accept (idle → active, or → queued),
//! cancel, the fold of steered prompts at a step boundary, a turn's end and the hand-off to the
//! next queued run — happens synchronously under that session's lock, and `agent/send` answers
//! only after its transition. A cancel therefore sees every run accepted before it, as the active
//! run (its token is registered before the answer) or in the queue; there is no
//! accepted-but-unregistered window to cover. See ARCHITECTURE.md ("Runs") for the argument.
//!
//! Architecture invariant: a run's events are published under its session's lock, and a delta
//! is published only if the run's token is not cancelled at that moment. Cancel fires the token
//! under the same lock, so no delta of a run follows the event that announced its cancel.
//!
//! Lock order: workspace gate → session → run registry. No lock is held across an `.await`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, warn};

use crush_protocol::message::encode_notification;
use crush_protocol::{
    AgentCancelResult, AgentSendParams, AgentSendResult, AgentStatusResult, Attachment,
    BusySession, ErrorCode, Notification, PermissionDecision, PermissionRequestParams,
    PermissionRequestResult, PermissionResolvedParams, RequestId, RpcError, RunCompleteParams,
    RunInfo, SendMode, SessionEvent, SessionSubscribeParams, SessionSubscribeResult,
    SessionUpdateParams, StreamingMessage, daemon_notification, daemon_request,
};

use crate::config::{AgentSettings, PermissionRules};
use crate::handlers::{require_session, session_not_found, storage};
use crate::model::{Model, Models};
use crate::outbound::{Delta, EventItem};
use crate::peer::Peer;
use crate::store::{NewRun, Store, new_id, now_ms};
use crate::sync::lock;
pub use replay::ReplayBudget;
use replay::ReplayLog;

mod driver;
mod late;
mod prompt;
mod replay;
#[allow(dead_code)] // Wired into the runtime by the runs/ restructuring that follows.
mod state;
#[cfg(test)]
mod tests;

/// Longest client-supplied run id.
pub const MAX_RUN_ID_LEN: usize = 128;

/// Live state of every workspace, session and run of the daemon.
pub struct Runtime {
    store: Store,
    models: Models,
    flush_interval: Duration,
    grace: Duration,
    shutting_down: AtomicBool,
    workspaces: Mutex<HashMap<String, Arc<Workspace>>>,
    sessions: Mutex<HashMap<String, Arc<SessionRt>>>,
    runs: Mutex<HashMap<String, LiveRun>>,
    /// Number of runs in the registry (accepted and not yet complete).
    live: watch::Sender<usize>,
    agent: AgentSettings,
    rules: PermissionRules,
    /// Per-session permission state (yolo, tools allowed for the session). Kept for the
    /// daemon's lifetime, outside the evictable live state: a restarted daemon asks again.
    grants: Mutex<HashMap<String, Grants>>,
    /// Permission requests answered lately, so a late answer learns who answered first.
    resolved: Mutex<VecDeque<(String, String)>>,
    /// This process's stream epoch: seqs are comparable only within it.
    epoch: String,
    /// The last seq of every session whose live state was unloaded, so seqs never go back
    /// within one epoch.
    seqs: Mutex<HashMap<String, u64>>,
    replay: ReplayLimits,
    /// What every session's replay log holds together (`[daemon] replay_budget`).
    replay_budget: Arc<ReplayBudget>,
    /// Runs that ended but whose end could not be saved yet (`late.rs`), for `run/get`.
    unsaved: Mutex<HashMap<String, RunInfo>>,
    /// How many runs `unsaved` holds.
    unsaved_count: watch::Sender<usize>,
    /// The retries of those writes; stopped by `stop_repairs` at shutdown.
    repairs: TaskTracker,
    stop_repairs: CancellationToken,
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

#[derive(Debug, Clone, Default)]
struct Grants {
    yolo: bool,
    tools: HashSet<String>,
}

/// How many answered permission requests are remembered for late answers.
const RESOLVED_MEMORY: usize = 1024;

/// A tool call waiting for a client's answer.
struct PendingPermission {
    params: PermissionRequestParams,
    /// Every connection it was sent to, with that connection's request id.
    sent: Vec<(Arc<Peer>, RequestId)>,
    /// The decision, or `None` when a cancel withdrew the request.
    answer: oneshot::Sender<Option<PermissionDecision>>,
}

/// A workspace's run ownership: every run task of the workspace is on `tracker` and cancelled
/// through `token`. `closing` is set once, under the gate, and never cleared (a reopened
/// workspace gets a new `Workspace`).
pub struct Workspace {
    pub id: String,
    token: CancellationToken,
    tracker: TaskTracker,
    gate: Mutex<bool>,
    /// Since when the workspace was seen with nothing keeping it loaded.
    idle_since: Mutex<Option<Instant>>,
}

impl Workspace {
    fn new(id: &str) -> Arc<Self> {
        Arc::new(Self {
            id: id.to_owned(),
            token: CancellationToken::new(),
            tracker: TaskTracker::new(),
            gate: Mutex::new(false),
            idle_since: Mutex::new(None),
        })
    }

    fn is_closing(&self) -> bool {
        *lock(&self.gate)
    }
}

/// One session's live state.
pub struct SessionRt {
    pub id: String,
    /// The session's own model, if it has one (else the daemon default).
    model: Mutex<Option<String>>,
    /// Replaced when a closed workspace is opened again.
    ws: Mutex<Arc<Workspace>>,
    inner: Mutex<SessionInner>,
}

#[derive(Default)]
struct SessionInner {
    /// Removed from the runtime's map; whoever holds this `Arc` must look the session up again.
    evicted: bool,
    /// The session id, shared by every queued event.
    sid: Arc<str>,
    seq: u64,
    /// The last events, oldest first, for replay.
    log: ReplayLog,
    /// The assistant message being streamed, as of `seq`.
    streaming: Option<StreamingMessage>,
    /// Since when the session was seen idle and unwatched (for unloading it alone).
    idle_since: Option<Instant>,
    subscribers: BTreeMap<u64, Arc<Peer>>,
    active: Option<Active>,
    queue: VecDeque<Queued>,
    /// Permission requests of the active run waiting for an answer.
    permissions: Vec<PendingPermission>,
}

struct Active {
    run: Arc<RunMeta>,
    token: CancellationToken,
    /// A cancel already covered this run (its token may also fire through the workspace's).
    cancel_requested: bool,
    /// Steered prompts waiting for the next step boundary.
    steered: Vec<Arc<RunMeta>>,
    /// False once the turn has passed its last step boundary: later steers queue instead.
    accepting_steer: bool,
}

impl Active {
    /// Fires the run's token unless a cancel already covered it; whether this call did.
    fn request_cancel(&mut self) -> bool {
        if self.cancel_requested {
            return false;
        }
        self.cancel_requested = true;
        self.token.cancel();
        true
    }
}

struct Queued {
    run: Arc<RunMeta>,
    /// A steer that missed its turn runs next, ahead of plain queued prompts.
    steer: bool,
}

/// What a run is, fixed at accept.
#[derive(Debug)]
pub struct RunMeta {
    pub run_id: String,
    pub session_id: String,
    pub prompt: String,
    pub attachments: Vec<Attachment>,
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
    fn user_parts(&self) -> Value {
        user_parts(&self.prompt, &self.attachments)
    }
}

#[derive(Debug, Clone)]
struct LiveRun {
    /// The run itself, so a reconnecting client's runs can be found until they complete.
    meta: Arc<RunMeta>,
    session_id: String,
    prompt: String,
    state: &'static str,
    created_at: i64,
    started_at: Option<i64>,
    folded_into: Option<String>,
}

/// The parts of a user message: the prompt as text, then each attachment.
pub fn user_parts(prompt: &str, attachments: &[Attachment]) -> Value {
    let mut parts = Vec::new();
    if !prompt.is_empty() {
        parts.push(json!({"type": "text", "text": prompt}));
    }
    for a in attachments {
        let mut p = json!({"type": "attachment", "text": a.text});
        if let Some(n) = &a.name {
            p["name"] = json!(n);
        }
        if let Some(m) = &a.mime_type {
            p["mimeType"] = json!(m);
        }
        parts.push(p);
    }
    Value::Array(parts)
}

/// What the model is shown for a user message's parts: the text, then each attachment wrapped
/// with its name.
pub fn user_content(parts: &Value) -> String {
    let mut out = String::new();
    for p in parts.as_array().into_iter().flatten() {
        let text = p["text"].as_str().unwrap_or_default();
        match p["type"].as_str() {
            Some("text") => {
                if !out.is_empty() {
                    out.push_str("\n\n");
                }
                out.push_str(text);
            }
            Some("attachment") => {
                if !out.is_empty() {
                    out.push_str("\n\n");
                }
                let name = p["name"].as_str().unwrap_or("attachment");
                out.push_str(&format!(
                    "<attachment name={name:?}>\n{text}\n</attachment>"
                ));
            }
            _ => {}
        }
    }
    out
}

fn shutting_down() -> RpcError {
    RpcError::new(
        ErrorCode::ShuttingDown,
        "the daemon is shutting down and accepts no new runs",
    )
}

/// What `send` needs of a session.
struct KnownSession {
    id: String,
    workspace_id: String,
    model: Option<String>,
}

/// How a send relates to a run id that already exists.
enum Existing {
    New,
    Same(AgentSendResult),
}

impl Runtime {
    pub fn new(store: Store, models: Models, flush_interval: Duration, grace: Duration) -> Self {
        Self {
            store,
            models,
            flush_interval,
            grace,
            shutting_down: AtomicBool::new(false),
            workspaces: Mutex::default(),
            sessions: Mutex::default(),
            runs: Mutex::default(),
            live: watch::Sender::new(0),
            agent: AgentSettings::default(),
            rules: PermissionRules::default(),
            grants: Mutex::default(),
            resolved: Mutex::default(),
            epoch: new_id(),
            seqs: Mutex::default(),
            replay: ReplayLimits::default(),
            replay_budget: ReplayBudget::new(
                crate::config::DaemonSettings::default().replay_budget,
            ),
            unsaved: Mutex::default(),
            unsaved_count: watch::Sender::new(0),
            repairs: TaskTracker::new(),
            stop_repairs: CancellationToken::new(),
        }
    }

    /// Sets how much of each session's stream is kept for replay.
    pub fn with_replay(mut self, replay: ReplayLimits, budget: usize) -> Self {
        self.replay = replay;
        self.replay_budget = ReplayBudget::new(budget);
        self
    }

    pub fn replay_budget(&self) -> &Arc<ReplayBudget> {
        &self.replay_budget
    }

    /// Brings every replay log together back under the budget, oldest events first whichever
    /// session holds them: each pass takes the log holding the oldest event anywhere and drops
    /// its events up to the next log's oldest. One session lock is held at a time.
    pub fn trim_replay(&self) -> usize {
        let budget = &self.replay_budget;
        let target = budget.trim_target();
        let sessions = self.sessions_of(None);
        let mut dropped = 0;
        while budget.used() > target {
            let mut stamps: Vec<(u64, usize)> = sessions
                .iter()
                .enumerate()
                .filter_map(|(i, s)| lock(&s.inner).log.oldest_stamp().map(|t| (t, i)))
                .collect();
            stamps.sort_unstable();
            let Some(&(_, oldest)) = stamps.first() else {
                break;
            };
            let next = stamps.get(1).map_or(u64::MAX, |(t, _)| *t);
            let mut inner = lock(&sessions[oldest].inner);
            while budget.used() > target && inner.log.oldest_stamp().is_some_and(|t| t <= next) {
                inner.log.drop_oldest();
                dropped += 1;
            }
        }
        dropped
    }

    /// This process's stream epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Sets how runs behave and what tools may do without asking.
    pub fn configure(mut self, agent: AgentSettings, rules: PermissionRules) -> Self {
        self.agent = agent;
        self.rules = rules;
        self
    }

    pub fn models(&self) -> &Models {
        &self.models
    }

    /// Number of accepted runs that have not completed yet (active, steered or queued).
    pub fn live_runs(&self) -> usize {
        *self.live.borrow()
    }

    /// Changes whenever [`Self::live_runs`] does.
    pub fn watch_live_runs(&self) -> watch::Receiver<usize> {
        self.live.subscribe()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    fn workspace(&self, id: &str) -> Arc<Workspace> {
        lock(&self.workspaces)
            .entry(id.to_owned())
            .or_insert_with(|| Workspace::new(id))
            .clone()
    }

    /// Loads a workspace, and makes a closed one accept runs again (`workspace/open`).
    pub fn reopen_workspace(&self, id: &str) {
        let fresh = {
            let mut map = lock(&self.workspaces);
            if self.is_shutting_down() {
                return;
            }
            if !map.get(id).is_some_and(|w| w.is_closing()) {
                map.entry(id.to_owned())
                    .or_insert_with(|| Workspace::new(id));
                return;
            }
            let fresh = Workspace::new(id);
            map.insert(id.to_owned(), fresh.clone());
            fresh
        };
        for s in lock(&self.sessions).values() {
            let mut ws = lock(&s.ws);
            if ws.id == id {
                *ws = fresh.clone();
            }
        }
    }

    /// The live state of a session, created on first use.
    fn session(&self, session_id: &str, workspace_id: &str, model: Option<&str>) -> Arc<SessionRt> {
        let mut map = lock(&self.sessions);
        if let Some(s) = map.get(session_id) {
            return s.clone();
        }
        let inner = SessionInner {
            sid: Arc::from(session_id),
            seq: lock(&self.seqs).get(session_id).copied().unwrap_or(0),
            log: ReplayLog::new(self.replay, self.replay_budget.clone()),
            ..SessionInner::default()
        };
        let s = Arc::new(SessionRt {
            id: session_id.to_owned(),
            model: Mutex::new(model.map(str::to_owned)),
            ws: Mutex::new(self.workspace(workspace_id)),
            inner: Mutex::new(inner),
        });
        map.insert(session_id.to_owned(), s.clone());
        s
    }

    fn existing_session(&self, session_id: &str) -> Option<Arc<SessionRt>> {
        lock(&self.sessions).get(session_id).cloned()
    }

    // ---- agent/send ----

    /// Validates and accepts a prompt. Returns once the run is active or queued; never waits
    /// for the model or the disk (beyond reading the session).
    pub async fn send(
        self: &Arc<Self>,
        sender: Option<Arc<Peer>>,
        p: AgentSendParams,
    ) -> Result<AgentSendResult, RpcError> {
        if p.prompt.trim().is_empty() && !p.attachments.iter().any(|a| !a.text.trim().is_empty()) {
            return Err(RpcError::invalid_params(
                "invalid params: prompt: must not be empty (or attach text)",
            ));
        }
        if let Some(id) = &p.run_id
            && (id.trim().is_empty()
                || id.len() > MAX_RUN_ID_LEN
                || id.chars().any(char::is_control))
        {
            return Err(RpcError::invalid_params(format!(
                "invalid params: runId: must be 1 to {MAX_RUN_ID_LEN} characters without control characters"
            )));
        }
        // A session with live state (busy or watched) is known to exist: no database read.
        let session = match self.existing_session(&p.session_id) {
            Some(s) => KnownSession {
                id: s.id.clone(),
                workspace_id: s.ws().id.clone(),
                model: lock(&s.model).clone(),
            },
            None => {
                let row = require_session(&self.store, &p.session_id).await?;
                KnownSession {
                    id: row.id,
                    workspace_id: row.workspace_id,
                    model: row.model,
                }
            }
        };
        if self.is_shutting_down() {
            return Err(shutting_down());
        }
        let run_id = p.run_id.clone().unwrap_or_else(new_id);
        if p.run_id.is_some()
            && let Some(r) = self.known_run(&run_id, &session.id, &p.prompt).await?
        {
            return Ok(r);
        }
        let requested = p.model.as_deref().map(str::trim).filter(|m| !m.is_empty());
        let model = self
            .models
            .resolve(requested.or(session.model.as_deref()))?;
        let run = Arc::new(RunMeta {
            run_id: run_id.clone(),
            session_id: session.id.clone(),
            prompt: p.prompt,
            attachments: p.attachments,
            model,
            sender: Mutex::new(sender),
            yolo: p.yolo,
            created_at: now_ms(),
        });
        // Durable accept: the run's row is committed before anything else sees the run, so an
        // acknowledged run survives a crash, and a full disk refuses the send instead of
        // accepting a run that could never be recorded. A row with this id already there is the
        // same prompt sent again (answered as before) or another one (DuplicateRunId); no live
        // run lacks a row, so a fresh insert also means no live run has this id.
        let fresh = self
            .store
            .accept_run(NewRun {
                run_id: run_id.clone(),
                session_id: session.id.clone(),
                prompt: run.prompt.clone(),
                user_parts: run.user_parts().to_string(),
                created_at: run.created_at,
            })
            .await
            .map_err(storage)?;
        if !fresh {
            return self.already_accepted(&run).await;
        }
        loop {
            let s = self.session(&session.id, &session.workspace_id, session.model.as_deref());
            let ws = s.ws();
            let admitted = {
                let gate = lock(&ws.gate);
                if self.is_shutting_down() {
                    Err(shutting_down())
                } else if *gate {
                    Err(RpcError::new(
                        ErrorCode::WorkspaceClosing,
                        format!(
                            "workspace {} is closing; open it again with workspace/open",
                            ws.id
                        ),
                    ))
                } else {
                    let mut inner = lock(&s.inner);
                    if inner.evicted {
                        continue;
                    }
                    let mut runs = lock(&self.runs);
                    if let Some(live) = runs.get(&run_id) {
                        return same_or_duplicate(&run, live.state, &live.session_id, &live.prompt);
                    }
                    runs.insert(
                        run_id.clone(),
                        LiveRun {
                            meta: run.clone(),
                            session_id: run.session_id.clone(),
                            prompt: run.prompt.clone(),
                            state: "queued",
                            created_at: run.created_at,
                            started_at: None,
                            folded_into: None,
                        },
                    );
                    self.live.send_replace(runs.len());
                    Ok(self.admit(&s, &ws, &mut inner, &mut runs, run.clone(), p.mode))
                }
            };
            return match admitted {
                Ok(state) => Ok(AgentSendResult {
                    run_id,
                    state: state.to_owned(),
                }),
                Err(e) => {
                    self.withdraw_accept(&run_id).await;
                    Err(e)
                }
            };
        }
    }

    /// The answer to a send whose run id is taken (its row exists).
    async fn already_accepted(&self, run: &RunMeta) -> Result<AgentSendResult, RpcError> {
        self.known_run(&run.run_id, &run.session_id, &run.prompt)
            .await?
            // The row went with its session between the insert and this read.
            .ok_or_else(|| session_not_found(&run.session_id))
    }

    /// A run with this id, as an answer to sending it again: the live run's state, else the
    /// database's; `DuplicateRunId` when the id belongs to another prompt or session.
    async fn known_run(
        &self,
        run_id: &str,
        session_id: &str,
        prompt: &str,
    ) -> Result<Option<AgentSendResult>, RpcError> {
        let probe = SameProbe {
            session_id,
            prompt,
            run_id,
        };
        let live = lock(&self.runs)
            .get(run_id)
            .map(|l| (l.state, l.session_id.clone(), l.prompt.clone()));
        if let Some((state, session_id, prompt)) = live {
            return probe.check(state, &session_id, &prompt).map(Some);
        }
        match self.existing_in_db(run_id, session_id, prompt).await? {
            // Written by a concurrent send of the same request that has not admitted it yet.
            Existing::Same(mut r) if r.state == "accepted" => {
                r.state = "queued".to_owned();
                Ok(Some(r))
            }
            Existing::Same(r) => Ok(Some(r)),
            Existing::New => Ok(None),
        }
    }

    /// Removes the row of a run that was written but then refused (the workspace closed or the
    /// daemon began shutting down in between): the client is told it was not accepted. Should
    /// this delete fail too, the next start marks the row `interrupted`.
    async fn withdraw_accept(&self, run_id: &str) {
        if let Err(e) = self.store.withdraw_accept(run_id).await {
            warn!(run = %run_id, error = %e, "cannot remove a refused run's row");
        }
    }

    /// The accept transition, under the gate, the session lock and the registry lock.
    fn admit(
        self: &Arc<Self>,
        s: &Arc<SessionRt>,
        ws: &Workspace,
        inner: &mut SessionInner,
        runs: &mut HashMap<String, LiveRun>,
        run: Arc<RunMeta>,
        mode: SendMode,
    ) -> &'static str {
        match &mut inner.active {
            None => {
                let token = inner.activate(&s.id, ws, runs, run.clone());
                let rt = self.clone();
                let s2 = s.clone();
                // The run is not the request's: its span has no parent.
                let span = tracing::info_span!(parent: None, "session", id = %s.id);
                ws.tracker
                    .spawn(async move { rt.drive(s2, run, token).await }.instrument(span));
                "running"
            }
            Some(active)
                if mode == SendMode::Steer
                    && active.accepting_steer
                    && !active.token.is_cancelled() =>
            {
                active.steered.push(run.clone());
                let position = active.steered.len() as u32 - 1;
                inner.publish(
                    &s.id,
                    Some(&run.run_id),
                    SessionEvent::RunQueued {
                        position,
                        steer: true,
                    },
                );
                "queued"
            }
            Some(active) => {
                let steer = mode == SendMode::Steer;
                let at = if steer {
                    inner.queue.iter().take_while(|q| q.steer).count()
                } else {
                    inner.queue.len()
                };
                let position = (active.steered.len() + at) as u32;
                inner.queue.insert(
                    at,
                    Queued {
                        run: run.clone(),
                        steer,
                    },
                );
                inner.publish(
                    &s.id,
                    Some(&run.run_id),
                    SessionEvent::RunQueued { position, steer },
                );
                "queued"
            }
        }
    }

    /// Looks a client-supplied run id up in the database.
    async fn existing_in_db(
        &self,
        run_id: &str,
        session_id: &str,
        prompt: &str,
    ) -> Result<Existing, RpcError> {
        let probe = SameProbe {
            session_id,
            prompt,
            run_id,
        };
        // Ended, but the database does not know yet (`late.rs`): the run is not new.
        if let Some(info) = self.unsaved_run(run_id) {
            return probe
                .check(&info.state, &info.session_id, &info.prompt)
                .map(Existing::Same);
        }
        match self.store.get_run(run_id).await.map_err(storage)? {
            None => Ok(Existing::New),
            Some(row) => {
                let state: &str = &row.state;
                probe
                    .check(state, &row.session_id, &row.prompt)
                    .map(Existing::Same)
            }
        }
    }

    // ---- agent/cancel, agent/status ----

    /// Cancels the active run and every prompt accepted before this call, or with `run_id` that
    /// run alone. Returns the runs it ended (empty when there was nothing left to cancel).
    pub async fn cancel(
        self: &Arc<Self>,
        session_id: &str,
        run_id: Option<&str>,
    ) -> Result<AgentCancelResult, RpcError> {
        let live = self.existing_session(session_id);
        if let Some(run_id) = run_id {
            let foreign = |owner: &str| {
                RpcError::invalid_params(format!(
                    "run {run_id:?} belongs to session {owner:?}, not {session_id:?}"
                ))
            };
            if let Some(info) = self.live_run(run_id) {
                if info.session_id != session_id {
                    require_session(&self.store, session_id).await?;
                    return Err(foreign(&info.session_id));
                }
                // Not found under the session lock: it ended (or a cancel took it) meanwhile.
                let cancelled = live
                    .as_ref()
                    .and_then(|s| self.cancel_run(s, run_id))
                    .unwrap_or_default();
                return Ok(AgentCancelResult { cancelled });
            }
            // Not live: an ended run of the session cancels nothing.
            return match self.store.get_run(run_id).await.map_err(storage)? {
                Some(row) if row.session_id == session_id => Ok(AgentCancelResult::default()),
                Some(row) => Err(foreign(&row.session_id)),
                None => {
                    require_session(&self.store, session_id).await?;
                    Err(RpcError::new(
                        ErrorCode::RunNotFound,
                        format!("no run with id {run_id:?}"),
                    ))
                }
            };
        }
        let Some(s) = live else {
            require_session(&self.store, session_id).await?;
            return Ok(AgentCancelResult::default());
        };
        Ok(AgentCancelResult {
            cancelled: self.cancel_session(&s),
        })
    }

    /// Cancels one live run of the session: the active one (a prompt folded into it counts as
    /// it), a steered prompt waiting for a step boundary, or a queued prompt. Everything else in
    /// the session goes on; steered prompts of a cancelled active run run next as their own
    /// runs. `None` when the run is not live in this session.
    fn cancel_run(self: &Arc<Self>, s: &Arc<SessionRt>, run_id: &str) -> Option<Vec<String>> {
        let mut covered = Vec::new();
        let mut dropped = Vec::new();
        {
            let mut inner = lock(&s.inner);
            // Session lock, then registry lock: the order `admit` takes them in.
            let target = match lock(&self.runs).get(run_id) {
                Some(l) => l.folded_into.clone().unwrap_or_else(|| run_id.to_owned()),
                None => return None,
            };
            let mut found = false;
            let mut active_cancelled = false;
            if let Some(active) = &mut inner.active {
                if active.run.run_id == target {
                    found = true;
                    if active.request_cancel() {
                        covered.push(target.clone());
                        active_cancelled = true;
                    }
                } else if let Some(i) = active.steered.iter().position(|r| r.run_id == target) {
                    found = true;
                    dropped.push(active.steered.remove(i));
                }
            }
            if !found && let Some(i) = inner.queue.iter().position(|q| q.run.run_id == target) {
                found = true;
                dropped.extend(inner.queue.remove(i).map(|q| q.run));
            }
            if !found {
                return None;
            }
            covered.extend(dropped.iter().map(|r| r.run_id.clone()));
            let withdrawn = if active_cancelled {
                let (theirs, others) = std::mem::take(&mut inner.permissions)
                    .into_iter()
                    .partition(|p| p.params.run_id == target);
                inner.permissions = others;
                theirs
            } else {
                Vec::new()
            };
            self.announce_cancel(&s.id, &mut inner, withdrawn, &covered);
        }
        self.complete_dropped_later(s, dropped);
        Some(covered)
    }

    /// The shared end of a cancel, under the session lock: withdraws the permission requests
    /// of the cancelled run, then publishes `cancelRequested` for every run covered.
    fn announce_cancel(
        &self,
        session_id: &str,
        inner: &mut SessionInner,
        withdrawn: Vec<PendingPermission>,
        covered: &[String],
    ) {
        for p in withdrawn {
            self.finish_permission(inner, p, None, "cancel");
        }
        if let Some(first) = covered.first() {
            inner.publish(
                session_id,
                Some(first),
                SessionEvent::CancelRequested {
                    run_ids: covered.to_vec(),
                },
            );
        }
    }

    /// Records and completes dropped prompts on the workspace's tracker (outside the lock).
    fn complete_dropped_later(self: &Arc<Self>, s: &Arc<SessionRt>, dropped: Vec<Arc<RunMeta>>) {
        if dropped.is_empty() {
            return;
        }
        let rt = self.clone();
        let s2 = s.clone();
        s.ws()
            .tracker
            .spawn(async move { rt.complete_dropped(&s2, dropped).await });
    }

    fn cancel_session(self: &Arc<Self>, s: &Arc<SessionRt>) -> Vec<String> {
        let mut covered = Vec::new();
        let mut dropped = Vec::new();
        {
            let mut inner = lock(&s.inner);
            if let Some(active) = &mut inner.active {
                if active.request_cancel() {
                    covered.push(active.run.run_id.clone());
                }
                dropped.append(&mut active.steered);
            }
            dropped.extend(inner.queue.drain(..).map(|q| q.run));
            covered.extend(dropped.iter().map(|r| r.run_id.clone()));
            let withdrawn = std::mem::take(&mut inner.permissions);
            self.announce_cancel(&s.id, &mut inner, withdrawn, &covered);
        }
        self.complete_dropped_later(s, dropped);
        covered
    }

    /// Records runs dropped from the queue as cancelled, then sends their `$/runComplete`.
    async fn complete_dropped(self: &Arc<Self>, s: &Arc<SessionRt>, dropped: Vec<Arc<RunMeta>>) {
        let write = late::LateWrite::Ends(
            dropped
                .iter()
                .map(|r| late::OwnedEnd {
                    run_id: r.run_id.clone(),
                    session_id: r.session_id.clone(),
                    prompt: r.prompt.clone(),
                    state: "cancelled",
                    error: None,
                })
                .collect(),
        );
        let error = match self.write_end(&write).await {
            Ok(()) => None,
            Err(e) => {
                let error = format!("the cancelled run could not be recorded: {e}");
                let infos = self.ended_infos(&write, "cancelled", Some(&error), None);
                self.save_later(write, infos);
                Some(error)
            }
        };
        let mut inner = lock(&s.inner);
        self.retire(dropped.iter().map(|r| r.run_id.as_str()));
        for r in &dropped {
            inner.publish(
                &s.id,
                Some(&r.run_id),
                SessionEvent::RunFinished {
                    state: "cancelled".to_owned(),
                    error: error.clone(),
                    message_id: None,
                },
            );
            inner.complete(
                RunCompleteParams {
                    session_id: s.id.clone(),
                    run_id: r.run_id.clone(),
                    error: error.clone(),
                    cancelled: true,
                    ..Default::default()
                },
                r.sender().as_ref(),
            );
        }
    }

    /// Removes runs from the registry (their terminal state is in the database by now).
    fn retire<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut runs = lock(&self.runs);
        for id in ids {
            runs.remove(id);
        }
        self.live.send_replace(runs.len());
    }

    pub async fn status(&self, session_id: &str) -> Result<AgentStatusResult, RpcError> {
        match self.existing_session(session_id) {
            Some(s) => Ok(lock(&s.inner).status()),
            None => {
                require_session(&self.store, session_id).await?;
                Ok(idle_status())
            }
        }
    }

    /// Drops a deleted session's live state (its subscribers stop hearing about it).
    pub fn forget_session(&self, session_id: &str) {
        let mut map = lock(&self.sessions);
        if let Some(s) = map.get(session_id) {
            let mut inner = lock(&s.inner);
            if inner.active.is_none() && inner.queue.is_empty() {
                lock(&self.grants).remove(session_id);
                inner.evicted = true;
                for p in inner.subscribers.values() {
                    p.remove_subscription(session_id);
                }
                drop(inner);
                map.remove(session_id);
            }
        }
    }

    /// Whether the session has an active or queued run.
    pub fn session_busy(&self, session_id: &str) -> bool {
        self.existing_session(session_id).is_some_and(|s| {
            let inner = lock(&s.inner);
            inner.active.is_some() || !inner.queue.is_empty()
        })
    }

    /// A live run's state, or `None` when the run is not live (ask the database).
    pub fn live_run(&self, run_id: &str) -> Option<RunInfo> {
        let live = lock(&self.runs).get(run_id).map(|l| RunInfo {
            run_id: run_id.to_owned(),
            session_id: l.session_id.clone(),
            state: l.state.to_owned(),
            prompt: l.prompt.clone(),
            error: None,
            user_message_id: None,
            assistant_message_id: None,
            created_at: l.created_at,
            started_at: l.started_at,
            finished_at: None,
            folded_into: l.folded_into.clone(),
        });
        live.or_else(|| self.unsaved_run(run_id))
    }

    // ---- subscriptions ----

    /// Subscribes a connection to a session: replays what followed `afterSeq` from the log
    /// (or answers `resync`), then the connection is a live subscriber. Replay and registration
    /// happen under the session lock that publishing takes, so the replay ends exactly where
    /// the live stream begins.
    pub async fn subscribe(
        self: &Arc<Self>,
        peer: &Arc<Peer>,
        p: &SessionSubscribeParams,
    ) -> Result<SessionSubscribeResult, RpcError> {
        let row = require_session(&self.store, &p.session_id).await?;
        loop {
            let s = self.session(&row.id, &row.workspace_id, row.model.as_deref());
            let mut inner = lock(&s.inner);
            if inner.evicted {
                continue;
            }
            let mut resync = false;
            let mut replayed = 0u64;
            let already = inner.subscribers.contains_key(&peer.id);
            let mut replay_from = None;
            if let Some(after) = p.after_seq {
                let other_epoch = p.epoch.as_deref().is_some_and(|e| e != self.epoch);
                if other_epoch || after > inner.seq {
                    resync = true;
                } else if after < inner.seq {
                    match inner.log.first() {
                        Some(first) if first.seq <= after + 1 => replay_from = Some(after),
                        _ => resync = true,
                    }
                }
            }
            // Where this connection's copy of the stream now starts, for a restore after a
            // drop: set before the replay is queued. A repeated subscribe never moves it past
            // events still queued for the connection.
            let start = replay_from.unwrap_or(inner.seq);
            let cursor = match (already, peer.outbound().written().get(&*inner.sid)) {
                (true, Some(&had)) => had.min(start),
                _ => start,
            };
            peer.outbound().set_cursor(&inner.sid, cursor);
            if let Some(after) = replay_from {
                for e in inner.log.iter().filter(|e| e.seq > after) {
                    if !peer.send_event(e) {
                        // The connection closed (or overflowed): stop holding the lock for it.
                        break;
                    }
                    replayed += 1;
                }
            }
            let new = inner.subscribers.insert(peer.id, peer.clone()).is_none();
            peer.add_subscription(&row.id);
            // Requests are not lost because nobody was connected: a new subscriber gets every
            // pending one at once.
            if new {
                let ws = s.ws();
                for p in &mut inner.permissions {
                    self.send_permission_request(&ws, p, peer);
                }
            }
            let streaming = if p.after_seq.is_none() || resync {
                inner.streaming.clone()
            } else {
                None
            };
            return Ok(SessionSubscribeResult {
                seq: inner.seq,
                epoch: self.epoch.clone(),
                resync,
                replayed,
                status: inner.status(),
                streaming,
            });
        }
    }

    pub async fn unsubscribe(&self, peer: &Peer, session_id: &str) -> Result<bool, RpcError> {
        let removed = peer.remove_subscription(session_id);
        if let Some(s) = self.existing_session(session_id) {
            let was = {
                let mut inner = lock(&s.inner);
                // Its copies of pending prompts are withdrawn: it no longer speaks for the session.
                for p in &mut inner.permissions {
                    p.sent.retain(|(to, id)| {
                        if to.id == peer.id {
                            to.abandon_request(id);
                        }
                        to.id != peer.id
                    });
                }
                inner.subscribers.remove(&peer.id).is_some()
            };
            return Ok(was || removed);
        }
        if !removed {
            require_session(&self.store, session_id).await?;
        }
        Ok(removed)
    }

    /// Forgets a closed connection's subscriptions.
    pub fn disconnect(&self, peer: &Peer) {
        for id in peer.take_subscriptions() {
            if let Some(s) = self.existing_session(&id) {
                lock(&s.inner).subscribers.remove(&peer.id);
            }
        }
    }

    /// A client is on a new connection: the runs its closed connections sent report their
    /// `$/runComplete` to the new one. Runs stay in the registry until they complete (under the
    /// lock that sends the complete), so none is missed: active, steered, folded, queued, or
    /// dropped and not yet recorded. A sender that is still open keeps its runs.
    pub fn rebind_sender(&self, client_id: &str, to: &Arc<Peer>) -> usize {
        let mut moved = 0;
        for live in lock(&self.runs).values() {
            let mut sender = lock(&live.meta.sender);
            if sender
                .as_ref()
                .is_some_and(|p| p.id != to.id && p.is_closed() && p.client_id() == client_id)
            {
                *sender = Some(to.clone());
                moved += 1;
            }
        }
        moved
    }

    // ---- loading and unloading ----

    /// Whether the workspace's live state is in memory.
    pub fn is_loaded(&self, workspace_id: &str) -> bool {
        lock(&self.workspaces).contains_key(workspace_id)
    }

    /// Sessions of a workspace with an active or queued run.
    pub fn busy_sessions(&self, workspace_id: &str) -> Vec<BusySession> {
        let mut out: Vec<BusySession> = self
            .sessions_of(Some(workspace_id))
            .iter()
            .filter_map(|s| {
                let st = lock(&s.inner).status();
                (st.active_run_id.is_some() || !st.queued.is_empty()).then(|| BusySession {
                    session_id: s.id.clone(),
                    active_run_id: st.active_run_id,
                    queued: st.queued,
                })
            })
            .collect();
        out.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        out
    }

    /// Unloads every workspace that has been idle for `delay`: no claim (`claimed`), no active
    /// or queued run, no task, no subscriber and no parked subscription (`kept`) to any of its
    /// sessions. Its sessions' live state and replay logs go; their seqs are remembered. In a
    /// workspace that stays loaded, a session idle and unwatched for `delay` is dropped alone,
    /// so a long-claimed workspace does not keep every log it ever had. Returns the workspaces
    /// unloaded.
    ///
    /// The check and the eviction happen under the workspace's gate and every session lock of
    /// the workspace at once, so no send or subscribe can slip in between (a send needs the
    /// gate; a subscribe that waited for a session lock finds it evicted and starts over).
    pub fn unload_idle(
        &self,
        delay: Duration,
        claimed: impl Fn(&str) -> bool,
        kept: &HashSet<String>,
    ) -> Vec<String> {
        let now = Instant::now();
        let elapsed = |since: &mut Option<Instant>, busy: bool| -> bool {
            if busy {
                *since = None;
                return false;
            }
            let t = *since.get_or_insert(now);
            now.duration_since(t) >= delay
        };
        let mut unloaded = Vec::new();
        let mut sessions = lock(&self.sessions);
        let mut workspaces = lock(&self.workspaces);
        let ids: Vec<String> = workspaces.keys().cloned().collect();
        for id in ids {
            let Some(ws) = workspaces.get(&id).cloned() else {
                continue;
            };
            let gate = lock(&ws.gate);
            if *gate {
                // A force-closed workspace stays until it is opened again.
                continue;
            }
            let mine: Vec<Arc<SessionRt>> = sessions
                .values()
                .filter(|s| lock(&s.ws).id == id)
                .cloned()
                .collect();
            let mut inners: Vec<std::sync::MutexGuard<'_, SessionInner>> =
                mine.iter().map(|s| lock(&s.inner)).collect();
            let no_tasks = ws.tracker.is_empty();
            let mut idle_sessions = Vec::new();
            let mut any_busy = false;
            for (s, inner) in mine.iter().zip(inners.iter_mut()) {
                let busy = kept.contains(&s.id)
                    || inner.active.is_some()
                    || !inner.queue.is_empty()
                    || !inner.subscribers.is_empty()
                    || !inner.permissions.is_empty();
                any_busy |= busy;
                if elapsed(&mut inner.idle_since, busy) {
                    idle_sessions.push(s.id.clone());
                }
            }
            let ws_busy = any_busy || !no_tasks || claimed(&id);
            let whole = elapsed(&mut lock(&ws.idle_since), ws_busy);
            if !whole && !no_tasks {
                // A task of the workspace may still publish to one of its sessions.
                continue;
            }
            let mut seqs = lock(&self.seqs);
            for (s, inner) in mine.iter().zip(inners.iter_mut()) {
                if whole || idle_sessions.contains(&s.id) {
                    inner.evicted = true;
                    seqs.insert(s.id.clone(), inner.seq);
                    sessions.remove(&s.id);
                }
            }
            drop(seqs);
            drop(inners);
            drop(gate);
            if whole {
                workspaces.remove(&id);
                unloaded.push(id);
            }
        }
        unloaded
    }

    // ---- permissions ----

    /// Sends a pending request to one connection and routes its answer back.
    fn send_permission_request(
        self: &Arc<Self>,
        ws: &Workspace,
        p: &mut PendingPermission,
        peer: &Arc<Peer>,
    ) {
        let Some((id, reply)) = peer.start_request(daemon_request::PERMISSION_REQUEST, &p.params)
        else {
            return;
        };
        p.sent.push((peer.clone(), id));
        let rt = self.clone();
        let peer = peer.clone();
        let session_id = p.params.session_id.clone();
        let request_id = p.params.request_id.clone();
        ws.tracker.spawn(async move {
            // An error (the client does not implement the method, the connection closed, the
            // request was withdrawn) is no answer: another client may still answer.
            let Ok(Ok(raw)) = reply.await else { return };
            match serde_json::from_str::<PermissionRequestResult>(raw.get()) {
                Ok(r) if r.decision != PermissionDecision::Deferred => {
                    let _ = rt.answer_permission(
                        Some(&session_id),
                        &request_id,
                        r.decision,
                        &peer.display_name(),
                    );
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "unreadable answer to permission/request; ignored"),
            }
        });
    }

    /// Asks the session's clients whether a tool call may run, and waits for the first answer
    /// (or the run's cancel: `None`). With no client connected the request waits for one.
    async fn ask_permission(
        self: &Arc<Self>,
        s: &SessionRt,
        token: &CancellationToken,
        params: PermissionRequestParams,
    ) -> Option<PermissionDecision> {
        let (tx, rx) = oneshot::channel();
        let request_id = params.request_id.clone();
        {
            let mut inner = lock(&s.inner);
            if token.is_cancelled() {
                return None;
            }
            let mut p = PendingPermission {
                params,
                sent: Vec::new(),
                answer: tx,
            };
            let ws = s.ws();
            let peers: Vec<Arc<Peer>> = inner.subscribers.values().cloned().collect();
            for peer in &peers {
                self.send_permission_request(&ws, &mut p, peer);
            }
            inner.publish(
                &s.id,
                Some(&p.params.run_id),
                SessionEvent::PermissionRequested {
                    request_id: p.params.request_id.clone(),
                    tool_call_id: p.params.tool_call_id.clone(),
                    tool: p.params.tool.clone(),
                    title: p.params.title.clone(),
                },
            );
            inner.permissions.push(p);
        }
        // A cancel resolves the request under the session lock (cancel_session), so the
        // answer channel always yields; the token is a backstop for a dropped sender.
        tokio::select! {
            r = rx => r.unwrap_or(None),
            _ = token.cancelled() => {
                // A workspace close or shutdown fires the token before it drains the session:
                // withdraw the request here so `permissionResolved` precedes the call's end.
                let mut inner = lock(&s.inner);
                if let Some(i) = inner.permissions.iter().position(|p| p.params.request_id == request_id) {
                    let p = inner.permissions.remove(i);
                    self.finish_permission(&mut inner, p, None, "cancel");
                }
                None
            }
        }
    }

    /// Resolves a pending request with a client's answer. The first answer wins; a later one
    /// gets `PermissionResolved` naming who answered.
    pub fn answer_permission(
        &self,
        session_id: Option<&str>,
        request_id: &str,
        decision: PermissionDecision,
        by: &str,
    ) -> Result<(), RpcError> {
        if decision == PermissionDecision::Deferred {
            return Err(RpcError::invalid_params(
                "invalid params: decision: answer allow, allowSession or deny",
            ));
        }
        let sessions: Vec<Arc<SessionRt>> = match session_id {
            Some(id) => self.existing_session(id).into_iter().collect(),
            None => lock(&self.sessions).values().cloned().collect(),
        };
        for s in sessions {
            let mut inner = lock(&s.inner);
            if let Some(i) = inner
                .permissions
                .iter()
                .position(|p| p.params.request_id == request_id)
            {
                let p = inner.permissions.remove(i);
                if decision == PermissionDecision::AllowSession {
                    lock(&self.grants)
                        .entry(s.id.clone())
                        .or_default()
                        .tools
                        .insert(p.params.tool.clone());
                }
                self.finish_permission(&mut inner, p, Some(decision), by);
                return Ok(());
            }
        }
        let resolved = lock(&self.resolved)
            .iter()
            .find(|(id, _)| id == request_id)
            .map(|(_, how)| how.clone());
        Err(match resolved {
            Some(how) => RpcError::new(
                ErrorCode::PermissionResolved,
                format!("permission request {request_id:?} was already resolved: {how}"),
            ),
            None => RpcError::new(
                ErrorCode::PermissionNotFound,
                format!("no pending permission request has id {request_id:?}"),
            ),
        })
    }

    /// Ends a pending request: answers the waiting run, withdraws the request from every other
    /// connection, and tells every subscriber how it ended.
    fn finish_permission(
        &self,
        inner: &mut SessionInner,
        p: PendingPermission,
        decision: Option<PermissionDecision>,
        by: &str,
    ) {
        let name = match decision {
            Some(PermissionDecision::Allow) => "allow",
            Some(PermissionDecision::AllowSession) => "allowSession",
            Some(PermissionDecision::Deny) => "deny",
            Some(PermissionDecision::Deferred) | None => "cancelled",
        };
        for (peer, id) in &p.sent {
            peer.abandon_request(id);
        }
        {
            let mut resolved = lock(&self.resolved);
            if resolved.len() >= RESOLVED_MEMORY {
                resolved.pop_front();
            }
            resolved.push_back((p.params.request_id.clone(), format!("{name} by {by}")));
        }
        let note = PermissionResolvedParams {
            request_id: p.params.request_id.clone(),
            session_id: p.params.session_id.clone(),
            run_id: p.params.run_id.clone(),
            decision: name.to_owned(),
            by: by.to_owned(),
        };
        let body = encode_notification(daemon_notification::PermissionResolved::METHOD, &note);
        let mut told = HashSet::new();
        for peer in inner.subscribers.values() {
            told.insert(peer.id);
            peer.send_raw(body.clone());
        }
        for (peer, _) in &p.sent {
            if told.insert(peer.id) {
                peer.send_raw(body.clone());
            }
        }
        inner.publish(
            &p.params.session_id,
            Some(&p.params.run_id),
            SessionEvent::PermissionResolved {
                request_id: p.params.request_id.clone(),
                decision: name.to_owned(),
                by: by.to_owned(),
            },
        );
        let _ = p.answer.send(decision);
    }

    /// Whether a tool call may run without asking: the send or the session is in yolo mode,
    /// the tool was allowed for the session, or a config rule allows it.
    fn allowed_without_asking(
        &self,
        session_id: &str,
        run: &RunMeta,
        tool: &str,
        command: Option<&str>,
    ) -> bool {
        if run.yolo || self.rules.allow.iter().any(|t| t == tool) {
            return true;
        }
        if let Some(g) = lock(&self.grants).get(session_id)
            && (g.yolo || g.tools.contains(tool))
        {
            return true;
        }
        match command {
            Some(cmd) if tool == "bash" => bash_allowed(&self.rules.allow_bash, cmd),
            _ => false,
        }
    }

    /// Sets the session's yolo mode.
    pub fn set_yolo(&self, session_id: &str, yolo: bool) {
        lock(&self.grants)
            .entry(session_id.to_owned())
            .or_default()
            .yolo = yolo;
    }

    pub fn yolo(&self, session_id: &str) -> bool {
        lock(&self.grants).get(session_id).is_some_and(|g| g.yolo)
    }

    /// The session's model changed: the next runs use it.
    pub fn set_session_model(&self, session_id: &str, model: Option<&str>) {
        if let Some(s) = self.existing_session(session_id) {
            *lock(&s.model) = model.map(str::to_owned);
        }
    }

    // ---- closing ----

    fn sessions_of(&self, workspace_id: Option<&str>) -> Vec<Arc<SessionRt>> {
        lock(&self.sessions)
            .values()
            .filter(|s| workspace_id.is_none_or(|w| lock(&s.ws).id == w))
            .cloned()
            .collect()
    }

    /// Closes a workspace: refuse new sends → cancel its token → cancel active runs and drop
    /// queues → wait for its run tasks (bounded by the grace period). Returns the runs ended.
    pub async fn close_workspace(self: &Arc<Self>, workspace_id: &str) -> Vec<String> {
        let ws = self.workspace(workspace_id);
        self.close(&ws).await
    }

    async fn close(self: &Arc<Self>, ws: &Arc<Workspace>) -> Vec<String> {
        *lock(&ws.gate) = true;
        ws.token.cancel();
        let mut ended = Vec::new();
        for s in self.sessions_of(Some(&ws.id)) {
            ended.extend(self.cancel_session(&s));
        }
        ws.tracker.close();
        if tokio::time::timeout(self.grace, ws.tracker.wait())
            .await
            .is_err()
        {
            warn!(workspace = %ws.id, "runs did not end within the grace period");
        }
        if !ended.is_empty() {
            info!(workspace = %ws.id, runs = ended.len(), "workspace closed; runs cancelled");
        }
        ended
    }

    /// Daemon shutdown: refuse new sends, then close every workspace (concurrently).
    pub async fn shutdown(self: &Arc<Self>) {
        self.shutting_down.store(true, Ordering::Release);
        let all: Vec<Arc<Workspace>> = lock(&self.workspaces).values().cloned().collect();
        futures::future::join_all(all.iter().map(|ws| self.close(ws))).await;
        // Writes still failing now will not land before the process ends.
        self.stop_repairs.cancel();
        self.repairs.close();
        self.repairs.wait().await;
    }

    /// Tasks still running in workspaces (diagnostics and leak checks).
    pub fn tasks(&self) -> usize {
        lock(&self.workspaces)
            .values()
            .map(|w| w.tracker.len())
            .sum()
    }

    /// Loaded workspaces (diagnostics and leak checks).
    pub fn loaded_workspaces(&self) -> usize {
        lock(&self.workspaces).len()
    }

    /// Sessions with live state (diagnostics and leak checks).
    pub fn live_sessions(&self) -> usize {
        lock(&self.sessions).len()
    }
}

/// Whether a bash command matches an allow rule: the rule's words are the command's first words,
/// and the command has no shell syntax that could chain another command after an allowed one.
pub fn bash_allowed(rules: &[String], command: &str) -> bool {
    const CONTROL: &[&str] = &[";", "&", "|", "`", "$(", ">", "<", "\n", "\r"];
    if CONTROL.iter().any(|c| command.contains(c)) {
        return false;
    }
    let words: Vec<&str> = command.split_whitespace().collect();
    rules.iter().any(|rule| {
        let want: Vec<&str> = rule.split_whitespace().collect();
        !want.is_empty() && words.len() >= want.len() && words[..want.len()] == want[..]
    })
}

fn idle_status() -> AgentStatusResult {
    AgentStatusResult {
        state: "idle".to_owned(),
        ..AgentStatusResult::default()
    }
}

struct SameProbe<'a> {
    session_id: &'a str,
    prompt: &'a str,
    run_id: &'a str,
}

impl SameProbe<'_> {
    fn check(
        &self,
        state: &str,
        session_id: &str,
        prompt: &str,
    ) -> Result<AgentSendResult, RpcError> {
        if session_id == self.session_id && prompt == self.prompt {
            Ok(AgentSendResult {
                run_id: self.run_id.to_owned(),
                state: state.to_owned(),
            })
        } else {
            Err(RpcError::new(
                ErrorCode::DuplicateRunId,
                format!(
                    "run id {:?} is already used by a different prompt or session; pick a new id",
                    self.run_id
                ),
            ))
        }
    }
}

fn same_or_duplicate(
    run: &RunMeta,
    state: &str,
    session_id: &str,
    prompt: &str,
) -> Result<AgentSendResult, RpcError> {
    SameProbe {
        session_id: &run.session_id,
        prompt: &run.prompt,
        run_id: &run.run_id,
    }
    .check(state, session_id, prompt)
}

impl SessionRt {
    fn ws(&self) -> Arc<Workspace> {
        lock(&self.ws).clone()
    }
}

/// Marks a live run as started (as part of another run's turn when `folded_into` is given).
fn mark_running(runs: &mut HashMap<String, LiveRun>, run_id: &str, folded_into: Option<&str>) {
    if let Some(l) = runs.get_mut(run_id) {
        l.state = "running";
        l.started_at = Some(now_ms());
        l.folded_into = folded_into.map(str::to_owned);
    }
}

impl SessionInner {
    /// Makes `run` the active run of an idle session: a fresh child of the workspace's token,
    /// its registry entry marked running, `runStarted` published. Returns the run's token.
    fn activate(
        &mut self,
        session_id: &str,
        ws: &Workspace,
        runs: &mut HashMap<String, LiveRun>,
        run: Arc<RunMeta>,
    ) -> CancellationToken {
        let token = ws.token.child_token();
        mark_running(runs, &run.run_id, None);
        self.publish(session_id, Some(&run.run_id), SessionEvent::RunStarted);
        self.active = Some(Active {
            run,
            token: token.clone(),
            cancel_requested: false,
            steered: Vec::new(),
            accepting_steer: true,
        });
        token
    }

    fn status(&self) -> AgentStatusResult {
        match &self.active {
            None => idle_status(),
            Some(a) => AgentStatusResult {
                state: if self.permissions.is_empty() {
                    "active"
                } else {
                    "waitingForPermission"
                }
                .to_owned(),
                pending_permissions: self.permissions.iter().map(|p| p.params.clone()).collect(),
                active_run_id: Some(a.run.run_id.clone()),
                queued: a
                    .steered
                    .iter()
                    .map(|r| r.run_id.clone())
                    .chain(self.queue.iter().map(|q| q.run.run_id.clone()))
                    .collect(),
            },
        }
    }

    /// Sends an event to every subscriber, with the session's next sequence number, and keeps
    /// it in the replay log.
    fn publish(&mut self, session_id: &str, run_id: Option<&str>, event: SessionEvent) {
        self.seq += 1;
        if self.sid.is_empty() {
            self.sid = Arc::from(session_id);
        }
        self.track_streaming(run_id, &event);
        let delta = Delta::of(run_id, &event).map(Arc::new);
        let body = encode_notification(
            daemon_notification::SessionUpdate::METHOD,
            &SessionUpdateParams {
                session_id: session_id.to_owned(),
                seq: self.seq,
                run_id: run_id.map(str::to_owned),
                event,
            },
        );
        let item = EventItem {
            session: self.sid.clone(),
            seq: self.seq,
            body,
            delta,
        };
        for p in self.subscribers.values() {
            p.send_event(&item);
        }
        self.remember(item);
    }

    /// Appends to the replay log.
    fn remember(&mut self, item: EventItem) {
        self.log.push(item);
    }

    /// Keeps the streaming message's content as of the latest event, for subscribers that
    /// attach mid-message.
    fn track_streaming(&mut self, run_id: Option<&str>, event: &SessionEvent) {
        fn append(parts: &mut Vec<Value>, kind: &str, text: &str) {
            if let Some(last) = parts.last_mut()
                && last["type"] == kind
                && let Some(Value::String(t)) = last.get_mut(kind)
            {
                t.push_str(text);
                return;
            }
            parts.push(json!({"type": kind, kind: text}));
        }
        let current =
            |m: &str, st: &Option<StreamingMessage>| st.as_ref().is_some_and(|s| s.message_id == m);
        match event {
            SessionEvent::AssistantStarted { message_id, .. } => {
                self.streaming = Some(StreamingMessage {
                    message_id: message_id.clone(),
                    run_id: run_id.map(str::to_owned),
                    parts: Vec::new(),
                });
            }
            SessionEvent::TextDelta { message_id, text }
                if current(message_id, &self.streaming) =>
            {
                if let Some(st) = &mut self.streaming {
                    append(&mut st.parts, "text", text);
                }
            }
            SessionEvent::ReasoningDelta { message_id, text }
                if current(message_id, &self.streaming) =>
            {
                if let Some(st) = &mut self.streaming {
                    append(&mut st.parts, "reasoning", text);
                }
            }
            SessionEvent::ToolCallStarted {
                message_id,
                tool_call_id,
                tool,
                input,
            } if current(message_id, &self.streaming) => {
                if let Some(st) = &mut self.streaming {
                    st.parts.push(json!({
                        "type": "toolCall",
                        "id": tool_call_id,
                        "name": tool,
                        "input": input,
                    }));
                }
            }
            SessionEvent::ToolCallFinished {
                message_id,
                tool_call_id,
                tool,
                status,
                output,
                metadata,
            } if current(message_id, &self.streaming) => {
                if let Some(st) = &mut self.streaming {
                    let mut part = json!({
                        "type": "toolResult",
                        "toolCallId": tool_call_id,
                        "name": tool,
                        "status": status,
                        "content": output,
                    });
                    if let Some(m) = metadata {
                        part["metadata"] = m.clone();
                    }
                    st.parts.push(part);
                }
            }
            SessionEvent::MessageFinished { message_id, .. }
                if current(message_id, &self.streaming) =>
            {
                self.streaming = None;
            }
            SessionEvent::RunFinished { .. } => self.streaming = None,
            _ => {}
        }
    }

    /// Publishes a delta of the active run unless its token is cancelled. Returns false when it
    /// was not published (the run is cancelled and must stop).
    fn publish_live(
        &mut self,
        session_id: &str,
        token: &CancellationToken,
        run_id: &str,
        event: SessionEvent,
    ) -> bool {
        if token.is_cancelled() {
            return false;
        }
        self.publish(session_id, Some(run_id), event);
        true
    }

    /// Sends a `$/runComplete` to every subscriber and to the run's sender (once).
    fn complete(&mut self, params: RunCompleteParams, sender: Option<&Arc<Peer>>) {
        let body = encode_notification(daemon_notification::RunComplete::METHOD, &params);
        for p in self.subscribers.values() {
            p.send_raw(body.clone());
        }
        if let Some(p) = sender
            && !self.subscribers.contains_key(&p.id)
        {
            p.send_raw(body);
        }
    }
}
