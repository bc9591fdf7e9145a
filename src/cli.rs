//! The daemon's command line, parsed the way Go's `flag` package does, so
//! that unit files written for the original keep working unchanged.
//!
//! clap cannot express Go's single-dash long flags (`-source-repo`), bool
//! flags that only take `=value`, or Go's stop-at-first-positional rule, so
//! the daemon flags are parsed here by hand; subcommands (`icyci demo`) use
//! clap in `main.rs`. Parsing does no I/O but reading the `-trusted-signers`
//! file, so that a bad list is a usage error before anything is touched.

use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::config::{
    BranchName, ConfigError, JobConfig, NotesNamespace, RepoUrl, Timeouts, DEFAULT_MAX_OUTPUT,
};
use crate::duration::{parse_duration, DurationError};
use crate::size::{parse_size, SizeError};
use crate::state::State;
use crate::trust::{SignaturePolicy, TrustListError, TrustedSigners};

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    /// Run the daemon (or one cycle with `-once`).
    Run(Box<JobConfig>),
    /// `-h` / `-help`: print usage and exit 0.
    Help,
    /// `-v`: print the version and exit 0.
    Version,
}

/// A command line that cannot be run.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum UsageError {
    /// `-foo` is not a flag of the daemon.
    #[error("flag provided but not defined: -{0}")]
    UnknownFlag(String),
    /// A value flag at the end of the command line.
    #[error("flag needs an argument: -{0}")]
    MissingValue(String),
    /// A bool flag given something other than true/false.
    #[error("invalid boolean value {value:?} for -{flag}")]
    InvalidBool {
        /// The flag.
        flag: String,
        /// The value given.
        value: String,
    },
    /// A positional argument; the daemon takes none.
    #[error("unexpected argument {0:?} (flags take their value as -name=value or -name value; bool flags only as -name=false)")]
    StrayArgument(String),
    /// A required flag is missing.
    #[error("missing required flag -{0}")]
    MissingRequired(&'static str),
    /// A duration value that does not parse.
    #[error("invalid value for -{flag}: {source}")]
    Duration {
        /// The flag.
        flag: &'static str,
        /// What is wrong with it.
        source: DurationError,
    },
    /// A size value that does not parse.
    #[error("invalid value for -{flag}: {source}")]
    Size {
        /// The flag.
        flag: &'static str,
        /// What is wrong with it.
        source: SizeError,
    },
    /// `-timeout` for a state other than await-command, or malformed.
    #[error("invalid value {0:?} for -timeout: expected await-command:DURATION")]
    TimeoutSpec(String),
    /// A value that fails validation.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A `-trusted-signers` file that cannot be read or has a bad line.
    #[error(transparent)]
    TrustedSigners(#[from] TrustListError),
    /// A lease too short to be renewed in time.
    #[error("invalid value for -lock-lease: must be at least 1s")]
    LeaseTooShort,
    /// `-accept-expired-before-expiry` relaxes a list that is not given.
    #[error("-accept-expired-before-expiry needs -trusted-signers")]
    ExpiryWithoutTrustedSigners,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Value,
    Bool,
}

/// Every daemon flag: name, kind, the value's placeholder in the usage, help.
const FLAGS: [(&str, Kind, &str, &str); 21] = [
    (
        "source-repo",
        Kind::Value,
        "URL",
        "repository under test (any URL or path git accepts); required",
    ),
    (
        "source-branch",
        Kind::Value,
        "NAME",
        "branch to follow (default \"main\")",
    ),
    (
        "test-script",
        Kind::Value,
        "PATH",
        "script run in the checkout: relative to its root, or absolute",
    ),
    (
        "results-repo",
        Kind::Value,
        "URL",
        "repository the result notes are pushed to; required",
    ),
    (
        "push-source-to-results",
        Kind::Bool,
        "",
        "also push the tested branch and verified tag (default true)",
    ),
    (
        "poll-interval",
        Kind::Value,
        "DURATION",
        "wait between polls of the source branch while idle (default 60s)",
    ),
    (
        "notes-ns",
        Kind::Value,
        "PREFIX",
        "notes namespace: refs/notes/<PREFIX>.<name> (default \"icyci\")",
    ),
    (
        "timeout",
        Kind::Value,
        "await-command:DURATION",
        "time limit of the test script (default 2h)",
    ),
    (
        "disable-timeouts",
        Kind::Bool,
        "",
        "run without any state timeouts",
    ),
    (
        "source-reference",
        Kind::Value,
        "PATH",
        "repository passed to the first clone as --reference",
    ),
    (
        "site-dir",
        Kind::Value,
        "DIR",
        "after each push, refresh a static HTML site of the results in DIR",
    ),
    (
        "max-output",
        Kind::Value,
        "SIZE",
        "keep at most SIZE of stdout and of stderr in the notes: its head and tail (default 16MiB)",
    ),
    (
        "state-dir",
        Kind::Value,
        "DIR",
        "keep the workspace and results not yet pushed in DIR, one instance at a time \
         (default $XDG_STATE_HOME/icyci/<job>)",
    ),
    (
        "keep-full-output",
        Kind::Bool,
        "",
        "also publish the whole stdout and stderr as notes full-output.stdout and .stderr",
    ),
    (
        "once",
        Kind::Bool,
        "",
        "test the current tip and exit: 0 passed, 1 failed, 3 nothing to do, 4 could not complete",
    ),
    (
        "trusted-signers",
        Kind::Value,
        "FILE",
        "count only signatures by the OpenPGP fingerprints and ssh public keys listed in FILE",
    ),
    (
        "accept-expired-before-expiry",
        Kind::Bool,
        "",
        "with -trusted-signers, accept an expired key for signatures made before its expiry",
    ),
    (
        "lock-lease",
        Kind::Value,
        "DURATION",
        "lease of a lock note, renewed while the script runs; an expired lease with no result \
         lets another instance take the commit over (default: the script's time limit + 10m)",
    ),
    (
        "stale-lock-after",
        Kind::Value,
        "DURATION",
        "take over a lock without a lease (written by the original icyCI) this long after its time",
    ),
    ("v", Kind::Bool, "", "print the version and exit"),
    ("help", Kind::Bool, "", "print this help and exit (also -h)"),
];

/// The usage text printed by `-h` and after a usage error.
pub fn usage() -> String {
    let mut text = String::from(
        "Usage: icyci -source-repo URL -results-repo URL [flags]\n       \
         icyci demo | results | show | status | site | retest ...   (each with --help)\n\nFlags:\n",
    );
    for (name, _, value, help) in FLAGS {
        let separator = if value.is_empty() { "" } else { " " };
        text.push_str(&format!("  -{name}{separator}{value}\n        {help}\n"));
    }
    text.push_str("\nDURATION is Go syntax (300ms, 1h30m) or whole seconds.\n");
    text.push_str("SIZE is whole bytes, or with a unit: 512KiB, 8MiB, 1GiB, 100MB.\n");
    text
}

/// Parses the daemon's arguments (without the program name).
pub fn parse_args<I, S>(args: I) -> Result<Invocation, UsageError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut values = RawFlags::default();
    let mut args = args.into_iter().map(Into::into);

    while let Some(arg) = args.next() {
        if arg == "--" {
            if let Some(stray) = args.next() {
                return Err(UsageError::StrayArgument(stray));
            }
            break;
        }
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            return Err(UsageError::StrayArgument(arg));
        };
        if flag.is_empty() || flag.starts_with('-') || flag.starts_with('=') {
            return Err(UsageError::StrayArgument(arg));
        }
        let (name, inline_value) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (flag, None),
        };
        let name = if name == "h" { "help" } else { name };
        let kind = FLAGS
            .iter()
            .find(|(known, _, _, _)| *known == name)
            .map(|(_, kind, _, _)| *kind)
            .ok_or_else(|| UsageError::UnknownFlag(name.to_owned()))?;
        let value = match (kind, inline_value) {
            (Kind::Bool, None) => "true".to_owned(),
            (_, Some(value)) => value,
            (Kind::Value, None) => args
                .next()
                .ok_or_else(|| UsageError::MissingValue(name.to_owned()))?,
        };
        if kind == Kind::Bool {
            let parsed = parse_bool(&value).ok_or_else(|| UsageError::InvalidBool {
                flag: name.to_owned(),
                value: value.clone(),
            })?;
            if name == "help" && parsed {
                return Ok(Invocation::Help);
            }
            values.set(name, parsed.to_string());
        } else {
            values.set(name, value);
        }
    }

    if values.get("v") == Some("true") {
        return Ok(Invocation::Version);
    }
    values
        .into_config()
        .map(|config| Invocation::Run(Box::new(config)))
}

/// Go's `strconv.ParseBool`.
fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Flag values as given; a repeated flag keeps its last value, as in Go.
#[derive(Default)]
struct RawFlags(Vec<(String, String)>);

impl RawFlags {
    fn set(&mut self, name: &str, value: String) {
        self.0.retain(|(known, _)| known != name);
        self.0.push((name.to_owned(), value));
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(known, _)| known == name)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> bool {
        self.get(name) == Some("true")
    }

    fn duration(&self, name: &'static str, default: Duration) -> Result<Duration, UsageError> {
        match self.get(name) {
            None => Ok(default),
            Some(text) => {
                parse_duration(text).map_err(|source| UsageError::Duration { flag: name, source })
            }
        }
    }

    /// `-trusted-signers` (read and checked here) and
    /// `-accept-expired-before-expiry`.
    fn signature_policy(&self) -> Result<SignaturePolicy, UsageError> {
        let accept_expired_before_expiry = self.flag("accept-expired-before-expiry");
        let trusted = match self.get("trusted-signers") {
            None => None,
            Some("") => return Err(ConfigError::EmptyTrustedSigners.into()),
            Some(path) => Some(TrustedSigners::load(Path::new(path))?),
        };
        if accept_expired_before_expiry && trusted.is_none() {
            return Err(UsageError::ExpiryWithoutTrustedSigners);
        }
        Ok(SignaturePolicy {
            trusted,
            accept_expired_before_expiry,
        })
    }

    fn into_config(self) -> Result<JobConfig, UsageError> {
        let source = self
            .get("source-repo")
            .ok_or(UsageError::MissingRequired("source-repo"))?;
        let results = self
            .get("results-repo")
            .ok_or(UsageError::MissingRequired("results-repo"))?;
        let test_script = match self.get("test-script") {
            Some("") => return Err(ConfigError::EmptyScript.into()),
            other => other.map(str::to_owned),
        };

        let mut timeouts = Timeouts::default();
        if let Some(spec) = self.get("timeout") {
            timeouts.await_command = Some(parse_timeout_spec(spec)?);
        }
        if self.flag("disable-timeouts") {
            timeouts = Timeouts::disabled();
        }

        let lock_lease = self.duration(
            "lock-lease",
            crate::lease::default_lease(timeouts.for_state(State::AwaitCommand)),
        )?;
        if lock_lease < Duration::from_secs(1) {
            return Err(UsageError::LeaseTooShort);
        }

        Ok(JobConfig {
            source: RepoUrl::new(source)?,
            branch: BranchName::new(self.get("source-branch").unwrap_or("main"))?,
            test_script,
            results: RepoUrl::new(results)?,
            push_source_to_results: self.get("push-source-to-results") != Some("false"),
            poll_interval: self.duration("poll-interval", Duration::from_secs(60))?,
            notes_ns: NotesNamespace::new(self.get("notes-ns").unwrap_or("icyci"))?,
            source_reference: match self.get("source-reference") {
                Some("") => return Err(ConfigError::EmptyReference.into()),
                other => other.map(str::to_owned),
            },
            once: self.flag("once"),
            signature_policy: self.signature_policy()?,
            site_dir: match self.get("site-dir") {
                Some("") => return Err(ConfigError::EmptySiteDir.into()),
                other => other.map(PathBuf::from),
            },
            max_output: match self.get("max-output") {
                None => DEFAULT_MAX_OUTPUT,
                Some(text) => parse_size(text).map_err(|source| UsageError::Size {
                    flag: "max-output",
                    source,
                })?,
            },
            keep_full_output: self.flag("keep-full-output"),
            state_dir: match self.get("state-dir") {
                Some("") => return Err(ConfigError::EmptyStateDir.into()),
                other => other.map(PathBuf::from),
            },
            lock_lease,
            stale_lock_after: match self.get("stale-lock-after") {
                None => None,
                Some(_) => Some(self.duration("stale-lock-after", Duration::ZERO)?),
            },
            timeouts,
        })
    }
}

/// `await-command:DURATION`; the state name is case-sensitive and is the only
/// one the original accepts.
fn parse_timeout_spec(spec: &str) -> Result<Duration, UsageError> {
    let (state, duration) = spec
        .split_once(':')
        .ok_or_else(|| UsageError::TimeoutSpec(spec.to_owned()))?;
    if state != State::AwaitCommand.name() {
        return Err(UsageError::TimeoutSpec(spec.to_owned()));
    }
    parse_duration(duration).map_err(|source| UsageError::Duration {
        flag: "timeout",
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn run(args: &[&str]) -> Result<JobConfig, UsageError> {
        match parse_args(args.iter().copied())? {
            Invocation::Run(config) => Ok(*config),
            other => panic!("expected a run, got {other:?}"),
        }
    }

    const BASE: [&str; 4] = ["-source-repo", "/src", "-results-repo", "/res"];

    #[test]
    fn lock_lease_flags() {
        let config = run(&BASE).expect("valid");
        assert_eq!(config.lock_lease, Duration::from_secs(2 * 3600 + 600));
        assert_eq!(config.stale_lock_after, None);
        let all: Vec<&str> = BASE
            .iter()
            .copied()
            .chain(["-timeout=await-command:1m", "-stale-lock-after=1h"])
            .collect();
        let config = run(&all).expect("valid");
        assert_eq!(config.lock_lease, Duration::from_secs(660));
        assert_eq!(config.stale_lock_after, Some(Duration::from_secs(3600)));
        let all: Vec<&str> = BASE.iter().copied().chain(["-lock-lease=5m"]).collect();
        assert_eq!(
            run(&all).expect("valid").lock_lease,
            Duration::from_secs(300)
        );
        let all: Vec<&str> = BASE.iter().copied().chain(["-lock-lease=500ms"]).collect();
        assert_eq!(run(&all).unwrap_err(), UsageError::LeaseTooShort);
    }

    #[test]
    fn four_spellings_of_a_value_flag() {
        for args in [
            ["-source-branch", "dev"].as_slice(),
            &["-source-branch=dev"],
            &["--source-branch", "dev"],
            &["--source-branch=dev"],
        ] {
            let all: Vec<&str> = BASE.iter().copied().chain(args.iter().copied()).collect();
            assert_eq!(run(&all).expect("valid").branch.as_str(), "dev", "{args:?}");
        }
    }

    #[test]
    fn bool_flags_take_no_separate_value() {
        let mut args = BASE.to_vec();
        args.push("-push-source-to-results=false");
        assert!(!run(&args).expect("valid").push_source_to_results);
        let mut args = BASE.to_vec();
        args.push("-push-source-to-results");
        assert!(run(&args).expect("valid").push_source_to_results);
        let mut args = BASE.to_vec();
        args.extend(["-push-source-to-results", "true"]);
        assert_eq!(
            run(&args).unwrap_err(),
            UsageError::StrayArgument("true".into())
        );
        let mut args = BASE.to_vec();
        args.push("-once=maybe");
        assert!(matches!(run(&args), Err(UsageError::InvalidBool { .. })));
    }

    #[test]
    fn defaults() {
        let config = run(&BASE).expect("valid");
        assert_eq!(config.branch.as_str(), "main");
        assert!(config.push_source_to_results);
        assert_eq!(config.poll_interval, Duration::from_secs(60));
        assert_eq!(config.notes_ns.as_str(), "icyci");
        assert_eq!(
            config.timeouts.await_command,
            Some(Duration::from_secs(7200))
        );
        assert!(config.test_script.is_none());
        assert!(!config.once);
    }

    #[test]
    fn errors() {
        assert_eq!(
            run(&["-results-repo", "/r"]).unwrap_err(),
            UsageError::MissingRequired("source-repo")
        );
        assert_eq!(
            run(&["-source-repo", "/r"]).unwrap_err(),
            UsageError::MissingRequired("results-repo")
        );
        assert_eq!(
            run(&["-bogus"]).unwrap_err(),
            UsageError::UnknownFlag("bogus".into())
        );
        assert_eq!(
            run(&["-source-repo"]).unwrap_err(),
            UsageError::MissingValue("source-repo".into())
        );
        let mut args = BASE.to_vec();
        args.extend(["-timeout", "Await-command:1h"]);
        assert!(matches!(run(&args), Err(UsageError::TimeoutSpec(_))));
        let mut args = BASE.to_vec();
        args.extend(["-timeout", "clone:1h"]);
        assert!(matches!(run(&args), Err(UsageError::TimeoutSpec(_))));
        for bad in ["-4h", "60y", "4hours", "0"] {
            let mut args = BASE.to_vec();
            args.extend(["-poll-interval", bad]);
            assert!(
                matches!(run(&args), Err(UsageError::Duration { .. })),
                "{bad}"
            );
        }
        let mut args = BASE.to_vec();
        args.extend(["-source-branch", "-evil"]);
        assert!(matches!(
            run(&args),
            Err(UsageError::Config(ConfigError::BranchLeadingDash(_)))
        ));
        let mut args = BASE.to_vec();
        args.extend(["--", "x"]);
        assert_eq!(
            run(&args).unwrap_err(),
            UsageError::StrayArgument("x".into())
        );
    }

    #[test]
    fn timeouts() {
        let mut args = BASE.to_vec();
        args.extend(["-timeout", "await-command:90"]);
        assert_eq!(
            run(&args).expect("valid").timeouts.await_command,
            Some(Duration::from_secs(90))
        );
        let mut args = BASE.to_vec();
        args.push("-disable-timeouts");
        let config = run(&args).expect("valid");
        assert_eq!(config.timeouts.for_state(State::Clone), None);
        assert_eq!(config.timeouts.for_state(State::AwaitCommand), None);
    }

    #[test]
    fn help_and_version() {
        assert!(matches!(parse_args(["-h"]), Ok(Invocation::Help)));
        assert!(matches!(parse_args(["--help"]), Ok(Invocation::Help)));
        assert!(matches!(parse_args(["-v"]), Ok(Invocation::Version)));
    }

    #[test]
    fn output_limits() {
        let config = run(&BASE).expect("valid");
        assert_eq!(config.max_output, 16 << 20);
        assert!(!config.keep_full_output);
        let mut args = BASE.to_vec();
        args.extend(["-max-output", "1KiB", "-keep-full-output"]);
        let config = run(&args).expect("valid");
        assert_eq!(config.max_output, 1024);
        assert!(config.keep_full_output);
        for bad in ["", "0", "8M", "-1", "1.5GiB"] {
            let mut args = BASE.to_vec();
            args.push("-max-output");
            args.push(bad);
            assert!(
                matches!(run(&args), Err(UsageError::Size { .. })),
                "{bad:?}"
            );
        }
        let mut args = BASE.to_vec();
        args.push("-max-output=8M");
        assert_eq!(
            run(&args).unwrap_err().to_string(),
            "invalid value for -max-output: invalid size \"8M\" (expected a whole number of \
             bytes, optionally with a unit: KiB, MiB, GiB, TiB, kB, MB, GB, TB)"
        );
    }

    #[test]
    fn trusted_signers() {
        assert_eq!(
            run(&BASE).expect("valid").signature_policy,
            SignaturePolicy::default()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let list = dir.path().join("signers");
        std::fs::write(&list, "4D5F3B10E353096180C38B985660BC37695CBC29\n").expect("write");
        let flag = format!("-trusted-signers={}", list.display());
        let mut args = BASE.to_vec();
        args.extend([flag.as_str(), "-accept-expired-before-expiry"]);
        let policy = run(&args).expect("valid").signature_policy;
        assert!(policy.trusted.is_some());
        assert!(policy.accept_expired_before_expiry);

        let mut args = BASE.to_vec();
        args.push("-accept-expired-before-expiry");
        assert_eq!(
            run(&args).unwrap_err(),
            UsageError::ExpiryWithoutTrustedSigners
        );
        std::fs::write(&list, "# fine\nnot a key\n").expect("write");
        let mut args = BASE.to_vec();
        args.push(flag.as_str());
        assert!(matches!(
            run(&args),
            Err(UsageError::TrustedSigners(TrustListError::Line {
                line: 2,
                ..
            }))
        ));
        let mut args = BASE.to_vec();
        args.push("-trusted-signers=");
        assert_eq!(
            run(&args).unwrap_err(),
            UsageError::Config(ConfigError::EmptyTrustedSigners)
        );
    }

    #[test]
    fn site_dir() {
        assert_eq!(run(&BASE).expect("valid").site_dir, None);
        let mut args = BASE.to_vec();
        args.push("-site-dir=/srv/www/ci");
        let config = run(&args).expect("valid");
        assert_eq!(config.site_dir.as_deref(), Some(Path::new("/srv/www/ci")));
        args.push("-site-dir=");
        assert_eq!(
            run(&args).unwrap_err(),
            UsageError::Config(ConfigError::EmptySiteDir)
        );
    }
}
