//! Escaping for the site: text inside HTML, Atom and SVG, and the names of
//! the files that hold namespaces and notes.
//!
//! Written here rather than taken from a crate: HTML and XML need the same
//! five characters replaced, and the file names need one injective encoding
//! that the site's links can undo. Both fit in a few lines that are
//! unit-tested below, which is less than any dependency would bring.

use std::fmt::Write;

/// `text` made safe for HTML and XML, in element content and in quoted
/// attribute values alike: `&`, `<`, `>`, `"` and `'` become references, and
/// control characters other than tab and line breaks (which XML 1.0 forbids
/// even as references) are dropped.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    push_escaped(&mut escaped, text);
    escaped
}

/// Appends `text` to `out`, escaped as by [`escape`].
pub fn push_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        push_escaped_char(out, c);
    }
}

/// Appends one character, escaped as by [`escape`].
pub fn push_escaped_char(out: &mut String, c: char) {
    match c {
        '&' => out.push_str("&amp;"),
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        '"' => out.push_str("&quot;"),
        '\'' => out.push_str("&#39;"),
        '\t' | '\n' | '\r' => out.push(c),
        c if c.is_control() => {}
        c => out.push(c),
    }
}

/// A namespace or note name as one file name: ASCII letters, digits, `-`,
/// `_`, `+` and (not leading) `.` are kept, every other byte becomes `%XX`.
/// Ref names may hold `/`, `<` or `%`; the encoding keeps each name a single
/// path component and two different names never share a file.
pub fn file_name(name: &str) -> String {
    let mut encoded = String::with_capacity(name.len());
    for (i, byte) in name.bytes().enumerate() {
        let keep = byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'_' | b'+')
            || (byte == b'.' && i > 0);
        if keep {
            encoded.push(char::from(byte));
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

/// A file name from [`file_name`] (or a commit id) as a relative URL path
/// component: only `%` needs escaping, so that a browser or web server
/// decoding the URL finds the file as it is named on disk.
pub fn href(file_name: &str) -> String {
    file_name.replace('%', "%25")
}

/// The HTML `id` of a namespace's section: `ns-` and the name with every
/// character outside ASCII letters, digits and `-` as `_XX`, so that the
/// fragment in a link never needs percent-decoding to match.
pub fn anchor(ns: &str) -> String {
    let mut id = String::from("ns-");
    for byte in ns.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            id.push(char::from(byte));
        } else {
            let _ = write!(id, "_{byte:02X}");
        }
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_quotes_become_text() {
        assert_eq!(
            escape(r#"<script>alert(1)</script> & "x" 'y'"#),
            "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;x&quot; &#39;y&#39;"
        );
        assert_eq!(escape("plain ünïcode"), "plain ünïcode");
    }

    #[test]
    fn control_characters_are_dropped_but_line_breaks_kept() {
        assert_eq!(escape("a\u{0}b\u{8}c\u{1b}d\te\nf"), "abcd\te\nf");
    }

    #[test]
    fn file_names_are_single_injective_components() {
        assert_eq!(file_name("icyci-x86_64"), "icyci-x86_64");
        assert_eq!(file_name("output.stdout"), "output.stdout");
        assert_eq!(file_name("team/icyci"), "team%2Ficyci");
        assert_eq!(file_name("a%2Fb"), "a%252Fb");
        assert_eq!(file_name(".hidden"), "%2Ehidden");
        assert_eq!(file_name("é<"), "%C3%A9%3C");
        assert_ne!(file_name("a/b"), file_name("a%2Fb"));
    }

    #[test]
    fn hrefs_decode_back_to_the_file_name() {
        assert_eq!(href("team%2Ficyci"), "team%252Ficyci");
        assert_eq!(href("icyci"), "icyci");
    }

    #[test]
    fn anchors_need_no_decoding() {
        assert_eq!(anchor("icyci-aarch64"), "ns-icyci-aarch64");
        assert_eq!(anchor("a_b/c"), "ns-a_5Fb_2Fc");
    }
}
