//! The daemon's life from bind to exit: the accept loop, idle exit, signal handling and the
//! shutdown sequence (stop accepting → refuse new runs → cancel and wait for runs, bounded, so
//! their `$/runComplete` is queued to clients → tell every client → close connections → wait,
//! bounded → close the store → remove the socket → release the lock). The state it shares with
//! every connection is `state::Daemon`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crush_protocol::{ErrorCode, RpcError};

use crate::config::Config;
use crate::connection;
use crate::shared::Daemon;
use crate::store::{Store, StoreError};
use crate::transport::{self, Endpoint, TransportError};

/// Raises the soft open-file limit towards the hard one, as Go programs (crush among them) do
/// at start: each connection holds a descriptor, and a desktop's usual soft limit of 1024 would
/// otherwise stop `accept` (EMFILE) before `max_connections`. Tool processes get the original
/// limit back (`tools/guard.rs`). Warns when even the hard limit leaves too little room.
#[cfg(unix)]
fn raise_fd_limit(max_connections: usize, max_model_connections: usize) {
    use rustix::process::{Resource, getrlimit};
    // One descriptor per client connection and per model connection, plus the database, logs,
    // idle pooled model connections and tool pipes.
    let wanted = (max_connections as u64)
        .saturating_add(max_model_connections as u64)
        .saturating_add(FD_HEADROOM);
    let now = getrlimit(Resource::Nofile);
    let Some(soft) = now.current else {
        return; // unlimited
    };
    let ceiling = now.maximum.unwrap_or(u64::MAX);
    let target = wanted.min(ceiling);
    if target > soft {
        match crate::tools::guard::set_soft_fd_limit(target, now.maximum) {
            Ok(()) => {
                crate::tools::guard::set_original_fd_limit(soft);
                info!(from = soft, to = target, "raised the open-file limit");
            }
            Err(e) => warn!(soft, wanted = target, error = %e, "cannot raise the open-file limit"),
        }
    }
    let have = target.max(soft);
    if have < wanted {
        warn!(
            limit = have,
            max_connections,
            "the open-file limit leaves less room than [daemon] max_connections needs; \
             connections may wait for a free descriptor before the limit refuses them"
        );
    }
}

/// Descriptors kept for everything but connections.
#[cfg(unix)]
const FD_HEADROOM: u64 = 256;

/// Refused connections being answered at once; more are closed without an answer.
const MAX_REFUSING: usize = 64;

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Binds the socket and serves until a signal, `daemon/shutdown` or idle exit.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    // The lock comes first: only the daemon holding it may open the database for writing.
    let endpoint = transport::bind(&config.socket)?;
    let store = Store::open(&config.daemon.data_dir).await?;
    serve(endpoint, config, store).await
}

/// Serves on an already-bound endpoint.
pub(crate) async fn serve(
    endpoint: Endpoint,
    config: Config,
    store: Store,
) -> Result<(), DaemonError> {
    let Endpoint {
        listener,
        socket,
        lock,
    } = endpoint;
    #[cfg(unix)]
    if rustix::process::geteuid().is_root() {
        warn!("crushd is running as root; run it as the user whose sessions it serves");
    }
    #[cfg(unix)]
    raise_fd_limit(
        config.daemon.max_connections,
        config.daemon.max_model_connections,
    );
    info!(socket = %socket.display(), pid = std::process::id(), lock = %lock.path().display(), "listening");
    info!(database = %store.path().display(), "database open");
    let daemon = Daemon::new(config, store);
    let background = TaskTracker::new();
    #[cfg(unix)]
    background.spawn(ignore_file_size_signal(daemon.clone()));
    let signals = watch_signals(daemon.clone());
    background.spawn(async move {
        if let Err(e) = signals.await {
            warn!(error = %e, "signal handling failed");
        }
    });
    if let Some(idle) = daemon.config.daemon.idle_timeout {
        background.spawn(idle_exit(daemon.clone(), idle));
    }
    background.spawn(unload_idle_workspaces(daemon.clone()));

    let connections = TaskTracker::new();
    let next_conn = AtomicU64::new(1);
    let refusing = TaskTracker::new();
    let mut refused_in_a_row: u64 = 0;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = daemon.stopping().cancelled() => break,
            a = transport::accept(&listener) => a,
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                // Typically EMFILE: back off briefly instead of spinning, keep serving the rest.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(why) = transport::check_peer(&stream) {
            warn!(reason = %why, "refused a connection");
            continue;
        }
        let open = daemon.connection_count();
        if open >= daemon.config.daemon.max_connections {
            refused_in_a_row += 1;
            // Logged at the 1st, 2nd, 4th… refusal in a row, so a flood cannot fill the disk.
            if refused_in_a_row.is_power_of_two() {
                warn!(
                    open,
                    limit = daemon.config.daemon.max_connections,
                    refused = refused_in_a_row,
                    "too many connections; refusing new ones until some close"
                );
            }
            // A handful of refusals are answered (each for at most a few seconds); past that a
            // flood is just closed, so answering it cannot cost more than it.
            if refusing.len() < MAX_REFUSING {
                let error = RpcError::new(
                    ErrorCode::Overloaded,
                    format!(
                        "crushd has {open} connections open, its limit ([daemon] \
                         max_connections); try again when some have closed"
                    ),
                )
                .with_data(serde_json::json!({ "limit": daemon.config.daemon.max_connections }));
                refusing.spawn(connection::refuse(stream, error));
            }
            continue;
        }
        if refused_in_a_row > 0 {
            info!(refused = refused_in_a_row, "accepting connections again");
            refused_in_a_row = 0;
        }
        let id = next_conn.fetch_add(1, Ordering::Relaxed);
        daemon.connection_opened();
        let d = daemon.clone();
        connections.spawn(async move {
            connection::serve(d.clone(), stream, id).await;
            d.connection_closed();
        });
    }

    info!(reason = %daemon.stop_reason(), "shutting down");
    // Stop accepting first so nobody connects to a daemon that is going away.
    drop(listener);
    // Runs end before connections close, so their `$/runComplete` reaches the clients.
    let live = daemon.runtime.live_runs();
    if live > 0 {
        info!(runs = live, "cancelling runs");
    }
    daemon.runtime.shutdown().await;
    // No run is left to call a tool: the MCP servers stop (stdin closed, then the group killed).
    daemon.runtime.mcp().shutdown(Duration::from_secs(3)).await;
    daemon.disconnect_all();
    connections.close();
    if tokio::time::timeout(daemon.config.shutdown_grace, connections.wait())
        .await
        .is_err()
    {
        warn!("connections did not close within the grace period");
    }
    background.close();
    daemon.stop_timers(Duration::from_secs(1)).await;
    // The signal and idle tasks end on `stopping`; they never block shutdown.
    let _ = tokio::time::timeout(Duration::from_secs(1), background.wait()).await;
    daemon.store.close().await;
    #[cfg(unix)]
    if std::fs::symlink_metadata(&socket).is_ok() {
        let _ = std::fs::remove_file(&socket);
    }
    drop(lock);
    info!("stopped");
    Ok(())
}

#[cfg(unix)]
async fn watch_signals(daemon: Arc<Daemon>) -> Result<(), DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    tokio::select! {
        _ = term.recv() => { info!("SIGTERM received"); daemon.begin_shutdown("signal"); }
        _ = int.recv() => { info!("SIGINT received"); daemon.begin_shutdown("signal"); }
        _ = daemon.stopping().cancelled() => {}
    }
    Ok(())
}

#[cfg(windows)]
async fn watch_signals(daemon: Arc<Daemon>) -> Result<(), DaemonError> {
    tokio::select! {
        r = tokio::signal::ctrl_c() => { r.map_err(DaemonError::Signals)?; daemon.begin_shutdown("signal"); }
        _ = daemon.stopping().cancelled() => {}
    }
    Ok(())
}

/// A write past the file-size limit (`ulimit -f`) raises SIGXFSZ, whose default action kills the
/// process. Holding a handler for it turns that into an ordinary write error (EFBIG), which the
/// store reports like a full disk, and the daemon keeps serving.
#[cfg(unix)]
async fn ignore_file_size_signal(daemon: Arc<Daemon>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut xfsz) = signal(SignalKind::from_raw(rustix::process::Signal::XFSZ.as_raw())) else {
        return;
    };
    loop {
        tokio::select! {
            _ = daemon.stopping().cancelled() => return,
            _ = xfsz.recv() => warn!("a write exceeded the file size limit"),
        }
    }
}

/// Exits after `idle` with no connection, no run and no client within its reconnect grace.
async fn idle_exit(daemon: Arc<Daemon>, idle: Duration) {
    let mut count = daemon.watch_connections();
    let mut runs = daemon.runtime.watch_live_runs();
    let mut parked = daemon.clients.watch_parked();
    // Runs whose end is still to be written (`runs/late.rs`): exiting would lose it.
    let mut unsaved = daemon.runtime.watch_unsaved();
    loop {
        let idle_now = *count.borrow_and_update() == 0
            && *runs.borrow_and_update() == 0
            && *parked.borrow_and_update() == 0
            && *unsaved.borrow_and_update() == 0;
        if !idle_now {
            tokio::select! {
                _ = daemon.stopping().cancelled() => return,
                r = count.changed() => if r.is_err() { return },
                r = runs.changed() => if r.is_err() { return },
                r = parked.changed() => if r.is_err() { return },
                r = unsaved.changed() => if r.is_err() { return },
            }
            continue;
        }
        tokio::select! {
            _ = daemon.stopping().cancelled() => return,
            _ = tokio::time::sleep(idle) => {
                if *count.borrow() == 0
                    && *runs.borrow() == 0
                    && *parked.borrow() == 0
                    && *unsaved.borrow() == 0
                {
                    info!(after = ?idle, "no connections, runs or returning clients; exiting");
                    daemon.begin_shutdown("idle");
                    return;
                }
            }
            _ = count.changed() => {}
            _ = runs.changed() => {}
            _ = parked.changed() => {}
            _ = unsaved.changed() => {}
        }
    }
}

/// Unloads workspaces nobody claims, watches or runs anything in, once they have been idle for
/// `[daemon] workspace_idle`; trims the replay logs whenever they pass `[daemon] replay_budget`.
async fn unload_idle_workspaces(daemon: Arc<Daemon>) {
    let delay = daemon.config.daemon.workspace_idle;
    let tick = (delay / 4).clamp(Duration::from_millis(20), Duration::from_secs(5));
    let mut every = tokio::time::interval(tick);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let replay = daemon.runtime.replay_budget().clone();
    loop {
        tokio::select! {
            _ = daemon.stopping().cancelled() => return,
            _ = every.tick() => {}
            _ = replay.went_over() => {
                let dropped = daemon.runtime.trim_replay();
                debug!(dropped, used = replay.used(), budget = replay.max(), "replay logs trimmed to the budget");
                continue;
            }
        }
        let kept = daemon.clients.parked_sessions();
        for id in daemon
            .runtime
            .unload_idle(delay, |w| daemon.clients.holds(w), &kept)
        {
            info!(workspace = %id, "workspace idle and unclaimed; unloaded");
        }
    }
}
