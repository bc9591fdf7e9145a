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

use std::process::Stdio;

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

/// The outcome of verifying a tip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// A tag at the tip or the commit itself carries a good signature.
    Verified(Box<VerifiedTip>),
    /// Nothing verified; one rejection per object tried.
    NotVerified(Vec<Rejection>),
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
        match check(git, policy, "verify-tag", &tag.object).await? {
            (Judgement::Accepted { key_expired }, signature) => {
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
            (judgement, _) => rejections.push(rejection(object, judgement)),
        }
    }

    match check(git, policy, "verify-commit", tip).await? {
        (Judgement::Accepted { key_expired }, signature) => {
            Ok(Verification::Verified(Box::new(VerifiedTip {
                commit: tip.to_owned(),
                tag: None,
                provenance: provenance(policy, signature, key_expired),
            })))
        }
        (judgement, _) => {
            rejections.push(rejection("commit".to_owned(), judgement));
            Ok(Verification::NotVerified(rejections))
        }
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

/// Runs `git <subcommand> --raw <object>` and judges its answer; also
/// returns what it said about the signature.
async fn check(
    git: &Git,
    policy: &SignaturePolicy,
    subcommand: &str,
    object: &str,
) -> Result<(Judgement, Option<SignatureReport>), GitError> {
    let output = git
        .command(subcommand)
        .arg("--raw")
        .positional([object])
        .output()
        .await?;
    let report = parse_verification(&output.stderr);
    let explanation = last_line(&output.stderr);
    let mut judgement = policy.judge(report.as_ref(), output.status.success(), explanation);
    if judgement == Judgement::ExpiredKey {
        if let Some(report) = &report {
            let expiry = key_expiry(git, report).await;
            judgement = SignaturePolicy::judge_expired(report, expiry);
        }
    }
    Ok((judgement, report))
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

    #[test]
    fn last_line_skips_status_lines() {
        assert_eq!(last_line(""), "no signature");
        assert_eq!(
            last_line("gpg: Can't check signature: No public key\n[GNUPG:] NO_PUBKEY 1\n"),
            "gpg: Can't check signature: No public key"
        );
    }
}
