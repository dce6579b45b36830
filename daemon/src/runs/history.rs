//! What the model is shown of a session: a user message's parts (prompt and attachments) as
//! stored and as model content, and the stored conversation turned back into model messages.

use crush_protocol::{Attachment, ImageInput, Part};

use crate::model::{ChatMessage, Image, Reasoning, ToolCall};

/// The parts of a user message: the prompt as text, then each attachment, then each image.
pub(super) fn user_parts(
    prompt: &str,
    attachments: &[Attachment],
    images: &[ImageInput],
) -> Vec<Part> {
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
    for i in images {
        parts.push(Part::Image {
            mime_type: i.mime_type.clone(),
            data: i.data.clone(),
            name: i.name.clone(),
            tool_call_id: None,
        });
    }
    parts
}

/// A user message as the model is shown it: its text and attachments, then its images.
pub(super) fn user_message(parts: &[Part]) -> ChatMessage {
    ChatMessage::User {
        content: user_content(parts),
        images: images_of(parts, None),
    }
}

/// The images among `parts` that belong to tool call `call` (`None`: the prompt's own).
pub(super) fn images_of(parts: &[Part], call: Option<&str>) -> Vec<Image> {
    parts
        .iter()
        .filter_map(|p| match p {
            Part::Image {
                mime_type,
                data,
                tool_call_id,
                ..
            } if tool_call_id.as_deref() == call => Some(Image {
                mime_type: mime_type.clone(),
                data: data.clone(),
            }),
            _ => None,
        })
        .collect()
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

/// One message the model is shown, with the id of the stored message it came from (a repaired
/// result names the assistant message holding its call): what the context budget's stubs name.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Shown {
    pub(super) source: String,
    pub(super) msg: ChatMessage,
    /// A model-written summary: how many stored messages it stands for.
    pub(super) summary: Option<u32>,
}

/// A stored summary: the `system` message holding it and its `summary` part.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct StoredSummary {
    pub(super) message_id: String,
    pub(super) seq: i64,
    pub(super) text: String,
    pub(super) to_message_id: String,
    pub(super) messages: u32,
}

/// The session's latest summary among `rows` (the one the model is shown: it covers every
/// earlier one).
pub(super) fn latest_summary(rows: &[crate::store::MessageRow]) -> Option<StoredSummary> {
    rows.iter()
        .rev()
        .filter(|m| m.role == "system" && m.reverted_by.is_none())
        .find_map(|m| {
            m.part_list().ok()?.into_iter().find_map(|p| match p {
                Part::Summary {
                    text,
                    to_message_id,
                    messages,
                    ..
                } => Some(StoredSummary {
                    message_id: m.id.clone(),
                    seq: m.seq,
                    text,
                    to_message_id,
                    messages,
                }),
                _ => None,
            })
        })
}

/// What the model is shown for a summary of `messages` stored messages.
pub(super) fn summary_content(text: &str, messages: u32) -> String {
    format!(
        "[A summary of {messages} earlier messages of this session, written to fit the context \
         window. The user's instructions above and in it still apply.]\n\n{text}"
    )
}

/// The conversation so far as the model sees it, oldest first: user text, assistant text with
/// its tool calls, and tool results. The window may start mid-turn and a crash or cancel may
/// leave a call without its result, so the result is repaired: results without their call are
/// dropped, and a call without a result gets one saying it did not complete (both APIs reject
/// unpaired calls).
///
/// Messages a revert hid are not shown at all. When the session has a summary, the model is
/// shown the session's first message, the latest
/// summary, and the messages after the range it replaces (summaries always start after the
/// first message and reach up to their `toMessageId`, which must be among `rows` for its
/// `seq`; without it the summary is not used).
pub(super) fn history_entries(rows: &[crate::store::MessageRow]) -> Vec<Shown> {
    let summary = latest_summary(rows).and_then(|s| {
        let through = rows.iter().find(|r| r.id == s.to_message_id)?.seq;
        Some((s, through))
    });
    let mut pending_summary = summary.as_ref();
    let mut out: Vec<(String, ChatMessage)> = Vec::with_capacity(rows.len());
    let mut summary_at: Option<(usize, u32)> = None;
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
                        images: Vec::new(),
                    },
                ));
            }
        };
    for m in rows {
        // Hidden by `session/revert`.
        if m.reverted_by.is_some() {
            continue;
        }
        if let Some((_, through)) = summary
            && m.seq <= through
            && m.seq != 1
        {
            continue;
        }
        if let Some((s, _)) = pending_summary.take_if(|_| m.seq != 1) {
            close_open(&mut out, &mut open_calls, &open_in);
            summary_at = Some((out.len(), s.messages));
            out.push((
                s.message_id.clone(),
                ChatMessage::user(summary_content(&s.text, s.messages)),
            ));
        }
        // A message whose parts cannot be read counts as empty.
        let parts = m.part_list().unwrap_or_default();
        match m.role.as_str() {
            "user" => {
                close_open(&mut out, &mut open_calls, &open_in);
                out.push((m.id.clone(), user_message(&parts)));
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
                            images: images_of(&parts, Some(&call_id)),
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
    if let Some((s, _)) = pending_summary {
        summary_at = Some((out.len(), s.messages));
        out.push((
            s.message_id.clone(),
            ChatMessage::user(summary_content(&s.text, s.messages)),
        ));
    }
    out.into_iter()
        .enumerate()
        .map(|(i, (source, msg))| Shown {
            source,
            msg,
            summary: summary_at.filter(|(at, _)| *at == i).map(|(_, n)| n),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::store::MessageRow;

    fn row(seq: i64, role: &str, parts: serde_json::Value) -> MessageRow {
        MessageRow {
            id: format!("m{seq}"),
            session_id: "s".into(),
            seq,
            run_id: None,
            role: role.into(),
            parts: parts.to_string(),
            model: None,
            provider: None,
            finish_reason: None,
            error: None,
            created_at: 0,
            updated_at: 0,
            finished_at: None,
            reverted_by: None,
        }
    }

    fn text(seq: i64, role: &str, t: &str) -> MessageRow {
        row(seq, role, serde_json::json!([{"type": "text", "text": t}]))
    }

    fn summary(seq: i64, to: &str, t: &str, messages: u32) -> MessageRow {
        row(
            seq,
            "system",
            serde_json::json!([{"type": "summary", "text": t, "fromMessageId": "m2",
                                "toMessageId": to, "messages": messages}]),
        )
    }

    fn users(shown: &[Shown]) -> Vec<(String, Option<u32>)> {
        shown
            .iter()
            .filter_map(|s| match &s.msg {
                ChatMessage::User { content, .. } => Some((content.clone(), s.summary)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_latest_summary_stands_for_its_range_after_the_first_message() {
        let rows = vec![
            text(1, "user", "first"),
            text(2, "assistant", "a1"),
            text(3, "user", "second"),
            text(4, "assistant", "a2"),
            summary(5, "m2", "OLD", 1),
            text(6, "user", "third"),
            text(7, "assistant", "a3"),
            // Written during turn 4 (its prompt is message 8), covering up to message 4.
            text(8, "user", "fourth"),
            summary(9, "m4", "NEW", 4),
            text(10, "assistant", "a4"),
        ];
        let shown = history_entries(&rows);
        let u = users(&shown);
        assert_eq!(u[0], ("first".to_owned(), None));
        assert!(u[1].0.ends_with("NEW"), "{u:?}");
        assert!(u[1].0.starts_with("[A summary of 4 earlier messages"));
        assert_eq!(u[1].1, Some(4));
        assert_eq!(shown[1].source, "m9");
        assert_eq!(u[2].0, "third");
        assert_eq!(u[3].0, "fourth");
        assert_eq!(
            u.len(),
            4,
            "the old summary and messages 2..=4 are not shown"
        );
        // Without the end of its range among the rows the summary is not used.
        let cut: Vec<MessageRow> = rows.iter().filter(|r| r.id != "m4").cloned().collect();
        assert!(
            users(&history_entries(&cut))
                .iter()
                .all(|(_, s)| s.is_none())
        );
    }

    #[test]
    fn a_summary_of_everything_before_the_latest_message_comes_last() {
        let rows = vec![
            text(1, "user", "first"),
            text(2, "assistant", "a1"),
            summary(3, "m2", "ALL", 1),
        ];
        let u = users(&history_entries(&rows));
        assert_eq!(u.len(), 2);
        assert!(u[1].0.ends_with("ALL"));
    }
}
