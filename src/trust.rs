//! Which signatures count: the operator's `-trusted-signers` list and the
//! decision over a signature git has checked.
//!
//! Without a list, a signature counts exactly when git accepts it (the
//! daemon user's keyring, `gpg.ssh.allowedSignersFile`), as in the original.
//! With a list, it counts only when git reports it good *and* the key that
//! made it is listed, is not revoked and has not expired; a listed key that
//! has expired since is accepted with `-accept-expired-before-expiry` for a
//! signature made before its expiry. The list names keys, not people: an
//! OpenPGP primary or subkey fingerprint, or an ssh public key (compared by
//! its SHA256 fingerprint, the one ssh-keygen prints).
//!
//! The file is read and checked once, while the command line is read, so a
//! bad line is a usage error before anything is touched.

use std::collections::BTreeSet;
use std::path::Path;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::signature::{is_fingerprint, SignatureFormat, SignatureReport, SignatureStatus};

/// A `-trusted-signers` file that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TrustListError {
    /// The file cannot be read.
    #[error("cannot read -trusted-signers file {path}: {reason}")]
    Read {
        /// The path as given.
        path: String,
        /// The operating system's reason.
        reason: String,
    },
    /// A line is neither a fingerprint, a public key, a comment nor blank.
    #[error("invalid -trusted-signers file {path}, line {line}: {reason}")]
    Line {
        /// The path as given.
        path: String,
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Nothing listed: every signature would be refused.
    #[error("-trusted-signers file {path} lists no keys")]
    Empty {
        /// The path as given.
        path: String,
    },
}

/// The keys of a `-trusted-signers` file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedSigners {
    /// Upper-case OpenPGP fingerprints.
    openpgp: BTreeSet<String>,
    /// ssh key fingerprints, `SHA256:<base64 without padding>`.
    ssh: BTreeSet<String>,
}

/// ssh public key types ssh-keygen can verify signatures of.
const SSH_KEY_TYPES: [&str; 7] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// The largest `-trusted-signers` file read: thousands of keys.
const MAX_LIST_SIZE: u64 = 4 << 20;

impl TrustedSigners {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self, TrustListError> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let shown = path.display().to_string();
        let read_error = |reason: String| TrustListError::Read {
            path: shown.clone(),
            reason,
        };
        // Opened without blocking and checked to be a regular file first: a
        // FIFO would hang the start, /dev/zero would fill memory.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(path)
            .map_err(|err| read_error(err.to_string()))?;
        let meta = file.metadata().map_err(|err| read_error(err.to_string()))?;
        if !meta.is_file() {
            return Err(read_error("not a regular file".to_owned()));
        }
        let mut text = Vec::new();
        file.take(MAX_LIST_SIZE + 1)
            .read_to_end(&mut text)
            .map_err(|err| read_error(err.to_string()))?;
        if text.len() as u64 > MAX_LIST_SIZE {
            return Err(read_error(format!(
                "larger than {} KiB; a list of keys is far smaller",
                MAX_LIST_SIZE / 1024
            )));
        }
        let text = String::from_utf8(text).map_err(|_| TrustListError::Read {
            path: shown.clone(),
            reason: "not UTF-8 text".to_owned(),
        })?;
        let signers =
            TrustedSigners::parse(&text).map_err(|(line, reason)| TrustListError::Line {
                path: shown.clone(),
                line,
                reason,
            })?;
        if signers.is_empty() {
            return Err(TrustListError::Empty { path: shown });
        }
        Ok(signers)
    }

    /// Parses the file's text: one OpenPGP fingerprint (40 hex digits,
    /// spaces allowed, any case) or ssh public key (`ssh-ed25519 AAAA…
    /// comment`) per line, `#` comments and blank lines ignored. The error
    /// is the first bad line's number and what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut signers = TrustedSigners::default();
        for (index, line) in text.lines().enumerate() {
            match parse_line(line).map_err(|reason| (index + 1, reason))? {
                None => {}
                Some(Entry::OpenPgp(fpr)) => {
                    signers.openpgp.insert(fpr);
                }
                Some(Entry::Ssh(fingerprint)) => {
                    signers.ssh.insert(fingerprint);
                }
            }
        }
        Ok(signers)
    }

    /// True when the list holds no key.
    pub fn is_empty(&self) -> bool {
        self.openpgp.is_empty() && self.ssh.is_empty()
    }

    /// Whether the key that made the signature of `report` is listed: for
    /// OpenPGP its own fingerprint or its primary key's.
    pub fn lists(&self, report: &SignatureReport) -> bool {
        match report.format {
            SignatureFormat::OpenPgp => [&report.key, &report.primary_key]
                .into_iter()
                .flatten()
                .any(|fpr| self.openpgp.contains(&fpr.to_ascii_uppercase())),
            SignatureFormat::Ssh => report.key.as_ref().is_some_and(|fp| self.ssh.contains(fp)),
        }
    }
}

enum Entry {
    OpenPgp(String),
    Ssh(String),
}

fn parse_line(line: &str) -> Result<Option<Entry>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let mut words = line.split_whitespace();
    let first = words.next().unwrap_or_default();
    if SSH_KEY_TYPES.contains(&first) {
        let blob = words
            .next()
            .ok_or_else(|| format!("{first} key without its base64 key data"))?;
        return ssh_fingerprint(first, blob).map(|fp| Some(Entry::Ssh(fp)));
    }
    if words
        .clone()
        .next()
        .is_some_and(|w| SSH_KEY_TYPES.contains(&w))
    {
        return Err(format!(
            "{first:?} before the key looks like an allowed_signers principal; \
             list the public key alone ({} AAAA… comment)",
            words.next().unwrap_or_default()
        ));
    }
    // A fingerprint, as gpg prints it (grouped by spaces) or in one piece,
    // optionally followed by a comment.
    let compact: String = line
        .split('#')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    if compact.bytes().all(|b| b.is_ascii_hexdigit()) {
        if is_fingerprint(&compact) {
            return Ok(Some(Entry::OpenPgp(compact.to_ascii_uppercase())));
        }
        if matches!(compact.len(), 8 | 16) {
            return Err(format!(
                "{compact} is a key id, not a fingerprint; give the full 40 hex digits"
            ));
        }
        return Err(format!(
            "an OpenPGP fingerprint has 40 hex digits, this one {}",
            compact.len()
        ));
    }
    Err(
        "expected an OpenPGP fingerprint (40 hex digits) or an ssh public key \
         (ssh-ed25519 AAAA… comment)"
            .to_owned(),
    )
}

/// `SHA256:<base64 of the SHA-256 of the key blob, unpadded>`, as
/// `ssh-keygen -l` prints it, after checking that the blob is a key of
/// `key_type`.
pub fn ssh_fingerprint(key_type: &str, blob_base64: &str) -> Result<String, String> {
    let blob = STANDARD
        .decode(blob_base64)
        .map_err(|err| format!("{key_type} key data is not valid base64: {err}"))?;
    // The blob starts with the key type as an ssh string: a big-endian
    // u32 length, then the name.
    let named = blob
        .get(..4)
        .map(|len| u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize)
        .and_then(|len| blob.get(4..4 + len));
    if named != Some(key_type.as_bytes()) {
        return Err(format!("the key data is not a {key_type} key"));
    }
    Ok(format!(
        "SHA256:{}",
        STANDARD_NO_PAD.encode(Sha256::digest(&blob))
    ))
}

/// How signatures are judged: `-trusted-signers` and
/// `-accept-expired-before-expiry`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignaturePolicy {
    /// The listed keys; `None`: whatever git accepts.
    pub trusted: Option<TrustedSigners>,
    /// Accept a listed key that has expired for signatures made before its
    /// expiry.
    pub accept_expired_before_expiry: bool,
}

/// The decision over one signed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// The signature counts.
    Accepted {
        /// When the key had expired (accepted with
        /// `-accept-expired-before-expiry`), its expiry in seconds since the
        /// epoch.
        key_expired: Option<i64>,
    },
    /// No good signature (unsigned, bad, or by an unknown key); why.
    Unverified(String),
    /// A signature the policy refuses, by `key`.
    Refused {
        /// The key's fingerprint.
        key: String,
        /// Why it does not count.
        reason: String,
    },
    /// A good signature by a listed key that has expired since: it counts
    /// if made before the key's expiry, which is looked up next
    /// ([`SignaturePolicy::judge_expired`]).
    ExpiredKey,
}

impl SignaturePolicy {
    /// The policy in a few words, for the log line of a starting job.
    pub fn describe(&self) -> String {
        match &self.trusted {
            None => "git (keyring and allowed signers)".to_owned(),
            Some(list) => format!(
                "trusted signers: {} OpenPGP and {} ssh keys{}",
                list.openpgp.len(),
                list.ssh.len(),
                if self.accept_expired_before_expiry {
                    ", expired keys accepted for signatures made before their expiry"
                } else {
                    ""
                }
            ),
        }
    }

    /// Judges one object from what git's `--raw` verification said:
    /// `report` parsed from its output, `git_accepted` its exit status and
    /// `git_message` its last line of explanation.
    pub fn judge(
        &self,
        report: Option<&SignatureReport>,
        git_accepted: bool,
        git_message: &str,
    ) -> Judgement {
        let unverified = || {
            Judgement::Unverified(
                report
                    .and_then(SignatureReport::problem)
                    .unwrap_or_else(|| git_message.to_owned()),
            )
        };
        let Some(trusted) = &self.trusted else {
            return if git_accepted {
                Judgement::Accepted { key_expired: None }
            } else {
                unverified()
            };
        };
        let Some((report, key)) = report.and_then(|r| Some((r, r.key.clone()?))) else {
            if git_accepted {
                return Judgement::Unverified(
                    "git accepted a signature whose key icyci cannot name (only openpgp and ssh \
                     signatures can be checked against -trusted-signers)"
                        .to_owned(),
                );
            }
            return unverified();
        };
        let refused = |reason: &str| Judgement::Refused {
            key: key.clone(),
            reason: reason.to_owned(),
        };
        match report.status {
            // Not good for git either: say what is wrong with the signature.
            SignatureStatus::Bad | SignatureStatus::Unchecked | SignatureStatus::Several => {
                unverified()
            }
            _ if !trusted.lists(report) => refused("key not in the trusted signers list"),
            SignatureStatus::KeyRevoked => refused("key revoked"),
            SignatureStatus::SignatureExpired => refused("signature expired"),
            SignatureStatus::KeyExpired if self.accept_expired_before_expiry => {
                Judgement::ExpiredKey
            }
            SignatureStatus::KeyExpired => {
                refused("key expired (see -accept-expired-before-expiry)")
            }
            SignatureStatus::Good if git_accepted => Judgement::Accepted { key_expired: None },
            SignatureStatus::Good => refused(&format!("git did not accept it: {git_message}")),
        }
    }

    /// Judges a good signature by a listed key that has expired since,
    /// given the key's expiry (`None`: unknown).
    pub fn judge_expired(report: &SignatureReport, key_expiry: Option<i64>) -> Judgement {
        let key = report.key_name().unwrap_or("an unknown key").to_owned();
        match (report.created, key_expiry) {
            (Some(created), Some(expiry)) if created < expiry => Judgement::Accepted {
                key_expired: Some(expiry),
            },
            (Some(_), Some(expiry)) => Judgement::Refused {
                key,
                reason: format!(
                    "key expired at {}, before the signature was made",
                    format_time(expiry)
                ),
            },
            _ => Judgement::Refused {
                key,
                reason: "key expired, and its expiry date is unknown".to_owned(),
            },
        }
    }
}

/// Seconds since the epoch as RFC 3339 in UTC, as the notes record times.
pub fn format_time(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0).map_or_else(
        || seconds.to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::{parse_gpg_status, parse_ssh_output};

    const FPR: &str = "4D5F3B10E353096180C38B985660BC37695CBC29";
    /// `ssh-keygen -t ed25519` public key, and what `ssh-keygen -lf` says of it.
    const ED25519: &str = "ssh-ed25519 \
        AAAAC3NzaC1lZDI1NTE5AAAAIKz0PCBIvo0gHruugtAXfOCsO4AWhqoOJGpoedKNxmL6 k1";
    const ED25519_FP: &str = "SHA256:wiSB6H/9QOTJ0+wMhIHkeV3LXTs35B5yGAiRwz3ycjY";

    fn report(text: &str) -> SignatureReport {
        parse_gpg_status(text)
            .or_else(|| parse_ssh_output(text))
            .expect("a report")
    }

    fn good_gpg(status: &str) -> String {
        format!(
            "[GNUPG:] NEWSIG\n[GNUPG:] {status} 5660BC37695CBC29 A <a@x>\n[GNUPG:] VALIDSIG {FPR} \
             2026-12-03 1796321372 0 4 0 22 8 00 {FPR}\n"
        )
    }

    #[test]
    fn file_lines() {
        let text = format!(
            "# release managers\n\n4D5F 3B10 E353 0961 80C3  8B98 5660 BC37 695C BC29\n\
             0123456789abcdef0123456789abcdef01234567 # alice, lower case\n\
             \t{ED25519}\n"
        );
        let signers = TrustedSigners::parse(&text).expect("valid");
        assert_eq!(signers.openpgp.len(), 2);
        assert!(signers.openpgp.contains(FPR));
        assert!(signers
            .openpgp
            .contains("0123456789ABCDEF0123456789ABCDEF01234567"));
        assert_eq!(
            signers.ssh.iter().collect::<Vec<_>>(),
            [ED25519_FP],
            "the fingerprint ssh-keygen -lf prints"
        );
    }

    #[test]
    fn bad_lines_name_their_number() {
        for (text, line, needle) in [
            ("# ok\n5660BC37695CBC29\n", 2, "key id"),
            ("4D5F3B10E3530961\n", 1, "key id"),
            (&format!("{FPR}\n{FPR}00\n"), 2, "40 hex digits"),
            ("\n\nalice@x ssh-ed25519 AAAA\n", 3, "allowed_signers"),
            ("ssh-ed25519\n", 1, "without its base64"),
            ("ssh-ed25519 not*base64\n", 1, "not valid base64"),
            (
                "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIKz0PCBIvo0gHruugtAXfOCsO4AWhqoOJGpoedKNxmL6\n",
                1,
                "not a ssh-rsa key",
            ),
            ("hello world\n", 1, "expected an OpenPGP fingerprint"),
        ] {
            let (number, reason) = TrustedSigners::parse(text).expect_err(text);
            assert_eq!(number, line, "{text:?}: {reason}");
            assert!(reason.contains(needle), "{text:?}: {reason}");
        }
    }

    #[test]
    fn load_reports_path_line_and_emptiness() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("signers");
        std::fs::write(&path, "# only a comment\n").expect("write");
        assert!(matches!(
            TrustedSigners::load(&path),
            Err(TrustListError::Empty { .. })
        ));
        std::fs::write(&path, format!("{FPR}\nnonsense\n")).expect("write");
        let err = TrustedSigners::load(&path).expect_err("bad line");
        assert_eq!(
            err.to_string(),
            format!(
                "invalid -trusted-signers file {}, line 2: expected an OpenPGP fingerprint (40 \
                 hex digits) or an ssh public key (ssh-ed25519 AAAA… comment)",
                path.display()
            )
        );
        assert!(matches!(
            TrustedSigners::load(&dir.path().join("missing")),
            Err(TrustListError::Read { .. })
        ));
    }

    fn listed() -> SignaturePolicy {
        SignaturePolicy {
            trusted: Some(TrustedSigners::parse(&format!("{FPR}\n{ED25519}\n")).expect("valid")),
            accept_expired_before_expiry: false,
        }
    }

    #[test]
    fn without_a_list_git_decides() {
        let policy = SignaturePolicy::default();
        let good = report(&good_gpg("GOODSIG"));
        assert_eq!(
            policy.judge(Some(&good), true, ""),
            Judgement::Accepted { key_expired: None }
        );
        let revoked = report(&good_gpg("REVKEYSIG"));
        assert_eq!(
            policy.judge(Some(&revoked), false, "[GNUPG:] TRUST_ULTIMATE 0 pgp"),
            Judgement::Unverified(format!("signature by {FPR}: key revoked"))
        );
        assert_eq!(
            policy.judge(None, false, "no signature"),
            Judgement::Unverified("no signature".into())
        );
    }

    #[test]
    fn with_a_list_only_listed_valid_keys_count() {
        let policy = listed();
        let good = report(&good_gpg("GOODSIG"));
        assert_eq!(
            policy.judge(Some(&good), true, ""),
            Judgement::Accepted { key_expired: None }
        );
        // Good for git, but git refused it (gpg.minTrustLevel, say).
        assert!(matches!(
            policy.judge(Some(&good), false, "too low"),
            Judgement::Refused { reason, .. } if reason == "git did not accept it: too low"
        ));
        let other = report(&good_gpg("GOODSIG").replace(FPR, &"A".repeat(40)));
        assert_eq!(
            policy.judge(Some(&other), true, ""),
            Judgement::Refused {
                key: "A".repeat(40),
                reason: "key not in the trusted signers list".into()
            }
        );
        for (status, reason) in [
            ("REVKEYSIG", "key revoked"),
            ("EXPSIG", "signature expired"),
            (
                "EXPKEYSIG",
                "key expired (see -accept-expired-before-expiry)",
            ),
        ] {
            assert_eq!(
                policy.judge(Some(&report(&good_gpg(status))), false, ""),
                Judgement::Refused {
                    key: FPR.into(),
                    reason: reason.into()
                },
                "{status}"
            );
        }
        let bad = report(&good_gpg("BADSIG"));
        assert!(matches!(
            policy.judge(Some(&bad), false, ""),
            Judgement::Unverified(_)
        ));
        assert!(matches!(
            policy.judge(None, true, ""),
            Judgement::Unverified(_)
        ));

        let ssh = report(&format!(
            "Good \"git\" signature for k1@x with ED25519 key {ED25519_FP}"
        ));
        assert_eq!(
            policy.judge(Some(&ssh), true, ""),
            Judgement::Accepted { key_expired: None }
        );
        let unlisted = report("Good \"git\" signature for k1@x with ED25519 key SHA256:other");
        assert!(matches!(
            policy.judge(Some(&unlisted), true, ""),
            Judgement::Refused { key, .. } if key == "SHA256:other"
        ));
    }

    #[test]
    fn expired_keys_before_and_after_expiry() {
        let mut policy = listed();
        policy.accept_expired_before_expiry = true;
        let expired = report(&good_gpg("EXPKEYSIG"));
        assert_eq!(
            policy.judge(Some(&expired), false, ""),
            Judgement::ExpiredKey
        );
        assert_eq!(
            SignaturePolicy::judge_expired(&expired, Some(1_796_321_381)),
            Judgement::Accepted {
                key_expired: Some(1_796_321_381)
            }
        );
        assert_eq!(
            SignaturePolicy::judge_expired(&expired, Some(1_796_321_372)),
            Judgement::Refused {
                key: FPR.into(),
                reason: "key expired at 2026-12-03T18:09:32Z, before the signature was made".into()
            }
        );
        assert!(matches!(
            SignaturePolicy::judge_expired(&expired, None),
            Judgement::Refused { .. }
        ));
        // Revocation wins over the expiry exception.
        assert!(matches!(
            policy.judge(Some(&report(&good_gpg("REVKEYSIG"))), false, ""),
            Judgement::Refused { reason, .. } if reason == "key revoked"
        ));
    }
}
