//! Backend connections for shardgate: logging in to PostgreSQL servers (SCRAM, md5,
//! password, trust), pooling them per (node, user), checkout with a deadline, and
//! reconnect backoff. It never parses client traffic and never decides routing.
#![deny(unsafe_code)]

mod conn;
mod error;
pub mod lag;
mod lane;
mod pool;
mod stream;

pub use conn::{BackendKey, Credentials, ServerConn};
pub use error::{BackendError, PoolError};
pub use lag::{LagBounds, MonitorSettings, ReplicaHealth, ReplicaStatus};
pub use lane::{bind_thread, heartbeat, thread_lane};
pub use pool::{NodePool, PoolStats, PooledConn, ServerParams, HEARTBEAT};
pub use stream::BackendStream;
