//! `icyci site`: a static HTML site of the results.

use std::process::ExitCode;

use crate::commands::SiteArgs;

/// `icyci site`.
pub fn site(_args: SiteArgs) -> ExitCode {
    eprintln!("icyci site: not implemented yet");
    ExitCode::FAILURE
}
