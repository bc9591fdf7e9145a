//! The work a cycle costs: which git processes it starts, and the races that
//! pushing first (before fetching) must still get right.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{require_tool, wait_for, write_script, Daemon};
use crate::cycle::Fixture;

const LONG: Duration = Duration::from_secs(30);

/// A `git` first on the daemon's PATH that logs its arguments (one line per
/// run) and runs the real git.
struct GitLog {
    bin: PathBuf,
    log: PathBuf,
}

impl GitLog {
    fn new(fx: &Fixture) -> GitLog {
        let real = which_git();
        let bin = fx.env.path(format!("gitlog-{}", fx.env.unique()));
        fs::create_dir(&bin).expect("create the wrapper directory");
        let log = bin.join("calls");
        write_script(
            bin.join("git"),
            &format!(
                "#!/bin/sh\nprintf '%s\\n' \"$(printf '%s' \"$*\" | tr '\\n' ' ')\" >> '{}'\nexec '{}' \"$@\"\n",
                log.display(),
                real.display()
            ),
        );
        GitLog { bin, log }
    }

    /// Starts the daemon with the wrapper first on its PATH.
    fn spawn(&self, fx: &Fixture, extra: &[&str]) -> Daemon {
        let mut cmd = fx.env.icyci();
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![self.bin.clone()];
        paths.extend(std::env::split_paths(&path));
        cmd.env("PATH", std::env::join_paths(paths).expect("join PATH"));
        cmd.args(fx.args(extra));
        fx.env.spawn_logged(cmd, "icyci")
    }

    /// The git subcommand of each call logged since the last [`GitLog::clear`].
    fn subcommands(&self) -> Vec<String> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().map(subcommand).collect()
    }

    fn lines(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn clear(&self) {
        fs::write(&self.log, "").expect("truncate the git log");
    }
}

/// The first word after git's own options (`-C dir`, `-c key=value`).
fn subcommand(line: &str) -> String {
    let mut words = line.split(' ');
    while let Some(word) = words.next() {
        match word {
            "-C" | "-c" => {
                words.next();
            }
            other => return other.to_owned(),
        }
    }
    String::new()
}

fn which_git() -> PathBuf {
    let path = std::env::var_os("PATH").expect("PATH is set");
    std::env::split_paths(&path)
        .map(|dir| dir.join("git"))
        .find(|candidate| candidate.is_file())
        .expect("git on PATH")
}

/// A daemon that has tested a first commit whose script counts its runs in
/// the file `runs`.
fn one_counted_run() -> (Fixture, PathBuf, String, Daemon) {
    let fx = Fixture::new();
    let runs = fx.env.path("runs");
    let first = fx.script_commit(&format!("echo run >> '{}'\n", runs.display()));
    let mut daemon = fx.spawn(&[]);
    fx.wait_passed(&mut daemon, &first);
    (fx, runs, first, daemon)
}

fn count_lines(path: &Path) -> usize {
    fs::read_to_string(path).map_or(0, |text| text.lines().count())
}

/// The git subcommands of the cycle that tests the next signed commit,
/// from the `ls-remote` that noticed it to the daemon's return to polling,
/// with `script` as the test script of both commits.
fn calls_of_the_second_cycle(
    script: impl Fn(&Fixture) -> String,
) -> (Fixture, Vec<String>, Daemon) {
    let fx = Fixture::new();
    let first = fx.script_commit(&script(&fx));
    let git = GitLog::new(&fx);
    let mut daemon = git.spawn(&fx, &[]);
    fx.wait_passed(&mut daemon, &first);
    daemon.wait_for_stderr("state cleanup -> poll", LONG);
    git.clear();

    let second = fx.signed_commit("second");
    fx.wait_passed(&mut daemon, &second);
    wait_for("the second cycle's cleanup", LONG, || {
        daemon.stderr().matches("state cleanup -> poll").count() >= 2
    });
    let calls = git.subcommands();
    let start = calls
        .iter()
        .position(|s| s == "fetch")
        .unwrap_or_else(|| panic!("no fetch in the cycle:\n{}", git.lines()));
    // The ls-remote right before the fetch noticed the new tip.
    assert_eq!(calls[start - 1], "ls-remote", "{}", git.lines());
    let end = calls
        .iter()
        .rposition(|s| s == "push")
        .expect("the results push");
    // What follows the results push, up to the first poll after the cycle.
    let rest = calls[end + 1..]
        .iter()
        .take_while(|s| *s != "ls-remote")
        .count();
    let cycle = calls[start - 1..=end + rest].to_vec();
    (fx, cycle, daemon)
}

/// After a first cycle, the next signed commit costs the poll that notices
/// it plus seven git processes, none of them redundant: no `rev-parse` of a
/// ref just fetched, no tag lookup on an untagged tip, no fetch of the
/// results before pushes that succeed, all notes in one `fast-import`, and
/// no `git clean` after a script that left no file in the checkout.
#[test]
fn a_cycle_starts_only_the_git_processes_it_needs() {
    if !require_tool("gpg") {
        return;
    }
    let (_fx, cycle, mut daemon) = calls_of_the_second_cycle(|_| "exit 0\n".to_owned());
    assert_eq!(
        cycle,
        [
            "ls-remote",
            "fetch",
            "verify-commit",
            "notes",
            "push",
            "checkout",
            "fast-import",
            "push",
        ],
        "git calls of one cycle"
    );
    assert!(daemon.is_running(), "{}", daemon.logs_for_humans());
}

/// A script that leaves files in the checkout (a build artefact, an ignored
/// file, a directory) or removes one costs the `git clean` after its run,
/// and the next run finds the checkout exactly as committed.
#[test]
fn a_run_that_leaves_files_is_cleaned_up_after() {
    if !require_tool("gpg") {
        return;
    }
    let seen = |fx: &Fixture| fx.env.path("seen");
    let (fx, cycle, mut daemon) = calls_of_the_second_cycle(|fx| {
        format!(
            "echo $(ls -A) >> '{seen}'\n\
             echo build > .gitignore\n\
             mkdir -p build/obj && : > build/obj/a.o\n\
             rm test.sh\n",
            seen = seen(fx).display()
        )
    });
    assert_eq!(cycle.last().map(String::as_str), Some("clean"), "{cycle:?}");
    assert_eq!(cycle.len(), 9, "{cycle:?}");
    // Each run found only the committed files (and the repository): the
    // second commit adds `commits`.
    let seen = fs::read_to_string(seen(&fx)).expect("the runs wrote what they saw");
    assert_eq!(
        seen,
        ".git test.sh\n.git commits test.sh\n",
        "{}",
        daemon.logs_for_humans()
    );
    assert!(daemon.is_running(), "{}", daemon.logs_for_humans());
}

/// A run that changes the index without touching a path of the work tree (`git rm --cached`,
/// as `git reset` can) turns a tracked file into an untracked one: that is cleaned up too, and
/// the next commit's run, which no longer tracks the file, does not find it.
#[test]
fn a_run_that_untracks_a_file_is_cleaned_up_after() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let seen = fx.env.path("seen");
    let script = format!(
        "#!/bin/sh
echo $(ls -A) >> '{}'
git rm -q --cached --ignore-unmatch leak.txt
",
        seen.display()
    );
    let first = fx.env.commit_files(
        &fx.work,
        "with leak.txt",
        &[
            ("test.sh", script.as_bytes()),
            ("leak.txt", b"from the first commit\n"),
        ],
        fx.sign(),
    );
    fx.push_main();
    let mut daemon = fx.spawn(&[]);
    fx.wait_passed(&mut daemon, &first);
    fs::remove_file(fx.work.join("leak.txt")).expect("remove leak.txt");
    let second = fx.signed_commit("without leak.txt");
    fx.wait_passed(&mut daemon, &second);
    let seen = fs::read_to_string(&seen).expect("the runs wrote what they saw");
    assert_eq!(
        seen,
        ".git leak.txt test.sh\n.git commits test.sh\n",
        "{}",
        daemon.logs_for_humans()
    );
}

/// While nothing changes, each poll is one `ls-remote` of the source.
#[test]
fn idle_polls_run_only_ls_remote() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let first = fx.script_commit("exit 0\n");
    let git = GitLog::new(&fx);
    let mut daemon = git.spawn(&fx, &[]);
    fx.wait_passed(&mut daemon, &first);
    daemon.wait_for_stderr("state cleanup -> poll", LONG);
    git.clear();
    wait_for("five idle polls", LONG, || count_lines(&git.log) >= 5);
    let lines = git.lines();
    for line in lines.lines() {
        assert!(
            line.ends_with("ls-remote -- origin refs/heads/main"),
            "an idle poll ran more than ls-remote:\n{lines}"
        );
    }
    assert!(daemon.is_running(), "{}", daemon.logs_for_humans());
}

/// Another instance locked the next commit after this daemon's last fetch of
/// the results: its lock, pushed first on stale refs, is refused, and after a
/// fetch it sees the lock and leaves the commit alone.
#[test]
fn a_lock_taken_elsewhere_since_the_last_fetch_is_respected() {
    if !require_tool("gpg") {
        return;
    }
    let (fx, runs, _first, mut daemon) = one_counted_run();
    daemon.wait_for_stderr("state cleanup -> poll", LONG);

    let second = fx.env.commit(&fx.work, "locked elsewhere", fx.sign());
    let other = fx.env.clone_repo(&fx.results, "other-instance");
    fx.env.git(
        &other,
        ["fetch", "-q", "origin", "+refs/notes/*:refs/notes/*"],
    );
    let lock = "2026-01-01 00:00:00.000000000 +0000: this commit is being tested by icyCI\n";
    fx.env.git(
        &other,
        [
            "notes",
            "--ref=refs/notes/icyci.locked",
            "add",
            "-m",
            lock,
            &second,
        ],
    );
    fx.env.push(&other, "origin", &["refs/notes/icyci.locked"]);
    fx.push_main();

    let logs = daemon.wait_for_stderr("already locked", LONG);
    assert!(logs.contains("lock push rejected"), "{logs}");
    assert_eq!(count_lines(&runs), 1, "{}", daemon.logs_for_humans());
    assert_eq!(fx.note_text("locked", &second).as_deref(), Some(lock));
    assert_eq!(fx.note("result.passed", &second), None);
    assert!(daemon.is_running(), "{}", daemon.logs_for_humans());
}

/// `icyci retest` removed a commit's lock after this daemon last fetched the
/// results: the lock note still in its local refs must not stop it from
/// testing the commit when the branch comes back to it.
#[test]
fn a_retested_commit_is_tested_again_despite_the_lock_in_local_refs() {
    if !require_tool("gpg") {
        return;
    }
    let (fx, runs, first, mut daemon) = one_counted_run();
    let second = fx.signed_commit("second");
    fx.wait_passed(&mut daemon, &second);
    daemon.wait_for_stderr("state cleanup -> poll", LONG);
    assert_eq!(count_lines(&runs), 2);

    let results = fx.results.to_string_lossy().into_owned();
    let retest = fx
        .env
        .icyci()
        .args(["retest", &first, "--results-repo", &results])
        .output()
        .expect("icyci retest runs");
    assert!(
        retest.status.success(),
        "{}",
        String::from_utf8_lossy(&retest.stderr)
    );
    fx.env.push(
        &fx.work,
        &fx.source,
        &[&format!("+{first}:refs/heads/main")],
    );

    fx.wait_passed(&mut daemon, &first);
    assert_eq!(count_lines(&runs), 3, "{}", daemon.logs_for_humans());
    assert!(daemon.is_running(), "{}", daemon.logs_for_humans());
}
