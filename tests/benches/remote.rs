//! `--remote` benchmark (figures, not assertions): what the SSH tunnel costs a client. One daemon
//! (the "remote" side's) and one loopback model mock answering one short sentence; every case
//! runs once against the daemon's socket directly (local) and once through
//! `ssh … crushctl proxy` to a private sshd on 127.0.0.1 (tunnel), and reports p50/p95:
//! - connect + `initialize` (the tunnel: a new ssh process, key exchange, authentication, the
//!   remote crushctl starting);
//! - `daemon/status` round trip over an open connection;
//! - a prompt: `agent/send` → `$/runComplete` over an open connection, the session subscribed;
//! - `crushctl run --json` as a user runs it, process start to exit.
//!
//! Run: `cargo build --release --bins && cargo bench -p crush-tests --bench remote`
//! (`--profile dev` with `cargo build --bins` for a debug build). Needs Debian's openssh-server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(unix)]
fn main() {
    bench::run();
}

#[cfg(not(unix))]
fn main() {
    eprintln!("the remote benchmark needs Unix and OpenSSH");
}

#[cfg(unix)]
mod bench {
    use std::time::{Duration, Instant};

    use serde_json::json;

    use crush_client::{Client, ConnectOptions, Remote, RemoteHost};
    use crush_tests::mock_llm::{MockLlm, Script};
    use crush_tests::sshd::{SshServer, remote_crushctl};
    use crush_tests::{TestEnv, percentile as pct};

    const CONNECTS: usize = 20;
    const STATUS: usize = 500;
    const PROMPTS: usize = 100;
    const RUNS: usize = 10;

    fn ms(d: Duration) -> String {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }

    fn row(case: &str, local: &mut [Duration], tunnel: &mut [Duration]) {
        let (l50, l95) = (pct(local, 0.5), pct(local, 0.95));
        let (t50, t95) = (pct(tunnel, 0.5), pct(tunnel, 0.95));
        println!(
            "| {case} | {} | {} | {} | {} | +{} |",
            ms(l50),
            ms(l95),
            ms(t50),
            ms(t95),
            ms(t50.saturating_sub(l50))
        );
    }

    struct World {
        _server: SshServer,
        remote_env: TestEnv,
        local_env: TestEnv,
        _mock: MockLlm,
        _daemon: crush_tests::DaemonProcess,
        remote: Remote,
        project: String,
    }

    impl World {
        fn options(&self, tunnel: bool) -> ConnectOptions {
            ConnectOptions {
                socket: Some(self.remote_env.socket.clone()),
                autostart: false,
                remote: tunnel.then(|| self.remote.clone()),
                ..ConnectOptions::default()
            }
        }
    }

    async fn connects(w: &World, tunnel: bool) -> Vec<Duration> {
        let mut out = Vec::new();
        for _ in 0..CONNECTS {
            let t = Instant::now();
            let c = Client::connect(w.options(tunnel)).await.unwrap();
            out.push(t.elapsed());
            c.shutdown().await.unwrap();
        }
        out
    }

    async fn statuses(w: &World, tunnel: bool) -> Vec<Duration> {
        let c = Client::connect(w.options(tunnel)).await.unwrap();
        for _ in 0..50 {
            c.request_raw("daemon/status", &json!({})).await.unwrap();
        }
        let mut out = Vec::new();
        for _ in 0..STATUS {
            let t = Instant::now();
            c.request_raw("daemon/status", &json!({})).await.unwrap();
            out.push(t.elapsed());
        }
        c.shutdown().await.unwrap();
        out
    }

    async fn prompts(w: &World, tunnel: bool) -> Vec<Duration> {
        let c = Client::connect(w.options(tunnel)).await.unwrap();
        let mut notes = c.take_notifications().unwrap();
        let ws = c
            .request_raw("workspace/open", &json!({"path": w.project}))
            .await
            .unwrap();
        let s = c
            .request_raw(
                "session/create",
                &json!({"workspaceId": ws["workspaceId"], "yolo": true}),
            )
            .await
            .unwrap();
        let session = s["sessionId"].as_str().unwrap().to_owned();
        c.request_raw("session/subscribe", &json!({"sessionId": session}))
            .await
            .unwrap();
        let mut out = Vec::new();
        for i in 0..PROMPTS + 5 {
            let run_id = uuid_like(i, tunnel);
            let t = Instant::now();
            c.request_raw(
                "agent/send",
                &json!({"sessionId": session, "prompt": "hi", "runId": run_id}),
            )
            .await
            .unwrap();
            loop {
                let n = notes.recv().await.unwrap();
                if n.method == "$/runComplete" && n.params["runId"] == run_id {
                    break;
                }
            }
            // The first few warm the model client and the store.
            if i >= 5 {
                out.push(t.elapsed());
            }
        }
        c.shutdown().await.unwrap();
        out
    }

    fn uuid_like(i: usize, tunnel: bool) -> String {
        format!(
            "0190{:04x}-0000-7000-8000-{:012x}",
            u16::from(tunnel),
            i + 1
        )
    }

    fn crushctl_runs(w: &World, tunnel: bool) -> Vec<Duration> {
        let mut out = Vec::new();
        for _ in 0..RUNS {
            let mut cmd = w.local_env.command("crushctl");
            if tunnel {
                cmd.env("CRUSHD_SSH", &w.remote.ssh)
                    .env("CRUSHD_REMOTE_CRUSHCTL", &w.remote.crushctl)
                    .args(["--remote", "box"]);
            } else {
                cmd.env("CRUSHD_SOCKET", &w.remote_env.socket);
            }
            cmd.args(["run", "--json", "-q", "-w", &w.project, "hi"]);
            let t = Instant::now();
            let o = cmd.stdin(std::process::Stdio::null()).output().unwrap();
            out.push(t.elapsed());
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        out
    }

    pub fn run() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let local_env = TestEnv::new();
            let remote_env = TestEnv::new();
            let mock = MockLlm::start().await;
            mock.set_default(Script::text("Hello from the other side."));
            remote_env.use_model_at(&mock.base_url());
            let server = SshServer::start(&local_env.dir.path().join("ssh"));
            let daemon = remote_env.spawn_daemon(&[]);
            let project = remote_env.dir.path().join("project");
            std::fs::create_dir_all(&project).unwrap();
            let remote = Remote {
                host: "box".parse::<RemoteHost>().unwrap(),
                crushctl: remote_crushctl(&remote_env).display().to_string(),
                ssh: server.ssh.clone(),
            };
            let w = World {
                _server: server,
                remote_env,
                local_env,
                _mock: mock,
                _daemon: daemon,
                remote,
                project: project.display().to_string(),
            };
            println!(
                "| case | local p50 | local p95 | tunnel p50 | tunnel p95 | tunnel − local (p50) |"
            );
            println!("|---|---|---|---|---|---|");
            row(
                &format!("connect + initialize ({CONNECTS})"),
                &mut connects(&w, false).await,
                &mut connects(&w, true).await,
            );
            row(
                &format!("`daemon/status` round trip ({STATUS})"),
                &mut statuses(&w, false).await,
                &mut statuses(&w, true).await,
            );
            row(
                &format!("prompt: `agent/send` → `$/runComplete` ({PROMPTS})"),
                &mut prompts(&w, false).await,
                &mut prompts(&w, true).await,
            );
            let (mut l, mut t) = (crushctl_runs(&w, false), crushctl_runs(&w, true));
            row(
                &format!("`crushctl run` start to exit ({RUNS})"),
                &mut l,
                &mut t,
            );
        });
    }
}
