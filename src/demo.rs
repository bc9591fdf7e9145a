//! `icyci demo`: one full cycle on throwaway repositories, with no setup.
//!
//! Creates an ssh signing key, a source repository with a signed commit and
//! a small test script, and an empty results repository, all in a temporary
//! directory; runs this very binary with `-once` against them; and prints the
//! results the way users read them, with `git log --show-notes`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

const TEST_SCRIPT: &str = r#"#!/bin/sh
# The demo's test: check the source, build it when a C compiler is there,
# and leave a summary note in $ICYCI_NOTES_DIR.
set -eu
echo "testing $(git rev-parse --short HEAD) in $(pwd)"
grep -q 'int main' hello.c
if command -v cc >/dev/null 2>&1; then
    cc -o hello hello.c && ./hello
else
    echo "no C compiler; source checked only" >&2
fi
printf 'files: %s\n' "$(git ls-files | wc -l)" > "$ICYCI_NOTES_DIR/summary"
"#;

const HELLO_C: &str = "#include <stdio.h>\n\nint main(void)\n{\n\tputs(\"hello from the tested commit\");\n\treturn 0;\n}\n";

/// Runs the demo.
pub fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("icyci demo: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode> {
    let dir = tempfile::Builder::new().prefix("icyci-demo").tempdir()?;
    let demo = Demo::new(dir.path());
    demo.setup()?;

    let args = [
        format!("-source-repo={}", demo.source.display()),
        format!("-results-repo={}", demo.results.display()),
        "-test-script=.icyci/test.sh".to_owned(),
        // Keep the job's state with the demo's other files, removed with them.
        format!("-state-dir={}", dir.path().join("state").display()),
        "-once".to_owned(),
    ];
    println!("== icyci demo: a signed commit in a throwaway repository (removed at the end)");
    println!("   icyci {}\n", args.join(" "));
    let status = Command::new(std::env::current_exe()?)
        .envs(demo.env())
        .args(&args)
        .status()
        .context("cannot start icyci")?;

    println!("\n== results, as any user reads them:");
    println!("   git fetch results 'refs/notes/*:refs/notes/*' && git log --show-notes='icyci*'\n");
    demo.git(
        &demo.work,
        &["fetch", "-q", "../results.git", "refs/notes/*:refs/notes/*"],
    )?;
    let log = demo.git(&demo.work, &["log", "-1", "--show-notes=icyci*"])?;
    println!("{log}");
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

struct Demo {
    root: PathBuf,
    work: PathBuf,
    source: PathBuf,
    results: PathBuf,
}

impl Demo {
    fn new(root: &Path) -> Self {
        Demo {
            root: root.to_owned(),
            work: root.join("work"),
            source: root.join("source.git"),
            results: root.join("results.git"),
        }
    }

    /// Git configuration of the demo only; the user's own is not read.
    fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("GIT_CONFIG_GLOBAL", self.root.join("gitconfig")),
            ("GIT_CONFIG_NOSYSTEM", PathBuf::from("1")),
        ]
    }

    fn setup(&self) -> Result<()> {
        let key = self.root.join("signing-key");
        let status = Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "demo@icyci.invalid",
                "-f",
            ])
            .arg(&key)
            .status()
            .context("ssh-keygen is needed for the demo's signing key")?;
        if !status.success() {
            bail!("ssh-keygen failed ({status})");
        }
        let public = std::fs::read_to_string(key.with_extension("pub"))?;
        let signers = self.root.join("allowed_signers");
        std::fs::write(&signers, format!("demo@icyci.invalid {public}"))?;
        std::fs::write(
            self.root.join("gitconfig"),
            format!(
                "[user]\n\tname = icyci demo\n\temail = demo@icyci.invalid\n\tsigningkey = {}\n\
                 [gpg]\n\tformat = ssh\n[gpg \"ssh\"]\n\tallowedSignersFile = {}\n\
                 [commit]\n\tgpgsign = true\n[init]\n\tdefaultBranch = main\n",
                key.with_extension("pub").display(),
                signers.display()
            ),
        )?;

        for bare in [&self.source, &self.results] {
            self.git(
                &self.root,
                &["init", "-q", "--bare", &bare.to_string_lossy()],
            )?;
        }
        self.git(&self.root, &["init", "-q", &self.work.to_string_lossy()])?;
        std::fs::write(self.work.join("hello.c"), HELLO_C)?;
        std::fs::create_dir_all(self.work.join(".icyci"))?;
        let script = self.work.join(".icyci/test.sh");
        std::fs::write(&script, TEST_SCRIPT)?;
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        self.git(&self.work, &["add", "."])?;
        self.git(
            &self.work,
            &["commit", "-q", "-S", "-m", "hello: a signed commit to test"],
        )?;
        self.git(
            &self.work,
            &["push", "-q", "../source.git", "HEAD:refs/heads/main"],
        )?;
        Ok(())
    }

    fn git(&self, dir: &Path, args: &[&str]) -> Result<String> {
        let output = Command::new("git")
            .current_dir(dir)
            .envs(self.env())
            .args(args)
            .output()
            .context("git is needed for the demo")?;
        if !output.status.success() {
            bail!(
                "git {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}
