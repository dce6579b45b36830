#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property tests of path confinement (issue 10): arbitrary paths built from `..`, `.`, absolute
//! prefixes and symlinks that lead out of the workspace (to a directory, to a file, up the tree,
//! dangling) are fed to every path-taking tool, and a symlink is swapped in between the check and
//! the use. However a path is spelled, no tool returns a byte of a file outside the root, lists a
//! name outside it, or changes anything outside it.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use proptest::prelude::*;
use serde_json::json;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

use super::paths::Workspace;
use super::*;

/// Content of every file outside the root; no tool output may ever contain it.
const SECRET: &str = "OUTSIDE-SECRET-7f3a";
/// A name that exists only outside the root and is not in the path vocabulary, so it can only
/// appear in an output through a listing that escaped.
const HIDDEN_NAME: &str = "hidden_outside_name.txt";

struct Fixture {
    _base: TempDir,
    base: PathBuf,
    outside: PathBuf,
    ctx: ToolContext,
}

impl Fixture {
    fn new() -> Self {
        let dir = TempDir::new().unwrap();
        let base = fs::canonicalize(dir.path()).unwrap();
        let outside = base.join("outside");
        fs::create_dir_all(outside.join("dir")).unwrap();
        fs::write(outside.join("secret.txt"), format!("{SECRET}\n")).unwrap();
        fs::write(outside.join("file.txt"), format!("inside {SECRET}\n")).unwrap();
        fs::write(outside.join("dir").join(HIDDEN_NAME), SECRET).unwrap();
        let ws = base.join("ws");
        fs::create_dir_all(ws.join("a/b")).unwrap();
        fs::write(ws.join("a/b/file.txt"), "inside\n").unwrap();
        fs::write(ws.join("a/file.txt"), "inside\n").unwrap();
        fs::write(ws.join("file.txt"), "inside\n").unwrap();
        symlink("../outside", ws.join("link_out_dir")).unwrap();
        symlink(&outside, ws.join("link_out_abs")).unwrap();
        symlink(outside.join("secret.txt"), ws.join("link_out_file")).unwrap();
        symlink("../..", ws.join("a/link_up")).unwrap();
        symlink(outside.join("new.txt"), ws.join("dangling_out")).unwrap();
        symlink("a", ws.join("link_in")).unwrap();
        let ctx = ToolContext {
            root: ws,
            cancel: CancellationToken::new(),
            scrub_env: Vec::new(),
            sandbox: None,
            limits: Limits::default(),
        };
        Self {
            _base: dir,
            base,
            outside,
            ctx,
        }
    }

    /// Everything under `outside`, not following symlinks: path → content (or link target).
    fn outside_snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for e in fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                let meta = fs::symlink_metadata(&p).unwrap();
                if meta.is_dir() {
                    out.insert(p.clone(), b"<dir>".to_vec());
                    walk(&p, out);
                } else if meta.file_type().is_symlink() {
                    out.insert(
                        p.clone(),
                        fs::read_link(&p)
                            .unwrap()
                            .into_os_string()
                            .into_encoded_bytes(),
                    );
                } else {
                    out.insert(p.clone(), fs::read(&p).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.outside, &mut out);
        // Nothing may appear beside `ws` and `outside` either.
        for e in fs::read_dir(&self.base).unwrap() {
            out.insert(e.unwrap().path(), Vec::new());
        }
        out
    }
}

async fn call(ctx: &ToolContext, tool: &str, input: &serde_json::Value) -> ToolOutput {
    match prepare(ctx, tool, &input.to_string()).await {
        Ok(p) => p.run(ctx).await,
        Err(e) => e,
    }
}

#[track_caller]
fn assert_confined(tool: &str, path: &str, out: &ToolOutput) {
    assert!(
        !out.content.contains(SECRET),
        "{tool} {path:?} returned content from outside the workspace: {}",
        out.content
    );
    assert!(
        !out.content.contains(HIDDEN_NAME),
        "{tool} {path:?} listed a name from outside the workspace: {}",
        out.content
    );
}

const VOCABULARY: &[&str] = &[
    "..",
    ".",
    "",
    "a",
    "b",
    "file.txt",
    "secret.txt",
    "new.txt",
    "link_out_dir",
    "link_out_abs",
    "link_out_file",
    "link_up",
    "dangling_out",
    "link_in",
    "outside",
    "ws",
];

/// A path: up to 7 components of the vocabulary, relative, or under `/`, the base directory,
/// or the root (both absolute).
fn path_strategy() -> impl Strategy<Value = (u8, Vec<&'static str>)> {
    (
        0u8..4,
        proptest::collection::vec(proptest::sample::select(VOCABULARY), 1..7),
    )
}

fn spell(f: &Fixture, (prefix, parts): &(u8, Vec<&str>)) -> String {
    let rel = parts.join("/");
    match prefix {
        0 => rel,
        1 => format!("/{rel}"),
        2 => format!("{}/{rel}", f.base.display()),
        _ => format!("{}/{rel}", f.ctx.root.display()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Every path-taking tool, on any path: nothing from outside is read, listed or changed.
    #[test]
    fn no_tool_reaches_outside_the_root(paths in proptest::collection::vec(path_strategy(), 1..4)) {
        let f = Fixture::new();
        let before = f.outside_snapshot();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            for p in &paths {
                let path = spell(&f, p);
                let inputs = [
                    ("view", json!({"path": path})),
                    ("ls", json!({"path": path, "depth": 3})),
                    ("glob", json!({"pattern": "**/*", "path": path})),
                    ("grep", json!({"pattern": "inside|SECRET", "path": path})),
                    ("edit", json!({"path": path, "old_string": "inside", "new_string": "edited"})),
                    ("write", json!({"path": path, "content": "written\n"})),
                ];
                for (tool, input) in &inputs {
                    let out = call(&f.ctx, tool, input).await;
                    assert_confined(tool, &path, &out);
                }
            }
            // A whole-tree search and listing from the root after all that, too.
            for (tool, input) in [
                ("grep", json!({"pattern": "SECRET"})),
                ("glob", json!({"pattern": "**/*"})),
                ("ls", json!({"depth": 10})),
            ] {
                assert_confined(tool, ".", &call(&f.ctx, tool, &input).await);
            }
        });
        prop_assert_eq!(before, f.outside_snapshot());
    }
}

/// The check-then-use race, simulated deterministically: a path is resolved while `swap` is a
/// real directory, then `swap` is replaced by a symlink to the outside before the file is opened.
/// A plain open would now read the outside file; `open_read` refuses.
#[test]
fn symlink_swapped_in_after_the_check_is_refused() {
    let f = Fixture::new();
    let swap = f.ctx.root.join("swap");
    fs::create_dir(&swap).unwrap();
    fs::write(swap.join("file.txt"), "inside\n").unwrap();
    let ws = Workspace::open(&f.ctx).map_err(|e| e.content).unwrap();
    let resolved = ws.resolve("swap/file.txt").map_err(|e| e.content).unwrap();

    fs::remove_dir_all(&swap).unwrap();
    symlink(&f.outside, &swap).unwrap();
    // The simulation is effective: the checked path now leads outside.
    assert!(fs::read_to_string(&resolved.real).unwrap().contains(SECRET));

    let err = ws.open_read(&resolved.real).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    // The same for a swapped final component (a file replaced by a symlink to a file).
    fs::remove_file(&swap).unwrap();
    fs::create_dir(&swap).unwrap();
    fs::write(swap.join("file.txt"), "inside\n").unwrap();
    let resolved = ws.resolve("swap/file.txt").map_err(|e| e.content).unwrap();
    fs::remove_file(swap.join("file.txt")).unwrap();
    symlink(f.outside.join("secret.txt"), swap.join("file.txt")).unwrap();
    let err = ws.open_read(&resolved.real).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    // Symlinks that stay inside still work.
    let inner = ws
        .resolve("link_in/file.txt")
        .map_err(|e| e.content)
        .unwrap();
    assert!(ws.open_read(&inner.real).is_ok());
    let mut s = String::new();
    std::io::Read::read_to_string(
        &mut ws.open_read(&ws.root.join("link_in/b/file.txt")).unwrap(),
        &mut s,
    )
    .unwrap();
    assert_eq!(s, "inside\n");
    assert!(ws.open_read(&f.outside.join("secret.txt")).is_err());
}

/// A directory swapped for a symlink out, after `write` resolved a path through it: the write is
/// refused and nothing appears outside (deterministic, Linux: openat2 decides).
#[cfg(target_os = "linux")]
#[test]
fn a_write_through_a_directory_swapped_after_the_check_is_refused() {
    let f = Fixture::new();
    let swap = f.ctx.root.join("swap");
    fs::create_dir(&swap).unwrap();
    let ws = Workspace::open(&f.ctx).map_err(|e| e.content).unwrap();
    let resolved = ws.resolve("swap/new.txt").map_err(|e| e.content).unwrap();
    let before = f.outside_snapshot();
    fs::remove_dir_all(&swap).unwrap();
    symlink(&f.outside, &swap).unwrap();
    let err = super::write::atomic_write_beneath(&ws, &resolved.real, b"written\n").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    assert_eq!(f.outside_snapshot(), before, "nothing was written outside");
    // A directory that stays inside is written as usual.
    fs::remove_file(&swap).unwrap();
    fs::create_dir(&swap).unwrap();
    super::write::atomic_write_beneath(&ws, &resolved.real, b"written\n").unwrap();
    assert_eq!(
        fs::read_to_string(swap.join("new.txt")).unwrap(),
        "written\n"
    );
}

/// The race for real: another thread flips `swap` between a directory and a symlink to the
/// outside as fast as it can while view, grep and edit read through it. No read may ever return
/// the outside content.
#[test]
fn reading_tools_race_a_symlink_swapper_and_stay_inside() {
    let f = Fixture::new();
    let swap = f.ctx.root.join("swap");
    let staging = f.ctx.root.join("staging");
    fs::create_dir(&staging).unwrap();
    fs::write(staging.join("file.txt"), "inside\n").unwrap();
    fs::rename(&staging, &swap).unwrap();
    let link = f.ctx.root.join("link-tmp");
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, swap, outside, link) =
            (stop.clone(), swap.clone(), f.outside.clone(), link.clone());
        std::thread::spawn(move || {
            let dir_aside = swap.with_file_name("dir-aside");
            let mut flips = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Directory → symlink to outside, each step one atomic rename.
                let _ = fs::rename(&swap, &dir_aside);
                let _ = symlink(&outside, &link);
                let _ = fs::rename(&link, &swap);
                // Symlink → directory.
                let _ = fs::remove_file(&swap);
                let _ = fs::rename(&dir_aside, &swap);
                flips += 1;
            }
            flips
        })
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut calls = 0u64;
    rt.block_on(async {
        for _ in 0..1500 {
            for (tool, input) in [
                ("view", json!({"path": "swap/file.txt"})),
                (
                    "grep",
                    json!({"pattern": "inside", "path": "swap/file.txt"}),
                ),
                ("grep", json!({"pattern": "inside", "path": "swap"})),
                (
                    "edit",
                    json!({"path": "swap/file.txt", "old_string": "zzz", "new_string": "y"}),
                ),
            ] {
                let out = call(&f.ctx, tool, &input).await;
                assert_confined(tool, "swap/file.txt", &out);
                calls += 1;
            }
        }
    });
    stop.store(true, Ordering::Relaxed);
    let flips = swapper.join().unwrap();
    assert!(flips > 0, "the swapper never ran");
    assert!(calls > 0);
}

/// The same race against `write` (and `edit`, which shares write.rs `atomic_write_beneath`):
/// the target is resolved once, then written through a directory descriptor opened beneath the
/// root (`openat2(RESOLVE_BENEATH)`) with the temporary file created and renamed relative to it,
/// so a parent directory swapped for a symlink after the check cannot redirect the write.
#[test]
fn writing_tools_race_a_symlink_swapper_and_stay_inside() {
    let f = Fixture::new();
    let swap = f.ctx.root.join("swap");
    fs::create_dir(&swap).unwrap();
    fs::write(swap.join("file.txt"), "inside\n").unwrap();
    let link = f.ctx.root.join("link-tmp");
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, swap, outside, link) =
            (stop.clone(), swap.clone(), f.outside.clone(), link.clone());
        std::thread::spawn(move || {
            let dir_aside = swap.with_file_name("dir-aside");
            while !stop.load(Ordering::Relaxed) {
                let _ = fs::rename(&swap, &dir_aside);
                let _ = symlink(&outside, &link);
                let _ = fs::rename(&link, &swap);
                let _ = fs::remove_file(&swap);
                let _ = fs::rename(&dir_aside, &swap);
            }
        })
    };
    let before = f.outside_snapshot();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let attempts = 2000;
    rt.block_on(async {
        for i in 0..attempts {
            let _ = call(
                &f.ctx,
                "write",
                &json!({"path": format!("swap/new{}.txt", i % 7), "content": "written\n"}),
            )
            .await;
        }
    });
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    let after = f.outside_snapshot();
    let escaped: Vec<_> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    assert!(
        escaped.is_empty(),
        "{} of {attempts} writes raced outside the workspace: {escaped:?}",
        escaped.len()
    );
}
