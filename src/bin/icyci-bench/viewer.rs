//! `icyci-bench viewer [--commits N] [--runs R]` builds a results repository
//! with N noted commits in two namespaces (git fast-import, in a temp dir)
//! and times `icyci results -n 50`, a full `icyci site` build, and an
//! incremental `icyci site` refresh after one new commit, each against a
//! small repository of the same shape, so that the ratio shows whether the
//! cost grows with the history.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::common::{fast_import, git, ms, ratio, sibling_binary};

const NAMESPACES: [&str; 2] = ["icyci-aarch64", "icyci-x86-64"];

struct Options {
    commits: usize,
    runs: usize,
}

fn parse_options(args: &[String]) -> Result<Options> {
    let mut options = Options {
        commits: 20_000,
        runs: 5,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || -> Result<usize> {
            let text = args.next().context("missing value")?;
            text.parse()
                .with_context(|| format!("not a number: {text}"))
        };
        match arg.as_str() {
            "--commits" => options.commits = value()?,
            "--runs" => options.runs = value()?,
            "--quick" => {
                options = Options {
                    commits: 2_000,
                    runs: 1,
                }
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(options)
}

pub fn viewer(args: &[String]) -> Result<()> {
    let options = parse_options(args)?;
    let icyci = sibling_binary("icyci")?;
    let dir = tempfile::Builder::new().prefix("icyci-bench").tempdir()?;
    let small_count = 500.min(options.commits);

    println!("icyci-bench viewer: {} runs each, medians", options.runs);
    let mut rows = Vec::new();
    for count in [small_count, options.commits] {
        let repo = dir.path().join(format!("results-{count}.git"));
        let started = Instant::now();
        build_results_repo(&repo, count)?;
        println!(
            "  built {count} noted commits in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        rows.push((count, measure(&icyci, &repo, dir.path(), options.runs)?));
    }

    println!(
        "\n  {:>8}  {:>14}  {:>14}  {:>16}",
        "commits", "results -n 50", "site (full)", "site (1 new)"
    );
    for (count, m) in &rows {
        println!(
            "  {count:>8}  {:>12.1}ms  {:>12.1}ms  {:>14.1}ms",
            ms(m.results),
            ms(m.site_full),
            ms(m.site_incremental)
        );
    }
    let (small, large) = (&rows[0].1, &rows[1].1);
    println!(
        "\n  ratio {}/{} commits: results {:.2}x, full site {:.2}x, incremental site {:.2}x",
        rows[1].0,
        rows[0].0,
        ratio(large.results, small.results),
        ratio(large.site_full, small.site_full),
        ratio(large.site_incremental, small.site_incremental)
    );
    Ok(())
}

struct Measurement {
    results: Duration,
    site_full: Duration,
    site_incremental: Duration,
}

fn measure(icyci: &Path, repo: &Path, scratch: &Path, runs: usize) -> Result<Measurement> {
    let repo_arg = repo.to_string_lossy().into_owned();
    let results = median(runs, || {
        time(icyci, &["results", "--repo", &repo_arg, "-n", "50"])
    })?;
    let mut full = Vec::new();
    let mut incremental = Vec::new();
    for run in 0..runs {
        let out = scratch.join(format!("site-{}-{run}", repo.display().to_string().len()));
        let _ = std::fs::remove_dir_all(&out);
        let out_arg = out.to_string_lossy().into_owned();
        let site = ["site", "--repo", &repo_arg, "--out", &out_arg, "-n", "50"];
        full.push(time(icyci, &site)?);
        add_noted_commit(repo, run)?;
        incremental.push(time(icyci, &site)?);
    }
    Ok(Measurement {
        results,
        site_full: median_of(full),
        site_incremental: median_of(incremental),
    })
}

fn time(program: &Path, args: &[&str]) -> Result<Duration> {
    let started = Instant::now();
    let output = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        bail!(
            "{} {} failed: {}",
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(elapsed)
}

fn median(runs: usize, mut one: impl FnMut() -> Result<Duration>) -> Result<Duration> {
    let samples = (0..runs.max(1))
        .map(|_| one())
        .collect::<Result<Vec<_>>>()?;
    Ok(median_of(samples))
}

fn median_of(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// A bare repository with `count` commits on `main`, each locked and
/// passed (every tenth failed) in both namespaces, with an stdout note.
fn build_results_repo(repo: &Path, count: usize) -> Result<()> {
    git(
        Path::new("."),
        &[
            "init",
            "-q",
            "--bare",
            "-b",
            "main",
            &repo.to_string_lossy(),
        ],
    )?;
    let mut stream = Vec::new();
    let when = 1_700_000_000u64;
    for i in 1..=count {
        writeln!(stream, "commit refs/heads/main\nmark :{i}")?;
        writeln!(
            stream,
            "committer Bench <bench@example.org> {} +0000",
            when + i as u64
        )?;
        let message = format!("change number {i}\n");
        write!(stream, "data {}\n{message}", message.len())?;
        writeln!(
            stream,
            "M 644 inline file.txt\ndata {}\n{i}\n",
            i.to_string().len() + 1
        )?;
    }
    for ns in NAMESPACES {
        for (note, text) in [
            (
                "locked",
                "2024-01-01: this commit is being tested by icyCI\n",
            ),
            ("output.stdout", "build ok\n"),
        ] {
            write_notes(
                &mut stream,
                &format!("refs/notes/{ns}.{note}"),
                count,
                |_| Some(text.to_owned()),
            )?;
        }
        write_notes(
            &mut stream,
            &format!("refs/notes/{ns}.result.passed"),
            count,
            |i| (i % 10 != 0).then(|| "test.sh completed successfully\n".to_owned()),
        )?;
        write_notes(
            &mut stream,
            &format!("refs/notes/{ns}.result.failed"),
            count,
            |i| (i % 10 == 0).then(|| "test.sh failed: exit status 1\n".to_owned()),
        )?;
    }
    fast_import(repo, &stream)
}

fn write_notes(
    stream: &mut Vec<u8>,
    notes_ref: &str,
    count: usize,
    text: impl Fn(usize) -> Option<String>,
) -> Result<()> {
    writeln!(stream, "commit {notes_ref}")?;
    writeln!(
        stream,
        "committer Bench <bench@example.org> 1700000000 +0000\ndata 6\nnotes\n"
    )?;
    for i in 1..=count {
        if let Some(text) = text(i) {
            write!(stream, "N inline :{i}\ndata {}\n{text}\n", text.len())?;
        }
    }
    Ok(())
}

/// One more commit on `main`, noted in both namespaces, as the daemon would.
fn add_noted_commit(repo: &Path, run: usize) -> Result<()> {
    let tip = git(repo, &["rev-parse", "main"])?;
    let mut stream = Vec::new();
    let message = format!("new commit {run}\n");
    writeln!(stream, "commit refs/heads/main\nmark :1")?;
    writeln!(
        stream,
        "committer Bench <bench@example.org> 1800000000 +0000"
    )?;
    write!(stream, "data {}\n{message}from {tip}\n", message.len())?;
    writeln!(stream, "M 644 inline new-{run}.txt\ndata 2\nx\n")?;
    for ns in NAMESPACES {
        for note in ["locked", "result.passed", "output.stdout"] {
            let notes_ref = format!("refs/notes/{ns}.{note}");
            let parent = git(repo, &["rev-parse", &notes_ref])?;
            writeln!(stream, "commit {notes_ref}")?;
            writeln!(
                stream,
                "committer Bench <bench@example.org> 1800000000 +0000\ndata 4\nadd\nfrom {parent}"
            )?;
            write!(stream, "N inline :1\ndata 3\nok\n\n")?;
        }
    }
    fast_import(repo, &stream)
}
