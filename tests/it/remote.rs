//! Remote repositories: sources and results over `git://`, `ssh://`, plain paths and `file://`
//! URLs, and remotes that are unreachable or change under the daemon while it works. Failures
//! of a remote never end the daemon: it logs, retries and completes the commit once the remote
//! is back.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{
    free_port, require_tool, wait_for, write_script, Daemon, GitDaemon, PortHold, Sign, Sshd,
    TagKind, TestEnv,
};
use crate::verify::ref_value;

/// Deadline for anything that normally takes a second or two, generous because other tests
/// share the machine.
const QUICK: Duration = Duration::from_secs(20);
/// Deadline for a cycle that includes retries with backoff after an outage.
const RECOVERY: Duration = Duration::from_secs(40);
/// How long a remote is kept away in the outage tests.
const OUTAGE: Duration = Duration::from_secs(3);

#[test]
fn source_and_results_over_git_protocol() {
    if !require_tool("gpg") || !require_tool("git-daemon") {
        return;
    }
    let (env, fpr) = signed_env();
    let served = env.path("served");
    let source = env.bare_repo("served/src.git");
    let results = env.bare_repo("served/results.git");
    let work = env.work_repo("work");
    let commit = env.commit(&work, "over git://", Sign::Gpg(fpr));
    env.push(&work, &source, &["main"]);
    let server = GitDaemon::start(&env, &served);
    let script = tip_script(&env);

    let mut daemon = env.spawn_icyci(args(
        &server.url("src.git"),
        &server.url("results.git"),
        &script,
        &["-once"],
    ));

    assert_exit(&mut daemon, 0, QUICK);
    assert_complete_notes(&env, &results, &commit, &script);
    assert_eq!(
        env.rev_parse(&results, "refs/heads/main"),
        commit,
        "the tested branch is pushed over git:// too"
    );
}

#[test]
fn results_over_ssh() {
    if !require_tool("gpg") || !require_tool("sshd") || !require_tool("ssh") {
        return;
    }
    let (env, fpr) = signed_env();
    let source = env.bare_repo("src.git");
    let results = env.bare_repo("results.git");
    let work = env.work_repo("work");
    let commit = env.commit(&work, "results over ssh", Sign::Gpg(fpr));
    env.push(&work, &source, &["main"]);
    let sshd = Sshd::start(&env);
    // The daemon's git children inherit it; without it the login is refused.
    env.set_var("GIT_SSH_COMMAND", sshd.git_ssh_command());
    let script = tip_script(&env);

    let mut daemon = env.spawn_icyci(args(
        &sshd.url(&source),
        &sshd.url(&results),
        &script,
        &["-once"],
    ));

    assert_exit(&mut daemon, 0, QUICK);
    assert_complete_notes(&env, &results, &commit, &script);
    assert_eq!(env.rev_parse(&results, "refs/heads/main"), commit);
}

#[test]
fn plain_paths_and_file_urls() {
    if !require_tool("gpg") {
        return;
    }
    let (env, fpr) = signed_env();
    let source = env.bare_repo("src.git");
    let results = env.bare_repo("results.git");
    let work = env.work_repo("work");
    let script = tip_script(&env);

    let first = env.commit(&work, "plain paths", Sign::Gpg(fpr.clone()));
    env.push(&work, &source, &["main"]);
    let mut daemon = env.spawn_icyci(args(
        &source.to_string_lossy(),
        &results.to_string_lossy(),
        &script,
        &["-once"],
    ));
    assert_exit(&mut daemon, 0, QUICK);
    assert_complete_notes(&env, &results, &first, &script);

    let second = env.commit(&work, "file urls", Sign::Gpg(fpr));
    env.push(&work, &source, &["main"]);
    let mut daemon = env.spawn_icyci(args(
        &format!("file://{}", source.display()),
        &format!("file://{}", results.display()),
        &script,
        &["-once"],
    ));
    assert_exit(&mut daemon, 0, QUICK);
    assert_complete_notes(&env, &results, &second, &script);
    assert_complete_notes(&env, &results, &first, &script);
    assert_eq!(env.rev_parse(&results, "refs/heads/main"), second);
}

#[test]
fn unreachable_source_at_start_is_retried() {
    if !require_tool("gpg") || !require_tool("git-daemon") {
        return;
    }
    let (env, fpr) = signed_env();
    let served = env.path("served");
    let source = env.bare_repo("served/src.git");
    let results = env.bare_repo("results.git");
    let work = env.work_repo("work");
    let commit = env.commit(&work, "reachable later", Sign::Gpg(fpr));
    env.push(&work, &source, &["main"]);
    let script = tip_script(&env);
    // Nothing listens on the port yet; it is held (connections refused) until the server starts.
    let (port, _hold) = PortHold::free();
    let url = format!("git://127.0.0.1:{port}/src.git");

    let started = Instant::now();
    let mut daemon = env.spawn_icyci(args(&url, &results.to_string_lossy(), &script, &[]));
    daemon.wait_for_stderr("attempt=2", QUICK);
    // Keep the source away for a couple of seconds in all.
    std::thread::sleep(Duration::from_secs(2).saturating_sub(started.elapsed()));
    assert!(
        daemon.is_running(),
        "a failed clone must not end the daemon"
    );
    let _server = GitDaemon::start_on_port(&env, &served, port);

    wait_for_passed(&mut daemon, &env, &results, &commit, RECOVERY);
    assert_complete_notes(&env, &results, &commit, &script);
    let log = daemon.stderr();
    assert!(
        log.contains("clone failed: ") && log.contains("attempt=1"),
        "each failed clone is logged:\n{log}"
    );
    stop(&mut daemon);
}

#[test]
fn results_away_while_locking() {
    if !require_tool("gpg") {
        return;
    }
    // Without the branch push the lock is the first contact with the results, so the lock's
    // own retries are exercised.
    let Settled {
        env,
        fpr,
        source,
        results,
        work,
        script,
        mut daemon,
    } = settled(&["-push-source-to-results=false"]);

    let away = move_away(&results);
    let second = env.commit(&work, "during the outage", Sign::Gpg(fpr));
    env.push(&work, &source, &["main"]);
    daemon.wait_for_stderr("lock attempt failed: ", QUICK);
    std::thread::sleep(OUTAGE);
    move_back(&away, &results);

    wait_for_passed(&mut daemon, &env, &results, &second, RECOVERY);
    assert_complete_notes(&env, &results, &second, &script);
    assert!(daemon.is_running());
    stop(&mut daemon);
}

#[test]
fn results_away_while_locking_with_branch_push() {
    if !require_tool("gpg") {
        return;
    }
    // With the branch push (the default) the results are first read for the branch's lease.
    let Settled {
        env,
        fpr,
        source,
        results,
        work,
        script,
        mut daemon,
    } = settled(&[]);

    let away = move_away(&results);
    let second = env.commit(&work, "during the outage", Sign::Gpg(fpr));
    env.push(&work, &source, &["main"]);
    daemon.wait_for_stderr("lock failed: ", QUICK);
    std::thread::sleep(OUTAGE);
    move_back(&away, &results);

    wait_for_passed(&mut daemon, &env, &results, &second, RECOVERY);
    assert_complete_notes(&env, &results, &second, &script);
    wait_for("the results branch to reach the new tip", QUICK, || {
        let out = env.git_output(&results, ["rev-parse", "--verify", "-q", "refs/heads/main"]);
        String::from_utf8_lossy(&out.stdout).trim() == second
    });
    assert!(daemon.is_running());
    stop(&mut daemon);
}

#[test]
fn results_away_while_pushing_results() {
    if !require_tool("gpg") {
        return;
    }
    let (env, fpr) = signed_env();
    let source = env.bare_repo("src.git");
    let results = env.bare_repo("results.git");
    let work = env.work_repo("work");
    let commit = env.commit(&work, "pushed after an outage", Sign::Gpg(fpr));
    env.push(&work, &source, &["main"]);
    let gate = Gate::new(&env);

    let mut daemon = env.spawn_icyci(args(
        &source.to_string_lossy(),
        &results.to_string_lossy(),
        &gate.script,
        &["-once"],
    ));
    gate.wait_started(QUICK);
    assert!(
        env.note(&results, "icyci", "locked", &commit).is_some(),
        "the lock is pushed before the script runs"
    );
    let away = move_away(&results);
    gate.release();
    daemon.wait_for_stderr("results push failed: ", QUICK);
    std::thread::sleep(OUTAGE);
    move_back(&away, &results);

    assert_exit(&mut daemon, 0, RECOVERY);
    assert_complete_notes(&env, &results, &commit, &gate.script);
    assert_eq!(
        env.note_text(&results, "icyci", "output.stdout", &commit)
            .as_deref(),
        Some(format!("gated {commit}\n").as_str())
    );
    assert!(daemon.stderr().contains("results pushed"));
}

#[test]
fn once_rides_out_a_short_results_outage_while_locking() {
    once_with_results_away_at_lock(&["-push-source-to-results=false"], "lock attempt failed: ");
}

#[test]
fn once_rides_out_a_short_results_outage_while_locking_with_branch_push() {
    once_with_results_away_at_lock(&[], "failed: ");
}

/// `-once` with the results moved away when the lock is due and back [`OUTAGE`] later.
fn once_with_results_away_at_lock(extra: &[&str], failure_log: &str) {
    if !require_tool("gpg") {
        return;
    }
    let (env, fpr) = signed_env();
    let source = env.bare_repo("src.git");
    let results = env.bare_repo("results.git");
    let work = env.work_repo("work");
    let commit = env.commit(&work, "locked after an outage", Sign::Gpg(fpr));
    env.push(&work, &source, &["main"]);
    let script = tip_script(&env);
    let away = move_away(&results);

    let mut extra = extra.to_vec();
    extra.push("-once");
    let mut daemon = env.spawn_icyci(args(
        &source.to_string_lossy(),
        &results.to_string_lossy(),
        &script,
        &extra,
    ));
    daemon.wait_for_stderr(failure_log, QUICK);
    std::thread::sleep(OUTAGE);
    move_back(&away, &results);

    assert_exit(&mut daemon, 0, RECOVERY);
    assert_complete_notes(&env, &results, &commit, &script);
}

#[test]
fn once_gives_up_when_results_stay_away() {
    if !require_tool("gpg") {
        return;
    }
    // The lock is tried ten times with a backoff capped at 2 s (plus jitter) before -once
    // gives up: some 15 to 30 seconds.
    let (env, fpr) = signed_env();
    let source = env.bare_repo("src.git");
    let results = env.path("results-never-created.git");
    let work = env.work_repo("work");
    env.commit(&work, "nowhere to report", Sign::Gpg(fpr));
    env.push(&work, &source, &["main"]);
    let script = env.path("bin/must-not-run.sh");
    let ran = env.path("script-ran");
    write_script(&script, &format!("touch '{}'\n", ran.display()));

    let mut daemon = env.spawn_icyci(args(
        &source.to_string_lossy(),
        &results.to_string_lossy(),
        &script,
        &["-once"],
    ));

    assert_exit(&mut daemon, 4, Duration::from_secs(90));
    let log = daemon.stderr();
    assert!(
        log.contains("lock failed: ") && log.contains("giving up (-once)"),
        "the reason is logged:\n{log}"
    );
    assert!(!ran.exists(), "no script runs without a lock");
    assert!(!results.exists(), "nothing creates the missing results");
}

#[test]
fn source_fetch_failures_while_polling_are_retried() {
    if !require_tool("gpg") {
        return;
    }
    let Settled {
        env,
        fpr,
        source,
        results,
        work,
        script,
        mut daemon,
    } = settled(&[]);

    let away = move_away(&source);
    let log = daemon.wait_for_stderr("attempt=3", QUICK);
    assert!(log.contains("poll failed: "), "{log}");
    move_back(&away, &source);
    daemon.wait_for_stderr("poll works again after", RECOVERY);
    let second = env.commit(&work, "after the outage", Sign::Gpg(fpr));
    env.push(&work, &source, &["main"]);

    wait_for_passed(&mut daemon, &env, &results, &second, QUICK);
    assert_complete_notes(&env, &results, &second, &script);
    assert!(daemon.is_running());
    stop(&mut daemon);
}

/// Tokens given as the whole user part (`https://<token>@host`, as many forges hand them out),
/// in a query string, or in a `git://` URL's password, are masked too, also where git quotes
/// the URL without its scheme, and stay out of the state directory's name.
#[test]
fn tokens_and_query_strings_are_masked_in_logs() {
    let env = TestEnv::new();
    env.set_var("ICYCI_LOG", "debug");
    let port = free_port();
    let source = format!("https://ghp-t0ken-in-user@127.0.0.1:{port}/x.git?auth=qu3ry-t0ken");
    let results = format!("git://u:g1t-passw0rd@127.0.0.1:{port}/results.git");

    let mut daemon = env.spawn_icyci(["-source-repo", &source, "-results-repo", &results]);
    daemon.wait_for_stderr("attempt=2", QUICK);
    stop(&mut daemon);

    let log = daemon.stderr();
    assert!(log.contains("https://***@127.0.0.1"), "{log}");
    assert!(log.contains("clone failed: "), "{log}");
    for line in log.lines().chain(daemon.stdout().lines()) {
        for secret in ["ghp-t0ken-in-user", "qu3ry-t0ken", "g1t-passw0rd"] {
            assert!(!line.contains(secret), "secret logged in clear: {line}");
        }
    }
    for dir in env.state_dirs() {
        let name = dir.to_string_lossy();
        assert!(
            !name.contains("t0ken"),
            "a secret in the state directory's name: {name}"
        );
    }
}

#[test]
fn credentials_are_masked_in_logs() {
    let env = TestEnv::new();
    // Every git command line and git's own messages are logged at debug level.
    env.set_var("ICYCI_LOG", "debug");
    let port = free_port();
    let source = format!("http://bot:s3cr3t-token@127.0.0.1:{port}/x.git");
    let results = format!("https://bot:s3cr3t-token@127.0.0.1:{port}/results.git");

    let mut daemon = env.spawn_icyci(["-source-repo", &source, "-results-repo", &results]);
    daemon.wait_for_stderr("attempt=2", QUICK);
    stop(&mut daemon);

    let log = daemon.stderr();
    assert!(
        log.contains("bot:***@127.0.0.1"),
        "the masked URL is logged:\n{log}"
    );
    assert!(log.contains("clone failed: "), "{log}");
    for line in log.lines().chain(daemon.stdout().lines()) {
        assert!(
            !line.contains("s3cr3t-token"),
            "secret logged in clear: {line}"
        );
    }
}

#[test]
fn existing_result_notes_are_replaced() {
    if !require_tool("gpg") {
        return;
    }
    let (env, fpr) = signed_env();
    let source = env.bare_repo("src.git");
    let results = env.bare_repo("results.git");
    let work = env.work_repo("work");
    let commit = env.commit(&work, "already has results", Sign::Gpg(fpr));
    env.push(&work, &source, &["main"]);
    // Results left by an interrupted run, or written by hand, without a lock note.
    for (name, text) in [
        ("result.passed", "stale verdict"),
        ("output.stdout", "stale output"),
    ] {
        let notes_ref = format!("--ref=refs/notes/icyci.{name}");
        env.git(
            &work,
            ["notes", notes_ref.as_str(), "add", "-m", text, &commit],
        );
    }
    env.push(&work, &results, &["refs/notes/*:refs/notes/*"]);
    assert!(env.note(&results, "icyci", "locked", &commit).is_none());
    let script = tip_script(&env);

    let mut daemon = env.spawn_icyci(args(
        &source.to_string_lossy(),
        &results.to_string_lossy(),
        &script,
        &["-once"],
    ));

    assert_exit(&mut daemon, 0, QUICK);
    assert_complete_notes(&env, &results, &commit, &script);
}

#[test]
fn results_push_race_keeps_both_notes() {
    if !require_tool("gpg") {
        return;
    }
    let (env, fpr) = signed_env();
    let source = env.bare_repo("src.git");
    let results = env.bare_repo("results.git");
    let work = env.work_repo("work");
    let unrelated = env.commit(&work, "tested elsewhere", Sign::None);
    let commit = env.commit(&work, "tested here", Sign::Gpg(fpr));
    env.push(&work, &source, &["main"]);
    let gate = Gate::new(&env);

    let mut daemon = env.spawn_icyci(args(
        &source.to_string_lossy(),
        &results.to_string_lossy(),
        &gate.script,
        &["-once"],
    ));
    gate.wait_started(QUICK);
    // Another instance publishes its output meanwhile, properly on top of the results' refs.
    let other = env.clone_repo(&results, "other-instance");
    env.git(
        &other,
        ["fetch", "-q", "origin", "+refs/notes/*:refs/notes/*"],
    );
    env.git(
        &other,
        [
            "notes",
            "--ref=refs/notes/icyci.output.stdout",
            "add",
            "-m",
            "from the other instance",
            &unrelated,
        ],
    );
    env.push(&other, "origin", &["refs/notes/icyci.output.stdout"]);
    gate.release();

    assert_exit(&mut daemon, 0, QUICK);
    // The daemon fetches the namespace before adding its notes, so the other instance's note
    // is normally already there; if it lands between that fetch and the push, the push is
    // refused and rebuilt. Either way both notes must end up in the results.
    assert_complete_notes(&env, &results, &commit, &gate.script);
    assert_eq!(
        env.note_text(&results, "icyci", "output.stdout", &commit)
            .as_deref(),
        Some(format!("gated {commit}\n").as_str())
    );
    assert_eq!(
        env.note_text(&results, "icyci", "output.stdout", &unrelated)
            .as_deref(),
        Some("from the other instance\n"),
        "the other instance's note survives"
    );
}

/// A results push refused as a whole (here by a hook, as for a lost race) is retried with
/// everything it carried: the branch and the verified tag too, not only the notes.
#[test]
fn a_refused_push_keeps_the_branch_and_tag_for_the_next_round() {
    if !require_tool("gpg") {
        return;
    }
    let (env, fpr) = signed_env();
    let source = env.bare_repo("src.git");
    let results = env.bare_repo("results.git");
    let work = env.work_repo("work");
    let commit = env.commit(&work, "unsigned, with a signed tag", Sign::None);
    let tag = env.tag(&work, "v1", &commit, TagKind::Gpg(fpr));
    env.push(&work, &source, &["main", "refs/tags/v1"]);
    // Push 1 is the lock, push 2 the results: refuse exactly that one.
    let pushes = env.path("results-pushes");
    write_script(
        results.join("hooks/pre-receive"),
        &format!(
            "cat > /dev/null\n\
             n=$(( $(cat '{count}' 2>/dev/null || echo 0) + 1 ))\n\
             echo \"$n\" > '{count}'\n\
             if [ \"$n\" -eq 2 ]; then echo 'refusing push 2' >&2; exit 1; fi\n",
            count = pushes.display()
        ),
    );
    let script = tip_script(&env);

    let mut daemon = env.spawn_icyci(args(
        &source.to_string_lossy(),
        &results.to_string_lossy(),
        &script,
        &["-once"],
    ));

    assert_exit(&mut daemon, 0, QUICK);
    let log = daemon.stderr();
    assert!(
        log.contains("results push refused by the remote"),
        "the results push was not the refused one:\n{log}"
    );
    assert_complete_notes(&env, &results, &commit, &script);
    assert_eq!(
        ref_value(&env, &results, "refs/heads/main").as_deref(),
        Some(commit.as_str()),
        "the branch was dropped after the refused round:\n{log}"
    );
    assert_eq!(
        ref_value(&env, &results, "refs/tags/v1").as_deref(),
        Some(tag.as_str()),
        "the tag was dropped after the refused round:\n{log}"
    );
}

// ---- helpers ----

/// A test environment with the gpg signing key installed; its fingerprint.
fn signed_env() -> (TestEnv, String) {
    let env = TestEnv::new();
    let fpr = env.gpg_key();
    (env, fpr)
}

/// Daemon arguments: source, results, an absolute test script, a short poll interval, and
/// `extra`.
fn args(source: &str, results: &str, script: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "-source-repo",
        source,
        "-results-repo",
        results,
        "-test-script",
        &script.to_string_lossy(),
        "-poll-interval",
        "200ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A script outside the checkout that prints the tested commit and passes.
fn tip_script(env: &TestEnv) -> PathBuf {
    let script = env.path("bin/tip.sh");
    write_script(
        &script,
        "set -e\necho \"tested $(git rev-parse HEAD)\"\necho 'on stderr' >&2\n",
    );
    script
}

/// A script that signals it started, then waits until the test releases it.
struct Gate {
    script: PathBuf,
    started: PathBuf,
    released: PathBuf,
}

impl Gate {
    fn new(env: &TestEnv) -> Gate {
        let gate = Gate {
            script: env.path("bin/gated.sh"),
            started: env.path("gate-started"),
            released: env.path("gate-released"),
        };
        write_script(
            &gate.script,
            &format!(
                "touch '{}'\nwhile [ ! -e '{}' ]; do sleep 0.05; done\necho \"gated $(git rev-parse HEAD)\"\n",
                gate.started.display(),
                gate.released.display()
            ),
        );
        gate
    }

    fn wait_started(&self, timeout: Duration) {
        wait_for("the test script to start", timeout, || {
            self.started.exists()
        });
    }

    fn release(&self) {
        fs::write(&self.released, b"").expect("create the release file");
    }
}

/// Renames the repository `repo` away; where it went.
fn move_away(repo: &Path) -> PathBuf {
    let away = repo.with_extension("away");
    fs::rename(repo, &away).expect("move the repository away");
    away
}

fn move_back(away: &Path, repo: &Path) {
    fs::rename(away, repo).expect("move the repository back");
}

/// Waits for the `result.passed` note on `commit` in `repo`; fails at once when the daemon
/// exits meanwhile, since every test waiting here expects it to keep running.
fn wait_for_passed(
    daemon: &mut Daemon,
    env: &TestEnv,
    repo: &Path,
    commit: &str,
    timeout: Duration,
) {
    wait_for(&format!("note result.passed on {commit}"), timeout, || {
        if let Some(status) = daemon.try_status() {
            panic!("the daemon exited ({status}) before testing {commit}");
        }
        // The repository may be moved away by the test.
        repo.exists()
            && env
                .git_output(
                    repo,
                    [
                        "notes",
                        "--ref=refs/notes/icyci.result.passed",
                        "list",
                        commit,
                    ],
                )
                .status
                .success()
    });
}

/// The notes of a passed run of `script` on `commit`: lock, both outputs, the verdict, and no
/// failure note. The stdout note is checked when the script is [`tip_script`].
fn assert_complete_notes(env: &TestEnv, results: &Path, commit: &str, script: &Path) {
    let note = |name: &str| env.note_text(results, "icyci", name, commit);
    let locked = note("locked").unwrap_or_else(|| panic!("no lock note on {commit}"));
    assert!(
        locked.contains("this commit is being tested by icyCI"),
        "{locked:?}"
    );
    assert_eq!(
        note("result.passed").as_deref(),
        Some(format!("{} completed successfully\n", script.display()).as_str())
    );
    assert_eq!(note("result.failed"), None);
    let stdout = note("output.stdout").unwrap_or_else(|| panic!("no stdout note on {commit}"));
    if script.ends_with("tip.sh") {
        assert_eq!(stdout, format!("tested {commit}\n"));
        assert_eq!(note("output.stderr").as_deref(), Some("on stderr\n"));
    } else {
        assert!(
            note("output.stderr").is_some(),
            "no stderr note on {commit}"
        );
    }
}

/// Waits for `daemon` to exit with `code`.
fn assert_exit(daemon: &mut Daemon, code: i32, timeout: Duration) {
    let status = daemon.expect_exit(timeout);
    assert_eq!(
        status.code(),
        Some(code),
        "exit status\n{}",
        daemon.logs_for_humans()
    );
}

/// Stops a running daemon with SIGTERM and checks it exits 0.
fn stop(daemon: &mut Daemon) {
    daemon.signal("TERM");
    assert_exit(daemon, 0, QUICK);
}

/// A running daemon whose first cycle (one signed commit) is over, its push included, so that
/// a test can take a remote away from a settled state.
struct Settled {
    env: TestEnv,
    fpr: String,
    source: PathBuf,
    results: PathBuf,
    work: PathBuf,
    script: PathBuf,
    daemon: Daemon,
}

fn settled(extra: &[&str]) -> Settled {
    let (env, fpr) = signed_env();
    let source = env.bare_repo("src.git");
    let results = env.bare_repo("results.git");
    let work = env.work_repo("work");
    let script = tip_script(&env);
    let first = env.commit(&work, "before the outage", Sign::Gpg(fpr.clone()));
    env.push(&work, &source, &["main"]);
    let mut daemon = env.spawn_icyci(args(
        &source.to_string_lossy(),
        &results.to_string_lossy(),
        &script,
        extra,
    ));
    wait_for_passed(&mut daemon, &env, &results, &first, QUICK);
    daemon.wait_for_stderr("state cleanup -> poll", QUICK);
    Settled {
        env,
        fpr,
        source,
        results,
        work,
        script,
        daemon,
    }
}
