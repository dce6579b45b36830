//! The session state machine driven directly: no store, no model, no task.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use proptest::prelude::*;
use tokio_util::sync::CancellationToken;

use super::{Accepted, RunHandle, SessionState};

impl RunHandle for String {
    fn run_id(&self) -> &str {
        self
    }
}

fn id(s: &str) -> String {
    s.to_owned()
}

fn fresh() -> CancellationToken {
    CancellationToken::new()
}

fn ids(runs: &[String]) -> Vec<&str> {
    runs.iter().map(String::as_str).collect()
}

fn waiting(s: &SessionState<String>) -> Vec<&str> {
    s.waiting().map(String::as_str).collect()
}

#[test]
fn an_idle_session_starts_the_first_prompt_and_queues_the_next() {
    let mut s = SessionState::default();
    assert!(!s.is_busy());
    assert!(s.accept(id("a"), false, fresh).started());
    assert_eq!(
        s.accept(id("b"), false, fresh),
        Accepted::Queued {
            position: 0,
            steer: false
        }
    );
    assert_eq!(s.active_run().map(String::as_str), Some("a"));
    assert_eq!(waiting(&s), ["b"]);
    let h = s.finish_turn(fresh).expect("a turn was active");
    assert_eq!(h.run, "a");
    assert!(h.folded.is_empty());
    assert_eq!(h.next.as_ref().map(|(r, _)| r.as_str()), Some("b"));
    let h = s.finish_turn(fresh).expect("b is active");
    assert!(h.next.is_none());
    assert!(!s.is_busy());
    assert!(s.finish_turn(fresh).is_none(), "nothing left to finish");
}

#[test]
fn steers_join_at_the_next_step_boundary_and_end_with_the_turn() {
    let mut s = SessionState::default();
    s.accept(id("a"), false, fresh);
    assert_eq!(
        s.accept(id("s1"), true, fresh),
        Accepted::Steered { position: 0 }
    );
    assert_eq!(
        s.accept(id("s2"), true, fresh),
        Accepted::Steered { position: 1 }
    );
    assert_eq!(ids(&s.step_boundary(true)), ["s1", "s2"]);
    assert!(waiting(&s).is_empty(), "folded prompts no longer wait");
    let h = s.finish_turn(fresh).expect("active");
    assert_eq!(ids(&h.folded), ["s1", "s2"]);
    assert!(h.next.is_none());
}

#[test]
fn a_turn_past_its_last_boundary_queues_steers_ahead_of_plain_prompts() {
    let mut s = SessionState::default();
    s.accept(id("a"), false, fresh);
    s.accept(id("q"), false, fresh);
    assert!(
        s.step_boundary(false).is_empty(),
        "the last step: no more steers"
    );
    assert_eq!(
        s.accept(id("late"), true, fresh),
        Accepted::Queued {
            position: 0,
            steer: true
        }
    );
    assert_eq!(waiting(&s), ["late", "q"]);
    let h = s.finish_turn(fresh).expect("active");
    assert_eq!(h.next.map(|(r, _)| r), Some(id("late")));
}

#[test]
fn steered_prompts_that_missed_the_turn_run_next() {
    let mut s = SessionState::default();
    s.accept(id("a"), false, fresh);
    s.accept(id("q"), false, fresh);
    s.accept(id("s"), true, fresh);
    let h = s.finish_turn(fresh).expect("active");
    assert_eq!(h.next.map(|(r, _)| r), Some(id("s")));
    assert_eq!(waiting(&s), ["q"]);
}

#[test]
fn cancel_all_fires_the_turn_once_and_drops_what_waits() {
    let mut s = SessionState::default();
    let Accepted::Started(token) = s.accept(id("a"), false, fresh) else {
        panic!("the idle session starts the run");
    };
    s.accept(id("s"), true, fresh);
    s.accept(id("q"), false, fresh);
    let c = s.cancel_all();
    assert!(token.is_cancelled());
    assert_eq!(c.covered(), ["a", "s", "q"]);
    assert_eq!(ids(&c.dropped), ["s", "q"]);
    let again = s.cancel_all();
    assert!(
        again.covered().is_empty(),
        "a second cancel covers nothing new"
    );
    // A steer after the cancel does not join the cancelled turn: it runs on its own.
    assert_eq!(
        s.accept(id("after"), true, fresh),
        Accepted::Queued {
            position: 0,
            steer: true
        }
    );
    let h = s.finish_turn(fresh).expect("active");
    assert!(h.folded.is_empty());
    let (next, next_token) = h.next.expect("the later prompt runs");
    assert_eq!(next, "after");
    assert!(!next_token.is_cancelled(), "a fresh token for a fresh run");
}

#[test]
fn cancel_one_finds_the_turn_through_a_folded_prompt() {
    let mut s = SessionState::default();
    let Accepted::Started(token) = s.accept(id("a"), false, fresh) else {
        panic!("started");
    };
    s.accept(id("s"), true, fresh);
    s.step_boundary(true);
    let c = s.cancel_one("s").expect("s is part of the turn");
    assert_eq!(c.fired.as_deref(), Some("a"));
    assert!(c.dropped.is_empty());
    assert!(token.is_cancelled());
    assert!(s.cancel_one("nope").is_none());
}

#[test]
fn cancel_one_leaves_the_rest_running() {
    let mut s = SessionState::default();
    let Accepted::Started(token) = s.accept(id("a"), false, fresh) else {
        panic!("started");
    };
    s.accept(id("s"), true, fresh);
    s.accept(id("q1"), false, fresh);
    s.accept(id("q2"), false, fresh);
    assert_eq!(s.cancel_one("q1").expect("queued").covered(), ["q1"]);
    assert_eq!(s.cancel_one("s").expect("steered").covered(), ["s"]);
    assert!(!token.is_cancelled());
    assert_eq!(waiting(&s), ["q2"]);
    // Cancelling the active run leaves its waiting steers to run on their own.
    s.accept(id("s2"), true, fresh);
    assert_eq!(s.cancel_one("a").expect("active").covered(), ["a"]);
    let h = s.finish_turn(fresh).expect("active");
    assert_eq!(h.next.map(|(r, _)| r), Some(id("s2")));
    assert_eq!(waiting(&s), ["q2"]);
}

#[test]
fn a_cancelled_turn_takes_no_steers_at_its_boundary() {
    let mut s = SessionState::default();
    let Accepted::Started(token) = s.accept(id("a"), false, fresh) else {
        panic!("started");
    };
    s.accept(id("s"), true, fresh);
    // The workspace's token fired (a close), not a cancel of this session.
    token.cancel();
    assert!(s.step_boundary(true).is_empty());
    assert_eq!(waiting(&s), ["s"]);
}

// ---- the property test ----

#[derive(Debug, Clone)]
enum Op {
    Accept {
        steer: bool,
    },
    CancelAll,
    /// Cancels the n-th run ever accepted (live or not).
    CancelOne(usize),
    StepBoundary {
        more_steps: bool,
    },
    FinishTurn,
    /// The workspace's token fires (close or shutdown).
    CloseFires,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<bool>().prop_map(|steer| Op::Accept { steer }),
        1 => Just(Op::CancelAll),
        2 => (0usize..24).prop_map(Op::CancelOne),
        3 => any::<bool>().prop_map(|more_steps| Op::StepBoundary { more_steps }),
        3 => Just(Op::FinishTurn),
        1 => Just(Op::CloseFires),
    ]
}

/// What the test knows of every run, beside the state machine.
#[derive(Default)]
struct Ledger {
    /// Run id → the step at which it was accepted.
    accepted: HashMap<String, usize>,
    /// Run id → how many times it left the session (must end as exactly 1).
    ended: HashMap<String, u32>,
    /// The active turn's token and the step at which a cancel first covered the turn.
    turn: Option<(CancellationToken, Option<usize>)>,
}

impl Ledger {
    fn end(&mut self, run: &str) {
        *self.ended.entry(run.to_owned()).or_default() += 1;
    }

    fn start(&mut self, token: CancellationToken) {
        self.turn = Some((token, None));
    }
}

fn apply(s: &mut SessionState<String>, l: &mut Ledger, step: usize, op: &Op) {
    match op {
        Op::Accept { steer } => {
            let run = format!("r{}", l.accepted.len());
            l.accepted.insert(run.clone(), step);
            if let Accepted::Started(t) = s.accept(run, *steer, fresh) {
                l.start(t);
            }
        }
        Op::CancelAll => {
            let c = s.cancel_all();
            for r in &c.dropped {
                l.end(r);
            }
            if let Some((_, cancelled_at)) = &mut l.turn {
                cancelled_at.get_or_insert(step);
            }
            assert!(
                s.waiting().next().is_none(),
                "a cancel-all leaves nothing waiting"
            );
        }
        Op::CancelOne(n) => {
            let Some(run) = l.accepted.keys().find(|k| **k == format!("r{n}")).cloned() else {
                return;
            };
            let active_before = s.active_run().cloned();
            if let Some(c) = s.cancel_one(&run) {
                for r in &c.dropped {
                    assert_eq!(*r, run, "cancel-one drops only its run");
                    l.end(r);
                }
                if c.fired.is_some() {
                    assert_eq!(c.fired, active_before);
                    if let Some((_, cancelled_at)) = &mut l.turn {
                        cancelled_at.get_or_insert(step);
                    }
                }
            } else {
                assert!(
                    l.ended.contains_key(&run),
                    "a run the session does not hold has ended"
                );
            }
        }
        Op::StepBoundary { more_steps } => {
            let taken = s.step_boundary(*more_steps);
            if let Some((token, _)) = &l.turn {
                assert!(taken.is_empty() || !token.is_cancelled());
            }
        }
        Op::FinishTurn => {
            let Some(h) = s.finish_turn(fresh) else {
                return;
            };
            let (_, cancelled_at) = l.turn.take().expect("the ledger knows the turn");
            l.end(&h.run);
            for r in &h.folded {
                l.end(r);
                // The cancel mark covers exactly what was accepted before it: nothing accepted
                // after the cancel joined the cancelled turn.
                if let Some(at) = cancelled_at {
                    assert!(l.accepted[r] < at, "{r} joined a turn cancelled before it");
                }
            }
            if let Some((_, t)) = h.next {
                assert!(!t.is_cancelled());
                l.start(t);
            }
        }
        Op::CloseFires => {
            if let Some((t, _)) = &l.turn {
                t.cancel();
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn random_transitions_keep_the_invariants(ops in proptest::collection::vec(op(), 1..80)) {
        let mut s = SessionState::<String>::default();
        let mut l = Ledger::default();
        for (step, op) in ops.iter().enumerate() {
            apply(&mut s, &mut l, step, op);
            if let Err(e) = s.check_invariants() {
                return Err(TestCaseError::fail(format!("after {op:?} (step {step}): {e}")));
            }
        }
        // Drain: the session ends every run it holds.
        let step = ops.len();
        apply(&mut s, &mut l, step, &Op::CancelAll);
        while s.is_busy() {
            apply(&mut s, &mut l, step, &Op::FinishTurn);
            apply(&mut s, &mut l, step, &Op::CancelAll);
        }
        for run in l.accepted.keys() {
            prop_assert_eq!(l.ended.get(run).copied(), Some(1), "{} must end exactly once", run);
        }
        prop_assert_eq!(l.ended.len(), l.accepted.len());
    }
}
