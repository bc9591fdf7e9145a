//! Signature verification of a new tip: the only gate between a remote's
//! content and running its code.
//!
//! Every tag pointing at the tip is considered, not only the one
//! `git describe` would pick, so an unsigned or lightweight tag cannot hide a
//! signed one or a signed commit. Verification is git's own (`verify-tag`,
//! `verify-commit`), so `gpg.format`, `gpg.ssh.allowedSignersFile`,
//! `GNUPGHOME` and the daemon user's keyring apply. Objects are passed to git
//! by id only.
//!
//! Git is asked with `--raw`, so that its output names the key that made the
//! signature and whom it belongs to ([`crate::signature`]): with
//! `-trusted-signers` that key must also be listed ([`crate::trust`]), and
//! either way it is recorded in the `verified` note of the tested commit.
//!
//! A verification that could not run (git cannot create its temporary file,
//! gpg cannot start or fails without a status line) is not a verdict: it is
//! reported as a [`VerifierFault`], for the caller to retry.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};

use thiserror::Error;
use tracing::{debug, warn};

use crate::git::{is_valid_full_refname, parse_tags_at, Git, GitError};
use crate::signature::{parse_key_expiry, parse_verification, SignatureReport};
use crate::trust::{format_time, Judgement, SignaturePolicy};

/// A tag that verified at the tip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedTag {
    /// Full ref name, `refs/tags/...`.
    pub refname: String,
    /// The tag object id.
    pub object: String,
}

/// Who signed the verified object, as far as git's verification says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// The signature as git reported it; `None` when git accepted output
    /// this parser does not know.
    pub signature: Option<SignatureReport>,
    /// Whether `-trusted-signers` decided, rather than git alone.
    pub trusted_signers: bool,
    /// When the key had expired before it was accepted with
    /// `-accept-expired-before-expiry`, in seconds since the epoch.
    pub key_expired: Option<i64>,
}

/// The verified tip, pinned by object id: exactly this commit is locked,
/// checked out, tested and annotated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedTip {
    /// The commit id.
    pub commit: String,
    /// The tag whose signature verified, when the tip was accepted through one.
    pub tag: Option<VerifiedTag>,
    /// The signature that verified.
    pub provenance: Provenance,
}

impl VerifiedTip {
    /// What carried the good signature and whose key made it, for logs.
    pub fn describe(&self) -> String {
        let what = match &self.tag {
            Some(tag) => format!("signed tag {}", tag.refname),
            None => "signed commit".to_owned(),
        };
        let Some(signature) = &self.provenance.signature else {
            return what;
        };
        let key = signature.key_name().unwrap_or("unknown");
        match &signature.signer {
            Some(signer) => format!("{what}, {} key {key} ({signer})", signature.format),
            None => format!("{what}, {} key {key}", signature.format),
        }
    }

    /// The text of the `verified` note: `key: value` lines saying which
    /// object verified, in which signature format, by which key and whom
    /// it names, and which policy accepted it.
    pub fn verified_note(&self) -> String {
        let mut lines = vec![match &self.tag {
            Some(tag) => format!("object: tag {} {}", tag.refname, tag.object),
            None => format!("object: commit {}", self.commit),
        }];
        match &self.provenance.signature {
            None => lines.push("format: unknown".to_owned()),
            Some(signature) => {
                lines.push(format!("format: {}", signature.format));
                if let Some(key) = &signature.key {
                    lines.push(format!("key: {key}"));
                }
                if let Some(primary) = &signature.primary_key {
                    lines.push(format!("primary-key: {primary}"));
                }
                if let Some(signer) = &signature.signer {
                    lines.push(format!("signer: {}", one_line_value(signer)));
                }
                if let Some(created) = signature.created {
                    lines.push(format!("signed: {}", format_time(created)));
                }
            }
        }
        if let Some(expiry) = self.provenance.key_expired {
            lines.push(format!("key-expired: {}", format_time(expiry)));
        }
        let trust = if self.provenance.trusted_signers {
            "trusted-signers"
        } else {
            "git"
        };
        lines.push(format!("trust: {trust}"));
        lines.iter().map(|line| format!("{line}\n")).collect()
    }
}

/// A user id is the signer's own text: it must stay on its note line.
fn one_line_value(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect()
}

/// Why one signed object at the tip did not count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// `commit` or `tag refs/tags/<name>`.
    pub object: String,
    /// What was wrong.
    pub kind: RejectionKind,
}

/// What was wrong with one object's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectionKind {
    /// No good signature: unsigned, bad, or by a key git does not know.
    Unverified(String),
    /// A signature git reported that the trust policy refuses.
    Refused {
        /// The fingerprint of the key that made it.
        key: String,
        /// Why it does not count.
        reason: String,
    },
}

/// Git could not check a signature at the tip: it, or the program it
/// verifies with, failed to run. No verdict on the signature, so the tip is
/// neither tested nor skipped: the verification is to be tried again.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("cannot check the signature ({})", .faults.join("; "))]
pub struct VerifierFault {
    /// `<object>: <why>` for each object that could not be checked.
    pub faults: Vec<String>,
}

/// The outcome of verifying a tip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// A tag at the tip or the commit itself carries a good signature.
    Verified(Box<VerifiedTip>),
    /// Nothing verified; one rejection per object tried.
    NotVerified(Vec<Rejection>),
    /// Nothing verified, and at least one signature could not be checked.
    Unchecked(VerifierFault),
}

/// The rejections of a tip as one log line's text: each refused signature
/// with its key and reason, then the objects without a valid signature.
pub fn describe_rejections(rejections: &[Rejection]) -> String {
    let mut parts: Vec<String> = rejections
        .iter()
        .filter_map(|rejection| match &rejection.kind {
            RejectionKind::Refused { key, reason } => Some(format!(
                "signature by {key} refused: {reason} ({})",
                rejection.object
            )),
            RejectionKind::Unverified(_) => None,
        })
        .collect();
    let unverified: Vec<String> = rejections
        .iter()
        .filter_map(|rejection| match &rejection.kind {
            RejectionKind::Unverified(reason) => Some(format!("{}: {reason}", rejection.object)),
            RejectionKind::Refused { .. } => None,
        })
        .collect();
    if !unverified.is_empty() {
        parts.push(format!("no valid signature ({})", unverified.join("; ")));
    }
    parts.join("; ")
}

/// Verifies the commit `tip` (an object id) in the repository of `git`
/// under `policy`.
pub async fn verify_tip(
    git: &Git,
    tip: &str,
    policy: &SignaturePolicy,
    look_for_tags: bool,
) -> Result<Verification, GitError> {
    let mut rejections = Vec::new();
    let mut faults = Vec::new();
    let tags = if look_for_tags {
        tags_at(git, tip).await?
    } else {
        Vec::new()
    };
    for tag in tags {
        if !tag.annotated {
            debug!(commit = tip, tag = %tag.refname, "lightweight tag carries no signature");
            continue;
        }
        let object = format!("tag {}", tag.refname);
        match check(git, policy, ObjectKind::Tag, &tag.object).await? {
            Checked::Judged(Judgement::Accepted { key_expired }, signature) => {
                let tag = VerifiedTag {
                    refname: tag.refname,
                    object: tag.object,
                };
                return Ok(Verification::Verified(Box::new(VerifiedTip {
                    commit: tip.to_owned(),
                    tag: Some(tag),
                    provenance: provenance(policy, signature, key_expired),
                })));
            }
            Checked::Judged(judgement, _) => rejections.push(rejection(object, judgement)),
            Checked::Fault(reason) => faults.push(format!("{object}: {reason}")),
        }
    }

    match check(git, policy, ObjectKind::Commit, tip).await? {
        Checked::Judged(Judgement::Accepted { key_expired }, signature) => {
            return Ok(Verification::Verified(Box::new(VerifiedTip {
                commit: tip.to_owned(),
                tag: None,
                provenance: provenance(policy, signature, key_expired),
            })));
        }
        Checked::Judged(judgement, _) => rejections.push(rejection("commit".to_owned(), judgement)),
        Checked::Fault(reason) => faults.push(format!("commit: {reason}")),
    }
    // A signature that could not be checked may be the good one.
    if faults.is_empty() {
        Ok(Verification::NotVerified(rejections))
    } else {
        Ok(Verification::Unchecked(VerifierFault { faults }))
    }
}

fn provenance(
    policy: &SignaturePolicy,
    signature: Option<SignatureReport>,
    key_expired: Option<i64>,
) -> Provenance {
    Provenance {
        signature,
        trusted_signers: policy.trusted.is_some(),
        key_expired,
    }
}

fn rejection(object: String, judgement: Judgement) -> Rejection {
    let kind = match judgement {
        Judgement::Refused { key, reason } => RejectionKind::Refused { key, reason },
        Judgement::Unverified(reason) => RejectionKind::Unverified(reason),
        // Settled by `check`; never left for the caller.
        Judgement::Accepted { .. } | Judgement::ExpiredKey => {
            RejectionKind::Unverified("undecided".to_owned())
        }
    };
    Rejection { object, kind }
}

/// The kinds of object that carry a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ObjectKind {
    Commit,
    Tag,
}

impl ObjectKind {
    /// The type name, as `git cat-file` takes it.
    fn name(self) -> &'static str {
        match self {
            ObjectKind::Commit => "commit",
            ObjectKind::Tag => "tag",
        }
    }
}

/// What checking one object's signature came to.
#[derive(Debug)]
enum Checked {
    /// A verdict, judged by the policy; with what git said of the signature.
    Judged(Judgement, Option<SignatureReport>),
    /// No verdict: git or its verifier failed to run; why.
    Fault(String),
}

/// Runs `git verify-commit|verify-tag --raw <object>` and judges its
/// answer, unless the check itself failed.
async fn check(
    git: &Git,
    policy: &SignaturePolicy,
    kind: ObjectKind,
    object: &str,
) -> Result<Checked, GitError> {
    let subcommand = match kind {
        ObjectKind::Commit => "verify-commit",
        ObjectKind::Tag => "verify-tag",
    };
    let output = git
        .command(subcommand)
        .arg("--raw")
        .positional([object])
        .output()
        .await?;
    match classify(&output.stderr, output.status) {
        Answer::Verdict => {}
        Answer::Fault(reason) => return Ok(Checked::Fault(reason)),
        Answer::Silent => {
            if carries_signature(git, kind, object).await? {
                return Ok(Checked::Fault(
                    "signed, but the verifier failed without a status line".to_owned(),
                ));
            }
        }
    }
    let report = parse_verification(&output.stderr);
    let explanation = last_line(&output.stderr);
    let mut judgement = policy.judge(report.as_ref(), output.status.success(), explanation);
    if judgement == Judgement::ExpiredKey {
        if let Some(report) = &report {
            let expiry = key_expiry(git, report).await;
            judgement = SignaturePolicy::judge_expired(report, expiry);
        }
    }
    Ok(Checked::Judged(judgement, report))
}

/// What git's `--raw` verification of one object amounts to.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// Git, gpg or ssh-keygen said something about the signature.
    Verdict,
    /// Git said nothing: unsigned, or a verifier that failed silently.
    Silent,
    /// Git or the program it verifies with failed to run; why.
    Fault(String),
}

/// Git's own words, without any status line, that are still a verdict: the
/// object has no signature; the signature is not one git can read; no ssh
/// key is trusted at all (as gpg's unknown key is a verdict).
const VERDICTS_IN_ERRORS: [&str; 3] = [
    "error: no signature found",
    "fatal: bad/incompatible signature",
    "error: gpg.ssh.allowedSignersFile needs to be configured",
];

/// Words of git or a shell, on any line, saying the verifier died or could
/// not be run (no `error:` prefix when a wrapper script's `exec` fails).
const NOT_RUN_SIGNS: [&str; 5] = [
    "died of signal",
    "error while loading shared libraries",
    ": not found",
    "cannot execute",
    "cannot exec ",
];

/// Tells a verdict on the signature from a check that could not run. With
/// `--raw` git passes on only gpg's status lines or ssh-keygen's output, so
/// its own `error:` or `fatal:` line without any of those means the check
/// failed (a temporary file it cannot create, a verifier that cannot start
/// or died), and so does a git killed by a signal.
fn classify(stderr: &str, status: ExitStatus) -> Answer {
    if status.success() {
        return Answer::Verdict;
    }
    if let Some(signal) = status.signal() {
        return Answer::Fault(format!("git killed by signal {signal}"));
    }
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    if lines.is_empty() {
        return Answer::Silent;
    }
    // A verifier that died (after its first status lines, say) or could not
    // be run at all gave no verdict, whatever it printed before.
    if let Some(line) = lines
        .iter()
        .find(|line| NOT_RUN_SIGNS.iter().any(|sign| line.contains(sign)))
    {
        return Answer::Fault((*line).to_owned());
    }
    if lines.iter().any(|line| line.starts_with("[GNUPG:] "))
        || parse_verification(stderr).is_some()
    {
        return Answer::Verdict;
    }
    if lines
        .iter()
        .any(|line| VERDICTS_IN_ERRORS.iter().any(|v| line.starts_with(v)))
    {
        return Answer::Verdict;
    }
    let first_error = lines
        .iter()
        .find(|line| line.starts_with("error: ") || line.starts_with("fatal: "));
    match first_error {
        Some(line) => Answer::Fault((*line).to_owned()),
        // ssh-keygen's own words ("Could not verify signature.").
        None => Answer::Verdict,
    }
}

/// Whether `object` carries a signature, read from the object itself: git
/// says nothing both of an unsigned commit and of one whose verifier failed
/// without a word.
async fn carries_signature(git: &Git, kind: ObjectKind, object: &str) -> Result<bool, GitError> {
    let text = git
        .command("cat-file")
        .arg(kind.name())
        .positional([object])
        .run()
        .await?;
    Ok(has_signature(kind, &text))
}

/// Whether the text of a commit or tag object holds a signature: a `gpgsig`
/// header, or for a tag one of the signature blocks git appends to its
/// message. A commit's message is not looked at: quoting a signature there
/// does not sign it.
fn has_signature(kind: ObjectKind, text: &str) -> bool {
    const TAG_SIGNATURES: [&str; 4] = [
        "-----BEGIN PGP SIGNATURE-----",
        "-----BEGIN PGP MESSAGE-----",
        "-----BEGIN SIGNED MESSAGE-----",
        "-----BEGIN SSH SIGNATURE-----",
    ];
    let (headers, message) = text.split_once("\n\n").unwrap_or((text, ""));
    let signed_header = headers
        .lines()
        .any(|line| line.starts_with("gpgsig ") || line.starts_with("gpgsig-sha256 "));
    signed_header
        || (kind == ObjectKind::Tag
            && message
                .lines()
                .any(|line| TAG_SIGNATURES.iter().any(|start| line.starts_with(start))))
}

/// The expiry of the key that made the OpenPGP signature of `report`, from
/// gpg's listing of its primary key in the daemon user's keyring (git's
/// output only says that the key has expired). `None` when it cannot be
/// read: the signature is then refused.
async fn key_expiry(git: &Git, report: &SignatureReport) -> Option<i64> {
    let signing_key = report.key.as_deref()?;
    let primary = report.primary_key.as_deref().unwrap_or(signing_key);
    let program = gpg_program(git).await;
    let mut command = tokio::process::Command::new(&program);
    command
        .args(["--batch", "--no-tty", "--with-colons", "--fixed-list-mode"])
        .args(["--list-keys", "--", primary])
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = match command.output().await {
        Ok(output) => output,
        Err(err) => {
            warn!("cannot run {program} to read the expiry of key {primary}: {err}");
            return None;
        }
    };
    debug!(command = %format!("{program} --list-keys {primary}"), status = %output.status);
    if !output.status.success() {
        warn!(
            "{program} cannot list key {primary}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        return None;
    }
    parse_key_expiry(&String::from_utf8_lossy(&output.stdout), signing_key)
}

/// The OpenPGP program git verifies with: `gpg.openpgp.program`, else
/// `gpg.program`, else `gpg`.
async fn gpg_program(git: &Git) -> String {
    for key in ["gpg.openpgp.program", "gpg.program"] {
        let found = git.command("config").args(["--get", key]).output().await;
        if let Ok(output) = found {
            let value = output.stdout_text();
            if output.status.success() && !value.is_empty() {
                return value;
            }
        }
    }
    "gpg".to_owned()
}

/// Tags pointing at `tip`, with names git itself would refuse left out.
async fn tags_at(git: &Git, tip: &str) -> Result<Vec<crate::git::TagAtTip>, GitError> {
    let listing = git
        .command("for-each-ref")
        .arg(format!("--points-at={tip}"))
        .arg("--format=%(objectname) %(objecttype) %(refname)")
        .positional(["refs/tags/"])
        .run()
        .await?;
    let (valid, invalid): (Vec<_>, Vec<_>) = parse_tags_at(&listing)
        .into_iter()
        .partition(|tag| is_valid_full_refname(&tag.refname));
    for tag in invalid {
        warn!(commit = tip, tag = ?tag.refname, "skipping tag with an invalid name");
    }
    Ok(valid)
}

/// Git's last line of explanation; gpg's status lines are left out, as
/// they are parsed instead.
fn last_line(stderr: &str) -> &str {
    stderr
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with("[GNUPG:]"))
        .unwrap_or("no signature")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::parse_verification;

    fn tip(tag: Option<VerifiedTag>, raw: &str, trusted_signers: bool) -> VerifiedTip {
        VerifiedTip {
            commit: "c".repeat(40),
            tag,
            provenance: Provenance {
                signature: parse_verification(raw),
                trusted_signers,
                key_expired: None,
            },
        }
    }

    #[test]
    fn verified_note_for_a_gpg_commit() {
        let raw = "[GNUPG:] GOODSIG 5660BC37695CBC29 A <a@x>%0Aforged: line\n\
                   [GNUPG:] VALIDSIG 1111111111111111111111111111111111111111 2026-12-03 \
                   1796321372 0 4 0 22 8 00 2222222222222222222222222222222222222222";
        let mut verified = tip(None, raw, true);
        verified.provenance.key_expired = Some(1_796_321_381);
        assert_eq!(
            verified.verified_note(),
            format!(
                "object: commit {}\nformat: openpgp\n\
                 key: 1111111111111111111111111111111111111111\n\
                 primary-key: 2222222222222222222222222222222222222222\n\
                 signer: A <a@x>\u{FFFD}forged: line\nsigned: 2026-12-03T18:09:32Z\n\
                 key-expired: 2026-12-03T18:09:41Z\ntrust: trusted-signers\n",
                "c".repeat(40)
            )
        );
    }

    #[test]
    fn verified_note_for_an_ssh_tag() {
        let raw = "Good \"git\" signature for k1@x with ED25519 key SHA256:abc";
        let tag = VerifiedTag {
            refname: "refs/tags/v1".into(),
            object: "t".repeat(40),
        };
        let verified = tip(Some(tag), raw, false);
        assert_eq!(
            verified.verified_note(),
            format!(
                "object: tag refs/tags/v1 {}\nformat: ssh\nkey: SHA256:abc\nsigner: k1@x\n\
                 trust: git\n",
                "t".repeat(40)
            )
        );
        assert_eq!(
            verified.describe(),
            "signed tag refs/tags/v1, ssh key SHA256:abc (k1@x)"
        );
        assert_eq!(
            tip(None, "", false).verified_note(),
            format!(
                "object: commit {}\nformat: unknown\ntrust: git\n",
                "c".repeat(40)
            )
        );
    }

    #[test]
    fn rejections_on_one_line() {
        let refused = Rejection {
            object: "tag refs/tags/v1".into(),
            kind: RejectionKind::Refused {
                key: "ABC".into(),
                reason: "key revoked".into(),
            },
        };
        let unsigned = Rejection {
            object: "commit".into(),
            kind: RejectionKind::Unverified("no signature".into()),
        };
        assert_eq!(
            describe_rejections(std::slice::from_ref(&unsigned)),
            "no valid signature (commit: no signature)"
        );
        assert_eq!(
            describe_rejections(&[refused, unsigned]),
            "signature by ABC refused: key revoked (tag refs/tags/v1); \
             no valid signature (commit: no signature)"
        );
    }

    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn verdicts_and_faults_are_told_apart() {
        let good = "[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG 5660BC37695CBC29 A <a@x>";
        assert_eq!(classify(good, exited(0)), Answer::Verdict);
        // gpg ran and said why not: bad, unknown key, not OpenPGP data.
        for said in [
            "[GNUPG:] NEWSIG\n[GNUPG:] BADSIG 5660BC37695CBC29 A <a@x>",
            "[GNUPG:] ERRSIG 6E7236FCC187DB19 22 8 00 1796321378 9 -\n[GNUPG:] NO_PUBKEY 1",
            "[GNUPG:] NODATA 1\nerror: could not verify",
            // ssh-keygen's own words, and git's for unsigned tags and no ssh trust.
            "Good \"git\" signature with ED25519 key SHA256:abc\nNo principal matched.",
            "Could not verify signature.",
            "error: no signature found",
            "error: gpg.ssh.allowedSignersFile needs to be configured and exist for ssh \
             signature verification",
            "fatal: bad/incompatible signature '-----BEGIN NONSENSE-----\nx'",
        ] {
            assert_eq!(classify(said, exited(1)), Answer::Verdict, "{said}");
        }
        // Nothing at all: an unsigned commit, or a verifier that failed silently.
        assert_eq!(classify("", exited(1)), Answer::Silent);
        assert_eq!(classify(" \n", exited(1)), Answer::Silent);
        // Git or its verifier could not run.
        for (said, reason) in [
            (
                "error: could not create temporary file: Read-only file system",
                "error: could not create temporary file: Read-only file system",
            ),
            (
                "fatal: cannot exec 'gpg': No such file or directory\nerror: later",
                "fatal: cannot exec 'gpg': No such file or directory",
            ),
            (
                "error: /usr/bin/gpg died of signal 9",
                "error: /usr/bin/gpg died of signal 9",
            ),
            // gpg that crashed after its first status line
            (
                "[GNUPG:] NEWSIG\nerror: /x/gpg-crash died of signal 11",
                "error: /x/gpg-crash died of signal 11",
            ),
            // a wrapper whose exec fails, a program missing its libraries
            (
                "/x/sshkg-wrap: 2: exec: /usr/lib/missing/ssh-keygen: not found",
                "/x/sshkg-wrap: 2: exec: /usr/lib/missing/ssh-keygen: not found",
            ),
            (
                "ssh-keygen: error while loading shared libraries: libcrypto.so.3: cannot open",
                "ssh-keygen: error while loading shared libraries: libcrypto.so.3: cannot open",
            ),
        ] {
            assert_eq!(
                classify(said, exited(1)),
                Answer::Fault(reason.to_owned()),
                "{said}"
            );
        }
        assert_eq!(
            classify("", ExitStatus::from_raw(9)),
            Answer::Fault("git killed by signal 9".to_owned())
        );
    }

    #[test]
    fn signatures_are_found_in_the_object() {
        let unsigned = "tree 4b82\nauthor a <a@x> 1 +0000\n\nmessage\n\
                        -----BEGIN PGP SIGNATURE-----\nquoted\n";
        assert!(!has_signature(ObjectKind::Commit, unsigned));
        let signed =
            "tree 4b82\nauthor a <a@x> 1 +0000\ngpgsig -----BEGIN PGP SIGNATURE-----\n \n \
                      x\n -----END PGP SIGNATURE-----\n\nmessage";
        assert!(has_signature(ObjectKind::Commit, signed));
        assert!(has_signature(
            ObjectKind::Commit,
            "tree 4b82\ngpgsig-sha256 -----BEGIN SSH SIGNATURE-----\n x\n\nm"
        ));
        let tag = "object 1\ntype commit\ntag v1\n\nrelease\n";
        assert!(!has_signature(ObjectKind::Tag, tag));
        for block in ["PGP SIGNATURE", "SSH SIGNATURE", "SIGNED MESSAGE"] {
            let signed = format!("{tag}-----BEGIN {block}-----\nx\n-----END {block}-----");
            assert!(has_signature(ObjectKind::Tag, &signed), "{block}");
        }
    }

    #[test]
    fn faults_on_one_line() {
        let fault = VerifierFault {
            faults: vec![
                "tag refs/tags/v1: error: could not create temporary file: x".into(),
                "commit: fatal: cannot exec 'gpg'".into(),
            ],
        };
        assert_eq!(
            fault.to_string(),
            "cannot check the signature (tag refs/tags/v1: error: could not create temporary \
             file: x; commit: fatal: cannot exec 'gpg')"
        );
    }

    #[test]
    fn last_line_skips_status_lines() {
        assert_eq!(last_line(""), "no signature");
        assert_eq!(
            last_line("gpg: Can't check signature: No public key\n[GNUPG:] NO_PUBKEY 1\n"),
            "gpg: Can't check signature: No public key"
        );
    }
}
