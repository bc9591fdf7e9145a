//! Pure parsers for git's machine-readable output.

/// What happened to one ref in a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushStatus {
    /// Updated, created, forced or already up to date.
    Accepted,
    /// A lease (`--force-with-lease`) did not hold: the remote moved.
    StaleLease,
    /// Refused: the remote has work we do not (non-fast-forward, fetch
    /// first) or a hook or policy refused it.
    Rejected(String),
}

impl std::fmt::Display for PushStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushStatus::Accepted => f.write_str("accepted"),
            PushStatus::StaleLease => f.write_str("moved meanwhile (lease not held)"),
            PushStatus::Rejected(reason) => f.write_str(reason),
        }
    }
}

impl PushStatus {
    /// A refusal that only says another push updated the ref at the same
    /// moment (the remote's ref lock was taken): a lost race, not a policy.
    pub fn is_concurrent_update(&self) -> bool {
        matches!(self, PushStatus::Rejected(reason)
            if reason.contains("failed to update ref") || reason.contains("failed to lock"))
    }

    /// A refusal because the ref moved since it was read (another push
    /// got there first), as opposed to one by the remote's policy (a hook,
    /// a full disk, a protected ref).
    pub fn is_lost_race(&self) -> bool {
        match self {
            PushStatus::Accepted => false,
            PushStatus::StaleLease => true,
            PushStatus::Rejected(reason) => {
                self.is_concurrent_update()
                    || reason.starts_with("[rejected] (fetch first)")
                    || reason.starts_with("[rejected] (non-fast-forward)")
            }
        }
    }
}

/// What the remote said in a push's standard error (its `remote: ` lines,
/// such as a refusing hook's message), on one line; `None` when nothing.
pub fn remote_messages(stderr: &str) -> Option<String> {
    const MAX: usize = 300;
    let lines: Vec<&str> = stderr
        .lines()
        .filter_map(|line| line.strip_prefix("remote:"))
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    if lines.is_empty() {
        return None;
    }
    let mut text = lines.join(" / ");
    if text.len() > MAX {
        let mut end = MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    Some(text)
}

/// One line of `git push --porcelain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedRef {
    /// The destination ref on the remote.
    pub remote_ref: String,
    /// The outcome for that ref.
    pub status: PushStatus,
}

/// Parses `git push --porcelain` standard output: one
/// `<flag>\t<from>:<to>\t<summary>` line per ref.
pub fn parse_push_porcelain(stdout: &str) -> Vec<PushedRef> {
    stdout
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, '\t');
            let flag = fields.next()?;
            let refspec = fields.next()?;
            let summary = fields.next().unwrap_or("");
            let remote_ref = refspec
                .rsplit_once(':')
                .map_or(refspec, |(_, to)| to)
                .to_owned();
            let status = match flag {
                " " | "+" | "-" | "*" | "=" => PushStatus::Accepted,
                "!" if summary.contains("stale info") => PushStatus::StaleLease,
                "!" => PushStatus::Rejected(summary.to_owned()),
                _ => return None,
            };
            Some(PushedRef { remote_ref, status })
        })
        .collect()
}

/// A tag pointing at the tip, from `git for-each-ref --points-at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagAtTip {
    /// The object the ref points to: a tag object, or the commit itself for
    /// a lightweight tag.
    pub object: String,
    /// True for an annotated (possibly signed) tag object.
    pub annotated: bool,
    /// Full ref name, `refs/tags/...`.
    pub refname: String,
}

/// Parses lines of `%(objectname) %(objecttype) %(refname)`.
pub fn parse_tags_at(stdout: &str) -> Vec<TagAtTip> {
    stdout
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ' ');
            let object = fields.next()?.to_owned();
            let kind = fields.next()?;
            let refname = fields.next()?.to_owned();
            Some(TagAtTip {
                object,
                annotated: kind == "tag",
                refname,
            })
        })
        .collect()
}

/// One line of `.git/FETCH_HEAD`, which `git fetch` writes with every ref it
/// fetched: `<oid>\t[not-for-merge]\t<description>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedRef {
    /// The object the remote ref pointed to.
    pub oid: String,
    /// False for the refs named on the command line (or the configured
    /// merge branch); true for the rest, such as tags fetched because
    /// they point into the fetched history.
    pub not_for_merge: bool,
    /// The remote ref's name when git wrote it in full (`'refs/notes/x'
    /// of <url>`); `None` for the short forms (`branch 'main' of <url>`,
    /// `tag 'v1' of <url>`).
    pub full_name: Option<String>,
}

/// Parses the text of `FETCH_HEAD`; lines that do not look like git's are
/// skipped.
pub fn parse_fetch_head(text: &str) -> Vec<FetchedRef> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, '\t');
            let oid = fields.next()?;
            let marker = fields.next()?;
            let description = fields.next()?;
            if oid.is_empty() || !oid.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            let full_name = description
                .strip_prefix('\'')
                .and_then(|rest| rest.split_once("' of "))
                .map(|(name, _)| name)
                .filter(|name| name.starts_with("refs/"))
                .map(str::to_owned);
            Some(FetchedRef {
                oid: oid.to_owned(),
                not_for_merge: marker == "not-for-merge",
                full_name,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_porcelain_sample() {
        let sample = "To ../results\n\
            =\trefs/notes/icyci.locked:refs/notes/icyci.locked\t[up to date]\n\
            *\trefs/notes/icyci.output.stdout:refs/notes/icyci.output.stdout\t[new reference]\n\
            !\trefs/notes/icyci.result.passed:refs/notes/icyci.result.passed\t[rejected] (fetch first)\n\
            !\tabc:refs/heads/main\t[rejected] (stale info)\n\
            +\tabc:refs/heads/dev\t1234...5678 (forced update)\n\
            Done\n";
        let parsed = parse_push_porcelain(sample);
        assert_eq!(parsed.len(), 5);
        assert_eq!(parsed[0].status, PushStatus::Accepted);
        assert_eq!(parsed[1].remote_ref, "refs/notes/icyci.output.stdout");
        assert_eq!(
            parsed[2].status,
            PushStatus::Rejected("[rejected] (fetch first)".into())
        );
        assert_eq!(parsed[3].status, PushStatus::StaleLease);
        assert_eq!(parsed[4].remote_ref, "refs/heads/dev");
        assert_eq!(parsed[4].status, PushStatus::Accepted);
    }

    #[test]
    fn tags_at_tip_sample() {
        let sample = "1111 tag refs/tags/v1\n2222 commit refs/tags/light\n";
        let tags = parse_tags_at(sample);
        assert_eq!(tags.len(), 2);
        assert!(tags[0].annotated);
        assert!(!tags[1].annotated);
        assert_eq!(tags[1].refname, "refs/tags/light");
    }

    #[test]
    fn fetch_head_lines_are_read() {
        let text = "5877e5d05b82d6d7b1bfc4e22a5fec620b9349e1\t\tbranch 'main' of file:///tmp/src\n\
                    e1b2c86154e5282620578e65964f0ece86f1d65b\tnot-for-merge\ttag 'v4' of file:///tmp/src\n\
                    08f1a746ca554555a9088bf74adf65853a015f73\t\t'refs/notes/icyci.locked' of git://h/r\n\
                    garbage line\n";
        let refs = parse_fetch_head(text);
        assert_eq!(refs.len(), 3);
        assert!(!refs[0].not_for_merge);
        assert_eq!(refs[0].full_name, None);
        assert!(refs[1].not_for_merge);
        assert_eq!(refs[1].oid, "e1b2c86154e5282620578e65964f0ece86f1d65b");
        assert_eq!(
            refs[2].full_name.as_deref(),
            Some("refs/notes/icyci.locked")
        );
    }
}
