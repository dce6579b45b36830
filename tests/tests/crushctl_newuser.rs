//! What a new user trips on with `crushctl` (issue 22), black-box: a real daemon on a temporary
//! socket, the loopback mock model, ids taken from crushctl's own output, pipes whose reader has
//! exited, a broken config file, a daemon killed under a following `attach`.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crush_tests::cli::CliProcess;
use crush_tests::mock_llm::{MockLlm, Script};
use crush_tests::{DEADLINE, DaemonProcess, RawConn, TestEnv};

struct World {
    env: TestEnv,
    mock: MockLlm,
    daemon: DaemonProcess,
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
        daemon,
        project,
    }
}

/// What one finished `crushctl` command left.
struct Done {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl World {
    fn ctl(&self, args: &[&str]) -> Command {
        let mut cmd = self.env.command("crushctl");
        cmd.current_dir(&self.project).args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> Done {
        let out = self.ctl(args).stdin(Stdio::null()).output().unwrap();
        Done {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        let d = self.run(args);
        assert_eq!(
            d.code,
            Some(0),
            "crushctl {args:?}\nstdout: {}\nstderr: {}",
            d.stdout,
            d.stderr
        );
        d.stdout
    }

    fn spawn(&self, args: &[&str]) -> CliProcess {
        CliProcess::spawn(self.ctl(args))
    }
}

/// Waits (bounded) for a child to exit; process exit has no portable notification in std.
fn wait_exit(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < end, "{what} did not exit in time");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A run id as an editor makes one (a UUID whose end is random).
fn editor_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("0196f3a2-8d10-7b2e-9c41-{:012x}", u64::from(nanos) * 7919)
}

/// The short id in the first column of each row of `crushctl sessions` (after the header).
fn table_ids(table: &str) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The run ids `attach` printed in its `[run XXXXXXXX …]` lines.
fn attach_run_ids(out: &str) -> Vec<String> {
    out.match_indices("[run ")
        .map(|(i, _)| out[i + 5..].chars().take_while(|c| *c != ' ').collect())
        .collect()
}

// Item 1: ids that can be typed ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_ids_shown_by_crushctl_are_accepted_by_every_command() {
    let w = world().await;
    // Three sessions made within a second or two share their first 8 characters.
    for (i, title) in ["alpha", "beta", "gamma"].iter().enumerate() {
        w.mock.push(Script::text(&format!("Answer {i}.")));
        w.ok(&["run", title]);
    }
    let ids = table_ids(&w.ok(&["sessions"]));
    assert_eq!(ids.len(), 3, "{ids:?}");
    for id in &ids {
        assert_eq!(id.len(), 8, "the table shows the short form: {ids:?}");
    }
    // Each short id names its own session, wherever a session id is taken.
    for (id, title) in ids.iter().zip(["gamma", "beta", "alpha"]) {
        let shown = w.ok(&["sessions", "show", id]);
        assert!(shown.starts_with(title), "{id} → {shown}");
        w.ok(&["sessions", "rename", id, &format!("{title} renamed")]);
    }
    let full: Vec<Value> = w
        .ok(&["sessions", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        full.iter()
            .all(|s| s["title"].as_str().unwrap().ends_with(" renamed"))
    );
    // The full id and a prefix of it (git style) still work.
    let first = full[0]["sessionId"].as_str().unwrap();
    assert!(w.ok(&["sessions", "show", first]).contains("renamed"));
    assert!(
        w.ok(&["sessions", "show", &first[..first.len() - 2]])
            .contains("renamed")
    );
    // A fragment of nothing is a usage error that says so.
    let none = w.run(&["sessions", "show", "zzzzzzzz"]);
    assert_eq!(none.code, Some(2), "{}", none.stderr);
    assert!(none.stderr.contains("no session"), "{}", none.stderr);

    // Run ids: `attach` shows them short; `wait` and `cancel --run` take that form.
    let session = full[0]["sessionId"].as_str().unwrap().to_owned();
    let mut attach = w.spawn(&["attach", &session[session.len() - 8..]]);
    attach.wait_stderr("following session");
    w.mock.push(Script::text("The watched answer."));
    let mut c = RawConn::initialized_as(&w.env.socket, "editor").await;
    c.request(
        "agent/send",
        json!({"sessionId": session, "prompt": "from the editor", "runId": editor_run_id()}),
    )
    .await;
    attach.wait_stdout("completed]");
    let runs = attach_run_ids(&attach.stdout());
    assert_eq!(runs.len(), 1, "{}", attach.stdout());
    let waited = w.ok(&["wait", &runs[0]]);
    assert_eq!(waited, "The watched answer.\n");
    let cancelled = w.ok(&["cancel", "--run", &runs[0]]);
    assert!(cancelled.contains("already ended"), "{cancelled}");
    // `run -s` and `sessions rm` take the short form too.
    let short = &session[session.len() - 8..];
    w.mock.push(Script::text("Continued."));
    assert_eq!(w.ok(&["run", "-s", short, "go on"]), "Continued.\n");
    let unknown = w.run(&["wait", "zzzzzzzz"]);
    assert_eq!(unknown.code, Some(2), "{}", unknown.stderr);
    assert!(unknown.stderr.contains("no run"), "{}", unknown.stderr);
    attach.signal(rustix::process::Signal::INT);
    assert_eq!(attach.wait_exit().code(), Some(0));
    w.ok(&["sessions", "rm", short]);
    assert_eq!(table_ids(&w.ok(&["sessions"])).len(), 2);
}

// Item 2: a bad config says so where the user is ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autostart_with_a_broken_config_prints_the_daemons_error_and_exits_2() {
    let env = TestEnv::new();
    env.write_config("[agent]\nmax_attempts = 3\nmax_step = 5\n");
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let out = env
        .command("crushctl")
        .current_dir(&project)
        .args(["run", "-m", "echo", "hello"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    // The daemon's own words: file, line and key.
    assert!(stderr.contains("config.toml"), "{stderr}");
    assert!(stderr.contains("max_step"), "{stderr}");
    assert!(stderr.contains(":3"), "{stderr}");
    assert!(!stderr.contains("did not start"), "{stderr}");
}

// Item 3: closed stdout -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_whose_stdout_is_closed_end_quietly_with_141() {
    let w = world().await;
    w.mock.push(Script::text("An answer."));
    w.ok(&["run", "a prompt"]);
    for args in [
        &["sessions", "--json"][..],
        &["sessions"],
        &["status"],
        &["status", "--json"],
        &["completions", "bash"],
        &["config", "show"],
    ] {
        // A pipe whose reader has already exited, as `| head` leaves it.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = w
            .ctl(args)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.trim().is_empty(), "{args:?} said: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_into_a_pipe_whose_reader_exits_cancels_its_run_and_ends() {
    let w = world().await;
    // Far longer than the test's deadline: the command must end because its reader left.
    w.mock
        .push(Script::chunks(4000).chunk_delay(Duration::from_millis(10)));
    let mut child = w
        .ctl(&["run", "stream a lot"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `head -c 20`: read 20 bytes, then exit.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 20];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let status = wait_exit(&mut child, "crushctl run");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Its run was cancelled (the documented choice), and the conversation says so.
    let session =
        serde_json::from_str::<Value>(w.ok(&["sessions", "--json"]).lines().next().unwrap())
            .unwrap()["sessionId"]
            .as_str()
            .unwrap()
            .to_owned();
    // Its run was cancelled: wait for the turn's end, then read the stored answer.
    let mut c = RawConn::initialized(&w.env.socket).await;
    let sub = c
        .request("session/subscribe", json!({"sessionId": session}))
        .await;
    if sub["result"]["status"]["state"] != "idle" {
        c.wait_for("the run's end", |m| {
            m["method"] == "$/sessionUpdate" && m["params"]["kind"] == "runFinished"
        })
        .await;
    }
    let r = c
        .request("session/messages", json!({"sessionId": session}))
        .await;
    let msgs = r["result"]["messages"].as_array().unwrap().clone();
    assert!(
        msgs.iter()
            .any(|m| m["role"] == "assistant" && m["finishReason"] == "canceled"),
        "the run was not cancelled: {msgs:?}"
    );
    // Item 7: `sessions show` marks the cut-short answer.
    let shown = w.ok(&["sessions", "show", &session]);
    assert!(shown.contains("cancelled"), "{shown}");
}

// Item 4: errors in the user's terms -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_flags_not_protocol_fields_and_hide_codes() {
    let w = world().await;
    w.mock.push(Script::hanging(vec!["busy".into()]));
    w.ok(&["send", "keep busy"]);
    let restart = w.run(&["daemon", "restart"]);
    assert_eq!(restart.code, Some(1), "{}", restart.stderr);
    assert!(restart.stderr.contains("--force"), "{}", restart.stderr);
    assert!(
        !restart.stderr.contains("force: true"),
        "{}",
        restart.stderr
    );
    assert!(!restart.stderr.contains("(code"), "{}", restart.stderr);

    let session = table_ids(&w.ok(&["sessions"]))[0].clone();
    let empty = w.run(&["sessions", "rename", &session, "  "]);
    assert_eq!(empty.code, Some(2), "{}", empty.stderr);
    assert!(
        empty.stderr.contains("must not be empty"),
        "{}",
        empty.stderr
    );
    assert!(!empty.stderr.contains("(code"), "{}", empty.stderr);
    let verbose = w.run(&["--verbose", "sessions", "rename", &session, "  "]);
    assert!(
        verbose.stderr.contains("(code -32602)"),
        "{}",
        verbose.stderr
    );
    w.ok(&["cancel"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_providers_key_set_only_here_gets_the_restart_hint() {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.write_config(&format!(
        "default_model = \"mine/m1\"\n\n[providers.mine]\ntype = \"openai\"\nbase_url = \"{}\"\napi_key_env = \"CRUSH_TEST_MINE_KEY\"\n",
        mock.base_url()
    ));
    // The daemon was started without the key…
    let _daemon = env.spawn_daemon(&[]);
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    // …which the user exported afterwards.
    let out = env
        .command("crushctl")
        .current_dir(&project)
        .env("CRUSH_TEST_MINE_KEY", "sk-test")
        .args(["run", "hello"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "CRUSH_TEST_MINE_KEY is set here but not in the running daemon's environment"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("crushctl daemon restart"), "{stderr}");
}

/// The README's "any other OpenAI-compatible server" example, copied as it is (only its address
/// pointed at the loopback mock), works with a server that needs no key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_local_server_example_works_without_a_key() {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .unwrap();
    let start = readme
        .find("```toml\ndefault_model")
        .expect("README has the config example");
    let block = &readme[start + "```toml\n".len()..];
    let block = &block[..block.find("```").unwrap()];
    assert!(block.contains("[providers.local]"), "{block}");
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    let config: String = block
        .lines()
        .map(|l| {
            if l.starts_with("default_model") {
                "default_model = \"local/qwen2.5-coder\"".to_owned()
            } else if l.starts_with("base_url") {
                format!("base_url = \"{}\"", mock.base_url())
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    env.write_config(&config);
    let _daemon = env.spawn_daemon(&[]);
    mock.push(Script::text("Served locally."));
    let out = env
        .command("crushctl")
        .current_dir(env.dir.path())
        .env_remove("LOCAL_API_KEY")
        .args(["run", "hello"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Served locally.\n");
}

// Item 5: attach across a daemon restart --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_after_a_daemon_restart_does_not_repeat_history() {
    let mut w = world().await;
    w.mock
        .push(Script::default().tool_call("call_ls", "ls", r#"{"path":"."}"#));
    w.mock.push(Script::text("Listed the files."));
    w.ok(&["run", "--yolo", "list the files"]);

    // Never start a daemon of its own: the test restarts the one it killed.
    let mut attach = w.spawn(&["--no-autostart", "attach"]);
    attach.wait_stdout("Listed the files.");
    attach.wait_stderr("following session");

    w.daemon.signal(rustix::process::Signal::KILL);
    w.daemon.wait_exit(DEADLINE);
    w.daemon = w.env.spawn_daemon(&[]);
    attach.wait_stderr("reconnected");

    w.mock.push(Script::text("The second answer."));
    w.ok(&["run", "-c", "a second prompt"]);
    attach.wait_stdout("The second answer.");
    attach.wait_stdout("completed]");
    attach.signal(rustix::process::Signal::INT);
    assert_eq!(attach.wait_exit().code(), Some(0));
    let out = attach.stdout();
    assert_eq!(out.matches("list the files").count(), 1, "{out}");
    assert_eq!(out.matches("⚙ ls").count(), 1, "{out}");
    assert_eq!(out.matches("✓ ls").count(), 1, "{out}");
    assert_eq!(out.matches("Listed the files.").count(), 1, "{out}");
    assert_eq!(out.matches("a second prompt").count(), 1, "{out}");
}

/// On a terminal (stdout and stderr the same screen), attaching while an answer streams prints
/// the header first and the answer as one unbroken line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_on_a_terminal_never_splits_a_streaming_line() {
    use expectrl::Expect;
    let w = world().await;
    let gate = tokio_util::sync::CancellationToken::new();
    w.mock
        .push(Script::from_chunks(vec!["streaming".into(), "-answer".into()]).held(gate.clone()));
    let mut send = w.spawn(&["run", "stream it"]);
    // Wait until the first part streamed, so the attach starts in the middle of the line.
    send.wait_stdout("streaming-answer");
    let mut cmd = w.env.command("crushctl");
    cmd.current_dir(&w.project).args(["attach", "-n", "5"]);
    let screen = tokio::task::spawn_blocking(move || {
        let mut p = expectrl::Session::spawn(cmd).unwrap();
        p.set_expect_timeout(Some(DEADLINE));
        let before = p.expect("streaming-answer").unwrap();
        let before = String::from_utf8_lossy(before.before()).into_owned();
        gate.cancel();
        p.expect("completed]").unwrap();
        before
    });
    let before = screen.await.unwrap();
    assert!(before.contains("following session"), "{before:?}");
    assert_eq!(send.wait_exit().code(), Some(0));
}

// Item 6: connection errors show as retries ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_model_connection_shows_each_retry_on_a_terminal() {
    use expectrl::Expect;
    let env = TestEnv::new();
    // A port nobody listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    env.use_model_with(
        &format!("http://127.0.0.1:{port}/v1"),
        "openai",
        "[agent]\nmax_attempts = 3\nretry_base_delay = \"100ms\"\n",
    );
    let _daemon = env.spawn_daemon(&[]);
    let mut cmd = env.command("crushctl");
    cmd.current_dir(env.dir.path()).args(["run", "hello"]);
    let status = tokio::task::spawn_blocking(move || {
        let mut p = expectrl::Session::spawn(cmd).unwrap();
        p.set_expect_timeout(Some(DEADLINE));
        p.expect("retrying 2/3 in 100 ms: connection refused")
            .unwrap();
        p.expect("retrying 3/3 in 200 ms: connection refused")
            .unwrap();
        p.expect("run failed").unwrap();
        p.expect(expectrl::Eof).unwrap();
        p.get_process().wait().unwrap()
    })
    .await
    .unwrap();
    assert!(
        matches!(status, expectrl::process::unix::WaitStatus::Exited(_, 1)),
        "{status:?}"
    );
}

// Item 7: status keeps live clients apart from those that left ------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_clients_that_left_apart_from_live_ones() {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_at(&mock.base_url());
    // Debug logging: the daemon says when it has parked a dropped client.
    let mut cmd = env.command("crushd");
    cmd.env("CRUSHD_LOG", "info,crushd=debug")
        .arg("--foreground")
        .arg("--debug-methods");
    let daemon = DaemonProcess::spawn(cmd);
    daemon.wait_for_log("listening", DEADLINE);
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let hello = |name: &str, id: &str| json!({"clientInfo": {"name": name}, "clientId": id, "protocolVersion": 1});
    let mut live = RawConn::initialized_with(&env.socket, hello("live-editor", "live-1"))
        .await
        .0;
    live.request("workspace/open", json!({"path": project}))
        .await;
    {
        let mut gone = RawConn::initialized_with(&env.socket, hello("gone-editor", "gone-1"))
            .await
            .0;
        gone.request("workspace/open", json!({"path": project}))
            .await;
    }
    daemon.wait_for_log("client kept for its reconnect grace period", DEADLINE);
    let out = env
        .command("crushctl")
        .arg("status")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{status}");
    let live_at = status.find("live-editor").expect("the live client");
    let split = status
        .find("disconnected")
        .expect("a section for dropped ones");
    let gone_at = status.find("gone-editor").expect("the dropped client");
    assert!(live_at < split && split < gone_at, "{status}");
    assert!(status.contains("clients      1 connected"), "{status}");
    assert!(status.contains("disconnected 1"), "{status}");
}

// Item 10 (crushctl's side): permission outcomes in words --------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_says_permission_outcomes_in_words() {
    let w = world().await;
    w.mock.push(Script::text("Ready."));
    w.ok(&["run", "start"]);
    let session =
        serde_json::from_str::<Value>(w.ok(&["sessions", "--json"]).lines().next().unwrap())
            .unwrap()["sessionId"]
            .as_str()
            .unwrap()
            .to_owned();
    let short = session[session.len() - 8..].to_owned();
    let mut editor = RawConn::initialized_as(&w.env.socket, "editor (pid 7)").await;
    editor
        .request("session/subscribe", json!({"sessionId": session}))
        .await;
    let mut attach = w.spawn(&["attach", &short]);
    attach.wait_stderr("following session");

    // The editor allows a write for the rest of the session.
    w.mock.push(Script::default().tool_call(
        "call_w",
        "write",
        r#"{"path":"a.txt","content":"a\n"}"#,
    ));
    w.mock.push(Script::text("Wrote it."));
    editor
        .request(
            "agent/send",
            json!({"sessionId": session, "prompt": "write a", "runId": editor_run_id()}),
        )
        .await;
    let request = editor.daemon_request("permission/request").await;
    editor
        .reply(&request, json!({"decision": "allowSession"}))
        .await;
    attach.wait_stdout("permission allowed for this session by editor (pid 7)");
    attach.wait_stdout("Wrote it.");

    // A cancel withdraws the next prompt.
    w.mock
        .push(Script::default().tool_call("call_b", "bash", r#"{"command":"rm -rf build"}"#));
    editor
        .request(
            "agent/send",
            json!({"sessionId": session, "prompt": "clean up", "runId": editor_run_id()}),
        )
        .await;
    editor.daemon_request("permission/request").await;
    w.ok(&["cancel", &short]);
    attach.wait_stdout("permission withdrawn: the run was cancelled");
    attach.wait_stdout("cancelled]");
    attach.signal(rustix::process::Signal::INT);
    assert_eq!(attach.wait_exit().code(), Some(0));
    let out = attach.stdout();
    assert!(!out.contains("allowSession"), "{out}");
    assert!(!out.contains("by cancel"), "{out}");
}
