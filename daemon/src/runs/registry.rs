//! Every run the database cannot answer for yet: live runs (accepted and not complete) by id,
//! and runs that ended but whose end the store refused ("unsaved ends", retried by
//! `unsaved.rs`). `run/get` and a repeated `agent/send` read them through [`RunRegistry::lookup`]
//! before the database.
//!
//! Architecture invariant: a run enters the registry (under its session's lock) before its
//! accept is answered and leaves the live runs only after its end is in the database or, when
//! the store refused it, among the unsaved ends (which take it before it leaves) — so a run is
//! always found in the registry or in the database, never in neither.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crush_protocol::{RunInfo, RunState};

use super::RunMeta;
use crate::peer::Peer;
use crate::store::now_ms;
use crate::sync::lock;

pub(super) struct RunRegistry {
    runs: Mutex<Runs>,
    /// How many runs are live, as it changes (idle exit waits for 0).
    live_count: watch::Sender<usize>,
    /// How many run ends wait to be saved, as it changes.
    unsaved_count: watch::Sender<usize>,
}

impl Default for RunRegistry {
    fn default() -> Self {
        Self {
            runs: Mutex::default(),
            live_count: watch::Sender::new(0),
            unsaved_count: watch::Sender::new(0),
        }
    }
}

#[derive(Default)]
struct Runs {
    live: HashMap<String, LiveRun>,
    unsaved: HashMap<String, RunInfo>,
}

struct LiveRun {
    /// The run itself, so a reconnecting client's runs can be found until they complete.
    meta: Arc<RunMeta>,
    state: RunState,
    started_at: Option<i64>,
    folded_into: Option<String>,
}

/// What a repeated `agent/send` compares against: the run's state, session and prompt.
pub(super) struct Known {
    pub state: RunState,
    pub session_id: String,
    pub prompt: String,
}

impl RunRegistry {
    /// Registers an accepted run as queued, unless a live run has its id (returned instead).
    pub(super) fn admit(&self, run: &Arc<RunMeta>) -> Result<(), Known> {
        let mut runs = lock(&self.runs);
        if let Some(l) = runs.live.get(&run.run_id) {
            return Err(l.known());
        }
        runs.live.insert(
            run.run_id.clone(),
            LiveRun {
                meta: run.clone(),
                state: RunState::Queued,
                started_at: None,
                folded_into: None,
            },
        );
        self.live_count.send_replace(runs.live.len());
        Ok(())
    }

    /// A live run's state, session and prompt.
    pub(super) fn live(&self, run_id: &str) -> Option<Known> {
        lock(&self.runs).live.get(run_id).map(LiveRun::known)
    }

    /// A run whose end is known but not yet saved.
    pub(super) fn unsaved(&self, run_id: &str) -> Option<RunInfo> {
        lock(&self.runs).unsaved.get(run_id).cloned()
    }

    /// `run/get`'s view of a run the database may not know the state of: live, else an unsaved
    /// end. `None`: ask the database.
    pub(super) fn lookup(&self, run_id: &str) -> Option<RunInfo> {
        let runs = lock(&self.runs);
        if let Some(l) = runs.live.get(run_id) {
            let m = &l.meta;
            return Some(RunInfo {
                run_id: run_id.to_owned(),
                session_id: m.session_id.clone(),
                state: l.state,
                prompt: m.prompt.clone(),
                error: None,
                user_message_id: None,
                assistant_message_id: None,
                created_at: m.created_at,
                started_at: l.started_at,
                finished_at: None,
                folded_into: l.folded_into.clone(),
                usage: None,
                stop_reason: None,
            });
        }
        runs.unsaved.get(run_id).cloned()
    }

    /// Marks a live run as started (as part of another run's turn when `folded_into` is given).
    pub(super) fn mark_running(&self, run_id: &str, folded_into: Option<&str>) {
        if let Some(l) = lock(&self.runs).live.get_mut(run_id) {
            l.state = RunState::Running;
            l.started_at = Some(now_ms());
            l.folded_into = folded_into.map(str::to_owned);
        }
    }

    /// Steered prompts joined `into`'s turn at a step boundary (they show as queued until the
    /// step that records them is written, then [`Self::mark_running`]).
    pub(super) fn mark_folded(&self, runs: &[Arc<RunMeta>], into: &str) {
        let mut reg = lock(&self.runs);
        for r in runs {
            if let Some(l) = reg.live.get_mut(&r.run_id) {
                l.folded_into = Some(into.to_owned());
            }
        }
    }

    /// Removes completed runs (their end is in the database, or among the unsaved ends).
    pub(super) fn retire<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut runs = lock(&self.runs);
        for id in ids {
            runs.live.remove(id);
        }
        self.live_count.send_replace(runs.live.len());
    }

    /// Keeps the terminal records of runs whose end could not be saved, for `run/get`.
    pub(super) fn keep_unsaved(&self, infos: Vec<RunInfo>) {
        let mut runs = lock(&self.runs);
        for info in infos {
            runs.unsaved.insert(info.run_id.clone(), info);
        }
        self.unsaved_count.send_replace(runs.unsaved.len());
    }

    /// Their end landed (or their session is gone).
    pub(super) fn forget_unsaved(&self, ids: &[String]) {
        let mut runs = lock(&self.runs);
        for id in ids {
            runs.unsaved.remove(id);
        }
        self.unsaved_count.send_replace(runs.unsaved.len());
    }

    /// A client is on a new connection: the runs its closed connections sent report their
    /// `$/runComplete` to the new one. Runs stay in the registry until they complete (under the
    /// lock that sends the complete), so none is missed: active, steered, folded, queued, or
    /// dropped and not yet recorded. A sender that is still open keeps its runs.
    pub(super) fn rebind_sender(&self, client_id: &str, to: &Arc<Peer>) -> usize {
        let mut moved = 0;
        for live in lock(&self.runs).live.values() {
            let mut sender = lock(&live.meta.sender);
            if sender
                .as_ref()
                .is_some_and(|p| p.id != to.id && p.is_closed() && p.client_id() == client_id)
            {
                *sender = Some(to.clone());
                moved += 1;
            }
        }
        moved
    }

    pub(super) fn live_count(&self) -> usize {
        *self.live_count.borrow()
    }

    pub(super) fn watch_live(&self) -> watch::Receiver<usize> {
        self.live_count.subscribe()
    }

    pub(super) fn watch_unsaved(&self) -> watch::Receiver<usize> {
        self.unsaved_count.subscribe()
    }
}

impl LiveRun {
    fn known(&self) -> Known {
        Known {
            state: self.state,
            session_id: self.meta.session_id.clone(),
            prompt: self.meta.prompt.clone(),
        }
    }
}
