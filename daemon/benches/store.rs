//! Sustained streaming-write benchmark of the store (figures, not assertions).
//!
//! K concurrent runs (K = 1 and 32) each stream 10 000 text deltas into one assistant message,
//! paced like a fast model (10 deltas every millisecond, ≈ 10 000 tokens/s per run), through
//! `LiveMessage` with its default 100 ms batching flush; then the same at full speed with a flush
//! after every delta, the policy batching replaces. Reports deltas/s, flushes/s, p50/p99 flush
//! time and the database size at the end.
//!
//! Run: `SQLX_OFFLINE=true cargo bench -p crushd --bench store`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use crushd::config::DaemonSettings;
use crushd::store::live::LiveMessage;
use crushd::store::{FinishTurn, Store, TurnUsage};
use tokio::sync::Mutex;

const DELTAS: usize = 10_000;
const DELTA: &str = "token ";

struct Outcome {
    deltas: usize,
    flushes: u64,
    flush_times: Vec<Duration>,
    wall: Duration,
    db_bytes: u64,
}

async fn run_case(runs: usize, interval: Duration, paced: bool) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let ws = store.open_workspace("/bench").await.unwrap();
    let samples = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let mut handles = Vec::new();
    for i in 0..runs {
        let store = store.clone();
        let ws_id = ws.id.clone();
        let samples = samples.clone();
        handles.push(tokio::spawn(async move {
            let s = store
                .create_session(&ws_id, &format!("run {i}"), None)
                .await
                .unwrap();
            let m = store
                .start_assistant_message(&s.id, None, None, None)
                .await
                .unwrap();
            let mut live = LiveMessage::new(m.id, interval);
            let mut times = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            for d in 0..DELTAS {
                if paced && d % 10 == 0 {
                    tick.tick().await;
                }
                live.push_text(DELTA);
                if live.next_flush_at().is_some_and(|at| Instant::now() >= at) {
                    let t = Instant::now();
                    live.flush(&store).await.unwrap();
                    times.push(t.elapsed());
                }
            }
            let flushes = live.flushes + 1;
            let t = Instant::now();
            store
                .finish_turn(&FinishTurn {
                    session_id: &s.id,
                    message_id: Some(&live.id),
                    parts: &live.parts_json(),
                    finish_reason: crush_protocol::FinishReason::EndTurn,
                    error: None,
                    run_state: crush_protocol::RunState::Completed,
                    stop_reason: None,
                    run_ids: &[],
                    usage: TurnUsage::default(),
                })
                .await
                .unwrap();
            times.push(t.elapsed());
            samples.lock().await.extend(times);
            flushes
        }));
    }
    let mut flushes = 0;
    for h in handles {
        flushes += h.await.unwrap();
    }
    let wall = start.elapsed();
    store.close().await;
    let db_bytes = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("crushd.db"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    let flush_times = Arc::try_unwrap(samples).unwrap().into_inner();
    Outcome {
        deltas: runs * DELTAS,
        flushes,
        flush_times,
        wall,
        db_bytes,
    }
}

fn pct(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("## Store: sustained streaming writes\n");
    println!(
        "| case | runs | deltas | wall | deltas/s | flushes | flushes/s | flush p50 | flush p99 | db size |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (name, interval, paced) in [
        (
            "batched 100 ms, paced ≈10k deltas/s per run",
            DaemonSettings::default().flush_interval,
            true,
        ),
        ("flush every delta, unpaced", Duration::ZERO, false),
    ] {
        for runs in [1, 32] {
            let mut o = rt.block_on(run_case(runs, interval, paced));
            o.flush_times.sort_unstable();
            let secs = o.wall.as_secs_f64();
            println!(
                "| {name} | {runs} | {} | {:.2} s | {:.0} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.1} MiB |",
                o.deltas,
                secs,
                o.deltas as f64 / secs,
                o.flushes,
                o.flushes as f64 / secs,
                pct(&o.flush_times, 0.5).as_secs_f64() * 1e3,
                pct(&o.flush_times, 0.99).as_secs_f64() * 1e3,
                o.db_bytes as f64 / (1024.0 * 1024.0),
            );
        }
    }
}
