//! Servers a client gives one session (`session/setMcpServers`): what an ACP editor passes in
//! `session/new`, `session/load` and `session/resume`. They run in the same pool as the others
//! (supervised, started on the session's first run that needs tools, restarted with backoff),
//! are offered to that session's runs only, and need no approval: the client that sends them
//! speaks for the user, as the config file does. They are kept in memory: after a daemon restart
//! the editor sends them again when it loads the session.

use std::path::PathBuf;
use std::sync::Arc;

use crush_protocol::{McpServerConfig, McpServerInfo};

use super::Mcp;
use super::config::ServerSpec;
use super::supervise::Server;
use crate::sync::lock;

impl Mcp {
    /// Replaces session `session_id`'s servers with `configs`. A server whose definition is
    /// unchanged keeps running; the others are stopped. Nothing starts before a run needs it.
    /// An error is `(index, field, message)` for the first server that cannot be run; nothing
    /// changes then.
    pub fn set_session(
        &self,
        session_id: &str,
        configs: &[McpServerConfig],
        cwd: Option<PathBuf>,
    ) -> Result<Vec<McpServerInfo>, (usize, String, String)> {
        let mut specs = Vec::with_capacity(configs.len());
        for (i, c) in configs.iter().enumerate() {
            let spec = ServerSpec::from_client(c, cwd.clone()).map_err(|(f, m)| (i, f, m))?;
            if specs.iter().any(|s: &ServerSpec| s.name == spec.name) {
                return Err((
                    i,
                    "name".to_owned(),
                    format!("{:?} is given twice", spec.name),
                ));
            }
            specs.push(spec);
        }
        let mut sessions = lock(&self.inner.sessions);
        let old = sessions.remove(session_id).unwrap_or_default();
        let next: Vec<Arc<Server>> = specs
            .into_iter()
            .map(|spec| match old.iter().find(|s| s.spec == spec) {
                Some(kept) => kept.clone(),
                None => Arc::new(Server::session(
                    spec,
                    self.inner.key_vars.clone(),
                    self.inner.shutdown.child_token(),
                    session_id,
                )),
            })
            .collect();
        for s in &old {
            if !next.iter().any(|n| Arc::ptr_eq(n, s)) {
                s.retire();
            }
        }
        let infos = next.iter().map(|s| s.info()).collect();
        if !next.is_empty() {
            sessions.insert(session_id.to_owned(), next);
        }
        Ok(infos)
    }

    /// The session was deleted: its servers stop.
    pub fn forget_session(&self, session_id: &str) {
        if let Some(old) = lock(&self.inner.sessions).remove(session_id) {
            for s in old {
                s.retire();
            }
        }
    }
}
