//! Keeps every process a test script starts within reach of the daemon.
//!
//! The script runs in its own process group, and killing that group ends
//! the script and whatever stayed in it. A process that leaves the group
//! (`setsid`, a daemonizing double fork) would survive that, holding the
//! output pipes open and, worse, running on into the next test. So the
//! daemon makes itself a *child subreaper* at start: a descendant whose
//! parent dies is then re-parented to the daemon instead of to init, and
//! stays findable in `/proc` as part of the daemon's process tree.
//!
//! When a script ends (or times out, or the daemon stops), [`sweep`] kills
//! every process in that tree that the script started: each child of the
//! daemon that was started no earlier than the script, with everything
//! below it. Processes older than the script are spared, with their
//! descendants: they are the daemon's own (say a `git gc --auto` that git
//! detached, or a gpg-agent started by a signature check), since a process
//! cannot be older than its creator, and an orphan of the script is
//! re-parented to the daemon, never into such a subtree. Adopted children
//! that exit are reaped here: tokio only reaps the children it spawned, and
//! only those it knows, so reaping is by pid, never `waitpid(-1)`.
//!
//! This relies on the daemon running nothing else while the script runs
//! (one job per process, and a job runs git only outside await-command):
//! a git child started during the script's run would be taken for one of
//! the script's. Several jobs in one process would need one subreaper per
//! job (a small intermediate process).
//!
//! What stays out of reach: processes the script has another service start
//! (a container through dockerd or podman's service, `systemd-run`, `at`,
//! `ssh localhost`) are that service's children, never the daemon's; a
//! process running as another user (a setuid program) may not be signalled
//! by an unprivileged daemon; and without `/proc` or the subreaper (not
//! Linux) nothing beyond the process group is found. A PID namespace the
//! script creates itself stays in reach: its init is one of the script's
//! descendants, and killing it ends the namespace. What cannot be killed
//! within five seconds is logged and left. And when the daemon itself is
//! killed (SIGKILL), nothing is swept: the script's processes go to init.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

/// Makes the daemon a child subreaper (Linux), so that processes its test
/// scripts detach are re-parented to it rather than to init.
pub fn become_subreaper() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        nix::sys::prctl::set_child_subreaper(true)?;
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err(std::io::Error::other(
            "child subreapers exist on Linux only",
        ))
    }
}

/// One process as `/proc/<pid>/stat` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessEntry {
    /// Its id.
    pub pid: i32,
    /// Its parent's id.
    pub parent: i32,
    /// Its process group.
    pub group: i32,
    /// Exited, waiting to be reaped.
    pub zombie: bool,
    /// Start time in clock ticks since boot.
    pub start: u64,
}

/// Parses one `/proc/<pid>/stat` line.
pub fn parse_stat(stat: &str) -> Option<ProcessEntry> {
    let (pid, rest) = stat.split_once(" (")?;
    // The command name may hold spaces and parentheses: it ends at the
    // last ')'.
    let fields: Vec<&str> = rest[rest.rfind(')')? + 1..].split_whitespace().collect();
    // fields[0] is field 3 of proc(5): state, ppid, pgrp, ... starttime (22).
    Some(ProcessEntry {
        pid: pid.trim().parse().ok()?,
        zombie: matches!(*fields.first()?, "Z" | "X"),
        parent: fields.get(1)?.parse().ok()?,
        group: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// The start time of process `pid`, as [`ProcessEntry::start`].
pub fn start_time(pid: Pid) -> Option<u64> {
    read_entry(pid.as_raw()).map(|entry| entry.start)
}

fn read_entry(pid: i32) -> Option<ProcessEntry> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every process visible in `/proc`.
fn process_table() -> Vec<ProcessEntry> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(read_entry)
        .collect()
}

/// The processes below `root` that the script started at `script_start`
/// left behind: each child of `root` started no earlier than the script,
/// with all its descendants. Older children and their subtrees are spared,
/// and so are the daemon's own git commands running now.
pub fn script_leftovers(table: &[ProcessEntry], root: i32, script_start: u64) -> Vec<ProcessEntry> {
    let mut children: HashMap<i32, Vec<ProcessEntry>> = HashMap::new();
    for entry in table {
        children.entry(entry.parent).or_default().push(*entry);
    }
    // The daemon's own git commands (a lease renewal) are not the script's.
    let own: Vec<i32> = crate::git::running_git_pids()
        .into_iter()
        .filter_map(|pid| i32::try_from(pid).ok())
        .collect();
    let mut found: Vec<ProcessEntry> = children
        .get(&root)
        .into_iter()
        .flatten()
        .filter(|child| child.start >= script_start && !own.contains(&child.pid))
        .copied()
        .collect();
    // /proc is not read atomically: a reused pid could make the parent
    // links circular, so each pid is taken once.
    let mut seen: HashSet<i32> = found.iter().map(|entry| entry.pid).collect();
    seen.insert(root);
    let mut next = 0;
    while next < found.len() {
        let below = children.get(&found[next].pid).into_iter().flatten();
        let new: Vec<ProcessEntry> = below.filter(|e| seen.insert(e.pid)).copied().collect();
        found.extend(new);
        next += 1;
    }
    found
}

/// How long [`sweep`] keeps killing before it gives up on what is left.
const SWEEP_LIMIT: Duration = Duration::from_secs(5);

/// Kills every process the script (started at `script_start`, clock ticks
/// since boot) left behind and reaps those re-parented to the daemon,
/// until none is left or five seconds pass. Call it once the script
/// itself has been reaped.
pub async fn sweep(script_start: u64) {
    let daemon = std::process::id() as i32;
    let deadline = Instant::now() + SWEEP_LIMIT;
    let mut killed = HashSet::new();
    loop {
        let table = process_table();
        reap_exited(&table, daemon);
        let left = script_leftovers(&table, daemon, script_start);
        if left.is_empty() {
            break;
        }
        killed.extend(signal_living(&left, Signal::SIGKILL));
        if Instant::now() >= deadline {
            let pids: Vec<i32> = left.iter().map(|entry| entry.pid).collect();
            warn!(
                ?pids,
                "processes the test script started could not be killed within {SWEEP_LIMIT:?} \
                 (another user's, or stuck in the kernel); left running"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if !killed.is_empty() {
        let count = killed.len();
        let processes = if count == 1 { "process" } else { "processes" };
        info!("killed {count} {processes} the test script left running");
    }
}

/// Sends `signal` to the processes the script started that are outside its
/// process group `group` (SIGTERM at shutdown: the group gets its own).
pub fn signal_escaped(script_start: u64, group: Pid, signal: Signal) {
    let daemon = std::process::id() as i32;
    let escaped: Vec<ProcessEntry> = script_leftovers(&process_table(), daemon, script_start)
        .into_iter()
        .filter(|entry| entry.group != group.as_raw())
        .collect();
    signal_living(&escaped, signal);
}

/// Reaps the daemon's exited children that tokio does not know: processes
/// it adopted as a subreaper (say a `git gc --auto` git detached), which
/// would otherwise stay zombies. Call it only while the daemon has no child
/// process of its own running, so that no status tokio waits for is taken.
pub fn reap_adopted() {
    reap_exited(&process_table(), std::process::id() as i32);
}

/// One round without waiting, for when a run is dropped unfinished.
pub fn kill_leftovers_now(script_start: u64) {
    let daemon = std::process::id() as i32;
    let table = process_table();
    reap_exited(&table, daemon);
    signal_living(
        &script_leftovers(&table, daemon, script_start),
        Signal::SIGKILL,
    );
}

/// Reaps every exited child of the daemon in `table`, by pid: never
/// `waitpid(-1)`, which could take the status of a child tokio waits for.
fn reap_exited(table: &[ProcessEntry], daemon: i32) {
    for entry in table {
        if entry.parent == daemon && entry.zombie {
            let _ = waitpid(Pid::from_raw(entry.pid), Some(WaitPidFlag::WNOHANG));
        }
    }
}

/// Signals the living processes of `entries`; returns those signalled.
fn signal_living(entries: &[ProcessEntry], signal: Signal) -> Vec<i32> {
    let mut signalled = Vec::new();
    for entry in entries.iter().filter(|entry| !entry.zombie) {
        match kill(Pid::from_raw(entry.pid), signal) {
            Ok(()) => signalled.push(entry.pid),
            Err(nix::errno::Errno::ESRCH) => {}
            Err(err) => debug!(pid = entry.pid, "cannot signal a leftover process: {err}"),
        }
    }
    signalled
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pid: i32, parent: i32, start: u64) -> ProcessEntry {
        ProcessEntry {
            pid,
            parent,
            group: pid,
            zombie: false,
            start,
        }
    }

    #[test]
    fn parses_stat_lines() {
        let line = "4242 (sh (evil) x) S 100 4242 4242 0 -1 4194560 107 0 0 0 0 0 0 0 20 0 1 0 \
                    987654 2600960 220 18446744073709551615 1 1 0 0 0 0 0 0 65538 0 0 0 17 1 0 0";
        assert_eq!(
            parse_stat(line),
            Some(ProcessEntry {
                pid: 4242,
                parent: 100,
                group: 4242,
                zombie: false,
                start: 987654,
            })
        );
        let zombie = "7 (x) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0";
        assert!(parse_stat(zombie).expect("parses").zombie);
        assert_eq!(parse_stat("7 (x) S 1"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn leftovers_are_the_script_era_subtrees() {
        let daemon = 10;
        let table = [
            entry(daemon, 1, 0),
            // Older than the script: a detached git gc and its child.
            entry(20, daemon, 50),
            entry(21, 20, 150),
            // Started with or after the script: re-parented orphans.
            entry(30, daemon, 100),
            entry(31, 30, 120),
            entry(32, 31, 130),
            entry(40, daemon, 200),
            // Someone else's.
            entry(50, 1, 300),
        ];
        let mut pids: Vec<i32> = script_leftovers(&table, daemon, 100)
            .iter()
            .map(|e| e.pid)
            .collect();
        pids.sort_unstable();
        assert_eq!(pids, [30, 31, 32, 40]);
        assert!(script_leftovers(&table, daemon, 1000).is_empty());
    }

    #[test]
    fn a_reused_pid_never_loops() {
        // pid 70 seen twice while /proc was read: once as the daemon's
        // child, once (reused) as a child of its own child.
        let table = [entry(70, 10, 200), entry(71, 70, 210), entry(70, 71, 220)];
        let pids: Vec<i32> = script_leftovers(&table, 10, 100)
            .iter()
            .map(|e| e.pid)
            .collect();
        assert_eq!(pids, [70, 71]);
    }
}
