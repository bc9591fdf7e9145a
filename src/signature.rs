//! What git says about one signature when it verifies an object with
//! `--raw`: the signature's format, the key that made it, whom that key
//! names, and the verifier's verdict on the signature itself.
//!
//! For OpenPGP, `--raw` passes gpg's machine-readable status lines through
//! (`[GNUPG:] VALIDSIG …`, described in gpg's `doc/DETAILS`); for ssh it
//! passes `ssh-keygen -Y verify`'s one line (`Good "git" signature for
//! <principal> with <ALG> key SHA256:<fingerprint>`). These are pure parsers
//! over that captured text: [`crate::verify`] runs git, [`crate::trust`]
//! decides whether the signer counts.

use std::fmt;

/// The kind of a signature, as the verification note records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureFormat {
    /// Checked by gpg.
    OpenPgp,
    /// Checked by `ssh-keygen -Y verify`.
    Ssh,
}

impl SignatureFormat {
    /// `openpgp` or `ssh`, git's names (`gpg.format`).
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureFormat::OpenPgp => "openpgp",
            SignatureFormat::Ssh => "ssh",
        }
    }
}

impl fmt::Display for SignatureFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verifier's verdict on the signature itself, before any trust list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureStatus {
    /// A good signature by a key that is valid now (gpg `GOODSIG`, ssh
    /// `Good "git" signature`).
    Good,
    /// A good signature by a key that has expired since (`EXPKEYSIG`).
    KeyExpired,
    /// A good signature by a revoked key (`REVKEYSIG`, or `KEYREVOKED`).
    KeyRevoked,
    /// The signature itself has expired (`EXPSIG`).
    SignatureExpired,
    /// The signature does not match the object (`BADSIG`).
    Bad,
    /// The signature could not be checked (`ERRSIG`), typically because the
    /// public key is missing.
    Unchecked,
    /// More than one signature on the object; git refuses those.
    Several,
}

/// Everything the verifier said about the signature of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureReport {
    /// OpenPGP or ssh.
    pub format: SignatureFormat,
    /// The verdict on the signature itself.
    pub status: SignatureStatus,
    /// OpenPGP: the upper-case fingerprint of the key that made the
    /// signature (a subkey or the primary key); ssh: `SHA256:<base64>`.
    /// `None` when the verifier could not name the key.
    pub key: Option<String>,
    /// OpenPGP: the fingerprint of the primary key of [`Self::key`].
    pub primary_key: Option<String>,
    /// OpenPGP: the key id or fingerprint gpg named when it could not check
    /// the signature (a missing public key).
    pub key_id: Option<String>,
    /// OpenPGP: the primary user id of the key; ssh: the principal matched
    /// in the allowed signers file.
    pub signer: Option<String>,
    /// OpenPGP: when the signature was made, in seconds since the epoch.
    pub created: Option<i64>,
    /// ssh: the key algorithm as ssh-keygen names it (`ED25519`, `ECDSA`).
    pub algorithm: Option<String>,
}

impl SignatureReport {
    fn new(format: SignatureFormat, status: SignatureStatus) -> Self {
        SignatureReport {
            format,
            status,
            key: None,
            primary_key: None,
            key_id: None,
            signer: None,
            created: None,
            algorithm: None,
        }
    }

    /// The best name of the signing key for a log line: its fingerprint,
    /// else the key id gpg gave.
    pub fn key_name(&self) -> Option<&str> {
        self.key.as_deref().or(self.key_id.as_deref())
    }

    /// Why the signature is not good, in words; `None` when it is good.
    pub fn problem(&self) -> Option<String> {
        let key = self.key_name().unwrap_or("an unknown key");
        let text = match self.status {
            SignatureStatus::Good => return None,
            SignatureStatus::KeyExpired => format!("signature by {key}: key expired"),
            SignatureStatus::KeyRevoked => format!("signature by {key}: key revoked"),
            SignatureStatus::SignatureExpired => format!("signature by {key}: signature expired"),
            SignatureStatus::Bad => format!("bad signature by {key}"),
            SignatureStatus::Unchecked => {
                format!("cannot check the signature: no public key {key}")
            }
            SignatureStatus::Several => "more than one signature".to_owned(),
        };
        Some(text)
    }
}

/// Parses the standard error of `git verify-commit --raw` or
/// `git verify-tag --raw`; `None` when it holds no signature report (an
/// unsigned object, or a format this parser does not know).
pub fn parse_verification(stderr: &str) -> Option<SignatureReport> {
    if stderr
        .lines()
        .any(|line| line.starts_with(GPG_STATUS_PREFIX))
    {
        parse_gpg_status(stderr)
    } else {
        parse_ssh_output(stderr)
    }
}

const GPG_STATUS_PREFIX: &str = "[GNUPG:] ";

/// Parses gpg's status lines (`--status-fd` output).
pub fn parse_gpg_status(text: &str) -> Option<SignatureReport> {
    let mut report: Option<SignatureReport> = None;
    let mut verdicts = 0;
    let mut revoked = false;
    for line in text.lines() {
        let Some(status) = line.strip_prefix(GPG_STATUS_PREFIX) else {
            continue;
        };
        let (keyword, args) = status.split_once(' ').unwrap_or((status, ""));
        let verdict = match keyword {
            "GOODSIG" => Some(SignatureStatus::Good),
            "EXPKEYSIG" => Some(SignatureStatus::KeyExpired),
            "REVKEYSIG" => Some(SignatureStatus::KeyRevoked),
            "EXPSIG" => Some(SignatureStatus::SignatureExpired),
            "BADSIG" => Some(SignatureStatus::Bad),
            "ERRSIG" => Some(SignatureStatus::Unchecked),
            _ => None,
        };
        if let Some(verdict) = verdict {
            verdicts += 1;
            let entry = report
                .get_or_insert_with(|| SignatureReport::new(SignatureFormat::OpenPgp, verdict));
            entry.status = verdict;
            let (key_id, rest) = args.split_once(' ').unwrap_or((args, ""));
            entry.key_id = Some(key_id.to_ascii_uppercase());
            if verdict == SignatureStatus::Unchecked {
                // ERRSIG <keyid> <pkalgo> <hashalgo> <class> <time> <rc> <fpr>
                let fields: Vec<&str> = args.split(' ').collect();
                if let Some(fpr) = fields.get(6).filter(|f| is_fingerprint(f)) {
                    entry.key_id = Some(fpr.to_ascii_uppercase());
                }
                entry.created = fields.get(4).and_then(|t| parse_gpg_time(t));
            } else if !rest.is_empty() {
                entry.signer = Some(percent_decode(rest));
            }
            continue;
        }
        match keyword {
            "VALIDSIG" => {
                let entry = report.get_or_insert_with(|| {
                    SignatureReport::new(SignatureFormat::OpenPgp, SignatureStatus::Unchecked)
                });
                apply_validsig(entry, args);
            }
            "KEYREVOKED" => revoked = true,
            "NEWSIG" => {}
            _ => {}
        }
    }
    let mut report = report?;
    if verdicts > 1 {
        report.status = SignatureStatus::Several;
    } else if revoked && report.status != SignatureStatus::Bad {
        // gpg reports a good signature by a revoked key as REVKEYSIG, but
        // KEYREVOKED alone is as much a reason to refuse it.
        report.status = SignatureStatus::KeyRevoked;
    }
    Some(report)
}

/// `VALIDSIG <fpr> <date> <sig-timestamp> <expire-timestamp> <version>
/// <reserved> <pubkey-algo> <hash-algo> <class> [<primary-fpr>]`.
fn apply_validsig(report: &mut SignatureReport, args: &str) {
    let fields: Vec<&str> = args.split(' ').collect();
    if let Some(fpr) = fields.first().filter(|f| is_fingerprint(f)) {
        report.key = Some(fpr.to_ascii_uppercase());
    }
    report.created = fields.get(2).and_then(|t| parse_gpg_time(t));
    report.primary_key = fields
        .get(9)
        .filter(|f| is_fingerprint(f))
        .map(|f| f.to_ascii_uppercase())
        .or_else(|| report.key.clone());
}

/// gpg's time fields: seconds since the epoch, or ISO 8601 as
/// `YYYYMMDDTHHMMSS` (with `--fixed-list-mode` off in some versions).
pub fn parse_gpg_time(text: &str) -> Option<i64> {
    if text.contains('T') {
        chrono::NaiveDateTime::parse_from_str(text, "%Y%m%dT%H%M%S")
            .ok()
            .map(|time| time.and_utc().timestamp())
    } else {
        text.parse().ok().filter(|&seconds: &i64| seconds > 0)
    }
}

/// A v4 (40 hex digits) or v5/v6 (64) OpenPGP fingerprint.
pub fn is_fingerprint(text: &str) -> bool {
    matches!(text.len(), 40 | 64) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// gpg escapes bytes in user ids as `%XX`.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        });
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

const SSH_GOOD: &str = "Good \"git\" signature";

/// Parses `ssh-keygen -Y verify` (or `check-novalidate`) output as git
/// passes it on: `Good "git" signature for <principal> with <ALG> key
/// SHA256:<fp>`, without `for <principal>` when no principal matched.
pub fn parse_ssh_output(text: &str) -> Option<SignatureReport> {
    let rest = text.lines().find_map(|line| line.strip_prefix(SSH_GOOD))?;
    let mut words = rest.trim().rsplitn(4, ' ');
    let key = words.next()?;
    if words.next()? != "key" || !key.starts_with("SHA256:") {
        return None;
    }
    let algorithm = words.next()?;
    let head = words.next()?.strip_suffix("with")?.trim_end();
    let signer = match head.strip_prefix("for ") {
        Some(principal) => Some(principal.to_owned()),
        None if head.is_empty() => None,
        None => return None,
    };
    let mut report = SignatureReport::new(SignatureFormat::Ssh, SignatureStatus::Good);
    report.key = Some(key.to_owned());
    report.signer = signer;
    report.algorithm = Some(algorithm.to_owned());
    Some(report)
}

/// The expiry of the key `signing_key` as it matters for a signature: the
/// earlier of its own expiry and its primary key's, from
/// `gpg --with-colons --fixed-list-mode --list-keys <primary>`; `None` when
/// the listing names no expiry for either.
pub fn parse_key_expiry(colons: &str, signing_key: &str) -> Option<i64> {
    let mut primary_expiry = None;
    let mut current_expiry = None;
    let mut signing_expiry = None;
    let mut in_first_key = false;
    for line in colons.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.first().copied() {
            Some("pub") => {
                // Only the first key block: the primary asked for.
                if in_first_key {
                    break;
                }
                in_first_key = true;
                current_expiry = fields.get(6).and_then(|t| parse_gpg_time(t));
                primary_expiry = current_expiry;
            }
            Some("sub") => {
                current_expiry = fields.get(6).and_then(|t| parse_gpg_time(t));
            }
            Some("fpr") => {
                let fpr = fields.get(9).copied().unwrap_or_default();
                if fpr.eq_ignore_ascii_case(signing_key) {
                    signing_expiry = current_expiry;
                }
            }
            _ => {}
        }
    }
    match (primary_expiry, signing_expiry) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FPR: &str = "4D5F3B10E353096180C38B985660BC37695CBC29";

    /// `git verify-commit --raw` of a good signature (gpg 2.2.40).
    const GOOD: &str = "\
[GNUPG:] NEWSIG
[GNUPG:] KEY_CONSIDERED 4D5F3B10E353096180C38B985660BC37695CBC29 0
[GNUPG:] SIG_ID laRVOQbjAHw7TQp2gVmmdW8hAaw 2026-12-03 1796321372
[GNUPG:] KEY_CONSIDERED 4D5F3B10E353096180C38B985660BC37695CBC29 0
[GNUPG:] GOODSIG 5660BC37695CBC29 A %C3%A9 <a@x>
[GNUPG:] VALIDSIG 4D5F3B10E353096180C38B985660BC37695CBC29 2026-12-03 1796321372 0 4 0 22 8 00 4D5F3B10E353096180C38B985660BC37695CBC29
[GNUPG:] KEY_CONSIDERED 4D5F3B10E353096180C38B985660BC37695CBC29 0
[GNUPG:] TRUST_UNDEFINED 0 pgp";

    /// A signature by a key revoked since.
    const REVOKED: &str = "\
[GNUPG:] NEWSIG
[GNUPG:] KEY_CONSIDERED 4D5F3B10E353096180C38B985660BC37695CBC29 0
[GNUPG:] REVKEYSIG 5660BC37695CBC29 A <a@x>
[GNUPG:] VALIDSIG 4D5F3B10E353096180C38B985660BC37695CBC29 2026-12-03 1796321372 0 4 0 22 8 00 4D5F3B10E353096180C38B985660BC37695CBC29
[GNUPG:] KEY_CONSIDERED 4D5F3B10E353096180C38B985660BC37695CBC29 0
[GNUPG:] KEYREVOKED
[GNUPG:] TRUST_ULTIMATE 0 pgp";

    /// A signature made while the key was valid, checked after it expired.
    const EXPIRED_KEY: &str = "\
[GNUPG:] NEWSIG
[GNUPG:] KEY_CONSIDERED D4A000C79D2FA96CDDD99B486E7236FCC187DB19 0
[GNUPG:] KEYEXPIRED 1796321381
[GNUPG:] SIG_ID x2caAqA9SzCCZ0OB31r8CNrzJC0 2026-12-03 1796321378
[GNUPG:] EXPKEYSIG 6E7236FCC187DB19 E <e@x>
[GNUPG:] VALIDSIG D4A000C79D2FA96CDDD99B486E7236FCC187DB19 2026-12-03 1796321378 0 4 0 22 8 00 D4A000C79D2FA96CDDD99B486E7236FCC187DB19";

    /// A signature by a key that is not in the keyring.
    const NO_PUBKEY: &str = "\
[GNUPG:] NEWSIG
[GNUPG:] ERRSIG 6E7236FCC187DB19 22 8 00 1796321378 9 D4A000C79D2FA96CDDD99B486E7236FCC187DB19
[GNUPG:] NO_PUBKEY 6E7236FCC187DB19";

    /// A signing subkey under a primary key.
    const SUBKEY: &str = "\
[GNUPG:] NEWSIG
[GNUPG:] GOODSIG 1111222233334444 Sub Key <s@x>
[GNUPG:] VALIDSIG 0123456789ABCDEF0123456789ABCDEF11112222 20261203T180932 20261203T180932 0 4 0 22 8 00 4D5F3B10E353096180C38B985660BC37695CBC29";

    #[test]
    fn good_gpg_signature() {
        let report = parse_verification(GOOD).expect("a report");
        assert_eq!(report.format, SignatureFormat::OpenPgp);
        assert_eq!(report.status, SignatureStatus::Good);
        assert_eq!(report.key.as_deref(), Some(FPR));
        assert_eq!(report.primary_key.as_deref(), Some(FPR));
        assert_eq!(report.signer.as_deref(), Some("A é <a@x>"));
        assert_eq!(report.created, Some(1_796_321_372));
        assert_eq!(report.problem(), None);
    }

    #[test]
    fn subkey_and_iso_times() {
        let report = parse_gpg_status(SUBKEY).expect("a report");
        assert_eq!(
            report.key.as_deref(),
            Some("0123456789ABCDEF0123456789ABCDEF11112222")
        );
        assert_eq!(report.primary_key.as_deref(), Some(FPR));
        assert_eq!(report.created, Some(1_796_321_372));
    }

    #[test]
    fn revoked_expired_and_missing_keys() {
        let revoked = parse_gpg_status(REVOKED).expect("a report");
        assert_eq!(revoked.status, SignatureStatus::KeyRevoked);
        assert_eq!(revoked.key.as_deref(), Some(FPR));
        assert_eq!(
            revoked.problem().as_deref(),
            Some(format!("signature by {FPR}: key revoked").as_str())
        );
        // KEYREVOKED alone is enough.
        let text = GOOD.replace("TRUST_UNDEFINED 0 pgp", "KEYREVOKED");
        assert_eq!(
            parse_gpg_status(&text).expect("a report").status,
            SignatureStatus::KeyRevoked
        );

        let expired = parse_gpg_status(EXPIRED_KEY).expect("a report");
        assert_eq!(expired.status, SignatureStatus::KeyExpired);
        assert_eq!(expired.created, Some(1_796_321_378));

        let missing = parse_gpg_status(NO_PUBKEY).expect("a report");
        assert_eq!(missing.status, SignatureStatus::Unchecked);
        assert_eq!(missing.key, None);
        assert_eq!(
            missing.key_name(),
            Some("D4A000C79D2FA96CDDD99B486E7236FCC187DB19")
        );
    }

    #[test]
    fn several_signatures_and_none() {
        let twice = format!("{GOOD}\n{GOOD}");
        assert_eq!(
            parse_gpg_status(&twice).expect("a report").status,
            SignatureStatus::Several
        );
        assert_eq!(parse_verification(""), None);
        assert_eq!(parse_verification("error: no signature found"), None);
    }

    #[test]
    fn ssh_output() {
        let good = "Good \"git\" signature for k1@x with ED25519 key \
                    SHA256:wiSB6H/9QOTJ0+wMhIHkeV3LXTs35B5yGAiRwz3ycjY";
        let report = parse_verification(good).expect("a report");
        assert_eq!(report.format, SignatureFormat::Ssh);
        assert_eq!(report.status, SignatureStatus::Good);
        assert_eq!(
            report.key.as_deref(),
            Some("SHA256:wiSB6H/9QOTJ0+wMhIHkeV3LXTs35B5yGAiRwz3ycjY")
        );
        assert_eq!(report.signer.as_deref(), Some("k1@x"));
        assert_eq!(report.algorithm.as_deref(), Some("ED25519"));

        // A principal may hold spaces; the key words are taken from the end.
        let spaced = "Good \"git\" signature for a b with c with ECDSA key SHA256:abc";
        let report = parse_ssh_output(spaced).expect("a report");
        assert_eq!(report.signer.as_deref(), Some("a b with c"));

        // No principal matched: git fails, but the key is still named.
        let unmatched = "Good \"git\" signature with ED25519 key \
                         SHA256:OuNdATKzdaCJxUwF7toBAPt9vHzsW6kJPCy2sz//v7U\n\
                         No principal matched.";
        let report = parse_verification(unmatched).expect("a report");
        assert_eq!(report.signer, None);
        assert_eq!(
            report.key.as_deref(),
            Some("SHA256:OuNdATKzdaCJxUwF7toBAPt9vHzsW6kJPCy2sz//v7U")
        );

        assert_eq!(parse_ssh_output("Could not verify signature."), None);
        assert_eq!(parse_ssh_output("Good \"git\" signature for x"), None);
    }

    #[test]
    fn key_expiry_from_colons() {
        let colons = "\
tru::1:1796321382:0:3:1:5
pub:e:255:22:6E7236FCC187DB19:1796321378:1796321381::u:::sc:::::ed25519:::0:
fpr:::::::::D4A000C79D2FA96CDDD99B486E7236FCC187DB19:
uid:e::::1796321378::4A5C3F5627163E5C2AC3DB9A86A3E62E2F233B77::E <e@x>::::::::::0:
sub:e:255:22:1111222233334444:1796321378:1796321379:::::s:::::ed25519::
fpr:::::::::0123456789ABCDEF0123456789ABCDEF11112222:
pub:u:255:22:5660BC37695CBC29:1796321370:1:::u:::scSC:::::ed25519:::0:
fpr:::::::::4D5F3B10E353096180C38B985660BC37695CBC29:";
        assert_eq!(
            parse_key_expiry(colons, "D4A000C79D2FA96CDDD99B486E7236FCC187DB19"),
            Some(1_796_321_381)
        );
        // A subkey that expired before its primary.
        assert_eq!(
            parse_key_expiry(colons, "0123456789abcdef0123456789abcdef11112222"),
            Some(1_796_321_379)
        );
        let no_expiry = "pub:u:255:22:5660BC37695CBC29:1796321370:::u:::scSC::::\n\
                         fpr:::::::::4D5F3B10E353096180C38B985660BC37695CBC29:";
        assert_eq!(parse_key_expiry(no_expiry, FPR), None);
    }
}
