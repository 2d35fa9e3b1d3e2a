//! One server connection: connect (TCP or Unix socket), startup, backend authentication, and the
//! per-connection state the proxy keeps (prepared statements, applied session state).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use shardgate_config::NodeAddr;
use shardgate_wire::{
    frontend, split_frame, Authentication, BackendMessage, DataRow, StartupRequest,
    DEFAULT_MAX_MESSAGE_LEN,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::BackendError;
use crate::stream::BackendStream;

/// Who shardgate logs in to a backend as.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
    pub database: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

/// The backend's key for cancel requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendKey {
    pub pid: i32,
    pub secret: i32,
}

/// A logged-in server connection, idle at ReadyForQuery('I') whenever it sits in a pool.
#[derive(Debug)]
pub struct ServerConn {
    pub stream: BackendStream,
    /// Bytes read from the server and not yet processed.
    pub rbuf: BytesMut,
    pub key: BackendKey,
    pub addr: Arc<NodeAddr>,
    /// ParameterStatus values the server reported at startup, in its order.
    pub params: Vec<(String, String)>,
    /// Internal prepared-statement ids that exist on this connection, each with the key of the
    /// row shape the server gave this copy (0: not known), so that a client that was told
    /// another shape gets a copy of its own analysis rather than this one.
    pub prepared: HashMap<u128, u64>,
    /// Fingerprint of the client session state last applied here (0: server defaults).
    pub state_fingerprint: u64,
    /// A setting changed here that no client's settings describe (a scattered function's
    /// `set_config`, seen in a ParameterStatus). The request, or its transaction, goes on
    /// with it, as it would on a server (later cycles on the connection may set
    /// `state_fingerprint` to the client's again); when the connection goes back to its pool,
    /// `state_fingerprint` is cleared, so that whoever gets it next applies their settings
    /// from scratch.
    pub settings_unknown: bool,
    /// Whose unnamed prepared statement this connection holds, as the proxy's clients name
    /// it (0: nobody's, or none). A simple query destroys the unnamed statement.
    pub unnamed_owner: u128,
    pub id: u64,
    /// The reactor (see [`crate::bind_thread`]) the socket is registered with.
    pub(crate) reactor: u64,
}

impl ServerConn {
    /// Connects and logs in. Not cancel safe (a dropped future leaves a half-open socket,
    /// which is closed with it).
    pub async fn connect(
        addr: &Arc<NodeAddr>,
        creds: &Credentials,
        timeout: Duration,
        id: u64,
    ) -> Result<ServerConn, BackendError> {
        let stream = tokio::time::timeout(timeout, BackendStream::connect(addr))
            .await
            .map_err(|_| BackendError::ConnectTimeout { addr: addr.clone() })?
            .map_err(|source| BackendError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let mut conn = ServerConn {
            stream,
            rbuf: BytesMut::with_capacity(16 * 1024),
            key: BackendKey { pid: 0, secret: 0 },
            addr: addr.clone(),
            params: Vec::new(),
            prepared: HashMap::new(),
            state_fingerprint: 0,
            settings_unknown: false,
            unnamed_owner: 0,
            id,
            reactor: crate::lane::here().1,
        };
        tokio::time::timeout(timeout, conn.login(creds))
            .await
            .map_err(|_| BackendError::ConnectTimeout { addr: addr.clone() })??;
        Ok(conn)
    }

    async fn login(&mut self, creds: &Credentials) -> Result<(), BackendError> {
        let mut out = BytesMut::with_capacity(256);
        StartupRequest::Startup {
            minor: 0,
            params: vec![
                ("user".to_owned(), creds.user.clone()),
                ("database".to_owned(), creds.database.clone()),
            ],
        }
        .encode(&mut out);
        self.send(&mut out).await?;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let msg = self.read_message().await?;
            match msg {
                BackendMessage::Authentication(auth) => match auth {
                    Authentication::Ok => {}
                    Authentication::CleartextPassword => {
                        frontend::password_message(&creds.password, &mut out);
                        self.send(&mut out).await?;
                    }
                    Authentication::Md5Password { salt } => {
                        let hash = postgres_protocol::authentication::md5_hash(
                            creds.user.as_bytes(),
                            creds.password.as_bytes(),
                            salt,
                        );
                        frontend::password_message(&hash, &mut out);
                        self.send(&mut out).await?;
                    }
                    Authentication::Sasl { mechanisms } => {
                        if !mechanisms.iter().any(|m| m == SCRAM_SHA_256) {
                            return Err(BackendError::UnsupportedAuth {
                                addr: self.addr.clone(),
                                what: format!("SASL mechanisms {mechanisms:?}"),
                            });
                        }
                        let s = ScramSha256::new(
                            creds.password.as_bytes(),
                            ChannelBinding::unsupported(),
                        );
                        frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out);
                        scram = Some(s);
                        self.send(&mut out).await?;
                    }
                    Authentication::SaslContinue(data) => {
                        let s = scram.as_mut().ok_or(BackendError::Protocol {
                            addr: self.addr.clone(),
                            what: "SASLContinue without SASL",
                        })?;
                        s.update(&data).map_err(|e| BackendError::Scram {
                            addr: self.addr.clone(),
                            detail: e.to_string(),
                        })?;
                        frontend::sasl_response(s.message(), &mut out);
                        self.send(&mut out).await?;
                    }
                    Authentication::SaslFinal(data) => {
                        let s = scram.as_mut().ok_or(BackendError::Protocol {
                            addr: self.addr.clone(),
                            what: "SASLFinal without SASL",
                        })?;
                        s.finish(&data).map_err(|e| BackendError::Scram {
                            addr: self.addr.clone(),
                            detail: e.to_string(),
                        })?;
                    }
                    Authentication::Other(code) => {
                        return Err(BackendError::UnsupportedAuth {
                            addr: self.addr.clone(),
                            what: format!("authentication request {code}"),
                        })
                    }
                },
                BackendMessage::ParameterStatus { name, value } => self.params.push((name, value)),
                BackendMessage::BackendKeyData { pid, secret } => {
                    self.key = BackendKey { pid, secret }
                }
                BackendMessage::ReadyForQuery(_) => return Ok(()),
                BackendMessage::ErrorResponse(fields) => {
                    return Err(BackendError::Server {
                        addr: self.addr.clone(),
                        fields,
                    })
                }
                BackendMessage::NoticeResponse(_)
                | BackendMessage::NegotiateProtocolVersion { .. } => {}
                _ => {
                    return Err(BackendError::Protocol {
                        addr: self.addr.clone(),
                        what: "unexpected message during startup",
                    })
                }
            }
        }
    }

    async fn send(&mut self, out: &mut BytesMut) -> Result<(), BackendError> {
        let r = self.stream.write_all(out).await;
        out.clear();
        r.map_err(|source| BackendError::Io {
            addr: self.addr.clone(),
            source,
        })
    }

    /// Reads one whole message, decoded. Only for slow paths (startup, state sync).
    /// Cancel safe: partial data stays in `rbuf`.
    pub async fn read_message(&mut self) -> Result<BackendMessage, BackendError> {
        loop {
            let frame = split_frame(&mut self.rbuf, DEFAULT_MAX_MESSAGE_LEN).map_err(|source| {
                BackendError::Wire {
                    addr: self.addr.clone(),
                    source,
                }
            })?;
            if let Some(frame) = frame {
                return BackendMessage::decode(frame.tag, &frame.body).map_err(|source| {
                    BackendError::Wire {
                        addr: self.addr.clone(),
                        source,
                    }
                });
            }
            let n = self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|source| BackendError::Io {
                    addr: self.addr.clone(),
                    source,
                })?;
            if n == 0 {
                return Err(BackendError::Closed {
                    addr: self.addr.clone(),
                });
            }
        }
    }

    /// Runs a simple query whose results nobody wants (session-state sync), up to
    /// ReadyForQuery. Returns the first error the server reported, if any.
    pub async fn run_discarding(&mut self, sql: &str) -> Result<(), BackendError> {
        self.run(sql, |_| {}).await
    }

    /// Runs a simple query (slow paths: catalog lookups, two-phase commit) and returns the
    /// first column of every row, NULLs skipped, up to ReadyForQuery; the first error the
    /// server reported fails it.
    pub async fn first_column(&mut self, sql: &str) -> Result<Vec<String>, BackendError> {
        let mut values = Vec::new();
        self.run(sql, |body| {
            if let Ok(row) = DataRow::decode(&body) {
                if let Some(Some(b)) = row.values.first() {
                    values.push(String::from_utf8_lossy(b).into_owned());
                }
            }
        })
        .await?;
        Ok(values)
    }

    /// Sends one simple query and reads every reply to ReadyForQuery, handing each DataRow body
    /// to `on_row`.
    async fn run(
        &mut self,
        sql: &str,
        mut on_row: impl FnMut(bytes::Bytes),
    ) -> Result<(), BackendError> {
        let mut out = BytesMut::with_capacity(sql.len() + 8);
        frontend::query(sql.as_bytes(), &mut out);
        self.unnamed_owner = 0;
        self.send(&mut out).await?;
        let mut first_error = None;
        loop {
            match self.read_message().await? {
                BackendMessage::ReadyForQuery(_) => break,
                BackendMessage::ErrorResponse(fields) if first_error.is_none() => {
                    first_error = Some(fields)
                }
                BackendMessage::DataRow(body) => on_row(body),
                _ => {}
            }
        }
        match first_error {
            None => Ok(()),
            Some(fields) => Err(BackendError::Server {
                addr: self.addr.clone(),
                fields,
            }),
        }
    }

    /// This connection, usable by the calling thread's runtime: moved to its reactor unless
    /// it is registered there already.
    pub(crate) fn for_this_thread(mut self: Box<Self>) -> std::io::Result<Box<ServerConn>> {
        let here = crate::lane::here().1;
        if here == 0 || self.reactor != here {
            self.stream = self.stream.rebind()?;
            self.reactor = here;
        }
        Ok(self)
    }

    /// True if the connection shows signs of death while idle: EOF, an error, or
    /// unsolicited bytes (a FATAL the server sent before closing). Never blocks.
    pub fn looks_dead(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return true;
        }
        let mut probe = [0u8; 1];
        match self.stream.try_read(&mut probe) {
            Ok(_) => true,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }
}
