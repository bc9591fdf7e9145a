//! `icyci site` and the daemon's `-site-dir`: a static HTML site of the
//! results, built from the notes alone.
//!
//! The site is plain HTML and one stylesheet, without JavaScript, with
//! relative links only: `index.html` (the commit × namespace matrix of the
//! newest commits of a branch), `commit/<id>.html` for every commit with
//! notes, `raw/<id>/<ns>/<name>` for its logs and extra notes byte for byte,
//! `feed.atom`, and `badge/<ns>.svg` for the branch tip.
//!
//! A refresh costs the same however long the history: it reads the notes
//! of the shown commits only ([`ResultsReader::index`]), and the manifest
//! ([`manifest`]) lets it skip every commit whose notes did not change. A
//! file is written only when its bytes change; the files of commits that
//! are no longer shown are removed, so the directory does not grow without
//! bound under a daemon.
//!
//! The one thing that depends on the clock is whether a lock is stale (its
//! lease ended with no result, see [`crate::viewer::stale`]), judged once
//! per build; the manifest records it, so that a page is rendered again
//! when a lease ends.

mod ansi;
mod escape;
mod manifest;
mod output;
pub use output::SiteDir;
mod pages;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use thiserror::Error;
use tracing::{info, warn};

use crate::commands::SiteArgs;
use crate::config::JobConfig;
use crate::duration::format_duration;
use crate::git::{Git, GitError};
use crate::reader::{CommitInfo, CommitState, Namespace, NoteIndex, ResultsReader, CORE_NOTES};
use crate::viewer::source::{self, SourceError};
use crate::viewer::stale::{LockJudge, ShownState};
use manifest::{
    commit_files, commit_page_path, is_raw_note, raw_path, CommitNotes, Manifest, StaleNamespaces,
};
use pages::{Row, Section, SiteInfo};

/// Commits whose notes are read in one `cat-file` (bounds the memory a
/// full build holds at once when logs are large).
const RENDER_BATCH: usize = 10;

/// Commits shown by a daemon's site.
const DAEMON_SITE_COMMITS: usize = 50;

/// Time limit of a daemon's site refresh.
const DAEMON_SITE_LIMIT: Duration = Duration::from_secs(300);

/// A site that cannot be built.
#[derive(Debug, Error)]
pub enum SiteError {
    /// The results cannot be opened.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Reading the results failed.
    #[error(transparent)]
    Git(#[from] GitError),
    /// Reading or writing the output directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The output path exists and is not a directory.
    #[error("{0} is not a directory")]
    NotADirectory(String),
    /// The output directory holds files that are not an icyci site.
    #[error(
        "{0} is not empty and holds no icyci site (no .icyci-site file); \
         choose a new or empty directory"
    )]
    NotASite(String),
    /// No namespace to show.
    #[error("no icyci results notes{} in {label}", glob.as_ref().map(|g| format!(" matching {g:?}")).unwrap_or_default())]
    NoNamespaces {
        /// Where the results were read.
        label: String,
        /// The `--ns` glob.
        glob: Option<String>,
    },
    /// A note's blob could not be read.
    #[error("note blob {0} is missing from the repository")]
    MissingBlob(String),
}

impl SiteError {
    /// Whether the user asked for something that cannot be (a path that is
    /// not a repository, an unknown branch, an output directory that is not
    /// a site), as opposed to the environment failing.
    fn is_bad_input(&self) -> bool {
        match self {
            SiteError::Source(source) => source.is_bad_input(),
            SiteError::NotADirectory(_)
            | SiteError::NotASite(_)
            | SiteError::NoNamespaces { .. } => true,
            SiteError::Git(_) | SiteError::Io { .. } | SiteError::MissingBlob(_) => false,
        }
    }
}

/// What to show.
#[derive(Debug, Clone)]
pub struct SiteOptions {
    /// Where the results come from, for titles (no credentials).
    pub label: String,
    /// The branch name shown in titles.
    pub branch: String,
    /// Only namespaces matching this glob.
    pub ns: Option<String>,
    /// Number of commits.
    pub count: usize,
    /// After how long a lock without a lease (the original icyCI's) is
    /// shown as stale: a daemon's `-stale-lock-after`; `None`: never.
    pub stale_lock_after: Option<Duration>,
}

/// What a build did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuildSummary {
    /// Commit pages rendered (new or changed notes).
    pub pages_rendered: usize,
    /// Commit pages left alone (notes unchanged).
    pub pages_kept: usize,
    /// Files whose bytes changed and were written.
    pub files_written: usize,
    /// Files of commits or namespaces no longer shown, removed.
    pub files_removed: usize,
}

impl fmt::Display for BuildSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} commit pages rendered, {} unchanged; {} files written, {} removed",
            self.pages_rendered, self.pages_kept, self.files_written, self.files_removed
        )
    }
}

/// Exit status of bad input, as for `icyci results`.
const BAD_INPUT_EXIT: u8 = 2;

/// `icyci site`: 0 when the site was written, 2 on bad input, 1 when the
/// results cannot be read or the site cannot be written.
pub fn site(args: SiteArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("icyci site: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(summary) => {
            println!("site written to {}: {summary}", args.out.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("icyci site: {err}");
            if err.is_bad_input() {
                ExitCode::from(BAD_INPUT_EXIT)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(args: &SiteArgs) -> Result<BuildSummary, SiteError> {
    let opened = source::open(&args.repo, args.branch.as_deref()).await?;
    let branch = branch_name(&opened.reader, &opened.rev).await;
    let options = SiteOptions {
        label: opened.label.clone(),
        branch,
        ns: args.ns.clone(),
        count: args.count,
        // No threshold is known outside a daemon: such a lock stays running.
        stale_lock_after: None,
    };
    build(&opened.reader, &opened.rev, &args.out, &options).await
}

/// The branch `rev` names, for titles: `refs/heads/main` and a `HEAD`
/// pointing at it both show as `main`.
async fn branch_name(reader: &ResultsReader, rev: &str) -> String {
    let full = if rev == "HEAD" {
        let head = reader
            .git()
            .command("symbolic-ref")
            .args(["--quiet", "HEAD"])
            .run()
            .await;
        head.unwrap_or_else(|_| rev.to_owned())
    } else {
        rev.to_owned()
    };
    full.strip_prefix("refs/heads/")
        .or_else(|| full.strip_prefix("refs/remotes/"))
        .unwrap_or(&full)
        .to_owned()
}

/// Refreshes a daemon's site in `dir` after a push, from the daemon's own
/// notes repository `repo`: its `refs/notes/<ns>.*` were just pushed to the
/// results repository, and it reads the source's commits (through its
/// alternates) back from `tip`, the commit just tested. A failure is a
/// warning: the site never stops the daemon.
pub async fn refresh_daemon_site(repo: &Git, tip: &str, config: &JobConfig, dir: &Path) {
    let reader = ResultsReader::new(repo.clone(), "refs/notes/");
    let rev = tip.to_owned();
    let options = SiteOptions {
        label: config.results.to_string(),
        branch: config.branch.to_string(),
        // The clone holds the notes of its own namespace only.
        ns: Some(config.notes_ns.as_str().to_owned()),
        count: DAEMON_SITE_COMMITS,
        // The daemon's own rule for taking over a lock without a lease.
        stale_lock_after: config.stale_lock_after,
    };
    let site = dir.display();
    match tokio::time::timeout(DAEMON_SITE_LIMIT, build(&reader, &rev, dir, &options)).await {
        Ok(Ok(summary)) => info!(site = %site, "site refreshed: {summary}"),
        Ok(Err(err)) => warn!(site = %site, "site not refreshed: {err}"),
        Err(_) => warn!(
            site = %site,
            "site not refreshed: not done within {}",
            format_duration(DAEMON_SITE_LIMIT)
        ),
    }
}

/// Builds or refreshes the site in `out` from the newest `options.count`
/// commits of `rev`.
pub async fn build(
    reader: &ResultsReader,
    rev: &str,
    out: &Path,
    options: &SiteOptions,
) -> Result<BuildSummary, SiteError> {
    let namespaces = reader.namespaces(options.ns.as_deref()).await?;
    if namespaces.is_empty() {
        return Err(SiteError::NoNamespaces {
            label: options.label.clone(),
            glob: options.ns.clone(),
        });
    }
    let commits = reader.commits(rev, options.count).await?;
    let ids: Vec<String> = commits.iter().map(|c| c.id.clone()).collect();
    let index = reader.index(&ids, &note_refs(&namespaces)).await?;
    let names: Vec<String> = namespaces.iter().map(|ns| ns.name.clone()).collect();
    let states = LockJudge::at_now(options.stale_lock_after)
        .states(reader, &index, &ids, &names)
        .await?;
    // Only now, with the results read, is the directory touched.
    let dir = SiteDir::new(out);
    let old = blocking({
        let dir = dir.clone();
        move || dir.prepare()
    })
    .await?;

    let (manifest, to_render) = plan(&dir, &old, &namespaces, &commits, &index, &states);
    let mut summary = BuildSummary {
        pages_kept: manifest.commits.len() - to_render.len(),
        ..BuildSummary::default()
    };
    for batch in to_render.chunks(RENDER_BATCH) {
        let blobs: BTreeSet<&str> = batch
            .iter()
            .flat_map(|job| job.notes.values().map(String::as_str))
            .collect();
        let contents = reader
            .read_blobs(&blobs.into_iter().collect::<Vec<_>>())
            .await?;
        let (dir, batch) = (dir.clone(), batch.to_vec());
        summary.pages_rendered += batch.len();
        summary.files_written += blocking(move || write_pages(&dir, &batch, &contents)).await?;
    }

    let shared = shared_files(options, &names, &commits, &states, &manifest);
    let (written, removed) = blocking({
        let dir = dir.clone();
        move || finish(&dir, &old, &manifest, &shared)
    })
    .await?;
    summary.files_written += written;
    summary.files_removed = removed;
    Ok(summary)
}

/// The manifest of this run, and the commits whose pages must be rendered:
/// those with notes, unless the last run rendered them from the same notes
/// and the same stale locks, and their files are still there. `states`
/// holds the state of each of `commits` in each of `namespaces`.
fn plan(
    dir: &SiteDir,
    old: &Manifest,
    namespaces: &[Namespace],
    commits: &[CommitInfo],
    index: &NoteIndex,
    states: &[Vec<ShownState>],
) -> (Manifest, Vec<PageJob>) {
    let names: Vec<String> = namespaces.iter().map(|ns| ns.name.clone()).collect();
    let mut manifest = Manifest::new(names.clone());
    let mut to_render = Vec::new();
    for (commit, states) in commits.iter().zip(states) {
        let notes = commit_notes(index, &commit.id, namespaces);
        if notes.is_empty() {
            continue;
        }
        let stale = stale_namespaces(&names, states);
        let unchanged = rendered_from(old, &commit.id, &notes, &stale)
            && dir.has_all(&commit_files(&commit.id, &notes));
        if !unchanged {
            to_render.push(PageJob {
                commit: commit.clone(),
                states: names.iter().cloned().zip(states.iter().cloned()).collect(),
                notes: notes.clone(),
            });
        }
        manifest.commits.insert(commit.id.clone(), notes);
        manifest.set_stale(&commit.id, stale);
    }
    (manifest, to_render)
}

/// The namespaces of `names` whose state in `states` is a stale lock.
fn stale_namespaces(names: &[String], states: &[ShownState]) -> StaleNamespaces {
    names
        .iter()
        .zip(states)
        .filter(|(_, state)| state.stale.is_some())
        .map(|(ns, _)| ns.clone())
        .collect()
}

/// Whether the last run, by this renderer, rendered `commit`'s page from
/// `notes`, with stale locks in the namespaces `stale`.
fn rendered_from(
    old: &Manifest,
    commit: &str,
    notes: &CommitNotes,
    stale: &StaleNamespaces,
) -> bool {
    old.renderer == manifest::RENDERER
        && old.commits.get(commit) == Some(notes)
        && old.stale_of(commit) == *stale
}

/// One commit page to render.
#[derive(Debug, Clone)]
struct PageJob {
    commit: CommitInfo,
    /// State per shown namespace, in order.
    states: Vec<(String, ShownState)>,
    notes: CommitNotes,
}

/// Every note ref looked up on each commit: the core notes and the extra
/// notes of every shown namespace.
fn note_refs(namespaces: &[Namespace]) -> Vec<String> {
    namespaces
        .iter()
        .flat_map(|ns| {
            CORE_NOTES
                .iter()
                .map(|n| (*n).to_owned())
                .chain(ns.extra_notes.iter().cloned())
                .map(move |name| format!("{}.{name}", ns.name))
        })
        .collect()
}

fn commit_notes(index: &NoteIndex, commit: &str, namespaces: &[Namespace]) -> CommitNotes {
    let mut notes = CommitNotes::new();
    for ns in namespaces {
        let names = CORE_NOTES
            .iter()
            .copied()
            .chain(ns.extra_notes.iter().map(String::as_str));
        for name in names {
            if let Some(blob) = index.blob(commit, &ns.name, name) {
                notes.insert((ns.name.clone(), name.to_owned()), blob.to_owned());
            }
        }
    }
    notes
}

/// Renders and writes the pages and raw files of `jobs`; the number of
/// files written.
fn write_pages(
    dir: &SiteDir,
    jobs: &[PageJob],
    contents: &HashMap<String, Vec<u8>>,
) -> Result<usize, SiteError> {
    let mut written = 0;
    for job in jobs {
        let id = &job.commit.id;
        let note = |ns: &str, name: &str| -> Result<Option<&[u8]>, SiteError> {
            match job.notes.get(&(ns.to_owned(), name.to_owned())) {
                None => Ok(None),
                Some(blob) => contents
                    .get(blob)
                    .map(|c| Some(c.as_slice()))
                    .ok_or_else(|| SiteError::MissingBlob(blob.clone())),
            }
        };
        let mut sections = Vec::new();
        for (ns, state) in &job.states {
            let extras: Vec<(&str, usize)> = job
                .notes
                .keys()
                .filter(|(n, name)| n == ns && is_raw_note(name) && !name.starts_with("output."))
                .map(|(_, name)| Ok((name.as_str(), note(ns, name)?.map_or(0, <[u8]>::len))))
                .collect::<Result<_, SiteError>>()?;
            let section = Section {
                ns,
                state: state.clone(),
                verdict: note(ns, "result.failed")?.or(note(ns, "result.passed")?),
                lock: note(ns, "locked")?,
                stdout: note(ns, "output.stdout")?,
                stderr: note(ns, "output.stderr")?,
                extras,
            };
            let empty = section.verdict.is_none()
                && section.lock.is_none()
                && section.stdout.is_none()
                && section.stderr.is_none()
                && section.extras.is_empty();
            if !empty {
                sections.push(section);
            }
        }
        let page = pages::commit_page(&job.commit, &sections);
        written += usize::from(dir.write(&commit_page_path(id), page.as_bytes())?);
        for ((ns, name), blob) in job.notes.iter().filter(|((_, n), _)| is_raw_note(n)) {
            let bytes = contents
                .get(blob)
                .ok_or_else(|| SiteError::MissingBlob(blob.clone()))?;
            written += usize::from(dir.write(&raw_path(id, ns, name), bytes)?);
        }
    }
    Ok(written)
}

/// The files every refresh renders: index, feed, badges and stylesheet.
fn shared_files(
    options: &SiteOptions,
    names: &[String],
    commits: &[CommitInfo],
    states: &[Vec<ShownState>],
    manifest: &Manifest,
) -> Vec<(String, String)> {
    let site = SiteInfo {
        label: &options.label,
        branch: &options.branch,
        namespaces: names,
    };
    let rows: Vec<Row<'_>> = commits
        .iter()
        .zip(states)
        .map(|(commit, states)| Row {
            commit,
            states: states.clone(),
            has_page: manifest.commits.contains_key(&commit.id),
        })
        .collect();
    let mut files = vec![
        ("index.html".to_owned(), pages::index(&site, &rows)),
        ("feed.atom".to_owned(), pages::feed(&site, &rows)),
        ("style.css".to_owned(), pages::STYLE.to_owned()),
    ];
    for (position, ns) in names.iter().enumerate() {
        let state = rows.first().map_or_else(
            || CommitState::Untested.into(),
            |tip| tip.states[position].clone(),
        );
        files.push((manifest::badge_path(ns), pages::badge(ns, &state)));
    }
    files
}

/// Writes the shared files, removes the files of the last run that this
/// one does not have, and saves the manifest last (a run that stops
/// half-way renders again what it did not record). Returns the files
/// written and removed.
fn finish(
    dir: &SiteDir,
    old: &Manifest,
    manifest: &Manifest,
    shared: &[(String, String)],
) -> Result<(usize, usize), SiteError> {
    let mut written = 0;
    for (path, text) in shared {
        written += usize::from(dir.write(path, text.as_bytes())?);
    }
    let kept: BTreeSet<String> = manifest.files().into_iter().collect();
    let mut removed = 0;
    for file in old.files().into_iter().filter(|f| !kept.contains(f)) {
        removed += usize::from(dir.remove(&file)?);
    }
    written += usize::from(dir.write(manifest::MANIFEST_FILE, manifest.render().as_bytes())?);
    Ok((written, removed))
}

/// Runs file-system work off the async runtime, so that the daemon's
/// signals and timers stay responsive while a site is written.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SiteError> + Send + 'static,
) -> Result<T, SiteError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| SiteError::Io {
            path: "site writer".to_owned(),
            source: std::io::Error::other(err),
        })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::viewer::stale::StaleLock;

    const A: &str = "0123456789abcdef0123456789abcdef01234567";
    const BLOB: &str = "89abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn a_page_is_rendered_again_when_its_lock_becomes_stale() {
        let names = ["icyci".to_owned(), "icyci-arm".to_owned()];
        let mut notes = CommitNotes::new();
        notes.insert(("icyci".into(), "locked".into()), BLOB.into());
        let running: Vec<ShownState> =
            vec![CommitState::Running.into(), CommitState::Untested.into()];
        let stale = vec![
            ShownState {
                state: CommitState::Running,
                stale: Some(StaleLock {
                    reason: "lease expired 2020-01-01T00:00:00Z".into(),
                    holder: None,
                    lease_until: Some(1_577_836_800),
                }),
            },
            CommitState::Untested.into(),
        ];
        assert!(stale_namespaces(&names, &running).is_empty());
        let stale_set = stale_namespaces(&names, &stale);
        assert_eq!(stale_set, ["icyci".to_owned()].into());

        // Rendered while running: same notes, now stale, so render again.
        let mut old = Manifest::new(names.to_vec());
        old.commits.insert(A.into(), notes.clone());
        assert!(rendered_from(&old, A, &notes, &StaleNamespaces::new()));
        assert!(!rendered_from(&old, A, &notes, &stale_set));
        // Rendered stale: kept while it stays stale, rendered when it is not.
        old.set_stale(A, stale_set.clone());
        assert!(rendered_from(&old, A, &notes, &stale_set));
        assert!(!rendered_from(&old, A, &notes, &StaleNamespaces::new()));
        // Through the manifest file, as the next run reads it.
        let reread = Manifest::parse(&old.render());
        assert!(rendered_from(&reread, A, &notes, &stale_set));
        // Another renderer's pages are all rendered again.
        old.renderer = "1 0.0.0".into();
        assert!(!rendered_from(&old, A, &notes, &stale_set));
    }
}
