//! The workspace in the state directory: one instance per state directory (a lock file), and
//! what a killed instance leaves there — a partial clone, a completed one with stale lock files,
//! processes still working in it — reclaimed or reused by the next one.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{descendants, parent_pid, process_alive, require_tool, wait_for, Daemon};
use crate::cycle::Fixture;

/// Generous deadline for anything the daemon does (the machine is shared with other tests).
const LONG: Duration = Duration::from_secs(30);

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// After a clean exit only the marker, the lock file and an empty spool are left in the state
/// directory, and nothing at all in `TMPDIR`.
fn assert_nothing_leaked(fx: &Fixture, state: &Path) {
    assert_eq!(
        names(state),
        [".icyci-state", "lock", "spool"],
        "in {}",
        state.display()
    );
    assert!(names(&state.join("spool")).is_empty(), "spool not empty");
    assert!(
        names(&fx.env.tmp()).is_empty(),
        "left in TMPDIR: {:?}",
        names(&fx.env.tmp())
    );
}

fn stop(daemon: &mut Daemon) {
    daemon.signal("TERM");
    let status = daemon.expect_exit(LONG);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
}

/// SIGKILL to the daemon alone, as the kernel's OOM killer or `kill -9` would send it; its
/// children get no signal from the test.
fn sigkill(daemon: &mut Daemon) {
    daemon.signal("KILL");
    let status = daemon.expect_exit(LONG);
    assert_eq!(status.signal(), Some(9), "{}", daemon.logs_for_humans());
}

#[test]
fn a_second_instance_of_the_same_job_is_refused_and_touches_nothing() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let started = fx.env.path("started");
    let gate = fx.env.path("gate");
    let fds = fx.env.path("fds");
    let commit = fx.script_commit(&format!(
        "for fd in /proc/$$/fd/*; do readlink \"$fd\"; done > '{fds}'\n\
         echo $$ > '{started}'\n\
         while [ ! -e '{gate}' ]; do sleep 0.05; done\necho done\n",
        fds = fds.display(),
        started = started.display(),
        gate = gate.display()
    ));
    // No -state-dir: both take the default one of the job, as two copies of one unit would.
    let mut first = fx.spawn(&[]);
    wait_for("the script to start", LONG, || {
        fs::read_to_string(&started).is_ok_and(|pid| pid.ends_with('\n'))
    });
    let states = fx.env.state_dirs();
    assert_eq!(states.len(), 1, "{states:?}");
    let state = &states[0];
    // What the second instance must not touch: a half-written spool entry (removed when a
    // spool is opened) and a private directory (reclaimed when a workspace is opened).
    let planted_tmp = state.join("spool/.tmp-planted");
    let planted_private = state.join("private-planted");
    fs::create_dir(&planted_tmp).expect("plant a spool entry");
    fs::create_dir(&planted_private).expect("plant a private directory");
    let before = names(state);
    let script_pid: u32 = fs::read_to_string(&started)
        .expect("the script's pid")
        .trim()
        .parse()
        .expect("a pid");

    let started_at = Instant::now();
    let mut second = fx.spawn(&[]);
    let status = second.expect_exit(LONG);
    let refused_in = started_at.elapsed();
    assert_eq!(status.code(), Some(2), "{}", second.logs_for_humans());
    let stderr = second.stderr();
    assert_eq!(
        stderr.lines().count(),
        1,
        "one line, nothing else:\n{stderr}"
    );
    assert!(
        stderr.starts_with("icyci: ")
            && stderr.contains(&state.display().to_string())
            && stderr.contains(&format!("pid {}", first.pid()))
            && stderr.contains("its own -state-dir"),
        "{stderr}"
    );
    assert!(second.stdout().is_empty(), "{}", second.stdout());
    eprintln!("second instance refused in {refused_in:?}");

    assert_eq!(
        names(state),
        before,
        "the second instance changed the state directory"
    );
    assert!(planted_tmp.exists() && planted_private.exists());
    assert!(
        process_alive(script_pid),
        "the first instance's script is gone"
    );
    assert!(first.is_running(), "{}", first.logs_for_humans());

    // Neither the script nor any other child holds the lock file open.
    let lock = fs::canonicalize(state.join("lock")).expect("the lock file");
    let open = fs::read_to_string(&fds).expect("the script's descriptors");
    assert!(
        !open.lines().any(|l| Path::new(l) == lock),
        "the script inherited the lock:\n{open}"
    );

    fs::write(&gate, b"").expect("open the gate");
    fx.wait_passed(&mut first, &commit);
    stop(&mut first);
    fs::remove_dir(&planted_tmp).expect("remove the planted entry");
    fs::remove_dir(&planted_private).expect("remove the planted directory");
    assert_nothing_leaked(&fx, state);
}

/// Pseudo-random (incompressible) bytes, different for each `seed`.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The pack a clone in `source` is receiving, once it has more than a mebibyte.
fn pack_being_received(source: &Path) -> Option<PathBuf> {
    fs::read_dir(source.join(".git/objects/pack"))
        .ok()?
        .flatten()
        .find(|e| {
            e.file_name().to_string_lossy().starts_with("tmp_pack_")
                && e.metadata().is_ok_and(|m| m.len() > 1 << 20)
        })
        .map(|e| e.path())
}

#[test]
fn sigkill_during_a_large_clone_three_times_then_a_clean_start_leaks_nothing() {
    if !require_tool("gpg") {
        return;
    }
    let test_start = Instant::now();
    let fx = Fixture::new();
    const FILES: usize = 40;
    let files: Vec<(String, Vec<u8>)> = (0..FILES)
        .map(|i| (format!("big/{i}.bin"), noise(i as u64, 1 << 20)))
        .collect();
    fx.env
        .fast_import(&fx.work, "main", &files, "forty mebibytes");
    fx.env.git(&fx.work, ["reset", "-q", "--hard", "main"]);
    // The source borrows the work repository's objects, so pushing the tip is quick; the daemon
    // still receives all of them through the file:// transport (a plain path would hard-link).
    fs::write(
        fx.source.join("objects/info/alternates"),
        format!("{}\n", fx.work.join(".git/objects").display()),
    )
    .expect("write alternates");
    // Random data has no deltas to find: the source sends its pack at once and the clone
    // spends its time receiving it.
    fx.env.git(&fx.source, ["config", "pack.window", "0"]);
    let commit = fx.script_commit("set -- big/*.bin\necho \"$#\"\n");
    let built = test_start.elapsed();

    let state = fx.env.state_dir("big");
    let source_url = format!("file://{}", fx.source.display());
    let args: Vec<String> = [
        "-source-repo",
        &source_url,
        "-results-repo",
        &fx.results.to_string_lossy(),
        "-test-script",
        "test.sh",
        "-poll-interval=100ms",
        "-state-dir",
        &state.to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let clone_dir = state.join("workspace/source");

    for round in 1..=3 {
        let mut daemon = fx.env.spawn_icyci(&args);
        if round > 1 {
            // The killed clone's pack is still there until the new instance has reclaimed it.
            daemon.wait_for_stderr("no completed clone", LONG);
        }
        wait_for("a clone receiving its pack", LONG, || {
            assert!(daemon.is_running(), "{}", daemon.logs_for_humans());
            pack_being_received(&clone_dir).is_some()
        });
        let children: Vec<u32> = descendants(daemon.pid())
            .into_iter()
            .filter(|&pid| parent_pid(pid) == Some(daemon.pid()))
            .collect();
        let all = descendants(daemon.pid());
        assert!(!children.is_empty(), "no git clone running");
        sigkill(&mut daemon);
        // The clone dies with the daemon (it would otherwise run on for seconds, writing into
        // the workspace the next instance reclaims), and the rest of git follows.
        wait_for(
            "the daemon's git children to die with it",
            Duration::from_secs(1),
            || children.iter().all(|&pid| !process_alive(pid)),
        );
        wait_for("every git process of the daemon to end", LONG, || {
            all.iter().all(|&pid| !process_alive(pid))
        });
        assert!(
            clone_dir.join(".git").exists(),
            "round {round}: no partial clone left to reclaim"
        );
    }
    let killed = test_start.elapsed();

    let mut daemon = fx.env.spawn_icyci(&args);
    fx.wait_passed(&mut daemon, &commit);
    assert_eq!(
        fx.note_text("output.stdout", &commit).as_deref(),
        Some(format!("{FILES}\n").as_str())
    );
    let stderr = daemon.stderr();
    assert!(
        stderr.contains("reclaiming the workspace")
            && stderr.contains("no completed clone")
            && !stderr.contains("reusing the clone"),
        "{stderr}"
    );
    // Three private directories of killed instances were reclaimed: one is left, its own.
    let privates = names(&state)
        .into_iter()
        .filter(|n| n.starts_with("private-"))
        .count();
    assert_eq!(privates, 1, "{:?}", names(&state));
    stop(&mut daemon);
    assert_nothing_leaked(&fx, &state);
    eprintln!(
        "repository built in {built:?}, three clones killed by {killed:?}, done in {:?}",
        test_start.elapsed()
    );
}

/// The script of [`a_completed_clone_left_by_a_killed_instance_is_reused`]: it reports files in
/// the checkout that the commit does not have.
const REPORTING_SCRIPT: &str = "[ -e stale-artefact ] && echo 'stale artefact seen'\n\
                                git status --porcelain --ignored\n\
                                echo \"run $(git rev-parse HEAD)\"\n";

#[test]
fn a_completed_clone_left_by_a_killed_instance_is_reused() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let state = fx.env.state_dir("job");
    let state_arg = state.to_string_lossy().into_owned();
    let first = fx.script_commit(REPORTING_SCRIPT);
    let mut daemon = fx.spawn(&["-state-dir", &state_arg]);
    fx.wait_passed(&mut daemon, &first);
    daemon.wait_for_stderr("state cleanup -> poll", LONG);
    sigkill(&mut daemon);

    // What a killed instance may leave: a half-updated checkout with a build artefact, the lock
    // files of the git command it was running, a pack it was receiving, and a process still at
    // work in the clone.
    let clone = state.join("workspace/source");
    fs::write(clone.join("stale-artefact"), b"x").expect("plant an artefact");
    fs::write(
        clone.join("test.sh"),
        b"#!/bin/sh\necho half-updated\nexit 1\n",
    )
    .expect("half-update the checkout");
    let git_dir = clone.join(".git");
    for stale in ["index.lock", "HEAD.lock", "objects/pack/tmp_pack_planted"] {
        fs::write(git_dir.join(stale), b"").expect("plant a stale file");
    }
    let witness = git_dir.join("witness-of-the-old-clone");
    fs::write(&witness, b"").expect("plant a witness");
    let mut lingering = Command::new("sleep")
        .arg("300")
        .current_dir(&clone)
        .stdin(Stdio::null())
        .spawn()
        .expect("start a process in the clone");

    let second = fx.script_commit(REPORTING_SCRIPT);
    let mut daemon = fx.spawn(&["-state-dir", &state_arg]);
    fx.wait_passed(&mut daemon, &second);
    assert_eq!(
        fx.note_text("output.stdout", &second),
        Some(format!("run {second}\n")),
        "the run saw more than the commit's files\n{}",
        daemon.logs_for_humans()
    );
    let stderr = daemon.stderr();
    assert!(
        stderr.contains("reusing the clone left by an earlier instance"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("killing process {}", lingering.id())),
        "{stderr}"
    );
    let status = lingering.wait().expect("reap the lingering process");
    assert_eq!(status.signal(), Some(9), "{status}");
    daemon.wait_for_stderr("state cleanup -> poll", LONG);
    assert!(witness.exists(), "the clone was made afresh");
    for stale in ["index.lock", "HEAD.lock", "objects/pack/tmp_pack_planted"] {
        assert!(!git_dir.join(stale).exists(), "{stale} is still there");
    }
    stop(&mut daemon);
    assert_nothing_leaked(&fx, &state);
}

#[test]
fn a_clone_whose_configuration_a_script_changed_is_cloned_afresh() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let state = fx.env.state_dir("job");
    let state_arg = state.to_string_lossy().into_owned();
    let first = fx.script_commit("git config core.editor 'echo changed'\n");
    let mut daemon = fx.spawn(&["-state-dir", &state_arg]);
    fx.wait_passed(&mut daemon, &first);
    daemon.wait_for_stderr("state cleanup -> poll", LONG);
    sigkill(&mut daemon);
    let witness = state.join("workspace/source/.git/witness-of-the-old-clone");
    fs::write(&witness, b"").expect("plant a witness");

    let second = fx.script_commit("git config --get core.editor || echo unchanged\n");
    let mut daemon = fx.spawn(&["-state-dir", &state_arg]);
    fx.wait_passed(&mut daemon, &second);
    assert_eq!(
        fx.note_text("output.stdout", &second).as_deref(),
        Some("unchanged\n")
    );
    let stderr = daemon.stderr();
    assert!(
        stderr.contains(
            "not reusing the clone left by an earlier instance: its git configuration was \
             changed after the clone; cloning afresh"
        ),
        "{stderr}"
    );
    assert!(!witness.exists(), "the old clone was reused");
    stop(&mut daemon);
    assert_nothing_leaked(&fx, &state);
}

/// Every path under `dir`, with the bytes of files and the targets of links.
fn snapshot(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in fs::read_dir(&next).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = fs::symlink_metadata(&path).expect("stat");
            let what = if meta.is_dir() {
                pending.push(path.clone());
                "dir".to_owned()
            } else if meta.is_symlink() {
                format!("link {}", fs::read_link(&path).expect("readlink").display())
            } else {
                format!("{:?}", fs::read(&path).expect("read"))
            };
            found.push((path, what));
        }
    }
    found.sort();
    found
}

#[test]
fn a_directory_that_is_not_a_state_directory_is_refused_and_nothing_in_it_is_touched() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    fx.script_commit("echo ran\n");
    // `-state-dir $HOME`: the user's files, a file of theirs named like the lock, a directory
    // named like a private one, and a process at work in a directory named like the workspace.
    let home = fx.env.home();
    for (path, bytes) in [
        ("workspace/proj/f", &b"the user's data\n"[..]),
        ("lock", b"not a pid: the user's lock\n"),
        ("private-x/notes", b"the user's notes\n"),
    ] {
        let path = home.join(path);
        fs::create_dir_all(path.parent().unwrap()).expect("mkdir");
        fs::write(path, bytes).expect("write");
    }
    let mut user_process = Command::new("sleep")
        .arg("300")
        .current_dir(home.join("workspace/proj"))
        .stdin(Stdio::null())
        .spawn()
        .expect("start a process in the user's directory");
    let before = snapshot(&home);

    // Debug logging shows any git command the daemon would run.
    let mut cmd = fx.env.icyci();
    cmd.args(fx.args(&["-state-dir", &home.to_string_lossy()]))
        .env("ICYCI_LOG", "debug");
    let mut daemon = fx.env.spawn_logged(cmd, "icyci");
    let status = daemon.expect_exit(LONG);
    assert_eq!(status.code(), Some(2), "{}", daemon.logs_for_humans());
    let stderr = daemon.stderr();
    assert_eq!(
        stderr.lines().count(),
        1,
        "one line, nothing else:\n{stderr}"
    );
    assert!(
        stderr.starts_with(&format!("icyci: the state directory {} ", home.display()))
            && stderr.contains("is not an icyci state directory (no .icyci-state")
            && stderr.contains("give -state-dir an empty or new directory"),
        "{stderr}"
    );
    assert!(daemon.stdout().is_empty(), "{}", daemon.stdout());

    assert_eq!(snapshot(&home), before, "the daemon changed the directory");
    assert!(
        process_alive(user_process.id()),
        "the user's process was killed"
    );
    assert!(
        fx.env.git(&fx.results, ["for-each-ref"]).is_empty(),
        "something was pushed"
    );
    user_process.kill().expect("stop the user's process");
    user_process.wait().expect("reap it");
}

#[test]
fn an_empty_existing_directory_is_taken_and_marked() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let commit = fx.script_commit("echo ran\n");
    let state = fx.env.state_dir("empty");
    fs::create_dir_all(&state).expect("mkdir");
    let (status, daemon) = fx.once(&["-state-dir", &state.to_string_lossy()]);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    assert!(fx.note("result.passed", &commit).is_some());
    let marker = fs::read_to_string(state.join(".icyci-state")).expect("the marker");
    assert!(marker.starts_with("icyci state directory"), "{marker:?}");
    assert_nothing_leaked(&fx, &state);
}

/// A relative `$XDG_STATE_HOME` is ignored, as the XDG specification says: the state directory
/// goes under `$HOME/.local/state`, not under whatever directory icyci was started in.
#[test]
fn a_relative_xdg_state_home_is_ignored() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let commit = fx.script_commit("echo ran\n");
    fx.env.set_var("XDG_STATE_HOME", "relative-state");
    let mut cmd = fx.env.icyci();
    cmd.args(fx.base_args())
        .arg("-once")
        .current_dir(fx.env.root());
    let mut daemon = fx.env.spawn_logged(cmd, "icyci");
    let status = daemon.expect_exit(LONG);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    assert!(fx.note("result.passed", &commit).is_some());
    assert!(!fx.env.root().join("relative-state").exists());
    let dirs = fx.env.state_dirs();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    assert!(
        dirs[0].starts_with(fx.env.path("home/.local/state/icyci")),
        "{dirs:?}"
    );
}

/// The version before the marker kept only its spool in the state directory (its workspace
/// lived in $TMPDIR): such a directory is marked and taken.
#[test]
fn a_state_directory_of_an_earlier_version_without_the_marker_is_taken() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let state = fx.env.state_dir("old");
    let state_arg = state.to_string_lossy().into_owned();
    let first = fx.script_commit("echo first\n");
    let (status, daemon) = fx.once(&["-state-dir", &state_arg]);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    // As the previous version left it: only the spool.
    for name in [".icyci-state", "lock"] {
        fs::remove_file(state.join(name)).expect("remove");
    }
    assert_eq!(names(&state), ["spool"]);

    let second = fx.script_commit("echo second\n");
    let mut daemon = fx.spawn(&["-state-dir", &state_arg]);
    fx.wait_passed(&mut daemon, &second);
    let stderr = daemon.stderr();
    assert!(
        stderr.contains("marking the state directory of an earlier version with .icyci-state"),
        "{stderr}"
    );
    assert!(fx.note("result.passed", &first).is_some());
    stop(&mut daemon);
    assert_nothing_leaked(&fx, &state);
}
