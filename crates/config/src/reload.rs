//! The `reload` section: how shardgate notices config changes besides SIGHUP and
//! `POST /api/reload`.

use serde_yaml_ng::Value;

use crate::error::Problems;
use crate::tree::{self, Table};

/// Reload settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct ReloadConfig {
    /// Reload when the config file changes (debounced: a file is read only once it has
    /// stopped changing).
    pub watch: bool,
}

/// Reads the `reload` mapping; every key is optional.
pub(crate) fn read(value: &Value, path: &str, problems: &mut Problems) -> Option<ReloadConfig> {
    let mut table = Table::open(value, path, problems)?;
    let watch = table.or_default("watch", false, problems, tree::boolean);
    table.finish(problems);
    Some(ReloadConfig { watch: watch? })
}
