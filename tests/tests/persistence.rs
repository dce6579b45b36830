//! Black-box tests of persistence: workspaces, sessions, messages and runs over the socket,
//! surviving restarts, crash recovery, and storage faults — against a real `crushd` and a real
//! SQLite file in the test's own data directory.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};

use crush_tests::{DEADLINE, RawConn, TestEnv, error_code, error_message};

async fn open_workspace(c: &mut RawConn, path: &std::path::Path) -> Value {
    let r = c.request("workspace/open", json!({"path": path})).await;
    assert!(r.get("result").is_some(), "{r}");
    r["result"].clone()
}

#[tokio::test]
async fn workspace_open_canonicalizes_dedupes_and_names_bad_paths() {
    let env = TestEnv::new();
    let _d = env.spawn_daemon(&[]);
    let mut c = RawConn::initialized(&env.socket).await;
    let project = env.dir.path().join("project");
    std::fs::create_dir(&project).unwrap();
    let link = env.dir.path().join("link-to-project");
    std::os::unix::fs::symlink(&project, &link).unwrap();

    let ws = open_workspace(&mut c, &project).await;
    assert_eq!(
        ws["path"],
        project.canonicalize().unwrap().display().to_string()
    );
    let again = open_workspace(&mut c, &link).await;
    assert_eq!(
        again["workspaceId"], ws["workspaceId"],
        "same directory, same workspace"
    );

    let file = env.dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    for (path, needle) in [
        (json!("relative/dir"), "not an absolute path"),
        (
            json!(env.dir.path().join("missing").display().to_string()),
            "missing",
        ),
        (json!(file.display().to_string()), "not a directory"),
    ] {
        let r = c.request("workspace/open", json!({"path": path})).await;
        assert_eq!(error_code(&r), Some(-32602), "{r}");
        assert!(error_message(&r).contains(needle), "{r}");
    }
    let list = c.request("workspace/list", json!({})).await;
    assert_eq!(
        list["result"]["workspaces"].as_array().unwrap().len(),
        1,
        "{list}"
    );
}

#[tokio::test]
async fn sessions_create_list_get_rename_delete() {
    let env = TestEnv::new();
    let _d = env.spawn_daemon(&[]);
    let mut c = RawConn::initialized(&env.socket).await;
    let ws = open_workspace(&mut c, env.dir.path()).await;
    let wid = ws["workspaceId"].clone();

    let r = c
        .request("session/create", json!({"workspaceId": "nope"}))
        .await;
    assert_eq!(error_code(&r), Some(-32010), "{r}");
    assert!(error_message(&r).contains("\"nope\""), "{r}");

    let s1 = c
        .request("session/create", json!({"workspaceId": wid}))
        .await["result"]
        .clone();
    assert_eq!(s1["title"], "New session");
    assert_eq!(s1["messageCount"], 0);
    let s2 = c
        .request(
            "session/create",
            json!({"workspaceId": wid, "title": "refactor"}),
        )
        .await["result"]
        .clone();
    let sid = s2["sessionId"].as_str().unwrap().to_owned();
    let list = c.request("session/list", json!({"workspaceId": wid})).await;
    assert_eq!(
        list["result"]["sessions"].as_array().unwrap().len(),
        2,
        "{list}"
    );

    let got = c.request("session/get", json!({"sessionId": sid})).await;
    assert_eq!(got["result"], s2);
    let renamed = c
        .request(
            "session/rename",
            json!({"sessionId": sid, "title": "renamed"}),
        )
        .await;
    assert_eq!(renamed["result"]["title"], "renamed");
    let r = c
        .request("session/rename", json!({"sessionId": sid, "title": "  "}))
        .await;
    assert_eq!(error_code(&r), Some(-32602), "{r}");

    let page = c
        .request("session/messages", json!({"sessionId": sid}))
        .await;
    assert_eq!(page["result"], json!({"messages": [], "hasMore": false}));
    let r = c
        .request("session/messages", json!({"sessionId": sid, "limit": 0}))
        .await;
    assert_eq!(error_code(&r), Some(-32602), "{r}");

    let del = c.request("session/delete", json!({"sessionId": sid})).await;
    assert_eq!(del["result"]["deleted"], true);
    for method in ["session/get", "session/delete", "session/messages"] {
        let r = c.request(method, json!({"sessionId": sid})).await;
        assert_eq!(error_code(&r), Some(-32011), "{method}: {r}");
        assert!(error_message(&r).contains(&sid), "{r}");
    }
    let r = c.request("run/get", json!({"runId": "no-such-run"})).await;
    assert_eq!(error_code(&r), Some(-32012), "{r}");
    assert!(error_message(&r).contains("no-such-run"), "{r}");
}

#[tokio::test]
async fn sessions_survive_a_daemon_restart() {
    let env = TestEnv::new();
    let sid;
    {
        let mut d = env.spawn_daemon(&[]);
        let mut c = RawConn::initialized(&env.socket).await;
        let ws = open_workspace(&mut c, env.dir.path()).await;
        let s = c
            .request(
                "session/create",
                json!({"workspaceId": ws["workspaceId"], "title": "keep me"}),
            )
            .await;
        sid = s["result"]["sessionId"].clone();
        d.signal(rustix::process::Signal::TERM);
        assert!(d.wait_exit(DEADLINE).success());
    }
    let _d = env.spawn_daemon(&[]);
    let mut c = RawConn::initialized(&env.socket).await;
    let got = c.request("session/get", json!({"sessionId": sid})).await;
    assert_eq!(got["result"]["title"], "keep me", "{got}");
}

#[tokio::test]
async fn unfinished_runs_are_interrupted_after_a_crash() {
    let env = TestEnv::new();
    // What a daemon killed mid-run leaves behind: a running run, a half-streamed answer.
    let (sid, assistant) = {
        let store = crushd::store::Store::open(&env.data_dir()).await.unwrap();
        let ws = store.open_workspace("/tmp").await.unwrap();
        let s = store.create_session(&ws.id, "t", None).await.unwrap();
        // The writes a daemon makes: the accept, the turn's start, one flush of the answer.
        let accepted = store
            .accept_run(crushd::store::NewRun {
                run_id: "run-1".to_owned(),
                session_id: s.id.clone(),
                prompt: "explain".to_owned(),
                user_parts: r#"[{"type":"text","text":"explain"}]"#.to_owned(),
                created_at: crushd::store::now_ms(),
            })
            .await
            .unwrap();
        assert!(accepted);
        let a = store
            .start_turn(&crushd::store::StartTurn {
                run_id: "run-1",
                session_id: &s.id,
                prompt: "explain",
                user_parts: r#"[{"type":"text","text":"explain"}]"#,
                model: "mock",
                provider: "mock",
                title: None,
            })
            .await
            .unwrap()
            .assistant;
        let mut live =
            crushd::store::live::LiveMessage::new(a.id.clone(), std::time::Duration::ZERO);
        live.push_text("The answer is");
        live.flush(&store).await.unwrap();
        store.close().await;
        (s.id, a.id)
    };
    let _d = env.spawn_daemon(&[]);
    let mut c = RawConn::initialized(&env.socket).await;
    let run = c.request("run/get", json!({"runId": "run-1"})).await;
    assert_eq!(run["result"]["state"], "interrupted", "{run}");
    assert_eq!(
        run["result"]["error"],
        "the daemon stopped before the run finished"
    );
    let page = c
        .request("session/messages", json!({"sessionId": sid}))
        .await;
    // The run's prompt comes first (start_turn wrote it), then its answer.
    assert_eq!(page["result"]["messages"][0]["role"], "user", "{page}");
    let m = &page["result"]["messages"][1];
    assert_eq!(m["messageId"], assistant);
    assert_eq!(m["finishReason"], "interrupted");
    assert_eq!(
        m["parts"][0]["text"], "The answer is",
        "flushed text is intact"
    );
}

#[tokio::test]
async fn a_corrupt_database_stops_the_daemon_naming_the_file() {
    let env = TestEnv::new();
    std::fs::create_dir_all(env.data_dir()).unwrap();
    let db = env.data_dir().join("crushd.db");
    std::fs::write(&db, vec![0x5a; 16 * 1024]).unwrap();
    let out = env.command("crushd").arg("--foreground").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&db.display().to_string()), "{stderr}");
    assert!(stderr.contains("corrupt"), "{stderr}");
    assert!(!env.socket.exists(), "no socket left behind");
}

/// The full-disk fault, made real with a file-size limit (`ulimit -f`, which binds root too,
/// unlike a read-only directory): writes fail with a clear StorageFailed error, reads and other
/// connections keep working, and the daemon does not die.
#[tokio::test]
async fn a_full_disk_fails_writes_clearly_and_keeps_serving_reads() {
    let env = TestEnv::new();
    let crushd = crush_tests::bin("crushd");
    let mut cmd = std::process::Command::new("/bin/sh");
    // 2048 blocks: 1 MiB with 512-byte blocks (dash), 2 MiB with 1 KiB blocks (bash).
    cmd.arg("-c")
        .arg("ulimit -f 2048 && exec \"$0\" --foreground --debug-methods")
        .arg(&crushd);
    env.apply_env(&mut cmd);
    let d = crush_tests::DaemonProcess::spawn(cmd);
    d.wait_for_log("listening", DEADLINE);
    let mut c = RawConn::initialized(&env.socket).await;
    let ws = open_workspace(&mut c, env.dir.path()).await;
    let big_title = "x".repeat(64 * 1024);
    let mut failure = None;
    for _ in 0..200 {
        let r = c
            .request(
                "session/create",
                json!({"workspaceId": ws["workspaceId"], "title": big_title}),
            )
            .await;
        if r.get("error").is_some() {
            failure = Some(r);
            break;
        }
    }
    let failure = failure.expect("the file-size limit was never hit");
    assert_eq!(error_code(&failure), Some(-32020), "{failure}");
    assert!(error_message(&failure).contains("database"), "{failure}");
    // Reads still work, on this connection and a new one.
    let list = c.request("workspace/list", json!({})).await;
    assert!(list.get("result").is_some(), "{list}");
    let mut other = RawConn::initialized(&env.socket).await;
    other.assert_alive().await;
    let r = other
        .request("session/list", json!({"workspaceId": ws["workspaceId"]}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
}
