//! Black-box tests of the foundation: a real `crushd` process on a real socket in a private temp
//! directory, spoken to in raw bytes, through `crush-client`, and through `crushctl`.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::Stdio;

use serde_json::{Value, json};

use crush_tests::{
    DEADLINE, RawConn, TestEnv, crushd_pids_with, error_code, error_message, eventually,
};

#[tokio::test]
async fn initialize_handshake_reports_server_pid_and_client_id() {
    let env = TestEnv::new();
    let d = env.spawn_daemon(&[]);
    let mut c = RawConn::connect(&env.socket).await;
    let r = c
        .request(
            "initialize",
            json!({"clientInfo": {"name": "nvim", "version": "0.10"}, "clientId": "abc-123", "protocolVersion": 1}),
        )
        .await;
    let res = &r["result"];
    assert_eq!(res["serverInfo"]["name"], "crushd");
    assert_eq!(res["protocolVersion"], 1);
    assert_eq!(res["pid"], d.pid());
    assert_eq!(res["clientId"], "abc-123");
    assert_eq!(res["capabilities"]["maxMessageSize"], 16 * 1024 * 1024);
    c.notify("initialized", json!({})).await;
    let st = c.request("daemon/status", json!({})).await;
    assert_eq!(st["result"]["pid"], d.pid());
    assert_eq!(st["result"]["connections"], 1);
}

#[tokio::test]
async fn request_before_initialize_is_refused_and_the_connection_lives() {
    let env = TestEnv::new();
    let _d = env.spawn_daemon(&[]);
    let mut c = RawConn::connect(&env.socket).await;
    let r = c.request("daemon/status", json!({})).await;
    assert_eq!(error_code(&r), Some(-32002), "{r}");
    assert!(error_message(&r).contains("initialize"), "{r}");
    let r = c.request("initialize", json!({})).await;
    assert!(r.get("result").is_some(), "{r}");
    let r = c.request("initialize", json!({})).await;
    assert_eq!(
        error_code(&r),
        Some(-32600),
        "a second initialize is refused: {r}"
    );
}

#[tokio::test]
async fn unknown_method_and_bad_params_get_precise_errors() {
    let env = TestEnv::new();
    let _d = env.spawn_daemon(&[]);
    let mut c = RawConn::initialized(&env.socket).await;
    let r = c.request("workspace/frobnicate", json!({})).await;
    assert_eq!(error_code(&r), Some(-32601), "{r}");
    assert!(error_message(&r).contains("workspace/frobnicate"), "{r}");

    let r = c.request("debug/sleep", json!({"ms": "soon"})).await;
    assert_eq!(error_code(&r), Some(-32602), "{r}");
    assert!(error_message(&r).contains("ms"), "names the field: {r}");
    let r = c.request("debug/sleep", json!({})).await;
    assert!(error_message(&r).contains("missing field `ms`"), "{r}");
    let r = c.request("debug/sleep", json!([5])).await;
    assert_eq!(error_code(&r), Some(-32602), "positional params: {r}");

    let mut c2 = RawConn::connect(&env.socket).await;
    let r = c2
        .request("initialize", json!({"clientInfo": {"name": 5}}))
        .await;
    assert_eq!(error_code(&r), Some(-32602), "{r}");
    assert!(error_message(&r).contains("clientInfo.name"), "{r}");
}

#[tokio::test]
async fn methods_without_params_accept_missing_object_array_and_null() {
    let env = TestEnv::new();
    let _d = env.spawn_daemon(&[]);
    let mut c = RawConn::initialized(&env.socket).await;
    for (i, params) in [None, Some(json!({})), Some(json!([])), Some(Value::Null)]
        .into_iter()
        .enumerate()
    {
        let mut msg = json!({"jsonrpc": "2.0", "id": i, "method": "daemon/status"});
        if let Some(p) = params {
            msg["params"] = p;
        }
        c.send(msg).await;
        let r = c.response(i as u64).await;
        assert!(r["result"]["pid"].is_u64(), "{r}");
    }
}

#[tokio::test]
async fn malformed_json_gets_parse_error_and_keeps_the_connection() {
    let env = TestEnv::new();
    let _d = env.spawn_daemon(&[]);
    let mut c = RawConn::initialized(&env.socket).await;
    c.send_bytes(b"Content-Length: 6\r\n\r\n{oops}").await;
    let r = c.recv().await;
    assert_eq!(error_code(&r), Some(-32700), "{r}");
    assert_eq!(r["id"], Value::Null);
    // A batch is valid JSON but unsupported.
    c.send(json!([{"jsonrpc": "2.0", "id": 1, "method": "daemon/status"}]))
        .await;
    let r = c.recv().await;
    assert_eq!(error_code(&r), Some(-32600), "{r}");
    assert!(error_message(&r).contains("batch"), "{r}");
    c.assert_alive().await;
}

#[tokio::test]
async fn bad_header_closes_only_that_connection() {
    let env = TestEnv::new();
    let d = env.spawn_daemon(&[]);
    let mut good = RawConn::initialized(&env.socket).await;
    for garbage in [
        &b"Content-Length: abc\r\n\r\n"[..],
        b"Content-Type: application/json\r\n\r\n{}",
        b"hello there\r\n\r\n",
    ] {
        let mut bad = RawConn::connect(&env.socket).await;
        bad.send_bytes(garbage).await;
        let got = bad.recv_until_closed().await;
        assert_eq!(got.len(), 1, "one parse error, then close: {got:?}");
        assert_eq!(error_code(&got[0]), Some(-32700));
        assert!(
            error_message(&got[0]).contains("closing the connection"),
            "{:?}",
            got[0]
        );
    }
    d.wait_for_log("unreadable frame header", DEADLINE);
    good.assert_alive().await;
}

#[tokio::test]
async fn oversized_message_is_refused_before_it_is_read() {
    let env = TestEnv::new();
    let _d = env.spawn_daemon(&["--max-message-size", "1024"]);
    let mut good = RawConn::initialized(&env.socket).await;
    let mut big = RawConn::initialized(&env.socket).await;
    let huge = json!({"jsonrpc": "2.0", "id": 1, "method": "daemon/status", "params": {"pad": "x".repeat(4096)}});
    big.send(huge).await;
    let got = big.recv_until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(error_code(&got[0]), Some(-32700));
    assert!(
        error_message(&got[0]).contains("exceeds the maximum of 1024 bytes"),
        "{:?}",
        got[0]
    );
    good.assert_alive().await;
}

#[tokio::test]
async fn cancel_request_stops_a_slow_request() {
    let env = TestEnv::new();
    let _d = env.spawn_daemon(&[]);
    let mut c = RawConn::initialized(&env.socket).await;
    let slow = c.start("debug/sleep", json!({"ms": 600_000})).await;
    // A slow request never blocks the connection: this one is answered first.
    let fast = c.start("daemon/status", json!({})).await;
    let first = c.recv().await;
    assert_eq!(
        first["id"],
        json!(fast),
        "the fast request is answered first: {first}"
    );
    c.notify("$/cancelRequest", json!({"id": slow})).await;
    let r = c.response(slow).await;
    assert_eq!(error_code(&r), Some(-32800), "{r}");
    // Cancelling something already finished, or unknown, is harmless.
    c.notify("$/cancelRequest", json!({"id": slow})).await;
    c.notify("$/cancelRequest", json!({"id": "never-sent"}))
        .await;
    c.assert_alive().await;
}

#[tokio::test]
async fn debug_methods_are_unknown_without_the_flag() {
    let env = TestEnv::new();
    let mut cmd = env.command("crushd");
    cmd.arg("--foreground");
    let d = crush_tests::DaemonProcess::spawn(cmd);
    d.wait_for_log("listening", DEADLINE);
    let mut c = RawConn::initialized(&env.socket).await;
    let r = c.request("debug/sleep", json!({"ms": 1})).await;
    assert_eq!(error_code(&r), Some(-32601), "{r}");
    assert!(error_message(&r).contains("--debug-methods"), "{r}");
}

#[tokio::test]
async fn two_connections_are_served_concurrently_and_independently() {
    let env = TestEnv::new();
    let _d = env.spawn_daemon(&[]);
    let mut a = RawConn::initialized(&env.socket).await;
    let mut b = RawConn::initialized(&env.socket).await;
    let _slow = a.start("debug/sleep", json!({"ms": 600_000})).await;
    let r = b.request("daemon/status", json!({})).await;
    assert_eq!(r["result"]["connections"], 2, "{r}");
    // A vanishes mid-request; B never notices.
    drop(a);
    let r = b.request("debug/sleep", json!({"ms": 1})).await;
    assert_eq!(r["result"]["sleptMs"], 1);
    // The daemon notices A is gone (its in-flight request is cancelled with it).
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let r = b.request("daemon/status", json!({})).await;
        if r["result"]["connections"] == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "connection count stuck at {r}"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn exit_and_shutdown_follow_the_lsp_lifecycle() {
    let env = TestEnv::new();
    let _d = env.spawn_daemon(&[]);
    let mut other = RawConn::initialized(&env.socket).await;
    let mut c = RawConn::initialized(&env.socket).await;
    let r = c.request("shutdown", Value::Null).await;
    assert_eq!(r["result"], Value::Null, "{r}");
    let r = c.request("daemon/status", json!({})).await;
    assert_eq!(
        error_code(&r),
        Some(-32600),
        "after shutdown only exit: {r}"
    );
    c.notify("exit", json!({})).await;
    assert!(c.recv_until_closed().await.is_empty());
    other.assert_alive().await;
}

#[tokio::test]
async fn daemon_to_client_requests_round_trip_and_time_out() {
    let env = TestEnv::new();
    let d = env.spawn_daemon(&[]);
    let mut c = RawConn::initialized(&env.socket).await;
    let call = c
        .start(
            "debug/clientRequest",
            json!({"method": "test/echo", "params": {"x": 1}}),
        )
        .await;
    let req = c.recv().await;
    assert_eq!(req["method"], "test/echo", "{req}");
    assert_eq!(req["params"], json!({"x": 1}));
    c.send(json!({"jsonrpc": "2.0", "id": req["id"], "result": {"y": 2}}))
        .await;
    let r = c.response(call).await;
    assert_eq!(r["result"], json!({"y": 2}), "{r}");

    // Unanswered: the daemon gives up, tells us, and answers the caller with RequestTimeout.
    let call = c
        .start(
            "debug/clientRequest",
            json!({"method": "test/ignored", "timeoutMs": 100}),
        )
        .await;
    let req = c.recv().await;
    assert_eq!(req["method"], "test/ignored");
    let cancel = c.recv().await;
    assert_eq!(cancel["method"], "$/cancelRequest", "{cancel}");
    assert_eq!(cancel["params"]["id"], req["id"]);
    let r = c.response(call).await;
    assert_eq!(error_code(&r), Some(-32004), "{r}");

    // A late or unknown response is logged and dropped; the connection carries on.
    c.send(json!({"jsonrpc": "2.0", "id": req["id"], "result": "late"}))
        .await;
    d.wait_for_log("matches no request", DEADLINE);
    c.assert_alive().await;
}

#[tokio::test]
async fn client_library_typed_calls_and_request_handler() {
    use crush_client::{Client, ConnectOptions};
    use crush_protocol::{NoParams, request};
    let env = TestEnv::new();
    let _d = env.spawn_daemon(&[]);
    let handler: crush_client::RequestHandler = std::sync::Arc::new(|method, params| {
        Box::pin(async move { Ok(json!({"method": method, "echo": params})) })
    });
    let client = Client::connect(ConnectOptions {
        socket: Some(env.socket.clone()),
        autostart: false,
        client_id: Some("lib-test".into()),
        request_handler: Some(handler),
        ..ConnectOptions::default()
    })
    .await
    .unwrap();
    assert_eq!(client.server().client_id, "lib-test");
    let st = client
        .request::<request::DaemonStatus>(NoParams)
        .await
        .unwrap();
    assert_eq!(st.connections, 1);
    let echoed = client
        .request::<request::DebugClientRequest>(crush_protocol::DebugClientRequestParams {
            method: "test/ask".into(),
            params: json!([1, 2]),
            timeout_ms: None,
        })
        .await
        .unwrap();
    assert_eq!(echoed, json!({"method": "test/ask", "echo": [1, 2]}));
    let (id, fut) = client.start_request("debug/sleep", &json!({"ms": 600_000}));
    client.cancel_request(&id);
    let err = fut.await.unwrap_err();
    assert!(
        matches!(err, crush_client::ClientError::Rpc(ref e) if e.code == -32800),
        "{err}"
    );
    client.shutdown().await.unwrap();
}

#[tokio::test]
async fn socket_is_0600_in_a_0700_directory() {
    let env = TestEnv::new();
    let _d = env.spawn_daemon(&[]);
    let meta = std::fs::symlink_metadata(&env.socket).unwrap();
    assert!(
        meta.file_type().is_socket(),
        "a filesystem socket, not an abstract one"
    );
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let dir = std::fs::symlink_metadata(env.socket.parent().unwrap()).unwrap();
    assert_eq!(dir.permissions().mode() & 0o777, 0o700);
}

#[tokio::test]
async fn unsafe_socket_directories_are_refused_with_the_reason() {
    let env = TestEnv::new();
    let dir = env.socket.parent().unwrap();
    std::fs::create_dir(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = env.command("crushd").arg("--foreground").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("chmod 700"), "{stderr}");

    let env2 = TestEnv::new();
    let real = env2.dir.path().join("elsewhere");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&real, env2.socket.parent().unwrap()).unwrap();
    let out = env2.command("crushd").arg("--foreground").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("symbolic link"), "{stderr}");
}

/// Runs a client as another user for real (`setpriv` as root). The directory and socket are
/// opened up after start so the kernel lets the other user reach the socket at all; the daemon's
/// own peer-credential check must then refuse it.
#[tokio::test]
async fn a_client_of_another_uid_is_refused() {
    if !rustix::process::geteuid().is_root() || !std::path::Path::new("/usr/bin/setpriv").exists() {
        eprintln!(
            "SKIPPED: needs root and setpriv to run a client as another uid; the check is unit-tested in transport.rs"
        );
        return;
    }
    let env = TestEnv::new();
    let d = env.spawn_daemon(&[]);
    let mut mine = RawConn::initialized(&env.socket).await;
    for p in [env.dir.path(), env.socket.parent().unwrap()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    std::fs::set_permissions(&env.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let ctl = env.dir.path().join("crushctl");
    std::fs::copy(crush_tests::bin("crushctl"), &ctl).unwrap();
    std::fs::set_permissions(&ctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new("/usr/bin/setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&ctl)
        .arg("--socket")
        .arg(&env.socket)
        .args(["--no-autostart", "daemon", "status"])
        .env("HOME", "/")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the other uid got an answer: {out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "{out:?}"
    );
    let line = d.wait_for_log("refused a connection", DEADLINE);
    assert!(line.contains("peer uid 65534"), "{line}");
    mine.assert_alive().await;
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced() {
    let env = TestEnv::new();
    let dir = env.socket.parent().unwrap();
    std::fs::create_dir(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&env.socket).unwrap());
    assert!(env.socket.exists(), "a socket file with nobody behind it");
    let d = env.spawn_daemon(&[]);
    d.wait_for_log("replacing stale socket", DEADLINE);
    let mut c = RawConn::initialized(&env.socket).await;
    c.assert_alive().await;
}

#[tokio::test]
async fn a_second_daemon_is_refused_naming_the_first() {
    let env = TestEnv::new();
    let first = env.spawn_daemon(&[]);
    let out = env.command("crushd").arg("--foreground").output().unwrap();
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("already running as pid {}", first.pid())),
        "{stderr}"
    );
    let mut c = RawConn::initialized(&env.socket).await;
    c.assert_alive().await;
}

/// Stops whatever daemon serves `env` when dropped, so a failing test leaks no process.
struct StopOnDrop<'a>(&'a TestEnv);
impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.crushctl(&["--no-autostart", "daemon", "stop"]);
        for pid in crushd_pids_with(&self.0.socket.display().to_string()) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

#[tokio::test]
async fn racing_autostarts_end_with_exactly_one_daemon() {
    let env = TestEnv::new();
    let _stop = StopOnDrop(&env);
    let spawn = || {
        env.command("crushctl")
            .args(["daemon", "start"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children: Vec<_> = (0..4).map(|_| spawn()).collect();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut pids = Vec::new();
    for out in &outputs {
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let pid: u32 = text
            .split("pid ")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        pids.push(pid);
    }
    pids.dedup();
    assert_eq!(
        pids.len(),
        1,
        "every client reached the same daemon: {outputs:?}"
    );
    // Losers of the lock race exit by themselves once the winner answers.
    let needle = env.socket.display().to_string();
    eventually("exactly one crushd process is left", || {
        crushd_pids_with(&needle) == pids
    });
    // Background mode logs to the state directory, which `daemon logs` reads.
    let logs = env.crushctl(&["daemon", "logs", "-n", "50"]);
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains("listening"),
        "{logs:?}"
    );
    let stop = env.crushctl(&["daemon", "stop"]);
    assert!(stop.status.success(), "{stop:?}");
    // `stop` returns once the daemon released its lock; the process exits right after.
    eventually("the daemon process is gone", || {
        crushd_pids_with(&needle).is_empty()
    });
    assert!(!env.socket.exists());
}

#[tokio::test]
async fn sigterm_notifies_clients_and_removes_the_socket() {
    let env = TestEnv::new();
    let mut d = env.spawn_daemon(&[]);
    let mut c = RawConn::initialized(&env.socket).await;
    d.signal(rustix::process::Signal::TERM);
    let got = c.recv_until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["method"], "$/daemonShutdown");
    assert_eq!(got[0]["params"]["reason"], "signal");
    let status = d.wait_exit(DEADLINE);
    assert!(status.success(), "{status:?}");
    assert!(!env.socket.exists(), "socket removed");
}

#[tokio::test]
async fn idle_daemon_exits_on_its_own() {
    let env = TestEnv::new();
    let mut d = env.spawn_daemon(&["--idle-timeout", "300ms"]);
    {
        let mut c = RawConn::initialized(&env.socket).await;
        assert!(c.request("daemon/status", json!({})).await["result"]["idleTimeoutMs"] == 300);
    }
    d.wait_for_log(
        "no connections, runs or returning clients; exiting",
        DEADLINE,
    );
    let status = d.wait_exit(DEADLINE);
    assert!(status.success(), "{status:?}");
    assert!(!env.socket.exists());
}

#[tokio::test]
async fn crushctl_proxy_bridges_stdio_byte_for_byte() {
    let env = TestEnv::new();
    let _d = env.spawn_daemon(&[]);
    let mut child = env
        .command("crushctl")
        .arg("proxy")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = Vec::new();
    for msg in [
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"clientInfo": {"name": "stdio-editor"}}}),
        json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "daemon/status"}),
    ] {
        input.extend(crush_protocol::codec::frame(
            &serde_json::to_vec(&msg).unwrap(),
        ));
    }
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    assert!(child.wait().unwrap().success());
    let text = String::from_utf8(out).unwrap();
    let bodies: Vec<Value> = text
        .split("Content-Length: ")
        .filter(|s| !s.is_empty())
        .map(|s| serde_json::from_str(s.split_once("\r\n\r\n").unwrap().1).unwrap())
        .collect();
    assert_eq!(bodies.len(), 2, "{text}");
    assert_eq!(bodies[0]["result"]["serverInfo"]["name"], "crushd");
    assert_eq!(bodies[1]["id"], 2);
    assert!(bodies[1]["result"]["pid"].is_u64());
}

#[tokio::test]
async fn crushctl_status_and_stop() {
    let env = TestEnv::new();
    let out = env.crushctl(&["status"]);
    assert_eq!(out.status.code(), Some(3), "not running is exit 3: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("not running"));

    let mut d = env.spawn_daemon(&[]);
    let out = env.crushctl(&["status", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["running"], true);
    assert_eq!(v["pid"], d.pid());

    let out = env.crushctl(&["daemon", "stop"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("stopped"));
    assert!(d.wait_exit(DEADLINE).success());
    assert!(!env.socket.exists());
}

#[tokio::test]
async fn failed_autostart_names_the_log_file() {
    let env = TestEnv::new();
    let dir = env.socket.parent().unwrap();
    std::fs::create_dir(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = env.crushctl(&["daemon", "start"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("crushd did not start"), "{stderr}");
    let log = env.state_dir().join(crush_protocol::paths::STDIO_LOG_FILE);
    assert!(stderr.contains(&log.display().to_string()), "{stderr}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("chmod 700"), "the log says why: {text}");
}

#[tokio::test]
async fn bad_config_file_names_file_line_and_key() {
    let env = TestEnv::new();
    let cfg = env.dir.path().join("bad.toml");
    std::fs::write(&cfg, "[daemon]\n\nidle_timeout = \"whenever\"\n").unwrap();
    let out = env
        .command("crushd")
        .arg("--foreground")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:3: key `daemon.idle_timeout`", cfg.display())),
        "{stderr}"
    );
}

/// The flags that set `[daemon]` keys say what the config file's rows say, written once.
#[test]
fn daemon_flags_show_their_settings_docs_as_help() {
    let out = std::process::Command::new(crush_tests::bin("crushd"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for key in ["data_dir", "idle_timeout", "max_message_size"] {
        let doc = crushd::config::DaemonSettings::doc(key);
        assert!(!doc.is_empty(), "[daemon] {key} has a doc");
        let flag = format!("--{}", key.replace('_', "-"));
        let shown = help
            .split(&flag)
            .nth(1)
            .unwrap_or_else(|| panic!("{flag} missing from --help:\n{help}"));
        assert!(
            shown
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .contains(&doc),
            "{flag}'s help is not its setting's doc {doc:?}:\n{help}"
        );
    }
}
