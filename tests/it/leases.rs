//! Lock leases: the holder renews its lease while the script runs, a stale
//! lock is taken over by exactly one instance, and `icyci retest` removes a
//! commit's lock and results.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::{require_tool, wait_for};
use crate::cycle::Fixture;

const LONG: Duration = Duration::from_secs(30);

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// The `lease-until` seconds of a lock note.
fn lease_until(text: &str) -> i64 {
    text.lines()
        .find_map(|line| line.strip_prefix("lease-until: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|secs| secs.parse().ok())
        .unwrap_or_else(|| panic!("no lease-until line in {text:?}"))
}

/// A script that counts its runs in `runs` (one line per run), then sleeps.
fn counting_script(fx: &Fixture, sleep: &str) -> (String, PathBuf) {
    let runs = fx.env.path("runs");
    let commit = fx.script_commit(&format!(
        "echo run >> '{}'\nsleep {sleep}\n",
        runs.display()
    ));
    (commit, runs)
}

fn run_count(runs: &PathBuf) -> usize {
    std::fs::read_to_string(runs).map_or(0, |text| text.lines().count())
}

/// Puts a lock note with `text` on `commit` in the results repository.
fn hand_made_lock(fx: &Fixture, commit: &str, text: &str) {
    fx.env.git(
        &fx.work,
        [
            "notes",
            "--ref=refs/notes/icyci.locked",
            "add",
            "-f",
            "-m",
            text,
            commit,
        ],
    );
    fx.env
        .push(&fx.work, &fx.results, &["+refs/notes/icyci.locked"]);
}

fn leased_lock(until: i64) -> String {
    format!(
        "2024-01-01 00:00:00.000000000 +0000: this commit is being tested by icyCI\n\
         holder: deadhost pid 1 id 00000000deadbeef\nlease-until: {until} (whenever)"
    )
}

#[test]
fn the_lease_is_renewed_while_the_script_runs_and_not_taken_over() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let (commit, runs) = counting_script(&fx, "4");
    let mut daemon = fx.spawn(&["-lock-lease", "2s", "-once"]);

    let mut first = None;
    wait_for("the lock note", LONG, || {
        first = fx.note_text("locked", &commit);
        first.is_some()
    });
    let first = first.expect("found");
    let mut lines = first.lines();
    assert!(
        lines
            .next()
            .is_some_and(|l| l.ends_with(": this commit is being tested by icyCI")),
        "{first}"
    );
    let holder = lines.next().unwrap_or_default();
    assert!(
        holder.starts_with("holder: ") && holder.contains(" pid ") && holder.contains(" id "),
        "{first}"
    );
    let start = lease_until(&first);
    wait_for("a renewed lease", Duration::from_secs(4), || {
        fx.note_text("locked", &commit)
            .is_some_and(|text| lease_until(&text) > start)
    });

    // A second instance (with a state directory of its own) meanwhile leaves the live lock
    // alone.
    let second_state = fx.env.state_dir("second");
    let (status, second) = fx.once(&[
        "-lock-lease",
        "2s",
        "-state-dir",
        &second_state.to_string_lossy(),
    ]);
    assert_eq!(status.code(), Some(3), "{}", second.logs_for_humans());
    assert!(
        !second.stderr().contains("taking over"),
        "{}",
        second.stderr()
    );

    let status = daemon.expect_exit(LONG);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    assert!(fx.note("result.passed", &commit).is_some());
    assert_eq!(run_count(&runs), 1);
}

#[test]
fn an_expired_lease_without_results_is_taken_over() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let (commit, runs) = counting_script(&fx, "0");
    hand_made_lock(&fx, &commit, &leased_lock(now() - 10));

    let (status, daemon) = fx.once(&[]);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    let stderr = daemon.stderr();
    assert!(
        stderr.contains(&format!(
            "taking over stale lock of {commit} held by deadhost pid 1 id 00000000deadbeef \
             (lease expired"
        )),
        "{stderr}"
    );
    assert_eq!(run_count(&runs), 1);
    assert!(fx.note("result.passed", &commit).is_some());
    let lock = fx.note_text("locked", &commit).expect("locked");
    assert!(!lock.contains("deadbeef"), "{lock}");
}

/// A lock whose lease has ended but whose commit has a result (passed, or failed) was tested:
/// it is left alone, with the reason logged, and the script does not run.
#[test]
fn an_expired_lease_with_a_result_is_not_taken_over() {
    if !require_tool("gpg") {
        return;
    }
    for verdict in ["result.passed", "result.failed"] {
        let fx = Fixture::new();
        let (commit, runs) = counting_script(&fx, "0");
        hand_made_lock(&fx, &commit, &leased_lock(now() - 10));
        let note_ref = format!("--ref=refs/notes/icyci.{verdict}");
        fx.env.git(
            &fx.work,
            ["notes", &note_ref, "add", "-m", "tested elsewhere", &commit],
        );
        fx.env.push(
            &fx.work,
            &fx.results,
            &[&format!("refs/notes/icyci.{verdict}")],
        );

        let (status, daemon) = fx.once(&[]);
        assert_eq!(status.code(), Some(3), "{}", daemon.logs_for_humans());
        let stderr = daemon.stderr();
        assert!(stderr.contains("with a result (tested)"), "{stderr}");
        assert!(!stderr.contains("taking over"), "{stderr}");
        assert_eq!(run_count(&runs), 0, "{verdict}");
        let lock = fx.note_text("locked", &commit).expect("still locked");
        assert!(lock.contains("deadbeef"), "{lock}");
    }
}

#[test]
fn an_original_lock_is_taken_over_only_with_stale_lock_after() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let (commit, runs) = counting_script(&fx, "0");
    hand_made_lock(
        &fx,
        &commit,
        "2024-01-01 00:00:00 +0000 UTC: this commit is being tested by icyCI",
    );

    let (status, daemon) = fx.once(&[]);
    assert_eq!(status.code(), Some(3), "{}", daemon.logs_for_humans());
    assert_eq!(run_count(&runs), 0);

    let (status, daemon) = fx.once(&["-stale-lock-after", "1s"]);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    assert!(
        daemon.stderr().contains(&format!(
            "taking over stale lock of {commit} held by an unknown holder"
        )),
        "{}",
        daemon.stderr()
    );
    assert_eq!(run_count(&runs), 1);
    assert!(fx.note("result.passed", &commit).is_some());
}

#[test]
fn three_instances_race_for_a_stale_lock_and_one_wins() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let (commit, runs) = counting_script(&fx, "1");
    hand_made_lock(&fx, &commit, &leased_lock(now() - 10));

    let states: Vec<String> = (0..3)
        .map(|i| {
            fx.env
                .state_dir(&i.to_string())
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let mut daemons: Vec<_> = states
        .iter()
        .map(|state| fx.spawn(&["-once", "-state-dir", state]))
        .collect();
    let mut codes: Vec<_> = daemons
        .iter_mut()
        .map(|d| d.expect_exit(LONG).code())
        .collect();
    codes.sort();
    let logs: Vec<String> = daemons.iter().map(|d| d.logs_for_humans()).collect();
    assert_eq!(codes, [Some(0), Some(3), Some(3)], "{logs:#?}");
    assert_eq!(run_count(&runs), 1, "{logs:#?}");
    let winners = daemons
        .iter()
        .filter(|d| d.stderr().contains("taking over stale lock"))
        .count();
    assert_eq!(winners, 1, "{logs:#?}");
    assert!(fx.note("result.passed", &commit).is_some());
}

/// Runs `icyci retest` with `args`; exit code and stderr.
fn retest(fx: &Fixture, args: &[&str]) -> (Option<i32>, String) {
    let out = fx
        .env
        .icyci()
        .arg("retest")
        .args(args)
        .output()
        .expect("icyci runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn retest_removes_the_lock_and_results() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let (commit, runs) = counting_script(&fx, "0");
    let (status, daemon) = fx.once(&[]);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    let results = fx.results.to_string_lossy().into_owned();

    let (code, stderr) = retest(&fx, &[&commit, "--results-repo", &results]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(fx.note("locked", &commit), None);
    assert_eq!(fx.note("result.passed", &commit), None);

    let (status, daemon) = fx.once(&[]);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    assert_eq!(run_count(&runs), 2);
    assert!(fx.note("result.passed", &commit).is_some());
}

#[test]
fn retest_refuses_a_live_lease_without_force() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let commit = fx.signed_commit("locked by someone alive");
    hand_made_lock(&fx, &commit, &leased_lock(now() + 3600));
    let results = fx.results.to_string_lossy().into_owned();

    let (code, stderr) = retest(&fx, &[&commit, "--results-repo", &results]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("is being tested"), "{stderr}");
    assert!(fx.note("locked", &commit).is_some());

    let (code, stderr) = retest(&fx, &[&commit, "--results-repo", &results, "--force"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(fx.note("locked", &commit), None);
}

#[test]
fn retest_with_a_bad_commit_or_url_fails_with_one_line() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let results = fx.results.to_string_lossy().into_owned();
    let missing = fx.env.path("missing.git").to_string_lossy().into_owned();
    for args in [
        vec!["abc123", "--results-repo", results.as_str()],
        vec![
            "0123456789012345678901234567890123456789",
            "--results-repo",
            results.as_str(),
        ],
        vec![
            "0123456789012345678901234567890123456789",
            "--results-repo",
            missing.as_str(),
        ],
    ] {
        let (code, stderr) = retest(&fx, &args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("icyci retest: "), "{stderr}");
    }
}
