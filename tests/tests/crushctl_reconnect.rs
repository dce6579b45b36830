//! `crushctl run` survives losing its connection to the daemon: between `crushctl` and the
//! daemon sits a small Unix-socket proxy the test cuts (and keeps refusing while the run goes on
//! without `crushctl`), and the answer on stdout must still be the model's text, every byte
//! exactly once — through the replay log, or, with replay disabled, through the resync snapshot,
//! `session/messages` and the recovered outcome.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crush_tests::cli::CliProcess;
use crush_tests::mock_llm::{MockLlm, Script};
use crush_tests::{DEADLINE, RawConn, TestEnv};

/// Relays connections to the daemon; `cut` drops them all, `pause` refuses new ones.
struct Proxy {
    path: PathBuf,
    paused: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<CancellationToken>>>,
    refused: watch::Receiver<usize>,
    stop: CancellationToken,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Proxy {
    async fn start(dir: &Path, upstream: &Path) -> Proxy {
        let path = dir.join("proxy.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let paused = Arc::new(AtomicBool::new(false));
        let live: Arc<Mutex<Vec<CancellationToken>>> = Arc::default();
        let (refused_tx, refused) = watch::channel(0usize);
        let stop = CancellationToken::new();
        let (p, l, s, upstream) = (
            paused.clone(),
            live.clone(),
            stop.clone(),
            upstream.to_path_buf(),
        );
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = s.cancelled() => break,
                };
                let Ok((mut down, _)) = accepted else { break };
                if p.load(Ordering::SeqCst) {
                    drop(down);
                    refused_tx.send_modify(|n| *n += 1);
                    continue;
                }
                let Ok(mut up) = UnixStream::connect(&upstream).await else {
                    continue;
                };
                let cut = s.child_token();
                l.lock().unwrap().push(cut.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = cut.cancelled() => {}
                    }
                });
            }
        });
        Proxy {
            path,
            paused,
            live,
            refused,
            stop,
        }
    }

    fn cut(&self) {
        for t in self.live.lock().unwrap().drain(..) {
            t.cancel();
        }
    }

    async fn wait_refused(&mut self, n: usize) {
        tokio::time::timeout(DEADLINE, self.refused.wait_for(|r| *r >= n))
            .await
            .expect("crushctl never tried to reconnect")
            .unwrap();
    }
}

/// Cuts `crushctl run --json` off in the middle of the answer, lets the run finish while it is
/// away, lets it back in, and checks the answer it printed.
async fn answer_survives_a_cut(daemon_extra: &str) {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_with(&mock.base_url(), "openai", daemon_extra);
    let _daemon = env.spawn_daemon(&[]);
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let mut proxy = Proxy::start(env.dir.path(), &env.socket).await;

    let gate = CancellationToken::new();
    // Step one says "Part one." and lists the directory (no permission needed); step two,
    // after the tool result, says "Part two.".
    mock.push(
        Script::text("Part one.")
            .tool_call("call_1", "ls", "{}")
            .held(gate.clone()),
    );
    mock.push(Script::text("Part two."));
    let mut cmd = env.command("crushctl");
    cmd.current_dir(&project)
        .env("CRUSHD_SOCKET", &proxy.path)
        .args(["run", "--json", "two parts please"]);
    let mut p = CliProcess::spawn(cmd);
    p.wait_json_text("Part one.");
    let first: Value = serde_json::from_str(p.stdout().lines().next().unwrap()).unwrap();
    let (session, run) = (
        first["sessionId"].as_str().unwrap().to_owned(),
        first["runId"].as_str().unwrap().to_owned(),
    );

    // The connection drops; while crushctl is kept out, the run goes on and ends, with a
    // whole step crushctl never saw.
    let mut observer = RawConn::initialized(&env.socket).await;
    observer
        .request("session/subscribe", json!({"sessionId": session}))
        .await;
    proxy.paused.store(true, Ordering::SeqCst);
    proxy.cut();
    proxy.wait_refused(1).await;
    gate.cancel();
    let done = observer.run_complete(&run).await;
    assert_eq!(done["text"], "Part two.");
    proxy.paused.store(false, Ordering::SeqCst);

    let status = p.wait_exit();
    assert_eq!(status.code(), Some(0), "stderr: {}", p.stderr());
    let lines: Vec<Value> = p
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let text: String = lines
        .iter()
        .filter(|l| l["type"] == "text")
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Part one.Part two.", "{lines:#?}");
    let results: Vec<&Value> = lines.iter().filter(|l| l["type"] == "result").collect();
    assert_eq!(results.len(), 1, "{lines:#?}");
    assert_eq!(results[0]["state"], "completed");
    assert!(
        lines.iter().any(|l| l["type"] == "disconnected"),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_is_printed_exactly_once_across_a_dropped_connection() {
    answer_survives_a_cut("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_replay_the_rest_of_the_answer_comes_from_the_stored_messages() {
    answer_survives_a_cut("[daemon]\nreplay_events = 0\n").await;
}
