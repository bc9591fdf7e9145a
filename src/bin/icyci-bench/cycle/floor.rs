//! The plain-git floor: the work of one cycle done by git commands the
//! benchmark runs itself (no shell) in a prepared clone, on repositories of
//! the same kind as the daemon's, timed from the push of a new commit until
//! its result notes are pushed. Then `git clean`, outside the timed window as the daemon's
//! cleanup is (it comes after its result is visible), but inside the CPU
//! figure.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use super::daemon::own_children_cpu;
use super::world::{Pair, World};
use crate::common::{check_interrupted, git};

/// The floor's notes namespace.
/// The floor's namespace on its own repositories.
const FLOOR_NS: &str = "floor";
/// The notes pushed with the results, as the daemon writes them.
const NOTES: [&str; 4] = [
    "output.stdout",
    "output.stderr",
    "verified",
    "result.passed",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// One `hash-object --stdin-paths`, the notes by one `fast-import`.
    Batched,
    /// A `hash-object` and a `notes add -C` per note.
    Unbatched,
}

/// Samples of one variant.
#[derive(Debug, Default)]
pub struct Samples {
    pub latency: Vec<Duration>,
    /// CPU of all its git processes and the script, summed over the cycles.
    pub cpu: Duration,
    /// Processes started per cycle (git and the script).
    pub processes: usize,
}

#[derive(Debug, Default)]
pub struct Floor {
    pub batched: Samples,
    pub unbatched: Samples,
}

struct Runner<'a> {
    clone: PathBuf,
    work: PathBuf,
    script: &'a Path,
    processes: usize,
    note_refs_exist: bool,
    /// The notes namespace it writes.
    ns: &'static str,
}

/// The floor's own repositories (of the same shape as the daemon's), its
/// prepared clone and commits: rounds of one cycle of each variant, which
/// the caller may interleave with the daemon's cycles so that both see the
/// same load.
pub struct FloorBench<'a> {
    runner: Runner<'a>,
    pair: Pair,
    commits: std::vec::IntoIter<String>,
    round: usize,
    floor: Floor,
}

impl<'a> FloorBench<'a> {
    /// Builds the repositories with `history` commits, clones them, runs one
    /// untimed cycle on the tip and prepares the commits of `rounds` rounds.
    pub fn new(world: &World, script: &'a Path, history: usize, rounds: usize) -> Result<Self> {
        let pair = world.pair("floor", history, 0)?;
        Self::on_pair(world, script, pair, "floor", FLOOR_NS, rounds)
    }

    /// Like [`FloorBench::new`] on an existing pair of repositories (whose
    /// results may hold notes: they are fetched first, history and all, as
    /// a plain clone has them).
    pub fn on_pair(
        world: &World,
        script: &'a Path,
        mut pair: Pair,
        name: &str,
        ns: &'static str,
        rounds: usize,
    ) -> Result<Self> {
        let clone = world.path(&format!("{name}-clone"));
        let work = world.path(&format!("{name}-work"));
        std::fs::create_dir(&work)?;
        git(
            &world.root,
            &["clone", "-q", &pair.source_url(), &clone.to_string_lossy()],
        )?;
        git(&clone, &["remote", "add", "results", &pair.results_url()])?;
        git(
            &clone,
            &["fetch", "-q", "results", "+refs/notes/*:refs/notes/*"],
        )?;
        let note_refs_exist = !git(
            &clone,
            &["for-each-ref", &format!("refs/notes/{ns}.output.stdout")],
        )?
        .trim()
        .is_empty();
        let mut runner = Runner {
            clone,
            work,
            script,
            processes: 0,
            note_refs_exist,
            ns,
        };
        if !runner.note_refs_exist {
            // Creates the note refs, so every timed cycle adds to them.
            runner.cycle(&pair.tip()?, Variant::Batched)?;
            runner.clean()?;
        }
        let commits = pair.prepare(2 * rounds)?.into_iter();
        Ok(FloorBench {
            runner,
            pair,
            commits,
            round: 0,
            floor: Floor::default(),
        })
    }

    /// One cycle of each variant, the first one alternating between rounds.
    pub fn round(&mut self) -> Result<()> {
        let order = if self.round.is_multiple_of(2) {
            [Variant::Batched, Variant::Unbatched]
        } else {
            [Variant::Unbatched, Variant::Batched]
        };
        self.round += 1;
        for variant in order {
            check_interrupted()?;
            let commit = self
                .commits
                .next()
                .context("more floor rounds than prepared")?;
            self.pair.push(&commit)?;
            let cpu_before = own_children_cpu()?;
            self.runner.processes = 0;
            let started = Instant::now();
            self.runner.cycle(&commit, variant)?;
            let elapsed = started.elapsed();
            self.runner.clean()?;
            let cpu = own_children_cpu()?.saturating_sub(cpu_before);
            let samples = match variant {
                Variant::Batched => &mut self.floor.batched,
                Variant::Unbatched => &mut self.floor.unbatched,
            };
            samples.latency.push(elapsed);
            samples.cpu += cpu;
            samples.processes = self.runner.processes;
        }
        Ok(())
    }

    pub fn finish(self) -> Floor {
        self.floor
    }
}

impl Runner<'_> {
    fn git(&mut self, args: &[&str]) -> Result<String> {
        self.processes += 1;
        git(&self.clone, args)
    }

    /// Fetch, verify, lock, check out, run, add the notes, push them.
    fn cycle(&mut self, tip: &str, variant: Variant) -> Result<()> {
        self.git(&["fetch", "-q", "origin"])?;
        self.git(&["verify-commit", tip])?;
        let locked = format!("refs/notes/{}.locked", self.ns);
        let lock_text = format!(
            "{}: this commit is being tested by icyCI",
            SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs()
        );
        self.git(&["notes", "--ref", &locked, "add", "-m", &lock_text, tip])?;
        self.git(&["push", "-q", "results", &locked])?;
        self.git(&["checkout", "-q", "--force", "--detach", tip])?;

        let files: Vec<PathBuf> = NOTES.iter().map(|name| self.work.join(name)).collect();
        self.processes += 1;
        let status = Command::new(self.script)
            .current_dir(&self.clone)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&files[0])?)
            .stderr(std::fs::File::create(&files[1])?)
            .status()
            .with_context(|| format!("cannot run {}", self.script.display()))?;
        if !status.success() {
            bail!("{} failed ({status})", self.script.display());
        }
        std::fs::write(
            &files[2],
            format!("object: commit {tip}\nformat: openpgp\ntrust: git\n"),
        )?;
        std::fs::write(
            &files[3],
            format!("{} completed successfully\n", self.script.display()),
        )?;

        match variant {
            Variant::Batched => self.add_notes_batched(tip, &files)?,
            Variant::Unbatched => {
                for (name, file) in NOTES.iter().zip(&files) {
                    let blob = self.git(&["hash-object", "-w", &file.to_string_lossy()])?;
                    let notes_ref = format!("refs/notes/{}.{name}", self.ns);
                    self.git(&[
                        "notes",
                        "--ref",
                        &notes_ref,
                        "add",
                        "--allow-empty",
                        "-C",
                        &blob,
                        tip,
                    ])?;
                }
            }
        }
        self.note_refs_exist = true;

        // One push: the notes and, as the daemon does by default, the
        // tested commit on the results' branch.
        let mut push = vec!["push".to_owned(), "-q".to_owned(), "results".to_owned()];
        push.extend(
            NOTES
                .iter()
                .map(|name| format!("refs/notes/{}.{name}", self.ns)),
        );
        push.push(format!("{tip}:refs/heads/main"));
        let push: Vec<&str> = push.iter().map(String::as_str).collect();
        self.git(&push)?;
        Ok(())
    }

    fn add_notes_batched(&mut self, tip: &str, files: &[PathBuf]) -> Result<()> {
        self.processes += 1;
        let mut paths = String::new();
        for file in files {
            writeln!(paths, "{}", file.display())?;
        }
        let blobs = pipe(
            Command::new("git").arg("-C").arg(&self.clone).args([
                "hash-object",
                "-w",
                "--stdin-paths",
            ]),
            paths.as_bytes(),
        )?;
        let blobs: Vec<&str> = blobs.split_whitespace().collect();
        if blobs.len() != files.len() {
            bail!("git hash-object --stdin-paths printed {blobs:?}");
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let mut stream = String::new();
        for (name, blob) in NOTES.iter().zip(&blobs) {
            let notes_ref = format!("refs/notes/{}.{name}", self.ns);
            writeln!(stream, "commit {notes_ref}")?;
            writeln!(
                stream,
                "committer icyci bench <bench@example.org> {now} +0000"
            )?;
            let message = "Notes added by icyci-bench\n";
            write!(stream, "data {}\n{message}", message.len())?;
            if self.note_refs_exist {
                writeln!(stream, "from {notes_ref}^0")?;
            }
            writeln!(stream, "N {blob} {tip}\n")?;
        }
        self.processes += 1;
        pipe(
            Command::new("git")
                .arg("-C")
                .arg(&self.clone)
                .args(["fast-import", "--quiet"]),
            stream.as_bytes(),
        )?;
        Ok(())
    }

    fn clean(&mut self) -> Result<()> {
        self.git(&["clean", "-ffdxq"])?;
        Ok(())
    }
}

/// Runs `command` with `input` on its stdin; its stdout.
fn pipe(command: &mut Command, input: &[u8]) -> Result<String> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", crate::common::describe(command)))?;
    // Small inputs: the pipe takes them whole before the child reads.
    child.stdin.take().context("stdin")?.write_all(input)?;
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .context("stdout")?
        .read_to_string(&mut stdout)?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "{} failed ({}): {}",
            crate::common::describe(command),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(stdout)
}
