//! Real drivers through shardgate, unchanged: asyncpg, psycopg 3 (`prepare_threshold=0`)
//! and JDBC (`prepareThreshold=1`). Each opens more connections than the pool has servers
//! and uses named prepared statements, pipelining, COPY, cancel requests and SCRAM.
//!
//! The driver programs live in `tests/drivers/`; each prints what failed and exits
//! non-zero. A test skips (with a message) when its driver is not installed, so a dev box
//! without them still passes; CI (`.ci/run`) installs them.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shardgate_testkit::Topology;
use support::{Proxy, ProxyOptions};

/// The system Python: the Debian asyncpg/psycopg packages are installed for it only.
const PYTHON: &str = "/usr/bin/python3";
const JDBC_JAR: &str = "/usr/share/java/postgresql.jar";
/// A driver program that runs longer than this is stuck (each script also bounds itself).
const DRIVER_TIMEOUT: Duration = Duration::from_secs(45);

fn drivers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers")
}

/// Fewer servers than the drivers' 6 connections, so checkouts really are shared.
const SMALL_POOL: u32 = 2;

fn small_pool(topology: &Topology, pool_size: u32) -> Proxy {
    Proxy::start_with(
        topology,
        ProxyOptions {
            pool_size,
            checkout_timeout_ms: 20_000,
            ..ProxyOptions::default()
        },
    )
}

/// Runs `cmd` to completion or kills it after `timeout`; returns (exit success, stdout,
/// stderr). Output is read on threads so a chatty child cannot block on a full pipe.
fn run_bounded(cmd: &mut Command, timeout: Duration) -> (bool, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for driver") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    match status {
        Some(status) => (status.success(), out, err),
        None => (false, out, format!("{err}\n[killed after {timeout:?}]")),
    }
}

/// True when `/usr/bin/python3` can import `module`.
fn python_has(module: &str) -> bool {
    Command::new(PYTHON)
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs one Python driver script against the proxy (a pool of `pool_size` servers) with the
/// conn params as argv.
fn run_python_check(script: &str, pool_size: u32) {
    let topology = Topology::builder().build().expect("topology");
    let proxy = small_pool(&topology, pool_size);
    let port = proxy.port.to_string();
    let (ok, out, err) = run_bounded(
        Command::new(PYTHON).arg(drivers_dir().join(script)).args([
            "127.0.0.1",
            &port,
            topology.user(),
            topology.password(),
            topology.database(),
        ]),
        DRIVER_TIMEOUT,
    );
    assert!(ok, "{script} failed\n--- stdout\n{out}\n--- stderr\n{err}");
    assert_eq!(out.trim_end().lines().last(), Some("OK"), "{script}: {out}");
}

#[test]
fn asyncpg_through_a_small_pool() {
    if !python_has("asyncpg") {
        eprintln!("SKIP asyncpg_through_a_small_pool: {PYTHON} cannot import asyncpg");
        return;
    }
    run_python_check("asyncpg_check.py", SMALL_POOL);
}

/// asyncpg retries a query whose cached statement the server reports stale (0A000 after an
/// `ALTER TABLE`) by preparing it again under a new name. One server connection, so that the
/// statement cached before the change is on the connection that fails it.
#[test]
fn asyncpg_recovers_after_alter_table() {
    if !python_has("asyncpg") {
        eprintln!("SKIP asyncpg_recovers_after_alter_table: {PYTHON} cannot import asyncpg");
        return;
    }
    run_python_check("asyncpg_ddl_check.py", 1);
}

#[test]
fn psycopg3_prepare_threshold_zero_through_a_small_pool() {
    if !python_has("psycopg") {
        eprintln!("SKIP psycopg3: {PYTHON} cannot import psycopg (python3-psycopg)");
        return;
    }
    run_python_check("psycopg_check.py", SMALL_POOL);
}

#[test]
fn jdbc_through_a_small_pool() {
    let have_java = ["javac", "java"].iter().all(|tool| {
        Command::new(tool)
            .arg("-version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !have_java || !Path::new(JDBC_JAR).exists() {
        eprintln!("SKIP jdbc_through_a_small_pool: needs javac, java and {JDBC_JAR}");
        return;
    }
    let classes = tempfile::tempdir().expect("tempdir");
    let (ok, out, err) = run_bounded(
        Command::new("javac")
            .args(["-cp", JDBC_JAR, "-d"])
            .arg(classes.path())
            .arg(drivers_dir().join("JdbcCheck.java")),
        DRIVER_TIMEOUT,
    );
    assert!(ok, "javac failed\n{out}\n{err}");

    let topology = Topology::builder().build().expect("topology");
    let proxy = small_pool(&topology, SMALL_POOL);
    let url = format!(
        "jdbc:postgresql://127.0.0.1:{}/{}?prepareThreshold=1&sslmode=disable&connectTimeout=10",
        proxy.port,
        topology.database()
    );
    let classpath = format!("{JDBC_JAR}:{}", classes.path().display());
    let (ok, out, err) = run_bounded(
        Command::new("java").args([
            "-cp",
            &classpath,
            "JdbcCheck",
            &url,
            topology.user(),
            topology.password(),
        ]),
        DRIVER_TIMEOUT,
    );
    assert!(ok, "JdbcCheck failed\n--- stdout\n{out}\n--- stderr\n{err}");
    assert_eq!(
        out.trim_end().lines().last(),
        Some("OK"),
        "JdbcCheck: {out}"
    );
}
