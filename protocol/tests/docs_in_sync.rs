//! docs/protocol.md is normative: every method and every error code the protocol crate defines
//! must be documented there. This test fails when one is added to the code but not to the doc.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crush_protocol::{ClientNotification, ClientRequest, DaemonNotification, ErrorCode};

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    std::fs::read_to_string(path).expect("docs/protocol.md exists")
}

#[test]
fn every_method_has_a_section() {
    let doc = doc();
    let headings: Vec<&str> = doc.lines().filter(|l| l.starts_with("### ")).collect();
    let all = ClientRequest::METHODS
        .iter()
        .chain(ClientNotification::METHODS)
        .chain(DaemonNotification::METHODS);
    let missing: Vec<&&str> = all
        .filter(|m| !headings.iter().any(|h| h.contains(&format!("`{m}`"))))
        .collect();
    assert!(
        missing.is_empty(),
        "methods without a `### \\`method\\`` section in docs/protocol.md: {missing:?}"
    );
}

#[test]
fn every_error_code_is_in_the_table() {
    let doc = doc();
    let missing: Vec<String> = ErrorCode::ALL
        .iter()
        .filter(|(code, name)| {
            !doc.lines().any(|l| {
                l.starts_with('|') && l.contains(&code.code().to_string()) && l.contains(name)
            })
        })
        .map(|(code, name)| format!("{name} ({})", code.code()))
        .collect();
    assert!(
        missing.is_empty(),
        "error codes missing from the table in docs/protocol.md: {missing:?}"
    );
}
