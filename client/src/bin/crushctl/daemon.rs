//! The daemon commands: `status`, `daemon start|stop|restart|logs`, `proxy`.

use std::io::{BufRead, Seek, Write};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crush_client::{Client, ClientError, autostart};
use crush_protocol::{
    DaemonShutdownParams, DaemonStatusResult, ErrorCode, NoParams, RunState, paths, request,
};

use crate::{EXIT_UNREACHABLE, Global};

pub async fn start(g: &Global) -> anyhow::Result<u8> {
    let client = Client::connect(g.options(true)).await?;
    let st = client.request::<request::DaemonStatus>(NoParams).await?;
    crate::outln!("crushd is running (pid {}, socket {})", st.pid, st.socket)?;
    Ok(0)
}

pub async fn status(g: &Global, json: bool) -> anyhow::Result<u8> {
    let client = match Client::connect(g.options(false)).await {
        Ok(c) => c,
        Err(ClientError::NotRunning { socket }) => {
            if json {
                crate::outln!(
                    "{}",
                    serde_json::json!({ "running": false, "socket": socket })
                )?;
            } else {
                crate::outln!("crushd is not running (socket {})", socket.display())?;
            }
            return Ok(EXIT_UNREACHABLE);
        }
        Err(e) => return Err(e.into()),
    };
    let st: DaemonStatusResult = client.request::<request::DaemonStatus>(NoParams).await?;
    let ws = client.request::<request::WorkspaceList>(NoParams).await?;
    // Clients by id, with the name they gave and whether they are connected right now.
    let mut clients: std::collections::BTreeMap<String, (Option<String>, bool, Vec<String>)> =
        Default::default();
    let mut runs = Vec::new();
    for w in &ws.workspaces {
        for c in &w.claims {
            let e = clients.entry(c.client_id.clone()).or_insert((
                c.name.clone(),
                c.connected,
                Vec::new(),
            ));
            e.2.push(w.path.clone());
        }
        for b in &w.busy_sessions {
            if let Some(r) = &b.active_run_id {
                runs.push(serde_json::json!({"runId": r, "sessionId": b.session_id, "workspace": w.path, "state": RunState::Running}));
            }
            for q in &b.queued {
                runs.push(serde_json::json!({"runId": q, "sessionId": b.session_id, "workspace": w.path, "state": RunState::Queued}));
            }
        }
    }
    if json {
        let mut v = serde_json::to_value(&st)?;
        v["running"] = serde_json::Value::Bool(true);
        v["workspaces"] = serde_json::to_value(&ws.workspaces)?;
        v["clients"] = clients
            .iter()
            .map(|(id, (name, connected, workspaces))| {
                serde_json::json!({"clientId": id, "name": name, "connected": connected, "workspaces": workspaces})
            })
            .collect();
        v["activeRuns"] = serde_json::Value::Array(runs);
        crate::outln!("{}", serde_json::to_string(&v)?)?;
        return Ok(0);
    }
    crate::outln!("crushd {} is running", st.version)?;
    crate::outln!("  pid          {}", st.pid)?;
    crate::outln!(
        "  uptime       {}",
        human_duration(Duration::from_millis(st.uptime_ms))
    )?;
    crate::outln!("  connections  {}", st.connections)?;
    crate::outln!("  socket       {}", st.socket)?;
    crate::outln!("  logs         {}", st.log_dir)?;
    if let Some(bytes) = st.snapshot_bytes {
        crate::outln!("  snapshots    {} (undo and diff)", human_bytes(bytes))?;
    }
    let idle = match st.idle_timeout_ms {
        0 => "never".to_owned(),
        ms => format!(
            "after {} without clients",
            human_duration(Duration::from_millis(ms))
        ),
    };
    crate::outln!("  idle exit    {idle}")?;
    if let Some(sb) = &st.sandbox {
        crate::outln!("  sandbox      {}", sandbox_line(sb))?;
        if let Some(w) = &sb.warning {
            crate::outln!("    warning: {w}")?;
        }
    }
    let loaded: Vec<_> = ws.workspaces.iter().filter(|w| w.loaded).collect();
    crate::outln!(
        "  workspaces   {} known, {} loaded",
        ws.workspaces.len(),
        loaded.len()
    )?;
    for w in loaded {
        crate::outln!("    {}", w.path)?;
    }
    // Live clients first; those whose connection dropped (their claims wait out the grace
    // period) apart, so a client that just exited is not mistaken for one still there.
    let (live, gone): (Vec<_>, Vec<_>) = clients.iter().partition(|(_, (_, c, _))| *c);
    crate::outln!("  clients      {} connected", live.len())?;
    for (id, (name, _, _)) in &live {
        crate::outln!("    {} {id}", name.as_deref().unwrap_or("?"))?;
    }
    if !gone.is_empty() {
        crate::outln!(
            "  disconnected {} (their claims are kept for the grace period)",
            gone.len()
        )?;
        for (id, (name, _, _)) in &gone {
            crate::outln!("    {} {id}", name.as_deref().unwrap_or("?"))?;
        }
    }
    crate::outln!("  active runs  {}", runs.len())?;
    for r in &runs {
        crate::outln!(
            "    {} {} in {}",
            crate::ids::short(r["runId"].as_str().unwrap_or_default()),
            r["state"].as_str().unwrap_or_default(),
            r["workspace"].as_str().unwrap_or_default()
        )?;
    }
    Ok(0)
}

pub async fn stop(g: &Global, force: bool) -> anyhow::Result<u8> {
    let client = match Client::connect(g.options(false)).await {
        Ok(c) => c,
        Err(ClientError::NotRunning { .. }) => {
            crate::outln!("crushd is not running")?;
            return Ok(0);
        }
        Err(e) => return Err(e.into()),
    };
    let pid = client.server().pid;
    match client
        .request::<request::DaemonShutdown>(DaemonShutdownParams { force })
        .await
    {
        Ok(_) => {}
        // The daemon's message names its protocol field; say it with this command's flag.
        Err(ClientError::Rpc(r)) if r.code == ErrorCode::RunsActive as i32 => {
            anyhow::bail!(
                "runs are active or queued (`crushctl status` lists them): cancel them with \
                 `crushctl cancel`, or add --force to stop anyway (they end cancelled)"
            );
        }
        Err(e) => return Err(e.into()),
    }
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
    let remote = client.is_remote();
    drop(client);
    if remote {
        // The lock file is on the other machine; the closed connection is all there is to see.
        crate::outln!("crushd (pid {pid}) stopped")?;
        return Ok(0);
    }
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
    crate::outln!("crushd (pid {pid}) stopped")?;
    Ok(0)
}

pub fn logs(follow: bool, lines: usize) -> anyhow::Result<u8> {
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
        return Ok(0);
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

pub async fn proxy(g: &Global) -> anyhow::Result<u8> {
    if let Some(remote) = &g.remote {
        return remote_proxy(remote, !g.no_autostart).await;
    }
    let opts = g.options(true);
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
    Ok(0)
}

/// `proxy --remote`: ssh itself relays (stdio ⇄ the remote `crushctl proxy`), so an editor gets
/// a remote daemon by adding `--remote HOST` to the command it already runs. On Unix crushctl
/// becomes ssh (exec): the process the editor holds is the tunnel, and killing it drops the
/// connection, as it would a local proxy's.
async fn remote_proxy(remote: &crush_client::Remote, autostart: bool) -> anyhow::Result<u8> {
    let mut cmd = remote.proxy_command(autostart);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let e = cmd.exec();
        anyhow::bail!("cannot run {}: {e}", remote.ssh.display());
    }
    #[cfg(not(unix))]
    {
        let status = tokio::process::Command::from(cmd)
            .status()
            .await
            .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", remote.ssh.display()))?;
        Ok(match status.code() {
            Some(0) => 0,
            // ssh's own failure (no route, refused key): the daemon is out of reach.
            Some(255) => EXIT_UNREACHABLE,
            // The remote crushctl's exit code, passed on.
            Some(c) => u8::try_from(c).unwrap_or(crate::EXIT_FAILED),
            None => crate::EXIT_FAILED,
        })
    }
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

pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// `1.4 MiB`-style sizes.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The sandbox in one line: the mode, whether it is enforced, and the network.
pub(crate) fn sandbox_line(sb: &crush_protocol::SandboxStatus) -> String {
    let mut line = sb.mode.to_string();
    if sb.enforced {
        if let Some(abi) = sb.landlock_abi {
            line.push_str(&format!(" (Landlock ABI {abi})"));
        }
        if !sb.network {
            line.push_str(", no network");
        }
    } else if sb.mode != crush_protocol::SandboxMode::Off {
        line.push_str(" (NOT enforced: commands run unconfined)");
    }
    line
}
