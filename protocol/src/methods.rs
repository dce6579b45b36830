//! Every method of the protocol as typed Rust. `ClientRequest` and `ClientNotification` are enums
//! tagged by method name, so a daemon that matches on them is proven by the compiler to handle
//! each one; the marker types in `request` and `notification` give clients typed calls.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::RpcError;
use crate::message::RequestId;
use crate::vocab::{
    AgentState, ContextWindowSource, FinishReason, McpScope, McpServerState, Part,
    PermissionResolution, PermissionSource, RuleScope, RunState, RunStopReason, ToolStatus,
};

/// Version of this protocol. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// A request: its method name, parameter and result types, and what a connection or a client
/// must know about it beyond its types.
pub trait Request {
    const METHOD: &'static str;
    const FACTS: MethodFacts;
    type Params: Serialize + DeserializeOwned + Send + 'static;
    type Result: Serialize + DeserializeOwned + Send + 'static;
}

/// What the daemon's connection and the reconnecting client need to know about a request method
/// that its types do not say. Written in the method table next to the method (`[fact, …]`), so a
/// new method states them where it is declared and nothing hard-codes method names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MethodFacts {
    /// It accepts work that a later `after_sends` request of the same connection must see
    /// (`agent/send`): the connection remembers it until it is answered.
    pub send: bool,
    /// It takes effect only after every `send` request read before it on the same connection
    /// has been answered (`agent/cancel`, so a cancel pipelined right behind a send covers that
    /// send — docs/protocol.md §6.3).
    pub after_sends: bool,
    /// `$/cancelRequest` does not stop it: it answers within one database read, and stopping it
    /// half-way would be worse than finishing (`agent/send`: a half-accepted run).
    pub uninterruptible: bool,
    /// It only reads, so when the connection drops with it in flight a client may send it again
    /// on the next connection. Requests that are safe to repeat only with client-side
    /// bookkeeping (`agent/send` with its `runId`, `session/subscribe` with a cursor,
    /// `workspace/open` with the claims to restore) are not marked: the reconnecting client
    /// re-sends those by their own paths.
    pub resend: bool,
}

impl MethodFacts {
    /// A method with none of the facts: concurrent, interruptible, not re-sent.
    pub const NONE: MethodFacts = MethodFacts {
        send: false,
        after_sends: false,
        uninterruptible: false,
        resend: false,
    };
}

/// A notification: its method name and parameter type.
pub trait Notification {
    const METHOD: &'static str;
    type Params: Serialize + DeserializeOwned + Send + 'static;
}

/// Parameters of a method that takes none. Accepts a missing `params`, `null`, `{}` and `[]`
/// (Neovim encodes an empty table as `[]`); serializes as `{}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoParams;

impl Serialize for NoParams {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        s.serialize_map(Some(0))?.end()
    }
}

impl<'de> Deserialize<'de> for NoParams {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Any object is accepted (unknown members are ignored, as everywhere in this protocol).
        serde::de::IgnoredAny::deserialize(d).map(|_| NoParams)
    }
}

/// Decodes `params` for a method. A missing `params`, `null` and `[]` all mean "no parameters"
/// and are read as `{}`; other arrays (by-position parameters) are refused. Errors name the field.
pub fn parse_params<T: DeserializeOwned>(params: Option<&RawValue>) -> Result<T, RpcError> {
    let raw = params.map(RawValue::get).unwrap_or("{}").trim();
    let raw = if raw == "null" || raw == "[]" {
        "{}"
    } else {
        raw
    };
    if raw.starts_with('[') {
        return Err(RpcError::invalid_params(
            "params must be an object (by-name parameters)",
        ));
    }
    let de = &mut serde_json::Deserializer::from_str(raw);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            RpcError::invalid_params(format!("invalid params: {inner}"))
        } else {
            RpcError::invalid_params(format!("invalid params: {path}: {inner}"))
        }
    })
}

macro_rules! client_requests {
    ($( $(#[$doc:meta])* $name:ident = $method:literal ($params:ty) -> $result:ty
        $([$($fact:ident),+ $(,)?])?; )*) => {
        /// Marker types for client→daemon requests, for typed calls.
        pub mod request {
            #[allow(unused_imports)]
            use super::*;
            $(
                $(#[$doc])*
                #[derive(Debug)]
                pub enum $name {}
                impl $crate::methods::Request for $name {
                    const METHOD: &'static str = $method;
                    const FACTS: $crate::methods::MethodFacts = $crate::methods::MethodFacts {
                        $($($fact: true,)+)?
                        ..$crate::methods::MethodFacts::NONE
                    };
                    type Params = $params;
                    type Result = $result;
                }
            )*
        }

        /// A client→daemon request with its decoded parameters.
        #[derive(Debug)]
        pub enum ClientRequest { $( $(#[$doc])* $name($params), )* }

        impl ClientRequest {
            /// Every request method name, in documentation order.
            pub const METHODS: &'static [&'static str] = &[$($method),*];

            /// `(method, params type, result type)` of every request, the types as written here,
            /// for the TypeScript generator (`crate::ts`).
            #[cfg(feature = "ts")]
            pub const SIGNATURES: &'static [(&'static str, &'static str, &'static str)] =
                &[$(($method, stringify!($params), stringify!($result))),*];

            /// Decodes a request. `Ok(None)` means the method is unknown.
            pub fn parse(method: &str, params: Option<&RawValue>) -> Result<Option<Self>, RpcError> {
                Ok(Some(match method {
                    $( $method => Self::$name(parse_params(params)?), )*
                    _ => return Ok(None),
                }))
            }

            pub fn method(&self) -> &'static str {
                match self { $( Self::$name(_) => $method, )* }
            }

            /// The facts of this request's method (see [`MethodFacts`]).
            pub fn facts(&self) -> MethodFacts {
                match self {
                    $( Self::$name(_) => <request::$name as $crate::methods::Request>::FACTS, )*
                }
            }

            /// The facts of a method by name; `None` for a method that is not a request.
            pub fn facts_of(method: &str) -> Option<MethodFacts> {
                match method {
                    $( $method => Some(<request::$name as $crate::methods::Request>::FACTS), )*
                    _ => None,
                }
            }
        }
    };
}

macro_rules! notifications {
    ($enum_name:ident, $module:ident, $what:literal, $( $(#[$doc:meta])* $name:ident = $method:literal ($params:ty); )*) => {
        #[doc = concat!("Marker types for ", $what, " notifications.")]
        pub mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                $(#[$doc])*
                #[derive(Debug)]
                pub enum $name {}
                impl $crate::methods::Notification for $name {
                    const METHOD: &'static str = $method;
                    type Params = $params;
                }
            )*
        }

        #[doc = concat!("A ", $what, " notification with its decoded parameters.")]
        #[derive(Debug)]
        pub enum $enum_name { $( $(#[$doc])* $name($params), )* }

        impl $enum_name {
            pub const METHODS: &'static [&'static str] = &[$($method),*];

            /// `(method, params type)` of every notification, for the TypeScript generator.
            #[cfg(feature = "ts")]
            pub const SIGNATURES: &'static [(&'static str, &'static str)] =
                &[$(($method, stringify!($params))),*];

            /// Decodes a notification. `Ok(None)` means the method is unknown.
            pub fn parse(method: &str, params: Option<&RawValue>) -> Result<Option<Self>, RpcError> {
                Ok(Some(match method {
                    $( $method => Self::$name(parse_params(params)?), )*
                    _ => return Ok(None),
                }))
            }
        }
    };
}

// One line per request: `Name = "method" (Params) -> Result [facts];`. The facts (see
// `MethodFacts`) are what the connection and the reconnecting client know about a method beyond
// its types; a method without a list has none.
client_requests! {
    /// First request on every connection.
    Initialize = "initialize" (InitializeParams) -> InitializeResult;
    /// Ask the daemon to release this connection's state; only `exit` may follow.
    Shutdown = "shutdown" (NoParams) -> Option<()>;
    /// Process facts: pid, version, uptime, connections.
    DaemonStatus = "daemon/status" (NoParams) -> DaemonStatusResult [resend];
    /// Stop the whole daemon.
    DaemonShutdown = "daemon/shutdown" (DaemonShutdownParams) -> DaemonShutdownResult;
    /// Open (or register) a project directory; deduplicated by canonical path.
    WorkspaceOpen = "workspace/open" (WorkspaceOpenParams) -> WorkspaceInfo;
    /// Every known workspace, most recently opened first.
    WorkspaceList = "workspace/list" (NoParams) -> WorkspaceListResult [resend];
    /// A new, empty session in a workspace.
    SessionCreate = "session/create" (SessionCreateParams) -> SessionInfo;
    /// Sessions of a workspace, most recently updated first.
    SessionList = "session/list" (SessionListParams) -> SessionListResult [resend];
    SessionGet = "session/get" (SessionRef) -> SessionInfo [resend];
    SessionRename = "session/rename" (SessionRenameParams) -> SessionInfo;
    /// Delete a session with its messages and runs.
    SessionDelete = "session/delete" (SessionRef) -> SessionDeleteResult;
    /// Summarise an idle session's older messages now (the model writes the summary; the
    /// messages stay stored). Busy sessions get `RunsActive`.
    SessionCompact = "session/compact" (SessionRef) -> SessionCompactResult;
    /// A new session whose history is a copy of this one's up to a message (all of it without
    /// one); the files are not touched, and the two sessions go on independently.
    SessionFork = "session/fork" (SessionForkParams) -> SessionInfo;
    /// What a run (the one of `messageId`), or the whole session, changed in the workspace's
    /// files, from the snapshots taken during its runs.
    SessionDiff = "session/diff" (SessionDiffParams) -> SessionDiffResult;
    /// Put the workspace's files back as they were before a message's run and hide the
    /// messages from there on from the model (they stay stored, flagged). Idle sessions only.
    SessionRevert = "session/revert" (SessionRevertParams) -> SessionRevertResult;
    /// Undo the session's last revert, while no prompt was sent since.
    SessionUnrevert = "session/unrevert" (SessionUnrevertParams) -> SessionRevertResult;
    /// A page of a session's messages, oldest first within the page.
    SessionMessages = "session/messages" (SessionMessagesParams) -> SessionMessagesResult [resend];
    /// A run's state: live from memory while it is queued or running, else as persisted (also
    /// after a reconnect or a daemon restart).
    RunGet = "run/get" (RunRef) -> RunInfo [resend];
    /// Stop a workspace's runs and refuse new ones until it is opened again.
    WorkspaceClose = "workspace/close" (WorkspaceCloseParams) -> WorkspaceCloseResult;
    /// Accept a prompt for a session and return at once; the run belongs to the workspace.
    AgentSend = "agent/send" (AgentSendParams) -> AgentSendResult [send, uninterruptible];
    /// Cancel a session's active run and every prompt accepted before this call, or with
    /// `runId` that one run only.
    AgentCancel = "agent/cancel" (AgentCancelParams) -> AgentCancelResult [after_sends];
    /// Whether a session is running, and what is queued.
    AgentStatus = "agent/status" (SessionRef) -> AgentStatusResult [resend];
    /// Receive `$/sessionUpdate` (and `$/runComplete`) for a session on this connection,
    /// replaying what followed `afterSeq` first.
    SessionSubscribe = "session/subscribe" (SessionSubscribeParams) -> SessionSubscribeResult;
    SessionUnsubscribe = "session/unsubscribe" (SessionRef) -> SessionUnsubscribeResult;
    /// The models this daemon can use, and the default.
    ModelList = "model/list" (NoParams) -> ModelListResult [resend];
    /// Choose the session's model (`null` returns it to the daemon's default).
    SessionSetModel = "session/setModel" (SessionSetModelParams) -> SessionInfo;
    /// Let the session's tool calls run without asking (or ask again).
    SessionSetYolo = "session/setYolo" (SessionSetYoloParams) -> SessionSetYoloResult;
    /// Choose how the session's `bash` commands are confined (`null` fields return to the
    /// config's).
    SessionSetSandbox = "session/setSandbox" (SessionSetSandboxParams) -> SandboxStatus;
    /// Answer a pending `permission/request` (for clients that cannot answer the request itself
    /// later, such as Neovim's `vim.lsp.rpc`). The first answer of any client wins.
    PermissionRespond = "permission/respond" (PermissionRespondParams) -> PermissionRespondResult;
    /// Saved permission rules ("always allow" answers), every one or those that apply to a
    /// workspace or a session.
    PermissionRulesList = "permission/rules/list" (PermissionRulesListParams) -> PermissionRulesListResult [resend];
    /// Delete a saved permission rule: the calls it allowed are asked about again.
    PermissionRulesRemove = "permission/rules/remove" (PermissionRulesRemoveParams) -> PermissionRulesRemoveResult;
    /// The audit log of permission decisions, newest first.
    PermissionLog = "permission/log" (PermissionLogParams) -> PermissionLogResult [resend];
    /// The effective configuration, secrets redacted.
    ConfigGet = "config/get" (NoParams) -> ConfigGetResult [resend];
    /// The daemon's MCP servers: scope, state, last error, tools.
    McpList = "mcp/list" (NoParams) -> McpListResult [resend];
    /// Stop an MCP server (if running) and start it again now, without backoff.
    McpRestart = "mcp/restart" (McpRestartParams) -> McpServerInfo;
    /// Give a session its own MCP servers (an ACP editor's), replacing those it had; their
    /// tools are offered to that session's runs only.
    SessionSetMcpServers = "session/setMcpServers" (SessionSetMcpServersParams) -> McpListResult;
    /// Diagnostic: answer after `ms` milliseconds. Only with `crushd --debug-methods`.
    DebugSleep = "debug/sleep" (DebugSleepParams) -> DebugSleepResult;
    /// Diagnostic: the daemon's live resource counts (connections, tasks, runs), for leak
    /// checks. Only with `crushd --debug-methods`.
    DebugStats = "debug/stats" (NoParams) -> DebugStatsResult;
    /// Diagnostic: the daemon sends the given request to the calling client and returns its
    /// answer. Only with `crushd --debug-methods`.
    DebugClientRequest = "debug/clientRequest" (DebugClientRequestParams) -> serde_json::Value;
}

notifications! {
    ClientNotification, notification, "client→daemon",
    /// The client received the `initialize` result.
    Initialized = "initialized" (NoParams);
    /// Close this connection.
    Exit = "exit" (NoParams);
    /// Cancel an in-flight request of this connection.
    CancelRequest = "$/cancelRequest" (CancelParams);
}

notifications! {
    DaemonNotification, daemon_notification, "daemon→client",
    /// The daemon is about to close every connection and exit.
    DaemonShutdownNotice = "$/daemonShutdown" (DaemonShutdownNoticeParams);
    /// The one authoritative end of a run, sent exactly once per accepted run id.
    RunComplete = "$/runComplete" (RunCompleteParams);
    /// A live event of a subscribed session.
    SessionUpdate = "$/sessionUpdate" (SessionUpdateParams);
    /// A permission request was answered (or withdrawn); clients remove their prompt.
    PermissionResolved = "$/permissionResolved" (PermissionResolvedParams);
}

/// Daemon→client request: may this tool call run? Sent to every connection subscribed to the
/// session; the first answer wins.
pub mod daemon_request {
    /// The method of a permission prompt.
    pub const PERMISSION_REQUEST: &str = "permission/request";
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct PermissionRequestParams {
    pub request_id: String,
    pub session_id: String,
    pub run_id: String,
    pub tool_call_id: String,
    pub tool: String,
    /// One line for a person: `Edit src/main.rs`, `Run: cargo test`.
    pub title: String,
    /// The tool's input as the model gave it.
    pub input: serde_json::Value,
    /// For `edit` and `write`: the change as a unified diff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// The scopes an `allowAlways` answer may choose; empty when this prompt cannot be saved as
    /// a rule (answer `allow`, `allowSession` or `deny`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<RuleScope>,
    /// The pattern an `allowAlways` answer saves unless it gives its own: for `bash` a command
    /// prefix (whole words), for `write`/`edit` a path glob relative to the workspace; absent
    /// when the rule covers every call of the tool (MCP tools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggested_pattern: Option<String>,
    /// Present when the request asks to run a `bash` command again outside the sandbox,
    /// because the sandbox refused it: what was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<SandboxEscalation>,
}

/// Why a `permission/request` asks to run a command unconfined.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct SandboxEscalation {
    /// The mode the command ran under.
    pub mode: crate::vocab::SandboxMode,
    /// What the sandbox refused, one line each for a person (`write /etc/hosts`,
    /// `network connection`).
    pub refused: Vec<String>,
}

/// How a session's (or by default every session's) `bash` commands are confined.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct SandboxStatus {
    /// The mode asked for (the config's, or the session's own).
    pub mode: crate::vocab::SandboxMode,
    /// Whether commands may use TCP (`false`: connecting and binding are refused).
    pub network: bool,
    /// Whether the mode is enforced: `false` when it is `off`, or when this system cannot
    /// confine commands (then `warning` says why and commands run unconfined).
    pub enforced: bool,
    /// The kernel's Landlock ABI version; absent without Landlock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landlock_abi: Option<u32>,
    /// Directories commands may write, `<workspace>` standing for each session's root (empty
    /// when nothing is confined or nothing is writable).
    #[serde(default)]
    pub writable: Vec<String>,
    /// Set when what is asked for is not (fully) enforced, saying why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct SessionSetSandboxParams {
    pub session_id: String,
    /// The session's mode; `null` (or absent) returns it to the config's.
    #[serde(default)]
    pub mode: Option<crate::vocab::SandboxMode>,
    /// Whether the session's commands may use TCP; `null` (or absent) returns it to the
    /// config's.
    #[serde(default)]
    pub network: Option<bool>,
}

/// A client's answer to `permission/request` (its result) or in `permission/respond`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub enum PermissionDecision {
    /// Run this call.
    Allow,
    /// Run this call and every later call of this tool in the session without asking (kept in
    /// the daemon's memory: a restarted daemon asks again).
    AllowSession,
    /// Run this call and save a rule (`scope`, and `pattern` or the request's
    /// `suggestedPattern`) that allows matching calls from now on, also after a restart.
    AllowAlways,
    Deny,
    /// Only as a result of `permission/request`: the prompt is shown; the answer will come with
    /// `permission/respond`.
    Deferred,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct PermissionRequestResult {
    pub decision: PermissionDecision,
    /// For `allowAlways`: where the rule applies (one of the request's `scopes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<RuleScope>,
    /// For `allowAlways`: the rule's pattern, instead of the request's `suggestedPattern`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct PermissionRespondParams {
    pub request_id: String,
    pub decision: PermissionDecision,
    /// For `allowAlways`: where the rule applies (one of the request's `scopes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<RuleScope>,
    /// For `allowAlways`: the rule's pattern, instead of the request's `suggestedPattern`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct PermissionRespondResult {}

/// A saved permission rule: calls of `tool` (whose command starts with `pattern`'s words for
/// `bash`, whose path matches the glob `pattern` for `write`/`edit`) run without asking, in
/// `scope`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct PermissionRule {
    pub id: String,
    pub scope: RuleScope,
    /// For `workspace` rules, and `session` rules (the session's workspace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    /// For `session` rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    pub tool: String,
    /// Absent: every call of the tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// The `clientInfo.name` of the client whose answer saved it.
    pub created_by: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct PermissionRulesListParams {
    /// Only the rules that apply in this workspace (its own and global ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    /// Only the rules that apply in this session (its own, its workspace's and global ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct PermissionRulesListResult {
    /// Oldest first.
    pub rules: Vec<PermissionRule>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct PermissionRulesRemoveParams {
    pub id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct PermissionRulesRemoveResult {}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct PermissionLogParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    /// At most this many entries (default 100, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct PermissionLogResult {
    /// Newest first.
    pub entries: Vec<PermissionLogEntry>,
}

/// One permission decision: a prompt answered (or withdrawn), or a call let run by a rule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct PermissionLogEntry {
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    pub session_id: String,
    pub workspace_id: String,
    pub run_id: String,
    pub tool_call_id: String,
    pub tool: String,
    pub title: String,
    pub decision: PermissionResolution,
    pub source: PermissionSource,
    /// What applied, for a person: the config rule, the saved rule's tool and pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// For `source: "rule"`, and for an `allowAlways` answer: the saved rule's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<String>,
    /// For `source: "prompt"`: the answering client's `clientInfo.name` (`"cancel"` when a
    /// cancel withdrew the request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// For `source: "prompt"`: the daemon's number of the answering connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct PermissionResolvedParams {
    pub request_id: String,
    pub session_id: String,
    pub run_id: String,
    /// `allow`, `allowSession`, `deny`, or `cancelled` (the run was cancelled first).
    pub decision: PermissionResolution,
    /// The `clientInfo.name` of the client that answered (`"cancel"` when a cancel withdrew it).
    pub by: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct SessionSetModelParams {
    pub session_id: String,
    /// A model name from `model/list`, or `null` for the daemon's default.
    #[serde(default)]
    pub model: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct SessionSetYoloParams {
    pub session_id: String,
    pub yolo: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct SessionSetYoloResult {
    pub yolo: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct ConfigGetResult {
    /// The effective configuration: presets merged with the config file and the environment.
    /// API keys never appear; `apiKeySet` says whether one is available.
    pub config: serde_json::Value,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct ClientInfo {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct InitializeParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_info: Option<ClientInfo>,
    /// A stable id the client reuses across reconnects (a UUID is recommended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The protocol version the client speaks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<u32>,
    /// When this `clientId` dropped its connection less than the claim grace period ago:
    /// subscribe this connection again to the sessions the old one followed, replaying from
    /// the last event the daemon wrote to it. Default true. Clients that keep their own cursor
    /// pass false and call `session/subscribe` with `afterSeq` themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_subscriptions: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct ServerInfo {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct ServerCapabilities {
    /// Largest message body the daemon accepts, in bytes.
    pub max_message_size: u64,
    /// Whether `debug/*` methods are enabled on this daemon.
    #[serde(default)]
    pub debug_methods: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct InitializeResult {
    pub server_info: ServerInfo,
    pub protocol_version: u32,
    pub capabilities: ServerCapabilities,
    pub pid: u32,
    /// The id this connection is known by: the client's `clientId`, or one the daemon made up.
    pub client_id: String,
    /// This daemon process's stream epoch: event `seq` values are comparable only within one
    /// epoch (a restarted daemon has a new one).
    #[serde(default)]
    pub epoch: String,
    /// True when this `clientId` had claims or subscriptions kept from a dropped connection
    /// (within the grace period); they now belong to this connection.
    #[serde(default)]
    pub resumed: bool,
    /// Subscriptions restored by `resumed` (see `restoreSubscriptions`), with where their
    /// replay started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restored: Vec<RestoredSubscription>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct RestoredSubscription {
    pub session_id: String,
    /// Events after this seq were replayed (or `resync` is true and none were).
    pub after_seq: u64,
    pub resync: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct DaemonStatusResult {
    pub pid: u32,
    pub version: String,
    pub protocol_version: u32,
    pub uptime_ms: u64,
    /// Open connections, including the caller's.
    pub connections: u64,
    /// The socket (or pipe) the daemon listens on.
    pub socket: String,
    /// The directory holding the daemon's log files.
    pub log_dir: String,
    /// Idle exit delay in milliseconds; 0 means never.
    pub idle_timeout_ms: u64,
    /// Bytes the workspace snapshots take on disk (`session/diff`, `session/revert`); absent
    /// when snapshots are off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_bytes: Option<u64>,
    /// How `bash` commands are confined by default (the config's mode), with a warning when
    /// this system cannot enforce it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct DaemonShutdownParams {
    /// Shut down even while work is in progress.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct DaemonShutdownResult {
    /// Always true when the call succeeds: the daemon has begun to shut down.
    pub shutting_down: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct DebugSleepParams {
    pub ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct DebugSleepResult {
    pub slept_ms: u64,
}

/// Live resource counts of the daemon (`debug/stats`). Each returns to its idle value once
/// clients have left and runs have ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct DebugStatsResult {
    /// Open connections, including the caller's.
    pub connections: u64,
    /// Requests being handled, over all connections (the caller's `debug/stats` included).
    pub in_flight_requests: u64,
    /// Runs active or queued.
    pub live_runs: u64,
    /// Sessions with live state in memory.
    pub live_sessions: u64,
    /// Loaded workspaces.
    pub loaded_workspaces: u64,
    /// Background tasks of the runtime (runs, flushers, tools), over all loaded workspaces.
    pub runtime_tasks: u64,
    /// Clients kept within their reconnect grace period.
    pub parked_clients: u64,
    /// Every task alive in the daemon's async runtime (connections, handlers, runs, timers).
    pub async_tasks: u64,
    /// Bytes held by every session's replay log together (against `[daemon] replay_budget`).
    pub replay_bytes: u64,
    /// Bytes of message bodies being received, every connection together (against
    /// `[daemon] inbound_budget`).
    pub inbound_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct DebugClientRequestParams {
    pub method: String,
    #[serde(default)]
    pub params: serde_json::Value,
    /// How long to wait for the client's answer; default 10 000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceOpenParams {
    /// A directory; relative paths are refused, symlinks are resolved.
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceInfo {
    pub workspace_id: String,
    /// The canonical absolute path.
    pub path: String,
    /// Unix milliseconds.
    pub created_at: i64,
    pub last_opened_at: i64,
    /// Whether the daemon holds the workspace's live state (claimed, busy, watched, or not yet
    /// unloaded after its idle delay).
    #[serde(default)]
    pub loaded: bool,
    /// Clients holding the workspace open, including ones inside their reconnect grace period.
    #[serde(default)]
    pub claims: Vec<WorkspaceClaim>,
    /// Sessions with an active or queued run.
    #[serde(default)]
    pub busy_sessions: Vec<BusySession>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceClaim {
    pub client_id: String,
    /// The `clientInfo.name` it gave, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// False while the client is disconnected and its claim waits out the grace period.
    pub connected: bool,
    /// For a disconnected client: milliseconds until its claim is released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct BusySession {
    pub session_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_run_id: Option<String>,
    pub queued: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceListResult {
    pub workspaces: Vec<WorkspaceInfo>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct SessionCreateParams {
    pub workspace_id: String,
    /// Defaults to "New session".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The session's model (a name from `model/list`); the daemon's default otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Run tool calls without asking (see `session/setYolo`).
    #[serde(default)]
    pub yolo: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct SessionListParams {
    pub workspace_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct SessionRef {
    pub session_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct SessionRenameParams {
    pub session_id: String,
    pub title: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    pub session_id: String,
    pub workspace_id: String,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub message_count: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// The cost of the session's priced model use (see `usage.cost` for whether that is all).
    pub cost: f64,
    /// The session's token totals and their cost (absent from daemons that do not count them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// Tokens used, as the provider reported them, and what they cost.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Input (prompt) tokens, cached ones included.
    pub input_tokens: u64,
    /// Output (completion) tokens, reasoning included.
    pub output_tokens: u64,
    /// The part of `inputTokens` read from the provider's prompt cache.
    pub cached_tokens: u64,
    /// The part of `outputTokens` spent on reasoning (providers that report it).
    pub reasoning_tokens: u64,
    /// In US dollars; `null` when a price was unknown. Always written, `null` included.
    pub cost: Option<f64>,
}

/// A model's price in US dollars per million tokens (`model/list`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct ModelPrice {
    pub input: f64,
    pub output: f64,
    /// Input tokens read from the prompt cache.
    pub cached: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct SessionListResult {
    pub sessions: Vec<SessionInfo>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct SessionDeleteResult {
    pub deleted: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct SessionForkParams {
    pub session_id: String,
    /// The last message the fork keeps (a message of the session); absent: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct SessionDiffParams {
    pub session_id: String,
    /// A message of the run whose changes are wanted; absent: the whole session's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct SessionDiffResult {
    /// The unified diff (Git's format, paths relative to the workspace); empty for no change.
    pub diff: String,
    /// Each changed file.
    pub files: Vec<FileChange>,
    /// Files too large to snapshot while those runs ran: their changes are not in the diff.
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct FileChange {
    pub path: String,
    /// `added`, `modified`, `deleted` or `typeChanged`.
    pub status: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct SessionRevertParams {
    pub session_id: String,
    /// The first message to undo: the files go back to their state before its run.
    pub message_id: String,
    /// Overwrite files changed outside the runs since (listed as `conflicts` without it).
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct SessionUnrevertParams {
    pub session_id: String,
    /// Overwrite files changed since the revert (listed as `conflicts` without it).
    #[serde(default)]
    pub force: bool,
}

/// What `session/revert` or `session/unrevert` did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct SessionRevertResult {
    /// Whether it was done; `false` with `conflicts` (nothing was changed), or for an unrevert
    /// with nothing to undo.
    pub done: bool,
    /// The revert (made or undone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_id: Option<String>,
    /// The files written or removed.
    pub files: Vec<String>,
    /// Files changed outside the runs since; pass `force` to overwrite them.
    pub conflicts: Vec<String>,
    /// Messages hidden (revert) or shown again (unrevert).
    pub messages: u32,
}

/// What `session/compact` did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct SessionCompactResult {
    /// Whether a summary was written; `false` when nothing is old enough to summarise (the
    /// session's first prompt and its latest turn are always kept as they are).
    pub compacted: bool,
    /// The `system` message holding the `summary` part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary_message_id: Option<String>,
    /// Stored messages the summary replaces in what the model is shown.
    pub messages: u32,
    /// The daemon's count of the conversation the model would be shown, before and after.
    pub tokens_before: u64,
    pub tokens_after: u64,
}

/// Default and maximum page size of `session/messages`.
pub const DEFAULT_MESSAGE_PAGE: u32 = 100;
pub const MAX_MESSAGE_PAGE: u32 = 1000;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct SessionMessagesParams {
    pub session_id: String,
    /// Only messages with `seq` below this (the `nextBefore` of the previous page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<i64>,
    /// Page size, 1..=1000; default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct MessageInfo {
    pub message_id: String,
    pub session_id: String,
    /// Position in the session, from 1.
    pub seq: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// `user`, `assistant`, `tool` or `system`.
    pub role: String,
    /// Text, reasoning, tool calls, tool results, attachments.
    pub parts: Vec<Part>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// `end_turn`, `max_tokens`, `tool_use`, `canceled`, `error`, `interrupted`; absent while streaming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    /// Hidden from the model by `session/revert` (still stored and listed); absent when not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reverted: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct SessionMessagesResult {
    pub messages: Vec<MessageInfo>,
    /// Whether older messages exist.
    pub has_more: bool,
    /// Pass as `before` to get the previous page; absent when `hasMore` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_before: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct RunRef {
    pub run_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct RunInfo {
    pub run_id: String,
    pub session_id: String,
    /// `accepted`, `queued`, `running`, `completed`, `cancelled`, `failed`, `interrupted`.
    pub state: RunState,
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assistant_message_id: Option<String>,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    /// For a steered run: the run whose turn it joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folded_into: Option<String>,
    /// The tokens of the run's turn and their cost, once it ended (absent for a folded run:
    /// its tokens are the turn's it joined).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// As `$/runComplete`'s: the daemon's limit that stopped the run, if one did.
    #[serde(
        default,
        deserialize_with = "known_stop_reason",
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_reason: Option<RunStopReason>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceCloseParams {
    pub workspace_id: String,
    /// Also stop the workspace: cancel its active and queued runs and refuse new ones until it
    /// is opened again. Without it, close only releases this client's claim and runs go on.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceCloseResult {
    /// Whether this client held a claim that is now released.
    #[serde(default)]
    pub released: bool,
    /// Claims other clients still hold.
    #[serde(default)]
    pub remaining_claims: u32,
    /// Runs that were active or queued and ended cancelled (only with `force`).
    pub cancelled_runs: Vec<String>,
}

/// How a prompt sent while the session is busy joins the work.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub enum SendMode {
    /// Run as its own turn after the active one and anything queued before it.
    #[default]
    Queue,
    /// Join the active turn at its next model step; run as its own turn, next, if the active
    /// turn ends first.
    Steer,
}

/// Extra content sent with a prompt. Only text attachments exist in protocol version 1.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// A file name or label shown to the model with the text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    pub text: String,
}

/// An image sent with a prompt, for a model that accepts images (`model/list` `images`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct ImageInput {
    /// `image/png`, `image/jpeg`, `image/gif` or `image/webp`.
    pub mime_type: String,
    /// The image's bytes in base64 (standard alphabet, padded).
    pub data: String,
    /// A file name or label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct AgentSendParams {
    pub session_id: String,
    #[serde(default)]
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// Images shown to the model with the prompt (only to a model that accepts images).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageInput>,
    /// A client-chosen id making the send idempotent; a UUID v7 is generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default)]
    pub mode: SendMode,
    /// A model name from `model/list`; the session's or the daemon's default otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Run this prompt's tool calls without asking.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub yolo: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct AgentSendResult {
    pub run_id: String,
    /// `running` or `queued` for a new run; for a repeated `runId`, the run's current state
    /// (which may be terminal: `completed`, `cancelled`, `failed`, `interrupted`).
    pub state: RunState,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct AgentCancelParams {
    pub session_id: String,
    /// Cancel only this run (active, steered or queued); the session's other runs go on. A run
    /// that already ended is not an error: nothing is cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct AgentCancelResult {
    /// Every run this cancel ended: the active one, steered and queued prompts.
    pub cancelled: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct AgentStatusResult {
    /// `idle`, `active`, or `waitingForPermission` (active, and a tool call waits for an answer
    /// to `permission/request`).
    pub state: AgentState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_run_id: Option<String>,
    /// Waiting prompts in the order they will run (steered ones first).
    pub queued: Vec<String>,
    /// Permission requests waiting for an answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_permissions: Vec<PermissionRequestParams>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct SessionSubscribeParams {
    pub session_id: String,
    /// Replay every event with a higher seq before the live stream (the last seq the client
    /// saw). Absent: live events only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_seq: Option<u64>,
    /// The epoch `afterSeq` belongs to (from `initialize` or an earlier subscribe). A different
    /// epoch means the daemon restarted: the answer is `resync`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct SessionSubscribeResult {
    /// The session's last event sequence number when the live stream took over: every replayed
    /// event has a seq at most this, every live one a higher seq.
    pub seq: u64,
    /// The daemon's stream epoch (see `initialize`).
    #[serde(default)]
    pub epoch: String,
    /// True when `afterSeq` could not be honoured (the replay log no longer reaches it, or it
    /// is from another epoch): nothing was replayed; reload with `session/messages`, take
    /// `streaming` as the current text of the message being streamed, and continue after `seq`.
    #[serde(default)]
    pub resync: bool,
    /// Events replayed before this answer (each as a `$/sessionUpdate`).
    #[serde(default)]
    pub replayed: u64,
    pub status: AgentStatusResult,
    /// The assistant message being streamed, as of `seq` (the database copy may lag behind by
    /// up to the flush interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streaming: Option<StreamingMessage>,
}

/// A streaming assistant message's content so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct StreamingMessage {
    pub message_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Parts in the shape of `session/messages` (`text`, `reasoning`, `toolCall`).
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct SessionUnsubscribeResult {
    /// False when this connection was not subscribed.
    pub unsubscribed: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct ModelInfo {
    /// The name used in `agent/send`, `session/create` and the config file:
    /// `<provider>/<model id>`.
    pub name: String,
    /// The provider's id in the configuration (`openai`, `anthropic`, `ollama`, …).
    pub provider: String,
    /// The API the provider speaks: `openai` (Chat Completions), `anthropic` (Messages) or
    /// `echo` (the built-in diagnostic).
    #[serde(default)]
    pub api: String,
    /// The provider's model id.
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    /// Where `contextWindow` comes from: `preset`, `config` or `default` (the daemon knows
    /// nothing of the model and budgets against a conservative window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window_source: Option<ContextWindowSource>,
    /// What its tokens cost, when known (presets or the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<ModelPrice>,
    /// Why the model cannot be used right now (e.g. its API key variable is unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    /// Whether it accepts images (in prompts and in tool results), per the presets or the
    /// config file's `images` key.
    #[serde(default)]
    pub images: bool,
}

/// One MCP server (`mcp/list`, `mcp/restart`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct McpServerInfo {
    /// Its name in the config (`[mcp.servers.NAME]`); its tools are `mcp__NAME__TOOL`.
    pub name: String,
    pub scope: McpScope,
    /// For a `project` server: the workspace whose `.mcp.json` defines it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    /// For a `session` server: the session that was given it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    pub state: McpServerState,
    /// The command line it runs.
    pub command: String,
    /// Why it last failed (start, exit, timeout); cleared when it becomes ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The process id while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// How many tools are offered to the model (the length of `tools`).
    pub tool_count: usize,
    /// The server's tool names (as the server names them) offered to the model.
    pub tools: Vec<String>,
    /// Tools the server lists that are not offered, each with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected_tools: Vec<McpRejectedTool>,
    /// How many times it was started again after its first start.
    pub restarts: u32,
    /// What the server said about itself at `initialize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// The MCP protocol version negotiated with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<String>,
}

/// A tool an MCP server lists that the model is not offered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct McpRejectedTool {
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct McpListResult {
    pub servers: Vec<McpServerInfo>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct McpRestartParams {
    /// The server's name.
    pub name: String,
    /// For a project server (`.mcp.json`): its workspace. Without it (and without
    /// `sessionId`) a global server of that name is restarted, else a project server of that
    /// name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    /// For a session's server (`session/setMcpServers`): its session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

/// One MCP server a client gives a session: a stdio server (`command`, `args`, `env`) or a
/// streamable-HTTP one (`url`, `headers`) — the shapes ACP's `session/new` carries.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct McpServerConfig {
    /// Its name; its tools are `mcp__NAME__TOOL` (letters, digits, `-`, `_`; no `__`).
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct SessionSetMcpServersParams {
    pub session_id: String,
    /// The session's servers from now on (empty: none).
    pub servers: Vec<McpServerConfig>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct ModelListResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    pub models: Vec<ModelInfo>,
    /// How the models' `bash` commands are confined by default, as in `daemon/status`: a
    /// client that shows models shows the warning too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct RunCompleteParams {
    pub session_id: String,
    pub run_id: String,
    /// The turn's last assistant message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The text of that message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Why the run failed; absent when it completed or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Set when a limit of the daemon's stopped the run (it then also has `error`, for
    /// clients that do not know this field). A reason this build does not know reads as none.
    #[serde(
        default,
        deserialize_with = "known_stop_reason",
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_reason: Option<RunStopReason>,
    pub cancelled: bool,
    /// For a steered prompt: the run whose turn it joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folded_into: Option<String>,
    /// The tokens of the run's turn and their cost (absent when no turn ran for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// A newer daemon may stop runs for reasons this build has no name for: the rest of the
/// notification (the run's end, its `error`) must still be read, so such a reason is none.
fn known_stop_reason<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<RunStopReason>, D::Error> {
    let name = Option::<String>::deserialize(d)?;
    Ok(name.and_then(|n| n.parse().ok()))
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct SessionUpdateParams {
    pub session_id: String,
    /// Increases with every event of the session. Consecutive text (or reasoning) deltas of one
    /// message queued for a slow client are merged into one event carrying the last seq, so a
    /// client may see seqs skip; order is never changed.
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(flatten)]
    pub event: SessionEvent,
}

/// What happened, tagged by `kind`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum SessionEvent {
    /// The run waits behind the active one (`position` from 0).
    #[serde(rename_all = "camelCase")]
    RunQueued { position: u32, steer: bool },
    /// The run's turn started.
    RunStarted,
    /// A steered run joined the active turn (`runId` is the steered run).
    #[serde(rename_all = "camelCase")]
    RunFolded { into: String },
    /// `agent/cancel` (or a shutdown) covered these runs; nothing of theirs streams after this.
    #[serde(rename_all = "camelCase")]
    CancelRequested { run_ids: Vec<String> },
    /// The run ended: `completed`, `cancelled` or `failed`.
    #[serde(rename_all = "camelCase")]
    RunFinished {
        state: RunState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// The assistant message of the run's turn (absent when it never started one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_id: Option<String>,
    },
    /// A user message was stored.
    #[serde(rename_all = "camelCase")]
    UserMessage { message_id: String, text: String },
    /// An assistant message started streaming.
    #[serde(rename_all = "camelCase")]
    AssistantStarted { message_id: String, model: String },
    #[serde(rename_all = "camelCase")]
    TextDelta { message_id: String, text: String },
    #[serde(rename_all = "camelCase")]
    ReasoningDelta { message_id: String, text: String },
    /// A model call failed in a way worth retrying; the next try starts after `delayMs`.
    #[serde(rename_all = "camelCase")]
    Retrying {
        attempt: u32,
        max_attempts: u32,
        delay_ms: u64,
        error: String,
    },
    /// The model called a tool (`input` as it gave it; a string if it was not JSON).
    #[serde(rename_all = "camelCase")]
    ToolCallStarted {
        message_id: String,
        tool_call_id: String,
        tool: String,
        input: serde_json::Value,
    },
    /// A tool call waits for a client to answer `permission/request`.
    #[serde(rename_all = "camelCase")]
    PermissionRequested {
        request_id: String,
        tool_call_id: String,
        tool: String,
        title: String,
    },
    /// The permission request was answered (`allow`, `allowSession`, `deny`, `cancelled`).
    #[serde(rename_all = "camelCase")]
    PermissionResolved {
        request_id: String,
        decision: PermissionResolution,
        by: String,
    },
    /// A tool call ended: `completed`, `failed` (the tool reported an error), `denied`, or
    /// `cancelled`. `output` is what the model sees.
    #[serde(rename_all = "camelCase")]
    ToolCallFinished {
        message_id: String,
        tool_call_id: String,
        tool: String,
        status: ToolStatus,
        output: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metadata: Option<serde_json::Value>,
    },
    /// What the model is shown of the session was compacted to fit its context window; the
    /// stored messages are untouched. `fromMessageId`..`toMessageId` is the range of stored
    /// messages it changed. With `summaryMessageId` the model wrote a summary of that range
    /// (a new `system` message with a `summary` part) that it is shown from now on in place of
    /// the range; without it, only the next request was compacted: `stubbed` tool outputs
    /// replaced by a one-line stub and `dropped` messages left out. Token counts are the
    /// daemon's estimate of the request.
    #[serde(rename_all = "camelCase")]
    Compacted {
        from_message_id: String,
        to_message_id: String,
        tokens_before: u64,
        tokens_after: u64,
        stubbed: u32,
        dropped: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        summary_message_id: Option<String>,
    },
    /// A message is final; `finishReason` as in `session/messages`.
    #[serde(rename_all = "camelCase")]
    MessageFinished {
        message_id: String,
        finish_reason: FinishReason,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The session's title or model changed (its first prompt titled it, `session/rename`,
    /// `session/setModel`): both as they are now; `model` absent for the daemon's default.
    #[serde(rename_all = "camelCase")]
    SessionUpdated {
        title: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
    },
    /// `session/revert` put the files back as they were before `messageId`'s run and hid the
    /// messages from there on from the model.
    #[serde(rename_all = "camelCase")]
    Reverted {
        revert_id: String,
        message_id: String,
        files: Vec<String>,
        messages: u32,
    },
    /// `session/unrevert` undid revert `revertId`: its files and messages are back.
    #[serde(rename_all = "camelCase")]
    Unreverted {
        revert_id: String,
        files: Vec<String>,
        messages: u32,
    },
    /// `session/fork` made session `forkSessionId` from this one, with its messages up to
    /// `messageId` (all of them when absent).
    #[serde(rename_all = "camelCase")]
    Forked {
        fork_session_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_id: Option<String>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct CancelParams {
    #[serde(deserialize_with = "crate::message::deserialize_id")]
    #[cfg_attr(feature = "ts", ts(type = "number | string"))]
    pub id: RequestId,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct DaemonShutdownNoticeParams {
    /// Why: `signal`, `request`, `idle`.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn no_params_accepts_every_empty_shape() {
        for p in [None, Some(raw("{}")), Some(raw("[]")), Some(raw("null"))] {
            let r = ClientRequest::parse("daemon/status", p.as_deref())
                .unwrap()
                .unwrap();
            assert!(matches!(r, ClientRequest::DaemonStatus(NoParams)));
        }
    }

    #[test]
    fn a_stop_reason_of_a_newer_daemon_reads_as_none() {
        let read = |v: serde_json::Value| serde_json::from_value::<RunCompleteParams>(v).unwrap();
        let base = serde_json::json!({"sessionId": "s", "runId": "r", "cancelled": false});
        assert_eq!(read(base.clone()).stop_reason, None);
        let mut known = base.clone();
        known["stopReason"] = "maxSteps".into();
        assert_eq!(read(known).stop_reason, Some(RunStopReason::MaxSteps));
        let mut newer = base;
        newer["stopReason"] = "someLimitToCome".into();
        newer["error"] = "stopped".into();
        let p = read(newer);
        assert_eq!(p.stop_reason, None);
        assert_eq!(p.error.as_deref(), Some("stopped"));
    }

    #[test]
    fn unknown_method_is_none() {
        assert!(ClientRequest::parse("nope/nope", None).unwrap().is_none());
    }

    #[test]
    fn bad_params_name_the_field() {
        let e = ClientRequest::parse("debug/sleep", Some(&raw(r#"{"ms":"soon"}"#))).unwrap_err();
        assert!(e.message.contains("ms"), "{}", e.message);
        let e = ClientRequest::parse("debug/sleep", None).unwrap_err();
        assert!(e.message.contains("missing field `ms`"), "{}", e.message);
        let e = ClientRequest::parse("initialize", Some(&raw(r#"{"clientInfo":{"name":3}}"#)))
            .unwrap_err();
        assert!(e.message.contains("clientInfo.name"), "{}", e.message);
        let e = ClientRequest::parse("debug/sleep", Some(&raw("[5]"))).unwrap_err();
        assert!(e.message.contains("by-name"), "{}", e.message);
    }

    /// The per-method facts, spelled out: a change to the table shows up here, where a reviewer
    /// sees which behaviour of the connection or the reconnecting client it changes.
    #[test]
    fn method_facts_are_as_documented() {
        let with = |pick: fn(MethodFacts) -> bool| -> Vec<&str> {
            ClientRequest::METHODS
                .iter()
                .copied()
                .filter(|m| pick(ClientRequest::facts_of(m).unwrap()))
                .collect()
        };
        assert_eq!(with(|f| f.send), ["agent/send"]);
        assert_eq!(with(|f| f.after_sends), ["agent/cancel"]);
        assert_eq!(with(|f| f.uninterruptible), ["agent/send"]);
        assert_eq!(
            with(|f| f.resend),
            [
                "daemon/status",
                "workspace/list",
                "session/list",
                "session/get",
                "session/messages",
                "run/get",
                "agent/status",
                "model/list",
                "permission/rules/list",
                "permission/log",
                "config/get",
                "mcp/list",
            ]
        );
        assert_eq!(ClientRequest::facts_of("exit"), None);
        assert_eq!(ClientRequest::facts_of("nope/nope"), None);
        // The typed view and the by-name view are the same table.
        let send = ClientRequest::AgentSend(AgentSendParams::default());
        assert_eq!(send.facts(), <request::AgentSend as Request>::FACTS);
        assert_eq!(Some(send.facts()), ClientRequest::facts_of(send.method()));
    }

    #[test]
    fn optional_params_default() {
        let r = ClientRequest::parse("daemon/shutdown", Some(&raw("[]")))
            .unwrap()
            .unwrap();
        assert!(matches!(
            r,
            ClientRequest::DaemonShutdown(DaemonShutdownParams { force: false })
        ));
    }
}
