//! What the model is shown of a session: a user message's parts (prompt and attachments) as
//! stored and as model content, and the stored conversation turned back into model messages.

use crush_protocol::{Attachment, Part};

use crate::model::{ChatMessage, Reasoning, ToolCall};

/// The parts of a user message: the prompt as text, then each attachment.
pub(super) fn user_parts(prompt: &str, attachments: &[Attachment]) -> Vec<Part> {
    let mut parts = Vec::new();
    if !prompt.is_empty() {
        parts.push(Part::text(prompt));
    }
    for a in attachments {
        parts.push(Part::Attachment {
            text: a.text.clone(),
            name: a.name.clone(),
            mime_type: a.mime_type.clone(),
        });
    }
    parts
}

/// What the model is shown for a user message's parts: the text, then each attachment wrapped
/// with its name.
pub(super) fn user_content(parts: &[Part]) -> String {
    let mut out = String::new();
    for p in parts {
        match p {
            Part::Text { text } => {
                if !out.is_empty() {
                    out.push_str("\n\n");
                }
                out.push_str(text);
            }
            Part::Attachment { text, name, .. } => {
                if !out.is_empty() {
                    out.push_str("\n\n");
                }
                // An attachment sent without a name is shown to the model under this one.
                let name = name.as_deref().unwrap_or("attachment");
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
///
/// Each message comes with the id of the stored message it came from (a repaired result names
/// the assistant message holding its call): what the context budget's stubs name.
pub(super) fn history_entries(rows: &[crate::store::MessageRow]) -> Vec<(String, ChatMessage)> {
    let mut out: Vec<(String, ChatMessage)> = Vec::with_capacity(rows.len());
    let mut open_calls: Vec<(String, String)> = Vec::new();
    let mut open_in = String::new();
    let close_open =
        |out: &mut Vec<(String, ChatMessage)>, open: &mut Vec<(String, String)>, source: &str| {
            for (id, name) in open.drain(..) {
                out.push((
                    source.to_owned(),
                    ChatMessage::ToolResult {
                        call_id: id,
                        name,
                        content:
                            "the tool call did not complete (the run was interrupted or cancelled)"
                                .to_owned(),
                        is_error: true,
                    },
                ));
            }
        };
    for m in rows {
        // A message whose parts cannot be read counts as empty.
        let parts = m.part_list().unwrap_or_default();
        match m.role.as_str() {
            "user" => {
                close_open(&mut out, &mut open_calls, &open_in);
                out.push((m.id.clone(), ChatMessage::user(user_content(&parts))));
            }
            "assistant" => {
                close_open(&mut out, &mut open_calls, &open_in);
                let text = crush_protocol::vocab::text_of(&parts);
                let reasoning = parts.iter().find_map(|p| match p {
                    Part::Reasoning {
                        reasoning,
                        signature: Some(signature),
                    } => Some(Reasoning {
                        text: reasoning.clone(),
                        signature: Some(signature.clone()),
                    }),
                    _ => None,
                });
                let tool_calls: Vec<ToolCall> = parts
                    .iter()
                    .filter_map(|p| match p {
                        // Stored input is the model's JSON text; anything else is sent as `{}`.
                        Part::ToolCall { id, name, input } => Some(ToolCall {
                            id: id.clone(),
                            name: name.clone(),
                            input: input.as_str().unwrap_or("{}").to_owned(),
                        }),
                        _ => None,
                    })
                    .collect();
                if text.is_empty() && tool_calls.is_empty() {
                    continue;
                }
                open_calls = tool_calls
                    .iter()
                    .map(|c| (c.id.clone(), c.name.clone()))
                    .collect();
                open_in = m.id.clone();
                out.push((
                    m.id.clone(),
                    ChatMessage::Assistant {
                        text,
                        reasoning,
                        tool_calls,
                    },
                ));
            }
            "tool" => {
                for p in &parts {
                    let Part::ToolResult {
                        tool_call_id,
                        content,
                        is_error,
                        ..
                    } = p
                    else {
                        continue;
                    };
                    let Some(i) = open_calls.iter().position(|(c, _)| c == tool_call_id) else {
                        continue;
                    };
                    let (call_id, name) = open_calls.remove(i);
                    out.push((
                        m.id.clone(),
                        ChatMessage::ToolResult {
                            call_id,
                            name,
                            content: content.clone(),
                            is_error: is_error.unwrap_or(false),
                        },
                    ));
                }
            }
            _ => {}
        }
    }
    close_open(&mut out, &mut open_calls, &open_in);
    out
}
