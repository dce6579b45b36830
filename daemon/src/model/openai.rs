//! The OpenAI-compatible Chat Completions streaming API (`POST {base_url}/chat/completions` with
//! `stream: true`), which OpenAI, Ollama, vLLM, llama.cpp's server, LM Studio and OpenRouter all
//! speak. Server-sent events are decoded with `eventsource-stream`; each `data:` line is one
//! `chat.completion.chunk`, and `data: [DONE]` ends the stream.

use std::sync::Arc;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::stream;
use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crush_protocol::ModelInfo;

use super::{EventStream, FinishReason, Model, ModelError, ModelEvent, TurnRequest, Usage};

pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// How long connecting to the model server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest silence between two reads of a streaming response.
const READ_TIMEOUT: Duration = Duration::from_secs(300);
/// How much of an error body is read.
const MAX_ERROR_BODY: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct OpenAiModel {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    info: ModelInfo,
    url: String,
    api_key: Option<String>,
    http: reqwest::Client,
}

impl OpenAiModel {
    /// A model at `info.base_url` (the part before `/chat/completions`).
    pub fn new(info: ModelInfo, api_key: Option<String>) -> Result<Self, String> {
        let base = info
            .base_url
            .clone()
            .unwrap_or_else(|| DEFAULT_BASE_URL.to_owned());
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!("base_url {base:?} is not an http(s) URL"));
        }
        if info.model.trim().is_empty() {
            return Err("it has no `model` (the provider's model id)".to_owned());
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("crushd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                url: format!("{}/chat/completions", base.trim_end_matches('/')),
                info,
                api_key,
                http,
            }),
        })
    }
}

impl Model for OpenAiModel {
    fn info(&self) -> &ModelInfo {
        &self.inner.info
    }

    fn stream(&self, request: TurnRequest, cancel: CancellationToken) -> EventStream {
        let inner = self.inner.clone();
        let events =
            stream::once(async move { inner.open(request).await }).flat_map(
                |opened| match opened {
                    Ok(body) => decode(body).boxed(),
                    Err(e) => stream::iter([ModelEvent::Error(e)]).boxed(),
                },
            );
        // Ending the stream on cancel drops the response body, which closes the connection.
        Box::pin(events.take_until(cancel.cancelled_owned()))
    }
}

impl Inner {
    async fn open(
        &self,
        request: TurnRequest,
    ) -> Result<impl Stream<Item = reqwest::Result<bytes::Bytes>> + Send + use<>, ModelError> {
        let messages: Vec<Value> = request
            .messages
            .iter()
            .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
            .collect();
        let body = json!({
            "model": self.info.model,
            "messages": messages,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        let mut req = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .body(body.to_string());
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.map_err(|e| {
            ModelError::new(format!(
                "cannot reach the model server at {}: {}",
                self.url,
                error_chain(&e)
            ))
        })?;
        let status = resp.status();
        if !status.is_success() {
            let detail = read_error_body(resp).await;
            return Err(ModelError {
                message: format!(
                    "the model server answered {} for {}: {detail}",
                    status.as_u16(),
                    self.url
                ),
                status: Some(status.as_u16()),
            });
        }
        Ok(resp.bytes_stream())
    }
}

/// The error message of an OpenAI-style error body, or the start of the body as text.
async fn read_error_body(resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    let mut chunks = resp.bytes_stream();
    while let Some(Ok(chunk)) = chunks.next().await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_ERROR_BODY {
            body.truncate(MAX_ERROR_BODY);
            break;
        }
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| error_message(&v))
        .unwrap_or_else(|| {
            let t = text.trim();
            if t.is_empty() {
                "(empty body)".to_owned()
            } else {
                t.chars().take(500).collect()
            }
        })
}

fn error_message(v: &Value) -> Option<String> {
    let e = v.get("error")?;
    e.get("message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| e.as_str().map(str::to_owned))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// What has been seen of a stream so far.
#[derive(Default)]
struct Decoder {
    finish: Option<FinishReason>,
    usage: Usage,
    done: bool,
}

impl Decoder {
    /// The events one SSE `data:` payload yields.
    fn data(&mut self, data: &str) -> Vec<ModelEvent> {
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            return vec![self.finish_event()];
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
            let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
            self.usage = Usage {
                prompt_tokens: n("prompt_tokens"),
                completion_tokens: n("completion_tokens"),
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

    fn finish_event(&self) -> ModelEvent {
        ModelEvent::Finish {
            reason: self.finish.unwrap_or(FinishReason::EndTurn),
            usage: self.usage,
        }
    }

    /// The stream ended without `[DONE]`: finished if a finish reason came, else an error.
    fn end(&mut self) -> Option<ModelEvent> {
        if self.done {
            return None;
        }
        self.done = true;
        Some(match self.finish {
            Some(_) => self.finish_event(),
            None => ModelEvent::Error(ModelError::new(
                "the model server closed the stream before the reply was complete",
            )),
        })
    }
}

/// Decodes a response body into model events, ending after the first `Finish` or `Error`.
fn decode(
    body: impl Stream<Item = reqwest::Result<bytes::Bytes>> + Send + 'static,
) -> impl Stream<Item = ModelEvent> + Send {
    let sse = Box::pin(body.eventsource());
    stream::unfold(Some((sse, Decoder::default())), |state| async move {
        let (mut sse, mut dec) = state?;
        loop {
            match sse.next().await {
                Some(Ok(event)) => {
                    let out = dec.data(&event.data);
                    if dec.done {
                        return Some((out, None));
                    }
                    if !out.is_empty() {
                        return Some((out, Some((sse, dec))));
                    }
                }
                Some(Err(e)) => {
                    let err = ModelError::new(format!(
                        "reading the model's stream failed: {}",
                        error_chain(&e)
                    ));
                    return Some((vec![ModelEvent::Error(err)], None));
                }
                None => return dec.end().map(|e| (vec![e], None)),
            }
        }
    })
    .flat_map(stream::iter)
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
            d.data(r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7}}"#)
                .is_empty()
        );
        assert_eq!(
            d.data("[DONE]"),
            vec![ModelEvent::Finish {
                reason: FinishReason::MaxTokens,
                usage: Usage {
                    prompt_tokens: 3,
                    completion_tokens: 7
                }
            }]
        );
        assert_eq!(d.end(), None);
    }

    #[test]
    fn a_stream_cut_short_is_an_error_and_an_in_band_error_is_reported() {
        let mut d = Decoder::default();
        d.data(r#"{"choices":[{"delta":{"content":"par"}}]}"#);
        assert!(matches!(d.end(), Some(ModelEvent::Error(_))));
        let mut d = Decoder::default();
        let ev = d.data(r#"{"error":{"message":"rate limited"}}"#);
        assert!(matches!(&ev[0], ModelEvent::Error(e) if e.message.contains("rate limited")));
        assert!(d.done);
    }
}
