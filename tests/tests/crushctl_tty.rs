//! `crushctl run` on a terminal, through a pseudo-terminal (`expectrl`): the spinner while the
//! model thinks, and the permission question — answered with Enter (the default, deny), `y`, or
//! `w` (always allow: a rule saved for the workspace), or `w` with a pattern of the user's own.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use expectrl::Expect;
use tokio_util::sync::CancellationToken;

use crush_tests::mock_llm::{MockLlm, Script};
use crush_tests::{DEADLINE, TestEnv};

/// Runs `crushctl run "show it"` on a pseudo-terminal against a model that first holds its
/// stream (the spinner must show), then asks to run `echo from-the-tool`, then answers
/// "All done."; the permission question is answered with `answer`. Returns the tool result the
/// model got back and the saved rules (`crushctl permissions list --all --json`).
async fn run_on_a_terminal(answer: &'static str) -> (String, String) {
    let said = match answer {
        "" => "denied",
        "w" => "always allowed \"echo from-the-tool\" in this workspace",
        _ => "allowed once",
    };
    answering_on_a_terminal(vec![(answer, said)]).await
}

/// As `run_on_a_terminal`, with the question answered by each line in turn, each followed by
/// what crushctl must say to it (an answer the daemon refuses asks the question again).
async fn answering_on_a_terminal(answers: Vec<(&'static str, &'static str)>) -> (String, String) {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_at(&mock.base_url());
    let _daemon = env.spawn_daemon(&[]);
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let gate = CancellationToken::new();
    mock.push(
        Script::default()
            .tool_call("call_1", "bash", r#"{"command":"echo from-the-tool"}"#)
            .held(gate.clone()),
    );
    mock.push(Script::text("All done."));
    let mut cmd = env.command("crushctl");
    cmd.current_dir(&project).args(["run", "show it"]);
    let terminal = tokio::task::spawn_blocking(move || {
        let mut p = expectrl::Session::spawn(cmd).unwrap();
        p.set_expect_timeout(Some(DEADLINE));
        // The model holds its stream: the spinner turns on the terminal.
        p.expect("thinking").unwrap();
        p.expect("⠙").unwrap();
        gate.cancel();
        p.expect("permission:").unwrap();
        p.expect("echo from-the-tool").unwrap();
        p.expect("allow?").unwrap();
        for (answer, said) in answers {
            p.expect("always allow bash \"echo from-the-tool\":  [s] in this session  [w] in this workspace  [g] everywhere")
                .unwrap();
            p.send_line(answer).unwrap();
            p.expect(said).unwrap();
        }
        p.expect("All done.").unwrap();
        p.expect(expectrl::Eof).unwrap();
        p.get_process().wait().unwrap()
    });
    let status = terminal.await.unwrap();
    assert!(
        matches!(status, expectrl::process::unix::WaitStatus::Exited(_, 0)),
        "{status:?}"
    );
    let results = mock.requests()[1].tool_results();
    let rules = env.crushctl(&["permissions", "list", "--all", "--json"]);
    assert!(rules.status.success(), "{rules:?}");
    (
        results[0].1.clone(),
        String::from_utf8_lossy(&rules.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_enter_denies_the_tool_call() {
    let (result, rules) = run_on_a_terminal("").await;
    assert!(result.contains("denied"), "{result}");
    assert_eq!(rules, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_y_allows_the_tool_call_once() {
    let (result, rules) = run_on_a_terminal("y").await;
    assert!(
        result.contains("from-the-tool") && !result.contains("denied"),
        "{result}"
    );
    assert_eq!(rules, "", "allow once saves no rule");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_w_allows_the_call_and_saves_a_rule_for_the_workspace() {
    let (result, rules) = run_on_a_terminal("w").await;
    assert!(result.contains("from-the-tool"), "{result}");
    let rule: serde_json::Value = serde_json::from_str(rules.trim()).unwrap();
    assert_eq!(rule["tool"], "bash");
    assert_eq!(rule["pattern"], "echo from-the-tool");
    assert_eq!(rule["scope"], "workspace");
    assert!(
        rule["createdBy"].as_str().unwrap().starts_with("crushctl"),
        "{rule}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_a_rule_takes_the_users_own_pattern_and_a_bad_one_is_asked_again() {
    let (result, rules) = answering_on_a_terminal(vec![
        // The daemon refuses shell syntax in a command prefix: said, and asked again.
        ("w echo; rm", "has shell syntax"),
        ("w echo", "always allowed \"echo\" in this workspace"),
    ])
    .await;
    assert!(result.contains("from-the-tool"), "{result}");
    let rule: serde_json::Value = serde_json::from_str(rules.trim()).unwrap();
    assert_eq!(rule["pattern"], "echo", "{rule}");
    assert_eq!(rule["scope"], "workspace");
}
