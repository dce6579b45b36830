//! Black-box tests of the workspace snapshots behind `session/diff`: a real daemon whose mock
//! model calls the real tools (`write`, `edit`, `bash`), a real `git`, and the workspace on disk.
//! What a run did — `bash` included — is in its diff; the whole session's diff spans its runs;
//! files over the size cap are reported; the user's own repository is never touched.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crush_tests::mock_llm::{MockLlm, Script};
use crush_tests::{DaemonProcess, RawConn, TestEnv};

struct World {
    env: TestEnv,
    mock: MockLlm,
    _daemon: DaemonProcess,
    project: PathBuf,
    session: String,
    c: RawConn,
}

async fn world(extra: &str) -> World {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_with(&mock.base_url(), "openai", extra);
    let daemon = env.spawn_daemon(&[]);
    let mut c = RawConn::initialized(&env.socket).await;
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let ws = c.request("workspace/open", json!({"path": project})).await;
    let s = c
        .request(
            "session/create",
            json!({"workspaceId": ws["result"]["workspaceId"], "yolo": true}),
        )
        .await;
    let session = s["result"]["sessionId"].as_str().unwrap().to_owned();
    World {
        env,
        mock,
        _daemon: daemon,
        project,
        session,
        c,
    }
}

async fn run(w: &mut World, prompt: &str) -> Value {
    let r =
        w.c.request(
            "agent/send",
            json!({"sessionId": w.session, "prompt": prompt}),
        )
        .await;
    let id = r["result"]["runId"].as_str().unwrap().to_owned();
    let done = w.c.run_complete(&id).await;
    assert!(done.get("error").is_none(), "{done}");
    done
}

fn git(root: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(root)
        .env("GIT_AUTHOR_NAME", "u")
        .env("GIT_AUTHOR_EMAIL", "u@x")
        .env("GIT_COMMITTER_NAME", "u")
        .env("GIT_COMMITTER_EMAIL", "u@x")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn files(diff: &Value) -> Vec<(String, String)> {
    let mut f: Vec<(String, String)> = diff["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_owned(),
                f["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    f.sort();
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_diff_holds_what_its_tools_did_bash_included_and_the_repository_is_untouched() {
    let mut w = world("").await;
    let root = w.project.clone();
    git(&root, &["init", "-q"]);
    std::fs::write(root.join(".gitignore"), "target/\n").unwrap();
    std::fs::write(root.join("edit.txt"), "one\ntwo\nthree\n").unwrap();
    std::fs::write(root.join("gone.txt"), "delete me\n").unwrap();
    git(&root, &["add", "-A"]);
    git(&root, &["commit", "-qm", "base"]);
    let head = git(&root, &["rev-parse", "HEAD"]);
    let index = std::fs::read(root.join(".git/index")).unwrap();

    // One run: write two files, edit a third; bash deletes a fourth, makes a directory and
    // writes into the ignored target/.
    w.mock.push(
        Script::default()
            .tool_call("c1", "write", r#"{"path":"new1.txt","content":"first\n"}"#)
            .tool_call(
                "c2",
                "write",
                r#"{"path":"sub/new2.txt","content":"second\n"}"#,
            )
            .tool_call(
                "c3",
                "edit",
                r#"{"path":"edit.txt","old_string":"two","new_string":"TWO"}"#,
            ),
    );
    w.mock.push(Script::default().tool_call(
        "c4",
        "bash",
        r#"{"command":"rm gone.txt && mkdir -p made && echo made > made/file.txt && mkdir -p target && echo x > target/out.o"}"#,
    ));
    w.mock.push(Script::text("done"));
    run(&mut w, "change things").await;
    let messages =
        w.c.request("session/messages", json!({"sessionId": w.session}))
            .await;
    let first = messages["result"]["messages"][0]["messageId"].clone();

    let d =
        w.c.request(
            "session/diff",
            json!({"sessionId": w.session, "messageId": first}),
        )
        .await;
    let d = &d["result"];
    assert_eq!(
        files(d),
        [
            ("edit.txt".into(), "modified".into()),
            ("gone.txt".into(), "deleted".into()),
            ("made/file.txt".into(), "added".into()),
            ("new1.txt".into(), "added".into()),
            ("sub/new2.txt".into(), "added".into()),
        ]
    );
    let diff = d["diff"].as_str().unwrap();
    assert!(diff.contains("-two\n+TWO\n"), "{diff}");
    assert!(diff.contains("+first\n"), "{diff}");
    assert!(
        !diff.contains("target/"),
        "ignored files are not snapshotted: {diff}"
    );
    assert_eq!(d["skipped"], json!([]));

    // A second run: the session's diff spans both, the first run's stays its own.
    w.mock.push(Script::default().tool_call(
        "c5",
        "write",
        r#"{"path":"new1.txt","content":"first, again\n"}"#,
    ));
    w.mock.push(Script::text("again"));
    run(&mut w, "change it again").await;
    let whole =
        w.c.request("session/diff", json!({"sessionId": w.session}))
            .await;
    assert!(
        whole["result"]["diff"]
            .as_str()
            .unwrap()
            .contains("+first, again\n")
    );
    let again =
        w.c.request(
            "session/diff",
            json!({"sessionId": w.session, "messageId": first}),
        )
        .await;
    assert!(
        again["result"]["diff"]
            .as_str()
            .unwrap()
            .contains("+first\n")
    );

    // The user's repository: HEAD, index and stash as they were.
    assert_eq!(git(&root, &["rev-parse", "HEAD"]), head);
    assert_eq!(std::fs::read(root.join(".git/index")).unwrap(), index);
    assert_eq!(git(&root, &["stash", "list"]), "");

    // crushctl shows the same.
    let out = w
        .env
        .command("crushctl")
        .current_dir(&root)
        .args(["diff", "--stat"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("deleted   gone.txt"), "{stdout}");
    assert!(stdout.contains("added     made/file.txt"), "{stdout}");
    let out = w
        .env
        .command("crushctl")
        .current_dir(&root)
        .arg("diff")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("+first, again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_over_the_cap_are_reported_and_bad_requests_refused() {
    let mut w = world("[agent]\nsnapshot_max_file_bytes = 100\n").await;
    let big = "x".repeat(500);
    w.mock.push(Script::default().tool_call(
        "c1",
        "write",
        &json!({"path": "big.txt", "content": big}).to_string(),
    ));
    w.mock.push(Script::text("wrote it"));
    run(&mut w, "write a big file").await;
    let d =
        w.c.request("session/diff", json!({"sessionId": w.session}))
            .await;
    assert_eq!(d["result"]["skipped"], json!(["big.txt"]), "{d}");
    assert_eq!(d["result"]["files"], json!([]));
    let r =
        w.c.request(
            "session/diff",
            json!({"sessionId": w.session, "messageId": "nope"}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    let r =
        w.c.request("session/diff", json!({"sessionId": "nope"}))
            .await;
    assert_eq!(r["error"]["code"], -32011, "{r}");
}
