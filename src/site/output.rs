//! The output directory: files are written only when their bytes change
//! (and then atomically, so a web server never serves half a page), and
//! removed only when the manifest says the site made them.

use std::fs;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};

use super::manifest::{Manifest, MANIFEST_FILE};
use super::SiteError;

/// The directory a site is written to.
#[derive(Debug, Clone)]
pub struct SiteDir {
    root: PathBuf,
}

impl SiteDir {
    /// The site in `root`.
    pub fn new(root: &Path) -> Self {
        SiteDir {
            root: root.to_path_buf(),
        }
    }

    /// Checks, touching nothing, that [`SiteDir::prepare`] would take the
    /// directory: absent, empty, or holding a site (its manifest). One that
    /// holds other files is refused: the site would overwrite `index.html`
    /// there.
    pub fn check(&self) -> Result<(), SiteError> {
        let root = &self.root;
        match fs::metadata(root) {
            Ok(meta) if !meta.is_dir() => Err(SiteError::NotADirectory(display(root))),
            Ok(_) if root.join(MANIFEST_FILE).exists() => Ok(()),
            Ok(_) => match fs::read_dir(root).map_err(|e| io_error(root, e))?.next() {
                Some(_) => Err(SiteError::NotASite(display(root))),
                None => Ok(()),
            },
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
            Err(err) => Err(io_error(root, err)),
        }
    }

    /// Checks the directory ([`SiteDir::check`]), creates it if needed and
    /// reads the manifest of the last run.
    pub fn prepare(&self) -> Result<Manifest, SiteError> {
        self.check()?;
        let root = &self.root;
        fs::create_dir_all(root).map_err(|e| io_error(root, e))?;
        let manifest = root.join(MANIFEST_FILE);
        match fs::read_to_string(&manifest) {
            Ok(text) => Ok(Manifest::parse(&text)),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(Manifest::default()),
            Err(err) => Err(io_error(&manifest, err)),
        }
    }

    /// Whether every file in `files` exists.
    pub fn has_all(&self, files: &[String]) -> bool {
        files.iter().all(|file| self.root.join(file).is_file())
    }

    /// Writes `bytes` to `rel` unless the file already holds exactly them;
    /// true when it was written.
    pub fn write(&self, rel: &str, bytes: &[u8]) -> Result<bool, SiteError> {
        let path = self.root.join(rel);
        if unchanged(&path, bytes) {
            return Ok(false);
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temporary = path.with_file_name(format!(".{name}.icyci-tmp"));
        fs::write(&temporary, bytes).map_err(|e| io_error(&temporary, e))?;
        fs::rename(&temporary, &path).map_err(|e| io_error(&path, e))?;
        Ok(true)
    }

    /// Removes `rel` and then its parent directories that became empty;
    /// true when the file was there.
    pub fn remove(&self, rel: &str) -> Result<bool, SiteError> {
        let path = self.root.join(rel);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(io_error(&path, err)),
        }
        let mut dir = path.parent();
        while let Some(parent) = dir.filter(|d| *d != self.root && d.starts_with(&self.root)) {
            if fs::remove_dir(parent).is_err() {
                break; // not empty
            }
            dir = parent.parent();
        }
        Ok(true)
    }
}

fn unchanged(path: &Path, bytes: &[u8]) -> bool {
    let same_size = fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == bytes.len() as u64);
    same_size && fs::read(path).is_ok_and(|old| old == bytes)
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

fn io_error(path: &Path, source: io::Error) -> SiteError {
    SiteError::Io {
        path: display(path),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_only_changes_and_prunes_empty_directories() {
        let temp = tempfile::tempdir().expect("tempdir");
        let dir = SiteDir::new(temp.path());
        assert_eq!(dir.prepare().expect("empty dir"), Manifest::default());
        assert!(dir.write("raw/a/b/c", b"x").expect("write"));
        assert!(!dir.write("raw/a/b/c", b"x").expect("rewrite"));
        assert!(dir.write("raw/a/b/c", b"y").expect("change"));
        assert!(dir.write("raw/a/d", b"z").expect("write"));
        assert!(dir.remove("raw/a/b/c").expect("remove"));
        assert!(!temp.path().join("raw/a/b").exists());
        assert!(temp.path().join("raw/a/d").exists());
        assert!(!dir.remove("raw/a/b/c").expect("gone"));
    }

    #[test]
    fn a_foreign_directory_is_refused() {
        let temp = tempfile::tempdir().expect("tempdir");
        fs::write(temp.path().join("notes.txt"), "mine").expect("write");
        let refused = SiteDir::new(temp.path()).prepare();
        assert!(
            matches!(refused, Err(SiteError::NotASite(_))),
            "{refused:?}"
        );
    }
}
