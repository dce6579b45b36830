//! Hostile and broken clients against a real daemon (issue 10): one that connects and says
//! nothing, one that sends a header and never the body, one that floods requests. Each is
//! freed by its own bound (`[daemon] handshake_timeout`, `frame_timeout`, `max_in_flight`), and
//! a well-behaved client running a turn at the same time notices nothing: its run completes and
//! its connection keeps answering. The client that never reads is covered by
//! `multiclient.rs::a_stalled_client_is_cut_off_at_its_bound_and_nobody_else_notices`; clients
//! that connect and vanish by `hardening_load.rs::clients_that_connect_and_vanish_leave_nothing_behind`.
//!
//! ```text
//! cargo build --workspace --bins && cargo test -p crush-tests --test hardening_hostile
//! ```

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crush_tests::mock_llm::{MockLlm, Script};
use crush_tests::{DEADLINE, DaemonProcess, RawConn, TestEnv, error_code, error_message};

struct World {
    env: TestEnv,
    mock: MockLlm,
    daemon: DaemonProcess,
}

/// A daemon with short hostile-client bounds.
async fn world() -> World {
    world_with("[daemon]\nhandshake_timeout = \"1s\"\nframe_timeout = \"1s\"\nmax_in_flight = 16\n")
        .await
}

/// A daemon with `config` appended to its config file, and the mock as its model.
async fn world_with(config: &str) -> World {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_with(&mock.base_url(), "openai", config);
    let daemon = env.spawn_daemon(&[]);
    World { env, mock, daemon }
}

/// A well-behaved client that opens a workspace and runs one turn whose text streams for a
/// while (so it is in the middle of its run while the hostile client acts); answers its
/// connection, still alive, once the run completed.
async fn healthy(w: &World, gate: tokio_util::sync::CancellationToken) -> JoinHandle<RawConn> {
    let project = w.env.dir.path().join("healthy");
    std::fs::create_dir_all(&project).unwrap();
    w.mock.push(Script::chunks(20).held(gate));
    let mut c = RawConn::initialized_as(&w.env.socket, "healthy").await;
    let ws = c.request("workspace/open", json!({"path": project})).await;
    let ws = ws["result"]["workspaceId"].as_str().unwrap().to_owned();
    let s = c
        .request("session/create", json!({"workspaceId": ws}))
        .await;
    let session = s["result"]["sessionId"].as_str().unwrap().to_owned();
    c.request("session/subscribe", json!({"sessionId": session}))
        .await;
    let r = c
        .request(
            "agent/send",
            json!({"sessionId": session, "prompt": "keep going"}),
        )
        .await;
    let run = r["result"]["runId"].as_str().unwrap().to_owned();
    // The run is streaming (its model call has started) before the hostile client acts.
    w.mock.wait_requests(1, DEADLINE).await;
    tokio::spawn(async move {
        let done = c.run_complete(&run).await;
        assert_eq!(done["error"], Value::Null, "{done}");
        assert_eq!(done["cancelled"], false, "{done}");
        c.assert_alive().await;
        c
    })
}

/// Releases the healthy client's model stream and checks its run completed.
async fn healthy_finishes(gate: tokio_util::sync::CancellationToken, h: JoinHandle<RawConn>) {
    gate.cancel();
    let mut c = tokio::time::timeout(DEADLINE, h)
        .await
        .expect("the healthy run completed in time")
        .expect("the healthy client saw its run complete");
    c.assert_alive().await;
}

#[tokio::test]
async fn a_client_that_never_initializes_is_dropped_after_the_handshake_timeout() {
    let w = world().await;
    let gate = tokio_util::sync::CancellationToken::new();
    let h = healthy(&w, gate.clone()).await;

    // Connects and sends nothing at all.
    let mut silent = RawConn::connect(&w.env.socket).await;
    let got = silent.recv_until_closed().await;
    assert_eq!(got.len(), 1, "one explanation, then the close: {got:?}");
    assert_eq!(got[0]["id"], Value::Null);
    assert_eq!(error_code(&got[0]), Some(-32002), "{got:?}");
    assert!(
        error_message(&got[0]).contains("handshake_timeout"),
        "{got:?}"
    );
    w.daemon
        .wait_for_log("no initialize within handshake_timeout", DEADLINE);

    // Another that only sends requests other than initialize is no better off.
    let mut stubborn = RawConn::connect(&w.env.socket).await;
    let r = stubborn.request("daemon/status", json!({})).await;
    assert_eq!(error_code(&r), Some(-32002));
    let got = stubborn.recv_until_closed().await;
    assert!(
        error_message(&got[0]).contains("handshake_timeout"),
        "{got:?}"
    );

    // A client that initialized keeps its connection for as long as it likes: the healthy
    // client has been connected longer than the timeout by now.
    healthy_finishes(gate, h).await;
}

#[tokio::test]
async fn a_header_without_its_body_is_dropped_after_the_frame_timeout() {
    let w = world().await;
    let gate = tokio_util::sync::CancellationToken::new();
    let h = healthy(&w, gate.clone()).await;

    // Initialized, then promises 100 bytes and sends one.
    let mut broken = RawConn::initialized_as(&w.env.socket, "broken").await;
    broken.send_bytes(b"Content-Length: 100\r\n\r\n{").await;
    let got = broken.recv_until_closed().await;
    let last = got.last().expect("an explanation before the close");
    assert_eq!(last["id"], Value::Null);
    assert_eq!(error_code(last), Some(-32700), "{got:?}");
    assert!(error_message(last).contains("frame_timeout"), "{got:?}");
    w.daemon.wait_for_log(
        "a message was started but not finished within frame_timeout",
        DEADLINE,
    );

    // Half a header line, before initialize, is freed the same way (whichever bound is first).
    let mut half = RawConn::connect(&w.env.socket).await;
    half.send_bytes(b"Content-Len").await;
    let got = half.recv_until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");

    // A message that arrives in pieces, each well within the timeout, is read normally.
    let mut slow = RawConn::initialized_as(&w.env.socket, "slow").await;
    let body = br#"{"jsonrpc":"2.0","id":7,"method":"daemon/status"}"#;
    let header = format!("Content-Length: {}\r\n\r\n", body.len());
    slow.send_bytes(header.as_bytes()).await;
    slow.send_bytes(&body[..10]).await;
    slow.send_bytes(&body[10..]).await;
    let r = slow.response(7).await;
    assert!(r.get("result").is_some(), "{r}");

    healthy_finishes(gate, h).await;
}

#[tokio::test]
async fn a_flooding_client_is_refused_past_its_in_flight_limit_and_nobody_else_notices() {
    let w = world().await;
    let gate = tokio_util::sync::CancellationToken::new();
    let h = healthy(&w, gate.clone()).await;

    let mut flood = RawConn::initialized_as(&w.env.socket, "flood").await;
    // 16 requests that take a minute fill the limit; 500 more are refused at once.
    let mut slow = Vec::new();
    for _ in 0..16 {
        slow.push(flood.start("debug/sleep", json!({"ms": 60_000})).await);
    }
    let mut refused = Vec::new();
    for _ in 0..500 {
        refused.push(flood.start("debug/sleep", json!({"ms": 60_000})).await);
    }
    for id in &refused {
        let r = flood.response(*id).await;
        assert_eq!(error_code(&r), Some(-32001), "{r}");
        assert_eq!(r["error"]["data"]["limit"], 16, "{r}");
        assert!(error_message(&r).contains("max_in_flight"), "{r}");
    }
    w.daemon
        .wait_for_log("client has max_in_flight requests in flight", DEADLINE);

    // Another client's requests are not counted against the flooder's limit: it has its own
    // (15 requests in flight at once, all answered).
    let mut other = RawConn::initialized_as(&w.env.socket, "other").await;
    let mut mine = Vec::new();
    for _ in 0..15 {
        mine.push(other.start("debug/sleep", json!({"ms": 200})).await);
    }
    for id in mine {
        let r = other.response(id).await;
        assert!(r.get("result").is_some(), "{r}");
    }
    healthy_finishes(gate, h).await;

    // The flooder gets its capacity back as its requests finish.
    for id in &slow {
        flood.notify("$/cancelRequest", json!({"id": id})).await;
    }
    for id in &slow {
        let r = flood.response(*id).await;
        assert_eq!(error_code(&r), Some(-32800), "{r}");
    }
    flood.assert_alive().await;
}

#[tokio::test]
async fn the_bounds_are_reported_by_config_get() {
    let w = world().await;
    let mut c = RawConn::initialized(&w.env.socket).await;
    let r = c.request("config/get", json!({})).await;
    let d = &r["result"]["config"]["daemon"];
    assert_eq!(d["handshakeTimeoutMs"], 1000, "{r}");
    assert_eq!(d["frameTimeoutMs"], 1000, "{r}");
    assert_eq!(d["maxInFlight"], 16, "{r}");
    assert_eq!(d["maxConnections"], 1024, "the default: {r}");
}

/// `[daemon] max_connections`: past it, a new connection's first request (its `initialize`) is
/// answered with `-32001` naming the limit, and the connection is closed; one that sends nothing
/// gets the same error with a null id. The connections already open, a run among them, notice
/// nothing, and once one closes a new client gets in.
#[tokio::test]
async fn connections_past_the_limit_are_refused_with_a_reason_and_nobody_else_notices() {
    let w = world_with("[daemon]\nmax_connections = 4\n").await;
    let gate = tokio_util::sync::CancellationToken::new();
    let h = healthy(&w, gate.clone()).await;
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(RawConn::initialized_as(&w.env.socket, &format!("held-{i}")).await);
    }

    let mut late = RawConn::connect(&w.env.socket).await;
    let r = late
        .request("initialize", json!({"clientInfo": {"name": "late"}}))
        .await;
    assert_eq!(error_code(&r), Some(-32001), "{r}");
    assert_eq!(r["error"]["data"]["limit"], 4, "{r}");
    assert!(error_message(&r).contains("max_connections"), "{r}");
    assert!(
        late.recv_until_closed().await.is_empty(),
        "closed after the answer"
    );

    let mut mute = RawConn::connect(&w.env.socket).await;
    let got = mute.recv_until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["id"], Value::Null);
    assert_eq!(error_code(&got[0]), Some(-32001), "{got:?}");
    w.daemon.wait_for_log("too many connections", DEADLINE);

    // The command line says why instead of hanging or blaming the socket.
    let out = w
        .env
        .command("crushctl")
        .args(["--no-autostart", "status"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_connections"), "{stderr}");

    // Those inside are unaffected.
    for c in &mut held {
        c.assert_alive().await;
    }
    healthy_finishes(gate, h).await;

    // One leaves; a newcomer gets in (each attempt before the daemon noticed is refused).
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut c = RawConn::connect(&w.env.socket).await;
        let r = c
            .request("initialize", json!({"clientInfo": {"name": "newcomer"}}))
            .await;
        if r.get("result").is_some() {
            break;
        }
        assert_eq!(error_code(&r), Some(-32001), "{r}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "no connection was accepted again"
        );
    }
    w.daemon
        .wait_for_log("accepting connections again", DEADLINE);
}

/// A desktop's soft open-file limit (often 1024, here 200) would stop `accept` before
/// `max_connections`: the daemon raises its own soft limit towards the hard one at start, and
/// gives `bash` tool commands the limit it was started with.
#[tokio::test]
async fn the_open_file_limit_is_raised_for_the_daemon_and_restored_for_tools() {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_at(&mock.base_url());
    let crushd = crush_tests::bin("crushd");
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("ulimit -S -n 200 && exec \"$0\" --foreground")
        .arg(&crushd);
    env.apply_env(&mut cmd);
    let d = DaemonProcess::spawn(cmd);
    d.wait_for_log("listening", DEADLINE);
    d.wait_for_log("raised the open-file limit", DEADLINE);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    let soft: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{limits}"));
    assert!(
        soft >= 1024 + 256 || limits.contains("unlimited"),
        "{limits}"
    );

    let project = env.dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let mut c = RawConn::initialized(&env.socket).await;
    let ws = c.request("workspace/open", json!({"path": project})).await;
    let s = c
        .request(
            "session/create",
            json!({"workspaceId": ws["result"]["workspaceId"]}),
        )
        .await;
    let session = s["result"]["sessionId"].as_str().unwrap().to_owned();
    mock.push(Script::text("Checking.").tool_call("c1", "bash", r#"{"command":"ulimit -n"}"#));
    mock.push(Script::text("Done."));
    let r = c
        .request(
            "agent/send",
            json!({"sessionId": session, "prompt": "what is the fd limit?", "yolo": true}),
        )
        .await;
    let run = r["result"]["runId"].as_str().unwrap().to_owned();
    let done = c.run_complete(&run).await;
    assert_eq!(done["text"], "Done.", "{done}");
    let results = mock.requests()[1].tool_results();
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(
        results[0].1.lines().any(|l| l.trim() == "200"),
        "the tool saw the user's own limit: {results:?}"
    );
}
