//! A message being streamed. Deltas arrive many times a second; writing each one would make the
//! database the bottleneck, so the live message is kept in memory and flushed at most once per
//! interval (default 100 ms). A flush appends only what arrived since the previous one (a piece,
//! `pieces.rs`), so a long reply costs writes in proportion to its length; the turn's final
//! write (`finish_turn`/`add_step`) stores the whole parts and drops the pieces.

use std::time::{Duration, Instant};

use crush_protocol::Part;

use super::{Result, Store};

#[derive(Debug)]
pub struct LiveMessage {
    pub id: String,
    parts: Vec<Part>,
    dirty: bool,
    /// How many of `parts` are on disk (the last of them perhaps only in part)…
    stored: usize,
    /// …and how many bytes of that last one's streamed text.
    stored_text: usize,
    /// A part already on disk changed other than by growing its text (a signature): the next
    /// flush rewrites the whole message instead of appending.
    rewrite: bool,
    last_flush: Instant,
    interval: Duration,
    /// Flushes done so far (for benchmarks and logs).
    pub flushes: u64,
}

impl LiveMessage {
    pub fn new(id: String, interval: Duration) -> Self {
        Self {
            id,
            parts: Vec::new(),
            dirty: false,
            stored: 0,
            stored_text: 0,
            rewrite: false,
            last_flush: Instant::now(),
            interval,
            flushes: 0,
        }
    }

    /// Appends streamed text, extending the trailing text part.
    pub fn push_text(&mut self, delta: &str) {
        if delta.is_empty() {
            return;
        }
        if let Some(Part::Text { text }) = self.parts.last_mut() {
            text.push_str(delta);
        } else {
            self.parts.push(Part::text(delta));
        }
        self.dirty = true;
    }

    /// Appends streamed reasoning, extending the trailing reasoning part.
    pub(crate) fn push_reasoning(&mut self, delta: &str) {
        if delta.is_empty() {
            return;
        }
        if let Some(Part::Reasoning { reasoning, .. }) = self.parts.last_mut() {
            reasoning.push_str(delta);
        } else {
            self.parts.push(Part::Reasoning {
                reasoning: delta.to_owned(),
                signature: None,
            });
        }
        self.dirty = true;
    }

    /// Attaches the provider's signature to the reasoning streamed last (Anthropic needs it
    /// back with the reasoning in later steps of the turn).
    pub(crate) fn sign_reasoning(&mut self, signature: &str) {
        let last = self
            .parts
            .iter()
            .rposition(|p| matches!(p, Part::Reasoning { .. }));
        if let Some(i) = last
            && let Part::Reasoning { signature: s, .. } = &mut self.parts[i]
        {
            *s = Some(signature.to_owned());
            self.rewrite |= i < self.stored;
        } else {
            self.parts.push(Part::Reasoning {
                reasoning: String::new(),
                signature: Some(signature.to_owned()),
            });
        }
        self.dirty = true;
    }

    /// The reasoning of this message, if it has some.
    pub(crate) fn reasoning(&self) -> Option<crate::model::Reasoning> {
        let parts: Vec<(&str, Option<&str>)> = self
            .parts
            .iter()
            .filter_map(|p| match p {
                Part::Reasoning {
                    reasoning,
                    signature,
                } => Some((reasoning.as_str(), signature.as_deref())),
                _ => None,
            })
            .collect();
        if parts.is_empty() {
            return None;
        }
        Some(crate::model::Reasoning {
            text: parts.iter().map(|(text, _)| *text).collect(),
            signature: parts
                .iter()
                .rev()
                .find_map(|(_, signature)| *signature)
                .map(str::to_owned),
        })
    }

    /// Adds a whole part (a tool call, a tool result…).
    pub(crate) fn push_part(&mut self, part: Part) {
        self.parts.push(part);
        self.dirty = true;
    }

    /// All text parts concatenated.
    pub fn text(&self) -> String {
        crush_protocol::vocab::text_of(&self.parts)
    }

    pub fn parts_json(&self) -> String {
        parts_json(&self.parts)
    }

    /// When the next flush is due, if anything is waiting to be written.
    pub fn next_flush_at(&self) -> Option<Instant> {
        self.dirty.then(|| self.last_flush + self.interval)
    }

    /// Writes what changed since the last flush now: appended as a piece, or the whole parts
    /// when a part already written changed. The next flush is due one interval after this one
    /// *ended*, failed or not, so a slow or failing disk never starves the stream feeding it. A
    /// failed flush leaves the previous ones on disk and is retried whole by the next.
    pub async fn flush(&mut self, store: &Store) -> Result<()> {
        let written = if self.rewrite {
            store
                .update_message_parts(&self.id, &self.parts_json())
                .await
        } else {
            let extend = self.stored.checked_sub(1).and_then(|i| {
                self.parts[i]
                    .streamed_text()
                    .and_then(|t| t.get(self.stored_text..))
                    .filter(|t| !t.is_empty())
            });
            let more = &self.parts[self.stored..];
            if extend.is_none() && more.is_empty() {
                Ok(())
            } else {
                let more = parts_json(more);
                store.append_message_piece(&self.id, extend, &more).await
            }
        };
        self.last_flush = Instant::now();
        written?;
        self.dirty = false;
        self.rewrite = false;
        self.stored = self.parts.len();
        self.stored_text = self
            .parts
            .last()
            .and_then(Part::streamed_text)
            .map_or(0, str::len);
        self.flushes += 1;
        Ok(())
    }
}

/// Parts as the JSON text of the `parts` column.
pub fn parts_json(parts: &[Part]) -> String {
    // Serializing strings, numbers and maps with string keys cannot fail.
    serde_json::to_string(parts).unwrap_or_else(|_| "[]".to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use serde_json::{Value, json};

    use super::*;
    use crate::store::{FinishTurn, MessageRow};

    /// A store with one empty assistant message, as a run starts it.
    async fn streaming_message() -> (tempfile::TempDir, Store, MessageRow) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let ws = store.open_workspace("/p").await.unwrap();
        let s = store.create_session(&ws.id, "t", None).await.unwrap();
        let m = store
            .start_assistant_message(&s.id, None, None, None)
            .await
            .unwrap();
        (dir, store, m)
    }

    /// The message's parts as `session/messages` reads them.
    async fn stored(store: &Store, id: &str) -> Value {
        let row = store.get_message(id).await.unwrap().unwrap();
        serde_json::from_str(&row.parts).unwrap()
    }

    /// Rows in `message_pieces`, and the bytes of text they hold.
    async fn pieces(store: &Store) -> (i64, i64) {
        sqlx::query_as(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(extend) + LENGTH(parts)), 0) FROM message_pieces",
        )
        .fetch_one(store.pool())
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn writes_nothing_until_a_flush_and_reads_back_what_was_flushed() {
        let (_dir, store, m) = streaming_message().await;
        let mut live = LiveMessage::new(m.id.clone(), Duration::from_secs(3600));
        for w in ["Hello", ", ", "world"] {
            live.push_text(w);
        }
        live.push_reasoning("because");
        assert_eq!(live.text(), "Hello, world");
        assert_eq!(
            stored(&store, &m.id).await,
            json!([]),
            "nothing written yet"
        );
        assert!(live.next_flush_at().is_some(), "a flush is due later");

        live.flush(&store).await.unwrap();
        assert_eq!(live.next_flush_at(), None, "nothing new to write");
        assert_eq!(
            stored(&store, &m.id).await,
            json!([{"type": "text", "text": "Hello, world"}, {"type": "reasoning", "reasoning": "because"}])
        );
        assert_eq!(live.flushes, 1);
    }

    #[tokio::test]
    async fn a_flush_appends_only_what_arrived_since_the_last() {
        let (_dir, store, m) = streaming_message().await;
        let mut live = LiveMessage::new(m.id.clone(), Duration::ZERO);
        let mut expected = String::new();
        for i in 0..50 {
            let delta = format!("word{i} ");
            live.push_text(&delta);
            expected.push_str(&delta);
            live.flush(&store).await.unwrap();
        }
        let (rows, bytes) = pieces(&store).await;
        assert_eq!(rows, 50);
        assert!(
            bytes < 2 * expected.len() as i64 + 50 * 4,
            "each piece holds its delta, not the message so far: {bytes} bytes"
        );
        live.push_part(
            serde_json::from_value(
                json!({"type": "tool_call", "id": "c1", "name": "ls", "input": {}}),
            )
            .unwrap(),
        );
        live.push_text("after");
        live.flush(&store).await.unwrap();
        live.flush(&store).await.unwrap();
        assert_eq!(pieces(&store).await.0, 51, "an idle flush writes nothing");
        assert_eq!(
            stored(&store, &m.id).await,
            json!([
                {"type": "text", "text": expected},
                {"type": "tool_call", "id": "c1", "name": "ls", "input": {}},
                {"type": "text", "text": "after"},
            ])
        );
    }

    #[tokio::test]
    async fn a_signature_on_flushed_reasoning_rewrites_the_message() {
        let (_dir, store, m) = streaming_message().await;
        let mut live = LiveMessage::new(m.id.clone(), Duration::ZERO);
        live.push_reasoning("think");
        live.flush(&store).await.unwrap();
        live.push_reasoning("ing");
        live.sign_reasoning("sig");
        live.push_text("answer");
        live.flush(&store).await.unwrap();
        assert_eq!(pieces(&store).await.0, 0, "the rewrite holds everything");
        live.push_text("!");
        live.flush(&store).await.unwrap();
        assert_eq!(
            stored(&store, &m.id).await,
            json!([
                {"type": "reasoning", "reasoning": "thinking", "signature": "sig"},
                {"type": "text", "text": "answer!"},
            ])
        );
    }

    #[tokio::test]
    async fn the_final_write_replaces_the_pieces() {
        let (_dir, store, m) = streaming_message().await;
        let mut live = LiveMessage::new(m.id.clone(), Duration::ZERO);
        live.push_text("partial");
        live.flush(&store).await.unwrap();
        live.push_text(" and the rest");
        let finish = FinishTurn {
            session_id: &m.session_id,
            message_id: Some(&m.id),
            parts: &live.parts_json(),
            finish_reason: crush_protocol::FinishReason::EndTurn,
            error: None,
            run_state: crush_protocol::RunState::Completed,
            stop_reason: None,
            run_ids: &[],
            usage: crate::store::TurnUsage::default(),
        };
        store.finish_turn(&finish).await.unwrap();
        // A retried final write (runs/late.rs) lands on the same state.
        store.finish_turn(&finish).await.unwrap();
        assert_eq!(pieces(&store).await.0, 0);
        assert_eq!(
            stored(&store, &m.id).await,
            json!([{"type": "text", "text": "partial and the rest"}])
        );
    }
}
