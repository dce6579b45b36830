//! Turning messages and events into what a person reads: the text tracker that prints every
//! assistant message's text exactly once (from deltas, snapshots after a resync, or a run's
//! outcome, whichever comes), and the readable form of a conversation (`attach`,
//! `sessions show`).

use std::collections::HashMap;

use serde_json::Value;

use crush_protocol::{MessageInfo, SessionEvent};

use crate::ui::{BOLD, CYAN, DIM, GREEN, RED, Ui, YELLOW};

/// What has been printed of each assistant message.
#[derive(Default)]
pub struct TextTracker {
    /// message id → (text known so far, bytes of it printed).
    msgs: HashMap<String, (String, usize)>,
}

impl TextTracker {
    /// The message (re)starts streaming from its beginning: deltas that repeat what a snapshot
    /// already printed are not printed again.
    pub fn started(&mut self, id: &str) {
        self.msgs.entry(id.to_owned()).or_default().0.clear();
    }

    /// A delta; returns what is new to print.
    pub fn delta(&mut self, id: &str, text: &str) -> String {
        let e = self.msgs.entry(id.to_owned()).or_default();
        e.0.push_str(text);
        unprinted(e)
    }

    /// The message's whole text so far (stored copy, streaming snapshot, a run's outcome);
    /// returns what is new to print.
    pub fn snapshot(&mut self, id: &str, full: &str) -> String {
        let e = self.msgs.entry(id.to_owned()).or_default();
        if full.len() > e.0.len() && full.starts_with(e.0.as_str()) {
            e.0 = full.to_owned();
        }
        unprinted(e)
    }

    pub fn knows(&self, id: &str) -> bool {
        self.msgs.contains_key(id)
    }
}

fn unprinted(e: &mut (String, usize)) -> String {
    let (text, printed) = e;
    if text.len() <= *printed || !text.is_char_boundary(*printed) {
        return String::new();
    }
    let new = text[*printed..].to_owned();
    *printed = text.len();
    new
}

/// The text parts of a message, concatenated.
pub fn text_of(parts: &Value) -> String {
    parts
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| p["type"] == "text")
                .filter_map(|p| p["text"].as_str())
                .collect()
        })
        .unwrap_or_default()
}

/// One line describing a tool call: `bash: cargo test`, `edit src/main.rs`.
pub fn tool_summary(tool: &str, input: &Value) -> String {
    let input = match input {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        v => v.clone(),
    };
    let detail = ["command", "path", "file_path", "pattern", "url"]
        .iter()
        .find_map(|k| input.get(*k).and_then(Value::as_str))
        .map(str::to_owned)
        .unwrap_or_else(|| match &input {
            Value::String(s) => s.clone(),
            Value::Object(m) if m.is_empty() => String::new(),
            v => v.to_string(),
        });
    let detail = first_line(&detail, 100);
    if detail.is_empty() {
        tool.to_owned()
    } else {
        format!("{tool} {detail}")
    }
}

/// The first line of `s`, at most `max` characters.
pub fn first_line(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or_default();
    if line.chars().count() > max {
        format!("{}…", line.chars().take(max).collect::<String>())
    } else {
        line.to_owned()
    }
}

/// Prints a conversation readably on stdout; used for history and live events alike.
pub struct Conversation {
    pub ui: Ui,
    pub text: TextTracker,
}

impl Conversation {
    pub fn new(ui: Ui) -> Self {
        Self {
            ui,
            text: TextTracker::default(),
        }
    }

    fn line(&self, s: &str) {
        self.ui.end_line();
        self.ui.out_line(s);
    }

    fn user(&self, text: &str) {
        self.ui.end_line();
        let prompt = self.ui.paint_out(CYAN, "❯");
        self.ui
            .out_line(&format!("\n{prompt} {}", self.ui.paint_out(BOLD, text)));
    }

    /// A stored message (history). `streaming`: the message's live text, which replaces the
    /// stored copy (that may lag behind).
    pub fn message(&mut self, m: &MessageInfo, streaming: Option<&Value>) {
        let parts = streaming.unwrap_or(&m.parts);
        match m.role.as_str() {
            "user" => self.user(&text_of(parts)),
            "assistant" => {
                let text = text_of(parts);
                if !self.text.knows(&m.message_id) {
                    self.ui.end_line();
                }
                let new = self.text.snapshot(&m.message_id, &text);
                self.ui.out(&new);
                for p in parts.as_array().into_iter().flatten() {
                    if p["type"] == "toolCall" {
                        let name = p["name"].as_str().unwrap_or("tool");
                        self.line(
                            &self.ui.paint_out(
                                DIM,
                                &format!("  ⚙ {}", tool_summary(name, &p["input"])),
                            ),
                        );
                    }
                }
                if let Some(e) = &m.error {
                    self.line(&self.ui.paint_out(RED, &format!("  ✗ {e}")));
                }
            }
            "tool" => {
                for p in parts.as_array().into_iter().flatten() {
                    if p["type"] == "toolResult" {
                        let name = p["name"].as_str().unwrap_or("tool");
                        let status = p["status"].as_str().unwrap_or("completed");
                        let content = p["content"].as_str().unwrap_or_default();
                        self.line(&tool_result_line(&self.ui, name, status, content));
                    }
                }
            }
            _ => {}
        }
    }

    /// A live event of the session.
    pub fn event(&mut self, run_id: Option<&str>, e: &SessionEvent) {
        let short = run_id.map(short_id).unwrap_or_default();
        match e {
            SessionEvent::UserMessage { text, .. } => self.user(text),
            SessionEvent::AssistantStarted { message_id, .. } => {
                self.ui.end_line();
                self.text.started(message_id);
            }
            SessionEvent::TextDelta { message_id, text } => {
                let new = self.text.delta(message_id, text);
                self.ui.out(&new);
            }
            SessionEvent::ToolCallStarted { tool, input, .. } => self.line(
                &self
                    .ui
                    .paint_out(DIM, &format!("  ⚙ {}", tool_summary(tool, input))),
            ),
            SessionEvent::ToolCallFinished {
                tool,
                status,
                output,
                ..
            } => self.line(&tool_result_line(&self.ui, tool, status, output)),
            SessionEvent::PermissionRequested { title, .. } => self.line(
                &self
                    .ui
                    .paint_out(YELLOW, &format!("  ? permission asked: {title}")),
            ),
            SessionEvent::PermissionResolved { decision, by, .. } => self.line(
                &self
                    .ui
                    .paint_out(DIM, &format!("  permission: {decision} (by {by})")),
            ),
            SessionEvent::RunQueued { position, .. } => self.line(
                &self
                    .ui
                    .paint_out(DIM, &format!("[run {short} queued, position {position}]")),
            ),
            SessionEvent::RunFolded { into } => self.line(
                &self
                    .ui
                    .paint_out(DIM, &format!("[run {short} joined run {}]", short_id(into))),
            ),
            SessionEvent::Retrying {
                attempt,
                max_attempts,
                error,
                ..
            } => self.line(&self.ui.paint_out(
                YELLOW,
                &format!("  retrying ({attempt}/{max_attempts}): {error}"),
            )),
            SessionEvent::RunFinished { state, error, .. } => {
                let what = match error {
                    Some(e) => format!("[run {short} {state}: {e}]"),
                    None => format!("[run {short} {state}]"),
                };
                let sgr = if state == "completed" { DIM } else { RED };
                self.line(&self.ui.paint_out(sgr, &what));
            }
            SessionEvent::RunStarted
            | SessionEvent::CancelRequested { .. }
            | SessionEvent::ReasoningDelta { .. }
            | SessionEvent::MessageFinished { .. } => {}
        }
    }
}

fn tool_result_line(ui: &Ui, tool: &str, status: &str, output: &str) -> String {
    match status {
        "completed" => ui.paint_out(GREEN, &format!("  ✓ {tool}")),
        other => ui.paint_out(
            RED,
            &format!("  ✗ {tool} {other}: {}", first_line(output, 100)),
        ),
    }
}

/// The last 8 characters of an id: UUID v7s made close together share their first characters
/// (a timestamp), never their random end.
pub fn short_id(id: &str) -> String {
    id.chars()
        .rev()
        .take(8)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect()
}
