//! The `bash` tool: one shell command in the workspace root, in its own process group, with
//! secrets scrubbed from its environment (see [`super::tool_environment`]). The whole group is
//! killed on timeout, on cancel and also after the shell exits, so no background child outlives
//! the call; in the `crushd` binary the group also runs under the tool guard (`guard.rs`), which
//! kills it when the daemon dies, even by SIGKILL, and confines it when the call has a sandbox
//! policy (`sandbox/`; a confined call never falls back to running without the guard). Output
//! is captured head-and-tail within the output cap, and reading it never waits long on a pipe
//! that an escaped process still holds open. Unix only.

use std::time::Duration;

use serde::Deserialize;

use super::{Action, Prepared, ToolContext, ToolOutput, de_opt_u64};

#[derive(Debug, Deserialize)]
pub(crate) struct Args {
    command: String,
    #[serde(default, deserialize_with = "de_opt_u64")]
    timeout_ms: Option<u64>,
}

#[derive(Debug)]
#[cfg_attr(not(unix), allow(dead_code))]
pub(crate) struct Call {
    command: String,
    timeout: Duration,
}

pub(crate) fn prepare(ctx: &ToolContext, args: Args) -> Result<Prepared, ToolOutput> {
    if args.command.trim().is_empty() {
        return Err(ToolOutput::error("The command is empty."));
    }
    let limits = &ctx.limits;
    let timeout = match args.timeout_ms {
        None | Some(0) => limits.bash_default_timeout,
        Some(ms) => Duration::from_millis(ms),
    }
    .min(limits.bash_max_timeout);
    Ok(Prepared {
        tool: "bash".to_owned(),
        title: format!("Run: {}", summary(&args.command)),
        diff: None,
        command: Some(args.command.clone()),
        action: Action::Bash(Call {
            command: args.command,
            timeout,
        }),
    })
}

/// The command's first line, at most 100 characters, for titles.
fn summary(command: &str) -> String {
    let command = command.trim();
    let first = command.lines().next().unwrap_or_default();
    let mut s: String = first.chars().take(100).collect();
    if s.len() < command.len() {
        s.push('…');
    }
    s
}

#[cfg(not(unix))]
pub(crate) async fn run(_ctx: &ToolContext, _call: Call) -> (ToolOutput, Vec<String>) {
    let out = ToolOutput::error(
        "The bash tool is not supported on this platform (it needs a Unix system).",
    );
    (out, Vec::new())
}

#[cfg(unix)]
pub(crate) use unix::run;

#[cfg(unix)]
mod unix {
    use std::collections::VecDeque;
    use std::ffi::OsStr;
    use std::io;
    use std::path::Path;
    use std::process::{ExitStatus, Stdio};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use rustix::process::{Pid, Signal, kill_process_group};
    use serde_json::json;
    use tokio::io::{AsyncRead, AsyncReadExt};
    use tokio::process::{Child, Command};
    use tokio_util::task::AbortOnDropHandle;

    use super::Call;
    use crate::sync::lock;
    use crate::tools::ToolContext;
    use crate::tools::ToolOutput;
    use crate::tools::guard;
    use crate::tools::sandbox::{self, Policy};

    /// How long the group gets between SIGTERM and SIGKILL on timeout or cancel.
    const TERM_GRACE: Duration = Duration::from_millis(500);
    /// How long to wait for the output pipes to close after the group is dead. Only a process
    /// that left the group (setsid) can keep them open; it is not waited for.
    const DRAIN_WAIT: Duration = Duration::from_secs(2);
    /// How long to wait for a killed shell to be reaped.
    const REAP_WAIT: Duration = Duration::from_secs(5);
    /// Room in the output budget for the status line and section labels.
    const LABEL_RESERVE: usize = 256;

    enum End {
        Exited(ExitStatus),
        TimedOut,
        Cancelled,
        WaitFailed(io::Error),
    }

    /// Runs the call; the second value is what the sandbox refused it, if it failed because
    /// of the sandbox (`sandbox::refusals`).
    pub(crate) async fn run(ctx: &ToolContext, call: Call) -> (ToolOutput, Vec<String>) {
        let root = match tokio::fs::canonicalize(&ctx.root).await {
            Ok(r) => r,
            Err(e) => {
                let out = ToolOutput::error(format!(
                    "The workspace root {} is not accessible: {e}",
                    ctx.root.display()
                ));
                return (out, Vec::new());
            }
        };
        let sandbox = ctx.sandbox.as_ref();
        let mut child = match spawn(&root, &call.command, &ctx.scrub_env, sandbox) {
            Ok(c) => c,
            Err(e) => {
                let out = ToolOutput::error(format!("Cannot start the shell: {e}"));
                return (out, Vec::new());
            }
        };
        // The guard's lifeline: held, never written, closed when this call ends or the daemon
        // dies (see tools/guard.rs).
        let _lifeline = child.stdin.take();
        // With process_group(0) the child (the guard, or the shell) leads a new group whose id is
        // its pid; spawn returns only after the child has exec'd, so the group exists by now.
        let pgid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(Pid::from_raw);
        // Declared after `child`, so if this future is dropped mid-call the group is killed
        // before the child's own kill_on_drop, while the unreaped shell still holds the id.
        let mut guard = GroupGuard(pgid);

        let half = ctx.limits.output_max_bytes.max(2) / 2;
        let stdout = Arc::new(Mutex::new(Capture::new(half)));
        let stderr = Arc::new(Mutex::new(Capture::new(half)));
        // Readers run as tasks so the pipes never fill and stall the command; they are aborted
        // when dropped, so none outlives the call.
        let mut pumps: Vec<AbortOnDropHandle<()>> = Vec::new();
        if let Some(s) = child.stdout.take() {
            pumps.push(AbortOnDropHandle::new(tokio::spawn(pump(
                s,
                stdout.clone(),
            ))));
        }
        if let Some(s) = child.stderr.take() {
            pumps.push(AbortOnDropHandle::new(tokio::spawn(pump(
                s,
                stderr.clone(),
            ))));
        }

        let end = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => End::Cancelled,
            r = child.wait() => match r {
                Ok(status) => End::Exited(status),
                Err(e) => End::WaitFailed(e),
            },
            _ = tokio::time::sleep(call.timeout) => End::TimedOut,
        };
        match &end {
            End::Exited(_) => kill_group(pgid, Signal::KILL),
            End::TimedOut | End::Cancelled | End::WaitFailed(_) => {
                // The shell is not reaped yet, so its pid (the group id) cannot be reused.
                kill_group(pgid, Signal::TERM);
                let _ = tokio::time::timeout(TERM_GRACE, child.wait()).await;
                kill_group(pgid, Signal::KILL);
                let _ = tokio::time::timeout(REAP_WAIT, child.wait()).await;
            }
        }

        // Every path above has killed the group; after the shell is reaped its id may be reused.
        guard.0 = None;

        let drained = tokio::time::timeout(DRAIN_WAIT, async {
            for p in &mut pumps {
                let _ = p.await;
            }
        })
        .await
        .is_ok();
        // What they captured so far stays in the shared buffers.
        drop(pumps);

        let stdout = lock(&stdout);
        let stderr = lock(&stderr);
        let (status, exit_code, is_error) = match &end {
            End::Exited(s) => match (s.code(), signal_of(s)) {
                (Some(c), _) => (format!("Exit code: {c}"), Some(c), false),
                (None, Some(sig)) => (format!("Killed by signal {sig}"), None, false),
                (None, None) => ("Exited".to_owned(), None, false),
            },
            End::TimedOut => (
                format!(
                    "Timed out after {}; the command and all its child processes were killed.",
                    humantime::format_duration(call.timeout)
                ),
                None,
                true,
            ),
            End::Cancelled => (
                "The tool call was cancelled; the command and all its child processes were killed."
                    .to_owned(),
                None,
                true,
            ),
            End::WaitFailed(e) => (
                format!("Waiting for the command failed ({e}); it was killed."),
                None,
                true,
            ),
        };

        let budget = ctx
            .limits
            .output_max_bytes
            .saturating_sub(LABEL_RESERVE)
            .max(64);
        let (bo, be) = split_budget(budget, stdout.available(), stderr.available());
        let (out_text, out_cut) = stdout.render(bo);
        let (err_text, err_cut) = stderr.render(be);
        let truncated = out_cut > 0 || err_cut > 0;

        let mut content = status;
        if !out_text.is_empty() {
            content.push_str("\n\nstdout:\n");
            content.push_str(&out_text);
        }
        if !err_text.is_empty() {
            content.push_str("\n\nstderr:\n");
            content.push_str(&err_text);
        }
        if out_text.is_empty() && err_text.is_empty() {
            content.push_str("\n\n(no output)");
        }
        // Only a command that failed can have been refused; what it printed says by what.
        let failed = matches!(&end, End::Exited(s) if !s.success());
        let refused = match sandbox {
            Some(policy) if failed => {
                let shown = format!("{out_text}\n{err_text}");
                sandbox::refusals(policy, &root, &shown)
            }
            _ => Vec::new(),
        };
        if let Some(policy) = sandbox
            && !refused.is_empty()
        {
            content.push_str(&sandbox::refusal_note(policy, &refused));
        }
        if !drained {
            content.push_str(
                "\n\n(A process that left the command's process group still holds its output open; \
                 output written after the command ended is not included.)",
            );
        }
        let mut metadata = json!({
            "exitCode": exit_code,
            "timedOut": matches!(end, End::TimedOut),
            "truncated": truncated,
            "sandbox": sandbox.map(|p| p.mode.as_str()),
        });
        if !refused.is_empty() {
            metadata["sandboxRefused"] = json!(refused);
        }
        let out = ToolOutput {
            content,
            is_error,
            metadata: Some(metadata),
        };
        (out, refused)
    }

    /// Starts the command in a new process group whose id is the returned child's pid: under the
    /// tool guard when it is installed (the `crushd` binary), else the shell itself. The guard's
    /// stdin is a pipe the daemon holds open, unused, for the whole call: its end of file tells
    /// the guard that the daemon is gone.
    /// A confined call (`sandbox`) runs under the guard or not at all: the guard is what
    /// applies the confinement.
    fn spawn(
        root: &Path,
        command: &str,
        scrub: &[String],
        sandbox: Option<&Policy>,
    ) -> io::Result<Child> {
        let build = |program: &OsStr, guarded: bool| {
            let mut c = Command::new(program);
            if guarded {
                c.arg(guard::FLAG).stdin(Stdio::piped());
                if let Some(policy) = sandbox {
                    c.args(policy.guard_args());
                }
            } else {
                c.stdin(Stdio::null());
            }
            c.arg("-c")
                .arg(command)
                .current_dir(root)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                // A backstop: if this future is dropped mid-call, the shell still dies.
                .kill_on_drop(true);
            // A clean environment: only what the rule lets through, never what it does not.
            c.env_clear().envs(crate::tools::tool_environment(scrub));
            if guarded && let Some(soft) = guard::original_fd_limit() {
                c.env(guard::NOFILE_ENV, soft.to_string());
            }
            if guarded && let Some(mask) = crate::tools::user_umask() {
                c.env(guard::UMASK_ENV, format!("{mask:o}"));
            }
            c
        };
        if let Some(program) = guard::program() {
            match build(program, true).spawn() {
                Ok(c) => return Ok(c),
                Err(e) if sandbox.is_some() => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot start the tool guard that confines it: {e}"),
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the tool guard; starting the shell without it");
                }
            }
        } else if sandbox.is_some() {
            return Err(io::Error::other(
                "the command must run confined and the tool guard that confines it is not installed",
            ));
        }
        match build(OsStr::new("bash"), false).spawn() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => build(OsStr::new("sh"), false).spawn(),
            r => r,
        }
    }

    fn kill_group(pgid: Option<Pid>, sig: Signal) {
        if let Some(pgid) = pgid {
            // ESRCH (the group is already gone) is the expected, harmless failure.
            let _ = kill_process_group(pgid, sig);
        }
    }

    /// Kills the process group when dropped while still armed.
    struct GroupGuard(Option<Pid>);

    impl Drop for GroupGuard {
        fn drop(&mut self) {
            kill_group(self.0, Signal::KILL);
        }
    }

    fn signal_of(s: &ExitStatus) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        s.signal()
    }

    async fn pump(mut r: impl AsyncRead + Unpin, into: Arc<Mutex<Capture>>) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => lock(&into).push(&buf[..n]),
            }
        }
    }

    /// Divides the output budget between stdout and stderr: each gets what it has if both fit,
    /// else the smaller keeps up to half and the larger takes the rest.
    fn split_budget(budget: usize, out: usize, err: usize) -> (usize, usize) {
        if out + err <= budget {
            return (out, err);
        }
        let half = budget / 2;
        if err <= half {
            (budget - err, err)
        } else if out <= half {
            (out, budget - out)
        } else {
            (half, budget - half)
        }
    }

    /// A stream's first and last `half` bytes, and how many it produced in all, so a command
    /// printing gigabytes costs bounded memory.
    pub(super) struct Capture {
        head: Vec<u8>,
        tail: VecDeque<u8>,
        total: u64,
        half: usize,
    }

    impl Capture {
        pub(super) fn new(half: usize) -> Self {
            Self {
                head: Vec::new(),
                tail: VecDeque::new(),
                total: 0,
                half,
            }
        }

        pub(super) fn push(&mut self, mut b: &[u8]) {
            self.total += b.len() as u64;
            if self.head.len() < self.half {
                let n = (self.half - self.head.len()).min(b.len());
                self.head.extend_from_slice(&b[..n]);
                b = &b[n..];
            }
            if b.len() >= self.half {
                self.tail.clear();
                self.tail.extend(&b[b.len() - self.half..]);
            } else {
                self.tail.extend(b);
                let excess = self.tail.len().saturating_sub(self.half);
                self.tail.drain(..excess);
            }
        }

        /// Bytes held, which is what can be shown.
        pub(super) fn available(&self) -> usize {
            self.head.len() + self.tail.len()
        }

        /// The captured text within `budget` bytes (head and tail around a marker when cut), and
        /// how many bytes of the stream are not shown.
        pub(super) fn render(&self, budget: usize) -> (String, u64) {
            let tail: Vec<u8> = self.tail.iter().copied().collect();
            if self.available() as u64 == self.total {
                // Nothing was dropped while capturing: head and tail are one contiguous stream.
                let all = [self.head.as_slice(), tail.as_slice()].concat();
                if all.len() <= budget {
                    return (String::from_utf8_lossy(&all).into_owned(), 0);
                }
                let hn = budget / 2;
                let tn = budget - hn;
                let cut = (all.len() - budget) as u64;
                return (join_cut(&all[..hn], &all[all.len() - tn..], cut), cut);
            }
            let hn = self.head.len().min(budget / 2);
            let tn = tail.len().min(budget - hn);
            let cut = self.total - (hn + tn) as u64;
            (
                join_cut(&self.head[..hn], &tail[tail.len() - tn..], cut),
                cut,
            )
        }
    }

    fn join_cut(head: &[u8], tail: &[u8], cut: u64) -> String {
        let mut s = String::from_utf8_lossy(head).into_owned();
        if !s.ends_with('\n') {
            s.push('\n');
        }
        s.push_str(&format!("[… {cut} bytes omitted …]\n"));
        s.push_str(&String::from_utf8_lossy(tail));
        s
    }
}
