//! What permission rules add to a tool call (figures, not assertions).
//!
//! 1. Matching one call against the saved rules in memory, as the run does before each `write`,
//!    `edit`, `bash` or MCP call: N = 1, 10, 100, 1000 rules in scope, only the last one
//!    matching (the worst case: every rule is tried), for a bash command and for a file path.
//! 2. The audit log insert each decision awaits before the tool runs (`Store::log_permission`,
//!    a file database as the daemon has it): p50/p99 while the log is small, and once it holds
//!    its bound of entries (each insert then also deletes the oldest).
//!
//! Run: `SQLX_OFFLINE=true cargo bench -p crushd --bench permission_rules`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use crush_protocol::{
    PermissionLogEntry, PermissionResolution, PermissionRule, PermissionSource, RuleScope,
};
use crushd::permission_rules::{LiveRule, Subject};
use crushd::store::{LOG_KEEP, Store};

const MATCHES: u32 = 20_000;

fn rule(i: usize, tool: &str, pattern: String) -> LiveRule {
    LiveRule::new(PermissionRule {
        id: format!("rule-{i}"),
        scope: RuleScope::Workspace,
        workspace_id: Some("w".into()),
        session_id: None,
        tool: tool.into(),
        pattern: Some(pattern),
        created_at: 0,
        created_by: "bench".into(),
    })
}

/// Nanoseconds per match of `subject` against `rules` (the last rule matches).
fn per_match(rules: &[LiveRule], tool: &str, subject: Subject<'_>) -> f64 {
    let start = Instant::now();
    for _ in 0..MATCHES {
        let hit = black_box(rules)
            .iter()
            .find(|r| r.allows("s", "w", black_box(tool), black_box(subject)));
        assert!(hit.is_some());
    }
    start.elapsed().as_nanos() as f64 / f64::from(MATCHES)
}

fn entry(i: usize) -> PermissionLogEntry {
    PermissionLogEntry {
        at: i as i64,
        session_id: "session".into(),
        workspace_id: "workspace".into(),
        run_id: "run".into(),
        tool_call_id: format!("call-{i}"),
        tool: "bash".into(),
        title: "Run: cargo test -p crushd".into(),
        decision: PermissionResolution::Allow,
        source: PermissionSource::Rule,
        rule: Some("bash \"cargo test\" (workspace)".into()),
        rule_id: Some("rule".into()),
        client: None,
        connection: None,
    }
}

fn pct(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    for n in [1usize, 10, 100, 1000] {
        let bash: Vec<LiveRule> = (0..n)
            .map(|i| rule(i, "bash", format!("tool{i} sub")))
            .collect();
        let command = format!("tool{} sub --flag value", n - 1);
        let subject = Subject {
            command: Some(&command),
            path: None,
        };
        let bash_ns = per_match(&bash, "bash", subject);
        let files: Vec<LiveRule> = (0..n)
            .map(|i| rule(i, "write", format!("dir{i}/**")))
            .collect();
        let path = format!("dir{}/a/b.rs", n - 1);
        let subject = Subject {
            command: None,
            path: Some(&path),
        };
        let path_ns = per_match(&files, "write", subject);
        println!(
            "match against {n:>4} rules (last one matches): bash {bash_ns:>9.0} ns, path {path_ns:>9.0} ns"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let keep = LOG_KEEP as usize;
    let total = keep + 2_000;
    let mut small = Vec::new();
    let mut full = Vec::new();
    for i in 0..total {
        let e = entry(i);
        let t = Instant::now();
        store.log_permission(&e).await.unwrap();
        let took = t.elapsed();
        if i < 2_000 {
            small.push(took);
        } else if i >= keep {
            full.push(took);
        }
    }
    println!(
        "audit log insert, first 2000: p50 {:?} p99 {:?}; at its bound of {keep} (insert + delete the oldest), 2000 more: p50 {:?} p99 {:?}",
        pct(&mut small, 0.5),
        pct(&mut small, 0.99),
        pct(&mut full, 0.5),
        pct(&mut full, 0.99)
    );
    store.close().await;
}
