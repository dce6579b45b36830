//! The tool guard: a small process between the daemon and a `bash` tool call's shell, so the
//! call's processes die with the daemon even when the daemon itself is killed with SIGKILL and
//! has no chance to clean up.
//!
//! The daemon runs `crushd --tool-guard -c COMMAND` (its own binary, `/proc/self/exe` on Linux)
//! in a new process group whose id is the guard's pid; the guard starts `bash -c COMMAND` (or
//! `sh`) in that same group, with its own stdout and stderr, so output goes straight to the
//! daemon's pipes. The daemon keeps treating the group as before (SIGTERM/SIGKILL to the group on
//! cancel and timeout, SIGKILL after the command ends). What the guard adds is noticing that the
//! daemon is gone, two ways:
//!
//! - its stdin is a pipe whose only writer is the daemon, which never writes: end of file means
//!   the daemon exited (however it died) or dropped the call;
//! - on Linux it asks for SIGHUP when its parent dies (`PR_SET_PDEATHSIG`, through rustix's safe
//!   wrapper; the workspace forbids `unsafe`, so nothing can be set up in the child between fork
//!   and exec), and a SIGHUP while the parent is still the daemon is ignored.
//!
//! Either way it sends SIGTERM to the group, gives it a moment, then SIGKILL (which ends the
//! guard too). Otherwise it waits for the shell and exits with its status: the same exit code,
//! or the same terminating signal re-raised on itself.
//!
//! With `--sandbox …` before `-c`, the guard confines itself with Landlock before it starts
//! the shell, so the command and everything it starts are confined (`sandbox/`).
//!
//! `crushd --tool-guard --exec PROGRAM ARGS…` is the same guard for a stdio MCP server
//! (`mcp/process.rs`): the server speaks MCP on its stdin, so the guard relays its own stdin to
//! the server's, and the end of that stream is still the lifeline (the daemon closes it to stop
//! the server, and it ends when the daemon dies). The server's stdout and stderr are the guard's.

use std::ffi::OsString;
use std::io::Read;
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use rustix::process::{Pid, Signal};

/// The flag that makes `crushd` a tool guard; it must be the first argument.
pub const FLAG: &str = "--tool-guard";

/// The daemon's soft open-file limit before it raised it (see `server::raise_fd_limit`): the
/// guard puts it back before starting the shell, so tool commands see the user's own limit.
pub(crate) const NOFILE_ENV: &str = "CRUSHD_TOOL_NOFILE";

/// The umask the daemon started with (octal), before it set 077 for its own files: the guard
/// puts it back before starting the shell, so what commands create follows the user's umask.
pub(crate) const UMASK_ENV: &str = "CRUSHD_TOOL_UMASK";

/// How long the group gets between SIGTERM and SIGKILL once the daemon is gone.
const TERM_GRACE: Duration = Duration::from_millis(500);

static PROGRAM: OnceLock<OsString> = OnceLock::new();
static ORIGINAL_NOFILE: OnceLock<u64> = OnceLock::new();

/// Records the soft open-file limit the daemon started with, once it raised its own.
pub(crate) fn set_original_fd_limit(soft: u64) {
    let _ = ORIGINAL_NOFILE.set(soft);
}

/// The soft open-file limit to give tool processes, when the daemon changed its own.
pub(crate) fn original_fd_limit() -> Option<u64> {
    ORIGINAL_NOFILE.get().copied()
}

/// Makes every later `bash` tool call run under a guard started from `program` (the daemon's own
/// binary). Called once by the `crushd` binary; without it (the library in unit tests) the shell
/// is started directly.
pub fn install(program: OsString) {
    let _ = PROGRAM.set(program);
}

/// The program to start guards from, if guards are installed.
pub(crate) fn program() -> Option<&'static OsString> {
    PROGRAM.get()
}

/// The daemon's own binary for [`install`]: `/proc/self/exe` on Linux (it still names this
/// binary after an upgrade replaced the file on disk), the executable's path elsewhere.
pub fn own_program() -> Option<OsString> {
    if cfg!(target_os = "linux") && std::path::Path::new("/proc/self/exe").exists() {
        return Some(OsString::from("/proc/self/exe"));
    }
    std::env::current_exe().ok().map(OsString::from)
}

/// The guard's argument that starts a program (an MCP server) instead of a shell command.
pub(crate) const EXEC: &str = "--exec";

/// What the guard starts.
enum Command {
    /// `-c COMMAND`: a bash tool call, stdin closed.
    Shell(OsString),
    /// `--exec PROGRAM ARGS…`: a stdio MCP server, the guard's stdin relayed to it.
    Exec(Vec<OsString>),
}

/// The guard's `main`: `args` are the arguments after [`FLAG`], `-c COMMAND` or
/// `--exec PROGRAM ARGS…`.
pub fn main(args: &[OsString]) -> ExitCode {
    // `--sandbox [--sandbox-write PATH]… [--sandbox-no-network]` first: the confinement to
    // apply (`tools/sandbox/`).
    let (sandbox, args) = match super::sandbox::parse_guard_args(args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("crushd {FLAG}: {e}");
            return ExitCode::from(2);
        }
    };
    let command = match args {
        [c, command] if c == "-c" => Command::Shell(command.clone()),
        [e, program @ ..] if e == EXEC && !program.is_empty() => Command::Exec(program.to_vec()),
        _ => {
            eprintln!("crushd {FLAG}: expected `-c COMMAND` or `{EXEC} PROGRAM ARGS...`");
            return ExitCode::from(2);
        }
    };
    restore_fd_limit();
    if let Some(mask) = std::env::var(UMASK_ENV)
        .ok()
        .and_then(|v| u32::from_str_radix(&v, 8).ok())
    {
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(mask & 0o777));
    }
    // Before anything else runs (and while this process has one thread: capabilities and
    // no_new_privs are per thread): close this process to the command it is about to start, and
    // leave the command no capability to open the daemon with (see ARCHITECTURE.md "Secrets").
    let _ = crate::secrets::make_undumpable();
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = drop_capabilities() {
        eprintln!("crushd {FLAG}: cannot drop capabilities ({e}); refusing to run the command");
        return ExitCode::from(126);
    }
    // Still one thread: Landlock restricts the calling thread and the threads and processes it
    // starts later, which is everything the command does. A sandbox that cannot be applied
    // refuses the command instead of running it unconfined.
    if let Some(policy) = &sandbox
        && let Err(e) = super::sandbox::confine(policy)
    {
        eprintln!("crushd {FLAG}: cannot confine the command ({e}); refusing to run it");
        return ExitCode::from(126);
    }
    let parent = rustix::process::getppid();
    // Ask the kernel for SIGHUP when the parent dies; if it died before this took effect, the
    // parent changed already (and stdin is at end of file).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::HUP));
    // Lead our own group, so the group we kill is never the daemon's. The daemon starts us as a
    // group leader already; this only matters when someone runs the guard by hand.
    let me = rustix::process::getpid();
    if rustix::process::getpgrp() != me {
        let _ = rustix::process::setpgid(None, None);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("crushd {FLAG}: cannot start: {e}");
            return ExitCode::from(127);
        }
    };
    let status = runtime.block_on(guard(command, parent, me));
    // The stdin watcher thread is blocked in a read; exiting the process ends it.
    std::process::exit(status)
}

async fn guard(command: Command, parent: Option<Pid>, group: Pid) -> i32 {
    use tokio::signal::unix::{SignalKind, signal};

    // SIGHUP (the parent-death signal) is caught before the command starts: its default action
    // ends this process, and a daemon killed between the start and the handler would leave the
    // command running with nobody to stop it (seen under load: bash and its sleep outlived a
    // SIGKILLed daemon, the guard gone).
    let mut hup = signal(SignalKind::hangup()).ok();
    let spawned = match &command {
        Command::Shell(c) => spawn(c),
        Command::Exec(argv) => spawn_exec(argv),
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            match &command {
                Command::Shell(_) => eprintln!("Cannot start the shell: {e}"),
                Command::Exec(argv) => {
                    eprintln!(
                        "Cannot start {:?}: {e}",
                        argv.first().unwrap_or(&OsString::new())
                    )
                }
            }
            return 127;
        }
    };
    // For `--exec`, what arrives on our stdin goes on to the program's.
    let mut relay_to: Option<std::fs::File> = child
        .stdin
        .take()
        .and_then(|s| s.into_owned_fd().ok())
        .map(std::fs::File::from);
    let (eof_tx, mut eof_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    if relay_to.is_some() {
        // The relay below can block writing to a program that stopped reading its stdin; the
        // end of our stdin must still be noticed. poll() reports POLLHUP on a pipe whose writers
        // are all gone without reading anything (no event is asked for: HUP and ERR always are).
        let hup_tx = eof_tx.clone();
        let _ = std::thread::Builder::new()
            .name("stdin-hangup".into())
            .spawn(move || {
                use rustix::event::{PollFd, PollFlags, poll};
                let stdin = std::io::stdin();
                loop {
                    let mut fds = [PollFd::new(&stdin, PollFlags::empty())];
                    match poll(&mut fds, None) {
                        Ok(_) if fds[0].revents().intersects(PollFlags::HUP | PollFlags::ERR) => {
                            break;
                        }
                        Ok(_) | Err(rustix::io::Errno::INTR) => continue,
                        Err(_) => break,
                    }
                }
                let _ = hup_tx.send(());
            });
    }
    // A plain thread: a blocking read of stdin that returns only when the daemon is gone (or,
    // for `--exec`, stopped the server by closing it).
    let _ = std::thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(move || {
            use std::io::Write;
            let mut buf = [0u8; 8192];
            let mut stdin = std::io::stdin().lock();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        // A program that closed its stdin gets nothing more; we keep reading
                        // for the end of the lifeline.
                        if let Some(to) = relay_to.as_mut()
                            && to.write_all(&buf[..n]).is_err()
                        {
                            relay_to = None;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            let _ = eof_tx.send(());
        });
    let parent_died = parent_gone(parent);
    loop {
        if parent_died || parent_gone(parent) {
            break;
        }
        tokio::select! {
            r = child.wait() => return match r {
                Ok(status) => relay(status),
                Err(_) => {
                    kill_group(group, Signal::KILL);
                    1
                }
            },
            _ = eof_rx.recv() => break,
            Some(()) = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                // A SIGHUP from the command itself (`kill -HUP 0`) while the daemon lives is
                // not the daemon dying.
                if parent_gone(parent) {
                    break;
                }
            }
        }
    }
    // The daemon is gone: nobody else will end the call.
    kill_group(group, Signal::TERM);
    let _ = tokio::time::timeout(TERM_GRACE, child.wait()).await;
    kill_group(group, Signal::KILL);
    1
}

/// Leaves this process, and so the command it starts, without any capability. Root keeps
/// uid 0 but not `CAP_SYS_PTRACE` (which would open a non-dumpable daemon's memory and
/// environment to it) nor any other privilege over processes and files it does not own. Clearing
/// the sets is not enough for root: `execve` gives uid 0 every capability of the bounding set
/// again, unless `no_new_privs` is set, which makes the kernel keep a program's capabilities
/// within its parent's (empty) ones. A user without capabilities changes nothing (and keeps
/// `sudo` and set-uid programs working).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn drop_capabilities() -> std::io::Result<()> {
    use rustix::thread::{CapabilitySet, CapabilitySets, capabilities, set_capabilities};
    let now = capabilities(None)?;
    let root = rustix::process::geteuid().is_root();
    if !root && now.permitted.is_empty() && now.inheritable.is_empty() {
        return Ok(());
    }
    rustix::thread::set_no_new_privs(true)?;
    set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::empty(),
            permitted: CapabilitySet::empty(),
            inheritable: CapabilitySet::empty(),
        },
    )?;
    Ok(())
}

/// Lowers the soft open-file limit to the value the daemon started with, if it says one.
fn restore_fd_limit() {
    let Some(soft) = std::env::var(NOFILE_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    let now = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if now.current.is_none_or(|c| c > soft) {
        let _ = set_soft_fd_limit(soft, now.maximum);
    }
}

/// Sets the soft open-file limit, keeping the hard one (`hard`, as `getrlimit` read it).
pub(crate) fn set_soft_fd_limit(soft: u64, hard: Option<u64>) -> std::io::Result<()> {
    use rustix::process::{Resource, Rlimit, setrlimit};
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(soft),
            maximum: hard,
        },
    )
    .map_err(std::io::Error::from)
}

/// Whether the daemon that started us is no longer our parent.
fn parent_gone(parent: Option<Pid>) -> bool {
    rustix::process::getppid() != parent
}

fn spawn(command: &OsString) -> std::io::Result<tokio::process::Child> {
    let build = |shell: &str| {
        let mut c = tokio::process::Command::new(shell);
        c.arg("-c")
            .arg(command)
            .env_remove(NOFILE_ENV)
            .env_remove(UMASK_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        c
    };
    match build("bash").spawn() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => build("sh").spawn(),
        r => r,
    }
}

/// An MCP server: the program with its arguments, stdin piped from the guard (relayed), stdout
/// and stderr the guard's.
fn spawn_exec(argv: &[OsString]) -> std::io::Result<tokio::process::Child> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| std::io::Error::other("no program"))?;
    tokio::process::Command::new(program)
        .args(args)
        .env_remove(NOFILE_ENV)
        .env_remove(UMASK_ENV)
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
}

/// The shell's status as ours: its exit code, or its terminating signal re-raised on ourselves
/// (signals that would dump core, or that we handle, become the shell's `128 + n` convention).
fn relay(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return code;
    }
    let Some(n) = status.signal() else {
        return 1;
    };
    let reraise = [
        Signal::INT,
        Signal::KILL,
        Signal::PIPE,
        Signal::ALARM,
        Signal::TERM,
        Signal::USR1,
        Signal::USR2,
    ];
    if let Some(sig) = reraise.into_iter().find(|s| s.as_raw() == n) {
        let _ = rustix::process::kill_process(rustix::process::getpid(), sig);
    }
    128 + n
}

fn kill_group(group: Pid, sig: Signal) {
    // ESRCH (the group is gone already) is the expected, harmless failure.
    let _ = rustix::process::kill_process_group(group, sig);
}
