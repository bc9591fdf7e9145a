//! Fault tests (issue 4, "Fault tests"): the daemon SIGKILLed in each state of its cycle and
//! started afresh with the same state directory; the source remote, a real `git daemon`,
//! stopped for many polls; the results remote, a real `git daemon`,
//! stopped across the results push and started again, with and without a restart of icyci in
//! between; four instances of one namespace on twenty commits pushed one after another.
//!
//! Every test ends with each tested commit carrying complete notes in the results repository
//! and no commit locked without a result. The points where the daemon is stopped are found
//! only through what stays true whatever its internals: its `state X -> Y` log lines, the test
//! script, the programs it runs by name from `PATH` (a passthrough `git` that recognises the
//! push of the result note refs, a `gpg` that stalls the signature check) and the pushes the
//! results repository receives (a `pre-receive` hook).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::{require_tool, wait_for, write_script, Daemon, GitDaemon, Sign, TestEnv};

/// Deadline for anything that normally takes a second or two on an idle machine.
const QUICK: Duration = Duration::from_secs(20);
/// The lease of the lock notes in the kill tests: the shortest the daemon accepts is 1s.
const LEASE: &str = "2s";
/// The notes namespace.
const NS: &str = "icyci";
/// How long a wrapper or hook stalls at most (in 50 ms steps) when the test never releases it.
const STALL_STEPS: u32 = 1200;

/// One source, one results repository, a signing key, and a test script that counts its runs.
struct World {
    env: TestEnv,
    fpr: String,
    work: PathBuf,
    source: PathBuf,
    /// The source as the daemon is told (`-source-repo`).
    source_url: String,
    /// The results repository on disk, also when the daemon reaches it through `git daemon`.
    results: PathBuf,
    /// The results repository as the daemon is told (`-results-repo`).
    results_url: String,
    state: PathBuf,
    script: PathBuf,
    /// One line per run of the script: `<commit> <unix seconds> <$INSTANCE>`.
    runs: PathBuf,
    /// While this file exists the script waits before it prints and passes.
    hold: PathBuf,
    /// A directory to put first on the daemon's `PATH`: passthrough `git` and `gpg` wrappers
    /// that act only when armed (see [`World::arm`]).
    wrappers: PathBuf,
    /// Arm, mark and release files of the wrappers and of the results' `pre-receive` hook.
    ctl: PathBuf,
}

/// A run of the test script, as it recorded itself.
#[derive(Debug, Clone)]
struct Run {
    commit: String,
    at: i64,
    instance: String,
}

impl World {
    /// `results` is the results repository's path under the test root.
    fn new(results: &str) -> World {
        let env = TestEnv::new();
        let fpr = env.gpg_key();
        let work = env.work_repo("work");
        let source = env.bare_repo("src.git");
        let results = env.bare_repo(results);
        let ctl = env.path("ctl");
        fs::create_dir_all(&ctl).expect("create the control directory");
        let runs = env.path("runs");
        let hold = env.path("hold");
        let script = env.path("bin/count.sh");
        write_script(
            &script,
            &format!(
                "set -e\n\
                 head=$(git rev-parse HEAD)\n\
                 echo \"$head $(date +%s) ${{INSTANCE:-}}\" >> '{runs}'\n\
                 n=0\n\
                 while [ -e '{hold}' ] && [ \"$n\" -lt {STALL_STEPS} ]; do sleep 0.05; n=$((n + 1)); done\n\
                 echo \"tested $head\"\n\
                 echo 'on stderr' >&2\n",
                runs = runs.display(),
                hold = hold.display(),
            ),
        );
        let wrappers = env.path("wrappers");
        let ctl_file = |name: &str| ctl.join(name).display().to_string();
        // The git wrapper recognises the push of result notes, however it is spelled, and kills
        // the daemon (its parent) instead of pushing: the results are staged, never pushed.
        write_script(
            wrappers.join("git"),
            &format!(
                "if [ -e '{arm}' ]; then\n\
                 \tcase \" $* \" in\n\
                 \t*\" push \"*refs/notes/{NS}.result.*)\n\
                 \t\trm -f '{arm}'\n\
                 \t\techo \"$*\" > '{mark}.tmp' && mv '{mark}.tmp' '{mark}'\n\
                 \t\tkill -KILL \"$PPID\"\n\
                 \t\texit 1;;\n\
                 \tesac\n\
                 fi\n\
                 exec '{git}' \"$@\"\n",
                arm = ctl_file("git-arm"),
                mark = ctl_file("git-mark"),
                git = find_program("git").display(),
            ),
        );
        // The gpg wrapper stalls the first signature check until the test kills the daemon.
        write_script(
            wrappers.join("gpg"),
            &format!(
                "if [ -e '{arm}' ]; then\n\
                 \trm -f '{arm}'\n\
                 \ttouch '{mark}'\n\
                 \tn=0\n\
                 \twhile [ \"$n\" -lt {STALL_STEPS} ]; do sleep 0.05; n=$((n + 1)); done\n\
                 \texit 2\n\
                 fi\n\
                 exec '{gpg}' \"$@\"\n",
                arm = ctl_file("gpg-arm"),
                mark = ctl_file("gpg-mark"),
                gpg = find_program("gpg").display(),
            ),
        );
        // The hook holds the first push whose ref updates match the pattern in the arm file
        // until the test releases it, then accepts it.
        write_script(
            results.join("hooks/pre-receive"),
            &format!(
                "refs=$(cat)\n\
                 if [ -e '{arm}' ] && printf '%s\\n' \"$refs\" | grep -q -e \"$(cat '{arm}')\"; then\n\
                 \trm -f '{arm}'\n\
                 \tprintf '%s\\n' \"$refs\" > '{mark}.tmp' && mv '{mark}.tmp' '{mark}'\n\
                 \tn=0\n\
                 \twhile [ ! -e '{release}' ] && [ \"$n\" -lt {STALL_STEPS} ]; do sleep 0.05; n=$((n + 1)); done\n\
                 fi\n\
                 exit 0\n",
                arm = ctl_file("hook-arm"),
                mark = ctl_file("hook-mark"),
                release = ctl_file("hook-release"),
            ),
        );
        let results_url = results.to_string_lossy().into_owned();
        let source_url = source.to_string_lossy().into_owned();
        World {
            state: env.path("state"),
            env,
            fpr,
            work,
            source,
            source_url,
            results,
            results_url,
            script,
            runs,
            hold,
            wrappers,
            ctl,
        }
    }

    /// A signed commit pushed to the source branch; its id.
    fn signed_commit(&self, message: &str) -> String {
        let commit = self
            .env
            .commit(&self.work, message, Sign::Gpg(self.fpr.clone()));
        self.env.push(&self.work, &self.source, &["main"]);
        commit
    }

    /// Arms the wrapper or hook of control file `name` (`git-arm`, `gpg-arm`, `hook-arm`);
    /// `content` is the hook's pattern.
    fn arm(&self, name: &str, content: &str) {
        fs::write(self.ctl.join(name), content).expect("write an arm file");
    }

    /// Lets the held push through the hook.
    fn release_hook(&self) {
        fs::write(self.ctl.join("hook-release"), b"").expect("write the release file");
    }

    /// Waits until control file `name` exists while `daemon` runs; its content.
    fn wait_mark(&self, daemon: &mut Daemon, name: &str) -> String {
        let path = self.ctl.join(name);
        wait_for(&format!("{name} of {}", daemon.pid()), QUICK, || {
            if let Some(status) = daemon.try_status() {
                panic!(
                    "the daemon exited ({status}) before {name}\n{}",
                    daemon.logs_for_humans()
                );
            }
            path.exists()
        });
        fs::read_to_string(&path).expect("read a mark file")
    }

    fn args(&self, state: &Path, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "-source-repo",
            &self.source_url,
            "-results-repo",
            &self.results_url,
            "-test-script",
            &self.script.to_string_lossy(),
            "-poll-interval",
            "100ms",
            "-state-dir",
            &state.to_string_lossy(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Starts a daemon on the shared state directory, with the wrappers first on its `PATH`
    /// when `wrapped`.
    fn spawn(&self, label: &str, wrapped: bool, extra: &[&str]) -> Daemon {
        let mut cmd = self.env.icyci();
        cmd.args(self.args(&self.state, extra));
        if wrapped {
            let inherited = std::env::var_os("PATH").unwrap_or_default();
            let dirs =
                std::iter::once(self.wrappers.clone()).chain(std::env::split_paths(&inherited));
            cmd.env("PATH", std::env::join_paths(dirs).expect("join PATH"));
        }
        self.env.spawn_logged(cmd, label)
    }

    fn spool_entry(&self, commit: &str) -> PathBuf {
        self.state.join("spool").join(commit)
    }

    fn runs(&self) -> Vec<Run> {
        let text = fs::read_to_string(&self.runs).unwrap_or_default();
        text.lines()
            .map(|line| {
                let mut words = line.split(' ');
                let commit = words.next().unwrap_or_default().to_string();
                let at = words
                    .next()
                    .and_then(|w| w.parse().ok())
                    .unwrap_or_else(|| panic!("bad run line {line:?}"));
                let instance = words.next().unwrap_or_default().to_string();
                Run {
                    commit,
                    at,
                    instance,
                }
            })
            .collect()
    }

    /// When the runs of `commit` started, in unix seconds.
    fn runs_of(&self, commit: &str) -> Vec<i64> {
        self.runs()
            .into_iter()
            .filter(|r| r.commit == commit)
            .map(|r| r.at)
            .collect()
    }

    fn note(&self, name: &str, commit: &str) -> Option<String> {
        self.env.note_text(&self.results, NS, name, commit)
    }

    /// The commits annotated in `refs/notes/<NS>.<name>` of the results repository.
    fn annotated(&self, name: &str) -> BTreeSet<String> {
        let notes_ref = format!("--ref=refs/notes/{NS}.{name}");
        let out = self
            .env
            .git_output(&self.results, ["notes", notes_ref.as_str(), "list"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| line.split_whitespace().nth(1).map(str::to_string))
            .collect()
    }

    /// Commits locked in the results repository without a result note.
    fn stuck(&self) -> Vec<String> {
        let passed = self.annotated("result.passed");
        let failed = self.annotated("result.failed");
        self.annotated("locked")
            .into_iter()
            .filter(|c| !passed.contains(c) && !failed.contains(c))
            .collect()
    }

    /// The `lease-until` seconds of the lock note on `commit`, if it is locked.
    fn lease_until(&self, commit: &str) -> Option<i64> {
        let text = self.note("locked", commit)?;
        let until = text
            .lines()
            .find_map(|line| line.strip_prefix("lease-until: "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|secs| secs.parse().ok());
        Some(until.unwrap_or_else(|| panic!("no lease-until in the lock note {text:?}")))
    }

    /// Waits for the `result.passed` note on `commit`; fails at once when `daemon` exits.
    fn wait_passed(&self, daemon: &mut Daemon, commit: &str) {
        wait_for(&format!("result.passed on {commit}"), QUICK, || {
            if let Some(status) = daemon.try_status() {
                panic!(
                    "the daemon exited ({status}) before the results of {commit} arrived\n{}",
                    daemon.logs_for_humans()
                );
            }
            self.note("result.passed", commit).is_some()
        });
    }

    /// The notes of a passed run of the counting script on `commit`, all of them.
    fn assert_complete(&self, commit: &str) {
        let locked = self
            .note("locked", commit)
            .unwrap_or_else(|| panic!("no lock note on {commit}"));
        assert!(
            locked.contains("this commit is being tested by icyCI"),
            "{locked:?}"
        );
        assert_eq!(
            self.note("result.passed", commit),
            Some(format!(
                "{} completed successfully\n",
                self.script.display()
            )),
            "result.passed of {commit}"
        );
        assert_eq!(self.note("result.failed", commit), None, "{commit}");
        assert_eq!(
            self.note("output.stdout", commit),
            Some(format!("tested {commit}\n")),
            "output.stdout of {commit}"
        );
        assert_eq!(
            self.note("output.stderr", commit).as_deref(),
            Some("on stderr\n"),
            "output.stderr of {commit}"
        );
        let verified = self
            .note("verified", commit)
            .unwrap_or_else(|| panic!("no verified note on {commit}"));
        assert!(!verified.trim().is_empty(), "{verified:?}");
    }

    fn assert_nothing_stuck(&self, logs: &[&Daemon]) {
        let stuck = self.stuck();
        assert!(
            stuck.is_empty(),
            "locked without a result: {stuck:?}\n{}",
            all_logs(logs)
        );
    }
}

/// The executable `name` in this process's `PATH`.
fn find_program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .unwrap_or_else(|| panic!("`{name}` not found in PATH"))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

fn commit_field(commit: &str) -> String {
    format!("commit={commit}")
}

fn all_logs(daemons: &[&Daemon]) -> String {
    daemons
        .iter()
        .map(|d| d.logs_for_humans())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until a line of `daemon`'s stderr contains every one of `needles`; fails at once
/// when the daemon exits.
fn wait_log(daemon: &mut Daemon, needles: &[&str], timeout: Duration) {
    wait_for(&format!("a log line with {needles:?}"), timeout, || {
        if let Some(status) = daemon.try_status() {
            panic!(
                "the daemon exited ({status}) before logging {needles:?}\n{}",
                daemon.logs_for_humans()
            );
        }
        daemon
            .stderr()
            .lines()
            .any(|line| needles.iter().all(|n| line.contains(n)))
    });
}

/// The last `state X -> Y` line of a log.
fn last_state_line(log: &str) -> &str {
    log.lines()
        .rev()
        .find(|line| line.contains("state ") && line.contains(" -> "))
        .unwrap_or_default()
}

/// Where a daemon is killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KillPoint {
    /// gpg is checking the tip's signature (no lock yet).
    Verify,
    /// The lock push is held in the results' hook; the daemon dies, then the push lands: a
    /// lock whose holder is gone.
    Lock,
    /// The script runs (the daemon and everything it started die).
    Script,
    /// The results are staged (notes created, spooled) and their push is just starting.
    Staged,
    /// The results push is held in the results' hook; the daemon dies, then the push lands.
    PushLanded,
    /// The results push is held in the results' hook; the daemon dies with its children, so
    /// the push is lost.
    PushLost,
}

impl KillPoint {
    /// The state the daemon is in when it dies, as its log names it.
    fn state(self) -> &'static str {
        match self {
            KillPoint::Verify => "verify",
            KillPoint::Lock => "lock",
            KillPoint::Script => "await-command",
            KillPoint::Staged | KillPoint::PushLanded | KillPoint::PushLost => "push",
        }
    }

    /// Whether the results were staged, so that the spool holds them.
    fn spooled(self) -> bool {
        matches!(
            self,
            KillPoint::Staged | KillPoint::PushLanded | KillPoint::PushLost
        )
    }

    /// Whether a lock note of the dead daemon is left in the results repository.
    fn leaves_a_lock(self) -> bool {
        self != KillPoint::Verify
    }

    /// How often the script runs for the commit in all.
    fn runs(self) -> usize {
        if self == KillPoint::Script {
            2
        } else {
            1
        }
    }
}

/// Kills a daemon (`-lock-lease 2s`) at `point` of its cycle, checks what it left behind, then
/// starts a fresh instance on the same job and state directory once the dead holder's lease has
/// ended: the commit ends with complete results, its script ran exactly as often as
/// [`KillPoint::runs`] says (a second run only after the lease), spooled results are delivered
/// rather than tested again, and no lock is left without a result.
fn sigkill_then_fresh_start(point: KillPoint) {
    if !require_tool("gpg") {
        return;
    }
    let started = Instant::now();
    let w = World::new("results.git");
    let commit = w.signed_commit(&format!("killed in {point:?}"));
    match point {
        KillPoint::Verify => w.arm("gpg-arm", ""),
        // The lock is the first push a cycle makes to the results.
        KillPoint::Lock => w.arm("hook-arm", "refs/"),
        KillPoint::Script => fs::write(&w.hold, b"").expect("write the hold file"),
        KillPoint::Staged => w.arm("git-arm", ""),
        KillPoint::PushLanded | KillPoint::PushLost => {
            w.arm("hook-arm", &format!(" refs/notes/{NS}\\.result\\."))
        }
    }
    let lease = ["-lock-lease", LEASE];
    let mut first = w.spawn("icyci-killed", true, &lease);

    match point {
        KillPoint::Verify => {
            w.wait_mark(&mut first, "gpg-mark");
            first.kill();
        }
        KillPoint::Lock => {
            let pushed = w.wait_mark(&mut first, "hook-mark");
            assert!(
                pushed.contains(&format!(" refs/notes/{NS}.locked")),
                "the first push of the cycle is not the lock: {pushed:?}"
            );
            first.signal("KILL");
            first.expect_exit(QUICK);
            w.release_hook();
            wait_for("the lock push to land", QUICK, || {
                w.note("locked", &commit).is_some()
            });
        }
        KillPoint::Script => {
            wait_for("the script to start", QUICK, || {
                assert!(first.is_running(), "{}", first.logs_for_humans());
                !w.runs().is_empty()
            });
            first.kill();
        }
        KillPoint::Staged => {
            let status = first.expect_exit(QUICK);
            assert_eq!(
                status.signal(),
                Some(9),
                "the git wrapper did not kill the daemon\n{}",
                first.logs_for_humans()
            );
            let push = fs::read_to_string(w.ctl.join("git-mark")).expect("the wrapper's mark");
            assert!(push.contains(&format!("refs/notes/{NS}.result.")), "{push}");
        }
        KillPoint::PushLanded => {
            w.wait_mark(&mut first, "hook-mark");
            first.signal("KILL");
            first.expect_exit(QUICK);
            w.release_hook();
            wait_for("the orphaned results push to land", QUICK, || {
                w.note("result.passed", &commit).is_some()
            });
        }
        KillPoint::PushLost => {
            w.wait_mark(&mut first, "hook-mark");
            first.kill();
            w.release_hook();
        }
    }

    // Where it died, and what it left.
    let log = first.stderr();
    let last = last_state_line(&log);
    assert!(
        last.contains(&format!("-> {}", point.state())) && last.contains(&commit_field(&commit)),
        "killed in the wrong state: {last:?}\n{}",
        first.logs_for_humans()
    );
    assert_eq!(
        w.spool_entry(&commit).join("meta").exists(),
        point.spooled(),
        "spool entry of {commit} after a kill in {point:?}"
    );
    assert_eq!(
        w.note("locked", &commit).is_some(),
        point.leaves_a_lock(),
        "lock note after a kill in {point:?}"
    );
    assert_eq!(
        w.note("result.passed", &commit).is_some(),
        point == KillPoint::PushLanded,
        "results after a kill in {point:?}"
    );
    assert_eq!(
        w.runs_of(&commit).len(),
        usize::from(matches!(
            point,
            KillPoint::Script | KillPoint::Staged | KillPoint::PushLanded | KillPoint::PushLost
        )),
        "runs before the kill"
    );

    // A fresh instance, once the dead holder's lease has ended: without the spool it would
    // take the commit over and test it again.
    fs::remove_file(&w.hold).ok();
    let until = w.lease_until(&commit);
    if let Some(until) = until {
        wait_for("the dead holder's lease to end", QUICK, || now() > until);
    }
    let mut fresh = w.spawn("icyci-fresh", false, &lease);
    w.wait_passed(&mut fresh, &commit);
    wait_for("the spool entry to be removed", QUICK, || {
        !w.spool_entry(&commit).exists()
    });
    w.assert_complete(&commit);

    let runs = w.runs_of(&commit);
    let logs = all_logs(&[&first, &fresh]);
    assert_eq!(
        runs.len(),
        point.runs(),
        "runs of {commit}: {runs:?}\n{logs}"
    );
    if let (Some(&second), Some(until)) = (runs.get(1), until) {
        assert!(
            second > until,
            "second run at {second}, before the lease ended at {until}\n{logs}"
        );
    }
    let fresh_log = fresh.stderr();
    if point.spooled() {
        assert!(fresh_log.contains("spooled results found"), "{logs}");
    }
    let taken_over = fresh_log.contains(&format!("taking over stale lock of {commit}"));
    assert_eq!(
        taken_over,
        matches!(point, KillPoint::Lock | KillPoint::Script),
        "stale lock takeover after a kill in {point:?}\n{logs}"
    );
    w.assert_nothing_stuck(&[&first, &fresh]);

    fresh.signal("TERM");
    let status = fresh.expect_exit(QUICK);
    assert_eq!(status.code(), Some(0), "{}", fresh.logs_for_humans());
    eprintln!("{point:?}: {:?}", started.elapsed());
}

#[test]
fn sigkill_while_verifying_then_a_fresh_start_tests_the_commit_once() {
    sigkill_then_fresh_start(KillPoint::Verify);
}

#[test]
fn sigkill_while_locking_then_a_fresh_start_takes_over_after_the_lease() {
    sigkill_then_fresh_start(KillPoint::Lock);
}

#[test]
fn sigkill_while_the_script_runs_then_a_fresh_start_retests_after_the_lease() {
    sigkill_then_fresh_start(KillPoint::Script);
}

#[test]
fn sigkill_between_staging_and_pushing_then_the_spool_delivers_without_a_rerun() {
    sigkill_then_fresh_start(KillPoint::Staged);
}

#[test]
fn sigkill_during_a_push_that_lands_then_the_spool_delivers_again_without_a_rerun() {
    sigkill_then_fresh_start(KillPoint::PushLanded);
}

#[test]
fn sigkill_during_a_push_that_is_lost_then_the_spool_delivers_without_a_rerun() {
    sigkill_then_fresh_start(KillPoint::PushLost);
}

/// A restarted daemon comes back long before a default lease (the script's limit plus ten
/// minutes) ends. The daemon that finds the dead holder's live lease at its start takes the
/// commit over once the lease has ended.
#[test]
fn a_daemon_restarted_within_the_dead_holders_lease_takes_over_when_it_ends() {
    if !require_tool("gpg") {
        return;
    }
    let w = World::new("results.git");
    let commit = w.signed_commit("killed while running");
    fs::write(&w.hold, b"").expect("write the hold file");
    let lease = ["-lock-lease", LEASE];
    let mut first = w.spawn("icyci-killed", false, &lease);
    wait_for("the script to start", QUICK, || !w.runs().is_empty());
    first.kill();
    fs::remove_file(&w.hold).expect("remove the hold file");
    let until = w.lease_until(&commit).expect("locked");

    // Restarted at once, as a service manager does.
    let mut fresh = w.spawn("icyci-restarted", false, &lease);
    w.wait_passed(&mut fresh, &commit);
    w.assert_complete(&commit);
    let runs = w.runs_of(&commit);
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs[1] > until, "second run at {} before {until}", runs[1]);
    w.assert_nothing_stuck(&[&first, &fresh]);
}

// ---- the source remote stopped ----

/// A world whose source is served by a `git daemon` on loopback (serving the directory `base`),
/// with a daemon that has tested a first commit.
fn served_source_tested_once() -> (World, PathBuf, GitDaemon, Daemon) {
    let mut w = World::new("results.git");
    let base = w
        .source
        .parent()
        .expect("the source's directory")
        .to_path_buf();
    let server = GitDaemon::start(&w.env, &base);
    w.source_url = server.url("src.git");
    let first = w.signed_commit("before the outage");
    let mut daemon = w.spawn("icyci", false, &[]);
    w.wait_passed(&mut daemon, &first);
    assert_eq!(w.runs_of(&first).len(), 1);
    (w, base, server, daemon)
}

/// The source, served by a real `git daemon`, is stopped for more polls in a row than the
/// original survives (it gives up after ten failed fetches), then started again on its port:
/// icyci kept polling all along, and tests the tip pushed meanwhile, once.
#[test]
fn source_server_down_for_many_polls_then_back_the_next_tip_is_tested() {
    if !require_tool("gpg") || !require_tool("git-daemon") {
        return;
    }
    let (w, base, mut server, mut daemon) = served_source_tested_once();

    let port = server.port();
    server.stop();
    // Failures back off up to ten poll intervals (1 s here), so twelve take some seconds.
    let outage = Duration::from_secs(90);
    wait_for("twelve failed polls in a row", outage, || {
        assert!(daemon.is_running(), "{}", daemon.logs_for_humans());
        daemon
            .stderr()
            .lines()
            .any(|line| line.contains("poll failed") && line.contains("attempt=12"))
    });
    let second = w.signed_commit("pushed during the outage");
    assert!(w.runs_of(&second).is_empty());
    let _server = GitDaemon::start_on_port(&w.env, &base, port);

    w.wait_passed(&mut daemon, &second);
    w.assert_complete(&second);
    assert_eq!(w.runs_of(&second).len(), 1, "{}", daemon.logs_for_humans());
    assert_eq!(w.runs().len(), 2, "{}", daemon.logs_for_humans());
    assert!(daemon.stderr().contains("poll works again after"));
    w.assert_nothing_stuck(&[&daemon]);
    daemon.signal("TERM");
    let status = daemon.expect_exit(QUICK);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
}

/// A server that accepts connections on `port` of 127.0.0.1 and never answers, holding them
/// open until it is dropped: a remote that hangs rather than refuses.
struct SilentServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentServer {
    fn start(port: u16) -> SilentServer {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("bind 127.0.0.1:{port}: {e}"));
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            // Bounded, whatever the test does: 5 minutes at most.
            for _ in 0..6000 {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok((connection, _)) = listener.accept() {
                    held.push(connection);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        SilentServer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The source's server is replaced by one that takes connections and never answers: each poll
/// is given up after its limit (ten poll intervals, at least 10 s) and retried, logged; when
/// the real server is back, the tip pushed meanwhile is tested.
#[test]
fn a_source_that_never_answers_does_not_wedge_the_daemon() {
    if !require_tool("gpg") || !require_tool("git-daemon") {
        return;
    }
    let (w, base, mut server, mut daemon) = served_source_tested_once();

    let port = server.port();
    server.stop();
    let silent = SilentServer::start(port);
    let silence = Duration::from_secs(60);
    wait_for("a poll given up for want of an answer", silence, || {
        assert!(daemon.is_running(), "{}", daemon.logs_for_humans());
        daemon.stderr().lines().any(|line| {
            line.contains("poll failed: the source (git ls-remote) gave no answer within 10s")
        })
    });
    let second = w.signed_commit("pushed during the silence");
    drop(silent);
    let _server = GitDaemon::start_on_port(&w.env, &base, port);

    w.wait_passed(&mut daemon, &second);
    w.assert_complete(&second);
    assert_eq!(w.runs_of(&second).len(), 1, "{}", daemon.logs_for_humans());
    w.assert_nothing_stuck(&[&daemon]);
    daemon.signal("TERM");
    let status = daemon.expect_exit(QUICK);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
}

/// A TCP proxy on a free port of 127.0.0.1 to `target`: while [`SilentProxy::silence`] is on,
/// new connections are taken and held open without an answer, for as long as the proxy lives
/// (a remote that hangs one connection for good); otherwise they are passed on.
struct SilentProxy {
    port: u16,
    silent: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentProxy {
    fn start(target: u16) -> SilentProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("the proxy's address").port();
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let (silent, stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (silent_flag, stopping) = (silent.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            // Bounded, whatever the test does: 5 minutes at most.
            for _ in 0..30_000 {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                if silent_flag.load(Ordering::Relaxed) {
                    held.push(client);
                    continue;
                }
                let _ = client.set_nonblocking(false);
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ]
                .into_iter()
                .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        SilentProxy {
            port,
            silent,
            stop,
            thread: Some(thread),
        }
    }

    fn silence(&self, on: bool) {
        self.silent.store(on, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for SilentProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// While the script runs, one lease renewal's connection to the results repository hangs for
/// good: that renewal is given up when the next is due, the later ones go through, and the lease
/// stays live to the end of the run (nobody could take the commit over).
#[test]
fn a_renewal_that_hangs_does_not_stop_the_later_ones() {
    if !require_tool("gpg") || !require_tool("git-daemon") {
        return;
    }
    let (mut w, server) = served_world();
    let proxy = SilentProxy::start(server.port());
    w.results_url = format!("git://127.0.0.1:{}/results.git", proxy.port);
    fs::write(&w.hold, b"").expect("write the hold file");
    let commit = w.signed_commit("a long run");
    let mut daemon = w.spawn("icyci", false, &["-lock-lease", "4s"]);
    wait_for("the script to start", QUICK, || {
        assert!(daemon.is_running(), "{}", daemon.logs_for_humans());
        !w.runs().is_empty()
    });
    proxy.silence(true);
    wait_log(&mut daemon, &["lease not renewed", "gave no answer"], QUICK);
    proxy.silence(false);
    // Two lease lengths on, the lease is still live: renewed after the hang.
    std::thread::sleep(Duration::from_secs(8));
    let until = w.lease_until(&commit).expect("still locked");
    assert!(
        until > now(),
        "lease ended at {until}\n{}",
        daemon.logs_for_humans()
    );
    fs::remove_file(&w.hold).expect("release the script");
    w.wait_passed(&mut daemon, &commit);
    w.assert_complete(&commit);
    assert_eq!(w.runs_of(&commit).len(), 1);
    assert!(
        !daemon.stderr().contains("left running"),
        "the daemon's own git was taken for the script's\n{}",
        daemon.logs_for_humans()
    );
    daemon.signal("TERM");
    assert_eq!(
        daemon.expect_exit(QUICK).code(),
        Some(0),
        "{}",
        daemon.logs_for_humans()
    );
}

// ---- the results remote stopped ----

/// A world whose results repository is served by a `git daemon` on loopback.
fn served_world() -> (World, GitDaemon) {
    let mut w = World::new("served/results.git");
    let server = GitDaemon::start(&w.env, w.env.path("served"));
    w.results_url = server.url("results.git");
    (w, server)
}

/// Holds the script of `commit` until the results server is stopped, then lets it finish and
/// waits until the daemon has given up its in-cycle push retries and spooled the results; the
/// port the server listened on.
fn stop_the_results_server_across_the_push(
    w: &World,
    server: &mut GitDaemon,
    daemon: &mut Daemon,
    commit: &str,
) -> u16 {
    wait_for("the script to start", QUICK, || {
        assert!(daemon.is_running(), "{}", daemon.logs_for_humans());
        !w.runs().is_empty()
    });
    assert!(
        w.note("locked", commit).is_some(),
        "locked through the server before the run"
    );
    let port = server.port();
    server.stop();
    fs::remove_file(&w.hold).expect("remove the hold file");
    wait_log(
        daemon,
        &["they wait in the spool", &commit_field(commit)],
        QUICK,
    );
    assert!(w.spool_entry(commit).join("meta").exists(), "spooled");
    assert_eq!(w.note("result.passed", commit), None);
    port
}

fn assert_delivered_once(w: &World, commit: &str, daemons: &[&Daemon]) {
    w.assert_complete(commit);
    wait_for("the spool entry to be removed", QUICK, || {
        !w.spool_entry(commit).exists()
    });
    assert_eq!(w.runs_of(commit).len(), 1, "{}", all_logs(daemons));
    w.assert_nothing_stuck(daemons);
}

#[test]
fn results_server_down_past_the_push_retries_then_back_gets_the_spooled_results() {
    if !require_tool("gpg") || !require_tool("git-daemon") {
        return;
    }
    let (w, mut server) = served_world();
    fs::write(&w.hold, b"").expect("write the hold file");
    let commit = w.signed_commit("results pushed after an outage");
    let mut daemon = w.spawn("icyci", false, &[]);
    let port = stop_the_results_server_across_the_push(&w, &mut server, &mut daemon, &commit);

    // Still down: delivery from the spool fails, the daemon keeps running.
    wait_log(
        &mut daemon,
        &["spooled results not delivered", &commit_field(&commit)],
        QUICK,
    );
    let _server = GitDaemon::start_on_port(&w.env, w.env.path("served"), port);

    w.wait_passed(&mut daemon, &commit);
    assert_delivered_once(&w, &commit, &[&daemon]);
    assert!(daemon.stderr().contains("spooled results delivered"));
    daemon.signal("TERM");
    let status = daemon.expect_exit(QUICK);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
}

/// Like the test above, but icyci is stopped with `signal` while the server is down, and a new
/// instance on the same state directory delivers the results once the server is back.
fn results_server_down_and_icyci_restarted(signal: &str) {
    if !require_tool("gpg") || !require_tool("git-daemon") {
        return;
    }
    let (w, mut server) = served_world();
    fs::write(&w.hold, b"").expect("write the hold file");
    let commit = w.signed_commit("results pushed by the next instance");
    let mut first = w.spawn("icyci-first", false, &[]);
    let port = stop_the_results_server_across_the_push(&w, &mut server, &mut first, &commit);
    if signal == "KILL" {
        first.kill();
    } else {
        first.signal(signal);
        let status = first.expect_exit(QUICK);
        assert_eq!(status.code(), Some(0), "{}", first.logs_for_humans());
    }

    let mut second = w.spawn("icyci-second", false, &[]);
    wait_log(
        &mut second,
        &["spooled results found", &commit_field(&commit)],
        QUICK,
    );
    wait_log(
        &mut second,
        &["spooled results not delivered", &commit_field(&commit)],
        QUICK,
    );
    assert_eq!(w.note("result.passed", &commit), None);
    let _server = GitDaemon::start_on_port(&w.env, w.env.path("served"), port);

    w.wait_passed(&mut second, &commit);
    assert_delivered_once(&w, &commit, &[&first, &second]);
    assert!(
        !second.stderr().contains("taking over"),
        "{}",
        second.logs_for_humans()
    );
    second.signal("TERM");
    let status = second.expect_exit(QUICK);
    assert_eq!(status.code(), Some(0), "{}", second.logs_for_humans());
}

#[test]
fn results_server_down_and_icyci_stopped_with_sigterm_then_the_next_instance_delivers() {
    results_server_down_and_icyci_restarted("TERM");
}

#[test]
fn results_server_down_and_icyci_sigkilled_then_the_next_instance_delivers() {
    results_server_down_and_icyci_restarted("KILL");
}

// ---- several instances ----

#[test]
fn four_instances_on_twenty_commits_pushed_one_by_one_test_each_tip_at_most_once() {
    if !require_tool("gpg") {
        return;
    }
    const INSTANCES: usize = 4;
    const COMMITS: usize = 20;
    let w = World::new("results.git");
    let start = w.env.commit(&w.work, "unsigned start", Sign::None);
    w.env.push(&w.work, &w.source, &["main"]);
    let mut daemons: Vec<Daemon> = (0..INSTANCES)
        .map(|i| {
            let name = format!("i{i}");
            let mut cmd = w.env.icyci();
            cmd.args(w.args(&w.env.path(format!("state-{name}")), &[]))
                .env("INSTANCE", &name);
            w.env.spawn_logged(cmd, &format!("icyci-{name}"))
        })
        .collect();
    for daemon in &mut daemons {
        wait_log(daemon, &["not testing", &commit_field(&start)], QUICK);
    }

    let commits: Vec<String> = (1..=COMMITS)
        .map(|i| {
            w.env
                .commit(&w.work, &format!("signed {i}"), Sign::Gpg(w.fpr.clone()))
        })
        .collect();
    // One push per commit, one after another.
    for commit in &commits {
        w.env
            .push(&w.work, &w.source, &[&format!("{commit}:refs/heads/main")]);
    }
    let last = commits.last().expect("commits").clone();

    // Every instance comes to the last tip once it is done with what it was testing, and
    // nothing locked stays without a result.
    for daemon in &mut daemons {
        wait_log(
            daemon,
            &["-> verify", &commit_field(&last)],
            Duration::from_secs(30),
        );
    }
    let refs: Vec<&Daemon> = daemons.iter().collect();
    wait_for("every locked commit to have a result", QUICK, || {
        w.stuck().is_empty() && w.note("result.passed", &last).is_some()
    });

    let runs = w.runs();
    let mut per_commit: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for run in &runs {
        per_commit
            .entry(run.commit.as_str())
            .or_default()
            .push(run.instance.as_str());
    }
    let logs = all_logs(&refs);
    for (commit, instances) in &per_commit {
        assert_eq!(
            instances.len(),
            1,
            "{commit} tested by {instances:?}\n{logs}"
        );
    }
    let tested: BTreeSet<String> = per_commit.keys().map(|c| c.to_string()).collect();
    assert!(
        tested.contains(&last),
        "the last tip was not tested\n{logs}"
    );
    assert!(
        tested.iter().all(|c| commits.contains(c)),
        "{tested:?} not all among the pushed commits"
    );
    assert_eq!(w.annotated("locked"), tested, "locked = tested\n{logs}");
    assert_eq!(w.annotated("result.passed"), tested, "passed = tested");
    for commit in &tested {
        w.assert_complete(commit);
    }
    let expected_refs: Vec<String> = [
        "locked",
        "output.stderr",
        "output.stdout",
        "result.passed",
        "verified",
    ]
    .iter()
    .map(|n| format!("refs/notes/{NS}.{n}"))
    .collect();
    assert_eq!(w.env.note_refs(&w.results), expected_refs);
    w.assert_nothing_stuck(&refs);
    for daemon in &mut daemons {
        assert!(daemon.is_running(), "{}", daemon.logs_for_humans());
        assert!(
            !daemon.stderr().contains("giving up"),
            "{}",
            daemon.logs_for_humans()
        );
    }
    eprintln!(
        "{} of {COMMITS} commits tested: {:?}",
        tested.len(),
        runs.iter().map(|r| &r.instance).collect::<Vec<_>>()
    );
    for daemon in &mut daemons {
        daemon.signal("TERM");
    }
    for daemon in &mut daemons {
        let status = daemon.expect_exit(QUICK);
        assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    }
}
