//! `crushctl --remote`: the daemon on another machine, reached through a real OpenSSH server
//! (Debian's `openssh-server`). The test starts its own `sshd -D -e` on a random 127.0.0.1 port
//! with its own host key, authorized key and config; the client's ssh reads an ssh config the
//! test writes (known host pinned, `StrictHostKeyChecking yes`, key authentication only). The
//! "remote machine" is this one with its own runtime, state, config and data directories: the
//! remote `crushctl` is a wrapper script that sets them, so the remote daemon is a different
//! daemon from any local one.
//!
//! Not in a network namespace of its own: the remote daemon must reach the test's loopback model
//! mock, which lives in the test process's namespace, and sshd run as uid 0 of a user namespace
//! (`unshare -rn`) attempts privilege separation it cannot do there.
//!
//! `.ci/run` installs openssh-server; without it these tests fail and say how to install it.
//! The server and the wrappers: `crush_tests::sshd`.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};

use rustix::process::Signal;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crush_tests::cli::CliProcess;
use crush_tests::mock_llm::{MockLlm, Script};
use crush_tests::sshd::{SshServer, remote_crushctl};
use crush_tests::{DEADLINE, DaemonProcess, RawConn, TestEnv};

/// A private sshd and everything the two sides need to use it.
struct World {
    /// The local side: its environment has no daemon of its own.
    local: TestEnv,
    /// The remote side's directories (its daemon's socket, state, config and data).
    remote: TestEnv,
    sshd: DaemonProcess,
    /// The ssh program crushctl runs: `ssh -F <the test's ssh config>`.
    ssh: PathBuf,
    /// The crushctl the remote side runs: the built one, with the remote environment.
    remote_crushctl: PathBuf,
    /// A workspace directory on the remote side.
    project: PathBuf,
    mock: MockLlm,
}

impl World {
    async fn start() -> World {
        let local = TestEnv::new();
        let remote = TestEnv::new();
        let mock = MockLlm::start().await;
        remote.use_model_at(&mock.base_url());
        let server = SshServer::start(&local.dir.path().join("ssh"));
        let remote_crushctl = remote_crushctl(&remote);
        let r = remote.dir.path();
        let project = r.join("project");
        std::fs::create_dir_all(&project).unwrap();
        World {
            local,
            remote,
            sshd: server.sshd,
            ssh: server.ssh,
            remote_crushctl,
            project,
            mock,
        }
    }

    /// `crushctl --remote HOST args…` on the local side (started in a local directory that
    /// does not exist on the remote side).
    fn crushctl(&self, host: &str, args: &[&str]) -> Command {
        let mut cmd = self.local.command("crushctl");
        cmd.current_dir(self.local.dir.path())
            .env("CRUSHD_SSH", &self.ssh)
            .env("CRUSHD_REMOTE_CRUSHCTL", &self.remote_crushctl)
            .arg("--remote")
            .arg(host)
            .args(args);
        cmd
    }

    fn output(&self, host: &str, args: &[&str]) -> std::process::Output {
        self.crushctl(host, args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn project(&self) -> &str {
        self.project.to_str().unwrap()
    }
}

/// Live direct children of `pid` (Linux `/proc/<pid>/stat`'s ppid field).
fn children(pid: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some((name, rest)) = stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(") "))
        else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) && state != "Z" {
            found.push((child, name.to_owned()));
        }
    }
    found
}

fn kill(pid: u32, sig: Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn answer_text(lines: &[Value]) -> String {
    lines
        .iter()
        .filter(|l| l["type"] == "text")
        .map(|l| l["text"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_over_the_tunnel_autostarts_the_remote_daemon_and_answers() {
    let w = World::start().await;
    w.mock.push(Script::text("Hello from the other side."));
    let out = w.output("box", &["run", "--json", "-w", w.project(), "hi"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    let lines = json_lines(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(answer_text(&lines), "Hello from the other side.");
    // The daemon that answered is the remote side's, started through the proxy; the local
    // side has none.
    assert!(w.remote.socket.exists(), "no remote daemon socket");
    assert!(!w.local.socket.exists(), "a local daemon was started");
    let status = w.output("box", &["status", "--json"]);
    assert_eq!(status.status.code(), Some(0));
    let st: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(st["socket"], w.remote.socket.to_str().unwrap(), "{st}");
    assert!(
        st["workspaces"].to_string().contains(w.project()),
        "the remote daemon does not know the remote workspace: {st}"
    );
    w.sshd.wait_for_log("Accepted publickey", DEADLINE);

    // Without -w there is no remote workspace to default to.
    let out = w.output("box", &["run", "hi"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("with --remote, name the workspace"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let stop = w.output("box", &["daemon", "stop", "--force"]);
    assert_eq!(
        stop.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
}

/// Runs `crushctl --remote box run --json` whose answer has a held second half, drops the
/// tunnel with `drop_tunnel` after the first half, lets the run finish while crushctl cannot
/// get back in, then lets it in: the answer must be printed whole, every byte once.
async fn the_answer_survives_a_dropped_tunnel(drop_tunnel: impl FnOnce(&World, &CliProcess)) {
    let w = World::start().await;
    let daemon = {
        let mut cmd = w.remote.command("crushd");
        cmd.arg("--foreground");
        DaemonProcess::spawn(cmd)
    };
    daemon.wait_for_log("listening", DEADLINE);
    let gate = CancellationToken::new();
    w.mock.push(
        Script::text("Part one.")
            .tool_call("call_1", "ls", "{}")
            .held(gate.clone()),
    );
    w.mock.push(Script::text("Part two."));
    let mut p = CliProcess::spawn(w.crushctl("box", &["run", "--json", "-w", w.project(), "go"]));
    p.wait_json_text("Part one.");
    let first: Value = serde_json::from_str(p.stdout().lines().next().unwrap()).unwrap();
    let (session, run) = (
        first["sessionId"].as_str().unwrap().to_owned(),
        first["runId"].as_str().unwrap().to_owned(),
    );
    let mut observer = RawConn::initialized(&w.remote.socket).await;
    observer
        .request("session/subscribe", json!({"sessionId": session}))
        .await;

    // New SSH connections wait (the listener is stopped) while the run finishes.
    w.sshd.signal(Signal::STOP);
    drop_tunnel(&w, &p);
    p.wait_stdout("\"type\":\"disconnected\"");
    gate.cancel();
    let done = observer.run_complete(&run).await;
    assert_eq!(done["text"], "Part two.");
    w.sshd.signal(Signal::CONT);

    let status = p.wait_exit();
    assert_eq!(status.code(), Some(0), "stderr: {}", p.stderr());
    let lines = json_lines(&p.stdout());
    assert_eq!(answer_text(&lines), "Part one.Part two.", "{lines:#?}");
    let results: Vec<&Value> = lines.iter().filter(|l| l["type"] == "result").collect();
    assert_eq!(results.len(), 1, "{lines:#?}");
    assert_eq!(results[0]["state"], "completed");
    assert!(
        lines.iter().any(|l| l["type"] == "disconnected"),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ssh_process_killed_mid_run_reconnects_with_no_gap_and_no_duplicate() {
    the_answer_survives_a_dropped_tunnel(|_, p| {
        let ssh: Vec<u32> = children(p.pid())
            .into_iter()
            .filter(|(_, name)| name == "ssh")
            .map(|(pid, _)| pid)
            .collect();
        assert_eq!(ssh.len(), 1, "crushctl's ssh: {:?}", children(p.pid()));
        kill(ssh[0], Signal::KILL);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sshd_session_killed_mid_run_reconnects_with_no_gap_and_no_duplicate() {
    the_answer_survives_a_dropped_tunnel(|w, _| {
        let sessions = children(w.sshd.pid());
        assert!(!sessions.is_empty(), "sshd has no session process");
        for (pid, _) in sessions {
            kill(pid, Signal::KILL);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_host_a_refused_key_or_a_missing_remote_crushctl_says_so() {
    let w = World::start().await;
    let cases: [(&str, Option<&str>, &str); 3] = [
        ("nohost.invalid", None, "Could not resolve hostname"),
        ("wrongkey", None, "Permission denied (publickey)"),
        (
            "box",
            Some("/nonexistent/crushctl"),
            "No such file or directory",
        ),
    ];
    for (host, crushctl, says) in cases {
        let mut cmd = w.crushctl(host, &["status"]);
        if let Some(c) = crushctl {
            cmd.env("CRUSHD_REMOTE_CRUSHCTL", c);
        }
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{host}: {stderr}");
        assert!(
            stderr.contains(&format!("cannot reach crushd on ssh://{host} over SSH"))
                && stderr.contains(says),
            "{host}: {stderr}"
        );
    }
    // The remote command was not found: say which setting names it.
    let out = w
        .crushctl(
            "box",
            &["--remote-crushctl", "/nonexistent/crushctl", "status"],
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--remote-crushctl"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = w.output("bad host", &["status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a remote host"));
    // Nothing was started on either side.
    assert!(!w.remote.socket.exists() && !w.local.socket.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_with_remote_relays_to_the_remote_daemon() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = World::start().await;
    let mut child = tokio::process::Command::from(w.crushctl("box", &["proxy"]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}).to_string();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("Content-Length: {}\r\n\r\n{body}", body.len()).as_bytes())
        .await
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(DEADLINE, async {
        while !String::from_utf8_lossy(&got).contains("\"serverInfo\"") {
            let n = stdout.read(&mut buf).await.unwrap();
            assert!(n > 0, "proxy closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("no initialize answer through the remote proxy");
    // The daemon that answered is the remote side's, autostarted by the remote proxy.
    assert!(w.remote.socket.exists());
    drop(stdin);
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    let stop = w.remote.crushctl(&["daemon", "stop", "--force"]);
    assert_eq!(stop.status.code(), Some(0));
}

/// `crushctl acp --remote`: an ACP editor drives the remote daemon through the tunnel. The
/// editor's `cwd` is a path of this machine; every session is in the remote workspace `-w`
/// names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crushctl_acp_over_the_tunnel_runs_a_prompt_in_the_remote_workspace() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let w = World::start().await;
    w.mock.push(Script::text("Remote hello."));
    let mut cmd = w.crushctl("box", &["acp", "-w", w.project()]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut answer = async |id: u64, line: Value| -> (Value, Vec<Value>) {
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        let mut seen = Vec::new();
        loop {
            let l = tokio::time::timeout(DEADLINE, lines.next_line())
                .await
                .expect("an answer in time")
                .unwrap()
                .expect("crushctl acp closed its stdout");
            let v: Value = serde_json::from_str(&l).unwrap();
            if v["id"] == id && v.get("method").is_none() {
                return (v, seen);
            }
            seen.push(v);
        }
    };
    let (init, _) = answer(
        1,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
               "params": {"protocolVersion": 1, "clientCapabilities": {}}}),
    )
    .await;
    assert_eq!(init["result"]["protocolVersion"], 1, "{init}");
    let local_cwd = w.local.dir.path().join("editor-project");
    let (s, _) = answer(
        2,
        json!({"jsonrpc": "2.0", "id": 2, "method": "session/new",
               "params": {"cwd": local_cwd, "mcpServers": []}}),
    )
    .await;
    let session = s["result"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("{s}"))
        .to_owned();
    let (done, updates) = answer(
        3,
        json!({"jsonrpc": "2.0", "id": 3, "method": "session/prompt",
               "params": {"sessionId": session, "prompt": [{"type": "text", "text": "hi"}]}}),
    )
    .await;
    assert_eq!(done["result"]["stopReason"], "end_turn", "{done}");
    let text: String = updates
        .iter()
        .filter(|u| u["params"]["update"]["sessionUpdate"] == "agent_message_chunk")
        .map(|u| {
            u["params"]["update"]["content"]["text"]
                .as_str()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(text, "Remote hello.");
    // The session is the remote daemon's, in the remote workspace.
    assert!(w.remote.socket.exists(), "no remote daemon socket");
    assert!(!w.local.socket.exists(), "a local daemon was started");
    let mut c = RawConn::initialized(&w.remote.socket).await;
    let got = c
        .request("session/get", json!({"sessionId": session}))
        .await;
    let ws = c.request("workspace/list", json!({})).await;
    let path = ws["result"]["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["workspaceId"] == got["result"]["workspaceId"])
        .map(|x| x["path"].clone())
        .unwrap_or_else(|| panic!("{ws}"));
    assert_eq!(
        PathBuf::from(path.as_str().unwrap()),
        std::fs::canonicalize(w.project()).unwrap()
    );
    drop(stdin);
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "stdin closed → clean exit: {status}");
}
