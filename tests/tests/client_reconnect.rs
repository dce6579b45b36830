//! Black-box tests of `crush_client::ReconnectingClient`: a real `crushd` process, the loopback
//! mock model, and between the client and the daemon a small Unix-socket proxy that the test
//! uses to cut connections and to refuse new ones for a while. The assertions are what a user
//! of the client notices: the streamed text arrives once, without gaps; every followed run ends
//! exactly once; prompts are asked again; requests wait, fail clearly, or give up clearly.
//!
//! Nothing sleeps to synchronize: every wait is on an event (a client event, a proxy counter, a
//! message on a plain observer connection) with a deadline.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crush_client::{
    ClientError, ClientEvent, ConnectOptions, ReconnectPolicy, ReconnectingClient, RequestHandler,
    RunOutcome,
};
use crush_protocol::{
    AgentCancelParams, AgentSendParams, NoParams, SessionCreateParams, SessionEvent,
    SessionMessagesParams, SessionSubscribeParams, request,
};
use crush_tests::mock_llm::{MockLlm, Script};
use crush_tests::{DEADLINE, RawConn, TestEnv};

// ---- a proxy the test can cut ----

/// Accepts on its own socket and relays each connection to the daemon's socket, byte for byte.
/// [`Proxy::cut`] drops every relayed connection (both ends see end-of-stream);
/// [`Proxy::pause`] makes it accept and at once close new connections until [`Proxy::resume`].
struct Proxy {
    path: PathBuf,
    state: Arc<ProxyState>,
    stop: CancellationToken,
}

struct ProxyState {
    paused: AtomicBool,
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, CancellationToken>>,
    /// (connections relayed, connections refused) so far.
    counts: watch::Sender<(usize, usize)>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Proxy {
    async fn start(dir: &Path, upstream: &Path) -> Proxy {
        let path = dir.join("proxy.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let state = Arc::new(ProxyState {
            paused: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            live: Mutex::default(),
            counts: watch::Sender::new((0, 0)),
        });
        let stop = CancellationToken::new();
        let (st, upstream, stop2) = (state.clone(), upstream.to_path_buf(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop2.cancelled() => break,
                };
                let Ok((mut down, _)) = accepted else { break };
                let up = if st.paused.load(Ordering::SeqCst) {
                    None
                } else {
                    UnixStream::connect(&upstream).await.ok()
                };
                let Some(mut up) = up else {
                    drop(down);
                    st.counts.send_modify(|c| c.1 += 1);
                    continue;
                };
                let id = st.next_id.fetch_add(1, Ordering::SeqCst);
                let cut = stop2.child_token();
                st.live.lock().unwrap().insert(id, cut.clone());
                st.counts.send_modify(|c| c.0 += 1);
                let st2 = st.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = cut.cancelled() => {}
                    }
                    st2.live.lock().unwrap().remove(&id);
                    // Both streams are dropped here: each side sees the connection end.
                });
            }
        });
        Proxy { path, state, stop }
    }

    /// Drops every relayed connection; returns how many there were.
    fn cut(&self) -> usize {
        let live: Vec<_> = self.state.live.lock().unwrap().drain().collect();
        for (_, t) in &live {
            t.cancel();
        }
        live.len()
    }

    fn pause(&self) {
        self.state.paused.store(true, Ordering::SeqCst);
    }

    fn resume(&self) {
        self.state.paused.store(false, Ordering::SeqCst);
    }

    /// Waits until at least `n` connections have been refused while paused.
    async fn wait_refused(&self, n: usize) {
        let mut rx = self.state.counts.subscribe();
        tokio::time::timeout(DEADLINE, rx.wait_for(|c| c.1 >= n))
            .await
            .expect("the client never tried to reconnect")
            .unwrap();
    }

    fn relayed(&self) -> usize {
        self.state.counts.borrow().0
    }
}

// ---- helpers ----

fn options(socket: &Path, handler: Option<RequestHandler>) -> ConnectOptions {
    ConnectOptions {
        socket: Some(socket.to_path_buf()),
        autostart: false,
        request_handler: handler,
        ..ConnectOptions::default()
    }
}

fn fast_policy() -> ReconnectPolicy {
    ReconnectPolicy {
        initial_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(200),
        give_up_after: Some(DEADLINE),
        attempt_timeout: Duration::from_secs(2),
    }
}

/// A daemon with the mock model (`extra` config appended), a proxy in front of it, and a
/// project directory with `hello.txt`.
struct World {
    env: TestEnv,
    mock: MockLlm,
    daemon: crush_tests::DaemonProcess,
    proxy: Proxy,
    project: PathBuf,
}

async fn world(extra: &str) -> World {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_with(&mock.base_url(), "openai", extra);
    let daemon = env.spawn_daemon(&[]);
    let proxy = Proxy::start(env.dir.path(), &env.socket).await;
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("hello.txt"), "hello world\n").unwrap();
    World {
        env,
        mock,
        daemon,
        proxy,
        project,
    }
}

/// Opens the project and creates a session through the reconnecting client.
async fn new_session(rc: &ReconnectingClient, project: &Path) -> String {
    let ws = rc.open_workspace(project.to_str().unwrap()).await.unwrap();
    rc.request::<request::SessionCreate>(SessionCreateParams {
        workspace_id: ws.workspace_id,
        ..SessionCreateParams::default()
    })
    .await
    .unwrap()
    .session_id
}

async fn subscribe(rc: &ReconnectingClient, session: &str) {
    rc.subscribe(SessionSubscribeParams {
        session_id: session.to_owned(),
        ..SessionSubscribeParams::default()
    })
    .await
    .unwrap();
}

async fn send(rc: &ReconnectingClient, session: &str, prompt: &str) -> String {
    rc.send(AgentSendParams {
        session_id: session.to_owned(),
        prompt: prompt.to_owned(),
        ..AgentSendParams::default()
    })
    .await
    .unwrap()
    .run_id
}

async fn next(events: &mut mpsc::UnboundedReceiver<ClientEvent>) -> ClientEvent {
    match tokio::time::timeout(DEADLINE, events.recv()).await {
        Ok(Some(e)) => e,
        Ok(None) => panic!("the event stream ended"),
        Err(_) => panic!("no client event within {DEADLINE:?}"),
    }
}

/// What the caller saw of one run, and around it.
#[derive(Default, Debug)]
struct Seen {
    /// Text deltas of the run, concatenated (reset by a resync to the rebuilt text).
    text: String,
    deltas: usize,
    outcomes: Vec<RunOutcome>,
    disconnects: usize,
    reconnects: usize,
    /// Seqs of every update delivered, per session.
    seqs: HashMap<String, Vec<u64>>,
}

impl Seen {
    /// Records one event; returns it for the caller's own checks.
    fn record(&mut self, run: &str, e: &ClientEvent) {
        match e {
            ClientEvent::Update(u) => {
                self.seqs
                    .entry(u.session_id.clone())
                    .or_default()
                    .push(u.seq);
                if let SessionEvent::TextDelta { text, .. } = &u.event
                    && u.run_id.as_deref() == Some(run)
                {
                    self.text.push_str(text);
                    self.deltas += 1;
                }
            }
            ClientEvent::RunOutcome(o) => self.outcomes.push(o.clone()),
            ClientEvent::Disconnected { .. } => self.disconnects += 1,
            ClientEvent::Reconnected(_) => self.reconnects += 1,
            _ => {}
        }
    }

    fn outcomes_of(&self, run: &str) -> Vec<&RunOutcome> {
        self.outcomes.iter().filter(|o| o.run_id == run).collect()
    }

    fn assert_seqs_increase(&self) {
        for (session, seqs) in &self.seqs {
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "seqs of {session} must strictly increase (no duplicate, no reorder): {seqs:?}"
            );
        }
    }
}

/// Runs one more short turn and collects events until its outcome: a barrier after which no
/// event about anything earlier can still be on its way.
async fn barrier(
    w: &World,
    rc: &ReconnectingClient,
    events: &mut mpsc::UnboundedReceiver<ClientEvent>,
    session: &str,
    seen: &mut Seen,
    watched_run: &str,
) {
    w.mock.push(Script::text("barrier"));
    let run = send(rc, session, "barrier").await;
    loop {
        let e = next(events).await;
        seen.record(watched_run, &e);
        if matches!(&e, ClientEvent::RunOutcome(o) if o.run_id == run) {
            return;
        }
    }
}

fn text_of_parts(parts: &[Value]) -> String {
    parts
        .iter()
        .filter(|p| p["type"] == "text")
        .filter_map(|p| p["text"].as_str())
        .collect()
}

// ---- the tests ----

/// The connection is cut three times while a reply streams: the caller still receives the
/// model's text exactly (no duplicate, no gap) and one outcome for the run.
#[tokio::test]
async fn streamed_text_arrives_exactly_once_across_repeated_cuts() {
    let w = world("").await;
    let rc = ReconnectingClient::connect(options(&w.proxy.path, None), fast_policy())
        .await
        .unwrap();
    let mut events = rc.take_events().unwrap();
    let session = new_session(&rc, &w.project).await;
    subscribe(&rc, &session).await;
    let mut observer = RawConn::initialized(&w.env.socket).await;
    observer
        .request("session/subscribe", json!({"sessionId": session}))
        .await;
    let script = Script::chunks(60).chunk_delay(Duration::from_millis(15));
    let full = script.full_text();
    w.mock.push(script);
    let run = send(&rc, &session, "stream a lot").await;

    let mut seen = Seen::default();
    let mut cut_connections = 0;
    // Cut when the text has reached 15%, 40% and 65% of its length (deltas the daemon merged
    // for a slow reader cannot skip a cut: one cut per delta, while any is due). The first and
    // last cuts let the client straight back in (it races the live stream); the middle one
    // keeps it out until three more events have passed, which it must get from the replay.
    let cut_at = [15, 40, 65].map(|pct| full.len() * pct / 100);
    let mut cuts = 0;
    let mut last_seq = 0;
    loop {
        let e = next(&mut events).await;
        let before = seen.deltas;
        seen.record(&run, &e);
        if let ClientEvent::Update(u) = &e {
            last_seq = u.seq;
        }
        if seen.deltas != before && cuts < cut_at.len() && seen.text.len() >= cut_at[cuts] {
            if cuts == 1 {
                w.proxy.pause();
                cut_connections += w.proxy.cut();
                observer
                    .wait_for("three more events", |m| {
                        m["method"] == "$/sessionUpdate"
                            && m["params"]["seq"].as_u64() > Some(last_seq + 3)
                    })
                    .await;
                w.proxy.resume();
            } else {
                cut_connections += w.proxy.cut();
            }
            cuts += 1;
        }
        if !seen.outcomes_of(&run).is_empty() {
            break;
        }
    }
    barrier(&w, &rc, &mut events, &session, &mut seen, &run).await;

    assert_eq!(cut_connections, 3, "each cut dropped the live connection");
    assert_eq!(seen.text, full, "the text, concatenated, is the model's");
    let outcomes = seen.outcomes_of(&run);
    assert_eq!(outcomes.len(), 1, "exactly one outcome: {outcomes:?}");
    assert_eq!(outcomes[0].state, "completed");
    assert_eq!(outcomes[0].text.as_deref(), Some(full.as_str()));
    assert!(seen.disconnects >= 3, "{seen:?}");
    assert_eq!(seen.disconnects, seen.reconnects, "{seen:?}");
    seen.assert_seqs_increase();
    assert_eq!(
        rc.server().client_id,
        rc.client_id(),
        "one clientId throughout"
    );
    assert!(w.proxy.relayed() >= 4);
}

/// The connection is cut and new ones are refused until the run has finished (as a plain
/// observer connection sees): the caller still gets the whole text from the replay, and the
/// run's outcome once, recovered from `run/get` since its `$/runComplete` went nowhere.
#[tokio::test]
async fn an_outcome_missed_while_away_is_recovered_exactly_once() {
    let w = world("").await;
    let rc = ReconnectingClient::connect(options(&w.proxy.path, None), fast_policy())
        .await
        .unwrap();
    let mut events = rc.take_events().unwrap();
    let session = new_session(&rc, &w.project).await;
    subscribe(&rc, &session).await;
    let mut observer = RawConn::initialized(&w.env.socket).await;
    let r = observer
        .request("session/subscribe", json!({"sessionId": session}))
        .await;
    assert!(r.get("result").is_some(), "{r}");

    let script = Script::chunks(30).chunk_delay(Duration::from_millis(10));
    let full = script.full_text();
    w.mock.push(script);
    let run = send(&rc, &session, "go").await;

    let mut seen = Seen::default();
    while seen.deltas < 3 {
        let e = next(&mut events).await;
        seen.record(&run, &e);
    }
    w.proxy.pause();
    assert_eq!(w.proxy.cut(), 1);
    w.proxy.wait_refused(1).await;
    let done = observer.run_complete(&run).await;
    assert_eq!(done["text"], full.as_str());
    w.proxy.resume();

    loop {
        let e = next(&mut events).await;
        seen.record(&run, &e);
        if !seen.outcomes_of(&run).is_empty() {
            break;
        }
    }
    barrier(&w, &rc, &mut events, &session, &mut seen, &run).await;

    assert_eq!(seen.text, full);
    let outcomes = seen.outcomes_of(&run);
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    let o = outcomes[0];
    assert!(
        o.recovered,
        "the $/runComplete was sent while nobody listened: {o:?}"
    );
    assert_eq!(o.state, "completed");
    assert!(!o.cancelled);
    assert_eq!(o.text.as_deref(), Some(full.as_str()));
    assert_eq!(o.message_id.as_deref(), done["messageId"].as_str());
    seen.assert_seqs_increase();
}

/// With a replay log of 5 events, the caller stays away for more than 5: it is told to resync
/// (with the right seq and the streaming message), and rebuilds the exact text from
/// `session/messages`, `streaming` and the deltas that follow.
#[tokio::test]
async fn a_cursor_older_than_the_replay_log_resyncs_and_the_text_can_be_rebuilt() {
    let w = world("[daemon]\nreplay_events = 5\n").await;
    let rc = ReconnectingClient::connect(options(&w.proxy.path, None), fast_policy())
        .await
        .unwrap();
    let mut events = rc.take_events().unwrap();
    let session = new_session(&rc, &w.project).await;
    subscribe(&rc, &session).await;
    let mut observer = RawConn::initialized(&w.env.socket).await;
    observer
        .request("session/subscribe", json!({"sessionId": session}))
        .await;

    let script = Script::chunks(150).chunk_delay(Duration::from_millis(10));
    let full = script.full_text();
    w.mock.push(script);
    let run = send(&rc, &session, "long answer").await;

    let mut seen = Seen::default();
    let mut cursor = 0;
    while seen.deltas < 3 {
        let e = next(&mut events).await;
        if let ClientEvent::Update(u) = &e {
            cursor = u.seq;
        }
        seen.record(&run, &e);
    }
    w.proxy.pause();
    assert_eq!(w.proxy.cut(), 1);
    // Let more events pass than the log keeps.
    observer
        .wait_for(
            "an event the replay log has pushed the cursor out for",
            |m| m["method"] == "$/sessionUpdate" && m["params"]["seq"].as_u64() > Some(cursor + 8),
        )
        .await;
    w.proxy.resume();

    let mut resync_seq = None;
    loop {
        let e = next(&mut events).await;
        match &e {
            ClientEvent::Resync(r) => {
                assert_eq!(r.session_id, session);
                assert!(!r.epoch_changed, "same daemon: {r:?}");
                assert!(
                    r.seq > cursor + 8,
                    "{} should be past {}",
                    r.seq,
                    cursor + 8
                );
                // Rebuild: finished assistant messages of the run, then the streaming one.
                let msgs = rc
                    .request::<request::SessionMessages>(SessionMessagesParams {
                        session_id: session.clone(),
                        ..SessionMessagesParams::default()
                    })
                    .await
                    .unwrap();
                let streaming_id = r.streaming.as_ref().map(|s| s.message_id.clone());
                let mut text: String = msgs
                    .messages
                    .iter()
                    .filter(|m| m.role == "assistant" && m.run_id.as_deref() == Some(&run))
                    .filter(|m| Some(&m.message_id) != streaming_id.as_ref())
                    .map(|m| {
                        text_of_parts(serde_json::to_value(&m.parts).unwrap().as_array().unwrap())
                    })
                    .collect();
                if let Some(s) = &r.streaming {
                    let parts = serde_json::to_value(&s.parts).unwrap();
                    text.push_str(&text_of_parts(parts.as_array().unwrap()));
                }
                seen.text = text;
                resync_seq = Some(r.seq);
            }
            ClientEvent::Update(u) => {
                if let Some(s) = resync_seq {
                    assert!(u.seq > s, "after a resync only later seqs come");
                }
            }
            _ => {}
        }
        seen.record(&run, &e);
        if !seen.outcomes_of(&run).is_empty() {
            break;
        }
    }
    assert!(resync_seq.is_some(), "no resync event: {seen:?}");
    assert_eq!(
        seen.text, full,
        "rebuilt from messages + streaming + later deltas"
    );
    assert_eq!(seen.outcomes_of(&run).len(), 1);
    seen.assert_seqs_increase();
}

/// The daemon is gone for good: the client keeps trying until its deadline, then says so
/// clearly, both as an event and to every waiting and later request.
#[tokio::test]
async fn reconnecting_gives_up_after_the_deadline_with_a_clear_error() {
    let env = TestEnv::new();
    let mut daemon = env.spawn_daemon(&[]);
    let give_up = Duration::from_millis(800);
    let policy = ReconnectPolicy {
        initial_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        give_up_after: Some(give_up),
        attempt_timeout: Duration::from_millis(500),
    };
    let rc = Arc::new(
        ReconnectingClient::connect(options(&env.socket, None), policy)
            .await
            .unwrap(),
    );
    let mut events = rc.take_events().unwrap();
    let killed_at = Instant::now();
    daemon.signal(rustix::process::Signal::KILL);
    daemon.wait_exit(DEADLINE);
    assert!(matches!(
        next(&mut events).await,
        ClientEvent::Disconnected { .. }
    ));
    // A request made while disconnected waits, then shares the verdict.
    let rc2 = rc.clone();
    let waiting = tokio::spawn(async move { rc2.request::<request::DaemonStatus>(NoParams).await });
    let error = match next(&mut events).await {
        ClientEvent::GaveUp { error } => error,
        other => panic!("expected GaveUp, got {other:?}"),
    };
    let waited = killed_at.elapsed();
    assert!(
        waited >= give_up,
        "gave up after {waited:?}, before the deadline"
    );
    assert!(
        error.contains("could not reconnect within 800 ms") && error.contains("attempts"),
        "{error}"
    );
    assert!(
        tokio::time::timeout(DEADLINE, events.recv())
            .await
            .unwrap()
            .is_none(),
        "nothing follows GaveUp"
    );
    for e in [
        waiting.await.unwrap().unwrap_err(),
        rc.request::<request::DaemonStatus>(NoParams)
            .await
            .unwrap_err(),
    ] {
        assert!(matches!(e, ClientError::GaveUp { .. }), "{e:?}");
        assert!(e.is_unreachable());
        assert!(e.to_string().contains("could not reconnect"), "{e}");
    }
    assert!(!rc.is_connected());
}

/// A request in flight when the connection drops fails with a clear error (it is not sent
/// again: the daemon may have acted on it); one made while disconnected waits and succeeds; the
/// caller's request handler answers on the new connection; claims come back with the client.
#[tokio::test]
async fn in_flight_requests_fail_clearly_and_new_ones_wait_for_the_connection() {
    let w = world("").await;
    let calls = Arc::new(AtomicUsize::new(0));
    let (asked_tx, mut asked) = mpsc::unbounded_channel();
    let counter = calls.clone();
    let handler: RequestHandler = Arc::new(move |method, params| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let _ = asked_tx.send(method.clone());
        Box::pin(async move {
            if n == 0 {
                // The first question is never answered on its connection.
                std::future::pending::<()>().await;
            }
            Ok(json!({"answered": method, "params": params}))
        })
    });
    let rc = Arc::new(
        ReconnectingClient::connect(options(&w.proxy.path, Some(handler)), fast_policy())
            .await
            .unwrap(),
    );
    let mut events = rc.take_events().unwrap();
    let ws = rc
        .open_workspace(w.project.to_str().unwrap())
        .await
        .unwrap();

    let rc2 = rc.clone();
    let in_flight = tokio::spawn(async move {
        rc2.request::<request::DebugClientRequest>(crush_protocol::DebugClientRequestParams {
            method: "test/question".into(),
            params: json!({}),
            timeout_ms: Some(60_000),
        })
        .await
    });
    // The daemon got it: it is asking our handler.
    tokio::time::timeout(DEADLINE, asked.recv()).await.unwrap();
    w.proxy.pause();
    assert_eq!(w.proxy.cut(), 1);
    let err = in_flight.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, ClientError::ConnectionLost { method } if method == "debug/clientRequest"),
        "{err:?}"
    );
    assert!(err.to_string().contains("may or may not"), "{err}");

    assert!(matches!(
        next(&mut events).await,
        ClientEvent::Disconnected { .. }
    ));
    let rc3 = rc.clone();
    let waiting = tokio::spawn(async move { rc3.request::<request::DaemonStatus>(NoParams).await });
    w.proxy.wait_refused(1).await;
    assert!(!rc.is_connected());
    w.proxy.resume();
    let status = waiting.await.unwrap().unwrap();
    assert_eq!(status.pid, w.daemon.pid());
    match next(&mut events).await {
        ClientEvent::Reconnected(r) => {
            assert!(r.resumed, "the daemon kept our claim: {r:?}");
            assert!(!r.epoch_changed);
            assert!(r.attempts >= 2, "{r:?}");
        }
        other => panic!("expected Reconnected, got {other:?}"),
    }
    // The claim is ours again, on a live connection.
    let list = rc
        .request::<request::WorkspaceList>(NoParams)
        .await
        .unwrap();
    let info = list
        .workspaces
        .iter()
        .find(|x| x.workspace_id == ws.workspace_id)
        .unwrap();
    assert!(
        info.claims
            .iter()
            .any(|c| c.client_id == rc.client_id() && c.connected),
        "{:?}",
        info.claims
    );
    // The handler answers on the new connection.
    let answer = rc
        .request::<request::DebugClientRequest>(crush_protocol::DebugClientRequestParams {
            method: "test/again".into(),
            params: json!({"n": 2}),
            timeout_ms: None,
        })
        .await
        .unwrap();
    assert_eq!(answer["answered"], "test/again");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A permission prompt whose connection drops before the caller answers is asked again on the
/// new connection, through the same handler; the answer given there lets the run finish.
#[tokio::test]
async fn a_permission_prompt_is_asked_again_after_a_reconnect() {
    let w = world("").await;
    let (asked_tx, mut asked) = mpsc::unbounded_channel::<Value>();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let handler: RequestHandler = Arc::new(move |method, params| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let _ = asked_tx.send(params);
        Box::pin(async move {
            assert_eq!(method, "permission/request");
            if n == 0 {
                std::future::pending::<()>().await;
            }
            Ok(json!({"decision": "allow"}))
        })
    });
    let rc = ReconnectingClient::connect(options(&w.proxy.path, Some(handler)), fast_policy())
        .await
        .unwrap();
    let mut events = rc.take_events().unwrap();
    let session = new_session(&rc, &w.project).await;
    subscribe(&rc, &session).await;
    w.mock.push(Script::text("Let me fix that.").tool_call(
        "call_1",
        "edit",
        r#"{"path":"hello.txt","old_string":"world","new_string":"crush"}"#,
    ));
    w.mock.push(Script::text("Done."));
    let run = send(&rc, &session, "fix it").await;

    let first = tokio::time::timeout(DEADLINE, asked.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first["runId"], run.as_str());
    assert_eq!(w.proxy.cut(), 1);
    let second = tokio::time::timeout(DEADLINE, asked.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second["requestId"], first["requestId"], "the same prompt");

    let mut seen = Seen::default();
    loop {
        let e = next(&mut events).await;
        seen.record(&run, &e);
        if !seen.outcomes_of(&run).is_empty() {
            break;
        }
    }
    let o = seen.outcomes_of(&run)[0];
    assert_eq!(o.state, "completed", "{o:?}");
    assert_eq!(o.text.as_deref(), Some("Done."));
    assert_eq!(
        std::fs::read_to_string(w.project.join("hello.txt")).unwrap(),
        "hello crush\n"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// Runs the caller follows without subscribing to their session — one it sent, one another
/// client sent — still end exactly once across a reconnect, and none of their session's events
/// is delivered.
#[tokio::test]
async fn runs_followed_without_a_subscription_end_once_across_a_reconnect() {
    let w = world("").await;
    let rc = ReconnectingClient::connect(options(&w.proxy.path, None), fast_policy())
        .await
        .unwrap();
    let mut events = rc.take_events().unwrap();
    let session = new_session(&rc, &w.project).await;
    let mut observer = RawConn::initialized(&w.env.socket).await;
    observer
        .request("session/subscribe", json!({"sessionId": session}))
        .await;

    // Ours: hangs after its text until cancelled.
    w.mock
        .push(Script::hanging(vec!["partial".into(), " text".into()]));
    let mine = send(&rc, &session, "hang").await;
    // (The daemon may merge the two deltas for a slow reader: wait for the text's end.)
    observer
        .wait_for("our run's text", |m| {
            m["params"]["kind"] == "textDelta"
                && m["params"]["text"]
                    .as_str()
                    .is_some_and(|t| t.ends_with(" text"))
        })
        .await;
    // Another client's, queued behind ours.
    let r = observer
        .request(
            "agent/send",
            json!({"sessionId": session, "prompt": "queued", "runId": "r-theirs"}),
        )
        .await;
    assert_eq!(r["result"]["state"], "queued", "{r}");
    let info = rc.watch_run("r-theirs").await.unwrap();
    assert_eq!(info.state, "queued");

    assert_eq!(w.proxy.cut(), 1);
    loop {
        if let ClientEvent::Reconnected(_) = next(&mut events).await {
            break;
        }
    }
    // Requests wait for the restore, so after this one the client is subscribed again.
    rc.request::<request::DaemonStatus>(NoParams).await.unwrap();
    let cancelled = rc
        .request::<request::AgentCancel>(AgentCancelParams {
            session_id: session.clone(),
            run_id: None,
        })
        .await
        .unwrap();
    assert_eq!(cancelled.cancelled.len(), 2, "{cancelled:?}");

    let mut outcomes: Vec<RunOutcome> = Vec::new();
    while outcomes.len() < 2 {
        match next(&mut events).await {
            ClientEvent::RunOutcome(o) => outcomes.push(o),
            ClientEvent::Update(u) => panic!("not subscribed, yet got {u:?}"),
            _ => {}
        }
    }
    // A last barrier: a watched run of a fresh send, which must come alone.
    w.mock.push(Script::text("after"));
    let last = send(&rc, &session, "after").await;
    loop {
        match next(&mut events).await {
            ClientEvent::RunOutcome(o) if o.run_id == last => break,
            ClientEvent::RunOutcome(o) => outcomes.push(o),
            ClientEvent::Update(u) => panic!("not subscribed, yet got {u:?}"),
            _ => {}
        }
    }
    let mut ids: Vec<&str> = outcomes.iter().map(|o| o.run_id.as_str()).collect();
    ids.sort_unstable();
    let mut want = vec![mine.as_str(), "r-theirs"];
    want.sort_unstable();
    assert_eq!(ids, want, "each exactly once: {outcomes:?}");
    for o in &outcomes {
        assert_eq!(o.state, "cancelled", "{o:?}");
        assert!(
            !o.recovered,
            "the run ended after the reconnect: its $/runComplete reached us live: {o:?}"
        );
    }
}

/// The daemon restarts while a run streams: the run ends `interrupted` (recovered from the new
/// daemon's database), the subscription resyncs with a new epoch, and the client opens its
/// workspace again since the new daemon never knew its claim.
#[tokio::test]
async fn a_daemon_restart_resyncs_and_reports_the_run_interrupted() {
    let env = TestEnv::new();
    let mock = MockLlm::start().await;
    env.use_model_at(&mock.base_url());
    let mut daemon = env.spawn_daemon(&[]);
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let rc = ReconnectingClient::connect(options(&env.socket, None), fast_policy())
        .await
        .unwrap();
    let mut events = rc.take_events().unwrap();
    let session = new_session(&rc, &project).await;
    subscribe(&rc, &session).await;
    let epoch = rc.server().epoch;
    mock.push(Script::hanging(vec!["never".into(), " finished".into()]));
    let run = send(&rc, &session, "hang").await;
    let mut seen = Seen::default();
    // (Deltas may be merged for a slow reader: wait for the text, not for a count.)
    while seen.text != "never finished" {
        let e = next(&mut events).await;
        seen.record(&run, &e);
    }
    daemon.signal(rustix::process::Signal::KILL);
    daemon.wait_exit(DEADLINE);
    let _daemon = env.spawn_daemon(&[]);

    let mut resync = None;
    let mut reconnected = None;
    loop {
        let e = next(&mut events).await;
        match &e {
            ClientEvent::Resync(r) => resync = Some(r.clone()),
            ClientEvent::Reconnected(r) => reconnected = Some(r.clone()),
            _ => {}
        }
        seen.record(&run, &e);
        if !seen.outcomes_of(&run).is_empty() {
            break;
        }
    }
    let r = reconnected.unwrap();
    assert!(r.epoch_changed && !r.resumed, "{r:?}");
    assert_ne!(rc.server().epoch, epoch);
    let s = resync.expect("the subscription resyncs after a restart");
    assert!(s.epoch_changed, "{s:?}");
    assert_eq!(s.epoch, rc.server().epoch);
    let o = seen.outcomes_of(&run);
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].state, "interrupted", "{:?}", o[0]);
    assert!(o[0].recovered);
    // The workspace was opened again for this client.
    let list = rc
        .request::<request::WorkspaceList>(NoParams)
        .await
        .unwrap();
    assert!(
        list.workspaces
            .iter()
            .any(|x| x.claims.iter().any(|c| c.client_id == rc.client_id())),
        "{list:?}"
    );
}

/// Following another client's run subscribes to its session underneath, which makes the daemon
/// send that session's pending prompts to this client too: they are not passed to the
/// caller's handler (it never subscribed to the session), and the subscriber's answer decides.
#[tokio::test]
async fn prompts_of_a_session_followed_only_for_a_run_are_left_to_its_subscribers() {
    let w = world("").await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    // Were it asked, it would deny at once, before the subscriber's allow.
    let handler: RequestHandler = Arc::new(move |_method, _params| {
        counter.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(json!({"decision": "deny"})) })
    });
    let rc = ReconnectingClient::connect(options(&w.proxy.path, Some(handler)), fast_policy())
        .await
        .unwrap();
    let mut events = rc.take_events().unwrap();
    let session = new_session(&rc, &w.project).await;
    let mut observer = RawConn::initialized(&w.env.socket).await;
    observer
        .request("session/subscribe", json!({"sessionId": session}))
        .await;
    w.mock.push(Script::text("Let me fix that.").tool_call(
        "call_1",
        "edit",
        r#"{"path":"hello.txt","old_string":"world","new_string":"crush"}"#,
    ));
    w.mock.push(Script::text("Done."));
    let r = observer
        .request(
            "agent/send",
            json!({"sessionId": session, "prompt": "fix it", "runId": "r-edit"}),
        )
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let ask = observer.daemon_request("permission/request").await;
    let info = rc.watch_run("r-edit").await.unwrap();
    assert_eq!(info.state, "running");
    rc.request::<request::DaemonStatus>(NoParams).await.unwrap();
    observer.reply(&ask, json!({"decision": "allow"})).await;

    let o = loop {
        match next(&mut events).await {
            ClientEvent::RunOutcome(o) => break o,
            ClientEvent::Update(u) => panic!("not subscribed, yet got {u:?}"),
            _ => {}
        }
    };
    assert_eq!(o.run_id, "r-edit");
    assert_eq!(o.state, "completed");
    assert!(!o.recovered);
    assert_eq!(
        std::fs::read_to_string(w.project.join("hello.txt")).unwrap(),
        "hello crush\n",
        "the subscriber's allow decided"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the caller was not asked");
}
