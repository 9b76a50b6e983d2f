//! Snapshots of an epic's working tree, to see exactly what a bead changed.
//!
//! A snapshot is a git tree object of the whole working tree (tracked and
//! untracked files, `.gitignore` respected), written through a private index
//! file, so the repository's own index is never touched and several agents
//! can snapshot the same tree at once. Comparing two snapshots compares file
//! contents, not timestamps; restoring a file writes back its blob from the
//! earlier snapshot.

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

/// Snapshots the working tree.
pub async fn snapshot(workdir: &Path) -> Result<Snapshot> {
    let gitdir = git_dir(workdir).await?;
    let index = gitdir.join(format!("jetmesh-index-{}", jetmesh_shared::ids::generate()));
    // Starting from the real index lets git skip rehashing unchanged files.
    let _ = tokio::fs::copy(gitdir.join("index"), &index).await;
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

/// Puts `paths` back as they were in `before`: their content then, or
/// removed if they did not exist. Returns the paths it could not restore.
pub async fn restore(workdir: &Path, before: &Snapshot, paths: &[String]) -> Vec<String> {
    let mut failed = Vec::new();
    for p in paths {
        // Paths come from git; refuse anything that would leave the tree.
        if p.starts_with('/') || p.split('/').any(|s| s == "..") {
            failed.push(p.clone());
            continue;
        }
        let target = workdir.join(p);
        let spec = format!("{}:{p}", before.0);
        let ok = match git(workdir, None, &["cat-file", "blob", &spec]).await {
            Ok(content) => {
                if let Some(dir) = target.parent() {
                    let _ = tokio::fs::create_dir_all(dir).await;
                }
                tokio::fs::write(&target, content).await.is_ok()
            }
            // Not in the earlier snapshot: the bead created it.
            Err(_) => match tokio::fs::remove_file(&target).await {
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
    async fn snapshots_see_content_changes_and_restore_them() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        sh(d, &["git", "init", "-q"]).await;
        std::fs::write(d.join("kept.txt"), "one\n").unwrap();
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
        std::fs::write(d.join("dirty.txt"), "before\n").unwrap();

        let before = snapshot(d).await.unwrap();
        std::fs::write(d.join("kept.txt"), "two\n").unwrap();
        std::fs::create_dir_all(d.join("new/dir")).unwrap();
        std::fs::write(d.join("new/dir/a.txt"), "a\n").unwrap();
        std::fs::create_dir_all(d.join("ignored")).unwrap();
        std::fs::write(d.join("ignored/x"), "x\n").unwrap();
        std::fs::write(d.join("dirty.txt"), "after\n").unwrap();
        let after = snapshot(d).await.unwrap();
        let mut c = changed(d, &before, &after).await.unwrap();
        c.sort();
        assert_eq!(c, ["dirty.txt", "kept.txt", "new/dir/a.txt"]);

        let failed = restore(d, &before, &c).await;
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(
            std::fs::read_to_string(d.join("kept.txt")).unwrap(),
            "one\n"
        );
        assert_eq!(
            std::fs::read_to_string(d.join("dirty.txt")).unwrap(),
            "before\n"
        );
        assert!(!d.join("new/dir/a.txt").exists());
        let again = snapshot(d).await.unwrap();
        assert_eq!(again, before, "restored to the same content");
        // The repository's own index was not touched.
        let status = Command::new("git")
            .args(["status", "--porcelain"])
            .current_dir(d)
            .output()
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&status.stdout), "?? dirty.txt\n");
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
