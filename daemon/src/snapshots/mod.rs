//! Snapshots of a workspace's files, for `session/diff` (and undo): a shadow Git object store
//! per workspace in the daemon's data directory (`snapshots/<workspace id>.git`), whose work tree
//! is the workspace. The user's repository — its `.git`, index, stash, HEAD — is never read or
//! written; a workspace that is not a Git repository works the same.
//!
//! A snapshot is `git add -A` into the shadow's own index and `git write-tree`: the state of every
//! file Git would track (`.gitignore` respected, and the user's `.git/info/exclude`), whoever
//! changed it — `write`, `edit` or a `bash` command. Files over the size cap are skipped and
//! reported; a snapshot whose new content would pass the total cap is not taken. Each session's
//! snapshots are kept reachable by a commit chain under `refs/sessions/<session id>`, which is
//! deleted with the session so that `git gc` can drop what only it used.
//!
//! **Decision:** the `git` program rather than a Git library (`gix`): it is already on every
//! machine a coding agent works on, its `add`/`write-tree`/`diff` are the reference for ignore
//! rules, renames and binary files, and a library would add minutes to a build of this 2-core
//! project for the same result. Snapshots of one workspace are serialized (one shadow index).

mod git;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use git::GitError;
use git::Shadow;

use crate::sync::lock;

/// What a snapshot may hold.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotLimits {
    /// A file larger than this is not recorded (reported as skipped).
    pub max_file_bytes: u64,
    /// A snapshot whose new or changed files come to more than this is not taken.
    pub max_bytes: u64,
}

/// One snapshot: the tree of the workspace's files and what was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The Git tree id in the workspace's shadow store.
    pub tree: String,
    /// Paths (relative to the workspace) too large to record.
    pub skipped: Vec<String>,
}

/// Why no snapshot was taken.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(
        "the changed files come to {bytes} bytes, over the snapshot limit of {limit} bytes; no \
         snapshot was taken"
    )]
    TooLarge { bytes: u64, limit: u64 },
}

/// A file's change between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    /// `A`dded, `M`odified, `D`eleted, `T`ype changed.
    pub status: char,
    pub path: String,
}

/// The daemon's snapshot stores.
#[derive(Debug)]
pub struct Snapshots {
    dir: PathBuf,
    limits: SnapshotLimits,
    /// One lock per workspace: its shadow index is one file.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Snapshots {
    /// Stores under `dir` (`<data dir>/snapshots`).
    pub fn new(dir: PathBuf, limits: SnapshotLimits) -> Self {
        Self {
            dir,
            limits,
            locks: Mutex::default(),
        }
    }

    fn shadow(&self, workspace_id: &str, root: &Path) -> Shadow {
        Shadow {
            git_dir: self.dir.join(format!("{workspace_id}.git")),
            work_tree: root.to_path_buf(),
        }
    }

    fn lock_of(&self, workspace_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.locks)
            .entry(workspace_id.to_owned())
            .or_default()
            .clone()
    }

    /// Records the workspace's files now, as the latest snapshot of `session_id`.
    pub async fn snapshot(
        &self,
        workspace_id: &str,
        root: &Path,
        session_id: &str,
    ) -> Result<Snapshot, SnapshotError> {
        let ws_lock = self.lock_of(workspace_id);
        let _held = ws_lock.lock().await;
        let shadow = self.shadow(workspace_id, root);
        shadow.ensure().await?;
        copy_user_excludes(&shadow);
        // What changed since the shadow index last saw it, with sizes: the candidates to add.
        let listed = shadow
            .run(&[
                "ls-files",
                "-z",
                "--others",
                "--modified",
                "--exclude-standard",
            ])
            .await?;
        let mut skipped = Vec::new();
        let mut bytes = 0u64;
        for path in listed.split(|b| *b == 0).filter(|p| !p.is_empty()) {
            let rel = String::from_utf8_lossy(path).into_owned();
            let Ok(meta) = std::fs::symlink_metadata(root.join(&rel)) else {
                continue; // deleted: recorded as such
            };
            if meta.is_file() && meta.len() > self.limits.max_file_bytes {
                skipped.push(rel);
            } else {
                bytes += meta.len();
            }
        }
        if bytes > self.limits.max_bytes {
            return Err(SnapshotError::TooLarge {
                bytes,
                limit: self.limits.max_bytes,
            });
        }
        skipped.sort();
        skipped.dedup();
        let mut specs = b".\0".to_vec();
        for s in &skipped {
            specs.extend_from_slice(format!(":(exclude,literal){s}\0").as_bytes());
        }
        shadow
            .run_with_input(
                &[
                    "add",
                    "-A",
                    "--ignore-errors",
                    "--pathspec-from-file=-",
                    "--pathspec-file-nul",
                ],
                Some(&specs),
            )
            .await?;
        let tree = text(shadow.run(&["write-tree"]).await?);
        self.record(&shadow, session_id, &tree).await?;
        Ok(Snapshot { tree, skipped })
    }

    /// Keeps `tree` reachable from the session's ref (a commit chain).
    async fn record(&self, shadow: &Shadow, session_id: &str, tree: &str) -> Result<(), GitError> {
        let reference = format!("refs/sessions/{session_id}");
        let parent = shadow
            .run(&["rev-parse", "--verify", "--quiet", &reference])
            .await
            .ok()
            .map(text)
            .filter(|p| !p.is_empty());
        let mut args = vec!["commit-tree", tree, "-m", "snapshot"];
        if let Some(p) = &parent {
            args.extend(["-p", p.as_str()]);
        }
        let commit = text(shadow.run(&args).await?);
        shadow.run(&["update-ref", &reference, &commit]).await?;
        Ok(())
    }

    /// The files that differ between two snapshots of the workspace.
    pub async fn changes(
        &self,
        workspace_id: &str,
        root: &Path,
        from: &str,
        to: &str,
    ) -> Result<Vec<FileChange>, GitError> {
        let shadow = self.shadow(workspace_id, root);
        let out = shadow
            .run(&[
                "diff-tree",
                "-r",
                "-z",
                "--no-renames",
                "--name-status",
                from,
                to,
            ])
            .await?;
        let mut fields = out.split(|b| *b == 0).filter(|f| !f.is_empty());
        let mut changes = Vec::new();
        while let (Some(status), Some(path)) = (fields.next(), fields.next()) {
            changes.push(FileChange {
                status: status.first().map_or('M', |b| *b as char),
                path: String::from_utf8_lossy(path).into_owned(),
            });
        }
        Ok(changes)
    }

    /// The unified diff between two snapshots (binary files named, not shown).
    pub(crate) async fn diff(
        &self,
        workspace_id: &str,
        root: &Path,
        from: &str,
        to: &str,
    ) -> Result<String, GitError> {
        let shadow = self.shadow(workspace_id, root);
        let out = shadow
            .run(&[
                "diff-tree",
                "-r",
                "-p",
                "--no-color",
                "--no-ext-diff",
                "--find-renames",
                from,
                to,
            ])
            .await?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Puts `paths` back as they are in snapshot `tree`: each file written whole (a temporary
    /// file renamed over it, so a crash leaves the old or the new content, never half of it),
    /// with its executable bit, or removed when the snapshot does not have it (and then its
    /// directories, once empty). Returns the paths it changed.
    pub async fn restore(
        &self,
        workspace_id: &str,
        root: &Path,
        tree: &str,
        paths: &[String],
    ) -> Result<Vec<String>, GitError> {
        let ws_lock = self.lock_of(workspace_id);
        let _held = ws_lock.lock().await;
        let shadow = self.shadow(workspace_id, root);
        let listing = shadow
            .run(&["ls-tree", "-r", "-z", "--full-tree", tree])
            .await?;
        let mut entries: HashMap<String, (String, String)> = HashMap::new();
        for item in listing.split(|b| *b == 0).filter(|i| !i.is_empty()) {
            let item = String::from_utf8_lossy(item);
            let Some((meta, path)) = item.split_once('\t') else {
                continue;
            };
            let mut fields = meta.split(' ');
            if let (Some(mode), Some(_kind), Some(sha)) =
                (fields.next(), fields.next(), fields.next())
            {
                entries.insert(path.to_owned(), (mode.to_owned(), sha.to_owned()));
            }
        }
        // Every blob needed, read by one `cat-file --batch`.
        let wanted: Vec<&str> = paths
            .iter()
            .filter_map(|p| entries.get(p).map(|(_, sha)| sha.as_str()))
            .collect();
        let blobs = if wanted.is_empty() {
            HashMap::new()
        } else {
            let input = wanted.join("\n") + "\n";
            let out = shadow
                .run_with_input(&["cat-file", "--batch"], Some(input.as_bytes()))
                .await?;
            parse_batch(&out)
        };
        let mut changed = Vec::new();
        for rel in paths {
            let Some(target) = confined(root, rel) else {
                continue;
            };
            match entries.get(rel) {
                Some((mode, sha)) => {
                    let Some(content) = blobs.get(sha.as_str()) else {
                        return Err(GitError::Failed {
                            args: "cat-file --batch".into(),
                            status: "missing object".into(),
                            stderr: format!("no blob {sha} for {rel} in the snapshot store"),
                        });
                    };
                    write_atomically(&target, content, mode).map_err(GitError::Spawn)?;
                }
                None => {
                    match std::fs::remove_file(&target) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(GitError::Spawn(e)),
                    }
                    remove_empty_parents(root, &target);
                }
            }
            changed.push(rel.clone());
        }
        Ok(changed)
    }

    /// Lets Git drop what only a deleted session's snapshots used.
    pub(crate) async fn forget_session(
        &self,
        workspace_id: &str,
        root: &Path,
        session_id: &str,
    ) -> Result<(), GitError> {
        let ws_lock = self.lock_of(workspace_id);
        let _held = ws_lock.lock().await;
        let shadow = self.shadow(workspace_id, root);
        if !shadow.git_dir.join("HEAD").exists() {
            return Ok(());
        }
        let reference = format!("refs/sessions/{session_id}");
        // Absent already: nothing to drop.
        let _ = shadow.run(&["update-ref", "-d", &reference]).await;
        // `prune` rather than `gc`: no repacking, only what nothing reaches any more.
        shadow.run(&["prune", "--expire=now"]).await.map(|_| ())
    }

    /// Bytes the snapshot stores take on disk.
    pub fn disk_usage(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(p) else {
                return 0;
            };
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => walk(&e.path()),
                    Ok(_) => e.metadata().map_or(0, |m| m.len()),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.dir)
    }
}

/// The suffix of the temporary file a restore writes before renaming it over the file.
const RESTORE_SUFFIX: &str = ".crushd-restore";

/// The user's own `.git/info/exclude` applies to snapshots too (read, never written), and a
/// restore's temporary files are never recorded.
fn copy_user_excludes(shadow: &Shadow) {
    let user = shadow.work_tree.join(".git").join("info").join("exclude");
    let ours = shadow.git_dir.join("info").join("exclude");
    let mut text = std::fs::read_to_string(user).unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(".*{RESTORE_SUFFIX}\n"));
    if std::fs::read_to_string(&ours).ok().as_deref() != Some(text.as_str()) {
        let _ = std::fs::create_dir_all(shadow.git_dir.join("info"));
        let _ = std::fs::write(ours, text);
    }
}

/// `git cat-file --batch` output: for each object `<sha> <type> <size>\n<content>\n`.
fn parse_batch(out: &[u8]) -> HashMap<String, Vec<u8>> {
    let mut blobs = HashMap::new();
    let mut rest = out;
    while let Some(eol) = rest.iter().position(|b| *b == b'\n') {
        let header = std::str::from_utf8(&rest[..eol]).unwrap_or_default();
        rest = &rest[eol + 1..];
        let mut fields = header.split(' ');
        let (Some(sha), Some(_kind), Some(size)) = (fields.next(), fields.next(), fields.next())
        else {
            continue; // `<sha> missing`
        };
        let Ok(size) = size.parse::<usize>() else {
            break;
        };
        if rest.len() < size {
            break;
        }
        blobs.insert(sha.to_owned(), rest[..size].to_vec());
        rest = rest.get(size + 1..).unwrap_or_default();
    }
    blobs
}

/// `rel` under `root`, when it stays there (a snapshot path never has `..`; this makes sure).
fn confined(root: &Path, rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    let plain = p
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    plain.then(|| root.join(p))
}

/// Writes `content` to `path` through a temporary file in the same directory, renamed over it
/// once synced. Mode `100755` makes it executable, `120000` a symbolic link to `content`.
fn write_atomically(path: &Path, content: &[u8], mode: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // One name per file: a restore killed half-way leaves at most this one file beside it,
    // which the next restore of the file replaces (and snapshots never record: `EXCLUDES`).
    let tmp = dir.join(format!(".{name}{RESTORE_SUFFIX}"));
    let _ = std::fs::remove_file(&tmp);
    if mode == "120000" {
        #[cfg(unix)]
        std::os::unix::fs::symlink(String::from_utf8_lossy(content).as_ref(), &tmp)?;
    } else {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(content)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let bits = if mode == "100755" { 0o755 } else { 0o644 };
            f.set_permissions(std::fs::Permissions::from_mode(bits))?;
        }
        f.sync_all()?;
    }
    // A directory in the way (the run made one where the file was) cannot be renamed over.
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        std::fs::remove_dir_all(path)?;
    }
    std::fs::rename(&tmp, path)
}

/// Removes the directories above `path` that are now empty, up to `root` (not included).
fn remove_empty_parents(root: &Path, path: &Path) {
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) || std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

fn text(out: Vec<u8>) -> String {
    String::from_utf8_lossy(&out).trim().to_owned()
}

#[cfg(test)]
mod tests;
