//! PgBouncer as the reference pooler: transaction mode, the same pool size as shardgate and the
//! same SCRAM login, in front of the same primary.
//!
//! PgBouncer refuses to run as root, so when the benchmark is root it runs as the `postgres` OS
//! user (which the testkit already needs) through `runuser`, with its files handed to that user.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shardgate_testkit::{free_port, Topology};

use crate::shardgate::Backend;
use crate::{find_executable, wait_listening, BenchError};

/// The unprivileged OS user PgBouncer runs as when we are root.
const OS_USER: &str = "postgres";
/// How long PgBouncer may take to listen, and to stop after SIGTERM.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after it listens PgBouncer may take to write its pid file.
const PID_FILE_TIMEOUT: Duration = Duration::from_secs(2);
/// PgBouncer's (and runuser's) stderr, in the temp dir.
const CONSOLE_LOG: &str = "console.log";
/// Where PgBouncer writes its own process id.
const PID_FILE: &str = "pgbouncer.pid";

/// The installed PgBouncer, if any (Debian puts it in /usr/sbin, which a user's PATH may lack).
pub(crate) fn find() -> Option<PathBuf> {
    find_executable(
        "pgbouncer",
        &["/usr/sbin", "/usr/local/sbin", "/usr/local/bin"],
    )
}

/// A running PgBouncer; stopped on drop.
#[derive(Debug)]
pub(crate) struct Pgbouncer {
    port: u16,
    version: String,
    /// `runuser` when we are root, else PgBouncer itself.
    child: Child,
    /// PgBouncer's own process id, `None` if it could not be learnt.
    pid: Option<u32>,
    dir: tempfile::TempDir,
}

impl Pgbouncer {
    pub(crate) fn start(
        bin: &Path,
        topology: &Topology,
        pool_size: u32,
        backend: Backend,
    ) -> Result<Pgbouncer, BenchError> {
        let version = version(bin)?;
        let port = free_port();
        let dir = tempfile::tempdir()?;
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(
            dir.path().join("userlist.txt"),
            format!(
                "\"{}\" \"{}\"\n",
                topology.user().replace('"', "\"\""),
                topology.password().replace('"', "\"\"")
            ),
        )?;
        std::fs::write(
            &ini,
            ini_text(topology, dir.path(), port, pool_size, backend),
        )?;
        // PgBouncer logs to stderr in the foreground; a file keeps the benchmark's own output
        // readable and is shown if start-up fails.
        let console = std::fs::File::create(dir.path().join(CONSOLE_LOG))?;
        let as_root = running_as_root()?;
        let child = if as_root {
            run_checked(Command::new("chown").arg("-R").arg(OS_USER).arg(dir.path()))?;
            Command::new("runuser")
                .args(["-u", OS_USER, "--"])
                .arg(bin)
                .arg(&ini)
                .stdin(Stdio::null())
                .stderr(console)
                .spawn()?
        } else {
            Command::new(bin)
                .arg(&ini)
                .stdin(Stdio::null())
                .stderr(console)
                .spawn()?
        };
        let mut bouncer = Pgbouncer {
            port,
            version,
            child,
            pid: None,
            dir,
        };
        let dir = bouncer.dir.path().to_owned();
        wait_listening(
            &mut bouncer.child,
            port,
            "pgbouncer",
            READY_TIMEOUT,
            &|| format!("; log: {}", log_tail(&dir)),
        )?;
        bouncer.pid = bouncer.wait_pid_file();
        if bouncer.pid.is_none() && !as_root {
            bouncer.pid = Some(bouncer.child.id());
        }
        Ok(bouncer)
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// PgBouncer's own process (not `runuser`'s), for reading its CPU time from `/proc`.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Such as `PgBouncer 1.18.0`.
    pub(crate) fn version(&self) -> &str {
        &self.version
    }

    /// The pid PgBouncer wrote to its pid file, waiting a little for the file to appear.
    fn wait_pid_file(&self) -> Option<u32> {
        let deadline = Instant::now() + PID_FILE_TIMEOUT;
        loop {
            let pid = self.pid_file();
            if pid.is_some() || Instant::now() >= deadline {
                return pid;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn pid_file(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join(PID_FILE))
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
    }
}

/// The last lines PgBouncer (or `runuser`) wrote to its console log in `dir`.
fn log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join(CONSOLE_LOG)).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

impl Drop for Pgbouncer {
    /// SIGTERM to PgBouncer itself (its pid file names it), then waits for our child to exit.
    /// Signalling `runuser` instead would make it SIGKILL PgBouncer two seconds later and exit
    /// without reaping it, and `Child::kill` on `runuser` would orphan PgBouncer.
    fn drop(&mut self) {
        let pid = self.pid_file().unwrap_or_else(|| self.child.id());
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ini_text(
    topology: &Topology,
    dir: &Path,
    port: u16,
    pool_size: u32,
    backend: Backend,
) -> String {
    let primary = &topology.shards[0].primary;
    let host = match backend {
        Backend::Tcp => "127.0.0.1".to_owned(),
        Backend::Unix => primary.socket_dir().display().to_string(),
    };
    format!(
        "[databases]\n\
         {db} = host={host} port={primary} dbname={db}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_type = scram-sha-256\n\
         auth_file = {dir}/userlist.txt\n\
         pidfile = {dir}/{PID_FILE}\n\
         pool_mode = transaction\n\
         default_pool_size = {pool_size}\n\
         max_client_conn = 1000\n\
         log_connections = 0\n\
         log_disconnections = 0\n\
         ignore_startup_parameters = extra_float_digits\n",
        db = topology.database(),
        dir = dir.display(),
        primary = primary.port(),
    )
}

fn version(bin: &Path) -> Result<String, BenchError> {
    let text = run_checked(Command::new(bin).arg("--version"))?;
    Ok(text.lines().next().unwrap_or_default().trim().to_owned())
}

fn running_as_root() -> Result<bool, BenchError> {
    Ok(run_checked(Command::new("id").arg("-u"))?.trim() == "0")
}

/// Runs a short command and returns its stdout, or an error carrying its stderr.
fn run_checked(cmd: &mut Command) -> Result<String, BenchError> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(BenchError::Tool {
            command: format!("{cmd:?}"),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}
