//! Validated configuration of one job: which branch of which repository is
//! tested with which script, and where the results go.
//!
//! Everything here is checked before any repository is touched, so that a
//! configuration mistake is one clear line and a non-zero exit.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::git::{is_valid_branch_name, is_valid_full_refname};
use crate::state::State;
use crate::trust::SignaturePolicy;

/// A configuration value that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The branch name is not one git would accept.
    #[error("invalid branch name {0:?}: not a valid git branch name")]
    BranchName(String),
    /// The branch name starts with `-` and could be read as an option.
    #[error("invalid branch name {0:?}: must not start with '-'")]
    BranchLeadingDash(String),
    /// The notes namespace would not form valid ref names.
    #[error("invalid notes namespace {0:?}: refs/notes/{0}.locked is not a valid ref name")]
    NotesNamespace(String),
    /// A note ref of the namespace would not fit in a file name.
    #[error("invalid notes namespace {0:?}: too long for git's ref files (at most {max} bytes between '/', {MAX_NAMESPACE_LENGTH} in all)", max = MAX_NAMESPACE_COMPONENT)]
    NotesNamespaceTooLong(String),
    /// A repository URL is empty or looks like an option.
    #[error("invalid repository {0:?}: {1}")]
    Repository(String, &'static str),
    /// An empty test script path.
    #[error("invalid test script: empty path")]
    EmptyScript,
    /// An empty `-source-reference`.
    #[error("invalid source reference: empty path")]
    EmptyReference,
    /// An empty `-site-dir`.
    #[error("invalid site directory: empty path")]
    EmptySiteDir,
    /// An empty `-state-dir`.
    #[error("invalid state directory: empty path")]
    EmptyStateDir,
    /// An empty `-trusted-signers`.
    #[error("invalid trusted signers file: empty path")]
    EmptyTrustedSigners,
}

/// The longest file name of a ref git writes, `<name>.lock` included
/// (`NAME_MAX` of Linux file systems).
const MAX_REF_FILE_NAME: usize = 255;

/// The longest last part of a namespace: `<part>.full-output.stdout.lock`,
/// icyci's longest note ref while it is locked, must fit in a file name.
const MAX_NAMESPACE_COMPONENT: usize =
    MAX_REF_FILE_NAME - ".full-output.stdout".len() - ".lock".len();

/// The longest namespace: its refs' paths, under a repository's own path,
/// stay far from `PATH_MAX` (4096).
const MAX_NAMESPACE_LENGTH: usize = 1024;

/// A branch name that git accepts and that cannot be mistaken for an option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchName(String);

impl BranchName {
    /// Validates `name` as `git check-ref-format --branch` would.
    pub fn new(name: &str) -> Result<Self, ConfigError> {
        if name.starts_with('-') {
            return Err(ConfigError::BranchLeadingDash(name.to_owned()));
        }
        if !is_valid_branch_name(name) {
            return Err(ConfigError::BranchName(name.to_owned()));
        }
        Ok(BranchName(name.to_owned()))
    }

    /// The short name, e.g. `main`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `refs/heads/<name>`.
    pub fn full_ref(&self) -> String {
        format!("refs/heads/{}", self.0)
    }
}

impl fmt::Display for BranchName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The notes namespace: every note ref is `refs/notes/<namespace>.<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotesNamespace(String);

impl NotesNamespace {
    /// Validates that the namespace forms valid ref names.
    pub fn new(namespace: &str) -> Result<Self, ConfigError> {
        let valid = !namespace.is_empty()
            && !namespace.starts_with('-')
            && is_valid_full_refname(&format!("refs/notes/{namespace}.locked"));
        if !valid {
            return Err(ConfigError::NotesNamespace(namespace.to_owned()));
        }
        // Every part is a directory or file name; the whole ref a path.
        let too_long = namespace
            .split('/')
            .any(|part| part.len() > MAX_NAMESPACE_COMPONENT)
            || namespace.len() > MAX_NAMESPACE_LENGTH;
        if too_long {
            return Err(ConfigError::NotesNamespaceTooLong(namespace.to_owned()));
        }
        Ok(NotesNamespace(namespace.to_owned()))
    }

    /// Why `refs/notes/<namespace>.<name>` cannot be a note ref git
    /// writes, if it cannot: not a valid ref name, a name that would nest
    /// (`/`), or a ref file name (with `.lock`) longer than file systems
    /// take, which git fails on only when it writes the ref.
    pub fn unusable_note_name(&self, name: &str) -> Option<&'static str> {
        if name.contains('/') {
            return Some("the name contains '/'");
        }
        if !is_valid_full_refname(&self.note_ref(name)) {
            return Some("the name does not form a valid git ref name");
        }
        let last = self.0.rsplit('/').next().unwrap_or(&self.0);
        if last.len() + 1 + name.len() + ".lock".len() > MAX_REF_FILE_NAME {
            return Some("the name is too long for a ref file (255 bytes with the namespace)");
        }
        None
    }

    /// The prefix as given, e.g. `icyci`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `refs/notes/<namespace>.<name>`.
    pub fn note_ref(&self, name: &str) -> String {
        format!("refs/notes/{}.{}", self.0, name)
    }

    /// Refspec that mirrors all of this namespace's note refs from a remote.
    pub fn fetch_refspec(&self) -> String {
        format!("+refs/notes/{0}.*:refs/notes/{0}.*", self.0)
    }
}

/// A repository location as given by the user: any URL or path git accepts.
/// Displaying it masks a password or token in the URL.
#[derive(Clone, PartialEq, Eq)]
pub struct RepoUrl(String);

impl RepoUrl {
    /// Accepts anything non-empty that cannot be read as an option. Its
    /// secrets are remembered, to be masked in every later log line.
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        if url.is_empty() {
            return Err(ConfigError::Repository(url.to_owned(), "empty"));
        }
        if url.starts_with('-') {
            return Err(ConfigError::Repository(
                mask_credentials(url).into_owned(),
                "must not start with '-'",
            ));
        }
        remember_secrets(url);
        Ok(RepoUrl(url.to_owned()))
    }

    /// The URL exactly as given, for git's command line only.
    pub fn as_git_arg(&self) -> &str {
        &self.0
    }

    /// A relative local path made absolute against `base` (the directory
    /// icyci was started in): git runs inside the workspace, where the
    /// path would otherwise mean something else. URLs are kept as they are.
    pub fn anchored_at(self, base: &Path) -> Self {
        match self.local_path() {
            Some(path) if path.is_relative() && !self.0.starts_with("file://") => {
                RepoUrl(base.join(path).to_string_lossy().into_owned())
            }
            _ => self,
        }
    }

    /// True when both name the same repository. Local paths are compared
    /// after resolving them; URLs as written.
    pub fn same_repository(&self, other: &RepoUrl) -> bool {
        match (self.local_path(), other.local_path()) {
            (Some(a), Some(b)) => match (a.canonicalize(), b.canonicalize()) {
                (Ok(a), Ok(b)) => a == b,
                _ => a == b,
            },
            _ => self.0.trim_end_matches('/') == other.0.trim_end_matches('/'),
        }
    }

    fn local_path(&self) -> Option<&Path> {
        if let Some(path) = self.0.strip_prefix("file://") {
            return Some(Path::new(path));
        }
        let looks_remote = self.0.contains("://") || self.0.split('/').next()?.contains(':');
        (!looks_remote).then(|| Path::new(&self.0))
    }
}

impl fmt::Display for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mask_credentials(&self.0))
    }
}

impl fmt::Debug for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoUrl({self})")
    }
}

/// Secrets of the repository URLs given to this process (see
/// [`remember_secrets`]), masked wherever they appear in a logged text:
/// git's own messages quote URLs in forms without a scheme.
static SECRETS: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// Shorter secrets are not looked for in free text: they would mask
/// ordinary words.
const MIN_SECRET_LEN: usize = 4;

/// Remembers the secrets of `url` for [`mask_credentials`]: its password,
/// an `http(s)` user name standing alone (a token), its query string or
/// fragment.
pub fn remember_secrets(url: &str) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return;
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let mut found = Vec::new();
    if let Some((userinfo, _host)) = authority.rsplit_once('@') {
        match userinfo.split_once(':') {
            Some((_user, password)) => found.push(password),
            None if is_web(scheme) => found.push(userinfo),
            None => {}
        }
    }
    if let Some((_, query)) = path.split_once(['?', '#']) {
        found.push(query);
    }
    let mut secrets = SECRETS
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for secret in found {
        if secret.len() >= MIN_SECRET_LEN && !secrets.iter().any(|known| known == secret) {
            secrets.push(secret.to_owned());
        }
    }
}

fn is_web(scheme: &str) -> bool {
    scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")
}

/// Masks credentials in `text`: the password of every
/// `scheme://user:password@host` (the user name stays, so an operator can
/// tell which account was used), a user name standing alone in an
/// `http(s)` URL (a token, as in `https://<token>@host`), every URL's query
/// string or fragment, and anywhere else the secrets [`remember_secrets`]
/// was given.
pub fn mask_credentials(text: &str) -> Cow<'_, str> {
    let secrets = SECRETS
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let holds_secret = secrets.iter().any(|secret| text.contains(secret.as_str()));
    if !text.contains("://") && !holds_secret {
        return Cow::Borrowed(text);
    }
    let mut masked = String::with_capacity(text.len());
    let mut rest = text;
    let ends_url = |c: char| c.is_whitespace() || c == '\'' || c == '"';
    while let Some(start) = rest.find("://") {
        let (head, tail) = rest.split_at(start + 3);
        masked.push_str(head);
        let scheme_start = head[..start]
            .char_indices()
            .rev()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || "+.-".contains(*c)))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let scheme = &head[scheme_start..start];
        let mut authority_end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || ends_url(c))
            .unwrap_or(tail.len());
        // In `http://a,https://u:p@h` the next URL's scheme is glued to this
        // authority: stop before its `:` so that its `://` is still found.
        if tail[..authority_end].ends_with(':') && tail[authority_end..].starts_with("//") {
            authority_end -= 1;
        }
        let authority = &tail[..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.split_once(':') {
                    Some((user, _secret)) => {
                        masked.push_str(user);
                        masked.push_str(":***");
                    }
                    None if is_web(scheme) && !userinfo.is_empty() => masked.push_str("***"),
                    None => masked.push_str(userinfo),
                }
                masked.push_str(&authority[at..]);
            }
            None => masked.push_str(authority),
        }
        rest = &tail[authority_end..];
        // The query string or fragment, up to the end of the URL.
        let url_end = rest.find(ends_url).unwrap_or(rest.len());
        if let Some(query) = rest[..url_end].find(['?', '#']) {
            if !rest[..query].contains("://") {
                masked.push_str(&rest[..=query]);
                masked.push_str("***");
                rest = &rest[url_end..];
            }
        }
    }
    masked.push_str(rest);
    for secret in secrets.iter() {
        if masked.contains(secret.as_str()) {
            masked = masked.replace(secret.as_str(), "***");
        }
    }
    Cow::Owned(masked)
}

/// Per-state time limits; `None` means no limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// The await-command limit, which ends the script and records a failure.
    pub await_command: Option<Duration>,
    enabled: bool,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            await_command: State::AwaitCommand.default_timeout(),
            enabled: true,
        }
    }
}

impl Timeouts {
    /// No state has a time limit.
    pub fn disabled() -> Self {
        Timeouts {
            await_command: None,
            enabled: false,
        }
    }

    /// The limit for the remote calls of a poll (which as a state has
    /// none, since it mostly waits): a remote that takes the connection and
    /// never answers must not wedge the job. `git ls-remote` moves a few
    /// refs: ten poll intervals, within 10 s to 2 min; a fetch at most what
    /// a clone does.
    pub fn for_poll(&self, fetching: bool, poll_interval: Duration) -> Option<Duration> {
        match fetching {
            _ if !self.enabled => None,
            false => {
                Some((poll_interval * 10).clamp(Duration::from_secs(10), Duration::from_secs(120)))
            }
            true => State::Clone.default_timeout(),
        }
    }

    /// The limit for `state`.
    pub fn for_state(&self, state: State) -> Option<Duration> {
        match state {
            _ if !self.enabled => None,
            State::AwaitCommand => self.await_command,
            other => other.default_timeout(),
        }
    }
}

/// Everything one daemon job needs, validated.
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// Repository under test.
    pub source: RepoUrl,
    /// Branch followed.
    pub branch: BranchName,
    /// Script path as given (relative to the checkout, or absolute); `None`
    /// for mirror mode.
    pub test_script: Option<String>,
    /// Where notes and optionally the source are pushed.
    pub results: RepoUrl,
    /// Also push the tested commit and verified tag to the results.
    pub push_source_to_results: bool,
    /// Wait between polls of the source branch while idle.
    pub poll_interval: Duration,
    /// Notes namespace.
    pub notes_ns: NotesNamespace,
    /// State time limits.
    pub timeouts: Timeouts,
    /// Passed to the first clone as `--reference`.
    pub source_reference: Option<String>,
    /// Test the current tip once and exit.
    pub once: bool,
    /// Which signatures count (`-trusted-signers`,
    /// `-accept-expired-before-expiry`).
    pub signature_policy: SignaturePolicy,
    /// Refresh a static results site here after each push.
    pub site_dir: Option<PathBuf>,
    /// Bytes of the script's stdout, and of its stderr, kept in the notes.
    pub max_output: u64,
    /// Also publish the whole stdout and stderr (`full-output.*` notes).
    pub keep_full_output: bool,
    /// `-state-dir`: where results wait until they are pushed; `None`: the
    /// default, [`default_state_dir`].
    pub state_dir: Option<PathBuf>,
    /// How long a lock note's lease runs; renewed while the script runs.
    pub lock_lease: Duration,
    /// Take over a lock without a lease (written by the original) this long
    /// after its time; `None`: never.
    pub stale_lock_after: Option<Duration>,
}

/// The default state directory of a job: `$XDG_STATE_HOME/icyci/<job>`, or
/// `~/.local/state/icyci/<job>`; `None` when neither variable is set.
pub fn default_state_dir(config: &JobConfig) -> Option<PathBuf> {
    // The XDG spec: a relative path in the variable is to be ignored.
    let base = match std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty() && Path::new(v).is_absolute())
    {
        Some(state) => PathBuf::from(state),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?)
            .join(".local")
            .join("state"),
    };
    Some(base.join("icyci").join(job_name(config)))
}

/// A readable, filesystem-safe name of a job: the source without
/// credentials, the branch and the namespace, such as
/// `git_example.org_linux.git@master@icyci-82ea0501bd36`. Characters a
/// file name should not hold become `_`, so different jobs could read
/// alike (branches `feat/x` and `feat_x`): a hash of the three, exactly,
/// ends every name. Long names are shortened from the front.
pub fn job_name(config: &JobConfig) -> String {
    let source = mask_credentials(config.source.as_git_arg()).replace(":***@", "@");
    // No user name either: the same job whoever logs in.
    let source = match source.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}_{rest}")
        }
        None => source,
    };
    let (branch, namespace) = (config.branch.to_string(), config.notes_ns.as_str());
    let mut name: String = format!("{source}@{branch}@{namespace}")
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '@' => c,
            _ => '_',
        })
        .collect();
    name = name.trim_matches('_').to_owned();
    while name.contains("__") {
        name = name.replace("__", "_");
    }
    if name.starts_with('.') {
        name.insert(0, '_');
    }
    // FNV-1a, stable across releases (unlike std's hasher), over the
    // three parts NUL-separated: no two jobs spell the same input.
    let exact = [source.as_str(), branch.as_str(), namespace].join("\0");
    let hash = exact.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    const MAX: usize = 80;
    const HASH_DIGITS: usize = 12;
    let keep = MAX - HASH_DIGITS - 1;
    if name.len() > keep {
        let mut start = name.len() - keep;
        while !name.is_char_boundary(start) {
            start += 1;
        }
        name = name[start..].to_owned();
    }
    format!("{name}-{:012x}", hash & 0xffff_ffff_ffff)
}

/// `-max-output` by default: 16 MiB of each stream.
pub const DEFAULT_MAX_OUTPUT: u64 = 16 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    fn job_of(source: &str, branch: &str, ns: &str) -> String {
        let args = [
            "-source-repo",
            source,
            "-results-repo",
            "/srv/results.git",
            "-source-branch",
            branch,
            "-notes-ns",
            ns,
        ];
        match crate::cli::parse_args(args).expect("valid flags") {
            crate::cli::Invocation::Run(config) => job_name(&config),
            other => panic!("not a run: {other:?}"),
        }
    }

    #[test]
    fn job_names_are_readable_and_tell_jobs_apart() {
        let name = job_of("git://example.org/linux.git", "master", "icyci");
        // Stable across releases: it names the state directory, spool included.
        assert_eq!(name, "git_example.org_linux.git@master@icyci-82ea0501bd36");
        // Names that read alike once made safe for a file system.
        assert_ne!(
            job_of("/r", "feat/x", "icyci"),
            job_of("/r", "feat_x", "icyci")
        );
        assert_ne!(job_of("/r", "main", "p/q"), job_of("/r", "main", "p_q"));
        assert_ne!(job_of("/r", "a@b", "c"), job_of("/r", "a", "b@c"));
        // The same job whoever logs in, and no secret in the name.
        let token = job_of(
            "https://s3cr3t-token@h.org/x.git?key=k3y-value",
            "main",
            "icyci",
        );
        assert_eq!(
            token,
            job_of("https://bot:other@h.org/x.git?key=another", "main", "icyci")
        );
        assert!(
            !token.contains("s3cr3t") && !token.contains("k3y"),
            "{token}"
        );
        let long = job_of(&format!("/srv/{}", "deep/".repeat(40)), "main", "icyci");
        assert_eq!(long.len(), 80, "{long}");
    }

    #[test]
    fn masks_tokens_queries_and_remembered_secrets() {
        assert_eq!(
            mask_credentials("fatal: https://ghp_TOKEN123@github.com/x.git failed"),
            "fatal: https://***@github.com/x.git failed"
        );
        assert_eq!(
            mask_credentials("ssh://git@host/x and https://h/x.git?token=abcd&y=1 end"),
            "ssh://git@host/x and https://h/x.git?*** end"
        );
        remember_secrets("git://u:pa55word-x@127.0.0.1:9/x.git");
        assert_eq!(
            mask_credentials("unable to connect to u:pa55word-x@127.0.0.1"),
            "unable to connect to u:***@127.0.0.1"
        );
        assert_eq!(mask_credentials("no secret here"), "no secret here");
        assert_eq!(mask_credentials("https://h/x#k=fr4g"), "https://h/x#***");
    }

    #[test]
    fn masks_passwords_in_urls() {
        assert_eq!(
            mask_credentials("https://user:s3cret@example.org/repo.git"),
            "https://user:***@example.org/repo.git"
        );
        assert_eq!(
            mask_credentials("git fetch https://a:b@h/x and ssh://git@h/y"),
            "git fetch https://a:***@h/x and ssh://git@h/y"
        );
        assert_eq!(mask_credentials("/srv/git/repo"), "/srv/git/repo");
        assert_eq!(
            mask_credentials("http://a,https://u:p@h/x"),
            "http://a,https://u:***@h/x",
            "a URL glued to the one before it"
        );
        assert_eq!(
            mask_credentials("https://u:p@ss@host/x"),
            "https://u:***@host/x",
            "the last @ ends the user information"
        );
    }

    #[test]
    fn repo_url_display_masks() {
        let url = RepoUrl::new("https://bot:tok@example.org/r").expect("valid url");
        assert_eq!(url.to_string(), "https://bot:***@example.org/r");
        assert_eq!(url.as_git_arg(), "https://bot:tok@example.org/r");
        assert!(RepoUrl::new("-upload-pack=x").is_err());
    }

    #[test]
    fn same_repository_compares_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = RepoUrl::new(dir.path().to_str().expect("utf-8")).expect("valid");
        let file = RepoUrl::new(&format!("file://{}/", dir.path().display())).expect("valid");
        assert!(plain.same_repository(&file));
        let other = RepoUrl::new("git://127.0.0.1/x").expect("valid");
        assert!(!plain.same_repository(&other));
    }

    #[test]
    fn namespaces() {
        assert!(NotesNamespace::new("icyci-aarch64").is_ok());
        assert!(NotesNamespace::new("").is_err());
        assert!(NotesNamespace::new("a b").is_err());
        assert!(NotesNamespace::new("x*").is_err());
        // `<ns>.full-output.stdout.lock` must fit in a 255-byte file name.
        assert!(NotesNamespace::new(&"a".repeat(231)).is_ok());
        let too_long = NotesNamespace::new(&"a".repeat(232)).expect_err("too long");
        assert!(too_long.to_string().contains("too long"), "{too_long}");
        assert!(NotesNamespace::new(&format!("team/{}", "a".repeat(231))).is_ok());
        assert!(NotesNamespace::new(&format!("{}/x", "a".repeat(256))).is_err());
        let deep = vec!["a".repeat(200); 6].join("/");
        assert!(NotesNamespace::new(&deep).is_err());
        let ns = NotesNamespace::new("icyci").expect("valid");
        assert_eq!(
            ns.note_ref("result.passed"),
            "refs/notes/icyci.result.passed"
        );
    }
}
