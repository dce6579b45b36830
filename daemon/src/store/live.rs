//! A message being streamed. Deltas arrive many times a second; writing each one would make the
//! database the bottleneck, so the live message is kept in memory and flushed at most once per
//! interval (default 100 ms), and always at the end. The final write runs on its own task,
//! detached from the run's cancellation and bounded by a timeout, so a cancelled or shut-down run
//! still leaves its text on disk.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_util::task::TaskTracker;

use super::{Result, Store, StoreError};

/// Default time between two flushes of one live message.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// How long a final write may take before it is given up (and logged).
pub const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct LiveMessage {
    pub id: String,
    parts: Vec<Value>,
    dirty: bool,
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
            last_flush: Instant::now(),
            interval,
            flushes: 0,
        }
    }

    /// Appends streamed text, extending the trailing text part.
    pub fn push_text(&mut self, delta: &str) {
        self.push_kind("text", delta);
    }

    /// Appends streamed reasoning, extending the trailing reasoning part.
    pub fn push_reasoning(&mut self, delta: &str) {
        self.push_kind("reasoning", delta);
    }

    fn push_kind(&mut self, kind: &str, delta: &str) {
        if delta.is_empty() {
            return;
        }
        if let Some(last) = self.parts.last_mut()
            && last["type"] == kind
            && let Some(Value::String(text)) = last.get_mut(kind)
        {
            text.push_str(delta);
        } else {
            self.parts.push(json!({"type": kind, kind: delta}));
        }
        self.dirty = true;
    }

    /// Attaches the provider's signature to the reasoning streamed last (Anthropic needs it
    /// back with the reasoning in later steps of the turn).
    pub fn sign_reasoning(&mut self, signature: &str) {
        if let Some(p) = self
            .parts
            .iter_mut()
            .rev()
            .find(|p| p["type"] == "reasoning")
        {
            p["signature"] = Value::String(signature.to_owned());
        } else {
            self.parts
                .push(json!({"type": "reasoning", "reasoning": "", "signature": signature}));
        }
        self.dirty = true;
    }

    /// The reasoning of this message, if it has some.
    pub fn reasoning(&self) -> Option<crate::model::Reasoning> {
        let parts: Vec<&Value> = self
            .parts
            .iter()
            .filter(|p| p["type"] == "reasoning")
            .collect();
        if parts.is_empty() {
            return None;
        }
        Some(crate::model::Reasoning {
            text: parts
                .iter()
                .filter_map(|p| p["reasoning"].as_str())
                .collect(),
            signature: parts
                .iter()
                .rev()
                .find_map(|p| p["signature"].as_str())
                .map(str::to_owned),
        })
    }

    /// Adds a whole part (a tool call, a tool result…).
    pub fn push_part(&mut self, part: Value) {
        self.parts.push(part);
        self.dirty = true;
    }

    /// All text parts concatenated.
    pub fn text(&self) -> String {
        self.parts
            .iter()
            .filter(|p| p["type"] == "text")
            .filter_map(|p| p["text"].as_str())
            .collect()
    }

    pub fn parts_json(&self) -> String {
        Value::Array(self.parts.clone()).to_string()
    }

    /// When the next flush is due, if anything is waiting to be written.
    pub fn next_flush_at(&self) -> Option<Instant> {
        self.dirty.then(|| self.last_flush + self.interval)
    }

    /// Flushes if unwritten deltas are older than the interval. Returns whether it wrote.
    pub async fn flush_if_due(&mut self, store: &Store) -> Result<bool> {
        match self.next_flush_at() {
            Some(at) if Instant::now() >= at => {
                self.flush(store).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Writes the current parts now. The next flush is due one interval after this one
    /// *ended*, failed or not, so a slow or failing disk never starves the stream feeding it.
    pub async fn flush(&mut self, store: &Store) -> Result<()> {
        let written = store
            .update_message_parts(&self.id, &self.parts_json())
            .await;
        self.last_flush = Instant::now();
        written?;
        self.dirty = false;
        self.flushes += 1;
        Ok(())
    }

    /// The final write (parts, finish reason, error) on a task of `tracker`: it completes even
    /// if the caller is cancelled or dropped, bounded by [`FINAL_WRITE_TIMEOUT`].
    pub fn finish_detached(
        self,
        store: &Store,
        tracker: &TaskTracker,
        finish_reason: &'static str,
        error: Option<String>,
    ) -> tokio::task::JoinHandle<Result<()>> {
        let store = store.clone();
        let parts = self.parts_json();
        let id = self.id;
        tracker.spawn(async move {
            let write = store.finish_message(&id, &parts, finish_reason, error.as_deref());
            match tokio::time::timeout(FINAL_WRITE_TIMEOUT, write).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::error!(message = %id, "final write of a message timed out");
                    Err(StoreError::Db(sqlx::Error::PoolTimedOut))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::store::MessageRow;

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

    #[tokio::test]
    async fn batches_deltas_and_always_writes_the_end() {
        let (_dir, store, m) = streaming_message().await;
        let mut live = LiveMessage::new(m.id.clone(), Duration::from_secs(3600));
        for w in ["Hello", ", ", "world"] {
            live.push_text(w);
            assert!(
                !live.flush_if_due(&store).await.unwrap(),
                "not due within the interval"
            );
        }
        live.push_reasoning("because");
        assert_eq!(live.text(), "Hello, world");
        assert_eq!(
            store.get_message(&m.id).await.unwrap().unwrap().parts,
            "[]",
            "nothing written yet"
        );

        let tracker = TaskTracker::new();
        live.finish_detached(&store, &tracker, "canceled", None)
            .await
            .unwrap()
            .unwrap();
        let row = store.get_message(&m.id).await.unwrap().unwrap();
        assert_eq!(row.finish_reason.as_deref(), Some("canceled"));
        let parts: Value = serde_json::from_str(&row.parts).unwrap();
        assert_eq!(
            parts,
            json!([{"type": "text", "text": "Hello, world"}, {"type": "reasoning", "reasoning": "because"}])
        );
    }

    #[tokio::test]
    async fn flushes_once_the_interval_has_passed() {
        let (_dir, store, m) = streaming_message().await;
        let mut live = LiveMessage::new(m.id.clone(), Duration::ZERO);
        live.push_text("partial");
        assert!(live.flush_if_due(&store).await.unwrap());
        assert!(
            !live.flush_if_due(&store).await.unwrap(),
            "nothing new to write"
        );
        assert!(
            store
                .get_message(&m.id)
                .await
                .unwrap()
                .unwrap()
                .parts
                .contains("partial")
        );
        assert_eq!(live.flushes, 1);
    }
}
