//! A workspace's `.mcp.json`: the `mcpServers` object other agents (Claude Code, Cursor, …)
//! already read. Its servers run only after a client approved them for the workspace (the
//! approval is the run layer's: `runs/tool_calls.rs`), each approval being for one exact
//! definition — its [`fingerprint`](ProjectServer::fingerprint) — so an edit asks again. A
//! project file cannot allow-list tools: every tool of a project server asks.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};

use super::config::{DEFAULT_STARTUP_TIMEOUT, DEFAULT_TIMEOUT, ServerSpec, valid_name};

/// The file's name in the workspace root.
pub(crate) const FILE: &str = ".mcp.json";

/// Larger files are refused (it is read at every turn of the workspace).
const MAX_BYTES: u64 = 256 * 1024;

#[derive(Deserialize)]
struct File {
    #[serde(default, rename = "mcpServers")]
    mcp_servers: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
struct Entry {
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    url: Option<String>,
}

/// One server of the file, ready to run once approved.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProjectServer {
    pub spec: ServerSpec,
    /// The definition as approved: canonical JSON of command, args, env and cwd.
    pub fingerprint: String,
}

/// What `.mcp.json` says: the servers it defines and the ones it defines badly (name, reason).
#[derive(Debug, Default)]
pub(crate) struct ProjectFile {
    pub servers: Vec<ProjectServer>,
    pub rejected: Vec<(String, String)>,
}

/// Reads `root/.mcp.json`. A missing file is an empty one; an unreadable one is an error
/// naming the file.
pub(crate) fn read(root: &Path) -> Result<ProjectFile, String> {
    let path = root.join(FILE);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ProjectFile::default()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    if meta.len() > MAX_BYTES {
        return Err(format!(
            "{} is larger than {} KiB",
            path.display(),
            MAX_BYTES / 1024
        ));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(root, &text).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse(root: &Path, text: &str) -> Result<ProjectFile, String> {
    let file: File = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut out = ProjectFile::default();
    for (name, value) in file.mcp_servers {
        match entry(root, &name, value) {
            Ok(s) => out.servers.push(s),
            Err(why) => out.rejected.push((name, why)),
        }
    }
    Ok(out)
}

fn entry(root: &Path, name: &str, value: Value) -> Result<ProjectServer, String> {
    if !valid_name(name) {
        return Err("a server name must be 1-32 letters, digits, `-` or `_` (no `__`)".to_owned());
    }
    let e: Entry = serde_json::from_value(value).map_err(|e| e.to_string())?;
    if e.url.is_some() || e.kind.as_deref().is_some_and(|k| k != "stdio") {
        return Err(
            "only stdio servers (`command`) are supported by this version of crushd".to_owned(),
        );
    }
    let command = match e.command.as_deref().map(str::trim) {
        Some(c) if !c.is_empty() => c.to_owned(),
        _ => return Err("it has no `command`".to_owned()),
    };
    let cwd = match e.cwd {
        Some(c) => root.join(c),
        None => root.to_path_buf(),
    };
    let fingerprint = json!({
        "command": command,
        "args": e.args,
        "env": e.env,
        "cwd": cwd.display().to_string(),
    })
    .to_string();
    Ok(ProjectServer {
        spec: ServerSpec {
            name: name.to_owned(),
            command,
            url: None,
            headers: BTreeMap::new(),
            headers_env: BTreeMap::new(),
            args: e.args,
            env: e.env,
            cwd: Some(cwd),
            enabled: true,
            timeout: DEFAULT_TIMEOUT,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            allow: Vec::new(),
        },
        fingerprint,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn reads_the_mcp_servers_format() {
        let root = Path::new("/w");
        let f = parse(
            root,
            r#"{"mcpServers": {
                "fs": {"command": "npx", "args": ["-y", "server"], "env": {"A": "1"}},
                "web": {"type": "http", "url": "https://x"},
                "bad name": {"command": "x"}
            }}"#,
        )
        .unwrap();
        assert_eq!(f.servers.len(), 1);
        let fs = &f.servers[0];
        assert_eq!(fs.spec.cwd.as_deref(), Some(Path::new("/w")));
        assert!(fs.spec.allow.is_empty());
        assert!(fs.fingerprint.contains("\"npx\""));
        assert_eq!(f.rejected.len(), 2);
        // An edit changes the fingerprint, so the approval does not carry over.
        let g = parse(
            root,
            r#"{"mcpServers": {"fs": {"command": "npx", "args": ["-y", "other"]}}}"#,
        )
        .unwrap();
        assert_ne!(g.servers[0].fingerprint, fs.fingerprint);
        assert!(parse(root, "not json").is_err());
        assert!(parse(root, "{}").unwrap().servers.is_empty());
    }
}
