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

/// Mode and content of a file, or `None` when it is absent.
fn state(root: &Path, rel: &str) -> Option<(u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    let p = root.join(rel);
    let meta = std::fs::metadata(&p).ok()?;
    Some((meta.permissions().mode() & 0o777, std::fs::read(p).unwrap()))
}

/// The run of the issue: writes two files, edits a third, and `bash` deletes a fourth and
/// creates a directory with a file.
fn push_changing_run(mock: &MockLlm) {
    mock.push(
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
    mock.push(Script::default().tool_call(
        "c4",
        "bash",
        r#"{"command":"rm gone.sh && mkdir -p made/deep && echo made > made/deep/file.txt"}"#,
    ));
    mock.push(Script::text("changed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_puts_the_files_back_hides_the_turn_and_unrevert_brings_both_back() {
    use std::os::unix::fs::PermissionsExt;
    let mut w = world("").await;
    let root = w.project.clone();
    std::fs::write(root.join("edit.txt"), "one\ntwo\nthree\n").unwrap();
    std::fs::write(root.join("gone.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(root.join("gone.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    w.mock.push(Script::text("hello"));
    run(&mut w, "first turn").await;
    let paths = [
        "new1.txt",
        "sub/new2.txt",
        "edit.txt",
        "gone.sh",
        "made/deep/file.txt",
    ];
    let before: Vec<_> = paths.iter().map(|p| state(&root, p)).collect();
    push_changing_run(&w.mock);
    run(&mut w, "change everything").await;
    let after: Vec<_> = paths.iter().map(|p| state(&root, p)).collect();
    assert_ne!(before, after);

    let messages =
        w.c.request("session/messages", json!({"sessionId": w.session}))
            .await;
    let msgs = messages["result"]["messages"].as_array().unwrap().clone();
    let prompt = msgs
        .iter()
        .find(|m| m["parts"][0]["text"] == "change everything")
        .unwrap()["messageId"]
        .clone();
    w.c.request("session/subscribe", json!({"sessionId": w.session}))
        .await;
    let r =
        w.c.request(
            "session/revert",
            json!({"sessionId": w.session, "messageId": prompt}),
        )
        .await;
    let r = &r["result"];
    assert_eq!(r["done"], true, "{r}");
    assert_eq!(r["messages"], msgs.len() - 2, "the turn's messages: {r}");
    // Every file exactly as before the run: content and mode; what it created is gone.
    let reverted: Vec<_> = paths.iter().map(|p| state(&root, p)).collect();
    assert_eq!(reverted, before);
    assert!(
        !root.join("made").exists(),
        "the directory the run made is gone"
    );
    assert!(!root.join("sub").exists());
    let ev =
        w.c.wait_for("the reverted event", |m| m["params"]["kind"] == "reverted")
            .await;
    assert_eq!(ev["params"]["messageId"], prompt);
    // The history keeps the turn, flagged; the model no longer sees it.
    let listed =
        w.c.request("session/messages", json!({"sessionId": w.session}))
            .await;
    let listed = listed["result"]["messages"].as_array().unwrap().clone();
    assert_eq!(listed.len(), msgs.len());
    assert_eq!(
        listed.iter().filter(|m| m["reverted"] == true).count(),
        msgs.len() - 2
    );
    let before_requests = w.mock.requests().len();
    w.mock.push(Script::text("seen?"));
    let send =
        w.c.request(
            "agent/send",
            json!({"sessionId": w.session, "prompt": "what did you do?"}),
        )
        .await;
    let run_id = send["result"]["runId"].as_str().unwrap().to_owned();
    w.c.run_complete(&run_id).await;
    let shown = w.mock.requests()[before_requests].messages();
    let all: Vec<&str> = shown.iter().map(|(_, t)| t.as_str()).collect();
    assert!(all.contains(&"first turn"), "{all:?}");
    assert!(
        !all.contains(&"change everything"),
        "the reverted turn is hidden: {all:?}"
    );
    // A prompt after a revert makes it final: nothing to redo.
    let r =
        w.c.request("session/unrevert", json!({"sessionId": w.session}))
            .await;
    assert_eq!(r["result"]["done"], false, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrevert_brings_the_files_back_and_conflicts_are_reported_unless_forced() {
    let mut w = world("").await;
    let root = w.project.clone();
    std::fs::write(root.join("edit.txt"), "one\ntwo\nthree\n").unwrap();
    std::fs::write(root.join("gone.sh"), "#!/bin/sh\n").unwrap();
    push_changing_run(&w.mock);
    run(&mut w, "change everything").await;
    let paths = [
        "new1.txt",
        "sub/new2.txt",
        "edit.txt",
        "gone.sh",
        "made/deep/file.txt",
    ];
    let after: Vec<_> = paths.iter().map(|p| state(&root, p)).collect();
    // The user edits a file the run changed: a conflict.
    std::fs::write(root.join("edit.txt"), "the user's own text\n").unwrap();
    let messages =
        w.c.request("session/messages", json!({"sessionId": w.session}))
            .await;
    let prompt = messages["result"]["messages"][0]["messageId"].clone();
    let r =
        w.c.request(
            "session/revert",
            json!({"sessionId": w.session, "messageId": prompt}),
        )
        .await;
    assert_eq!(r["result"]["done"], false, "{r}");
    assert_eq!(r["result"]["conflicts"], json!(["edit.txt"]));
    assert_eq!(
        std::fs::read_to_string(root.join("edit.txt")).unwrap(),
        "the user's own text\n",
        "left alone"
    );
    assert!(root.join("new1.txt").exists(), "nothing was changed");
    // With force it goes through.
    let r =
        w.c.request(
            "session/revert",
            json!({"sessionId": w.session, "messageId": prompt, "force": true}),
        )
        .await;
    assert_eq!(r["result"]["done"], true, "{r}");
    assert_eq!(
        std::fs::read_to_string(root.join("edit.txt")).unwrap(),
        "one\ntwo\nthree\n"
    );
    assert!(!root.join("new1.txt").exists());
    // Redo: the files as the run left them, the messages shown again.
    let r =
        w.c.request("session/unrevert", json!({"sessionId": w.session}))
            .await;
    assert_eq!(r["result"]["done"], true, "{r}");
    let redone: Vec<_> = paths.iter().map(|p| state(&root, p)).collect();
    // edit.txt comes back as it was just before the revert: the user's text.
    for (i, p) in paths.iter().enumerate() {
        if *p == "edit.txt" {
            assert_eq!(
                std::fs::read_to_string(root.join(p)).unwrap(),
                "the user's own text\n"
            );
        } else {
            assert_eq!(redone[i], after[i], "{p}");
        }
    }
    let listed =
        w.c.request("session/messages", json!({"sessionId": w.session}))
            .await;
    assert!(
        listed["result"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m.get("reverted").is_none())
    );
    // Busy sessions are refused.
    let gate = tokio_util::sync::CancellationToken::new();
    w.mock.push(Script::text("slow").held(gate.clone()));
    let send =
        w.c.request(
            "agent/send",
            json!({"sessionId": w.session, "prompt": "busy"}),
        )
        .await;
    let run_id = send["result"]["runId"].as_str().unwrap().to_owned();
    w.mock
        .wait_requests(
            w.mock.requests().len() + 1,
            std::time::Duration::from_secs(20),
        )
        .await;
    let r =
        w.c.request(
            "session/revert",
            json!({"sessionId": w.session, "messageId": prompt}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32014, "{r}");
    gate.cancel();
    w.c.run_complete(&run_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revert_survives_a_daemon_restart() {
    let mut w = world("").await;
    let root = w.project.clone();
    std::fs::write(root.join("edit.txt"), "one\ntwo\nthree\n").unwrap();
    std::fs::write(root.join("gone.sh"), "x\n").unwrap();
    push_changing_run(&w.mock);
    run(&mut w, "change everything").await;
    let messages =
        w.c.request("session/messages", json!({"sessionId": w.session}))
            .await;
    let prompt = messages["result"]["messages"][0]["messageId"].clone();
    let r =
        w.c.request(
            "session/revert",
            json!({"sessionId": w.session, "messageId": prompt}),
        )
        .await;
    assert_eq!(r["result"]["done"], true, "{r}");
    // Restart the daemon on the same data.
    w._daemon.signal(rustix::process::Signal::TERM);
    assert!(w._daemon.wait_exit(crush_tests::DEADLINE).success());
    w._daemon = w.env.spawn_daemon(&[]);
    let mut c = RawConn::initialized(&w.env.socket).await;
    let listed = c
        .request("session/messages", json!({"sessionId": w.session}))
        .await;
    assert!(
        listed["result"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["reverted"] == true)
    );
    let r = c
        .request("session/unrevert", json!({"sessionId": w.session}))
        .await;
    assert_eq!(r["result"]["done"], true, "{r}");
    assert_eq!(
        std::fs::read_to_string(root.join("edit.txt")).unwrap(),
        "one\nTWO\nthree\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crushctl_undo_and_redo_the_last_turn() {
    let mut w = world("").await;
    let root = w.project.clone();
    std::fs::write(root.join("edit.txt"), "one\ntwo\nthree\n").unwrap();
    std::fs::write(root.join("gone.sh"), "x\n").unwrap();
    push_changing_run(&w.mock);
    run(&mut w, "change everything").await;
    let ctl = |args: &[&str]| {
        let out = w
            .env
            .command("crushctl")
            .current_dir(&root)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = ctl(&["undo"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("undone: 6 messages, 5 files:"), "{out}");
    assert!(
        out.contains("  new1.txt") && out.contains("  gone.sh"),
        "{out}"
    );
    assert!(!root.join("new1.txt").exists());
    let (_, shown, _) = ctl(&["sessions", "show", &w.session]);
    assert!(shown.contains("❯ change everything (undone)"), "{shown}");
    let (code, out, _) = ctl(&["redo"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("redone: 6 messages, 5 files:"), "{out}");
    assert!(root.join("new1.txt").exists());
    // A conflict stops the undo (exit 1) unless --force.
    std::fs::write(root.join("new1.txt"), "mine\n").unwrap();
    let (code, _, err) = ctl(&["undo"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("new1.txt") && err.contains("--force"), "{err}");
    let (code, out, _) = ctl(&["undo", "--force"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(!root.join("new1.txt").exists());
    let (code, out, _) = ctl(&["redo"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        std::fs::read_to_string(root.join("new1.txt")).unwrap(),
        "mine\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_during_a_revert_leaves_every_file_old_or_new_never_half_written() {
    const N: usize = 300;
    let mut w = world("").await;
    let root = w.project.clone();
    let old = |i: usize| format!("old {i}\n").repeat(4000);
    for i in 0..N {
        std::fs::write(root.join(format!("f{i:03}.txt")), old(i)).unwrap();
    }
    // One bash command rewrites every file.
    w.mock.push(Script::default().tool_call(
        "c1",
        "bash",
        r#"{"command":"for f in f*.txt; do printf 'new %s\n' \"$f\" > \"$f\"; done"}"#,
    ));
    w.mock.push(Script::text("rewrote them"));
    run(&mut w, "rewrite").await;
    let new = |i: usize| format!("new f{i:03}.txt\n");
    let messages =
        w.c.request("session/messages", json!({"sessionId": w.session}))
            .await;
    let prompt = messages["result"]["messages"][0]["messageId"].clone();
    // Start the revert, and kill the daemon as soon as it has restored some files.
    w.c.start(
        "session/revert",
        json!({"sessionId": w.session, "messageId": prompt}),
    )
    .await;
    let deadline = std::time::Instant::now() + crush_tests::DEADLINE;
    loop {
        let restored = (0..N)
            .filter(|i| {
                std::fs::read_to_string(root.join(format!("f{i:03}.txt")))
                    .is_ok_and(|t| t.starts_with("old"))
            })
            .count();
        if restored > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the revert never started"
        );
        std::thread::yield_now();
    }
    w._daemon.signal(rustix::process::Signal::KILL);
    w._daemon.wait_exit(crush_tests::DEADLINE);
    let (mut olds, mut news) = (0, 0);
    for i in 0..N {
        let text = std::fs::read_to_string(root.join(format!("f{i:03}.txt"))).unwrap();
        if text == old(i) {
            olds += 1;
        } else if text == new(i) {
            news += 1;
        } else {
            panic!("f{i:03}.txt is half written: {} bytes", text.len());
        }
    }
    assert_eq!(olds + news, N);
    assert!(olds > 0);
    // At most the one file being written is left beside its file, under a name snapshots skip.
    let temps: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".crushd-restore"))
        .collect();
    assert!(temps.len() <= 1, "{temps:?}");
    eprintln!("killed mid-revert: {olds} files restored, {news} not yet");
}
