//! The results repository seen as a notes store: lock notes, result notes,
//! and the fetch/add/push steps that keep the local note refs a faithful
//! copy of the remote's before every change.
//!
//! A note ref is a commit history like a branch, so two instances adding
//! notes concurrently race like two pushes to a branch. Every change here is
//! made on top of freshly fetched refs and pushed without force; a rejected
//! push means another instance got there first, and the caller fetches and
//! tries again. Local note commits from a failed attempt are always discarded
//! by the forced fetch, never pushed later.

use std::time::Duration;

use thiserror::Error;
use tracing::{info, warn};

use crate::config::{BranchName, NotesNamespace};
use crate::duration::{format_duration, round_to_millis};
use crate::git::{parse_push_porcelain, Git, GitError, PushStatus, PushedRef};
use crate::lease::{self, judge_lock, parse_lock_note, Holder, LockVerdict};
use crate::retry::Backoff;

/// The git remote name under which the results repository is configured.
pub const RESULTS_REMOTE: &str = "results";

/// How many rounds of fetch, add and push the lock gets.
const LOCK_ATTEMPTS: u32 = 10;
/// Releasing a lock races other instances' lock pushes like taking one.
const UNLOCK_ATTEMPTS: u32 = 3;
/// Rounds of a lease renewal; other instances locking other commits move
/// the lock ref and make a round fail.
const RENEW_ATTEMPTS: u32 = 4;

/// A failure of the notes store that the caller may retry later.
#[derive(Debug, Error)]
pub enum NotesError {
    /// A git command failed.
    #[error(transparent)]
    Git(#[from] GitError),
    /// The lock could not be pushed in any attempt.
    #[error("could not take the lock in {attempts} attempts; last error: {last}")]
    LockAttempts {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The lock could not be released in any attempt.
    #[error("could not release the lock in {attempts} attempts; last error: {last}")]
    UnlockAttempts {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
}

/// The outcome of trying to claim a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockOutcome {
    /// This instance holds the lock now. With a branch to watch, its value
    /// in the results repository read just before the lock was taken
    /// (`None`: no such branch there), the lease for the later branch push.
    Taken {
        /// The watched branch's value in the results repository.
        branch_value: Option<String>,
    },
    /// Another instance (or an earlier run) has locked the commit.
    AlreadyLocked,
}

/// The outcome of renewing a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewOutcome {
    /// The lease now runs until this unix time.
    Renewed(i64),
    /// The lock note is no longer ours (taken over, or removed); the text
    /// found, if any.
    Lost(Option<String>),
}

/// One round of the lock protocol.
enum LockAttempt {
    Done(LockOutcome),
    /// Somebody pushed the lock ref meanwhile; fetch and try again.
    Raced(String),
}

/// Note refs of one namespace in the local clone, mirrored to and from the
/// results remote.
#[derive(Debug, Clone)]
pub struct NotesStore {
    git: Git,
    namespace: NotesNamespace,
    lease: Duration,
    stale_lock_after: Option<Duration>,
}

impl NotesStore {
    /// A store over the clone `git`, whose remote `results` is the results
    /// repository.
    pub fn new(git: Git, namespace: NotesNamespace) -> Self {
        NotesStore {
            git,
            namespace,
            lease: lease::default_lease(crate::state::State::AwaitCommand.default_timeout()),
            stale_lock_after: None,
        }
    }

    /// Sets the lease written into lock notes and when a lock without a
    /// lease counts as stale (`None`: never).
    pub fn with_leases(mut self, lease: Duration, stale_lock_after: Option<Duration>) -> Self {
        self.lease = lease;
        self.stale_lock_after = stale_lock_after;
        self
    }

    /// The namespace.
    pub fn namespace(&self) -> &NotesNamespace {
        &self.namespace
    }

    /// Makes the local note refs of the namespace equal to the remote's:
    /// forced, and pruning local refs the remote does not have, so that no
    /// note left from a failed attempt survives. A missing ref is fine.
    pub async fn sync(&self) -> Result<(), GitError> {
        self.git
            .command("fetch")
            .args([
                "--prune",
                "--no-tags",
                "--no-write-fetch-head",
                "--quiet",
                RESULTS_REMOTE,
            ])
            .arg(self.namespace.fetch_refspec())
            .run()
            .await
            .map(drop)
    }

    /// Claims `commit` with a lock note, retrying lost push races and
    /// unreachable remotes a bounded number of times. With `branch`, also
    /// reads that branch's value in the results repository in each round.
    pub async fn lock(
        &self,
        commit: &str,
        branch: Option<&BranchName>,
    ) -> Result<LockOutcome, NotesError> {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(2));
        let mut last = String::new();
        for attempt in 1..=LOCK_ATTEMPTS {
            let delay = match self.try_lock(commit, branch).await {
                Ok(LockAttempt::Done(outcome)) => return Ok(outcome),
                Ok(LockAttempt::Raced(reason)) => {
                    warn!(commit = %commit, attempt, "lock push rejected ({reason}); fetching and retrying");
                    last = reason;
                    Backoff::race_delay(attempt)
                }
                Err(err) => {
                    let delay = backoff.next_delay();
                    warn!(commit = %commit,
                        attempt,
                        retry_in = %format_duration(round_to_millis(delay)),
                        "lock attempt failed: {err}"
                    );
                    last = err.to_string();
                    delay
                }
            };
            if attempt < LOCK_ATTEMPTS {
                tokio::time::sleep(delay).await;
            }
        }
        Err(NotesError::LockAttempts {
            attempts: LOCK_ATTEMPTS,
            last,
        })
    }

    async fn try_lock(
        &self,
        commit: &str,
        branch: Option<&BranchName>,
    ) -> Result<LockAttempt, GitError> {
        self.sync().await?;
        let branch_value = match branch {
            Some(branch) => self.remote_branch(branch).await?,
            None => None,
        };

        let lock_ref = self.namespace.note_ref("locked");
        // Adding a note without -f fails when one exists, which makes the
        // note itself the lock: whoever pushes it first owns the commit.
        let added = self
            .git
            .command("notes")
            .arg(format!("--ref={lock_ref}"))
            .args(["add", "-m", &lease::current_lock_text(self.lease)])
            .positional([commit])
            .output()
            .await?;
        if !added.status.success() {
            if added.stderr.contains("existing notes") {
                return self.try_takeover(commit, branch_value).await;
            }
            return Err(added
                .into_result()
                .expect_err("status was checked as a failure"));
        }

        let pushed = self.push(&[format!("{lock_ref}:{lock_ref}")], None).await?;
        match pushed.iter().find(|p| p.remote_ref == lock_ref) {
            Some(PushedRef {
                status: crate::git::PushStatus::Accepted,
                ..
            }) => {
                info!(commit = %commit, "lock taken in {lock_ref}");
                Ok(LockAttempt::Done(LockOutcome::Taken { branch_value }))
            }
            Some(other) => Ok(LockAttempt::Raced(format!("{:?}", other.status))),
            None => Err(missing_push_status(&lock_ref)),
        }
    }

    /// The lock on `commit` exists: take it over when it is stale, with a
    /// push that only succeeds if nobody changed the lock ref since it was
    /// fetched, so that of several instances exactly one wins.
    async fn try_takeover(
        &self,
        commit: &str,
        branch_value: Option<String>,
    ) -> Result<LockAttempt, GitError> {
        let Some(text) = self.note_text("locked", commit).await? else {
            // Raced with a removal between add and show: try again.
            return Ok(LockAttempt::Raced("lock note vanished".into()));
        };
        let note = parse_lock_note(&text);
        let has_result = self.has_note("result.passed", commit).await?
            || self.has_note("result.failed", commit).await?;
        let now = chrono::Utc::now().timestamp();
        let reason = match judge_lock(&note, has_result, now, self.stale_lock_after) {
            LockVerdict::Held => return Ok(LockAttempt::Done(LockOutcome::AlreadyLocked)),
            LockVerdict::Stale(reason) => reason,
        };
        let text = lease::current_lock_text(self.lease);
        match self.swap_lock_note(commit, &text).await? {
            PushStatus::Accepted => {
                let holder = note
                    .holder
                    .map_or_else(|| "an unknown holder".to_owned(), |h| h.to_string());
                info!("taking over stale lock of {commit} held by {holder} ({reason})");
                Ok(LockAttempt::Done(LockOutcome::Taken { branch_value }))
            }
            other => Ok(LockAttempt::Raced(format!("{other:?}"))),
        }
    }

    /// Replaces the lock note of `commit` with `text` and pushes the lock
    /// ref with a lease on the value just fetched: a compare-and-swap that
    /// fails (stale info) when any other instance moved the ref meanwhile.
    async fn swap_lock_note(&self, commit: &str, text: &str) -> Result<PushStatus, GitError> {
        let lock_ref = self.namespace.note_ref("locked");
        let fetched = self.local_ref(&lock_ref).await?.unwrap_or_default();
        self.git
            .command("notes")
            .arg(format!("--ref={lock_ref}"))
            .args(["add", "-f", "-m", text])
            .positional([commit])
            .run()
            .await?;
        let lease = format!("{lock_ref}:{fetched}");
        let pushed = self
            .push(&[format!("{lock_ref}:{lock_ref}")], Some(&lease))
            .await?;
        pushed
            .into_iter()
            .find(|p| p.remote_ref == lock_ref)
            .map(|p| p.status)
            .ok_or_else(|| missing_push_status(&lock_ref))
    }

    /// Renews this process's lease on `commit`: rewrites its own lock note
    /// and pushes it with a lease on the lock ref just fetched, retrying
    /// when other instances moved the ref meanwhile.
    pub async fn renew(&self, commit: &str) -> Result<RenewOutcome, NotesError> {
        let lock_ref = self.namespace.note_ref("locked");
        let mut last = String::new();
        for attempt in 1..=RENEW_ATTEMPTS {
            self.git
                .command("fetch")
                .args(["--no-tags", "--no-write-fetch-head", "--quiet"])
                .positional([RESULTS_REMOTE])
                .arg(format!("+{lock_ref}:{lock_ref}"))
                .run()
                .await?;
            let text = self.note_text("locked", commit).await?;
            let ours = text
                .as_deref()
                .map(parse_lock_note)
                .and_then(|note| note.holder)
                .is_some_and(|holder| holder.id == Holder::current().id);
            if !ours {
                return Ok(RenewOutcome::Lost(text));
            }
            let text = lease::current_lock_text(self.lease);
            match self.swap_lock_note(commit, &text).await? {
                PushStatus::Accepted => {
                    let until = parse_lock_note(&text).lease_until.unwrap_or_default();
                    return Ok(RenewOutcome::Renewed(until));
                }
                other => last = format!("{other:?}"),
            }
            if attempt < RENEW_ATTEMPTS {
                tokio::time::sleep(Backoff::race_delay(attempt)).await;
            }
        }
        Err(NotesError::LockAttempts {
            attempts: RENEW_ATTEMPTS,
            last,
        })
    }

    /// The text of the note `name` of `commit` in the local refs, if any.
    async fn note_text(&self, name: &str, commit: &str) -> Result<Option<String>, GitError> {
        let shown = self
            .git
            .command("notes")
            .arg(format!("--ref={}", self.namespace.note_ref(name)))
            .arg("show")
            .positional([commit])
            .output()
            .await?;
        Ok(shown.status.success().then(|| shown.stdout_text()))
    }

    async fn has_note(&self, name: &str, commit: &str) -> Result<bool, GitError> {
        let listed = self
            .git
            .command("notes")
            .arg(format!("--ref={}", self.namespace.note_ref(name)))
            .arg("list")
            .positional([commit])
            .output()
            .await?;
        Ok(listed.status.success())
    }

    async fn local_ref(&self, refname: &str) -> Result<Option<String>, GitError> {
        let parsed = self
            .git
            .command("rev-parse")
            .args(["--verify", "--quiet", "--end-of-options"])
            .arg(refname)
            .output()
            .await?;
        Ok(parsed
            .status
            .success()
            .then(|| parsed.stdout_text().trim().to_owned()))
    }

    /// Removes this instance's lock of `commit` (a run that was
    /// interrupted), so that the commit is tested again later.
    pub async fn unlock(&self, commit: &str) -> Result<(), NotesError> {
        let lock_ref = self.namespace.note_ref("locked");
        let mut last = String::new();
        for _ in 0..UNLOCK_ATTEMPTS {
            self.sync().await?;
            // A lock another instance took over is theirs to release.
            let holder = self
                .note_text("locked", commit)
                .await?
                .and_then(|text| parse_lock_note(&text).holder);
            if holder.is_some_and(|holder| holder.id != Holder::current().id) {
                return Ok(());
            }
            self.git
                .command("notes")
                .arg(format!("--ref={lock_ref}"))
                .args(["remove", "--ignore-missing"])
                .positional([commit])
                .run()
                .await?;
            let pushed = self.push(&[format!("{lock_ref}:{lock_ref}")], None).await?;
            match pushed.iter().find(|p| p.remote_ref == lock_ref) {
                Some(PushedRef {
                    status: crate::git::PushStatus::Accepted,
                    ..
                }) => return Ok(()),
                Some(other) => last = format!("{:?}", other.status),
                None => return Err(missing_push_status(&lock_ref).into()),
            }
        }
        Err(NotesError::UnlockAttempts {
            attempts: UNLOCK_ATTEMPTS,
            last,
        })
    }

    /// Adds (or replaces) the note `name` of `commit` with the blob `blob`,
    /// byte for byte.
    pub async fn add_blob_note(
        &self,
        commit: &str,
        name: &str,
        blob: &str,
    ) -> Result<(), GitError> {
        // -C takes the blob as it is: no whitespace clean-up, no editor.
        // -f because a result note for a commit this instance holds the lock
        // on may exist from an interrupted earlier run; the new run wins.
        self.git
            .command("notes")
            .arg(format!("--ref={}", self.namespace.note_ref(name)))
            .args(["add", "-f", "--allow-empty", "-C", blob])
            .positional([commit])
            .run()
            .await
            .map(drop)
    }

    /// Pushes `refspecs` to the results remote in one push, with an
    /// optional `--force-with-lease=<ref>:<expected>`; returns the status of
    /// every ref. A push that reached the remote but had refs refused is not
    /// an error here: the caller decides per ref.
    pub async fn push(
        &self,
        refspecs: &[String],
        lease: Option<&str>,
    ) -> Result<Vec<PushedRef>, GitError> {
        let mut command = self
            .git
            .command("push")
            .args(["--porcelain", "--no-verify"]);
        if let Some(lease) = lease {
            command = command.arg(format!("--force-with-lease={lease}"));
        }
        let output = command
            .positional([RESULTS_REMOTE])
            .args(refspecs)
            .output()
            .await?;
        let statuses = parse_push_porcelain(&String::from_utf8_lossy(&output.stdout));
        if statuses.is_empty() {
            // Nothing reached the remote: unreachable, refused login, ...
            output.into_result()?;
        }
        Ok(statuses)
    }

    /// The commit a branch points to in the results repository, if any.
    pub async fn remote_branch(&self, branch: &BranchName) -> Result<Option<String>, GitError> {
        remote_ref_value(&self.git, RESULTS_REMOTE, &branch.full_ref()).await
    }
}

/// The value of `refname` on `remote`, read with `ls-remote`.
pub async fn remote_ref_value(
    git: &Git,
    remote: &str,
    refname: &str,
) -> Result<Option<String>, GitError> {
    let listing = git
        .command("ls-remote")
        .positional([remote, refname])
        .run()
        .await?;
    Ok(listing.lines().find_map(|line| {
        let (oid, name) = line.split_once('\t')?;
        (name == refname).then(|| oid.to_owned())
    }))
}

fn missing_push_status(refname: &str) -> GitError {
    GitError::Failed {
        command: "git push".into(),
        status: "no status".into(),
        stderr: format!("git push reported nothing for {refname}"),
    }
}
