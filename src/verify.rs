//! Signature verification of a new tip: the only gate between a remote's
//! content and running its code.
//!
//! Every tag pointing at the tip is considered, not only the one
//! `git describe` would pick, so an unsigned or lightweight tag cannot hide a
//! signed one or a signed commit. Verification is git's own (`verify-tag`,
//! `verify-commit`), so `gpg.format`, `gpg.ssh.allowedSignersFile`,
//! `GNUPGHOME` and the daemon user's keyring apply. Objects are passed to git
//! by id only.

use tracing::{debug, warn};

use crate::git::{is_valid_full_refname, parse_tags_at, Git, GitError};

/// A tag that verified at the tip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedTag {
    /// Full ref name, `refs/tags/...`.
    pub refname: String,
    /// The tag object id.
    pub object: String,
}

/// The verified tip, pinned by object id: exactly this commit is locked,
/// checked out, tested and annotated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedTip {
    /// The commit id.
    pub commit: String,
    /// The tag whose signature verified, when the tip was accepted through one.
    pub tag: Option<VerifiedTag>,
}

impl VerifiedTip {
    /// What carried the good signature, for logs.
    pub fn describe(&self) -> String {
        match &self.tag {
            Some(tag) => format!("signed tag {}", tag.refname),
            None => "signed commit".to_owned(),
        }
    }
}

/// The outcome of verifying a tip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// A tag at the tip or the commit itself carries a good signature.
    Verified(VerifiedTip),
    /// Nothing verified; one reason per object tried.
    NotVerified(Vec<String>),
}

/// Verifies the commit `tip` (an object id) in the repository of `git`.
pub async fn verify_tip(git: &Git, tip: &str) -> Result<Verification, GitError> {
    let mut reasons = Vec::new();
    for tag in tags_at(git, tip).await? {
        if !tag.annotated {
            debug!(commit = tip, tag = %tag.refname, "lightweight tag carries no signature");
            continue;
        }
        let output = git
            .command("verify-tag")
            .positional([&tag.object])
            .output()
            .await?;
        if output.status.success() {
            let tag = VerifiedTag {
                refname: tag.refname,
                object: tag.object,
            };
            return Ok(Verification::Verified(VerifiedTip {
                commit: tip.to_owned(),
                tag: Some(tag),
            }));
        }
        reasons.push(format!(
            "tag {}: {}",
            tag.refname,
            last_line(&output.stderr)
        ));
    }

    let output = git
        .command("verify-commit")
        .positional([tip])
        .output()
        .await?;
    if output.status.success() {
        return Ok(Verification::Verified(VerifiedTip {
            commit: tip.to_owned(),
            tag: None,
        }));
    }
    reasons.push(format!("commit: {}", last_line(&output.stderr)));
    Ok(Verification::NotVerified(reasons))
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

fn last_line(stderr: &str) -> &str {
    stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no signature")
}
