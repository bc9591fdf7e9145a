//! Reading results back (issue 3): `icyci results`, `icyci show` and `icyci status` against
//! results repositories written by the daemon itself, with hand-made notes in the original's
//! format beside them, read in place, through a remote of the user's clone, and from a URL.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::common::{free_port, require_tool, write_script, GitDaemon, Sign, TestEnv};
use crate::cycle::Fixture;

const LONG: Duration = Duration::from_secs(30);

/// What the extra note `blob.bin` of the first commit holds: not text, no final new line.
const BLOB: &[u8] = b"\x00\x01\xffbinary\r\n\x00end";

/// A results repository with three commits on `main`, in two namespaces:
///
/// | commit | `icyci` | `icyci-aarch64` |
/// |---|---|---|
/// | `first` (2024-03-01 10:00) | passed (daemon), extra note `blob.bin` | failed (daemon), extra note `size` |
/// | `second` (2024-03-02 10:00) | failed (daemon) | running: a hand-made lock without result |
/// | `third` (2024-03-03 10:00) | untested | untested |
struct Results {
    fx: Fixture,
    first: String,
    second: String,
    third: String,
}

impl Results {
    fn build() -> Results {
        let fx = Fixture::new();
        let aarch64_script = fx.env.path("aarch64.sh");
        write_script(
            &aarch64_script,
            "echo 'aarch64 out'\necho 'aarch64 err' >&2\n\
             printf '42\\n' > \"$ICYCI_NOTES_DIR/size\"\nexit 3\n",
        );
        fs::write(fx.env.path("blob.bin"), BLOB).expect("write blob.bin");

        set_date(&fx.env, "2024-03-01T10:00:00Z");
        let first = fx.env.commit_files(
            &fx.work,
            "first: passes here, fails on aarch64",
            &[(
                "test.sh",
                format!(
                    "#!/bin/sh\nprintf 'first out\\n'\nprintf 'first err\\n' >&2\n\
                     cp '{}' \"$ICYCI_NOTES_DIR/blob.bin\"\n",
                    fx.env.path("blob.bin").display()
                )
                .as_bytes(),
            )],
            fx.sign(),
        );
        fx.push_main();
        run_once(&fx, &["-test-script", "test.sh"], 0);
        let script = aarch64_script.to_string_lossy();
        run_once(
            &fx,
            &["-test-script", &script, "-notes-ns", "icyci-aarch64"],
            1,
        );

        set_date(&fx.env, "2024-03-02T10:00:00Z");
        let second = fx.env.commit_files(
            &fx.work,
            "second: fails",
            &[("test.sh", b"#!/bin/sh\necho broken\nexit 1\n")],
            fx.sign(),
        );
        fx.push_main();
        run_once(&fx, &["-test-script", "test.sh"], 1);
        // The original icyCI's lock note: a Go time, then the fixed text.
        fx.env.git(
            &fx.results,
            [
                "notes",
                "--ref=refs/notes/icyci-aarch64.locked",
                "add",
                "-m",
                "2024-03-02 10:05:00.123456789 +0000 UTC: this commit is being tested by icyCI",
                &second,
            ],
        );

        set_date(&fx.env, "2024-03-03T10:00:00Z");
        let third = fx
            .env
            .commit(&fx.work, "third: not tested & <more>", fx.sign());
        fx.env.push(&fx.work, &fx.results, &["main"]);
        fx.env.remove_var("GIT_AUTHOR_DATE");
        fx.env.remove_var("GIT_COMMITTER_DATE");
        Results {
            fx,
            first,
            second,
            third,
        }
    }

    fn env(&self) -> &TestEnv {
        &self.fx.env
    }

    fn repo(&self) -> String {
        self.fx.results.to_string_lossy().into_owned()
    }

    /// `icyci <args…> --repo <results>`, run in the test root.
    fn icyci(&self, args: &[&str]) -> Output {
        let repo = self.repo();
        let mut all = args.to_vec();
        all.extend(["--repo", &repo]);
        icyci(self.env(), self.env().root(), &all)
    }

    /// `template` with `first-----`, `second----` and `third-----` replaced by the short ids
    /// (ten characters, as wide as the placeholders, so a template table stays aligned).
    fn short(&self, template: &str) -> String {
        template
            .replace("first-----", &self.first[..10])
            .replace("second----", &self.second[..10])
            .replace("third-----", &self.third[..10])
    }
}

fn set_date(env: &TestEnv, date: &str) {
    env.set_var("GIT_AUTHOR_DATE", date);
    env.set_var("GIT_COMMITTER_DATE", date);
}

/// Runs the daemon with `-once` on the fixture's repositories and `extra`; checks its status.
fn run_once(fx: &Fixture, extra: &[&str], expected: i32) {
    let mut args = fx.base_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("-once".into());
    let mut daemon = fx.env.spawn_icyci(args);
    let status = daemon.expect_exit(LONG);
    assert_eq!(
        status.code(),
        Some(expected),
        "{}",
        daemon.logs_for_humans()
    );
}

/// Runs `icyci args…` in `dir`, its output captured (so not on a terminal).
fn icyci(env: &TestEnv, dir: &Path, args: &[&str]) -> Output {
    let mut cmd = env.icyci();
    cmd.current_dir(dir).args(args);
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// The stdout of a run that must succeed.
fn success(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(0), "{}", describe(out));
    assert!(out.stderr.is_empty(), "{}", describe(out));
    String::from_utf8(out.stdout.clone()).expect("UTF-8 output")
}

fn describe(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Checks a failure: exit `code`, nothing on stdout, and one line `icyci <command>: …`
/// containing `reason` on stderr.
fn assert_error(out: &Output, command: &str, code: i32, reason: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{}", describe(out));
    assert!(out.stdout.is_empty(), "{}", describe(out));
    assert_eq!(stderr.lines().count(), 1, "{}", describe(out));
    assert!(
        stderr.starts_with(&format!("icyci {command}: ")),
        "{}",
        describe(out)
    );
    assert!(
        stderr.contains(reason),
        "expected {reason:?}\n{}",
        describe(out)
    );
}

fn status_code(out: &Output) -> Option<i32> {
    assert!(out.stdout.is_empty(), "status printed\n{}", describe(out));
    assert!(out.stderr.is_empty(), "status printed\n{}", describe(out));
    out.status.code()
}

#[test]
fn table_has_a_row_per_commit_and_a_column_per_namespace() {
    if !require_tool("gpg") {
        return;
    }
    let r = Results::build();
    let table = success(&r.icyci(&["results"]));
    let expected = r.short(
        "\
commit      date              author      subject                               icyci     icyci-aarch64
third-----  2024-03-03 10:00  icyci test  third: not tested & <more>            untested  untested
second----  2024-03-02 10:00  icyci test  second: fails                         failed    running
first-----  2024-03-01 10:00  icyci test  first: passes here, fails on aarch64  passed    failed
",
    );
    assert_eq!(table, expected, "piped: no colour, nothing cut");

    let newest = success(&r.icyci(&["results", "-n", "1", "--ns", "icyci-*"]));
    let expected = r.short(
        "\
commit      date              author      subject                     icyci-aarch64
third-----  2024-03-03 10:00  icyci test  third: not tested & <more>  untested
",
    );
    assert_eq!(newest, expected);

    let branch = success(&r.icyci(&["results", "--branch", "main", "--ns", "icyci"]));
    assert_eq!(branch.lines().count(), 4, "{branch}");
    let header = branch.lines().next().expect("a header");
    assert!(
        header.ends_with("subject                               icyci"),
        "{branch}"
    );
}

#[test]
fn json_has_every_commit_and_state() {
    if !require_tool("gpg") {
        return;
    }
    let r = Results::build();
    let text = success(&r.icyci(&["results", "--format", "json"]));
    let json: serde_json::Value = serde_json::from_str(&text).expect("one JSON document");
    assert_eq!(json["repository"], r.repo().as_str());
    assert_eq!(
        json["branch"], "refs/heads/main",
        "the branch HEAD stands for, by name"
    );
    assert_eq!(
        json["namespaces"],
        serde_json::json!(["icyci", "icyci-aarch64"])
    );
    let commits = json["commits"].as_array().expect("commits array");
    assert_eq!(commits.len(), 3);
    let expected = [
        (
            &r.third,
            "2024-03-03T10:00:00Z",
            "third: not tested & <more>",
            "untested",
            "untested",
        ),
        (
            &r.second,
            "2024-03-02T10:00:00Z",
            "second: fails",
            "failed",
            "running",
        ),
        (
            &r.first,
            "2024-03-01T10:00:00Z",
            "first: passes here, fails on aarch64",
            "passed",
            "failed",
        ),
    ];
    for (commit, (id, time, subject, icyci, aarch64)) in commits.iter().zip(expected) {
        assert_eq!(commit["id"], id.as_str());
        assert_eq!(commit["short"], &id[..10]);
        assert_eq!(commit["time"], time);
        assert_eq!(commit["author"], "icyci test");
        assert_eq!(commit["subject"], subject);
        assert_eq!(
            commit["results"],
            serde_json::json!({"icyci": icyci, "icyci-aarch64": aarch64})
        );
    }
}

#[test]
fn status_exit_codes() {
    if !require_tool("gpg") {
        return;
    }
    let r = Results::build();
    let status = |commit: &str, ns: Option<&str>| {
        let mut args = vec!["status", commit];
        if let Some(ns) = ns {
            args.extend(["--ns", ns]);
        }
        status_code(&r.icyci(&args))
    };
    // Failed anywhere wins.
    assert_eq!(status(&r.first, None), Some(1));
    assert_eq!(status(&r.first, Some("icyci")), Some(0));
    assert_eq!(status(&r.first, Some("icyci-*")), Some(1));
    assert_eq!(status(&r.first, Some("icyci-aarch64")), Some(1));
    assert_eq!(status(&r.second, None), Some(1));
    // Running (locked, no result) and untested: ask again later.
    assert_eq!(status(&r.second, Some("icyci-aarch64")), Some(8));
    assert_eq!(status(&r.third, None), Some(8));
    assert_eq!(status(&r.third, Some("icyci")), Some(8));
    // Any revision the results repository resolves.
    assert_eq!(status("main~2", Some("icyci")), Some(0));
    assert_eq!(status("HEAD", None), Some(8));
}

#[test]
fn show_prints_verdicts_outputs_and_extra_notes() {
    if !require_tool("gpg") {
        return;
    }
    let r = Results::build();
    // Piped: the pager must not run.
    let pager_ran = r.env().path("pager-ran");
    let pager = r.env().path("pager.sh");
    write_script(&pager, &format!("touch '{}'\ncat\n", pager_ran.display()));
    r.env().set_var("PAGER", &pager);

    let text = success(&r.icyci(&["show", &r.first]));
    let repo = r.repo();
    let verified_size = |ns: &str| {
        r.env()
            .note(&r.fx.results, ns, "verified", &r.first)
            .map_or(0, |note| note.len())
    };
    let expected = format!(
        "commit {first}\n\
         Author: icyci test\n\
         Date:   2024-03-01 10:00 UTC\n\
         \n    first: passes here, fails on aarch64\n\
         \n== icyci: passed ==\n\
         test.sh completed successfully\n\
         \n-- stdout --\nfirst out\n\
         \n-- stderr --\nfirst err\n\
         \n-- extra notes --\n\
         blob.bin  {size} bytes\n\
         verified  {verified} bytes\n\
         write one to a file: icyci show {first} --repo {repo} --ns icyci --note NAME --output FILE\n\
         \n== icyci-aarch64: failed ==\n\
         {script} failed: exit status 3\n\
         See refs/notes/icyci-aarch64.output.stdout and refs/notes/icyci-aarch64.output.stderr \
         for details\n\
         \n-- stdout --\naarch64 out\n\
         \n-- stderr --\naarch64 err\n\
         \n-- extra notes --\n\
         size      3 bytes\n\
         verified  {verified_aarch64} bytes\n\
         write one to a file: icyci show {first} --repo {repo} --ns icyci-aarch64 --note NAME \
         --output FILE\n",
        first = r.first,
        size = BLOB.len(),
        script = r.env().path("aarch64.sh").display(),
        // The provenance note of each run (its signature time varies, not its size).
        verified = verified_size("icyci"),
        verified_aarch64 = verified_size("icyci-aarch64"),
    );
    assert_eq!(text, expected);
    assert!(!pager_ran.exists(), "the pager ran with stdout piped");

    // A lock without a result, and a namespace without notes on the commit.
    let text = success(&r.icyci(&["show", &r.second, "--ns", "icyci-aarch64"]));
    assert!(
        text.ends_with(
            "\n== icyci-aarch64: running ==\n\
             locked: 2024-03-02 10:05:00.123456789 +0000 UTC: this commit is being tested by \
             icyCI\n"
        ),
        "{text}"
    );
    let text = success(&r.icyci(&["show", "main"]));
    assert!(
        text.ends_with("\n    third: not tested & <more>\n\nuntested in icyci, icyci-aarch64\n"),
        "{text}"
    );
}

#[test]
fn show_writes_one_note_byte_for_byte() {
    if !require_tool("gpg") {
        return;
    }
    let r = Results::build();
    let file = r.env().path("saved.bin");
    let file_arg = file.to_string_lossy().into_owned();
    let out = r.icyci(&[
        "show", &r.first, "--note", "blob.bin", "--output", &file_arg,
    ]);
    assert_eq!(success(&out), "");
    assert_eq!(fs::read(&file).expect("read the saved note"), BLOB);

    let out = r.icyci(&["show", &r.first, "--note", "blob.bin", "--output", "-"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(out.stdout, BLOB);

    // Own notes too, from the one namespace that has them when --ns says which.
    let out = r.icyci(&[
        "show",
        &r.first,
        "--ns",
        "icyci-aarch64",
        "--note",
        "output.stdout",
        "--output",
        "-",
    ]);
    assert_eq!(out.stdout, b"aarch64 out\n", "{}", describe(&out));

    let out = r.icyci(&["show", &r.first, "--note", "output.stdout", "--output", "-"]);
    assert_error(&out, "show", 2, "several namespaces (icyci, icyci-aarch64)");
    let out = r.icyci(&["show", &r.first, "--note", "nosuch", "--output", "-"]);
    assert_error(&out, "show", 2, "no note \"nosuch\"");
    let out = r.icyci(&["show", &r.first, "--note", "a..b", "--output", "-"]);
    assert_error(&out, "show", 2, "invalid note name");
}

/// `--remote NAME` reads the remote's notes through `refs/icyci/remotes/NAME/notes/*`; the
/// user's own notes refs, which say otherwise, are neither read nor rewritten.
#[test]
fn remote_notes_do_not_touch_the_users_notes() {
    if !require_tool("gpg") {
        return;
    }
    let r = Results::build();
    let env = r.env();
    let user = env.clone_repo(&r.fx.results, "user");
    env.git(
        &user,
        [
            "notes",
            "--ref=refs/notes/icyci.result.failed",
            "add",
            "-m",
            "mine",
            &r.third,
        ],
    );
    env.git(&user, ["notes", "add", "-m", "a note of my own", &r.third]);
    let before = env.git(&user, ["for-each-ref", "refs/notes/"]);

    let table = success(&icyci(env, &user, &["results", "--remote", "origin"]));
    assert!(
        table.contains(&r.short("third-----  2024-03-03 10:00  icyci test")),
        "{table}"
    );
    let third_row = table.lines().nth(1).expect("a row");
    assert!(third_row.ends_with("untested  untested"), "{table}");
    assert!(table
        .lines()
        .nth(3)
        .expect("a row")
        .ends_with("passed    failed"));
    let status = icyci(
        env,
        &user,
        &["status", &r.first, "--remote", "origin", "--ns", "icyci"],
    );
    assert_eq!(status_code(&status), Some(0));
    let status = icyci(
        env,
        &user,
        &["status", "HEAD", "--remote", "origin", "--ns", "icyci"],
    );
    assert_eq!(
        status_code(&status),
        Some(8),
        "the user's own failed note was read"
    );

    assert_eq!(env.git(&user, ["for-each-ref", "refs/notes/"]), before);
    let fetched = env.git(
        &user,
        [
            "for-each-ref",
            "--format=%(refname)",
            "refs/icyci/remotes/origin/notes/",
        ],
    );
    assert!(
        fetched
            .lines()
            .any(|l| l == "refs/icyci/remotes/origin/notes/icyci-aarch64.locked"),
        "{fetched}"
    );
}

/// A URL is mirrored into `$XDG_CACHE_HOME/icyci/results/`, and the mirror is reused and
/// brought up to date on the next call.
#[test]
fn url_results_are_cached_and_updated() {
    if !require_tool("gpg") || !require_tool("git-daemon") {
        return;
    }
    let r = Results::build();
    let env = r.env();
    let cache_home = env.path("cache");
    env.set_var("XDG_CACHE_HOME", &cache_home);
    // The user's default branch name differs from the results' branch: the
    // mirror's HEAD must still come to mean the results' branch.
    env.set_var("GIT_CONFIG_COUNT", "1");
    env.set_var("GIT_CONFIG_KEY_0", "init.defaultBranch");
    env.set_var("GIT_CONFIG_VALUE_0", "trunk");
    let server = GitDaemon::start(env, env.root());
    let url = server.url("results.git");
    let read = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--repo", &url]);
        icyci(env, env.root(), &all)
    };

    let table = success(&read(&["results", "--ns", "icyci"]));
    assert!(
        table.lines().nth(1).expect("a row").ends_with("untested"),
        "{table}"
    );
    let caches = cache_entries(&cache_home);
    assert_eq!(caches.len(), 1, "{caches:?}");
    let marker = caches[0].join("icyci-test-marker");
    fs::write(&marker, "").expect("mark the cache");

    env.git(
        &r.fx.results,
        [
            "notes",
            "--ref=refs/notes/icyci.result.passed",
            "add",
            "-m",
            "test.sh completed successfully",
            &r.third,
        ],
    );
    let table = success(&read(&["results", "--ns", "icyci"]));
    assert!(
        table.lines().nth(1).expect("a row").ends_with("passed"),
        "{table}"
    );
    assert_eq!(
        cache_entries(&cache_home),
        caches,
        "a second cache was made"
    );
    assert!(marker.exists(), "the cache was made anew");
    assert_eq!(
        status_code(&read(&["status", &r.third, "--ns", "icyci"])),
        Some(0)
    );
    let out = read(&["show", &r.first, "--note", "blob.bin", "--output", "-"]);
    assert_eq!(out.stdout, BLOB, "{}", describe(&out));
    // HEAD of a mirrored URL is the results' branch, so `status HEAD` answers.
    assert_eq!(
        status_code(&read(&["status", "HEAD", "--ns", "icyci"])),
        Some(0)
    );
}

fn cache_entries(cache_home: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(cache_home.join("icyci/results"))
        .map(|dir| dir.map(|e| e.expect("a cache entry").path()).collect())
        .unwrap_or_default();
    found.sort();
    found
}

#[test]
fn bad_input_is_one_line_and_a_non_zero_exit() {
    if !require_tool("gpg") {
        return;
    }
    let r = Results::build();
    let env = r.env();
    env.set_var("XDG_CACHE_HOME", env.path("cache"));

    for command in ["show", "status"] {
        let out = r.icyci(&[command, "nosuch"]);
        assert_error(&out, command, 2, "unknown commit \"nosuch\"");
        let missing = "0123456789abcdef0123456789abcdef01234567";
        assert_error(&r.icyci(&[command, missing]), command, 2, "unknown commit");
        let out = r.icyci(&[command, &r.first, "--ns", "nosuch"]);
        assert_error(&out, command, 2, "\"nosuch\"");
    }
    let out = r.icyci(&["results", "--ns", "nosuch"]);
    assert_error(&out, "results", 2, "\"nosuch\"");
    // clap's usage errors too are one line.
    let out = r.icyci(&["show", "HEAD", "--output", "x"]);
    assert_error(&out, "show", 2, "--note");
    let out = r.icyci(&["results", "-n", "many"]);
    assert_error(&out, "results", 2, "'many'");
    let out = icyci(env, env.root(), &["retest", "--bogus"]);
    assert_error(&out, "retest", 2, "--bogus");
    let out = icyci(env, env.root(), &["results", "--repo", ""]);
    assert_error(&out, "results", 2, "a value is required for '--repo");
    let out = r.icyci(&["results", "--branch", "nosuch"]);
    assert_error(&out, "results", 2, "no branch \"nosuch\"");
    let out = icyci(env, &r.fx.results, &["results", "--remote", "nosuch"]);
    assert_error(&out, "results", 2, "no remote named \"nosuch\"");

    let plain_dir = env.path("not-a-repository");
    fs::create_dir(&plain_dir).expect("create a plain directory");
    let missing_dir = env.path("no-such-directory");
    for dir in [&plain_dir, &missing_dir] {
        let dir = dir.to_string_lossy();
        let out = icyci(env, env.root(), &["results", "--repo", &dir]);
        assert_error(&out, "results", 2, "is not a git repository");
        let out = icyci(env, env.root(), &["status", "HEAD", "--repo", &dir]);
        assert_error(&out, "status", 2, "is not a git repository");
    }

    let unreachable = format!("git://127.0.0.1:{}/results.git", free_port());
    let out = icyci(env, env.root(), &["results", "--repo", &unreachable]);
    assert_error(&out, "results", 1, "cannot fetch results from");
    let out = icyci(env, env.root(), &["show", "HEAD", "--repo", &unreachable]);
    assert_error(&out, "show", 1, "cannot fetch results from");
    let out = icyci(env, env.root(), &["status", "HEAD", "--repo", &unreachable]);
    assert_error(&out, "status", 2, "cannot fetch results from");
    assert!(
        cache_entries(&env.path("cache")).is_empty(),
        "an unreachable URL left a cache"
    );
}

/// A password in the `--repo` URL is masked in the commands `show` suggests (the line is on
/// screen, perhaps shared); the notes are read through it all the same.
#[test]
fn a_password_in_the_repo_url_is_not_shown() {
    if !require_tool("gpg") {
        return;
    }
    let r = Results::build();
    let env = r.env();
    env.set_var("XDG_CACHE_HOME", env.path("cache"));
    let secret_url = "https://alice:hunter2@ci.example.invalid/results.git";
    env.git(
        env.root(),
        [
            "config",
            "--global",
            &format!("url.{}.insteadOf", r.repo()),
            secret_url,
        ],
    );
    let out = icyci(env, env.root(), &["show", &r.first, "--repo", secret_url]);
    let shown = success(&out);
    assert!(shown.contains("write one to a file: icyci show"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

/// A hand-made lock note with an escape sequence (in its text and its holder line) is shown
/// with the control characters replaced: it cannot drive the reader's terminal.
#[test]
fn a_hand_made_lock_note_cannot_drive_the_terminal() {
    if !require_tool("gpg") {
        return;
    }
    let r = Results::build();
    let env = r.env();
    let repo = r.repo();
    env.git(
        env.root(),
        [
            "-C",
            &repo,
            "notes",
            "--ref=refs/notes/hand.locked",
            "add",
            "-m",
            "2024-01-01 \x1b]0;owned\x07\nholder: h\x1b[2J pid 1 id x\nlease-until: 1 (then)",
            &r.third,
        ],
    );
    let out = r.icyci(&["show", &r.third, "--ns", "hand"]);
    let shown = success(&out);
    assert!(shown.contains("locked: 2024-01-01 ?]0;owned?"), "{shown}");
    assert!(
        !shown.contains('\x1b') && !shown.contains('\x07'),
        "{shown:?}"
    );
}

/// A clone whose notes were never fetched (or any repository with no results notes): `status`
/// cannot answer (2, one line saying where to read instead), so a script waiting for 0 or 1
/// does not wait forever; `results` and `show` still answer, with one warning line naming the
/// directory.
#[test]
fn a_repository_without_results_notes_says_so() {
    if !require_tool("gpg") {
        return;
    }
    let r = Results::build();
    let env = r.env();
    let clone = env.path("plain-clone");
    env.git(
        env.root(),
        ["clone", "-q", &r.repo(), &clone.to_string_lossy()],
    );

    let out = icyci(env, &clone, &["status", "HEAD"]);
    assert_error(&out, "status", 2, "no results notes in ");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--remote"), "{}", describe(&out));
    assert!(
        stderr.contains(&*clone.to_string_lossy()),
        "the directory is named, not \".\"\n{}",
        describe(&out)
    );

    for args in [&["results"][..], &["show", "HEAD"][..]] {
        let out = icyci(env, &clone, args);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{}", describe(&out));
        assert!(
            stderr.starts_with(&format!("icyci {}: warning: no results notes in ", args[0])),
            "{}",
            describe(&out)
        );
    }
    // Once the notes are there, the same question is answered.
    env.git(
        &clone,
        ["fetch", "-q", "origin", "refs/notes/*:refs/notes/*"],
    );
    let out = icyci(env, &clone, &["status", &r.third]);
    assert_ne!(status_code(&out), Some(2));
}

/// With more than 256 notes, git spreads a notes tree over `ab/cdef…` directories; states
/// must still be found for every commit.
#[test]
fn fanned_out_notes_trees_are_read() {
    const COMMITS: usize = 400;
    let env = TestEnv::new();
    let repo = env.bare_repo("big.git");
    let mut stream = String::new();
    for i in 1..=COMMITS {
        let message = format!("commit {i}\n");
        stream.push_str(&format!(
            "commit refs/heads/main\nmark :{i}\n\
             committer icyci test <test@icyci.test> {} +0000\ndata {}\n{message}\n",
            1_700_000_000 + i * 60,
            message.len()
        ));
    }
    // icyci: passed, failed, running in turn; icyci-aarch64: passed on even commits.
    let notes = |notes_ref: &str, text: &str, keep: &dyn Fn(usize) -> bool| {
        let mut part = format!(
            "commit refs/notes/{notes_ref}\n\
             committer icyci test <test@icyci.test> 1800000000 +0000\ndata 6\nnotes\n"
        );
        for i in (1..=COMMITS).filter(|i| keep(*i)) {
            part.push_str(&format!("N inline :{i}\ndata {}\n{text}\n", text.len()));
        }
        part.push('\n');
        part
    };
    let lock = "2024-01-01 00:00:00 +0000 UTC: this commit is being tested by icyCI\n";
    stream.push_str(&notes("icyci.locked", lock, &|_| true));
    stream.push_str(&notes("icyci.result.passed", "ok\n", &|i| i % 3 == 0));
    stream.push_str(&notes("icyci.result.failed", "bad\n", &|i| i % 3 == 1));
    stream.push_str(&notes("icyci-aarch64.locked", lock, &|i| i % 2 == 0));
    stream.push_str(&notes("icyci-aarch64.result.passed", "ok\n", &|i| {
        i % 2 == 0
    }));
    let mut cmd = env.command("git");
    cmd.arg("-C").arg(&repo).args(["fast-import", "--quiet"]);
    crate::common::run_checked(&mut cmd, Some(stream.as_bytes()));
    let top = env.git(&repo, ["ls-tree", "--name-only", "refs/notes/icyci.locked"]);
    assert!(
        top.lines().all(|name| name.len() == 2),
        "the notes tree is not fanned out:\n{top}"
    );

    let repo_arg = repo.to_string_lossy().into_owned();
    let count = COMMITS.to_string();
    let out = icyci(
        &env,
        env.root(),
        &[
            "results", "--repo", &repo_arg, "-n", &count, "--format", "json",
        ],
    );
    let json: serde_json::Value = serde_json::from_str(&success(&out)).expect("JSON");
    let commits = json["commits"].as_array().expect("commits");
    assert_eq!(commits.len(), COMMITS);
    for commit in commits {
        let subject = commit["subject"].as_str().expect("subject");
        let i: usize = subject
            .strip_prefix("commit ")
            .and_then(|n| n.parse().ok())
            .expect("commit <n>");
        let icyci = ["passed", "failed", "running"][i % 3];
        let aarch64 = if i.is_multiple_of(2) {
            "passed"
        } else {
            "untested"
        };
        assert_eq!(
            commit["results"],
            serde_json::json!({"icyci": icyci, "icyci-aarch64": aarch64}),
            "{subject}"
        );
    }

    let newest = icyci(
        &env,
        env.root(),
        &["results", "--repo", &repo_arg, "-n", "2"],
    );
    let table = success(&newest);
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(table.contains("commit 400"), "{table}");
    assert!(table.contains("commit 399"), "{table}");
    assert!(!table.contains("commit 398"), "{table}");
    let status = icyci(&env, env.root(), &["status", "main", "--repo", &repo_arg]);
    assert_eq!(status_code(&status), Some(1), "commit 400: failed in icyci");
    let status = icyci(&env, env.root(), &["status", "main~1", "--repo", &repo_arg]);
    assert_eq!(
        status_code(&status),
        Some(8),
        "commit 399: untested on aarch64"
    );
}

/// On a terminal (a pty made by `script`): colours, rows cut to `COLUMNS`, `NO_COLOR`, and
/// `show` through the pager with `LESS=FRX`, or printed when the pager cannot start.
#[test]
fn terminal_output_is_coloured_fitted_and_paged() {
    if !require_tool("gpg") || !require_tool("script") {
        return;
    }
    let r = Results::build();
    let env = r.env();
    let on_terminal = |command: &str, vars: &[(&str, &str)]| {
        let mut cmd = env.command("script");
        cmd.current_dir(env.root())
            .args(["-q", "-e", "-c"])
            .arg(format!(
                "{} {command} --repo {}",
                env!("CARGO_BIN_EXE_icyci"),
                r.repo()
            ))
            .arg("/dev/null");
        for (key, value) in vars {
            cmd.env(key, value);
        }
        let out = cmd.output().expect("run script");
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n")
    };

    let table = on_terminal("results", &[("COLUMNS", "90")]);
    assert!(table.contains("\x1b[32mpassed\x1b[0m"), "{table:?}");
    assert!(table.contains("\x1b[31mfailed\x1b[0m"), "{table:?}");
    assert!(table.contains("\x1b[33mrunning\x1b[0m"), "{table:?}");
    assert!(table.contains("\x1b[2muntested\x1b[0m"), "{table:?}");
    let plain = strip_ansi(&table);
    assert!(plain.contains("  first: passes here, fa…  "), "{plain}");
    for line in plain.lines() {
        assert!(line.chars().count() <= 90, "wider than 90: {line:?}");
    }
    let table = on_terminal("results", &[("COLUMNS", "90"), ("NO_COLOR", "1")]);
    assert!(!table.contains('\x1b'), "{table:?}");

    let pager = env.path("pager.sh");
    let paged = env.path("paged");
    write_script(
        &pager,
        &format!(
            "echo \"LESS=$LESS\" > '{0}'\ncat >> '{0}'\n",
            paged.display()
        ),
    );
    let pager = pager.to_string_lossy();
    let show = format!("show {}", r.first);
    let shown = on_terminal(&show, &[("PAGER", &pager)]);
    assert!(
        !shown.contains("== icyci: passed =="),
        "printed as well as paged"
    );
    let text = fs::read_to_string(&paged).expect("the pager ran");
    assert!(text.starts_with("LESS=FRX\ncommit "), "{text}");
    assert!(text.contains("\n== icyci: passed ==\n"), "{text}");

    let missing = env.path("no-such-pager").to_string_lossy().into_owned();
    let shown = on_terminal(&show, &[("GIT_PAGER", &missing), ("PAGER", &pager)]);
    assert!(shown.contains("\n== icyci: passed ==\n"), "{shown}");
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// 2020-01-01T00:00:00Z: a lease that ended long ago.
pub const LONG_AGO: i64 = 1_577_836_800;
/// 2100-01-01T00:00:00Z: a lease that ends long after any test.
pub const FAR_AHEAD: i64 = 4_102_444_800;

/// A lock note as the daemon writes it since issue 4, its lease ending at `lease_until`.
pub fn leased_lock(lease_until: i64, until_text: &str) -> String {
    format!(
        "2019-12-31 23:00:00.000000000 +0000: this commit is being tested by icyCI\n\
         holder: deadhost pid 4242 id 00112233aabbccdd\n\
         lease-until: {lease_until} ({until_text})\n"
    )
}

/// A lock note as the original icyCI writes it: no holder, no lease.
pub const ORIGINAL_LOCK: &str =
    "2019-12-31 23:00:00.5 +0000 UTC: this commit is being tested by icyCI\n";

/// A results repository (no daemon, no keys: notes added with git) with four commits on
/// `main`, all locked in namespace `icyci`:
///
/// | commit | lock | result | shown |
/// |---|---|---|---|
/// | `passed` (2024-04-01 10:00) | lease ended | passed | passed |
/// | `live` (2024-04-02 10:00) | lease until 2100 | none | running |
/// | `original` (2024-04-03 10:00) | the original's, no lease | none | running |
/// | `stale` (2024-04-04 10:00, the tip) | lease ended | none | stale |
pub struct LeaseResults {
    pub env: TestEnv,
    pub repo: PathBuf,
    pub passed: String,
    pub live: String,
    pub original: String,
    pub stale: String,
}

impl LeaseResults {
    pub fn build() -> LeaseResults {
        let env = TestEnv::new();
        let repo = env.work_repo("results");
        let commit = |date: &str, subject: &str, lock: &str| {
            set_date(&env, date);
            let id = env.commit(&repo, subject, Sign::None);
            env.git(
                &repo,
                [
                    "notes",
                    "--ref=refs/notes/icyci.locked",
                    "add",
                    "-m",
                    lock,
                    &id,
                ],
            );
            id
        };
        let expired = leased_lock(LONG_AGO, "2020-01-01T00:00:00Z");
        let passed = commit("2024-04-01T10:00:00Z", "passed after all", &expired);
        let live = commit(
            "2024-04-02T10:00:00Z",
            "being tested",
            &leased_lock(FAR_AHEAD, "2100-01-01T00:00:00Z"),
        );
        let original = commit("2024-04-03T10:00:00Z", "locked by icyCI", ORIGINAL_LOCK);
        let stale = commit("2024-04-04T10:00:00Z", "its tester died", &expired);
        env.git(
            &repo,
            [
                "notes",
                "--ref=refs/notes/icyci.result.passed",
                "add",
                "-m",
                "test.sh completed successfully",
                &passed,
            ],
        );
        env.remove_var("GIT_AUTHOR_DATE");
        env.remove_var("GIT_COMMITTER_DATE");
        LeaseResults {
            env,
            repo,
            passed,
            live,
            original,
            stale,
        }
    }

    pub fn repo_arg(&self) -> String {
        self.repo.to_string_lossy().into_owned()
    }

    /// `icyci <args…> --repo <results>`.
    fn icyci(&self, args: &[&str]) -> Output {
        let repo = self.repo_arg();
        let mut all = args.to_vec();
        all.extend(["--repo", &repo]);
        icyci(&self.env, self.env.root(), &all)
    }
}

#[test]
fn stale_locks_are_told_apart_from_running_ones() {
    let r = LeaseResults::build();
    let short = |id: &str| id[..10].to_owned();

    let table = success(&r.icyci(&["results"]));
    let expected = format!(
        "\
commit      date              author      subject           icyci
{}  2024-04-04 10:00  icyci test  its tester died   stale
{}  2024-04-03 10:00  icyci test  locked by icyCI   running
{}  2024-04-02 10:00  icyci test  being tested      running
{}  2024-04-01 10:00  icyci test  passed after all  passed
",
        short(&r.stale),
        short(&r.original),
        short(&r.live),
        short(&r.passed)
    );
    assert_eq!(table, expected);

    // JSON: the state keeps its old value, a new field says the lock is stale.
    let text = success(&r.icyci(&["results", "--format", "json"]));
    let json: serde_json::Value = serde_json::from_str(&text).expect("one JSON document");
    let commits = json["commits"].as_array().expect("commits array");
    let expected = [
        (&r.stale, "running", true),
        (&r.original, "running", false),
        (&r.live, "running", false),
        (&r.passed, "passed", false),
    ];
    assert_eq!(commits.len(), expected.len());
    for (commit, (id, state, stale)) in commits.iter().zip(expected) {
        assert_eq!(commit["id"], id.as_str());
        assert_eq!(commit["results"], serde_json::json!({ "icyci": state }));
        let explained = if stale {
            serde_json::json!({"icyci": {
                "lease_until": "2020-01-01T00:00:00Z",
                "holder": "deadhost pid 4242 id 00112233aabbccdd",
            }})
        } else {
            serde_json::json!({})
        };
        assert_eq!(commit["stale"], explained, "{}", commit["subject"]);
    }

    // show: the stale lock, its holder and what to do.
    let text = success(&r.icyci(&["show", &r.stale]));
    let expected = format!(
        "\n    its tester died\n\
         \n== icyci: stale ==\n\
         stale lock: lease expired 2020-01-01T00:00:00Z, holder deadhost pid 4242 id \
         00112233aabbccdd; no result\n\
         its holder is gone: an instance takes the commit over when it next finds it as its \
         branch tip; to remove the lock: icyci retest {id} --results-repo {repo} --ns icyci\n\
         locked: {lock}",
        id = r.stale,
        repo = r.repo_arg(),
        lock = leased_lock(LONG_AGO, "2020-01-01T00:00:00Z"),
    );
    assert!(text.ends_with(&expected), "{text}");
    let text = success(&r.icyci(&["show", &r.live]));
    assert!(
        text.ends_with(&format!(
            "\n== icyci: running ==\nlocked: {}",
            leased_lock(FAR_AHEAD, "2100-01-01T00:00:00Z")
        )),
        "{text}"
    );
    let text = success(&r.icyci(&["show", &r.original]));
    assert!(
        text.ends_with(&format!("\n== icyci: running ==\nlocked: {ORIGINAL_LOCK}")),
        "{text}"
    );
    let text = success(&r.icyci(&["show", &r.passed]));
    assert!(
        text.ends_with("\n== icyci: passed ==\ntest.sh completed successfully\n"),
        "{text}"
    );

    // status: a stale lock is still "ask again later", and status stays silent.
    for commit in [&r.stale, &r.live, &r.original] {
        assert_eq!(status_code(&r.icyci(&["status", commit])), Some(8));
    }
    assert_eq!(status_code(&r.icyci(&["status", &r.passed])), Some(0));
}
