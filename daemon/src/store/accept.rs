//! Durable accepts with group commit.
//!
//! `agent/send` answers only after the run's row is committed, so an acknowledged run survives
//! a crash (recovery then marks it `interrupted` and puts its prompt in the session). In WAL mode
//! with `synchronous=NORMAL` a commit is an append to the WAL without an fsync: it survives the
//! process dying, not a power cut (see ARCHITECTURE.md "Persistence").
//!
//! One writer task owns the inserts. Accepts that arrive while it is writing queue up behind it,
//! and its next write takes all of them at once, as one `INSERT … SELECT FROM json_each(?)`
//! statement (one round trip to SQLite's thread and one commit, however many rows): a burst costs
//! a few commits instead of one each, and the writers never contend for SQLite's lock (whose busy
//! handler sleeps in milliseconds). No timer waits for a batch to fill: an accept on an idle
//! daemon is written at once.

use std::sync::Mutex;

use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{Result, StoreError};
use crate::sync::lock;

/// The most accepts one transaction takes.
const MAX_BATCH: usize = 256;

/// A run as accepted, before anything ran.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub run_id: String,
    pub session_id: String,
    pub prompt: String,
    /// JSON array of the user message's parts.
    pub user_parts: String,
    pub created_at: i64,
}

type Pending = (NewRun, oneshot::Sender<Result<bool>>);

/// The writer task's inbox. `record` waits for the commit.
#[derive(Debug)]
pub(crate) struct AcceptLog {
    inbox: Mutex<Option<mpsc::UnboundedSender<Pending>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl AcceptLog {
    pub(crate) fn start(pool: SqlitePool) -> AcceptLog {
        let (tx, rx) = mpsc::unbounded_channel();
        AcceptLog {
            inbox: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(tokio::spawn(write_loop(pool, rx)))),
        }
    }

    /// Inserts the run's row, committed before this returns. `Ok(false)`: a run with this id
    /// already exists (nothing was written).
    pub(crate) async fn record(&self, run: NewRun) -> Result<bool> {
        let (done, result) = oneshot::channel();
        let inbox = lock(&self.inbox).clone();
        let sent = inbox.is_some_and(|inbox| inbox.send((run, done)).is_ok());
        if !sent {
            return Err(StoreError::Closed);
        }
        result.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Stops taking accepts and waits until the queued ones are written.
    pub(crate) async fn close(&self) {
        lock(&self.inbox).take();
        let writer = lock(&self.writer).take();
        if let Some(writer) = writer {
            let _ = writer.await;
        }
    }
}

async fn write_loop(pool: SqlitePool, mut inbox: mpsc::UnboundedReceiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while inbox.recv_many(&mut batch, MAX_BATCH).await > 0 {
        write_batch(&pool, &mut batch).await;
    }
}

/// Writes the batch in one statement and answers each accept. If it fails, each accept is tried
/// alone (the same statement with one row), so one bad row (its session deleted meanwhile, say)
/// fails only itself and a full disk fails each with the disk's error.
async fn write_batch(pool: &SqlitePool, batch: &mut Vec<Pending>) {
    let runs: Vec<&NewRun> = batch.iter().map(|(run, _)| run).collect();
    match insert_runs(pool, &runs).await {
        Ok(inserted) => {
            for ((_, done), fresh) in batch.drain(..).zip(inserted) {
                let _ = done.send(Ok(fresh));
            }
        }
        Err(_) => {
            for (run, done) in batch.drain(..) {
                let result = insert_runs(pool, &[&run]).await;
                let _ = done.send(result.map(|fresh| fresh.first().copied().unwrap_or(false)));
            }
        }
    }
}

/// Inserts the runs in one statement (atomic on its own); which rows were new comes back from
/// `RETURNING`, one answer per run in order.
async fn insert_runs(pool: &SqlitePool, runs: &[&NewRun]) -> Result<Vec<bool>> {
    let rows: Vec<serde_json::Value> = runs
        .iter()
        .map(|run| {
            serde_json::json!({
                "runId": run.run_id,
                "sessionId": run.session_id,
                "prompt": run.prompt,
                "userParts": run.user_parts,
                "createdAt": run.created_at,
            })
        })
        .collect();
    let rows = serde_json::Value::Array(rows).to_string();
    // `WHERE true` lets SQLite tell the upsert clause from a join constraint.
    let inserted = sqlx::query_scalar!(
        r#"INSERT INTO runs (run_id, session_id, state, prompt, user_parts, created_at)
           SELECT value ->> '$.runId', value ->> '$.sessionId', 'accepted', value ->> '$.prompt',
                  value ->> '$.userParts', value ->> '$.createdAt'
           FROM json_each(?) WHERE true
           ON CONFLICT(run_id) DO NOTHING
           RETURNING run_id AS "run_id!: String""#,
        rows
    )
    .fetch_all(pool)
    .await?;
    // Two sends of one run id in the same batch insert one row: only the first is new.
    let mut inserted: std::collections::HashSet<String> = inserted.into_iter().collect();
    Ok(runs
        .iter()
        .map(|run| inserted.remove(&run.run_id))
        .collect())
}
