//! Terminal output as HTML: ANSI colour and style sequences (SGR) become
//! `<span>`s with classes that `style.css` colours; every other escape
//! sequence (cursor moves, erasing, window titles, hyperlinks) is dropped,
//! and a carriage return overwrites its line as it would on a terminal.
//!
//! Written here rather than taken from a crate: the crates that do this
//! either emit inline styles (which the site avoids, so that one stylesheet
//! decides every colour) or pull in a terminal emulator. The subset a test
//! log needs is small and unit-tested below.
//!
//! Supported: reset (0), bold (1), dim (2), italic (3), underline (4), their
//! resets (22, 23, 24), the 8 normal and 8 bright foreground and background
//! colours (30–37, 90–97, 40–47, 100–107, 39, 49), and the first 16 colours
//! of the 256-colour form (`38;5;n`, `48;5;n`). Other 256-colour and
//! true-colour values keep the text and drop the colour.

use std::fmt::Write;

use super::escape::push_escaped_char;

/// The style in effect for a run of text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Style {
    bold: bool,
    dim: bool,
    italic: bool,
    underline: bool,
    foreground: Option<u8>,
    background: Option<u8>,
}

impl Style {
    fn classes(&self) -> String {
        let mut classes = Vec::new();
        for (on, class) in [
            (self.bold, "b"),
            (self.dim, "d"),
            (self.italic, "i"),
            (self.underline, "u"),
        ] {
            if on {
                classes.push(class.to_owned());
            }
        }
        if let Some(colour) = self.foreground {
            classes.push(format!("fg{colour}"));
        }
        if let Some(colour) = self.background {
            classes.push(format!("bg{colour}"));
        }
        classes.join(" ")
    }

    /// Applies the parameters of one `ESC [ … m` sequence.
    fn apply(&mut self, params: &str) {
        let mut codes = params.split([';', ':']).map(|p| {
            if p.is_empty() {
                Some(0)
            } else {
                p.parse::<u32>().ok()
            }
        });
        while let Some(code) = codes.next() {
            let Some(code) = code else { continue };
            match code {
                0 => *self = Style::default(),
                1 => self.bold = true,
                2 => self.dim = true,
                3 => self.italic = true,
                4 => self.underline = true,
                22 => (self.bold, self.dim) = (false, false),
                23 => self.italic = false,
                24 => self.underline = false,
                30..=37 => self.foreground = Some((code - 30) as u8),
                90..=97 => self.foreground = Some((code - 90 + 8) as u8),
                39 => self.foreground = None,
                40..=47 => self.background = Some((code - 40) as u8),
                100..=107 => self.background = Some((code - 100 + 8) as u8),
                49 => self.background = None,
                38 | 48 => {
                    let colour = extended_colour(&mut codes);
                    if code == 38 {
                        self.foreground = colour;
                    } else {
                        self.background = colour;
                    }
                }
                _ => {}
            }
        }
    }
}

/// Reads the rest of `38;5;n` or `38;2;r;g;b`; a colour class only for the
/// 16 basic colours.
fn extended_colour(codes: &mut impl Iterator<Item = Option<u32>>) -> Option<u8> {
    match codes.next().flatten() {
        Some(5) => match codes.next().flatten() {
            Some(index) if index < 16 => Some(index as u8),
            _ => None,
        },
        Some(2) => {
            codes.take(3).for_each(drop);
            None
        }
        _ => None,
    }
}

/// Converts terminal output to HTML-escaped text with style spans.
pub fn to_html(text: &str) -> String {
    let text = apply_carriage_returns(text);
    let mut html = String::with_capacity(text.len() + text.len() / 8);
    let mut style = Style::default();
    let mut open: Option<Style> = None;
    let mut chars = text.chars().peekable();

    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if let Some(params) = read_escape(&mut chars) {
                style.apply(&params);
            }
            continue;
        }
        if c.is_control() && c != '\n' && c != '\t' {
            continue;
        }
        if open != Some(style) {
            if open.is_some_and(|s| s != Style::default()) {
                html.push_str("</span>");
            }
            if style != Style::default() {
                let _ = write!(html, "<span class=\"{}\">", style.classes());
            }
            open = Some(style);
        }
        push_escaped_char(&mut html, c);
    }
    if open.is_some_and(|s| s != Style::default()) {
        html.push_str("</span>");
    }
    html
}

/// Consumes one escape sequence after its `ESC`; returns the parameters of
/// an SGR sequence (`ESC [ params m`), `None` for anything else.
fn read_escape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<String> {
    match chars.next()? {
        // CSI: parameter bytes, intermediate bytes, one final byte.
        '[' => {
            let mut params = String::new();
            for c in chars.by_ref() {
                match c {
                    '\u{30}'..='\u{3f}' => params.push(c),
                    '\u{20}'..='\u{2f}' => {}
                    'm' => return Some(params),
                    _ => return None,
                }
            }
            None
        }
        // OSC (titles, hyperlinks): up to BEL or ST (`ESC \`).
        ']' => {
            while let Some(c) = chars.next() {
                if c == '\u{7}' {
                    break;
                }
                if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                    chars.next();
                    break;
                }
            }
            None
        }
        // Two- and three-byte sequences such as `ESC ( B`.
        c if ('\u{20}'..='\u{2f}').contains(&c) => {
            chars.next();
            None
        }
        _ => None,
    }
}

/// A lone carriage return moves back to the start of the line, so only what
/// was written after the last one stays visible (progress bars); `\r\n` is
/// an ordinary line end.
fn apply_carriage_returns(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains('\r') {
        return text.into();
    }
    let lines: Vec<&str> = text
        .split('\n')
        .map(|line| {
            let line = line.strip_suffix('\r').unwrap_or(line);
            line.rsplit('\r').next().unwrap_or(line)
        })
        .collect();
    lines.join("\n").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_only_escaped() {
        assert_eq!(to_html("a < b && c\n"), "a &lt; b &amp;&amp; c\n");
    }

    #[test]
    fn colours_become_classed_spans() {
        assert_eq!(
            to_html("\u{1b}[31mred\u{1b}[0m plain"),
            "<span class=\"fg1\">red</span> plain"
        );
        assert_eq!(
            to_html("\u{1b}[1;92mok\u{1b}[m"),
            "<span class=\"b fg10\">ok</span>"
        );
        assert_eq!(
            to_html("\u{1b}[44mbg\u{1b}[49m"),
            "<span class=\"bg4\">bg</span>"
        );
    }

    #[test]
    fn style_changes_close_and_reopen_spans() {
        assert_eq!(
            to_html("\u{1b}[1mbold \u{1b}[33myellow\u{1b}[22m thin\u{1b}[0m"),
            "<span class=\"b\">bold </span><span class=\"b fg3\">yellow</span>\
             <span class=\"fg3\"> thin</span>"
        );
    }

    #[test]
    fn extended_colours() {
        assert_eq!(
            to_html("\u{1b}[38;5;9mx\u{1b}[38;5;200my\u{1b}[38;2;1;2;3;4mz"),
            "<span class=\"fg9\">x</span>y<span class=\"u\">z</span>"
        );
    }

    #[test]
    fn markup_inside_colour_is_escaped() {
        assert_eq!(
            to_html("\u{1b}[31m<script>\u{1b}[0m"),
            "<span class=\"fg1\">&lt;script&gt;</span>"
        );
    }

    #[test]
    fn other_sequences_are_dropped() {
        assert_eq!(to_html("a\u{1b}[2Kb\u{1b}[1;1Hc"), "abc");
        assert_eq!(to_html("\u{1b}]0;title\u{7}text"), "text");
        assert_eq!(
            to_html("\u{1b}]8;;http://x\u{1b}\\link\u{1b}]8;;\u{1b}\\"),
            "link"
        );
        assert_eq!(to_html("\u{1b}(Bx"), "x");
        assert_eq!(to_html("cut\u{1b}[3"), "cut");
        assert_eq!(to_html("bell\u{7}\u{0}"), "bell");
    }

    #[test]
    fn carriage_returns_overwrite_the_line() {
        assert_eq!(to_html("10%\r50%\r100%\ndone\r\n"), "100%\ndone\n");
    }
}
