//! One model step of a turn: the model call streamed into the live message and out as deltas,
//! retried while nothing of it has streamed yet.

use futures::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crush_protocol::{Part, SessionEvent};

use super::budget::{Budget, Conversation};
use super::compact::{MIN_RECENT_TURNS, Payer};
use super::summary::SummaryError;
use super::{RunMeta, Runtime, SessionRt};
use crate::model::http::MAX_RETRY_AFTER;
use crate::model::{
    FinishReason, ModelError, ModelErrorKind, ModelEvent, ToolCall, TurnRequest, Usage,
};
use crate::store::live::LiveMessage;
use crate::sync::lock;

/// How one model step ended.
pub(super) enum Step {
    /// With the tool calls the model made (empty when it is done).
    Finished(FinishReason, Vec<ToolCall>),
    Cancelled,
    Failed(String),
    /// The provider refused the request as larger than the model's window, before anything
    /// streamed.
    TooLong(String),
}

/// How one try of a model call ended.
enum Attempt {
    Done(Step),
    Failed(ModelError),
}

impl Runtime {
    /// One model step within the context budget: the request is assembled from the turn's
    /// conversation (compacted when it would pass the threshold, a new compaction announced as
    /// a `compacted` event), sent, and the provider's count of it calibrates the session's
    /// next ones. When stubbing old tool outputs is not enough, the older turns are first
    /// summarised by the model (at most once per step; if that fails, they are left out of the
    /// request instead). A provider refusing the request as too long gets one forced
    /// compaction and one retry of the step; a request that cannot fit fails the step, once.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn budgeted_step(
        &self,
        s: &SessionRt,
        run: &RunMeta,
        token: &CancellationToken,
        request: &mut TurnRequest,
        (conv, preamble, limits): (&mut Conversation, u64, &Budget),
        live: &mut LiveMessage,
        usage: &mut Usage,
    ) -> Step {
        let mut forced = false;
        let mut summarized = false;
        loop {
            let factor = lock(&s.budget).factor();
            let assembled = conv.assemble(preamble, limits, factor, forced);
            let leaves_out = match &assembled {
                Ok(a) => a.compaction.as_ref().is_some_and(|c| c.dropped > 0),
                Err(_) => true,
            };
            if leaves_out && !summarized {
                summarized = true;
                match self
                    .summarize_older(
                        s,
                        Payer::Run(&run.run_id),
                        &run.model,
                        conv,
                        preamble,
                        (MIN_RECENT_TURNS, conv.recent_room(limits, preamble)),
                        token,
                    )
                    .await
                {
                    Ok(Some(done)) => {
                        usage.add(&done.usage);
                        continue;
                    }
                    Ok(None) => {}
                    Err(SummaryError::Cancelled) => return Step::Cancelled,
                    Err(SummaryError::Failed(e)) => {
                        warn!(run = %run.run_id, error = %e, "cannot summarise older messages; leaving them out of the request");
                    }
                }
            }
            let assembled = match assembled {
                Ok(a) => a,
                Err(too_large) => return Step::Failed(too_large.to_string()),
            };
            if let Some(c) = &assembled.compaction
                && lock(&s.budget).announce(c)
            {
                debug!(run = %run.run_id, before = c.tokens_before, after = c.tokens_after, "request compacted");
                lock(&s.inner).events.publish(
                    Some(&run.run_id),
                    SessionEvent::Compacted {
                        from_message_id: c.from_message_id.clone(),
                        to_message_id: c.to_message_id.clone(),
                        tokens_before: c.tokens_before,
                        tokens_after: c.tokens_after,
                        stubbed: c.stubbed,
                        dropped: c.dropped,
                        summary_message_id: None,
                    },
                );
            }
            request.messages = assembled.messages;
            let reported_before = usage.prompt_tokens;
            match self.step(s, run, token, request, live, usage).await {
                Step::TooLong(e) if !forced => {
                    warn!(run = %run.run_id, error = %e, "the provider refused the request as too long; compacting it once more");
                    lock(&s.budget).overflowed();
                    forced = true;
                }
                Step::TooLong(e) => {
                    return Step::Failed(format!(
                        "{e} (the request was compacted again and retried once; it still did \
                         not fit the model's context window)"
                    ));
                }
                step => {
                    if matches!(step, Step::Finished(..)) {
                        let reported = usage.prompt_tokens.saturating_sub(reported_before);
                        lock(&s.budget).calibrate(assembled.raw_tokens, reported);
                    }
                    return step;
                }
            }
        }
    }

    /// One model step with retries: a call that fails before anything of it was streamed, in
    /// a way worth retrying (429, 5xx, connection errors), is tried again after a backoff that
    /// honours the server's `Retry-After`, at most `[agent] max_attempts` times in all. Once
    /// output streamed, a failure ends the step: retrying would repeat what clients saw.
    pub(super) async fn step(
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
            if e.kind == ModelErrorKind::ContextOverflow && !streamed {
                return Step::TooLong(e.message);
            }
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
            let announced = lock(&s.inner).events.publish_live(
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
                    if !lock(&s.inner).events.publish_live(token, &run.run_id, ev) {
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
                    if !lock(&s.inner).events.publish_live(token, &run.run_id, ev) {
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
                    usage.add(&u);
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
}

async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
