//! `crushctl run` on a terminal, through a pseudo-terminal (`expectrl`): the spinner while the
//! model thinks, and the permission question — answered with Enter (the default, deny) or `y`.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use expectrl::Expect;
use tokio_util::sync::CancellationToken;

use crush_tests::mock_llm::{MockLlm, Script};
use crush_tests::{DEADLINE, TestEnv};

/// Runs `crushctl run "show it"` on a pseudo-terminal against a model that first holds its
/// stream (the spinner must show), then asks to run `echo from-the-tool`, then answers
/// "All done."; the permission question is answered with `answer`. Returns the tool result the
/// model got back.
async fn run_on_a_terminal(answer: &'static str) -> String {
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
        p.send_line(answer).unwrap();
        let said = if answer.is_empty() {
            "denied"
        } else {
            "allowed once"
        };
        p.expect(said).unwrap();
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
    results[0].1.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_enter_denies_the_tool_call() {
    let result = run_on_a_terminal("").await;
    assert!(result.contains("denied"), "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_y_allows_the_tool_call_once() {
    let result = run_on_a_terminal("y").await;
    assert!(
        result.contains("from-the-tool") && !result.contains("denied"),
        "{result}"
    );
}
