//! Lookups for callers that need the row: a missing one is a `StoreError::*NotFound`, so a
//! request handler answers it with `?` (the RPC layer maps each to its protocol error) instead
//! of spelling the error at every call site.

use super::{MessageRow, Result, RunRow, SessionRow, Store, StoreError, WorkspaceRow};

impl Store {
    pub(crate) async fn require_workspace(&self, id: &str) -> Result<WorkspaceRow> {
        self.get_workspace(id)
            .await?
            .ok_or_else(|| StoreError::WorkspaceNotFound(id.to_owned()))
    }

    pub(crate) async fn require_session(&self, id: &str) -> Result<SessionRow> {
        self.get_session(id)
            .await?
            .ok_or_else(|| StoreError::SessionNotFound(id.to_owned()))
    }

    pub(crate) async fn require_run(&self, run_id: &str) -> Result<RunRow> {
        self.get_run(run_id)
            .await?
            .ok_or_else(|| StoreError::RunNotFound(run_id.to_owned()))
    }

    /// A message the request names within a session (`session/fork`, `session/diff`,
    /// `session/revert`): one of another session, or none, is the client's mistake.
    pub(crate) async fn require_message_of(
        &self,
        session_id: &str,
        message_id: &str,
    ) -> Result<MessageRow> {
        match self.get_message(message_id).await? {
            Some(m) if m.session_id == session_id => Ok(m),
            _ => Err(StoreError::MessageNotInSession {
                session: session_id.to_owned(),
                message: message_id.to_owned(),
            }),
        }
    }
}
