//! Where the daemon's secrets live and what may see them. Owns three things:
//!
//! - **The rule** for what is a secret in an environment: a name containing `KEY`, `TOKEN`,
//!   `SECRET`, `PASSWORD`, `PASSWD`, `CREDENTIAL`, `AUTH` or `PRIVATE`, or a value that is a URL
//!   carrying credentials (`scheme://user:password@host`). Tool processes never get one unless
//!   the user allow-lists its name (`[permissions] allow_env`); provider key variables never.
//! - **The key store**: the provider keys the daemon was started with, held in memory only. The
//!   `crushd` binary takes them out of its environment block at start (see [`handover`]), because
//!   `/proc/<pid>/environ` shows a process's *initial* environment whatever it does afterwards;
//!   [`var`] is how the rest of the daemon reads a key variable.
//! - **Redaction of URL credentials** in any text ([`redact_url_credentials`]).
//!
//! See ARCHITECTURE.md "Secrets" for the whole design and what holds as root.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::sync::OnceLock;

/// Words that mark a variable name as a secret, compared case-insensitively anywhere in the name.
pub(crate) const SECRET_WORDS: [&str; 8] = [
    "KEY",
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "CREDENTIAL",
    "AUTH",
    "PRIVATE",
];

/// What replaces a secret in anything shown.
pub(crate) const REDACTED: &str = "<redacted>";

/// Whether a variable's name says it holds a secret (see [`SECRET_WORDS`]).
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_WORDS.iter().any(|w| upper.contains(w))
}

/// Whether an environment variable is a secret: by its name, or by a value that is a URL with
/// credentials in it. A value that is not UTF-8 is judged by its name only.
pub(crate) fn is_secret(name: &OsStr, value: &OsStr) -> bool {
    name.to_str().is_none_or(is_secret_name) || value.to_str().is_some_and(has_url_credentials)
}

/// Whether `text` contains a URL with a user-info part (`scheme://user[:password]@host`).
pub(crate) fn has_url_credentials(text: &str) -> bool {
    redact_url_credentials(text) != text
}

/// `text` with the user-info of every URL in it (`scheme://user:password@`) replaced by
/// `<redacted>`: `https://bob:hunter2@proxy/v1` becomes `https://<redacted>@proxy/v1`. The user
/// name goes too, because a token is often passed as one (`https://TOKEN@host`).
pub(crate) fn redact_url_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (before, after) = rest.split_at(i + 3);
        out.push_str(before);
        // The authority ends at the first of these; a user-info part ends at its last '@'.
        let end = after
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace() || c == '"')
            .unwrap_or(after.len());
        match after[..end].rfind('@') {
            Some(at) if at > 0 && scheme_before(before) => {
                out.push_str(REDACTED);
                rest = &after[at..];
            }
            _ => rest = after,
        }
    }
    out.push_str(rest);
    out
}

/// Whether `prefix` (ending with `://`) ends with a URL scheme: a letter then letters, digits,
/// `+`, `-` or `.`.
fn scheme_before(prefix: &str) -> bool {
    let Some(head) = prefix.strip_suffix("://") else {
        return false;
    };
    let scheme: String = head
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        .collect();
    scheme
        .chars()
        .last()
        .is_some_and(|c| c.is_ascii_alphabetic())
}

static KEYS: OnceLock<BTreeMap<String, String>> = OnceLock::new();

/// Makes `keys` (variable name → value) the daemon's provider keys. From then on [`var`] reads
/// only them. Called once by the `crushd` binary after it took them out of its environment.
pub fn install(keys: BTreeMap<String, String>) {
    let _ = KEYS.set(keys);
}

/// The value of a provider key variable: from the key store once one is installed (the `crushd`
/// binary), else from the environment (the library in tests, `--check-config`).
pub(crate) fn var(name: &str) -> Option<String> {
    match KEYS.get() {
        Some(keys) => keys.get(name).cloned(),
        None => std::env::var(name).ok(),
    }
}

/// What a tool process's environment is: `vars` without every provider key variable
/// (`key_vars`, whatever they are called) and without every secret ([`is_secret`]) that `allow`
/// does not name. Names in `allow` are compared exactly.
pub(crate) fn tool_environment(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    key_vars: &[String],
    allow: &[String],
) -> Vec<(OsString, OsString)> {
    vars.into_iter()
        .filter(|(name, value)| {
            let named = |list: &[String]| list.iter().any(|n| OsStr::new(n) == name);
            !named(key_vars) && (named(allow) || !is_secret(name, value))
        })
        .collect()
}

/// Taking the keys out of the `crushd` process's environment block: at start the daemon re-runs
/// its own binary (`execve` in place, so the pid, the parent, stdout and stderr stay) with an
/// environment that holds no secret, and hands the provider keys to the new image on its
/// standard input — an anonymous in-memory file (`memfd`) that the new image reads and replaces
/// with `/dev/null` before doing anything else. Linux only (`/proc/self/exe`, `memfd_create`).
#[cfg(target_os = "linux")]
pub mod handover {
    use std::collections::BTreeMap;
    use std::ffi::{OsStr, OsString};
    use std::io::{Read, Seek, Write};
    use std::os::unix::process::CommandExt;

    /// The hidden flag that tells the new image its standard input carries the keys.
    pub const FLAG: &str = "--secrets-on-stdin";

    /// What to do at start, given the environment and what the configuration calls a key.
    pub struct Plan {
        /// The provider keys to keep (in memory only).
        pub keys: BTreeMap<String, String>,
        /// The environment without any secret the user did not allow-list.
        pub clean_env: Vec<(OsString, OsString)>,
        /// Whether the environment block holds something that must go.
        pub must_reexec: bool,
    }

    /// Variables the daemon itself reads from its environment even when they carry credentials:
    /// the HTTP client's proxy settings (`https_proxy=http://user:pw@proxy:3128`). They stay in
    /// the daemon's environment block — closed to tools by non-dumpability alone — and reach a
    /// tool only under the usual rule.
    const DAEMON_READS: [&str; 4] = ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"];

    /// Sorts the environment: provider keys (`key_vars` present with a value) are kept for the
    /// store; they and every other secret not in `allow` leave the environment, except the few
    /// the daemon itself needs there ([`DAEMON_READS`]).
    pub fn plan(vars: Vec<(OsString, OsString)>, key_vars: &[String], allow: &[String]) -> Plan {
        let mut keys = BTreeMap::new();
        for (name, value) in &vars {
            if let (Some(n), Some(v)) = (name.to_str(), value.to_str())
                && key_vars.iter().any(|k| k == n)
            {
                keys.insert(n.to_owned(), v.to_owned());
            }
        }
        let needed = |name: &OsString| {
            name.to_str()
                .is_some_and(|n| DAEMON_READS.iter().any(|d| d.eq_ignore_ascii_case(n)))
        };
        let clean_env: Vec<(OsString, OsString)> = vars
            .iter()
            .filter(|(name, value)| {
                let named = |list: &[String]| list.iter().any(|n| OsStr::new(n) == name);
                !named(key_vars) && (needed(name) || named(allow) || !super::is_secret(name, value))
            })
            .cloned()
            .collect();
        let must_reexec = clean_env.len() != vars.len();
        Plan {
            keys,
            clean_env,
            must_reexec,
        }
    }

    /// Replaces this process with a fresh run of its own binary (`/proc/self/exe`, so the very
    /// same file even if it was replaced on disk): the same `argv` (`argv0`, then [`FLAG`], then
    /// `args`), the plan's clean environment, and the keys on standard input. Returns only on
    /// failure.
    pub fn reexec(plan: &Plan, argv0: &OsString, args: &[OsString]) -> std::io::Error {
        let memfd = match keys_file(&plan.keys) {
            Ok(f) => f,
            Err(e) => return e,
        };
        std::process::Command::new("/proc/self/exe")
            .arg0(argv0)
            .arg(FLAG)
            .args(args)
            .env_clear()
            .envs(plan.clean_env.iter().cloned())
            .stdin(memfd)
            .exec()
    }

    /// The keys as `NAME=VALUE\0` records in an anonymous in-memory file, at offset 0. It is
    /// created close-on-exec; `Command` makes it the new image's stdin, the only way it crosses.
    fn keys_file(keys: &BTreeMap<String, String>) -> std::io::Result<std::fs::File> {
        use rustix::fs::{MemfdFlags, memfd_create};
        let fd = memfd_create("crushd-keys", MemfdFlags::CLOEXEC)?;
        let mut file = std::fs::File::from(fd);
        for (name, value) in keys {
            file.write_all(name.as_bytes())?;
            file.write_all(b"=")?;
            file.write_all(value.as_bytes())?;
            file.write_all(b"\0")?;
        }
        file.rewind()?;
        Ok(file)
    }

    /// In the new image: reads the keys from standard input and puts `/dev/null` there, so the
    /// in-memory file is closed and nothing started later inherits it.
    pub fn receive() -> std::io::Result<BTreeMap<String, String>> {
        // Run as `/proc/self/exe`, the kernel named the process "exe"; `ps` and `pgrep` should
        // still find crushd.
        let _ = rustix::thread::set_name(c"crushd");
        let mut bytes = Vec::new();
        std::io::stdin().lock().read_to_end(&mut bytes)?;
        let null = std::fs::File::open("/dev/null")?;
        rustix::stdio::dup2_stdin(&null)?;
        let mut keys = BTreeMap::new();
        for record in bytes.split(|b| *b == 0).filter(|r| !r.is_empty()) {
            let text = String::from_utf8_lossy(record);
            if let Some((name, value)) = text.split_once('=') {
                keys.insert(name.to_owned(), value.to_owned());
            }
        }
        bytes.fill(0);
        Ok(keys)
    }
}

/// Makes this process non-dumpable (Linux): no core dump, and its `/proc/<pid>/environ`, `mem`,
/// `maps`, `fd` and ptrace are closed to every process without `CAP_SYS_PTRACE`, including other
/// processes of the same user — which is what tool commands are. Elsewhere a no-op.
pub fn make_undumpable() -> std::io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn names_with_a_secret_word_anywhere_are_secrets() {
        for name in [
            "OPENAI_API_KEY",
            "MY_PRIVATE_KEY",
            "my_service_api_key",
            "GITHUB_TOKEN",
            "AWS_SECRET_ACCESS_KEY",
            "DB_PASSWORD",
            "MYSQL_PWD_PASSWD",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "NPM_CONFIG__AUTH",
            "SSH_AUTH_SOCK",
            "KEYBOARD",
            "PRIVATE",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in ["PATH", "HOME", "LANG", "DATABASE_URL", "TERM"] {
            assert!(!is_secret_name(name), "{name}");
        }
    }

    #[test]
    fn url_credentials_are_found_and_redacted() {
        assert!(has_url_credentials("postgres://app:pw@db/app"));
        assert!(has_url_credentials("https://ghp_abc@github.com/x.git"));
        assert!(!has_url_credentials("https://example.com/a@b"));
        assert!(!has_url_credentials("user@example.com"));
        assert!(!has_url_credentials("http://localhost:8000/v1"));
        assert_eq!(
            redact_url_credentials(
                "error sending request for url (http://bob:hunter2@proxy:8/v1/chat): refused"
            ),
            "error sending request for url (http://<redacted>@proxy:8/v1/chat): refused"
        );
        assert_eq!(
            redact_url_credentials("a https://u:p@h/x and ftp://v@w b"),
            "a https://<redacted>@h/x and ftp://<redacted>@w b"
        );
        // A password that holds an '@' is redacted whole.
        assert_eq!(
            redact_url_credentials("http://u:p@ss@host/"),
            "http://<redacted>@host/"
        );
        assert_eq!(redact_url_credentials("no url"), "no url");
    }

    #[test]
    fn a_secret_is_judged_by_name_or_by_a_url_value() {
        let secret = |n: &str, v: &str| is_secret(OsStr::new(n), OsStr::new(v));
        assert!(secret("DATABASE_URL", "postgres://app:pw@db/app"));
        assert!(secret("MY_PRIVATE_KEY", "x"));
        assert!(!secret("DATABASE_URL", "postgres://db/app"));
        assert!(!secret("HOME", "/root"));
    }

    #[test]
    fn tools_get_no_key_variable_and_only_allow_listed_secrets() {
        let vars = [
            ("PATH", "/bin"),
            ("GITHUB_TOKEN", "t"),
            ("SSH_AUTH_SOCK", "/s"),
            ("MY_PROVIDER", "k"),
            ("DATABASE_URL", "postgres://a:b@c/d"),
        ]
        .map(|(n, v)| (OsString::from(n), OsString::from(v)));
        let env = tool_environment(
            vars,
            &["MY_PROVIDER".to_owned()],
            &["SSH_AUTH_SOCK".to_owned(), "MY_PROVIDER".to_owned()],
        );
        let names: Vec<_> = env.iter().map(|(n, _)| n.to_str().unwrap()).collect();
        assert_eq!(names, ["PATH", "SSH_AUTH_SOCK"]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_plan_keeps_provider_keys_and_drops_every_secret() {
        let vars = [
            ("PATH", "/bin"),
            ("OPENAI_API_KEY", "sk-1"),
            ("GITHUB_TOKEN", "t"),
        ]
        .map(|(n, v)| (OsString::from(n), OsString::from(v)))
        .to_vec();
        let plan = handover::plan(vars.clone(), &["OPENAI_API_KEY".to_owned()], &[]);
        assert!(plan.must_reexec);
        assert_eq!(
            plan.keys.get("OPENAI_API_KEY").map(String::as_str),
            Some("sk-1")
        );
        assert_eq!(plan.clean_env.len(), 1);
        let clean = handover::plan(vec![vars[0].clone()], &["OPENAI_API_KEY".to_owned()], &[]);
        assert!(!clean.must_reexec);
        // The daemon's own proxy settings stay, credentials and all; tools still lose them.
        let proxy = (
            OsString::from("https_proxy"),
            OsString::from("http://u:pw@proxy:3128"),
        );
        let kept = handover::plan(vec![proxy.clone()], &[], &[]);
        assert!(!kept.must_reexec);
        assert!(tool_environment([proxy], &[], &[]).is_empty());
    }
}
