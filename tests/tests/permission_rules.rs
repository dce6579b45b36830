//! Black-box tests of saved permission rules (issue 24): an "always allow" answer given in one
//! client is a rule in the database that applies in another client and after a daemon restart;
//! removing it asks again; a path rule keeps to its glob (also through a symlink); a bash prefix
//! rule never allows a chained command; the audit log says who answered and which rule applied;
//! and `crushctl permissions list|rm|log` shows and removes them. Real `crushd` processes, a
//! real socket and database, the loopback mock model scripting the tool calls.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use serde_json::{Value, json};

use crush_tests::mock_llm::{MockLlm, Script};
use crush_tests::{DEADLINE, DaemonProcess, RawConn, TestEnv, error_code, error_message};

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
    std::fs::create_dir_all(project.join("src")).unwrap();
    std::fs::create_dir_all(project.join("docs")).unwrap();
    World {
        env,
        mock,
        daemon,
        project,
    }
}

impl World {
    /// Stops the daemon (SIGTERM) and starts a new one on the same database.
    fn restart(&mut self) {
        self.daemon.signal(rustix::process::Signal::TERM);
        assert!(self.daemon.wait_exit(DEADLINE).success());
        self.daemon = self.env.spawn_daemon(&[]);
    }

    /// A client named `name` with a new, subscribed session in the project.
    async fn client(&self, name: &str) -> (RawConn, String, String) {
        let mut c = RawConn::initialized_as(&self.env.socket, name).await;
        let ws = c
            .request("workspace/open", json!({"path": self.project}))
            .await;
        let workspace = ws["result"]["workspaceId"].as_str().unwrap().to_owned();
        let s = c
            .request("session/create", json!({"workspaceId": workspace}))
            .await;
        let session = s["result"]["sessionId"].as_str().unwrap().to_owned();
        let r = c
            .request("session/subscribe", json!({"sessionId": session}))
            .await;
        assert!(r.get("result").is_some(), "{r}");
        (c, workspace, session)
    }

    /// Has the model make one tool call (then answer "done") in a run of `session`.
    async fn run_tool(&self, c: &mut RawConn, session: &str, tool: &str, input: Value) -> String {
        self.mock
            .push(Script::text("").tool_call("call_1", tool, &input.to_string()));
        self.mock.push(Script::text("done"));
        let r = c
            .request("agent/send", json!({"sessionId": session, "prompt": "go"}))
            .await;
        r["result"]["runId"]
            .as_str()
            .unwrap_or_else(|| panic!("agent/send failed: {r}"))
            .to_owned()
    }
}

/// What happens first to a run: a prompt (`Some(request)`) or its end without one (`None`).
async fn asked(c: &mut RawConn, run: &str) -> Option<Value> {
    let m = c
        .wait_for("a permission/request or the run's end", |m| {
            (m["method"] == "permission/request" && m.get("id").is_some())
                || (m["method"] == "$/runComplete" && m["params"]["runId"] == run)
        })
        .await;
    (m["method"] == "permission/request").then_some(m)
}

/// The status the run's tool call ended with.
async fn tool_status(c: &mut RawConn) -> String {
    let m = c
        .wait_for("toolCallFinished", |m| {
            m["method"] == "$/sessionUpdate" && m["params"]["kind"] == "toolCallFinished"
        })
        .await;
    m["params"]["status"].as_str().unwrap().to_owned()
}

async fn rules(c: &mut RawConn, params: Value) -> Vec<Value> {
    let r = c.request("permission/rules/list", params).await;
    r["result"]["rules"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .clone()
}

async fn log(c: &mut RawConn, params: Value) -> Vec<Value> {
    let r = c.request("permission/log", params).await;
    r["result"]["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .clone()
}

fn bash(command: &str) -> Value {
    json!({ "command": command })
}

fn write(path: &str) -> Value {
    json!({ "path": path, "content": "written\n" })
}

#[tokio::test]
async fn a_rule_made_in_one_client_applies_after_a_restart_and_in_another_client_until_removed() {
    let mut w = world().await;
    let (mut nvim, workspace, first) = w.client("nvim").await;
    let run = w.run_tool(&mut nvim, &first, "bash", bash("ls -la")).await;
    let ask = asked(&mut nvim, &run)
        .await
        .expect("the first ls is asked about");
    assert_eq!(
        ask["params"]["scopes"],
        json!(["session", "workspace", "global"])
    );
    assert_eq!(ask["params"]["suggestedPattern"], "ls");
    nvim.reply(
        &ask,
        json!({"decision": "allowAlways", "scope": "workspace"}),
    )
    .await;
    let resolved = nvim
        .wait_for("$/permissionResolved", |m| {
            m["method"] == "$/permissionResolved"
        })
        .await;
    assert_eq!(resolved["params"]["decision"], "allowAlways");
    assert_eq!(tool_status(&mut nvim).await, "completed");
    nvim.run_complete(&run).await;
    let saved = rules(&mut nvim, json!({})).await;
    assert_eq!(saved.len(), 1, "{saved:?}");
    let rule = &saved[0];
    assert_eq!(rule["tool"], "bash");
    assert_eq!(rule["pattern"], "ls");
    assert_eq!(rule["scope"], "workspace");
    assert_eq!(rule["workspaceId"], workspace.as_str());
    assert_eq!(rule["createdBy"], "nvim");
    let rule_id = rule["id"].as_str().unwrap().to_owned();
    drop(nvim);

    w.restart();
    let (mut code, _, second) = w.client("vscode").await;
    assert_eq!(rules(&mut code, json!({"sessionId": second})).await, saved);
    let run = w.run_tool(&mut code, &second, "bash", bash("ls src")).await;
    assert!(
        asked(&mut code, &run).await.is_none(),
        "the saved rule allows ls in another client after a restart"
    );
    assert_eq!(tool_status(&mut code).await, "completed");

    let r = code
        .request("permission/rules/remove", json!({"id": rule_id}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    assert!(rules(&mut code, json!({})).await.is_empty());
    let r = code
        .request("permission/rules/remove", json!({"id": rule_id}))
        .await;
    assert_eq!(error_code(&r), Some(-32018), "{r}");
    let run = w.run_tool(&mut code, &second, "bash", bash("ls")).await;
    let ask = asked(&mut code, &run)
        .await
        .expect("asked again once the rule is gone");
    code.reply(&ask, json!({"decision": "deny"})).await;
    assert_eq!(tool_status(&mut code).await, "denied");
    code.run_complete(&run).await;

    // The audit log, newest first: vscode's deny, the rule's allow, nvim's allowAlways.
    let entries = log(&mut code, json!({"workspaceId": workspace})).await;
    assert_eq!(entries.len(), 3, "{entries:#?}");
    let (denied, by_rule, saved_by) = (&entries[0], &entries[1], &entries[2]);
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["source"], "prompt");
    assert_eq!(denied["client"], "vscode");
    assert!(denied["connection"].as_u64().is_some(), "{denied}");
    assert_eq!(by_rule["decision"], "allow");
    assert_eq!(by_rule["source"], "rule");
    assert_eq!(by_rule["ruleId"], rule_id.as_str());
    assert_eq!(by_rule["title"], "Run: ls src");
    assert!(by_rule.get("client").is_none(), "{by_rule}");
    assert_eq!(saved_by["decision"], "allowAlways");
    assert_eq!(saved_by["source"], "prompt");
    assert_eq!(saved_by["client"], "nvim");
    assert_eq!(saved_by["ruleId"], rule_id.as_str());
    assert_eq!(saved_by["sessionId"], first.as_str());
    // One session's log.
    let only = log(&mut code, json!({"sessionId": first})).await;
    assert_eq!(only, vec![saved_by.clone()]);
}

#[tokio::test]
async fn a_path_rule_does_not_match_outside_its_glob_nor_through_a_symlink() {
    let w = world().await;
    std::os::unix::fs::symlink("../docs", w.project.join("src").join("docs-link")).unwrap();
    let (mut c, _, session) = w.client("nvim").await;
    let run = w
        .run_tool(&mut c, &session, "write", write("src/a.txt"))
        .await;
    let ask = asked(&mut c, &run).await.expect("asked");
    assert_eq!(ask["params"]["suggestedPattern"], "src/**");
    // A pattern reaching outside the workspace is refused; the prompt stays.
    for (bad, field) in [
        (
            json!({"decision": "allowAlways", "scope": "global", "pattern": "../**"}),
            "pattern",
        ),
        (
            json!({"decision": "allowAlways", "pattern": "src/**"}),
            "scope",
        ),
    ] {
        let mut params = bad.clone();
        params["requestId"] = ask["params"]["requestId"].clone();
        let r = c.request("permission/respond", params).await;
        assert_eq!(error_code(&r), Some(-32602), "{r}");
        assert!(error_message(&r).contains(field), "{r}");
    }
    let r = c
        .request(
            "permission/respond",
            json!({"requestId": ask["params"]["requestId"], "decision": "allowAlways",
                   "scope": "session", "pattern": "src/**"}),
        )
        .await;
    assert!(r.get("result").is_some(), "{r}");
    assert_eq!(tool_status(&mut c).await, "completed");
    c.run_complete(&run).await;

    let run = w
        .run_tool(&mut c, &session, "write", write("src/deeper/b.txt"))
        .await;
    assert!(
        asked(&mut c, &run).await.is_none(),
        "src/** covers src/deeper/b.txt"
    );
    assert!(w.project.join("src/deeper/b.txt").exists());

    for outside in ["docs/c.txt", "src/docs-link/c.txt", "srcx.txt"] {
        let run = w.run_tool(&mut c, &session, "write", write(outside)).await;
        let ask = asked(&mut c, &run)
            .await
            .unwrap_or_else(|| panic!("{outside} is outside src/** and must be asked about"));
        c.reply(&ask, json!({"decision": "deny"})).await;
        c.run_complete(&run).await;
    }
    assert!(!w.project.join("docs/c.txt").exists());

    // A session rule does not reach another session.
    let (mut other, _, second) = w.client("vscode").await;
    let run = w
        .run_tool(&mut other, &second, "write", write("src/a.txt"))
        .await;
    let ask = asked(&mut other, &run)
        .await
        .expect("another session is asked");
    other.reply(&ask, json!({"decision": "deny"})).await;
    other.run_complete(&run).await;

    // Deleting the session deletes its rules.
    assert_eq!(rules(&mut other, json!({})).await.len(), 1);
    let r = other
        .request("session/delete", json!({"sessionId": session}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    assert!(rules(&mut other, json!({})).await.is_empty());
}

#[tokio::test]
async fn a_bash_prefix_rule_does_not_match_a_chained_command() {
    let w = world().await;
    let (mut c, _, session) = w.client("nvim").await;
    let run = w.run_tool(&mut c, &session, "bash", bash("ls")).await;
    let ask = asked(&mut c, &run).await.expect("asked");
    c.reply(&ask, json!({"decision": "allowAlways", "scope": "global"}))
        .await;
    c.run_complete(&run).await;

    for chained in [
        "ls; touch pwned",
        "ls && touch pwned",
        "ls | tee pwned",
        "ls > pwned",
    ] {
        let run = w.run_tool(&mut c, &session, "bash", bash(chained)).await;
        let ask = asked(&mut c, &run)
            .await
            .unwrap_or_else(|| panic!("{chained:?} must be asked about"));
        c.reply(&ask, json!({"decision": "deny"})).await;
        c.run_complete(&run).await;
    }
    assert!(!w.project.join("pwned").exists());
    let run = w
        .run_tool(&mut c, &session, "bash", bash("lsblk --help"))
        .await;
    let ask = asked(&mut c, &run).await.expect("lsblk is not ls");
    c.reply(&ask, json!({"decision": "deny"})).await;
    c.run_complete(&run).await;
}

fn crushctl(w: &World, args: &[&str]) -> (bool, String, String) {
    let out = w
        .env
        .command("crushctl")
        .args(args)
        .current_dir(&w.project)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn crushctl_lists_removes_and_logs_rules() {
    let w = world().await;
    let (mut c, _, session) = w.client("nvim").await;
    let run = w
        .run_tool(&mut c, &session, "bash", bash("cargo test -p x"))
        .await;
    let ask = asked(&mut c, &run).await.expect("asked");
    c.reply(
        &ask,
        json!({"decision": "allowAlways", "scope": "workspace"}),
    )
    .await;
    c.run_complete(&run).await;
    let id = rules(&mut c, json!({})).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let short = &id[id.len() - 8..];

    let (ok, out, err) = crushctl(&w, &["permissions", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(short) && out.contains("bash \"cargo test\"  workspace"),
        "{out}"
    );
    let (ok, out, err) = crushctl(&w, &["permissions", "list", "--json"]);
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(listed["id"], id.as_str());

    let (ok, out, err) = crushctl(&w, &["permissions", "log"]);
    assert!(ok, "{err}");
    assert!(out.contains("allowAlways  Run: cargo test -p x"), "{out}");
    assert!(out.contains("answered by nvim, connection"), "{out}");

    let (ok, out, err) = crushctl(&w, &["permissions", "rm", short]);
    assert!(ok, "{err}");
    assert!(out.contains("removed rule"), "{out}");
    assert!(rules(&mut c, json!({})).await.is_empty());
    let (ok, _, err) = crushctl(&w, &["permissions", "rm", short]);
    assert!(!ok);
    assert!(err.contains("no permission rule"), "{err}");
    let (ok, out, _) = crushctl(&w, &["permissions", "list"]);
    assert!(ok);
    assert!(out.contains("No saved permission rules"), "{out}");
}

#[tokio::test]
async fn an_always_allow_answer_releases_the_prompts_its_rule_matches_in_other_sessions() {
    let w = world().await;
    let (mut nvim, _, first) = w.client("nvim").await;
    let (mut code, _, second) = w.client("vscode").await;
    let (mut cli, _, third) = w.client("crushctl").await;
    // Three sessions of the workspace each wait for an answer: two `ls`, one `cat`. Each run is
    // scripted and asked before the next is sent, so each takes its own tool call.
    let ask_in = async |c: &mut RawConn, session: &str, command: &str| {
        w.mock
            .push(Script::text("").tool_call("call_1", "bash", &bash(command).to_string()));
        let r = c
            .request("agent/send", json!({"sessionId": session, "prompt": "go"}))
            .await;
        let run = r["result"]["runId"].as_str().unwrap().to_owned();
        let ask = asked(c, &run).await.expect("asked");
        (run, ask)
    };
    let (run1, ask1) = ask_in(&mut nvim, &first, "ls -la").await;
    let (run2, ask2) = ask_in(&mut code, &second, "ls src").await;
    let (run3, ask3) = ask_in(&mut cli, &third, "cat notes").await;
    w.mock.push(Script::text("done"));
    w.mock.push(Script::text("done"));

    nvim.reply(
        &ask1,
        json!({"decision": "allowAlways", "scope": "workspace", "pattern": "ls"}),
    )
    .await;
    // The second session's `ls` runs without its own answer: its prompt is withdrawn and
    // resolved for every client, naming who made the rule.
    let withdrawn = code
        .wait_for("the second prompt withdrawn", |m| {
            m["method"] == "$/cancelRequest" && m["params"]["id"] == ask2["id"]
        })
        .await;
    assert_eq!(withdrawn["params"]["id"], ask2["id"]);
    let resolved = code
        .wait_for("the second prompt resolved", |m| {
            m["method"] == "$/permissionResolved"
                && m["params"]["requestId"] == ask2["params"]["requestId"]
        })
        .await;
    assert_eq!(resolved["params"]["decision"], "allow", "{resolved}");
    assert_eq!(resolved["params"]["by"], "nvim", "{resolved}");
    assert_eq!(tool_status(&mut code).await, "completed");
    assert_eq!(code.run_complete(&run2).await["text"], "done");
    assert_eq!(tool_status(&mut nvim).await, "completed");
    nvim.run_complete(&run1).await;

    // The `cat` the rule does not match is still waiting, and still answerable.
    cli.reply(&ask3, json!({"decision": "deny"})).await;
    assert_eq!(tool_status(&mut cli).await, "denied");
    cli.run_complete(&run3).await;

    let entries = log(&mut code, json!({"sessionId": second})).await;
    assert_eq!(entries.len(), 1, "{entries:#?}");
    assert_eq!(entries[0]["decision"], "allow");
    assert_eq!(entries[0]["source"], "rule");
    assert_eq!(entries[0]["client"], "nvim");
    let saved = rules(&mut code, json!({})).await;
    assert_eq!(entries[0]["ruleId"], saved[0]["id"]);
}
