//! Model-written summaries of a session's older messages (the context budget's second step).
//! The messages are rendered as a plain transcript and the model is asked, without tools, for a
//! summary that keeps what the rest of the session needs: the user's instructions, the decisions
//! taken, the files touched and the open tasks. A transcript larger than one request can hold is
//! summarised in pieces, and the pieces' summaries are then merged (in rounds, when even they
//! do not fit one request). The number of model calls is bounded; past it, or on any model
//! error, summarising fails and the budget falls back to leaving old turns out.

use tokio_util::sync::CancellationToken;

use crate::model::tokens::Counter;
use crate::model::{CallError, ChatMessage, Model, TurnRequest, Usage, complete};

/// Model calls one summary may take (pieces and merges together).
const MAX_CALLS: usize = 16;
/// Characters of a tool call's input, and of a tool output's head and tail, in the transcript:
/// what a summary needs of them is what was done and how it ended, not every line.
const CALL_INPUT_CHARS: usize = 400;
const OUTPUT_EDGE_CHARS: usize = 1_000;

const SYSTEM: &str = "You write the working memory of a coding assistant. You are given part \
of a conversation between a user and the assistant, which worked in the user's project with \
tools. Write a summary the assistant can continue the work from without the conversation. Keep, \
under these headings: 'Instructions' - every instruction, preference and constraint the user \
gave, in their words where they matter; 'Decisions' - what was decided and why; 'Files' - each \
file read, created or changed, with what changed; 'State' - what was done, what worked, errors \
still open; 'Next' - the open tasks and what the user asked for last. Be specific (names, paths, \
commands, numbers). Leave out pleasantries and anything superseded. Write only the summary.";

/// Why a summary could not be written: a model call's error, or one of our own.
pub(super) type SummaryError = CallError;

/// The longest summary, in tokens, for a model with this window: an eighth of it, within
/// bounds that keep a summary useful and cheap.
pub(super) fn summary_tokens(window: u64) -> u64 {
    (window / 8).clamp(256, 4_096)
}

/// Writes summaries with one model.
pub(super) struct Summarizer<'a> {
    pub(super) model: &'a dyn Model,
    pub(super) counter: &'a Counter,
    /// The model's context window.
    pub(super) window: u64,
    /// The session's correction of our counts (the provider's count over ours).
    pub(super) factor: f64,
    pub(super) cancel: &'a CancellationToken,
}

impl Summarizer<'_> {
    /// A summary of `shown` (the messages as the model is shown them, each marked when it is
    /// itself an earlier summary), with the usage of every call it took.
    pub(super) async fn summarize(
        &self,
        shown: &[(ChatMessage, bool)],
    ) -> (Result<String, SummaryError>, Usage) {
        let mut usage = Usage::default();
        let mut calls = 0;
        let result = self.rounds(shown, &mut usage, &mut calls).await;
        (result, usage)
    }

    async fn rounds(
        &self,
        shown: &[(ChatMessage, bool)],
        usage: &mut Usage,
        calls: &mut usize,
    ) -> Result<String, SummaryError> {
        let room = self.room();
        let rendered: Vec<String> = shown.iter().map(|(m, s)| render(m, *s)).collect();
        let mut pieces = split(&rendered, self.counter, room);
        if pieces.len() == 1 {
            let whole = pieces.remove(0);
            return self.call(&whole, Ask::Whole, usage, calls).await;
        }
        let mut partials = Vec::with_capacity(pieces.len());
        let n = pieces.len();
        for (i, piece) in pieces.iter().enumerate() {
            partials.push(self.call(piece, Ask::Part(i + 1, n), usage, calls).await?);
        }
        // Merge the partial summaries, in rounds while they do not fit one request.
        loop {
            let texts: Vec<String> = partials
                .iter()
                .enumerate()
                .map(|(i, p)| format!("## Part {}\n{p}", i + 1))
                .collect();
            let groups = split(&texts, self.counter, room);
            if groups.len() == 1 {
                return self.call(&groups[0], Ask::Merge, usage, calls).await;
            }
            if groups.len() >= partials.len() {
                return Err(SummaryError::Failed(
                    "the partial summaries do not get shorter when merged".into(),
                ));
            }
            let mut merged = Vec::with_capacity(groups.len());
            for g in &groups {
                merged.push(self.call(g, Ask::Merge, usage, calls).await?);
            }
            partials = merged;
        }
    }

    /// Tokens of transcript one request may carry: the window less the summary's room, the
    /// instructions and a tenth for counting errors, in our count.
    fn room(&self) -> u64 {
        let fixed = self.counter.text(SYSTEM) + 200;
        let usable = self.window - self.window / 10;
        let room = usable.saturating_sub(summary_tokens(self.window) + fixed);
        ((room as f64) / self.factor.max(1.0)) as u64
    }

    async fn call(
        &self,
        transcript: &str,
        ask: Ask,
        usage: &mut Usage,
        calls: &mut usize,
    ) -> Result<String, SummaryError> {
        if *calls >= MAX_CALLS {
            return Err(SummaryError::Failed(format!(
                "the messages are too long to summarise in {MAX_CALLS} model calls"
            )));
        }
        *calls += 1;
        let instruction = match ask {
            Ask::Whole => "Summarise this conversation.".to_owned(),
            Ask::Part(i, n) => format!(
                "This is part {i} of {n} of a conversation. Summarise this part; the parts' \
                 summaries will be merged."
            ),
            Ask::Merge => "These are summaries of consecutive parts of one conversation, \
                           oldest first. Merge them into one summary under the same headings; \
                           where they disagree, the later part wins."
                .to_owned(),
        };
        let request = TurnRequest {
            system: SYSTEM.to_owned(),
            messages: vec![ChatMessage::user(format!(
                "{instruction}\n\n<conversation>\n{transcript}\n</conversation>"
            ))],
            tools: Vec::new(),
            max_output_tokens: u32::try_from(summary_tokens(self.window)).ok(),
        };
        let (text, u) = complete(self.model, request, self.cancel).await?;
        usage.add(&u);
        Ok(text)
    }
}

#[derive(Debug, Clone, Copy)]
enum Ask {
    Whole,
    Part(usize, usize),
    Merge,
}

/// One message of the transcript the summarizer reads.
pub(super) fn render(msg: &ChatMessage, summary: bool) -> String {
    match msg {
        ChatMessage::User { content, .. } if summary => {
            format!("[Summary of the conversation before this point]\n{content}")
        }
        ChatMessage::User { content, images } => {
            let mut out = format!("User: {content}");
            for i in images {
                out.push_str(&format!("\n[the user showed an image ({})]", i.mime_type));
            }
            out
        }
        ChatMessage::Assistant {
            text, tool_calls, ..
        } => {
            let mut out = String::new();
            if !text.is_empty() {
                out.push_str(&format!("Assistant: {text}"));
            }
            for c in tool_calls {
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(&format!(
                    "Assistant called {}: {}",
                    c.name,
                    clip(&c.input, CALL_INPUT_CHARS)
                ));
            }
            out
        }
        ChatMessage::ToolResult {
            name,
            content,
            is_error,
            ..
        } => {
            let how = if *is_error { "failed" } else { "returned" };
            format!("Tool {name} {how}:\n{}", edges(content, OUTPUT_EDGE_CHARS))
        }
    }
}

/// The first `max` characters, marked when cut.
fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

/// The head and tail of a long text, with what was left out counted between them.
fn edges(s: &str, each: usize) -> String {
    let chars = s.chars().count();
    if chars <= 2 * each {
        return s.to_owned();
    }
    let head: String = s.chars().take(each).collect();
    let tail: String = s.chars().skip(chars - each).collect();
    format!(
        "{head}\n[… {} characters left out …]\n{tail}",
        chars - 2 * each
    )
}

/// Joins rendered messages into pieces of at most `room` tokens each, in order; a message
/// larger than `room` alone is cut to fit.
pub(super) fn split(rendered: &[String], counter: &Counter, room: u64) -> Vec<String> {
    let room = room.max(64);
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut tokens = 0u64;
    for r in rendered {
        let mut text = r.clone();
        let mut t = counter.text(&text) + 2;
        if t > room {
            // Keep the share of the characters the room allows (a little less, to be sure).
            let keep = (text.chars().count() as u64 * room / t) * 9 / 10;
            text = edges(&text, (keep / 2) as usize);
            t = counter.text(&text) + 2;
        }
        if tokens + t > room && !current.is_empty() {
            pieces.push(std::mem::take(&mut current));
            tokens = 0;
        }
        if !current.is_empty() {
            current.push_str("\n\n");
        }
        current.push_str(&text);
        tokens += t;
    }
    if !current.is_empty() || pieces.is_empty() {
        pieces.push(current);
    }
    pieces
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::model::ToolCall;

    #[test]
    fn a_transcript_names_who_said_what_and_keeps_long_outputs_edges() {
        let call = ChatMessage::Assistant {
            text: "Let me look.".into(),
            reasoning: None,
            tool_calls: vec![ToolCall {
                id: "c1".into(),
                name: "view".into(),
                input: r#"{"path":"src/main.rs"}"#.into(),
            }],
        };
        assert_eq!(
            render(&call, false),
            "Assistant: Let me look.\nAssistant called view: {\"path\":\"src/main.rs\"}"
        );
        let long = format!("{}MIDDLE{}", "a".repeat(3_000), "z".repeat(3_000));
        let result = ChatMessage::ToolResult {
            call_id: "c1".into(),
            name: "view".into(),
            content: long,
            is_error: false,
            images: Vec::new(),
        };
        let r = render(&result, false);
        assert!(r.starts_with("Tool view returned:\naaa"));
        assert!(r.ends_with("zzz"));
        assert!(!r.contains("MIDDLE"));
        assert!(r.contains("characters left out"));
        assert!(render(&ChatMessage::user("x"), true).starts_with("[Summary of"));
    }

    #[test]
    fn pieces_keep_the_order_and_each_fits_the_room() {
        let counter = Counter::Estimate;
        let rendered: Vec<String> = (0..50)
            .map(|i| format!("User: message {i} {}", "word ".repeat(40)))
            .collect();
        let pieces = split(&rendered, &counter, 300);
        assert!(pieces.len() > 1);
        for p in &pieces {
            assert!(counter.text(p) <= 300, "{}", counter.text(p));
        }
        let joined = pieces.join("\n\n");
        let mut at = 0;
        for i in 0..50 {
            let found = joined[at..].find(&format!("message {i} ")).unwrap();
            at += found;
        }
        // One message larger than the room is cut to fit.
        let huge = vec![format!(
            "Tool view returned:\n{}",
            "line of output\n".repeat(2_000)
        )];
        let pieces = split(&huge, &counter, 300);
        assert_eq!(pieces.len(), 1);
        assert!(counter.text(&pieces[0]) <= 300);
    }
}
