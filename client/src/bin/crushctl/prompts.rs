//! The daemon's `permission/request`s as a command receives them: handed to the command's own
//! loop (a terminal prompt in `run`, the editor in `acp`), which answers on the oneshot. A
//! request nobody can answer is `deferred`, so other clients may still be asked.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crush_client::RequestHandler;
use crush_protocol::{
    ErrorCode, PermissionDecision, PermissionRequestParams, PermissionRequestResult, RpcError,
    daemon_request,
};

/// One permission request waiting for the command's answer.
pub type PromptRequest = (
    PermissionRequestParams,
    oneshot::Sender<PermissionRequestResult>,
);

/// An answer without a rule.
pub fn decided(decision: PermissionDecision) -> PermissionRequestResult {
    PermissionRequestResult {
        decision,
        scope: None,
        pattern: None,
    }
}

/// Hands the daemon's permission requests to `tx`; `who` names the command in the error for any
/// other daemon request.
pub fn permission_handler(
    tx: mpsc::UnboundedSender<PromptRequest>,
    who: &'static str,
) -> RequestHandler {
    Arc::new(move |method, params| {
        let tx = tx.clone();
        Box::pin(async move {
            if method != daemon_request::PERMISSION_REQUEST {
                return Err(RpcError::new(
                    ErrorCode::MethodNotFound,
                    format!("{who} does not handle {method:?}"),
                ));
            }
            let p: PermissionRequestParams = serde_json::from_value(params)
                .map_err(|e| RpcError::new(ErrorCode::InvalidParams, e.to_string()))?;
            let (reply, answer) = oneshot::channel();
            let result = if tx.send((p, reply)).is_ok() {
                answer
                    .await
                    .unwrap_or_else(|_| decided(PermissionDecision::Deferred))
            } else {
                decided(PermissionDecision::Deferred)
            };
            serde_json::to_value(result)
                .map_err(|e| RpcError::new(ErrorCode::InternalError, e.to_string()))
        })
    })
}
