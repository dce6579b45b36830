//! A session's event stream: the `seq` of its last event, the replay log, the assistant message
//! being streamed (as of `seq`), and the connections subscribed to it — the only place a
//! session's subscribers are kept.
//!
//! Architecture invariant: an event gets its seq, goes to every subscriber's queue and into the
//! replay log in one call, under the session lock; a subscribe replays and registers under the
//! same lock, so a subscriber's copy of the stream has no gap and no duplicate.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crush_protocol::message::encode_notification;
use crush_protocol::{
    Notification, RunCompleteParams, SessionEvent, SessionUpdateParams, StreamingMessage,
    daemon_notification,
};

use super::replay::ReplayLog;
use crate::outbound::{Delta, EventItem};
use crate::peer::Peer;

pub(super) struct SessionEvents {
    /// The session id, shared by every queued event.
    sid: Arc<str>,
    seq: u64,
    /// The last events, oldest first, for replay.
    log: ReplayLog,
    /// The assistant message being streamed, as of `seq`.
    streaming: Option<StreamingMessage>,
    subscribers: BTreeMap<u64, Arc<Peer>>,
}

/// What a subscribe found and did.
pub(super) struct Subscribed {
    /// The cursor could not be served from the log: the client must reload.
    pub resync: bool,
    /// Events replayed from the log.
    pub replayed: u64,
    /// The connection was not subscribed before.
    pub new: bool,
}

impl SessionEvents {
    pub(super) fn new(session_id: &str, seq: u64, log: ReplayLog) -> Self {
        Self {
            sid: Arc::from(session_id),
            seq,
            log,
            streaming: None,
            subscribers: BTreeMap::new(),
        }
    }

    pub(super) fn seq(&self) -> u64 {
        self.seq
    }

    pub(super) fn streaming(&self) -> Option<StreamingMessage> {
        self.streaming.clone()
    }

    pub(super) fn has_subscribers(&self) -> bool {
        !self.subscribers.is_empty()
    }

    pub(super) fn subscribers(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.subscribers.values()
    }

    /// Sends an event to every subscriber, with the session's next sequence number, and keeps
    /// it in the replay log.
    pub(super) fn publish(&mut self, run_id: Option<&str>, event: SessionEvent) {
        self.seq += 1;
        self.track_streaming(run_id, &event);
        let delta = Delta::of(run_id, &event).map(Arc::new);
        let body = encode_notification(
            daemon_notification::SessionUpdate::METHOD,
            &SessionUpdateParams {
                session_id: self.sid.to_string(),
                seq: self.seq,
                run_id: run_id.map(str::to_owned),
                event,
            },
        );
        let item = EventItem {
            session: self.sid.clone(),
            seq: self.seq,
            body,
            delta,
        };
        for p in self.subscribers.values() {
            p.send_event(&item);
        }
        self.log.push(item);
    }

    /// Publishes a delta of the active run unless its token is cancelled. Returns false when it
    /// was not published (the run is cancelled and must stop).
    pub(super) fn publish_live(
        &mut self,
        token: &CancellationToken,
        run_id: &str,
        event: SessionEvent,
    ) -> bool {
        if token.is_cancelled() {
            return false;
        }
        self.publish(Some(run_id), event);
        true
    }

    /// Sends a `$/runComplete` to every subscriber and to the run's sender (once).
    pub(super) fn complete(&self, params: RunCompleteParams, sender: Option<&Arc<Peer>>) {
        let body = encode_notification(daemon_notification::RunComplete::METHOD, &params);
        for p in self.subscribers.values() {
            p.send_raw(body.clone());
        }
        if let Some(p) = sender
            && !self.subscribers.contains_key(&p.id)
        {
            p.send_raw(body);
        }
    }

    /// Sends a message outside the stream (no seq) to every subscriber; returns their ids.
    pub(super) fn send_to_subscribers(&self, body: &Bytes) -> Vec<u64> {
        self.subscribers
            .values()
            .map(|p| {
                p.send_raw(body.clone());
                p.id
            })
            .collect()
    }

    /// Makes `peer` a subscriber: replays what followed `after_seq` from the log, or answers
    /// `resync` when the log no longer reaches it, the cursor is from another epoch
    /// (`other_epoch`) or it is ahead of the session.
    pub(super) fn subscribe(
        &mut self,
        peer: &Arc<Peer>,
        after_seq: Option<u64>,
        other_epoch: bool,
    ) -> Subscribed {
        let mut resync = false;
        let mut replayed = 0u64;
        let already = self.subscribers.contains_key(&peer.id);
        let mut replay_from = None;
        if let Some(after) = after_seq {
            if other_epoch || after > self.seq {
                resync = true;
            } else if after < self.seq {
                match self.log.first() {
                    Some(first) if first.seq <= after + 1 => replay_from = Some(after),
                    _ => resync = true,
                }
            }
        }
        // Where this connection's copy of the stream now starts, for a restore after a drop:
        // set before the replay is queued. A repeated subscribe never moves it past events
        // still queued for the connection.
        let start = replay_from.unwrap_or(self.seq);
        let cursor = match (already, peer.outbound().written().get(&*self.sid)) {
            (true, Some(&had)) => had.min(start),
            _ => start,
        };
        peer.outbound().set_cursor(&self.sid, cursor);
        if let Some(after) = replay_from {
            for e in self.log.iter().filter(|e| e.seq > after) {
                if !peer.send_event(e) {
                    // The connection closed (or overflowed): stop holding the lock for it.
                    break;
                }
                replayed += 1;
            }
        }
        let new = self.subscribers.insert(peer.id, peer.clone()).is_none();
        peer.add_subscription(&self.sid);
        Subscribed {
            resync,
            replayed,
            new,
        }
    }

    /// Removes a subscriber; whether it was one.
    pub(super) fn unsubscribe(&mut self, peer_id: u64) -> bool {
        self.subscribers.remove(&peer_id).is_some()
    }

    /// The session is gone: every subscriber forgets it.
    pub(super) fn forget_subscribers(&mut self) {
        for p in self.subscribers.values() {
            p.remove_subscription(&self.sid);
        }
    }

    /// The stamp of the oldest event in the replay log (for the daemon-wide trim).
    pub(super) fn oldest_stamp(&self) -> Option<u64> {
        self.log.oldest_stamp()
    }

    pub(super) fn drop_oldest(&mut self) {
        self.log.drop_oldest();
    }

    /// Keeps the streaming message's content as of the latest event, for subscribers that
    /// attach mid-message.
    fn track_streaming(&mut self, run_id: Option<&str>, event: &SessionEvent) {
        fn append(parts: &mut Vec<Value>, kind: &str, text: &str) {
            if let Some(last) = parts.last_mut()
                && last["type"] == kind
                && let Some(Value::String(t)) = last.get_mut(kind)
            {
                t.push_str(text);
                return;
            }
            parts.push(json!({"type": kind, kind: text}));
        }
        let current =
            |m: &str, st: &Option<StreamingMessage>| st.as_ref().is_some_and(|s| s.message_id == m);
        match event {
            SessionEvent::AssistantStarted { message_id, .. } => {
                self.streaming = Some(StreamingMessage {
                    message_id: message_id.clone(),
                    run_id: run_id.map(str::to_owned),
                    parts: Vec::new(),
                });
            }
            SessionEvent::TextDelta { message_id, text }
                if current(message_id, &self.streaming) =>
            {
                if let Some(st) = &mut self.streaming {
                    append(&mut st.parts, "text", text);
                }
            }
            SessionEvent::ReasoningDelta { message_id, text }
                if current(message_id, &self.streaming) =>
            {
                if let Some(st) = &mut self.streaming {
                    append(&mut st.parts, "reasoning", text);
                }
            }
            SessionEvent::ToolCallStarted {
                message_id,
                tool_call_id,
                tool,
                input,
            } if current(message_id, &self.streaming) => {
                if let Some(st) = &mut self.streaming {
                    st.parts.push(json!({
                        "type": "toolCall",
                        "id": tool_call_id,
                        "name": tool,
                        "input": input,
                    }));
                }
            }
            SessionEvent::ToolCallFinished {
                message_id,
                tool_call_id,
                tool,
                status,
                output,
                metadata,
            } if current(message_id, &self.streaming) => {
                if let Some(st) = &mut self.streaming {
                    let mut part = json!({
                        "type": "toolResult",
                        "toolCallId": tool_call_id,
                        "name": tool,
                        "status": status,
                        "content": output,
                    });
                    if let Some(m) = metadata {
                        part["metadata"] = m.clone();
                    }
                    st.parts.push(part);
                }
            }
            SessionEvent::MessageFinished { message_id, .. }
                if current(message_id, &self.streaming) =>
            {
                self.streaming = None;
            }
            SessionEvent::RunFinished { .. } => self.streaming = None,
            _ => {}
        }
    }
}
