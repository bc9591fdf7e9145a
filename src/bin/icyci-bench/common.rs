//! Helpers shared by the benchmarks: running git, finding the icyci binary,
//! statistics, and noticing Ctrl-C so that cleanup still runs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// `git -C dir args...`; its trimmed stdout, or an error with its stderr.
pub fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let output = checked(Command::new("git").arg("-C").arg(dir).args(args))?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Runs `command` to its end (stdin closed); an error names the command and
/// carries its stderr when it fails.
pub fn checked(command: &mut Command) -> Result<Output> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {}", describe(command)))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}): {}",
            describe(command),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// The command line of `command`, for error messages.
pub fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Feeds `stream` to `git fast-import` in `repo`.
pub fn fast_import(repo: &Path, stream: &[u8]) -> Result<()> {
    git_with_input(repo, &["fast-import", "--quiet", "--force"], stream)
}

/// `git -C dir args...` with `input` on its standard input.
pub fn git_with_input(dir: &Path, args: &[&str], input: &[u8]) -> Result<()> {
    let mut command = Command::new("git");
    command.arg("-C").arg(dir).args(args).stdin(Stdio::piped());
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {}", describe(&command)))?;
    let written = child.stdin.take().context("stdin")?.write_all(input);
    let status = child.wait()?;
    if !status.success() {
        bail!("{} failed ({status})", describe(&command));
    }
    written.with_context(|| format!("writing to {}", describe(&command)))
}

/// The `icyci` binary built beside this one (`target/<profile>/`).
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found; build it first (cargo build --release)",
            path.display()
        );
    }
    Ok(path)
}

pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

pub fn ratio(large: Duration, small: Duration) -> f64 {
    large.as_secs_f64() / small.as_secs_f64().max(1e-9)
}

/// Median and 90th percentile of a set of samples.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub median: Duration,
    pub p90: Duration,
}

impl Stats {
    /// `None` without samples. The median of an even count is the mean of
    /// the middle two; the p90 is the nearest-rank value.
    pub fn of(samples: &[Duration]) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort();
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2
        };
        let rank = (n * 9).div_ceil(10).max(1);
        Some(Stats {
            median,
            p90: sorted[rank - 1],
        })
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM only set a flag, which the waiting loops turn into
/// an error, so that daemons are stopped and temp dirs removed on the way
/// out instead of being left behind.
pub fn catch_interrupts() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { sigaction(signal, &action) }.context("cannot install a signal handler")?;
    }
    Ok(())
}

/// An error once SIGINT or SIGTERM arrived.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats() {
        let ms = |v: u64| Duration::from_millis(v);
        let samples: Vec<_> = (1..=20).map(ms).collect();
        let stats = Stats::of(&samples).unwrap();
        assert_eq!(stats.median, Duration::from_micros(10_500));
        assert_eq!(stats.p90, ms(18));
        let stats = Stats::of(&[ms(5)]).unwrap();
        assert_eq!((stats.median, stats.p90), (ms(5), ms(5)));
        assert!(Stats::of(&[]).is_none());
    }
}
