//! A client connection to crushd: one writer task, one reader task that routes responses to
//! waiting calls through the pending map, forwards notifications to the caller's stream without
//! ever dropping one, and answers daemon→client requests with the caller's handler.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use interprocess::local_socket::tokio::Stream;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crush_protocol::io::{SharedHalf, write_frames};
use crush_protocol::message::{encode_error, encode_notification, encode_request, encode_result};
use crush_protocol::{
    ClientInfo, ErrorCode, Id, InitializeParams, InitializeResult, LspCodec, Message, Notification,
    PROTOCOL_VERSION, Request, RequestId, RpcError, request,
};

use crate::autostart;
use crate::error::ClientError;
use crate::remote::{Remote, Tunnel};

/// A notification from the daemon.
#[derive(Debug, Clone)]
pub struct IncomingNotification {
    pub method: String,
    pub params: Value,
}

impl IncomingNotification {
    /// Decodes the params as notification `N`, if this is one.
    pub fn parse<N: Notification>(&self) -> Option<Result<N::Params, ClientError>> {
        (self.method == N::METHOD).then(|| {
            serde_json::from_value(self.params.clone())
                .map_err(|e| ClientError::Decode(e.to_string()))
        })
    }
}

/// Answers daemon→client requests: (method, params) → result.
pub type RequestHandler =
    Arc<dyn Fn(String, Value) -> BoxFuture<'static, Result<Value, RpcError>> + Send + Sync>;

/// How to connect.
#[derive(Clone)]
pub struct ConnectOptions {
    /// Socket path; `None` resolves `$CRUSHD_SOCKET`, then the per-user default.
    pub socket: Option<PathBuf>,
    /// Start the daemon when nobody answers.
    pub autostart: bool,
    /// The `crushd` to start; `None` searches for it.
    pub daemon_bin: Option<PathBuf>,
    /// How long to wait for a started daemon to answer.
    pub start_timeout: Duration,
    pub client_info: ClientInfo,
    /// Stable id reused across reconnects.
    pub client_id: Option<String>,
    /// Handler for daemon→client requests; `None` answers MethodNotFound.
    pub request_handler: Option<RequestHandler>,
    /// `initialize`'s `restoreSubscriptions`: whether a connection resuming a dropped one (same
    /// `client_id`, within the daemon's grace period) gets its subscriptions back from the
    /// daemon. `None` leaves it to the daemon (true). [`crate::ReconnectingClient`] passes false:
    /// it resubscribes from its own cursors.
    pub restore_subscriptions: Option<bool>,
    /// Reach a daemon on another machine over SSH instead of the local socket (then `socket`
    /// and `daemon_bin` are not used: the remote `crushctl proxy` finds and starts its daemon).
    pub remote: Option<Remote>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            socket: None,
            autostart: true,
            daemon_bin: None,
            start_timeout: Duration::from_secs(10),
            client_info: ClientInfo {
                name: "crush-client".to_owned(),
                version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            },
            client_id: None,
            request_handler: None,
            restore_subscriptions: None,
            remote: None,
        }
    }
}

type Pending = Arc<Mutex<HashMap<RequestId, oneshot::Sender<Result<Box<RawValue>, RpcError>>>>>;

/// Where the reader puts notifications, in the order they arrived.
pub(crate) type NoteSink = Box<dyn FnMut(IncomingNotification) + Send>;

/// A live, initialized connection to crushd.
pub struct Client {
    outbound: mpsc::UnboundedSender<Bytes>,
    pending: Pending,
    next_id: AtomicU64,
    closed: CancellationToken,
    /// Cancelled once the reader has stopped: every notification it read has been handed on.
    reader_done: CancellationToken,
    notifications: Mutex<Option<mpsc::UnboundedReceiver<IncomingNotification>>>,
    tasks: Vec<JoinHandle<()>>,
    init: InitializeResult,
    socket: PathBuf,
    /// The ssh process carrying a remote connection; dropping it closes the connection.
    tunnel: Option<Tunnel>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.closed.cancel();
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Client {
    /// Connects (starting the daemon if allowed and needed) and performs `initialize`.
    pub async fn connect(opts: ConnectOptions) -> Result<Client, ClientError> {
        let socket = crush_protocol::paths::resolve_socket(opts.socket.as_deref());
        let (note_tx, note_rx) = mpsc::unbounded_channel();
        let sink: NoteSink = Box::new(move |n| {
            let _ = note_tx.send(n);
        });
        let autostart = opts.autostart;
        Self::open(socket, opts, autostart, sink, Some(note_rx)).await
    }

    /// Opens the transport `opts` names — the local socket, or an SSH tunnel to a remote
    /// `crushctl proxy` — and performs `initialize`, handing every notification to `sink` in
    /// arrival order. The one place a connection is made, for [`Client::connect`] and every
    /// attempt of [`crate::ReconnectingClient`].
    pub(crate) async fn open(
        socket: PathBuf,
        opts: ConnectOptions,
        autostart: bool,
        sink: NoteSink,
        notifications: Option<mpsc::UnboundedReceiver<IncomingNotification>>,
    ) -> Result<Client, ClientError> {
        match opts.remote.clone() {
            None => {
                let stream = if autostart {
                    autostart::connect_or_start(
                        &socket,
                        opts.daemon_bin.as_deref(),
                        opts.start_timeout,
                    )
                    .await?
                } else {
                    autostart::connect(&socket).await?
                };
                let (read, write) = SharedHalf::pair(stream);
                Self::start(read, write, socket, opts, sink, notifications, None).await
            }
            Some(remote) => {
                let (read, write, tunnel) = Tunnel::open(&remote, autostart)?;
                Self::start(read, write, socket, opts, sink, notifications, Some(tunnel)).await
            }
        }
    }

    /// Performs `initialize` over an already-connected stream.
    pub async fn over_stream(
        stream: Stream,
        socket: PathBuf,
        opts: ConnectOptions,
    ) -> Result<Client, ClientError> {
        let (read, write) = SharedHalf::pair(stream);
        Self::over_io(read, write, socket, opts).await
    }

    /// Performs `initialize` over any byte transport (used by tests and benchmarks).
    pub async fn over_io<R, W>(
        read: R,
        write: W,
        socket: PathBuf,
        opts: ConnectOptions,
    ) -> Result<Client, ClientError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (note_tx, note_rx) = mpsc::unbounded_channel();
        let sink: NoteSink = Box::new(move |n| {
            let _ = note_tx.send(n);
        });
        Self::start(read, write, socket, opts, sink, Some(note_rx), None).await
    }

    async fn start<R, W>(
        read: R,
        write: W,
        socket: PathBuf,
        opts: ConnectOptions,
        sink: NoteSink,
        notifications: Option<mpsc::UnboundedReceiver<IncomingNotification>>,
        tunnel: Option<Tunnel>,
    ) -> Result<Client, ClientError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let pending: Pending = Arc::default();
        let closed = CancellationToken::new();
        let reader_done = CancellationToken::new();
        let writer = tokio::spawn(write_loop(write, out_rx, closed.clone()));
        let reader = tokio::spawn(read_loop(
            read,
            pending.clone(),
            sink,
            out_tx.clone(),
            opts.request_handler.clone(),
            closed.clone(),
            reader_done.clone(),
        ));
        let mut client = Client {
            outbound: out_tx,
            pending,
            next_id: AtomicU64::new(1),
            closed,
            reader_done,
            notifications: Mutex::new(notifications),
            tasks: vec![writer, reader],
            init: placeholder_init(),
            socket,
            tunnel,
        };
        let init = client
            .request::<request::Initialize>(InitializeParams {
                client_info: Some(opts.client_info),
                client_id: opts.client_id,
                protocol_version: Some(PROTOCOL_VERSION),
                restore_subscriptions: opts.restore_subscriptions,
            })
            .await;
        let tunnel = client.tunnel.take();
        client.init = match (init, tunnel) {
            (Ok(init), tunnel) => {
                client.tunnel = tunnel;
                init
            }
            // ssh failed (unknown host, refused key, no crushctl there): say what it said.
            (Err(e @ (ClientError::Closed | ClientError::ConnectionLost { .. })), Some(t)) => {
                return Err(t.failed(e).await);
            }
            (Err(e), _) => return Err(e),
        };
        client.notify_raw("initialized", &serde_json::json!({}));
        Ok(client)
    }

    /// What the daemon said in answer to `initialize`.
    pub fn server(&self) -> &InitializeResult {
        &self.init
    }

    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// Whether this connection goes over SSH to another machine (then [`Self::socket`] means
    /// nothing here: the socket is the remote daemon's, named in its `daemon/status`).
    pub fn is_remote(&self) -> bool {
        self.tunnel.is_some()
    }

    /// Takes the notification stream (once). Notifications are buffered until taken, and none is
    /// ever dropped.
    pub fn take_notifications(&self) -> Option<mpsc::UnboundedReceiver<IncomingNotification>> {
        self.notifications.lock().ok().and_then(|mut n| n.take())
    }

    /// Resolves when the connection is gone.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Resolves once the reader has stopped (after [`Self::closed`]): every notification that
    /// arrived on this connection has been handed on by then, and every unanswered request has
    /// failed.
    pub async fn finished(&self) {
        self.reader_done.cancelled().await
    }

    /// A typed request.
    pub async fn request<R: Request>(&self, params: R::Params) -> Result<R::Result, ClientError> {
        let raw = self.call(R::METHOD, &params).await?;
        serde_json::from_str(raw.get())
            .map_err(|e| ClientError::Decode(format!("{}: {e}", R::METHOD)))
    }

    /// An untyped request.
    pub async fn request_raw(&self, method: &str, params: &Value) -> Result<Value, ClientError> {
        let raw = self.call(method, params).await?;
        serde_json::from_str(raw.get()).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Starts a request and returns its id (for `$/cancelRequest`) and a future for its answer.
    pub fn start_request<P: Serialize>(
        &self,
        method: &str,
        params: &P,
    ) -> (
        RequestId,
        impl std::future::Future<Output = Result<Value, ClientError>> + use<P>,
    ) {
        let (id, reply) = self.send_request(method, params);
        let fut = async move {
            let raw = reply.await?;
            serde_json::from_str(raw.get()).map_err(|e| ClientError::Decode(e.to_string()))
        };
        (id, fut)
    }

    /// Asks the daemon to cancel request `id`.
    pub fn cancel_request(&self, id: &RequestId) {
        self.notify_raw(
            "$/cancelRequest",
            &crush_protocol::CancelParams { id: id.clone() },
        );
    }

    async fn call<P: Serialize>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<Box<RawValue>, ClientError> {
        self.send_request(method, params).1.await
    }

    /// Registers a pending request, sends it, and returns its id and a future for the raw answer.
    /// The answer fails with [`ClientError::Closed`] when the request was never written (the
    /// connection was already gone), and with [`ClientError::ConnectionLost`] when the
    /// connection dropped while it was in flight (the daemon may or may not have acted on it).
    fn send_request<P: Serialize>(
        &self,
        method: &str,
        params: &P,
    ) -> (
        RequestId,
        impl std::future::Future<Output = Result<Box<RawValue>, ClientError>> + use<P>,
    ) {
        let id: RequestId = Id::Number(self.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id.clone(), tx);
        // The reader cancels `closed` before it clears the pending map: an entry inserted after
        // that clear would never be answered, so look again once it is in.
        let sent = !self.closed.is_cancelled()
            && self
                .outbound
                .send(encode_request(&id, method, params))
                .is_ok();
        if !sent {
            lock(&self.pending).remove(&id);
        }
        let method = method.to_owned();
        let fut = async move {
            if !sent {
                return Err(ClientError::Closed);
            }
            match rx.await {
                Ok(Ok(raw)) => Ok(raw),
                Ok(Err(e)) => Err(ClientError::Rpc(e)),
                Err(_) => Err(ClientError::ConnectionLost { method }),
            }
        };
        (id, fut)
    }

    pub fn notify<N: Notification>(&self, params: &N::Params) {
        self.notify_raw(N::METHOD, params);
    }

    pub fn notify_raw<P: Serialize>(&self, method: &str, params: &P) {
        let _ = self.outbound.send(encode_notification(method, params));
    }

    /// `shutdown` then `exit`: the polite way to leave.
    pub async fn shutdown(self) -> Result<(), ClientError> {
        self.request::<request::Shutdown>(crush_protocol::NoParams)
            .await?;
        self.notify_raw("exit", &serde_json::json!({}));
        // The daemon closes the connection after `exit`; wait for that so nothing is cut off.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.closed()).await;
        Ok(())
    }
}

fn placeholder_init() -> InitializeResult {
    InitializeResult {
        server_info: crush_protocol::ServerInfo {
            name: String::new(),
            version: String::new(),
        },
        protocol_version: 0,
        capabilities: Default::default(),
        pid: 0,
        client_id: String::new(),
        epoch: String::new(),
        resumed: false,
        restored: Vec::new(),
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    write: W,
    rx: mpsc::UnboundedReceiver<Bytes>,
    closed: CancellationToken,
) {
    let _ = write_frames(write, rx, closed.clone()).await;
    closed.cancel();
}

async fn read_loop<R: AsyncRead + Unpin>(
    read: R,
    pending: Pending,
    mut notes: NoteSink,
    outbound: mpsc::UnboundedSender<Bytes>,
    handler: Option<RequestHandler>,
    closed: CancellationToken,
    reader_done: CancellationToken,
) {
    // Signals the end however the task ends (also when it is aborted).
    let _done = reader_done.drop_guard();
    let mut frames = FramedRead::new(read, LspCodec::default());
    let mut handler_tasks = tokio::task::JoinSet::new();
    loop {
        let frame = tokio::select! {
            f = frames.next() => f,
            _ = closed.cancelled() => break,
            // Reap finished handler tasks so the set does not grow.
            Some(_) = handler_tasks.join_next(), if !handler_tasks.is_empty() => continue,
        };
        let Some(Ok(body)) = frame else { break };
        match Message::parse(&body) {
            Ok(Message::Response { id, result }) => {
                let waiting = lock(&pending).remove(&id);
                match (waiting, result) {
                    (Some(tx), result) => {
                        let _ = tx.send(result.map_err(RpcError::from));
                    }
                    // An error the daemon could not tie to a request (it refused the
                    // connection, say): every request waiting fails with it.
                    (None, Err(e)) if id == Id::Null => {
                        let e = RpcError::from(e);
                        for (_, tx) in lock(&pending).drain() {
                            let _ = tx.send(Err(e.clone()));
                        }
                    }
                    (None, _) => tracing::debug!(?id, "response to no request"),
                }
            }
            Ok(Message::Notification { method, params }) => {
                let params = params
                    .and_then(|p| serde_json::from_str(p.get()).ok())
                    .unwrap_or(Value::Null);
                notes(IncomingNotification { method, params });
            }
            Ok(Message::Request { id, method, params }) => {
                let params = params
                    .and_then(|p| serde_json::from_str(p.get()).ok())
                    .unwrap_or(Value::Null);
                let outbound = outbound.clone();
                let handler = handler.clone();
                handler_tasks.spawn(async move {
                    let result = match handler {
                        Some(h) => h(method, params).await,
                        None => Err(RpcError::new(
                            ErrorCode::MethodNotFound,
                            format!("this client does not handle {method:?}"),
                        )),
                    };
                    let _ = outbound.send(match result {
                        Ok(v) => encode_result(&id, &v),
                        Err(e) => encode_error(&id, e),
                    });
                });
            }
            Err(invalid) => {
                tracing::debug!(error = %invalid.error.message, "unreadable message from crushd")
            }
        }
    }
    closed.cancel();
    lock(&pending).clear();
    handler_tasks.abort_all();
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
