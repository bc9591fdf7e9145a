//! The spool: staged results kept on disk until the push that carries them
//! succeeded, so that neither an unreachable results repository nor a
//! restart of the daemon loses them.
//!
//! One directory per tested commit, `spool/<commit>/`, holding:
//!
//! ```text
//! meta            key: value lines, in this order:
//!                   commit: <id>
//!                   job: <job name>                           (absent in older entries)
//!                   namespace: <notes namespace>              (absent in older entries)
//!                   passed: true | false
//!                   tag: <tag object id> <refs/tags/...>      (when pushed)
//!                   branch: <name>                            (when pushed)
//!                   branch-expected: <id>                     (the lease; absent: no branch yet)
//!                   note: <name>                              (one per note, in push order)
//! notes/<n>       the exact bytes of the n-th note (0, 1, ...)
//! ```
//!
//! An entry is written in `spool/.tmp-<commit>` (each file fsynced, then the
//! directory), and renamed into place, which is atomic; the spool directory
//! is fsynced after the rename. A `.tmp-*` leftover is a write that a crash
//! interrupted: it is removed when the spool is opened and never pushed.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::config::BranchName;
use crate::publish::{BranchUpdate, StagedNote};
use crate::verify::VerifiedTag;
use crate::workspace::remove_tree;

const TMP_PREFIX: &str = ".tmp-";

/// One spooled publication.
#[derive(Debug, Clone)]
pub struct SpoolEntry {
    /// The tested commit.
    pub commit: String,
    /// The job that wrote it ([`crate::config::job_name`]: source, branch
    /// and namespace); `None` in entries written before it was recorded.
    pub job: Option<String>,
    /// The notes namespace the results belong to (`None`: likewise).
    pub namespace: Option<String>,
    /// The verdict.
    pub passed: bool,
    /// The verified tag to push, if any.
    pub tag: Option<VerifiedTag>,
    /// The branch to push, with its lease.
    pub branch: Option<BranchUpdate>,
    /// The notes, in push order; once read back, the files are in the spool.
    pub notes: Vec<StagedNote>,
}

/// The spool directory of one job.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// Opens (creating it, mode 0700) `<state_dir>/spool` and removes the
    /// leftovers of interrupted writes.
    pub fn open(state_dir: &Path) -> io::Result<Self> {
        let dir = state_dir.join("spool");
        create_private_dir_all(&dir)?;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                tracing::warn!(
                    path = %entry.path().display(),
                    "removing a half-written spool entry"
                );
                remove_tree(&entry.path())?;
            }
        }
        Ok(Spool { dir })
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `entry` atomically, copying its note files, and replaces an
    /// older entry of the same commit.
    pub fn write(&self, entry: &SpoolEntry) -> io::Result<()> {
        check_commit(&entry.commit)?;
        let tmp = self.dir.join(format!("{TMP_PREFIX}{}", entry.commit));
        remove_tree(&tmp)?;
        create_private_dir_all(&tmp.join("notes"))?;

        let mut meta = format!("commit: {}\n", entry.commit);
        if let Some(job) = &entry.job {
            meta.push_str(&format!("job: {job}\n"));
        }
        if let Some(namespace) = &entry.namespace {
            meta.push_str(&format!("namespace: {namespace}\n"));
        }
        meta.push_str(&format!("passed: {}\n", entry.passed));
        if let Some(tag) = &entry.tag {
            meta.push_str(&format!("tag: {} {}\n", tag.object, tag.refname));
        }
        if let Some(branch) = &entry.branch {
            meta.push_str(&format!("branch: {}\n", branch.branch));
            if let Some(expected) = &branch.expected {
                meta.push_str(&format!("branch-expected: {expected}\n"));
            }
        }
        for (index, note) in entry.notes.iter().enumerate() {
            if note.name.contains('\n') {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "note name with a newline",
                ));
            }
            meta.push_str(&format!("note: {}\n", note.name));
            // Outputs can be tens of megabytes: copied as a stream.
            let mut from = File::open(&note.file)?;
            let mut to = File::create(tmp.join("notes").join(index.to_string()))?;
            io::copy(&mut from, &mut to)?;
            to.sync_all()?;
        }
        let mut file = File::create(tmp.join("meta"))?;
        file.write_all(meta.as_bytes())?;
        file.sync_all()?;
        sync_dir(&tmp.join("notes"))?;
        sync_dir(&tmp)?;

        let target = self.dir.join(&entry.commit);
        if target.exists() {
            // A directory is not renamed over a non-empty one: move the old
            // entry aside first (a crash now leaves the new one in .tmp-*,
            // removed at start, and the commit is retested after its lease).
            let old = self.dir.join(format!("{TMP_PREFIX}old-{}", entry.commit));
            remove_tree(&old)?;
            fs::rename(&target, &old)?;
            fs::rename(&tmp, &target)?;
            remove_tree(&old)?;
        } else {
            fs::rename(&tmp, &target)?;
        }
        sync_dir(&self.dir)
    }

    /// Every complete entry, oldest commit directory first; entries that
    /// cannot be read are reported and left in place.
    pub fn entries(&self) -> io::Result<Vec<SpoolEntry>> {
        let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                continue;
            }
            let modified = entry.metadata()?.modified()?;
            dirs.push((modified, entry.path()));
        }
        dirs.sort();
        let mut entries = Vec::new();
        for (_, dir) in dirs {
            match read_entry(&dir) {
                Ok(entry) => entries.push(entry),
                Err(err) => tracing::warn!(
                    path = %dir.display(),
                    "spool entry not readable, left in place: {err}"
                ),
            }
        }
        Ok(entries)
    }

    /// Removes the entry of `commit` (nothing if there is none).
    pub fn remove(&self, commit: &str) -> io::Result<()> {
        check_commit(commit)?;
        remove_tree(&self.dir.join(commit))?;
        sync_dir(&self.dir)
    }
}

fn read_entry(dir: &Path) -> io::Result<SpoolEntry> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let meta = fs::read_to_string(dir.join("meta"))?;
    let mut commit = None;
    let mut job = None;
    let mut namespace = None;
    let mut passed = None;
    let mut tag = None;
    let mut branch = None;
    let mut expected = None;
    let mut notes = Vec::new();
    for line in meta.lines() {
        let (key, value) = line
            .split_once(": ")
            .ok_or_else(|| invalid("bad meta line"))?;
        match key {
            "commit" => commit = Some(value.to_owned()),
            "job" => job = Some(value.to_owned()),
            "namespace" => namespace = Some(value.to_owned()),
            "passed" => passed = Some(value == "true"),
            "tag" => {
                let (object, refname) = value.split_once(' ').ok_or_else(|| invalid("bad tag"))?;
                tag = Some(VerifiedTag {
                    object: object.to_owned(),
                    refname: refname.to_owned(),
                });
            }
            "branch" => {
                branch = Some(BranchName::new(value).map_err(|_| invalid("bad branch"))?);
            }
            "branch-expected" => expected = Some(value.to_owned()),
            "note" => {
                let file = dir.join("notes").join(notes.len().to_string());
                if !file.is_file() {
                    return Err(invalid("note file missing"));
                }
                notes.push(StagedNote {
                    name: value.to_owned(),
                    file,
                });
            }
            _ => return Err(invalid("unknown meta key")),
        }
    }
    let commit = commit.ok_or_else(|| invalid("no commit"))?;
    check_commit(&commit)?;
    if dir.file_name() != Some(commit.as_ref()) {
        return Err(invalid("commit does not match the directory name"));
    }
    Ok(SpoolEntry {
        commit,
        job,
        namespace,
        passed: passed.ok_or_else(|| invalid("no verdict"))?,
        tag,
        branch: branch.map(|branch| BranchUpdate { branch, expected }),
        notes,
    })
}

/// Commit ids name directories: only hexadecimal object ids are accepted.
fn check_commit(commit: &str) -> io::Result<()> {
    let valid = matches!(commit.len(), 40 | 64) && commit.bytes().all(|b| b.is_ascii_hexdigit());
    if valid {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not an object id: {commit:?}"),
        ))
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and its missing parents with mode 0700.
pub fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn entry(dir: &Path) -> SpoolEntry {
        let stdout = dir.join("stdout");
        fs::write(&stdout, b"line\n\0binary\r\n").expect("write");
        let verdict = dir.join("verdict");
        fs::write(&verdict, b"").expect("write");
        SpoolEntry {
            commit: COMMIT.to_owned(),
            job: Some("git_h_x.git@main@icyci-x86-0123456789ab".to_owned()),
            namespace: Some("icyci-x86".to_owned()),
            passed: false,
            tag: Some(VerifiedTag {
                object: "f".repeat(40),
                refname: "refs/tags/v1".to_owned(),
            }),
            branch: Some(BranchUpdate {
                branch: BranchName::new("main").expect("branch"),
                expected: Some("e".repeat(40)),
            }),
            notes: vec![
                StagedNote {
                    name: "output.stdout".to_owned(),
                    file: stdout,
                },
                StagedNote {
                    name: "result.failed".to_owned(),
                    file: verdict,
                },
            ],
        }
    }

    #[test]
    fn entries_read_back_byte_for_byte() {
        let state = tempfile::tempdir().expect("tempdir");
        let staged = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(state.path()).expect("open");
        let written = entry(staged.path());
        spool.write(&written).expect("write");
        spool.write(&written).expect("an entry is replaced");

        let read = spool.entries().expect("entries");
        assert_eq!(read.len(), 1);
        let read = &read[0];
        assert_eq!(read.commit, COMMIT);
        assert_eq!(read.namespace.as_deref(), Some("icyci-x86"));
        assert_eq!(read.job, written.job);
        assert!(!read.passed);
        assert_eq!(read.tag, written.tag);
        let branch = read.branch.as_ref().expect("branch");
        assert_eq!(branch.branch.to_string(), "main");
        assert_eq!(branch.expected.as_deref(), Some("e".repeat(40).as_str()));
        let names: Vec<_> = read.notes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["output.stdout", "result.failed"]);
        assert_eq!(
            fs::read(&read.notes[0].file).expect("read"),
            b"line\n\0binary\r\n"
        );
        assert!(read.notes[0].file.starts_with(spool.dir()));

        spool.remove(COMMIT).expect("remove");
        assert!(spool.entries().expect("entries").is_empty());
    }

    #[test]
    fn half_written_entries_are_removed_at_open() {
        let state = tempfile::tempdir().expect("tempdir");
        let tmp = state.path().join("spool").join(format!(".tmp-{COMMIT}"));
        create_private_dir_all(&tmp.join("notes")).expect("mkdir");
        fs::write(tmp.join("meta"), format!("commit: {COMMIT}\n")).expect("write");
        let spool = Spool::open(state.path()).expect("open");
        assert!(!tmp.exists());
        assert!(spool.entries().expect("entries").is_empty());
    }

    #[test]
    fn refuses_names_that_are_not_object_ids() {
        let state = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(state.path()).expect("open");
        assert!(spool.remove("../x").is_err());
        let mut bad = entry(state.path());
        bad.commit = "../../etc".to_owned();
        assert!(spool.write(&bad).is_err());
    }
}
