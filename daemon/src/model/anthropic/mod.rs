//! Anthropic's Messages API (`POST {base_url}/v1/messages` with `stream: true`): the model, its
//! endpoint and headers. Unlike Chat Completions the API needs `max_tokens`, strict user/assistant
//! alternation and signed thinking blocks handed back verbatim — `request.rs` builds such a body
//! from a [`TurnRequest`] — and it streams named server-sent events (`message_start`,
//! `content_block_*`, `message_delta`, `message_stop`, `error`), which `decode.rs` turns into
//! [`ModelEvent`](super::ModelEvent)s ending with exactly one `Finish` or `Error`.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crush_protocol::ModelInfo;

use super::http::{Endpoint, HttpModel};
use super::{EventStream, Model, TurnRequest};
use decode::Decoder;
use request::{FALLBACK_MAX_TOKENS, request_body};

mod decode;
mod request;

/// Anthropic's endpoint: the `anthropic` preset's `base_url`.
pub(crate) const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
pub(crate) const API_VERSION: &str = "2023-06-01";

#[derive(Debug, Clone)]
pub(crate) struct AnthropicModel {
    inner: Arc<HttpModel>,
}

impl AnthropicModel {
    /// A model reached at `endpoint` (whose base URL is the part before `/v1`; one that already
    /// ends with `/v1` is accepted too).
    pub(crate) fn new(info: ModelInfo, endpoint: Endpoint) -> Result<Self, String> {
        let url = messages_url(&endpoint);
        Ok(Self {
            inner: Arc::new(HttpModel::new(info, endpoint, url)?),
        })
    }
}

/// The Messages endpoint. People copy base URLs from OpenAI-style configs, which end in `/v1`;
/// doubling it would make every request a 404.
fn messages_url(endpoint: &Endpoint) -> String {
    let base = endpoint.base_url.trim_end_matches('/');
    if base.ends_with("/v1") {
        format!("{base}/messages")
    } else {
        format!("{base}/v1/messages")
    }
}

impl Model for AnthropicModel {
    fn info(&self) -> &ModelInfo {
        &self.inner.info
    }

    fn stream(&self, request: TurnRequest, cancel: CancellationToken) -> EventStream {
        let info = &self.inner.info;
        let default_max = info.max_output_tokens.unwrap_or(FALLBACK_MAX_TOKENS);
        let body = request_body(&info.model, &request, default_max);
        let mut headers = vec![("anthropic-version", API_VERSION.to_owned())];
        if let Some(key) = &self.inner.endpoint.api_key {
            headers.push(("x-api-key", key.clone()));
        }
        let dec = Decoder::new(&self.inner.endpoint.provider);
        self.inner.stream(body, headers, dec, cancel)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::model::{ChatMessage, FinishReason, ModelEvent};
    use decode::tests::finish;
    use futures::StreamExt;
    use serde_json::Value;

    #[test]
    fn the_url_gets_v1_once() {
        let url = |base: &str| messages_url(&Endpoint::new("anthropic", base));
        assert_eq!(
            url(DEFAULT_BASE_URL),
            "https://api.anthropic.com/v1/messages"
        );
        assert_eq!(
            url("https://proxy.example/v1/"),
            "https://proxy.example/v1/messages"
        );
        assert_eq!(
            url("http://h:1/anthropic"),
            "http://h:1/anthropic/v1/messages"
        );
    }

    #[test]
    fn new_refuses_a_missing_model_or_a_bad_url() {
        let info = |m: &str| ModelInfo {
            model: m.into(),
            ..ModelInfo::default()
        };
        assert!(AnthropicModel::new(info(" "), Endpoint::new("a", DEFAULT_BASE_URL)).is_err());
        assert!(AnthropicModel::new(info("m"), Endpoint::new("a", "ftp://x")).is_err());
        assert!(AnthropicModel::new(info("m"), Endpoint::new("a", DEFAULT_BASE_URL)).is_ok());
    }

    /// Serves one request on a loopback port with a fixed answer; yields the request's bytes.
    async fn serve_once(
        status: &'static str,
        content_type: &'static str,
        body: &'static str,
    ) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = sock.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap_or(0);
                if buf.len() >= head_end + 4 + len {
                    break;
                }
            }
            let answer = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nConnection: close\r\n\r\n{body}"
            );
            sock.write_all(answer.as_bytes()).await.unwrap();
            sock.shutdown().await.unwrap();
            String::from_utf8(buf).unwrap()
        });
        (base, task)
    }

    fn model_at(base: &str) -> AnthropicModel {
        let mut ep = Endpoint::new("anthropic", base);
        ep.api_key = Some("sk-test".into());
        ep.api_key_env = Some("ANTHROPIC_API_KEY".into());
        let info = ModelInfo {
            name: "anthropic/claude-x".into(),
            provider: "anthropic".into(),
            api: "anthropic".into(),
            model: "claude-x".into(),
            max_output_tokens: Some(1000),
            ..ModelInfo::default()
        };
        AnthropicModel::new(info, ep).unwrap()
    }

    const SSE_BODY: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-x\",\"stop_reason\":null,\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\n\
data: {\"type\": \"ping\"}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":5}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";

    #[tokio::test]
    async fn streams_a_reply_from_a_server_with_the_right_headers_and_path() {
        let (base, server) = serve_once("200 OK", "text/event-stream", SSE_BODY).await;
        let model = model_at(&base);
        let req = TurnRequest {
            system: "sys".into(),
            messages: vec![ChatMessage::user("hi")],
            ..TurnRequest::default()
        };
        let events: Vec<ModelEvent> = model.stream(req, CancellationToken::new()).collect().await;
        assert_eq!(
            events,
            vec![
                ModelEvent::TextDelta("Hello".into()),
                finish(FinishReason::EndTurn, 10, 5),
            ]
        );
        let request = server.await.unwrap();
        let (head, body) = request.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("POST /v1/messages HTTP/1.1\r\n"), "{head}");
        let head = head.to_lowercase();
        assert!(head.contains("\r\nx-api-key: sk-test"), "{head}");
        assert!(head.contains("\r\nanthropic-version: 2023-06-01"), "{head}");
        assert!(
            head.contains("\r\ncontent-type: application/json"),
            "{head}"
        );
        assert!(head.contains("\r\naccept: text/event-stream"), "{head}");
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["model"], "claude-x");
        assert_eq!(body["max_tokens"], 1000);
        assert_eq!(body["system"], "sys");
        assert_eq!(body["stream"], true);
    }

    #[tokio::test]
    async fn a_rejected_key_names_the_provider_and_the_key_variable() {
        let (base, server) = serve_once(
            "401 Unauthorized",
            "application/json",
            r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
        )
        .await;
        let events: Vec<ModelEvent> = model_at(&base)
            .stream(TurnRequest::default(), CancellationToken::new())
            .collect()
            .await;
        match events.as_slice() {
            [ModelEvent::Error(e)] => {
                assert_eq!(e.status, Some(401));
                assert!(!e.retryable);
                assert!(e.message.contains("anthropic"), "{}", e.message);
                assert!(e.message.contains("ANTHROPIC_API_KEY"), "{}", e.message);
                assert!(e.message.contains("invalid x-api-key"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_cancelled_step_yields_nothing() {
        // Port 9 on loopback refuses; a cancelled stream must not even try.
        let model = model_at("http://127.0.0.1:9");
        let cancel = CancellationToken::new();
        cancel.cancel();
        let events: Vec<ModelEvent> = model.stream(TurnRequest::default(), cancel).collect().await;
        assert_eq!(events, vec![]);
    }
}
