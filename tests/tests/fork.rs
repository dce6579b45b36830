//! Black-box tests of `session/fork`: a real daemon, its SQLite file and the loopback mock
//! model. The fork's history is a copy of the original's up to the message named, the two go on
//! independently, a summary in the copy names the copy's messages, and subscribers of the
//! original hear a `forked` event.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};

use crush_tests::mock_llm::{MockLlm, Script};
use crush_tests::{DaemonProcess, RawConn, TestEnv};

struct World {
    _env: TestEnv,
    mock: MockLlm,
    _daemon: DaemonProcess,
    workspace: String,
    session: String,
    c: RawConn,
}

async fn world() -> World {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    mock.answer_summaries();
    env.use_model_with(&mock.base_url(), "openai", "");
    let daemon = env.spawn_daemon(&[]);
    let mut c = RawConn::initialized(&env.socket).await;
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("a.txt"), "alpha\n").unwrap();
    let ws = c.request("workspace/open", json!({"path": project})).await;
    let workspace = ws["result"]["workspaceId"].as_str().unwrap().to_owned();
    let s = c
        .request(
            "session/create",
            json!({"workspaceId": workspace, "title": "Original", "yolo": true}),
        )
        .await;
    let session = s["result"]["sessionId"].as_str().unwrap().to_owned();
    c.request("session/subscribe", json!({"sessionId": session}))
        .await;
    World {
        _env: env,
        mock,
        _daemon: daemon,
        workspace,
        session,
        c,
    }
}

async fn run(c: &mut RawConn, session: &str, prompt: &str) -> Value {
    let r = c
        .request(
            "agent/send",
            json!({"sessionId": session, "prompt": prompt}),
        )
        .await;
    let id = r["result"]["runId"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let done = c.run_complete(&id).await;
    assert!(done.get("error").is_none(), "{done}");
    done
}

async fn messages(c: &mut RawConn, session: &str) -> Vec<Value> {
    let r = c
        .request(
            "session/messages",
            json!({"sessionId": session, "limit": 1000}),
        )
        .await;
    r["result"]["messages"].as_array().unwrap().clone()
}

/// Three turns; the second views a file.
async fn three_turns(w: &mut World) {
    w.mock.push(Script::text("first answer"));
    run(&mut w.c, &w.session, "turn one").await;
    w.mock
        .push(Script::default().tool_call("call_1", "view", r#"{"path":"a.txt"}"#));
    w.mock.push(Script::text("second answer"));
    run(&mut w.c, &w.session, "turn two").await;
    w.mock.push(Script::text("third answer"));
    run(&mut w.c, &w.session, "turn three").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_copies_the_history_up_to_a_message_and_goes_on_alone() {
    let mut w = world().await;
    three_turns(&mut w).await;
    let original = messages(&mut w.c, &w.session).await;
    // user, answer | user, call, result, answer | user, answer
    assert_eq!(original.len(), 8);
    let at = original[5]["messageId"].as_str().unwrap().to_owned();
    let r =
        w.c.request(
            "session/fork",
            json!({"sessionId": w.session, "messageId": at}),
        )
        .await;
    let fork = &r["result"];
    let fork_id = fork["sessionId"].as_str().unwrap().to_owned();
    assert_ne!(fork_id, w.session);
    assert_eq!(fork["title"], "Original (fork)");
    assert_eq!(fork["workspaceId"], w.workspace.as_str());
    assert_eq!(fork["messageCount"], 6);
    // The original's subscribers hear it.
    let ev =
        w.c.wait_for("the forked event", |m| {
            m["params"]["kind"] == "forked" && m["params"]["forkSessionId"] == fork_id
        })
        .await;
    assert_eq!(ev["params"]["messageId"], at.as_str());
    // The copy: same roles and parts, new ids, seqs from 1, no run ids.
    let copied = messages(&mut w.c, &fork_id).await;
    assert_eq!(copied.len(), 6);
    for (i, (c, o)) in copied.iter().zip(&original).enumerate() {
        assert_eq!(c["role"], o["role"]);
        assert_eq!(c["parts"], o["parts"]);
        assert_eq!(c["finishReason"], o["finishReason"]);
        assert_eq!(c["seq"], json!(i + 1));
        assert_ne!(c["messageId"], o["messageId"]);
        assert!(c.get("runId").is_none(), "{c}");
    }
    // A prompt in the fork: the model sees the copied turns, not the original's third.
    w.mock.push(Script::text("fork answer"));
    run(&mut w.c, &fork_id, "turn three, differently").await;
    let shown = w.mock.requests().last().unwrap().messages();
    let all: Vec<&str> = shown.iter().map(|(_, t)| t.as_str()).collect();
    assert!(
        all.contains(&"turn one") && all.contains(&"turn two"),
        "{all:?}"
    );
    assert!(!all.contains(&"turn three"), "{all:?}");
    assert!(all.contains(&"alpha\n") || all.iter().any(|t| t.contains("alpha")));
    // The original is untouched.
    assert_eq!(messages(&mut w.c, &w.session).await, original);
    // Without a message: everything.
    let r =
        w.c.request("session/fork", json!({"sessionId": w.session}))
            .await;
    assert_eq!(r["result"]["messageCount"], 8, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_keeps_the_summary_and_names_its_own_messages() {
    let mut w = world().await;
    three_turns(&mut w).await;
    w.mock.push(Script::text("fourth answer"));
    run(&mut w.c, &w.session, "turn four").await;
    let r =
        w.c.request("session/compact", json!({"sessionId": w.session}))
            .await;
    assert_eq!(r["result"]["compacted"], true, "{r}");
    let r =
        w.c.request("session/fork", json!({"sessionId": w.session}))
            .await;
    let fork_id = r["result"]["sessionId"].as_str().unwrap().to_owned();
    let copied = messages(&mut w.c, &fork_id).await;
    let ids: Vec<&str> = copied
        .iter()
        .map(|m| m["messageId"].as_str().unwrap())
        .collect();
    let summary = copied.last().unwrap();
    assert_eq!(summary["role"], "system");
    let part = &summary["parts"][0];
    for k in ["fromMessageId", "toMessageId"] {
        assert!(
            ids.contains(&part[k].as_str().unwrap()),
            "{k} names a message of the fork: {part}"
        );
    }
    // The fork's next request shows the summary in place of the older turns.
    w.mock.push(Script::text("ok"));
    run(&mut w.c, &fork_id, "turn five").await;
    let shown = w.mock.requests().last().unwrap().messages();
    let all: Vec<&str> = shown.iter().map(|(_, t)| t.as_str()).collect();
    assert!(all.iter().any(|t| t.contains("SUMMARY-1")), "{all:?}");
    assert!(!all.contains(&"turn two"), "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_diff_or_undo_at_a_message_of_another_session_or_of_no_session_is_refused() {
    let mut w = world().await;
    w.mock.push(Script::text("one"));
    run(&mut w.c, &w.session, "hello").await;
    let other =
        w.c.request("session/create", json!({"workspaceId": w.workspace}))
            .await;
    let other = other["result"]["sessionId"].as_str().unwrap().to_owned();
    let foreign = messages(&mut w.c, &w.session).await[0]["messageId"].clone();
    let r =
        w.c.request(
            "session/fork",
            json!({"sessionId": other, "messageId": foreign}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("has no message"),
        "{r}"
    );
    // The same rule for the other methods that name a message of a session.
    for method in ["session/diff", "session/revert"] {
        let r =
            w.c.request(method, json!({"sessionId": other, "messageId": foreign}))
                .await;
        assert_eq!(r["error"]["code"], -32602, "{method}: {r}");
        let text = r["error"]["message"].as_str().unwrap();
        assert!(text.contains("has no message"), "{method}: {r}");
    }
    let r =
        w.c.request("session/fork", json!({"sessionId": "nope"}))
            .await;
    assert_eq!(r["error"]["code"], -32011, "{r}");
}
