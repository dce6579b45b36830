#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use super::*;

fn limits() -> SnapshotLimits {
    SnapshotLimits {
        max_file_bytes: 1000,
        max_bytes: 100_000,
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    snaps: Snapshots,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("project");
    std::fs::create_dir_all(&root).unwrap();
    let snaps = Snapshots::new(dir.path().join("data/snapshots"), limits());
    Fixture {
        _dir: dir,
        root,
        snaps,
    }
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn user_git(root: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(root)
        .env("GIT_AUTHOR_NAME", "u")
        .env("GIT_AUTHOR_EMAIL", "u@x")
        .env("GIT_COMMITTER_NAME", "u")
        .env("GIT_COMMITTER_EMAIL", "u@x")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn changes_between_snapshots_of_a_plain_directory() {
    let f = fixture();
    write(&f.root, "a.txt", "one\n");
    write(&f.root, "src/b.rs", "fn b() {}\n");
    let first = f.snaps.snapshot("ws", &f.root, "s1").await.unwrap();
    write(&f.root, "a.txt", "two\n");
    std::fs::remove_file(f.root.join("src/b.rs")).unwrap();
    write(&f.root, "new/c.txt", "three\n");
    let second = f.snaps.snapshot("ws", &f.root, "s1").await.unwrap();
    let mut changes = f
        .snaps
        .changes("ws", &f.root, &first.tree, &second.tree)
        .await
        .unwrap();
    changes.sort_by(|a, b| a.path.cmp(&b.path));
    let got: Vec<(char, &str)> = changes
        .iter()
        .map(|c| (c.status, c.path.as_str()))
        .collect();
    assert_eq!(got, [('M', "a.txt"), ('A', "new/c.txt"), ('D', "src/b.rs")]);
    let diff = f
        .snaps
        .diff("ws", &f.root, &first.tree, &second.tree)
        .await
        .unwrap();
    assert!(diff.contains("-one\n+two\n"), "{diff}");
    assert!(diff.contains("+++ b/new/c.txt"), "{diff}");
    // Nothing changed: the same tree.
    let third = f.snaps.snapshot("ws", &f.root, "s1").await.unwrap();
    assert_eq!(third.tree, second.tree);
}

#[tokio::test]
async fn large_files_are_skipped_and_reported_and_a_too_large_snapshot_is_not_taken() {
    let f = fixture();
    write(&f.root, "small.txt", "x");
    write(&f.root, "big.bin", &"y".repeat(5000));
    let s = f.snaps.snapshot("ws", &f.root, "s1").await.unwrap();
    assert_eq!(s.skipped, ["big.bin"]);
    let tree = Shadow {
        git_dir: f.snaps.dir.join("ws.git"),
        work_tree: f.root.clone(),
    }
    .run(&["ls-tree", "-r", "--name-only", &s.tree])
    .await
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&tree), "small.txt\n");
    for i in 0..200 {
        write(&f.root, &format!("many/{i}.txt"), &"z".repeat(900));
    }
    let err = f.snaps.snapshot("ws", &f.root, "s1").await.unwrap_err();
    assert!(matches!(err, SnapshotError::TooLarge { .. }), "{err}");
}

#[tokio::test]
async fn the_users_repository_is_untouched_and_its_ignore_rules_apply() {
    let f = fixture();
    user_git(&f.root, &["init", "-q"]);
    write(&f.root, ".gitignore", "target/\n");
    write(&f.root, "src/main.rs", "fn main() {}\n");
    write(&f.root, "target/out.o", "binary");
    write(&f.root, "notes.local", "mine");
    write(&f.root, ".git/info/exclude", "*.local\n");
    user_git(&f.root, &["add", "-A"]);
    user_git(&f.root, &["commit", "-qm", "init"]);
    write(&f.root, "src/main.rs", "fn main() { changed(); }\n");
    user_git(&f.root, &["stash", "-q"]);
    write(&f.root, "src/main.rs", "fn main() { again(); }\n");
    let read = |p: &str| std::fs::read(f.root.join(".git").join(p)).unwrap();
    let before = (
        read("HEAD"),
        read("index"),
        user_git(&f.root, &["stash", "list"]),
    );
    let head = user_git(&f.root, &["rev-parse", "HEAD"]);

    let s = f.snaps.snapshot("ws", &f.root, "s1").await.unwrap();
    write(&f.root, "src/lib.rs", "pub fn lib() {}\n");
    let s2 = f.snaps.snapshot("ws", &f.root, "s1").await.unwrap();

    assert_eq!(
        (
            read("HEAD"),
            read("index"),
            user_git(&f.root, &["stash", "list"])
        ),
        before
    );
    assert_eq!(user_git(&f.root, &["rev-parse", "HEAD"]), head);
    assert_eq!(
        user_git(&f.root, &["status", "--porcelain"]),
        " M src/main.rs\n?? src/lib.rs\n"
    );
    let shadow = Shadow {
        git_dir: f.snaps.dir.join("ws.git"),
        work_tree: f.root.clone(),
    };
    let names = String::from_utf8(
        shadow
            .run(&["ls-tree", "-r", "--name-only", &s.tree])
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        names, ".gitignore\nsrc/main.rs\n",
        "no target/, no .git, no *.local"
    );
    let changes = f
        .snaps
        .changes("ws", &f.root, &s.tree, &s2.tree)
        .await
        .unwrap();
    assert_eq!(changes.len(), 1);
    // A deleted session's snapshots can be collected (what the shadow index still holds, the
    // workspace as it is now, stays).
    assert!(shadow.run(&["cat-file", "-e", &s.tree]).await.is_ok());
    f.snaps.forget_session("ws", &f.root, "s1").await.unwrap();
    assert!(shadow.run(&["cat-file", "-e", &s.tree]).await.is_err());
}
