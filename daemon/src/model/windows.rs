//! What the daemon knows about models' context windows without being told: a table of model
//! families with their window and longest output, and the conservative default for a model
//! nobody described. `model/list` shows which of the three (config, this table, the default) a
//! model's window comes from, and the run driver budgets every request against it.

use crush_protocol::ContextWindowSource;

use super::config::ModelLimits;

/// The window assumed for a model neither the config nor the table knows. Small on purpose:
/// sending too little history costs some context, sending too much fails every later run (or,
/// with Ollama, is silently cut from the front, instructions first).
pub(crate) const DEFAULT_CONTEXT_WINDOW: u64 = 32_768;

/// Model families by id prefix: `(prefix, context window, longest output)`. Matched against the
/// model id lowercased, without a router's `vendor/` prefix or an Ollama `:tag`, longest prefix
/// first, so `gpt-4o-mini` is not taken for `gpt-4`. Windows are the providers' published ones;
/// an Ollama server may run a model with a smaller `num_ctx`, which a config entry states.
const KNOWN: &[(&str, u64, u32)] = &[
    // OpenAI
    ("gpt-5", 400_000, 128_000),
    ("gpt-4.1", 1_047_576, 32_768),
    ("gpt-4o", 128_000, 16_384),
    ("gpt-4-turbo", 128_000, 4_096),
    ("gpt-4", 8_192, 4_096),
    ("gpt-3.5-turbo", 16_385, 4_096),
    ("o1", 200_000, 100_000),
    ("o3", 200_000, 100_000),
    ("o4-mini", 200_000, 100_000),
    ("gpt-oss", 131_072, 32_768),
    // Anthropic
    ("claude-sonnet-4", 200_000, 64_000),
    ("claude-opus-4", 200_000, 32_000),
    ("claude-haiku-4", 200_000, 64_000),
    ("claude-3-7-sonnet", 200_000, 64_000),
    ("claude-3-5-sonnet", 200_000, 8_192),
    ("claude-3-5-haiku", 200_000, 8_192),
    ("claude-3", 200_000, 4_096),
    // Google (through OpenRouter)
    ("gemini-2.5", 1_048_576, 65_536),
    // Open models (Ollama, OpenRouter)
    ("llama3.1", 131_072, 8_192),
    ("llama3.2", 131_072, 8_192),
    ("llama3.3", 131_072, 8_192),
    ("llama-3.1", 131_072, 8_192),
    ("llama-3.3", 131_072, 8_192),
    ("qwen2.5-coder", 32_768, 8_192),
    ("qwen2.5", 32_768, 8_192),
    ("qwen3-coder", 262_144, 65_536),
    ("qwen3", 40_960, 16_384),
    ("deepseek-r1", 131_072, 32_768),
    ("deepseek-v3", 131_072, 8_192),
    ("deepseek-coder-v2", 163_840, 8_192),
    ("mistral-small", 32_768, 8_192),
    ("mistral", 32_768, 8_192),
    ("codestral", 256_000, 8_192),
    ("gemma3", 131_072, 8_192),
    ("phi4", 16_384, 4_096),
];

/// The window and longest output of a known model family.
pub(crate) fn known(model_id: &str) -> Option<(u64, u32)> {
    let id = model_id.trim().to_ascii_lowercase();
    let id = id.rsplit('/').next().unwrap_or(&id);
    let id = id.split(':').next().unwrap_or(id);
    KNOWN
        .iter()
        .filter(|(prefix, ..)| id.starts_with(prefix))
        .max_by_key(|(prefix, ..)| prefix.len())
        .map(|&(_, window, out)| (window, out))
}

/// A model's window, longest output and where the window comes from: its config entry, else a
/// preset (the provider's built-in list, then the family table), else the default. The longest
/// output stays unknown (and unsent) for a default window, as it was.
pub(crate) fn resolve(
    model_id: &str,
    entry: Option<&ModelLimits>,
) -> (u64, Option<u32>, ContextWindowSource) {
    let family = known(model_id);
    let out = entry
        .and_then(|l| l.max_output_tokens)
        .or(family.map(|(_, o)| o));
    match entry.and_then(|l| l.context_window.map(|w| (w, l.preset))) {
        Some((w, true)) => (w, out, ContextWindowSource::Preset),
        Some((w, false)) => (w, out, ContextWindowSource::Config),
        None => match family {
            Some((w, _)) => (w, out, ContextWindowSource::Preset),
            None => (DEFAULT_CONTEXT_WINDOW, out, ContextWindowSource::Default),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn families_match_by_longest_prefix_without_vendor_or_tag() {
        assert_eq!(known("gpt-4o-mini"), Some((128_000, 16_384)));
        assert_eq!(known("gpt-4"), Some((8_192, 4_096)));
        assert_eq!(known("openai/gpt-5"), Some((400_000, 128_000)));
        assert_eq!(known("llama3.1:8b"), Some((131_072, 8_192)));
        assert_eq!(known("qwen2.5-coder:7b").unwrap().0, 32_768);
        assert_eq!(known("my-private-model"), None);
    }

    #[test]
    fn config_wins_then_preset_then_default() {
        let cfg = ModelLimits {
            context_window: Some(4_000),
            max_output_tokens: Some(500),
            preset: false,
            ..ModelLimits::default()
        };
        assert_eq!(
            resolve("gpt-4o", Some(&cfg)),
            (4_000, Some(500), ContextWindowSource::Config)
        );
        assert_eq!(
            resolve("gpt-4o", None),
            (128_000, Some(16_384), ContextWindowSource::Preset)
        );
        assert_eq!(
            resolve("mystery", None),
            (DEFAULT_CONTEXT_WINDOW, None, ContextWindowSource::Default)
        );
        let only_output = ModelLimits {
            max_output_tokens: Some(100),
            ..ModelLimits::default()
        };
        assert_eq!(
            resolve("mystery", Some(&only_output)),
            (
                DEFAULT_CONTEXT_WINDOW,
                Some(100),
                ContextWindowSource::Default
            )
        );
    }
}
