//! The `tls` section: the certificate clients see. Files are opened by the proxy at startup, not
//! here, so a config can be validated on a machine that does not hold the key.

use std::path::PathBuf;

use serde_yaml_ng::Value;

use crate::error::Problems;
use crate::tree::{self, Table};

/// TLS for client connections; present means enabled.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Reads the `tls` mapping: both files are required.
pub(crate) fn read(value: &Value, path: &str, problems: &mut Problems) -> Option<TlsConfig> {
    let mut table = Table::open(value, path, problems)?;
    let cert = table.required("cert", problems, tree::non_empty_string);
    let key = table.required("key", problems, tree::non_empty_string);
    table.finish(problems);
    Some(TlsConfig {
        cert: cert?.into(),
        key: key?.into(),
    })
}
