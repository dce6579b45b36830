//! Snapshot benchmark (figures, not assertions): a generated workspace of 10 000 files (about
//! 40 MB in 100 directories), its first snapshot (every file hashed into the shadow store), then
//! steps that each change 3 files and snapshot again, the disk the store takes, and a revert of
//! those 3 files. The `git` program does the work, as in the daemon.
//!
//! Run: `cargo bench -p crushd --bench snapshots`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use crushd::snapshots::{SnapshotLimits, Snapshots};

const FILES: usize = 10_000;
const STEPS: usize = 30;

fn pct(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn du(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => du(&e.path()),
                    _ => e.metadata().map_or(0, |m| m.len()),
                })
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("project");
        for i in 0..FILES {
            let d = root.join(format!("dir{:03}", i % 100));
            std::fs::create_dir_all(&d).unwrap();
            let body: String = (0..100)
                .map(|l| format!("// file {i}, line {l}: some source text here\n"))
                .collect();
            std::fs::write(d.join(format!("file{i}.rs")), body).unwrap();
        }
        let workspace_bytes = du(&root);
        let store = dir.path().join("snapshots");
        let snaps = Snapshots::new(
            store.clone(),
            SnapshotLimits {
                max_file_bytes: 4 << 20,
                max_bytes: 1 << 30,
            },
        );
        let t = Instant::now();
        let first = snaps.snapshot("ws", &root, "s").await.unwrap();
        let cold = t.elapsed();
        let after_first = du(&store);

        let mut steps = Vec::new();
        let mut last = first.tree.clone();
        for step in 0..STEPS {
            for k in 0..3 {
                let i = (step * 3 + k) * 37 % FILES;
                let p = root.join(format!("dir{:03}/file{i}.rs", i % 100));
                let mut body = std::fs::read_to_string(&p).unwrap();
                body.push_str(&format!("// changed in step {step}\n"));
                std::fs::write(&p, body).unwrap();
            }
            let t = Instant::now();
            last = snaps.snapshot("ws", &root, "s").await.unwrap().tree;
            steps.push(t.elapsed());
        }
        let after_steps = du(&store);

        let t = Instant::now();
        let changed: Vec<String> = snaps
            .changes("ws", &root, &first.tree, &last)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.path)
            .collect();
        let restored = snaps.restore("ws", &root, &first.tree, &changed).await.unwrap();
        let revert = t.elapsed();

        println!(
            "workspace: {FILES} files, {:.1} MB; first snapshot {} (store {:.1} MB)",
            workspace_bytes as f64 / 1e6,
            ms(cold),
            after_first as f64 / 1e6
        );
        println!(
            "a step changing 3 files: snapshot p50 {} / p99 {} over {STEPS} steps; store after them {:.1} MB (+{:.1} KB per step)",
            ms(pct(&mut steps, 0.5)),
            ms(pct(&mut steps, 0.99)),
            after_steps as f64 / 1e6,
            (after_steps - after_first) as f64 / 1e3 / STEPS as f64
        );
        println!(
            "revert of those {STEPS} steps ({} files, the diff and the restore): {}",
            restored.len(),
            ms(revert)
        );
    });
}
