//! The providers' configuration: the built-in presets, the `[providers.<id>]` tables of the
//! config file, the two merged, and their redacted view for `config/get`. The TOML shapes are
//! here, beside the models that use them; `crate::config` only places them in the file.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::setting::HumanDuration;

/// Default for `[daemon] max_model_connections` (its row in `crate::config` names this):
/// `Models` built without a config, as in tests, use it too.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// The `default_model` key and the providers, presets included.
#[derive(Debug, Clone)]
pub struct ModelsConfig {
    /// `<provider>/<model id>`, or a model id listed by exactly one provider.
    pub(crate) default: Option<String>,
    pub(crate) providers: BTreeMap<String, ProviderConfig>,
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
pub(crate) struct ProviderConfig {
    pub(crate) api: ApiKind,
    pub(crate) base_url: String,
    /// The name of the environment variable holding the API key.
    pub(crate) api_key_env: Option<String>,
    /// A key written into the config file (discouraged; `config/get` never shows it).
    pub(crate) api_key: Option<String>,
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) read_timeout: Option<Duration>,
    /// `echo` only: the pause between two words.
    pub(crate) delay: Option<Duration>,
    /// Models known to this provider with their limits. Other model ids may be used too.
    pub(crate) models: BTreeMap<String, ModelLimits>,
    /// Whether this provider comes from the built-in presets (possibly adjusted by the file).
    pub(crate) preset: bool,
}

/// What is known about one model: its limits and its price (US dollars per million tokens;
/// see `price.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModelLimits {
    /// Tokens of input and output together.
    pub(crate) context_window: Option<u64>,
    /// Longest output of one step, sent as the request's token cap.
    pub(crate) max_output_tokens: Option<u32>,
    /// Written by the built-in presets, not the file: `model/list`'s `contextWindowSource`.
    #[serde(skip)]
    pub(crate) preset: bool,
    pub(crate) input_price: Option<f64>,
    pub(crate) output_price: Option<f64>,
    /// Input read from the provider's prompt cache; the input price when not given.
    pub(crate) cached_price: Option<f64>,
    /// Whether the model accepts images (prompts' and tool results'); unknown models do not.
    pub(crate) images: Option<bool>,
}

impl ModelLimits {
    /// Each key the file sets replaces the preset's, the others stay: a table that only
    /// prices a preset model keeps its limits, and one that only sets a limit keeps its price.
    fn over(self, base: ModelLimits) -> ModelLimits {
        ModelLimits {
            context_window: self.context_window.or(base.context_window),
            max_output_tokens: self.max_output_tokens.or(base.max_output_tokens),
            input_price: self.input_price.or(base.input_price),
            output_price: self.output_price.or(base.output_price),
            cached_price: self.cached_price.or(base.cached_price),
            images: self.images.or(base.images),
            // The window is the preset's only while the file does not set one.
            preset: self.context_window.is_none() && base.preset,
        }
    }
}

/// The providers every daemon knows: each needs nothing but its key (Ollama not even that).
pub(crate) fn presets() -> BTreeMap<String, ProviderConfig> {
    fn models(list: &[(&str, u64, u32)]) -> BTreeMap<String, ModelLimits> {
        list.iter()
            .map(|(id, ctx, out)| {
                (
                    (*id).to_owned(),
                    ModelLimits {
                        context_window: Some(*ctx),
                        max_output_tokens: Some(*out),
                        preset: true,
                        // Every preset model reads images.
                        images: Some(true),
                        ..ModelLimits::default()
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
            super::openai::DEFAULT_BASE_URL,
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
            super::anthropic::DEFAULT_BASE_URL,
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
    out.insert(super::ECHO.to_owned(), echo);
    super::price::price_presets(&mut out);
    out
}

/// Which API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ApiKind {
    /// Any OpenAI-compatible Chat Completions API.
    #[serde(alias = "openai-compatible")]
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
    /// The built-in diagnostic echo model.
    Echo,
}

impl ApiKind {
    pub(crate) fn as_str(self) -> &'static str {
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
pub(crate) struct ProviderTable {
    pub r#type: Option<ApiKind>,
    /// The API's base URL (OpenAI-compatible: up to `/v1`).
    pub(crate) base_url: Option<String>,
    /// The name of the environment variable holding the API key.
    pub(crate) api_key_env: Option<String>,
    /// The key itself (prefer `api_key_env`).
    pub(crate) api_key: Option<String>,
    pub(crate) connect_timeout: Option<HumanDuration>,
    pub(crate) read_timeout: Option<HumanDuration>,
    /// `echo` only: the pause between two words.
    pub(crate) delay: Option<HumanDuration>,
    #[serde(default)]
    pub(crate) models: BTreeMap<String, ModelLimits>,
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
        for (id, limits) in &self.models {
            let preset = base.models.get(id).copied().unwrap_or_default();
            base.models.insert(id.clone(), limits.over(preset));
        }
        base
    }
}

impl ModelsConfig {
    /// Overlays the file's `default_model` and `[providers.<id>]` tables: a preset's table
    /// adjusts the preset, any other defines a new provider.
    pub(crate) fn apply(
        &mut self,
        default_model: Option<&String>,
        tables: &BTreeMap<String, ProviderTable>,
    ) {
        if let Some(m) = default_model {
            self.default = Some(m.clone());
        }
        for (id, table) in tables {
            let merged = match self.providers.remove(id) {
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
            self.providers.insert(id.clone(), merged);
        }
    }

    /// The providers for `config/get`, with API keys replaced by whether one is available. Key
    /// *variable names* are shown; key values never are.
    pub(crate) fn redacted_providers(&self) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::json;
        let ms = |d: Duration| d.as_millis() as u64;
        self.providers
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
                        (m.clone(), {
                            let mut v = json!({
                                "contextWindow": l.context_window,
                                "maxOutputTokens": l.max_output_tokens,
                            });
                            if let Some(p) = l.price() {
                                v["price"] = json!(p);
                            }
                            v
                        })
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
            .collect()
    }
}
