//! Where the PostgreSQL binaries are, which OS user runs them, and how a command is run.
//!
//! PostgreSQL refuses to run as root, so when the test process is root every PostgreSQL binary
//! runs as the `postgres` OS user through `runuser`, and every directory it touches is handed to
//! that user first. Nothing here opens a socket beyond 127.0.0.1.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::TestkitError;

/// Overrides the PostgreSQL binary directory search.
const BINDIR_ENV: &str = "SHARDGATE_PG_BINDIR";
/// The OS user PostgreSQL runs as when we are root.
const PG_OS_USER: &str = "postgres";

/// Finds the directory holding `initdb`, `pg_ctl` and friends.
///
/// Order: `$SHARDGATE_PG_BINDIR`, `pg_config --bindir`, the newest `/usr/lib/postgresql/*/bin`,
/// then `$PATH`. A candidate counts only if it really holds `initdb` and `pg_ctl` (Debian's
/// `pg_config` from libpq-dev alone may point at a directory without the server).
pub fn pg_bindir() -> Result<PathBuf, TestkitError> {
    find_bindir(std::env::var_os(BINDIR_ENV))
}

/// [`pg_bindir`] with the override passed in, so tests need not touch the process environment.
fn find_bindir(override_dir: Option<std::ffi::OsString>) -> Result<PathBuf, TestkitError> {
    if let Some(dir) = override_dir {
        let dir = PathBuf::from(dir);
        return if has_server_binaries(&dir) {
            Ok(dir)
        } else {
            Err(TestkitError::NoPostgres(format!(
                "{BINDIR_ENV}={} holds no initdb/pg_ctl",
                dir.display()
            )))
        };
    }
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    let candidates = from_pg_config
        .into_iter()
        .chain(newest_debian_bindir())
        .chain(
            std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths)
                .collect::<Vec<_>>(),
        );
    for dir in candidates {
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
    }
    Err(TestkitError::NoPostgres(format!(
        "no directory with initdb and pg_ctl found (tried pg_config --bindir, \
         /usr/lib/postgresql/*/bin and $PATH); install the server with \
         `apt-get install postgresql` or point {BINDIR_ENV} at its bin directory"
    )))
}

fn has_server_binaries(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("pg_ctl").is_file()
}

/// `/usr/lib/postgresql/<major>/bin` with the highest numeric major, if any.
fn newest_debian_bindir() -> Option<PathBuf> {
    let entries = std::fs::read_dir("/usr/lib/postgresql").ok()?;
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((major, e.path().join("bin")))
        })
        .filter(|(_, bin)| has_server_binaries(bin))
        .max_by_key(|(major, _)| *major)
        .map(|(_, bin)| bin)
}

/// Overrides where topologies and the template are created.
const SCRATCH_ENV: &str = "SHARDGATE_TESTKIT_TMPDIR";
/// RAM-backed scratch space is used only with this much room, because PostgreSQL itself needs
/// /dev/shm for dynamic shared memory and containers often give it just 64 MB.
const MIN_SHM_FREE_KB: u64 = 2 * 1024 * 1024;

/// The directory under which topologies and the initdb template are created:
/// `$SHARDGATE_TESTKIT_TMPDIR`, else `/dev/shm` when it is a roomy tmpfs, else the system temp
/// dir. On disk, copying one data directory can cost over a second of kernel time on a busy
/// virtual disk; on tmpfs it takes milliseconds, and nothing here needs to survive a reboot.
pub(crate) fn scratch_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        if let Some(dir) = std::env::var_os(SCRATCH_ENV) {
            return PathBuf::from(dir);
        }
        let shm = Path::new("/dev/shm");
        if shm.is_dir() && free_kb(shm).is_some_and(|kb| kb >= MIN_SHM_FREE_KB) {
            return shm.to_path_buf();
        }
        std::env::temp_dir()
    })
}

/// Free space in KiB of the filesystem holding `dir`, per POSIX `df -Pk`.
fn free_kb(dir: &Path) -> Option<u64> {
    let out = Command::new("df").arg("-Pk").arg(dir).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().nth(1)?.split_whitespace().nth(3)?.parse().ok()
}

/// Whether this process runs with effective uid 0.
pub(crate) fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        // /proc avoids `unsafe` geteuid(); `id -u` covers systems without /proc.
        let from_proc = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("Uid:"))?;
                line.split_whitespace().nth(2).map(|euid| euid == "0")
            });
        from_proc.unwrap_or_else(|| {
            Command::new("id")
                .arg("-u")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
                .unwrap_or(false)
        })
    })
}

/// How to run PostgreSQL binaries: from where, and as whom.
#[derive(Debug, Clone)]
pub(crate) struct PgEnv {
    bindir: PathBuf,
    as_postgres: bool,
}

impl PgEnv {
    pub(crate) fn detect() -> Result<Self, TestkitError> {
        Ok(PgEnv {
            bindir: pg_bindir()?,
            as_postgres: is_root(),
        })
    }

    /// A command for the PostgreSQL tool `bin`, wrapped in `runuser` when we are root.
    pub(crate) fn command(&self, bin: &str) -> Command {
        let program = self.bindir.join(bin);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", PG_OS_USER, "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        // The caller's cwd may be unreadable for the postgres user (e.g. /root), which makes
        // initdb and pg_ctl fail on getcwd().
        cmd.current_dir("/");
        // Connection settings of the caller's environment must not redirect our tools.
        for var in [
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGOPTIONS",
            "PGSERVICE",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }

    /// Makes `path` (recursively) owned by the user PostgreSQL runs as; a no-op when not root.
    pub(crate) fn give_to_postgres(&self, path: &Path) -> Result<(), TestkitError> {
        if !self.as_postgres {
            return Ok(());
        }
        let mut cmd = Command::new("chown");
        cmd.arg("-R").arg(format!("{PG_OS_USER}:")).arg(path);
        run(&mut cmd).map(drop)
    }
}

/// Runs `cmd` to completion and returns its stdout; a non-zero exit becomes
/// [`TestkitError::Command`] carrying stdout and stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<String, TestkitError> {
    let output = cmd.output()?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(TestkitError::command(display(cmd), output.status, &output))
    }
}

/// A shell-like rendering of `cmd` for error messages.
pub(crate) fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A currently free port on 127.0.0.1.
///
/// # Panics
/// If the loopback interface cannot bind at all, since then no test could run anyway.
pub fn free_port() -> u16 {
    match try_free_port() {
        Ok(port) => port,
        Err(e) => panic!("cannot bind 127.0.0.1:0 to find a free port: {e}"),
    }
}

/// A free 127.0.0.1 port that this process has not handed out before.
///
/// The OS may return a port again right after we release it; remembering what we gave out keeps
/// nodes started in parallel threads from racing for one port. Other processes can still take it,
/// which node start-up handles by retrying with a new port.
pub(crate) fn try_free_port() -> std::io::Result<u16> {
    static ISSUED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut last = 0;
    for _ in 0..64 {
        last = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let mut issued = ISSUED.lock().unwrap_or_else(|p| p.into_inner());
        if issued.get_or_insert_with(HashSet::new).insert(last) {
            return Ok(last);
        }
    }
    // Every recent pick was one we issued already; a reused port beats failing outright.
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_override_is_reported_not_skipped() {
        let err = find_bindir(Some("/nonexistent/bin".into()));
        assert!(
            matches!(&err, Err(TestkitError::NoPostgres(msg)) if msg.contains("/nonexistent/bin")),
            "{err:?}"
        );
    }

    #[test]
    fn free_ports_are_distinct_within_the_process() {
        let a = try_free_port().expect("port");
        let b = try_free_port().expect("port");
        assert_ne!(a, b);
        assert_ne!(free_port(), 0);
    }

    #[test]
    fn display_renders_program_and_args() {
        let mut cmd = Command::new("pg_ctl");
        cmd.args(["stop", "-D", "/x"]);
        assert_eq!(display(&cmd), "pg_ctl stop -D /x");
    }
}
