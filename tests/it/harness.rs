//! Checks of the test harness itself, with plain git (no icyci daemon involved).

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::time::Duration;

use crate::common::{
    descendants, free_port, process_alive, require_tool, wait_for, write_script, GitDaemon, Sign,
    Sshd, TagKind, TestEnv,
};

#[test]
fn command_environment_is_isolated() {
    let env = TestEnv::new();
    env.set_var("ICYCI_EXTRA", "1");
    let out = env.run("env", [] as [&str; 0]);
    let keys: BTreeSet<&str> = out
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k)
        .collect();
    let expected: BTreeSet<&str> = [
        "PATH",
        "HOME",
        "GNUPGHOME",
        "GIT_CONFIG_GLOBAL",
        "GIT_CONFIG_NOSYSTEM",
        "TMPDIR",
        "LC_ALL",
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
        "ICYCI_EXTRA",
    ]
    .into_iter()
    .collect();
    assert_eq!(keys, expected);
    let work = env.work_repo("work");
    assert_eq!(env.git(&work, ["config", "init.defaultBranch"]), "main");
    assert_eq!(env.git(&work, ["config", "protocol.file.allow"]), "always");
    assert_eq!(
        env.git(&work, ["config", "--show-origin", "user.name"]),
        format!("file:{}\ticyci test", env.gitconfig().display())
    );
    assert!(env.daemon_dirs().is_empty());
    TcpListener::bind(("127.0.0.1", free_port())).expect("free_port gives a free port");
}

#[test]
fn missing_tool_is_skipped_outside_ci() {
    if std::env::var_os("CI").is_none() {
        assert!(!require_tool("icyci-no-such-tool"));
    }
    assert!(require_tool("git"));
}

#[test]
fn gpg_signed_commit_verifies_and_unsigned_does_not() {
    if !require_tool("gpg") {
        return;
    }
    let env = TestEnv::new();
    let fpr = env.gpg_key();
    assert_eq!(fpr.len(), 40, "fingerprint {fpr:?}");
    assert_eq!(env.gpg_key(), fpr, "the same key twice");
    let work = env.work_repo("work");
    let signed = env.commit(&work, "signed", Sign::Gpg(fpr.clone()));
    let unsigned = env.commit(&work, "unsigned", Sign::None);
    assert_ne!(signed, unsigned);
    let ok = env.git_output(&work, ["verify-commit", "--raw", &signed]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stderr).contains(&format!("VALIDSIG {fpr}")));
    assert!(!env
        .git_output(&work, ["verify-commit", &unsigned])
        .status
        .success());

    // A second, different key lives beside the first one; both verify.
    let other = env.gpg_key_named("other");
    assert_ne!(other, fpr);
    let by_other = env.commit(&work, "by other", Sign::Gpg(other.clone()));
    let ok = env.git_output(&work, ["verify-commit", "--raw", &by_other]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stderr).contains(&format!("VALIDSIG {other}")));
    let tag = env.tag(&work, "v1", &by_other, TagKind::Gpg(fpr.clone()));
    assert_ne!(tag, by_other, "a signed tag is a tag object");
    env.git(&work, ["tag", "--verify", "v1"]);
    let merge_base = env.git(&work, ["rev-parse", "HEAD~1"]);
    env.git(&work, ["branch", "side", &merge_base]);
    env.git(&work, ["checkout", "-q", "side"]);
    env.commit(&work, "on side", Sign::None);
    env.git(&work, ["checkout", "-q", "main"]);
    let merge = env.merge(&work, "side", "merge side", Sign::Gpg(fpr));
    assert_eq!(
        env.git(&work, ["rev-list", "--parents", "-n1", &merge])
            .split(' ')
            .count(),
        3
    );
    env.git(&work, ["verify-commit", &merge]);

    // Another environment does not know the keys.
    let stranger = TestEnv::new();
    let clone = stranger.clone_repo(&work, "clone");
    assert!(!stranger
        .git_output(&clone, ["verify-commit", &signed])
        .status
        .success());
}

#[test]
fn ssh_signed_commit_and_tag_verify() {
    if !require_tool("ssh-keygen") {
        return;
    }
    let env = TestEnv::new();
    let key = env.ssh_key("alice");
    assert!(key.is_file() && key.with_extension("pub").is_file());
    let work = env.work_repo("work");
    let commit = env.commit(&work, "ssh signed", Sign::Ssh(key.clone()));
    env.git(&work, ["verify-commit", &commit]);
    let tag = env.tag(&work, "v1", &commit, TagKind::Ssh(key.clone()));
    assert_ne!(tag, commit);
    env.git(&work, ["tag", "--verify", "v1"]);
    let unsigned_tag = env.tag(&work, "v2", &commit, TagKind::Annotated);
    assert!(!env
        .git_output(&work, ["tag", "--verify", "v2"])
        .status
        .success());
    assert_ne!(unsigned_tag, commit);
    assert_eq!(env.tag(&work, "v3", &commit, TagKind::Lightweight), commit);
    let unsigned = env.commit(&work, "unsigned", Sign::None);
    assert!(!env
        .git_output(&work, ["verify-commit", &unsigned])
        .status
        .success());

    // A key missing from this environment's allowed signers does not verify.
    let stranger = TestEnv::new();
    let stranger_key = stranger.ssh_key("mallory");
    let foreign = env.commit(&work, "foreign", Sign::Ssh(stranger_key));
    assert!(!env
        .git_output(&work, ["verify-commit", &foreign])
        .status
        .success());
    env.ssh_key("bob");
    env.git(&work, ["verify-commit", &commit]);
}

#[test]
fn git_daemon_push_and_clone() {
    if !require_tool("git-daemon") {
        return;
    }
    let env = TestEnv::new();
    let served = env.path("served");
    std::fs::create_dir(&served).expect("mkdir served");
    env.bare_repo("served/repo.git");
    let mut daemon = GitDaemon::start(&env, &served);
    let url = daemon.url("repo.git");
    assert_eq!(url, format!("git://127.0.0.1:{}/repo.git", daemon.port()));

    let work = env.work_repo("work");
    let commit = env.commit_files(
        &work,
        "add a script",
        &[
            ("test.sh", b"#!/bin/sh\necho hi\n"),
            ("data/bin", &[0u8, 255, 10]),
        ],
        Sign::None,
    );
    env.push(&work, &url, &["main"]);
    let clone = env.clone_repo(&url, "clone");
    assert_eq!(env.rev_parse(&clone, "HEAD"), commit);
    assert_eq!(
        std::fs::read(clone.join("data/bin")).expect("read data/bin"),
        [0u8, 255, 10]
    );
    let out = env
        .command(clone.join("test.sh"))
        .output()
        .expect("run test.sh");
    assert_eq!(out.stdout, b"hi\n");

    // A stopped daemon refuses connections; a new one can take over its port.
    let port = daemon.port();
    daemon.stop();
    assert!(!env.git_output(&work, ["ls-remote", &url]).status.success());
    let daemon = GitDaemon::start_on_port(&env, &served, port);
    assert_eq!(
        env.git(
            &work,
            ["ls-remote", &daemon.url("repo.git"), "refs/heads/main"]
        ),
        format!("{commit}\trefs/heads/main")
    );
}

#[test]
fn ssh_push_and_clone() {
    if !require_tool("sshd") || !require_tool("ssh") || !require_tool("ssh-keygen") {
        return;
    }
    let env = TestEnv::new();
    let bare = env.bare_repo("remote.git");
    let sshd = Sshd::start(&env);
    let url = sshd.url(&bare);
    env.set_var("GIT_SSH_COMMAND", sshd.git_ssh_command());
    let work = env.work_repo("work");
    let commit = env.commit(&work, "over ssh", Sign::None);
    env.push(&work, &url, &["main"]);
    assert_eq!(env.rev_parse(&bare, "main"), commit);
    let clone = env.clone_repo(&url, "clone");
    assert_eq!(env.rev_parse(&clone, "HEAD"), commit);

    // Without the key the server refuses.
    env.set_var(
        "GIT_SSH_COMMAND",
        "ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no",
    );
    assert!(!env.git_output(&work, ["ls-remote", &url]).status.success());
}

#[test]
fn notes_bytes_exact_and_missing() {
    let env = TestEnv::new();
    let work = env.work_repo("work");
    let commit = env.commit(&work, "one", Sign::None);
    let other = env.commit(&work, "two", Sign::None);
    let data: Vec<u8> = (0..=255u8).chain([0, b'\n', b'\r']).collect();
    let blob_path = env.path("blob");
    std::fs::write(&blob_path, &data).expect("write blob");
    let blob = env.git(&work, ["hash-object", "-w", &blob_path.to_string_lossy()]);
    env.git(
        &work,
        [
            "notes",
            "--ref=refs/notes/icyci.output.stdout",
            "add",
            "-C",
            &blob,
            &commit,
        ],
    );
    // An empty note needs --allow-empty, otherwise git removes the note instead.
    let empty = env.git(&work, ["hash-object", "-w", "/dev/null"]);
    env.git(
        &work,
        [
            "notes",
            "--ref=refs/notes/icyci.output.stderr",
            "add",
            "--allow-empty",
            "-C",
            &empty,
            &commit,
        ],
    );

    assert_eq!(
        env.note(&work, "icyci", "output.stdout", &commit),
        Some(data.clone())
    );
    assert_eq!(
        env.note(&work, "icyci", "output.stderr", &commit),
        Some(Vec::new())
    );
    assert_eq!(env.note(&work, "icyci", "output.stdout", &other), None);
    assert_eq!(env.note(&work, "icyci", "result.passed", &commit), None);
    assert_eq!(
        env.note_refs(&work),
        [
            "refs/notes/icyci.output.stderr",
            "refs/notes/icyci.output.stdout"
        ]
    );

    // Notes pushed to a bare repository that lacks the commit itself are still found.
    let bare = env.bare_repo("results.git");
    env.push(&work, &bare, &["refs/notes/*:refs/notes/*"]);
    assert_eq!(
        env.note(&bare, "icyci", "output.stdout", &commit),
        Some(data)
    );
    assert_eq!(env.note_refs(&bare).len(), 2);
}

#[test]
fn daemon_logs_signals_and_waits() {
    let env = TestEnv::new();
    let script = env.path("bin/loop.sh");
    write_script(
        &script,
        "trap 'echo got-term >&2; exit 7' TERM\necho ready >&2\necho out\n\
         while :; do sleep 0.02; done\n",
    );
    let mut daemon = env.spawn_logged(env.command(&script), "loop");
    daemon.wait_for_stderr("ready", Duration::from_secs(5));
    assert!(daemon.is_running());
    daemon.signal("TERM");
    let status = daemon
        .wait_exit(Duration::from_secs(5))
        .expect("exit after SIGTERM");
    assert_eq!(status.code(), Some(7));
    assert_eq!(daemon.stdout(), "out\n");
    assert!(daemon.stderr().contains("got-term"));

    let mut quick = env.spawn_logged(env.command("true"), "true");
    wait_for("`true` to exit", Duration::from_secs(5), || {
        !quick.is_running()
    });
    assert_eq!(
        quick.wait_exit(Duration::ZERO).and_then(|s| s.code()),
        Some(0)
    );
}

#[test]
fn daemon_drop_kills_its_descendants() {
    let env = TestEnv::new();
    let script = env.path("bin/spawner.sh");
    let pid_file = env.path("grandchild.pid");
    // The grandchild runs in its own process group, as the daemon's test scripts do.
    write_script(
        &script,
        &format!(
            "set -m\nsleep 300 &\necho $! > '{}'\necho started >&2\nwait\n",
            pid_file.display()
        ),
    );
    let mut daemon = env.spawn_logged(env.command(&script), "spawner");
    daemon.wait_for_stderr("started", Duration::from_secs(5));
    let grandchild: u32 = std::fs::read_to_string(&pid_file)
        .expect("read the grandchild's pid")
        .trim()
        .parse()
        .expect("a pid");
    assert!(process_alive(grandchild));
    assert!(descendants(daemon.pid()).contains(&grandchild));
    drop(daemon);
    wait_for(
        "the grandchild to be killed",
        Duration::from_secs(5),
        || !process_alive(grandchild),
    );
}
