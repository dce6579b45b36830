//! The workspace tools a model may call — view, ls, glob, grep, write, edit, bash — and the
//! boundary they keep: every path stays inside the workspace root (see [`paths`]), every tool
//! failure is a [`ToolOutput`] the model can act on (never a panic or a daemon error), and
//! everything a tool returns to the model is capped. A call has two phases: [`prepare`] parses and
//! validates the model's input and, for write/edit, computes the diff without touching disk, so
//! the daemon can ask for permission; [`Prepared::run`] then does the work. Blocking filesystem
//! work runs on tokio's blocking pool and polls the run's cancellation token.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::model::ToolSpec;

mod bash;
mod edit;
mod glob;
mod grep;
#[cfg(unix)]
pub mod guard;
mod ls;
mod output;
mod paths;
pub(crate) mod sandbox;
mod view;
mod write;

#[cfg(all(test, unix))]
mod escape_tests;
#[cfg(test)]
mod tests;

/// What a tool call may touch and how much it may return.
#[derive(Debug, Clone)]
pub(crate) struct ToolContext {
    /// The workspace root (absolute). Tools canonicalize it before comparing paths.
    pub(crate) root: PathBuf,
    /// The run's token: fires on agent/cancel, workspace close and daemon shutdown.
    pub(crate) cancel: CancellationToken,
    /// Environment variable names removed from bash's environment (the providers' key
    /// variables), on top of every variable that looks like a secret ([`tool_environment`]).
    pub(crate) scrub_env: Vec<String>,
    pub(crate) limits: Limits,
    /// How `bash` commands are confined; `None`: not at all.
    pub(crate) sandbox: Option<sandbox::Policy>,
}

#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// A file larger than this can only be viewed by line range (offset/limit).
    pub(crate) view_max_bytes: u64,
    /// Cap on the text any tool returns to the model; the head and tail are kept.
    pub(crate) output_max_bytes: usize,
    pub(crate) bash_default_timeout: Duration,
    pub(crate) bash_max_timeout: Duration,
    /// Cap on ls entries, glob paths and grep matches.
    pub(crate) max_results: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            view_max_bytes: 256 * 1024,
            output_max_bytes: 32 * 1024,
            bash_default_timeout: Duration::from_secs(2 * 60),
            bash_max_timeout: Duration::from_secs(10 * 60),
            max_results: 1000,
        }
    }
}

/// The result of a tool call, as the model and editor clients see it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ToolOutput {
    /// What the model sees.
    pub(crate) content: String,
    pub(crate) is_error: bool,
    /// For editor clients, camelCase keys: `{"path","diff"}` for write/edit,
    /// `{"exitCode","timedOut","truncated"}` for bash.
    pub(crate) metadata: Option<Value>,
}

impl ToolOutput {
    pub(crate) fn ok(content: impl Into<String>) -> Self {
        Self {
            content: content.into(),
            is_error: false,
            metadata: None,
        }
    }

    pub(crate) fn error(content: impl Into<String>) -> Self {
        Self {
            content: content.into(),
            is_error: true,
            metadata: None,
        }
    }

    pub(crate) fn cancelled() -> Self {
        Self::error("The tool call was cancelled.")
    }

    fn with_metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata);
        self
    }
}

/// A validated tool call, ready to run once permitted.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// The tool's name. The driver goes by the model's call name instead, so only the tests
    /// read this back.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "read by tests; the driver uses the call's name")
    )]
    pub(crate) tool: String,
    /// A one-line human summary for permission prompts and UIs.
    pub(crate) title: String,
    /// The unified diff a write or edit would apply.
    pub(crate) diff: Option<String>,
    /// The bash command (for allow rules).
    pub(crate) command: Option<String>,
    action: Action,
}

#[derive(Debug)]
enum Action {
    View(view::Call),
    Ls(ls::Call),
    Glob(glob::Call),
    Grep(grep::Call),
    Write(write::Call),
    Edit(edit::Call),
    Bash(bash::Call),
}

pub use crate::secrets::is_secret_name;
/// MCP tool results are capped like built-in tools' (`mcp/mod.rs`).
pub(crate) use output::cap_text;

static ALLOW_ENV: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
static USER_UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Records the umask the daemon was started with, once it set its own (077, so everything it
/// writes is private): what tools create in the workspace gets the user's umask back — `bash`
/// through the tool guard, `write` for new files and directories.
pub fn set_user_umask(mask: u32) {
    let _ = USER_UMASK.set(mask);
}

/// The user's umask, when the daemon changed its own.
pub(crate) fn user_umask() -> Option<u32> {
    USER_UMASK.get().copied()
}

/// Sets the variables tool processes get although they look like secrets (`[permissions]
/// allow_env`). Called once by the `crushd` binary; the library alone passes none.
pub fn set_allow_env(names: Vec<String>) {
    let _ = ALLOW_ENV.set(names);
}

/// The environment of a tool process: the daemon's, without the providers' key variables
/// (`key_vars`, whatever they are called) and without any other secret
/// ([`crate::secrets::is_secret`]) the user did not allow-list. The rule: a command the model
/// runs never sees a credential the daemon was started with unless the user said so.
pub(crate) fn tool_environment(
    key_vars: &[String],
) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    let allow = ALLOW_ENV.get().map(Vec::as_slice).unwrap_or_default();
    crate::secrets::tool_environment(std::env::vars_os(), key_vars, allow)
}

/// The tools in the order the model is shown them.
pub(crate) const TOOL_NAMES: [&str; 7] = ["view", "ls", "glob", "grep", "write", "edit", "bash"];

/// Whether a tool changes the workspace or runs commands, and so needs the user's permission.
pub(crate) fn needs_permission(tool: &str) -> bool {
    matches!(tool, "write" | "edit" | "bash")
}

/// The seven tools' specifications, in a fixed order: view, ls, glob, grep, write, edit, bash.
pub(crate) fn specs() -> Vec<ToolSpec> {
    let d = Limits::default();
    let spec = |name: &str, description: String, parameters: Value| ToolSpec {
        name: name.to_owned(),
        description,
        parameters,
    };
    let path_prop = |what: &str| {
        json!({
            "type": "string",
            "description": format!("{what}, relative to the workspace root (an absolute path must be inside the workspace).")
        })
    };
    vec![
        spec(
            "view",
            format!(
                "Read a text file from the workspace. Returns its lines numbered (line number, a tab, then the text), \
                 at most {} lines per call (long lines are cut at 2000 characters). Use offset and limit to read \
                 part of a file; a file over {} KiB can only be read in parts. Refuses directories (use ls) and \
                 binary files. Read a file before editing it.",
                view::DEFAULT_LIMIT,
                d.view_max_bytes / 1024
            ),
            json!({
                "type": "object",
                "properties": {
                    "path": path_prop("The file to read"),
                    "offset": {"type": "integer", "minimum": 1, "description": "The 1-based line number to start reading from (default 1)."},
                    "limit": {"type": "integer", "minimum": 1, "description": format!("How many lines to read (default {}).", view::DEFAULT_LIMIT)}
                },
                "required": ["path"],
                "additionalProperties": false
            }),
        ),
        spec(
            "ls",
            format!(
                "List a directory of the workspace as an indented tree. Directories end with '/', symlinks with '@'. \
                 Files ignored by .gitignore and the .git directory are left out. At most {} entries.",
                d.max_results
            ),
            json!({
                "type": "object",
                "properties": {
                    "path": path_prop("The directory to list (default: the workspace root)"),
                    "depth": {"type": "integer", "minimum": 1, "description": format!("How many levels deep to list (default {}).", ls::DEFAULT_DEPTH)}
                },
                "additionalProperties": false
            }),
        ),
        spec(
            "glob",
            format!(
                "Find files whose path matches a glob pattern, e.g. '**/*.rs' or 'src/**/*.{{ts,tsx}}'. The pattern is \
                 matched against paths relative to the search directory; '*' does not cross '/', '**' matches any \
                 number of directories. Files ignored by .gitignore are skipped. Returns matching paths relative to \
                 the workspace root, sorted, at most {}.",
                d.max_results
            ),
            json!({
                "type": "object",
                "properties": {
                    "pattern": {"type": "string", "description": "The glob pattern, e.g. '**/*.rs'."},
                    "path": path_prop("The directory to search (default: the workspace root)")
                },
                "required": ["pattern"],
                "additionalProperties": false
            }),
        ),
        spec(
            "grep",
            format!(
                "Search file contents for a regular expression (Rust regex syntax, like ripgrep: escape literal \
                 characters such as '(' or '.' with a backslash). Files ignored by .gitignore and binary files are \
                 skipped. Returns matching lines as 'path:line: text', at most {} matches.",
                d.max_results
            ),
            json!({
                "type": "object",
                "properties": {
                    "pattern": {"type": "string", "description": "The regular expression to search for."},
                    "path": path_prop("The file or directory to search (default: the workspace root)"),
                    "include": {"type": "string", "description": "Only search files matching this glob, e.g. '*.rs' or '*.{ts,tsx}' (matched against the file name), or 'src/**/*.rs' (matched against the path, relative to the search path or the workspace root, when it contains '/')."},
                    "ignore_case": {"type": "boolean", "description": "Match case-insensitively (default false)."}
                },
                "required": ["pattern"],
                "additionalProperties": false
            }),
        ),
        spec(
            "write",
            "Create a file or replace a file's whole content. Parent directories are created. Prefer edit for \
             changing part of an existing file. Needs the user's permission."
                .to_owned(),
            json!({
                "type": "object",
                "properties": {
                    "path": path_prop("The file to write"),
                    "content": {"type": "string", "description": "The complete new content of the file."}
                },
                "required": ["path", "content"],
                "additionalProperties": false
            }),
        ),
        spec(
            "edit",
            "Replace text in an existing file. old_string must match the file's text exactly (including whitespace \
             and indentation) and occur exactly once, unless replace_all is true; include enough surrounding lines \
             to make it unique. View the file first. Needs the user's permission."
                .to_owned(),
            json!({
                "type": "object",
                "properties": {
                    "path": path_prop("The file to edit"),
                    "old_string": {"type": "string", "description": "The exact text to replace (must not be empty)."},
                    "new_string": {"type": "string", "description": "The text to put in its place."},
                    "replace_all": {"type": "boolean", "description": "Replace every occurrence of old_string (default false)."}
                },
                "required": ["path", "old_string", "new_string"],
                "additionalProperties": false
            }),
        ),
        spec(
            "bash",
            format!(
                "Run a shell command with bash in the workspace root directory and return its exit code, stdout \
                 and stderr (long output keeps its beginning and end). Stdin is empty, so interactive commands \
                 fail. The command is killed after its timeout (default {}, at most {}); background processes \
                 are killed when the command ends. Needs the user's permission.",
                humantime::format_duration(d.bash_default_timeout),
                humantime::format_duration(d.bash_max_timeout)
            ),
            json!({
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The command to run, as you would type it in bash."},
                    "timeout_ms": {"type": "integer", "minimum": 1, "description": "Timeout in milliseconds."}
                },
                "required": ["command"],
                "additionalProperties": false
            }),
        ),
    ]
}

/// Parses the model's JSON input text, validates it, resolves paths, and for write/edit computes
/// the unified diff without touching disk, so the daemon can show it in a permission prompt.
pub(crate) async fn prepare(
    ctx: &ToolContext,
    tool: &str,
    input: &str,
) -> Result<Prepared, ToolOutput> {
    if !TOOL_NAMES.contains(&tool) {
        return Err(ToolOutput::error(format!(
            "Unknown tool `{tool}`. The available tools are: {}.",
            TOOL_NAMES.join(", ")
        )));
    }
    if ctx.cancel.is_cancelled() {
        return Err(ToolOutput::cancelled());
    }
    match tool {
        "view" => prepare_with(ctx, tool, input, view::prepare).await,
        "ls" => prepare_with(ctx, tool, input, ls::prepare).await,
        "glob" => prepare_with(ctx, tool, input, glob::prepare).await,
        "grep" => prepare_with(ctx, tool, input, grep::prepare).await,
        "write" => prepare_with(ctx, tool, input, write::prepare).await,
        "edit" => prepare_with(ctx, tool, input, edit::prepare).await,
        _ => bash::prepare(ctx, parse(tool, input)?),
    }
}

/// Parses the input, then runs a tool's prepare (which resolves paths and may read files) on the
/// blocking pool.
async fn prepare_with<A: DeserializeOwned + Send + 'static>(
    ctx: &ToolContext,
    tool: &str,
    input: &str,
    f: fn(&ToolContext, A) -> Result<Prepared, ToolOutput>,
) -> Result<Prepared, ToolOutput> {
    let args = parse(tool, input)?;
    let ctx = ctx.clone();
    match tokio::task::spawn_blocking(move || f(&ctx, args)).await {
        Ok(r) => r,
        Err(e) => Err(internal_error(&e)),
    }
}

impl Prepared {
    /// For `write` and `edit`: the file's path relative to the workspace root, as resolved
    /// (what permission rules' path globs match).
    pub(crate) fn path(&self) -> Option<&str> {
        match &self.action {
            Action::Write(call) => Some(&call.inside),
            Action::Edit(call) => Some(&call.inside),
            _ => None,
        }
    }

    /// Does the work. Never panics; failures and cancellation are error outputs.
    pub(crate) async fn run(self, ctx: &ToolContext) -> ToolOutput {
        self.run_reporting(ctx).await.0
    }

    /// [`Prepared::run`], and what the sandbox refused a `bash` command that failed because of
    /// it (empty otherwise): the caller may offer to run it again unconfined.
    pub(crate) async fn run_reporting(self, ctx: &ToolContext) -> (ToolOutput, Vec<String>) {
        if ctx.cancel.is_cancelled() {
            return (ToolOutput::cancelled(), Vec::new());
        }
        let mut refused = Vec::new();
        let mut out = match self.action {
            Action::View(call) => run_blocking(ctx, move |ctx| view::run(ctx, call)).await,
            Action::Ls(call) => run_blocking(ctx, move |ctx| ls::run(ctx, call)).await,
            Action::Glob(call) => run_blocking(ctx, move |ctx| glob::run(ctx, call)).await,
            Action::Grep(call) => run_blocking(ctx, move |ctx| grep::run(ctx, call)).await,
            Action::Write(call) => run_blocking(ctx, move |ctx| write::run(ctx, call)).await,
            Action::Edit(call) => run_blocking(ctx, move |ctx| edit::run(ctx, call)).await,
            Action::Bash(call) => {
                let (out, r) = bash::run(ctx, call).await;
                refused = r;
                out
            }
        };
        out.content = output::cap_text(&out.content, ctx.limits.output_max_bytes);
        (out, refused)
    }
}

/// Runs a tool's blocking work off the async threads. A panic in it becomes an error output.
async fn run_blocking(
    ctx: &ToolContext,
    f: impl FnOnce(&ToolContext) -> ToolOutput + Send + 'static,
) -> ToolOutput {
    let ctx = ctx.clone();
    match tokio::task::spawn_blocking(move || f(&ctx)).await {
        Ok(out) => out,
        Err(e) => internal_error(&e),
    }
}

fn internal_error(e: &tokio::task::JoinError) -> ToolOutput {
    tracing::error!(error = %e, "tool task failed");
    ToolOutput::error(format!("The tool failed with an internal error: {e}"))
}

/// Parses a tool's input object. Empty input reads as `{}` (some models send nothing for a call
/// without arguments).
fn parse<T: DeserializeOwned>(tool: &str, input: &str) -> Result<T, ToolOutput> {
    let input = input.trim();
    let value: Value = if input.is_empty() {
        Value::Object(Default::default())
    } else {
        serde_json::from_str(input).map_err(|e| {
            ToolOutput::error(format!("Invalid input for {tool}: not valid JSON ({e}). Send a JSON object of the tool's parameters."))
        })?
    };
    if !value.is_object() {
        return Err(ToolOutput::error(format!(
            "Invalid input for {tool}: expected a JSON object of the tool's parameters, got {}.",
            json_kind(&value)
        )));
    }
    serde_json::from_value(value)
        .map_err(|e| ToolOutput::error(format!("Invalid input for {tool}: {e}.")))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An optional non-negative integer that also accepts a numeric string or an integral float,
/// since models are not always exact about JSON types.
fn de_opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    let bad = |v: &dyn std::fmt::Display| {
        D::Error::custom(format!("expected a non-negative integer, got {v}"))
    };
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(u) => Ok(Some(u)),
            None => match n.as_f64() {
                Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64 => {
                    Ok(Some(f as u64))
                }
                _ => Err(bad(&n)),
            },
        },
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| bad(&format!("{s:?}"))),
        Some(other) => Err(bad(&other)),
    }
}

/// An optional boolean that also accepts "true"/"false" strings.
fn de_opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    use serde::de::Error;
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(other) => Err(D::Error::custom(format!(
            "expected true or false, got {other}"
        ))),
    }
}

/// An optional path argument: absent, null or blank means the workspace root.
fn opt_path(p: Option<String>) -> Option<String> {
    p.filter(|p| !p.trim().is_empty())
}

/// A gitignore-aware walk of `dir`, sorted by name so results are stable. Hidden files are
/// included (an agent needs `.github/` or `.env.example`), `.git` is not. `.gitignore` applies
/// even outside a git repository, and symlinks are never followed, so a walk cannot leave the
/// workspace.
fn walker(dir: &Path) -> ignore::WalkBuilder {
    let mut b = ignore::WalkBuilder::new(dir);
    b.hidden(false)
        .require_git(false)
        .follow_links(false)
        .sort_by_file_name(|a, b| a.cmp(b))
        .filter_entry(|e| e.file_name() != ".git");
    b
}
