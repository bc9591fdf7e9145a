//! The test script: started in its own process group with the checkout as
//! working directory, its output teed to files (bounded by `-max-output`,
//! see [`crate::capture`]) and to the daemon's own stdout/stderr, and killed
//! as a whole group on timeout or shutdown, together with every process it
//! detached (see [`crate::contain`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::Child;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::capture::Capture;
use crate::contain;
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
    /// Bytes of each stream kept in those files (`-max-output`).
    pub max_output: u64,
    /// Files receiving the whole stdout and stderr (`-keep-full-output`).
    pub full_output: Option<(&'a Path, &'a Path)>,
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
    /// The script's start time (clock ticks since boot), which tells the
    /// processes it started from the daemon's own; `None` without `/proc`.
    start: Option<u64>,
    pumps: Vec<JoinHandle<()>>,
    /// Ends the pumps that still read when the drain grace has passed.
    stop_pumps: CancellationToken,
}

/// Time allowed for output still in the pipes once every process the
/// script started is gone. Only a process out of the daemon's reach (see
/// [`crate::contain`]) can hold a pipe open that long.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// Time a script gets to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);

/// Starts the script. An error is the reason it could not start, worded
/// for the failed note.
pub async fn start(spec: &ScriptSpec<'_>) -> Result<ScriptRun, String> {
    let program = script_path(spec.script, spec.checkout);
    let (full_stdout, full_stderr) = spec.full_output.unzip();
    let stdout_capture = Capture::create(spec.stdout_file, full_stdout, spec.max_output)
        .await
        .map_err(|err| format!("cannot create output file: {err}"))?;
    let stderr_capture = Capture::create(spec.stderr_file, full_stderr, spec.max_output)
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
    // Not reaped before the first wait, so readable even if it has exited.
    let start = contain::start_time(group);
    let stdout = child.stdout.take().expect("stdout was piped");
    let stderr = child.stderr.take().expect("stderr was piped");
    let stop_pumps = CancellationToken::new();
    let pumps = vec![
        tokio::spawn(tee(
            "stdout",
            stdout,
            stdout_capture,
            tokio::io::stdout(),
            stop_pumps.clone(),
        )),
        tokio::spawn(tee(
            "stderr",
            stderr,
            stderr_capture,
            tokio::io::stderr(),
            stop_pumps.clone(),
        )),
    ];
    debug!(pid = id, script = %program.display(), "script started");
    Ok(ScriptRun {
        child,
        group,
        start,
        pumps,
        stop_pumps,
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

    /// Stops a running script for shutdown: SIGTERM to its group and to
    /// the processes it detached, SIGKILL after a grace period, then waits
    /// for it.
    pub async fn terminate(&mut self) {
        signal_group(self.group, Signal::SIGTERM);
        if let Some(start) = self.start {
            contain::signal_escaped(start, self.group, Signal::SIGTERM);
        }
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
    /// script, kills and reaps every process it detached, and collects the
    /// output still in the pipes.
    async fn finish(&mut self) {
        signal_group(self.group, Signal::SIGKILL);
        let _ = self.child.wait().await;
        if let Some(start) = self.start {
            contain::sweep(start).await;
        }
        let pumps: Vec<JoinHandle<()>> = self.pumps.drain(..).collect();
        let drained = drain_pumps(pumps, DRAIN_GRACE, &self.stop_pumps).await;
        if !drained {
            warn!(
                "script output pipe still open {DRAIN_GRACE:?} after the script and everything \
                 it started ended (held by a process out of icyci's reach); output cut"
            );
        }
    }
}

/// Waits for every pump; when `grace` passes first, tells the rest to stop
/// and waits for them to save what they have. True if all ended by
/// themselves.
async fn drain_pumps(
    pumps: Vec<JoinHandle<()>>,
    grace: Duration,
    stop: &CancellationToken,
) -> bool {
    let deadline = tokio::time::Instant::now() + grace;
    let mut drained = true;
    for mut pump in pumps {
        if tokio::time::timeout_at(deadline, &mut pump).await.is_err() {
            drained = false;
            stop.cancel();
            let _ = pump.await;
        }
    }
    drained
}

impl Drop for ScriptRun {
    fn drop(&mut self) {
        // Never leave a test running behind a daemon that gave up on it.
        if !self.pumps.is_empty() {
            signal_group(self.group, Signal::SIGKILL);
            if let Some(start) = self.start {
                contain::kill_leftovers_now(start);
            }
            self.stop_pumps.cancel();
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
/// How long a chunk waits for room in that queue before the passthrough
/// is taken for stalled (and skipped until it has room again).
const PASSTHROUGH_PATIENCE: Duration = Duration::from_millis(50);

/// Copies `input` to `capture` and to `passthrough` (best effort), until
/// the pipe closes or `stop` fires. The passthrough runs in a task of its
/// own behind a bounded queue: a daemon stdout that is closed or stops
/// being read (a stalled pipe, a paused terminal) drops passthrough output
/// instead of stalling the capture, and with it the script; one that is
/// only slower than the script holds the script back a little instead. The pipe is
/// always read to its end, however much of it the capture keeps.
async fn tee<R, W>(
    stream: &'static str,
    mut input: R,
    mut capture: Capture,
    passthrough: W,
    stop: CancellationToken,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (queue, backlog) = tokio::sync::mpsc::channel(PASSTHROUGH_BACKLOG);
    let forwarder = tokio::spawn(forward(backlog, passthrough));
    let mut buffer = vec![0u8; 64 * 1024];
    let mut dropped = 0usize;
    let mut stalled = false;
    let mut save_failed = false;
    loop {
        let read = tokio::select! {
            read = input.read(&mut buffer) => read,
            () = stop.cancelled() => break,
        };
        let read = match read {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) => {
                warn!("reading script {stream} failed: {err}");
                break;
            }
        };
        if let Err(err) = capture.write(&buffer[..read]).await {
            // Reported once: the pipe is still drained, for the passthrough
            // and so that the script never blocks.
            if !save_failed {
                warn!("saving script {stream} failed: {err}");
                save_failed = true;
            }
        }
        // A full queue only means the passthrough is behind (its writes go
        // through a thread of their own): wait for it a little, unless it
        // already made us wait in vain, then drop until it takes up again.
        let chunk = buffer[..read].to_vec();
        let queued = match queue.try_send(chunk) {
            Ok(()) => true,
            Err(_) if stalled => false,
            Err(TrySendError::Full(chunk)) => {
                tokio::time::timeout(PASSTHROUGH_PATIENCE, queue.send(chunk))
                    .await
                    .is_ok_and(|sent| sent.is_ok())
            }
            Err(TrySendError::Closed(_)) => false,
        };
        stalled = !queued;
        if !queued {
            if dropped == 0 {
                warn!("icyci's own output is not being read; script output passthrough skipped");
            }
            dropped += read;
        }
    }
    match capture.finish().await {
        Ok(summary) if summary.cut > 0 => info!(
            "script {stream}: {} bytes, {} of them cut from the notes (-max-output)",
            summary.total, summary.cut
        ),
        Ok(_) => {}
        Err(err) => warn!("saving script {stream} failed: {err}"),
    }
    drop(queue);
    let _ = tokio::time::timeout(Duration::from_secs(1), forwarder).await;
    if dropped > 0 && save_failed {
        warn!("{dropped} bytes of script {stream} were not passed through");
    } else if dropped > 0 {
        warn!("{dropped} bytes of script {stream} were not passed through (their capture for the notes is not affected)");
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
