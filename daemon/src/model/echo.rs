//! `echo`: a diagnostic model that streams the latest user message back word by word. It lets an
//! editor integration or a smoke test exercise the whole run path (queue, stream, cancel,
//! persistence) with no network and no API key. It is not an AI model and never claims to be.

use std::time::Duration;

use futures::StreamExt;
use futures::stream;
use tokio_util::sync::CancellationToken;

use crush_protocol::ModelInfo;

use super::{ChatMessage, EventStream, FinishReason, Model, ModelEvent, TurnRequest, Usage};

#[derive(Debug)]
pub(crate) struct EchoModel {
    info: ModelInfo,
    delay: Duration,
}

impl EchoModel {
    /// The echo model under a name of the test's choosing (the daemon builds it from its
    /// preset with [`EchoModel::with_info`]).
    #[cfg(test)]
    pub(crate) fn new(name: &str, delay: Duration) -> Self {
        Self::with_info(
            ModelInfo {
                name: name.to_owned(),
                provider: "echo".to_owned(),
                api: "echo".to_owned(),
                model: "echo".to_owned(),
                ..ModelInfo::default()
            },
            delay,
        )
    }

    pub(crate) fn with_info(info: ModelInfo, delay: Duration) -> Self {
        Self { info, delay }
    }
}

/// Splits text into words that keep their leading whitespace, so the pieces concatenate back to
/// the original.
pub(crate) fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    for c in text.chars() {
        if c.is_whitespace() && in_word {
            out.push(std::mem::take(&mut current));
            in_word = false;
        } else if !c.is_whitespace() {
            in_word = true;
        }
        current.push(c);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

impl Model for EchoModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn stream(&self, request: TurnRequest, cancel: CancellationToken) -> EventStream {
        let prompt = request
            .messages
            .iter()
            .rev()
            .find_map(|m| match m {
                ChatMessage::User { content, .. } => Some(content.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let prompt_tokens = request
            .messages
            .iter()
            .map(|m| match m {
                ChatMessage::User { content, .. } => words(content).len() as u64,
                ChatMessage::Assistant { text, .. } => words(text).len() as u64,
                ChatMessage::ToolResult { content, .. } => words(content).len() as u64,
            })
            .sum();
        let pieces = words(&prompt);
        let completion_tokens = pieces.len() as u64;
        let delay = self.delay;
        let deltas = stream::iter(pieces.into_iter().enumerate()).then(move |(i, w)| async move {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            ModelEvent::TextDelta(w)
        });
        let finish = stream::iter([ModelEvent::Finish {
            reason: FinishReason::EndTurn,
            usage: Usage {
                prompt_tokens,
                completion_tokens,
                ..Usage::default()
            },
        }]);
        Box::pin(deltas.chain(finish).take_until(cancel.cancelled_owned()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn words_concatenate_back() {
        for t in ["a b  c", "  lead", "trail  ", "one", "", "x\ny\tz"] {
            assert_eq!(words(t).concat(), t);
        }
        assert_eq!(words("a b c"), vec!["a", " b", " c"]);
    }

    #[tokio::test]
    async fn echoes_the_last_user_message_then_finishes() {
        let m = EchoModel::new("echo", Duration::ZERO);
        let req = TurnRequest {
            messages: vec![
                ChatMessage::user("old"),
                ChatMessage::assistant("old"),
                ChatMessage::user("hello there"),
            ],
            ..TurnRequest::default()
        };
        let events: Vec<_> = m.stream(req, CancellationToken::new()).collect().await;
        assert_eq!(
            events[..2],
            [
                ModelEvent::TextDelta("hello".into()),
                ModelEvent::TextDelta(" there".into())
            ]
        );
        assert!(matches!(
            events[2],
            ModelEvent::Finish {
                reason: FinishReason::EndTurn,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn stops_when_cancelled() {
        let m = EchoModel::new("echo", Duration::from_secs(3600));
        let cancel = CancellationToken::new();
        let mut s = m.stream(
            TurnRequest {
                messages: vec![ChatMessage::user("a b c")],
                ..TurnRequest::default()
            },
            cancel.clone(),
        );
        assert_eq!(s.next().await, Some(ModelEvent::TextDelta("a".into())));
        cancel.cancel();
        assert_eq!(s.next().await, None);
    }
}
