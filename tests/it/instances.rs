//! Several instances against one results repository (SPEC sections 6.1 and 7): exclusive within a
//! namespace, simultaneous across namespaces, and interoperable with the original's notes.

use std::path::Path;

use crate::common::{require_tool, wait_for, Daemon, Sign};
use crate::verify::{commit_field, log_has_line, read_lines, wait_log, Setup, DEADLINE};

#[test]
fn same_namespace_instances_test_each_commit_exactly_once() {
    if !require_tool("gpg") {
        return;
    }
    let s = Setup::new();
    let log = s.env.path("instances.log");
    let releases = s.env.path("releases");
    std::fs::create_dir(&releases).expect("mkdir releases");
    // Each run names its instance, then holds the lock until the test releases its commit.
    s.set_script(&format!(
        "echo \"$INSTANCE $head\" >> '{log}'\n\
         while [ ! -e '{rel}'/\"$head\" ]; do sleep 0.05; done\n",
        log = log.display(),
        rel = releases.display()
    ));
    let fpr = s.env.gpg_key();
    let start = s.env.commit(&s.work, "unsigned start", Sign::None);
    s.publish();
    let mut a = spawn_instance(&s, "a", &[]);
    let mut b = spawn_instance(&s, "b", &[]);
    for daemon in [&mut a, &mut b] {
        wait_log(daemon, &["not testing", &commit_field(&start)]);
    }

    let mut tested = Vec::new();
    for round in 1..=2 {
        let commit = s
            .env
            .commit(&s.work, &format!("signed {round}"), Sign::Gpg(fpr.clone()));
        s.publish();
        wait_for("a run to start", DEADLINE, || {
            read_lines(&log).len() == round
        });
        let last = read_lines(&log).pop().expect("a line");
        assert_eq!(last.split_once(' ').map(|(_, c)| c), Some(commit.as_str()));
        let (winner, loser) = if last.starts_with("a ") {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        // The other instance found the lock while the run still holds it.
        wait_log(
            loser,
            &[
                "not testing: already locked in refs/notes/icyci.locked",
                &commit_field(&commit),
            ],
        );
        assert_eq!(read_lines(&log).len(), round, "only one instance runs it");
        std::fs::write(releases.join(&commit), b"").expect("release the run");
        s.wait_note(winner, "icyci", "result.passed", &commit);
        s.assert_passed(&commit);
        tested.push(commit);
    }

    assert_eq!(s.runs(), tested, "each commit tested exactly once");
    assert_eq!(read_lines(&log).len(), 2);
    for daemon in [&mut a, &mut b] {
        assert!(daemon.is_running(), "{}", daemon.logs_for_humans());
    }
}

/// The instance holding a commit is stopped (SIGTERM, as `systemctl stop` sends) and releases
/// its lock; the other instance, which found the commit locked with a lease hours from ending,
/// sees the lock ref move and tests the commit within a few poll intervals.
#[test]
fn a_lock_released_by_a_stopped_instance_is_taken_by_the_waiting_one() {
    if !require_tool("gpg") {
        return;
    }
    let s = Setup::new();
    let log = s.env.path("instances.log");
    let release = s.env.path("release");
    // Instance a holds its run until the test releases it; b's runs pass at once.
    s.set_script(&format!(
        "echo \"$INSTANCE $head\" >> '{log}'\n\
         while [ \"$INSTANCE\" = a ] && [ ! -e '{rel}' ]; do sleep 0.05; done\n",
        log = log.display(),
        rel = release.display()
    ));
    let fpr = s.env.gpg_key();
    let commit = s.env.commit(&s.work, "signed", Sign::Gpg(fpr));
    s.publish();
    let mut a = spawn_instance(&s, "a", &[]);
    wait_for("a's run to start", DEADLINE, || read_lines(&log).len() == 1);
    let mut b = spawn_instance(&s, "b", &[]);
    wait_log(
        &mut b,
        &[
            "not testing: already locked in refs/notes/icyci.locked",
            "looking again if the lock is released",
            &commit_field(&commit),
        ],
    );

    a.signal("TERM");
    assert_eq!(
        a.expect_exit(DEADLINE).code(),
        Some(0),
        "{}",
        a.logs_for_humans()
    );
    assert!(
        a.stderr().contains("lock released"),
        "{}",
        a.logs_for_humans()
    );
    s.wait_note(&mut b, "icyci", "result.passed", &commit);
    s.assert_passed(&commit);
    assert_eq!(
        read_lines(&log),
        [format!("a {commit}"), format!("b {commit}")],
        "{}",
        b.logs_for_humans()
    );
    assert!(
        b.stderr()
            .contains("the lock ref in the results repository has moved"),
        "{}",
        b.logs_for_humans()
    );
    assert!(b.is_running(), "{}", b.logs_for_humans());
}

#[test]
fn different_namespaces_each_test_every_commit() {
    if !require_tool("gpg") {
        return;
    }
    let namespaces = ["icyci-aarch64", "icyci-x86-64"];
    let s = Setup::new();
    let log = s.env.path("instances.log");
    s.set_script(&format!(
        "echo \"$INSTANCE $head\" >> '{}'\n",
        log.display()
    ));
    let fpr = s.env.gpg_key();
    let first = s.env.commit(&s.work, "signed 1", Sign::Gpg(fpr.clone()));
    s.publish();
    let mut daemons: Vec<Daemon> = namespaces
        .iter()
        .map(|ns| spawn_instance(&s, ns, &["-notes-ns", ns]))
        .collect();
    for (ns, daemon) in namespaces.iter().zip(&mut daemons) {
        s.wait_note(daemon, ns, "result.passed", &first);
    }
    let second = s.env.commit(&s.work, "signed 2", Sign::Gpg(fpr));
    s.publish();
    for (ns, daemon) in namespaces.iter().zip(&mut daemons) {
        s.wait_note(daemon, ns, "result.passed", &second);
    }

    let mut lines = read_lines(&log);
    lines.sort();
    let mut expected: Vec<String> = namespaces
        .iter()
        .flat_map(|ns| [format!("{ns} {first}"), format!("{ns} {second}")])
        .collect();
    expected.sort();
    assert_eq!(lines, expected, "every instance tested every commit once");
    for ns in namespaces {
        for commit in [&first, &second] {
            assert_eq!(
                s.env
                    .note_text(&s.results, ns, "result.passed", commit)
                    .as_deref(),
                Some(s.passed_text().as_str())
            );
            assert_eq!(
                s.env.note_text(&s.results, ns, "output.stdout", commit),
                Some(format!("tested {commit}\n"))
            );
            assert!(s.env.note(&s.results, ns, "locked", commit).is_some());
        }
    }
    let expected_refs: Vec<String> = namespaces
        .iter()
        .flat_map(|ns| {
            [
                "locked",
                "output.stderr",
                "output.stdout",
                "result.passed",
                "verified",
            ]
            .map(|n| format!("refs/notes/{ns}.{n}"))
        })
        .collect();
    assert_eq!(s.env.note_refs(&s.results), expected_refs);
}

#[test]
fn a_lock_note_written_by_the_original_is_honoured() {
    if !require_tool("gpg") {
        return;
    }
    let s = Setup::new();
    let fpr = s.env.gpg_key();
    let commit = s.env.commit(&s.work, "signed", Sign::Gpg(fpr));
    s.publish();
    let original = "2024-01-01 00:00:00 +0000 UTC: this commit is being tested by icyCI";
    s.env.git(
        &s.work,
        [
            "notes",
            "--ref=refs/notes/icyci.locked",
            "add",
            "-m",
            original,
            &commit,
        ],
    );
    s.env
        .push(&s.work, &s.results, &["refs/notes/icyci.locked"]);

    let (code, stderr) = s.once(&[]);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        log_has_line(
            &stderr,
            &[
                "not testing: already locked in refs/notes/icyci.locked",
                &commit_field(&commit)
            ]
        ),
        "{stderr}"
    );
    assert!(s.runs().is_empty(), "not run");
    assert_eq!(
        s.note_text("locked", &commit),
        Some(format!("{original}\n")),
        "the original's lock is left as it was"
    );
    assert_eq!(
        s.env.note_refs(&s.results),
        ["refs/notes/icyci.locked"],
        "no result notes"
    );

    // The lock binds its namespace only.
    let (code, stderr) = s.once(&["-notes-ns", "icyci-aarch64"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(s.runs(), vec![commit.clone()]);
    assert!(s
        .env
        .note(&s.results, "icyci-aarch64", "result.passed", &commit)
        .is_some());
    assert_eq!(
        s.note_text("locked", &commit),
        Some(format!("{original}\n"))
    );
}

#[test]
fn notes_read_with_git_log_show_notes_like_the_originals() {
    if !require_tool("gpg") {
        return;
    }
    let s = Setup::new();
    let fpr = s.env.gpg_key();
    let commit = s.env.commit(&s.work, "signed", Sign::Gpg(fpr));
    s.publish();
    let (code, stderr) = s.once(&[]);
    assert_eq!(code, 0, "{stderr}");
    s.set_script("echo broken >&2\nexit 2\n");
    let (code, stderr) = s.once(&["-notes-ns", "icyci-aarch64"]);
    assert_eq!(code, 1, "{stderr}");

    let reader = s.env.clone_repo(&s.results, "reader");
    s.env.git(
        &reader,
        ["fetch", "-q", "origin", "refs/notes/*:refs/notes/*"],
    );
    let script = s.script.display();
    let all = show_notes(&s, &reader, "icyci*", &commit);
    for block in [
        format!("Notes (icyci.result.passed):\n    {script} completed successfully\n"),
        format!("Notes (icyci.output.stdout):\n    tested {commit}\n"),
        format!(
            "Notes (icyci-aarch64.result.failed):\n    {script} failed: exit status 2\n    \
             See refs/notes/icyci-aarch64.output.stdout and \
             refs/notes/icyci-aarch64.output.stderr for details\n"
        ),
        "Notes (icyci-aarch64.output.stderr):\n    broken\n".to_string(),
        format!("Notes (icyci-aarch64.output.stdout):\n    tested {commit}\n"),
    ] {
        assert!(all.contains(&block), "missing {block:?} in:\n{all}");
    }
    for ns in ["icyci", "icyci-aarch64"] {
        let lock = note_body(&all, &format!("{ns}.locked"))
            .unwrap_or_else(|| panic!("no {ns}.locked in:\n{all}"));
        assert_eq!(lock.len(), 3, "{lock:?}");
        assert!(
            lock[0].ends_with(": this commit is being tested by icyCI")
                && lock[1].starts_with("holder: ")
                && lock[2].starts_with("lease-until: "),
            "{lock:?}"
        );
    }

    let aarch64 = show_notes(&s, &reader, "icyci-aarch64.*", &commit);
    assert!(
        aarch64.contains("Notes (icyci-aarch64.result.failed):"),
        "{aarch64}"
    );
    assert!(
        aarch64.contains("Notes (icyci-aarch64.locked):"),
        "{aarch64}"
    );
    assert!(!aarch64.contains("Notes (icyci."), "{aarch64}");
    let plain = show_notes(&s, &reader, "icyci.*", &commit);
    assert!(plain.contains("Notes (icyci.result.passed):"), "{plain}");
    assert!(!plain.contains("Notes (icyci-aarch64."), "{plain}");
}

// ---- helpers ----

/// Starts a daemon polling every 100 ms with `INSTANCE=<name>` in its (and its script's)
/// environment, and a state directory of its own: two instances of one job on one host share
/// none.
fn spawn_instance(s: &Setup, name: &str, extra: &[&str]) -> Daemon {
    let mut cmd = s.env.icyci();
    cmd.args(s.args(extra))
        .arg("-poll-interval=100ms")
        .arg("-state-dir")
        .arg(s.env.state_dir(name))
        .env("INSTANCE", name);
    s.env.spawn_logged(cmd, &format!("icyci-{name}"))
}

/// `git log -1 --show-notes=<pattern> <commit>` in `repo`.
fn show_notes(s: &Setup, repo: &Path, pattern: &str, commit: &str) -> String {
    s.env.git(
        repo,
        [
            "log",
            "-1",
            &format!("--show-notes={pattern}"),
            commit,
            "--",
        ],
    ) + "\n"
}

/// The lines (without their indent) of the note shown as `Notes (<name>):` in `log`.
fn note_body(log: &str, name: &str) -> Option<Vec<String>> {
    let header = format!("Notes ({name}):");
    let mut lines = log.lines().skip_while(|l| *l != header);
    lines.next()?;
    Some(
        lines
            .take_while(|l| l.starts_with("    "))
            .map(|l| l.trim_start().to_string())
            .collect(),
    )
}
