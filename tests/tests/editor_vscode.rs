//! The VS Code extension (`editors/vscode`): its committed TypeScript protocol declarations must
//! be what `crush_protocol::ts` generates from the Rust types, and its Node test suite (protocol
//! client against real `crushd` processes and a loopback model mock, extension activation and
//! commands against a stub `vscode` module, webview message handling) must pass.
//!
//! The Node side spawns its own daemons (it needs several: one restarted for a resync, one
//! started by `crushctl daemon start`) from the binaries this test points it at, and runs its own
//! loopback mock of the model API, scripted by prompt. It needs Node 20+ and `npm ci` in
//! `editors/vscode`; without them this test fails and says so rather than skipping.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn extension_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("editors")
        .join("vscode")
}

#[test]
fn typescript_protocol_declarations_are_current() {
    let path = extension_dir().join("src").join("protocol.generated.ts");
    let generated = crush_protocol::ts::typescript();
    if std::env::var_os("CRUSH_UPDATE_TS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date with the Rust protocol types; regenerate it with \
         `CRUSH_UPDATE_TS=1 cargo test -p crush-tests --test editor_vscode` and commit it",
        path.display()
    );
}

/// The closing counts of Node's spec reporter: `ℹ pass N` and `ℹ fail N`.
fn node_counts(output: &str) -> (Option<u64>, Option<u64>) {
    let count = |label: &str| {
        output.lines().rev().find_map(|l| {
            let l = l.trim_start_matches(|c: char| !c.is_ascii_alphabetic());
            l.strip_prefix(label)?.trim().parse().ok()
        })
    };
    (count("pass "), count("fail "))
}

#[test]
fn node_test_suite_passes() {
    let dir = extension_dir();
    let node_version = Command::new("node").arg("--version").output();
    let major = node_version.as_ref().ok().and_then(|o| {
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .trim_start_matches('v')
            .split('.')
            .next()?
            .parse::<u32>()
            .ok()
    });
    assert!(
        matches!(major, Some(m) if m >= 20),
        "the VS Code extension's tests need Node 20 or later on PATH (found: {:?}); install it, then run `npm ci` in {}",
        node_version.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()),
        dir.display()
    );
    assert!(
        dir.join("node_modules").join("vscode-jsonrpc").is_dir()
            && dir
                .join("node_modules")
                .join(".bin")
                .join("esbuild")
                .exists(),
        "{}/node_modules is missing or incomplete: run `npm ci` in {}",
        dir.display(),
        dir.display()
    );
    let crushd = crush_tests::bin("crushd");
    let bin_dir = crushd.parent().unwrap();
    crush_tests::bin("crushctl");

    let out = Command::new("npm")
        .arg("test")
        .current_dir(&dir)
        .env("CRUSH_TEST_BIN_DIR", bin_dir)
        .env_remove("CRUSHD_SOCKET")
        .env_remove("CRUSHD_BIN")
        .output()
        .expect("run npm test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (passed, failed) = node_counts(&stdout);
    assert!(
        out.status.success() && failed == Some(0) && passed.is_some_and(|n| n >= 10),
        "`npm test` in {} failed ({}; pass {passed:?}, fail {failed:?})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        dir.display(),
        out.status
    );
    println!("node tests: {} passed, 0 failed", passed.unwrap_or(0));
}
