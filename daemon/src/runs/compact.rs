//! Compaction with a model-written summary: the older part of a session's conversation (all
//! but its first instruction and its latest turns) is summarised, the summary is stored as a
//! message of its own, the conversation shows it in place of that part from now on, and the
//! session's subscribers hear a `compacted` event naming it. A step over the budget's
//! threshold does this once before it is sent (`step.rs`); `session/compact` does it on demand
//! for an idle session. The stored messages are never changed.

use std::sync::Arc;

use crush_protocol::{ErrorCode, Part, RpcError, SessionCompactResult, SessionEvent};
use tracing::{debug, warn};

use super::budget::{Budget, Conversation};
use super::history::{Shown, summary_content};
use super::summary::{Summarizer, SummaryError};
use super::{Runtime, SessionRt};
use crate::model::tokens::Counter;
use crate::model::{ChatMessage, Model, Usage};
use crate::store::NewMessage;
use crate::sync::lock;

/// Turns a summary keeps as they are at least: the latest one (the one a step works on); a
/// step keeps more while they fit the budget's `recent_room`.
pub(super) const MIN_RECENT_TURNS: usize = 1;

/// A summary written and shown.
#[derive(Debug)]
pub(super) struct Summarized {
    pub(super) message_id: String,
    pub(super) messages: u32,
    pub(super) tokens_before: u64,
    pub(super) tokens_after: u64,
    /// What the summary's model calls cost.
    pub(super) usage: Usage,
}

/// Who pays for a summary: a run's turn (its usage includes it) or the session directly.
#[derive(Clone, Copy)]
pub(super) enum Payer<'a> {
    Run(&'a str),
    Session,
}

impl Runtime {
    /// The model that writes a session's summaries: `[agent] compact_model` when it is set
    /// and usable, else the session's own.
    pub(super) fn summary_model(&self, session_model: &Arc<dyn Model>) -> Arc<dyn Model> {
        let Some(name) = self.agent.compact_model.as_deref() else {
            return session_model.clone();
        };
        match self.models.resolve(Some(name)) {
            Ok(m) => m,
            Err(e) => {
                warn!(model = name, error = %e.message, "cannot use [agent] compact_model; the session's model summarises");
                session_model.clone()
            }
        }
    }

    /// Summarises `conv`'s older part (keeping the first instruction and the latest turns: at
    /// least `min_turns`, more while they fit `room` tokens), stores the summary and shows it
    /// in `conv`. `Ok(None)`: nothing to summarise.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn summarize_older(
        &self,
        s: &SessionRt,
        payer: Payer<'_>,
        session_model: &Arc<dyn Model>,
        conv: &mut Conversation,
        preamble: u64,
        (min_turns, room): (usize, u64),
        token: &tokio_util::sync::CancellationToken,
    ) -> Result<Option<Summarized>, SummaryError> {
        let Some(older) = conv.older(min_turns, room) else {
            return Ok(None);
        };
        let model = self.summary_model(session_model);
        let info = model.info().clone();
        let counter = Counter::for_api_name(&info.api, &info.model);
        let window = info
            .context_window
            .unwrap_or_else(|| Budget::unbounded().window);
        let factor = lock(&s.budget).factor();
        let before = conv.request_tokens(preamble);
        let started = std::time::Instant::now();
        let (text, usage) = Summarizer {
            model: model.as_ref(),
            counter: &counter,
            window,
            factor,
            cancel: token,
        }
        .summarize(&older.shown)
        .await;
        let text = text?;
        let part = Part::Summary {
            text: text.clone(),
            from_message_id: older.from_message_id.clone(),
            to_message_id: older.to_message_id.clone(),
            messages: older.messages,
        };
        let parts = serde_json::to_string(&[part]).unwrap_or_else(|_| "[]".to_owned());
        let (run_id, spent) = match payer {
            Payer::Run(id) => (Some(id), None),
            Payer::Session => (
                None,
                Some(super::usage::turn_usage(&usage, info.price.as_ref())),
            ),
        };
        let row = self
            .store
            .insert_summary(
                NewMessage {
                    session_id: &s.id,
                    run_id,
                    role: "system",
                    parts: &parts,
                    model: Some(&info.model),
                    provider: Some(&info.provider),
                },
                spent.as_ref(),
            )
            .await
            .map_err(|e| SummaryError::Failed(format!("cannot save the summary: {e}")))?;
        conv.summarize(
            &older,
            &row.id,
            ChatMessage::user(summary_content(&text, older.messages)),
        );
        let after = conv.request_tokens(preamble);
        debug!(session = %s.id, messages = older.messages, before, after, ms = started.elapsed().as_millis() as u64, "older messages summarised");
        lock(&s.inner).events.publish(
            run_id,
            SessionEvent::Compacted {
                from_message_id: older.from_message_id,
                to_message_id: older.to_message_id,
                tokens_before: before,
                tokens_after: after,
                stubbed: 0,
                dropped: 0,
                summary_message_id: Some(row.id.clone()),
            },
        );
        Ok(Some(Summarized {
            message_id: row.id,
            messages: older.messages,
            tokens_before: before,
            tokens_after: after,
            usage,
        }))
    }

    /// `session/compact`: summarises an idle session's older messages now. A busy session (or
    /// one being compacted) gets `RunsActive`; a prompt sent meanwhile waits for the summary
    /// before it reads the session.
    pub async fn compact(
        self: &Arc<Self>,
        session_id: &str,
    ) -> Result<SessionCompactResult, RpcError> {
        let row = self.store.require_session(session_id).await?;
        let s = self.session(session_id, &row.workspace_id, row.model.as_deref());
        let busy = || {
            RpcError::new(
                ErrorCode::RunsActive,
                "the session is busy: it can be compacted once its runs have ended",
            )
        };
        if lock(&s.inner).runs.is_busy() {
            return Err(busy());
        }
        let Ok(guard) = s.reading.clone().try_lock_owned() else {
            return Err(busy());
        };
        let model = self.models.resolve(lock(&s.model).as_deref())?;
        let ws = s.ws();
        let token = ws.token.child_token();
        let this = self.clone();
        let work = ws.tracker.spawn(async move {
            let _guard = guard;
            this.compact_now(&s, &model, &token).await
        });
        work.await
            .map_err(|e| RpcError::internal(format!("the compaction stopped: {e}")))?
    }

    async fn compact_now(
        &self,
        s: &SessionRt,
        model: &Arc<dyn Model>,
        token: &tokio_util::sync::CancellationToken,
    ) -> Result<SessionCompactResult, RpcError> {
        let info = model.info().clone();
        let counter = Counter::for_api_name(&info.api, &info.model);
        let limits = match info.context_window {
            Some(w) => Budget::new(
                w,
                info.max_output_tokens,
                matches!(counter, Counter::Bpe(_)),
                self.agent.compact_threshold,
            ),
            None => Budget::unbounded(),
        };
        let (history, first_id) = self.read_history(&s.id, &limits).await?;
        let root = self
            .store
            .get_workspace(&s.ws().id)
            .await?
            .map(|w| std::path::PathBuf::from(w.path));
        let system = match &root {
            Some(root) => super::prompt::system_prompt(root).await,
            None => String::new(),
        };
        let tools = if root.is_some() {
            self.current_tools(&s.ws().id).await
        } else {
            Vec::new()
        };
        let preamble = counter.preamble(&system, &tools);
        let mut conv = Conversation::new(counter);
        for shown in super::history::history_entries(&history) {
            push_shown(&mut conv, shown, first_id.as_deref());
        }
        let unchanged = conv.request_tokens(preamble);
        match self
            .summarize_older(
                s,
                Payer::Session,
                model,
                &mut conv,
                preamble,
                // Asked for: everything older than the latest turn, whatever the room.
                (MIN_RECENT_TURNS, 0),
                token,
            )
            .await
        {
            Ok(Some(done)) => Ok(SessionCompactResult {
                compacted: true,
                summary_message_id: Some(done.message_id),
                messages: done.messages,
                tokens_before: done.tokens_before,
                tokens_after: done.tokens_after,
            }),
            Ok(None) => Ok(SessionCompactResult {
                compacted: false,
                summary_message_id: None,
                messages: 0,
                tokens_before: unchanged,
                tokens_after: unchanged,
            }),
            Err(SummaryError::Cancelled) => Err(RpcError::new(
                ErrorCode::WorkspaceClosing,
                "the compaction was cancelled: the workspace is closing or the daemon stopping",
            )),
            Err(SummaryError::Failed(e)) => Err(RpcError::new(
                ErrorCode::ModelFailed,
                format!("the model could not summarise the session: {e}"),
            )),
        }
    }
}

/// Adds a message of the stored history to a conversation.
pub(super) fn push_shown(conv: &mut Conversation, shown: Shown, first_id: Option<&str>) {
    match shown.summary {
        Some(messages) => conv.push_summary(&shown.source, shown.msg, messages),
        None => {
            let first = first_id == Some(shown.source.as_str());
            conv.push(&shown.source, shown.msg, first);
        }
    }
}
