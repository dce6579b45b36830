//! A step's tool calls: each announced, prepared, permitted (asking the session's clients when
//! needed) and run in order, and every call answered with a result — also when the run is
//! cancelled half-way, so the conversation stays valid for the next turn.

use std::sync::Arc;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crush_protocol::{Part, PermissionDecision, PermissionRequestParams, SessionEvent, ToolStatus};

use super::{RunMeta, Runtime, SessionRt};
use crate::model::{ChatMessage, ToolCall};
use crate::store::new_id;
use crate::sync::lock;
use crate::tools::{ToolContext, ToolOutput};

/// A step's tool results: as stored (parts of a `tool` message) and as sent to the model.
#[derive(Default)]
pub(super) struct ToolResults {
    pub parts: Vec<Part>,
    pub messages: Vec<ChatMessage>,
}

impl Runtime {
    /// Runs a step's tool calls in order, asking for permission where needed. Every call gets
    /// a result, also when the run is cancelled half-way, so the conversation stays valid for
    /// the next turn.
    pub(super) async fn run_tools(
        self: &Arc<Self>,
        s: &SessionRt,
        run: &RunMeta,
        token: &CancellationToken,
        ctx: &ToolContext,
        message_id: &str,
        calls: &[ToolCall],
    ) -> ToolResults {
        let mut out = ToolResults::default();
        for call in calls {
            let input: Value = serde_json::from_str(&call.input)
                .unwrap_or_else(|_| Value::String(call.input.clone()));
            lock(&s.inner).events.publish(
                Some(&run.run_id),
                SessionEvent::ToolCallStarted {
                    message_id: message_id.to_owned(),
                    tool_call_id: call.id.clone(),
                    tool: call.name.clone(),
                    input: input.clone(),
                },
            );
            let (status, output) = if token.is_cancelled() {
                (
                    ToolStatus::Cancelled,
                    tool_error("the run was cancelled before this tool ran"),
                )
            } else {
                self.run_tool(s, run, token, ctx, call, input).await
            };
            let status = if status == ToolStatus::Completed && output.is_error {
                ToolStatus::Failed
            } else {
                status
            };
            lock(&s.inner).events.publish(
                Some(&run.run_id),
                SessionEvent::ToolCallFinished {
                    message_id: message_id.to_owned(),
                    tool_call_id: call.id.clone(),
                    tool: call.name.clone(),
                    status,
                    output: output.content.clone(),
                    metadata: output.metadata.clone(),
                },
            );
            out.parts.push(Part::ToolResult {
                tool_call_id: call.id.clone(),
                name: call.name.clone(),
                content: output.content.clone(),
                status,
                is_error: Some(output.is_error),
                metadata: output.metadata.clone(),
            });
            out.messages.push(ChatMessage::ToolResult {
                call_id: call.id.clone(),
                name: call.name.clone(),
                content: output.content,
                is_error: output.is_error,
            });
        }
        out
    }

    /// One tool call: prepare (validate, resolve paths, compute the diff), ask if needed, run.
    async fn run_tool(
        self: &Arc<Self>,
        s: &SessionRt,
        run: &RunMeta,
        token: &CancellationToken,
        ctx: &ToolContext,
        call: &ToolCall,
        input: Value,
    ) -> (ToolStatus, ToolOutput) {
        if ctx.root.as_os_str().is_empty() {
            return (
                ToolStatus::Failed,
                tool_error("the workspace's directory is unknown; tools are unavailable"),
            );
        }
        if crate::mcp::split_name(&call.name).is_some() {
            return self.run_mcp_tool(s, run, token, ctx, call, input).await;
        }
        let prepared = match crate::tools::prepare(ctx, &call.name, &call.input).await {
            Ok(p) => p,
            Err(out) => return (ToolStatus::Failed, out),
        };
        if crate::tools::needs_permission(&call.name)
            && !self.allowed_without_asking(&s.id, run, &call.name, prepared.command.as_deref())
        {
            let (title, diff) = (prepared.title.clone(), prepared.diff.clone());
            let ask = (call.id.as_str(), call.name.as_str(), title, diff, input);
            if let Err(end) = self.ask(s, run, token, ask).await {
                return end;
            }
        }
        if token.is_cancelled() {
            return (
                ToolStatus::Cancelled,
                tool_error("the run was cancelled before this tool ran"),
            );
        }
        let out = prepared.run(ctx).await;
        if token.is_cancelled() {
            return (ToolStatus::Cancelled, out);
        }
        (ToolStatus::Completed, out)
    }
}

impl Runtime {
    /// The tools offered to the model: the built-in ones, then every ready MCP server's —
    /// global ones and those of the workspace's `.mcp.json` that a client approved. A project
    /// server not approved yet is asked about first (a `permission/request` whose tool is
    /// `mcp` and whose title names the command line); `allow` and `allowSession` approve it
    /// for the workspace, remembered in the store; `deny` leaves it stopped and is not asked
    /// again in this session.
    pub(super) async fn offered_tools(
        self: &Arc<Self>,
        s: &SessionRt,
        run: &RunMeta,
        token: &CancellationToken,
        root: Option<&std::path::Path>,
    ) -> Vec<crate::model::ToolSpec> {
        let Some(root) = root else {
            return Vec::new();
        };
        let ws = s.ws().id.clone();
        for u in self.mcp.sync_project(&ws, root) {
            match self.store.mcp_approved(&ws, &u.name, &u.fingerprint).await {
                Ok(true) => {
                    self.mcp.approve(&ws, &u.name, &u.fingerprint);
                    continue;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read MCP approvals; not starting the project server");
                    continue;
                }
            }
            if self.mcp.denied(&s.id, &ws, &u) || token.is_cancelled() {
                continue;
            }
            let title = format!(
                "Start the MCP server {} of this workspace's .mcp.json: {}",
                u.name, u.command_line
            );
            let id = format!("mcp-server:{}", u.name);
            let ask = (id.as_str(), "mcp", title, None, u.definition.clone());
            match self.ask(s, run, token, ask).await {
                Ok(()) => {
                    if let Err(e) = self.store.approve_mcp(&ws, &u.name, &u.fingerprint).await {
                        tracing::warn!(error = %e, "cannot remember the MCP approval");
                    }
                    self.mcp.approve(&ws, &u.name, &u.fingerprint);
                }
                Err((ToolStatus::Denied, _)) => self.mcp.deny(&s.id, &ws, &u),
                Err(_) => {}
            }
        }
        let mut tools = crate::tools::specs();
        tools.extend(self.mcp.tool_specs(Some(&ws)).await);
        tools
    }

    /// The tools a step after the turn's first offers: the built-in ones and what the ready MCP
    /// servers offer now (a `tools/list_changed` applies from the next step on). Also what
    /// `session/compact` counts, so its token figures match a turn's.
    pub(super) async fn current_tools(&self, ws: &str) -> Vec<crate::model::ToolSpec> {
        let mut tools = crate::tools::specs();
        tools.extend(self.mcp.current_specs(Some(ws)).await);
        tools
    }

    /// Asks the session's clients whether a call may run — `(tool call id, tool, title, diff,
    /// input)` —; `Err` is the call's end when the answer is no (or the run was cancelled
    /// while waiting).
    async fn ask(
        self: &Arc<Self>,
        s: &SessionRt,
        run: &RunMeta,
        token: &CancellationToken,
        (tool_call_id, tool, title, diff, input): (&str, &str, String, Option<String>, Value),
    ) -> Result<(), (ToolStatus, ToolOutput)> {
        let params = PermissionRequestParams {
            request_id: new_id(),
            session_id: s.id.clone(),
            run_id: run.run_id.clone(),
            tool_call_id: tool_call_id.to_owned(),
            tool: tool.to_owned(),
            title: title.clone(),
            input,
            diff,
        };
        match self.ask_permission(s, token, params).await {
            Some(PermissionDecision::Allow | PermissionDecision::AllowSession) => Ok(()),
            Some(PermissionDecision::Deny | PermissionDecision::Deferred) => Err((
                ToolStatus::Denied,
                tool_error(format!(
                    "The user denied this action ({title} was not run). Do not retry it; \
                     ask the user or take another approach."
                )),
            )),
            None => Err((
                ToolStatus::Cancelled,
                tool_error("the run was cancelled while waiting for permission"),
            )),
        }
    }

    /// An MCP tool call (`mcp__<server>__<tool>`): asks unless the server's `allow` list, the
    /// session's grants or yolo let it run, then calls the server (`crate::mcp`).
    async fn run_mcp_tool(
        self: &Arc<Self>,
        s: &SessionRt,
        run: &RunMeta,
        token: &CancellationToken,
        ctx: &ToolContext,
        call: &ToolCall,
        input: Value,
    ) -> (ToolStatus, ToolOutput) {
        let ws = s.ws().id.clone();
        let ws = Some(ws.as_str());
        if !self.mcp.allowed(ws, &call.name)
            && !self.allowed_without_asking(&s.id, run, &call.name, None)
        {
            let title = self.mcp.title(ws, &call.name);
            let ask = (call.id.as_str(), call.name.as_str(), title, None, input);
            if let Err(end) = self.ask(s, run, token, ask).await {
                return end;
            }
        }
        if token.is_cancelled() {
            return (
                ToolStatus::Cancelled,
                tool_error("the run was cancelled before this tool ran"),
            );
        }
        let out = self
            .mcp
            .call(
                ws,
                &call.name,
                &call.input,
                token,
                ctx.limits.output_max_bytes,
            )
            .await;
        if token.is_cancelled() {
            return (ToolStatus::Cancelled, out);
        }
        (ToolStatus::Completed, out)
    }
}

/// A tool result the model sees as an error.
fn tool_error(message: impl Into<String>) -> ToolOutput {
    ToolOutput {
        content: message.into(),
        is_error: true,
        metadata: None,
    }
}
