//! Models behind one trait. A model streams one step of a turn as [`ModelEvent`]s: text and
//! reasoning deltas, reasoning signatures and whole tool calls, then exactly one `Finish` or
//! `Error`. The run driver owns the stream; when the run is cancelled the stream ends at once (and
//! a provider drops its HTTP response, which closes the connection to the model server).
//!
//! Three APIs implement the trait: [`openai`] (any OpenAI-compatible Chat Completions API),
//! [`anthropic`] (the Messages API), both over [`http`] (the POST, the status check, the SSE loop,
//! errors a person can act on), and [`echo`] (a built-in diagnostic that streams the prompt back).
//! A provider is one of those APIs at an address with a key: the presets are `openai`,
//! `anthropic`, `openrouter` and `ollama` (the last two OpenAI-compatible) and `echo`, and a
//! `[providers.<id>]` table adds or overrides one ([`config`]). [`Models`] resolves a model by
//! name (`<provider>/<model id>`) and builds it on first use.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use tokio_util::sync::CancellationToken;

use crush_protocol::{ErrorCode, ModelInfo, RpcError};

use crate::sync::lock;
use config::{ApiKind, ModelsConfig, ProviderConfig};

pub(crate) mod anthropic;
pub(crate) mod config;
pub(crate) mod echo;
pub(crate) mod http;
pub(crate) mod image;
pub(crate) use image::Image;
pub(crate) mod openai;
pub(crate) mod price;
pub mod tokens;
pub(crate) mod windows;

/// A tool the model may call: its name, what it does, and a JSON Schema of its input object.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ToolSpec {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) parameters: serde_json::Value,
}

/// A tool call the model made: the provider's call id, the tool's name, and its input as the
/// JSON text the model produced (not parsed here: a model may produce invalid JSON, and the
/// tool reports that to it).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) input: String,
}

/// Reasoning the model showed, with the provider's signature when it sent one (Anthropic
/// requires the signed thinking block back in the same turn's tool loop).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Reasoning {
    pub(crate) text: String,
    pub(crate) signature: Option<String>,
}

/// One message of the conversation sent to the model.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ChatMessage {
    User {
        content: String,
        /// Shown after the text; only to a model that accepts images (`Conversation` replaces
        /// them with a note otherwise).
        images: Vec<Image>,
    },
    Assistant {
        text: String,
        reasoning: Option<Reasoning>,
        tool_calls: Vec<ToolCall>,
    },
    /// The result of one tool call; follows the assistant message that made the call.
    ToolResult {
        call_id: String,
        name: String,
        content: String,
        is_error: bool,
        /// Images the tool returned (an MCP tool's), as for `User`.
        images: Vec<Image>,
    },
}

impl ChatMessage {
    pub(crate) fn user(content: impl Into<String>) -> Self {
        ChatMessage::User {
            content: content.into(),
            images: Vec::new(),
        }
    }

    /// An assistant message with text only (tests build histories with it).
    #[cfg(test)]
    pub(crate) fn assistant(text: impl Into<String>) -> Self {
        ChatMessage::Assistant {
            text: text.into(),
            reasoning: None,
            tool_calls: Vec::new(),
        }
    }
}

/// One model step's input.
#[derive(Debug, Clone, Default)]
pub struct TurnRequest {
    /// The system prompt (empty for none).
    pub(crate) system: String,
    /// The conversation so far, oldest first.
    pub(crate) messages: Vec<ChatMessage>,
    /// The tools the model may call (empty for none).
    pub(crate) tools: Vec<ToolSpec>,
    /// Upper bound on the tokens of this step's output, when the model's limit is known.
    pub(crate) max_output_tokens: Option<u32>,
}

/// Why a step ended: the protocol's type, so the reason a provider reports is the one stored and
/// sent without a translation. A model reports only `EndTurn`, `MaxTokens` or `ToolUse`; the
/// others are the driver's.
pub use crush_protocol::FinishReason;

/// The tokens of one step (or, summed, of a turn) as the provider reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens, cached ones included (Anthropic's three input counts added up).
    pub(crate) prompt_tokens: u64,
    /// Output tokens, reasoning included.
    pub(crate) completion_tokens: u64,
    /// The part of `prompt_tokens` read from the provider's prompt cache.
    pub(crate) cached_tokens: u64,
    /// The part of `completion_tokens` spent reasoning (OpenAI reports it; Anthropic does not).
    pub(crate) reasoning_tokens: u64,
}

impl Usage {
    pub(crate) fn add(&mut self, step: &Usage) {
        self.prompt_tokens += step.prompt_tokens;
        self.completion_tokens += step.completion_tokens;
        self.cached_tokens += step.cached_tokens;
        self.reasoning_tokens += step.reasoning_tokens;
    }
}

/// A failed model call, with a message a person can act on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ModelError {
    pub(crate) message: String,
    /// The HTTP status, when the server answered with an error.
    pub(crate) status: Option<u16>,
    /// Worth trying again (429, 5xx, connection failures, a stream cut before any output).
    /// The driver retries only while nothing of the step was streamed.
    pub(crate) retryable: bool,
    /// How long the server asked us to wait (`Retry-After` / `retry-after-ms`).
    pub(crate) retry_after: Option<Duration>,
    /// What the failure says about the request, when the driver can act on it.
    pub(crate) kind: ModelErrorKind,
}

/// A failure the driver handles differently from the rest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum ModelErrorKind {
    #[default]
    Other,
    /// The request is larger than the model's context window (OpenAI
    /// `context_length_exceeded`, Anthropic "prompt is too long", a 413): the driver compacts
    /// the request once more and retries the step once.
    ContextOverflow,
}

impl ModelError {
    /// A permanent error.
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            status: None,
            retryable: false,
            retry_after: None,
            kind: ModelErrorKind::Other,
        }
    }

    /// An error worth retrying.
    pub(crate) fn transient(message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            ..Self::new(message)
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ModelEvent {
    TextDelta(String),
    ReasoningDelta(String),
    /// The signature of the reasoning streamed so far (Anthropic's `signature_delta`).
    ReasoningSignature(String),
    /// A complete tool call. Providers that stream a call in pieces emit it once it is whole,
    /// before the `Finish`.
    ToolCall(ToolCall),
    /// The step is complete; nothing follows.
    Finish {
        reason: FinishReason,
        usage: Usage,
    },
    /// The step failed; nothing follows.
    Error(ModelError),
}

pub(crate) type EventStream = Pin<Box<dyn Stream<Item = ModelEvent> + Send>>;

/// A model that streams steps.
///
/// `pub`, with the types its methods name, only because `runs` (a `pub` module) names it in a
/// `pub` field; their fields stay crate-private.
pub trait Model: Send + Sync + std::fmt::Debug {
    /// Name, provider and model id, as `model/list` shows them.
    fn info(&self) -> &ModelInfo;

    /// Streams one step. The stream yields deltas and tool calls, then exactly one `Finish` or
    /// `Error`, and
    /// ends early (yielding nothing more) as soon as `cancel` fires, releasing everything it holds
    /// (an HTTP response is dropped, closing the connection). It must not spawn work that
    /// outlives it.
    fn stream(&self, request: TurnRequest, cancel: CancellationToken) -> EventStream;
}

/// How a one-shot text call ([`complete`]) ended without its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallError {
    Cancelled,
    Failed(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Cancelled => f.write_str("cancelled"),
            CallError::Failed(e) => f.write_str(e),
        }
    }
}

/// One model call for its text alone (a summary, a title): the deltas collected, reasoning and
/// tool calls ignored, no retry. Returns the trimmed text (never empty) and the call's usage.
pub(crate) async fn complete(
    model: &dyn Model,
    request: TurnRequest,
    cancel: &CancellationToken,
) -> Result<(String, Usage), CallError> {
    use futures::StreamExt;
    let mut stream = model.stream(request, cancel.clone());
    let mut text = String::new();
    let usage = loop {
        let event = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(CallError::Cancelled),
            ev = stream.next() => ev,
        };
        match event {
            Some(ModelEvent::TextDelta(t)) => text.push_str(&t),
            Some(ModelEvent::Finish { usage, .. }) => break usage,
            Some(ModelEvent::Error(e)) => return Err(CallError::Failed(e.message)),
            Some(_) => {}
            None if cancel.is_cancelled() => return Err(CallError::Cancelled),
            None => {
                return Err(CallError::Failed(
                    "the model's stream ended without finishing".into(),
                ));
            }
        }
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(CallError::Failed("the model answered with no text".into()));
    }
    Ok((text.to_owned(), usage))
}

/// The built-in diagnostic provider's id (and its one model's id).
pub(crate) const ECHO: &str = "echo";

/// Default delay between two words of the built-in `echo` model.
pub(crate) const ECHO_DELAY: Duration = Duration::from_millis(20);

/// Every model the daemon can use, by name, and the default. Names are
/// `<provider>/<model id>`; a model id listed by exactly one provider may be used alone.
/// Models are built on first use and kept (one HTTP client per model).
#[derive(Debug)]
pub struct Models {
    default: Option<String>,
    providers: BTreeMap<String, ProviderConfig>,
    /// Models given directly by tests ([`Models::with`]), by name; empty in the daemon.
    fixed: BTreeMap<String, Arc<dyn Model>>,
    built: Mutex<HashMap<String, Arc<dyn Model>>>,
    /// Connections to model APIs open at once, every provider together.
    connections: Arc<tokio::sync::Semaphore>,
}

impl Models {
    pub fn from_config(cfg: &ModelsConfig) -> Self {
        Self {
            default: cfg.default.clone(),
            providers: cfg.providers.clone(),
            fixed: BTreeMap::new(),
            built: Mutex::default(),
            connections: Arc::new(tokio::sync::Semaphore::new(config::DEFAULT_MAX_CONNECTIONS)),
        }
    }

    /// At most `n` connections to model APIs at once (`[daemon] max_model_connections`); runs
    /// past it wait for a connection to close.
    pub(crate) fn with_connection_limit(mut self, n: usize) -> Self {
        self.connections = Arc::new(tokio::sync::Semaphore::new(
            n.clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
        ));
        self
    }

    /// A registry of the given models plus the presets: how tests put a scripted model in.
    #[cfg(test)]
    pub(crate) fn with(default: Option<&str>, models: Vec<Arc<dyn Model>>) -> Self {
        let mut me = Self::from_config(&ModelsConfig::default());
        for m in models {
            me.fixed.insert(m.info().name.clone(), m);
        }
        me.default = default.map(str::to_owned);
        me
    }

    pub fn default_name(&self) -> Option<&str> {
        self.default.as_deref()
    }

    /// The environment variables holding provider keys (scrubbed from tool processes).
    pub fn key_variables(&self) -> Vec<String> {
        let mut vars: Vec<String> = self
            .providers
            .values()
            .filter_map(|p| p.api_key_env.clone())
            .collect();
        vars.sort();
        vars.dedup();
        vars
    }

    /// The listed models of every provider, each with why it cannot be used, if it cannot.
    pub(crate) fn list(&self) -> Vec<ModelInfo> {
        let mut out: Vec<ModelInfo> = self.fixed.values().map(|m| m.info().clone()).collect();
        for (id, p) in &self.providers {
            let unavailable = key_of(id, p).err();
            for model in p.models.keys() {
                let mut info = info_for(id, p, model);
                info.unavailable = unavailable.clone();
                out.push(info);
            }
        }
        out
    }

    /// Whether `name` resolves to a usable model.
    pub fn check(&self, name: &str) -> Result<(), RpcError> {
        self.resolve(Some(name)).map(|_| ())
    }

    /// The model to use: the requested one, else the default. The error names what to set.
    pub(crate) fn resolve(&self, requested: Option<&str>) -> Result<Arc<dyn Model>, RpcError> {
        let name = match requested.map(str::trim).filter(|n| !n.is_empty()) {
            Some(n) => n,
            None => self.default.as_deref().ok_or_else(|| {
                not_configured(
                    "no model is configured: set `default_model = \"<provider>/<model>\"` in the \
                     daemon's config file (or CRUSHD_MODEL in its environment), or choose one \
                     with session/setModel or agent/send's `model` (see model/list; `echo` is \
                     a built-in diagnostic)",
                )
            })?,
        };
        if let Some(m) = self.fixed.get(name) {
            return Ok(m.clone());
        }
        let (provider_id, model_id) = self.split(name)?;
        let full = format!("{provider_id}/{model_id}");
        if let Some(m) = lock(&self.built).get(&full) {
            return Ok(m.clone());
        }
        let p = &self.providers[&provider_id];
        let info = info_for(&provider_id, p, &model_id);
        let model: Arc<dyn Model> = match p.api {
            ApiKind::Echo => Arc::new(echo::EchoModel::with_info(
                info,
                p.delay.unwrap_or(ECHO_DELAY),
            )),
            ApiKind::Openai | ApiKind::Anthropic => {
                let key = key_of(&provider_id, p).map_err(|why| {
                    not_configured(format!("model {full:?} is not usable: {why}"))
                })?;
                let mut ep = http::Endpoint::new(&provider_id, &p.base_url);
                ep.api_key = key;
                ep.api_key_env = p.api_key_env.clone();
                ep.connections = self.connections.clone();
                if let Some(d) = p.connect_timeout {
                    ep.connect_timeout = d;
                }
                if let Some(d) = p.read_timeout {
                    ep.read_timeout = d;
                }
                let built = if p.api == ApiKind::Openai {
                    openai::OpenAiModel::new(info, ep).map(|m| Arc::new(m) as Arc<dyn Model>)
                } else {
                    anthropic::AnthropicModel::new(info, ep).map(|m| Arc::new(m) as Arc<dyn Model>)
                };
                built
                    .map_err(|why| not_configured(format!("model {full:?} is not usable: {why}")))?
            }
        };
        lock(&self.built).insert(full, model.clone());
        Ok(model)
    }

    /// `(provider, model id)` for a name.
    fn split(&self, name: &str) -> Result<(String, String), RpcError> {
        if let Some((p, m)) = name.split_once('/')
            && self.providers.contains_key(p)
            && !m.trim().is_empty()
        {
            return Ok((p.to_owned(), m.to_owned()));
        }
        let owners: Vec<&String> = self
            .providers
            .iter()
            .filter(|(_, p)| p.models.contains_key(name))
            .map(|(id, _)| id)
            .collect();
        match owners.as_slice() {
            [one] => Ok(((*one).clone(), name.to_owned())),
            [] => {
                let ids: Vec<&str> = self.providers.keys().map(String::as_str).collect();
                Err(not_configured(format!(
                    "unknown model {name:?}: name it as \"<provider>/<model id>\" with a provider \
                     of: {} (see model/list); add a [providers.<id>] table to the config file \
                     for another",
                    ids.join(", ")
                )))
            }
            many => Err(not_configured(format!(
                "model {name:?} is offered by several providers ({}); name it as \
                 \"<provider>/{name}\"",
                many.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

fn info_for(provider_id: &str, p: &ProviderConfig, model: &str) -> ModelInfo {
    let limits = p.models.get(model).cloned().unwrap_or_default();
    let (window, max_output, source) = windows::resolve(model, Some(&limits));
    let echo = p.api == ApiKind::Echo;
    ModelInfo {
        name: format!("{provider_id}/{model}"),
        provider: provider_id.to_owned(),
        api: p.api.as_str().to_owned(),
        model: model.to_owned(),
        base_url: (p.api != ApiKind::Echo)
            .then(|| crate::secrets::redact_url_credentials(&p.base_url)),
        // The echo model answers without a model behind it: no window to budget.
        context_window: (!echo).then_some(window),
        max_output_tokens: if echo { None } else { max_output },
        context_window_source: (!echo).then_some(source),
        price: limits.price(),
        unavailable: None,
        images: limits.images.unwrap_or(false) && !echo,
    }
}

/// The provider's API key (`None` when it needs none), or why it is missing.
fn key_of(id: &str, p: &ProviderConfig) -> Result<Option<String>, String> {
    if let Some(k) = &p.api_key {
        return Ok(Some(k.trim().to_owned()));
    }
    match &p.api_key_env {
        None => Ok(None),
        Some(var) => match crate::secrets::var(var) {
            Some(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_owned())),
            _ => Err(format!(
                "provider {id} needs its API key in the environment variable {var}, which is not \
                 set in the daemon's environment (set it, then stop the daemon with \
                 `crushctl daemon stop` so the next client starts it with the new environment)"
            )),
        },
    }
}

fn not_configured(message: impl Into<String>) -> RpcError {
    RpcError::new(ErrorCode::ModelNotConfigured, message)
}
