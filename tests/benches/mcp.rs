//! MCP benchmark (figures, not assertions), against a `crushd` whose model is the loopback mock
//! and whose MCP server is the reference `@modelcontextprotocol/server-everything` (npm, stdio;
//! `$CRUSH_MCP_SERVERS` as for `tests/tests/mcp.rs`). It measures:
//! - cold start to the first tool result: a fresh daemon, a run whose first step calls
//!   `mcp__everything__echo`; from `agent/send`'s answer to the client reading
//!   `toolCallFinished` (the server is started by that run: spawn under the tool guard,
//!   `initialize`, `tools/list`, then the call);
//! - warm call overhead: a run whose one step makes `CALLS` echo calls one after another; the
//!   time per call is from the client reading the first `toolCallStarted` to reading the last
//!   `toolCallFinished`, divided by `CALLS` (single events are batched by the connection's
//!   writer, so one call's own interval is not measurable from outside). The floor: the same
//!   calls made directly with the MCP SDK (`rmcp`, as the daemon uses it) from this process to a
//!   server of our own, timed the same way. `ROUNDS` rounds of each; the median round is shown;
//! - memory per running server: resident memory of the tool guard and of the server process, and
//!   the daemon's own growth from starting the server.
//!
//! Run: `cargo build --release --bins && cargo bench -p crush-tests --bench mcp`
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(target_os = "linux")]
fn main() {
    bench::run();
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("the MCP benchmark reads /proc (Linux)");
}

#[cfg(target_os = "linux")]
mod bench {
    use std::path::PathBuf;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    use serde_json::{Value, json};

    use crush_tests::mock_llm::{MockLlm, Script};
    use crush_tests::procfs::rss_kib;
    use crush_tests::{RawConn, TestEnv, percentile as pct};

    const COLD_RUNS: usize = 5;
    const CALLS: usize = 50;
    const ROUNDS: usize = 7;

    fn ms(d: Duration) -> String {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }

    fn everything() -> PathBuf {
        let dir = std::env::var_os("CRUSH_MCP_SERVERS")
            .map(PathBuf::from)
            .expect("set CRUSH_MCP_SERVERS (see tests/tests/mcp.rs; .ci/run installs the servers)");
        dir.join("node_modules/.bin/mcp-server-everything")
    }

    fn config(mock: &MockLlm) -> String {
        format!(
            "default_model = \"mock/mock-1\"\n\n[providers.mock]\ntype = \"openai\"\nbase_url = \"{}\"\n\n\
             [mcp.servers.everything]\ncommand = {:?}\nargs = [\"stdio\"]\n",
            mock.base_url(),
            everything().display().to_string()
        )
    }

    struct Daemon {
        mock: MockLlm,
        daemon: crush_tests::DaemonProcess,
        c: RawConn,
        session: String,
        // Keeps the temporary directory (socket, database) until the daemon is dropped.
        _env: TestEnv,
    }

    async fn daemon() -> Daemon {
        let env = TestEnv::new();
        let mock = MockLlm::start().await;
        env.write_config(&config(&mock));
        let daemon = env.spawn_daemon(&[]);
        let project = env.dir.path().join("project");
        std::fs::create_dir_all(&project).unwrap();
        let mut c = RawConn::initialized(&env.socket).await;
        let ws = c.request("workspace/open", json!({"path": project})).await;
        let s = c
            .request(
                "session/create",
                json!({"workspaceId": ws["result"]["workspaceId"], "yolo": true}),
            )
            .await;
        let session = s["result"]["sessionId"].as_str().unwrap().to_owned();
        c.request("session/subscribe", json!({"sessionId": session}))
            .await;
        Daemon {
            _env: env,
            mock,
            daemon,
            c,
            session,
        }
    }

    /// Sends a prompt; returns when it was answered and every message until `$/runComplete`,
    /// each with when it was read.
    async fn prompt(d: &mut Daemon) -> (Instant, Vec<(Value, Instant)>) {
        let r =
            d.c.request(
                "agent/send",
                json!({"sessionId": d.session, "prompt": "go"}),
            )
            .await;
        let sent = Instant::now();
        let run = r["result"]["runId"].as_str().unwrap().to_owned();
        let mut got = Vec::new();
        loop {
            let m = d.c.recv().await;
            let at = Instant::now();
            let end = m["method"] == "$/runComplete" && m["params"]["runId"] == run.as_str();
            got.push((m, at));
            if end {
                break;
            }
        }
        (sent, got)
    }

    fn kind(m: &Value) -> &str {
        if m["method"] == "$/sessionUpdate" {
            m["params"]["kind"].as_str().unwrap_or_default()
        } else {
            ""
        }
    }

    fn echo_calls(n: usize) -> Script {
        let mut s = Script::text("calling");
        for i in 0..n {
            s = s.tool_call(
                &format!("c{i}"),
                "mcp__everything__echo",
                &format!(r#"{{"message":"m{i}"}}"#),
            );
        }
        s
    }

    /// The children of `pid` (`/proc/*/stat`'s ppid).
    fn children(pid: u32) -> Vec<u32> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u32>().ok());
            if ppid == Some(pid) {
                out.push(p);
            }
        }
        out
    }

    /// The floor of a cold start: spawn the server, `initialize`, `tools/list` and one call,
    /// directly with the SDK from this process.
    async fn direct_cold() -> Duration {
        use rmcp::ServiceExt;
        use rmcp::model::CallToolRequestParams;
        let t = Instant::now();
        let mut child = tokio::process::Command::new(everything())
            .arg("stdio")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (stdout, stdin) = (child.stdout.take().unwrap(), child.stdin.take().unwrap());
        let client = ().serve((stdout, stdin)).await.unwrap();
        client.list_all_tools().await.unwrap();
        let mut args = serde_json::Map::new();
        args.insert("message".into(), json!("cold"));
        client
            .call_tool(CallToolRequestParams::new("echo").with_arguments(args))
            .await
            .unwrap();
        let took = t.elapsed();
        drop(client);
        let _ = child.kill().await;
        took
    }

    /// `ROUNDS` rounds of `CALLS` echo calls made directly with the SDK to a server of our own;
    /// each round's time per call.
    async fn direct_calls() -> Vec<Duration> {
        use rmcp::ServiceExt;
        use rmcp::model::CallToolRequestParams;
        let mut child = tokio::process::Command::new(everything())
            .arg("stdio")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (stdout, stdin) = (child.stdout.take().unwrap(), child.stdin.take().unwrap());
        let client = ().serve((stdout, stdin)).await.unwrap();
        let call = |i: usize| {
            let mut args = serde_json::Map::new();
            args.insert("message".into(), json!(format!("m{i}")));
            client.call_tool(CallToolRequestParams::new("echo").with_arguments(args))
        };
        // Warm-up.
        for i in 0..5 {
            call(i).await.unwrap();
        }
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            let t = Instant::now();
            for i in 0..CALLS {
                call(i).await.unwrap();
            }
            rounds.push(t.elapsed() / CALLS as u32);
        }
        drop(client);
        let _ = child.kill().await;
        rounds
    }

    pub fn run() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // Cold start: a fresh daemon each time.
            let mut cold = Vec::new();
            for _ in 0..COLD_RUNS {
                let mut d = daemon().await;
                d.mock.push(echo_calls(1));
                d.mock.push(Script::text("done"));
                let (sent, got) = prompt(&mut d).await;
                let (_, at) = got
                    .iter()
                    .find(|(m, _)| kind(m) == "toolCallFinished")
                    .expect("the call finished");
                cold.push(at.saturating_duration_since(sent));
            }
            let mut floor = Vec::new();
            for _ in 0..COLD_RUNS {
                floor.push(direct_cold().await);
            }
            let (c50, f50) = (pct(&mut cold, 0.5), pct(&mut floor, 0.5));
            println!(
                "cold start to first tool result ({COLD_RUNS} fresh daemons): p50 {} (min {} max {}); \
                 direct SDK spawn+initialize+tools/list+call p50 {} (min {} max {}); daemon's share p50 {}",
                ms(c50),
                ms(cold[0]),
                ms(cold[COLD_RUNS - 1]),
                ms(f50),
                ms(floor[0]),
                ms(floor[COLD_RUNS - 1]),
                ms(c50.saturating_sub(f50))
            );

            // Warm calls, and memory, in one daemon.
            let mut d = daemon().await;
            let before = rss_kib(d.daemon.pid());
            d.mock.push(echo_calls(5));
            d.mock.push(Script::text("warm"));
            prompt(&mut d).await;
            let mut warm = Vec::new();
            for _ in 0..ROUNDS {
                d.mock.push(echo_calls(CALLS));
                d.mock.push(Script::text("done"));
                let (_, got) = prompt(&mut d).await;
                let first = got
                    .iter()
                    .find(|(m, _)| kind(m) == "toolCallStarted")
                    .map(|(_, at)| *at)
                    .unwrap();
                let finished: Vec<&(Value, Instant)> = got
                    .iter()
                    .filter(|(m, _)| kind(m) == "toolCallFinished")
                    .collect();
                assert_eq!(finished.len(), CALLS);
                assert!(finished.iter().all(|(m, _)| m["params"]["status"] == "completed"));
                let last = finished.last().unwrap().1;
                warm.push(last.saturating_duration_since(first) / CALLS as u32);
            }
            let mut direct = direct_calls().await;
            let (w50, d50) = (pct(&mut warm, 0.5), pct(&mut direct, 0.5));
            println!(
                "warm echo call ({ROUNDS} rounds of {CALLS} calls, median round): through the daemon {} per call; \
                 direct SDK call {} per call; daemon overhead {} per call (rounds: daemon {}..{}, direct {}..{})",
                ms(w50),
                ms(d50),
                ms(w50.saturating_sub(d50)),
                ms(warm[0]),
                ms(warm[ROUNDS - 1]),
                ms(direct[0]),
                ms(direct[ROUNDS - 1])
            );

            let list = d.c.request("mcp/list", json!({})).await;
            let guard = list["result"]["servers"][0]["pid"].as_u64().unwrap() as u32;
            let servers = children(guard);
            let server_kib: u64 = servers.iter().map(|p| rss_kib(*p)).sum();
            let after = rss_kib(d.daemon.pid());
            println!(
                "memory per running server: server-everything (node) {} KiB RSS, tool guard {} KiB RSS; \
                 daemon {} KiB before the server started, {} KiB after {} calls (+{} KiB)",
                server_kib,
                rss_kib(guard),
                before,
                after,
                5 + ROUNDS * CALLS,
                after.saturating_sub(before)
            );
        });
    }
}
