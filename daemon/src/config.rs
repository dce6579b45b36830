//! The daemon's settings: built-in defaults, overlaid by the config file
//! (`$XDG_CONFIG_HOME/crushd/config.toml`), overlaid by command-line flags. A bad file is an error
//! that names the file, the line and the key.
//!
//! `[daemon]` and `[agent]` are [`settings!`] tables: each setting is declared once, with its
//! key, type, default, `config/get` name and doc. The providers' tables live with the models
//! (`crate::model::config`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::config::{ApiKind, ModelsConfig, ProviderTable, presets};
use crate::setting::settings;

settings! {
    /// `[daemon]`: the daemon process, its connections and its memory bounds.
    pub struct DaemonSettings, file DaemonSection {
        /// Exit after this long without connections ("10m", "30s"; 0 = never).
        idle_timeout: Option<Duration> = Some(Duration::from_secs(10 * 60)), "idleTimeoutMs";
        /// Largest accepted message body in bytes.
        max_message_size: usize = crush_protocol::codec::DEFAULT_MAX_MESSAGE_SIZE, "maxMessageSize";
        /// Directory of the database [default: $XDG_DATA_HOME/crushd].
        data_dir: PathBuf = default_data_dir(), "dataDir";
        /// Longest time streamed text waits in memory before it is written to the database.
        flush_interval: Duration = Duration::from_millis(100), "flushIntervalMs";
        /// How long a dropped client's claims and subscriptions wait for it to reconnect.
        claim_grace: Duration = Duration::from_secs(30), "claimGraceMs";
        /// How long a workspace with no claims, runs or subscribers stays loaded.
        workspace_idle: Duration = Duration::from_secs(60), "workspaceIdleMs";
        /// The replay log of each session keeps at most this many events…
        replay_events: usize = 10_000, "replayEvents";
        /// …and at most this many bytes.
        replay_bytes: usize = 64 << 20, "replayBytes";
        /// Every session's replay log together holds at most this many bytes; past it the
        /// oldest events go first.
        replay_budget: usize = 128 << 20, "replayBudget";
        /// Message bodies being received or parsed, on every connection together, take at most
        /// this many bytes; a message that would pass it is refused with `Overloaded`.
        inbound_budget: usize = 128 << 20, "inboundBudget";
        /// Connections to one provider's API open at once; more runs wait for one to free.
        max_model_connections: usize = crate::model::config::DEFAULT_MAX_CONNECTIONS, "maxModelConnections";
        /// A connection whose unread messages pass this many bytes is closed.
        max_outbound_bytes: usize = 64 << 20, "maxOutboundBytes";
        /// A connection that has not sent a successful `initialize` this long after connecting
        /// is closed; zero means never.
        handshake_timeout: Duration = Duration::from_secs(10), "handshakeTimeoutMs";
        /// A message whose first bytes arrived must be complete within this time, or the
        /// connection is closed; zero means never.
        frame_timeout: Duration = Duration::from_secs(30), "frameTimeoutMs";
        /// Requests one connection may have in flight; more are refused with `Overloaded`.
        max_in_flight: usize = 128, "maxInFlight";
        /// Connections open at once; more are answered with an `Overloaded` error and closed.
        max_connections: usize = 1024, "maxConnections";
    }
}

settings! {
    /// `[agent]`: how runs behave.
    pub struct AgentSettings, file AgentSection {
        /// Model calls in one run before it is stopped.
        max_steps: u32 = 50, "maxSteps";
        /// Tries of one model call (the first and the retries) on 429, 5xx and connection errors.
        max_attempts: u32 = 5, "maxAttempts";
        /// First retry delay; doubles with each retry (a server's `Retry-After` wins).
        retry_base_delay: Duration = Duration::from_secs(1), "retryBaseDelayMs";
        /// Longest delay between two tries.
        retry_max_delay: Duration = Duration::from_secs(30), "retryMaxDelayMs";
        /// Default time a `bash` tool call may run.
        bash_timeout: Duration = Duration::from_secs(120), "bashTimeoutMs";
        /// Longest time a `bash` tool call may ask for.
        bash_max_timeout: Duration = Duration::from_secs(600), "bashMaxTimeoutMs";
        /// Percent of the model's context window past which a request is compacted before it
        /// is sent (10–100).
        compact_threshold: u32 = 80, "compactThreshold";
        /// The model that summarises older messages when a session is compacted
        /// (`<provider>/<model>`, e.g. a smaller, cheaper one); unset: the session's own.
        compact_model: Option<String> = None, "compactModel";
        /// A model that writes a short title for a new session after its first turn, in the
        /// background (`<provider>/<model>`); unset: the title is the first prompt's first line.
        title_model: Option<String> = None, "titleModel";
        /// A file larger than this is left out of the workspace snapshots (reported).
        snapshot_max_file_bytes: usize = 4 << 20, "snapshotMaxFileBytes";
        /// A snapshot whose changed files come to more than this is not taken; 0 turns
        /// snapshots off.
        snapshot_max_bytes: usize = 256 << 20, "snapshotMaxBytes";
    }
}

settings! {
    /// `[sandbox]`: how `bash` tool commands are confined (Linux Landlock; see
    /// `tools/sandbox/`).
    pub struct SandboxSettings, file SandboxSection {
        /// "workspace-write" (writes only in the workspace, the temp directory and `writable`),
        /// "read-only" or "off"; a session may choose its own (`session/setSandbox`).
        mode: crush_protocol::SandboxMode = crush_protocol::SandboxMode::WorkspaceWrite, "mode";
        /// Whether confined commands may use TCP (connect and bind).
        network: bool = true, "network";
        /// More directories confined commands may write in `workspace-write` mode (absolute
        /// paths, e.g. "~/.cargo" written out).
        writable: Vec<PathBuf> = Vec::new(), "writable";
    }
}

/// Effective daemon settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Socket path (or named pipe path on Windows); from `--socket` or the environment, never
    /// from the file.
    pub socket: PathBuf,
    /// Where logs go in background mode.
    pub state_dir: PathBuf,
    /// Enables the `debug/*` diagnostic methods (a hidden flag, never the file).
    pub debug_methods: bool,
    /// How long a graceful shutdown waits for runs to end and then for connections to drain.
    /// Fixed: not a setting of the file.
    pub shutdown_grace: Duration,
    /// `[daemon]`.
    pub daemon: DaemonSettings,
    /// The providers (built-in presets overlaid by `[providers.<id>]` tables) and the default
    /// model.
    pub models: ModelsConfig,
    /// How runs behave (`[agent]`).
    pub agent: AgentSettings,
    /// What tools may do without asking (`[permissions]`).
    pub permissions: PermissionRules,
    /// How `bash` commands are confined (`[sandbox]`).
    pub sandbox: SandboxSettings,
    /// The global MCP servers (`[mcp.servers.NAME]`), checked.
    pub mcp: Vec<crate::mcp::config::ServerSpec>,
}

/// `[permissions]`: tool calls that run without asking.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionRules {
    /// Tools that never ask (`"edit"`, `"write"`, `"bash"`).
    #[serde(default)]
    pub(crate) allow: Vec<String>,
    /// `bash` commands that never ask, by prefix of whole words (`"cargo test"` allows
    /// `cargo test -p x`, not `cargo testx`). Commands with shell control characters always ask.
    #[serde(default)]
    pub(crate) allow_bash: Vec<String>,
    /// Environment variables passed to tool processes although they look like secrets
    /// (`crate::secrets::is_secret`), e.g. `SSH_AUTH_SOCK` for `git push` over SSH. Provider key
    /// variables are never passed, listed or not.
    #[serde(default)]
    pub allow_env: Vec<String>,
}

/// Environment variable naming the default model; overrides `default_model`.
pub(crate) const MODEL_ENV: &str = "CRUSHD_MODEL";

impl Config {
    /// Defaults for the given socket; everything else from the standard directories.
    pub fn new(socket: PathBuf) -> Self {
        Self {
            socket,
            state_dir: crush_protocol::paths::state_dir(),
            debug_methods: false,
            shutdown_grace: Duration::from_secs(5),
            daemon: DaemonSettings::default(),
            models: ModelsConfig::default(),
            agent: AgentSettings::default(),
            permissions: PermissionRules::default(),
            sandbox: SandboxSettings::default(),
            mcp: Vec::new(),
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
        self.daemon.apply(&file.daemon);
        self.models
            .apply(file.default_model.as_ref(), &file.providers);
        self.agent.apply(&file.agent);
        self.permissions = file.permissions.clone();
        self.sandbox.apply(&file.sandbox);
        // `parse_file` checked the tables, so this cannot fail for a file it returned.
        self.mcp = file.mcp.specs().unwrap_or_default();
    }

    /// The effective configuration for `config/get`: every setting, with API keys replaced by
    /// whether one is available (`ModelsConfig::redacted_providers`).
    pub(crate) fn redacted(&self) -> serde_json::Value {
        let mut daemon = self.daemon.to_json();
        let mut fixed = |k: &str, v: serde_json::Value| daemon.insert(k.to_owned(), v);
        fixed("socket", self.socket.display().to_string().into());
        fixed("stateDir", self.state_dir.display().to_string().into());
        fixed(
            "shutdownGraceMs",
            (self.shutdown_grace.as_millis() as u64).into(),
        );
        serde_json::json!({
            "defaultModel": self.models.default,
            "providers": self.models.redacted_providers(),
            "agent": self.agent.to_json(),
            "permissions": {
                "allow": self.permissions.allow,
                "allowBash": self.permissions.allow_bash,
                "allowEnv": self.permissions.allow_env,
            },
            "daemon": daemon,
            "sandbox": self.sandbox.to_json(),
            // Environment values may be secrets: only their names are shown.
            "mcp": {
                "servers": self.mcp.iter().map(|m| (m.name.clone(), serde_json::json!({
                    "command": m.command,
                    "url": m.url.as_deref().map(crate::secrets::redact_url_credentials),
                    "headerNames": m.headers.keys().chain(m.headers_env.keys()).collect::<Vec<_>>(),
                    "headersEnv": m.headers_env,
                    "args": m.args,
                    "envNames": m.env.keys().collect::<Vec<_>>(),
                    "cwd": m.cwd,
                    "enabled": m.enabled,
                    "timeoutMs": m.timeout.as_millis() as u64,
                    "startupTimeoutMs": m.startup_timeout.as_millis() as u64,
                    "allow": m.allow,
                }))).collect::<serde_json::Map<_, _>>(),
            },
        })
    }
}

/// `$XDG_DATA_HOME/crushd` (or the platform's equivalent).
pub(crate) fn default_data_dir() -> PathBuf {
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
    pub(crate) daemon: DaemonSection,
    /// The model runs use when neither the send nor the session names one:
    /// `<provider>/<model id>`.
    pub(crate) default_model: Option<String>,
    #[serde(default)]
    pub(crate) providers: BTreeMap<String, ProviderTable>,
    #[serde(default)]
    pub(crate) agent: AgentSection,
    #[serde(default)]
    pub(crate) permissions: PermissionRules,
    #[serde(default)]
    pub(crate) sandbox: SandboxSection,
    /// `[mcp.servers.NAME]`: global MCP servers.
    #[serde(default)]
    pub(crate) mcp: crate::mcp::config::McpSection,
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
    if let Some(relative) = file
        .sandbox
        .writable
        .iter()
        .flatten()
        .find(|p| !p.is_absolute())
    {
        return Err(problem(
            line_of("writable"),
            "sandbox.writable".to_owned(),
            format!(
                "{:?} is not an absolute path",
                relative.display().to_string()
            ),
        ));
    }
    if let Err((key, message)) = file.mcp.specs() {
        // The line of the server's table header (`[mcp.servers.NAME]`).
        let server = key.split('.').nth(2).unwrap_or_default();
        let line = text
            .find(&format!("mcp.servers.{server}]"))
            .or_else(|| text.find(&format!("mcp.servers.\"{server}\"]")))
            .map(|at| text[..at].matches('\n').count() + 1)
            .unwrap_or(1);
        return Err(problem(line, key, message));
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
    use crate::setting::IdleTimeout;

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

    /// Every declared setting is shown by `config/get`, and nothing undeclared is there but the
    /// three values that are not file settings.
    #[test]
    fn config_get_shows_every_declared_setting() {
        let v = Config::new(PathBuf::from("/s")).redacted();
        for (section, keys) in [
            ("daemon", DaemonSettings::KEYS),
            ("agent", AgentSettings::KEYS),
            ("sandbox", SandboxSettings::KEYS),
        ] {
            let shown = v[section].as_object().unwrap();
            for (key, json) in keys {
                assert!(
                    shown.contains_key(*json),
                    "{section}.{key} is not in config/get"
                );
            }
        }
        let mut extra: Vec<&String> = v["daemon"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| !DaemonSettings::KEYS.iter().any(|(_, j)| j == k))
            .collect();
        extra.sort();
        assert_eq!(extra, ["shutdownGraceMs", "socket", "stateDir"]);
        assert_eq!(
            v["agent"].as_object().unwrap().len(),
            AgentSettings::KEYS.len()
        );
    }

    /// The README's `[daemon]` example is the user's list of settings: none may be missing.
    #[test]
    fn readme_example_lists_every_daemon_setting() {
        let readme = include_str!("../../README.md");
        let (_, example) = readme
            .split_once("\n[daemon]\n")
            .expect("a [daemon] example");
        let example = example.split("```").next().unwrap_or_default();
        for (key, _) in DaemonSettings::KEYS {
            assert!(
                example.lines().any(|l| l.starts_with(&format!("{key} ="))),
                "README's [daemon] example lacks `{key}`"
            );
        }
    }

    /// Every setting, written into a file with a value other than its default, comes out of
    /// the file and into `config/get` as written.
    #[test]
    fn every_setting_round_trips_through_a_file() {
        let (daemon, daemon_text) = DaemonSettings::default().changed_toml();
        let (agent, agent_text) = AgentSettings::default().changed_toml();
        let (sandbox, sandbox_text) = SandboxSettings::default().changed_toml();
        let text =
            format!("[daemon]\n{daemon_text}\n[agent]\n{agent_text}\n[sandbox]\n{sandbox_text}");
        let file = parse_file(Path::new("c.toml"), &text).unwrap();
        let mut cfg = Config::new(PathBuf::from("/s"));
        cfg.apply_file(&file);
        assert_eq!(cfg.daemon, daemon);
        assert_eq!(cfg.agent, agent);
        assert_eq!(cfg.sandbox, sandbox);
        let shown = cfg.redacted();
        let defaults = Config::new(PathBuf::from("/s")).redacted();
        for (section, keys) in [
            ("daemon", DaemonSettings::KEYS),
            ("agent", AgentSettings::KEYS),
            ("sandbox", SandboxSettings::KEYS),
        ] {
            for (key, json) in keys {
                assert_ne!(
                    shown[section][json], defaults[section][json],
                    "{section}.{key} did not change: {text}"
                );
            }
        }
        assert_eq!(shown["daemon"]["idleTimeoutMs"], 600_007);
    }
}
