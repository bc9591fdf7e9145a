//! Property tests for the code that reads untrusted or hand-written text:
//! the daemon's Go-style flags and durations, branch and note names, and the
//! masking of credentials in logged command lines.
//!
//! Each property runs proptest's default 256 cases (the ones that spawn git,
//! fewer), so the whole file takes a few seconds. `PROPTEST_CASES=10000
//! cargo test --test props` searches longer; a failing case is shrunk and
//! recorded in `tests/props.proptest-regressions`, which is replayed first on
//! every later run.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use icyci::cli::{parse_args, Invocation, UsageError};
use icyci::config::{mask_credentials, JobConfig, NotesNamespace};
use icyci::duration::{format_duration, parse_duration, DurationError};
use icyci::git::{is_valid_branch_name, is_valid_full_refname};
use icyci::notes_dir::refuse_note_name;
use icyci::state::State;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::FileFailurePersistence;

/// `default` cases, unless `PROPTEST_CASES` asks for another number.
fn cases(default: u32) -> ProptestConfig {
    let from_env = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok());
    ProptestConfig {
        cases: from_env.unwrap_or(default),
        // Beside this file; proptest's default looks for a lib.rs or main.rs.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

/// Text built from `fragments`: random strings of any characters hardly
/// ever hit the corners a parser has, a few chosen pieces glued together do.
fn glued(fragments: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(select(fragments), 0..=max).prop_map(|pieces| pieces.concat())
}

/// Any string, or one glued from `fragments`.
fn tricky(fragments: &'static [&'static str], max: usize) -> BoxedStrategy<String> {
    prop_oneof![any::<String>(), glued(fragments, max)].boxed()
}

// ---------------------------------------------------------------------------
// Flags

/// The daemon's flags, `h` included (an alias of `help`).
const FLAG_NAMES: &[&str] = &[
    "source-repo",
    "source-branch",
    "test-script",
    "results-repo",
    "push-source-to-results",
    "poll-interval",
    "notes-ns",
    "timeout",
    "disable-timeouts",
    "source-reference",
    "site-dir",
    "once",
    "v",
    "help",
    "h",
];

#[rustfmt::skip]
const VALUE_FRAGMENTS: &[&str] = &[
    "", "-", "--", "=", "true", "false", "0", "1", "T", "x", "/", ":", "await-command", "1h", "30m",
    "5", ".5", "ms", "µs", "-1s", "é", " ", "\t", "\u{0}", "\u{7f}",
];

/// One argument of an arbitrary command line: anything, or a spelling of a
/// known flag with or without a value.
fn any_argument() -> impl Strategy<Value = String> {
    let flag = (
        select(&["", "-", "--", "---"][..]),
        select(FLAG_NAMES),
        prop::option::of(tricky(VALUE_FRAGMENTS, 4)),
    )
        .prop_map(|(dashes, name, value)| match value {
            Some(value) => format!("{dashes}{name}={value}"),
            None => format!("{dashes}{name}"),
        });
    prop_oneof![
        any::<String>(),
        select(&["-", "--", "=", "-=", "--=", "-h", "-v", "-help=false"][..]).prop_map(Into::into),
        flag,
        tricky(VALUE_FRAGMENTS, 4),
    ]
}

/// A job's settings; `None` leaves a flag out so its default applies.
#[derive(Debug, Clone)]
struct Job {
    source: String,
    results: String,
    branch: Option<String>,
    test_script: Option<String>,
    push_source: Option<bool>,
    /// The flag's text and the duration it means.
    poll_interval: Option<(String, Duration)>,
    notes_ns: Option<String>,
    timeout: Option<Duration>,
    disable_timeouts: Option<bool>,
    source_reference: Option<String>,
    site_dir: Option<String>,
    once: Option<bool>,
}

/// A repository URL, script path and the like: anything non-empty, and
/// for URLs, not starting with `-`.
fn path_like(url: bool) -> impl Strategy<Value = String> {
    any::<String>().prop_filter("a usable value", move |text| {
        !text.is_empty() && (!url || !text.starts_with('-'))
    })
}

fn valid_branch() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_é][a-zA-Z0-9_é./@{}-]{0,15}"
        .prop_filter("a valid branch name", |name| is_valid_branch_name(name))
}

fn valid_namespace() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_é][a-zA-Z0-9_é./-]{0,12}".prop_filter("a valid namespace", |name| {
        NotesNamespace::new(name).is_ok()
    })
}

/// 1 ns to 100 days.
fn positive_duration() -> impl Strategy<Value = Duration> {
    (1u64..=100 * 86_400 * 1_000_000_000).prop_map(Duration::from_nanos)
}

/// A duration as Go prints it, or as whole seconds.
fn duration_flag() -> impl Strategy<Value = (String, Duration)> {
    prop_oneof![
        positive_duration().prop_map(|d| (format_duration(d), d)),
        (1u64..=100 * 86_400).prop_map(|s| (s.to_string(), Duration::from_secs(s))),
    ]
}

fn job() -> impl Strategy<Value = Job> {
    (
        (
            path_like(true),
            path_like(true),
            prop::option::of(valid_branch()),
        ),
        (
            prop::option::of(path_like(false)),
            any::<Option<bool>>(),
            prop::option::of(duration_flag()),
        ),
        (
            prop::option::of(valid_namespace()),
            prop::option::of(positive_duration()),
            any::<Option<bool>>(),
        ),
        (
            prop::option::of(path_like(false)),
            prop::option::of(path_like(false)),
            any::<Option<bool>>(),
        ),
    )
        .prop_map(|(a, b, c, d)| Job {
            source: a.0,
            results: a.1,
            branch: a.2,
            test_script: b.0,
            push_source: b.1,
            poll_interval: b.2,
            notes_ns: c.0,
            timeout: c.1,
            disable_timeouts: c.2,
            source_reference: d.0,
            site_dir: d.1,
            once: d.2,
        })
}

/// How one flag is written; drawn at random for each flag.
#[derive(Debug, Clone, Copy)]
struct Spelling(u8);

impl Spelling {
    fn dashes(self) -> &'static str {
        if self.0 & 1 == 0 {
            "-"
        } else {
            "--"
        }
    }

    /// `-name=value` rather than `-name value`.
    fn inline(self) -> bool {
        self.0 & 2 != 0
    }

    /// One of the spellings Go's `strconv.ParseBool` accepts.
    fn bool_literal(self, value: bool) -> &'static str {
        let index = usize::from(self.0 >> 2) % 6;
        if value {
            ["1", "t", "T", "true", "TRUE", "True"][index]
        } else {
            ["0", "f", "F", "false", "FALSE", "False"][index]
        }
    }

    fn value_flag(self, name: &str, value: &str) -> Vec<String> {
        let dashes = self.dashes();
        if self.inline() {
            vec![format!("{dashes}{name}={value}")]
        } else {
            vec![format!("{dashes}{name}"), value.to_owned()]
        }
    }

    /// `-name` or `-name=<literal>` for true; only the latter for false.
    fn bool_flag(self, name: &str, value: bool) -> Vec<String> {
        let dashes = self.dashes();
        if value && !self.inline() {
            vec![format!("{dashes}{name}")]
        } else {
            vec![format!("{dashes}{name}={}", self.bool_literal(value))]
        }
    }
}

/// The job as a command line: one group of arguments per flag given.
fn render(job: &Job, spellings: &[Spelling]) -> Vec<Vec<String>> {
    let mut spelling = spellings.iter().copied().cycle();
    let mut next = move || spelling.next().expect("a cycle never ends");
    let mut groups = vec![
        next().value_flag("source-repo", &job.source),
        next().value_flag("results-repo", &job.results),
    ];
    let values = [
        ("source-branch", job.branch.clone()),
        ("test-script", job.test_script.clone()),
        (
            "poll-interval",
            job.poll_interval.clone().map(|(text, _)| text),
        ),
        ("notes-ns", job.notes_ns.clone()),
        (
            "timeout",
            job.timeout
                .map(|d| format!("await-command:{}", format_duration(d))),
        ),
        ("source-reference", job.source_reference.clone()),
        ("site-dir", job.site_dir.clone()),
    ];
    for (name, value) in values {
        if let Some(value) = value {
            groups.push(next().value_flag(name, &value));
        }
    }
    let bools = [
        ("push-source-to-results", job.push_source),
        ("disable-timeouts", job.disable_timeouts),
        ("once", job.once),
    ];
    for (name, value) in bools {
        if let Some(value) = value {
            groups.push(next().bool_flag(name, value));
        }
    }
    groups
}

/// A job and its command line, each flag spelt one of its ways, in any order.
fn job_command_line() -> impl Strategy<Value = (Job, Vec<Vec<String>>)> {
    (
        job(),
        prop::collection::vec(any::<u8>().prop_map(Spelling), 12),
    )
        .prop_flat_map(|(job, spellings)| {
            let groups = render(&job, &spellings);
            (Just(job), Just(groups).prop_shuffle())
        })
}

fn expect_run(args: Vec<String>) -> Result<JobConfig, TestCaseError> {
    match parse_args(args) {
        Ok(Invocation::Run(config)) => Ok(*config),
        other => Err(TestCaseError::fail(format!(
            "expected a run, got {other:?}"
        ))),
    }
}

fn check_job(config: &JobConfig, job: &Job) -> Result<(), TestCaseError> {
    prop_assert_eq!(config.source.as_git_arg(), job.source.as_str());
    prop_assert_eq!(config.results.as_git_arg(), job.results.as_str());
    prop_assert_eq!(
        config.branch.as_str(),
        job.branch.as_deref().unwrap_or("main")
    );
    prop_assert_eq!(&config.test_script, &job.test_script);
    prop_assert_eq!(
        config.push_source_to_results,
        job.push_source != Some(false)
    );
    prop_assert_eq!(
        config.poll_interval,
        job.poll_interval
            .as_ref()
            .map_or(Duration::from_secs(60), |(_, d)| *d)
    );
    prop_assert_eq!(
        config.notes_ns.as_str(),
        job.notes_ns.as_deref().unwrap_or("icyci")
    );
    let disabled = job.disable_timeouts == Some(true);
    let await_command = (!disabled).then(|| job.timeout.unwrap_or(Duration::from_secs(7200)));
    prop_assert_eq!(config.timeouts.await_command, await_command);
    prop_assert_eq!(
        config.timeouts.for_state(State::AwaitCommand),
        await_command
    );
    prop_assert_eq!(
        config.timeouts.for_state(State::Clone).is_none(),
        disabled,
        "-disable-timeouts lifts every state's limit, and only it"
    );
    prop_assert_eq!(&config.source_reference, &job.source_reference);
    prop_assert_eq!(config.once, job.once == Some(true));
    prop_assert_eq!(&config.site_dir, &job.site_dir.as_ref().map(PathBuf::from));
    Ok(())
}

proptest! {
    #![proptest_config(cases(256))]

    /// Whatever the command line, parsing returns; an accepted one holds
    /// only validated values, and a refusal can be printed.
    #[test]
    fn parse_args_never_panics(args in prop::collection::vec(any_argument(), 0..12)) {
        match parse_args(args.clone()) {
            Ok(Invocation::Run(config)) => {
                prop_assert!(is_valid_branch_name(config.branch.as_str()));
                prop_assert!(NotesNamespace::new(config.notes_ns.as_str()).is_ok());
                prop_assert!(!config.poll_interval.is_zero());
                prop_assert!(config.timeouts.await_command.is_none_or(|d| !d.is_zero()));
                for url in [config.source.as_git_arg(), config.results.as_git_arg()] {
                    prop_assert!(!url.is_empty() && !url.starts_with('-'), "{:?}", url);
                }
                prop_assert!(config.test_script.as_deref() != Some(""));
                prop_assert!(config.source_reference.as_deref() != Some(""));
                prop_assert!(config.site_dir.as_ref().is_none_or(|d| !d.as_os_str().is_empty()));
            }
            Ok(Invocation::Help) => {
                let asked = args.iter().any(|arg| {
                    let name = arg.trim_start_matches('-');
                    ["h", "help"].contains(&name.split('=').next().unwrap_or(name))
                });
                prop_assert!(asked, "help without -h or -help");
            }
            Ok(Invocation::Version) => {
                prop_assert!(args.iter().any(|arg| arg.trim_start_matches('-').starts_with('v')));
            }
            Err(err) => {
                prop_assert!(!err.to_string().is_empty());
            }
        }
    }

    /// A command line built from known flags, each in any of its spellings
    /// and in any order, parses to the values it was built from.
    #[test]
    fn command_line_round_trips((job, groups) in job_command_line()) {
        let config = expect_run(groups.concat())?;
        check_job(&config, &job)?;
    }

    /// A trailing `--` changes nothing; a positional argument anywhere
    /// between flags is refused as such.
    #[test]
    fn positional_arguments_are_refused(
        (job, groups) in job_command_line(),
        position in any::<prop::sample::Index>(),
        word in "[^-].*",
    ) {
        let mut args = groups.concat();
        args.push("--".into());
        check_job(&expect_run(args)?, &job)?;

        let mut with_word = groups.clone();
        with_word.insert(position.index(groups.len() + 1), vec![word.clone()]);
        prop_assert_eq!(
            parse_args(with_word.concat()).unwrap_err(),
            UsageError::StrayArgument(word)
        );
    }

    /// `-v` anywhere among valid flags asks for the version, `-h` or
    /// `-help` for the usage.
    #[test]
    fn version_and_help_anywhere(
        (_job, groups) in job_command_line(),
        position in any::<prop::sample::Index>(),
        version in any::<bool>(),
        spelling in any::<u8>().prop_map(Spelling),
        help_name in select(&["h", "help"][..]),
    ) {
        let flag = if version {
            spelling.bool_flag("v", true)
        } else {
            spelling.bool_flag(help_name, true)
        };
        let mut groups = groups;
        let at = position.index(groups.len() + 1);
        groups.insert(at, flag);
        let parsed = parse_args(groups.concat());
        if version {
            prop_assert!(matches!(parsed, Ok(Invocation::Version)), "{:?}", parsed);
        } else {
            prop_assert!(matches!(parsed, Ok(Invocation::Help)), "{:?}", parsed);
        }
    }
}

// ---------------------------------------------------------------------------
// Durations

#[rustfmt::skip]
const DURATION_FRAGMENTS: &[&str] = &[
    "0", "1", "5", "9", "60", "007", ".", "+", "-", "h", "m", "s", "ms", "us", "µs", "μs", "ns",
    "y", " ", "e", "9223372036", "854775807", "99999999999999999999",
];

/// Units Go accepts and how many nanoseconds each is.
const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("\u{b5}s", 1_000),
    ("\u{3bc}s", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Go's duration is an int64 of nanoseconds.
const MAX_NANOS: u128 = i64::MAX as u128;

/// One `<number><unit>` term and the nanoseconds it means. The fraction is
/// kept to as many digits as divide the unit exactly, so the expected value
/// needs no rounding rule.
fn duration_term() -> impl Strategy<Value = (String, u128)> {
    (select(UNITS), 0u64..10_000_000, any::<u64>()).prop_map(|((unit, scale), whole, fraction)| {
        let exact_digits = (0..=12).take_while(|d| scale % 10u128.pow(*d) == 0).last();
        let digits = exact_digits.unwrap_or(0) as usize;
        if digits == 0 || fraction % 3 == 0 {
            return (format!("{whole}{unit}"), u128::from(whole) * scale);
        }
        let digits = 1 + (fraction as usize / 3) % digits;
        let fraction = fraction % 10u64.pow(digits as u32);
        let nanos =
            u128::from(whole) * scale + u128::from(fraction) * scale / 10u128.pow(digits as u32);
        (format!("{whole}.{fraction:0digits$}{unit}"), nanos)
    })
}

proptest! {
    #![proptest_config(cases(256))]

    /// Any text parses or is refused; an accepted duration is positive and
    /// fits Go's int64 nanoseconds.
    #[test]
    fn parse_duration_never_panics(text in tricky(DURATION_FRAGMENTS, 6)) {
        if let Ok(duration) = parse_duration(&text) {
            prop_assert!(!duration.is_zero());
            prop_assert!(duration.as_nanos() <= MAX_NANOS);
        }
    }

    /// Anything with a leading minus is negative, whatever follows.
    #[test]
    fn negative_durations_are_refused(text in tricky(DURATION_FRAGMENTS, 6)) {
        let negative = format!("-{text}");
        prop_assert_eq!(
            parse_duration(&negative),
            Err(DurationError::Negative(negative.clone()))
        );
    }

    /// What `format_duration` prints, `parse_duration` reads back exactly.
    #[test]
    fn format_then_parse_round_trips(duration in positive_duration()) {
        let text = format_duration(duration);
        prop_assert_eq!(parse_duration(&text), Ok(duration), "{}", text);
    }

    /// A bare integer counts seconds; zero is refused, and a number too
    /// large for Go's duration is refused rather than wrapped.
    #[test]
    fn bare_integers_are_seconds(digits in "[0-9]{1,40}") {
        let expected = match digits.parse::<u128>().ok().and_then(|s| s.checked_mul(1_000_000_000)) {
            Some(0) => Err(DurationError::Zero(digits.clone())),
            Some(nanos) if nanos <= MAX_NANOS => Ok(Duration::from_nanos(nanos as u64)),
            _ => Err(DurationError::Overflow(digits.clone())),
        };
        prop_assert_eq!(parse_duration(&digits), expected);
    }

    /// A sequence of Go terms (`1h30m`, `1.5s`, `2µs`) is the sum of its
    /// terms; an optional leading `+` changes nothing.
    #[test]
    fn go_terms_add_up(terms in prop::collection::vec(duration_term(), 1..5), plus in any::<bool>()) {
        let text: String = terms.iter().map(|(text, _)| text.as_str()).collect();
        let text = if plus { format!("+{text}") } else { text };
        let nanos: u128 = terms.iter().map(|(_, nanos)| nanos).sum();
        let parsed = parse_duration(&text);
        match nanos {
            0 => prop_assert_eq!(parsed, Err(DurationError::Zero(text))),
            n if n > MAX_NANOS => prop_assert_eq!(parsed, Err(DurationError::Overflow(text))),
            n => prop_assert_eq!(parsed, Ok(Duration::from_nanos(n as u64)), "{}", text),
        }
    }
}

// ---------------------------------------------------------------------------
// Branch and ref names

#[rustfmt::skip]
const NAME_FRAGMENTS: &[&str] = &[
    "a", "b", "main", "x1", "-", "_", ".", "..", "/", "//", ".lock", "lock", "@", "{", "}", "@{",
    "HEAD", "~", "^", ":", "?", "*", "[", "]", "\\", " ", "\t", "\u{1}", "\u{1f}", "\u{7f}",
    "\u{85}", "é", "€", "!", "#", "+", "=", "'", "\"",
];

fn ref_name_like() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => glued(NAME_FRAGMENTS, 8),
        1 => "[^\u{0}]{0,12}",
    ]
}

/// Whether git itself accepts `name` (with `--branch` as a branch name).
/// Run outside any repository, where `@{-1}` cannot name a branch.
fn git_accepts(name: &str, branch: bool) -> bool {
    let outside = std::env::temp_dir();
    let mut command = Command::new("git");
    command.current_dir(&outside).arg("check-ref-format");
    if branch {
        command.arg("--branch");
    }
    command
        .arg(name)
        .env("GIT_CEILING_DIRECTORIES", &outside)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("git must be installed to run the tests")
        .success()
}

proptest! {
    // Each case spawns git twice: fewer cases keep the file fast.
    #![proptest_config(cases(200))]

    /// The checker agrees with `git check-ref-format`, both for branch
    /// names and for full ref names.
    #[test]
    fn ref_names_agree_with_git(name in ref_name_like()) {
        prop_assert_eq!(is_valid_branch_name(&name), git_accepts(&name, true), "branch {:?}", name);
        let full = format!("refs/{name}");
        prop_assert_eq!(is_valid_full_refname(&full), git_accepts(&full, false), "ref {:?}", full);
    }
}

proptest! {
    #![proptest_config(cases(256))]

    /// A name that could be misread by git or a shell is never a branch.
    #[test]
    fn branch_names_refuse_dangerous_shapes(name in ref_name_like()) {
        if is_valid_branch_name(&name) {
            prop_assert!(!name.is_empty());
            prop_assert!(!name.starts_with('-'), "would read as an option");
            prop_assert!(!name.contains(".."));
            prop_assert!(!name.contains("@{"), "reflog syntax");
            prop_assert!(!name.chars().any(|c| c.is_ascii_control()));
            prop_assert!(!name.ends_with(".lock") && !name.ends_with('/') && !name.ends_with('.'));
            prop_assert!(name.split('/').all(|part| !part.is_empty() && !part.starts_with('.')));
            prop_assert!(name != "HEAD");
        }
    }
}

// ---------------------------------------------------------------------------
// Note names

#[rustfmt::skip]
const NOTE_FRAGMENTS: &[&str] = &[
    "report", "a", "lock", "locked", "output", "result", ".", "..", "/", "../", "refs/heads/",
    "main", "-", "_", ".lock", "@{", "~", ":", "*", " ", "\t", "\n", "\u{1}", "\u{7f}", "\u{85}",
    "\u{9b}", "é", "passed", "stdout",
];

fn namespace() -> impl Strategy<Value = NotesNamespace> {
    prop_oneof![
        select(&["icyci", "icyci-aarch64", "icyci-x86-64", "ci/linux", "a.b"][..])
            .prop_map(String::from),
        valid_namespace(),
    ]
    .prop_map(|name| NotesNamespace::new(&name).expect("valid namespaces only"))
}

fn note_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => glued(NOTE_FRAGMENTS, 6),
        1 => any::<String>(),
    ]
}

/// The daemon's own note names, and prefixes of note names.
const RESERVED_NAMES: &[&str] = &["lock", "locked", "verified"];
const RESERVED_PREFIXES: &[&str] = &["output.", "result.", "full-output."];

fn is_reserved(name: &str) -> bool {
    RESERVED_NAMES.contains(&name) || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// A name such as `build.log` or `coverage-summary`, none reserved.
fn plain_file_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_é]([a-zA-Z0-9_é-]|\\.[a-zA-Z0-9_é-]){0,20}".prop_filter("not reserved", |name| {
        !name.ends_with(".lock") && !is_reserved(name)
    })
}

proptest! {
    #![proptest_config(cases(256))]

    /// A name the validator lets through forms a valid ref inside the
    /// namespace, one level below it, and collides with no note of the
    /// daemon's own.
    #[test]
    fn accepted_note_names_are_safe(ns in namespace(), name in note_name()) {
        if refuse_note_name(&ns, &name).is_none() {
            prop_assert!(is_valid_full_refname(&ns.note_ref(&name)));
            prop_assert!(!name.is_empty());
            prop_assert!(!name.contains('/'), "a note name is one path component");
            prop_assert!(!name.contains(".."));
            prop_assert!(!name.chars().any(char::is_control), "control character");
            prop_assert!(!is_reserved(&name), "reserved");
            let last = ns.as_str().rsplit('/').next().unwrap_or_default();
            prop_assert!(last.len() + 1 + name.len() + ".lock".len() <= 255, "fits a file name");
            for own in ["locked", "lock", "verified", "result.passed", "result.failed"] {
                prop_assert!(!name.ends_with(&format!(".{own}")), "reads as another namespace's");
            }
        }
    }

    /// The daemon's own note names are never taken, whatever follows the
    /// reserved prefix.
    #[test]
    fn reserved_note_names_are_refused(
        ns in namespace(),
        prefix in select(RESERVED_PREFIXES),
        rest in note_name(),
    ) {
        for name in RESERVED_NAMES {
            prop_assert!(refuse_note_name(&ns, name).is_some(), "{:?}", name);
        }
        let name = format!("{prefix}{rest}");
        prop_assert!(refuse_note_name(&ns, &name).is_some(), "{:?}", name);
    }

    /// Plain file names, the kind a test script leaves, are accepted.
    #[test]
    fn plain_note_names_are_accepted(ns in namespace(), name in plain_file_name()) {
        prop_assert_eq!(refuse_note_name(&ns, &name), None);
    }
}

// ---------------------------------------------------------------------------
// Credential masking

#[rustfmt::skip]
const TEXT_FRAGMENTS: &[&str] = &[
    "git fetch ", "https", "ssh", "://", ":", "/", "//", "@", " ", "\n", "'", "\"", ",", ";", "(",
    ")", "=", "a", "h", "é", "x.org", "user", "*",
];

/// `scheme://user:secret@host/path`, with its secret. The secret has no
/// `*`, so that it cannot be spelt by the mask itself.
fn url_with_secret() -> impl Strategy<Value = (String, String)> {
    (
        select(&["https", "http", "ssh", "git+ssh", "ftp"][..]),
        "[a-zA-Z0-9._~%-]{0,8}",
        "[A-Z0-9%!$&()+,;=:@~._-]{3,16}",
        "[a-z0-9.-]{1,12}(:[0-9]{1,5})?",
        "(/[a-zA-Z0-9._~%-]{0,8}){0,3}",
    )
        .prop_map(|(scheme, user, secret, host, path)| {
            (format!("{scheme}://{user}:{secret}@{host}{path}"), secret)
        })
}

proptest! {
    #![proptest_config(cases(256))]

    /// Text without `://` holds no URL credentials and is left as it is.
    #[test]
    fn masking_leaves_plain_text_alone(
        text in tricky(TEXT_FRAGMENTS, 10).prop_filter("no URL", |text| !text.contains("://")),
    ) {
        prop_assert_eq!(mask_credentials(&text), text.as_str());
    }

    /// A URL's password never survives masking, whatever text surrounds the
    /// URL, unless the same characters occur elsewhere in the text.
    #[test]
    fn masking_hides_every_password(
        before in tricky(TEXT_FRAGMENTS, 10),
        (url, secret) in url_with_secret(),
        after in tricky(TEXT_FRAGMENTS, 10),
    ) {
        let text = format!("{before}{url}{after}");
        // The text with this one occurrence of the secret taken out.
        let elsewhere = text.replacen(&format!(":{secret}@"), ":\u{1f512}@", 1);
        prop_assume!(!elsewhere.contains(&secret));
        let masked = mask_credentials(&text);
        prop_assert!(!masked.contains(&secret), "{:?} became {:?}", text, masked);
    }

    /// Masking masked text changes nothing more.
    #[test]
    fn masking_is_idempotent(
        before in tricky(TEXT_FRAGMENTS, 10),
        (url, _secret) in url_with_secret(),
        after in tricky(TEXT_FRAGMENTS, 10),
    ) {
        let text = format!("{before}{url}{after}");
        let once = mask_credentials(&text).into_owned();
        prop_assert_eq!(mask_credentials(&once), once.as_str());
    }
}
