//! The task that works a busy session: it runs the active turn (history → model steps and
//! their tools → database), folds steered prompts in at step boundaries, publishes each run's
//! `$/runComplete` once everything is written, and hands the session to the next waiting run —
//! all on the workspace's tracker, never on a connection. The decisions (what folds in, who runs
//! next) are the state machine's (`state.rs`); this file performs their effects.
//!
//! Final writes need no detached context: a run task is never aborted, only told to stop by its
//! token, so the writes after a cancel run to completion (each bounded by the store's busy
//! timeout).

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crush_protocol::{RunCompleteParams, RunState, RunStopReason, SessionEvent};

use super::budget::{Budget, Conversation};
use super::compact::push_shown;
use super::history::{history_entries, latest_summary, user_message};
use super::step::Step;
use super::tool_calls::ToolResults;
use super::unsaved::{EndWrite, OwnedEnd, OwnedFinish};
use super::{RunMeta, Runtime, SessionRt};
use crate::model::tokens::Counter;
use crate::model::{ChatMessage, FinishReason, TurnRequest, Usage};
use crate::store::live::{LiveMessage, parts_json};
use crate::store::{FoldedPrompt, NextStep, SnapshotKind, StartTurn};
use crate::sync::lock;
use crate::tools::{Limits, ToolContext};

/// How many earlier messages of the session are read at a time, and at most how many pages:
/// the budget decides what of them is sent, the bound keeps a huge session's read bounded.
const HISTORY_PAGE: i64 = 400;
const HISTORY_PAGES: usize = 5;

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
    /// The limit that ended the turn, if one did (`$/runComplete`'s `stopReason`).
    stop_reason: Option<RunStopReason>,
    /// The turn's tokens and cost, for its own run's `$/runComplete`.
    usage: Option<crush_protocol::Usage>,
    written: Written,
    /// The title this turn gave the session from its prompt (its first turn).
    titled: Option<String>,
}

/// Whether the run's end is in the database.
enum Written {
    Yes,
    /// The turn's last write failed: an unsaved end (`unsaved.rs`).
    Failed(EndWrite),
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
            stop_reason: None,
            usage: None,
            written: Written::NotYet,
            titled: None,
        }
    }
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
            if let Some(from) = outcome
                .titled
                .take()
                .filter(|_| outcome.end == End::Completed)
            {
                let answer = outcome.text.as_deref().unwrap_or_default();
                self.title_in_background(&s, from, &run.prompt, answer);
            }
            let next = {
                let mut inner = lock(&s.inner);
                let ws = s.ws();
                let Some(handoff) = inner.runs.finish_turn(|| ws.token.child_token()) else {
                    // Unreachable: only the driver ends its session's turn.
                    warn!(run = %run.run_id, "a turn ended with no turn active");
                    break;
                };
                let ended: Vec<&Arc<RunMeta>> = std::iter::once(&handoff.run)
                    .chain(&handoff.folded)
                    .collect();
                self.registry
                    .retire(ended.iter().map(|r| r.run_id.as_str()));
                for r in ended {
                    let folded_into = (!Arc::ptr_eq(r, &run)).then(|| run.run_id.clone());
                    inner.events.publish(
                        Some(&r.run_id),
                        SessionEvent::RunFinished {
                            state: outcome.end.state(),
                            error: outcome.error.clone(),
                            message_id: outcome.message_id.clone(),
                        },
                    );
                    inner.events.complete(
                        RunCompleteParams {
                            session_id: s.id.clone(),
                            run_id: r.run_id.clone(),
                            message_id: outcome.message_id.clone(),
                            text: outcome.text.clone(),
                            error: outcome.error.clone(),
                            stop_reason: outcome.stop_reason,
                            cancelled: outcome.end == End::Cancelled,
                            // A folded run's tokens are the turn's, counted once.
                            usage: outcome.usage.filter(|_| folded_into.is_none()),
                            folded_into,
                        },
                        r.sender().as_ref(),
                    );
                }
                if let Some((next, _)) = &handoff.next {
                    self.announce_start(&mut inner, next);
                }
                handoff.next
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
        let counter = Counter::for_api_name(&model.api, &model.model);
        let limits = match model.context_window {
            Some(w) => Budget::new(
                w,
                model.max_output_tokens,
                matches!(counter, Counter::Bpe(_)),
                self.agent.compact_threshold,
            ),
            None => Budget::unbounded(),
        };
        let ((history, first_id), root) = if token.is_cancelled() {
            ((Vec::new(), None), None)
        } else {
            let reading = s.reading.lock().await;
            let history = self.read_history(&s.id, &limits).await;
            drop(reading);
            let history = match history {
                Ok(h) => h,
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
        let title = super::title::from_prompt(&run.prompt);
        let started = match self
            .store
            .start_turn(&StartTurn {
                run_id: &run.run_id,
                session_id: &s.id,
                prompt: &run.prompt,
                user_parts: &user_parts_json,
                model: &model.model,
                provider: &model.provider,
                title: title.as_deref(),
            })
            .await
        {
            Ok(rows) => rows,
            Err(e) => return Outcome::failed(format!("cannot save the prompt: {e}")),
        };
        let (user, assistant) = (started.user, started.assistant);
        let titled = title.clone().filter(|_| started.titled);
        {
            let mut inner = lock(&s.inner);
            inner.events.publish(
                Some(&run.run_id),
                SessionEvent::UserMessage {
                    message_id: user.id.clone(),
                    text: run.prompt.clone(),
                },
            );
            if let Some(title) = titled.clone() {
                inner.events.publish(
                    None,
                    SessionEvent::SessionUpdated {
                        title,
                        model: lock(&s.model).clone(),
                    },
                );
            }
            inner.events.publish(
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
            // Chosen per call (`tool_calls.rs`): a session's mode may change during the run.
            sandbox: None,
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
            messages: Vec::new(),
            tools: if root.is_some() {
                self.offered_tools(s, run, token, root.as_deref()).await
            } else {
                Vec::new()
            },
            max_output_tokens: model.max_output_tokens,
        };
        let mut preamble = counter.preamble(&request.system, &request.tools);
        let mut conv = Conversation::new(counter, model.images);
        for shown in history_entries(&history) {
            push_shown(&mut conv, shown, first_id.as_deref());
        }
        // A session's first prompt is its first instruction.
        let first = history.is_empty();
        conv.push(&user.id, user_message(&user_parts), first);
        let mut live = LiveMessage::new(assistant.id.clone(), self.flush_interval);
        let mut usage = Usage::default();
        let mut folded: Vec<Arc<RunMeta>> = Vec::new();
        let mut steps: u32 = 0;
        let mut snapshotted = false;
        let mut stop_reason = None;

        let (end, reason, error) = loop {
            if steps >= self.agent.max_steps && !token.is_cancelled() {
                stop_reason = Some(RunStopReason::MaxSteps);
                break (
                    End::Failed,
                    FinishReason::Error,
                    Some(format!(
                        "the run stopped after {steps} model steps (the [agent] max_steps limit); \
                         send a follow-up prompt to let it continue"
                    )),
                );
            }
            if steps > 0 && root.is_some() && !token.is_cancelled() {
                // An MCP server's `tools/list_changed` applies from the next step on.
                let now = self.current_tools(s).await;
                if now != request.tools {
                    preamble = counter.preamble(&request.system, &now);
                    request.tools = now;
                }
            }
            let step = if token.is_cancelled() {
                // Cancelled before the model was called: the turn is written as cancelled.
                Step::Cancelled
            } else {
                steps += 1;
                let budget = (&mut conv, preamble, &limits);
                self.budgeted_step(s, run, token, &mut request, budget, &mut live, &mut usage)
                    .await
            };
            let (reason, calls) = match step {
                Step::Cancelled => break (End::Cancelled, FinishReason::Canceled, None),
                Step::Failed(e) | Step::TooLong(e) => {
                    break (End::Failed, FinishReason::Error, Some(e));
                }
                Step::Finished(r, calls) => (r, calls),
            };
            // A step boundary: take the steered prompts waiting, or close the turn to steers
            // when it is about to end.
            let steered = lock(&s.inner).runs.step_boundary(!calls.is_empty());
            // From now on they are part of this turn (`run/get` shows it), even while the
            // step's tools wait for a permission answer before the fold is written.
            self.registry.mark_folded(&steered, &run.run_id);
            if calls.is_empty() && steered.is_empty() {
                break (End::Completed, reason, None);
            }
            let assistant_text = live.text();
            let reasoning = live.reasoning();
            let assistant_id = live.id.clone();
            let results = if calls.is_empty() {
                None
            } else {
                // The calls go to disk before any of them runs (and before a permission prompt
                // that may wait for minutes): a daemon killed mid-tool leaves the call recorded
                // beside whatever it changed, and the next turn's history answers it.
                if let Err(e) = live.flush(&self.store).await {
                    warn!(run = %run.run_id, error = %e, "cannot save the step's tool calls");
                }
                // Snapshots around the steps whose tools may change files (`bash` included):
                // the workspace as the turn found it before the first, and after each.
                let snapshot = root.as_ref().filter(|_| may_change_files(&calls));
                if let Some(root) = snapshot
                    && !snapshotted
                {
                    snapshotted = true;
                    let at = (s.id.as_str(), ws_id.as_str(), root.as_path());
                    self.take_snapshot(at, &run.run_id, &user.id, SnapshotKind::Before)
                        .await;
                }
                let results = self
                    .run_tools(s, run, token, &tools, &live.id, &calls)
                    .await;
                if let Some(root) = snapshot {
                    let at = (s.id.as_str(), ws_id.as_str(), root.as_path());
                    self.take_snapshot(at, &run.run_id, &assistant_id, SnapshotKind::After)
                        .await;
                }
                Some(results)
            };
            let users = match self
                .next_step(s, run, &steered, results.as_ref(), &mut live, reason)
                .await
            {
                Ok(users) => {
                    folded.extend(steered.iter().cloned());
                    users
                }
                Err(e) => {
                    // The steered prompts were not written; they still end with this turn.
                    folded.extend(steered);
                    break (End::Failed, FinishReason::Error, Some(e));
                }
            };
            let assistant = ChatMessage::Assistant {
                text: assistant_text,
                reasoning,
                tool_calls: calls,
            };
            conv.push(&assistant_id, assistant, false);
            for m in results.into_iter().flat_map(|r| r.messages) {
                conv.push(&assistant_id, m, false);
            }
            for (r, id) in steered.iter().zip(&users) {
                conv.push(id, user_message(&r.user_parts()), false);
            }
        };

        let text = live.text();
        let turn_usage = super::usage::turn_usage(&usage, model.price.as_ref());
        // The last write, made from the owned form that is kept for a retry if it fails.
        let last = EndWrite::Turn(OwnedFinish {
            session_id: s.id.clone(),
            message_id: Some(live.id.clone()),
            parts: live.parts_json(),
            finish_reason: reason,
            error: error.clone(),
            run_state: end.state(),
            stop_reason,
            run_ids: std::iter::once(&run.run_id)
                .chain(folded.iter().map(|r| &r.run_id))
                .cloned()
                .collect(),
            usage: turn_usage,
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
        lock(&s.inner).events.publish(
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
            stop_reason,
            usage: Some(turn_usage.into()),
            written,
            titled,
        }
    }

    /// The session's latest messages, a page at a time until the pages hold more than the
    /// model's window could (the budget would leave older ones out anyway) or the bound is
    /// reached; plus the session's first message when the pages do not reach it, since the
    /// budget always keeps the user's first instruction. Reading stops at the end of the range
    /// the latest summary replaces (the model is shown the summary instead), and that end is
    /// read for its `seq` (`history_entries`). Returns the rows, oldest first, and the id of
    /// that first message when it is a user message among them.
    pub(super) async fn read_history(
        &self,
        session_id: &str,
        limits: &Budget,
    ) -> Result<(Vec<crate::store::MessageRow>, Option<String>), crate::store::StoreError> {
        let mut rows: Vec<crate::store::MessageRow> = Vec::new();
        let mut bytes = 0u64;
        let mut before = None;
        let mut complete = true;
        for _ in 0..HISTORY_PAGES {
            let page = self
                .store
                .list_messages(session_id, before, HISTORY_PAGE)
                .await?;
            bytes += page
                .messages
                .iter()
                .map(|m| m.parts.len() as u64)
                .sum::<u64>();
            before = page.messages.first().map(|m| m.seq);
            let mut older = page.messages;
            older.append(&mut rows);
            rows = older;
            complete = !page.has_more;
            // The latest summary stands for everything up to its range's end: read no further.
            let summarized =
                latest_summary(&rows).is_some_and(|s| rows.iter().any(|r| r.id == s.to_message_id));
            // Two bytes per token at the densest: past that the window is surely full.
            if complete || summarized || bytes / 2 > limits.window {
                break;
            }
        }
        if !complete {
            // Sequence numbers start at 1: the message before 2 is the session's first.
            let first = self.store.list_messages(session_id, Some(2), 1).await?;
            let mut all = first.messages;
            all.append(&mut rows);
            rows = all;
        }
        // The end of the latest summary's range, for its `seq`, when it was not read.
        if let Some(s) = latest_summary(&rows)
            && !rows.iter().any(|r| r.id == s.to_message_id)
            && let Some(end) = self.store.get_message(&s.to_message_id).await?
        {
            let at = rows.partition_point(|r| r.seq < end.seq);
            rows.insert(at, end);
        }
        let first_id = rows
            .first()
            .filter(|m| m.role == "user" && m.seq == 1 && m.reverted_by.is_none())
            .map(|m| m.id.clone());
        Ok((rows, first_id))
    }

    /// Makes sure the run's end reaches the database: a turn that failed before writing it
    /// records it now, and a write that failed is kept and retried (`unsaved.rs`), with the run's
    /// terminal record served to `run/get` meanwhile. Runs while the runs are still registered.
    async fn settle_write(
        self: &Arc<Self>,
        s: &SessionRt,
        run: &Arc<RunMeta>,
        outcome: &mut Outcome,
    ) {
        let unsaved = match std::mem::replace(&mut outcome.written, Written::Yes) {
            Written::Yes => return,
            Written::Failed(w) => w,
            Written::NotYet => {
                let w = EndWrite::Ends(vec![OwnedEnd {
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
        self.save_end_later(
            unsaved,
            outcome.end.state(),
            outcome.error.as_deref(),
            outcome.message_id.as_deref(),
        );
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
    ) -> Result<Vec<String>, String> {
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
        for r in steered {
            self.registry.mark_running(&r.run_id, Some(&run.run_id));
        }
        {
            let mut inner = lock(&s.inner);
            inner.events.publish(
                Some(&run.run_id),
                SessionEvent::MessageFinished {
                    message_id: live.id.clone(),
                    finish_reason: reason,
                    error: None,
                },
            );
            for (r, u) in steered.iter().zip(&users) {
                inner.events.publish(
                    Some(&r.run_id),
                    SessionEvent::RunFolded {
                        into: run.run_id.clone(),
                    },
                );
                inner.events.publish(
                    Some(&r.run_id),
                    SessionEvent::UserMessage {
                        message_id: u.id.clone(),
                        text: r.prompt.clone(),
                    },
                );
            }
            inner.events.publish(
                Some(&run.run_id),
                SessionEvent::AssistantStarted {
                    message_id: assistant.id.clone(),
                    model: info.name.clone(),
                },
            );
        }
        *live = LiveMessage::new(assistant.id, self.flush_interval);
        Ok(users.into_iter().map(|u| u.id).collect())
    }
}

/// Whether a step's tool calls may change the workspace's files: any but the read-only tools.
fn may_change_files(calls: &[crate::model::ToolCall]) -> bool {
    calls
        .iter()
        .any(|c| !matches!(c.name.as_str(), "view" | "ls" | "glob" | "grep"))
}
