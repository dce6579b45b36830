//! Black-box tests of the context budget: a real daemon against the loopback mock enforcing a
//! small context window as a real API does (it counts each request and answers the provider's
//! overflow error when it is over). Long sessions keep completing, every request fits, the
//! stored conversation stays whole, the first instruction always reaches the model, a refused
//! step is compacted and retried once, and a prompt that cannot fit fails once, saying so.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use serde_json::{Value, json};

use crush_tests::mock_llm::{MockLlm, Script};
use crush_tests::{DaemonProcess, RawConn, TestEnv};

const WINDOW: u64 = 4_000;
const MAX_OUTPUT: u64 = 300;
const MARKER: &str = "FIRST-INSTRUCTION-7f3c9a: always answer in plain English";

struct World {
    _env: TestEnv,
    mock: MockLlm,
    _daemon: DaemonProcess,
    project: PathBuf,
    session: String,
    c: RawConn,
}

async fn world(api: &str) -> World {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_with(
        &mock.base_url(),
        api,
        &format!(
            "[providers.mock.models.\"mock-1\"]\ncontext_window = {WINDOW}\nmax_output_tokens = {MAX_OUTPUT}\n"
        ),
    );
    let daemon = env.spawn_daemon(&[]);
    let mut c = RawConn::initialized(&env.socket).await;
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    // A file whose content is a large tool output (~450 tokens with `view`'s line numbers).
    let big: String = (0..40)
        .map(|i| format!("let value_{i} = compute({i}, \"text\");\n"))
        .collect();
    std::fs::write(project.join("big.rs"), big).unwrap();
    let ws = c.request("workspace/open", json!({"path": project})).await;
    let s = c
        .request(
            "session/create",
            json!({"workspaceId": ws["result"]["workspaceId"]}),
        )
        .await;
    let session = s["result"]["sessionId"].as_str().unwrap().to_owned();
    let r = c
        .request("session/subscribe", json!({"sessionId": session}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    World {
        _env: env,
        mock,
        _daemon: daemon,
        project,
        session,
        c,
    }
}

/// Sends a prompt (yolo, so tools run without asking) and waits for its `$/runComplete`.
async fn run(w: &mut World, prompt: &str) -> Value {
    let r =
        w.c.request(
            "agent/send",
            json!({"sessionId": w.session, "prompt": prompt, "yolo": true}),
        )
        .await;
    let id = r["result"]["runId"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"));
    let id = id.to_owned();
    w.c.run_complete(&id).await
}

/// One turn's scripts: a `view` of the big file, then an answer.
fn push_turn(mock: &MockLlm, i: usize) {
    mock.push(Script::default().tool_call(&format!("call_{i}"), "view", r#"{"path":"big.rs"}"#));
    mock.push(Script::text(&format!("Viewed it, turn {i}.")));
}

/// A large prompt (~220 tokens).
fn prompt(i: usize) -> String {
    format!(
        "prompt-{i}: {}",
        "please look at big.rs again and tell me what changed in the values; ".repeat(12)
    )
}

fn compacted(w: &World) -> Vec<Value> {
    w.c.kept()
        .into_iter()
        .filter(|m| m["method"] == "$/sessionUpdate" && m["params"]["kind"] == "compacted")
        .map(|m| m["params"].clone())
        .collect()
}

/// Every stored message of the session, oldest first.
async fn all_messages(w: &mut World) -> Vec<Value> {
    let mut out = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let mut params = json!({"sessionId": w.session, "limit": 1000});
        if let Some(b) = before {
            params["before"] = json!(b);
        }
        let r = w.c.request("session/messages", params).await;
        let page = r["result"]["messages"].as_array().unwrap().clone();
        let mut page = page;
        page.append(&mut out);
        out = page;
        match r["result"]["nextBefore"].as_i64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_session_against_a_small_window_keeps_completing_and_keeps_the_first_instruction() {
    let mut w = world("openai").await;
    w.mock.set_context_window(Some(WINDOW));
    const TURNS: usize = 60;
    for i in 0..TURNS {
        push_turn(&w.mock, i);
        let text = if i == 0 {
            format!("{MARKER}\n{}", prompt(0))
        } else {
            prompt(i)
        };
        let done = run(&mut w, &text).await;
        assert!(
            done.get("error").is_none(),
            "turn {i} failed: {done}\nlast request: {:?}",
            w.mock.requests().last().map(|r| r.tokens)
        );
        assert_eq!(done["text"], format!("Viewed it, turn {i}."));
    }
    let requests = w.mock.requests();
    assert_eq!(
        requests.len(),
        2 * TURNS,
        "one request per step, none refused"
    );
    assert_eq!(w.mock.overflows(), 0);
    for r in &requests {
        let t = r.tokens.unwrap();
        assert!(
            t + MAX_OUTPUT <= WINDOW,
            "request #{} has {t} tokens",
            r.index
        );
    }
    let events = compacted(&w);
    assert!(!events.is_empty(), "no compacted event");
    for e in &events {
        assert!(
            e["tokensAfter"].as_u64() < e["tokensBefore"].as_u64(),
            "{e}"
        );
    }
    // The model still sees the user's first instruction at the end.
    let last = requests.last().unwrap();
    assert!(
        last.messages()
            .iter()
            .any(|(_, text)| text.contains(MARKER)),
        "the first instruction is gone from the last request"
    );
    // Nothing stored was touched: every prompt and every tool output is still there.
    let messages = all_messages(&mut w).await;
    assert_eq!(
        messages.len(),
        4 * TURNS,
        "user, call, result, answer per turn"
    );
    let users: Vec<&Value> = messages.iter().filter(|m| m["role"] == "user").collect();
    for (i, u) in users.iter().enumerate() {
        assert!(
            u.to_string().contains(&format!("prompt-{i}:")),
            "user message {i}: {u}"
        );
    }
    let results = messages.iter().filter(|m| m["role"] == "tool").count();
    assert_eq!(results, TURNS);
    assert!(
        !messages
            .iter()
            .any(|m| m.to_string().contains("left out to fit"))
    );
    let _ = &w.project;
}

async fn overflow_is_compacted_and_retried_once(api: &str) {
    let mut w = world(api).await;
    for i in 0..4 {
        push_turn(&w.mock, i);
        let done = run(&mut w, &format!("turn {i}: look at big.rs")).await;
        assert!(done.get("error").is_none(), "{done}");
    }
    let before = w.mock.requests().len();
    w.mock.refuse_as_too_long(1);
    w.mock.push(Script::text("Fine after all."));
    let done = run(&mut w, "one more").await;
    assert!(done.get("error").is_none(), "{done}");
    assert_eq!(done["text"], "Fine after all.");
    let requests = w.mock.requests();
    assert_eq!(
        requests.len(),
        before + 2,
        "the refused step is retried once"
    );
    assert_eq!(w.mock.overflows(), 1);
    let (refused, retried) = (&requests[before], &requests[before + 1]);
    assert!(
        retried.body.to_string().len() < refused.body.to_string().len(),
        "the retry is smaller"
    );
    assert!(
        !compacted(&w).is_empty(),
        "the forced compaction is announced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_overflow_error_is_compacted_and_retried_once() {
    overflow_is_compacted_and_retried_once("openai").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_prompt_too_long_error_is_compacted_and_retried_once() {
    overflow_is_compacted_and_retried_once("anthropic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_larger_than_the_window_fails_once_saying_so() {
    let mut w = world("openai").await;
    w.mock.set_context_window(Some(WINDOW));
    let huge = "an enormous pasted log line with many words in it\n".repeat(800);
    let done = run(&mut w, &huge).await;
    let error = done["error"].as_str().unwrap_or_else(|| panic!("{done}"));
    assert!(
        error.contains("does not fit the model's context window")
            && error.contains(&format!("window of {WINDOW} tokens")),
        "{error}"
    );
    assert!(w.mock.requests().is_empty(), "nothing was sent");
    let finished: Vec<Value> =
        w.c.kept()
            .into_iter()
            .filter(|m| m["params"]["kind"] == "runFinished")
            .collect();
    assert_eq!(finished.len(), 1, "failed once");
    assert_eq!(finished[0]["params"]["state"], "failed");
}
