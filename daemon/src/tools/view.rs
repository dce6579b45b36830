//! The `view` tool: a text file's lines, numbered, optionally a range of them. A file over the
//! size limit must be read by range and is streamed, never read whole. Directories and binary
//! files (NUL in the first 8 KiB, or not UTF-8) are refused.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use serde::Deserialize;

use super::output::cut_line;
use super::paths::{Resolved, Workspace};
use super::{Action, Prepared, ToolContext, ToolOutput, de_opt_u64};

pub(crate) const DEFAULT_LIMIT: u64 = 2000;
/// Longer lines are cut, so one minified line cannot eat the output budget.
const MAX_LINE_CHARS: usize = 2000;
/// How much of a file's start is checked for NUL bytes.
pub(crate) const BINARY_SNIFF_BYTES: usize = 8 * 1024;
/// Room kept in the output budget for the closing note.
const NOTE_RESERVE: usize = 200;

#[derive(Debug, Deserialize)]
pub(crate) struct Args {
    path: String,
    #[serde(default, deserialize_with = "de_opt_u64")]
    offset: Option<u64>,
    #[serde(default, deserialize_with = "de_opt_u64")]
    limit: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct Call {
    path: String,
    offset: Option<u64>,
    limit: Option<u64>,
}

pub(crate) fn prepare(ctx: &ToolContext, args: Args) -> Result<Prepared, ToolOutput> {
    let ws = Workspace::open(ctx)?;
    let resolved = ws.resolve(&args.path)?;
    let mut title = format!("View {}", resolved.shown);
    if args.offset.is_some() || args.limit.is_some() {
        let from = args.offset.unwrap_or(1).max(1);
        let count = args.limit.unwrap_or(DEFAULT_LIMIT).max(1);
        title.push_str(&format!(
            " (lines {from}-{})",
            from.saturating_add(count - 1)
        ));
    }
    Ok(Prepared {
        tool: "view".to_owned(),
        title,
        diff: None,
        command: None,
        action: Action::View(Call {
            path: args.path,
            offset: args.offset,
            limit: args.limit,
        }),
    })
}

pub(crate) fn run(ctx: &ToolContext, call: Call) -> ToolOutput {
    let ws = match Workspace::open(ctx) {
        Ok(ws) => ws,
        Err(e) => return e,
    };
    let resolved = match ws.resolve(&call.path) {
        Ok(r) => r,
        Err(e) => return e,
    };
    match view(ctx, &ws, &resolved, call.offset, call.limit) {
        Ok(out) | Err(out) => out,
    }
}

fn view(
    ctx: &ToolContext,
    ws: &Workspace,
    r: &Resolved,
    offset: Option<u64>,
    limit: Option<u64>,
) -> Result<ToolOutput, ToolOutput> {
    let shown = &r.shown;
    let meta = match std::fs::metadata(&r.real) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ToolOutput::error(not_found(&r.real, shown)));
        }
        Err(e) => return Err(ToolOutput::error(format!("Cannot read {shown}: {e}"))),
    };
    if meta.is_dir() {
        return Err(ToolOutput::error(format!(
            "{shown} is a directory; use ls to list it."
        )));
    }
    if !meta.is_file() {
        // Opening a FIFO would block until a writer appears; devices are not text files.
        return Err(not_regular(shown));
    }
    let ranged = offset.is_some() || limit.is_some();
    let max = ctx.limits.view_max_bytes;
    if meta.len() > max && !ranged {
        return Err(ToolOutput::error(format!(
            "{shown} is {} bytes, over the {max}-byte limit for viewing a whole file; view it in parts with offset and limit (e.g. offset 1, limit {DEFAULT_LIMIT}), or search it with grep.",
            meta.len()
        )));
    }
    // A small file is checked whole and its lines counted; a large one is streamed only as far
    // as the requested range (plus one line, to tell whether more follow).
    let whole = meta.len() <= max;
    let io_err = |e: std::io::Error| ToolOutput::error(format!("Cannot read {shown}: {e}"));
    let mut file = ws.open_read(&r.real).map_err(io_err)?;
    let mut sniff = Vec::with_capacity(BINARY_SNIFF_BYTES);
    (&mut file)
        .take(BINARY_SNIFF_BYTES as u64)
        .read_to_end(&mut sniff)
        .map_err(io_err)?;
    if sniff.contains(&0) {
        return Err(binary(shown));
    }
    file.seek(SeekFrom::Start(0)).map_err(io_err)?;

    let first = offset.unwrap_or(1).max(1);
    let count = limit.unwrap_or(DEFAULT_LIMIT).max(1);
    let last = first.saturating_add(count - 1);
    let budget = ctx
        .limits
        .output_max_bytes
        .saturating_sub(NOTE_RESERVE)
        .max(1);

    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut buf = Vec::new();
    let mut out = String::new();
    let mut lineno: u64 = 0;
    let mut shown_last: u64 = 0;
    let mut budget_hit = false;
    let mut more = false;
    loop {
        if lineno.is_multiple_of(4096) && ctx.cancel.is_cancelled() {
            return Err(ToolOutput::cancelled());
        }
        buf.clear();
        if reader.read_until(b'\n', &mut buf).map_err(io_err)? == 0 {
            break;
        }
        lineno += 1;
        let in_range = lineno >= first && lineno <= last && !budget_hit;
        if !in_range && !whole {
            if lineno > last || budget_hit {
                more = true;
                break;
            }
            continue;
        }
        let text = match std::str::from_utf8(&buf) {
            Ok(t) => t,
            Err(_) => return Err(binary(shown)),
        };
        if !in_range {
            continue;
        }
        let text = text.strip_suffix('\n').unwrap_or(text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        let line = format!("{lineno:6}\t{}\n", cut_line(text, MAX_LINE_CHARS));
        if !out.is_empty() && out.len() + line.len() > budget {
            budget_hit = true;
            continue;
        }
        out.push_str(&line);
        shown_last = lineno;
    }
    let total = if whole { Some(lineno) } else { None };
    if lineno == 0 {
        return Ok(ToolOutput::ok(format!("({shown} is empty.)")));
    }
    if shown_last == 0 {
        let total = if more {
            "more than that".to_owned()
        } else {
            format!("{lineno} lines")
        };
        return Err(ToolOutput::error(format!(
            "offset {first} is past the end of {shown} ({total}); use a smaller offset."
        )));
    }
    let follows = more || total.is_some_and(|t| t > shown_last);
    if follows {
        let why = if budget_hit {
            "Output limit reached. "
        } else {
            ""
        };
        let of = total.map(|t| format!(" of {t}")).unwrap_or_default();
        out.push_str(&format!(
            "\n({why}Showing lines {first}-{shown_last}{of}; more lines follow. Use offset {} to read more.)\n",
            shown_last + 1
        ));
    }
    Ok(ToolOutput::ok(out))
}

/// The refusal for FIFOs, sockets and devices, which reading could block on forever.
pub(crate) fn not_regular(shown: &str) -> ToolOutput {
    ToolOutput::error(format!(
        "{shown} is not a regular file (a FIFO, socket or device); the tools only read and write regular files."
    ))
}

fn binary(shown: &str) -> ToolOutput {
    ToolOutput::error(format!(
        "{shown} looks like a binary file (it has NUL bytes or is not UTF-8 text); view only reads text files."
    ))
}

/// "Not found", with up to three names from the same directory that look alike.
fn not_found(real: &Path, shown: &str) -> String {
    let mut msg = format!("{shown} does not exist.");
    let (Some(dir), Some(name)) = (real.parent(), real.file_name()) else {
        return msg;
    };
    let want = name.to_string_lossy().to_lowercase();
    let stem = want.split('.').next().unwrap_or(&want).to_owned();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return msg;
    };
    let mut similar: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            let l = n.to_lowercase();
            !stem.is_empty() && (l.contains(&stem) || want.contains(&l))
        })
        .take(50)
        .collect();
    similar.sort();
    similar.truncate(3);
    if !similar.is_empty() {
        msg.push_str(&format!(
            " Similar names in the same directory: {}.",
            similar.join(", ")
        ));
    }
    msg
}
