//! What the HTTP providers share: the endpoint a model is reached at (base URL, key, timeouts),
//! and turning HTTP failures into [`ModelError`]s a person can act on — a rejected key names the
//! provider and the variable holding it, an unknown model names the model and the provider, a
//! timeout names the endpoint — and that say whether trying again can help (429, 5xx, connection
//! failures) and how long the server asked us to wait.

use std::sync::Arc;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt, stream};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crush_protocol::ModelInfo;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{EventStream, ModelError, ModelErrorKind, ModelEvent};

/// Idle connections kept per provider host for the next request.
pub(crate) const POOL_MAX_IDLE_PER_HOST: usize = 8;
/// How long an idle connection is kept.
pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// What an HTTP provider's model is: its identity, endpoint, the URL it posts to and the client
/// (one per model, so connections are pooled across steps), plus the one streaming call both
/// APIs make — POST a JSON body, fail on a non-2xx status, decode the SSE body.
#[derive(Debug)]
pub(crate) struct HttpModel {
    pub(crate) info: ModelInfo,
    pub(crate) endpoint: Endpoint,
    pub(crate) url: String,
    http: reqwest::Client,
}

impl HttpModel {
    pub(crate) fn new(info: ModelInfo, endpoint: Endpoint, url: String) -> Result<Self, String> {
        if info.model.trim().is_empty() {
            return Err("it has no model id".to_owned());
        }
        let http = endpoint.client()?;
        Ok(Self {
            info,
            endpoint,
            url,
            http,
        })
    }

    /// Posts `body` with the extra `headers` (authentication, API version) and streams the reply
    /// through `dec`. A failure to connect or a non-2xx answer is the stream's one `Error`. The
    /// stream ends as soon as `cancel` fires, dropping the response, which closes the connection.
    pub(crate) fn stream<D: SseDecoder>(
        self: &Arc<Self>,
        body: Value,
        headers: Vec<(&'static str, String)>,
        dec: D,
        cancel: CancellationToken,
    ) -> EventStream {
        let me = self.clone();
        let events = stream::once(async move {
            // Held for as long as the response streams: the connection is open that long.
            let Ok(slot) = me.endpoint.connections.clone().acquire_owned().await else {
                return stream::empty().boxed();
            };
            match me.open(body, headers).await {
                Ok(resp) => decode_sse(
                    me.endpoint.clone(),
                    me.url.clone(),
                    resp.bytes_stream(),
                    dec,
                )
                .map(move |ev| {
                    let _open = &slot;
                    ev
                })
                .boxed(),
                Err(e) => stream::iter([ModelEvent::Error(e)]).boxed(),
            }
        })
        .flatten();
        // Whatever the server or the transport said, the key never leaves in an error message
        // (an auth error body may echo it; a URL may carry it).
        let endpoint = self.endpoint.clone();
        let events = events.map(move |ev| match ev {
            ModelEvent::Error(e) => ModelEvent::Error(endpoint.redact_error(e)),
            other => other,
        });
        Box::pin(events.take_until(cancel.cancelled_owned()))
    }

    async fn open(
        &self,
        body: Value,
        headers: Vec<(&'static str, String)>,
    ) -> Result<reqwest::Response, ModelError> {
        let mut req = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .body(body.to_string());
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.endpoint.send_error(&self.url, &e))?;
        if !resp.status().is_success() {
            return Err(self
                .endpoint
                .status_error(&self.url, &self.info.model, resp)
                .await);
        }
        Ok(resp)
    }
}

/// A provider's stream decoder: turns server-sent events into model events.
pub(crate) trait SseDecoder: Send + 'static {
    /// The events one SSE event (`event:` name and `data:` payload) yields.
    fn event(&mut self, name: &str, data: &str) -> Vec<ModelEvent>;
    /// Whether the step ended (a `Finish` or `Error` was yielded); nothing is read after it.
    fn done(&self) -> bool;
    /// The body ended: a `Finish` if the reply was complete enough, else an `Error`.
    fn end(&mut self) -> Vec<ModelEvent>;
}

/// Decodes a streaming response body with `dec`, ending after the first `Finish` or `Error`;
/// a transport failure becomes an error naming `endpoint` and `url`.
pub(crate) fn decode_sse<D: SseDecoder>(
    endpoint: Endpoint,
    url: String,
    body: impl Stream<Item = reqwest::Result<bytes::Bytes>> + Send + 'static,
    dec: D,
) -> impl Stream<Item = ModelEvent> + Send {
    let sse = Box::pin(body.eventsource());
    stream::unfold(Some((sse, dec)), move |state| {
        let (endpoint, url) = (endpoint.clone(), url.clone());
        async move {
            let (mut sse, mut dec) = state?;
            loop {
                match sse.next().await {
                    Some(Ok(event)) => {
                        let out = dec.event(&event.event, &event.data);
                        if dec.done() {
                            return Some((out, None));
                        }
                        if !out.is_empty() {
                            return Some((out, Some((sse, dec))));
                        }
                    }
                    Some(Err(e)) => {
                        let err = endpoint.sse_error(&url, &e);
                        return Some((vec![ModelEvent::Error(err)], None));
                    }
                    None => {
                        let out = dec.end();
                        return (!out.is_empty()).then_some((out, None));
                    }
                }
            }
        }
    })
    .flat_map(stream::iter)
}

/// How long connecting to a model server may take by default.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest silence between two reads of a streaming response by default.
pub(crate) const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(300);
/// How much of an error body is read.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Longest wait a server's `Retry-After` may impose before we give up instead.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// Where and how a provider's API is reached. Its `Debug` output shows whether a key is set,
/// never the key.
#[derive(Clone)]
pub(crate) struct Endpoint {
    /// The provider's id in the configuration (`openai`, `anthropic`, `my-vllm`, …).
    pub(crate) provider: String,
    /// The API's base URL (for OpenAI-compatible APIs up to `/v1`).
    pub(crate) base_url: String,
    pub(crate) api_key: Option<String>,
    /// Where the key came from, for error messages (`OPENAI_API_KEY`).
    pub(crate) api_key_env: Option<String>,
    pub(crate) connect_timeout: Duration,
    pub(crate) read_timeout: Duration,
    /// Connections to model APIs open at once, shared by every provider of the daemon
    /// (`[daemon] max_model_connections`): a run past it waits for one to close instead of
    /// failing with "too many open files".
    pub(crate) connections: Arc<Semaphore>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("provider", &self.provider)
            .field(
                "base_url",
                &crate::secrets::redact_url_credentials(&self.base_url),
            )
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("api_key_env", &self.api_key_env)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .finish()
    }
}

impl Endpoint {
    pub(crate) fn new(provider: &str, base_url: &str) -> Self {
        Self {
            provider: provider.to_owned(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key: None,
            api_key_env: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            connections: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
        }
    }

    /// `text` with every occurrence of the API key replaced by `<redacted>`, and the
    /// credentials of every URL in it too (a `base_url` may carry `user:password@`; transport
    /// errors quote the URL).
    pub(crate) fn redact(&self, text: &str) -> String {
        let text = crate::secrets::redact_url_credentials(text);
        let text = match self.api_key.as_deref().map(str::trim) {
            // A key this short would redact ordinary words; no real provider issues one.
            Some(key) if key.len() >= 8 => text.replace(key, "<redacted>"),
            _ => text,
        };
        // The URL's password wherever it appears on its own (a server echoing it, say).
        match self.url_password() {
            Some(pw) if pw.len() >= 8 => text.replace(&pw, "<redacted>"),
            _ => text,
        }
    }

    /// The password in `base_url`'s user-info, if any.
    fn url_password(&self) -> Option<String> {
        let authority = self.base_url.split_once("://")?.1;
        let authority = authority.split(['/', '?', '#']).next()?;
        let userinfo = &authority[..authority.rfind('@')?];
        userinfo.split_once(':').map(|(_, pw)| pw.to_owned())
    }

    /// The error with the API key redacted from its message.
    pub(crate) fn redact_error(&self, mut e: ModelError) -> ModelError {
        e.message = self.redact(&e.message);
        e
    }

    /// `base_url` joined with `path` (which starts with `/`).
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// An HTTP client with this endpoint's timeouts.
    pub(crate) fn client(&self) -> Result<reqwest::Client, String> {
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return Err(format!(
                "base_url {:?} is not an http(s) URL",
                crate::secrets::redact_url_credentials(&self.base_url)
            ));
        }
        reqwest::Client::builder()
            // Idle keep-alive connections are a cache: after a burst of concurrent runs it would
            // otherwise hold one socket (and one task) per run for reqwest's default 90 s.
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout)
            .user_agent(concat!("crushd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))
    }

    /// A request that could not be sent or whose response did not start.
    pub(crate) fn send_error(&self, url: &str, e: &reqwest::Error) -> ModelError {
        if e.is_timeout() {
            return ModelError::transient(format!(
                "timed out waiting for the {} endpoint {url} ({}); is the server up and reachable?",
                self.provider,
                error_chain(e)
            ));
        }
        // The common case (a local server that is not running) in a few words a retry line
        // can show, instead of reqwest's five-level chain.
        if io_kind(e) == Some(std::io::ErrorKind::ConnectionRefused) {
            return ModelError::transient(format!(
                "connection refused by {url} (is the {} server running?)",
                self.provider
            ));
        }
        ModelError::transient(format!(
            "cannot reach the {} endpoint {url}: {}",
            self.provider,
            error_chain(e)
        ))
    }

    /// A server-sent-events stream that failed: a transport failure is looked at as the HTTP
    /// error it is (the SSE error type hides its source).
    pub(crate) fn sse_error(
        &self,
        url: &str,
        e: &eventsource_stream::EventStreamError<reqwest::Error>,
    ) -> ModelError {
        match e {
            eventsource_stream::EventStreamError::Transport(re) => {
                if re.is_timeout() {
                    return ModelError::transient(format!(
                        "timed out reading the stream from the {} endpoint {url} (no data for {} s; \
                         raise read_timeout for [providers.{}] if the model is just slow)",
                        self.provider,
                        self.read_timeout.as_secs_f64(),
                        self.provider
                    ));
                }
                self.stream_error(url, re)
            }
            other => self.stream_error(url, other),
        }
    }

    /// A read of a streaming body that failed (a timeout or a cut connection).
    pub(crate) fn stream_error(
        &self,
        url: &str,
        e: &(dyn std::error::Error + 'static),
    ) -> ModelError {
        let chain = error_chain(e);
        if chain.contains("timed out") || chain.contains("timeout") {
            return ModelError::transient(format!(
                "timed out reading the stream from the {} endpoint {url}: {chain}",
                self.provider
            ));
        }
        ModelError::transient(format!(
            "reading the stream from the {} endpoint {url} failed: {chain}",
            self.provider
        ))
    }

    /// A non-2xx answer: reads (a bounded part of) the body and says what to do about it.
    pub(crate) async fn status_error(
        &self,
        url: &str,
        model: &str,
        resp: reqwest::Response,
    ) -> ModelError {
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        let detail = read_error_body(resp).await;
        classify(self, url, model, status, retry_after, &detail)
    }
}

/// The error for an HTTP status, given the server's own explanation.
pub(crate) fn classify(
    ep: &Endpoint,
    url: &str,
    model: &str,
    status: StatusCode,
    retry_after: Option<Duration>,
    detail: &str,
) -> ModelError {
    let code = status.as_u16();
    let provider = &ep.provider;
    let message = match code {
        401 | 403 => {
            let key = match &ep.api_key_env {
                Some(var) => format!("check the API key in the environment variable {var}"),
                None if ep.api_key.is_some() => {
                    "check the `api_key` of this provider in the config file".to_owned()
                }
                None => format!(
                    "no API key is configured: set `api_key_env` for [providers.{provider}] in the \
                     config file"
                ),
            };
            format!(
                "provider {provider} refused the request ({code} {}): {detail}; {key}",
                reason(status)
            )
        }
        404 => format!(
            "provider {provider} does not know model {model:?} or the endpoint {url} ({code}): \
             {detail}; check the model id and the provider's base_url"
        ),
        429 => format!("provider {provider} is rate limiting requests (429): {detail}"),
        _ if status.is_server_error() => format!(
            "provider {provider} failed ({code} {}) at {url}: {detail}",
            reason(status)
        ),
        _ => format!(
            "provider {provider} answered {code} {} for {url}: {detail}",
            reason(status)
        ),
    };
    let retryable = code == 429 || code == 408 || status.is_server_error();
    ModelError {
        message: ep.redact(&message),
        status: Some(code),
        retryable,
        retry_after: retry_after.filter(|_| retryable),
        kind: if is_context_overflow(code, detail) {
            ModelErrorKind::ContextOverflow
        } else {
            ModelErrorKind::Other
        },
    }
}

/// Whether an error answer says the request is too large for the model: a 413, or a 400 whose
/// explanation is one of the providers' overflow messages (OpenAI's code
/// `context_length_exceeded` — kept in the detail by `read_error_body` — and its "maximum
/// context length" message; Anthropic's "prompt is too long"; the "context window" wording of
/// compatible servers).
fn is_context_overflow(code: u16, detail: &str) -> bool {
    if code == 413 {
        return true;
    }
    if code != 400 {
        return false;
    }
    let d = detail.to_ascii_lowercase();
    [
        "context_length_exceeded",
        "maximum context length",
        "prompt is too long",
        "exceeds the context window",
        "context window exceeded",
    ]
    .iter()
    .any(|m| d.contains(m))
}

fn reason(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("")
}

/// The wait a server asked for: `retry-after-ms` (OpenAI) or `Retry-After` in seconds or as an
/// HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate(v)?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only form servers send today.
fn httpdate(s: &str) -> Option<std::time::SystemTime> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let day: u64 = day.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as u64
        + 1;
    let year: u64 = year.parse().ok()?;
    let hms: Vec<u64> = time.split(':').filter_map(|p| p.parse().ok()).collect();
    let [h, m, sec] = hms.as_slice() else {
        return None;
    };
    // Days from the civil date (Howard Hinnant's algorithm), valid for years after 1970.
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    let secs = days * 86_400 + h * 3600 + m * 60 + sec;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(secs))
}

/// The message of an OpenAI- or Anthropic-style error body, or the start of the body as text.
async fn read_error_body(resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    let mut chunks = resp.bytes_stream();
    while let Some(Ok(chunk)) = chunks.next().await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_ERROR_BODY {
            body.truncate(MAX_ERROR_BODY);
            break;
        }
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    let parsed = serde_json::from_str::<Value>(&text).ok();
    // OpenAI says "too long" in the error's `code`; keep it beside the message so that
    // `classify` sees it (the message's wording has changed over time, the code has not).
    let code = parsed
        .as_ref()
        .and_then(|v| v.pointer("/error/code"))
        .and_then(Value::as_str)
        .filter(|c| *c == "context_length_exceeded");
    parsed
        .as_ref()
        .and_then(error_message)
        .map(|m| match code {
            Some(c) => format!("{m} ({c})"),
            None => m,
        })
        .unwrap_or_else(|| {
            let t = text.trim();
            if t.is_empty() {
                "(empty body)".to_owned()
            } else {
                t.chars().take(500).collect()
            }
        })
}

/// `{"error": {"message": …}}` (both APIs) or `{"error": "…"}` (some compatible servers).
pub(crate) fn error_message(v: &Value) -> Option<String> {
    let e = v.get("error")?;
    e.get("message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| e.as_str().map(str::to_owned))
}

/// An error and its sources, joined with `: `.
/// The kind of the I/O error at the root of `e`, if one is there.
fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = s.source();
    }
    None
}

pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        // reqwest repeats its source in its own message; say each thing once.
        let text = s.to_string();
        if !chain.contains(&text) {
            chain.push_str(": ");
            chain.push_str(&text);
        }
        source = s.source();
    }
    chain
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn ep() -> Endpoint {
        let mut e = Endpoint::new("anthropic", "https://api.anthropic.com");
        e.api_key_env = Some("ANTHROPIC_API_KEY".into());
        e
    }

    #[test]
    fn auth_errors_name_the_provider_and_the_key_variable() {
        let e = classify(&ep(), "u", "m", StatusCode::UNAUTHORIZED, None, "bad key");
        assert!(e.message.contains("anthropic"), "{}", e.message);
        assert!(e.message.contains("ANTHROPIC_API_KEY"), "{}", e.message);
        assert!(!e.retryable);
        let e = classify(&ep(), "u", "claude-x", StatusCode::NOT_FOUND, None, "nope");
        assert!(e.message.contains("\"claude-x\"") && e.message.contains("anthropic"));
    }

    #[test]
    fn the_key_is_redacted_from_error_messages() {
        let mut e = ep();
        e.api_key = Some("sk-test-SECRET-0123456789".into());
        let err = classify(
            &e,
            "u",
            "m",
            StatusCode::UNAUTHORIZED,
            None,
            "Incorrect API key provided: sk-test-SECRET-0123456789",
        );
        assert!(!err.message.contains("SECRET"), "{}", err.message);
        assert!(err.message.contains("<redacted>"), "{}", err.message);
        let err = e.redact_error(ModelError::new(
            "bad request for https://x/v1?key=sk-test-SECRET-0123456789",
        ));
        assert!(!err.message.contains("SECRET"), "{}", err.message);
        // Short "keys" (local servers accept anything) do not mangle messages.
        e.api_key = Some("x".into());
        assert_eq!(e.redact("x marks the spot"), "x marks the spot");
    }

    #[test]
    fn base_url_credentials_are_redacted_from_messages_and_debug() {
        let e = Endpoint::new("proxied", "https://bob:hunter2-long-pw@proxy.example/v1");
        let err = classify(
            &e,
            &e.url("/chat/completions"),
            "m",
            StatusCode::NOT_FOUND,
            None,
            "password hunter2-long-pw rejected",
        );
        assert!(!err.message.contains("hunter2"), "{}", err.message);
        assert!(
            err.message
                .contains("https://<redacted>@proxy.example/v1/chat/completions"),
            "{}",
            err.message
        );
        assert!(!format!("{e:?}").contains("hunter2"));
    }

    #[test]
    fn rate_limits_and_server_errors_are_retryable_with_the_servers_wait() {
        let e = classify(
            &ep(),
            "u",
            "m",
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(4)),
            "slow down",
        );
        assert!(e.retryable);
        assert_eq!(e.retry_after, Some(Duration::from_secs(4)));
        assert!(classify(&ep(), "u", "m", StatusCode::BAD_GATEWAY, None, "").retryable);
        assert!(!classify(&ep(), "u", "m", StatusCode::BAD_REQUEST, None, "").retryable);
    }

    #[test]
    fn overflow_answers_are_their_own_kind() {
        let over = |code, detail| {
            classify(
                &ep(),
                "u",
                "m",
                StatusCode::from_u16(code).unwrap(),
                None,
                detail,
            )
            .kind
        };
        let openai = "This model's maximum context length is 4000 tokens. However, your \
                      messages resulted in 5000 tokens. (context_length_exceeded)";
        assert_eq!(over(400, openai), ModelErrorKind::ContextOverflow);
        assert_eq!(
            over(400, "prompt is too long: 5000 tokens > 4000 maximum"),
            ModelErrorKind::ContextOverflow
        );
        assert_eq!(
            over(413, "request too large"),
            ModelErrorKind::ContextOverflow
        );
        assert_eq!(over(400, "bad tool schema"), ModelErrorKind::Other);
        assert_eq!(over(500, "prompt is too long"), ModelErrorKind::Other);
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert("retry-after-ms", "50".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(50)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        assert_eq!(
            httpdate("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(std::time::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
    }
}
