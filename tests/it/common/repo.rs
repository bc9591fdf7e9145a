//! Repository helpers: repositories, commits, tags, merges, pushes, notes and ssh keys.

use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{TestEnv, GIT_EMAIL, GIT_NAME};

/// How a commit or merge is signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sign {
    /// Not signed.
    None,
    /// OpenPGP signature by the key with this fingerprint (see [`TestEnv::gpg_key`]).
    Gpg(String),
    /// SSH signature by this private key (see [`TestEnv::ssh_key`]); its `.pub` sits beside it.
    Ssh(PathBuf),
}

/// What kind of tag [`TestEnv::tag`] makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagKind {
    /// A plain ref to the target.
    Lightweight,
    /// An unsigned tag object.
    Annotated,
    /// A tag object signed with the OpenPGP key of this fingerprint.
    Gpg(String),
    /// A tag object signed with this private SSH key.
    Ssh(PathBuf),
}

/// The public key file of an SSH key given by its private key (or already by its `.pub`).
fn public_key_path(key: &Path) -> OsString {
    let mut path = key.as_os_str().to_owned();
    if key.extension() != Some(OsStr::new("pub")) {
        path.push(".pub");
    }
    path
}

/// `-c` options that select the signing format and key.
fn signing_config(format: &str, key: &OsStr) -> Vec<OsString> {
    let mut signingkey = OsString::from("user.signingkey=");
    signingkey.push(key);
    vec![
        "-c".into(),
        format!("gpg.format={format}").into(),
        "-c".into(),
        signingkey,
    ]
}

/// `-c` options for `sign`, and the flag that turns signing on or off.
fn sign_args(sign: &Sign) -> (Vec<OsString>, &'static str) {
    match sign {
        Sign::None => (Vec::new(), "--no-gpg-sign"),
        Sign::Gpg(fpr) => (signing_config("openpgp", OsStr::new(fpr)), "-S"),
        Sign::Ssh(key) => (signing_config("ssh", &public_key_path(key)), "-S"),
    }
}

fn os_args(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

impl TestEnv {
    /// Creates a bare repository `<root>/<name>` (`git init --bare -b main`) and returns its
    /// path.
    pub fn bare_repo(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        let mut args = os_args(&["init", "-q", "--bare", "-b", "main"]);
        args.push(path.clone().into_os_string());
        self.git(self.root(), args);
        path
    }

    /// Creates a repository with a work tree `<root>/<name>` (`git init -b main`) and returns
    /// its path.
    pub fn work_repo(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        let mut args = os_args(&["init", "-q", "-b", "main"]);
        args.push(path.clone().into_os_string());
        self.git(self.root(), args);
        path
    }

    /// Clones `url` (URL or path) into `<root>/<name>` and returns the clone's path.
    pub fn clone_repo(&self, url: impl AsRef<OsStr>, name: &str) -> PathBuf {
        let path = self.path(name);
        let mut args = os_args(&["clone", "-q", "--"]);
        args.push(url.as_ref().to_owned());
        args.push(path.clone().into_os_string());
        self.git(self.root(), args);
        path
    }

    /// `git rev-parse --verify <rev>^{object}` in `repo`: the full object id.
    pub fn rev_parse(&self, repo: impl AsRef<Path>, rev: &str) -> String {
        self.git(
            repo,
            [
                "rev-parse",
                "--verify",
                "--end-of-options",
                &format!("{rev}^{{object}}"),
            ],
        )
    }

    /// Writes `message` and a new line to a new file `commits/<n>.txt` in the work tree `work`
    /// (a new file each time, so commits on different branches merge without conflicts),
    /// commits all changes with `message`, signed as `sign` asks, and returns the new commit id.
    pub fn commit(&self, work: impl AsRef<Path>, message: &str, sign: Sign) -> String {
        let work = work.as_ref();
        let file = work.join(format!("commits/{}.txt", self.unique()));
        fs::create_dir_all(work.join("commits")).expect("create commits/");
        fs::write(&file, format!("{message}\n")).expect("write commits/<n>.txt");
        self.commit_all(work, message, &sign)
    }

    /// Writes `files` (paths relative to `work`, parent directories created, mode 0755 for
    /// names ending in `.sh`), commits all changes with `message` (allowed to be empty), signed
    /// as `sign` asks, and returns the new commit id.
    ///
    /// Contents are bytes: pass `"text".as_bytes()` or `b"bytes"`.
    pub fn commit_files(
        &self,
        work: impl AsRef<Path>,
        message: &str,
        files: &[(&str, &[u8])],
        sign: Sign,
    ) -> String {
        let work = work.as_ref();
        for (rel, data) in files {
            let path = work.join(rel);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).expect("create a directory in the work tree");
            }
            fs::write(&path, data).expect("write a file in the work tree");
            if rel.ends_with(".sh") {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                    .expect("make a script executable");
            }
        }
        self.commit_all(work, message, &sign)
    }

    fn commit_all(&self, work: &Path, message: &str, sign: &Sign) -> String {
        self.git(work, ["add", "-A"]);
        let (mut args, flag) = sign_args(sign);
        args.extend(os_args(&[
            "commit",
            "-q",
            "--allow-empty",
            flag,
            "-m",
            message,
        ]));
        self.git(work, args);
        self.rev_parse(work, "HEAD")
    }

    /// Makes tag `name` on `target` (any revision) in `repo`, of the given kind (annotated and
    /// signed tags get `name` as message), and returns what `refs/tags/<name>` points to: the
    /// tag object id, or the target's id for a lightweight tag.
    pub fn tag(&self, repo: impl AsRef<Path>, name: &str, target: &str, kind: TagKind) -> String {
        let repo = repo.as_ref();
        let mut args = match &kind {
            TagKind::Lightweight | TagKind::Annotated => Vec::new(),
            TagKind::Gpg(fpr) => signing_config("openpgp", OsStr::new(fpr)),
            TagKind::Ssh(key) => signing_config("ssh", &public_key_path(key)),
        };
        args.extend(os_args(&["tag"]));
        match kind {
            TagKind::Lightweight => {}
            TagKind::Annotated => args.extend(os_args(&["--no-sign", "-a", "-m", name])),
            TagKind::Gpg(_) | TagKind::Ssh(_) => args.extend(os_args(&["-s", "-m", name])),
        }
        args.extend(os_args(&["--", name, target]));
        self.git(repo, args);
        self.rev_parse(repo, &format!("refs/tags/{name}"))
    }

    /// Merges `other` into the current branch of `work` with a merge commit (`--no-ff`) of
    /// message `message`, signed as `sign` asks, and returns the merge commit id.
    pub fn merge(&self, work: impl AsRef<Path>, other: &str, message: &str, sign: Sign) -> String {
        let work = work.as_ref();
        let (mut args, flag) = sign_args(&sign);
        args.extend(os_args(&[
            "merge",
            "-q",
            "--no-ff",
            "--no-edit",
            flag,
            "-m",
            message,
            other,
        ]));
        self.git(work, args);
        self.rev_parse(work, "HEAD")
    }

    /// Imports into `repo` (bare or not) with `git fast-import` one root commit on
    /// `refs/heads/<branch>` whose tree holds `files` (path, bytes; mode 0644) and returns its
    /// id. The data goes straight into a pack, which makes repositories of tens of megabytes
    /// in about a second; index and work tree are left alone.
    pub fn fast_import(
        &self,
        repo: impl AsRef<Path>,
        branch: &str,
        files: &[(String, Vec<u8>)],
        message: &str,
    ) -> String {
        let mut stream = Vec::new();
        for (mark, (_, data)) in files.iter().enumerate() {
            stream.extend(format!("blob\nmark :{}\ndata {}\n", mark + 1, data.len()).bytes());
            stream.extend(data);
            stream.push(b'\n');
        }
        stream.extend(
            format!(
                "commit refs/heads/{branch}\ncommitter {GIT_NAME} <{GIT_EMAIL}> 1700000000 +0000\n\
                 data {}\n{message}\n",
                message.len()
            )
            .bytes(),
        );
        for (mark, (path, _)) in files.iter().enumerate() {
            stream.extend(format!("M 100644 :{} {path}\n", mark + 1).bytes());
        }
        stream.push(b'\n');
        let mut cmd = self.command("git");
        // Stored, not deflated: the data is meant to be big, not the import slow.
        cmd.arg("-C").arg(repo.as_ref()).args([
            "-c",
            "core.compression=0",
            "fast-import",
            "--quiet",
        ]);
        super::run_checked(&mut cmd, Some(&stream));
        self.rev_parse(repo, &format!("refs/heads/{branch}"))
    }

    /// `git push <remote> <refspecs…>` from `repo`; panics when the push fails.
    pub fn push(&self, repo: impl AsRef<Path>, remote: impl AsRef<OsStr>, refspecs: &[&str]) {
        let mut args = vec![
            OsString::from("push"),
            OsString::from("-q"),
            remote.as_ref().into(),
        ];
        args.extend(os_args(refspecs));
        self.git(repo, args);
    }

    /// The exact bytes of the note in `refs/notes/<ns>.<name>` on `commit` (a full object id
    /// or any revision `repo` can resolve) in `repo`, bare or not; `None` when there is no such
    /// note (or no such notes ref). The commit itself need not be in `repo`.
    pub fn note(
        &self,
        repo: impl AsRef<Path>,
        ns: &str,
        name: &str,
        commit: &str,
    ) -> Option<Vec<u8>> {
        let repo = repo.as_ref();
        let notes_ref = format!("--ref=refs/notes/{ns}.{name}");
        let out = self.git_output(repo, ["notes", &notes_ref, "list", commit]);
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("no note found") {
                return None;
            }
            panic!(
                "git notes {notes_ref} list {commit} failed in {}:\n{stderr}",
                repo.display()
            );
        }
        let blob = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let out = self.git_output(repo, ["cat-file", "blob", &blob]);
        if !out.status.success() {
            panic!(
                "git cat-file blob {blob} failed in {}:\n{}",
                repo.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Some(out.stdout)
    }

    /// Like [`TestEnv::note`], as (lossy) UTF-8 text.
    pub fn note_text(
        &self,
        repo: impl AsRef<Path>,
        ns: &str,
        name: &str,
        commit: &str,
    ) -> Option<String> {
        self.note(repo, ns, name, commit)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    /// The full names of all refs under `refs/notes/` in `repo`, sorted.
    pub fn note_refs(&self, repo: impl AsRef<Path>) -> Vec<String> {
        let out = self.git(repo, ["for-each-ref", "--format=%(refname)", "refs/notes/"]);
        out.lines().map(str::to_string).collect()
    }

    /// Generates a passphrase-less ed25519 key `<root>/keys/<name>` (public key beside it as
    /// `<name>.pub`) and returns the private key's path. The key is also trusted for git's SSH
    /// signature verification in this environment: `<name>@icyci.test <public key>` is
    /// appended to `home/allowed_signers`, which the global config names as
    /// `gpg.ssh.allowedSignersFile`.
    pub fn ssh_key(&self, name: &str) -> PathBuf {
        let keys = self.path("keys");
        fs::create_dir_all(&keys).expect("create the keys directory");
        let key = keys.join(name);
        let mut cmd = self.command("ssh-keygen");
        cmd.args(["-q", "-t", "ed25519", "-N", "", "-C"])
            .arg(format!("{name}@icyci.test"))
            .arg("-f")
            .arg(&key);
        super::run_checked(&mut cmd, None);
        let public = fs::read_to_string(public_key_path(&key)).expect("read the public key");
        let signers = self.path("home/allowed_signers");
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&signers)
            .expect("open home/allowed_signers");
        writeln!(file, "{name}@icyci.test {}", public.trim()).expect("append to allowed_signers");
        drop(file);
        let mut cmd = self.command("git");
        cmd.args(["config", "--global", "gpg.ssh.allowedSignersFile"])
            .arg(&signers);
        super::run_checked(&mut cmd, None);
        key
    }
}
