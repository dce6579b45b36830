//! Models behind one trait. A model streams one step of a turn as [`ModelEvent`]s: text and
//! reasoning deltas, then exactly one `Finish` or `Error`. The run driver owns the stream; when
//! the run is cancelled the stream ends at once (and a provider drops its HTTP response, which
//! closes the connection to the model server).
//!
//! Providers: [`openai`] (any OpenAI-compatible Chat Completions API) and [`echo`] (a diagnostic
//! that streams the prompt back). [`Models`] resolves a model by name from the configuration.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio_util::sync::CancellationToken;

use crush_protocol::{ErrorCode, ModelInfo, RpcError};

use crate::config::{ModelConfig, ModelsConfig, ProviderKind};

pub mod echo;
pub mod openai;

/// Who said a message of the conversation sent to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// One model step's input: the conversation so far, oldest first.
#[derive(Debug, Clone, Default)]
pub struct TurnRequest {
    pub messages: Vec<ChatMessage>,
}

/// Why a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    EndTurn,
    MaxTokens,
    ToolUse,
}

impl FinishReason {
    /// The name stored with the message (`messages.finish_reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::EndTurn => "end_turn",
            FinishReason::MaxTokens => "max_tokens",
            FinishReason::ToolUse => "tool_use",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// A failed model call, with a message a person can act on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ModelError {
    pub message: String,
    /// The HTTP status, when the server answered with an error.
    pub status: Option<u16>,
}

impl ModelError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            status: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ModelEvent {
    TextDelta(String),
    ReasoningDelta(String),
    /// The step is complete; nothing follows.
    Finish {
        reason: FinishReason,
        usage: Usage,
    },
    /// The step failed; nothing follows.
    Error(ModelError),
}

pub type EventStream = Pin<Box<dyn Stream<Item = ModelEvent> + Send>>;

/// A model that streams steps.
pub trait Model: Send + Sync + std::fmt::Debug {
    /// Name, provider and model id, as `model/list` shows them.
    fn info(&self) -> &ModelInfo;

    /// Streams one step. The stream yields deltas and then exactly one `Finish` or `Error`, and
    /// ends early (yielding nothing more) as soon as `cancel` fires, releasing everything it holds
    /// (an HTTP response is dropped, closing the connection). It must not spawn work that
    /// outlives it.
    fn stream(&self, request: TurnRequest, cancel: CancellationToken) -> EventStream;
}

/// The built-in diagnostic model's name.
pub const ECHO: &str = "echo";

/// Default delay between two words of the built-in `echo` model.
pub const ECHO_DELAY: Duration = Duration::from_millis(20);

/// Every model the daemon can use, by name, and the default.
#[derive(Debug, Clone)]
pub struct Models {
    default: Option<String>,
    entries: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    info: ModelInfo,
    model: Option<Arc<dyn Model>>,
}

impl Models {
    /// Builds the models of a configuration. A model whose API key variable is unset is listed
    /// with the reason and refused when used.
    pub fn from_config(cfg: &ModelsConfig) -> Self {
        let mut entries = BTreeMap::new();
        let echo: Arc<dyn Model> = Arc::new(echo::EchoModel::new(ECHO, ECHO_DELAY));
        entries.insert(
            ECHO.to_owned(),
            Entry {
                info: echo.info().clone(),
                model: Some(echo),
            },
        );
        for (name, m) in &cfg.entries {
            entries.insert(name.clone(), build(name, m));
        }
        Self {
            default: cfg.default.clone(),
            entries,
        }
    }

    /// A registry of the given models (for tests and embedding), plus `echo`.
    pub fn with(default: Option<&str>, models: Vec<Arc<dyn Model>>) -> Self {
        let mut me = Self::from_config(&ModelsConfig::default());
        for m in models {
            me.entries.insert(
                m.info().name.clone(),
                Entry {
                    info: m.info().clone(),
                    model: Some(m),
                },
            );
        }
        me.default = default.map(str::to_owned);
        me
    }

    pub fn default_name(&self) -> Option<&str> {
        self.default.as_deref()
    }

    pub fn list(&self) -> Vec<ModelInfo> {
        self.entries.values().map(|e| e.info.clone()).collect()
    }

    /// The model to use: the requested one, else the default. The error names what to set.
    pub fn resolve(&self, requested: Option<&str>) -> Result<Arc<dyn Model>, RpcError> {
        let name = match requested.map(str::trim).filter(|n| !n.is_empty()) {
            Some(n) => n,
            None => self.default.as_deref().ok_or_else(|| {
                not_configured(
                    "no model is configured: set `default_model` (and a [models.<name>] table) in \
                     the daemon's config file, or CRUSHD_MODEL in its environment, or pass `model` \
                     (see model/list; `echo` is a built-in diagnostic)",
                )
            })?,
        };
        let entry = self.entries.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.entries.keys().map(String::as_str).collect();
            not_configured(format!(
                "unknown model {name:?}; configured: {}; add a [models.{name}] table to the config file",
                known.join(", ")
            ))
        })?;
        match &entry.model {
            Some(m) => Ok(m.clone()),
            None => Err(not_configured(format!(
                "model {name:?} is not usable: {}",
                entry
                    .info
                    .unavailable
                    .as_deref()
                    .unwrap_or("unknown reason")
            ))),
        }
    }
}

fn not_configured(message: impl Into<String>) -> RpcError {
    RpcError::new(ErrorCode::ModelNotConfigured, message)
}

fn build(name: &str, m: &ModelConfig) -> Entry {
    match m.provider {
        ProviderKind::Echo => {
            let model: Arc<dyn Model> = Arc::new(echo::EchoModel::new(
                name,
                m.delay.map(|d| d.0).unwrap_or(ECHO_DELAY),
            ));
            Entry {
                info: model.info().clone(),
                model: Some(model),
            }
        }
        ProviderKind::Openai => {
            let base_url = m
                .base_url
                .clone()
                .unwrap_or_else(|| openai::DEFAULT_BASE_URL.to_owned());
            let model_id = m.model.clone().unwrap_or_default();
            let mut info = ModelInfo {
                name: name.to_owned(),
                provider: "openai".to_owned(),
                model: model_id.clone(),
                base_url: Some(base_url.clone()),
                unavailable: None,
            };
            let key = match &m.api_key_env {
                None => Ok(None),
                Some(var) => match std::env::var(var) {
                    Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_owned())),
                    _ => Err(format!(
                        "its API key variable {var} is not set in the daemon's environment \
                         (set it, then restart the daemon with `crushctl daemon stop`)"
                    )),
                },
            };
            match key.and_then(|key| openai::OpenAiModel::new(info.clone(), key)) {
                Ok(model) => Entry {
                    info,
                    model: Some(Arc::new(model)),
                },
                Err(why) => {
                    info.unavailable = Some(why);
                    Entry { info, model: None }
                }
            }
        }
    }
}
