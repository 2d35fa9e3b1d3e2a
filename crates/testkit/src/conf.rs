//! The configuration files every node gets: `shardgate.conf` (included from postgresql.conf) and
//! pg_hba.conf. Settings favour start-up speed and test throughput over durability, since a
//! test cluster is thrown away at the end.

use std::path::Path;

use crate::template::NODE_CONF;

/// pg_hba methods a topology may use for its application user.
pub(crate) const AUTH_METHODS: &[&str] = &["scram-sha-256", "md5", "password", "trust", "reject"];

/// Settings shared by every node of a topology.
#[derive(Debug, Clone)]
pub(crate) struct NodeSettings {
    /// The pg_hba method for every user but `postgres`.
    pub(crate) auth: String,
    /// Extra postgresql.conf lines from the builder, written last so they win.
    pub(crate) extra: Vec<String>,
}

impl NodeSettings {
    /// md5 auth needs md5-hashed passwords; everything else works with (and prefers) SCRAM.
    fn password_encryption(&self) -> &'static str {
        if self.auth == "md5" {
            "md5"
        } else {
            "scram-sha-256"
        }
    }
}

/// Writes `<data>/shardgate.conf` for a node listening on `port` with its socket in `socket_dir`.
///
/// `dynamic_shared_memory_type = mmap` keeps DSM segments in `<data>/pg_dynshmem` rather than in
/// /dev/shm: an immediate stop or a SIGKILL skips their cleanup, and segments in /dev/shm would
/// then outlive the removed data directory, a megabyte of RAM per node, forever.
pub(crate) fn write_node_conf(
    data_dir: &Path,
    port: u16,
    socket_dir: &Path,
    settings: &NodeSettings,
) -> std::io::Result<()> {
    let socket_dir = socket_dir.to_string_lossy().replace('\'', "''");
    let mut text = format!(
        "# Written by shardgate-testkit; included from postgresql.conf.\n\
         listen_addresses = '127.0.0.1'\n\
         port = {port}\n\
         unix_socket_directories = '{socket_dir}'\n\
         fsync = off\n\
         synchronous_commit = off\n\
         full_page_writes = off\n\
         wal_level = replica\n\
         max_wal_senders = 10\n\
         hot_standby = on\n\
         max_prepared_transactions = 10\n\
         wal_keep_size = '256MB'\n\
         shared_buffers = '32MB'\n\
         max_connections = 200\n\
         logging_collector = off\n\
         dynamic_shared_memory_type = mmap\n\
         password_encryption = '{}'\n",
        settings.password_encryption()
    );
    for line in &settings.extra {
        text.push_str(line);
        text.push('\n');
    }
    std::fs::write(data_dir.join(NODE_CONF), text)
}

/// Writes `<data>/pg_hba.conf`: the superuser and replication are trusted on loopback and the
/// Unix socket (the kit drives them through psql and pg_basebackup), everyone else uses
/// `settings.auth`, over TCP and the socket alike.
pub(crate) fn write_hba(data_dir: &Path, settings: &NodeSettings) -> std::io::Result<()> {
    let text = format!(
        "# Written by shardgate-testkit.\n\
         host all postgres 127.0.0.1/32 trust\n\
         host replication all 127.0.0.1/32 trust\n\
         host all all 127.0.0.1/32 {auth}\n\
         local all postgres trust\n\
         local all all {auth}\n",
        auth = settings.auth
    );
    std::fs::write(data_dir.join("pg_hba.conf"), text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(auth: &str) -> NodeSettings {
        NodeSettings {
            auth: auth.to_owned(),
            extra: vec!["work_mem = '8MB'".to_owned()],
        }
    }

    #[test]
    fn node_conf_has_port_socket_and_extra_lines_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_node_conf(dir.path(), 5999, Path::new("/tmp/o'k"), &settings("md5")).expect("write");
        let text = std::fs::read_to_string(dir.path().join(NODE_CONF)).expect("read");
        assert!(text.contains("port = 5999\n"));
        assert!(text.contains("unix_socket_directories = '/tmp/o''k'\n"));
        assert!(text.contains("password_encryption = 'md5'\n"));
        assert!(text.ends_with("work_mem = '8MB'\n"));
    }

    #[test]
    fn hba_trusts_only_postgres_and_replication() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_hba(dir.path(), &settings("scram-sha-256")).expect("write");
        let text = std::fs::read_to_string(dir.path().join("pg_hba.conf")).expect("read");
        let rules: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            rules,
            [
                "host all postgres 127.0.0.1/32 trust",
                "host replication all 127.0.0.1/32 trust",
                "host all all 127.0.0.1/32 scram-sha-256",
                "local all postgres trust",
                "local all all scram-sha-256",
            ]
        );
    }
}
