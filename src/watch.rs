//! `reload: {watch: true}`: polls the config file and reloads once a change has
//! settled, so a half-written file is not read (and one that is still invalid is
//! refused like any other).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::app::stopped;
use crate::reload::Reloader;

/// How often the file is looked at.
const POLL: Duration = Duration::from_millis(250);

/// What identifies a version of the file without reading it.
fn stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Reloads after the file changed and then stayed the same for one poll interval.
pub(crate) async fn watch_file(reloader: Arc<Reloader>, mut stop: watch::Receiver<bool>) {
    let Some(path) = reloader.path().cloned() else {
        return;
    };
    let mut applied = stamp(&path);
    let mut pending: Option<(SystemTime, u64)> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stopped(&mut stop) => return,
        }
        let now = stamp(&path);
        if now == applied {
            pending = None;
            continue;
        }
        if now.is_some() && now == pending {
            // Unchanged since the last poll: the writer is done.
            let r = reloader.clone();
            let _ = tokio::task::spawn_blocking(move || r.reload("file change")).await;
            applied = now;
            pending = None;
        } else {
            pending = now;
        }
    }
}
