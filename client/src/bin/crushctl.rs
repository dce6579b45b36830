//! `crushctl`: the command line for crushd. Exit codes: 0 success, 1 the operation failed,
//! 2 usage or configuration error, 3 could not reach or start the daemon.

use std::io::{BufRead, Seek, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio::io::AsyncWriteExt;

use crush_client::{Client, ClientError, ConnectOptions, autostart};
use crush_protocol::{
    ClientInfo, DaemonShutdownParams, DaemonStatusResult, NoParams, paths, request,
};

const EXIT_FAILED: u8 = 1;
const EXIT_UNREACHABLE: u8 = 3;

/// Talk to crushd, the per-user daemon that runs AI coding-agent sessions.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXAMPLES)]
struct Cli {
    /// Socket of the daemon [default: $CRUSHD_SOCKET, else $XDG_RUNTIME_DIR/crushd/crushd.sock].
    #[arg(long, global = true, env = paths::SOCKET_ENV)]
    socket: Option<PathBuf>,
    /// Never start the daemon; fail when it is not running.
    #[arg(long, global = true)]
    no_autostart: bool,
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "Examples:
  crushctl status              show whether the daemon runs, its pid and connections
  crushctl daemon start        start the daemon in the background (no-op when it runs)
  crushctl daemon stop         ask the daemon to exit
  crushctl daemon logs -f      follow the daemon's log
  crushctl proxy               bridge stdin/stdout to the daemon (for editors that spawn a stdio server)";

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the daemon's status (does not start it).
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Manage the daemon process.
    #[command(subcommand)]
    Daemon(DaemonCommand),
    /// Bridge stdin/stdout to the daemon socket byte for byte (starting the daemon if needed).
    Proxy,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("crushctl: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("crushctl: {e}");
            let code = match e.downcast_ref::<ClientError>() {
                Some(ce) if ce.is_unreachable() => EXIT_UNREACHABLE,
                _ => EXIT_FAILED,
            };
            ExitCode::from(code)
        }
    }
}

fn options(cli: &Cli, autostart: bool) -> ConnectOptions {
    ConnectOptions {
        socket: Some(paths::resolve_socket(cli.socket.as_deref())),
        autostart: autostart && !cli.no_autostart,
        client_info: ClientInfo {
            name: "crushctl".to_owned(),
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
        },
        ..ConnectOptions::default()
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Status { json } | Command::Daemon(DaemonCommand::Status { json }) => {
            status(&cli, *json).await
        }
        Command::Daemon(DaemonCommand::Start) => {
            let client = Client::connect(options(&cli, true)).await?;
            let st = client.request::<request::DaemonStatus>(NoParams).await?;
            println!("crushd is running (pid {}, socket {})", st.pid, st.socket);
            Ok(ExitCode::SUCCESS)
        }
        Command::Daemon(DaemonCommand::Stop { force }) => stop(&cli, *force).await,
        Command::Daemon(DaemonCommand::Logs { follow, lines }) => logs(*follow, *lines),
        Command::Proxy => proxy(&cli).await,
    }
}

async fn status(cli: &Cli, json: bool) -> anyhow::Result<ExitCode> {
    let client = match Client::connect(options(cli, false)).await {
        Ok(c) => c,
        Err(ClientError::NotRunning { socket }) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "running": false, "socket": socket })
                );
            } else {
                println!("crushd is not running (socket {})", socket.display());
            }
            return Ok(ExitCode::from(EXIT_UNREACHABLE));
        }
        Err(e) => return Err(e.into()),
    };
    let st: DaemonStatusResult = client.request::<request::DaemonStatus>(NoParams).await?;
    if json {
        let mut v = serde_json::to_value(&st)?;
        v["running"] = serde_json::Value::Bool(true);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("crushd {} is running", st.version);
        println!("  pid          {}", st.pid);
        println!(
            "  uptime       {}",
            human_duration(Duration::from_millis(st.uptime_ms))
        );
        println!("  connections  {}", st.connections);
        println!("  socket       {}", st.socket);
        println!("  logs         {}", st.log_dir);
        let idle = match st.idle_timeout_ms {
            0 => "never".to_owned(),
            ms => format!(
                "after {} without clients",
                human_duration(Duration::from_millis(ms))
            ),
        };
        println!("  idle exit    {idle}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn stop(cli: &Cli, force: bool) -> anyhow::Result<ExitCode> {
    let client = match Client::connect(options(cli, false)).await {
        Ok(c) => c,
        Err(ClientError::NotRunning { .. }) => {
            println!("crushd is not running");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e.into()),
    };
    let pid = client.server().pid;
    client
        .request::<request::DaemonShutdown>(DaemonShutdownParams { force })
        .await?;
    // The daemon closes every connection, then removes its socket and exits.
    if tokio::time::timeout(Duration::from_secs(15), client.closed())
        .await
        .is_err()
    {
        anyhow::bail!(
            "crushd (pid {pid}) accepted the shutdown but has not closed its connections after 15 s"
        );
    }
    let socket = client.socket().to_path_buf();
    drop(client);
    // The daemon releases its instance lock as its very last step: once we can take it, the
    // daemon is gone and a new one may start.
    let lock_path = paths::lock_dir(&socket).join(paths::LOCK_FILE);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let released = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&lock_path)
        {
            Ok(f) => f.try_lock().is_ok(),
            Err(_) => true,
        };
        if released {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "crushd (pid {pid}) still holds {} after 10 s",
                lock_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("crushd (pid {pid}) stopped");
    Ok(ExitCode::SUCCESS)
}

fn logs(follow: bool, lines: usize) -> anyhow::Result<ExitCode> {
    let dir = paths::state_dir();
    let Some(path) = paths::newest_log_file(&dir) else {
        anyhow::bail!(
            "no log file in {} yet (a daemon started with --foreground logs to its stderr)",
            dir.display()
        );
    };
    let mut file = std::fs::File::open(&path)?;
    let all = std::io::BufReader::new(&file)
        .lines()
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = std::io::stdout().lock();
    for line in &all[all.len().saturating_sub(lines)..] {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    let mut pos = file.seek(std::io::SeekFrom::End(0))?;
    let mut current = path;
    loop {
        // Polling a file is how `tail -f` works too; rotation switches to the new day's file.
        std::thread::sleep(Duration::from_millis(250));
        if let Some(newest) = paths::newest_log_file(&dir)
            && newest != current
        {
            current = newest;
            file = std::fs::File::open(&current)?;
            pos = 0;
        }
        let len = file.metadata()?.len();
        if len < pos {
            pos = 0;
        }
        if len > pos {
            file.seek(std::io::SeekFrom::Start(pos))?;
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut file, &mut buf)?;
            pos += buf.len() as u64;
            out.write_all(&buf)?;
            out.flush()?;
        }
    }
}

async fn proxy(cli: &Cli) -> anyhow::Result<ExitCode> {
    let opts = options(cli, true);
    let socket = paths::resolve_socket(opts.socket.as_deref());
    let stream = if opts.autostart {
        autostart::connect_or_start(&socket, None, opts.start_timeout).await?
    } else {
        autostart::connect(&socket).await?
    };
    #[cfg(unix)]
    let (from_daemon, to_daemon) = into_unix_stream(stream)?.into_split();
    #[cfg(windows)]
    let (from_daemon, to_daemon) = tokio::io::split(stream);
    relay(from_daemon, to_daemon).await?;
    Ok(ExitCode::SUCCESS)
}

/// interprocess's streams cannot half-close (their `shutdown` is a no-op), and the proxy must
/// pass an editor's end-of-input on to the daemon; tokio's `UnixStream` can, so take the fd over.
#[cfg(unix)]
fn into_unix_stream(
    stream: interprocess::local_socket::tokio::Stream,
) -> std::io::Result<tokio::net::UnixStream> {
    use interprocess::local_socket::tokio::Stream;
    use std::os::fd::OwnedFd;
    let Stream::UdSocket(uds) = stream;
    let std_stream = std::os::unix::net::UnixStream::from(OwnedFd::try_from(uds)?);
    std_stream.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(std_stream)
}

async fn relay<R, W>(mut from_daemon: R, mut to_daemon: W) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let upstream = async {
        let r = tokio::io::copy(&mut stdin, &mut to_daemon).await;
        // Stdin closed: let the daemon see end-of-stream, keep relaying its last answers.
        let _ = to_daemon.shutdown().await;
        r
    };
    let downstream = async {
        let r = tokio::io::copy(&mut from_daemon, &mut stdout).await;
        let _ = stdout.flush().await;
        r
    };
    tokio::pin!(upstream, downstream);
    tokio::select! {
        r = &mut downstream => { r?; }
        r = &mut upstream => {
            r?;
            downstream.await?;
        }
    }
    Ok(())
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}
