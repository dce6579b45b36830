//! The `glob` tool: files under a directory whose path (relative to that directory) matches a
//! glob, gitignore-aware, sorted, capped.

use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};
use serde::Deserialize;

use super::paths::Workspace;
use super::{Action, Prepared, ToolContext, ToolOutput, opt_path, walker};

#[derive(Debug, Deserialize)]
pub(crate) struct Args {
    pattern: String,
    #[serde(default)]
    path: Option<String>,
}

#[derive(Debug)]
pub(crate) struct Call {
    pattern: String,
    matcher: GlobMatcher,
    path: String,
}

pub(crate) fn prepare(ctx: &ToolContext, args: Args) -> Result<Prepared, ToolOutput> {
    let ws = Workspace::open(ctx)?;
    let path = opt_path(args.path).unwrap_or_else(|| ".".to_owned());
    let resolved = ws.resolve(&path)?;
    let pattern = relative_pattern(&ws, &resolved.real, &args.pattern)?;
    let matcher = GlobBuilder::new(&pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| ToolOutput::error(format!("Invalid glob pattern {:?}: {e}", args.pattern)))?
        .compile_matcher();
    let mut title = format!("Find files: {pattern}");
    if resolved.shown != "." {
        title.push_str(&format!(" in {}", resolved.shown));
    }
    Ok(Prepared {
        tool: "glob".to_owned(),
        title,
        diff: None,
        command: None,
        action: Action::Glob(Call {
            pattern,
            matcher,
            path,
        }),
    })
}

/// The pattern relative to the search directory: a leading "./" is dropped, and an absolute
/// pattern is accepted when it starts with the search directory (models copy absolute paths).
fn relative_pattern(ws: &Workspace, dir: &Path, pattern: &str) -> Result<String, ToolOutput> {
    let p = pattern.trim();
    if p.is_empty() {
        return Err(ToolOutput::error("The glob pattern is empty."));
    }
    if p.starts_with('/') {
        let dir_s = format!("{}/", dir.display());
        let root_s = format!("{}/", ws.root.display());
        return p
            .strip_prefix(&dir_s)
            .or_else(|| (dir == ws.root).then(|| p.strip_prefix(&root_s)).flatten())
            .map(str::to_owned)
            .ok_or_else(|| {
                ToolOutput::error(format!(
                    "The glob pattern {p:?} is absolute; give it relative to the search path, e.g. '**/*.rs'."
                ))
            });
    }
    let mut p = p;
    while let Some(rest) = p.strip_prefix("./") {
        p = rest;
    }
    Ok(p.to_owned())
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
            return ToolOutput::error(format!("{} is a file; glob searches a directory.", r.shown));
        }
        Err(e) => return ToolOutput::error(format!("Cannot search {}: {e}", r.shown)),
    }
    let max = ctx.limits.max_results;
    let mut found: Vec<PathBuf> = Vec::new();
    let mut truncated = false;
    for entry in walker(&r.real).build() {
        if ctx.cancel.is_cancelled() {
            return ToolOutput::cancelled();
        }
        let Ok(entry) = entry else { continue };
        if entry.depth() == 0 || entry.file_type().is_none_or(|t| t.is_dir()) {
            continue;
        }
        let Ok(rel) = entry.path().strip_prefix(&r.real) else {
            continue;
        };
        if !call.matcher.is_match(rel) {
            continue;
        }
        // The walk is sorted by name, so stopping early keeps the first paths in sorted order.
        if found.len() == max {
            truncated = true;
            break;
        }
        found.push(entry.into_path());
    }
    if found.is_empty() {
        return ToolOutput::ok(format!("No files match {} in {}.", call.pattern, r.shown));
    }
    found.sort();
    let mut out = String::new();
    for p in &found {
        out.push_str(&ws.rel(p));
        out.push('\n');
    }
    if truncated {
        out.push_str(&format!(
            "(Results cut at {max} paths; use a narrower pattern or path.)\n"
        ));
    }
    ToolOutput::ok(out)
}
