//! The command line: `shardgate check` on good and bad files, the `SHARDGATE_CONFIG`
//! fallback, and `--help`.

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
