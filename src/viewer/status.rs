//! `icyci status`: one commit's results as an exit status, for scripts
//! (`icyci status HEAD && deploy`). Prints nothing.
//!
//! A stale lock (locked, no result, lease ended: its tester died) answers
//! like a running one, 8: an instance takes the commit over when it next
//! finds it as its branch tip, so the answer is still "ask again later";
//! `icyci results` and `icyci show` tell the two apart.

use std::process::ExitCode;

use super::{resolve_commit, source, state_note_names, ViewerError};
use crate::commands::StatusArgs;
use crate::reader::CommitState;

/// Exit status when the commit failed in a selected namespace.
const FAILED_EXIT: u8 = 1;
/// Exit status when it is still running (a stale lock too) or untested
/// somewhere (and failed nowhere): ask again later.
const PENDING_EXIT: u8 = 8;

pub(super) async fn run(args: StatusArgs) -> Result<ExitCode, ViewerError> {
    let source = source::open_repository(&args.repo).await?;
    let reader = &source.reader;
    let commit = resolve_commit(reader.git(), &args.commit).await?;
    // No namespace at all is an error here, not "untested": a script
    // waiting for 0 or 1 on a clone whose notes were never fetched would
    // wait forever.
    let namespaces = reader.namespaces(args.ns.as_deref()).await?;
    if namespaces.is_empty() {
        return Err(match args.ns {
            Some(glob) => ViewerError::NoNamespace {
                glob,
                place: source.label,
            },
            None => ViewerError::NoResults {
                place: source.label,
            },
        });
    }
    let names = state_note_names(namespaces.iter().map(|ns| ns.name.as_str()));
    let index = reader
        .index(std::slice::from_ref(&commit.id), &names)
        .await?;

    let states: Vec<CommitState> = namespaces
        .iter()
        .map(|ns| index.state(&commit.id, &ns.name))
        .collect();
    if !commit.known && states.iter().all(|s| *s == CommitState::Untested) {
        return Err(ViewerError::UnknownCommit(args.commit));
    }
    Ok(exit_for(&states))
}

/// Failed anywhere wins; then anything not passed.
fn exit_for(states: &[CommitState]) -> ExitCode {
    if states.contains(&CommitState::Failed) {
        ExitCode::from(FAILED_EXIT)
    } else if states.iter().any(|s| *s != CommitState::Passed) {
        ExitCode::from(PENDING_EXIT)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CommitState::{Failed, Passed, Running, Untested};

    #[test]
    fn failed_wins_then_pending() {
        assert_eq!(exit_for(&[Passed, Passed]), ExitCode::SUCCESS);
        assert_eq!(exit_for(&[Passed, Failed, Running]), ExitCode::from(1));
        assert_eq!(exit_for(&[Passed, Running]), ExitCode::from(8));
        assert_eq!(exit_for(&[Untested]), ExitCode::from(8));
    }
}
