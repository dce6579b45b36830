//! Access hardening (issue 10), black-box against a real `crushd`: the socket directory and
//! socket file are private to the user (0700 / 0600, owned by the daemon's uid), a socket
//! directory that is open, owned by someone else or a symlink is refused at start with a message
//! that says what to do, another uid is refused for real (a client run as `nobody` through
//! `setpriv`: first stopped by the directory's mode, then — with the directory and socket loosened
//! on purpose — by the daemon's peer-uid check, which logs it), and running as root is warned about.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crush_tests::{DEADLINE, RawConn, TestEnv};

const NOBODY: u32 = 65534;
const PYTHON: &str = "/usr/bin/python3";

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Whether this machine can run a client as another user: we are root and have `setpriv` and a
/// system Python that `nobody` can execute. Says why not when it cannot.
fn can_switch_user() -> bool {
    if !is_root() {
        eprintln!("skipped: running a client as another uid needs root");
        return false;
    }
    let ok = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            PYTHON,
            "-c",
            "pass",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: `setpriv … {PYTHON}` cannot run as uid {NOBODY} here");
    }
    ok
}

/// Runs, as uid/gid `nobody`, a tiny client that connects to `socket`, sends `initialize` and
/// prints what happened: `connect-error <errno name>`, `closed` (the daemon hung up without a
/// reply) or `reply <bytes>`.
fn connect_as_nobody(socket: &Path) -> String {
    let script = r#"
import errno, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("connect-error", errno.errorcode.get(e.errno, e.errno)); sys.exit(0)
body = b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"clientInfo":{"name":"intruder"}}}'
try:
    s.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
    data = s.recv(65536)
except OSError as e:
    print("closed", errno.errorcode.get(e.errno, e.errno)); sys.exit(0)
print("reply", data[:200]) if data else print("closed")
"#;
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            PYTHON,
            "-c",
            script,
        ])
        .arg(socket)
        .output()
        .expect("run the client as nobody");
    assert!(
        out.status.success(),
        "the nobody client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn socket_dir_is_0700_and_socket_0600_owned_by_the_daemon_user() {
    let env = TestEnv::new();
    let _d = env.spawn_daemon(&[]);
    let me = rustix::process::geteuid().as_raw();
    let dir = std::fs::symlink_metadata(env.socket.parent().unwrap()).unwrap();
    assert!(dir.is_dir());
    assert_eq!(dir.mode() & 0o7777, 0o700, "socket directory mode");
    assert_eq!(dir.uid(), me);
    let sock = std::fs::symlink_metadata(&env.socket).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&sock.file_type()));
    assert_eq!(sock.mode() & 0o7777, 0o600, "socket file mode");
    assert_eq!(sock.uid(), me);
}

#[test]
fn socket_file_is_0600_whatever_the_umask() {
    // A umask of 0 would leave a freshly bound socket 0777; the daemon sets 0600 itself.
    let env = TestEnv::new();
    let mut cmd = env.command("crushd");
    cmd.arg("--foreground");
    let script = "umask 000; exec \"$0\" \"$@\"";
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(script)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    let d = crush_tests::DaemonProcess::spawn(sh);
    d.wait_for_log("listening", DEADLINE);
    let mode = std::fs::symlink_metadata(&env.socket).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(env.socket.parent().unwrap())
        .unwrap()
        .mode()
        & 0o7777;
    assert_eq!(dir_mode, 0o700);
}

/// Starts a daemon that must refuse to start; returns its log.
fn refused_start(env: &TestEnv, needle: &str) -> String {
    let mut d = env.start_daemon(&[]);
    let line = d.wait_for_log(needle, DEADLINE);
    let status = d.wait_exit(DEADLINE);
    assert!(!status.success(), "crushd started anyway: {}", d.log_text());
    assert!(
        !env.socket.exists(),
        "crushd created its socket in a refused directory"
    );
    line
}

#[test]
fn open_socket_dir_is_refused_with_the_fix_in_the_message() {
    let env = TestEnv::new();
    let dir = env.socket.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    chmod(dir, 0o755);
    let line = refused_start(&env, "must be private");
    assert!(line.contains("chmod 700"), "{line}");
    assert!(line.contains("0755"), "{line}");
    // Group-writable only is just as refused.
    chmod(dir, 0o720);
    refused_start(&env, "must be private");
}

#[test]
fn symlinked_socket_dir_is_refused() {
    let env = TestEnv::new();
    let real = env.dir.path().join("real-run");
    std::fs::create_dir(&real).unwrap();
    chmod(&real, 0o700);
    std::os::unix::fs::symlink(&real, env.socket.parent().unwrap()).unwrap();
    let line = refused_start(&env, "symbolic link");
    assert!(line.contains("refusing to use it"), "{line}");
    assert_eq!(
        std::fs::read_dir(&real).unwrap().count(),
        0,
        "it wrote into the link's target"
    );
}

#[test]
fn socket_dir_path_that_is_a_file_is_refused() {
    let env = TestEnv::new();
    std::fs::write(env.socket.parent().unwrap(), "not a dir").unwrap();
    refused_start(&env, "is not a directory");
}

#[test]
fn socket_dir_owned_by_another_user_is_refused() {
    if !is_root() {
        eprintln!("skipped: giving a directory to another uid needs root");
        return;
    }
    let env = TestEnv::new();
    let dir = env.socket.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    chmod(dir, 0o700);
    std::os::unix::fs::chown(dir, Some(NOBODY), Some(NOBODY)).unwrap();
    let line = refused_start(&env, "not by you");
    assert!(line.contains(&format!("owned by uid {NOBODY}")), "{line}");
}

#[test]
fn running_as_root_is_warned_about() {
    let env = TestEnv::new();
    let d = env.spawn_daemon(&[]);
    if is_root() {
        let line = d.wait_for_log("running as root", DEADLINE);
        assert!(line.contains("WARN"), "{line}");
    } else {
        assert!(!d.log_text().contains("running as root"));
    }
}

#[tokio::test]
async fn another_uid_is_refused_by_the_dir_mode_and_by_the_peer_check() {
    if !can_switch_user() {
        return;
    }
    let env = TestEnv::new();
    let d = env.spawn_daemon(&[]);
    let run_dir = env.socket.parent().unwrap();
    // Let `nobody` traverse the test's own temp directory, so the socket directory is the only
    // thing in the way (as under a real $XDG_RUNTIME_DIR/…, whose parents are traversable).
    chmod(env.dir.path(), 0o711);

    // 1. The directory is 0700: nobody cannot even reach the socket.
    let got = connect_as_nobody(&env.socket);
    assert_eq!(got, "connect-error EACCES");

    // 2. Loosen the directory and the socket on purpose (as a careless chmod would): the
    //    daemon's own peer-uid check still refuses the connection, and logs who it was.
    chmod(run_dir, 0o711);
    chmod(&env.socket, 0o666);
    let got = connect_as_nobody(&env.socket);
    assert!(got.starts_with("closed"), "nobody got an answer: {got}");
    let line = d.wait_for_log("refused a connection", DEADLINE);
    assert!(
        line.contains(&format!("peer uid {NOBODY} is not ours")),
        "{line}"
    );

    // The owner is still served.
    let mut me = RawConn::initialized(&env.socket).await;
    me.assert_alive().await;
    let status = me.request("daemon/status", serde_json::json!({})).await;
    assert!(status.get("result").is_some(), "{status}");
}
