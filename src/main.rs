//! The `icyci` binary: parse the command line, set up logging and signals,
//! run the job, and map how it ended to an exit status.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use icyci::cli::{parse_args, usage, Invocation};
use icyci::commands::{Action, Command, SUBCOMMANDS};
use icyci::config::{default_state_dir, JobConfig};
use icyci::machine::{Job, JobExit};
use icyci::spool::{create_private_dir_all, Spool};
use icyci::workspace::{OpenError, Workspace};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Exit status of a usage error, as Go's `flag` package uses.
const USAGE_EXIT: u8 = 2;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args
        .first()
        .is_some_and(|first| SUBCOMMANDS.contains(&first.as_str()))
    {
        return match Command::try_parse_from(std::env::args()) {
            Ok(command) => run_subcommand(command),
            Err(err) => subcommand_usage_error(&args[0], err),
        };
    }
    match parse_args(args) {
        Ok(Invocation::Help) => {
            print!("{}", usage());
            ExitCode::SUCCESS
        }
        Ok(Invocation::Version) => {
            println!("icyCI {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Ok(Invocation::Run(config)) => {
            if let Err(reason) = check_absolute_script(&config)
                .and_then(|()| check_source_reference(&config))
                .and_then(|()| check_site_dir(&config))
                .and_then(|()| check_state_dir(&config))
            {
                eprintln!("icyci: {reason}");
                eprint!("{}", usage());
                return ExitCode::from(USAGE_EXIT);
            }
            run(anchor_paths(*config))
        }
        Err(err) => {
            eprintln!("icyci: {err}");
            eprint!("{}", usage());
            ExitCode::from(USAGE_EXIT)
        }
    }
}

fn run_subcommand(command: Command) -> ExitCode {
    match command.action {
        Action::Demo => icyci::demo::main(),
        Action::Results(args) => icyci::viewer::results(args),
        Action::Show(args) => icyci::viewer::show(args),
        Action::Status(args) => icyci::viewer::status(args),
        Action::Site(args) => icyci::site::site(args),
        Action::Retest(args) => icyci::retest::retest(args),
    }
}

/// A subcommand's usage error as one line `icyci <command>: <reason>` and
/// exit status 2, as every other error of the subcommands; `--help` and
/// `--version` are printed whole by clap.
fn subcommand_usage_error(command: &str, err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        err.exit();
    }
    // clap's message is a first paragraph (the reason, perhaps over a few
    // lines), then tips and the usage.
    let rendered = err.render().to_string();
    let reason: Vec<&str> = rendered
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    let reason = reason.join(" ");
    let reason = reason.strip_prefix("error: ").unwrap_or(&reason);
    eprintln!("icyci {command}: {reason} (see icyci {command} --help)");
    ExitCode::from(USAGE_EXIT)
}

/// `-source-reference` is a local repository `git clone --reference`
/// borrows objects from: one that is not there would fail every clone, so
/// it is a configuration error, found before anything starts.
fn check_source_reference(config: &JobConfig) -> Result<(), String> {
    let Some(reference) = config.source_reference.as_deref() else {
        return Ok(());
    };
    match std::fs::metadata(reference) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(format!(
            "-source-reference {reference}: not a directory (a local git repository is needed)"
        )),
        Err(err) => Err(format!("-source-reference {reference}: {err}")),
    }
}

/// A `-state-dir` that exists and is not a directory is a configuration
/// error; one that cannot be created is reported when it is made (exit 1:
/// a file system not mounted yet may be transient).
fn check_state_dir(config: &JobConfig) -> Result<(), String> {
    match &config.state_dir {
        Some(dir) if std::fs::metadata(dir).is_ok_and(|meta| !meta.is_dir()) => {
            Err(format!("-state-dir {}: not a directory", dir.display()))
        }
        _ => Ok(()),
    }
}

/// A `-site-dir` the site could never be written to (a file, a directory
/// of other files) is found at start, not as a warning after every push.
fn check_site_dir(config: &JobConfig) -> Result<(), String> {
    match &config.site_dir {
        Some(dir) => icyci::site::SiteDir::new(dir)
            .check()
            .map_err(|err| format!("-site-dir: {err}")),
        None => Ok(()),
    }
}

/// An absolute `-test-script` names a file outside the checkout: one that
/// cannot run would fail every commit (and, in a shared namespace, mark
/// commits failed that other instances would pass), so it is a
/// configuration error. A relative one lives in the commit under test and
/// is only known there.
fn check_absolute_script(config: &JobConfig) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let Some(script) = config.test_script.as_deref() else {
        return Ok(());
    };
    let path = std::path::Path::new(script);
    if !path.is_absolute() {
        return Ok(());
    }
    let problem = match std::fs::metadata(path) {
        Err(err) => err.to_string(),
        Ok(meta) if !meta.is_file() => "not a regular file".to_owned(),
        Ok(meta) if meta.permissions().mode() & 0o111 == 0 => "not executable".to_owned(),
        Ok(_) => return Ok(()),
    };
    Err(format!("-test-script {script}: {problem}"))
}

/// Relative repository paths on the command line mean relative to where
/// icyci was started, as in any shell command.
fn anchor_paths(mut config: JobConfig) -> JobConfig {
    let Ok(cwd) = std::env::current_dir() else {
        return config;
    };
    config.source = config.source.anchored_at(&cwd);
    config.results = config.results.anchored_at(&cwd);
    if let Some(state_dir) = config.state_dir.as_mut() {
        *state_dir = cwd.join(&*state_dir);
    }
    if let Some(site_dir) = config.site_dir.as_mut() {
        *site_dir = cwd.join(&*site_dir);
    }
    if let Some(reference) = config.source_reference.as_mut() {
        if std::path::Path::new(reference).is_relative() && !reference.contains("://") {
            *reference = cwd.join(&*reference).to_string_lossy().into_owned();
        }
    }
    config
}

fn run(config: JobConfig) -> ExitCode {
    init_logging();
    let state_dir = match create_state_dir(&config) {
        Ok(dir) => dir,
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::FAILURE;
        }
    };
    // The check that the directory is icyci's and the lock come first: a
    // foreign directory or a second instance of the job is left untouched.
    let workspace = match Workspace::open(&state_dir) {
        Ok(workspace) => workspace,
        Err(err @ (OpenError::Busy { .. } | OpenError::Foreign { .. })) => {
            eprintln!("icyci: {err}");
            return ExitCode::from(USAGE_EXIT);
        }
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::FAILURE;
        }
    };
    let spool = match Spool::open(&state_dir) {
        Ok(spool) => spool,
        Err(err) => {
            tracing::error!("cannot open the spool in {}: {err}", state_dir.display());
            return ExitCode::FAILURE;
        }
    };
    // Processes a test script detaches are then re-parented to the daemon,
    // which finds and kills them when the script ends.
    if let Err(err) = icyci::contain::become_subreaper() {
        tracing::warn!(
            "cannot become a child subreaper ({err}); processes a test script detaches from \
             its process group survive it"
        );
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!("cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let status = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let (usr1_sender, usr1) = broadcast::channel(4);
        if let Err(err) = watch_signals(shutdown.clone(), usr1_sender) {
            tracing::error!("cannot install signal handlers: {err}");
            return ExitCode::FAILURE;
        }
        let exit = Job::new(config, workspace, spool).run(shutdown, usr1).await;
        match exit {
            JobExit::Stopped => ExitCode::SUCCESS,
            JobExit::Once(result) => ExitCode::from(result as u8),
        }
    });
    // Passing script output through to a stdout nobody reads leaves a
    // runtime thread blocked in write(2); the job is done, so do not wait.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    status
}

/// Creates the state directory (mode 0700), which holds the lock file,
/// the workspace and the spool.
fn create_state_dir(config: &JobConfig) -> Result<PathBuf, String> {
    let dir = match config
        .state_dir
        .clone()
        .or_else(|| default_state_dir(config))
    {
        Some(dir) => dir,
        None => {
            return Err("no state directory: set -state-dir, $XDG_STATE_HOME or $HOME".to_owned())
        }
    };
    create_private_dir_all(&dir)
        .map(|()| dir.clone())
        .map_err(|err| format!("cannot create the state directory {}: {err}", dir.display()))
}

/// SIGTERM, SIGINT and SIGHUP stop every job; SIGUSR1 is passed on to them.
fn watch_signals(
    shutdown: CancellationToken,
    usr1_sender: broadcast::Sender<()>,
) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!("SIGTERM received; stopping");
                    shutdown.cancel();
                }
                _ = int.recv() => {
                    tracing::info!("SIGINT received; stopping");
                    shutdown.cancel();
                }
                // A closed terminal (or a script signalling $ICYCI_PID) must
                // not kill the daemon outright and orphan the test.
                _ = hup.recv() => {
                    tracing::info!("SIGHUP received; stopping");
                    shutdown.cancel();
                }
                _ = usr1.recv() => {
                    let _ = usr1_sender.send(());
                }
            }
        }
    });
    Ok(())
}

/// Logs go to stderr (the journal under systemd); `ICYCI_LOG` takes a
/// tracing filter such as `debug` or `icyci::git=debug`.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ICYCI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A closed stderr (a log pipe that went away) must not end the
        // daemon: the default reports the failure with eprintln!, which
        // panics on that same broken stderr.
        .log_internal_errors(false)
        .with_target(false)
        .init();
}
