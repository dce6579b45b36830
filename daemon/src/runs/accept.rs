//! `agent/send`: validate, commit the run's row (durable accept), make the accept transition
//! under the session lock and perform its effects (announce, spawn the driver), then answer.
//! A repeated `runId` is answered from the registry or the database instead.

use std::sync::{Arc, Mutex};

use tracing::{Instrument, warn};

use crush_protocol::RunState;
use crush_protocol::{
    AgentSendParams, AgentSendResult, ErrorCode, RpcError, SendMode, SessionEvent,
};

use super::registry::Known;
use super::state::Accepted;
use super::workspaces::Workspace;
use super::{MAX_RUN_ID_LEN, RunMeta, Runtime, SessionInner, SessionRt, shutting_down};
use crate::peer::Peer;
use crate::store::live::parts_json;
use crate::store::{NewRun, StoreError, new_id, now_ms};
use crate::sync::lock;

/// What `send` needs of a session.
struct KnownSession {
    id: String,
    workspace_id: String,
    model: Option<String>,
}

impl Runtime {
    /// Validates and accepts a prompt. Returns once the run is active or queued; never waits
    /// for the model, and for the disk only to commit the run's row.
    pub async fn send(
        self: &Arc<Self>,
        sender: Option<Arc<Peer>>,
        p: AgentSendParams,
    ) -> Result<AgentSendResult, RpcError> {
        if p.prompt.trim().is_empty()
            && !p.attachments.iter().any(|a| !a.text.trim().is_empty())
            && p.images.is_empty()
        {
            return Err(RpcError::invalid_params(
                "invalid params: prompt: must not be empty (or attach text or images)",
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
                let row = self.store.require_session(&p.session_id).await?;
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
        super::images::check(&p.images, model.info())?;
        let run = Arc::new(RunMeta {
            run_id: run_id.clone(),
            session_id: session.id.clone(),
            prompt: p.prompt,
            attachments: p.attachments,
            images: p.images,
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
                user_parts: parts_json(&run.user_parts()),
                created_at: run.created_at,
            })
            .await?;
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
                    if let Err(live) = self.registry.admit(&run) {
                        return probe(&run).check(&live);
                    }
                    Ok(self.admit(&s, &ws, &mut inner, run.clone(), p.mode))
                }
            };
            return match admitted {
                Ok(state) => Ok(AgentSendResult { run_id, state }),
                Err(e) => {
                    self.withdraw_accept(&run_id).await;
                    Err(e)
                }
            };
        }
    }

    /// The accept transition and its effects, under the gate and the session lock: the run
    /// starts (its driver is spawned on the workspace's tracker), joins the active turn as a
    /// steer, or waits in the queue. Returns the state to answer with.
    fn admit(
        self: &Arc<Self>,
        s: &Arc<SessionRt>,
        ws: &Workspace,
        inner: &mut SessionInner,
        run: Arc<RunMeta>,
        mode: SendMode,
    ) -> RunState {
        let steer = mode == SendMode::Steer;
        match inner
            .runs
            .accept(run.clone(), steer, || ws.token.child_token())
        {
            Accepted::Started(token) => {
                self.announce_start(inner, &run);
                let rt = self.clone();
                let s2 = s.clone();
                // The run is not the request's: its span has no parent.
                let span = tracing::info_span!(parent: None, "session", id = %s.id);
                ws.tracker
                    .spawn(async move { rt.drive(s2, run, token).await }.instrument(span));
                RunState::Running
            }
            Accepted::Steered { position } => {
                inner.events.publish(
                    Some(&run.run_id),
                    SessionEvent::RunQueued {
                        position,
                        steer: true,
                    },
                );
                RunState::Queued
            }
            Accepted::Queued { position, steer } => {
                inner.events.publish(
                    Some(&run.run_id),
                    SessionEvent::RunQueued { position, steer },
                );
                RunState::Queued
            }
        }
    }

    /// The effects of a run becoming active: its registry entry marked running, `runStarted`.
    pub(super) fn announce_start(&self, inner: &mut SessionInner, run: &RunMeta) {
        self.registry.mark_running(&run.run_id, None);
        inner
            .events
            .publish(Some(&run.run_id), SessionEvent::RunStarted);
    }

    /// The answer to a send whose run id is taken (its row exists).
    async fn already_accepted(&self, run: &RunMeta) -> Result<AgentSendResult, RpcError> {
        self.known_run(&run.run_id, &run.session_id, &run.prompt)
            .await?
            // The row went with its session between the insert and this read.
            .ok_or_else(|| StoreError::SessionNotFound(run.session_id.clone()).into())
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
        if let Some(live) = self.registry.live(run_id) {
            return probe.check(&live).map(Some);
        }
        // Ended, but the database does not know yet (`unsaved.rs`): the run is not new.
        if let Some(info) = self.registry.unsaved(run_id) {
            return probe
                .check(&Known {
                    state: info.state,
                    session_id: info.session_id,
                    prompt: info.prompt,
                })
                .map(Some);
        }
        let Some(row) = self.store.get_run(run_id).await? else {
            return Ok(None);
        };
        let mut r = probe.check(&Known {
            state: row.run_state()?,
            session_id: row.session_id,
            prompt: row.prompt,
        })?;
        // Written by a concurrent send of the same request that has not admitted it yet.
        if r.state == RunState::Accepted {
            r.state = RunState::Queued;
        }
        Ok(Some(r))
    }

    /// Removes the row of a run that was written but then refused (the workspace closed or the
    /// daemon began shutting down in between): the client is told it was not accepted. Should
    /// this delete fail too, the next start marks the row `interrupted`.
    async fn withdraw_accept(&self, run_id: &str) {
        if let Err(e) = self.store.withdraw_accept(run_id).await {
            warn!(run = %run_id, error = %e, "cannot remove a refused run's row");
        }
    }
}

/// Compares a send with the run that already has its id.
struct SameProbe<'a> {
    session_id: &'a str,
    prompt: &'a str,
    run_id: &'a str,
}

fn probe(run: &RunMeta) -> SameProbe<'_> {
    SameProbe {
        session_id: &run.session_id,
        prompt: &run.prompt,
        run_id: &run.run_id,
    }
}

impl SameProbe<'_> {
    /// The same prompt to the same session is answered with the run's state; anything else is
    /// a `DuplicateRunId`.
    fn check(&self, known: &Known) -> Result<AgentSendResult, RpcError> {
        if known.session_id == self.session_id && known.prompt == self.prompt {
            Ok(AgentSendResult {
                run_id: self.run_id.to_owned(),
                state: known.state,
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
