//! Lock leases: who holds a lock note and until when, and whether another
//! instance may take a lock over.
//!
//! The lock note keeps the original's first line, so that old instances and
//! readers see what they expect, and adds two lines:
//!
//! ```text
//! 2026-01-02 03:04:05.123456789 +0100: this commit is being tested by icyCI
//! holder: build1 pid 4242 id 0123456789abcdef
//! lease-until: 1767322745 (2026-01-02T02:59:05Z)
//! ```
//!
//! A holder renews its lease while its script runs. A lock whose lease has
//! expired and that has no result belonged to an instance that died: another
//! instance may take it over. A lock in the original's format has no lease
//! and is only taken over when the operator asks for it
//! (`-stale-lock-after`), counted from the time on its first line.

use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, Local, TimeZone, Utc};

/// The first line's suffix, as the original writes it.
const FIRST_LINE_SUFFIX: &str = ": this commit is being tested by icyCI";

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Random per process, so that a restarted daemon with a recycled pid
    /// is not mistaken for the one that took the lock.
    pub id: String,
}

impl Holder {
    /// This process.
    pub fn current() -> &'static Holder {
        static CURRENT: OnceLock<Holder> = OnceLock::new();
        CURRENT.get_or_init(|| Holder {
            host: nix::unistd::gethostname()
                .ok()
                .and_then(|name| name.into_string().ok())
                .filter(|name| !name.is_empty() && !name.contains(char::is_whitespace))
                .unwrap_or_else(|| "localhost".into()),
            pid: std::process::id(),
            id: format!("{:016x}", fastrand::u64(..)),
        })
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} pid {} id {}", self.host, self.pid, self.id)
    }
}

/// A lock note, read back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LockNote {
    /// The time on the first line, when it parses.
    pub taken_at: Option<i64>,
    /// The holder, absent in the original's format.
    pub holder: Option<Holder>,
    /// Unix seconds the lease runs until, absent in the original's format.
    pub lease_until: Option<i64>,
}

/// The text of a lock note held by `holder` until `lease_until` (unix
/// seconds), with `now` on the first line.
pub fn lock_text<Tz: TimeZone>(now: &DateTime<Tz>, holder: &Holder, lease_until: i64) -> String
where
    Tz::Offset: std::fmt::Display,
{
    let first = now.format("%Y-%m-%d %H:%M:%S%.9f %z");
    let until = Utc
        .timestamp_opt(lease_until, 0)
        .single()
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    format!("{first}{FIRST_LINE_SUFFIX}\nholder: {holder}\nlease-until: {lease_until} ({until})\n")
}

/// A lock note of this process, leased for `lease` from now.
pub fn current_lock_text(lease: Duration) -> String {
    let now = Local::now();
    lock_text(&now, Holder::current(), lease_end(now.timestamp(), lease))
}

/// `now` plus `lease`, in unix seconds, rounded up.
pub fn lease_end(now: i64, lease: Duration) -> i64 {
    let secs = i64::try_from(lease.as_secs()).unwrap_or(i64::MAX / 2);
    let extra = i64::from(lease.subsec_nanos() > 0);
    now.saturating_add(secs).saturating_add(extra)
}

/// Reads a lock note; anything it does not recognise is left out.
pub fn parse_lock_note(text: &str) -> LockNote {
    let mut lines = text.lines();
    let taken_at = lines
        .next()
        .and_then(|first| first.strip_suffix(FIRST_LINE_SUFFIX))
        .and_then(|time| {
            // Date, time and offset; a zone name after them is ignored.
            let words: Vec<&str> = time.split_whitespace().take(3).collect();
            DateTime::parse_from_str(&words.join(" "), "%Y-%m-%d %H:%M:%S%.f %z").ok()
        })
        .map(|time| time.timestamp());
    let mut note = LockNote {
        taken_at,
        ..LockNote::default()
    };
    for line in lines {
        if let Some(rest) = line.strip_prefix("holder: ") {
            note.holder = parse_holder(rest);
        } else if let Some(rest) = line.strip_prefix("lease-until: ") {
            // A time no calendar date has (hand-edited) counts as no lease.
            note.lease_until = rest
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
                .filter(|secs| Utc.timestamp_opt(*secs, 0).single().is_some());
        }
    }
    note
}

fn parse_holder(text: &str) -> Option<Holder> {
    // Shown on terminals and web pages: an escape sequence is no holder.
    if text.chars().any(char::is_control) {
        return None;
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        [host, "pid", pid, "id", id] => Some(Holder {
            host: (*host).to_owned(),
            pid: pid.parse().ok()?,
            id: (*id).to_owned(),
        }),
        _ => None,
    }
}

/// What to do about a lock found on a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockVerdict {
    /// Tested, or being tested: leave it.
    Held,
    /// Nobody is testing it any more: take it over. The reason is for the log.
    Stale(String),
}

/// Decides whether a lock may be taken over at unix time `now`.
///
/// A commit with a result is never taken over. A lease is stale once its end
/// has passed; a lock without a lease only when `stale_after` is given and
/// that long has passed since its first line's time.
pub fn judge_lock(
    note: &LockNote,
    has_result: bool,
    now: i64,
    stale_after: Option<Duration>,
) -> LockVerdict {
    if has_result {
        return LockVerdict::Held;
    }
    if let Some(until) = note.lease_until {
        return if until < now {
            LockVerdict::Stale(format!("lease expired {}", format_unix(until)))
        } else {
            LockVerdict::Held
        };
    }
    match (stale_after, note.taken_at) {
        (Some(after), Some(taken)) if lease_end(taken, after) <= now => {
            LockVerdict::Stale(format!("lock without a lease taken {}", format_unix(taken)))
        }
        _ => LockVerdict::Held,
    }
}

/// A unix time as RFC 3339 UTC.
pub fn format_unix(secs: i64) -> String {
    Utc.timestamp_opt(secs, 0).single().map_or_else(
        || secs.to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

/// How often a holder renews a lease of length `lease`: a quarter of it, at
/// least every ten minutes, and not more often than every 250 ms.
pub fn renew_interval(lease: Duration) -> Duration {
    (lease / 4).clamp(Duration::from_millis(250), Duration::from_secs(600))
}

/// The default lease: the script's time limit plus ten minutes, or 2h10m
/// when timeouts are disabled.
pub fn default_lease(await_limit: Option<Duration>) -> Duration {
    await_limit.unwrap_or(Duration::from_secs(2 * 3600)) + Duration::from_secs(600)
}

#[cfg(test)]
mod tests {
    use chrono::FixedOffset;

    use super::*;

    fn holder() -> Holder {
        Holder {
            host: "build1".into(),
            pid: 42,
            id: "00112233aabbccdd".into(),
        }
    }

    #[test]
    fn lock_text_keeps_the_first_line_and_round_trips() {
        let now = FixedOffset::east_opt(3600)
            .unwrap()
            .with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
            .unwrap();
        let text = lock_text(&now, &holder(), 1_767_322_745);
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("2026-01-02 03:04:05.000000000 +0100: this commit is being tested by icyCI")
        );
        assert_eq!(
            lines.next(),
            Some("holder: build1 pid 42 id 00112233aabbccdd")
        );
        assert_eq!(
            lines.next(),
            Some("lease-until: 1767322745 (2026-01-02T02:59:05Z)")
        );
        let note = parse_lock_note(&text);
        assert_eq!(note.taken_at, Some(now.timestamp()));
        assert_eq!(note.holder, Some(holder()));
        assert_eq!(note.lease_until, Some(1_767_322_745));
        let absurd = parse_lock_note("2024-01-01\nlease-until: -9223372036854775808\n");
        assert_eq!(absurd.lease_until, None);
        let escape = parse_lock_note("2024-01-01\nholder: h\x1b[2J pid 1 id x\n");
        assert_eq!(escape.holder, None);
    }

    #[test]
    fn the_original_format_has_no_lease() {
        let note = parse_lock_note(
            "2019-05-01 10:00:00.5 +0000 UTC: this commit is being tested by icyCI\n",
        );
        assert_eq!(note.taken_at, Some(1_556_704_800));
        assert_eq!(note.holder, None);
        assert_eq!(note.lease_until, None);
        // Go's time format adds a zone name; the time still parses without it.
        let note =
            parse_lock_note("2019-05-01 10:00:00.5 +0000: this commit is being tested by icyCI");
        assert_eq!(note.taken_at, Some(1_556_704_800));
        assert_eq!(parse_lock_note("garbage"), LockNote::default());
    }

    #[test]
    fn a_bad_holder_line_is_ignored() {
        let note = parse_lock_note("x\nholder: a b\nlease-until: nope\n");
        assert_eq!(note.holder, None);
        assert_eq!(note.lease_until, None);
    }

    #[test]
    fn judging_locks() {
        let leased = LockNote {
            taken_at: Some(100),
            holder: Some(holder()),
            lease_until: Some(1000),
        };
        assert_eq!(judge_lock(&leased, false, 999, None), LockVerdict::Held);
        assert_eq!(judge_lock(&leased, false, 1000, None), LockVerdict::Held);
        assert!(matches!(
            judge_lock(&leased, false, 1001, None),
            LockVerdict::Stale(_)
        ));
        assert_eq!(judge_lock(&leased, true, 5000, None), LockVerdict::Held);

        let old = LockNote {
            taken_at: Some(100),
            ..LockNote::default()
        };
        assert_eq!(judge_lock(&old, false, 1_000_000, None), LockVerdict::Held);
        let after = Some(Duration::from_secs(60));
        assert_eq!(judge_lock(&old, false, 159, after), LockVerdict::Held);
        assert!(matches!(
            judge_lock(&old, false, 160, after),
            LockVerdict::Stale(_)
        ));
        assert_eq!(judge_lock(&old, true, 160, after), LockVerdict::Held);
        // No readable time: never stale.
        assert_eq!(
            judge_lock(&LockNote::default(), false, 1_000_000, after),
            LockVerdict::Held
        );
    }

    #[test]
    fn renewal_and_default_lease() {
        assert_eq!(
            renew_interval(Duration::from_secs(1)),
            Duration::from_millis(250)
        );
        assert_eq!(
            renew_interval(Duration::from_secs(40)),
            Duration::from_secs(10)
        );
        assert_eq!(
            renew_interval(Duration::from_secs(7800)),
            Duration::from_secs(600)
        );
        assert_eq!(
            default_lease(Some(Duration::from_secs(60))),
            Duration::from_secs(660)
        );
        assert_eq!(default_lease(None), Duration::from_secs(7800));
        assert_eq!(lease_end(10, Duration::from_millis(1500)), 12);
    }
}
