//! The `grep` tool: lines matching a regular expression, in one file or under a directory
//! (gitignore-aware, binary files skipped), as `path:line: text`, capped.

use std::io::{BufRead, BufReader};
use std::path::Path;

use globset::{GlobBuilder, GlobMatcher};
use regex::bytes::{Regex, RegexBuilder};
use serde::Deserialize;

use super::output::cut_line;
use super::paths::Workspace;
use super::view::{BINARY_SNIFF_BYTES, not_regular};
use super::{Action, Prepared, ToolContext, ToolOutput, de_opt_bool, opt_path, walker};

/// Matching lines are cut to this many characters.
const MAX_LINE_CHARS: usize = 500;

#[derive(Debug, Deserialize)]
pub(crate) struct Args {
    pattern: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    include: Option<String>,
    #[serde(default, deserialize_with = "de_opt_bool")]
    ignore_case: Option<bool>,
}

#[derive(Debug)]
pub(crate) struct Call {
    regex: Regex,
    include: Option<Include>,
    path: String,
}

/// The `include` filter: a glob without '/' is matched against file names, one with '/' against
/// the path relative to the search directory or to the workspace root.
#[derive(Debug)]
struct Include {
    matcher: GlobMatcher,
    on_path: bool,
}

pub(crate) fn prepare(ctx: &ToolContext, args: Args) -> Result<Prepared, ToolOutput> {
    let ws = Workspace::open(ctx)?;
    let path = opt_path(args.path).unwrap_or_else(|| ".".to_owned());
    let resolved = ws.resolve(&path)?;
    if args.pattern.is_empty() {
        return Err(ToolOutput::error("The search pattern is empty."));
    }
    let regex = RegexBuilder::new(&args.pattern)
        .case_insensitive(args.ignore_case.unwrap_or(false))
        .build()
        .map_err(|e| {
            ToolOutput::error(format!(
                "Invalid regular expression {:?}: {e}\n(Rust regex syntax: escape literal characters such as ( ) [ ] {{ }} . * + ? | with a backslash.)",
                args.pattern
            ))
        })?;
    let include = match opt_path(args.include) {
        None => None,
        Some(glob) => {
            let glob = glob.trim().trim_start_matches("./").to_owned();
            let on_path = glob.contains('/');
            let matcher = GlobBuilder::new(&glob)
                .literal_separator(on_path)
                .build()
                .map_err(|e| ToolOutput::error(format!("Invalid include glob {glob:?}: {e}")))?
                .compile_matcher();
            Some(Include { matcher, on_path })
        }
    };
    let mut title = format!("Search: {}", args.pattern);
    if resolved.shown != "." {
        title.push_str(&format!(" in {}", resolved.shown));
    }
    Ok(Prepared {
        tool: "grep".to_owned(),
        title,
        diff: None,
        command: None,
        action: Action::Grep(Call {
            regex,
            include,
            path,
        }),
    })
}

pub(crate) fn run(ctx: &ToolContext, call: Call) -> ToolOutput {
    let ws = match Workspace::open(ctx) {
        Ok(ws) => ws,
        Err(e) => return e,
    };
    let r = match ws.resolve(&call.path) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let is_dir = match std::fs::metadata(&r.real) {
        Ok(m) if m.is_dir() => true,
        Ok(m) if m.is_file() => false,
        Ok(_) => return not_regular(&r.shown),
        Err(e) => return ToolOutput::error(format!("Cannot search {}: {e}", r.shown)),
    };
    let mut s = Search {
        ws: &ws,
        regex: &call.regex,
        cancel: &ctx.cancel,
        max: ctx.limits.max_results,
        out: String::new(),
        matches: 0,
        truncated: false,
    };
    if is_dir {
        for entry in walker(&r.real).build() {
            if ctx.cancel.is_cancelled() {
                return ToolOutput::cancelled();
            }
            let Ok(entry) = entry else { continue };
            // Symlinks are not followed: a link inside the workspace may point outside it.
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                continue;
            }
            if let Some(inc) = &call.include {
                let hit = if inc.on_path {
                    // Relative to the search directory or to the root: models write either.
                    let p = entry.path();
                    p.strip_prefix(&r.real)
                        .is_ok_and(|rel| inc.matcher.is_match(rel))
                        || p.strip_prefix(&ws.root)
                            .is_ok_and(|rel| inc.matcher.is_match(rel))
                } else {
                    inc.matcher.is_match(entry.file_name())
                };
                if !hit {
                    continue;
                }
            }
            if s.file(entry.path()).is_err() {
                return ToolOutput::cancelled();
            }
            if s.truncated {
                break;
            }
        }
    } else if s.file(&r.real).is_err() {
        return ToolOutput::cancelled();
    }
    let Search {
        mut out,
        matches,
        truncated,
        max,
        ..
    } = s;
    if matches == 0 {
        return ToolOutput::ok(format!(
            "No matches for {:?} in {}.",
            call.regex.as_str(),
            r.shown
        ));
    }
    if truncated {
        out.push_str(&format!(
            "(Results cut at {max} matches; use a more specific pattern, path or include.)\n"
        ));
    }
    ToolOutput::ok(out)
}

struct Search<'a> {
    ws: &'a Workspace,
    regex: &'a Regex,
    cancel: &'a tokio_util::sync::CancellationToken,
    max: usize,
    out: String,
    matches: usize,
    truncated: bool,
}

/// The search was cancelled.
struct Cancelled;

impl Search<'_> {
    /// Appends the file's matching lines. Unreadable and binary files are skipped silently: one
    /// bad file should not fail a search of a tree.
    fn file(&mut self, path: &Path) -> Result<(), Cancelled> {
        let Ok(f) = self.ws.open_read(path) else {
            return Ok(());
        };
        let mut reader = BufReader::with_capacity(64 * 1024, f);
        match reader.fill_buf() {
            Ok(head) if head[..head.len().min(BINARY_SNIFF_BYTES)].contains(&0) => return Ok(()),
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
        let shown = self.ws.rel(path);
        let mut buf = Vec::new();
        let mut lineno: u64 = 0;
        loop {
            if lineno.is_multiple_of(4096) && self.cancel.is_cancelled() {
                return Err(Cancelled);
            }
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => {}
            }
            lineno += 1;
            let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if !self.regex.is_match(line) {
                continue;
            }
            if self.matches == self.max {
                self.truncated = true;
                return Ok(());
            }
            self.matches += 1;
            let text = String::from_utf8_lossy(line);
            self.out.push_str(&format!(
                "{shown}:{lineno}: {}\n",
                cut_line(&text, MAX_LINE_CHARS)
            ));
        }
    }
}
