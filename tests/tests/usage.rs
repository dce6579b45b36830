//! Black-box tests of usage, cost and session titles: a real `crushd`, its socket and SQLite
//! file, and the loopback mock model over HTTP reporting token usage in both API dialects. The
//! totals in `$/runComplete`, `run/get` and the session's info must be the sums of what the mock
//! reported, priced by the config's table, `null` when the model has no price; a session a
//! plain client created without a title takes its first prompt's, and subscribers hear it.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};

use crush_tests::mock_llm::{MockLlm, Script};
use crush_tests::{DaemonProcess, RawConn, TestEnv};

/// The price of `mock/mock-1` in the priced worlds, per million tokens.
const PRICES: &str = "[providers.mock.models.\"mock-1\"]\ninput_price = 2.0\noutput_price = 8.0\ncached_price = 0.5\n";

struct World {
    _env: TestEnv,
    mock: MockLlm,
    _daemon: DaemonProcess,
    workspace: String,
    session: String,
    c: RawConn,
}

/// A daemon whose default model is the mock speaking `api` with `extra` config, a project with
/// one file, a session created without a title, and a subscribed client.
async fn world(api: &str, extra: &str) -> World {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_with(&mock.base_url(), api, extra);
    let daemon = env.spawn_daemon(&[]);
    let mut c = RawConn::initialized(&env.socket).await;
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("notes.txt"), "hello\n").unwrap();
    let ws = c.request("workspace/open", json!({"path": project})).await;
    let workspace = ws["result"]["workspaceId"].as_str().unwrap().to_owned();
    let s = c
        .request("session/create", json!({"workspaceId": workspace}))
        .await;
    assert_eq!(s["result"]["title"], "New session", "{s}");
    let session = s["result"]["sessionId"].as_str().unwrap().to_owned();
    let sub = c
        .request("session/subscribe", json!({"sessionId": session}))
        .await;
    assert!(sub.get("result").is_some(), "{sub}");
    World {
        _env: env,
        mock,
        _daemon: daemon,
        workspace,
        session,
        c,
    }
}

/// Sends `prompt` and returns its `$/runComplete` params.
async fn run(c: &mut RawConn, session: &str, prompt: &str) -> Value {
    let r = c
        .request(
            "agent/send",
            json!({"sessionId": session, "prompt": prompt}),
        )
        .await;
    let run = r["result"]["runId"].as_str().expect("accepted").to_owned();
    c.run_complete(&run).await
}

fn tokens(u: &Value) -> [u64; 4] {
    [
        "inputTokens",
        "outputTokens",
        "cachedTokens",
        "reasoningTokens",
    ]
    .map(|k| u[k].as_u64().unwrap_or_else(|| panic!("{k} in {u}")))
}

fn assert_cost(u: &Value, want: f64) {
    let got = u["cost"]
        .as_f64()
        .unwrap_or_else(|| panic!("a cost in {u}"));
    assert!((got - want).abs() < 1e-12, "cost {got}, want {want}");
}

/// Two model steps (a tool call, then the answer), each reporting usage: every view of the run
/// and the session adds them up, and the cost is the price table's.
#[tokio::test]
async fn usage_is_the_sum_of_the_steps_in_every_view_and_priced_by_the_table() {
    for api in ["openai", "anthropic"] {
        let mut w = world(api, PRICES).await;
        w.mock.push(
            Script::default()
                .tool_call("c1", "view", r#"{"path":"notes.txt"}"#)
                .usage(100, 20)
                .usage_details(40, 5),
        );
        w.mock.push(
            Script::text("It says hello.")
                .usage(150, 10)
                .usage_details(100, 0),
        );
        let done = run(&mut w.c, &w.session, "What is in notes.txt?\nBe brief.").await;
        assert_eq!(done["text"], "It says hello.", "{api}: {done}");
        // Anthropic does not report reasoning tokens apart.
        let reasoning = if api == "openai" { 5 } else { 0 };
        let want = [250, 30, 140, reasoning];
        // (250 − 140) × 2 + 140 × 0.5 + 30 × 8, per million.
        let cost = (110.0 * 2.0 + 140.0 * 0.5 + 30.0 * 8.0) / 1e6;
        let usage = &done["usage"];
        assert_eq!(tokens(usage), want, "{api}: $/runComplete {done}");
        assert_cost(usage, cost);

        let got =
            w.c.request("run/get", json!({"runId": done["runId"]}))
                .await;
        assert_eq!(
            tokens(&got["result"]["usage"]),
            want,
            "{api}: run/get {got}"
        );
        assert_cost(&got["result"]["usage"], cost);

        let s =
            w.c.request("session/get", json!({"sessionId": w.session}))
                .await;
        let info = &s["result"];
        assert_eq!(tokens(&info["usage"]), want, "{api}: session/get {s}");
        assert_cost(&info["usage"], cost);
        assert_eq!(
            (
                info["promptTokens"].as_u64(),
                info["completionTokens"].as_u64()
            ),
            (Some(250), Some(30))
        );
        assert_cost(&json!({"cost": info["cost"]}), cost);

        // A second run adds to the session's totals, and session/list shows the same.
        w.mock.push(Script::text("Again.").usage(1000, 100));
        let again = run(&mut w.c, &w.session, "And now?").await;
        assert_eq!(tokens(&again["usage"]), [1000, 100, 0, 0]);
        let list =
            w.c.request("session/list", json!({"workspaceId": w.workspace}))
                .await;
        let listed = &list["result"]["sessions"][0]["usage"];
        assert_eq!(tokens(listed), [1250, 130, 140, reasoning], "{list}");
        assert_cost(listed, cost + (1000.0 * 2.0 + 100.0 * 8.0) / 1e6);
    }
}

/// A model with no price in the presets or the config: the tokens are counted, the cost is
/// `null` (written, not left out), in the run's views and the session's total.
#[tokio::test]
async fn an_unknown_price_gives_a_null_cost_never_zero() {
    let mut w = world("openai", "").await;
    w.mock.push(Script::text("Fine.").usage(12, 4));
    let done = run(&mut w.c, &w.session, "hi").await;
    let usage = done["usage"].as_object().expect("usage in $/runComplete");
    assert_eq!(usage.get("cost"), Some(&Value::Null), "{done}");
    assert_eq!(tokens(&done["usage"]), [12, 4, 0, 0]);
    let got =
        w.c.request("run/get", json!({"runId": done["runId"]}))
            .await;
    assert_eq!(got["result"]["usage"]["cost"], Value::Null, "{got}");
    assert_eq!(tokens(&got["result"]["usage"]), [12, 4, 0, 0]);
    let s =
        w.c.request("session/get", json!({"sessionId": w.session}))
            .await;
    let info = s["result"]["usage"]
        .as_object()
        .expect("usage in session/get");
    assert_eq!(info.get("cost"), Some(&Value::Null), "{s}");
    // `model/list` has no price for it either.
    let models = w.c.request("model/list", json!({})).await;
    let mock = models["result"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "mock/mock-1");
    assert!(mock.is_none_or(|m| m.get("price").is_none()), "{models}");
}

/// The first prompt titles a session created without one, at once, and subscribers hear it;
/// later prompts do not. `session/rename` and `session/setModel` are announced the same way,
/// a client catching up with `afterSeq` gets the events again, and a renamed title stays.
#[tokio::test]
async fn an_untitled_session_takes_its_first_prompt_and_subscribers_hear_every_change() {
    let mut w = world("openai", "").await;
    let long = "x".repeat(200);
    w.mock.push(Script::text("ok"));
    let first = format!("  Fix the parser {long}\nand the tests too");
    let done = run(&mut w.c, &w.session, &first).await;
    let updates: Vec<Value> =
        w.c.kept()
            .into_iter()
            .filter(|m| m["method"] == "$/sessionUpdate" && m["params"]["kind"] == "sessionUpdated")
            .map(|m| m["params"].clone())
            .collect();
    assert_eq!(updates.len(), 1, "{updates:?}");
    let title = updates[0]["title"].as_str().unwrap().to_owned();
    assert!(
        title.starts_with("Fix the parser xxx") && title.ends_with('…'),
        "{title}"
    );
    assert_eq!(title.chars().count(), 61, "{title}");
    assert!(
        updates[0].get("runId").is_none(),
        "a session event: {:?}",
        updates[0]
    );
    let s =
        w.c.request("session/get", json!({"sessionId": w.session}))
            .await;
    assert_eq!(s["result"]["title"], title.as_str());
    let first_seq = updates[0]["seq"].as_u64().unwrap();
    assert!(done.get("error").is_none(), "{done}");

    // A second prompt leaves the title alone.
    w.mock.push(Script::text("ok"));
    run(&mut w.c, &w.session, "Something else").await;

    // A rename and a model change, as another client sees them.
    let (mut other, _) =
        RawConn::initialized_with(&w._env.socket, json!({"clientInfo": {"name": "other"}})).await;
    let sub = other
        .request("session/subscribe", json!({"sessionId": w.session}))
        .await;
    assert!(sub.get("result").is_some(), "{sub}");
    w.c.request(
        "session/rename",
        json!({"sessionId": w.session, "title": "Parser work"}),
    )
    .await;
    let renamed = other
        .wait_for("sessionUpdated after the rename", |m| {
            m["params"]["kind"] == "sessionUpdated" && m["params"]["title"] == "Parser work"
        })
        .await;
    assert!(renamed["params"].get("model").is_none(), "{renamed}");
    w.c.request(
        "session/setModel",
        json!({"sessionId": w.session, "model": "echo"}),
    )
    .await;
    let changed = other
        .wait_for("sessionUpdated after setModel", |m| {
            m["params"]["kind"] == "sessionUpdated" && m["params"]["model"] == "echo"
        })
        .await;
    assert_eq!(changed["params"]["title"], "Parser work");

    // Replayed like any other event of the session.
    let (mut late, _) =
        RawConn::initialized_with(&w._env.socket, json!({"clientInfo": {"name": "late"}})).await;
    let sub = late
        .request(
            "session/subscribe",
            json!({"sessionId": w.session, "afterSeq": first_seq - 1}),
        )
        .await;
    assert!(sub.get("result").is_some(), "{sub}");
    let mut titles = Vec::new();
    for _ in 0..3 {
        let m = late
            .wait_for("a replayed sessionUpdated", |m| {
                m["params"]["kind"] == "sessionUpdated"
            })
            .await;
        titles.push(m["params"]["title"].clone());
    }
    assert_eq!(
        titles,
        [json!(title), json!("Parser work"), json!("Parser work")]
    );

    // A run with the new model does not retitle the renamed session.
    run(&mut w.c, &w.session, "echo this").await;
    let s =
        w.c.request("session/get", json!({"sessionId": w.session}))
            .await;
    assert_eq!(s["result"]["title"], "Parser work");
    assert_eq!(s["result"]["model"], "echo");
}

/// With `[agent] title_model`, that model names the session after its first turn, in the
/// background: the prompt's line first, then the model's title, each announced.
#[tokio::test]
async fn a_title_model_names_the_session_after_its_first_turn() {
    let mut w = world("openai", "[agent]\ntitle_model = \"mock/titler\"\n").await;
    w.mock.push(Script::text("Here is the fix."));
    w.mock
        .push(Script::text("\"Parser fixes.\"\nignored second line"));
    let done = run(&mut w.c, &w.session, "fix the parser\nplease").await;
    assert!(done.get("error").is_none(), "{done}");
    let named =
        w.c.wait_for("the model's title", |m| {
            m["params"]["kind"] == "sessionUpdated" && m["params"]["title"] == "Parser fixes"
        })
        .await;
    assert!(named["params"].get("runId").is_none(), "{named}");
    let titles: Vec<Value> =
        w.c.kept()
            .into_iter()
            .filter(|m| m["params"]["kind"] == "sessionUpdated")
            .map(|m| m["params"]["title"].clone())
            .collect();
    // (The awaited event left the backlog; the prompt's title came before it.)
    assert_eq!(titles, [json!("fix the parser")]);
    let s =
        w.c.request("session/get", json!({"sessionId": w.session}))
            .await;
    assert_eq!(s["result"]["title"], "Parser fixes");
    // The title request: the title model, no tools, the prompt and the answer.
    let requests = w.mock.requests();
    assert_eq!(requests.len(), 2);
    let asked = &requests[1];
    assert_eq!(asked.model(), Some("titler"));
    assert!(asked.tool_names().is_empty());
    let text = asked.messages().last().unwrap().1.clone();
    assert!(
        text.contains("fix the parser\nplease") && text.contains("Here is the fix."),
        "{text}"
    );
    // Later turns do not ask again.
    w.mock.push(Script::text("ok"));
    run(&mut w.c, &w.session, "and the tests").await;
    assert_eq!(w.mock.requests().len(), 3);
}

/// A session created with a title keeps it: no event, the prompt does not replace it.
#[tokio::test]
async fn a_title_given_at_creation_is_kept() {
    let mut w = world("openai", "").await;
    let s =
        w.c.request(
            "session/create",
            json!({"workspaceId": w.workspace, "title": "Chosen"}),
        )
        .await;
    let session = s["result"]["sessionId"].as_str().unwrap().to_owned();
    w.c.request("session/subscribe", json!({"sessionId": session}))
        .await;
    w.mock.push(Script::text("ok"));
    run(&mut w.c, &session, "A prompt").await;
    assert!(
        !w.c.kept()
            .iter()
            .any(|m| m["params"]["kind"] == "sessionUpdated"
                && m["params"]["sessionId"] == session.as_str()),
        "{:?}",
        w.c.kept()
    );
    let got =
        w.c.request("session/get", json!({"sessionId": session}))
            .await;
    assert_eq!(got["result"]["title"], "Chosen");
}
