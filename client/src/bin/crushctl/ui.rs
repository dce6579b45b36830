//! The terminal: whether stdout and stderr are terminals, colour (only on a terminal, never with
//! `NO_COLOR`), and the one writer every output goes through, which keeps the spinner (stderr)
//! from tearing streamed text (stdout) when both are the same terminal. A closed stdout (the
//! reader of a pipe exited, as `| head` does) is noticed here and ends the command with
//! [`EXIT_PIPE`] instead of a panic or a run that streams into nothing.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy)]
pub struct Term {
    pub stdout_tty: bool,
    pub stderr_tty: bool,
    pub color_out: bool,
    pub color_err: bool,
}

impl Term {
    pub fn detect() -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let stdout_tty = std::io::stdout().is_terminal();
        let stderr_tty = std::io::stderr().is_terminal();
        Self {
            stdout_tty,
            stderr_tty,
            color_out: stdout_tty && !no_color,
            color_err: stderr_tty && !no_color,
        }
    }
}

/// SGR codes used here.
pub const BOLD: &str = "1";
pub const DIM: &str = "2";
pub const RED: &str = "31";
pub const GREEN: &str = "32";
pub const YELLOW: &str = "33";
pub const CYAN: &str = "36";

pub fn paint(on: bool, sgr: &str, s: &str) -> String {
    if on {
        format!("\x1b[{sgr}m{s}\x1b[0m")
    } else {
        s.to_owned()
    }
}

const FRAMES: &[&str] = &["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

#[derive(Default)]
struct State {
    /// The spinner's label while it should spin.
    spin: Option<String>,
    /// Whether a spinner frame is on the screen (stderr's current line).
    drawn: bool,
    frame: usize,
    /// Whether stdout's last byte was a newline (or nothing was written).
    out_line_start: bool,
    /// Whether anything was written to stdout.
    out_written: bool,
}

/// All output of a command. Cloning shares it.
#[derive(Clone)]
pub struct Ui {
    pub term: Term,
    state: Arc<Mutex<State>>,
    ticker: Arc<Option<JoinHandle<()>>>,
}

impl Drop for Ui {
    fn drop(&mut self) {
        if Arc::strong_count(&self.ticker) == 1
            && let Some(t) = self.ticker.as_ref()
        {
            t.abort();
        }
    }
}

impl Ui {
    /// `spinner`: draw a spinner on stderr while something is awaited (only on a terminal).
    pub fn new(term: Term, spinner: bool) -> Self {
        let state = Arc::new(Mutex::new(State {
            out_line_start: true,
            ..State::default()
        }));
        let ticker = (spinner && term.stderr_tty).then(|| {
            let state = state.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tick.tick().await;
                    let mut s = lock(&state);
                    // Never draw in the middle of a line of streamed text on the same screen.
                    if let Some(label) = s.spin.clone()
                        && (s.out_line_start || !term.stdout_tty)
                    {
                        let frame = FRAMES[s.frame % FRAMES.len()];
                        s.frame += 1;
                        let mut err = std::io::stderr().lock();
                        let _ = write!(
                            err,
                            "\r\x1b[2K{} {}",
                            paint(term.color_err, CYAN, frame),
                            paint(term.color_err, DIM, &label)
                        );
                        let _ = err.flush();
                        s.drawn = true;
                    }
                }
            })
        });
        Self {
            term,
            state,
            ticker: Arc::new(ticker),
        }
    }

    /// Shows the spinner with `label`, or hides it (`None`).
    pub fn spin(&self, label: Option<&str>) {
        let mut s = lock(&self.state);
        s.spin = label.map(str::to_owned);
        if label.is_none() {
            clear(&mut s);
        }
    }

    /// Writes streamed text to stdout.
    pub fn out(&self, text: &str) {
        if text.is_empty() {
            return;
        }
        let mut s = lock(&self.state);
        if self.term.stdout_tty {
            clear(&mut s);
        }
        let mut out = std::io::stdout().lock();
        let _ = note_write(out.write_all(text.as_bytes()).and_then(|()| out.flush()));
        s.out_line_start = text.ends_with('\n');
        s.out_written = true;
    }

    /// Writes one line to stdout (JSON lines, tables).
    pub fn out_line(&self, line: &str) {
        let mut s = lock(&self.state);
        let mut out = std::io::stdout().lock();
        let _ = note_write(writeln!(out, "{line}").and_then(|()| out.flush()));
        s.out_line_start = true;
        s.out_written = true;
    }

    /// Ends stdout's line if streamed text left it open.
    pub fn end_line(&self) {
        let mut s = lock(&self.state);
        if !s.out_line_start {
            let mut out = std::io::stdout().lock();
            let _ = note_write(out.write_all(b"\n").and_then(|()| out.flush()));
            s.out_line_start = true;
        }
    }

    /// Whether stdout's last byte ends a line.
    pub fn at_line_start(&self) -> bool {
        lock(&self.state).out_line_start
    }

    /// Writes a line to stderr (a notice, tool activity, a prompt's result).
    pub fn err_line(&self, line: &str) {
        let mut s = lock(&self.state);
        clear(&mut s);
        // On one screen, a notice must not land at the end of a line of streamed text.
        if self.term.stdout_tty && self.term.stderr_tty && !s.out_line_start {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(b"\n");
            let _ = out.flush();
            s.out_line_start = true;
        }
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
        let _ = err.flush();
    }

    /// Writes a question to stderr without a newline (the answer is typed after it).
    pub fn ask(&self, question: &str) {
        let mut s = lock(&self.state);
        s.spin = None;
        clear(&mut s);
        if self.term.stdout_tty && !s.out_line_start {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(b"\n");
            let _ = out.flush();
            s.out_line_start = true;
        }
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "{question}");
        let _ = err.flush();
    }

    pub fn paint_err(&self, sgr: &str, s: &str) -> String {
        paint(self.term.color_err, sgr, s)
    }

    pub fn paint_out(&self, sgr: &str, s: &str) -> String {
        paint(self.term.color_out, sgr, s)
    }
}

pub use crate::EXIT_PIPE;

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
static STDOUT_CLOSED_NOTIFY: LazyLock<Notify> = LazyLock::new(Notify::new);

/// Records a failed write to stdout. Any failure counts, not only EPIPE: output that cannot be
/// written has nowhere else to go.
fn note_write(r: std::io::Result<()>) -> std::io::Result<()> {
    if r.is_err() && !STDOUT_CLOSED.swap(true, Ordering::SeqCst) {
        STDOUT_CLOSED_NOTIFY.notify_waiters();
    }
    r
}

/// Whether a write to stdout has failed.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::SeqCst)
}

/// Resolves once a write to stdout has failed.
pub async fn wait_stdout_closed() {
    loop {
        let notified = STDOUT_CLOSED_NOTIFY.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if stdout_closed() {
            return;
        }
        notified.await;
    }
}

/// The error that ends a command whose stdout was closed (exit [`EXIT_PIPE`], nothing printed).
pub fn closed_error() -> anyhow::Error {
    crate::Exit {
        code: EXIT_PIPE,
        message: String::new(),
    }
    .into()
}

/// Writes to stdout; a closed stdout is an error that ends the command quietly.
pub fn write_out(args: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    note_write(out.write_fmt(args).and_then(|()| out.flush())).map_err(|_| closed_error())
}

/// `println!` for stdout that returns an error instead of panicking when stdout is closed.
#[macro_export]
macro_rules! outln {
    () => { $crate::ui::write_out(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::ui::write_out(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `eprintln!` that never panics: stderr may be closed too, and then there is nobody to tell.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

fn clear(s: &mut State) {
    if s.drawn {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(b"\r\x1b[2K");
        let _ = err.flush();
        s.drawn = false;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
