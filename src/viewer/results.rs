//! `icyci results`: the newest commits of a branch, one row each, with the
//! state of every namespace in a column of its own; or the same as JSON.
//!
//! Only the shown commits' notes are looked up ([`ResultsReader::index`]),
//! so the cost does not grow with the number of noted commits. A lock
//! without result whose lease has ended shows as `stale` in the table; in
//! JSON its state stays `running` (as before) and the commit's `stale`
//! object says why.
//!
//! [`ResultsReader::index`]: crate::reader::ResultsReader::index

use std::collections::BTreeMap;
use std::process::ExitCode;

use serde::Serialize;

use super::stale::{LockJudge, ShownState};
use super::terminal::{paint, Style};
use super::{
    format_date, select_namespaces, short_id, source, state_note_names, write_stdout, ViewerError,
};
use crate::commands::{Format, ResultsArgs};
use crate::lease::format_unix;
use crate::reader::{CommitInfo, CommitState};

/// Separator between table columns.
const GAP: &str = "  ";
/// On a terminal, subjects are cut to fit, but never below this width.
const MIN_SUBJECT: usize = 12;
/// On a terminal, longer author names are cut.
const MAX_AUTHOR: usize = 20;
/// Index of the subject in a row's cells.
const SUBJECT_COLUMN: usize = 3;
/// Index of the author in a row's cells.
const AUTHOR_COLUMN: usize = 2;

/// One commit and its state in each listed namespace, in order.
#[derive(Debug, Clone)]
struct Row {
    commit: CommitInfo,
    states: Vec<ShownState>,
}

pub(super) async fn run(args: ResultsArgs) -> Result<ExitCode, ViewerError> {
    let source = source::open(&args.repo, args.branch.as_deref()).await?;
    let reader = &source.reader;
    let namespaces =
        select_namespaces(reader, args.ns.as_deref(), &source.label, "results").await?;
    let names: Vec<String> = namespaces.into_iter().map(|ns| ns.name).collect();

    let commits = reader.commits(&source.rev, args.count).await?;
    let ids: Vec<String> = commits.iter().map(|c| c.id.clone()).collect();
    let index = reader
        .index(&ids, &state_note_names(names.iter().map(String::as_str)))
        .await?;
    let states = LockJudge::at_now(None)
        .states(reader, &index, &ids, &names)
        .await?;
    let rows: Vec<Row> = commits
        .into_iter()
        .zip(states)
        .map(|(commit, states)| Row { commit, states })
        .collect();

    let text = match args.format {
        Format::Table => render_table(&names, &rows, Style::for_stdout()),
        Format::Json => render_json(&source.label, &source.rev, &names, &rows),
    };
    write_stdout(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// A table cell: its text and, on a terminal, its colour.
struct Cell {
    text: String,
    colour: &'static str,
}

impl Cell {
    fn new(text: impl Into<String>) -> Cell {
        Cell {
            text: printable(&text.into()),
            colour: "",
        }
    }

    fn state(state: &ShownState) -> Cell {
        let colour = match state.state {
            _ if state.stale.is_some() => "35",
            CommitState::Passed => "32",
            CommitState::Failed => "31",
            CommitState::Running => "33",
            CommitState::Untested => "2",
        };
        Cell {
            text: state.name().to_owned(),
            colour,
        }
    }
}

/// The table: a header, then one line per row. Columns are as wide as
/// their widest cell; with `style.width`, long authors and subjects are cut
/// so that a line fits.
fn render_table(namespaces: &[String], rows: &[Row], style: Style) -> String {
    let mut header: Vec<Cell> = ["commit", "date", "author", "subject"]
        .into_iter()
        .chain(namespaces.iter().map(String::as_str))
        .map(Cell::new)
        .collect();
    for cell in &mut header {
        cell.colour = "1";
    }
    let mut lines: Vec<Vec<Cell>> = vec![header];
    lines.extend(rows.iter().map(|row| {
        let commit = &row.commit;
        [
            Cell::new(short_id(&commit.id)),
            Cell::new(format_date(commit.time)),
            Cell::new(commit.author.as_str()),
            Cell::new(commit.subject.as_str()),
        ]
        .into_iter()
        .chain(row.states.iter().map(Cell::state))
        .collect()
    }));

    let widths = column_widths(&lines, style.width);
    let mut out = String::new();
    for line in &lines {
        let last = line.len() - 1;
        for (column, cell) in line.iter().enumerate() {
            let text = truncate(&cell.text, widths[column]);
            out.push_str(&paint(
                &text,
                cell.colour,
                style.colour && !cell.colour.is_empty(),
            ));
            if column < last {
                let padding = widths[column] - text.chars().count();
                out.push_str(&" ".repeat(padding));
                out.push_str(GAP);
            }
        }
        out.push('\n');
    }
    out
}

/// The width of each column: its widest cell, the author and subject
/// narrowed when the line must fit into `fit` columns.
fn column_widths(lines: &[Vec<Cell>], fit: Option<usize>) -> Vec<usize> {
    let columns = lines.first().map_or(0, Vec::len);
    let mut widths: Vec<usize> = (0..columns)
        .map(|column| {
            lines
                .iter()
                .map(|line| line[column].text.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let Some(fit) = fit else {
        return widths;
    };
    widths[AUTHOR_COLUMN] = widths[AUTHOR_COLUMN].min(MAX_AUTHOR);
    let others: usize = widths
        .iter()
        .enumerate()
        .filter(|(column, _)| *column != SUBJECT_COLUMN)
        .map(|(_, width)| width + GAP.len())
        .sum();
    // Every column but one has a gap beside it: `others` counts them all.
    let room = fit.saturating_sub(others);
    widths[SUBJECT_COLUMN] = widths[SUBJECT_COLUMN].min(room.max(MIN_SUBJECT));
    widths
}

/// `text` cut to `width` characters, the last one an ellipsis when cut.
fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    if width > 0 {
        cut.push('…');
    }
    cut
}

/// `text` with control characters (escape sequences from a commit message
/// would drive the terminal) shown as `?`.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[derive(Serialize)]
struct JsonResults<'a> {
    repository: &'a str,
    branch: &'a str,
    namespaces: &'a [String],
    commits: Vec<JsonCommit<'a>>,
}

#[derive(Serialize)]
struct JsonCommit<'a> {
    id: &'a str,
    short: &'a str,
    /// Committer time, RFC 3339 in UTC.
    time: String,
    author: &'a str,
    subject: &'a str,
    /// Namespace name to state name (`running` for a stale lock too).
    results: BTreeMap<&'a str, &'static str>,
    /// Namespace name to its stale lock, for each namespace where the
    /// commit has one: locked, no result, and the lease has ended.
    stale: BTreeMap<&'a str, JsonStale>,
}

/// A lock whose holder is gone.
#[derive(Serialize)]
struct JsonStale {
    /// When its lease ended, RFC 3339 in UTC.
    lease_until: Option<String>,
    /// `<host> pid <pid> id <instance id>`, when the note names it.
    holder: Option<String>,
}

fn render_json(repository: &str, branch: &str, namespaces: &[String], rows: &[Row]) -> String {
    let commits = rows
        .iter()
        .map(|row| JsonCommit {
            id: &row.commit.id,
            short: short_id(&row.commit.id),
            time: chrono::DateTime::from_timestamp(row.commit.time, 0)
                .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default(),
            author: &row.commit.author,
            subject: &row.commit.subject,
            results: namespaces
                .iter()
                .map(String::as_str)
                .zip(row.states.iter().map(|state| state.state.name()))
                .collect(),
            stale: namespaces
                .iter()
                .map(String::as_str)
                .zip(&row.states)
                .filter_map(|(ns, state)| {
                    let stale = state.stale.as_ref()?;
                    let entry = JsonStale {
                        lease_until: stale.lease_until.map(format_unix),
                        holder: stale.holder.as_ref().map(ToString::to_string),
                    };
                    Some((ns, entry))
                })
                .collect(),
        })
        .collect();
    let document = JsonResults {
        repository,
        branch,
        namespaces,
        commits,
    };
    let mut text = serde_json::to_string_pretty(&document)
        .expect("strings and maps with string keys always serialize");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::Holder;
    use crate::viewer::stale::StaleLock;

    fn row(id: &str, time: i64, subject: &str, states: &[ShownState]) -> Row {
        Row {
            commit: CommitInfo {
                id: id.to_owned(),
                time,
                author: "A U Thor".to_owned(),
                subject: subject.to_owned(),
            },
            states: states.to_vec(),
        }
    }

    /// A lock whose lease ended at 2024-02-28T12:00:00Z.
    fn stale() -> ShownState {
        ShownState {
            state: CommitState::Running,
            stale: Some(StaleLock {
                reason: "lease expired 2024-02-28T12:00:00Z".to_owned(),
                holder: Some(Holder {
                    host: "build1".to_owned(),
                    pid: 42,
                    id: "00112233aabbccdd".to_owned(),
                }),
                lease_until: Some(1_709_121_600),
            }),
        }
    }

    fn sample() -> (Vec<String>, Vec<Row>) {
        let namespaces = vec!["icyci".to_owned(), "icyci-aarch64".to_owned()];
        let rows = vec![
            row(
                "0123456789abcdef0123456789abcdef01234567",
                1_709_287_200,
                "a rather long subject that will not fit on a narrow terminal",
                &[CommitState::Passed.into(), CommitState::Running.into()],
            ),
            row(
                "fedcba9876543210fedcba9876543210fedcba98",
                1_709_200_800,
                "short \x1b[31m",
                &[CommitState::Failed.into(), CommitState::Untested.into()],
            ),
            row(
                "89abcdef0123456789abcdef0123456789abcdef",
                1_709_114_400,
                "its tester died",
                &[stale(), CommitState::Passed.into()],
            ),
        ];
        (namespaces, rows)
    }

    #[test]
    fn plain_table_is_aligned_and_uncut() {
        let (namespaces, rows) = sample();
        let table = render_table(&namespaces, &rows, Style::plain());
        let expected = "\
commit      date              author    subject                                                       icyci   icyci-aarch64
0123456789  2024-03-01 10:00  A U Thor  a rather long subject that will not fit on a narrow terminal  passed  running
fedcba9876  2024-02-29 10:00  A U Thor  short ?[31m                                                   failed  untested
89abcdef01  2024-02-28 10:00  A U Thor  its tester died                                               stale   passed
";
        assert_eq!(table, expected);
    }

    #[test]
    fn terminal_table_is_coloured_and_fits() {
        let (namespaces, rows) = sample();
        let style = Style {
            colour: true,
            width: Some(80),
        };
        let table = render_table(&namespaces, &rows, style);
        let plain = strip_ansi(&table);
        for line in plain.lines() {
            assert!(line.chars().count() <= 80, "{line:?} is wider than 80");
        }
        let expected = "\
commit      date              author    subject            icyci   icyci-aarch64
0123456789  2024-03-01 10:00  A U Thor  a rather long su…  passed  running
fedcba9876  2024-02-29 10:00  A U Thor  short ?[31m        failed  untested
89abcdef01  2024-02-28 10:00  A U Thor  its tester died    stale   passed
";
        assert_eq!(plain, expected);
        assert_eq!(plain.lines().next().map(|l| l.chars().count()), Some(80));
        assert!(table.contains("\x1b[32mpassed\x1b[0m"), "{table:?}");
        assert!(table.contains("\x1b[31mfailed\x1b[0m"), "{table:?}");
        assert!(table.contains("\x1b[33mrunning\x1b[0m"), "{table:?}");
        assert!(table.contains("\x1b[2muntested\x1b[0m"), "{table:?}");
        assert!(table.contains("\x1b[35mstale\x1b[0m"), "{table:?}");
    }

    #[test]
    fn json_has_every_field() {
        let (namespaces, rows) = sample();
        let text = render_json("results.git", "refs/heads/main", &namespaces, &rows);
        let value: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(value["repository"], "results.git");
        assert_eq!(value["branch"], "refs/heads/main");
        assert_eq!(value["namespaces"][1], "icyci-aarch64");
        let first = &value["commits"][0];
        assert_eq!(first["short"], "0123456789");
        assert_eq!(first["time"], "2024-03-01T10:00:00Z");
        assert_eq!(first["results"]["icyci"], "passed");
        assert_eq!(first["results"]["icyci-aarch64"], "running");
        assert_eq!(value["commits"][1]["subject"], "short \x1b[31m");
        // A stale lock: still `running` in `results`, explained in `stale`.
        assert_eq!(first["stale"], serde_json::json!({}));
        let third = &value["commits"][2];
        assert_eq!(
            third["results"],
            serde_json::json!({"icyci": "running", "icyci-aarch64": "passed"})
        );
        assert_eq!(
            third["stale"],
            serde_json::json!({"icyci": {
                "lease_until": "2024-02-28T12:00:00Z",
                "holder": "build1 pid 42 id 00112233aabbccdd",
            }})
        );
    }

    #[test]
    fn truncation() {
        assert_eq!(truncate("abcdef", 6), "abcdef");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abcdef", 0), "");
    }

    fn strip_ansi(text: &str) -> String {
        let mut out = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }
}
