//! A primary's reachability as its shard's lag monitor last saw it: each cycle reads the
//! primary's WAL position first, and whether that answered is recorded here for the admin API.
//! Routing never reads it (writes go to the primary whatever it says).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

/// The last check of one primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryStatus {
    /// When the monitor last asked the primary.
    pub checked_at: SystemTime,
    /// Why that check failed; `None` when it answered.
    pub error: Option<String>,
}

/// One primary's shared check record, written by its shard's monitor.
#[derive(Debug, Default)]
pub struct PrimaryCheck {
    last: Mutex<Option<PrimaryStatus>>,
}

impl PrimaryCheck {
    /// A primary not checked yet.
    pub fn new() -> Arc<PrimaryCheck> {
        Arc::new(PrimaryCheck::default())
    }

    /// The last check, `None` before the first.
    pub fn status(&self) -> Option<PrimaryStatus> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn record(&self, checked_at: SystemTime, error: Option<String>) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(PrimaryStatus { checked_at, error });
    }
}
