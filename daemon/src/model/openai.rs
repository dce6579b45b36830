//! The OpenAI-compatible Chat Completions streaming API (`POST {base_url}/chat/completions` with
//! `stream: true`), which OpenAI, Ollama, vLLM, llama.cpp's server, LM Studio and OpenRouter all
//! speak. Server-sent events are decoded with `eventsource-stream`; each `data:` line is one
//! `chat.completion.chunk`, and `data: [DONE]` ends the stream.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crush_protocol::ModelInfo;

use super::http::{Endpoint, HttpModel, SseDecoder, error_message};
use super::{
    ChatMessage, EventStream, FinishReason, Model, ModelError, ModelEvent, ToolCall, TurnRequest,
    Usage,
};

/// OpenAI's own endpoint: the `openai` preset's `base_url`.
pub(crate) const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

#[derive(Debug, Clone)]
pub(crate) struct OpenAiModel {
    inner: Arc<HttpModel>,
    /// OpenAI's own API, which names the output cap differently from compatible servers.
    official: bool,
}

impl OpenAiModel {
    /// A model reached at `endpoint` (whose base URL is the part before `/chat/completions`).
    pub(crate) fn new(info: ModelInfo, endpoint: Endpoint) -> Result<Self, String> {
        let official = endpoint.base_url.starts_with("https://api.openai.com");
        let url = endpoint.url("/chat/completions");
        Ok(Self {
            inner: Arc::new(HttpModel::new(info, endpoint, url)?),
            official,
        })
    }
}

impl Model for OpenAiModel {
    fn info(&self) -> &ModelInfo {
        &self.inner.info
    }

    fn stream(&self, request: TurnRequest, cancel: CancellationToken) -> EventStream {
        let body = request_body(&self.inner.info.model, &request, self.official);
        let headers = match &self.inner.endpoint.api_key {
            Some(key) => vec![("authorization", format!("Bearer {key}"))],
            None => Vec::new(),
        };
        self.inner.stream(body, headers, Decoder::default(), cancel)
    }
}

fn image_block(image: &crate::model::Image) -> Value {
    json!({"type": "image_url", "image_url": {"url": image.data_url()}})
}

/// The request body for a step.
pub(crate) fn request_body(model: &str, request: &TurnRequest, official: bool) -> Value {
    let mut messages = Vec::with_capacity(request.messages.len() + 1);
    if !request.system.is_empty() {
        messages.push(json!({"role": "system", "content": request.system}));
    }
    // Chat Completions takes text only in `tool` messages: the images of a step's tool results
    // follow them in one user message, each introduced by the call it came from.
    let mut tool_images: Vec<Value> = Vec::new();
    for m in &request.messages {
        if !matches!(m, ChatMessage::ToolResult { .. }) && !tool_images.is_empty() {
            messages.push(json!({"role": "user", "content": std::mem::take(&mut tool_images)}));
        }
        messages.push(match m {
            ChatMessage::User { content, images } if images.is_empty() => {
                json!({"role": "user", "content": content})
            }
            ChatMessage::User { content, images } => {
                let mut blocks = Vec::with_capacity(images.len() + 1);
                if !content.is_empty() {
                    blocks.push(json!({"type": "text", "text": content}));
                }
                blocks.extend(images.iter().map(image_block));
                json!({"role": "user", "content": blocks})
            }
            ChatMessage::Assistant {
                text, tool_calls, ..
            } => {
                let mut v = json!({"role": "assistant", "content": text});
                if !tool_calls.is_empty() {
                    if text.is_empty() {
                        v["content"] = Value::Null;
                    }
                    v["tool_calls"] = tool_calls
                        .iter()
                        .map(|c| {
                            json!({
                                "id": c.id,
                                "type": "function",
                                "function": {"name": c.name, "arguments": c.input},
                            })
                        })
                        .collect();
                }
                v
            }
            ChatMessage::ToolResult {
                call_id,
                name,
                content,
                images,
                ..
            } => {
                if !images.is_empty() {
                    tool_images.push(json!({
                        "type": "text",
                        "text": format!("The images returned by tool call {call_id} ({name}):"),
                    }));
                    tool_images.extend(images.iter().map(image_block));
                }
                json!({"role": "tool", "tool_call_id": call_id, "content": content})
            }
        });
    }
    if !tool_images.is_empty() {
        messages.push(json!({"role": "user", "content": tool_images}));
    }
    let mut body = json!({
        "model": model,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|t| {
                json!({
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                })
            })
            .collect();
    }
    if let Some(n) = request.max_output_tokens {
        // OpenAI's own API takes `max_completion_tokens` (its reasoning models refuse
        // `max_tokens`); compatible servers know only `max_tokens`.
        let key = if official {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        body[key] = json!(n);
    }
    body
}

/// A tool call being streamed: pieces arrive by `index`, and compatible servers differ in
/// which chunk carries the id, the name and the arguments.
#[derive(Default)]
struct PartialCall {
    id: Option<String>,
    name: String,
    arguments: String,
}

/// What has been seen of a stream so far.
#[derive(Default)]
struct Decoder {
    finish: Option<FinishReason>,
    usage: Usage,
    calls: BTreeMap<u64, PartialCall>,
    /// The index of the call a chunk without an index continues.
    last_index: u64,
    done: bool,
}

impl Decoder {
    /// The events one SSE `data:` payload yields.
    fn data(&mut self, data: &str) -> Vec<ModelEvent> {
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            return self.finish_events();
        }
        if data.is_empty() {
            return Vec::new();
        }
        let chunk: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => {
                self.done = true;
                return vec![ModelEvent::Error(ModelError::new(format!(
                    "the model server sent an unreadable event ({e}): {}",
                    data.chars().take(200).collect::<String>()
                )))];
            }
        };
        if let Some(message) = error_message(&chunk) {
            self.done = true;
            return vec![ModelEvent::Error(ModelError::new(format!(
                "the model server reported an error: {message}"
            )))];
        }
        let mut out = Vec::new();
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            let n = |k: &str| u.pointer(k).and_then(Value::as_u64).unwrap_or(0);
            self.usage = Usage {
                prompt_tokens: n("/prompt_tokens"),
                completion_tokens: n("/completion_tokens"),
                cached_tokens: n("/prompt_tokens_details/cached_tokens"),
                reasoning_tokens: n("/completion_tokens_details/reasoning_tokens"),
            };
        }
        if let Some(choice) = chunk.get("choices").and_then(|c| c.get(0)) {
            if let Some(delta) = choice.get("delta") {
                for key in ["reasoning_content", "reasoning"] {
                    if let Some(r) = delta.get(key).and_then(Value::as_str)
                        && !r.is_empty()
                    {
                        out.push(ModelEvent::ReasoningDelta(r.to_owned()));
                    }
                }
                if let Some(t) = delta.get("content").and_then(Value::as_str)
                    && !t.is_empty()
                {
                    out.push(ModelEvent::TextDelta(t.to_owned()));
                }
                if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                    for c in calls {
                        self.tool_call_piece(c);
                    }
                }
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                self.finish = Some(match reason {
                    "length" => FinishReason::MaxTokens,
                    "tool_calls" | "function_call" => FinishReason::ToolUse,
                    _ => FinishReason::EndTurn,
                });
            }
        }
        out
    }

    fn tool_call_piece(&mut self, c: &Value) {
        let index = c
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(self.last_index);
        self.last_index = index;
        let call = self.calls.entry(index).or_default();
        if let Some(id) = c
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            call.id = Some(id.to_owned());
        }
        let Some(f) = c.get("function") else { return };
        if let Some(name) = f
            .get("name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            // Some servers repeat the whole name in every chunk, others split it.
            if call.name.is_empty() {
                call.name = name.to_owned();
            } else if call.name != name {
                call.name.push_str(name);
            }
        }
        match f.get("arguments") {
            Some(Value::String(a)) => call.arguments.push_str(a),
            // A few servers send the arguments as an object rather than JSON text.
            Some(v @ Value::Object(_)) => call.arguments.push_str(&v.to_string()),
            _ => {}
        }
    }

    /// The finished tool calls, then the `Finish`.
    fn finish_events(&mut self) -> Vec<ModelEvent> {
        let mut out = Vec::new();
        for (i, (index, c)) in std::mem::take(&mut self.calls).into_iter().enumerate() {
            let arguments = if c.arguments.trim().is_empty() {
                "{}".to_owned()
            } else {
                c.arguments
            };
            out.push(ModelEvent::ToolCall(ToolCall {
                // Servers that send no id still need one to pair the call with its result.
                id: c.id.unwrap_or_else(|| format!("call_{index}_{i}")),
                name: c.name,
                input: arguments,
            }));
        }
        let mut reason = self.finish.unwrap_or(FinishReason::EndTurn);
        // Ollama and others finish a tool-calling reply with "stop".
        if !out.is_empty() && reason == FinishReason::EndTurn {
            reason = FinishReason::ToolUse;
        }
        out.push(ModelEvent::Finish {
            reason,
            usage: self.usage,
        });
        out
    }

    /// The stream ended without `[DONE]`: finished if a finish reason came, else an error.
    fn end(&mut self) -> Vec<ModelEvent> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        match self.finish {
            Some(_) => self.finish_events(),
            None => vec![ModelEvent::Error(ModelError::transient(
                "the model server closed the stream before the reply was complete",
            ))],
        }
    }
}

impl SseDecoder for Decoder {
    fn event(&mut self, _name: &str, data: &str) -> Vec<ModelEvent> {
        self.data(data)
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

    #[test]
    fn decodes_content_reasoning_finish_and_usage() {
        let mut d = Decoder::default();
        let ev = d.data(r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}"#);
        assert_eq!(ev, vec![ModelEvent::TextDelta("Hi".into())]);
        let ev = d.data(r#"{"choices":[{"delta":{"reasoning_content":"hmm"}}]}"#);
        assert_eq!(ev, vec![ModelEvent::ReasoningDelta("hmm".into())]);
        assert!(
            d.data(r#"{"choices":[{"delta":{},"finish_reason":"length"}]}"#)
                .is_empty()
        );
        assert!(
            d.data(r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7,"prompt_tokens_details":{"cached_tokens":2},"completion_tokens_details":{"reasoning_tokens":5}}}"#)
                .is_empty()
        );
        assert_eq!(
            d.data("[DONE]"),
            vec![ModelEvent::Finish {
                reason: FinishReason::MaxTokens,
                usage: Usage {
                    prompt_tokens: 3,
                    completion_tokens: 7,
                    cached_tokens: 2,
                    reasoning_tokens: 5,
                }
            }]
        );
        assert_eq!(d.end(), vec![]);
    }

    #[test]
    fn a_stream_cut_short_is_an_error_and_an_in_band_error_is_reported() {
        let mut d = Decoder::default();
        d.data(r#"{"choices":[{"delta":{"content":"par"}}]}"#);
        assert!(matches!(&d.end()[..], [ModelEvent::Error(e)] if e.retryable));
        let mut d = Decoder::default();
        let ev = d.data(r#"{"error":{"message":"rate limited"}}"#);
        assert!(matches!(&ev[0], ModelEvent::Error(e) if e.message.contains("rate limited")));
        assert!(d.done);
    }

    fn call(id: &str, name: &str, input: &str) -> ModelEvent {
        ModelEvent::ToolCall(ToolCall {
            id: id.into(),
            name: name.into(),
            input: input.into(),
        })
    }

    #[test]
    fn tool_calls_accumulate_by_index_across_chunks() {
        let mut d = Decoder::default();
        assert!(d.data(r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"view","arguments":""}}]}}]}"#).is_empty());
        d.data(r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"id":"c2","function":{"name":"ls","arguments":"{}"}}]}}]}"#);
        d.data(r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"path\":"}}]}}]}"#);
        d.data(r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"a.rs\"}"}}]},"finish_reason":"tool_calls"}]}"#);
        assert_eq!(
            d.data("[DONE]"),
            vec![
                call("c1", "view", r#"{"path":"a.rs"}"#),
                call("c2", "ls", "{}"),
                ModelEvent::Finish {
                    reason: FinishReason::ToolUse,
                    usage: Usage::default()
                }
            ]
        );
    }

    #[test]
    fn tool_call_quirks_missing_id_late_name_repeated_name_and_stop() {
        let mut d = Decoder::default();
        d.data(r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\""}}]}}]}"#);
        d.data(r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"grep","arguments":":1}"}}]}}]}"#);
        d.data(r#"{"choices":[{"delta":{"tool_calls":[{"function":{"name":"grep","arguments":""}}]},"finish_reason":"stop"}]}"#);
        let ev = d.end();
        assert_eq!(ev.len(), 2);
        match &ev[0] {
            ModelEvent::ToolCall(c) => {
                assert!(!c.id.is_empty());
                assert_eq!(c.name, "grep");
                assert_eq!(c.input, r#"{"a":1}"#);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ev[1],
            ModelEvent::Finish {
                reason: FinishReason::ToolUse,
                ..
            }
        ));
    }

    #[test]
    fn request_carries_system_tools_calls_and_results() {
        let req = TurnRequest {
            system: "sys".into(),
            messages: vec![
                ChatMessage::user("hi"),
                ChatMessage::Assistant {
                    text: String::new(),
                    reasoning: None,
                    tool_calls: vec![ToolCall {
                        id: "c1".into(),
                        name: "view".into(),
                        input: "{}".into(),
                    }],
                },
                ChatMessage::ToolResult {
                    call_id: "c1".into(),
                    name: "view".into(),
                    content: "text".into(),
                    is_error: false,
                    images: Vec::new(),
                },
            ],
            tools: vec![crate::model::ToolSpec {
                name: "view".into(),
                description: "d".into(),
                parameters: json!({"type": "object"}),
            }],
            max_output_tokens: Some(100),
        };
        let b = request_body("m", &req, false);
        assert_eq!(b["messages"][0]["role"], "system");
        assert_eq!(b["messages"][2]["content"], Value::Null);
        assert_eq!(
            b["messages"][2]["tool_calls"][0]["function"]["name"],
            "view"
        );
        assert_eq!(b["messages"][3]["tool_call_id"], "c1");
        assert_eq!(b["tools"][0]["function"]["name"], "view");
        assert_eq!(b["max_tokens"], 100);
        let b = request_body("m", &req, true);
        assert_eq!(b["max_completion_tokens"], 100);
        assert!(b.get("max_tokens").is_none());
    }

    #[test]
    fn images_go_in_user_content_and_after_the_steps_tool_messages() {
        let png = crate::model::Image {
            mime_type: "image/png".into(),
            data: "AAAA".into(),
        };
        let req = TurnRequest {
            messages: vec![
                ChatMessage::User {
                    content: "what is this?".into(),
                    images: vec![png.clone()],
                },
                ChatMessage::Assistant {
                    text: String::new(),
                    reasoning: None,
                    tool_calls: vec![
                        ToolCall {
                            id: "c1".into(),
                            name: "shot".into(),
                            input: "{}".into(),
                        },
                        ToolCall {
                            id: "c2".into(),
                            name: "view".into(),
                            input: "{}".into(),
                        },
                    ],
                },
                ChatMessage::ToolResult {
                    call_id: "c1".into(),
                    name: "shot".into(),
                    content: "(the tool returned 1 image(s))".into(),
                    is_error: false,
                    images: vec![png],
                },
                ChatMessage::ToolResult {
                    call_id: "c2".into(),
                    name: "view".into(),
                    content: "text".into(),
                    is_error: false,
                    images: Vec::new(),
                },
            ],
            ..TurnRequest::default()
        };
        let b = request_body("m", &req, false);
        let m = &b["messages"];
        assert_eq!(
            m[0]["content"][0],
            json!({"type": "text", "text": "what is this?"})
        );
        assert_eq!(
            m[0]["content"][1]["image_url"]["url"],
            "data:image/png;base64,AAAA"
        );
        // Both tool messages first (the API wants them right after the calls), then the images.
        assert_eq!(m[2]["role"], "tool");
        assert_eq!(m[3]["role"], "tool");
        assert_eq!(m[4]["role"], "user");
        assert!(
            m[4]["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("c1 (shot)")
        );
        assert_eq!(m[4]["content"][1]["type"], "image_url");
        assert_eq!(m.as_array().unwrap().len(), 5);
    }
}
