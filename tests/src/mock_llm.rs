//! A loopback mock of the OpenAI Chat Completions *streaming* API, for black-box tests and
//! benchmarks: a real HTTP/1.1 server on `127.0.0.1:0`, written directly on tokio, that answers
//! each `POST …/chat/completions` with the next scripted reply as Server-Sent Events.
//!
//! It owns the whole wire: request parsing (request line, headers, `Content-Length` or chunked
//! body), keep-alive (a pooling client sends several requests on one connection), and chunked
//! responses where every SSE event is its own HTTP chunk, written as soon as it is due. It also
//! watches the socket while it streams or waits, so a client that goes away is counted within
//! milliseconds — that is what cancellation tests assert on.
//!
//! State shared with the test (queued scripts, recorded requests, counters) sits behind a
//! `std::sync::Mutex`; every change wakes waiters through a `tokio::sync::Notify`, so nothing polls.
//! Dropping the [`MockLlm`] cancels the accept loop and every connection task.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BytesMut};
use futures::FutureExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Largest request head (request line plus headers) the mock accepts.
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body the mock accepts; long agent conversations are big, but not this big.
const MAX_BODY: usize = 64 * 1024 * 1024;
/// How much unread input may pile up while a response streams (pipelined requests) before the
/// mock gives up on the connection instead of buffering without bound.
const MAX_BUFFERED: usize = MAX_HEAD + MAX_BODY;

/// A running mock model server. Dropping it stops the server and closes its connections.
pub struct MockLlm {
    addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
}

impl MockLlm {
    /// Binds `127.0.0.1:0` and spawns the accept loop on the current tokio runtime.
    pub async fn start() -> MockLlm {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind the mock LLM on 127.0.0.1:0");
        let addr = listener.local_addr().expect("mock LLM local address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                default: Script::text("Hello from the mock."),
                requests: Vec::new(),
                disconnects: 0,
                completed: 0,
            }),
            changed: Notify::new(),
        });
        let cancel = CancellationToken::new();
        tokio::spawn(accept_loop(listener, shared.clone(), cancel.clone()));
        MockLlm {
            addr,
            shared,
            cancel,
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to give an OpenAI-compatible client: `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues a script; scripts are consumed first in, first out, one per completions request.
    pub fn push(&self, script: Script) {
        self.shared.update(|s| s.queue.push_back(script));
    }

    /// Sets the script used when the queue is empty (initially `Script::text("Hello from the mock.")`).
    pub fn set_default(&self, script: Script) {
        self.shared.update(|s| s.default = script);
    }

    /// Every completions request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Waits until at least `n` completions requests have arrived and returns all of them.
    ///
    /// # Panics
    /// When `deadline` passes first; the message lists what did arrive.
    pub async fn wait_requests(&self, n: usize, deadline: Duration) -> Vec<RecordedRequest> {
        let wait = self
            .shared
            .wait_until(|s| (s.requests.len() >= n).then(|| s.requests.clone()));
        match tokio::time::timeout(deadline, wait).await {
            Ok(requests) => requests,
            Err(_) => {
                let got = self.requests();
                let summary: Vec<String> = got
                    .iter()
                    .map(|r| format!("#{} {} {}", r.index, r.method, r.path))
                    .collect();
                panic!(
                    "MockLlm: waited {deadline:?} for {n} completions request(s) but {} arrived: {summary:?}",
                    got.len()
                );
            }
        }
    }

    /// How many streams the client closed before the mock finished writing them (hanging
    /// streams always end this way).
    pub fn disconnects(&self) -> usize {
        self.shared.lock().disconnects
    }

    /// Waits until at least `n` client disconnects have been counted.
    ///
    /// # Panics
    /// When `deadline` passes first.
    pub async fn wait_disconnects(&self, n: usize, deadline: Duration) {
        let wait = self
            .shared
            .wait_until(|s| (s.disconnects >= n).then_some(()));
        if tokio::time::timeout(deadline, wait).await.is_err() {
            let (disconnects, completed, requests) = {
                let s = self.shared.lock();
                (s.disconnects, s.completed, s.requests.len())
            };
            panic!(
                "MockLlm: waited {deadline:?} for {n} client disconnect(s) but counted {disconnects} \
                 ({requests} request(s) received, {completed} stream(s) completed)"
            );
        }
    }

    /// How many streams were written in full, up to and including `data: [DONE]`.
    pub fn completed(&self) -> usize {
        self.shared.lock().completed
    }
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// One completions request as the mock received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The HTTP method, e.g. `POST`.
    pub method: String,
    /// The request target as sent, e.g. `/v1/chat/completions`.
    pub path: String,
    /// Headers in the order received; names are lowercased.
    pub headers: Vec<(String, String)>,
    /// The JSON body, or `Value::Null` when the body was not JSON.
    pub body: Value,
    /// 0-based arrival order among completions requests.
    pub index: usize,
}

impl RecordedRequest {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `model` field of the body.
    pub fn model(&self) -> Option<&str> {
        self.body.get("model").and_then(Value::as_str)
    }

    /// `(role, content)` of every message. Content given as an array of parts is the
    /// concatenation of their `text` fields; a missing or null content is `""`.
    pub fn messages(&self) -> Vec<(String, String)> {
        let Some(messages) = self.body.get("messages").and_then(Value::as_array) else {
            return Vec::new();
        };
        messages
            .iter()
            .map(|m| {
                let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
                let content = match m.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect(),
                    _ => String::new(),
                };
                (role.to_owned(), content)
            })
            .collect()
    }
}

/// What the mock answers to one completions request.
#[derive(Debug, Clone)]
pub struct Script {
    /// Text deltas, one SSE event each (`delta.content`).
    pub chunks: Vec<String>,
    /// Reasoning deltas sent before the text, one event each (`delta.reasoning_content`).
    pub reasoning: Vec<String>,
    /// Delay between the response headers and the first event.
    pub first_chunk_delay: Duration,
    /// Delay between consecutive delta events (reasoning and text). The finish, usage and
    /// `[DONE]` events follow the last delta at once, as with the real API.
    pub chunk_delay: Duration,
    /// 200 streams; anything else answers that status with an OpenAI-style JSON error body
    /// (delays and `hang` apply to streams only).
    pub status: u16,
    /// The error message for a non-200 status.
    pub error_message: String,
    /// After the deltas, send nothing more and keep the connection open until the client
    /// disconnects (counted in [`MockLlm::disconnects`]).
    pub hang: bool,
    /// `finish_reason` of the final choice event: `"stop"` by default.
    pub finish_reason: String,
    /// `(prompt_tokens, completion_tokens)`, sent as a final event with empty `choices` and a
    /// `usage` object (whatever `stream_options` says) when `Some`.
    pub usage: Option<(u64, u64)>,
}

impl Default for Script {
    /// An empty successful stream: no deltas, `stop`, usage `(10, 0)`.
    fn default() -> Self {
        Script {
            chunks: Vec::new(),
            reasoning: Vec::new(),
            first_chunk_delay: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            status: 200,
            error_message: String::new(),
            hang: false,
            finish_reason: "stop".to_owned(),
            usage: Some((10, 0)),
        }
    }
}

impl Script {
    /// Streams `text` as word chunks that keep their leading spaces: `"a b c"` → `["a", " b", " c"]`.
    pub fn text(text: &str) -> Script {
        let mut chunks = Vec::new();
        let mut current = String::new();
        let mut has_word = false;
        for c in text.chars() {
            if c.is_whitespace() && has_word {
                chunks.push(std::mem::take(&mut current));
                has_word = false;
            }
            has_word |= !c.is_whitespace();
            current.push(c);
        }
        if !current.is_empty() {
            chunks.push(current);
        }
        Script::from_chunks(chunks)
    }

    /// Streams `n` chunks `"w0"`, `" w1"`, … (a 20-chunk reply is `Script::chunks(20)`).
    pub fn chunks(n: usize) -> Script {
        let chunks = (0..n)
            .map(|i| {
                if i == 0 {
                    "w0".to_owned()
                } else {
                    format!(" w{i}")
                }
            })
            .collect();
        Script::from_chunks(chunks)
    }

    /// Answers with HTTP `status` and `{"error":{"message":message,"type":"mock_error","code":null}}`.
    pub fn error(status: u16, message: &str) -> Script {
        Script {
            status,
            error_message: message.to_owned(),
            usage: None,
            ..Script::default()
        }
    }

    /// Streams `chunks`, then hangs until the client disconnects.
    pub fn hanging(chunks: Vec<String>) -> Script {
        Script {
            hang: true,
            ..Script::from_chunks(chunks)
        }
    }

    /// Sets the delay between the response headers and the first event.
    pub fn first_chunk_delay(self, d: Duration) -> Script {
        Script {
            first_chunk_delay: d,
            ..self
        }
    }

    /// Sets the delay between delta events.
    pub fn chunk_delay(self, d: Duration) -> Script {
        Script {
            chunk_delay: d,
            ..self
        }
    }

    /// Sends `r` as reasoning deltas before the text.
    pub fn with_reasoning(self, r: Vec<String>) -> Script {
        Script {
            reasoning: r,
            ..self
        }
    }

    /// Sets the final `finish_reason` (`"stop"`, `"length"`, …).
    pub fn finish_reason(self, r: &str) -> Script {
        Script {
            finish_reason: r.to_owned(),
            ..self
        }
    }

    /// Sets the reported token usage.
    pub fn usage(self, prompt: u64, completion: u64) -> Script {
        Script {
            usage: Some((prompt, completion)),
            ..self
        }
    }

    /// The text chunks concatenated: what a client should reassemble.
    pub fn full_text(&self) -> String {
        self.chunks.concat()
    }

    fn from_chunks(chunks: Vec<String>) -> Script {
        let n = chunks.len() as u64;
        Script {
            chunks,
            usage: Some((10, n)),
            ..Script::default()
        }
    }
}

struct Shared {
    state: Mutex<State>,
    changed: Notify,
}

struct State {
    queue: VecDeque<Script>,
    default: Script,
    requests: Vec<RecordedRequest>,
    disconnects: usize,
    completed: usize,
}

impl Shared {
    /// A panicking test thread must not make every later call panic too.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut self.lock());
        self.changed.notify_waiters();
        out
    }

    async fn wait_until<T>(&self, mut check: impl FnMut(&State) -> Option<T>) -> T {
        loop {
            // Registered before the check so a change between the check and the await is not lost.
            let mut notified = pin!(self.changed.notified());
            notified.as_mut().enable();
            if let Some(v) = check(&self.lock()) {
                return v;
            }
            notified.await;
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let conn = Connection {
                    stream,
                    buf: BytesMut::with_capacity(8 * 1024),
                    shared: shared.clone(),
                    cancel: cancel.clone(),
                };
                tokio::spawn(conn.run());
            }
            // Out of file descriptors and the like: back off instead of spinning.
            Err(_) => {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            }
        }
    }
}

/// Why a connection stops being served.
enum Stop {
    /// The client closed the connection (or it broke).
    Closed,
    /// The mock was dropped.
    Cancelled,
    /// The client sent more than the mock is willing to buffer.
    Overflow,
}

/// Why no request could be read; a `Bad` request is answered, then the connection closes.
enum ReadError {
    /// The connection ended or the mock was dropped: nothing more to answer.
    Gone,
    Bad(u16, String),
}

impl From<Stop> for ReadError {
    fn from(_: Stop) -> Self {
        ReadError::Gone
    }
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    keep_alive: bool,
}

struct Connection {
    stream: TcpStream,
    /// Bytes read from the socket and not consumed yet.
    buf: BytesMut,
    shared: Arc<Shared>,
    cancel: CancellationToken,
}

impl Connection {
    async fn run(mut self) {
        // Each SSE event must reach the client when written, not when Nagle decides.
        let _ = self.stream.set_nodelay(true);
        loop {
            let request = match self.read_request().await {
                Ok(Some(r)) => r,
                Ok(None) | Err(ReadError::Gone) => return,
                Err(ReadError::Bad(status, message)) => {
                    let body = error_body(&message, "invalid_request_error");
                    let _ = self.send_json(status, &body, false).await;
                    let _ = self.stream.shutdown().await;
                    return;
                }
            };
            let keep_alive = request.keep_alive;
            if self.respond(request).await.is_err() {
                return;
            }
            if !keep_alive {
                let _ = self.stream.shutdown().await;
                return;
            }
        }
    }

    /// Reads more bytes into `buf`.
    async fn fill(&mut self) -> Result<(), Stop> {
        if self.buf.len() > MAX_BUFFERED {
            return Err(Stop::Overflow);
        }
        tokio::select! {
            _ = self.cancel.cancelled() => Err(Stop::Cancelled),
            r = self.stream.read_buf(&mut self.buf) => match r {
                Ok(0) | Err(_) => Err(Stop::Closed),
                Ok(_) => Ok(()),
            },
        }
    }

    /// The next request, or `None` when the client closed an idle connection.
    async fn read_request(&mut self) -> Result<Option<Request>, ReadError> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(ReadError::Bad(431, "mock: request head too large".into()));
            }
            match self.fill().await {
                Ok(()) => {}
                Err(Stop::Closed) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        };
        let head = self.buf.split_to(head_end + 4);
        let head = std::str::from_utf8(&head[..head_end])
            .map_err(|_| ReadError::Bad(400, "mock: request head is not UTF-8".into()))?;
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let mut parts = request_line.split_whitespace();
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ReadError::Bad(
                400,
                format!("mock: malformed request line {request_line:?}"),
            ));
        };
        if !version.starts_with("HTTP/1.") {
            return Err(ReadError::Bad(
                505,
                format!("mock: unsupported version {version:?}"),
            ));
        }
        let mut headers = Vec::new();
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                return Err(ReadError::Bad(
                    400,
                    format!("mock: malformed header line {line:?}"),
                ));
            };
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_ascii_lowercase())
        };
        let connection = header("connection").unwrap_or_default();
        let keep_alive = if version == "HTTP/1.0" {
            connection.contains("keep-alive")
        } else {
            !connection.contains("close")
        };
        let chunked = header("transfer-encoding").is_some_and(|te| te.contains("chunked"));
        let length = match header("content-length") {
            _ if chunked => None,
            None => None,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n <= MAX_BODY => Some(n),
                Ok(_) => return Err(ReadError::Bad(413, "mock: request body too large".into())),
                Err(_) => {
                    return Err(ReadError::Bad(
                        400,
                        format!("mock: bad content-length {v:?}"),
                    ));
                }
            },
        };
        // curl asks before sending a large body; without this it stalls for a second.
        if header("expect").is_some_and(|e| e == "100-continue") {
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let body = if chunked {
            self.read_chunked_body().await?
        } else {
            let n = length.unwrap_or(0);
            while self.buf.len() < n {
                self.fill().await?;
            }
            self.buf.split_to(n).to_vec()
        };
        Ok(Some(Request {
            method: method.to_owned(),
            target: target.to_owned(),
            headers,
            body,
            keep_alive,
        }))
    }

    async fn read_line(&mut self) -> Result<String, ReadError> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = self.buf.split_to(i + 2);
                return Ok(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            if self.buf.len() > MAX_HEAD {
                return Err(ReadError::Bad(400, "mock: chunk line too long".into()));
            }
            self.fill().await?;
        }
    }

    async fn read_chunked_body(&mut self) -> Result<Vec<u8>, ReadError> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line().await?;
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| ReadError::Bad(400, format!("mock: bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.read_line().await?.is_empty() {}
                return Ok(body);
            }
            if body.len().saturating_add(size) > MAX_BODY {
                return Err(ReadError::Bad(413, "mock: request body too large".into()));
            }
            while self.buf.len() < size + 2 {
                self.fill().await?;
            }
            body.extend_from_slice(&self.buf[..size]);
            if &self.buf[size..size + 2] != b"\r\n" {
                return Err(ReadError::Bad(
                    400,
                    "mock: chunk not followed by CRLF".into(),
                ));
            }
            self.buf.advance(size + 2);
        }
    }

    /// Answers one request; `Err` means the connection must close.
    async fn respond(&mut self, request: Request) -> Result<(), Stop> {
        let keep_alive = request.keep_alive;
        let path = request.target.split('?').next().unwrap_or_default();
        if !path.ends_with("/chat/completions") {
            let message = format!("mock: no route for {} {}", request.method, request.target);
            return self
                .send_json(
                    404,
                    &error_body(&message, "invalid_request_error"),
                    keep_alive,
                )
                .await;
        }
        let parsed = serde_json::from_slice::<Value>(&request.body);
        let is_post = request.method == "POST";
        let (index, script) = self.shared.update(|s| {
            let index = s.requests.len();
            s.requests.push(RecordedRequest {
                method: request.method.clone(),
                path: request.target.clone(),
                headers: request.headers.clone(),
                body: parsed.as_ref().cloned().unwrap_or(Value::Null),
                index,
            });
            // Only a request the mock can answer consumes a script.
            let script = (is_post && parsed.is_ok())
                .then(|| s.queue.pop_front().unwrap_or_else(|| s.default.clone()));
            (index, script)
        });
        let Some(script) = script else {
            let (status, message) = match &parsed {
                _ if !is_post => (
                    405,
                    format!("mock: {} is not allowed, use POST", request.method),
                ),
                Err(e) => (400, format!("mock: request body is not JSON: {e}")),
                Ok(_) => (500, "mock: no script for this request".to_owned()),
            };
            let body = error_body(&message, "invalid_request_error");
            return self.send_json(status, &body, keep_alive).await;
        };
        if script.status != 200 {
            let error = error_body(&script.error_message, "mock_error");
            return self.send_json(script.status, &error, keep_alive).await;
        }
        let model = parsed
            .ok()
            .and_then(|b| b.get("model").cloned())
            .unwrap_or(Value::Null);
        self.stream(index, model, &script, keep_alive).await
    }

    /// Streams one scripted reply, counting how it ends.
    async fn stream(
        &mut self,
        index: usize,
        model: Value,
        script: &Script,
        keep_alive: bool,
    ) -> Result<(), Stop> {
        let result = self.stream_events(index, model, script, keep_alive).await;
        match result {
            Ok(()) => {}
            Err(Stop::Closed) => self.shared.update(|s| s.disconnects += 1),
            Err(Stop::Cancelled | Stop::Overflow) => {}
        }
        result
    }

    async fn stream_events(
        &mut self,
        index: usize,
        model: Value,
        script: &Script,
        keep_alive: bool,
    ) -> Result<(), Stop> {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
             Transfer-Encoding: chunked\r\nConnection: {}\r\n\r\n",
            if keep_alive { "keep-alive" } else { "close" }
        );
        self.send(head.as_bytes()).await?;
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let event = |choices: Value, usage: Option<Value>| {
            let mut chunk = json!({
                "id": format!("chatcmpl-mock-{index}"),
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
            });
            if let Some(usage) = usage {
                chunk["usage"] = usage;
            }
            chunk
        };
        let choice = |delta: Value, finish: Value| json!([{ "index": 0, "delta": delta, "finish_reason": finish }]);

        let mut deltas: Vec<Value> = script
            .reasoning
            .iter()
            .map(|r| json!({ "reasoning_content": r }))
            .chain(script.chunks.iter().map(|c| json!({ "content": c })))
            .collect();
        if deltas.is_empty() {
            // The role still arrives first, as with the real API.
            deltas.push(json!({ "content": "" }));
        }
        if let Some(first) = deltas.first_mut() {
            let mut with_role = json!({ "role": "assistant" });
            if let (Some(role), Some(rest)) = (with_role.as_object_mut(), first.as_object()) {
                role.extend(rest.clone());
            }
            *first = with_role;
        }

        self.watch(Some(Instant::now() + script.first_chunk_delay))
            .await?;
        for (i, delta) in deltas.into_iter().enumerate() {
            if i > 0 {
                self.watch(Some(Instant::now() + script.chunk_delay))
                    .await?;
            }
            self.send_event(&event(choice(delta, Value::Null), None))
                .await?;
        }
        if script.hang {
            return self.watch(None).await;
        }
        self.watch(Some(Instant::now())).await?;
        let finish = choice(json!({}), json!(script.finish_reason));
        self.send_event(&event(finish, None)).await?;
        if let Some((prompt, completion)) = script.usage {
            let usage = json!({
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt.saturating_add(completion),
            });
            self.send_event(&event(json!([]), Some(usage))).await?;
        }
        self.send(&http_chunk(b"data: [DONE]\n\n")).await?;
        // Counted before the terminating chunk so a client that saw the end of the body
        // already sees the count.
        self.shared.update(|s| s.completed += 1);
        self.send(b"0\r\n\r\n").await
    }

    /// Waits until `until` (forever when `None`) while watching the socket, so a client that
    /// closes the connection is noticed at once. Bytes that arrive meanwhile (a pipelined
    /// request) are kept for later.
    async fn watch(&mut self, until: Option<Instant>) -> Result<(), Stop> {
        if until.is_some_and(|t| t <= Instant::now()) {
            // Nothing to wait for, but a close that already arrived must still be seen.
            return match self.stream.read_buf(&mut self.buf).now_or_never() {
                None | Some(Ok(1..)) => Ok(()),
                Some(Ok(0) | Err(_)) => Err(Stop::Closed),
            };
        }
        let mut timer = pin!(async {
            match until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        });
        loop {
            if self.buf.len() > MAX_BUFFERED {
                return Err(Stop::Overflow);
            }
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return Err(Stop::Cancelled),
                r = self.stream.read_buf(&mut self.buf) => match r {
                    Ok(0) | Err(_) => return Err(Stop::Closed),
                    Ok(_) => {}
                },
                _ = &mut timer => return Ok(()),
            }
        }
    }

    async fn send_event(&mut self, event: &Value) -> Result<(), Stop> {
        self.send(&http_chunk(format!("data: {event}\n\n").as_bytes()))
            .await
    }

    async fn send_json(&mut self, status: u16, body: &Value, keep_alive: bool) -> Result<(), Stop> {
        let body = body.to_string();
        let response = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: {}\r\n\r\n{body}",
            reason(status),
            body.len(),
            if keep_alive { "keep-alive" } else { "close" }
        );
        self.send(response.as_bytes()).await
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), Stop> {
        tokio::select! {
            _ = self.cancel.cancelled() => Err(Stop::Cancelled),
            r = self.stream.write_all(bytes) => r.map_err(|_| Stop::Closed),
        }
    }
}

fn http_chunk(data: &[u8]) -> Vec<u8> {
    let mut chunk = format!("{:x}\r\n", data.len()).into_bytes();
    chunk.extend_from_slice(data);
    chunk.extend_from_slice(b"\r\n");
    chunk
}

fn error_body(message: &str, kind: &str) -> Value {
    json!({ "error": { "message": message, "type": kind, "code": null } })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Mock Status",
    }
}
