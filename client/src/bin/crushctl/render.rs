//! Turning messages and events into what a person reads: the text tracker that prints every
//! assistant message's text exactly once (from deltas, snapshots after a resync, or a run's
//! outcome, whichever comes), and the readable form of a conversation (`attach`,
//! `sessions show`).

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crush_protocol::{
    FinishReason, MessageInfo, Part, PermissionResolution, RunState, SessionEvent, ToolStatus,
};

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

pub use crush_protocol::vocab::text_of;

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

/// Prints a conversation readably on stdout; used for history and live events alike. What was
/// printed is remembered (user messages, tool calls, tool results, how an answer ended), so the
/// history read again after a resync prints only what was missed, never an old tool call as if
/// it were new.
pub struct Conversation {
    pub ui: Ui,
    pub text: TextTracker,
    /// Ids of user messages, tool calls (`call:` + id), tool results (`result:` + id) and
    /// answers' endings (`end:` + message id) already printed.
    shown: HashSet<String>,
}

impl Conversation {
    pub fn new(ui: Ui) -> Self {
        Self {
            ui,
            text: TextTracker::default(),
            shown: HashSet::new(),
        }
    }

    /// Marks `key` printed; whether it was new.
    fn first(&mut self, key: String) -> bool {
        self.shown.insert(key)
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

    /// A summary of older messages was written (the model is shown it instead of them).
    fn summary_line(&self, messages: u32) {
        self.line(&self.ui.paint_out(
            DIM,
            &format!("  ≡ {messages} older messages summarised to fit the context window"),
        ));
    }

    /// A stored message (history). `streaming`: the message's live text, which replaces the
    /// stored copy (that may lag behind).
    pub fn message(&mut self, m: &MessageInfo, streaming: Option<&[Part]>) {
        let parts = streaming.unwrap_or(&m.parts);
        match m.role.as_str() {
            "user" if m.reverted && self.first(m.message_id.clone()) => {
                // Undone (`crushctl undo`): shown dimmed, the model no longer sees it.
                self.ui.end_line();
                self.ui.out_line(
                    &self
                        .ui
                        .paint_out(DIM, &format!("\n❯ {} (undone)", text_of(parts))),
                );
            }
            "user" if self.first(m.message_id.clone()) => self.user(&text_of(parts)),
            "user" => {}
            "assistant" => {
                let text = text_of(parts);
                if !self.text.knows(&m.message_id) {
                    self.ui.end_line();
                }
                let new = self.text.snapshot(&m.message_id, &text);
                self.ui.out(&new);
                for p in parts {
                    if let Part::ToolCall { id, name, input } = p
                        && self.first(format!("call:{id}"))
                    {
                        self.line(
                            &self
                                .ui
                                .paint_out(DIM, &format!("  ⚙ {}", tool_summary(name, input))),
                        );
                    }
                }
                // An answer that did not end normally says so, or it reads as if complete.
                let ended = match m.finish_reason {
                    Some(FinishReason::Canceled) => Some("cancelled"),
                    Some(FinishReason::Interrupted) => Some("interrupted (the daemon stopped)"),
                    _ => None,
                };
                if (ended.is_some() || m.error.is_some())
                    && !self.first(format!("end:{}", m.message_id))
                {
                    return;
                }
                match (ended, &m.error) {
                    (Some(how), Some(e)) if !e.is_empty() => {
                        self.line(&self.ui.paint_out(YELLOW, &format!("  ⊘ {how}: {e}")))
                    }
                    (Some(how), _) => self.line(&self.ui.paint_out(YELLOW, &format!("  ⊘ {how}"))),
                    (None, Some(e)) => self.line(&self.ui.paint_out(RED, &format!("  ✗ {e}"))),
                    (None, None) => {}
                }
            }
            "system" => {
                for p in parts {
                    if let Part::Summary { messages, .. } = p
                        && self.first(m.message_id.clone())
                    {
                        self.summary_line(*messages);
                    }
                }
            }
            "tool" => {
                for p in parts {
                    if let Part::ToolResult {
                        tool_call_id,
                        name,
                        content,
                        status,
                        ..
                    } = p
                        && self.first(format!("result:{tool_call_id}"))
                    {
                        self.line(&tool_result_line(&self.ui, name, *status, content));
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
            SessionEvent::UserMessage { text, message_id } => {
                if self.first(message_id.clone()) {
                    self.user(text)
                }
            }
            SessionEvent::AssistantStarted { message_id, .. } => {
                self.ui.end_line();
                self.text.started(message_id);
            }
            SessionEvent::TextDelta { message_id, text } => {
                let new = self.text.delta(message_id, text);
                self.ui.out(&new);
            }
            SessionEvent::ToolCallStarted {
                tool,
                input,
                tool_call_id,
                ..
            } => {
                if self.first(format!("call:{tool_call_id}")) {
                    self.line(
                        &self
                            .ui
                            .paint_out(DIM, &format!("  ⚙ {}", tool_summary(tool, input))),
                    )
                }
            }
            SessionEvent::ToolCallFinished {
                tool,
                status,
                output,
                tool_call_id,
                ..
            } => {
                if self.first(format!("result:{tool_call_id}")) {
                    self.line(&tool_result_line(&self.ui, tool, *status, output))
                }
            }
            SessionEvent::PermissionRequested { title, .. } => self.line(
                &self
                    .ui
                    .paint_out(YELLOW, &format!("  ? permission asked: {title}")),
            ),
            SessionEvent::PermissionResolved { decision, by, .. } => self.line(
                &self
                    .ui
                    .paint_out(DIM, &format!("  permission {}", resolution(*decision, by))),
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
                delay_ms,
                error,
            } => self.line(&self.ui.paint_out(
                YELLOW,
                &format!(
                    "  {}",
                    retry_line(*attempt, *max_attempts, *delay_ms, error)
                ),
            )),
            SessionEvent::RunFinished { state, error, .. } => {
                let what = match error {
                    Some(e) => format!("[run {short} {state}: {e}]"),
                    None => format!("[run {short} {state}]"),
                };
                let sgr = if *state == RunState::Completed {
                    DIM
                } else {
                    RED
                };
                self.line(&self.ui.paint_out(sgr, &what));
            }
            SessionEvent::RunStarted
            | SessionEvent::CancelRequested { .. }
            | SessionEvent::ReasoningDelta { .. }
            | SessionEvent::MessageFinished { .. }
            | SessionEvent::SessionUpdated { .. } => {}
            SessionEvent::Compacted {
                summary_message_id: Some(id),
                ..
            } => {
                // The count is in the stored part; the event says the summary exists.
                if self.first(id.clone()) {
                    self.line(&self.ui.paint_out(
                        DIM,
                        "  ≡ older messages summarised to fit the context window",
                    ));
                }
            }
            SessionEvent::Compacted { .. } => {}
            SessionEvent::Reverted {
                files, messages, ..
            } => self.line(&self.ui.paint_out(
                YELLOW,
                &format!(
                    "[undone: {messages} messages hidden from the model, {} files restored]",
                    files.len()
                ),
            )),
            SessionEvent::Unreverted {
                files, messages, ..
            } => self.line(&self.ui.paint_out(
                DIM,
                &format!(
                    "[redone: {messages} messages back, {} files restored]",
                    files.len()
                ),
            )),
            SessionEvent::Forked {
                fork_session_id, ..
            } => self.line(&self.ui.paint_out(
                DIM,
                &format!("[forked into session {}]", short_id(fork_session_id)),
            )),
        }
    }
}

/// A run's tokens and cost in one line: `250 tokens in (140 cached), 30 out (5 reasoning),
/// $0.0005`. An unknown price says so rather than print a cost of nothing.
pub fn usage_line(u: &crush_protocol::Usage) -> String {
    let mut line = format!("{} tokens in", u.input_tokens);
    if u.cached_tokens > 0 {
        line.push_str(&format!(" ({} cached)", u.cached_tokens));
    }
    line.push_str(&format!(", {} out", u.output_tokens));
    if u.reasoning_tokens > 0 {
        line.push_str(&format!(" ({} reasoning)", u.reasoning_tokens));
    }
    match u.cost {
        Some(c) => line.push_str(&format!(", ${}", dollars(c))),
        None => line.push_str(", cost unknown (no price for this model)"),
    }
    line
}

/// Dollars with enough digits to show a small run's cost: `0.0005`, `1.24`.
fn dollars(c: f64) -> String {
    if c == 0.0 || c >= 0.01 {
        format!("{c:.2}")
    } else {
        format!("{c:.6}").trim_end_matches('0').to_owned()
    }
}

/// A retry's wait as a person reads it: `2 s`, `1.5 s`, `250 ms`.
pub fn human_delay(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms} ms"),
        _ if ms.is_multiple_of(1000) => format!("{} s", ms / 1000),
        _ => format!("{:.1} s", ms as f64 / 1000.0),
    }
}

/// The line for a `retrying` event: `retrying 2/5 in 2 s: connection refused …`.
pub fn retry_line(attempt: u32, max_attempts: u32, delay_ms: u64, error: &str) -> String {
    format!(
        "retrying {attempt}/{max_attempts} in {}: {}",
        human_delay(delay_ms),
        first_line(error, 200)
    )
}

/// How a permission request was resolved, in words: "allowed for this session by nvim (pid 42)",
/// "withdrawn: the run was cancelled". `by` is the answering client's name, or `cancel` when a
/// cancel withdrew the request.
pub fn resolution(decision: PermissionResolution, by: &str) -> String {
    let what = match decision {
        PermissionResolution::Allow => "allowed once",
        PermissionResolution::AllowSession => "allowed for this session",
        PermissionResolution::AllowAlways => "always allowed (a rule was saved)",
        PermissionResolution::Deny => "denied",
        PermissionResolution::Cancelled => return "withdrawn: the run was cancelled".to_owned(),
    };
    if by.is_empty() || by == "cancel" {
        what.to_owned()
    } else {
        format!("{what} by {by}")
    }
}

fn tool_result_line(ui: &Ui, tool: &str, status: ToolStatus, output: &str) -> String {
    match status {
        ToolStatus::Completed => ui.paint_out(GREEN, &format!("  ✓ {tool}")),
        other => ui.paint_out(
            RED,
            &format!("  ✗ {tool} {other}: {}", first_line(output, 100)),
        ),
    }
}

pub use crate::ids::short as short_id;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_lines_show_what_was_reported_and_an_unknown_cost() {
        let mut u = crush_protocol::Usage {
            input_tokens: 250,
            output_tokens: 30,
            cached_tokens: 140,
            reasoning_tokens: 5,
            cost: Some(0.00053),
        };
        assert_eq!(
            usage_line(&u),
            "250 tokens in (140 cached), 30 out (5 reasoning), $0.00053"
        );
        u.cost = Some(1.5);
        u.cached_tokens = 0;
        u.reasoning_tokens = 0;
        assert_eq!(usage_line(&u), "250 tokens in, 30 out, $1.50");
        u.cost = None;
        assert!(usage_line(&u).ends_with("cost unknown (no price for this model)"));
    }
}
