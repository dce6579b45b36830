//! A step's tool calls: each announced, prepared, permitted (asking the session's clients when
//! needed) and run in order, and every call answered with a result — also when the run is
//! cancelled half-way, so the conversation stays valid for the next turn.

use std::sync::Arc;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crush_protocol::{
    Part, PermissionDecision, PermissionRequestParams, PermissionResolution, PermissionSource,
    SandboxEscalation, SessionEvent, ToolStatus,
};

use super::permissions::{Basis, Decided};
use super::{RunMeta, Runtime, SessionRt};
use crate::mcp::{CallOutput, Owner};
use crate::model::{ChatMessage, ToolCall};
use crate::permission_rules::{self as rules, Subject};
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
            let is_mcp =
                crate::mcp::split_name(&call.name).is_some() && !ctx.root.as_os_str().is_empty();
            let (status, output, images) = if token.is_cancelled() {
                (
                    ToolStatus::Cancelled,
                    tool_error("the run was cancelled before this tool ran"),
                    Vec::new(),
                )
            } else if is_mcp {
                let (status, out) = self.run_mcp_tool(s, run, token, ctx, call, input).await;
                (status, out.output, out.images)
            } else {
                let (status, output) = self.run_tool(s, run, token, ctx, call, input).await;
                (status, output, Vec::new())
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
            // A tool's images are stored beside its result, naming the call.
            out.parts.extend(images.iter().map(|i| Part::Image {
                mime_type: i.mime_type.clone(),
                data: i.data.clone(),
                name: None,
                tool_call_id: Some(call.id.clone()),
            }));
            out.messages.push(ChatMessage::ToolResult {
                call_id: call.id.clone(),
                name: call.name.clone(),
                content: output.content,
                is_error: output.is_error,
                images,
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
        let prepared = match crate::tools::prepare(ctx, &call.name, &call.input).await {
            Ok(p) => p,
            Err(out) => return (ToolStatus::Failed, out),
        };
        let command = prepared.command.clone();
        if crate::tools::needs_permission(&call.name) {
            let ask = Ask {
                tool_call_id: &call.id,
                tool: &call.name,
                title: prepared.title.clone(),
                diff: prepared.diff.clone(),
                input: input.clone(),
                subject: Subject {
                    command: prepared.command.as_deref(),
                    path: prepared.path(),
                },
            };
            if let Err(end) = self.ask(s, run, token, ask, None).await {
                return end;
            }
        }
        if token.is_cancelled() {
            return (
                ToolStatus::Cancelled,
                tool_error("the run was cancelled before this tool ran"),
            );
        }
        // The session's sandbox as it is now: `session/setSandbox` applies from the next call.
        let mut ctx = ctx.clone();
        if call.name == "bash" {
            ctx.sandbox = self.sandboxes().await.policy(Some(&s.id), &ctx.root);
        }
        let (out, refused) = prepared.run_reporting(&ctx).await;
        if token.is_cancelled() {
            return (ToolStatus::Cancelled, out);
        }
        match ctx.sandbox.take() {
            Some(policy) if !refused.is_empty() => {
                let command = command.unwrap_or_default();
                self.escalate(
                    s,
                    run,
                    token,
                    &ctx,
                    call,
                    input,
                    (policy, refused, command),
                    out,
                )
                .await
            }
            _ => (ToolStatus::Completed, out),
        }
    }

    /// A `bash` command the sandbox refused: asks the session's clients whether to run it
    /// again unconfined (a separate `permission/request`, marked with `escalation`), and does
    /// so once if one allows it. `allowSession` allows only this run too.
    #[allow(clippy::too_many_arguments)]
    async fn escalate(
        self: &Arc<Self>,
        s: &SessionRt,
        run: &RunMeta,
        token: &CancellationToken,
        ctx: &ToolContext,
        call: &ToolCall,
        input: Value,
        (policy, refused, command): (crate::tools::sandbox::Policy, Vec<String>, String),
        confined: ToolOutput,
    ) -> (ToolStatus, ToolOutput) {
        let params = PermissionRequestParams {
            request_id: new_id(),
            session_id: s.id.clone(),
            run_id: run.run_id.clone(),
            tool_call_id: call.id.clone(),
            tool: call.name.clone(),
            title: format!("Run unconfined (outside the sandbox): {command}"),
            input,
            diff: None,
            // Not a rule to save: leaving the sandbox is decided each time.
            scopes: Vec::new(),
            suggested_pattern: None,
            escalation: Some(SandboxEscalation {
                mode: policy.mode,
                refused,
            }),
        };
        match self.ask_permission(s, token, params, None).await {
            Some(
                PermissionDecision::Allow
                | PermissionDecision::AllowSession
                | PermissionDecision::AllowAlways,
            ) => {}
            Some(PermissionDecision::Deny | PermissionDecision::Deferred) => {
                let mut out = confined;
                out.content.push_str(
                    "\nThe user did not allow running it outside the sandbox; do not retry it \
                     unconfined, take another approach or ask the user.",
                );
                return (ToolStatus::Completed, out);
            }
            None => return (ToolStatus::Cancelled, confined),
        }
        let prepared = match crate::tools::prepare(ctx, &call.name, &call.input).await {
            Ok(p) => p,
            Err(out) => return (ToolStatus::Failed, out),
        };
        let mut unconfined = ctx.clone();
        unconfined.sandbox = None;
        let mut out = prepared.run(&unconfined).await;
        out.content = format!(
            "The sandbox ({}) refused this command; the user allowed it to run once outside the \
             sandbox. The unconfined run:\n\n{}",
            policy.mode, out.content
        );
        if let Some(m) = out.metadata.as_mut() {
            m["unconfinedRerun"] = Value::Bool(true);
        }
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
            let ask = Ask {
                tool_call_id: &id,
                tool: "mcp",
                title,
                diff: None,
                input: u.definition.clone(),
                subject: Subject::default(),
            };
            match self.ask_client(s, run, token, ask).await {
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
        let owner = Owner {
            workspace: Some(&ws),
            session: Some(&s.id),
        };
        tools.extend(self.mcp.tool_specs(owner).await);
        tools
    }

    /// The tools a step after the turn's first offers: the built-in ones and what the ready MCP
    /// servers offer now (a `tools/list_changed` applies from the next step on). Also what
    /// `session/compact` counts, so its token figures match a turn's.
    pub(super) async fn current_tools(&self, s: &SessionRt) -> Vec<crate::model::ToolSpec> {
        let ws = s.ws().id.clone();
        let owner = Owner {
            workspace: Some(&ws),
            session: Some(&s.id),
        };
        let mut tools = crate::tools::specs();
        tools.extend(self.mcp.current_specs(owner).await);
        tools
    }

    /// Decides whether a call may run: without asking when yolo, a config rule, a session
    /// grant, a saved rule or `allowed` (an MCP server's `allow` list) lets it, else by asking
    /// the session's clients. The decision is in the audit log either way. `Err` is the call's
    /// end when the answer is no (or the run was cancelled while waiting).
    async fn ask(
        self: &Arc<Self>,
        s: &SessionRt,
        run: &RunMeta,
        token: &CancellationToken,
        ask: Ask<'_>,
        allowed: Option<Basis>,
    ) -> Result<(), (ToolStatus, ToolOutput)> {
        let basis = match allowed {
            Some(b) => Some(b),
            None => {
                self.allowed_without_asking(s, run, ask.tool, ask.subject)
                    .await
            }
        };
        if let Some(basis) = basis {
            let call = Decided {
                run_id: &run.run_id,
                tool_call_id: ask.tool_call_id,
                tool: ask.tool,
                title: &ask.title,
            };
            self.log_permission(s, call, PermissionResolution::Allow, basis, None)
                .await;
            return Ok(());
        }
        self.ask_client(s, run, token, ask).await
    }

    /// Asks the session's clients whether a call may run; `Err` is the call's end when the
    /// answer is no (or the run was cancelled while waiting).
    async fn ask_client(
        self: &Arc<Self>,
        s: &SessionRt,
        run: &RunMeta,
        token: &CancellationToken,
        ask: Ask<'_>,
    ) -> Result<(), (ToolStatus, ToolOutput)> {
        let title = ask.title;
        let params = PermissionRequestParams {
            request_id: new_id(),
            session_id: s.id.clone(),
            run_id: run.run_id.clone(),
            tool_call_id: ask.tool_call_id.to_owned(),
            tool: ask.tool.to_owned(),
            title: title.clone(),
            input: ask.input,
            diff: ask.diff,
            scopes: rules::scopes(ask.tool),
            suggested_pattern: rules::suggested_pattern(ask.tool, ask.subject),
            escalation: None,
        };
        match self
            .ask_permission(s, token, params, Some(ask.subject))
            .await
        {
            Some(
                PermissionDecision::Allow
                | PermissionDecision::AllowSession
                | PermissionDecision::AllowAlways,
            ) => Ok(()),
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
    ) -> (ToolStatus, CallOutput) {
        let ws = s.ws().id.clone();
        let ws = Owner {
            workspace: Some(&ws),
            session: Some(&s.id),
        };
        let allowed = self.mcp.allowed(ws, &call.name).then(|| {
            Basis::new(
                PermissionSource::McpAllow,
                format!("[mcp] allow {:?}", call.name),
            )
        });
        let ask = Ask {
            tool_call_id: &call.id,
            tool: &call.name,
            title: self.mcp.title(ws, &call.name),
            diff: None,
            input,
            subject: Subject::default(),
        };
        if let Err((status, output)) = self.ask(s, run, token, ask, allowed).await {
            return (status, output.into());
        }
        if token.is_cancelled() {
            return (
                ToolStatus::Cancelled,
                tool_error("the run was cancelled before this tool ran").into(),
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

/// A call to decide permission for.
struct Ask<'a> {
    tool_call_id: &'a str,
    tool: &'a str,
    /// One line for a person.
    title: String,
    diff: Option<String>,
    /// The tool's input as the model gave it.
    input: Value,
    subject: Subject<'a>,
}

/// A tool result the model sees as an error.
fn tool_error(message: impl Into<String>) -> ToolOutput {
    ToolOutput {
        content: message.into(),
        is_error: true,
        metadata: None,
    }
}
