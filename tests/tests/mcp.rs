//! Black-box tests of MCP servers as tools: a real `crushd`, the loopback mock model scripting
//! tool calls, and real third-party MCP servers from the package registries — the reference
//! `@modelcontextprotocol/server-everything` (npm) and `tests/mcp/test_server.py`, a server
//! written with the official Python SDK (PyPI `mcp`) whose tools are slow, die or record their
//! cancellation on purpose.
//!
//! The servers are installed by `.ci/run` into a cache directory named by `$CRUSH_MCP_SERVERS`;
//! without it these tests fail and say how to install them.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use serde_json::{Value, json};

use crush_tests::mock_llm::{MockLlm, Script};
use crush_tests::{DEADLINE, DaemonProcess, RawConn, TestEnv, error_code};

const INSTALL_HINT: &str = "set CRUSH_MCP_SERVERS to a directory holding the test MCP servers: \
`d=~/.cache/crush-ci/mcp-servers-1 && npm install --prefix $d @modelcontextprotocol/server-everything@2026.8.31 \
&& python3 -m pip install --target $d/py mcp==2.3.0 && export CRUSH_MCP_SERVERS=$d` (.ci/run does this)";

/// The installed servers: `(server-everything's binary, PYTHONPATH for the Python SDK)`.
fn servers() -> (PathBuf, PathBuf) {
    let dir = std::env::var_os("CRUSH_MCP_SERVERS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("CRUSH_MCP_SERVERS is not set; {INSTALL_HINT}"));
    let everything = dir.join("node_modules/.bin/mcp-server-everything");
    let py = dir.join("py");
    assert!(
        everything.exists() && py.join("mcp").is_dir(),
        "{} lacks the MCP servers; {INSTALL_HINT}",
        dir.display()
    );
    (everything, py)
}

fn test_server() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("mcp")
        .join("test_server.py")
}

/// `[mcp.servers.*]` tables: `everything` (its `get-sum` allow-listed) and `t`, the Python
/// test server in `mode` writing its markers into `state`, with the given call `timeout` and
/// `startup` timeout.
fn servers_config(state: &Path, mode: &str, timeout: &str, startup: &str) -> String {
    let (everything, py) = servers();
    format!(
        "[mcp.servers.everything]\ncommand = {everything:?}\nargs = [\"stdio\"]\nallow = [\"get-sum\"]\n\
         timeout = \"20s\"\n\n\
         [mcp.servers.t]\ncommand = \"python3\"\nargs = [{script:?}, {mode:?}, {state:?}]\n\
         env = {{ PYTHONPATH = {py:?} }}\ntimeout = {timeout:?}\nstartup_timeout = {startup:?}\n",
        everything = everything.display().to_string(),
        script = test_server().display().to_string(),
        state = state.display().to_string(),
        py = py.display().to_string(),
    )
}

struct World {
    env: TestEnv,
    mock: MockLlm,
    daemon: DaemonProcess,
    session: String,
    c: RawConn,
    /// Where the Python test server writes its markers.
    state: PathBuf,
}

async fn world(mode: &str, timeout: &str) -> World {
    world_with(mode, timeout, "20s").await
}

async fn world_with(mode: &str, timeout: &str, startup: &str) -> World {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    let state = env.dir.path().join("mcp-state");
    std::fs::create_dir_all(&state).unwrap();
    env.use_model_with(
        &mock.base_url(),
        "openai",
        &servers_config(&state, mode, timeout, startup),
    );
    let daemon = env.spawn_daemon(&[]);
    let mut c = RawConn::initialized_as(&env.socket, "nvim").await;
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
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
        env,
        mock,
        daemon,
        session,
        c,
        state,
    }
}

async fn send(c: &mut RawConn, session: &str, prompt: &str) -> String {
    let r = c
        .request(
            "agent/send",
            json!({"sessionId": session, "prompt": prompt}),
        )
        .await;
    r["result"]["runId"]
        .as_str()
        .unwrap_or_else(|| panic!("agent/send failed: {r}"))
        .to_owned()
}

fn event<'a>(kind: &'a str) -> impl Fn(&Value) -> bool + 'a {
    move |m| m["method"] == "$/sessionUpdate" && m["params"]["kind"] == kind
}

async fn server_info(c: &mut RawConn, name: &str) -> Value {
    let r = c.request("mcp/list", json!({})).await;
    r["result"]["servers"]
        .as_array()
        .unwrap_or_else(|| panic!("mcp/list failed: {r}"))
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no server {name} in {r}"))
}

/// Waits until `mcp/list` shows `name` satisfying `pred`. The daemon has no notification for
/// server state, so the list is read again every few milliseconds until the deadline.
async fn wait_server(
    c: &mut RawConn,
    name: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let end = Instant::now() + DEADLINE;
    loop {
        let s = server_info(c, name).await;
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < end,
            "server {name} never became {what}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for a marker file the test server writes.
async fn wait_file(path: &Path) {
    let end = Instant::now() + DEADLINE;
    while !path.exists() {
        assert!(Instant::now() < end, "{} never appeared", path.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Live (non-zombie) processes whose command line contains `needle` (Linux `/proc`).
fn pids_with(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = std::fs::read_to_string(e.path().join("stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        });
        if !zombie && cmdline.contains(needle) && pid != std::process::id() {
            pids.push(pid);
        }
    }
    pids
}

#[tokio::test]
async fn the_model_calls_an_mcp_tool_after_a_second_client_allows_it() {
    let mut w = world("serve", "10s").await;
    // Nothing starts before a run needs it.
    let idle = server_info(&mut w.c, "everything").await;
    assert_eq!(idle["state"], "idle", "{idle}");
    assert_eq!(idle["scope"], "global");

    let mut code = RawConn::initialized_as(&w.env.socket, "vscode").await;
    let r = code
        .request("session/subscribe", json!({"sessionId": w.session}))
        .await;
    assert!(r.get("result").is_some(), "{r}");

    w.mock.push(Script::text("Echoing.").tool_call(
        "call_1",
        "mcp__everything__echo",
        r#"{"message":"hello from crushd"}"#,
    ));
    w.mock.push(Script::text("Done."));
    let run = send(&mut w.c, &w.session, "echo something").await;

    let ask = code.daemon_request("permission/request").await;
    let p = &ask["params"];
    assert_eq!(p["tool"], "mcp__everything__echo");
    let title = p["title"].as_str().unwrap();
    assert!(
        title.contains("echo") && title.contains("mcp-server-everything stdio"),
        "the prompt names the tool and the command line: {title}"
    );
    code.reply(&ask, json!({"decision": "allow"})).await;

    let finished =
        w.c.wait_for("toolCallFinished", event("toolCallFinished"))
            .await;
    let f = &finished["params"];
    assert_eq!(f["tool"], "mcp__everything__echo");
    assert_eq!(f["status"], "completed", "{f}");
    assert_eq!(f["output"], "Echo: hello from crushd", "{f}");
    assert_eq!(f["metadata"]["mcpServer"], "everything");
    let done = w.c.run_complete(&run).await;
    assert_eq!(done["text"], "Done.", "{done}");

    // The model was offered the server's tools with their schemas, and got the real result.
    let reqs = w.mock.requests();
    let names = reqs[0].tool_names();
    assert!(
        names.contains(&"mcp__everything__echo".to_owned()),
        "{names:?}"
    );
    assert!(names.contains(&"mcp__t__slow".to_owned()), "{names:?}");
    assert!(names.contains(&"bash".to_owned()), "{names:?}");
    let results = reqs[1].tool_results();
    assert_eq!(
        results,
        vec![("call_1".to_owned(), "Echo: hello from crushd".to_owned())]
    );

    // Persisted like any tool result.
    let m =
        w.c.request("session/messages", json!({"sessionId": w.session}))
            .await;
    let text = m["result"].to_string();
    assert!(text.contains("Echo: hello from crushd"), "{text}");

    let ready = server_info(&mut w.c, "everything").await;
    assert_eq!(ready["state"], "ready", "{ready}");
    let tools: Vec<&str> = ready["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        tools.contains(&"echo") && tools.contains(&"get-sum"),
        "{ready}"
    );
    assert_eq!(ready["toolCount"], tools.len());
    assert!(ready["pid"].as_u64().is_some(), "{ready}");
    // The server's stderr reaches the daemon's log under its name.
    w.daemon.wait_for_log("crush-test-server serve", DEADLINE);
}

#[tokio::test]
async fn an_allow_listed_mcp_tool_runs_without_asking() {
    let mut w = world("serve", "10s").await;
    w.mock.push(Script::text("Adding.").tool_call(
        "call_1",
        "mcp__everything__get-sum",
        r#"{"a":2,"b":40}"#,
    ));
    w.mock.push(Script::text("It is 42."));
    let run = send(&mut w.c, &w.session, "add").await;
    let done = w.c.run_complete(&run).await;
    assert_eq!(done["text"], "It is 42.", "{done}");
    assert!(
        !w.c.kept()
            .iter()
            .any(|m| m["method"] == "permission/request"),
        "an allow-listed tool asked"
    );
    let results = w.mock.requests()[1].tool_results();
    assert!(results[0].1.contains("42"), "{results:?}");
}

#[tokio::test]
async fn a_server_killed_mid_call_fails_the_call_and_the_next_call_works_after_the_restart() {
    let mut w = world("serve", "10s").await;
    w.c.request(
        "session/setYolo",
        json!({"sessionId": w.session, "yolo": true}),
    )
    .await;
    w.mock
        .push(Script::text("Dying.").tool_call("call_1", "mcp__t__die", "{}"));
    w.mock.push(Script::text("It died."));
    let run = send(&mut w.c, &w.session, "die").await;
    let finished =
        w.c.wait_for("toolCallFinished", event("toolCallFinished"))
            .await;
    let f = &finished["params"];
    assert_eq!(f["status"], "failed", "{f}");
    let out = f["output"].as_str().unwrap();
    assert!(
        out.contains("MCP server t") && out.contains("exited during the call"),
        "{out}"
    );
    let done = w.c.run_complete(&run).await;
    assert_eq!(done["text"], "It died.", "{done}");

    let back = wait_server(&mut w.c, "t", "ready again", |s| {
        s["state"] == "ready" && s["restarts"].as_u64() >= Some(1)
    })
    .await;
    assert!(back["pid"].as_u64().is_some(), "{back}");

    w.mock.push(Script::text("Again.").tool_call(
        "call_2",
        "mcp__t__echo",
        r#"{"text":"still here"}"#,
    ));
    w.mock.push(Script::text("Fine."));
    let run = send(&mut w.c, &w.session, "echo").await;
    let done = w.c.run_complete(&run).await;
    assert_eq!(done["text"], "Fine.", "{done}");
    let results = w.mock.requests()[3].tool_results();
    assert_eq!(results.last().unwrap().1, "echo: still here", "{results:?}");
}

#[tokio::test]
async fn a_call_that_hangs_times_out_and_the_server_hears_the_cancellation() {
    let mut w = world("serve", "1s").await;
    w.c.request(
        "session/setYolo",
        json!({"sessionId": w.session, "yolo": true}),
    )
    .await;
    w.mock
        .push(Script::text("Waiting.").tool_call("call_1", "mcp__t__slow", r#"{"seconds":60}"#));
    w.mock.push(Script::text("Gave up."));
    let run = send(&mut w.c, &w.session, "wait").await;
    let done = w.c.run_complete(&run).await;
    assert_eq!(done["text"], "Gave up.", "{done}");
    let results = w.mock.requests()[1].tool_results();
    assert!(
        results[0].1.contains("did not answer slow within 1s"),
        "{results:?}"
    );
    wait_file(&w.state.join("slow.cancelled")).await;
}

#[tokio::test]
async fn cancelling_a_run_during_an_mcp_call_ends_it_promptly_and_cancels_the_call() {
    let mut w = world("serve", "30s").await;
    w.c.request(
        "session/setYolo",
        json!({"sessionId": w.session, "yolo": true}),
    )
    .await;
    w.mock
        .push(Script::text("Waiting.").tool_call("call_1", "mcp__t__slow", r#"{"seconds":60}"#));
    let run = send(&mut w.c, &w.session, "wait").await;
    wait_file(&w.state.join("slow.started")).await;
    let t = Instant::now();
    let r =
        w.c.request("agent/cancel", json!({"sessionId": w.session}))
            .await;
    assert!(r.get("result").is_some(), "{r}");
    let done = w.c.run_complete(&run).await;
    assert_eq!(done["cancelled"], true, "{done}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the run took {:?} to end",
        t.elapsed()
    );
    wait_file(&w.state.join("slow.cancelled")).await;
}

#[tokio::test]
async fn a_server_that_hangs_at_initialize_fails_and_the_run_completes() {
    let mut w = world_with("hang-init", "10s", "3s").await;
    w.c.request(
        "session/setYolo",
        json!({"sessionId": w.session, "yolo": true}),
    )
    .await;
    w.mock
        .push(Script::text("Trying.").tool_call("call_1", "mcp__t__echo", r#"{"text":"x"}"#));
    w.mock.push(Script::text("It is down."));
    let run = send(&mut w.c, &w.session, "echo").await;
    let done = w.c.run_complete(&run).await;
    assert_eq!(done["text"], "It is down.", "{done}");
    let reqs = w.mock.requests();
    // Its tools were not offered; the other server's were.
    let names = reqs[0].tool_names();
    assert!(
        !names.iter().any(|n| n.starts_with("mcp__t__")),
        "{names:?}"
    );
    assert!(
        names.contains(&"mcp__everything__echo".to_owned()),
        "{names:?}"
    );
    let out = &reqs[1].tool_results()[0].1;
    assert!(
        out.contains("MCP server t") && out.contains("did not finish starting"),
        "{out}"
    );
    let s = server_info(&mut w.c, "t").await;
    assert!(s["state"] == "failed" || s["state"] == "starting", "{s}");
    let err = s["lastError"].as_str().unwrap_or_default().to_owned();
    assert!(err.contains("within 3s (startup_timeout)"), "{s}");
    // The daemon and the other server are unaffected.
    let e = server_info(&mut w.c, "everything").await;
    assert_eq!(e["state"], "ready", "{e}");
}

#[tokio::test]
async fn mcp_restart_restarts_a_server_and_unknown_names_are_refused() {
    let mut w = world("serve", "10s").await;
    let r = w.c.request("mcp/restart", json!({"name": "t"})).await;
    assert!(r.get("result").is_some(), "{r}");
    let first = wait_server(&mut w.c, "t", "ready", |s| s["state"] == "ready").await;
    let r = w.c.request("mcp/restart", json!({"name": "t"})).await;
    assert!(r.get("result").is_some(), "{r}");
    let second = wait_server(&mut w.c, "t", "ready with a new process", |s| {
        s["state"] == "ready" && s["pid"] != first["pid"]
    })
    .await;
    assert_eq!(second["restarts"], 1, "{second}");
    let r = w.c.request("mcp/restart", json!({"name": "nope"})).await;
    assert_eq!(error_code(&r), Some(-32040), "{r}");
    assert!(r.to_string().contains("crushctl mcp list"), "{r}");

    // The CLI shows the same.
    let out = w.env.crushctl(&["mcp", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("t  ready"), "{text}");
    assert!(text.contains("everything  idle"), "{text}");
    let out = w.env.crushctl(&["mcp", "restart", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no MCP server is named"),
        "{out:?}"
    );
}

/// Starts the test server, then ends the daemon with `sig`; no process of the server remains.
async fn no_server_process_outlives_the_daemon(sig: Signal) {
    let mut w = world("serve", "10s").await;
    w.c.request("mcp/restart", json!({"name": "t"})).await;
    wait_server(&mut w.c, "t", "ready", |s| s["state"] == "ready").await;
    let needle = w.state.display().to_string();
    let pids = pids_with(&needle);
    // The guard and the Python server.
    assert!(pids.len() >= 2, "server processes: {pids:?}");
    w.daemon.signal(sig);
    w.daemon.wait_exit(DEADLINE);
    let end = Instant::now() + DEADLINE;
    loop {
        let left = pids_with(&needle);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < end,
            "MCP server processes outlived the daemon ({sig:?}): {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn no_mcp_process_remains_after_sigterm() {
    no_server_process_outlives_the_daemon(Signal::TERM).await;
}

#[tokio::test]
async fn no_mcp_process_remains_after_sigkill() {
    no_server_process_outlives_the_daemon(Signal::KILL).await;
}

/// A daemon with no global server and a project whose `.mcp.json` names the Python test server.
struct ProjectWorld {
    env: TestEnv,
    mock: MockLlm,
    project: PathBuf,
    state: PathBuf,
}

async fn project_world() -> ProjectWorld {
    let (_, py) = servers();
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_at(&mock.base_url());
    let state = env.dir.path().join("mcp-state");
    std::fs::create_dir_all(&state).unwrap();
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let file = json!({"mcpServers": {"proj": {
        "command": "python3",
        "args": [test_server(), "serve", state],
        "env": {"PYTHONPATH": py},
    }}});
    std::fs::write(project.join(".mcp.json"), file.to_string()).unwrap();
    ProjectWorld {
        env,
        mock,
        project,
        state,
    }
}

/// A new yolo session of the project, subscribed on `c`.
async fn yolo_session(c: &mut RawConn, project: &Path) -> String {
    let ws = c.request("workspace/open", json!({"path": project})).await;
    let s = c
        .request(
            "session/create",
            json!({"workspaceId": ws["result"]["workspaceId"]}),
        )
        .await;
    let session = s["result"]["sessionId"].as_str().unwrap().to_owned();
    c.request("session/subscribe", json!({"sessionId": session}))
        .await;
    // Yolo lets tool calls run without asking; it does not approve a project's servers.
    c.request(
        "session/setYolo",
        json!({"sessionId": session, "yolo": true}),
    )
    .await;
    session
}

fn echo_call(id: &str) -> Script {
    Script::text("Echoing.").tool_call(id, "mcp__proj__echo", r#"{"text":"hi"}"#)
}

#[tokio::test]
async fn project_servers_start_only_after_approval_which_is_remembered_for_the_workspace() {
    let w = project_world().await;
    let needle = w.state.display().to_string();
    let mut daemon = w.env.spawn_daemon(&[]);
    let mut c = RawConn::initialized_as(&w.env.socket, "nvim").await;

    // First session: the server is asked about, with its command line; denied, it never runs.
    let first = yolo_session(&mut c, &w.project).await;
    w.mock.push(echo_call("call_1"));
    w.mock.push(Script::text("No server."));
    let run = send(&mut c, &first, "echo").await;
    let ask = c.daemon_request("permission/request").await;
    let p = &ask["params"];
    assert_eq!(p["tool"], "mcp", "{p}");
    let title = p["title"].as_str().unwrap();
    assert!(
        title.contains(".mcp.json") && title.contains("test_server.py serve"),
        "{title}"
    );
    let s = server_info(&mut c, "proj").await;
    assert_eq!(s["state"], "unapproved", "{s}");
    assert_eq!(s["scope"], "project", "{s}");
    assert!(s["workspaceId"].is_string(), "{s}");
    assert!(pids_with(&needle).is_empty(), "started before approval");
    c.reply(&ask, json!({"decision": "deny"})).await;
    let done = c.run_complete(&run).await;
    assert_eq!(done["text"], "No server.", "{done}");
    let reqs = w.mock.requests();
    let names = reqs[0].tool_names();
    assert!(
        !names.iter().any(|n| n.starts_with("mcp__proj")),
        "{names:?}"
    );
    assert!(
        reqs[1].tool_results()[0].1.contains("not approved"),
        "{:?}",
        reqs[1].tool_results()
    );
    assert!(pids_with(&needle).is_empty(), "started although denied");
    let r = c.request("mcp/restart", json!({"name": "proj"})).await;
    assert_eq!(error_code(&r), Some(-32041), "{r}");

    // Second session: approved, it starts and its tool works.
    let second = yolo_session(&mut c, &w.project).await;
    w.mock.push(echo_call("call_2"));
    w.mock.push(Script::text("Echoed."));
    let run = send(&mut c, &second, "echo").await;
    let ask = c.daemon_request("permission/request").await;
    assert_eq!(ask["params"]["tool"], "mcp");
    c.reply(&ask, json!({"decision": "allow"})).await;
    let done = c.run_complete(&run).await;
    assert_eq!(done["text"], "Echoed.", "{done}");
    assert_eq!(
        w.mock.requests()[3].tool_results()[0].1,
        "echo: hi",
        "the approved server answered"
    );
    assert_eq!(server_info(&mut c, "proj").await["state"], "ready");

    // A new daemon remembers the approval: no question, the tool works.
    drop(c);
    daemon.signal(Signal::TERM);
    daemon.wait_exit(DEADLINE);
    let _daemon = w.env.spawn_daemon(&[]);
    let mut c = RawConn::initialized_as(&w.env.socket, "nvim").await;
    let third = yolo_session(&mut c, &w.project).await;
    w.mock.push(echo_call("call_3"));
    w.mock.push(Script::text("Again."));
    let run = send(&mut c, &third, "echo").await;
    let done = c.run_complete(&run).await;
    assert_eq!(done["text"], "Again.", "{done}");
    assert!(
        !c.kept().iter().any(|m| m["method"] == "permission/request"),
        "an approved server was asked about again"
    );
    assert_eq!(w.mock.requests()[5].tool_results()[0].1, "echo: hi");
}

/// The Python test server over streamable HTTP on a free loopback port; killed on drop.
struct HttpServer {
    child: std::process::Child,
    port: u16,
}

impl HttpServer {
    fn start(state: &Path) -> Self {
        let (_, py) = servers();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("python3")
            .arg(test_server())
            .arg("http")
            .arg(state)
            .arg(port.to_string())
            .env("PYTHONPATH", py)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Ready when it accepts connections (no event to wait on from another process).
        let end = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < end, "the HTTP MCP server never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_streamable_http_server_is_called_with_its_headers_and_secret_headers_from_the_environment()
 {
    let env = TestEnv::new();
    let state = env.dir.path().join("mcp-state");
    std::fs::create_dir_all(&state).unwrap();
    let server = HttpServer::start(&state);
    let mock = MockLlm::start().await;
    env.use_model_with(
        &mock.base_url(),
        "openai",
        &format!(
            "[mcp.servers.web]\nurl = \"http://127.0.0.1:{}/mcp\"\nheaders = {{ X-Plain = \"plain\" }}\n\
             headers_env = {{ X-Token = \"CRUSH_TEST_MCP_TOKEN\" }}\n",
            server.port
        ),
    );
    let mut cmd = env.command("crushd");
    cmd.arg("--foreground")
        .arg("--debug-methods")
        .env("CRUSH_TEST_MCP_TOKEN", "s3cret-value");
    let daemon = DaemonProcess::spawn(cmd);
    daemon.wait_for_log("listening", DEADLINE);
    let mut c = RawConn::initialized_as(&env.socket, "nvim").await;
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let session = yolo_session(&mut c, &project).await;
    mock.push(
        Script::text("Headers.")
            .tool_call("call_1", "mcp__web__header", r#"{"name":"x-token"}"#)
            .tool_call("call_2", "mcp__web__header", r#"{"name":"x-plain"}"#),
    );
    mock.push(Script::text("Done."));
    let run = send(&mut c, &session, "headers").await;
    let done = c.run_complete(&run).await;
    assert_eq!(done["text"], "Done.", "{done}");
    let results = mock.requests()[1].tool_results();
    assert_eq!(
        results,
        vec![
            ("call_1".to_owned(), "s3cret-value".to_owned()),
            ("call_2".to_owned(), "plain".to_owned())
        ]
    );
    let s = server_info(&mut c, "web").await;
    assert_eq!(s["state"], "ready", "{s}");
    assert_eq!(
        s["command"],
        format!("http://127.0.0.1:{}/mcp", server.port),
        "{s}"
    );
    assert!(s.get("pid").is_none(), "{s}");
    // The secret is not shown by config/get.
    let cfg = c.request("config/get", json!({})).await;
    assert!(!cfg.to_string().contains("s3cret-value"), "{cfg}");
}

/// A line that is not JSON-RPC on a server's stdout is skipped (the SDK's reading): the server
/// keeps working, and so does everything else.
#[tokio::test]
async fn a_server_that_writes_a_garbage_line_keeps_working_and_so_do_the_others() {
    let mut w = world_with("garbage", "10s", "10s").await;
    w.c.request(
        "session/setYolo",
        json!({"sessionId": w.session, "yolo": true}),
    )
    .await;
    w.mock.push(
        Script::text("Trying.")
            .tool_call("call_1", "mcp__t__echo", r#"{"text":"x"}"#)
            .tool_call("call_2", "mcp__everything__echo", r#"{"message":"y"}"#),
    );
    w.mock.push(Script::text("Done."));
    let run = send(&mut w.c, &w.session, "echo").await;
    let done = w.c.run_complete(&run).await;
    assert_eq!(done["text"], "Done.", "{done}");
    let results = w.mock.requests()[1].tool_results();
    assert_eq!(results[0].1, "echo: x", "{results:?}");
    assert_eq!(results[1].1, "Echo: y", "{results:?}");
    assert_eq!(server_info(&mut w.c, "t").await["state"], "ready");
}

/// A result that is not a `CallToolResult` fails that call with an error naming the server;
/// the server stays ready and its next call works.
#[tokio::test]
async fn a_malformed_result_fails_the_call_and_the_server_keeps_working() {
    let mut w = world_with("malformed", "10s", "10s").await;
    w.c.request(
        "session/setYolo",
        json!({"sessionId": w.session, "yolo": true}),
    )
    .await;
    w.mock
        .push(Script::text("Trying.").tool_call("call_1", "mcp__t__broken", "{}"));
    w.mock
        .push(Script::text("Again.").tool_call("call_2", "mcp__t__echo", r#"{"text":"ok"}"#));
    w.mock.push(Script::text("Done."));
    let run = send(&mut w.c, &w.session, "broken").await;
    let done = w.c.run_complete(&run).await;
    assert_eq!(done["text"], "Done.", "{done}");
    let reqs = w.mock.requests();
    let broken = &reqs[1].tool_results()[0].1;
    assert!(
        broken.contains("MCP server t") && !broken.contains("fine"),
        "the model hears the call failed and where: {broken}"
    );
    assert_eq!(reqs[2].tool_results().last().unwrap().1, "echo: ok");
    assert_eq!(server_info(&mut w.c, "t").await["state"], "ready");
}

#[tokio::test]
async fn a_server_that_will_not_start_is_failed_with_its_reason_and_the_run_completes() {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_with(
        &mock.base_url(),
        "openai",
        "[mcp.servers.gone]\ncommand = \"/nonexistent/mcp-server\"\nstartup_timeout = \"5s\"\n",
    );
    let _daemon = env.spawn_daemon(&[]);
    let mut c = RawConn::initialized_as(&env.socket, "nvim").await;
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let session = yolo_session(&mut c, &project).await;
    mock.push(Script::text("Trying.").tool_call("call_1", "mcp__gone__x", "{}"));
    mock.push(Script::text("Down."));
    let run = send(&mut c, &session, "x").await;
    let done = c.run_complete(&run).await;
    assert_eq!(done["text"], "Down.", "{done}");
    let out = &mock.requests()[1].tool_results()[0].1;
    assert!(out.contains("MCP server gone"), "{out}");
    let s = server_info(&mut c, "gone").await;
    let err = s["lastError"].as_str().unwrap_or_default();
    assert!(
        err.contains("/nonexistent/mcp-server") && err.contains("No such file"),
        "the reason names the program and the error: {s}"
    );
}

#[tokio::test]
async fn a_tool_list_change_reaches_the_next_step_of_the_same_run() {
    let mut w = world("serve", "10s").await;
    w.c.request(
        "session/setYolo",
        json!({"sessionId": w.session, "yolo": true}),
    )
    .await;
    // The model grows the server's tool list, then calls the new tool in the next step.
    w.mock
        .push(Script::text("Growing.").tool_call("call_1", "mcp__t__grow", "{}"));
    w.mock
        .push(Script::text("Extra.").tool_call("call_2", "mcp__t__extra", "{}"));
    w.mock.push(Script::text("Done."));
    let run = send(&mut w.c, &w.session, "grow").await;
    let done = w.c.run_complete(&run).await;
    assert_eq!(done["text"], "Done.", "{done}");
    let reqs = w.mock.requests();
    let extra = "mcp__t__extra".to_owned();
    assert!(
        !reqs[0].tool_names().contains(&extra),
        "offered before it existed"
    );
    assert!(
        reqs[1].tool_names().contains(&extra),
        "the step after the change offers it: {:?}",
        reqs[1].tool_names()
    );
    assert_eq!(reqs[2].tool_results().last().unwrap().1, "extra");
    let info = server_info(&mut w.c, "t").await;
    assert!(
        info["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "extra"),
        "{info}"
    );
}

#[tokio::test]
async fn allow_for_session_lets_the_next_call_of_that_tool_run_without_asking() {
    let mut w = world("serve", "10s").await;
    w.mock
        .push(Script::text("One.").tool_call("call_1", "mcp__t__echo", r#"{"text":"one"}"#));
    w.mock.push(Script::text("First."));
    let run = send(&mut w.c, &w.session, "one").await;
    let ask = w.c.daemon_request("permission/request").await;
    assert_eq!(ask["params"]["tool"], "mcp__t__echo");
    w.c.reply(&ask, json!({"decision": "allowSession"})).await;
    w.c.run_complete(&run).await;
    w.c.clear_kept();
    w.mock
        .push(Script::text("Two.").tool_call("call_2", "mcp__t__echo", r#"{"text":"two"}"#));
    w.mock.push(Script::text("Second."));
    let run = send(&mut w.c, &w.session, "two").await;
    let done = w.c.run_complete(&run).await;
    assert_eq!(done["text"], "Second.", "{done}");
    assert!(
        !w.c.kept()
            .iter()
            .any(|m| m["method"] == "permission/request"),
        "asked again after allowSession"
    );
    let results = w.mock.requests()[3].tool_results();
    assert_eq!(results.last().unwrap().1, "echo: two", "{results:?}");
}

#[tokio::test]
async fn an_oversized_result_is_cut_like_a_built_in_tool_output() {
    let mut w = world("serve", "10s").await;
    w.c.request(
        "session/setYolo",
        json!({"sessionId": w.session, "yolo": true}),
    )
    .await;
    w.mock
        .push(Script::text("Big.").tool_call("call_1", "mcp__t__big", r#"{"size":2000000}"#));
    w.mock.push(Script::text("Done."));
    let run = send(&mut w.c, &w.session, "big").await;
    let done = w.c.run_complete(&run).await;
    assert_eq!(done["text"], "Done.", "{done}");
    let out = &w.mock.requests()[1].tool_results()[0].1;
    assert!(out.len() < 40_000, "{} bytes reached the model", out.len());
    assert!(out.contains("bytes omitted"), "the cut is marked");
    assert!(out.starts_with("0123456789"), "the head is kept");
}
