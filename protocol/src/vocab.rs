//! The protocol's vocabulary: every state, status, reason and decision that crosses the wire as
//! a name, and the parts a message is made of. Daemon and clients compare these types, never
//! their names, so a misspelt state is a compile error instead of a silent mismatch. Each name
//! is written once, in the `wire_enum!` table of its type; the database stores the same names
//! (the schema's `CHECK` constraints list them).

use std::fmt;
use std::str::FromStr;

use serde::de::Deserializer;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A name that is not one of a vocabulary type's wire names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a {kind}")]
pub struct UnknownName {
    pub kind: &'static str,
    pub name: String,
}

/// Declares a fieldless enum whose variants travel as fixed names: serde, `as_str`, `FromStr`,
/// `Display` and the TypeScript union all come from the one `Variant = "name"` table.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($kind:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $wire:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "ts", derive(ts_rs::TS))]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $wire)] $variant, )*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The name on the wire (and in the database).
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $wire, )*
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, UnknownName> {
                match s {
                    $( $wire => Ok($name::$variant), )*
                    _ => Err(UnknownName { kind: $kind, name: s.to_owned() }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        // Comparing with a name is what code holding a wire string (and tests written against
        // the wire) needs; it can only match a real name, never invent one.
        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

wire_enum! {
    /// Where a run is in its life (`run/get`, `agent/send`, `runFinished`; column `runs.state`).
    pub enum RunState ("run state") {
        /// Its row is written; the session has not taken it yet.
        Accepted = "accepted",
        /// Waiting behind the active run (queued or steered).
        Queued = "queued",
        Running = "running",
        Completed = "completed",
        Cancelled = "cancelled",
        Failed = "failed",
        /// The daemon stopped during the run.
        Interrupted = "interrupted",
    }
}

impl RunState {
    /// Whether nothing more happens to a run in this state.
    pub fn is_terminal(self) -> bool {
        match self {
            RunState::Accepted | RunState::Queued | RunState::Running => false,
            RunState::Completed
            | RunState::Cancelled
            | RunState::Failed
            | RunState::Interrupted => true,
        }
    }
}

wire_enum! {
    /// Why a run stopped where it did, when a limit of the daemon's ended it
    /// (`$/runComplete`'s `stopReason`).
    pub enum RunStopReason ("run stop reason") {
        /// The turn reached `[agent] max_steps` model steps; a follow-up prompt lets it go on.
        MaxSteps = "maxSteps",
    }
}

wire_enum! {
    /// Where an MCP server is in its life (`mcp/list`).
    pub enum McpServerState ("MCP server state") {
        /// Configured, not started yet: it starts when a run first needs its tools.
        Idle = "idle",
        /// Starting or restarting: its tools are not callable until it is ready.
        Starting = "starting",
        Ready = "ready",
        /// It would not start, or it died; it is retried after a backoff (`lastError` says why).
        Failed = "failed",
        /// `enabled = false` in the config.
        Disabled = "disabled",
        /// From a workspace's `.mcp.json` and not approved for that workspace: it does not start
        /// until a client approves it (a `permission/request` at the next run).
        Unapproved = "unapproved",
    }
}

wire_enum! {
    /// Which servers an MCP server is shared by (`mcp/list`).
    pub enum McpScope ("MCP server scope") {
        /// From `config.toml`: shared by every session of every workspace.
        Global = "global",
        /// From a workspace's `.mcp.json`: shared by the sessions of that workspace.
        Project = "project",
        /// Given to one session by a client (`session/setMcpServers`: an ACP editor's).
        Session = "session",
    }
}

wire_enum! {
    /// How `bash` tool commands are confined (`[sandbox] mode`, `session/setSandbox`,
    /// `daemon/status`). The same names in the config file, on the wire and on `crushctl`'s
    /// command line.
    pub enum SandboxMode ("sandbox mode") {
        /// Writes only inside the workspace, the system temp directory and the paths the
        /// config adds; reads everywhere.
        WorkspaceWrite = "workspace-write",
        /// No writes anywhere (but the null and terminal devices); reads everywhere.
        ReadOnly = "read-only",
        /// Not confined.
        Off = "off",
    }
}

/// Commands are confined to the workspace unless the user says otherwise.
impl Default for SandboxMode {
    fn default() -> Self {
        SandboxMode::WorkspaceWrite
    }
}

wire_enum! {
    /// What a session is doing (`agent/status`).
    pub enum AgentState ("agent state") {
        Idle = "idle",
        Active = "active",
        /// Active, and a tool call waits for an answer to `permission/request`.
        WaitingForPermission = "waitingForPermission",
    }
}

/// A session with no run is idle.
impl Default for AgentState {
    fn default() -> Self {
        AgentState::Idle
    }
}

wire_enum! {
    /// How a tool call ended (`toolCallFinished`, the `status` of a `toolResult` part).
    pub enum ToolStatus ("tool status") {
        Completed = "completed",
        /// The tool ran and reported an error (or could not be prepared).
        Failed = "failed",
        /// A client answered the permission request with `deny`.
        Denied = "denied",
        Cancelled = "cancelled",
    }
}

wire_enum! {
    /// Why a message ended (`finishReason`; column `messages.finish_reason`). The first three are
    /// a model step's own ends (what the model layer reports); the others are the daemon's.
    /// `canceled` is spelt with one `l`, unlike the run state `cancelled`: both are stored and
    /// on the wire as they are.
    pub enum FinishReason ("finish reason") {
        EndTurn = "end_turn",
        MaxTokens = "max_tokens",
        ToolUse = "tool_use",
        Canceled = "canceled",
        Error = "error",
        /// The daemon stopped while the message streamed.
        Interrupted = "interrupted",
    }
}

wire_enum! {
    /// Where the context window `model/list` shows for a model comes from (`contextWindowSource`).
    pub enum ContextWindowSource ("context window source") {
        /// The daemon's built-in table of known models.
        Preset = "preset",
        /// The model's entry in a `[providers.<id>.models]` table of the config file.
        Config = "config",
        /// Neither knows the model: a conservative default the daemon budgets against.
        Default = "default",
    }
}

wire_enum! {
    /// How a permission request ended (`permissionResolved`, `$/permissionResolved`).
    pub enum PermissionResolution ("permission resolution") {
        Allow = "allow",
        AllowSession = "allowSession",
        /// Allowed, and a permission rule was saved for later calls (`permission/rules/list`).
        AllowAlways = "allowAlways",
        Deny = "deny",
        /// Withdrawn: the run was cancelled before anyone answered.
        Cancelled = "cancelled",
    }
}

wire_enum! {
    /// Where a saved permission rule applies (column `permission_rules.scope`).
    pub enum RuleScope ("rule scope") {
        /// The session the prompt came from.
        Session = "session",
        /// Every session of the prompt's workspace.
        Workspace = "workspace",
        /// Every session of every workspace.
        Global = "global",
    }
}

wire_enum! {
    /// What decided a tool call's permission (`permission/log`; column
    /// `permission_log.source`).
    pub enum PermissionSource ("permission source") {
        /// A client answered a prompt (`client` and `connection` say which).
        Prompt = "prompt",
        /// The send or the session is in yolo mode.
        Yolo = "yolo",
        /// A `[permissions]` rule of the config file (`allow`, `allow_bash`).
        Config = "config",
        /// An earlier `allowSession` answer for this tool in this session (kept in memory).
        SessionGrant = "sessionGrant",
        /// A saved permission rule (`ruleId`).
        Rule = "rule",
        /// An MCP server's `allow` list in the config file.
        McpAllow = "mcpAllow",
    }
}

/// One part of a message (`session/messages`, streaming snapshots, the `parts` column).
///
/// The same variant has slightly different shapes in different places, each kept as it has
/// always been: a `toolCall` stored in the database has `input` as the model's raw JSON *text*
/// (a string), while the streaming snapshot's has it parsed; a stored `toolResult` has
/// `isError`, the snapshot's has not. Hence `input: Value` and the optional fields.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(
    feature = "ts",
    ts(
        tag = "type",
        rename_all = "camelCase",
        rename_all_fields = "camelCase"
    )
)]
pub enum Part {
    Text {
        text: String,
    },
    Reasoning {
        reasoning: String,
        /// The provider's signature (Anthropic), sent back with the reasoning within a turn.
        #[cfg_attr(feature = "ts", ts(optional))]
        signature: Option<String>,
    },
    ToolCall {
        id: String,
        name: String,
        /// Stored: the model's arguments as JSON text (a string). Snapshot: parsed (a string if
        /// it was not JSON).
        input: Value,
    },
    ToolResult {
        tool_call_id: String,
        name: String,
        /// What the model sees.
        content: String,
        status: ToolStatus,
        /// Stored parts only.
        #[cfg_attr(feature = "ts", ts(optional))]
        is_error: Option<bool>,
        #[cfg_attr(feature = "ts", ts(optional))]
        metadata: Option<Value>,
    },
    Attachment {
        text: String,
        #[cfg_attr(feature = "ts", ts(optional))]
        name: Option<String>,
        #[cfg_attr(feature = "ts", ts(optional))]
        mime_type: Option<String>,
    },
    /// An image: one sent with a prompt (a `user` message), or one a tool returned (a `tool`
    /// message; `toolCallId` names the call). `data` is base64 (standard alphabet, padded).
    Image {
        mime_type: String,
        data: String,
        #[cfg_attr(feature = "ts", ts(optional))]
        name: Option<String>,
        #[cfg_attr(feature = "ts", ts(optional))]
        tool_call_id: Option<String>,
    },
    /// A summary the model wrote of older messages to fit its context window (stored as a
    /// `system` message of its own): the model is shown it in place of the messages from
    /// `fromMessageId` to `toMessageId`, which stay stored as they were.
    Summary {
        text: String,
        from_message_id: String,
        to_message_id: String,
        /// How many stored messages it replaces.
        messages: u32,
    },
    /// A part this version does not know (a newer daemon's, or a shape none of the above
    /// matches exactly), kept as it was so that it is passed on, and written back, unchanged.
    #[cfg_attr(feature = "ts", ts(skip))]
    Other(Value),
}

impl Part {
    pub fn text(text: impl Into<String>) -> Self {
        Part::Text { text: text.into() }
    }

    /// The text streamed deltas extend: `text` of a text part, `reasoning` of a reasoning part.
    /// Other parts arrive whole.
    pub fn streamed_text(&self) -> Option<&str> {
        match self {
            Part::Text { text } => Some(text),
            Part::Reasoning { reasoning, .. } => Some(reasoning),
            _ => None,
        }
    }

    /// See [`Part::streamed_text`].
    pub fn streamed_text_mut(&mut self) -> Option<&mut String> {
        match self {
            Part::Text { text } => Some(text),
            Part::Reasoning { reasoning, .. } => Some(reasoning),
            _ => None,
        }
    }

    /// The text of a text part.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Part::Text { text } => Some(text),
            _ => None,
        }
    }

    /// The part as a JSON value, in the same shape as it serializes.
    fn from_value(v: Value) -> Part {
        let typed = match &v {
            Value::Object(m) => Fields::new(m).and_then(Fields::part),
            _ => None,
        };
        typed.unwrap_or(Part::Other(v))
    }
}

/// The text parts of `parts`, concatenated (what a person reads as the message).
pub fn text_of(parts: &[Part]) -> String {
    parts.iter().filter_map(Part::as_text).collect()
}

/// Reads one part's fields, counting those taken, so that a part with a field this version does
/// not know is kept whole as [`Part::Other`] instead of losing the field.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    taken: usize,
}

impl<'a> Fields<'a> {
    fn new(map: &'a Map<String, Value>) -> Option<Self> {
        map.get("type")?.as_str()?;
        Some(Self { map, taken: 1 })
    }

    fn value(&mut self, key: &str) -> Option<Value> {
        let v = self.map.get(key)?;
        self.taken += 1;
        Some(v.clone())
    }

    fn string(&mut self, key: &str) -> Option<String> {
        match self.map.get(key)? {
            Value::String(s) => {
                self.taken += 1;
                Some(s.clone())
            }
            _ => None,
        }
    }

    fn u32(&mut self, key: &str) -> Option<u32> {
        let n = u32::try_from(self.map.get(key)?.as_u64()?).ok()?;
        self.taken += 1;
        Some(n)
    }

    /// `Some(None)` when absent; `None` when present with another type than a string.
    fn optional_string(&mut self, key: &str) -> Option<Option<String>> {
        match self.map.get(key) {
            None => Some(None),
            Some(_) => self.string(key).map(Some),
        }
    }

    fn optional_bool(&mut self, key: &str) -> Option<Option<bool>> {
        match self.map.get(key) {
            None => Some(None),
            Some(Value::Bool(b)) => {
                self.taken += 1;
                Some(Some(*b))
            }
            Some(_) => None,
        }
    }

    fn optional_value(&mut self, key: &str) -> Option<Value> {
        self.map
            .contains_key(key)
            .then(|| self.value(key))
            .flatten()
    }

    fn part(mut self) -> Option<Part> {
        let kind = self.map.get("type")?.as_str()?;
        let part = match kind {
            "text" => Part::Text {
                text: self.string("text")?,
            },
            "reasoning" => Part::Reasoning {
                reasoning: self.string("reasoning")?,
                signature: self.optional_string("signature")?,
            },
            "toolCall" => Part::ToolCall {
                id: self.string("id")?,
                name: self.string("name")?,
                input: self.value("input")?,
            },
            "toolResult" => Part::ToolResult {
                tool_call_id: self.string("toolCallId")?,
                name: self.string("name")?,
                content: self.string("content")?,
                status: self.string("status")?.parse().ok()?,
                is_error: self.optional_bool("isError")?,
                metadata: self.optional_value("metadata"),
            },
            "summary" => Part::Summary {
                text: self.string("text")?,
                from_message_id: self.string("fromMessageId")?,
                to_message_id: self.string("toMessageId")?,
                messages: self.u32("messages")?,
            },
            "image" => Part::Image {
                mime_type: self.string("mimeType")?,
                data: self.string("data")?,
                name: self.optional_string("name")?,
                tool_call_id: self.optional_string("toolCallId")?,
            },
            "attachment" => Part::Attachment {
                text: self.string("text")?,
                name: self.optional_string("name")?,
                mime_type: self.optional_string("mimeType")?,
            },
            _ => return None,
        };
        (self.taken == self.map.len()).then_some(part)
    }
}

// Written by hand rather than derived: parts were first written as `serde_json::Value` objects,
// which (without serde_json's `preserve_order`) serialize with their keys sorted, `type` among
// them. A derived tagged enum would put `type` first and change the bytes on the wire and in the
// database. So each arm writes its keys in sorted (byte) order; a test compares every shape
// with the `Value` it replaces.
impl Serialize for Part {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (kind, len) = match self {
            Part::Other(v) => return v.serialize(serializer),
            Part::Text { .. } => ("text", 2),
            Part::Reasoning { signature, .. } => {
                ("reasoning", 2 + usize::from(signature.is_some()))
            }
            Part::ToolCall { .. } => ("toolCall", 4),
            Part::Summary { .. } => ("summary", 5),
            Part::ToolResult {
                is_error, metadata, ..
            } => (
                "toolResult",
                5 + usize::from(is_error.is_some()) + usize::from(metadata.is_some()),
            ),
            Part::Image {
                name, tool_call_id, ..
            } => (
                "image",
                3 + usize::from(name.is_some()) + usize::from(tool_call_id.is_some()),
            ),
            Part::Attachment {
                name, mime_type, ..
            } => (
                "attachment",
                2 + usize::from(name.is_some()) + usize::from(mime_type.is_some()),
            ),
        };
        let mut map = serializer.serialize_map(Some(len))?;
        match self {
            Part::Other(_) => {}
            Part::Text { text } => {
                map.serialize_entry("text", text)?;
            }
            Part::Reasoning {
                reasoning,
                signature,
            } => {
                map.serialize_entry("reasoning", reasoning)?;
                if let Some(s) = signature {
                    map.serialize_entry("signature", s)?;
                }
            }
            Part::ToolCall { id, name, input } => {
                map.serialize_entry("id", id)?;
                map.serialize_entry("input", input)?;
                map.serialize_entry("name", name)?;
            }
            Part::Summary {
                text,
                from_message_id,
                to_message_id,
                messages,
            } => {
                map.serialize_entry("fromMessageId", from_message_id)?;
                map.serialize_entry("messages", messages)?;
                map.serialize_entry("text", text)?;
                map.serialize_entry("toMessageId", to_message_id)?;
            }
            Part::ToolResult {
                tool_call_id,
                name,
                content,
                status,
                is_error,
                metadata,
            } => {
                map.serialize_entry("content", content)?;
                if let Some(e) = is_error {
                    map.serialize_entry("isError", e)?;
                }
                if let Some(m) = metadata {
                    map.serialize_entry("metadata", m)?;
                }
                map.serialize_entry("name", name)?;
                map.serialize_entry("status", status)?;
                map.serialize_entry("toolCallId", tool_call_id)?;
            }
            Part::Image {
                mime_type,
                data,
                name,
                tool_call_id,
            } => {
                map.serialize_entry("data", data)?;
                map.serialize_entry("mimeType", mime_type)?;
                if let Some(n) = name {
                    map.serialize_entry("name", n)?;
                }
                if let Some(t) = tool_call_id {
                    map.serialize_entry("toolCallId", t)?;
                }
            }
            Part::Attachment {
                text,
                name,
                mime_type,
            } => {
                if let Some(m) = mime_type {
                    map.serialize_entry("mimeType", m)?;
                }
                if let Some(n) = name {
                    map.serialize_entry("name", n)?;
                }
                map.serialize_entry("text", text)?;
            }
        }
        map.serialize_entry("type", kind)?;
        map.end()
    }
}

// Never fails on a JSON value: whatever is not exactly a known part becomes `Part::Other`, so
// rows written by any version (and parts of a newer daemon) are read and passed on unchanged.
impl<'de> Deserialize<'de> for Part {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(Part::from_value)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use serde_json::json;

    use super::*;

    fn bytes<T: Serialize>(t: &T) -> String {
        serde_json::to_string(t).unwrap()
    }

    #[test]
    fn every_name_is_the_one_used_before_the_types() {
        let names = |all: Vec<(String, &'static str)>| {
            for (serialized, name) in &all {
                assert_eq!(serialized, &format!("{name:?}"));
            }
            all.into_iter().map(|(_, n)| n).collect::<Vec<_>>()
        };
        assert_eq!(
            names(
                RunState::ALL
                    .iter()
                    .map(|s| (bytes(s), s.as_str()))
                    .collect()
            ),
            [
                "accepted",
                "queued",
                "running",
                "completed",
                "cancelled",
                "failed",
                "interrupted"
            ]
        );
        assert_eq!(
            names(
                AgentState::ALL
                    .iter()
                    .map(|s| (bytes(s), s.as_str()))
                    .collect()
            ),
            ["idle", "active", "waitingForPermission"]
        );
        assert_eq!(
            names(
                ToolStatus::ALL
                    .iter()
                    .map(|s| (bytes(s), s.as_str()))
                    .collect()
            ),
            ["completed", "failed", "denied", "cancelled"]
        );
        assert_eq!(
            names(
                FinishReason::ALL
                    .iter()
                    .map(|s| (bytes(s), s.as_str()))
                    .collect()
            ),
            [
                "end_turn",
                "max_tokens",
                "tool_use",
                "canceled",
                "error",
                "interrupted"
            ]
        );
        assert_eq!(
            names(
                PermissionResolution::ALL
                    .iter()
                    .map(|s| (bytes(s), s.as_str()))
                    .collect()
            ),
            ["allow", "allowSession", "allowAlways", "deny", "cancelled"]
        );
    }

    #[test]
    fn names_parse_back_and_unknown_names_are_refused() {
        for s in RunState::ALL {
            assert_eq!(s.as_str().parse::<RunState>().unwrap(), *s);
            assert_eq!(serde_json::from_str::<RunState>(&bytes(s)).unwrap(), *s);
        }
        for r in FinishReason::ALL {
            assert_eq!(r.as_str().parse::<FinishReason>().unwrap(), *r);
        }
        let e = "canceled".parse::<RunState>().unwrap_err();
        assert_eq!(e.to_string(), r#""canceled" is not a run state"#);
        assert!("cancelled".parse::<FinishReason>().is_err());
        assert!(serde_json::from_str::<ToolStatus>(r#""done""#).is_err());
    }

    #[test]
    fn terminal_run_states() {
        let terminal: Vec<_> = RunState::ALL
            .iter()
            .filter(|s| s.is_terminal())
            .map(|s| s.as_str())
            .collect();
        assert_eq!(
            terminal,
            ["completed", "cancelled", "failed", "interrupted"]
        );
    }

    /// Every shape a part has been written in, as the `json!` that wrote it, and its bytes.
    fn shapes() -> Vec<(Part, Value, &'static str)> {
        vec![
            (
                Part::text("hi"),
                json!({"type": "text", "text": "hi"}),
                r#"{"text":"hi","type":"text"}"#,
            ),
            (
                Part::Reasoning {
                    reasoning: "so".into(),
                    signature: None,
                },
                json!({"type": "reasoning", "reasoning": "so"}),
                r#"{"reasoning":"so","type":"reasoning"}"#,
            ),
            (
                Part::Reasoning {
                    reasoning: String::new(),
                    signature: Some("sig".into()),
                },
                json!({"type": "reasoning", "reasoning": "", "signature": "sig"}),
                r#"{"reasoning":"","signature":"sig","type":"reasoning"}"#,
            ),
            (
                // Stored: the input is the model's JSON text.
                Part::ToolCall {
                    id: "c1".into(),
                    name: "view".into(),
                    input: Value::String(r#"{"path":"a.rs"}"#.into()),
                },
                json!({"type": "toolCall", "id": "c1", "name": "view", "input": r#"{"path":"a.rs"}"#}),
                r#"{"id":"c1","input":"{\"path\":\"a.rs\"}","name":"view","type":"toolCall"}"#,
            ),
            (
                // Streaming snapshot: the input parsed.
                Part::ToolCall {
                    id: "c1".into(),
                    name: "view".into(),
                    input: json!({"path": "a.rs", "limit": 3}),
                },
                json!({"type": "toolCall", "id": "c1", "name": "view", "input": {"path": "a.rs", "limit": 3}}),
                r#"{"id":"c1","input":{"limit":3,"path":"a.rs"},"name":"view","type":"toolCall"}"#,
            ),
            (
                // Stored: with `isError`.
                Part::ToolResult {
                    tool_call_id: "c1".into(),
                    name: "edit".into(),
                    content: "done".into(),
                    status: ToolStatus::Completed,
                    is_error: Some(false),
                    metadata: Some(json!({"diff": "+x"})),
                },
                json!({"type": "toolResult", "toolCallId": "c1", "name": "edit", "content": "done",
                       "isError": false, "status": "completed", "metadata": {"diff": "+x"}}),
                r#"{"content":"done","isError":false,"metadata":{"diff":"+x"},"name":"edit","status":"completed","toolCallId":"c1","type":"toolResult"}"#,
            ),
            (
                // Streaming snapshot: no `isError`.
                Part::ToolResult {
                    tool_call_id: "c1".into(),
                    name: "bash".into(),
                    content: "denied".into(),
                    status: ToolStatus::Denied,
                    is_error: None,
                    metadata: None,
                },
                json!({"type": "toolResult", "toolCallId": "c1", "name": "bash", "status": "denied", "content": "denied"}),
                r#"{"content":"denied","name":"bash","status":"denied","toolCallId":"c1","type":"toolResult"}"#,
            ),
            (
                Part::Attachment {
                    text: "body".into(),
                    name: Some("a.txt".into()),
                    mime_type: Some("text/plain".into()),
                },
                json!({"type": "attachment", "text": "body", "name": "a.txt", "mimeType": "text/plain"}),
                r#"{"mimeType":"text/plain","name":"a.txt","text":"body","type":"attachment"}"#,
            ),
            (
                Part::Attachment {
                    text: "body".into(),
                    name: None,
                    mime_type: None,
                },
                json!({"type": "attachment", "text": "body"}),
                r#"{"text":"body","type":"attachment"}"#,
            ),
            (
                Part::Image {
                    mime_type: "image/png".into(),
                    data: "AAAA".into(),
                    name: Some("shot.png".into()),
                    tool_call_id: None,
                },
                json!({"type": "image", "mimeType": "image/png", "data": "AAAA", "name": "shot.png"}),
                r#"{"data":"AAAA","mimeType":"image/png","name":"shot.png","type":"image"}"#,
            ),
            (
                Part::Image {
                    mime_type: "image/gif".into(),
                    data: "AAAA".into(),
                    name: None,
                    tool_call_id: Some("c1".into()),
                },
                json!({"type": "image", "mimeType": "image/gif", "data": "AAAA", "toolCallId": "c1"}),
                r#"{"data":"AAAA","mimeType":"image/gif","toolCallId":"c1","type":"image"}"#,
            ),
            (
                Part::Summary {
                    text: "The user asked for x.".into(),
                    from_message_id: "m2".into(),
                    to_message_id: "m9".into(),
                    messages: 8,
                },
                json!({"type": "summary", "text": "The user asked for x.", "fromMessageId": "m2",
                       "toMessageId": "m9", "messages": 8}),
                r#"{"fromMessageId":"m2","messages":8,"text":"The user asked for x.","toMessageId":"m9","type":"summary"}"#,
            ),
        ]
    }

    #[test]
    fn each_part_serializes_to_the_bytes_of_the_json_it_replaces() {
        for (part, old, exact) in shapes() {
            assert_eq!(bytes(&part), exact);
            assert_eq!(bytes(&part), bytes(&old), "{part:?}");
            assert_eq!(serde_json::from_value::<Part>(old).unwrap(), part);
        }
    }

    #[test]
    fn parts_stored_by_the_old_code_parse_and_write_back_identically() {
        // A stored assistant message and tool message as the daemon wrote them before the types
        // (a `Value::Array` of `json!` objects turned into text).
        let stored = [
            Value::Array(shapes().into_iter().map(|(_, v, _)| v).collect()).to_string(),
            r#"[{"reasoning":"think","signature":"s","type":"reasoning"},{"text":"Hello","type":"text"},{"id":"t1","input":"{}","name":"ls","type":"toolCall"}]"#.to_owned(),
            "[]".to_owned(),
        ];
        for text in stored {
            let parts: Vec<Part> = serde_json::from_str(&text).unwrap();
            assert!(!parts.iter().any(|p| matches!(p, Part::Other(_))), "{text}");
            assert_eq!(serde_json::to_string(&parts).unwrap(), text);
        }
    }

    #[test]
    fn parts_this_version_does_not_know_pass_through_unchanged() {
        let text = r#"[{"type":"image","url":"x"},{"text":"a","type":"text","x":1},{"text":7,"type":"text"},{"content":"c","name":"n","status":"weird","toolCallId":"i","type":"toolResult"},"loose",{"no":"type"}]"#;
        let parts: Vec<Part> = serde_json::from_str(text).unwrap();
        assert!(
            parts.iter().all(|p| matches!(p, Part::Other(_))),
            "{parts:?}"
        );
        assert_eq!(serde_json::to_string(&parts).unwrap(), text);
    }

    #[test]
    fn streamed_text_is_that_of_text_and_reasoning_parts() {
        let mut parts: Vec<Part> = serde_json::from_value(
            json!([{"type": "text", "text": "a"}, {"type": "reasoning", "reasoning": "b"},
                   {"type": "toolCall", "id": "i", "name": "n", "input": "{}"}]),
        )
        .unwrap();
        assert_eq!(
            parts.iter().map(Part::streamed_text).collect::<Vec<_>>(),
            [Some("a"), Some("b"), None]
        );
        if let Some(t) = parts[0].streamed_text_mut() {
            t.push('!');
        }
        assert_eq!(text_of(&parts), "a!");
    }
}
