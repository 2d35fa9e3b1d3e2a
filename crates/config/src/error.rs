//! Config errors: one `Problem` per offending key, collected so a user fixes a file in one pass.

use std::fmt;
use std::path::PathBuf;

/// One thing wrong with a config file, located by its key path (`users[1].name`, `pool.size`).
///
/// The path is empty for problems with the document as a whole (YAML syntax, empty file).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a config could not be loaded.
///
/// `Invalid` carries every problem found, in document order; its `Display` only counts them, so
/// callers print `problems` one per line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} problem(s) in config", .problems.len())]
    Invalid { problems: Vec<Problem> },
}

/// The problems found so far while walking one document.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<Problem>);

impl Problems {
    pub(crate) fn push(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn into_vec(self) -> Vec<Problem> {
        self.0
    }
}
