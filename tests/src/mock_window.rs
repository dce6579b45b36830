//! The context window the mock model enforces, as a real API does: each request's tokens are
//! counted (with the daemon's own estimate, so a request the daemon counted as fitting fits
//! here too) and one over the window is refused with the provider's real overflow answer.

use serde_json::{Value, json};

use crushd::model::tokens::estimate;

/// What the daemon's counter adds per message, per tool call or spec and per request
/// (`daemon/src/model/tokens.rs`, `runs/budget.rs`).
const PER_MESSAGE: u64 = 5;
const PER_TOOL: u64 = 8;
const PER_REQUEST: u64 = 3;

fn text(v: &Value) -> u64 {
    v.as_str().map_or(0, estimate)
}

/// The prompt tokens of an OpenAI Chat Completions body: every message's content, the tool
/// calls' names and arguments, and the tools' specs — what the daemon counts, less the parts it
/// counts and the API does not see (a tool result's name).
pub fn count_openai(body: &Value) -> u64 {
    let mut n = PER_REQUEST;
    for m in body["messages"].as_array().into_iter().flatten() {
        n += PER_MESSAGE + text(&m["content"]);
        for c in m["tool_calls"].as_array().into_iter().flatten() {
            n += PER_TOOL + text(&c["function"]["name"]) + text(&c["function"]["arguments"]);
        }
    }
    for t in body["tools"].as_array().into_iter().flatten() {
        let f = &t["function"];
        n += PER_TOOL
            + text(&f["name"])
            + text(&f["description"])
            + estimate(&f["parameters"].to_string());
    }
    n
}

/// The prompt tokens of an Anthropic Messages body: every string in the system prompt, the
/// messages and the tools (tool inputs as JSON text).
pub fn count_anthropic(body: &Value) -> u64 {
    fn strings(v: &Value) -> u64 {
        match v {
            Value::String(s) => estimate(s),
            Value::Array(a) => a.iter().map(strings).sum(),
            Value::Object(o) => o
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "type" | "role" | "id" | "tool_use_id"))
                .map(|(_, v)| strings(v))
                .sum(),
            _ => 0,
        }
    }
    PER_REQUEST + strings(&body["system"]) + strings(&body["messages"]) + strings(&body["tools"])
}

/// The output cap a request asks for (`max_tokens`, `max_completion_tokens`).
pub fn max_output(body: &Value) -> u64 {
    body["max_completion_tokens"]
        .as_u64()
        .or(body["max_tokens"].as_u64())
        .unwrap_or(0)
}

/// OpenAI's answer to a request over the window (HTTP 400).
pub fn openai_overflow(window: u64, tokens: u64) -> Value {
    json!({"error": {
        "message": format!(
            "This model's maximum context length is {window} tokens. However, your messages \
             resulted in {tokens} tokens. Please reduce the length of the messages."
        ),
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }})
}

/// Anthropic's answer to a request over the window (HTTP 400).
pub fn anthropic_overflow(window: u64, tokens: u64) -> Value {
    json!({"type": "error", "error": {
        "type": "invalid_request_error",
        "message": format!("prompt is too long: {tokens} tokens > {window} maximum"),
    }})
}
