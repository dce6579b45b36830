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

/// Keys of the route test: all share the prefix the probe looks for (`secret_probe.py`).
const PROBE_KEY: &str = "sk-probe-mock-8c1f0e";
const PROBE_SECRETS: [(&str, &str); 3] = [
    ("OPENAI_API_KEY", "sk-probe-openai-51d2"),
    ("GITHUB_TOKEN", "sk-probe-github-9a3b"),
    (
        "DATABASE_URL",
        "postgres://app:sk-probe-dbpass@db.internal/app",
    ),
];

/// What a tool process could reach when `crushctl run` (holding the keys in its environment)
/// autostarts the daemon, which runs a bash tool call executing `secret_probe.py`: the lines the
/// probe printed. `as_nobody` runs crushctl (and so the daemon and the tool) as uid 65534.
async fn probe_routes(as_nobody: bool) -> String {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.write_config(&format!(
        "default_model = \"mock/mock-1\"\n\n[providers.mock]\ntype = \"openai\"\nbase_url = \"{url}\"\napi_key_env = \"MOCK_API_KEY\"\n",
        url = mock.base_url()
    ));
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("probe.py"),
        include_str!("../src/secret_probe.py"),
    )
    .unwrap();
    if as_nobody {
        let ok = std::process::Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(env.dir.path())
            .status()
            .unwrap();
        assert!(ok.success());
    }
    mock.push(Script::text("Probing.").tool_call(
        "call_probe",
        "bash",
        r#"{"command":"/usr/bin/python3 probe.py"}"#,
    ));
    mock.push(Script::text("done"));

    let crushctl = |args: &[&str]| {
        let mut cmd = if as_nobody {
            let mut c = tokio::process::Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(crush_tests::bin("crushctl"));
            c
        } else {
            tokio::process::Command::new(crush_tests::bin("crushctl"))
        };
        let mut std_cmd = std::process::Command::new("unused");
        env.apply_env(&mut std_cmd);
        for (k, v) in std_cmd.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.args(args)
            .env("MOCK_API_KEY", PROBE_KEY)
            .envs(PROBE_SECRETS)
            .current_dir(&project)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        cmd
    };
    let out =
        tokio::time::timeout(DEADLINE * 3, crushctl(&["run", "--yolo", "probe"]).output()).await;
    let Ok(out) = out else {
        let _ = crushctl(&["daemon", "stop"]).output().await;
        panic!("crushctl run did not finish within {:?}", DEADLINE * 3);
    };
    let out = out.unwrap();
    // The keys are gone from the daemon's environment block itself, not only out of the tool's
    // reach: this test, as root with every capability, reads it (the probe names the pid).
    if rustix::process::geteuid().is_root()
        && let Some(pid) = mock.requests().get(1).and_then(|r| {
            r.tool_results().into_iter().find_map(|(_, out)| {
                out.lines()
                    .find(|l| l.starts_with("environ ") && l.contains(" crushd:"))
                    .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
            })
        })
    {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let environ = String::from_utf8_lossy(&environ);
        assert!(environ.contains("XDG_DATA_HOME="), "{environ}");
        assert!(
            !environ.contains("sk-probe-") && !environ.contains("MOCK_API_KEY"),
            "the daemon's environment block: {environ}"
        );
    }
    let stop = crushctl(&["daemon", "stop"]).output().await.unwrap();
    assert!(
        out.status.success(),
        "crushctl run: {:?}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stop.status.success(), "{stop:?}");
    let reqs = mock.requests();
    assert_eq!(
        reqs[0].header("authorization"),
        Some(format!("Bearer {PROBE_KEY}").as_str())
    );
    let (_, probe) = reqs[1]
        .tool_results()
        .into_iter()
        .find(|(id, _)| id == "call_probe")
        .unwrap();
    assert!(probe.contains("probe done"), "{probe}");
    probe
}

/// Descriptors this test process would pass to a program it starts (not close-on-exec), with
/// what they point to: the harness's own (cargo's jobserver, say) reach crushctl, the daemon and
/// the tool the way the kernel passes any inherited descriptor, and are not the daemon's to close.
fn inheritable_fds_of_this_test() -> Vec<String> {
    const O_CLOEXEC: u32 = 0o2_000_000;
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let fd = e.file_name().to_string_lossy().into_owned();
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
            continue;
        };
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .unwrap_or(O_CLOEXEC);
        if flags & O_CLOEXEC == 0
            && let Ok(target) = std::fs::read_link(e.path())
        {
            out.push(format!("{fd}={}", target.display()));
        }
    }
    out
}

/// The routes the issue names were all tried on the daemon and on crushctl and none leaked; the
/// tool process holds no descriptor but its standard three and what the test harness itself
/// passes on; the daemon's and the guard's descriptors are closed to it; as root it runs without
/// capabilities.
fn assert_no_route(probe: &str, as_root: bool) {
    // The figures in RELIABILITY.md come from this (`-- --nocapture`).
    eprintln!("what the probe found:\n{probe}");
    let leaks: Vec<&str> = probe.lines().filter(|l| l.contains("LEAK")).collect();
    assert!(leaks.is_empty(), "a tool reached a key:\n{probe}");
    let tried = |route: &str, comm: &str| {
        probe
            .lines()
            .any(|l| l.starts_with(&format!("{route} ")) && l.contains(&format!(" {comm}:")))
    };
    for route in ["environ", "cmdline", "mem", "ptrace"] {
        for comm in ["crushd", "crushctl", "exe"] {
            assert!(
                tried(route, comm),
                "the probe did not try {route} on {comm}:\n{probe}"
            );
        }
    }
    let tool = probe
        .lines()
        .find_map(|l| l.strip_prefix("fds tool "))
        .unwrap();
    let harness = inheritable_fds_of_this_test();
    for fd in tool.split_whitespace() {
        let n: u32 = fd.split('=').next().unwrap().parse().unwrap();
        assert!(
            n <= 2 || harness.iter().any(|h| h == fd),
            "the tool inherited {fd} (all: {tool}; the harness passes {harness:?})"
        );
    }
    for comm in ["crushd", "exe"] {
        let line = probe
            .lines()
            .find(|l| l.starts_with("fds ") && l.contains(&format!(" {comm}:")))
            .unwrap();
        assert!(line.contains("denied"), "{line}");
    }
    if as_root {
        assert!(probe.contains("status CapEff: 0000000000000000"), "{probe}");
        assert!(probe.contains("status CapPrm: 0000000000000000"), "{probe}");
        assert!(probe.contains("status NoNewPrivs: 1"), "{probe}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tool_process_reaches_a_key_by_any_route_as_root() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: this case runs the daemon as root (the other case covers a user)");
        return;
    }
    let probe = probe_routes(false).await;
    assert_no_route(&probe, true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tool_process_reaches_a_key_by_any_route_as_an_unprivileged_user() {
    let as_nobody = rustix::process::geteuid().is_root();
    if as_nobody && !std::path::Path::new("/usr/bin/setpriv").exists() {
        panic!("running the daemon as uid 65534 needs /usr/bin/setpriv");
    }
    let probe = probe_routes(as_nobody).await;
    assert_no_route(&probe, false);
}

/// The password in a `base_url`; the test looks for it everywhere the daemon writes or answers.
const URL_PASSWORD: &str = "sk-url-SECRET-pw4217";

#[tokio::test]
async fn credentials_in_a_base_url_are_redacted_everywhere() {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    let with_creds = mock
        .base_url()
        .replacen("://", &format!("://proxyuser:{URL_PASSWORD}@"), 1);
    // `down` points at a closed port: its connection error quotes the URL.
    env.write_config(&format!(
        "default_model = \"proxied/mock-1\"\n\n[providers.proxied]\ntype = \"openai\"\nbase_url = \"{with_creds}\"\n\n[providers.down]\ntype = \"openai\"\nbase_url = \"http://proxyuser:{URL_PASSWORD}@127.0.0.1:9/v1\"\n\n[agent]\nmax_attempts = 1\n"
    ));
    let mut cmd = env.command("crushd");
    cmd.arg("--foreground")
        .arg("--debug-methods")
        .env("CRUSHD_LOG", "trace");
    let d = DaemonProcess::spawn(cmd);
    d.wait_for_log("listening", DEADLINE);
    let mut c = RawConn::initialized(&env.socket).await;
    let sid = session(&env, &mut c).await;
    let clean = |what: &str, text: &str| {
        assert!(
            !text.contains(URL_PASSWORD),
            "{what} shows the password: {text}"
        );
    };

    let cfg = c.request("config/get", json!({})).await;
    clean("config/get", &cfg.to_string());
    let shown = cfg["result"]["config"]["providers"]["proxied"]["baseUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(shown.starts_with("http://<redacted>@127.0.0.1:"), "{shown}");
    let models = c.request("model/list", json!({})).await;
    clean("model/list", &models.to_string());

    // A turn that works (the user-info reaches the server as Basic authentication)…
    mock.push(Script::text("fine"));
    let run = send(&mut c, &sid, "hello", json!({})).await;
    assert_eq!(c.run_complete(&run).await["text"], "fine");
    let auth = mock.requests()[0]
        .header("authorization")
        .map(str::to_owned);
    assert!(
        auth.as_deref().is_some_and(|a| a.starts_with("Basic ")),
        "{auth:?}"
    );
    // …an error that quotes the endpoint's URL (404)…
    mock.push(Script::error(404, "no such model"));
    let run = send(&mut c, &sid, "again", json!({})).await;
    let done = c.run_complete(&run).await;
    let err = done["error"].as_str().unwrap();
    assert!(err.contains("http://<redacted>@127.0.0.1:"), "{err}");
    clean("$/runComplete", &done.to_string());
    clean(
        "run/get",
        &c.request("run/get", json!({"runId": run}))
            .await
            .to_string(),
    );
    // …and a connection error, whose text comes from the HTTP library.
    let run = send(&mut c, &sid, "down", json!({"model": "down/m"})).await;
    let done = c.run_complete(&run).await;
    assert!(
        done["error"].as_str().unwrap().contains("<redacted>@"),
        "{done}"
    );
    clean("$/runComplete", &done.to_string());
    clean(
        "session/messages",
        &c.request("session/messages", json!({"sessionId": sid}))
            .await
            .to_string(),
    );

    // The database files (and its WAL) and the whole trace-level log.
    for e in std::fs::read_dir(env.data_dir()).unwrap().flatten() {
        let bytes = std::fs::read(e.path()).unwrap();
        clean(
            &e.path().display().to_string(),
            &String::from_utf8_lossy(&bytes),
        );
    }
    let log = d.log_text();
    assert!(log.contains("TRACE"), "the log is at trace level");
    clean("the daemon's log", &log);
}
