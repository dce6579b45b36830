//! What `runs/` still imports from the RPC layer, kept so it compiles while it is restructured.
//! Nothing else may use these: the RPC layer is `rpc/`, and the layers below it return
//! `StoreError` (`Store::require_session`, `StoreError::SessionNotFound`), which becomes a
//! protocol error by `From` at the RPC edge.
// TODO(core): runs/ moves to Store::require_session and `?`

use crush_protocol::RpcError;

use crate::store::{SessionRow, Store, StoreError};

pub(crate) async fn require_session(store: &Store, id: &str) -> Result<SessionRow, RpcError> {
    Ok(store.require_session(id).await?)
}

pub(crate) fn session_not_found(id: &str) -> RpcError {
    StoreError::SessionNotFound(id.to_owned()).into()
}

pub(crate) fn storage(e: StoreError) -> RpcError {
    e.into()
}
