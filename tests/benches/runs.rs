//! Run benchmark (figures, not assertions). In one run, against a release `crushd` whose model is
//! the loopback OpenAI-compatible mock at zero delay, it measures:
//! - `agent/send` acknowledgement latency (request written → response read), p50/p99;
//! - send → first `textDelta`, and send → `$/runComplete` for a 20-chunk reply;
//! - `agent/cancel` → `$/runComplete` of the cancelled run (mid-stream);
//! - a burst: 90 connections, each with its own session, send at the same instant; each
//!   acknowledgement's latency, over 20 bursts (the accept's group commit is what this exercises);
//! - K = 1, 8, 32 sessions each running one 20-chunk turn at once: wall time, and the daemon's
//!   peak resident memory (VmHWM) after each step;
//! - the floor: a plain HTTP client (reqwest) reading the same 20-chunk stream from the mock.
//!
//! Run: `cargo build --release --bins && cargo bench -p crush-tests --bench runs`
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(unix)]
fn main() {
    bench::run();
}

#[cfg(not(unix))]
fn main() {
    eprintln!("the runs benchmark needs Unix sockets");
}

#[cfg(unix)]
mod bench {
    use std::time::{Duration, Instant};

    use futures::StreamExt;
    use serde_json::{Value, json};

    use crush_tests::mock_llm::{MockLlm, Script};
    use crush_tests::{RawConn, TestEnv, percentile as pct};

    const ITER: usize = 300;
    const CANCEL_ITER: usize = 200;
    const CHUNKS: usize = 20;
    const BURST: usize = 90;
    const BURST_TRIALS: usize = 20;

    fn ms(d: Duration) -> String {
        format!("{:.3} ms", d.as_secs_f64() * 1e3)
    }

    fn peak_rss_mib(pid: u32) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    }

    async fn new_session(c: &mut RawConn, workspace: &str) -> String {
        let s = c
            .request("session/create", json!({"workspaceId": workspace}))
            .await;
        let id = s["result"]["sessionId"].as_str().unwrap().to_owned();
        let r = c
            .request("session/subscribe", json!({"sessionId": id}))
            .await;
        assert!(r.get("result").is_some());
        id
    }

    /// One turn: returns (ack, first delta, complete) durations from the send.
    async fn turn(c: &mut RawConn, session: &str) -> (Duration, Duration, Duration) {
        let t0 = Instant::now();
        let id = c
            .start(
                "agent/send",
                json!({"sessionId": session, "prompt": "bench"}),
            )
            .await;
        let r = c.response(id).await;
        let ack = t0.elapsed();
        let run = r["result"]["runId"].as_str().unwrap().to_owned();
        c.wait_for("first delta", |m| {
            m["params"]["kind"] == "textDelta" && m["params"]["runId"] == run.as_str()
        })
        .await;
        let first = t0.elapsed();
        c.run_complete(&run).await;
        let done = t0.elapsed();
        // Drop the rest of the turn's events.
        while !c.kept().is_empty() {
            c.recv().await;
        }
        (ack, first, done)
    }

    async fn floor(mock: &MockLlm, n: usize) -> Vec<Duration> {
        let http = reqwest::Client::new();
        let url = format!("{}/chat/completions", mock.base_url());
        let body = json!({"model": "mock-1", "stream": true, "messages": [{"role": "user", "content": "bench"}]});
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let t0 = Instant::now();
            let resp = http.post(&url).body(body.to_string()).send().await.unwrap();
            let mut s = resp.bytes_stream();
            let mut bytes = 0;
            while let Some(chunk) = s.next().await {
                bytes += chunk.unwrap().len();
            }
            assert!(bytes > 0);
            out.push(t0.elapsed());
        }
        out
    }

    pub fn run() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let env = TestEnv::new();
            let mock = MockLlm::start().await;
            mock.set_default(Script::chunks(CHUNKS));
            env.use_model_at(&mock.base_url());
            let mut cmd = env.command("crushd");
            cmd.arg("--foreground")
                .arg("--idle-timeout")
                .arg("0")
                .env("CRUSHD_LOG", "warn");
            let daemon = crush_tests::DaemonProcess::spawn(cmd);
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::os::unix::net::UnixStream::connect(&env.socket).is_err() {
                assert!(Instant::now() < deadline, "crushd did not start");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let mut c = RawConn::initialized(&env.socket).await;
            let ws = c
                .request("workspace/open", json!({"path": env.dir.path()}))
                .await;
            let workspace = ws["result"]["workspaceId"].as_str().unwrap().to_owned();

            // Warm up both paths.
            let s = new_session(&mut c, &workspace).await;
            for _ in 0..20 {
                turn(&mut c, &s).await;
            }
            floor(&mock, 20).await;

            let mut floor_t = floor(&mock, ITER).await;

            let (mut acks, mut firsts, mut dones) = (Vec::new(), Vec::new(), Vec::new());
            let mut session = new_session(&mut c, &workspace).await;
            for i in 0..ITER {
                if i % 20 == 19 {
                    // Keep the history (and so the request) the same size throughout.
                    session = new_session(&mut c, &workspace).await;
                }
                let (a, f, d) = turn(&mut c, &session).await;
                acks.push(a);
                firsts.push(f);
                dones.push(d);
            }

            // Cancel mid-stream: the model sends one chunk and then nothing.
            let mut cancels = Vec::new();
            let session = new_session(&mut c, &workspace).await;
            for _ in 0..CANCEL_ITER {
                mock.push(Script::hanging(vec!["x".into()]));
                let r = c
                    .request(
                        "agent/send",
                        json!({"sessionId": session, "prompt": "bench"}),
                    )
                    .await;
                let run = r["result"]["runId"].as_str().unwrap().to_owned();
                c.wait_for("first delta", |m| {
                    m["params"]["kind"] == "textDelta" && m["params"]["runId"] == run.as_str()
                })
                .await;
                let t0 = Instant::now();
                c.start("agent/cancel", json!({"sessionId": session})).await;
                c.run_complete(&run).await;
                cancels.push(t0.elapsed());
                while !c.kept().is_empty() {
                    c.recv().await;
                }
            }

            // Bursts: BURST connections send at the same instant, BURST_TRIALS times.
            let mut burst_acks = Vec::new();
            let mut conns = Vec::new();
            for _ in 0..BURST {
                let mut cc = RawConn::initialized(&env.socket).await;
                let s = new_session(&mut cc, &workspace).await;
                conns.push((cc, s));
            }
            for _ in 0..BURST_TRIALS {
                let go = std::sync::Arc::new(tokio::sync::Barrier::new(BURST));
                let tasks: Vec<_> = conns
                    .drain(..)
                    .map(|(mut cc, s)| {
                        let go = go.clone();
                        tokio::spawn(async move {
                            go.wait().await;
                            let (ack, _, _) = turn(&mut cc, &s).await;
                            (cc, s, ack)
                        })
                    })
                    .collect();
                for t in tasks {
                    let (cc, s, ack) = t.await.unwrap();
                    burst_acks.push(ack);
                    conns.push((cc, s));
                }
            }
            drop(conns);

            // K concurrent sessions, one turn each, each on its own connection.
            let mut concurrent = Vec::new();
            for k in [1usize, 8, 32] {
                let mut conns = Vec::new();
                for _ in 0..k {
                    let mut cc = RawConn::initialized(&env.socket).await;
                    let s = new_session(&mut cc, &workspace).await;
                    conns.push((cc, s));
                }
                let t0 = Instant::now();
                let tasks: Vec<_> = conns
                    .into_iter()
                    .map(|(mut cc, s)| {
                        tokio::spawn(async move {
                            turn(&mut cc, &s).await;
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                concurrent.push((k, t0.elapsed(), peak_rss_mib(daemon.pid())));
            }
            drop(daemon);

            let floor50 = pct(&mut floor_t, 0.5);
            let floor99 = pct(&mut floor_t, 0.99);
            let done50 = pct(&mut dones, 0.5);
            let done99 = pct(&mut dones, 0.99);
            println!("runs benchmark: {ITER} turns of {CHUNKS} chunks, mock at zero delay\n");
            println!("| measure | p50 | p99 |");
            println!("|---|---|---|");
            println!(
                "| agent/send ack | {} | {} |",
                ms(pct(&mut acks, 0.5)),
                ms(pct(&mut acks, 0.99))
            );
            println!(
                "| agent/send ack, {BURST} sends at once ({} acks) | {} | {} |",
                burst_acks.len(),
                ms(pct(&mut burst_acks, 0.5)),
                ms(pct(&mut burst_acks, 0.99))
            );
            println!(
                "| send → first delta | {} | {} |",
                ms(pct(&mut firsts, 0.5)),
                ms(pct(&mut firsts, 0.99))
            );
            println!(
                "| send → $/runComplete (20 chunks) | {} | {} |",
                ms(done50),
                ms(done99)
            );
            println!(
                "| floor: plain HTTP client reads the same stream | {} | {} |",
                ms(floor50),
                ms(floor99)
            );
            println!(
                "| agent/cancel → $/runComplete ({CANCEL_ITER} runs) | {} | {} |",
                ms(pct(&mut cancels, 0.5)),
                ms(pct(&mut cancels, 0.99))
            );
            println!(
                "\nsend → complete minus floor: p50 {:+.3} ms, p99 {:+.3} ms\n",
                (done50.as_secs_f64() - floor50.as_secs_f64()) * 1e3,
                (done99.as_secs_f64() - floor99.as_secs_f64()) * 1e3
            );
            println!("| concurrent sessions K | wall time | daemon peak RSS (VmHWM) |");
            println!("|---|---|---|");
            for (k, wall, rss) in concurrent {
                println!("| {k} | {} | {rss:.1} MiB |", ms(wall));
            }
            let _: Option<Value> = None;
        });
    }
}
