//! The edge where errors become protocol errors: the layers below return their own error types
//! and this is the one place that says which code and message a client gets for each.

use crush_protocol::{ErrorCode, RpcError};

use crate::store::StoreError;

/// A store error as the client sees it. A missing row is the client's mistake and names its id;
/// anything else is a database failure, logged once, here. The match is exhaustive so that a
/// new kind of store error gets a decision about its code.
impl From<StoreError> for RpcError {
    fn from(e: StoreError) -> Self {
        let code = match &e {
            StoreError::WorkspaceNotFound(_) => ErrorCode::WorkspaceNotFound,
            StoreError::SessionNotFound(_) => ErrorCode::SessionNotFound,
            StoreError::RunNotFound(_) => ErrorCode::RunNotFound,
            StoreError::MessageNotInSession { .. } => ErrorCode::InvalidParams,
            StoreError::Open { .. }
            | StoreError::Corrupt { .. }
            | StoreError::NewerSchema { .. }
            | StoreError::Migrate { .. }
            | StoreError::DataDir { .. }
            | StoreError::Db(_)
            | StoreError::Closed => {
                tracing::error!(error = %e, "database failure");
                return RpcError::new(
                    ErrorCode::StorageFailed,
                    format!("the database failed: {e}"),
                );
            }
        };
        RpcError::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_row_names_its_id_and_anything_else_is_a_storage_failure() {
        let e = RpcError::from(StoreError::SessionNotFound("s1".to_owned()));
        assert_eq!(e.code, ErrorCode::SessionNotFound.code());
        assert_eq!(e.message, r#"no session with id "s1""#);
        let e = RpcError::from(StoreError::WorkspaceNotFound("w1".to_owned()));
        assert_eq!(e.code, ErrorCode::WorkspaceNotFound.code());
        assert_eq!(e.message, r#"no workspace with id "w1""#);
        let e = RpcError::from(StoreError::RunNotFound("r1".to_owned()));
        assert_eq!(e.code, ErrorCode::RunNotFound.code());
        assert_eq!(e.message, r#"no run with id "r1""#);
        let e = RpcError::from(StoreError::Closed);
        assert_eq!(e.code, ErrorCode::StorageFailed.code());
        assert_eq!(
            e.message,
            "the database failed: the database is closed: the daemon is shutting down"
        );
    }
}
