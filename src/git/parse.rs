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
}
