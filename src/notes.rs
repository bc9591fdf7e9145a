//! The results repository seen as a notes store: lock notes, result notes,
//! and the fetch/add/push steps that keep the local note refs a faithful
//! copy of the remote's.
//!
//! The note refs live in a private bare repository of the job (not in the
//! clone the script runs in, so nothing the script does to its checkout's
//! repository can reach them), which borrows the clone's objects through
//! `objects/info/alternates` to annotate and push source commits. It is
//! fetched shallow: a note add needs the newest notes tree, never the
//! history of the results.
//!
//! A note ref is a commit history like a branch, so two instances adding
//! notes concurrently race like two pushes to a branch. Changes are made on
//! top of the local refs and pushed first, without force; a rejected push
//! means another instance got there first, and only then is the namespace
//! fetched (forced, pruned) and the change made again. Local note commits
//! from a failed attempt are discarded by that forced fetch, never pushed
//! later.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use thiserror::Error;
use tracing::{info, warn};

use crate::config::{mask_credentials, BranchName, NotesNamespace};
use crate::duration::{format_duration, round_to_millis};
use crate::git::{
    parse_fetch_head, parse_push_porcelain, remote_messages, Git, GitError, PushStatus, PushedRef,
    StdinPart,
};
use crate::lease::{self, judge_lock, parse_lock_note, Holder, LockVerdict};
use crate::reader::ResultsReader;
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
    /// The private notes repository could not be set up.
    #[error("cannot set up the notes repository: {0}")]
    Setup(#[from] std::io::Error),
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
    /// The commit is locked and has a result: it was tested.
    AlreadyTested,
    /// Another instance (or an earlier run) has locked the commit, and
    /// there is no result yet.
    AlreadyLocked {
        /// When the lock, if its holder does not renew it and no result
        /// arrives, becomes stale (unix time); `None` when it never does
        /// (results exist, or a lock without a lease and no
        /// `-stale-lock-after`).
        stale_at: Option<i64>,
        /// Who holds it, as its lock note says (none in the original's).
        holder: Option<String>,
        /// The lock ref in the results repository when the lock was found
        /// (see [`NotesStore::remote_lock_ref`]).
        lock_ref: Option<String>,
    },
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
    /// A lock note exists in local refs not fetched in this attempt: it may
    /// have been removed since (`icyci retest`); fetch before judging it.
    Unsure,
    /// The remote refused the lock by its policy (a hook, a full disk).
    Refused(String),
}

/// What the store knows of its local note refs.
#[derive(Debug, Default)]
struct LocalView {
    /// Counts the fetches of the namespace: each may replace the local
    /// refs, and with them note commits written before it.
    generation: u64,
    /// Whether the namespace was fetched since the repository was made.
    synced: bool,
    /// Values of the namespace's refs (other than the lock ref), as last
    /// fetched or written here; a ref not listed does not exist locally.
    refs: HashMap<String, String>,
    /// The lock ref's value at the last fetch of the namespace.
    fetched_lock: Option<String>,
    /// The watched branch's value in the results repository, as last read
    /// or pushed; `None` until read once.
    branch: Option<Option<String>>,
    /// `Name <email>` for note commits.
    committer: Option<String>,
}

/// Content of a note to write.
#[derive(Debug, Clone)]
pub enum NoteContent {
    /// The bytes of this file.
    File(std::path::PathBuf),
    /// A blob already in the repository.
    Blob(String),
}

/// Note refs of one namespace in the local clone, mirrored to and from the
/// results remote.
#[derive(Debug, Clone)]
pub struct NotesStore {
    git: Git,
    namespace: NotesNamespace,
    lease: Duration,
    stale_lock_after: Option<Duration>,
    view: Arc<Mutex<LocalView>>,
}

impl NotesStore {
    /// A store over the repository `git`, whose remote `results` is the
    /// results repository (see [`NotesStore::prepare`]).
    pub fn new(git: Git, namespace: NotesNamespace) -> Self {
        NotesStore {
            git,
            namespace,
            lease: lease::default_lease(crate::state::State::AwaitCommand.default_timeout()),
            stale_lock_after: None,
            view: Arc::default(),
        }
    }

    /// Makes the store's repository afresh: a bare repository with the
    /// remote `results` at `url`. It needs the clone's objects too (see
    /// [`NotesStore::borrow_objects`]), but not to fetch the namespace, so
    /// that it can be made, and fetched, while the source is cloned.
    pub async fn prepare(&self, url: &str) -> Result<(), NotesError> {
        let dir = self.git.dir().to_owned();
        tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || crate::workspace::remove_tree(&dir)
        })
        .await
        .map_err(std::io::Error::other)??;
        let parent = dir.parent().unwrap_or(Path::new("/"));
        Git::new(parent)
            .command("init")
            .args(["--quiet", "--bare"])
            .positional([&dir])
            .run()
            .await?;
        self.git
            .command("remote")
            .arg("add")
            .positional([RESULTS_REMOTE, url])
            .run()
            .await?;
        let committer = self.git.committer_identity().await?;
        *self.view() = LocalView {
            committer: Some(committer),
            ..LocalView::default()
        };
        Ok(())
    }

    /// Lets the repository read the objects of the clone whose object
    /// directory is `source_objects`, to annotate and push its commits.
    pub fn borrow_objects(&self, source_objects: &Path) -> Result<(), NotesError> {
        let alternates = self
            .git
            .dir()
            .join("objects")
            .join("info")
            .join("alternates");
        let mut line = source_objects.as_os_str().as_encoded_bytes().to_vec();
        line.push(b'\n');
        std::fs::write(&alternates, line)?;
        Ok(())
    }

    /// The repository holding the note refs.
    pub fn git(&self) -> &Git {
        &self.git
    }

    fn view(&self) -> MutexGuard<'_, LocalView> {
        // A panic while holding it leaves nothing half-updated worth
        // refusing: every field is replaced whole.
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts fetches of the namespace; notes written before the current
    /// generation may have been replaced.
    pub fn generation(&self) -> u64 {
        self.view().generation
    }

    /// Whether the namespace was fetched since the repository was made.
    pub fn synced(&self) -> bool {
        self.view().synced
    }

    /// Records the watched branch's value in the results repository.
    pub fn remember_branch(&self, value: Option<String>) {
        self.view().branch = Some(value);
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
    /// note left from a failed attempt survives. Shallow: only the newest
    /// commit of each ref is needed. A namespace without refs is fine.
    pub async fn sync(&self) -> Result<(), GitError> {
        let fetched = self
            .git
            .command("fetch")
            .args([
                "--prune",
                "--no-tags",
                "--depth=1",
                "--quiet",
                RESULTS_REMOTE,
            ])
            .arg(self.namespace.fetch_refspec())
            .output()
            .await?;
        // A shallow fetch whose refspec matches nothing fails, silently
        // (protocol v2) or saying so (v0, as over some ssh servers): that
        // is an empty namespace, not an error.
        let empty = !fetched.status.success()
            && (fetched.stderr.trim().is_empty()
                || fetched.stderr.contains("no matching remote head"));
        if !empty {
            fetched.into_result()?;
        }
        let lock_ref = self.namespace.note_ref("locked");
        let mut fetched_lock = None;
        let mut refs = HashMap::new();
        if !empty {
            let text =
                std::fs::read_to_string(self.git.dir().join("FETCH_HEAD")).unwrap_or_default();
            for fetched in parse_fetch_head(&text) {
                match fetched.full_name {
                    Some(name) if name == lock_ref => fetched_lock = Some(fetched.oid),
                    Some(name) => {
                        refs.insert(name, fetched.oid);
                    }
                    None => {}
                }
            }
        }
        let mut view = self.view();
        view.generation += 1;
        view.synced = true;
        view.refs = refs;
        view.fetched_lock = fetched_lock;
        Ok(())
    }

    /// Claims `commit` with a lock note, retrying lost push races and
    /// unreachable remotes a bounded number of times. With `branch`, also
    /// returns that branch's value in the results repository.
    ///
    /// The lock is pushed first, on top of the local lock ref; only a
    /// rejected push (or a lock note found in refs not fetched in this
    /// call) costs a fetch. A lost race is retried at once, then with a
    /// short growing jitter.
    pub async fn lock(
        &self,
        commit: &str,
        branch: Option<&BranchName>,
    ) -> Result<LockOutcome, NotesError> {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(2));
        let mut last = String::new();
        let mut fetch_first = !self.synced();
        let mut races = 0;
        for attempt in 1..=LOCK_ATTEMPTS {
            let fetched = fetch_first;
            let round = async {
                if fetched {
                    self.sync().await?;
                }
                let branch_value = match branch {
                    Some(branch) => self.branch_value(branch).await?,
                    None => None,
                };
                self.try_lock(commit, branch_value, fetched).await
            };
            let delay = match round.await {
                Ok(LockAttempt::Done(outcome)) => return Ok(outcome),
                Ok(LockAttempt::Unsure) => {
                    fetch_first = true;
                    Duration::ZERO
                }
                Ok(LockAttempt::Raced(reason)) => {
                    races += 1;
                    // Losing to another instance is how instances share
                    // work; only repeated refusals deserve a warning.
                    if races <= 2 {
                        info!(commit = %commit, attempt, "lock push rejected ({reason}): another instance pushed first; fetching and retrying");
                    } else {
                        warn!(commit = %commit, attempt, "lock push rejected again ({reason}); fetching and retrying");
                    }
                    last = reason;
                    fetch_first = true;
                    Backoff::race_delay(races)
                }
                Ok(LockAttempt::Refused(reason)) => {
                    let delay = backoff.next_delay();
                    warn!(commit = %commit,
                        attempt,
                        retry_in = %format_duration(round_to_millis(delay)),
                        "lock push refused by the remote: {reason}"
                    );
                    last = reason;
                    fetch_first = true;
                    delay
                }
                Err(err) => {
                    let delay = backoff.next_delay();
                    warn!(commit = %commit,
                        attempt,
                        retry_in = %format_duration(round_to_millis(delay)),
                        "lock attempt failed: {err}"
                    );
                    last = err.to_string();
                    fetch_first = true;
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

    /// The watched branch's value in the results repository: as last read
    /// or pushed by this store, read with `ls-remote` the first time. A
    /// value gone stale only makes the branch push's lease fail, which
    /// [`crate::publish`] settles.
    async fn branch_value(&self, branch: &BranchName) -> Result<Option<String>, GitError> {
        if let Some(value) = self.view().branch.clone() {
            return Ok(value);
        }
        let value = self.remote_branch(branch).await?;
        self.remember_branch(value.clone());
        Ok(value)
    }

    async fn try_lock(
        &self,
        commit: &str,
        branch_value: Option<String>,
        fetched: bool,
    ) -> Result<LockAttempt, GitError> {
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
                if !fetched {
                    return Ok(LockAttempt::Unsure);
                }
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
            Some(other) if other.status.is_lost_race() => {
                Ok(LockAttempt::Raced(other.status.to_string()))
            }
            Some(other) => Ok(LockAttempt::Refused(other.status.to_string())),
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
        let now = chrono::Utc::now().timestamp();
        if self.has_result(commit).await? {
            return Ok(LockAttempt::Done(LockOutcome::AlreadyTested));
        }
        let reason = match judge_lock(&note, false, now, self.stale_lock_after) {
            LockVerdict::Held => {
                let stale_at = note
                    .lease_until
                    .or_else(|| Some(lease::lease_end(note.taken_at?, self.stale_lock_after?)));
                let holder = note.holder.map(|h| h.to_string());
                let lock_ref = self.view().fetched_lock.clone();
                return Ok(LockAttempt::Done(LockOutcome::AlreadyLocked {
                    stale_at,
                    holder,
                    lock_ref,
                }));
            }
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
            other => Ok(LockAttempt::Raced(other.to_string())),
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

    /// Whether `commit` has a result note, passed or failed, in the local
    /// refs: one `cat-file` for both refs, whatever their fan-out.
    async fn has_result(&self, commit: &str) -> Result<bool, GitError> {
        let reader = ResultsReader::new(self.git.clone(), "refs/notes/");
        let ns = self.namespace.as_str();
        let names = ["result.passed", "result.failed"];
        let index = reader
            .index(
                &[commit.to_owned()],
                &names.map(|name| format!("{ns}.{name}")),
            )
            .await?;
        Ok(names
            .iter()
            .any(|name| index.blob(commit, ns, name).is_some()))
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
    /// byte for byte, with `git notes add`, which (unlike fast-import)
    /// annotates an object the repository does not have.
    pub async fn add_blob_note(
        &self,
        commit: &str,
        name: &str,
        blob: &str,
    ) -> Result<(), GitError> {
        let note_ref = self.namespace.note_ref(name);
        // -C takes the blob as it is: no whitespace clean-up, no editor.
        // -f because a result note for a commit this instance holds the lock
        // on may exist from an interrupted earlier run; the new run wins.
        self.git
            .command("notes")
            .arg(format!("--ref={note_ref}"))
            .args(["add", "-f", "--allow-empty", "-C", blob])
            .positional([commit])
            .run()
            .await?;
        match self.local_ref(&note_ref).await? {
            Some(value) => self.view().refs.insert(note_ref, value),
            None => self.view().refs.remove(&note_ref),
        };
        Ok(())
    }

    /// Adds (or replaces) notes on `commit`, one new commit on each named
    /// note ref built on its local value, in one `git fast-import`. Returns
    /// the blob id of each note, in order. `commit` must be an object the
    /// repository can read (fast-import checks it is a commit); for one it
    /// cannot, use [`NotesStore::add_blob_note`].
    pub async fn write_notes(
        &self,
        commit: &str,
        notes: &[(String, NoteContent)],
    ) -> Result<Vec<String>, GitError> {
        let (committer, parents) = {
            let view = self.view();
            let committer = view
                .committer
                .clone()
                .unwrap_or_else(|| "icyci <icyci@localhost>".into());
            let parents: Vec<Option<String>> = notes
                .iter()
                .map(|(name, _)| view.refs.get(&self.namespace.note_ref(name)).cloned())
                .collect();
            (committer, parents)
        };
        let mut stream = vec![StdinPart::Bytes(b"feature done\n".to_vec())];
        let mut text = String::new();
        for (index, (_, content)) in notes.iter().enumerate() {
            if let NoteContent::File(path) = content {
                let len = std::fs::metadata(path)
                    .map_err(|source| GitError::Spawn {
                        command: format!("git fast-import (reading {})", path.display()),
                        source,
                    })?
                    .len();
                stream.push(StdinPart::Bytes(
                    format!("blob\nmark :{}\ndata {len}\n", index + 1).into_bytes(),
                ));
                stream.push(StdinPart::File {
                    path: path.clone(),
                    len,
                });
                stream.push(StdinPart::Bytes(b"\n".to_vec()));
            }
        }
        let message = "Notes added by icyci\n";
        for (index, ((name, content), parent)) in notes.iter().zip(&parents).enumerate() {
            let blob = match content {
                NoteContent::File(_) => format!(":{}", index + 1),
                NoteContent::Blob(id) => id.clone(),
            };
            text.push_str(&format!(
                "commit {}\nmark :{}\ncommitter {committer} now\ndata {}\n{message}",
                self.namespace.note_ref(name),
                notes.len() + index + 1,
                message.len()
            ));
            if let Some(parent) = parent {
                text.push_str(&format!("from {parent}\n"));
            }
            text.push_str(&format!("N {blob} {commit}\n\n"));
        }
        // Ask back the ids of the blobs written here, then of the commits.
        let new_blobs: Vec<usize> = notes
            .iter()
            .enumerate()
            .filter(|(_, (_, content))| matches!(content, NoteContent::File(_)))
            .map(|(index, _)| index)
            .collect();
        for index in &new_blobs {
            text.push_str(&format!("get-mark :{}\n", index + 1));
        }
        for index in 0..notes.len() {
            text.push_str(&format!("get-mark :{}\n", notes.len() + index + 1));
        }
        text.push_str("done\n");
        stream.push(StdinPart::Bytes(text.into_bytes()));

        let marks = self
            .git
            .command("fast-import")
            .args(["--quiet", "--date-format=now"])
            .stdin_parts(stream)
            .run()
            .await?;
        let marks: Vec<&str> = marks.lines().collect();
        if marks.len() != new_blobs.len() + notes.len() {
            return Err(GitError::Failed {
                command: "git fast-import".into(),
                status: "exit status 0".into(),
                stderr: format!(
                    "expected {} marks back, got {}",
                    new_blobs.len() + notes.len(),
                    marks.len()
                ),
            });
        }
        let (blob_marks, commit_marks) = marks.split_at(new_blobs.len());
        let mut blob_marks = blob_marks.iter();
        let mut blobs = Vec::with_capacity(notes.len());
        let mut view = self.view();
        for ((name, content), commit_id) in notes.iter().zip(commit_marks) {
            view.refs
                .insert(self.namespace.note_ref(name), (*commit_id).to_owned());
            blobs.push(match content {
                NoteContent::File(_) => {
                    (*blob_marks.next().expect("one mark per new blob")).to_owned()
                }
                NoteContent::Blob(id) => id.clone(),
            });
        }
        Ok(blobs)
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
        // Not thin: from a shallow repository a thin pack makes git walk
        // the whole trees of every ref the remote advertises to find delta
        // bases, about 20 ms a push with 20,000 notes. The price is that
        // the few changed notes trees go whole, some tens of kB then.
        let mut command =
            self.git
                .command("push")
                .args(["--porcelain", "--no-verify", "--no-thin"]);
        if let Some(lease) = lease {
            command = command.arg(format!("--force-with-lease={lease}"));
        }
        let output = command
            .positional([RESULTS_REMOTE])
            .args(refspecs)
            .output()
            .await?;
        let mut statuses = parse_push_porcelain(&String::from_utf8_lossy(&output.stdout));
        // A refusing hook says why on stderr: keep that with the refusal.
        let said = remote_messages(&output.stderr);
        if statuses.is_empty() || statuses.iter().any(|p| p.status != PushStatus::Accepted) {
            // The local refs now hold note commits the remote does not
            // have: whatever comes next must start from a fetch, never push
            // them along with its own.
            self.view().synced = false;
        }
        if statuses.is_empty() {
            // Nothing reached the remote: unreachable, refused login, ...
            output.into_result()?;
        }
        if let Some(said) = said {
            for pushed in &mut statuses {
                if let PushStatus::Rejected(reason) = &mut pushed.status {
                    reason.push_str(&format!("; the remote says: {}", mask_credentials(&said)));
                }
            }
        }
        Ok(statuses)
    }

    /// The lock ref's value in the results repository now, with one
    /// `ls-remote`: when it differs from the value a lock was found under,
    /// that lock may have been released or taken over.
    pub async fn remote_lock_ref(&self) -> Result<Option<String>, GitError> {
        remote_ref_value(
            &self.git,
            RESULTS_REMOTE,
            &self.namespace.note_ref("locked"),
        )
        .await
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
