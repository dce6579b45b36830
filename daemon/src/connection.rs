//! One client connection: the read loop (framing → envelope → typed dispatch), the LSP
//! lifecycle state machine, the in-flight request table that `$/cancelRequest` reaches into, and
//! the writer task that drains the connection's outbound queue.
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

use futures::StreamExt;
use interprocess::local_socket::tokio::Stream;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

use crush_protocol::io::SharedHalf;
use crush_protocol::message::{encode_error, encode_result};
use crush_protocol::{
    ClientNotification, ClientRequest, ErrorCode, FrameError, Id, LspCodec, Message, RequestId,
    RpcError,
};

use crate::clients::{Detached, KeptSubscription};
use crate::handlers;
use crate::inbound::{BudgetedCodec, Inbound};
use crate::outbound::{Outbound, write_loop};
use crate::peer::Peer;
use crate::server::Daemon;
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
pub async fn refuse(stream: Stream, error: RpcError) {
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
pub async fn serve(daemon: Arc<Daemon>, stream: Stream, conn_id: u64) {
    let span = tracing::info_span!("conn", id = conn_id);
    serve_inner(daemon, stream, conn_id).instrument(span).await
}

async fn serve_inner(daemon: Arc<Daemon>, stream: Stream, conn_id: u64) {
    let (read_half, write_half) = SharedHalf::pair(stream);
    let outbound = Outbound::new(daemon.config.daemon.max_outbound_bytes);
    let peer = Arc::new(Peer::new(conn_id, outbound.clone()));
    let writer_abort = CancellationToken::new();
    // Fires when the writer ends on its own (a write failed): the connection is useless then.
    let writer_gone = CancellationToken::new();
    let writer = {
        let gone = writer_gone.clone().drop_guard();
        let out = outbound.clone();
        let abort = writer_abort.clone();
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
    let read_half = Watched {
        inner: read_half,
        arrived: arrived.clone(),
    };
    let mut frames = FramedRead::new(
        read_half,
        BudgetedCodec::new(
            LspCodec::new(daemon.config.daemon.max_message_size),
            daemon.inbound.clone(),
        ),
    );
    let handshake_timeout = daemon.config.daemon.handshake_timeout;
    let handshake = tokio::time::sleep(handshake_timeout);
    tokio::pin!(handshake);
    let frame_timeout = daemon.config.daemon.frame_timeout;
    let frame_deadline = tokio::time::sleep(frame_timeout);
    tokio::pin!(frame_deadline);
    // Whether bytes of an unfinished message are buffered, and `frame_deadline` runs for it.
    let mut partial = false;
    let max_in_flight = daemon.config.daemon.max_in_flight;
    let mut overload_logged = false;
    let handlers_done = TaskTracker::new();
    let conn_token = CancellationToken::new();
    let in_flight: InFlight = Arc::default();
    // `agent/send` requests of this connection still being accepted. An `agent/cancel` waits for
    // those read before it, so a cancel pipelined right behind a send covers that send.
    let sends: Arc<Mutex<Vec<CancellationToken>>> = Arc::default();
    let mut state = Lifecycle::New;
    let mut daemon_stopping = false;

    loop {
        let started = !frame_timeout.is_zero() && frames.decoder().in_frame(frames.read_buffer());
        if started && !partial {
            frame_deadline
                .as_mut()
                .reset(Instant::now() + frame_timeout);
        }
        partial = started;
        let frame = tokio::select! {
            biased;
            _ = daemon.disconnecting().cancelled() => {
                daemon_stopping = true;
                break;
            }
            _ = outbound.overflowed().cancelled() => {
                warn!(
                    limit = daemon.config.daemon.max_outbound_bytes,
                    "client is not reading: its unread messages passed max_outbound_bytes; \
                     disconnecting it (it can reconnect and replay from its last seq)"
                );
                break;
            }
            _ = writer_gone.cancelled() => {
                debug!("writing to the client failed; closing the connection");
                break;
            }
            _ = &mut handshake, if state == Lifecycle::New && !handshake_timeout.is_zero() => {
                warn!(
                    timeout = ?handshake_timeout,
                    "no initialize within handshake_timeout; closing the connection"
                );
                peer.send_raw(encode_error(
                    &Id::Null,
                    RpcError::new(
                        ErrorCode::ServerNotInitialized,
                        format!(
                            "no initialize within {handshake_timeout:?} of connecting \
                             ([daemon] handshake_timeout); closing the connection"
                        ),
                    ),
                ));
                break;
            }
            _ = &mut frame_deadline, if partial => {
                warn!(
                    timeout = ?frame_timeout,
                    buffered = frames.read_buffer().len(),
                    "a message was started but not finished within frame_timeout; closing the connection"
                );
                peer.send_raw(encode_error(
                    &Id::Null,
                    RpcError::parse_error(format!(
                        "incomplete message: it was not finished within {frame_timeout:?} of its \
                         first bytes ([daemon] frame_timeout); closing the connection"
                    )),
                ));
                break;
            }
            frame = frames.next() => {
                // A whole message arrived: the next one gets a fresh `frame_timeout`.
                partial = false;
                frame
            }
            _ = arrived.notified() => continue,
        };
        // The body's share of the inbound budget is held until the message has been parsed.
        let (body, _reservation) = match frame {
            None => {
                debug!("client closed the connection");
                break;
            }
            Some(Ok(Inbound::Body(body, reservation))) => (body, reservation),
            Some(Ok(Inbound::Refused { len })) => {
                refused_inbound(&daemon, &peer, len);
                continue;
            }
            Some(Err(FrameError::Io(e))) => {
                debug!(error = %e, "read failed");
                break;
            }
            Some(Err(FrameError::Truncated)) => {
                debug!("client closed the connection in the middle of a message");
                break;
            }
            Some(Err(e)) => {
                // The byte stream cannot be resynchronized after a bad header: say why, then close.
                warn!(error = %e, "unreadable frame header; closing the connection");
                peer.send_raw(encode_error(
                    &Id::Null,
                    RpcError::parse_error(format!("{e}; closing the connection")),
                ));
                break;
            }
        };
        let message = match Message::parse(&body) {
            Ok(m) => m,
            Err(invalid) => {
                debug!(error = %invalid.error.message, "invalid message");
                peer.send_raw(encode_error(&invalid.id, invalid.error));
                continue;
            }
        };
        match message {
            Message::Request { id, method, params } => {
                let reply = |r: Result<serde_json::Value, RpcError>| match r {
                    Ok(v) => encode_result(&id, &v),
                    Err(e) => encode_error(&id, e),
                };
                match (state, method.as_str()) {
                    (Lifecycle::New, "initialize") => {
                        // Awaited inline: no later request of this connection runs before its
                        // identity and restored subscriptions are in place.
                        let result = handlers::initialize(&daemon, &peer, params.as_deref()).await;
                        if result.is_ok() {
                            state = Lifecycle::Ready;
                        }
                        peer.send_raw(reply(result));
                    }
                    (Lifecycle::New, _) => {
                        peer.send_raw(reply(Err(RpcError::new(
                            ErrorCode::ServerNotInitialized,
                            format!("send initialize before {method}"),
                        ))));
                    }
                    (_, "initialize") => {
                        peer.send_raw(reply(Err(RpcError::invalid_request(
                            "initialize was already received on this connection",
                        ))));
                    }
                    (Lifecycle::ShutDown, _) => {
                        peer.send_raw(reply(Err(RpcError::invalid_request(format!(
                            "shutdown was requested; {method} is not accepted, only the exit notification"
                        )))));
                    }
                    (Lifecycle::Ready, "shutdown") => {
                        state = Lifecycle::ShutDown;
                        peer.send_raw(reply(Ok(serde_json::Value::Null)));
                    }
                    (Lifecycle::Ready, _) => match ClientRequest::parse(&method, params.as_deref())
                    {
                        Ok(Some(request)) => {
                            let token = conn_token.child_token();
                            {
                                let mut map = lock(&in_flight);
                                if map.len() >= max_in_flight {
                                    drop(map);
                                    if !overload_logged {
                                        overload_logged = true;
                                        warn!(
                                            limit = max_in_flight,
                                            "client has max_in_flight requests in flight; \
                                             refusing more with Overloaded until some finish"
                                        );
                                    }
                                    peer.send_raw(reply(Err(RpcError::new(
                                        ErrorCode::Overloaded,
                                        format!(
                                            "{max_in_flight} requests are already in flight on \
                                             this connection ([daemon] max_in_flight); wait for \
                                             answers before sending more"
                                        ),
                                    )
                                    .with_data(serde_json::json!({ "limit": max_in_flight })))));
                                    continue;
                                }
                                if map.contains_key(&id) {
                                    drop(map);
                                    peer.send_raw(reply(Err(RpcError::invalid_request(format!(
                                        "request id {} is already in flight on this connection",
                                        display_id(&id)
                                    )))));
                                    continue;
                                }
                                map.insert(id.clone(), token.clone());
                            }
                            let counted = daemon.track_request();
                            let ctx = handlers::RequestCtx {
                                daemon: daemon.clone(),
                                peer: peer.clone(),
                            };
                            let in_flight = in_flight.clone();
                            let span = tracing::info_span!("req", method = request.method());
                            // A send is never interrupted: it answers within one database read,
                            // and half-accepting a run is worse than finishing the accept.
                            let interruptible = !matches!(request, ClientRequest::AgentSend(_));
                            let mut accepted = None;
                            let mut earlier_sends = Vec::new();
                            match &request {
                                ClientRequest::AgentSend(_) => {
                                    let done = CancellationToken::new();
                                    let mut list = lock(&sends);
                                    list.retain(|t| !t.is_cancelled());
                                    list.push(done.clone());
                                    accepted = Some(done.drop_guard());
                                }
                                ClientRequest::AgentCancel(_) => {
                                    earlier_sends = lock(&sends).clone();
                                }
                                _ => {}
                            }
                            handlers_done.spawn(
                                async move {
                                    for t in earlier_sends {
                                        t.cancelled().await;
                                    }
                                    let handler = handlers::handle(ctx.clone(), request);
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
                        Ok(None) => {
                            peer.send_raw(reply(Err(RpcError::new(
                                ErrorCode::MethodNotFound,
                                format!("unknown method {method:?}"),
                            ))));
                        }
                        Err(e) => {
                            peer.send_raw(reply(Err(e)));
                        }
                    },
                }
            }
            Message::Notification { method, params } => {
                match ClientNotification::parse(&method, params.as_deref()) {
                    Ok(Some(ClientNotification::Exit(_))) => {
                        debug!("client sent exit");
                        break;
                    }
                    Ok(Some(ClientNotification::Initialized(_))) => {}
                    Ok(Some(ClientNotification::CancelRequest(p))) => {
                        if let Some(token) = lock(&in_flight).get(&p.id) {
                            token.cancel();
                        }
                    }
                    Ok(None) if method.starts_with("$/") => {}
                    Ok(None) => debug!(%method, "ignoring unknown notification"),
                    Err(e) => {
                        debug!(%method, error = %e.message, "ignoring notification with bad params")
                    }
                }
            }
            Message::Response { id, result } => {
                if !peer.complete(&id, result.map_err(RpcError::from)) {
                    warn!(id = %display_id(&id), "dropping a response that matches no request");
                }
            }
        }
    }

    // Tear down: cancel what is still running, let it finish, fail pending daemon→client requests,
    // flush what is queued (bounded: a client that stopped reading cannot hold us), close.
    conn_token.cancel();
    handlers_done.close();
    handlers_done.wait().await;
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
    let mut writer = writer;
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
