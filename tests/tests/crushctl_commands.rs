//! Black-box tests of `crushctl`'s other commands — `attach`, `sessions`, `status`, `config`,
//! `completions` — against a real daemon on a temporary socket with the loopback mock model.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use assert_cmd::Command;
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
    world_with("").await
}

/// A daemon whose default model is the mock; `extra` goes into the mock provider's table.
async fn world_with(extra: &str) -> World {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_with(&mock.base_url(), "openai", extra);
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

impl World {
    fn ctl(&self) -> Command {
        let mut cmd = self.env.command("crushctl");
        cmd.current_dir(&self.project);
        let mut cmd = Command::from_std(cmd);
        cmd.timeout(DEADLINE);
        cmd
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl().args(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "crushctl {args:?}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_shows_history_then_a_run_started_by_another_client() {
    let w = world().await;
    w.mock.push(Script::text("The first answer."));
    w.ok(&["run", "the first prompt"]);
    let session = json_lines(&w.ok(&["sessions", "--json"]))[0]["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut cmd = w.env.command("crushctl");
    cmd.current_dir(&w.project).arg("attach");
    let mut attach = CliProcess::spawn(cmd);
    // Recent history first, then it says it follows (stdout and stderr are read by separate
    // threads here, so each is waited for).
    attach.wait_stdout("the first prompt");
    attach.wait_stdout("The first answer.");
    attach.wait_stderr("following session");

    // An editor sends a prompt to the same session; attach shows it live.
    w.mock.push(Script::text("An answer for the editor."));
    let mut c = RawConn::initialized_as(&w.env.socket, "nvim").await;
    c.request("session/subscribe", json!({"sessionId": session}))
        .await;
    c.request(
        "agent/send",
        json!({"sessionId": session, "prompt": "a prompt from the editor", "runId": "nvim-run"}),
    )
    .await;
    c.run_complete("nvim-run").await;
    attach.wait_stdout("a prompt from the editor");
    attach.wait_stdout("An answer for the editor.");
    attach.wait_stdout("completed]");
    attach.signal(rustix::process::Signal::INT);
    assert_eq!(attach.wait_exit().code(), Some(0), "{}", attach.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_list_show_rename_and_rm() {
    let w = world().await;
    w.mock.push(Script::text("Answer one."));
    w.ok(&["run", "question one"]);
    let list = json_lines(&w.ok(&["sessions", "--json"]));
    assert_eq!(list.len(), 1);
    let s = &list[0];
    let id = s["sessionId"].as_str().unwrap().to_owned();
    assert_eq!(s["title"], "question one");
    assert_eq!(s["messages"], 2);
    assert_eq!(s["state"], "idle");
    assert!(s["updatedAt"].is_i64());

    // Off a terminal the list is still a readable table, with the short form of the id.
    let table = w.ok(&["sessions"]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains(&id[id.len() - 8..]) && table.contains("question one"),
        "{table}"
    );

    let shown = w.ok(&["sessions", "show", &id]);
    assert!(shown.contains("question one"), "{shown}");
    assert!(shown.contains("Answer one."), "{shown}");
    let msgs = json_lines(&w.ok(&["sessions", "show", "--json", &id]));
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0]["role"], "user");

    w.ok(&["sessions", "rename", &id, "A better title"]);
    assert_eq!(
        json_lines(&w.ok(&["sessions", "--json"]))[0]["title"],
        "A better title"
    );
    w.ok(&["sessions", "rm", &id]);
    assert_eq!(w.ok(&["sessions", "--json"]), "");
    let out = w.ctl().args(["sessions", "show", &id]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_daemon_its_workspaces_and_clients() {
    let w = world().await;
    let mut c = RawConn::initialized_as(&w.env.socket, "nvim").await;
    c.request("workspace/open", json!({"path": w.project}))
        .await;
    let st = json_lines(&w.ok(&["status", "--json"]));
    assert_eq!(st.len(), 1);
    let st = &st[0];
    assert_eq!(st["running"], true);
    assert_eq!(st["pid"], w.daemon.pid());
    assert!(st["version"].is_string() && st["uptimeMs"].is_u64());
    let project = std::fs::canonicalize(&w.project).unwrap();
    assert!(
        st["workspaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|ws| ws["path"] == project.to_str().unwrap()),
        "{st}"
    );
    assert!(
        st["clients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|cl| cl["name"] == "nvim"),
        "{st}"
    );
    assert_eq!(st["activeRuns"], json!([]));
    let text = w.ok(&["status"]);
    assert!(
        text.contains(&format!("pid          {}", w.daemon.pid())),
        "{text}"
    );
    assert!(text.contains("nvim"), "{text}");
    // The space the snapshots take (none yet).
    assert_eq!(st["snapshotBytes"], 0, "{st}");
    assert!(text.contains("snapshots    0 B (undo and diff)"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_names_the_problem_and_show_redacts_keys() {
    let w = world_with("api_key = \"sk-very-secret\"").await;
    // The running daemon's configuration, with the key of a provider redacted.
    let text = w.ok(&["config", "show", "--json"]);
    let shown: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(shown["defaultModel"], "mock/mock-1");
    assert_eq!(shown["providers"]["mock"]["apiKey"], "<redacted>");
    assert!(!text.contains("sk-very-secret"), "{text}");
    assert!(!w.ok(&["config", "show"]).contains("sk-very-secret"));

    let cfg = w.env.dir.path().join("other.toml");
    std::fs::write(
        &cfg,
        "default_model = \"mine/m\"\n[providers.mine]\ntype = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key = \"sk-very-secret\"\n",
    )
    .unwrap();
    let out = w
        .ctl()
        .args(["config", "check", "--file", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("sk-very-secret"));

    std::fs::write(&cfg, "[daemon]\nidle_timeout = true\n").unwrap();
    let out = w
        .ctl()
        .args(["config", "check", "--file", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("other.toml:2"), "{err}");
    assert!(err.contains("idle_timeout"), "{err}");

    // The path is the daemon's: under this environment's XDG_CONFIG_HOME.
    let path = w.ok(&["config", "path"]);
    assert!(path.trim().ends_with("config/crushd/config.toml"), "{path}");
    let out = w.ctl().args(["config", "check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_help() {
    let w = world().await;
    for shell in ["bash", "zsh", "fish"] {
        let script = w.ok(&["completions", shell]);
        assert!(script.contains("crushctl"), "{shell}: {script}");
        assert!(script.contains("attach"), "{shell}");
    }
    let help = w.ok(&["run", "--help"]);
    assert!(help.contains("Examples:"), "{help}");
    assert!(help.contains("130"), "{help}");
    drop(w.mock);
}

/// Like git's commit ids: wherever crushctl takes a session id, a unique prefix of at least four
/// characters will do; an ambiguous one names the candidates, and nothing is changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_ids_can_be_shortened_to_a_unique_prefix() {
    let w = world().await;
    let mut c = RawConn::initialized(&w.env.socket).await;
    let ws = c
        .request("workspace/open", json!({"path": w.project}))
        .await;
    let ws = ws["result"]["workspaceId"].clone();
    let mut ids = Vec::new();
    for title in ["first", "second"] {
        let s = c
            .request("session/create", json!({"workspaceId": ws, "title": title}))
            .await;
        ids.push(s["result"]["sessionId"].as_str().unwrap().to_owned());
    }
    // UUIDv7s made a moment apart share their leading (timestamp) characters.
    let common = ids[0]
        .chars()
        .zip(ids[1].chars())
        .take_while(|(a, b)| a == b)
        .count();
    assert!(common >= 4, "{ids:?}");
    let unique = &ids[0][..common + 1];

    let shown = w.ok(&["sessions", "show", unique]);
    assert!(shown.contains("first"), "{shown}");
    let renamed = w.ok(&["sessions", "rename", unique, "Renamed by prefix"]);
    assert!(
        renamed.contains(&ids[0]),
        "the full id is reported: {renamed}"
    );

    let out = w
        .ctl()
        .args(["sessions", "rm", &ids[0][..common]])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("several sessions"), "{stderr}");
    assert!(
        stderr.contains(&ids[0]) && stderr.contains(&ids[1]),
        "{stderr}"
    );
    assert_eq!(
        json_lines(&w.ok(&["sessions", "--json"])).len(),
        2,
        "nothing was removed"
    );

    // Too short to be taken as a prefix.
    let out = w
        .ctl()
        .args(["sessions", "show", &ids[0][..3]])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    w.ok(&["sessions", "rm", unique]);
    let left = json_lines(&w.ok(&["sessions", "--json"]));
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["sessionId"], ids[1].as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_summarises_the_latest_session_and_show_marks_the_summary() {
    let w = world().await;
    w.mock.answer_summaries();
    // Too little to compact yet: the first prompt and one more turn are kept as they are.
    w.mock.push(Script::text("one"));
    w.ok(&["run", "first prompt"]);
    w.mock.push(Script::text("two"));
    w.ok(&["run", "-c", "second prompt"]);
    let out = w.ok(&["compact"]);
    assert!(out.starts_with("nothing to compact in session "), "{out}");
    for (i, answer) in ["three", "four"].iter().enumerate() {
        w.mock.push(Script::text(answer));
        w.ok(&["run", "-c", &format!("prompt {}", i + 3)]);
    }
    let out = w.ok(&["compact"]);
    assert!(
        out.starts_with("summarised 5 older messages of session "),
        "{out}"
    );
    assert_eq!(w.mock.summaries(), 1);
    let session = json_lines(&w.ok(&["sessions", "--json"]))[0]["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let shown = w.ok(&["sessions", "show", &session]);
    assert!(
        shown.contains("≡ 5 older messages summarised to fit the context window"),
        "{shown}"
    );
    // Every prompt is still there.
    for p in ["first prompt", "second prompt", "prompt 3", "prompt 4"] {
        assert!(shown.contains(p), "{shown}");
    }
    // --json, by session id; nothing new since the summary but the latest turn.
    let r = json_lines(&w.ok(&["compact", &session, "--json"]));
    assert_eq!(r[0]["compacted"], false, "{r:?}");
    assert_eq!(r[0]["sessionId"], session.as_str());
    // An unknown session is a usage error.
    let out = w.ctl().args(["compact", "no-such"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_copies_the_latest_session_and_run_continues_the_copy() {
    let w = world().await;
    w.mock.push(Script::text("one"));
    w.ok(&["run", "first prompt"]);
    w.mock.push(Script::text("two"));
    w.ok(&["run", "-c", "second prompt"]);
    let original = json_lines(&w.ok(&["sessions", "--json"]))[0]["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let shown = json_lines(&w.ok(&["sessions", "show", &original, "--json"]));
    let first_answer = shown[1]["messageId"].as_str().unwrap().to_owned();
    let out = w.ok(&["fork", "--at", &first_answer]);
    assert!(out.starts_with("forked session "), "{out}");
    let fork = json_lines(&w.ok(&["fork", &original, "--at", &first_answer, "--json"]))[0].clone();
    assert_eq!(fork["messageCount"], 2, "{fork}");
    assert_eq!(fork["title"], "first prompt (fork)");
    let id = fork["sessionId"].as_str().unwrap();
    w.mock.push(Script::text("three"));
    w.ok(&["run", "-s", id, "another second prompt"]);
    let copy = w.ok(&["sessions", "show", id]);
    assert!(
        copy.contains("first prompt") && copy.contains("another second prompt"),
        "{copy}"
    );
    assert!(!copy.contains("❯ second prompt"), "{copy}");
    let kept = w.ok(&["sessions", "show", &original]);
    assert!(
        kept.contains("second prompt") && !kept.contains("another"),
        "{kept}"
    );
}
