//! Whole-file tests: the documented example, JSON input, the shipped `proxy.yaml`, the
//! reference doc's example, serialisation and redaction. Problem reporting is in `problems.rs`.

mod problems;
mod sharding;

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::*;

/// The example from the schema brief, kept in sync with docs/config.md.
pub(crate) const EXAMPLE: &str = "\
listen: 127.0.0.1:6432
admin_listen: 127.0.0.1:9930
database: app
users:
  - name: app
    password: app-secret
    auth: scram
pool:
  mode: transaction
  size: 20
  checkout_timeout_ms: 5000
  max_client_connections: 10000
shards:
  - name: s0
    primary: 127.0.0.1:5432
    replicas: [127.0.0.1:5433]
tls:
  cert: /path/cert.pem
  key: /path/key.pem
";

fn node(host: &str, port: u16) -> NodeAddr {
    NodeAddr {
        host: host.to_owned(),
        port,
    }
}

fn socket(text: &str) -> SocketAddr {
    text.parse().expect("test literal is a socket address")
}

pub(crate) fn parse(text: &str) -> Config {
    match Config::from_yaml_str(text) {
        Ok(config) => config,
        Err(ConfigError::Invalid { problems }) => panic!("unexpected problems: {problems:#?}"),
        Err(err) => panic!("unexpected error: {err}"),
    }
}

fn expected_example() -> Config {
    Config {
        listen: socket("127.0.0.1:6432"),
        admin_listen: socket("127.0.0.1:9930"),
        workers: None,
        busy_poll_us: None,
        database: "app".into(),
        users: vec![UserConfig {
            name: "app".into(),
            password: "app-secret".into(),
            auth: AuthMethod::Scram,
        }],
        pool: PoolConfig {
            mode: PoolMode::Transaction,
            size: 20,
            checkout_timeout_ms: 5000,
            max_client_connections: 10_000,
            multiplex: 0,
        },
        shards: vec![ShardConfig {
            name: "s0".into(),
            primary: node("127.0.0.1", 5432),
            replicas: vec![node("127.0.0.1", 5433)],
        }],
        sharding: None,
        routing: crate::RoutingConfig::default(),
        reload: crate::ReloadConfig::default(),
        tls: Some(TlsConfig {
            cert: PathBuf::from("/path/cert.pem"),
            key: PathBuf::from("/path/key.pem"),
        }),
    }
}

#[test]
fn example_parses_to_the_expected_struct() {
    assert_eq!(parse(EXAMPLE), expected_example());
}

#[test]
fn json_parses_identically() {
    let json = r#"{
        "listen": "127.0.0.1:6432", "admin_listen": "127.0.0.1:9930", "database": "app",
        "users": [{"name": "app", "password": "app-secret", "auth": "scram"}],
        "pool": {"mode": "transaction", "size": 20, "checkout_timeout_ms": 5000,
                 "max_client_connections": 10000},
        "shards": [{"name": "s0", "primary": "127.0.0.1:5432", "replicas": ["127.0.0.1:5433"]}],
        "tls": {"cert": "/path/cert.pem", "key": "/path/key.pem"}
    }"#;
    assert_eq!(parse(json), parse(EXAMPLE));
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let config = parse(
        "database: app\nusers: [{name: app, password: pw}]\nshards: [{name: s0, primary: db:5432}]\n",
    );
    assert_eq!(config.listen, socket("127.0.0.1:6432"));
    assert_eq!(config.admin_listen, socket("127.0.0.1:9930"));
    assert_eq!(config.pool, PoolConfig::default());
    assert_eq!(config.users[0].auth, AuthMethod::Scram);
    assert_eq!(config.shards[0].replicas, Vec::new());
    assert_eq!(config.tls, None);
    assert_eq!(config.workers, None);
    assert!(config.worker_threads() >= 1);
    assert_eq!(config.worker_threads(), Config::default_workers());
}

#[test]
fn busy_poll_us_defaults_to_100_accepts_0_to_1000_and_nothing_else() {
    let base = "database: app\nusers: [{name: app, password: pw}]\n\
                shards: [{name: s0, primary: db:5432}]\n";
    let default = parse(base);
    assert_eq!(default.busy_poll_us, None);
    assert_eq!(default.busy_poll(), std::time::Duration::from_micros(100));
    for (text, us) in [
        ("busy_poll_us: 0", 0),
        ("busy_poll_us: 1000", 1000),
        ("busy_poll_us: 7", 7),
    ] {
        let config = parse(&format!("{text}\n{base}"));
        assert_eq!(
            config.busy_poll(),
            std::time::Duration::from_micros(us),
            "{text}"
        );
    }
    for bad in [
        "busy_poll_us: -1",
        "busy_poll_us: 1001",
        "busy_poll_us: fast",
        "busy_poll_us: 2.5",
    ] {
        match Config::from_yaml_str(&format!("{bad}\n{base}")) {
            Err(crate::ConfigError::Invalid { problems }) => {
                assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
                assert_eq!(problems[0].path, "busy_poll_us", "{bad}");
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn workers_is_read_and_checked() {
    let config = parse(
        "workers: 3\ndatabase: app\nusers: [{name: app, password: pw}]\n\
         shards:\n  - name: s0\n    primary: /var/run/postgresql:5432\n",
    );
    assert_eq!((config.workers, config.worker_threads()), (Some(3), 3));
    assert_eq!(
        config.shards[0].primary.unix_socket(),
        Some(std::path::PathBuf::from(
            "/var/run/postgresql/.s.PGSQL.5432"
        ))
    );
    for bad in ["workers: 0", "workers: 1025", "workers: two"] {
        let text = format!(
            "{bad}\ndatabase: app\nusers: [{{name: app, password: pw}}]\n\
             shards: [{{name: s0, primary: db:5432}}]\n"
        );
        match Config::from_yaml_str(&text) {
            Err(crate::ConfigError::Invalid { problems }) => {
                assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
                assert_eq!(problems[0].path, "workers", "{bad}");
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn empty_sections_and_partial_pool_use_defaults() {
    let config = parse(
        "database: app\nusers: [{name: app, password: pw, auth: trust}]\n\
         shards: [{name: s0, primary: db:5432, replicas: }]\npool:\n  size: 3\ntls:\n",
    );
    assert_eq!(config.pool.size, 3);
    assert_eq!(config.pool.mode, PoolMode::Transaction);
    assert_eq!(config.pool.checkout_timeout_ms, 5000);
    assert_eq!(config.tls, None);
}

#[test]
fn shipped_proxy_yaml_parses() {
    let config = parse(include_str!("../../../../proxy.yaml"));
    let mut expected = expected_example();
    expected.tls = None;
    assert_eq!(config, expected);
}

#[test]
fn reference_doc_example_parses() {
    let doc = include_str!("../../../../docs/config.md");
    let start = doc
        .find("```yaml\n")
        .map(|i| i + "```yaml\n".len())
        .expect("docs/config.md has a yaml block");
    let len = doc[start..].find("```").expect("yaml block is closed");
    assert_eq!(parse(&doc[start..start + len]), expected_example());
}

#[test]
fn serialised_config_reads_back_as_the_same_config() {
    let config = parse(EXAMPLE);
    let text = serde_yaml_ng::to_string(&config).expect("config serialises");
    assert_eq!(parse(&text), config);
}

#[test]
fn redaction_hides_passwords_everywhere() {
    let config = parse(EXAMPLE);
    let redacted = config.redacted();
    assert_eq!(redacted.users[0].password, "<redacted>");
    assert_eq!(redacted.users[0].name, "app");
    let serialised = serde_yaml_ng::to_string(&redacted).expect("config serialises");
    assert!(!serialised.contains("app-secret"), "{serialised}");
    assert!(!format!("{config:?}").contains("app-secret"));
    assert!(!format!("{:?}", config.users[0]).contains("app-secret"));
}

#[test]
fn user_lookup_and_display_forms() {
    let config = parse(EXAMPLE);
    assert_eq!(config.user("app").map(|u| u.auth), Some(AuthMethod::Scram));
    assert!(config.user("nobody").is_none());
    let methods = [AuthMethod::Scram, AuthMethod::Md5, AuthMethod::Trust].map(|m| m.to_string());
    assert_eq!(methods, ["scram", "md5", "trust"]);
    assert_eq!(node("::1", 5432).to_string(), "[::1]:5432");
    let problem = Problem {
        path: "pool.size".into(),
        message: "must be at least 1".into(),
    };
    assert_eq!(problem.to_string(), "pool.size: must be at least 1");
}

#[test]
fn load_reports_unreadable_files_and_parses_readable_ones() {
    let missing = std::path::Path::new("/nonexistent/shardgate/proxy.yaml");
    assert!(matches!(
        Config::load(missing),
        Err(ConfigError::Read { .. })
    ));
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proxy.yaml");
    assert_eq!(
        Config::load(&shipped).ok(),
        Some(parse(include_str!("../../../../proxy.yaml")))
    );
}

#[test]
fn routing_section_parses_and_reports_problems() {
    let base = "database: app\nusers: [{name: app, password: x}]\nshards: [{name: s0, primary: '127.0.0.1:5432'}]\n";
    let c = parse(&format!(
        "{base}routing:\n  read_write_split: false\n  max_replica_lag_bytes: 1024\n  max_replica_lag_ms: 50\n  lag_check_interval_ms: 100\n  when_no_replica: error\n  read_your_writes: false\n  write_functions: [audit_log, app.bump]\n  load_balance: round_robin\n"
    ));
    assert!(!c.routing.read_write_split);
    assert_eq!(c.routing.max_replica_lag_bytes, 1024);
    assert_eq!(c.routing.when_no_replica, crate::WhenNoReplica::Error);
    assert_eq!(c.routing.write_functions, vec!["audit_log", "app.bump"]);
    assert_eq!(c.routing.load_balance, crate::LoadBalance::RoundRobin);
    let Err(ConfigError::Invalid { problems }) = Config::from_yaml_str(&format!(
        "{base}routing:\n  read_write_split: maybe\n  when_no_replica: never\n  lag_check_interval_ms: 0\n  bogus: 1\n"
    )) else {
        panic!("expected problems");
    };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "routing.read_write_split",
            "routing.lag_check_interval_ms",
            "routing.when_no_replica",
            "routing.bogus"
        ]
    );
}
