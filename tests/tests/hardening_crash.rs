//! Hardening: crash recovery and process cleanup, against a real `crushd` killed for real.
//!
//! - `kill -9` in the middle of a streaming run, and in the middle of a `write`/`edit` tool
//!   writing a large file; restart on the same data directory; the database passes
//!   `PRAGMA integrity_check`, the run is `interrupted` with its flushed text intact, a client
//!   coming back with its old cursor gets `resync`, and the file is whole (old or new, never
//!   half-written).
//! - `bash` tool processes (a `sleep 1000` started by the command) never outlive their run: on
//!   cancel, on timeout, on SIGTERM to the daemon and on SIGKILL to the daemon (the tool guard).
//!
//! No sleeps: every wait is on an event or a condition (a file, `/proc`) with a deadline.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use rustix::process::Signal;
use serde_json::{Value, json};
use sqlx::ConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use tokio_util::sync::CancellationToken;

use crush_tests::mock_llm::{MockLlm, Script};
use crush_tests::{DEADLINE, DaemonProcess, RawConn, TestEnv};

/// One daemon on one test environment, with a project directory, a session and a client that
/// follows it (with its cursor: epoch and last seq).
struct World {
    env: TestEnv,
    mock: MockLlm,
    daemon: DaemonProcess,
    project: PathBuf,
    session: String,
    c: RawConn,
    epoch: String,
}

async fn world() -> World {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_at(&mock.base_url());
    let daemon = env.spawn_daemon(&[]);
    let (mut c, init) =
        RawConn::initialized_with(&env.socket, json!({"clientId": "editor-crash"})).await;
    let epoch = init["epoch"].as_str().unwrap().to_owned();
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
    let sub = c
        .request("session/subscribe", json!({"sessionId": session}))
        .await;
    assert!(sub.get("result").is_some(), "{sub}");
    World {
        env,
        mock,
        daemon,
        project,
        session,
        c,
        epoch,
    }
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

/// The highest `seq` among the session events this connection has received (and kept).
fn last_seq(c: &RawConn) -> u64 {
    c.kept()
        .iter()
        .filter(|m| m["method"] == "$/sessionUpdate")
        .filter_map(|m| m["params"]["seq"].as_u64())
        .max()
        .unwrap_or(0)
}

/// `PRAGMA integrity_check` on the daemon's database file, opened read-write (so a WAL left by
/// a killed daemon is recovered as SQLite would) by this process, not by the daemon.
async fn integrity_check(env: &TestEnv) -> String {
    let path = env.data_dir().join("crushd.db");
    assert!(path.is_file(), "{} is missing", path.display());
    let mut conn = SqliteConnectOptions::from_str("sqlite://")
        .unwrap()
        .filename(&path)
        .connect()
        .await
        .unwrap();
    let rows: Vec<(String,)> = sqlx::query_as("PRAGMA integrity_check")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    drop(conn);
    rows.into_iter().map(|r| r.0).collect::<Vec<_>>().join("\n")
}

/// SIGKILLs the daemon and waits until it is gone.
fn kill9(d: &mut DaemonProcess) {
    d.signal(Signal::KILL);
    let status = d.wait_exit(DEADLINE);
    assert!(!status.success(), "{status:?}");
}

/// The text parts of a stored message, joined.
fn text_of(m: &Value) -> String {
    m["parts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "text")
        .map(|p| p["text"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn kill_9_mid_stream_keeps_the_flushed_text_and_the_run_is_interrupted() {
    let mut w = world().await;
    let gate = CancellationToken::new();
    w.mock.push(Script::chunks(6).held(gate.clone()));
    let run = send(&mut w.c, &w.session, "explain", json!({})).await;
    let streamed = "w0 w1 w2 w3 w4 w5";
    // Every delta reached the client (consecutive deltas may arrive merged)…
    let mut seen = String::new();
    let mut cursor = 0;
    while seen != streamed {
        let m =
            w.c.wait_for("a text delta", |m| m["params"]["kind"] == "textDelta")
                .await;
        seen.push_str(m["params"]["text"].as_str().unwrap());
        cursor = cursor.max(m["params"]["seq"].as_u64().unwrap());
    }
    // …and the database (the live message is flushed every flush interval).
    let end = Instant::now() + DEADLINE;
    let assistant = loop {
        let page =
            w.c.request("session/messages", json!({"sessionId": w.session}))
                .await;
        let msgs = page["result"]["messages"].as_array().unwrap().clone();
        if let Some(a) = msgs.iter().find(|m| m["role"] == "assistant")
            && text_of(a) == streamed
        {
            break a.clone();
        }
        assert!(
            Instant::now() < end,
            "the streamed text never reached the database: {page}"
        );
    };
    let status =
        w.c.request("agent/status", json!({"sessionId": w.session}))
            .await;
    assert_eq!(status["result"]["state"], "active", "{status}");
    let cursor = cursor.max(last_seq(&w.c));

    // The fault: SIGKILL while the model is still streaming.
    kill9(&mut w.daemon);
    assert_eq!(integrity_check(&w.env).await, "ok");

    let _d = w.env.spawn_daemon(&[]);
    assert_eq!(integrity_check(&w.env).await, "ok");
    let (mut c, init) =
        RawConn::initialized_with(&w.env.socket, json!({"clientId": "editor-crash"})).await;
    assert_ne!(init["epoch"].as_str().unwrap(), w.epoch, "a new epoch");
    let sub = c
        .request(
            "session/subscribe",
            json!({"sessionId": w.session, "afterSeq": cursor, "epoch": w.epoch}),
        )
        .await;
    assert_eq!(sub["result"]["resync"], true, "{sub}");
    assert_eq!(sub["result"]["replayed"], 0, "{sub}");
    assert_eq!(sub["result"]["status"]["state"], "idle", "{sub}");
    let status = c
        .request("agent/status", json!({"sessionId": w.session}))
        .await;
    assert_eq!(status["result"]["state"], "idle", "{status}");
    let got = c.request("run/get", json!({"runId": run})).await;
    assert_eq!(got["result"]["state"], "interrupted", "{got}");
    assert_eq!(
        got["result"]["error"], "the daemon stopped before the run finished",
        "{got}"
    );
    let page = c
        .request("session/messages", json!({"sessionId": w.session}))
        .await;
    let msgs = page["result"]["messages"].as_array().unwrap();
    let roles: Vec<&str> = msgs.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant"], "{page}");
    assert_eq!(msgs[1]["messageId"], assistant["messageId"]);
    assert_eq!(msgs[1]["finishReason"], "interrupted", "{page}");
    assert_eq!(text_of(&msgs[1]), streamed, "the flushed text is intact");

    // The session goes on: a new turn (whose history carries the interrupted answer) completes.
    w.mock.push(Script::text("still here"));
    let next = send(&mut c, &w.session, "go on", json!({})).await;
    let done = c.run_complete(&next).await;
    assert_eq!(done["text"], "still here", "{done}");
    gate.cancel();
}

/// Kills the daemon while a `tool` (`write` or `edit`) writes a large file: after the user
/// allows the call, the test watches the project directory and sends SIGKILL the moment the
/// tool's temporary file appears — between its creation and the rename. Returns whether that
/// window was hit (the temporary file was still there after the kill).
async fn kill_9_mid_file_tool(tool: &str) -> bool {
    let mut w = world().await;
    // The write's content streams through the model's SSE stream, slow in debug builds: 8 MiB.
    // The edit reads the file from disk: 16 MiB (its limit).
    let size = if tool == "write" {
        8 << 20
    } else {
        (16 << 20) - 64
    };
    let old = format!("OLD {}\n", "a".repeat(size - 5));
    let target = w.project.join("big.txt");
    std::fs::write(&target, &old).unwrap();
    let new = format!("NEW {}\n", "a".repeat(size - 5));
    let args = match tool {
        "write" => json!({"path": "big.txt", "content": new}),
        _ => json!({"path": "big.txt", "old_string": "OLD ", "new_string": "NEW "}),
    };
    w.mock.push(
        Script::default()
            .tool_call("call_big", tool, &args.to_string())
            .arg_pieces(64),
    );
    let run = send(&mut w.c, &w.session, "rewrite it", json!({})).await;
    let ask = w.c.daemon_request("permission/request").await;
    assert_eq!(ask["params"]["tool"], tool);
    w.c.reply(&ask, json!({"decision": "allow"})).await;

    // Busy-wait (no sleep) on the directory: the window lasts as long as writing and fsyncing
    // 16 MiB.
    let end = Instant::now() + DEADLINE;
    loop {
        if temp_files(&w.project).next().is_some() {
            break;
        }
        if std::fs::read(&target).is_ok_and(|b| b.starts_with(b"NEW ")) {
            break; // too late: the rename already happened
        }
        assert!(Instant::now() < end, "the tool never started writing");
        tokio::task::yield_now().await;
    }
    kill9(&mut w.daemon);
    let temps: Vec<String> = temp_files(&w.project).collect();
    let hit = !temps.is_empty();

    // The target is whole: the old content or the new one, never a mix or a short file.
    let now = std::fs::read(&target).unwrap();
    assert_eq!(now.len(), old.len(), "the target was truncated");
    assert!(
        now == old.as_bytes() || now == new.as_bytes(),
        "the target holds neither the old nor the new content"
    );
    if hit {
        assert_eq!(now, old.as_bytes(), "killed before the rename: still old");
        assert_eq!(temps.len(), 1, "{temps:?}");
    }
    assert_eq!(integrity_check(&w.env).await, "ok");

    let _d = w.env.spawn_daemon(&[]);
    assert_eq!(integrity_check(&w.env).await, "ok");
    let mut c = RawConn::initialized(&w.env.socket).await;
    let got = c.request("run/get", json!({"runId": run})).await;
    assert_eq!(got["result"]["state"], "interrupted", "{got}");
    let status = c
        .request("agent/status", json!({"sessionId": w.session}))
        .await;
    assert_eq!(status["result"]["state"], "idle", "{status}");
    let sub = c
        .request(
            "session/subscribe",
            json!({"sessionId": w.session, "afterSeq": last_seq(&w.c), "epoch": w.epoch}),
        )
        .await;
    assert_eq!(sub["result"]["resync"], true, "{sub}");
    // The stored conversation has the call; the next turn's history is repaired (a result for
    // the unanswered call) and the session goes on.
    w.mock.push(Script::text("after the crash"));
    let next = send(&mut c, &w.session, "go on", json!({})).await;
    let done = c.run_complete(&next).await;
    assert_eq!(done["text"], "after the crash", "{done}");
    let last = w.mock.requests().pop().unwrap();
    assert!(
        last.tool_results().iter().any(|(id, _)| id == "call_big"),
        "the interrupted call is answered in the history"
    );
    hit
}

/// The tool's temporary files in `dir` (`.NAME.crushd-PID-N.tmp`).
fn temp_files(dir: &Path) -> impl Iterator<Item = String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".crushd-") && n.ends_with(".tmp"))
}

/// The window is real but timing-dependent: up to three tries to land inside it. Every try, hit
/// or not, checks that the file is whole and the database sound.
async fn kill_9_mid_file_tool_until_hit(tool: &str) {
    for attempt in 1..=3 {
        if kill_9_mid_file_tool(tool).await {
            eprintln!("{tool}: killed between the temporary file and the rename on try {attempt}");
            return;
        }
        eprintln!("{tool}: try {attempt} killed the daemon after the rename");
    }
    panic!("{tool}: never killed the daemon mid-write in three tries");
}

#[tokio::test]
async fn kill_9_mid_write_never_leaves_a_half_written_file() {
    kill_9_mid_file_tool_until_hit("write").await;
}

#[tokio::test]
async fn kill_9_mid_edit_never_leaves_a_half_written_file() {
    kill_9_mid_file_tool_until_hit("edit").await;
}

// ---------------------------------------------------------------------------------------------
// bash processes never outlive their run

/// Waits until `cond` holds, failing after [`DEADLINE`]. For conditions no event announces (a
/// file another process writes, a process gone from /proc): checked every few milliseconds,
/// without blocking the runtime the mock model runs on.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting until {what}");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// Whether process `pid` has exited (gone from /proc, or a zombie waiting to be reaped).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// The parent pid and command line of a live process.
fn parent_and_cmdline(pid: u32) -> (u32, String) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ppid = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let cmd = std::fs::read(format!("/proc/{ppid}/cmdline")).unwrap_or_default();
    (ppid, String::from_utf8_lossy(&cmd).replace('\0', " "))
}

/// Starts a run whose bash call starts `sleep 1000` in the background (writing its pid to a
/// file) and waits for it; returns the run id, the sleep's pid and the guard's pid.
async fn start_sleeper(w: &mut World, extra_args: Value) -> (String, u32, u32) {
    let mut args = json!({"command": "sleep 1000 & echo $! > sleep.pid; wait"});
    for (k, v) in extra_args.as_object().unwrap() {
        args[k] = v.clone();
    }
    w.mock
        .push(Script::default().tool_call("call_sleep", "bash", &args.to_string()));
    w.mock.push(Script::text("done"));
    let run = send(&mut w.c, &w.session, "sleep", json!({"yolo": true})).await;
    let pid_file = w.project.join("sleep.pid");
    let mut pid = 0;
    eventually("the sleep wrote its pid", || {
        pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        pid != 0
    })
    .await;
    assert!(!gone(pid), "the sleep runs");
    // The process tree: sleep ← bash ← crushd --tool-guard ← crushd.
    let (bash, _) = parent_and_cmdline(pid);
    let (guard, guard_cmd) = parent_and_cmdline(bash);
    assert!(guard_cmd.contains("--tool-guard"), "{guard_cmd}");
    let (daemon, _) = parent_and_cmdline(guard);
    assert_eq!(daemon, w.daemon.pid());
    (run, pid, guard)
}

#[tokio::test]
async fn bash_processes_die_on_cancel() {
    let mut w = world().await;
    let (run, sleep, guard) = start_sleeper(&mut w, json!({})).await;
    let r =
        w.c.request("agent/cancel", json!({"sessionId": w.session}))
            .await;
    assert!(r.get("result").is_some(), "{r}");
    eventually("the sleep is gone after cancel", || gone(sleep)).await;
    eventually("the guard is gone after cancel", || gone(guard)).await;
    let done = w.c.run_complete(&run).await;
    assert_eq!(done["cancelled"], true, "{done}");
}

#[tokio::test]
async fn bash_processes_die_on_timeout() {
    let mut w = world().await;
    let (run, sleep, guard) = start_sleeper(&mut w, json!({"timeout_ms": 300})).await;
    eventually("the sleep is gone after the timeout", || gone(sleep)).await;
    eventually("the guard is gone after the timeout", || gone(guard)).await;
    let done = w.c.run_complete(&run).await;
    assert_eq!(done["text"], "done", "{done}");
    let result = &w.mock.requests()[1].tool_results()[0].1;
    assert!(result.contains("Timed out"), "{result}");
}

#[tokio::test]
async fn bash_processes_die_on_daemon_sigterm() {
    let mut w = world().await;
    let (_run, sleep, guard) = start_sleeper(&mut w, json!({})).await;
    w.daemon.signal(Signal::TERM);
    assert!(w.daemon.wait_exit(DEADLINE).success());
    eventually("the sleep is gone after SIGTERM", || gone(sleep)).await;
    eventually("the guard is gone after SIGTERM", || gone(guard)).await;
}

#[tokio::test]
async fn bash_processes_die_on_daemon_sigkill() {
    let mut w = world().await;
    let (_run, sleep, guard) = start_sleeper(&mut w, json!({})).await;
    let t = Instant::now();
    kill9(&mut w.daemon);
    // Nobody in the daemon cleans up now: the guard sees its lifeline close (and, on Linux,
    // its parent-death signal) and kills the group.
    eventually("the sleep is gone after SIGKILL", || gone(sleep)).await;
    eventually("the guard is gone after SIGKILL", || gone(guard)).await;
    eprintln!("sleep gone {:?} after the daemon's SIGKILL", t.elapsed());
}
