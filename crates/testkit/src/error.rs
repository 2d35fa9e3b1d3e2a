//! The one error type of the test kit. It carries enough text (command output, log tail) that a
//! failing integration test explains itself without anyone having to dig through temp dirs.

use std::process::{ExitStatus, Output};

/// Why a topology could not be built or a node could not be driven.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// No usable PostgreSQL server binaries; the message says how to get them.
    #[error("PostgreSQL not found: {0}")]
    NoPostgres(String),
    /// A PostgreSQL tool (initdb, pg_ctl, psql, ...) exited unsuccessfully.
    #[error("`{cmd}` failed ({status}):\n{output}")]
    Command {
        /// The command line, for reproducing by hand.
        cmd: String,
        /// Its exit status as printed by the OS.
        status: String,
        /// Its stdout and stderr, plus the node's log tail where one helps.
        output: String,
    },
    /// Something did not happen within its deadline.
    #[error("timed out waiting for {what}; log tail:\n{log_tail}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The last lines of the relevant node's server log.
        log_tail: String,
    },
    /// Filesystem or process-spawn failure.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl TestkitError {
    /// Builds a [`TestkitError::Command`] from a finished process.
    pub(crate) fn command(cmd: String, status: ExitStatus, output: &Output) -> Self {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        TestkitError::Command {
            cmd,
            status: status.to_string(),
            output: text.trim_end().to_owned(),
        }
    }

    /// An invalid builder argument; reported as an I/O `InvalidInput` because the API fixes the
    /// variants and this is a caller mistake, not a PostgreSQL failure.
    pub(crate) fn invalid_input(msg: String) -> Self {
        TestkitError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, msg))
    }
}
