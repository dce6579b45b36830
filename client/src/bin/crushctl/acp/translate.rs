//! The daemon's session events and stored messages as ACP `session/update`s: text and
//! reasoning chunks, tool calls with their kind, locations and (for edits) a diff with the old
//! and new text, and the prompt of another client as a user message.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crush_protocol::{FinishReason, MessageInfo, Part, SessionEvent, ToolStatus};

use super::schema::{
    ContentBlock, ContentChunk, SessionUpdate, ToolCall, ToolCallContent, ToolCallLocation,
    ToolCallStatus, ToolCallUpdate, ToolKind,
};

/// ACP's tool kinds for crushd's tools (the client picks icons and layouts by them).
pub fn tool_kind(tool: &str) -> ToolKind {
    match tool {
        "view" => ToolKind::Read,
        "ls" | "glob" | "grep" => ToolKind::Search,
        "edit" | "write" => ToolKind::Edit,
        "bash" => ToolKind::Execute,
        t if t.contains("fetch") => ToolKind::Fetch,
        _ => ToolKind::Other,
    }
}

/// The model's input as JSON (stored inputs are JSON text).
fn input_value(input: &Value) -> Value {
    match input {
        Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| input.clone()),
        v => v.clone(),
    }
}

/// The file a tool call works on, absolute (relative paths are the workspace's), so the client
/// can follow along.
fn locations(cwd: &Path, input: &Value) -> Vec<ToolCallLocation> {
    let input = input_value(input);
    let Some(p) = ["path", "file_path", "file"]
        .iter()
        .find_map(|k| input.get(*k).and_then(Value::as_str))
    else {
        return Vec::new();
    };
    let path = PathBuf::from(p);
    let path = if path.is_absolute() {
        path
    } else {
        cwd.join(path)
    };
    let line = input
        .get("offset")
        .and_then(Value::as_u64)
        .and_then(|l| u32::try_from(l).ok());
    vec![ToolCallLocation { path, line }]
}

pub fn text_block(text: impl Into<String>) -> ContentBlock {
    ContentBlock::Text { text: text.into() }
}

fn chunk(message_id: &str, text: &str) -> ContentChunk {
    ContentChunk {
        content: text_block(text),
        message_id: message_id.to_owned(),
    }
}

pub fn user_text(message_id: &str, text: &str) -> SessionUpdate {
    SessionUpdate::UserMessageChunk(chunk(message_id, text))
}

pub fn agent_text(message_id: &str, text: &str) -> SessionUpdate {
    SessionUpdate::AgentMessageChunk(chunk(message_id, text))
}

pub fn agent_thought(message_id: &str, text: &str) -> SessionUpdate {
    SessionUpdate::AgentThoughtChunk(chunk(message_id, text))
}

pub fn tool_call(cwd: &Path, id: &str, tool: &str, input: &Value) -> ToolCall {
    ToolCall {
        tool_call_id: id.to_owned(),
        title: crate::render::tool_summary(tool, input),
        kind: tool_kind(tool),
        status: ToolCallStatus::InProgress,
        locations: locations(cwd, input),
        raw_input: input_value(input),
    }
}

pub fn tool_call_started(cwd: &Path, id: &str, tool: &str, input: &Value) -> SessionUpdate {
    SessionUpdate::ToolCall(tool_call(cwd, id, tool, input))
}

/// A finished tool call: its status, its output as text and, for an edit, the change as an
/// ACP diff (from the tool's metadata: `path`, `oldText`, `newText`).
pub fn tool_call_finished(
    cwd: &Path,
    id: &str,
    status: ToolStatus,
    output: &str,
    metadata: Option<&Value>,
) -> SessionUpdate {
    let acp_status = if status == ToolStatus::Completed {
        ToolCallStatus::Completed
    } else {
        ToolCallStatus::Failed
    };
    let mut content = Vec::new();
    if let Some(d) = metadata.and_then(|m| diff(cwd, m)) {
        content.push(d);
    }
    content.push(ToolCallContent::Content {
        content: text_block(output),
    });
    SessionUpdate::ToolCallUpdate(ToolCallUpdate {
        tool_call_id: id.to_owned(),
        status: Some(acp_status),
        content: Some(content),
        raw_output: Some(Value::String(output.to_owned())),
        ..ToolCallUpdate::default()
    })
}

fn diff(cwd: &Path, m: &Value) -> Option<ToolCallContent> {
    let path = m.get("path").and_then(Value::as_str)?;
    let new_text = m.get("newText").and_then(Value::as_str)?;
    let old_text = m.get("oldText").and_then(Value::as_str).map(str::to_owned);
    Some(ToolCallContent::Diff {
        path: cwd.join(path),
        old_text,
        new_text: new_text.to_owned(),
    })
}

/// A live event as the updates the client is shown (none for bookkeeping events).
pub fn event(cwd: &Path, ev: &SessionEvent) -> Option<SessionUpdate> {
    Some(match ev {
        SessionEvent::UserMessage { message_id, text } => user_text(message_id, text),
        SessionEvent::TextDelta { message_id, text } => agent_text(message_id, text),
        SessionEvent::ReasoningDelta { message_id, text } => agent_thought(message_id, text),
        SessionEvent::ToolCallStarted {
            tool_call_id,
            tool,
            input,
            ..
        } => tool_call_started(cwd, tool_call_id, tool, input),
        SessionEvent::ToolCallFinished {
            tool_call_id,
            status,
            output,
            metadata,
            ..
        } => tool_call_finished(cwd, tool_call_id, *status, output, metadata.as_ref()),
        _ => return None,
    })
}

/// A stored message as the updates that replay it (`session/load`).
pub fn message(cwd: &Path, m: &MessageInfo) -> Vec<SessionUpdate> {
    parts(cwd, &m.message_id, &m.role, &m.parts)
}

fn parts(cwd: &Path, message_id: &str, role: &str, parts: &[Part]) -> Vec<SessionUpdate> {
    let mut out = Vec::new();
    for p in parts {
        match p {
            Part::Text { text } if role == "user" => out.push(user_text(message_id, text)),
            Part::Attachment { text, name, .. } if role == "user" => {
                let label = name.as_deref().unwrap_or("attachment");
                out.push(user_text(message_id, &format!("\n[{label}]\n{text}")));
            }
            Part::Text { text } if role == "assistant" => out.push(agent_text(message_id, text)),
            Part::Reasoning { reasoning, .. } => out.push(agent_thought(message_id, reasoning)),
            Part::ToolCall { id, name, input } => {
                out.push(tool_call_started(cwd, id, name, input));
            }
            Part::ToolResult {
                tool_call_id,
                content,
                status,
                metadata,
                ..
            } => out.push(tool_call_finished(
                cwd,
                tool_call_id,
                *status,
                content,
                metadata.as_ref(),
            )),
            _ => {}
        }
    }
    out
}

/// Whether a finish reason says the model hit its output limit.
pub fn is_max_tokens(r: FinishReason) -> bool {
    r == FinishReason::MaxTokens
}

/// Unix milliseconds as ISO 8601 UTC (`session/list`'s `updatedAt`).
pub fn iso8601(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn iso8601_of_known_instants() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_709_210_096_000), "2024-02-29T12:34:56Z");
    }

    #[test]
    fn tool_calls_carry_kind_locations_and_diffs() {
        let cwd = Path::new("/p");
        let u = serde_json::to_value(tool_call_started(
            cwd,
            "c1",
            "edit",
            &json!(r#"{"path":"src/a.rs"}"#),
        ))
        .unwrap();
        assert_eq!(u["sessionUpdate"], "tool_call");
        assert_eq!(u["kind"], "edit");
        assert_eq!(u["locations"][0]["path"], "/p/src/a.rs");
        let u = serde_json::to_value(tool_call_finished(
            cwd,
            "c1",
            ToolStatus::Completed,
            "Edited",
            Some(&json!({"path": "src/a.rs", "oldText": "a", "newText": "b"})),
        ))
        .unwrap();
        assert_eq!(u["status"], "completed");
        assert_eq!(u["content"][0]["type"], "diff");
        assert_eq!(u["content"][0]["oldText"], "a");
        assert_eq!(u["content"][0]["newText"], "b");
        assert_eq!(tool_kind("bash"), ToolKind::Execute);
        assert_eq!(tool_kind("grep"), ToolKind::Search);
    }
}
