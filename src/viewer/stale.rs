//! Stale locks, as every reader shows them.
//!
//! A commit with a lock note and no result is being tested — unless the
//! lock's lease has ended: its holder died (SIGKILL, power loss) and nobody
//! is testing it. Readers call such a commit `stale` instead of `running`:
//! an instance takes it over when it next finds the commit as its branch
//! tip, and `icyci retest` removes the lock by hand. A lock in the original
//! icyCI's format has no lease and stays `running`, unless the reader knows
//! the threshold an operator set for such locks (`-stale-lock-after`, which
//! only a daemon's own `-site-dir` has).
//!
//! The decision is the daemon's own ([`judge_lock`] over
//! [`parse_lock_note`]), made once per command at one instant, so that the
//! readers and the daemon never disagree on what is stale.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::git::GitError;
use crate::lease::{judge_lock, parse_lock_note, Holder, LockVerdict};
use crate::reader::{CommitState, NoteIndex, ResultsReader};

/// The name of a stale lock's state in tables, pages and badges.
pub const STALE: &str = "stale";

/// What a reader tells about a commit in one namespace: its state, and for
/// a lock without result whose holder is gone, why the lock is stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownState {
    /// The state read from the notes; `Running` when the lock is stale.
    pub state: CommitState,
    /// Set when the lock is stale (only with `state` `Running`).
    pub stale: Option<StaleLock>,
}

impl From<CommitState> for ShownState {
    fn from(state: CommitState) -> Self {
        ShownState { state, stale: None }
    }
}

impl ShownState {
    /// `stale` for a stale lock, else the state's own name.
    pub fn name(&self) -> &'static str {
        if self.stale.is_some() {
            STALE
        } else {
            self.state.name()
        }
    }
}

/// A lock whose holder is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleLock {
    /// Why it is stale, in [`judge_lock`]'s words: `lease expired <time>`,
    /// or `lock without a lease taken <time>`.
    pub reason: String,
    /// Who held it, when the note says.
    pub holder: Option<Holder>,
    /// When its lease ended (unix seconds); `None` for a lock without one.
    pub lease_until: Option<i64>,
}

impl StaleLock {
    /// One line: `lease expired 2020-01-01T01:00:00Z, holder build1 pid 42
    /// id 00112233aabbccdd`.
    pub fn describe(&self) -> String {
        match &self.holder {
            Some(holder) => format!("{}, holder {holder}", self.reason),
            None => self.reason.clone(),
        }
    }
}

/// Judges locks at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockJudge {
    /// The instant, unix seconds.
    pub now: i64,
    /// After how long a lock without a lease counts as stale; `None`: never.
    pub stale_after: Option<Duration>,
}

impl LockJudge {
    /// A judge at the current time.
    pub fn at_now(stale_after: Option<Duration>) -> LockJudge {
        LockJudge {
            now: chrono::Utc::now().timestamp(),
            stale_after,
        }
    }

    /// What to show for `state`, given the commit's lock note `lock` in
    /// that namespace.
    pub fn judge(&self, state: CommitState, lock: Option<&[u8]>) -> ShownState {
        let stale = match (state, lock) {
            (CommitState::Running, Some(lock)) => {
                let note = parse_lock_note(&String::from_utf8_lossy(lock));
                // Running: the commit has no result note.
                match judge_lock(&note, false, self.now, self.stale_after) {
                    LockVerdict::Stale(reason) => Some(StaleLock {
                        reason,
                        holder: note.holder,
                        lease_until: note.lease_until,
                    }),
                    LockVerdict::Held => None,
                }
            }
            _ => None,
        };
        ShownState { state, stale }
    }

    /// The states of `commits` (outer) in `namespaces` (inner), in order,
    /// from `index`, which must hold their `locked` and result notes. Only
    /// the lock notes of commits without a result are read, in one
    /// `cat-file`.
    pub async fn states(
        &self,
        reader: &ResultsReader,
        index: &NoteIndex,
        commits: &[String],
        namespaces: &[String],
    ) -> Result<Vec<Vec<ShownState>>, GitError> {
        let states: Vec<Vec<CommitState>> = commits
            .iter()
            .map(|commit| {
                namespaces
                    .iter()
                    .map(|ns| index.state(commit, ns))
                    .collect()
            })
            .collect();
        let lock_of = |commit: &str, ns: &str| index.blob(commit, ns, "locked");
        let locks: BTreeSet<&str> = commits
            .iter()
            .zip(&states)
            .flat_map(|(commit, states)| {
                namespaces
                    .iter()
                    .zip(states)
                    .filter(|(_, state)| **state == CommitState::Running)
                    .filter_map(|(ns, _)| lock_of(commit, ns))
            })
            .collect();
        let contents: HashMap<String, Vec<u8>> = reader
            .read_blobs(&locks.into_iter().collect::<Vec<_>>())
            .await?;
        Ok(commits
            .iter()
            .zip(states)
            .map(|(commit, states)| {
                namespaces
                    .iter()
                    .zip(states)
                    .map(|(ns, state)| {
                        let lock = lock_of(commit, ns).and_then(|blob| contents.get(blob));
                        self.judge(state, lock.map(Vec::as_slice))
                    })
                    .collect()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2020-01-01T00:00:00Z.
    const PAST: i64 = 1_577_836_800;
    /// 2100-01-01T00:00:00Z.
    const FUTURE: i64 = 4_102_444_800;

    fn leased(until: i64) -> String {
        format!(
            "2019-12-31 23:00:00.000000000 +0000: this commit is being tested by icyCI\n\
             holder: build1 pid 42 id 00112233aabbccdd\n\
             lease-until: {until} (ignored)\n"
        )
    }

    const ORIGINAL: &str =
        "2019-12-31 23:00:00.5 +0000 UTC: this commit is being tested by icyCI\n";

    fn judge() -> LockJudge {
        // Between the two leases, far from both.
        LockJudge {
            now: 2_000_000_000,
            stale_after: None,
        }
    }

    #[test]
    fn an_expired_lease_without_result_is_stale() {
        let shown = judge().judge(CommitState::Running, Some(leased(PAST).as_bytes()));
        assert_eq!(shown.state, CommitState::Running);
        assert_eq!(shown.name(), "stale");
        let stale = shown.stale.expect("stale");
        assert_eq!(stale.lease_until, Some(PAST));
        assert_eq!(
            stale.describe(),
            "lease expired 2020-01-01T00:00:00Z, holder build1 pid 42 id 00112233aabbccdd"
        );
    }

    #[test]
    fn a_live_lease_is_running() {
        let shown = judge().judge(CommitState::Running, Some(leased(FUTURE).as_bytes()));
        assert_eq!(shown, ShownState::from(CommitState::Running));
        assert_eq!(shown.name(), "running");
    }

    #[test]
    fn a_result_wins_over_an_expired_lease() {
        for state in [CommitState::Passed, CommitState::Failed] {
            let shown = judge().judge(state, Some(leased(PAST).as_bytes()));
            assert_eq!(shown, ShownState::from(state));
            assert_eq!(shown.name(), state.name());
        }
    }

    #[test]
    fn the_originals_lock_is_running_unless_a_threshold_is_known() {
        let shown = judge().judge(CommitState::Running, Some(ORIGINAL.as_bytes()));
        assert_eq!(shown.name(), "running");
        // Garbage or a missing note is not stale either.
        assert_eq!(
            judge().judge(CommitState::Running, Some(b"\xff garbage")),
            ShownState::from(CommitState::Running)
        );
        assert_eq!(
            judge().judge(CommitState::Running, None),
            ShownState::from(CommitState::Running)
        );

        let with_threshold = LockJudge {
            stale_after: Some(Duration::from_secs(3600)),
            ..judge()
        };
        let shown = with_threshold.judge(CommitState::Running, Some(ORIGINAL.as_bytes()));
        let stale = shown.stale.expect("stale after an hour");
        assert_eq!(stale.holder, None);
        assert_eq!(stale.lease_until, None);
        assert_eq!(
            stale.describe(),
            "lock without a lease taken 2019-12-31T23:00:00Z"
        );
        // Not before the threshold has passed.
        let early = LockJudge {
            now: PAST - 1800,
            ..with_threshold
        };
        assert_eq!(
            early
                .judge(CommitState::Running, Some(ORIGINAL.as_bytes()))
                .name(),
            "running"
        );
        // A leased lock goes by its lease, whatever the threshold.
        let shown = with_threshold.judge(CommitState::Running, Some(leased(FUTURE).as_bytes()));
        assert_eq!(shown.name(), "running");
    }
}
