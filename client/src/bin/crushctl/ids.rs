//! Ids as a person reads and types them. Session and run ids are UUIDv7s: their first
//! characters are a timestamp, shared by every id made in the same minute, and only their end is
//! random. So the short form shown (tables, `attach`, `status`) is the *last* [`SHORT_LEN`]
//! characters, and every command that takes an id accepts the full id, or a unique prefix or
//! suffix of at least [`MIN_FRAGMENT`] characters — the short form shown, and git-style prefixes
//! of the full id, both work. A fragment matching several ids is refused, listing them.

use std::collections::BTreeSet;

use crush_client::{ClientError, ReconnectingClient};
use crush_protocol::{
    ErrorCode, NoParams, RunRef, SessionInfo, SessionMessagesParams, SessionRef, request,
};

use crate::{list_sessions, usage};

/// Characters of an id shown in its short form.
pub const SHORT_LEN: usize = 8;
/// The shortest fragment of an id that is looked up.
pub const MIN_FRAGMENT: usize = 4;

/// The short form of an id: its last [`SHORT_LEN`] characters (the random end of a UUIDv7).
pub fn short(id: &str) -> String {
    let n = id.chars().count();
    id.chars().skip(n.saturating_sub(SHORT_LEN)).collect()
}

/// Whether `id` is what `fragment` (already lowercase) names: a prefix or a suffix of it.
fn matches(id: &str, fragment: &str) -> bool {
    let id = id.to_ascii_lowercase();
    id.starts_with(fragment) || id.ends_with(fragment)
}

/// One id out of the candidates a fragment matched, or a usage error (exit 2) saying why not.
fn pick(what: &str, fragment: &str, mut found: Vec<String>, hint: &str) -> anyhow::Result<String> {
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(usage(format!("no {what} {fragment:?} ({hint})"))),
        _ => Err(usage(format!(
            "{fragment:?} matches several {what}s; give more of the id: {}",
            found.join(", ")
        ))),
    }
}

/// A session by its id or a fragment of it.
pub async fn session(client: &ReconnectingClient, id: &str) -> anyhow::Result<SessionInfo> {
    let id = id.trim();
    match get(client, id).await {
        Err(ClientError::Rpc(r)) if r.code == ErrorCode::SessionNotFound as i32 => {}
        other => return Ok(other?),
    }
    let fragment = id.to_ascii_lowercase();
    let mut found = Vec::new();
    if fragment.chars().count() >= MIN_FRAGMENT {
        for s in all_sessions(client).await? {
            if matches(&s.session_id, &fragment) {
                found.push(s.session_id);
            }
        }
    }
    let full = pick("session", id, found, "`crushctl sessions` lists them")?;
    Ok(get(client, &full).await?)
}

async fn get(client: &ReconnectingClient, id: &str) -> Result<SessionInfo, ClientError> {
    client
        .request::<request::SessionGet>(SessionRef {
            session_id: id.to_owned(),
        })
        .await
}

/// Every session of every workspace the daemon knows.
async fn all_sessions(client: &ReconnectingClient) -> anyhow::Result<Vec<SessionInfo>> {
    let workspaces = client
        .request::<request::WorkspaceList>(NoParams)
        .await?
        .workspaces;
    let mut all = Vec::new();
    for w in workspaces {
        all.extend(list_sessions(client, &w.workspace_id).await?);
    }
    Ok(all)
}

/// The full id of a run named by its id or a fragment of it. Runs have no listing of their own:
/// the candidates are the active and queued runs of every workspace and the runs the messages of
/// every session belong to (the newest 1000 messages of each).
pub async fn run(client: &ReconnectingClient, id: &str) -> anyhow::Result<String> {
    let id = id.trim();
    match client
        .request::<request::RunGet>(RunRef {
            run_id: id.to_owned(),
        })
        .await
    {
        Ok(r) => return Ok(r.run_id),
        Err(ClientError::Rpc(r)) if r.code == ErrorCode::RunNotFound as i32 => {}
        Err(e) => return Err(e.into()),
    }
    let fragment = id.to_ascii_lowercase();
    let mut found = BTreeSet::new();
    if fragment.chars().count() >= MIN_FRAGMENT {
        let workspaces = client
            .request::<request::WorkspaceList>(NoParams)
            .await?
            .workspaces;
        for w in &workspaces {
            for b in &w.busy_sessions {
                found.extend(b.active_run_id.iter().cloned());
                found.extend(b.queued.iter().cloned());
            }
        }
        for s in all_sessions(client).await? {
            let page = client
                .request::<request::SessionMessages>(SessionMessagesParams {
                    session_id: s.session_id.clone(),
                    before: None,
                    limit: Some(1000),
                })
                .await?;
            found.extend(page.messages.into_iter().filter_map(|m| m.run_id));
        }
        found.retain(|r| matches(r, &fragment));
    }
    pick(
        "run",
        id,
        found.into_iter().collect(),
        "`crushctl attach` and `crushctl status` show run ids",
    )
}

/// The full id of a saved permission rule named by its id or a fragment of it, out of `ids`.
pub fn rule(fragment: &str, ids: impl IntoIterator<Item = String>) -> anyhow::Result<String> {
    let fragment = fragment.trim();
    let lower = fragment.to_ascii_lowercase();
    let found: Vec<String> = ids
        .into_iter()
        .filter(|id| {
            id == fragment || (lower.chars().count() >= MIN_FRAGMENT && matches(id, &lower))
        })
        .collect();
    pick(
        "permission rule",
        fragment,
        found,
        "`crushctl permissions list --all` lists them",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_form_is_the_random_end() {
        assert_eq!(short("0196f3a2-8d10-7b2e-9c41-6a0e5f2d7b13"), "5f2d7b13");
        assert_eq!(short("abc"), "abc");
    }

    #[test]
    fn fragments_match_either_end() {
        let id = "0196f3a2-8d10-7b2e-9c41-6a0e5f2d7b13";
        assert!(matches(id, "0196f3a2"));
        assert!(matches(id, "5f2d7b13"));
        assert!(matches(id, "7b13"));
        assert!(!matches(id, "8d10"));
    }
}
