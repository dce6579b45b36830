//! One server's life, run by its supervisor task: start (spawn, `initialize`, `tools/list`,
//! bounded by the server's `timeout`) → ready (calls go through; `tools/list_changed` re-lists)
//! → it dies or is restarted → failed, retried after a backoff (0.5 s doubling to 30 s, back to
//! the start once it stayed up a minute) — until the daemon shuts down, which stops the process.
//!
//! The state `mcp/list` shows and calls read lives behind one lock per server, written only by
//! the supervisor (and by `ensure_started`, which launches it); a `watch` channel tells waiters
//! that it changed.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crush_protocol::{McpRejectedTool, McpScope, McpServerInfo, McpServerState};

use super::config::ServerSpec;
use super::convert;
use super::process::{self, ServerProcess};
use super::sdk::{self, Connection};
use crate::model::ToolSpec;
use crate::sync::lock;

/// A server up this long has its backoff reset.
const STABLE: Duration = Duration::from_secs(60);
/// The first and the longest wait before a restart.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a stopped server gets to exit on its own (stdin closed) before SIGTERM, and then
/// before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// How many of a server's last stderr lines a start failure quotes.
const STDERR_TAIL: usize = 5;

pub(super) struct Server {
    pub spec: ServerSpec,
    pub scope: McpScope,
    /// A project server's workspace and approved definition.
    pub workspace_id: Option<String>,
    pub fingerprint: Option<String>,
    key_vars: Arc<[String]>,
    /// Fired to stop this server for good (shutdown, or its `.mcp.json` entry changed).
    stop: CancellationToken,
    state: Mutex<State>,
    changed: watch::Sender<()>,
    restart: Notify,
    /// `tools/list_changed` notices from the server (kept across restarts).
    list_changed: Arc<sdk::ListChanged>,
    /// The server's last stderr lines, for start failures.
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

struct State {
    phase: McpServerState,
    /// The supervisor was launched (it runs until shutdown).
    launched: bool,
    conn: Option<Connection>,
    offered: Vec<ToolSpec>,
    /// How many `tools/list_changed` notices had arrived when `offered` was listed.
    listed: u64,
    tools: Vec<String>,
    rejected: Vec<McpRejectedTool>,
    last_error: Option<String>,
    pid: Option<u32>,
    restarts: u32,
    info: sdk::ServerInfo,
}

/// A started server: its process (none for an HTTP server), the connection, and the future
/// that ends with it.
struct Live {
    process: Option<ServerProcess>,
    conn: Connection,
    ended: sdk::Ended,
}

impl Live {
    async fn stop(self) {
        // Closing the connection closes the server's stdin: a well-behaved server exits, and
        // the tool guard takes it as its cue to end the group.
        self.conn.close();
        drop(self.ended);
        if let Some(p) = self.process {
            p.stop(STOP_GRACE).await;
        }
    }
}

/// Ends when the process exits (never for an HTTP server, which has none).
async fn exited(process: &mut Option<ServerProcess>) -> String {
    match process.as_mut() {
        Some(p) => match p.child.wait().await {
            Ok(st) => format!("it exited ({st})"),
            Err(e) => format!("waiting for it failed: {e}"),
        },
        None => std::future::pending().await,
    }
}

impl Server {
    /// A global server (`config.toml`).
    pub(super) fn global(
        spec: ServerSpec,
        key_vars: Arc<[String]>,
        stop: CancellationToken,
    ) -> Self {
        Self::new(spec, key_vars, stop, McpScope::Global, None, None)
    }

    /// A project server (`.mcp.json`), unapproved until [`Self::approve`].
    pub(super) fn project(
        spec: ServerSpec,
        key_vars: Arc<[String]>,
        stop: CancellationToken,
        workspace_id: &str,
        fingerprint: String,
    ) -> Self {
        Self::new(
            spec,
            key_vars,
            stop,
            McpScope::Project,
            Some(workspace_id.to_owned()),
            Some(fingerprint),
        )
    }

    fn new(
        spec: ServerSpec,
        key_vars: Arc<[String]>,
        stop: CancellationToken,
        scope: McpScope,
        workspace_id: Option<String>,
        fingerprint: Option<String>,
    ) -> Self {
        let phase = if !spec.enabled {
            McpServerState::Disabled
        } else if scope == McpScope::Project {
            McpServerState::Unapproved
        } else {
            McpServerState::Idle
        };
        Self {
            spec,
            scope,
            workspace_id,
            fingerprint,
            key_vars,
            stop,
            state: Mutex::new(State {
                phase,
                launched: false,
                conn: None,
                offered: Vec::new(),
                listed: 0,
                tools: Vec::new(),
                rejected: Vec::new(),
                last_error: None,
                pid: None,
                restarts: 0,
                info: sdk::ServerInfo::default(),
            }),
            changed: watch::Sender::new(()),
            restart: Notify::new(),
            list_changed: Arc::default(),
            stderr_tail: Arc::default(),
        }
    }

    pub(super) fn info(&self) -> McpServerInfo {
        let s = lock(&self.state);
        McpServerInfo {
            name: self.spec.name.clone(),
            scope: self.scope,
            workspace_id: self.workspace_id.clone(),
            state: s.phase,
            command: self.spec.command_line(),
            last_error: s.last_error.clone(),
            pid: s.pid,
            tool_count: s.tools.len(),
            tools: s.tools.clone(),
            rejected_tools: s.rejected.clone(),
            restarts: s.restarts,
            server_name: s.info.name.clone(),
            server_version: s.info.version.clone(),
            protocol_version: s.info.protocol_version.clone(),
        }
    }

    /// The tools offered to the model while the server is ready.
    pub(super) fn offered(&self) -> Vec<ToolSpec> {
        let s = lock(&self.state);
        if s.phase == McpServerState::Ready {
            s.offered.clone()
        } else {
            Vec::new()
        }
    }

    /// The connection for a call, or the state and last error when it is not ready.
    pub(super) fn connection(&self) -> Result<Connection, (McpServerState, Option<String>)> {
        let s = lock(&self.state);
        match (&s.conn, s.phase) {
            (Some(c), McpServerState::Ready) => Ok(c.clone()),
            _ => Err((s.phase, s.last_error.clone())),
        }
    }

    /// Whether it waits for a client's approval.
    pub(super) fn unapproved(&self) -> bool {
        lock(&self.state).phase == McpServerState::Unapproved
    }

    /// A client approved the project server: it may start.
    pub(super) fn approve(&self) {
        self.update(|s| {
            if s.phase == McpServerState::Unapproved {
                s.phase = McpServerState::Idle;
            }
        });
    }

    /// Stops the server for good (its supervisor stops the process).
    pub(super) fn retire(&self) {
        self.stop.cancel();
    }

    /// Launches the supervisor if it is not running (the server's first need).
    pub(super) fn ensure_started(self: &Arc<Self>, tracker: &TaskTracker) {
        {
            let mut s = lock(&self.state);
            if s.launched
                || !self.spec.enabled
                || s.phase == McpServerState::Unapproved
                || self.stop.is_cancelled()
            {
                return;
            }
            s.launched = true;
            s.phase = McpServerState::Starting;
        }
        self.changed.send_replace(());
        let me = self.clone();
        let t = tracker.clone();
        tracker.spawn(async move { me.supervise(t).await });
    }

    /// `mcp/restart`: starts a server that never started, else asks its supervisor to restart
    /// it now.
    pub(super) fn restart(self: &Arc<Self>, tracker: &TaskTracker) {
        if lock(&self.state).launched {
            self.restart.notify_one();
        } else {
            self.ensure_started(tracker);
        }
    }

    /// Waits, at most `max`, until a ready server has re-listed its tools after its last
    /// `tools/list_changed` notice, so a step reads the list the server announced.
    pub(super) async fn wait_listed(&self, max: Duration) {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let stale = {
                let s = lock(&self.state);
                s.phase == McpServerState::Ready && s.listed < self.list_changed.count()
            };
            if !stale {
                return;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return,
            }
        }
    }

    /// Waits, at most `max`, until the server is no longer starting.
    pub(super) async fn wait_settled(&self, max: Duration) {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let phase = lock(&self.state).phase;
            if !matches!(phase, McpServerState::Idle | McpServerState::Starting) {
                return;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return,
            }
        }
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut lock(&self.state));
        self.changed.send_replace(());
    }

    fn fail(&self, why: String) {
        warn!(server = %self.spec.name, error = %why, "MCP server failed");
        self.update(|s| {
            s.phase = McpServerState::Failed;
            s.conn = None;
            s.pid = None;
            s.last_error = Some(why);
        });
    }

    /// Records a fresh tool list, listed when `seen` list-changed notices had arrived.
    fn set_tools(&self, tools: &[serde_json::Value], seen: u64) {
        let mut offered = Vec::new();
        let mut rejected = Vec::new();
        for t in tools {
            match convert::tool_spec(&self.spec.name, t) {
                Ok(spec) => offered.push(spec),
                Err((name, reason)) => {
                    warn!(server = %self.spec.name, tool = %name, %reason, "MCP tool not offered");
                    rejected.push(McpRejectedTool { name, reason });
                }
            }
        }
        let names = offered
            .iter()
            .filter_map(|t| convert::split_name(&t.name).map(|(_, tool)| tool.to_owned()))
            .collect();
        self.update(|s| {
            s.offered = offered;
            s.listed = seen;
            s.tools = names;
            s.rejected = rejected;
        });
    }

    async fn supervise(self: Arc<Self>, tracker: TaskTracker) {
        let shutdown = self.stop.clone();
        let mut failures: u32 = 0;
        loop {
            self.update(|s| {
                s.phase = McpServerState::Starting;
                s.conn = None;
                s.pid = None;
            });
            let mut restart_requested = false;
            let started = tokio::select! {
                r = tokio::time::timeout(self.spec.startup_timeout, self.start(&tracker)) => Some(r),
                _ = self.restart.notified() => {
                    restart_requested = true;
                    None
                }
                _ = shutdown.cancelled() => {
                    self.update(|s| s.phase = McpServerState::Idle);
                    return;
                }
            };
            match started {
                None => {}
                Some(Err(_)) => {
                    failures += 1;
                    self.fail(format!(
                        "it did not finish starting (initialize and tools/list) within {} \
                         (startup_timeout)",
                        humantime::format_duration(self.spec.startup_timeout)
                    ));
                }
                Some(Ok(Err(why))) => {
                    failures += 1;
                    self.fail(why);
                }
                Some(Ok(Ok(mut live))) => {
                    let ready_at = Instant::now();
                    info!(
                        server = %self.spec.name,
                        pid = ?live.process.as_ref().and_then(ServerProcess::pid),
                        "MCP server ready"
                    );
                    let why = loop {
                        tokio::select! {
                            reason = exited(&mut live.process) => break reason,
                            reason = &mut live.ended => break reason,
                            _ = self.list_changed.notified() => {
                                let seen = self.list_changed.count();
                                match tokio::time::timeout(self.spec.timeout, live.conn.list_tools()).await {
                                    Ok(Ok(tools)) => self.set_tools(&tools, seen),
                                    Ok(Err(e)) => warn!(server = %self.spec.name, error = %e, "re-listing tools failed"),
                                    Err(_) => warn!(server = %self.spec.name, "re-listing tools timed out"),
                                }
                                // A failed re-list keeps the old list; steps stop waiting for it.
                                self.update(|s| s.listed = s.listed.max(seen));
                            }
                            _ = self.restart.notified() => {
                                restart_requested = true;
                                break "restarted by mcp/restart".to_owned();
                            }
                            _ = shutdown.cancelled() => {
                                live.stop().await;
                                self.update(|s| {
                                    s.phase = McpServerState::Idle;
                                    s.conn = None;
                                    s.pid = None;
                                });
                                return;
                            }
                        }
                    };
                    // Calls fail fast from here on.
                    self.update(|s| {
                        s.phase = McpServerState::Starting;
                        s.conn = None;
                    });
                    live.stop().await;
                    if ready_at.elapsed() >= STABLE {
                        failures = 0;
                    }
                    if !restart_requested {
                        failures += 1;
                        self.fail(why);
                    }
                }
            }
            if restart_requested {
                failures = 0;
            } else {
                let delay = backoff(failures);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = self.restart.notified() => failures = 0,
                    _ = shutdown.cancelled() => return,
                }
            }
            self.update(|s| s.restarts += 1);
        }
    }

    /// Connects to an HTTP server and lists its tools.
    async fn start_http(&self, url: &str) -> Result<Live, String> {
        let mut headers: Vec<(String, String)> = self
            .spec
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (header, var) in &self.spec.headers_env {
            let value = crate::secrets::var(var).ok_or_else(|| {
                format!(
                    "header {header} needs the environment variable {var}, which is not set in \
                     the daemon's environment"
                )
            })?;
            headers.push((header.clone(), value));
        }
        let fail = |e: sdk::SdkError| format!("{e} ({})", self.spec.command_line());
        let (conn, ended) = sdk::connect_http(url, &headers, self.list_changed.clone())
            .await
            .map_err(fail)?;
        let seen = self.list_changed.count();
        let tools = conn.list_tools().await.map_err(fail)?;
        self.set_tools(&tools, seen);
        let info = conn.info.clone();
        self.update(|s| {
            s.phase = McpServerState::Ready;
            s.conn = Some(conn.clone());
            s.last_error = None;
            s.info = info;
        });
        Ok(Live {
            process: None,
            conn,
            ended,
        })
    }

    /// Spawns the process (or connects, for an HTTP server), initializes the connection and
    /// lists the tools.
    async fn start(&self, tracker: &TaskTracker) -> Result<Live, String> {
        if let Some(url) = &self.spec.url {
            return self.start_http(url).await;
        }
        let cwd = self.spec.cwd.clone().unwrap_or_else(home_dir);
        let spawned = process::spawn(&self.spec, &cwd, &self.key_vars)
            .map_err(|e| format!("cannot start `{}`: {e}", self.spec.command_line()))?;
        lock(&self.stderr_tail).clear();
        let (stderr_done_tx, stderr_done) = tokio::sync::oneshot::channel::<()>();
        if let Some(stderr) = spawned.stderr {
            let name = self.spec.name.clone();
            let tail = self.stderr_tail.clone();
            tracker.spawn(async move {
                process::log_stderr(name, stderr, tail, STDERR_TAIL).await;
                let _ = stderr_done_tx.send(());
            });
        }
        let mut proc = spawned.process;
        let pid = proc.pid();
        self.update(|s| s.pid = pid);
        let connected = async {
            let (conn, ended) =
                sdk::connect(spawned.stdout, spawned.stdin, self.list_changed.clone()).await?;
            let seen = self.list_changed.count();
            let tools = conn.list_tools().await?;
            Ok::<_, sdk::SdkError>((conn, ended, tools, seen))
        }
        .await;
        match connected {
            Ok((conn, ended, tools, seen)) => {
                self.set_tools(&tools, seen);
                let info = conn.info.clone();
                self.update(|s| {
                    s.phase = McpServerState::Ready;
                    s.conn = Some(conn.clone());
                    s.last_error = None;
                    s.info = info;
                });
                Ok(Live {
                    process: Some(proc),
                    conn,
                    ended,
                })
            }
            Err(e) => {
                // Quote what the server said on its way out, when it exited.
                let exited = tokio::time::timeout(STOP_GRACE, proc.child.wait()).await;
                let _ = tokio::time::timeout(STOP_GRACE, stderr_done).await;
                let tail: Vec<String> = lock(&self.stderr_tail).iter().cloned().collect();
                let mut why = match exited {
                    Ok(Ok(st)) => format!("it exited during initialize ({st})"),
                    _ => format!("{e}"),
                };
                if !tail.is_empty() {
                    why.push_str(&format!("; its stderr ended with: {}", tail.join(" | ")));
                }
                proc.stop(STOP_GRACE).await;
                Err(why)
            }
        }
    }
}

/// 0.5 s, 1 s, 2 s, … at most 30 s.
fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(10);
    (BACKOFF_MIN * 2u32.pow(exp)).min(BACKOFF_MAX)
}

/// Where a global server runs when its table names no `cwd`.
fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| PathBuf::from("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(40), BACKOFF_MAX);
    }
}
