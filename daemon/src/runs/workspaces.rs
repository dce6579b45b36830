//! Workspaces: each owns its runs (a cancellation token and a task tracker), is loaded on first
//! use, unloaded with its sessions' live state when idle, and closed — runs cancelled and
//! awaited — by `workspace/close` and at shutdown.
//!
//! Architecture invariant: a run belongs to its workspace, never to a connection: its task is
//! on the workspace's tracker and its token a child of the workspace's token.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crush_protocol::BusySession;

use super::{Runtime, SessionInner, SessionRt};
use crate::sync::lock;

/// A workspace's run ownership: every run task of the workspace is on `tracker` and cancelled
/// through `token`. `gate` (closing) is set once, under its lock, and never cleared (a reopened
/// workspace gets a new `Workspace`).
pub struct Workspace {
    pub id: String,
    pub(super) token: CancellationToken,
    pub(super) tracker: TaskTracker,
    pub(super) gate: Mutex<bool>,
    /// Since when the workspace was seen with nothing keeping it loaded.
    idle_since: Mutex<Option<Instant>>,
}

impl Workspace {
    fn new(id: &str) -> Arc<Self> {
        Arc::new(Self {
            id: id.to_owned(),
            token: CancellationToken::new(),
            tracker: TaskTracker::new(),
            gate: Mutex::new(false),
            idle_since: Mutex::new(None),
        })
    }

    fn is_closing(&self) -> bool {
        *lock(&self.gate)
    }
}

impl Runtime {
    pub(super) fn workspace(&self, id: &str) -> Arc<Workspace> {
        lock(&self.workspaces)
            .entry(id.to_owned())
            .or_insert_with(|| Workspace::new(id))
            .clone()
    }

    /// Loads a workspace, and makes a closed one accept runs again (`workspace/open`).
    pub fn reopen_workspace(&self, id: &str) {
        let fresh = {
            let mut map = lock(&self.workspaces);
            if self.is_shutting_down() {
                return;
            }
            if !map.get(id).is_some_and(|w| w.is_closing()) {
                map.entry(id.to_owned())
                    .or_insert_with(|| Workspace::new(id));
                return;
            }
            let fresh = Workspace::new(id);
            map.insert(id.to_owned(), fresh.clone());
            fresh
        };
        for s in lock(&self.sessions).values() {
            let mut ws = lock(&s.ws);
            if ws.id == id {
                *ws = fresh.clone();
            }
        }
    }

    /// Whether the workspace's live state is in memory.
    pub fn is_loaded(&self, workspace_id: &str) -> bool {
        lock(&self.workspaces).contains_key(workspace_id)
    }

    /// Sessions of a workspace with an active or queued run.
    pub fn busy_sessions(&self, workspace_id: &str) -> Vec<BusySession> {
        let mut out: Vec<BusySession> = self
            .sessions_of(Some(workspace_id))
            .iter()
            .filter_map(|s| {
                let st = lock(&s.inner).status();
                (st.active_run_id.is_some() || !st.queued.is_empty()).then(|| BusySession {
                    session_id: s.id.clone(),
                    active_run_id: st.active_run_id,
                    queued: st.queued,
                })
            })
            .collect();
        out.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        out
    }

    /// Unloads every workspace that has been idle for `delay`: no claim (`claimed`), no active
    /// or queued run, no task, no subscriber and no parked subscription (`kept`) to any of its
    /// sessions. Its sessions' live state and replay logs go; their seqs are remembered. In a
    /// workspace that stays loaded, a session idle and unwatched for `delay` is dropped alone,
    /// so a long-claimed workspace does not keep every log it ever had. Returns the workspaces
    /// unloaded.
    ///
    /// The check and the eviction happen under the workspace's gate and every session lock of
    /// the workspace at once, so no send or subscribe can slip in between (a send needs the
    /// gate; a subscribe that waited for a session lock finds it evicted and starts over).
    pub fn unload_idle(
        &self,
        delay: Duration,
        claimed: impl Fn(&str) -> bool,
        kept: &HashSet<String>,
    ) -> Vec<String> {
        let now = Instant::now();
        let elapsed = |since: &mut Option<Instant>, busy: bool| -> bool {
            if busy {
                *since = None;
                return false;
            }
            let t = *since.get_or_insert(now);
            now.duration_since(t) >= delay
        };
        let mut unloaded = Vec::new();
        let mut sessions = lock(&self.sessions);
        let mut workspaces = lock(&self.workspaces);
        let ids: Vec<String> = workspaces.keys().cloned().collect();
        for id in ids {
            let Some(ws) = workspaces.get(&id).cloned() else {
                continue;
            };
            let gate = lock(&ws.gate);
            if *gate {
                // A force-closed workspace stays until it is opened again.
                continue;
            }
            let mine: Vec<Arc<SessionRt>> = sessions
                .values()
                .filter(|s| lock(&s.ws).id == id)
                .cloned()
                .collect();
            let mut inners: Vec<std::sync::MutexGuard<'_, SessionInner>> =
                mine.iter().map(|s| lock(&s.inner)).collect();
            let no_tasks = ws.tracker.is_empty();
            let mut idle_sessions = Vec::new();
            let mut any_busy = false;
            for (s, inner) in mine.iter().zip(inners.iter_mut()) {
                let busy = kept.contains(&s.id) || inner.in_use();
                any_busy |= busy;
                if elapsed(&mut inner.idle_since, busy) {
                    idle_sessions.push(s.id.clone());
                }
            }
            let ws_busy = any_busy || !no_tasks || claimed(&id);
            let whole = elapsed(&mut lock(&ws.idle_since), ws_busy);
            if !whole && !no_tasks {
                // A task of the workspace may still publish to one of its sessions.
                continue;
            }
            let mut seqs = lock(&self.seqs);
            for (s, inner) in mine.iter().zip(inners.iter_mut()) {
                if whole || idle_sessions.contains(&s.id) {
                    inner.evicted = true;
                    seqs.insert(s.id.clone(), inner.events.seq());
                    sessions.remove(&s.id);
                }
            }
            drop(seqs);
            drop(inners);
            drop(gate);
            if whole {
                workspaces.remove(&id);
                unloaded.push(id);
            }
        }
        unloaded
    }

    /// Closes a workspace: refuse new sends → cancel its token → cancel active runs and drop
    /// queues → wait for its run tasks (bounded by the grace period). Returns the runs ended.
    pub async fn close_workspace(self: &Arc<Self>, workspace_id: &str) -> Vec<String> {
        let ws = self.workspace(workspace_id);
        self.close(&ws).await
    }

    async fn close(self: &Arc<Self>, ws: &Arc<Workspace>) -> Vec<String> {
        *lock(&ws.gate) = true;
        ws.token.cancel();
        let mut ended = Vec::new();
        for s in self.sessions_of(Some(&ws.id)) {
            ended.extend(self.cancel_session(&s));
        }
        ws.tracker.close();
        if tokio::time::timeout(self.grace, ws.tracker.wait())
            .await
            .is_err()
        {
            warn!(workspace = %ws.id, "runs did not end within the grace period");
        }
        if !ended.is_empty() {
            info!(workspace = %ws.id, runs = ended.len(), "workspace closed; runs cancelled");
        }
        ended
    }

    /// Daemon shutdown: refuse new sends, then close every workspace (concurrently).
    pub async fn shutdown(self: &Arc<Self>) {
        self.shutting_down.store(true, Ordering::Release);
        let all: Vec<Arc<Workspace>> = lock(&self.workspaces).values().cloned().collect();
        futures::future::join_all(all.iter().map(|ws| self.close(ws))).await;
        // Ends still failing to save now will not land before the process ends.
        self.stop_retries.cancel();
        self.retries.close();
        self.retries.wait().await;
    }

    /// Tasks still running in workspaces (diagnostics and leak checks).
    pub fn tasks(&self) -> usize {
        lock(&self.workspaces)
            .values()
            .map(|w| w.tracker.len())
            .sum()
    }

    /// Loaded workspaces (diagnostics and leak checks).
    pub fn loaded_workspaces(&self) -> usize {
        lock(&self.workspaces).len()
    }

    /// Sessions with live state (diagnostics and leak checks).
    pub fn live_sessions(&self) -> usize {
        lock(&self.sessions).len()
    }
}
