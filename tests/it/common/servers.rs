//! Real servers on loopback ports: `git daemon` (git://) and `sshd` (ssh://).

use std::fs::{self, File};
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{git_exec_path, run_checked, TestEnv, SSHD};

/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How many free ports [`GitDaemon::start`] and [`Sshd::start`] try before giving up.
const START_ATTEMPTS: usize = 5;

/// A TCP port of 127.0.0.1 that was free a moment ago (bound to port 0, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind 127.0.0.1:0 to find a free port")
}

/// A socket bound to a port of 127.0.0.1 (with `SO_REUSEADDR`) that never listens: a
/// connection to the port is refused, as by a stopped server, but no other process (another
/// test's outgoing connection, a `free_port` of a test running beside) can be given the port
/// meanwhile. A server started later on the port binds beside it (it sets `SO_REUSEADDR` too:
/// `git daemon --reuseaddr`, std's `TcpListener`).
pub struct PortHold {
    _socket: std::os::fd::OwnedFd,
}

impl PortHold {
    /// Holds `port`; `None` when it is already taken.
    pub fn bind(port: u16) -> Option<PortHold> {
        use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
        let socket = socket::socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .ok()?;
        socket::setsockopt(&socket, sockopt::ReuseAddr, &true).ok()?;
        let addr = SockaddrIn::new(127, 0, 0, 1, port);
        socket::bind(std::os::fd::AsRawFd::as_raw_fd(&socket), &addr).ok()?;
        Some(PortHold { _socket: socket })
    }

    /// A port that was free, held until the hold is dropped.
    pub fn free() -> (u16, PortHold) {
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            if let Some(hold) = PortHold::bind(port) {
                return (port, hold);
            }
        }
        panic!("no free port of 127.0.0.1 could be held");
    }
}

/// A running server process, killed and reaped on drop.
struct Server {
    child: Option<Child>,
    log: PathBuf,
}

impl Server {
    fn spawn(env: &TestEnv, mut cmd: Command, label: &str) -> Server {
        let log = env.logs().join(format!("{label}-{}.log", env.unique()));
        let out = File::create(&log).expect("create a server log");
        let err = out.try_clone().expect("clone the server log handle");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Server {
            child: Some(child),
            log,
        }
    }

    fn log_text(&self) -> String {
        fs::read(&self.log).map_or_else(
            |e| format!("<cannot read {}: {e}>", self.log.display()),
            |b| String::from_utf8_lossy(&b).into_owned(),
        )
    }

    /// Waits until `ready` accepts a connection to `port`; `Err` with the log when the server
    /// exited first (for example because the port was taken), panics at the deadline.
    fn wait_ready(
        &mut self,
        what: &str,
        port: u16,
        ready: impl Fn(TcpStream) -> bool,
    ) -> Result<(), String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("server is running");
            if let Some(status) = child.try_wait().expect("try_wait on a server") {
                self.child = None;
                return Err(format!("{what} exited ({status}):\n{}", self.log_text()));
            }
            if let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                if ready(stream) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "{what} does not accept connections on {addr} after {START_TIMEOUT:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "---- server log {} ----\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// `git daemon` serving every repository under a base directory over `git://127.0.0.1:<port>/`,
/// with pushes (`receive-pack`) enabled.
pub struct GitDaemon {
    server: Server,
    port: u16,
    base: PathBuf,
    /// Once stopped, its port is held so that it can be started again on it.
    hold: Option<PortHold>,
}

impl GitDaemon {
    /// Starts on a free port (retrying a few ports if one turns out to be taken) and waits until
    /// it accepts connections.
    pub fn start(env: &TestEnv, base: impl AsRef<Path>) -> GitDaemon {
        let mut errors = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match GitDaemon::try_start(env, base.as_ref(), free_port()) {
                Ok(daemon) => return daemon,
                Err(e) => errors.push(e),
            }
        }
        panic!("git daemon did not start:\n{}", errors.join("\n"));
    }

    /// Starts on `port` (for example to restart on the port of a stopped daemon) and waits
    /// until it accepts connections; panics when it cannot.
    pub fn start_on_port(env: &TestEnv, base: impl AsRef<Path>, port: u16) -> GitDaemon {
        GitDaemon::try_start(env, base.as_ref(), port)
            .unwrap_or_else(|e| panic!("git daemon did not start on port {port}:\n{e}"))
    }

    fn try_start(env: &TestEnv, base: &Path, port: u16) -> Result<GitDaemon, String> {
        let base = base
            .canonicalize()
            .unwrap_or_else(|e| panic!("base directory {}: {e}", base.display()));
        // `git daemon` would be a `git` process waiting for a `git-daemon` child, and killing
        // the wrapper leaves the real server running: start the server itself.
        let program = git_exec_path().expect("git --exec-path").join("git-daemon");
        let mut cmd = env.command(program);
        cmd.args(["--reuseaddr", "--listen=127.0.0.1", "--export-all"])
            .args(["--enable=receive-pack", "--informative-errors"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(&base);
        let mut server = Server::spawn(env, cmd, "git-daemon");
        server.wait_ready("git daemon", port, |_| true)?;
        Ok(GitDaemon {
            server,
            port,
            base,
            hold: None,
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The (canonical) base directory it serves.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// `git://127.0.0.1:<port>/<name>`, the URL of the repository `<base>/<name>`.
    pub fn url(&self, name: &str) -> String {
        format!(
            "git://127.0.0.1:{}/{}",
            self.port,
            name.trim_start_matches('/')
        )
    }

    /// Kills the server and reaps it (also done on drop). Connections being served finish on
    /// their own. The port stays held (connections refused) until this value is dropped, so
    /// that [`GitDaemon::start_on_port`] can start a server on it again.
    pub fn stop(&mut self) {
        self.server.stop();
        if self.hold.is_none() {
            self.hold = PortHold::bind(self.port);
        }
    }

    /// The server's log file.
    pub fn log(&self) -> String {
        self.server.log_text()
    }
}

/// An OpenSSH server on a free port of 127.0.0.1 that lets the current user log in with a key
/// made for it, so git can fetch and push over `ssh://`.
pub struct Sshd {
    server: Server,
    port: u16,
    user: String,
    user_key: PathBuf,
    known_hosts: PathBuf,
}

impl Sshd {
    /// Makes a host key, a user key, `authorized_keys`, `known_hosts` and `sshd_config` under
    /// `<root>/sshd-<n>/`, starts `sshd -D -e` and waits until it greets connections.
    pub fn start(env: &TestEnv) -> Sshd {
        let dir = env.path(format!("sshd-{}", env.unique()));
        fs::create_dir_all(&dir).expect("create the sshd directory");
        let keygen = |name: &str, comment: &str| {
            let mut cmd = env.command("ssh-keygen");
            cmd.args(["-q", "-t", "ed25519", "-N", "", "-C", comment])
                .arg("-f")
                .arg(dir.join(name));
            run_checked(&mut cmd, None);
            let public = fs::read_to_string(dir.join(format!("{name}.pub"))).expect("read a .pub");
            public.trim().to_string()
        };
        let host_public = keygen("host_key", "icyci-test-host");
        let user_public = keygen("user_key", "icyci-test-user");
        fs::write(dir.join("authorized_keys"), format!("{user_public}\n"))
            .expect("write authorized_keys");
        // sshd needs its privilege separation directory.
        fs::create_dir_all("/run/sshd").expect("create /run/sshd (are the tests run as root?)");
        let user = run_checked(Command::new("id").arg("-un").stdin(Stdio::null()), None);

        let mut errors = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let known_hosts = dir.join("known_hosts");
            let host_key_fields: Vec<&str> = host_public.split_whitespace().take(2).collect();
            fs::write(
                &known_hosts,
                format!("[127.0.0.1]:{port} {}\n", host_key_fields.join(" ")),
            )
            .expect("write known_hosts");
            let config = dir.join("sshd_config");
            fs::write(&config, sshd_config(&dir, port)).expect("write sshd_config");
            let mut cmd = env.command(SSHD);
            cmd.args(["-D", "-e", "-f"]).arg(&config);
            let mut server = Server::spawn(env, cmd, "sshd");
            match server.wait_ready("sshd", port, greets_with_ssh_banner) {
                Ok(()) => {
                    return Sshd {
                        server,
                        port,
                        user,
                        user_key: dir.join("user_key"),
                        known_hosts,
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        panic!("sshd did not start:\n{}", errors.join("\n"));
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user that may log in (the current user, from `id -un`).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The private key that may log in.
    pub fn user_key(&self) -> &Path {
        &self.user_key
    }

    /// `ssh://<user>@127.0.0.1:<port><path>`: the URL of the repository at the absolute path
    /// `repo`.
    pub fn url(&self, repo: impl AsRef<Path>) -> String {
        let repo = repo.as_ref();
        assert!(
            repo.is_absolute(),
            "Sshd::url needs an absolute path, not {}",
            repo.display()
        );
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            repo.display()
        )
    }

    /// A value for `GIT_SSH_COMMAND` that logs in with the user key, trusts exactly this
    /// server's host key and never prompts. The port comes from the URL ([`Sshd::url`]).
    pub fn git_ssh_command(&self) -> String {
        format!(
            "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} \
             -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o BatchMode=yes",
            shell_quote(&self.user_key),
            shell_quote(&self.known_hosts)
        )
    }

    /// Kills the server and reaps it (also done on drop). Sessions already open finish on their
    /// own.
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// The server's log (`LogLevel ERROR`, so normally empty).
    pub fn log(&self) -> String {
        self.server.log_text()
    }
}

fn sshd_config(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        "ListenAddress 127.0.0.1\n\
         Port {port}\n\
         HostKey {d}/host_key\n\
         AuthorizedKeysFile {d}/authorized_keys\n\
         StrictModes no\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PermitRootLogin prohibit-password\n\
         UsePAM no\n\
         PidFile {d}/sshd.pid\n\
         LogLevel ERROR\n"
    )
}

/// Whether the server on `stream` sends an SSH identification string.
fn greets_with_ssh_banner(mut stream: TcpStream) -> bool {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut banner = [0u8; 4];
    stream.read_exact(&mut banner).is_ok() && &banner == b"SSH-"
}

/// `path` in single quotes for `sh`.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}
