//! What the sandbox adds to a `bash` tool call (figures, not assertions): the time from starting
//! the tool guard to its exit for the trivial command `true`, unconfined and confined as the
//! daemon confines it (`workspace-write`: the devices, a workspace and the temp directory
//! writable; then also with the network off). The guard is the `crushd` binary this bench was
//! built with, started exactly as `tools/bash.rs` starts it (own process group, stdin a pipe held
//! open), so the difference between the rows is the Landlock ruleset, its rules and
//! `landlock_restrict_self`. A plain `bash -c true` is the floor.
//!
//! Run: `cargo bench --profile dev -p crushd --bench sandbox` (or `cargo bench`, release).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 500;

fn pct(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// One start-to-exit time of `program args`.
fn once(program: &str, args: &[String]) -> Duration {
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .unwrap();
    // The guard's lifeline, held until it exits (`wait` would close it first).
    let lifeline = child.stdin.take();
    let status = child.wait().unwrap();
    let took = start.elapsed();
    drop(lifeline);
    assert!(status.success(), "{program} {args:?}: {status}");
    took
}

fn main() {
    if !cfg!(target_os = "linux") {
        println!("the sandbox needs Linux");
        return;
    }
    let crushd = env!("CARGO_BIN_EXE_crushd").to_owned();
    let ws = tempfile::tempdir().unwrap();
    let tmp = std::env::temp_dir();
    let mut confined = vec!["--tool-guard".to_owned(), "--sandbox".to_owned()];
    for p in [
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
        "/dev/tty",
        "/dev/ptmx",
        "/dev/pts",
    ] {
        confined.extend(["--sandbox-write".to_owned(), p.to_owned()]);
    }
    confined.extend([
        "--sandbox-write".to_owned(),
        ws.path().display().to_string(),
        "--sandbox-write".to_owned(),
        tmp.display().to_string(),
    ]);
    let mut no_net = confined.clone();
    no_net.push("--sandbox-no-network".to_owned());
    let shell = |mut v: Vec<String>| {
        v.extend(["-c".to_owned(), "true".to_owned()]);
        v
    };
    let rows: [(&str, &str, Vec<String>); 4] = [
        ("bash -c true (no guard, floor)", "bash", shell(Vec::new())),
        (
            "guard, unconfined (sandbox off)",
            &crushd,
            shell(vec!["--tool-guard".to_owned()]),
        ),
        ("guard, workspace-write", &crushd, shell(confined)),
        ("guard, workspace-write, no network", &crushd, shell(no_net)),
    ];
    // Interleaved, so a busy moment of the machine hits every variant alike.
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); rows.len()];
    for round in 0..RUNS + 10 {
        for (i, (_, program, args)) in rows.iter().enumerate() {
            let t = once(program, args);
            if round >= 10 {
                samples[i].push(t);
            }
        }
    }
    println!("{RUNS} runs each (interleaved), start to exit of `true`:");
    println!("| variant | p50 | p99 | p50 vs unconfined guard | p99 vs unconfined guard |");
    println!("|---|---|---|---|---|");
    let mut base = None;
    for ((name, _, _), s) in rows.iter().zip(samples.iter_mut()) {
        let (p50, p99) = (pct(s, 0.5), pct(s, 0.99));
        let delta = match base {
            None if name.contains("unconfined") => {
                base = Some((p50, p99));
                String::new()
            }
            Some((b50, b99)) => format!(
                " | {:+.2} ms | {:+.2} ms",
                (p50.as_secs_f64() - b50.as_secs_f64()) * 1e3,
                (p99.as_secs_f64() - b99.as_secs_f64()) * 1e3
            ),
            None => String::new(),
        };
        println!("| {name} | {} | {}{delta} |", ms(p50), ms(p99));
    }
}
