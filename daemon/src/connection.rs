//! One client connection: the read loop (framing → envelope → typed dispatch), the LSP
//! lifecycle state machine, the in-flight request table that `$/cancelRequest` reaches into, and
//! the writer task that drains the connection's outbound queue. A `Connection` has one method
//! per concern — `read`, `message`, `request`/`start`, `notification`, `teardown` — and asks the
//! protocol's method table (`MethodFacts`), never a method name, how a request is ordered behind
//! the connection's earlier sends and whether `$/cancelRequest` may stop it.
//!
//! Architecture invariant: nothing a client sends can end the daemon or another connection. A
//! handler runs on its own task, so a slow request never blocks the read loop; every handler is
//! tracked and is cancelled and awaited before the connection is gone. What one connection can
//! hold is bounded: a connection that does not `initialize` within `handshake_timeout`, or
//! leaves a message unfinished for `frame_timeout`, is closed; past `max_in_flight` requests in
//! flight, more are refused at once with `Overloaded`; past `max_outbound_bytes` unread, it is
//! closed (outbound.rs).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use interprocess::local_socket::tokio::Stream;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tokio_util::codec::FramedRead;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

use crush_protocol::io::SharedHalf;
use crush_protocol::message::{encode_error, encode_result};
use crush_protocol::{
    ClientNotification, ClientRequest, ErrorCode, FrameError, Id, LspCodec, Message, RequestId,
    RpcError,
};

use crate::clients::{Detached, KeptSubscription};
use crate::inbound::{BudgetedCodec, Inbound, Reservation};
use crate::outbound::{Outbound, write_loop};
use crate::peer::Peer;
use crate::rpc;
use crate::shared::Daemon;
use crate::sync::lock;

/// Where a connection is in the LSP lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    /// Only `initialize` is accepted.
    New,
    Ready,
    /// `shutdown` was answered; only `exit` is meaningful now.
    ShutDown,
}

type InFlight = Arc<Mutex<HashMap<RequestId, CancellationToken>>>;

/// The connection's read half, which wakes the read loop whenever bytes arrive: the loop cannot
/// otherwise see a message that started while it waits for the message to finish, and it must,
/// to enforce `frame_timeout`.
struct Watched<R> {
    inner: R,
    arrived: Arc<Notify>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Watched<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.arrived.notify_one();
        }
        r
    }
}

/// How long a refused connection is given to send its first message and to take the answer.
const REFUSE_WAIT: Duration = Duration::from_secs(2);
/// The largest first message a refused connection may send (an `initialize` is far smaller).
const REFUSE_MAX_MESSAGE: usize = 64 * 1024;

/// Answers a connection the daemon will not serve and closes it: its first request gets `error`
/// under the request's own id (so a client's `initialize` fails with the reason), anything else
/// an error with a null id. Bounded in time and memory, whatever the peer does.
pub(crate) async fn refuse(stream: Stream, error: RpcError) {
    use tokio::io::AsyncWriteExt as _;
    let (read_half, mut write_half) = SharedHalf::pair(stream);
    let mut frames = FramedRead::new(read_half, LspCodec::new(REFUSE_MAX_MESSAGE));
    let id = match tokio::time::timeout(REFUSE_WAIT, frames.next()).await {
        Ok(Some(Ok(body))) => match Message::parse(&body) {
            Ok(Message::Request { id, .. }) => id,
            _ => Id::Null,
        },
        _ => Id::Null,
    };
    let wire = crush_protocol::codec::frame(&encode_error(&id, error));
    let _ = tokio::time::timeout(REFUSE_WAIT, async {
        write_half.write_all(&wire).await?;
        write_half.flush().await?;
        write_half.shutdown().await
    })
    .await;
}

/// Serves one accepted connection until the client leaves, sends `exit`, breaks the framing, or
/// the daemon stops.
pub(crate) async fn serve(daemon: Arc<Daemon>, stream: Stream, conn_id: u64) {
    let span = tracing::info_span!("conn", id = conn_id);
    async move {
        let (mut conn, mut reader) = Connection::open(daemon, stream, conn_id);
        while let Some((body, reservation)) = conn.read(&mut reader).await {
            let go_on = conn.message(&body).await;
            // The body's share of the inbound budget is held until the message was handled.
            drop(reservation);
            if !go_on {
                break;
            }
        }
        conn.teardown().await;
    }
    .instrument(span)
    .await
}

/// One client connection, from open to teardown: one method per concern — reading a message
/// (`read`, with the connection's deadlines and reasons to stop), a request (`request`: the
/// lifecycle; `start`: its task), a notification, a response, and `teardown`.
struct Connection {
    daemon: Arc<Daemon>,
    peer: Arc<Peer>,
    outbound: Arc<Outbound>,
    writer: Writer,
    state: Lifecycle,
    /// The daemon closes every connection: the client is told why at teardown.
    daemon_stopping: bool,
    requests: Requests,
}

/// The task that drains the outbound queue to the socket.
struct Writer {
    task: JoinHandle<std::io::Result<()>>,
    /// Stops the writer without flushing what is queued.
    abort: CancellationToken,
    /// Fires when the writer ends on its own (a write failed): the connection is useless then.
    gone: CancellationToken,
}

/// The read side: frames, and the deadlines on what the client sends.
struct Reader {
    frames: FramedRead<Watched<SharedHalf<Stream>>, BudgetedCodec>,
    arrived: Arc<Notify>,
    handshake_timeout: Duration,
    handshake: Pin<Box<Sleep>>,
    frame_timeout: Duration,
    frame_deadline: Pin<Box<Sleep>>,
    /// Whether bytes of an unfinished message are buffered, and `frame_deadline` runs for it.
    partial: bool,
}

/// The requests of a connection being handled, each on its own task.
struct Requests {
    tasks: TaskTracker,
    /// Parent of every request's token; cancelled at teardown.
    token: CancellationToken,
    in_flight: InFlight,
    /// `send` requests (method facts) of this connection still being accepted. An `after_sends`
    /// request waits for those read before it, so a cancel pipelined right behind a send covers
    /// that send.
    sends: Arc<Mutex<Vec<CancellationToken>>>,
    max_in_flight: usize,
    overload_logged: bool,
}

impl Connection {
    fn open(daemon: Arc<Daemon>, stream: Stream, conn_id: u64) -> (Connection, Reader) {
        let (read_half, write_half) = SharedHalf::pair(stream);
        let outbound = Outbound::new(daemon.config.daemon.max_outbound_bytes);
        let peer = Arc::new(Peer::new(conn_id, outbound.clone()));
        let abort = CancellationToken::new();
        let gone = CancellationToken::new();
        let task = {
            let gone = gone.clone().drop_guard();
            let out = outbound.clone();
            let abort = abort.clone();
            tokio::spawn(
                async move {
                    let r = write_loop(out, write_half, abort).await;
                    drop(gone);
                    r
                }
                .in_current_span(),
            )
        };
        debug!("connection opened");

        let arrived = Arc::new(Notify::new());
        let frames = FramedRead::new(
            Watched {
                inner: read_half,
                arrived: arrived.clone(),
            },
            BudgetedCodec::new(
                LspCodec::new(daemon.config.daemon.max_message_size),
                daemon.inbound.clone(),
            ),
        );
        let handshake_timeout = daemon.config.daemon.handshake_timeout;
        let frame_timeout = daemon.config.daemon.frame_timeout;
        let reader = Reader {
            frames,
            arrived,
            handshake_timeout,
            handshake: Box::pin(tokio::time::sleep(handshake_timeout)),
            frame_timeout,
            frame_deadline: Box::pin(tokio::time::sleep(frame_timeout)),
            partial: false,
        };
        let requests = Requests {
            tasks: TaskTracker::new(),
            token: CancellationToken::new(),
            in_flight: InFlight::default(),
            sends: Arc::default(),
            max_in_flight: daemon.config.daemon.max_in_flight,
            overload_logged: false,
        };
        let conn = Connection {
            daemon,
            peer,
            outbound,
            writer: Writer { task, abort, gone },
            state: Lifecycle::New,
            daemon_stopping: false,
            requests,
        };
        (conn, reader)
    }

    /// The next whole message, or `None` when the connection is to close: the client left or
    /// broke the framing, a deadline passed, the writer failed, the client stopped reading, or
    /// the daemon stops. Messages refused by the inbound budget are answered here.
    async fn read(&mut self, reader: &mut Reader) -> Option<(Bytes, Reservation)> {
        loop {
            let frame_timeout = reader.frame_timeout;
            let started = !frame_timeout.is_zero()
                && reader
                    .frames
                    .decoder()
                    .in_frame(reader.frames.read_buffer());
            if started && !reader.partial {
                reader
                    .frame_deadline
                    .as_mut()
                    .reset(Instant::now() + frame_timeout);
            }
            reader.partial = started;
            let handshake_timeout = reader.handshake_timeout;
            let awaiting_initialize = self.state == Lifecycle::New && !handshake_timeout.is_zero();
            let frame = tokio::select! {
                biased;
                _ = self.daemon.disconnecting().cancelled() => {
                    self.daemon_stopping = true;
                    return None;
                }
                _ = self.outbound.overflowed().cancelled() => {
                    warn!(
                        limit = self.daemon.config.daemon.max_outbound_bytes,
                        "client is not reading: its unread messages passed max_outbound_bytes; \
                         disconnecting it (it can reconnect and replay from its last seq)"
                    );
                    return None;
                }
                _ = self.writer.gone.cancelled() => {
                    debug!("writing to the client failed; closing the connection");
                    return None;
                }
                _ = &mut reader.handshake, if awaiting_initialize => {
                    warn!(
                        timeout = ?handshake_timeout,
                        "no initialize within handshake_timeout; closing the connection"
                    );
                    self.peer.send_raw(encode_error(
                        &Id::Null,
                        RpcError::new(
                            ErrorCode::ServerNotInitialized,
                            format!(
                                "no initialize within {handshake_timeout:?} of connecting \
                                 ([daemon] handshake_timeout); closing the connection"
                            ),
                        ),
                    ));
                    return None;
                }
                _ = &mut reader.frame_deadline, if reader.partial => {
                    warn!(
                        timeout = ?frame_timeout,
                        buffered = reader.frames.read_buffer().len(),
                        "a message was started but not finished within frame_timeout; closing the connection"
                    );
                    self.peer.send_raw(encode_error(
                        &Id::Null,
                        RpcError::parse_error(format!(
                            "incomplete message: it was not finished within {frame_timeout:?} of its \
                             first bytes ([daemon] frame_timeout); closing the connection"
                        )),
                    ));
                    return None;
                }
                frame = reader.frames.next() => {
                    // A whole message arrived: the next one gets a fresh `frame_timeout`.
                    reader.partial = false;
                    frame
                }
                _ = reader.arrived.notified() => continue,
            };
            match frame {
                None => {
                    debug!("client closed the connection");
                    return None;
                }
                Some(Ok(Inbound::Body(body, reservation))) => return Some((body, reservation)),
                Some(Ok(Inbound::Refused { len })) => {
                    refused_inbound(&self.daemon, &self.peer, len)
                }
                Some(Err(FrameError::Io(e))) => {
                    debug!(error = %e, "read failed");
                    return None;
                }
                Some(Err(FrameError::Truncated)) => {
                    debug!("client closed the connection in the middle of a message");
                    return None;
                }
                Some(Err(e)) => {
                    // The byte stream cannot be resynchronized after a bad header: say why, then close.
                    warn!(error = %e, "unreadable frame header; closing the connection");
                    self.peer.send_raw(encode_error(
                        &Id::Null,
                        RpcError::parse_error(format!("{e}; closing the connection")),
                    ));
                    return None;
                }
            }
        }
    }

    /// Handles one message body. `false` when the connection is to close (`exit`).
    async fn message(&mut self, body: &[u8]) -> bool {
        match Message::parse(body) {
            Ok(Message::Request { id, method, params }) => {
                self.request(id, &method, params.as_deref()).await;
                true
            }
            Ok(Message::Notification { method, params }) => {
                self.notification(&method, params.as_deref())
            }
            Ok(Message::Response { id, result }) => {
                if !self.peer.complete(&id, result.map_err(RpcError::from)) {
                    warn!(id = %display_id(&id), "dropping a response that matches no request");
                }
                true
            }
            Err(invalid) => {
                debug!(error = %invalid.error.message, "invalid message");
                self.peer.send_raw(encode_error(&invalid.id, invalid.error));
                true
            }
        }
    }

    /// A request, by where the connection is in its lifecycle: `initialize` and `shutdown` are
    /// answered here, in the order they were read; the rest is started on its own task.
    async fn request(&mut self, id: RequestId, method: &str, params: Option<&RawValue>) {
        let refuse = |e: RpcError| encode_error(&id, e);
        let answer = match (self.state, method) {
            (Lifecycle::New, "initialize") => {
                // Awaited inline: no later request of this connection runs before its identity
                // and restored subscriptions are in place.
                let ctx = self.ctx();
                let result = rpc::initialize(&ctx, params).await;
                if result.is_ok() {
                    self.state = Lifecycle::Ready;
                }
                match result {
                    Ok(v) => encode_result(&id, &v),
                    Err(e) => refuse(e),
                }
            }
            (Lifecycle::New, _) => refuse(RpcError::new(
                ErrorCode::ServerNotInitialized,
                format!("send initialize before {method}"),
            )),
            (_, "initialize") => refuse(RpcError::invalid_request(
                "initialize was already received on this connection",
            )),
            (Lifecycle::ShutDown, _) => refuse(RpcError::invalid_request(format!(
                "shutdown was requested; {method} is not accepted, only the exit notification"
            ))),
            (Lifecycle::Ready, "shutdown") => {
                self.state = Lifecycle::ShutDown;
                encode_result(&id, &serde_json::Value::Null)
            }
            (Lifecycle::Ready, _) => match ClientRequest::parse(method, params) {
                Ok(Some(request)) => return self.start(id, request),
                Ok(None) => refuse(RpcError::new(
                    ErrorCode::MethodNotFound,
                    format!("unknown method {method:?}"),
                )),
                Err(e) => refuse(e),
            },
        };
        self.peer.send_raw(answer);
    }

    /// Starts a request of a ready connection on its own task, registered in the in-flight map
    /// (which `$/cancelRequest` reaches) and ordered as its method's facts say.
    fn start(&mut self, id: RequestId, request: ClientRequest) {
        let token = self.requests.token.child_token();
        if let Err(e) = self.requests.admit(&id, &token) {
            self.peer.send_raw(encode_error(&id, e));
            return;
        }
        let counted = self.daemon.track_request();
        let ctx = self.ctx();
        let in_flight = self.requests.in_flight.clone();
        let span = tracing::info_span!("req", method = request.method());
        let facts = request.facts();
        let interruptible = !facts.uninterruptible;
        // Read before this request registers itself, should it be both kinds.
        let earlier_sends = if facts.after_sends {
            lock(&self.requests.sends).clone()
        } else {
            Vec::new()
        };
        let accepted = facts.send.then(|| self.requests.begin_send());
        self.requests.tasks.spawn(
            async move {
                for t in earlier_sends {
                    t.cancelled().await;
                }
                let handler = rpc::handle(ctx.clone(), request);
                let result = if interruptible {
                    tokio::select! {
                        biased;
                        r = handler => r,
                        _ = token.cancelled() => Err(RpcError::cancelled()),
                    }
                } else {
                    handler.await
                };
                drop(accepted);
                lock(&in_flight).remove(&id);
                drop(counted);
                ctx.peer.send_raw(match result {
                    Ok(v) => encode_result(&id, &v),
                    Err(e) => encode_error(&id, e),
                });
            }
            .instrument(span),
        );
    }

    /// A notification from the client. `false` when the connection is to close (`exit`).
    fn notification(&mut self, method: &str, params: Option<&RawValue>) -> bool {
        match ClientNotification::parse(method, params) {
            Ok(Some(ClientNotification::Exit(_))) => {
                debug!("client sent exit");
                return false;
            }
            Ok(Some(ClientNotification::Initialized(_))) => {}
            Ok(Some(ClientNotification::CancelRequest(p))) => {
                if let Some(token) = lock(&self.requests.in_flight).get(&p.id) {
                    token.cancel();
                }
            }
            Ok(None) if method.starts_with("$/") => {}
            Ok(None) => debug!(%method, "ignoring unknown notification"),
            Err(e) => {
                debug!(%method, error = %e.message, "ignoring notification with bad params")
            }
        }
        true
    }

    fn ctx(&self) -> rpc::RequestCtx {
        rpc::RequestCtx {
            daemon: self.daemon.clone(),
            peer: self.peer.clone(),
        }
    }

    /// Cancels what is still running and lets it finish, fails pending daemon→client requests,
    /// flushes what is queued (bounded: a client that stopped reading cannot hold us), then parks
    /// or releases what the client held.
    async fn teardown(self) {
        let Connection {
            daemon,
            peer,
            outbound,
            writer,
            state,
            daemon_stopping,
            requests,
        } = self;
        requests.token.cancel();
        requests.tasks.close();
        requests.tasks.wait().await;
        if daemon_stopping {
            // After the handlers, so a `daemon/shutdown` caller gets its answer before the notice.
            peer.notify::<crush_protocol::daemon_notification::DaemonShutdownNotice>(
                &crush_protocol::DaemonShutdownNoticeParams {
                    reason: daemon.stop_reason(),
                },
            );
        }
        // What the client followed, and how far it got, outlives the connection for the grace
        // period (unless it said goodbye with shutdown). The cursors are read once the writer is
        // done, so they cover everything that reached the socket.
        let followed = peer.freeze_subscriptions();
        daemon.runtime.disconnect(&peer);
        peer.close();
        let Writer {
            task: mut writer,
            abort: writer_abort,
            ..
        } = writer;
        if outbound.is_overflowed() {
            writer_abort.cancel();
        }
        if tokio::time::timeout(Duration::from_secs(2), &mut writer)
            .await
            .is_err()
        {
            info!("client did not read its last messages; dropping them");
            writer_abort.cancel();
            writer.abort();
        }
        if state != Lifecycle::New {
            let written = outbound.written();
            let mut kept: Vec<KeptSubscription> = followed
                .into_iter()
                .map(|s| KeptSubscription {
                    cursor: written.get(s.as_str()).copied(),
                    session_id: s,
                })
                .collect();
            kept.sort_by(|a, b| a.session_id.cmp(&b.session_id));
            let clean = state == Lifecycle::ShutDown || daemon_stopping;
            match daemon.clients.detach(&peer, clean, kept) {
                Detached::Parked(expiry) => {
                    debug!(client = %expiry.client_id, "client kept for its reconnect grace period");
                    daemon.schedule_expiry(expiry);
                }
                Detached::TakenOver(current) => {
                    // The client came back before this connection noticed it was gone: the runs
                    // this connection sent report to the new one.
                    daemon.runtime.rebind_sender(&current.client_id(), &current);
                }
                Detached::Released | Detached::Unknown => {}
            }
        }
        debug!("connection closed");
    }
}

impl Requests {
    /// Admits a request into the in-flight map under its id, or says why not: too many in
    /// flight (`max_in_flight`), or its id is already in flight.
    fn admit(&mut self, id: &RequestId, token: &CancellationToken) -> Result<(), RpcError> {
        let mut map = lock(&self.in_flight);
        if map.len() >= self.max_in_flight {
            drop(map);
            let max_in_flight = self.max_in_flight;
            if !self.overload_logged {
                self.overload_logged = true;
                warn!(
                    limit = max_in_flight,
                    "client has max_in_flight requests in flight; \
                     refusing more with Overloaded until some finish"
                );
            }
            return Err(RpcError::new(
                ErrorCode::Overloaded,
                format!(
                    "{max_in_flight} requests are already in flight on this connection \
                     ([daemon] max_in_flight); wait for answers before sending more"
                ),
            )
            .with_data(serde_json::json!({ "limit": max_in_flight })));
        }
        if map.contains_key(id) {
            return Err(RpcError::invalid_request(format!(
                "request id {} is already in flight on this connection",
                display_id(id)
            )));
        }
        map.insert(id.clone(), token.clone());
        Ok(())
    }

    /// Registers a `send` request; later `after_sends` requests wait until the guard drops.
    fn begin_send(&self) -> DropGuard {
        let done = CancellationToken::new();
        let mut list = lock(&self.sends);
        list.retain(|t| !t.is_cancelled());
        list.push(done.clone());
        done.drop_guard()
    }
}

fn display_id(id: &RequestId) -> String {
    match id {
        Id::Null => "null".to_owned(),
        Id::Number(n) => n.to_string(),
        Id::Str(s) => format!("{s:?}"),
    }
}

/// Answers a message that did not fit in the daemon-wide inbound budget. Its body was never
/// read, so the error cannot name the request: clients fail whatever they have pending on a
/// null-id error, and may send again once the daemon has room.
fn refused_inbound(daemon: &Daemon, peer: &Peer, len: usize) {
    let budget = &daemon.inbound;
    debug!(
        len,
        used = budget.used(),
        budget = budget.max(),
        "a message did not fit in the inbound budget; refused with Overloaded"
    );
    peer.send_raw(encode_error(
        &Id::Null,
        RpcError::new(
            ErrorCode::Overloaded,
            format!(
                "a message of {len} bytes was refused unread: messages being received already \
                 take {} of the daemon's {} bytes ([daemon] inbound_budget); send it again later",
                budget.used(),
                budget.max()
            ),
        )
        .with_data(serde_json::json!({ "limit": budget.max() })),
    ));
}
