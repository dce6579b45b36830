//! Many editors, one session (issue 6), against a real daemon, real sockets and the loopback
//! model: shared streams, cancel and permission answers from any client, replay from a cursor
//! after a reconnect, `resync` past the log, claims with a reconnect grace period, idle unload,
//! and a stalled client cut off at its bound without hurting anyone else.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crush_tests::mock_llm::{MockLlm, Script};
use crush_tests::{DEADLINE, DaemonProcess, RawConn, TestEnv, error_code};

struct World {
    env: TestEnv,
    mock: MockLlm,
    daemon: DaemonProcess,
    workspace: String,
    session: String,
}

/// A daemon with the mock model and `[daemon]` settings `daemon_toml`, a workspace and a
/// session created by a throwaway connection (no claim survives it).
async fn world(daemon_toml: &str) -> World {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_with(
        &mock.base_url(),
        "openai",
        &format!("[daemon]\n{daemon_toml}\n"),
    );
    let daemon = env.spawn_daemon(&[]);
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let mut c = RawConn::initialized(&env.socket).await;
    let ws = c.request("workspace/open", json!({"path": project})).await;
    let workspace = ws["result"]["workspaceId"].as_str().unwrap().to_owned();
    let s = c
        .request("session/create", json!({"workspaceId": workspace}))
        .await;
    let session = s["result"]["sessionId"].as_str().unwrap().to_owned();
    let r = c
        .request("workspace/close", json!({"workspaceId": workspace}))
        .await;
    assert_eq!(r["result"]["released"], true, "{r}");
    World {
        env,
        mock,
        daemon,
        workspace,
        session,
    }
}

async fn subscribe(c: &mut RawConn, params: Value) -> Value {
    let r = c.request("session/subscribe", params).await;
    assert!(r.get("result").is_some(), "subscribe failed: {r}");
    r["result"].clone()
}

async fn send(c: &mut RawConn, session: &str, prompt: &str) -> String {
    let r = c
        .request(
            "agent/send",
            json!({"sessionId": session, "prompt": prompt}),
        )
        .await;
    r["result"]["runId"]
        .as_str()
        .unwrap_or_else(|| panic!("agent/send failed: {r}"))
        .to_owned()
}

fn updates(msgs: &[Value], session: &str) -> Vec<Value> {
    msgs.iter()
        .filter(|m| m["method"] == "$/sessionUpdate" && m["params"]["sessionId"] == session)
        .map(|m| m["params"].clone())
        .collect()
}

fn is_delta(u: &Value) -> bool {
    u["kind"] == "textDelta" || u["kind"] == "reasoningDelta"
}

/// Events with consecutive deltas of one message merged, as the daemon may merge them for a
/// slow reader: two clients saw "the same events in the same order" when these are equal.
fn normalized(ups: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for u in ups {
        if is_delta(u)
            && let Some(last) = out.last_mut()
            && is_delta(last)
            && last["kind"] == u["kind"]
            && last["messageId"] == u["messageId"]
        {
            let text = format!(
                "{}{}",
                last["text"].as_str().unwrap(),
                u["text"].as_str().unwrap()
            );
            last["text"] = json!(text);
            last["seq"] = u["seq"].clone();
            continue;
        }
        out.push(u.clone());
    }
    out
}

/// Seqs strictly increase; a skip is only ever a merged delta.
fn assert_ordered(ups: &[Value]) {
    let mut last = 0;
    for u in ups {
        let seq = u["seq"].as_u64().unwrap();
        assert!(seq > last, "seq went from {last} to {seq}: {ups:#?}");
        assert!(
            seq == last + 1 || last == 0 || is_delta(u),
            "seq skipped from {last} to {seq} on a non-delta event {u}"
        );
        last = seq;
    }
}

fn text_of(ups: &[Value], message_id: &Value) -> String {
    ups.iter()
        .filter(|u| u["kind"] == "textDelta" && &u["messageId"] == message_id)
        .map(|u| u["text"].as_str().unwrap())
        .collect()
}

async fn wait_update(c: &mut RawConn, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    c.wait_for(what, |m| {
        m["method"] == "$/sessionUpdate" && pred(&m["params"])
    })
    .await["params"]
        .clone()
}

async fn workspace(c: &mut RawConn, id: &str) -> Value {
    let r = c.request("workspace/list", json!({})).await;
    r["result"]["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["workspaceId"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("workspace {id} not listed: {r}"))
}

/// Polls `workspace/list` (a request per round trip, no sleeps) until `cond` holds.
async fn until_workspace(c: &mut RawConn, id: &str, what: &str, cond: impl Fn(&Value) -> bool) {
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let w = workspace(c, id).await;
        if cond(&w) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}: {w}"
        );
        // One round trip through the daemon paces the loop; yield between them.
        tokio::task::yield_now().await;
        c.request("debug/sleep", json!({"ms": 10})).await;
    }
}

#[tokio::test]
async fn three_clients_share_a_session_any_can_cancel_and_the_first_answer_wins() {
    let w = world("").await;
    let project = w.env.dir.path().join("project");
    let mut clients = Vec::new();
    for name in ["nvim", "vscode", "cli"] {
        let mut c = RawConn::initialized_as(&w.env.socket, name).await;
        let r = c.request("workspace/open", json!({"path": project})).await;
        assert!(r.get("result").is_some(), "{r}");
        subscribe(&mut c, json!({"sessionId": w.session})).await;
        clients.push(c);
    }
    // The same workspace, claimed by all three.
    let listed = workspace(&mut clients[0], &w.workspace).await;
    let names: Vec<&str> = listed["claims"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{listed}");
    for n in ["nvim", "vscode", "cli"] {
        assert!(names.contains(&n), "{listed}");
    }

    // 1. One run, the same events in the same order for everyone.
    w.mock.push(Script::chunks(300));
    let run = send(&mut clients[0], &w.session, "stream").await;
    for c in &mut clients {
        let done = c.run_complete(&run).await;
        assert_eq!(done["cancelled"], false);
    }
    let streams: Vec<Vec<Value>> = clients
        .iter()
        .map(|c| updates(&c.kept(), &w.session))
        .collect();
    for s in &streams {
        assert_ordered(s);
    }
    let first = normalized(&streams[0]);
    assert!(first.iter().any(|u| u["kind"] == "runFinished"));
    for s in &streams[1..] {
        assert_eq!(normalized(s), first);
    }
    let message = first
        .iter()
        .find(|u| u["kind"] == "assistantStarted")
        .unwrap()["messageId"]
        .clone();
    assert_eq!(
        text_of(&streams[2], &message),
        Script::chunks(300).full_text()
    );

    // 2. The CLI cancels a run the editor sent; everyone gets the one cancelled complete.
    let gate = CancellationToken::new();
    w.mock.push(Script::chunks(3).held(gate.clone()));
    let run = send(&mut clients[0], &w.session, "long").await;
    wait_update(&mut clients[2], "a delta of the held run", |u| {
        u["runId"] == run && u["kind"] == "textDelta"
    })
    .await;
    let r = clients[2]
        .request("agent/cancel", json!({"sessionId": w.session}))
        .await;
    assert_eq!(r["result"]["cancelled"], json!([run]), "{r}");
    for c in &mut clients {
        let done = c.run_complete(&run).await;
        assert_eq!(done["cancelled"], true, "{done}");
    }
    gate.cancel();

    // 3. A permission prompt goes to all three; vscode answers first.
    w.mock.push(Script::default().tool_call(
        "call_1",
        "write",
        r#"{"path":"note.txt","content":"shared\n"}"#,
    ));
    w.mock.push(Script::text("written"));
    let run = send(&mut clients[0], &w.session, "write a note").await;
    let mut asks = Vec::new();
    for c in &mut clients {
        asks.push(c.daemon_request("permission/request").await);
    }
    let request_id = asks[0]["params"]["requestId"].clone();
    assert!(asks.iter().all(|a| a["params"]["requestId"] == request_id));
    clients[1]
        .reply(&asks[1], json!({"decision": "allow"}))
        .await;
    for (i, c) in clients.iter_mut().enumerate() {
        let resolved = c
            .wait_for("$/permissionResolved", |m| {
                m["method"] == "$/permissionResolved"
            })
            .await;
        assert_eq!(resolved["params"]["by"], "vscode");
        assert_eq!(resolved["params"]["decision"], "allow");
        if i != 1 {
            let withdrawn = c
                .wait_for("$/cancelRequest", |m| m["method"] == "$/cancelRequest")
                .await;
            assert_eq!(withdrawn["params"]["id"], asks[i]["id"]);
        }
    }
    let late = clients[2]
        .request(
            "permission/respond",
            json!({"requestId": request_id, "decision": "deny"}),
        )
        .await;
    assert_eq!(error_code(&late), Some(-32017), "{late}");
    for c in &mut clients {
        assert_eq!(c.run_complete(&run).await["text"], "written");
    }
    assert_eq!(
        std::fs::read_to_string(project.join("note.txt")).unwrap(),
        "shared\n"
    );
}

#[tokio::test]
async fn reconnecting_mid_stream_with_after_seq_reassembles_the_text_exactly() {
    let w = world("").await;
    let script = Script::chunks(400).chunk_delay(std::time::Duration::from_millis(2));
    let expected = script.full_text();
    w.mock.push(script);
    let (mut c, init) =
        RawConn::initialized_with(&w.env.socket, json!({"clientId": "editor-1"})).await;
    let epoch = init["epoch"].as_str().unwrap().to_owned();
    assert!(!epoch.is_empty());
    let sub = subscribe(&mut c, json!({"sessionId": w.session})).await;
    assert_eq!(sub["epoch"], epoch.as_str());
    let run = send(&mut c, &w.session, "stream").await;
    // Read part of the stream, then vanish without a goodbye.
    let mut seen = Vec::new();
    while seen.iter().filter(|u| is_delta(u)).count() < 20 {
        seen.push(wait_update(&mut c, "a delta", |_| true).await);
    }
    let cursor = seen.last().unwrap()["seq"].as_u64().unwrap();
    drop(c);
    // While it is away the stream goes on (seen by another client).
    let mut watcher = RawConn::initialized(&w.env.socket).await;
    subscribe(&mut watcher, json!({"sessionId": w.session})).await;
    wait_update(&mut watcher, "the stream to move on", |u| {
        u["seq"].as_u64().unwrap() > cursor + 20
    })
    .await;

    let (mut c, init) = RawConn::initialized_with(
        &w.env.socket,
        json!({"clientId": "editor-1", "restoreSubscriptions": false}),
    )
    .await;
    assert_eq!(init["resumed"], true, "{init}");
    assert_eq!(init["epoch"], epoch.as_str());
    let sub = subscribe(
        &mut c,
        json!({"sessionId": w.session, "afterSeq": cursor, "epoch": epoch}),
    )
    .await;
    assert_eq!(sub["resync"], false, "{sub}");
    assert!(sub["replayed"].as_u64().unwrap() > 0, "{sub}");
    c.run_complete(&run).await;
    let after = updates(&c.kept(), &w.session);
    let mut all = seen.clone();
    all.extend(after);
    assert_ordered(&all);
    let message = all
        .iter()
        .find(|u| u["kind"] == "assistantStarted")
        .unwrap()["messageId"]
        .clone();
    assert_eq!(text_of(&all, &message), expected);
    assert_eq!(all.iter().filter(|u| u["kind"] == "runFinished").count(), 1);
}

#[tokio::test]
async fn a_cursor_past_the_log_or_from_another_epoch_gets_resync_with_the_streaming_text() {
    let w = world("replay_events = 5").await;
    let gate = CancellationToken::new();
    let script = Script::chunks(30).held(gate.clone());
    let expected = script.full_text();
    w.mock.push(script);
    let mut c = RawConn::initialized(&w.env.socket).await;
    subscribe(&mut c, json!({"sessionId": w.session})).await;
    let run = send(&mut c, &w.session, "stream").await;
    // Every delta is out (the stream is held after them).
    let mut got = String::new();
    while got != expected {
        let u = wait_update(&mut c, "a delta", |u| u["kind"] == "textDelta").await;
        got.push_str(u["text"].as_str().unwrap());
    }

    let mut late = RawConn::initialized(&w.env.socket).await;
    let sub = subscribe(&mut late, json!({"sessionId": w.session, "afterSeq": 1})).await;
    assert_eq!(sub["resync"], true, "{sub}");
    assert_eq!(sub["replayed"], 0);
    assert_eq!(sub["status"]["state"], "active");
    assert_eq!(sub["status"]["activeRunId"], run.as_str());
    let streaming = &sub["streaming"];
    assert_eq!(streaming["runId"], run.as_str(), "{sub}");
    assert_eq!(streaming["parts"][0]["text"], expected.as_str(), "{sub}");
    let seq = sub["seq"].as_u64().unwrap();

    // Another epoch (a restarted daemon's cursor) is never replayed.
    let mut other = RawConn::initialized(&w.env.socket).await;
    let sub = subscribe(
        &mut other,
        json!({"sessionId": w.session, "afterSeq": seq - 1, "epoch": "not-this-one"}),
    )
    .await;
    assert_eq!(sub["resync"], true, "{sub}");
    // A cursor within the log replays.
    let mut near = RawConn::initialized(&w.env.socket).await;
    let sub = subscribe(
        &mut near,
        json!({"sessionId": w.session, "afterSeq": seq - 2}),
    )
    .await;
    assert_eq!(sub["resync"], false, "{sub}");
    assert_eq!(sub["replayed"], 2, "{sub}");

    // After the resync the live stream continues right after `seq`.
    gate.cancel();
    late.run_complete(&run).await;
    let ups = updates(&late.kept(), &w.session);
    assert_eq!(ups[0]["seq"].as_u64().unwrap(), seq + 1, "{ups:#?}");
    assert!(ups.iter().any(|u| u["kind"] == "runFinished"));
}

#[tokio::test]
async fn claims_and_subscriptions_survive_the_grace_period_and_expire_after_it() {
    let w = world("claim_grace = \"2s\"").await;
    let project = w.env.dir.path().join("project");
    let mut watcher = RawConn::initialized_as(&w.env.socket, "watcher").await;

    let (mut c, init) = RawConn::initialized_with(
        &w.env.socket,
        json!({"clientId": "nvim-42", "clientInfo": {"name": "nvim"}}),
    )
    .await;
    assert_eq!(init["resumed"], false);
    c.request("workspace/open", json!({"path": project})).await;
    subscribe(&mut c, json!({"sessionId": w.session})).await;
    drop(c);

    // Dropped: the claim waits, marked disconnected.
    until_workspace(&mut watcher, &w.workspace, "a parked claim", |ws| {
        ws["claims"][0]["connected"] == false
    })
    .await;
    let ws = workspace(&mut watcher, &w.workspace).await;
    assert_eq!(ws["claims"][0]["clientId"], "nvim-42");
    assert!(
        ws["claims"][0]["expiresInMs"].as_u64().unwrap() <= 2000,
        "{ws}"
    );
    assert_eq!(ws["loaded"], true);

    // Back within the grace period: the claim and the subscription are its again.
    let (mut c, init) = RawConn::initialized_with(
        &w.env.socket,
        json!({"clientId": "nvim-42", "clientInfo": {"name": "nvim"}}),
    )
    .await;
    assert_eq!(init["resumed"], true, "{init}");
    assert_eq!(
        init["restored"][0]["sessionId"],
        w.session.as_str(),
        "{init}"
    );
    let ws = workspace(&mut watcher, &w.workspace).await;
    assert_eq!(ws["claims"][0]["connected"], true, "{ws}");
    w.mock.push(Script::text("still here"));
    let run = send(&mut watcher, &w.session, "hello").await;
    // Not subscribed again by hand, yet it follows the session.
    let done = c.run_complete(&run).await;
    assert_eq!(done["text"], "still here");
    assert!(
        updates(&c.kept(), &w.session)
            .iter()
            .any(|u| u["runId"] == run.as_str() && u["kind"] == "textDelta")
    );
    drop(c);

    // Gone for good: the claim is released once the grace period is over.
    until_workspace(&mut watcher, &w.workspace, "the claim to expire", |ws| {
        ws["claims"].as_array().unwrap().is_empty()
    })
    .await;
    w.daemon
        .wait_for_log("did not come back within the grace period", DEADLINE);

    // A clean shutdown releases at once (a long grace period would otherwise hold it).
    let (mut c, _) = RawConn::initialized_with(&w.env.socket, json!({"clientId": "tidy"})).await;
    c.request("workspace/open", json!({"path": project})).await;
    let ws = workspace(&mut watcher, &w.workspace).await;
    assert_eq!(ws["claims"][0]["clientId"], "tidy");
    c.request("shutdown", json!(null)).await;
    c.notify("exit", json!(null)).await;
    c.recv_until_closed().await;
    until_workspace(&mut watcher, &w.workspace, "the released claim", |ws| {
        ws["claims"].as_array().unwrap().is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_workspace_unloads_only_when_idle_and_unclaimed_and_runs_finish_with_no_client() {
    let w = world("workspace_idle = \"100ms\"").await;
    let gate = CancellationToken::new();
    let script = Script::chunks(20).held(gate.clone());
    let expected = script.full_text();
    w.mock.push(script);

    // A second workspace stays claimed the whole time.
    let other = w.env.dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let mut keeper = RawConn::initialized_as(&w.env.socket, "keeper").await;
    let r = keeper
        .request("workspace/open", json!({"path": other}))
        .await;
    let kept_ws = r["result"]["workspaceId"].as_str().unwrap().to_owned();

    // A client starts a run and goes away: nobody claims or watches the workspace.
    let mut c = RawConn::initialized(&w.env.socket).await;
    subscribe(&mut c, json!({"sessionId": w.session})).await;
    let run = send(&mut c, &w.session, "work while I am away").await;
    wait_update(&mut c, "a delta", |u| u["kind"] == "textDelta").await;
    drop(c);

    let ws = workspace(&mut keeper, &w.workspace).await;
    assert_eq!(ws["loaded"], true, "{ws}");
    assert!(ws["claims"].as_array().unwrap().is_empty(), "{ws}");
    assert_eq!(ws["busySessions"][0]["activeRunId"], run.as_str(), "{ws}");
    // Well past the idle delay, the busy workspace is still loaded (the keeper's requests
    // pace this; each is a round trip through the daemon).
    for _ in 0..30 {
        keeper.request("debug/sleep", json!({"ms": 10})).await;
    }
    assert_eq!(workspace(&mut keeper, &w.workspace).await["loaded"], true);

    // The run ends with zero clients connected to it, and is persisted.
    gate.cancel();
    until_workspace(&mut keeper, &w.workspace, "the unload", |ws| {
        ws["loaded"] == false
    })
    .await;
    let got = keeper.request("run/get", json!({"runId": run})).await;
    assert_eq!(got["result"]["state"], "completed", "{got}");
    let msgs = keeper
        .request("session/messages", json!({"sessionId": w.session}))
        .await;
    let last = msgs["result"]["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["parts"][0]["text"], expected.as_str(), "{last}");
    w.daemon
        .wait_for_log("workspace idle and unclaimed; unloaded", DEADLINE);
    // The claimed one, idle for longer, stayed.
    assert_eq!(workspace(&mut keeper, &kept_ws).await["loaded"], true);

    // Unloaded is not forgotten: seqs go on where they were.
    let mut c = RawConn::initialized(&w.env.socket).await;
    let sub = subscribe(&mut c, json!({"sessionId": w.session, "afterSeq": 3})).await;
    assert_eq!(sub["resync"], true, "the log went with the unload: {sub}");
    assert!(sub["seq"].as_u64().unwrap() > 20, "{sub}");
}

#[tokio::test]
async fn a_stalled_client_is_cut_off_at_its_bound_and_nobody_else_notices() {
    let w = world("max_outbound_bytes = 524288").await;
    // 2 MiB of text at a pace a reading client keeps up with: far past the stalled client's
    // bound plus its socket buffers.
    let piece = "y".repeat(1023) + "\n";
    let chunks: Vec<String> = (0..2048).map(|_| piece.clone()).collect();
    let expected: String = chunks.concat();
    w.mock
        .push(Script::from_chunks(chunks).chunk_delay(std::time::Duration::from_millis(1)));

    // Subscribes, then never reads again.
    let mut stalled = RawConn::initialized_as(&w.env.socket, "stalled").await;
    subscribe(&mut stalled, json!({"sessionId": w.session})).await;
    let mut healthy = RawConn::initialized_as(&w.env.socket, "healthy").await;
    subscribe(&mut healthy, json!({"sessionId": w.session})).await;
    let run = send(&mut healthy, &w.session, "a lot").await;
    struct Dump<'a>(&'a DaemonProcess);
    impl Drop for Dump<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                eprintln!("DAEMON LOG:\n{}", self.0.log_text());
            }
        }
    }
    let _dump = Dump(&w.daemon);
    let done = healthy.run_complete(&run).await;
    assert_eq!(done["cancelled"], false);
    assert_eq!(done["error"], Value::Null, "{done}");
    let ups = updates(&healthy.kept(), &w.session);
    assert_ordered(&ups);
    let message = ups
        .iter()
        .find(|u| u["kind"] == "assistantStarted")
        .unwrap()["messageId"]
        .clone();
    assert_eq!(text_of(&ups, &message).len(), expected.len());
    assert!(text_of(&ups, &message) == expected);

    w.daemon.wait_for_log("client is not reading", DEADLINE);
    // The stalled client finds its connection closed after what was already in its socket.
    let got = stalled.recv_until_closed().await;
    assert!(
        !got.iter().any(|m| m["method"] == "$/runComplete"),
        "the bound cut it off before the end"
    );
    // The daemon is fine, and the stalled client can come back and catch up.
    let mut back = RawConn::initialized(&w.env.socket).await;
    let sub = subscribe(&mut back, json!({"sessionId": w.session})).await;
    assert_eq!(sub["status"]["state"], "idle");
    healthy.assert_alive().await;
}

/// Random subscribe / unsubscribe / reconnect while a run streams: every client that keeps a
/// cursor reassembles exactly the model's text, with no seq seen twice.
#[tokio::test]
async fn randomized_subscribe_unsubscribe_reconnect_during_streaming() {
    for seed in 1..=4u64 {
        randomized_round(seed).await;
    }
}

async fn randomized_round(seed: u64) {
    let w = world("").await;
    let script = Script::chunks(600).chunk_delay(std::time::Duration::from_micros(500));
    let expected = script.full_text();
    w.mock.push(script);
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };

    struct Follower {
        id: String,
        conn: Option<RawConn>,
        cursor: u64,
        epoch: String,
        seen: Vec<Value>,
    }
    let mut followers = Vec::new();
    for i in 0..4 {
        let id = format!("r{seed}-{i}");
        let (mut c, init) = RawConn::initialized_with(&w.env.socket, json!({"clientId": id})).await;
        let sub = subscribe(&mut c, json!({"sessionId": w.session})).await;
        followers.push(Follower {
            id,
            conn: Some(c),
            cursor: sub["seq"].as_u64().unwrap(),
            epoch: init["epoch"].as_str().unwrap().to_owned(),
            seen: Vec::new(),
        });
    }
    let mut sender = RawConn::initialized(&w.env.socket).await;
    let run = send(&mut sender, &w.session, "stream").await;

    let mut finished = vec![false; followers.len()];
    let mut ops: HashMap<&str, u32> = HashMap::new();
    while finished.iter().any(|f| !f) {
        for (i, f) in followers.iter_mut().enumerate() {
            if finished[i] {
                continue;
            }
            let c = f.conn.as_mut().unwrap();
            // Read a few events.
            for _ in 0..=next(8) {
                let m = c
                    .wait_for("an event", |m| {
                        m["method"] == "$/sessionUpdate" || m["method"] == "$/runComplete"
                    })
                    .await;
                if m["method"] == "$/runComplete" {
                    continue;
                }
                let u = m["params"].clone();
                let seq = u["seq"].as_u64().unwrap();
                assert!(
                    seq > f.cursor,
                    "seed {seed}: {} saw seq {seq} again (cursor {})",
                    f.id,
                    f.cursor
                );
                f.cursor = seq;
                let done = u["kind"] == "runFinished";
                f.seen.push(u);
                if done {
                    finished[i] = true;
                    break;
                }
            }
            if finished[i] {
                continue;
            }
            match next(10) {
                0 => {
                    // Drop the connection and come back with the cursor.
                    *ops.entry("reconnect").or_default() += 1;
                    f.conn = None;
                    let (mut c, _) = RawConn::initialized_with(
                        &w.env.socket,
                        json!({"clientId": f.id, "restoreSubscriptions": false}),
                    )
                    .await;
                    let sub = subscribe(
                        &mut c,
                        json!({"sessionId": w.session, "afterSeq": f.cursor, "epoch": f.epoch}),
                    )
                    .await;
                    assert_eq!(sub["resync"], false, "seed {seed}: {sub}");
                    f.conn = Some(c);
                }
                1 => {
                    // Unsubscribe, then subscribe again from the cursor on the same connection.
                    *ops.entry("resubscribe").or_default() += 1;
                    let r = c
                        .request("session/unsubscribe", json!({"sessionId": w.session}))
                        .await;
                    assert_eq!(r["result"]["unsubscribed"], true, "{r}");
                    // Everything queued before the unsubscribe answer came before it.
                    for m in c.kept() {
                        if m["method"] == "$/sessionUpdate" {
                            let seq = m["params"]["seq"].as_u64().unwrap();
                            if seq > f.cursor {
                                f.cursor = seq;
                                let done = m["params"]["kind"] == "runFinished";
                                f.seen.push(m["params"].clone());
                                if done {
                                    finished[i] = true;
                                }
                            }
                        }
                    }
                    let mut c = f.conn.take().unwrap();
                    c.clear_kept();
                    let sub = subscribe(
                        &mut c,
                        json!({"sessionId": w.session, "afterSeq": f.cursor, "epoch": f.epoch}),
                    )
                    .await;
                    assert_eq!(sub["resync"], false, "seed {seed}: {sub}");
                    f.conn = Some(c);
                }
                _ => {}
            }
        }
    }
    assert!(!ops.is_empty(), "seed {seed}: the round exercised nothing");
    for f in &followers {
        let message = f
            .seen
            .iter()
            .find(|u| u["kind"] == "assistantStarted")
            .map(|u| u["messageId"].clone())
            .unwrap_or_else(|| panic!("seed {seed}: {} never saw the message start", f.id));
        assert_eq!(
            text_of(&f.seen, &message),
            expected,
            "seed {seed}: {} after {ops:?}",
            f.id
        );
        assert_eq!(
            f.seen.iter().filter(|u| u["kind"] == "runFinished").count(),
            1
        );
    }
    let got = sender.request("run/get", json!({"runId": run})).await;
    assert_eq!(got["result"]["state"], "completed");
}

#[tokio::test]
async fn idle_exit_waits_for_a_client_within_its_grace_period() {
    let env = TestEnv::new();
    env.write_config("[daemon]\nclaim_grace = \"1s\"\n");
    let mut d = env.spawn_daemon(&["--idle-timeout", "200ms"]);
    let (mut c, _) =
        RawConn::initialized_with(&env.socket, json!({"clientId": "coming-back"})).await;
    // It holds a claim, so it has something to come back to (a client that held nothing is
    // released at once and does not delay the exit).
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let r = c.request("workspace/open", json!({"path": project})).await;
    assert!(r.get("result").is_some(), "{r}");
    drop(c);
    // The daemon stays for the client it expects back, then exits once the grace period ends.
    d.wait_for_log(
        "no connections, runs or returning clients; exiting",
        DEADLINE,
    );
    let log = d.log_text();
    let released = log.find("did not come back within the grace period");
    let exiting = log.find("no connections, runs or returning clients; exiting");
    assert!(
        released.is_some() && released < exiting,
        "the claim was released before the idle exit:\n{log}"
    );
    assert!(d.wait_exit(DEADLINE).success());
}

#[tokio::test]
async fn a_client_that_held_nothing_does_not_delay_the_idle_exit() {
    let env = TestEnv::new();
    env.write_config("[daemon]\nclaim_grace = \"1h\"\n");
    let mut d = env.spawn_daemon(&["--idle-timeout", "200ms"]);
    let (c, _) = RawConn::initialized_with(&env.socket, json!({"clientId": "passing-by"})).await;
    drop(c);
    // Nothing to come back to: the hour-long grace period does not keep the daemon up.
    assert!(d.wait_exit(DEADLINE).success());
    let log = d.log_text();
    assert!(
        log.contains("no connections, runs or returning clients; exiting"),
        "{log}"
    );
}

#[tokio::test]
async fn the_run_complete_follows_its_sender_to_the_new_connection() {
    let w = world("").await;
    let gate = CancellationToken::new();
    w.mock.push(Script::chunks(3).held(gate.clone()));
    let params = json!({"clientId": "cli-7", "restoreSubscriptions": false});
    let (mut c, _) = RawConn::initialized_with(&w.env.socket, params.clone()).await;
    // Sent without subscribing: only the sender hears of its end.
    let run = send(&mut c, &w.session, "hold on").await;
    let mut watcher = RawConn::initialized(&w.env.socket).await;
    subscribe(&mut watcher, json!({"sessionId": w.session})).await;
    drop(c);
    let (mut c, init) = RawConn::initialized_with(&w.env.socket, params).await;
    assert_eq!(init["restored"], Value::Null, "{init}");
    gate.cancel();
    let done = c.run_complete(&run).await;
    assert_eq!(done["cancelled"], false);
    let finished = wait_update(&mut watcher, "runFinished", |u| u["kind"] == "runFinished").await;
    assert_eq!(finished["messageId"], done["messageId"], "{finished}");
    assert!(finished["messageId"].is_string());
}
