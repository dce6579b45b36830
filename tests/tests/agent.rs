//! Black-box tests of the coding agent: a real `crushd` process and socket, a real project
//! directory, and the loopback mock model (both API dialects) scripting tool calls. They cover
//! the tool loop end to end, permission prompts across clients, yolo and allow rules, retries,
//! provider errors, the step limit and the redacted configuration.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use serde_json::{Value, json};

use crush_tests::mock_llm::{Dialect, MockLlm, Script};
use crush_tests::{DEADLINE, DaemonProcess, RawConn, TestEnv, error_code, error_message};

struct World {
    env: TestEnv,
    mock: MockLlm,
    _daemon: DaemonProcess,
    project: PathBuf,
    session: String,
    c: RawConn,
}

/// A daemon whose default model is the mock speaking `api`, with `extra` config appended, one
/// project with `hello.txt`, a session, and a subscribed client named `nvim`.
async fn world_with(api: &str, extra: &str) -> World {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_with(&mock.base_url(), api, extra);
    let daemon = env.spawn_daemon(&[]);
    let mut c = RawConn::initialized_as(&env.socket, "nvim").await;
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("hello.txt"), "hello world\n").unwrap();
    let ws = c.request("workspace/open", json!({"path": project})).await;
    let workspace = ws["result"]["workspaceId"].as_str().unwrap().to_owned();
    let s = c
        .request("session/create", json!({"workspaceId": workspace}))
        .await;
    let session = s["result"]["sessionId"].as_str().unwrap().to_owned();
    subscribe(&mut c, &session).await;
    World {
        env,
        mock,
        _daemon: daemon,
        project,
        session,
        c,
    }
}

async fn world() -> World {
    world_with("openai", "").await
}

/// Opens `project` as a workspace and creates a session in it.
async fn new_session(c: &mut RawConn, project: &std::path::Path) -> String {
    let ws = c.request("workspace/open", json!({"path": project})).await;
    let s = c
        .request(
            "session/create",
            json!({"workspaceId": ws["result"]["workspaceId"]}),
        )
        .await;
    s["result"]["sessionId"].as_str().unwrap().to_owned()
}

async fn subscribe(c: &mut RawConn, session: &str) -> Value {
    let r = c
        .request("session/subscribe", json!({"sessionId": session}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    r["result"].clone()
}

async fn send(c: &mut RawConn, session: &str, prompt: &str, extra: Value) -> String {
    let mut params = json!({"sessionId": session, "prompt": prompt});
    for (k, v) in extra.as_object().unwrap() {
        params[k] = v.clone();
    }
    let r = c.request("agent/send", params).await;
    r["result"]["runId"]
        .as_str()
        .unwrap_or_else(|| panic!("agent/send failed: {r}"))
        .to_owned()
}

fn edit_call() -> Script {
    Script::text("Let me fix that.").tool_call(
        "call_1",
        "edit",
        r#"{"path":"hello.txt","old_string":"world","new_string":"crush"}"#,
    )
}

fn event<'a>(kind: &'a str) -> impl Fn(&Value) -> bool + 'a {
    move |m| m["method"] == "$/sessionUpdate" && m["params"]["kind"] == kind
}

fn read(w: &World, name: &str) -> String {
    std::fs::read_to_string(w.project.join(name)).unwrap()
}

#[tokio::test]
async fn the_model_edits_a_file_after_the_user_allows_it() {
    let mut w = world().await;
    w.mock.push(edit_call());
    w.mock.push(Script::text("I replaced world with crush."));
    let run = send(&mut w.c, &w.session, "say hello to crush", json!({})).await;

    let started =
        w.c.wait_for("toolCallStarted", event("toolCallStarted"))
            .await;
    assert_eq!(started["params"]["tool"], "edit");
    assert_eq!(started["params"]["input"]["old_string"], "world");
    let ask = w.c.daemon_request("permission/request").await;
    let p = &ask["params"];
    assert_eq!(p["tool"], "edit");
    assert_eq!(p["runId"], run.as_str());
    assert_eq!(p["toolCallId"], "call_1");
    assert_eq!(p["title"], "Edit hello.txt");
    let diff = p["diff"].as_str().unwrap();
    assert!(
        diff.contains("-hello world") && diff.contains("+hello crush"),
        "{diff}"
    );
    // Nothing is written before the answer.
    assert_eq!(read(&w, "hello.txt"), "hello world\n");
    let status =
        w.c.request("agent/status", json!({"sessionId": w.session}))
            .await;
    assert_eq!(
        status["result"]["state"], "waitingForPermission",
        "{status}"
    );

    w.c.reply(&ask, json!({"decision": "allow"})).await;
    let done = w.c.run_complete(&run).await;
    assert_eq!(done["text"], "I replaced world with crush.", "{done}");
    assert_eq!(done["cancelled"], false);
    assert_eq!(read(&w, "hello.txt"), "hello crush\n");

    let resolved =
        w.c.wait_for("$/permissionResolved", |m| {
            m["method"] == "$/permissionResolved"
        })
        .await;
    assert_eq!(resolved["params"]["decision"], "allow");
    assert_eq!(resolved["params"]["by"], "nvim");
    let finished =
        w.c.wait_for("toolCallFinished", event("toolCallFinished"))
            .await;
    assert_eq!(finished["params"]["status"], "completed");
    assert!(
        finished["params"]["metadata"]["diff"]
            .as_str()
            .unwrap()
            .contains("+hello crush")
    );

    // The second model call carried the tool result, and the system prompt names the root.
    let reqs = w.mock.requests();
    assert_eq!(reqs.len(), 2);
    let results = reqs[1].tool_results();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].0, "call_1");
    assert!(reqs[0].tool_names().contains(&"edit".to_owned()));
    let root = std::fs::canonicalize(&w.project).unwrap();
    assert!(
        reqs[0]
            .system()
            .unwrap()
            .contains(&root.display().to_string())
    );

    // Persisted: user, assistant (tool call), tool (result), assistant (final text).
    let msgs =
        w.c.request("session/messages", json!({"sessionId": w.session}))
            .await;
    let roles: Vec<&str> = msgs["result"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "tool", "assistant"]);
    let call = &msgs["result"]["messages"][1]["parts"];
    assert!(
        call.as_array()
            .unwrap()
            .iter()
            .any(|p| p["type"] == "toolCall")
    );
    let result = &msgs["result"]["messages"][2]["parts"][0];
    assert_eq!(result["type"], "toolResult");
    assert_eq!(result["toolCallId"], "call_1");
}

#[tokio::test]
async fn first_answer_wins_and_the_other_client_is_told_who_answered() {
    let mut w = world().await;
    let mut code = RawConn::initialized_as(&w.env.socket, "vscode").await;
    subscribe(&mut code, &w.session).await;
    w.mock.push(edit_call());
    w.mock.push(Script::text("done"));
    let run = send(&mut w.c, &w.session, "edit it", json!({})).await;

    let ask_nvim = w.c.daemon_request("permission/request").await;
    let ask_code = code.daemon_request("permission/request").await;
    assert_eq!(
        ask_nvim["params"]["requestId"],
        ask_code["params"]["requestId"]
    );
    code.reply(&ask_code, json!({"decision": "allow"})).await;

    // nvim's copy is withdrawn, and it learns who answered.
    let withdrawn =
        w.c.wait_for("$/cancelRequest", |m| m["method"] == "$/cancelRequest")
            .await;
    assert_eq!(withdrawn["params"]["id"], ask_nvim["id"]);
    let resolved =
        w.c.wait_for("$/permissionResolved", |m| {
            m["method"] == "$/permissionResolved"
        })
        .await;
    assert_eq!(resolved["params"]["by"], "vscode");
    assert_eq!(resolved["params"]["decision"], "allow");
    // A late answer is refused with who answered first.
    let late =
        w.c.request(
            "permission/respond",
            json!({"requestId": ask_nvim["params"]["requestId"], "decision": "deny"}),
        )
        .await;
    assert_eq!(error_code(&late), Some(-32017), "{late}");
    assert!(error_message(&late).contains("vscode"), "{late}");

    let done = w.c.run_complete(&run).await;
    assert_eq!(done["text"], "done");
    assert_eq!(read(&w, "hello.txt"), "hello crush\n");
}

#[tokio::test]
async fn a_client_attaching_while_a_request_waits_gets_it_and_a_denial_reaches_the_model() {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_at(&mock.base_url());
    let _d = env.spawn_daemon(&[]);
    let project = env.dir.path().join("p");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("hello.txt"), "hello world\n").unwrap();
    // The sender is not subscribed: nobody can answer yet.
    let mut cli = RawConn::initialized_as(&env.socket, "crushctl").await;
    let ws = cli
        .request("workspace/open", json!({"path": project}))
        .await;
    let s = cli
        .request(
            "session/create",
            json!({"workspaceId": ws["result"]["workspaceId"]}),
        )
        .await;
    let session = s["result"]["sessionId"].as_str().unwrap().to_owned();
    mock.push(edit_call());
    mock.push(Script::text("ok, I will not"));
    let run = send(&mut cli, &session, "edit it", json!({})).await;
    // Wait (on events, not time) until the run is waiting for permission.
    let mut watcher = RawConn::initialized_as(&env.socket, "watcher").await;
    // Whether it subscribes before or after the request is made, it receives it.
    subscribe(&mut watcher, &session).await;
    let ask = watcher.daemon_request("permission/request").await;
    assert_eq!(ask["params"]["tool"], "edit");
    watcher.reply(&ask, json!({"decision": "deny"})).await;
    let done = cli.run_complete(&run).await;
    assert_eq!(done["text"], "ok, I will not");
    assert_eq!(
        std::fs::read_to_string(project.join("hello.txt")).unwrap(),
        "hello world\n"
    );
    let reqs = mock.requests();
    let results = reqs[1].tool_results();
    assert!(results[0].1.contains("denied"), "{results:?}");
    let fin = watcher
        .wait_for("toolCallFinished", event("toolCallFinished"))
        .await;
    assert_eq!(fin["params"]["status"], "denied");
}

#[tokio::test]
async fn cancel_while_waiting_for_permission_withdraws_the_request_and_ends_cancelled() {
    let mut w = world().await;
    w.mock.push(edit_call());
    let run = send(&mut w.c, &w.session, "edit it", json!({})).await;
    let ask = w.c.daemon_request("permission/request").await;
    let r =
        w.c.request("agent/cancel", json!({"sessionId": w.session}))
            .await;
    assert_eq!(r["result"]["cancelled"][0], run.as_str(), "{r}");
    let withdrawn =
        w.c.wait_for("$/cancelRequest", |m| m["method"] == "$/cancelRequest")
            .await;
    assert_eq!(withdrawn["params"]["id"], ask["id"]);
    let resolved =
        w.c.wait_for("$/permissionResolved", |m| {
            m["method"] == "$/permissionResolved"
        })
        .await;
    assert_eq!(resolved["params"]["decision"], "cancelled");
    let done = w.c.run_complete(&run).await;
    assert_eq!(done["cancelled"], true);
    assert_eq!(read(&w, "hello.txt"), "hello world\n");
    // An answer after the cancel is refused.
    let late =
        w.c.request(
            "permission/respond",
            json!({"requestId": ask["params"]["requestId"], "decision": "allow"}),
        )
        .await;
    assert_eq!(error_code(&late), Some(-32017), "{late}");
    // The next turn's history pairs the cancelled call with a result.
    w.mock.push(Script::text("fine"));
    let next = send(&mut w.c, &w.session, "never mind", json!({})).await;
    w.c.run_complete(&next).await;
    let reqs = w.mock.requests();
    let results = reqs.last().unwrap().tool_results();
    assert_eq!(results.len(), 1, "{results:?}");
}

/// A steered prompt taken into the turn at a step boundary, while that step's tool waits for a
/// permission answer: cancelling it by id cancels the run it joined (the docs' "naming a folded
/// prompt cancels the run it joined") instead of answering "nothing to cancel" and folding it
/// anyway.
#[tokio::test]
async fn cancelling_a_steer_by_id_while_its_turn_waits_for_permission_cancels_that_turn() {
    let mut w = world().await;
    let gate = tokio_util::sync::CancellationToken::new();
    w.mock.push(edit_call().held(gate.clone()));
    let run = send(&mut w.c, &w.session, "edit it", json!({})).await;
    w.c.wait_for("the first delta", event("textDelta")).await;
    let steer = send(
        &mut w.c,
        &w.session,
        "and be quick",
        json!({"mode": "steer"}),
    )
    .await;
    gate.cancel();
    w.c.daemon_request("permission/request").await;
    let r =
        w.c.request(
            "agent/cancel",
            json!({"sessionId": w.session, "runId": steer}),
        )
        .await;
    assert_eq!(r["result"]["cancelled"], json!([run]), "{r}");
    let done = w.c.run_complete(&run).await;
    assert_eq!(done["cancelled"], true, "{done}");
    let folded = w.c.run_complete(&steer).await;
    assert_eq!(folded["cancelled"], true, "{folded}");
    assert_eq!(read(&w, "hello.txt"), "hello world\n", "the edit never ran");
    assert_eq!(w.mock.requests().len(), 1, "no second step");
}

#[tokio::test]
async fn yolo_sends_and_sessions_run_tools_without_asking() {
    let mut w = world().await;
    w.mock.push(edit_call());
    w.mock.push(Script::text("done"));
    let run = send(&mut w.c, &w.session, "edit it", json!({"yolo": true})).await;
    let done = w.c.run_complete(&run).await;
    assert_eq!(done["text"], "done");
    assert_eq!(read(&w, "hello.txt"), "hello crush\n");
    assert!(
        !w.c.kept()
            .iter()
            .any(|m| m["method"] == "permission/request"),
        "yolo must not ask"
    );

    let r =
        w.c.request(
            "session/setYolo",
            json!({"sessionId": w.session, "yolo": true}),
        )
        .await;
    assert_eq!(r["result"]["yolo"], true);
    w.mock.push(Script::default().tool_call(
        "call_2",
        "write",
        r#"{"path":"new/file.txt","content":"fresh\n"}"#,
    ));
    w.mock.push(Script::text("written"));
    let run = send(&mut w.c, &w.session, "write it", json!({})).await;
    w.c.run_complete(&run).await;
    assert_eq!(read(&w, "new/file.txt"), "fresh\n");
    assert!(
        !w.c.kept()
            .iter()
            .any(|m| m["method"] == "permission/request")
    );
}

#[tokio::test]
async fn allow_rules_let_matching_commands_run_and_others_ask() {
    let mut w = world_with("openai", "[permissions]\nallow_bash = [\"echo\"]\n").await;
    w.mock
        .push(Script::default().tool_call("c1", "bash", r#"{"command":"echo allowed"}"#));
    w.mock.push(Script::text("ran"));
    let run = send(&mut w.c, &w.session, "run it", json!({})).await;
    let done = w.c.run_complete(&run).await;
    assert_eq!(done["text"], "ran");
    let out = &w.mock.requests()[1].tool_results()[0].1;
    assert!(out.contains("allowed"), "{out}");

    // A chained command does not match the rule.
    w.mock.push(Script::default().tool_call(
        "c2",
        "bash",
        r#"{"command":"echo a; touch chained"}"#,
    ));
    w.mock.push(Script::text("ok"));
    let run = send(&mut w.c, &w.session, "run that", json!({})).await;
    let ask = w.c.daemon_request("permission/request").await;
    assert_eq!(ask["params"]["tool"], "bash");
    w.c.reply(&ask, json!({"decision": "allowSession"})).await;
    w.c.run_complete(&run).await;
    assert!(w.project.join("chained").exists());

    // allowSession: the next bash call of the session runs without asking.
    w.mock
        .push(Script::default().tool_call("c3", "bash", r#"{"command":"touch again"}"#));
    w.mock.push(Script::text("ok"));
    let run = send(&mut w.c, &w.session, "again", json!({})).await;
    w.c.run_complete(&run).await;
    assert!(w.project.join("again").exists());
    assert_eq!(
        w.c.kept()
            .iter()
            .filter(|m| m["method"] == "permission/request")
            .count(),
        0
    );
}

#[tokio::test]
async fn tools_read_search_and_refuse_paths_outside_the_workspace() {
    let mut w = world().await;
    std::fs::write(w.project.join("lib.rs"), "fn main() {}\nfn helper() {}\n").unwrap();
    w.mock.push(
        Script::default()
            .tool_call("v", "view", r#"{"path":"lib.rs"}"#)
            .tool_call("g", "grep", r#"{"pattern":"fn \\w+"}"#)
            .tool_call("o", "view", r#"{"path":"../outside.txt"}"#),
    );
    w.mock.push(Script::text("looked"));
    let run = send(&mut w.c, &w.session, "look", json!({})).await;
    w.c.run_complete(&run).await;
    let results = w.mock.requests()[1].tool_results();
    assert_eq!(results.len(), 3, "{results:?}");
    assert!(results[0].1.contains("fn helper"), "{}", results[0].1);
    assert!(results[1].1.contains("lib.rs"), "{}", results[1].1);
    assert!(results[2].1.contains("outside"), "{}", results[2].1);
}

#[tokio::test]
async fn rate_limits_are_retried_with_a_visible_event_and_the_servers_wait() {
    let mut w = world_with("openai", "[agent]\nretry_base_delay = \"10ms\"\n").await;
    w.mock
        .push(Script::error(429, "slow down").header("retry-after-ms", "30"));
    w.mock.push(Script::error(503, "overloaded"));
    w.mock.push(Script::text("finally"));
    let run = send(&mut w.c, &w.session, "hi", json!({})).await;
    let done = w.c.run_complete(&run).await;
    assert_eq!(done["text"], "finally", "{done}");
    let first = w.c.wait_for("retrying", event("retrying")).await;
    assert_eq!(first["params"]["attempt"], 2);
    assert_eq!(first["params"]["maxAttempts"], 5);
    assert_eq!(first["params"]["delayMs"], 30);
    assert!(
        first["params"]["error"]
            .as_str()
            .unwrap()
            .contains("slow down")
    );
    let second = w.c.wait_for("retrying", event("retrying")).await;
    assert_eq!(second["params"]["attempt"], 3);
    assert_eq!(w.mock.requests().len(), 3);
}

#[tokio::test]
async fn a_stream_cut_after_output_fails_without_retry_and_before_output_is_retried() {
    let mut w = world_with("openai", "[agent]\nretry_base_delay = \"10ms\"\n").await;
    w.mock.push(Script::text("partial answer").cut());
    let run = send(&mut w.c, &w.session, "hi", json!({})).await;
    let done = w.c.run_complete(&run).await;
    assert!(done["error"].as_str().is_some(), "{done}");
    assert_eq!(done["text"], "partial answer");
    assert_eq!(w.mock.requests().len(), 1, "no retry after output");

    w.mock.push(Script::text("x").cut_before_output());
    w.mock.push(Script::text("second try"));
    let run = send(&mut w.c, &w.session, "again", json!({})).await;
    let done = w.c.run_complete(&run).await;
    assert_eq!(done["text"], "second try", "{done}");
    assert_eq!(w.mock.requests().len(), 3);
}

#[tokio::test]
async fn auth_errors_name_the_provider_and_the_key_variable_and_are_not_retried() {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_with(&mock.base_url(), "anthropic", "");
    // Point the provider at a key variable and set it, so the request is sent.
    env.write_config(&format!(
        "default_model = \"mock/mock-1\"\n[providers.mock]\ntype = \"anthropic\"\nbase_url = \"{}\"\napi_key_env = \"MOCK_TEST_KEY\"\n",
        mock.base_url()
    ));
    let mut cmd = env.command("crushd");
    cmd.arg("--foreground")
        .arg("--debug-methods")
        .env("MOCK_TEST_KEY", "sk-test-do-not-log");
    let d = DaemonProcess::spawn(cmd);
    d.wait_for_log("listening", DEADLINE);
    let mut c = RawConn::initialized(&env.socket).await;
    let project = env.dir.path().join("p");
    std::fs::create_dir_all(&project).unwrap();
    let session = new_session(&mut c, &project).await;
    mock.push(Script::error(401, "invalid x-api-key"));
    let run = send(&mut c, &session, "hi", json!({})).await;
    let done = c.run_complete(&run).await;
    let err = done["error"].as_str().unwrap();
    assert!(err.contains("mock"), "{err}");
    assert!(err.contains("MOCK_TEST_KEY"), "{err}");
    assert!(err.contains("invalid x-api-key"), "{err}");
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1, "a 401 is not retried");
    assert_eq!(reqs[0].dialect(), Dialect::Anthropic);
    assert_eq!(reqs[0].header("x-api-key"), Some("sk-test-do-not-log"));
    // The key is in no log line and not in config/get.
    let cfg = c.request("config/get", json!({})).await;
    let text = cfg.to_string();
    assert!(!text.contains("sk-test-do-not-log"), "{text}");
    assert_eq!(
        cfg["result"]["config"]["providers"]["mock"]["apiKeySet"],
        true
    );
    assert_eq!(
        cfg["result"]["config"]["providers"]["mock"]["apiKeyEnv"],
        "MOCK_TEST_KEY"
    );
    assert!(!d.log_text().contains("sk-test-do-not-log"));
}

#[tokio::test]
async fn anthropic_dialect_runs_a_tool_loop_with_thinking() {
    let mut w = world_with("anthropic", "").await;
    w.mock.push(
        Script::text("Checking.")
            .with_reasoning(vec!["the user wants".into(), " a look".into()])
            .tool_call("toolu_1", "view", r#"{"path":"hello.txt"}"#),
    );
    w.mock.push(Script::text("It says hello world."));
    let run = send(&mut w.c, &w.session, "what does hello.txt say?", json!({})).await;
    let done = w.c.run_complete(&run).await;
    assert_eq!(done["text"], "It says hello world.", "{done}");
    let reqs = w.mock.requests();
    assert_eq!(reqs[0].dialect(), Dialect::Anthropic);
    assert_eq!(reqs[0].header("anthropic-version"), Some("2023-06-01"));
    let results = reqs[1].tool_results();
    assert_eq!(results[0].0, "toolu_1");
    assert!(results[0].1.contains("hello world"), "{results:?}");
    // The signed thinking block goes back with the tool use in the same turn.
    let body = reqs[1].body();
    let assistant = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "assistant")
        .unwrap();
    assert_eq!(assistant["content"][0]["type"], "thinking", "{assistant}");
    assert_eq!(assistant["content"][0]["signature"], "sig-mock");
    // Deltas may arrive merged when the reader lags: their concatenation is what counts.
    let kept = w.c.kept();
    let deltas: Vec<&Value> = kept
        .iter()
        .filter(|m| m["params"]["kind"] == "reasoningDelta")
        .collect();
    let first_message = &deltas[0]["params"]["messageId"];
    let reasoning: String = deltas
        .iter()
        .filter(|m| &m["params"]["messageId"] == first_message)
        .filter_map(|m| m["params"]["text"].as_str())
        .collect();
    assert_eq!(reasoning, "the user wants a look");
}

#[tokio::test]
async fn the_step_limit_ends_a_looping_run_with_a_clear_reason() {
    let mut w = world_with("openai", "[agent]\nmax_steps = 3\n").await;
    w.mock
        .set_default(Script::default().tool_call("l", "ls", r#"{}"#));
    let run = send(&mut w.c, &w.session, "loop", json!({})).await;
    let done = w.c.run_complete(&run).await;
    let err = done["error"].as_str().unwrap();
    assert!(err.contains("max_steps") && err.contains('3'), "{err}");
    assert_eq!(done["stopReason"], "maxSteps", "{done}");
    assert_eq!(w.mock.requests().len(), 3);
    // run/get says so too (a client that missed the notice learns it there).
    let info = w.c.request("run/get", json!({"runId": run})).await;
    assert_eq!(info["result"]["state"], "failed", "{info}");
    assert_eq!(info["result"]["stopReason"], "maxSteps", "{info}");
}

#[tokio::test]
async fn session_and_send_choose_the_model_and_bad_choices_are_refused() {
    let mut w = world().await;
    let r =
        w.c.request(
            "session/setModel",
            json!({"sessionId": w.session, "model": "echo"}),
        )
        .await;
    assert_eq!(r["result"]["model"], "echo", "{r}");
    let run = send(&mut w.c, &w.session, "echo me", json!({})).await;
    let done = w.c.run_complete(&run).await;
    assert_eq!(done["text"], "echo me");
    assert!(w.mock.requests().is_empty());
    // A per-send model wins over the session's.
    w.mock.push(Script::text("from the mock"));
    let run = send(&mut w.c, &w.session, "hi", json!({"model": "mock/mock-1"})).await;
    assert_eq!(w.c.run_complete(&run).await["text"], "from the mock");
    let r =
        w.c.request(
            "session/setModel",
            json!({"sessionId": w.session, "model": "nope/x"}),
        )
        .await;
    assert_eq!(error_code(&r), Some(-32030), "{r}");
    let r =
        w.c.request(
            "session/setModel",
            json!({"sessionId": w.session, "model": "anthropic/claude-sonnet-4-5"}),
        )
        .await;
    // Without ANTHROPIC_API_KEY in the daemon's environment the preset is unusable, and says so.
    if std::env::var("ANTHROPIC_API_KEY").is_err() {
        assert_eq!(error_code(&r), Some(-32030), "{r}");
        assert!(error_message(&r).contains("ANTHROPIC_API_KEY"), "{r}");
    }
}

#[tokio::test]
async fn a_slow_server_times_out_naming_the_endpoint() {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_with(&mock.base_url(), "openai", "[agent]\nmax_attempts = 1\n");
    // The provider table gets a short read timeout.
    env.write_config(&format!(
        "default_model = \"mock/mock-1\"\n[providers.mock]\ntype = \"openai\"\nbase_url = \"{}\"\nread_timeout = \"300ms\"\n[agent]\nmax_attempts = 1\n",
        mock.base_url()
    ));
    let _d = env.spawn_daemon(&[]);
    let mut c = RawConn::initialized(&env.socket).await;
    let project = env.dir.path().join("p");
    std::fs::create_dir_all(&project).unwrap();
    let session = new_session(&mut c, &project).await;
    mock.push(Script::text("late").first_chunk_delay(std::time::Duration::from_secs(5)));
    let run = send(&mut c, &session, "hi", json!({})).await;
    let done = c.run_complete(&run).await;
    let err = done["error"].as_str().unwrap();
    assert!(err.contains("timed out"), "{err}");
    assert!(err.contains(&mock.base_url()), "{err}");
}

#[tokio::test]
async fn tool_calls_from_quirky_compatible_servers_still_run() {
    use crush_tests::mock_llm::ToolStyle;
    let mut w = world_with("openai", "[agent]\nretry_base_delay = \"10ms\"\n").await;
    for style in [
        ToolStyle::MissingIds,
        ToolStyle::NameLate,
        ToolStyle::AllInFirst,
    ] {
        w.mock.push(
            Script::default()
                .tool_call("x", "view", r#"{"path":"hello.txt"}"#)
                .tool_style(style),
        );
        w.mock.push(Script::text("read it"));
        let run = send(&mut w.c, &w.session, "read", json!({})).await;
        let done = w.c.run_complete(&run).await;
        assert_eq!(done["text"], "read it", "{style:?}: {done}");
        let reqs = w.mock.requests();
        let results = reqs[reqs.len() - 1].tool_results();
        assert!(
            results.iter().any(|(_, out)| out.contains("hello world")),
            "{style:?}: {results:?}"
        );
    }
}
