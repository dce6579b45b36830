//! A full disk, the whole cycle: fill → operate → free → operate → restart → verify. Two real
//! faults: a small tmpfs mounted in a private mount namespace (`unshare -m`; the namespace is
//! held by a process of its own so the filesystem outlives a daemon restart, and the test reaches
//! it through `/proc/<holder>/root`), and a file-size limit (`ulimit -f`, lifted again with
//! `prlimit`). What a user must see: every request either fails with StorageFailed or was
//! committed; every accepted run gets its `$/runComplete` while the daemon lives; writes work
//! again within seconds of space returning, with no restart; after a restart every acknowledged
//! session and run is there.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crush_tests::mock_llm::{MockLlm, Script};
use crush_tests::{DEADLINE, DaemonProcess, RawConn, TestEnv, error_code};

/// A tmpfs of `size` mounted in a mount namespace that a `sleep` process holds open.
struct SmallDisk {
    holder: Child,
    mount: PathBuf,
}

impl SmallDisk {
    fn mount(env: &TestEnv, size: &str) -> Option<SmallDisk> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: mounting a tmpfs in a private mount namespace needs root");
            return None;
        }
        let mount = env.dir.path().join("small-disk");
        std::fs::create_dir(&mount).unwrap();
        let mut holder = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg("mount -t tmpfs -o size=\"$1\",mode=0700 tmpfs \"$2\" && echo mounted && exec sleep 3600")
            .args(["sh", size])
            .arg(&mount)
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "mounted", "the tmpfs could not be mounted");
        Some(SmallDisk { holder, mount })
    }

    /// A path on the small disk as this (outside) process reaches it.
    fn outside(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.holder.id()))
            .join(self.mount.strip_prefix("/").unwrap())
            .join(name)
    }

    /// `crushd` started inside the namespace with its data directory on the small disk.
    fn daemon(&self, env: &TestEnv) -> DaemonProcess {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.holder.id().to_string())
            .arg("-m")
            .arg("--")
            .arg(crush_tests::bin("crushd"))
            .args(["--foreground", "--debug-methods", "--data-dir"])
            .arg(&self.mount);
        env.apply_env(&mut cmd);
        let d = DaemonProcess::spawn(cmd);
        d.wait_for_log("listening", DEADLINE);
        d
    }

    /// Fills what is left of the disk with one file.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.outside("filler")).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        loop {
            if let Err(e) = f.write_all(&chunk) {
                assert_eq!(e.raw_os_error(), Some(libc_enospc()), "{e}");
                break;
            }
        }
        // Whatever fits in less than a chunk, too.
        while f.write_all(&[0u8; 512]).is_ok() {}
    }

    fn free(&self) {
        std::fs::remove_file(self.outside("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

fn libc_enospc() -> i32 {
    rustix::io::Errno::NOSPC.raw_os_error()
}

/// Everything the daemon acknowledged, to be checked after the restart.
#[derive(Default)]
struct Acked {
    sessions: Vec<String>,
    runs: Vec<(String, String)>,
}

async fn open_workspace(c: &mut RawConn, path: &Path) -> String {
    let r = c.request("workspace/open", json!({"path": path})).await;
    r["result"]["workspaceId"].as_str().unwrap().to_owned()
}

/// `session/create` that either fails with StorageFailed or returns a session another connection
/// can see at once (it was committed).
async fn create_session(
    c: &mut RawConn,
    other: &mut RawConn,
    workspace: &str,
    title: &str,
    acked: &mut Acked,
) -> Result<String, Value> {
    let r = c
        .request(
            "session/create",
            json!({"workspaceId": workspace, "title": title}),
        )
        .await;
    if r.get("error").is_some() {
        assert_eq!(error_code(&r), Some(-32020), "only StorageFailed: {r}");
        return Err(r);
    }
    let id = r["result"]["sessionId"].as_str().unwrap().to_owned();
    let seen = other.request("session/get", json!({"sessionId": id})).await;
    assert!(
        seen.get("result").is_some(),
        "an acknowledged session is visible to another connection: {seen}"
    );
    acked.sessions.push(id.clone());
    Ok(id)
}

/// `agent/send` that either fails with StorageFailed or gets exactly one `$/runComplete`.
async fn send(
    c: &mut RawConn,
    session: &str,
    prompt: &str,
    acked: &mut Acked,
) -> Result<Value, Value> {
    let r = c
        .request(
            "agent/send",
            json!({"sessionId": session, "prompt": prompt}),
        )
        .await;
    if r.get("error").is_some() {
        assert_eq!(error_code(&r), Some(-32020), "only StorageFailed: {r}");
        return Err(r);
    }
    let run = r["result"]["runId"].as_str().unwrap().to_owned();
    acked.runs.push((run.clone(), prompt.to_owned()));
    let done = tokio::time::timeout(Duration::from_secs(20), c.run_complete(&run))
        .await
        .unwrap_or_else(|_| panic!("accepted run {run} never completed"));
    Ok(done)
}

/// Retries `f` until it succeeds: space came back, so a write must work again soon. Each try is a
/// real request; the deadline is the promise ("within seconds").
async fn until_ok<T>(what: &str, mut f: impl AsyncFnMut() -> Result<T, Value>) -> T {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => assert!(
                Instant::now() < end,
                "{what} still fails 10 s after space returned: {e}"
            ),
        }
        // The store needs no nudge; this only spaces the requests out.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks, on a fresh daemon, that everything acknowledged exists.
async fn verify_after_restart(c: &mut RawConn, acked: &Acked) {
    for id in &acked.sessions {
        let r = c.request("session/get", json!({"sessionId": id})).await;
        assert!(
            r.get("result").is_some(),
            "session {id} was acknowledged: {r}"
        );
    }
    for (run, prompt) in &acked.runs {
        let r = c.request("run/get", json!({"runId": run})).await;
        assert!(r.get("result").is_some(), "run {run} was acknowledged: {r}");
        let state = r["result"]["state"].as_str().unwrap();
        assert!(
            ["completed", "failed", "cancelled", "interrupted"].contains(&state),
            "run {run} is terminal after a restart: {r}"
        );
        assert_eq!(r["result"]["prompt"], prompt.as_str(), "{r}");
    }
}

async fn cycle(
    label: &str,
    env: &TestEnv,
    mut start: impl FnMut() -> DaemonProcess,
    fill: impl Fn(&DaemonProcess),
    free: impl Fn(&DaemonProcess),
) {
    let mut d = start();
    let mut c = RawConn::initialized(&env.socket).await;
    let mut other = RawConn::initialized(&env.socket).await;
    let workspace = open_workspace(&mut c, env.dir.path()).await;
    let mut acked = Acked::default();
    let session = create_session(&mut c, &mut other, &workspace, "before", &mut acked)
        .await
        .unwrap();
    c.request("session/subscribe", json!({"sessionId": session}))
        .await;
    let done = send(&mut c, &session, "before the disk fills", &mut acked)
        .await
        .unwrap();
    assert!(done.get("error").is_none(), "{done}");

    // Fill, then operate until writes fail (the WAL may hold a little room of its own).
    fill(&d);
    let title = "t".repeat(16 * 1024);
    let mut failures = 0;
    for _ in 0..200 {
        if create_session(&mut c, &mut other, &workspace, &title, &mut acked)
            .await
            .is_err()
        {
            failures += 1;
            if failures == 3 {
                break;
            }
        }
    }
    assert_eq!(failures, 3, "the full disk was never hit");
    let sessions_while_full = acked.sessions.len() - 1;
    let mut sends_refused = 0;
    for i in 0..5 {
        if send(&mut c, &session, &format!("while full {i}"), &mut acked)
            .await
            .is_err()
        {
            sends_refused += 1;
        }
    }
    c.assert_alive().await;

    // Free, and writes work again with no restart.
    free(&d);
    let freed = Instant::now();
    let again = until_ok("session/create", async || {
        create_session(&mut c, &mut other, &workspace, "after", &mut acked).await
    })
    .await;
    assert!(!again.is_empty());
    let back_after = freed.elapsed();
    let done = until_ok("agent/send", async || {
        send(&mut c, &session, "after space returned", &mut acked).await
    })
    .await;
    assert!(
        done.get("error").is_none(),
        "a run after space returned is saved: {done}"
    );

    // Restart: everything acknowledged is there.
    drop(c);
    drop(other);
    d.signal(rustix::process::Signal::TERM);
    d.wait_exit(DEADLINE);
    let _d = start();
    let mut c = RawConn::initialized(&env.socket).await;
    verify_after_restart(&mut c, &acked).await;
    println!(
        "DISKFULL {label}: {sessions_while_full} sessions created as the disk filled, then 3 \
         refused; {sends_refused} of 5 sends refused while full (the rest completed); first write \
         after space returned: {back_after:?}; after a restart all {} acknowledged sessions and \
         {} acknowledged runs present",
        acked.sessions.len(),
        acked.runs.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_tmpfs_recovers_without_a_restart_and_loses_nothing_acknowledged() {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_at(&mock.base_url());
    mock.set_default(Script::text("an answer"));
    let Some(disk) = SmallDisk::mount(&env, "4m") else {
        return;
    };
    cycle(
        "tmpfs 4 MiB",
        &env,
        || disk.daemon(&env),
        |_| disk.fill(),
        |_| disk.free(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_size_limit_recovers_when_lifted_and_loses_nothing_acknowledged() {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_at(&mock.base_url());
    mock.set_default(Script::text("an answer"));
    let data = env.dir.path().join("data-fsize");
    let start = || {
        let mut cmd = Command::new(crush_tests::bin("crushd"));
        cmd.args(["--foreground", "--debug-methods", "--data-dir"])
            .arg(&data);
        env.apply_env(&mut cmd);
        let d = DaemonProcess::spawn(cmd);
        d.wait_for_log("listening", DEADLINE);
        d
    };
    let set_fsize = |d: &DaemonProcess, limit: Option<u64>| {
        let pid = rustix::process::Pid::from_raw(d.pid() as i32).unwrap();
        let limit = rustix::process::Rlimit {
            current: limit,
            maximum: None,
        };
        rustix::process::prlimit(Some(pid), rustix::process::Resource::Fsize, limit).unwrap();
    };
    cycle(
        "file-size limit",
        &env,
        start,
        // Just above what the database holds now: the next pages do not fit.
        |d| {
            let used: u64 = ["crushd.db", "crushd.db-wal"]
                .iter()
                .filter_map(|f| std::fs::metadata(data.join(f)).ok())
                .map(|m| m.len())
                .max()
                .unwrap();
            set_fsize(d, Some(used + 8 * 1024));
        },
        |d| set_fsize(d, None),
    )
    .await;
}
