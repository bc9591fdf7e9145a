//! The daemon's cycle end to end (SPEC §3, §5, §6, §8): clone, verify, lock, run, push,
//! cleanup and poll against real repositories, with real signed commits and real signals.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common::{descendants, process_alive, require_tool, wait_for, Daemon, Sign, TestEnv};

/// Generous deadline for anything the daemon does (the machine is shared with other tests).
const LONG: Duration = Duration::from_secs(30);

#[test]
fn separate_source_and_results_get_every_note_and_the_branch() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let commit = fx.script_commit("printf 'to stdout\\n'\nprintf 'to stderr\\n' >&2\n");
    let source_main_before = fx.env.rev_parse(&fx.source, "main");

    let (status, daemon) = fx.once(&[]);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());

    assert_eq!(
        fx.env.note_refs(&fx.results),
        [
            "refs/notes/icyci.locked",
            "refs/notes/icyci.output.stderr",
            "refs/notes/icyci.output.stdout",
            "refs/notes/icyci.result.passed",
            "refs/notes/icyci.verified",
        ]
    );
    assert_lock_note(&fx.env, &fx.results, "icyci", &commit);
    assert_eq!(
        fx.note("output.stdout", &commit).as_deref(),
        Some(&b"to stdout\n"[..])
    );
    assert_eq!(
        fx.note("output.stderr", &commit).as_deref(),
        Some(&b"to stderr\n"[..])
    );
    assert_eq!(
        fx.note_text("result.passed", &commit).as_deref(),
        Some("test.sh completed successfully\n")
    );
    assert_eq!(fx.note("result.failed", &commit), None);
    // The results branch is the tested commit; the source is left as it was, without notes.
    assert_eq!(fx.env.rev_parse(&fx.results, "refs/heads/main"), commit);
    assert_eq!(fx.env.rev_parse(&fx.source, "main"), source_main_before);
    assert!(fx.env.note_refs(&fx.source).is_empty());
    // The script's output is passed through to the daemon's own stdout and stderr.
    assert!(daemon.stdout().contains("to stdout\n"));
    assert!(daemon.stderr().contains("to stderr\n"));
    assert!(fx.env.daemon_dirs().is_empty());
}

#[test]
fn failed_script_gets_the_exact_failed_note() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let commit = fx.script_commit("echo partial\nexit 7\n");
    let (status, daemon) = fx.once(&[]);
    assert_eq!(status.code(), Some(1), "{}", daemon.logs_for_humans());
    assert_eq!(
        fx.note_text("result.failed", &commit).as_deref(),
        Some(failed_text("test.sh", "exit status 7").as_str())
    );
    assert_eq!(fx.note("result.passed", &commit), None);
    assert_eq!(
        fx.note("output.stdout", &commit).as_deref(),
        Some(&b"partial\n"[..])
    );
    assert_eq!(fx.note("output.stderr", &commit).as_deref(), Some(&b""[..]));
    // A failed test is still pushed to the results branch.
    assert_eq!(fx.env.rev_parse(&fx.results, "refs/heads/main"), commit);
}

#[test]
fn one_repository_as_source_and_results() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let commit = fx.script_commit("echo same\n");
    let repo = fx.source.to_string_lossy().into_owned();
    let mut cmd = fx.env.icyci();
    cmd.args([
        "-source-repo",
        &repo,
        "-results-repo",
        &repo,
        "-test-script",
        "test.sh",
        "-once",
    ]);
    let mut daemon = fx.env.spawn_logged(cmd, "icyci");
    let status = daemon.expect_exit(LONG);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    assert_eq!(
        fx.env
            .note_text(&fx.source, "icyci", "result.passed", &commit)
            .as_deref(),
        Some("test.sh completed successfully\n")
    );
    assert_eq!(
        fx.env
            .note(&fx.source, "icyci", "output.stdout", &commit)
            .as_deref(),
        Some(&b"same\n"[..])
    );
    assert_lock_note(&fx.env, &fx.source, "icyci", &commit);
    assert_eq!(fx.env.rev_parse(&fx.source, "main"), commit);
    assert_eq!(
        fx.env.git(
            &fx.source,
            ["for-each-ref", "--format=%(refname)", "refs/heads/"]
        ),
        "refs/heads/main"
    );
    // Nothing went to the other repository.
    assert!(fx.env.git(&fx.results, ["for-each-ref"]).is_empty());
}

#[test]
fn several_new_tips_in_a_row_are_each_tested() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    // The stdout note proves which commit was checked out for each run.
    let first = fx.script_commit("git rev-parse HEAD\n");
    let mut daemon = fx.spawn(&[]);
    fx.wait_passed(&mut daemon, &first);
    let mut tested = vec![first];
    for n in 0..3 {
        let commit = fx.signed_commit(&format!("tip {n}"));
        fx.wait_passed(&mut daemon, &commit);
        tested.push(commit);
    }
    for commit in &tested {
        assert_eq!(
            fx.note_text("output.stdout", commit),
            Some(format!("{commit}\n")),
            "stdout note of {commit}"
        );
        assert_lock_note(&fx.env, &fx.results, "icyci", commit);
    }
    wait_for("the results branch to reach the last tip", LONG, || {
        fx.env.rev_parse(&fx.results, "refs/heads/main") == *tested.last().unwrap()
    });

    // Two commits pushed together: only the tip is tested.
    let skipped = fx.env.commit(&fx.work, "intermediate", fx.sign());
    let tip = fx.signed_commit("tip after intermediate");
    fx.wait_passed(&mut daemon, &tip);
    assert_eq!(
        fx.note("locked", &skipped),
        None,
        "intermediate commit locked"
    );
    assert_eq!(fx.note("output.stdout", &skipped), None);
    assert!(daemon.is_running(), "{}", daemon.logs_for_humans());
}

#[test]
fn restart_tests_new_tips_but_never_reruns_a_locked_commit() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let counter = fx.env.path("counter");
    let body = format!("git rev-parse HEAD >> '{}'\n", counter.display());
    let first = fx.script_commit(&body);
    let runs = || fs::read_to_string(&counter).unwrap_or_default();

    let mut daemon = fx.spawn(&[]);
    fx.wait_passed(&mut daemon, &first);
    stop(&mut daemon, "TERM");
    assert_eq!(runs(), format!("{first}\n"));

    // New commits while the daemon is down; the restarted daemon tests the new tip.
    let skipped = fx.env.commit(&fx.work, "while stopped 1", fx.sign());
    let second = fx.signed_commit("while stopped 2");
    let mut daemon = fx.spawn(&[]);
    fx.wait_passed(&mut daemon, &second);
    stop(&mut daemon, "TERM");
    assert_eq!(runs(), format!("{first}\n{second}\n"));
    assert_eq!(fx.note("locked", &skipped), None);

    // Restarted on an already locked tip: not run again.
    let mut daemon = fx.spawn(&[]);
    daemon.wait_for_stderr("already locked in refs/notes/icyci.locked", LONG);
    assert!(daemon.is_running(), "{}", daemon.logs_for_humans());
    stop(&mut daemon, "TERM");
    // The operator is told why: the lock has a result, so it was tested.
    assert!(
        daemon.stderr().contains("with a result (tested)"),
        "{}",
        daemon.logs_for_humans()
    );
    assert_eq!(runs(), format!("{first}\n{second}\n"));
    assert!(!daemon.stderr().contains("script passed"));
}

#[test]
fn script_environment_has_pid_and_private_notes_dir() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let commit = fx.script_commit(
        "echo \"pid=$ICYCI_PID\"\n\
         echo \"dir=$ICYCI_NOTES_DIR\"\n\
         stat -c 'mode=%a type=%F' \"$ICYCI_NOTES_DIR\"\n\
         echo hello > \"$ICYCI_NOTES_DIR/extra\" && echo wrote\n",
    );
    let mut daemon = fx.spawn(&["-once"]);
    let status = daemon.expect_exit(LONG);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    let stdout = fx.note_text("output.stdout", &commit).expect("stdout note");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(lines[0], format!("pid={}", daemon.pid()));
    let dir = lines[1].strip_prefix("dir=").expect("dir line");
    assert!(Path::new(dir).is_absolute(), "{dir}");
    let state_dirs = fx.env.state_dirs();
    assert_eq!(
        state_dirs
            .iter()
            .map(|d| d.join("workspace"))
            .collect::<Vec<_>>(),
        [Path::new(dir).parent().expect("in the workspace")],
        "notes dir {dir} is not in the workspace in the state directory"
    );
    assert_eq!(lines[2], "mode=700 type=directory");
    assert_eq!(lines[3], "wrote");
    assert_eq!(fx.note("extra", &commit).as_deref(), Some(&b"hello\n"[..]));
}

#[test]
fn sigusr1_mid_run_is_logged_and_the_run_completes() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let gate = fx.env.path("gate");
    let commit = fx.script_commit(&gated_script(&gate, "echo finished\n"));
    let mut daemon = fx.spawn(&["-once"]);
    daemon.wait_for_stderr("script-started", LONG);
    daemon.signal("USR1");
    daemon.wait_for_stderr("SIGUSR1 received; the cycle continues", LONG);
    assert!(daemon.is_running(), "{}", daemon.logs_for_humans());
    fs::write(&gate, b"").expect("create the gate");
    let status = daemon.expect_exit(LONG);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    let stderr = daemon.stderr();
    assert!(stderr.contains("script passed"), "{stderr}");
    assert!(stderr.contains("results pushed"), "{stderr}");
    assert_eq!(
        fx.note_text("result.passed", &commit).as_deref(),
        Some("test.sh completed successfully\n")
    );
    assert_eq!(
        fx.note("output.stdout", &commit).as_deref(),
        Some(&b"finished\n"[..])
    );
    assert_eq!(
        fx.note("output.stderr", &commit).as_deref(),
        Some(&b"script-started\n"[..])
    );
}

#[test]
fn rewritten_source_branch_is_followed_and_notes_survive_gc() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let base = fx.script_commit("echo ok\n");
    let mut daemon = fx.spawn(&["-push-source-to-results"]);
    fx.wait_passed(&mut daemon, &base);
    let dropped = fx.signed_commit("to be rewritten");
    fx.wait_passed(&mut daemon, &dropped);
    wait_for("the results branch at the first tip", LONG, || {
        fx.env.rev_parse(&fx.results, "refs/heads/main") == dropped
    });

    // Rewrite the branch: `dropped` is gone from the source.
    fx.env.git(&fx.work, ["reset", "-q", "--hard", &base]);
    let rewritten = fx.env.commit(&fx.work, "rewritten", fx.sign());
    fx.env.push(&fx.work, &fx.source, &["+main"]);
    fx.wait_passed(&mut daemon, &rewritten);
    wait_for("the results branch to follow the rewrite", LONG, || {
        fx.env.rev_parse(&fx.results, "refs/heads/main") == rewritten
    });
    stop(&mut daemon, "TERM");

    fx.env.git(
        &fx.results,
        [
            "-c",
            "gc.reflogExpire=now",
            "-c",
            "gc.reflogExpireUnreachable=now",
            "gc",
            "-q",
            "--prune=now",
        ],
    );
    assert!(
        !fx.env
            .git_output(
                &fx.results,
                ["cat-file", "-e", &format!("{dropped}^{{commit}}")]
            )
            .status
            .success(),
        "the rewritten-away commit should have been pruned (else this test proves little)"
    );
    for commit in [&base, &dropped, &rewritten] {
        assert_lock_note(&fx.env, &fx.results, "icyci", commit);
        assert_eq!(
            fx.note_text("result.passed", commit).as_deref(),
            Some("test.sh completed successfully\n"),
            "passed note of {commit}"
        );
        assert_eq!(
            fx.note("output.stdout", commit).as_deref(),
            Some(&b"ok\n"[..])
        );
        assert_eq!(fx.note("output.stderr", commit).as_deref(), Some(&b""[..]));
    }
    assert_eq!(fx.env.rev_parse(&fx.results, "refs/heads/main"), rewritten);
}

#[test]
fn await_command_timeout_fails_the_run_and_kills_its_processes() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let pids = fx.env.path("pids");
    let commit = fx.script_commit(&format!(
        "sleep 60 &\necho \"$$ $!\" > '{}'\necho script-started >&2\nsleep 60\n",
        pids.display()
    ));
    let mut daemon = fx.spawn(&["-timeout=await-command:1s", "-once"]);
    daemon.wait_for_stderr("script-started", LONG);
    let pids = read_pids(&pids);
    let status = daemon.expect_exit(LONG);
    assert_eq!(status.code(), Some(1), "{}", daemon.logs_for_humans());
    assert_eq!(
        fx.note_text("result.failed", &commit).as_deref(),
        Some(failed_text("test.sh", "1s await-command timeout reached").as_str())
    );
    assert_eq!(fx.note("result.passed", &commit), None);
    assert_eq!(
        fx.note("output.stderr", &commit).as_deref(),
        Some(&b"script-started\n"[..])
    );
    for pid in pids {
        wait_for(&format!("script process {pid} to be gone"), LONG, || {
            !process_alive(pid)
        });
    }
    assert!(fx.env.daemon_dirs().is_empty());
}

#[test]
fn sigterm_mid_run_stops_the_script_and_removes_the_workspace() {
    signal_mid_run("TERM");
}

#[test]
fn sigint_mid_run_stops_the_script_and_removes_the_workspace() {
    signal_mid_run("INT");
}

/// A closed terminal, or a script signalling `$ICYCI_PID`, sends SIGHUP: it must stop the daemon
/// like SIGTERM (script group gone, exit 0, nothing left in TMPDIR, lock released) rather than
/// kill it outright (status 129) and orphan the script.
#[test]
fn sighup_mid_run_stops_the_script_and_removes_the_workspace() {
    signal_mid_run("HUP");
}

fn signal_mid_run(sig: &str) {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let pids = fx.env.path("pids");
    let second_run = fx.env.path("second-run");
    let commit = fx.script_commit(&format!(
        "[ -e '{}' ] && exit 0\nsleep 300 &\necho \"$$ $!\" > '{}'\necho script-started >&2\nwait\n",
        second_run.display(),
        pids.display()
    ));
    let mut daemon = fx.spawn(&[]);
    daemon.wait_for_stderr("script-started", LONG);
    let pids = read_pids(&pids);
    assert_eq!(
        fx.env.workspaces().len(),
        1,
        "the workspace exists while running"
    );
    for &pid in &pids {
        assert!(process_alive(pid));
    }
    daemon.signal(sig);
    let status = daemon.expect_exit(LONG);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    for pid in pids {
        wait_for(&format!("script process {pid} to be gone"), LONG, || {
            !process_alive(pid)
        });
    }
    assert!(
        fx.env.daemon_dirs().is_empty(),
        "workspace left behind: {:?}",
        fx.env.daemon_dirs()
    );

    // The interrupted run's lock is released, so that the commit is tested again: the original
    // left it locked without results forever.
    assert_eq!(
        fx.note("locked", &commit),
        None,
        "lock kept after an interrupted run:\n{}",
        daemon.logs_for_humans()
    );
    assert!(daemon.stderr().contains("lock released"));
    std::fs::write(&second_run, b"").expect("write marker");
    let (status, daemon) = fx.once(&[]);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    assert!(
        fx.note("result.passed", &commit).is_some(),
        "the same commit is tested again"
    );
}

#[test]
fn sigterm_while_polling_exits_zero_and_removes_the_workspace() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let commit = fx.script_commit("true\n");
    let mut daemon = fx.spawn(&[]);
    fx.wait_passed(&mut daemon, &commit);
    daemon.wait_for_stderr("state cleanup -> poll", LONG);
    assert_eq!(fx.env.workspaces().len(), 1);
    daemon.signal("TERM");
    let status = daemon.expect_exit(LONG);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    assert!(fx.env.daemon_dirs().is_empty());
}

#[test]
fn source_reference_clones_through_alternates() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let commit = fx.script_commit("cat .git/objects/info/alternates\n");
    let reference = fx.env.path("reference.git");
    fx.env.git(
        fx.env.root(),
        [
            "clone".as_ref(),
            "-q".as_ref(),
            "--bare".as_ref(),
            fx.source.as_os_str(),
            reference.as_os_str(),
        ],
    );
    let reference_arg = reference.to_string_lossy().into_owned();
    let (status, daemon) = fx.once(&["-source-reference", &reference_arg]);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    let alternates = fx.note_text("output.stdout", &commit).expect("stdout note");
    let listed = PathBuf::from(alternates.trim());
    assert_eq!(
        fs::canonicalize(&listed).expect("the listed alternate exists"),
        fs::canonicalize(reference.join("objects")).unwrap(),
        "alternates: {alternates:?}"
    );
    assert_eq!(
        fx.note_text("result.passed", &commit).as_deref(),
        Some("test.sh completed successfully\n")
    );

    // A reference that is not a repository makes the clone fail: the option is really used.
    // The daemon keeps retrying (without -once) and still stops cleanly on SIGTERM. (One that
    // does not exist at all is a usage error at start: cli.rs.)
    let fx = Fixture::new();
    fx.script_commit("true\n");
    let missing = fx.env.path("no-such-reference.git");
    fs::create_dir(&missing).expect("an empty directory");
    let mut daemon = fx.spawn(&["-source-reference", &missing.to_string_lossy()]);
    let stderr = daemon.wait_for_stderr("clone failed", LONG);
    assert!(
        stderr.contains("no-such-reference.git"),
        "the clone error does not name the reference:\n{stderr}"
    );
    stop(&mut daemon, "TERM");
    assert!(fx.env.git(&fx.results, ["for-each-ref"]).is_empty());
    assert!(fx.env.daemon_dirs().is_empty());
}

#[test]
fn mirror_mode_without_a_test_script() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let commit = fx.signed_commit("mirrored");
    let mut cmd = fx.env.icyci();
    cmd.args(fx.base_args()).arg("-once");
    let mut daemon = fx.env.spawn_logged(cmd, "icyci");
    let status = daemon.expect_exit(LONG);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    assert_eq!(
        fx.note_text("result.passed", &commit).as_deref(),
        Some("No -test-script specified\n")
    );
    assert_eq!(
        fx.env.note_refs(&fx.results),
        [
            "refs/notes/icyci.locked",
            "refs/notes/icyci.result.passed",
            "refs/notes/icyci.verified",
        ]
    );
    assert_eq!(fx.env.rev_parse(&fx.results, "refs/heads/main"), commit);
}

#[test]
fn missing_and_non_executable_scripts_fail_and_the_daemon_goes_on() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let missing = fx.signed_commit("no script at all");
    let mut cmd = fx.env.icyci();
    cmd.args(fx.base_args()).args(["-test-script", "check"]);
    let mut daemon = fx.env.spawn_logged(cmd, "icyci");
    let failed = fx.wait_note(&mut daemon, "result.failed", &missing);
    let failed = String::from_utf8_lossy(&failed);
    assert!(
        failed.starts_with("check failed: cannot run ")
            && failed.contains("/source/check: ")
            && failed.contains("No such file or directory"),
        "{failed:?}"
    );
    assert!(failed.ends_with(&see_line()), "{failed:?}");
    assert_eq!(
        fx.note("output.stdout", &missing).as_deref(),
        Some(&b""[..])
    );
    assert_eq!(
        fx.note("output.stderr", &missing).as_deref(),
        Some(&b""[..])
    );
    assert_eq!(fx.note("result.passed", &missing), None);

    let not_executable = fx.env.commit_files(
        &fx.work,
        "script without the x bit",
        &[("check", b"#!/bin/sh\necho hi\n")],
        fx.sign(),
    );
    fx.push_main();
    let failed = fx.wait_note(&mut daemon, "result.failed", &not_executable);
    let failed = String::from_utf8_lossy(&failed);
    assert!(
        failed.starts_with("check failed: cannot run ")
            && failed.contains("/source/check: ")
            && failed.contains("Permission denied"),
        "{failed:?}"
    );
    assert!(failed.ends_with(&see_line()), "{failed:?}");

    // The daemon keeps going: the fixed script passes.
    fs::set_permissions(fx.work.join("check"), fs::Permissions::from_mode(0o755))
        .expect("chmod +x check");
    let fixed = fx.signed_commit("make check executable");
    let passed = fx.wait_note(&mut daemon, "result.passed", &fixed);
    assert_eq!(passed, b"check completed successfully\n");
    assert_eq!(
        fx.note("output.stdout", &fixed).as_deref(),
        Some(&b"hi\n"[..])
    );
}

#[test]
fn megabytes_of_non_utf8_output_are_stored_byte_for_byte() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let mut big: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    big.extend_from_slice(b"\xff\xfe\x80 not utf-8 \xc3\x28\x00 and no final new line");
    assert!(std::str::from_utf8(&big).is_err());
    let err: &[u8] = b"err \xff\xfe\x00\r\n\xc0\xafend";
    let commit = fx.env.commit_files(
        &fx.work,
        "big output",
        &[
            ("test.sh", b"#!/bin/sh\ncat big.bin\ncat err.bin >&2\n"),
            ("big.bin", &big),
            ("err.bin", err),
        ],
        fx.sign(),
    );
    fx.push_main();
    let (status, daemon) = fx.once(&[]);
    assert_eq!(status.code(), Some(0), "{}", daemon.stderr());
    let stdout = fx.note("output.stdout", &commit).expect("stdout note");
    assert_eq!(stdout.len(), big.len());
    assert!(
        stdout == big,
        "stdout note differs from the script's output"
    );
    assert_eq!(fx.note("output.stderr", &commit).as_deref(), Some(err));
    // Passed through whole as well, to a stdout that is read (a file).
    let passed = std::fs::read(daemon.stdout_path()).expect("the daemon's stdout");
    assert!(
        passed == big,
        "passed through: {} of {} bytes\n{}",
        passed.len(),
        big.len(),
        daemon.stderr()
    );
}

#[test]
fn branch_with_a_slash() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let commit = fx.env.commit_files(
        &fx.work,
        "on feature/x",
        &[("test.sh", b"#!/bin/sh\necho feature\n")],
        fx.sign(),
    );
    fx.env
        .push(&fx.work, &fx.source, &["main:refs/heads/feature/x"]);
    let (status, daemon) = fx.once(&["-source-branch=feature/x"]);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    assert_eq!(
        fx.note_text("result.passed", &commit).as_deref(),
        Some("test.sh completed successfully\n")
    );
    assert_eq!(
        fx.env.git(
            &fx.results,
            [
                "for-each-ref",
                "--format=%(refname) %(objectname)",
                "refs/heads/"
            ]
        ),
        format!("refs/heads/feature/x {commit}")
    );
}

#[test]
fn empty_output_and_empty_extra_file_never_open_an_editor() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let commit = fx.script_commit(": > \"$ICYCI_NOTES_DIR/empty\"\n");
    let mut cmd = fx.env.icyci();
    cmd.args(fx.args(&["-once"]))
        .env("EDITOR", "/bin/false")
        .env("VISUAL", "/bin/false")
        .env("GIT_EDITOR", "/bin/false");
    let mut daemon = fx.env.spawn_logged(cmd, "icyci");
    let status = daemon.expect_exit(LONG);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    assert_eq!(fx.note("output.stdout", &commit), Some(Vec::new()));
    assert_eq!(fx.note("output.stderr", &commit), Some(Vec::new()));
    assert_eq!(fx.note("empty", &commit), Some(Vec::new()));
    assert_eq!(
        fx.note_text("result.passed", &commit).as_deref(),
        Some("test.sh completed successfully\n")
    );
}

#[test]
fn same_repository_keeps_a_commit_pushed_during_the_run() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let gate = fx.env.path("gate");
    let first = fx.script_commit(&gated_script(&gate, "git rev-parse HEAD\n"));
    let repo = fx.source.to_string_lossy().into_owned();
    let mut cmd = fx.env.icyci();
    cmd.args([
        "-source-repo",
        &repo,
        "-results-repo",
        &repo,
        "-test-script=test.sh",
        "-poll-interval=100ms",
    ]);
    let mut daemon = fx.env.spawn_logged(cmd, "icyci");
    daemon.wait_for_stderr("script-started", LONG);

    let second = fx.signed_commit("pushed during the run");
    assert_eq!(fx.env.rev_parse(&fx.source, "main"), second);
    fs::write(&gate, b"").expect("open the gate");

    let wait_passed = |commit: &str| {
        wait_for(&format!("the passed note of {commit}"), LONG, || {
            fx.env
                .note(&fx.source, "icyci", "result.passed", commit)
                .is_some()
        })
    };
    wait_passed(&first);
    assert_eq!(
        fx.env.rev_parse(&fx.source, "main"),
        second,
        "the results push rewound the branch\n{}",
        daemon.logs_for_humans()
    );
    wait_passed(&second);
    assert_eq!(fx.env.rev_parse(&fx.source, "main"), second);
    assert_eq!(
        fx.env
            .note_text(&fx.source, "icyci", "output.stdout", &second),
        Some(format!("{second}\n"))
    );
    assert!(daemon.is_running(), "{}", daemon.logs_for_humans());
}

#[test]
fn workspace_is_removed_after_once() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let commit = fx.script_commit("pwd\n");
    let (status, daemon) = fx.once(&[]);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    let checkout = fx.note_text("output.stdout", &commit).expect("stdout note");
    let checkout = Path::new(checkout.trim());
    let workspace = checkout.parent().expect("the checkout is in the workspace");
    let state_dirs = fx.env.state_dirs();
    assert_eq!(state_dirs.len(), 1, "one state directory: {state_dirs:?}");
    assert_eq!(
        workspace,
        state_dirs[0].join("workspace"),
        "checkout {} not in the workspace in the state directory",
        checkout.display()
    );
    assert!(!workspace.exists(), "{} still exists", workspace.display());
    assert!(fx.env.daemon_dirs().is_empty());
}

/// The daemon passes the script's output through to its own stdout. When nobody reads that (a
/// stalled pipe, a paused terminal), the capture into the notes must go on regardless: the
/// script is not blocked, the run ends in time, the stdout note is complete, and `-once` exits.
#[test]
fn a_stalled_reader_of_the_daemons_stdout_does_not_stall_the_script() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let mut run = StalledStdoutRun::start(&fx);
    run.assert_complete_notes(&fx);
    let status = run
        .daemon
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| {
            panic!(
                "icyci -once did not exit after pushing its results\n{}",
                run.log()
            )
        });
    assert_eq!(status.code(), Some(0), "{}", run.log());
    assert!(fx.env.daemon_dirs().is_empty());
}

/// The part of [`a_stalled_reader_of_the_daemons_stdout_does_not_stall_the_script`] that works
/// today: with nobody reading the daemon's stdout the run is still captured in full and in time.
#[test]
fn a_stalled_reader_of_the_daemons_stdout_does_not_cut_the_notes() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let mut run = StalledStdoutRun::start(&fx);
    run.assert_complete_notes(&fx);
}

/// `icyci -once` whose script prints 4 MiB on stdout, with the daemon's stdout a pipe that is
/// never read (it fills up after 64 KiB and stays full) but kept open. 4 MiB is well beyond
/// what the pipe and the daemon's passthrough backlog (16 reads of up to 64 KiB) can hold, so
/// a passthrough that waits for room instead of dropping output is caught too.
struct StalledStdoutRun {
    daemon: PipedDaemon,
    _unread_stdout: std::process::ChildStdout,
    stderr_log: PathBuf,
    commit: String,
}

impl StalledStdoutRun {
    const SIZE: usize = 4 * 1024 * 1024;

    fn start(fx: &Fixture) -> StalledStdoutRun {
        let commit = fx.script_commit("head -c 4194304 /dev/zero | tr '\\0' 'x'\n");
        let stderr_log = fx.env.logs().join("icyci-stalled-stdout.stderr");
        let mut cmd = fx.env.icyci();
        cmd.args(fx.args(&["-once", "-timeout=await-command:20s"]))
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&stderr_log).expect("create the stderr log"));
        let mut daemon = PipedDaemon::spawn(cmd);
        let unread_stdout = daemon.child.stdout.take().expect("stdout was piped");
        StalledStdoutRun {
            daemon,
            _unread_stdout: unread_stdout,
            stderr_log,
            commit,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Waits for the verdict, well before the script's 20 s timeout (where a capture blocked by
    /// the passthrough would end), and checks it passed with the whole output in its stdout note.
    fn assert_complete_notes(&mut self, fx: &Fixture) {
        let commit = self.commit.clone();
        let deadline = Instant::now() + Duration::from_secs(15);
        while fx.note("result.passed", &commit).is_none()
            && fx.note("result.failed", &commit).is_none()
        {
            if let Some(status) = self.daemon.child.try_wait().expect("try_wait on icyci") {
                panic!("icyci exited ({status}) without a verdict\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "no verdict note after 15 s\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let commit = &commit;
        assert_eq!(
            fx.note_text("result.passed", commit).as_deref(),
            Some("test.sh completed successfully\n"),
            "{}",
            self.log()
        );
        assert_eq!(fx.note("result.failed", commit), None);
        let stdout = fx.note("output.stdout", commit).expect("stdout note");
        assert_eq!(
            stdout.len(),
            Self::SIZE,
            "the stdout note was cut\n{}",
            self.log()
        );
        assert!(stdout.iter().all(|&b| b == b'x'), "stdout note content");
    }
}

/// A script that deletes the daemon's clone leaves it unable to record results. The daemon
/// clones again and retries the commit, gives it up after 3 attempts (releasing its lock), and
/// goes on with the next commit, without spinning on the broken clone meanwhile.
#[test]
fn a_script_that_deletes_the_clone_does_not_wedge_the_daemon() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let runs = fx.env.path("runs");
    let broken = fx.script_commit(&format!("echo run >> '{}'\nrm -rf .git\n", runs.display()));
    let mut daemon = fx.spawn(&[]);
    daemon.wait_for_stderr("giving up on this commit after 3 attempts", LONG);
    assert_eq!(
        fs::read_to_string(&runs).unwrap_or_default(),
        "run\nrun\nrun\n",
        "the commit is run 3 times"
    );

    let next = fx.script_commit("echo ok\n");
    fx.wait_passed(&mut daemon, &next);
    assert_eq!(
        fx.note("output.stdout", &next).as_deref(),
        Some(&b"ok\n"[..])
    );
    assert_eq!(
        fx.note("locked", &broken),
        None,
        "the given-up commit is still locked\n{}",
        daemon.logs_for_humans()
    );
    let stderr = daemon.stderr();
    let failures = stderr.lines().filter(|l| l.contains("failed")).count();
    assert!(
        failures <= 30,
        "{failures} lines with `failed`: the daemon looped on an error\n{}",
        daemon.logs_for_humans()
    );
    assert!(daemon.is_running(), "{}", daemon.logs_for_humans());
}

/// A stale `.git/index.lock` left by a script makes the next checkout fail; the daemon clones
/// again instead of retrying the checkout forever, so the next commit is still tested.
#[test]
fn a_lock_file_left_in_the_clone_does_not_block_the_next_commit() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let first = fx.script_commit("touch .git/index.lock\n");
    let mut daemon = fx.spawn(&[]);
    fx.wait_passed(&mut daemon, &first);

    let second = fx.script_commit("echo ok\n");
    fx.wait_passed(&mut daemon, &second);
    // Its own script ran, so its checkout worked.
    assert_eq!(
        fx.note("output.stdout", &second).as_deref(),
        Some(&b"ok\n"[..])
    );
    assert!(daemon.is_running(), "{}", daemon.logs_for_humans());
}

/// The script may replace everything beside its checkout in the workspace with links to files
/// of its own; the daemon's captured output and verdict must not be among what it can swap.
#[test]
fn the_script_cannot_swap_the_daemons_own_files() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let forged = fx.env.path("forged");
    fs::create_dir(&forged).expect("create the forged directory");
    for name in ["stdout", "stderr", "verdict"] {
        fs::write(forged.join(name), format!("FORGED {name}\n")).expect("write a forged file");
    }
    let commit = fx.script_commit(&format!(
        "workspace=$(dirname \"$ICYCI_NOTES_DIR\")\n\
         for entry in \"$workspace\"/* \"$workspace\"/.[!.]*; do\n\
         \x20 [ -e \"$entry\" ] || [ -L \"$entry\" ] || continue\n\
         \x20 [ \"${{entry##*/}}\" = source ] && continue\n\
         \x20 rm -rf \"$entry\" && ln -s '{}' \"$entry\" && echo \"swapped ${{entry##*/}}\" >&2\n\
         done\n\
         echo 'real output'\n",
        forged.display()
    ));
    let (status, daemon) = fx.once(&[]);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    assert!(
        daemon.stderr().contains("swapped notes"),
        "the script did not swap the workspace entries\n{}",
        daemon.logs_for_humans()
    );
    assert_eq!(
        fx.note_text("output.stdout", &commit).as_deref(),
        Some("real output\n"),
        "{}",
        daemon.logs_for_humans()
    );
    assert_eq!(
        fx.note_text("result.passed", &commit).as_deref(),
        Some("test.sh completed successfully\n")
    );
    assert_eq!(fx.note("result.failed", &commit), None);
    let stderr_note = fx.note_text("output.stderr", &commit).expect("stderr note");
    assert!(!stderr_note.contains("FORGED"), "{stderr_note:?}");
    // Nothing was written or removed through the links.
    for name in ["stdout", "stderr", "verdict"] {
        assert_eq!(
            fs::read_to_string(forged.join(name)).expect("read a forged file"),
            format!("FORGED {name}\n")
        );
    }
    assert!(fx.env.daemon_dirs().is_empty());
}

// ---- shared helpers (also used by cli.rs) ----

/// A test environment with a GnuPG key, a work repository `work`, and two bare repositories:
/// the source (`source.git`, which `work` pushes to) and the results (`results.git`).
pub(crate) struct Fixture {
    pub env: TestEnv,
    pub fpr: String,
    pub work: PathBuf,
    pub source: PathBuf,
    pub results: PathBuf,
}

impl Fixture {
    pub fn new() -> Fixture {
        let env = TestEnv::new();
        let fpr = env.gpg_key();
        let work = env.work_repo("work");
        let source = env.bare_repo("source.git");
        let results = env.bare_repo("results.git");
        Fixture {
            env,
            fpr,
            work,
            source,
            results,
        }
    }

    /// Signing with the fixture's trusted key.
    pub fn sign(&self) -> Sign {
        Sign::Gpg(self.fpr.clone())
    }

    /// Pushes `work`'s main to the source.
    pub fn push_main(&self) {
        self.env.push(&self.work, &self.source, &["main"]);
    }

    /// Commits `test.sh` (`#!/bin/sh` then `body`), signed, pushes it; the commit id.
    pub fn script_commit(&self, body: &str) -> String {
        let text = format!("#!/bin/sh\n{body}");
        let commit = self.env.commit_files(
            &self.work,
            "test script",
            &[("test.sh", text.as_bytes())],
            self.sign(),
        );
        self.push_main();
        commit
    }

    /// A new signed commit, pushed; its id.
    pub fn signed_commit(&self, message: &str) -> String {
        let commit = self.env.commit(&self.work, message, self.sign());
        self.push_main();
        commit
    }

    /// `-source-repo <source> -results-repo <results> -poll-interval=100ms`.
    pub fn base_args(&self) -> Vec<String> {
        vec![
            "-source-repo".into(),
            self.source.to_string_lossy().into_owned(),
            "-results-repo".into(),
            self.results.to_string_lossy().into_owned(),
            "-poll-interval=100ms".into(),
        ]
    }

    /// [`Fixture::base_args`], `-test-script test.sh`, then `extra`.
    pub fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = self.base_args();
        args.extend(["-test-script".into(), "test.sh".into()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Starts the daemon with [`Fixture::args`].
    pub fn spawn(&self, extra: &[&str]) -> Daemon {
        self.env.spawn_icyci(self.args(extra))
    }

    /// Runs the daemon with [`Fixture::args`] and `-once` to its end.
    pub fn once(&self, extra: &[&str]) -> (ExitStatus, Daemon) {
        let mut args: Vec<&str> = extra.to_vec();
        args.push("-once");
        let mut daemon = self.spawn(&args);
        let status = daemon.expect_exit(LONG);
        (status, daemon)
    }

    /// The note `refs/notes/icyci.<name>` on `commit` in the results repository.
    pub fn note(&self, name: &str, commit: &str) -> Option<Vec<u8>> {
        self.env.note(&self.results, "icyci", name, commit)
    }

    /// Like [`Fixture::note`], as text.
    pub fn note_text(&self, name: &str, commit: &str) -> Option<String> {
        self.env.note_text(&self.results, "icyci", name, commit)
    }

    /// Waits until the results repository has the note `icyci.<name>` on `commit`; its bytes.
    /// Panics early with the logs when the daemon exited.
    pub fn wait_note(&self, daemon: &mut Daemon, name: &str, commit: &str) -> Vec<u8> {
        let mut found = None;
        wait_for(&format!("note icyci.{name} on {commit}"), LONG, || {
            found = self.note(name, commit);
            if found.is_none() {
                if let Some(status) = daemon.try_status() {
                    panic!(
                        "the daemon exited ({status}) before note icyci.{name} on {commit}\n{}",
                        daemon.logs_for_humans()
                    );
                }
            }
            found.is_some()
        });
        found.expect("found")
    }

    /// Waits for the passed note on `commit` and checks its text.
    pub fn wait_passed(&self, daemon: &mut Daemon, commit: &str) {
        let note = self.wait_note(daemon, "result.passed", commit);
        assert_eq!(
            String::from_utf8_lossy(&note),
            "test.sh completed successfully\n",
            "{}",
            daemon.logs_for_humans()
        );
    }
}

/// An `icyci` started without [`Daemon`], for the tests that need its stdout or stderr as a
/// pipe. On drop it is killed, with everything it started, if it still runs.
pub(crate) struct PipedDaemon {
    pub child: Child,
}

impl PipedDaemon {
    /// Starts `cmd` as it is (standard streams included).
    pub fn spawn(mut cmd: Command) -> PipedDaemon {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        PipedDaemon { child }
    }

    /// Waits up to `timeout` for the process to exit; its status, `None` if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait on icyci") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PipedDaemon {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let pids = descendants(self.child.id());
        let _ = self.child.kill();
        if !pids.is_empty() {
            let _ = Command::new("kill")
                .args(["-s", "KILL"])
                .args(pids.iter().map(u32::to_string))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.wait();
    }
}

/// The second line of every failed note in the default namespace.
pub(crate) fn see_line() -> String {
    "\nSee refs/notes/icyci.output.stdout and refs/notes/icyci.output.stderr for details\n"
        .to_string()
}

/// The whole failed note of `script` for `reason`, default namespace.
pub(crate) fn failed_text(script: &str, reason: &str) -> String {
    format!("{script} failed: {reason}{}", see_line())
}

/// Checks the lock note `<time>: this commit is being tested by icyCI` (then the holder and
/// lease lines) on `commit`.
pub(crate) fn assert_lock_note(env: &TestEnv, repo: &Path, ns: &str, commit: &str) {
    let lock = env
        .note_text(repo, ns, "locked", commit)
        .unwrap_or_else(|| panic!("no lock note on {commit}"));
    let (time, rest) = lock
        .split_once(": ")
        .unwrap_or_else(|| panic!("lock note {lock:?}"));
    assert!(!time.trim().is_empty(), "lock note {lock:?}");
    // The original's first line, then the holder and its lease.
    let mut lines = rest.lines();
    assert_eq!(
        lines.next(),
        Some("this commit is being tested by icyCI"),
        "lock note {lock:?}"
    );
    assert!(
        lines.next().is_some_and(|l| l.starts_with("holder: ")),
        "lock note {lock:?}"
    );
    assert!(
        lines.next().is_some_and(|l| l.starts_with("lease-until: ")),
        "lock note {lock:?}"
    );
}

/// A script body that prints `script-started` on stderr, waits until `gate` exists, then runs
/// `then`.
fn gated_script(gate: &Path, then: &str) -> String {
    format!(
        "echo script-started >&2\nwhile [ ! -e '{}' ]; do sleep 0.05; done\n{then}",
        gate.display()
    )
}

/// The pids written (space separated) to `file` by a script.
fn read_pids(file: &Path) -> Vec<u32> {
    let text = fs::read_to_string(file).expect("read the pid file");
    let pids: Vec<u32> = text
        .split_whitespace()
        .map(|p| p.parse().expect("a pid"))
        .collect();
    assert!(!pids.is_empty(), "no pids in {}", file.display());
    pids
}

/// Sends `sig` and expects exit status 0.
fn stop(daemon: &mut Daemon, sig: &str) {
    daemon.signal(sig);
    let status = daemon.expect_exit(LONG);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
}

/// The script runs inside the daemon's clone. Notes it adds there and hooks it plants must not
/// reach the results or run as part of the daemon's own git commands.
#[test]
fn notes_and_hooks_a_script_leaves_in_the_clone_are_not_used() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let unsigned = fx
        .env
        .commit(&fx.work, "unsigned, never tested", Sign::None);
    let hook_ran = fx.env.path("hook-ran");
    let body = format!(
        "git notes --ref=refs/notes/icyci.result.passed add -m forged {unsigned}\n\
         git notes --ref=refs/notes/icyci.planted add -m forged HEAD\n\
         printf '#!/bin/sh\\ntouch \"{marker}\"\\n' > .git/hooks/reference-transaction\n\
         chmod +x .git/hooks/reference-transaction\n",
        marker = hook_ran.display()
    );
    let commit = fx.script_commit(&body);

    let (status, daemon) = fx.once(&[]);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());

    assert_eq!(
        fx.env.note_refs(&fx.results),
        [
            "refs/notes/icyci.locked",
            "refs/notes/icyci.output.stderr",
            "refs/notes/icyci.output.stdout",
            "refs/notes/icyci.result.passed",
            "refs/notes/icyci.verified",
        ],
        "a note ref made by the script in the clone was pushed"
    );
    assert_eq!(
        fx.note("result.passed", &unsigned),
        None,
        "a forged verdict was pushed"
    );
    assert!(fx.note("result.passed", &commit).is_some());
    assert!(
        !hook_ran.exists(),
        "a hook planted by the script ran in the daemon's git calls"
    );
}
