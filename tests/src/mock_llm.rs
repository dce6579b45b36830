//! A loopback mock of the streaming model APIs, for black-box tests and benchmarks: a real HTTP/1.1
//! server on `127.0.0.1:0`, written directly on tokio, that answers each `POST …/chat/completions`
//! (OpenAI Chat Completions) and each `POST …/messages` (Anthropic Messages) with the next scripted
//! reply as Server-Sent Events in that API's dialect. Both dialects share one queue of [`Script`]s.
//!
//! It owns the whole wire: request parsing (request line, headers, `Content-Length` or chunked
//! body), keep-alive (a pooling client sends several requests on one connection), and chunked
//! responses where every SSE event is its own HTTP chunk, written as soon as it is due. It also
//! watches the socket while it streams or waits, so a client that goes away is counted within
//! milliseconds — that is what cancellation tests assert on.
//!
//! A script can also misbehave the ways real servers do: tool calls streamed in several quirky
//! shapes ([`ToolStyle`]), error statuses with headers (`Retry-After`), and streams cut off
//! mid-body ([`Cut`]).
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
                streaming: 0,
                peak_streaming: 0,
                sent: Vec::new(),
                window: None,
                overflows: 0,
                force_overflows: 0,
                summaries: None,
                fail_summaries: false,
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

    /// Queues a script; scripts are consumed first in, first out, one per model request (either
    /// dialect).
    pub fn push(&self, script: Script) {
        self.shared.update(|s| s.queue.push_back(script));
    }

    /// Sets the script used when the queue is empty (initially `Script::text("Hello from the mock.")`).
    pub fn set_default(&self, script: Script) {
        self.shared.update(|s| s.default = script);
    }

    /// Enforces a context window like a real API: each request's prompt tokens
    /// ([`crate::mock_window`]) plus its output cap must fit `window`, else it is refused with
    /// the provider's real overflow answer (400) without consuming a script; a request that fits
    /// reports its counted prompt tokens as its usage.
    pub fn set_context_window(&self, window: Option<u64>) {
        self.shared.update(|s| s.window = window);
    }

    /// Answers every request that offers no tools — what the daemon sends to have older
    /// messages summarised — with a short summary of its own (`SUMMARY-<k>: …`, naming how
    /// many user messages it read and the start of the first), like a model would, without
    /// consuming a script. Such requests are marked [`RecordedRequest::summary`].
    pub fn answer_summaries(&self) {
        self.shared.update(|s| s.summaries = Some(0));
    }

    /// Like [`MockLlm::answer_summaries`], but every summary request is answered with an
    /// HTTP 500 error, as a failing provider would.
    pub fn fail_summaries(&self) {
        self.shared.update(|s| {
            s.summaries = Some(0);
            s.fail_summaries = true;
        });
    }

    /// How many requests were answered as summaries.
    pub fn summaries(&self) -> usize {
        self.shared.lock().summaries.unwrap_or(0)
    }

    /// Refuses the next `n` requests with the provider's overflow answer whatever their size.
    pub fn refuse_as_too_long(&self, n: usize) {
        self.shared.update(|s| s.force_overflows += n);
    }

    /// How many requests were refused as over the window.
    pub fn overflows(&self) -> usize {
        self.shared.lock().overflows
    }

    /// Every model request (either dialect) received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Waits until at least `n` model requests have arrived and returns all of them.
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
                    "MockLlm: waited {deadline:?} for {n} model request(s) but {} arrived: {summary:?}",
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

    /// The most replies that were streaming at the same time.
    pub fn peak_streams(&self) -> usize {
        self.shared.lock().peak_streaming
    }

    /// How many streams were written in full, up to and including `data: [DONE]` (OpenAI) or
    /// `message_stop` (Anthropic).
    pub fn completed(&self) -> usize {
        self.shared.lock().completed
    }

    /// Every text delta written so far, over all requests and both dialects, in the order written,
    /// each stamped when its bytes had been written to the socket. Reasoning, tool-call and
    /// structural events are not included.
    pub fn sent_deltas(&self) -> Vec<SentDelta> {
        self.shared.lock().sent.clone()
    }

    /// Forgets the text deltas recorded so far (between benchmark iterations).
    pub fn clear_sent(&self) {
        self.shared.lock().sent.clear();
    }
}

/// One text delta as the mock wrote it: see [`MockLlm::sent_deltas`].
#[derive(Debug, Clone)]
pub struct SentDelta {
    /// When the event's bytes had been written (and flushed) to the socket.
    pub at: std::time::Instant,
    /// The delta's text.
    pub text: String,
    /// The [`RecordedRequest::index`] of the request it answered.
    pub request: usize,
}

/// Which API a request spoke, by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI Chat Completions: a path ending in `/chat/completions`.
    OpenAi,
    /// Anthropic Messages: a path ending in `/messages`.
    Anthropic,
}

impl Dialect {
    /// The dialect served at request target `target` (query ignored), if any.
    fn of(target: &str) -> Option<Dialect> {
        let path = target.split('?').next().unwrap_or_default();
        if path.ends_with("/chat/completions") {
            Some(Dialect::OpenAi)
        } else if path.ends_with("/messages") {
            Some(Dialect::Anthropic)
        } else {
            None
        }
    }
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The mock's summary of a summary request: which one it is, how many user messages of the
/// conversation it was given (`User: ` lines of the daemon's transcript), and the first one's
/// start.
fn summary_of(request: &RecordedRequest, k: usize) -> String {
    let text: String = request
        .messages()
        .into_iter()
        .map(|(_, t)| t)
        .collect::<Vec<_>>()
        .join("\n");
    let users: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("User: "))
        .collect();
    let first: String = users
        .first()
        .map(|u| u.chars().take(60).collect())
        .unwrap_or_default();
    format!(
        "SUMMARY-{k}: the user sent {} messages here, the first began {first:?}.",
        users.len()
    )
}

/// One model request (either dialect) as the mock received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The HTTP method, e.g. `POST`.
    pub method: String,
    /// The request target as sent, e.g. `/v1/chat/completions` or `/v1/messages`.
    pub path: String,
    /// Headers in the order received; names are lowercased.
    pub headers: Vec<(String, String)>,
    /// The JSON body, or `Value::Null` when the body was not JSON.
    pub body: Value,
    /// 0-based arrival order among model requests (both dialects share the count).
    pub index: usize,
    /// Its prompt tokens, counted when the mock enforces a context window.
    pub tokens: Option<u64>,
    /// Answered as a summary request ([`MockLlm::answer_summaries`]).
    pub summary: bool,
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

    /// Which API the request spoke (by its path).
    pub fn dialect(&self) -> Dialect {
        Dialect::of(&self.path).unwrap_or(Dialect::OpenAi)
    }

    /// The parsed JSON body (`Value::Null` when it was not JSON).
    pub fn body(&self) -> &Value {
        &self.body
    }

    /// `(role, content)` of every entry of the body's `messages`; a missing or null content is `""`.
    ///
    /// OpenAI: one entry per message, in order (system messages included, tool results as role
    /// `"tool"`). Content given as an array of parts is the concatenation of their `text` fields.
    ///
    /// Anthropic: the top-level `system` is not a message (see [`RecordedRequest::system`]).
    /// String content is taken as is. In block content, each `tool_result` block becomes its own
    /// `("tool", its content text)` entry, and the `text` blocks are concatenated into one
    /// `(role, text)` entry that follows those tool entries; a message made only of tool results
    /// has no entry of its own. Other blocks (`tool_use`, `thinking`, images) add nothing.
    pub fn messages(&self) -> Vec<(String, String)> {
        let Some(messages) = self.body.get("messages").and_then(Value::as_array) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for m in messages {
            let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
            match (self.dialect(), m.get("content")) {
                (Dialect::Anthropic, Some(Value::Array(blocks))) => {
                    let mut text = String::new();
                    let mut tool_results = 0;
                    for block in blocks {
                        if block.get("type").and_then(Value::as_str) == Some("tool_result") {
                            out.push(("tool".to_owned(), content_text(block.get("content"))));
                            tool_results += 1;
                        } else if let Some(t) = block.get("text").and_then(Value::as_str) {
                            text.push_str(t);
                        }
                    }
                    if tool_results == 0 || !text.is_empty() {
                        out.push((role.to_owned(), text));
                    }
                }
                (_, content) => out.push((role.to_owned(), content_text(content))),
            }
        }
        out
    }

    /// The system prompt. OpenAI: the content text of the first message whose role is `system`
    /// (or `developer`). Anthropic: the top-level `system` field, a string or text blocks
    /// (concatenated).
    pub fn system(&self) -> Option<String> {
        match self.dialect() {
            Dialect::OpenAi => self
                .body
                .get("messages")
                .and_then(Value::as_array)?
                .iter()
                .find(|m| {
                    matches!(
                        m.get("role").and_then(Value::as_str),
                        Some("system" | "developer")
                    )
                })
                .map(|m| content_text(m.get("content"))),
            Dialect::Anthropic => self.body.get("system").map(|s| content_text(Some(s))),
        }
    }

    /// Every image in the request, in order, as `(where, mime type, base64 data)`: `where` is
    /// `"user"` for an image in a user message (OpenAI puts a step's tool images in one), or
    /// `"tool:<id>"` for one inside an Anthropic `tool_result` block. OpenAI images are `data:`
    /// URLs (`image_url`), Anthropic's `image` blocks with a base64 `source`.
    pub fn images(&self) -> Vec<(String, String, String)> {
        fn image(block: &Value) -> Option<(String, String)> {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            match block.get("type").and_then(Value::as_str)? {
                "image_url" => {
                    let url = block.get("image_url")?.get("url")?.as_str()?;
                    let (head, data) = url.strip_prefix("data:")?.split_once(',')?;
                    Some((head.trim_end_matches(";base64").to_owned(), data.to_owned()))
                }
                "image" => {
                    let src = block.get("source")?;
                    Some((s(&src["media_type"]), s(&src["data"])))
                }
                _ => None,
            }
        }
        let mut out = Vec::new();
        for m in self
            .body
            .get("messages")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for block in m
                .get("content")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some((mime, data)) = image(block) {
                    out.push(("user".to_owned(), mime, data));
                }
                if block.get("type").and_then(Value::as_str) == Some("tool_result") {
                    let id = block["tool_use_id"].as_str().unwrap_or_default();
                    for inner in block
                        .get("content")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if let Some((mime, data)) = image(inner) {
                            out.push((format!("tool:{id}"), mime, data));
                        }
                    }
                }
            }
        }
        out
    }

    /// Names of the tools offered in the request's `tools`, in order: `function.name` (OpenAI) or
    /// `name` (Anthropic).
    pub fn tool_names(&self) -> Vec<String> {
        let Some(tools) = self.body.get("tools").and_then(Value::as_array) else {
            return Vec::new();
        };
        tools
            .iter()
            .filter_map(|t| {
                t.get("function")
                    .and_then(|f| f.get("name"))
                    .or_else(|| t.get("name"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .collect()
    }

    /// `(tool_call_id, content text)` of every tool result sent back in the request, in order:
    /// OpenAI `role: "tool"` messages (`tool_call_id`), Anthropic `tool_result` blocks
    /// (`tool_use_id`). Content given as blocks is the concatenation of their `text` fields.
    pub fn tool_results(&self) -> Vec<(String, String)> {
        let Some(messages) = self.body.get("messages").and_then(Value::as_array) else {
            return Vec::new();
        };
        let id = |v: &Value, field: &str| {
            v.get(field)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let mut out = Vec::new();
        for m in messages {
            match self.dialect() {
                Dialect::OpenAi => {
                    if m.get("role").and_then(Value::as_str) == Some("tool") {
                        out.push((id(m, "tool_call_id"), content_text(m.get("content"))));
                    }
                }
                Dialect::Anthropic => {
                    let blocks = m.get("content").and_then(Value::as_array);
                    for block in blocks.into_iter().flatten() {
                        if block.get("type").and_then(Value::as_str) == Some("tool_result") {
                            out.push((
                                id(block, "tool_use_id"),
                                content_text(block.get("content")),
                            ));
                        }
                    }
                }
            }
        }
        out
    }
}

/// A content value as text: a string as is, an array as the concatenation of its parts' `text`
/// fields, anything else `""`.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// What the mock answers to one model request, in whichever dialect the request spoke.
///
/// OpenAI streams: reasoning deltas, text deltas, tool-call deltas, a finish event, a usage event,
/// `data: [DONE]`. Anthropic streams: `message_start`, a `thinking` block (reasoning, then a
/// signature), a `text` block, one `tool_use` block per tool call, `message_delta` (stop reason and
/// usage), `message_stop`.
#[derive(Debug, Clone)]
pub struct Script {
    /// Text deltas, one SSE event each (`delta.content` / `text_delta`).
    pub chunks: Vec<String>,
    /// Reasoning deltas sent before the text, one event each (`delta.reasoning_content` /
    /// `thinking_delta`).
    pub reasoning: Vec<String>,
    /// Tool calls sent after the text, in order (indices 0, 1, …).
    pub tool_calls: Vec<ToolCall>,
    /// How OpenAI tool-call deltas are shaped (Anthropic streams ignore it).
    pub tool_style: ToolStyle,
    /// Into how many argument pieces each tool call's arguments are split (at least 1; empty
    /// arguments give no piece).
    pub arg_pieces: usize,
    /// Delay between the response headers and the first event (Anthropic: between
    /// `message_start`, sent with the headers, and the first content event).
    pub first_chunk_delay: Duration,
    /// Delay between consecutive delta events (reasoning, text, tool-call pieces). The finish,
    /// usage and `[DONE]` events follow the last delta at once, as with the real API.
    pub chunk_delay: Duration,
    /// 200 streams; anything else answers that status with a JSON error body in the request's
    /// dialect (delays, `hang` and `cut` apply to streams only).
    pub status: u16,
    /// The error message for a non-200 status.
    pub error_message: String,
    /// Extra response headers, `(name, value)`, sent with the response whatever its status
    /// (e.g. `Retry-After` on a 429).
    pub headers: Vec<(String, String)>,
    /// After the deltas, send nothing more and keep the connection open until the client
    /// disconnects (counted in [`MockLlm::disconnects`]).
    pub hang: bool,
    /// End the stream early by closing the connection (takes precedence over `hang`).
    pub cut: Option<Cut>,
    /// After the deltas, wait until this token is cancelled (the test "opens the gate"), then
    /// finish normally. Lets a test hold a run mid-stream for as long as it needs.
    pub hold: Option<CancellationToken>,
    /// `finish_reason` of the final choice event. `None`: `"stop"`, or `"tool_calls"` when the
    /// script has tool calls. Anthropic's `stop_reason` is derived from it: `"stop"` →
    /// `end_turn`, `"tool_calls"` → `tool_use`, `"length"` → `max_tokens`, others as they are.
    pub finish_reason: Option<String>,
    /// `(prompt_tokens, completion_tokens)`, sent as a final event with empty `choices` and a
    /// `usage` object (whatever `stream_options` says) when `Some`. Anthropic streams always
    /// report usage (`input_tokens` in `message_start`, `output_tokens` in `message_delta`),
    /// zeros when `None`.
    pub usage: Option<(u64, u64)>,
    /// `(cached, reasoning)`: the parts of the prompt read from the cache and of the completion
    /// spent reasoning. OpenAI: `prompt_tokens_details.cached_tokens` and
    /// `completion_tokens_details.reasoning_tokens` (sent only when not zero); Anthropic:
    /// `cache_read_input_tokens`, with `input_tokens` the rest of the prompt (reasoning is not
    /// reported apart, as with the real API).
    pub usage_details: (u64, u64),
}

/// One scripted tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// The call id (`call_…` / `toolu_…`).
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments as JSON text, streamed in [`Script::arg_pieces`] pieces.
    pub arguments: String,
}

/// How OpenAI-dialect tool calls are streamed; every style reassembles to the same calls, except
/// that [`ToolStyle::MissingIds`] never sends the id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ToolStyle {
    /// As OpenAI does: a first delta with `index`, `id`, `type: "function"`, `function.name` and
    /// empty `arguments`, then deltas with only `index` and an `arguments` piece.
    #[default]
    Standard,
    /// One delta per call carrying `index`, `id`, `type`, `name` and the whole `arguments`.
    AllInFirst,
    /// As `Standard`, but no delta ever carries an `id` (some compatible servers send none; the
    /// client has to make one up).
    MissingIds,
    /// The first delta carries only `index` and `id`; the second brings `function.name` with the
    /// first `arguments` piece; then pieces as usual.
    NameLate,
}

/// Where a streamed reply is cut off: the mock closes the connection without the rest (no
/// finish, usage or `[DONE]`; no `message_delta`/`message_stop`), leaving a truncated chunked
/// body. Neither a disconnect nor a completion is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Right after the 200 response head, before any event.
    BeforeOutput,
    /// After this many delta events (reasoning, text, tool-call pieces, Anthropic's signature);
    /// `usize::MAX` for all of them. Structural events that follow the last delta sent
    /// (Anthropic's `content_block_stop`, the next `content_block_start`) still go out.
    AfterDeltas(usize),
}

impl Default for Script {
    /// An empty successful stream: no deltas, `stop`, usage `(10, 0)`.
    fn default() -> Self {
        Script {
            chunks: Vec::new(),
            reasoning: Vec::new(),
            tool_calls: Vec::new(),
            tool_style: ToolStyle::Standard,
            arg_pieces: 3,
            first_chunk_delay: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            status: 200,
            error_message: String::new(),
            headers: Vec::new(),
            hang: false,
            hold: None,
            cut: None,
            finish_reason: None,
            usage: Some((10, 0)),
            usage_details: (0, 0),
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

    /// Answers with HTTP `status` and, to OpenAI requests,
    /// `{"error":{"message":message,"type":"mock_error","code":null}}`; to Anthropic requests,
    /// `{"type":"error","error":{"type":…,"message":message}}` with the type Anthropic uses for
    /// that status (`authentication_error` for 401, `rate_limit_error` for 429,
    /// `overloaded_error` for 529, `api_error` for other 5xx, …).
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

    /// Holds the stream after its deltas until `gate` is cancelled.
    pub fn held(self, gate: CancellationToken) -> Script {
        Script {
            hold: Some(gate),
            ..self
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

    /// Sets the final `finish_reason` (`"stop"`, `"length"`, …), even when there are tool calls.
    pub fn finish_reason(self, r: &str) -> Script {
        Script {
            finish_reason: Some(r.to_owned()),
            ..self
        }
    }

    /// Adds a tool call after the text (call it again for parallel calls). Unless a finish
    /// reason is set explicitly, the reply now finishes with `"tool_calls"` (`tool_use`).
    pub fn tool_call(mut self, id: &str, name: &str, arguments_json: &str) -> Script {
        self.tool_calls.push(ToolCall {
            id: id.to_owned(),
            name: name.to_owned(),
            arguments: arguments_json.to_owned(),
        });
        self
    }

    /// Sets how OpenAI tool-call deltas are shaped.
    pub fn tool_style(self, style: ToolStyle) -> Script {
        Script {
            tool_style: style,
            ..self
        }
    }

    /// Splits each tool call's arguments into `n` pieces (at least 1; default 3).
    pub fn arg_pieces(self, n: usize) -> Script {
        Script {
            arg_pieces: n.max(1),
            ..self
        }
    }

    /// Adds a response header (e.g. `("Retry-After", "1")` on a 429).
    pub fn header(mut self, name: &str, value: &str) -> Script {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// After every delta, closes the connection without finishing the stream.
    pub fn cut(self) -> Script {
        self.cut_after(usize::MAX)
    }

    /// After `n` delta events (which may stop inside a tool call's arguments), closes the
    /// connection without finishing the stream.
    pub fn cut_after(self, n: usize) -> Script {
        Script {
            cut: Some(Cut::AfterDeltas(n)),
            ..self
        }
    }

    /// Sends the 200 response head, then closes the connection before any event.
    pub fn cut_before_output(self) -> Script {
        Script {
            cut: Some(Cut::BeforeOutput),
            ..self
        }
    }

    /// The OpenAI `finish_reason` the reply ends with.
    pub fn effective_finish_reason(&self) -> &str {
        match &self.finish_reason {
            Some(r) => r,
            None if self.tool_calls.is_empty() => "stop",
            None => "tool_calls",
        }
    }

    /// The Anthropic `stop_reason` the reply ends with.
    pub fn stop_reason(&self) -> &str {
        match self.effective_finish_reason() {
            "stop" => "end_turn",
            "tool_calls" => "tool_use",
            "length" => "max_tokens",
            other => other,
        }
    }

    /// A tool call's arguments in the pieces they are streamed as: `arg_pieces` pieces of
    /// near-equal length (fewer when there are fewer characters), none for empty arguments.
    fn pieces<'a>(&self, arguments: &'a str) -> Vec<&'a str> {
        let chars = arguments.chars().count();
        let n = self.arg_pieces.clamp(1, chars.max(1));
        let (base, extra) = (chars / n, chars % n);
        let mut pieces = Vec::with_capacity(n);
        let mut rest = arguments;
        for k in 0..n {
            let len = base + usize::from(k < extra);
            let end = rest.char_indices().nth(len).map_or(rest.len(), |(i, _)| i);
            let (piece, tail) = rest.split_at(end);
            if !piece.is_empty() {
                pieces.push(piece);
            }
            rest = tail;
        }
        pieces
    }

    /// Sets the reported token usage.
    pub fn usage(self, prompt: u64, completion: u64) -> Script {
        Script {
            usage: Some((prompt, completion)),
            ..self
        }
    }

    /// Sets the reported cached prompt tokens and reasoning tokens (see [`Script::usage_details`]).
    pub fn usage_details(self, cached: u64, reasoning: u64) -> Script {
        Script {
            usage_details: (cached, reasoning),
            ..self
        }
    }

    /// The text chunks concatenated: what a client should reassemble.
    pub fn full_text(&self) -> String {
        self.chunks.concat()
    }

    /// Streams exactly these text pieces.
    pub fn from_chunks(chunks: Vec<String>) -> Script {
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
    /// Streams being written now, and the most at once.
    streaming: usize,
    peak_streaming: usize,
    sent: Vec<SentDelta>,
    /// The context window enforced ([`MockLlm::set_context_window`]).
    window: Option<u64>,
    /// Requests refused as over the window.
    overflows: usize,
    /// The next requests to refuse as too long whatever their size.
    force_overflows: usize,
    /// Summaries written, when tool-less requests are answered as summary requests.
    summaries: Option<usize>,
    /// Summary requests get an error ([`MockLlm::fail_summaries`]).
    fail_summaries: bool,
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
    /// The script cut the stream off; the connection is closed on purpose.
    Cut,
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
                    let _ = self.send_json(status, &body, &[], false).await;
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
        let Some(dialect) = Dialect::of(&request.target) else {
            let message = format!("mock: no route for {} {}", request.method, request.target);
            return self
                .send_json(
                    404,
                    &error_body(&message, "invalid_request_error"),
                    &[],
                    keep_alive,
                )
                .await;
        };
        let parsed = serde_json::from_slice::<Value>(&request.body);
        let is_post = request.method == "POST";
        let (index, script, overflow) = self.shared.update(|s| {
            let index = s.requests.len();
            let tokens = match (&parsed, s.window) {
                (Ok(body), Some(_)) => Some(match dialect {
                    Dialect::OpenAi => crate::mock_window::count_openai(body),
                    Dialect::Anthropic => crate::mock_window::count_anthropic(body),
                }),
                _ => None,
            };
            let summary = s.summaries.is_some()
                && parsed.as_ref().is_ok_and(|b| {
                    b.get("tools")
                        .and_then(Value::as_array)
                        .is_none_or(Vec::is_empty)
                });
            s.requests.push(RecordedRequest {
                method: request.method.clone(),
                path: request.target.clone(),
                headers: request.headers.clone(),
                body: parsed.as_ref().cloned().unwrap_or(Value::Null),
                index,
                tokens,
                summary,
            });
            let cap = parsed.as_ref().map_or(0, crate::mock_window::max_output);
            let over = match (tokens, s.window) {
                (Some(t), Some(w)) if t + cap > w => Some((w, t)),
                _ if s.force_overflows > 0 && is_post => {
                    s.force_overflows -= 1;
                    Some((s.window.unwrap_or(0), tokens.unwrap_or(0)))
                }
                _ => None,
            };
            if over.is_some() {
                s.overflows += 1;
                return (index, None, over);
            }
            // Only a request the mock can answer consumes a script.
            let script = (is_post && parsed.is_ok()).then(|| {
                let mut script = if summary {
                    let k = s.summaries.unwrap_or(0) + 1;
                    s.summaries = Some(k);
                    if s.fail_summaries {
                        Script::error(500, "mock: the summary failed")
                    } else {
                        Script::text(&summary_of(&s.requests[index], k))
                    }
                } else {
                    s.queue.pop_front().unwrap_or_else(|| s.default.clone())
                };
                if let Some(t) = tokens {
                    script.usage = Some((t, script.usage.map_or(0, |u| u.1)));
                }
                script
            });
            (index, script, None)
        });
        if let Some((window, tokens)) = overflow {
            let body = match dialect {
                Dialect::OpenAi => crate::mock_window::openai_overflow(window, tokens),
                Dialect::Anthropic => crate::mock_window::anthropic_overflow(window, tokens),
            };
            return self.send_json(400, &body, &[], keep_alive).await;
        }
        let Some(script) = script else {
            let (status, message) = match &parsed {
                _ if !is_post => (
                    405,
                    format!("mock: {} is not allowed, use POST", request.method),
                ),
                Err(e) => (400, format!("mock: request body is not JSON: {e}")),
                Ok(_) => (500, "mock: no script for this request".to_owned()),
            };
            let body = match dialect {
                Dialect::OpenAi => error_body(&message, "invalid_request_error"),
                Dialect::Anthropic => anthropic_error_body(status, &message),
            };
            return self.send_json(status, &body, &[], keep_alive).await;
        };
        if script.status != 200 {
            let error = match dialect {
                Dialect::OpenAi => error_body(&script.error_message, "mock_error"),
                Dialect::Anthropic => anthropic_error_body(script.status, &script.error_message),
            };
            return self
                .send_json(script.status, &error, &script.headers, keep_alive)
                .await;
        }
        let model = parsed
            .ok()
            .and_then(|b| b.get("model").cloned())
            .unwrap_or(Value::Null);
        let plan = match dialect {
            Dialect::OpenAi => openai_plan(index, model, &script),
            Dialect::Anthropic => anthropic_plan(index, model, &script),
        };
        self.stream(index, plan, &script, keep_alive).await
    }

    /// Streams one scripted reply, counting how it ends.
    async fn stream(
        &mut self,
        index: usize,
        plan: Plan,
        script: &Script,
        keep_alive: bool,
    ) -> Result<(), Stop> {
        self.shared.update(|s| {
            s.streaming += 1;
            s.peak_streaming = s.peak_streaming.max(s.streaming);
        });
        let mut ended = false;
        let result = self
            .stream_events(index, plan, script, keep_alive, &mut ended)
            .await;
        if !ended {
            self.shared.update(|s| s.streaming -= 1);
        }
        match result {
            Ok(()) => {}
            Err(Stop::Closed) => self.shared.update(|s| s.disconnects += 1),
            Err(Stop::Cancelled | Stop::Overflow | Stop::Cut) => {}
        }
        result
    }

    async fn stream_events(
        &mut self,
        index: usize,
        plan: Plan,
        script: &Script,
        keep_alive: bool,
        ended: &mut bool,
    ) -> Result<(), Stop> {
        let mut head = String::from(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
             Transfer-Encoding: chunked\r\n",
        );
        push_headers(&mut head, &script.headers, keep_alive);
        self.send(head.as_bytes()).await?;
        let limit = match script.cut {
            Some(Cut::BeforeOutput) => return self.cut().await,
            Some(Cut::AfterDeltas(n)) => Some(n),
            None => None,
        };
        for frame in &plan.prelude {
            self.send(frame).await?;
        }
        self.watch(Some(Instant::now() + script.first_chunk_delay))
            .await?;
        let mut deltas = 0;
        for event in plan.body {
            match event {
                Event::Frame(bytes) => self.send(&bytes).await?,
                Event::Delta { bytes, text } => {
                    if limit == Some(deltas) {
                        return self.cut().await;
                    }
                    if deltas > 0 {
                        self.watch(Some(Instant::now() + script.chunk_delay))
                            .await?;
                    }
                    self.send(&bytes).await?;
                    if let Some(text) = text {
                        // TcpStream does not buffer: once written, the bytes are with the kernel.
                        let at = std::time::Instant::now();
                        let sent = SentDelta {
                            at,
                            text,
                            request: index,
                        };
                        // No waiter watches this, so no notification: just the push.
                        self.shared.lock().sent.push(sent);
                    }
                    deltas += 1;
                }
            }
        }
        if limit.is_some() {
            return self.cut().await;
        }
        if let Some(gate) = script.hold.clone() {
            tokio::select! {
                _ = gate.cancelled() => {}
                r = self.watch(None) => return r,
            }
        }
        if script.hang {
            return self.watch(None).await;
        }
        self.watch(Some(Instant::now())).await?;
        // No longer streaming once the end is about to be written: a client that read it may
        // start its next request before this task runs again.
        *ended = true;
        self.shared.update(|s| s.streaming -= 1);
        for frame in &plan.tail {
            self.send(frame).await?;
        }
        // Counted before the terminating chunk so a client that saw the end of the body
        // already sees the count.
        self.shared.update(|s| s.completed += 1);
        self.send(b"0\r\n\r\n").await
    }

    /// Ends a response abruptly: whatever was written stays written, then the connection closes
    /// without the terminating chunk.
    async fn cut(&mut self) -> Result<(), Stop> {
        let _ = self.stream.flush().await;
        let _ = self.stream.shutdown().await;
        Err(Stop::Cut)
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

    async fn send_json(
        &mut self,
        status: u16,
        body: &Value,
        headers: &[(String, String)],
        keep_alive: bool,
    ) -> Result<(), Stop> {
        let body = body.to_string();
        let mut response = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            reason(status),
            body.len(),
        );
        push_headers(&mut response, headers, keep_alive);
        response.push_str(&body);
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

/// The rest of a response head: extra headers, `Connection`, and the blank line.
fn push_headers(head: &mut String, headers: &[(String, String)], keep_alive: bool) {
    for (name, value) in headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
}

fn error_body(message: &str, kind: &str) -> Value {
    json!({ "error": { "message": message, "type": kind, "code": null } })
}

/// Anthropic's error body, with the error type the real API uses for `status`.
fn anthropic_error_body(status: u16, message: &str) -> Value {
    let kind = match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    };
    json!({ "type": "error", "error": { "type": kind, "message": message } })
}

/// A streamed reply laid out in advance; [`Connection::stream_events`] decides when each part
/// goes out (delays, hang, cut).
struct Plan {
    /// Sent with the response head, before the first delay (Anthropic's `message_start`).
    prelude: Vec<Vec<u8>>,
    /// Deltas, and the structural events between them.
    body: Vec<Event>,
    /// Sent at once after the last delta: finish and usage, `[DONE]` / `message_stop`.
    tail: Vec<Vec<u8>>,
}

/// One HTTP chunk of a [`Plan`]'s body.
enum Event {
    /// A structural event, sent right after what precedes it.
    Frame(Vec<u8>),
    /// A delta event: preceded by the chunk delay, counted for [`Cut::AfterDeltas`], recorded in
    /// [`MockLlm::sent_deltas`] when it carries `text`.
    Delta {
        bytes: Vec<u8>,
        text: Option<String>,
    },
}

/// An OpenAI SSE event (`data: …`) as one HTTP chunk.
fn openai_chunk(data: &Value) -> Vec<u8> {
    http_chunk(format!("data: {data}\n\n").as_bytes())
}

/// An Anthropic SSE event (`event: type` then `data: …`) as one HTTP chunk.
fn anthropic_chunk(data: &Value) -> Vec<u8> {
    let kind = data.get("type").and_then(Value::as_str).unwrap_or_default();
    http_chunk(format!("event: {kind}\ndata: {data}\n\n").as_bytes())
}

/// The OpenAI Chat Completions stream for `script`: reasoning, text, then tool-call deltas (the
/// first delta also carries the role), then the finish event, the usage event and `[DONE]`.
fn openai_plan(index: usize, model: Value, script: &Script) -> Plan {
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

    // (delta, text to record)
    let mut deltas: Vec<(Value, Option<String>)> = script
        .reasoning
        .iter()
        .map(|r| (json!({ "reasoning_content": r }), None))
        .chain(
            script
                .chunks
                .iter()
                .map(|c| (json!({ "content": c }), Some(c.clone()))),
        )
        .collect();
    for (i, call) in script.tool_calls.iter().enumerate() {
        let tool = |fields: Value| json!({ "tool_calls": [fields] });
        let pieces = script.pieces(&call.arguments);
        match script.tool_style {
            ToolStyle::AllInFirst => deltas.push((
                tool(json!({
                    "index": i,
                    "id": call.id,
                    "type": "function",
                    "function": { "name": call.name, "arguments": call.arguments },
                })),
                None,
            )),
            ToolStyle::Standard | ToolStyle::MissingIds => {
                let mut first = json!({
                    "index": i,
                    "type": "function",
                    "function": { "name": call.name, "arguments": "" },
                });
                if script.tool_style == ToolStyle::Standard {
                    first["id"] = json!(call.id);
                }
                deltas.push((tool(first), None));
                for piece in pieces {
                    let piece = json!({ "index": i, "function": { "arguments": piece } });
                    deltas.push((tool(piece), None));
                }
            }
            ToolStyle::NameLate => {
                deltas.push((tool(json!({ "index": i, "id": call.id })), None));
                let (first, rest) = pieces.split_first().map_or(("", &[][..]), |(f, r)| (*f, r));
                let named = json!({
                    "index": i,
                    "type": "function",
                    "function": { "name": call.name, "arguments": first },
                });
                deltas.push((tool(named), None));
                for piece in rest {
                    let piece = json!({ "index": i, "function": { "arguments": piece } });
                    deltas.push((tool(piece), None));
                }
            }
        }
    }
    if deltas.is_empty() {
        // The role still arrives first, as with the real API.
        deltas.push((json!({ "content": "" }), None));
    }
    if let Some((first, _)) = deltas.first_mut() {
        let mut with_role = json!({ "role": "assistant" });
        if let (Some(role), Some(rest)) = (with_role.as_object_mut(), first.as_object()) {
            role.extend(rest.clone());
        }
        *first = with_role;
    }
    let body = deltas
        .into_iter()
        .map(|(delta, text)| Event::Delta {
            bytes: openai_chunk(&event(choice(delta, Value::Null), None)),
            text,
        })
        .collect();

    let mut tail = Vec::new();
    let finish = choice(json!({}), json!(script.effective_finish_reason()));
    tail.push(openai_chunk(&event(finish, None)));
    if let Some((prompt, completion)) = script.usage {
        let mut usage = json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt.saturating_add(completion),
        });
        let (cached, reasoning) = script.usage_details;
        if cached > 0 {
            usage["prompt_tokens_details"] = json!({ "cached_tokens": cached });
        }
        if reasoning > 0 {
            usage["completion_tokens_details"] = json!({ "reasoning_tokens": reasoning });
        }
        tail.push(openai_chunk(&event(json!([]), Some(usage))));
    }
    tail.push(http_chunk(b"data: [DONE]\n\n"));
    Plan {
        prelude: Vec::new(),
        body,
        tail,
    }
}

/// The signature the mock puts on every thinking block.
pub const MOCK_SIGNATURE: &str = "sig-mock";

/// The Anthropic Messages stream for `script`: `message_start`; a `thinking` block (reasoning,
/// then a `signature_delta`) when there is reasoning; a `text` block when there is text (or when
/// there would be no block at all); a `tool_use` block per tool call; `message_delta`,
/// `message_stop`. One `ping` follows the first `content_block_start`.
fn anthropic_plan(index: usize, model: Value, script: &Script) -> Plan {
    let (prompt_tokens, output_tokens) = script.usage.unwrap_or((0, 0));
    let cached = script.usage_details.0.min(prompt_tokens);
    let input_tokens = prompt_tokens - cached;
    let start = json!({
        "type": "message_start",
        "message": {
            "id": format!("msg_mock_{index}"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            // The real API reports a token or so here; the final count is in message_delta.
            "usage": if cached > 0 {
                json!({ "input_tokens": input_tokens, "cache_read_input_tokens": cached,
                        "output_tokens": output_tokens.min(1) })
            } else {
                json!({ "input_tokens": input_tokens, "output_tokens": output_tokens.min(1) })
            },
        },
    });

    let mut body = Vec::new();
    let mut block = 0;
    let mut open = |body: &mut Vec<Event>, content_block: Value| {
        let start = json!({ "type": "content_block_start", "index": block, "content_block": content_block });
        body.push(Event::Frame(anthropic_chunk(&start)));
        if block == 0 {
            body.push(Event::Frame(anthropic_chunk(&json!({ "type": "ping" }))));
        }
        block += 1;
        block - 1
    };
    let delta = |index: usize, delta: Value, text: Option<String>| Event::Delta {
        bytes: anthropic_chunk(
            &json!({ "type": "content_block_delta", "index": index, "delta": delta }),
        ),
        text,
    };
    let stop = |index: usize| {
        Event::Frame(anthropic_chunk(
            &json!({ "type": "content_block_stop", "index": index }),
        ))
    };

    if !script.reasoning.is_empty() {
        let i = open(&mut body, json!({ "type": "thinking", "thinking": "" }));
        for r in &script.reasoning {
            body.push(delta(
                i,
                json!({ "type": "thinking_delta", "thinking": r }),
                None,
            ));
        }
        let signature = json!({ "type": "signature_delta", "signature": MOCK_SIGNATURE });
        body.push(delta(i, signature, None));
        body.push(stop(i));
    }
    if !script.chunks.is_empty() || (script.reasoning.is_empty() && script.tool_calls.is_empty()) {
        let i = open(&mut body, json!({ "type": "text", "text": "" }));
        for c in &script.chunks {
            body.push(delta(
                i,
                json!({ "type": "text_delta", "text": c }),
                Some(c.clone()),
            ));
        }
        body.push(stop(i));
    }
    for call in &script.tool_calls {
        let i = open(
            &mut body,
            json!({ "type": "tool_use", "id": call.id, "name": call.name, "input": {} }),
        );
        for piece in script.pieces(&call.arguments) {
            body.push(delta(
                i,
                json!({ "type": "input_json_delta", "partial_json": piece }),
                None,
            ));
        }
        body.push(stop(i));
    }

    let message_delta = json!({
        "type": "message_delta",
        "delta": { "stop_reason": script.stop_reason(), "stop_sequence": null },
        "usage": { "output_tokens": output_tokens },
    });
    Plan {
        prelude: vec![anthropic_chunk(&start)],
        body,
        tail: vec![
            anthropic_chunk(&message_delta),
            anthropic_chunk(&json!({ "type": "message_stop" })),
        ],
    }
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
        529 => "Overloaded",
        _ => "Mock Status",
    }
}
