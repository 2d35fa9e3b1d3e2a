//! Shared helpers for integration tests: run the real `shardgate` binary against a
//! testkit topology, on free loopback ports, and connect to it.
#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shardgate_testkit::{free_port, Topology};

/// A running shardgate process; killed on drop.
pub struct Proxy {
    pub port: u16,
    pub admin_port: u16,
    pub config_path: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

/// Options for the generated config.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    pub pool_mode: &'static str,
    pub pool_size: u32,
    pub checkout_timeout_ms: u64,
    pub max_client_connections: u32,
    /// Extra `users:` entries (YAML list items, indented by 2), besides the topology's user.
    pub extra_users: String,
    /// Extra top-level YAML appended verbatim.
    pub extra_yaml: String,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            pool_mode: "transaction",
            pool_size: 10,
            checkout_timeout_ms: 5000,
            max_client_connections: 10000,
            extra_users: String::new(),
            extra_yaml: String::new(),
        }
    }
}

impl Proxy {
    pub fn start(topology: &Topology) -> Proxy {
        Proxy::start_with(topology, ProxyOptions::default())
    }

    pub fn config_yaml(
        topology: &Topology,
        port: u16,
        admin_port: u16,
        o: &ProxyOptions,
    ) -> String {
        format!(
            "listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:{admin_port}\ndatabase: {db}\nusers:\n  - name: {user}\n    password: {password}\n{extra_users}pool:\n  mode: {mode}\n  size: {size}\n  checkout_timeout_ms: {timeout}\n  max_client_connections: {maxc}\n{shards}{extra}",
            db = topology.database(),
            user = topology.user(),
            password = topology.password(),
            extra_users = o.extra_users,
            mode = o.pool_mode,
            size = o.pool_size,
            timeout = o.checkout_timeout_ms,
            maxc = o.max_client_connections,
            shards = topology.shards_yaml(),
            extra = o.extra_yaml,
        )
    }

    pub fn start_with(topology: &Topology, options: ProxyOptions) -> Proxy {
        let port = free_port();
        let admin_port = free_port();
        Proxy::start_yaml(
            &Proxy::config_yaml(topology, port, admin_port, &options),
            port,
            admin_port,
        )
    }

    /// Starts the binary with this exact config text (which must listen on `port`).
    pub fn start_yaml(yaml: &str, port: u16, admin_port: u16) -> Proxy {
        Proxy::start_yaml_env(yaml, port, admin_port, &[])
    }

    /// [`Proxy::start_yaml`] with extra environment variables for the process.
    pub fn start_yaml_env(yaml: &str, port: u16, admin_port: u16, env: &[(&str, &str)]) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("proxy.yaml");
        std::fs::File::create(&config_path)
            .and_then(|mut f| f.write_all(yaml.as_bytes()))
            .expect("write config");
        let child = Command::new(env!("CARGO_BIN_EXE_shardgate"))
            .arg("--config")
            .arg(&config_path)
            .env(
                "SHARDGATE_LOG",
                std::env::var("SHARDGATE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn shardgate");
        let proxy = Proxy {
            port,
            admin_port,
            config_path,
            child: Some(child),
            _dir: dir,
        };
        proxy.wait_ready();
        proxy
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("shardgate did not start listening on {addr}");
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// libpq/tokio-postgres connection string for the topology's user.
    pub fn conn_str(&self, topology: &Topology) -> String {
        format!(
            "host=127.0.0.1 port={} user={} password={} dbname={}",
            self.port,
            topology.user(),
            topology.password(),
            topology.database()
        )
    }

    /// postgresql:// URL for psql/pgbench.
    pub fn url(&self, topology: &Topology) -> String {
        format!(
            "postgresql://{}:{}@127.0.0.1:{}/{}",
            topology.user(),
            topology.password(),
            self.port,
            topology.database()
        )
    }

    pub async fn connect(&self, topology: &Topology) -> tokio_postgres::Client {
        connect(&self.conn_str(topology))
            .await
            .expect("connect through shardgate")
    }

    /// Sends SIGTERM (graceful stop).
    pub fn sigterm(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
    }

    /// Waits for the process to exit; returns its exit status success.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<bool> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status.success());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// GET on the admin port; returns (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin_port, path)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Connects with tokio-postgres and drives the connection on a spawned task.
pub async fn connect(conn_str: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conn_str, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// One HTTP/1.0 request to 127.0.0.1:port; (status, body), or None if anything fails.
fn http_exchange(port: u16, request: &str, read_timeout: Duration) -> Option<(u16, String)> {
    use std::io::Read;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(read_timeout)).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// A minimal blocking HTTP/1.0 GET against 127.0.0.1:port; panics if there is no answer.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    try_http_get(port, path).unwrap_or_else(|| panic!("GET {path} on port {port}: no answer"))
}

/// Runs a command-line tool (psql, pgbench) and returns (success, stdout, stderr).
pub fn run_tool(cmd: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(cmd)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run tool");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Connects with tokio-postgres and forwards the connection's asynchronous messages
/// (notices, notifications) to the returned channel while driving it.
pub async fn connect_with_messages(
    conn_str: &str,
) -> Result<
    (
        tokio_postgres::Client,
        tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::AsyncMessage>,
    ),
    tokio_postgres::Error,
> {
    use futures_util::StreamExt;
    let (client, mut connection) = tokio_postgres::connect(conn_str, tokio_postgres::NoTls).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            let _ = tx.send(message);
        }
    });
    Ok((client, rx))
}

/// Connection string straight to a node, bypassing shardgate (for observing the server).
pub fn direct_conn_str(topology: &Topology, node: &shardgate_testkit::Node) -> String {
    format!(
        "host=127.0.0.1 port={} user={} password={} dbname={}",
        node.port(),
        topology.user(),
        topology.password(),
        topology.database()
    )
}

/// Starts shardgate with the topology's user switched to `auth: trust`, so that raw
/// protocol clients can connect without implementing SCRAM.
pub fn start_trust(topology: &Topology, options: ProxyOptions) -> Proxy {
    let port = free_port();
    let admin_port = free_port();
    let password_line = format!("    password: {}\n", topology.password());
    let yaml = Proxy::config_yaml(topology, port, admin_port, &options).replacen(
        &password_line,
        &format!("{password_line}    auth: trust\n"),
        1,
    );
    Proxy::start_yaml(&yaml, port, admin_port)
}

/// Raw-socket protocol helpers.
pub mod raw;

/// GET on the admin port without panicking (the admin listener may not be up yet):
/// `None` when the connection or the read fails.
pub fn try_http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    http_exchange(port, &request, Duration::from_secs(5))
}

impl Proxy {
    /// GET a JSON admin endpoint; panics unless it answers 200 with valid JSON.
    pub fn admin_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.admin_get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// The replica entries of shard 0 in `/api/topology`, if the admin API answers.
    pub fn replica_nodes(&self) -> Option<Vec<serde_json::Value>> {
        let (status, body) = try_http_get(self.admin_port, "/api/topology")?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let nodes = v["shards"][0]["nodes"].as_array()?;
        Some(
            nodes
                .iter()
                .filter(|n| n["role"] == "replica")
                .cloned()
                .collect(),
        )
    }
}

/// Polls `/api/topology` until at least `n` replicas of shard 0 are routable; panics with
/// the last topology seen after `timeout`.
pub async fn wait_routable(proxy: &Proxy, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let nodes = proxy.replica_nodes();
        let routable = nodes
            .as_ref()
            .map_or(0, |ns| ns.iter().filter(|r| r["routable"] == true).count());
        if routable >= n {
            return;
        }
        if Instant::now() >= deadline {
            panic!("{n} replicas not routable within {timeout:?}: {nodes:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls `cond` (every 20 ms) until it is true; returns how long that took, or `None` after
/// `timeout`.
pub async fn poll_until<F, Fut>(timeout: Duration, mut cond: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return Some(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Terminates, through `direct` (a connection straight to the server), every other backend
/// whose query text holds `marker`, trying every 20 ms until there is one. False if there was
/// none within `timeout`.
pub async fn terminate_backends_running(
    direct: &tokio_postgres::Client,
    marker: &str,
    timeout: Duration,
) -> bool {
    let sql = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE query LIKE '%{marker}%' AND pid <> pg_backend_pid()"
    );
    let sql = sql.as_str();
    poll_until(timeout, || async move {
        first_cell(direct, sql).await.is_some()
    })
    .await
    .is_some()
}

/// The first column of the first row `sql` returns through the simple protocol (None: no row,
/// or NULL). Panics if the statement fails.
pub async fn first_cell(client: &tokio_postgres::Client, sql: &str) -> Option<String> {
    let msgs = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    msgs.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    })
}

/// Runs `sql` with the simple protocol and returns the `port` column of every row, in order
/// (name the `inet_server_port()` column `port`).
pub async fn ports(client: &tokio_postgres::Client, sql: &str) -> Vec<u16> {
    let msgs = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    msgs.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                r.get("port")
                    .unwrap_or_else(|| panic!("{sql}: no port column"))
                    .parse()
                    .unwrap_or_else(|e| panic!("{sql}: bad port: {e}")),
            ),
            _ => None,
        })
        .collect()
}

/// The one `port` of a single-row statement.
pub async fn port(client: &tokio_postgres::Client, sql: &str) -> u16 {
    let p = ports(client, sql).await;
    assert_eq!(p.len(), 1, "{sql}: expected one row, got {p:?}");
    p[0]
}

/// A minimal blocking HTTP/1.0 POST with an empty body against 127.0.0.1:port; returns
/// (status, body).
pub fn http_post(port: u16, path: &str) -> (u16, String) {
    let request = format!("POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n");
    // A reload validates and builds pools: allow it more than a GET.
    http_exchange(port, &request, Duration::from_secs(15))
        .unwrap_or_else(|| panic!("POST {path} on port {port}: no answer"))
}

/// The value of one Prometheus series (exact name with labels, e.g.
/// `shardgate_config_reloads_total{result="refused"}`) in a `/metrics` text; `None` when absent.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

impl Proxy {
    /// The process id, while the process is running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGHUP (reload the config file).
    pub fn sighup(&self) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .arg("-HUP")
                .arg(child.id().to_string())
                .status()
                .expect("run kill");
            assert!(status.success(), "kill -HUP failed");
        }
    }

    /// Replaces the config file's contents (the next reload reads them).
    pub fn rewrite_config(&self, yaml: &str) {
        std::fs::write(&self.config_path, yaml).expect("rewrite config");
    }

    /// `POST /api/reload`; returns the status and the JSON body.
    pub fn reload(&self) -> (u16, serde_json::Value) {
        let (status, body) = http_post(self.admin_port, "/api/reload");
        let v = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("POST /api/reload: {e}: {status} {body}"));
        (status, v)
    }

    /// `config_version` from `/api/config`.
    pub fn config_version(&self) -> u64 {
        let v = self.admin_json("/api/config");
        v["config_version"]
            .as_u64()
            .unwrap_or_else(|| panic!("/api/config without config_version: {v}"))
    }

    /// One series from `/metrics` (see [`metric_value`]).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (status, text) = self.admin_get("/metrics");
        assert_eq!(status, 200, "GET /metrics: {text}");
        metric_value(&text, series)
    }
}

/// Sharding helpers: a 2-shard `sharding` config and the hash rule computed independently.
pub mod sharded;
