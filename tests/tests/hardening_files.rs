//! Files the daemon writes (issue 16, item 4), black-box against a real `crushd`: whatever the
//! umask, its directories are 0700 and its files 0600 — the database with its `-wal` and `-shm`,
//! the logs, `crushd.stdio.log`, the lock — while tool commands and the `write` tool still create
//! files with the user's own umask; an existing data or state directory that is too open is
//! tightened (and says so), one owned by someone else is refused; a `crushd.lock` symlink is
//! refused without touching its target, and a regular file named `crushd.sock` is never deleted.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use serde_json::json;

use crush_tests::mock_llm::{MockLlm, Script};
use crush_tests::{DEADLINE, RawConn, TestEnv};

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

/// `cmd` run through `sh -c 'umask 000; exec …'`, with the same environment.
fn under_umask_000(cmd: &Command) -> Command {
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    sh
}

/// Stops the background daemon of `env` when the test ends, passed or failed.
struct StopDaemon<'a>(&'a TestEnv);

impl Drop for StopDaemon<'_> {
    fn drop(&mut self) {
        let _ = self.0.crushctl(&["daemon", "stop"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_the_daemon_writes_is_private_under_umask_000() {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_at(&mock.base_url());
    // The way a client starts it: `crushctl daemon start` (autostart, background mode, output in
    // crushd.stdio.log), here under umask 000.
    let mut start = env.command("crushctl");
    start.args(["daemon", "start"]);
    let out = under_umask_000(&start).output().unwrap();
    let _stop = StopDaemon(&env);
    assert!(out.status.success(), "{out:?}");

    // Writes: a session, and a turn whose tools create files in the project.
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let mut c = RawConn::initialized(&env.socket).await;
    let ws = c.request("workspace/open", json!({"path": project})).await;
    let s = c
        .request(
            "session/create",
            json!({"workspaceId": ws["result"]["workspaceId"]}),
        )
        .await;
    let sid = s["result"]["sessionId"].as_str().unwrap().to_owned();
    c.request("session/subscribe", json!({"sessionId": sid}))
        .await;
    mock.push(
        Script::text("Making files.")
            .tool_call(
                "call_bash",
                "bash",
                r#"{"command":"touch by-bash.txt; mkdir by-bash-dir; umask"}"#,
            )
            .tool_call(
                "call_write",
                "write",
                r#"{"path":"new-dir/by-write.txt","content":"hi\n"}"#,
            ),
    );
    mock.push(Script::text("done"));
    let r = c
        .request(
            "agent/send",
            json!({"sessionId": sid, "prompt": "make files", "yolo": true}),
        )
        .await;
    let run = r["result"]["runId"].as_str().unwrap().to_owned();
    assert_eq!(c.run_complete(&run).await["text"], "done");

    let data = env.data_dir();
    let state = env.state_dir();
    let run_dir = env.socket.parent().unwrap().to_path_buf();
    let mut checked = Vec::new();
    for dir in [
        data.clone(),
        data.parent().unwrap().to_path_buf(),
        state.clone(),
        state.parent().unwrap().to_path_buf(),
        run_dir.clone(),
    ] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        checked.push(dir);
    }
    let mut files = vec![
        data.join("crushd.db"),
        data.join("crushd.db-wal"),
        data.join("crushd.db-shm"),
        state.join("crushd.stdio.log"),
        run_dir.join("crushd.lock"),
    ];
    let logs: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("crushd.log.")
        })
        .collect();
    assert!(!logs.is_empty(), "no log file in {}", state.display());
    files.extend(logs);
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    // The tools kept the user's umask: what they create is the user's business.
    let reqs = mock.requests();
    let results = reqs[1].tool_results();
    let bash = &results.iter().find(|(id, _)| id == "call_bash").unwrap().1;
    assert!(bash.contains("0000"), "the command's umask: {bash}");
    assert_eq!(mode(&project.join("by-bash.txt")), 0o666);
    assert_eq!(mode(&project.join("by-bash-dir")), 0o777);
    // (`write` creates files 0644 less the umask, as before.)
    assert_eq!(mode(&project.join("new-dir/by-write.txt")), 0o644);
    assert_eq!(mode(&project.join("new-dir")), 0o777);
    eprintln!(
        "checked {} directories (0700) and {} files (0600)",
        checked.len(),
        files.len()
    );

    let out = env.crushctl(&["daemon", "stop"]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn open_data_and_state_directories_are_tightened_and_say_so() {
    let env = TestEnv::new();
    let data = env.data_dir();
    let state = env.state_dir();
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    // Files an older daemon left readable to everyone.
    let old_log = state.join("crushd.log.2000-01-01");
    std::fs::write(&old_log, "old\n").unwrap();
    std::fs::set_permissions(&old_log, std::fs::Permissions::from_mode(0o644)).unwrap();
    let db = data.join("crushd.db");
    std::fs::write(&db, "").unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();

    let out = env.crushctl(&["daemon", "start"]);
    let _stop = StopDaemon(&env);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&old_log), 0o600);
    assert_eq!(mode(&db), 0o600);
    let log = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .filter(|e| e.path() != old_log)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect::<String>();
    assert!(
        log.contains(&format!("{}: mode 0755 was open to others", data.display()))
            && log.contains(&format!(
                "{}: mode 0777 was open to others",
                state.display()
            )),
        "the log says what was tightened:\n{log}"
    );
    let out = env.crushctl(&["daemon", "stop"]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_data_directory_owned_by_someone_else_is_refused() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: giving a directory to another uid needs root");
        return;
    }
    let env = TestEnv::new();
    let data = env.data_dir();
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&data, Some(65534), Some(65534)).unwrap();
    let mut d = env.start_daemon(&[]);
    d.wait_for_log("is owned by uid 65534, not by you", DEADLINE);
    assert!(!d.wait_exit(DEADLINE).success());
    assert!(!data.join("crushd.db").exists());
}

#[test]
fn a_lock_file_symlink_is_refused_and_its_target_is_untouched() {
    let env = TestEnv::new();
    let run_dir = env.socket.parent().unwrap();
    std::fs::create_dir_all(run_dir).unwrap();
    std::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let victim = env.dir.path().join("victim.txt");
    std::fs::write(&victim, "precious\n").unwrap();
    std::os::unix::fs::symlink(&victim, run_dir.join("crushd.lock")).unwrap();

    let mut d = env.start_daemon(&[]);
    d.wait_for_log(
        "crushd.lock is a symbolic link; refusing to use it",
        DEADLINE,
    );
    assert!(!d.wait_exit(DEADLINE).success());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(!env.socket.exists());
}

#[test]
fn a_regular_file_named_like_the_socket_is_never_deleted() {
    let env = TestEnv::new();
    let run_dir = env.socket.parent().unwrap();
    std::fs::create_dir_all(run_dir).unwrap();
    std::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(&env.socket, "not a socket\n").unwrap();

    let mut d = env.start_daemon(&[]);
    d.wait_for_log(
        "exists and is not a socket; refusing to remove it",
        DEADLINE,
    );
    assert!(!d.wait_exit(DEADLINE).success());
    assert_eq!(
        std::fs::read_to_string(&env.socket).unwrap(),
        "not a socket\n"
    );

    // An actual stale socket (bound, then left behind) is still replaced.
    std::fs::remove_file(&env.socket).unwrap();
    let stale = std::os::unix::net::UnixListener::bind(&env.socket).unwrap();
    drop(stale);
    assert!(env.socket.exists());
    let _d = env.spawn_daemon(&[]);
    assert!(std::os::unix::net::UnixStream::connect(&env.socket).is_ok());
}
