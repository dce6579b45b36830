//! The sandbox of `bash` tool commands: which confinement a call gets (the config's `[sandbox]`,
//! or the session's own from `session/setSandbox`), what this system can enforce, the Landlock
//! rules the tool guard applies to itself before it starts the shell, and the reading of a
//! failed command's output for what the sandbox refused.
//!
//! The daemon never confines itself: the tool guard (`guard.rs`, a fresh `crushd` process per
//! call) takes the policy on its command line (`--sandbox-write PATH`…, `--sandbox-no-network`),
//! restricts itself with `landlock_restrict_self` while it has one thread, and then starts
//! `bash`, which inherits the domain with everything it starts. See ARCHITECTURE.md "The sandbox
//! of tool commands" for the decision and its limits.
//!
//! - `landlock.rs` — what the kernel offers and the rules the guard applies (the only user of
//!   the `landlock` crate);
//! - `refusals.rs` — what a failed confined command's output says the sandbox refused.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crush_protocol::{SandboxMode, SandboxStatus};

use crate::sync::lock;

/// The guard's flag for one path the command may write beneath (repeated).
pub(crate) const WRITE_FLAG: &str = "--sandbox-write";
/// The guard's flag that confines the command (with no `--sandbox-write`, it writes nowhere).
pub(crate) const CONFINE_FLAG: &str = "--sandbox";
/// The guard's flag that refuses TCP connect and bind.
pub(crate) const NO_NETWORK_FLAG: &str = "--sandbox-no-network";

/// The devices every confined command may still write (output thrown away, terminals), so
/// `> /dev/null` works in every mode.
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/pts",
];

/// What one `bash` call is confined to; `None` of it means not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Policy {
    pub(crate) mode: SandboxMode,
    /// Every path the command may write beneath (canonical where it exists).
    pub(crate) writable: Vec<PathBuf>,
    /// Whether TCP connect and bind are allowed.
    pub(crate) network: bool,
}

impl Policy {
    /// The tool guard's arguments that apply this policy.
    pub(crate) fn guard_args(&self) -> Vec<OsString> {
        let mut args = vec![OsString::from(CONFINE_FLAG)];
        for p in &self.writable {
            args.push(WRITE_FLAG.into());
            args.push(p.clone().into_os_string());
        }
        if !self.network {
            args.push(NO_NETWORK_FLAG.into());
        }
        args
    }

    /// Whether `path` (absolute, resolved) is beneath a writable path.
    pub(crate) fn may_write(&self, path: &Path) -> bool {
        self.writable.iter().any(|w| path.starts_with(w))
    }
}

/// What the guard was asked to apply: the writable paths and whether TCP is allowed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct GuardPolicy {
    pub(crate) writable: Vec<PathBuf>,
    pub(crate) network: bool,
}

/// Splits the guard's leading sandbox flags off its arguments: `Ok((None, rest))` when there
/// are none.
pub(crate) fn parse_guard_args(
    args: &[OsString],
) -> Result<(Option<GuardPolicy>, &[OsString]), String> {
    if args.first().is_none_or(|a| a != CONFINE_FLAG) {
        return Ok((None, args));
    }
    let mut policy = GuardPolicy {
        writable: Vec::new(),
        network: true,
    };
    let mut rest = &args[1..];
    loop {
        match rest {
            [flag, path, tail @ ..] if flag == WRITE_FLAG => {
                policy.writable.push(PathBuf::from(path));
                rest = tail;
            }
            [flag, tail @ ..] if flag == NO_NETWORK_FLAG => {
                policy.network = false;
                rest = tail;
            }
            [flag, ..] if flag == WRITE_FLAG => {
                return Err(format!("{WRITE_FLAG} needs a path"));
            }
            _ => return Ok((Some(policy), rest)),
        }
    }
}

mod landlock;
mod refusals;

pub(crate) use self::landlock::{Support, confine};
pub(crate) use self::refusals::{refusal_note, refusals};

/// The first Landlock ABI that can restrict TCP.
const NETWORK_ABI: u32 = 4;

/// The config's sandbox and each session's own choice (`session/setSandbox`): saved in the
/// store, held here for matching (read from the store once, see `Runtime::sandboxes`).
#[derive(Debug, Default)]
pub(crate) struct Sandboxes {
    settings: crate::config::SandboxSettings,
    sessions: Mutex<HashMap<String, SessionChoice>>,
    /// Set once the saved choices were read into `sessions`.
    pub(crate) loaded: tokio::sync::OnceCell<()>,
}

/// What a session chose; `None` fields follow the config.
#[derive(Debug, Clone, Copy, Default)]
struct SessionChoice {
    mode: Option<SandboxMode>,
    network: Option<bool>,
}

impl Sandboxes {
    pub(crate) fn new(settings: crate::config::SandboxSettings) -> Self {
        Self {
            settings,
            ..Self::default()
        }
    }

    /// Takes the choices saved in the store (a mode name this build does not know is left to
    /// the config's).
    pub(crate) fn restore(&self, saved: Vec<crate::store::SessionSandboxRow>) {
        let mut sessions = lock(&self.sessions);
        for row in saved {
            let choice = SessionChoice {
                mode: row.mode.and_then(|m| m.parse().ok()),
                network: row.network,
            };
            sessions.entry(row.id).or_insert(choice);
        }
    }

    /// Sets (or with `None`s, clears) a session's own mode and network choice.
    pub(crate) fn set_session(
        &self,
        session_id: &str,
        mode: Option<SandboxMode>,
        network: Option<bool>,
    ) {
        let mut sessions = lock(&self.sessions);
        if mode.is_none() && network.is_none() {
            sessions.remove(session_id);
        } else {
            sessions.insert(session_id.to_owned(), SessionChoice { mode, network });
        }
    }

    pub(crate) fn forget_session(&self, session_id: &str) {
        lock(&self.sessions).remove(session_id);
    }

    /// The mode and network choice in force for a session (or the config's).
    fn chosen(&self, session_id: Option<&str>) -> (SandboxMode, bool) {
        let own = session_id
            .and_then(|id| lock(&self.sessions).get(id).copied())
            .unwrap_or_default();
        (
            own.mode.unwrap_or(self.settings.mode),
            own.network.unwrap_or(self.settings.network),
        )
    }

    /// The policy of a session's `bash` calls in the workspace `root` (canonical), or `None`
    /// when they run unconfined (mode `off`, or nothing to confine them with).
    pub(crate) fn policy(&self, session_id: Option<&str>, root: &Path) -> Option<Policy> {
        let (mode, network) = self.chosen(session_id);
        let support = Support::current();
        support.abi()?;
        if mode == SandboxMode::Off {
            return None;
        }
        Some(Policy {
            mode,
            writable: writable_paths(mode, root, &self.settings.writable),
            network,
        })
    }

    /// What `daemon/status`, `model/list` (no session) and `session/setSandbox` report.
    pub(crate) fn status(&self, session_id: Option<&str>) -> SandboxStatus {
        let (mode, network) = self.chosen(session_id);
        status_of(mode, network, &self.settings.writable, Support::current())
    }
}

/// The status of a mode on a system with `support`; `writable` lists the config's additions
/// (the workspace is named as such, since it differs per session).
fn status_of(
    mode: SandboxMode,
    network: bool,
    extra: &[PathBuf],
    support: Support,
) -> SandboxStatus {
    let abi = support.abi();
    let mut warning = None;
    let enforced = mode != SandboxMode::Off && abi.is_some();
    if mode != SandboxMode::Off
        && let Some(why) = support.unconfined_because()
    {
        warning = Some(why.to_owned());
    }
    if enforced && !network && abi.is_some_and(|a| a < NETWORK_ABI) {
        warning = Some(format!(
            "this kernel's Landlock (ABI {}) cannot restrict the network (ABI {NETWORK_ABI} can): \
             bash commands may still use it",
            abi.unwrap_or_default()
        ));
    }
    let writable = if enforced {
        writable_shown(mode, extra)
    } else {
        Vec::new()
    };
    SandboxStatus {
        mode,
        network: network || !enforced,
        enforced,
        landlock_abi: abi,
        writable,
        warning,
    }
}

/// The writable set as a person reads it: `<workspace>` stands for each session's workspace.
fn writable_shown(mode: SandboxMode, extra: &[PathBuf]) -> Vec<String> {
    match mode {
        SandboxMode::Off => Vec::new(),
        SandboxMode::ReadOnly => Vec::new(),
        SandboxMode::WorkspaceWrite => {
            let mut v = vec!["<workspace>".to_owned(), temp_dir().display().to_string()];
            v.extend(extra.iter().map(|p| p.display().to_string()));
            v
        }
    }
}

/// The system temp directory, resolved (`/tmp` is a symlink on some systems).
fn temp_dir() -> PathBuf {
    let t = std::env::temp_dir();
    std::fs::canonicalize(&t).unwrap_or(t)
}

/// Every path a command under `mode` may write beneath, resolved: the devices always; with
/// `workspace-write` also the workspace, the temp directory and the config's paths.
pub(crate) fn writable_paths(mode: SandboxMode, root: &Path, extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = DEVICES.iter().map(PathBuf::from).collect();
    if mode == SandboxMode::WorkspaceWrite {
        out.push(root.to_path_buf());
        out.push(temp_dir());
        out.extend(extra.iter().cloned());
    }
    // Resolved, so that reading a refusal compares like with like (Landlock itself resolves
    // each path to its inode when the rule is added).
    let mut out: Vec<PathBuf> = out
        .into_iter()
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
        .collect();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn guard_arguments_round_trip() {
        let p = Policy {
            mode: SandboxMode::ReadOnly,
            writable: vec![PathBuf::from("/dev/null"), PathBuf::from("/w s")],
            network: false,
        };
        let mut args = p.guard_args();
        args.extend(["-c".into(), "true".into()]);
        let (got, rest) = parse_guard_args(&args).unwrap();
        assert_eq!(
            got,
            Some(GuardPolicy {
                writable: p.writable.clone(),
                network: false
            })
        );
        assert_eq!(rest, &[OsString::from("-c"), OsString::from("true")]);
        let plain = [OsString::from("-c"), OsString::from("x")];
        assert_eq!(parse_guard_args(&plain).unwrap().0, None);
        let bad = [OsString::from(CONFINE_FLAG), OsString::from(WRITE_FLAG)];
        assert!(parse_guard_args(&bad).is_err());
    }

    /// A refusal is claimed only for a path outside the writable set that this process could
    /// write: the same error on a path the sandbox allows is the file's own permissions.

    #[test]
    fn a_session_choice_overrides_the_config_until_cleared() {
        let s = Sandboxes::new(crate::config::SandboxSettings::default());
        s.set_session("a", Some(SandboxMode::ReadOnly), None);
        assert_eq!(s.chosen(Some("a")), (SandboxMode::ReadOnly, true));
        assert_eq!(s.chosen(Some("b")), (SandboxMode::WorkspaceWrite, true));
        assert_eq!(s.chosen(None), (SandboxMode::WorkspaceWrite, true));
        s.set_session("a", None, Some(false));
        assert_eq!(s.chosen(Some("a")), (SandboxMode::WorkspaceWrite, false));
        s.set_session("a", None, None);
        assert_eq!(s.chosen(Some("a")), (SandboxMode::WorkspaceWrite, true));
        s.set_session("a", Some(SandboxMode::Off), None);
        s.forget_session("a");
        assert_eq!(s.chosen(Some("a")), (SandboxMode::WorkspaceWrite, true));
    }

    #[test]
    fn status_never_pretends() {
        let s = status_of(SandboxMode::WorkspaceWrite, true, &[], Support::NoLandlock);
        assert!(!s.enforced);
        assert!(s.warning.unwrap().contains("Landlock"));
        let s = status_of(
            SandboxMode::WorkspaceWrite,
            false,
            &[],
            Support::Landlock { abi: 3 },
        );
        assert!(s.enforced);
        assert!(s.warning.unwrap().contains("network"));
        let s = status_of(SandboxMode::Off, true, &[], Support::Landlock { abi: 7 });
        assert!(!s.enforced && s.warning.is_none());
        let s = status_of(
            SandboxMode::ReadOnly,
            true,
            &[],
            Support::Landlock { abi: 7 },
        );
        assert!(s.enforced && s.warning.is_none() && s.writable.is_empty());
    }
}
