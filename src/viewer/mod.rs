//! `icyci results`, `icyci show` and `icyci status`: reading results back
//! through [`crate::reader`], from a repository opened by [`source`].
//!
//! Each command runs on a current-thread runtime of its own and ends with
//! an exit status; every failure is one line `icyci <command>: <reason>` on
//! stderr. Bad input (an unknown commit, branch or namespace, a path that is
//! not a repository) exits 2, a failure of the environment (an unreachable
//! URL, a git that fails) exits 1 — except for `status`, whose 1 means
//! "failed", so all its errors exit 2.

mod results;
mod show;
pub mod source;
pub mod stale;
mod status;
mod terminal;

use std::future::Future;
use std::io::Write;
use std::process::ExitCode;

use thiserror::Error;

use crate::commands::{ResultsArgs, ShowArgs, StatusArgs};
use crate::git::{Git, GitError};
use crate::reader::{Namespace, ResultsReader};
use source::SourceError;

/// Exit status of bad input: unknown commit, branch or namespace.
const USAGE_EXIT: u8 = 2;

/// Why a reading command could not answer.
#[derive(Debug, Error)]
pub enum ViewerError {
    /// The results repository could not be opened.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The commit does not resolve and has no notes.
    #[error("unknown commit {0:?}")]
    UnknownCommit(String),
    /// `--ns` matches no namespace with notes.
    #[error("no notes of a namespace matching {glob:?} in {place}")]
    NoNamespace {
        /// The `--ns` value.
        glob: String,
        /// The results repository.
        place: String,
    },
    /// The repository holds no results of any namespace: nothing was
    /// tested there yet, or the results are elsewhere.
    #[error("no results notes in {place}: nothing is tested there yet, or the results are in another repository ({NO_RESULTS_HINT})")]
    NoResults {
        /// The results repository.
        place: String,
    },
    /// `--note` names a note that is not on the commit.
    #[error("no note {name:?} on {commit}{}", in_namespaces(.namespaces))]
    NoNote {
        /// The note name.
        name: String,
        /// The commit id.
        commit: String,
        /// The namespaces searched.
        namespaces: Vec<String>,
    },
    /// `--note` names a note present in several namespaces.
    #[error("note {name:?} is in several namespaces ({}); choose one with --ns", .namespaces.join(", "))]
    AmbiguousNote {
        /// The note name.
        name: String,
        /// The namespaces that have it.
        namespaces: Vec<String>,
    },
    /// A note name that cannot be part of a ref name.
    #[error("invalid note name {0:?}")]
    InvalidNoteName(String),
    /// Writing a file or standard output failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file, or `standard output`.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A git command failed.
    #[error(transparent)]
    Git(#[from] GitError),
}

impl ViewerError {
    /// Whether the user asked for something that is not there, as opposed
    /// to the environment failing.
    fn is_bad_input(&self) -> bool {
        match self {
            ViewerError::Source(source) => source.is_bad_input(),
            ViewerError::UnknownCommit(_)
            | ViewerError::NoNamespace { .. }
            | ViewerError::NoResults { .. }
            | ViewerError::NoNote { .. }
            | ViewerError::AmbiguousNote { .. }
            | ViewerError::InvalidNoteName(_) => true,
            ViewerError::Write { .. } | ViewerError::Git(_) => false,
        }
    }
}

fn in_namespaces(namespaces: &[String]) -> String {
    match namespaces {
        [] => String::new(),
        [one] => format!(" in namespace {one}"),
        many => format!(" in namespaces {}", many.join(", ")),
    }
}

/// `icyci results`.
pub fn results(args: ResultsArgs) -> ExitCode {
    run("results", results::run(args), error_exit)
}

/// `icyci show`.
pub fn show(args: ShowArgs) -> ExitCode {
    run("show", show::run(args), error_exit)
}

/// `icyci status`.
pub fn status(args: StatusArgs) -> ExitCode {
    run("status", status::run(args), |_| ExitCode::from(USAGE_EXIT))
}

fn error_exit(err: &ViewerError) -> ExitCode {
    if err.is_bad_input() {
        ExitCode::from(USAGE_EXIT)
    } else {
        ExitCode::FAILURE
    }
}

/// Runs `task` on a current-thread runtime; a failure is reported as one
/// line and mapped to an exit status by `exit_for`.
fn run(
    command: &str,
    task: impl Future<Output = Result<ExitCode, ViewerError>>,
    exit_for: impl FnOnce(&ViewerError) -> ExitCode,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            report(command, &format!("cannot start the runtime: {err}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(task) {
        Ok(exit) => exit,
        Err(err) => {
            report(command, &err.to_string());
            exit_for(&err)
        }
    }
}

/// Writes `icyci <command>: <message>` to stderr on a single line (git's
/// messages may span several).
fn report(command: &str, message: &str) {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    // Nothing is left to tell anyone when stderr itself is gone.
    let _ = writeln!(std::io::stderr(), "icyci {command}: {}", lines.join(" | "));
}

/// Writes `bytes` to standard output. A reader that went away (`| head`)
/// is not an error: there is no one left to write to.
fn write_stdout(bytes: &[u8]) -> Result<(), ViewerError> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => Err(ViewerError::Write {
            path: "standard output".to_owned(),
            source: err,
        }),
        _ => Ok(()),
    }
}

/// A commit named on the command line.
#[derive(Debug, Clone)]
struct ResolvedCommit {
    /// Its full id.
    id: String,
    /// Whether the repository has it (a full id of a commit the results
    /// repository lacks may still have notes there).
    known: bool,
}

/// Resolves `spec` to a commit of the repository of `git`. A full object id
/// is taken as it is when the commit is missing: results pushed with
/// `-push-source-to-results=false` carry notes of commits not in the
/// repository.
async fn resolve_commit(git: &Git, spec: &str) -> Result<ResolvedCommit, ViewerError> {
    let resolved = git
        .command("rev-parse")
        .args(["--verify", "--quiet", "--end-of-options"])
        .arg(format!("{spec}^{{commit}}"))
        .output()
        .await?;
    if resolved.status.success() {
        return Ok(ResolvedCommit {
            id: resolved.stdout_text(),
            known: true,
        });
    }
    let is_full_id = matches!(spec.len(), 40 | 64) && spec.bytes().all(|b| b.is_ascii_hexdigit());
    if is_full_id {
        Ok(ResolvedCommit {
            id: spec.to_ascii_lowercase(),
            known: false,
        })
    } else {
        Err(ViewerError::UnknownCommit(spec.to_owned()))
    }
}

/// Where to look when a repository has no results notes.
const NO_RESULTS_HINT: &str =
    "read them with --repo URL or --remote NAME, or fetch 'refs/notes/*:refs/notes/*'";

/// The namespaces matching `glob`; an error when `glob` is given and none
/// matches, so that a typo in `--ns` does not read as "untested". With no
/// `glob` and no namespace at all, `command` (`results`, `show`) still
/// answers, with one warning line: the notes were perhaps never fetched.
async fn select_namespaces(
    reader: &ResultsReader,
    glob: Option<&str>,
    place: &str,
    command: &str,
) -> Result<Vec<Namespace>, ViewerError> {
    let namespaces = reader.namespaces(glob).await?;
    match glob {
        Some(glob) if namespaces.is_empty() => Err(ViewerError::NoNamespace {
            glob: glob.to_owned(),
            place: place.to_owned(),
        }),
        None if namespaces.is_empty() => {
            report(
                command,
                &format!("warning: no results notes in {place} ({NO_RESULTS_HINT})"),
            );
            Ok(namespaces)
        }
        _ => Ok(namespaces),
    }
}

/// The note names that decide a commit's state in `namespaces`.
fn state_note_names<'a>(namespaces: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    namespaces
        .into_iter()
        .flat_map(|ns| {
            ["locked", "result.passed", "result.failed"].map(|name| format!("{ns}.{name}"))
        })
        .collect()
}

/// The first `SHORT_ID` characters of a commit id, as shown in tables.
fn short_id(id: &str) -> &str {
    id.get(..SHORT_ID).unwrap_or(id)
}

/// Length of the abbreviated commit ids in tables: unique in repositories
/// far bigger than a results repository gets.
const SHORT_ID: usize = 10;

/// `YYYY-MM-DD HH:MM` in UTC.
fn format_date(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        .map(|time| time.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}
