//! Agent benchmark (figures, not assertions). Against a release `crushd` whose model is the
//! loopback mock, in one run it measures:
//! - per-token daemon overhead: from the mock writing a text chunk to its socket to a subscribed
//!   client reading the matching `textDelta` (p50/p99), with 1 run and with 32 runs streaming at
//!   once (32 sessions, one connection each);
//! - a 10-step tool loop (view, grep, edit ×3, then a final answer) end to end, send →
//!   `$/runComplete`, against the floor: a plain HTTP client making the same 10 streaming calls to
//!   the mock one after another. The difference is the daemon's own cost (tools, database,
//!   events, prompt building) per loop.
//!
//! Run: `cargo build --release --bins && cargo bench -p crush-tests --bench agent`
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(unix)]
fn main() {
    bench::run();
}

#[cfg(not(unix))]
fn main() {
    eprintln!("the agent benchmark needs Unix sockets");
}

#[cfg(unix)]
mod bench {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use futures::StreamExt;
    use serde_json::{Value, json};

    use crush_tests::mock_llm::{MockLlm, Script};
    use crush_tests::{RawConn, TestEnv, percentile as pct};

    const TOKENS: usize = 200;
    const LOOPS: usize = 40;

    fn us(d: Duration) -> String {
        format!("{:.0} µs", d.as_secs_f64() * 1e6)
    }

    fn ms(d: Duration) -> String {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }

    /// A reply of `TOKENS` chunks whose texts are unique across the whole benchmark.
    fn tokens(tag: &str) -> Script {
        let chunks: Vec<String> = (0..TOKENS).map(|i| format!("{tag}.{i} ")).collect();
        Script::text(&chunks.concat()).chunk_delay(Duration::from_millis(1))
    }

    async fn session(c: &mut RawConn, workspace: &str, yolo: bool) -> String {
        let s = c
            .request(
                "session/create",
                json!({"workspaceId": workspace, "yolo": yolo}),
            )
            .await;
        let id = s["result"]["sessionId"].as_str().unwrap().to_owned();
        let r = c
            .request("session/subscribe", json!({"sessionId": id}))
            .await;
        assert!(r.get("result").is_some());
        id
    }

    /// Sends a prompt and records when each text delta arrived, until the run completes.
    async fn stream_run(mut c: RawConn, session: String) -> (RawConn, Vec<(String, Instant)>) {
        let r = c
            .request(
                "agent/send",
                json!({"sessionId": session, "prompt": "stream"}),
            )
            .await;
        let run = r["result"]["runId"].as_str().unwrap().to_owned();
        let mut got = Vec::with_capacity(TOKENS);
        loop {
            let m = c.recv().await;
            let at = Instant::now();
            if m["method"] == "$/sessionUpdate" && m["params"]["kind"] == "textDelta" {
                got.push((m["params"]["text"].as_str().unwrap().to_owned(), at));
            }
            if m["method"] == "$/runComplete" && m["params"]["runId"] == run.as_str() {
                break;
            }
        }
        (c, got)
    }

    fn overhead(mock: &MockLlm, received: &[(String, Instant)]) -> Vec<Duration> {
        let sent: HashMap<String, Instant> = mock
            .sent_deltas()
            .into_iter()
            .map(|d| (d.text, d.at))
            .collect();
        received
            .iter()
            .filter_map(|(text, at)| sent.get(text).map(|s| at.saturating_duration_since(*s)))
            .collect()
    }

    pub fn run() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let env = TestEnv::new();
            let mock = MockLlm::start().await;
            env.use_model_at(&mock.base_url());
            let daemon = env.spawn_daemon(&[]);
            let project = env.dir.path().join("project");
            std::fs::create_dir_all(&project).unwrap();
            let mut c = RawConn::initialized(&env.socket).await;
            let ws = c.request("workspace/open", json!({"path": project})).await;
            let workspace = ws["result"]["workspaceId"].as_str().unwrap().to_owned();
            println!(
                "crushd pid {} (release build expected), {TOKENS} chunks per reply, 1 ms apart",
                daemon.pid()
            );

            // Per-token overhead, one run; a warm-up run first.
            for (round, k) in [(0usize, 1usize), (1, 1), (2, 32)] {
                mock.clear_sent();
                let mut conns = Vec::new();
                for _ in 0..k {
                    let mut cx = RawConn::initialized(&env.socket).await;
                    let s = session(&mut cx, &workspace, false).await;
                    conns.push((cx, s));
                }
                for i in 0..k {
                    mock.push(tokens(&format!("r{round}k{i}")));
                }
                let tasks: Vec<_> = conns
                    .into_iter()
                    .map(|(cx, s)| tokio::spawn(stream_run(cx, s)))
                    .collect();
                let mut all = Vec::new();
                for t in tasks {
                    let (_, got) = t.await.unwrap();
                    all.extend(overhead(&mock, &got));
                }
                if round == 0 {
                    continue;
                }
                let n = all.len();
                let p50 = pct(&mut all, 0.5);
                let p99 = pct(&mut all, 0.99);
                println!(
                    "per-token overhead, {k} concurrent run(s): {n} deltas, p50 {} p99 {}",
                    us(p50),
                    us(p99)
                );
            }

            // The 10-step tool loop.
            let file = project.join("notes.txt");
            let steps = |i: usize| -> Vec<Script> {
                let mut v = Vec::new();
                let words = ["alpha", "beta"];
                for e in 0..3 {
                    let (from, to) = (words[e % 2], words[(e + 1) % 2]);
                    v.push(Script::default().tool_call(
                        &format!("v{i}{e}"),
                        "view",
                        r#"{"path":"notes.txt"}"#,
                    ));
                    v.push(Script::default().tool_call(
                        &format!("g{i}{e}"),
                        "grep",
                        &format!(r#"{{"pattern":"{from}"}}"#),
                    ));
                    v.push(Script::default().tool_call(
                        &format!("e{i}{e}"),
                        "edit",
                        &format!(r#"{{"path":"notes.txt","old_string":"{from}","new_string":"{to}"}}"#),
                    ));
                }
                v.push(Script::text("All three edits are done."));
                v
            };
            let s = session(&mut c, &workspace, true).await;
            let mut e2e = Vec::new();
            for i in 0..LOOPS {
                std::fs::write(&file, "first line\nalpha\nlast line\n").unwrap();
                for sc in steps(i) {
                    mock.push(sc);
                }
                let t0 = Instant::now();
                let r = c
                    .request("agent/send", json!({"sessionId": s, "prompt": "edit"}))
                    .await;
                let run = r["result"]["runId"].as_str().unwrap().to_owned();
                let done = c.run_complete(&run).await;
                e2e.push(t0.elapsed());
                assert_eq!(done["text"], "All three edits are done.", "{done}");
                assert_eq!(
                    std::fs::read_to_string(&file).unwrap(),
                    "first line\nbeta\nlast line\n"
                );
            }
            // The floor: the same ten calls made directly.
            let http = reqwest::Client::new();
            let url = format!("{}/chat/completions", mock.base_url());
            let mut floor = Vec::new();
            for i in 0..LOOPS {
                for sc in steps(i) {
                    mock.push(sc);
                }
                let t0 = Instant::now();
                for _ in 0..10 {
                    let body = json!({"model": "mock-1", "stream": true, "messages": [{"role": "user", "content": "x"}]});
                    let resp = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.to_string())
                        .send()
                        .await
                        .unwrap();
                    let mut b = resp.bytes_stream();
                    while let Some(chunk) = b.next().await {
                        chunk.unwrap();
                    }
                }
                floor.push(t0.elapsed());
            }
            let (e50, e99) = (pct(&mut e2e, 0.5), pct(&mut e2e, 0.99));
            let (f50, f99) = (pct(&mut floor, 0.5), pct(&mut floor, 0.99));
            println!(
                "10-step tool loop (view, grep, edit ×3 + answer), {LOOPS} runs: end to end p50 {} p99 {}; \
                 floor (10 direct calls) p50 {} p99 {}; daemon's own cost p50 {} ({} per step)",
                ms(e50),
                ms(e99),
                ms(f50),
                ms(f99),
                ms(e50.saturating_sub(f50)),
                ms(e50.saturating_sub(f50) / 10)
            );
            let _: Value = c.request("daemon/status", json!({})).await;
        });
    }
}
