//! The per-process initdb template. `initdb` costs about a second of CPU; copying its result with
//! `cp -a` costs a few milliseconds, so every primary in this process starts from one copy.
//!
//! The template lives in `<scratch root>/shardgate-template-<pid>`. Statics are never dropped, so it
//! outlives the process; the next process that builds a template removes the ones whose pid is
//! gone, which bounds the leftovers to one directory per crashed or finished test binary.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::env::{run, scratch_root, PgEnv};
use crate::TestkitError;

const PREFIX: &str = "shardgate-template-";
/// The file every node's postgresql.conf includes; [`crate::node`] writes it per node.
pub(crate) const NODE_CONF: &str = "shardgate.conf";

static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
/// Serializes the first initdb; a failed initdb leaves `TEMPLATE` unset so a later call retries.
static INIT: Mutex<()> = Mutex::new(());

/// The data directory of the template cluster, creating it on first use.
pub(crate) fn template_data_dir(pg: &PgEnv) -> Result<&'static Path, TestkitError> {
    if let Some(dir) = TEMPLATE.get() {
        return Ok(dir);
    }
    let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(dir) = TEMPLATE.get() {
        return Ok(dir);
    }
    remove_stale_templates();
    let root = scratch_root().join(format!("{PREFIX}{}", std::process::id()));
    if root.exists() {
        // Half-built by an earlier failed attempt in this process.
        std::fs::remove_dir_all(&root)?;
    }
    std::fs::create_dir(&root)?;
    pg.give_to_postgres(&root)?;
    let data = root.join("data");
    let initdb = run(pg
        .command("initdb")
        .args([
            "--no-sync",
            "--no-instructions",
            "-A",
            "trust",
            "-U",
            "postgres",
        ])
        .args(["-E", "UTF8", "--locale=C"])
        // 1 MB WAL segments instead of 16 MB: every copy and every base backup carries at
        // least one segment, and tests never write enough WAL for the size to matter.
        .arg("--wal-segsize=1")
        .arg("-D")
        .arg(&data));
    if let Err(e) = initdb {
        let _ = std::fs::remove_dir_all(&root);
        return Err(e);
    }
    // Node-specific settings go in an included file so a replica cloned by pg_basebackup can
    // replace them without editing (or duplicating) postgresql.conf.
    let conf = data.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf)?;
    text.push_str(&format!("\ninclude_if_exists '{NODE_CONF}'\n"));
    std::fs::write(&conf, text)?;
    Ok(TEMPLATE.get_or_init(|| data))
}

/// Removes templates left by processes that no longer exist.
fn remove_stale_templates() {
    // Without /proc every pid would look dead, and live processes' templates would go.
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(scratch_root()) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
