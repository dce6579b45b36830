//! Support for the `crushctl` tests: a `crushctl` process whose stdout and stderr are collected
//! as they come, so a test can wait for what a user would see (with a deadline) and then act —
//! send it SIGINT, start a run from another client — and finally read its exit status.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::DEADLINE;

#[derive(Default)]
struct Streams {
    stdout: String,
    stderr: String,
    /// Streams that reached their end.
    closed: u8,
}

/// A running `crushctl` with collected output.
pub struct CliProcess {
    child: Child,
    streams: Arc<(Mutex<Streams>, Condvar)>,
}

impl CliProcess {
    /// Spawns `cmd` with stdin closed and stdout/stderr collected.
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn crushctl");
        let streams: Arc<(Mutex<Streams>, Condvar)> = Arc::default();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        for (mut pipe, is_out) in [
            (Box::new(out) as Box<dyn Read + Send>, true),
            (Box::new(err) as Box<dyn Read + Send>, false),
        ] {
            let sink = streams.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    let n = pipe.read(&mut buf).unwrap_or(0);
                    let mut s = sink.0.lock().unwrap();
                    if n == 0 {
                        s.closed += 1;
                        sink.1.notify_all();
                        return;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if is_out {
                        s.stdout.push_str(&text);
                    } else {
                        s.stderr.push_str(&text);
                    }
                    sink.1.notify_all();
                }
            });
        }
        Self { child, streams }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_until(&self, what: &str, cond: impl Fn(&Streams) -> bool) {
        let end = Instant::now() + DEADLINE;
        let (lock, cv) = &*self.streams;
        let mut s = lock.lock().unwrap();
        while !cond(&s) {
            let now = Instant::now();
            assert!(
                now < end && s.closed < 2,
                "crushctl never showed {what}\nstdout:\n{}\nstderr:\n{}",
                s.stdout,
                s.stderr
            );
            s = cv.wait_timeout(s, end - now).unwrap().0;
        }
    }

    /// Waits until stdout contains `needle`.
    pub fn wait_stdout(&self, needle: &str) {
        self.wait_until(&format!("{needle:?} on stdout"), |s| {
            s.stdout.contains(needle)
        });
    }

    /// Waits until the `text` events of `--json` output, joined, contain `needle` (deltas may
    /// come one word at a time or merged, depending on how fast crushctl reads).
    pub fn wait_json_text(&self, needle: &str) {
        self.wait_until(&format!("{needle:?} in the --json text events"), |s| {
            s.stdout
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["type"] == "text")
                .filter_map(|v| v["text"].as_str().map(str::to_owned))
                .collect::<String>()
                .contains(needle)
        });
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_stderr(&self, needle: &str) {
        self.wait_until(&format!("{needle:?} on stderr"), |s| {
            s.stderr.contains(needle)
        });
    }

    pub fn stdout(&self) -> String {
        self.streams.0.lock().unwrap().stdout.clone()
    }

    pub fn stderr(&self) -> String {
        self.streams.0.lock().unwrap().stderr.clone()
    }

    #[cfg(unix)]
    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("pid");
        rustix::process::kill_process(pid, sig).expect("kill");
    }

    /// Waits for the process to exit and for its output to be read to the end.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let end = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < end,
                "crushctl did not exit\nstdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
            // Process exit has no portable notification in std; a short poll is the wait.
            std::thread::sleep(Duration::from_millis(10));
        };
        self.wait_until("the end of its output", |s| s.closed >= 2);
        status
    }
}

impl Drop for CliProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
