//! Signature verification of the tip (SPEC section 4): which tips are tested, through which
//! signature, and that exactly the verified object is locked, tested, annotated and pushed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{require_tool, wait_for, write_script, Daemon, Sign, TagKind, TestEnv};

#[test]
fn signed_tag_on_unsigned_commit_is_tested_and_pushed() {
    if !require_tool("gpg") {
        return;
    }
    let s = Setup::new();
    let fpr = s.env.gpg_key();
    let commit = s.env.commit(&s.work, "unsigned", Sign::None);
    let tag = s.env.tag(&s.work, "v1", &commit, TagKind::Gpg(fpr));
    s.publish();

    let (code, stderr) = s.once(&["-push-source-to-results"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("verified: signed tag refs/tags/v1"),
        "{stderr}"
    );
    s.assert_passed(&commit);
    assert_eq!(s.runs(), vec![commit.clone()]);
    // The verified tag object itself arrives in the results, with the tested branch.
    assert_eq!(s.results_ref("refs/tags/v1").as_deref(), Some(tag.as_str()));
    assert_eq!(
        s.results_ref("refs/heads/main").as_deref(),
        Some(commit.as_str())
    );
}

#[test]
fn only_signed_tips_are_tested_by_a_running_daemon() {
    if !require_tool("gpg") {
        return;
    }
    let s = Setup::new();
    let fpr = s.env.gpg_key();
    let first = s.env.commit(&s.work, "unsigned start", Sign::None);
    s.publish();
    let mut daemon = s.spawn(&[]);
    wait_log(
        &mut daemon,
        &["not testing: no valid signature", &commit_field(&first)],
    );

    let mut signed = Vec::new();
    let mut unsigned = vec![first];
    for round in 0..2 {
        let commit = s
            .env
            .commit(&s.work, &format!("signed {round}"), Sign::Gpg(fpr.clone()));
        s.publish();
        s.wait_note(&mut daemon, "icyci", "result.passed", &commit);
        signed.push(commit);
        let commit = s
            .env
            .commit(&s.work, &format!("unsigned {round}"), Sign::None);
        s.publish();
        wait_log(
            &mut daemon,
            &["not testing: no valid signature", &commit_field(&commit)],
        );
        unsigned.push(commit);
    }
    let last = s.env.commit(&s.work, "signed last", Sign::Gpg(fpr));
    s.publish();
    s.wait_note(&mut daemon, "icyci", "result.passed", &last);
    signed.push(last);

    assert_eq!(s.runs(), signed, "only the signed tips ran, once each");
    for commit in &signed {
        s.assert_passed(commit);
    }
    for commit in &unsigned {
        s.assert_untouched(commit);
    }
    assert!(daemon.is_running());
}

#[test]
fn lightweight_tag_does_not_hide_a_signed_commit() {
    if !require_tool("gpg") {
        return;
    }
    let s = Setup::new();
    let fpr = s.env.gpg_key();
    let commit = s.env.commit(&s.work, "signed", Sign::Gpg(fpr));
    s.env.tag(&s.work, "light", &commit, TagKind::Lightweight);
    s.publish();

    let (code, stderr) = s.once(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        log_has_line(
            &stderr,
            &["verified: signed commit", &commit_field(&commit)]
        ),
        "{stderr}"
    );
    s.assert_passed(&commit);
    assert_eq!(s.runs(), [commit]);
    // Only a verified tag is pushed with the results.
    assert_eq!(s.results_ref("refs/tags/light"), None);
}

#[test]
fn unsigned_or_untrusted_tags_do_not_hide_a_signed_commit() {
    if !require_tool("gpg") {
        return;
    }
    let s = Setup::new();
    let fpr = s.env.gpg_key();
    let stranger = TestEnv::new();
    let untrusted = stranger.gpg_key_named("verify-stranger");
    let commit = s.env.commit(&s.work, "signed", Sign::Gpg(fpr));
    s.env.tag(&s.work, "v1", &commit, TagKind::Annotated);
    stranger.tag(&s.work, "v2", &commit, TagKind::Gpg(untrusted));
    s.publish();

    let (code, stderr) = s.once(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        log_has_line(
            &stderr,
            &["verified: signed commit", &commit_field(&commit)]
        ),
        "{stderr}"
    );
    s.assert_passed(&commit);
    assert_eq!(s.runs(), [commit]);
    assert_eq!(s.results_ref("refs/tags/v1"), None);
    assert_eq!(s.results_ref("refs/tags/v2"), None);
}

#[test]
fn signed_tag_is_found_beside_other_tags_on_an_unsigned_commit() {
    if !require_tool("gpg") {
        return;
    }
    let s = Setup::new();
    let fpr = s.env.gpg_key();
    let commit = s.env.commit(&s.work, "unsigned", Sign::None);
    // `git describe --exact-match` would pick the annotated one; names sort around the signed one.
    s.env.tag(&s.work, "a-light", &commit, TagKind::Lightweight);
    s.env
        .tag(&s.work, "m-annotated", &commit, TagKind::Annotated);
    let signed = s.env.tag(&s.work, "q-signed", &commit, TagKind::Gpg(fpr));
    s.env.tag(&s.work, "z-light", &commit, TagKind::Lightweight);
    s.publish();

    let (code, stderr) = s.once(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        log_has_line(
            &stderr,
            &[
                "verified: signed tag refs/tags/q-signed",
                &commit_field(&commit)
            ]
        ),
        "{stderr}"
    );
    s.assert_passed(&commit);
    assert_eq!(s.runs(), [commit]);
    assert_eq!(
        s.results_ref("refs/tags/q-signed").as_deref(),
        Some(signed.as_str())
    );
    for other in ["a-light", "m-annotated", "z-light"] {
        assert_eq!(
            s.results_ref(&format!("refs/tags/{other}")),
            None,
            "{other}"
        );
    }
}

#[test]
fn signed_merge_commit_is_tested() {
    if !require_tool("gpg") {
        return;
    }
    let s = Setup::new();
    let fpr = s.env.gpg_key();
    let merge = make_merge(&s, Sign::Gpg(fpr));
    s.publish();

    let (code, stderr) = s.once(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        log_has_line(&stderr, &["verified: signed commit", &commit_field(&merge)]),
        "{stderr}"
    );
    s.assert_passed(&merge);
    assert_eq!(s.runs(), vec![merge.clone()]);
    assert_eq!(
        s.results_ref("refs/heads/main").as_deref(),
        Some(merge.as_str())
    );
}

#[test]
fn unsigned_merge_commit_with_a_signed_tag_is_tested() {
    if !require_tool("gpg") {
        return;
    }
    let s = Setup::new();
    let fpr = s.env.gpg_key();
    let merge = make_merge(&s, Sign::None);
    let tag = s.env.tag(&s.work, "merged", &merge, TagKind::Gpg(fpr));
    s.publish();

    let (code, stderr) = s.once(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        log_has_line(
            &stderr,
            &[
                "verified: signed tag refs/tags/merged",
                &commit_field(&merge)
            ]
        ),
        "{stderr}"
    );
    s.assert_passed(&merge);
    assert_eq!(s.runs(), [merge]);
    assert_eq!(
        s.results_ref("refs/tags/merged").as_deref(),
        Some(tag.as_str())
    );
}

#[test]
fn ssh_signed_commits_and_tags_are_tested() {
    if !require_tool("ssh-keygen") {
        return;
    }
    let s = Setup::new();
    let key = s.env.ssh_key("alice");
    // Deployed as the daemon user would be: ssh signatures, an allowed signers file.
    s.env
        .git(s.env.root(), ["config", "--global", "gpg.format", "ssh"]);
    let signed = s.env.commit(&s.work, "ssh signed", Sign::Ssh(key.clone()));
    s.publish();
    let mut daemon = s.spawn(&[]);
    s.wait_note(&mut daemon, "icyci", "result.passed", &signed);

    let tagged = s.env.commit(&s.work, "unsigned, ssh tag", Sign::None);
    let tag = s.env.tag(&s.work, "v2", &tagged, TagKind::Ssh(key));
    s.publish();
    s.wait_note(&mut daemon, "icyci", "result.passed", &tagged);

    let stderr = daemon.stderr();
    assert!(
        log_has_line(
            &stderr,
            &["verified: signed commit", &commit_field(&signed)]
        ),
        "{stderr}"
    );
    assert!(
        log_has_line(
            &stderr,
            &["verified: signed tag refs/tags/v2", &commit_field(&tagged)]
        ),
        "{stderr}"
    );
    s.assert_passed(&signed);
    s.assert_passed(&tagged);
    assert_eq!(s.runs(), [signed, tagged]);
    assert_eq!(s.results_ref("refs/tags/v2").as_deref(), Some(tag.as_str()));
}

#[test]
fn ssh_and_gpg_signatures_mixed_in_one_history() {
    if !require_tool("gpg") || !require_tool("ssh-keygen") {
        return;
    }
    let s = Setup::new();
    let fpr = s.env.gpg_key();
    let key = s.env.ssh_key("alice");
    let gpg_commit = s.env.commit(&s.work, "gpg", Sign::Gpg(fpr.clone()));
    s.publish();
    let mut daemon = s.spawn(&[]);
    s.wait_note(&mut daemon, "icyci", "result.passed", &gpg_commit);

    let ssh_commit = s.env.commit(&s.work, "ssh", Sign::Ssh(key.clone()));
    s.publish();
    s.wait_note(&mut daemon, "icyci", "result.passed", &ssh_commit);

    let gpg_tagged = s.env.commit(&s.work, "gpg tag", Sign::None);
    s.env
        .tag(&s.work, "gpg-tag", &gpg_tagged, TagKind::Gpg(fpr.clone()));
    s.publish();
    s.wait_note(&mut daemon, "icyci", "result.passed", &gpg_tagged);

    let ssh_tagged = s.env.commit(&s.work, "ssh tag", Sign::None);
    s.env
        .tag(&s.work, "ssh-tag", &ssh_tagged, TagKind::Ssh(key));
    s.publish();
    s.wait_note(&mut daemon, "icyci", "result.passed", &ssh_tagged);

    let unsigned = s.env.commit(&s.work, "unsigned", Sign::None);
    s.publish();
    wait_log(&mut daemon, &["not testing", &commit_field(&unsigned)]);

    let last = s.env.commit(&s.work, "gpg again", Sign::Gpg(fpr));
    s.publish();
    s.wait_note(&mut daemon, "icyci", "result.passed", &last);

    let tested = [gpg_commit, ssh_commit, gpg_tagged, ssh_tagged, last];
    assert_eq!(s.runs(), tested);
    for commit in &tested {
        s.assert_passed(commit);
    }
    s.assert_untouched(&unsigned);
}

#[test]
fn signatures_by_untrusted_keys_are_not_tested() {
    if !require_tool("gpg") || !require_tool("ssh-keygen") {
        return;
    }
    let s = Setup::new();
    // The daemon's user has a keyring and allowed signers, just not these keys.
    s.env.gpg_key();
    s.env.ssh_key("alice");
    let stranger = TestEnv::new();
    let stranger_gpg = stranger.gpg_key_named("verify-stranger");
    let stranger_ssh = stranger.ssh_key("mallory");

    let mut cases = Vec::new();
    cases.push((
        "gpg commit",
        stranger.commit(
            &s.work,
            "gpg by a stranger",
            Sign::Gpg(stranger_gpg.clone()),
        ),
    ));
    cases.push((
        "ssh commit",
        stranger.commit(
            &s.work,
            "ssh by a stranger",
            Sign::Ssh(stranger_ssh.clone()),
        ),
    ));
    let commit = s.env.commit(&s.work, "gpg tag by a stranger", Sign::None);
    stranger.tag(&s.work, "gpg-stranger", &commit, TagKind::Gpg(stranger_gpg));
    cases.push(("gpg tag", commit));
    let commit = s.env.commit(&s.work, "ssh tag by a stranger", Sign::None);
    stranger.tag(&s.work, "ssh-stranger", &commit, TagKind::Ssh(stranger_ssh));
    cases.push(("ssh tag", commit));

    for (what, commit) in &cases {
        s.env
            .git(&s.work, ["reset", "-q", "--hard", commit.as_str()]);
        s.publish();
        let (code, stderr) = s.once(&[]);
        assert_eq!(code, 3, "{what}: {stderr}");
        assert!(
            log_has_line(
                &stderr,
                &["not testing: no valid signature", &commit_field(commit)]
            ),
            "{what}: {stderr}"
        );
        s.assert_untouched(commit);
        assert_eq!(s.note("locked", commit), None, "{what}");
    }
    assert_eq!(s.runs(), Vec::<String>::new());
    assert!(s.env.note_refs(&s.results).is_empty());
    assert_eq!(s.results_ref("refs/heads/main"), None);
}

#[test]
fn tag_names_that_look_like_options_do_not_confuse_verification() {
    if !require_tool("gpg") {
        return;
    }
    let s = Setup::new();
    let fpr = s.env.gpg_key();
    let commit = s.env.commit(&s.work, "unsigned", Sign::None);
    // `git tag` refuses names starting with '-', but a ref of that name is valid and a remote
    // can serve it. The signed tag is reachable only under such a name.
    let signed = s.env.tag(&s.work, "tmp-signed", &commit, TagKind::Gpg(fpr));
    let unsigned = s
        .env
        .tag(&s.work, "tmp-unsigned", &commit, TagKind::Annotated);
    for (name, object) in [
        ("refs/tags/-x", &signed),
        ("refs/tags/--verbose", &unsigned),
    ] {
        let out = s
            .env
            .git_output(&s.work, ["update-ref", name, object.as_str()]);
        if !out.status.success() {
            // Some git versions refuse such names outright; then no remote can serve them.
            eprintln!(
                "SKIPPED: git refuses {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
    }
    s.env
        .git(&s.work, ["tag", "-d", "tmp-signed", "tmp-unsigned"]);
    // Names git itself rejects (`refs/tags/a..b`, `refs/tags/x.lock`) cannot be created with
    // update-ref nor transferred by fetch, so they are not exercised here.
    s.publish();
    assert_eq!(
        ref_value(&s.env, &s.source, "refs/tags/-x").as_deref(),
        Some(signed.as_str())
    );

    let (code, stderr) = s.once(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        log_has_line(
            &stderr,
            &["verified: signed tag refs/tags/-x", &commit_field(&commit)]
        ),
        "{stderr}"
    );
    s.assert_passed(&commit);
    assert_eq!(s.runs(), vec![commit.clone()]);
    assert_eq!(
        s.results_ref("refs/tags/-x").as_deref(),
        Some(signed.as_str())
    );
    assert_eq!(
        s.results_ref("refs/heads/main").as_deref(),
        Some(commit.as_str())
    );
}

#[test]
fn the_verified_commit_is_tested_even_when_the_branch_moves() {
    if !require_tool("gpg") {
        return;
    }
    let s = Setup::new();
    let release = s.env.path("release");
    s.set_script(&format!(
        "while [ ! -e '{}' ]; do sleep 0.05; done\n",
        release.display()
    ));
    let fpr = s.env.gpg_key();
    let tested = s.env.commit(&s.work, "signed", Sign::Gpg(fpr));
    s.publish();
    let mut daemon = s.spawn(&[]);
    wait_for("the script to start", DEADLINE, || !s.runs().is_empty());

    // The branch moves (to an unsigned commit) while the verified one is being tested.
    let moved = s
        .env
        .commit(&s.work, "unsigned, pushed during the test", Sign::None);
    s.publish();
    std::fs::write(&release, b"").expect("write the release file");

    s.wait_note(&mut daemon, "icyci", "result.passed", &tested);
    wait_log(&mut daemon, &["not testing", &commit_field(&moved)]);
    assert_eq!(
        s.runs(),
        vec![tested.clone()],
        "the checkout was the verified commit"
    );
    s.assert_passed(&tested);
    s.assert_untouched(&moved);
    // The results branch gets the tested commit, not whatever the source branch became.
    assert_eq!(
        s.results_ref("refs/heads/main").as_deref(),
        Some(tested.as_str())
    );
}

/// A verification that cannot run is no verdict. The daemon's git first has no temporary directory
/// (as with a read-only `TMPDIR`), then its gpg fails without a status line: the signed tip is
/// retried with the verify state's backoff, and tested once when verification works again; a
/// signed tag is looked at again on each retry, though no fetch brings it again. An unsigned tip
/// meanwhile is skipped as ever, and not looked at again and again.
#[test]
fn a_verification_that_cannot_run_is_retried_and_the_signed_tip_tested_once() {
    if !require_tool("gpg") {
        return;
    }
    let s = Setup::new();
    let fpr = s.env.gpg_key();
    // The daemon's own TMPDIR and gpg, broken and then repaired; the test's git keeps its own.
    let daemon_tmp = s.env.path("daemon-tmp");
    let gpg_broken = s.env.path("gpg-broken");
    let gpg = s.env.path("bin/gpg-or-fail");
    write_script(
        &gpg,
        &format!(
            "if [ -e '{}' ]; then\n  \
             echo 'gpg: cannot create temporary file: Read-only file system' >&2\n  exit 2\n\
             fi\nexec gpg \"$@\"\n",
            gpg_broken.display()
        ),
    );
    std::fs::write(&gpg_broken, b"").expect("break gpg");
    let unsigned = s.env.commit(&s.work, "unsigned", Sign::None);
    s.publish();
    let mut icyci = s.env.icyci();
    icyci
        .args(s.args(&["-poll-interval=100ms"]))
        .env("TMPDIR", &daemon_tmp)
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "gpg.program")
        .env("GIT_CONFIG_VALUE_0", &gpg);
    let mut daemon = s.env.spawn_logged(icyci, "icyci");

    let skipped = [
        "not testing: no valid signature (commit: no signature)",
        &commit_field(&unsigned),
    ];
    wait_log(&mut daemon, &skipped);
    // Ten poll intervals: a retry loop would have verified it again by now.
    std::thread::sleep(Duration::from_secs(1));

    let signed = s.env.commit(&s.work, "signed", Sign::Gpg(fpr.clone()));
    s.publish();
    let no_tmp = [
        "WARN",
        "verify failed: cannot check the signature (commit: error: could not create temporary \
         file: No such file or directory)",
        "retry_in=",
        &commit_field(&signed),
    ];
    wait_log_count(&mut daemon, &no_tmp, 2);
    std::fs::create_dir(&daemon_tmp).expect("create the daemon's TMPDIR");
    let silent_gpg = [
        "WARN",
        "verify failed: cannot check the signature (commit: signed, but the verifier failed \
         without a status line)",
        &commit_field(&signed),
    ];
    wait_log_count(&mut daemon, &silent_gpg, 1);
    std::fs::remove_file(&gpg_broken).expect("repair gpg");
    s.wait_note(&mut daemon, "icyci", "result.passed", &signed);

    // Only a tag is signed this time: the retries must not forget it.
    std::fs::write(&gpg_broken, b"").expect("break gpg");
    let tagged = s.env.commit(&s.work, "unsigned, signed tag", Sign::None);
    s.env.tag(&s.work, "v1", &tagged, TagKind::Gpg(fpr));
    s.publish();
    let tag_unchecked = [
        "verify failed: cannot check the signature (tag refs/tags/v1: signed, but the verifier \
         failed without a status line)",
        &commit_field(&tagged),
    ];
    wait_log_count(&mut daemon, &tag_unchecked, 2);
    std::fs::remove_file(&gpg_broken).expect("repair gpg");
    s.wait_note(&mut daemon, "icyci", "result.passed", &tagged);

    let log = daemon.stderr();
    assert_eq!(
        s.runs(),
        [signed.clone(), tagged.clone()],
        "each tested once"
    );
    s.assert_passed(&signed);
    s.assert_passed(&tagged);
    assert!(
        log_has_line(
            &log,
            &["verified: signed tag refs/tags/v1", &commit_field(&tagged)]
        ),
        "{log}"
    );
    assert_eq!(
        count_lines(&log, &["verified: signed commit", &commit_field(&signed)]),
        1,
        "{log}"
    );
    assert!(log_has_line(&log, &["verify works again after"]), "{log}");
    for tip in [&signed, &tagged] {
        assert!(
            !log_has_line(&log, &["not testing", &commit_field(tip)]),
            "a fault is no verdict: {log}"
        );
    }
    assert_eq!(count_lines(&log, &skipped), 1, "verified once: {log}");
    assert!(
        !log_has_line(&log, &["verify failed", &commit_field(&unsigned)]),
        "{log}"
    );
    s.assert_untouched(&unsigned);
}

// ---- helpers shared by verify.rs, notes_dir.rs and instances.rs ----

/// Generous deadline for anything the daemon does (the machine is shared and busy).
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// A work repository, a bare source it is pushed to, a bare results repository and a test script
/// (outside the checkout) that appends the tested commit to a runs file, then runs `extra`.
pub(crate) struct Setup {
    pub env: TestEnv,
    pub work: PathBuf,
    pub source: PathBuf,
    pub results: PathBuf,
    pub script: PathBuf,
    pub runs_file: PathBuf,
}

impl Setup {
    /// A setup whose script records the run, prints `tested <commit>` and passes.
    pub fn new() -> Setup {
        Setup::with_script("")
    }

    /// A setup whose script records the run and prints `tested <commit>`, then runs `extra`
    /// (shell), whose exit status is the script's.
    pub fn with_script(extra: &str) -> Setup {
        let env = TestEnv::new();
        let work = env.work_repo("work");
        let source = env.bare_repo("source.git");
        let results = env.bare_repo("results.git");
        let script = env.path("bin/test.sh");
        let runs_file = env.path("runs.log");
        let setup = Setup {
            env,
            work,
            source,
            results,
            script,
            runs_file,
        };
        setup.set_script(extra);
        setup
    }

    /// Rewrites the test script (same recording prologue, new `extra`).
    pub fn set_script(&self, extra: &str) {
        write_script(
            &self.script,
            &format!(
                "set -e\nhead=$(git rev-parse HEAD)\necho \"$head\" >> '{}'\necho \"tested $head\"\n{extra}",
                self.runs_file.display()
            ),
        );
    }

    /// Pushes `main` (forced) and every tag of the work repository to the source.
    pub fn publish(&self) {
        self.env
            .push(&self.work, &self.source, &["-f", "--tags", "main"]);
    }

    /// `-source-repo`, `-results-repo`, `-test-script` and `extra`.
    pub fn args(&self, extra: &[&str]) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "-source-repo".into(),
            self.source.clone().into(),
            "-results-repo".into(),
            self.results.clone().into(),
            "-test-script".into(),
            self.script.clone().into(),
        ];
        args.extend(extra.iter().map(OsString::from));
        args
    }

    /// Runs `icyci -once` (plus `extra`) to its end; its exit code and stderr.
    pub fn once(&self, extra: &[&str]) -> (i32, String) {
        let mut args = self.args(extra);
        args.push("-once".into());
        let mut daemon = self.env.spawn_icyci(args);
        let status = daemon.expect_exit(DEADLINE);
        let code = status
            .code()
            .unwrap_or_else(|| panic!("icyci -once killed by a signal: {status}"));
        (code, daemon.stderr())
    }

    /// Starts a daemon polling every 100 ms (plus `extra`).
    pub fn spawn(&self, extra: &[&str]) -> Daemon {
        let mut args = self.args(extra);
        args.push("-poll-interval=100ms".into());
        self.env.spawn_icyci(args)
    }

    /// The commits the script ran on, in order.
    pub fn runs(&self) -> Vec<String> {
        read_lines(&self.runs_file)
    }

    /// The note `refs/notes/icyci.<name>` of `commit` in the results repository.
    pub fn note(&self, name: &str, commit: &str) -> Option<Vec<u8>> {
        self.env.note(&self.results, "icyci", name, commit)
    }

    /// Like [`Setup::note`], as text.
    pub fn note_text(&self, name: &str, commit: &str) -> Option<String> {
        self.env.note_text(&self.results, "icyci", name, commit)
    }

    /// The text of the passed note for this setup's script.
    pub fn passed_text(&self) -> String {
        format!("{} completed successfully\n", self.script.display())
    }

    /// `commit` carries the lock, the passed verdict and the script's stdout in the results.
    pub fn assert_passed(&self, commit: &str) {
        assert_eq!(
            self.note_text("result.passed", commit).as_deref(),
            Some(self.passed_text().as_str()),
            "passed note of {commit}"
        );
        assert_eq!(self.note("result.failed", commit), None);
        let lock = self
            .note_text("locked", commit)
            .unwrap_or_else(|| panic!("no lock note on {commit}"));
        assert!(
            lock.contains(": this commit is being tested by icyCI"),
            "{lock:?}"
        );
        assert_eq!(
            self.note_text("output.stdout", commit),
            Some(format!("tested {commit}\n"))
        );
        assert!(self.note("output.stderr", commit).is_some());
    }

    /// `commit` has no note at all in the results repository, in any namespace.
    pub fn assert_untouched(&self, commit: &str) {
        for notes_ref in self.env.note_refs(&self.results) {
            let out = self.env.git_output(
                &self.results,
                ["notes", &format!("--ref={notes_ref}"), "list", commit],
            );
            assert!(
                !out.status.success(),
                "{commit} has a note in {notes_ref}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }

    /// What `name` points to in the results repository, if it exists.
    pub fn results_ref(&self, name: &str) -> Option<String> {
        ref_value(&self.env, &self.results, name)
    }

    /// Waits until the results repository has `refs/notes/<ns>.<name>` on `commit`; panics
    /// (with the daemon's logs) when the daemon exits first or the deadline passes.
    pub fn wait_note(&self, daemon: &mut Daemon, ns: &str, name: &str, commit: &str) {
        wait_for(&format!("note {ns}.{name} on {commit}"), DEADLINE, || {
            assert!(
                daemon.is_running(),
                "icyci exited early\n{}",
                daemon.logs_for_humans()
            );
            self.env.note(&self.results, ns, name, commit).is_some()
        });
    }
}

/// What the full ref `name` points to in `repo`, if it exists.
pub(crate) fn ref_value(env: &TestEnv, repo: &Path, name: &str) -> Option<String> {
    let out = env.git_output(repo, ["rev-parse", "--verify", "--quiet", name]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The non-empty lines of `path`, or nothing when it does not exist.
pub(crate) fn read_lines(path: &Path) -> Vec<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read {}: {e}", path.display()),
    }
}

/// Whether a line of `log` contains every one of `needles`.
pub(crate) fn log_has_line(log: &str, needles: &[&str]) -> bool {
    log.lines().any(|l| needles.iter().all(|n| l.contains(n)))
}

/// The log field naming a commit, as the daemon prints it.
pub(crate) fn commit_field(commit: &str) -> String {
    format!("commit={commit}")
}

/// How many lines of `log` contain every one of `needles`.
pub(crate) fn count_lines(log: &str, needles: &[&str]) -> usize {
    log.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

/// Waits until `count` lines of the daemon's stderr contain every one of `needles`.
pub(crate) fn wait_log_count(daemon: &mut Daemon, needles: &[&str], count: usize) {
    wait_for(
        &format!("{count} log lines with {needles:?}"),
        DEADLINE,
        || {
            assert!(
                daemon.is_running(),
                "icyci exited early\n{}",
                daemon.logs_for_humans()
            );
            count_lines(&daemon.stderr(), needles) >= count
        },
    );
}

/// Waits until a line of the daemon's stderr contains every one of `needles`.
pub(crate) fn wait_log(daemon: &mut Daemon, needles: &[&str]) {
    wait_for(&format!("a log line with {needles:?}"), DEADLINE, || {
        assert!(
            daemon.is_running(),
            "icyci exited early\n{}",
            daemon.logs_for_humans()
        );
        log_has_line(&daemon.stderr(), needles)
    });
}

/// A history `base` (signed as `sign`) -> main commit and side commit (unsigned) -> merge commit
/// of side into main (signed as `sign`); the merge commit's id.
fn make_merge(s: &Setup, sign: Sign) -> String {
    s.env.commit(&s.work, "base", sign.clone());
    s.env.git(&s.work, ["checkout", "-q", "-b", "side"]);
    s.env.commit(&s.work, "on side", Sign::None);
    s.env.git(&s.work, ["checkout", "-q", "main"]);
    s.env.commit(&s.work, "on main", Sign::None);
    let merge = s.env.merge(&s.work, "side", "merge side", sign);
    let parents = s.env.git(&s.work, ["rev-list", "--parents", "-n1", &merge]);
    assert_eq!(parents.split(' ').count(), 3, "a merge commit: {parents}");
    merge
}

/// A branch and its signed tag pushed one after the other: the daemon may fetch between the two
/// and find the tip unsigned. It looks at such a tip once more at its next poll.
#[test]
fn a_signed_tag_that_lands_just_after_its_branch_is_seen() {
    if !require_tool("gpg") {
        return;
    }
    let s = Setup::new();
    let fpr = s.env.gpg_key();
    let first = s.env.commit(&s.work, "signed", Sign::Gpg(fpr.clone()));
    s.publish();
    // A poll interval long enough for the test to push the tag after the first look.
    let mut daemon = s.env.spawn_icyci(s.args(&["-poll-interval=2s"]));
    s.wait_note(&mut daemon, "icyci", "result.passed", &first);

    let tagged = s.env.commit(&s.work, "tagged later", Sign::None);
    s.env.push(&s.work, &s.source, &["main"]);
    daemon.wait_for_stderr(
        &format!("not testing: no valid signature (commit: no signature) commit={tagged}"),
        Duration::from_secs(30),
    );
    s.env.tag(&s.work, "v9", &tagged, TagKind::Gpg(fpr));
    s.env.push(&s.work, &s.source, &["--tags"]);
    s.wait_note(&mut daemon, "icyci", "result.passed", &tagged);
}
