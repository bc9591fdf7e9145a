//! `icyci show`: everything the namespaces recorded about one commit — the
//! verdict, the script's stdout and stderr, and the list of extra notes —
//! or one note written byte for byte to a file (`--note NAME --output FILE`).
//! A lock without result whose lease has ended is shown as `stale`, with
//! its holder, and what brings the commit to be tested again.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;

use super::stale::LockJudge;
use super::{
    format_date, resolve_commit, select_namespaces, source, terminal, write_stdout, ResolvedCommit,
    ViewerError,
};
use crate::commands::{RepoArgs, ShowArgs};
use crate::config::mask_credentials;
use crate::git::is_valid_full_refname;
use crate::reader::{Namespace, NoteIndex, ResultsReader};

/// The notes icyci itself writes in every namespace, in the order shown.
const OWN_NOTES: [&str; 5] = [
    "result.failed",
    "result.passed",
    "locked",
    "output.stdout",
    "output.stderr",
];

pub(super) async fn run(args: ShowArgs) -> Result<ExitCode, ViewerError> {
    let source = source::open_repository(&args.repo).await?;
    let reader = &source.reader;
    let commit = resolve_commit(reader.git(), &args.commit).await?;
    let namespaces = select_namespaces(reader, args.ns.as_deref(), &source.label, "show").await?;
    if let Some(note) = &args.note {
        if !is_valid_full_refname(&format!("refs/notes/icyci.{note}")) {
            return Err(ViewerError::InvalidNoteName(note.clone()));
        }
    }

    let mut names = Vec::new();
    for ns in &namespaces {
        let notes = note_names(ns).chain(args.note.as_deref());
        names.extend(notes.map(|note| format!("{}.{note}", ns.name)));
    }
    let index = reader
        .index(std::slice::from_ref(&commit.id), &names)
        .await?;
    let noted: Vec<&Namespace> = namespaces
        .iter()
        .filter(|ns| note_names(ns).any(|note| index.blob(&commit.id, &ns.name, note).is_some()))
        .collect();
    if !commit.known && noted.is_empty() {
        return Err(ViewerError::UnknownCommit(args.commit));
    }

    if let (Some(note), Some(output)) = (&args.note, &args.output) {
        let found = Found {
            commit: &commit.id,
            index: &index,
        };
        write_note(reader, found, &namespaces, note, output).await?;
    } else {
        let report = Report {
            reader,
            commit: &commit,
            index: &index,
            repo: &args.repo,
            judge: LockJudge::at_now(None),
        };
        let text = report.render(&namespaces, &noted).await?;
        terminal::page(&text)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Every note name `ns` may have: icyci's own, then its extra notes.
fn note_names(ns: &Namespace) -> impl Iterator<Item = &str> {
    OWN_NOTES
        .into_iter()
        .chain(ns.extra_notes.iter().map(String::as_str))
}

/// The notes found on one commit.
#[derive(Clone, Copy)]
struct Found<'a> {
    commit: &'a str,
    index: &'a NoteIndex,
}

impl Found<'_> {
    fn blob(&self, ns: &str, note: &str) -> Option<&str> {
        self.index.blob(self.commit, ns, note)
    }
}

/// Writes note `note` to `output` (`-`: standard output), from the one
/// namespace that has it on the commit.
async fn write_note(
    reader: &ResultsReader,
    found: Found<'_>,
    namespaces: &[Namespace],
    note: &str,
    output: &Path,
) -> Result<(), ViewerError> {
    let holders: Vec<(&str, &str)> = namespaces
        .iter()
        .filter_map(|ns| Some((ns.name.as_str(), found.blob(&ns.name, note)?)))
        .collect();
    let blob = match holders.as_slice() {
        [(_, blob)] => *blob,
        [] => {
            return Err(ViewerError::NoNote {
                name: note.to_owned(),
                commit: found.commit.to_owned(),
                namespaces: namespaces.iter().map(|ns| ns.name.clone()).collect(),
            })
        }
        several => {
            return Err(ViewerError::AmbiguousNote {
                name: note.to_owned(),
                namespaces: several.iter().map(|(ns, _)| (*ns).to_owned()).collect(),
            })
        }
    };
    let mut contents = reader.read_blobs(&[blob]).await?;
    let bytes = contents.remove(blob).unwrap_or_default();
    if output == Path::new("-") {
        return write_stdout(&bytes);
    }
    std::fs::write(output, bytes).map_err(|source| ViewerError::Write {
        path: output.display().to_string(),
        source,
    })
}

/// What `icyci show` prints about one commit.
struct Report<'a> {
    reader: &'a ResultsReader,
    commit: &'a ResolvedCommit,
    index: &'a NoteIndex,
    repo: &'a RepoArgs,
    /// Which locks are stale.
    judge: LockJudge,
}

impl Report<'_> {
    /// The commit's header, a section per namespace with notes on it, and
    /// a line naming the selected namespaces without any.
    async fn render(
        &self,
        namespaces: &[Namespace],
        noted: &[&Namespace],
    ) -> Result<Vec<u8>, ViewerError> {
        let found = Found {
            commit: &self.commit.id,
            index: self.index,
        };
        let shown: Vec<&str> = noted
            .iter()
            .flat_map(|ns| {
                OWN_NOTES
                    .iter()
                    .filter_map(|note| found.blob(&ns.name, note))
            })
            .collect();
        let contents = self.reader.read_blobs(&shown).await?;
        let extras: Vec<&str> = noted
            .iter()
            .flat_map(|ns| {
                ns.extra_notes
                    .iter()
                    .filter_map(|note| found.blob(&ns.name, note))
            })
            .collect();
        let sizes = self.reader.blob_sizes(&extras).await?;

        let mut out = self.header().await?;
        for ns in noted {
            out.push(b'\n');
            self.section(&mut out, ns, found, &contents, &sizes);
        }
        let untested: Vec<&str> = namespaces
            .iter()
            .filter(|ns| !noted.iter().any(|n| n.name == ns.name))
            .map(|ns| ns.name.as_str())
            .collect();
        if !untested.is_empty() {
            out.extend_from_slice(format!("\nuntested in {}\n", untested.join(", ")).as_bytes());
        }
        Ok(out)
    }

    async fn header(&self) -> Result<Vec<u8>, ViewerError> {
        let id = &self.commit.id;
        if !self.commit.known {
            return Ok(format!("commit {id} (not in the results repository)\n").into_bytes());
        }
        let info = self.reader.commits(id, 1).await?;
        let Some(info) = info.first() else {
            return Ok(format!("commit {id}\n").into_bytes());
        };
        Ok(format!(
            "commit {id}\nAuthor: {}\nDate:   {} UTC\n\n    {}\n",
            info.author,
            format_date(info.time),
            info.subject
        )
        .into_bytes())
    }

    /// The verdict (or lock), stdout, stderr and extra notes of `ns`.
    fn section(
        &self,
        out: &mut Vec<u8>,
        ns: &Namespace,
        found: Found<'_>,
        contents: &HashMap<String, Vec<u8>>,
        sizes: &HashMap<String, u64>,
    ) {
        let note = |name: &str| {
            found
                .blob(&ns.name, name)
                .and_then(|blob| contents.get(blob))
        };
        let lock = note("locked");
        let state = self.judge.judge(
            self.index.state(found.commit, &ns.name),
            lock.map(Vec::as_slice),
        );
        out.extend_from_slice(format!("== {}: {} ==\n", ns.name, state.name()).as_bytes());
        for name in ["result.failed", "result.passed"] {
            if let Some(text) = note(name) {
                push_plain(out, text);
            }
        }
        if let Some(stale) = &state.stale {
            out.extend_from_slice(
                format!(
                    "stale lock: {}; no result\n\
                     its holder is gone: an instance takes the commit over when it next finds it \
                     as its branch tip; to remove the lock: {}\n",
                    stale.describe(),
                    self.retest_command(&ns.name)
                )
                .as_bytes(),
            );
        }
        if note("result.failed").is_none() && note("result.passed").is_none() {
            if let Some(lock) = lock {
                out.extend_from_slice(b"locked: ");
                push_plain(out, lock);
            }
        }
        for (name, title) in [("output.stdout", "stdout"), ("output.stderr", "stderr")] {
            if let Some(text) = note(name) {
                out.extend_from_slice(format!("\n-- {title} --\n").as_bytes());
                if text.is_empty() {
                    out.extend_from_slice(b"(empty)\n");
                } else {
                    push_text(out, text);
                }
            }
        }
        self.extra_notes(out, ns, found, sizes);
    }

    /// The names and sizes of the extra notes of `ns` on the commit, and
    /// the command that writes one to a file.
    fn extra_notes(
        &self,
        out: &mut Vec<u8>,
        ns: &Namespace,
        found: Found<'_>,
        sizes: &HashMap<String, u64>,
    ) {
        let present: Vec<(&str, u64)> = ns
            .extra_notes
            .iter()
            .filter_map(|name| {
                let blob = found.blob(&ns.name, name)?;
                Some((name.as_str(), sizes.get(blob).copied().unwrap_or(0)))
            })
            .collect();
        if present.is_empty() {
            return;
        }
        out.extend_from_slice(b"\n-- extra notes --\n");
        let width = present
            .iter()
            .map(|(name, _)| name.len())
            .max()
            .unwrap_or(0);
        for (name, size) in &present {
            let unit = if *size == 1 { "byte" } else { "bytes" };
            out.extend_from_slice(format!("{name:<width$}  {size} {unit}\n").as_bytes());
        }
        out.extend_from_slice(
            format!("write one to a file: {}\n", self.save_command(&ns.name)).as_bytes(),
        );
    }

    /// `icyci retest <id> --results-repo <where show read> --ns <ns>`; a
    /// password or token in the URL is masked (the line is on screen).
    fn retest_command(&self, ns: &str) -> String {
        let repo = match (&self.repo.repo, &self.repo.remote) {
            (Some(repo), _) => shell_quote(&mask_credentials(repo)),
            (None, Some(remote)) => format!("\"$(git remote get-url {})\"", shell_quote(remote)),
            (None, None) => std::env::current_dir().map_or_else(
                |_| ".".to_owned(),
                |dir| shell_quote(&dir.to_string_lossy()),
            ),
        };
        format!(
            "icyci retest {} --results-repo {repo} --ns {}",
            self.commit.id,
            shell_quote(ns)
        )
    }

    /// `icyci show <id> [--repo …|--remote …] --ns <ns> --note NAME --output FILE`.
    fn save_command(&self, ns: &str) -> String {
        let mut words = vec![
            "icyci".to_owned(),
            "show".to_owned(),
            self.commit.id.clone(),
        ];
        if let Some(repo) = &self.repo.repo {
            words.extend(["--repo".to_owned(), shell_quote(&mask_credentials(repo))]);
        }
        if let Some(remote) = &self.repo.remote {
            words.extend(["--remote".to_owned(), shell_quote(remote)]);
        }
        words.extend(["--ns".to_owned(), shell_quote(ns)]);
        words.extend(["--note", "NAME", "--output", "FILE"].map(str::to_owned));
        words.join(" ")
    }
}

/// Appends a note icyci writes (a verdict, a lock) with control characters
/// other than new lines and tabs shown as `?`: a hand-made note must not
/// drive the terminal. Outputs keep theirs (colours), as `git log` shows.
fn push_plain(out: &mut Vec<u8>, text: &[u8]) {
    let plain: String = String::from_utf8_lossy(text)
        .chars()
        .map(|c| match c {
            '\n' | '\t' => c,
            c if c.is_control() => '?',
            c => c,
        })
        .collect();
    push_text(out, plain.as_bytes());
}

/// Appends a note's bytes, ending in a new line.
fn push_text(out: &mut Vec<u8>, text: &[u8]) {
    out.extend_from_slice(text);
    if !text.ends_with(b"\n") {
        out.push(b'\n');
    }
}

/// `word` as one word for `sh`.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("icyci-aarch64"), "icyci-aarch64");
        assert_eq!(shell_quote("/srv/git/results.git"), "/srv/git/results.git");
        assert_eq!(shell_quote("my results"), "'my results'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
