//! The context budget: what of a session the next model request carries so that it fits the
//! model's window. The turn keeps the whole conversation it read (a bounded page of the store
//! plus the session's first message) and what it added, each message with its token count and
//! the stored message it came from; before every model call `assemble` builds the request from
//! it, compacting *the request only* when it would pass the threshold:
//!
//! 1. old tool outputs become a one-line stub naming the tool, its input and the stored message
//!    (and a tool call's large input, a `write` of a whole file, a stub naming the message);
//! 2. if that is not enough, the oldest turns are left out — never the session's first user
//!    message (the user's instructions), never a model-written summary of older turns, never
//!    the two latest turns (before this, the step has the older turns summarised: `older` and
//!    `summarize` here, the model call in `summary.rs`, so this step only leaves out what came
//!    after a summary, or everything old when summarising failed);
//! 3. if the request is still over the window, the previous turn goes too and the current
//!    turn's earlier tool outputs are stubbed; the latest step's results are always kept;
//! 4. then the summary; past that the request cannot fit: the step fails with `TooLarge`, once.
//!
//! The stored messages are never touched. Counts are the model's tokenizer or the estimate
//! (`model::tokens`), scaled by the session's correction factor, learnt from the provider's
//! reported `prompt_tokens`.

use std::collections::{BTreeSet, HashMap};

use crate::model::ChatMessage;
use crate::model::tokens::Counter;

/// The latest turns always sent as they are (the current one and the one before).
const KEEP_TURNS: usize = 2;
/// Tool outputs smaller than this (tokens) are not worth a stub.
const MIN_STUB: u64 = 40;
/// Characters of a tool's input shown in its stub.
const STUB_INPUT_CHARS: usize = 120;
/// Tokens the request framing adds once (OpenAI documents 3).
const PER_REQUEST: u64 = 3;
/// What the note appended to the first instruction when turns are left out costs, at most.
const DROP_NOTE: u64 = 30;
/// The correction factor is trusted within these bounds; a provider reporting a count outside
/// `[1/4, 4]` times ours is not counting this request (some servers report nothing useful).
/// It only ever raises our count: an overcount costs a little context, an undercount a refused
/// request (and a compatible server may report only the uncached part of its input).
const FACTOR_MIN: f64 = 1.0;
const FACTOR_MAX: f64 = 2.0;
const PLAUSIBLE: std::ops::RangeInclusive<f64> = 0.25..=4.0;

/// One message of the conversation as the budget sees it.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// The stored message it came from (a tool result of the running turn names the assistant
    /// message holding the call: its own row is written with the next step).
    pub(super) source: String,
    /// Turns start at user messages; the budget keeps and drops whole turns.
    turn: usize,
    pub(super) msg: ChatMessage,
    tokens: u64,
    /// A model-written summary: how many stored messages it stands for.
    summary: Option<u32>,
}

/// The conversation a turn sends, growing as the turn goes.
#[derive(Debug)]
pub(super) struct Conversation {
    counter: Counter,
    /// Whether the model accepts images.
    images: bool,
    entries: Vec<Entry>,
    /// The session's first user message, when it is among the entries.
    first: Option<usize>,
    turns: usize,
}

/// What the request must fit.
#[derive(Debug, Clone, Copy)]
pub(super) struct Budget {
    /// The model's context window (tokens of input and output).
    pub(super) window: u64,
    /// Kept free for the answer: the model's longest output.
    pub(super) reserve: u64,
    /// Kept free for counting errors.
    pub(super) margin: u64,
    /// Percent of the window past which the request is compacted.
    pub(super) threshold_percent: u32,
}

impl Budget {
    /// No window known (a test's scripted model): nothing is ever compacted.
    pub(super) fn unbounded() -> Self {
        Self::new(u64::MAX / 4, None, true, 100)
    }

    /// Budget for a model: its window, its longest output (capped at half the window; an
    /// eighth when unknown), and a margin of 2% with an exact tokenizer, 10% with the estimate.
    pub(super) fn new(
        window: u64,
        max_output: Option<u32>,
        exact: bool,
        threshold_percent: u32,
    ) -> Self {
        let reserve = max_output.map_or(window / 8, u64::from).min(window / 2);
        let margin = if exact { window / 50 } else { window / 10 };
        Self {
            window,
            reserve,
            margin,
            threshold_percent: threshold_percent.clamp(10, 100),
        }
    }

    /// The most a request may count.
    pub(super) fn hard(&self) -> u64 {
        self.window.saturating_sub(self.reserve + self.margin)
    }

    /// The size past which a request is compacted, and down to which it is compacted.
    pub(super) fn target(&self) -> u64 {
        (self.window / 100 * u64::from(self.threshold_percent)).min(self.hard())
    }
}

/// A request that fits.
#[derive(Debug)]
pub(super) struct Assembled {
    pub(super) messages: Vec<ChatMessage>,
    /// Its count before the correction factor (what the provider's count is compared with).
    pub(super) raw_tokens: u64,
    pub(super) compaction: Option<Compaction>,
}

/// How a request was compacted (the `compacted` event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Compaction {
    pub(super) from_message_id: String,
    pub(super) to_message_id: String,
    pub(super) tokens_before: u64,
    pub(super) tokens_after: u64,
    pub(super) stubbed: u32,
    pub(super) dropped: u32,
}

/// The older part of a conversation, as a summary would replace it.
#[derive(Debug, Clone)]
pub(super) struct Older {
    range: std::ops::Range<usize>,
    pub(super) from_message_id: String,
    pub(super) to_message_id: String,
    /// Stored messages it stands for (a previous summary counts the messages it replaced).
    pub(super) messages: u32,
    /// The messages as the model is shown them, each marked when it is a previous summary.
    pub(super) shown: Vec<(ChatMessage, bool)>,
}

/// A request that cannot fit whatever is left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TooLarge {
    pub(super) tokens: u64,
    pub(super) window: u64,
    pub(super) reserve: u64,
}

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request does not fit the model's context window: the current prompt with the \
             session's first instruction, the system prompt and the tools is {} tokens after \
             compaction, and the model's window of {} tokens leaves {} once {} are kept for the \
             answer; shorten the prompt or its attachments, or use a model with a larger window",
            self.tokens,
            self.window,
            self.window.saturating_sub(self.reserve),
            self.reserve
        )
    }
}

/// What a session's budget remembers between steps and runs (in memory; a restarted daemon
/// learns again).
#[derive(Debug)]
pub(super) struct Memory {
    /// The provider's count over ours, from the latest step that reported one.
    factor: f64,
    /// The last compaction announced, so that an unchanged one is not announced again.
    announced: Option<Compaction>,
}

impl Default for Memory {
    fn default() -> Self {
        Self {
            factor: 1.0,
            announced: None,
        }
    }
}

impl Memory {
    pub(super) fn factor(&self) -> f64 {
        self.factor
    }

    /// Learns from a step: `reported` prompt tokens for a request we counted `raw`.
    pub(super) fn calibrate(&mut self, raw: u64, reported: u64) {
        if raw == 0 || reported == 0 {
            return;
        }
        let ratio = reported as f64 / raw as f64;
        if PLAUSIBLE.contains(&ratio) {
            self.factor = ratio.clamp(FACTOR_MIN, FACTOR_MAX);
        }
    }

    /// The provider said a request we thought fitted did not: count higher from now on.
    pub(super) fn overflowed(&mut self) {
        self.factor = (self.factor * 1.25).clamp(FACTOR_MIN, FACTOR_MAX);
    }

    /// Whether `c` is news (a different range or amount than the last one announced).
    pub(super) fn announce(&mut self, c: &Compaction) -> bool {
        let same = self.announced.as_ref().is_some_and(|a| {
            a.from_message_id == c.from_message_id
                && a.to_message_id == c.to_message_id
                && a.stubbed == c.stubbed
                && a.dropped == c.dropped
        });
        if !same {
            self.announced = Some(c.clone());
        }
        !same
    }
}

/// What the assembly does with one entry.
#[derive(Debug, Clone)]
enum Slot {
    Keep,
    /// Sent as this smaller message instead (a tool output or a tool call's input stubbed).
    Stub(ChatMessage, u64),
    Drop,
}

impl Conversation {
    /// A conversation for a model counted by `counter`; `images`: whether it accepts images
    /// (a model that does not is told in their place that images were left out).
    pub(super) fn new(counter: Counter, images: bool) -> Self {
        Self {
            counter,
            images,
            entries: Vec::new(),
            first: None,
            turns: 0,
        }
    }

    /// Appends a message; a user message starts a turn. `first` marks the session's first
    /// user message.
    pub(super) fn push(&mut self, source: &str, msg: ChatMessage, first: bool) {
        if first {
            self.first = Some(self.entries.len());
        }
        self.push_entry(source, msg, None);
    }

    /// Appends a model-written summary standing for `messages` stored messages (shown as a
    /// user message: a turn of its own).
    pub(super) fn push_summary(&mut self, source: &str, msg: ChatMessage, messages: u32) {
        self.push_entry(source, msg, Some(messages));
    }

    fn push_entry(&mut self, source: &str, msg: ChatMessage, summary: Option<u32>) {
        if matches!(msg, ChatMessage::User { .. }) {
            self.turns += 1;
        }
        let msg = if self.images {
            msg
        } else {
            without_images(msg)
        };
        let tokens = self.counter.message(&msg);
        self.entries.push(Entry {
            source: source.to_owned(),
            turn: self.turns,
            msg,
            tokens,
            summary,
        });
    }

    /// How many tokens of recent turns a summary leaves as they are: half of what the
    /// threshold leaves once the preamble, the first instruction and a summary are counted, so
    /// that a summary buys room for several turns before the next one.
    pub(super) fn recent_room(&self, limits: &Budget, preamble: u64) -> u64 {
        let first = self.first.map_or(0, |i| self.entries[i].tokens);
        let summary = super::summary::summary_tokens(limits.window);
        limits
            .target()
            .saturating_sub(preamble + PER_REQUEST + first + summary)
            / 2
    }

    /// The older part of the conversation a summary would replace: everything after the
    /// session's first instruction up to the latest turns, which are kept as they are — at
    /// least `min_turns`, and more while they fit `room` tokens. `None` when that part holds
    /// no whole turn (only the first prompt's answer, or only a previous summary).
    pub(super) fn older(&self, min_turns: usize, room: u64) -> Option<Older> {
        let start = self.first.map_or(0, |f| f + 1);
        let mut kept_from = self.turns.saturating_sub(min_turns) + 1;
        let turn_tokens = |t: usize| -> u64 {
            self.entries
                .iter()
                .filter(|e| e.turn == t)
                .map(|e| e.tokens)
                .sum()
        };
        let mut kept: u64 = (kept_from..=self.turns).map(turn_tokens).sum();
        while kept_from > 1 {
            let more = turn_tokens(kept_from - 1);
            if kept + more > room {
                break;
            }
            kept += more;
            kept_from -= 1;
        }
        let end = self
            .entries
            .iter()
            .position(|e| e.turn >= kept_from)
            .unwrap_or(self.entries.len())
            .max(start);
        let entries = &self.entries[start..end];
        // Worth a model call only with a whole turn in it (not only the first prompt's answer,
        // or a previous summary).
        let whole_turn = entries
            .iter()
            .any(|e| e.summary.is_none() && matches!(e.msg, ChatMessage::User { .. }));
        if !whole_turn {
            return None;
        }
        let (from, to) = (entries.first()?, entries.last()?);
        // Each stored message once; a previous summary counts the messages it stands for.
        let mut sources = BTreeSet::new();
        let mut messages = 0u32;
        for e in entries {
            if sources.insert(e.source.as_str()) {
                messages += e.summary.unwrap_or(1);
            }
        }
        Some(Older {
            range: start..end,
            from_message_id: from.source.clone(),
            to_message_id: to.source.clone(),
            messages,
            shown: entries
                .iter()
                .map(|e| (e.msg.clone(), e.summary.is_some()))
                .collect(),
        })
    }

    /// Shows `summary` (a user message, stored as `source`) in place of `older`'s entries.
    pub(super) fn summarize(&mut self, older: &Older, source: &str, summary: ChatMessage) {
        let tokens = self.counter.message(&summary);
        let entry = Entry {
            source: source.to_owned(),
            turn: 0,
            msg: summary,
            tokens,
            summary: Some(older.messages),
        };
        self.entries.splice(older.range.clone(), [entry]);
        // Turn numbers follow from the user messages, the summary's own included.
        self.turns = 0;
        for e in &mut self.entries {
            if matches!(e.msg, ChatMessage::User { .. }) {
                self.turns += 1;
            }
            e.turn = self.turns;
        }
    }

    /// Tokens of the whole conversation with `preamble` and the framing, uncompacted and
    /// uncorrected.
    pub(super) fn request_tokens(&self, preamble: u64) -> u64 {
        preamble + PER_REQUEST + self.entries.iter().map(|e| e.tokens).sum::<u64>()
    }

    /// Tokens of the whole conversation as it is (before any compaction or correction).
    #[cfg(test)]
    pub(super) fn tokens(&self) -> u64 {
        self.entries.iter().map(|e| e.tokens).sum()
    }

    /// The request for the next step: as it is when it fits under the threshold, else
    /// compacted (see the module's steps). `forced` after the provider refused a request as too
    /// long: compact down to 80% of the usual target.
    pub(super) fn assemble(
        &self,
        preamble: u64,
        limits: &Budget,
        factor: f64,
        forced: bool,
    ) -> Result<Assembled, TooLarge> {
        let mut slots = vec![Slot::Keep; self.entries.len()];
        let corrected = |raw: u64| (raw as f64 * factor).ceil() as u64;
        let raw = |slots: &[Slot]| -> u64 {
            let note = if slots.iter().any(|s| matches!(s, Slot::Drop)) {
                DROP_NOTE
            } else {
                0
            };
            preamble
                + PER_REQUEST
                + note
                + self
                    .entries
                    .iter()
                    .zip(slots)
                    .map(|(e, s)| match s {
                        Slot::Keep => e.tokens,
                        Slot::Stub(_, t) => *t,
                        Slot::Drop => 0,
                    })
                    .sum::<u64>()
        };
        let before = corrected(raw(&slots));
        let mut goal = limits.target();
        if forced {
            // The provider counts more than we do: shrink the request by a fifth at least.
            goal = goal.min(before) * 4 / 5;
        }
        if before <= goal && !forced {
            return Ok(self.finish(slots, raw, None));
        }
        let fits = |slots: &[Slot], goal: u64| corrected(raw(slots)) <= goal;
        let last = self.turns;
        let old = |e: &Entry| e.turn + KEEP_TURNS <= last;
        let inputs = self.call_inputs();
        // 1. Old tool outputs, oldest first.
        for i in 0..self.entries.len() {
            if fits(&slots, goal) {
                break;
            }
            if old(&self.entries[i]) {
                self.stub(i, &inputs, &mut slots);
            }
        }
        // 2. Old turns, oldest first, whole (a tool call and its result leave together), but
        // never the session's first user message.
        for t in 1..=last.saturating_sub(KEEP_TURNS) {
            if fits(&slots, goal) {
                break;
            }
            self.drop_turn(t, &mut slots);
        }
        // 3. Over the window itself: the previous turn, then the current turn's earlier tool
        // outputs (the latest step's results, after the last assistant message, stay).
        let hard = limits.hard();
        if !fits(&slots, hard) && last >= 2 {
            for i in 0..self.entries.len() {
                if self.entries[i].turn == last - 1 {
                    self.stub(i, &inputs, &mut slots);
                }
            }
            if !fits(&slots, hard) {
                self.drop_turn(last - 1, &mut slots);
            }
        }
        if !fits(&slots, hard) {
            let latest = self
                .entries
                .iter()
                .rposition(|e| matches!(e.msg, ChatMessage::Assistant { .. }));
            for i in 0..latest.unwrap_or(0) {
                if self.entries[i].turn == last && !fits(&slots, hard) {
                    self.stub(i, &inputs, &mut slots);
                }
            }
        }
        // 4. Last, the summary of the older turns.
        if !fits(&slots, hard) {
            for (i, e) in self.entries.iter().enumerate() {
                if e.summary.is_some() {
                    slots[i] = Slot::Drop;
                }
            }
        }
        let after = corrected(raw(&slots));
        if after > hard {
            return Err(TooLarge {
                tokens: after,
                window: limits.window,
                reserve: limits.reserve,
            });
        }
        let changed: Vec<&Entry> = self
            .entries
            .iter()
            .zip(&slots)
            .filter(|(_, s)| !matches!(s, Slot::Keep))
            .map(|(e, _)| e)
            .collect();
        let compaction = match (changed.first(), changed.last()) {
            (Some(from), Some(to)) => {
                let count = |want: fn(&Slot) -> bool| {
                    self.entries
                        .iter()
                        .zip(&slots)
                        .filter(|(_, s)| want(s))
                        .map(|(e, _)| e.source.as_str())
                        .collect::<BTreeSet<_>>()
                        .len() as u32
                };
                Some(Compaction {
                    from_message_id: from.source.clone(),
                    to_message_id: to.source.clone(),
                    tokens_before: before,
                    tokens_after: after,
                    stubbed: self
                        .entries
                        .iter()
                        .zip(&slots)
                        .filter(|(_, s)| matches!(s, Slot::Stub(..)))
                        .count() as u32,
                    dropped: count(|s| matches!(s, Slot::Drop)),
                })
            }
            _ => None,
        };
        Ok(self.finish(slots, raw, compaction))
    }

    /// Every tool call's input by call id (what a stub shows).
    fn call_inputs(&self) -> HashMap<&str, &str> {
        let mut out = HashMap::new();
        for e in &self.entries {
            if let ChatMessage::Assistant { tool_calls, .. } = &e.msg {
                for c in tool_calls {
                    out.insert(c.id.as_str(), c.input.as_str());
                }
            }
        }
        out
    }

    /// Replaces entry `i`'s tool output, or its tool calls' large inputs (a `write` of a
    /// whole file), by a stub, when there is one worth replacing. A call keeps its id, so its
    /// result still pairs with it.
    fn stub(&self, i: usize, inputs: &HashMap<&str, &str>, slots: &mut [Slot]) {
        let e = &self.entries[i];
        if !matches!(slots[i], Slot::Keep) || e.tokens < MIN_STUB {
            return;
        }
        let (call_id, name, content, is_error) = match &e.msg {
            ChatMessage::ToolResult {
                call_id,
                name,
                content,
                is_error,
                ..
            } => (call_id, name, content, *is_error),
            ChatMessage::Assistant {
                text,
                reasoning,
                tool_calls,
            } => {
                let mut stubbed = false;
                let calls = tool_calls
                    .iter()
                    .map(|c| {
                        if self.counter.text(&c.input) < MIN_STUB {
                            return c.clone();
                        }
                        stubbed = true;
                        let note = format!(
                            "{} bytes of input left out to fit the context window; stored in \
                             message {}",
                            c.input.len(),
                            e.source
                        );
                        crate::model::ToolCall {
                            input: serde_json::json!({ "omitted": note }).to_string(),
                            ..c.clone()
                        }
                    })
                    .collect();
                if stubbed {
                    let msg = ChatMessage::Assistant {
                        text: text.clone(),
                        reasoning: reasoning.clone(),
                        tool_calls: calls,
                    };
                    let tokens = self.counter.message(&msg);
                    slots[i] = Slot::Stub(msg, tokens);
                }
                return;
            }
            ChatMessage::User { .. } => return,
        };
        let input = inputs.get(call_id.as_str()).copied().unwrap_or("{}");
        let mut shown: String = input.chars().take(STUB_INPUT_CHARS).collect();
        if shown.len() < input.len() {
            shown.push('…');
        }
        let text = format!(
            "[output of {name} {shown} left out to fit the context window: {} lines, stored in \
             message {}; run the tool again if it is needed]",
            content.lines().count(),
            e.source
        );
        let msg = ChatMessage::ToolResult {
            call_id: call_id.clone(),
            name: name.clone(),
            content: text,
            is_error,
            images: Vec::new(),
        };
        let tokens = self.counter.message(&msg);
        slots[i] = Slot::Stub(msg, tokens);
    }

    /// Leaves turn `t` out, except the session's first user message.
    fn drop_turn(&self, t: usize, slots: &mut [Slot]) {
        for (i, e) in self.entries.iter().enumerate() {
            if e.turn == t && Some(i) != self.first && e.summary.is_none() {
                slots[i] = Slot::Drop;
            }
        }
    }

    fn finish(
        &self,
        slots: Vec<Slot>,
        raw: impl Fn(&[Slot]) -> u64,
        compaction: Option<Compaction>,
    ) -> Assembled {
        let raw_tokens = raw(&slots);
        let dropped = slots.iter().filter(|s| matches!(s, Slot::Drop)).count();
        let mut messages = Vec::with_capacity(self.entries.len() - dropped);
        for (i, (e, slot)) in self.entries.iter().zip(slots).enumerate() {
            let msg = match slot {
                Slot::Keep => e.msg.clone(),
                Slot::Drop => continue,
                Slot::Stub(msg, _) => msg,
            };
            // Tell the model that what follows its instructions is not the whole story.
            let msg = match msg {
                ChatMessage::User { content, images } if Some(i) == self.first && dropped > 0 => {
                    ChatMessage::User {
                        content: format!(
                            "{content}\n\n[{dropped} later messages of this session are left \
                             out of this request to fit the context window]"
                        ),
                        images,
                    }
                }
                m => m,
            };
            messages.push(msg);
        }
        Assembled {
            messages,
            raw_tokens,
            compaction,
        }
    }
}

/// `msg` for a model that does not accept images: each image becomes a line saying what it was.
fn without_images(msg: ChatMessage) -> ChatMessage {
    let note = |content: String, images: &[crate::model::Image]| {
        let mut out = content;
        for image in images {
            if !out.is_empty() {
                out.push('\n');
            }
            // base64: 4 characters for 3 bytes.
            out.push_str(&format!(
                "[an image ({}, about {} bytes) is left out: this model does not accept images]",
                image.mime_type,
                image.data.len() / 4 * 3
            ));
        }
        out
    };
    match msg {
        ChatMessage::User { content, images } if !images.is_empty() => ChatMessage::User {
            content: note(content, &images),
            images: Vec::new(),
        },
        ChatMessage::ToolResult {
            call_id,
            name,
            content,
            is_error,
            images,
        } if !images.is_empty() => ChatMessage::ToolResult {
            call_id,
            name,
            content: note(content, &images),
            is_error,
            images: Vec::new(),
        },
        m => m,
    }
}

#[cfg(test)]
#[path = "budget_tests.rs"]
mod tests;
