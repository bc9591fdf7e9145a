//! The per-process workspace: a fresh directory under `$TMPDIR` holding the
//! clone and the notes staging directory, removed when the job ends (normal
//! exit, SIGTERM or SIGINT, all of which return through `main`).

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// Directory layout of one job's workspace.
#[derive(Debug)]
pub struct Workspace {
    root: TempDir,
}

impl Workspace {
    /// Creates `$TMPDIR/icyci-workspace…` with its private directory.
    pub fn create() -> io::Result<Self> {
        let root = tempfile::Builder::new()
            .prefix("icyci-workspace")
            .tempdir()?;
        let workspace = Workspace { root };
        make_private_dir(&workspace.private_dir())?;
        Ok(workspace)
    }

    /// Workspace root.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The clone of the source (`source/`).
    pub fn source_dir(&self) -> PathBuf {
        self.root().join("source")
    }

    /// The staging directory offered to the script as `$ICYCI_NOTES_DIR`.
    pub fn notes_dir(&self) -> PathBuf {
        self.root().join("notes")
    }

    /// The daemon's own files (captured output, verdict, copies of extra
    /// notes). Outside the notes directory, so a script that swaps
    /// `$ICYCI_NOTES_DIR` for a link cannot redirect or replace them.
    pub fn private_dir(&self) -> PathBuf {
        self.root().join("daemon")
    }

    /// Empties the notes and private directories for the next cycle. The
    /// notes directory is removed without following a link the script may
    /// have put in its place.
    pub fn reset_staging(&self) -> io::Result<()> {
        for dir in [self.notes_dir(), self.private_dir()] {
            remove_without_following(&dir)?;
        }
        make_private_dir(&self.private_dir())
    }

    /// Creates a fresh notes directory (mode 0700) for a script run.
    pub fn prepare_notes_dir(&self) -> io::Result<PathBuf> {
        let dir = self.notes_dir();
        remove_without_following(&dir)?;
        make_private_dir(&dir)?;
        Ok(dir)
    }
}

fn make_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().mode(0o700).create(dir)
}

/// Removes a directory tree, or just the link if `path` is a symlink.
fn remove_without_following(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_removes_a_swapped_link_but_not_its_target() {
        let workspace = Workspace::create().expect("workspace");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("keep"), b"x").expect("write");
        workspace.prepare_notes_dir().expect("notes dir");
        std::fs::remove_dir(workspace.notes_dir()).expect("rmdir");
        std::os::unix::fs::symlink(outside.path(), workspace.notes_dir()).expect("symlink");

        workspace.reset_staging().expect("reset");
        assert!(
            outside.path().join("keep").exists(),
            "link target must survive"
        );
        assert!(!workspace.notes_dir().exists());
        let root = workspace.root().to_owned();
        drop(workspace);
        assert!(!root.exists(), "workspace removed on drop");
    }
}
