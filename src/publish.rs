//! Publishing a verdict: the captured output, the verdict and the extra
//! notes become notes on the tested commit (blobs and note commits written
//! by one `git fast-import`), then one push to the results repository
//! together with the tested branch and verified tag.

use std::path::PathBuf;
use std::time::Duration;

use tracing::{info, warn};

use crate::config::BranchName;
use crate::duration::{format_duration, round_to_millis};
use crate::git::{Git, GitError, PushStatus};
use crate::notes::{remote_ref_value, NoteContent, NotesStore};
use crate::retry::Backoff;
use crate::verify::VerifiedTip;

/// Refused pushes retried almost at once before the backoff grows: enough
/// for a few lost races against other instances.
const QUICK_REFUSAL_RETRIES: u32 = 3;

/// A note to add: its name in the namespace and the file with its content.
#[derive(Debug, Clone)]
pub struct StagedNote {
    /// Name after `refs/notes/<ns>.`.
    pub name: String,
    /// File holding the exact bytes.
    pub file: PathBuf,
}

/// The tested branch pushed alongside the notes, protected by a lease.
#[derive(Debug, Clone)]
pub struct BranchUpdate {
    /// The branch.
    pub branch: BranchName,
    /// The results' branch value when the commit was locked (`None`: absent).
    pub expected: Option<String>,
}

/// Everything one cycle pushes. Blob ids only, so it survives the cleanup
/// of the staging files and can be pushed again after a failure.
#[derive(Debug, Clone)]
pub struct Publication {
    /// The tested commit.
    pub tip: VerifiedTip,
    /// `(note name, blob id)` pairs still to be pushed.
    notes: Vec<(String, String)>,
    /// The store generation in which the notes were last written into the
    /// local note refs; a fetch since then may have replaced them.
    written: Option<u64>,
    /// The commit is not an object of the repository (a spooled commit the
    /// source has lost): its notes are added with `git notes add`.
    annotate_missing: bool,
    branch: Option<BranchUpdate>,
    push_tag: bool,
    /// Pushes of it the remote refused by its policy, across attempts.
    policy_refusals: u32,
    /// The verdict, for `-once`'s exit status.
    pub passed: bool,
}

impl Publication {
    /// Writes the staged files as notes on the tip into the store's local
    /// refs (one `git fast-import`), ready to be pushed.
    pub async fn stage(
        store: &NotesStore,
        tip: VerifiedTip,
        notes: Vec<StagedNote>,
        branch: Option<BranchUpdate>,
        push_tag: bool,
        passed: bool,
    ) -> Result<Self, GitError> {
        let push_tag = push_tag && tip.tag.is_some();
        if !store.synced() {
            // Nothing fetched yet (results found in the spool at start, the
            // results repository perhaps away): keep the blobs now, add the
            // notes once the first push round has fetched the namespace.
            let mut publication = Self::stage_without_commit(store, tip, notes, passed).await?;
            publication.annotate_missing = false;
            publication.branch = branch;
            publication.push_tag = push_tag;
            return Ok(publication);
        }
        let names: Vec<String> = notes.iter().map(|n| n.name.clone()).collect();
        let contents: Vec<(String, NoteContent)> = notes
            .into_iter()
            .map(|n| (n.name, NoteContent::File(n.file)))
            .collect();
        let generation = store.generation();
        let blobs = store.write_notes(&tip.commit, &contents).await?;
        Ok(Publication {
            tip,
            notes: names.into_iter().zip(blobs).collect(),
            written: Some(generation),
            annotate_missing: false,
            branch,
            push_tag,
            policy_refusals: 0,
            passed,
        })
    }

    /// Like [`Publication::stage`] for a commit the repository does not
    /// have: the blobs are written now and the notes added with `git notes
    /// add` at each push round.
    pub async fn stage_without_commit(
        store: &NotesStore,
        tip: VerifiedTip,
        notes: Vec<StagedNote>,
        passed: bool,
    ) -> Result<Self, GitError> {
        let paths: String = notes
            .iter()
            .map(|n| format!("{}\n", n.file.display()))
            .collect();
        // --no-filters: the bytes as captured, no attribute-driven conversion.
        let blobs = store
            .git()
            .command("hash-object")
            .args(["-w", "--no-filters", "--stdin-paths"])
            .stdin(paths.into_bytes())
            .run()
            .await?;
        let notes = notes
            .into_iter()
            .map(|n| n.name)
            .zip(blobs.lines().map(str::to_owned))
            .collect();
        Ok(Publication {
            tip,
            notes,
            written: None,
            annotate_missing: true,
            branch: None,
            push_tag: false,
            policy_refusals: 0,
            passed,
        })
    }
}

/// Pushes `publication` until its notes are in the results repository.
///
/// Each round adds the notes on top of the note refs as last fetched or
/// pushed, and pushes them with the branch and tag still pending. Notes
/// refused because another instance pushed first are retried at once, a few
/// times: fetch the namespace (which discards our local note commits), add
/// again, push again. Other refusals (a hook, the remote's disk) and
/// unreachable remotes are retried with capped backoff; the caller's state
/// timeout bounds the whole, and `max_failures`, when given, the number of
/// such failed rounds after which the last error is returned.
pub async fn publish(
    store: &NotesStore,
    source: &Git,
    publication: &mut Publication,
    max_failures: Option<u32>,
) -> Result<(), GitError> {
    let commit = publication.tip.commit.clone();
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    // Push first: the notes were written on the local refs, which are the
    // remote's unless another instance pushed meanwhile. Only a refusal
    // (or a failure) costs a fetch.
    let mut needs_sync = !store.synced();
    let mut notes_pushed = false;
    let mut round: u32 = 0;
    let mut races: u32 = 0;
    let mut failures: u32 = 0;

    loop {
        round += 1;
        let result = push_round(
            store,
            source,
            publication,
            &mut needs_sync,
            &mut notes_pushed,
        )
        .await;
        let (err, said) = match result {
            Ok(Round::Done) => {
                info!(commit = %commit, "results pushed");
                return Ok(());
            }
            Ok(Round::LostRace(reason)) if races < QUICK_REFUSAL_RETRIES => {
                // Another instance pushed first: fetch, add again, push again
                // at once (a short jitter after the first).
                races += 1;
                info!(
                    commit = %commit,
                    round,
                    "results push refused ({reason}): another instance pushed first; fetching notes and retrying"
                );
                tokio::time::sleep(Backoff::race_delay(races)).await;
                continue;
            }
            // A remote that keeps refusing (a hook, a full disk, races that
            // never end) is not hammered, and counts as a failed round.
            Ok(Round::LostRace(reason) | Round::Refused(reason)) => {
                let mut said = format!("refused by the remote: {reason}");
                if refused_by_policy(&reason) {
                    publication.policy_refusals += 1;
                }
                let carried = publication.branch.is_some() || publication.push_tag;
                if publication.policy_refusals >= 2 && carried {
                    // A hook may refuse the branch (or the tag) and with it the
                    // whole push: refused twice, the results go alone; the
                    // branch moves with the next tested commit.
                    publication.branch = None;
                    publication.push_tag = false;
                    said.push_str("; pushing the notes without the branch and tag next");
                }
                let err = GitError::Failed {
                    command: "git push".into(),
                    status: "refused by the results repository".into(),
                    stderr: reason,
                };
                (err, said)
            }
            Err(err) => {
                let said = format!("failed: {err}");
                (err, said)
            }
        };
        failures += 1;
        if max_failures.is_some_and(|max| failures >= max) {
            // The caller says what becomes of the results.
            return Err(err);
        }
        let delay = backoff.next_delay();
        warn!(
            commit = %commit,
            round,
            retry_in = %format_duration(round_to_millis(delay)),
            "results push {said}"
        );
        needs_sync = true;
        tokio::time::sleep(delay).await;
    }
}

/// Whether a refusal is the remote's policy rather than a lost race.
fn refused_by_policy(reason: &str) -> bool {
    reason.starts_with("[remote rejected]")
}

/// How one push round ended.
enum Round {
    /// Everything is in the results repository.
    Done,
    /// The notes were refused because another push moved their refs.
    LostRace(String),
    /// The notes were refused for another reason (a hook, the remote's
    /// disk, a protected ref).
    Refused(String),
}

/// One round of adding the notes (when the refs moved) and pushing what is
/// still pending.
async fn push_round(
    store: &NotesStore,
    source: &Git,
    publication: &mut Publication,
    needs_sync: &mut bool,
    notes_pushed: &mut bool,
) -> Result<Round, GitError> {
    let commit = publication.tip.commit.clone();
    let namespace = store.namespace().clone();
    let mut refspecs = Vec::new();

    if !*notes_pushed {
        if *needs_sync {
            store.sync().await?;
            *needs_sync = false;
        }
        let generation = store.generation();
        if publication.written != Some(generation) {
            if publication.annotate_missing {
                for (name, blob) in &publication.notes {
                    store.add_blob_note(&commit, name, blob).await?;
                }
            } else {
                let contents: Vec<(String, NoteContent)> = publication
                    .notes
                    .iter()
                    .map(|(name, blob)| (name.clone(), NoteContent::Blob(blob.clone())))
                    .collect();
                store.write_notes(&commit, &contents).await?;
            }
            publication.written = Some(generation);
        }
        for (name, _) in &publication.notes {
            let note_ref = namespace.note_ref(name);
            refspecs.push(format!("{note_ref}:{note_ref}"));
        }
    }
    let lease = publication.branch.as_ref().map(|update| {
        refspecs.push(format!("{commit}:{}", update.branch.full_ref()));
        format!(
            "{}:{}",
            update.branch.full_ref(),
            update.expected.as_deref().unwrap_or("")
        )
    });
    let tag = publication.tip.tag.clone().filter(|_| publication.push_tag);
    if let Some(tag) = &tag {
        refspecs.push(format!("{}:{}", tag.object, tag.refname));
    }
    if refspecs.is_empty() {
        return Ok(Round::Done);
    }

    let statuses = store.push(&refspecs, lease.as_deref()).await?;
    let status_of = |remote_ref: &str| {
        statuses
            .iter()
            .find(|s| s.remote_ref == remote_ref)
            .map(|s| s.status.clone())
    };

    let mut refused = None;
    if !*notes_pushed {
        let not_accepted = publication
            .notes
            .iter()
            .map(|(name, _)| status_of(&namespace.note_ref(name)))
            .find(|status| *status != Some(PushStatus::Accepted));
        match not_accepted {
            None => *notes_pushed = true,
            Some(status) => {
                *needs_sync = true;
                refused = Some(match status {
                    Some(status) if status.is_lost_race() => Round::LostRace(status.to_string()),
                    Some(status) => Round::Refused(status.to_string()),
                    None => Round::Refused("no status for a note ref".into()),
                });
            }
        }
    }
    // When the notes were refused too, the whole push was most likely
    // refused (a hook, a race): keep the branch and tag for the next round
    // rather than reading their refusal as final.
    let status_of = |remote_ref: &str| match status_of(remote_ref) {
        Some(PushStatus::Rejected(_)) if !*notes_pushed => None,
        status => status,
    };
    if let Some(update) = publication.branch.clone() {
        let status = status_of(&update.branch.full_ref());
        publication.branch = settle_branch(store, source, &commit, update, status).await?;
    }
    if let Some(tag) = tag {
        match status_of(&tag.refname) {
            Some(PushStatus::Accepted) => publication.push_tag = false,
            Some(status) => {
                warn!(commit = %commit, tag = %tag.refname, "verified tag not pushed: {status:?}");
                publication.push_tag = false;
            }
            None => {}
        }
    }
    if let Some(refused) = refused {
        return Ok(refused);
    }
    if publication.branch.is_none() && !publication.push_tag {
        Ok(Round::Done)
    } else {
        // The notes are in; the branch or tag is retried at once.
        Ok(Round::LostRace(
            "the branch or tag is still to be pushed".into(),
        ))
    }
}

/// Decides what remains of the branch update after a push; `None` when done.
async fn settle_branch(
    store: &NotesStore,
    source: &Git,
    commit: &str,
    update: BranchUpdate,
    status: Option<PushStatus>,
) -> Result<Option<BranchUpdate>, GitError> {
    match status {
        Some(PushStatus::Accepted) => {
            store.remember_branch(Some(commit.to_owned()));
            Ok(None)
        }
        None => Ok(Some(update)),
        Some(PushStatus::StaleLease) => settle_moved_branch(store, source, commit, update).await,
        Some(status) if status.is_concurrent_update() => {
            settle_moved_branch(store, source, commit, update).await
        }
        Some(PushStatus::Rejected(reason)) => {
            warn!(
                commit = %commit,
                "results branch not updated: {reason}; the notes are pushed, the branch moves with the next tested commit"
            );
            Ok(None)
        }
    }
}

/// The results branch moved since its value was read (another push won the
/// lease or the ref lock): update it only if the tested commit is still the
/// source's tip; otherwise a newer tip is on its way and must not be
/// rewound.
async fn settle_moved_branch(
    store: &NotesStore,
    source: &Git,
    commit: &str,
    update: BranchUpdate,
) -> Result<Option<BranchUpdate>, GitError> {
    let source_tip = remote_ref_value(source, "origin", &update.branch.full_ref()).await?;
    if source_tip.as_deref() == Some(commit) {
        let expected = store.remote_branch(&update.branch).await?;
        store.remember_branch(expected.clone());
        info!(commit = %commit, "results branch moved meanwhile; retrying with a new lease");
        Ok(Some(BranchUpdate { expected, ..update }))
    } else {
        info!(commit = %commit, "results branch not updated: the source has moved past this commit");
        Ok(None)
    }
}
