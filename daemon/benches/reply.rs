//! Cost of streaming one long reply (figures, not assertions; issue 17 item 7).
//!
//! One reply of 64 KiB, 1 MiB and 4 MiB streams into one assistant message through
//! `LiveMessage` with the daemon's flush interval (100 ms), as the driver does: deltas of 32
//! bytes, 10 every millisecond (≈ 320 KB/s — a fast model, compressed so a 4 MiB reply takes
//! seconds, not an hour), a flush when one is due, then the turn's final write (`finish_turn`).
//! Reports the bytes the process wrote to the database files (`wchar` of `/proc/self/io`: the
//! WAL, its checkpoints into the database file, and nothing else — the bench prints only at the
//! end) and the flush latency p50/p99 (the final write included).
//!
//! Uses only API that predates the append-only flush, so the same file measures both.
//!
//! Run: `SQLX_OFFLINE=true cargo bench -p crushd --bench reply`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crushd::config::DaemonSettings;
use crushd::store::live::LiveMessage;
use crushd::store::{FinishTurn, Store, TurnUsage};

const DELTA: &str = "0123456789abcdef0123456789abcde ";

/// Bytes this process has handed to `write(2)` and friends so far.
fn written() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

struct Outcome {
    flushes: usize,
    bytes: u64,
    times: Vec<Duration>,
    wall: Duration,
}

async fn stream_reply(reply: usize) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let ws = store.open_workspace("/bench").await.unwrap();
    let s = store.create_session(&ws.id, "reply", None).await.unwrap();
    let m = store
        .start_assistant_message(&s.id, None, None, None)
        .await
        .unwrap();
    let mut live = LiveMessage::new(m.id, DaemonSettings::default().flush_interval);
    let mut times = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let before = written();
    let start = Instant::now();
    for d in 0..reply / DELTA.len() {
        if d % 10 == 0 {
            tick.tick().await;
        }
        live.push_text(DELTA);
        if live.next_flush_at().is_some_and(|at| Instant::now() >= at) {
            let t = Instant::now();
            live.flush(&store).await.unwrap();
            times.push(t.elapsed());
        }
    }
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
    let wall = start.elapsed();
    // Closing checkpoints the WAL into the database file: those bytes count too.
    store.close().await;
    let bytes = written() - before;
    assert_eq!(live.text().len(), reply);
    Outcome {
        flushes: times.len(),
        bytes,
        times,
        wall,
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
    println!("| reply | wall | writes | bytes written | written / reply | flush p50 | flush p99 |");
    println!("|---|---|---|---|---|---|---|");
    for (name, reply) in [("64 KiB", 64 << 10), ("1 MiB", 1 << 20), ("4 MiB", 4 << 20)] {
        let mut o = rt.block_on(stream_reply(reply));
        o.times.sort_unstable();
        println!(
            "| {name} | {:.2} s | {} | {:.1} MiB | {:.1}× | {:.2} ms | {:.2} ms |",
            o.wall.as_secs_f64(),
            o.flushes,
            o.bytes as f64 / (1024.0 * 1024.0),
            o.bytes as f64 / reply as f64,
            pct(&o.times, 0.5).as_secs_f64() * 1e3,
            pct(&o.times, 0.99).as_secs_f64() * 1e3,
        );
    }
}
