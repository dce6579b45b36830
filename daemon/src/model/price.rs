//! What tokens cost: the built-in price table of the preset models, a model's price as
//! `model/list` shows it, and a turn's cost. Prices are US dollars per million tokens; the
//! config file overrides them per model (`[providers.<id>.models.<name>]` `input_price`,
//! `output_price`, `cached_price`). A model without an input and an output price has no price,
//! and its cost is unknown (`null` on the wire), never a made-up zero.

use std::collections::BTreeMap;

use crush_protocol::ModelPrice;

use super::Usage;
use super::config::{ModelLimits, ProviderConfig};

/// `(provider, model, input, cached input, output)`, per million tokens, from the providers'
/// published price lists. Cache writes (Anthropic) are priced as plain input: the table has no
/// column for their surcharge.
const PRESET_PRICES: &[(&str, &str, f64, f64, f64)] = &[
    ("openai", "gpt-5", 1.25, 0.125, 10.0),
    ("openai", "gpt-5-mini", 0.25, 0.025, 2.0),
    ("openai", "gpt-4.1", 2.0, 0.5, 8.0),
    ("openai", "gpt-4.1-mini", 0.4, 0.1, 1.6),
    ("anthropic", "claude-sonnet-4-5", 3.0, 0.3, 15.0),
    ("anthropic", "claude-opus-4-1", 15.0, 1.5, 75.0),
    ("anthropic", "claude-haiku-4-5", 1.0, 0.1, 5.0),
    ("openrouter", "anthropic/claude-sonnet-4.5", 3.0, 0.3, 15.0),
    ("openrouter", "openai/gpt-5", 1.25, 0.125, 10.0),
    // The built-in diagnostic runs in the daemon: its tokens really cost nothing.
    ("echo", "echo", 0.0, 0.0, 0.0),
];

/// Puts the preset prices on the preset models.
pub(super) fn price_presets(providers: &mut BTreeMap<String, ProviderConfig>) {
    for &(provider, model, input, cached, output) in PRESET_PRICES {
        if let Some(p) = providers.get_mut(provider) {
            let limits = p.models.entry(model.to_owned()).or_default();
            limits.input_price = Some(input);
            limits.cached_price = Some(cached);
            limits.output_price = Some(output);
        }
    }
}

impl ModelLimits {
    /// The model's price, when its input and output prices are known.
    pub(crate) fn price(&self) -> Option<ModelPrice> {
        let input = self.input_price?;
        Some(ModelPrice {
            input,
            output: self.output_price?,
            cached: self.cached_price.unwrap_or(input),
        })
    }
}

/// What `usage` cost at `price`: `None` when the price is unknown and tokens were used (no
/// tokens cost nothing, whatever the price).
pub(crate) fn cost(price: Option<&ModelPrice>, usage: &Usage) -> Option<f64> {
    if usage.prompt_tokens == 0 && usage.completion_tokens == 0 {
        return Some(0.0);
    }
    let p = price?;
    let cached = usage.cached_tokens.min(usage.prompt_tokens);
    let fresh = usage.prompt_tokens - cached;
    let dollars = fresh as f64 * p.input
        + cached as f64 * p.cached
        + usage.completion_tokens as f64 * p.output;
    Some(dollars / 1_000_000.0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::model::config::ModelsConfig;

    fn usage(prompt: u64, completion: u64, cached: u64) -> Usage {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_tokens: cached,
            reasoning_tokens: 0,
        }
    }

    #[test]
    fn cached_input_is_priced_apart_and_unknown_prices_give_none() {
        let p = ModelPrice {
            input: 3.0,
            output: 15.0,
            cached: 0.3,
        };
        let c = cost(Some(&p), &usage(1_000_000, 100_000, 400_000)).unwrap();
        assert!(
            (c - (0.6 * 3.0 + 0.4 * 0.3 + 0.1 * 15.0)).abs() < 1e-9,
            "{c}"
        );
        assert_eq!(cost(None, &usage(10, 1, 0)), None);
        assert_eq!(cost(None, &usage(0, 0, 0)), Some(0.0));
    }

    #[test]
    fn every_preset_price_names_a_preset_model_and_a_missing_cached_price_is_the_input_price() {
        let cfg = ModelsConfig::default();
        for &(provider, model, ..) in PRESET_PRICES {
            let limits = &cfg.providers[provider].models[model];
            assert!(limits.price().is_some(), "{provider}/{model}");
            if provider != "echo" {
                assert!(limits.context_window.is_some(), "{provider}/{model}");
            }
        }
        let only_input = ModelLimits {
            input_price: Some(2.0),
            output_price: Some(8.0),
            ..ModelLimits::default()
        };
        assert_eq!(only_input.price().unwrap().cached, 2.0);
        assert_eq!(ModelLimits::default().price(), None);
    }
}
