//! The shardgate binary under test, built by cargo with the bench (release) profile and run
//! with a generated config in front of the topology's shards.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shardgate_testkit::{free_port, Topology};

use crate::{wait_listening, BenchError};

/// How long the proxy may take to listen.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running shardgate; killed on drop.
#[derive(Debug)]
pub(crate) struct Shardgate {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Shardgate {
    /// Starts shardgate in transaction mode with `pool_size` server connections.
    pub(crate) fn start(topology: &Topology, pool_size: u32) -> Result<Shardgate, BenchError> {
        Self::start_with(topology, pool_size, "")
    }

    /// As [`Shardgate::start`], reaching the nodes over `backend`, with `pool.multiplex` set
    /// to `multiplex`.
    pub(crate) fn start_over(
        topology: &Topology,
        pool_size: u32,
        backend: Backend,
        multiplex: u32,
    ) -> Result<Shardgate, BenchError> {
        Self::launch(topology, pool_size, backend, multiplex, "")
    }

    /// As [`Shardgate::start`], with `extra_yaml` (whole top-level sections, such as
    /// `sharding:`) appended to the config.
    pub(crate) fn start_with(
        topology: &Topology,
        pool_size: u32,
        extra_yaml: &str,
    ) -> Result<Shardgate, BenchError> {
        Self::launch(topology, pool_size, Backend::Tcp, 0, extra_yaml)
    }

    fn launch(
        topology: &Topology,
        pool_size: u32,
        backend: Backend,
        multiplex: u32,
        extra_yaml: &str,
    ) -> Result<Shardgate, BenchError> {
        let port = free_port();
        let admin_port = free_port();
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("proxy.yaml");
        let mut yaml = config_yaml(topology, port, admin_port, pool_size, multiplex);
        if backend == Backend::Unix {
            yaml = topology.over_unix_sockets(&yaml);
        }
        yaml.push_str(extra_yaml);
        std::fs::write(&config, yaml)?;
        let child = Command::new(env!("CARGO_BIN_EXE_shardgate"))
            .arg("--config")
            .arg(&config)
            .env(
                "SHARDGATE_LOG",
                std::env::var("SHARDGATE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .spawn()?;
        let mut proxy = Shardgate {
            port,
            child,
            _dir: dir,
        };
        wait_listening(&mut proxy.child, port, "shardgate", READY_TIMEOUT, &|| {
            " (its log is above)".to_owned()
        })?;
        Ok(proxy)
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// The process id, for reading its memory and CPU time from `/proc`.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Shardgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The generated config; `SG_BENCH_BUSY_POLL_US`, when set, becomes its `busy_poll_us` (to
/// compare with polling off, `0`, or another window).
fn config_yaml(
    topology: &Topology,
    port: u16,
    admin_port: u16,
    pool_size: u32,
    multiplex: u32,
) -> String {
    let busy_poll = match std::env::var("SG_BENCH_BUSY_POLL_US") {
        Ok(us) => format!("busy_poll_us: {us}\n"),
        Err(_) => String::new(),
    };
    format!(
        "{busy_poll}listen: 127.0.0.1:{port}\n\
         admin_listen: 127.0.0.1:{admin_port}\n\
         database: {db}\n\
         users:\n  - name: {user}\n    password: {password}\n\
         pool:\n  mode: transaction\n  size: {pool_size}\n  multiplex: {multiplex}\n\
         {shards}",
        db = topology.database(),
        user = topology.user(),
        password = topology.password(),
        shards = topology.shards_yaml(),
    )
}

/// How a proxy reaches PostgreSQL: loopback TCP, or the node's Unix socket (a pooler on the
/// database host, PgBouncer's usual deployment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Tcp,
    Unix,
}
