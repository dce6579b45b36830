//! `permissions list|rm|log`: the saved permission rules ("always allow" answers,
//! `permission/rules/list`, `permission/rules/remove`) and the audit log of permission decisions
//! (`permission/log`).

use crush_client::ReconnectingClient;
use crush_protocol::{
    PermissionLogEntry, PermissionLogParams, PermissionRule, PermissionRulesListParams,
    PermissionRulesRemoveParams, PermissionSource, request,
};

use crate::ids::short;
use crate::sessions::{ago, now_ms};
use crate::{Global, PermissionsCommand, WorkspaceArg, get_session, leave, open_workspace};

pub async fn permissions(g: &Global, c: PermissionsCommand) -> anyhow::Result<u8> {
    let client = g.reconnecting(g.options(true)).await?;
    let result = async {
        match c {
            PermissionsCommand::List { all, json, ws } => list(&client, all, json, &ws).await,
            PermissionsCommand::Rm { id } => rm(&client, &id).await,
            PermissionsCommand::Log {
                all,
                session,
                limit,
                json,
                ws,
            } => log(&client, all, session.as_deref(), limit, json, &ws).await,
        }
    }
    .await;
    leave(client).await;
    result
}

/// The rules that apply in the workspace (its own, its sessions' and global ones), or all.
async fn rules(
    client: &ReconnectingClient,
    all: bool,
    ws: &WorkspaceArg,
) -> anyhow::Result<Vec<PermissionRule>> {
    let workspace_id = if all {
        None
    } else {
        Some(open_workspace(client, ws).await?.workspace_id)
    };
    Ok(client
        .request::<request::PermissionRulesList>(PermissionRulesListParams {
            workspace_id,
            session_id: None,
        })
        .await?
        .rules)
}

async fn list(
    client: &ReconnectingClient,
    all: bool,
    json: bool,
    ws: &WorkspaceArg,
) -> anyhow::Result<u8> {
    let rules = rules(client, all, ws).await?;
    if json {
        for r in &rules {
            crate::outln!("{}", serde_json::to_string(r)?)?;
        }
        return Ok(0);
    }
    if rules.is_empty() {
        crate::outln!(
            "No saved permission rules{} (answer a prompt with \"always allow\" to save one).",
            if all { "" } else { " apply here" }
        )?;
        return Ok(0);
    }
    let now = now_ms();
    for r in &rules {
        let pattern = r
            .pattern
            .as_deref()
            .map(|p| format!(" {p:?}"))
            .unwrap_or_default();
        let whose = match (&r.session_id, &r.workspace_id) {
            (Some(s), _) => format!(" {}", short(s)),
            _ => String::new(),
        };
        crate::outln!(
            "{}  {}{}  {}{whose}  (by {}, {} ago)",
            short(&r.id),
            r.tool,
            pattern,
            r.scope,
            r.created_by,
            ago(now - r.created_at)
        )?;
    }
    Ok(0)
}

async fn rm(client: &ReconnectingClient, id: &str) -> anyhow::Result<u8> {
    let all = client
        .request::<request::PermissionRulesList>(PermissionRulesListParams::default())
        .await?
        .rules;
    let full = crate::ids::rule(id, all.iter().map(|r| r.id.clone()))?;
    client
        .request::<request::PermissionRulesRemove>(PermissionRulesRemoveParams { id: full.clone() })
        .await?;
    let r = all.iter().find(|r| r.id == full);
    match r {
        Some(r) => crate::outln!(
            "removed rule {}: {}{} ({}); such calls are asked about again",
            short(&full),
            r.tool,
            r.pattern
                .as_deref()
                .map(|p| format!(" {p:?}"))
                .unwrap_or_default(),
            r.scope
        )?,
        None => crate::outln!("removed rule {}", short(&full))?,
    }
    Ok(0)
}

async fn log(
    client: &ReconnectingClient,
    all: bool,
    session: Option<&str>,
    limit: Option<u32>,
    json: bool,
    ws: &WorkspaceArg,
) -> anyhow::Result<u8> {
    let (session_id, workspace_id) = match session {
        Some(s) => (Some(get_session(client, s).await?.session_id), None),
        None if all => (None, None),
        None => (None, Some(open_workspace(client, ws).await?.workspace_id)),
    };
    let entries = client
        .request::<request::PermissionLog>(PermissionLogParams {
            session_id,
            workspace_id,
            limit,
        })
        .await?
        .entries;
    if json {
        for e in &entries {
            crate::outln!("{}", serde_json::to_string(e)?)?;
        }
        return Ok(0);
    }
    if entries.is_empty() {
        crate::outln!("No permission decisions recorded yet.")?;
        return Ok(0);
    }
    let now = now_ms();
    // Oldest first, like a log file; the daemon gives the newest first.
    for e in entries.iter().rev() {
        crate::outln!("{}", line(e, now))?;
    }
    Ok(0)
}

/// `3m ago  s:1a2b3c4d  allow  Run: cargo test  — rule bash "cargo test" (workspace)`.
fn line(e: &PermissionLogEntry, now: i64) -> String {
    let why = match e.source {
        PermissionSource::Prompt => {
            let by = match (&e.client, e.connection) {
                (Some(c), Some(n)) => format!("{c}, connection {n}"),
                (Some(c), None) => c.clone(),
                _ => "?".to_owned(),
            };
            match &e.rule {
                Some(r) => format!("answered by {by}; saved rule {r}"),
                None => format!("answered by {by}"),
            }
        }
        _ => format!(
            "{}{}",
            e.source,
            e.rule
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ),
    };
    format!(
        "{:>4} ago  session {}  {}  {}  — {why}",
        ago(now - e.at),
        short(&e.session_id),
        e.decision,
        e.title
    )
}
