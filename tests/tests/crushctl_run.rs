//! Black-box tests of `crushctl run` (and `send`/`wait`/`cancel`): the real `crushctl` binary
//! against a real daemon on a temporary socket, with the loopback mock model. They assert what a
//! user sees: the text on stdout, notices on stderr, exit codes, JSON lines.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use assert_cmd::Command;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crush_tests::cli::CliProcess;
use crush_tests::mock_llm::{MockLlm, Script};
use crush_tests::{DEADLINE, DaemonProcess, RawConn, TestEnv};

struct World {
    env: TestEnv,
    mock: MockLlm,
    _daemon: DaemonProcess,
    project: PathBuf,
}

async fn world() -> World {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_at(&mock.base_url());
    let daemon = env.spawn_daemon(&[]);
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    World {
        env,
        mock,
        _daemon: daemon,
        project,
    }
}

impl World {
    /// `crushctl` in the project directory, for `assert_cmd`.
    fn ctl(&self) -> Command {
        let mut cmd = self.env.command("crushctl");
        cmd.current_dir(&self.project);
        let mut cmd = Command::from_std(cmd);
        cmd.timeout(DEADLINE);
        cmd
    }

    /// An editor's connection (`nvim`) with a new session of the project, subscribed to it.
    async fn editor_session(&self) -> (RawConn, String) {
        let mut c = RawConn::initialized_as(&self.env.socket, "nvim").await;
        let ws = c
            .request("workspace/open", json!({"path": self.project}))
            .await;
        let s = c
            .request(
                "session/create",
                json!({"workspaceId": ws["result"]["workspaceId"]}),
            )
            .await;
        let session = s["result"]["sessionId"].as_str().unwrap().to_owned();
        c.request("session/subscribe", json!({"sessionId": session}))
            .await;
        (c, session)
    }

    /// `crushctl args…` started in the background, output collected.
    fn spawn(&self, args: &[&str]) -> CliProcess {
        let mut cmd = self.env.command("crushctl");
        cmd.current_dir(&self.project).args(args);
        CliProcess::spawn(cmd)
    }
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_streams_the_answer_live_and_prints_exactly_the_models_text() {
    let w = world().await;
    let gate = CancellationToken::new();
    w.mock
        .push(Script::text("Hello from the mock, streamed word by word.").held(gate.clone()));
    let mut p = w.spawn(&["run", "say", "hello"]);
    // The text is on stdout while the model still holds its stream open: it is live.
    p.wait_stdout("Hello from the mock, streamed word by word.");
    gate.cancel();
    let status = p.wait_exit();
    assert_eq!(status.code(), Some(0), "stderr: {}", p.stderr());
    assert_eq!(p.stdout(), "Hello from the mock, streamed word by word.\n");
    // Not a terminal: no spinner, no tool activity.
    assert!(!p.stderr().contains('⠋'), "stderr: {}", p.stderr());
    let req = &w.mock.requests()[0];
    assert_eq!(req.messages().last().unwrap().1, "say hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_stdin_comes_before_the_prompt() {
    let w = world().await;
    w.mock.push(Script::text("Looks fine."));
    let out = w
        .ctl()
        .args(["run", "review this"])
        .write_stdin("fn main() {}\n")
        .timeout(DEADLINE)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "Looks fine.\n");
    let req = &w.mock.requests()[0];
    assert_eq!(
        req.messages().last().unwrap().1,
        "fn main() {}\n\nreview this"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_sends_to_the_most_recent_session() {
    let w = world().await;
    w.mock.push(Script::text("First answer."));
    w.mock.push(Script::text("Second answer."));
    let out = w.ctl().args(["run", "first question"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let out = w
        .ctl()
        .args(["run", "-c", "second question"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "Second answer.\n");
    // The model saw the first exchange: it is the same conversation.
    let texts: Vec<String> = w.mock.requests()[1]
        .messages()
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert!(texts.contains(&"first question".to_owned()), "{texts:?}");
    assert!(texts.contains(&"First answer.".to_owned()), "{texts:?}");
    let out = w.ctl().args(["sessions", "--json"]).output().unwrap();
    let sessions = json_lines(&stdout(&out));
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0]["messages"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_exits_1_and_says_why() {
    let w = world().await;
    w.mock
        .push(Script::error(400, "the mock refuses this prompt"));
    let out = w.ctl().args(["run", "anything"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("the mock refuses this prompt"),
        "stderr: {}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_cancels_the_run_and_exits_130() {
    let w = world().await;
    let gate = CancellationToken::new();
    w.mock
        .push(Script::text("Partial answer").held(gate.clone()));
    let mut p = w.spawn(&["run", "--json", "long job"]);
    p.wait_json_text("Partial answer");
    let first: Value = serde_json::from_str(p.stdout().lines().next().unwrap()).unwrap();
    let run_id = first["runId"].as_str().unwrap().to_owned();
    // A second client confirms the run is under way before the interrupt.
    let mut c = RawConn::initialized(&w.env.socket).await;
    let r = c.request("run/get", json!({"runId": run_id})).await;
    assert_eq!(r["result"]["state"], "running", "{r}");
    p.signal(rustix::process::Signal::INT);
    let status = p.wait_exit();
    assert_eq!(status.code(), Some(130), "stderr: {}", p.stderr());
    let lines = json_lines(&p.stdout());
    let last = lines.last().unwrap();
    assert_eq!(last["type"], "result");
    assert_eq!(last["state"], "cancelled");
    let r = c.request("run/get", json!({"runId": run_id})).await;
    assert_eq!(r["result"]["state"], "cancelled", "{r}");
    assert!(p.stderr().contains("cancelling"), "stderr: {}", p.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_daemon_exits_3() {
    let env = TestEnv::new();
    let out = Command::from_std(env.command("crushctl"))
        .args(["--no-autostart", "run", "-m", "echo", "hello"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("not running"),
        "stderr: {}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2() {
    let w = world().await;
    let out = w.ctl().args(["run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("no prompt"), "{}", stderr(&out));
    let out = w
        .ctl()
        .args(["run", "--no-such-flag", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = w
        .ctl()
        .args(["run", "-s", "no-such-session", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_is_one_object_per_line_with_the_documented_shape() {
    let w = world().await;
    w.mock.push(Script::text("One two three."));
    let out = w.ctl().args(["run", "--json", "count"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let lines = json_lines(&stdout(&out));
    assert_eq!(lines[0]["type"], "run", "{lines:?}");
    let run_id = lines[0]["runId"].as_str().unwrap();
    assert!(lines[0]["sessionId"].is_string());
    let text: String = lines
        .iter()
        .filter(|l| l["type"] == "text")
        .map(|l| {
            assert_eq!(l["runId"], run_id);
            l["text"].as_str().unwrap()
        })
        .collect();
    assert_eq!(text, "One two three.");
    let last = lines.last().unwrap();
    assert_eq!(last["type"], "result");
    assert_eq!(last["state"], "completed");
    assert_eq!(last["runId"], run_id);
    assert_eq!(last["text"], "One two three.");
    assert!(last["error"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_model_it_fails_fast_saying_what_to_set_and_echo_works_offline() {
    let env = TestEnv::new();
    // No default model; Ollama pointed at a port nobody listens on.
    env.write_config("[providers.ollama]\nbase_url = \"http://127.0.0.1:9/v1\"\n");
    let keys = [
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "OPENROUTER_API_KEY",
        "CRUSHD_MODEL",
    ];
    let mut daemon = env.command("crushd");
    daemon.args(["--foreground"]);
    for k in keys {
        daemon.env_remove(k);
    }
    let d = DaemonProcess::spawn(daemon);
    d.wait_for_log("listening", DEADLINE);
    let project = env.dir.path().join("p");
    std::fs::create_dir_all(&project).unwrap();
    let ctl = || {
        let mut c = env.command("crushctl");
        c.current_dir(&project);
        for k in keys {
            c.env_remove(k);
        }
        Command::from_std(c)
    };
    let out = ctl().args(["run", "hello"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    for needle in [
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "OPENROUTER_API_KEY",
        "-m echo",
    ] {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }
    assert!(stdout(&out).is_empty());
    // No session was left behind by the refused prompt.
    let out = ctl().args(["sessions", "--json"]).output().unwrap();
    assert_eq!(stdout(&out), "");
    let out = ctl()
        .args(["run", "-m", "echo", "hello offline world"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "hello offline world\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_are_denied_without_a_terminal_unless_yolo() {
    let w = world().await;
    std::fs::write(w.project.join("hello.txt"), "hi\n").unwrap();
    w.mock
        .push(Script::default().tool_call("call_1", "bash", r#"{"command":"cat hello.txt"}"#));
    w.mock.push(Script::text("Could not run it."));
    let out = w.ctl().args(["run", "show hello.txt"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "Could not run it.\n");
    let err = stderr(&out);
    assert!(err.contains("denied"), "{err}");
    assert!(err.contains("--yolo"), "{err}");
    let results = w.mock.requests()[1].tool_results();
    assert!(!results[0].1.contains("hi\n"), "{results:?}");

    w.mock
        .push(Script::default().tool_call("call_2", "bash", r#"{"command":"cat hello.txt"}"#));
    w.mock.push(Script::text("It says hi."));
    let out = w
        .ctl()
        .args(["run", "--yolo", "show hello.txt"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "It says hi.\n");
    assert!(!stderr(&out).contains("denied"), "{}", stderr(&out));
    let results = w.mock.requests()[3].tool_results();
    assert!(results.iter().any(|(_, r)| r.contains("hi")), "{results:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_runs_in_the_same_session_are_not_printed() {
    let w = world().await;
    let (mut c, session) = w.editor_session().await;
    let gate = CancellationToken::new();
    w.mock
        .push(Script::text("Foreign text of the editor's run.").held(gate.clone()));
    w.mock.push(Script::text("My own answer."));
    let r = c
        .request(
            "agent/send",
            json!({"sessionId": session, "prompt": "editor prompt", "runId": "editor-run"}),
        )
        .await;
    assert_eq!(r["result"]["state"], "running", "{r}");
    w.mock.wait_requests(1, DEADLINE).await;
    let mut p = w.spawn(&["run", "-s", &session, "--json", "my prompt"]);
    // crushctl's run is queued behind the editor's: wait for its queued line, then let the
    // editor's run finish.
    p.wait_stdout("\"type\":\"queued\"");
    gate.cancel();
    c.run_complete("editor-run").await;
    let status = p.wait_exit();
    assert_eq!(status.code(), Some(0), "stderr: {}", p.stderr());
    let lines = json_lines(&p.stdout());
    let text: String = lines
        .iter()
        .filter(|l| l["type"] == "text")
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "My own answer.");
    assert!(!p.stdout().contains("Foreign"), "{}", p.stdout());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_returns_the_run_id_and_wait_reports_the_finished_run() {
    let w = world().await;
    w.mock.push(Script::text("Done in the background."));
    let out = w.ctl().args(["send", "background job"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let run_id = stdout(&out).trim().to_owned();
    assert!(!run_id.is_empty() && !run_id.contains(' '), "{run_id:?}");
    // Once to see it end, once more on the finished run: the same answer, the same exit code.
    for _ in 0..2 {
        let out = w.ctl().args(["wait", &run_id]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
        assert_eq!(stdout(&out), "Done in the background.\n");
    }
    let out = w.ctl().args(["wait", "--json", &run_id]).output().unwrap();
    let lines = json_lines(&stdout(&out));
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["state"], "completed");
    let out = w.ctl().args(["wait", "no-such-run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_busy_session_and_wait_exits_130() {
    let w = world().await;
    let gate = CancellationToken::new();
    w.mock.push(Script::text("Working…").held(gate.clone()));
    let out = w
        .ctl()
        .args(["send", "--json", "long job"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let sent: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let run_id = sent["runId"].as_str().unwrap().to_owned();
    w.mock.wait_requests(1, DEADLINE).await;
    let out = w.ctl().args(["cancel"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(stdout(&out).contains(&run_id), "{}", stdout(&out));
    let out = w.ctl().args(["wait", &run_id]).output().unwrap();
    assert_eq!(out.status.code(), Some(130), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("cancelled"), "{}", stderr(&out));
}

/// An editor and `crushctl run` share a session: the editor's run is active, crushctl's queued
/// behind it. Ctrl-C in crushctl cancels crushctl's run only; the editor's run goes on and
/// completes. Then `crushctl cancel --run ID` (no session named) ends one queued run alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_and_cancel_run_end_only_the_named_run() {
    let w = world().await;
    let (mut c, session) = w.editor_session().await;
    let gate = CancellationToken::new();
    w.mock
        .push(Script::text("The editor's answer.").held(gate.clone()));
    w.mock.push(Script::text("The queued answer."));
    let r = c
        .request(
            "agent/send",
            json!({"sessionId": session, "prompt": "editor prompt", "runId": "editor-run"}),
        )
        .await;
    assert_eq!(r["result"]["state"], "running", "{r}");
    w.mock.wait_requests(1, DEADLINE).await;

    let mut p = w.spawn(&["run", "-s", &session, "--json", "my prompt"]);
    p.wait_stdout("\"type\":\"queued\"");
    p.signal(rustix::process::Signal::INT);
    let status = p.wait_exit();
    assert_eq!(status.code(), Some(130), "stderr: {}", p.stderr());
    let mine = json_lines(&p.stdout())[0]["runId"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = c.run_complete(&mine).await;
    assert_eq!(done["cancelled"], true, "{done}");
    let r = c.request("run/get", json!({"runId": "editor-run"})).await;
    assert_eq!(
        r["result"]["state"], "running",
        "the editor's run goes on: {r}"
    );

    // Queue one more behind the editor's run, and cancel it by id from the command line.
    let r = c
        .request(
            "agent/send",
            json!({"sessionId": session, "prompt": "later", "runId": "queued-run"}),
        )
        .await;
    assert_eq!(r["result"]["state"], "queued", "{r}");
    let out = w
        .ctl()
        .args(["cancel", "--run", "queued-run"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "cancelled queued-run");
    assert_eq!(c.run_complete("queued-run").await["cancelled"], true);
    let out = w
        .ctl()
        .args(["cancel", "--run", "queued-run"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(stdout(&out).contains("already ended"), "{}", stdout(&out));
    let out = w
        .ctl()
        .args(["cancel", "--run", "no-such-run"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));

    gate.cancel();
    let done = c.run_complete("editor-run").await;
    assert_eq!(done["cancelled"], false, "{done}");
    assert_eq!(done["text"], "The editor's answer.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_result_carries_the_runs_usage_and_new_sessions_are_titled_by_the_daemon() {
    let w = world().await;
    w.mock.push(Script::text("Fine.").usage(12, 4));
    let out = w
        .ctl()
        .args(["run", "--json", "first question"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let last = json_lines(&stdout(&out)).pop().unwrap();
    assert_eq!(last["type"], "result");
    assert_eq!(
        last["usage"],
        json!({"inputTokens": 12, "outputTokens": 4, "cachedTokens": 0, "reasoningTokens": 0,
               "cost": null}),
        "the mock model has no price: {last}"
    );
    // Piped text before the words: the session is named after the words, not the text.
    w.mock.push(Script::text("Read it."));
    let out = w
        .ctl()
        .args(["run", "summarize this"])
        .write_stdin("line one of a file\nline two\n")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    // Only piped text: the daemon takes its first line.
    w.mock.push(Script::text("Noted."));
    let out = w
        .ctl()
        .args(["run"])
        .write_stdin("\n  piped question\nmore\n")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let out = w.ctl().args(["sessions", "--json"]).output().unwrap();
    let mut titles: Vec<String> = json_lines(&stdout(&out))
        .iter()
        .map(|s| s["title"].as_str().unwrap().to_owned())
        .collect();
    titles.sort();
    assert_eq!(
        titles,
        ["first question", "piped question", "summarize this"]
    );
}
