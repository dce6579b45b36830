//! The `[mcp]` section of `config.toml`: one `[mcp.servers.NAME]` table per global MCP server,
//! checked once when the file is read (names that fit a tool name, a command, a timeout that is
//! not zero), so a server that cannot be described never reaches the pool.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::setting::HumanDuration;

/// How long a call may take when the server's table does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the start (spawn, `initialize`, `tools/list`) may take when the table does not say.
/// Generous: `npx` may download the server first.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// `[mcp]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpSection {
    #[serde(default)]
    pub servers: BTreeMap<String, ServerTable>,
}

/// `[mcp.servers.NAME]`: a stdio server (`command`, `args`, `env`, `cwd`) or a streamable-HTTP
/// one (`url`, `headers`, `headers_env`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTable {
    /// The program, found on `PATH` like a shell would.
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// Variables set for the server (literal values). Everything else comes from the daemon's
    /// environment without the secret-looking variables (`[permissions] allow_env` applies).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The server's working directory (default: the user's home directory).
    pub cwd: Option<PathBuf>,
    /// A streamable-HTTP server's endpoint (`http://` or `https://`).
    pub url: Option<String>,
    /// Headers sent with every HTTP request, literal values (not for secrets).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers whose values come from environment variables of the daemon (header → variable),
    /// e.g. `{ Authorization = "NOTES_MCP_AUTH" }` with the variable holding `Bearer …`. Like
    /// API key variables, they are taken out of the daemon's environment at start and never
    /// passed to tools.
    #[serde(default)]
    pub headers_env: BTreeMap<String, String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How long one tool call may take (default 60 s).
    pub timeout: Option<HumanDuration>,
    /// How long the start may take: spawn, `initialize`, `tools/list` (default 30 s).
    pub startup_timeout: Option<HumanDuration>,
    /// Tools of this server that run without asking (the server's own tool names).
    #[serde(default)]
    pub allow: Vec<String>,
}

fn yes() -> bool {
    true
}

/// One server as the pool runs it: the table, checked, with its defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSpec {
    pub name: String,
    /// Empty for an HTTP server.
    pub command: String,
    /// A streamable-HTTP server's endpoint; `None` for a stdio server.
    pub url: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub headers_env: BTreeMap<String, String>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
    pub enabled: bool,
    pub timeout: Duration,
    pub startup_timeout: Duration,
    pub allow: Vec<String>,
}

impl ServerSpec {
    /// The command line as a person reads it (permission prompts, `mcp/list`); an HTTP
    /// server's URL.
    pub fn command_line(&self) -> String {
        if let Some(url) = &self.url {
            return crate::secrets::redact_url_credentials(url);
        }
        std::iter::once(&self.command)
            .chain(&self.args)
            .map(|a| {
                if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"') {
                    format!("{a:?}")
                } else {
                    a.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Whether `name` can be a server name: it becomes part of `mcp__<server>__<tool>`, which
/// providers accept only as `[A-Za-z0-9_-]`, and `__` separates the parts.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !name.contains("__")
        && !name.starts_with('_')
        && !name.ends_with('_')
}

impl McpSection {
    /// The servers, checked; an error is `(key, message)` for the config file's error.
    pub fn specs(&self) -> Result<Vec<ServerSpec>, (String, String)> {
        self.servers.iter().map(|(name, t)| t.spec(name)).collect()
    }
}

impl ServerSpec {
    /// A server a client gives a session (`session/setMcpServers`), checked like a config
    /// table: the same names, a command or a URL, the defaults. A stdio server runs in `cwd`
    /// (the session's workspace). An error is `(field, message)`.
    pub fn from_client(
        c: &crush_protocol::McpServerConfig,
        cwd: Option<PathBuf>,
    ) -> Result<ServerSpec, (String, String)> {
        let table = ServerTable {
            command: c.command.clone(),
            args: c.args.clone(),
            env: c.env.clone(),
            cwd: cwd.filter(|_| c.url.is_none()),
            url: c.url.clone(),
            headers: c.headers.clone(),
            headers_env: BTreeMap::new(),
            enabled: true,
            timeout: None,
            startup_timeout: None,
            allow: Vec::new(),
        };
        table.spec(&c.name).map_err(|(key, message)| {
            let field = key
                .strip_prefix(&format!("mcp.servers.{}", c.name))
                .unwrap_or_default()
                .trim_start_matches('.');
            (
                if field.is_empty() {
                    "name".to_owned()
                } else {
                    field.to_owned()
                },
                message,
            )
        })
    }
}

impl ServerTable {
    fn spec(&self, name: &str) -> Result<ServerSpec, (String, String)> {
        let key = |k: &str| format!("mcp.servers.{name}{k}");
        if !valid_name(name) {
            return Err((
                key(""),
                "a server name must be 1-32 letters, digits, `-` or `_` (no `__`, not starting \
                 or ending with `_`): it becomes part of the tool names mcp__<server>__<tool>"
                    .to_owned(),
            ));
        }
        let command = match (self.command.as_deref().map(str::trim), &self.url) {
            (Some(c), None) if !c.is_empty() => c.to_owned(),
            (None, Some(url)) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err((
                        key(".url"),
                        format!(
                            "{:?} is not an http:// or https:// URL",
                            crate::secrets::redact_url_credentials(url)
                        ),
                    ));
                }
                String::new()
            }
            (Some(_), Some(_)) => {
                return Err((
                    key(""),
                    "give either `command` (a stdio server) or `url` (a streamable-HTTP server), \
                     not both"
                        .to_owned(),
                ));
            }
            _ => {
                return Err((
                    key(".command"),
                    "a server needs `command` (the program to start) or `url` (a streamable-HTTP \
                     server)"
                        .to_owned(),
                ));
            }
        };
        if self.url.is_none() && !(self.headers.is_empty() && self.headers_env.is_empty()) {
            return Err((
                key(".headers"),
                "`headers` and `headers_env` are for `url` servers".to_owned(),
            ));
        }
        let timeout = self.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0);
        if timeout.is_zero() {
            return Err((key(".timeout"), "must be more than zero".to_owned()));
        }
        let startup_timeout = self
            .startup_timeout
            .map_or(DEFAULT_STARTUP_TIMEOUT, |t| t.0);
        if startup_timeout.is_zero() {
            return Err((key(".startup_timeout"), "must be more than zero".to_owned()));
        }
        if let Some(cwd) = &self.cwd
            && !cwd.is_absolute()
        {
            return Err((
                key(".cwd"),
                format!("{} is not an absolute path", cwd.display()),
            ));
        }
        Ok(ServerSpec {
            name: name.to_owned(),
            command,
            url: self.url.clone(),
            headers: self.headers.clone(),
            headers_env: self.headers_env.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            enabled: self.enabled,
            timeout,
            startup_timeout,
            allow: self.allow.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn section(text: &str) -> McpSection {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn reads_a_stdio_server_with_defaults() {
        let s = section(
            "[servers.fs]\ncommand = \"npx\"\nargs = [\"-y\", \"server\"]\nenv = { A = \"1\" }\n",
        );
        let specs = s.specs().unwrap();
        assert_eq!(specs.len(), 1);
        let fs = &specs[0];
        assert_eq!(fs.name, "fs");
        assert!(fs.enabled);
        assert_eq!(fs.timeout, DEFAULT_TIMEOUT);
        assert_eq!(fs.command_line(), "npx -y server");
        assert_eq!(fs.env.get("A").map(String::as_str), Some("1"));
    }

    #[test]
    fn refuses_what_cannot_run() {
        let err = |t: &str| section(t).specs().unwrap_err();
        assert_eq!(err("[servers.a]\nargs = []\n").0, "mcp.servers.a.command");
        assert_eq!(
            err("[servers.\"a__b\"]\ncommand = \"x\"\n").0,
            "mcp.servers.a__b"
        );
        assert_eq!(
            err("[servers.a]\ncommand = \"x\"\ntimeout = \"0s\"\n").0,
            "mcp.servers.a.timeout"
        );
        let (k, m) = err("[servers.a]\nurl = \"ftp://x\"\n");
        assert_eq!(k, "mcp.servers.a.url");
        assert!(m.contains("not an http"), "{m}");
        assert_eq!(
            err("[servers.a]\nurl = \"https://x\"\ncommand = \"y\"\n").0,
            "mcp.servers.a"
        );
        let web = section(
            "[servers.w]\nurl = \"https://u:p@x/mcp\"\nheaders_env = { Authorization = \"T\" }\n",
        )
        .specs()
        .unwrap();
        assert_eq!(web[0].command_line(), "https://<redacted>@x/mcp");
        assert!(toml::from_str::<McpSection>("[servers.a]\ncomand = \"x\"\n").is_err());
    }
}
