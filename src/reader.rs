//! Reading results back: which namespaces a results repository holds, what
//! state each commit is in per namespace, and the notes' contents.
//!
//! Built for big histories: only the notes of the commits asked about are
//! looked up, by path inside the notes trees (`<ref>:<path>`), in one
//! `git cat-file` process for any number of commits and refs, instead of
//! listing whole notes trees. Git spreads a large notes tree over fan-out
//! directories (`ab/cdef…`, then `ab/cd/ef…`), so each note is looked up at
//! every depth git may have used.

use std::collections::{BTreeMap, HashMap};

use crate::git::{Git, GitError};

/// The suffixes of the notes every namespace has (or may have).
pub const CORE_NOTES: [&str; 5] = [
    "locked",
    "result.passed",
    "result.failed",
    "output.stdout",
    "output.stderr",
];

/// Deepest fan-out looked at: git adds a level per 256-fold growth, so a
/// third level would take some 16 million notes in one ref.
const MAX_FANOUT: usize = 2;

/// The state of one commit in one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CommitState {
    /// A result.passed note and no result.failed note.
    Passed,
    /// A result.failed note.
    Failed,
    /// Locked, no result yet: being tested, or its tester died.
    Running,
    /// No notes at all in this namespace.
    Untested,
}

impl CommitState {
    /// Lower-case name used in tables, JSON and page classes.
    pub fn name(self) -> &'static str {
        match self {
            CommitState::Passed => "passed",
            CommitState::Failed => "failed",
            CommitState::Running => "running",
            CommitState::Untested => "untested",
        }
    }
}

/// One namespace found in the results repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// The prefix, e.g. `icyci` or `icyci-aarch64`.
    pub name: String,
    /// Names of its extra notes refs (files from `$ICYCI_NOTES_DIR`), sorted.
    pub extra_notes: Vec<String>,
}

/// A commit of the branch being looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    /// Full id.
    pub id: String,
    /// Committer time, seconds since the epoch.
    pub time: i64,
    /// Author name.
    pub author: String,
    /// First line of the message.
    pub subject: String,
}

/// Where a note was found: the blob id of every `(commit, note ref)` pair.
#[derive(Debug, Default, Clone)]
pub struct NoteIndex {
    blobs: HashMap<(String, String), String>,
}

impl NoteIndex {
    /// The blob of note `name` of namespace `ns` on `commit`.
    pub fn blob(&self, commit: &str, ns: &str, name: &str) -> Option<&str> {
        self.blobs
            .get(&(commit.to_owned(), format!("{ns}.{name}")))
            .map(String::as_str)
    }

    /// The state of `commit` in namespace `ns`.
    pub fn state(&self, commit: &str, ns: &str) -> CommitState {
        let has = |name| self.blob(commit, ns, name).is_some();
        if has("result.failed") {
            CommitState::Failed
        } else if has("result.passed") {
            CommitState::Passed
        } else if has("locked") {
            CommitState::Running
        } else {
            CommitState::Untested
        }
    }
}

/// Reads notes from a repository whose note refs live under `notes_prefix`
/// (`refs/notes/` normally, a private namespace for a remote's notes).
#[derive(Debug, Clone)]
pub struct ResultsReader {
    git: Git,
    notes_prefix: String,
}

impl ResultsReader {
    /// A reader over the repository of `git`.
    pub fn new(git: Git, notes_prefix: impl Into<String>) -> Self {
        ResultsReader {
            git,
            notes_prefix: notes_prefix.into(),
        }
    }

    /// The repository.
    pub fn git(&self) -> &Git {
        &self.git
    }

    /// Namespaces with at least one lock or result note ref, sorted by name,
    /// keeping those whose name matches `glob` (`*` and `?` wildcards).
    pub async fn namespaces(&self, glob: Option<&str>) -> Result<Vec<Namespace>, GitError> {
        let listing = self
            .git
            .command("for-each-ref")
            .arg("--format=%(refname)")
            .positional([&self.notes_prefix])
            .run()
            .await?;
        let names: Vec<&str> = listing
            .lines()
            .filter_map(|r| r.strip_prefix(self.notes_prefix.as_str()))
            .collect();
        Ok(group_namespaces(&names)
            .into_iter()
            .filter(|ns| glob.is_none_or(|g| glob_match(g, &ns.name)))
            .collect())
    }

    /// Up to `count` commits reachable from `rev`, newest first.
    pub async fn commits(&self, rev: &str, count: usize) -> Result<Vec<CommitInfo>, GitError> {
        let listing = self
            .git
            .command("log")
            .arg(format!("--max-count={count}"))
            .arg("--format=%H%x00%ct%x00%an%x00%s")
            .arg("--end-of-options")
            .arg(rev)
            .arg("--")
            .run()
            .await?;
        Ok(listing.lines().filter_map(parse_commit_line).collect())
    }

    /// Finds the notes `names` (e.g. `icyci.locked`) of `commits`, in one
    /// `cat-file --batch-check`.
    pub async fn index(&self, commits: &[String], names: &[String]) -> Result<NoteIndex, GitError> {
        let mut queries = Vec::new();
        let mut input = String::new();
        for commit in commits {
            for name in names {
                for path in fanout_paths(commit) {
                    input.push_str(&format!("{}{name}:{path}\n", self.notes_prefix));
                    queries.push((commit.clone(), name.clone()));
                }
            }
        }
        if queries.is_empty() {
            return Ok(NoteIndex::default());
        }
        let output = self
            .git
            .command("cat-file")
            .args(["--batch-check=%(objectname) %(objecttype)"])
            .stdin(input.into_bytes())
            .run()
            .await?;
        let mut index = NoteIndex::default();
        for (query, line) in queries.into_iter().zip(output.lines()) {
            if let Some(blob) = line.strip_suffix(" blob") {
                index.blobs.insert(query, blob.to_owned());
            }
        }
        Ok(index)
    }

    /// The contents of `blobs`, byte for byte, in one `cat-file --batch`.
    pub async fn read_blobs(&self, blobs: &[&str]) -> Result<HashMap<String, Vec<u8>>, GitError> {
        if blobs.is_empty() {
            return Ok(HashMap::new());
        }
        let output = self.cat_file(blobs, "--batch").await?;
        Ok(parse_batch(&output))
    }

    /// The sizes in bytes of `blobs`, in one `cat-file --batch-check`,
    /// without reading their contents.
    pub async fn blob_sizes(&self, blobs: &[&str]) -> Result<HashMap<String, u64>, GitError> {
        if blobs.is_empty() {
            return Ok(HashMap::new());
        }
        let output = self
            .cat_file(blobs, "--batch-check=%(objectname) %(objectsize)")
            .await?;
        Ok(String::from_utf8_lossy(&output)
            .lines()
            .filter_map(|line| {
                let (oid, size) = line.split_once(' ')?;
                Some((oid.to_owned(), size.parse().ok()?))
            })
            .collect())
    }

    /// `git cat-file <mode>` over `objects`, one per line; its raw output.
    async fn cat_file(&self, objects: &[&str], mode: &str) -> Result<Vec<u8>, GitError> {
        let input: String = objects.iter().map(|o| format!("{o}\n")).collect();
        let output = self
            .git
            .command("cat-file")
            .arg(mode)
            .stdin(input.into_bytes())
            .output()
            .await?
            .into_result()?;
        Ok(output.stdout)
    }

    /// One note's content, or `None` when `commit` has no such note.
    pub async fn note(
        &self,
        commit: &str,
        ns: &str,
        name: &str,
    ) -> Result<Option<Vec<u8>>, GitError> {
        let names = [format!("{ns}.{name}")];
        let index = self.index(&[commit.to_owned()], &names).await?;
        let Some(blob) = index.blob(commit, ns, name) else {
            return Ok(None);
        };
        let mut contents = self.read_blobs(&[blob]).await?;
        Ok(contents.remove(blob))
    }
}

/// Groups note ref names (without prefix) into namespaces.
fn group_namespaces(names: &[&str]) -> Vec<Namespace> {
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in names {
        for core in ["locked", "result.passed", "result.failed"] {
            if let Some(ns) = name.strip_suffix(core).and_then(|n| n.strip_suffix('.')) {
                found.entry(ns.to_owned()).or_default();
            }
        }
    }
    for name in names {
        // The longest namespace that prefixes the ref owns it.
        let owner = found
            .keys()
            .filter(|ns| name.starts_with(&format!("{ns}.")))
            .max_by_key(|ns| ns.len())
            .cloned();
        if let Some(ns) = owner {
            let note = &name[ns.len() + 1..];
            if !CORE_NOTES.contains(&note) {
                found
                    .get_mut(&ns)
                    .expect("owner is a key")
                    .push(note.to_owned());
            }
        }
    }
    found
        .into_iter()
        .map(|(name, mut extra_notes)| {
            extra_notes.sort();
            Namespace { name, extra_notes }
        })
        .collect()
}

/// Every path at which git may store the note of `commit`.
fn fanout_paths(commit: &str) -> Vec<String> {
    (0..=MAX_FANOUT)
        .filter(|depth| commit.len() > depth * 2)
        .map(|depth| {
            let mut path = String::new();
            for level in 0..depth {
                path.push_str(&commit[level * 2..level * 2 + 2]);
                path.push('/');
            }
            path.push_str(&commit[depth * 2..]);
            path
        })
        .collect()
}

fn parse_commit_line(line: &str) -> Option<CommitInfo> {
    let mut fields = line.splitn(4, '\0');
    Some(CommitInfo {
        id: fields.next()?.to_owned(),
        time: fields.next()?.parse().ok()?,
        author: fields.next()?.to_owned(),
        subject: fields.next().unwrap_or("").to_owned(),
    })
}

/// Parses `git cat-file --batch` output: `<oid> <type> <size>\n<bytes>\n`.
fn parse_batch(mut output: &[u8]) -> HashMap<String, Vec<u8>> {
    let mut contents = HashMap::new();
    while let Some(end) = output.iter().position(|b| *b == b'\n') {
        let header = String::from_utf8_lossy(&output[..end]).into_owned();
        output = &output[end + 1..];
        let mut fields = header.split(' ');
        let (Some(oid), Some(_kind), Some(size)) = (fields.next(), fields.next(), fields.next())
        else {
            continue; // `<oid> missing`
        };
        let Ok(size) = size.parse::<usize>() else {
            break;
        };
        if output.len() < size {
            break;
        }
        contents.insert(oid.to_owned(), output[..size].to_vec());
        output = output.get(size + 1..).unwrap_or_default();
    }
    contents
}

/// Shell-style matching with `*` (any run) and `?` (one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (pattern, text): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), text.chars().collect());
    let (mut p, mut t, mut star, mut mark) = (0, 0, None, 0);
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some(p);
            mark = t;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_and_their_extra_notes() {
        let refs = [
            "icyci.locked",
            "icyci.result.passed",
            "icyci.output.stdout",
            "icyci.summary",
            "icyci-aarch64.locked",
            "icyci-aarch64.result.failed",
            "icyci-aarch64.size",
            "unrelated",
        ];
        let found = group_namespaces(&refs);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].name, "icyci");
        assert_eq!(found[0].extra_notes, ["summary"]);
        assert_eq!(found[1].name, "icyci-aarch64");
        assert_eq!(found[1].extra_notes, ["size"]);
    }

    #[test]
    fn fanout_paths_cover_every_depth() {
        let id = "0123456789abcdef0123456789abcdef01234567";
        let paths = fanout_paths(id);
        assert_eq!(paths[0], id);
        assert_eq!(paths[1], format!("01/{}", &id[2..]));
        assert_eq!(paths[2], format!("01/23/{}", &id[4..]));
        assert_eq!(paths.len(), MAX_FANOUT + 1);
    }

    #[test]
    fn batch_output_is_binary_safe() {
        let mut output = b"aaa blob 3\n\x00\n\xff\n".to_vec();
        output.extend_from_slice(b"bbb missing\n");
        output.extend_from_slice(b"ccc blob 0\n\n");
        let parsed = parse_batch(&output);
        assert_eq!(parsed["aaa"], b"\x00\n\xff");
        assert_eq!(parsed["ccc"], b"");
        assert!(!parsed.contains_key("bbb"));
    }

    #[test]
    fn globs() {
        assert!(glob_match("icyci*", "icyci-aarch64"));
        assert!(glob_match("icyci", "icyci"));
        assert!(!glob_match("icyci", "icyci-x"));
        assert!(glob_match("*-x86-??", "icyci-x86-64"));
        assert!(!glob_match("a*b", "ac"));
    }
}
