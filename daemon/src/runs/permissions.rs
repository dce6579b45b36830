//! Permission prompts: the requests of a session's active run waiting for a client's answer
//! (kept in the session's state, under its lock, so a cancel withdraws them in the same step),
//! what the daemon lets run without asking (config rules, yolo, tools allowed for the session,
//! saved rules), saving "always allow" answers as rules, and the audit log of every decision.
//!
//! Architecture invariant: a request ends exactly once — answered by the first client, or
//! withdrawn by a cancel — and every subscriber and every connection it was sent to hears how
//! (`permissionResolved`) before the run goes on. A saved rule is in the store before it is
//! matched from memory, so what allows a call now also allows it after a restart.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{OnceCell, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crush_protocol::message::encode_notification;
use crush_protocol::{
    ErrorCode, Notification, PermissionDecision, PermissionLogEntry, PermissionRequestParams,
    PermissionRequestResult, PermissionResolution, PermissionResolvedParams, PermissionRule,
    PermissionSource, RequestId, RpcError, SessionEvent, daemon_notification, daemon_request,
};

use super::workspaces::Workspace;
use super::{RunMeta, Runtime, SessionInner, SessionRt};
use crate::config::PermissionRules;
use crate::peer::Peer;
use crate::permission_rules::{self as rules, LiveRule, OwnedSubject, Subject, bash_rule};
use crate::store::{new_id, now_ms};
use crate::sync::lock;

/// How many answered permission requests are remembered for late answers.
const RESOLVED_MEMORY: usize = 1024;

/// The daemon-wide part: rules from the config, saved rules, grants per session, recent
/// resolutions.
#[derive(Default)]
pub(super) struct Permissions {
    rules: PermissionRules,
    /// The saved rules, loaded from the store at the first tool call that needs them and kept
    /// in step with it (written there first), so matching costs no database read.
    saved: OnceCell<Mutex<Vec<LiveRule>>>,
    /// Per-session permission state (yolo, tools allowed for the session). Kept for the
    /// daemon's lifetime, outside the evictable live state: a restarted daemon asks again.
    grants: Mutex<HashMap<String, Grants>>,
    /// Permission requests answered lately, so a late answer learns who answered first.
    resolved: Mutex<VecDeque<(String, String)>>,
}

#[derive(Debug, Clone, Default)]
struct Grants {
    yolo: bool,
    tools: HashSet<String>,
}

/// A session's requests waiting for an answer.
#[derive(Default)]
pub(super) struct PendingPermissions(Vec<PendingPermission>);

/// A tool call waiting for a client's answer.
pub(super) struct PendingPermission {
    params: PermissionRequestParams,
    /// What the call would do, for rules saved while it waits; `None` for a prompt no rule may
    /// answer (leaving the sandbox).
    subject: Option<OwnedSubject>,
    /// Every connection it was sent to, with that connection's request id.
    sent: Vec<(Arc<Peer>, RequestId)>,
    answer: oneshot::Sender<Answer>,
}

/// Who answered a prompt, for `permissionResolved` and the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answerer {
    /// The client's `clientInfo.name` (`"cancel"` when a cancel withdrew the request).
    pub client: String,
    /// The daemon's number of the answering connection.
    pub connection: Option<u64>,
}

impl Answerer {
    pub fn peer(peer: &Peer) -> Self {
        Self {
            client: peer.display_name(),
            connection: Some(peer.id),
        }
    }

    fn cancel() -> Self {
        Self {
            client: "cancel".to_owned(),
            connection: None,
        }
    }
}

/// How a request ended, for the waiting run.
struct Answer {
    /// `None` when a cancel withdrew the request.
    decision: Option<PermissionDecision>,
    by: Answerer,
    /// For `allowAlways`: the rule to save (checked already).
    rule: Option<PermissionRule>,
    /// Set when the answer came from a rule another prompt's answer saved, not from this
    /// prompt's own answer (the audit log's source).
    basis: Option<Basis>,
}

impl Answer {
    fn new(decision: Option<PermissionDecision>, by: Answerer) -> Self {
        Self {
            decision,
            by,
            rule: None,
            basis: None,
        }
    }
}

/// Why a tool call runs without asking (the audit log's `source` and `rule`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Basis {
    pub source: PermissionSource,
    pub rule: Option<String>,
    pub rule_id: Option<String>,
}

impl Basis {
    pub(super) fn new(source: PermissionSource, rule: impl Into<String>) -> Self {
        Self {
            source,
            rule: Some(rule.into()),
            rule_id: None,
        }
    }
}

/// A call a run wants permission for, as the audit log records it.
pub(super) struct Decided<'a> {
    pub run_id: &'a str,
    pub tool_call_id: &'a str,
    pub tool: &'a str,
    pub title: &'a str,
}

impl PendingPermissions {
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn params(&self) -> Vec<PermissionRequestParams> {
        self.0.iter().map(|p| p.params.clone()).collect()
    }

    /// Every request (a cancel of the whole session).
    pub(super) fn take_all(&mut self) -> Vec<PendingPermission> {
        std::mem::take(&mut self.0)
    }

    /// The requests of one run (a cancel of that run).
    pub(super) fn take_of_run(&mut self, run_id: &str) -> Vec<PendingPermission> {
        let (theirs, others) = std::mem::take(&mut self.0)
            .into_iter()
            .partition(|p| p.params.run_id == run_id);
        self.0 = others;
        theirs
    }

    fn take(&mut self, request_id: &str) -> Option<PendingPermission> {
        let i = self
            .0
            .iter()
            .position(|p| p.params.request_id == request_id)?;
        Some(self.0.remove(i))
    }

    /// A connection unsubscribed: its copies of the requests are withdrawn.
    pub(super) fn withdraw_from(&mut self, peer: &Peer) {
        for p in &mut self.0 {
            p.sent.retain(|(to, id)| {
                if to.id == peer.id {
                    to.abandon_request(id);
                }
                to.id != peer.id
            });
        }
    }
}

impl Permissions {
    pub(super) fn new(rules: PermissionRules) -> Self {
        Self {
            rules,
            ..Self::default()
        }
    }

    pub(super) fn forget_session(&self, session_id: &str) {
        lock(&self.grants).remove(session_id);
    }

    /// A deleted session's rules went with it in the store (`ON DELETE CASCADE`): drop them
    /// from memory too, so `permission/rules/list` does not show them.
    pub(super) fn forget_session_rules(&self, session_id: &str) {
        if let Some(saved) = self.saved.get() {
            lock(saved).retain(|r| r.rule.session_id.as_deref() != Some(session_id));
        }
    }

    /// Why a tool call may run without asking, if it may: the send or the session is in yolo
    /// mode, a config rule allows it, the tool was allowed for the session, or a saved rule
    /// allows it.
    fn basis(
        &self,
        s: (&str, &str),
        run: &RunMeta,
        tool: &str,
        subject: Subject<'_>,
    ) -> Option<Basis> {
        let (session_id, workspace_id) = s;
        if run.yolo {
            return Some(Basis::new(PermissionSource::Yolo, "yolo send"));
        }
        let grants = lock(&self.grants).get(session_id).cloned();
        if grants.as_ref().is_some_and(|g| g.yolo) {
            return Some(Basis::new(PermissionSource::Yolo, "yolo session"));
        }
        if self.rules.allow.iter().any(|t| t == tool) {
            return Some(Basis::new(
                PermissionSource::Config,
                format!("[permissions] allow {tool:?}"),
            ));
        }
        if tool == "bash"
            && let Some(prefix) = subject
                .command
                .and_then(|c| bash_rule(&self.rules.allow_bash, c))
        {
            return Some(Basis::new(
                PermissionSource::Config,
                format!("[permissions] allow_bash {prefix:?}"),
            ));
        }
        if grants.is_some_and(|g| g.tools.contains(tool)) {
            return Some(Basis::new(
                PermissionSource::SessionGrant,
                format!("allowSession {tool}"),
            ));
        }
        let saved = self.saved.get()?;
        let saved = lock(saved);
        let r = saved
            .iter()
            .find(|r| r.allows(session_id, workspace_id, tool, subject))?;
        Some(Basis {
            source: PermissionSource::Rule,
            rule: Some(r.describe()),
            rule_id: Some(r.rule.id.clone()),
        })
    }

    fn remember_resolution(&self, request_id: &str, how: String) {
        let mut resolved = lock(&self.resolved);
        if resolved.len() >= RESOLVED_MEMORY {
            resolved.pop_front();
        }
        resolved.push_back((request_id.to_owned(), how));
    }

    fn resolution(&self, request_id: &str) -> Option<String> {
        lock(&self.resolved)
            .iter()
            .find(|(id, _)| id == request_id)
            .map(|(_, how)| how.clone())
    }
}

impl Runtime {
    /// The saved rules, loaded from the store the first time. `None` when the store cannot be
    /// read: then no saved rule applies (the call is asked about), and the next call retries.
    async fn saved_rules(&self) -> Option<&Mutex<Vec<LiveRule>>> {
        let loaded = self
            .permissions
            .saved
            .get_or_try_init(|| async {
                let rules = self.store.permission_rules().await?;
                Ok::<_, crate::store::StoreError>(Mutex::new(
                    rules.into_iter().map(LiveRule::new).collect(),
                ))
            })
            .await;
        match loaded {
            Ok(saved) => Some(saved),
            Err(e) => {
                warn!(error = %e, "cannot read the saved permission rules; asking instead");
                None
            }
        }
    }

    /// Why a tool call of `run` may run without asking, if it may.
    pub(super) async fn allowed_without_asking(
        &self,
        s: &SessionRt,
        run: &RunMeta,
        tool: &str,
        subject: Subject<'_>,
    ) -> Option<Basis> {
        self.saved_rules().await;
        let ws = s.ws();
        self.permissions.basis((&s.id, &ws.id), run, tool, subject)
    }

    /// Appends a decision to the audit log. A store failure is logged, not fatal: the call's
    /// permission was decided either way.
    pub(super) async fn log_permission(
        &self,
        s: &SessionRt,
        call: Decided<'_>,
        decision: PermissionResolution,
        basis: Basis,
        by: Option<Answerer>,
    ) {
        let (client, connection) = match by {
            Some(a) => (Some(a.client), a.connection),
            None => (None, None),
        };
        let entry = PermissionLogEntry {
            at: now_ms(),
            session_id: s.id.clone(),
            workspace_id: s.ws().id.clone(),
            run_id: call.run_id.to_owned(),
            tool_call_id: call.tool_call_id.to_owned(),
            tool: call.tool.to_owned(),
            title: call.title.to_owned(),
            decision,
            source: basis.source,
            rule: basis.rule,
            rule_id: basis.rule_id,
            client,
            connection,
        };
        if let Err(e) = self.store.log_permission(&entry).await {
            warn!(error = %e, "cannot write the permission audit log");
        }
    }

    /// Saves a rule an `allowAlways` answer chose: in the store, then in memory.
    async fn save_rule(&self, rule: PermissionRule) -> Result<(), crate::store::StoreError> {
        self.store.insert_permission_rule(&rule).await?;
        if let Some(saved) = self.saved_rules().await {
            let mut saved = lock(saved);
            if !saved.iter().any(|r| r.rule.id == rule.id) {
                saved.push(LiveRule::new(rule));
            }
        }
        Ok(())
    }

    /// The saved rules that apply in a workspace and/or session (every rule without either),
    /// oldest first.
    pub async fn permission_rules(
        &self,
        workspace_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<Vec<PermissionRule>, RpcError> {
        let Some(saved) = self.saved_rules().await else {
            return Err(self.store.permission_rules().await.err().map_or_else(
                || RpcError::internal("the saved permission rules could not be loaded"),
                RpcError::from,
            ));
        };
        use crush_protocol::RuleScope;
        Ok(lock(saved)
            .iter()
            .map(|r| &r.rule)
            .filter(|r| match r.scope {
                RuleScope::Global => true,
                RuleScope::Workspace => {
                    workspace_id.is_none_or(|w| r.workspace_id.as_deref() == Some(w))
                }
                RuleScope::Session => {
                    session_id.is_none_or(|id| r.session_id.as_deref() == Some(id))
                        && workspace_id.is_none_or(|w| r.workspace_id.as_deref() == Some(w))
                }
            })
            .cloned()
            .collect())
    }

    /// Deletes a saved rule by its id or an unambiguous prefix of it; later matching calls are
    /// asked about again.
    pub async fn remove_permission_rule(&self, id: &str) -> Result<PermissionRule, RpcError> {
        let Some(saved) = self.saved_rules().await else {
            return Err(RpcError::internal(
                "the saved permission rules could not be loaded",
            ));
        };
        let found: Vec<PermissionRule> = lock(saved)
            .iter()
            .filter(|r| r.rule.id == id || (!id.is_empty() && r.rule.id.starts_with(id)))
            .map(|r| r.rule.clone())
            .collect();
        let rule = match found.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(RpcError::new(
                    ErrorCode::PermissionRuleNotFound,
                    format!("no saved permission rule has id {id:?} (see permission/rules/list)"),
                ));
            }
            _ => {
                return Err(RpcError::invalid_params(format!(
                    "invalid params: id: {id:?} is the start of {} rules' ids; give more of it",
                    found.len()
                )));
            }
        };
        self.store.remove_permission_rule(&rule.id).await?;
        lock(saved).retain(|r| r.rule.id != rule.id);
        Ok(rule)
    }

    /// Sets the session's yolo mode.
    pub fn set_yolo(&self, session_id: &str, yolo: bool) {
        lock(&self.permissions.grants)
            .entry(session_id.to_owned())
            .or_default()
            .yolo = yolo;
    }

    /// Sends every pending request of the session to a new subscriber: requests are not lost
    /// because nobody was connected.
    pub(super) fn resend_permission_requests(
        self: &Arc<Self>,
        ws: &Workspace,
        inner: &mut SessionInner,
        peer: &Arc<Peer>,
    ) {
        for p in &mut inner.permissions.0 {
            self.send_permission_request(ws, p, peer);
        }
    }

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
                    if let Err(e) = rt.answer_permission(
                        Some(&session_id),
                        &request_id,
                        r,
                        Answerer::peer(&peer),
                    ) && e.code == ErrorCode::InvalidParams.code()
                    {
                        warn!(error = %e, "unusable answer to permission/request; ignored");
                    }
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "unreadable answer to permission/request; ignored"),
            }
        });
    }

    /// Asks the session's clients whether a tool call may run, and waits for the first answer
    /// (or the run's cancel: `None`). With no client connected the request waits for one. The
    /// answer is in the audit log, and an `allowAlways` answer's rule is saved, before this
    /// returns. `subject` (what the call would do) lets a rule another prompt's answer saves
    /// meanwhile answer this one; `None` keeps it for a person.
    pub(super) async fn ask_permission(
        self: &Arc<Self>,
        s: &SessionRt,
        token: &CancellationToken,
        params: PermissionRequestParams,
        subject: Option<Subject<'_>>,
    ) -> Option<PermissionDecision> {
        let (tx, rx) = oneshot::channel();
        let request_id = params.request_id.clone();
        let (run_id, tool_call_id) = (params.run_id.clone(), params.tool_call_id.clone());
        let (tool, title) = (params.tool.clone(), params.title.clone());
        {
            let mut inner = lock(&s.inner);
            if token.is_cancelled() {
                return None;
            }
            let mut p = PendingPermission {
                params,
                subject: subject.map(OwnedSubject::from),
                sent: Vec::new(),
                answer: tx,
            };
            let ws = s.ws();
            let peers: Vec<Arc<Peer>> = inner.events.subscribers().cloned().collect();
            for peer in &peers {
                self.send_permission_request(&ws, &mut p, peer);
            }
            inner.events.publish(
                Some(&p.params.run_id),
                SessionEvent::PermissionRequested {
                    request_id: p.params.request_id.clone(),
                    tool_call_id: p.params.tool_call_id.clone(),
                    tool: p.params.tool.clone(),
                    title: p.params.title.clone(),
                },
            );
            inner.permissions.0.push(p);
        }
        // A cancel resolves the request under the session lock (`cancel.rs`), so the answer
        // channel always yields; the token is a backstop for a dropped sender.
        let answer = tokio::select! {
            r = rx => r.ok(),
            _ = token.cancelled() => {
                // A workspace close or shutdown fires the token before it drains the session:
                // withdraw the request here so `permissionResolved` precedes the call's end.
                let mut inner = lock(&s.inner);
                if let Some(p) = inner.permissions.take(&request_id) {
                    self.finish_permission(&mut inner, p, Answer::new(None, Answerer::cancel()));
                }
                None
            }
        };
        let answer = answer.unwrap_or(Answer::new(None, Answerer::cancel()));
        let mut basis = answer.basis.clone().unwrap_or(Basis {
            source: PermissionSource::Prompt,
            rule: None,
            rule_id: None,
        });
        if let Some(rule) = answer.rule {
            basis.rule = Some(rules::describe(&rule));
            basis.rule_id = Some(rule.id.clone());
            if let Err(e) = self.save_rule(rule).await {
                warn!(error = %e, "cannot save the permission rule; this call is allowed once");
                basis.rule_id = None;
            }
        }
        let call = Decided {
            run_id: &run_id,
            tool_call_id: &tool_call_id,
            tool: &tool,
            title: &title,
        };
        let decision = resolution(answer.decision);
        self.log_permission(s, call, decision, basis, Some(answer.by))
            .await;
        answer.decision
    }

    /// Resolves a pending request with a client's answer. The first answer wins; a later one
    /// gets `PermissionResolved` naming who answered. An `allowAlways` answer must choose one
    /// of the request's scopes and a valid pattern, else it is refused and the request stays.
    pub fn answer_permission(
        &self,
        session_id: Option<&str>,
        request_id: &str,
        reply: PermissionRequestResult,
        by: Answerer,
    ) -> Result<(), RpcError> {
        if reply.decision == PermissionDecision::Deferred {
            return Err(RpcError::invalid_params(
                "invalid params: decision: answer allow, allowSession, allowAlways or deny",
            ));
        }
        let sessions: Vec<Arc<SessionRt>> = match session_id {
            Some(id) => self.existing_session(id).into_iter().collect(),
            None => lock(&self.sessions).values().cloned().collect(),
        };
        for s in sessions {
            let mut inner = lock(&s.inner);
            let Some(params) = inner
                .permissions
                .0
                .iter()
                .find(|p| p.params.request_id == request_id)
                .map(|p| &p.params)
            else {
                continue;
            };
            // An escalation (run unconfined) is allowed once, whatever the answer says: it makes
            // no rule and no session grant.
            let escalation = params.escalation.is_some();
            let rule = match reply.decision {
                PermissionDecision::AllowAlways if !escalation => {
                    Some(rule_of(params, &reply, &s.ws().id, &by)?)
                }
                _ => None,
            };
            let Some(p) = inner.permissions.take(request_id) else {
                continue;
            };
            if reply.decision == PermissionDecision::AllowSession && !escalation {
                lock(&self.permissions.grants)
                    .entry(s.id.clone())
                    .or_default()
                    .tools
                    .insert(p.params.tool.clone());
            }
            let saved = rule.clone();
            let answer = Answer {
                rule,
                ..Answer::new(Some(reply.decision), by.clone())
            };
            self.finish_permission(&mut inner, p, answer);
            drop(inner);
            if let Some(rule) = saved {
                self.release_allowed_by(rule, &by);
            }
            return Ok(());
        }
        Err(match self.permissions.resolution(request_id) {
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
    fn finish_permission(&self, inner: &mut SessionInner, p: PendingPermission, answer: Answer) {
        let name = resolution(answer.decision);
        let by = answer.by.client.as_str();
        for (peer, id) in &p.sent {
            peer.abandon_request(id);
        }
        self.permissions
            .remember_resolution(&p.params.request_id, format!("{name} by {by}"));
        let note = PermissionResolvedParams {
            request_id: p.params.request_id.clone(),
            session_id: p.params.session_id.clone(),
            run_id: p.params.run_id.clone(),
            decision: name,
            by: by.to_owned(),
        };
        let body = encode_notification(daemon_notification::PermissionResolved::METHOD, &note);
        let mut told: HashSet<u64> = inner
            .events
            .send_to_subscribers(&body)
            .into_iter()
            .collect();
        for (peer, _) in &p.sent {
            if told.insert(peer.id) {
                peer.send_raw(body.clone());
            }
        }
        inner.events.publish(
            Some(&p.params.run_id),
            SessionEvent::PermissionResolved {
                request_id: p.params.request_id.clone(),
                decision: name,
                by: by.to_owned(),
            },
        );
        let _ = p.answer.send(answer);
    }

    /// A rule an `allowAlways` answer just made also answers the prompts waiting in other
    /// sessions that it matches (in its workspace, or everywhere): the user said "always", and
    /// a second session's identical prompt is not a new question. A session runs its tool
    /// calls one at a time, so its own other prompts are never waiting at once.
    fn release_allowed_by(&self, rule: PermissionRule, by: &Answerer) {
        let rule = LiveRule::new(rule);
        let basis = Basis {
            source: PermissionSource::Rule,
            rule: Some(rule.describe()),
            rule_id: Some(rule.rule.id.clone()),
        };
        let sessions: Vec<Arc<SessionRt>> = lock(&self.sessions).values().cloned().collect();
        for s in sessions {
            let workspace_id = s.ws().id.clone();
            let mut inner = lock(&s.inner);
            let allowed: Vec<String> = inner
                .permissions
                .0
                .iter()
                .filter(|p| {
                    p.subject.as_ref().is_some_and(|subject| {
                        rule.allows(&s.id, &workspace_id, &p.params.tool, subject.borrow())
                    })
                })
                .map(|p| p.params.request_id.clone())
                .collect();
            for id in allowed {
                if let Some(p) = inner.permissions.take(&id) {
                    let answer = Answer {
                        basis: Some(basis.clone()),
                        ..Answer::new(Some(PermissionDecision::Allow), by.clone())
                    };
                    self.finish_permission(&mut inner, p, answer);
                }
            }
        }
    }

    /// Withdraws requests a cancel ended (under the session lock, before the cancel is
    /// announced).
    pub(super) fn withdraw_permissions(
        &self,
        inner: &mut SessionInner,
        withdrawn: Vec<PendingPermission>,
    ) {
        for p in withdrawn {
            self.finish_permission(inner, p, Answer::new(None, Answerer::cancel()));
        }
    }
}

/// How a decision is named once resolved (a withdrawn request is `cancelled`).
fn resolution(decision: Option<PermissionDecision>) -> PermissionResolution {
    match decision {
        Some(PermissionDecision::Allow) => PermissionResolution::Allow,
        Some(PermissionDecision::AllowSession) => PermissionResolution::AllowSession,
        Some(PermissionDecision::AllowAlways) => PermissionResolution::AllowAlways,
        Some(PermissionDecision::Deny) => PermissionResolution::Deny,
        Some(PermissionDecision::Deferred) | None => PermissionResolution::Cancelled,
    }
}

/// The rule an `allowAlways` answer to `params` saves; `Err` tells the answering client what
/// is wrong with its scope or pattern.
fn rule_of(
    params: &PermissionRequestParams,
    reply: &PermissionRequestResult,
    workspace_id: &str,
    by: &Answerer,
) -> Result<PermissionRule, RpcError> {
    use crush_protocol::RuleScope;
    if params.scopes.is_empty() {
        return Err(RpcError::invalid_params(format!(
            "invalid params: decision: this prompt ({}) cannot be saved as a rule; answer allow, allowSession or deny",
            params.tool
        )));
    }
    let scope = reply.scope.ok_or_else(|| {
        RpcError::invalid_params("invalid params: scope: allowAlways needs a scope")
    })?;
    if !params.scopes.contains(&scope) {
        return Err(RpcError::invalid_params(format!(
            "invalid params: scope: this prompt offers {:?}",
            params.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>()
        )));
    }
    let pattern = reply
        .pattern
        .as_deref()
        .or(params.suggested_pattern.as_deref());
    let pattern = rules::normalize(&params.tool, pattern)
        .map_err(|e| RpcError::invalid_params(format!("invalid params: pattern: {e}")))?;
    Ok(PermissionRule {
        id: new_id(),
        scope,
        workspace_id: (scope != RuleScope::Global).then(|| workspace_id.to_owned()),
        session_id: (scope == RuleScope::Session).then(|| params.session_id.clone()),
        tool: params.tool.clone(),
        pattern,
        created_at: now_ms(),
        created_by: by.client.clone(),
    })
}
