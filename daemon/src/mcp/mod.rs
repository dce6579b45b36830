//! MCP servers as tools: one supervised pool per daemon, shared by every session and client.
//!
//! - `config.rs` — the `[mcp.servers.NAME]` tables, checked.
//! - `project.rs` — a workspace's `.mcp.json` (servers that start only once approved).
//! - `sdk.rs` — the only user of the MCP SDK (`rmcp`); speaks the specification's JSON outward.
//! - `process.rs` — a stdio server's process under the tool guard, its stderr into the log.
//! - `supervise.rs` — a server's life: start on first need, ready, restart with backoff when it
//!   dies, stop at shutdown; the state `mcp/list` shows.
//! - `convert.rs` — tools to `mcp__<server>__<tool>` specs, results to text and metadata.
//!
//! Architecture invariant: a tool call never waits on a server that is not ready — a call
//! during a (re)start fails at once as a tool error naming the server and its state — and every
//! call is bounded by the server's `timeout` and the run's cancellation, so an MCP server can
//! slow a run down but never hang it.

pub mod config;
mod convert;
mod process;
mod project;
mod sdk;
mod supervise;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crush_protocol::{McpServerInfo, McpServerState};

use config::ServerSpec;
pub(crate) use convert::split_name;
use supervise::Server;

use crate::model::ToolSpec;
use crate::sync::lock;
use crate::tools::ToolOutput;

/// The daemon's MCP servers. Cheap to clone.
#[derive(Clone, Default)]
pub struct Mcp {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The global servers (`config.toml`), fixed for the daemon's life.
    servers: Vec<Arc<Server>>,
    /// Each workspace's project servers (`.mcp.json`), as last read.
    projects: Mutex<HashMap<String, Vec<Arc<Server>>>>,
    /// Project servers a client refused to approve, per session: `(session, workspace, name,
    /// fingerprint)`; not asked again in that session.
    denied: Mutex<HashSet<(String, String, String, String)>>,
    key_vars: Arc<[String]>,
    /// The servers' supervisors and stderr copiers; awaited at shutdown.
    tracker: TaskTracker,
    /// Fired at shutdown: every supervisor stops its server and ends.
    shutdown: CancellationToken,
}

/// Why `mcp/restart` could not restart a server.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error("no MCP server is named {0:?}; `crushctl mcp list` shows the configured servers")]
    NotFound(String),
    #[error("the MCP server {0:?} is disabled in the config file (`enabled = false`)")]
    Disabled(String),
    #[error(
        "the MCP server {0:?} comes from a workspace's .mcp.json and is not approved yet: it is \
         asked for at the workspace's next run"
    )]
    Unapproved(String),
}

/// A project server waiting for a client's approval.
#[derive(Debug, Clone)]
pub(crate) struct Unapproved {
    pub name: String,
    pub fingerprint: String,
    pub command_line: String,
    /// What the permission request shows as its `input`.
    pub definition: Value,
}

impl Mcp {
    /// The pool of `specs`; nothing starts until a run needs a server. `key_vars` are the
    /// providers' key variables, never passed to a server.
    pub fn new(specs: Vec<ServerSpec>, key_vars: Vec<String>) -> Self {
        let key_vars: Arc<[String]> = key_vars.into();
        let shutdown = CancellationToken::new();
        Self {
            inner: Arc::new(Inner {
                servers: specs
                    .into_iter()
                    .map(|s| Arc::new(Server::global(s, key_vars.clone(), shutdown.child_token())))
                    .collect(),
                projects: Mutex::default(),
                denied: Mutex::default(),
                key_vars,
                tracker: TaskTracker::new(),
                shutdown,
            }),
        }
    }

    /// The server a run of workspace `ws` means by `name`: a global one, else one of the
    /// workspace's `.mcp.json` (a project server never shadows a global one).
    fn server(&self, ws: Option<&str>, name: &str) -> Option<Arc<Server>> {
        if let Some(s) = self.inner.servers.iter().find(|s| s.spec.name == name) {
            return Some(s.clone());
        }
        let projects = lock(&self.inner.projects);
        projects
            .get(ws?)?
            .iter()
            .find(|s| s.spec.name == name)
            .cloned()
    }

    /// The servers a run of workspace `ws` may use: the global ones, then the workspace's.
    fn servers_for(&self, ws: Option<&str>) -> Vec<Arc<Server>> {
        let mut all = self.inner.servers.clone();
        if let Some(ws) = ws
            && let Some(p) = lock(&self.inner.projects).get(ws)
        {
            all.extend(
                p.iter()
                    .filter(|s| {
                        !self
                            .inner
                            .servers
                            .iter()
                            .any(|g| g.spec.name == s.spec.name)
                    })
                    .cloned(),
            );
        }
        all
    }

    /// Every server's state (`mcp/list`): the global ones, then each workspace's.
    pub fn list(&self) -> Vec<McpServerInfo> {
        let mut out: Vec<McpServerInfo> = self.inner.servers.iter().map(|s| s.info()).collect();
        let projects = lock(&self.inner.projects);
        let mut ws: Vec<&String> = projects.keys().collect();
        ws.sort();
        for w in ws {
            out.extend(projects[w].iter().map(|s| s.info()));
        }
        out
    }

    /// Stops a server (if running) and starts it again now, without backoff (`mcp/restart`).
    pub fn restart(&self, name: &str, ws: Option<&str>) -> Result<McpServerInfo, McpError> {
        let server = match ws {
            Some(ws) => lock(&self.inner.projects)
                .get(ws)
                .and_then(|p| p.iter().find(|s| s.spec.name == name).cloned()),
            None => self.server(None, name).or_else(|| {
                lock(&self.inner.projects)
                    .values()
                    .flatten()
                    .find(|s| s.spec.name == name)
                    .cloned()
            }),
        }
        .ok_or_else(|| McpError::NotFound(name.to_owned()))?;
        if !server.spec.enabled {
            return Err(McpError::Disabled(name.to_owned()));
        }
        if server.unapproved() {
            return Err(McpError::Unapproved(name.to_owned()));
        }
        server.restart(&self.inner.tracker);
        Ok(server.info())
    }

    /// Reads workspace `ws`'s `.mcp.json` (in `root`) and brings its project servers in line:
    /// a new or changed definition is a new, unapproved server (the old one is stopped), a
    /// removed one is stopped. Returns the servers waiting for approval, for the run layer to
    /// ask about.
    pub(crate) fn sync_project(&self, ws: &str, root: &Path) -> Vec<Unapproved> {
        let file = match project::read(root) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(workspace = %ws, error = %e, "ignoring the workspace's .mcp.json");
                project::ProjectFile::default()
            }
        };
        for (name, why) in &file.rejected {
            tracing::warn!(workspace = %ws, server = %name, reason = %why, "ignoring a server of .mcp.json");
        }
        let mut projects = lock(&self.inner.projects);
        let old = projects.remove(ws).unwrap_or_default();
        let mut next = Vec::new();
        for p in file.servers {
            match old.iter().find(|s| {
                s.spec.name == p.spec.name && s.fingerprint.as_deref() == Some(&p.fingerprint)
            }) {
                Some(kept) => next.push(kept.clone()),
                None => next.push(Arc::new(Server::project(
                    p.spec,
                    self.inner.key_vars.clone(),
                    self.inner.shutdown.child_token(),
                    ws,
                    p.fingerprint,
                ))),
            }
        }
        for s in &old {
            if !next.iter().any(|n| Arc::ptr_eq(n, s)) {
                s.retire();
            }
        }
        let pending = next
            .iter()
            .filter(|s| s.unapproved())
            .map(|s| Unapproved {
                name: s.spec.name.clone(),
                fingerprint: s.fingerprint.clone().unwrap_or_default(),
                command_line: s.spec.command_line(),
                definition: serde_json::from_str(s.fingerprint.as_deref().unwrap_or("null"))
                    .unwrap_or(Value::Null),
            })
            .collect();
        if !next.is_empty() {
            projects.insert(ws.to_owned(), next);
        }
        pending
    }

    /// A client approved (or the store remembered approving) a project server's definition.
    pub(crate) fn approve(&self, ws: &str, name: &str, fingerprint: &str) {
        if let Some(p) = lock(&self.inner.projects).get(ws) {
            for s in p
                .iter()
                .filter(|s| s.spec.name == name && s.fingerprint.as_deref() == Some(fingerprint))
            {
                s.approve();
            }
        }
    }

    /// A client refused a project server for `session`: not asked again in that session.
    pub(crate) fn deny(&self, session: &str, ws: &str, u: &Unapproved) {
        lock(&self.inner.denied).insert((
            session.to_owned(),
            ws.to_owned(),
            u.name.clone(),
            u.fingerprint.clone(),
        ));
    }

    pub(crate) fn denied(&self, session: &str, ws: &str, u: &Unapproved) -> bool {
        lock(&self.inner.denied).contains(&(
            session.to_owned(),
            ws.to_owned(),
            u.name.clone(),
            u.fingerprint.clone(),
        ))
    }

    /// The tools to offer a run of workspace `ws`: every ready server's tools. Servers not
    /// started yet are started, and each starting server is waited for (at most its
    /// `startup_timeout`), so the first run sees their tools; a failed or unapproved server's
    /// tools are left out.
    pub(crate) async fn tool_specs(&self, ws: Option<&str>) -> Vec<ToolSpec> {
        if self.inner.shutdown.is_cancelled() {
            return Vec::new();
        }
        let servers = self.servers_for(ws);
        let waits = servers.iter().filter(|s| s.spec.enabled).map(|s| {
            s.ensure_started(&self.inner.tracker);
            s.wait_settled(s.spec.startup_timeout + Duration::from_secs(1))
        });
        futures::future::join_all(waits).await;
        servers.iter().flat_map(|s| s.offered()).collect()
    }

    /// The tools ready servers offer now, without starting any: what a step after the first
    /// offers. A server whose `tools/list_changed` notice arrived is waited for (at most its
    /// call `timeout`) until it has re-listed, so the step sees the announced list.
    pub(crate) async fn current_specs(&self, ws: Option<&str>) -> Vec<ToolSpec> {
        let servers = self.servers_for(ws);
        let waits = servers.iter().map(|s| s.wait_listed(s.spec.timeout));
        futures::future::join_all(waits).await;
        servers.iter().flat_map(|s| s.offered()).collect()
    }

    /// Whether an MCP tool (model-facing name) runs without asking: its server's `allow` list.
    pub(crate) fn allowed(&self, ws: Option<&str>, name: &str) -> bool {
        split_name(name)
            .and_then(|(server, tool)| Some((self.server(ws, server)?, tool)))
            .is_some_and(|(s, tool)| s.spec.allow.iter().any(|a| a == tool))
    }

    /// A one-line summary of a call for permission prompts: the server's command line names
    /// what will run.
    pub(crate) fn title(&self, ws: Option<&str>, name: &str) -> String {
        match split_name(name).and_then(|(server, tool)| Some((self.server(ws, server)?, tool))) {
            Some((s, tool)) => format!(
                "MCP tool {tool} of server {} ({})",
                s.spec.name,
                s.spec.command_line()
            ),
            None => name.to_owned(),
        }
    }

    /// Calls an MCP tool for the model. Every failure is a tool error naming the server and the
    /// reason; cancellation (`cancel`) drops the call, which sends the server
    /// `notifications/cancelled`.
    pub(crate) async fn call(
        &self,
        ws: Option<&str>,
        name: &str,
        input: &str,
        cancel: &CancellationToken,
        max_output: usize,
    ) -> ToolOutput {
        let Some((server_name, tool)) = split_name(name) else {
            return ToolOutput::error(format!("Unknown tool `{name}`."));
        };
        let Some(server) = self.server(ws, server_name) else {
            return ToolOutput::error(format!(
                "Unknown tool `{name}`: no MCP server is named {server_name:?}."
            ));
        };
        let args = match parse_arguments(input) {
            Ok(a) => a,
            Err(e) => return ToolOutput::error(format!("Invalid input for {name}: {e}")),
        };
        let conn = match server.connection() {
            Ok(c) => c,
            Err((state, why)) => {
                return ToolOutput::error(format!(
                    "The MCP server {server_name} is {}{}; the tool was not called. Try again \
                     later or use another tool.",
                    state_words(state),
                    why.map(|w| format!(" ({w})")).unwrap_or_default()
                ));
            }
        };
        let timeout = server.spec.timeout;
        let call = conn.call_tool(tool, args);
        let out = tokio::select! {
            r = call => r,
            _ = tokio::time::sleep(timeout) => {
                return ToolOutput::error(format!(
                    "The MCP server {server_name} did not answer {tool} within {}; the call was \
                     cancelled.",
                    humantime::format_duration(timeout)
                ));
            }
            _ = cancel.cancelled() => return ToolOutput::cancelled(),
        };
        match out {
            Ok(result) => {
                let c = convert::result(server_name, tool, &result);
                ToolOutput {
                    content: crate::tools::cap_text(&c.text, max_output),
                    is_error: c.is_error,
                    metadata: Some(c.metadata),
                }
            }
            Err(sdk::SdkError::Closed) => ToolOutput::error(format!(
                "The MCP server {server_name} exited during the call to {tool}; it is being \
                 restarted. The call may or may not have taken effect."
            )),
            Err(e) => ToolOutput::error(format!(
                "The MCP server {server_name} failed the call to {tool}: {e}"
            )),
        }
    }

    /// Stops every server and waits (bounded) for their processes to end.
    pub async fn shutdown(&self, within: Duration) {
        self.inner.shutdown.cancel();
        self.inner.tracker.close();
        let _ = tokio::time::timeout(within, self.inner.tracker.wait()).await;
    }
}

fn state_words(state: McpServerState) -> &'static str {
    match state {
        McpServerState::Idle => "not started",
        McpServerState::Starting => "starting (or restarting)",
        McpServerState::Ready => "ready",
        McpServerState::Failed => "not running",
        McpServerState::Disabled => "disabled",
        McpServerState::Unapproved => "not approved for this workspace",
    }
}

/// The model's input as a `tools/call` arguments object. Empty input reads as `{}`.
fn parse_arguments(input: &str) -> Result<Map<String, Value>, String> {
    let input = input.trim();
    if input.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(input) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("expected a JSON object of the tool's parameters".to_owned()),
        Err(e) => Err(format!(
            "not valid JSON ({e}); send a JSON object of the tool's parameters"
        )),
    }
}
