//! MCP servers as tools: one supervised pool per daemon, shared by every session and client.
//!
//! - `config.rs` — the `[mcp.servers.NAME]` tables, checked.
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
mod sdk;
mod supervise;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crush_protocol::{McpServerInfo, McpServerState};

use config::ServerSpec;
pub(crate) use convert::split_name;
use supervise::Server;

use crate::model::ToolSpec;
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
}

impl Mcp {
    /// The pool of `specs`; nothing starts until a run needs a server. `key_vars` are the
    /// providers' key variables, never passed to a server.
    pub fn new(specs: Vec<ServerSpec>, key_vars: Vec<String>) -> Self {
        let key_vars: Arc<[String]> = key_vars.into();
        Self {
            inner: Arc::new(Inner {
                servers: specs
                    .into_iter()
                    .map(|s| Arc::new(Server::new(s, key_vars.clone())))
                    .collect(),
                tracker: TaskTracker::new(),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    fn server(&self, name: &str) -> Option<&Arc<Server>> {
        self.inner.servers.iter().find(|s| s.spec.name == name)
    }

    /// Every server's state (`mcp/list`).
    pub fn list(&self) -> Vec<McpServerInfo> {
        self.inner.servers.iter().map(|s| s.info()).collect()
    }

    /// Stops a server (if running) and starts it again now, without backoff (`mcp/restart`).
    pub fn restart(&self, name: &str) -> Result<McpServerInfo, McpError> {
        let server = self
            .server(name)
            .ok_or_else(|| McpError::NotFound(name.to_owned()))?;
        if !server.spec.enabled {
            return Err(McpError::Disabled(name.to_owned()));
        }
        server.restart(&self.inner.tracker, &self.inner.shutdown);
        Ok(server.info())
    }

    /// The tools to offer the model for the next step: every ready server's tools. Servers
    /// not started yet are started, and each starting server is waited for (at most its
    /// `startup_timeout`), so the first run sees their tools; a failed server's tools are left
    /// out.
    pub(crate) async fn tool_specs(&self) -> Vec<ToolSpec> {
        if self.inner.shutdown.is_cancelled() {
            return Vec::new();
        }
        let waits = self
            .inner
            .servers
            .iter()
            .filter(|s| s.spec.enabled)
            .map(|s| {
                s.ensure_started(&self.inner.tracker, &self.inner.shutdown);
                s.wait_settled(s.spec.startup_timeout + Duration::from_secs(1))
            });
        futures::future::join_all(waits).await;
        self.inner
            .servers
            .iter()
            .flat_map(|s| s.offered())
            .collect()
    }

    /// Whether an MCP tool (model-facing name) runs without asking: its server's `allow` list.
    pub(crate) fn allowed(&self, name: &str) -> bool {
        split_name(name)
            .and_then(|(server, tool)| Some((self.server(server)?, tool)))
            .is_some_and(|(s, tool)| s.spec.allow.iter().any(|a| a == tool))
    }

    /// A one-line summary of a call for permission prompts: the server's command line names
    /// what will run.
    pub(crate) fn title(&self, name: &str) -> String {
        match split_name(name).and_then(|(server, tool)| Some((self.server(server)?, tool))) {
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
        name: &str,
        input: &str,
        cancel: &CancellationToken,
        max_output: usize,
    ) -> ToolOutput {
        let Some((server_name, tool)) = split_name(name) else {
            return ToolOutput::error(format!("Unknown tool `{name}`."));
        };
        let Some(server) = self.server(server_name) else {
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
