//! Unsaved ends: a run's terminal write that the store refused (a full disk, a read-only or
//! broken database file), kept and retried until it lands or the daemon stops.
//!
//! A run's `$/runComplete` is never held back by the database: it goes out at once, its `error`
//! saying the turn could not be saved. What must not happen is that the database then goes on
//! saying `running` (or knows nothing of the run) while it is over. So the run's terminal
//! record is kept in the registry — `run/get` reads it between the live runs and the database —
//! and its write is retried with a backoff. When the disk has room again the write lands (the
//! whole turn: its message parts are in memory), and the record is dropped. If the daemon stops
//! first, the next start marks the run `interrupted`, as for a crash.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crush_protocol::{FinishReason, RunInfo, RunState, RunStopReason};

use super::Runtime;
use crate::store::{FinishTurn, RunEnd, StoreError, TurnUsage, now_ms};

/// First wait before a retry; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A terminal write, owned so it can outlive the turn that failed to make it.
#[derive(Debug, Clone)]
pub(super) enum EndWrite {
    /// A turn's last write ([`FinishTurn`]).
    Turn(OwnedFinish),
    /// Runs that ended without a turn to finish ([`RunEnd`]).
    Ends(Vec<OwnedEnd>),
}

#[derive(Debug, Clone)]
pub(super) struct OwnedFinish {
    pub session_id: String,
    pub message_id: Option<String>,
    pub parts: String,
    pub finish_reason: FinishReason,
    pub error: Option<String>,
    pub run_state: RunState,
    pub stop_reason: Option<RunStopReason>,
    pub run_ids: Vec<String>,
    pub usage: TurnUsage,
}

#[derive(Debug, Clone)]
pub(super) struct OwnedEnd {
    pub run_id: String,
    pub session_id: String,
    pub prompt: String,
    pub state: RunState,
    pub error: Option<String>,
}

impl EndWrite {
    fn session_id(&self) -> Option<&str> {
        match self {
            EndWrite::Turn(f) => Some(&f.session_id),
            EndWrite::Ends(ends) => ends.first().map(|e| e.session_id.as_str()),
        }
    }

    fn run_ids(&self) -> Vec<String> {
        match self {
            EndWrite::Turn(f) => f.run_ids.clone(),
            EndWrite::Ends(ends) => ends.iter().map(|e| e.run_id.clone()).collect(),
        }
    }

    /// The limit that ended the turn, if one did (runs without a turn have none).
    fn stop_reason(&self) -> Option<RunStopReason> {
        match self {
            EndWrite::Turn(f) => f.stop_reason,
            EndWrite::Ends(_) => None,
        }
    }
}

impl Runtime {
    /// Makes the write once.
    pub(super) async fn write_end(&self, w: &EndWrite) -> Result<(), StoreError> {
        match w {
            EndWrite::Turn(f) => {
                let ids: Vec<&str> = f.run_ids.iter().map(String::as_str).collect();
                self.store
                    .finish_turn(&FinishTurn {
                        session_id: &f.session_id,
                        message_id: f.message_id.as_deref(),
                        parts: &f.parts,
                        finish_reason: f.finish_reason,
                        error: f.error.as_deref(),
                        run_state: f.run_state,
                        stop_reason: f.stop_reason,
                        run_ids: &ids,
                        usage: f.usage,
                    })
                    .await
            }
            EndWrite::Ends(ends) => {
                let rows: Vec<RunEnd<'_>> = ends
                    .iter()
                    .map(|e| RunEnd {
                        run_id: &e.run_id,
                        session_id: &e.session_id,
                        prompt: &e.prompt,
                        state: e.state,
                        error: e.error.as_deref(),
                    })
                    .collect();
                self.store.record_run_ends(&rows).await
            }
        }
    }

    /// The write `w` failed: keeps each of its runs' terminal record for `run/get` (taken from
    /// the registry, so call this before the runs retire) and retries `w` in the background
    /// until it lands or the daemon stops.
    pub(super) fn save_end_later(
        self: &Arc<Self>,
        w: EndWrite,
        state: RunState,
        error: Option<&str>,
        message_id: Option<&str>,
    ) {
        let ids = w.run_ids();
        self.registry.keep_unsaved(self.ended_infos(
            &ids,
            state,
            error,
            w.stop_reason(),
            message_id,
        ));
        warn!(runs = ?ids, "the end of a run could not be saved; retrying in the background");
        let rt = self.clone();
        self.retries.spawn(async move {
            let mut wait = FIRST_BACKOFF;
            let mut attempts: u64 = 1;
            loop {
                tokio::select! {
                    _ = rt.stop_retries.cancelled() => {
                        warn!(runs = ?ids, "the daemon stops before the end of these runs was saved; \
                              they will show as interrupted");
                        return;
                    }
                    _ = tokio::time::sleep(wait) => {}
                }
                attempts += 1;
                match rt.write_end(&w).await {
                    Ok(()) => {
                        rt.registry.forget_unsaved(&ids);
                        info!(runs = ?ids, attempts, "saved the end of the runs at last");
                        return;
                    }
                    Err(e) => {
                        // The session was deleted meanwhile (its runs went with it): there is
                        // nothing left to record the end in, and retrying would fail forever.
                        if let Some(session) = w.session_id()
                            && let Ok(None) = rt.store.get_session(session).await
                        {
                            rt.registry.forget_unsaved(&ids);
                            info!(runs = ?ids, "the session was deleted; its unsaved run ends are dropped");
                            return;
                        }
                        // Logged at the 2nd, 4th, 8th… attempt: a long outage does not flood
                        // the log (which may sit on the same full disk).
                        if attempts.is_power_of_two() {
                            warn!(runs = ?ids, attempts, error = %e, "still cannot save the end of the runs");
                        }
                        wait = (wait * 2).min(MAX_BACKOFF);
                    }
                }
            }
        });
    }

    /// The terminal record of each run, from the live registry, as `run/get` should show it
    /// until the write lands.
    fn ended_infos(
        &self,
        ids: &[String],
        state: RunState,
        error: Option<&str>,
        stop_reason: Option<RunStopReason>,
        message_id: Option<&str>,
    ) -> Vec<RunInfo> {
        let now = now_ms();
        ids.iter()
            .filter_map(|id| self.registry.lookup(id))
            .map(|mut info| {
                info.state = state;
                info.error = error.map(str::to_owned);
                info.stop_reason = stop_reason;
                info.finished_at = Some(now);
                if message_id.is_some() {
                    info.assistant_message_id = message_id.map(str::to_owned);
                }
                info
            })
            .collect()
    }
}
