//! Replay logs: the last events of each session, kept for clients that reconnect with a cursor
//! (`session/subscribe {afterSeq}`), and the daemon-wide budget they share.
//!
//! Each log is bounded on its own (`[daemon] replay_events`, `replay_bytes`), but sessions add
//! up: a dozen sessions that each streamed a long answer would otherwise hold a dozen full logs
//! for as long as an editor keeps their workspace open. So every log also counts its bytes in one
//! [`ReplayBudget`] (`[daemon] replay_budget`). Past the budget, the oldest events go first,
//! whichever session holds them (`Runtime::trim_replay`, run by the daemon's reaper when a log
//! signals it): a client whose cursor is no longer in its log resyncs from a snapshot, as it does
//! after any gap, so trimming costs a replay, never correctness.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;

use super::ReplayLimits;
use crate::outbound::{EventItem, ITEM_OVERHEAD};

/// What trimming brings the total down to, as a share of the budget: some headroom, so a
/// daemon at its budget trims in batches rather than on every event.
const TRIM_TO_PERCENT: usize = 90;

/// The bytes every replay log holds together, against one limit.
#[derive(Debug)]
pub struct ReplayBudget {
    max: usize,
    used: AtomicUsize,
    /// Orders events across sessions: the oldest event anywhere has the smallest stamp.
    stamps: AtomicU64,
    over: Notify,
}

impl ReplayBudget {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            used: AtomicUsize::new(0),
            stamps: AtomicU64::new(0),
            over: Notify::new(),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Bytes held by every log now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    #[cfg(test)]
    pub fn is_over(&self) -> bool {
        self.used() > self.max
    }

    /// Resolves when a log went past the budget (at once if it already did since the last call).
    pub async fn went_over(&self) {
        self.over.notified().await;
    }

    /// The total trimming aims for.
    pub fn trim_target(&self) -> usize {
        self.max / 100 * TRIM_TO_PERCENT
    }

    fn add(&self, bytes: usize) {
        let used = self.used.fetch_add(bytes, Ordering::AcqRel) + bytes;
        if used > self.max {
            self.over.notify_one();
        }
    }

    fn sub(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// One session's replay log, oldest first.
#[derive(Debug)]
pub struct ReplayLog {
    items: VecDeque<(u64, EventItem)>,
    bytes: usize,
    limits: ReplayLimits,
    budget: Arc<ReplayBudget>,
}

impl ReplayLog {
    pub fn new(limits: ReplayLimits, budget: Arc<ReplayBudget>) -> Self {
        Self {
            items: VecDeque::new(),
            bytes: 0,
            limits,
            budget,
        }
    }

    /// Appends an event, dropping this log's oldest past its own bounds.
    pub fn push(&mut self, item: EventItem) {
        if self.limits.events == 0 || self.limits.bytes == 0 || self.budget.max == 0 {
            return;
        }
        // Counted as the outbound queue counts it, so a full log replays within a queue bound
        // of the same size.
        let size = cost(&item);
        let stamp = self.budget.stamps.fetch_add(1, Ordering::Relaxed);
        self.bytes += size;
        self.items.push_back((stamp, item));
        self.budget.add(size);
        while self.items.len() > self.limits.events || self.bytes > self.limits.bytes {
            if self.drop_oldest().is_none() {
                break;
            }
        }
    }

    /// The oldest event still held.
    pub fn first(&self) -> Option<&EventItem> {
        self.items.front().map(|(_, e)| e)
    }

    pub fn iter(&self) -> impl Iterator<Item = &EventItem> {
        self.items.iter().map(|(_, e)| e)
    }

    /// The stamp of the oldest event, for choosing which log trimming takes from.
    pub fn oldest_stamp(&self) -> Option<u64> {
        self.items.front().map(|(s, _)| *s)
    }

    /// Drops the oldest event; returns its stamp.
    pub fn drop_oldest(&mut self) -> Option<u64> {
        let (stamp, old) = self.items.pop_front()?;
        let size = cost(&old);
        self.bytes -= size;
        self.budget.sub(size);
        Some(stamp)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.items.len()
    }
}

impl Default for ReplayLog {
    /// A log bounded only by the default per-session limits, counted in a budget of its own.
    fn default() -> Self {
        Self::new(ReplayLimits::default(), ReplayBudget::new(usize::MAX))
    }
}

impl Drop for ReplayLog {
    fn drop(&mut self) {
        self.budget.sub(self.bytes);
    }
}

fn cost(item: &EventItem) -> usize {
    item.body.len() + ITEM_OVERHEAD
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn event(seq: u64, size: usize) -> EventItem {
        EventItem {
            session: Arc::from("s"),
            seq,
            body: bytes::Bytes::from(vec![b'x'; size]),
            delta: None,
        }
    }

    #[test]
    fn every_log_counts_in_the_shared_budget_and_gives_back_what_it_drops() {
        let budget = ReplayBudget::new(10_000);
        let limits = ReplayLimits {
            events: 3,
            bytes: 1 << 20,
        };
        let mut a = ReplayLog::new(limits, budget.clone());
        let mut b = ReplayLog::new(limits, budget.clone());
        for seq in 1..=5 {
            a.push(event(seq, 100));
        }
        b.push(event(1, 100));
        // `a` keeps its own last 3; both count in the budget.
        assert_eq!(a.len(), 3);
        assert_eq!(a.first().unwrap().seq, 3);
        assert_eq!(budget.used(), 4 * (100 + ITEM_OVERHEAD));
        assert!(
            a.oldest_stamp() < b.oldest_stamp(),
            "stamps order events across logs"
        );
        a.drop_oldest();
        assert_eq!(budget.used(), 3 * (100 + ITEM_OVERHEAD));
        drop(a);
        assert_eq!(
            budget.used(),
            100 + ITEM_OVERHEAD,
            "a dropped log gives back its bytes"
        );
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn passing_the_budget_signals_the_trimmer() {
        let budget = ReplayBudget::new(500);
        let mut log = ReplayLog::new(ReplayLimits::default(), budget.clone());
        log.push(event(1, 300));
        assert!(!budget.is_over());
        log.push(event(2, 300));
        assert!(budget.is_over());
        // The notification was stored: the trimmer does not miss a signal sent before it waits.
        tokio::time::timeout(std::time::Duration::from_secs(5), budget.went_over())
            .await
            .unwrap();
    }
}
