//! The per-process workspace: a fresh directory under `$TMPDIR` holding the
//! clone and the notes staging directory, plus a private directory for the
//! daemon's own files; all removed when the job ends (normal exit, SIGTERM,
//! SIGINT or SIGHUP, all of which return through `main`).

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// Name of the notes repository in the private directory.
const RESULTS_REPOSITORY: &str = "results.git";

/// Directory layout of one job's workspace.
#[derive(Debug)]
pub struct Workspace {
    root: TempDir,
    private: TempDir,
}

impl Workspace {
    /// Creates `$TMPDIR/icyci-workspace…`, and beside it the daemon's
    /// private directory under a random name the script is not told.
    pub fn create() -> io::Result<Self> {
        let root = tempfile::Builder::new()
            .prefix("icyci-workspace")
            .tempdir()?;
        let private = tempfile::Builder::new().prefix("icyci-private").tempdir()?;
        Ok(Workspace { root, private })
    }

    /// Workspace root.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The clone of the source (`source/`).
    pub fn source_dir(&self) -> PathBuf {
        self.root().join("source")
    }

    /// The daemon's private bare repository holding the note refs (see
    /// [`crate::notes`]), in the private directory: out of the script's
    /// reach like the captured output.
    pub fn results_dir(&self) -> PathBuf {
        self.private_dir().join(RESULTS_REPOSITORY)
    }

    /// The staging directory offered to the script as `$ICYCI_NOTES_DIR`.
    pub fn notes_dir(&self) -> PathBuf {
        self.root().join("notes")
    }

    /// The daemon's own files (captured output, verdict, copies of extra
    /// notes). Not inside the workspace, so a script that swaps
    /// `$ICYCI_NOTES_DIR` or its parent for a link cannot redirect or
    /// replace them.
    pub fn private_dir(&self) -> PathBuf {
        self.private.path().to_owned()
    }

    /// Empties the notes and private directories for the next cycle. The
    /// notes directory is removed without following a link the script may
    /// have put in its place.
    pub fn reset_staging(&self) -> io::Result<()> {
        remove_without_following(&self.notes_dir())?;
        // The private directory's files, but not the notes repository,
        // which lives as long as the clone.
        let entries = match std::fs::read_dir(self.private_dir()) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return make_private_dir(&self.private_dir());
            }
            entries => entries?,
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_name() != RESULTS_REPOSITORY {
                remove_without_following(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Creates a fresh notes directory (mode 0700) for a script run.
    pub fn prepare_notes_dir(&self) -> io::Result<PathBuf> {
        let dir = self.notes_dir();
        remove_without_following(&dir)?;
        make_private_dir(&dir)?;
        Ok(dir)
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        // TempDir's own removal gives up on directories a test made
        // unreadable; clear those first.
        for dir in [self.root.path(), self.private.path()] {
            if let Err(err) = remove_tree(dir) {
                tracing::warn!(dir = %dir.display(), "workspace not removed: {err}");
            }
        }
    }
}

/// Removes the directory tree at `path` (nothing if it does not exist),
/// also when a test left directories without write or search permission
/// (read-only module caches, `chmod 000` build trees): those are made
/// accessible first. Links are removed, never followed.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::PermissionDenied => {
            make_accessible(path);
            std::fs::remove_dir_all(path)
        }
        Err(err) => Err(err),
    }
}

fn make_accessible(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            make_accessible(&entry.path());
        }
    }
}

fn make_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().mode(0o700).create(dir)
}

/// Removes a directory tree, or just the link if `path` is a symlink.
fn remove_without_following(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => remove_tree(path),
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
