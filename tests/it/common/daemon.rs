//! A background process (normally the `icyci` daemon) with its output logged to files.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::TestEnv;

/// A process started by [`TestEnv::spawn_icyci`] or [`TestEnv::spawn_logged`].
///
/// Its stdout and stderr go to `logs/<label>-<n>.stdout` and `.stderr`. On drop it is killed
/// (SIGKILL) and reaped if still running, and when the test is panicking both logs are printed
/// to stderr.
pub struct Daemon {
    child: Child,
    label: String,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    status: Option<ExitStatus>,
}

fn read_lossy(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => panic!("read {}: {e}", path.display()),
    }
}

impl Daemon {
    pub(super) fn spawn(env: &TestEnv, mut cmd: Command, label: &str) -> Daemon {
        let n = env.unique();
        let stdout_path = env.logs().join(format!("{label}-{n}.stdout"));
        let stderr_path = env.logs().join(format!("{label}-{n}.stderr"));
        let stdout = File::create(&stdout_path).expect("create the stdout log");
        let stderr = File::create(&stderr_path).expect("create the stderr log");
        cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Daemon {
            child,
            label: label.to_string(),
            stdout_path,
            stderr_path,
            status: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends signal `sig` (a name such as `TERM`, `INT`, `USR1`, `KILL`) with `kill`; panics
    /// when the process has already been reaped or `kill` fails.
    pub fn signal(&self, sig: &str) {
        assert!(
            self.status.is_none(),
            "cannot send SIG{sig} to {}: it already exited ({:?})",
            self.label,
            self.status
        );
        send_signal(self.pid(), sig);
    }

    /// The exit status if the process has exited (reaping it), `None` while it runs.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait on the child");
        }
        self.status
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Waits up to `timeout` for the process to exit; its exit status, or `None` if it is still
    /// running at the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Like [`Daemon::wait_exit`], but panics (with the logs) when the process is still
    /// running at the deadline.
    pub fn expect_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.wait_exit(timeout) {
            Some(status) => status,
            None => panic!(
                "{} still running after {timeout:?}\n{}",
                self.label,
                self.logs_for_humans()
            ),
        }
    }

    /// Kills (SIGKILL) the process, if it is still running, together with every process it
    /// started that is still alive (test scripts in their own process groups included), and
    /// reaps it; its exit status.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.try_status() {
            return status;
        }
        // Collect the descendants first: once the daemon is dead they are re-parented and can
        // no longer be told from other processes.
        let descendants = descendants(self.pid());
        let _ = self.child.kill();
        kill_all(&descendants);
        let status = self.child.wait().expect("wait for the killed child");
        self.status = Some(status);
        status
    }

    /// Everything the process wrote to stdout so far (lossy UTF-8).
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// Everything the process wrote to stderr so far (lossy UTF-8).
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// The stdout log file.
    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    /// The stderr log file.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// Waits until stderr contains `needle` and returns the whole stderr. Panics with the logs
    /// when `timeout` passes, or as soon as the process has exited without printing it.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_for_output(needle, timeout, true)
    }

    /// Like [`Daemon::wait_for_stderr`] for stdout.
    pub fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_for_output(needle, timeout, false)
    }

    fn wait_for_output(&mut self, needle: &str, timeout: Duration, stderr: bool) -> String {
        let which = if stderr { "stderr" } else { "stdout" };
        let read = |d: &Daemon| if stderr { d.stderr() } else { d.stdout() };
        let deadline = Instant::now() + timeout;
        loop {
            // Check for exit before reading, so output written just before exiting is seen.
            let exited = self.try_status();
            let text = read(self);
            if text.contains(needle) {
                return text;
            }
            if let Some(status) = exited {
                panic!(
                    "{} exited ({status}) without printing {needle:?} on {which}\n{}",
                    self.label,
                    self.logs_for_humans()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {needle:?} on {which} of {}\n{}",
                    self.label,
                    self.logs_for_humans()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Both logs, framed, for a failure message.
    pub fn logs_for_humans(&self) -> String {
        let show = |path: &Path| {
            fs::read(path).map_or_else(
                |e| format!("<cannot read: {e}>"),
                |b| String::from_utf8_lossy(&b).into_owned(),
            )
        };
        format!(
            "---- {label} (pid {pid}) stdout, {out} ----\n{}\n---- {label} stderr, {err} ----\n{}\n\
             ---- end of {label} logs ----",
            show(&self.stdout_path),
            show(&self.stderr_path),
            label = self.label,
            pid = self.pid(),
            out = self.stdout_path.display(),
            err = self.stderr_path.display(),
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.status.is_none() {
            let descendants = descendants(self.pid());
            let _ = self.child.kill();
            kill_all(&descendants);
            if let Ok(status) = self.child.wait() {
                self.status = Some(status);
            }
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs_for_humans());
        }
    }
}

/// Sends signal `sig` (a name without `SIG`) to process `pid` with the `kill` command; panics
/// when `kill` fails.
pub fn send_signal(pid: u32, sig: &str) {
    let out = Command::new("kill")
        .arg("-s")
        .arg(sig)
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("run kill");
    if !out.status.success() {
        panic!(
            "kill -s {sig} {pid} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The parent process id of `pid` from `/proc/<pid>/stat`, `None` if it is gone.
pub fn parent_pid(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Whether process `pid` still exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next());
        !matches!(state, Some("Z") | Some("X") | None)
    })
}

/// All living descendants of `pid` (children, their children, …), from `/proc`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            {
                if let Some(parent) = parent_pid(child) {
                    parents.push((child, parent));
                }
            }
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let current = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == current)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// Sends SIGKILL to every process in `pids`, ignoring those already gone.
fn kill_all(pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .args(["-s", "KILL"])
        .args(pids.iter().map(u32::to_string))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
