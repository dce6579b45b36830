//! What the editor has been shown of one session, so that each piece of it is sent once.
//!
//! ACP updates only add (a chunk is appended, a tool call is announced), so the bridge cannot
//! send a view again the way a protocol client rebuilds one. After a rebuild from the database
//! (`session/load`, a resync) the live events that follow may carry what the history read
//! already held: `session/messages` is read after the subscription's cursor, and events after
//! the cursor may be in it (docs/protocol.md, "Sharing sessions between clients": key messages
//! by `messageId`). So pieces are keyed: user messages and tool calls (started, finished) by
//! id, and a message's text and reasoning by how many bytes of each the editor has, against how
//! many the stream has carried since the cursor.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crush_protocol::{MessageInfo, Part, SessionEvent, StreamingMessage};

use super::schema::SessionUpdate;
use super::translate;

#[derive(Default)]
pub struct Shown {
    messages: HashMap<String, Progress>,
    users: HashSet<String>,
    calls: HashSet<String>,
    results: HashSet<String>,
}

/// One message's text and reasoning: bytes the editor has, and bytes the live stream carried
/// since the cursor (the streaming message's snapshot counts as carried).
#[derive(Default)]
struct Progress {
    text: Stream,
    thought: Stream,
}

#[derive(Default)]
struct Stream {
    shown: usize,
    live: usize,
}

impl Stream {
    /// A live delta: the part of it the editor has not been shown.
    fn delta<'a>(&mut self, text: &'a str) -> Option<&'a str> {
        let start = self.live;
        self.live += text.len();
        if self.live <= self.shown {
            return None;
        }
        let skip = self.shown.saturating_sub(start);
        self.shown = self.live;
        Some(tail(text, skip))
    }

    /// A stored part that starts `at` bytes into the message's text: the rest the editor has
    /// not been shown.
    fn part<'a>(&mut self, at: usize, text: &'a str) -> Option<&'a str> {
        let end = at + text.len();
        if end <= self.shown {
            return None;
        }
        let skip = self.shown.saturating_sub(at);
        self.shown = end;
        Some(tail(text, skip))
    }
}

/// `text` from byte `skip` on; all of it if `skip` is not a character boundary (the stored
/// text and the deltas disagree: showing twice beats losing text).
fn tail(text: &str, skip: usize) -> &str {
    text.get(skip..).unwrap_or(text)
}

/// A message's text and reasoning, in bytes.
fn lengths(parts: &[Part]) -> (usize, usize) {
    parts.iter().fold((0, 0), |(t, r), p| match p {
        Part::Text { text } => (t + text.len(), r),
        Part::Reasoning { reasoning, .. } => (t, r + reasoning.len()),
        _ => (t, r),
    })
}

impl Shown {
    /// A live event: the update for what the editor has not been shown of it (none for
    /// bookkeeping events). The event counts as shown either way.
    pub fn event(&mut self, cwd: &Path, ev: &SessionEvent) -> Option<SessionUpdate> {
        let fresh = match ev {
            SessionEvent::UserMessage { message_id, .. } => self.users.insert(message_id.clone()),
            SessionEvent::TextDelta { message_id, text } => {
                let p = self.messages.entry(message_id.clone()).or_default();
                return p
                    .text
                    .delta(text)
                    .map(|t| translate::agent_text(message_id, t));
            }
            SessionEvent::ReasoningDelta { message_id, text } => {
                let p = self.messages.entry(message_id.clone()).or_default();
                return p
                    .thought
                    .delta(text)
                    .map(|t| translate::agent_thought(message_id, t));
            }
            SessionEvent::ToolCallStarted { tool_call_id, .. } => {
                self.calls.insert(tool_call_id.clone())
            }
            SessionEvent::ToolCallFinished { tool_call_id, .. } => {
                self.results.insert(tool_call_id.clone())
            }
            _ => true,
        };
        fresh.then(|| translate::event(cwd, ev)).flatten()
    }

    /// Brings the editor up to the session as `messages` (read after the cursor) and
    /// `streaming` (the message streaming as of the cursor) show it: the updates for what it
    /// has not been shown, in order. Messages `hidden` picks are counted as shown without
    /// being sent (the editor's own prompts, the runs it was answered for). Afterwards the
    /// live stream is counted from the cursor.
    pub fn catch_up(
        &mut self,
        cwd: &Path,
        messages: &[MessageInfo],
        streaming: Option<&StreamingMessage>,
        hidden: impl Fn(&str, Option<&str>) -> bool,
    ) -> Vec<SessionUpdate> {
        let mut out = Vec::new();
        let mut streamed = false;
        for m in messages {
            let hide = hidden(&m.role, m.run_id.as_deref());
            match streaming {
                // The stored copy of the message being streamed may lag: the snapshot wins.
                // Tool calls the stored copy has beyond it started after the cursor; shown
                // here, before their results (which the history may hold), their live
                // `toolCallStarted` is not sent again.
                Some(s) if s.message_id == m.message_id => {
                    streamed = true;
                    let hide = hidden("assistant", s.run_id.as_deref());
                    self.assistant(cwd, &s.message_id, &s.parts, hide, &mut out);
                    let calls: Vec<Part> = m
                        .parts
                        .iter()
                        .filter(|p| matches!(p, Part::ToolCall { .. }))
                        .cloned()
                        .collect();
                    self.assistant(cwd, &s.message_id, &calls, hide, &mut out);
                }
                _ if m.role == "user" => {
                    let fresh = self.users.insert(m.message_id.clone());
                    if fresh && !hide {
                        out.extend(translate::message(cwd, m));
                    }
                }
                _ if m.role == "assistant" || m.role == "tool" => {
                    self.assistant(cwd, &m.message_id, &m.parts, hide, &mut out);
                }
                // System messages (summaries) are the model's, not the conversation's.
                _ => {}
            }
        }
        if let Some(s) = streaming.filter(|_| !streamed) {
            let hide = hidden("assistant", s.run_id.as_deref());
            self.assistant(cwd, &s.message_id, &s.parts, hide, &mut out);
        }
        // Every event after the cursor is live from here on: only the message streaming at
        // the cursor had content before it; any other message the stream reports starts
        // after it, from nothing.
        for p in self.messages.values_mut() {
            p.text.live = 0;
            p.thought.live = 0;
        }
        if let Some(s) = streaming {
            let (text, thought) = lengths(&s.parts);
            let p = self.messages.entry(s.message_id.clone()).or_default();
            p.text.live = text;
            p.thought.live = thought;
        }
        out
    }

    /// The parts of an assistant (or tool) message the editor has not been shown.
    fn assistant(
        &mut self,
        cwd: &Path,
        message_id: &str,
        parts: &[Part],
        hide: bool,
        out: &mut Vec<SessionUpdate>,
    ) {
        let p = self.messages.entry(message_id.to_owned()).or_default();
        let (mut text_at, mut thought_at) = (0, 0);
        let mut updates = Vec::new();
        for part in parts {
            match part {
                Part::Text { text } => {
                    if let Some(t) = p.text.part(text_at, text) {
                        updates.push(translate::agent_text(message_id, t));
                    }
                    text_at += text.len();
                }
                Part::Reasoning { reasoning, .. } => {
                    if let Some(t) = p.thought.part(thought_at, reasoning) {
                        updates.push(translate::agent_thought(message_id, t));
                    }
                    thought_at += reasoning.len();
                }
                Part::ToolCall { id, name, input } => updates.extend(
                    self.calls
                        .insert(id.clone())
                        .then(|| translate::tool_call_started(cwd, id, name, input)),
                ),
                Part::ToolResult {
                    tool_call_id,
                    content,
                    status,
                    metadata,
                    ..
                } => updates.extend(self.results.insert(tool_call_id.clone()).then(|| {
                    translate::tool_call_finished(
                        cwd,
                        tool_call_id,
                        *status,
                        content,
                        metadata.as_ref(),
                    )
                })),
                _ => {}
            }
        }
        if !hide {
            out.extend(updates);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn texts(updates: &[SessionUpdate]) -> String {
        updates
            .iter()
            .map(|u| serde_json::to_value(u).unwrap()["content"]["text"].clone())
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect()
    }

    fn assistant(id: &str, text: &str) -> MessageInfo {
        MessageInfo {
            message_id: id.to_owned(),
            session_id: "s".to_owned(),
            seq: 1,
            run_id: None,
            role: "assistant".to_owned(),
            parts: vec![Part::Text {
                text: text.to_owned(),
            }],
            model: None,
            provider: None,
            finish_reason: None,
            error: None,
            created_at: 0,
            updated_at: 0,
            finished_at: None,
            reverted: false,
        }
    }

    fn delta(id: &str, text: &str) -> SessionEvent {
        SessionEvent::TextDelta {
            message_id: id.to_owned(),
            text: text.to_owned(),
        }
    }

    #[test]
    fn a_message_read_ahead_of_the_stream_is_not_sent_again() {
        let cwd = Path::new("/p");
        let mut s = Shown::default();
        // Started after the cursor; the history read already holds "Hello wor".
        let sent = s.catch_up(cwd, &[assistant("m", "Hello wor")], None, |_, _| false);
        assert_eq!(texts(&sent), "Hello wor");
        let live: Vec<SessionUpdate> = ["Hel", "lo w", "orld", "!"]
            .iter()
            .filter_map(|t| s.event(cwd, &delta("m", t)))
            .collect();
        assert_eq!(texts(&live), "ld!");
    }

    #[test]
    fn a_catch_up_sends_the_rest_of_what_was_shown_in_part() {
        let cwd = Path::new("/p");
        let mut s = Shown::default();
        let live: Vec<SessionUpdate> = ["Hé", "llo"]
            .iter()
            .filter_map(|t| s.event(cwd, &delta("m", t)))
            .collect();
        assert_eq!(texts(&live), "Héllo");
        // A resync: the message is now stored whole, and another is streaming.
        let streaming = StreamingMessage {
            message_id: "n".to_owned(),
            run_id: None,
            parts: vec![Part::Text {
                text: "Next".to_owned(),
            }],
        };
        let sent = s.catch_up(
            cwd,
            &[assistant("m", "Héllo there")],
            Some(&streaming),
            |_, _| false,
        );
        assert_eq!(texts(&sent), " thereNext");
        // The stream goes on after the snapshot.
        let live: Vec<SessionUpdate> = s.event(cwd, &delta("n", " step")).into_iter().collect();
        assert_eq!(texts(&live), " step");
    }
}
