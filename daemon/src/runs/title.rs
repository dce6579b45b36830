//! The title a session takes from its first prompt when nobody chose one: the prompt's first
//! line that has text, trimmed and cut to a length that fits a list of sessions.

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
}
