//! Black-box tests of runs: a real `crushd` process, its real socket and SQLite file, and the
//! loopback OpenAI-compatible mock as the model server — the daemon streams over real HTTP.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::{Value, json};

use crush_tests::mock_llm::{MockLlm, Script};
use crush_tests::{DEADLINE, DaemonProcess, RawConn, TestEnv, error_code, error_message};

/// A daemon pointed at a fresh mock, with one workspace and session, and a subscribed client.
struct World {
    env: TestEnv,
    mock: MockLlm,
    daemon: DaemonProcess,
    session: String,
    workspace: String,
    c: RawConn,
}

async fn world() -> World {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_at(&mock.base_url());
    let daemon = env.spawn_daemon(&[]);
    let mut c = RawConn::initialized(&env.socket).await;
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let (workspace, session) = open_session(&mut c, &project).await;
    let sub = c
        .request("session/subscribe", json!({"sessionId": session}))
        .await;
    assert_eq!(sub["result"]["status"]["state"], "idle", "{sub}");
    World {
        env,
        mock,
        daemon,
        session,
        workspace,
        c,
    }
}

/// Opens `path` as a workspace and creates a session in it: (workspace id, session id).
async fn open_session(c: &mut RawConn, path: &std::path::Path) -> (String, String) {
    let ws = c.request("workspace/open", json!({"path": path})).await;
    let workspace = ws["result"]["workspaceId"].as_str().unwrap().to_owned();
    let s = c
        .request("session/create", json!({"workspaceId": workspace}))
        .await;
    let session = s["result"]["sessionId"].as_str().unwrap().to_owned();
    (workspace, session)
}

async fn send(c: &mut RawConn, session: &str, prompt: &str, extra: Value) -> Value {
    let mut params = json!({"sessionId": session, "prompt": prompt});
    for (k, v) in extra.as_object().unwrap() {
        params[k] = v.clone();
    }
    let r = c.request("agent/send", params).await;
    assert!(r.get("result").is_some(), "agent/send failed: {r}");
    r["result"].clone()
}

fn run_id(r: &Value) -> String {
    r["runId"].as_str().unwrap().to_owned()
}

async fn messages(c: &mut RawConn, session: &str) -> Vec<Value> {
    let r = c
        .request("session/messages", json!({"sessionId": session}))
        .await;
    r["result"]["messages"].as_array().unwrap().clone()
}

fn text(m: &Value) -> String {
    m["parts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["text"].as_str())
        .collect()
}

fn updates_of(msgs: &[Value], run: &str) -> Vec<Value> {
    msgs.iter()
        .filter(|m| m["method"] == "$/sessionUpdate" && m["params"]["runId"] == run)
        .map(|m| m["params"].clone())
        .collect()
}

#[tokio::test]
async fn send_streams_deltas_then_completes_after_the_turn_is_saved() {
    let mut w = world().await;
    w.mock.push(
        Script::text("Hello from the model")
            .with_reasoning(vec!["The user".into(), " greets me.".into()])
            .usage(12, 4),
    );
    let r = send(&mut w.c, &w.session, "hi there", json!({})).await;
    assert_eq!(r["state"], "running");
    let run = run_id(&r);
    let done = w.c.run_complete(&run).await;
    assert_eq!(done["cancelled"], false);
    assert_eq!(done["text"], "Hello from the model");
    assert!(done.get("error").is_none(), "{done}");
    let deltas: String = updates_of(&w.c.kept(), &run)
        .iter()
        .filter(|u| u["kind"] == "textDelta")
        .map(|u| u["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(deltas, "Hello from the model");
    let reasoning: String = updates_of(&w.c.kept(), &run)
        .iter()
        .filter(|u| u["kind"] == "reasoningDelta")
        .map(|u| u["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(reasoning, "The user greets me.");
    // What the model server received.
    let reqs = w.mock.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].model(), Some("mock-1"));
    assert_eq!(reqs[0].body["stream"], true);
    assert_eq!(
        reqs[0].messages().last().unwrap(),
        &("user".to_owned(), "hi there".to_owned())
    );
    // Saved before the complete was sent.
    let msgs = messages(&mut w.c, &w.session).await;
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[1]["finishReason"], "end_turn");
    assert_eq!(msgs[1]["messageId"], done["messageId"]);
    assert_eq!(text(&msgs[1]), "Hello from the model");
    assert_eq!(
        msgs[1]["parts"][0],
        json!({"type": "reasoning", "reasoning": "The user greets me."})
    );
    let got = w.c.request("run/get", json!({"runId": run})).await;
    assert_eq!(got["result"]["state"], "completed");
    let s =
        w.c.request("session/get", json!({"sessionId": w.session}))
            .await;
    assert_eq!(s["result"]["promptTokens"], 12);
    assert_eq!(s["result"]["completionTokens"], 4);
}

#[tokio::test]
async fn cancel_right_after_send_is_not_lost() {
    let mut w = world().await;
    w.mock
        .push(Script::hanging(vec![]).first_chunk_delay(Duration::from_secs(600)));
    // Both requests are written before either answer is read.
    let send_id =
        w.c.start(
            "agent/send",
            json!({"sessionId": w.session, "prompt": "stop me", "runId": "r-cancel-now"}),
        )
        .await;
    let cancel_id =
        w.c.start("agent/cancel", json!({"sessionId": w.session}))
            .await;
    let sent = w.c.response(send_id).await;
    assert_eq!(sent["result"]["runId"], "r-cancel-now");
    let cancelled = w.c.response(cancel_id).await;
    assert_eq!(cancelled["result"]["cancelled"], json!(["r-cancel-now"]));
    let done = w.c.run_complete("r-cancel-now").await;
    assert_eq!(done["cancelled"], true);
    assert!(done.get("error").is_none(), "{done}");
    let msgs = messages(&mut w.c, &w.session).await;
    assert_eq!(msgs.len(), 2, "{msgs:#?}");
    assert_eq!(msgs[0]["role"], "user");
    assert_eq!(msgs[1]["finishReason"], "canceled");
    let got =
        w.c.request("run/get", json!({"runId": "r-cancel-now"}))
            .await;
    assert_eq!(got["result"]["state"], "cancelled");
}

#[tokio::test]
async fn cancel_mid_stream_closes_the_model_connection_and_keeps_the_partial_text() {
    let mut w = world().await;
    w.mock
        .push(Script::hanging(vec!["partial".into(), " answer".into()]));
    let run = run_id(&send(&mut w.c, &w.session, "go", json!({})).await);
    // The writer may merge the two deltas into one event ("partial answer").
    w.c.wait_for("the second delta", |m| {
        m["params"]["kind"] == "textDelta"
            && m["params"]["text"]
                .as_str()
                .is_some_and(|t| t.ends_with(" answer"))
    })
    .await;
    let r =
        w.c.request("agent/cancel", json!({"sessionId": w.session}))
            .await;
    assert_eq!(r["result"]["cancelled"], json!([run]));
    let done = w.c.run_complete(&run).await;
    assert_eq!(done["cancelled"], true);
    assert_eq!(done["text"], "partial answer");
    // The daemon dropped the HTTP stream: the mock saw the connection close.
    w.mock.wait_disconnects(1, DEADLINE).await;
    let msgs = messages(&mut w.c, &w.session).await;
    assert_eq!(text(&msgs[1]), "partial answer");
    assert_eq!(msgs[1]["finishReason"], "canceled");
}

#[tokio::test]
async fn a_queue_with_a_cancel_in_the_middle() {
    let mut w = world().await;
    w.mock.push(Script::hanging(vec!["a".into()]));
    let a = send(&mut w.c, &w.session, "first", json!({})).await;
    let b = send(&mut w.c, &w.session, "second", json!({})).await;
    let c = send(&mut w.c, &w.session, "third", json!({})).await;
    w.mock.wait_requests(1, DEADLINE).await;
    w.mock.set_default(Script::text("fresh reply"));
    assert_eq!(b["state"], "queued");
    assert_eq!(c["state"], "queued");
    let status =
        w.c.request("agent/status", json!({"sessionId": w.session}))
            .await;
    assert_eq!(status["result"]["activeRunId"], a["runId"]);
    assert_eq!(status["result"]["queued"], json!([b["runId"], c["runId"]]));
    let r =
        w.c.request("agent/cancel", json!({"sessionId": w.session}))
            .await;
    assert_eq!(
        r["result"]["cancelled"],
        json!([a["runId"], b["runId"], c["runId"]])
    );
    let d = send(&mut w.c, &w.session, "after the cancel", json!({})).await;
    for run in [&a, &b, &c] {
        let done = w.c.run_complete(&run_id(run)).await;
        assert_eq!(done["cancelled"], true, "{done}");
    }
    let done = w.c.run_complete(&run_id(&d)).await;
    assert_eq!(done["cancelled"], false);
    assert_eq!(done["text"], "fresh reply");
    assert_eq!(
        w.mock.requests().len(),
        2,
        "only the first and the fourth prompt reached the model"
    );
    for (run, state) in [(&b, "cancelled"), (&d, "completed")] {
        let got = w.c.request("run/get", json!({"runId": run["runId"]})).await;
        assert_eq!(got["result"]["state"], state);
    }
}

#[tokio::test]
async fn a_steered_prompt_joins_the_active_turn() {
    let mut w = world().await;
    // The first step takes a while, so the steer arrives during it.
    w.mock
        .push(Script::text("thinking").first_chunk_delay(Duration::from_millis(800)));
    w.mock.push(Script::text("done, with the extra"));
    let a = run_id(&send(&mut w.c, &w.session, "do the thing", json!({})).await);
    w.mock.wait_requests(1, DEADLINE).await;
    let s = send(
        &mut w.c,
        &w.session,
        "and also this",
        json!({"mode": "steer"}),
    )
    .await;
    assert_eq!(s["state"], "queued");
    let s = run_id(&s);
    let done_a = w.c.run_complete(&a).await;
    let done_s = w.c.run_complete(&s).await;
    assert_eq!(done_s["foldedInto"], a.as_str());
    assert_eq!(done_a["text"], "done, with the extra");
    assert_eq!(done_s["messageId"], done_a["messageId"]);
    let reqs = w.mock.requests();
    assert_eq!(reqs.len(), 2, "one turn, two model steps");
    let second = reqs[1].messages();
    assert_eq!(
        second.last().unwrap(),
        &("user".to_owned(), "and also this".to_owned())
    );
    assert_eq!(
        second[second.len() - 2],
        ("assistant".to_owned(), "thinking".to_owned())
    );
    let got = w.c.request("run/get", json!({"runId": s})).await;
    assert_eq!(got["result"]["foldedInto"], a.as_str());
}

#[tokio::test]
async fn another_client_cancels_and_the_sender_sees_a_clean_cancel() {
    let mut w = world().await;
    w.mock.push(Script::hanging(vec!["x".into()]));
    let mut sender = RawConn::initialized(&w.env.socket).await;
    let run = run_id(&send(&mut sender, &w.session, "long job", json!({})).await);
    w.mock.wait_requests(1, DEADLINE).await;
    let r =
        w.c.request("agent/cancel", json!({"sessionId": w.session}))
            .await;
    assert_eq!(r["result"]["cancelled"], json!([run]));
    // The sender is not subscribed: it still gets its run's one complete.
    let done = sender.run_complete(&run).await;
    assert_eq!(done["cancelled"], true);
    assert!(done.get("error").is_none(), "{done}");
    let done = w.c.run_complete(&run).await;
    assert_eq!(done["cancelled"], true);
}

#[tokio::test]
async fn the_run_outlives_its_sender_and_another_subscriber_sees_it_finish() {
    let mut w = world().await;
    w.mock
        .push(Script::chunks(5).chunk_delay(Duration::from_millis(20)));
    let mut sender = RawConn::initialized(&w.env.socket).await;
    let id = sender
        .start(
            "agent/send",
            json!({"sessionId": w.session, "prompt": "survive me", "runId": "r-orphan"}),
        )
        .await;
    // $/cancelRequest for the agent/send request never touches the run.
    sender.notify("$/cancelRequest", json!({"id": id})).await;
    w.mock.wait_requests(1, DEADLINE).await;
    drop(sender);
    let done = w.c.run_complete("r-orphan").await;
    assert_eq!(done["cancelled"], false);
    assert_eq!(done["text"], Script::chunks(5).full_text());
    let got = w.c.request("run/get", json!({"runId": "r-orphan"})).await;
    assert_eq!(got["result"]["state"], "completed");
}

#[tokio::test]
async fn run_ids_make_send_idempotent() {
    let mut w = world().await;
    w.mock.push(Script::hanging(vec![]));
    let p = json!({"sessionId": w.session, "prompt": "once", "runId": "r-idem"});
    let first = w.c.request("agent/send", p.clone()).await;
    let again = w.c.request("agent/send", p.clone()).await;
    assert_eq!(first["result"], again["result"]);
    let other =
        w.c.request(
            "agent/send",
            json!({"sessionId": w.session, "prompt": "twice", "runId": "r-idem"}),
        )
        .await;
    assert_eq!(error_code(&other), Some(-32015), "{other}");
    w.c.request("agent/cancel", json!({"sessionId": w.session}))
        .await;
    w.c.run_complete("r-idem").await;
    let before = w.mock.requests().len();
    assert!(before <= 1);
    let after = w.c.request("agent/send", p).await;
    assert_eq!(after["result"]["state"], "cancelled");
    let status =
        w.c.request("agent/status", json!({"sessionId": w.session}))
            .await;
    assert_eq!(status["result"]["state"], "idle", "nothing new was started");
    let msgs = messages(&mut w.c, &w.session).await;
    assert_eq!(msgs.iter().filter(|m| m["role"] == "user").count(), 1);
}

#[tokio::test]
async fn send_errors_are_precise() {
    let mut w = world().await;
    for (params, code, needle) in [
        (
            json!({"sessionId": w.session, "prompt": "  "}),
            -32602,
            "prompt",
        ),
        (json!({"sessionId": "nope", "prompt": "x"}), -32011, "nope"),
        (
            json!({"sessionId": w.session, "prompt": "x", "model": "gpt-9"}),
            -32030,
            "gpt-9",
        ),
        (
            json!({"sessionId": w.session, "prompt": "x", "mode": "sideways"}),
            -32602,
            "mode",
        ),
    ] {
        let r = w.c.request("agent/send", params).await;
        assert_eq!(error_code(&r), Some(code), "{r}");
        assert!(error_message(&r).contains(needle), "{r}");
    }
    // A model server that refuses: the run fails with its message, exactly once.
    w.mock
        .push(Script::error(401, "Incorrect API key provided"));
    let run = run_id(&send(&mut w.c, &w.session, "x", json!({})).await);
    let done = w.c.run_complete(&run).await;
    assert_eq!(done["cancelled"], false);
    let err = done["error"].as_str().unwrap();
    assert!(
        err.contains("401") && err.contains("Incorrect API key"),
        "{err}"
    );
    let got = w.c.request("run/get", json!({"runId": run})).await;
    assert_eq!(got["result"]["state"], "failed");
    // Force-closing the workspace refuses new sends until it is opened again.
    let r =
        w.c.request(
            "workspace/close",
            json!({"workspaceId": w.workspace, "force": true}),
        )
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let r =
        w.c.request("agent/send", json!({"sessionId": w.session, "prompt": "x"}))
            .await;
    assert_eq!(error_code(&r), Some(-32013), "{r}");
}

#[tokio::test]
async fn no_model_configured_is_a_clear_error_and_echo_works_offline() {
    let env = TestEnv::new();
    let _d = env.spawn_daemon(&[]);
    let mut c = RawConn::initialized(&env.socket).await;
    let (_, session) = open_session(&mut c, env.dir.path()).await;
    let r = c
        .request("agent/send", json!({"sessionId": session, "prompt": "x"}))
        .await;
    assert_eq!(error_code(&r), Some(-32030), "{r}");
    assert!(error_message(&r).contains("default_model"), "{r}");
    let list = c.request("model/list", json!({})).await;
    let names: Vec<&str> = list["result"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert!(names.contains(&"echo/echo"), "{names:?}");
    assert!(names.contains(&"anthropic/claude-sonnet-4-5"), "{names:?}");
    let r = send(&mut c, &session, "say it back", json!({"model": "echo"})).await;
    let done = c.run_complete(&run_id(&r)).await;
    assert_eq!(done["text"], "say it back");
}

#[tokio::test]
async fn daemon_shutdown_refuses_while_runs_are_active_unless_forced() {
    let mut w = world().await;
    w.mock.push(Script::hanging(vec!["half".into()]));
    let run = run_id(&send(&mut w.c, &w.session, "long", json!({})).await);
    let queued = run_id(&send(&mut w.c, &w.session, "later", json!({})).await);
    w.c.wait_for("a delta", |m| m["params"]["kind"] == "textDelta")
        .await;
    let r = w.c.request("daemon/shutdown", json!({})).await;
    assert_eq!(error_code(&r), Some(-32014), "{r}");
    let r = w.c.request("daemon/shutdown", json!({"force": true})).await;
    assert_eq!(r["result"]["shuttingDown"], true);
    // Each run's complete arrives before the shutdown notice and the close.
    let rest = w.c.recv_until_closed().await;
    let mut all = w.c.kept();
    all.extend(rest);
    let pos = |pred: &dyn Fn(&Value) -> bool| all.iter().position(pred);
    let notice = pos(&|m| m["method"] == "$/daemonShutdown").expect("shutdown notice");
    for r in [&run, &queued] {
        let at = pos(&|m| m["method"] == "$/runComplete" && m["params"]["runId"] == r.as_str())
            .expect("complete");
        assert!(at < notice, "complete of {r} before the notice");
        assert_eq!(all[at]["params"]["cancelled"], true);
    }
    w.daemon.wait_exit(DEADLINE);
    // After a restart the cancelled turn is there.
    let _d = w.env.spawn_daemon(&[]);
    let mut c = RawConn::initialized(&w.env.socket).await;
    let got = c.request("run/get", json!({"runId": run})).await;
    assert_eq!(got["result"]["state"], "cancelled");
    let got = c.request("run/get", json!({"runId": queued})).await;
    assert_eq!(got["result"]["state"], "cancelled");
    let msgs = messages(&mut c, &w.session).await;
    assert_eq!(text(&msgs[1]), "half");
    assert_eq!(msgs[1]["finishReason"], "canceled");
}

#[tokio::test]
async fn sigterm_mid_run_persists_the_cancelled_turn() {
    let mut w = world().await;
    w.mock.push(Script::hanging(vec!["started".into()]));
    let run = run_id(&send(&mut w.c, &w.session, "long", json!({})).await);
    w.c.wait_for("a delta", |m| m["params"]["kind"] == "textDelta")
        .await;
    w.daemon.signal(rustix::process::Signal::TERM);
    let done = w.c.run_complete(&run).await;
    assert_eq!(done["cancelled"], true);
    let status = w.daemon.wait_exit(DEADLINE);
    assert!(status.success(), "{status:?}");
    let _d = w.env.spawn_daemon(&[]);
    let mut c = RawConn::initialized(&w.env.socket).await;
    let got = c.request("run/get", json!({"runId": run})).await;
    assert_eq!(got["result"]["state"], "cancelled");
    let msgs = messages(&mut c, &w.session).await;
    assert_eq!(text(&msgs[1]), "started");
    assert_eq!(msgs[1]["finishReason"], "canceled");
}

/// A full disk mid-run (a real file-size limit, `ulimit -f`): the run still ends with exactly one
/// `$/runComplete`, whose `error` says the turn could not be saved, and the daemon keeps serving.
#[tokio::test]
async fn a_full_disk_mid_run_still_completes_once_with_the_reason() {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_at(&mock.base_url());
    let mut big = Script::chunks(48);
    big.chunks = vec!["y".repeat(64 * 1024); 48];
    mock.set_default(big);
    let crushd = crush_tests::bin("crushd");
    let mut cmd = std::process::Command::new("/bin/sh");
    // 2048 blocks: 1 MiB with 512-byte blocks (dash), 2 MiB with 1 KiB blocks (bash); each reply
    // is 3 MiB.
    cmd.arg("-c")
        .arg("ulimit -f 2048 && exec \"$0\" --foreground")
        .arg(&crushd);
    env.apply_env(&mut cmd);
    let d = DaemonProcess::spawn(cmd);
    d.wait_for_log("listening", DEADLINE);
    let mut c = RawConn::initialized(&env.socket).await;
    let (_, session) = open_session(&mut c, env.dir.path()).await;
    c.request("session/subscribe", json!({"sessionId": session}))
        .await;
    let mut failed = None;
    for _ in 0..4 {
        let run = run_id(&send(&mut c, &session, "write a lot", json!({})).await);
        let done = match tokio::time::timeout(Duration::from_secs(8), c.run_complete(&run)).await {
            Ok(d) => d,
            Err(_) => panic!("no complete; daemon log:\n{}", d.log_text()),
        };
        if let Some(e) = done.get("error") {
            failed = Some((run, e.as_str().unwrap().to_owned()));
            break;
        }
    }
    let (run, error) = failed.expect("the file-size limit was never hit");
    assert!(error.contains("save"), "{error}");
    // The database could not record the end, but run/get does not pretend it is still going.
    let got = c.request("run/get", json!({"runId": run})).await;
    assert_eq!(got["result"]["state"], "completed", "{got}");
    assert!(got["result"]["finishedAt"].is_number(), "{got}");
    assert!(
        got["result"]["error"].as_str().unwrap().contains("save"),
        "{got}"
    );
    // Exactly one complete for that run, and the daemon still answers.
    let more: Vec<Value> = c
        .kept()
        .into_iter()
        .filter(|m| m["method"] == "$/runComplete" && m["params"]["runId"] == run.as_str())
        .collect();
    assert!(more.is_empty(), "{more:?}");
    c.assert_alive().await;
    let st = c
        .request("agent/status", json!({"sessionId": session}))
        .await;
    assert_eq!(st["result"]["state"], "idle");
}
