//! Reads the files a test script left in `$ICYCI_NOTES_DIR`, each of which
//! becomes a note `refs/notes/<ns>.<file name>`.
//!
//! The script is untrusted in what it leaves behind: the directory itself
//! may have been swapped for a link, entries may be links, pipes or devices,
//! and names may be anything a file system allows. The directory and every
//! entry are opened without following links, only regular files are taken,
//! each is copied at once into the daemon's private directory (so it cannot
//! change between check and use), and names that would not form a ref in
//! the namespace, or would collide with the daemon's own notes, are refused.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, Mode, SFlag};
use tracing::warn;

use crate::config::NotesNamespace;

/// At most this many extra notes are taken from one run.
pub const MAX_EXTRA_NOTES: usize = 1024;

/// An extra note staged for publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraNote {
    /// Note name: the part after `refs/notes/<ns>.`.
    pub name: String,
    /// The daemon's private copy of the content.
    pub copy: PathBuf,
}

/// The notes of the whole stdout and stderr, kept with `-keep-full-output`.
pub const FULL_OUTPUT_NOTES: [&str; 2] = ["full-output.stdout", "full-output.stderr"];

/// The note names icyci itself writes or reads as a commit's state.
const OWN_NOTE_NAMES: [&str; 9] = [
    "lock",
    "locked",
    "verified",
    "result.passed",
    "result.failed",
    "output.stdout",
    "output.stderr",
    "full-output.stdout",
    "full-output.stderr",
];

/// Why a file name cannot be a note name, or `None` if it can.
pub fn refuse_note_name(namespace: &NotesNamespace, name: &str) -> Option<&'static str> {
    if name == "lock" {
        return Some("the name 'lock' is reserved");
    }
    if OWN_NOTE_NAMES.contains(&name)
        || name.starts_with("output.")
        || name.starts_with("result.")
        || name.starts_with("full-output.")
    {
        return Some("the name collides with icyci's own notes");
    }
    // A name ending like one of icyci's notes would make the refs of
    // another namespace: `arm.locked` is the lock of namespace `<ns>.arm`.
    if OWN_NOTE_NAMES.iter().any(|own| {
        name.strip_suffix(own)
            .is_some_and(|rest| rest.ends_with('.'))
    }) {
        return Some("the name ends like icyci's own notes (it would read as another namespace's)");
    }
    // Git allows '/' in a ref name, but a note name is a single file name
    // inside the namespace (`a/b` would nest under `<ns>.a`, and
    // `locked/x` would block the lock ref).
    if let Some(reason) = namespace.unusable_note_name(name) {
        return Some(reason);
    }
    // A C1 control such as U+009B can drive a terminal that lists the refs.
    if name.chars().any(char::is_control) {
        return Some("the name contains a control character");
    }
    None
}

/// Copies every acceptable regular file of `notes_dir` into `copy_dir` and
/// returns them sorted by name; everything skipped is logged with why.
pub fn collect_extra_notes(
    notes_dir: &Path,
    copy_dir: &Path,
    namespace: &NotesNamespace,
) -> Vec<ExtraNote> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut dir = match Dir::open(notes_dir, flags, Mode::empty()) {
        Ok(dir) => dir,
        Err(nix::errno::Errno::ENOENT) => return Vec::new(),
        Err(err) => {
            warn!(dir = %notes_dir.display(), "notes directory not read (replaced by a link or not a directory?): {err}");
            return Vec::new();
        }
    };

    let mut names: Vec<String> = Vec::new();
    for entry in dir.iter().flatten() {
        let raw = entry.file_name().to_bytes();
        if raw == b"." || raw == b".." {
            continue;
        }
        match std::str::from_utf8(raw) {
            Ok(name) => names.push(name.to_owned()),
            Err(_) => {
                warn!(name = %String::from_utf8_lossy(raw), "skipping notes file: name is not UTF-8")
            }
        }
    }
    names.sort();
    if names.len() > MAX_EXTRA_NOTES {
        warn!(
            "notes directory has {} entries; only the first {MAX_EXTRA_NOTES} are considered",
            names.len()
        );
        names.truncate(MAX_EXTRA_NOTES);
    }

    let mut notes = Vec::new();
    for name in names {
        if let Some(reason) = refuse_note_name(namespace, &name) {
            warn!(name = ?name, "skipping notes file: {reason}");
            continue;
        }
        let copy = copy_dir.join(format!("extra-{}", notes.len()));
        match copy_regular_file(&dir, &name, &copy) {
            Ok(true) => notes.push(ExtraNote { name, copy }),
            Ok(false) => warn!(name = ?name, "skipping notes file: not a regular file"),
            Err(err) => warn!(name = ?name, "skipping notes file: {err}"),
        }
    }
    notes
}

/// Copies `name` from `dir` to `copy` if it is a regular file, without
/// following a link and without blocking on a FIFO.
fn copy_regular_file(dir: &Dir, name: &str, copy: &Path) -> io::Result<bool> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let fd = match openat(dir.as_fd(), name, flags, Mode::empty()) {
        Ok(fd) => fd,
        // O_NOFOLLOW on a link.
        Err(nix::errno::Errno::ELOOP) => return Ok(false),
        Err(err) => return Err(err.into()),
    };
    let stat = fstat(&fd)?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Ok(false);
    }
    let mut source = File::from(fd);
    let mut target = File::create(copy)?;
    io::copy(&mut source, &mut target)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns() -> NotesNamespace {
        NotesNamespace::new("icyci").expect("valid namespace")
    }

    #[test]
    fn refused_names() {
        for name in [
            "lock",
            "locked",
            "verified",
            "result.passed",
            "output.stdout",
            "full-output.stderr",
            "my report.txt",
            "a..b",
            "x.lock",
            ".hidden",
            "tab\there",
            "bad:name",
            "a/b",
            "csi\u{9b}31m",
            "nel\u{85}",
            "arm.locked",
            "extra.result.passed",
            "x.result.failed",
            "other.verified",
            "ns.output.stdout",
            "ns.full-output.stderr",
        ] {
            assert!(
                refuse_note_name(&ns(), name).is_some(),
                "{name:?} must be refused"
            );
        }
        // `<ns>.<name>.lock` must fit in 255 bytes: "icyci" takes 6 + 5.
        assert!(refuse_note_name(&ns(), &"n".repeat(245)).is_some());
        assert!(refuse_note_name(&ns(), &"n".repeat(244)).is_none());
        for name in [
            "report",
            "build.log",
            "coverage-summary",
            "résumé",
            "unlocked",
        ] {
            assert!(
                refuse_note_name(&ns(), name).is_none(),
                "{name:?} must be accepted"
            );
        }
    }

    #[test]
    fn collects_only_safe_regular_files() {
        let root = tempfile::tempdir().expect("tempdir");
        let notes = root.path().join("notes");
        let copies = root.path().join("copies");
        std::fs::create_dir_all(&notes).expect("mkdir");
        std::fs::create_dir_all(&copies).expect("mkdir");
        std::fs::write(notes.join("good"), b"\x00\xffbinary").expect("write");
        std::fs::write(notes.join("lock"), b"x").expect("write");
        std::fs::write(root.path().join("secret"), b"secret").expect("write");
        std::os::unix::fs::symlink(root.path().join("secret"), notes.join("link")).expect("link");
        std::fs::create_dir(notes.join("subdir")).expect("mkdir");
        nix::unistd::mkfifo(&notes.join("fifo"), Mode::S_IRWXU).expect("fifo");

        let collected = collect_extra_notes(&notes, &copies, &ns());
        assert_eq!(collected.len(), 1, "{collected:?}");
        assert_eq!(collected[0].name, "good");
        assert_eq!(
            std::fs::read(&collected[0].copy).expect("read"),
            b"\x00\xffbinary"
        );
    }

    #[test]
    fn a_linked_directory_is_not_read() {
        let root = tempfile::tempdir().expect("tempdir");
        let outside = root.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        std::fs::write(outside.join("stolen"), b"x").expect("write");
        std::os::unix::fs::symlink(&outside, root.path().join("notes")).expect("link");
        let collected = collect_extra_notes(&root.path().join("notes"), root.path(), &ns());
        assert!(collected.is_empty());
    }
}
