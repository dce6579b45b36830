//! Running the `git` program on a shadow repository: the one place that builds its command line
//! and environment. The shadow's `GIT_DIR` is in the daemon's data directory and its work tree
//! is the workspace; nothing of the user's own Git set-up applies (no global or system config,
//! no hooks, no user repository), and nothing here ever names the user's `.git`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The longest one git command may take (a snapshot of a huge tree on a slow disk).
const TIMEOUT: Duration = Duration::from_secs(120);

/// Why a git command failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run git: {0} (snapshots need the git program on PATH)")]
    Spawn(std::io::Error),
    #[error("git {args} failed ({status}): {stderr}")]
    Failed {
        args: String,
        status: String,
        stderr: String,
    },
    #[error("git {0} took longer than {TIMEOUT:?}")]
    Timeout(String),
}

/// A shadow repository and the work tree it records.
#[derive(Debug, Clone)]
pub(crate) struct Shadow {
    pub(crate) git_dir: PathBuf,
    pub(crate) work_tree: PathBuf,
}

impl Shadow {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("git");
        cmd.args(args)
            .current_dir(&self.work_tree)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("GIT_DIR", &self.git_dir)
            .env("GIT_WORK_TREE", &self.work_tree)
            .env("GIT_INDEX_FILE", self.git_dir.join("index"))
            // None of the user's configuration: hooks, filters, attributes, fsmonitor.
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_AUTHOR_NAME", "crushd")
            .env("GIT_AUTHOR_EMAIL", "crushd@localhost")
            .env("GIT_COMMITTER_NAME", "crushd")
            .env("GIT_COMMITTER_EMAIL", "crushd@localhost")
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `git args` and returns its stdout.
    pub(crate) async fn run(&self, args: &[&str]) -> Result<Vec<u8>, GitError> {
        self.run_with_input(args, None).await
    }

    /// Runs `git args` with `input` on its stdin and returns its stdout.
    pub(crate) async fn run_with_input(
        &self,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> Result<Vec<u8>, GitError> {
        let mut cmd = self.command(args);
        if input.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().map_err(GitError::Spawn)?;
        if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
            // A write error shows as the command's own failure below.
            let _ = stdin.write_all(data).await;
            drop(stdin);
        }
        let out = match tokio::time::timeout(TIMEOUT, child.wait_with_output()).await {
            Ok(out) => out.map_err(GitError::Spawn)?,
            Err(_) => return Err(GitError::Timeout(args.join(" "))),
        };
        if !out.status.success() {
            return Err(GitError::Failed {
                args: args.join(" "),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(out.stdout)
    }

    /// Creates the shadow repository when it does not exist yet.
    pub(crate) async fn ensure(&self) -> Result<(), GitError> {
        if self.git_dir.join("HEAD").exists() {
            return Ok(());
        }
        if let Some(parent) = self.git_dir.parent() {
            std::fs::create_dir_all(parent).map_err(GitError::Spawn)?;
        }
        let dir = path_str(&self.git_dir);
        // `init` must not see GIT_DIR/GIT_WORK_TREE pointing at a repository that is not there.
        let out = Command::new("git")
            .args(["init", "--quiet", "--bare", &dir])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(GitError::Spawn)?;
        if !out.status.success() {
            return Err(GitError::Failed {
                args: "init --bare".into(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        // A work tree's files as they are: no line-ending or file-mode guessing. Written whole
        // (one file) rather than by six `git config` processes.
        let config = "[core]\n\trepositoryformatversion = 0\n\tbare = false\n\
                      \tautocrlf = false\n\tfilemode = true\n\tsymlinks = true\n\
                      \tquotepath = false\n\tlogallrefupdates = false\n[gc]\n\tauto = 0\n";
        std::fs::write(self.git_dir.join("config"), config).map_err(GitError::Spawn)?;
        Ok(())
    }
}

pub(crate) fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
