//! The sandbox of `bash` tool commands: which confinement a call gets (the config's `[sandbox]`,
//! or the session's own from `session/setSandbox`), what this system can enforce, the Landlock
//! rules the tool guard applies to itself before it starts the shell, and the reading of a
//! failed command's output for what the sandbox refused. The only user of the `landlock` crate.
//!
//! The daemon never confines itself: the tool guard (`guard.rs`, a fresh `crushd` process per
//! call) takes the policy on its command line (`--sandbox-write PATH`…, `--sandbox-no-network`),
//! restricts itself with `landlock_restrict_self` while it has one thread, and then starts
//! `bash`, which inherits the domain with everything it starts. See ARCHITECTURE.md "The sandbox
//! of tool commands" for the decision and its limits.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

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
    fn may_write(&self, path: &Path) -> bool {
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

/// What this process can confine commands with, found once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Support {
    /// The kernel's Landlock ABI version (≥ 1) and the tool guard to apply it are there.
    Landlock { abi: u32 },
    /// The kernel has no Landlock (not built in, or not enabled at boot).
    NoLandlock,
    /// Not Linux.
    #[cfg_attr(target_os = "linux", allow(dead_code))]
    Unsupported,
    /// No tool guard (the library without the `crushd` binary, as in unit tests): commands start
    /// directly, unconfined.
    NoGuard,
}

impl Support {
    /// What the platform offers. The guard is looked for at each call (it is installed once at
    /// start); the kernel is asked once.
    pub(crate) fn current() -> Self {
        static KERNEL: OnceLock<Support> = OnceLock::new();
        let kernel = *KERNEL.get_or_init(kernel_support);
        if matches!(kernel, Support::Landlock { .. }) && !guard_installed() {
            return Support::NoGuard;
        }
        kernel
    }

    fn abi(self) -> Option<u32> {
        match self {
            Support::Landlock { abi } => Some(abi),
            _ => None,
        }
    }

    /// Why commands run unconfined although a mode asks for confinement.
    fn unconfined_because(self) -> Option<&'static str> {
        match self {
            Support::Landlock { .. } => None,
            Support::NoLandlock => Some(
                "this kernel does not offer Landlock (not built in or not enabled at boot), so \
                 bash commands run unconfined",
            ),
            Support::Unsupported => {
                Some("the sandbox needs Linux (Landlock); bash commands run unconfined")
            }
            Support::NoGuard => Some(
                "the tool guard is not installed (crushd used as a library), so bash commands \
                 run unconfined",
            ),
        }
    }
}

#[cfg(unix)]
fn guard_installed() -> bool {
    super::guard::program().is_some()
}

#[cfg(not(unix))]
fn guard_installed() -> bool {
    false
}

/// Asks the kernel for its Landlock ABI without restricting anything: with no flag and no
/// `no_new_privs`, `RestrictSelf::apply` only probes.
#[cfg(target_os = "linux")]
fn kernel_support() -> Support {
    use landlock::{LandlockStatus, RestrictSelf};
    match RestrictSelf::default().no_new_privs(false).apply() {
        Ok(s) => match s.landlock {
            LandlockStatus::Available {
                effective_abi,
                kernel_abi,
            } => Support::Landlock {
                abi: kernel_abi
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or(effective_abi as u32),
            },
            LandlockStatus::NotEnabled | LandlockStatus::NotImplemented => Support::NoLandlock,
        },
        Err(_) => Support::NoLandlock,
    }
}

#[cfg(not(target_os = "linux"))]
fn kernel_support() -> Support {
    Support::Unsupported
}

/// The Landlock ABI whose rights the guard asks for. Newer kernels get these (their newer
/// rights would change what commands may do, e.g. ABI 9's connecting to Unix sockets by path,
/// and need their own decision); older kernels get what they have of them.
const NETWORK_ABI: u32 = 4;

/// The config's sandbox and each session's own choice (`session/setSandbox`), in memory.
#[derive(Debug, Default)]
pub(crate) struct Sandboxes {
    settings: crate::config::SandboxSettings,
    sessions: Mutex<HashMap<String, SessionChoice>>,
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
            sessions: Mutex::default(),
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
fn writable_paths(mode: SandboxMode, root: &Path, extra: &[PathBuf]) -> Vec<PathBuf> {
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

/// Applies `policy` to this process (the tool guard, while it has one thread) and so to
/// everything it starts: writes only beneath `policy.writable`, TCP refused unless
/// `policy.network`, no signals to and no abstract Unix sockets of processes outside. An error
/// (including a kernel that enforces nothing) means the command must not run.
#[cfg(target_os = "linux")]
pub(crate) fn confine(policy: &GuardPolicy) -> Result<(), String> {
    use landlock::{
        ABI, Access, AccessFs, AccessNet, PathBeneath, PathFd, Ruleset, RulesetAttr,
        RulesetCreatedAttr, RulesetStatus, Scope,
    };
    let abi = ABI::V7;
    let err = |e: landlock::RulesetError| e.to_string();
    let write = AccessFs::from_write(abi);
    let mut ruleset = Ruleset::default().handle_access(write).map_err(err)?;
    if !policy.network {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(abi))
            .map_err(err)?;
    }
    let mut created = ruleset
        .scope(Scope::from_all(abi))
        .map_err(err)?
        .create()
        .map_err(err)?;
    for path in &policy.writable {
        // A path that does not exist (no /dev/tty in a container) has nothing to allow.
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        let Ok(fd) = PathFd::new(path) else { continue };
        let access = if meta.is_dir() {
            write
        } else {
            write & AccessFs::from_file(abi)
        };
        created = created
            .add_rule(PathBeneath::new(fd, access))
            .map_err(err)?;
    }
    let status = created.restrict_self().map_err(err)?;
    match status.ruleset {
        RulesetStatus::NotEnforced => Err("this kernel enforces no Landlock rule".to_owned()),
        RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced => Ok(()),
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn confine(_policy: &GuardPolicy) -> Result<(), String> {
    Err("the sandbox needs Linux (Landlock)".to_owned())
}

/// The texts of EACCES and EPERM as programs print them (`strerror`).
const DENIED: &[&str] = &["Permission denied", "Operation not permitted"];

/// What the sandbox probably refused a command that failed, read from its output: each line
/// that reports EACCES or EPERM names a path outside the writable set that this daemon could
/// write itself (so the sandbox, not the file's permissions, refused it), or — with the network
/// off — a connect or bind. Empty when nothing points at the sandbox. Landlock does not tell a
/// process what it refused, so this is a reading of the output with known limits
/// (ARCHITECTURE.md): a command that hides its errors, or prints them without a path, is not
/// recognised; a path printed relative to a directory the command changed to is resolved
/// against the workspace.
pub(crate) fn refusals(policy: &Policy, root: &Path, output: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut push = |what: String| {
        if !found.contains(&what) {
            found.push(what);
        }
    };
    for line in output.lines() {
        let Some(at) = DENIED.iter().filter_map(|d| line.find(d)).min() else {
            continue;
        };
        let lower = line.to_ascii_lowercase();
        let network_line = !policy.network
            && ["connect", "bind", "socket", "network"]
                .iter()
                .any(|w| lower.contains(w));
        let mut named_path = false;
        for candidate in path_candidates(line, at) {
            let path = if candidate.starts_with('/') {
                PathBuf::from(&candidate)
            } else if let Some(home) = candidate.strip_prefix("~/") {
                match std::env::var_os("HOME") {
                    Some(h) => PathBuf::from(h).join(home),
                    None => continue,
                }
            } else {
                root.join(&candidate)
            };
            // A bare word that names nothing (`connect` in `bash: connect: …`) on a line about
            // the network is not a file.
            let bare = !candidate.contains('/') && std::fs::symlink_metadata(&path).is_err();
            if bare && network_line {
                continue;
            }
            let Some(resolved) = resolve(&path) else {
                continue;
            };
            named_path |= !bare;
            if !policy.may_write(&resolved) && writable_unconfined(&resolved) {
                push(format!("write {}", path.display()));
            }
        }
        if network_line && !named_path {
            push("network access (TCP is off for this session)".to_owned());
        }
    }
    found
}

/// The paths a denial line may name: quoted text anywhere on it, and the field just before the
/// error text (`bash: /etc/x: Permission denied`, `touch: cannot touch 'x': …`).
fn path_candidates(line: &str, denied_at: usize) -> Vec<String> {
    let mut out = Vec::new();
    for quote in ['\'', '"', '`'] {
        // Split on a quote, the odd pieces are quoted (when a closing quote follows).
        let parts: Vec<&str> = line.split(quote).collect();
        for inside in parts
            .iter()
            .skip(1)
            .step_by(2)
            .take(parts.len().saturating_sub(1) / 2)
        {
            if looks_like_path(inside) {
                out.push((*inside).to_owned());
            }
        }
    }
    // ‘…’ (GNU coreutils in a UTF-8 locale).
    for piece in line.split('‘').skip(1) {
        if let Some((inside, _)) = piece.split_once('’')
            && looks_like_path(inside)
        {
            out.push(inside.to_owned());
        }
    }
    let before = line[..denied_at]
        .trim_end()
        .trim_end_matches(':')
        .trim_end();
    if let Some(last) = before.rsplit(": ").next() {
        let last = last
            .trim()
            .trim_matches(|c| c == '\'' || c == '"' || c == '`');
        if looks_like_path(last) && !last.contains(' ') {
            out.push(last.to_owned());
        }
    }
    out.dedup();
    out
}

fn looks_like_path(s: &str) -> bool {
    !s.is_empty()
        && s.len() < 4096
        && !s.contains('\n')
        && (s.starts_with('/') || s.starts_with("~/") || s.starts_with("./") || !s.contains(' '))
        && !s.starts_with("[Errno")
}

/// The path with its symlinks resolved, or its nearest existing parent's with the rest
/// appended (a file the command failed to create); `None` if not even the parent exists.
fn resolve(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = std::fs::canonicalize(path) {
        return Some(p);
    }
    let mut rest = Vec::new();
    let mut at = path;
    loop {
        rest.push(at.file_name()?.to_owned());
        at = at.parent()?;
        if let Ok(p) = std::fs::canonicalize(at) {
            let mut p = p;
            for part in rest.iter().rev() {
                p.push(part);
            }
            return Some(p);
        }
    }
}

/// Whether this (unconfined) process may write `path`, or create it in its parent: if not, the
/// file's own permissions refused the command, not the sandbox.
fn writable_unconfined(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use rustix::fs::{Access, access};
        let target = if path.exists() {
            path
        } else {
            match path.parent() {
                Some(p) => p,
                None => return false,
            }
        };
        access(target, Access::WRITE_OK).is_ok()
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

/// The lines a refused command's result gets, for the model and the user.
pub(crate) fn refusal_note(policy: &Policy, refused: &[String]) -> String {
    let mut s = format!(
        "\n\nThe sandbox ({}) refused this command: {}.",
        policy.mode,
        refused.join("; ")
    );
    match policy.mode {
        SandboxMode::WorkspaceWrite => s.push_str(
            " Commands may write only inside the workspace and the temp directory (and the paths \
             the config adds)",
        ),
        SandboxMode::ReadOnly => s.push_str(" Commands may not write files in this session"),
        SandboxMode::Off => {}
    }
    if !policy.network {
        s.push_str(", and may not use the network");
    }
    s.push('.');
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn policy(root: &Path, network: bool) -> Policy {
        Policy {
            mode: SandboxMode::WorkspaceWrite,
            writable: writable_paths(SandboxMode::WorkspaceWrite, root, &[]),
            network,
        }
    }

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
    fn refusals_name_paths_outside_the_writable_set_only() {
        let ws = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir_in(std::env::current_dir().unwrap()).unwrap();
        let root = std::fs::canonicalize(ws.path()).unwrap();
        let p = policy(&root, true);
        let target = outside.path().join("f");
        let out = format!(
            "touch: cannot touch '{}': Permission denied",
            target.display()
        );
        assert_eq!(
            refusals(&p, &root, &out),
            vec![format!("write {}", target.display())]
        );
        let inside = format!("bash: {}/x: Permission denied", root.display());
        assert!(refusals(&p, &root, &inside).is_empty());
        // A link in the workspace to the outside is judged by where it leads.
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(outside.path(), root.join("link")).unwrap();
            let out = "bash: link/f: Permission denied";
            assert_eq!(
                refusals(&p, &root, out),
                vec![format!("write {}", root.join("link/f").display())]
            );
        }
        assert!(refusals(&p, &root, "all good").is_empty());
    }

    #[test]
    fn a_denied_connect_is_a_refusal_only_with_the_network_off() {
        let ws = tempfile::tempdir().unwrap();
        let line = "bash: connect: Permission denied";
        assert_eq!(
            refusals(&policy(ws.path(), false), ws.path(), line),
            vec!["network access (TCP is off for this session)".to_owned()]
        );
        assert!(refusals(&policy(ws.path(), true), ws.path(), line).is_empty());
    }

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
