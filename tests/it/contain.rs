//! The script is contained (issue #4): processes it detaches from its process group are
//! killed when it ends, times out or the daemon stops, and its output is bounded by
//! `-max-output` without ever blocking it.

use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{process_alive, require_tool, write_script, TestEnv};
use crate::cycle::{failed_text, Fixture, PipedDaemon};

/// Generous deadline for anything the daemon does (the machine is shared with other tests).
const LONG: Duration = Duration::from_secs(30);

/// A script that leaves two processes behind outside its process group, both ignoring
/// SIGTERM and each with a `sleep` child: one started with `setsid` that keeps the script's
/// output pipes open, and one daemonized (`setsid`, then a fork whose parent exits, standard
/// streams closed).
struct Escapees {
    pid_files: [PathBuf; 2],
}

impl Escapees {
    /// Writes the helper and returns the script body, which ends with `tail`.
    fn script(env: &TestEnv, tail: &str) -> (Escapees, String) {
        let helper = env.path("ignore-term.sh");
        write_script(
            &helper,
            "trap '' TERM\nsleep 300 &\necho \"$$ $!\" > \"$1.tmp\"\nmv \"$1.tmp\" \"$1\"\nwait\n",
        );
        let pid_files = [env.path("setsid.pids"), env.path("daemonized.pids")];
        let [setsid, daemonized] = &pid_files;
        let (helper, setsid, daemonized) =
            (helper.display(), setsid.display(), daemonized.display());
        let body = format!(
            "setsid '{helper}' '{setsid}' &\n\
             setsid sh -c \"'{helper}' '{daemonized}' </dev/null >/dev/null 2>&1 &\"\n\
             while [ ! -e '{setsid}' ] || [ ! -e '{daemonized}' ]; do sleep 0.05; done\n\
             echo escapees-started >&2\n\
             {tail}"
        );
        (Escapees { pid_files }, body)
    }

    /// The four pids (each helper and its sleep), once written.
    fn pids(&self) -> Vec<u32> {
        self.pid_files
            .iter()
            .flat_map(|file| {
                let text = fs::read_to_string(file)
                    .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
                text.split_whitespace()
                    .map(|pid| pid.parse::<u32>().expect("a pid"))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Every escapee is gone: not running, and not left as a zombie of the daemon.
    fn assert_gone(&self, daemon_pid: u32, logs: &dyn Fn() -> String) {
        for pid in self.pids() {
            assert!(
                !process_alive(pid),
                "process {pid} the script detached survived\n{}",
                logs()
            );
            assert!(
                parent_pid(pid) != Some(daemon_pid),
                "process {pid} left unreaped under the daemon\n{}",
                logs()
            );
        }
    }
}

/// The parent of `pid` from `/proc/<pid>/stat` (also of a zombie), `None` once it is gone.
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The daemon must not have waited out its drain grace for a pipe held open.
fn assert_pipes_drained(stderr: &str) {
    assert!(
        !stderr.contains("output pipe still open"),
        "a detached process kept the output pipe open:\n{stderr}"
    );
}

#[test]
fn detached_processes_are_killed_when_the_script_ends() {
    if !require_tool("gpg") || !require_tool("setsid") {
        return;
    }
    let fx = Fixture::new();
    let (escapees, body) = Escapees::script(&fx.env, "echo done\n");
    let commit = fx.script_commit(&body);
    let mut daemon = fx.spawn(&[]);
    fx.wait_passed(&mut daemon, &commit);
    // The daemon is still running: nothing was left to init by its exit.
    assert!(daemon.is_running(), "{}", daemon.logs_for_humans());
    escapees.assert_gone(daemon.pid(), &|| daemon.logs_for_humans());
    assert_pipes_drained(&daemon.stderr());
    assert_eq!(
        fx.note_text("output.stdout", &commit).as_deref(),
        Some("done\n")
    );
}

#[test]
fn detached_processes_are_killed_on_the_await_command_timeout() {
    if !require_tool("gpg") || !require_tool("setsid") {
        return;
    }
    let fx = Fixture::new();
    let (escapees, body) = Escapees::script(&fx.env, "sleep 300\n");
    let commit = fx.script_commit(&body);
    let started = Instant::now();
    let (status, daemon) = fx.once(&["-timeout", "await-command:2s"]);
    assert_eq!(status.code(), Some(1), "{}", daemon.logs_for_humans());
    assert_eq!(
        fx.note_text("result.failed", &commit).as_deref(),
        Some(failed_text("test.sh", "2s await-command timeout reached").as_str())
    );
    escapees.assert_gone(daemon.pid(), &|| daemon.logs_for_humans());
    assert_pipes_drained(&daemon.stderr());
    println!("timed-out run with escapees took {:?}", started.elapsed());
}

#[test]
fn detached_processes_are_killed_when_the_daemon_is_stopped() {
    if !require_tool("gpg") || !require_tool("setsid") {
        return;
    }
    let fx = Fixture::new();
    let (escapees, body) = Escapees::script(&fx.env, "sleep 300\n");
    fx.script_commit(&body);
    let mut daemon = fx.spawn(&[]);
    daemon.wait_for_stderr("escapees-started", LONG);
    daemon.signal("TERM");
    let status = daemon.expect_exit(LONG);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    escapees.assert_gone(daemon.pid(), &|| daemon.logs_for_humans());
    assert_pipes_drained(&daemon.stderr());
}

/// Bytes of stdout the 200 MB script prints: a head line, the bulk, a tail line.
const HEAD_LINE: &[u8] = b"HEAD-OF-OUTPUT\n";
const BULK: u64 = 200 << 20;
const TAIL_LINE: &[u8] = b"\nTAIL-OF-OUTPUT\n";

#[test]
fn two_hundred_megabytes_of_output_are_bounded_and_never_block() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    // The script reports the daemon's peak resident size just before it ends.
    let commit = fx.script_commit(&format!(
        "printf 'HEAD-OF-OUTPUT\\n'\n\
         head -c {BULK} /dev/zero | tr '\\0' x\n\
         printf '\\nTAIL-OF-OUTPUT\\n'\n\
         grep VmHWM /proc/$ICYCI_PID/status >&2\n"
    ));
    let stderr_log = fx.env.logs().join("icyci-200mb.stderr");
    let mut cmd = fx.env.icyci();
    cmd.args(fx.args(&["-once"]))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&stderr_log).expect("create the stderr log"));
    let started = Instant::now();
    let mut daemon = PipedDaemon::spawn(cmd);
    // The passthrough is read to its end, counting bytes.
    let mut stdout = daemon.child.stdout.take().expect("piped");
    let counter = std::thread::spawn(move || {
        let mut buffer = vec![0u8; 1 << 16];
        let mut total = 0u64;
        while let Ok(read @ 1..) = stdout.read(&mut buffer) {
            total += read as u64;
        }
        total
    });
    let logs = || fs::read_to_string(&stderr_log).unwrap_or_default();
    let status = daemon
        .wait_exit(LONG)
        .unwrap_or_else(|| panic!("the daemon did not finish\n{}", logs()));
    let elapsed = started.elapsed();
    assert_eq!(status.code(), Some(0), "{}", logs());
    let passed_through = counter.join().expect("counter thread");

    let total = HEAD_LINE.len() as u64 + BULK + TAIL_LINE.len() as u64;
    let limit: u64 = 16 << 20;
    let half = (limit / 2) as usize;
    let marker = format!(
        "\n[icyci: {} bytes of output cut here; the first {half} and last {half} bytes are kept]\n",
        total - limit
    );
    let note = fx.note("output.stdout", &commit).expect("stdout note");
    assert_eq!(
        note.len(),
        limit as usize + marker.len(),
        "stdout note size"
    );
    assert!(note.starts_with(HEAD_LINE), "the note starts with the head");
    assert!(
        note[HEAD_LINE.len()..half].iter().all(|&b| b == b'x'),
        "the head is the script's first bytes"
    );
    assert_eq!(&note[half..half + marker.len()], marker.as_bytes());
    let tail = &note[half + marker.len()..];
    assert!(tail.ends_with(TAIL_LINE), "the note ends with the tail");
    assert!(
        tail[..half - TAIL_LINE.len()].iter().all(|&b| b == b'x'),
        "the tail is the script's last bytes"
    );

    let stderr_note = fx.note_text("output.stderr", &commit).expect("stderr note");
    let peak_kib: u64 = stderr_note
        .strip_prefix("VmHWM:")
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM line in {stderr_note:?}"));
    println!(
        "200 MiB of stdout: run took {elapsed:?}, daemon peak RSS {peak_kib} KiB, \
         {passed_through} bytes passed through"
    );
    assert!(
        peak_kib < 64 * 1024,
        "daemon peak RSS {peak_kib} KiB while capturing 200 MiB"
    );
    // Passthrough is unaffected by the bound; it may only skip output, and says so, when the
    // daemon's own stdout is read too slowly.
    if !logs().contains("passthrough skipped") {
        assert_eq!(
            passed_through, total,
            "bytes passed through to the daemon's stdout"
        );
    }
}

#[test]
fn max_output_boundary_and_full_output() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let commit = fx.script_commit(
        "head -c 1024 /dev/zero | tr '\\0' a\nhead -c 1025 /dev/zero | tr '\\0' b >&2\n",
    );
    let (status, daemon) = fx.once(&["-max-output", "1KiB", "-keep-full-output"]);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());

    // Exactly the limit is kept whole; one byte more is cut, with the marker.
    assert_eq!(fx.note("output.stdout", &commit), Some(vec![b'a'; 1024]));
    let marker =
        "\n[icyci: 1 bytes of output cut here; the first 512 and last 512 bytes are kept]\n";
    let mut cut = vec![b'b'; 512];
    cut.extend_from_slice(marker.as_bytes());
    cut.extend_from_slice(&[b'b'; 512]);
    assert_eq!(fx.note("output.stderr", &commit), Some(cut));
    // The whole output, on request.
    assert_eq!(
        fx.note("full-output.stdout", &commit),
        Some(vec![b'a'; 1024])
    );
    assert_eq!(
        fx.note("full-output.stderr", &commit),
        Some(vec![b'b'; 1025])
    );
}

#[test]
fn bad_max_output_values_are_usage_errors() {
    let env = TestEnv::new();
    for bad in ["8M", "0", "", "1.5GiB", "-1", "16 MiB", "lots"] {
        let out = env
            .icyci()
            .args([
                "-source-repo",
                "/nonexistent/source",
                "-results-repo",
                "/nonexistent/results",
                "-once",
            ])
            .arg(format!("-max-output={bad}"))
            .stdin(Stdio::null())
            .output()
            .expect("run icyci");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("icyci: invalid value for -max-output: "),
            "{bad:?}: {first:?}"
        );
        assert!(stderr.contains("\nUsage: icyci"), "{bad:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{bad:?}");
        assert!(
            env.daemon_dirs().is_empty(),
            "{bad:?}: a workspace was made"
        );
    }
}
