//! The session state machine: which run of a session is active, which prompts wait for it
//! (steered into its turn or queued behind it), and what a cancel covers.
//!
//! [`SessionState`] is pure: its methods are the transitions, they do no I/O, spawn nothing and
//! read no clock. Each returns what happened, and the caller — holding the session lock the
//! state lives behind — performs the effects (publishing events, spawning the driver, writing
//! the store). Keeping the decisions here and the effects there is what lets the tests at the
//! bottom drive every interleaving without a store, a model or a task.
//!
//! The one piece of shared state it touches is the active turn's [`CancellationToken`]: a
//! cancel fires it inside the transition, so the token is cancelled exactly when the state says
//! the turn is, under the same lock that publishing checks it under (see `events.rs`).

use std::collections::VecDeque;

use tokio_util::sync::CancellationToken;

/// What the state machine needs of a run: its id. The daemon uses `Arc<RunMeta>`; the tests
/// use plain ids.
pub(super) trait RunHandle: Clone {
    fn run_id(&self) -> &str;
}

/// One session's runs.
///
/// Invariants (checked by `check_invariants` after every transition in the tests):
/// - a run is in at most one place: the active turn's run, its steered prompts, its folded
///   prompts, or the queue;
/// - the queue is empty while no turn is active (nothing waits for an idle session);
/// - steers that missed their turn form a prefix of the queue (they run before plain prompts);
/// - a turn whose cancel was requested has its token cancelled.
///
/// And across transitions (the property test at the bottom):
/// - every accepted run leaves exactly once: as a run of a finished turn (its own or one it was
///   folded into) or dropped by a cancel;
/// - a cancel covers exactly the runs accepted before it: each of them is dropped or ends with
///   the cancelled turn, and no run accepted after it joins that turn.
pub(super) struct SessionState<R> {
    active: Option<Turn<R>>,
    queue: VecDeque<Waiting<R>>,
}

impl<R> Default for SessionState<R> {
    fn default() -> Self {
        Self {
            active: None,
            queue: VecDeque::new(),
        }
    }
}

/// The turn being worked: its run and the prompts that joined or wait to join it.
struct Turn<R> {
    run: R,
    token: CancellationToken,
    /// A cancel already covered this turn (its token may also fire through the workspace's).
    cancel_requested: bool,
    /// Steered prompts waiting for the next step boundary.
    steered: Vec<R>,
    /// Steered prompts taken in at a step boundary: they end with this turn.
    folded: Vec<R>,
    /// False once the turn has passed its last step boundary: later steers queue instead.
    accepting_steer: bool,
}

struct Waiting<R> {
    run: R,
    /// A steer that missed its turn runs next, ahead of plain queued prompts.
    steer: bool,
}

/// Where an accepted prompt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Accepted {
    /// The session was idle: the run is active now, with this token.
    Started(CancellationToken),
    /// Joins the active turn at its next step boundary.
    Steered { position: u32 },
    /// Waits for the session; `steer` when it is a steer that could not join the turn.
    Queued { position: u32, steer: bool },
}

impl Accepted {
    /// Whether the run is running now (else it waits).
    #[cfg(test)]
    pub(super) fn started(&self) -> bool {
        matches!(self, Accepted::Started(_))
    }
}

/// What a cancel did.
#[derive(Debug)]
pub(super) struct Cancelled<R> {
    /// The active run, when this cancel is the one that fired its token.
    pub fired: Option<String>,
    /// Prompts taken out of the session before they ran: the caller records and completes them.
    pub dropped: Vec<R>,
}

impl<R: RunHandle> Cancelled<R> {
    /// Every run this cancel ended or will end, the active one first.
    pub(super) fn covered(&self) -> Vec<String> {
        self.fired
            .iter()
            .cloned()
            .chain(self.dropped.iter().map(|r| r.run_id().to_owned()))
            .collect()
    }
}

/// The end of a turn: the runs that ended with it, and the run that has the session now.
#[derive(Debug)]
pub(super) struct Handoff<R> {
    /// The turn's own run.
    pub run: R,
    /// The prompts folded into it (they end with it).
    pub folded: Vec<R>,
    /// The next run and its token, already active; `None` leaves the session idle.
    pub next: Option<(R, CancellationToken)>,
}

impl<R: RunHandle> SessionState<R> {
    // ---- transitions ----

    /// Accepts a prompt: idle → active (with a token from `fresh`), or steered into the active
    /// turn, or queued (a steer that can no longer join the turn queues ahead of plain prompts).
    pub(super) fn accept(
        &mut self,
        run: R,
        steer: bool,
        fresh: impl FnOnce() -> CancellationToken,
    ) -> Accepted {
        let Some(turn) = &mut self.active else {
            let token = fresh();
            self.active = Some(Turn::new(run, token.clone()));
            return Accepted::Started(token);
        };
        if steer && turn.accepting_steer && !turn.token.is_cancelled() {
            turn.steered.push(run);
            return Accepted::Steered {
                position: turn.steered.len() as u32 - 1,
            };
        }
        let at = if steer {
            self.queue.iter().take_while(|w| w.steer).count()
        } else {
            self.queue.len()
        };
        self.queue.insert(at, Waiting { run, steer });
        Accepted::Queued {
            position: (turn.steered.len() + at) as u32,
            steer,
        }
    }

    /// Cancels everything the session holds: the active turn (its token fires unless a cancel
    /// already covered it) and every waiting prompt, steered or queued.
    pub(super) fn cancel_all(&mut self) -> Cancelled<R> {
        let mut fired = None;
        let mut dropped = Vec::new();
        if let Some(turn) = &mut self.active {
            if turn.request_cancel() {
                fired = Some(turn.run.run_id().to_owned());
            }
            dropped.append(&mut turn.steered);
        }
        dropped.extend(self.queue.drain(..).map(|w| w.run));
        Cancelled { fired, dropped }
    }

    /// Cancels one run: the active one (a prompt folded into it counts as it), a steered prompt
    /// waiting for a step boundary, or a queued prompt. Everything else goes on; steered prompts
    /// of a cancelled turn run next as their own runs. `None` when the session does not hold
    /// the run.
    pub(super) fn cancel_one(&mut self, run_id: &str) -> Option<Cancelled<R>> {
        let mut fired = None;
        let mut dropped = Vec::new();
        if let Some(turn) = &mut self.active {
            if turn.run.run_id() == run_id || turn.folded.iter().any(|r| r.run_id() == run_id) {
                if turn.request_cancel() {
                    fired = Some(turn.run.run_id().to_owned());
                }
                return Some(Cancelled { fired, dropped });
            }
            if let Some(i) = turn.steered.iter().position(|r| r.run_id() == run_id) {
                dropped.push(turn.steered.remove(i));
                return Some(Cancelled { fired, dropped });
            }
        }
        let i = self.queue.iter().position(|w| w.run.run_id() == run_id)?;
        dropped.extend(self.queue.remove(i).map(|w| w.run));
        Some(Cancelled { fired, dropped })
    }

    /// A step boundary of the active turn: takes the steered prompts waiting (they are part of
    /// the turn from now on), or — when the turn is about to end (`more_steps` false) and none
    /// waits — closes the turn to steers, so later ones queue. A cancelled turn takes none.
    pub(super) fn step_boundary(&mut self, more_steps: bool) -> Vec<R> {
        let Some(turn) = &mut self.active else {
            return Vec::new();
        };
        if !turn.token.is_cancelled() && !turn.steered.is_empty() {
            let taken = std::mem::take(&mut turn.steered);
            turn.folded.extend(taken.iter().cloned());
            return taken;
        }
        if !more_steps {
            turn.accepting_steer = false;
        }
        Vec::new()
    }

    /// The active turn ended: steered prompts that missed it go to the front of the queue, and
    /// the first waiting prompt becomes the active run (with a token from `fresh`). `None` when
    /// no turn was active.
    pub(super) fn finish_turn(
        &mut self,
        fresh: impl FnOnce() -> CancellationToken,
    ) -> Option<Handoff<R>> {
        let turn = self.active.take()?;
        for (i, run) in turn.steered.into_iter().enumerate() {
            self.queue.insert(i, Waiting { run, steer: true });
        }
        let next = self.queue.pop_front().map(|w| {
            let token = fresh();
            self.active = Some(Turn::new(w.run.clone(), token.clone()));
            (w.run, token)
        });
        Some(Handoff {
            run: turn.run,
            folded: turn.folded,
            next,
        })
    }

    // ---- queries ----

    /// Whether a run is active or waiting.
    pub(super) fn is_busy(&self) -> bool {
        self.active.is_some() || !self.queue.is_empty()
    }

    /// The active run.
    pub(super) fn active_run(&self) -> Option<&R> {
        self.active.as_ref().map(|t| &t.run)
    }

    /// The runs waiting, in the order they will run: steered prompts first, then the queue.
    pub(super) fn waiting(&self) -> impl Iterator<Item = &R> {
        self.active
            .iter()
            .flat_map(|t| t.steered.iter())
            .chain(self.queue.iter().map(|w| &w.run))
    }

    /// Checks the invariants written on the type; the first broken one as a message.
    #[cfg(test)]
    pub(super) fn check_invariants(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        let mut place = |r: &R| {
            if seen.insert(r.run_id().to_owned()) {
                Ok(())
            } else {
                Err(format!("run {} is in two places", r.run_id()))
            }
        };
        if let Some(t) = &self.active {
            place(&t.run)?;
            for r in t.steered.iter().chain(&t.folded) {
                place(r)?;
            }
            if t.cancel_requested && !t.token.is_cancelled() {
                return Err("a cancelled turn's token has not fired".into());
            }
        } else if !self.queue.is_empty() {
            return Err("prompts wait while no turn is active".into());
        }
        for w in &self.queue {
            place(&w.run)?;
        }
        let steers = self.queue.iter().take_while(|w| w.steer).count();
        if self.queue.iter().skip(steers).any(|w| w.steer) {
            return Err("a steer waits behind a plain prompt".into());
        }
        Ok(())
    }
}

impl<R> Turn<R> {
    fn new(run: R, token: CancellationToken) -> Self {
        Self {
            run,
            token,
            cancel_requested: false,
            steered: Vec::new(),
            folded: Vec::new(),
            accepting_steer: true,
        }
    }

    /// Fires the turn's token unless a cancel already covered it; whether this call did.
    fn request_cancel(&mut self) -> bool {
        if self.cancel_requested {
            return false;
        }
        self.cancel_requested = true;
        self.token.cancel();
        true
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
