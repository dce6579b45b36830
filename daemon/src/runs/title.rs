//! The title a session takes when nobody chose one: at once the first prompt's first line that
//! has text, trimmed and cut to a length that fits a list of sessions; then, when `[agent]
//! title_model` names a model, a short title that model writes from the first prompt and its
//! answer, in the background after the first turn (never delaying a run), unless the session
//! was renamed meanwhile.

use std::sync::Arc;

use tracing::{debug, warn};

use super::{Runtime, SessionRt};
use crate::model::{ChatMessage, TurnRequest, complete};

/// What the title model is told.
const TITLE_SYSTEM: &str = "You name conversations between a user and a coding assistant. \
Answer with a title of at most six words that says what the conversation is about: no quotes, \
no final punctuation, nothing else.";
/// Characters of the prompt and of the answer the title model reads.
const PROMPT_CHARS: usize = 2_000;
const ANSWER_CHARS: usize = 1_000;

/// Longest title taken from a prompt, in characters (an ellipsis marks a cut).
const MAX_TITLE_CHARS: usize = 60;

/// The title for a session whose first prompt is `prompt`; `None` when it has no text (only
/// attachments), so the session keeps its placeholder.
pub(super) fn from_prompt(prompt: &str) -> Option<String> {
    let line = prompt.lines().map(str::trim).find(|l| !l.is_empty())?;
    if line.chars().count() <= MAX_TITLE_CHARS {
        return Some(line.to_owned());
    }
    let cut: String = line.chars().take(MAX_TITLE_CHARS).collect();
    Some(format!("{}…", cut.trim_end()))
}

/// The model's answer as a title: its first line with text, without quotes, a `Title:` label
/// or final punctuation, cut like a prompt's; `None` when nothing is left.
fn clean(answer: &str) -> Option<String> {
    let line = answer.lines().map(str::trim).find(|l| !l.is_empty())?;
    let line = line
        .strip_prefix("Title:")
        .or_else(|| line.strip_prefix("title:"))
        .unwrap_or(line)
        .trim()
        .trim_start_matches('#')
        .trim()
        .trim_matches(|c| matches!(c, '"' | '\'' | '*' | '`' | '“' | '”'))
        .trim_end_matches(['.', '!', ':'])
        .trim();
    from_prompt(line)
}

fn clip(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

impl Runtime {
    /// After a session's first turn titled it `from` (its prompt's first line): has the title
    /// model write a better one in the background and puts it in place of `from`, unless the
    /// session was renamed meanwhile. Its cost counts in the session's totals.
    pub(super) fn title_in_background(
        self: &Arc<Self>,
        s: &Arc<SessionRt>,
        from: String,
        prompt: &str,
        answer: &str,
    ) {
        let Some(name) = self.agent.title_model.clone() else {
            return;
        };
        let request = TurnRequest {
            system: TITLE_SYSTEM.to_owned(),
            messages: vec![ChatMessage::user(format!(
                "<prompt>\n{}\n</prompt>\n<answer>\n{}\n</answer>",
                clip(prompt, PROMPT_CHARS),
                clip(answer, ANSWER_CHARS)
            ))],
            tools: Vec::new(),
            max_output_tokens: Some(30),
        };
        let ws = s.ws();
        let token = ws.token.child_token();
        let (this, s) = (self.clone(), s.clone());
        ws.tracker.spawn(async move {
            let model = match this.models.resolve(Some(&name)) {
                Ok(m) => m,
                Err(e) => {
                    warn!(model = %name, error = %e.message, "cannot use [agent] title_model");
                    return;
                }
            };
            let (text, usage) = match complete(model.as_ref(), request, &token).await {
                Ok(r) => r,
                Err(e) => {
                    debug!(session = %s.id, error = %e, "no model-written title");
                    return;
                }
            };
            let Some(title) = clean(&text) else { return };
            let spent = super::usage::turn_usage(&usage, model.info().price.as_ref());
            match this.store.retitle(&s.id, &from, &title, &spent).await {
                Ok(Some(row)) => this.session_updated(&s.id, &row.title, row.model.as_deref()),
                Ok(None) => {
                    debug!(session = %s.id, "renamed meanwhile: the model's title is not used")
                }
                Err(e) => warn!(session = %s.id, error = %e, "cannot save the model's title"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_first_line_with_text_trimmed_and_cut() {
        assert_eq!(
            from_prompt("  fix the bug \nin x.rs").unwrap(),
            "fix the bug"
        );
        assert_eq!(from_prompt("\n\n  second\n").unwrap(), "second");
        assert_eq!(from_prompt(" \n\t"), None);
        let long = "é".repeat(100);
        let t = from_prompt(&long).unwrap();
        assert_eq!(t.chars().count(), MAX_TITLE_CHARS + 1);
        assert!(t.ends_with('…'));
    }

    #[test]
    fn a_model_title_loses_its_quotes_label_and_final_punctuation() {
        assert_eq!(
            clean("\"Fix the login bug.\"").unwrap(),
            "Fix the login bug"
        );
        assert_eq!(
            clean("Title: Parser refactor\nmore").unwrap(),
            "Parser refactor"
        );
        assert_eq!(
            clean("\n## **Rust daemon sockets**\n").unwrap(),
            "Rust daemon sockets"
        );
        assert_eq!(clean("  \n \"\" "), None);
    }
}
