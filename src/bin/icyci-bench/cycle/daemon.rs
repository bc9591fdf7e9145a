//! A running icyci daemon (stopped with SIGTERM when dropped), its log
//! lines as they arrive, its CPU time and peak RSS from /proc, the git
//! invocations its wrapper logged, and a cheap watch for result notes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use super::world::Wrapper;
use crate::common::check_interrupted;

/// Everything the benchmark reads from the daemon's log, in one place. The
/// matches are loose on purpose: the benchmark must keep working while the
/// daemon's wording changes.
pub mod log_lines {
    /// A state transition back to polling, after a cycle or a decision not
    /// to test (`state cleanup -> poll`, `state lock -> poll`).
    pub fn back_to_poll(line: &str) -> bool {
        let line = line.to_ascii_lowercase();
        ["-> poll", "->poll", "\u{2192} poll", "back to poll"]
            .iter()
            .any(|marker| line.contains(marker))
    }

    /// The line names `commit` (in full or by a 10-digit prefix).
    pub fn mentions(line: &str, commit: &str) -> bool {
        line.contains(&commit[..commit.len().min(10)])
    }
}

/// How one daemon is started.
pub struct Spec<'a> {
    pub name: String,
    pub icyci: &'a Path,
    pub source_url: String,
    pub results_url: String,
    pub script: &'a Path,
    pub poll_interval: &'a str,
    pub namespace: &'a str,
    pub state_dir: PathBuf,
    pub wrapper: Option<&'a Wrapper>,
}

/// One line of the daemon's stderr.
#[derive(Debug, Clone)]
pub struct Line {
    /// When the benchmark read it.
    pub at: Instant,
    pub text: String,
    /// Size of the wrapper's log when the line was read: the git calls
    /// logged before this line.
    pub calls: u64,
}

/// The lines read so far, shared with the reader thread.
#[derive(Default)]
pub struct Log {
    lines: Mutex<Vec<Line>>,
}

impl Log {
    pub fn len(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// The first line from `from` on that satisfies `pick`.
    pub fn find(&self, from: usize, pick: impl Fn(&Line) -> bool) -> Option<(usize, Line)> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .enumerate()
            .skip(from)
            .find(|(_, line)| pick(line))
            .map(|(index, line)| (index, line.clone()))
    }

    /// The first transition back to poll after a line (from `from` on)
    /// naming `commit`: the daemon is done with that commit.
    pub fn done_with(&self, from: usize, commit: &str) -> Option<Line> {
        let (seen, _) = self.find(from, |line| log_lines::mentions(&line.text, commit))?;
        self.find(seen + 1, |line| log_lines::back_to_poll(&line.text))
            .map(|(_, line)| line)
    }

    /// The last transition back to poll from `from` on.
    pub fn last_back_to_poll(&self, from: usize) -> Option<Line> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .skip(from)
            .rev()
            .find(|line| log_lines::back_to_poll(&line.text))
            .cloned()
    }

    /// When the last line arrived.
    pub fn last_at(&self) -> Option<Instant> {
        self.lines.lock().unwrap().last().map(|line| line.at)
    }

    pub fn tail(&self, count: usize) -> String {
        let lines = self.lines.lock().unwrap();
        let start = lines.len().saturating_sub(count);
        lines[start..]
            .iter()
            .map(|line| format!("    {}", line.text))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

pub struct Daemon {
    pub name: String,
    child: Child,
    log: Arc<Log>,
    stopped: bool,
}

impl Daemon {
    pub fn spawn(spec: Spec<'_>) -> Result<Daemon> {
        std::fs::create_dir_all(&spec.state_dir)?;
        let mut command = Command::new(spec.icyci);
        command
            .arg("-source-repo")
            .arg(&spec.source_url)
            .args(["-source-branch", "main"])
            .arg("-test-script")
            .arg(spec.script)
            .arg("-results-repo")
            .arg(&spec.results_url)
            .args(["-poll-interval", spec.poll_interval])
            .args(["-notes-ns", spec.namespace])
            .arg("-state-dir")
            .arg(&spec.state_dir)
            .stdin(Stdio::null())
            // A group of its own, with its git processes: paused as one.
            .process_group(0)
            // The script's output is passed through here; nobody reads it.
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(wrapper) = spec.wrapper {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut dirs = vec![wrapper.dir.clone()];
            dirs.extend(std::env::split_paths(&path));
            command.env("PATH", std::env::join_paths(dirs)?);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", spec.icyci.display()))?;
        let stderr = child.stderr.take().context("daemon stderr")?;
        let log = Arc::new(Log::default());
        let calls_log = spec.wrapper.map(|wrapper| wrapper.log.clone());
        let shared = Arc::clone(&log);
        std::thread::spawn(move || {
            for text in BufReader::new(stderr).lines() {
                let Ok(text) = text else { break };
                let calls = calls_log.as_deref().map_or(0, file_len);
                shared.lines.lock().unwrap().push(Line {
                    at: Instant::now(),
                    text,
                    calls,
                });
            }
        });
        Ok(Daemon {
            name: spec.name,
            child,
            log,
            stopped: false,
        })
    }

    pub fn log(&self) -> Arc<Log> {
        Arc::clone(&self.log)
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// An error (with the end of its log) if the daemon has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            self.stopped = true;
            bail!(
                "daemon {} exited ({status}); its last log lines:\n{}",
                self.name,
                self.log.tail(15)
            );
        }
        Ok(())
    }

    /// utime + stime of the daemon and cutime + cstime of the children it
    /// has reaped (its git processes and scripts).
    pub fn cpu(&self) -> Result<Duration> {
        let times = proc_times(&format!("/proc/{}/stat", self.pid()))?;
        Ok(times.own + times.children)
    }

    /// VmHWM: the daemon's peak resident set, in kB.
    pub fn peak_rss_kb(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse().ok())
            .with_context(|| format!("no VmHWM in {path}"))
    }

    /// Stops the daemon and the git processes it runs (SIGSTOP to its
    /// process group), so that they take no CPU meanwhile.
    pub fn pause(&mut self) -> Result<()> {
        killpg(Pid::from_raw(self.pid()), Signal::SIGSTOP)
            .with_context(|| format!("cannot pause daemon {}", self.name))
    }

    pub fn resume(&mut self) -> Result<()> {
        killpg(Pid::from_raw(self.pid()), Signal::SIGCONT)
            .with_context(|| format!("cannot resume daemon {}", self.name))
    }

    /// SIGTERM, then up to 20 s for a clean exit (the daemon releases what it
    /// holds), then SIGKILL.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
        // A paused daemon must run to act on it.
        let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGCONT);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        eprintln!("  daemon {} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Stops every daemon at once (SIGTERM to all first), for the instances of
/// the contention test.
pub fn stop_all(daemons: &mut [Daemon]) {
    for daemon in daemons.iter() {
        if !daemon.stopped {
            let _ = kill(Pid::from_raw(daemon.pid()), Signal::SIGTERM);
        }
    }
    for daemon in daemons {
        daemon.stop();
    }
}

/// CPU times from a /proc `stat` file.
#[derive(Debug, Clone, Copy)]
pub struct CpuTimes {
    /// utime + stime: the process itself.
    pub own: Duration,
    /// cutime + cstime: the children it has waited for.
    pub children: Duration,
}

pub fn proc_times(path: &str) -> Result<CpuTimes> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed stat")?;
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(1)
        .take(14)
        .map(|field| field.parse().unwrap_or(0))
        .collect();
    if fields.len() < 14 {
        bail!("malformed {path}");
    }
    let seconds = |ticks: u64| Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64);
    Ok(CpuTimes {
        own: seconds(fields[10] + fields[11]),
        children: seconds(fields[12] + fields[13]),
    })
}

/// CPU time of the children this process has reaped (the same counter
/// getrusage(RUSAGE_CHILDREN) reads), from /proc/self/stat.
pub fn own_children_cpu() -> Result<Duration> {
    Ok(proc_times("/proc/self/stat")?.children)
}

/// Clock ticks per second of /proc's times: AT_CLKTCK from the auxiliary
/// vector (what sysconf(_SC_CLK_TCK) returns), 100 if it cannot be read.
pub fn clock_ticks() -> u64 {
    const AT_CLKTCK: usize = 17;
    const WORD: usize = std::mem::size_of::<usize>();
    let Ok(auxv) = std::fs::read("/proc/self/auxv") else {
        return 100;
    };
    let words: Vec<usize> = auxv
        .chunks_exact(WORD)
        .map(|chunk| usize::from_ne_bytes(chunk.try_into().expect("word sized")))
        .collect();
    words
        .chunks_exact(2)
        .find(|pair| pair[0] == AT_CLKTCK)
        .map_or(100, |pair| pair[1] as u64)
}

pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |meta| meta.len())
}

/// Git invocations a wrapper logged between two sizes of its log.
pub fn calls_between(log: &Path, from: u64, to: u64) -> Result<Vec<Vec<String>>> {
    let bytes = std::fs::read(log).with_context(|| format!("reading {}", log.display()))?;
    let end = (to as usize).min(bytes.len());
    let start = (from as usize).min(end);
    Ok(bytes[start..end]
        .split(|&b| b == 0x1e)
        .filter(|record| !record.is_empty())
        .map(|record| {
            let mut args: Vec<String> = record
                .split(|&b| b == 0x1f)
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect();
            // Each argument is followed by US: the record starts and ends
            // with an empty field.
            if args.first().is_some_and(String::is_empty) {
                args.remove(0);
            }
            if args.last().is_some_and(String::is_empty) {
                args.pop();
            }
            args
        })
        .collect())
}

/// The git subcommand of an invocation: its first argument that is not an
/// option, skipping the values of `-C dir`, `-c key=value` and the like.
pub fn subcommand(args: &[String]) -> String {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-C" | "-c" | "--git-dir" | "--work-tree" | "--namespace" | "--config-env"
            | "--super-prefix" => {
                args.next();
            }
            option if option.starts_with('-') => {}
            name => return name.to_owned(),
        }
    }
    "(none)".to_owned()
}

/// Invocations by subcommand.
pub fn by_subcommand(calls: &[Vec<String>]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for call in calls {
        *counts.entry(subcommand(call)).or_insert(0) += 1;
    }
    counts
}

/// Watches a results repository for a new result note without starting
/// processes: its loose result refs and packed-refs are looked at every
/// [`TICK`]; one git call confirms when they change (and once a second
/// whatever happens, in case the refs are stored some other way).
pub struct ResultWatch {
    repo: PathBuf,
    namespace: String,
    files: Vec<PathBuf>,
    seen: Vec<Option<(u64, Vec<u8>)>>,
}

/// How often waiting loops look.
pub const TICK: Duration = Duration::from_millis(2);

impl ResultWatch {
    pub fn new(repo: &Path, namespace: &str) -> ResultWatch {
        let files = vec![
            repo.join(format!("refs/notes/{namespace}.result.passed")),
            repo.join(format!("refs/notes/{namespace}.result.failed")),
            repo.join("packed-refs"),
        ];
        let mut watch = ResultWatch {
            repo: repo.to_path_buf(),
            namespace: namespace.to_owned(),
            seen: Vec::new(),
            files,
        };
        watch.seen = watch.look();
        watch
    }

    fn look(&self) -> Vec<Option<(u64, Vec<u8>)>> {
        self.files
            .iter()
            .enumerate()
            .map(|(index, file)| {
                if index == 2 {
                    // packed-refs can be large: its size and mtime.
                    let meta = std::fs::metadata(file).ok()?;
                    let mtime = meta.modified().ok()?;
                    let stamp = format!("{mtime:?}").into_bytes();
                    Some((meta.len(), stamp))
                } else {
                    std::fs::read(file).ok().map(|bytes| (0, bytes))
                }
            })
            .collect()
    }

    /// Whether the watched files changed since the last call.
    fn changed(&mut self) -> bool {
        let now = self.look();
        let changed = now != self.seen;
        self.seen = now;
        changed
    }

    /// Whether `commit` has a note on the result ref `kind` (one git call).
    pub fn has(&self, kind: &str, commit: &str) -> bool {
        let notes_ref = format!("refs/notes/{}.{kind}", self.namespace);
        Command::new("git")
            .arg("-C")
            .arg(&self.repo)
            .args(["notes", "--ref", &notes_ref, "list", commit])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// Waits until `commit` has its passed note; returns when the change
    /// was first seen. A failed note is an error (the scripts pass).
    pub fn wait(
        &mut self,
        commit: &str,
        timeout: Duration,
        daemons: &mut [&mut Daemon],
    ) -> Result<Instant> {
        let started = Instant::now();
        let mut confirmed_at = started;
        let mut last_alive = started;
        loop {
            let now = Instant::now();
            let changed = self.changed();
            if changed || now.duration_since(confirmed_at) > Duration::from_secs(1) {
                confirmed_at = now;
                if self.has("result.passed", commit) {
                    return Ok(now);
                }
                if self.has("result.failed", commit) {
                    bail!(
                        "the test script failed on {commit}{}",
                        log_tails(daemons.iter().map(|d| &**d))
                    );
                }
            }
            if now.duration_since(last_alive) > Duration::from_millis(50) {
                last_alive = now;
                check_interrupted()?;
                for daemon in daemons.iter_mut() {
                    daemon.check_alive()?;
                }
            }
            if now.duration_since(started) > timeout {
                bail!(
                    "no result note for {commit} in {} (namespace {}) after {:.0?}{}",
                    self.repo.display(),
                    self.namespace,
                    timeout,
                    log_tails(daemons.iter().map(|d| &**d))
                );
            }
            std::thread::sleep(TICK);
        }
    }
}

/// The last log lines of each daemon, for an error message.
pub fn log_tails<'a>(daemons: impl IntoIterator<Item = &'a Daemon>) -> String {
    daemons
        .into_iter()
        .map(|daemon| {
            format!(
                "\n  last log lines of {}:\n{}",
                daemon.name,
                daemon.log.tail(10)
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subcommands() {
        let call = |args: &[&str]| args.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(subcommand(&call(&["-C", "/w", "fetch", "-q"])), "fetch");
        assert_eq!(
            subcommand(&call(&["-c", "a=b", "--no-pager", "-C", "x", "notes"])),
            "notes"
        );
        assert_eq!(subcommand(&call(&["--git-dir=/x", "push"])), "push");
        assert_eq!(subcommand(&call(&["--version"])), "(none)");
    }

    #[test]
    fn log_matches() {
        assert!(log_lines::back_to_poll(
            "2024-01-01T00:00:00Z  INFO state cleanup -> poll"
        ));
        assert!(!log_lines::back_to_poll(
            "INFO state poll -> verify commit=abc"
        ));
        assert!(log_lines::mentions(
            "INFO state poll -> verify commit=0123456789abcdef",
            "0123456789abcdef0000"
        ));
    }

    #[test]
    fn clock_ticks_are_sane() {
        assert!((1..=10_000).contains(&clock_ticks()));
    }
}
