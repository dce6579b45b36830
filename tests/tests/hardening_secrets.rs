//! Hardening: API keys never leave the daemon except in the request to their provider — not in
//! its log (at trace level), not in `config/get`, not in error messages (a 401 whose body echoes
//! the key), and not in the environment of `bash` tool processes (the configured key variable
//! and every `*_API_KEY`/`*_TOKEN`-style variable are scrubbed).
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};

use crush_tests::mock_llm::{MockLlm, Script};
use crush_tests::{DEADLINE, DaemonProcess, RawConn, TestEnv};

const KEY: &str = "sk-test-SECRET-4f9a1c7e2b8d";
const CONFIG_KEY: &str = "sk-cfg-SECRET-77aa55cc33ee";
/// Other secrets in the daemon's environment that no tool may see.
const OTHER_SECRETS: [(&str, &str); 3] = [
    ("GITHUB_TOKEN", "ghp_SECRET_github_0123456789"),
    ("SOME_SERVICE_API_KEY", "svc-SECRET-abcdef"),
    ("AWS_SECRET_ACCESS_KEY", "aws-SECRET-xyz"),
];

/// A daemon at trace level with the key in `MOCK_API_KEY` (named by `api_key_env`), a second
/// provider whose key is written in the config file, and other secrets in its environment.
async fn daemon(env: &TestEnv, mock: &MockLlm) -> DaemonProcess {
    env.write_config(&format!(
        "default_model = \"mock/mock-1\"\n\n[providers.mock]\ntype = \"openai\"\nbase_url = \"{url}\"\napi_key_env = \"MOCK_API_KEY\"\n\n[providers.inline]\ntype = \"anthropic\"\nbase_url = \"{url}\"\napi_key = \"{CONFIG_KEY}\"\n",
        url = mock.base_url()
    ));
    let mut cmd = env.command("crushd");
    cmd.arg("--foreground")
        .arg("--debug-methods")
        .env("CRUSHD_LOG", "trace")
        .env("MOCK_API_KEY", KEY);
    for (k, v) in OTHER_SECRETS {
        cmd.env(k, v);
    }
    let d = DaemonProcess::spawn(cmd);
    d.wait_for_log("listening", DEADLINE);
    d
}

async fn session(env: &TestEnv, c: &mut RawConn) -> String {
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
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
    sid
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

/// Every secret value this test put anywhere.
fn secrets() -> Vec<&'static str> {
    let mut v = vec![KEY, CONFIG_KEY];
    v.extend(OTHER_SECRETS.iter().map(|(_, s)| *s));
    v
}

fn assert_no_secret(what: &str, text: &str) {
    for s in secrets() {
        assert!(!text.contains(s), "{what} contains the secret {s:?}");
    }
    assert!(!text.contains("SECRET"), "{what} contains a secret");
}

#[tokio::test]
async fn keys_stay_out_of_logs_config_errors_and_tool_environments() {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    let d = daemon(&env, &mock).await;
    let mut c = RawConn::initialized(&env.socket).await;
    let sid = session(&env, &mut c).await;

    // A real turn with a tool: the model runs `env` through bash.
    mock.push(Script::text("Looking.").tool_call("call_env", "bash", r#"{"command":"env"}"#));
    mock.push(Script::text("done"));
    let run = send(&mut c, &sid, "show the environment", json!({"yolo": true})).await;
    let done = c.run_complete(&run).await;
    assert_eq!(done["text"], "done", "{done}");
    // The key went where it belongs: to its provider, in the Authorization header.
    let reqs = mock.requests();
    assert_eq!(
        reqs[0].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    // The tool's environment: no configured key variable, no secret-looking variable.
    let (_, env_out) = reqs[1]
        .tool_results()
        .into_iter()
        .find(|(id, _)| id == "call_env")
        .unwrap();
    assert!(env_out.contains("PATH="), "{env_out}");
    assert_no_secret("the bash tool's environment", &env_out);
    for line in env_out.lines() {
        let Some((name, _)) = line.split_once('=') else {
            continue;
        };
        assert!(
            name != "MOCK_API_KEY" && !crushd::tools::is_secret_name(name),
            "{name} reached the tool"
        );
    }

    // config/get: key variables named, keys not shown.
    let cfg = c.request("config/get", json!({})).await;
    assert_no_secret("config/get", &cfg.to_string());
    let providers = &cfg["result"]["config"]["providers"];
    assert_eq!(providers["mock"]["apiKeyEnv"], "MOCK_API_KEY");
    assert_eq!(providers["mock"]["apiKeySet"], true);
    assert_eq!(providers["inline"]["apiKey"], "<redacted>");

    // An error whose body echoes the key (some servers do): the message is redacted wherever
    // it goes — $/runComplete, run/get, the stored message.
    mock.push(Script::error(
        401,
        &format!("Incorrect API key provided: {KEY}. Check your key."),
    ));
    let run = send(&mut c, &sid, "again", json!({})).await;
    let done = c.run_complete(&run).await;
    let err = done["error"].as_str().unwrap();
    assert!(
        err.contains("Incorrect API key provided: <redacted>"),
        "{err}"
    );
    assert!(err.contains("MOCK_API_KEY"), "{err}");
    assert_no_secret("$/runComplete", &done.to_string());
    let got = c.request("run/get", json!({"runId": run})).await;
    assert_no_secret("run/get", &got.to_string());
    let page = c
        .request("session/messages", json!({"sessionId": sid}))
        .await;
    assert_no_secret("session/messages", &page.to_string());

    // The same through the provider whose key is in the config file (Anthropic's x-api-key).
    mock.push(Script::error(
        403,
        &format!("key {CONFIG_KEY} is not allowed"),
    ));
    let run = send(&mut c, &sid, "inline", json!({"model": "inline/m"})).await;
    let done = c.run_complete(&run).await;
    assert_eq!(
        mock.requests().last().unwrap().header("x-api-key"),
        Some(CONFIG_KEY)
    );
    assert!(
        done["error"]
            .as_str()
            .unwrap()
            .contains("key <redacted> is not allowed"),
        "{done}"
    );
    assert_no_secret("$/runComplete", &done.to_string());

    // The whole trace-level log of all that.
    let log = d.log_text();
    assert!(log.contains("TRACE"), "the log is at trace level");
    assert_no_secret("the daemon's log", &log);
}
