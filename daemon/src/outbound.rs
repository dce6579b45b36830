//! A connection's outbound queue and the writer that drains it into LSP frames.
//!
//! Publishing never waits for a client: every message is appended to the connection's own
//! queue, and one writer task per connection moves the queue to the socket as fast as the
//! client reads. When a client reads slowly the queue grows, and two things keep it small
//! without losing anything that matters:
//!
//! - A text or reasoning delta appended right behind a queued delta of the same session, run,
//!   message and kind is merged into it: the text is concatenated and the merged event carries
//!   the later seq. Nothing else is merged, dropped or reordered.
//! - Past a hard bound (`[daemon] max_outbound_bytes`) the queue is discarded and the
//!   connection is closed ([`Outbound::overflowed`] fires); the client reconnects and replays
//!   from its last seq.
//!
//! Architecture invariant: pushing is O(1) under a short mutex and never awaits, so a stalled
//! client costs the publisher nothing but memory, and that memory is bounded.
//!
//! The writer also remembers, per session, the seq of the last event it wrote to the socket.
//! When a client reconnects with the same `clientId`, its subscriptions resume from there.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::SinkExt;
use tokio::io::AsyncWrite;
use tokio::sync::Notify;
use tokio_util::codec::FramedWrite;
use tokio_util::sync::CancellationToken;

use crush_protocol::message::encode_notification;
use crush_protocol::{
    LspCodec, Notification, SessionEvent, SessionUpdateParams, daemon_notification,
};

use crate::sync::lock;

/// Per-item bookkeeping charged against the bound on top of the payload, so a flood of tiny
/// messages is bounded too.
pub const ITEM_OVERHEAD: usize = 64;

/// What a text or reasoning delta event is, so a later one can be merged into it.
#[derive(Debug)]
pub struct Delta {
    pub run_id: Option<String>,
    pub message_id: String,
    pub reasoning: bool,
    pub text: String,
}

impl Delta {
    /// The delta an event is, if it is one.
    pub fn of(run_id: Option<&str>, event: &SessionEvent) -> Option<Delta> {
        let (message_id, text, reasoning) = match event {
            SessionEvent::TextDelta { message_id, text } => (message_id, text, false),
            SessionEvent::ReasoningDelta { message_id, text } => (message_id, text, true),
            _ => return None,
        };
        Some(Delta {
            run_id: run_id.map(str::to_owned),
            message_id: message_id.clone(),
            reasoning,
            text: text.clone(),
        })
    }

    fn same_stream(&self, other: &Delta) -> bool {
        self.reasoning == other.reasoning
            && self.message_id == other.message_id
            && self.run_id == other.run_id
    }
}

/// One session event as queued.
#[derive(Debug, Clone)]
pub struct EventItem {
    pub session: Arc<str>,
    pub seq: u64,
    /// The encoded notification, shared by every connection it was queued to.
    pub body: Bytes,
    pub delta: Option<Arc<Delta>>,
}

#[derive(Debug)]
enum Item {
    Raw(Bytes),
    Event(EventItem),
    /// An event at or below the highest seq already queued for its session: a replay on a
    /// connection that already had events. It neither merges nor takes merges, so every
    /// event of its seq range stays whole and a client can drop it by seq.
    Replayed(EventItem),
    /// Two or more deltas merged: encoded when written.
    Merged {
        session: Arc<str>,
        seq: u64,
        delta: Arc<Delta>,
        text: String,
    },
}

impl Item {
    fn seq(&self) -> u64 {
        match self {
            Item::Raw(_) => 0,
            Item::Event(e) | Item::Replayed(e) => e.seq,
            Item::Merged { seq, .. } => *seq,
        }
    }

    fn delta(&self) -> Option<(&Arc<str>, &Delta)> {
        match self {
            Item::Event(EventItem {
                session,
                delta: Some(d),
                ..
            }) => Some((session, d)),
            Item::Merged { session, delta, .. } => Some((session, delta)),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Item>,
    bytes: usize,
    /// The largest message queued since the queue was last empty.
    largest: usize,
    closed: bool,
    overflowed: bool,
    /// Seq of the last event written to the socket, per session.
    written: HashMap<Arc<str>, u64>,
    /// Highest seq ever queued, per session.
    high: HashMap<Arc<str>, u64>,
    stats: QueueStats,
}

/// Counters for logs and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Deltas folded into an earlier queued delta.
    pub merged: u64,
}

#[derive(Debug)]
pub struct Outbound {
    state: Mutex<State>,
    ready: Notify,
    limit: usize,
    merge: bool,
    overflow: CancellationToken,
}

impl Outbound {
    /// A queue that closes the connection once more than `limit` bytes wait in it.
    pub fn new(limit: usize) -> Arc<Self> {
        Self::with_merging(limit, true)
    }

    /// A queue that merges deltas only when `merge` is set (tests that model a reader keeping
    /// up with every event use `false`).
    pub fn with_merging(limit: usize, merge: bool) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            ready: Notify::new(),
            limit,
            merge,
            overflow: CancellationToken::new(),
        })
    }

    /// Fires when the bound was passed: the connection must close.
    pub fn overflowed(&self) -> &CancellationToken {
        &self.overflow
    }

    /// Bytes waiting.
    pub fn queued_bytes(&self) -> usize {
        lock(&self.state).bytes
    }

    pub fn stats(&self) -> QueueStats {
        lock(&self.state).stats
    }

    /// Queues an encoded message. False when the queue is closed (or just overflowed).
    pub fn push_raw(&self, body: Bytes) -> bool {
        let mut st = lock(&self.state);
        if st.closed {
            return false;
        }
        let size = body.len() + ITEM_OVERHEAD;
        st.bytes += size;
        st.largest = st.largest.max(size);
        st.items.push_back(Item::Raw(body));
        self.after_push(st)
    }

    /// Queues a session event, merging a delta into a queued delta of the same stream right
    /// before it.
    pub fn push_event(&self, item: &EventItem) -> bool {
        let mut st = lock(&self.state);
        if st.closed {
            return false;
        }
        let high = st.high.entry(item.session.clone()).or_insert(0);
        let replayed = item.seq <= *high;
        *high = (*high).max(item.seq);
        if replayed {
            let size = item.body.len() + ITEM_OVERHEAD;
            st.bytes += size;
            st.largest = st.largest.max(size);
            st.items.push_back(Item::Replayed(item.clone()));
            return self.after_push(st);
        }
        if self.merge
            && let Some(d) = &item.delta
            && let Some(last) = st.items.back_mut()
            && let Some((session, prev)) = last.delta()
            && *session == item.session
            && prev.same_stream(d)
            && item.seq == last.seq() + 1
        {
            let added = d.text.len();
            match last {
                Item::Merged { seq, text, .. } => {
                    text.push_str(&d.text);
                    *seq = item.seq;
                }
                Item::Event(first) => {
                    let first_delta = first.delta.clone().unwrap_or_else(|| d.clone());
                    let mut text = String::with_capacity(first_delta.text.len() + d.text.len());
                    text.push_str(&first_delta.text);
                    text.push_str(&d.text);
                    *last = Item::Merged {
                        session: item.session.clone(),
                        seq: item.seq,
                        delta: first_delta,
                        text,
                    };
                }
                Item::Raw(_) | Item::Replayed(_) => {}
            }
            st.bytes += added;
            st.stats.merged += 1;
            return self.after_push(st);
        }
        let size = item.body.len() + ITEM_OVERHEAD;
        st.bytes += size;
        st.largest = st.largest.max(size);
        st.items.push_back(Item::Event(item.clone()));
        self.after_push(st)
    }

    fn after_push(&self, mut st: std::sync::MutexGuard<'_, State>) -> bool {
        // The largest queued message does not count (a `$/runComplete` carries the whole text
        // of its run): the bound is about a client falling behind, not about message size.
        if st.bytes.saturating_sub(st.largest) > self.limit {
            tracing::debug!(
                queued_bytes = st.bytes,
                queued_messages = st.items.len(),
                largest = st.largest,
                "outbound queue over its bound"
            );
            st.overflowed = true;
            st.closed = true;
            st.items.clear();
            st.bytes = 0;
            st.largest = 0;
            drop(st);
            self.overflow.cancel();
            self.ready.notify_one();
            return false;
        }
        drop(st);
        self.ready.notify_one();
        true
    }

    /// No more messages are accepted; the writer drains what is queued and ends.
    pub fn close(&self) {
        lock(&self.state).closed = true;
        self.ready.notify_one();
    }

    pub fn is_overflowed(&self) -> bool {
        lock(&self.state).overflowed
    }

    /// The seq of the last event of each session written to the socket.
    pub fn written(&self) -> HashMap<Arc<str>, u64> {
        lock(&self.state).written.clone()
    }

    /// Takes everything queued, encoded. `None` once closed and empty.
    fn take(&self) -> Option<Vec<Encoded>> {
        let mut st = lock(&self.state);
        if st.items.is_empty() {
            return if st.closed { None } else { Some(Vec::new()) };
        }
        st.bytes = 0;
        st.largest = 0;
        let items: Vec<Item> = st.items.drain(..).collect();
        drop(st);
        Some(items.into_iter().map(encode).collect())
    }

    /// The next queued message, waiting for one; `None` once closed and drained.
    pub async fn pop(&self) -> Option<Bytes> {
        loop {
            let notified = self.ready.notified();
            {
                let mut st = lock(&self.state);
                if let Some(item) = st.items.pop_front() {
                    st.bytes = st.bytes.saturating_sub(item_size(&item));
                    drop(st);
                    return Some(encode(item).0);
                }
                if st.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// The next queued message if there is one.
    pub fn try_pop(&self) -> Option<Bytes> {
        let mut st = lock(&self.state);
        let item = st.items.pop_front()?;
        st.bytes = st.bytes.saturating_sub(item_size(&item));
        Some(encode(item).0)
    }

    fn mark_written(&self, done: &[(Arc<str>, u64)]) {
        let mut st = lock(&self.state);
        for (s, seq) in done {
            let e = st.written.entry(s.clone()).or_insert(0);
            *e = (*e).max(*seq);
        }
    }

    /// Where a (re)subscription starts: the client has everything up to `seq`.
    pub fn set_cursor(&self, session: &Arc<str>, seq: u64) {
        lock(&self.state).written.insert(session.clone(), seq);
    }
}

fn item_size(item: &Item) -> usize {
    match item {
        Item::Raw(b) => b.len() + ITEM_OVERHEAD,
        Item::Event(e) | Item::Replayed(e) => e.body.len() + ITEM_OVERHEAD,
        Item::Merged { text, .. } => text.len() + ITEM_OVERHEAD,
    }
}

/// A message ready to write, with the session event it is (if it is one).
type Encoded = (Bytes, Option<(Arc<str>, u64)>);

fn encode(item: Item) -> Encoded {
    match item {
        Item::Raw(b) => (b, None),
        Item::Event(e) | Item::Replayed(e) => (e.body, Some((e.session, e.seq))),
        Item::Merged {
            session,
            seq,
            delta,
            text,
        } => {
            let event = if delta.reasoning {
                SessionEvent::ReasoningDelta {
                    message_id: delta.message_id.clone(),
                    text,
                }
            } else {
                SessionEvent::TextDelta {
                    message_id: delta.message_id.clone(),
                    text,
                }
            };
            let body = encode_notification(
                daemon_notification::SessionUpdate::METHOD,
                &SessionUpdateParams {
                    session_id: session.to_string(),
                    seq,
                    run_id: delta.run_id.clone(),
                    event,
                },
            );
            (body, Some((session, seq)))
        }
    }
}

/// Moves the queue to the socket until the queue is closed and drained, a write fails, or
/// `abort` fires. Whatever is queued when a wake-up comes is written as one batch and flushed
/// once.
pub async fn write_loop<W: AsyncWrite + Unpin>(
    out: Arc<Outbound>,
    write: W,
    abort: CancellationToken,
) -> std::io::Result<()> {
    let mut sink = FramedWrite::new(write, LspCodec::default());
    loop {
        let notified = out.ready.notified();
        let Some(batch) = out.take() else {
            break;
        };
        if batch.is_empty() {
            tokio::select! {
                biased;
                _ = abort.cancelled() => break,
                _ = notified => {
                    // Woken for a new message: let the publisher (and the other writers) run
                    // once before taking the queue, so a burst is taken as one batch (and its
                    // deltas merged) instead of one write per delta per client.
                    tokio::task::yield_now().await;
                    continue;
                }
            }
        }
        let mut done: Vec<(Arc<str>, u64)> = Vec::new();
        let write = async {
            for (body, seq) in batch {
                sink.feed(body).await.map_err(to_io)?;
                if let Some(s) = seq {
                    done.push(s);
                }
            }
            sink.flush().await.map_err(to_io)
        };
        tokio::select! {
            biased;
            _ = abort.cancelled() => break,
            r = write => r?,
        }
        out.mark_written(&done);
    }
    Ok(())
}

fn to_io(e: crush_protocol::FrameError) -> std::io::Error {
    match e {
        crush_protocol::FrameError::Io(e) => e,
        other => std::io::Error::other(other),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::Value;

    fn delta_item(session: &Arc<str>, seq: u64, msg: &str, text: &str) -> EventItem {
        let event = SessionEvent::TextDelta {
            message_id: msg.to_owned(),
            text: text.to_owned(),
        };
        let delta = Delta::of(Some("r1"), &event).map(Arc::new);
        let body = encode_notification(
            daemon_notification::SessionUpdate::METHOD,
            &SessionUpdateParams {
                session_id: session.to_string(),
                seq,
                run_id: Some("r1".to_owned()),
                event,
            },
        );
        EventItem {
            session: session.clone(),
            seq,
            body,
            delta,
        }
    }

    fn json(b: Bytes) -> Value {
        serde_json::from_slice(&b).unwrap()
    }

    #[test]
    fn consecutive_deltas_of_one_message_merge_others_keep_their_place() {
        let s: Arc<str> = Arc::from("s1");
        let q = Outbound::new(1 << 20);
        q.push_event(&delta_item(&s, 1, "m1", "Hel"));
        q.push_event(&delta_item(&s, 2, "m1", "lo"));
        q.push_event(&delta_item(&s, 3, "m2", " other"));
        q.push_raw(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"result":null}"#,
        ));
        q.push_event(&delta_item(&s, 4, "m2", " message"));
        let a = json(q.try_pop().unwrap());
        assert_eq!(a["params"]["text"], "Hello");
        assert_eq!(a["params"]["seq"], 2);
        assert_eq!(a["params"]["runId"], "r1");
        assert_eq!(a["params"]["kind"], "textDelta");
        let b = json(q.try_pop().unwrap());
        assert_eq!(b["params"]["text"], " other");
        assert_eq!(json(q.try_pop().unwrap())["id"], 1);
        let d = json(q.try_pop().unwrap());
        assert_eq!(d["params"]["text"], " message");
        assert!(q.try_pop().is_none());
        assert_eq!(q.stats().merged, 1);
    }

    #[test]
    fn replayed_deltas_stay_whole_and_live_ones_never_merge_into_them() {
        let s: Arc<str> = Arc::from("s1");
        let q = Outbound::new(1 << 20);
        for seq in 5..=7 {
            q.push_event(&delta_item(&s, seq, "m1", &format!("t{seq}")));
        }
        // A re-subscribe with afterSeq 4 replays 5..7 behind them, then live 8 arrives.
        for seq in 5..=8 {
            q.push_event(&delta_item(&s, seq, "m1", &format!("t{seq}")));
        }
        let got: Vec<(u64, String)> = std::iter::from_fn(|| q.try_pop())
            .map(json)
            .map(|v| {
                (
                    v["params"]["seq"].as_u64().unwrap(),
                    v["params"]["text"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (7, "t5t6t7".to_owned()),
                (5, "t5".to_owned()),
                (6, "t6".to_owned()),
                (7, "t7".to_owned()),
                (8, "t8".to_owned()),
            ]
        );
        // Applying every event whose seq is above the last applied gives the text once.
        let mut cursor = 0;
        let mut text = String::new();
        for (seq, t) in got {
            if seq > cursor {
                text.push_str(&t);
                cursor = seq;
            }
        }
        assert_eq!(text, "t5t6t7t8");
    }

    #[test]
    fn deltas_merge_only_across_consecutive_seqs() {
        let s: Arc<str> = Arc::from("s1");
        let q = Outbound::new(1 << 20);
        q.push_event(&delta_item(&s, 1, "m1", "a"));
        q.push_event(&delta_item(&s, 3, "m1", "c"));
        assert_eq!(json(q.try_pop().unwrap())["params"]["text"], "a");
        assert_eq!(json(q.try_pop().unwrap())["params"]["text"], "c");
    }

    #[test]
    fn passing_the_bound_discards_the_queue_and_fires() {
        let s: Arc<str> = Arc::from("s1");
        let q = Outbound::new(4096);
        let big = "x".repeat(1000);
        let mut accepted = 0;
        for i in 0..10 {
            // Different messages: nothing merges.
            if q.push_event(&delta_item(&s, i, &format!("m{i}"), &big)) {
                accepted += 1;
            }
        }
        assert!(accepted < 10);
        assert!(q.overflowed().is_cancelled());
        assert!(q.is_overflowed());
        assert_eq!(q.queued_bytes(), 0);
        assert!(!q.push_raw(Bytes::from_static(b"{}")));
    }
}
