//! Integration tests against real PostgreSQL servers started by the kit itself.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use shardgate_testkit::{pg_bindir, TestkitError, Topology};

const CATCH_UP: Duration = Duration::from_secs(30);

#[test]
fn replica_streams_from_primary_and_is_in_recovery() -> Result<(), TestkitError> {
    let topo = Topology::builder().replicas(1).build()?;
    let shard = &topo.shards[0];
    let (primary, replica) = (&shard.primary, &shard.replicas[0]);
    let db = topo.database();

    primary.sql(db, "CREATE TABLE t (id int PRIMARY KEY, v text)")?;
    primary.sql(db, "INSERT INTO t VALUES (1, 'one'), (2, 'two')")?;
    topo.wait_replicas_caught_up(CATCH_UP)?;

    assert_eq!(
        replica.sql(db, "SELECT string_agg(v, ',' ORDER BY id) FROM t")?,
        "one,two"
    );
    assert_eq!(replica.sql(db, "SELECT pg_is_in_recovery()")?, "t");
    assert_eq!(primary.sql(db, "SELECT pg_is_in_recovery()")?, "f");
    // The application role and database were created before cloning, so the replica has them.
    assert_eq!(
        replica.sql(
            "postgres",
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'"
        )?,
        "app"
    );
    assert!(topo.shards_yaml().contains(&format!(
        "  - name: s0\n    primary: 127.0.0.1:{}\n    replicas: [127.0.0.1:{}]\n",
        primary.port(),
        replica.port()
    )));
    Ok(())
}

#[test]
fn paused_replica_hides_new_rows_until_resumed() -> Result<(), TestkitError> {
    let topo = Topology::builder().replicas(1).build()?;
    let shard = &topo.shards[0];
    let (primary, replica) = (&shard.primary, &shard.replicas[0]);
    let db = topo.database();

    primary.sql(db, "CREATE TABLE t (id int)")?;
    topo.wait_replicas_caught_up(CATCH_UP)?;
    replica.pause_replay()?;
    primary.sql(db, "INSERT INTO t VALUES (1)")?;
    // Give replay every chance to (wrongly) apply the insert.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(replica.sql(db, "SELECT count(*) FROM t")?, "0");
    let stuck = topo.wait_replicas_caught_up(Duration::from_millis(300));
    assert!(
        matches!(stuck, Err(TestkitError::Timeout { .. })),
        "{stuck:?}"
    );

    replica.resume_replay()?;
    topo.wait_replicas_caught_up(CATCH_UP)?;
    assert_eq!(replica.sql(db, "SELECT count(*) FROM t")?, "1");
    Ok(())
}

#[test]
fn killed_nodes_restart_and_drop_leaves_nothing_behind() -> Result<(), TestkitError> {
    let topo = Topology::builder().replicas(1).build()?;
    let shard = &topo.shards[0];
    let (primary, replica) = (&shard.primary, &shard.replicas[0]);
    let db = topo.database();

    primary.sql(db, "CREATE TABLE t (id int)")?;
    // synchronous_commit is off, so only checkpointed rows are sure to survive a crash.
    primary.sql(db, "INSERT INTO t VALUES (1)")?;
    primary.sql(db, "CHECKPOINT")?;

    primary.kill()?;
    assert!(!primary.is_running());
    assert!(primary.sql(db, "SELECT 1").is_err());
    primary.start()?;
    assert!(primary.is_running());
    assert_eq!(primary.sql(db, "SELECT count(*) FROM t")?, "1");

    replica.kill()?;
    primary.sql(db, "INSERT INTO t VALUES (2)")?;
    replica.start()?;
    topo.wait_replicas_caught_up(CATCH_UP)?;
    assert_eq!(replica.sql(db, "SELECT count(*) FROM t")?, "2");

    replica.restart()?;
    assert_eq!(replica.sql(db, "SELECT pg_is_in_recovery()")?, "t");

    let dir = topo.dir().to_path_buf();
    let pids = [
        postmaster_pid(primary.data_dir()),
        postmaster_pid(replica.data_dir()),
    ];
    drop(topo);

    assert!(!dir.exists(), "{} still exists", dir.display());
    for pid in pids {
        assert!(!process_alive(pid), "postmaster {pid} survived the drop");
    }
    let dir = dir.to_string_lossy().into_owned();
    assert!(
        processes_mentioning(&dir).is_empty(),
        "processes still use {dir}"
    );
    Ok(())
}

#[test]
fn two_shards_with_a_replica_each_build_in_parallel() -> Result<(), TestkitError> {
    // Build once first so the one-off initdb is not part of the measurement.
    drop(Topology::builder().build()?);
    let started = Instant::now();
    let topo = Topology::builder().shards(2).replicas(1).build()?;
    eprintln!("2 shards x 1 replica built in {:?}", started.elapsed());

    let names: Vec<&str> = topo.shards.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["s0", "s1"]);
    let mut ports: Vec<u16> = topo
        .shards
        .iter()
        .flat_map(|s| std::iter::once(&s.primary).chain(&s.replicas))
        .map(|n| n.port())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 4);
    for shard in &topo.shards {
        assert!(shard.primary.addr().ip().is_loopback());
        assert_eq!(
            shard.replicas[0].sql("postgres", "SELECT pg_is_in_recovery()")?,
            "t"
        );
    }
    Ok(())
}

#[test]
fn app_user_logs_in_with_its_password_only() -> Result<(), TestkitError> {
    for auth in ["scram-sha-256", "md5"] {
        let topo = Topology::builder()
            .user("alice", "s3cret'x")
            .database("shop")
            .auth(auth)
            .build()?;
        let port = topo.shards[0].primary.port();
        assert_eq!(
            psql_as(port, "alice", "s3cret'x", "shop"),
            Ok("alice".to_owned()),
            "{auth}"
        );
        assert!(psql_as(port, "alice", "wrong", "shop").is_err(), "{auth}");
    }
    Ok(())
}

/// Runs `SELECT current_user` over TCP as a password-authenticated client.
fn psql_as(port: u16, user: &str, password: &str, db: &str) -> Result<String, String> {
    let psql = pg_bindir().map_err(|e| e.to_string())?.join("psql");
    let out = Command::new(psql)
        .args([
            "-X",
            "-A",
            "-t",
            "-w",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .args(["-U", user, "-d", db, "-c", "SELECT current_user"])
        .env("PGPASSWORD", password)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn postmaster_pid(data_dir: &Path) -> u32 {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).unwrap_or_default();
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}

/// Zombies count as dead: the container's init may never reap them.
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with(['Z', 'X'])
        })
        .unwrap_or(false)
}

fn processes_mentioning(needle: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (process_alive(pid) && cmdline.contains(needle)).then_some(cmdline)
        })
        .collect()
}

#[test]
fn a_node_that_cannot_start_fails_the_build_with_its_log() {
    let err = Topology::builder()
        .replicas(1)
        .conf("shared_buffers = 'not-a-size'")
        .build();
    match err {
        Err(TestkitError::Command { output, .. }) => {
            assert!(output.contains("shared_buffers"), "{output}")
        }
        other => panic!("expected a start failure, got {other:?}"),
    }
}
