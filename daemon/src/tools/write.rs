//! The `write` tool, and what it shares with `edit`: the unified diff shown in permission
//! prompts, and the atomic write (a temporary file in the target's directory, renamed over the
//! target) that never leaves a half-written file behind.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use similar::TextDiff;

use super::paths::Workspace;
use super::view::not_regular;
use super::{Action, Prepared, ToolContext, ToolOutput};

/// Above this size (either side) no diff is computed: it would be slow and unreadable.
const DIFF_MAX_BYTES: usize = 4 * 1024 * 1024;
/// The line diff is allowed this long before it settles for a less minimal result.
const DIFF_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize)]
pub(crate) struct Args {
    path: String,
    content: String,
}

#[derive(Debug)]
pub(crate) struct Call {
    path: String,
    /// The resolved path relative to the workspace root, for permission rules.
    pub(crate) inside: String,
    content: String,
    diff: String,
}

pub(crate) fn prepare(ctx: &ToolContext, args: Args) -> Result<Prepared, ToolOutput> {
    let ws = Workspace::open(ctx)?;
    let r = ws.resolve(&args.path)?;
    let old = match fs::metadata(&r.real) {
        Ok(m) if m.is_dir() => {
            return Err(ToolOutput::error(format!(
                "{} is a directory; give the path of a file to write.",
                r.shown
            )));
        }
        Ok(m) if !m.is_file() => return Err(not_regular(&r.shown)),
        Ok(m) if m.len() > DIFF_MAX_BYTES as u64 => Some(None),
        Ok(_) => match fs::read(&r.real) {
            Ok(bytes) => Some(Some(String::from_utf8_lossy(&bytes).into_owned())),
            Err(e) => {
                return Err(ToolOutput::error(format!("Cannot read {}: {e}", r.shown)));
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        // A missing parent or a file where a directory should be: run reports it when it tries.
        Err(_) => None,
    };
    let diff = match &old {
        None => unified_diff(&r.shown, None, &args.content),
        Some(Some(old)) => unified_diff(&r.shown, Some(old), &args.content),
        Some(None) => too_big_diff(&r.shown),
    };
    let verb = if old.is_some() { "Write" } else { "Create" };
    Ok(Prepared {
        tool: "write".to_owned(),
        title: format!("{verb} {}", r.shown),
        diff: Some(diff.clone()),
        command: None,
        action: Action::Write(Call {
            path: args.path,
            inside: r.inside.clone(),
            content: args.content,
            diff,
        }),
    })
}

pub(crate) fn run(ctx: &ToolContext, call: Call) -> ToolOutput {
    let ws = match Workspace::open(ctx) {
        Ok(ws) => ws,
        Err(e) => return e,
    };
    // Resolved again: the tree may have changed while the user was asked.
    let r = match ws.resolve(&call.path) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let existed = match fs::metadata(&r.real) {
        Ok(m) if m.is_dir() => {
            return ToolOutput::error(format!("{} is a directory.", r.shown));
        }
        Ok(m) if !m.is_file() => return not_regular(&r.shown),
        Ok(_) => true,
        Err(_) => false,
    };
    if let Some(dir) = r.real.parent()
        && let Err(e) = create_dirs(dir)
    {
        return ToolOutput::error(format!(
            "Cannot create the directories for {}: {e}",
            r.shown
        ));
    }
    if ctx.cancel.is_cancelled() {
        return ToolOutput::cancelled();
    }
    if let Err(e) = atomic_write_beneath(&ws, &r.real, call.content.as_bytes()) {
        return ToolOutput::error(format!("Cannot write {}: {e}", r.shown));
    }
    let n = call.content.len();
    let content = if existed {
        format!("Wrote {n} bytes to {}.", r.shown)
    } else {
        format!("Created {} ({n} bytes).", r.shown)
    };
    ToolOutput::ok(content).with_metadata(json!({"path": r.shown, "diff": call.diff}))
}

/// A unified diff of `old` (None: the file does not exist) to `new`, with `a/`/`b/` headers.
pub(crate) fn unified_diff(shown: &str, old: Option<&str>, new: &str) -> String {
    if old.map_or(0, str::len) > DIFF_MAX_BYTES || new.len() > DIFF_MAX_BYTES {
        return too_big_diff(shown);
    }
    let a = match old {
        Some(_) => format!("a/{shown}"),
        None => "/dev/null".to_owned(),
    };
    let b = format!("b/{shown}");
    TextDiff::configure()
        .timeout(DIFF_TIMEOUT)
        .diff_lines(old.unwrap_or(""), new)
        .unified_diff()
        .context_radius(3)
        .header(&a, &b)
        .to_string()
}

fn too_big_diff(shown: &str) -> String {
    format!(
        "--- a/{shown}\n+++ b/{shown}\n(no diff: the file is larger than {} MiB)\n",
        DIFF_MAX_BYTES / (1024 * 1024)
    )
}

/// The mode of a file `write` creates, when the daemon runs with its own umask (077): what the
/// user's umask gives (`0644` before it, as before). `None`: the process umask is the user's.
fn new_file_mode() -> Option<u32> {
    super::user_umask().map(|u| 0o644 & !u)
}

/// `create_dir_all`, except that the directories it creates get the user's umask (`0777`
/// before it), not the daemon's.
fn create_dirs(dir: &Path) -> io::Result<()> {
    let Some(umask) = super::user_umask() else {
        return fs::create_dir_all(dir);
    };
    let mut missing = Vec::new();
    let mut at = dir;
    while fs::symlink_metadata(at).is_err() {
        missing.push(at.to_path_buf());
        match at.parent() {
            Some(p) => at = p,
            None => break,
        }
    }
    fs::create_dir_all(dir)?;
    #[cfg(unix)]
    for d in missing.iter().rev() {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(d, fs::Permissions::from_mode(0o777 & !umask))?;
    }
    #[cfg(not(unix))]
    let _ = (missing, umask);
    Ok(())
}

/// Replaces `target` with `content` atomically: the bytes go to a new temporary file in the same
/// directory (same filesystem, so the rename is atomic), which takes the old file's permissions
/// and is flushed to disk (`fsync`) before it is renamed over the target; the directory is then
/// flushed so the rename survives a power cut. Readers see the old file or the new one, never a
/// mix; on failure the temporary file is removed. A crash (the daemon killed, the machine losing
/// power) between creating the temporary file and the rename leaves the target untouched and at
/// worst a hidden `.NAME.crushd-PID-N.tmp` beside it.
pub(crate) fn atomic_write(target: &Path, content: &[u8]) -> io::Result<()> {
    atomic_write_with(target, |f| f.write_all(content))
}

/// [`atomic_write`] for a resolved path of the workspace `ws`, immune to a directory swapped
/// for a symlink after the path was resolved: on Linux the target's directory is opened beneath
/// the root (`openat2(RESOLVE_BENEATH)`), and the temporary file is created, and renamed over
/// the target, relative to that directory (`openat` with `O_EXCL|O_NOFOLLOW`, `renameat`).
/// Elsewhere, or without openat2, it is [`atomic_write`].
pub(crate) fn atomic_write_beneath(
    ws: &Workspace,
    target: &Path,
    content: &[u8],
) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
            return Err(io::Error::other("the path has no parent directory"));
        };
        if let Some(dirfd) = ws.open_dir_beneath(dir)? {
            return atomic_write_at(&dirfd, Path::new(name), content);
        }
    }
    let _ = ws;
    atomic_write(target, content)
}

#[cfg(target_os = "linux")]
fn atomic_write_at(dirfd: &rustix::fd::OwnedFd, name: &Path, content: &[u8]) -> io::Result<()> {
    use rustix::fs::{AtFlags, Mode, OFlags};
    let mode = match rustix::fs::statat(dirfd, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if (st.st_mode & 0o170000) == 0o100000 => Some(st.st_mode & 0o7777),
        // Whatever else is there (a symlink swapped in, say) is replaced, never followed.
        Ok(_) => None,
        Err(rustix::io::Errno::NOENT) => None,
        Err(e) => return Err(e.into()),
    };
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let base: String = name.to_string_lossy().chars().take(64).collect();
    let mut created = None;
    for _ in 0..16 {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = PathBuf::from(format!(".{base}.crushd-{}-{seq}.tmp", std::process::id()));
        match rustix::fs::openat(
            dirfd,
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode.unwrap_or(0o644)),
        ) {
            Ok(fd) => {
                created = Some((tmp, File::from(fd)));
                break;
            }
            Err(rustix::io::Errno::EXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let (tmp, mut file) =
        created.ok_or_else(|| io::Error::other("cannot create a temporary file"))?;
    let written = (|| -> io::Result<()> {
        file.write_all(content)?;
        if let Some(m) = mode.or_else(new_file_mode) {
            rustix::fs::fchmod(&file, Mode::from_raw_mode(m))?;
        }
        file.sync_all()?;
        drop(file);
        rustix::fs::renameat(dirfd, &tmp, dirfd, name)?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = rustix::fs::unlinkat(dirfd, &tmp, AtFlags::empty());
        return Err(e);
    }
    // Makes the rename durable; a failure here does not undo the write.
    if let Ok(d) = rustix::fs::openat(
        dirfd,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        let _ = rustix::fs::fsync(&d);
    }
    Ok(())
}

/// [`atomic_write`] with the bytes written by `fill`, so tests can fail or crash half-way.
pub(crate) fn atomic_write_with(
    target: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let dir = target
        .parent()
        .ok_or_else(|| io::Error::other("the path has no parent directory"))?;
    let perms = match fs::metadata(target) {
        Ok(m) => Some(m.permissions()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let (tmp, mut file) = create_temp(dir, target)?;
    let written = (|| {
        fill(&mut file)?;
        #[cfg(unix)]
        let perms = perms.or_else(|| {
            use std::os::unix::fs::PermissionsExt;
            new_file_mode().map(fs::Permissions::from_mode)
        });
        if let Some(p) = perms {
            file.set_permissions(p)?;
        }
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, target)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // Makes the rename itself durable; a failure here does not undo the write.
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A new, uniquely named file next to `target`. `create_new` refuses an existing name, so a
/// symlink planted at the name is never followed.
fn create_temp(dir: &Path, target: &Path) -> io::Result<(PathBuf, File)> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().chars().take(64).collect::<String>())
        .unwrap_or_default();
    let mut last = None;
    for _ in 0..16 {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.crushd-{}-{seq}.tmp", std::process::id()));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("cannot create a temporary file")))
}
