//! The job's workspace, kept in its state directory and guarded by a lock
//! file, so that two processes of the same job never share it:
//!
//! ```text
//! <state dir>/
//!   .icyci-state     marks the directory as icyci's (stays)
//!   lock             flock(2)ed while an instance runs; holds its pid (stays)
//!   spool/           results not yet pushed (stays; see crate::spool)
//!   workspace/       source/ (the clone), notes/ ($ICYCI_NOTES_DIR)
//!   private-XXXXXX/  the daemon's own files, under a name the script is not told
//! ```
//!
//! `workspace/` and the private directory are removed when the job ends
//! (normal exit, SIGTERM, SIGINT or SIGHUP, all of which return through
//! `main`); the lock file and the spool stay. An instance that was killed
//! (SIGKILL, a crash, power loss) leaves them behind, and the next instance
//! with the same state directory reclaims them at start, while it holds the
//! lock: processes still working in them are killed, the private
//! directories are removed, and the clone is kept for reuse only if it was
//! completed (its marker, written after the clone and its remotes were set
//! up, is there); then its stale lock and temporary files and its work tree
//! and index are removed, so the next run starts from a forced checkout
//! into an empty tree. Anything else there is removed.
//!
//! Reclaiming kills and deletes, so it only ever happens in a directory
//! icyci can tell is its own: one it created, found empty, or found marked
//! (`.icyci-state`). A directory without the marker that holds only a
//! spool (the version before the marker kept nothing else here) is marked
//! and taken; anything else is refused before the lock file is made (see
//! [`OpenError::Foreign`]).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::config::JobConfig;

/// Name of the notes repository in the private directory.
const RESULTS_REPOSITORY: &str = "results.git";

/// The lock file in the state directory.
pub const LOCK_FILE: &str = "lock";
/// The workspace directory in the state directory.
pub const WORKSPACE_DIR: &str = "workspace";
/// Prefix of the private directories in the state directory.
pub const PRIVATE_PREFIX: &str = "private-";
/// Written into `source/.git` once the clone and its remotes are set up.
const CLONE_MARKER: &str = "icyci-clone";
/// Marks a state directory as icyci's: only there does icyci reclaim, kill
/// and delete.
pub const STATE_MARKER: &str = ".icyci-state";
/// What the marker says, for whoever finds it.
const STATE_MARKER_TEXT: &str = "icyci state directory: one job's lock, spool and workspace.\n\
                                 icyci removes and kills what it finds in workspace/ and \
                                 private-*/ here; keep nothing else in this directory.\n";
/// The spool directory in the state directory (see crate::spool).
const SPOOL_DIR: &str = "spool";

/// Why the workspace could not be set up.
#[derive(Debug, Error)]
pub enum OpenError {
    /// Another live process holds the state directory's lock.
    #[error(
        "the state directory {} is in use by another icyci instance{}; give each instance of \
         the same job its own -state-dir",
        dir.display(),
        holder.map_or(String::new(), |pid| format!(" (pid {pid})"))
    )]
    Busy {
        /// The state directory.
        dir: PathBuf,
        /// The pid the holder wrote into the lock file, if readable.
        holder: Option<u32>,
    },
    /// The state directory is not one icyci can tell is its own: nothing
    /// in it was touched.
    #[error("the state directory {} {reason}; give -state-dir an empty or new directory", dir.display())]
    Foreign {
        /// The state directory.
        dir: PathBuf,
        /// Why it is not icyci's.
        reason: String,
    },
    /// The lock file or a directory could not be made.
    #[error("cannot set up the workspace in {}: {source}", dir.display())]
    Io {
        /// The state directory.
        dir: PathBuf,
        /// What failed.
        source: io::Error,
    },
}

/// Directory layout of one job's workspace, with the lock that makes it
/// this process's own.
#[derive(Debug)]
pub struct Workspace {
    root: PathBuf,
    private: PathBuf,
    /// A completed clone left by an earlier instance, not yet reused or
    /// given up.
    leftover_clone: bool,
    // Dropped last: the directories are removed while the lock is held.
    // Opened with O_CLOEXEC (as Rust opens every file), so neither git nor
    // the test script inherits it and keeps the lock after the daemon died.
    _lock: Flock<File>,
}

impl Workspace {
    /// Checks that `state_dir` (which must exist) is icyci's and marks it,
    /// takes its lock, reclaims what a dead instance left there, and
    /// creates `workspace/` and a new private directory. Refused with
    /// [`OpenError::Foreign`] for a directory icyci cannot tell is its own,
    /// and with [`OpenError::Busy`] while another process holds the lock;
    /// nothing is touched then.
    pub fn open(state_dir: &Path) -> Result<Self, OpenError> {
        let io_error = |source| OpenError::Io {
            dir: state_dir.to_owned(),
            source,
        };
        // /proc shows resolved paths: compare with the same.
        let dir = fs::canonicalize(state_dir).map_err(io_error)?;
        // Before the lock file: it would overwrite a foreign `lock`.
        claim_state_dir(&dir).map_err(|err| match err {
            ClaimError::Foreign(reason) => OpenError::Foreign {
                dir: state_dir.to_owned(),
                reason,
            },
            ClaimError::Io(err) => io_error(err),
        })?;
        let lock = take_lock(&dir.join(LOCK_FILE)).map_err(|err| match err {
            LockError::Busy(holder) => OpenError::Busy {
                dir: state_dir.to_owned(),
                holder,
            },
            LockError::Io(err) => io_error(err),
        })?;
        let root = dir.join(WORKSPACE_DIR);
        let leftover_clone = reclaim(&dir, &root).map_err(io_error)?;
        match make_private_dir(&root) {
            Err(err) if err.kind() != io::ErrorKind::AlreadyExists => return Err(io_error(err)),
            _ => {}
        }
        let private = create_private_dir_in(&dir).map_err(io_error)?;
        Ok(Workspace {
            root,
            private,
            leftover_clone,
            _lock: lock,
        })
    }

    /// Workspace root.
    pub fn root(&self) -> &Path {
        &self.root
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
        self.private.clone()
    }

    /// Whether a completed clone left by a dead instance waits in
    /// `source/`, cleaned (see the module documentation) but not yet
    /// reused or given up.
    pub fn has_leftover_clone(&self) -> bool {
        self.leftover_clone
    }

    /// The leftover clone has been reused, or is given up (the caller then
    /// removes it): from now on `source/` is only ever cloned afresh.
    pub fn settle_leftover_clone(&mut self) {
        self.leftover_clone = false;
    }

    /// Whether the clone in `source/` may be reused by this job: its marker
    /// says it was completed for the same source, branch, reference,
    /// results repository and namespace, and its git configuration is the
    /// one it had then (a test script may have changed it). The error says
    /// why not.
    pub fn check_clone_marker(&self, config: &JobConfig) -> Result<(), String> {
        let git_dir = self.source_dir().join(".git");
        let marker = read_regular_file(&git_dir.join(CLONE_MARKER))
            .map_err(|err| format!("its completion marker cannot be read: {err}"))?;
        let git_config = read_regular_file(&git_dir.join("config"))
            .map_err(|err| format!("its git configuration cannot be read: {err}"))?;
        let marker = String::from_utf8_lossy(&marker);
        let mut lines = marker.lines();
        if lines.next() != Some(job_line(config).as_str()) {
            return Err(
                "it was made for another source, branch, reference, results repository or \
                 namespace"
                    .to_owned(),
            );
        }
        if lines.next() != Some(config_line(&git_config).as_str()) {
            return Err("its git configuration was changed after the clone".to_owned());
        }
        Ok(())
    }

    /// Records that the clone in `source/` is complete and set up for this
    /// job, with its git configuration as it is now. Written to a
    /// temporary file, synced and renamed, so a crash never leaves a
    /// marker half written.
    pub fn mark_clone_complete(&self, config: &JobConfig) -> io::Result<()> {
        let git_dir = self.source_dir().join(".git");
        let git_config = read_regular_file(&git_dir.join("config"))?;
        let text = format!("{}\n{}\n", job_line(config), config_line(&git_config));
        let tmp = git_dir.join(format!("{CLONE_MARKER}.tmp"));
        remove_without_following(&tmp)?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, git_dir.join(CLONE_MARKER))?;
        File::open(&git_dir)?.sync_all()
    }

    /// Removes the completion marker of the clone in `source/`, before the
    /// clone itself is removed.
    pub fn unmark_clone(&self) -> io::Result<()> {
        match remove_without_following(&self.source_dir().join(".git").join(CLONE_MARKER)) {
            // A script replaced `.git` with a file: no marker either.
            Err(err) if err.kind() == io::ErrorKind::NotADirectory => Ok(()),
            other => other,
        }
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
        // Unmarked first, like any clone removed (see `remove_clone`).
        let _ = self.unmark_clone();
        for dir in [&self.root, &self.private] {
            if let Err(err) = remove_without_following(dir) {
                tracing::warn!(dir = %dir.display(), "workspace not removed: {err}");
            }
        }
    }
}

enum ClaimError {
    Foreign(String),
    Io(io::Error),
}

impl From<io::Error> for ClaimError {
    fn from(err: io::Error) -> Self {
        ClaimError::Io(err)
    }
}

/// Accepts `dir` as a state directory when it carries the marker, is
/// empty, or holds only what the version before the marker made there (a
/// `spool/` of commit entries; it kept its workspace elsewhere): then it is
/// marked. Refuses anything else without touching it.
fn claim_state_dir(dir: &Path) -> Result<(), ClaimError> {
    if !fs::metadata(dir)?.is_dir() {
        return Err(ClaimError::Foreign("is not a directory".to_owned()));
    }
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        names.push(entry?.file_name());
    }
    names.sort();
    // Listed after the directory was read: an instance starting beside
    // this one may have marked it meanwhile.
    if names.iter().any(|name| name == STATE_MARKER) {
        return match fs::symlink_metadata(dir.join(STATE_MARKER)) {
            Ok(meta) if meta.is_file() => Ok(()),
            Ok(_) => Err(ClaimError::Foreign(format!(
                "has a {STATE_MARKER} that is not a regular file"
            ))),
            Err(err) => Err(err.into()),
        };
    }
    if let Some(why) = unlike_an_old_state_dir(dir, &names)? {
        return Err(ClaimError::Foreign(format!(
            "is not empty and is not an icyci state directory (no {STATE_MARKER}; {why})"
        )));
    }
    if !names.is_empty() {
        tracing::info!(
            state_dir = %dir.display(),
            "marking the state directory of an earlier version with {STATE_MARKER}"
        );
    }
    write_state_marker(dir)?;
    Ok(())
}

/// Why the entries `names` of `dir` are not what the version before the
/// marker left there (nothing, or a `spool/` of commit entries), if not.
/// Its lock file and workspace never lived here: a `lock` or `workspace/`
/// without the marker is somebody else's.
fn unlike_an_old_state_dir(dir: &Path, names: &[std::ffi::OsString]) -> io::Result<Option<String>> {
    for name in names {
        let shown = name.to_string_lossy();
        if name == LOCK_FILE || name == WORKSPACE_DIR || shown.starts_with(PRIVATE_PREFIX) {
            return Ok(Some(format!(
                "it holds {shown}, which icyci makes only beside its marker"
            )));
        }
        if name != SPOOL_DIR {
            return Ok(Some(format!("it holds {shown}, which icyci does not make")));
        }
        if !fs::symlink_metadata(dir.join(name))?.is_dir() {
            return Ok(Some(format!("its {shown} is not a directory")));
        }
        if let Some(entry) = foreign_spool_entry(&dir.join(name))? {
            return Ok(Some(format!(
                "its {SPOOL_DIR} holds {entry}, which icyci does not make"
            )));
        }
    }
    Ok(None)
}

/// The first entry of a spool directory that is neither a commit id nor a
/// half-written entry (`.tmp-*`).
fn foreign_spool_entry(spool: &Path) -> io::Result<Option<String>> {
    for entry in fs::read_dir(spool)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        let commit = matches!(name.len(), 40 | 64) && name.bytes().all(|b| b.is_ascii_hexdigit());
        if !commit && !name.starts_with(".tmp-") {
            return Ok(Some(name.into_owned()));
        }
    }
    Ok(None)
}

/// Writes the marker, synced, so a crash right after leaves it in place.
/// Another instance racing to mark the same directory writes the same.
fn write_state_marker(dir: &Path) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(dir.join(STATE_MARKER))?;
    file.write_all(STATE_MARKER_TEXT.as_bytes())?;
    file.sync_all()?;
    File::open(dir)?.sync_all()
}

enum LockError {
    Busy(Option<u32>),
    Io(io::Error),
}

/// Takes the lock file without waiting, and writes this process's pid
/// into it for the message of an instance refused later.
fn take_lock(path: &Path) -> Result<Flock<File>, LockError> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        // Never a link to somewhere else.
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(LockError::Io)?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let holder = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            return Err(LockError::Busy(holder));
        }
        Err((_, errno)) => return Err(LockError::Io(errno.into())),
    };
    lock.set_len(0).map_err(LockError::Io)?;
    writeln!(lock, "{}", std::process::id()).map_err(LockError::Io)?;
    Ok(lock)
}

/// Reclaims what a dead instance left in the state directory `dir`;
/// returns whether a completed clone was kept in `root/source` for reuse.
fn reclaim(dir: &Path, root: &Path) -> io::Result<bool> {
    let mut privates = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(PRIVATE_PREFIX)
        {
            privates.push(entry.path());
        }
    }
    let mut leftovers: Vec<&Path> = privates.iter().map(PathBuf::as_path).collect();
    if fs::symlink_metadata(root).is_ok() {
        leftovers.push(root);
    }
    if leftovers.is_empty() {
        return Ok(false);
    }
    tracing::info!(
        state_dir = %dir.display(),
        "reclaiming the workspace left by an instance that did not exit cleanly"
    );
    // Its git children and what its test script left running would
    // otherwise go on writing into the directories reused below.
    kill_processes_working_in(&leftovers);
    for private in &privates {
        remove_without_following(private)?;
    }

    let is_dir = fs::symlink_metadata(root).is_ok_and(|meta| meta.is_dir());
    if !is_dir {
        remove_without_following(root)?;
        return Ok(false);
    }
    let source = root.join("source");
    let mut keep_source = completed_clone(&source);
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        if entry.file_name() != "source" || !keep_source {
            remove_without_following(&entry.path())?;
        }
    }
    if keep_source {
        match clean_clone(&source) {
            Ok(removed) => tracing::info!(
                clone = %source.display(),
                "kept the completed clone for reuse; removed its work tree, its index and \
                 {removed} stale lock and temporary files"
            ),
            Err(err) => {
                tracing::warn!(clone = %source.display(), "clone not reusable: {err}");
                remove_clone(&source)?;
                keep_source = false;
            }
        }
    } else {
        tracing::info!("no completed clone in the workspace: the source is cloned afresh");
    }
    Ok(keep_source)
}

/// A clone whose `.git` is a directory holding the completion marker.
/// `source` itself must be a directory, not a link: cleaning the clone
/// would otherwise remove files wherever the link points.
fn completed_clone(source: &Path) -> bool {
    let git_dir = source.join(".git");
    fs::symlink_metadata(source).is_ok_and(|meta| meta.is_dir())
        && fs::symlink_metadata(&git_dir).is_ok_and(|meta| meta.is_dir())
        && fs::symlink_metadata(git_dir.join(CLONE_MARKER)).is_ok_and(|meta| meta.is_file())
}

/// Prepares a leftover clone for reuse: the work tree and the index go, so
/// a checkout its owner left half done is never tested (the next run's
/// forced checkout writes every file anew); so do the lock files of git
/// commands that were killed (which would make the next one fail) and the
/// temporary files of an interrupted fetch or gc. Returns how many of
/// those were removed.
fn clean_clone(source: &Path) -> io::Result<usize> {
    for entry in fs::read_dir(source)? {
        let entry = entry?;
        if entry.file_name() != ".git" {
            remove_without_following(&entry.path())?;
        }
    }
    let git_dir = source.join(".git");
    remove_without_following(&git_dir.join("index"))?;
    let mut removed = 0;
    remove_stale_files(&git_dir, &git_dir, &mut removed)?;
    Ok(removed)
}

fn remove_stale_files(git_dir: &Path, dir: &Path, removed: &mut usize) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            remove_stale_files(git_dir, &path, removed)?;
            continue;
        }
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let in_objects = path.starts_with(git_dir.join("objects"));
        let stale = name.ends_with(".lock")
            || name == "gc.pid"
            || name == format!("{CLONE_MARKER}.tmp")
            // tmp_pack_*, tmp_idx_*, tmp_obj_*, tmp_rev_*: a fetch, an
            // index-pack or a repack that did not finish.
            || (in_objects && name.starts_with("tmp_"))
            // A fetch keeps its new pack with a .keep file until its refs
            // are updated.
            || (path.parent() == Some(git_dir.join("objects/pack").as_path())
                && name.ends_with(".keep"));
        if stale {
            fs::remove_file(&path)?;
            *removed += 1;
        }
    }
    Ok(())
}

/// Kills (SIGKILL) the processes of this user whose working directory is
/// in one of `dirs`, and waits briefly for them to be gone. They belong to
/// a dead instance: the git commands it ran (a detached `git gc`, a fetch
/// whose parent died) and what its test script left running. A process
/// there for another reason (a shell an operator left in the clone) is
/// killed too; this process's own ancestors are spared. A process that
/// moved its working directory elsewhere is not found.
fn kill_processes_working_in(dirs: &[&Path]) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    let (Ok(me), Ok(entries)) = (fs::metadata("/proc/self"), fs::read_dir("/proc")) else {
        return;
    };
    let uid = me.uid();
    let spared = ancestors();
    let mut killed = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if spared.contains(&pid) || !entry.metadata().is_ok_and(|meta| meta.uid() == uid) {
            continue;
        }
        let Ok(cwd) = fs::read_link(entry.path().join("cwd")) else {
            continue;
        };
        let Some(dir) = dirs.iter().find(|dir| cwd.starts_with(dir)) else {
            continue;
        };
        let name = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        tracing::warn!(
            dir = %dir.display(),
            "killing process {pid} ({}) left working in the old workspace",
            name.trim()
        );
        if kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
            killed.push(pid);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !killed.is_empty() && Instant::now() < deadline {
        killed.retain(|pid| running(*pid));
        std::thread::sleep(Duration::from_millis(10));
    }
    for pid in killed {
        tracing::warn!("process {pid} is still there after SIGKILL");
    }
}

/// This process and its ancestors.
fn ancestors() -> Vec<u32> {
    let mut found = vec![std::process::id()];
    while let Some(parent) = fs::read_to_string(format!("/proc/{}/stat", found[found.len() - 1]))
        .ok()
        .and_then(|stat| crate::contain::parse_stat(&stat))
        .map(|entry| entry.parent as u32)
        .filter(|parent| *parent > 0 && !found.contains(parent))
    {
        found.push(parent);
    }
    found
}

/// Neither gone nor a zombie.
fn running(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| crate::contain::parse_stat(&stat))
        .is_some_and(|entry| !entry.zombie)
}

/// A new private directory `private-<random>` in `dir`, mode 0700.
fn create_private_dir_in(dir: &Path) -> io::Result<PathBuf> {
    loop {
        let path = dir.join(format!("{PRIVATE_PREFIX}{:016x}", fastrand::u64(..)));
        match make_private_dir(&path) {
            Ok(()) => return Ok(path),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err),
        }
    }
}

/// The first marker line: a digest of what the clone was made for (the
/// URLs may hold credentials, which stay out of the marker).
fn job_line(config: &JobConfig) -> String {
    let mut job = Sha256::new();
    for part in [
        config.source.as_git_arg(),
        config.branch.as_str(),
        config.source_reference.as_deref().unwrap_or(""),
        config.results.as_git_arg(),
        config.notes_ns.as_str(),
    ] {
        job.update(part.as_bytes());
        job.update([0]);
    }
    format!("job {:x}", job.finalize())
}

fn config_line(git_config: &[u8]) -> String {
    format!("config {:x}", Sha256::digest(git_config))
}

/// Reads a file that must be a regular file, never through a link.
fn read_regular_file(path: &Path) -> io::Result<Vec<u8>> {
    if !fs::symlink_metadata(path)?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a regular file", path.display()),
        ));
    }
    fs::read(path)
}

/// Removes the clone at `source`, its completion marker first: a removal
/// that a crash interrupts never leaves a marked clone with objects gone.
fn remove_clone(source: &Path) -> io::Result<()> {
    remove_without_following(&source.join(".git").join(CLONE_MARKER))?;
    remove_tree(source)
}

/// Removes the directory tree at `path` (nothing if it does not exist),
/// also when a test left directories without write or search permission
/// (read-only module caches, `chmod 000` build trees): those are made
/// accessible first. Links are removed, never followed.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::PermissionDenied => {
            make_accessible(path);
            fs::remove_dir_all(path)
        }
        Err(err) => Err(err),
    }
}

fn make_accessible(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            make_accessible(&entry.path());
        }
    }
}

fn make_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new().mode(0o700).create(dir)
}

/// Removes a directory tree, or just the link if `path` is a symlink.
fn remove_without_following(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => remove_tree(path),
        Ok(_) => fs::remove_file(path),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_dir() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    #[test]
    fn reset_removes_a_swapped_link_but_not_its_target() {
        let state = state_dir();
        let workspace = Workspace::open(state.path()).expect("workspace");
        let outside = tempfile::tempdir().expect("tempdir");
        fs::write(outside.path().join("keep"), b"x").expect("write");
        workspace.prepare_notes_dir().expect("notes dir");
        fs::remove_dir(workspace.notes_dir()).expect("rmdir");
        std::os::unix::fs::symlink(outside.path(), workspace.notes_dir()).expect("symlink");

        workspace.reset_staging().expect("reset");
        assert!(
            outside.path().join("keep").exists(),
            "link target must survive"
        );
        assert!(!workspace.notes_dir().exists());
        let (root, private) = (workspace.root().to_owned(), workspace.private_dir());
        drop(workspace);
        assert!(!root.exists(), "workspace removed on drop");
        assert!(!private.exists(), "private directory removed on drop");
        assert!(state.path().join(LOCK_FILE).exists(), "the lock file stays");
    }

    #[test]
    fn a_second_workspace_in_the_same_state_dir_is_refused_until_the_first_is_dropped() {
        let state = state_dir();
        let first = Workspace::open(state.path()).expect("workspace");
        match Workspace::open(state.path()) {
            Err(OpenError::Busy { holder, .. }) => assert_eq!(holder, Some(std::process::id())),
            other => panic!("not refused: {other:?}"),
        }
        drop(first);
        Workspace::open(state.path()).expect("free again");
    }

    #[test]
    fn leftovers_are_reclaimed_and_only_a_marked_clone_is_kept() {
        let state = state_dir();
        let dir = state.path();
        let git_dir = dir.join("workspace/source/.git");
        for path in [
            "private-0123/stdout",
            "workspace/notes/extra",
            "workspace/stray",
            "workspace/source/built.o",
            "workspace/source/.git/index",
            "workspace/source/.git/index.lock",
            "workspace/source/.git/refs/remotes/origin/main.lock",
            "workspace/source/.git/objects/pack/tmp_pack_abc",
            "workspace/source/.git/objects/pack/tmp_idx_abc",
            "workspace/source/.git/objects/pack/pack-1.pack",
            "workspace/source/.git/objects/pack/pack-1.keep",
            "workspace/source/.git/HEAD",
        ] {
            let path = dir.join(path);
            fs::create_dir_all(path.parent().unwrap()).expect("mkdir");
            fs::write(path, b"x").expect("write");
        }
        fs::write(git_dir.join(CLONE_MARKER), b"job x\nconfig y\n").expect("write");
        fs::write(dir.join(LOCK_FILE), b"4242\n").expect("write");
        write_state_marker(dir).expect("the marker of the killed instance");

        let workspace = Workspace::open(dir).expect("workspace");
        assert!(workspace.has_leftover_clone());
        let mut left: Vec<String> = Vec::new();
        collect(dir, dir, &mut left);
        left.retain(|p| !p.starts_with("private-") || p.starts_with("private-0123"));
        left.sort();
        assert_eq!(
            left,
            [
                ".icyci-state",
                "lock",
                "workspace",
                "workspace/source",
                "workspace/source/.git",
                "workspace/source/.git/HEAD",
                "workspace/source/.git/icyci-clone",
                "workspace/source/.git/objects",
                "workspace/source/.git/objects/pack",
                "workspace/source/.git/objects/pack/pack-1.pack",
                "workspace/source/.git/refs",
                "workspace/source/.git/refs/remotes",
                "workspace/source/.git/refs/remotes/origin",
            ]
        );
        drop(workspace);

        // Without the marker the clone goes.
        fs::create_dir_all(git_dir.join("objects")).expect("mkdir");
        let workspace = Workspace::open(dir).expect("workspace");
        assert!(!workspace.has_leftover_clone());
        assert!(!workspace.source_dir().exists());
    }

    /// Every path under `dir` with its contents (`None` for a directory).
    fn snapshot(dir: &Path) -> Vec<(String, Option<Vec<u8>>)> {
        let mut paths = Vec::new();
        collect(dir, dir, &mut paths);
        paths.sort();
        paths
            .into_iter()
            .map(|p| {
                let path = dir.join(&p);
                let bytes = (!path.is_dir()).then(|| fs::read(&path).expect("read"));
                (p, bytes)
            })
            .collect()
    }

    fn refused(dir: &Path) -> String {
        match Workspace::open(dir) {
            Err(err @ OpenError::Foreign { .. }) => err.to_string(),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_directory_that_is_not_a_state_directory_is_refused_untouched() {
        let state = state_dir();
        let dir = state.path();
        for (path, bytes) in [
            ("workspace/proj/f", &b"user data"[..]),
            ("lock", b"my lock"),
            ("private-x/g", b"mine"),
            (".bashrc", b"alias"),
        ] {
            let path = dir.join(path);
            fs::create_dir_all(path.parent().unwrap()).expect("mkdir");
            fs::write(path, bytes).expect("write");
        }
        let before = snapshot(dir);
        let message = refused(dir);
        assert!(
            message.contains("is not an icyci state directory (no .icyci-state; it holds .bashrc"),
            "{message}"
        );
        assert_eq!(snapshot(dir), before);

        // Names icyci uses, but no marker: a lock file, a workspace and a
        // private directory that are somebody else's (icyci never kept them
        // in an unmarked directory), even with a pid in the lock file.
        fs::remove_file(dir.join(".bashrc")).expect("rm");
        fs::write(dir.join("lock"), b"4242\n").expect("write");
        let before = snapshot(dir);
        assert!(refused(dir).contains("it holds lock, which icyci makes only beside its marker"));
        assert_eq!(snapshot(dir), before);
        fs::remove_file(dir.join("lock")).expect("rm");
        let before = snapshot(dir);
        assert!(refused(dir).contains("it holds private-x"));
        assert_eq!(snapshot(dir), before);

        // A marker that is not a file.
        fs::create_dir(dir.join(STATE_MARKER)).expect("mkdir");
        assert!(refused(dir).contains("has a .icyci-state that is not a regular file"));
        fs::remove_dir(dir.join(STATE_MARKER)).expect("rm");

        // A spool of other things.
        fs::remove_dir_all(dir.join("workspace")).expect("rm");
        fs::remove_dir_all(dir.join("private-x")).expect("rm");
        fs::create_dir_all(dir.join("spool/photos")).expect("mkdir");
        assert!(refused(dir).contains("its spool holds photos"));

        // A file, not a directory.
        let file = dir.join("spool/photos/a");
        fs::write(&file, b"x").expect("write");
        assert!(refused(&file).contains("is not a directory"));
    }

    #[test]
    fn empty_old_and_marked_state_directories_are_accepted_and_marked() {
        let state = state_dir();
        let dir = state.path();
        drop(Workspace::open(dir).expect("an empty directory"));
        assert_eq!(
            fs::read_to_string(dir.join(STATE_MARKER)).expect("the marker"),
            STATE_MARKER_TEXT
        );
        // Once marked, whatever is there.
        fs::write(dir.join("notes.txt"), b"x").expect("write");
        drop(Workspace::open(dir).expect("a marked directory"));

        // What the version before the marker left: a spool, nothing else.
        let old = state_dir();
        let dir = old.path();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        for sub in [format!("spool/{commit}/notes"), "spool/.tmp-x".to_owned()] {
            fs::create_dir_all(dir.join(sub)).expect("mkdir");
        }
        drop(Workspace::open(dir).expect("an old state directory"));
        assert!(dir.join(STATE_MARKER).is_file());
        assert!(dir.join("spool").join(commit).is_dir());
    }

    #[test]
    fn reclaiming_does_not_follow_links_out_of_the_state_directory() {
        let state = state_dir();
        let dir = state.path();
        drop(Workspace::open(dir).expect("workspace"));
        let outside = tempfile::tempdir().expect("tempdir");
        let target = outside.path();
        for path in [
            "tree/f",
            "tree/.git/icyci-clone",
            "tree/.git/index",
            "priv/p",
        ] {
            let path = target.join(path);
            fs::create_dir_all(path.parent().unwrap()).expect("mkdir");
            fs::write(path, b"x").expect("write");
        }
        let before = snapshot(target);
        fs::create_dir(dir.join("workspace")).expect("mkdir");
        std::os::unix::fs::symlink(target.join("tree"), dir.join("workspace/source"))
            .expect("symlink");
        std::os::unix::fs::symlink(target.join("priv"), dir.join("private-link")).expect("symlink");
        let workspace = Workspace::open(dir).expect("workspace");
        assert!(!workspace.has_leftover_clone());
        assert!(fs::symlink_metadata(dir.join("private-link")).is_err());
        assert!(fs::symlink_metadata(workspace.source_dir()).is_err());
        drop(workspace);

        // The whole workspace a link.
        std::os::unix::fs::symlink(target, dir.join("workspace")).expect("symlink");
        drop(Workspace::open(dir).expect("workspace"));
        assert_eq!(snapshot(target), before);
    }

    fn collect(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            out.push(
                path.strip_prefix(base)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
            if path.is_dir() {
                collect(base, &path, out);
            }
        }
    }
}
