//! Every git invocation of the daemon goes through [`GitCommand`].
//!
//! Git is driven through its command line so that the user's ssh config,
//! credential helpers, `url.<base>.insteadOf`, `gpg.format` and keyrings apply
//! exactly as they do in a shell. This module is the one place that decides
//! how git children are started: no shell, no terminal, no editor, no pager,
//! user-supplied values after `--`, and command lines logged with credentials
//! masked.

mod parse;
mod refname;

use std::ffi::{OsStr, OsString};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tracing::debug;

pub use parse::{
    parse_fetch_head, parse_push_porcelain, parse_tags_at, remote_messages, FetchedRef, PushStatus,
    PushedRef, TagAtTip,
};
pub use refname::{is_valid_branch_name, is_valid_full_refname};

use crate::config::mask_credentials;

/// A failure to run git or a git command that did not succeed.
#[derive(Debug, Error)]
pub enum GitError {
    /// The git program could not be started at all.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line, credentials masked.
        command: String,
        /// Why the operating system refused.
        source: std::io::Error,
    },
    /// Git ran and exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line, credentials masked.
        command: String,
        /// Exit status as text.
        status: String,
        /// Git's standard error on one line (hints left out), credentials masked.
        stderr: String,
    },
}

impl GitError {
    /// Git's standard error, if git ran.
    pub fn stderr(&self) -> &str {
        match self {
            GitError::Failed { stderr, .. } => stderr,
            GitError::Spawn { .. } => "",
        }
    }
}

/// The captured result of a git command that ran.
#[derive(Debug)]
pub struct GitOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output, unmodified.
    pub stdout: Vec<u8>,
    /// Standard error, lossily decoded and trimmed.
    pub stderr: String,
    command: String,
}

impl GitOutput {
    /// Standard output as trimmed text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).trim().to_owned()
    }

    /// Converts an unsuccessful status into [`GitError::Failed`].
    pub fn into_result(self) -> Result<GitOutput, GitError> {
        if self.status.success() {
            Ok(self)
        } else {
            Err(GitError::Failed {
                command: self.command,
                status: describe_status(self.status),
                stderr: mask_credentials(&one_line(&self.stderr)).into_owned(),
            })
        }
    }
}

/// Git run in one repository (its working directory).
#[derive(Debug, Clone)]
pub struct Git {
    dir: PathBuf,
}

impl Git {
    /// Git acting on the repository at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Git { dir: dir.into() }
    }

    /// The repository directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Notes are commits, so git needs a committer. A service user often has
    /// no `user.name`/`user.email`, and git's guess fails on hosts without a
    /// domain name: then the repository gets an identity of its own,
    /// `icyci <icyci@HOSTNAME>`.
    pub async fn ensure_committer_identity(&self) -> Result<(), GitError> {
        self.committer_identity().await.map(drop)
    }

    /// Like [`Git::ensure_committer_identity`], and returns the identity
    /// as `Name <email>`.
    pub async fn committer_identity(&self) -> Result<String, GitError> {
        let known = self
            .command("var")
            .arg("GIT_COMMITTER_IDENT")
            .output()
            .await?;
        if known.status.success() {
            // `Name <email> 1700000000 +0000`: the date is set per commit.
            let ident = known.stdout_text();
            let ident = ident.trim();
            if let Some(end) = ident.rfind('>') {
                return Ok(ident[..=end].to_owned());
            }
        }
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|name| name.into_string().ok())
            .unwrap_or_else(|| "localhost".into());
        let email = format!("icyci@{host}");
        tracing::info!("no git identity configured; notes are committed as icyci <{email}>");
        for (key, value) in [("user.name", "icyci"), ("user.email", email.as_str())] {
            self.command("config")
                .positional([key, value])
                .run()
                .await?;
        }
        Ok(format!("icyci <{email}>"))
    }

    /// Starts building a command `git <subcommand> ...`.
    pub fn command(&self, subcommand: &str) -> GitCommand {
        GitCommand {
            dir: self.dir.clone(),
            args: vec![subcommand.into()],
            stdin: None,
        }
    }
}

/// A git command line under construction.
#[derive(Debug)]
pub struct GitCommand {
    dir: PathBuf,
    args: Vec<OsString>,
    stdin: Option<Vec<StdinPart>>,
}

/// A piece of a command's standard input, written in order.
#[derive(Debug)]
pub enum StdinPart {
    /// These bytes.
    Bytes(Vec<u8>),
    /// The first `len` bytes of this file, streamed rather than read into
    /// memory (captured script output can be large). A file shorter than
    /// `len` cuts the input short, which the command sees as an error.
    File {
        /// The file.
        path: PathBuf,
        /// How many bytes the caller announced to git.
        len: u64,
    },
}

impl GitCommand {
    /// Adds an option or a value that the caller knows is not user-supplied.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds several options.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Adds `--` and then positional arguments, so that none of them can be
    /// read as an option even if it starts with `-`.
    pub fn positional<I, S>(self, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.arg("--").args(values)
    }

    /// Feeds `input` to the command's standard input (otherwise it is closed).
    pub fn stdin(mut self, input: Vec<u8>) -> Self {
        self.stdin = Some(vec![StdinPart::Bytes(input)]);
        self
    }

    /// Feeds `parts` to the command's standard input, one after another.
    pub fn stdin_parts(mut self, parts: Vec<StdinPart>) -> Self {
        self.stdin = Some(parts);
        self
    }

    /// The command line as it may appear in logs: on one line (a note
    /// message's new lines shown as `\n`), credentials masked.
    pub fn display(&self) -> String {
        let words: Vec<String> = self
            .args
            .iter()
            .map(|arg| {
                let mut word = String::new();
                for c in arg.to_string_lossy().chars() {
                    if c.is_control() {
                        word.extend(c.escape_default());
                    } else {
                        word.push(c);
                    }
                }
                word
            })
            .collect();
        mask_credentials(&format!("git {}", words.join(" "))).into_owned()
    }

    /// Runs the command and returns its output whatever the exit status.
    pub async fn output(self) -> Result<GitOutput, GitError> {
        let command = self.display();
        let mut child = self.spawn().map_err(|source| GitError::Spawn {
            command: command.clone(),
            source,
        })?;
        let _running = child.id().map(Running::new);
        let pipe = child.stdin.take();
        let feed = async move {
            if let (Some(parts), Some(mut pipe)) = (self.stdin, pipe) {
                // A git that exits early closes its end; its status says why.
                let _ = feed_parts(parts, &mut pipe).await;
            }
        };
        // Fed and drained at once: git answers `cat-file --batch` queries
        // while still reading them, and once a pipe buffer of answers is
        // unread it stops reading its input.
        let (_, output) = tokio::join!(feed, child.wait_with_output());
        let output = output.map_err(|source| GitError::Spawn {
            command: command.clone(),
            source,
        })?;

        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        debug!(target: "icyci::git", command = %command, status = %describe_status(output.status));
        if !stderr.is_empty() {
            debug!(target: "icyci::git", "git stderr: {}", mask_credentials(&stderr));
        }
        Ok(GitOutput {
            status: output.status,
            stdout: output.stdout,
            stderr,
            command,
        })
    }

    /// Runs the command and requires success; returns trimmed stdout.
    pub async fn run(self) -> Result<String, GitError> {
        Ok(self.output().await?.into_result()?.stdout_text())
    }

    fn spawn(&self) -> std::io::Result<tokio::process::Child> {
        let mut command = tokio::process::Command::new("git");
        command
            .arg("-C")
            .arg(&self.dir)
            // The test script runs inside this clone and could leave hooks
            // in .git/hooks; none of them may run as part of the cycle.
            .args(["-c", "core.hooksPath=/dev/null"])
            .args(&self.args)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in CHILD_ENVIRONMENT {
            command.env(key, value);
        }
        for key in REPOSITORY_LOCATION_VARIABLES {
            command.env_remove(key);
        }
        // A git child must never wait for a human. Without a controlling
        // terminal, ssh and credential helpers cannot prompt on /dev/tty, and
        // the daemon's own SIGINT handling decides when children stop.
        //
        // A git child must not outlive a daemon that was killed (SIGKILL):
        // a clone or fetch going on in the workspace would race the next
        // instance, which reuses it. The parent-death signal fires when the
        // thread that forked exits, so it is set only for children of the
        // main thread (where the daemon's current-thread runtime runs them),
        // never for one forked from a pool thread that may end any time.
        let parent = std::process::id();
        let from_main_thread = nix::unistd::gettid().as_raw() as u32 == parent;
        // SAFETY: setsid(), prctl() and getppid() are async-signal-safe
        // system calls and touch no memory.
        unsafe {
            command.pre_exec(move || {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if from_main_thread {
                    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                    // The daemon died before the signal was set up.
                    if nix::unistd::getppid().as_raw() as u32 != parent {
                        return Err(std::io::Error::other("the daemon is gone"));
                    }
                }
                Ok(())
            });
        }
        command.spawn()
    }
}

/// The daemon's own git processes now running (a lease renewal can be
/// while the script runs), so that the sweep after a run does not take them
/// for processes the script left behind.
static RUNNING: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// The pids of the daemon's git processes now running.
pub fn running_git_pids() -> Vec<u32> {
    RUNNING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

/// Lists a git process in [`RUNNING`] while it lives, also when its future
/// is dropped (a time limit), which kills it.
struct Running(u32);

impl Running {
    fn new(pid: u32) -> Running {
        RUNNING
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(pid);
        Running(pid)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = RUNNING
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        running.retain(|pid| *pid != self.0);
    }
}

/// Writes `parts` to `pipe`; stops at the first error (a closed pipe, a
/// file that cannot be read or is shorter than announced).
async fn feed_parts(
    parts: Vec<StdinPart>,
    pipe: &mut tokio::process::ChildStdin,
) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    for part in parts {
        match part {
            StdinPart::Bytes(bytes) => pipe.write_all(&bytes).await?,
            StdinPart::File { path, len } => {
                let file = tokio::fs::File::open(&path).await?;
                let copied = tokio::io::copy(&mut file.take(len), pipe).await?;
                if copied != len {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("{} is shorter than announced", path.display()),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Settings forced on every git child.
const CHILD_ENVIRONMENT: [(&str, &str); 6] = [
    // Notes are added with -C, but an editor must never open whatever git
    // version decides otherwise; `true` accepts the text as it is.
    ("GIT_EDITOR", "true"),
    ("GIT_PAGER", "cat"),
    // No username/password prompts: fail and let the retry logic report it.
    ("GIT_TERMINAL_PROMPT", "0"),
    ("GIT_ASKPASS", "/bin/false"),
    // Error texts such as "couldn't find remote ref" are matched below.
    ("LC_ALL", "C"),
    ("LANGUAGE", "C"),
];

/// Inherited variables that would point git at another repository than the
/// one given with `-C` (as set, for instance, when icyci runs from a hook).
const REPOSITORY_LOCATION_VARIABLES: [&str; 6] = [
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
];

/// Folds git's message onto one line for a log line of its own; git's
/// `hint:` lines are advice for interactive users and are left out (the
/// full text is logged at debug level).
pub fn one_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("hint:"))
        .collect();
    lines.join(" | ")
}

/// Describes an exit status the way an operator expects to read it.
pub fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("signal: {}", signal_name(signal)),
        (None, None) => "unknown status".to_owned(),
    }
}

/// Go's wording for the signals a test run commonly dies of.
pub fn signal_name(signal: i32) -> String {
    use nix::sys::signal::Signal;
    match Signal::try_from(signal) {
        Ok(Signal::SIGKILL) => "killed".into(),
        Ok(Signal::SIGTERM) => "terminated".into(),
        Ok(Signal::SIGINT) => "interrupt".into(),
        Ok(Signal::SIGHUP) => "hangup".into(),
        Ok(Signal::SIGSEGV) => "segmentation fault".into(),
        Ok(Signal::SIGABRT) => "aborted".into(),
        Ok(Signal::SIGPIPE) => "broken pipe".into(),
        Ok(other) => other.as_str().to_owned(),
        Err(_) => format!("signal {signal}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_is_displayed_on_one_line_with_credentials_masked() {
        let shown = Git::new("/repo")
            .command("notes")
            .args(["add", "-m", "2024-01-01\nholder: h\tpid 1"])
            .positional(["https://alice:hunter2@example.org/r.git"])
            .display();
        assert!(!shown.contains('\n') && !shown.contains('\t'), "{shown}");
        assert!(shown.contains("2024-01-01\\nholder: h\\tpid 1"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
