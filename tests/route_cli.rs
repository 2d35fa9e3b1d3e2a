//! `shardgate route --config PATH "SQL"`: offline routing of one statement under a
//! candidate config (reads to a replica, writes to the primary), and a refusal listing every
//! problem for a bad file. No PostgreSQL: the addresses are never connected to.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const GOOD: &str = "\
listen: 127.0.0.1:16432
admin_listen: 127.0.0.1:19930
database: app
users: [{name: app, password: app-secret}]
shards:
  - name: s0
    primary: 127.0.0.1:15432
    replicas: [127.0.0.1:15433]
";

/// Two problems: an unknown key and a primary port out of range.
const BAD: &str = "\
database: app
users: [{name: app, password: app-secret}]
bogus_key: 1
shards: [{name: s0, primary: 127.0.0.1:99999}]
";

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).expect("write config");
    path
}

fn route(config: &Path, sql: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .arg("route")
        .arg("--config")
        .arg(config)
        .arg(sql)
        .env_remove("SHARDGATE_CONFIG")
        .output()
        .expect("run shardgate route")
}

/// The value of the `key: value` line in the output (first `:` separates).
fn field(out: &Output, key: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no {key:?} line in: {stdout}"))
}

#[test]
fn a_read_goes_to_the_replica() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = write(dir.path(), "good.yaml", GOOD);
    let out = route(&good, "SELECT 1");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(field(&out, "node"), "127.0.0.1:15433 (replica)", "{out:?}");
    assert_eq!(field(&out, "shard"), "s0", "{out:?}");
    assert!(!field(&out, "kind").is_empty());
    assert!(!field(&out, "reason").is_empty());
}

#[test]
fn a_write_goes_to_the_primary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = write(dir.path(), "good.yaml", GOOD);
    let out = route(&good, "INSERT INTO t VALUES (1)");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(field(&out, "node"), "127.0.0.1:15432 (primary)", "{out:?}");
    let reason = field(&out, "reason");
    assert!(reason.contains("write"), "reason: {reason}");
}

#[test]
fn without_replicas_a_read_goes_to_the_primary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = GOOD.replace("    replicas: [127.0.0.1:15433]\n", "");
    let config = write(dir.path(), "primary_only.yaml", &text);
    let out = route(&config, "SELECT 1");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(field(&out, "node"), "127.0.0.1:15432 (primary)", "{out:?}");
}

#[test]
fn a_bad_config_is_refused_with_every_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = write(dir.path(), "bad.yaml", BAD);
    let out = route(&bad, "SELECT 1");
    assert!(!out.status.success(), "{out:?}");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("bogus_key"), "{text}");
    assert!(text.contains("shards[0].primary"), "{text}");
    assert!(!text.contains("node:"), "routed under a bad config: {text}");
}
