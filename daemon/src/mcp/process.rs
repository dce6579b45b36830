//! A stdio MCP server's process: started in its own process group under the tool guard
//! (`crushd --tool-guard --exec …`, so it dies with the daemon even on SIGKILL), with the tool
//! environment (no secret-looking variable unless allow-listed or set in its table), its stderr
//! copied line by line into the daemon's log under the server's name, and the whole group killed
//! when the process is dropped.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

use super::config::ServerSpec;
use crate::sync::lock;
use crate::tools::guard;

/// A running server process. Dropping it kills its process group.
pub(crate) struct ServerProcess {
    pub child: Child,
    group: Option<Pid>,
}

/// The process and its pipes (stdout to read MCP from, stdin to write it to, stderr to log).
pub(crate) struct Spawned {
    pub process: ServerProcess,
    pub stdin: ChildStdin,
    pub stdout: ChildStdout,
    pub stderr: Option<ChildStderr>,
}

/// Starts `spec`'s command in `cwd`. `key_vars` are the providers' key variables, never passed.
pub(crate) fn spawn(spec: &ServerSpec, cwd: &Path, key_vars: &[String]) -> io::Result<Spawned> {
    let build = |program: &OsStr, guarded: bool| {
        let mut c = Command::new(program);
        if guarded {
            c.arg(guard::FLAG)
                .arg(guard::EXEC)
                .arg(&spec.command)
                .args(&spec.args);
        } else {
            c.args(&spec.args);
        }
        c.env_clear()
            .envs(crate::tools::tool_environment(key_vars))
            .envs(&spec.env)
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if guarded {
            // Set after the tool environment, which does not carry them.
            if let Some(soft) = guard::original_fd_limit() {
                c.env(guard::NOFILE_ENV, soft.to_string());
            }
            if let Some(mask) = crate::tools::user_umask() {
                c.env(guard::UMASK_ENV, format!("{mask:o}"));
            }
        }
        c
    };
    let mut child = match guard::program() {
        Some(program) => build(program, true).spawn()?,
        None => build(OsStr::new(&spec.command), false).spawn()?,
    };
    let group = child
        .id()
        .and_then(|id| Pid::from_raw(i32::try_from(id).ok()?));
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(io::Error::other("the server's pipes were not set up"));
    };
    let stderr = child.stderr.take();
    Ok(Spawned {
        process: ServerProcess { child, group },
        stdin,
        stdout,
        stderr,
    })
}

/// Copies a server's stderr into the daemon's log, a line at a time, until the pipe closes,
/// keeping the last `keep` lines in `tail`.
pub(crate) async fn log_stderr(
    server: String,
    stderr: ChildStderr,
    tail: Arc<Mutex<VecDeque<String>>>,
    keep: usize,
) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        // Lines are cut so a server cannot flood one log record.
        let line: String = line.chars().take(2000).collect();
        tracing::info!(target: "crushd::mcp::stderr", server = %server, "{line}");
        let mut t = lock(&tail);
        if t.len() >= keep {
            t.pop_front();
        }
        t.push_back(line.chars().take(300).collect());
    }
}

impl ServerProcess {
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops the server: SIGTERM to its group, then SIGKILL if it has not exited within
    /// `grace`. The caller has closed its stdin first, which ends a well-behaved server (and the
    /// guard, whose lifeline it is).
    pub(crate) async fn stop(mut self, grace: std::time::Duration) {
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            self.signal(Signal::TERM);
            if tokio::time::timeout(grace, self.child.wait())
                .await
                .is_err()
            {
                self.signal(Signal::KILL);
                let _ = self.child.wait().await;
            }
        }
        // Whatever else the server started in its group goes with it.
        self.signal(Signal::KILL);
        self.group = None;
    }

    fn signal(&self, sig: Signal) {
        if let Some(g) = self.group {
            // ESRCH (the group is gone) is the expected, harmless failure.
            let _ = kill_process_group(g, sig);
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.signal(Signal::KILL);
    }
}
