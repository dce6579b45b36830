//! The `edit` tool: an exact string replacement in a text file. Prepare computes the new content
//! and its diff; run writes it only if the file still holds what prepare read, so an edit the
//! user approved is never applied to a file that changed meanwhile.

use std::fs;
use std::io;

use serde::Deserialize;
use serde_json::json;

use super::paths::{Resolved, Workspace};
use super::view::not_regular;
use super::write::{atomic_write_beneath, unified_diff};
use super::{Action, Prepared, ToolContext, ToolOutput, de_opt_bool};

/// Files larger than this are not edited in memory.
const EDIT_MAX_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, Deserialize)]
pub(crate) struct Args {
    path: String,
    old_string: String,
    new_string: String,
    #[serde(default, deserialize_with = "de_opt_bool")]
    replace_all: Option<bool>,
}

#[derive(Debug)]
pub(crate) struct Call {
    path: String,
    /// The resolved path relative to the workspace root, for permission rules.
    pub(crate) inside: String,
    original: String,
    updated: String,
    diff: String,
    replacements: usize,
}

pub(crate) fn prepare(ctx: &ToolContext, args: Args) -> Result<Prepared, ToolOutput> {
    let ws = Workspace::open(ctx)?;
    let r = ws.resolve(&args.path)?;
    if args.old_string.is_empty() {
        return Err(ToolOutput::error(
            "old_string is empty; it must be the exact text to replace. To create a file or replace all of it, use write.",
        ));
    }
    if args.old_string == args.new_string {
        return Err(ToolOutput::error(
            "old_string and new_string are the same; there is nothing to change.",
        ));
    }
    let original = read_text(&ws, &r)?;
    let (mut old, mut new) = (args.old_string, args.new_string);
    let mut count = original.matches(old.as_str()).count();
    // A model writes "\n" line ends; a CRLF file still matches if they are translated.
    if count == 0 && original.contains("\r\n") && old.contains('\n') && !old.contains("\r\n") {
        let crlf_old = old.replace('\n', "\r\n");
        let n = original.matches(crlf_old.as_str()).count();
        if n > 0 {
            count = n;
            old = crlf_old;
            new = new.replace("\r\n", "\n").replace('\n', "\r\n");
        }
    }
    let replace_all = args.replace_all.unwrap_or(false);
    if count == 0 {
        let mut msg = format!(
            "old_string was not found in {}. It must match the file exactly, including whitespace, indentation and line breaks; view the file and copy the text to replace.",
            r.shown
        );
        let trimmed = old.trim();
        if !trimmed.is_empty() && trimmed != old && original.contains(trimmed) {
            msg.push_str(" (It does match once leading and trailing whitespace is removed.)");
        }
        return Err(ToolOutput::error(msg));
    }
    if count > 1 && !replace_all {
        return Err(ToolOutput::error(format!(
            "old_string matches {count} times in {}; include more context to make it unique, or set replace_all to true to replace every occurrence.",
            r.shown
        )));
    }
    let updated = if replace_all {
        original.replace(old.as_str(), &new)
    } else {
        original.replacen(old.as_str(), &new, 1)
    };
    let diff = unified_diff(&r.shown, Some(&original), &updated);
    Ok(Prepared {
        tool: "edit".to_owned(),
        title: format!("Edit {}", r.shown),
        diff: Some(diff.clone()),
        command: None,
        action: Action::Edit(Call {
            path: args.path,
            inside: r.inside.clone(),
            original,
            updated,
            diff,
            replacements: count,
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
    let current = match read_text(&ws, &r) {
        Ok(c) => c,
        Err(e) => return e,
    };
    if current != call.original {
        return ToolOutput::error(format!(
            "{} changed since the edit was proposed; view it again and redo the edit.",
            r.shown
        ));
    }
    if ctx.cancel.is_cancelled() {
        return ToolOutput::cancelled();
    }
    if let Err(e) = atomic_write_beneath(&ws, &r.real, call.updated.as_bytes()) {
        return ToolOutput::error(format!("Cannot write {}: {e}", r.shown));
    }
    let times = if call.replacements == 1 {
        "1 replacement".to_owned()
    } else {
        format!("{} replacements", call.replacements)
    };
    ToolOutput::ok(format!("Edited {} ({times}).\n\n{}", r.shown, call.diff))
        .with_metadata(json!({"path": r.shown, "diff": call.diff}))
}

/// The whole file as UTF-8 text, or an error output saying why not.
fn read_text(ws: &Workspace, r: &Resolved) -> Result<String, ToolOutput> {
    let shown = &r.shown;
    match fs::metadata(&r.real) {
        Ok(m) if m.is_dir() => {
            return Err(ToolOutput::error(format!(
                "{shown} is a directory, not a file."
            )));
        }
        Ok(m) if !m.is_file() => return Err(not_regular(shown)),
        Ok(m) if m.len() > EDIT_MAX_BYTES => {
            return Err(ToolOutput::error(format!(
                "{shown} is {} bytes, too large to edit (limit {EDIT_MAX_BYTES}).",
                m.len()
            )));
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ToolOutput::error(format!(
                "{shown} does not exist; use write to create a new file."
            )));
        }
        Err(e) => return Err(ToolOutput::error(format!("Cannot read {shown}: {e}"))),
    }
    let cannot = |e: io::Error| ToolOutput::error(format!("Cannot read {shown}: {e}"));
    let mut bytes = Vec::new();
    ws.open_read(&r.real)
        .and_then(|mut f| io::Read::read_to_end(&mut f, &mut bytes))
        .map_err(cannot)?;
    String::from_utf8(bytes).map_err(|_| {
        ToolOutput::error(format!(
            "{shown} is not UTF-8 text; edit only changes text files (write can replace it whole)."
        ))
    })
}
