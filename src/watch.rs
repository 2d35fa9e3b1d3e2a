//! `reload: {watch: true}`: polls the config file and reloads once a change has
//! settled, so a half-written file is not read (and one that is still invalid is
//! refused like any other, once).
//!
//! Changes are judged by content: the file's SHA-256 against the one of the config in
//! force, so an edit made before the watcher's first look is not missed, and a reload
//! done another way (SIGHUP, HTTP) is not repeated.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::app::stopped;
use crate::reload::{sha256_hex, Reloader};

/// How often the file is looked at.
const POLL: Duration = Duration::from_millis(250);

/// Reloads after the file's content changed and then stayed the same for one poll.
pub(crate) async fn watch_file(reloader: Arc<Reloader>, mut stop: watch::Receiver<bool>) {
    let Some(path) = reloader.path().cloned() else {
        return;
    };
    // Content seen at the last poll and not yet tried; content last tried (a refused
    // file is not tried again until it changes).
    let mut pending: Option<String> = None;
    let mut attempted: Option<String> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stopped(&mut stop) => return,
        }
        // A config file is a few KiB: reading it inline costs less than a thread hop.
        let Ok(bytes) = std::fs::read(&path) else {
            pending = None;
            continue;
        };
        let sha = sha256_hex(&bytes);
        if sha == reloader.file_sha256() || attempted.as_ref() == Some(&sha) {
            pending = None;
            continue;
        }
        if pending.as_ref() == Some(&sha) {
            let r = reloader.clone();
            let _ = tokio::task::spawn_blocking(move || r.reload("file change")).await;
            attempted = Some(sha);
            pending = None;
        } else {
            pending = Some(sha);
        }
    }
}
