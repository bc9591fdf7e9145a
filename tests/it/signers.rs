//! Signature policy (issue 4): `-trusted-signers`, `-accept-expired-before-expiry`, and the
//! `verified` provenance note, with real gpg and ssh keys.
//!
//! Most tests run `-once` several times on one tip, each run in a namespace of its own, so
//! that one run's lock does not stop the next.

use std::fs;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use crate::common::{require_tool, wait_for, Daemon, Sign, TagKind, TestEnv};
use crate::cycle::Fixture;

/// Generous deadline for one `-once` run.
const LONG: Duration = Duration::from_secs(30);

/// Writes a `-trusted-signers` file of `lines` under the test root; its path.
fn signers_file(env: &TestEnv, lines: &[&str]) -> String {
    let path = env.path(format!("trusted-signers-{}", env.unique()));
    fs::write(&path, format!("# test list\n{}\n", lines.join("\n"))).expect("write the list");
    path.to_string_lossy().into_owned()
}

/// `fpr` the way gpg prints it for people: lower case, in groups of four.
fn spaced(fpr: &str) -> String {
    let lower = fpr.to_ascii_lowercase();
    let groups: Vec<&str> = (0..lower.len())
        .step_by(4)
        .map(|i| &lower[i..i + 4])
        .collect();
    groups.join(" ")
}

/// The public key line (`ssh-ed25519 AAAA… comment`) of the private key `key`.
fn ssh_public(key: &Path) -> String {
    let mut public = key.as_os_str().to_owned();
    public.push(".pub");
    fs::read_to_string(public)
        .expect("read the public key")
        .trim()
        .to_string()
}

/// `SHA256:…`, the fingerprint ssh-keygen gives the key `key`.
fn ssh_fingerprint(env: &TestEnv, key: &Path) -> String {
    let out = env.run("ssh-keygen", [std::ffi::OsStr::new("-lf"), key.as_os_str()]);
    out.split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no fingerprint in {out:?}"))
        .to_string()
}

/// Runs `icyci -once` in mirror mode or with the fixture's script, in namespace `ns`, with
/// `extra` flags; its exit status and the daemon (for its logs).
fn once(fx: &Fixture, ns: &str, extra: &[&str]) -> (ExitStatus, Daemon) {
    let mut args = fx.args(extra);
    args.push(format!("-notes-ns={ns}"));
    args.push("-once".into());
    let mut daemon = fx.env.spawn_icyci(args);
    let status = daemon.expect_exit(LONG);
    (status, daemon)
}

/// Asserts that the run ended with "nothing to do" and logged exactly one refusal line, naming
/// `key` and `reason`; nothing was noted on the commit in `ns`.
fn assert_refused(fx: &Fixture, run: (ExitStatus, Daemon), ns: &str, key: &str, reason: &str) {
    let (status, daemon) = run;
    let stderr = daemon.stderr();
    assert_eq!(status.code(), Some(3), "{}", daemon.logs_for_humans());
    let wanted = format!("not testing: signature by {key} refused: {reason}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(key)).collect();
    assert_eq!(lines.len(), 1, "one line names the key:\n{stderr}");
    assert!(lines[0].contains(&wanted), "{wanted:?} in {:?}", lines[0]);
    let refs = fx.env.note_refs(&fx.results);
    assert!(
        !refs
            .iter()
            .any(|r| r.starts_with(&format!("refs/notes/{ns}."))),
        "nothing noted in {ns}: {refs:?}"
    );
}

/// Asserts that the run passed; the `verified` note of `commit` in `ns`.
fn assert_tested(fx: &Fixture, run: (ExitStatus, Daemon), ns: &str, commit: &str) -> String {
    let (status, daemon) = run;
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    assert!(
        fx.env
            .note(&fx.results, ns, "result.passed", commit)
            .is_some(),
        "passed note in {ns}"
    );
    fx.env
        .note_text(&fx.results, ns, "verified", commit)
        .unwrap_or_else(|| panic!("no verified note in {ns}\n{}", daemon.logs_for_humans()))
}

/// The `signed:` line is the signature's time, which the test does not know exactly: checked
/// for its shape and left out.
fn without_signed_time(note: &str) -> String {
    note.lines()
        .filter(|line| {
            if let Some(time) = line.strip_prefix("signed: ") {
                assert!(time.len() == 20 && time.ends_with('Z'), "{line:?}");
                return false;
            }
            true
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

fn gpg_note(object: &str, fpr: &str, signer: &str, trust: &str) -> String {
    format!(
        "object: {object}\nformat: openpgp\nkey: {fpr}\nprimary-key: {fpr}\nsigner: {signer}\n\
         trust: {trust}\n"
    )
}

/// Commits `test.sh` signed as `sign` and pushes it; the commit id.
fn script_commit(fx: &Fixture, sign: Sign) -> String {
    let commit = fx.env.commit_files(
        &fx.work,
        "test script",
        &[("test.sh", b"#!/bin/sh\necho tested\n")],
        sign,
    );
    fx.push_main();
    commit
}

#[test]
fn listed_gpg_key_is_tested_and_an_unlisted_one_refused() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let other = fx.env.gpg_key_named("icyci-other");
    let commit = fx.script_commit("echo tested\n");

    let unlisted = signers_file(&fx.env, &[&other]);
    let run = once(&fx, "unlisted", &["-trusted-signers", &unlisted]);
    assert_refused(
        &fx,
        run,
        "unlisted",
        &fx.fpr,
        "key not in the trusted signers list (commit)",
    );

    // As gpg prints it for people: lower case, grouped.
    let listed = signers_file(&fx.env, &[&other, &spaced(&fx.fpr)]);
    let run = once(&fx, "listed", &["-trusted-signers", &listed]);
    let note = assert_tested(&fx, run, "listed", &commit);
    assert_eq!(
        without_signed_time(&note),
        gpg_note(
            &format!("commit {commit}"),
            &fx.fpr,
            "icyci-test <icyci-test@icyci.test>",
            "trusted-signers"
        )
    );
}

#[test]
fn without_a_list_git_decides_and_the_note_says_so_in_mirror_mode() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let commit = fx.signed_commit("mirrored");
    let mut args = fx.base_args();
    args.push("-once".into());
    let mut daemon = fx.env.spawn_icyci(args);
    let status = daemon.expect_exit(LONG);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    let note = fx.note_text("verified", &commit).expect("a verified note");
    assert_eq!(
        without_signed_time(&note),
        gpg_note(
            &format!("commit {commit}"),
            &fx.fpr,
            "icyci-test <icyci-test@icyci.test>",
            "git"
        )
    );
    assert_eq!(
        fx.note_text("result.passed", &commit).as_deref(),
        Some("No -test-script specified\n")
    );
}

#[test]
fn merely_imported_key_counts_only_when_listed() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    // The key's owner signs with their own keyring; the daemon's keyring gets the public key
    // only, with no trust assigned.
    let owner = TestEnv::new();
    let stranger = owner.gpg_key_named("icyci-stranger");
    let public = owner.run("gpg", ["--batch", "--armor", "--export", &stranger]);
    let mut import = fx.env.command("gpg");
    import.args(["--batch", "--import"]);
    crate::common::run_checked(&mut import, Some(public.as_bytes()));
    fx.env.set_var("GNUPGHOME", owner.gnupg_home());
    let commit = script_commit(&fx, Sign::Gpg(stranger.clone()));
    fx.env.remove_var("GNUPGHOME");
    let check = fx
        .env
        .git_output(&fx.work, ["verify-commit", "--raw", &commit]);
    let raw = String::from_utf8_lossy(&check.stderr);
    assert!(
        check.status.success() && raw.contains("TRUST_UNDEFINED"),
        "git accepts a good signature of unknown trust:\n{raw}"
    );

    // Today's default: whatever git accepts.
    let note = assert_tested(&fx, once(&fx, "plain", &[]), "plain", &commit);
    assert!(note.contains(&format!("key: {stranger}\n")), "{note}");
    assert!(note.ends_with("trust: git\n"), "{note}");

    let unlisted = signers_file(&fx.env, &[&fx.fpr]);
    let run = once(&fx, "unlisted", &["-trusted-signers", &unlisted]);
    assert_refused(
        &fx,
        run,
        "unlisted",
        &stranger,
        "key not in the trusted signers list",
    );

    let listed = signers_file(&fx.env, &[&stranger]);
    let run = once(&fx, "listed", &["-trusted-signers", &listed]);
    let note = assert_tested(&fx, run, "listed", &commit);
    assert_eq!(
        without_signed_time(&note),
        gpg_note(
            &format!("commit {commit}"),
            &stranger,
            "icyci-stranger <icyci-stranger@icyci.test>",
            "trusted-signers"
        )
    );
}

#[test]
fn revoked_key_is_refused_even_when_listed() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    // gpg stores a revocation certificate beside every key it generates; the template of a
    // key installs it into a GNUPGHOME that holds no key yet.
    let holder = TestEnv::new();
    let revoked = holder.gpg_key_named("icyci-revoked");
    let certificate = holder
        .gnupg_home()
        .join(format!("openpgp-revocs.d/{revoked}.rev"));
    let certificate = fs::read_to_string(&certificate).expect("read the revocation certificate");
    // gpg guards the certificate against an accidental import with a leading ':'.
    let certificate = certificate.replace(
        ":-----BEGIN PGP PUBLIC KEY BLOCK-----",
        "-----BEGIN PGP PUBLIC KEY BLOCK-----",
    );

    fx.env.gpg_key_named("icyci-revoked");
    let commit = script_commit(&fx, Sign::Gpg(revoked.clone()));
    let list = signers_file(&fx.env, &[&revoked]);
    let note = assert_tested(
        &fx,
        once(&fx, "before", &["-trusted-signers", &list]),
        "before",
        &commit,
    );
    assert!(note.contains(&format!("key: {revoked}\n")), "{note}");

    let mut import = fx.env.command("gpg");
    import.args(["--batch", "--import"]);
    crate::common::run_checked(&mut import, Some(certificate.as_bytes()));
    let run = once(&fx, "after", &["-trusted-signers", &list]);
    assert_refused(&fx, run, "after", &revoked, "key revoked (commit)");
}

/// Generates a key in the fixture's keyring that expires `seconds` after its creation; its
/// fingerprint.
fn expiring_key(fx: &Fixture, seconds: u32) -> String {
    fx.env.run(
        "gpg",
        [
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--quick-generate-key",
            "icyci-expiring <icyci-expiring@icyci.test>",
            "ed25519",
            "sign",
            &format!("seconds={seconds}"),
        ],
    );
    let colons = fx.env.run(
        "gpg",
        [
            "--batch",
            "--with-colons",
            "--list-keys",
            "icyci-expiring@icyci.test",
        ],
    );
    colons
        .lines()
        .find_map(|line| line.strip_prefix("fpr:::::::::"))
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("no fingerprint in {colons}"))
        .to_string()
}

#[test]
fn expired_key_counts_only_with_accept_expired_before_expiry() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    // Long enough to sign and push on a busy machine; the signature is made before expiry.
    let expiring = expiring_key(&fx, 10);
    let commit = script_commit(&fx, Sign::Gpg(expiring.clone()));
    wait_for("the signing key to expire", Duration::from_secs(30), || {
        let out = fx
            .env
            .git_output(&fx.work, ["verify-commit", "--raw", &commit]);
        String::from_utf8_lossy(&out.stderr).contains("EXPKEYSIG")
    });
    let list = signers_file(&fx.env, &[&expiring]);

    let run = once(&fx, "strict", &["-trusted-signers", &list]);
    assert_refused(
        &fx,
        run,
        "strict",
        &expiring,
        "key expired (see -accept-expired-before-expiry)",
    );

    let run = once(
        &fx,
        "lenient",
        &["-trusted-signers", &list, "-accept-expired-before-expiry"],
    );
    let note = assert_tested(&fx, run, "lenient", &commit);
    assert!(note.contains(&format!("key: {expiring}\n")), "{note}");
    assert!(note.contains("\nkey-expired: "), "{note}");
    assert!(note.ends_with("trust: trusted-signers\n"), "{note}");
}

#[test]
fn listed_ssh_key_is_tested_and_an_allowed_but_unlisted_one_refused() {
    if !require_tool("ssh-keygen") {
        return;
    }
    let fx = Fixture::new();
    let alice = fx.env.ssh_key("alice");
    let bob = fx.env.ssh_key("bob");
    let list = signers_file(&fx.env, &[&ssh_public(&alice)]);

    let commit = script_commit(&fx, Sign::Ssh(alice.clone()));
    let run = once(&fx, "alice", &["-trusted-signers", &list]);
    let note = assert_tested(&fx, run, "alice", &commit);
    assert_eq!(
        note,
        format!(
            "object: commit {commit}\nformat: ssh\nkey: {}\nsigner: alice@icyci.test\n\
             trust: trusted-signers\n",
            ssh_fingerprint(&fx.env, &alice)
        )
    );

    // bob is in git's allowed signers, so git accepts his signature; the list does not.
    let commit = fx.env.commit(&fx.work, "by bob", Sign::Ssh(bob.clone()));
    fx.push_main();
    let run = once(&fx, "bob", &["-trusted-signers", &list]);
    assert_refused(
        &fx,
        run,
        "bob",
        &ssh_fingerprint(&fx.env, &bob),
        "key not in the trusted signers list (commit)",
    );
    assert_eq!(fx.env.note(&fx.results, "bob", "locked", &commit), None);
}

/// The list names keys, not people: a listed key counts whatever principal the allowed
/// signers file gives it (git does not compare it with the committer either), and that
/// principal is recorded in the note for whoever audits it. A listed key that git does not
/// accept (absent from the allowed signers) does not count.
#[test]
fn ssh_key_under_another_principal_counts_by_its_key() {
    if !require_tool("ssh-keygen") {
        return;
    }
    let fx = Fixture::new();
    // Sets up the allowed signers file and its configuration.
    fx.env.ssh_key("alice");
    let keys = fx.env.path("keys");
    let bot = keys.join("bot");
    let mut keygen = fx.env.command("ssh-keygen");
    keygen
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "bot", "-f"])
        .arg(&bot);
    crate::common::run_checked(&mut keygen, None);
    let list = signers_file(&fx.env, &[&ssh_public(&bot)]);

    // Not (yet) in the allowed signers: git itself refuses the signature.
    let commit = script_commit(&fx, Sign::Ssh(bot.clone()));
    let run = once(&fx, "unknown", &["-trusted-signers", &list]);
    assert_refused(
        &fx,
        run,
        "unknown",
        &ssh_fingerprint(&fx.env, &bot),
        "git did not accept it: No principal matched.",
    );

    let signers = fx.env.path("home/allowed_signers");
    let mut text = fs::read_to_string(&signers).expect("read allowed_signers");
    text.push_str(&format!(
        "release-bot@elsewhere.example {}\n",
        ssh_public(&bot)
    ));
    fs::write(&signers, text).expect("write allowed_signers");
    let run = once(&fx, "allowed", &["-trusted-signers", &list]);
    let note = assert_tested(&fx, run, "allowed", &commit);
    assert!(
        note.contains("\nsigner: release-bot@elsewhere.example\n"),
        "{note}"
    );
    let committer = fx.env.git(&fx.work, ["log", "-1", "--format=%ce", &commit]);
    assert_eq!(committer, "test@icyci.test", "a principal of another name");
}

#[test]
fn signed_tags_are_named_in_the_verified_note() {
    if !require_tool("gpg") || !require_tool("ssh-keygen") {
        return;
    }
    let fx = Fixture::new();
    let alice = fx.env.ssh_key("alice");
    let list = signers_file(&fx.env, &[&fx.fpr, &ssh_public(&alice)]);

    let commit = script_commit(&fx, Sign::None);
    let tag = fx
        .env
        .tag(&fx.work, "v1", &commit, TagKind::Gpg(fx.fpr.clone()));
    fx.env.push(&fx.work, &fx.source, &["--tags", "main"]);
    let run = once(&fx, "gpg", &["-trusted-signers", &list]);
    let note = assert_tested(&fx, run, "gpg", &commit);
    assert_eq!(
        without_signed_time(&note),
        gpg_note(
            &format!("tag refs/tags/v1 {tag}"),
            &fx.fpr,
            "icyci-test <icyci-test@icyci.test>",
            "trusted-signers"
        )
    );

    let commit = fx.env.commit(&fx.work, "tagged by ssh", Sign::None);
    let tag = fx
        .env
        .tag(&fx.work, "v2", &commit, TagKind::Ssh(alice.clone()));
    fx.env.push(&fx.work, &fx.source, &["--tags", "main"]);
    let run = once(&fx, "ssh", &["-trusted-signers", &list]);
    let note = assert_tested(&fx, run, "ssh", &commit);
    assert_eq!(
        note,
        format!(
            "object: tag refs/tags/v2 {tag}\nformat: ssh\nkey: {}\nsigner: alice@icyci.test\n\
             trust: trusted-signers\n",
            ssh_fingerprint(&fx.env, &alice)
        )
    );
}

#[test]
fn a_bad_trusted_signers_file_is_a_usage_error_before_anything_is_touched() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    fx.script_commit("echo tested\n");
    let list = signers_file(&fx.env, &[&fx.fpr, "alice@example.org ssh-ed25519 AAAA"]);
    let missing = fx.env.path("no-such-list").to_string_lossy().into_owned();
    for (extra, needle) in [
        (
            vec!["-trusted-signers", list.as_str()],
            format!("icyci: invalid -trusted-signers file {list}, line 3: "),
        ),
        (
            vec!["-trusted-signers", missing.as_str()],
            format!("icyci: cannot read -trusted-signers file {missing}: "),
        ),
        (
            vec!["-accept-expired-before-expiry"],
            "icyci: -accept-expired-before-expiry needs -trusted-signers".to_string(),
        ),
    ] {
        let mut daemon = fx.env.spawn_icyci(fx.args(&extra));
        let status = daemon.expect_exit(LONG);
        assert_eq!(status.code(), Some(2), "{}", daemon.logs_for_humans());
        let stderr = daemon.stderr();
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.starts_with(&needle), "{needle:?} in {first:?}");
    }
    assert!(fx.env.git(&fx.results, ["for-each-ref"]).is_empty());
    assert!(fx.env.daemon_dirs().is_empty());
}
