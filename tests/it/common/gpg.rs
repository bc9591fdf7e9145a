//! GnuPG signing keys: generated once per test process into templates, then installed into each
//! [`TestEnv`]'s `GNUPGHOME`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use super::{lock, run_checked, TestEnv};

/// Name of the key returned by [`TestEnv::gpg_key`].
const DEFAULT_KEY: &str = "icyci-test";

/// A key generated once per process, kept in memory.
struct Template {
    fpr: String,
    /// Every regular file of the template's home, relative path and content, for a fast
    /// install into an empty `GNUPGHOME`.
    files: Vec<(PathBuf, Vec<u8>)>,
    /// The armored secret key, to import into a `GNUPGHOME` that already holds a key.
    secret: Vec<u8>,
}

/// One template per key name; each is generated at most once per process.
static TEMPLATES: OnceLock<Mutex<BTreeMap<String, Arc<OnceLock<Template>>>>> = OnceLock::new();

fn template(name: &str) -> Arc<OnceLock<Template>> {
    let map = TEMPLATES.get_or_init(|| Mutex::new(BTreeMap::new()));
    lock(map).entry(name.to_string()).or_default().clone()
}

/// A gpg command for the home `dir`, with nothing from the caller's environment but `PATH`.
fn gpg_in(dir: &Path) -> Command {
    let mut cmd = Command::new("gpg");
    cmd.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.env("LC_ALL", "C")
        .arg("--homedir")
        .arg(dir)
        .arg("--batch")
        .stdin(Stdio::null());
    cmd
}

/// Stops the gpg-agent (and any other GnuPG daemon) of the home `dir`; errors are ignored.
fn kill_agents(dir: &Path) {
    let _ = Command::new("gpgconf")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .arg("--homedir")
        .arg(dir)
        .args(["--kill", "all"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The fingerprint of the first secret key in `--with-colons` output.
fn first_secret_fpr(colons: &str) -> Option<String> {
    let mut in_sec = false;
    for line in colons.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.first() {
            Some(&"sec") => in_sec = true,
            Some(&"fpr") if in_sec => return fields.get(9).map(|f| f.to_string()),
            Some(&"ssb") => in_sec = false,
            _ => {}
        }
    }
    None
}

fn collect_files(base: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    for entry in fs::read_dir(dir).expect("read the gpg template directory") {
        let entry = entry.expect("read a gpg template entry");
        let kind = entry
            .file_type()
            .expect("file type of a gpg template entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if kind.is_dir() {
            collect_files(base, &path, out);
        } else if kind.is_file() && !name.ends_with('~') && !name.starts_with(".#") {
            let rel = path
                .strip_prefix(base)
                .expect("template file under its base");
            let data = fs::read(&path).expect("read a gpg template file");
            out.push((rel.to_path_buf(), data));
        }
        // Sockets (S.gpg-agent*) and lock files are not part of the template.
    }
}

fn generate(name: &str) -> Template {
    let dir = tempfile::Builder::new()
        .prefix("icyci-gpg-template.")
        .tempdir()
        .expect("create a gpg template directory");
    let home = dir.path();
    let uid = format!("{name} <{name}@icyci.test>");
    let generated = std::panic::catch_unwind(|| {
        run_checked(
            gpg_in(home)
                .args(["--pinentry-mode", "loopback", "--passphrase", ""])
                .args(["--quick-generate-key", &uid, "ed25519", "sign", "never"]),
            None,
        );
        let colons = run_checked(
            gpg_in(home).args(["--with-colons", "--list-secret-keys"]),
            None,
        );
        let fpr = first_secret_fpr(&colons)
            .unwrap_or_else(|| panic!("no secret key fingerprint in gpg output:\n{colons}"));
        let secret = run_checked(
            gpg_in(home)
                .args(["--pinentry-mode", "loopback", "--passphrase", ""])
                .args(["--armor", "--export-secret-keys", &fpr]),
            None,
        );
        (fpr, secret)
    });
    // The agent started for generation and export must not outlive the template.
    kill_agents(home);
    let (fpr, secret) = generated.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    let mut files = Vec::new();
    collect_files(home, home, &mut files);
    Template {
        fpr,
        files,
        secret: secret.into_bytes(),
    }
}

impl TestEnv {
    /// Fingerprint of a passphrase-less ed25519 signing key, ultimately trusted, in this
    /// environment's `GNUPGHOME`. The key is generated once per test process, so every
    /// environment of one process gets the same key.
    pub fn gpg_key(&self) -> String {
        self.gpg_key_named(DEFAULT_KEY)
    }

    /// Like [`TestEnv::gpg_key`] for a key of user id `<name> <<name>@icyci.test>`: different
    /// names give different keys, all of which can live in one `GNUPGHOME`. Calling it again
    /// with the same name returns the same fingerprint.
    pub fn gpg_key_named(&self, name: &str) -> String {
        let mut installed = lock(&self.gpg_installed);
        if let Some(fpr) = installed.get(name) {
            return fpr.clone();
        }
        let cell = template(name);
        let template = cell.get_or_init(|| generate(name));
        let home = self.gnupg_home();
        if home.join("pubring.kbx").exists() {
            self.import_gpg_key(template);
        } else {
            for (rel, data) in &template.files {
                let path = home.join(rel);
                let parent = path.parent().expect("a template file has a parent");
                if !parent.exists() {
                    fs::create_dir_all(parent).expect("create a GNUPGHOME directory");
                    fs::set_permissions(parent, fs::Permissions::from_mode(0o700))
                        .expect("chmod 0700 a GNUPGHOME directory");
                }
                fs::write(&path, data).expect("write a GNUPGHOME file");
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                    .expect("chmod 0600 a GNUPGHOME file");
            }
        }
        installed.insert(name.to_string(), template.fpr.clone());
        template.fpr.clone()
    }

    fn import_gpg_key(&self, template: &Template) {
        let mut import = self.command("gpg");
        import.args([
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--import",
        ]);
        run_checked(&mut import, Some(&template.secret));
        let mut trust = self.command("gpg");
        trust.args(["--batch", "--import-ownertrust"]);
        run_checked(
            &mut trust,
            Some(format!("{}:6:\n", template.fpr).as_bytes()),
        );
    }

    /// Stops the gpg-agent of this environment's `GNUPGHOME`, if one was started; errors are
    /// ignored. Called on drop.
    pub fn stop_gpg_agent(&self) {
        let home = self.gnupg_home();
        let has_socket = fs::read_dir(&home).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("S."))
        });
        if has_socket {
            kill_agents(&home);
        }
    }
}
