//! The daemon's settings: built-in defaults, overlaid by the config file
//! (`$XDG_CONFIG_HOME/crushd/config.toml`), overlaid by command-line flags. A bad file is an error
//! that names the file, the line and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default idle exit delay: no connections for this long and the daemon exits.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Effective daemon settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Socket path (or named pipe path on Windows).
    pub socket: PathBuf,
    /// Where logs go in background mode.
    pub state_dir: PathBuf,
    /// Where the database lives (`$XDG_DATA_HOME/crushd`).
    pub data_dir: PathBuf,
    /// Exit after this long without connections; `None` means never.
    pub idle_timeout: Option<Duration>,
    /// Largest accepted message body in bytes.
    pub max_message_size: usize,
    /// Enables the `debug/*` diagnostic methods.
    pub debug_methods: bool,
    /// How long a graceful shutdown waits for runs to end and then for connections to drain.
    pub shutdown_grace: Duration,
    /// Longest time streamed text waits in memory before it is written to the database.
    pub flush_interval: Duration,
    /// How long a dropped client's claims and subscriptions wait for it to reconnect.
    pub claim_grace: Duration,
    /// How long a workspace with no claims, runs or subscribers stays loaded.
    pub workspace_idle: Duration,
    /// The replay log of each session keeps at most this many events…
    pub replay_events: usize,
    /// …and at most this many bytes.
    pub replay_bytes: usize,
    /// Every session's replay log together holds at most this many bytes; past it the oldest
    /// events go first.
    pub replay_budget: usize,
    /// Message bodies being received or parsed, on every connection together, take at most
    /// this many bytes; a message that would pass it is refused with `Overloaded`.
    pub inbound_budget: usize,
    /// Connections to one provider's API open at once; more runs wait for one to free.
    pub max_model_connections: usize,
    /// A connection whose unread messages pass this many bytes is closed.
    pub max_outbound_bytes: usize,
    /// A connection that has not sent a successful `initialize` this long after connecting is
    /// closed; zero means never.
    pub handshake_timeout: Duration,
    /// A message whose first bytes arrived must be complete within this time, or the
    /// connection is closed; zero means never.
    pub frame_timeout: Duration,
    /// Requests one connection may have in flight; more are refused with `Overloaded`.
    pub max_in_flight: usize,
    /// Connections open at once; more are answered with an `Overloaded` error and closed.
    pub max_connections: usize,
    /// The providers (built-in presets overlaid by `[providers.<id>]` tables) and the default
    /// model.
    pub models: ModelsConfig,
    /// How runs behave (`[agent]`).
    pub agent: AgentSettings,
    /// What tools may do without asking (`[permissions]`).
    pub permissions: PermissionRules,
}

/// The `default_model` key and the providers, presets included.
#[derive(Debug, Clone)]
pub struct ModelsConfig {
    /// `<provider>/<model id>`, or a model id listed by exactly one provider.
    pub default: Option<String>,
    pub providers: BTreeMap<String, ProviderConfig>,
}

impl Default for ModelsConfig {
    /// The presets only.
    fn default() -> Self {
        Self {
            default: None,
            providers: presets(),
        }
    }
}

/// One provider as the daemon uses it: a preset, a `[providers.<id>]` table, or both merged.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    pub api: ApiKind,
    pub base_url: String,
    /// The name of the environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// A key written into the config file (discouraged; `config/get` never shows it).
    pub api_key: Option<String>,
    pub connect_timeout: Option<Duration>,
    pub read_timeout: Option<Duration>,
    /// `echo` only: the pause between two words.
    pub delay: Option<Duration>,
    /// Models known to this provider with their limits. Other model ids may be used too.
    pub models: BTreeMap<String, ModelLimits>,
    /// Whether this provider comes from the built-in presets (possibly adjusted by the file).
    pub preset: bool,
}

/// What is known about one model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelLimits {
    /// Tokens of input and output together.
    pub context_window: Option<u64>,
    /// Longest output of one step, sent as the request's token cap.
    pub max_output_tokens: Option<u32>,
}

/// `[agent]`: how runs behave.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSettings {
    /// Model calls in one run before it is stopped.
    pub max_steps: u32,
    /// Tries of one model call (the first and the retries) on 429, 5xx and connection errors.
    pub max_attempts: u32,
    /// First retry delay; doubles with each retry (a server's `Retry-After` wins).
    pub retry_base_delay: Duration,
    /// Longest delay between two tries.
    pub retry_max_delay: Duration,
    /// Default and longest time a `bash` tool call may run.
    pub bash_timeout: Duration,
    pub bash_max_timeout: Duration,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            max_steps: 50,
            max_attempts: 5,
            retry_base_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(30),
            bash_timeout: Duration::from_secs(120),
            bash_max_timeout: Duration::from_secs(600),
        }
    }
}

/// `[permissions]`: tool calls that run without asking.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionRules {
    /// Tools that never ask (`"edit"`, `"write"`, `"bash"`).
    #[serde(default)]
    pub allow: Vec<String>,
    /// `bash` commands that never ask, by prefix of whole words (`"cargo test"` allows
    /// `cargo test -p x`, not `cargo testx`). Commands with shell control characters always ask.
    #[serde(default)]
    pub allow_bash: Vec<String>,
    /// Environment variables passed to tool processes although they look like secrets
    /// (`crate::secrets::is_secret`), e.g. `SSH_AUTH_SOCK` for `git push` over SSH. Provider key
    /// variables are never passed, listed or not.
    #[serde(default)]
    pub allow_env: Vec<String>,
}

/// The providers every daemon knows: each needs nothing but its key (Ollama not even that).
pub fn presets() -> BTreeMap<String, ProviderConfig> {
    fn models(list: &[(&str, u64, u32)]) -> BTreeMap<String, ModelLimits> {
        list.iter()
            .map(|(id, ctx, out)| {
                (
                    (*id).to_owned(),
                    ModelLimits {
                        context_window: Some(*ctx),
                        max_output_tokens: Some(*out),
                    },
                )
            })
            .collect()
    }
    let preset =
        |api, base_url: &str, key: Option<&str>, list: &[(&str, u64, u32)]| ProviderConfig {
            api,
            base_url: base_url.to_owned(),
            api_key_env: key.map(str::to_owned),
            api_key: None,
            connect_timeout: None,
            read_timeout: None,
            delay: None,
            models: models(list),
            preset: true,
        };
    let mut out = BTreeMap::new();
    out.insert(
        "openai".to_owned(),
        preset(
            ApiKind::Openai,
            "https://api.openai.com/v1",
            Some("OPENAI_API_KEY"),
            &[
                ("gpt-5", 400_000, 128_000),
                ("gpt-5-mini", 400_000, 128_000),
                ("gpt-4.1", 1_047_576, 32_768),
                ("gpt-4.1-mini", 1_047_576, 32_768),
            ],
        ),
    );
    out.insert(
        "anthropic".to_owned(),
        preset(
            ApiKind::Anthropic,
            "https://api.anthropic.com",
            Some("ANTHROPIC_API_KEY"),
            &[
                ("claude-sonnet-4-5", 200_000, 64_000),
                ("claude-opus-4-1", 200_000, 32_000),
                ("claude-haiku-4-5", 200_000, 64_000),
            ],
        ),
    );
    out.insert(
        "openrouter".to_owned(),
        preset(
            ApiKind::Openai,
            "https://openrouter.ai/api/v1",
            Some("OPENROUTER_API_KEY"),
            &[
                ("anthropic/claude-sonnet-4.5", 200_000, 64_000),
                ("openai/gpt-5", 400_000, 128_000),
            ],
        ),
    );
    out.insert(
        "ollama".to_owned(),
        preset(ApiKind::Openai, "http://127.0.0.1:11434/v1", None, &[]),
    );
    let mut echo = preset(ApiKind::Echo, "builtin:echo", None, &[]);
    echo.models
        .insert("echo".to_owned(), ModelLimits::default());
    out.insert(crate::model::ECHO.to_owned(), echo);
    out
}

/// Default for `[daemon] claim_grace`.
pub const DEFAULT_CLAIM_GRACE: Duration = Duration::from_secs(30);
/// Default for `[daemon] workspace_idle`.
pub const DEFAULT_WORKSPACE_IDLE: Duration = Duration::from_secs(60);
/// Default for `[daemon] replay_events`.
pub const DEFAULT_REPLAY_EVENTS: usize = 10_000;
/// Default for `[daemon] replay_bytes`.
pub const DEFAULT_REPLAY_BYTES: usize = 64 << 20;
/// Default for `[daemon] replay_budget`.
pub const DEFAULT_REPLAY_BUDGET: usize = 128 << 20;
/// Default for `[daemon] inbound_budget`.
pub const DEFAULT_INBOUND_BUDGET: usize = 128 << 20;
/// Default for `[daemon] max_model_connections`.
pub const DEFAULT_MAX_MODEL_CONNECTIONS: usize = 256;
/// Default for `[daemon] max_outbound_bytes`.
pub const DEFAULT_MAX_OUTBOUND_BYTES: usize = 64 << 20;

/// Default for `[daemon] handshake_timeout`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for `[daemon] frame_timeout`.
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for `[daemon] max_in_flight`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 128;
/// Default for `[daemon] max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Environment variable naming the default model; overrides `default_model`.
pub const MODEL_ENV: &str = "CRUSHD_MODEL";

impl Config {
    /// Defaults for the given socket; everything else from the standard directories.
    pub fn new(socket: PathBuf) -> Self {
        Self {
            socket,
            state_dir: crush_protocol::paths::state_dir(),
            data_dir: default_data_dir(),
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            max_message_size: crush_protocol::codec::DEFAULT_MAX_MESSAGE_SIZE,
            debug_methods: false,
            shutdown_grace: Duration::from_secs(5),
            flush_interval: crate::store::live::DEFAULT_FLUSH_INTERVAL,
            claim_grace: DEFAULT_CLAIM_GRACE,
            workspace_idle: DEFAULT_WORKSPACE_IDLE,
            replay_events: DEFAULT_REPLAY_EVENTS,
            replay_bytes: DEFAULT_REPLAY_BYTES,
            replay_budget: DEFAULT_REPLAY_BUDGET,
            inbound_budget: DEFAULT_INBOUND_BUDGET,
            max_model_connections: DEFAULT_MAX_MODEL_CONNECTIONS,
            max_outbound_bytes: DEFAULT_MAX_OUTBOUND_BYTES,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            frame_timeout: DEFAULT_FRAME_TIMEOUT,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            models: ModelsConfig::default(),
            agent: AgentSettings::default(),
            permissions: PermissionRules::default(),
        }
    }

    /// Applies the environment's overrides (`CRUSHD_MODEL`).
    pub fn apply_env(&mut self) {
        if let Ok(m) = std::env::var(MODEL_ENV)
            && !m.trim().is_empty()
        {
            self.models.default = Some(m.trim().to_owned());
        }
    }

    /// Applies a parsed config file.
    pub fn apply_file(&mut self, file: &ConfigFile) {
        if let Some(t) = file.daemon.idle_timeout {
            self.idle_timeout = t.0;
        }
        if let Some(n) = file.daemon.max_message_size {
            self.max_message_size = n;
        }
        if let Some(d) = &file.daemon.data_dir {
            self.data_dir = d.clone();
        }
        if let Some(d) = file.daemon.flush_interval {
            self.flush_interval = d.0;
        }
        if let Some(d) = file.daemon.claim_grace {
            self.claim_grace = d.0;
        }
        if let Some(d) = file.daemon.workspace_idle {
            self.workspace_idle = d.0;
        }
        if let Some(n) = file.daemon.replay_events {
            self.replay_events = n;
        }
        if let Some(n) = file.daemon.replay_bytes {
            self.replay_bytes = n;
        }
        if let Some(n) = file.daemon.replay_budget {
            self.replay_budget = n;
        }
        if let Some(n) = file.daemon.inbound_budget {
            self.inbound_budget = n;
        }
        if let Some(n) = file.daemon.max_model_connections {
            self.max_model_connections = n;
        }
        if let Some(n) = file.daemon.max_outbound_bytes {
            self.max_outbound_bytes = n;
        }
        if let Some(d) = file.daemon.handshake_timeout {
            self.handshake_timeout = d.0;
        }
        if let Some(d) = file.daemon.frame_timeout {
            self.frame_timeout = d.0;
        }
        if let Some(n) = file.daemon.max_in_flight {
            self.max_in_flight = n;
        }
        if let Some(n) = file.daemon.max_connections {
            self.max_connections = n;
        }
        if let Some(m) = &file.default_model {
            self.models.default = Some(m.clone());
        }
        for (id, table) in &file.providers {
            let merged = match self.models.providers.remove(id) {
                Some(preset) => table.over(preset),
                // parse_file checked that a new provider names its type and base URL.
                None => table.over(ProviderConfig {
                    api: table.r#type.unwrap_or(ApiKind::Openai),
                    base_url: String::new(),
                    api_key_env: None,
                    api_key: None,
                    connect_timeout: None,
                    read_timeout: None,
                    delay: None,
                    models: BTreeMap::new(),
                    preset: false,
                }),
            };
            self.models.providers.insert(id.clone(), merged);
        }
        let a = &file.agent;
        let agent = &mut self.agent;
        if let Some(n) = a.max_steps {
            agent.max_steps = n;
        }
        if let Some(n) = a.max_attempts {
            agent.max_attempts = n;
        }
        if let Some(d) = a.retry_base_delay {
            agent.retry_base_delay = d.0;
        }
        if let Some(d) = a.retry_max_delay {
            agent.retry_max_delay = d.0;
        }
        if let Some(d) = a.bash_timeout {
            agent.bash_timeout = d.0;
        }
        if let Some(d) = a.bash_max_timeout {
            agent.bash_max_timeout = d.0;
        }
        self.permissions = file.permissions.clone();
    }
}

impl Config {
    /// The effective configuration for `config/get`: every setting, with API keys replaced by
    /// whether one is available. Key *variable names* are shown; key values never are.
    pub fn redacted(&self) -> serde_json::Value {
        use serde_json::json;
        let ms = |d: Duration| d.as_millis() as u64;
        let providers: serde_json::Map<String, serde_json::Value> = self
            .models
            .providers
            .iter()
            .map(|(id, p)| {
                let key_set = p.api_key.is_some()
                    || p.api_key_env.as_deref().is_some_and(|v| {
                        crate::secrets::var(v).is_some_and(|k| !k.trim().is_empty())
                    });
                let models: serde_json::Map<String, serde_json::Value> = p
                    .models
                    .iter()
                    .map(|(m, l)| {
                        (
                            m.clone(),
                            json!({
                                "contextWindow": l.context_window,
                                "maxOutputTokens": l.max_output_tokens,
                            }),
                        )
                    })
                    .collect();
                let mut v = json!({
                    "type": p.api.as_str(),
                    "baseUrl": crate::secrets::redact_url_credentials(&p.base_url),
                    "apiKeyEnv": p.api_key_env,
                    "apiKeySet": key_set,
                    "preset": p.preset,
                    "models": models,
                });
                if p.api_key.is_some() {
                    v["apiKey"] = json!("<redacted>");
                }
                if let Some(d) = p.connect_timeout {
                    v["connectTimeoutMs"] = json!(ms(d));
                }
                if let Some(d) = p.read_timeout {
                    v["readTimeoutMs"] = json!(ms(d));
                }
                (id.clone(), v)
            })
            .collect();
        json!({
            "defaultModel": self.models.default,
            "providers": providers,
            "agent": {
                "maxSteps": self.agent.max_steps,
                "maxAttempts": self.agent.max_attempts,
                "retryBaseDelayMs": ms(self.agent.retry_base_delay),
                "retryMaxDelayMs": ms(self.agent.retry_max_delay),
                "bashTimeoutMs": ms(self.agent.bash_timeout),
                "bashMaxTimeoutMs": ms(self.agent.bash_max_timeout),
            },
            "permissions": {
                "allow": self.permissions.allow,
                "allowBash": self.permissions.allow_bash,
                "allowEnv": self.permissions.allow_env,
            },
            "daemon": {
                "socket": self.socket.display().to_string(),
                "dataDir": self.data_dir.display().to_string(),
                "stateDir": self.state_dir.display().to_string(),
                "idleTimeoutMs": self.idle_timeout.map(ms),
                "maxMessageSize": self.max_message_size,
                "flushIntervalMs": ms(self.flush_interval),
                "shutdownGraceMs": ms(self.shutdown_grace),
                "claimGraceMs": ms(self.claim_grace),
                "workspaceIdleMs": ms(self.workspace_idle),
                "replayEvents": self.replay_events,
                "replayBytes": self.replay_bytes,
                "replayBudget": self.replay_budget,
                "inboundBudget": self.inbound_budget,
                "maxModelConnections": self.max_model_connections,
                "maxOutboundBytes": self.max_outbound_bytes,
                "handshakeTimeoutMs": ms(self.handshake_timeout),
                "frameTimeoutMs": ms(self.frame_timeout),
                "maxInFlight": self.max_in_flight,
                "maxConnections": self.max_connections,
            },
        })
    }
}

/// `$XDG_DATA_HOME/crushd` (or the platform's equivalent).
pub fn default_data_dir() -> PathBuf {
    directories::ProjectDirs::from("", "", "crushd")
        .map(|d| d.data_dir().to_path_buf())
        .unwrap_or_else(|| std::env::temp_dir().join("crushd-data"))
}

/// Where the config file is looked for when `--config` is not given.
pub fn default_config_path() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "crushd").map(|d| d.config_dir().join("config.toml"))
}

/// The config file's contents. Unknown keys are errors, so a typo is never silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub daemon: DaemonSection,
    /// The model runs use when neither the send nor the session names one:
    /// `<provider>/<model id>`.
    pub default_model: Option<String>,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderTable>,
    #[serde(default)]
    pub agent: AgentSection,
    #[serde(default)]
    pub permissions: PermissionRules,
}

/// Which API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiKind {
    /// Any OpenAI-compatible Chat Completions API.
    #[serde(alias = "openai-compatible")]
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
    /// The built-in diagnostic echo model.
    Echo,
}

impl ApiKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiKind::Openai => "openai",
            ApiKind::Anthropic => "anthropic",
            ApiKind::Echo => "echo",
        }
    }
}

/// One `[providers.<id>]` table. For a preset id every key is optional and overrides the preset.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderTable {
    pub r#type: Option<ApiKind>,
    /// The API's base URL (OpenAI-compatible: up to `/v1`).
    pub base_url: Option<String>,
    /// The name of the environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// The key itself (prefer `api_key_env`).
    pub api_key: Option<String>,
    pub connect_timeout: Option<HumanDuration>,
    pub read_timeout: Option<HumanDuration>,
    /// `echo` only: the pause between two words.
    pub delay: Option<HumanDuration>,
    #[serde(default)]
    pub models: BTreeMap<String, ModelLimits>,
}

impl ProviderTable {
    fn over(&self, mut base: ProviderConfig) -> ProviderConfig {
        if let Some(t) = self.r#type {
            base.api = t;
        }
        if let Some(u) = &self.base_url {
            base.base_url = u.trim_end_matches('/').to_owned();
        }
        if let Some(k) = &self.api_key_env {
            base.api_key_env = Some(k.clone());
        }
        if let Some(k) = &self.api_key {
            base.api_key = Some(k.clone());
            // An inline key wins over the preset's variable.
            if self.api_key_env.is_none() {
                base.api_key_env = None;
            }
        }
        if let Some(d) = self.connect_timeout {
            base.connect_timeout = Some(d.0);
        }
        if let Some(d) = self.read_timeout {
            base.read_timeout = Some(d.0);
        }
        if let Some(d) = self.delay {
            base.delay = Some(d.0);
        }
        base.models.extend(self.models.clone());
        base
    }
}

/// `[agent]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    pub max_steps: Option<u32>,
    pub max_attempts: Option<u32>,
    pub retry_base_delay: Option<HumanDuration>,
    pub retry_max_delay: Option<HumanDuration>,
    pub bash_timeout: Option<HumanDuration>,
    pub bash_max_timeout: Option<HumanDuration>,
}

/// A duration written like `"100ms"` or `"2s"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "{s:?} is not a duration like \"100ms\" or \"2s\" ({e})"
                ))
            })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSection {
    /// `"10m"`, `"30s"`, or `"0"` for never.
    pub idle_timeout: Option<IdleTimeout>,
    pub max_message_size: Option<usize>,
    /// Directory of the database.
    pub data_dir: Option<PathBuf>,
    /// Longest time streamed text waits before it is written (default `"100ms"`).
    pub flush_interval: Option<HumanDuration>,
    /// How long a dropped client's claims and subscriptions are kept (default `"30s"`).
    pub claim_grace: Option<HumanDuration>,
    /// How long an unclaimed, idle workspace stays loaded (default `"60s"`).
    pub workspace_idle: Option<HumanDuration>,
    /// Events kept per session for replay (default 10000).
    pub replay_events: Option<usize>,
    /// Bytes kept per session for replay (default 64 MiB).
    pub replay_bytes: Option<usize>,
    /// Bytes kept for replay by every session together (default 128 MiB).
    pub replay_budget: Option<usize>,
    /// Bytes of message bodies being received, every connection together (default 128 MiB).
    pub inbound_budget: Option<usize>,
    /// Connections to one provider open at once (default 256).
    pub max_model_connections: Option<usize>,
    /// Unread bytes after which a connection is closed (default 64 MiB).
    pub max_outbound_bytes: Option<usize>,
    /// Time a new connection has to `initialize` (default `"10s"`; `"0s"`: no limit).
    pub handshake_timeout: Option<HumanDuration>,
    /// Time a started message has to arrive in full (default `"30s"`; `"0s"`: no limit).
    pub frame_timeout: Option<HumanDuration>,
    /// Requests one connection may have in flight (default 128).
    pub max_in_flight: Option<usize>,
    /// Connections open at once (default 1024).
    pub max_connections: Option<usize>,
}

/// An idle timeout written as a human duration; zero means never.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IdleTimeout(pub Option<Duration>);

impl std::str::FromStr for IdleTimeout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "0" || s == "never" {
            return Ok(Self(None));
        }
        let d = humantime::parse_duration(s)
            .map_err(|e| format!("{s:?} is not a duration like \"10m\" or \"30s\" ({e})"))?;
        Ok(Self(if d.is_zero() { None } else { Some(d) }))
    }
}

impl<'de> Deserialize<'de> for IdleTimeout {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(0) => Ok(Self(None)),
            Raw::Secs(n) => Ok(Self(Some(Duration::from_secs(n)))),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {key}{message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

/// Reads a config file. A missing file at the default location is not an error (`Ok(None)`).
pub fn load_file(path: &Path, must_exist: bool) -> Result<Option<ConfigFile>, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => return Ok(None),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    parse_file(path, &text).map(Some)
}

fn parse_file(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
    let invalid = |span: Option<std::ops::Range<usize>>, key: String, message: String| {
        let line = span
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
            .unwrap_or(1);
        ConfigError::Invalid {
            path: path.to_path_buf(),
            line,
            key,
            message,
        }
    };
    let de = toml::de::Deserializer::parse(text)
        .map_err(|e| invalid(e.span(), String::new(), e.message().to_owned()))?;
    let file: ConfigFile = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = match e.path().to_string() {
            p if p == "." => String::new(),
            p => format!("key `{p}`: "),
        };
        let inner = e.into_inner();
        invalid(inner.span(), key, inner.message().to_owned())
    })?;
    // Checks serde cannot express; the line is the model's table header (or the key).
    let line_of = |needle: &str| {
        text.find(needle)
            .map(|at| text[..at].matches('\n').count() + 1)
            .unwrap_or(1)
    };
    let problem = |line: usize, key: String, message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        line,
        key: format!("key `{key}`: "),
        message,
    };
    let known = presets();
    for (id, p) in &file.providers {
        let header = format!("providers.{id}");
        if id.contains('/') || id.trim().is_empty() {
            return Err(problem(
                line_of(&header),
                header,
                "a provider id must not be empty or contain `/`".to_owned(),
            ));
        }
        if !known.contains_key(id) {
            if p.r#type.is_none() {
                return Err(problem(
                    line_of(&header),
                    format!("{header}.type"),
                    "a provider that is not a preset (openai, anthropic, openrouter, ollama) \
                     needs `type = \"openai\"` or `type = \"anthropic\"`"
                        .to_owned(),
                ));
            }
            if p.base_url.is_none() && p.r#type != Some(ApiKind::Echo) {
                return Err(problem(
                    line_of(&header),
                    format!("{header}.base_url"),
                    "a provider that is not a preset needs `base_url`".to_owned(),
                ));
            }
        }
        if let Some(url) = &p.base_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(problem(
                line_of(url),
                format!("{header}.base_url"),
                format!(
                    "{:?} is not an http:// or https:// URL",
                    crate::secrets::redact_url_credentials(url)
                ),
            ));
        }
        if p.api_key.is_some() && p.api_key_env.is_some() {
            return Err(problem(
                line_of(&header),
                format!("{header}.api_key"),
                "give either `api_key` or `api_key_env`, not both".to_owned(),
            ));
        }
    }
    if file.daemon.max_in_flight == Some(0) {
        return Err(problem(
            line_of("max_in_flight"),
            "daemon.max_in_flight".to_owned(),
            "must be at least 1".to_owned(),
        ));
    }
    if file.daemon.max_connections == Some(0) {
        return Err(problem(
            line_of("max_connections"),
            "daemon.max_connections".to_owned(),
            "must be at least 1".to_owned(),
        ));
    }
    if let Some(a) = file.agent.max_steps
        && a == 0
    {
        return Err(problem(
            line_of("max_steps"),
            "agent.max_steps".to_owned(),
            "must be at least 1".to_owned(),
        ));
    }
    if let Some(a) = file.agent.max_attempts
        && a == 0
    {
        return Err(problem(
            line_of("max_attempts"),
            "agent.max_attempts".to_owned(),
            "must be at least 1 (1 means no retries)".to_owned(),
        ));
    }
    for tool in &file.permissions.allow {
        if !["view", "ls", "glob", "grep", "write", "edit", "bash"].contains(&tool.as_str()) {
            return Err(problem(
                line_of(tool),
                "permissions.allow".to_owned(),
                format!("{tool:?} is not a tool (view, ls, glob, grep, write, edit, bash)"),
            ));
        }
    }
    if let Some(d) = &file.default_model {
        let provider = d.split_once('/').map(|(p, _)| p);
        let known_provider =
            provider.is_some_and(|p| known.contains_key(p) || file.providers.contains_key(p));
        let listed = file.providers.values().any(|p| p.models.contains_key(d))
            || known.values().any(|p| p.models.contains_key(d));
        if !(known_provider || listed) {
            return Err(problem(
                line_of("default_model"),
                "default_model".to_owned(),
                format!(
                    "{d:?} names no provider: write it as \"<provider>/<model id>\" with a \
                     provider of this file or a preset (openai, anthropic, openrouter, ollama, echo)"
                ),
            ));
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn parses_durations_and_never() {
        let f = parse_file(Path::new("c.toml"), "[daemon]\nidle_timeout = \"30s\"\n").unwrap();
        assert_eq!(
            f.daemon.idle_timeout,
            Some(IdleTimeout(Some(Duration::from_secs(30))))
        );
        let f = parse_file(Path::new("c.toml"), "[daemon]\nidle_timeout = 0\n").unwrap();
        assert_eq!(f.daemon.idle_timeout, Some(IdleTimeout(None)));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = parse_file(
            Path::new("/x/c.toml"),
            "\n[daemon]\nidle_timeout = \"soon\"\n",
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("/x/c.toml:3: key `daemon.idle_timeout`"),
            "{msg}"
        );
        let e = parse_file(Path::new("c.toml"), "[daemon]\nidel_timeout = 5\n").unwrap_err();
        assert!(e.to_string().contains("idel_timeout"), "{e}");
        let e = parse_file(Path::new("c.toml"), "[daemon\n").unwrap_err();
        assert!(e.to_string().starts_with("c.toml:1:"), "{e}");
    }

    #[test]
    fn providers_merge_over_presets_and_bad_ones_name_line_and_key() {
        let text = "default_model = \"local/m\"\n\n[providers.local]\ntype = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\napi_key_env = \"K\"\n[providers.local.models.m]\ncontext_window = 1000\nmax_output_tokens = 100\n\n[providers.anthropic]\napi_key_env = \"MY_KEY\"\n\n[agent]\nmax_steps = 7\nretry_base_delay = \"10ms\"\n\n[permissions]\nallow = [\"edit\"]\nallow_bash = [\"git status\"]\n";
        let f = parse_file(Path::new("c.toml"), text).unwrap();
        let mut cfg = Config::new(PathBuf::from("/s"));
        cfg.apply_file(&f);
        assert_eq!(cfg.models.default.as_deref(), Some("local/m"));
        let local = &cfg.models.providers["local"];
        assert_eq!(local.api, ApiKind::Openai);
        assert_eq!(local.models["m"].max_output_tokens, Some(100));
        assert!(!local.preset);
        let anthropic = &cfg.models.providers["anthropic"];
        assert_eq!(anthropic.api_key_env.as_deref(), Some("MY_KEY"));
        assert_eq!(anthropic.base_url, "https://api.anthropic.com");
        assert!(anthropic.models.contains_key("claude-sonnet-4-5"));
        assert!(cfg.models.providers.contains_key("ollama"));
        assert_eq!(cfg.agent.max_steps, 7);
        assert_eq!(cfg.agent.retry_base_delay, Duration::from_millis(10));
        assert_eq!(cfg.agent.max_attempts, 5);
        assert_eq!(cfg.permissions.allow_bash, vec!["git status".to_owned()]);

        let e = parse_file(
            Path::new("c.toml"),
            "\n[providers.x]\nbase_url = \"http://h\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("c.toml:2: key `providers.x.type`"), "{e}");
        let e = parse_file(Path::new("c.toml"), "[providers.x]\ntype = \"gpt\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.toml:2: key `providers.x.type`"), "{e}");
        let e = parse_file(Path::new("c.toml"), "default_model = \"nope\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.toml:1: key `default_model`"), "{e}");
        let e = parse_file(
            Path::new("c.toml"),
            "[providers.x]\ntype = \"openai\"\nbase_url = \"localhost:1\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("c.toml:3: key `providers.x.base_url`"), "{e}");
        let e = parse_file(Path::new("c.toml"), "[permissions]\nallow = [\"rm\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("permissions.allow"), "{e}");
        // A model id listed by a preset is a valid default on its own.
        parse_file(Path::new("c.toml"), "default_model = \"gpt-5\"\n").unwrap();
    }
}
