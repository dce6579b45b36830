//! The daemon's shared state, one `Daemon` behind an `Arc` that every connection and request
//! holds: the configuration, the store, the run runtime, the client registry, the shutdown
//! tokens and the counters the diagnostics read. It is its own module so the layers above it
//! (server → connection → rpc) all point down to it and nothing points back up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::clients::{Clients, Expiry};
use crate::config::Config;
use crate::inbound::InboundBudget;
use crate::mcp::Mcp;
use crate::model::Models;
use crate::runs::{ReplayLimits, Runtime};
use crate::snapshots::{SnapshotLimits, Snapshots};
use crate::store::Store;

/// State shared by every connection.
pub struct Daemon {
    pub config: Config,
    pub store: Store,
    pub runtime: Arc<Runtime>,
    /// Clients by `clientId`, their claims and what dropped ones left behind.
    pub clients: Clients,
    /// Grace-period timers of parked clients.
    timers: TaskTracker,
    started: Instant,
    stopping: CancellationToken,
    /// Fires after the runs have ended: connections close.
    disconnect: CancellationToken,
    stop_reason: Mutex<Option<String>>,
    connections: watch::Sender<usize>,
    /// Requests being handled over all connections (diagnostics: `debug/stats`).
    in_flight: AtomicUsize,
    /// Message bodies being received, every connection together (`[daemon] inbound_budget`).
    pub inbound: Arc<InboundBudget>,
}

impl Daemon {
    pub fn new(config: Config, store: Store) -> Arc<Self> {
        let snapshots = (config.agent.snapshot_max_bytes > 0).then(|| {
            Snapshots::new(
                config.daemon.data_dir.join("snapshots"),
                SnapshotLimits {
                    max_file_bytes: config.agent.snapshot_max_file_bytes as u64,
                    max_bytes: config.agent.snapshot_max_bytes as u64,
                },
            )
        });
        let models = Models::from_config(&config.models)
            .with_connection_limit(config.daemon.max_model_connections);
        let mut secret_vars = models.key_variables();
        secret_vars.extend(
            config
                .mcp
                .iter()
                .flat_map(|m| m.headers_env.values().cloned()),
        );
        let mcp = Mcp::new(config.mcp.clone(), secret_vars);
        let runtime = Runtime::new(
            store.clone(),
            models,
            config.daemon.flush_interval,
            config.shutdown_grace,
        )
        .with_mcp(mcp)
        .with_sandbox(config.sandbox.clone())
        .configure(config.agent.clone(), config.permissions.clone())
        .with_replay(
            ReplayLimits {
                events: config.daemon.replay_events,
                bytes: config.daemon.replay_bytes,
            },
            config.daemon.replay_budget,
        );
        let runtime = Arc::new(match snapshots {
            Some(s) => runtime.with_snapshots(s),
            None => runtime,
        });
        Arc::new(Self {
            inbound: InboundBudget::new(config.daemon.inbound_budget),
            clients: Clients::new(config.daemon.claim_grace),
            timers: TaskTracker::new(),
            config,
            store,
            runtime,
            started: Instant::now(),
            stopping: CancellationToken::new(),
            disconnect: CancellationToken::new(),
            stop_reason: Mutex::new(None),
            connections: watch::Sender::new(0),
            in_flight: AtomicUsize::new(0),
        })
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Fires when the daemon begins to shut down.
    pub fn stopping(&self) -> &CancellationToken {
        &self.stopping
    }

    /// Fires when connections must close (after the runs have ended).
    pub fn disconnecting(&self) -> &CancellationToken {
        &self.disconnect
    }

    /// Starts the shutdown sequence; the first reason given wins.
    pub fn begin_shutdown(&self, reason: &str) {
        if let Ok(mut r) = self.stop_reason.lock()
            && r.is_none()
        {
            *r = Some(reason.to_owned());
        }
        self.stopping.cancel();
    }

    pub fn stop_reason(&self) -> String {
        self.stop_reason
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .unwrap_or_else(|| "unknown".to_owned())
    }

    pub fn connection_count(&self) -> usize {
        *self.connections.borrow()
    }

    /// Counts a connection the accept loop took, until [`Self::connection_closed`].
    pub(crate) fn connection_opened(&self) {
        self.connections.send_modify(|n| *n += 1);
    }

    pub(crate) fn connection_closed(&self) {
        self.connections.send_modify(|n| *n -= 1);
    }

    /// The open connection count, for the idle exit.
    pub(crate) fn watch_connections(&self) -> watch::Receiver<usize> {
        self.connections.subscribe()
    }

    /// Tells every connection to close (the shutdown sequence, once the runs have ended).
    pub(crate) fn disconnect_all(&self) {
        self.disconnect.cancel();
    }

    /// Stops the grace-period timers of parked clients, waiting for them at most `within`.
    pub(crate) async fn stop_timers(&self, within: Duration) {
        self.timers.close();
        let _ = tokio::time::timeout(within, self.timers.wait()).await;
    }

    /// Counts one request as being handled until the guard is dropped.
    pub fn track_request(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self.clone())
    }

    pub fn requests_in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn parked_clients(&self) -> usize {
        *self.clients.watch_parked().borrow()
    }

    /// Releases a parked client when its grace period ends (unless it came back first).
    pub fn schedule_expiry(self: &Arc<Self>, e: Expiry) {
        let d = self.clone();
        self.timers.spawn(async move {
            tokio::select! {
                _ = d.stopping.cancelled() => {}
                _ = e.gone.cancelled() => {}
                _ = tokio::time::sleep_until(e.at) => {
                    if d.clients.expire(&e) {
                        info!(client = %e.client_id, "client did not come back within the grace period; claims released");
                    }
                }
            }
        });
    }
}

/// One request counted in [`Daemon::requests_in_flight`].
pub struct InFlightGuard(Arc<Daemon>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
