//! The permission question on a terminal (`crushctl run`): the answers it offers and what a
//! typed line means. `y` allows once, `a` allows the tool for the session, `s`/`w`/`g` save a
//! rule in the session, the workspace or everywhere — for the suggested pattern, or for the
//! user's own typed after the key (`w cargo test`) — and anything else denies.

use crush_protocol::{
    PermissionDecision, PermissionRequestParams, PermissionRequestResult, RuleScope,
};

use crate::prompts::decided;

/// The keys of the saved-rule answers.
const SCOPE_KEYS: &[(&str, RuleScope, &str)] = &[
    ("s", RuleScope::Session, "in this session"),
    ("w", RuleScope::Workspace, "in this workspace"),
    ("g", RuleScope::Global, "everywhere"),
];

/// The answers a question offers: once, the tool for this session, and — when the daemon
/// offers scopes — a saved rule in this session, workspace or everywhere.
pub fn choices(params: &PermissionRequestParams) -> String {
    let mut s = format!("  allow? [y] once  [a] {} for this session", params.tool);
    let what = match &params.suggested_pattern {
        Some(p) => format!("{} {p:?}", params.tool),
        None => params.tool.clone(),
    };
    let offered: Vec<_> = SCOPE_KEYS
        .iter()
        .filter(|(_, scope, _)| params.scopes.contains(scope))
        .collect();
    if let Some((first, _, _)) = offered.first() {
        s.push_str(&format!("\n  always allow {what}:"));
        for (key, _, name) in &offered {
            s.push_str(&format!("  [{key}] {name}"));
        }
        if params.suggested_pattern.is_some() {
            s.push_str(&format!(
                "\n  (your own pattern after the key: {first} {})",
                example(params)
            ));
        }
        s.push('\n');
    }
    s.push_str("  [N] deny: ");
    s
}

/// A pattern to show in the hint: the suggestion's first word (a wider rule than suggested).
fn example(params: &PermissionRequestParams) -> String {
    let suggested = params.suggested_pattern.as_deref().unwrap_or_default();
    match params.tool.as_str() {
        "bash" => suggested
            .split_whitespace()
            .next()
            .unwrap_or(suggested)
            .to_owned(),
        _ => "src/**".to_owned(),
    }
}

/// What a typed line answers, and what to say about it. A saved-rule answer with the user's
/// own pattern carries it (`pattern`); the daemon checks it.
pub fn answer(params: &PermissionRequestParams, line: &str) -> (PermissionRequestResult, String) {
    let line = line.trim();
    let (key, own) = match line.split_once(char::is_whitespace) {
        Some((k, rest)) => (
            k.to_lowercase(),
            Some(rest.trim()).filter(|p| !p.is_empty()),
        ),
        None => (line.to_lowercase(), None),
    };
    match key.as_str() {
        "y" | "yes" => return (decided(PermissionDecision::Allow), "allowed once".into()),
        "a" => {
            return (
                decided(PermissionDecision::AllowSession),
                "allowed for this session".into(),
            );
        }
        _ => {}
    }
    for (k, scope, name) in SCOPE_KEYS {
        if key == *k && params.scopes.contains(scope) {
            let what = own
                .or(params.suggested_pattern.as_deref())
                .map(|p| format!(" {p:?}"))
                .unwrap_or_default();
            return (
                PermissionRequestResult {
                    decision: PermissionDecision::AllowAlways,
                    scope: Some(*scope),
                    pattern: own.map(str::to_owned),
                },
                format!("always allowed{what} {name}"),
            );
        }
    }
    (decided(PermissionDecision::Deny), "denied".into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn bash(command: &str, suggested: &str) -> PermissionRequestParams {
        serde_json::from_value(serde_json::json!({
            "requestId": "r", "sessionId": "s", "runId": "u", "toolCallId": "c",
            "tool": "bash", "title": format!("Run: {command}"), "input": {"command": command},
            "scopes": ["session", "workspace", "global"], "suggestedPattern": suggested,
        }))
        .unwrap()
    }

    #[test]
    fn a_key_alone_takes_the_suggestion_and_a_key_with_words_takes_them() {
        let p = bash("cargo test -p x", "cargo test");
        let (a, said) = answer(&p, "w\n");
        assert_eq!(a.decision, PermissionDecision::AllowAlways);
        assert_eq!(a.scope, Some(RuleScope::Workspace));
        assert_eq!(a.pattern, None);
        assert_eq!(said, "always allowed \"cargo test\" in this workspace");
        let (a, said) = answer(&p, "G  cargo \n");
        assert_eq!(a.scope, Some(RuleScope::Global));
        assert_eq!(a.pattern.as_deref(), Some("cargo"));
        assert_eq!(said, "always allowed \"cargo\" everywhere");
        assert_eq!(answer(&p, "y please").0.decision, PermissionDecision::Allow);
        assert_eq!(answer(&p, "").0.decision, PermissionDecision::Deny);
        assert_eq!(answer(&p, "x cargo").0.decision, PermissionDecision::Deny);
    }

    #[test]
    fn the_question_shows_how_to_give_a_pattern() {
        let text = choices(&bash("cargo test -p x", "cargo test"));
        assert!(text.contains("[w] in this workspace"), "{text}");
        assert!(
            text.contains("(your own pattern after the key: s cargo)"),
            "{text}"
        );
    }
}
