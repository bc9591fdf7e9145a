//! `icyci results`, `icyci show` and `icyci status`: reading results back
//! through [`crate::reader`].

pub mod source;

use std::process::ExitCode;

use crate::commands::{ResultsArgs, ShowArgs, StatusArgs};

/// `icyci results`.
pub fn results(_args: ResultsArgs) -> ExitCode {
    eprintln!("icyci results: not implemented yet");
    ExitCode::FAILURE
}

/// `icyci show`.
pub fn show(_args: ShowArgs) -> ExitCode {
    eprintln!("icyci show: not implemented yet");
    ExitCode::FAILURE
}

/// `icyci status`.
pub fn status(_args: StatusArgs) -> ExitCode {
    eprintln!("icyci status: not implemented yet");
    ExitCode::FAILURE
}
