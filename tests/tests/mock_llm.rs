//! Tests of the mock model server itself, spoken to in raw HTTP/1.1 over a real TCP connection so
//! that framing (one SSE event per HTTP chunk), keep-alive and disconnects are what is asserted,
//! and with reqwest (a real HTTP client, as the daemon uses) for the dialects, tool calls, error
//! headers and cut streams.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crush_tests::DEADLINE;
use crush_tests::mock_llm::{Cut, Dialect, MOCK_SIGNATURE, MockLlm, Script, ToolCall, ToolStyle};

/// A minimal HTTP/1.1 client that keeps one connection and exposes the chunks of a response.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A whole streamed reply: each HTTP chunk as text, in order (the terminating empty chunk excluded).
struct Streamed {
    head: Head,
    chunks: Vec<String>,
}

impl Streamed {
    /// The JSON payloads of every event before `[DONE]`.
    fn events(&self) -> Vec<Value> {
        self.chunks
            .iter()
            .take_while(|c| c.as_str() != "data: [DONE]\n\n")
            .map(|c| {
                let data = c
                    .strip_prefix("data: ")
                    .expect("event starts with `data: `");
                let data = data
                    .strip_suffix("\n\n")
                    .expect("event ends with a blank line");
                serde_json::from_str(data).expect("event data is JSON")
            })
            .collect()
    }

    fn text(&self) -> String {
        self.delta_field("content")
    }

    fn delta_field(&self, field: &str) -> String {
        self.events()
            .iter()
            .filter_map(|e| e["choices"][0]["delta"][field].as_str().map(str::to_owned))
            .collect()
    }
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = within(TcpStream::connect(addr)).await.expect("connect");
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, method: &str, path: &str, body: &[u8]) {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer sk-mock\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        within(self.stream.write_all(&request))
            .await
            .expect("send request");
    }

    async fn post(&mut self, body: &Value) {
        self.send("POST", "/v1/chat/completions", body.to_string().as_bytes())
            .await;
    }

    /// Reads until `buf` holds `n` bytes; false when the server closed first.
    async fn fill_to(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            let mut more = [0u8; 4096];
            let read = within(self.stream.read(&mut more))
                .await
                .expect("read response");
            if read == 0 {
                return false;
            }
            self.buf.extend_from_slice(&more[..read]);
        }
        true
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).collect();
                return String::from_utf8(line[..i].to_vec()).expect("UTF-8 line");
            }
            let want = self.buf.len() + 1;
            assert!(self.fill_to(want).await, "server closed mid-line");
        }
    }

    async fn head(&mut self) -> Head {
        let status_line = self.line().await;
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(
            parts.next(),
            Some("HTTP/1.1"),
            "status line {status_line:?}"
        );
        let status = parts.next().unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                return Head { status, headers };
            }
            let (name, value) = line.split_once(':').expect("header line");
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }

    /// One HTTP chunk's data; empty for the terminating chunk.
    async fn chunk(&mut self) -> String {
        let size = usize::from_str_radix(self.line().await.trim(), 16).expect("chunk size");
        assert!(self.fill_to(size + 2).await, "server closed mid-chunk");
        let data: Vec<u8> = self.buf.drain(..size + 2).collect();
        assert_eq!(&data[size..], b"\r\n", "chunk ends with CRLF");
        String::from_utf8(data[..size].to_vec()).expect("UTF-8 chunk")
    }

    async fn body(&mut self, head: &Head) -> Value {
        let n: usize = head.header("content-length").unwrap().parse().unwrap();
        assert!(self.fill_to(n).await, "server closed mid-body");
        let body: Vec<u8> = self.buf.drain(..n).collect();
        serde_json::from_slice(&body).expect("JSON body")
    }

    /// Reads a whole streamed response.
    async fn streamed(&mut self) -> Streamed {
        let head = self.head().await;
        assert_eq!(head.status, 200);
        assert_eq!(head.header("content-type"), Some("text/event-stream"));
        assert_eq!(head.header("transfer-encoding"), Some("chunked"));
        let mut chunks = Vec::new();
        loop {
            let chunk = self.chunk().await;
            if chunk.is_empty() {
                return Streamed { head, chunks };
            }
            chunks.push(chunk);
        }
    }
}

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(DEADLINE, f)
        .await
        .expect("no answer from the mock within the deadline")
}

fn completion_request(model: &str, prompt: &str) -> Value {
    json!({
        "model": model,
        "messages": [
            { "role": "system", "content": "You are terse." },
            { "role": "user", "content": [{ "type": "text", "text": prompt }] },
        ],
        "stream": true,
        "stream_options": { "include_usage": true },
    })
}

#[test]
fn scripts_split_text_into_word_chunks() {
    assert_eq!(Script::text("a b c").chunks, ["a", " b", " c"]);
    assert_eq!(Script::text("a  b ").chunks, ["a", "  b", " "]);
    assert!(Script::text("").chunks.is_empty());
    let twenty = Script::chunks(20);
    assert_eq!(twenty.chunks.len(), 20);
    assert_eq!(&twenty.chunks[..2], ["w0", " w1"]);
    assert_eq!(twenty.usage, Some((10, 20)));
    assert_eq!(Script::text("x y").full_text(), "x y");
}

#[tokio::test]
async fn streamed_reply_decodes_to_text_finish_reason_and_usage() {
    let mock = MockLlm::start().await;
    assert_eq!(
        mock.base_url(),
        format!("http://127.0.0.1:{}/v1", mock.addr().port())
    );
    let script = Script::text("The quick brown fox")
        .finish_reason("length")
        .usage(42, 4);
    mock.push(script.clone());

    let mut client = Client::connect(mock.addr()).await;
    client.post(&completion_request("gpt-mock", "hi")).await;
    let reply = client.streamed().await;

    // One SSE event per chunk: 4 words, finish, usage, then [DONE].
    assert_eq!(reply.chunks.len(), 4 + 3, "{:?}", reply.chunks);
    assert_eq!(reply.chunks.last().unwrap(), "data: [DONE]\n\n");
    assert_eq!(reply.head.header("connection"), Some("keep-alive"));
    assert_eq!(reply.text(), script.full_text());
    let events = reply.events();
    for event in &events {
        assert_eq!(event["id"], "chatcmpl-mock-0");
        assert_eq!(event["object"], "chat.completion.chunk");
        assert_eq!(event["model"], "gpt-mock");
        assert!(event["created"].as_u64().unwrap() > 0);
    }
    let roles: Vec<&Value> = events
        .iter()
        .map(|e| &e["choices"][0]["delta"]["role"])
        .collect();
    assert_eq!(roles[0], "assistant");
    assert!(roles[1..].iter().all(|r| r.is_null()), "{roles:?}");
    let finish = &events[4]["choices"][0];
    assert_eq!(finish["delta"], json!({}));
    assert_eq!(finish["finish_reason"], "length");
    assert!(
        events[..4]
            .iter()
            .all(|e| e["choices"][0]["finish_reason"].is_null())
    );
    assert_eq!(events[5]["choices"], json!([]));
    assert_eq!(
        events[5]["usage"],
        json!({ "prompt_tokens": 42, "completion_tokens": 4, "total_tokens": 46 })
    );

    let requests = mock.wait_requests(1, DEADLINE).await;
    let request = &requests[0];
    assert_eq!(request.index, 0);
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(request.header("Authorization"), Some("Bearer sk-mock"));
    assert_eq!(request.model(), Some("gpt-mock"));
    assert_eq!(request.body["stream"], true);
    assert_eq!(
        request.messages(),
        [
            ("system".to_owned(), "You are terse.".to_owned()),
            ("user".to_owned(), "hi".to_owned()),
        ]
    );
    assert_eq!(mock.completed(), 1);
    assert_eq!(mock.disconnects(), 0);
}

#[tokio::test]
async fn reasoning_deltas_come_before_the_text() {
    let mock = MockLlm::start().await;
    mock.push(Script::text("42").with_reasoning(vec!["Let me".into(), " think.".into()]));
    let mut client = Client::connect(mock.addr()).await;
    client.post(&completion_request("m", "q")).await;
    let reply = client.streamed().await;
    let events = reply.events();
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(
        events[0]["choices"][0]["delta"]["reasoning_content"],
        "Let me"
    );
    assert_eq!(events[2]["choices"][0]["delta"]["content"], "42");
    assert_eq!(reply.delta_field("reasoning_content"), "Let me think.");
    assert_eq!(reply.text(), "42");
}

#[tokio::test]
async fn two_requests_share_one_keep_alive_connection() {
    let mock = MockLlm::start().await;
    mock.push(Script::text("first reply"));
    mock.push(Script::chunks(20).chunk_delay(Duration::from_millis(1)));
    let mut client = Client::connect(mock.addr()).await;

    client.post(&completion_request("m", "one")).await;
    let first = client.streamed().await;
    client.post(&completion_request("m", "two")).await;
    let second = client.streamed().await;

    assert_eq!(first.text(), "first reply");
    assert_eq!(second.text(), Script::chunks(20).full_text());
    assert_eq!(second.events()[0]["id"], "chatcmpl-mock-1");
    let requests = mock.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].index, 1);
    assert_eq!(requests[1].messages()[1].1, "two");
    assert_eq!(mock.completed(), 2);
}

#[tokio::test]
async fn scripted_error_status_returns_an_openai_style_json_error() {
    let mock = MockLlm::start().await;
    mock.push(Script::error(429, "Rate limit reached"));
    let mut client = Client::connect(mock.addr()).await;

    client.post(&completion_request("m", "q")).await;
    let head = client.head().await;
    assert_eq!(head.status, 429);
    assert_eq!(head.header("content-type"), Some("application/json"));
    let body = client.body(&head).await;
    assert_eq!(
        body,
        json!({ "error": { "message": "Rate limit reached", "type": "mock_error", "code": null } })
    );

    // The connection stays usable, and the next request gets the default script.
    client.post(&completion_request("m", "again")).await;
    assert_eq!(client.streamed().await.text(), "Hello from the mock.");
    assert_eq!(mock.requests().len(), 2);
}

#[tokio::test]
async fn unknown_paths_get_404_and_non_json_bodies_get_400() {
    let mock = MockLlm::start().await;
    let mut client = Client::connect(mock.addr()).await;

    client.send("GET", "/v1/models", b"").await;
    let head = client.head().await;
    assert_eq!(head.status, 404);
    assert!(client.body(&head).await["error"]["message"].is_string());

    client
        .send("POST", "/v1/chat/completions", b"{not json")
        .await;
    let head = client.head().await;
    assert_eq!(head.status, 400);
    assert!(client.body(&head).await["error"]["message"].is_string());

    let requests = mock.requests();
    assert_eq!(requests.len(), 1, "only completions requests are recorded");
    assert_eq!(requests[0].body, Value::Null);

    // Garbage instead of HTTP is answered with 400 and the connection closes; the server lives on.
    let mut junk = Client::connect(mock.addr()).await;
    within(junk.stream.write_all(b"\x01\x02 nonsense\r\n\r\n"))
        .await
        .unwrap();
    assert_eq!(junk.head().await.status, 400);
    client.post(&completion_request("m", "still there?")).await;
    assert_eq!(client.streamed().await.text(), "Hello from the mock.");
}

#[tokio::test]
async fn hanging_stream_counts_a_disconnect_when_the_client_drops_the_connection() {
    let mock = MockLlm::start().await;
    mock.push(Script::hanging(vec!["partial".into(), " answer".into()]));
    let mut client = Client::connect(mock.addr()).await;
    client.post(&completion_request("m", "q")).await;
    let head = client.head().await;
    assert_eq!(head.status, 200);
    assert!(client.chunk().await.contains("\"partial\""));
    assert!(client.chunk().await.contains("\" answer\""));
    assert_eq!(mock.disconnects(), 0);

    drop(client);
    mock.wait_disconnects(1, DEADLINE).await;
    assert_eq!(mock.completed(), 0);
}

#[tokio::test]
async fn a_disconnect_during_a_long_first_chunk_delay_is_noticed_at_once() {
    let mock = MockLlm::start().await;
    // Far longer than the deadline: only watching the socket can count this in time.
    mock.push(Script::text("too late").first_chunk_delay(Duration::from_secs(600)));
    let mut client = Client::connect(mock.addr()).await;
    client.post(&completion_request("m", "q")).await;
    assert_eq!(client.head().await.status, 200);
    drop(client);
    mock.wait_disconnects(1, DEADLINE).await;
    assert_eq!(mock.completed(), 0);
}

#[tokio::test]
async fn scripts_are_used_in_fifo_order_then_the_default() {
    let mock = MockLlm::start().await;
    mock.push(Script::text("one"));
    mock.push(Script::text("two"));
    let mut client = Client::connect(mock.addr()).await;
    let mut replies = Vec::new();
    for _ in 0..3 {
        client.post(&completion_request("m", "q")).await;
        replies.push(client.streamed().await.text());
    }
    assert_eq!(replies, ["one", "two", "Hello from the mock."]);

    mock.set_default(Script::text("new default"));
    client.post(&completion_request("m", "q")).await;
    assert_eq!(client.streamed().await.text(), "new default");
    client.post(&completion_request("m", "q")).await;
    assert_eq!(client.streamed().await.text(), "new default");
    assert_eq!(mock.wait_requests(5, DEADLINE).await.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_on_a_multi_thread_runtime() {
    let mock = MockLlm::start().await;
    mock.set_default(Script::chunks(20).chunk_delay(Duration::from_millis(1)));
    let addr = mock.addr();
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                client
                    .post(&completion_request("m", &format!("client {i}")))
                    .await;
                client.streamed().await.text()
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), Script::chunks(20).full_text());
    }
    assert_eq!(mock.wait_requests(4, DEADLINE).await.len(), 4);
    assert_eq!(mock.completed(), 4);
}

#[tokio::test]
#[should_panic(expected = "waited")]
async fn wait_requests_panics_at_its_deadline() {
    let mock = MockLlm::start().await;
    mock.wait_requests(1, Duration::from_millis(20)).await;
}

#[tokio::test]
async fn dropping_the_mock_closes_its_connections() {
    let mock = MockLlm::start().await;
    let mut client = Client::connect(mock.addr()).await;
    client.post(&completion_request("m", "q")).await;
    client.streamed().await;

    drop(mock);
    // The idle keep-alive connection is closed by the server, not left to leak.
    assert!(!client.fill_to(1).await, "connection closed after drop");
}

// ---- With reqwest: tool calls, the Anthropic dialect, error headers, cuts, timestamps. ----

/// One SSE event: its `event:` name (if any) and its `data:` JSON (`None` for `[DONE]`).
#[derive(Debug)]
struct Sse {
    event: Option<String>,
    data: Option<Value>,
}

/// Splits an SSE body into events (blank-line separated, `event:`/`data:` lines).
fn parse_sse(body: &str) -> Vec<Sse> {
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let mut event = None;
            let mut data = None;
            for line in e.lines() {
                if let Some(name) = line.strip_prefix("event: ") {
                    event = Some(name.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = (d != "[DONE]").then(|| serde_json::from_str(d).expect("data is JSON"));
                } else {
                    panic!("unexpected SSE line {line:?} in {e:?}");
                }
            }
            Sse { event, data }
        })
        .collect()
}

async fn post_to(mock: &MockLlm, path: &str, body: &Value) -> reqwest::Response {
    let url = format!("http://{}{path}", mock.addr());
    let request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    within(request.send()).await.expect("request")
}

/// A JSON (error) body.
async fn json_of(resp: reqwest::Response) -> Value {
    let bytes = within(resp.bytes()).await.expect("whole body");
    serde_json::from_slice(&bytes).expect("JSON body")
}

/// Posts an OpenAI request and returns the SSE events of the whole (successful) stream.
async fn openai_events(mock: &MockLlm, body: &Value) -> Vec<Sse> {
    let resp = post_to(mock, "/v1/chat/completions", body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "text/event-stream",
        "{resp:?}"
    );
    parse_sse(&within(resp.text()).await.expect("whole body"))
}

/// Posts an Anthropic request and returns the SSE events of the whole (successful) stream.
async fn anthropic_events(mock: &MockLlm, body: &Value) -> Vec<Sse> {
    let resp = post_to(mock, "/v1/messages", body).await;
    assert_eq!(resp.status(), 200);
    parse_sse(&within(resp.text()).await.expect("whole body"))
}

/// Reads a body chunk by chunk: what arrived, and whether it ended in an error.
async fn read_until_end(mut resp: reqwest::Response) -> (String, bool) {
    let mut got = Vec::new();
    loop {
        match within(resp.chunk()).await {
            Ok(Some(bytes)) => got.extend_from_slice(&bytes),
            Ok(None) => return (String::from_utf8(got).unwrap(), false),
            Err(_) => return (String::from_utf8(got).unwrap(), true),
        }
    }
}

/// A tool call as an OpenAI client reassembles it from the deltas: id (if any was sent), name,
/// arguments.
type Reassembled = Vec<(Option<String>, String, String)>;

fn reassemble_openai(events: &[Sse]) -> Reassembled {
    let mut calls: Reassembled = Vec::new();
    for e in events.iter().filter_map(|e| e.data.as_ref()) {
        let Some(deltas) = e["choices"][0]["delta"]["tool_calls"].as_array() else {
            continue;
        };
        for d in deltas {
            let i = d["index"]
                .as_u64()
                .expect("every tool-call delta has an index") as usize;
            if calls.len() <= i {
                calls.resize(i + 1, (None, String::new(), String::new()));
            }
            if let Some(id) = d["id"].as_str() {
                calls[i].0 = Some(id.to_owned());
            }
            if let Some(name) = d["function"]["name"].as_str() {
                calls[i].1.push_str(name);
            }
            if let Some(args) = d["function"]["arguments"].as_str() {
                calls[i].2.push_str(args);
            }
        }
    }
    calls
}

fn finish_reasons(events: &[Sse]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e.data.as_ref())
        .filter_map(|e| e["choices"][0]["finish_reason"].as_str().map(str::to_owned))
        .collect()
}

fn tool_scripts() -> Script {
    Script::text("Let me look.")
        .tool_call(
            "call_a",
            "read_file",
            r#"{"path":"src/main.rs","limit":200}"#,
        )
        .tool_call(
            "call_b",
            "grep",
            r#"{"pattern":"fn main","glob":"**/*.rs"}"#,
        )
}

#[tokio::test]
async fn openai_tool_calls_reassemble_in_every_style() {
    let mock = MockLlm::start().await;
    let expected = |with_ids: bool| -> Reassembled {
        tool_scripts()
            .tool_calls
            .iter()
            .map(|c| {
                (
                    with_ids.then(|| c.id.clone()),
                    c.name.clone(),
                    c.arguments.clone(),
                )
            })
            .collect()
    };
    for style in [
        ToolStyle::Standard,
        ToolStyle::AllInFirst,
        ToolStyle::MissingIds,
        ToolStyle::NameLate,
    ] {
        mock.push(tool_scripts().tool_style(style));
        let events = openai_events(&mock, &completion_request("m", "q")).await;
        assert_eq!(
            reassemble_openai(&events),
            expected(style != ToolStyle::MissingIds),
            "{style:?}"
        );
        assert_eq!(finish_reasons(&events), ["tool_calls"], "{style:?}");
        assert!(events.last().unwrap().data.is_none(), "ends with [DONE]");

        // Text first, then the tool calls; the role rides on the first delta.
        let deltas: Vec<&Value> = events
            .iter()
            .filter_map(|e| e.data.as_ref())
            .map(|e| &e["choices"][0]["delta"])
            .filter(|d| d.is_object() && d != &&json!({}))
            .collect();
        assert_eq!(deltas[0]["role"], "assistant");
        let text: String = deltas
            .iter()
            .filter_map(|d| d["content"].as_str())
            .collect();
        assert_eq!(text, "Let me look.");
        let first_tool = deltas
            .iter()
            .position(|d| d.get("tool_calls").is_some())
            .unwrap();
        assert!(
            deltas[first_tool..]
                .iter()
                .all(|d| d.get("content").is_none()),
            "{style:?}: text after the tool calls"
        );

        // The shape of each call's deltas.
        let tool_deltas: Vec<&Value> = deltas[first_tool..]
            .iter()
            .map(|d| &d["tool_calls"][0])
            .collect();
        let of = |i: u64| -> Vec<&Value> {
            tool_deltas
                .iter()
                .copied()
                .filter(|d| d["index"] == i)
                .collect()
        };
        for i in 0..2 {
            let call = of(i);
            let keys = |d: &Value| -> Vec<String> {
                let mut k: Vec<String> = d.as_object().unwrap().keys().cloned().collect();
                k.sort();
                k
            };
            match style {
                ToolStyle::Standard | ToolStyle::MissingIds => {
                    assert_eq!(call.len(), 1 + 3, "{style:?}: first delta + 3 pieces");
                    assert_eq!(call[0]["type"], "function");
                    assert_eq!(call[0]["function"]["arguments"], "");
                    assert!(call[0]["function"]["name"].is_string());
                    assert_eq!(
                        call[0].get("id").is_some(),
                        style == ToolStyle::Standard,
                        "{style:?}"
                    );
                    for piece in &call[1..] {
                        assert_eq!(keys(piece), ["function", "index"], "{style:?}");
                        assert_eq!(
                            piece["function"].as_object().unwrap().len(),
                            1,
                            "only arguments"
                        );
                    }
                }
                ToolStyle::AllInFirst => {
                    assert_eq!(call.len(), 1);
                    assert_eq!(keys(call[0]), ["function", "id", "index", "type"]);
                }
                ToolStyle::NameLate => {
                    assert_eq!(
                        call.len(),
                        1 + 3,
                        "id, then name with the first piece, then 2"
                    );
                    assert_eq!(keys(call[0]), ["id", "index"]);
                    assert!(call[1]["function"]["name"].is_string());
                    assert!(
                        !call[1]["function"]["arguments"]
                            .as_str()
                            .unwrap()
                            .is_empty()
                    );
                }
            }
        }
    }

    // More pieces on request; an explicit finish reason wins over "tool_calls".
    mock.push(
        Script::default()
            .tool_call("call_x", "ls", r#"{"dir":"café ☕/ü"}"#)
            .arg_pieces(5)
            .finish_reason("stop"),
    );
    let events = openai_events(&mock, &completion_request("m", "q")).await;
    let pieces = events
        .iter()
        .filter_map(|e| e.data.as_ref())
        .filter(|e| {
            e["choices"][0]["delta"]["tool_calls"][0]
                .get("id")
                .is_none()
        })
        .filter(|e| e["choices"][0]["delta"]["tool_calls"].is_array())
        .count();
    assert_eq!(pieces, 5);
    assert_eq!(
        reassemble_openai(&events),
        [(
            Some("call_x".to_owned()),
            "ls".to_owned(),
            r#"{"dir":"café ☕/ü"}"#.to_owned()
        )]
    );
    assert_eq!(finish_reasons(&events), ["stop"]);
    assert_eq!(
        Script::default().tool_call("a", "b", "{}").tool_calls,
        [ToolCall {
            id: "a".into(),
            name: "b".into(),
            arguments: "{}".into()
        }]
    );
}

fn anthropic_request(prompt: &str) -> Value {
    json!({
        "model": "claude-mock",
        "max_tokens": 1024,
        "stream": true,
        "system": [{ "type": "text", "text": "You are " }, { "type": "text", "text": "terse." }],
        "tools": [
            { "name": "read_file", "description": "Read a file", "input_schema": { "type": "object" } },
            { "name": "grep", "description": "Search", "input_schema": { "type": "object" } },
        ],
        "messages": [
            { "role": "user", "content": prompt },
            { "role": "assistant", "content": [
                { "type": "thinking", "thinking": "hmm", "signature": "sig-mock" },
                { "type": "text", "text": "Reading it." },
                { "type": "tool_use", "id": "toolu_1", "name": "read_file", "input": { "path": "a" } },
            ] },
            { "role": "user", "content": [
                { "type": "tool_result", "tool_use_id": "toolu_1", "content": "fn main() {}" },
                { "type": "tool_result", "tool_use_id": "toolu_2", "is_error": true,
                  "content": [{ "type": "text", "text": "no such " }, { "type": "text", "text": "file" }] },
                { "type": "text", "text": "Go on." },
            ] },
        ],
    })
}

#[tokio::test]
async fn anthropic_stream_has_thinking_text_and_tool_use_blocks_in_order() {
    let mock = MockLlm::start().await;
    let script = Script::text("I will read it.")
        .with_reasoning(vec!["Need the ".into(), "file.".into()])
        .tool_call(
            "toolu_9",
            "read_file",
            r#"{"path":"src/lib.rs","offset":10}"#,
        )
        .usage(25, 7);
    mock.push(script.clone());

    // Raw, to see the framing: one event per HTTP chunk, `event:` naming the data's type.
    let mut client = Client::connect(mock.addr()).await;
    client
        .send(
            "POST",
            "/v1/messages",
            anthropic_request("read src/lib.rs").to_string().as_bytes(),
        )
        .await;
    let reply = client.streamed().await;
    let events: Vec<Sse> = reply
        .chunks
        .iter()
        .map(|c| {
            let mut one = parse_sse(c);
            assert_eq!(one.len(), 1, "one event per chunk: {c:?}");
            assert!(c.starts_with("event: ") && c.ends_with("\n\n"), "{c:?}");
            one.remove(0)
        })
        .collect();
    let data: Vec<&Value> = events.iter().map(|e| e.data.as_ref().unwrap()).collect();
    for (e, d) in events.iter().zip(&data) {
        assert_eq!(e.event.as_deref(), d["type"].as_str());
    }
    let kinds: Vec<String> = data
        .iter()
        .map(|d| {
            let t = d["type"].as_str().unwrap();
            match t {
                "content_block_start" => {
                    format!("start:{}", d["content_block"]["type"].as_str().unwrap())
                }
                "content_block_delta" => format!("delta:{}", d["delta"]["type"].as_str().unwrap()),
                _ => t.to_owned(),
            }
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "message_start",
            "start:thinking",
            "ping",
            "delta:thinking_delta",
            "delta:thinking_delta",
            "delta:signature_delta",
            "content_block_stop",
            "start:text",
            "delta:text_delta",
            "delta:text_delta",
            "delta:text_delta",
            "delta:text_delta",
            "content_block_stop",
            "start:tool_use",
            "delta:input_json_delta",
            "delta:input_json_delta",
            "delta:input_json_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );

    let message = &data[0]["message"];
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["model"], "claude-mock");
    assert_eq!(message["content"], json!([]));
    assert_eq!(message["usage"]["input_tokens"], 25);
    assert_eq!(
        data[1]["content_block"],
        json!({ "type": "thinking", "thinking": "" })
    );

    // Block indices: thinking 0, text 1, tool_use 2.
    let mut thinking = String::new();
    let mut signature = String::new();
    let mut text = String::new();
    let mut json_text = String::new();
    for d in &data {
        let idx = &d["index"];
        match d["delta"]["type"].as_str() {
            Some("thinking_delta") => {
                assert_eq!(idx, 0);
                thinking.push_str(d["delta"]["thinking"].as_str().unwrap());
            }
            Some("signature_delta") => {
                assert_eq!(idx, 0);
                signature.push_str(d["delta"]["signature"].as_str().unwrap());
            }
            Some("text_delta") => {
                assert_eq!(idx, 1);
                text.push_str(d["delta"]["text"].as_str().unwrap());
            }
            Some("input_json_delta") => {
                assert_eq!(idx, 2);
                json_text.push_str(d["delta"]["partial_json"].as_str().unwrap());
            }
            _ => {}
        }
    }
    assert_eq!(thinking, "Need the file.");
    assert_eq!(signature, MOCK_SIGNATURE);
    assert_eq!(text, script.full_text());
    assert_eq!(json_text, script.tool_calls[0].arguments);
    let input: Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(input, json!({ "path": "src/lib.rs", "offset": 10 }));
    let tool_start = data
        .iter()
        .find(|d| d["content_block"]["type"] == "tool_use")
        .unwrap();
    assert_eq!(
        tool_start["content_block"],
        json!({ "type": "tool_use", "id": "toolu_9", "name": "read_file", "input": {} })
    );
    let message_delta = &data[data.len() - 2];
    assert_eq!(message_delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(message_delta["usage"]["output_tokens"], 7);
    assert_eq!(mock.completed(), 1);

    // Stop reasons: end_turn by default, max_tokens for "length"; an empty reply still has a
    // text block; keep-alive works across dialects.
    let stop_reason = |events: &[Sse]| {
        events
            .iter()
            .filter_map(|e| e.data.as_ref())
            .find(|d| d["type"] == "message_delta")
            .map(|d| d["delta"]["stop_reason"].clone())
            .unwrap()
    };
    mock.push(Script::text("plain"));
    mock.push(Script::text("cut short").finish_reason("length"));
    mock.push(Script::default());
    let plain = anthropic_events(&mock, &anthropic_request("a")).await;
    assert_eq!(stop_reason(&plain), "end_turn");
    assert!(plain.iter().all(|e| e.event.is_some()));
    assert_eq!(plain.last().unwrap().event.as_deref(), Some("message_stop"));
    assert_eq!(
        stop_reason(&anthropic_events(&mock, &anthropic_request("b")).await),
        "max_tokens"
    );
    let empty = anthropic_events(&mock, &anthropic_request("c")).await;
    let starts: Vec<&Value> = empty
        .iter()
        .filter_map(|e| e.data.as_ref())
        .filter(|d| d["type"] == "content_block_start")
        .map(|d| &d["content_block"])
        .collect();
    assert_eq!(starts, [&json!({ "type": "text", "text": "" })]);
    client.post(&completion_request("m", "openai again")).await;
    assert_eq!(client.streamed().await.text(), "Hello from the mock.");
}

#[tokio::test]
async fn anthropic_errors_use_anthropic_bodies_and_types() {
    let mock = MockLlm::start().await;
    for (status, kind) in [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (503, "api_error"),
        (529, "overloaded_error"),
    ] {
        mock.push(Script::error(status, "scripted failure"));
        let resp = post_to(&mock, "/v1/messages", &anthropic_request("q")).await;
        assert_eq!(resp.status().as_u16(), status);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let body: Value = json_of(resp).await;
        assert_eq!(
            body,
            json!({ "type": "error", "error": { "type": kind, "message": "scripted failure" } }),
            "{status}"
        );
    }
    // The mock's own refusals speak the dialect too; OpenAI keeps its format.
    let url = format!("http://{}/v1/messages?beta=true", mock.addr());
    let resp = within(reqwest::Client::new().post(url).body("{nope").send())
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = json_of(resp).await;
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    mock.push(Script::error(401, "bad key"));
    let resp = post_to(&mock, "/v1/chat/completions", &completion_request("m", "q")).await;
    assert_eq!(resp.status(), 401);
    let body: Value = json_of(resp).await;
    assert_eq!(body["error"]["message"], "bad key");
    assert_eq!(body["error"]["type"], "mock_error");
}

#[tokio::test]
async fn a_429_carries_retry_after_headers_in_both_dialects() {
    let mock = MockLlm::start().await;
    for path in ["/v1/chat/completions", "/v1/messages"] {
        mock.push(
            Script::error(429, "slow down")
                .header("Retry-After", "1")
                .header("retry-after-ms", "50"),
        );
        let resp = post_to(&mock, path, &completion_request("m", "q")).await;
        assert_eq!(resp.status(), 429, "{path}");
        assert_eq!(resp.headers()["retry-after"], "1");
        assert_eq!(resp.headers()["retry-after-ms"], "50");
        let body: Value = json_of(resp).await;
        assert!(body.to_string().contains("slow down"), "{body}");
        // The next request on the same mock goes through.
        let events = if path.ends_with("/messages") {
            anthropic_events(&mock, &anthropic_request("again")).await
        } else {
            openai_events(&mock, &completion_request("m", "again")).await
        };
        assert!(!events.is_empty());
    }
    assert_eq!(mock.completed(), 2);
}

#[tokio::test]
async fn cut_streams_end_the_body_early_without_a_finish() {
    let mock = MockLlm::start().await;

    // OpenAI: all the deltas, then the connection closes mid-body.
    mock.push(
        Script::text("partial answer")
            .tool_call("call_1", "ls", r#"{"dir":"src"}"#)
            .cut(),
    );
    let resp = post_to(&mock, "/v1/chat/completions", &completion_request("m", "q")).await;
    assert_eq!(resp.status(), 200);
    let (body, errored) = read_until_end(resp).await;
    assert!(
        errored,
        "a truncated chunked body is a body error: {body:?}"
    );
    assert!(!body.contains("[DONE]"), "{body}");
    let events = parse_sse(&body);
    assert!(finish_reasons(&events).is_empty(), "{body}");
    assert!(
        events
            .iter()
            .all(|e| e.data.as_ref().unwrap()["usage"].is_null())
    );
    let text: String = events
        .iter()
        .filter_map(|e| e.data.as_ref().unwrap()["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "partial answer");
    assert_eq!(reassemble_openai(&events)[0].2, r#"{"dir":"src"}"#);

    // Cut inside a tool call's arguments: 1 text delta, the call's first delta, 1 piece.
    mock.push(
        Script::text("x")
            .tool_call("call_2", "ls", r#"{"dir":"src/deep"}"#)
            .cut_after(3),
    );
    let resp = post_to(&mock, "/v1/chat/completions", &completion_request("m", "q")).await;
    let (body, errored) = read_until_end(resp).await;
    assert!(errored);
    let calls = reassemble_openai(&parse_sse(&body));
    assert_eq!(calls.len(), 1);
    assert!(
        r#"{"dir":"src/deep"}"#.starts_with(&calls[0].2) && calls[0].2.len() < 17,
        "{calls:?}"
    );

    // Anthropic: no message_delta, no message_stop.
    mock.push(
        Script::text("half of it")
            .tool_call("toolu_1", "ls", "{}")
            .cut(),
    );
    let resp = post_to(&mock, "/v1/messages", &anthropic_request("q")).await;
    let (body, errored) = read_until_end(resp).await;
    assert!(errored);
    let kinds: Vec<String> = parse_sse(&body)
        .into_iter()
        .map(|e| e.event.unwrap())
        .collect();
    assert_eq!(kinds.first().map(String::as_str), Some("message_start"));
    assert!(kinds.contains(&"content_block_delta".to_owned()));
    assert!(
        !kinds
            .iter()
            .any(|k| k == "message_delta" || k == "message_stop"),
        "{kinds:?}"
    );

    // Before any output: a 200 head, then nothing.
    for path in ["/v1/chat/completions", "/v1/messages"] {
        mock.push(Script::text("never sent").cut_before_output());
        let resp = post_to(&mock, path, &completion_request("m", "q")).await;
        assert_eq!(resp.status(), 200);
        let (body, errored) = read_until_end(resp).await;
        assert!(errored, "{path}");
        assert_eq!(body, "", "{path}");
    }
    assert_eq!(
        Script::text("a").cut_before_output().cut,
        Some(Cut::BeforeOutput)
    );

    // Neither a completion nor a client disconnect, and the server carries on.
    assert_eq!(mock.completed(), 0);
    assert_eq!(mock.disconnects(), 0);
    let events = openai_events(&mock, &completion_request("m", "q")).await;
    assert_eq!(finish_reasons(&events), ["stop"]);
    assert_eq!(mock.completed(), 1);
}

#[tokio::test]
async fn recorded_requests_expose_dialect_system_tools_and_tool_results() {
    let mock = MockLlm::start().await;
    let openai_body = json!({
        "model": "gpt-mock",
        "stream": true,
        "tools": [
            { "type": "function", "function": { "name": "read_file", "parameters": {} } },
            { "type": "function", "function": { "name": "bash", "parameters": {} } },
        ],
        "messages": [
            { "role": "system", "content": "Be brief." },
            { "role": "user", "content": "look" },
            { "role": "assistant", "content": null, "tool_calls": [
                { "id": "call_1", "type": "function", "function": { "name": "read_file", "arguments": "{}" } },
            ] },
            { "role": "tool", "tool_call_id": "call_1", "content": "contents" },
            { "role": "tool", "tool_call_id": "call_2", "content": [{ "type": "text", "text": "parts" }] },
        ],
    });
    openai_events(&mock, &openai_body).await;
    anthropic_events(&mock, &anthropic_request("read it")).await;
    let plain = json!({ "model": "claude-mock", "system": "Plain system.", "messages": [
        { "role": "user", "content": [{ "type": "text", "text": "hi" }] },
    ] });
    anthropic_events(&mock, &plain).await;

    let requests = mock.wait_requests(3, DEADLINE).await;
    let (o, a, p) = (&requests[0], &requests[1], &requests[2]);
    assert_eq!(o.dialect(), Dialect::OpenAi);
    assert_eq!(a.dialect(), Dialect::Anthropic);
    assert_eq!(a.path, "/v1/messages");
    assert_eq!(o.body(), &openai_body);
    assert_eq!(a.body()["max_tokens"], 1024);
    assert_eq!(a.model(), Some("claude-mock"));

    assert_eq!(o.system().as_deref(), Some("Be brief."));
    assert_eq!(a.system().as_deref(), Some("You are terse."));
    assert_eq!(p.system().as_deref(), Some("Plain system."));
    assert_eq!(requests[0].system(), o.system());

    assert_eq!(o.tool_names(), ["read_file", "bash"]);
    assert_eq!(a.tool_names(), ["read_file", "grep"]);
    assert!(p.tool_names().is_empty());

    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    };
    assert_eq!(
        o.tool_results(),
        pairs(&[("call_1", "contents"), ("call_2", "parts")])
    );
    assert_eq!(
        a.tool_results(),
        pairs(&[("toolu_1", "fn main() {}"), ("toolu_2", "no such file")])
    );
    assert!(p.tool_results().is_empty());

    assert_eq!(
        o.messages(),
        pairs(&[
            ("system", "Be brief."),
            ("user", "look"),
            ("assistant", ""),
            ("tool", "contents"),
            ("tool", "parts"),
        ])
    );
    assert_eq!(
        a.messages(),
        pairs(&[
            ("user", "read it"),
            ("assistant", "Reading it."),
            ("tool", "fn main() {}"),
            ("tool", "no such file"),
            ("user", "Go on."),
        ])
    );
    assert_eq!(p.messages(), pairs(&[("user", "hi")]));
}

#[tokio::test]
async fn sent_deltas_stamp_every_text_delta_in_order() {
    let mock = MockLlm::start().await;
    mock.push(
        Script::chunks(5)
            .with_reasoning(vec!["not text".into()])
            .tool_call("c", "t", "{\"a\":1}"),
    );
    mock.push(Script::text("a b c").with_reasoning(vec!["hm".into()]));
    let before = std::time::Instant::now();
    openai_events(&mock, &completion_request("m", "q")).await;
    let openai_done = std::time::Instant::now();
    anthropic_events(&mock, &anthropic_request("q")).await;
    let anthropic_done = std::time::Instant::now();

    let sent = mock.sent_deltas();
    let texts: Vec<&str> = sent.iter().map(|d| d.text.as_str()).collect();
    assert_eq!(texts, ["w0", " w1", " w2", " w3", " w4", "a", " b", " c"]);
    let requests: Vec<usize> = sent.iter().map(|d| d.request).collect();
    assert_eq!(requests, [0, 0, 0, 0, 0, 1, 1, 1]);
    assert!(sent.windows(2).all(|w| w[0].at <= w[1].at));
    assert!(sent[0].at >= before);
    assert!(sent[4].at <= openai_done && sent[5].at >= openai_done);
    assert!(sent[7].at <= anthropic_done);

    mock.clear_sent();
    assert!(mock.sent_deltas().is_empty());
    // An empty reply records nothing; the next text does.
    mock.push(Script::default());
    openai_events(&mock, &completion_request("m", "q")).await;
    assert!(mock.sent_deltas().is_empty());
    openai_events(&mock, &completion_request("m", "q")).await;
    let texts: Vec<String> = mock.sent_deltas().into_iter().map(|d| d.text).collect();
    assert_eq!(texts, ["Hello", " from", " the", " mock."]);
}
