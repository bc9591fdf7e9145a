//! Extra notes from `$ICYCI_NOTES_DIR` (SPEC section 5): what becomes a note, byte for byte, and
//! what is refused without costing the run its stdout, stderr and verdict notes.

use std::path::Path;

use crate::common::{require_tool, Sign};
use crate::verify::{commit_field, log_has_line, Setup};

#[test]
fn binary_and_empty_files_become_byte_exact_notes() {
    if !require_tool("gpg") {
        return;
    }
    let data: Vec<u8> = (0..=255u8).rev().chain(*b"\r\n\0no newline").collect();
    let s = Setup::with_script("");
    let blob = s.env.path("data/blob");
    write_file(&blob, &data);
    s.set_script(&format!(
        "cp '{}' \"$ICYCI_NOTES_DIR/blob\"\n: > \"$ICYCI_NOTES_DIR/empty\"\n\
         printf 'text\\n\\n' > \"$ICYCI_NOTES_DIR/report.txt\"\n",
        blob.display()
    ));
    let commit = signed_commit(&s);

    let (code, stderr) = s.once(&[]);
    assert_eq!(code, 0, "{stderr}");
    s.assert_passed(&commit);
    assert_eq!(s.note("blob", &commit), Some(data));
    assert_eq!(s.note("empty", &commit), Some(Vec::new()));
    assert_eq!(s.note("report.txt", &commit), Some(b"text\n\n".to_vec()));
}

#[test]
fn symlinks_are_skipped() {
    if !require_tool("gpg") {
        return;
    }
    let s = Setup::new();
    let secret = s.env.path("outside/secret");
    write_file(&secret, b"secret\n");
    s.set_script(&format!(
        "ln -s '{}' \"$ICYCI_NOTES_DIR/link\"\necho kept > \"$ICYCI_NOTES_DIR/kept\"\n\
         ln -s kept \"$ICYCI_NOTES_DIR/inner-link\"\n",
        secret.display()
    ));
    let commit = signed_commit(&s);

    let (code, stderr) = s.once(&[]);
    assert_eq!(code, 0, "{stderr}");
    s.assert_passed(&commit);
    assert_eq!(s.note("kept", &commit), Some(b"kept\n".to_vec()));
    for name in ["link", "inner-link"] {
        assert_eq!(s.note(name, &commit), None, "{name}");
        assert!(skipped(&stderr, name), "{name}: {stderr}");
    }
    assert_eq!(std::fs::read(&secret).expect("read secret"), b"secret\n");
}

#[test]
fn a_file_named_lock_is_skipped() {
    if !require_tool("gpg") {
        return;
    }
    let s = Setup::with_script("echo forged > \"$ICYCI_NOTES_DIR/lock\"\n");
    let commit = signed_commit(&s);

    let (code, stderr) = s.once(&[]);
    assert_eq!(code, 0, "{stderr}");
    s.assert_passed(&commit);
    assert_eq!(s.note("lock", &commit), None);
    assert!(!s
        .env
        .note_refs(&s.results)
        .contains(&"refs/notes/icyci.lock".to_string()));
    assert!(skipped(&stderr, "lock"), "{stderr}");
}

#[test]
fn names_that_are_not_valid_refs_are_skipped_with_a_log_line() {
    if !require_tool("gpg") {
        return;
    }
    let bad = [
        "a..b",
        "x.lock",
        ".hidden",
        "tab\there",
        "colon:name",
        "star*",
    ];
    let mut body = String::new();
    for name in bad {
        body.push_str(&format!("echo bad > \"$ICYCI_NOTES_DIR/{name}\"\n"));
    }
    body.push_str("echo good > \"$ICYCI_NOTES_DIR/good\"\n");
    let s = Setup::with_script(&body);
    let commit = signed_commit(&s);

    let (code, stderr) = s.once(&[]);
    assert_eq!(code, 0, "{stderr}");
    s.assert_passed(&commit);
    assert_eq!(s.note("good", &commit), Some(b"good\n".to_vec()));
    for name in bad {
        assert!(skipped(&stderr, name), "{name:?}: {stderr}");
    }
    let expected: Vec<String> = [
        "good",
        "locked",
        "output.stderr",
        "output.stdout",
        "result.passed",
        "verified",
    ]
    .iter()
    .map(|n| format!("refs/notes/icyci.{n}"))
    .collect();
    assert_eq!(s.env.note_refs(&s.results), expected);
}

#[test]
fn files_from_an_earlier_run_are_never_pushed_again() {
    if !require_tool("gpg") {
        return;
    }
    let s = Setup::new();
    let counter = s.env.path("count");
    // Run 1 writes `first-only` and `every`; run 2 only `every`. Each run lists what it found
    // in the notes directory when it started.
    s.set_script(&format!(
        "n=$(( $(cat '{c}' 2>/dev/null || echo 0) + 1 ))\necho $n > '{c}'\n\
         echo \"found:$(ls -A \"$ICYCI_NOTES_DIR\" | tr '\\n' ' ')\"\n\
         if [ $n = 1 ]; then echo stale > \"$ICYCI_NOTES_DIR/first-only\"; fi\n\
         echo run $n > \"$ICYCI_NOTES_DIR/every\"\n",
        c = counter.display()
    ));
    let first = signed_commit(&s);
    let mut daemon = s.spawn(&[]);
    s.wait_note(&mut daemon, "icyci", "result.passed", &first);
    let second = signed_commit(&s);
    s.wait_note(&mut daemon, "icyci", "result.passed", &second);

    assert_eq!(s.runs(), [first.clone(), second.clone()]);
    assert_eq!(s.note("first-only", &first), Some(b"stale\n".to_vec()));
    assert_eq!(s.note("every", &first), Some(b"run 1\n".to_vec()));
    assert_eq!(s.note("first-only", &second), None);
    assert_eq!(s.note("every", &second), Some(b"run 2\n".to_vec()));
    for commit in [&first, &second] {
        let stdout = s.note_text("output.stdout", commit).expect("stdout note");
        assert_eq!(
            stdout,
            format!("tested {commit}\nfound:\n"),
            "the notes directory starts empty"
        );
    }
}

#[test]
fn a_notes_dir_swapped_for_a_symlink_leaks_nothing() {
    if !require_tool("gpg") {
        return;
    }
    let s = Setup::new();
    let outside = s.env.path("outside");
    write_file(&outside.join("stolen"), b"private\n");
    s.set_script(&format!(
        "echo err >&2\nrm -rf \"$ICYCI_NOTES_DIR\"\nln -s '{o}' \"$ICYCI_NOTES_DIR\"\n\
         echo planted > \"$ICYCI_NOTES_DIR/planted\"\n",
        o = outside.display()
    ));
    let commit = signed_commit(&s);

    let (code, stderr) = s.once(&[]);
    assert_eq!(code, 0, "{stderr}");
    s.assert_passed(&commit);
    assert_eq!(s.note("output.stderr", &commit), Some(b"err\n".to_vec()));
    let expected: Vec<String> = [
        "locked",
        "output.stderr",
        "output.stdout",
        "result.passed",
        "verified",
    ]
    .iter()
    .map(|n| format!("refs/notes/icyci.{n}"))
    .collect();
    assert_eq!(
        s.env.note_refs(&s.results),
        expected,
        "nothing from outside"
    );
    // Cleaning up removed the link, not what it pointed to.
    assert_eq!(
        std::fs::read(outside.join("stolen")).expect("read stolen"),
        b"private\n"
    );
    assert!(outside.join("planted").exists());
}

#[test]
fn names_colliding_with_the_daemons_notes_are_refused() {
    if !require_tool("gpg") {
        return;
    }
    let forged = [
        "my report.txt",
        "locked",
        "result.passed",
        "result.failed",
        "output.stdout",
        "output.stderr",
        "verified",
        // would be the lock and a verdict of namespaces icyci.arm and icyci.extra
        "arm.locked",
        "extra.result.passed",
    ];
    let mut body = String::from("echo real-err >&2\n");
    for name in forged {
        body.push_str(&format!("echo FORGED > \"$ICYCI_NOTES_DIR/{name}\"\n"));
    }
    body.push_str("echo fine > \"$ICYCI_NOTES_DIR/fine\"\n");
    let s = Setup::with_script(&body);
    let commit = signed_commit(&s);

    let (code, stderr) = s.once(&[]);
    assert_eq!(code, 0, "{stderr}");
    for name in forged {
        assert!(skipped(&stderr, name), "{name:?}: {stderr}");
    }
    // The real notes are all there and none is the forged content.
    s.assert_passed(&commit);
    assert_eq!(
        s.note("output.stderr", &commit),
        Some(b"real-err\n".to_vec())
    );
    assert_eq!(s.note("result.failed", &commit), None);
    assert_eq!(s.note("fine", &commit), Some(b"fine\n".to_vec()));
    for name in forged {
        if let Some(note) = s.note_text(name, &commit) {
            assert!(!note.contains("FORGED"), "{name}: {note:?}");
        }
    }
}

#[test]
fn a_failed_run_cannot_forge_a_passed_verdict() {
    if !require_tool("gpg") {
        return;
    }
    let s = Setup::with_script("echo FORGED > \"$ICYCI_NOTES_DIR/result.passed\"\nexit 7\n");
    let commit = signed_commit(&s);

    let (code, stderr) = s.once(&[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(skipped(&stderr, "result.passed"), "{stderr}");
    assert_eq!(s.note("result.passed", &commit), None);
    assert_eq!(
        s.note_text("result.failed", &commit),
        Some(format!(
            "{} failed: exit status 7\nSee refs/notes/icyci.output.stdout and \
             refs/notes/icyci.output.stderr for details\n",
            s.script.display()
        ))
    );
    assert_eq!(
        s.note_text("output.stdout", &commit),
        Some(format!("tested {commit}\n"))
    );
    assert!(s.note("locked", &commit).is_some());
}

#[test]
fn a_fifo_does_not_hang_the_daemon() {
    if !require_tool("gpg") || !require_tool("mkfifo") {
        return;
    }
    let s = Setup::with_script(
        "mkfifo \"$ICYCI_NOTES_DIR/pipe\"\necho after > \"$ICYCI_NOTES_DIR/zz-after\"\n",
    );
    let commit = signed_commit(&s);

    // `once` fails the test if icyci is still running after the deadline.
    let (code, stderr) = s.once(&[]);
    assert_eq!(code, 0, "{stderr}");
    s.assert_passed(&commit);
    assert_eq!(s.note("pipe", &commit), None);
    assert!(skipped(&stderr, "pipe"), "{stderr}");
    assert_eq!(s.note("zz-after", &commit), Some(b"after\n".to_vec()));
}

#[test]
fn a_subdirectory_is_skipped() {
    if !require_tool("gpg") {
        return;
    }
    let s = Setup::with_script(
        "mkdir \"$ICYCI_NOTES_DIR/sub\"\necho inner > \"$ICYCI_NOTES_DIR/sub/inner\"\n\
         echo top > \"$ICYCI_NOTES_DIR/top\"\n",
    );
    let commit = signed_commit(&s);

    let (code, stderr) = s.once(&[]);
    assert_eq!(code, 0, "{stderr}");
    s.assert_passed(&commit);
    assert_eq!(s.note("top", &commit), Some(b"top\n".to_vec()));
    assert!(skipped(&stderr, "sub"), "{stderr}");
    let refs = s.env.note_refs(&s.results);
    assert!(
        !refs.iter().any(|r| r.starts_with("refs/notes/icyci.sub")),
        "{refs:?}"
    );
    assert!(
        log_has_line(&stderr, &["results pushed", &commit_field(&commit)]),
        "{stderr}"
    );
}

// ---- helpers ----

/// Commits (gpg-signed) on the work repository, pushes it to the source, returns its id.
/// A name that is a valid ref name but too long for git's ref file (`icyci.<name>.lock` over 255
/// bytes) is skipped with a log line: the run's notes are all pushed, and nothing is left that
/// would fail every later push (the next commit is tested too).
#[test]
fn a_name_too_long_for_a_ref_file_is_skipped() {
    if !require_tool("gpg") {
        return;
    }
    let long = "n".repeat(245);
    let fits = "f".repeat(244);
    let s = Setup::with_script(&format!(
        "echo long > \"$ICYCI_NOTES_DIR/{long}\"\necho fits > \"$ICYCI_NOTES_DIR/{fits}\"\n"
    ));
    let first = signed_commit(&s);
    let (code, stderr) = s.once(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(skipped(&stderr, &long), "{stderr}");
    s.assert_passed(&first);
    assert_eq!(s.note(&fits, &first), Some(b"fits\n".to_vec()));

    let second = signed_commit(&s);
    let (code, stderr) = s.once(&[]);
    assert_eq!(code, 0, "{stderr}");
    s.assert_passed(&second);
}

/// An extra note whose ref git cannot write because another namespace's refs are nested under
/// that name (`refs/notes/icyci.arm/x.locked` of a namespace `icyci.arm/x` blocks
/// `refs/notes/icyci.arm`): the run's own notes are published without it, with a warning.
#[test]
fn an_extra_note_git_cannot_write_does_not_cost_the_verdict() {
    if !require_tool("gpg") {
        return;
    }
    let s = Setup::with_script(
        "echo x > \"$ICYCI_NOTES_DIR/arm\"\necho fine > \"$ICYCI_NOTES_DIR/fine\"\n",
    );
    let results = &s.results;
    let tree = s.env.git(results, ["mktree"]);
    let other = s
        .env
        .git(results, ["commit-tree", &tree, "-m", "another namespace"]);
    s.env.git(
        results,
        ["update-ref", "refs/notes/icyci.arm/x.locked", &other],
    );
    let commit = signed_commit(&s);

    let (code, stderr) = s.once(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        log_has_line(
            &stderr,
            &["extra notes not published", &commit_field(&commit)]
        ),
        "{stderr}"
    );
    s.assert_passed(&commit);
    assert!(s.note("output.stdout", &commit).is_some());
}

fn signed_commit(s: &Setup) -> String {
    let fpr = s.env.gpg_key();
    let commit = s.env.commit(&s.work, "signed", Sign::Gpg(fpr));
    s.publish();
    commit
}

/// Whether `stderr` has a `skipping notes file` line naming `name` (logged as `name="<name>"`,
/// with Rust's string escapes).
fn skipped(stderr: &str, name: &str) -> bool {
    let field = format!("name={name:?}");
    log_has_line(stderr, &["skipping notes file", &field])
}

fn write_file(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("create a directory");
    std::fs::write(path, data).expect("write a file");
}
