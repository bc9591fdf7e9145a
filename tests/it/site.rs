//! `icyci site` and the daemon's `-site-dir`, on results made by the daemon itself: every link
//! resolves, states are labelled in words, nothing from a commit or a log is taken as markup, the
//! output is deterministic and incremental, and a real headless browser renders the index.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::common::{require_tool, wait_for, Daemon, TestEnv};
use crate::cycle::Fixture;
use crate::viewer::{LeaseResults, ORIGINAL_LOCK};

/// Generous deadline for anything the daemon does (the machine is shared with other tests).
const LONG: Duration = Duration::from_secs(30);

/// The subject of the failing commit: markup, an ampersand and quotes.
const EVIL_SUBJECT: &str = "<script>alert(1)</script> & \"x\"";
/// How [`EVIL_SUBJECT`] must appear in HTML and Atom.
const EVIL_ESCAPED: &str = "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;x&quot;";

/// The test script of every commit: coloured stdout and stderr, a long stdout, a binary extra
/// note, and a failure when `SITE_FAIL` is set in the daemon's environment.
const SCRIPT: &str = r#"
seq 1 3000
printf '\033[32mall good\033[0m\n'
printf 'warn: \033[1;31mcareful\033[0m <b>\n' >&2
printf 'bin\000\377ary' > "$ICYCI_NOTES_DIR/size-report"
if [ -n "${SITE_FAIL:-}" ]; then exit 3; fi
"#;

/// Results made by the daemon in two namespaces:
///
/// - `passed`: passed in `icyci` and `icyci-arm`;
/// - `failed` (subject [`EVIL_SUBJECT`]): failed in `icyci`, passed in `icyci-arm`;
/// - `running`: untested in `icyci`, a lock without result in `icyci-arm` (made by hand).
struct Results {
    fx: Fixture,
    passed: String,
    failed: String,
    running: String,
}

impl Results {
    fn new() -> Results {
        let fx = Fixture::new();
        let passed = fx.script_commit(SCRIPT);
        once(&fx, "icyci", false);
        once(&fx, "icyci-arm", false);

        let failed = fx.env.commit(&fx.work, EVIL_SUBJECT, fx.sign());
        fx.push_main();
        once(&fx, "icyci", true);
        once(&fx, "icyci-arm", false);

        let running = fx.signed_commit("later commit, being tested");
        fx.env.push(&fx.work, &fx.results, &["main"]);
        fx.env.git(
            &fx.results,
            [
                "notes",
                "--ref=refs/notes/icyci-arm.locked",
                "add",
                "-m",
                "2024-01-01 00:00:00 +0000 UTC: this commit is being tested by icyCI",
                &running,
            ],
        );
        Results {
            fx,
            passed,
            failed,
            running,
        }
    }

    fn env(&self) -> &TestEnv {
        &self.fx.env
    }

    /// `icyci site --repo <results> --out <out> extra…`; its stdout, panicking on failure.
    fn site(&self, out: &Path, extra: &[&str]) -> String {
        let output = self.site_output(out, extra);
        assert!(
            output.status.success(),
            "icyci site failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn site_output(&self, out: &Path, extra: &[&str]) -> Output {
        let mut cmd = self.env().icyci();
        cmd.arg("site")
            .arg("--repo")
            .arg(&self.fx.results)
            .arg("--out")
            .arg(out)
            .args(extra);
        cmd.output().expect("run icyci site")
    }

    /// The committer times of the results' main branch as Atom timestamps.
    fn commit_timestamps(&self) -> Vec<String> {
        let mut cmd = self.env().command("git");
        cmd.arg("-C")
            .arg(&self.fx.results)
            .args([
                "log",
                "--format=%cd",
                "--date=format-local:%Y-%m-%dT%H:%M:%SZ",
                "main",
            ])
            .env("TZ", "UTC");
        let out = cmd.output().expect("git log");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Runs the daemon once on the source's tip in namespace `ns`, failing the script if `fail`.
fn once(fx: &Fixture, ns: &str, fail: bool) {
    let mut cmd = fx.env.icyci();
    cmd.args(fx.args(&["-once", &format!("-notes-ns={ns}")]));
    if fail {
        cmd.env("SITE_FAIL", "1");
    }
    let mut daemon = fx.env.spawn_logged(cmd, "icyci");
    let status = daemon.expect_exit(LONG);
    let expected = if fail { 1 } else { 0 };
    assert_eq!(
        status.code(),
        Some(expected),
        "{}",
        daemon.logs_for_humans()
    );
}

fn short(id: &str) -> &str {
    &id[..12]
}

/// Every file under `dir`, relative path to content.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    walk(dir, dir, &mut |rel, path| {
        files.insert(rel.to_owned(), fs::read(path).expect("read a site file"));
    });
    files
}

/// Every file under `dir` with what changes when it is rewritten (the site replaces files by
/// renaming a new one over them, so the inode changes even where mtimes are coarse).
fn stamps(dir: &Path) -> BTreeMap<String, (u64, i64, i64)> {
    let mut files = BTreeMap::new();
    walk(dir, dir, &mut |rel, path| {
        let meta = fs::metadata(path).expect("stat a site file");
        files.insert(
            rel.to_owned(),
            (meta.ino(), meta.mtime(), meta.mtime_nsec()),
        );
    });
    files
}

fn walk(root: &Path, dir: &Path, visit: &mut dyn FnMut(&str, &Path)) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read a site directory")
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(root, &path, visit);
        } else {
            let rel = path.strip_prefix(root).expect("under the root");
            visit(&rel.to_string_lossy(), &path);
        }
    }
}

fn read(dir: &Path, rel: &str) -> String {
    let path = dir.join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The files the last build wrote or removed, from two [`stamps`].
fn changed(
    before: &BTreeMap<String, (u64, i64, i64)>,
    after: &BTreeMap<String, (u64, i64, i64)>,
) -> Vec<String> {
    let mut changed: Vec<String> = after
        .iter()
        .filter(|(file, stamp)| before.get(*file) != Some(stamp))
        .map(|(file, _)| file.clone())
        .collect();
    changed.extend(
        before
            .keys()
            .filter(|file| !after.contains_key(*file))
            .cloned(),
    );
    changed.sort();
    changed
}

/// `%XX` sequences decoded (links only hold ASCII).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ascii");
            decoded.push(u8::from_str_radix(hex, 16).expect("hex escape"));
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(decoded).expect("utf-8 link")
}

/// The values of `attr="…"` in `text` (the site always uses double quotes).
fn attribute_values<'a>(text: &'a str, attr: &str) -> Vec<&'a str> {
    let needle = format!(" {attr}=\"");
    let mut values = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&needle) {
        let value = &rest[start + needle.len()..];
        let end = value.find('"').expect("closing quote");
        values.push(&value[..end]);
        rest = &value[end..];
    }
    values
}

/// Checks every `href` and `src` of every HTML file (and the feed's links): relative, and naming
/// an existing file; a fragment names an `id` in that file. Returns how many links were checked.
fn check_links(dir: &Path) -> usize {
    let mut checked = 0;
    for (rel, content) in tree(dir) {
        if !(rel.ends_with(".html") || rel.ends_with(".atom")) {
            continue;
        }
        let text = String::from_utf8(content).expect("pages are UTF-8");
        let base = dir.join(&rel);
        let base_dir = base.parent().expect("a file has a parent");
        let links: Vec<&str> = ["href", "src"]
            .iter()
            .flat_map(|attr| attribute_values(&text, attr))
            .collect();
        for link in links {
            assert!(
                !link.contains("://") && !link.starts_with('/') && !link.starts_with("//"),
                "{rel}: link {link:?} is not relative"
            );
            let (path, fragment) = link.split_once('#').unwrap_or((link, ""));
            let target = if path.is_empty() {
                base.clone()
            } else {
                base_dir.join(percent_decode(path))
            };
            assert!(
                target.is_file(),
                "{rel}: link {link:?} resolves to the missing {}",
                target.display()
            );
            if !fragment.is_empty() {
                let target_text = fs::read_to_string(&target).expect("read the link target");
                assert!(
                    target_text.contains(&format!("id=\"{fragment}\"")),
                    "{rel}: link {link:?}: no id {fragment:?} in {}",
                    target.display()
                );
            }
            checked += 1;
        }
    }
    checked
}

/// The `<tr>…</tr>` of the index that shows `commit`.
fn index_row<'a>(index: &'a str, commit: &str) -> &'a str {
    let at = index
        .find(&format!("<code>{}</code>", short(commit)))
        .unwrap_or_else(|| panic!("no row for {commit} in the index:\n{index}"));
    let start = index[..at].rfind("<tr>").expect("row start");
    let end = at + index[at..].find("</tr>").expect("row end");
    &index[start..end]
}

#[test]
fn site_from_daemon_notes_links_labels_and_escapes() {
    if !require_tool("gpg") {
        return;
    }
    let results = Results::new();
    let env = results.env();
    let out = env.path("site");
    let summary = results.site(&out, &[]);
    assert!(
        summary.contains("3 commit pages rendered, 0 unchanged"),
        "{summary}"
    );

    let files = tree(&out);
    let checked = check_links(&out);
    assert!(checked > 20, "only {checked} links checked");
    for (rel, content) in &files {
        let text = String::from_utf8_lossy(content);
        assert!(
            !text.contains("<script>alert(1)"),
            "{rel} holds the subject as markup"
        );
        if rel.ends_with(".html") {
            assert!(
                !text.to_lowercase().contains("<script"),
                "{rel} has a script"
            );
        }
    }

    let index = read(&out, "index.html");
    assert!(index.contains(EVIL_ESCAPED), "{index}");
    let failed_row = index_row(&index, &results.failed);
    assert!(
        failed_row.contains(&format!(
            "<td class=\"state failed\"><a href=\"commit/{}.html#ns-icyci\">\
             <span aria-hidden=\"true\">✗</span> failed</a></td>",
            results.failed
        )),
        "{failed_row}"
    );
    assert!(
        failed_row.contains("passed</a></td>"),
        "icyci-arm passed: {failed_row}"
    );
    let running_row = index_row(&index, &results.running);
    assert!(running_row.contains("untested</td>"), "{running_row}");
    assert!(running_row.contains("running</a></td>"), "{running_row}");
    let passed_row = index_row(&index, &results.passed);
    assert_eq!(
        passed_row.matches("passed</a></td>").count(),
        2,
        "{passed_row}"
    );

    // The failed commit's page: its verdict and label, escaped subject, coloured logs.
    let page = read(&out, &format!("commit/{}.html", results.failed));
    assert!(page.contains(EVIL_ESCAPED), "{page}");
    assert!(page.contains("<span aria-hidden=\"true\">✗</span> failed"));
    assert!(page.contains("test.sh failed: exit status 3"), "{page}");
    assert!(
        page.contains("<span class=\"fg2\">all good</span>"),
        "{page}"
    );
    assert!(
        page.contains("warn: <span class=\"b fg1\">careful</span> &lt;b&gt;"),
        "{page}"
    );
    assert!(
        page.contains("showing its last 2000 of 3001 lines"),
        "the long stdout is cut: {page}"
    );
    assert!(!page.contains("\n1000\n"), "line 1000 is cut off");
    assert!(page.contains("\n3000\n"));
    assert!(page.contains(&format!(
        "<a href=\"../raw/{}/icyci/output.stdout\">Full stdout</a>",
        results.failed
    )));

    // Raw files, byte for byte.
    for (ns, commit) in [("icyci", &results.failed), ("icyci-arm", &results.passed)] {
        for name in ["size-report", "output.stdout", "output.stderr"] {
            let note = env
                .note(&results.fx.results, ns, name, commit)
                .unwrap_or_else(|| panic!("note {ns}.{name} on {commit}"));
            let raw = &files[&format!("raw/{commit}/{ns}/{name}")];
            assert_eq!(raw, &note, "raw/{commit}/{ns}/{name}");
        }
    }
    assert_eq!(
        files[&format!("raw/{}/icyci/size-report", results.passed)],
        b"bin\0\xffary"
    );

    // Badges for the branch tip: untested in icyci, running in icyci-arm.
    assert!(read(&out, "badge/icyci.svg").contains(">untested</text>"));
    assert!(read(&out, "badge/icyci-arm.svg").contains(">running</text>"));

    // The feed: finished results only, timestamps from the commits, no markup from the subject.
    let feed = read(&out, "feed.atom");
    assert!(feed.starts_with(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<feed xmlns=\"http://www.w3.org/2005/Atom\">"
    ));
    assert_eq!(feed.matches("<entry>").count(), 4, "{feed}");
    assert!(feed.contains(EVIL_ESCAPED), "{feed}");
    let times = results.commit_timestamps();
    for stamp in feed.split("<updated>").skip(1) {
        let stamp = &stamp[..stamp.find("</updated>").expect("closing tag")];
        assert!(
            times.iter().any(|t| t == stamp),
            "updated {stamp} is not a commit time {times:?}"
        );
    }
}

#[test]
fn site_is_deterministic_and_incremental() {
    if !require_tool("gpg") {
        return;
    }
    let results = Results::new();
    let env = results.env();
    let (first, second) = (env.path("site-1"), env.path("site-2"));
    results.site(&first, &[]);
    results.site(&second, &[]);
    assert_eq!(tree(&first), tree(&second), "two builds differ");

    // A rerun without changes reads no commit again and writes nothing.
    let before = stamps(&first);
    let summary = results.site(&first, &[]);
    assert!(
        summary.contains("0 commit pages rendered, 3 unchanged; 0 files written, 0 removed"),
        "{summary}"
    );
    assert_eq!(changed(&before, &stamps(&first)), Vec::<String>::new());

    // A new tested commit: its own files and the ones that list it, nothing else.
    let fx = &results.fx;
    let newest = fx.signed_commit("newest commit");
    once(fx, "icyci", false);
    let before = stamps(&first);
    let summary = results.site(&first, &[]);
    assert!(
        summary.contains("1 commit pages rendered, 3 unchanged"),
        "{summary}"
    );
    let mut expected = vec![
        ".icyci-site".to_owned(),
        "badge/icyci-arm.svg".to_owned(),
        "badge/icyci.svg".to_owned(),
        format!("commit/{newest}.html"),
        "feed.atom".to_owned(),
        "index.html".to_owned(),
        format!("raw/{newest}/icyci/output.stderr"),
        format!("raw/{newest}/icyci/output.stdout"),
        format!("raw/{newest}/icyci/size-report"),
        format!("raw/{newest}/icyci/verified"),
    ];
    expected.sort();
    assert_eq!(changed(&before, &stamps(&first)), expected);
    assert!(read(&first, "badge/icyci.svg").contains(">passed</text>"));
    check_links(&first);

    // A smaller window: the files of commits no longer shown go, nothing else.
    let before = stamps(&first);
    let summary = results.site(&first, &["-n", "2"]);
    assert!(
        summary.contains("0 commit pages rendered, 2 unchanged"),
        "{summary}"
    );
    let removed: Vec<String> = changed(&before, &stamps(&first))
        .into_iter()
        .filter(|f| !first.join(f).exists())
        .collect();
    let mut expected = Vec::new();
    for commit in [&results.passed, &results.failed] {
        expected.push(format!("commit/{commit}.html"));
        for ns in ["icyci", "icyci-arm"] {
            for name in ["output.stderr", "output.stdout", "size-report", "verified"] {
                expected.push(format!("raw/{commit}/{ns}/{name}"));
            }
        }
        assert!(
            !first.join("raw").join(commit).exists(),
            "raw/{commit} left behind"
        );
    }
    expected.sort();
    assert_eq!(removed, expected);
    check_links(&first);
}

#[test]
fn site_errors_are_one_line_and_touch_nothing() {
    let env = TestEnv::new();
    let repo = env.work_repo("repo");
    let commit = env.commit(&repo, "a commit", crate::common::Sign::None);
    env.git(
        &repo,
        [
            "notes",
            "--ref=refs/notes/icyci.result.passed",
            "add",
            "-m",
            "ok",
            &commit,
        ],
    );
    let foreign = env.path("foreign");
    fs::create_dir(&foreign).expect("mkdir");
    fs::write(foreign.join("keep.txt"), "mine").expect("write");
    let fresh = env.path("fresh");

    let run = |args: &[&str]| {
        let mut cmd = env.icyci();
        cmd.arg("site").args(args);
        cmd.output().expect("run icyci site")
    };
    let repo_arg = repo.to_string_lossy().into_owned();
    let foreign_arg = foreign.to_string_lossy().into_owned();
    let fresh_arg = fresh.to_string_lossy().into_owned();
    let not_repo = env.path("home").to_string_lossy().into_owned();
    for (args, expected) in [
        (
            vec!["--repo", &not_repo, "--out", &fresh_arg],
            "is not a git repository",
        ),
        (
            vec!["--repo", &repo_arg, "--out", &fresh_arg, "--ns", "nothing*"],
            "no icyci results notes matching \"nothing*\"",
        ),
        (
            vec!["--repo", &repo_arg, "--out", &foreign_arg],
            "holds no icyci site",
        ),
    ] {
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert_eq!(
        fs::read_dir(&foreign).expect("read").count(),
        1,
        "a foreign directory was written to"
    );
    assert!(
        !fresh.exists(),
        "a failed build created its output directory"
    );

    // An unreachable repository is not bad input: exit 1.
    let unreachable = format!("git://127.0.0.1:{}/results.git", crate::common::free_port());
    let out = run(&["--repo", &unreachable, "--out", &fresh_arg]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("icyci site: cannot fetch results from"),
        "{stderr}"
    );
    assert!(
        !fresh.exists(),
        "a failed build created its output directory"
    );

    let out = run(&["--repo", &repo_arg, "--out", &fresh_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(read(&fresh, "index.html").contains("passed</a></td>"));
}

#[test]
fn site_dir_follows_a_running_daemon() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let site = fx.env.path("www/site");
    let first = fx.script_commit("echo first run\n");
    let site_arg = format!("-site-dir={}", site.display());
    let mut daemon = fx.spawn(&[&site_arg]);
    fx.wait_passed(&mut daemon, &first);
    let page = |commit: &str| site.join(format!("commit/{commit}.html"));
    // The manifest is written last, once the whole site is there.
    wait_for("the site to show the first commit", LONG, || {
        page(&first).is_file() && site.join(".icyci-site").is_file()
    });
    let index = read(&site, "index.html");
    assert!(
        index_row(&index, &first).contains("passed</a></td>"),
        "{index}"
    );

    let second = fx.signed_commit("second commit");
    fx.wait_passed(&mut daemon, &second);
    wait_for("the site to show the second commit", LONG, || {
        fs::read_to_string(site.join(".icyci-site"))
            .is_ok_and(|manifest| manifest.contains(&format!("commit {second}")))
    });
    assert!(page(&second).is_file());
    let index = read(&site, "index.html");
    assert!(
        index_row(&index, &second).contains("passed</a></td>"),
        "{index}"
    );
    assert!(read(&site, "badge/icyci.svg").contains(">passed</text>"));
    check_links(&site);
    let log = daemon.wait_for_stderr("site refreshed", LONG);
    assert!(!log.contains("site not refreshed"), "{log}");
    assert!(daemon.is_running(), "{}", daemon.logs_for_humans());
}

/// A `-site-dir` that holds other files is refused at start, touching nothing; a site
/// directory that becomes unwritable later (here: replaced by a file) is a warning after each
/// push, and the daemon goes on testing and publishing.
#[test]
fn a_site_that_cannot_be_written_does_not_stop_the_daemon() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let foreign = fx.env.path("foreign");
    fs::create_dir(&foreign).expect("mkdir");
    fs::write(foreign.join("keep.txt"), "mine").expect("write");
    let first = fx.script_commit("echo ok\n");
    let foreign_arg = format!("-site-dir={}", foreign.display());
    let (status, daemon) = fx.once(&[&foreign_arg]);
    assert_eq!(status.code(), Some(2), "{}", daemon.logs_for_humans());
    assert!(
        daemon.stderr().contains("holds no icyci site"),
        "{}",
        daemon.logs_for_humans()
    );
    assert!(fx.note("locked", &first).is_none(), "nothing touched");
    assert_eq!(fs::read_dir(&foreign).expect("read").count(), 1);

    let site = fx.env.path("site");
    let mut daemon = fx.spawn(&[&format!("-site-dir={}", site.display())]);
    fx.wait_passed(&mut daemon, &first);
    daemon.wait_for_stderr("site refreshed", LONG);
    fs::remove_dir_all(&site).expect("remove the site");
    fs::write(&site, "a file now").expect("a file in its place");
    let second = fx.signed_commit("second commit");
    fx.wait_passed(&mut daemon, &second);
    let log = daemon.wait_for_stderr("site not refreshed", LONG);
    assert!(log.contains("is not a directory"), "{log}");
    assert!(daemon.is_running(), "{}", daemon.logs_for_humans());
}

/// Runs `chromium` headless with `args` and a fresh profile; its stdout. Panics with the logs
/// when it fails or hangs.
fn chromium(env: &TestEnv, args: &[String]) -> String {
    let profile = env.path(format!("chromium-profile-{}", env.unique()));
    let mut cmd = env.command("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        // Containers often have a small /dev/shm.
        "--disable-dev-shm-usage",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args);
    let mut browser: Daemon = env.spawn_logged(cmd, "chromium");
    let status = browser.expect_exit(Duration::from_secs(120));
    assert!(
        status.success(),
        "chromium failed\n{}",
        browser.logs_for_humans()
    );
    browser.stdout()
}

#[test]
fn chromium_renders_the_index() {
    if !require_tool("gpg") || !require_tool("chromium") {
        return;
    }
    let results = Results::new();
    let env = results.env();
    let out = env.path("site");
    results.site(&out, &[]);
    let url = format!("file://{}", out.join("index.html").display());

    let dom = chromium(env, &["--dump-dom".to_owned(), url.clone()]);
    assert!(dom.contains("<table class=\"matrix\">"), "{dom}");
    // A DOM serialises text with `&`, `<` and `>` escaped, quotes as they are.
    assert!(
        dom.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; \"x\""),
        "the subject is text in the DOM: {dom}"
    );
    let failed_row = index_row(&dom, &results.failed);
    assert!(failed_row.contains("state failed"), "{failed_row}");
    assert!(failed_row.contains("</span> failed</a>"), "{failed_row}");
    assert_eq!(
        dom.matches("<tr>").count(),
        4,
        "a header and 3 commits: {dom}"
    );

    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("test-artifacts");
    fs::create_dir_all(&artifacts).expect("create target/test-artifacts");
    let screenshot = artifacts.join("site-index.png");
    let _ = fs::remove_file(&screenshot);
    chromium(
        env,
        &[
            format!("--screenshot={}", screenshot.display()),
            "--window-size=1200,800".to_owned(),
            url,
        ],
    );
    let png = fs::read(&screenshot).expect("the screenshot was saved");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        png.len() > 10_000,
        "a blank screenshot? {} bytes",
        png.len()
    );
}

/// A lock whose lease has ended, with no result, is `stale` on every page that shows it: the
/// index cell, the commit page (with holder and what to do), the tip's badge; a live lease and
/// a lock of the original icyCI stay `running`, a result wins over an ended lease. A rebuild
/// keeps the stale pages as they are.
#[test]
fn stale_locks_are_shown_as_stale() {
    let r = LeaseResults::build();
    let out = r.env.path("site");
    let build = |extra: &[&str]| {
        let mut cmd = r.env.icyci();
        cmd.arg("site")
            .arg("--repo")
            .arg(&r.repo)
            .arg("--out")
            .arg(&out)
            .args(extra);
        let output = cmd.output().expect("run icyci site");
        assert!(
            output.status.success(),
            "icyci site failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let summary = build(&[]);
    assert!(summary.contains("4 commit pages rendered"), "{summary}");
    check_links(&out);

    let index = read(&out, "index.html");
    let stale_row = index_row(&index, &r.stale);
    assert!(
        stale_row.contains(&format!(
            "<td class=\"state stale\" title=\"stale lock: lease expired 2020-01-01T00:00:00Z, \
             holder deadhost pid 4242 id 00112233aabbccdd\"><a href=\"commit/{}.html#ns-icyci\">\
             <span aria-hidden=\"true\">◌</span> stale</a></td>",
            r.stale
        )),
        "{stale_row}"
    );
    for running in [&r.live, &r.original] {
        let row = index_row(&index, running);
        assert!(
            row.contains("<td class=\"state running\">") && row.contains("running</a></td>"),
            "{row}"
        );
        assert!(!row.contains("stale"), "{row}");
    }
    let passed_row = index_row(&index, &r.passed);
    assert!(passed_row.contains("passed</a></td>"), "{passed_row}");
    assert!(!passed_row.contains("stale"), "{passed_row}");

    let page = read(&out, &format!("commit/{}.html", r.stale));
    assert!(
        page.contains(
            "<h2>icyci <span class=\"state stale\"><span aria-hidden=\"true\">◌</span> stale\
             </span></h2>"
        ),
        "{page}"
    );
    assert!(
        page.contains(&format!(
            "<p class=\"stale\"><strong>Stale lock:</strong> lease expired 2020-01-01T00:00:00Z, \
             holder deadhost pid 4242 id 00112233aabbccdd; no result. Its holder is gone: an \
             instance takes the commit over when it next finds it as its branch tip, and \
             <code>icyci retest {} --results-repo <var>URL</var> --ns icyci</code> removes the \
             lock.</p>",
            r.stale
        )),
        "{page}"
    );
    assert!(
        page.contains("<p class=\"lock\">Lock: 2019-12-31"),
        "{page}"
    );
    for other in [&r.live, &r.original, &r.passed] {
        let page = read(&out, &format!("commit/{other}.html"));
        assert!(!page.contains("Stale lock"), "{page}");
        assert!(!page.contains("state stale"), "{page}");
    }

    // The tip is the stale commit.
    let badge = read(&out, "badge/icyci.svg");
    assert!(badge.contains(">stale</text>"), "{badge}");
    assert!(index.contains("alt=\"icyci: stale\""), "{index}");
    assert!(read(&out, "style.css").contains(".state.stale {"));
    // A stale lock is no result: the feed has the passed commit only.
    let feed = read(&out, "feed.atom");
    assert_eq!(feed.matches("<entry>").count(), 1, "{feed}");

    // Still stale on the next build: nothing is rendered or written again.
    let summary = build(&[]);
    assert!(
        summary.contains("0 commit pages rendered, 4 unchanged; 0 files written, 0 removed"),
        "{summary}"
    );
}

/// A daemon's `-site-dir` knows when its daemon takes over a lock without a lease
/// (`-stale-lock-after`): an original icyCI's lock that old is stale on its site — also on a
/// page first rendered as running from the same notes.
#[test]
fn a_daemon_site_applies_its_stale_lock_after() {
    if !require_tool("gpg") {
        return;
    }
    let fx = Fixture::new();
    let site = fx.env.path("site");
    // An old commit locked by the original icyCI in 2019 and never finished.
    let locked = fx.script_commit("echo ok\n");
    fx.env.push(&fx.work, &fx.results, &["main"]);
    fx.env.git(
        &fx.results,
        [
            "notes",
            "--ref=refs/notes/icyci.locked",
            "add",
            "-m",
            ORIGINAL_LOCK,
            &locked,
        ],
    );
    let lock_cell = |site: &Path| {
        let index = read(site, "index.html");
        let row = index_row(&index, &locked).to_owned();
        let page = read(site, &format!("commit/{locked}.html"));
        (row, page)
    };

    // Without -stale-lock-after nobody would take it over: running.
    let first = fx.signed_commit("first tested commit");
    let site_arg = format!("-site-dir={}", site.display());
    let (status, daemon) = fx.once(&[&site_arg]);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    assert!(fx.note("result.passed", &first).is_some());
    let (row, page) = lock_cell(&site);
    assert!(row.contains("<td class=\"state running\">"), "{row}");
    assert!(!page.contains("Stale lock"), "{page}");

    // With it, the daemon would take such a lock over: stale, and the page is rendered again
    // although its notes did not change.
    let second = fx.signed_commit("second tested commit");
    let (status, daemon) = fx.once(&[&site_arg, "-stale-lock-after=1h"]);
    assert_eq!(status.code(), Some(0), "{}", daemon.logs_for_humans());
    assert!(fx.note("result.passed", &second).is_some());
    let (row, page) = lock_cell(&site);
    assert!(row.contains("<td class=\"state stale\""), "{row}");
    assert!(
        page.contains(
            "<strong>Stale lock:</strong> lock without a lease taken 2019-12-31T23:00:00Z; \
             no result."
        ),
        "{page}"
    );
    // `icyci site` knows no such threshold: running.
    let out = fx.env.path("site-2");
    let mut cmd = fx.env.icyci();
    cmd.arg("site")
        .arg("--repo")
        .arg(&fx.results)
        .arg("--out")
        .arg(&out);
    let output = cmd.output().expect("run icyci site");
    assert!(output.status.success(), "{output:?}");
    let (row, _) = lock_cell(&out);
    assert!(row.contains("<td class=\"state running\">"), "{row}");
    // The lock itself was left alone: it is not the tip.
    assert_eq!(
        fx.note_text("locked", &locked).as_deref(),
        Some(ORIGINAL_LOCK)
    );
}
