//! Anthropic's Messages API (`POST {base_url}/v1/messages` with `stream: true`). This module owns
//! turning a [`TurnRequest`] into a Messages request — which, unlike Chat Completions, needs
//! `max_tokens`, strict user/assistant alternation (so tool results and following user text are
//! merged into one user message), and signed thinking blocks handed back verbatim — and decoding
//! the named server-sent events (`message_start`, `content_block_*`, `message_delta`,
//! `message_stop`, `error`) into [`ModelEvent`]s, ending with exactly one `Finish` or `Error`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crush_protocol::ModelInfo;

use super::http::{Endpoint, HttpModel, SseDecoder, error_message};
use super::{
    ChatMessage, EventStream, FinishReason, Model, ModelError, ModelEvent, Reasoning, ToolCall,
    TurnRequest, Usage,
};

/// Anthropic's endpoint: the `anthropic` preset's `base_url`.
pub(crate) const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
pub(crate) const API_VERSION: &str = "2023-06-01";

/// `max_tokens` when neither the request nor the model's configuration bounds the output: the
/// API refuses a request without it, and every current Claude model can produce this many.
const FALLBACK_MAX_TOKENS: u32 = 8192;

/// Stands in for an assistant message with nothing in it, which the API refuses.
const NO_OUTPUT: &str = "(no output)";
/// Stands in for an empty user message or tool result: the API refuses empty text blocks and
/// an error tool result without content.
const EMPTY: &str = "(empty)";

/// In-stream `error` types worth retrying: the server's own failure or load, not our request.
const RETRYABLE_ERRORS: [&str; 3] = ["overloaded_error", "api_error", "rate_limit_error"];

#[derive(Debug, Clone)]
pub(crate) struct AnthropicModel {
    inner: Arc<HttpModel>,
}

impl AnthropicModel {
    /// A model reached at `endpoint` (whose base URL is the part before `/v1`; one that already
    /// ends with `/v1` is accepted too).
    pub(crate) fn new(info: ModelInfo, endpoint: Endpoint) -> Result<Self, String> {
        let url = messages_url(&endpoint);
        Ok(Self {
            inner: Arc::new(HttpModel::new(info, endpoint, url)?),
        })
    }
}

/// The Messages endpoint. People copy base URLs from OpenAI-style configs, which end in `/v1`;
/// doubling it would make every request a 404.
fn messages_url(endpoint: &Endpoint) -> String {
    let base = endpoint.base_url.trim_end_matches('/');
    if base.ends_with("/v1") {
        format!("{base}/messages")
    } else {
        format!("{base}/v1/messages")
    }
}

impl Model for AnthropicModel {
    fn info(&self) -> &ModelInfo {
        &self.inner.info
    }

    fn stream(&self, request: TurnRequest, cancel: CancellationToken) -> EventStream {
        let info = &self.inner.info;
        let default_max = info.max_output_tokens.unwrap_or(FALLBACK_MAX_TOKENS);
        let body = request_body(&info.model, &request, default_max);
        let mut headers = vec![("anthropic-version", API_VERSION.to_owned())];
        if let Some(key) = &self.inner.endpoint.api_key {
            headers.push(("x-api-key", key.clone()));
        }
        let dec = Decoder::new(&self.inner.endpoint.provider);
        self.inner.stream(body, headers, dec, cancel)
    }
}

/// The request body for a step; `default_max_tokens` applies when the request sets no bound.
pub(crate) fn request_body(model: &str, request: &TurnRequest, default_max_tokens: u32) -> Value {
    let max_tokens = request
        .max_output_tokens
        .filter(|n| *n > 0)
        .unwrap_or(default_max_tokens)
        .max(1);
    let mut body = json!({
        "model": model,
        "max_tokens": max_tokens,
        "messages": messages(&request.messages),
        "stream": true,
    });
    if !request.system.is_empty() {
        body["system"] = json!(request.system);
    }
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|t| {
                // The API requires an object schema; a tool declared without one takes no input.
                let schema = if t.parameters.is_object() {
                    t.parameters.clone()
                } else {
                    json!({"type": "object", "properties": {}})
                };
                let mut tool = json!({"name": t.name, "input_schema": schema});
                if !t.description.is_empty() {
                    tool["description"] = json!(t.description);
                }
                tool
            })
            .collect();
    }
    body
}

/// One message of the request while it is assembled: consecutive messages of a role become one.
struct Turn {
    role: &'static str,
    blocks: Vec<Value>,
}

impl Turn {
    fn into_json(mut self) -> Value {
        if self.blocks.is_empty() {
            let text = if self.role == "assistant" {
                NO_OUTPUT
            } else {
                EMPTY
            };
            self.blocks.push(text_block(text));
        }
        if self.role == "user" {
            // The API wants a user message's tool results before any text in it.
            self.blocks
                .sort_by_key(|b| b.get("type").and_then(Value::as_str) != Some("tool_result"));
            if let [only] = self.blocks.as_slice()
                && only["type"] == "text"
            {
                return json!({"role": "user", "content": only["text"]});
            }
        }
        json!({"role": self.role, "content": self.blocks})
    }
}

fn messages(history: &[ChatMessage]) -> Vec<Value> {
    let mut turns: Vec<Turn> = Vec::with_capacity(history.len());
    for m in history {
        let (role, blocks) = match m {
            ChatMessage::User { content } => {
                let blocks = (!content.is_empty()).then(|| text_block(content));
                ("user", blocks.into_iter().collect())
            }
            ChatMessage::Assistant {
                text,
                reasoning,
                tool_calls,
            } => (
                "assistant",
                assistant_blocks(text, reasoning.as_ref(), tool_calls),
            ),
            ChatMessage::ToolResult {
                call_id,
                content,
                is_error,
                ..
            } => {
                let content = if content.is_empty() { EMPTY } else { content };
                let block = json!({
                    "type": "tool_result",
                    "tool_use_id": call_id,
                    "content": content,
                    "is_error": is_error,
                });
                ("user", vec![block])
            }
        };
        match turns.last_mut() {
            Some(turn) if turn.role == role => turn.blocks.extend(blocks),
            _ => turns.push(Turn { role, blocks }),
        }
    }
    turns.into_iter().map(Turn::into_json).collect()
}

fn assistant_blocks(text: &str, reasoning: Option<&Reasoning>, calls: &[ToolCall]) -> Vec<Value> {
    let mut blocks = Vec::with_capacity(calls.len() + 2);
    // The API verifies thinking by its signature; unsigned thinking cannot be handed back.
    if let Some(Reasoning {
        text: thinking,
        signature: Some(signature),
    }) = reasoning
        && !signature.is_empty()
    {
        blocks.push(json!({"type": "thinking", "thinking": thinking, "signature": signature}));
    }
    if !text.is_empty() {
        blocks.push(text_block(text));
    }
    for c in calls {
        blocks.push(json!({
            "type": "tool_use",
            "id": c.id,
            "name": c.name,
            "input": tool_input(&c.input),
        }));
    }
    blocks
}

fn text_block(text: &str) -> Value {
    json!({"type": "text", "text": text})
}

/// A call's input as the API wants it: an object. The model may have produced invalid JSON (the
/// tool told it so in its result); the call still has to be shown for the result to pair with.
fn tool_input(input: &str) -> Value {
    match serde_json::from_str::<Value>(input) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

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
struct Decoder {
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
    fn new(provider: &str) -> Self {
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
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::model::ToolSpec;
    use futures::StreamExt;

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

    fn finish(reason: FinishReason, prompt: u64, completion: u64) -> ModelEvent {
        ModelEvent::Finish {
            reason,
            usage: Usage {
                prompt_tokens: prompt,
                completion_tokens: completion,
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
    fn usage_adds_cache_tokens_to_the_prompt() {
        let mut d = Decoder::new("anthropic");
        let ev = feed(
            &mut d,
            &[
                r#"{"type":"message_start","message":{"usage":{"input_tokens":10,"cache_creation_input_tokens":200,"cache_read_input_tokens":3000,"output_tokens":1}}}"#,
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":77}}"#,
                STOP,
            ],
        );
        assert_eq!(ev, vec![finish(FinishReason::EndTurn, 3210, 77)]);
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

    fn tool_call(id: &str, input: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: "view".into(),
            input: input.into(),
        }
    }

    fn result(id: &str, content: &str, is_error: bool) -> ChatMessage {
        ChatMessage::ToolResult {
            call_id: id.into(),
            name: "view".into(),
            content: content.into(),
            is_error,
        }
    }

    #[test]
    fn request_carries_system_tools_and_streaming() {
        let req = TurnRequest {
            system: "be brief".into(),
            messages: vec![ChatMessage::user("hi")],
            tools: vec![ToolSpec {
                name: "view".into(),
                description: "reads a file".into(),
                parameters: json!({"type": "object", "properties": {"path": {"type": "string"}}}),
            }],
            max_output_tokens: Some(100),
        };
        let b = request_body("claude-x", &req, 8192);
        assert_eq!(b["model"], "claude-x");
        assert_eq!(b["system"], "be brief");
        assert_eq!(b["stream"], true);
        assert_eq!(b["max_tokens"], 100);
        assert_eq!(
            b["tools"],
            json!([{
                "name": "view",
                "description": "reads a file",
                "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
            }])
        );
        assert_eq!(b["messages"], json!([{"role": "user", "content": "hi"}]));

        let bare = request_body("m", &TurnRequest::default(), 8192);
        assert!(bare.get("system").is_none());
        assert!(bare.get("tools").is_none());
    }

    #[test]
    fn max_tokens_falls_back_from_the_request_to_the_model_to_a_default() {
        let mut req = TurnRequest {
            max_output_tokens: Some(500),
            ..TurnRequest::default()
        };
        assert_eq!(request_body("m", &req, 64_000)["max_tokens"], 500);
        req.max_output_tokens = None;
        assert_eq!(request_body("m", &req, 64_000)["max_tokens"], 64_000);

        let info = ModelInfo {
            model: "m".into(),
            ..ModelInfo::default()
        };
        assert_eq!(info.max_output_tokens.unwrap_or(FALLBACK_MAX_TOKENS), 8192);
        assert_eq!(
            request_body("m", &req, FALLBACK_MAX_TOKENS)["max_tokens"],
            8192
        );
    }

    #[test]
    fn only_signed_reasoning_is_sent_back_and_tool_input_is_parsed() {
        let signed = ChatMessage::Assistant {
            text: "Reading.".into(),
            reasoning: Some(Reasoning {
                text: "think".into(),
                signature: Some("sig".into()),
            }),
            tool_calls: vec![tool_call("t1", r#"{"path":"a.rs"}"#)],
        };
        let unsigned = ChatMessage::Assistant {
            text: String::new(),
            reasoning: Some(Reasoning {
                text: "think".into(),
                signature: None,
            }),
            tool_calls: vec![tool_call("t2", "{not json"), tool_call("t3", "[1]")],
        };
        let req = TurnRequest {
            messages: vec![
                ChatMessage::user("go"),
                signed,
                result("t1", "fn main() {}", false),
                unsigned,
                result("t2", "bad input", true),
                result("t3", "bad input", true),
            ],
            ..TurnRequest::default()
        };
        let m = &request_body("m", &req, 8192)["messages"];
        assert_eq!(
            m[1],
            json!({"role": "assistant", "content": [
                {"type": "thinking", "thinking": "think", "signature": "sig"},
                {"type": "text", "text": "Reading."},
                {"type": "tool_use", "id": "t1", "name": "view", "input": {"path": "a.rs"}},
            ]})
        );
        assert_eq!(
            m[3],
            json!({"role": "assistant", "content": [
                {"type": "tool_use", "id": "t2", "name": "view", "input": {}},
                {"type": "tool_use", "id": "t3", "name": "view", "input": {}},
            ]})
        );
    }

    #[test]
    fn consecutive_tool_results_and_user_text_merge_into_one_user_message() {
        let req = TurnRequest {
            messages: vec![
                ChatMessage::user("first"),
                ChatMessage::user(""),
                ChatMessage::user("second"),
                ChatMessage::Assistant {
                    text: String::new(),
                    reasoning: None,
                    tool_calls: vec![tool_call("a", "{}"), tool_call("b", "{}")],
                },
                result("a", "one", false),
                result("b", "", true),
                ChatMessage::user("also this"),
                ChatMessage::assistant(""),
            ],
            ..TurnRequest::default()
        };
        let m = request_body("m", &req, 8192)["messages"].clone();
        assert_eq!(m.as_array().unwrap().len(), 4);
        assert_eq!(
            m[0],
            json!({"role": "user", "content": [
                {"type": "text", "text": "first"},
                {"type": "text", "text": "second"},
            ]})
        );
        assert_eq!(
            m[2],
            json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "a", "content": "one", "is_error": false},
                {"type": "tool_result", "tool_use_id": "b", "content": EMPTY, "is_error": true},
                {"type": "text", "text": "also this"},
            ]})
        );
        assert_eq!(
            m[3],
            json!({"role": "assistant", "content": [{"type": "text", "text": NO_OUTPUT}]})
        );
    }

    #[test]
    fn the_url_gets_v1_once() {
        let url = |base: &str| messages_url(&Endpoint::new("anthropic", base));
        assert_eq!(
            url(DEFAULT_BASE_URL),
            "https://api.anthropic.com/v1/messages"
        );
        assert_eq!(
            url("https://proxy.example/v1/"),
            "https://proxy.example/v1/messages"
        );
        assert_eq!(
            url("http://h:1/anthropic"),
            "http://h:1/anthropic/v1/messages"
        );
    }

    #[test]
    fn new_refuses_a_missing_model_or_a_bad_url() {
        let info = |m: &str| ModelInfo {
            model: m.into(),
            ..ModelInfo::default()
        };
        assert!(AnthropicModel::new(info(" "), Endpoint::new("a", DEFAULT_BASE_URL)).is_err());
        assert!(AnthropicModel::new(info("m"), Endpoint::new("a", "ftp://x")).is_err());
        assert!(AnthropicModel::new(info("m"), Endpoint::new("a", DEFAULT_BASE_URL)).is_ok());
    }

    /// Serves one request on a loopback port with a fixed answer; yields the request's bytes.
    async fn serve_once(
        status: &'static str,
        content_type: &'static str,
        body: &'static str,
    ) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = sock.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap_or(0);
                if buf.len() >= head_end + 4 + len {
                    break;
                }
            }
            let answer = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nConnection: close\r\n\r\n{body}"
            );
            sock.write_all(answer.as_bytes()).await.unwrap();
            sock.shutdown().await.unwrap();
            String::from_utf8(buf).unwrap()
        });
        (base, task)
    }

    fn model_at(base: &str) -> AnthropicModel {
        let mut ep = Endpoint::new("anthropic", base);
        ep.api_key = Some("sk-test".into());
        ep.api_key_env = Some("ANTHROPIC_API_KEY".into());
        let info = ModelInfo {
            name: "anthropic/claude-x".into(),
            provider: "anthropic".into(),
            api: "anthropic".into(),
            model: "claude-x".into(),
            max_output_tokens: Some(1000),
            ..ModelInfo::default()
        };
        AnthropicModel::new(info, ep).unwrap()
    }

    const SSE_BODY: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-x\",\"stop_reason\":null,\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\n\
data: {\"type\": \"ping\"}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":5}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";

    #[tokio::test]
    async fn streams_a_reply_from_a_server_with_the_right_headers_and_path() {
        let (base, server) = serve_once("200 OK", "text/event-stream", SSE_BODY).await;
        let model = model_at(&base);
        let req = TurnRequest {
            system: "sys".into(),
            messages: vec![ChatMessage::user("hi")],
            ..TurnRequest::default()
        };
        let events: Vec<ModelEvent> = model.stream(req, CancellationToken::new()).collect().await;
        assert_eq!(
            events,
            vec![
                ModelEvent::TextDelta("Hello".into()),
                finish(FinishReason::EndTurn, 10, 5),
            ]
        );
        let request = server.await.unwrap();
        let (head, body) = request.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("POST /v1/messages HTTP/1.1\r\n"), "{head}");
        let head = head.to_lowercase();
        assert!(head.contains("\r\nx-api-key: sk-test"), "{head}");
        assert!(head.contains("\r\nanthropic-version: 2023-06-01"), "{head}");
        assert!(
            head.contains("\r\ncontent-type: application/json"),
            "{head}"
        );
        assert!(head.contains("\r\naccept: text/event-stream"), "{head}");
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["model"], "claude-x");
        assert_eq!(body["max_tokens"], 1000);
        assert_eq!(body["system"], "sys");
        assert_eq!(body["stream"], true);
    }

    #[tokio::test]
    async fn a_rejected_key_names_the_provider_and_the_key_variable() {
        let (base, server) = serve_once(
            "401 Unauthorized",
            "application/json",
            r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
        )
        .await;
        let events: Vec<ModelEvent> = model_at(&base)
            .stream(TurnRequest::default(), CancellationToken::new())
            .collect()
            .await;
        match events.as_slice() {
            [ModelEvent::Error(e)] => {
                assert_eq!(e.status, Some(401));
                assert!(!e.retryable);
                assert!(e.message.contains("anthropic"), "{}", e.message);
                assert!(e.message.contains("ANTHROPIC_API_KEY"), "{}", e.message);
                assert!(e.message.contains("invalid x-api-key"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_cancelled_step_yields_nothing() {
        // Port 9 on loopback refuses; a cancelled stream must not even try.
        let model = model_at("http://127.0.0.1:9");
        let cancel = CancellationToken::new();
        cancel.cancel();
        let events: Vec<ModelEvent> = model.stream(TurnRequest::default(), cancel).collect().await;
        assert_eq!(events, vec![]);
    }
}
