//! What the viewer does differently on a terminal: colour, the width to fit
//! rows into, and a pager.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::process::{Command, Stdio};

use super::{write_stdout, ViewerError};

/// Width assumed for a terminal that does not tell its own.
const DEFAULT_WIDTH: usize = 80;

/// How output is to be shaped for where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Style {
    /// Use ANSI colours.
    pub colour: bool,
    /// Fit rows into this many columns (`None`: never cut).
    pub width: Option<usize>,
}

impl Style {
    /// Colour and fitting on a terminal, neither when piped. Colour also
    /// obeys `NO_COLOR` (<https://no-color.org>: set and not empty).
    pub fn for_stdout() -> Style {
        if !std::io::stdout().is_terminal() {
            return Style::plain();
        }
        let no_colour = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style {
            colour: !no_colour,
            width: Some(terminal_width()),
        }
    }

    /// No colour, nothing cut.
    pub fn plain() -> Style {
        Style {
            colour: false,
            width: None,
        }
    }
}

/// `COLUMNS` when set (as git reads it), else what the terminal reports.
fn terminal_width() -> usize {
    let from_env = std::env::var("COLUMNS")
        .ok()
        .and_then(|v| v.trim().parse().ok());
    let from_terminal = || {
        terminal_size::terminal_size_of(std::io::stdout()).map(|(width, _)| usize::from(width.0))
    };
    from_env
        .or_else(from_terminal)
        .filter(|width| *width > 0)
        .unwrap_or(DEFAULT_WIDTH)
}

/// Writes `text` to standard output, through a pager when that is a
/// terminal, as git does: `$GIT_PAGER`, else `$PAGER`, else `less` (with
/// `LESS=FRX` unless `LESS` is set, so that short output is not paged and
/// colours pass). A pager that cannot start leaves the text printed as is.
pub(super) fn page(text: &[u8]) -> Result<(), ViewerError> {
    if !std::io::stdout().is_terminal() {
        return write_stdout(text);
    }
    let pager = ["GIT_PAGER", "PAGER"]
        .iter()
        .find_map(std::env::var_os)
        .unwrap_or_else(|| OsString::from("less"));
    let pager = pager.to_string_lossy();
    let pager = pager.trim();
    if pager.is_empty() || pager == "cat" {
        return write_stdout(text);
    }
    if run_pager(pager, text).is_err() {
        return write_stdout(text);
    }
    Ok(())
}

/// Feeds `text` to `pager` and waits for it. `Err` when it did not start
/// (nothing was shown); a pager quit early is fine.
fn run_pager(pager: &str, text: &[u8]) -> Result<(), ()> {
    let mut command = pager_command(pager).ok_or(())?;
    command.stdin(Stdio::piped());
    if std::env::var_os("LESS").is_none() {
        command.env("LESS", "FRX");
    }
    if std::env::var_os("LV").is_none() {
        command.env("LV", "-c");
    }
    let mut child = command.spawn().map_err(drop)?;
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(text).is_ok());
    let status = child.wait().map_err(drop)?;
    // A shell that could not find the pager exits 127 (126: not
    // executable) before reading anything.
    let not_started = matches!(status.code(), Some(126 | 127)) && written != Some(true);
    if not_started {
        Err(())
    } else {
        Ok(())
    }
}

/// The pager run directly when it is a plain command line, through `sh`
/// when it uses the shell (as git decides).
fn pager_command(pager: &str) -> Option<Command> {
    const SHELL_CHARACTERS: &str = "|&;<>()$`\\\"'*?[#~=%";
    let uses_shell = pager
        .split_whitespace()
        .any(|word| word.chars().any(|c| SHELL_CHARACTERS.contains(c)));
    if uses_shell {
        let mut command = Command::new("sh");
        command.arg("-c").arg(pager);
        return Some(command);
    }
    let mut words = pager.split_whitespace();
    let mut command = Command::new(words.next()?);
    command.args(words);
    Some(command)
}

/// `text` coloured with the ANSI `code` when `colour` is on.
pub(super) fn paint(text: &str, code: &str, colour: bool) -> String {
    if colour {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_pagers_run_directly_and_others_through_sh() {
        let direct = pager_command("less -S").expect("a command");
        assert_eq!(direct.get_program(), "less");
        assert_eq!(direct.get_args().collect::<Vec<_>>(), ["-S"]);
        let shell = pager_command("less | cat").expect("a command");
        assert_eq!(shell.get_program(), "sh");
    }

    #[test]
    fn paint_only_in_colour() {
        assert_eq!(paint("passed", "32", false), "passed");
        assert_eq!(paint("passed", "32", true), "\x1b[32mpassed\x1b[0m");
    }
}
