//! The sandbox of `bash` tool commands (Linux Landlock), against a real daemon: under
//! `workspace-write` a command writes in the workspace and the temp directory but not in the
//! user's home, not in `/etc` and not through a symlink that leads out; with the network off it
//! cannot connect to a loopback listener; a refused command is reported as such and running it
//! unconfined is a separate permission prompt that allows it once; `read-only` and `off` do what
//! they say; `daemon/status` and `model/list` tell whether the sandbox is enforced.
//!
//! The daemon's `HOME` and `TMPDIR` are directories of the test's own, so "the user's home" is
//! outside the writable set whatever the machine's `/tmp` is.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use serde_json::{Value, json};

use crush_tests::mock_llm::{MockLlm, Script};
use crush_tests::{DEADLINE, DaemonProcess, RawConn, TestEnv};

struct Fixture {
    env: TestEnv,
    mock: MockLlm,
    daemon: DaemonProcess,
    c: RawConn,
    sid: String,
    project: PathBuf,
    home: PathBuf,
    tmp: PathBuf,
    calls: usize,
}

/// What one `bash` call came to.
struct Ran {
    /// The tool result the model got.
    output: String,
    /// The params of the escalation prompt, if one came.
    escalation: Option<Value>,
}

impl Fixture {
    /// A daemon with `config` appended to its config file (`{root}` stands for the test's
    /// directory), a session of the workspace `project`, subscribed.
    async fn new(config: &str) -> Self {
        let env = TestEnv::new();
        let mock = MockLlm::start().await;
        let root = env.dir.path().to_path_buf();
        let sandbox = config.replace("{root}", &root.display().to_string());
        let (project, home, tmp) = (root.join("project"), root.join("home"), root.join("tmp"));
        for d in [&project, &home, &tmp] {
            std::fs::create_dir_all(d).unwrap();
        }
        env.use_model_with(&mock.base_url(), "openai", &sandbox);
        let daemon = spawn_daemon(&env, &home, &tmp);
        let mut c = RawConn::initialized(&env.socket).await;
        let ws = c.request("workspace/open", json!({"path": project})).await;
        let s = c
            .request(
                "session/create",
                json!({"workspaceId": ws["result"]["workspaceId"]}),
            )
            .await;
        let sid = s["result"]["sessionId"].as_str().unwrap().to_owned();
        let r = c
            .request("session/subscribe", json!({"sessionId": sid}))
            .await;
        assert!(r.get("result").is_some(), "{r}");
        Self {
            env,
            mock,
            daemon,
            c,
            sid,
            project,
            home,
            tmp,
            calls: 0,
        }
    }

    /// Has the model run `command` with bash (in yolo mode, so only an escalation asks), and
    /// answers an escalation prompt with `escalate` (`"allow"`, `"deny"`; `None`: none may
    /// come).
    async fn bash(&mut self, command: &str, escalate: Option<&str>) -> Ran {
        self.calls += 1;
        let id = format!("call_{}", self.calls);
        let args = json!({ "command": command }).to_string();
        self.mock
            .push(Script::text("Running.").tool_call(&id, "bash", &args));
        self.mock.push(Script::text("done"));
        let r = self
            .c
            .request(
                "agent/send",
                json!({"sessionId": self.sid, "prompt": "go", "yolo": true}),
            )
            .await;
        let run = r["result"]["runId"].as_str().unwrap().to_owned();
        let mut escalation = None;
        loop {
            let m = self
                .c
                .wait_for("a permission request or the run's end", |m| {
                    (m["method"] == "permission/request" && m.get("id").is_some())
                        || (m["method"] == "$/runComplete" && m["params"]["runId"] == run)
                })
                .await;
            if m["method"] == "$/runComplete" {
                assert_eq!(m["params"]["text"], "done", "{m}");
                break;
            }
            let decision = escalate.unwrap_or_else(|| panic!("unexpected prompt: {m}"));
            assert!(
                m["params"]["escalation"].is_object(),
                "only an escalation may ask in yolo mode: {m}"
            );
            escalation = Some(m["params"].clone());
            self.c.reply(&m, json!({ "decision": decision })).await;
        }
        self.c.clear_kept();
        let output = self
            .mock
            .requests()
            .iter()
            .flat_map(|r| r.tool_results())
            .find(|(call, _)| *call == id)
            .map(|(_, out)| out)
            .unwrap_or_else(|| panic!("no result for {id}"));
        Ran { output, escalation }
    }

    /// Stops the daemon (SIGTERM), starts a new one on the same database and subscribes again.
    async fn restart(&mut self) {
        self.daemon.signal(rustix::process::Signal::TERM);
        assert!(self.daemon.wait_exit(DEADLINE).success());
        self.daemon = spawn_daemon(&self.env, &self.home, &self.tmp);
        self.c = RawConn::initialized(&self.env.socket).await;
        let r = self
            .c
            .request("session/subscribe", json!({"sessionId": self.sid}))
            .await;
        assert!(r.get("result").is_some(), "{r}");
    }

    async fn set_sandbox(&mut self, params: Value) -> Value {
        let mut p = params;
        p["sessionId"] = json!(self.sid);
        let r = self.c.request("session/setSandbox", p).await;
        r["result"].clone()
    }
}

/// A daemon whose home and temp directory are the test's own.
fn spawn_daemon(env: &TestEnv, home: &std::path::Path, tmp: &std::path::Path) -> DaemonProcess {
    let mut cmd = env.command("crushd");
    cmd.arg("--foreground").env("HOME", home).env("TMPDIR", tmp);
    let daemon = DaemonProcess::spawn(cmd);
    daemon.wait_for_log("listening", DEADLINE);
    daemon
}

/// The file exists, and only then is removed (a test that failed must not leave one in /etc).
fn exists_then_remove(path: &std::path::Path) -> bool {
    let there = path.exists();
    if there {
        let _ = std::fs::remove_file(path);
    }
    there
}

#[tokio::test]
async fn workspace_write_confines_writes_to_the_workspace_and_temp() {
    let mut f = Fixture::new("").await;
    let st = f.c.request("daemon/status", json!({})).await;
    let sandbox = &st["result"]["sandbox"];
    assert_eq!(sandbox["mode"], "workspace-write", "{st}");
    assert_eq!(sandbox["enforced"], true, "{st}");
    assert!(sandbox["landlockAbi"].as_u64().unwrap() >= 1, "{st}");
    assert!(sandbox.get("warning").is_none(), "{st}");
    let models = f.c.request("model/list", json!({})).await;
    assert_eq!(models["result"]["sandbox"]["enforced"], true, "{models}");
    let out = f.env.crushctl(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.trim_start().starts_with("sandbox")
            && l.contains("workspace-write (Landlock ABI")),
        "{text}"
    );

    // Inside: the workspace and the temp directory.
    let ran = f
        .bash(
            &format!(
                "echo in > inside.txt && echo tmp > {}/t.txt && echo ok",
                f.tmp.display()
            ),
            None,
        )
        .await;
    assert!(ran.output.contains("Exit code: 0"), "{}", ran.output);
    assert_eq!(
        std::fs::read_to_string(f.project.join("inside.txt")).unwrap(),
        "in\n"
    );
    assert!(f.tmp.join("t.txt").exists());

    // The user's home: refused, reported as the sandbox's doing, and the escalation (denied
    // here) is a prompt of its own that says what was refused.
    let target = f.home.join("note.txt");
    let ran = f
        .bash(&format!("touch {}", target.display()), Some("deny"))
        .await;
    assert!(!target.exists(), "the sandbox let a write into $HOME");
    assert!(
        ran.output.contains("The sandbox (workspace-write) refused"),
        "{}",
        ran.output
    );
    assert!(ran.output.contains("did not allow"), "{}", ran.output);
    let esc = ran.escalation.expect("an escalation prompt");
    assert_eq!(esc["escalation"]["mode"], "workspace-write");
    assert!(
        esc["escalation"]["refused"][0]
            .as_str()
            .unwrap()
            .contains("note.txt"),
        "{esc}"
    );
    assert!(
        esc["title"].as_str().unwrap().contains("unconfined"),
        "{esc}"
    );

    // /etc (writable to this test's user unconfined only if it is root; refused either way).
    let etc = PathBuf::from(format!("/etc/crushd-sandbox-test-{}", std::process::id()));
    let ran = f
        .bash(&format!("echo x > {}", etc.display()), Some("deny"))
        .await;
    assert!(
        !exists_then_remove(&etc),
        "the sandbox let a write into /etc"
    );
    assert!(ran.output.contains("Permission denied"), "{}", ran.output);

    // A symlink in the workspace that leads out: the write is judged where it lands.
    let outside = f.home.join("keep.txt");
    std::fs::write(&outside, "original\n").unwrap();
    std::os::unix::fs::symlink(&outside, f.project.join("link")).unwrap();
    let ran = f.bash("echo changed > link", Some("deny")).await;
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "original\n");
    assert!(ran.escalation.is_some(), "{}", ran.output);
    drop(f.env);
}

#[tokio::test]
async fn the_escalation_prompt_allows_one_unconfined_run() {
    let mut f = Fixture::new("").await;
    let first = f.home.join("first.txt");
    let ran = f
        .bash(&format!("echo one > {}", first.display()), Some("allow"))
        .await;
    assert!(ran.escalation.is_some());
    assert_eq!(std::fs::read_to_string(&first).unwrap(), "one\n");
    assert!(
        ran.output
            .contains("allowed it to run once outside the sandbox"),
        "{}",
        ran.output
    );
    // Once: the next such command is confined again and asks again; `allowSession` also
    // allows only its own run.
    let second = f.home.join("second.txt");
    let ran = f
        .bash(
            &format!("echo two > {}", second.display()),
            Some("allowSession"),
        )
        .await;
    assert!(ran.escalation.is_some(), "{}", ran.output);
    assert!(second.exists());
    // `allowAlways` saves no rule for leaving the sandbox either.
    let third = f.home.join("third.txt");
    let ran = f
        .bash(
            &format!("echo three > {}", third.display()),
            Some("allowAlways"),
        )
        .await;
    assert!(ran.escalation.is_some(), "{}", ran.output);
    assert!(third.exists());
    let fourth = f.home.join("fourth.txt");
    let ran = f
        .bash(&format!("echo four > {}", fourth.display()), Some("deny"))
        .await;
    assert!(ran.escalation.is_some(), "{}", ran.output);
    assert!(!fourth.exists());
}

#[tokio::test]
async fn with_the_network_off_a_loopback_connect_fails() {
    let mut f = Fixture::new("").await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let connect = format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected");

    // Network on (the default): the same command connects.
    let ran = f.bash(&connect, None).await;
    assert!(ran.output.contains("connected"), "{}", ran.output);
    let _ = listener.accept().unwrap();

    let st = f.set_sandbox(json!({"network": false})).await;
    assert_eq!(st["network"], false, "{st}");
    assert_eq!(st["enforced"], true, "{st}");
    let ran = f.bash(&connect, Some("deny")).await;
    assert!(!ran.output.contains("connected"), "{}", ran.output);
    assert!(ran.output.contains("Permission denied"), "{}", ran.output);
    assert!(
        listener.accept().is_err(),
        "the listener got a connection with the network off"
    );
    let esc = ran.escalation.expect("an escalation prompt");
    assert!(
        esc["escalation"]["refused"][0]
            .as_str()
            .unwrap()
            .contains("network"),
        "{esc}"
    );
}

#[tokio::test]
async fn read_only_and_off_modes() {
    let mut f = Fixture::new("").await;
    let st = f.set_sandbox(json!({"mode": "read-only"})).await;
    assert_eq!(st["mode"], "read-only", "{st}");
    assert_eq!(st["enforced"], true, "{st}");
    std::fs::write(f.project.join("readme.txt"), "hello\n").unwrap();
    let ran = f
        .bash(
            "cat readme.txt && echo x > /dev/null && echo new > new.txt",
            Some("deny"),
        )
        .await;
    assert!(ran.output.contains("hello"), "{}", ran.output);
    assert!(
        !f.project.join("new.txt").exists(),
        "read-only let a write in"
    );
    assert!(ran.escalation.is_some(), "{}", ran.output);

    let st = f.set_sandbox(json!({"mode": "off"})).await;
    assert_eq!(st["enforced"], false, "{st}");
    let home_file = f.home.join("free.txt");
    let ran = f
        .bash(&format!("echo free > {}", home_file.display()), None)
        .await;
    assert!(ran.output.contains("Exit code: 0"), "{}", ran.output);
    assert!(home_file.exists());

    // `null`s return the session to the config's mode.
    let st = f.set_sandbox(json!({"mode": null})).await;
    assert_eq!(st["mode"], "workspace-write", "{st}");

    // The config's mode applies to every session that did not choose.
    drop(f);
    let mut f = Fixture::new("[sandbox]\nmode = \"off\"\n").await;
    let st = f.c.request("daemon/status", json!({})).await;
    assert_eq!(st["result"]["sandbox"]["mode"], "off", "{st}");
    let home_file = f.home.join("free.txt");
    f.bash(&format!("echo free > {}", home_file.display()), None)
        .await;
    assert!(home_file.exists());
}

#[tokio::test]
async fn a_sessions_own_mode_outlives_a_daemon_restart() {
    let mut f = Fixture::new("").await;
    let st = f.set_sandbox(json!({"mode": "read-only"})).await;
    assert_eq!(st["mode"], "read-only", "{st}");
    f.restart().await;
    // Still read-only: the write is refused (and its escalation prompt denied).
    let ran = f.bash("echo new > new.txt", Some("deny")).await;
    assert!(
        !f.project.join("new.txt").exists(),
        "a restart made the session writable again: {}",
        ran.output
    );
    assert!(ran.escalation.is_some(), "{}", ran.output);
    // Back to the config's, and that too is remembered.
    let st = f.set_sandbox(json!({"mode": null})).await;
    assert_eq!(st["mode"], "workspace-write", "{st}");
    f.restart().await;
    f.bash("echo new > new.txt", None).await;
    assert!(f.project.join("new.txt").exists());
}

#[tokio::test]
async fn config_adds_writable_paths_and_refuses_bad_values() {
    let mut f = Fixture::new("[sandbox]\nwritable = [\"{root}/cache\"]\n").await;
    let cache = f.env.dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let ran = f
        .bash(&format!("echo c > {}/c.txt", cache.display()), None)
        .await;
    assert!(ran.output.contains("Exit code: 0"), "{}", ran.output);
    assert!(cache.join("c.txt").exists());
    let st = f.c.request("config/get", json!({})).await;
    assert_eq!(
        st["result"]["config"]["sandbox"]["writable"][0],
        cache.display().to_string(),
        "{st}"
    );

    // A relative path and an unknown mode are refused, naming the key.
    for (text, key) in [
        ("[sandbox]\nwritable = [\"rel/dir\"]\n", "sandbox.writable"),
        ("[sandbox]\nmode = \"strict\"\n", "sandbox.mode"),
    ] {
        let env = TestEnv::new();
        env.write_config(text);
        let out = env.command("crushd").arg("--foreground").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}");
        assert!(err.contains(key), "{err}");
    }
}

/// The escalation goes through the usual multi-client flow: every subscribed client is asked,
/// the first answer wins, the others hear who answered.
#[tokio::test]
async fn any_client_answers_the_escalation() {
    let mut f = Fixture::new("").await;
    let mut other = RawConn::initialized_as(&f.env.socket, "other-editor").await;
    let r = other
        .request("session/subscribe", json!({"sessionId": f.sid}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let target = f.home.join("by-other.txt");
    let args = json!({ "command": format!("touch {}", target.display()) }).to_string();
    f.mock
        .push(Script::text("Running.").tool_call("call_multi", "bash", &args));
    f.mock.push(Script::text("done"));
    let r =
        f.c.request(
            "agent/send",
            json!({"sessionId": f.sid, "prompt": "go", "yolo": true}),
        )
        .await;
    let run = r["result"]["runId"].as_str().unwrap().to_owned();
    // Both are asked; the other client answers.
    let mine = f.c.daemon_request("permission/request").await;
    let theirs = other.daemon_request("permission/request").await;
    assert_eq!(
        mine["params"]["requestId"], theirs["params"]["requestId"],
        "{mine} {theirs}"
    );
    assert!(theirs["params"]["escalation"].is_object(), "{theirs}");
    other.reply(&theirs, json!({"decision": "allow"})).await;
    let resolved =
        f.c.wait_for("$/permissionResolved", |m| {
            m["method"] == "$/permissionResolved"
        })
        .await;
    assert_eq!(resolved["params"]["decision"], "allow", "{resolved}");
    assert!(
        resolved["params"]["by"]
            .as_str()
            .unwrap()
            .contains("other-editor"),
        "{resolved}"
    );
    let done = f.c.run_complete(&run).await;
    assert_eq!(done["text"], "done", "{done}");
    assert!(target.exists(), "the allowed unconfined run did not happen");
}

/// `crushctl run --sandbox read-only --yolo`: the session's commands cannot write, and without a
/// terminal the escalation is denied and said on stderr. (Multi-threaded: `crushctl` is waited
/// for synchronously while the mock model serves it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crushctl_run_chooses_the_sessions_sandbox() {
    let f = Fixture::new("").await;
    let args = json!({ "command": "echo x > made.txt" }).to_string();
    f.mock
        .push(Script::text("").tool_call("call_ctl", "bash", &args));
    f.mock.push(Script::text("done"));
    let mut cmd = f.env.command("crushctl");
    cmd.current_dir(&f.project).args([
        "run",
        "--yolo",
        "--sandbox",
        "read-only",
        "--no-network",
        "make a file",
    ]);
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        !f.project.join("made.txt").exists(),
        "read-only let a write in"
    );
    assert!(
        err.contains("unconfined") && err.contains("denied"),
        "{err}"
    );
    let result = f
        .mock
        .requests()
        .iter()
        .flat_map(|r| r.tool_results())
        .find(|(id, _)| id == "call_ctl")
        .map(|(_, out)| out)
        .unwrap();
    assert!(
        result.contains("The sandbox (read-only) refused"),
        "{result}"
    );
    // An unknown mode is a usage error.
    let mut cmd = f.env.command("crushctl");
    cmd.current_dir(&f.project)
        .args(["run", "--sandbox", "strict", "x"]);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
