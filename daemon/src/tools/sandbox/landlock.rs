//! What the kernel offers (`Support`, probed once without restricting anything) and the
//! Landlock rules the tool guard applies to itself (`confine`). The only user of the `landlock`
//! crate.

use std::sync::OnceLock;

use super::GuardPolicy;

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

    pub(super) fn abi(self) -> Option<u32> {
        match self {
            Support::Landlock { abi } => Some(abi),
            _ => None,
        }
    }

    /// Why commands run unconfined although a mode asks for confinement.
    pub(super) fn unconfined_because(self) -> Option<&'static str> {
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
    crate::tools::guard::program().is_some()
}

#[cfg(not(unix))]
fn guard_installed() -> bool {
    false
}

/// Asks the kernel for its Landlock ABI without restricting anything: with no flag and no
/// `no_new_privs`, `RestrictSelf::apply` only probes.
#[cfg(target_os = "linux")]
fn kernel_support() -> Support {
    use ::landlock::{LandlockStatus, RestrictSelf};
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

/// Applies `policy` to this process (the tool guard, while it has one thread) and so to
/// everything it starts: writes only beneath `policy.writable`, TCP refused unless
/// `policy.network`, no signals to and no abstract Unix sockets of processes outside. An error
/// (including a kernel that enforces nothing) means the command must not run.
#[cfg(target_os = "linux")]
pub(crate) fn confine(policy: &GuardPolicy) -> Result<(), String> {
    use ::landlock::{
        ABI, Access, AccessFs, AccessNet, PathBeneath, PathFd, Ruleset, RulesetAttr,
        RulesetCreatedAttr, RulesetStatus, Scope,
    };
    // The rights of ABI 7, this code's target: newer kernels are not asked for rights this
    // code has not decided on (ABI 9's restriction of Unix sockets by path would cut commands
    // off from ssh-agent, D-Bus and Docker); older ones enforce what they have of them.
    let abi = ABI::V7;
    let err = |e: ::landlock::RulesetError| e.to_string();
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
