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
            if let Err(end) = self.ask(s, run, token, call, title, diff, input).await {
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
    /// The tools offered to the model: the built-in ones, then every ready MCP server's.
    pub(super) async fn offered_tools(&self) -> Vec<crate::model::ToolSpec> {
        let mut tools = crate::tools::specs();
        tools.extend(self.mcp.tool_specs().await);
        tools
    }

    /// Asks the session's clients whether a call may run; `Err` is the call's end when the
    /// answer is no (or the run was cancelled while waiting).
    #[allow(clippy::too_many_arguments)]
    async fn ask(
        self: &Arc<Self>,
        s: &SessionRt,
        run: &RunMeta,
        token: &CancellationToken,
        call: &ToolCall,
        title: String,
        diff: Option<String>,
        input: Value,
    ) -> Result<(), (ToolStatus, ToolOutput)> {
        let params = PermissionRequestParams {
            request_id: new_id(),
            session_id: s.id.clone(),
            run_id: run.run_id.clone(),
            tool_call_id: call.id.clone(),
            tool: call.name.clone(),
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
        if !self.mcp.allowed(&call.name)
            && !self.allowed_without_asking(&s.id, run, &call.name, None)
        {
            let title = self.mcp.title(&call.name);
            if let Err(end) = self.ask(s, run, token, call, title, None, input).await {
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
            .call(&call.name, &call.input, token, ctx.limits.output_max_bytes)
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
