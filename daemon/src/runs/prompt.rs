//! The system prompt of a turn: who the agent is, where it works (workspace root, OS, date),
//! how to use its tools, and the project's own instructions from `AGENTS.md` or `CRUSH.md` at
//! the workspace root, read fresh for every turn so edits to them apply at once.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Instruction files looked for at the workspace root, in this order; every one present is used.
pub const INSTRUCTION_FILES: &[&str] = &["AGENTS.md", "CRUSH.md"];

/// Largest part of an instruction file that is used.
const MAX_INSTRUCTIONS: usize = 64 * 1024;

pub async fn system_prompt(root: &Path) -> String {
    let mut out = format!(
        "You are Crush, an AI coding agent. You work in the user's project through tools, on \
         their behalf and with their permission.\n\
         \n\
         # Environment\n\
         - Workspace root: {root}\n\
         - Operating system: {os} ({arch})\n\
         - Today's date: {date}\n\
         \n\
         # Tools\n\
         - `view` reads a file (use offset/limit for large files), `ls` lists a directory, `glob` \
         finds files by pattern, `grep` searches file contents by regular expression. They \
         respect .gitignore.\n\
         - `edit` replaces one exact, unique string in a file; `write` creates or overwrites a \
         whole file; `bash` runs a shell command in the workspace root with a timeout.\n\
         - Paths are relative to the workspace root; nothing outside it can be read or written.\n\
         - `write`, `edit` and `bash` may need the user's permission. If the user denies an \
         action, do not retry it: ask, or take another approach.\n\
         \n\
         # How to work\n\
         - Read the relevant code before changing it; prefer `edit` over rewriting files.\n\
         - Keep changes focused on the request; follow the project's conventions.\n\
         - After changing code, run the project's tests or build when that is cheap.\n\
         - Be concise. When done, say briefly what you changed and anything left to do.\n",
        root = root.display(),
        os = std::env::consts::OS,
        arch = std::env::consts::ARCH,
        date = today(),
    );
    for name in INSTRUCTION_FILES {
        let Ok(bytes) = tokio::fs::read(root.join(name)).await else {
            continue;
        };
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        if text.len() > MAX_INSTRUCTIONS {
            let mut cut = MAX_INSTRUCTIONS;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str("\n[… truncated]");
        }
        if text.trim().is_empty() {
            continue;
        }
        out.push_str(&format!(
            "\n# Project instructions ({name})\n\n{}\n",
            text.trim_end()
        ));
    }
    out
}

/// Today's date (UTC) as `YYYY-MM-DD`.
fn today() -> String {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The calendar date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_413), (2025, 11, 21));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[tokio::test]
    async fn prompt_names_the_root_and_appends_instructions() {
        let dir = tempfile::tempdir().unwrap();
        let p = system_prompt(dir.path()).await;
        assert!(p.contains(&dir.path().display().to_string()));
        assert!(!p.contains("Project instructions"));
        std::fs::write(dir.path().join("AGENTS.md"), "Always use tabs.\n").unwrap();
        std::fs::write(dir.path().join("CRUSH.md"), "Run make check.\n").unwrap();
        let p = system_prompt(dir.path()).await;
        assert!(p.contains("# Project instructions (AGENTS.md)\n\nAlways use tabs."));
        assert!(p.contains("# Project instructions (CRUSH.md)\n\nRun make check."));
    }
}
