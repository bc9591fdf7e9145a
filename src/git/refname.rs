//! Git's reference-name rules (`git check-ref-format`), checked without
//! spawning git so that every name from a remote or from the notes directory
//! can be screened cheaply before it reaches a git command line.

/// True when `name` is a valid full reference name, as
/// `git check-ref-format <name>` would accept it (at least two components).
pub fn is_valid_full_refname(name: &str) -> bool {
    name.contains('/') && is_valid_refname_components(name)
}

/// True when `name` is acceptable as a branch name, as
/// `git check-ref-format --branch <name>` would accept it.
pub fn is_valid_branch_name(name: &str) -> bool {
    !name.starts_with('-') && name != "HEAD" && is_valid_full_refname(&format!("refs/heads/{name}"))
}

fn is_valid_refname_components(name: &str) -> bool {
    if name.is_empty() || name == "@" || name.ends_with('.') || name.contains("@{") {
        return false;
    }
    if name.contains("..") {
        return false;
    }
    let forbidden = |c: char| c.is_ascii_control() || " ~^:?*[\\".contains(c);
    if name.chars().any(forbidden) {
        return false;
    }
    name.split('/').all(|component| {
        !component.is_empty() && !component.starts_with('.') && !component.ends_with(".lock")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_refnames() {
        for good in [
            "refs/heads/main",
            "refs/notes/icyci.locked",
            "refs/tags/v1.0",
            "refs/heads/f/x",
        ] {
            assert!(is_valid_full_refname(good), "{good}");
        }
        let bad = [
            "main",
            "refs/heads/",
            "refs//heads",
            "/refs/heads/x",
            "refs/heads/x.",
            "refs/heads/.x",
            "refs/heads/x.lock",
            "refs/heads/a..b",
            "refs/heads/a b",
            "refs/heads/a~1",
            "refs/heads/a^",
            "refs/heads/a:b",
            "refs/heads/a?",
            "refs/heads/a*",
            "refs/heads/a[",
            "refs/heads/a\\b",
            "refs/heads/a@{1}",
            "refs/heads/a\u{1}",
            "refs/heads/a\u{7f}",
        ];
        for name in bad {
            assert!(!is_valid_full_refname(name), "{name:?}");
        }
    }

    #[test]
    fn branch_names() {
        assert!(is_valid_branch_name("main"));
        assert!(is_valid_branch_name("feature/x"));
        assert!(!is_valid_branch_name("-main"));
        assert!(!is_valid_branch_name("--upload-pack=touch x"));
        assert!(!is_valid_branch_name("HEAD"));
        assert!(!is_valid_branch_name(""));
        assert!(!is_valid_branch_name("a..b"));
    }

    /// The checker must agree with git itself on every sample.
    #[test]
    fn agrees_with_git_check_ref_format() {
        let samples = [
            "main",
            "feature/x",
            "-x",
            "a..b",
            "a b",
            "a.lock",
            "x/.y",
            "a@{b",
            "@",
            "a/",
            "a//b",
            "v1.0",
            "über",
            "a\tb",
            "tag~",
            "ok-name_1",
            "HEAD",
            "x.",
            "x/y.lock/z",
        ];
        for name in samples {
            let git_says = std::process::Command::new("git")
                .args(["check-ref-format", "--branch", name])
                .output()
                .expect("git must be installed to run the tests")
                .status
                .success();
            assert_eq!(is_valid_branch_name(name), git_says, "branch name {name:?}");
        }
    }
}
