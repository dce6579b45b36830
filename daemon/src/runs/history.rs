//! What the model is shown of a session: a user message's parts (prompt and attachments) as
//! stored and as model content, and the stored conversation turned back into model messages.

use serde_json::{Value, json};

use crush_protocol::Attachment;

use crate::model::{ChatMessage, Reasoning, ToolCall};

/// The parts of a user message: the prompt as text, then each attachment.
pub(super) fn user_parts(prompt: &str, attachments: &[Attachment]) -> Value {
    let mut parts = Vec::new();
    if !prompt.is_empty() {
        parts.push(json!({"type": "text", "text": prompt}));
    }
    for a in attachments {
        let mut p = json!({"type": "attachment", "text": a.text});
        if let Some(n) = &a.name {
            p["name"] = json!(n);
        }
        if let Some(m) = &a.mime_type {
            p["mimeType"] = json!(m);
        }
        parts.push(p);
    }
    Value::Array(parts)
}

/// What the model is shown for a user message's parts: the text, then each attachment wrapped
/// with its name.
pub(super) fn user_content(parts: &Value) -> String {
    let mut out = String::new();
    for p in parts.as_array().into_iter().flatten() {
        let text = p["text"].as_str().unwrap_or_default();
        match p["type"].as_str() {
            Some("text") => {
                if !out.is_empty() {
                    out.push_str("\n\n");
                }
                out.push_str(text);
            }
            Some("attachment") => {
                if !out.is_empty() {
                    out.push_str("\n\n");
                }
                let name = p["name"].as_str().unwrap_or("attachment");
                out.push_str(&format!(
                    "<attachment name={name:?}>\n{text}\n</attachment>"
                ));
            }
            _ => {}
        }
    }
    out
}

/// The conversation so far as the model sees it, oldest first: user text, assistant text with
/// its tool calls, and tool results. The window may start mid-turn and a crash or cancel may
/// leave a call without its result, so the result is repaired: results without their call are
/// dropped, and a call without a result gets one saying it did not complete (both APIs reject
/// unpaired calls).
pub(super) fn history_messages(rows: &[crate::store::MessageRow]) -> Vec<ChatMessage> {
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
        let parts: Value = serde_json::from_str(&m.parts).unwrap_or(Value::Null);
        let parts = parts.as_array().cloned().unwrap_or_default();
        match m.role.as_str() {
            "user" => {
                close_open(&mut out, &mut open_calls);
                out.push(ChatMessage::user(user_content(&Value::Array(parts))));
            }
            "assistant" => {
                close_open(&mut out, &mut open_calls);
                let text: String = parts
                    .iter()
                    .filter(|p| p["type"] == "text")
                    .filter_map(|p| p["text"].as_str())
                    .collect();
                let reasoning = parts
                    .iter()
                    .find(|p| p["type"] == "reasoning" && p["signature"].is_string())
                    .map(|p| Reasoning {
                        text: p["reasoning"].as_str().unwrap_or_default().to_owned(),
                        signature: p["signature"].as_str().map(str::to_owned),
                    });
                let tool_calls: Vec<ToolCall> = parts
                    .iter()
                    .filter(|p| p["type"] == "toolCall")
                    .map(|p| ToolCall {
                        id: p["id"].as_str().unwrap_or_default().to_owned(),
                        name: p["name"].as_str().unwrap_or_default().to_owned(),
                        input: p["input"].as_str().unwrap_or("{}").to_owned(),
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
                for p in parts.iter().filter(|p| p["type"] == "toolResult") {
                    let id = p["toolCallId"].as_str().unwrap_or_default();
                    let Some(i) = open_calls.iter().position(|(c, _)| c == id) else {
                        continue;
                    };
                    let (call_id, name) = open_calls.remove(i);
                    out.push(ChatMessage::ToolResult {
                        call_id,
                        name,
                        content: p["content"].as_str().unwrap_or_default().to_owned(),
                        is_error: p["isError"].as_bool().unwrap_or(false),
                    });
                }
            }
            _ => {}
        }
    }
    close_open(&mut out, &mut open_calls);
    out
}
