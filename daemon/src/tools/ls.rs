//! The `ls` tool: a directory as an indented tree, gitignore-aware, a bounded number of levels
//! and entries deep.

use serde::Deserialize;

use super::paths::Workspace;
use super::{Action, Prepared, ToolContext, ToolOutput, de_opt_u64, opt_path, walker};

pub(crate) const DEFAULT_DEPTH: u64 = 2;

#[derive(Debug, Deserialize)]
pub(crate) struct Args {
    #[serde(default)]
    path: Option<String>,
    #[serde(default, deserialize_with = "de_opt_u64")]
    depth: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct Call {
    path: String,
    depth: usize,
}

pub(crate) fn prepare(ctx: &ToolContext, args: Args) -> Result<Prepared, ToolOutput> {
    let ws = Workspace::open(ctx)?;
    let path = opt_path(args.path).unwrap_or_else(|| ".".to_owned());
    let resolved = ws.resolve(&path)?;
    let depth = usize::try_from(args.depth.unwrap_or(DEFAULT_DEPTH).max(1)).unwrap_or(usize::MAX);
    Ok(Prepared {
        tool: "ls".to_owned(),
        title: format!("List {}", resolved.shown),
        diff: None,
        command: None,
        action: Action::Ls(Call { path, depth }),
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
    match std::fs::metadata(&r.real) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return ToolOutput::error(format!(
                "{} is a file, not a directory; use view to read it.",
                r.shown
            ));
        }
        Err(e) => return ToolOutput::error(format!("Cannot list {}: {e}", r.shown)),
    }
    let max = ctx.limits.max_results;
    let mut out = if r.shown == "." {
        "./\n".to_owned()
    } else {
        format!("{}/\n", r.shown)
    };
    let mut count = 0usize;
    let mut truncated = false;
    for entry in walker(&r.real).max_depth(Some(call.depth)).build() {
        if ctx.cancel.is_cancelled() {
            return ToolOutput::cancelled();
        }
        // Unreadable entries are left out rather than failing the whole listing.
        let Ok(entry) = entry else { continue };
        if entry.depth() == 0 {
            continue;
        }
        if count == max {
            truncated = true;
            break;
        }
        count += 1;
        let name = entry.file_name().to_string_lossy();
        let suffix = match entry.file_type() {
            Some(t) if t.is_dir() => "/",
            Some(t) if t.is_symlink() => "@",
            _ => "",
        };
        for _ in 0..entry.depth() {
            out.push_str("  ");
        }
        out.push_str(&name);
        out.push_str(suffix);
        out.push('\n');
    }
    if count == 0 {
        out.push_str("(empty directory)\n");
    }
    if truncated {
        out.push_str(&format!(
            "(Listing cut at {max} entries; list a subdirectory or use a smaller depth.)\n"
        ));
    }
    ToolOutput::ok(out)
}
