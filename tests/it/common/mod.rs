//! Integration-test harness shared by every `icyci` daemon test.
//!
//! Everything here drives the real tools: git repositories in temporary directories, gpg and
//! ssh-keygen keys made for the test, `git daemon` and `sshd` listening on loopback ports. Each
//! [`TestEnv`] has its own `HOME`, `GNUPGHOME`, `TMPDIR` and global git configuration, and every
//! process started through it gets a cleared environment, so tests neither see nor touch the
//! user's or the machine's settings.
//!
//! Waiting is always on a condition with a deadline ([`wait_for`]), never a fixed sleep.

// Each test module uses only part of the harness.
#![allow(dead_code)]

mod daemon;
mod gpg;
mod repo;
mod servers;

pub use daemon::{descendants, parent_pid, process_alive, Daemon};
pub use repo::{Sign, TagKind};
pub use servers::{free_port, GitDaemon, PortHold, Sshd};

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Author and committer name of every commit made through a [`TestEnv`].
pub const GIT_NAME: &str = "icyci test";
/// Author and committer email of every commit made through a [`TestEnv`].
pub const GIT_EMAIL: &str = "test@icyci.test";

/// Absolute path of the OpenSSH server used by [`Sshd`].
pub const SSHD: &str = "/usr/sbin/sshd";

/// Name of the environment variable that, when set, keeps the root directory of a [`TestEnv`]
/// whose test panicked (its path is printed) instead of removing it.
pub const KEEP_ENV_VAR: &str = "ICYCI_IT_KEEP";

/// An isolated world for one test.
///
/// The root is a temporary directory (removed on drop) holding:
///
/// - `home/`: `HOME`, with the global git configuration `home/.gitconfig` and, once
///   [`TestEnv::ssh_key`] was called, `home/allowed_signers`;
/// - `gnupg/`: `GNUPGHOME` (mode 0700);
/// - `tmp/`: `TMPDIR`, so a test can check the daemon leaves nothing there;
/// - `states/`: state directories given with `-state-dir` ([`TestEnv::state_dir`]);
/// - `logs/`: stdout and stderr of processes started with [`TestEnv::spawn_icyci`] and of the
///   servers.
///
/// Repositories, keys and server files made by the helpers also live under the root.
pub struct TestEnv {
    root: Option<TempDir>,
    root_path: PathBuf,
    extra_env: Mutex<BTreeMap<OsString, OsString>>,
    gpg_installed: Mutex<BTreeMap<String, String>>,
    counter: AtomicUsize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another test thread must not cascade into this one.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl TestEnv {
    /// Creates a fresh environment: the directories and the global git configuration
    /// (`user.name`/`user.email`, `init.defaultBranch=main`, `commit.gpgsign=false`,
    /// `tag.gpgsign=false`, `protocol.file.allow=always`).
    pub fn new() -> TestEnv {
        let root = tempfile::Builder::new()
            .prefix("icyci-it.")
            .tempdir()
            .expect("create the test root directory");
        let root_path = root.path().to_path_buf();
        for dir in ["home", "gnupg", "tmp", "logs"] {
            fs::create_dir(root_path.join(dir)).expect("create a test directory");
        }
        fs::set_permissions(root_path.join("gnupg"), fs::Permissions::from_mode(0o700))
            .expect("chmod 0700 GNUPGHOME");
        let gitconfig = format!(
            "[user]\n\tname = {GIT_NAME}\n\temail = {GIT_EMAIL}\n\
             [init]\n\tdefaultBranch = main\n\
             [commit]\n\tgpgsign = false\n\
             [tag]\n\tgpgsign = false\n\
             [protocol \"file\"]\n\tallow = always\n"
        );
        fs::write(root_path.join("home/.gitconfig"), gitconfig).expect("write home/.gitconfig");
        TestEnv {
            root: Some(root),
            root_path,
            extra_env: Mutex::new(BTreeMap::new()),
            gpg_installed: Mutex::new(BTreeMap::new()),
            counter: AtomicUsize::new(0),
        }
    }

    /// The root directory of this environment.
    pub fn root(&self) -> &Path {
        &self.root_path
    }

    /// `rel` joined to the root directory (`rel` may also be absolute, then it is returned as is).
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root_path.join(rel)
    }

    /// `HOME` of processes started through this environment.
    pub fn home(&self) -> PathBuf {
        self.path("home")
    }

    /// `GNUPGHOME` of processes started through this environment.
    pub fn gnupg_home(&self) -> PathBuf {
        self.path("gnupg")
    }

    /// `TMPDIR` of processes started through this environment.
    pub fn tmp(&self) -> PathBuf {
        self.path("tmp")
    }

    /// Directory of the log files of spawned processes.
    pub fn logs(&self) -> PathBuf {
        self.path("logs")
    }

    /// The global git configuration file (`GIT_CONFIG_GLOBAL`).
    pub fn gitconfig(&self) -> PathBuf {
        self.path("home/.gitconfig")
    }

    /// A state directory for `-state-dir`, `<root>/states/<name>` (not created); the helpers
    /// below look there as well as in the default place.
    pub fn state_dir(&self, name: &str) -> PathBuf {
        self.path("states").join(name)
    }

    /// Every state directory of a daemon started through this environment: those in the
    /// default place (`$HOME/.local/state/icyci/<job>`) and those made by
    /// [`TestEnv::state_dir`], sorted.
    pub fn state_dirs(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for parent in [self.path("home/.local/state/icyci"), self.path("states")] {
            if let Ok(entries) = fs::read_dir(&parent) {
                found.extend(entries.map(|e| e.expect("read a state directory entry").path()));
            }
        }
        found.sort();
        found
    }

    /// The workspaces (`workspace/` of a state directory) that exist now, sorted.
    pub fn workspaces(&self) -> Vec<PathBuf> {
        self.state_dirs()
            .into_iter()
            .map(|dir| dir.join("workspace"))
            .filter(|dir| fs::symlink_metadata(dir).is_ok())
            .collect()
    }

    /// Everything a daemon keeps until it exits, sorted: in its state directory, its workspace
    /// and its private directory (`private-*`); and anything named `icyci-*` in `TMPDIR`,
    /// where no daemon should leave anything.
    pub fn daemon_dirs(&self) -> Vec<PathBuf> {
        let mut found = self.tmp_entries("icyci-");
        for dir in self.state_dirs() {
            found.extend(
                fs::read_dir(&dir)
                    .expect("read a state directory")
                    .map(|e| e.expect("read a state directory entry"))
                    .filter(|e| {
                        let name = e.file_name();
                        name == "workspace" || name.to_string_lossy().starts_with("private-")
                    })
                    .map(|e| e.path()),
            );
        }
        found.sort();
        found
    }

    fn tmp_entries(&self, prefix: &str) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = fs::read_dir(self.tmp())
            .expect("read TMPDIR")
            .map(|entry| entry.expect("read a TMPDIR entry"))
            .filter(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
            .map(|entry| entry.path())
            .collect();
        found.sort();
        found
    }

    /// A number unique within this environment, for naming files and directories.
    pub fn unique(&self) -> usize {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds (or replaces) a variable in the environment of every later [`TestEnv::command`],
    /// for example `GIT_SSH_COMMAND`.
    pub fn set_var(&self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) {
        lock(&self.extra_env).insert(key.as_ref().to_owned(), value.as_ref().to_owned());
    }

    /// Removes a variable added with [`TestEnv::set_var`].
    pub fn remove_var(&self, key: impl AsRef<OsStr>) {
        lock(&self.extra_env).remove(key.as_ref());
    }

    /// A command for `program` with a cleared environment holding only `PATH` (inherited),
    /// `HOME`, `GNUPGHOME`, `GIT_CONFIG_GLOBAL`, `GIT_CONFIG_NOSYSTEM=1`, `TMPDIR`, `LC_ALL=C`,
    /// the git author and committer name and email, and the variables from
    /// [`TestEnv::set_var`]. Standard input is `/dev/null`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        cmd.env("HOME", self.home())
            .env("GNUPGHOME", self.gnupg_home())
            .env("GIT_CONFIG_GLOBAL", self.gitconfig())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("TMPDIR", self.tmp())
            .env("LC_ALL", "C")
            .env("GIT_AUTHOR_NAME", GIT_NAME)
            .env("GIT_AUTHOR_EMAIL", GIT_EMAIL)
            .env("GIT_COMMITTER_NAME", GIT_NAME)
            .env("GIT_COMMITTER_EMAIL", GIT_EMAIL);
        for (key, value) in lock(&self.extra_env).iter() {
            cmd.env(key, value);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs `git -C dir args…` (with `GIT_TERMINAL_PROMPT=0`) and returns its output, whatever
    /// its exit status.
    pub fn git_output<I, S>(&self, dir: impl AsRef<Path>, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command("git");
        cmd.arg("-C")
            .arg(dir.as_ref())
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0");
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
    }

    /// Runs `git -C dir args…`, panics with its stderr when it fails, returns its stdout
    /// (lossy UTF-8) with surrounding white space trimmed.
    pub fn git<I, S>(&self, dir: impl AsRef<Path>, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.git_output(dir.as_ref(), &args);
        if !out.status.success() {
            panic!(
                "git -C {} {:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
                dir.as_ref().display(),
                args,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A [`TestEnv::command`] for the `icyci` binary under test.
    pub fn icyci(&self) -> Command {
        self.command(env!("CARGO_BIN_EXE_icyci"))
    }

    /// Starts `icyci args…` in the background, its stdout and stderr going to files under
    /// `logs/`.
    pub fn spawn_icyci<I, S>(&self, args: I) -> Daemon
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.icyci();
        cmd.args(args);
        self.spawn_logged(cmd, "icyci")
    }

    /// Starts any command in the background like [`TestEnv::spawn_icyci`]; `label` names its
    /// log files (`logs/<label>-<n>.stdout` and `.stderr`).
    pub fn spawn_logged(&self, cmd: Command, label: &str) -> Daemon {
        Daemon::spawn(self, cmd, label)
    }

    /// Runs `program` with a [`TestEnv::command`] and `args`, panics with its stderr when it
    /// fails, returns its trimmed stdout.
    pub fn run<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(program);
        cmd.args(args);
        run_checked(&mut cmd, None)
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        TestEnv::new()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.stop_gpg_agent();
        if std::thread::panicking() && std::env::var_os(KEEP_ENV_VAR).is_some() {
            if let Some(root) = self.root.take() {
                let kept = root.keep();
                eprintln!("{KEEP_ENV_VAR}: kept test directory {}", kept.display());
            }
        }
    }
}

/// Runs `cmd` (feeding `stdin` when given), panics with its stdout and stderr when it cannot
/// start or fails, returns its trimmed stdout (lossy UTF-8).
pub fn run_checked(cmd: &mut Command, stdin: Option<&[u8]>) -> String {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin was piped");
        pipe.write_all(input)
            .unwrap_or_else(|e| panic!("write stdin of {cmd:?}: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait for {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Polls `cond` about every 20 ms until it returns true; panics naming `what` when it is still
/// false after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes an executable (mode 0755) shell script: `#!/bin/sh` and a new line, then `body`
/// (the shebang is omitted when `body` already starts with `#!`). Parent directories are
/// created.
///
/// The file is written by a short-lived `sh` child, so this (multi-threaded) test process never
/// holds a writable descriptor of it that a concurrently forked child could inherit and make a
/// later `exec` of the script fail with "Text file busy".
pub fn write_script(path: impl AsRef<Path>, body: &str) {
    let path = path.as_ref();
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create the script's directory");
    }
    let mut text = String::new();
    if !body.starts_with("#!") {
        text.push_str("#!/bin/sh\n");
    }
    text.push_str(body);
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "cat > \"$1\" && chmod 0755 \"$1\"", "sh"])
        .arg(path);
    run_checked(&mut cmd, Some(text.as_bytes()));
}

/// Whether the external tool `name` can be used: `sshd` means [`SSHD`], `git-daemon` means
/// `git daemon`, anything else an executable found in `PATH`.
///
/// Returns true when it is there. When it is missing: panics if the variable `CI` is set (a
/// missing tool must not turn CI green), otherwise prints why the test is skipped and returns
/// false, so a test starts with `if !require_tool("gpg") { return; }`.
pub fn require_tool(name: &str) -> bool {
    if tool_available(name) {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("required tool `{name}` is missing (CI is set, so this is an error, not a skip)");
    }
    eprintln!("SKIPPED: required tool `{name}` is missing");
    false
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn tool_available(name: &str) -> bool {
    match name {
        "sshd" => is_executable(Path::new(SSHD)),
        "git-daemon" | "git daemon" => {
            git_exec_path().is_some_and(|dir| is_executable(&dir.join("git-daemon")))
        }
        _ => std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| is_executable(&d.join(name)))),
    }
}

/// `git --exec-path`: the directory of git's helper programs, such as `git-daemon`.
pub fn git_exec_path() -> Option<PathBuf> {
    let out = Command::new("git")
        .arg("--exec-path")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    Some(PathBuf::from(text.trim()))
}
