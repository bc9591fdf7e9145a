//! Where the results are read from: a local repository, a remote of the
//! local repository, or a URL mirrored into the user's cache directory.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::commands::RepoArgs;
use crate::config::mask_credentials;
use crate::git::{is_valid_branch_name, one_line, Git, GitError};
use crate::reader::ResultsReader;

/// A results source that cannot be read.
#[derive(Debug, Error)]
pub enum SourceError {
    /// The path is not a git repository.
    #[error("{0} is not a git repository")]
    NotARepository(String),
    /// Fetching from a URL or remote failed.
    #[error("cannot fetch results from {from}: {reason}")]
    Fetch {
        /// The URL (credentials masked) or remote name.
        from: String,
        /// Git's message.
        reason: String,
    },
    /// The branch does not exist there.
    #[error("no branch {branch:?} in {place}")]
    NoBranch {
        /// The branch asked for.
        branch: String,
        /// Where it was looked for.
        place: String,
    },
    /// No branch was given and none could be chosen.
    #[error("cannot tell which branch to show in {0}; choose one with --branch")]
    AmbiguousBranch(String),
    /// A name that git would refuse, or that could be read as an option.
    #[error("invalid {what} {name:?}")]
    InvalidName {
        /// What kind of name.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// No cache directory (neither XDG_CACHE_HOME nor HOME is set).
    #[error("no cache directory: set XDG_CACHE_HOME or HOME")]
    NoCache,
    /// `--remote` names no remote of the repository.
    #[error("no remote named {0:?} in this repository (see `git remote -v`)")]
    NoRemote(String),
    /// Creating the cache failed.
    #[error("cannot create the cache {path}: {source}")]
    Cache {
        /// The cache directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Any other git failure.
    #[error(transparent)]
    Git(#[from] GitError),
}

impl SourceError {
    /// Whether the user named something that is not there (a path that is
    /// not a repository, an unknown branch, an invalid name), as opposed to
    /// the environment failing (network, cache, git).
    pub fn is_bad_input(&self) -> bool {
        !matches!(
            self,
            SourceError::Fetch { .. }
                | SourceError::NoCache
                | SourceError::Cache { .. }
                | SourceError::Git(_)
        )
    }
}

/// An opened results source: a reader and the revision whose commits to show.
#[derive(Debug, Clone)]
pub struct ResultsSource {
    /// Reads the notes.
    pub reader: ResultsReader,
    /// The branch (full ref) or `HEAD` whose history is listed.
    pub rev: String,
    /// Where the results come from, for titles and messages (no secrets).
    pub label: String,
}

/// Opens the source named by `repo` (see [`RepoArgs`]) and picks the
/// branch to show: `branch` when given, else a sensible default.
pub async fn open(repo: &RepoArgs, branch: Option<&str>) -> Result<ResultsSource, SourceError> {
    if let Some(branch) = branch {
        if !is_valid_branch_name(branch) {
            return Err(SourceError::InvalidName {
                what: "branch name",
                name: branch.to_owned(),
            });
        }
    }
    open_source(repo, Wanted::Branch(branch)).await
}

/// Opens the source named by `repo` for reading the notes of given commits
/// (`icyci show`, `icyci status`): no branch has to be chosen, so a results
/// repository with several branches and no `HEAD` opens too; `rev` is then
/// `HEAD`, which may not resolve.
pub async fn open_repository(repo: &RepoArgs) -> Result<ResultsSource, SourceError> {
    open_source(repo, Wanted::AnyCommit).await
}

/// What the caller of [`open_source`] needs a revision for.
#[derive(Debug, Clone, Copy)]
enum Wanted<'a> {
    /// A branch to list: this one, or a default that must exist.
    Branch(Option<&'a str>),
    /// Only commits named by the user; the default branch is a best guess.
    AnyCommit,
}

async fn open_source(repo: &RepoArgs, wanted: Wanted<'_>) -> Result<ResultsSource, SourceError> {
    match (&repo.repo, &repo.remote) {
        (Some(location), _) if Path::new(location).is_dir() => {
            open_local(Path::new(location), wanted).await
        }
        // Git reads anything without `://` and without a `host:` before
        // its first slash as a path; a missing one is a typo, not a URL to
        // fetch into a new cache.
        (Some(location), _) if is_local_path(location) && !Path::new(location).exists() => {
            Err(SourceError::NotARepository(location.clone()))
        }
        (Some(url), _) => open_url(url, wanted).await,
        (None, Some(remote)) => open_remote(remote, wanted).await,
        (None, None) => open_local(Path::new("."), wanted).await,
    }
}

/// Whether git would read `location` as a path rather than a URL.
fn is_local_path(location: &str) -> bool {
    if location.contains("://") {
        return false;
    }
    let before_slash = location.split('/').next().unwrap_or_default();
    !before_slash.contains(':')
}

/// A repository on disk, read in place.
async fn open_local(path: &Path, wanted: Wanted<'_>) -> Result<ResultsSource, SourceError> {
    let git = Git::new(path);
    // Messages name the directory, not ".".
    let label = std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string();
    ensure_repository(&git, &label).await?;
    let rev = choose_rev(&git, wanted, "refs/heads/", &label).await?;
    Ok(ResultsSource {
        reader: ResultsReader::new(git, "refs/notes/"),
        rev,
        label,
    })
}

/// The notes of `remote` of the repository in the current directory,
/// fetched into `refs/icyci/remotes/<remote>/notes/` so that the user's own
/// `refs/notes/*` are never rewritten. By hand:
/// `git fetch <remote> '+refs/notes/*:refs/icyci/remotes/<remote>/notes/*'`.
async fn open_remote(remote: &str, wanted: Wanted<'_>) -> Result<ResultsSource, SourceError> {
    if remote.starts_with('-') || !is_valid_branch_name(remote) || remote.contains('/') {
        return Err(SourceError::InvalidName {
            what: "remote name",
            name: remote.to_owned(),
        });
    }
    let git = Git::new(".");
    ensure_repository(&git, ".").await?;
    let configured = git
        .command("config")
        .args(["--get", &format!("remote.{remote}.url")])
        .output()
        .await?;
    if !configured.status.success() {
        return Err(SourceError::NoRemote(remote.to_owned()));
    }
    let prefix = format!("refs/icyci/remotes/{remote}/notes/");
    let fetched = git
        .command("fetch")
        .args(["--quiet", "--no-tags", "--prune", "--no-write-fetch-head"])
        .positional([remote.to_owned(), format!("+refs/notes/*:{prefix}*")])
        .output()
        .await?;
    if !fetched.status.success() {
        return Err(SourceError::Fetch {
            from: remote.to_owned(),
            reason: fetched.stderr,
        });
    }
    let branch = match wanted {
        Wanted::Branch(branch) => branch,
        Wanted::AnyCommit => None,
    };
    let rev = match branch {
        Some(name) => pick_branch(&git, Some(name), &format!("refs/remotes/{remote}/"), remote)
            .await
            .or(pick_branch(&git, Some(name), "refs/heads/", ".").await)?,
        None => {
            let current = current_branch(&git).await;
            let tracking = current.map(|b| format!("refs/remotes/{remote}/{b}"));
            match tracking {
                Some(tracking) if ref_exists(&git, &tracking).await => tracking,
                _ => "HEAD".to_owned(),
            }
        }
    };
    Ok(ResultsSource {
        reader: ResultsReader::new(git, prefix),
        rev,
        label: remote.to_owned(),
    })
}

/// A URL: mirrored (notes and branches) into a bare repository in the
/// user's cache directory, updated incrementally on every call.
async fn open_url(url: &str, wanted: Wanted<'_>) -> Result<ResultsSource, SourceError> {
    let label = mask_credentials(url).into_owned();
    if url.starts_with('-') {
        return Err(SourceError::InvalidName {
            what: "repository",
            name: label,
        });
    }
    let cache = cache_dir_for(url)?;
    let new_cache = !cache.join("HEAD").exists();
    if new_cache {
        std::fs::create_dir_all(&cache).map_err(|source| SourceError::Cache {
            path: cache.display().to_string(),
            source,
        })?;
        Git::new(&cache)
            .command("init")
            .args(["--quiet", "--bare"])
            .run()
            .await?;
    }
    let git = Git::new(&cache);
    let fetched = git
        .command("fetch")
        .args(["--quiet", "--no-tags", "--prune", "--no-write-fetch-head"])
        .positional([
            url,
            "+refs/notes/*:refs/notes/*",
            "+refs/heads/*:refs/heads/*",
        ])
        .output()
        .await?;
    if !fetched.status.success() {
        if new_cache {
            // An unreachable or mistyped URL must not leave an empty cache
            // behind for every attempt.
            let _ = std::fs::remove_dir_all(&cache);
        }
        let reason = mask_credentials(&one_line(&fetched.stderr)).into_owned();
        return Err(SourceError::Fetch {
            from: label,
            reason,
        });
    }
    // A fresh bare mirror's HEAD names whatever init.defaultBranch says;
    // point it at the results' own default so that `HEAD` means something.
    if !ref_exists(&git, "HEAD").await {
        if let Ok(default) = pick_branch(&git, None, "refs/heads/", &label).await {
            git.command("symbolic-ref")
                .positional(["HEAD", &default])
                .run()
                .await?;
        }
    }
    let rev = choose_rev(&git, wanted, "refs/heads/", &label).await?;
    Ok(ResultsSource {
        reader: ResultsReader::new(git, "refs/notes/"),
        rev,
        label,
    })
}

async fn ensure_repository(git: &Git, label: &str) -> Result<(), SourceError> {
    let check = git.command("rev-parse").arg("--git-dir").output().await?;
    if check.status.success() {
        Ok(())
    } else {
        Err(SourceError::NotARepository(label.to_owned()))
    }
}

/// The revision to list for `wanted`: see [`pick_branch`]; when any commit
/// will do, `HEAD` stands in for a branch that cannot be chosen.
async fn choose_rev(
    git: &Git,
    wanted: Wanted<'_>,
    prefix: &str,
    label: &str,
) -> Result<String, SourceError> {
    match wanted {
        Wanted::Branch(branch) => pick_branch(git, branch, prefix, label).await,
        Wanted::AnyCommit => match pick_branch(git, None, prefix, label).await {
            Err(SourceError::AmbiguousBranch(_)) => Ok("HEAD".to_owned()),
            picked => picked,
        },
    }
}

/// `<prefix><branch>` when given; otherwise HEAD if it resolves, else the
/// only branch, else `main` or `master`.
async fn pick_branch(
    git: &Git,
    branch: Option<&str>,
    prefix: &str,
    label: &str,
) -> Result<String, SourceError> {
    if let Some(name) = branch {
        let full = format!("{prefix}{name}");
        return if ref_exists(git, &full).await {
            Ok(full)
        } else {
            Err(SourceError::NoBranch {
                branch: name.to_owned(),
                place: label.to_owned(),
            })
        };
    }
    if ref_exists(git, "HEAD").await {
        // Name the branch HEAD stands for, so that reports say which.
        let named = git
            .command("symbolic-ref")
            .args(["--quiet", "HEAD"])
            .run()
            .await;
        return Ok(named
            .ok()
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "HEAD".to_owned()));
    }
    let listing = git
        .command("for-each-ref")
        .arg("--format=%(refname)")
        .positional([prefix])
        .run()
        .await?;
    let branches: Vec<&str> = listing.lines().collect();
    let preferred = ["main", "master"].map(|b| format!("{prefix}{b}"));
    match branches.as_slice() {
        [only] => Ok((*only).to_owned()),
        _ => preferred
            .into_iter()
            .find(|b| branches.contains(&b.as_str()))
            .ok_or_else(|| SourceError::AmbiguousBranch(label.to_owned())),
    }
}

async fn ref_exists(git: &Git, rev: &str) -> bool {
    let commit = format!("{rev}^{{commit}}");
    git.command("rev-parse")
        .args(["--verify", "--quiet", "--end-of-options"])
        .arg(commit)
        .output()
        .await
        .is_ok_and(|out| out.status.success())
}

async fn current_branch(git: &Git) -> Option<String> {
    let name = git
        .command("symbolic-ref")
        .args(["--quiet", "--short", "HEAD"])
        .run()
        .await;
    name.ok().filter(|n| !n.is_empty())
}

/// `$XDG_CACHE_HOME/icyci/results/<name>.git`, the name derived from the
/// URL without its credentials.
fn cache_dir_for(url: &str) -> Result<PathBuf, SourceError> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .ok_or(SourceError::NoCache)?;
    Ok(base.join("icyci").join("results").join(cache_name(url)))
}

fn cache_name(url: &str) -> String {
    let without_secret = match url.split_once("://") {
        Some((scheme, rest)) => {
            let host_part = rest.split_once('@').map_or(rest, |(_, after)| after);
            format!("{scheme}_{host_part}")
        }
        None => url.to_owned(),
    };
    let without_secret = without_secret.trim_end_matches('/');
    let without_secret = without_secret
        .strip_suffix(".git")
        .unwrap_or(without_secret);
    let name: String = without_secret
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{}.git", name.trim_matches(|c| c == '_' || c == '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_urls() {
        assert!(is_local_path("results.git"));
        assert!(is_local_path("/srv/git/results.git"));
        assert!(is_local_path("./host:not-scp"));
        assert!(!is_local_path("git://127.0.0.1:9418/results.git"));
        assert!(!is_local_path("git@example.org:ci/results.git"));
    }

    #[test]
    fn cache_names_drop_credentials() {
        assert_eq!(
            cache_name("https://bot:token@example.org/ci/results.git"),
            "https_example.org_ci_results.git"
        );
        assert_eq!(cache_name("ssh://git@h:22/r"), "ssh_h_22_r.git");
    }
}
