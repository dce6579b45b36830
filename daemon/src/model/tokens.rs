//! Counting the tokens of a model request: the model family's real tokenizer where one exists
//! (OpenAI's BPE encodings, through `tiktoken-rs`) and a calibrated estimate otherwise. What
//! either misses (the provider's own framing, a different tokenizer) the run driver corrects
//! with the `prompt_tokens` the provider reports (`runs/budget.rs`).
//!
//! The encodings are built once, on first use, and shared: building one parses its whole rank
//! table (tens of milliseconds), counting with it is cheap.

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;
use tiktoken_rs::tokenizer::{Tokenizer, get_tokenizer};

use super::config::ApiKind;
use super::{ChatMessage, ToolSpec};

/// What a message costs beyond its text: the role and the API's separators (OpenAI documents
/// 3–4 tokens; Anthropic's framing is similar). Rounded up, since undercounting is what fails.
const PER_MESSAGE: u64 = 5;
/// A tool call's framing beyond its name and input.
const PER_TOOL_CALL: u64 = 8;
/// What one image is counted as, without decoding it: providers scale images down before
/// counting, and ~1 600 tokens is Anthropic's figure for the largest image it keeps at full size
/// (1.15 megapixels; OpenAI's high-detail 1024×1024 is 765). An overestimate for small images,
/// which only makes the budget compact a little early.
pub(crate) const IMAGE_TOKENS: u64 = 1_600;

/// How a request's tokens are counted for one model.
#[derive(Clone, Copy)]
pub(crate) enum Counter {
    /// The model family's own encoding: exact for the text.
    Bpe(&'static CoreBPE),
    /// Bytes and characters, calibrated on text, code and JSON against the BPE encodings.
    Estimate,
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Counter::Bpe(_) => "Counter::Bpe",
            Counter::Estimate => "Counter::Estimate",
        })
    }
}

fn o200k() -> Option<&'static CoreBPE> {
    static BPE: OnceLock<Option<CoreBPE>> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::o200k_base().ok()).as_ref()
}

fn cl100k() -> Option<&'static CoreBPE> {
    static BPE: OnceLock<Option<CoreBPE>> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::cl100k_base().ok()).as_ref()
}

impl Counter {
    /// The tokenizer for a model: OpenAI's encoding when the API is OpenAI's and the model id
    /// (without a router's `vendor/` prefix) is one of OpenAI's, else the estimate. Anthropic
    /// publishes no tokenizer, and other models behind OpenAI-compatible APIs have their own.
    pub(crate) fn for_model(api: ApiKind, model_id: &str) -> Self {
        if api != ApiKind::Openai {
            return Counter::Estimate;
        }
        let id = model_id.strip_prefix("openai/").unwrap_or(model_id);
        let bpe = match get_tokenizer(id) {
            Some(Tokenizer::O200kBase | Tokenizer::O200kHarmony) => o200k(),
            Some(Tokenizer::Cl100kBase) => cl100k(),
            _ => None,
        };
        bpe.map_or(Counter::Estimate, Counter::Bpe)
    }

    /// The counter for a model named by its API's wire name (`ModelInfo::api`).
    pub(crate) fn for_api_name(api: &str, model_id: &str) -> Self {
        match api {
            "openai" => Self::for_model(ApiKind::Openai, model_id),
            _ => Counter::Estimate,
        }
    }

    /// Tokens of a piece of text.
    pub(crate) fn text(&self, text: &str) -> u64 {
        match self {
            Counter::Bpe(bpe) => bpe.encode_ordinary(text).len() as u64,
            Counter::Estimate => estimate(text),
        }
    }

    /// Tokens of one message of the conversation.
    pub(crate) fn message(&self, m: &ChatMessage) -> u64 {
        PER_MESSAGE
            + match m {
                ChatMessage::User { content, images } => {
                    self.text(content) + IMAGE_TOKENS * images.len() as u64
                }
                ChatMessage::Assistant {
                    text,
                    reasoning,
                    tool_calls,
                } => {
                    self.text(text)
                        + reasoning.as_ref().map_or(0, |r| self.text(&r.text))
                        + tool_calls
                            .iter()
                            .map(|c| PER_TOOL_CALL + self.text(&c.name) + self.text(&c.input))
                            .sum::<u64>()
                }
                ChatMessage::ToolResult {
                    content,
                    name,
                    images,
                    ..
                } => self.text(content) + self.text(name) + IMAGE_TOKENS * images.len() as u64,
            }
    }

    /// Tokens of what every step of a turn sends whatever the history: the system prompt and
    /// the tools' specifications.
    pub(crate) fn preamble(&self, system: &str, tools: &[ToolSpec]) -> u64 {
        let specs: u64 = tools
            .iter()
            .map(|t| {
                PER_TOOL_CALL
                    + self.text(&t.name)
                    + self.text(&t.description)
                    + self.text(&t.parameters.to_string())
            })
            .sum();
        PER_MESSAGE + self.text(system) + specs
    }
}

/// The estimate for a model without a tokenizer, by what BPE vocabularies do with each kind
/// of character: a run of letters is a token per ~6 letters (common words are one), a run of
/// digits a token per 3 digits, punctuation and symbols mostly a token each (`": "` and the
/// like merge, hence 0.7), spaces ride on the next word, and any other character (accents,
/// Cyrillic, CJK) is about a token. Calibrated on prose, code, JSON and logs against o200k
/// and cl100k; `test_estimate_error_against_the_tokenizer` reports how far off it is.
pub fn estimate(text: &str) -> u64 {
    #[derive(PartialEq)]
    enum Run {
        None,
        Letters,
        Digits,
    }
    let mut tenths = 0u64;
    let mut run = Run::None;
    let mut len = 0u64;
    let close = |run: &Run, len: u64| match run {
        Run::None => 0,
        Run::Letters => 10 * (1 + len.saturating_sub(1) / 6),
        Run::Digits => 10 * len.div_ceil(3),
    };
    for c in text.chars() {
        // Ideographs are a token each; other letters (accented Latin, Cyrillic, Greek) join
        // words, at about two ASCII letters' worth.
        let ideograph = c as u32 >= 0x2E80;
        let kind = if (c.is_alphabetic() && !ideograph) || c == '_' {
            Run::Letters
        } else if c.is_ascii_digit() {
            Run::Digits
        } else {
            Run::None
        };
        if kind != run {
            tenths += close(&run, len);
            run = kind;
            len = 0;
        }
        match run {
            Run::Letters | Run::Digits => len += if c.is_ascii() { 1 } else { 2 },
            Run::None if c == ' ' => {}
            Run::None if c.is_ascii() => tenths += if c == '\n' { 5 } else { 8 },
            Run::None => tenths += 10,
        }
    }
    tenths += close(&run, len);
    tenths.div_ceil(10)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn samples() -> Vec<(&'static str, String)> {
        let prose = "The daemon keeps every session in SQLite and sends the model only what fits \
            its context window. When a request would pass the threshold, old tool outputs are \
            replaced by a short stub that names the tool and the message it came from, so the \
            model can ask for it again. The user's first instruction is always kept. "
            .repeat(20);
        let code = include_str!("http.rs")
            .chars()
            .take(12_000)
            .collect::<String>();
        let json = serde_json::to_string_pretty(&serde_json::json!({
            "files": (0..200).map(|i| serde_json::json!({
                "path": format!("src/module_{i}/file_{i}.rs"),
                "size": i * 137,
                "modified": "2025-01-01T12:00:00Z",
                "ok": i % 3 == 0,
            })).collect::<Vec<_>>(),
        }))
        .unwrap();
        let log = (0..150)
            .map(|i| {
                format!(
                    "2025-06-01 12:{:02}:{:02} INFO worker {i} finished job #{} in {} ms\n",
                    i % 60,
                    (i * 7) % 60,
                    i * 31,
                    i * 3 + 11
                )
            })
            .collect::<String>();
        let accents = "Le démon garde chaque séance; la fenêtre de contexte est limitée. Größe \
            und Übergröße: die Anfrage wird gekürzt. Привет, мир! 你好，世界。"
            .repeat(20);
        vec![
            ("prose", prose),
            ("code", code),
            ("json", json),
            ("log", log),
            ("non-ascii", accents),
        ]
    }

    /// Reports (run with `--nocapture`) the estimate's error against the o200k encoding on
    /// representative text, and checks it stays within bounds that the budget's margin and the
    /// provider's correction absorb.
    #[test]
    fn test_estimate_error_against_the_tokenizer() {
        let bpe = o200k().expect("the o200k encoding loads");
        println!(
            "{:<10} {:>8} {:>9} {:>8}",
            "sample", "o200k", "estimate", "error"
        );
        for (name, text) in samples() {
            let real = bpe.encode_ordinary(&text).len() as f64;
            let est = estimate(&text) as f64;
            let err = (est - real) / real * 100.0;
            println!("{name:<10} {real:>8} {est:>9} {err:>7.1}%");
            assert!(
                (-35.0..=35.0).contains(&err),
                "{name}: estimate {est} vs o200k {real}"
            );
        }
    }

    /// Reports the tokenizer's cost: the first use (building the rank table) and counting a
    /// request-sized text.
    #[test]
    fn test_tokenizer_cost() {
        let t = std::time::Instant::now();
        let counter = Counter::for_model(ApiKind::Openai, "gpt-4o");
        assert!(matches!(counter, Counter::Bpe(_)));
        let load = t.elapsed();
        let text: String = samples().into_iter().map(|(_, t)| t).collect();
        let t = std::time::Instant::now();
        let n = counter.text(&text);
        let count = t.elapsed();
        let t = std::time::Instant::now();
        let e = Counter::Estimate.text(&text);
        let est = t.elapsed();
        println!(
            "load {load:?}; {} bytes: o200k {n} tokens in {count:?}, estimate {e} in {est:?}",
            text.len()
        );
    }

    #[test]
    fn only_openai_models_on_the_openai_api_get_a_tokenizer() {
        assert!(matches!(
            Counter::for_model(ApiKind::Openai, "gpt-5-mini"),
            Counter::Bpe(_)
        ));
        assert!(matches!(
            Counter::for_model(ApiKind::Openai, "openai/gpt-4.1"),
            Counter::Bpe(_)
        ));
        assert!(matches!(
            Counter::for_model(ApiKind::Openai, "llama3.1:8b"),
            Counter::Estimate
        ));
        assert!(matches!(
            Counter::for_model(ApiKind::Anthropic, "claude-sonnet-4-5"),
            Counter::Estimate
        ));
    }
}
