//! End to end on real input: icyci tests a copy of its own repository, and the results are read
//! back the way users read them, with `git log --show-notes`.

use std::path::Path;
use std::time::Duration;

use crate::common::{require_tool, write_script, Sign, TestEnv};

#[test]
fn tests_its_own_repository() {
    if !require_tool("gpg") {
        return;
    }
    let env = TestEnv::new();
    let fpr = env.gpg_key();
    let project = Path::new(env!("CARGO_MANIFEST_DIR"));

    // The project's history with a signed commit on top, whatever the project's checkout is
    // (a branch, a detached head, a shallow clone).
    let work = env.clone_repo(project, "work");
    env.git(&work, ["checkout", "-q", "-B", "main"]);
    let tip = env.commit_files(&work, "selftest: signed tip", &[], Sign::Gpg(fpr));
    let source = env.bare_repo("src.git");
    env.push(&work, &source, &["main"]);
    let results = env.bare_repo("results.git");
    let rs_files = env.git(&work, ["ls-files", "--", "*.rs"]).lines().count();
    assert!(rs_files > 0, "the project has Rust sources");

    let script = env.path("bin/check-checkout.sh");
    write_script(
        &script,
        "set -eu\n\
         sed -n '/^\\[package\\]/,/^\\[/p' Cargo.toml | grep -q '^name *= *\"icyci\"'\n\
         test -f src/main.rs\n\
         test -f .icyci/selftest.sh && test -x .icyci/selftest.sh\n\
         commits=$(($(git log --oneline | wc -l)))\n\
         test \"$commits\" -ge 2\n\
         echo \"commits: $commits\"\n\
         echo \"rust files: $(($(git ls-files -- '*.rs' | wc -l)))\"\n",
    );

    let mut daemon = env.spawn_icyci([
        "-source-repo",
        &source.to_string_lossy(),
        "-results-repo",
        &results.to_string_lossy(),
        "-test-script",
        &script.to_string_lossy(),
        "-once",
    ]);
    let status = daemon.expect_exit(Duration::from_secs(30));
    assert_eq!(
        status.code(),
        Some(0),
        "the checks pass on the project's own checkout\n{}",
        daemon.logs_for_humans()
    );

    let reader = env.clone_repo(&results, "reader");
    env.git(
        &reader,
        ["fetch", "-q", "origin", "refs/notes/*:refs/notes/*"],
    );
    let log = env.git(&reader, ["log", "-1", "--show-notes=icyci*", "main"]);
    assert!(log.contains(&format!("commit {tip}")), "{log}");
    assert!(log.contains("Notes (icyci.result.passed):"), "{log}");
    assert!(
        log.contains(&format!("{} completed successfully", script.display())),
        "{log}"
    );
    assert!(log.contains("Notes (icyci.output.stdout):"), "{log}");
    assert!(
        log.contains(&format!("rust files: {rs_files}")),
        "the script saw the project's {rs_files} tracked .rs files:\n{log}"
    );
}
