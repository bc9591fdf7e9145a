//! `icyci-bench cycle`: the daemon's cost per commit and while idle, beside
//! the plain-git floor measured in the same run on the same kind of repositories,
//! with the targets of issue 5 next to each figure.
//!
//! Everything lives in one temp dir ([`world`]): its own HOME, GNUPGHOME,
//! XDG_STATE_HOME and TMPDIR, a gpg ed25519 key, bare repositories reached by
//! `file://` URLs. Parts, in the order they run:
//!
//! - `floor`: the cycle's work done by plain git commands ([`floor`]), a
//!   round after each of the latency cycles (the daemon paused meanwhile);
//! - `latency`: push of a signed commit -> result note visible, N cycles,
//!   daemon at `-poll-interval 10ms`; CPU per cycle from /proc;
//! - `count`: git processes per cycle, through a logging `git` wrapper first
//!   on a second daemon's PATH (so the wrapper costs no latency above);
//! - `rss`: peak RSS idle, and after a cycle printing 5 MB;
//! - `idle`: git processes and CPU per idle minute at `-poll-interval 1s`,
//!   beside `git fetch` and `git ls-remote` polling by the benchmark;
//! - `contention`: 4 instances in one namespace;
//! - `scale`: a large source and a results repository full of notes.

mod daemon;
mod floor;
mod report;
mod world;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::common::{catch_interrupts, check_interrupted, git, sibling_binary};
use daemon::{
    calls_between, file_len, log_lines, own_children_cpu, stop_all, Daemon, ResultWatch, Spec, TICK,
};
use world::{Pair, World, NS};

/// Poll interval of the daemon whose latency and CPU are measured.
const LATENCY_POLL: &str = "10ms";
/// Poll interval of the daemon whose git calls are counted: long enough
/// that a push lands while it sleeps, so each cycle's calls are its own.
const COUNT_POLL: &str = "400ms";
/// No git call for this long: the counted daemon sleeps between polls.
const COUNT_QUIET: Duration = Duration::from_millis(60);
const IDLE_POLL: &str = "1s";
const CONTENTION_POLL: &str = "100ms";
const CONTENTION_INSTANCES: usize = 4;
const RSS_POLL: &str = "100ms";
/// What the script of the memory test prints.
const BIG_OUTPUT: usize = 5 * 1024 * 1024;
/// Commits of history of the small repositories.
const SMALL_HISTORY: usize = 200;
const CYCLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between a daemon going back to poll and the next push, so that
/// each commit finds it polling steadily, as a commit arriving at any time
/// would.
const BETWEEN_CYCLES: Duration = Duration::from_millis(50);
/// How long after its result a daemon may take to log that it is idle.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    Floor,
    Latency,
    Count,
    Rss,
    Idle,
    Contention,
    Scale,
}

impl Part {
    const ALL: [Part; 7] = [
        Part::Floor,
        Part::Latency,
        Part::Count,
        Part::Rss,
        Part::Idle,
        Part::Contention,
        Part::Scale,
    ];

    fn name(self) -> &'static str {
        match self {
            Part::Floor => "floor",
            Part::Latency => "latency",
            Part::Count => "count",
            Part::Rss => "rss",
            Part::Idle => "idle",
            Part::Contention => "contention",
            Part::Scale => "scale",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    cycles: usize,
    count_cycles: usize,
    idle: Duration,
    rss_idle: Duration,
    contention_commits: usize,
    scale_commits: usize,
    scale_notes: usize,
    scale_cycles: usize,
    quick: bool,
    /// Leave the temp dir behind, for a look at the logs.
    keep: bool,
    parts: BTreeSet<Part>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let quick = args.iter().any(|arg| arg == "--quick");
        let mut options = if quick {
            Options {
                cycles: 3,
                count_cycles: 3,
                idle: Duration::from_secs(3),
                rss_idle: Duration::from_secs(1),
                contention_commits: 2,
                scale_commits: 5_000,
                scale_notes: 2_000,
                scale_cycles: 2,
                quick,
                keep: false,
                parts: Part::ALL.into_iter().collect(),
            }
        } else {
            Options {
                cycles: 20,
                count_cycles: 10,
                idle: Duration::from_secs(60),
                rss_idle: Duration::from_secs(3),
                contention_commits: 10,
                scale_commits: 50_000,
                scale_notes: 20_000,
                scale_cycles: 5,
                quick,
                keep: false,
                parts: Part::ALL.into_iter().collect(),
            }
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| -> Result<&String> {
                args.next().with_context(|| format!("{name} needs a value"))
            };
            match arg.as_str() {
                "--quick" => {}
                "--keep" => options.keep = true,
                "--cycles" => {
                    let text = value("--cycles")?;
                    options.cycles = number(text)?.max(1);
                    options.count_cycles = options.cycles.min(10);
                }
                "--idle-seconds" => {
                    let text = value("--idle-seconds")?;
                    options.idle = Duration::from_secs(number(text)?.max(1) as u64);
                }
                "--only" => {
                    let text = value("--only")?;
                    let mut parts = BTreeSet::new();
                    for name in text.split(',') {
                        let part = Part::ALL
                            .into_iter()
                            .find(|part| part.name() == name.trim())
                            .with_context(|| {
                                format!(
                                    "unknown part {name:?} (parts: {})",
                                    Part::ALL.map(Part::name).join(", ")
                                )
                            })?;
                        parts.insert(part);
                    }
                    options.parts = parts;
                }
                other => bail!("unknown argument {other}"),
            }
        }
        Ok(options)
    }

    fn runs(&self, part: Part) -> bool {
        self.parts.contains(&part)
    }
}

fn number(text: &str) -> Result<usize> {
    text.parse()
        .with_context(|| format!("not a number: {text}"))
}

/// What every part needs.
struct Ctx<'a> {
    world: &'a World,
    icyci: &'a Path,
    options: &'a Options,
    /// The trivial test script: `true`.
    script: PathBuf,
}

impl Ctx<'_> {
    fn daemon(
        &self,
        name: &str,
        pair: &Pair,
        poll_interval: &str,
        namespace: &str,
        script: &Path,
        wrapper: Option<&world::Wrapper>,
    ) -> Result<Daemon> {
        Daemon::spawn(Spec {
            name: name.to_owned(),
            icyci: self.icyci,
            source_url: pair.source_url(),
            results_url: pair.results_url(),
            script,
            poll_interval,
            namespace,
            state_dir: self.world.path(&format!("state/{name}")),
            wrapper,
        })
    }
}

pub fn cycle(args: &[String]) -> Result<()> {
    let options = Options::parse(args)?;
    let icyci = sibling_binary("icyci")?;
    catch_interrupts()?;
    let started = Instant::now();
    let world = World::create(options.keep)?;
    let ctx = Ctx {
        world: &world,
        icyci: &icyci,
        options: &options,
        script: world.script("true.sh", "true\n")?,
    };
    let mut results = report::Results::default();
    if options.runs(Part::Count) || options.runs(Part::Idle) {
        let calls = if options.quick { 40 } else { 100 };
        results.wrapper_overhead = world.wrapper_overhead(calls)?;
    }
    let needs_small = options.parts.iter().any(|part| *part != Part::Scale);
    if needs_small {
        progress(&format!(
            "building the small repositories ({SMALL_HISTORY} commits)"
        ));
        let mut small = world.pair("small", SMALL_HISTORY, 0)?;
        let mut floor = if options.runs(Part::Floor) {
            progress(&format!(
                "floor: building its repositories; {} cycles of each variant{}",
                options.cycles,
                if options.runs(Part::Latency) {
                    ", between the daemon's cycles (the daemon paused)"
                } else {
                    ""
                }
            ));
            Some(floor::FloorBench::new(
                &world,
                &ctx.script,
                SMALL_HISTORY,
                options.cycles,
            )?)
        } else {
            None
        };
        if options.runs(Part::Latency) {
            results.latency = Some(latency(&ctx, &mut small, floor.as_mut())?);
        } else if let Some(floor) = floor.as_mut() {
            for _ in 0..options.cycles {
                floor.round()?;
            }
        }
        results.floor = floor.map(floor::FloorBench::finish);
        if options.runs(Part::Count) {
            results.count = Some(count(&ctx, &mut small)?);
        }
        if options.runs(Part::Rss) {
            results.rss = Some(rss(&ctx, &mut small)?);
        }
        if options.runs(Part::Idle) {
            results.idle = Some(idle(&ctx, &small)?);
        }
        if options.runs(Part::Contention) {
            results.contention = Some(contention(&ctx, &mut small)?);
        }
    }
    if options.runs(Part::Scale) {
        results.scale = Some(scale(&ctx)?);
    }
    // The benchmark's own share of the 2 CPUs (its waiting loops).
    let own = daemon::proc_times("/proc/self/stat").map_or(Duration::ZERO, |times| times.own);
    progress(&format!(
        "done in {:.0?}; the benchmark itself used {:.2} s of CPU",
        started.elapsed(),
        own.as_secs_f64()
    ));
    report::print(
        &report::Setup {
            icyci: &icyci,
            git_version: git(&world.root, &["--version"]).unwrap_or_default(),
            options: &options,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        },
        &results,
    );
    Ok(())
}

fn progress(text: &str) {
    eprintln!("  {text}");
}

/// Polls `probe` every [`TICK`] until it answers, `timeout` passes (then
/// `None`), a daemon exits or the benchmark is interrupted (errors).
fn wait_until<T>(
    timeout: Duration,
    daemons: &mut [&mut Daemon],
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<Option<T>> {
    let started = Instant::now();
    let mut checked = started;
    loop {
        if let Some(found) = probe()? {
            return Ok(Some(found));
        }
        let now = Instant::now();
        if now.duration_since(checked) > Duration::from_millis(50) {
            checked = now;
            check_interrupted()?;
            for daemon in daemons.iter_mut() {
                daemon.check_alive()?;
            }
        }
        if now.duration_since(started) > timeout {
            return Ok(None);
        }
        std::thread::sleep(TICK);
    }
}

/// Waits until the daemon has handled the source's current tip: its result
/// exists and the daemon went back to polling (or, should its log no longer
/// say so, `limit` passed: a warning).
fn settle(
    daemon: &mut Daemon,
    pair: &Pair,
    watch: &mut ResultWatch,
    limit: Duration,
) -> Result<()> {
    let tip = pair.tip()?;
    if !watch.has("result.passed", &tip) {
        watch.wait(&tip, limit, &mut [&mut *daemon])?;
    }
    let log = daemon.log();
    let idle = wait_until(limit, &mut [&mut *daemon], || {
        Ok(log.find(0, |line| log_lines::back_to_poll(&line.text)))
    })?;
    if idle.is_none() {
        warn_no_idle_line(daemon, &mut false);
    }
    Ok(())
}

/// Warns once per daemon when it does not log going back to poll.
fn warn_no_idle_line(daemon: &Daemon, warned: &mut bool) {
    if !*warned {
        *warned = true;
        progress(&format!(
            "warning: daemon {} did not log a transition back to poll after a result; going on \
             without (figures that need it are unknown or count to the end of its activity)",
            daemon.name
        ));
    }
}

/// Pushes `commit`; the time until its result note is visible. Then waits
/// (untimed) until the daemon is back to polling.
fn one_cycle(
    daemon: &mut Daemon,
    pair: &Pair,
    watch: &mut ResultWatch,
    commit: &str,
    warned: &mut bool,
) -> Result<Duration> {
    let log = daemon.log();
    std::thread::sleep(BETWEEN_CYCLES);
    let from = log.len();
    pair.push(commit)?;
    let pushed = Instant::now();
    let seen = watch.wait(commit, CYCLE_TIMEOUT, &mut [&mut *daemon])?;
    let done = wait_until(IDLE_TIMEOUT, &mut [&mut *daemon], || {
        Ok(log.done_with(from, commit))
    })?;
    if done.is_none() {
        warn_no_idle_line(daemon, warned);
    }
    Ok(seen.duration_since(pushed))
}

pub struct Latency {
    pub samples: Vec<Duration>,
    pub cpu: Duration,
}

/// With `floor`, a round of the floor follows each cycle, the daemon
/// paused meanwhile: both are measured under the same load.
fn latency(
    ctx: &Ctx,
    pair: &mut Pair,
    mut floor: Option<&mut floor::FloorBench>,
) -> Result<Latency> {
    let cycles = ctx.options.cycles;
    progress(&format!(
        "latency: {cycles} cycles, daemon at -poll-interval {LATENCY_POLL}"
    ));
    let commits = pair.prepare(cycles)?;
    let mut daemon = ctx.daemon("latency", pair, LATENCY_POLL, NS, &ctx.script, None)?;
    let mut watch = ResultWatch::new(&pair.results, NS);
    settle(&mut daemon, pair, &mut watch, CYCLE_TIMEOUT)?;
    let cpu_before = daemon.cpu()?;
    let mut samples = Vec::new();
    let mut warned = false;
    for commit in &commits {
        samples.push(one_cycle(
            &mut daemon,
            pair,
            &mut watch,
            commit,
            &mut warned,
        )?);
        if let Some(floor) = floor.as_deref_mut() {
            daemon.pause()?;
            let round = floor.round();
            daemon.resume()?;
            round?;
        }
    }
    // A paused daemon takes no CPU: this is its CPU while running.
    let cpu = daemon.cpu()?.saturating_sub(cpu_before) / cycles as u32;
    daemon.stop();
    Ok(Latency { samples, cpu })
}

/// Git calls of one counted cycle.
pub struct CountedCycle {
    /// From the poll that noticed the commit to the end of its cleanup.
    pub cycle: Vec<Vec<String>>,
    /// Polls after the cleanup, until the daemon sleeps; `None` when the
    /// daemon's log did not show where the cycle ended.
    pub after: Option<Vec<Vec<String>>>,
    /// A poll ran while the commit was being pushed: the cycle's calls may
    /// hold an idle poll too.
    pub disturbed: bool,
    /// The daemon's CPU (with its reaped children) over the same calls.
    pub cpu: Duration,
}

fn count(ctx: &Ctx, pair: &mut Pair) -> Result<Vec<CountedCycle>> {
    let cycles = ctx.options.count_cycles;
    progress(&format!(
        "count: {cycles} cycles through a git wrapper, daemon at -poll-interval {COUNT_POLL}"
    ));
    let commits = pair.prepare(cycles)?;
    let wrapper = ctx.world.wrapper("count")?;
    let mut daemon = ctx.daemon("count", pair, COUNT_POLL, NS, &ctx.script, Some(&wrapper))?;
    let mut watch = ResultWatch::new(&pair.results, NS);
    settle(&mut daemon, pair, &mut watch, CYCLE_TIMEOUT)?;
    let log = daemon.log();
    let mut counted = Vec::new();
    let mut warned = false;
    for commit in &commits {
        let start = quiet(&wrapper.log, &mut daemon)?;
        // Asleep: every git process it started has been reaped.
        let cpu_before = daemon.cpu()?;
        let from = log.len();
        pair.push(commit)?;
        let after_push = file_len(&wrapper.log);
        watch.wait(commit, CYCLE_TIMEOUT, &mut [&mut daemon])?;
        let done = wait_until(IDLE_TIMEOUT, &mut [&mut daemon], || {
            Ok(log.done_with(from, commit))
        })?;
        // Read at once, before the next poll's first git process is reaped.
        let cpu_done = daemon.cpu()?;
        let end = quiet(&wrapper.log, &mut daemon)?;
        let cpu_end = daemon.cpu()?;
        let cpu = if done.is_some() { cpu_done } else { cpu_end };
        let (cycle, after) = match done {
            Some(line) => (
                calls_between(&wrapper.log, start, line.calls)?,
                Some(calls_between(&wrapper.log, line.calls, end)?),
            ),
            None => {
                warn_no_idle_line(&daemon, &mut warned);
                (calls_between(&wrapper.log, start, end)?, None)
            }
        };
        counted.push(CountedCycle {
            cycle,
            after,
            disturbed: after_push > start,
            cpu: cpu.saturating_sub(cpu_before),
        });
    }
    daemon.stop();
    Ok(counted)
}

/// Waits until the wrapper's log has not grown for [`COUNT_QUIET`]; its
/// size then.
fn quiet(calls_log: &Path, daemon: &mut Daemon) -> Result<u64> {
    let mut size = file_len(calls_log);
    let mut since = Instant::now();
    let found = wait_until(Duration::from_secs(30), &mut [daemon], || {
        let now = file_len(calls_log);
        if now != size {
            size = now;
            since = Instant::now();
        }
        Ok((since.elapsed() >= COUNT_QUIET).then_some(size))
    })?;
    found.context("the counted daemon never stopped starting git processes")
}

pub struct Rss {
    pub idle_kb: u64,
    pub big_kb: u64,
}

fn rss(ctx: &Ctx, pair: &mut Pair) -> Result<Rss> {
    progress(&format!(
        "rss: idle for {:.0?} at -poll-interval {RSS_POLL}, then a cycle printing {} MB",
        ctx.options.rss_idle,
        BIG_OUTPUT >> 20
    ));
    let idle_kb = {
        let mut daemon = ctx.daemon("rss-idle", pair, RSS_POLL, NS, &ctx.script, None)?;
        let mut watch = ResultWatch::new(&pair.results, NS);
        settle(&mut daemon, pair, &mut watch, CYCLE_TIMEOUT)?;
        let until = Instant::now() + ctx.options.rss_idle;
        wait_until(ctx.options.rss_idle * 2, &mut [&mut daemon], || {
            Ok((Instant::now() >= until).then_some(()))
        })?;
        daemon.peak_rss_kb()?
    };
    let big = ctx.world.path("big-output.txt");
    let line = "icyci-bench output line, 64 bytes long ........................\n";
    std::fs::write(&big, line.repeat(BIG_OUTPUT / line.len()))?;
    let script = ctx
        .world
        .script("big.sh", &format!("exec cat '{}'\n", big.display()))?;
    let namespace = format!("{NS}-rss");
    let mut daemon = ctx.daemon("rss-big", pair, RSS_POLL, &namespace, &script, None)?;
    let mut watch = ResultWatch::new(&pair.results, &namespace);
    settle(&mut daemon, pair, &mut watch, CYCLE_TIMEOUT)?;
    let big_kb = daemon.peak_rss_kb()?;
    Ok(Rss { idle_kb, big_kb })
}

pub struct Idle {
    pub seconds: f64,
    pub calls: Vec<Vec<String>>,
    /// Bursts of git calls at least 300 ms apart: the daemon's polls.
    pub polls: usize,
    pub cpu: Duration,
    pub fetch_cpu: Duration,
    /// The `rev-parse` after each fetch, as icyCI polls.
    pub rev_parse_cpu: Duration,
    pub fetch_polls: usize,
    pub ls_remote_cpu: Duration,
    pub ls_remote_polls: usize,
}

fn idle(ctx: &Ctx, pair: &Pair) -> Result<Idle> {
    let window = ctx.options.idle;
    progress(&format!(
        "idle: {window:.0?} of icyci at -poll-interval {IDLE_POLL} beside fetch polling, \
         then {window:.0?} of ls-remote polling"
    ));
    let clone = ctx.world.path("idle-clone");
    git(
        &ctx.world.root,
        &[
            "clone",
            "-q",
            "--no-checkout",
            &pair.source_url(),
            &clone.to_string_lossy(),
        ],
    )?;
    let wrapper = ctx.world.wrapper("idle")?;
    let mut daemon = ctx.daemon("idle", pair, IDLE_POLL, NS, &ctx.script, Some(&wrapper))?;
    let mut watch = ResultWatch::new(&pair.results, NS);
    settle(&mut daemon, pair, &mut watch, CYCLE_TIMEOUT)?;
    // Let the poll that follows the settling cycle pass.
    let calm = Instant::now() + Duration::from_millis(500);
    wait_until(Duration::from_secs(2), &mut [&mut daemon], || {
        Ok((Instant::now() >= calm).then_some(()))
    })?;

    let cpu_before = daemon.cpu()?;
    let calls_before = file_len(&wrapper.log);
    let mut polls = 0;
    let mut last_growth: Option<Instant> = None;
    let mut size = calls_before;
    // As icyCI polls: a fetch, then a rev-parse of the fetched branch.
    let (fetch_cpus, fetch_polls, seconds) = poll_with_git(
        &clone,
        &[
            &["fetch", "-q", "origin"],
            &["rev-parse", "--verify", "refs/remotes/origin/main^{commit}"],
        ],
        window,
        &mut daemon,
        |now| {
            let grown = file_len(&wrapper.log);
            if grown != size {
                size = grown;
                if last_growth
                    .is_none_or(|last| now.duration_since(last) > Duration::from_millis(300))
                {
                    polls += 1;
                }
                last_growth = Some(now);
            }
        },
    )?;
    let cpu = daemon.cpu()?.saturating_sub(cpu_before);
    let calls = calls_between(&wrapper.log, calls_before, size)?;
    let (ls_remote_cpus, ls_remote_polls, _) = poll_with_git(
        &clone,
        &[&["ls-remote", "origin", "refs/heads/main"]],
        window,
        &mut daemon,
        |_| {},
    )?;
    daemon.stop();
    Ok(Idle {
        seconds,
        calls,
        polls,
        cpu,
        fetch_cpu: fetch_cpus[0],
        rev_parse_cpu: fetch_cpus[1],
        fetch_polls,
        ls_remote_cpu: ls_remote_cpus[0],
        ls_remote_polls,
    })
}

/// Runs the git `commands` in `clone`, one after another, once a second for
/// `window`, calling `each` every 10 ms; the CPU of each command's
/// processes, the number of polls and the window's length in seconds.
fn poll_with_git(
    clone: &Path,
    commands: &[&[&str]],
    window: Duration,
    daemon: &mut Daemon,
    mut each: impl FnMut(Instant),
) -> Result<(Vec<Duration>, usize, f64)> {
    let mut cpus = vec![Duration::ZERO; commands.len()];
    let started = Instant::now();
    let mut next = started;
    let mut polls = 0;
    loop {
        let now = Instant::now();
        if now.duration_since(started) >= window {
            break;
        }
        if now >= next {
            for (args, cpu) in commands.iter().zip(&mut cpus) {
                let before = own_children_cpu()?;
                git(clone, args)?;
                *cpu += own_children_cpu()?.saturating_sub(before);
            }
            polls += 1;
            next += Duration::from_secs(1);
        }
        each(Instant::now());
        check_interrupted()?;
        daemon.check_alive()?;
        std::thread::sleep(Duration::from_millis(10));
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok((cpus, polls, seconds))
}

pub struct Contention {
    pub commits: usize,
    /// Commits (the pushed ones and the tip the instances started on) and
    /// how often each was tested.
    pub tested: Vec<(String, usize)>,
    /// Lines of the tested file naming no commit of the run.
    pub strays: usize,
    pub settle: Vec<Duration>,
    /// Instances whose log never showed them idle again after a commit.
    pub unseen: usize,
}

fn contention(ctx: &Ctx, pair: &mut Pair) -> Result<Contention> {
    let count = ctx.options.contention_commits;
    progress(&format!(
        "contention: {CONTENTION_INSTANCES} instances in one namespace at -poll-interval \
         {CONTENTION_POLL}, {count} commits"
    ));
    let commits = pair.prepare(count)?;
    let tested_file = ctx.world.path("contention-tested.txt");
    std::fs::write(&tested_file, b"")?;
    let script = ctx.world.script(
        "contention.sh",
        &format!("git rev-parse HEAD >> '{}'\n", tested_file.display()),
    )?;
    let namespace = format!("{NS}-contention");
    let mut daemons = Vec::new();
    for index in 0..CONTENTION_INSTANCES {
        let name = format!("contention-{index}");
        daemons.push(ctx.daemon(&name, pair, CONTENTION_POLL, &namespace, &script, None)?);
    }
    let outcome = contend(pair, &mut daemons, &namespace, &commits);
    stop_all(&mut daemons);
    let (first, settle, unseen) = outcome?;

    let listed = std::fs::read_to_string(&tested_file)?;
    let mut times: BTreeMap<&str, usize> = BTreeMap::new();
    for line in listed.lines() {
        *times.entry(line.trim()).or_insert(0) += 1;
    }
    let mut tested = Vec::new();
    for commit in std::iter::once(&first).chain(&commits) {
        tested.push((commit.clone(), times.remove(commit.as_str()).unwrap_or(0)));
    }
    Ok(Contention {
        commits: count,
        tested,
        strays: times.values().sum(),
        settle,
        unseen,
    })
}

/// The tip the instances started on, the settle time of each commit, and
/// how often an instance's log did not show it idle again.
fn contend(
    pair: &Pair,
    daemons: &mut [Daemon],
    namespace: &str,
    commits: &[String],
) -> Result<(String, Vec<Duration>, usize)> {
    let first = pair.tip()?;
    let mut watch = ResultWatch::new(&pair.results, namespace);
    let logs: Vec<_> = daemons.iter().map(Daemon::log).collect();
    let mut refs: Vec<&mut Daemon> = daemons.iter_mut().collect();
    watch.wait(&first, CYCLE_TIMEOUT, &mut refs)?;
    let all_idle = wait_until(CYCLE_TIMEOUT, &mut refs, || {
        Ok(logs
            .iter()
            .all(|log| {
                log.find(0, |line| log_lines::back_to_poll(&line.text))
                    .is_some()
            })
            .then_some(()))
    })?;
    if all_idle.is_none() {
        progress("warning: not every instance logged going back to poll after the first commit");
    }
    let mut settle = Vec::new();
    let mut unseen = 0;
    for commit in commits {
        // All quiet for 300 ms: nobody is still handling the last commit.
        quiet_logs(&logs, &mut refs)?;
        let from: Vec<usize> = logs.iter().map(|log| log.len()).collect();
        pair.push(commit)?;
        let pushed = Instant::now();
        watch.wait(commit, CYCLE_TIMEOUT, &mut refs)?;
        wait_until(IDLE_TIMEOUT, &mut refs, || {
            Ok(logs
                .iter()
                .zip(&from)
                .all(|(log, &from)| log.done_with(from, commit).is_some())
                .then_some(()))
        })?;
        quiet_logs(&logs, &mut refs)?;
        let mut last = None;
        for (log, &from) in logs.iter().zip(&from) {
            match log.last_back_to_poll(from) {
                Some(line) => last = last.max(Some(line.at)),
                None => unseen += 1,
            }
        }
        if let Some(last) = last {
            settle.push(last.saturating_duration_since(pushed));
        }
    }
    Ok((first, settle, unseen))
}

/// Waits until no daemon has logged anything for 300 ms (at most 5 s).
fn quiet_logs(logs: &[std::sync::Arc<daemon::Log>], daemons: &mut [&mut Daemon]) -> Result<()> {
    let quiet = Duration::from_millis(300);
    wait_until(Duration::from_secs(5), daemons, || {
        let last = logs.iter().filter_map(|log| log.last_at()).max();
        Ok(last
            .is_none_or(|last| last.elapsed() >= quiet)
            .then_some(()))
    })?;
    Ok(())
}

pub struct Scale {
    pub commits: usize,
    pub notes: usize,
    pub build: Duration,
    pub first_result: Duration,
    pub samples: Vec<Duration>,
    /// The plain-git floor on the same repositories.
    pub floor: floor::Floor,
}

fn scale(ctx: &Ctx) -> Result<Scale> {
    let options = ctx.options;
    progress(&format!(
        "scale: building a source of {} commits and results with {} noted commits",
        options.scale_commits, options.scale_notes
    ));
    let started = Instant::now();
    let mut pair = ctx
        .world
        .pair("scale", options.scale_commits, options.scale_notes)?;
    let commits = pair.prepare(options.scale_cycles)?;
    let build = started.elapsed();
    progress(&format!(
        "scale: built in {build:.1?}; first result, then {} cycles at -poll-interval {LATENCY_POLL}",
        options.scale_cycles
    ));
    let tip = pair.tip()?;
    let mut watch = ResultWatch::new(&pair.results, NS);
    let spawned = Instant::now();
    let mut daemon = ctx.daemon("scale", &pair, LATENCY_POLL, NS, &ctx.script, None)?;
    let seen = watch.wait(&tip, Duration::from_secs(600), &mut [&mut daemon])?;
    let first_result = seen.duration_since(spawned);
    settle(&mut daemon, &pair, &mut watch, CYCLE_TIMEOUT)?;
    let mut samples = Vec::new();
    let mut warned = false;
    for commit in &commits {
        samples.push(one_cycle(
            &mut daemon,
            &pair,
            &mut watch,
            commit,
            &mut warned,
        )?);
    }
    daemon.stop();
    // The same cycle by plain git on the same repositories: what git
    // itself costs at this size (the results' side checks whole notes
    // trees on every push).
    progress("scale: the plain-git floor on the same repositories");
    let mut floor = floor::FloorBench::on_pair(
        ctx.world,
        &ctx.script,
        pair,
        "scale-floor",
        NS,
        options.scale_cycles,
    )?;
    for _ in 0..options.scale_cycles {
        floor.round()?;
    }
    Ok(Scale {
        commits: options.scale_commits,
        notes: options.scale_notes,
        build,
        first_result,
        samples,
        floor: floor.finish(),
    })
}
