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
    /// The models runs can use.
    pub models: ModelsConfig,
}

/// The `default_model` key and the `[models.<name>]` tables.
#[derive(Debug, Clone, Default)]
pub struct ModelsConfig {
    pub default: Option<String>,
    pub entries: BTreeMap<String, ModelConfig>,
}

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
            models: ModelsConfig::default(),
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
        if let Some(m) = &file.default_model {
            self.models.default = Some(m.clone());
        }
        self.models.entries.extend(file.models.clone());
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
    /// The model runs use when `agent/send` names none.
    pub default_model: Option<String>,
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
}

/// Which API a model speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Any OpenAI-compatible Chat Completions API.
    #[serde(alias = "openai-compatible")]
    Openai,
    /// The diagnostic echo model.
    Echo,
}

/// One `[models.<name>]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub provider: ProviderKind,
    /// The API's base URL, up to `/v1` (default `https://api.openai.com/v1`).
    pub base_url: Option<String>,
    /// The provider's model id.
    pub model: Option<String>,
    /// The name of the environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// `echo` only: the pause between two words.
    pub delay: Option<HumanDuration>,
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
    for (name, m) in &file.models {
        let header = format!("models.{name}");
        if m.provider == ProviderKind::Openai
            && m.model.as_deref().is_none_or(|s| s.trim().is_empty())
        {
            return Err(problem(
                line_of(&header),
                format!("{header}.model"),
                "an openai model needs `model` (the provider's model id)".to_owned(),
            ));
        }
        if let Some(url) = &m.base_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(problem(
                line_of(url),
                format!("{header}.base_url"),
                format!("{url:?} is not an http:// or https:// URL"),
            ));
        }
    }
    if let Some(d) = &file.default_model
        && d != crate::model::ECHO
        && !file.models.contains_key(d)
    {
        return Err(problem(
            line_of("default_model"),
            "default_model".to_owned(),
            format!("{d:?} is not a [models.{d}] table of this file nor the built-in \"echo\""),
        ));
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
    fn models_parse_and_bad_ones_name_line_and_key() {
        let text = "default_model = \"local\"\n\n[models.local]\nprovider = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\nmodel = \"m\"\napi_key_env = \"K\"\n\n[models.slow]\nprovider = \"echo\"\ndelay = \"5ms\"\n";
        let f = parse_file(Path::new("c.toml"), text).unwrap();
        assert_eq!(f.default_model.as_deref(), Some("local"));
        assert_eq!(f.models["local"].model.as_deref(), Some("m"));
        assert_eq!(
            f.models["slow"].delay,
            Some(HumanDuration(Duration::from_millis(5)))
        );

        let e = parse_file(Path::new("c.toml"), "\n[models.x]\nprovider = \"openai\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.toml:2: key `models.x.model`"), "{e}");
        let e = parse_file(Path::new("c.toml"), "[models.x]\nprovider = \"gpt\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.toml:2: key `models.x.provider`"), "{e}");
        let e = parse_file(Path::new("c.toml"), "default_model = \"nope\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.toml:1: key `default_model`"), "{e}");
        let e = parse_file(
            Path::new("c.toml"),
            "[models.x]\nprovider = \"openai\"\nmodel = \"m\"\nbase_url = \"localhost:1\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("c.toml:4: key `models.x.base_url`"), "{e}");
    }
}
