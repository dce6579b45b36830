//! TypeScript declarations of the wire types, for the VS Code extension (feature `ts`). The
//! output is committed as `editors/vscode/src/protocol.generated.ts`; a test in
//! `tests/tests/editor_vscode.rs` fails when the committed file differs from what this produces
//! (run it with `CRUSH_UPDATE_TS=1` to rewrite the file). Only declarations are generated here:
//! the wire format itself is whatever serde does with the types in `methods`.

use ts_rs::{Config, TS};

use crate::methods::*;
use crate::vocab::*;

/// Maps a Rust type as written in the method tables to its TypeScript name.
fn ts_type(rust: &str) -> String {
    match rust.replace(' ', "").as_str() {
        "NoParams" => "Record<string, never>".to_owned(),
        "Option<()>" => "null".to_owned(),
        "serde_json::Value" => "unknown".to_owned(),
        other => other.to_owned(),
    }
}

/// The whole generated file.
pub fn typescript() -> String {
    let cfg = Config::new().with_large_int("number");
    let mut decls: Vec<String> = Vec::new();
    macro_rules! decl {
        ($($t:ty),* $(,)?) => {
            $( decls.push(format!("export {}", <$t as TS>::decl(&cfg))); )*
        };
    }
    decl!(
        serde_json::Value,
        PermissionRequestParams,
        PermissionDecision,
        PermissionRequestResult,
        PermissionRespondParams,
        PermissionRespondResult,
        PermissionResolvedParams,
        PermissionRule,
        PermissionRulesListParams,
        PermissionRulesListResult,
        PermissionRulesRemoveParams,
        PermissionRulesRemoveResult,
        PermissionLogParams,
        PermissionLogResult,
        PermissionLogEntry,
        RuleScope,
        PermissionSource,
        RunState,
        RunStopReason,
        AgentState,
        ToolStatus,
        FinishReason,
        ContextWindowSource,
        PermissionResolution,
        Part,
        SessionSetModelParams,
        SessionSetYoloParams,
        SessionSetYoloResult,
        SandboxMode,
        SandboxEscalation,
        SandboxStatus,
        SessionSetSandboxParams,
        ConfigGetResult,
        ClientInfo,
        InitializeParams,
        ServerInfo,
        ServerCapabilities,
        InitializeResult,
        RestoredSubscription,
        DaemonStatusResult,
        DaemonShutdownParams,
        DaemonShutdownResult,
        DebugSleepParams,
        DebugSleepResult,
        DebugStatsResult,
        DebugClientRequestParams,
        WorkspaceOpenParams,
        WorkspaceInfo,
        WorkspaceClaim,
        BusySession,
        WorkspaceListResult,
        SessionCreateParams,
        SessionListParams,
        SessionRef,
        SessionRenameParams,
        SessionInfo,
        Usage,
        SessionListResult,
        SessionDeleteResult,
        SessionCompactResult,
        SessionForkParams,
        SessionRevertParams,
        SessionUnrevertParams,
        SessionRevertResult,
        SessionDiffParams,
        SessionDiffResult,
        FileChange,
        SessionMessagesParams,
        MessageInfo,
        SessionMessagesResult,
        RunRef,
        RunInfo,
        WorkspaceCloseParams,
        WorkspaceCloseResult,
        SendMode,
        Attachment,
        ImageInput,
        AgentSendParams,
        AgentSendResult,
        AgentCancelParams,
        AgentCancelResult,
        AgentStatusResult,
        SessionSubscribeParams,
        SessionSubscribeResult,
        StreamingMessage,
        SessionUnsubscribeResult,
        ModelPrice,
        ModelInfo,
        ModelListResult,
        McpScope,
        McpServerState,
        McpServerInfo,
        McpRejectedTool,
        McpListResult,
        McpRestartParams,
        McpServerConfig,
        SessionSetMcpServersParams,
        RunCompleteParams,
        SessionUpdateParams,
        SessionEvent,
        CancelParams,
        DaemonShutdownNoticeParams
    );
    let mut out = String::from(
        "// Generated from the Rust crate crush-protocol (protocol/src/ts.rs). Do not edit:\n\
         // regenerate with `CRUSH_UPDATE_TS=1 cargo test -p crush-tests --test editor_vscode`.\n\
         /* eslint-disable */\n\n",
    );
    out.push_str(&format!(
        "export const PROTOCOL_VERSION = {PROTOCOL_VERSION};\n\n"
    ));
    for d in decls {
        out.push_str(&d);
        out.push_str("\n\n");
    }
    out.push_str("/** Client→daemon requests: params and result of each method. */\n");
    out.push_str("export interface Requests {\n");
    for (method, params, result) in ClientRequest::SIGNATURES {
        out.push_str(&format!(
            "  {method:?}: {{ params: {}; result: {} }};\n",
            ts_type(params),
            ts_type(result)
        ));
    }
    out.push_str(
        "}\n\n/** Daemon→client notifications. */\nexport interface DaemonNotifications {\n",
    );
    for (method, params) in DaemonNotification::SIGNATURES {
        out.push_str(&format!("  {method:?}: {};\n", ts_type(params)));
    }
    out.push_str(
        "}\n\n/** Client→daemon notifications. */\nexport interface ClientNotifications {\n",
    );
    for (method, params) in ClientNotification::SIGNATURES {
        out.push_str(&format!("  {method:?}: {};\n", ts_type(params)));
    }
    out.push_str("}\n\n/** Daemon→client requests. */\nexport interface DaemonRequests {\n");
    out.push_str(&format!(
        "  {:?}: {{ params: PermissionRequestParams; result: PermissionRequestResult }};\n}}\n",
        daemon_request::PERMISSION_REQUEST
    ));
    out
}
