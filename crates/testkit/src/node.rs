//! One PostgreSQL server (primary or streaming replica) of a topology: its files, its port and
//! its lifecycle. Tests drive failures through it (stop, kill, pause replay) while the proxy under
//! test keeps talking to the same address.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::conf::{write_node_conf, NodeSettings};
use crate::env::{run, try_free_port, PgEnv};
use crate::process::{children, is_alive, postmaster_pid, shmem_id, sigkill, wait_dead};
use crate::TestkitError;

/// How long a server may take to start or stop.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a fresh port is tried when another process grabbed ours first.
const PORT_ATTEMPTS: usize = 3;
/// Log lines attached to start-up errors.
const ERROR_LOG_LINES: usize = 30;

/// A running (or deliberately stopped) PostgreSQL server on 127.0.0.1.
#[derive(Debug)]
pub struct Node {
    name: String,
    /// Holds `data/`, the server log and the unix socket.
    dir: PathBuf,
    data_dir: PathBuf,
    port: u16,
    pg: PgEnv,
    /// Whether we started the server and have not stopped or killed it since; Drop uses it to
    /// shut down only what may still be running.
    running: AtomicBool,
}

impl Node {
    /// Configures the already-populated `<dir>/data` on a free port and starts it, retrying
    /// with another port if a different process took the chosen one in the meantime.
    pub(crate) fn launch(
        pg: &PgEnv,
        name: String,
        dir: PathBuf,
        settings: &NodeSettings,
    ) -> Result<Node, TestkitError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let node = Node {
                name: name.clone(),
                data_dir: dir.join("data"),
                dir: dir.clone(),
                port: try_free_port()?,
                pg: pg.clone(),
                running: AtomicBool::new(false),
            };
            write_node_conf(&node.data_dir, node.port, &node.dir, settings)?;
            pg.give_to_postgres(&node.dir)?;
            // A fresh log, so the port-collision check below reads only this attempt.
            match std::fs::remove_file(node.log_path()) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
            match node.start() {
                Ok(()) => return Ok(node),
                Err(_) if attempt < PORT_ATTEMPTS && node.port_was_taken() => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The TCP port the server listens on (always on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The directory holding the node's Unix socket (`.s.PGSQL.<port>`), as libpq's `host`
    /// takes it.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The PostgreSQL data directory (PGDATA).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The node's short name, such as `s0-primary` or `s1-replica0`.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Whether the server was started by us, not stopped since, and its postmaster is alive.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst) && postmaster_pid(&self.data_dir).is_some_and(is_alive)
    }

    /// Runs `sql` as superuser `postgres` in database `db` through psql and returns its
    /// unaligned, tuples-only output, trimmed. Several statements run as one implicit
    /// transaction, as with any single `psql -c`.
    pub fn sql(&self, db: &str, sql: &str) -> Result<String, TestkitError> {
        let port = self.port.to_string();
        let out = run(self
            .pg
            .command("psql")
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ]))?;
        Ok(out.trim().to_owned())
    }

    /// Asks a replica to stop applying WAL (it keeps receiving it). Replay halts before the next
    /// record, so whatever the primary commits after this returns stays invisible here.
    pub fn pause_replay(&self) -> Result<(), TestkitError> {
        self.sql("postgres", "SELECT pg_wal_replay_pause()")
            .map(drop)
    }

    /// Lets a paused replica apply WAL again.
    pub fn resume_replay(&self) -> Result<(), TestkitError> {
        self.sql("postgres", "SELECT pg_wal_replay_resume()")
            .map(drop)
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast`) and waits until it is gone.
    pub fn stop(&self) -> Result<(), TestkitError> {
        self.pg_ctl_stop("fast")?;
        self.running.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Crashes the server: SIGKILL to the postmaster, as a machine or OOM-killer would.
    ///
    /// Returns once the postmaster and all its children are gone, so [`Node::start`] can follow
    /// at once (PostgreSQL refuses to start while old backends still hold shared memory).
    pub fn kill(&self) -> Result<(), TestkitError> {
        let pid = postmaster_pid(&self.data_dir)
            .filter(|&p| is_alive(p))
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("node {} has no live postmaster to kill", self.name),
                )
            })?;
        // Freeze it first so it cannot fork a child we would then miss.
        run(std::process::Command::new("kill").args(["-STOP", &pid.to_string()]))?;
        let kids = children(pid);
        sigkill(pid)?;
        self.running.store(false, Ordering::SeqCst);
        if !wait_dead(&[pid], READY_TIMEOUT) {
            return Err(self.timeout(format!("postmaster {pid} of {} to die", self.name)));
        }
        // Children exit by themselves on postmaster death, but a backend busy in a long query
        // only notices at its next wait; do not let a test hang on it.
        if !wait_dead(&kids, Duration::from_secs(5)) {
            for &kid in kids.iter().filter(|&&k| is_alive(k)) {
                let _ = sigkill(kid);
            }
            if !wait_dead(&kids, READY_TIMEOUT) {
                return Err(self.timeout(format!("children of {} to die", self.name)));
            }
        }
        self.clear_stale_lock();
        Ok(())
    }

    /// Removes the lock files (postmaster.pid, the socket's .lock) and the SysV segment named in
    /// postmaster.pid, once every process of the node is dead. PostgreSQL would clean them up
    /// itself, except that it takes a zombie postmaster (left where init does not reap, as in
    /// some containers) for a live one and refuses to start.
    fn clear_stale_lock(&self) {
        if let Some(id) = shmem_id(&self.data_dir) {
            // Fails harmlessly when the segment is gone or was never SysV.
            let _ = std::process::Command::new("ipcrm")
                .args(["-m", &id])
                .output();
        }
        let socket = format!(".s.PGSQL.{}", self.port);
        let _ = std::fs::remove_file(self.dir.join(format!("{socket}.lock")));
        let _ = std::fs::remove_file(self.dir.join(socket));
        let _ = std::fs::remove_file(self.data_dir.join("postmaster.pid"));
    }

    /// Starts the server (after [`Node::stop`] or [`Node::kill`]) and waits until it accepts
    /// connections; a replica counts as ready once it accepts read-only connections.
    pub fn start(&self) -> Result<(), TestkitError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        // Set first: if pg_ctl times out, the postmaster may still come up, and Drop must stop it.
        self.running.store(true, Ordering::SeqCst);
        let timeout_secs = READY_TIMEOUT.as_secs().to_string();
        let started = run(self
            .pg
            .command("pg_ctl")
            .args(["start", "-w", "-t", &timeout_secs, "-D"])
            .arg(&self.data_dir)
            .arg("-l")
            .arg(self.log_path()));
        match started {
            Ok(_) => self.wait_ready(deadline),
            Err(TestkitError::Command { output, .. })
                if output.contains("did not start in time") =>
            {
                Err(self.timeout(format!("{} to start", self.name)))
            }
            Err(TestkitError::Command {
                cmd,
                status,
                output,
            }) => {
                self.running.store(false, Ordering::SeqCst);
                let tail = self.log_tail(ERROR_LOG_LINES);
                Err(TestkitError::Command {
                    cmd,
                    status,
                    output: format!("{output}\n--- server log tail ---\n{tail}"),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// [`Node::stop`] then [`Node::start`].
    pub fn restart(&self) -> Result<(), TestkitError> {
        self.stop()?;
        self.start()
    }

    /// The last `lines` lines of the server log (empty if there is none yet).
    pub fn log_tail(&self, lines: usize) -> String {
        let Ok(bytes) = std::fs::read(self.log_path()) else {
            return String::new();
        };
        let text = String::from_utf8_lossy(&bytes);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Shuts the server down without a checkpoint, ignoring failure; for teardown only.
    pub(crate) fn stop_immediately(&self) {
        if self.running.swap(false, Ordering::SeqCst) {
            let _ = self.pg_ctl_stop("immediate");
        }
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<(), TestkitError> {
        let timeout_secs = READY_TIMEOUT.as_secs().to_string();
        run(self
            .pg
            .command("pg_ctl")
            .args(["stop", "-w", "-t", &timeout_secs, "-m", mode, "-D"])
            .arg(&self.data_dir))
        .map(drop)
    }

    /// Polls `pg_isready` until the server accepts connections or `deadline` passes.
    fn wait_ready(&self, deadline: Instant) -> Result<(), TestkitError> {
        let port = self.port.to_string();
        loop {
            let status = self
                .pg
                .command("pg_isready")
                .args(["-q", "-h", "127.0.0.1", "-p", &port, "-t", "1"])
                .status()?;
            if status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.timeout(format!("{} to accept connections", self.name)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn timeout(&self, what: String) -> TestkitError {
        TestkitError::Timeout {
            what,
            log_tail: self.log_tail(ERROR_LOG_LINES),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("log")
    }

    fn port_was_taken(&self) -> bool {
        let tail = self.log_tail(ERROR_LOG_LINES);
        tail.contains("could not bind IPv4 address") || tail.contains("Address already in use")
    }
}

impl Drop for Node {
    /// A node must not outlive its test, including one that panicked half-way through a build.
    fn drop(&mut self) {
        self.stop_immediately();
    }
}
