//! The one module that uses the MCP SDK (`rmcp`, pinned in the workspace): the client side of a
//! connection to one server over a byte stream (stdio) or streamable HTTP — `initialize` and
//! version negotiation as the SDK does them, `tools/list`, `tools/call`, the `notifications/cancelled` the SDK sends when a call
//! is dropped, and `notifications/tools/list_changed`.
//!
//! What leaves this module is the specification's JSON (a tool as `tools/list` gives it, a
//! result as `tools/call` gives it) and our own error type, never an SDK type: the SDK's API
//! changes between releases, the protocol's JSON changes far less, so an SDK upgrade touches only
//! this file.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rmcp::model::{CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation};
use rmcp::service::{NotificationContext, Peer, RoleClient, ServiceError, ServiceExt};
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;

/// Why a request to the server failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum SdkError {
    /// The connection ended (the server exited or closed its output).
    #[error("the connection to the server closed")]
    Closed,
    /// The server answered with a JSON-RPC error.
    #[error("the server answered with an error: {0}")]
    Server(String),
    /// Anything else the SDK reports (an unexpected answer, a write that failed).
    #[error("{0}")]
    Other(String),
}

impl From<ServiceError> for SdkError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::TransportClosed => Self::Closed,
            ServiceError::McpError(e) => Self::Server(format!("{} (code {})", e.message, e.code.0)),
            other => Self::Other(other.to_string()),
        }
    }
}

/// What the server said about itself at `initialize`.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServerInfo {
    pub name: Option<String>,
    pub version: Option<String>,
    pub protocol_version: Option<String>,
}

/// `notifications/tools/list_changed` as it arrives: a count, so a reader can tell whether the
/// tool list it holds was listed after the last notice, and a wake-up for the supervisor that
/// re-lists.
#[derive(Debug, Default)]
pub(crate) struct ListChanged {
    count: AtomicU64,
    wake: Notify,
}

impl ListChanged {
    fn signal(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// How many notices arrived so far.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits for a notice (one that arrived while nobody waited counts).
    pub(crate) async fn notified(&self) {
        self.wake.notified().await;
    }
}

/// Our side of the connection: answers the server's requests with the SDK's defaults and
/// records `notifications/tools/list_changed`.
struct Handler {
    tools_changed: Arc<ListChanged>,
}

impl rmcp::ClientHandler for Handler {
    fn on_tool_list_changed(
        &self,
        _context: NotificationContext<RoleClient>,
    ) -> impl Future<Output = ()> + Send + '_ {
        self.tools_changed.signal();
        std::future::ready(())
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("crushd", env!("CARGO_PKG_VERSION")),
        )
    }
}

/// A live connection. Cheap to clone; calls may run concurrently.
#[derive(Clone)]
pub(crate) struct Connection {
    peer: Peer<RoleClient>,
    stop: tokio_util::sync::CancellationToken,
    pub info: ServerInfo,
}

/// Initializes a connection over `reader`/`writer` (a server's stdout and stdin). Returns the
/// connection and a future that ends, with a reason, when the connection does; the caller
/// polls it (it owns the SDK's service task). `tools_changed` is notified on
/// `notifications/tools/list_changed`.
pub(crate) async fn connect<R, W>(
    reader: R,
    writer: W,
    tools_changed: Arc<ListChanged>,
) -> Result<(Connection, Ended), SdkError>
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    serve((reader, writer), tools_changed).await
}

/// Initializes a connection to a streamable-HTTP server at `url`, sending `headers` with every
/// request. TLS is rustls with the ring provider (as for the model providers).
pub(crate) async fn connect_http(
    url: &str,
    headers: &[(String, String)],
    tools_changed: Arc<ListChanged>,
) -> Result<(Connection, Ended), SdkError> {
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

    let mut map = std::collections::HashMap::new();
    for (k, v) in headers {
        let name = http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| SdkError::Other(format!("header {k:?}: {e}")))?;
        let value = http::HeaderValue::from_str(v).map_err(|_| {
            SdkError::Other(format!(
                "header {k:?}: the value is not a valid header value"
            ))
        })?;
        map.insert(name, value);
    }
    // reqwest 0.13 without a provider of its own uses the process default: ring, installed once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest013::Client::builder()
        .build()
        .map_err(|e| SdkError::Other(format!("cannot set up HTTP: {e}")))?;
    let config = StreamableHttpClientTransportConfig::with_uri(url.to_owned()).custom_headers(map);
    serve(
        StreamableHttpClientTransport::with_client(client, config),
        tools_changed,
    )
    .await
}

/// The future that ends with the connection, saying why.
pub(crate) type Ended = std::pin::Pin<Box<dyn Future<Output = String> + Send>>;

async fn serve<T, E, A>(
    transport: T,
    tools_changed: Arc<ListChanged>,
) -> Result<(Connection, Ended), SdkError>
where
    T: rmcp::transport::IntoTransport<RoleClient, E, A>,
    E: std::error::Error + Send + Sync + 'static,
{
    let stop = tokio_util::sync::CancellationToken::new();
    let service = Handler { tools_changed }
        .serve_with_ct(transport, stop.clone())
        .await
        .map_err(|e| SdkError::Other(format!("initialize failed: {e}")))?;
    let peer = service.peer().clone();
    let info = peer
        .peer_info()
        .map(|i| ServerInfo {
            name: i.server_info.as_ref().map(|s| s.name.clone()),
            version: i.server_info.as_ref().map(|s| s.version.clone()),
            protocol_version: Some(i.protocol_version.to_string()),
        })
        .unwrap_or_default();
    let ended: Ended = Box::pin(async move {
        match service.waiting().await {
            Ok(rmcp::service::QuitReason::Cancelled) => "the connection was closed".to_owned(),
            Ok(rmcp::service::QuitReason::Closed) => "the server closed the connection".to_owned(),
            Ok(_) | Err(_) => "the connection failed".to_owned(),
        }
    });
    Ok((Connection { peer, stop, info }, ended))
}

impl Connection {
    /// Every tool (all pages of `tools/list`), each as the specification's `Tool` object.
    pub(crate) async fn list_tools(&self) -> Result<Vec<Value>, SdkError> {
        let tools = self.peer.list_all_tools().await?;
        tools
            .iter()
            .map(|t| serde_json::to_value(t).map_err(|e| SdkError::Other(e.to_string())))
            .collect()
    }

    /// One `tools/call`; its result as the specification's `CallToolResult` object. Dropping
    /// the future before the answer sends the server `notifications/cancelled` for it.
    pub(crate) async fn call_tool(
        &self,
        tool: &str,
        arguments: Map<String, Value>,
    ) -> Result<Value, SdkError> {
        let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments);
        let result = self.peer.call_tool(params).await?;
        serde_json::to_value(&result).map_err(|e| SdkError::Other(e.to_string()))
    }

    /// Ends the connection (the SDK closes the transport: the server's stdin).
    pub(crate) fn close(&self) {
        self.stop.cancel();
    }
}
