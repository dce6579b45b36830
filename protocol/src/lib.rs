//! The crushd wire protocol: LSP-framed JSON-RPC 2.0 over a local socket. This crate is the only
//! one that knows JSON-RPC field names: framing (`codec`) and the frame writer (`io`), the envelope (`message`), every method
//! with its parameter and result types (`methods`), error codes (`error`), the names states and
//! message parts travel as (`vocab`) and where the socket lives (`paths`). It holds no daemon logic.

pub mod codec;
pub mod error;
pub mod io;
pub mod message;
pub mod methods;
pub mod paths;
#[cfg(feature = "ts")]
pub mod ts;
pub mod vocab;

pub use codec::{FrameError, LspCodec};
pub use error::{ErrorCode, RpcError};
pub use jsonrpsee_types::Id;
pub use message::{Message, RequestId};
pub use methods::*;
pub use vocab::{
    AgentState, ContextWindowSource, FinishReason, McpScope, McpServerState, Part,
    PermissionResolution, PermissionSource, RuleScope, RunState, RunStopReason, SandboxMode,
    ToolStatus, UnknownName,
};
