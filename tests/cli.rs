//! The command line: `shardgate check` on good and bad files, the `SHARDGATE_CONFIG`
//! fallback, `--help`, and the README's first command, `shardgate demo`.

use std::path::Path;
use std::process::{Command, Output};

const GOOD: &str = "\
listen: 127.0.0.1:16432
admin_listen: 127.0.0.1:19930
database: app
users: [{name: app, password: app-secret}]
pool: {size: 4}
shards: [{name: s0, primary: 127.0.0.1:5432}]
";

/// Three problems: an unknown key, an address that is not ip:port, and a pool of size 0.
const BAD: &str = "\
listen: not-an-address
database: app
users: [{name: app, password: app-secret}]
pool: {size: 0, sise: 3}
shards: [{name: s0, primary: 127.0.0.1:5432}]
";

fn shardgate(args: &[&str], dir: &Path, env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardgate"));
    cmd.args(args)
        .current_dir(dir)
        .env_remove("SHARDGATE_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run shardgate")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn write(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).expect("write config");
    path
}

#[test]
fn check_accepts_a_good_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = write(dir.path(), "good.yaml", GOOD);
    let out = shardgate(
        &["check", "--config", good.to_str().expect("utf-8")],
        dir.path(),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok"),
        "{}",
        text(&out)
    );
}

#[test]
fn check_reports_every_problem_with_its_key_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = write(dir.path(), "bad.yaml", BAD);
    let out = shardgate(
        &["check", "--config", bad.to_str().expect("utf-8")],
        dir.path(),
        &[],
    );
    assert!(!out.status.success(), "a bad config passed: {}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().map(str::trim).collect();
    for prefix in ["listen:", "pool.size:", "pool.sise:"] {
        assert!(
            lines.iter().any(|l| l.starts_with(prefix)),
            "no problem reported at {prefix}\n{stderr}"
        );
    }
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("pool.sise:") && l.contains("unknown key")),
        "{stderr}"
    );
}

#[test]
fn shardgate_config_env_var_is_honoured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = write(dir.path(), "good.yaml", GOOD);
    let bad = write(dir.path(), "bad.yaml", BAD);
    // No proxy.yaml in the working directory: only the variable can lead to a file.
    let out = shardgate(&["check"], dir.path(), &[("SHARDGATE_CONFIG", &good)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("good.yaml"), "{}", text(&out));
    let out = shardgate(&["check"], dir.path(), &[("SHARDGATE_CONFIG", &bad)]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("pool.sise"), "{}", text(&out));
    // --config wins over the variable.
    let out = shardgate(
        &["check", "--config", good.to_str().expect("utf-8")],
        dir.path(),
        &[("SHARDGATE_CONFIG", &bad)],
    );
    assert!(out.status.success(), "{}", text(&out));
    // Neither: ./proxy.yaml, which does not exist here.
    let out = shardgate(&["check"], dir.path(), &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("proxy.yaml"), "{}", text(&out));
}

#[test]
fn help_lists_the_subcommands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = shardgate(&["--help"], dir.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    for sub in ["check", "demo", "--config"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(sub)),
            "{sub} missing:\n{help}"
        );
    }
}

/// `shardgate demo` end to end, as the README's first command: it starts 2 shards with a
/// replica each, prints a psql line that works, and on Ctrl-C stops and removes its data.
/// It listens on the fixed ports 6432 and 9930; if either is taken here, the test says so
/// and skips.
#[test]
fn demo_prints_a_working_psql_line_and_cleans_up_on_ctrl_c() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};
    for port in [6432, 9930] {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            eprintln!("skipped: 127.0.0.1:{port} is in use");
            return;
        }
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .arg("demo")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the demo");
    // The psql line is on stdout, progress (and the data directory) on stderr.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    for pipe in [
        Box::new(stdout) as Box<dyn std::io::Read + Send>,
        Box::new(stderr),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut psql, mut data) = (None, None);
    while psql.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            panic!("the demo printed no psql line within 120 s");
        };
        if let Some(dir) = line.trim().strip_prefix("data under ") {
            data = Some(std::path::PathBuf::from(dir));
        }
        if line.trim_start().starts_with("PGPASSWORD=") && line.contains("psql ") {
            psql = Some(line.trim().to_owned());
        }
    }
    let psql = psql.expect("psql line");
    let data = data.expect("the demo names its data directory");
    assert!(data.is_dir(), "{}", data.display());
    // The line as printed, with a statement added.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{psql} -XAtq -c \"INSERT INTO users (id, name) VALUES (1, 'ann'), (2, 'bob')\" \
             -c 'SELECT name FROM users WHERE id = 2' -c 'SELECT count(*) FROM users'"
        ))
        .output()
        .expect("run psql");
    let shown = text(&out);
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let stopped = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the demo") {
            break status;
        }
        if Instant::now() > stopped {
            let _ = child.kill();
            panic!("the demo did not stop within 60 s of Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(out.status.success(), "{shown}");
    assert_eq!(shown.lines().collect::<Vec<_>>(), ["bob", "2"], "{shown}");
    assert!(status.success(), "{status:?}");
    assert!(!data.exists(), "{} was left behind", data.display());
}
