//! `crushctl`: the command line for crushd. This file owns the command-line surface (clap
//! derive), the exit codes and the helpers every command shares (connecting, finding the
//! workspace and the session); each group of commands lives in its own module.
//!
//! Exit codes (stable, documented in README.md and docs/cli.md): 0 success (the run completed),
//! 1 the run or the operation failed, 2 usage or configuration error, 3 could not reach or start
//! the daemon, 130 cancelled (Ctrl-C), 141 stdout closed (`| head`).

mod acp;
mod attach;
mod config;
mod daemon;
mod ids;
mod images;
mod mcp;
mod model;
mod permissions;
mod prompts;
mod question;
mod render;
mod run;
mod sessions;
mod ui;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crush_client::{
    ClientError, ConnectOptions, ReconnectPolicy, ReconnectingClient, Remote, RemoteHost, remote,
};
use crush_protocol::{
    ClientInfo, ErrorCode, RpcError, SessionInfo, SessionListParams, WorkspaceInfo, paths, request,
};

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNREACHABLE: u8 = 3;
pub const EXIT_CANCELLED: u8 = 130;
/// Stdout was closed: what a shell reports for a process killed by SIGPIPE.
pub const EXIT_PIPE: u8 = 141;

/// An error that carries its exit code; its message is printed as it is.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// A usage or configuration error (exit 2).
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    Exit {
        code: EXIT_USAGE,
        message: message.into(),
    }
    .into()
}

/// Talk to crushd, the per-user daemon that runs AI coding-agent sessions.
///
/// `crushctl run "…"` runs a prompt in the current directory and streams the answer; the other
/// commands follow, list and manage sessions and the daemon. The daemon is started on demand.
#[derive(Debug, Parser)]
#[command(name = "crushctl", version, about, after_help = EXAMPLES)]
struct Cli {
    /// Socket of the daemon [default: $CRUSHD_SOCKET, else $XDG_RUNTIME_DIR/crushd/crushd.sock].
    #[arg(long, global = true, env = paths::SOCKET_ENV, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Never start the daemon; fail (exit 3) when it is not running.
    #[arg(long, global = true)]
    no_autostart: bool,
    /// Show protocol details in error messages (JSON-RPC error codes).
    #[arg(long, global = true)]
    verbose: bool,
    /// Use the daemon on another machine, over SSH: `[ssh://][user@]host[:port]` (keys and
    /// aliases from ~/.ssh/config or an agent; never a password prompt). Workspaces are then
    /// paths on that machine, given with -w.
    #[arg(long, global = true, env = remote::REMOTE_ENV, value_name = "HOST")]
    remote: Option<String>,
    /// The crushctl to run on the remote machine [default: crushctl on its PATH].
    #[arg(long, global = true, env = remote::REMOTE_CRUSHCTL_ENV, value_name = "PATH")]
    remote_crushctl: Option<String>,
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "Examples:
  crushctl run \"explain src/main.rs\"       run a prompt here, stream the answer
  git diff | crushctl run \"review this\"    piped input is put before the prompt
  crushctl run -c \"now add tests\"          continue the most recent session
  crushctl run -m echo \"hello\"             the offline diagnostic model (no key needed)
  crushctl run --json \"list the todos\"     one JSON object per line, for scripts
  crushctl attach                          follow the latest session live (like tail -f)
  crushctl sessions                        list this directory's sessions
  crushctl status                          daemon pid, uptime, clients, active runs

Exit codes: 0 completed, 1 failed, 2 usage or configuration error,
            3 could not reach or start the daemon, 130 cancelled, 141 stdout closed.
Ids: shown by their last 8 characters; a unique prefix or suffix of 4+ characters will do.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a prompt in a session and stream the answer to stdout (the main job).
    #[command(after_help = RUN_HELP)]
    Run(RunArgs),
    /// Send a prompt, print its run id and return at once (`crushctl wait` waits for it).
    Send(SendArgs),
    /// Wait for a run to end; print its answer. Exit code as for `run`.
    Wait {
        run_id: String,
        /// Print the outcome as one JSON object (see docs/cli.md).
        #[arg(long)]
        json: bool,
    },
    /// Cancel a session's active and queued runs [default: the busy or latest session here],
    /// or with --run one run only.
    Cancel {
        session: Option<String>,
        /// Cancel only this run (active, steered or queued); the session's other runs go on.
        #[arg(long, value_name = "RUN_ID")]
        run: Option<String>,
        #[command(flatten)]
        ws: WorkspaceArg,
    },
    /// Have the model summarise a session's older messages now, so later runs start small
    /// [default: the workspace's most recent session]. The messages stay stored.
    Compact {
        session: Option<String>,
        /// Print the result as one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ws: WorkspaceArg,
    },
    /// Copy a session into a new one, up to a message [default: the workspace's most recent
    /// session, all of it]; the files are not touched.
    Fork {
        session: Option<String>,
        /// The last message the copy keeps (a message id, as `sessions show --json` gives).
        #[arg(long, value_name = "MESSAGE_ID")]
        at: Option<String>,
        /// Print the new session as one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ws: WorkspaceArg,
    },
    /// Show what a session's runs changed in the workspace's files, as a unified diff [default:
    /// the workspace's most recent session, all its runs].
    Diff {
        session: Option<String>,
        /// Only the run of this message (a message id, as `sessions show --json` gives).
        #[arg(long, value_name = "MESSAGE_ID")]
        run_of: Option<String>,
        /// Only the list of changed files.
        #[arg(long)]
        stat: bool,
        /// Print the result as one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ws: WorkspaceArg,
    },
    /// Undo a session's last turn [default: the workspace's most recent session]: its changes to
    /// the files are put back and the model no longer sees it (it stays in the history).
    Undo {
        session: Option<String>,
        /// Undo from this message on instead (a message id, as `sessions show --json` gives).
        #[arg(long, value_name = "MESSAGE_ID")]
        to: Option<String>,
        /// Also put back files changed outside the runs since (listed as conflicts without it).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        ws: WorkspaceArg,
    },
    /// Redo what the session's last `undo` undid, while no prompt was sent since.
    Redo {
        session: Option<String>,
        /// Also overwrite files changed since the undo.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        ws: WorkspaceArg,
    },
    /// Follow a session live, like `tail -f`: recent history, then every event as it happens.
    Attach(AttachArgs),
    /// List the workspace's sessions, or show, remove or rename one.
    Sessions(SessionsArgs),
    /// Show the daemon's pid, version, uptime, workspaces, clients and active runs.
    Status {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Manage the daemon process.
    #[command(subcommand)]
    Daemon(DaemonCommand),
    /// Bridge stdin/stdout to the daemon socket byte for byte (starting the daemon if needed).
    Proxy,
    /// Be an ACP agent on stdin/stdout for an editor (Zed, JetBrains, Neovim, Emacs): its
    /// sessions are the daemon's, shared with every other client (docs/acp.md).
    Acp(acp::AcpArgs),
    /// Show or check the daemon's configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// List the daemon's MCP servers or restart one.
    #[command(subcommand)]
    Mcp(McpCommand),
    /// Saved permission rules ("always allow" answers) and the log of permission decisions.
    #[command(subcommand)]
    Permissions(PermissionsCommand),
    /// Print a shell completion script: `crushctl completions bash > ~/.local/share/bash-completion/completions/crushctl`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

const RUN_HELP: &str = "Examples:
  crushctl run \"fix the failing test\"
  crushctl run fix the failing test           (words are joined)
  cat error.log | crushctl run \"why?\"        (stdin, then a blank line, then the prompt)
  crushctl run -c \"and now the docs\"         (the workspace's most recent session)
  crushctl run -w ~/src/app -m anthropic/claude-sonnet-4-5 \"…\"
  crushctl run --yolo \"run the tests and fix what fails\"

The answer streams to stdout; tool activity and a spinner go to stderr when it is a terminal.
Tool calls that need permission are asked on the terminal (default: deny); without a terminal
they are denied (and said so on stderr) unless --yolo. Ctrl-C cancels the run and waits for it
to end; a second Ctrl-C quits at once.

Exit codes: 0 completed, 1 the run failed, 2 usage or configuration error (e.g. no model),
            3 could not reach or start the daemon, 130 cancelled,
            141 stdout closed (the run is cancelled, as with Ctrl-C).";

#[derive(Debug, Args)]
pub struct WorkspaceArg {
    /// The project directory [default: the current directory].
    #[arg(short, long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PromptArgs {
    /// The prompt (several words are joined with spaces). Piped stdin is put before it.
    #[arg(value_name = "PROMPT")]
    pub prompt: Vec<String>,
    #[command(flatten)]
    pub ws: WorkspaceArg,
    /// Use this session.
    #[arg(short, long, value_name = "ID", conflicts_with = "continue_")]
    pub session: Option<String>,
    /// Continue the workspace's most recently updated session.
    #[arg(short = 'c', long = "continue")]
    pub continue_: bool,
    /// The model, `<provider>/<model>` (see `crushctl config show`); `echo` is the offline diagnostic.
    #[arg(short, long, value_name = "MODEL")]
    pub model: Option<String>,
    /// Run tool calls without asking.
    #[arg(long)]
    pub yolo: bool,
    /// Confine the session's bash commands: workspace-write, read-only or off (kept for the
    /// session's later runs; without it, the session's or the config's mode).
    #[arg(long, value_name = "MODE")]
    pub sandbox: Option<crush_protocol::SandboxMode>,
    /// Refuse the session's bash commands TCP connections (kept for its later runs).
    #[arg(long)]
    pub no_network: bool,
    /// When the session is busy, join its active run instead of queueing behind it.
    #[arg(long)]
    pub steer: bool,
    /// Show the model an image file (.png, .jpg, .gif, .webp); repeatable. The model must
    /// accept images (the presets do; others need `images = true` in their config table).
    #[arg(long = "image", value_name = "PATH")]
    pub images: Vec<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub p: PromptArgs,
    /// Print one JSON object per line instead of text (shape: docs/cli.md).
    #[arg(long)]
    pub json: bool,
    /// Print only the answer: no spinner, tool activity or notices.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    #[command(flatten)]
    pub p: PromptArgs,
    /// Print `{"runId":…,"sessionId":…,"state":…}` instead of the run id.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The session [default: the workspace's most recently updated one].
    pub session: Option<String>,
    #[command(flatten)]
    pub ws: WorkspaceArg,
    /// Print the whole history first, not only the recent messages.
    #[arg(long)]
    pub from_start: bool,
    /// How many recent messages to print first.
    #[arg(short = 'n', long, default_value_t = 20)]
    pub lines: u32,
    /// Print protocol messages and events, one JSON object per line (see docs/cli.md).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SessionsArgs {
    #[command(subcommand)]
    pub command: Option<SessionsCommand>,
    #[command(flatten)]
    pub ws: WorkspaceArg,
    /// One JSON object per session per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// Print a session's conversation.
    Show {
        id: String,
        /// One JSON object per message per line (the protocol's MessageInfo).
        #[arg(long)]
        json: bool,
    },
    /// Delete a session with its messages and runs.
    Rm { id: String },
    /// Give a session a new title.
    Rename { id: String, title: String },
}

#[derive(Debug, Subcommand)]
enum DaemonCommand {
    /// Start the daemon in the background if it is not running.
    Start,
    /// Ask the daemon to shut down and wait until it has.
    Stop {
        /// Stop even while work is in progress.
        #[arg(long)]
        force: bool,
    },
    /// Stop the daemon (if it runs) and start a fresh one, e.g. after changing the config.
    Restart {
        /// Stop even while work is in progress.
        #[arg(long)]
        force: bool,
    },
    /// Show the daemon's status (does not start it).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Print the daemon's log.
    Logs {
        /// Keep printing new lines as they are written.
        #[arg(short, long)]
        follow: bool,
        /// Number of lines from the end to print first.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print where the daemon's config file is (or would be).
    Path,
    /// Print the running daemon's effective configuration (API keys redacted).
    Show {
        /// One line of JSON instead of indented JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate the config file and name its problems (runs `crushd --check-config`).
    Check {
        /// The file to check [default: the daemon's config file].
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum McpCommand {
    /// Each MCP server: state, tools, last error.
    List {
        /// One JSON object per server per line (the protocol's McpServerInfo).
        #[arg(long)]
        json: bool,
    },
    /// Stop an MCP server (if running) and start it again now.
    Restart {
        name: String,
        /// Print the protocol's McpServerInfo as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PermissionsCommand {
    /// The saved rules that apply in the workspace (its own, its sessions' and global ones).
    List {
        /// Every saved rule, of every workspace and session.
        #[arg(long)]
        all: bool,
        /// One JSON object per rule per line (the protocol's PermissionRule).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ws: WorkspaceArg,
    },
    /// Delete a saved rule (by its id, or a unique prefix or suffix of 4+ characters): such
    /// calls are asked about again.
    Rm { id: String },
    /// The permission decisions in the workspace, oldest first: who answered (client and
    /// connection) or which rule let the call run.
    Log {
        /// Of every workspace.
        #[arg(long, conflicts_with = "session")]
        all: bool,
        /// Of one session only.
        #[arg(short, long, value_name = "ID")]
        session: Option<String>,
        /// The newest N decisions [default: 100, at most 1000].
        #[arg(short = 'n', long, value_name = "N")]
        limit: Option<u32>,
        /// One JSON object per decision per line, newest first (the protocol's
        /// PermissionLogEntry).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ws: WorkspaceArg,
    },
}

/// The name other clients see for this one (claims in `status`, "allowed by …" notes): the pid
/// tells two crushctl processes apart.
pub fn client_name() -> String {
    format!("crushctl (pid {})", std::process::id())
}

/// Connection settings every command shares.
#[derive(Debug, Clone)]
pub struct Global {
    pub socket: Option<PathBuf>,
    pub no_autostart: bool,
    /// Keep protocol details (error codes) in messages.
    pub verbose: bool,
    /// The daemon is on another machine, reached over SSH.
    pub remote: Option<Remote>,
}

impl Global {
    /// A daemon error message as the user reads it: without its trailing ` (code -32011)`
    /// unless `--verbose`.
    pub fn plain(&self, message: &str) -> String {
        if self.verbose {
            return message.to_owned();
        }
        match message.rfind(" (code -") {
            Some(i) if message.ends_with(')') => message[..i].to_owned(),
            _ => message.to_owned(),
        }
    }
}

impl Global {
    pub fn options(&self, autostart: bool) -> ConnectOptions {
        ConnectOptions {
            socket: Some(paths::resolve_socket(self.socket.as_deref())),
            autostart: autostart && !self.no_autostart,
            client_info: ClientInfo {
                name: client_name(),
                version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            },
            remote: self.remote.clone(),
            ..ConnectOptions::default()
        }
    }

    /// Refuses a command that reads or runs something on this machine when the daemon is on
    /// another one, naming the way to do it there.
    pub fn local_only(&self, command: &str) -> anyhow::Result<()> {
        match &self.remote {
            Some(r) => Err(usage(format!(
                "`crushctl {command}` works on this machine's files, not through --remote; \
                 run it there: ssh {} {} {command}",
                r.host.host, r.crushctl
            ))),
            None => Ok(()),
        }
    }

    /// A reconnecting client (starting the daemon unless `--no-autostart`).
    pub async fn reconnecting(
        &self,
        opts: ConnectOptions,
    ) -> Result<ReconnectingClient, ClientError> {
        ReconnectingClient::connect(opts, ReconnectPolicy::default()).await
    }
}

fn main() -> ExitCode {
    // crushctl often holds provider keys in its environment (it passes them to a daemon it
    // starts) and may be an ancestor of the daemon's tool commands while it waits for a run:
    // no other process of the user may read its environment or memory (ARCHITECTURE.md
    // "Secrets"). Linux only; nothing depends on it succeeding.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    let cli = Cli::parse();
    let verbose = cli.verbose;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "crushctl: cannot start the async runtime: {e}"
            );
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let mut result = runtime.block_on(dispatch(cli));
    // Output that went through the shared writer (tables, JSON lines) and could not be written:
    // the command did not do what it was asked.
    if result.is_ok() && ui::stdout_closed() {
        result = Err(ui::closed_error());
    }
    // Background tasks (a blocked terminal read, the reconnect supervisor) must not hold the
    // exit up.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let message = user_message(&e, verbose);
            if !message.is_empty() {
                // stderr may be closed too: never panic over it.
                let _ = writeln!(std::io::stderr(), "crushctl: {message}");
            }
            ExitCode::from(exit_code_of(&e))
        }
    }
}

/// An error as the user reads it: protocol error codes only with `--verbose`, nothing for a
/// closed stdout (the reader left; there is nobody to tell).
fn user_message(e: &anyhow::Error, verbose: bool) -> String {
    if is_broken_pipe(e) {
        return String::new();
    }
    match e.downcast_ref::<ClientError>() {
        Some(ClientError::Rpc(r)) if !verbose => format!("crushd: {}", r.message),
        _ => e.to_string(),
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The exit code for an error: its own, 3 when the daemon is out of reach, 2 for errors that
/// mean the user asked for something that does not exist or is not set up, else 1.
pub fn exit_code_of(e: &anyhow::Error) -> u8 {
    if let Some(x) = e.downcast_ref::<Exit>() {
        return x.code;
    }
    if is_broken_pipe(e) {
        return ui::EXIT_PIPE;
    }
    match e.downcast_ref::<ClientError>() {
        Some(ClientError::DaemonConfig { .. }) => EXIT_USAGE,
        Some(ce) if ce.is_unreachable() => EXIT_UNREACHABLE,
        Some(ClientError::Rpc(r)) => rpc_exit_code(r),
        _ => EXIT_FAILED,
    }
}

pub fn rpc_exit_code(r: &RpcError) -> u8 {
    let usage_codes = [
        ErrorCode::ModelNotConfigured,
        ErrorCode::SessionNotFound,
        ErrorCode::WorkspaceNotFound,
        ErrorCode::RunNotFound,
        ErrorCode::InvalidParams,
        ErrorCode::McpServerNotFound,
        ErrorCode::McpServerDisabled,
        ErrorCode::PermissionRuleNotFound,
    ];
    if usage_codes.iter().any(|c| *c as i32 == r.code) {
        EXIT_USAGE
    } else {
        EXIT_FAILED
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    let remote = match cli.remote.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(host) => {
            let host: RemoteHost = host.parse().map_err(|e| usage(format!("--remote: {e}")))?;
            Some(Remote::new(host, cli.remote_crushctl.clone()))
        }
    };
    let g = Global {
        socket: cli.socket.clone(),
        no_autostart: cli.no_autostart,
        verbose: cli.verbose,
        remote,
    };
    match cli.command {
        Command::Run(a) => run::run(&g, a).await,
        Command::Send(a) => run::send(&g, a).await,
        Command::Wait { run_id, json } => run::wait(&g, &run_id, json).await,
        Command::Cancel { session, run, ws } => run::cancel(&g, session, run, &ws).await,
        Command::Compact { session, json, ws } => {
            sessions::compact(&g, session.as_deref(), &ws, json).await
        }
        Command::Fork {
            session,
            at,
            json,
            ws,
        } => sessions::fork(&g, session.as_deref(), at, &ws, json).await,
        Command::Diff {
            session,
            run_of,
            stat,
            json,
            ws,
        } => sessions::diff(&g, session.as_deref(), run_of, &ws, stat, json).await,
        Command::Undo {
            session,
            to,
            force,
            ws,
        } => sessions::undo(&g, session.as_deref(), to, force, &ws).await,
        Command::Redo { session, force, ws } => {
            sessions::redo(&g, session.as_deref(), force, &ws).await
        }
        Command::Attach(a) => attach::attach(&g, a).await,
        Command::Sessions(a) => sessions::sessions(&g, a).await,
        Command::Status { json } | Command::Daemon(DaemonCommand::Status { json }) => {
            daemon::status(&g, json).await
        }
        Command::Daemon(DaemonCommand::Start) => daemon::start(&g).await,
        Command::Daemon(DaemonCommand::Stop { force }) => daemon::stop(&g, force).await,
        Command::Daemon(DaemonCommand::Restart { force }) => {
            daemon::stop(&g, force).await?;
            daemon::start(&g).await
        }
        Command::Daemon(DaemonCommand::Logs { follow, lines }) => {
            g.local_only("daemon logs")?;
            daemon::logs(follow, lines)
        }
        Command::Proxy => daemon::proxy(&g).await,
        Command::Acp(a) => acp::acp(&g, a).await,
        Command::Config(ConfigCommand::Path) => {
            g.local_only("config path")?;
            config::path()
        }
        Command::Config(ConfigCommand::Show { json }) => config::show(&g, json).await,
        Command::Config(ConfigCommand::Check { file }) => {
            g.local_only("config check")?;
            config::check(file.as_deref())
        }
        Command::Mcp(McpCommand::List { json }) => mcp::list(&g, json).await,
        Command::Mcp(McpCommand::Restart { name, json }) => mcp::restart(&g, &name, json).await,
        Command::Permissions(c) => permissions::permissions(&g, c).await,
        Command::Completions { shell } => {
            // Into memory first: clap_complete panics when its writer fails (closed stdout).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "crushctl", &mut script);
            ui::write_out(format_args!("{}", String::from_utf8_lossy(&script)))?;
            Ok(0)
        }
    }
}

/// The workspace directory as an absolute, canonical path (exit 2 when it is not a directory).
pub fn workspace_dir(arg: &WorkspaceArg) -> anyhow::Result<String> {
    let p = match &arg.workspace {
        Some(p) => p.clone(),
        None => std::env::current_dir()
            .map_err(|e| usage(format!("cannot read the current directory: {e}")))?,
    };
    let abs =
        std::fs::canonicalize(&p).map_err(|e| usage(format!("workspace {}: {e}", p.display())))?;
    if !abs.is_dir() {
        return Err(usage(format!(
            "workspace {} is not a directory",
            abs.display()
        )));
    }
    abs.to_str()
        .map(str::to_owned)
        .ok_or_else(|| usage(format!("workspace {} is not valid UTF-8", abs.display())))
}

/// Opens the workspace (`workspace/open`): here, or on the remote machine.
pub async fn open_workspace(
    client: &ReconnectingClient,
    arg: &WorkspaceArg,
) -> anyhow::Result<WorkspaceInfo> {
    let dir = match client.remote() {
        Some(r) => remote_workspace_dir(arg, r)?,
        None => workspace_dir(arg)?,
    };
    Ok(client.open_workspace(&dir).await?)
}

/// Environment variable naming the workspace on the remote machine when -w is not given.
pub const REMOTE_WORKSPACE_ENV: &str = "CRUSHD_REMOTE_WORKSPACE";

/// The workspace on the remote machine: -w, else `$CRUSHD_REMOTE_WORKSPACE`, never the local
/// current directory (the same path over there is a different directory, if it exists). An
/// absolute path; the remote daemon checks that it is a directory.
pub fn remote_workspace_dir(arg: &WorkspaceArg, remote: &Remote) -> anyhow::Result<String> {
    let dir = match &arg.workspace {
        Some(p) => p
            .to_str()
            .map(str::to_owned)
            .ok_or_else(|| usage(format!("workspace {} is not valid UTF-8", p.display())))?,
        None => std::env::var(REMOTE_WORKSPACE_ENV)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| {
                usage(format!(
                    "with --remote, name the workspace on {} with -w DIR (or set \
                     {REMOTE_WORKSPACE_ENV}); the current directory is this machine's",
                    remote.host
                ))
            })?,
    };
    if !dir.starts_with('/') {
        return Err(usage(format!(
            "workspace {dir:?}: with --remote, give an absolute path on {}",
            remote.host
        )));
    }
    Ok(dir)
}

/// The workspace's sessions, most recently updated first.
pub async fn list_sessions(
    client: &ReconnectingClient,
    workspace_id: &str,
) -> anyhow::Result<Vec<SessionInfo>> {
    Ok(client
        .request::<request::SessionList>(SessionListParams {
            workspace_id: workspace_id.to_owned(),
        })
        .await?
        .sessions)
}

/// A session by its full id or a unique prefix or suffix of it (see [`ids`]).
pub async fn get_session(client: &ReconnectingClient, id: &str) -> anyhow::Result<SessionInfo> {
    ids::session(client, id).await
}

/// Leaves politely so the daemon releases this client's claims at once.
pub async fn leave(client: ReconnectingClient) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), client.shutdown()).await;
}

/// Where the daemon looks for its config file (the same rule as `crushd`).
pub fn default_config_path() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "crushd").map(|d| d.config_dir().join("config.toml"))
}

pub fn display(p: &Path) -> String {
    p.display().to_string()
}
