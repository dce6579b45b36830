#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use crate::model::ToolCall;

/// A session of `turns` turns, each a prompt, a tool call, its large output and an answer.
fn session(turns: usize) -> Conversation {
    let mut c = Conversation::new(Counter::Estimate, true);
    for t in 0..turns {
        let first = t == 0;
        c.push(
            &format!("u{t}"),
            ChatMessage::user(format!("FIRST-INSTRUCTION {t} ").repeat(if first { 5 } else { 20 })),
            first,
        );
        c.push(
            &format!("a{t}"),
            ChatMessage::Assistant {
                text: String::new(),
                reasoning: None,
                tool_calls: vec![ToolCall {
                    id: format!("c{t}"),
                    name: "view".into(),
                    input: format!("{{\"path\":\"file{t}.rs\"}}"),
                }],
            },
            false,
        );
        c.push(
            &format!("t{t}"),
            ChatMessage::ToolResult {
                call_id: format!("c{t}"),
                name: "view".into(),
                content: "fn main() { println!(\"hello\"); }\n".repeat(40),
                is_error: false,
                images: Vec::new(),
            },
            false,
        );
        c.push(&format!("b{t}"), ChatMessage::assistant("done"), false);
    }
    c
}

fn limits(window: u64) -> Budget {
    Budget::new(window, Some(400), false, 80)
}

#[test]
fn a_small_request_is_sent_as_it_is() {
    let c = session(2);
    let a = c.assemble(100, &limits(100_000), 1.0, false).unwrap();
    assert!(a.compaction.is_none());
    assert_eq!(a.messages.len(), 8);
}

#[test]
fn old_tool_outputs_are_stubbed_first_and_recent_turns_kept_verbatim() {
    let c = session(6);
    let full = c.tokens();
    let l = limits(full * 100 / 90);
    let a = c.assemble(0, &l, 1.0, false).unwrap();
    let comp = a.compaction.expect("compacted");
    assert!(comp.stubbed > 0);
    assert_eq!(comp.dropped, 0);
    assert!(comp.tokens_after <= l.target());
    let results: Vec<&String> = a
        .messages
        .iter()
        .filter_map(|m| match m {
            ChatMessage::ToolResult { content, .. } => Some(content),
            _ => None,
        })
        .collect();
    assert!(
        results[0].contains("stored in message t0"),
        "{}",
        results[0]
    );
    // The two latest turns are verbatim.
    assert!(results[4].starts_with("fn main"));
    assert!(results[5].starts_with("fn main"));
}

#[test]
fn old_turns_are_dropped_but_never_the_first_instruction() {
    let c = session(30);
    let l = limits(3_000);
    let a = c.assemble(200, &l, 1.0, false).unwrap();
    let comp = a.compaction.expect("compacted");
    assert!(comp.dropped > 0);
    assert_eq!(comp.from_message_id, "a0");
    let ChatMessage::User { content, .. } = &a.messages[0] else {
        panic!("first is the instruction")
    };
    assert!(content.starts_with("FIRST-INSTRUCTION 0"));
    assert!(content.contains("left out"));
    // The latest turn is whole and last.
    assert!(
        matches!(a.messages.last(), Some(ChatMessage::Assistant { text, .. }) if text == "done")
    );
    assert!(a.raw_tokens <= l.hard());
    // Every tool result still follows its call.
    for (i, m) in a.messages.iter().enumerate() {
        if let ChatMessage::ToolResult { call_id, .. } = m {
            assert!(
                matches!(&a.messages[i - 1], ChatMessage::Assistant { tool_calls, .. } if tool_calls[0].id == *call_id)
            );
        }
    }
}

#[test]
fn a_prompt_larger_than_the_window_is_too_large() {
    let mut c = session(1);
    c.push("huge", ChatMessage::user("word ".repeat(10_000)), false);
    let e = c.assemble(0, &limits(4_000), 1.0, false).unwrap_err();
    assert!(e.tokens > 4_000);
    assert!(e.to_string().contains("4000 tokens"));
}

#[test]
fn forced_compaction_goes_below_the_usual_target() {
    let c = session(10);
    let l = limits(c.tokens() * 2);
    assert!(c.assemble(0, &l, 1.0, false).unwrap().compaction.is_none());
    let a = c.assemble(0, &l, 1.5, true).unwrap();
    assert!(a.compaction.is_some());
}

#[test]
fn the_factor_learns_plausible_reports_only() {
    let mut m = Memory::default();
    m.calibrate(1000, 10);
    assert_eq!(m.factor(), 1.0);
    m.calibrate(1000, 800);
    assert_eq!(m.factor(), 1.0, "a lower report never lowers the count");
    m.calibrate(1000, 1200);
    assert!((m.factor() - 1.2).abs() < 1e-9);
    m.overflowed();
    assert!((m.factor() - 1.5).abs() < 1e-9);
}

#[test]
fn a_huge_tool_call_input_is_stubbed_and_its_result_still_pairs_with_it() {
    let mut c = Conversation::new(Counter::Estimate, true);
    c.push("u0", ChatMessage::user("write the big file"), true);
    c.push(
        "a0",
        ChatMessage::Assistant {
            text: String::new(),
            reasoning: None,
            tool_calls: vec![ToolCall {
                id: "call_big".into(),
                name: "write".into(),
                input: format!(
                    "{{\"path\":\"big\",\"content\":\"{}\"}}",
                    "x ".repeat(50_000)
                ),
            }],
        },
        false,
    );
    c.push(
        "a0",
        ChatMessage::ToolResult {
            call_id: "call_big".into(),
            name: "write".into(),
            content: "the tool call did not complete".into(),
            is_error: true,
            images: Vec::new(),
        },
        false,
    );
    c.push("u1", ChatMessage::user("go on"), false);
    let a = c.assemble(100, &limits(32_768), 1.0, false).unwrap();
    assert!(a.compaction.unwrap().stubbed >= 1);
    let ChatMessage::Assistant { tool_calls, .. } = &a.messages[1] else {
        panic!("the call is kept")
    };
    assert_eq!(tool_calls[0].id, "call_big");
    assert!(serde_json::from_str::<serde_json::Value>(&tool_calls[0].input).is_ok());
    assert!(tool_calls[0].input.contains("stored in message a0"));
    assert!(
        matches!(&a.messages[2], ChatMessage::ToolResult { call_id, is_error: true, .. } if call_id == "call_big")
    );
}

#[test]
fn the_older_part_is_everything_between_the_first_instruction_and_the_kept_turns() {
    let c = session(5);
    let older = c.older(KEEP_TURNS, 0).unwrap();
    // Turn 0's user message is the first instruction: kept. Its call, result and answer and
    // turns 1 and 2 are older; turns 3 and 4 are kept.
    assert_eq!(older.from_message_id, "a0");
    assert_eq!(older.to_message_id, "b2");
    assert_eq!(older.messages, 3 + 4 + 4);
    assert_eq!(older.shown.len(), 11);
    assert!(older.shown.iter().all(|(_, summary)| !summary));
    // Three turns: only the rest of the first one is older, not worth a summary.
    assert!(session(3).older(KEEP_TURNS, 0).is_none());
    assert_eq!(session(4).older(KEEP_TURNS, 0).unwrap().messages, 3 + 4);
    assert!(session(1).older(1, 0).is_none());
}

#[test]
fn a_summary_replaces_the_older_part_and_counts_what_it_stands_for() {
    let mut c = session(6);
    let before = c.request_tokens(0);
    let older = c.older(KEEP_TURNS, 0).unwrap();
    c.summarize(&older, "s1", ChatMessage::user("SUMMARY ONE"));
    assert!(c.request_tokens(0) < before / 2);
    let a = c.assemble(0, &limits(100_000), 1.0, false).unwrap();
    let texts: Vec<String> = a
        .messages
        .iter()
        .filter_map(|m| match m {
            ChatMessage::User { content, .. } => Some(content.clone()),
            _ => None,
        })
        .collect();
    assert!(texts[0].starts_with("FIRST-INSTRUCTION 0"));
    assert_eq!(texts[1], "SUMMARY ONE");
    assert!(texts[2].starts_with("FIRST-INSTRUCTION 4"));
    assert_eq!(texts.len(), 4, "first, summary, the two kept turns");
    // Two more turns: the next summary covers the first one and what followed it.
    for t in 6..8 {
        c.push(
            &format!("u{t}"),
            ChatMessage::user(format!("turn {t}")),
            false,
        );
        c.push(&format!("b{t}"), ChatMessage::assistant("ok"), false);
    }
    let older = c.older(KEEP_TURNS, 0).unwrap();
    assert_eq!(older.from_message_id, "s1");
    assert_eq!(older.to_message_id, "b5");
    assert_eq!(
        older.messages,
        (3 + 4 * 3) + 4 * 2,
        "what the first summary stood for, and turns 4 and 5"
    );
    assert!(older.shown[0].1, "the first summary is marked as one");
    c.summarize(&older, "s2", ChatMessage::user("SUMMARY TWO"));
    // A conversation that is only the first instruction, a summary and the kept turns has
    // nothing more to summarise.
    assert!(c.older(KEEP_TURNS, 0).is_none());
}

#[test]
fn a_summary_keeps_as_many_recent_turns_as_fit_its_room() {
    let c = session(6);
    assert!(
        c.older(5, 0).is_none(),
        "with five turns kept only the rest of the first is older: not worth a summary"
    );
    assert_eq!(c.older(4, 0).unwrap().shown.len(), 3 + 4);
    // Room for about two and a half turns of the session: two are kept whole.
    let per_turn = c.tokens() / 6;
    let older = c.older(1, per_turn * 5 / 2).unwrap();
    assert_eq!(older.to_message_id, "b3", "turns 4 and 5 are kept");
    // No room: only the current turn is kept.
    assert_eq!(c.older(1, 0).unwrap().to_message_id, "b4");
    // The budget's room leaves what the threshold allows after the fixed parts, halved.
    let l = limits(20_000);
    assert!(c.recent_room(&l, 1_000) < l.target() / 2);
    assert_eq!(c.recent_room(&l, l.target()), 0);
}
