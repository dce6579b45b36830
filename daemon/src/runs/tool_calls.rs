//! A step's tool calls: each announced, prepared, permitted (asking the session's clients when
//! needed) and run in order, and every call answered with a result — also when the run is
//! cancelled half-way, so the conversation stays valid for the next turn.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crush_protocol::{PermissionDecision, PermissionRequestParams, SessionEvent};

use super::{RunMeta, Runtime, SessionRt};
use crate::model::{ChatMessage, ToolCall};
use crate::store::new_id;
use crate::sync::lock;
use crate::tools::{ToolContext, ToolOutput};

/// A step's tool results: as stored (parts of a `tool` message) and as sent to the model.
#[derive(Default)]
pub(super) struct ToolResults {
    pub parts: Vec<Value>,
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
                    "cancelled",
                    tool_error("the run was cancelled before this tool ran"),
                )
            } else {
                self.run_tool(s, run, token, ctx, call, input).await
            };
            let status = if status == "completed" && output.is_error {
                "failed"
            } else {
                status
            };
            lock(&s.inner).events.publish(
                Some(&run.run_id),
                SessionEvent::ToolCallFinished {
                    message_id: message_id.to_owned(),
                    tool_call_id: call.id.clone(),
                    tool: call.name.clone(),
                    status: status.to_owned(),
                    output: output.content.clone(),
                    metadata: output.metadata.clone(),
                },
            );
            let mut part = json!({
                "type": "toolResult",
                "toolCallId": call.id,
                "name": call.name,
                "content": output.content,
                "isError": output.is_error,
                "status": status,
            });
            if let Some(m) = &output.metadata {
                part["metadata"] = m.clone();
            }
            out.parts.push(part);
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
    ) -> (&'static str, ToolOutput) {
        if ctx.root.as_os_str().is_empty() {
            return (
                "failed",
                tool_error("the workspace's directory is unknown; tools are unavailable"),
            );
        }
        let prepared = match crate::tools::prepare(ctx, &call.name, &call.input).await {
            Ok(p) => p,
            Err(out) => return ("failed", out),
        };
        if crate::tools::needs_permission(&call.name)
            && !self.allowed_without_asking(&s.id, run, &call.name, prepared.command.as_deref())
        {
            let params = PermissionRequestParams {
                request_id: new_id(),
                session_id: s.id.clone(),
                run_id: run.run_id.clone(),
                tool_call_id: call.id.clone(),
                tool: call.name.clone(),
                title: prepared.title.clone(),
                input,
                diff: prepared.diff.clone(),
            };
            match self.ask_permission(s, token, params).await {
                Some(PermissionDecision::Allow | PermissionDecision::AllowSession) => {}
                Some(PermissionDecision::Deny | PermissionDecision::Deferred) => {
                    return (
                        "denied",
                        tool_error(format!(
                            "The user denied this action ({} was not run). Do not retry it; \
                             ask the user or take another approach.",
                            prepared.title
                        )),
                    );
                }
                None => {
                    return (
                        "cancelled",
                        tool_error("the run was cancelled while waiting for permission"),
                    );
                }
            }
        }
        if token.is_cancelled() {
            return (
                "cancelled",
                tool_error("the run was cancelled before this tool ran"),
            );
        }
        let out = prepared.run(ctx).await;
        if token.is_cancelled() {
            return ("cancelled", out);
        }
        ("completed", out)
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
