//! `agent/cancel`: the cancel transitions (all runs of a session, or one) under the session
//! lock with their effects — pending permission requests withdrawn, `cancelRequested`
//! announced — and the completion of prompts a cancel took out of the queue before they ran.

use std::sync::Arc;

use crush_protocol::{AgentCancelResult, ErrorCode, RpcError, RunCompleteParams, SessionEvent};

use super::state::Cancelled;
use super::unsaved::{EndWrite, OwnedEnd};
use super::{RunMeta, Runtime, SessionInner, SessionRt};
use crate::handlers::{require_session, storage};
use crate::sync::lock;

impl Runtime {
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

    /// Cancels one run of the session (see [`super::state::SessionState::cancel_one`]); the
    /// withdrawn permission requests are the cancelled turn's. `None` when the session does not
    /// hold the run.
    fn cancel_run(self: &Arc<Self>, s: &Arc<SessionRt>, run_id: &str) -> Option<Vec<String>> {
        let (covered, dropped) = {
            let mut inner = lock(&s.inner);
            let c = inner.runs.cancel_one(run_id)?;
            let withdrawn = match &c.fired {
                Some(active) => inner.permissions.take_of_run(active),
                None => Vec::new(),
            };
            self.announce_cancel(&mut inner, withdrawn, c)
        };
        self.complete_dropped_later(s, dropped);
        Some(covered)
    }

    /// Cancels everything the session holds; returns the runs covered.
    pub(super) fn cancel_session(self: &Arc<Self>, s: &Arc<SessionRt>) -> Vec<String> {
        let (covered, dropped) = {
            let mut inner = lock(&s.inner);
            let c = inner.runs.cancel_all();
            let withdrawn = inner.permissions.take_all();
            self.announce_cancel(&mut inner, withdrawn, c)
        };
        self.complete_dropped_later(s, dropped);
        covered
    }

    /// The shared effects of a cancel, under the session lock: withdraws the permission
    /// requests of the cancelled run, then publishes `cancelRequested` for every run covered.
    fn announce_cancel(
        &self,
        inner: &mut SessionInner,
        withdrawn: Vec<super::permissions::PendingPermission>,
        c: Cancelled<Arc<RunMeta>>,
    ) -> (Vec<String>, Vec<Arc<RunMeta>>) {
        self.withdraw_permissions(inner, withdrawn);
        let covered = c.covered();
        if let Some(first) = covered.first() {
            inner.events.publish(
                Some(first),
                SessionEvent::CancelRequested {
                    run_ids: covered.clone(),
                },
            );
        }
        (covered, c.dropped)
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

    /// Records runs dropped from the queue as cancelled, then sends their `$/runComplete`.
    async fn complete_dropped(self: &Arc<Self>, s: &Arc<SessionRt>, dropped: Vec<Arc<RunMeta>>) {
        let write = EndWrite::Ends(
            dropped
                .iter()
                .map(|r| OwnedEnd {
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
                self.save_end_later(write, "cancelled", Some(&error), None);
                Some(error)
            }
        };
        let mut inner = lock(&s.inner);
        self.registry
            .retire(dropped.iter().map(|r| r.run_id.as_str()));
        for r in &dropped {
            inner.events.publish(
                Some(&r.run_id),
                SessionEvent::RunFinished {
                    state: "cancelled".to_owned(),
                    error: error.clone(),
                    message_id: None,
                },
            );
            inner.events.complete(
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
}
