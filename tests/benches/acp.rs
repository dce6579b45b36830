//! The ACP bridge's cost (figures, not assertions): what `crushctl acp` adds between an ACP
//! client and the daemon, against a native protocol client on the daemon's socket.
//!
//! - **Per chunk:** one run streams 300 text deltas from the loopback mock (one every 2 ms, so
//!   the daemon does not merge them). A native client subscribed to the session and the bridge
//!   (its stdout read by this process) receive every delta; matched by text offset, the bridge's
//!   lag is "ACP line read − native event read" for the same chunk (p50, p99, max).
//! - **Per prompt:** 30 short prompts each way, alternating, one at a time: ACP
//!   `session/prompt` written to the bridge's stdin → its answer read; native `agent/send` →
//!   `$/runComplete` read. The ACP answer waits for the same `$/runComplete` (and sends a
//!   `usage_update` first, which asks the daemon for `session/get`).
//! - **Memory:** the bridge's resident set after `initialize`, and its peak (`VmHWM`) after all
//!   the runs.
//!
//! The ACP side is raw lines, no client library, so the figures are the bridge's own.
//! Run: `cargo build --release --bins && cargo bench -p crush-tests --bench acp`
//! (or `--profile dev` against debug binaries, an upper bound).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(unix)]
fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench::run());
}

#[cfg(not(unix))]
fn main() {
    eprintln!("the ACP benchmark needs Unix sockets");
}

#[cfg(unix)]
mod bench {
    use std::process::Stdio;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use serde_json::{Value, json};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
    use tokio::process::{Child, ChildStdin, ChildStdout};

    use crush_tests::mock_llm::{MockLlm, Script};
    use crush_tests::{RawConn, TestEnv, percentile};

    const CHUNKS: usize = 300;
    const PROMPTS: usize = 30;

    fn now_ms() -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
            * 1000.0
    }

    struct Acp {
        child: Child,
        stdin: ChildStdin,
        lines: Lines<BufReader<ChildStdout>>,
        next_id: u64,
    }

    impl Acp {
        async fn send(&mut self, method: &str, params: Value) -> u64 {
            self.next_id += 1;
            let line =
                json!({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params});
            self.stdin
                .write_all(format!("{line}\n").as_bytes())
                .await
                .unwrap();
            self.stdin.flush().await.unwrap();
            self.next_id
        }

        /// Lines until the answer to `id`, each with the time it was read.
        async fn until_answer(&mut self, id: u64) -> (Value, Vec<(f64, Value)>) {
            let mut seen = Vec::new();
            loop {
                let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                let at = now_ms();
                let v: Value = serde_json::from_str(&line).unwrap();
                if v["id"] == id {
                    return (v, seen);
                }
                seen.push((at, v));
            }
        }

        async fn request(&mut self, method: &str, params: Value) -> Value {
            let id = self.send(method, params).await;
            self.until_answer(id).await.0
        }
    }

    fn status_kb(pid: u32, key: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    fn ms(d: Duration) -> String {
        format!("{:.2} ms", d.as_secs_f64() * 1000.0)
    }

    pub async fn run() {
        let env = TestEnv::new();
        let mock = MockLlm::start().await;
        env.use_model_at(&mock.base_url());
        let _daemon = env.spawn_daemon(&[]);
        let project = env.dir.path().join("project");
        std::fs::create_dir_all(&project).unwrap();

        let mut cmd = env.command("crushctl");
        cmd.arg("acp")
            .current_dir(&project)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let mut acp = Acp {
            stdin: child.stdin.take().unwrap(),
            lines: BufReader::new(child.stdout.take().unwrap()).lines(),
            child,
            next_id: 0,
        };
        acp.request("initialize", json!({"protocolVersion": 1}))
            .await;
        let rss_idle = status_kb(pid, "VmRSS:");
        let s = acp
            .request("session/new", json!({"cwd": project, "mcpServers": []}))
            .await;
        let session = s["result"]["sessionId"].as_str().unwrap().to_owned();

        // Warm-up: one prompt each way.
        mock.push(Script::text("warm up"));
        acp.request(
            "session/prompt",
            json!({"sessionId": session, "prompt": [{"type": "text", "text": "warm"}]}),
        )
        .await;

        // Per chunk: both receive the same run.
        let mut native = RawConn::initialized_as(&env.socket, "native").await;
        native
            .request("session/subscribe", json!({"sessionId": session}))
            .await;
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let m = native.recv().await;
                let at = now_ms();
                if m["method"] == "$/runComplete" {
                    return (native, got);
                }
                if m["params"]["kind"] == "textDelta" {
                    got.push((at, m["params"]["text"].as_str().unwrap().to_owned()));
                }
            }
        });
        mock.push(Script::chunks(CHUNKS).chunk_delay(Duration::from_millis(2)));
        let id = acp
            .send(
                "session/prompt",
                json!({"sessionId": session, "prompt": [{"type": "text", "text": "stream"}]}),
            )
            .await;
        let (_, lines) = acp.until_answer(id).await;
        let (mut native, native_got) = reader.await.unwrap();
        let acp_got: Vec<(f64, String)> = lines
            .iter()
            .filter(|(_, v)| v["params"]["update"]["sessionUpdate"] == "agent_message_chunk")
            .map(|(at, v)| {
                (
                    *at,
                    v["params"]["update"]["content"]["text"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                )
            })
            .collect();
        // The time each text offset arrived on each side.
        let arrivals = |events: &[(f64, String)]| {
            let mut ends = Vec::new();
            let mut offset = 0;
            for (at, text) in events {
                offset += text.len();
                ends.push((offset, *at));
            }
            ends
        };
        let (n_ends, a_ends) = (arrivals(&native_got), arrivals(&acp_got));
        let mut lags = Vec::new();
        for (offset, native_at) in &n_ends {
            if let Some((_, acp_at)) = a_ends.iter().find(|(o, _)| o >= offset) {
                lags.push(Duration::from_secs_f64(
                    ((acp_at - native_at).max(0.0)) / 1000.0,
                ));
            }
        }
        println!(
            "per chunk: {} deltas, native events {}, ACP chunks {}; bridge lag p50 {}, p99 {}, max {}",
            CHUNKS,
            native_got.len(),
            acp_got.len(),
            ms(percentile(&mut lags, 0.5)),
            ms(percentile(&mut lags, 0.99)),
            ms(percentile(&mut lags, 1.0)),
        );

        // Per prompt, alternating, so both see a session of the same length.
        let mut via_acp = Vec::new();
        let mut direct = Vec::new();
        for i in 0..PROMPTS {
            mock.push(Script::text("ok"));
            let t = Instant::now();
            let r = acp
                .request(
                    "session/prompt",
                    json!({"sessionId": session, "prompt": [{"type": "text", "text": "hi"}]}),
                )
                .await;
            via_acp.push(t.elapsed());
            assert_eq!(r["result"]["stopReason"], "end_turn", "{r}");
            mock.push(Script::text("ok"));
            let run_id = format!("bench-native-{i}");
            let t = Instant::now();
            native
                .request(
                    "agent/send",
                    json!({"sessionId": session, "prompt": "hi", "runId": run_id}),
                )
                .await;
            native.run_complete(&run_id).await;
            direct.push(t.elapsed());
            // What the native client kept of the ACP runs' events is not looked at.
            native.clear_kept();
        }
        let p = |v: &mut Vec<Duration>, q| ms(percentile(v, q));
        println!(
            "per prompt ({PROMPTS} each): ACP session/prompt p50 {} p95 {}; native agent/send→$/runComplete p50 {} p95 {}",
            p(&mut via_acp, 0.5),
            p(&mut via_acp, 0.95),
            p(&mut direct, 0.5),
            p(&mut direct, 0.95),
        );
        println!(
            "memory of crushctl acp: {} KiB resident after initialize, peak {} KiB (VmHWM) after {} runs",
            rss_idle,
            status_kb(pid, "VmHWM:"),
            PROMPTS + 2
        );
        drop(acp.stdin);
        let _ = acp.child.wait().await;
    }
}
