//! Path confinement, the tools' security boundary. Every path argument is resolved against the
//! workspace root: `.` and `..` are folded lexically and a path that leaves the root is refused;
//! then the deepest part of the path that exists is canonicalized and must still be inside the
//! canonical root, so a symlink (to a file, a directory, or in the parent chain of a file not yet
//! created) cannot lead outside. Tools then do their I/O on the canonical form, never on the
//! model's spelling.
//!
//! A symlink swapped in between the check and the I/O (by another process) is caught for reads:
//! the reading tools open through [`Workspace::open_read`], which on Linux resolves the path
//! again inside the kernel with `openat2(RESOLVE_BENEATH)` relative to the root, atomically with
//! the open, and elsewhere refuses a final symlink (`O_NOFOLLOW`) and re-checks the path after
//! the open. Writes re-resolve right before acting to keep that window small.

use std::fs::File;
use std::path::{Component, Path, PathBuf};

use super::{ToolContext, ToolOutput};

/// The workspace root, canonical and as given.
#[derive(Debug, Clone)]
pub(crate) struct Workspace {
    /// Canonical: symlinks resolved. Every real path a tool touches starts with it.
    pub(crate) root: PathBuf,
    /// The root as configured, normalized lexically; an absolute path the model copied from a
    /// message may be spelled with it rather than the canonical form.
    given: PathBuf,
}

/// A path argument resolved inside the workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    /// Where the I/O happens: the canonical deepest existing ancestor joined with the rest.
    pub(crate) real: PathBuf,
    /// The model's path relative to the root, normalized, for messages ("." for the root).
    pub(crate) shown: String,
    /// `real` relative to the root, `/`-separated ("." for the root): what permission rules'
    /// path globs match, so a symlink inside the workspace cannot dress one path as another.
    pub(crate) inside: String,
}

impl Workspace {
    pub(crate) fn open(ctx: &ToolContext) -> Result<Self, ToolOutput> {
        let root = std::fs::canonicalize(&ctx.root).map_err(|e| {
            ToolOutput::error(format!(
                "The workspace root {} is not accessible: {e}",
                ctx.root.display()
            ))
        })?;
        let given = normalize_absolute(&ctx.root).unwrap_or_else(|| root.clone());
        Ok(Self { root, given })
    }

    /// Resolves a path argument, refusing anything that leads outside the root.
    pub(crate) fn resolve(&self, input: &str) -> Result<Resolved, ToolOutput> {
        if input.contains('\0') {
            return Err(ToolOutput::error("The path contains a NUL byte."));
        }
        if input.trim().is_empty() {
            return Err(ToolOutput::error("The path is empty."));
        }
        let outside = || {
            ToolOutput::error(format!(
                "{input} is outside the workspace ({}); only paths inside it can be used.",
                self.root.display()
            ))
        };
        let path = Path::new(input);
        let rel: Vec<String> = if path.is_absolute() {
            let abs = normalize_absolute(path).ok_or_else(outside)?;
            let rest = abs
                .strip_prefix(&self.root)
                .or_else(|_| abs.strip_prefix(&self.given))
                .map_err(|_| outside())?;
            normal_components(rest).ok_or_else(outside)?
        } else {
            normal_components(path).ok_or_else(outside)?
        };
        let shown = if rel.is_empty() {
            ".".to_owned()
        } else {
            rel.join("/")
        };

        // Canonicalize the deepest part that exists; the rest does not exist yet, so it holds
        // no symlinks to follow.
        for k in (0..=rel.len()).rev() {
            let candidate = rel[..k].iter().fold(self.root.clone(), |p, c| p.join(c));
            if k > 0 && std::fs::symlink_metadata(&candidate).is_err() {
                continue;
            }
            let canonical = std::fs::canonicalize(&candidate).map_err(|e| {
                ToolOutput::error(format!(
                    "{shown} cannot be resolved (a broken symlink?): {e}"
                ))
            })?;
            if !canonical.starts_with(&self.root) {
                return Err(ToolOutput::error(format!(
                    "{shown} resolves through a symlink to a place outside the workspace ({}); only paths inside it can be used.",
                    self.root.display()
                )));
            }
            let real = rel[k..].iter().fold(canonical, |p, c| p.join(c));
            let inside = real
                .strip_prefix(&self.root)
                .ok()
                .map(|p| {
                    p.components()
                        .map(|c| c.as_os_str().to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/")
                })
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| ".".to_owned());
            return Ok(Resolved {
                real,
                shown,
                inside,
            });
        }
        // k == 0 is the root itself, which canonicalize above always answers.
        Err(outside())
    }

    /// `real` relative to the root (`.` for the root itself); `PermissionDenied` outside it.
    fn relative<'a>(&self, real: &'a Path) -> std::io::Result<&'a Path> {
        let rel = real.strip_prefix(&self.root).map_err(|_| refused())?;
        Ok(if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        })
    }

    /// Opens `real` (a resolved path) with `flags` through `openat2(RESOLVE_BENEATH)` relative
    /// to the root, so the kernel resolves it again as it opens and refuses any route out
    /// (`PermissionDenied`). `None` where openat2 is unavailable (kernels before 5.6, some
    /// sandboxes): callers fall back to path-based calls.
    #[cfg(target_os = "linux")]
    fn open_beneath(
        &self,
        real: &Path,
        flags: rustix::fs::OFlags,
    ) -> std::io::Result<Option<rustix::fd::OwnedFd>> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let rel = self.relative(real)?;
        let root = rustix::fs::open(
            &self.root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        match rustix::fs::openat2(
            &root,
            rel,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => Ok(Some(fd)),
            // The kernel's answer to a path that resolves outside the root.
            Err(rustix::io::Errno::XDEV) => Err(refused()),
            Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the directory `real_dir` (a resolved path) beneath the root, for `*at` calls that
    /// must not leave it: a directory swapped for a symlink since the path was resolved is
    /// refused (`PermissionDenied`). `None` where openat2 is unavailable.
    #[cfg(target_os = "linux")]
    pub(crate) fn open_dir_beneath(
        &self,
        real_dir: &Path,
    ) -> std::io::Result<Option<rustix::fd::OwnedFd>> {
        use rustix::fs::OFlags;
        self.open_beneath(real_dir, OFlags::PATH | OFlags::DIRECTORY)
    }

    /// Opens a resolved (or walked) path for reading so that nothing swapped in since it was
    /// resolved can lead outside the root: a path outside, or one that now leads through a
    /// symlink to a place outside, fails with `PermissionDenied`.
    pub(crate) fn open_read(&self, real: &Path) -> std::io::Result<File> {
        self.relative(real)?;
        #[cfg(target_os = "linux")]
        {
            use rustix::fs::OFlags;
            if let Some(fd) = self.open_beneath(real, OFlags::RDONLY | OFlags::NOCTTY)? {
                return Ok(File::from(fd));
            }
        }
        self.open_read_fallback(real).map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                refused()
            } else {
                e
            }
        })
    }

    /// Without openat2: never follow a final symlink, and check after the open that the path
    /// still resolves inside the root to the very file that was opened.
    fn open_read_fallback(&self, real: &Path) -> std::io::Result<File> {
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
            opts.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
            let file = opts.open(real)?;
            let now = std::fs::canonicalize(real)?;
            let (a, b) = (file.metadata()?, std::fs::metadata(&now)?);
            if !now.starts_with(&self.root) || a.dev() != b.dev() || a.ino() != b.ino() {
                return Err(std::io::ErrorKind::PermissionDenied.into());
            }
            Ok(file)
        }
        #[cfg(not(unix))]
        {
            let file = opts.open(real)?;
            if !std::fs::canonicalize(real)?.starts_with(&self.root) {
                return Err(std::io::ErrorKind::PermissionDenied.into());
            }
            Ok(file)
        }
    }

    /// A resolved or walked path for output: relative to the root, '/'-separated.
    pub(crate) fn rel(&self, real: &Path) -> String {
        match real.strip_prefix(&self.root) {
            Ok(r) => display(r),
            Err(_) => real.display().to_string(),
        }
    }
}

/// A relative path for people and models: '/'-separated, "." when empty.
pub(crate) fn display(rel: &Path) -> String {
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    }
}

/// Folds `.` and `..` of a relative path; None if it climbs above its start or is not relative.
fn normal_components(p: &Path) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop()?;
            }
            Component::Normal(n) => out.push(n.to_string_lossy().into_owned()),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Folds `.` and `..` of an absolute path (`..` at the top stays at the top, as the kernel does).
fn normalize_absolute(p: &Path) -> Option<PathBuf> {
    if !p.is_absolute() {
        return None;
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => out.push(c.as_os_str()),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    Some(out)
}

/// The error every route out of the workspace gets.
fn refused() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        "the path leads outside the workspace",
    )
}
