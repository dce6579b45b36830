//! `session/subscribe` and `session/unsubscribe`, a closed connection's subscriptions, and the
//! daemon-wide trim of replay logs.

use std::sync::Arc;

use crush_protocol::{RpcError, SessionSubscribeParams, SessionSubscribeResult};

use super::Runtime;
use crate::peer::Peer;
use crate::sync::lock;

impl Runtime {
    /// Subscribes a connection to a session: replays what followed `afterSeq` from the log
    /// (or answers `resync`), then the connection is a live subscriber. Replay and registration
    /// happen under the session lock that publishing takes, so the replay ends exactly where
    /// the live stream begins.
    pub async fn subscribe(
        self: &Arc<Self>,
        peer: &Arc<Peer>,
        p: &SessionSubscribeParams,
    ) -> Result<SessionSubscribeResult, RpcError> {
        let row = crate::handlers::require_session(&self.store, &p.session_id).await?;
        let other_epoch = p.epoch.as_deref().is_some_and(|e| e != self.epoch);
        loop {
            let s = self.session(&row.id, &row.workspace_id, row.model.as_deref());
            let mut inner = lock(&s.inner);
            if inner.evicted {
                continue;
            }
            let sub = inner.events.subscribe(peer, p.after_seq, other_epoch);
            if sub.new {
                self.resend_permission_requests(&s.ws(), &mut inner, peer);
            }
            let streaming = if p.after_seq.is_none() || sub.resync {
                inner.events.streaming()
            } else {
                None
            };
            return Ok(SessionSubscribeResult {
                seq: inner.events.seq(),
                epoch: self.epoch.clone(),
                resync: sub.resync,
                replayed: sub.replayed,
                status: inner.status(),
                streaming,
            });
        }
    }

    pub async fn unsubscribe(&self, peer: &Peer, session_id: &str) -> Result<bool, RpcError> {
        let removed = peer.remove_subscription(session_id);
        if let Some(s) = self.existing_session(session_id) {
            let was = {
                let mut inner = lock(&s.inner);
                // Its copies of pending prompts are withdrawn: it no longer speaks for the session.
                inner.permissions.withdraw_from(peer);
                inner.events.unsubscribe(peer.id)
            };
            return Ok(was || removed);
        }
        if !removed {
            crate::handlers::require_session(&self.store, session_id).await?;
        }
        Ok(removed)
    }

    /// Forgets a closed connection's subscriptions.
    pub fn disconnect(&self, peer: &Peer) {
        for id in peer.take_subscriptions() {
            if let Some(s) = self.existing_session(&id) {
                lock(&s.inner).events.unsubscribe(peer.id);
            }
        }
    }

    /// Brings every replay log together back under the budget, oldest events first whichever
    /// session holds them: each pass takes the log holding the oldest event anywhere and drops
    /// its events up to the next log's oldest. One session lock is held at a time.
    pub fn trim_replay(&self) -> usize {
        let budget = &self.replay_budget;
        let target = budget.trim_target();
        let sessions = self.sessions_of(None);
        let mut dropped = 0;
        while budget.used() > target {
            let mut stamps: Vec<(u64, usize)> = sessions
                .iter()
                .enumerate()
                .filter_map(|(i, s)| lock(&s.inner).events.oldest_stamp().map(|t| (t, i)))
                .collect();
            stamps.sort_unstable();
            let Some(&(_, oldest)) = stamps.first() else {
                break;
            };
            let next = stamps.get(1).map_or(u64::MAX, |(t, _)| *t);
            let mut inner = lock(&sessions[oldest].inner);
            while budget.used() > target && inner.events.oldest_stamp().is_some_and(|t| t <= next) {
                inner.events.drop_oldest();
                dropped += 1;
            }
        }
        dropped
    }
}
