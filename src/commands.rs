//! The subcommands beside the daemon: `icyci demo`, and the readers of
//! results (`results`, `show`, `status`, `site`). Their arguments are parsed
//! with clap; the daemon's own Go-style flags live in [`crate::cli`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Names that select a subcommand instead of the daemon's flags.
pub const SUBCOMMANDS: [&str; 6] = ["demo", "results", "show", "status", "site", "retest"];

/// `icyci <subcommand> ...`
#[derive(Debug, Parser)]
#[command(
    name = "icyci",
    version,
    about = "CI daemon that tests signed commits and publishes results as git notes"
)]
pub struct Command {
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Run one full cycle on throwaway repositories and print the results.
    Demo,
    /// One row per commit of a branch, one column per namespace.
    ///
    /// States: passed, failed, running (locked, no result yet), stale (locked,
    /// no result, and the lock's lease has ended: its tester died; an instance
    /// takes the commit over when it finds it as its branch tip, and `icyci
    /// retest` removes the lock by hand) or untested. In JSON a stale lock
    /// stays "running" in "results" and is named in "stale".
    Results(ResultsArgs),
    /// The verdict, output and extra notes of one commit.
    Show(ShowArgs),
    /// Exit 0 when a commit passed in every selected namespace, 1 when any
    /// failed, 8 when any is still running (a stale lock too) or untested, 2
    /// when the question cannot be answered.
    Status(StatusArgs),
    /// Write a static HTML site of the results.
    Site(SiteArgs),
    /// Remove a commit's lock and result notes from one namespace, so that
    /// the daemon tests it again.
    Retest(RetestArgs),
}

/// Where results are read from.
#[derive(Debug, Clone, Args)]
pub struct RepoArgs {
    /// Results repository: a local path or any URL git accepts (a URL is
    /// fetched into a cache). Default: the repository in the current
    /// directory.
    #[arg(long, value_name = "PATH_OR_URL", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub repo: Option<String>,
    /// Read the notes of this remote of the local repository (fetched into
    /// a private ref namespace; your own refs/notes are left alone).
    #[arg(long, value_name = "NAME", conflicts_with = "repo")]
    pub remote: Option<String>,
}

/// Output format of `icyci results`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns, coloured on a terminal.
    Table,
    /// One JSON document, for scripts.
    Json,
}

/// `icyci results`
#[derive(Debug, Clone, Args)]
pub struct ResultsArgs {
    /// Where to read.
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Branch to list (default: the results' branch matching the current
    /// branch, else HEAD).
    #[arg(long, value_name = "NAME")]
    pub branch: Option<String>,
    /// Only namespaces matching this glob (e.g. 'icyci-*').
    #[arg(long, value_name = "GLOB")]
    pub ns: Option<String>,
    /// Number of commits.
    #[arg(short = 'n', default_value_t = 20)]
    pub count: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `icyci show`
#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    /// The commit (any revision git accepts).
    pub commit: String,
    /// Where to read.
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Only this namespace (default: every namespace with notes on it).
    #[arg(long, value_name = "NS")]
    pub ns: Option<String>,
    /// Write this extra note (or `output.stdout`, ...) to --output instead.
    #[arg(long, value_name = "NAME", requires = "output")]
    pub note: Option<String>,
    /// File for --note, written byte for byte (`-` for stdout).
    #[arg(long, value_name = "FILE", requires = "note")]
    pub output: Option<PathBuf>,
}

/// `icyci status`
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The commit (any revision git accepts).
    pub commit: String,
    /// Where to read.
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Only namespaces matching this glob (default: all).
    #[arg(long, value_name = "GLOB")]
    pub ns: Option<String>,
}

/// `icyci site`
#[derive(Debug, Clone, Args)]
pub struct SiteArgs {
    /// Where to read.
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Directory the site is written to (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Branch to show (default as for `results`).
    #[arg(long, value_name = "NAME")]
    pub branch: Option<String>,
    /// Only namespaces matching this glob.
    #[arg(long, value_name = "GLOB")]
    pub ns: Option<String>,
    /// Number of commits.
    #[arg(short = 'n', default_value_t = 50)]
    pub count: usize,
}

/// `icyci retest`
#[derive(Debug, Clone, Args)]
pub struct RetestArgs {
    /// The commit's full id.
    pub commit: String,
    /// Results repository (any URL or path git accepts).
    #[arg(long, value_name = "URL")]
    pub results_repo: String,
    /// Notes namespace.
    #[arg(long, value_name = "NS", default_value = "icyci")]
    pub ns: String,
    /// Remove the lock even while a live lease holds it.
    #[arg(long)]
    pub force: bool,
}
