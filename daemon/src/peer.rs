//! One connected client as the rest of the daemon sees it: a handle that queues outgoing
//! messages for the connection's writer and sends daemon→client requests, matching their
//! responses through a pending-request map. Cloned freely (`Arc<Peer>`); when the connection
//! ends, [`Peer::close`] fails every pending request and later sends are dropped.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crush_protocol::message::{encode_notification, encode_request};
use crush_protocol::{ErrorCode, Id, Notification, RequestId, RpcError};

use crate::outbound::{EventItem, Outbound};
use crate::sync::lock;

type PendingReply = oneshot::Sender<Result<Box<RawValue>, RpcError>>;
/// Where the answer to a request started with [`Peer::start_request`] arrives.
pub type ReplyReceiver = oneshot::Receiver<Result<Box<RawValue>, RpcError>>;

/// Who is on the other end, as told by `initialize`.
#[derive(Debug, Clone, Default)]
pub struct ClientIdentity {
    pub name: Option<String>,
    pub version: Option<String>,
    pub client_id: String,
    /// Whether the client chose `client_id` (and may reconnect with it).
    pub explicit_id: bool,
}

#[derive(Debug)]
pub struct Peer {
    pub id: u64,
    outbound: Arc<Outbound>,
    pending: Mutex<HashMap<RequestId, PendingReply>>,
    next_request: AtomicU64,
    closed: AtomicBool,
    identity: Mutex<Option<ClientIdentity>>,
    /// Sessions this connection receives `$/sessionUpdate` for.
    subscriptions: Mutex<HashSet<String>>,
    /// The subscriptions when the connection began to close (teardown empties the live set).
    followed_at_close: Mutex<Option<Vec<String>>>,
}

impl Peer {
    pub fn new(id: u64, outbound: Arc<Outbound>) -> Self {
        Self {
            id,
            outbound,
            pending: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            identity: Mutex::new(None),
            subscriptions: Mutex::new(HashSet::new()),
            followed_at_close: Mutex::new(None),
        }
    }

    /// Queues an already-encoded message. Returns false once the connection is gone.
    pub fn send_raw(&self, body: Bytes) -> bool {
        !self.closed.load(Ordering::Acquire) && self.outbound.push_raw(body)
    }

    /// Queues a session event (deltas may merge with one queued right before).
    pub fn send_event(&self, item: &EventItem) -> bool {
        !self.closed.load(Ordering::Acquire) && self.outbound.push_event(item)
    }

    pub fn outbound(&self) -> &Arc<Outbound> {
        &self.outbound
    }

    /// The client's id for claims: its `clientId`, or one made up for this connection.
    pub fn client_id(&self) -> String {
        self.identity()
            .map(|i| i.client_id)
            .unwrap_or_else(|| format!("conn-{}", self.id))
    }

    /// The sessions this connection is subscribed to.
    pub fn subscriptions(&self) -> Vec<String> {
        self.lock_subscriptions().iter().cloned().collect()
    }

    /// Remembers what the connection follows before teardown forgets its subscriptions, so a
    /// client taking it over meanwhile still gets them. Returns them.
    pub fn freeze_subscriptions(&self) -> Vec<String> {
        let subs = self.subscriptions();
        *lock(&self.followed_at_close) = Some(subs.clone());
        subs
    }

    /// The sessions followed: as frozen at close, or the live set.
    pub fn followed(&self) -> Vec<String> {
        lock(&self.followed_at_close)
            .clone()
            .unwrap_or_else(|| self.subscriptions())
    }

    pub fn notify<N: Notification>(&self, params: &N::Params) -> bool {
        self.send_raw(encode_notification(N::METHOD, params))
    }

    pub fn identity(&self) -> Option<ClientIdentity> {
        self.identity.lock().ok().and_then(|g| g.clone())
    }

    pub fn set_identity(&self, identity: ClientIdentity) {
        if let Ok(mut g) = self.identity.lock() {
            *g = Some(identity);
        }
    }

    pub fn add_subscription(&self, session_id: &str) {
        self.lock_subscriptions().insert(session_id.to_owned());
    }

    /// Returns whether the connection was subscribed.
    pub fn remove_subscription(&self, session_id: &str) -> bool {
        self.lock_subscriptions().remove(session_id)
    }

    pub fn take_subscriptions(&self) -> Vec<String> {
        self.lock_subscriptions().drain().collect()
    }

    fn lock_subscriptions(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        lock(&self.subscriptions)
    }

    /// Sends a daemon→client request and waits for its response, at most `timeout`. On timeout
    /// the client is told with `$/cancelRequest` and the caller gets `RequestTimeout`.
    pub async fn request<P: Serialize>(
        &self,
        method: &str,
        params: &P,
        timeout: Duration,
    ) -> Result<Box<RawValue>, RpcError> {
        let (id, rx) = self
            .start_request(method, params)
            .ok_or_else(connection_closed)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(connection_closed()),
            Err(_) => {
                self.abandon_request(&id);
                Err(RpcError::new(
                    ErrorCode::RequestTimeout,
                    format!(
                        "the client did not answer {method} within {} ms",
                        timeout.as_millis()
                    ),
                ))
            }
        }
    }

    /// Sends a daemon→client request without waiting: the receiver gets the answer, or an
    /// error once the connection closes or the request is abandoned. `None` when the connection
    /// is already gone.
    pub fn start_request<P: Serialize>(
        &self,
        method: &str,
        params: &P,
    ) -> Option<(RequestId, ReplyReceiver)> {
        let id: RequestId = Id::Number(self.next_request.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        self.lock_pending().insert(id.clone(), tx);
        if !self.send_raw(encode_request(&id, method, params)) {
            self.lock_pending().remove(&id);
            return None;
        }
        Some((id, rx))
    }

    /// Withdraws a request started with [`Self::start_request`] that is still unanswered: its
    /// waiter is dropped and the client gets `$/cancelRequest`, so it can take its prompt down.
    pub fn abandon_request(&self, id: &RequestId) {
        if self.lock_pending().remove(id).is_some() {
            self.send_raw(encode_notification(
                "$/cancelRequest",
                &crush_protocol::CancelParams { id: id.clone() },
            ));
        }
    }

    /// The name the client gave in `initialize`, for "answered by …" notes.
    pub fn display_name(&self) -> String {
        self.identity()
            .and_then(|i| i.name)
            .unwrap_or_else(|| format!("connection {}", self.id))
    }

    /// Routes a response from the client. Returns false when no request is waiting for `id`.
    pub fn complete(&self, id: &RequestId, result: Result<Box<RawValue>, RpcError>) -> bool {
        match self.lock_pending().remove(id) {
            Some(tx) => {
                let _ = tx.send(result);
                true
            }
            None => false,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Marks the connection gone: pending requests fail at once, later sends are dropped.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.lock_pending().clear();
        self.outbound.close();
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<RequestId, PendingReply>> {
        // A poisoned map only means another task panicked mid-insert; the map itself is fine.
        lock(&self.pending)
    }
}

fn connection_closed() -> RpcError {
    RpcError::new(ErrorCode::RequestCancelled, "the client connection closed")
}
