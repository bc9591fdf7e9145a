//! The site's files as text: the index with its commit × namespace matrix,
//! one page per commit, the Atom feed, the badges and the stylesheet.
//!
//! Rendering is pure: the same inputs give the same bytes. Times are the
//! commits' own, shown in UTC; nothing depends on the clock, the output
//! directory or the order of a hash map (whether a lock is stale is decided
//! before, and given in [`ShownState`]). Every link is relative, so the site
//! reads the same from `file://` and from any web server.

use std::fmt::Write;

use chrono::DateTime;

use super::ansi;
use super::escape::{anchor, escape, href};
use super::manifest::{badge_path, commit_page_path, raw_path};
use crate::reader::{CommitInfo, CommitState};
use crate::viewer::stale::ShownState;

/// The stylesheet, written as `style.css`.
pub const STYLE: &str = include_str!("style.css");

/// A log longer than this many lines is cut to its end on the page.
pub const MAX_LOG_LINES: usize = 2000;
/// A log longer than this many bytes is cut to its end on the page.
pub const MAX_LOG_BYTES: usize = 256 * 1024;

/// What the site shows, for titles.
#[derive(Debug, Clone)]
pub struct SiteInfo<'a> {
    /// Where the results come from (credentials masked).
    pub label: &'a str,
    /// The branch shown.
    pub branch: &'a str,
    /// Namespaces shown, sorted.
    pub namespaces: &'a [String],
}

/// One commit of the index: its states, in the order of the namespaces.
#[derive(Debug, Clone)]
pub struct Row<'a> {
    /// The commit.
    pub commit: &'a CommitInfo,
    /// State per namespace.
    pub states: Vec<ShownState>,
    /// Whether the commit has a page (any note in a shown namespace).
    pub has_page: bool,
}

/// One namespace's notes on a commit page.
#[derive(Debug, Clone)]
pub struct Section<'a> {
    /// The namespace.
    pub ns: &'a str,
    /// Its state.
    pub state: ShownState,
    /// The result.failed note, else the result.passed note.
    pub verdict: Option<&'a [u8]>,
    /// The lock note.
    pub lock: Option<&'a [u8]>,
    /// The output.stdout note.
    pub stdout: Option<&'a [u8]>,
    /// The output.stderr note.
    pub stderr: Option<&'a [u8]>,
    /// Extra notes: name and size in bytes.
    pub extras: Vec<(&'a str, usize)>,
}

/// `index.html`.
pub fn index(site: &SiteInfo<'_>, rows: &[Row<'_>]) -> String {
    let mut html = String::new();
    let title = format!("icyci results: {} ({})", site.label, site.branch);
    head(&mut html, &title, "");
    let _ = write!(
        html,
        "<header>\n<h1>icyci results</h1>\n<p class=\"meta\">{} · branch <code>{}</code> · \
         {} commit{}, newest first · <a href=\"feed.atom\">Atom feed</a></p>\n",
        escape(site.label),
        escape(site.branch),
        rows.len(),
        if rows.len() == 1 { "" } else { "s" },
    );
    if let Some(tip) = rows.first() {
        html.push_str("<p class=\"badges\">Branch tip: ");
        for (ns, state) in site.namespaces.iter().zip(&tip.states) {
            let _ = write!(
                html,
                "<img src=\"{}\" alt=\"{}: {}\" height=\"20\"> ",
                href(&badge_path(ns)),
                escape(ns),
                state.name()
            );
        }
        html.push_str("</p>\n");
    }
    html.push_str("</header>\n<main>\n");

    html.push_str(
        "<table class=\"matrix\">\n<thead>\n<tr><th scope=\"col\">commit</th>\
         <th scope=\"col\">date (UTC)</th><th scope=\"col\">author</th>\
         <th scope=\"col\">subject</th>",
    );
    for ns in site.namespaces {
        let _ = write!(html, "<th scope=\"col\" class=\"ns\">{}</th>", escape(ns));
    }
    html.push_str("</tr>\n</thead>\n<tbody>\n");
    for row in rows {
        index_row(&mut html, site, row);
    }
    html.push_str("</tbody>\n</table>\n</main>\n");
    footer(&mut html);
    html
}

fn index_row(html: &mut String, site: &SiteInfo<'_>, row: &Row<'_>) {
    let commit = row.commit;
    let page = href(&commit_page_path(&commit.id));
    let short = short_id(&commit.id);
    html.push_str("<tr>");
    if row.has_page {
        let _ = write!(
            html,
            "<td class=\"id\"><a href=\"{page}\"><code>{short}</code></a></td>"
        );
    } else {
        let _ = write!(html, "<td class=\"id\"><code>{short}</code></td>");
    }
    let _ = write!(
        html,
        "<td class=\"date\">{}</td><td class=\"author\">{}</td><td class=\"subject\">{}</td>",
        date(commit.time),
        escape(&commit.author),
        escape(&commit.subject)
    );
    for (ns, state) in site.namespaces.iter().zip(&row.states) {
        let label = state_label(state);
        if state.state == CommitState::Untested {
            let _ = write!(html, "<td class=\"state untested\">{label}</td>");
        } else {
            let title = state.stale.as_ref().map_or_else(String::new, |stale| {
                format!(" title=\"stale lock: {}\"", escape(&stale.describe()))
            });
            let _ = write!(
                html,
                "<td class=\"state {}\"{title}><a href=\"{page}#{}\">{label}</a></td>",
                state.name(),
                anchor(ns)
            );
        }
    }
    html.push_str("</tr>\n");
}

/// `commit/<id>.html`.
pub fn commit_page(commit: &CommitInfo, sections: &[Section<'_>]) -> String {
    let mut html = String::new();
    let short = short_id(&commit.id);
    head(&mut html, &format!("{short} {}", commit.subject), "../");
    let _ = write!(
        html,
        "<header>\n<nav><a href=\"../index.html\">← all commits</a></nav>\n\
         <h1>commit <code>{short}</code></h1>\n<p class=\"subject\">{}</p>\n\
         <dl class=\"meta\"><dt>commit</dt><dd><code>{}</code></dd>\
         <dt>author</dt><dd>{}</dd><dt>date</dt><dd>{} UTC</dd></dl>\n<ul class=\"summary\">\n",
        escape(&commit.subject),
        escape(&commit.id),
        escape(&commit.author),
        date(commit.time),
    );
    for section in sections {
        let _ = writeln!(
            html,
            "<li><a href=\"#{}\">{}</a> <span class=\"state {}\">{}</span></li>",
            anchor(section.ns),
            escape(section.ns),
            section.state.name(),
            state_label(&section.state)
        );
    }
    html.push_str("</ul>\n</header>\n<main>\n");
    for section in sections {
        commit_section(&mut html, &commit.id, section);
    }
    html.push_str("</main>\n");
    footer(&mut html);
    html
}

fn commit_section(html: &mut String, commit: &str, section: &Section<'_>) {
    let ns = section.ns;
    let _ = write!(
        html,
        "<section class=\"ns\" id=\"{}\">\n<h2>{} <span class=\"state {}\">{}</span></h2>\n",
        anchor(ns),
        escape(ns),
        section.state.name(),
        state_label(&section.state)
    );
    if let Some(stale) = &section.state.stale {
        let _ = writeln!(
            html,
            "<p class=\"stale\"><strong>Stale lock:</strong> {}; no result. Its holder is gone: \
             an instance takes the commit over when it next finds it as its branch tip, and \
             <code>icyci retest {} --results-repo <var>URL</var> --ns {}</code> removes the \
             lock.</p>",
            escape(&stale.describe()),
            escape(commit),
            escape(ns)
        );
    }
    if let Some(verdict) = section.verdict {
        let _ = writeln!(
            html,
            "<pre class=\"verdict\">{}</pre>",
            escape(String::from_utf8_lossy(verdict).trim_end())
        );
    }
    if let Some(lock) = section.lock {
        let _ = writeln!(
            html,
            "<p class=\"lock\">Lock: {}</p>",
            escape(String::from_utf8_lossy(lock).trim_end())
        );
    }
    for (title, name, log) in [
        ("stdout", "output.stdout", section.stdout),
        ("stderr", "output.stderr", section.stderr),
    ] {
        if let Some(log) = log {
            log_block(html, title, &raw_link(commit, ns, name), log);
        }
    }
    if !section.extras.is_empty() {
        html.push_str("<h3>Extra notes</h3>\n<ul class=\"extras\">\n");
        for (name, size) in &section.extras {
            let _ = writeln!(
                html,
                "<li><a href=\"{}\">{}</a> <span class=\"size\">({})</span></li>",
                raw_link(commit, ns, name),
                escape(name),
                bytes(*size)
            );
        }
        html.push_str("</ul>\n");
    }
    html.push_str("</section>\n");
}

fn log_block(html: &mut String, title: &str, raw: &str, log: &[u8]) {
    let _ = write!(
        html,
        "<h3>{title}</h3>\n<p class=\"raw\"><a href=\"{raw}\">raw {title}</a> \
         <span class=\"size\">({})</span></p>\n",
        bytes(log.len())
    );
    if log.is_empty() {
        html.push_str("<p class=\"empty\">(empty)</p>\n");
        return;
    }
    let tail = log_tail(log);
    if tail.shown_from > 0 {
        let _ = writeln!(
            html,
            "<p class=\"cut\">Long log: showing its last {} of {} lines. \
             <a href=\"{raw}\">Full {title}</a> ({}).</p>",
            tail.shown_lines,
            tail.total_lines,
            bytes(log.len())
        );
    }
    let text = String::from_utf8_lossy(&log[tail.shown_from..]);
    let _ = writeln!(html, "<pre class=\"log\">{}</pre>", ansi::to_html(&text));
}

/// Where the shown part of a long log starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LogTail {
    /// Byte offset of the first byte shown.
    shown_from: usize,
    shown_lines: usize,
    total_lines: usize,
}

/// The end of `log` that fits both [`MAX_LOG_LINES`] and [`MAX_LOG_BYTES`],
/// starting at a line boundary when there is one to start at.
fn log_tail(log: &[u8]) -> LogTail {
    let count_lines = |bytes: &[u8]| {
        let newlines = bytes.iter().filter(|b| **b == b'\n').count();
        newlines + usize::from(!bytes.is_empty() && !bytes.ends_with(b"\n"))
    };
    let total_lines = count_lines(log);
    let mut start = log.len().saturating_sub(MAX_LOG_BYTES);
    if start > 0 {
        if let Some(newline) = log[start - 1..].iter().position(|b| *b == b'\n') {
            start += newline;
        }
    }
    if count_lines(&log[start..]) > MAX_LOG_LINES {
        // The newline ending the line just before the kept ones.
        let body = log[start..].strip_suffix(b"\n").unwrap_or(&log[start..]);
        let cut = body
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, b)| **b == b'\n')
            .nth(MAX_LOG_LINES - 1)
            .map(|(i, _)| i);
        if let Some(i) = cut {
            start += i + 1;
        }
    }
    LogTail {
        shown_from: start,
        shown_lines: count_lines(&log[start..]),
        total_lines,
    }
}

/// `feed.atom`: one entry per finished result (passed or failed) of a shown
/// commit in a shown namespace. A result's entry id names its state, so a
/// reader sees a new entry when a running commit finishes.
pub fn feed(site: &SiteInfo<'_>, rows: &[Row<'_>]) -> String {
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n");
    let updated = rows.iter().map(|r| r.commit.time).max().unwrap_or(0);
    let _ = write!(
        xml,
        "<feed xmlns=\"http://www.w3.org/2005/Atom\">\n\
         <title>icyci results: {} ({})</title>\n\
         <id>urn:icyci:feed:{:016x}</id>\n<updated>{}</updated>\n\
         <link rel=\"alternate\" type=\"text/html\" href=\"index.html\"/>\n\
         <generator version=\"{}\">icyci</generator>\n",
        escape(site.label),
        escape(site.branch),
        fnv1a(&format!("{}\n{}", site.label, site.branch)),
        timestamp(updated),
        env!("CARGO_PKG_VERSION"),
    );
    for row in rows {
        for (ns, state) in site.namespaces.iter().zip(&row.states) {
            if matches!(state.state, CommitState::Passed | CommitState::Failed) {
                feed_entry(&mut xml, row.commit, ns, state.state);
            }
        }
    }
    xml.push_str("</feed>\n");
    xml
}

fn feed_entry(xml: &mut String, commit: &CommitInfo, ns: &str, state: CommitState) {
    let short = short_id(&commit.id);
    let author = if commit.author.trim().is_empty() {
        "unknown"
    } else {
        &commit.author
    };
    let _ = write!(
        xml,
        "<entry>\n<title>{}: {} {} ({})</title>\n\
         <id>urn:icyci:result:{}:{}:{}</id>\n<updated>{}</updated>\n\
         <author><name>{}</name></author>\n\
         <link rel=\"alternate\" type=\"text/html\" href=\"{}#{}\"/>\n\
         <summary>{} {} in {}: {}</summary>\n</entry>\n",
        state.name(),
        short,
        escape(&commit.subject),
        escape(ns),
        commit.id,
        super::escape::file_name(ns),
        state.name(),
        timestamp(commit.time),
        escape(author),
        href(&commit_page_path(&commit.id)),
        anchor(ns),
        escape(&commit.id),
        escape(&commit.subject),
        escape(ns),
        state.name(),
    );
}

/// `badge/<ns>.svg`: the namespace and the tip's state, coloured.
pub fn badge(ns: &str, state: &ShownState) -> String {
    let (left, right) = (text_width(ns), text_width(state.name()));
    let colour = match state.state {
        _ if state.stale.is_some() => "#bc4c00",
        CommitState::Passed => "#1a7f37",
        CommitState::Failed => "#cf222e",
        CommitState::Running => "#9a6700",
        CommitState::Untested => "#6e7781",
    };
    let label = escape(&format!("{ns}: {}", state.name()));
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{total}\" height=\"20\" \
         role=\"img\" aria-label=\"{label}\">\n<title>{label}</title>\n\
         <rect width=\"{left}\" height=\"20\" fill=\"#555\"/>\n\
         <rect x=\"{left}\" width=\"{right}\" height=\"20\" fill=\"{colour}\"/>\n\
         <g fill=\"#fff\" text-anchor=\"middle\" \
         font-family=\"DejaVu Sans,Verdana,Geneva,sans-serif\" font-size=\"11\">\n\
         <text x=\"{left_mid}\" y=\"14\">{ns_text}</text>\n\
         <text x=\"{right_mid}\" y=\"14\">{state}</text>\n</g>\n</svg>\n",
        total = left + right,
        left_mid = f64::from(left) / 2.0,
        right_mid = f64::from(left) + f64::from(right) / 2.0,
        ns_text = escape(ns),
        state = state.name(),
    )
}

/// Width in pixels of a badge half: about 7 px per character at 11 px,
/// plus padding. Approximate but stable.
fn text_width(text: &str) -> u32 {
    let chars = u32::try_from(text.chars().count()).unwrap_or(u32::MAX / 8);
    chars.saturating_mul(7).saturating_add(12)
}

fn head(html: &mut String, title: &str, root: &str) {
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<link rel=\"stylesheet\" href=\"{root}style.css\">\n\
         <link rel=\"alternate\" type=\"application/atom+xml\" title=\"Results feed\" \
         href=\"{root}feed.atom\">\n</head>\n<body>\n",
        escape(title)
    );
}

fn footer(html: &mut String) {
    let _ = write!(
        html,
        "<footer>Generated by icyci {} from the results' git notes.</footer>\n</body>\n</html>\n",
        env!("CARGO_PKG_VERSION")
    );
}

/// The visible label of a state: a symbol for the eye and the word for
/// everyone (colour is never the only sign).
fn state_label(state: &ShownState) -> String {
    let symbol = match state.state {
        _ if state.stale.is_some() => "◌",
        CommitState::Passed => "✓",
        CommitState::Failed => "✗",
        CommitState::Running => "●",
        CommitState::Untested => "–",
    };
    format!(
        "<span aria-hidden=\"true\">{symbol}</span> {}",
        state.name()
    )
}

fn raw_link(commit: &str, ns: &str, name: &str) -> String {
    format!("../{}", href(&raw_path(commit, ns, name)))
}

fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// `2024-05-01 12:34`, UTC.
fn date(time: i64) -> String {
    DateTime::from_timestamp(time, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

/// RFC 3339 in UTC, as Atom wants.
fn timestamp(time: i64) -> String {
    DateTime::from_timestamp(time, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn bytes(size: usize) -> String {
    match size {
        0..1024 => format!("{size} bytes"),
        1024..1_048_576 => format!("{:.1} KiB", size as f64 / 1024.0),
        _ => format!("{:.1} MiB", size as f64 / 1_048_576.0),
    }
}

/// A stable 64-bit hash (FNV-1a) for the feed's id.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(subject: &str) -> CommitInfo {
        CommitInfo {
            id: "0123456789abcdef0123456789abcdef01234567".into(),
            time: 1_700_000_000,
            author: "A <b> & \"c\"".into(),
            subject: subject.into(),
        }
    }

    #[test]
    fn short_logs_are_shown_whole() {
        let tail = log_tail(b"one\ntwo\nthree");
        assert_eq!(
            tail,
            LogTail {
                shown_from: 0,
                shown_lines: 3,
                total_lines: 3
            }
        );
    }

    #[test]
    fn long_logs_keep_their_last_lines() {
        let log: String = (0..5000).map(|n| format!("line {n}\n")).collect();
        let tail = log_tail(log.as_bytes());
        assert_eq!(tail.total_lines, 5000);
        assert_eq!(tail.shown_lines, MAX_LOG_LINES);
        assert!(log[tail.shown_from..].starts_with("line 3000\n"));
    }

    #[test]
    fn big_logs_keep_their_last_bytes_from_a_line_start() {
        let line = format!("{}\n", "x".repeat(999));
        let log = line.repeat(1000); // 1000 lines of 1000 bytes
        let tail = log_tail(log.as_bytes());
        assert!(log.len() - tail.shown_from <= MAX_LOG_BYTES);
        assert_eq!(tail.shown_lines, MAX_LOG_BYTES / 1000);
        assert_eq!(&log.as_bytes()[tail.shown_from - 1], &b'\n');
    }

    #[test]
    fn index_escapes_and_labels_states() {
        let info = commit("<script>alert(1)</script> & \"x\"");
        let namespaces = ["icyci".to_owned(), "icyci-arm".to_owned()];
        let site = SiteInfo {
            label: "<label>",
            branch: "main",
            namespaces: &namespaces,
        };
        let rows = [Row {
            commit: &info,
            states: vec![CommitState::Failed.into(), CommitState::Untested.into()],
            has_page: true,
        }];
        let html = index(&site, &rows);
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;x&quot;"));
        assert!(html.contains("&lt;label&gt;"));
        assert!(html.contains(
            "<td class=\"state failed\"><a href=\"commit/0123456789abcdef0123456789abcdef01234567\
             .html#ns-icyci\"><span aria-hidden=\"true\">✗</span> failed</a></td>"
        ));
        assert!(html.contains("<span aria-hidden=\"true\">–</span> untested</td>"));
        assert!(html.contains("<td class=\"date\">2023-11-14 22:13</td>"));

        let atom = feed(&site, &rows);
        assert!(!atom.contains("<script>"), "{atom}");
        assert_eq!(atom.matches("<entry>").count(), 1);
        assert!(atom.contains("<updated>2023-11-14T22:13:20Z</updated>"));
    }

    fn stale() -> ShownState {
        ShownState {
            state: CommitState::Running,
            stale: Some(crate::viewer::stale::StaleLock {
                reason: "lease expired 2020-01-01T00:00:00Z".into(),
                holder: Some(crate::lease::Holder {
                    host: "<dead>".into(),
                    pid: 42,
                    id: "00112233aabbccdd".into(),
                }),
                lease_until: Some(1_577_836_800),
            }),
        }
    }

    #[test]
    fn a_stale_lock_is_shown_apart_from_running() {
        let info = commit("its tester died");
        let namespaces = ["icyci".to_owned(), "icyci-arm".to_owned()];
        let site = SiteInfo {
            label: "results",
            branch: "main",
            namespaces: &namespaces,
        };
        let rows = [Row {
            commit: &info,
            states: vec![stale(), CommitState::Running.into()],
            has_page: true,
        }];
        let html = index(&site, &rows);
        assert!(
            html.contains(
                "<td class=\"state stale\" title=\"stale lock: lease expired \
                 2020-01-01T00:00:00Z, holder &lt;dead&gt; pid 42 id 00112233aabbccdd\">\
                 <a href=\"commit/0123456789abcdef0123456789abcdef01234567.html#ns-icyci\">\
                 <span aria-hidden=\"true\">◌</span> stale</a></td>"
            ),
            "{html}"
        );
        assert!(
            html.contains(
                "<td class=\"state running\"><a href=\"commit/0123456789abcdef0123456789abcdef\
                 01234567.html#ns-icyci-arm\"><span aria-hidden=\"true\">●</span> running</a></td>"
            ),
            "{html}"
        );
        assert!(html.contains("alt=\"icyci: stale\""), "{html}");
        assert_eq!(feed(&site, &rows).matches("<entry>").count(), 0);

        let lock = b"2019-12-31 23:00:00 +0000: this commit is being tested by icyCI\n";
        let sections = [Section {
            ns: "icyci",
            state: stale(),
            verdict: None,
            lock: Some(lock),
            stdout: None,
            stderr: None,
            extras: Vec::new(),
        }];
        let page = commit_page(&info, &sections);
        assert!(
            page.contains(
                "<p class=\"stale\"><strong>Stale lock:</strong> lease expired \
                 2020-01-01T00:00:00Z, holder &lt;dead&gt; pid 42 id 00112233aabbccdd; no \
                 result. Its holder is gone: an instance takes the commit over when it next \
                 finds it as its branch tip, and <code>icyci retest \
                 0123456789abcdef0123456789abcdef01234567 --results-repo <var>URL</var> --ns \
                 icyci</code> removes the lock.</p>"
            ),
            "{page}"
        );
        assert!(page.contains("<span class=\"state stale\">"), "{page}");
        assert!(
            page.contains("<p class=\"lock\">Lock: 2019-12-31"),
            "{page}"
        );
        // The same section without a stale lock says nothing of one.
        let running = [Section {
            state: CommitState::Running.into(),
            ..sections[0].clone()
        }];
        let page = commit_page(&info, &running);
        assert!(!page.contains("stale"), "{page}");
        assert!(page.contains("<span class=\"state running\">"), "{page}");

        let svg = badge("icyci", &stale());
        assert!(svg.contains(">stale</text>"), "{svg}");
        assert!(svg.contains("#bc4c00"), "{svg}");
        assert!(STYLE.contains(".state.stale {"));
    }

    #[test]
    fn badges_name_their_state() {
        let svg = badge("icyci<x>", &CommitState::Failed.into());
        assert!(svg.contains("<text x=\""));
        assert!(svg.contains(">failed</text>"));
        assert!(svg.contains("icyci&lt;x&gt;"));
        assert!(svg.contains("#cf222e"));
    }

    #[test]
    fn sizes() {
        assert_eq!(bytes(12), "12 bytes");
        assert_eq!(bytes(2048), "2.0 KiB");
        assert_eq!(bytes(3 * 1_048_576), "3.0 MiB");
    }
}
