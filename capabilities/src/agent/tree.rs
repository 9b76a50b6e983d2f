//! Each bead works in its own git worktree, so that what it changed is known
//! exactly and reaches the epic's working tree only once it is approved.
//!
//! A snapshot is a git tree object of a whole working tree (tracked and
//! untracked files, `.gitignore` respected), written through a private index
//! file, so the repository's own index is never touched and several agents
//! can snapshot at once. A bead's worktree starts from a snapshot of the
//! epic's tree (uncommitted work of earlier beads included); afterwards the
//! bead's worktree is snapshotted too, and the difference of the two trees
//! is what the bead changed, by content. Approved changes are copied into the
//! epic's tree while the bead still holds its reservation; rejected ones are
//! dropped with the worktree and never touch it.

use jetmesh_shared::{Error, ErrorCode, Result};
use std::path::{Path, PathBuf};
use tokio::process::Command;

/// A snapshot: the id of a git tree object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot(pub String);

async fn git(workdir: &Path, index: Option<&Path>, args: &[&str]) -> Result<Vec<u8>> {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(workdir).args(args);
    // Never a pager, a prompt, or the user's hooks and global settings.
    cmd.env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "jetmesh")
        .env("GIT_AUTHOR_EMAIL", "jetmesh@localhost")
        .env("GIT_COMMITTER_NAME", "jetmesh")
        .env("GIT_COMMITTER_EMAIL", "jetmesh@localhost")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .kill_on_drop(true);
    if let Some(index) = index {
        cmd.env("GIT_INDEX_FILE", index);
    }
    let out = cmd.output().await.map_err(|e| {
        Error::new(
            ErrorCode::Unavailable,
            format!("cannot run git (it is needed to see what a bead changed): {e}"),
        )
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(Error::new(
            ErrorCode::InvalidArgs,
            format!(
                "git {} failed in {}: {}",
                args.join(" "),
                workdir.display(),
                err.trim()
            ),
        ));
    }
    Ok(out.stdout)
}

/// The repository's `.git` directory, or an error saying the working tree
/// must be a git repository.
pub async fn git_dir(workdir: &Path) -> Result<PathBuf> {
    let out = git(workdir, None, &["rev-parse", "--absolute-git-dir"])
        .await
        .map_err(|_| {
            Error::new(
                ErrorCode::InvalidArgs,
                format!(
                    "{} is not a git working tree; an epic's workdir must be one (jetmesh snapshots it to see what each bead changed)",
                    workdir.display()
                ),
            )
        })?;
    Ok(PathBuf::from(String::from_utf8_lossy(&out).trim()))
}

/// Copies a git index and keeps its modification time: git trusts a file's
/// size and mtime only when they are older than the index file, and rehashes
/// the rest ("racy git"). A copy stamped now would make a file changed in
/// the same clock tick as the index was written look unchanged.
async fn copy_index(from: &Path, to: &Path) {
    let from = from.to_path_buf();
    let to = to.to_path_buf();
    let copied = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let modified = std::fs::metadata(&from)?.modified()?;
        std::fs::copy(&from, &to)?;
        let stamped = std::fs::File::options()
            .write(true)
            .open(&to)
            .and_then(|f| f.set_modified(modified));
        if stamped.is_err() {
            // Better no index (every file rehashed) than a wrongly dated one.
            let _ = std::fs::remove_file(&to);
        }
        stamped
    })
    .await;
    if let Ok(Err(error)) = copied
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::debug!(%error, "Cannot copy the git index; the snapshot rehashes every file.");
    }
}

/// Snapshots the working tree.
pub async fn snapshot(workdir: &Path) -> Result<Snapshot> {
    let gitdir = git_dir(workdir).await?;
    let index = gitdir.join(format!("jetmesh-index-{}", jetmesh_shared::ids::generate()));
    // Starting from the real index lets git skip rehashing unchanged files.
    copy_index(&gitdir.join("index"), &index).await;
    let result = async {
        git(workdir, Some(&index), &["add", "-A", "--", "."]).await?;
        let out = git(workdir, Some(&index), &["write-tree"]).await?;
        Ok(Snapshot(String::from_utf8_lossy(&out).trim().to_string()))
    }
    .await;
    let _ = tokio::fs::remove_file(&index).await;
    result
}

/// The paths whose content differs between two snapshots (added, changed or
/// removed), relative to the working tree.
pub async fn changed(workdir: &Path, before: &Snapshot, after: &Snapshot) -> Result<Vec<String>> {
    if before == after {
        return Ok(Vec::new());
    }
    let out = git(
        workdir,
        None,
        &[
            "diff-tree",
            "-r",
            "-z",
            "--no-renames",
            "--name-only",
            &before.0,
            &after.0,
        ],
    )
    .await?;
    Ok(out
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect())
}

/// A bead's own worktree.
#[derive(Debug)]
pub struct Worktree {
    pub path: PathBuf,
    /// The snapshot of the epic's tree it started from.
    pub base: Snapshot,
    workdir: PathBuf,
}

impl Worktree {
    /// A fresh worktree for `name` (a bead) with the epic tree's current
    /// content, under `<git dir>/jetmesh-worktrees/`. A leftover of an
    /// earlier attempt (a worker that died) is removed first.
    pub async fn create(workdir: &Path, name: &str) -> Result<Worktree> {
        let gitdir = git_dir(workdir).await?;
        let path = gitdir.join("jetmesh-worktrees").join(name);
        remove(workdir, &path).await;
        let base = snapshot(workdir).await?;
        let commit = git(
            workdir,
            None,
            &[
                "commit-tree",
                &base.0,
                "-m",
                &format!("jetmesh: base of {name}"),
            ],
        )
        .await?;
        let commit = String::from_utf8_lossy(&commit).trim().to_string();
        let p = path.display().to_string();
        git(
            workdir,
            None,
            &["worktree", "add", "--detach", "--force", &p, &commit],
        )
        .await?;
        Ok(Worktree {
            path,
            base,
            workdir: workdir.to_path_buf(),
        })
    }

    /// What the bead changed in its worktree, by content.
    pub async fn changed(&self) -> Result<Vec<String>> {
        let after = snapshot(&self.path).await?;
        changed(&self.workdir, &self.base, &after).await
    }

    /// Copies `paths` from the worktree into the epic's tree (or removes
    /// them there, if the bead removed them). Returns what it could not copy.
    pub async fn apply(&self, paths: &[String]) -> Vec<String> {
        let mut failed = Vec::new();
        for p in paths {
            // Paths come from git; refuse anything that would leave the tree.
            if p.starts_with('/') || p.split('/').any(|s| s == ".." || s == ".git") {
                failed.push(p.clone());
                continue;
            }
            let (from, to) = (self.path.join(p), self.workdir.join(p));
            let ok = match tokio::fs::symlink_metadata(&from).await {
                Ok(meta) if meta.is_file() => {
                    if let Some(dir) = to.parent() {
                        let _ = tokio::fs::create_dir_all(dir).await;
                    }
                    tokio::fs::copy(&from, &to).await.is_ok()
                }
                Ok(_) => false,
                Err(_) => match tokio::fs::remove_file(&to).await {
                    Ok(()) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::NotFound,
                },
            };
            if !ok {
                failed.push(p.clone());
            }
        }
        failed
    }

    /// Removes the worktree.
    pub async fn discard(self) {
        remove(&self.workdir, &self.path).await;
    }
}

async fn remove(workdir: &Path, path: &Path) {
    if tokio::fs::metadata(path).await.is_err() {
        return;
    }
    let p = path.display().to_string();
    if git(workdir, None, &["worktree", "remove", "--force", &p])
        .await
        .is_err()
    {
        let _ = tokio::fs::remove_dir_all(path).await;
        let _ = git(workdir, None, &["worktree", "prune"]).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sh(dir: &Path, args: &[&str]) {
        let ok = Command::new(args[0])
            .args(&args[1..])
            .current_dir(dir)
            .status()
            .await
            .unwrap()
            .success();
        assert!(ok, "{args:?}");
    }

    #[tokio::test]
    async fn a_worktree_sees_only_its_changes_and_applies_what_is_approved() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        sh(d, &["git", "init", "-q"]).await;
        std::fs::write(d.join("kept.txt"), "one\n").unwrap();
        std::fs::write(d.join("gone.txt"), "x\n").unwrap();
        std::fs::write(d.join(".gitignore"), "ignored/\n").unwrap();
        sh(d, &["git", "add", "-A"]).await;
        sh(
            d,
            &[
                "git",
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "-qm",
                "init",
            ],
        )
        .await;
        // Uncommitted work of an earlier bead is in the worktree too.
        std::fs::write(d.join("dirty.txt"), "before\n").unwrap();

        let wt = Worktree::create(d, "b1").await.unwrap();
        assert_eq!(
            std::fs::read_to_string(wt.path.join("dirty.txt")).unwrap(),
            "before\n"
        );
        std::fs::write(wt.path.join("kept.txt"), "two\n").unwrap();
        std::fs::create_dir_all(wt.path.join("new/dir")).unwrap();
        std::fs::write(wt.path.join("new/dir/a.txt"), "a\n").unwrap();
        std::fs::remove_file(wt.path.join("gone.txt")).unwrap();
        std::fs::create_dir_all(wt.path.join("ignored")).unwrap();
        std::fs::write(wt.path.join("ignored/x"), "x\n").unwrap();
        // Meanwhile someone else changes the epic's tree: not the bead's.
        std::fs::write(d.join("other.txt"), "theirs\n").unwrap();
        let mut c = wt.changed().await.unwrap();
        c.sort();
        assert_eq!(c, ["gone.txt", "kept.txt", "new/dir/a.txt"]);

        // Only what is approved reaches the tree.
        let failed = wt.apply(&["kept.txt".into(), "gone.txt".into()]).await;
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(
            std::fs::read_to_string(d.join("kept.txt")).unwrap(),
            "two\n"
        );
        assert!(!d.join("gone.txt").exists());
        assert!(!d.join("new/dir/a.txt").exists());
        let path = wt.path.clone();
        wt.discard().await;
        assert!(!path.exists());
        // The repository's own index was not touched.
        let status = Command::new("git")
            .args(["status", "--porcelain"])
            .current_dir(d)
            .output()
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&status.stdout),
            " D gone.txt\n M kept.txt\n?? dirty.txt\n?? other.txt\n"
        );
    }

    /// A repository with one committed file, `kept.txt`.
    async fn repo() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        sh(d, &["git", "init", "-q"]).await;
        std::fs::write(d.join("kept.txt"), "one\n").unwrap();
        sh(d, &["git", "add", "-A"]).await;
        sh(
            d,
            &[
                "git",
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "-qm",
                "init",
            ],
        )
        .await;
        dir
    }

    #[tokio::test]
    async fn apply_refuses_paths_that_would_leave_the_tree_or_enter_git() {
        let dir = repo().await;
        let d = dir.path();
        let wt = Worktree::create(d, "b1").await.unwrap();
        let outside = d.parent().unwrap().join("escaped.txt");
        let bad: Vec<String> = [
            "../escaped.txt",
            "a/../../escaped.txt",
            ".git/config",
            "sub/.git/hooks/pre-commit",
            "/etc/hostname",
        ]
        .map(String::from)
        .to_vec();
        for p in &bad {
            let target = wt.path.join(p.trim_start_matches('/'));
            if let Some(parent) = target.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let _ = std::fs::write(&target, "evil\n");
        }
        let config = std::fs::read(d.join(".git/config")).unwrap();
        let failed = wt.apply(&bad).await;
        assert_eq!(failed, bad);
        assert!(!outside.exists());
        assert_eq!(std::fs::read(d.join(".git/config")).unwrap(), config);
        wt.discard().await;
    }

    #[tokio::test]
    async fn a_symlink_the_bead_made_is_not_applied() {
        let dir = repo().await;
        let d = dir.path();
        let wt = Worktree::create(d, "b1").await.unwrap();
        std::os::unix::fs::symlink("/etc/hostname", wt.path.join("link")).unwrap();
        assert_eq!(wt.changed().await.unwrap(), ["link"]);
        assert_eq!(wt.apply(&["link".to_string()]).await, ["link"]);
        assert!(std::fs::symlink_metadata(d.join("link")).is_err());
        wt.discard().await;
    }

    #[tokio::test]
    async fn a_leftover_worktree_of_an_earlier_attempt_is_replaced() {
        let dir = repo().await;
        let d = dir.path();
        let first = Worktree::create(d, "b1").await.unwrap();
        std::fs::write(first.path.join("half-done.txt"), "x\n").unwrap();
        // The worker died: the worktree was never discarded.
        let path = first.path.clone();
        std::mem::forget(first);
        let second = Worktree::create(d, "b1").await.unwrap();
        assert_eq!(second.path, path);
        assert!(!second.path.join("half-done.txt").exists());
        assert!(second.changed().await.unwrap().is_empty());
        second.discard().await;
    }

    #[tokio::test]
    async fn identical_snapshots_have_no_changes_and_a_change_back_is_none() {
        let dir = repo().await;
        let d = dir.path();
        let before = snapshot(d).await.unwrap();
        assert_eq!(snapshot(d).await.unwrap(), before);
        std::fs::write(d.join("kept.txt"), "two\n").unwrap();
        let after = snapshot(d).await.unwrap();
        assert_eq!(changed(d, &before, &after).await.unwrap(), ["kept.txt"]);
        // Changed by content: writing the old content back is no change.
        std::fs::write(d.join("kept.txt"), "one\n").unwrap();
        let back = snapshot(d).await.unwrap();
        assert!(changed(d, &before, &back).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_plain_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = snapshot(dir.path()).await.unwrap_err();
        assert!(
            e.message.contains("not a git working tree"),
            "{}",
            e.message
        );
    }
}
