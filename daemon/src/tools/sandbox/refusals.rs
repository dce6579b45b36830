//! What a confined command that failed was refused, read from its output. Landlock does not
//! tell a process what it refused (only `EACCES`/`EPERM`), so this is an inference with known
//! limits, written down in ARCHITECTURE.md "The sandbox of tool commands".

use std::path::{Path, PathBuf};

use crush_protocol::SandboxMode;

use super::Policy;

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
    use super::super::writable_paths;
    use super::*;

    fn policy(root: &Path, network: bool) -> Policy {
        Policy {
            mode: SandboxMode::WorkspaceWrite,
            writable: writable_paths(SandboxMode::WorkspaceWrite, root, &[]),
            network,
        }
    }

    #[test]
    fn refusals_name_paths_outside_the_writable_set_only() {
        let ws = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(ws.path()).unwrap();
        let p = policy(&root, true);
        // A directory this process can write that the policy does not cover (not under the
        // temp directory: a checkout under /tmp is in the writable set): the home directory or
        // the crate's directory, whichever lies outside it.
        let base = [
            std::env::var_os("HOME").map(PathBuf::from),
            std::env::current_dir().ok(),
        ]
        .into_iter()
        .flatten()
        .filter_map(|d| std::fs::canonicalize(d).ok())
        .find(|d| !p.writable.iter().any(|w| d.starts_with(w)))
        .expect("a writable directory outside the temp directory (HOME or the crate's)");
        let outside = tempfile::tempdir_in(base).unwrap();
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
}
