//! The job's state machine: one handler per state of the cycle, run one at
//! a time under the state's time limit, with signals watched throughout.
//!
//! ```text
//! clone -> verify -> lock -> start-command -> await-command -> push -> cleanup -> poll
//!            ^  not verified / lock lost  -> poll                                 |
//!            +--------------------------- new tip --------------------------------+
//! ```
//!
//! A job owns everything it works on (workspace, clone, lock, running
//! script), so several jobs can later run side by side in one process, each
//! driven by its own [`Job::run`] task. Failures never end the job: each
//! state's error sends it back to a safe state after a capped backoff, and
//! what it already owns (a lock, results not yet pushed) is kept and retried
//! rather than dropped.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::JobConfig;
use crate::contain;
use crate::duration::{format_duration, round_to_millis};
use crate::git::{parse_fetch_head, Git, GitError};
use crate::notes::{
    remote_ref_value, LockOutcome, NotesError, NotesStore, RenewOutcome, RESULTS_REMOTE,
};
use crate::notes_dir::{collect_extra_notes, refuse_note_name, FULL_OUTPUT_NOTES};
use crate::publish::{publish, BranchUpdate, Publication, StagedNote};
use crate::retry::Backoff;
use crate::runner::{self, ScriptOutcome, ScriptRun, ScriptSpec};
use crate::site;
use crate::spool::{Spool, SpoolEntry};
use crate::state::State;
use crate::verify::{
    describe_rejections, verify_tip, Provenance, Verification, VerifiedTip, VerifierFault,
};
use crate::workspace::{remove_tree, Workspace};
use crate::worktree::{self, Shape};

/// Result of `-once`, which is also its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnceResult {
    /// The script passed (or mirror mode pushed).
    Passed = 0,
    /// The script failed.
    Failed = 1,
    /// Unsigned tip or already locked.
    NothingToDo = 3,
    /// The cycle could not be completed (remote unreachable, ...).
    Error = 4,
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobExit {
    /// Stopped by SIGTERM or SIGINT.
    Stopped,
    /// `-once` finished.
    Once(OnceResult),
}

/// A failure inside one state.
#[derive(Debug, Error)]
enum StepError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(transparent)]
    Notes(#[from] NotesError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("state {state} timed out after {}", format_duration(*limit))]
    Timeout { state: State, limit: Duration },
    #[error("{what} gave no answer within {}", format_duration(*limit))]
    NoAnswer { what: &'static str, limit: Duration },
    #[error(transparent)]
    Verifier(#[from] VerifierFault),
}

/// A commit this job holds the lock on.
#[derive(Debug, Clone)]
struct Claim {
    tip: VerifiedTip,
    branch: Option<BranchUpdate>,
}

/// A state together with the data it works on.
#[derive(Debug)]
enum Step {
    Clone {
        delay: Duration,
    },
    Poll {
        wait: Duration,
    },
    Verify {
        tip: String,
        /// Whether tags may point at the tip: the fetch brought tags, or
        /// the clone is new. Without, only the commit's signature counts.
        tags: bool,
    },
    Lock {
        tip: VerifiedTip,
    },
    /// Giving back the lock of a commit this job cannot test.
    Release {
        claim: Claim,
    },
    StartCommand {
        claim: Claim,
    },
    AwaitCommand {
        claim: Claim,
    },
    Push {
        commit: String,
    },
    Cleanup {
        once: Option<OnceResult>,
        then_wait: Duration,
    },
    Exit(OnceResult),
}

impl Step {
    fn state(&self) -> State {
        match self {
            Step::Clone { .. } => State::Clone,
            Step::Poll { .. } | Step::Exit(_) => State::Poll,
            Step::Verify { .. } => State::Verify,
            Step::Lock { .. } | Step::Release { .. } => State::Lock,
            Step::StartCommand { .. } => State::StartCommand,
            Step::AwaitCommand { .. } => State::AwaitCommand,
            Step::Push { .. } => State::Push,
            Step::Cleanup { .. } => State::Cleanup,
        }
    }

    fn commit(&self) -> Option<&str> {
        match self {
            Step::Verify { tip, .. } => Some(tip),
            Step::Lock { tip } => Some(&tip.commit),
            Step::StartCommand { claim }
            | Step::AwaitCommand { claim }
            | Step::Release { claim } => Some(&claim.tip.commit),
            Step::Push { commit } => Some(commit),
            _ => None,
        }
    }
}

/// One followed branch: its configuration and everything its cycle owns.
pub struct Job {
    config: JobConfig,
    workspace: Workspace,
    source: Git,
    store: NotesStore,
    same_repository: bool,
    /// The last tip that needs nothing more (tested, lost, or unverified).
    last_handled: Option<String>,
    /// The last tip found unsigned, and whether it was looked at twice. A
    /// branch and its signed tag pushed together reach the remote one ref at
    /// a time, so a fetch in between sees the tip before its tag: such a tip
    /// is verified once more when the next poll's fetch brings tags.
    unverified: Option<(String, bool)>,
    /// A tip whose verification, tags included, did not finish: its retry
    /// looks at the tags again, as the fetch that brought them is not
    /// repeated.
    tags_unverified: Option<String>,
    /// A tip locked by another instance, with no result yet.
    recheck: Option<Recheck>,
    /// Locked by us and not yet staged: retried, never abandoned.
    held: Option<Claim>,
    /// Staged results not yet pushed.
    pending: Option<Publication>,
    /// Whether `pending` is also in the spool.
    pending_spooled: bool,
    /// Results on disk until pushed; see [`crate::spool`].
    spool: Spool,
    /// Spooled results whose in-cycle push failed, retried at each poll.
    backlog: Vec<Publication>,
    backlog_backoff: Backoff,
    backlog_due: tokio::time::Instant,
    running: Option<ScriptRun>,
    work_tree: WorkTree,
    /// When exited processes the daemon adopted were last reaped.
    reaped_at: tokio::time::Instant,
    /// Attempts to run the held commit and stage its results.
    run_attempts: u32,
    failures: Failures,
}

/// A tip found locked by another instance, with no result yet: looked at
/// again when the lease ends (its holder may have died), or sooner when the
/// results' lock ref moves (its holder may have released it, as a stopped
/// instance does, or `icyci retest` removed it).
#[derive(Debug)]
struct Recheck {
    commit: String,
    /// When the lock becomes stale (unix seconds); `None`: never by itself.
    stale_at: Option<i64>,
    /// The results' lock ref when the lock was found.
    lock_ref: Option<String>,
    /// When to ask the results repository for its lock ref next.
    next_look: tokio::time::Instant,
}

/// What the checkout's work tree may hold, for the cleanup after a run.
#[derive(Debug, PartialEq, Eq)]
enum WorkTree {
    /// No file of a run: a fresh clone, or cleaned since the last run.
    Clean,
    /// A commit checked out into a clean tree, with its paths right after
    /// the checkout (`None` when they could not be read).
    CheckedOut(Option<Shape>),
    /// Anything: a run's leftovers may be there, or a clean failed.
    Dirty,
}

/// Consecutive failures of one state, for the retry delay and the log.
struct Failures {
    state: Option<State>,
    count: u32,
    backoff: Backoff,
    poll_interval: Duration,
}

impl Failures {
    fn new(poll_interval: Duration) -> Self {
        // Retries follow the job's cadence: from half a second (or one poll
        // interval, if shorter) up to ten intervals, within [1 s, 1 min]. A
        // source that is back is noticed about as soon as a poll would.
        let max = (poll_interval * 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let min = poll_interval.min(Duration::from_millis(500));
        Failures {
            state: None,
            count: 0,
            backoff: Backoff::new(min, max),
            poll_interval,
        }
    }

    /// Counts a failure of `state`; returns the attempt number and the delay
    /// before the next try.
    fn record(&mut self, state: State) -> (u32, Duration) {
        if self.state != Some(state) {
            *self = Failures::new(self.poll_interval);
            self.state = Some(state);
        }
        self.count += 1;
        (self.count, self.backoff.next_delay())
    }

    /// Notes that `state` completed; returns how often it had failed before.
    fn succeeded(&mut self, state: State) -> Option<u32> {
        if self.state != Some(state) {
            return None;
        }
        let count = self.count;
        *self = Failures::new(self.poll_interval);
        Some(count)
    }
}

impl Job {
    /// A job working in `workspace`.
    pub fn new(config: JobConfig, workspace: Workspace, spool: Spool) -> Self {
        let source = Git::new(workspace.source_dir());
        let store = NotesStore::new(Git::new(workspace.results_dir()), config.notes_ns.clone())
            .with_leases(config.lock_lease, config.stale_lock_after);
        let same_repository = config.source.same_repository(&config.results);
        let failures = Failures::new(config.poll_interval);
        Job {
            config,
            workspace,
            source,
            store,
            same_repository,
            last_handled: None,
            unverified: None,
            tags_unverified: None,
            recheck: None,
            held: None,
            pending: None,
            pending_spooled: false,
            spool,
            backlog: Vec::new(),
            backlog_backoff: backlog_backoff(),
            backlog_due: tokio::time::Instant::now(),
            running: None,
            work_tree: WorkTree::Clean,
            reaped_at: tokio::time::Instant::now(),
            run_attempts: 0,
            failures,
        }
    }

    /// Runs the cycle until `shutdown` fires or, with `-once`, one cycle
    /// is done. SIGUSR1 notifications arrive on `usr1`.
    pub async fn run(
        mut self,
        shutdown: CancellationToken,
        mut usr1: broadcast::Receiver<()>,
    ) -> JobExit {
        let config = &self.config;
        let await_limit = config.timeouts.for_state(State::AwaitCommand);
        info!(
            source = %config.source,
            branch = %config.branch,
            results = %config.results,
            namespace = config.notes_ns.as_str(),
            script = config.test_script.as_deref().unwrap_or("none (mirror mode)"),
            poll_interval = %format_duration(config.poll_interval),
            push_source_to_results = config.push_source_to_results && !self.same_repository,
            script_timeout = %await_limit.map_or("none".into(), format_duration),
            trust = %config.signature_policy.describe(),
            "job starting"
        );
        let mut step = Step::Clone {
            delay: Duration::ZERO,
        };
        loop {
            if let Step::Exit(result) = step {
                // A -once run that gave up may still own a lock or results.
                self.hand_back().await;
                info!(
                    "cycle done with -once; exiting with status {}",
                    result as u8
                );
                return JobExit::Once(result);
            }
            let state = step.state();
            let commit = step.commit().map(str::to_owned);
            let limit = match state {
                // The script's own limit is applied by the runner, because
                // reaching it is a test failure, not an error of the job.
                State::AwaitCommand => None,
                other => self.config.timeouts.for_state(other),
            };

            let outcome = {
                let handler = self.handle(step);
                tokio::pin!(handler);
                let deadline = sleep_or_forever(limit);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        result = &mut handler => break Some(result),
                        () = &mut deadline => break Some(Err(StepError::Timeout {
                            state,
                            limit: limit.expect("a deadline fires only with a limit"),
                        })),
                        () = shutdown.cancelled() => break None,
                        Ok(()) = usr1.recv() => {
                            info!(state = %state, "SIGUSR1 received; the cycle continues");
                        }
                    }
                }
            };
            let Some(result) = outcome else {
                self.stop().await;
                return JobExit::Stopped;
            };

            let next = match result {
                Ok(next) => {
                    if let Some(count) = self.failures.succeeded(state) {
                        info!("{state} works again after {count} failed attempts");
                    }
                    next
                }
                Err(err) => self.recover(state, commit.as_deref(), err),
            };
            if next.state() != state && !matches!(next, Step::Exit(_)) {
                match next.commit() {
                    Some(commit) => info!(commit = %commit, "state {state} -> {}", next.state()),
                    None => info!("state {state} -> {}", next.state()),
                }
            }
            step = next;
        }
    }

    async fn handle(&mut self, step: Step) -> Result<Step, StepError> {
        match step {
            Step::Clone { delay } => self.clone_source(delay).await,
            Step::Poll { wait } => self.poll(wait).await,
            Step::Verify { tip, tags } => self.verify(tip, tags).await,
            Step::Lock { tip } => self.lock(tip).await,
            Step::Release { claim } => self.release(claim).await,
            Step::StartCommand { claim } => self.start_command(claim).await,
            Step::AwaitCommand { claim } => self.await_command(claim).await,
            Step::Push { .. } => self.push().await,
            Step::Cleanup { once, then_wait } => self.cleanup(once, then_wait).await,
            Step::Exit(result) => Ok(Step::Exit(result)),
        }
    }

    /// Chooses where to go after a failed state, which was working on
    /// `commit`.
    fn recover(&mut self, state: State, commit: Option<&str>, err: StepError) -> Step {
        let (attempt, delay) = self.failures.record(state);
        let commit = commit.map(tracing::field::display);
        if self.config.once && (state != State::Clone || attempt >= ONCE_CLONE_ATTEMPTS) {
            error!(commit, "{state} failed: {err}; giving up (-once)");
            return Step::Exit(OnceResult::Error);
        }
        warn!(
            attempt,
            retry_in = %format_duration(round_to_millis(delay)),
            commit,
            "{state} failed: {err}"
        );
        match state {
            State::Clone => Step::Clone { delay },
            State::Poll => Step::Poll { wait: delay },
            // Remote trouble: the clone is fine, try again from a clean state.
            State::Verify | State::Lock | State::Push => Step::Cleanup {
                once: None,
                then_wait: delay,
            },
            // Staged results live in the clone's object store: push them
            // before the clone may be replaced.
            State::Cleanup if self.pending.is_some() => Step::Poll { wait: delay },
            // These only touch the clone and the workspace, so the script
            // (or the disk) has damaged them: start over from a fresh clone.
            // A lock held is kept, and its commit run again.
            State::StartCommand | State::AwaitCommand | State::Cleanup => {
                warn!("cloning the source again");
                Step::Clone { delay }
            }
        }
    }

    /// Work this job already owns goes before anything new: staged results
    /// to push, or a locked commit to (re)run.
    fn owned_work(&mut self) -> Option<Step> {
        if let Some(publication) = &self.pending {
            return Some(Step::Push {
                commit: publication.tip.commit.clone(),
            });
        }
        let claim = self.held.clone()?;
        if self.run_attempts < MAX_RUN_ATTEMPTS {
            return Some(Step::StartCommand { claim });
        }
        error!(
            commit = %claim.tip.commit,
            "giving up on this commit after {MAX_RUN_ATTEMPTS} attempts to run it and record its \
             results; releasing its lock"
        );
        self.held = None;
        self.run_attempts = 0;
        self.last_handled = Some(claim.tip.commit.clone());
        Some(Step::Release { claim })
    }

    async fn clone_source(&mut self, delay: Duration) -> Result<Step, StepError> {
        tokio::time::sleep(delay).await;
        self.work_tree = WorkTree::Clean;
        // The notes repository is made, and the namespace fetched, while
        // the source is cloned: both can take seconds on big repositories.
        let store = self.store.clone();
        let url = self.config.results.as_git_arg().to_owned();
        let notes_setup = async move {
            store.prepare(&url).await?;
            if let Err(err) = store.sync().await {
                // The first lock fetches it again; the clone goes on.
                warn!("results repository not fetched yet: {err}");
            }
            Ok::<(), NotesError>(())
        };
        let (source, notes) = tokio::join!(self.clone_or_reuse(), notes_setup);
        source?;
        notes?;
        self.store
            .borrow_objects(&self.workspace.source_dir().join(".git").join("objects"))?;
        // Only a clone with this marker is reused after a crash.
        self.workspace.mark_clone_complete(&self.config)?;
        self.load_spool().await?;

        if let Some(step) = self.owned_work() {
            return Ok(step);
        }
        if !self.backlog.is_empty() {
            // Delivered first, by the poll.
            return Ok(Step::Poll {
                wait: Duration::ZERO,
            });
        }
        let tip = self.source_tip().await?;
        Ok(Step::Verify { tip, tags: true })
    }

    /// The clone of the source: a leftover one brought up to date, or a
    /// fresh one with the remote `results` added, and a committer identity.
    async fn clone_or_reuse(&mut self) -> Result<(), StepError> {
        if !self.reuse_leftover_clone().await? {
            let target = self.workspace.source_dir();
            // A failed attempt may leave a partial clone behind. Unmarked
            // first, so a removal cut short by a crash is never reused.
            self.workspace.unmark_clone()?;
            tokio::task::spawn_blocking(move || remove_tree(&target))
                .await
                .map_err(std::io::Error::other)??;
            let target = self.workspace.source_dir();
            let mut clone = Git::new(self.workspace.root())
                .command("clone")
                .args(["--quiet", "--no-checkout", "--single-branch"])
                .arg(format!("--branch={}", self.config.branch));
            if let Some(reference) = &self.config.source_reference {
                clone = clone.arg(format!("--reference={reference}"));
            }
            clone
                .positional([
                    OsStr::new(self.config.source.as_git_arg()),
                    target.as_os_str(),
                ])
                .run()
                .await?;
            self.source
                .command("remote")
                .arg("add")
                .positional([RESULTS_REMOTE, self.config.results.as_git_arg()])
                .run()
                .await?;
        }
        self.source.ensure_committer_identity().await?;
        Ok(())
    }

    /// Brings a completed clone left by a killed instance up to date with
    /// an incremental fetch instead of cloning afresh; `false` when there is
    /// none or it cannot be used (then it is cloned again). Its work tree
    /// and index were removed when the workspace was opened, so the first
    /// run's forced checkout writes every file. A failed fetch is retried
    /// like a failed clone, a few times, before the clone is given up.
    async fn reuse_leftover_clone(&mut self) -> Result<bool, StepError> {
        const LEFTOVER_FETCH_ATTEMPTS: u32 = 3;
        if !self.workspace.has_leftover_clone() {
            return Ok(false);
        }
        let failed_fetches = match self.failures.state {
            Some(State::Clone) => self.failures.count,
            _ => 0,
        };
        let usable = if failed_fetches >= LEFTOVER_FETCH_ATTEMPTS {
            Err(format!("its fetch failed {failed_fetches} times"))
        } else {
            self.workspace.check_clone_marker(&self.config)
        };
        let before = match usable {
            Ok(()) => (self.source_tip().await)
                .map_err(|err| format!("git cannot read its branch: {err}")),
            Err(reason) => Err(reason),
        };
        let before = match before {
            Ok(tip) => tip,
            Err(reason) => {
                warn!(
                    "not reusing the clone left by an earlier instance: {reason}; cloning afresh"
                );
                self.workspace.settle_leftover_clone();
                return Ok(false);
            }
        };
        self.source
            .command("fetch")
            .args(["--quiet", "origin"])
            .run()
            .await?;
        self.workspace.settle_leftover_clone();
        info!(
            previous_tip = %before,
            "reusing the clone left by an earlier instance: fetched incrementally"
        );
        Ok(true)
    }

    /// Waits, then looks at the source branch: one `ls-remote` while
    /// nothing changes, and a fetch only when the tip moved (or an unsigned
    /// tip is due its second look, for a tag that may have come after it).
    async fn poll(&mut self, wait: Duration) -> Result<Step, StepError> {
        tokio::time::sleep(with_jitter(wait)).await;
        // Processes git detached (an automatic gc or maintenance) that have
        // exited since: reaped here too, since a job that keeps losing lock
        // races never reaches the cleanup. Reaping reads all of /proc, which
        // would be a fair share of an idle poll's cost: once a minute is
        // soon enough for a zombie.
        if self.reaped_at.elapsed() >= REAP_WHILE_POLLING {
            self.reap_adopted();
        }
        self.deliver_backlog().await;
        if let Some(step) = self.owned_work() {
            return Ok(step);
        }

        let branch_ref = self.config.branch.full_ref();
        let idle = Step::Poll {
            wait: self.config.poll_interval,
        };
        let second_look = matches!(&self.unverified, Some((_, false)));
        if !second_look {
            let ls_remote = remote_ref_value(&self.source, "origin", &branch_ref);
            let remote_tip = within(
                self.config
                    .timeouts
                    .for_poll(false, self.config.poll_interval),
                "the source (git ls-remote)",
                ls_remote,
            )
            .await??
            .ok_or_else(|| GitError::Failed {
                command: "git ls-remote origin".into(),
                status: "no such branch".into(),
                stderr: format!("the source has no branch {}", self.config.branch),
            })?;
            if self.last_handled.as_deref() == Some(remote_tip.as_str()) {
                if !self.lock_on_tip_changed(&remote_tip).await {
                    return Ok(idle);
                }
                self.recheck = None;
                return Ok(Step::Verify {
                    tip: remote_tip,
                    tags: true,
                });
            }
        }

        let fetch = self.fetch_source();
        let fetched = within(
            self.config
                .timeouts
                .for_poll(true, self.config.poll_interval),
            "the source (git fetch)",
            fetch,
        )
        .await??;
        let tip = fetched.tip;
        let second_look = matches!(&self.unverified, Some((t, false)) if *t == tip);
        if self.last_handled.as_deref() == Some(tip.as_str()) && !second_look {
            return Ok(idle);
        }
        if second_look && !fetched.tags {
            // Nothing new since the first look: the answer would be the same.
            self.unverified = Some((tip, true));
            return Ok(idle);
        }
        Ok(Step::Verify {
            tip,
            tags: fetched.tags,
        })
    }

    /// Whether the tip, found locked by another instance, deserves another
    /// look: its lease has ended, or the lock ref in the results repository
    /// has moved since. The latter costs an `ls-remote` of the results, so
    /// it is asked only every ten poll intervals (1 s to 10 min).
    async fn lock_on_tip_changed(&mut self, tip: &str) -> bool {
        let Some(recheck) = self.recheck.as_mut().filter(|r| r.commit == tip) else {
            return false;
        };
        let now = chrono::Utc::now().timestamp();
        if recheck.stale_at.is_some_and(|at| at < now) {
            // The holder had its chance to renew: judge the lock again.
            info!(commit = %tip, "the lease of the lock on the tip has ended; looking again");
            return true;
        }
        if tokio::time::Instant::now() < recheck.next_look {
            return false;
        }
        recheck.next_look =
            tokio::time::Instant::now() + relook_interval(self.config.poll_interval);
        let asked = within(
            self.config
                .timeouts
                .for_poll(false, self.config.poll_interval),
            "the results (git ls-remote)",
            self.store.remote_lock_ref(),
        );
        match asked.await.and_then(|answer| Ok(answer?)) {
            Ok(value) if value != recheck.lock_ref => {
                info!(
                    commit = %tip,
                    "the lock ref in the results repository has moved since the tip was found \
                     locked (released, renewed or taken over); looking again"
                );
                true
            }
            Ok(_) => false,
            Err(err) => {
                debug!(commit = %tip, "cannot read the results' lock ref: {err}");
                false
            }
        }
    }

    /// Fetches the followed branch; the new tip and whether tags came with
    /// it are read from `FETCH_HEAD`, which git writes with every fetch.
    async fn fetch_source(&self) -> Result<FetchedTip, StepError> {
        let branch_ref = self.config.branch.full_ref();
        let refspec = format!("+{branch_ref}:refs/remotes/origin/{}", self.config.branch);
        self.source
            .command("fetch")
            .args(["--quiet", "origin"])
            .arg(refspec)
            .run()
            .await?;
        let fetch_head = self.workspace.source_dir().join(".git").join("FETCH_HEAD");
        let text = tokio::fs::read_to_string(&fetch_head).await?;
        let fetched = parse_fetch_head(&text);
        let tip = fetched
            .iter()
            .find(|line| !line.not_for_merge)
            .map(|line| line.oid.clone());
        match tip {
            Some(tip) => Ok(FetchedTip {
                tip,
                // Only tags that point into the fetched history come along,
                // so none came means none points at the new tip.
                tags: fetched.iter().any(|line| line.not_for_merge),
            }),
            // Not what git writes; look the tip up instead.
            None => Ok(FetchedTip {
                tip: self.source_tip().await?,
                tags: true,
            }),
        }
    }

    async fn verify(&mut self, tip: String, tags: bool) -> Result<Step, StepError> {
        let tags = tags || self.tags_unverified.as_deref() == Some(tip.as_str());
        // Kept when this attempt fails or times out.
        self.tags_unverified = tags.then(|| tip.clone());
        let verification = verify_tip(&self.source, &tip, &self.config.signature_policy, tags);
        let verification = verification.await?;
        if !matches!(verification, Verification::Unchecked(_)) {
            self.tags_unverified = None;
        }
        match verification {
            Verification::Verified(verified) => {
                info!(commit = %tip, "verified: {}", verified.describe());
                Ok(Step::Lock { tip: *verified })
            }
            Verification::NotVerified(rejections) => {
                // One line however many objects were tried: each refused
                // signature with its key and reason, then the rest.
                warn!(commit = %tip, "not testing: {}", describe_rejections(&rejections));
                let looked_before = matches!(&self.unverified, Some((t, _)) if *t == tip);
                self.unverified = Some((tip.clone(), looked_before));
                Ok(self.nothing_to_do(tip))
            }
            Verification::Unchecked(fault) => {
                // Not a verdict: retried with the state's backoff, even when
                // the tip was handled before (a retest, a lock released).
                if self.last_handled.as_deref() == Some(tip.as_str()) {
                    self.last_handled = None;
                }
                Err(fault.into())
            }
        }
    }

    async fn lock(&mut self, tip: VerifiedTip) -> Result<Step, StepError> {
        if let Some(claim) = self.held.clone().filter(|c| c.tip.commit == tip.commit) {
            return Ok(Step::StartCommand { claim });
        }
        let branch = (self.config.push_source_to_results && !self.same_repository)
            .then_some(&self.config.branch);
        match self.store.lock(&tip.commit, branch).await? {
            LockOutcome::Taken { branch_value } => {
                let branch = branch.map(|branch| BranchUpdate {
                    branch: branch.clone(),
                    expected: branch_value,
                });
                let claim = Claim { tip, branch };
                self.held = Some(claim.clone());
                Ok(Step::StartCommand { claim })
            }
            LockOutcome::AlreadyTested => {
                info!(
                    commit = %tip.commit,
                    "not testing: already locked in {}, with a result (tested)",
                    self.config.notes_ns.note_ref("locked")
                );
                self.recheck = None;
                Ok(self.nothing_to_do(tip.commit))
            }
            LockOutcome::AlreadyLocked {
                stale_at,
                holder,
                lock_ref,
            } => {
                let holder = holder.unwrap_or_else(|| "an instance".to_owned());
                let locked = self.config.notes_ns.note_ref("locked");
                match stale_at {
                    _ if self.config.once => info!(
                        commit = %tip.commit,
                        "not testing: already locked in {locked} by {holder}, no result yet (being tested)"
                    ),
                    Some(at) => info!(
                        commit = %tip.commit,
                        "not testing: already locked in {locked} by {holder}, no result yet \
                         (being tested); looking again if the lock is released, or when its \
                         lease ends at {} if it is still the tip",
                        crate::lease::format_unix(at)
                    ),
                    None => info!(
                        commit = %tip.commit,
                        "not testing: already locked in {locked} by {holder}, no result yet \
                         (being tested); looking again if the lock is released"
                    ),
                }
                self.recheck = Some(Recheck {
                    commit: tip.commit.clone(),
                    stale_at,
                    lock_ref,
                    next_look: tokio::time::Instant::now()
                        + relook_interval(self.config.poll_interval),
                });
                Ok(self.nothing_to_do(tip.commit))
            }
        }
    }

    async fn release(&mut self, claim: Claim) -> Result<Step, StepError> {
        // Not retried: the lock's lease ends it anyway (an original-format
        // lock cannot be ours: this daemon writes leases).
        match self.store.unlock(&claim.tip.commit).await {
            Ok(()) => info!(commit = %claim.tip.commit, "lock released"),
            Err(err) => warn!(
                commit = %claim.tip.commit,
                "lock not released ({err}); it stays until its lease ends, when another instance \
                 may take the commit over"
            ),
        }
        Ok(Step::Cleanup {
            once: Some(OnceResult::Error),
            then_wait: self.config.poll_interval,
        })
    }

    fn nothing_to_do(&mut self, tip: String) -> Step {
        self.last_handled = Some(tip);
        if self.config.once {
            Step::Exit(OnceResult::NothingToDo)
        } else {
            Step::Poll {
                wait: self.config.poll_interval,
            }
        }
    }

    async fn start_command(&mut self, claim: Claim) -> Result<Step, StepError> {
        self.run_attempts += 1;
        self.workspace.reset_staging()?;
        let Some(script) = self.config.test_script.clone() else {
            return self.stage(claim, None).await;
        };

        let was_clean = self.work_tree == WorkTree::Clean;
        self.work_tree = WorkTree::Dirty;
        self.source
            .command("checkout")
            .args(["--quiet", "--force", "--detach"])
            .arg(&claim.tip.commit)
            .arg("--")
            .run()
            .await?;
        if was_clean {
            // Only a checkout into a clean tree holds just the index's paths.
            self.work_tree = WorkTree::CheckedOut(self.checkout_shape().await);
        }
        let notes_dir = self.workspace.prepare_notes_dir()?;
        let (stdout_file, stderr_file) = self.output_files();
        let (full_stdout, full_stderr) = self.full_output_files();
        let spec = ScriptSpec {
            script: &script,
            checkout: &self.workspace.source_dir(),
            notes_dir: &notes_dir,
            stdout_file: &stdout_file,
            stderr_file: &stderr_file,
            max_output: self.config.max_output,
            full_output: self
                .config
                .keep_full_output
                .then_some((full_stdout.as_path(), full_stderr.as_path())),
        };
        match runner::start(&spec).await {
            Ok(run) => {
                self.running = Some(run);
                Ok(Step::AwaitCommand { claim })
            }
            Err(reason) => {
                warn!(commit = %claim.tip.commit, "script did not start: {reason}");
                self.stage(claim, Some(ScriptOutcome::Failed(reason))).await
            }
        }
    }

    async fn await_command(&mut self, claim: Claim) -> Result<Step, StepError> {
        let limit = self.config.timeouts.for_state(State::AwaitCommand);
        let run = self
            .running
            .as_mut()
            .expect("await-command follows a started script");
        let renewals = renew_lease(&self.store, &claim.tip.commit, self.config.lock_lease);
        let outcome = tokio::select! {
            outcome = run.wait(limit) => outcome,
            never = renewals => match never {},
        };
        self.running = None;
        match &outcome {
            ScriptOutcome::Passed => info!(commit = %claim.tip.commit, "script passed"),
            ScriptOutcome::Failed(reason) => {
                info!(commit = %claim.tip.commit, "script failed: {reason}");
            }
        }
        self.stage(claim, Some(outcome)).await
    }

    /// Turns the run's files into a [`Publication`] held in `self.pending`,
    /// to be pushed next. `outcome` is `None` in mirror mode.
    async fn stage(
        &mut self,
        claim: Claim,
        outcome: Option<ScriptOutcome>,
    ) -> Result<Step, StepError> {
        let ns = &self.config.notes_ns;
        let script = self.config.test_script.as_deref().unwrap_or_default();
        let (verdict_name, verdict_text) = match &outcome {
            None => ("result.passed", "No -test-script specified\n".to_owned()),
            Some(ScriptOutcome::Passed) => (
                "result.passed",
                format!("{script} completed successfully\n"),
            ),
            Some(ScriptOutcome::Failed(reason)) => (
                "result.failed",
                format!(
                    "{script} failed: {reason}\nSee {} and {} for details\n",
                    ns.note_ref("output.stdout"),
                    ns.note_ref("output.stderr")
                ),
            ),
        };
        let private = self.workspace.private_dir();
        let verdict_file = private.join("verdict");
        tokio::fs::write(&verdict_file, verdict_text).await?;
        // Provenance: which object's signature, by which key, let it run.
        let verified_file = private.join("verified");
        tokio::fs::write(&verified_file, claim.tip.verified_note()).await?;

        let mut notes = vec![StagedNote {
            name: "verified".to_owned(),
            file: verified_file,
        }];
        if outcome.is_some() {
            let (stdout_file, stderr_file) = self.output_files();
            let mut outputs = vec![
                ("output.stdout", stdout_file),
                ("output.stderr", stderr_file),
            ];
            if self.config.keep_full_output {
                let (full_stdout, full_stderr) = self.full_output_files();
                outputs.extend([
                    (FULL_OUTPUT_NOTES[0], full_stdout),
                    (FULL_OUTPUT_NOTES[1], full_stderr),
                ]);
            }
            for (name, file) in outputs {
                // A script that never started left no output files.
                if !file.exists() {
                    tokio::fs::write(&file, b"").await?;
                }
                notes.push(StagedNote {
                    name: name.to_owned(),
                    file,
                });
            }
            let extras_dir = private.join("extras");
            tokio::fs::create_dir_all(&extras_dir).await?;
            let (notes_dir, namespace) = (self.workspace.notes_dir(), ns.clone());
            let extras = tokio::task::spawn_blocking(move || {
                collect_extra_notes(&notes_dir, &extras_dir, &namespace)
            })
            .await
            .map_err(std::io::Error::other)?;
            notes.extend(extras.into_iter().map(|e| StagedNote {
                name: e.name,
                file: e.copy,
            }));
        }
        notes.push(StagedNote {
            name: verdict_name.to_owned(),
            file: verdict_file,
        });

        let passed = !matches!(outcome, Some(ScriptOutcome::Failed(_)));
        let push_tag = self.config.push_source_to_results && !self.same_repository;
        let entry = SpoolEntry {
            commit: claim.tip.commit.clone(),
            job: Some(crate::config::job_name(&self.config)),
            namespace: Some(ns.as_str().to_owned()),
            passed,
            tag: claim.tip.tag.clone().filter(|_| push_tag),
            branch: claim.branch.clone(),
            notes: notes.clone(),
        };
        let spool = self.spool.clone();
        let written = tokio::task::spawn_blocking(move || spool.write(&entry))
            .await
            .map_err(std::io::Error::other)?;
        self.pending_spooled = match written {
            Ok(()) => true,
            Err(err) => {
                // Still pushed as before, only not kept across a restart.
                warn!(
                    commit = %claim.tip.commit,
                    spool = %self.spool.dir().display(),
                    "results not written to the spool: {err}"
                );
                false
            }
        };
        let publication = self
            .stage_publication(claim.tip, notes, claim.branch, push_tag, passed)
            .await?;
        let commit = publication.tip.commit.clone();
        self.pending = Some(publication);
        self.held = None;
        self.run_attempts = 0;
        Ok(Step::Push { commit })
    }

    /// Stages `notes` on `tip` ([`Publication::stage`]). When git cannot
    /// write them and some are the script's extra notes (a name that
    /// clashes with the refs of another namespace, say), the run's own
    /// notes are staged without them: an extra note never costs the commit
    /// its outputs and verdict.
    async fn stage_publication(
        &self,
        tip: VerifiedTip,
        notes: Vec<StagedNote>,
        branch: Option<BranchUpdate>,
        push_tag: bool,
        passed: bool,
    ) -> Result<Publication, GitError> {
        let ns = &self.config.notes_ns;
        let is_extra = |note: &StagedNote| refuse_note_name(ns, &note.name).is_none();
        if !notes.iter().any(is_extra) {
            return Publication::stage(&self.store, tip, notes, branch, push_tag, passed).await;
        }
        let staged = Publication::stage(
            &self.store,
            tip.clone(),
            notes.clone(),
            branch.clone(),
            push_tag,
            passed,
        )
        .await;
        match staged {
            Err(err) => {
                warn!(
                    commit = %tip.commit,
                    "extra notes not published, git could not write them ({err}); publishing \
                     the run's own notes"
                );
                let own = notes.into_iter().filter(|note| !is_extra(note)).collect();
                Publication::stage(&self.store, tip, own, branch, push_tag, passed).await
            }
            staged => staged,
        }
    }

    async fn push(&mut self) -> Result<Step, StepError> {
        let publication = self.pending.as_mut().expect("push follows staged results");
        // Spooled results need not hold up the cycle: after a few failed
        // rounds they wait in the spool and the job goes on testing.
        // With -once there is no later poll: it tries longer, then exits
        // with the results in the spool for the next run.
        let limit = match (self.pending_spooled, self.config.once) {
            (false, _) => None,
            (true, false) => Some(IN_CYCLE_PUSH_FAILURES),
            (true, true) => Some(ONCE_PUSH_FAILURES),
        };
        if let Err(err) = publish(&self.store, &self.source, publication, limit).await {
            if limit.is_none() {
                return Err(err.into());
            }
            let publication = self.pending.take().expect("still staged");
            let commit = publication.tip.commit.clone();
            let until = if self.config.once {
                "the next run with this state directory delivers them"
            } else {
                "they are retried at each poll"
            };
            warn!(
                commit = %commit,
                spool = %self.spool.dir().display(),
                "results not pushed: {err}; they wait in the spool, {until}"
            );
            self.last_handled = Some(commit);
            self.backlog.push(publication);
            return Ok(Step::Cleanup {
                once: self.config.once.then_some(OnceResult::Error),
                then_wait: self.config.poll_interval,
            });
        }
        let publication = self.pending.take().expect("still staged");
        self.unspool(&publication.tip.commit).await;
        self.last_handled = Some(publication.tip.commit.clone());
        if let Some(dir) = &self.config.site_dir {
            let tip = &publication.tip.commit;
            site::refresh_daemon_site(self.store.git(), tip, &self.config, dir).await;
        }
        let once = if publication.passed {
            OnceResult::Passed
        } else {
            OnceResult::Failed
        };
        Ok(Step::Cleanup {
            once: Some(once),
            then_wait: Duration::ZERO,
        })
    }

    async fn cleanup(
        &mut self,
        once: Option<OnceResult>,
        then_wait: Duration,
    ) -> Result<Step, StepError> {
        if self.run_left_files().await {
            // Untracked and ignored files of this run must not leak into the
            // next; tracked files are reset by the next forced checkout.
            self.work_tree = WorkTree::Dirty;
            self.source.command("clean").args(["-ffdxq"]).run().await?;
        }
        self.work_tree = WorkTree::Clean;
        self.workspace.reset_staging()?;
        // Processes git detached (an automatic gc) that have exited since:
        // the daemon, a subreaper, adopted them, and must reap them.
        self.reap_adopted();
        match once {
            Some(result) if self.config.once => Ok(Step::Exit(result)),
            // After a test the tip may have moved meanwhile: look at once.
            _ => Ok(Step::Poll { wait: then_wait }),
        }
    }

    fn reap_adopted(&mut self) {
        contain::reap_adopted();
        self.reaped_at = tokio::time::Instant::now();
    }

    /// The paths of the checkout now, read off the runtime's thread.
    async fn checkout_shape(&self) -> Option<Shape> {
        let dir = self.workspace.source_dir();
        let shape = tokio::task::spawn_blocking(move || Shape::of(&dir, worktree::MAX_PATHS))
            .await
            .map_err(std::io::Error::other)
            .and_then(|read| read);
        shape
            .map_err(|err| {
                debug!("cannot read the checkout's paths ({err}); it is cleaned after the run")
            })
            .ok()
            .flatten()
    }

    /// Whether the checkout may hold files a run left, for `git clean` to
    /// remove: not when its paths are those right after the checkout.
    async fn run_left_files(&self) -> bool {
        match &self.work_tree {
            WorkTree::Clean => false,
            WorkTree::Dirty | WorkTree::CheckedOut(None) => true,
            WorkTree::CheckedOut(Some(before)) => {
                let unchanged = self.checkout_shape().await.as_ref() == Some(before);
                if unchanged {
                    debug!("the run created and removed no file in the checkout: nothing to clean");
                }
                !unchanged
            }
        }
    }

    /// Shutdown: a running script's whole group is stopped and reaped.
    ///
    /// What the job owns is not left behind silently: finished results get a
    /// bounded last attempt to be pushed, and the lock of a run that was
    /// interrupted is released, so that the commit is tested again later
    /// instead of staying locked without results.
    async fn stop(&mut self) {
        let held = self.held.as_ref().map(|claim| claim.tip.commit.clone());
        if let Some(run) = self.running.as_mut() {
            info!(
                commit = held.as_deref().unwrap_or_default(),
                "stopping the test script"
            );
            run.terminate().await;
        }
        self.running = None;
        self.hand_back().await;
        info!("job stopped");
    }

    /// Before the job ends: finished results get a bounded last attempt to
    /// be pushed; the lock of a run that did not finish is released.
    async fn hand_back(&mut self) {
        if let Some(publication) = self.pending.as_mut() {
            let commit = publication.tip.commit.clone();
            let attempt = publish(&self.store, &self.source, publication, None);
            match tokio::time::timeout(SHUTDOWN_GRACE, attempt).await {
                Ok(Ok(())) => self.unspool(&commit).await,
                Err(_) if self.pending_spooled => warn!(
                    commit = %commit,
                    spool = %self.spool.dir().display(),
                    "results not pushed before exit; they wait in the spool for the next start"
                ),
                Ok(Err(err)) => warn!(commit = %commit, "results not pushed before exit: {err}"),
                Err(_) => warn!(
                    commit = %commit,
                    "results not pushed before exit: the results repository did not accept them \
                     within {}; the commit stays locked without results",
                    format_duration(SHUTDOWN_GRACE)
                ),
            }
        } else if let Some(claim) = self.held.take() {
            let commit = claim.tip.commit;
            match tokio::time::timeout(SHUTDOWN_GRACE, self.store.unlock(&commit)).await {
                Ok(Ok(())) => {
                    info!(commit = %commit, "lock released: the commit will be tested again")
                }
                Ok(Err(err)) => warn!(commit = %commit, "lock not released: {err}"),
                Err(_) => warn!(
                    commit = %commit,
                    "lock not released: no answer from the results repository within {}",
                    format_duration(SHUTDOWN_GRACE)
                ),
            }
        }
    }

    /// Removes the spool entry of results just pushed.
    async fn unspool(&self, commit: &str) {
        let (spool, owned) = (self.spool.clone(), commit.to_owned());
        let removed = tokio::task::spawn_blocking(move || spool.remove(&owned)).await;
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(err)) => warn!(commit = %commit, "spool entry not removed: {err}"),
            Err(err) => warn!(commit = %commit, "spool entry not removed: {err}"),
        }
    }

    /// After a (re)clone: the spool's entries become the backlog, their
    /// notes hashed into the new clone. Results staged in the old clone are
    /// among them when they were spooled.
    async fn load_spool(&mut self) -> Result<(), StepError> {
        if self.pending_spooled {
            self.pending = None;
        }
        self.backlog.clear();
        let spool = self.spool.clone();
        let entries = tokio::task::spawn_blocking(move || spool.entries())
            .await
            .map_err(std::io::Error::other)??;
        for mut entry in entries {
            let commit = entry.commit.clone();
            let ours = self.config.notes_ns.as_str();
            if let Some(theirs) = entry.namespace.as_deref().filter(|ns| *ns != ours) {
                // A state directory shared by two jobs: not ours to push.
                warn!(
                    commit = %commit,
                    spool = %self.spool.dir().display(),
                    "spooled results of namespace {theirs} left in the spool: this job publishes {ours}"
                );
                continue;
            }
            let job = crate::config::job_name(&self.config);
            if let Some(theirs) = entry.job.as_deref().filter(|theirs| *theirs != job) {
                warn!(
                    commit = %commit,
                    spool = %self.spool.dir().display(),
                    "spooled results of job {theirs} left in the spool: this is job {job} (another source or branch)"
                );
                continue;
            }
            // A name git cannot write (an entry of an older icyci, or
            // edited) would fail every push of the entry: that note stays
            // behind, the verdict and outputs go.
            let namespace = &self.config.notes_ns;
            entry.notes.retain(|note| match namespace.unusable_note_name(&note.name) {
                None => true,
                Some(reason) => {
                    warn!(commit = %commit, note = %note.name, "spooled note not published: {reason}");
                    false
                }
            });
            let mut have_commit = self.has_object(&commit).await;
            if !have_commit {
                // The branch was rewritten since: fetch the commit by id. If
                // the source no longer has it, the notes still go (git
                // annotates an object it does not have), not the branch.
                let fetched = self
                    .source
                    .command("fetch")
                    .args(["--quiet", "origin"])
                    .positional([commit.as_str()])
                    .run()
                    .await;
                have_commit = fetched.is_ok() && self.has_object(&commit).await;
                if !have_commit {
                    warn!(commit = %commit, "spooled commit no longer in the source; pushing its notes only");
                    entry.branch = None;
                    entry.tag = None;
                }
            }
            if let Some(tag) = entry.tag.clone() {
                if !self.has_object(&tag.object).await {
                    warn!(commit = %commit, tag = %tag.refname, "spooled tag no longer in the source; not pushed");
                    entry.tag = None;
                }
            }
            let tip = VerifiedTip {
                commit: commit.clone(),
                tag: entry.tag.clone(),
                provenance: Provenance {
                    signature: None,
                    trusted_signers: false,
                    key_expired: None,
                },
            };
            let push_tag = tip.tag.is_some();
            let publication = if have_commit {
                self.stage_publication(tip, entry.notes, entry.branch, push_tag, entry.passed)
                    .await?
            } else {
                Publication::stage_without_commit(&self.store, tip, entry.notes, entry.passed)
                    .await?
            };
            info!(commit = %commit, "spooled results found; delivering them");
            self.backlog.push(publication);
        }
        self.backlog_backoff = backlog_backoff();
        self.backlog_due = tokio::time::Instant::now();
        Ok(())
    }

    async fn has_object(&self, id: &str) -> bool {
        self.source
            .command("cat-file")
            .args(["-e", "--end-of-options"])
            .arg(id)
            .run()
            .await
            .is_ok()
    }

    /// One push attempt for each spooled result, when due; stops at the
    /// first failure and waits longer next time.
    async fn deliver_backlog(&mut self) {
        if self.backlog.is_empty() || tokio::time::Instant::now() < self.backlog_due {
            return;
        }
        while let Some(publication) = self.backlog.first_mut() {
            let commit = publication.tip.commit.clone();
            match publish(&self.store, &self.source, publication, Some(1)).await {
                Ok(()) => {
                    info!(commit = %commit, "spooled results delivered");
                    self.backlog.remove(0);
                    self.unspool(&commit).await;
                    self.backlog_backoff = backlog_backoff();
                }
                Err(err) => {
                    let delay = self.backlog_backoff.next_delay();
                    warn!(
                        commit = %commit,
                        waiting = self.backlog.len(),
                        retry_in = %format_duration(round_to_millis(delay)),
                        "spooled results not delivered: {err}"
                    );
                    self.backlog_due = tokio::time::Instant::now() + delay;
                    return;
                }
            }
        }
    }

    async fn source_tip(&self) -> Result<String, GitError> {
        let tracking = format!("refs/remotes/origin/{}^{{commit}}", self.config.branch);
        self.source
            .command("rev-parse")
            .args(["--verify", "--quiet", "--end-of-options"])
            .arg(tracking)
            .run()
            .await
    }

    fn output_files(&self) -> (PathBuf, PathBuf) {
        let private = self.workspace.private_dir();
        (private.join("stdout"), private.join("stderr"))
    }

    /// The whole output, kept with `-keep-full-output`.
    fn full_output_files(&self) -> (PathBuf, PathBuf) {
        let private = self.workspace.private_dir();
        (private.join("full-stdout"), private.join("full-stderr"))
    }
}

/// The branch tip a fetch brought.
struct FetchedTip {
    tip: String,
    /// Whether tags came with it.
    tags: bool,
}

/// `work`, given up (and its git child killed) after `limit`.
async fn within<T>(
    limit: Option<Duration>,
    what: &'static str,
    work: impl std::future::Future<Output = T>,
) -> Result<T, StepError> {
    let Some(limit) = limit else {
        return Ok(work.await);
    };
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| StepError::NoAnswer { what, limit })
}

/// How often a job waiting on another instance's lock asks the results
/// repository whether that lock moved: ten poll intervals, within 1 s and
/// 10 min.
fn relook_interval(poll_interval: Duration) -> Duration {
    (poll_interval * 10).clamp(Duration::from_secs(1), Duration::from_secs(600))
}

/// `wait` lengthened by up to a tenth, so that instances started together
/// do not keep polling (and racing) in step.
fn with_jitter(wait: Duration) -> Duration {
    if wait.is_zero() {
        return wait;
    }
    let tenth = u64::try_from(wait.as_micros() / 10).unwrap_or(u64::MAX);
    wait + Duration::from_micros(fastrand::u64(..=tenth))
}

/// Failed push rounds of spooled results before the cycle moves on.
const IN_CYCLE_PUSH_FAILURES: u32 = 3;
/// The same with `-once`, which then exits (status 4): some seconds of
/// retries with the push's backoff, for a short outage.
const ONCE_PUSH_FAILURES: u32 = 5;

/// Delays between delivery attempts of the backlog.
fn backlog_backoff() -> Backoff {
    Backoff::new(Duration::from_secs(1), Duration::from_secs(60))
}

/// A locked commit whose run or staging fails this often is given up.
const MAX_RUN_ATTEMPTS: u32 = 3;

/// How long a stopping job may spend handing back what it owns.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// With `-once`, a clone is tried this many times before giving up.
const ONCE_CLONE_ATTEMPTS: u32 = 5;

/// How often a polling job reaps the processes it adopted (see `poll`).
const REAP_WHILE_POLLING: Duration = Duration::from_secs(60);

/// Keeps the lease of the lock on `commit` alive while the script runs. A
/// failed renewal is a warning only: the run goes on, and a later renewal
/// may succeed before the lease ends.
async fn renew_lease(
    store: &NotesStore,
    commit: &str,
    lease: Duration,
) -> std::convert::Infallible {
    let interval = crate::lease::renew_interval(lease);
    let mut lost = false;
    loop {
        tokio::time::sleep(interval).await;
        if lost {
            continue;
        }
        // A results repository that takes the connection and never answers
        // must not hold up the renewals after this one: each gets until
        // the next is due.
        let Ok(renewed) = tokio::time::timeout(interval, store.renew(commit)).await else {
            warn!(
                commit = %commit,
                "lease not renewed: the results repository gave no answer within {}; trying again",
                format_duration(interval)
            );
            continue;
        };
        match renewed {
            Ok(RenewOutcome::Renewed(until)) => {
                tracing::debug!(commit = %commit, "lease renewed until {}", crate::lease::format_unix(until));
            }
            Ok(RenewOutcome::Lost(found)) => {
                lost = true;
                warn!(
                    commit = %commit,
                    "the lock is no longer ours (found {}); the run goes on, its results are still pushed",
                    found.as_deref().map_or("no lock note".into(), |t| format!("{:?}", t.lines().nth(1).unwrap_or(t)))
                );
            }
            Err(err) => warn!(commit = %commit, "lease not renewed: {err}"),
        }
    }
}

async fn sleep_or_forever(limit: Option<Duration>) {
    match limit {
        Some(limit) => tokio::time::sleep(limit).await,
        None => std::future::pending().await,
    }
}
