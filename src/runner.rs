//! The test script: started in its own process group with the checkout as
//! working directory, its output teed to files and to the daemon's own
//! stdout/stderr, and killed as a whole group on timeout or shutdown.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::Child;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::duration::format_duration;
use crate::git::describe_status;

/// How the script ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptOutcome {
    /// Exit status 0.
    Passed,
    /// Anything else; the reason as it appears in the failed note.
    Failed(String),
}

/// Where and how to run the script.
#[derive(Debug)]
pub struct ScriptSpec<'a> {
    /// `-test-script` exactly as given.
    pub script: &'a str,
    /// The checkout, the script's working directory.
    pub checkout: &'a Path,
    /// `$ICYCI_NOTES_DIR`.
    pub notes_dir: &'a Path,
    /// File receiving a copy of stdout.
    pub stdout_file: &'a Path,
    /// File receiving a copy of stderr.
    pub stderr_file: &'a Path,
}

/// The path to execute: relative paths are relative to the checkout root,
/// never looked up in `$PATH`.
pub fn script_path(script: &str, checkout: &Path) -> PathBuf {
    let path = Path::new(script);
    if path.is_absolute() {
        path.to_owned()
    } else {
        checkout.join(path)
    }
}

/// A started script.
#[derive(Debug)]
pub struct ScriptRun {
    child: Child,
    group: Pid,
    pumps: Vec<JoinHandle<()>>,
}

/// Time allowed for output still in the pipes after the group is gone.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// Time a script gets to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);

/// Starts the script. An error is the reason it could not start, worded
/// for the failed note.
pub async fn start(spec: &ScriptSpec<'_>) -> Result<ScriptRun, String> {
    let program = script_path(spec.script, spec.checkout);
    let stdout_file = tokio::fs::File::create(spec.stdout_file)
        .await
        .map_err(|err| format!("cannot create output file: {err}"))?;
    let stderr_file = tokio::fs::File::create(spec.stderr_file)
        .await
        .map_err(|err| format!("cannot create output file: {err}"))?;

    let mut command = tokio::process::Command::new(&program);
    command
        .current_dir(spec.checkout)
        .env("ICYCI_PID", std::process::id().to_string())
        .env("ICYCI_NOTES_DIR", spec.notes_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so that the script and everything it starts can
        // be killed together.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|err| format!("cannot run {}: {err}", program.display()))?;

    let id = child.id().expect("a freshly spawned child has a pid");
    let group = Pid::from_raw(i32::try_from(id).expect("pids fit in i32"));
    let stdout = child.stdout.take().expect("stdout was piped");
    let stderr = child.stderr.take().expect("stderr was piped");
    let pumps = vec![
        tokio::spawn(tee(stdout, stdout_file, tokio::io::stdout())),
        tokio::spawn(tee(stderr, stderr_file, tokio::io::stderr())),
    ];
    debug!(pid = id, script = %program.display(), "script started");
    Ok(ScriptRun {
        child,
        group,
        pumps,
    })
}

impl ScriptRun {
    /// Waits for the script to end, or kills its group when `limit` passes.
    /// Safe to cancel: dropping the future leaves the run in place.
    pub async fn wait(&mut self, limit: Option<Duration>) -> ScriptOutcome {
        let status = match limit {
            Some(limit) => tokio::time::timeout(limit, self.child.wait()).await.ok(),
            None => Some(self.child.wait().await),
        };
        let outcome = match status {
            Some(Ok(status)) if status.success() => ScriptOutcome::Passed,
            Some(Ok(status)) => ScriptOutcome::Failed(describe_status(status)),
            Some(Err(err)) => ScriptOutcome::Failed(format!("cannot wait for the script: {err}")),
            None => {
                let limit = limit.expect("only a limit can expire");
                ScriptOutcome::Failed(format!(
                    "{} await-command timeout reached",
                    format_duration(limit)
                ))
            }
        };
        self.finish().await;
        outcome
    }

    /// Stops a running script for shutdown: SIGTERM to its group, SIGKILL
    /// after a grace period, then waits for it.
    pub async fn terminate(&mut self) {
        signal_group(self.group, Signal::SIGTERM);
        if tokio::time::timeout(TERM_GRACE, self.child.wait())
            .await
            .is_err()
        {
            warn!("script still running {TERM_GRACE:?} after SIGTERM; killing its process group");
        }
        self.finish().await;
    }

    /// Kills whatever is left of the group (background children of a
    /// script that exited, or the script itself after a timeout), reaps the
    /// script and collects the output still in the pipes.
    async fn finish(&mut self) {
        signal_group(self.group, Signal::SIGKILL);
        let _ = self.child.wait().await;
        for pump in self.pumps.drain(..) {
            let abort = pump.abort_handle();
            if tokio::time::timeout(DRAIN_GRACE, pump).await.is_err() {
                // TODO(#4): a process that left the group (setsid) can hold
                // the pipe open; containment with a subreaper will end it.
                warn!("script output pipe still open after the script ended; output cut");
                abort.abort();
            }
        }
    }
}

impl Drop for ScriptRun {
    fn drop(&mut self) {
        // Never leave a test running behind a daemon that gave up on it.
        if !self.pumps.is_empty() {
            signal_group(self.group, Signal::SIGKILL);
        }
    }
}

fn signal_group(group: Pid, signal: Signal) {
    match killpg(group, signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(err) => warn!(
            pgid = group.as_raw(),
            "cannot signal the script's group: {err}"
        ),
    }
}

/// Chunks of output waiting for the daemon's own stdout or stderr.
const PASSTHROUGH_BACKLOG: usize = 16;

/// Copies `input` to `file` (all of it) and to `passthrough` (best effort).
/// The passthrough runs in a task of its own behind a bounded queue: a
/// daemon stdout that is closed or read slowly (a stalled pipe, a paused
/// terminal) drops passthrough output instead of stalling the capture, and
/// with it the script.
async fn tee<R, W>(mut input: R, mut file: tokio::fs::File, passthrough: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (queue, backlog) = tokio::sync::mpsc::channel(PASSTHROUGH_BACKLOG);
    let forwarder = tokio::spawn(forward(backlog, passthrough));
    let mut buffer = vec![0u8; 64 * 1024];
    let mut dropped = 0usize;
    loop {
        let read = match input.read(&mut buffer).await {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) => {
                warn!("reading script output failed: {err}");
                break;
            }
        };
        if let Err(err) = file.write_all(&buffer[..read]).await {
            warn!("saving script output failed: {err}");
        }
        if queue.try_send(buffer[..read].to_vec()).is_err() {
            if dropped == 0 {
                warn!("icyci's own output is not being read; script output passthrough skipped");
            }
            dropped += read;
        }
    }
    if let Err(err) = file.flush().await {
        warn!("saving script output failed: {err}");
    }
    drop(queue);
    let _ = tokio::time::timeout(Duration::from_secs(1), forwarder).await;
    if dropped > 0 {
        warn!("{dropped} bytes of script output were not passed through (the notes have them)");
    }
}

async fn forward<W: AsyncWrite + Unpin>(
    mut backlog: tokio::sync::mpsc::Receiver<Vec<u8>>,
    mut passthrough: W,
) {
    while let Some(chunk) = backlog.recv().await {
        if passthrough.write_all(&chunk).await.is_err() {
            // Closed: keep draining so that the capture never waits.
            while backlog.recv().await.is_some() {}
            return;
        }
        let _ = passthrough.flush().await;
    }
}
