//! The site's memory between runs, kept in `.icyci-site` in the output
//! directory: which renderer wrote it, which namespaces have badges, and for
//! every commit with a page the blob ids of the notes it was rendered from
//! and the namespaces where its lock was shown as stale.
//!
//! A commit whose notes still have the same blob ids, and whose locks are
//! stale in the same namespaces, is neither read nor rendered again: its
//! page can only have changed if a note did, or if a lease ended. The file
//! also names every file the site made, so that files of commits no longer
//! shown are removed without ever touching anything else in the directory.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::escape::file_name;

/// Name of the manifest file in the output directory.
pub const MANIFEST_FILE: &str = ".icyci-site";

/// Identifies the page format: pages written by another renderer are all
/// rendered again.
pub const RENDERER: &str = concat!("2 ", env!("CARGO_PKG_VERSION"));

/// Notes of one commit: `(namespace, note name)` to blob id.
pub type CommitNotes = BTreeMap<(String, String), String>;

/// The namespaces in which a commit's lock was shown as stale.
pub type StaleNamespaces = BTreeSet<String>;

/// Notes whose content is shown on the page rather than saved as a file.
const INLINE_NOTES: [&str; 3] = ["locked", "result.passed", "result.failed"];

/// What a previous run wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// [`RENDERER`] of the run that wrote it.
    pub renderer: String,
    /// Namespaces with a badge.
    pub namespaces: Vec<String>,
    /// Commits with a page, and their notes.
    pub commits: BTreeMap<String, CommitNotes>,
    /// Commits with a page that shows a stale lock, and in which
    /// namespaces (never an empty set).
    pub stale: BTreeMap<String, StaleNamespaces>,
}

impl Manifest {
    /// A manifest for this renderer.
    pub fn new(namespaces: Vec<String>) -> Self {
        Manifest {
            renderer: RENDERER.to_owned(),
            namespaces,
            commits: BTreeMap::new(),
            stale: BTreeMap::new(),
        }
    }

    /// The namespaces in which `commit`'s page shows a stale lock.
    pub fn stale_of(&self, commit: &str) -> StaleNamespaces {
        self.stale.get(commit).cloned().unwrap_or_default()
    }

    /// Records the namespaces in which `commit`'s page shows a stale lock.
    pub fn set_stale(&mut self, commit: &str, namespaces: StaleNamespaces) {
        if namespaces.is_empty() {
            self.stale.remove(commit);
        } else {
            self.stale.insert(commit.to_owned(), namespaces);
        }
    }

    /// Parses a manifest; lines it does not understand are skipped (the
    /// worst outcome is a page rendered again).
    pub fn parse(text: &str) -> Self {
        let mut manifest = Manifest::default();
        let mut current: Option<String> = None;
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            match fields.as_slice() {
                ["icyci-site", renderer @ ..] => manifest.renderer = renderer.join(" "),
                ["namespace", ns] => manifest.namespaces.push((*ns).to_owned()),
                ["commit", id] if is_object_id(id) => {
                    manifest.commits.entry((*id).to_owned()).or_default();
                    current = Some((*id).to_owned());
                }
                ["note", ns, name, blob] if is_object_id(blob) => {
                    if let Some(notes) = current.as_ref().and_then(|c| manifest.commits.get_mut(c))
                    {
                        notes.insert(((*ns).to_owned(), (*name).to_owned()), (*blob).to_owned());
                    }
                }
                ["stale", ns] => {
                    if let Some(commit) = &current {
                        manifest
                            .stale
                            .entry(commit.clone())
                            .or_default()
                            .insert((*ns).to_owned());
                    }
                }
                _ => {}
            }
        }
        manifest
    }

    /// The manifest as text, in a stable order.
    pub fn render(&self) -> String {
        let mut text = format!("icyci-site {}\n", self.renderer);
        for ns in &self.namespaces {
            let _ = writeln!(text, "namespace {ns}");
        }
        for (commit, notes) in &self.commits {
            let _ = writeln!(text, "commit {commit}");
            for ((ns, name), blob) in notes {
                let _ = writeln!(text, "note {ns} {name} {blob}");
            }
            for ns in self.stale.get(commit).into_iter().flatten() {
                let _ = writeln!(text, "stale {ns}");
            }
        }
        text
    }

    /// Every file the site holds for this manifest, relative to the output
    /// directory (the shared files excepted).
    pub fn files(&self) -> Vec<String> {
        let mut files: Vec<String> = self.namespaces.iter().map(|ns| badge_path(ns)).collect();
        for (commit, notes) in &self.commits {
            files.extend(commit_files(commit, notes));
        }
        files
    }
}

/// `commit/<id>.html`.
pub fn commit_page_path(commit: &str) -> String {
    format!("commit/{commit}.html")
}

/// `badge/<ns>.svg`.
pub fn badge_path(ns: &str) -> String {
    format!("badge/{}.svg", file_name(ns))
}

/// `raw/<id>/<ns>/<name>`.
pub fn raw_path(commit: &str, ns: &str, name: &str) -> String {
    format!("raw/{commit}/{}/{}", file_name(ns), file_name(name))
}

/// Whether a note is saved as a raw file (all but the lock and verdicts).
pub fn is_raw_note(name: &str) -> bool {
    !INLINE_NOTES.contains(&name)
}

/// The page and raw files of one commit.
pub fn commit_files(commit: &str, notes: &CommitNotes) -> Vec<String> {
    let mut files = vec![commit_page_path(commit)];
    files.extend(
        notes
            .keys()
            .filter(|(_, name)| is_raw_note(name))
            .map(|(ns, name)| raw_path(commit, ns, name)),
    );
    files
}

/// A hex object id: a manifest line naming anything else (a path) is not
/// trusted, since its files may be removed.
fn is_object_id(text: &str) -> bool {
    matches!(text.len(), 40 | 64) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef01234567";
    const B: &str = "89abcdef0123456789abcdef0123456789abcdef";

    fn sample() -> Manifest {
        let mut manifest = Manifest::new(vec!["icyci".into(), "icyci-arm".into()]);
        let mut notes = CommitNotes::new();
        notes.insert(("icyci".into(), "result.passed".into()), B.into());
        notes.insert(("icyci".into(), "output.stdout".into()), B.into());
        notes.insert(("icyci-arm".into(), "size".into()), B.into());
        manifest.commits.insert(A.into(), notes);
        manifest.set_stale(A, ["icyci-arm".to_owned()].into());
        manifest
    }

    #[test]
    fn round_trip() {
        let manifest = sample();
        assert!(
            manifest.render().contains("\nstale icyci-arm\n"),
            "{}",
            manifest.render()
        );
        assert_eq!(Manifest::parse(&manifest.render()), manifest);
        assert_eq!(manifest.renderer, RENDERER);
    }

    #[test]
    fn stale_namespaces() {
        let mut manifest = sample();
        assert_eq!(manifest.stale_of(A), ["icyci-arm".to_owned()].into());
        assert_eq!(manifest.stale_of(B), StaleNamespaces::new());
        manifest.set_stale(A, StaleNamespaces::new());
        assert!(manifest.stale.is_empty());
        assert!(!manifest.render().contains("stale"));
        // A stale line before any commit line belongs to no commit.
        assert!(Manifest::parse("stale icyci\n").stale.is_empty());
    }

    #[test]
    fn files_of_a_manifest() {
        assert_eq!(
            sample().files(),
            [
                "badge/icyci.svg".to_owned(),
                "badge/icyci-arm.svg".to_owned(),
                format!("commit/{A}.html"),
                format!("raw/{A}/icyci/output.stdout"),
                format!("raw/{A}/icyci-arm/size"),
            ]
        );
    }

    #[test]
    fn lines_naming_paths_are_ignored() {
        let parsed = Manifest::parse("icyci-site 1 x\ncommit ../../etc\nnote a b c\n");
        assert!(parsed.commits.is_empty());
        assert_eq!(parsed.renderer, "1 x");
    }
}
