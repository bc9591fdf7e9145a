//! `icyci retest COMMIT --results-repo URL`: removes a commit's lock and
//! result notes from one namespace, so that the daemon tests it again.
//!
//! Everything happens in a throwaway bare repository: the namespace's note
//! refs are fetched, the notes removed, and every changed ref pushed in one
//! atomic push with a lease on the value fetched, so that a daemon that
//! changed a ref meanwhile (took the lock, pushed results) makes the whole
//! push fail instead of being overwritten. Output notes are left alone: the
//! next run replaces them.

use std::process::ExitCode;

use crate::commands::RetestArgs;
use crate::config::NotesNamespace;
use crate::git::{one_line, parse_push_porcelain, Git, GitError, PushStatus};
use crate::lease::{format_unix, parse_lock_note};

/// The notes removed; the first is the lock.
const REMOVED_NOTES: [&str; 3] = ["locked", "result.passed", "result.failed"];

/// Runs `icyci retest`: 0 when the notes were removed (or there were none),
/// 1 with one line on stderr otherwise.
pub fn retest(args: RetestArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&format!("cannot start the runtime: {err}")),
    };
    match runtime.block_on(run(&args)) {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(message) => fail(&message),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("icyci retest: {message}");
    ExitCode::FAILURE
}

/// Whether `commit` is a full object id, the key of its notes.
fn is_full_id(commit: &str) -> bool {
    matches!(commit.len(), 40 | 64) && commit.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Why a lock must not be removed without `--force`, if it must not: a
/// lease that has not ended on a commit with no result.
pub fn live_lease(lock_text: &str, has_result: bool, now: i64) -> Option<String> {
    let note = parse_lock_note(lock_text);
    let until = note.lease_until?;
    if has_result || until < now {
        return None;
    }
    let holder = note
        .holder
        .map_or_else(|| "an unknown holder".to_owned(), |h| h.to_string());
    Some(format!(
        "held by {holder}, lease until {}",
        format_unix(until)
    ))
}

async fn run(args: &RetestArgs) -> Result<String, String> {
    let commit = args.commit.to_ascii_lowercase();
    if !is_full_id(&commit) {
        return Err(format!(
            "{:?} is not a full commit id (40 or 64 hex digits, as in `git rev-parse`)",
            args.commit
        ));
    }
    let ns = NotesNamespace::new(&args.ns).map_err(|err| err.to_string())?;
    let url = absolute_url(&args.results_repo);
    let dir = tempfile::Builder::new()
        .prefix("icyci-retest-")
        .tempdir()
        .map_err(|err| format!("cannot create a temporary directory: {err}"))?;
    let git = Git::new(dir.path());
    let oneline = |err: GitError| one_line(err.stderr());
    git.command("init")
        .args(["--bare", "--quiet"])
        .run()
        .await
        .map_err(oneline)?;
    git.command("fetch")
        .args(["--no-tags", "--quiet"])
        .positional([url.as_str()])
        .arg(ns.fetch_refspec())
        .run()
        .await
        .map_err(|err| {
            format!(
                "cannot fetch the notes of {url}: {}",
                one_line(err.stderr())
            )
        })?;
    git.ensure_committer_identity().await.map_err(oneline)?;

    let mut present = Vec::new();
    for name in REMOVED_NOTES {
        let refname = ns.note_ref(name);
        let shown = git
            .command("notes")
            .arg(format!("--ref={refname}"))
            .arg("show")
            .positional([commit.as_str()])
            .output()
            .await
            .map_err(oneline)?;
        if shown.status.success() {
            present.push((name, refname, shown.stdout_text()));
        }
    }
    if present.is_empty() {
        return Err(format!(
            "{commit} has no lock or result note in namespace {} of {url}",
            ns.as_str()
        ));
    }
    let has_result = present.iter().any(|(name, _, _)| *name != "locked");
    if let Some((_, _, lock)) = present.iter().find(|(name, _, _)| *name == "locked") {
        let now = chrono::Utc::now().timestamp();
        if let Some(live) = live_lease(lock, has_result, now) {
            if !args.force {
                return Err(format!(
                    "{commit} is being tested ({live}); not removing its lock (use --force)"
                ));
            }
        }
    }

    let mut push = git
        .command("push")
        .args(["--porcelain", "--atomic", "--no-verify"]);
    let mut refspecs = Vec::new();
    for (_, refname, _) in &present {
        let fetched = git
            .command("rev-parse")
            .args(["--verify", "--end-of-options"])
            .arg(refname)
            .run()
            .await
            .map_err(oneline)?;
        git.command("notes")
            .arg(format!("--ref={refname}"))
            .arg("remove")
            .positional([commit.as_str()])
            .run()
            .await
            .map_err(oneline)?;
        push = push.arg(format!("--force-with-lease={refname}:{}", fetched.trim()));
        refspecs.push(format!("{refname}:{refname}"));
    }
    let output = push
        .positional([url.as_str()])
        .args(&refspecs)
        .output()
        .await
        .map_err(oneline)?;
    let statuses = parse_push_porcelain(&String::from_utf8_lossy(&output.stdout));
    let refused: Vec<String> = statuses
        .iter()
        .filter(|p| p.status != PushStatus::Accepted)
        .map(|p| format!("{} {:?}", p.remote_ref, p.status))
        .collect();
    if statuses.is_empty() || !output.status.success() || !refused.is_empty() {
        let reason = if refused.is_empty() {
            one_line(&output.stderr)
        } else {
            refused.join(", ")
        };
        return Err(format!(
            "nothing removed: the results repository refused the push ({reason}); it may have \
             changed meanwhile, try again"
        ));
    }
    let names: Vec<&str> = present.iter().map(|(name, _, _)| *name).collect();
    Ok(format!(
        "removed {} of {commit} in namespace {}; it is tested again when a daemon next looks at \
         this tip (one waiting on its lock within ten poll intervals; one that tested it when the \
         branch moves to it or the daemon restarts)",
        names.join(", "),
        ns.as_str()
    ))
}

/// A relative path means relative to where icyci was started.
fn absolute_url(url: &str) -> String {
    let path = std::path::Path::new(url);
    if url.contains("://") || path.is_absolute() || url.contains(':') {
        return url.to_owned();
    }
    std::env::current_dir()
        .map(|cwd| cwd.join(path).to_string_lossy().into_owned())
        .unwrap_or_else(|_| url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_ids_only() {
        assert!(is_full_id(&"a".repeat(40)));
        assert!(is_full_id(&"0".repeat(64)));
        assert!(!is_full_id("abc123"));
        assert!(!is_full_id(&"g".repeat(40)));
    }

    #[test]
    fn a_live_lease_blocks_unless_there_is_a_result() {
        let lock = "t: this commit is being tested by icyCI\n\
                    holder: h pid 1 id ab\nlease-until: 1000 (x)\n";
        assert!(live_lease(lock, false, 999).is_some());
        assert!(live_lease(lock, false, 1000).is_some());
        assert_eq!(live_lease(lock, false, 1001), None);
        assert_eq!(live_lease(lock, true, 10), None);
        // The original's format has no lease to respect.
        assert_eq!(
            live_lease("t: this commit is being tested by icyCI", false, 0),
            None
        );
    }
}
