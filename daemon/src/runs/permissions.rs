//! Permission prompts: the requests of a session's active run waiting for a client's answer
//! (kept in the session's state, under its lock, so a cancel withdraws them in the same step),
//! and what the daemon lets run without asking (config rules, yolo, tools allowed for the
//! session).
//!
//! Architecture invariant: a request ends exactly once — answered by the first client, or
//! withdrawn by a cancel — and every subscriber and every connection it was sent to hears how
//! (`permissionResolved`) before the run goes on.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crush_protocol::message::encode_notification;
use crush_protocol::{
    ErrorCode, Notification, PermissionDecision, PermissionRequestParams, PermissionRequestResult,
    PermissionResolution, PermissionResolvedParams, RequestId, RpcError, SessionEvent,
    daemon_notification, daemon_request,
};

use super::workspaces::Workspace;
use super::{RunMeta, Runtime, SessionInner, SessionRt};
use crate::config::PermissionRules;
use crate::peer::Peer;
use crate::sync::lock;

/// How many answered permission requests are remembered for late answers.
const RESOLVED_MEMORY: usize = 1024;

/// The daemon-wide part: rules from the config, grants per session, recent resolutions.
#[derive(Default)]
pub(super) struct Permissions {
    rules: PermissionRules,
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
    /// Every connection it was sent to, with that connection's request id.
    sent: Vec<(Arc<Peer>, RequestId)>,
    /// The decision, or `None` when a cancel withdrew the request.
    answer: oneshot::Sender<Option<PermissionDecision>>,
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
    /// Whether a tool call of `run` may run without asking.
    pub(super) fn allowed_without_asking(
        &self,
        session_id: &str,
        run: &RunMeta,
        tool: &str,
        command: Option<&str>,
    ) -> bool {
        self.permissions
            .allowed_without_asking(session_id, run, tool, command)
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
    pub(super) async fn ask_permission(
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
        tokio::select! {
            r = rx => r.unwrap_or(None),
            _ = token.cancelled() => {
                // A workspace close or shutdown fires the token before it drains the session:
                // withdraw the request here so `permissionResolved` precedes the call's end.
                let mut inner = lock(&s.inner);
                if let Some(p) = inner.permissions.take(&request_id) {
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
            if let Some(p) = inner.permissions.take(request_id) {
                // An escalation (run unconfined) is allowed once, whatever the answer says.
                if decision == PermissionDecision::AllowSession && p.params.escalation.is_none() {
                    lock(&self.permissions.grants)
                        .entry(s.id.clone())
                        .or_default()
                        .tools
                        .insert(p.params.tool.clone());
                }
                self.finish_permission(&mut inner, p, Some(decision), by);
                return Ok(());
            }
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
    pub(super) fn finish_permission(
        &self,
        inner: &mut SessionInner,
        p: PendingPermission,
        decision: Option<PermissionDecision>,
        by: &str,
    ) {
        let name = match decision {
            Some(PermissionDecision::Allow) => PermissionResolution::Allow,
            Some(PermissionDecision::AllowSession) => PermissionResolution::AllowSession,
            Some(PermissionDecision::Deny) => PermissionResolution::Deny,
            Some(PermissionDecision::Deferred) | None => PermissionResolution::Cancelled,
        };
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
        let _ = p.answer.send(decision);
    }

    /// Withdraws requests a cancel ended (under the session lock, before the cancel is
    /// announced).
    pub(super) fn withdraw_permissions(
        &self,
        inner: &mut SessionInner,
        withdrawn: Vec<PendingPermission>,
    ) {
        for p in withdrawn {
            self.finish_permission(inner, p, None, "cancel");
        }
    }
}

/// Whether a bash command matches an allow rule: the rule's words are the command's first words,
/// and the command has no shell syntax that could chain another command after an allowed one.
pub(super) fn bash_allowed(rules: &[String], command: &str) -> bool {
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
