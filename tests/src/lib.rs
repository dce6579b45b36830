//! Shared support for the black-box tests and benchmarks: a private temporary environment per
//! test (socket, state and config directories), a real `crushd` process whose log lines can be
//! awaited, and a raw framed connection for byte-level tests.
//!
//! Nothing here sleeps to synchronize: waits are on events (a log line, a frame, a process exit)
//! with a deadline.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod cli;
pub mod mock_llm;
pub mod mock_window;
pub mod procfs;
pub mod sshd;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::UnixStream;
use tokio_util::codec::{FramedRead, FramedWrite};

use crush_protocol::LspCodec;

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Path of a workspace binary built beside the running test executable
/// (`target/<profile>/deps/<test>` → `target/<profile>/<name>`). `CRUSHD_TEST_BIN_DIR` overrides.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("CRUSHD_TEST_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("current exe");
            let mut dir = exe.parent().expect("exe dir").to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    };
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, or `--release` for benches)",
        path.display()
    );
    path
}

/// One test's private world: its own socket, state, config and data directories.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl TestEnv {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("crushd-test")
            .tempdir()
            .expect("tempdir");
        let socket = dir.path().join("run").join("crushd.sock");
        Self { dir, socket }
    }

    /// Where the daemon's database lives in this environment (`$XDG_DATA_HOME/crushd`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data").join("crushd")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state").join("crushd")
    }

    /// Writes the daemon's config file (`$XDG_CONFIG_HOME/crushd/config.toml`).
    pub fn write_config(&self, text: &str) {
        let dir = self.dir.path().join("config").join("crushd");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.toml"), text).unwrap();
    }

    /// A config whose default model is `mock/mock-1`, served by the OpenAI-compatible API at
    /// `base_url` (provider `mock`); `extra` is appended (more tables, `[agent]`, …).
    pub fn use_model_at(&self, base_url: &str) {
        self.use_model_with(base_url, "openai", "");
    }

    /// Like [`Self::use_model_at`] for a provider speaking `api` (`openai` or `anthropic`), with
    /// `extra` TOML appended.
    pub fn use_model_with(&self, base_url: &str, api: &str, extra: &str) {
        self.write_config(&format!(
            "default_model = \"mock/mock-1\"\n\n[providers.mock]\ntype = \"{api}\"\nbase_url = \"{base_url}\"\n\n{extra}\n"
        ));
    }

    /// A command for one of our binaries with this environment applied.
    pub fn command(&self, name: &str) -> Command {
        let mut cmd = Command::new(bin(name));
        self.apply_env(&mut cmd);
        cmd
    }

    pub fn apply_env(&self, cmd: &mut Command) {
        let d = self.dir.path();
        cmd.env("XDG_RUNTIME_DIR", d.join("xdg-run"))
            .env("XDG_STATE_HOME", d.join("state"))
            .env("XDG_CONFIG_HOME", d.join("config"))
            .env("XDG_DATA_HOME", d.join("data"))
            .env("CRUSHD_SOCKET", &self.socket)
            .env_remove("CRUSHD_BIN")
            .env("CRUSHD_LOG", "info");
    }

    /// Starts `crushd --foreground --debug-methods` with extra `args` and waits until it listens.
    pub fn spawn_daemon(&self, args: &[&str]) -> DaemonProcess {
        let d = self.start_daemon(args);
        d.wait_for_log("listening", DEADLINE);
        d
    }

    /// Starts `crushd --foreground --debug-methods` without waiting for anything.
    pub fn start_daemon(&self, args: &[&str]) -> DaemonProcess {
        let mut cmd = self.command("crushd");
        cmd.arg("--foreground").arg("--debug-methods").args(args);
        DaemonProcess::spawn(cmd)
    }

    /// Runs a `crushctl` command to completion.
    pub fn crushctl(&self, args: &[&str]) -> std::process::Output {
        self.command("crushctl")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run crushctl")
    }
}

/// A running `crushd` whose stderr is collected line by line.
pub struct DaemonProcess {
    child: Child,
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl DaemonProcess {
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn crushd");
        let stderr = child.stderr.take().expect("stderr");
        let log: Arc<(Mutex<Vec<String>>, Condvar)> = Arc::default();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("CRUSHD_TEST_ECHO").is_some() {
                    eprintln!("[crushd] {line}");
                }
                sink.0.lock().unwrap().push(line);
                sink.1.notify_all();
            }
            // Wake waiters when the stream ends so they can fail fast.
            sink.0.lock().unwrap().push(String::from("\u{0}eof"));
            sink.1.notify_all();
        });
        Self { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stderr line containing `needle`; returns it.
    pub fn wait_for_log(&self, needle: &str, deadline: Duration) -> String {
        self.try_wait_for_log(needle, deadline).unwrap_or_else(|| {
            panic!(
                "crushd never logged {needle:?}; log so far:\n{}",
                self.log_text()
            )
        })
    }

    pub fn try_wait_for_log(&self, needle: &str, deadline: Duration) -> Option<String> {
        let end = Instant::now() + deadline;
        let (lock, cv) = &*self.log;
        let mut lines = lock.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| l.contains(needle)) {
                return Some(l.clone());
            }
            if lines.last().is_some_and(|l| l == "\u{0}eof") {
                return None;
            }
            let now = Instant::now();
            if now >= end {
                return None;
            }
            lines = cv.wait_timeout(lines, end - now).unwrap().0;
        }
    }

    pub fn log_text(&self) -> String {
        self.log.0.lock().unwrap().join("\n")
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("pid");
        rustix::process::kill_process(pid, sig).expect("kill");
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < end,
                "crushd did not exit; log:\n{}",
                self.log_text()
            );
            // Process exit has no portable async notification in std; a short poll is the wait.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A framed connection that speaks raw JSON, for byte-level tests.
pub struct RawConn {
    reader: FramedRead<tokio::net::unix::OwnedReadHalf, LspCodec>,
    writer: FramedWrite<tokio::net::unix::OwnedWriteHalf, LspCodec>,
    next_id: u64,
    /// Messages read while waiting for something else, oldest first.
    backlog: std::collections::VecDeque<Value>,
}

impl RawConn {
    pub async fn connect(socket: &Path) -> Self {
        let stream = UnixStream::connect(socket)
            .await
            .expect("connect to crushd");
        let (r, w) = stream.into_split();
        Self {
            reader: FramedRead::new(r, LspCodec::new(64 * 1024 * 1024)),
            writer: FramedWrite::new(w, LspCodec::default()),
            next_id: 1000,
            backlog: Default::default(),
        }
    }

    /// Connects and completes `initialize` as client `test`.
    pub async fn initialized(socket: &Path) -> Self {
        Self::initialized_as(socket, "test").await
    }

    /// Connects and completes `initialize` with `clientInfo.name` = `name`.
    pub async fn initialized_as(socket: &Path, name: &str) -> Self {
        let mut c = Self::connect(socket).await;
        let r = c
            .request("initialize", json!({"clientInfo": {"name": name}}))
            .await;
        assert!(r.get("result").is_some(), "initialize failed: {r}");
        c.notify("initialized", json!({})).await;
        c
    }

    /// Connects and initializes with `params` (e.g. a `clientId`), returning the `initialize`
    /// result too.
    pub async fn initialized_with(socket: &Path, params: Value) -> (Self, Value) {
        let mut c = Self::connect(socket).await;
        let r = c.request("initialize", params).await;
        assert!(r.get("result").is_some(), "initialize failed: {r}");
        c.notify("initialized", json!({})).await;
        (c, r["result"].clone())
    }

    /// Forgets the kept messages (the caller has looked at them through [`Self::kept`]).
    pub fn clear_kept(&mut self) {
        self.backlog.clear();
    }

    pub async fn send(&mut self, msg: Value) {
        let body = serde_json::to_vec(&msg).unwrap();
        self.writer
            .send(bytes::Bytes::from(body))
            .await
            .expect("send");
    }

    /// Writes bytes as they are, without framing.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let w = self.writer.get_mut();
        w.write_all(bytes).await.expect("write");
        w.flush().await.expect("flush");
    }

    pub async fn notify(&mut self, method: &str, params: Value) {
        self.send(json!({"jsonrpc": "2.0", "method": method, "params": params}))
            .await;
    }

    /// Sends a request and returns its id.
    pub async fn start(&mut self, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        id
    }

    /// Sends a request and waits for the response with its id (other messages are skipped).
    pub async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.start(method, params).await;
        self.response(id).await
    }

    /// Asserts the connection still works: `daemon/status` gets a result.
    pub async fn assert_alive(&mut self) {
        let r = self.request("daemon/status", json!({})).await;
        assert!(
            r.get("result").is_some(),
            "the connection should still work: {r}"
        );
    }

    /// Waits for the response to `id`; other messages are kept for later `recv`/`wait_for`.
    pub async fn response(&mut self, id: u64) -> Value {
        self.wait_for(&format!("the response to request {id}"), |m| {
            m.get("id") == Some(&json!(id)) && m.get("method").is_none()
        })
        .await
    }

    /// The next message (kept ones first), within the deadline.
    pub async fn recv(&mut self) -> Value {
        if let Some(m) = self.backlog.pop_front() {
            return m;
        }
        self.read().await
    }

    async fn read(&mut self) -> Value {
        match tokio::time::timeout(DEADLINE, self.reader.next()).await {
            Ok(Some(Ok(body))) => serde_json::from_slice(&body).expect("daemon sent JSON"),
            Ok(other) => panic!("connection ended while waiting for a message: {other:?}"),
            Err(_) => panic!("no message within {DEADLINE:?}; kept: {:#?}", self.backlog),
        }
    }

    /// Waits for the first message matching `pred` (kept ones first) and removes it; messages
    /// that do not match are kept, in order.
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_within(what, DEADLINE, pred).await
    }

    /// [`Self::wait_for`] with a deadline of its own (load tests, where one wait may take
    /// longer than [`DEADLINE`]).
    pub async fn wait_for_within(
        &mut self,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i).expect("index in range");
        }
        let end = tokio::time::Instant::now() + deadline;
        loop {
            let m = match tokio::time::timeout_at(end, self.reader.next()).await {
                Ok(Some(Ok(body))) => serde_json::from_slice(&body).expect("daemon sent JSON"),
                Ok(other) => panic!("connection ended while waiting for {what}: {other:?}"),
                Err(_) => panic!("timed out waiting for {what}; got {:#?}", self.backlog),
            };
            if pred(&m) {
                return m;
            }
            self.backlog.push_back(m);
        }
    }

    /// Waits for the `$/runComplete` of `run_id` and returns its params.
    pub async fn run_complete(&mut self, run_id: &str) -> Value {
        self.wait_for(&format!("$/runComplete of {run_id}"), |m| {
            m["method"] == "$/runComplete" && m["params"]["runId"] == run_id
        })
        .await["params"]
            .clone()
    }

    /// Answers a daemon→client request.
    pub async fn reply(&mut self, request: &Value, result: Value) {
        self.send(json!({"jsonrpc": "2.0", "id": request["id"].clone(), "result": result}))
            .await;
    }

    /// Waits for a daemon→client request of `method`.
    pub async fn daemon_request(&mut self, method: &str) -> Value {
        self.wait_for(&format!("a {method} request"), |m| {
            m["method"] == method && m.get("id").is_some()
        })
        .await
    }

    /// Every message received so far and not yet taken.
    pub fn kept(&self) -> Vec<Value> {
        self.backlog.iter().cloned().collect()
    }

    /// Waits until the daemon closes the connection, returning the messages that came first.
    pub async fn recv_until_closed(&mut self) -> Vec<Value> {
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout(DEADLINE, self.reader.next()).await {
                Ok(Some(Ok(body))) => got.push(serde_json::from_slice(&body).expect("JSON")),
                Ok(Some(Err(_))) | Ok(None) => return got,
                Err(_) => panic!("connection still open after {DEADLINE:?}; got {got:?}"),
            }
        }
    }
}

/// The error code of a response, or `None` for a success.
/// The `p` quantile (0.0–1.0) of `samples`, which it sorts: the benchmarks' percentiles.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

pub fn error_code(response: &Value) -> Option<i64> {
    response.pointer("/error/code").and_then(Value::as_i64)
}

pub fn error_message(response: &Value) -> String {
    response
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Waits until `cond` holds, failing the test after [`DEADLINE`]. For conditions with no event
/// to wait on (another process's exit, seen through `/proc`), checked every few milliseconds.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Pids of live `crushd` processes whose command line mentions `needle` (Linux `/proc`).
pub fn crushd_pids_with(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // Zombies (state Z) have exited; they only wait to be reaped.
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if !zombie && cmdline.contains("crushd") && cmdline.contains(needle) {
            pids.push(pid);
        }
    }
    pids
}
