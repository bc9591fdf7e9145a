//! Whether a run left anything in the checkout for `git clean` to remove.
//!
//! After each run the checkout is cleaned (`git clean -ffdx`), so that files
//! one run leaves behind never reach the next. Many scripts write nothing
//! there (a quick check, a build into another directory), and a git process
//! to find that out costs more than looking: right after the checkout the
//! work tree holds exactly the paths of the index, so if the set of paths
//! is the same after the run, there is nothing untracked or ignored to
//! remove. [`Shape`] is a digest of that set (every path under the work
//! tree with its file type, not looking into the repository's own `.git`)
//! and of the identity of the index (a run that changes the index changes
//! what is tracked), taken after the checkout and again after the run. A tree too large for
//! that to be cheaper than `git clean` ([`MAX_PATHS`]) is always cleaned.
//!
//! Names, not timestamps: a directory's modification time would tell of a
//! created or removed entry too, but Linux stamps files from a clock that
//! advances only every few milliseconds, and a script that creates a file
//! within that tick of the checkout would go unseen.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Most paths read before giving up on a shape. Reading the tree costs
/// about a microsecond a path, twice per run, against a few milliseconds
/// for `git clean` on a tree of this size: past it, cleaning is cheaper.
pub const MAX_PATHS: usize = 2048;

/// The set of paths in a work tree, as a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape([u8; 32]);

impl Shape {
    /// Reads every directory under `root` (not following symbolic links,
    /// and not into `root/.git`); `None` for a tree of more than `limit`
    /// paths. An unreadable directory is an error. Either way the caller
    /// cleans, as it would without a shape.
    pub fn of(root: &Path, limit: usize) -> io::Result<Option<Shape>> {
        let mut digest = Sha256::new();
        let mut paths = 0;
        let mut pending: Vec<PathBuf> = vec![PathBuf::new()];
        while let Some(relative) = pending.pop() {
            let mut entries = Vec::new();
            for entry in fs::read_dir(root.join(&relative))? {
                paths += 1;
                if paths > limit {
                    return Ok(None);
                }
                let entry = entry?;
                entries.push((entry.file_name(), entry.file_type()?));
            }
            // readdir's order is the file system's; the set is what counts.
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, kind) in entries {
                let path = relative.join(&name);
                // The repository itself counts as a name: a script that
                // removed it must meet the clean (which fails, and the
                // source is cloned again).
                let repository = path.as_os_str() == ".git";
                let tag: &[u8] = if kind.is_dir() {
                    if !repository {
                        pending.push(path.clone());
                    }
                    b"d"
                } else if kind.is_symlink() {
                    b"l"
                } else if kind.is_file() {
                    b"f"
                } else {
                    b"o"
                };
                digest.update(tag);
                digest.update(path.as_os_str().as_bytes());
                // Paths are NUL-free, so a NUL ends each one unambiguously.
                digest.update([0]);
            }
        }
        // The paths are compared with the index as the checkout left it:
        // a run that changed the index (`git reset`, `git rm --cached`) may
        // have made tracked files untracked without renaming anything. Git
        // replaces the index by renaming a new file over it, so any change
        // gives it another inode, size or time.
        match fs::symlink_metadata(root.join(".git").join("index")) {
            Ok(index) => {
                digest.update(b"index");
                for field in [
                    index.dev(),
                    index.ino(),
                    index.size(),
                    index.mtime() as u64,
                    index.mtime_nsec() as u64,
                    index.ctime() as u64,
                    index.ctime_nsec() as u64,
                ] {
                    digest.update(field.to_le_bytes());
                }
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => digest.update(b"no index"),
            Err(err) => return Err(err),
        }
        Ok(Some(Shape(digest.finalize().into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(dir: &Path) -> Shape {
        Shape::of(dir, MAX_PATHS).unwrap().expect("a small tree")
    }

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(".git/objects")).unwrap();
        fs::write(dir.path().join(".git/index"), "DIRC").unwrap();
        fs::create_dir_all(dir.path().join("src/lib")).unwrap();
        fs::write(dir.path().join("src/lib/a.c"), "int a;\n").unwrap();
        fs::write(dir.path().join("Makefile"), "all:\n").unwrap();
        dir
    }

    #[test]
    fn unchanged_names_give_the_same_shape_whatever_the_contents() {
        let dir = tree();
        let before = shape(dir.path());
        fs::write(dir.path().join("src/lib/a.c"), "int a = 1;\n").unwrap();
        // What git itself keeps in .git does not count, but the index.
        fs::write(dir.path().join(".git/index.lock"), "").unwrap();
        fs::create_dir(dir.path().join(".git/objects/ab")).unwrap();
        assert_eq!(shape(dir.path()), before);
    }

    #[test]
    fn a_created_removed_or_renamed_entry_changes_the_shape() {
        let changes: [fn(&Path); 8] = [
            |d| fs::write(d.join("src/lib/a.o"), "").unwrap(),
            |d| fs::create_dir(d.join("build")).unwrap(),
            |d| fs::remove_file(d.join("Makefile")).unwrap(),
            |d| fs::rename(d.join("src/lib/a.c"), d.join("src/lib/b.c")).unwrap(),
            |d| std::os::unix::fs::symlink("Makefile", d.join("src/.git")).unwrap(),
            |d| fs::remove_dir_all(d.join(".git")).unwrap(),
            |d| {
                // The index replaced, as git does: a new file renamed over it.
                fs::write(d.join(".git/index.lock"), "DIRC").unwrap();
                fs::rename(d.join(".git/index.lock"), d.join(".git/index")).unwrap();
            },
            |d| {
                // The same name, another type.
                fs::remove_file(d.join("Makefile")).unwrap();
                fs::create_dir(d.join("Makefile")).unwrap();
            },
        ];
        for (i, change) in changes.iter().enumerate() {
            let dir = tree();
            let before = shape(dir.path());
            change(dir.path());
            assert_ne!(shape(dir.path()), before, "change {i}");
        }
    }

    #[test]
    fn names_cannot_run_into_each_other() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        fs::write(one.path().join("ab"), "").unwrap();
        fs::write(two.path().join("a"), "").unwrap();
        fs::write(two.path().join("b"), "").unwrap();
        assert_ne!(shape(one.path()), shape(two.path()));
    }

    #[test]
    fn an_unreadable_directory_is_an_error() {
        let dir = tree();
        assert!(Shape::of(&dir.path().join("missing"), MAX_PATHS).is_err());
    }

    #[test]
    fn a_tree_of_more_paths_than_the_limit_has_no_shape() {
        let dir = tree();
        // .git, Makefile, src, src/lib, src/lib/a.c
        assert!(Shape::of(dir.path(), 5).unwrap().is_some());
        assert_eq!(Shape::of(dir.path(), 4).unwrap(), None);
    }
}
