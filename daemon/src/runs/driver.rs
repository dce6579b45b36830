//! The task that works a busy session: it runs the active turn (history → model stream → deltas
//! → database), publishes the run's `$/runComplete` once everything is written, and hands the
//! session to the next queued run — all on the workspace's tracker, never on a connection.
//!
//! Final writes need no detached context: a run task is never aborted, only told to stop by its
//! token, so the writes after a cancel run to completion (each bounded by the store's busy
//! timeout).

use std::sync::Arc;

use futures::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crush_protocol::{RunCompleteParams, SessionEvent};

use super::{RunMeta, Runtime, SessionRt, mark_running, user_content};
use crate::model::{ChatMessage, FinishReason, ModelEvent, Role, TurnRequest, Usage};
use crate::store::live::LiveMessage;
use crate::store::{FinishTurn, FoldedPrompt, StartTurn};
use crate::sync::lock;

/// How many earlier messages of the session are sent to the model.
const HISTORY_LIMIT: i64 = 400;

/// How a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Completed,
    Cancelled,
    Failed,
}

impl End {
    fn state(self) -> &'static str {
        match self {
            End::Completed => "completed",
            End::Cancelled => "cancelled",
            End::Failed => "failed",
        }
    }
}

struct Outcome {
    end: End,
    message_id: Option<String>,
    text: Option<String>,
    error: Option<String>,
    folded: Vec<Arc<RunMeta>>,
}

impl Outcome {
    fn failed(error: String) -> Self {
        Self {
            end: End::Failed,
            message_id: None,
            text: None,
            error: Some(error),
            folded: Vec::new(),
        }
    }
}

/// How one model step ended.
enum Step {
    Finished(FinishReason),
    Cancelled,
    Failed(String),
}

impl Runtime {
    /// Works the session until its queue is empty.
    pub(super) async fn drive(
        self: Arc<Self>,
        s: Arc<SessionRt>,
        mut run: Arc<RunMeta>,
        mut token: CancellationToken,
    ) {
        loop {
            let outcome = self.turn(&s, &run, &token).await;
            let next = {
                let mut inner = lock(&s.inner);
                let ids = std::iter::once(run.run_id.as_str())
                    .chain(outcome.folded.iter().map(|r| r.run_id.as_str()));
                self.retire(ids);
                for r in std::iter::once(&run).chain(outcome.folded.iter()) {
                    let folded_into = (!Arc::ptr_eq(r, &run)).then(|| run.run_id.clone());
                    inner.publish(
                        &s.id,
                        Some(&r.run_id),
                        SessionEvent::RunFinished {
                            state: outcome.end.state().to_owned(),
                            error: outcome.error.clone(),
                        },
                    );
                    inner.complete(
                        RunCompleteParams {
                            session_id: s.id.clone(),
                            run_id: r.run_id.clone(),
                            message_id: outcome.message_id.clone(),
                            text: outcome.text.clone(),
                            error: outcome.error.clone(),
                            cancelled: outcome.end == End::Cancelled,
                            folded_into,
                        },
                        r.sender.as_ref(),
                    );
                }
                // Steered prompts that missed the turn run next, ahead of the queue.
                if let Some(active) = inner.active.take() {
                    for (i, r) in active.steered.into_iter().enumerate() {
                        inner.queue.insert(
                            i,
                            super::Queued {
                                run: r,
                                steer: true,
                            },
                        );
                    }
                }
                match inner.queue.pop_front() {
                    Some(q) => {
                        let t =
                            inner.activate(&s.id, &s.ws(), &mut lock(&self.runs), q.run.clone());
                        Some((q.run, t))
                    }
                    None => None,
                }
            };
            match next {
                Some((r, t)) => {
                    run = r;
                    token = t;
                }
                None => break,
            }
        }
        self.maybe_evict(&s);
    }

    /// One turn, written to the database before it returns.
    async fn turn(&self, s: &SessionRt, run: &Arc<RunMeta>, token: &CancellationToken) -> Outcome {
        let model = run.model.info().clone();
        let history = if token.is_cancelled() {
            Vec::new()
        } else {
            match self.store.list_messages(&s.id, None, HISTORY_LIMIT).await {
                Ok(page) => page.messages,
                Err(e) => return Outcome::failed(format!("cannot read the session: {e}")),
            }
        };
        let user_parts = run.user_parts();
        let user_parts_json = user_parts.to_string();
        let (user, assistant) = match self
            .store
            .start_turn(&StartTurn {
                run_id: &run.run_id,
                session_id: &s.id,
                prompt: &run.prompt,
                user_parts: &user_parts_json,
                model: &model.model,
                provider: &model.provider,
            })
            .await
        {
            Ok(rows) => rows,
            Err(e) => return Outcome::failed(format!("cannot save the prompt: {e}")),
        };
        {
            let mut inner = lock(&s.inner);
            inner.publish(
                &s.id,
                Some(&run.run_id),
                SessionEvent::UserMessage {
                    message_id: user.id.clone(),
                    text: run.prompt.clone(),
                },
            );
            inner.publish(
                &s.id,
                Some(&run.run_id),
                SessionEvent::AssistantStarted {
                    message_id: assistant.id.clone(),
                    model: model.name.clone(),
                },
            );
        }

        let mut request = TurnRequest {
            messages: history_messages(&history),
        };
        request
            .messages
            .push(ChatMessage::new(Role::User, user_content(&user_parts)));
        let mut live = LiveMessage::new(assistant.id.clone(), self.flush_interval);
        let mut usage = Usage::default();
        let mut folded: Vec<Arc<RunMeta>> = Vec::new();

        let (end, reason, error) = loop {
            let step = if token.is_cancelled() {
                // Cancelled before the model was called: the turn is written as cancelled.
                Step::Cancelled
            } else {
                self.step(s, run, token, &request, &mut live, &mut usage)
                    .await
            };
            let reason = match step {
                Step::Cancelled => break (End::Cancelled, "canceled", None),
                Step::Failed(e) => break (End::Failed, "error", Some(e)),
                Step::Finished(r) => r,
            };
            // A step boundary: fold the steered prompts waiting, or close the turn to steers.
            let steered = {
                let mut inner = lock(&s.inner);
                match inner.active.as_mut() {
                    Some(a) if !token.is_cancelled() && !a.steered.is_empty() => {
                        std::mem::take(&mut a.steered)
                    }
                    Some(a) => {
                        a.accepting_steer = false;
                        Vec::new()
                    }
                    None => Vec::new(),
                }
            };
            if steered.is_empty() {
                break (End::Completed, reason.as_str(), None);
            }
            match self
                .fold(s, run, &steered, &mut request, &mut live, reason)
                .await
            {
                Ok(()) => folded.extend(steered),
                Err(e) => {
                    // The steered prompts were not written; they still end with this turn.
                    folded.extend(steered);
                    break (End::Failed, "error", Some(e));
                }
            }
        };

        let text = live.text();
        let parts = live.parts_json();
        let mut run_ids: Vec<&str> = vec![&run.run_id];
        run_ids.extend(folded.iter().map(|r| r.run_id.as_str()));
        let write = self
            .store
            .finish_turn(&FinishTurn {
                session_id: &s.id,
                message_id: Some(&live.id),
                parts: &parts,
                finish_reason: reason,
                error: error.as_deref(),
                run_state: end.state(),
                run_ids: &run_ids,
                prompt_tokens: usage.prompt_tokens as i64,
                completion_tokens: usage.completion_tokens as i64,
            })
            .await;
        let error = match write {
            Ok(()) => error,
            Err(e) => {
                warn!(run = %run.run_id, error = %e, "cannot save the end of a turn");
                Some(match error {
                    Some(first) => format!("{first}; and the turn could not be saved: {e}"),
                    None => format!("the turn could not be saved: {e}"),
                })
            }
        };
        lock(&s.inner).publish(
            &s.id,
            Some(&run.run_id),
            SessionEvent::MessageFinished {
                message_id: live.id.clone(),
                finish_reason: reason.to_owned(),
                error: error.clone(),
            },
        );
        debug!(run = %run.run_id, state = end.state(), "turn ended");
        Outcome {
            end,
            message_id: Some(live.id),
            text: Some(text),
            error,
            folded,
        }
    }

    /// Streams one model step into `live`.
    async fn step(
        &self,
        s: &SessionRt,
        run: &RunMeta,
        token: &CancellationToken,
        request: &TurnRequest,
        live: &mut LiveMessage,
        usage: &mut Usage,
    ) -> Step {
        let mut stream = run.model.stream(request.clone(), token.clone());
        loop {
            let flush_at = live.next_flush_at();
            let event = tokio::select! {
                biased;
                _ = token.cancelled() => return Step::Cancelled,
                _ = sleep_until(flush_at), if flush_at.is_some() => {
                    if let Err(e) = live.flush(&self.store).await {
                        // Keep streaming: the final write retries the whole message.
                        warn!(run = %run.run_id, error = %e, "cannot save streamed text");
                    }
                    continue;
                }
                ev = stream.next() => ev,
            };
            match event {
                Some(ModelEvent::TextDelta(t)) => {
                    let ev = SessionEvent::TextDelta {
                        message_id: live.id.clone(),
                        text: t.clone(),
                    };
                    if !lock(&s.inner).publish_live(&s.id, token, &run.run_id, ev) {
                        return Step::Cancelled;
                    }
                    live.push_text(&t);
                }
                Some(ModelEvent::ReasoningDelta(t)) => {
                    let ev = SessionEvent::ReasoningDelta {
                        message_id: live.id.clone(),
                        text: t.clone(),
                    };
                    if !lock(&s.inner).publish_live(&s.id, token, &run.run_id, ev) {
                        return Step::Cancelled;
                    }
                    live.push_reasoning(&t);
                }
                Some(ModelEvent::Finish { reason, usage: u }) => {
                    usage.prompt_tokens += u.prompt_tokens;
                    usage.completion_tokens += u.completion_tokens;
                    return Step::Finished(reason);
                }
                Some(ModelEvent::Error(e)) => return Step::Failed(e.message),
                None if token.is_cancelled() => return Step::Cancelled,
                None => {
                    return Step::Failed("the model's stream ended without finishing".to_owned());
                }
            }
        }
    }

    /// Folds steered prompts into the turn: the current assistant message is finished, their
    /// user messages are written, and a new assistant message starts the next step.
    async fn fold(
        &self,
        s: &SessionRt,
        run: &RunMeta,
        steered: &[Arc<RunMeta>],
        request: &mut TurnRequest,
        live: &mut LiveMessage,
        reason: FinishReason,
    ) -> Result<(), String> {
        self.store
            .finish_message(&live.id, &live.parts_json(), reason.as_str(), None)
            .await
            .map_err(|e| format!("cannot save a step: {e}"))?;
        let parts: Vec<Value> = steered.iter().map(|r| r.user_parts()).collect();
        let parts_json: Vec<String> = parts.iter().map(Value::to_string).collect();
        let prompts: Vec<FoldedPrompt<'_>> = steered
            .iter()
            .zip(&parts_json)
            .map(|(r, p)| FoldedPrompt {
                run_id: &r.run_id,
                prompt: &r.prompt,
                user_parts: p,
            })
            .collect();
        let info = run.model.info();
        let (users, assistant) = self
            .store
            .add_step(&s.id, &run.run_id, &prompts, &info.model, &info.provider)
            .await
            .map_err(|e| format!("cannot save a steered prompt: {e}"))?;
        {
            let mut runs = lock(&self.runs);
            for r in steered {
                mark_running(&mut runs, &r.run_id, Some(&run.run_id));
            }
        }
        {
            let mut inner = lock(&s.inner);
            inner.publish(
                &s.id,
                Some(&run.run_id),
                SessionEvent::MessageFinished {
                    message_id: live.id.clone(),
                    finish_reason: reason.as_str().to_owned(),
                    error: None,
                },
            );
            for (r, u) in steered.iter().zip(&users) {
                inner.publish(
                    &s.id,
                    Some(&r.run_id),
                    SessionEvent::RunFolded {
                        into: run.run_id.clone(),
                    },
                );
                inner.publish(
                    &s.id,
                    Some(&r.run_id),
                    SessionEvent::UserMessage {
                        message_id: u.id.clone(),
                        text: r.prompt.clone(),
                    },
                );
            }
            inner.publish(
                &s.id,
                Some(&run.run_id),
                SessionEvent::AssistantStarted {
                    message_id: assistant.id.clone(),
                    model: info.name.clone(),
                },
            );
        }
        request
            .messages
            .push(ChatMessage::new(Role::Assistant, live.text()));
        for p in &parts {
            request
                .messages
                .push(ChatMessage::new(Role::User, user_content(p)));
        }
        *live = LiveMessage::new(assistant.id, self.flush_interval);
        Ok(())
    }
}

async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The conversation so far as the model sees it: user and assistant text, oldest first.
/// Assistant messages without text (a turn cancelled before it said anything) are left out.
fn history_messages(rows: &[crate::store::MessageRow]) -> Vec<ChatMessage> {
    let mut out = Vec::with_capacity(rows.len());
    for m in rows {
        let parts: Value = serde_json::from_str(&m.parts).unwrap_or(Value::Null);
        match m.role.as_str() {
            "user" => out.push(ChatMessage::new(Role::User, user_content(&parts))),
            "assistant" => {
                let text: String = parts
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["type"] == "text")
                    .filter_map(|p| p["text"].as_str())
                    .collect();
                if !text.is_empty() {
                    out.push(ChatMessage::new(Role::Assistant, text));
                }
            }
            _ => {}
        }
    }
    out
}
