//! The daemon on another machine, reached over SSH. The client runs `ssh … crushctl proxy` (the
//! stdio ⇄ socket relay, which starts the remote daemon when needed) and speaks the protocol over
//! that process's stdin and stdout, exactly as it would over the local socket. crushd never
//! listens on a network port: who may reach a daemon is decided by SSH's authentication, and the
//! daemon on the far side sees an ordinary local client (ARCHITECTURE.md "Remote daemons").
//!
//! ssh runs with `BatchMode=yes`: its stdin and stdout belong to the protocol, so a password or
//! host-key question could never be answered; it fails at once and says why on stderr, which
//! [`Tunnel`] keeps to explain the failure. Keys come from ssh's own configuration (an agent,
//! `~/.ssh/config`).

use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::task::JoinHandle;

use crate::error::ClientError;

/// Environment variable naming the remote machine (as `--remote`).
pub const REMOTE_ENV: &str = "CRUSHD_REMOTE";
/// Environment variable naming the `crushctl` to run on the remote machine.
pub const REMOTE_CRUSHCTL_ENV: &str = "CRUSHD_REMOTE_CRUSHCTL";
/// Environment variable naming the local `ssh` program (default: `ssh` on `PATH`).
pub const SSH_ENV: &str = "CRUSHD_SSH";

/// How much of ssh's stderr is kept to explain a failure (its last bytes).
const STDERR_TAIL: usize = 4096;

/// A machine to reach over SSH: `[ssh://][user@]host[:port]`. Anything else (keys, jump hosts,
/// aliases) belongs in `~/.ssh/config`, which ssh reads as usual.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteHost {
    pub user: Option<String>,
    /// A host name, an address, or a `Host` alias from `~/.ssh/config`. An IPv6 address is
    /// written in brackets when a port follows: `[::1]:2222`.
    pub host: String,
    pub port: Option<u16>,
}

/// Why a `--remote` value is not a host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a remote host ([ssh://][user@]host[:port]): {reason}")]
pub struct BadRemote {
    value: String,
    reason: &'static str,
}

impl FromStr for RemoteHost {
    type Err = BadRemote;

    fn from_str(value: &str) -> Result<Self, BadRemote> {
        let bad = |reason| BadRemote {
            value: value.to_owned(),
            reason,
        };
        let rest = value.strip_prefix("ssh://").unwrap_or(value);
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains("://") {
            return Err(bad("only ssh:// is supported"));
        }
        let (user, hostport) = match rest.rsplit_once('@') {
            Some(("", _)) => return Err(bad("the user name is empty")),
            Some((u, h)) => (Some(u.to_owned()), h),
            None => (None, rest),
        };
        let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
            let (addr, after) = inner
                .split_once(']')
                .ok_or_else(|| bad("an opening [ without its ]"))?;
            match after {
                "" => (addr, None),
                _ => match after.strip_prefix(':') {
                    Some(p) => (addr, Some(p)),
                    None => return Err(bad("something after ] that is not :port")),
                },
            }
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        let port = port
            .map(|p| match p.parse::<u16>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(bad("the port is not a number from 1 to 65535")),
            })
            .transpose()?;
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        // ssh would read a leading dash as an option, and these never name a host.
        let shell_safe = |s: &str| {
            !s.starts_with('-')
                && s.chars()
                    .all(|c| !c.is_whitespace() && !c.is_control() && !"'\"\\/`$;&|<>".contains(c))
        };
        if !shell_safe(host) || !user.as_deref().is_none_or(shell_safe) {
            return Err(bad("it contains a character no host or user name has"));
        }
        Ok(RemoteHost {
            user,
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for RemoteHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ssh://")?;
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        match (self.host.contains(':'), self.port) {
            (true, Some(p)) => write!(f, "[{}]:{p}", self.host),
            (false, Some(p)) => write!(f, "{}:{p}", self.host),
            (_, None) => f.write_str(&self.host),
        }
    }
}

/// How to reach a daemon on another machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub host: RemoteHost,
    /// The `crushctl` to run there: a command name looked up on the remote `PATH` (that of a
    /// non-interactive login, which may lack `~/.cargo/bin`) or a path.
    pub crushctl: String,
    /// The local ssh program.
    pub ssh: PathBuf,
}

impl Remote {
    /// `host` with the remote `crushctl` from `crushctl` or `$CRUSHD_REMOTE_CRUSHCTL`, else
    /// `crushctl`, and ssh from `$CRUSHD_SSH`, else `ssh`.
    pub fn new(host: RemoteHost, crushctl: Option<String>) -> Self {
        let non_empty = |v: String| (!v.trim().is_empty()).then_some(v);
        let crushctl = crushctl
            .and_then(non_empty)
            .or_else(|| std::env::var(REMOTE_CRUSHCTL_ENV).ok().and_then(non_empty))
            .unwrap_or_else(|| "crushctl".to_owned());
        let ssh = std::env::var_os(SSH_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("ssh"));
        Self {
            host,
            crushctl,
            ssh,
        }
    }

    /// The ssh command that runs `crushctl proxy` on the remote machine, its stdio being the
    /// protocol's. `autostart` false passes `--no-autostart` (a reconnect never starts a daemon
    /// that was stopped on purpose).
    pub fn proxy_command(&self, autostart: bool) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.ssh);
        cmd.args([
            // No terminal: the session is a byte pipe.
            "-T",
            // Never ask a question on a stdio the protocol owns.
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            // Notice a dead network within a minute, so the client reconnects.
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=3",
        ]);
        if let Some(p) = self.host.port {
            cmd.arg("-p").arg(p.to_string());
        }
        if let Some(u) = &self.host.user {
            cmd.arg("-l").arg(u);
        }
        cmd.arg("--").arg(&self.host.host);
        // ssh hands the command to the remote user's shell as one string.
        let mut remote = format!("{} proxy", shell_quote(&self.crushctl));
        if !autostart {
            remote.push_str(" --no-autostart");
        }
        cmd.arg(remote);
        cmd
    }
}

/// `s` as one word for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A running `ssh … crushctl proxy`. Dropping it kills ssh (closing the connection); its
/// stderr is kept (the last few KiB) to say why a connection could not be made.
pub(crate) struct Tunnel {
    host: RemoteHost,
    child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_reader: Option<JoinHandle<()>>,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        if let Some(r) = &self.stderr_reader {
            r.abort();
        }
    }
}

impl Tunnel {
    /// Starts ssh; the protocol goes into the returned stdin and comes out of the stdout.
    pub(crate) fn open(
        remote: &Remote,
        autostart: bool,
    ) -> Result<(ChildStdout, ChildStdin, Tunnel), ClientError> {
        let mut cmd = tokio::process::Command::from(remote.proxy_command(autostart));
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| ClientError::Remote {
            host: remote.host.to_string(),
            reason: format!("cannot run {}: {e}", remote.ssh.display()),
        })?;
        let (Some(stdout), Some(stdin), Some(mut err)) =
            (child.stdout.take(), child.stdin.take(), child.stderr.take())
        else {
            return Err(ClientError::Remote {
                host: remote.host.to_string(),
                reason: "ssh started without its pipes".to_owned(),
            });
        };
        let stderr: Arc<Mutex<Vec<u8>>> = Arc::default();
        let tail = stderr.clone();
        let host = remote.host.to_string();
        let stderr_reader = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            loop {
                let n = match err.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                tracing::debug!(%host, stderr = %String::from_utf8_lossy(&buf[..n]).trim_end(), "ssh");
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                t.extend_from_slice(&buf[..n]);
                let excess = t.len().saturating_sub(STDERR_TAIL);
                t.drain(..excess);
            }
        });
        tracing::debug!(host = %remote.host, pid = child.id(), "started ssh");
        Ok((
            stdout,
            stdin,
            Tunnel {
                host: remote.host.clone(),
                child,
                stderr,
                stderr_reader: Some(stderr_reader),
            },
        ))
    }

    /// The connection failed before `initialize` was answered (`cause`): wait (briefly) for ssh
    /// to exit and explain the failure with what ssh, or the remote crushctl, said.
    pub(crate) async fn failed(mut self, cause: ClientError) -> ClientError {
        let status = match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(Ok(s)) => Some(s),
            _ => {
                let _ = self.child.start_kill();
                None
            }
        };
        if let Some(r) = self.stderr_reader.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), r).await;
        }
        let said = {
            let t = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
            String::from_utf8_lossy(&t).trim().to_owned()
        };
        // The remote crushctl exits 2 when the remote daemon's config is unusable: its own
        // words name file, line and key.
        if status.and_then(|s| s.code()) == Some(2) && !said.is_empty() {
            return ClientError::DaemonConfig {
                message: format!("{}: {said}", self.host),
            };
        }
        // A shell's "command not found": point at the setting that names it.
        let hint = if status.and_then(|s| s.code()) == Some(127) {
            " (is crushctl installed there? --remote-crushctl or $CRUSHD_REMOTE_CRUSHCTL names it)"
        } else {
            ""
        };
        let reason = match (said.is_empty(), status) {
            (false, Some(s)) => format!("{said} (ssh: {s}){hint}"),
            (false, None) => said,
            (true, Some(s)) => format!("{cause} (ssh: {s})"),
            (true, None) => cause.to_string(),
        };
        ClientError::Remote {
            host: self.host.to_string(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(s: &str) -> RemoteHost {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_the_forms_of_a_host() {
        assert_eq!(
            host("box"),
            RemoteHost {
                user: None,
                host: "box".into(),
                port: None
            }
        );
        assert_eq!(
            host("ssh://me@box.example:2222"),
            RemoteHost {
                user: Some("me".into()),
                host: "box.example".into(),
                port: Some(2222)
            }
        );
        assert_eq!(host("me@[::1]:22").host, "::1");
        assert_eq!(host("[::1]").port, None);
        assert_eq!(host("ssh://box/").to_string(), "ssh://box");
        assert_eq!(host("me@[::1]:22").to_string(), "ssh://me@[::1]:22");
    }

    #[test]
    fn refuses_what_is_not_a_host() {
        for bad in [
            "",
            "http://box",
            "@box",
            "box:0",
            "box:99999",
            "box:x",
            "-oProxyCommand=x",
            "box;rm",
            "a b",
            "[::1",
            "[::1]x",
        ] {
            assert!(bad.parse::<RemoteHost>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn the_remote_command_is_quoted_for_the_remote_shell() {
        let r = Remote {
            host: host("me@box:2222"),
            crushctl: "/opt/it's/crushctl".into(),
            ssh: "ssh".into(),
        };
        let cmd = r.proxy_command(false);
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args[args.len() - 7..],
            [
                "-p",
                "2222",
                "-l",
                "me",
                "--",
                "box",
                r"'/opt/it'\''s/crushctl' proxy --no-autostart",
            ]
        );
        assert!(args.contains(&"BatchMode=yes".to_owned()));
    }
}
