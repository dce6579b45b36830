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
    world_with(
        api,
        &format!(
            "[providers.mock.models.\"mock-1\"]\ncontext_window = {WINDOW}\nmax_output_tokens = {MAX_OUTPUT}\n"
        ),
    )
    .await
}

/// A world whose config file ends with `models` (the `[providers.mock.models.*]` tables and
/// anything else). The mock answers the daemon's summary requests (those without tools).
async fn world_with(api: &str, models: &str) -> World {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    mock.answer_summaries();
    env.use_model_with(&mock.base_url(), api, models);
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

/// The model requests of the runs' steps (not the summaries).
fn steps(w: &World) -> Vec<crush_tests::mock_llm::RecordedRequest> {
    w.mock
        .requests()
        .into_iter()
        .filter(|r| !r.summary)
        .collect()
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
    let all = w.mock.requests();
    let (summaries, requests): (Vec<_>, Vec<_>) = all.iter().partition(|r| r.summary);
    assert_eq!(
        requests.len(),
        2 * TURNS,
        "one request per step, none refused"
    );
    assert_eq!(w.mock.overflows(), 0);
    // Every request fits, the summary requests included.
    for r in &all {
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
    // The older turns were summarised by the model, and each summary is a stored message the
    // next requests show.
    let summarized: Vec<&Value> = events
        .iter()
        .filter(|e| e["summaryMessageId"].is_string())
        .collect();
    assert!(!summarized.is_empty(), "no summary was written");
    assert_eq!(summarized.len(), summaries.len(), "one request per summary");
    let after_first = summaries[0].index;
    for r in requests.iter().filter(|r| r.index > after_first) {
        assert!(
            r.messages()
                .iter()
                .any(|(_, text)| text.contains("SUMMARY-")),
            "request #{} after the first summary does not show one",
            r.index
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
    // Nothing stored was touched: every prompt and every tool output is still there, and
    // each summary is a message of its own.
    let messages = all_messages(&mut w).await;
    let stored_summaries: Vec<&Value> = messages.iter().filter(|m| m["role"] == "system").collect();
    assert_eq!(stored_summaries.len(), summaries.len());
    for m in &stored_summaries {
        let part = &m["parts"][0];
        assert_eq!(part["type"], "summary", "{m}");
        assert!(part["text"].as_str().unwrap().starts_with("SUMMARY-"));
        assert!(part["fromMessageId"].is_string() && part["toMessageId"].is_string());
    }
    assert_eq!(
        messages.len() - stored_summaries.len(),
        4 * TURNS,
        "user, call, result, answer per turn"
    );
    eprintln!(
        "{TURNS} turns: {} summaries, {} compacted events",
        summaries.len(),
        events.len()
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
    let before = steps(&w).len();
    w.mock.refuse_as_too_long(1);
    w.mock.push(Script::text("Fine after all."));
    let done = run(&mut w, "one more").await;
    assert!(done.get("error").is_none(), "{done}");
    assert_eq!(done["text"], "Fine after all.");
    let requests = steps(&w);
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

/// `n` short turns (no window enforced): a prompt and an answer each.
async fn chat(w: &mut World, n: usize) {
    for i in 0..n {
        w.mock.push(Script::text(&format!("answer {i}")));
        let text = if i == 0 {
            format!("{MARKER}\nturn-0")
        } else {
            format!("turn-{i}")
        };
        let done = run(w, &text).await;
        assert!(done.get("error").is_none(), "{done}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_compact_summarises_an_idle_session_and_later_runs_see_the_summary() {
    let mut w = world("openai").await;
    chat(&mut w, 5).await;
    let r =
        w.c.request("session/compact", json!({"sessionId": w.session}))
            .await;
    let result = &r["result"];
    assert_eq!(result["compacted"], true, "{r}");
    // Everything but the first prompt and the latest turn: the first answer and turns 1 to 3.
    assert_eq!(result["messages"], 1 + 2 * 3, "{r}");
    // (Short turns: the summary is about as long as what it replaces.)
    assert!(result["tokensAfter"].as_u64() > Some(0) && result["tokensBefore"].as_u64() > Some(0));
    let summary_id = result["summaryMessageId"].as_str().unwrap().to_owned();
    // Subscribers hear it, naming the summary.
    let event =
        w.c.wait_for("the compacted event", |m| {
            m["params"]["kind"] == "compacted" && m["params"]["summaryMessageId"] == summary_id
        })
        .await;
    assert!(event["params"].get("runId").is_none(), "{event}");
    // The summary is a message of its own; the originals are all still there.
    let messages = all_messages(&mut w).await;
    assert_eq!(messages.len(), 5 * 2 + 1);
    let last = messages.last().unwrap();
    assert_eq!(last["messageId"], summary_id.as_str());
    assert_eq!(last["role"], "system");
    assert_eq!(last["parts"][0]["type"], "summary");
    assert_eq!(last["parts"][0]["messages"], 7);
    assert_eq!(last["parts"][0]["fromMessageId"], messages[1]["messageId"]);
    assert_eq!(last["parts"][0]["toMessageId"], messages[7]["messageId"]);
    // The summarizer was given the whole older part, as a transcript.
    let summary_request = w.mock.requests().into_iter().find(|r| r.summary).unwrap();
    let asked = summary_request.messages().last().unwrap().1.clone();
    for i in 1..=3 {
        assert!(asked.contains(&format!("User: turn-{i}")), "{asked}");
    }
    assert!(!asked.contains("turn-4") && !asked.contains(MARKER));
    // The next run's request: first instruction, summary, the latest turn, the new prompt.
    w.mock.push(Script::text("after"));
    let done = run(&mut w, "turn-5").await;
    assert!(done.get("error").is_none(), "{done}");
    let shown: Vec<String> = steps(&w)
        .last()
        .unwrap()
        .messages()
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    let all = shown.join("\n");
    assert!(all.contains(MARKER));
    assert!(all.contains("SUMMARY-1"));
    assert!(all.contains("turn-4") && all.contains("turn-5"));
    for i in 1..=3 {
        assert!(
            !shown.contains(&format!("turn-{i}")) && !all.contains(&format!("answer {i}")),
            "turn {i} is summarised: {shown:?}"
        );
    }
    // Nothing newer to summarise right after: a second compact says so.
    let r =
        w.c.request("session/compact", json!({"sessionId": w.session}))
            .await;
    assert_eq!(r["result"]["compacted"], true, "turn 4 is older now: {r}");
    let r =
        w.c.request("session/compact", json!({"sessionId": w.session}))
            .await;
    assert_eq!(r["result"]["compacted"], false, "{r}");
    assert_eq!(w.mock.summaries(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_compact_refuses_a_busy_session_and_unknown_sessions() {
    let mut w = world("openai").await;
    chat(&mut w, 3).await;
    let gate = tokio_util::sync::CancellationToken::new();
    w.mock.push(Script::text("slow").held(gate.clone()));
    let r =
        w.c.request(
            "agent/send",
            json!({"sessionId": w.session, "prompt": "busy now"}),
        )
        .await;
    let run_id = r["result"]["runId"].as_str().unwrap().to_owned();
    w.mock
        .wait_requests(4, std::time::Duration::from_secs(20))
        .await;
    let r =
        w.c.request("session/compact", json!({"sessionId": w.session}))
            .await;
    assert_eq!(r["error"]["code"], -32014, "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("busy"),
        "{r}"
    );
    gate.cancel();
    let done = w.c.run_complete(&run_id).await;
    assert!(done.get("error").is_none(), "{done}");
    let r =
        w.c.request("session/compact", json!({"sessionId": "no-such-session"}))
            .await;
    assert_eq!(r["error"]["code"], -32011, "{r}");
    assert_eq!(w.mock.summaries(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_summary_leaves_old_turns_out_instead_and_the_run_completes() {
    let mut w = world("openai").await;
    w.mock.fail_summaries();
    w.mock.set_context_window(Some(WINDOW));
    for i in 0..8 {
        push_turn(&w.mock, i);
        let done = run(&mut w, &prompt(i)).await;
        assert!(done.get("error").is_none(), "turn {i}: {done}");
    }
    assert!(w.mock.summaries() > 0, "a summary was asked for");
    assert_eq!(w.mock.overflows(), 0);
    let events = compacted(&w);
    assert!(events.iter().all(|e| e.get("summaryMessageId").is_none()));
    assert!(events.iter().any(|e| e["dropped"].as_u64() > Some(0)));
    let messages = all_messages(&mut w).await;
    assert!(messages.iter().all(|m| m["role"] != "system"));
    // On demand, the failure is the answer.
    let r =
        w.c.request("session/compact", json!({"sessionId": w.session}))
            .await;
    assert_eq!(r["error"]["code"], -32031, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the summary failed"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_history_is_summarised_in_pieces_by_the_configured_compact_model() {
    // The session's model has a large window; summaries are written by a small one.
    let mut w = world_with(
        "openai",
        &format!(
            "[agent]\ncompact_model = \"mock/mini\"\n\n\
             [providers.mock.models.\"mock-1\"]\ncontext_window = 200000\n\n\
             [providers.mock.models.\"mini\"]\ncontext_window = {WINDOW}\nmax_output_tokens = {MAX_OUTPUT}\n"
        ),
    )
    .await;
    w.mock.set_context_window(Some(200_000));
    for i in 0..24 {
        push_turn(&w.mock, i);
        let done = run(&mut w, &prompt(i)).await;
        assert!(done.get("error").is_none(), "turn {i}: {done}");
    }
    assert_eq!(w.mock.summaries(), 0, "no compaction below the threshold");
    w.mock.set_context_window(Some(WINDOW));
    let r =
        w.c.request("session/compact", json!({"sessionId": w.session}))
            .await;
    assert_eq!(r["result"]["compacted"], true, "{r}");
    let summaries: Vec<_> = w
        .mock
        .requests()
        .into_iter()
        .filter(|r| r.summary)
        .collect();
    assert!(
        summaries.len() >= 3,
        "pieces and a merge: {} requests",
        summaries.len()
    );
    for r in &summaries {
        assert_eq!(r.model(), Some("mini"));
        let t = r.tokens.unwrap();
        assert!(t + MAX_OUTPUT <= WINDOW, "summary request of {t} tokens");
    }
    // The last one merges the parts.
    let merge = summaries
        .last()
        .unwrap()
        .messages()
        .last()
        .unwrap()
        .1
        .clone();
    assert!(
        merge.contains("## Part 1") && merge.contains("## Part 2"),
        "{merge}"
    );
    // Its cost is the session's: the summaries' tokens are in the session's totals.
    let info =
        w.c.request("session/get", json!({"sessionId": w.session}))
            .await;
    let steps_in: u64 = steps(&w).iter().map(|r| r.tokens.unwrap()).sum();
    let summaries_in: u64 = summaries.iter().map(|r| r.tokens.unwrap()).sum();
    assert_eq!(
        info["result"]["usage"]["inputTokens"].as_u64(),
        Some(steps_in + summaries_in),
        "{info}"
    );
}
