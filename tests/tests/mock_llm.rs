//! Tests of the mock model server itself, spoken to in raw HTTP/1.1 over a real TCP connection so
//! that framing (one SSE event per HTTP chunk), keep-alive and disconnects are what is asserted.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crush_tests::DEADLINE;
use crush_tests::mock_llm::{MockLlm, Script};

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
