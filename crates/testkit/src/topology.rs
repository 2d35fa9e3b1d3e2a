//! Building and tearing down a whole topology: N shards, each a primary plus R streaming
//! replicas, under one temp dir that disappears with the [`Topology`].
//!
//! Shards are independent, so they are built in parallel threads; within a shard the primary
//! must exist (with the application role and database) before its replicas are cloned from it,
//! and then the replicas are cloned in parallel too.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::conf::{write_hba, NodeSettings, AUTH_METHODS};
use crate::env::{run, scratch_root, PgEnv};
use crate::node::Node;
use crate::template::template_data_dir;
use crate::TestkitError;

/// Configures a [`Topology`]; obtained from [`Topology::builder`].
#[derive(Debug, Clone)]
pub struct TopologyBuilder {
    shards: usize,
    replicas: usize,
    user: String,
    password: String,
    database: String,
    auth: String,
    extra_conf: Vec<String>,
}

/// Running PostgreSQL servers for one test. Dropping it stops them all and removes their files.
#[derive(Debug)]
pub struct Topology {
    /// The shards, named `s0`, `s1`, ... in order.
    pub shards: Vec<Shard>,
    // Declared after `shards`: fields drop in order, and the files must outlive the servers.
    dir: TempDir,
    user: String,
    password: String,
    database: String,
}

/// One shard: a primary and the replicas streaming from it.
#[derive(Debug)]
pub struct Shard {
    /// `s0`, `s1`, ...
    pub name: String,
    /// The read-write server.
    pub primary: Node,
    /// Hot standbys streaming from `primary`.
    pub replicas: Vec<Node>,
}

impl TopologyBuilder {
    /// Number of shards (default 1).
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = n;
        self
    }

    /// Streaming replicas per shard (default 0).
    pub fn replicas(mut self, r: usize) -> Self {
        self.replicas = r;
        self
    }

    /// The application login role and its password (default `app` / `app-secret`). It may not
    /// be `postgres`, the superuser the kit itself uses.
    pub fn user(mut self, name: &str, password: &str) -> Self {
        name.clone_into(&mut self.user);
        password.clone_into(&mut self.password);
        self
    }

    /// The application database, owned by the application role (default `app`); not
    /// `postgres`, which already exists.
    pub fn database(mut self, name: &str) -> Self {
        name.clone_into(&mut self.database);
        self
    }

    /// The pg_hba method for every user but `postgres`: `scram-sha-256` (default), `md5`,
    /// `password`, `trust` or `reject`.
    pub fn auth(mut self, method: &str) -> Self {
        method.clone_into(&mut self.auth);
        self
    }

    /// An extra postgresql.conf line for every node, applied after the kit's own settings.
    pub fn conf(mut self, line: &str) -> Self {
        self.extra_conf.push(line.to_owned());
        self
    }

    /// Starts every server and returns once all accept connections.
    pub fn build(self) -> Result<Topology, TestkitError> {
        self.validate()?;
        let pg = PgEnv::detect()?;
        let template = template_data_dir(&pg)?;
        let dir = tempfile::Builder::new()
            .prefix("shardgate-")
            .tempdir_in(scratch_root())?;
        pg.give_to_postgres(dir.path())?;
        let settings = NodeSettings {
            auth: self.auth.clone(),
            extra: self.extra_conf.clone(),
        };
        let results: Vec<Result<Shard, TestkitError>> = thread::scope(|s| {
            let handles: Vec<_> = (0..self.shards)
                .map(|i| {
                    let (pg, settings, root, this) = (&pg, &settings, dir.path(), &self);
                    s.spawn(move || this.build_shard(i, pg, template, root, settings))
                })
                .collect();
            handles.into_iter().map(join_propagating_panic).collect()
        });
        // On error the shards that did come up are dropped here, which stops them.
        let shards = results.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(Topology {
            shards,
            dir,
            user: self.user,
            password: self.password,
            database: self.database,
        })
    }

    fn validate(&self) -> Result<(), TestkitError> {
        if self.shards == 0 {
            return Err(TestkitError::invalid_input(
                "a topology needs at least one shard".into(),
            ));
        }
        if !AUTH_METHODS.contains(&self.auth.as_str()) {
            return Err(TestkitError::invalid_input(format!(
                "auth method {:?} is not one of {AUTH_METHODS:?}",
                self.auth
            )));
        }
        for (what, name) in [("user", &self.user), ("database", &self.database)] {
            if name.is_empty() || name.contains('\0') || name == "postgres" {
                return Err(TestkitError::invalid_input(format!(
                    "{what} name {name:?} must be non-empty, without NUL, and not `postgres`"
                )));
            }
        }
        Ok(())
    }

    fn build_shard(
        &self,
        index: usize,
        pg: &PgEnv,
        template: &Path,
        root: &Path,
        settings: &NodeSettings,
    ) -> Result<Shard, TestkitError> {
        let name = format!("s{index}");
        let primary_dir = new_node_dir(root, &format!("{name}-primary"))?;
        let data = primary_dir.join("data");
        run(Command::new("cp").arg("-a").arg(template).arg(&data))?;
        write_hba(&data, settings)?;
        let primary = Node::launch(pg, format!("{name}-primary"), primary_dir, settings)?;
        self.create_app_objects(&primary)?;
        let replicas = thread::scope(|s| {
            let handles: Vec<_> = (0..self.replicas)
                .map(|j| {
                    let node_name = format!("{name}-replica{j}");
                    let primary = &primary;
                    s.spawn(move || clone_replica(pg, primary, root, node_name, settings))
                })
                .collect();
            handles
                .into_iter()
                .map(join_propagating_panic)
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(Shard {
            name,
            primary,
            replicas,
        })
    }

    /// Creates the application role and database on a fresh primary, before any replica is
    /// cloned, so the replicas have them too.
    fn create_app_objects(&self, primary: &Node) -> Result<(), TestkitError> {
        let user = quote_ident(&self.user);
        let db = quote_ident(&self.database);
        let password = quote_literal(&self.password);
        primary.sql(
            "postgres",
            &format!("CREATE ROLE {user} LOGIN PASSWORD {password}"),
        )?;
        // CREATE DATABASE cannot share a psql -c with other statements (implicit transaction).
        primary.sql("postgres", &format!("CREATE DATABASE {db} OWNER {user}"))?;
        primary.sql(
            &self.database,
            &format!("GRANT ALL ON SCHEMA public TO {user}"),
        )?;
        Ok(())
    }
}

/// Clones a hot standby from `primary` with pg_basebackup and starts it.
fn clone_replica(
    pg: &PgEnv,
    primary: &Node,
    root: &Path,
    name: String,
    settings: &NodeSettings,
) -> Result<Node, TestkitError> {
    let dir = new_node_dir(root, &name)?;
    pg.give_to_postgres(&dir)?;
    let port = primary.port().to_string();
    run(pg
        .command("pg_basebackup")
        .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-w"])
        .args(["-R", "-X", "stream", "-c", "fast", "--no-sync", "-D"])
        .arg(dir.join("data")))?;
    Node::launch(pg, name, dir, settings)
}

fn new_node_dir(root: &Path, name: &str) -> Result<PathBuf, TestkitError> {
    let dir = root.join(name);
    std::fs::create_dir(&dir)?;
    Ok(dir)
}

/// Joins a scoped thread, re-raising its panic in the caller so a test fails with the original
/// message rather than a generic one.
fn join_propagating_panic<T>(handle: thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

impl Topology {
    /// A builder with the defaults: 1 shard, 0 replicas, user `app` / `app-secret`, database
    /// `app`, scram-sha-256.
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder {
            shards: 1,
            replicas: 0,
            user: "app".to_owned(),
            password: "app-secret".to_owned(),
            database: "app".to_owned(),
            auth: "scram-sha-256".to_owned(),
            extra_conf: Vec::new(),
        }
    }

    /// The temp dir holding every node's files; removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The application login role.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The application role's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The application database.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// A proxy.yaml fragment listing the shards with their primary and replica addresses.
    pub fn shards_yaml(&self) -> String {
        let mut out = String::from("shards:\n");
        for shard in &self.shards {
            let replicas: Vec<String> = shard
                .replicas
                .iter()
                .map(|r| r.addr().to_string())
                .collect();
            // Writing to a String cannot fail.
            let _ = write!(
                out,
                "  - name: {}\n    primary: {}\n    replicas: [{}]\n",
                shard.name,
                shard.primary.addr(),
                replicas.join(", ")
            );
        }
        out
    }

    /// `yaml` with every node's `127.0.0.1:port` replaced by its Unix socket directory and port
    /// (`/dir:port`, as libpq spells a socket), so a proxy config reaches the nodes over their
    /// sockets. Panics if a node's address is not in `yaml`: a config it did not name would
    /// silently stay on TCP.
    pub fn over_unix_sockets(&self, yaml: &str) -> String {
        let mut out = yaml.to_owned();
        for shard in &self.shards {
            for node in std::iter::once(&shard.primary).chain(&shard.replicas) {
                let tcp = node.addr().to_string();
                assert!(out.contains(&tcp), "{tcp} is not in the config");
                let unix = format!("{}:{}", node.socket_dir().display(), node.port());
                out = out.replace(&tcp, &unix);
            }
        }
        out
    }

    /// Waits until every replica has replayed all WAL its primary had written when this was
    /// called, so a read on a replica sees every write made before.
    pub fn wait_replicas_caught_up(&self, timeout: Duration) -> Result<(), TestkitError> {
        let deadline = Instant::now() + timeout;
        let mut targets = Vec::new();
        for shard in self.shards.iter().filter(|s| !s.replicas.is_empty()) {
            // The insert position, not pg_current_wal_lsn(): with synchronous_commit=off a
            // commit just made may still sit in WAL buffers, beyond the write position, and
            // waiting for the write position would return before that commit is replayed.
            let lsn = shard
                .primary
                .sql("postgres", "SELECT pg_current_wal_insert_lsn()")?;
            if !lsn.chars().all(|c| c.is_ascii_hexdigit() || c == '/') {
                return Err(TestkitError::invalid_input(format!(
                    "unexpected LSN {lsn:?}"
                )));
            }
            targets.push((shard, lsn));
        }
        for (shard, lsn) in targets {
            let query = format!("SELECT coalesce(pg_last_wal_replay_lsn() >= '{lsn}', false)");
            for replica in &shard.replicas {
                while replica.sql("postgres", &query)? != "t" {
                    if Instant::now() >= deadline {
                        let what = format!("{} to replay WAL up to {lsn}", replica.name());
                        return Err(replica.timeout(what));
                    }
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
        Ok(())
    }

    fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.shards
            .iter()
            .flat_map(|s| std::iter::once(&s.primary).chain(&s.replicas))
    }
}

impl Drop for Topology {
    /// Stops every server at once (immediate mode: no checkpoint, nothing worth keeping); the
    /// temp dir is removed afterwards when the `dir` field drops.
    fn drop(&mut self) {
        thread::scope(|s| {
            for node in self.nodes() {
                s.spawn(|| node.stop_immediately());
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_embedded_quotes() {
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn builder_rejects_unknown_auth_and_zero_shards() {
        let err = Topology::builder().auth("ident").build();
        assert!(
            matches!(err, Err(TestkitError::Io(ref e)) if e.kind() == std::io::ErrorKind::InvalidInput)
        );
        let err = Topology::builder().shards(0).build();
        assert!(
            matches!(err, Err(TestkitError::Io(ref e)) if e.kind() == std::io::ErrorKind::InvalidInput)
        );
    }
}
