//! The client-facing proxy: accepting connections, startup and authentication, and
//! the per-client session that relays traffic through pooled server connections.

mod answer;
pub(crate) mod busy_poll;
mod cancel;
mod errors;
mod extended_begin;
mod fanout;
mod fanout_commit;
mod flight;
mod listener;
mod local;
mod merge;
mod mirror;
mod multiplex;
mod params;
mod pinning;
mod relay;
mod request;
mod routing;
mod scatter;
mod scatter_encoding;
mod scatter_group;
mod scatter_request;
mod scatter_stream;
mod session;
mod shard_batch;
mod shard_catalog;
mod shard_combine;
mod shard_legs;
mod shard_plan;
mod shard_split;
mod shard_statement;
mod sharding_runtime;
mod sqlstate;
mod startup;
mod statements;
mod topology;
mod two_phase;
mod txn_replay;
mod txn_shards;
pub(crate) mod workers;

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

pub(crate) use cancel::CancelRegistry;
pub(crate) use listener::serve;
pub(crate) use routing::explain_route;
pub(crate) use topology::{NodeRuntime, Snapshot};
pub(crate) use two_phase::recovery_loop;
pub(crate) use workers::Workers;

use crate::decisions::DecisionLog;
use crate::metrics::Metrics;

/// State every session shares. Passed in, never global.
pub(crate) struct Shared {
    pub(crate) snapshot: Arc<ArcSwap<Snapshot>>,
    pub(crate) cancel: Arc<CancelRegistry>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) client_slots: Arc<Semaphore>,
    pub(crate) tls: Option<TlsAcceptor>,
    /// The `tls-server-end-point` data SCRAM-SHA-256-PLUS binds TLS clients to.
    pub(crate) tls_end_point: Option<Vec<u8>>,
    /// Per-process key for mock SCRAM secrets of unknown users.
    pub(crate) mock_key: [u8; 32],
    pub(crate) decisions: Arc<DecisionLog>,
    /// Moved on when a server reports a shared prepared statement stale.
    pub(crate) plan_epoch: statements::PlanEpoch,
}
