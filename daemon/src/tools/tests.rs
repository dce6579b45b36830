#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Tests of the workspace tools: each tool's happy path and refusals, path confinement for every
//! path-taking tool, and bash's process-group killing (checked through /proc on Linux).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

use super::*;

struct Ws {
    dir: TempDir,
    ctx: ToolContext,
}

impl Ws {
    fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    fn with_limits(limits: Limits) -> Self {
        let dir = TempDir::new().unwrap();
        let ctx = ToolContext {
            root: dir.path().to_path_buf(),
            cancel: CancellationToken::new(),
            scrub_env: Vec::new(),
            sandbox: None,
            limits,
        };
        Self { dir, ctx }
    }

    fn root(&self) -> PathBuf {
        fs::canonicalize(self.dir.path()).unwrap()
    }

    fn put(&self, rel: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let p = self.dir.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
        p
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.dir.path().join(rel)).unwrap()
    }

    async fn call(&self, tool: &str, input: Value) -> ToolOutput {
        call(&self.ctx, tool, &input.to_string()).await
    }
}

async fn call(ctx: &ToolContext, tool: &str, input: &str) -> ToolOutput {
    match prepare(ctx, tool, input).await {
        Ok(p) => p.run(ctx).await,
        Err(e) => e,
    }
}

#[track_caller]
fn ok(out: ToolOutput) -> String {
    assert!(
        !out.is_error,
        "expected success, got error: {}",
        out.content
    );
    out.content
}

#[track_caller]
fn err(out: ToolOutput) -> String {
    assert!(out.is_error, "expected an error, got: {}", out.content);
    out.content
}

#[track_caller]
fn assert_outside(out: ToolOutput) {
    let msg = err(out);
    assert!(
        msg.contains("outside the workspace"),
        "expected an outside-the-workspace refusal, got: {msg}"
    );
}

// ---------------------------------------------------------------------------------------------
// Specs and input parsing

#[test]
fn specs_are_the_seven_tools_in_order_with_object_schemas() {
    let specs = specs();
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, TOOL_NAMES);
    for s in &specs {
        assert!(
            s.description.len() > 40,
            "{} needs a real description",
            s.name
        );
        assert_eq!(s.parameters["type"], "object", "{}", s.name);
        let props = s.parameters["properties"].as_object().unwrap();
        for p in props.values() {
            assert!(p["description"].is_string(), "{}: {p}", s.name);
        }
        for r in s.parameters["required"].as_array().into_iter().flatten() {
            assert!(props.contains_key(r.as_str().unwrap()), "{}: {r}", s.name);
        }
    }
    let perm: Vec<&str> = TOOL_NAMES
        .into_iter()
        .filter(|t| needs_permission(t))
        .collect();
    assert_eq!(perm, ["write", "edit", "bash"]);
    assert!(!needs_permission("nope"));
}

#[tokio::test]
async fn bad_input_is_an_error_output_naming_the_problem() {
    let ws = Ws::new();
    let msg = err(call(&ws.ctx, "frobnicate", "{}").await);
    assert!(msg.contains("Unknown tool `frobnicate`"), "{msg}");
    let msg = err(call(&ws.ctx, "view", "{not json").await);
    assert!(msg.contains("not valid JSON"), "{msg}");
    let msg = err(call(&ws.ctx, "view", "[1, 2]").await);
    assert!(msg.contains("expected a JSON object"), "{msg}");
    let msg = err(call(&ws.ctx, "view", "{}").await);
    assert!(msg.contains("missing field `path`"), "{msg}");
    let msg = err(call(&ws.ctx, "edit", r#"{"path": "a"}"#).await);
    assert!(msg.contains("missing field"), "{msg}");
    ws.put("a.txt", "one\ntwo\nthree\n");
    let msg = err(ws
        .call("view", json!({"path": "a.txt", "offset": "abc"}))
        .await);
    assert!(msg.contains("non-negative integer"), "{msg}");
    let msg = err(ws
        .call("view", json!({"path": "a.txt", "offset": -1}))
        .await);
    assert!(msg.contains("non-negative integer"), "{msg}");
    // Models are not exact about JSON types; a numeric string is accepted.
    let text = ok(ws
        .call(
            "view",
            json!({"path": "a.txt", "offset": "2", "limit": 1.0}),
        )
        .await);
    assert_eq!(
        text,
        "     2\ttwo\n\n(Showing lines 2-2 of 3; more lines follow. Use offset 3 to read more.)\n"
    );
    // An empty input reads as {} (ls has no required parameter).
    let text = ok(call(&ws.ctx, "ls", "").await);
    assert!(text.contains("a.txt"), "{text}");
}

#[tokio::test]
async fn prepare_gives_titles_and_commands() {
    let ws = Ws::new();
    ws.put("src/main.rs", "fn main() {}\n");
    let p = prepare(&ws.ctx, "view", r#"{"path": "src/main.rs"}"#)
        .await
        .unwrap();
    assert_eq!(
        (p.tool.as_str(), p.title.as_str()),
        ("view", "View src/main.rs")
    );
    assert_eq!((p.diff, p.command), (None, None));
    let p = prepare(&ws.ctx, "bash", r#"{"command": "cargo test\necho done"}"#)
        .await
        .unwrap();
    assert_eq!(p.title, "Run: cargo test…");
    assert_eq!(p.command.as_deref(), Some("cargo test\necho done"));
    let p = prepare(
        &ws.ctx,
        "edit",
        r#"{"path": "./src/../src/main.rs", "old_string": "main", "new_string": "start"}"#,
    )
    .await
    .unwrap();
    assert_eq!(p.title, "Edit src/main.rs");
    assert!(p.diff.unwrap().contains("+fn start() {}"));
    let p = prepare(&ws.ctx, "write", r#"{"path": "new.txt", "content": "x"}"#)
        .await
        .unwrap();
    assert_eq!(p.title, "Create new.txt");
    let msg = err(call(&ws.ctx, "bash", r#"{"command": "  "}"#).await);
    assert!(msg.contains("empty"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// view

#[tokio::test]
async fn view_numbers_lines_and_reads_ranges() {
    let ws = Ws::new();
    ws.put("f.txt", "alpha\r\nbeta\ngamma\ndelta\nepsilon");
    let text = ok(ws.call("view", json!({"path": "f.txt"})).await);
    assert_eq!(
        text,
        "     1\talpha\n     2\tbeta\n     3\tgamma\n     4\tdelta\n     5\tepsilon\n"
    );
    let text = ok(ws
        .call("view", json!({"path": "f.txt", "offset": 2, "limit": 2}))
        .await);
    assert!(
        text.starts_with("     2\tbeta\n     3\tgamma\n\n"),
        "{text}"
    );
    assert!(text.contains("Use offset 4"), "{text}");
    // Absolute paths inside the workspace are fine.
    let abs = ws.root().join("f.txt");
    let text = ok(ws
        .call("view", json!({"path": abs.to_str().unwrap(), "offset": 5}))
        .await);
    assert_eq!(text, "     5\tepsilon\n");
    let msg = err(ws.call("view", json!({"path": "f.txt", "offset": 9})).await);
    assert!(
        msg.contains("past the end") && msg.contains("5 lines"),
        "{msg}"
    );
    ws.put("empty.txt", "");
    let text = ok(ws.call("view", json!({"path": "empty.txt"})).await);
    assert!(text.contains("empty"), "{text}");
}

#[tokio::test]
async fn view_cuts_long_lines_and_stops_at_the_output_cap() {
    let ws = Ws::new();
    ws.put("long.txt", format!("{}\nshort\n", "é".repeat(5000)));
    let text = ok(ws.call("view", json!({"path": "long.txt"})).await);
    let first = text.lines().next().unwrap();
    assert!(
        first.ends_with("… [line cut at 2000 characters]"),
        "{first}"
    );
    assert_eq!(first.matches('é').count(), 2000);
    assert!(text.ends_with("\n     2\tshort\n"), "{text}");

    let ws = Ws::with_limits(Limits {
        output_max_bytes: 4096,
        ..Limits::default()
    });
    let many: String = (1..=2000).map(|i| format!("line number {i}\n")).collect();
    ws.put("many.txt", many);
    let text = ok(ws.call("view", json!({"path": "many.txt"})).await);
    assert!(text.len() <= 4096, "{}", text.len());
    assert!(text.contains("Output limit reached"), "{text}");
    let next = text.lines().next_back().unwrap();
    let last_shown: u64 = text
        .lines()
        .filter_map(|l| l.split('\t').next()?.trim().parse().ok())
        .max()
        .unwrap();
    assert!(
        next.contains(&format!("Use offset {}", last_shown + 1)),
        "{next}"
    );
}

#[tokio::test]
async fn view_refuses_directories_binaries_and_big_files_without_a_range() {
    let ws = Ws::with_limits(Limits {
        view_max_bytes: 1000,
        ..Limits::default()
    });
    fs::create_dir(ws.dir.path().join("sub")).unwrap();
    let msg = err(ws.call("view", json!({"path": "sub"})).await);
    assert!(msg.contains("directory") && msg.contains("ls"), "{msg}");

    ws.put("nul.bin", b"abc\0def\n");
    let msg = err(ws.call("view", json!({"path": "nul.bin"})).await);
    assert!(msg.contains("binary"), "{msg}");
    ws.put("latin1.txt", b"caf\xe9\n");
    let msg = err(ws.call("view", json!({"path": "latin1.txt"})).await);
    assert!(msg.contains("binary"), "{msg}");

    let big: String = (1..=500).map(|i| format!("row {i:04}\n")).collect();
    assert!(big.len() > 1000);
    ws.put("big.txt", &big);
    let msg = err(ws.call("view", json!({"path": "big.txt"})).await);
    assert!(msg.contains("offset and limit"), "{msg}");
    let text = ok(ws
        .call("view", json!({"path": "big.txt", "offset": 10, "limit": 3}))
        .await);
    assert!(
        text.starts_with("    10\trow 0010\n    11\trow 0011\n    12\trow 0012\n"),
        "{text}"
    );
    assert!(text.contains("more lines follow. Use offset 13"), "{text}");
    // The streamed read of a large file ends cleanly at its last line.
    let text = ok(ws
        .call("view", json!({"path": "big.txt", "offset": 499}))
        .await);
    assert_eq!(text, "   499\trow 0499\n   500\trow 0500\n");
}

#[tokio::test]
async fn view_of_a_missing_file_suggests_similar_names() {
    let ws = Ws::new();
    ws.put("src/config.rs", "");
    let msg = err(ws.call("view", json!({"path": "src/config.txt"})).await);
    assert!(
        msg.contains("does not exist") && msg.contains("config.rs"),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------------------
// ls, glob, grep

fn tree(ws: &Ws) {
    ws.put(".gitignore", "target/\n*.log\n");
    ws.put("README.md", "# readme\n");
    ws.put("src/main.rs", "fn main() {\n    println!(\"Hello\");\n}\n");
    ws.put(
        "src/lib/mod.rs",
        "pub fn hello() -> &'static str { \"hello\" }\n",
    );
    ws.put("src/lib/util.txt", "HELLO again\n");
    ws.put("target/debug/out.rs", "fn hello() {}\n");
    ws.put("debug.log", "hello log\n");
    ws.put("data.bin", b"hello\0binary");
    // No .git here: .gitignore must apply even outside a git repository.
}

#[tokio::test]
async fn walks_skip_the_git_directory() {
    let ws = Ws::new();
    ws.put(".git/HEAD", "ref: refs/heads/main hello\n");
    ws.put("a.txt", "hello\n");
    let text = ok(ws.call("ls", json!({"depth": 3})).await);
    assert_eq!(text, "./\n  a.txt\n");
    let text = ok(ws.call("grep", json!({"pattern": "hello"})).await);
    assert_eq!(text, "a.txt:1: hello\n");
    let text = ok(ws.call("glob", json!({"pattern": "**/*"})).await);
    assert_eq!(text, "a.txt\n");
}

#[tokio::test]
async fn ls_lists_a_gitignore_aware_tree() {
    let ws = Ws::new();
    tree(&ws);
    let text = ok(ws.call("ls", json!({})).await);
    assert_eq!(
        text,
        "./\n  .gitignore\n  README.md\n  data.bin\n  src/\n    lib/\n    main.rs\n"
    );
    let text = ok(ws.call("ls", json!({"path": "src", "depth": 5})).await);
    assert_eq!(text, "src/\n  lib/\n    mod.rs\n    util.txt\n  main.rs\n");
    let text = ok(ws.call("ls", json!({"depth": 1})).await);
    assert!(!text.contains("main.rs"), "{text}");
    let msg = err(ws.call("ls", json!({"path": "README.md"})).await);
    assert!(msg.contains("view"), "{msg}");
    let msg = err(ws.call("ls", json!({"path": "nope"})).await);
    assert!(msg.contains("Cannot list nope"), "{msg}");
}

#[tokio::test]
async fn ls_is_capped() {
    let ws = Ws::with_limits(Limits {
        max_results: 3,
        ..Limits::default()
    });
    for i in 0..10 {
        ws.put(&format!("f{i}.txt"), "");
    }
    let text = ok(ws.call("ls", json!({})).await);
    assert_eq!(text.lines().filter(|l| l.starts_with("  f")).count(), 3);
    assert!(text.contains("cut at 3 entries"), "{text}");
}

#[tokio::test]
async fn glob_matches_sorted_gitignore_aware_paths() {
    let ws = Ws::new();
    tree(&ws);
    let text = ok(ws.call("glob", json!({"pattern": "**/*.rs"})).await);
    assert_eq!(text, "src/lib/mod.rs\nsrc/main.rs\n");
    // '*' does not cross directories.
    let text = ok(ws.call("glob", json!({"pattern": "*.md"})).await);
    assert_eq!(text, "README.md\n");
    let text = ok(ws
        .call("glob", json!({"pattern": "*.rs", "path": "src/lib"}))
        .await);
    assert_eq!(text, "src/lib/mod.rs\n");
    let text = ok(ws
        .call("glob", json!({"pattern": "src/**/*.{rs,txt}"}))
        .await);
    assert_eq!(text, "src/lib/mod.rs\nsrc/lib/util.txt\nsrc/main.rs\n");
    let text = ok(ws.call("glob", json!({"pattern": "**/*.py"})).await);
    assert!(text.starts_with("No files match"), "{text}");
    let msg = err(ws.call("glob", json!({"pattern": "src/[a"})).await);
    assert!(msg.contains("Invalid glob pattern"), "{msg}");
}

#[tokio::test]
async fn glob_is_capped() {
    let ws = Ws::with_limits(Limits {
        max_results: 2,
        ..Limits::default()
    });
    for i in 0..5 {
        ws.put(&format!("d/f{i}.txt"), "");
    }
    let text = ok(ws.call("glob", json!({"pattern": "**/*.txt"})).await);
    assert_eq!(
        text,
        "d/f0.txt\nd/f1.txt\n(Results cut at 2 paths; use a narrower pattern or path.)\n"
    );
}

#[tokio::test]
async fn grep_finds_lines_respecting_gitignore_and_skipping_binaries() {
    let ws = Ws::new();
    tree(&ws);
    let text = ok(ws.call("grep", json!({"pattern": "hello"})).await);
    // Not target/ or *.log (gitignored), .git, or data.bin (binary); case-sensitive.
    assert_eq!(
        text,
        "src/lib/mod.rs:1: pub fn hello() -> &'static str { \"hello\" }\n"
    );
    let text = ok(ws
        .call("grep", json!({"pattern": "hello", "ignore_case": true}))
        .await);
    assert_eq!(
        text,
        "src/lib/mod.rs:1: pub fn hello() -> &'static str { \"hello\" }\nsrc/lib/util.txt:1: HELLO again\nsrc/main.rs:2:     println!(\"Hello\");\n"
    );
    let text = ok(ws
        .call(
            "grep",
            json!({"pattern": "hello", "ignore_case": "true", "include": "*.txt"}),
        )
        .await);
    assert_eq!(text, "src/lib/util.txt:1: HELLO again\n");
    let text = ok(ws
        .call(
            "grep",
            json!({"pattern": "(?i)hello", "path": "src", "include": "src/*.rs"}),
        )
        .await);
    assert_eq!(text, "src/main.rs:2:     println!(\"Hello\");\n");
    // A single file is searched even if gitignored, since it was named.
    let text = ok(ws
        .call("grep", json!({"pattern": "log$", "path": "debug.log"}))
        .await);
    assert_eq!(text, "debug.log:1: hello log\n");
    let text = ok(ws
        .call("grep", json!({"pattern": "nothing-like-this"}))
        .await);
    assert!(text.starts_with("No matches"), "{text}");
}

#[tokio::test]
async fn grep_refuses_a_bad_regex_and_caps_matches_and_lines() {
    let ws = Ws::with_limits(Limits {
        max_results: 5,
        ..Limits::default()
    });
    let msg = err(ws.call("grep", json!({"pattern": "fn main("})).await);
    assert!(
        msg.contains("Invalid regular expression") && msg.contains("unclosed group"),
        "{msg}"
    );
    ws.put("many.txt", "match\n".repeat(20));
    ws.put("wide.txt", format!("{}match\n", "x".repeat(1000)));
    let text = ok(ws
        .call("grep", json!({"pattern": "match", "path": "many.txt"}))
        .await);
    assert_eq!(
        text.lines().filter(|l| l.starts_with("many.txt:")).count(),
        5
    );
    assert!(text.contains("Results cut at 5 matches"), "{text}");
    let text = ok(ws
        .call("grep", json!({"pattern": "match", "path": "wide.txt"}))
        .await);
    assert!(text.contains("[line cut at 500 characters]"), "{text}");
    assert!(text.len() < 600, "{}", text.len());
}

// ---------------------------------------------------------------------------------------------
// write

fn leftover_temps(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("crushd") || n.ends_with(".tmp"))
        .collect()
}

#[tokio::test]
async fn write_creates_files_and_directories_without_touching_disk_in_prepare() {
    let ws = Ws::new();
    let p = prepare(
        &ws.ctx,
        "write",
        &json!({"path": "a/b/new.txt", "content": "hello\nworld\n"}).to_string(),
    )
    .await
    .unwrap();
    assert!(
        !ws.dir.path().join("a").exists(),
        "prepare must not touch disk"
    );
    let diff = p.diff.clone().unwrap();
    assert!(
        diff.contains("--- /dev/null\n+++ b/a/b/new.txt\n"),
        "{diff}"
    );
    assert!(diff.contains("+hello\n+world\n"), "{diff}");
    let out = p.run(&ws.ctx).await;
    assert_eq!(
        out.metadata,
        // A new file: no `oldText`.
        Some(json!({"path": "a/b/new.txt", "diff": diff, "newText": "hello\nworld\n"}))
    );
    let text = ok(out);
    assert!(text.contains("12 bytes"), "{text}");
    assert_eq!(ws.read("a/b/new.txt"), "hello\nworld\n");
    assert!(leftover_temps(&ws.dir.path().join("a/b")).is_empty());
}

#[cfg(unix)]
#[tokio::test]
async fn write_replaces_atomically_and_keeps_permissions() {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let ws = Ws::new();
    let old = "A".repeat(4 << 20);
    let new = "B".repeat(4 << 20);
    let path = ws.put("big.txt", &old);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o751)).unwrap();
    // Replacing by rename leaves the old file intact for anyone who has it open; a write in
    // place (truncate, then write) would not.
    let held = fs::File::open(&path).unwrap();

    // A reader racing the write sees the old file or the new one, never a mix or a short file.
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (done, path, len) = (done.clone(), path.clone(), old.len());
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !done.load(Ordering::SeqCst) || reads == 0 {
                let got = fs::read(&path).unwrap();
                assert_eq!(got.len(), len, "a reader saw a partial file");
                assert!(
                    got.iter().all(|&b| b == b'A') || got.iter().all(|&b| b == b'B'),
                    "a reader saw a mix of old and new content"
                );
                reads += 1;
            }
            reads
        })
    };
    let out = ws
        .call("write", json!({"path": "big.txt", "content": new}))
        .await;
    done.store(true, Ordering::SeqCst);
    let text = ok(out);
    assert!(
        text.contains(&format!("Wrote {} bytes", new.len())),
        "{text}"
    );
    assert!(reader.join().unwrap() > 0);
    assert_eq!(ws.read("big.txt"), new);
    let mut seen = String::new();
    std::io::Read::read_to_string(&mut &held, &mut seen).unwrap();
    assert!(
        seen == old,
        "the old file was changed in place, not replaced"
    );
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o751);
    assert!(
        leftover_temps(ws.dir.path()).is_empty(),
        "{:?}",
        leftover_temps(ws.dir.path())
    );
}

/// A crash half-way through a write — simulated by a panic (nothing after it runs, as when the
/// daemon is killed) and by an I/O error after half the bytes — never leaves the target short or
/// mixed: it keeps its old content until the rename, and the failed write removes its temporary
/// file (the panic, like a real crash, leaves one hidden temporary file and nothing else).
#[test]
fn a_write_that_crashes_half_way_never_leaves_a_truncated_target() {
    use std::io::Write as _;
    let dir = TempDir::new().unwrap();
    let target = dir.path().join("code.rs");
    let old = "fn old() {}\n".repeat(100_000);
    let new = "fn new() {}\n".repeat(200_000);
    fs::write(&target, &old).unwrap();

    // An I/O failure after half the bytes: the error is reported, nothing is left behind.
    let r = write::atomic_write_with(&target, |f| {
        f.write_all(&new.as_bytes()[..new.len() / 2])?;
        Err(std::io::Error::other("disk full (simulated)"))
    });
    assert!(r.is_err());
    assert_eq!(fs::read_to_string(&target).unwrap(), old);
    assert!(leftover_temps(dir.path()).is_empty());

    // A crash after half the bytes: no cleanup runs at all.
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = write::atomic_write_with(&target, |f| {
            f.write_all(&new.as_bytes()[..new.len() / 2])?;
            f.flush()?;
            panic!("the daemon dies here (simulated)");
        });
    }));
    assert!(crashed.is_err());
    assert_eq!(
        fs::read_to_string(&target).unwrap(),
        old,
        "the target must keep its whole old content"
    );
    let temps = leftover_temps(dir.path());
    assert_eq!(temps.len(), 1, "{temps:?}");
    assert!(
        temps[0].starts_with(".code.rs.crushd-") && temps[0].ends_with(".tmp"),
        "{temps:?}"
    );

    // The next write succeeds whole.
    write::atomic_write(&target, new.as_bytes()).unwrap();
    assert_eq!(fs::read_to_string(&target).unwrap(), new);
}

#[tokio::test]
async fn write_refuses_a_directory() {
    let ws = Ws::new();
    fs::create_dir(ws.dir.path().join("d")).unwrap();
    let msg = err(ws.call("write", json!({"path": "d", "content": "x"})).await);
    assert!(msg.contains("directory"), "{msg}");
    let msg = err(ws.call("write", json!({"path": ".", "content": "x"})).await);
    assert!(msg.contains("directory"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// edit

#[tokio::test]
async fn edit_replaces_exactly_once_with_a_diff() {
    let ws = Ws::new();
    ws.put("src/lib.rs", "fn a() {}\nfn b() {}\nfn c() {}\n");
    let out = ws
        .call(
            "edit",
            json!({"path": "src/lib.rs", "old_string": "fn b() {}", "new_string": "fn b() { todo!() }"}),
        )
        .await;
    let meta = out.metadata.clone().unwrap();
    let text = ok(out);
    let diff = meta["diff"].as_str().unwrap();
    assert_eq!(meta["path"], "src/lib.rs");
    assert_eq!(
        diff,
        "--- a/src/lib.rs\n+++ b/src/lib.rs\n@@ -1,3 +1,3 @@\n fn a() {}\n-fn b() {}\n+fn b() { todo!() }\n fn c() {}\n"
    );
    assert!(
        text.starts_with("Edited src/lib.rs (1 replacement)."),
        "{text}"
    );
    assert!(text.contains(diff), "{text}");
    assert_eq!(
        ws.read("src/lib.rs"),
        "fn a() {}\nfn b() { todo!() }\nfn c() {}\n"
    );
    assert!(leftover_temps(&ws.dir.path().join("src")).is_empty());
}

#[tokio::test]
async fn edit_refuses_no_match_multiple_matches_and_empty_old_string() {
    let ws = Ws::new();
    ws.put("f.txt", "x = 1\nx = 1\n    y = 2\n");
    let msg = err(ws
        .call(
            "edit",
            json!({"path": "f.txt", "old_string": "z = 3", "new_string": "z = 4"}),
        )
        .await);
    assert!(
        msg.contains("not found") && msg.contains("view the file"),
        "{msg}"
    );
    let msg = err(ws
        .call(
            "edit",
            json!({"path": "f.txt", "old_string": "y = 2 ", "new_string": "y = 3"}),
        )
        .await);
    assert!(msg.contains("leading and trailing whitespace"), "{msg}");
    let msg = err(ws
        .call(
            "edit",
            json!({"path": "f.txt", "old_string": "x = 1", "new_string": "x = 2"}),
        )
        .await);
    assert!(
        msg.contains("matches 2 times") && msg.contains("replace_all"),
        "{msg}"
    );
    let msg = err(ws
        .call(
            "edit",
            json!({"path": "f.txt", "old_string": "", "new_string": "x"}),
        )
        .await);
    assert!(msg.contains("old_string is empty"), "{msg}");
    let msg = err(ws
        .call(
            "edit",
            json!({"path": "missing.txt", "old_string": "a", "new_string": "b"}),
        )
        .await);
    assert!(
        msg.contains("does not exist") && msg.contains("write"),
        "{msg}"
    );
    assert_eq!(
        ws.read("f.txt"),
        "x = 1\nx = 1\n    y = 2\n",
        "a refused edit changed the file"
    );

    let text = ok(ws
        .call("edit", json!({"path": "f.txt", "old_string": "x = 1", "new_string": "x = 2", "replace_all": true}))
        .await);
    assert!(text.contains("2 replacements"), "{text}");
    assert_eq!(ws.read("f.txt"), "x = 2\nx = 2\n    y = 2\n");
}

#[tokio::test]
async fn edit_refuses_a_file_that_changed_since_prepare() {
    let ws = Ws::new();
    ws.put("f.txt", "one\ntwo\n");
    let p = prepare(
        &ws.ctx,
        "edit",
        &json!({"path": "f.txt", "old_string": "two", "new_string": "2"}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(
        ws.read("f.txt"),
        "one\ntwo\n",
        "prepare must not touch disk"
    );
    ws.put("f.txt", "one\ntwo\nthree\n");
    let msg = err(p.run(&ws.ctx).await);
    assert!(
        msg.contains("changed since the edit was proposed") && msg.contains("view it again"),
        "{msg}"
    );
    assert_eq!(ws.read("f.txt"), "one\ntwo\nthree\n");
}

#[tokio::test]
async fn edit_matches_lf_text_in_a_crlf_file() {
    let ws = Ws::new();
    ws.put("win.txt", "a\r\nb\r\nc\r\n");
    ok(ws
        .call(
            "edit",
            json!({"path": "win.txt", "old_string": "a\nb", "new_string": "A\nB"}),
        )
        .await);
    assert_eq!(ws.read("win.txt"), "A\r\nB\r\nc\r\n");
}

// ---------------------------------------------------------------------------------------------
// Confinement

/// A workspace and, next to it, an outside directory holding `secret.txt`.
struct Escape {
    ws: Ws,
    outside: TempDir,
}

impl Escape {
    fn new() -> Self {
        let ws = Ws::new();
        let outside = TempDir::new().unwrap();
        fs::write(outside.path().join("secret.txt"), "SECRET\n").unwrap();
        ws.put("inside.txt", "inside\n");
        Self { ws, outside }
    }

    fn secret(&self) -> String {
        self.outside
            .path()
            .join("secret.txt")
            .to_str()
            .unwrap()
            .to_owned()
    }

    fn assert_outside_untouched(&self) {
        let names: Vec<String> = fs::read_dir(self.outside.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["secret.txt"]);
        assert_eq!(
            fs::read_to_string(self.outside.path().join("secret.txt")).unwrap(),
            "SECRET\n"
        );
    }
}

/// Every path-taking tool with `path` put where it takes a path.
fn path_inputs(path: &str) -> Vec<(&'static str, Value)> {
    vec![
        ("view", json!({"path": path})),
        ("ls", json!({"path": path})),
        ("glob", json!({"pattern": "**/*", "path": path})),
        ("grep", json!({"pattern": "SECRET", "path": path})),
        ("write", json!({"path": path, "content": "pwned\n"})),
        (
            "edit",
            json!({"path": path, "old_string": "SECRET", "new_string": "pwned"}),
        ),
    ]
}

#[tokio::test]
async fn dot_dot_and_absolute_paths_outside_are_refused_by_every_tool() {
    let e = Escape::new();
    let outside_dir = e.outside.path().to_str().unwrap().to_owned();
    let rel_secret = format!(
        "../{}/secret.txt",
        e.outside.path().file_name().unwrap().to_str().unwrap()
    );
    let root = e.ws.root();
    let sneaky_abs = format!(
        "{}/../{}",
        root.display(),
        rel_secret.trim_start_matches("../")
    );
    for path in [
        "..",
        "../x",
        rel_secret.as_str(),
        "sub/../../x",
        "./../inside.txt",
        e.secret().as_str(),
        outside_dir.as_str(),
        "/",
        sneaky_abs.as_str(),
    ] {
        for (tool, input) in path_inputs(path) {
            let out = e.ws.call(tool, input).await;
            assert!(
                out.is_error && out.content.contains("outside the workspace"),
                "{tool} {path}: {}",
                out.content
            );
            assert!(!out.content.contains("SECRET"), "{tool} {path}: leaked");
        }
    }
    e.assert_outside_untouched();
    // Inside paths written the long way round still work.
    let text = ok(e
        .ws
        .call("view", json!({"path": "sub/../inside.txt"}))
        .await);
    assert!(text.contains("inside"), "{text}");
}

#[cfg(unix)]
#[tokio::test]
async fn symlinks_leading_outside_are_refused_by_every_tool() {
    use std::os::unix::fs::symlink;
    let e = Escape::new();
    let root = e.ws.dir.path();
    symlink(e.outside.path().join("secret.txt"), root.join("file-link")).unwrap();
    symlink(e.outside.path(), root.join("dir-link")).unwrap();
    symlink(
        e.outside.path().join("not-there.txt"),
        root.join("dangling"),
    )
    .unwrap();
    fs::create_dir(root.join("sub")).unwrap();
    symlink("../dir-link", root.join("sub/chained")).unwrap();
    for path in [
        "file-link",
        "dir-link",
        "dir-link/secret.txt",
        "./dir-link/../dir-link/secret.txt",
        "sub/chained/secret.txt",
    ] {
        for (tool, input) in path_inputs(path) {
            assert_outside(e.ws.call(tool, input).await);
        }
    }
    // Writing through a symlinked parent directory, to a file or new directories that do not
    // exist yet, is refused too; so is a dangling link.
    for path in [
        "dir-link/new.txt",
        "dir-link/a/b/new.txt",
        "sub/chained/new.txt",
    ] {
        assert_outside(
            e.ws.call("write", json!({"path": path, "content": "pwned"}))
                .await,
        );
    }
    let msg = err(e
        .ws
        .call("write", json!({"path": "dangling", "content": "pwned"}))
        .await);
    assert!(msg.contains("cannot be resolved"), "{msg}");
    e.assert_outside_untouched();
}

#[cfg(unix)]
#[tokio::test]
async fn walks_do_not_follow_symlinks_outside() {
    use std::os::unix::fs::symlink;
    let e = Escape::new();
    let root = e.ws.dir.path();
    symlink(e.outside.path(), root.join("dir-link")).unwrap();
    symlink(e.outside.path().join("secret.txt"), root.join("file-link")).unwrap();
    let text = ok(e.ws.call("grep", json!({"pattern": "SECRET"})).await);
    assert!(text.starts_with("No matches"), "{text}");
    let text = ok(e.ws.call("glob", json!({"pattern": "**/secret.txt"})).await);
    assert!(text.starts_with("No files match"), "{text}");
    let text = ok(e.ws.call("ls", json!({"depth": 5})).await);
    assert_eq!(text, "./\n  dir-link@\n  file-link@\n  inside.txt\n");
}

#[cfg(unix)]
#[tokio::test]
async fn symlinks_inside_the_workspace_work_and_writes_keep_the_link() {
    use std::os::unix::fs::symlink;
    let ws = Ws::new();
    ws.put("real/target.txt", "old\n");
    symlink("real/target.txt", ws.dir.path().join("link.txt")).unwrap();
    symlink("real", ws.dir.path().join("dirlink")).unwrap();
    let text = ok(ws.call("view", json!({"path": "dirlink/target.txt"})).await);
    assert_eq!(text, "     1\told\n");
    ok(ws
        .call(
            "edit",
            json!({"path": "link.txt", "old_string": "old", "new_string": "new"}),
        )
        .await);
    assert_eq!(ws.read("real/target.txt"), "new\n");
    assert!(
        fs::symlink_metadata(ws.dir.path().join("link.txt"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    ok(ws
        .call(
            "write",
            json!({"path": "dirlink/other.txt", "content": "x"}),
        )
        .await);
    assert_eq!(ws.read("real/other.txt"), "x");
}

#[cfg(unix)]
#[tokio::test]
async fn fifos_are_refused_without_blocking() {
    let ws = Ws::new();
    let fifo = ws.dir.path().join("pipe");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("mkfifo is not available; skipping");
        return;
    }
    for (tool, input) in [
        ("view", json!({"path": "pipe"})),
        ("grep", json!({"pattern": "x", "path": "pipe"})),
        (
            "edit",
            json!({"path": "pipe", "old_string": "a", "new_string": "b"}),
        ),
        ("write", json!({"path": "pipe", "content": "x"})),
    ] {
        let out = tokio::time::timeout(Duration::from_secs(10), ws.call(tool, input))
            .await
            .unwrap_or_else(|_| panic!("{tool} blocked on a FIFO"));
        let msg = err(out);
        assert!(msg.contains("not a regular file"), "{tool}: {msg}");
    }
    // A walk passes it by.
    let text = ok(ws.call("grep", json!({"pattern": "x"})).await);
    assert!(text.starts_with("No matches"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Cancellation of the file tools

#[tokio::test]
async fn a_cancelled_token_cancels_prepared_calls() {
    let ws = Ws::new();
    tree(&ws);
    let p = prepare(&ws.ctx, "grep", r#"{"pattern": "hello"}"#)
        .await
        .unwrap();
    ws.ctx.cancel.cancel();
    let msg = err(p.run(&ws.ctx).await);
    assert!(msg.contains("cancelled"), "{msg}");
    let msg = err(ws.call("ls", json!({})).await);
    assert!(msg.contains("cancelled"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// bash

#[cfg(unix)]
#[tokio::test]
async fn bash_reports_exit_code_stdout_and_stderr_in_the_root() {
    let ws = Ws::new();
    let out = ws
        .call("bash", json!({"command": "pwd; echo to-err >&2; exit 3"}))
        .await;
    assert_eq!(
        out.metadata,
        Some(json!({"exitCode": 3, "timedOut": false, "truncated": false, "sandbox": null}))
    );
    let text = ok(out);
    assert_eq!(
        text,
        format!(
            "Exit code: 3\n\nstdout:\n{}\n\n\nstderr:\nto-err\n",
            ws.root().display()
        )
    );
    let text = ok(ws.call("bash", json!({"command": "true"})).await);
    assert_eq!(text, "Exit code: 0\n\n(no output)");
    // Stdin is empty, not the daemon's.
    let text = ok(ws.call("bash", json!({"command": "wc -c"})).await);
    assert!(text.contains("stdout:\n0\n"), "{text}");
}

#[cfg(unix)]
#[tokio::test]
async fn bash_scrubs_the_named_environment_variables() {
    // Edition 2024 makes set_var unsafe (and unsafe is forbidden), so use a variable the test
    // process already has, and show first that bash does inherit it.
    let plain = |k: &str, v: &str| {
        k.chars().all(|c| c.is_ascii_uppercase() || c == '_')
            && !v.is_empty()
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c))
    };
    let preferred = ["CARGO_PKG_NAME", "HOME", "USER", "LOGNAME"]
        .into_iter()
        .find_map(|k| {
            std::env::var(k)
                .ok()
                .filter(|v| plain(k, v))
                .map(|v| (k.to_owned(), v))
        });
    let (name, value) = preferred
        .or_else(|| {
            std::env::vars().find(|(k, v)| {
                plain(k, v)
                    && ![
                        "PATH",
                        "PWD",
                        "OLDPWD",
                        "SHLVL",
                        "_",
                        "SHELLOPTS",
                        "BASHOPTS",
                    ]
                    .contains(&k.as_str())
            })
        })
        .expect("some plain environment variable");
    let mut ws = Ws::new();
    let cmd = json!({"command": format!("echo \"${{{name}:-unset}}\"")});
    let text = ok(ws.call("bash", cmd.clone()).await);
    assert!(
        text.contains(&format!("stdout:\n{value}\n")),
        "{name}: {text}"
    );
    ws.ctx.scrub_env = vec!["SOME_OTHER_KEY".to_owned(), name.clone()];
    let text = ok(ws.call("bash", cmd).await);
    assert!(text.contains("stdout:\nunset\n"), "{name}: {text}");
}

#[test]
fn secret_looking_variables_are_scrubbed_whatever_their_provider() {
    for name in [
        "OPENAI_API_KEY",
        "my_service_api_key",
        "GITHUB_TOKEN",
        "AWS_SESSION_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "DB_PASSWORD",
        "CLIENT_SECRET",
        "API_KEY",
        "NPM_CONFIG__AUTH",
        "MY_PRIVATE_KEY",
        "SSH_AUTH_SOCK",
    ] {
        assert!(is_secret_name(name), "{name}");
    }
    for name in ["PATH", "HOME", "LANG", "DATABASE_URL"] {
        assert!(!is_secret_name(name), "{name}");
    }
}

#[cfg(unix)]
#[tokio::test]
async fn bash_output_keeps_head_and_tail_within_the_cap() {
    let ws = Ws::with_limits(Limits {
        output_max_bytes: 2000,
        ..Limits::default()
    });
    let out = ws
        .call(
            "bash",
            json!({"command": "seq 1 100000; echo tail-of-err >&2"}),
        )
        .await;
    assert_eq!(out.metadata.as_ref().unwrap()["truncated"], true);
    let text = ok(out);
    assert!(text.len() <= 2000 + 100, "{}", text.len());
    assert!(text.contains("stdout:\n1\n2\n3\n"), "{text}");
    assert!(text.contains("99999\n100000\n"), "{text}");
    assert!(text.contains("bytes omitted"), "{text}");
    assert!(text.contains("stderr:\ntail-of-err\n"), "{text}");
}

/// Whether a process is gone (or a zombie nobody reaped yet: it runs no more).
#[cfg(target_os = "linux")]
fn process_gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

#[cfg(target_os = "linux")]
async fn assert_gone(pids: &[u32]) {
    assert!(!pids.is_empty());
    let deadline = Instant::now() + Duration::from_secs(10);
    for &pid in pids {
        while !process_gone(pid) {
            assert!(Instant::now() < deadline, "process {pid} is still running");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(target_os = "linux")]
fn read_pids(path: &Path) -> Vec<u32> {
    fs::read_to_string(path)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

/// A command that records its shell and two background children in `pids`, then touches
/// `ready` and waits.
#[cfg(target_os = "linux")]
const SPAWNS_CHILDREN: &str = "sleep 30 & echo $! >> pids; sleep 30 & echo $! >> pids; echo $$ >> pids; touch ready; sleep 30; echo never";

#[cfg(target_os = "linux")]
#[tokio::test]
async fn bash_timeout_kills_the_whole_process_group() {
    let ws = Ws::new();
    let started = Instant::now();
    let out = ws
        .call(
            "bash",
            json!({"command": SPAWNS_CHILDREN, "timeout_ms": 2000}),
        )
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(out.metadata.as_ref().unwrap()["timedOut"], true);
    assert_eq!(out.metadata.as_ref().unwrap()["exitCode"], Value::Null);
    let msg = err(out);
    assert!(msg.starts_with("Timed out after 2s"), "{msg}");
    assert!(!msg.contains("never"));
    let pids = read_pids(&ws.dir.path().join("pids"));
    assert_eq!(pids.len(), 3);
    assert_gone(&pids).await;
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn bash_cancel_kills_the_whole_process_group() {
    let ws = Ws::new();
    let ctx = ws.ctx.clone();
    let task = tokio::spawn(async move {
        call(
            &ctx,
            "bash",
            &json!({"command": SPAWNS_CHILDREN}).to_string(),
        )
        .await
    });
    let ready = ws.dir.path().join("ready");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the command never got ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancelled = Instant::now();
    ws.ctx.cancel.cancel();
    let out = task.await.unwrap();
    assert!(
        cancelled.elapsed() < Duration::from_secs(8),
        "{:?}",
        cancelled.elapsed()
    );
    assert_eq!(out.metadata.as_ref().unwrap()["timedOut"], false);
    let msg = err(out);
    assert!(msg.contains("cancelled"), "{msg}");
    let pids = read_pids(&ws.dir.path().join("pids"));
    assert_eq!(pids.len(), 3);
    assert_gone(&pids).await;
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn dropping_a_running_bash_call_kills_the_whole_process_group() {
    let ws = Ws::new();
    let ctx = ws.ctx.clone();
    let task = tokio::spawn(async move {
        call(
            &ctx,
            "bash",
            &json!({"command": SPAWNS_CHILDREN}).to_string(),
        )
        .await
    });
    let ready = ws.dir.path().join("ready");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the command never got ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    let pids = read_pids(&ws.dir.path().join("pids"));
    assert_eq!(pids.len(), 3);
    assert_gone(&pids).await;
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn bash_kills_background_children_when_the_shell_exits() {
    let ws = Ws::new();
    let started = Instant::now();
    let text = ok(ws
        .call("bash", json!({"command": "sleep 30 & echo $!; echo bye"}))
        .await);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(text.starts_with("Exit code: 0\n\nstdout:\n"), "{text}");
    let pid: u32 = text.lines().nth(3).unwrap().parse().unwrap();
    assert!(text.contains("bye"), "{text}");
    assert_gone(&[pid]).await;
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn bash_does_not_hang_on_pipes_held_by_an_escaped_process() {
    if std::process::Command::new("setsid")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("setsid is not installed; skipping");
        return;
    }
    let ws = Ws::new();
    let started = Instant::now();
    let out = ws
        .call(
            "bash",
            // The shell waits until the child has left the group (it writes its pid only after
            // setsid), or the group kill at exit would get it first.
            json!({"command": "setsid sh -c 'echo $$ > escaped; exec sleep 30' & \
                               while [ ! -s escaped ]; do sleep 0.01; done; cat escaped"}),
        )
        .await;
    let elapsed = started.elapsed();
    let text = ok(out);
    let pid: u32 = text.lines().nth(3).unwrap().parse().unwrap();
    // The escaped sleep is not ours to wait for; end it so it does not outlive the test.
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
    assert!(text.contains("still holds its output open"), "{text}");
}

#[cfg(unix)]
#[tokio::test]
async fn bash_timeout_is_clamped_to_the_maximum() {
    let ws = Ws::with_limits(Limits {
        bash_max_timeout: Duration::from_millis(300),
        ..Limits::default()
    });
    let started = Instant::now();
    let out = ws
        .call("bash", json!({"command": "sleep 20", "timeout_ms": 600000}))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let msg = err(out);
    assert!(msg.starts_with("Timed out after 300ms"), "{msg}");
}
