//! Error codes a client can receive, and the error value handlers return. Each code is listed in
//! `ErrorCode::ALL` with its name; a test checks that docs/protocol.md documents every one.

use jsonrpsee_types::{ErrorObject, ErrorObjectOwned};
use serde::Serialize;
use serde_json::Value;

/// Every error code the daemon sends. JSON-RPC's own codes, LSP's where LSP defines the same
/// situation, and crushd's in the implementation-defined server range (-32000 to -32099).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum ErrorCode {
    /// The body was not valid JSON, or the frame header could not be read.
    ParseError = -32700,
    /// Valid JSON that is not a JSON-RPC 2.0 request (also: batches, a second `initialize`,
    /// requests after `shutdown`).
    InvalidRequest = -32600,
    MethodNotFound = -32601,
    InvalidParams = -32602,
    InternalError = -32603,
    /// The connection already has as many requests in flight as the daemon allows
    /// (`[daemon] max_in_flight`); this one was refused without being run.
    Overloaded = -32001,
    /// A request arrived before `initialize` (LSP's code).
    ServerNotInitialized = -32002,
    /// The daemon is shutting down and takes no new work.
    ShuttingDown = -32003,
    /// The request was cancelled by `$/cancelRequest` or because its connection closed (LSP's code).
    RequestCancelled = -32800,
    /// A daemon→client request got no answer in time.
    RequestTimeout = -32004,
    /// No workspace has the given id.
    WorkspaceNotFound = -32010,
    /// No session has the given id.
    SessionNotFound = -32011,
    /// No run has the given id.
    RunNotFound = -32012,
    /// The workspace is closing (or closed) and takes no new runs.
    WorkspaceClosing = -32013,
    /// Runs are active or queued; the operation would end them (pass `force`, or cancel first).
    RunsActive = -32014,
    /// A run with the given id exists with a different session or prompt.
    DuplicateRunId = -32015,
    /// No pending permission request has the given id.
    PermissionNotFound = -32016,
    /// The permission request was already answered (by another client, or the run was cancelled).
    PermissionResolved = -32017,
    /// No saved permission rule has the given id (`permission/rules/remove`).
    PermissionRuleNotFound = -32018,
    /// The database could not be read or written (disk full, I/O error, read-only file).
    StorageFailed = -32020,
    /// No usable model is configured (or the requested one is unknown or lacks its API key).
    ModelNotConfigured = -32030,
    /// A model call the request needed failed (the provider's error is in the message); a
    /// `session/compact` whose summary could not be written.
    ModelFailed = -32031,
    /// No MCP server has the given name (`mcp/restart`).
    McpServerNotFound = -32040,
    /// The MCP server is disabled in the config file (`mcp/restart`).
    McpServerDisabled = -32041,
}

impl ErrorCode {
    /// Every code with its documented name, for the documentation test and for tools.
    pub const ALL: &'static [(ErrorCode, &'static str)] = &[
        (ErrorCode::ParseError, "ParseError"),
        (ErrorCode::InvalidRequest, "InvalidRequest"),
        (ErrorCode::MethodNotFound, "MethodNotFound"),
        (ErrorCode::InvalidParams, "InvalidParams"),
        (ErrorCode::InternalError, "InternalError"),
        (ErrorCode::Overloaded, "Overloaded"),
        (ErrorCode::ServerNotInitialized, "ServerNotInitialized"),
        (ErrorCode::ShuttingDown, "ShuttingDown"),
        (ErrorCode::RequestCancelled, "RequestCancelled"),
        (ErrorCode::RequestTimeout, "RequestTimeout"),
        (ErrorCode::WorkspaceNotFound, "WorkspaceNotFound"),
        (ErrorCode::SessionNotFound, "SessionNotFound"),
        (ErrorCode::RunNotFound, "RunNotFound"),
        (ErrorCode::WorkspaceClosing, "WorkspaceClosing"),
        (ErrorCode::RunsActive, "RunsActive"),
        (ErrorCode::DuplicateRunId, "DuplicateRunId"),
        (ErrorCode::PermissionNotFound, "PermissionNotFound"),
        (ErrorCode::PermissionResolved, "PermissionResolved"),
        (ErrorCode::PermissionRuleNotFound, "PermissionRuleNotFound"),
        (ErrorCode::StorageFailed, "StorageFailed"),
        (ErrorCode::ModelNotConfigured, "ModelNotConfigured"),
        (ErrorCode::ModelFailed, "ModelFailed"),
        (ErrorCode::McpServerNotFound, "McpServerNotFound"),
        (ErrorCode::McpServerDisabled, "McpServerDisabled"),
    ];

    pub const fn code(self) -> i32 {
        self as i32
    }

    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.iter().map(|(c, _)| *c).find(|c| c.code() == code)
    }
}

/// An error answer to a request: a code, a message a person can act on, and optional data.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct RpcError {
    pub code: i32,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: code.code(),
            message: message.into(),
            data: None,
        }
    }

    pub fn with_data(mut self, data: impl Serialize) -> Self {
        self.data = serde_json::to_value(data).ok();
        self
    }

    pub fn parse_error(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ParseError, message)
    }
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidParams, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InternalError, message)
    }
    pub fn cancelled() -> Self {
        Self::new(ErrorCode::RequestCancelled, "the request was cancelled")
    }
}

impl From<RpcError> for ErrorObjectOwned {
    fn from(e: RpcError) -> Self {
        ErrorObject::owned(e.code, e.message, e.data)
    }
}

impl From<ErrorObjectOwned> for RpcError {
    fn from(e: ErrorObjectOwned) -> Self {
        Self {
            code: e.code(),
            message: e.message().to_owned(),
            data: e
                .data()
                .and_then(|raw| serde_json::from_str(raw.get()).ok()),
        }
    }
}
