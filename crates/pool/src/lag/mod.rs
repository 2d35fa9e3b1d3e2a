//! Replica lag monitoring: per shard, a task that checks every replica on a dedicated connection
//! each interval and decides whether it may serve reads (and records whether the primary
//! answered). It never routes a query itself; the
//! router only reads each replica's [`ReplicaHealth`].
//!
//! The rules live in [`observe`], a pure function; the IO lives in the monitor task.

mod health;
mod lsn;
mod monitor;
mod observe;
mod primary;
mod probe;
#[cfg(test)]
mod tests;

pub use health::{ReplicaHealth, ReplicaStatus};
pub use lsn::{format_lsn, parse_lsn};
pub use monitor::{spawn_shard_monitor, MonitorSettings, ShardMonitorSpec};
pub use observe::{observe, LagBounds, Observation, Sample};
pub use primary::{PrimaryCheck, PrimaryStatus};
