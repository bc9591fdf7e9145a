//! The command line (SPEC §2) observed end to end: flag spellings, bool flags, usage errors
//! (exit 2, one `icyci:` line then the usage on stderr, nothing touched), branch names,
//! `-v`, `-h`, and the exit codes of `-once`.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use crate::common::{require_tool, Daemon, Sign};
use crate::cycle::{assert_lock_note, failed_text, Fixture, PipedDaemon};

const LONG: Duration = Duration::from_secs(30);

#[test]
fn four_spellings_of_a_value_flag_and_of_once() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let commit = fx.script_commit("echo spelled\n");
    let source = fx.source.to_string_lossy().into_owned();
    let results = fx.results.to_string_lossy().into_owned();
    let spellings: [Vec<String>; 4] = [
        vec![
            "-source-repo".into(),
            source.clone(),
            "-results-repo".into(),
            results.clone(),
            "-test-script".into(),
            "test.sh".into(),
            "-notes-ns".into(),
            "ns-a".into(),
            "-once".into(),
        ],
        vec![
            format!("-source-repo={source}"),
            format!("-results-repo={results}"),
            "-test-script=test.sh".into(),
            "-notes-ns=ns-b".into(),
            "-once=true".into(),
        ],
        vec![
            "--source-repo".into(),
            source.clone(),
            "--results-repo".into(),
            results.clone(),
            "--test-script".into(),
            "test.sh".into(),
            "--notes-ns".into(),
            "ns-c".into(),
            "--once".into(),
        ],
        vec![
            format!("--source-repo={source}"),
            format!("--results-repo={results}"),
            "--test-script=test.sh".into(),
            "--notes-ns=ns-d".into(),
            "--once=true".into(),
        ],
    ];
    for (args, ns) in spellings.iter().zip(["ns-a", "ns-b", "ns-c", "ns-d"]) {
        let (status, daemon) = run(&fx, args);
        assert_eq!(
            status.code(),
            Some(0),
            "{args:?}\n{}",
            daemon.logs_for_humans()
        );
        assert_eq!(
            fx.env
                .note_text(&fx.results, ns, "result.passed", &commit)
                .as_deref(),
            Some("test.sh completed successfully\n"),
            "{args:?}"
        );
        assert_eq!(
            fx.env
                .note(&fx.results, ns, "output.stdout", &commit)
                .as_deref(),
            Some(&b"spelled\n"[..])
        );
        assert_lock_note(&fx.env, &fx.results, ns, &commit);
    }
    // Every note is in one of the four namespaces, none in the default one.
    let mut expected = Vec::new();
    for ns in ["ns-a", "ns-b", "ns-c", "ns-d"] {
        for name in [
            "locked",
            "output.stderr",
            "output.stdout",
            "result.passed",
            "verified",
        ] {
            expected.push(format!("refs/notes/{ns}.{name}"));
        }
    }
    assert_eq!(fx.env.note_refs(&fx.results), expected);
    assert!(fx.env.daemon_dirs().is_empty());
}

#[test]
fn bool_flag_spellings_of_push_source_to_results() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let commit = fx.script_commit("true\n");
    for (flag, pushed) in [
        ("-push-source-to-results=false", false),
        ("--push-source-to-results=false", false),
        ("-push-source-to-results", true),
        ("-push-source-to-results=true", true),
        ("--push-source-to-results", true),
    ] {
        let results = fx
            .env
            .bare_repo(&format!("results-{}.git", fx.env.unique()));
        let mut args = fx.args(&[flag, "-once"]);
        replace_results(&mut args, &results.to_string_lossy());
        let (status, daemon) = run(&fx, &args);
        assert_eq!(
            status.code(),
            Some(0),
            "{flag}\n{}",
            daemon.logs_for_humans()
        );
        assert_eq!(
            fx.env
                .note_text(&results, "icyci", "result.passed", &commit)
                .as_deref(),
            Some("test.sh completed successfully\n"),
            "{flag}"
        );
        let branches = fx.env.git(
            &results,
            [
                "for-each-ref",
                "--format=%(refname) %(objectname)",
                "refs/heads/",
            ],
        );
        if pushed {
            assert_eq!(branches, format!("refs/heads/main {commit}"), "{flag}");
        } else {
            assert_eq!(branches, "", "{flag}");
        }
    }
}

#[test]
fn bool_flag_with_a_separate_value_is_a_stray_argument() {
    let Some(fx) = usage_fixture() else {
        return;
    };
    let stderr = fx.usage_error(
        &fx.args(&["-push-source-to-results", "true", "-once"]),
        "unexpected argument \"true\"",
    );
    assert!(!stderr.contains("panicked"));
    fx.usage_error(
        &fx.args(&["-once", "false"]),
        "unexpected argument \"false\"",
    );
    fx.usage_error(
        &fx.args(&["-once", "stray"]),
        "unexpected argument \"stray\"",
    );
    fx.usage_error(
        &fx.args(&["-once=maybe"]),
        "invalid boolean value \"maybe\" for -once",
    );
}

#[test]
fn missing_required_flags() {
    let Some(fx) = usage_fixture() else {
        return;
    };
    let source = fx.fx.source.to_string_lossy().into_owned();
    let results = fx.fx.results.to_string_lossy().into_owned();
    fx.usage_error(
        &[
            "-results-repo",
            &results,
            "-test-script",
            "test.sh",
            "-once",
        ],
        "missing required flag -source-repo",
    );
    fx.usage_error(
        &["-source-repo", &source, "-test-script", "test.sh", "-once"],
        "missing required flag -results-repo",
    );
    fx.usage_error(&[] as &[&str], "missing required flag -source-repo");
}

#[test]
fn unknown_flag_and_flag_without_value() {
    let Some(fx) = usage_fixture() else {
        return;
    };
    fx.usage_error(
        &fx.args(&["-bogus", "-once"]),
        "flag provided but not defined: -bogus",
    );
    fx.usage_error(
        &fx.args(&["--no-such-flag=1", "-once"]),
        "flag provided but not defined: -no-such-flag",
    );
    fx.usage_error(
        &fx.args(&["-once", "-notes-ns"]),
        "flag needs an argument: -notes-ns",
    );
    fx.usage_error(
        &fx.args(&["-once", "--timeout"]),
        "flag needs an argument: -timeout",
    );
}

#[test]
fn bad_durations_are_refused() {
    let Some(fx) = usage_fixture() else {
        return;
    };
    for bad in ["-4h", "60y", "4hours", "0", "", "1.5.2s", "h"] {
        let stderr = fx.usage_error(
            &fx.args(&["-once", "-poll-interval", bad]),
            "invalid value for -poll-interval",
        );
        assert!(!stderr.is_empty());
        fx.usage_error(
            &fx.args(&["-once", &format!("-poll-interval={bad}")]),
            "invalid value for -poll-interval",
        );
        fx.usage_error(
            &fx.args(&["-once", &format!("-timeout=await-command:{bad}")]),
            "-timeout",
        );
    }
}

#[test]
fn timeout_accepts_only_await_command() {
    let Some(fx) = usage_fixture() else {
        return;
    };
    for bad in [
        "Await-command:5s",
        "AWAIT-COMMAND:5s",
        "clone:1m",
        "push:1m",
        "await-command",
        "5s",
    ] {
        fx.usage_error(&fx.args(&["-once", "-timeout", bad]), "-timeout");
    }
}

#[test]
fn valid_durations_and_timeouts_are_accepted() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let commit = fx.script_commit("true\n");
    for (i, extra) in [
        &["-poll-interval", "1"][..],
        &["-poll-interval=1h30m"],
        &["-timeout", "await-command:5s"],
        &["-timeout=await-command:90"],
        &["-disable-timeouts"],
    ]
    .iter()
    .enumerate()
    {
        let ns = format!("ok{i}");
        let mut args = fx.args(extra);
        args.extend(["-once".into(), format!("-notes-ns={ns}")]);
        let (status, daemon) = run(&fx, &args);
        assert_eq!(
            status.code(),
            Some(0),
            "{extra:?}\n{}",
            daemon.logs_for_humans()
        );
        assert!(
            fx.env
                .note(&fx.results, &ns, "result.passed", &commit)
                .is_some(),
            "{extra:?}"
        );
    }
}

#[test]
fn bare_integer_poll_interval_means_seconds() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let first = fx.script_commit("true\n");
    let mut args = fx.args(&[]);
    // The fixture's -poll-interval=100ms is overridden: the last value wins, as in Go.
    args.extend(["-poll-interval".into(), "1".into()]);
    let mut daemon = fx.env.spawn_icyci(&args);
    fx.wait_passed(&mut daemon, &first);
    // A second tip is found by the next poll, about a second later (not a minute or an hour).
    let second = fx.signed_commit("second");
    fx.wait_passed(&mut daemon, &second);
}

#[test]
fn disable_timeouts_overrides_the_await_command_timeout() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let commit = fx.script_commit("sleep 1.5\n");
    let (status, daemon) = run(
        &fx,
        &fx.args(&["-timeout=await-command:1s", "-disable-timeouts", "-once"]),
    );
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    assert!(fx.note("result.passed", &commit).is_some());
}

#[test]
fn bare_integer_timeout_means_seconds() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let commit = fx.script_commit("sleep 30\n");
    let (status, daemon) = run(&fx, &fx.args(&["-timeout", "await-command:1", "-once"]));
    assert_eq!(status.code(), Some(1), "{}", daemon.logs_for_humans());
    assert_eq!(
        fx.note_text("result.failed", &commit).as_deref(),
        Some(failed_text("test.sh", "1s await-command timeout reached").as_str())
    );
}

#[test]
fn version_flag() {
    let Some(fx) = usage_fixture() else {
        return;
    };
    for args in [&["-v"][..], &["--v"], &["-v=true"]] {
        let (status, daemon) = run(&fx.fx, args);
        assert_eq!(
            status.code(),
            Some(0),
            "{args:?}\n{}",
            daemon.logs_for_humans()
        );
        assert_eq!(
            daemon.stdout(),
            format!("icyCI {}\n", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(daemon.stderr(), "");
    }
    // With a full command line too: nothing is run.
    let (status, daemon) = run(&fx.fx, &fx.args(&["-v", "-once"]));
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    assert_eq!(
        daemon.stdout(),
        format!("icyCI {}\n", env!("CARGO_PKG_VERSION"))
    );
    fx.assert_untouched();
}

#[test]
fn help_flags_print_usage_on_stdout() {
    let Some(fx) = usage_fixture() else {
        return;
    };
    for args in [
        vec!["-h".to_string()],
        vec!["-help".to_string()],
        vec!["--help".to_string()],
        vec!["--h".to_string()],
        fx.args(&["-once", "-h"]),
    ] {
        let (status, daemon) = run(&fx.fx, &args);
        assert_eq!(
            status.code(),
            Some(0),
            "{args:?}\n{}",
            daemon.logs_for_humans()
        );
        let stdout = daemon.stdout();
        assert!(stdout.starts_with("Usage: icyci"), "{args:?}: {stdout}");
        for flag in [
            "-source-repo",
            "-source-branch",
            "-test-script",
            "-results-repo",
            "-push-source-to-results",
            "-poll-interval",
            "-notes-ns",
            "-timeout",
            "-disable-timeouts",
            "-source-reference",
            "-once",
        ] {
            assert!(stdout.contains(flag), "usage lacks {flag}: {stdout}");
        }
        assert_eq!(daemon.stderr(), "", "{args:?}");
    }
    fx.assert_untouched();
}

#[test]
fn branch_name_that_looks_like_an_option_is_refused() {
    let Some(fx) = usage_fixture() else {
        return;
    };
    let marker = fx.fx.env.path("pwned");
    let evil = format!("--upload-pack=touch {}", marker.display());
    fx.usage_error(
        &fx.args(&["-once", &format!("-source-branch={evil}")]),
        "must not start with '-'",
    );
    fx.usage_error(
        &fx.args(&["-once", "-source-branch", &evil]),
        "must not start with '-'",
    );
    fx.usage_error(
        &fx.args(&["-once", "-source-branch=-x"]),
        "must not start with '-'",
    );
    assert!(!marker.exists(), "the branch name was run as a command");
}

#[test]
fn invalid_branch_names_are_refused() {
    let Some(fx) = usage_fixture() else {
        return;
    };
    for bad in [
        "a..b", "x.lock", "a b", "a~1", "a:b", "/a", "a/", "a//b", "",
    ] {
        fx.usage_error(
            &fx.args(&["-once", &format!("-source-branch={bad}")]),
            "invalid branch name",
        );
    }
}

/// An absolute `-test-script` that cannot run would fail every commit: refused at start, with
/// one line saying why, before anything is touched. (A relative one is looked for in each
/// checkout, where a missing script is an ordinary failure of that commit.)
#[test]
fn an_absolute_test_script_that_cannot_run_is_refused() {
    let Some(fx) = usage_fixture() else {
        return;
    };
    let dir = fx.fx.env.path("scripts");
    std::fs::create_dir_all(&dir).expect("mkdir scripts");
    let plain = dir.join("plain.sh");
    std::fs::write(&plain, "#!/bin/sh\n").expect("write a script without execute bits");
    let missing = dir.join("missing.sh");
    for (script, reason) in [
        (&missing, "No such file or directory"),
        (&dir, "not a regular file"),
        (&plain, "not executable"),
    ] {
        let script = script.to_string_lossy();
        let stderr = fx.usage_error(&fx.args(&["-once", "-test-script", &script]), reason);
        assert!(
            stderr.starts_with(&format!("icyci: -test-script {script}: ")),
            "{stderr}"
        );
    }
}

#[test]
fn empty_values_are_refused() {
    let Some(fx) = usage_fixture() else {
        return;
    };
    for (args, reason) in [
        (
            &["-source-reference="][..],
            "invalid source reference: empty path",
        ),
        (
            &["-source-reference", ""],
            "invalid source reference: empty path",
        ),
        (
            &["--source-reference="],
            "invalid source reference: empty path",
        ),
        (&["-test-script="], "invalid test script: empty path"),
        (&["-source-repo="], "invalid repository \"\": empty"),
        (&["-results-repo="], "invalid repository \"\": empty"),
        (&["-notes-ns="], "invalid notes namespace \"\""),
        (
            &["-notes-ns", &"n".repeat(232)],
            "too long for git's ref files",
        ),
        (
            &["-source-reference", "/no/such/mirror.git"],
            "-source-reference /no/such/mirror.git: No such file",
        ),
        (&["-source-reference", "/dev/null"], "not a directory"),
        (
            &["-trusted-signers", "/dev/zero"],
            "/dev/zero: not a regular file",
        ),
        (
            &["-state-dir", "/dev/null"],
            "-state-dir /dev/null: not a directory",
        ),
    ] {
        let mut all = vec!["-once"];
        all.extend_from_slice(args);
        fx.usage_error(&fx.args(&all), reason);
    }
}

/// Relative repository paths mean relative to the directory icyci was started in, as for any
/// shell command, not to the workspace its git commands run in.
#[test]
fn relative_repository_paths_mean_relative_to_the_current_directory() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let commit = fx.script_commit("echo relative\n");
    let repos = fx.env.path("repos");
    let source = fx.env.bare_repo("repos/src.git");
    let results = fx.env.bare_repo("repos/res.git");
    fx.env.push(&fx.work, &source, &["main"]);

    let mut cmd = fx.env.icyci();
    cmd.args([
        "-source-repo",
        "src.git",
        "-results-repo",
        "res.git",
        "-test-script",
        "test.sh",
        "-once",
    ])
    .current_dir(&repos);
    let mut daemon = fx.env.spawn_logged(cmd, "icyci");
    let status = daemon.expect_exit(LONG);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    assert_eq!(
        fx.env
            .note_text(&results, "icyci", "result.passed", &commit)
            .as_deref(),
        Some("test.sh completed successfully\n")
    );
    assert_eq!(
        fx.env
            .note(&results, "icyci", "output.stdout", &commit)
            .as_deref(),
        Some(&b"relative\n"[..])
    );
    assert_lock_note(&fx.env, &results, "icyci", &commit);
    assert_eq!(fx.env.rev_parse(&results, "refs/heads/main"), commit);
    assert!(fx.env.daemon_dirs().is_empty());
}

/// A log pipe that went away (stderr closed) must not crash the daemon: every log line then
/// fails to be written, and the run still completes and exits normally (101 would be a panic).
#[test]
fn a_closed_stderr_does_not_crash_the_daemon() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let commit = fx.script_commit("echo out\necho err >&2\n");
    let mut cmd = fx.env.icyci();
    cmd.args(fx.args(&["-once"]))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut daemon = PipedDaemon::spawn(cmd);
    // The read end is closed: writes to the daemon's stderr fail with EPIPE.
    drop(daemon.child.stderr.take().expect("stderr was piped"));
    let status = daemon
        .wait_exit(LONG)
        .unwrap_or_else(|| panic!("icyci still running after {LONG:?}"));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert_eq!(
        fx.note_text("result.passed", &commit).as_deref(),
        Some("test.sh completed successfully\n")
    );
    assert_eq!(
        fx.note("output.stdout", &commit).as_deref(),
        Some(&b"out\n"[..])
    );
    assert_eq!(
        fx.note("output.stderr", &commit).as_deref(),
        Some(&b"err\n"[..])
    );
    assert_lock_note(&fx.env, &fx.results, "icyci", &commit);
    assert!(fx.env.daemon_dirs().is_empty());
}

#[test]
fn once_exit_codes_passed_failed_and_already_locked() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let passing = fx.script_commit("true\n");
    let (status, daemon) = fx.once(&[]);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    assert!(fx.note("result.passed", &passing).is_some());
    let lock = fx.note("locked", &passing);

    // The same commit again: already locked, nothing to do, nothing changed.
    let refs_before = fx.env.git(&fx.results, ["for-each-ref"]);
    let (status, daemon) = fx.once(&[]);
    assert_eq!(status.code(), Some(3), "{}", daemon.logs_for_humans());
    assert!(
        daemon
            .stderr()
            .contains("already locked in refs/notes/icyci.locked"),
        "{}",
        daemon.stderr()
    );
    assert!(!daemon.stderr().contains("script passed"));
    assert_eq!(fx.env.git(&fx.results, ["for-each-ref"]), refs_before);
    assert_eq!(fx.note("locked", &passing), lock);
    assert!(fx.env.daemon_dirs().is_empty());

    let failing = fx.script_commit("echo failing >&2\nexit 3\n");
    let (status, daemon) = fx.once(&[]);
    assert_eq!(status.code(), Some(1), "{}", daemon.logs_for_humans());
    assert_eq!(
        fx.note_text("result.failed", &failing).as_deref(),
        Some(failed_text("test.sh", "exit status 3").as_str())
    );
    assert_eq!(
        fx.note("output.stderr", &failing).as_deref(),
        Some(&b"failing\n"[..])
    );
    assert!(fx.env.daemon_dirs().is_empty());
}

#[test]
fn once_exit_code_for_an_unsigned_tip() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let commit = fx.env.commit_files(
        &fx.work,
        "unsigned",
        &[("test.sh", b"#!/bin/sh\ntouch \"$HOME/ran\"\n")],
        Sign::None,
    );
    fx.push_main();
    let (status, daemon) = fx.once(&[]);
    assert_eq!(status.code(), Some(3), "{}", daemon.logs_for_humans());
    assert!(fx.env.git(&fx.results, ["for-each-ref"]).is_empty());
    assert_eq!(fx.note("locked", &commit), None);
    assert!(
        !fx.env.home().join("ran").exists(),
        "the unsigned script ran"
    );
    assert!(fx.env.daemon_dirs().is_empty());
}

// ---- helpers ----

/// Runs `icyci args…` to its end (deadline [`LONG`]).
fn run<S: AsRef<str>>(fx: &Fixture, args: &[S]) -> (ExitStatus, Daemon) {
    let mut daemon = fx.env.spawn_icyci(args.iter().map(|a| a.as_ref()));
    let status = daemon.expect_exit(LONG);
    (status, daemon)
}

/// Points the `-results-repo` value of `args` at `results`.
fn replace_results(args: &mut [String], results: &str) {
    let i = args
        .iter()
        .position(|a| a == "-results-repo")
        .expect("-results-repo in the arguments");
    args[i + 1] = results.to_string();
}

/// A [`Fixture`] for usage errors: the source holds a commit signed with a trusted key when gpg
/// is there (so a command line wrongly accepted with `-once` would lock and push results),
/// an unsigned one otherwise.
struct UsageFixture {
    fx: Fixture,
}

/// The [`UsageFixture`], or `None` (the test is skipped) without gpg.
fn usage_fixture() -> Option<UsageFixture> {
    if !require_tool("gpg") {
        return None;
    }
    let fx = Fixture::new();
    fx.script_commit("touch \"$HOME/ran\"\n");
    Some(UsageFixture { fx })
}

impl UsageFixture {
    fn args(&self, extra: &[&str]) -> Vec<String> {
        self.fx.args(extra)
    }

    /// Runs `icyci args…` and checks it is a usage error: exit status 2, stderr's first line
    /// `icyci: …` containing `reason`, then the usage; nothing on stdout; nothing touched.
    /// Returns stderr.
    fn usage_error<S: AsRef<str>>(&self, args: &[S], reason: &str) -> String {
        let shown: Vec<&str> = args.iter().map(|a| a.as_ref()).collect();
        let (status, daemon) = run(&self.fx, args);
        assert_eq!(
            status.code(),
            Some(2),
            "{shown:?} should be a usage error\n{}",
            daemon.logs_for_humans()
        );
        let stderr = daemon.stderr();
        let (first, rest) = stderr
            .split_once('\n')
            .unwrap_or_else(|| panic!("{shown:?}: stderr {stderr:?}"));
        assert!(
            first.starts_with("icyci: "),
            "{shown:?}: first line {first:?}"
        );
        assert!(
            first.contains(reason),
            "{shown:?}: {first:?} lacks {reason:?}"
        );
        assert!(
            rest.starts_with("Usage: icyci"),
            "{shown:?}: no usage after the reason:\n{stderr}"
        );
        assert_eq!(daemon.stdout(), "", "{shown:?}");
        self.assert_untouched();
        stderr
    }

    /// No workspace was made, the results repository has no refs, the script never ran.
    fn assert_untouched(&self) {
        assert!(
            self.fx.env.daemon_dirs().is_empty(),
            "workspace made: {:?}",
            self.fx.env.daemon_dirs()
        );
        assert_eq!(self.fx.env.git(&self.fx.results, ["for-each-ref"]), "");
        assert!(!self.fx.env.home().join("ran").exists(), "the script ran");
    }
}
