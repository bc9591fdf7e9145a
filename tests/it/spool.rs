//! Durable results: a results repository that stays away longer than the
//! in-cycle push retries leaves the results in the spool of `-state-dir`;
//! they are delivered when it is back, also by a daemon started afresh,
//! and removed from the spool once pushed.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use crate::common::{require_tool, wait_for, write_script, Daemon, Sign, TestEnv};
use crate::verify::log_has_line;

const QUICK: Duration = Duration::from_secs(20);

struct Setup {
    env: TestEnv,
    fpr: String,
    work: PathBuf,
    source: PathBuf,
    results: PathBuf,
    state: PathBuf,
    script: PathBuf,
    started: PathBuf,
    released: PathBuf,
}

fn setup() -> Setup {
    let env = TestEnv::new();
    let fpr = env.gpg_key();
    let work = env.work_repo("work");
    let source = env.bare_repo("src.git");
    let results = env.bare_repo("results.git");
    let state = env.state_dir("spool");
    let script = env.path("bin/gated.sh");
    let started = env.path("gate-started");
    let released = env.path("gate-released");
    write_script(
        &script,
        &format!(
            "touch '{}'\nwhile [ ! -e '{}' ]; do sleep 0.05; done\necho \"gated $(git rev-parse HEAD)\"\n",
            started.display(),
            released.display()
        ),
    );
    Setup {
        env,
        fpr,
        work,
        source,
        results,
        state,
        script,
        started,
        released,
    }
}

impl Setup {
    fn commit(&self, message: &str) -> String {
        let commit = self
            .env
            .commit(&self.work, message, Sign::Gpg(self.fpr.clone()));
        self.env.push(&self.work, &self.source, &["main"]);
        commit
    }

    fn spawn(&self) -> Daemon {
        self.spawn_with(&[])
    }

    fn spawn_with(&self, extra: &[&str]) -> Daemon {
        let mut args: Vec<String> = [
            "-source-repo",
            &self.source.to_string_lossy(),
            "-results-repo",
            &self.results.to_string_lossy(),
            "-test-script",
            &self.script.to_string_lossy(),
            "-poll-interval",
            "200ms",
            "-state-dir",
            &self.state.to_string_lossy(),
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        args.extend(extra.iter().map(|arg| arg.to_string()));
        self.env.spawn_icyci(args)
    }

    fn spool(&self) -> PathBuf {
        self.state.join("spool")
    }

    /// A first commit tested by a daemon that spooled its results (the
    /// results repository away) and was killed; the repository is back.
    fn spooled_by_a_killed_daemon(&self) -> String {
        let first = self.commit("first");
        let mut daemon = self.spawn();
        let away = self.spool_results_of(&mut daemon, &first);
        daemon.kill();
        fs::rename(&away, &self.results).expect("move the results back");
        first
    }

    /// Lets every run of the gated script go through at once.
    fn ungated(self) -> Setup {
        fs::write(&self.released, b"").expect("the script runs through");
        self
    }

    /// Installs `body` as the results repository's `pre-receive` hook.
    fn hook(&self, body: &str) {
        write_script(self.results.join("hooks/pre-receive"), body);
    }

    /// Runs the gated script on `commit` with the results repository away
    /// until the results are spooled; returns where the repository went.
    fn spool_results_of(&self, daemon: &mut Daemon, commit: &str) -> PathBuf {
        wait_for("the test script to start", QUICK, || self.started.exists());
        let away = self.results.with_extension("away");
        fs::rename(&self.results, &away).expect("move the results away");
        fs::write(&self.released, b"").expect("release the script");
        daemon.wait_for_stderr("they wait in the spool", QUICK);
        let meta = fs::read_to_string(self.spool().join(commit).join("meta")).expect("spooled");
        assert!(meta.contains(&format!("commit: {commit}\n")), "{meta}");
        away
    }

    fn passed(&self, commit: &str) -> bool {
        self.results.exists()
            && self
                .env
                .note_text(&self.results, "icyci", "result.passed", commit)
                .is_some()
    }

    fn assert_delivered(&self, commit: &str) {
        assert_eq!(
            self.env
                .note_text(&self.results, "icyci", "output.stdout", commit)
                .as_deref(),
            Some(format!("gated {commit}\n").as_str())
        );
        assert!(self
            .env
            .note_text(&self.results, "icyci", "locked", commit)
            .is_some());
        wait_for("the spool entry to be removed", QUICK, || {
            !self.spool().join(commit).exists()
        });
    }
}

fn wait_passed(s: &Setup, daemon: &mut Daemon, commit: &str) {
    wait_for(&format!("results of {commit}"), QUICK, || {
        if let Some(status) = daemon.try_status() {
            panic!("the daemon exited ({status})\n{}", daemon.logs_for_humans());
        }
        s.passed(commit)
    });
}

#[test]
fn spooled_results_arrive_when_the_results_repository_is_back() {
    if !require_tool("gpg") {
        return;
    }
    let s = setup();
    let first = s.commit("first");
    let mut daemon = s.spawn();
    let away = s.spool_results_of(&mut daemon, &first);

    // The daemon goes on polling: a new tip is fetched and tried.
    let second = s.commit("second");
    daemon.wait_for_stderr(&format!("commit={second}"), QUICK);
    assert!(daemon.is_running());

    fs::rename(&away, &s.results).expect("move the results back");
    wait_passed(&s, &mut daemon, &first);
    wait_passed(&s, &mut daemon, &second);
    s.assert_delivered(&first);
    s.assert_delivered(&second);
    assert!(daemon.stderr().contains("spooled results delivered"));
    daemon.signal("TERM");
    daemon.expect_exit(QUICK);
}

#[test]
fn a_fresh_daemon_delivers_the_spool_and_never_a_half_written_entry() {
    if !require_tool("gpg") {
        return;
    }
    let s = setup();
    let first = s.commit("first");
    let mut daemon = s.spawn();
    let away = s.spool_results_of(&mut daemon, &first);
    daemon.kill();

    // A write a crash interrupted, for a commit that exists.
    let other = s.env.rev_parse(&s.work, "HEAD~0");
    let tmp = s.spool().join(format!(".tmp-{other}"));
    fs::create_dir_all(tmp.join("notes")).expect("mkdir");
    fs::write(
        tmp.join("meta"),
        format!("commit: {other}\npassed: true\nnote: result.passed\n"),
    )
    .expect("write");
    fs::write(tmp.join("notes/0"), b"half\n").expect("write");
    let second = s.commit("second");

    fs::rename(&away, &s.results).expect("move the results back");
    let mut daemon = s.spawn();
    wait_passed(&s, &mut daemon, &first);
    s.assert_delivered(&first);
    wait_passed(&s, &mut daemon, &second);
    assert!(!tmp.exists(), "the half-written entry is removed");
    assert_ne!(
        s.env
            .note_text(&s.results, "icyci", "result.passed", &other)
            .as_deref(),
        Some("half\n"),
        "a half-written entry is never pushed"
    );
    assert!(daemon.stderr().contains("spooled results found"));
    daemon.signal("TERM");
    daemon.expect_exit(QUICK);
}

/// The results repository refuses the results push by policy (a `pre-receive` hook that
/// declines any push of a result note, saying why): after a few refused rounds the results wait
/// in the spool, the refusal is logged with the hook's message, and the daemon goes on testing.
/// Once the hook lets pushes through, every result arrives.
#[test]
fn results_refused_by_a_hook_wait_in_the_spool_and_testing_goes_on() {
    if !require_tool("gpg") {
        return;
    }
    let s = setup().ungated();
    let refuse = s.env.path("refuse");
    fs::write(&refuse, b"").expect("write the refuse file");
    s.hook(&format!(
        "if [ -e '{}' ] && grep -q 'refs/notes/icyci.result'; then\n\
             \techo 'results are frozen for maintenance' >&2\n\
             \texit 1\n\
             fi\n\
             exit 0\n",
        refuse.display()
    ));
    let first = s.commit("first");
    let mut daemon = s.spawn();
    let log = daemon.wait_for_stderr("they wait in the spool", QUICK);
    assert!(
        log.contains("results are frozen for maintenance"),
        "the hook's message is logged:\n{log}"
    );
    assert!(s.spool().join(&first).join("meta").exists(), "spooled");

    // Still refused, the daemon tests the next tip meanwhile.
    let second = s.commit("second");
    wait_for("the second commit's run", QUICK, || {
        daemon
            .stderr()
            .lines()
            .any(|line| line.contains("script passed") && line.contains(&second))
    });
    assert!(!s.passed(&first));

    fs::remove_file(&refuse).expect("let pushes through");
    wait_passed(&s, &mut daemon, &first);
    wait_passed(&s, &mut daemon, &second);
    wait_for("the spool to empty", QUICK, || {
        !s.spool().join(&first).exists() && !s.spool().join(&second).exists()
    });
    assert!(daemon.is_running(), "{}", daemon.logs_for_humans());
    daemon.signal("TERM");
    daemon.expect_exit(QUICK);
}

/// A spooled note whose name git cannot write as a ref (an entry edited, or of an older icyci)
/// is left out with a warning; the entry's verdict and outputs are delivered, not stuck.
#[test]
fn a_spooled_note_git_cannot_write_is_left_out_and_the_rest_delivered() {
    if !require_tool("gpg") {
        return;
    }
    let s = setup().ungated();
    let first = s.spooled_by_a_killed_daemon();
    let entry = s.spool().join(&first);
    let meta = entry.join("meta");
    let text = fs::read_to_string(&meta).expect("read the meta");
    let index = text.lines().filter(|l| l.starts_with("note: ")).count();
    fs::write(entry.join("notes").join(index.to_string()), b"bad\n").expect("a note file");
    fs::write(&meta, format!("{text}note: a..b\n")).expect("edit the meta");

    let mut daemon = s.spawn();
    wait_passed(&s, &mut daemon, &first);
    s.assert_delivered(&first);
    assert!(
        log_has_line(&daemon.stderr(), &["spooled note not published", "a..b"]),
        "{}",
        daemon.logs_for_humans()
    );
    daemon.signal("TERM");
    daemon.expect_exit(QUICK);
}

/// A state directory given to a job of another namespace: the spooled results of the first
/// are left in the spool, with a warning, never pushed as the other namespace's.
#[test]
fn spooled_results_of_another_namespace_are_left_alone() {
    if !require_tool("gpg") {
        return;
    }
    let s = setup();
    let first = s.spooled_by_a_killed_daemon();

    let mut other = s.spawn_with(&["-notes-ns", "other"]);
    other.wait_for_stderr(
        "spooled results of namespace icyci left in the spool",
        QUICK,
    );
    assert!(
        s.spool().join(&first).join("meta").exists(),
        "still spooled"
    );
    assert_eq!(
        s.env
            .note_text(&s.results, "other", "result.passed", &first),
        None,
        "not published as the other namespace's"
    );
    other.signal("TERM");
    other.expect_exit(QUICK);
}

/// The results repository refuses, by a hook, the lock pushes of one commit (any lock ref that
/// holds its note, unless it also holds the next commit's): that commit is given up after its
/// lock attempts, and its refused lock note, left in the daemon's local refs, is never pushed
/// along with the next commit's lock, which is taken and tested.
#[test]
fn a_lock_refused_by_a_hook_is_not_pushed_with_the_next_one() {
    if !require_tool("gpg") {
        return;
    }
    let s = setup().ungated();
    let first = s.commit("refused");
    let second = s.env.commit(&s.work, "after it", Sign::Gpg(s.fpr.clone()));
    s.hook(&format!(
        "while read old new ref; do\n\
             \t[ \"$ref\" = refs/notes/icyci.locked ] || continue\n\
             \tnotes=$(git ls-tree -r --name-only \"$new\" | tr -d /)\n\
             \tif printf '%s\\n' \"$notes\" | grep -qx '{first}' &&\n\
             \t   ! printf '%s\\n' \"$notes\" | grep -qx '{second}'; then\n\
             \t\techo 'no lock for {first}' >&2\n\
             \t\texit 1\n\
             \tfi\n\
             done\n\
             exit 0\n"
    ));
    let mut daemon = s.spawn();
    let log = daemon.wait_for_stderr("lock push refused by the remote", QUICK);
    assert!(log.contains(&format!("no lock for {first}")), "{log}");
    assert!(!log.contains("another instance pushed first"), "{log}");
    s.env.push(&s.work, &s.source, &["main"]);
    wait_passed(&s, &mut daemon, &second);
    assert_eq!(
        s.env.note_text(&s.results, "icyci", "locked", &first),
        None,
        "{}",
        daemon.logs_for_humans()
    );
    daemon.signal("TERM");
    daemon.expect_exit(QUICK);
}

/// With `-once`, results the results repository keeps refusing are tried a few rounds, then
/// left in the spool, and icyci exits with status 4 (could not complete); a later run with the
/// same state directory delivers them.
#[test]
fn once_with_results_refused_exits_4_and_the_next_run_delivers() {
    if !require_tool("gpg") {
        return;
    }
    let s = setup().ungated();
    let refuse = s.env.path("refuse");
    fs::write(&refuse, b"").expect("write the refuse file");
    s.hook(&format!(
        "if [ -e '{}' ] && grep -q 'refs/notes/icyci.result'; then echo frozen >&2; exit 1; fi\n",
        refuse.display()
    ));
    let first = s.commit("first");
    let mut once = s.spawn_with(&["-once"]);
    let status = once.expect_exit(Duration::from_secs(90));
    assert_eq!(status.code(), Some(4), "{}", once.logs_for_humans());
    assert!(
        once.stderr().contains("they wait in the spool"),
        "{}",
        once.logs_for_humans()
    );
    assert!(s.spool().join(&first).join("meta").exists(), "spooled");

    fs::remove_file(&refuse).expect("let pushes through");
    let mut next = s.spawn_with(&["-once"]);
    let status = next.expect_exit(Duration::from_secs(90));
    assert!(s.passed(&first), "{}", next.logs_for_humans());
    s.assert_delivered(&first);
    // The tip was tested already: nothing else to do.
    assert_eq!(status.code(), Some(3), "{}", next.logs_for_humans());
}

/// A state directory handed to a job of another source, in the same namespace: the spooled
/// results of the first job are left in the spool, with a warning, never pushed for the other.
#[test]
fn spooled_results_of_another_source_are_left_alone() {
    if !require_tool("gpg") {
        return;
    }
    let s = setup();
    let first = s.spooled_by_a_killed_daemon();

    let other_source = s.env.bare_repo("other-src.git");
    s.env.push(&s.work, &other_source, &["main"]);
    let mut other = s.spawn_with(&["-source-repo", &other_source.to_string_lossy()]);
    other.wait_for_stderr("left in the spool: this is job", QUICK);
    assert!(
        s.spool().join(&first).join("meta").exists(),
        "still spooled"
    );
    assert_eq!(
        s.env
            .note_text(&s.results, "icyci", "output.stdout", &first),
        None,
        "not delivered by the other job"
    );
    other.signal("TERM");
    other.expect_exit(QUICK);
}

/// A results repository whose hook refuses any push of a branch (and so the whole results push,
/// which carries the tested branch): after two refusals the notes go alone and arrive; the
/// branch is not pushed.
#[test]
fn a_hook_that_refuses_the_branch_does_not_keep_the_results_out() {
    if !require_tool("gpg") {
        return;
    }
    let s = setup().ungated();
    s.hook("if grep -q ' refs/heads/'; then echo 'no branches here' >&2; exit 1; fi\n");
    let first = s.commit("first");
    let mut daemon = s.spawn();
    wait_passed(&s, &mut daemon, &first);
    s.assert_delivered(&first);
    let log = daemon.stderr();
    assert!(log.contains("no branches here"), "{log}");
    assert!(
        log.contains("pushing the notes without the branch and tag"),
        "{log}"
    );
    assert_eq!(s.env.git(&s.results, ["for-each-ref", "refs/heads/"]), "");
    daemon.signal("TERM");
    daemon.expect_exit(QUICK);
}
