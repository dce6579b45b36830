//! A private OpenSSH server for the `--remote` tests and benchmark: Debian's `sshd` run by the
//! test (`-D -e`, its own config, host key and authorized key, on a random 127.0.0.1 port), and
//! an `ssh` wrapper whose config pins that host key (`StrictHostKeyChecking yes`) and offers
//! only the authorized key (`Host box`) or one the server refuses (`Host wrongkey`). The "remote
//! machine" is this one: [`remote_crushctl`] writes a `crushctl` wrapper that gives the remote
//! side its own runtime, state, config and data directories.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{DEADLINE, DaemonProcess, TestEnv, bin};

pub const SSHD: &str = "/usr/sbin/sshd";
pub const INSTALL_HINT: &str = "install Debian's OpenSSH server and client: \
`apt-get install -y --no-install-recommends openssh-server openssh-client` (.ci/run does this)";

/// A running sshd and the ssh program that reaches it.
pub struct SshServer {
    pub sshd: DaemonProcess,
    /// `ssh -F <the test's ssh config>`, for `CRUSHD_SSH`.
    pub ssh: PathBuf,
    pub port: u16,
}

fn run(cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}; {INSTALL_HINT}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes an executable script.
pub fn write_script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A free loopback port (the kernel's choice; sshd takes it a moment later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl SshServer {
    /// Starts sshd with its files in `dir` and waits until it listens. Fails (with the install
    /// hint) when OpenSSH is missing.
    pub fn start(dir: &Path) -> SshServer {
        assert!(
            Path::new(SSHD).is_file(),
            "{SSHD} is missing; {INSTALL_HINT}"
        );
        std::fs::create_dir_all(dir).unwrap();
        for key in ["host_key", "client_key", "other_key"] {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(key)));
        }
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
        // sshd run by root chroots its unprivileged half into /run/sshd (Debian's service
        // creates it at start; a container may not have it).
        if rustix::process::geteuid().is_root() {
            std::fs::create_dir_all("/run/sshd").unwrap();
        }
        let port = free_port();
        let d = dir.display();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1:{port}\n\
                 HostKey {d}/host_key\n\
                 AuthorizedKeysFile {d}/authorized_keys\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\n\
                 UsePAM no\n\
                 StrictModes no\n\
                 PidFile none\n\
                 LogLevel VERBOSE\n"
            ),
        )
        .unwrap();
        let mut cmd = Command::new(SSHD);
        cmd.args(["-D", "-e", "-f"]).arg(&config);
        let sshd = DaemonProcess::spawn(cmd);
        sshd.wait_for_log("Server listening on", DEADLINE);

        let host_pub = std::fs::read_to_string(dir.join("host_key.pub")).unwrap();
        std::fs::write(
            dir.join("known_hosts"),
            format!("[127.0.0.1]:{port} {host_pub}"),
        )
        .unwrap();
        let common = format!(
            "  HostName 127.0.0.1\n  Port {port}\n  IdentitiesOnly yes\n  \
             UserKnownHostsFile {d}/known_hosts\n  StrictHostKeyChecking yes\n  LogLevel ERROR\n"
        );
        std::fs::write(
            dir.join("ssh_config"),
            format!(
                "Host box\n  IdentityFile {d}/client_key\n{common}\n\
                 Host wrongkey\n  IdentityFile {d}/other_key\n{common}\n"
            ),
        )
        .unwrap();
        let ssh = dir.join("ssh");
        write_script(
            &ssh,
            &format!("#!/bin/sh\nexec ssh -F '{d}/ssh_config' \"$@\"\n"),
        );
        SshServer { sshd, ssh, port }
    }
}

/// A `crushctl` for the "remote machine" (for `--remote-crushctl`): the built one, run with
/// `remote`'s directories, so its daemon is not the local side's.
pub fn remote_crushctl(remote: &TestEnv) -> PathBuf {
    let r = remote.dir.path();
    let path = r.join("crushctl");
    write_script(
        &path,
        &format!(
            "#!/bin/sh\nexport XDG_RUNTIME_DIR='{r}/xdg-run' XDG_STATE_HOME='{r}/state' \
             XDG_CONFIG_HOME='{r}/config' XDG_DATA_HOME='{r}/data' CRUSHD_SOCKET='{sock}' \
             CRUSHD_LOG=info\nunset CRUSHD_BIN\nexec '{bin}' \"$@\"\n",
            r = r.display(),
            sock = remote.socket.display(),
            bin = bin("crushctl").display()
        ),
    );
    path
}
