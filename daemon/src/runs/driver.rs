//! The task that works a busy session: it runs the active turn (history → model stream → deltas
//! → database), publishes the run's `$/runComplete` once everything is written, and hands the
//! session to the next queued run — all on the workspace's tracker, never on a connection.
//!
//! Final writes need no detached context: a run task is never aborted, only told to stop by its
//! token, so the writes after a cancel run to completion (each bounded by the store's busy
//! timeout).

use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crush_protocol::{
    Part, PermissionDecision, PermissionRequestParams, RunCompleteParams, RunState, SessionEvent,
    ToolStatus,
};

use super::late::{LateWrite, OwnedEnd, OwnedFinish};
use super::{RunMeta, Runtime, SessionRt, mark_running, user_content};
use crate::model::http::MAX_RETRY_AFTER;
use crate::model::{
    ChatMessage, FinishReason, ModelError, ModelEvent, Reasoning, ToolCall, TurnRequest, Usage,
};
use crate::store::live::{LiveMessage, parts_json};
use crate::store::{FoldedPrompt, NextStep, StartTurn, new_id};
use crate::sync::lock;
use crate::tools::{Limits, ToolContext, ToolOutput};

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
    fn state(self) -> RunState {
        match self {
            End::Completed => RunState::Completed,
            End::Cancelled => RunState::Cancelled,
            End::Failed => RunState::Failed,
        }
    }
}

struct Outcome {
    end: End,
    message_id: Option<String>,
    text: Option<String>,
    error: Option<String>,
    folded: Vec<Arc<RunMeta>>,
    written: Written,
}

/// Whether the run's end is in the database.
enum Written {
    Yes,
    /// The turn's last write failed; retry it (`late.rs`).
    Failed(LateWrite),
    /// The turn failed before it wrote anything that records its end.
    NotYet,
}

impl Outcome {
    fn failed(error: String) -> Self {
        Self {
            end: End::Failed,
            message_id: None,
            text: None,
            error: Some(error),
            folded: Vec::new(),
            written: Written::NotYet,
        }
    }
}

/// How one model step ended.
enum Step {
    /// With the tool calls the model made (empty when it is done).
    Finished(FinishReason, Vec<ToolCall>),
    Cancelled,
    Failed(String),
}

/// How one try of a model call ended.
enum Attempt {
    Done(Step),
    Failed(ModelError),
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
            let mut outcome = self.turn(&s, &run, &token).await;
            self.settle_write(&s, &run, &mut outcome).await;
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
                            state: outcome.end.state(),
                            error: outcome.error.clone(),
                            message_id: outcome.message_id.clone(),
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
                        r.sender().as_ref(),
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
    }

    /// One turn, written to the database before it returns: model steps, the tool calls between
    /// them, and steered prompts folded in at step boundaries.
    async fn turn(
        self: &Arc<Self>,
        s: &SessionRt,
        run: &Arc<RunMeta>,
        token: &CancellationToken,
    ) -> Outcome {
        let model = run.model.info().clone();
        let ws_id = s.ws().id.clone();
        let (history, root) = if token.is_cancelled() {
            (Vec::new(), None)
        } else {
            let history = match self.store.list_messages(&s.id, None, HISTORY_LIMIT).await {
                Ok(page) => page.messages,
                Err(e) => return Outcome::failed(format!("cannot read the session: {e}")),
            };
            let root = match self.store.get_workspace(&ws_id).await {
                Ok(w) => w.map(|w| PathBuf::from(w.path)),
                Err(e) => return Outcome::failed(format!("cannot read the workspace: {e}")),
            };
            (history, root)
        };
        let user_parts = run.user_parts();
        let user_parts_json = parts_json(&user_parts);
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

        let tools = ToolContext {
            root: root.clone().unwrap_or_default(),
            cancel: token.clone(),
            scrub_env: self.models.key_variables(),
            limits: Limits {
                bash_default_timeout: self.agent.bash_timeout,
                bash_max_timeout: self.agent.bash_max_timeout,
                ..Limits::default()
            },
        };
        let mut request = TurnRequest {
            system: match &root {
                Some(root) => super::prompt::system_prompt(root).await,
                None => String::new(),
            },
            messages: history_messages(&history),
            tools: if root.is_some() {
                crate::tools::specs()
            } else {
                Vec::new()
            },
            max_output_tokens: model.max_output_tokens,
        };
        request
            .messages
            .push(ChatMessage::user(user_content(&user_parts)));
        let mut live = LiveMessage::new(assistant.id.clone(), self.flush_interval);
        let mut usage = Usage::default();
        let mut folded: Vec<Arc<RunMeta>> = Vec::new();
        let mut steps: u32 = 0;

        let (end, reason, error) = loop {
            if steps >= self.agent.max_steps && !token.is_cancelled() {
                break (
                    End::Failed,
                    FinishReason::Error,
                    Some(format!(
                        "the run stopped after {steps} model steps (the [agent] max_steps limit); \
                         send a follow-up prompt to let it continue"
                    )),
                );
            }
            let step = if token.is_cancelled() {
                // Cancelled before the model was called: the turn is written as cancelled.
                Step::Cancelled
            } else {
                steps += 1;
                self.step(s, run, token, &request, &mut live, &mut usage)
                    .await
            };
            let (reason, calls) = match step {
                Step::Cancelled => break (End::Cancelled, FinishReason::Canceled, None),
                Step::Failed(e) => break (End::Failed, FinishReason::Error, Some(e)),
                Step::Finished(r, calls) => (r, calls),
            };
            // A step boundary: take the steered prompts waiting, or close the turn to steers
            // when it is about to end.
            let steered = {
                let mut inner = lock(&s.inner);
                match inner.active.as_mut() {
                    Some(a) if !token.is_cancelled() && !a.steered.is_empty() => {
                        let taken = std::mem::take(&mut a.steered);
                        // From now on they are part of this turn: a cancel naming one of them
                        // (`cancel_run`) finds the run it joins, even while the step's tools
                        // wait for a permission answer before the fold is written.
                        let mut runs = lock(&self.runs);
                        for r in &taken {
                            if let Some(l) = runs.get_mut(&r.run_id) {
                                l.folded_into = Some(run.run_id.clone());
                            }
                        }
                        taken
                    }
                    Some(a) => {
                        if calls.is_empty() {
                            a.accepting_steer = false;
                        }
                        Vec::new()
                    }
                    None => Vec::new(),
                }
            };
            if calls.is_empty() && steered.is_empty() {
                break (End::Completed, reason, None);
            }
            let assistant_text = live.text();
            let reasoning = live.reasoning();
            let results = if calls.is_empty() {
                None
            } else {
                // The calls go to disk before any of them runs (and before a permission prompt
                // that may wait for minutes): a daemon killed mid-tool leaves the call recorded
                // beside whatever it changed, and the next turn's history answers it.
                if let Err(e) = live.flush(&self.store).await {
                    warn!(run = %run.run_id, error = %e, "cannot save the step's tool calls");
                }
                Some(
                    self.run_tools(s, run, token, &tools, &live.id, &calls)
                        .await,
                )
            };
            match self
                .next_step(s, run, &steered, results.as_ref(), &mut live, reason)
                .await
            {
                Ok(()) => folded.extend(steered.iter().cloned()),
                Err(e) => {
                    // The steered prompts were not written; they still end with this turn.
                    folded.extend(steered);
                    break (End::Failed, FinishReason::Error, Some(e));
                }
            }
            request.messages.push(ChatMessage::Assistant {
                text: assistant_text,
                reasoning,
                tool_calls: calls,
            });
            if let Some(results) = results {
                request.messages.extend(results.messages);
            }
            for r in &steered {
                request
                    .messages
                    .push(ChatMessage::user(user_content(&r.user_parts())));
            }
        };

        let text = live.text();
        // The last write, made from the owned form that is kept for a retry if it fails.
        let last = LateWrite::Turn(OwnedFinish {
            session_id: s.id.clone(),
            message_id: Some(live.id.clone()),
            parts: live.parts_json(),
            finish_reason: reason,
            error: error.clone(),
            run_state: end.state(),
            run_ids: std::iter::once(&run.run_id)
                .chain(folded.iter().map(|r| &r.run_id))
                .cloned()
                .collect(),
            prompt_tokens: usage.prompt_tokens as i64,
            completion_tokens: usage.completion_tokens as i64,
        });
        let (error, written) = match self.write_end(&last).await {
            Ok(()) => (error, Written::Yes),
            Err(e) => {
                warn!(run = %run.run_id, error = %e, "cannot save the end of a turn");
                let shown = match error {
                    Some(first) => format!("{first}; and the turn could not be saved: {e}"),
                    None => format!("the turn could not be saved: {e}"),
                };
                (Some(shown), Written::Failed(last))
            }
        };
        lock(&s.inner).publish(
            &s.id,
            Some(&run.run_id),
            SessionEvent::MessageFinished {
                message_id: live.id.clone(),
                finish_reason: reason,
                error: error.clone(),
            },
        );
        debug!(run = %run.run_id, state = end.state().as_str(), steps, "turn ended");
        Outcome {
            end,
            message_id: Some(live.id),
            text: Some(text),
            error,
            folded,
            written,
        }
    }

    /// Makes sure the run's end reaches the database: a turn that failed before writing it
    /// records it now, and a write that failed is kept and retried (`late.rs`), with the run's
    /// terminal record served to `run/get` meanwhile. Runs while the runs are still registered.
    async fn settle_write(
        self: &Arc<Self>,
        s: &SessionRt,
        run: &Arc<RunMeta>,
        outcome: &mut Outcome,
    ) {
        let late = match std::mem::replace(&mut outcome.written, Written::Yes) {
            Written::Yes => return,
            Written::Failed(w) => w,
            Written::NotYet => {
                let w = LateWrite::Ends(vec![OwnedEnd {
                    run_id: run.run_id.clone(),
                    session_id: s.id.clone(),
                    prompt: run.prompt.clone(),
                    state: outcome.end.state(),
                    error: outcome.error.clone(),
                }]);
                match self.write_end(&w).await {
                    Ok(()) => return,
                    Err(e) => {
                        warn!(run = %run.run_id, error = %e, "cannot record how the run ended");
                        w
                    }
                }
            }
        };
        let infos = self.ended_infos(
            &late,
            outcome.end.state(),
            outcome.error.as_deref(),
            outcome.message_id.as_deref(),
        );
        self.save_later(late, infos);
    }

    /// One model step with retries: a call that fails before anything of it was streamed, in
    /// a way worth retrying (429, 5xx, connection errors), is tried again after a backoff that
    /// honours the server's `Retry-After`, at most `[agent] max_attempts` times in all. Once
    /// output streamed, a failure ends the step: retrying would repeat what clients saw.
    async fn step(
        &self,
        s: &SessionRt,
        run: &RunMeta,
        token: &CancellationToken,
        request: &TurnRequest,
        live: &mut LiveMessage,
        usage: &mut Usage,
    ) -> Step {
        let max = self.agent.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            let mut streamed = false;
            let e = match self
                .step_once(s, run, token, request, live, usage, &mut streamed)
                .await
            {
                Attempt::Done(step) => return step,
                Attempt::Failed(e) => e,
            };
            if !e.retryable || streamed || attempt >= max {
                return Step::Failed(if attempt > 1 {
                    format!("{} (after {attempt} attempts)", e.message)
                } else {
                    e.message
                });
            }
            let backoff = self
                .agent
                .retry_base_delay
                .saturating_mul(1u32 << (attempt - 1).min(16))
                .min(self.agent.retry_max_delay);
            let delay = match e.retry_after {
                Some(d) if d > MAX_RETRY_AFTER => {
                    return Step::Failed(format!(
                        "{} (the server asked to wait {} s before retrying)",
                        e.message,
                        d.as_secs()
                    ));
                }
                Some(d) => d,
                None => backoff,
            };
            attempt += 1;
            warn!(run = %run.run_id, attempt, delay_ms = delay.as_millis() as u64, error = %e.message, "retrying a model call");
            let announced = lock(&s.inner).publish_live(
                &s.id,
                token,
                &run.run_id,
                SessionEvent::Retrying {
                    attempt,
                    max_attempts: max,
                    delay_ms: delay.as_millis() as u64,
                    error: e.message.clone(),
                },
            );
            if !announced {
                return Step::Cancelled;
            }
            tokio::select! {
                _ = token.cancelled() => return Step::Cancelled,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Streams one model call into `live`.
    #[allow(clippy::too_many_arguments)]
    async fn step_once(
        &self,
        s: &SessionRt,
        run: &RunMeta,
        token: &CancellationToken,
        request: &TurnRequest,
        live: &mut LiveMessage,
        usage: &mut Usage,
        streamed: &mut bool,
    ) -> Attempt {
        let mut stream = run.model.stream(request.clone(), token.clone());
        let mut calls = Vec::new();
        loop {
            let flush_at = live.next_flush_at();
            let event = tokio::select! {
                biased;
                _ = token.cancelled() => return Attempt::Done(Step::Cancelled),
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
                    *streamed = true;
                    let ev = SessionEvent::TextDelta {
                        message_id: live.id.clone(),
                        text: t.clone(),
                    };
                    if !lock(&s.inner).publish_live(&s.id, token, &run.run_id, ev) {
                        return Attempt::Done(Step::Cancelled);
                    }
                    live.push_text(&t);
                }
                Some(ModelEvent::ReasoningDelta(t)) => {
                    *streamed = true;
                    let ev = SessionEvent::ReasoningDelta {
                        message_id: live.id.clone(),
                        text: t.clone(),
                    };
                    if !lock(&s.inner).publish_live(&s.id, token, &run.run_id, ev) {
                        return Attempt::Done(Step::Cancelled);
                    }
                    live.push_reasoning(&t);
                }
                Some(ModelEvent::ReasoningSignature(sig)) => live.sign_reasoning(&sig),
                Some(ModelEvent::ToolCall(c)) => {
                    *streamed = true;
                    // Stored with the input as the model's JSON text, unparsed.
                    live.push_part(Part::ToolCall {
                        id: c.id.clone(),
                        name: c.name.clone(),
                        input: Value::String(c.input.clone()),
                    });
                    calls.push(c);
                }
                Some(ModelEvent::Finish { reason, usage: u }) => {
                    usage.prompt_tokens += u.prompt_tokens;
                    usage.completion_tokens += u.completion_tokens;
                    return Attempt::Done(Step::Finished(reason, calls));
                }
                Some(ModelEvent::Error(e)) => return Attempt::Failed(e),
                None if token.is_cancelled() => return Attempt::Done(Step::Cancelled),
                None => {
                    return Attempt::Failed(ModelError::transient(
                        "the model's stream ended without finishing",
                    ));
                }
            }
        }
    }

    /// Runs a step's tool calls in order, asking for permission where needed. Every call gets
    /// a result, also when the run is cancelled half-way, so the conversation stays valid for
    /// the next turn.
    async fn run_tools(
        self: &Arc<Self>,
        s: &SessionRt,
        run: &RunMeta,
        token: &CancellationToken,
        ctx: &ToolContext,
        message_id: &str,
        calls: &[ToolCall],
    ) -> ToolResults {
        let mut out = ToolResults::default();
        for call in calls {
            let input: Value = serde_json::from_str(&call.input)
                .unwrap_or_else(|_| Value::String(call.input.clone()));
            lock(&s.inner).publish(
                &s.id,
                Some(&run.run_id),
                SessionEvent::ToolCallStarted {
                    message_id: message_id.to_owned(),
                    tool_call_id: call.id.clone(),
                    tool: call.name.clone(),
                    input: input.clone(),
                },
            );
            let (status, output) = if token.is_cancelled() {
                (
                    ToolStatus::Cancelled,
                    tool_error("the run was cancelled before this tool ran"),
                )
            } else {
                self.run_tool(s, run, token, ctx, call, input).await
            };
            let status = if status == ToolStatus::Completed && output.is_error {
                ToolStatus::Failed
            } else {
                status
            };
            lock(&s.inner).publish(
                &s.id,
                Some(&run.run_id),
                SessionEvent::ToolCallFinished {
                    message_id: message_id.to_owned(),
                    tool_call_id: call.id.clone(),
                    tool: call.name.clone(),
                    status,
                    output: output.content.clone(),
                    metadata: output.metadata.clone(),
                },
            );
            out.parts.push(Part::ToolResult {
                tool_call_id: call.id.clone(),
                name: call.name.clone(),
                content: output.content.clone(),
                status,
                is_error: Some(output.is_error),
                metadata: output.metadata.clone(),
            });
            out.messages.push(ChatMessage::ToolResult {
                call_id: call.id.clone(),
                name: call.name.clone(),
                content: output.content,
                is_error: output.is_error,
            });
        }
        out
    }

    /// One tool call: prepare (validate, resolve paths, compute the diff), ask if needed, run.
    async fn run_tool(
        self: &Arc<Self>,
        s: &SessionRt,
        run: &RunMeta,
        token: &CancellationToken,
        ctx: &ToolContext,
        call: &ToolCall,
        input: Value,
    ) -> (ToolStatus, ToolOutput) {
        if ctx.root.as_os_str().is_empty() {
            return (
                ToolStatus::Failed,
                tool_error("the workspace's directory is unknown; tools are unavailable"),
            );
        }
        let prepared = match crate::tools::prepare(ctx, &call.name, &call.input).await {
            Ok(p) => p,
            Err(out) => return (ToolStatus::Failed, out),
        };
        if crate::tools::needs_permission(&call.name)
            && !self.allowed_without_asking(&s.id, run, &call.name, prepared.command.as_deref())
        {
            let params = PermissionRequestParams {
                request_id: new_id(),
                session_id: s.id.clone(),
                run_id: run.run_id.clone(),
                tool_call_id: call.id.clone(),
                tool: call.name.clone(),
                title: prepared.title.clone(),
                input,
                diff: prepared.diff.clone(),
            };
            match self.ask_permission(s, token, params).await {
                Some(PermissionDecision::Allow | PermissionDecision::AllowSession) => {}
                Some(PermissionDecision::Deny | PermissionDecision::Deferred) => {
                    return (
                        ToolStatus::Denied,
                        tool_error(format!(
                            "The user denied this action ({} was not run). Do not retry it; \
                             ask the user or take another approach.",
                            prepared.title
                        )),
                    );
                }
                None => {
                    return (
                        ToolStatus::Cancelled,
                        tool_error("the run was cancelled while waiting for permission"),
                    );
                }
            }
        }
        if token.is_cancelled() {
            return (
                ToolStatus::Cancelled,
                tool_error("the run was cancelled before this tool ran"),
            );
        }
        let out = prepared.run(ctx).await;
        if token.is_cancelled() {
            return (ToolStatus::Cancelled, out);
        }
        (ToolStatus::Completed, out)
    }

    /// Moves a turn to its next model step: the current assistant message is finished, the
    /// step's tool results and the steered prompts' user messages are written, and a new
    /// assistant message starts — one transaction.
    async fn next_step(
        &self,
        s: &SessionRt,
        run: &RunMeta,
        steered: &[Arc<RunMeta>],
        results: Option<&ToolResults>,
        live: &mut LiveMessage,
        reason: FinishReason,
    ) -> Result<(), String> {
        let steered_parts: Vec<String> = steered
            .iter()
            .map(|r| parts_json(&r.user_parts()))
            .collect();
        let prompts: Vec<FoldedPrompt<'_>> = steered
            .iter()
            .zip(&steered_parts)
            .map(|(r, p)| FoldedPrompt {
                run_id: &r.run_id,
                prompt: &r.prompt,
                user_parts: p,
            })
            .collect();
        let results_json = results.map(|r| parts_json(&r.parts));
        let info = run.model.info();
        let previous_parts = live.parts_json();
        let (users, assistant) = self
            .store
            .add_step(&NextStep {
                session_id: &s.id,
                run_id: &run.run_id,
                previous_id: &live.id,
                previous_parts: &previous_parts,
                previous_finish: reason,
                tool_results: results_json.as_deref(),
                folded: &prompts,
                model: &info.model,
                provider: &info.provider,
            })
            .await
            .map_err(|e| format!("cannot save a step: {e}"))?;
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
                    finish_reason: reason,
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
        *live = LiveMessage::new(assistant.id, self.flush_interval);
        Ok(())
    }
}

/// A step's tool results: as stored (parts of a `tool` message) and as sent to the model.
#[derive(Default)]
struct ToolResults {
    parts: Vec<Part>,
    messages: Vec<ChatMessage>,
}

async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The conversation so far as the model sees it, oldest first: user text, assistant text with
/// its tool calls, and tool results. The window may start mid-turn and a crash or cancel may
/// leave a call without its result, so the result is repaired: results without their call are
/// dropped, and a call without a result gets one saying it did not complete (both APIs reject
/// unpaired calls).
fn history_messages(rows: &[crate::store::MessageRow]) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(rows.len());
    let mut open_calls: Vec<(String, String)> = Vec::new();
    let close_open = |out: &mut Vec<ChatMessage>, open: &mut Vec<(String, String)>| {
        for (id, name) in open.drain(..) {
            out.push(ChatMessage::ToolResult {
                call_id: id,
                name,
                content: "the tool call did not complete (the run was interrupted or cancelled)"
                    .to_owned(),
                is_error: true,
            });
        }
    };
    for m in rows {
        // A message whose parts cannot be read counts as empty.
        let parts = m.part_list().unwrap_or_default();
        match m.role.as_str() {
            "user" => {
                close_open(&mut out, &mut open_calls);
                out.push(ChatMessage::user(user_content(&parts)));
            }
            "assistant" => {
                close_open(&mut out, &mut open_calls);
                let text = crush_protocol::vocab::text_of(&parts);
                let reasoning = parts.iter().find_map(|p| match p {
                    Part::Reasoning {
                        reasoning,
                        signature: Some(signature),
                    } => Some(Reasoning {
                        text: reasoning.clone(),
                        signature: Some(signature.clone()),
                    }),
                    _ => None,
                });
                let tool_calls: Vec<ToolCall> = parts
                    .iter()
                    .filter_map(|p| match p {
                        // Stored input is the model's JSON text; anything else is sent as `{}`.
                        Part::ToolCall { id, name, input } => Some(ToolCall {
                            id: id.clone(),
                            name: name.clone(),
                            input: input.as_str().unwrap_or("{}").to_owned(),
                        }),
                        _ => None,
                    })
                    .collect();
                if text.is_empty() && tool_calls.is_empty() {
                    continue;
                }
                open_calls = tool_calls
                    .iter()
                    .map(|c| (c.id.clone(), c.name.clone()))
                    .collect();
                out.push(ChatMessage::Assistant {
                    text,
                    reasoning,
                    tool_calls,
                });
            }
            "tool" => {
                for p in &parts {
                    let Part::ToolResult {
                        tool_call_id,
                        content,
                        is_error,
                        ..
                    } = p
                    else {
                        continue;
                    };
                    let Some(i) = open_calls.iter().position(|(c, _)| c == tool_call_id) else {
                        continue;
                    };
                    let (call_id, name) = open_calls.remove(i);
                    out.push(ChatMessage::ToolResult {
                        call_id,
                        name,
                        content: content.clone(),
                        is_error: is_error.unwrap_or(false),
                    });
                }
            }
            _ => {}
        }
    }
    close_open(&mut out, &mut open_calls);
    out
}

/// A tool result the model sees as an error.
fn tool_error(message: impl Into<String>) -> ToolOutput {
    ToolOutput {
        content: message.into(),
        is_error: true,
        metadata: None,
    }
}
