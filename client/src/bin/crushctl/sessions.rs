//! `sessions`: list a workspace's sessions (a table on a terminal, JSON lines with `--json`),
//! show one readably, remove or rename one.

use std::collections::HashMap;

use serde_json::json;

use crush_protocol::{
    AgentState, RunState, SessionDiffParams, SessionForkParams, SessionRef, SessionRenameParams,
    SessionRevertParams, SessionRevertResult, SessionUnrevertParams, request,
};

use crate::attach::history;
use crate::render::Conversation;
use crate::ui::{BOLD, DIM, Term, Ui};
use crate::{
    Global, SessionsArgs, SessionsCommand, WorkspaceArg, get_session, leave, list_sessions,
    open_workspace, usage,
};

pub async fn sessions(g: &Global, a: SessionsArgs) -> anyhow::Result<u8> {
    let client = g.reconnecting(g.options(true)).await?;
    let result = async {
        match a.command {
            None => list(&client, &a).await,
            Some(SessionsCommand::Show { id, json }) => show(&client, &id, json).await,
            Some(SessionsCommand::Rm { id }) => {
                let id = get_session(&client, &id).await?.session_id;
                client
                    .request::<request::SessionDelete>(SessionRef {
                        session_id: id.clone(),
                    })
                    .await?;
                crate::outln!("deleted session {id}")?;
                Ok(0)
            }
            Some(SessionsCommand::Rename { id, title }) => {
                let id = get_session(&client, &id).await?.session_id;
                let s = client
                    .request::<request::SessionRename>(SessionRenameParams {
                        session_id: id,
                        title,
                    })
                    .await?;
                crate::outln!("renamed session {} to {:?}", s.session_id, s.title)?;
                Ok(0)
            }
        }
    }
    .await;
    leave(client).await;
    result
}

/// The named session's full id, else the workspace's most recent session's.
async fn named_or_latest(
    client: &crush_client::ReconnectingClient,
    session: Option<&str>,
    ws: &WorkspaceArg,
) -> anyhow::Result<String> {
    Ok(match session {
        Some(id) => get_session(client, id).await?.session_id,
        None => {
            let w = open_workspace(client, ws).await?;
            match list_sessions(client, &w.workspace_id).await?.first() {
                Some(s) => s.session_id.clone(),
                None => return Err(usage(format!("no session in {}", w.path))),
            }
        }
    })
}

/// `fork`: `session/fork` of the named session, else the workspace's most recent one.
pub async fn fork(
    g: &Global,
    session: Option<&str>,
    at: Option<String>,
    ws: &WorkspaceArg,
    json_out: bool,
) -> anyhow::Result<u8> {
    let client = g.reconnecting(g.options(true)).await?;
    let result = async {
        let id = named_or_latest(&client, session, ws).await?;
        let s = client
            .request::<request::SessionFork>(SessionForkParams {
                session_id: id.clone(),
                message_id: at,
            })
            .await?;
        if json_out {
            crate::outln!("{}", serde_json::to_string(&s)?)?;
        } else {
            crate::outln!(
                "forked session {} into {} ({:?}, {} messages); continue it with `crushctl run -s {}`",
                crate::ids::short(&id),
                crate::ids::short(&s.session_id),
                s.title,
                s.message_count,
                crate::ids::short(&s.session_id)
            )?;
        }
        Ok(0)
    }
    .await;
    leave(client).await;
    result
}

/// `diff`: `session/diff` of the named session (or the run of one of its messages), else of
/// the workspace's most recent session.
pub async fn diff(
    g: &Global,
    session: Option<&str>,
    run_of: Option<String>,
    ws: &WorkspaceArg,
    stat: bool,
    json_out: bool,
) -> anyhow::Result<u8> {
    let client = g.reconnecting(g.options(true)).await?;
    let result = async {
        let id = named_or_latest(&client, session, ws).await?;
        let d = client
            .request::<request::SessionDiff>(SessionDiffParams {
                session_id: id,
                message_id: run_of,
            })
            .await?;
        if json_out {
            crate::outln!("{}", serde_json::to_string(&d)?)?;
            return Ok(0);
        }
        if stat || d.diff.is_empty() {
            for f in &d.files {
                crate::outln!("{:<9} {}", f.status, f.path)?;
            }
        } else {
            crate::ui::write_out(format_args!("{}", d.diff))?;
        }
        if d.files.is_empty() {
            crate::errln!("no changes");
        }
        for s in &d.skipped {
            crate::errln!("not in the diff (too large to snapshot): {s}");
        }
        Ok(0)
    }
    .await;
    leave(client).await;
    result
}

/// Prints what an undo or redo did; exit 1 when conflicts stopped it.
fn report(what: &str, r: &SessionRevertResult) -> anyhow::Result<u8> {
    if !r.done && !r.conflicts.is_empty() {
        crate::errln!(
            "nothing was {what}: these files changed outside the runs since; look at them, or \
             pass --force to overwrite them:"
        );
        for c in &r.conflicts {
            crate::errln!("  {c}");
        }
        return Ok(crate::EXIT_FAILED);
    }
    if !r.done {
        crate::outln!("nothing to redo: no undo since the last prompt")?;
        return Ok(0);
    }
    crate::outln!(
        "{what}: {} messages, {} files{}",
        r.messages,
        r.files.len(),
        if r.files.is_empty() { "" } else { ":" }
    )?;
    for f in &r.files {
        crate::outln!("  {f}")?;
    }
    Ok(0)
}

/// `undo`: `session/revert` from the named message, else from the session's last prompt that is
/// not undone already.
pub async fn undo(
    g: &Global,
    session: Option<&str>,
    to: Option<String>,
    force: bool,
    ws: &WorkspaceArg,
) -> anyhow::Result<u8> {
    let client = g.reconnecting(g.options(true)).await?;
    let result = async {
        let id = named_or_latest(&client, session, ws).await?;
        let message_id = match to {
            Some(m) => m,
            None => {
                let messages = history(&client, &id, true, 1000).await?;
                match messages
                    .iter()
                    .rev()
                    .find(|m| m.role == "user" && !m.reverted)
                {
                    Some(m) => m.message_id.clone(),
                    None => return Err(usage(format!("nothing to undo in session {id}"))),
                }
            }
        };
        let r = client
            .request::<request::SessionRevert>(SessionRevertParams {
                session_id: id,
                message_id,
                force,
            })
            .await?;
        report("undone", &r)
    }
    .await;
    leave(client).await;
    result
}

/// `redo`: `session/unrevert`.
pub async fn redo(
    g: &Global,
    session: Option<&str>,
    force: bool,
    ws: &WorkspaceArg,
) -> anyhow::Result<u8> {
    let client = g.reconnecting(g.options(true)).await?;
    let result = async {
        let id = named_or_latest(&client, session, ws).await?;
        let r = client
            .request::<request::SessionUnrevert>(SessionUnrevertParams {
                session_id: id,
                force,
            })
            .await?;
        report("redone", &r)
    }
    .await;
    leave(client).await;
    result
}

/// `compact`: `session/compact` for the named session, else the workspace's most recent one.
pub async fn compact(
    g: &Global,
    session: Option<&str>,
    ws: &WorkspaceArg,
    json_out: bool,
) -> anyhow::Result<u8> {
    let client = g.reconnecting(g.options(true)).await?;
    let result = async {
        let id = named_or_latest(&client, session, ws).await?;
        if !json_out && Term::detect().stderr_tty {
            crate::errln!("summarising the older messages of session {}…", crate::ids::short(&id));
        }
        let r = client
            .request::<request::SessionCompact>(SessionRef {
                session_id: id.clone(),
            })
            .await?;
        if json_out {
            crate::outln!(
                "{}",
                json!({"sessionId": id, "compacted": r.compacted, "summaryMessageId": r.summary_message_id,
                    "messages": r.messages, "tokensBefore": r.tokens_before, "tokensAfter": r.tokens_after})
            )?;
        } else if r.compacted {
            crate::outln!(
                "summarised {} older messages of session {}: the model is now shown {} tokens of it instead of {}",
                r.messages,
                crate::ids::short(&id),
                r.tokens_after,
                r.tokens_before
            )?;
        } else {
            crate::outln!(
                "nothing to compact in session {}: only its first prompt and latest turn are left as they are",
                crate::ids::short(&id)
            )?;
        }
        Ok(0)
    }
    .await;
    leave(client).await;
    result
}

async fn list(client: &crush_client::ReconnectingClient, a: &SessionsArgs) -> anyhow::Result<u8> {
    let w = open_workspace(client, &a.ws).await?;
    let sessions = list_sessions(client, &w.workspace_id).await?;
    // A busy session shows the state of its first run; any other is idle.
    let mut state: HashMap<&str, &str> = HashMap::new();
    for b in &w.busy_sessions {
        state.insert(
            &b.session_id,
            if b.active_run_id.is_some() {
                RunState::Running.as_str()
            } else {
                RunState::Queued.as_str()
            },
        );
    }
    let state_of = |id: &str| state.get(id).copied().unwrap_or(AgentState::Idle.as_str());
    if a.json {
        for s in &sessions {
            crate::outln!(
                "{}",
                json!({"sessionId": s.session_id, "title": s.title, "updatedAt": s.updated_at,
                    "createdAt": s.created_at, "messages": s.message_count, "state": state_of(&s.session_id),
                    "model": s.model})
            )?;
        }
        return Ok(0);
    }
    let term = Term::detect();
    let ui = Ui::new(term, false);
    if sessions.is_empty() {
        crate::errln!("no sessions in {} yet (`crushctl run` starts one)", w.path);
        return Ok(0);
    }
    let now = now_ms();
    let rows: Vec<[String; 5]> = sessions
        .iter()
        .map(|s| {
            [
                crate::ids::short(&s.session_id),
                s.title.clone(),
                ago(now - s.updated_at),
                s.message_count.to_string(),
                state_of(&s.session_id).to_owned(),
            ]
        })
        .collect();
    let header = ["ID", "TITLE", "UPDATED", "MSGS", "STATE"];
    let mut widths = header.map(|h| h.chars().count());
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count().min(if i == 1 { 50 } else { 80 }));
        }
    }
    let fmt = |cells: [String; 5]| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let c: String = c.chars().take(if i == 1 { 50 } else { 80 }).collect();
                format!("{c:<w$}", w = widths[i])
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    ui.out_line(&ui.paint_out(BOLD, &fmt(header.map(str::to_owned))));
    for r in rows {
        ui.out_line(&fmt(r));
    }
    Ok(0)
}

async fn show(
    client: &crush_client::ReconnectingClient,
    id: &str,
    json_out: bool,
) -> anyhow::Result<u8> {
    let s = get_session(client, id).await?;
    let msgs = history(client, &s.session_id, true, 1000).await?;
    if json_out {
        for m in &msgs {
            crate::outln!("{}", serde_json::to_string(m)?)?;
        }
        return Ok(0);
    }
    let ui = Ui::new(Term::detect(), false);
    ui.out_line(&ui.paint_out(BOLD, &s.title));
    ui.out_line(&ui.paint_out(
        DIM,
        &format!(
            "{} · {} messages · updated {} ago{}",
            s.session_id,
            s.message_count,
            ago(now_ms() - s.updated_at),
            s.model
                .as_deref()
                .map(|m| format!(" · {m}"))
                .unwrap_or_default()
        ),
    ));
    let mut conv = Conversation::new(ui.clone());
    for m in &msgs {
        conv.message(m, None);
    }
    ui.end_line();
    Ok(0)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// `5s`, `3m`, `2h`, `4d` (ago).
pub fn ago(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}
