//! A client that outlives its connection. [`ReconnectingClient`] keeps one `clientId` for its
//! whole life and, when the connection drops, connects again with exponential backoff, takes its
//! workspace claims back (the daemon keeps them for its grace period; after that they are opened
//! again), resubscribes every session from the last event it delivered, and finds out how the
//! runs it follows ended while it was away. The caller sees one ordered stream of
//! [`ClientEvent`]s in which every session event comes at most once and every followed run
//! ends exactly once.
//!
//! Ordering rests on one inbox: every connection's reader hands its notifications to the same
//! channel, in arrival order, and every decision that must fit between two notifications (a
//! subscription's answer, an outcome learned from `run/get`, a disconnect) is put into that
//! channel after the answer that caused it was read, so it lands behind every notification the
//! daemon wrote before that answer. One task (the *actor*) reads the inbox, owns the cursors and
//! writes the caller's event stream. A second task (the *supervisor*) owns the connection: it
//! waits for it to end, reconnects and restores. Subscription changes and restores are
//! serialized by one async lock, so a restore always works from settled cursors.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{OwnedMutexGuard, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crush_protocol::{
    AgentSendParams, AgentSendResult, AgentStatusResult, ClientRequest, ErrorCode,
    InitializeResult, NoParams, Notification, Request, RpcError, RunCompleteParams, RunInfo,
    RunRef, RunState, RunStopReason, SessionMessagesParams, SessionRef, SessionSubscribeParams,
    SessionSubscribeResult, SessionUnsubscribeResult, SessionUpdateParams, StreamingMessage, Usage,
    WorkspaceCloseParams, WorkspaceInfo, WorkspaceOpenParams, daemon_notification, daemon_request,
    request, vocab::text_of,
};

use crate::connection::{Client, ConnectOptions, IncomingNotification, NoteSink, RequestHandler};
use crate::error::ClientError;

/// How a [`ReconnectingClient`] tries again.
#[derive(Debug, Clone)]
pub struct ReconnectPolicy {
    /// Pause after the second failed attempt (the first attempt is immediate); doubles after
    /// every failure.
    pub initial_delay: Duration,
    /// The longest pause between attempts. Each pause is drawn from its upper half at random,
    /// so clients that lost the daemon together do not come back in step.
    pub max_delay: Duration,
    /// Stop trying this long after the connection dropped: the event stream ends with
    /// [`ClientEvent::GaveUp`] and every request fails with [`ClientError::GaveUp`]. `None`
    /// tries forever.
    pub give_up_after: Option<Duration>,
    /// One attempt (connect and `initialize`) that takes longer than this has failed.
    pub attempt_timeout: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
            give_up_after: Some(Duration::from_secs(60)),
            attempt_timeout: Duration::from_secs(5),
        }
    }
}

/// What a [`ReconnectingClient`] tells its caller, in order.
#[derive(Debug, Clone)]
pub enum ClientEvent {
    /// A `$/sessionUpdate` of a session the caller subscribed to. Each seq comes at most once,
    /// in increasing order (seqs may skip where the daemon merged deltas). Across a reconnect
    /// the stream continues exactly where it stopped, unless a [`ClientEvent::Resync`] says
    /// otherwise.
    Update(SessionUpdateParams),
    /// A subscription could not continue from the last delivered event (the daemon's replay log
    /// no longer reaches it, or the daemon restarted): events were missed. Reload the session
    /// with `session/messages`, take `streaming` as the message being streamed, and apply the
    /// `Update`s that follow (all with a seq above `seq`).
    Resync(Resync),
    /// How a run ended. Exactly once for every run sent through [`ReconnectingClient::send`] or
    /// followed with [`ReconnectingClient::watch_run`], however many times the connection
    /// dropped; other runs' `$/runComplete`s are passed on as they arrive.
    RunOutcome(RunOutcome),
    /// A subscription could not be restored after a reconnect (the session was deleted); no
    /// more events come for it.
    SubscriptionLost { session_id: String, error: String },
    /// Any other daemon notification (`$/permissionResolved`, `$/daemonShutdown`,
    /// `$/cancelRequest`, and session events this library cannot decode).
    Notification(IncomingNotification),
    /// The connection dropped; the client is reconnecting. Requests wait for it (new ones) or
    /// fail with [`ClientError::ConnectionLost`] (those in flight that are not safe to send
    /// twice).
    Disconnected { reason: String },
    /// A new connection is up. Subscriptions are being restored: their replayed events,
    /// resyncs and recovered outcomes follow.
    Reconnected(Reconnected),
    /// The client stopped trying ([`ReconnectPolicy::give_up_after`]); nothing follows.
    GaveUp { error: String },
}

/// See [`ClientEvent::Resync`].
#[derive(Debug, Clone, PartialEq)]
pub struct Resync {
    pub session_id: String,
    /// The stream epoch the session's seqs now belong to.
    pub epoch: String,
    /// True when the daemon restarted (the epoch changed), false when its replay log had moved
    /// on.
    pub epoch_changed: bool,
    /// The session's last seq when the live stream took over: `streaming` is as of this seq.
    pub seq: u64,
    /// The assistant message being streamed, if any.
    pub streaming: Option<StreamingMessage>,
    pub status: AgentStatusResult,
}

/// See [`ClientEvent::RunOutcome`].
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    pub session_id: String,
    pub run_id: String,
    /// `completed`, `cancelled`, `failed`, `interrupted` (the daemon stopped during the run),
    /// or `unknown` (the daemon no longer knows the run, e.g. its session was deleted).
    pub state: OutcomeState,
    pub cancelled: bool,
    pub error: Option<String>,
    /// The daemon's limit that stopped the run (`stopReason`); `None` for other endings and
    /// from an older daemon.
    pub stop_reason: Option<RunStopReason>,
    /// The turn's last assistant message and its text.
    pub message_id: Option<String>,
    pub text: Option<String>,
    /// For a steered prompt: the run whose turn it joined.
    pub folded_into: Option<String>,
    /// The turn's tokens and cost (absent for a folded run, or from an older daemon).
    pub usage: Option<Usage>,
    /// False: this is the daemon's `$/runComplete`. True: that notification was missed while
    /// the connection was down, and this outcome was recovered from `run/get` (and the text
    /// from `session/messages`).
    pub recovered: bool,
}

/// How a run ended, as far as the client can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeState {
    /// The run's terminal state.
    Ended(RunState),
    /// The daemon no longer knows the run (its session was deleted, say).
    Unknown,
}

impl OutcomeState {
    /// The name shown to people and in crushctl's JSON: the run state's, or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeState::Ended(s) => s.as_str(),
            OutcomeState::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for OutcomeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for OutcomeState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl PartialEq<RunState> for OutcomeState {
    fn eq(&self, other: &RunState) -> bool {
        *self == OutcomeState::Ended(*other)
    }
}

// As for the protocol's vocabulary: comparing with a name, as callers holding one do.
impl PartialEq<&str> for OutcomeState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl RunOutcome {
    fn live(p: RunCompleteParams) -> Self {
        let state = if p.cancelled {
            RunState::Cancelled
        } else if p.error.is_some() {
            RunState::Failed
        } else {
            RunState::Completed
        };
        Self {
            state: OutcomeState::Ended(state),
            session_id: p.session_id,
            run_id: p.run_id,
            cancelled: p.cancelled,
            error: p.error,
            stop_reason: p.stop_reason,
            message_id: p.message_id,
            text: p.text,
            folded_into: p.folded_into,
            usage: p.usage,
            recovered: false,
        }
    }
}

/// See [`ClientEvent::Reconnected`].
#[derive(Debug, Clone, PartialEq)]
pub struct Reconnected {
    pub epoch: String,
    /// The daemon restarted while the client was away: every subscription resyncs, and runs
    /// that were in progress ended `interrupted`.
    pub epoch_changed: bool,
    /// The daemon still held this client's claims and subscriptions (it came back within the
    /// daemon's grace period). When false, the client opened its workspaces again itself.
    pub resumed: bool,
    /// Connection attempts it took, this one included.
    pub attempts: u32,
    /// How long the client was without a connection.
    pub down_for: Duration,
}

/// The connection dropped (or was already gone): the caller may try again on the next one.
fn is_connection_error(e: &ClientError) -> bool {
    matches!(e, ClientError::Closed | ClientError::ConnectionLost { .. })
}

/// A client of crushd that reconnects by itself; see the module documentation.
///
/// Create it with [`ReconnectingClient::connect`], take the event stream once with
/// [`ReconnectingClient::take_events`], and make requests with [`ReconnectingClient::request`]
/// (any method) or the tracking helpers [`ReconnectingClient::subscribe`],
/// [`ReconnectingClient::send`] and [`ReconnectingClient::watch_run`]. A request made while the
/// connection is down waits for the next one (at most until the client gives up). A request
/// whose connection dropped while it was in flight is sent again when doing so is harmless
/// (reads, `agent/send` — its `runId` makes it idempotent —, subscriptions, `workspace/open`),
/// and otherwise fails with [`ClientError::ConnectionLost`].
///
/// Daemon→client requests (permission prompts) go to [`ConnectOptions::request_handler`] on
/// every connection; the daemon sends pending prompts again to the new connection when it
/// resubscribes, so a prompt whose connection dropped is asked again.
pub struct ReconnectingClient {
    shared: Arc<Shared>,
}

struct Shared {
    opts: ConnectOptions,
    socket: PathBuf,
    policy: ReconnectPolicy,
    client_id: String,
    conn: watch::Sender<Conn>,
    inbox: mpsc::UnboundedSender<Input>,
    /// Serializes subscription changes with the restore after a reconnect.
    sub_lock: Arc<tokio::sync::Mutex<()>>,
    /// Sessions the caller subscribed to (or is subscribing to): permission prompts of other
    /// sessions, which reach this client only through subscriptions it keeps to learn how its
    /// runs end, are not the caller's to answer.
    visible: Arc<Mutex<HashSet<String>>>,
    /// Workspaces opened through this client (id → path), opened again when the daemon no
    /// longer holds the client's claims.
    workspaces: Mutex<BTreeMap<String, String>>,
    server: Mutex<InitializeResult>,
    events: Mutex<Option<mpsc::UnboundedReceiver<ClientEvent>>>,
    stop: CancellationToken,
}

#[derive(Clone)]
enum Conn {
    Up(Arc<Client>),
    Down,
    Over(Ended),
}

#[derive(Clone)]
enum Ended {
    Closed,
    GaveUp { after: Duration, reason: String },
}

impl Ended {
    fn error(&self) -> ClientError {
        match self {
            Ended::Closed => ClientError::Closed,
            Ended::GaveUp { after, reason } => ClientError::GaveUp {
                after: *after,
                reason: reason.clone(),
            },
        }
    }
}

impl Drop for ReconnectingClient {
    fn drop(&mut self) {
        self.shared.finish(Ended::Closed);
    }
}

impl ReconnectingClient {
    /// Connects (starting the daemon if `opts.autostart` allows) and performs `initialize`.
    /// This first connection is not retried: its error is returned as it is. Later connections
    /// never start the daemon (one that was stopped on purpose stays stopped). Without
    /// `opts.client_id` a UUID v7 is chosen; it is the same on every connection.
    pub async fn connect(
        opts: ConnectOptions,
        policy: ReconnectPolicy,
    ) -> Result<Self, ClientError> {
        let client_id = opts
            .client_id
            .clone()
            .filter(|id| !id.trim().is_empty())
            .unwrap_or_else(new_id);
        let socket = crush_protocol::paths::resolve_socket(opts.socket.as_deref());
        let visible: Arc<Mutex<HashSet<String>>> = Arc::default();
        let request_handler = opts
            .request_handler
            .clone()
            .map(|h| prompts_of_followed_sessions(h, visible.clone()));
        let opts = ConnectOptions {
            socket: Some(socket.clone()),
            client_id: Some(client_id.clone()),
            restore_subscriptions: Some(false),
            request_handler,
            ..opts
        };
        let (inbox, inbox_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let first = Client::open(
            socket.clone(),
            opts.clone(),
            opts.autostart,
            sink(&inbox),
            None,
        )
        .await?;
        let server = first.server().clone();
        tokio::spawn(
            Actor {
                events: events_tx,
                subs: HashMap::new(),
                watched: HashMap::new(),
                finished: Recent::default(),
            }
            .run(inbox_rx),
        );
        let first = Arc::new(first);
        let shared = Arc::new(Shared {
            opts,
            socket,
            policy,
            client_id,
            conn: watch::Sender::new(Conn::Up(first.clone())),
            inbox,
            sub_lock: Arc::default(),
            visible,
            workspaces: Mutex::default(),
            server: Mutex::new(server),
            events: Mutex::new(Some(events_rx)),
            stop: CancellationToken::new(),
        });
        tokio::spawn(supervise(shared.clone(), first));
        Ok(Self { shared })
    }

    /// The remote machine this client reaches over SSH, if it is not the local daemon's.
    pub fn remote(&self) -> Option<&crate::Remote> {
        self.shared.opts.remote.as_ref()
    }

    /// The `clientId` this client uses on every connection.
    pub fn client_id(&self) -> &str {
        &self.shared.client_id
    }

    /// The daemon's answer to the latest `initialize`.
    pub fn server(&self) -> InitializeResult {
        lock(&self.shared.server).clone()
    }

    /// Takes the event stream (once). Events are buffered until taken; the stream ends after
    /// [`ClientEvent::GaveUp`] or when the client is closed.
    pub fn take_events(&self) -> Option<mpsc::UnboundedReceiver<ClientEvent>> {
        lock(&self.shared.events).take()
    }

    /// Whether a connection is up (and restored) right now.
    pub fn is_connected(&self) -> bool {
        matches!(&*self.shared.conn.borrow(), Conn::Up(c) if !c.is_closed())
    }

    /// A typed request; see the type's documentation for what happens across a reconnect.
    /// `session/subscribe`, `session/unsubscribe`, `agent/send` and `workspace/open` go through
    /// the tracking paths of [`Self::subscribe`], [`Self::unsubscribe`], [`Self::send`] and
    /// [`Self::open_workspace`].
    pub async fn request<R: Request>(&self, params: R::Params) -> Result<R::Result, ClientError> {
        let params = serde_json::to_value(params)
            .map_err(|e| ClientError::Decode(format!("{}: {e}", R::METHOD)))?;
        let result = self.request_raw(R::METHOD, params).await?;
        serde_json::from_value(result)
            .map_err(|e| ClientError::Decode(format!("{}: {e}", R::METHOD)))
    }

    /// An untyped request, routed like [`Self::request`].
    pub async fn request_raw(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        fn encode<T: serde::Serialize>(v: T) -> Result<Value, ClientError> {
            serde_json::to_value(v).map_err(|e| ClientError::Decode(e.to_string()))
        }
        match method {
            "initialize" | "shutdown" | "exit" => {
                return Err(ClientError::Rpc(RpcError::invalid_request(format!(
                    "{method} is managed by the reconnecting client (use shutdown())"
                ))));
            }
            "session/subscribe" => {
                if let Ok(p) = serde_json::from_value(params.clone()) {
                    return encode(self.subscribe(p).await?);
                }
            }
            "session/unsubscribe" => {
                if let Ok(p) = serde_json::from_value::<SessionRef>(params.clone()) {
                    return encode(self.unsubscribe(&p.session_id).await?);
                }
            }
            "agent/send" => {
                if let Ok(p) = serde_json::from_value(params.clone()) {
                    return encode(self.send(p).await?);
                }
            }
            "workspace/open" => {
                if let Ok(p) = serde_json::from_value::<WorkspaceOpenParams>(params.clone()) {
                    return encode(self.open_workspace(&p.path).await?);
                }
            }
            "workspace/close" => {
                if let Ok(p) = serde_json::from_value::<WorkspaceCloseParams>(params.clone()) {
                    // Not reopened after a reconnect, whatever the answer.
                    lock(&self.shared.workspaces).remove(&p.workspace_id);
                }
            }
            _ => {}
        }
        // Parameters the tracking paths could not read go to the daemon as they are, which
        // explains what is wrong with them.
        self.plain(method, params).await
    }

    async fn plain(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        // Reads are sent again when the connection drops with them in flight; `agent/send`,
        // `session/subscribe`, `session/unsubscribe` and `workspace/open` are safe too but take
        // their own paths (`request_raw`), which keep the cursors and claims they need.
        let resend = ClientRequest::facts_of(method).is_some_and(|f| f.resend);
        loop {
            let client = self.shared.connected().await?;
            match client.request_raw(method, &params).await {
                // Never written: the connection was already gone.
                Err(ClientError::Closed) => tokio::task::yield_now().await,
                Err(ClientError::ConnectionLost { .. }) if resend => {}
                other => return other,
            }
        }
    }

    /// Subscribes to a session (`session/subscribe`, with `afterSeq`/`epoch` if the caller has a
    /// cursor of its own). Its events come as [`ClientEvent::Update`] from then on, across
    /// reconnects. The answer is the daemon's; when it says `resync`, a [`ClientEvent::Resync`]
    /// is also put in the stream, before the events that follow it.
    pub async fn subscribe(
        &self,
        params: SessionSubscribeParams,
    ) -> Result<SessionSubscribeResult, ClientError> {
        let session_id = params.session_id.clone();
        loop {
            let (client, _guard) = self.shared.locked().await?;
            let added = lock(&self.shared.visible).insert(session_id.clone());
            self.shared.tell(Input::SubscribeStart {
                session_id: session_id.clone(),
            });
            match client
                .request::<request::SessionSubscribe>(params.clone())
                .await
            {
                Ok(result) => {
                    self.shared.tell(Input::SubscribeDone {
                        session_id,
                        visible: true,
                        after: params.after_seq,
                        result: result.clone(),
                    });
                    return Ok(result);
                }
                Err(e) => {
                    let lost = is_connection_error(&e);
                    self.shared.tell(Input::SubscribeAbort {
                        session_id: session_id.clone(),
                        lost,
                    });
                    if added {
                        lock(&self.shared.visible).remove(&session_id);
                    }
                    if !lost {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Stops the session's events. A session with a followed run that has not ended stays
    /// subscribed underneath (only to learn how the run ends); its events are no longer
    /// delivered.
    pub async fn unsubscribe(
        &self,
        session_id: &str,
    ) -> Result<SessionUnsubscribeResult, ClientError> {
        let (client, _guard) = self.shared.locked().await?;
        let was = lock(&self.shared.visible).remove(session_id);
        let keep = self
            .shared
            .ask(|reply| Input::Unsubscribe {
                session_id: session_id.to_owned(),
                reply,
            })
            .await?;
        if keep {
            return Ok(SessionUnsubscribeResult { unsubscribed: was });
        }
        match client
            .request::<request::SessionUnsubscribe>(SessionRef {
                session_id: session_id.to_owned(),
            })
            .await
        {
            // The next connection does not subscribe it: it is unsubscribed either way.
            Err(e) if is_connection_error(&e) => Ok(SessionUnsubscribeResult { unsubscribed: was }),
            other => other,
        }
    }

    /// `agent/send`, followed to its end: the run's outcome comes as exactly one
    /// [`ClientEvent::RunOutcome`]. Without a `runId` one is chosen (UUID v7), which makes the
    /// send idempotent: when the connection drops before the answer, it is sent again on the
    /// next one and the daemon recognises it.
    pub async fn send(&self, mut params: AgentSendParams) -> Result<AgentSendResult, ClientError> {
        let run_id = params.run_id.get_or_insert_with(new_id).clone();
        // Followed before it is sent, so not even an immediate end is missed.
        self.shared.tell(Input::Watch {
            run_id: run_id.clone(),
            session_id: params.session_id.clone(),
            confirmed: false,
            reply: None,
        });
        loop {
            let client = self.shared.connected().await?;
            match client.request::<request::AgentSend>(params.clone()).await {
                Ok(r) => {
                    self.shared.tell(Input::Confirm {
                        run_id: run_id.clone(),
                    });
                    if r.state.is_terminal() {
                        // A repeated runId of a run that has ended: no `$/runComplete` follows.
                        self.recover_run(&client, &run_id).await;
                    }
                    return Ok(r);
                }
                Err(e) if is_connection_error(&e) => tokio::task::yield_now().await,
                Err(e) => {
                    self.shared.tell(Input::Unwatch { run_id });
                    return Err(e);
                }
            }
        }
    }

    /// Follows a run this client did not send (or sent before it was restarted): its outcome
    /// comes as exactly one [`ClientEvent::RunOutcome`] — at once (recovered) if it has already
    /// ended. Returns the run as `run/get` saw it.
    pub async fn watch_run(&self, run_id: &str) -> Result<RunInfo, ClientError> {
        loop {
            let (client, _guard) = self.shared.locked().await?;
            match self.watch_on(&client, run_id).await {
                Err(e) if is_connection_error(&e) => {}
                other => return other,
            }
        }
    }

    async fn watch_on(&self, client: &Client, run_id: &str) -> Result<RunInfo, ClientError> {
        let get = || {
            client.request::<request::RunGet>(RunRef {
                run_id: run_id.to_owned(),
            })
        };
        let mut info = get().await?;
        let subscribed = self
            .shared
            .ask(|reply| Input::Watch {
                run_id: run_id.to_owned(),
                session_id: info.session_id.clone(),
                confirmed: true,
                reply: Some(reply),
            })
            .await?;
        if !info.state.is_terminal() && !subscribed {
            // Only subscribers (and the connection that sent it) hear `$/runComplete`. Once
            // subscribed, either the run ends later and that comes, or it has ended and
            // `run/get` says so.
            self.shared
                .subscribe_hidden(client, &info.session_id)
                .await?;
            info = get().await?;
        }
        if info.state.is_terminal() {
            let outcome = recovered_outcome(client, &info).await?;
            self.shared.tell(Input::Outcome(outcome));
        }
        Ok(info)
    }

    async fn recover_run(&self, client: &Client, run_id: &str) {
        let info = client
            .request::<request::RunGet>(RunRef {
                run_id: run_id.to_owned(),
            })
            .await;
        // On failure the run stays followed; the next reconnect asks again.
        if let Ok(info) = info
            && let Ok(outcome) = recovered_outcome(client, &info).await
        {
            self.shared.tell(Input::Outcome(outcome));
        }
    }

    /// `workspace/open`, remembered: if the client comes back after the daemon released its
    /// claims (its grace period passed, or it restarted), the workspace is opened again.
    pub async fn open_workspace(&self, path: &str) -> Result<WorkspaceInfo, ClientError> {
        let params = WorkspaceOpenParams {
            path: path.to_owned(),
        };
        loop {
            let client = self.shared.connected().await?;
            match client
                .request::<request::WorkspaceOpen>(params.clone())
                .await
            {
                Ok(info) => {
                    lock(&self.shared.workspaces)
                        .insert(info.workspace_id.clone(), info.path.clone());
                    return Ok(info);
                }
                Err(e) if is_connection_error(&e) => tokio::task::yield_now().await,
                Err(e) => return Err(e),
            }
        }
    }

    /// Leaves politely (`shutdown`, `exit`: the daemon releases this client's claims at once)
    /// and stops reconnecting. The event stream ends.
    pub async fn shutdown(self) -> Result<(), ClientError> {
        let current = match &*self.shared.conn.borrow() {
            Conn::Up(c) => Some(c.clone()),
            _ => None,
        };
        self.shared.finish(Ended::Closed);
        let Some(client) = current else {
            return Ok(());
        };
        client.request::<request::Shutdown>(NoParams).await?;
        client.notify_raw("exit", &serde_json::json!({}));
        // The daemon closes the connection after `exit`; wait for that so nothing is cut off.
        let _ = tokio::time::timeout(Duration::from_secs(5), client.closed()).await;
        Ok(())
    }

    /// Stops reconnecting and drops the connection (the daemon keeps this client's claims for
    /// its grace period, as for any dropped connection). Pending requests fail; the event
    /// stream ends.
    pub fn close(&self) {
        self.shared.finish(Ended::Closed);
    }
}

impl Shared {
    /// Puts a message in the actor's inbox (behind every notification read so far).
    fn tell(&self, input: Input) {
        let _ = self.inbox.send(input);
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Input,
    ) -> Result<T, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.tell(make(tx));
        rx.await.map_err(|_| ClientError::Closed)
    }

    fn emit(&self, event: ClientEvent) {
        self.tell(Input::Emit(event));
    }

    /// Ends the client for good (closed by the caller, or given up).
    fn finish(&self, end: Ended) {
        let first = !self.stop.is_cancelled();
        self.stop.cancel();
        self.conn.send_if_modified(|c| {
            if matches!(c, Conn::Over(_)) {
                return false;
            }
            *c = Conn::Over(end);
            true
        });
        if first {
            self.tell(Input::Stop);
        }
    }

    /// The current connection once it is up and restored; waits while reconnecting.
    async fn connected(&self) -> Result<Arc<Client>, ClientError> {
        let mut rx = self.conn.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                Conn::Up(c) if !c.is_closed() => return Ok(c.clone()),
                Conn::Over(end) => return Err(end.error()),
                // Down, or up but already closed (the supervisor is about to notice).
                _ => {}
            }
            if rx.changed().await.is_err() {
                return Err(ClientError::Closed);
            }
        }
    }

    /// The current connection with the subscription lock held, so no restore runs meanwhile.
    async fn locked(&self) -> Result<(Arc<Client>, OwnedMutexGuard<()>), ClientError> {
        loop {
            let client = self.connected().await?;
            let guard = self.sub_lock.clone().lock_owned().await;
            let same = matches!(&*self.conn.borrow(), Conn::Up(c) if Arc::ptr_eq(c, &client));
            if same && !client.is_closed() {
                return Ok((client, guard));
            }
        }
    }

    /// Subscribes only to hear how followed runs end: events are not delivered.
    async fn subscribe_hidden(&self, client: &Client, session_id: &str) -> Result<(), ClientError> {
        self.tell(Input::SubscribeStart {
            session_id: session_id.to_owned(),
        });
        let r = client
            .request::<request::SessionSubscribe>(SessionSubscribeParams {
                session_id: session_id.to_owned(),
                after_seq: None,
                epoch: None,
            })
            .await;
        match r {
            Ok(result) => {
                self.tell(Input::SubscribeDone {
                    session_id: session_id.to_owned(),
                    visible: false,
                    after: None,
                    result,
                });
                Ok(())
            }
            Err(e) => {
                self.tell(Input::SubscribeAbort {
                    session_id: session_id.to_owned(),
                    lost: is_connection_error(&e),
                });
                Err(e)
            }
        }
    }

    /// One connection attempt: connect (never starting the daemon) and `initialize`. Over
    /// SSH this is a new ssh process: a dropped tunnel is reconnected like a dropped socket.
    async fn open(&self) -> Result<Client, ClientError> {
        Client::open(
            self.socket.clone(),
            self.opts.clone(),
            false,
            sink(&self.inbox),
            None,
        )
        .await
    }

    /// Brings a new connection to where the old one was: claims, subscriptions (from their
    /// cursors), and the outcomes of followed runs that ended meanwhile. Fails only when this
    /// connection drops too.
    async fn restore(&self, client: &Client, init: &InitializeResult) -> Result<(), ClientError> {
        let snap = self.ask(Input::Snapshot).await?;
        if !init.resumed {
            let workspaces: Vec<String> = lock(&self.workspaces).values().cloned().collect();
            for path in workspaces {
                match client
                    .request::<request::WorkspaceOpen>(WorkspaceOpenParams { path: path.clone() })
                    .await
                {
                    Ok(_) => {}
                    Err(e) if is_connection_error(&e) => return Err(e),
                    Err(e) => tracing::warn!(%path, error = %e, "cannot open the workspace again"),
                }
            }
        }
        let mut subscribed = HashSet::new();
        for s in &snap.subs {
            self.tell(Input::SubscribeStart {
                session_id: s.session_id.clone(),
            });
            let r = client
                .request::<request::SessionSubscribe>(SessionSubscribeParams {
                    session_id: s.session_id.clone(),
                    after_seq: Some(s.cursor),
                    epoch: Some(s.epoch.clone()),
                })
                .await;
            match r {
                Ok(result) => {
                    subscribed.insert(s.session_id.clone());
                    self.tell(Input::SubscribeDone {
                        session_id: s.session_id.clone(),
                        visible: true,
                        after: Some(s.cursor),
                        result,
                    });
                }
                Err(e) if is_connection_error(&e) => {
                    self.tell(Input::SubscribeAbort {
                        session_id: s.session_id.clone(),
                        lost: true,
                    });
                    return Err(e);
                }
                Err(e) => {
                    lock(&self.visible).remove(&s.session_id);
                    self.tell(Input::SubscriptionLost {
                        session_id: s.session_id.clone(),
                        error: e.to_string(),
                        tell_caller: true,
                    });
                }
            }
        }
        let hidden: BTreeSet<&String> = snap
            .runs
            .iter()
            .map(|r| &r.session_id)
            .filter(|s| !subscribed.contains(*s))
            .collect();
        for session_id in hidden {
            match self.subscribe_hidden(client, session_id).await {
                Ok(()) => {}
                Err(e) if is_connection_error(&e) => return Err(e),
                // The session is gone; `run/get` below tells what became of its runs.
                Err(_) => self.tell(Input::SubscriptionLost {
                    session_id: session_id.clone(),
                    error: String::new(),
                    tell_caller: false,
                }),
            }
        }
        for run in &snap.runs {
            let r = client
                .request::<request::RunGet>(RunRef {
                    run_id: run.run_id.clone(),
                })
                .await;
            match r {
                Ok(info) if info.state.is_terminal() => {
                    let outcome = recovered_outcome(client, &info).await?;
                    self.tell(Input::Outcome(outcome));
                }
                // Still queued or running: its `$/runComplete` will come on this connection.
                Ok(_) => {}
                Err(e) if is_connection_error(&e) => return Err(e),
                Err(ClientError::Rpc(e))
                    if e.code == ErrorCode::RunNotFound.code() && run.confirmed =>
                {
                    self.tell(Input::Outcome(RunOutcome {
                        session_id: run.session_id.clone(),
                        run_id: run.run_id.clone(),
                        state: OutcomeState::Unknown,
                        cancelled: false,
                        error: Some(format!(
                            "the daemon no longer knows this run (was its session deleted?): {}",
                            e.message
                        )),
                        stop_reason: None,
                        message_id: None,
                        text: None,
                        folded_into: None,
                        usage: None,
                        recovered: true,
                    }));
                }
                // Not found and never confirmed: the send did not reach the daemon, and it is
                // being sent again. Other errors: asked again after the next reconnect.
                Err(e) => tracing::debug!(run = %run.run_id, error = %e, "run/get after reconnect"),
            }
        }
        Ok(())
    }
}

/// Owns the connection: waits for it to end, reconnects with backoff, restores, and gives up
/// after the policy's deadline.
async fn supervise(shared: Arc<Shared>, mut client: Arc<Client>) {
    loop {
        tokio::select! {
            _ = client.finished() => {}
            _ = shared.stop.cancelled() => return,
        }
        // Every notification of the old connection is in the inbox by now.
        shared.conn.send_if_modified(|c| {
            if matches!(c, Conn::Over(_)) {
                return false;
            }
            *c = Conn::Down;
            true
        });
        let old_epoch = client.server().epoch.clone();
        shared.emit(ClientEvent::Disconnected {
            reason: "the connection to crushd closed".to_owned(),
        });
        match reconnect(&shared, &old_epoch).await {
            Some(c) => {
                client = c;
                shared.conn.send_if_modified(|c| {
                    if matches!(c, Conn::Over(_)) {
                        return false;
                    }
                    *c = Conn::Up(client.clone());
                    true
                });
            }
            None => return,
        }
    }
}

async fn reconnect(shared: &Arc<Shared>, old_epoch: &str) -> Option<Arc<Client>> {
    let policy = &shared.policy;
    let down_since = Instant::now();
    let deadline = policy.give_up_after.map(|d| down_since + d);
    let mut delay = policy.initial_delay;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let budget = match deadline {
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .min(policy.attempt_timeout),
            None => policy.attempt_timeout,
        };
        let opened = tokio::select! {
            r = tokio::time::timeout(budget, shared.open()) => r.unwrap_or_else(|_| {
                Err(ClientError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("crushd did not answer within {} ms", budget.as_millis()),
                )))
            }),
            _ = shared.stop.cancelled() => return None,
        };
        let failure = match opened {
            Ok(client) => {
                let client = Arc::new(client);
                let init = client.server().clone();
                *lock(&shared.server) = init.clone();
                shared.emit(ClientEvent::Reconnected(Reconnected {
                    epoch: init.epoch.clone(),
                    epoch_changed: init.epoch != old_epoch,
                    resumed: init.resumed,
                    attempts,
                    down_for: down_since.elapsed(),
                }));
                let restored = tokio::select! {
                    r = async {
                        let _guard = shared.sub_lock.lock().await;
                        shared.restore(&client, &init).await
                    } => r,
                    _ = shared.stop.cancelled() => return None,
                };
                match restored {
                    Ok(()) => return Some(client),
                    Err(e) => {
                        // Let its reader hand over its last notifications first, so none of
                        // them lands behind the next connection's snapshot.
                        client.finished().await;
                        shared.emit(ClientEvent::Disconnected {
                            reason: format!("the connection dropped again while restoring: {e}"),
                        });
                        e
                    }
                }
            }
            Err(e) => e,
        };
        tracing::debug!(attempts, error = %failure, "reconnect attempt failed");
        let now = Instant::now();
        let pause = jitter(delay);
        if let Some(after) = policy.give_up_after
            && deadline.is_some_and(|d| now >= d)
        {
            let reason = format!("{failure} (after {attempts} attempts)");
            shared.emit(ClientEvent::GaveUp {
                error: ClientError::GaveUp {
                    after,
                    reason: reason.clone(),
                }
                .to_string(),
            });
            shared.finish(Ended::GaveUp { after, reason });
            return None;
        }
        // The last pause ends at the deadline, so the last attempt is made right on it.
        let pause = match deadline {
            Some(d) => pause.min(d.saturating_duration_since(now)),
            None => pause,
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shared.stop.cancelled() => return None,
        }
        delay = (delay * 2).min(policy.max_delay);
    }
}

/// A pause drawn uniformly from `[d/2, d]`.
fn jitter(d: Duration) -> Duration {
    // Each `RandomState` is keyed differently: a cheap random number without another crate.
    let r = RandomState::new().build_hasher().finish();
    let half = d / 2;
    let span = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(r % span.saturating_add(1))
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn sink(inbox: &mpsc::UnboundedSender<Input>) -> NoteSink {
    let inbox = inbox.clone();
    Box::new(move |n| {
        let _ = inbox.send(Input::Note(n));
    })
}

/// Passes permission prompts on to the caller's handler only for sessions it subscribed to.
fn prompts_of_followed_sessions(
    handler: RequestHandler,
    visible: Arc<Mutex<HashSet<String>>>,
) -> RequestHandler {
    Arc::new(move |method: String, params: Value| {
        if method == daemon_request::PERMISSION_REQUEST
            && let Some(session) = params.get("sessionId").and_then(Value::as_str)
            && !lock(&visible).contains(session)
        {
            let message = format!(
                "this client follows session {session} only to learn how its runs end; it does not answer its prompts"
            );
            // An error is no answer: the daemon waits for another client.
            return Box::pin(async move { Err(RpcError::invalid_request(message)) });
        }
        handler(method, params)
    })
}

/// A run's outcome rebuilt from `run/get`, with its last message's text from
/// `session/messages`.
async fn recovered_outcome(client: &Client, info: &RunInfo) -> Result<RunOutcome, ClientError> {
    let text = match &info.assistant_message_id {
        Some(id) => message_text(client, &info.session_id, id).await?,
        None => None,
    };
    Ok(RunOutcome {
        session_id: info.session_id.clone(),
        run_id: info.run_id.clone(),
        state: OutcomeState::Ended(info.state),
        cancelled: info.state == RunState::Cancelled,
        error: info.error.clone(),
        stop_reason: info.stop_reason,
        message_id: info.assistant_message_id.clone(),
        text,
        folded_into: info.folded_into.clone(),
        usage: info.usage,
        recovered: true,
    })
}

/// The text of one message, looked for from the newest page back. `None` when it cannot be
/// found; an error only when the connection drops.
async fn message_text(
    client: &Client,
    session_id: &str,
    message_id: &str,
) -> Result<Option<String>, ClientError> {
    let mut before = None;
    loop {
        let page = client
            .request::<request::SessionMessages>(SessionMessagesParams {
                session_id: session_id.to_owned(),
                before,
                limit: None,
            })
            .await;
        let page = match page {
            Ok(p) => p,
            Err(e) if is_connection_error(&e) => return Err(e),
            Err(_) => return Ok(None),
        };
        if let Some(m) = page.messages.iter().find(|m| m.message_id == message_id) {
            return Ok(Some(text_of(&m.parts)));
        }
        match page.next_before {
            Some(b) if page.has_more => before = Some(b),
            _ => return Ok(None),
        }
    }
}

// ---- the actor: cursors, deduplication, the caller's event stream ----

enum Input {
    /// A notification, from whichever connection, in arrival order.
    Note(IncomingNotification),
    /// A `session/subscribe` is about to be sent: hold the session's events until its answer.
    SubscribeStart {
        session_id: String,
    },
    /// Its answer (put in the inbox after it was read, so behind every event before it).
    SubscribeDone {
        session_id: String,
        visible: bool,
        after: Option<u64>,
        result: SessionSubscribeResult,
    },
    /// It got no answer: `lost` when the connection dropped.
    SubscribeAbort {
        session_id: String,
        lost: bool,
    },
    SubscriptionLost {
        session_id: String,
        error: String,
        tell_caller: bool,
    },
    /// The caller unsubscribed; the reply says whether the session stays subscribed underneath.
    Unsubscribe {
        session_id: String,
        reply: oneshot::Sender<bool>,
    },
    /// Follow a run; the reply says whether its session is subscribed already.
    Watch {
        run_id: String,
        session_id: String,
        confirmed: bool,
        reply: Option<oneshot::Sender<bool>>,
    },
    /// The daemon accepted a followed run.
    Confirm {
        run_id: String,
    },
    Unwatch {
        run_id: String,
    },
    /// An outcome recovered from `run/get`.
    Outcome(RunOutcome),
    Emit(ClientEvent),
    Snapshot(oneshot::Sender<Snapshot>),
    Stop,
}

struct Snapshot {
    /// The caller's subscriptions, with where they got to.
    subs: Vec<SubState>,
    /// Followed runs without an outcome yet.
    runs: Vec<FollowedRun>,
}

struct SubState {
    session_id: String,
    cursor: u64,
    epoch: String,
}

struct FollowedRun {
    run_id: String,
    session_id: String,
    confirmed: bool,
}

struct Sub {
    /// The caller subscribed (else the subscription only serves followed runs).
    visible: bool,
    /// A `session/subscribe` for it has been answered.
    established: bool,
    /// The last seq delivered.
    cursor: u64,
    epoch: String,
    /// Events held while a `session/subscribe` is in flight.
    held: Option<Vec<Held>>,
}

/// A session event with what to deliver for it.
struct Held {
    seq: u64,
    event: ClientEvent,
}

struct Watched {
    session_id: String,
    confirmed: bool,
}

/// Run ids whose outcome was delivered (the most recent ones).
#[derive(Default)]
struct Recent {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl Recent {
    const KEEP: usize = 4096;

    /// False when it was there already.
    fn insert(&mut self, id: &str) -> bool {
        if !self.set.insert(id.to_owned()) {
            return false;
        }
        self.order.push_back(id.to_owned());
        if self.order.len() > Self::KEEP
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }

    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }
}

struct Actor {
    events: mpsc::UnboundedSender<ClientEvent>,
    subs: HashMap<String, Sub>,
    watched: HashMap<String, Watched>,
    finished: Recent,
}

impl Actor {
    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<Input>) {
        while let Some(input) = inbox.recv().await {
            match input {
                Input::Note(n) => self.note(n),
                Input::SubscribeStart { session_id } => {
                    let sub = self.subs.entry(session_id).or_insert_with(|| Sub {
                        visible: false,
                        established: false,
                        cursor: 0,
                        epoch: String::new(),
                        held: None,
                    });
                    sub.held.get_or_insert_with(Vec::new);
                }
                Input::SubscribeDone {
                    session_id,
                    visible,
                    after,
                    result,
                } => self.subscribed(session_id, visible, after, result),
                Input::SubscribeAbort { session_id, lost } => {
                    if let Some(sub) = self.subs.get_mut(&session_id) {
                        let held = sub.held.take().unwrap_or_default();
                        if !sub.established {
                            self.subs.remove(&session_id);
                        } else if !lost {
                            // Still subscribed from before on a working connection: what was
                            // held continues the stream.
                            self.deliver_held(&session_id, held);
                        }
                        // Lost: the next connection replays from the cursor.
                    }
                }
                Input::SubscriptionLost {
                    session_id,
                    error,
                    tell_caller,
                } => {
                    self.subs.remove(&session_id);
                    if tell_caller {
                        self.emit(ClientEvent::SubscriptionLost { session_id, error });
                    }
                }
                Input::Unsubscribe { session_id, reply } => {
                    let needed = self.watched.values().any(|w| w.session_id == session_id);
                    if needed {
                        if let Some(sub) = self.subs.get_mut(&session_id) {
                            sub.visible = false;
                        }
                    } else {
                        self.subs.remove(&session_id);
                    }
                    let _ = reply.send(needed && self.subs.contains_key(&session_id));
                }
                Input::Watch {
                    run_id,
                    session_id,
                    confirmed,
                    reply,
                } => {
                    let subscribed = self.subs.contains_key(&session_id);
                    if !self.finished.contains(&run_id) {
                        let w = self.watched.entry(run_id).or_insert(Watched {
                            session_id,
                            confirmed,
                        });
                        w.confirmed |= confirmed;
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(subscribed);
                    }
                }
                Input::Confirm { run_id } => {
                    if let Some(w) = self.watched.get_mut(&run_id) {
                        w.confirmed = true;
                    }
                }
                Input::Unwatch { run_id } => {
                    self.watched.remove(&run_id);
                }
                Input::Outcome(o) => {
                    if self.watched.contains_key(&o.run_id) {
                        self.outcome(o);
                    }
                }
                Input::Emit(e) => self.emit(e),
                Input::Snapshot(reply) => {
                    let _ = reply.send(self.snapshot());
                }
                Input::Stop => break,
            }
        }
    }

    fn emit(&self, e: ClientEvent) {
        let _ = self.events.send(e);
    }

    fn note(&mut self, n: IncomingNotification) {
        use daemon_notification::{RunComplete, SessionUpdate};
        if n.method == SessionUpdate::METHOD {
            let session = n.params.get("sessionId").and_then(Value::as_str);
            let seq = n.params.get("seq").and_then(Value::as_u64);
            if let (Some(session), Some(seq)) = (session, seq) {
                let session = session.to_owned();
                let event = match serde_json::from_value::<SessionUpdateParams>(n.params.clone()) {
                    Ok(u) => ClientEvent::Update(u),
                    // A kind this library does not know: deliver it raw, in its place.
                    Err(_) => ClientEvent::Notification(n),
                };
                self.session_event(&session, Held { seq, event });
                return;
            }
        } else if n.method == RunComplete::METHOD
            && let Ok(p) = serde_json::from_value::<RunCompleteParams>(n.params.clone())
        {
            self.outcome(RunOutcome::live(p));
            return;
        }
        self.emit(ClientEvent::Notification(n));
    }

    fn session_event(&mut self, session_id: &str, h: Held) {
        let Some(sub) = self.subs.get_mut(session_id) else {
            return;
        };
        if let Some(held) = &mut sub.held {
            held.push(h);
            return;
        }
        if !sub.visible || !sub.established || h.seq <= sub.cursor {
            return;
        }
        sub.cursor = h.seq;
        self.emit(h.event);
    }

    fn deliver_held(&mut self, session_id: &str, held: Vec<Held>) {
        for h in held {
            self.session_event(session_id, h);
        }
    }

    fn subscribed(
        &mut self,
        session_id: String,
        visible: bool,
        after: Option<u64>,
        result: SessionSubscribeResult,
    ) {
        let Some(sub) = self.subs.get_mut(&session_id) else {
            return;
        };
        let held = sub.held.take().unwrap_or_default();
        let continuing = sub.established && sub.visible;
        let epoch_changed = sub.established && sub.epoch != result.epoch;
        sub.cursor = if result.resync {
            result.seq
        } else if continuing {
            // Subscribed already on this connection: nothing between the old cursor and the
            // answer was missed (and what was held continues from it).
            sub.cursor.max(after.unwrap_or(sub.cursor))
        } else {
            after.unwrap_or(result.seq)
        };
        sub.visible |= visible;
        sub.established = true;
        sub.epoch = result.epoch.clone();
        if result.resync && sub.visible {
            self.emit(ClientEvent::Resync(Resync {
                session_id: session_id.clone(),
                epoch: result.epoch,
                epoch_changed,
                seq: result.seq,
                streaming: result.streaming,
                status: result.status,
            }));
        }
        self.deliver_held(&session_id, held);
    }

    fn outcome(&mut self, o: RunOutcome) {
        if !self.finished.insert(&o.run_id) {
            return;
        }
        self.watched.remove(&o.run_id);
        self.emit(ClientEvent::RunOutcome(o));
    }

    fn snapshot(&mut self) -> Snapshot {
        let needed: HashSet<&String> = self.watched.values().map(|w| &w.session_id).collect();
        // Subscriptions kept only for runs that have all ended are not restored.
        self.subs
            .retain(|id, s| s.established && (s.visible || needed.contains(id)));
        Snapshot {
            subs: self
                .subs
                .iter()
                .filter(|(_, s)| s.visible)
                .map(|(id, s)| SubState {
                    session_id: id.clone(),
                    cursor: s.cursor,
                    epoch: s.epoch.clone(),
                })
                .collect(),
            runs: self
                .watched
                .iter()
                .map(|(id, w)| FollowedRun {
                    run_id: id.clone(),
                    session_id: w.session_id.clone(),
                    confirmed: w.confirmed,
                })
                .collect(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    /// Feeds the inputs to an actor and returns every event it emitted.
    async fn run(inputs: Vec<Input>) -> Vec<ClientEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let actor = tokio::spawn(
            Actor {
                events: events_tx,
                subs: HashMap::new(),
                watched: HashMap::new(),
                finished: Recent::default(),
            }
            .run(rx),
        );
        for i in inputs {
            tx.send(i).unwrap();
        }
        tx.send(Input::Stop).unwrap();
        actor.await.unwrap();
        let mut out = Vec::new();
        while let Some(e) = events.recv().await {
            out.push(e);
        }
        out
    }

    fn delta(seq: u64, text: &str) -> Input {
        Input::Note(IncomingNotification {
            method: "$/sessionUpdate".into(),
            params: json!({"sessionId": "s", "seq": seq, "runId": "r", "kind": "textDelta",
                           "messageId": "m", "text": text}),
        })
    }

    fn complete(run: &str) -> Input {
        Input::Note(IncomingNotification {
            method: "$/runComplete".into(),
            params: json!({"sessionId": "s", "runId": run, "cancelled": false, "text": "live"}),
        })
    }

    fn start() -> Input {
        Input::SubscribeStart {
            session_id: "s".into(),
        }
    }

    fn done(visible: bool, after: Option<u64>, seq: u64, resync: bool) -> Input {
        Input::SubscribeDone {
            session_id: "s".into(),
            visible,
            after,
            result: SessionSubscribeResult {
                seq,
                epoch: "e1".into(),
                resync,
                ..SessionSubscribeResult::default()
            },
        }
    }

    fn watch(run: &str) -> Input {
        Input::Watch {
            run_id: run.into(),
            session_id: "s".into(),
            confirmed: true,
            reply: None,
        }
    }

    fn recovered(run: &str) -> Input {
        Input::Outcome(RunOutcome {
            session_id: "s".into(),
            run_id: run.into(),
            state: OutcomeState::Ended(RunState::Completed),
            cancelled: false,
            error: None,
            stop_reason: None,
            message_id: None,
            text: Some("recovered".into()),
            folded_into: None,
            usage: None,
            recovered: true,
        })
    }

    /// What a test looks at: `u<seq>`, `resync<seq>`, `outcome:<run>:<recovered>`.
    fn summary(events: &[ClientEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                ClientEvent::Update(u) => format!("u{}", u.seq),
                ClientEvent::Resync(r) => format!("resync{}", r.seq),
                ClientEvent::RunOutcome(o) => format!("outcome:{}:{}", o.run_id, o.recovered),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn live_events_that_overtake_a_resync_answer_come_after_the_resync() {
        let events = run(vec![
            start(),
            done(true, None, 3, false),
            delta(4, "a"),
            // Reconnected: the cursor (4) is out of the log; live events race the answer.
            start(),
            delta(9, "x"),
            delta(10, "y"),
            done(true, Some(4), 8, true),
            delta(11, "z"),
        ])
        .await;
        assert_eq!(summary(&events), ["u4", "resync8", "u9", "u10", "u11"]);
    }

    #[tokio::test]
    async fn events_are_delivered_at_most_once_and_in_order() {
        let events = run(vec![
            start(),
            done(true, None, 0, false),
            delta(1, "a"),
            delta(2, "b"),
            // A replay from an older cursor (e.g. a caller's own afterSeq) repeats 2.
            start(),
            delta(2, "b"),
            delta(3, "c"),
            done(true, Some(1), 3, false),
            delta(3, "c"),
            delta(5, "merged"),
        ])
        .await;
        assert_eq!(summary(&events), ["u1", "u2", "u3", "u5"]);
    }

    #[tokio::test]
    async fn a_subscribe_cut_off_drops_what_it_held_and_a_refused_one_keeps_the_stream() {
        let events = run(vec![
            start(),
            done(true, None, 0, false),
            delta(1, "a"),
            start(),
            delta(2, "b"),
            // The connection dropped before the answer: 2 will be replayed from cursor 1.
            Input::SubscribeAbort {
                session_id: "s".into(),
                lost: true,
            },
            start(),
            delta(2, "b"),
            done(true, Some(1), 2, false),
            start(),
            delta(3, "c"),
            // Refused on a working connection that is still subscribed: 3 continues the stream.
            Input::SubscribeAbort {
                session_id: "s".into(),
                lost: false,
            },
        ])
        .await;
        assert_eq!(summary(&events), ["u1", "u2", "u3"]);
    }

    #[tokio::test]
    async fn a_followed_run_ends_exactly_once_whichever_report_comes_first() {
        let events = run(vec![
            watch("r1"),
            watch("r2"),
            complete("r1"),
            recovered("r1"),
            recovered("r2"),
            complete("r2"),
            // Watching a run that already ended changes nothing.
            watch("r2"),
            recovered("r2"),
        ])
        .await;
        assert_eq!(summary(&events), ["outcome:r1:false", "outcome:r2:true"]);
    }

    #[tokio::test]
    async fn a_subscription_kept_only_for_a_run_delivers_no_events() {
        let events = run(vec![
            watch("r"),
            start(),
            done(false, None, 5, false),
            delta(6, "hidden"),
            complete("r"),
        ])
        .await;
        assert_eq!(summary(&events), ["outcome:r:false"]);
    }

    #[tokio::test]
    async fn a_restore_resubscribes_the_callers_sessions_and_those_of_unfinished_runs() {
        let (tx, rx) = oneshot::channel();
        run(vec![
            start(),
            done(true, None, 0, false),
            delta(7, "a"),
            Input::SubscribeStart {
                session_id: "t".into(),
            },
            Input::SubscribeDone {
                session_id: "t".into(),
                visible: false,
                after: None,
                result: SessionSubscribeResult::default(),
            },
            Input::Watch {
                run_id: "open".into(),
                session_id: "u".into(),
                confirmed: false,
                reply: None,
            },
            Input::Snapshot(tx),
        ])
        .await;
        let snap = rx.await.unwrap();
        let subs: Vec<(String, u64, String)> = snap
            .subs
            .into_iter()
            .map(|s| (s.session_id, s.cursor, s.epoch))
            .collect();
        // "t" only served runs that have all ended.
        assert_eq!(subs, [("s".to_owned(), 7, "e1".to_owned())]);
        assert_eq!(snap.runs.len(), 1);
        assert_eq!(snap.runs[0].run_id, "open");
        assert_eq!(snap.runs[0].session_id, "u");
        assert!(!snap.runs[0].confirmed);
    }

    #[test]
    fn backoff_pauses_stay_in_the_upper_half() {
        let d = Duration::from_millis(400);
        for _ in 0..1000 {
            let p = jitter(d);
            assert!(p >= d / 2 && p <= d, "{p:?}");
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
