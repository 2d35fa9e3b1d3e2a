//! Network addresses: `NodeAddr` for PostgreSQL nodes (DNS names allowed) and listen addresses
//! (literal IPs only, because binding must not depend on a resolver).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use serde_yaml_ng::Value;

use crate::error::Problems;
use crate::tree::describe;

/// A PostgreSQL node: `host:port`, where host is an IPv4 address, a bracketed IPv6 address, a
/// DNS name, or (starting with `/`, as in libpq) the directory of a Unix-domain socket.
/// Resolution happens when connecting, not here.
///
/// Hosts are stored normalised (DNS names lowercased, IPv6 without brackets in canonical form),
/// so two spellings of one node compare equal and duplicate detection is meaningful.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddr {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl NodeAddr {
    /// The Unix-domain socket to connect to, when the host is a directory (it starts with `/`,
    /// as in libpq): PostgreSQL's `<dir>/.s.PGSQL.<port>`. `None` for TCP.
    pub fn unix_socket(&self) -> Option<std::path::PathBuf> {
        if !self.host.starts_with('/') {
            return None;
        }
        let dir = std::path::Path::new(&self.host);
        Some(dir.join(format!(".s.PGSQL.{}", self.port)))
    }
}

/// Serialised as its `host:port` string, the same form the config file uses.
impl serde::Serialize for NodeAddr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Why a string is not a valid `host:port`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParseNodeAddrError {
    #[error("expected host:port, got {input:?}")]
    MissingPort { input: String },
    #[error("invalid port {port:?} in {input:?} (expected 1..65535)")]
    InvalidPort { input: String, port: String },
    #[error("IPv6 addresses must be in brackets, e.g. [::1]:5432, got {input:?}")]
    UnbracketedIpv6 { input: String },
    #[error("invalid IPv6 address in {input:?}")]
    InvalidIpv6 { input: String },
    #[error(
        "invalid Unix socket directory in {input:?} (expected an absolute path whose socket \
         <dir>/.s.PGSQL.<port> is at most 107 bytes, e.g. /var/run/postgresql:5432)"
    )]
    InvalidSocketDir { input: String },
    #[error("invalid host {host:?} in {input:?} (expected an IPv4 address, [ipv6] or a DNS name)")]
    InvalidHost { input: String, host: String },
}

impl FromStr for NodeAddr {
    type Err = ParseNodeAddrError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let owned = || input.to_owned();
        let (host, port) = if input.starts_with('/') {
            let (dir, port) = input
                .rsplit_once(':')
                .ok_or_else(|| ParseNodeAddrError::MissingPort { input: owned() })?;
            (normalise_socket_dir(dir, port, input)?, port)
        } else if let Some(rest) = input.strip_prefix('[') {
            let (inner, after) = rest
                .split_once(']')
                .ok_or_else(|| ParseNodeAddrError::InvalidIpv6 { input: owned() })?;
            let ip = Ipv6Addr::from_str(inner)
                .map_err(|_| ParseNodeAddrError::InvalidIpv6 { input: owned() })?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| ParseNodeAddrError::MissingPort { input: owned() })?;
            (ip.to_string(), port)
        } else {
            let (host, port) = input
                .rsplit_once(':')
                .ok_or_else(|| ParseNodeAddrError::MissingPort { input: owned() })?;
            if host.contains(':') {
                return Err(ParseNodeAddrError::UnbracketedIpv6 { input: owned() });
            }
            let host = normalise_host(host).ok_or_else(|| ParseNodeAddrError::InvalidHost {
                input: owned(),
                host: host.to_owned(),
            })?;
            (host, port)
        };
        let port = parse_port(port).ok_or_else(|| ParseNodeAddrError::InvalidPort {
            input: owned(),
            port: port.to_owned(),
        })?;
        Ok(Self { host, port })
    }
}

/// A Unix socket directory: absolute, without a trailing slash, and short enough that
/// `<dir>/.s.PGSQL.<port>` fits a socket address (108 bytes on Linux, NUL included).
fn normalise_socket_dir(dir: &str, port: &str, input: &str) -> Result<String, ParseNodeAddrError> {
    let trimmed = dir.trim_end_matches('/');
    let dir = if trimmed.is_empty() { "/" } else { trimmed };
    let path_len = dir.len() + "/.s.PGSQL.".len() + port.len();
    if dir.contains('\0') || dir.contains("//") || path_len > 107 {
        return Err(ParseNodeAddrError::InvalidSocketDir {
            input: input.to_owned(),
        });
    }
    Ok(dir.to_owned())
}

/// A port in 1..=65535. Digits only: `u16::from_str` would also take a leading `+`.
fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|&port| port != 0)
}

/// An IPv4 address or a DNS name, lowercased. Underscores are allowed in labels because
/// container runtimes hand out names like `pg_primary`.
fn normalise_host(host: &str) -> Option<String> {
    if let Ok(ip) = Ipv4Addr::from_str(host) {
        return Some(ip.to_string());
    }
    // Resolvers read digits-and-dots as an IPv4 address (`127.1`); refuse rather than guess.
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if host.len() > 253 || !host.split('.').all(label_ok) {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

/// Reads a node address (`shards[0].primary`).
pub(crate) fn read_node(value: &Value, path: &str, problems: &mut Problems) -> Option<NodeAddr> {
    let Value::String(text) = value else {
        problems.push(path, format!("expected host:port, got {}", describe(value)));
        return None;
    };
    NodeAddr::from_str(text)
        .map_err(|err| problems.push(path, err.to_string()))
        .ok()
}

/// Reads a listen address: a literal `ip:port`. Port 0 is allowed (the OS picks one), which
/// tests rely on.
pub(crate) fn read_listen(
    value: &Value,
    path: &str,
    problems: &mut Problems,
) -> Option<SocketAddr> {
    let parsed = match value {
        Value::String(text) => SocketAddr::from_str(text).ok(),
        _ => None,
    };
    if parsed.is_none() {
        problems.push(
            path,
            format!(
                "expected ip:port (e.g. 127.0.0.1:6432 or [::]:6432), got {}",
                match value {
                    Value::String(text) => format!("{text:?}"),
                    other => describe(other),
                }
            ),
        );
    }
    parsed
}

/// Whether connecting to `node` would reach a socket bound to `listen` on this machine.
/// Only literal loopback spellings are recognised, so it never flags a real remote node.
pub(crate) fn reaches_listener(node: &NodeAddr, listen: SocketAddr) -> bool {
    if listen.port() == 0 || node.port != listen.port() {
        return false;
    }
    let node_ip = if node.host == "localhost" {
        None
    } else {
        match IpAddr::from_str(&node.host) {
            Ok(ip) => Some(ip),
            Err(_) => return false,
        }
    };
    let listen_ip = listen.ip();
    match node_ip {
        Some(ip) if ip == listen_ip => true,
        Some(ip) => listen_ip.is_unspecified() && (ip.is_loopback() || ip.is_unspecified()),
        None => listen_ip.is_loopback() || listen_ip.is_unspecified(),
    }
}

#[cfg(test)]
mod tests;
