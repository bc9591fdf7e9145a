//! The benchmark's own world in a temp dir: HOME, GNUPGHOME, XDG_STATE_HOME
//! and TMPDIR, a gpg ed25519 signing key without passphrase, repository
//! pairs (a source and a results repository, both bare, reached by
//! `file://` URLs) with an author clone that makes signed commits, test
//! scripts, and `git` wrappers that log each invocation.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use super::daemon::own_children_cpu;
use crate::common::{checked, fast_import, git, git_with_input};

/// Files of the generated history: each commit changes one of them.
const FILES: usize = 64;

/// The notes namespace of the daemon under test.
pub const NS: &str = "icyci";

pub struct World {
    pub root: PathBuf,
    /// The git found on PATH at setup, which the wrappers exec.
    real_git: PathBuf,
    /// Removed when the world is dropped, after the gpg agent is stopped.
    dir: Option<TempDir>,
    keep: bool,
}

impl World {
    /// Creates the temp dir and points this process's environment (and so
    /// every git, gpg and daemon it starts) into it, then makes the key.
    pub fn create(keep: bool) -> Result<World> {
        let real_git = find_in_path("git").context("git not found on PATH")?;
        let dir = tempfile::Builder::new()
            .prefix("icyci-bench-cycle")
            .tempdir()
            .context("cannot create a temp dir")?;
        let root = dir.path().to_path_buf();
        let world = World {
            root,
            real_git,
            dir: Some(dir),
            keep,
        };
        for sub in ["home", "state", "tmp", "config"] {
            std::fs::create_dir(world.path(sub))?;
        }
        let gnupg = world.path("gnupg");
        std::fs::create_dir(&gnupg)?;
        std::fs::set_permissions(&gnupg, std::fs::Permissions::from_mode(0o700))?;
        // Set before any thread exists: children inherit it, and nothing of
        // the user's own git or gpg configuration leaks in.
        std::env::set_var("HOME", world.path("home"));
        std::env::set_var("GNUPGHOME", &gnupg);
        std::env::set_var("XDG_STATE_HOME", world.path("state"));
        std::env::set_var("XDG_CONFIG_HOME", world.path("config"));
        std::env::set_var("TMPDIR", world.path("tmp"));
        std::env::set_var("GIT_CONFIG_NOSYSTEM", "1");
        std::env::set_var("GIT_TERMINAL_PROMPT", "0");
        for name in [
            "GIT_DIR",
            "GIT_WORK_TREE",
            "GIT_INDEX_FILE",
            "GIT_OBJECT_DIRECTORY",
            "GIT_ALTERNATE_OBJECT_DIRECTORIES",
            "GIT_CONFIG_PARAMETERS",
            "GIT_CONFIG_COUNT",
            "GIT_CONFIG_GLOBAL",
            "ICYCI_LOG",
        ] {
            std::env::remove_var(name);
        }
        world.make_key()?;
        Ok(world)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn make_key(&self) -> Result<()> {
        checked(Command::new("gpg").args([
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--quick-gen-key",
            "icyci bench <bench@example.org>",
            "ed25519",
            "sign",
            "never",
        ]))
        .context("cannot create the gpg signing key")?;
        let listing =
            checked(Command::new("gpg").args(["--batch", "--with-colons", "--list-secret-keys"]))?;
        let listing = String::from_utf8_lossy(&listing.stdout);
        let fingerprint = listing
            .lines()
            .find_map(|line| line.strip_prefix("fpr:"))
            .and_then(|rest| rest.split(':').find(|field| !field.is_empty()))
            .context("no fingerprint in gpg --list-secret-keys")?
            .to_owned();
        let home = self.path("home");
        for (key, value) in [
            ("user.name", "icyci bench"),
            ("user.email", "bench@example.org"),
            ("user.signingkey", fingerprint.as_str()),
            ("init.defaultBranch", "main"),
        ] {
            git(&home, &["config", "--global", key, value])?;
        }
        Ok(())
    }

    /// An executable shell script `name` with `body` after the `#!/bin/sh`.
    pub fn script(&self, name: &str, body: &str) -> Result<PathBuf> {
        let path = self.path(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(path)
    }

    /// A directory holding a `git` that appends its arguments to a log and
    /// execs the real git; put first on a daemon's PATH.
    pub fn wrapper(&self, name: &str) -> Result<Wrapper> {
        let dir = self.path(&format!("wrap-{name}"));
        std::fs::create_dir(&dir)?;
        let log = self.path(&format!("git-calls-{name}.log"));
        std::fs::write(&log, b"")?;
        // One printf is one write(2) to an O_APPEND file: a record is never
        // torn. Each record: RS, then each argument followed by US.
        let mut script = String::from("#!/bin/sh\n");
        writeln!(
            script,
            "printf '%s\\037' '\u{1e}' \"$@\" >> {}",
            shell_quote(&log)?
        )?;
        writeln!(script, "exec {} \"$@\"", shell_quote(&self.real_git)?)?;
        let git = dir.join("git");
        std::fs::write(&git, script)?;
        std::fs::set_permissions(&git, std::fs::Permissions::from_mode(0o755))?;
        Ok(Wrapper { dir, log })
    }

    /// The CPU a wrapper adds to each git call (its shell), measured by
    /// running `git --version` `calls` times through a wrapper and directly;
    /// taken out of the CPU figures of daemons that run with a wrapper.
    pub fn wrapper_overhead(&self, calls: usize) -> Result<std::time::Duration> {
        let wrapper = self.wrapper("calibration")?;
        let cpu = |program: &Path| -> Result<std::time::Duration> {
            let before = own_children_cpu()?;
            for _ in 0..calls {
                checked(Command::new(program).arg("--version"))?;
            }
            Ok(own_children_cpu()?.saturating_sub(before))
        };
        let mut wrapped = std::time::Duration::ZERO;
        let mut direct = std::time::Duration::ZERO;
        // Interleaved halves, so that a burst of load elsewhere hits both.
        for _ in 0..2 {
            wrapped += cpu(&wrapper.dir.join("git"))?;
            direct += cpu(&self.real_git)?;
        }
        Ok(wrapped.saturating_sub(direct) / (2 * calls.max(1)) as u32)
    }

    /// A source and a results repository named after `name`, the source
    /// with `commits` unsigned commits of history (small files) and a signed
    /// tip on `main`; with `notes`, the results repository holds that
    /// history and notes in [`NS`] for its last `notes` commits (one notes
    /// commit per noted commit on each note ref, as a real history has).
    pub fn pair(&self, name: &str, commits: usize, notes: usize) -> Result<Pair> {
        let author = self.path(&format!("{name}-author"));
        let source = self.path(&format!("{name}-source.git"));
        let results = self.path(&format!("{name}-results.git"));
        git(&self.root, &["init", "-q", "-b", "main", &arg(&author)?])?;
        fast_import(&author, &history_stream(commits.max(1), notes)?)?;
        git(&author, &["reset", "-q", "--hard", "main"])?;
        if notes > 0 {
            lay_out_as_git_notes(&author, "locked")?;
            // The history and its notes, as earlier pushes left them.
            git(
                &self.root,
                &["clone", "-q", "--mirror", &arg(&author)?, &arg(&results)?],
            )?;
            git(&results, &["repack", "-adq"])?;
        } else {
            git(
                &self.root,
                &["init", "-q", "--bare", "-b", "main", &arg(&results)?],
            )?;
        }
        std::fs::write(author.join("bench.txt"), "0\n")?;
        git(&author, &["add", "bench.txt"])?;
        git(&author, &["commit", "-S", "-q", "-m", "signed tip"])?;
        git(
            &self.root,
            &["clone", "-q", "--bare", &arg(&author)?, &arg(&source)?],
        )?;
        git(&source, &["repack", "-adq"])?;
        let pair = Pair {
            author,
            source,
            results,
            made: 0,
        };
        git(
            &pair.author,
            &["remote", "add", "origin", &pair.source_url()],
        )?;
        Ok(pair)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // The agent started by signing lives in GNUPGHOME, inside the dir.
        let _ = Command::new("gpgconf")
            .args(["--kill", "all"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if let Some(dir) = self.dir.take() {
            if self.keep {
                eprintln!("  kept {}", dir.keep().display());
            }
        }
    }
}

/// A `git` wrapper directory and the log it appends to.
pub struct Wrapper {
    pub dir: PathBuf,
    pub log: PathBuf,
}

/// A source and a results repository, and the author clone that pushes
/// signed commits to the source.
pub struct Pair {
    pub author: PathBuf,
    pub source: PathBuf,
    pub results: PathBuf,
    made: usize,
}

impl Pair {
    pub fn source_url(&self) -> String {
        format!("file://{}", self.source.display())
    }

    pub fn results_url(&self) -> String {
        format!("file://{}", self.results.display())
    }

    /// Makes `count` signed commits in the author clone, not pushed yet,
    /// each changing one small file; returns their ids in order.
    pub fn prepare(&mut self, count: usize) -> Result<Vec<String>> {
        let mut ids = Vec::with_capacity(count);
        for _ in 0..count {
            self.made += 1;
            std::fs::write(self.author.join("bench.txt"), format!("{}\n", self.made))?;
            let message = format!("bench commit {}", self.made);
            git(&self.author, &["commit", "-S", "-q", "-a", "-m", &message])?;
            ids.push(git(&self.author, &["rev-parse", "HEAD"])?);
        }
        Ok(ids)
    }

    /// Pushes `commit` (a descendant of the source's tip) to the source.
    pub fn push(&self, commit: &str) -> Result<()> {
        let refspec = format!("{commit}:refs/heads/main");
        git(&self.author, &["push", "-q", "origin", &refspec])?;
        Ok(())
    }

    /// The source's current tip.
    pub fn tip(&self) -> Result<String> {
        git(&self.source, &["rev-parse", "refs/heads/main"])
    }
}

/// Lays the note ref `kind` out as `git notes` writes it. Lock notes are
/// added with `git notes add`, by icyci as by the original, and at 20,000
/// notes its fan-out differs from fast-import's (some subtrees are one
/// level deeper): without this, each first lock note in a subtree would pay
/// for rewriting it, which no real results repository asks. Copying one
/// note of each subtree onto itself, in one `git notes copy`, loads and
/// rewrites them all.
fn lay_out_as_git_notes(repo: &Path, kind: &str) -> Result<()> {
    let notes_ref = format!("--ref=refs/notes/{NS}.{kind}");
    let listed = git(repo, &["notes", &notes_ref, "list"])?;
    let mut subtrees = std::collections::BTreeSet::new();
    let mut pairs = String::new();
    for (_, commit) in listed.lines().filter_map(|line| line.split_once(' ')) {
        if commit.len() > 2 && subtrees.insert(commit[..2].to_owned()) {
            writeln!(pairs, "{commit} {commit}")?;
        }
    }
    git_with_input(
        repo,
        &["notes", &notes_ref, "copy", "-f", "--stdin"],
        pairs.as_bytes(),
    )
}

/// `commits` commits on `refs/heads/main`, then the notes of the last
/// `notes` of them on each note ref of [`NS`] (every tenth one failed).
fn history_stream(commits: usize, notes: usize) -> Result<Vec<u8>> {
    let mut stream = Vec::new();
    let when = 1_600_000_000usize;
    for i in 1..=commits {
        writeln!(stream, "commit refs/heads/main\nmark :{i}")?;
        writeln!(
            stream,
            "author Bench <bench@example.org> {} +0000",
            when + i
        )?;
        writeln!(
            stream,
            "committer Bench <bench@example.org> {} +0000",
            when + i
        )?;
        let message = format!("change {i}\n");
        write!(stream, "data {}\n{message}", message.len())?;
        let content = format!("line {i}\n");
        writeln!(
            stream,
            "M 644 inline src/f{:02}.txt\ndata {}\n{content}",
            i % FILES,
            content.len()
        )?;
    }
    let first = commits.saturating_sub(notes) + 1;
    if notes > 0 {
        for kind in NOTE_KINDS {
            for i in first..=commits {
                let Some(text) = note_text(kind, i) else {
                    continue;
                };
                writeln!(stream, "commit refs/notes/{NS}.{kind}")?;
                writeln!(
                    stream,
                    "committer Bench <bench@example.org> {} +0000\ndata 6\nnotes",
                    when + commits + i
                )?;
                write!(stream, "N inline :{i}\ndata {}\n{text}\n", text.len())?;
            }
        }
    }
    Ok(stream)
}

const NOTE_KINDS: [&str; 6] = [
    "locked",
    "output.stdout",
    "output.stderr",
    "verified",
    "result.passed",
    "result.failed",
];

/// The note `kind` of generated commit `i`: every tenth one failed.
fn note_text(kind: &str, i: usize) -> Option<String> {
    let failed = i.is_multiple_of(10);
    match kind {
        "locked" => {
            Some("2024-01-01 00:00:00 +0000: this commit is being tested by icyCI\n".into())
        }
        "output.stdout" => Some(format!("build {i} ok\n")),
        "output.stderr" => Some(String::new()),
        "verified" => Some("object: commit\nformat: openpgp\ntrust: git\n".into()),
        "result.passed" => (!failed).then(|| "/bench/true.sh completed successfully\n".into()),
        "result.failed" => failed.then(|| "/bench/true.sh failed: exit status 1\n".into()),
        _ => None,
    }
}

fn arg(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("not a UTF-8 path: {}", path.display()))
}

fn shell_quote(path: &Path) -> Result<String> {
    let text = arg(path)?;
    if text.contains('\'') {
        bail!("a quote in the temp dir path: {text}");
    }
    Ok(format!("'{text}'"))
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}
