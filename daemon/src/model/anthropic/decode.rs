//! Decoding one step's stream: the Messages API's named server-sent events become
//! [`ModelEvent`]s — text and thinking deltas, thinking signatures, `tool_use` blocks whose
//! input JSON arrives in pieces (emitted whole when the block stops), usage with cache tokens —
//! ending with exactly one `Finish` or `Error`, also when the stream is cut short.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::model::http::{SseDecoder, error_message};
use crate::model::{FinishReason, ModelError, ModelEvent, ToolCall, Usage};

/// In-stream `error` types worth retrying: the server's own failure or load, not our request.
const RETRYABLE_ERRORS: [&str; 3] = ["overloaded_error", "api_error", "rate_limit_error"];

/// A `tool_use` block whose input JSON is still arriving.
struct PartialCall {
    id: String,
    name: String,
    /// The input JSON text streamed so far.
    input: String,
    /// The input the block started with, used when none is streamed.
    start_input: String,
}

/// What has been seen of a stream so far.
pub(super) struct Decoder {
    /// The provider's id, for error messages.
    provider: String,
    /// Open `tool_use` blocks by content-block index.
    calls: BTreeMap<u64, PartialCall>,
    /// Whether this step made a tool call, for a stream that never says why it stopped.
    called: bool,
    stop: Option<FinishReason>,
    input_tokens: u64,
    cache_read_tokens: u64,
    cache_creation_tokens: u64,
    output_tokens: u64,
    done: bool,
}

impl Decoder {
    pub(super) fn new(provider: &str) -> Self {
        Self {
            provider: provider.to_owned(),
            calls: BTreeMap::new(),
            called: false,
            stop: None,
            input_tokens: 0,
            cache_read_tokens: 0,
            cache_creation_tokens: 0,
            output_tokens: 0,
            done: false,
        }
    }

    /// The events one SSE event yields. The JSON `type` decides; the `event:` name is only a
    /// fallback for servers that leave `type` out.
    fn event(&mut self, name: &str, data: &str) -> Vec<ModelEvent> {
        let data = data.trim();
        if self.done || data.is_empty() {
            return Vec::new();
        }
        let v: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => {
                self.done = true;
                return vec![ModelEvent::Error(ModelError::new(format!(
                    "provider {} sent an unreadable event ({e}): {}",
                    self.provider,
                    data.chars().take(200).collect::<String>()
                )))];
            }
        };
        match v.get("type").and_then(Value::as_str).unwrap_or(name) {
            "message_start" => {
                if let Some(u) = v.pointer("/message/usage") {
                    self.usage(u);
                }
                Vec::new()
            }
            "content_block_start" => self.block_start(&v),
            "content_block_delta" => self.block_delta(&v),
            "content_block_stop" => self.block_stop(&v),
            "message_delta" => {
                if let Some(reason) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.stop = Some(match reason {
                        "max_tokens" | "model_context_window_exceeded" => FinishReason::MaxTokens,
                        "tool_use" => FinishReason::ToolUse,
                        // end_turn, stop_sequence, pause_turn, refusal and reasons yet to come.
                        _ => FinishReason::EndTurn,
                    });
                }
                if let Some(u) = v.get("usage") {
                    self.usage(u);
                }
                Vec::new()
            }
            "message_stop" => self.finish(),
            "error" => {
                self.done = true;
                vec![ModelEvent::Error(self.stream_error(&v))]
            }
            // `ping`, and event types added after this was written.
            _ => Vec::new(),
        }
    }

    /// Takes the counts a usage object carries. `message_delta` counts are cumulative, and newer
    /// API versions repeat the input counts there, so each count replaces the one before.
    fn usage(&mut self, u: &Value) {
        let take = |slot: &mut u64, key: &str| {
            if let Some(n) = u.get(key).and_then(Value::as_u64) {
                *slot = n;
            }
        };
        take(&mut self.input_tokens, "input_tokens");
        take(&mut self.cache_read_tokens, "cache_read_input_tokens");
        take(
            &mut self.cache_creation_tokens,
            "cache_creation_input_tokens",
        );
        take(&mut self.output_tokens, "output_tokens");
    }

    fn block_start(&mut self, v: &Value) -> Vec<ModelEvent> {
        let Some(block) = v.get("content_block") else {
            return Vec::new();
        };
        let str_of = |key: &str| block.get(key).and_then(Value::as_str).unwrap_or("");
        let mut out = Vec::new();
        match str_of("type") {
            "text" if !str_of("text").is_empty() => {
                out.push(ModelEvent::TextDelta(str_of("text").to_owned()));
            }
            "thinking" => {
                if !str_of("thinking").is_empty() {
                    out.push(ModelEvent::ReasoningDelta(str_of("thinking").to_owned()));
                }
                if !str_of("signature").is_empty() {
                    out.push(ModelEvent::ReasoningSignature(
                        str_of("signature").to_owned(),
                    ));
                }
            }
            "tool_use" => {
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                // The API starts every call with `input: {}` and streams the real input; a
                // server that sends the whole input up front sends no deltas.
                let start_input = match block.get("input") {
                    Some(v @ Value::Object(o)) if !o.is_empty() => v.to_string(),
                    _ => String::new(),
                };
                self.calls.insert(
                    index,
                    PartialCall {
                        id: str_of("id").to_owned(),
                        name: str_of("name").to_owned(),
                        input: String::new(),
                        start_input,
                    },
                );
            }
            // redacted_thinking is opaque, server tools run on Anthropic's side: nothing to show.
            _ => {}
        }
        out
    }

    fn block_delta(&mut self, v: &Value) -> Vec<ModelEvent> {
        let Some(delta) = v.get("delta") else {
            return Vec::new();
        };
        let str_of = |key: &str| delta.get(key).and_then(Value::as_str).unwrap_or("");
        let event = match str_of("type") {
            "text_delta" => ModelEvent::TextDelta(str_of("text").to_owned()),
            "thinking_delta" => ModelEvent::ReasoningDelta(str_of("thinking").to_owned()),
            "signature_delta" => ModelEvent::ReasoningSignature(str_of("signature").to_owned()),
            "input_json_delta" => {
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                if let Some(call) = self.calls.get_mut(&index) {
                    call.input.push_str(str_of("partial_json"));
                }
                return Vec::new();
            }
            _ => return Vec::new(),
        };
        match &event {
            ModelEvent::TextDelta(t)
            | ModelEvent::ReasoningDelta(t)
            | ModelEvent::ReasoningSignature(t)
                if t.is_empty() =>
            {
                Vec::new()
            }
            _ => vec![event],
        }
    }

    fn block_stop(&mut self, v: &Value) -> Vec<ModelEvent> {
        let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
        match self.calls.remove(&index) {
            Some(call) => vec![self.tool_call(call)],
            None => Vec::new(),
        }
    }

    fn tool_call(&mut self, call: PartialCall) -> ModelEvent {
        self.called = true;
        let input = if !call.input.trim().is_empty() {
            call.input
        } else if !call.start_input.is_empty() {
            call.start_input
        } else {
            "{}".to_owned()
        };
        ModelEvent::ToolCall(ToolCall {
            id: call.id,
            name: call.name,
            input,
        })
    }

    /// Calls whose block never closed, then the `Finish`.
    fn finish(&mut self) -> Vec<ModelEvent> {
        self.done = true;
        let mut out: Vec<ModelEvent> = std::mem::take(&mut self.calls)
            .into_values()
            .map(|c| self.tool_call(c))
            .collect();
        let reason = self.stop.unwrap_or(if self.called {
            FinishReason::ToolUse
        } else {
            FinishReason::EndTurn
        });
        out.push(ModelEvent::Finish {
            reason,
            usage: Usage {
                prompt_tokens: self.input_tokens
                    + self.cache_read_tokens
                    + self.cache_creation_tokens,
                completion_tokens: self.output_tokens,
                // Cache writes are billed as input (plus a surcharge the price table omits).
                cached_tokens: self.cache_read_tokens,
                reasoning_tokens: 0,
            },
        });
        out
    }

    fn stream_error(&self, v: &Value) -> ModelError {
        let kind = v
            .pointer("/error/type")
            .and_then(Value::as_str)
            .unwrap_or("error");
        let detail = error_message(v).unwrap_or_else(|| "(no message)".to_owned());
        let message = format!(
            "provider {} reported an error during the reply ({kind}): {detail}",
            self.provider
        );
        if RETRYABLE_ERRORS.contains(&kind) {
            ModelError::transient(message)
        } else {
            ModelError::new(message)
        }
    }

    /// The stream ended without `message_stop`: finished if the stop reason came, else an error.
    fn end(&mut self) -> Vec<ModelEvent> {
        if self.done {
            return Vec::new();
        }
        if self.stop.is_some() {
            return self.finish();
        }
        self.done = true;
        vec![ModelEvent::Error(ModelError::transient(format!(
            "provider {} closed the stream before the reply was complete",
            self.provider
        )))]
    }
}

impl SseDecoder for Decoder {
    fn event(&mut self, name: &str, data: &str) -> Vec<ModelEvent> {
        Decoder::event(self, name, data)
    }

    fn done(&self) -> bool {
        self.done
    }

    fn end(&mut self) -> Vec<ModelEvent> {
        Decoder::end(self)
    }
}

#[cfg(test)]
pub(super) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn feed(d: &mut Decoder, events: &[&str]) -> Vec<ModelEvent> {
        events.iter().flat_map(|e| d.event("", e)).collect()
    }

    const START: &str = r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-x","stop_reason":null,"usage":{"input_tokens":12,"output_tokens":1}}}"#;
    const STOP: &str = r#"{"type":"message_stop"}"#;

    fn stop_with(reason: &str, output_tokens: u64) -> String {
        format!(
            r#"{{"type":"message_delta","delta":{{"stop_reason":"{reason}","stop_sequence":null}},"usage":{{"output_tokens":{output_tokens}}}}}"#
        )
    }

    pub(in crate::model::anthropic) fn finish(
        reason: FinishReason,
        prompt: u64,
        completion: u64,
    ) -> ModelEvent {
        ModelEvent::Finish {
            reason,
            usage: Usage {
                prompt_tokens: prompt,
                completion_tokens: completion,
                ..Usage::default()
            },
        }
    }

    fn call(id: &str, name: &str, input: &str) -> ModelEvent {
        ModelEvent::ToolCall(ToolCall {
            id: id.into(),
            name: name.into(),
            input: input.into(),
        })
    }

    #[test]
    fn decodes_text_and_ignores_pings_and_unknown_events() {
        let mut d = Decoder::new("anthropic");
        let end = stop_with("end_turn", 9);
        let ev = feed(
            &mut d,
            &[
                START,
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
                r#"{"type": "ping"}"#,
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}"#,
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo"}}"#,
                r#"{"type":"something_new","index":0}"#,
                r#"{"type":"content_block_stop","index":0}"#,
                &end,
                STOP,
            ],
        );
        assert_eq!(
            ev,
            vec![
                ModelEvent::TextDelta("Hel".into()),
                ModelEvent::TextDelta("lo".into()),
                finish(FinishReason::EndTurn, 12, 9),
            ]
        );
        assert!(d.done);
    }

    #[test]
    fn decodes_thinking_with_its_signature_and_skips_redacted_thinking() {
        let mut d = Decoder::new("anthropic");
        let end = stop_with("end_turn", 3);
        let ev = feed(
            &mut d,
            &[
                START,
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}"#,
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me see"}}"#,
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM"}}"#,
                r#"{"type":"content_block_stop","index":0}"#,
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"redacted_thinking","data":"opaque"}}"#,
                r#"{"type":"content_block_stop","index":1}"#,
                r#"{"type":"content_block_start","index":2,"content_block":{"type":"text","text":""}}"#,
                r#"{"type":"content_block_delta","index":2,"delta":{"type":"text_delta","text":"Done."}}"#,
                r#"{"type":"content_block_stop","index":2}"#,
                &end,
                STOP,
            ],
        );
        assert_eq!(
            ev,
            vec![
                ModelEvent::ReasoningDelta("Let me see".into()),
                ModelEvent::ReasoningSignature("EqQBCgIYAhIM".into()),
                ModelEvent::TextDelta("Done.".into()),
                finish(FinishReason::EndTurn, 12, 3),
            ]
        );
    }

    #[test]
    fn tool_use_input_accumulates_over_deltas_and_defaults_to_an_empty_object() {
        let mut d = Decoder::new("anthropic");
        let end = stop_with("tool_use", 40);
        let ev = feed(
            &mut d,
            &[
                START,
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Looking."}}"#,
                r#"{"type":"content_block_stop","index":0}"#,
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"view","input":{}}}"#,
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"pa"}}"#,
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"th\": \"src/"}}"#,
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"a.rs\"}"}}"#,
                r#"{"type":"content_block_stop","index":1}"#,
                r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_2","name":"ls","input":{}}}"#,
                r#"{"type":"content_block_stop","index":2}"#,
                &end,
                STOP,
            ],
        );
        assert_eq!(
            ev,
            vec![
                ModelEvent::TextDelta("Looking.".into()),
                call("toolu_1", "view", r#"{"path": "src/a.rs"}"#),
                call("toolu_2", "ls", "{}"),
                finish(FinishReason::ToolUse, 12, 40),
            ]
        );
    }

    #[test]
    fn two_interleaved_tool_uses_keep_their_own_input() {
        let mut d = Decoder::new("anthropic");
        let end = stop_with("tool_use", 5);
        let ev = feed(
            &mut d,
            &[
                START,
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"a","name":"grep","input":{}}}"#,
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"b","name":"glob","input":{}}}"#,
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"p\":"}}"#,
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"q\":"}}"#,
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"1}"}}"#,
                r#"{"type":"content_block_stop","index":0}"#,
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"2}"}}"#,
                // No stop for block 1: the call is still handed over before the Finish.
                &end,
                STOP,
            ],
        );
        assert_eq!(
            ev,
            vec![
                call("a", "grep", r#"{"q":1}"#),
                call("b", "glob", r#"{"p":2}"#),
                finish(FinishReason::ToolUse, 12, 5),
            ]
        );
    }

    #[test]
    fn usage_adds_cache_tokens_to_the_prompt_and_reports_cache_reads() {
        let mut d = Decoder::new("anthropic");
        let ev = feed(
            &mut d,
            &[
                r#"{"type":"message_start","message":{"usage":{"input_tokens":10,"cache_creation_input_tokens":200,"cache_read_input_tokens":3000,"output_tokens":1}}}"#,
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":77}}"#,
                STOP,
            ],
        );
        assert_eq!(
            ev,
            vec![ModelEvent::Finish {
                reason: FinishReason::EndTurn,
                usage: Usage {
                    prompt_tokens: 3210,
                    completion_tokens: 77,
                    cached_tokens: 3000,
                    reasoning_tokens: 0,
                },
            }]
        );
    }

    #[test]
    fn each_stop_reason_maps_to_a_finish_reason() {
        for (reason, want) in [
            ("end_turn", FinishReason::EndTurn),
            ("stop_sequence", FinishReason::EndTurn),
            ("max_tokens", FinishReason::MaxTokens),
            ("tool_use", FinishReason::ToolUse),
            ("pause_turn", FinishReason::EndTurn),
            ("refusal", FinishReason::EndTurn),
        ] {
            let mut d = Decoder::new("anthropic");
            let ev = feed(&mut d, &[START, &stop_with(reason, 2), STOP]);
            assert_eq!(ev, vec![finish(want, 12, 2)], "{reason}");
        }
    }

    #[test]
    fn error_events_end_the_stream_and_overload_is_retryable() {
        let mut d = Decoder::new("anthropic");
        let ev = feed(
            &mut d,
            &[
                START,
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                STOP,
            ],
        );
        match ev.as_slice() {
            [ModelEvent::Error(e)] => {
                assert!(e.retryable);
                assert!(e.message.contains("Overloaded"), "{}", e.message);
                assert!(e.message.contains("anthropic"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(d.end(), vec![]);

        let mut d = Decoder::new("anthropic");
        let ev = d.event(
            "error",
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}"#,
        );
        assert!(matches!(ev.as_slice(), [ModelEvent::Error(e)] if !e.retryable));
    }

    #[test]
    fn a_truncated_stream_is_a_transient_error_unless_the_stop_reason_came() {
        let mut d = Decoder::new("anthropic");
        feed(
            &mut d,
            &[
                START,
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"par"}}"#,
            ],
        );
        match d.end().as_slice() {
            [ModelEvent::Error(e)] => assert!(e.retryable && e.message.contains("closed")),
            other => panic!("{other:?}"),
        }
        assert_eq!(d.end(), vec![]);

        let mut d = Decoder::new("anthropic");
        feed(&mut d, &[START, &stop_with("max_tokens", 8)]);
        assert_eq!(d.end(), vec![finish(FinishReason::MaxTokens, 12, 8)]);
    }

    #[test]
    fn nothing_follows_the_finish() {
        let mut d = Decoder::new("anthropic");
        let ev = feed(&mut d, &[START, &stop_with("end_turn", 1), STOP]);
        assert_eq!(ev.len(), 1);
        let after = feed(
            &mut d,
            &[
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"late"}}"#,
                r#"{"type":"error","error":{"type":"api_error","message":"x"}}"#,
                STOP,
            ],
        );
        assert_eq!(after, vec![]);
        assert_eq!(d.end(), vec![]);
    }

    #[test]
    fn the_event_name_stands_in_for_a_missing_type() {
        let mut d = Decoder::new("anthropic");
        assert_eq!(
            d.event(
                "content_block_delta",
                r#"{"index":0,"delta":{"type":"text_delta","text":"x"}}"#
            ),
            vec![ModelEvent::TextDelta("x".into())]
        );
        let ev = d.event("message_stop", "{}");
        assert!(matches!(ev.as_slice(), [ModelEvent::Finish { .. }]));
    }
}
