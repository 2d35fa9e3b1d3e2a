//! The IO of one lag check: a dedicated tokio-postgres connection per node (never a pool slot,
//! so a full pool cannot hide a replica's lag), re-opened on the next check after any failure,
//! with every connect and query bounded by a timeout.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use crate::stream::BackendStream;
use shardgate_config::NodeAddr;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage, SimpleQueryRow};

use super::lsn::parse_lsn;
use super::observe::{Observation, Sample};

/// One statement, one round trip (simple protocol): text values parsed here.
const REPLICA_QUERY: &str = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn(), \
     pg_last_wal_receive_lsn(), \
     (extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000)::int8";
/// The flush position, not `pg_current_wal_lsn()` (the write position): walsenders only ship
/// flushed WAL, so written-but-unflushed WAL (up to `wal_writer_flush_after`, 1 MiB by default,
/// during any bulk write) would count as lag on every replica at once and exclude them all,
/// although none of them could have received it.
const PRIMARY_QUERY: &str = "SELECT pg_current_wal_flush_lsn()";
const APPLICATION_NAME: &str = "shardgate-lag-monitor";

/// Why one check of one node produced no sample.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    #[error("could not connect")]
    Connect(#[source] std::io::Error),
    #[error("could not log in")]
    Login(#[source] tokio_postgres::Error),
    #[error("no answer within {0} ms")]
    Timeout(u128),
    #[error("check query failed")]
    Query(#[source] tokio_postgres::Error),
    #[error("unexpected check result: {0}")]
    BadRow(&'static str),
}

impl ProbeError {
    /// The error with its causes, for a reason string: `could not connect: Connection refused`.
    pub(crate) fn describe(&self) -> String {
        let mut text = self.to_string();
        let mut source = self.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }

    /// The server answered with an error or nonsense: it is up but the check cannot run. Every
    /// other failure means the node is unreachable (down, hung, or the connection broke).
    fn into_observation(self) -> Observation {
        let answered = match &self {
            ProbeError::Query(e) => e.as_db_error().is_some(),
            ProbeError::BadRow(_) => true,
            _ => false,
        };
        if answered {
            Observation::QueryFailed(self.describe())
        } else {
            Observation::Unreachable(self.describe())
        }
    }
}

/// Where and as whom the monitor logs in.
#[derive(Debug)]
pub(crate) struct Login {
    pub(crate) user: String,
    pub(crate) password: String,
    pub(crate) database: String,
}

/// A node and its dedicated check connection, if one is open.
#[derive(Debug)]
pub(crate) struct Probe {
    addr: NodeAddr,
    login: Arc<Login>,
    client: Option<Client>,
}

impl Probe {
    pub(crate) fn new(addr: NodeAddr, login: Arc<Login>) -> Probe {
        Probe {
            addr,
            login,
            client: None,
        }
    }

    pub(crate) fn addr(&self) -> &NodeAddr {
        &self.addr
    }

    pub(crate) fn login(&self) -> &Arc<Login> {
        &self.login
    }

    /// Checks a replica. `primary_lsn` is the primary's position read earlier in this cycle.
    /// Cancel safe: dropping it mid-check only loses the connection, re-opened next time.
    pub(crate) async fn check_replica(
        &mut self,
        primary_lsn: Option<u64>,
        timeout: Duration,
    ) -> Observation {
        match self.query_one(REPLICA_QUERY, timeout).await {
            Ok(row) => match parse_replica_row(&row, primary_lsn) {
                Ok(sample) => Observation::Sample(sample),
                Err(e) => e.into_observation(),
            },
            Err(e) => e.into_observation(),
        }
    }

    /// The primary's current WAL flush position. Cancel safe, as [`Probe::check_replica`].
    pub(crate) async fn primary_lsn(&mut self, timeout: Duration) -> Result<u64, ProbeError> {
        let row = self.query_one(PRIMARY_QUERY, timeout).await?;
        let text = row
            .try_get(0)
            .map_err(ProbeError::Query)?
            .ok_or(ProbeError::BadRow("pg_current_wal_lsn() is null"))?;
        parse_lsn(text).ok_or(ProbeError::BadRow("pg_current_wal_lsn() is not an LSN"))
    }

    /// Runs a one-row query, connecting first if needed; any failure closes the connection, so
    /// a half-broken one is never reused.
    async fn query_one(
        &mut self,
        sql: &str,
        timeout: Duration,
    ) -> Result<SimpleQueryRow, ProbeError> {
        let result = self.try_query_one(sql, timeout).await;
        if result.is_err() {
            self.client = None;
        }
        result
    }

    async fn try_query_one(
        &mut self,
        sql: &str,
        timeout: Duration,
    ) -> Result<SimpleQueryRow, ProbeError> {
        let client = match self.client.take() {
            Some(client) if !client.is_closed() => client,
            _ => self.connect(timeout).await?,
        };
        let client = self.client.insert(client);
        let messages = tokio::time::timeout(timeout, client.simple_query(sql))
            .await
            .map_err(|_| ProbeError::Timeout(timeout.as_millis()))?
            .map_err(ProbeError::Query)?;
        messages
            .into_iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(row),
                _ => None,
            })
            .ok_or(ProbeError::BadRow("no row"))
    }

    async fn connect(&self, timeout: Duration) -> Result<Client, ProbeError> {
        let connecting = async {
            let stream = BackendStream::connect(&self.addr)
                .await
                .map_err(ProbeError::Connect)?;
            let mut config = tokio_postgres::Config::new();
            config
                .user(&self.login.user)
                .password(&self.login.password)
                .dbname(&self.login.database)
                .application_name(APPLICATION_NAME);
            config
                .connect_raw(stream, NoTls)
                .await
                .map_err(ProbeError::Login)
        };
        let (client, connection) = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| ProbeError::Timeout(timeout.as_millis()))??;
        let node = self.addr.to_string();
        // The connection future drives the socket; it ends when the client is dropped.
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%node, error = %e, "lag check connection closed");
            }
        });
        Ok(client)
    }
}

fn parse_replica_row(row: &SimpleQueryRow, primary_lsn: Option<u64>) -> Result<Sample, ProbeError> {
    let column = |i: usize| row.try_get(i).map_err(ProbeError::Query);
    let in_recovery = match column(0)? {
        Some("t") => true,
        Some("f") => false,
        _ => return Err(ProbeError::BadRow("pg_is_in_recovery() is not a boolean")),
    };
    let lsn = |text: Option<&str>, what: &'static str| match text {
        None => Ok(None),
        Some(text) => parse_lsn(text).map(Some).ok_or(ProbeError::BadRow(what)),
    };
    let replay_lsn = lsn(column(1)?, "replay LSN is not an LSN")?;
    let receive_lsn = lsn(column(2)?, "receive LSN is not an LSN")?;
    let replay_age_ms = match column(3)? {
        None => None,
        // A replayed commit stamped in the future (clock skew) is not lag.
        Some(text) => Some(
            text.parse::<i64>()
                .map_err(|_| ProbeError::BadRow("replay age is not an integer"))?
                .max(0)
                .unsigned_abs(),
        ),
    };
    Ok(Sample {
        primary_lsn,
        replay_lsn,
        receive_lsn,
        replay_age_ms,
        in_recovery,
    })
}
