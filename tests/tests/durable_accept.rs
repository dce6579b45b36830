//! An acknowledged run survives a crash: `agent/send` answers only after the run's row is
//! committed, so a `kill -9` right after the answer — on an idle daemon, and in the middle of a
//! burst of sends — leaves every acknowledged run in `run/get` after a restart, terminal
//! (`interrupted`, since it never finished), with its prompt in the session. Real daemon, real
//! SQLite file, real SIGKILL.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;

use rustix::process::Signal;
use serde_json::{Value, json};

use crush_tests::mock_llm::{MockLlm, Script};
use crush_tests::{DEADLINE, RawConn, TestEnv};

async fn session(c: &mut RawConn, env: &TestEnv) -> String {
    let ws = c
        .request("workspace/open", json!({"path": env.dir.path()}))
        .await;
    let s = c
        .request(
            "session/create",
            json!({"workspaceId": ws["result"]["workspaceId"]}),
        )
        .await;
    s["result"]["sessionId"].as_str().unwrap().to_owned()
}

fn user_prompts(messages: &Value) -> Vec<String> {
    messages["result"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| {
            m["parts"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// After a restart: each run is known, terminal, and its prompt is in its session.
async fn assert_all_kept(c: &mut RawConn, session: &str, acked: &[(String, String)]) {
    let messages = c
        .request(
            "session/messages",
            json!({"sessionId": session, "limit": 1000}),
        )
        .await;
    let prompts: HashSet<String> = user_prompts(&messages).into_iter().collect();
    for (run, prompt) in acked {
        let r = c.request("run/get", json!({"runId": run})).await;
        assert!(
            r.get("result").is_some(),
            "acknowledged run {run} is gone after kill -9: {r}"
        );
        assert_eq!(r["result"]["state"], "interrupted", "{r}");
        assert!(
            prompts.contains(prompt),
            "the prompt {prompt:?} of acknowledged run {run} is not in the session"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_right_after_its_acknowledgement_is_kept() {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_at(&mock.base_url());
    let mut acked = Vec::new();
    let mut session_id = None;
    for trial in 0..6 {
        // The model never answers: the run is still going when the daemon dies.
        mock.set_default(Script::hanging(vec![]));
        let d = env.spawn_daemon(&[]);
        let mut c = RawConn::initialized(&env.socket).await;
        let s = match &session_id {
            Some(s) => s,
            None => session_id.insert(session(&mut c, &env).await),
        }
        .clone();
        let prompt = format!("prompt of trial {trial}");
        let r = c
            .request("agent/send", json!({"sessionId": s, "prompt": prompt}))
            .await;
        let run = r["result"]["runId"].as_str().unwrap().to_owned();
        // Killed the instant the answer is read: nothing else had a chance to write.
        d.signal(Signal::KILL);
        acked.push((run, prompt));
        drop(d);
    }
    let _d = env.spawn_daemon(&[]);
    let mut c = RawConn::initialized(&env.socket).await;
    assert_all_kept(&mut c, session_id.as_ref().unwrap(), &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_killed_midway_keeps_every_acknowledged_run() {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_at(&mock.base_url());
    mock.set_default(Script::hanging(vec![]));
    let d = env.spawn_daemon(&[]);
    let mut c = RawConn::initialized(&env.socket).await;
    let s = session(&mut c, &env).await;
    // 90 sends written back to back; the daemon is killed once half are acknowledged.
    let mut ids = Vec::new();
    for i in 0..90 {
        let id = c
            .start(
                "agent/send",
                json!({"sessionId": s, "prompt": format!("burst {i}")}),
            )
            .await;
        ids.push((id, format!("burst {i}")));
    }
    let mut acked = Vec::new();
    for (id, prompt) in &ids[..45] {
        let r = tokio::time::timeout(DEADLINE, c.response(*id))
            .await
            .unwrap();
        acked.push((
            r["result"]["runId"].as_str().unwrap().to_owned(),
            prompt.clone(),
        ));
    }
    d.signal(Signal::KILL);
    // Answers that were already on their way are acknowledgements too.
    let mut rest = c.kept();
    rest.extend(c.recv_until_closed().await);
    for m in rest {
        if let Some((_, prompt)) = ids[45..].iter().find(|(id, _)| m["id"] == *id)
            && let Some(run) = m["result"]["runId"].as_str()
        {
            acked.push((run.to_owned(), prompt.clone()));
        }
    }
    drop(d);
    let _d = env.spawn_daemon(&[]);
    let mut c = RawConn::initialized(&env.socket).await;
    assert_all_kept(&mut c, &s, &acked).await;
}
