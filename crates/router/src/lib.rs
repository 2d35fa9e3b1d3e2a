//! Routing decisions for shardgate, as a pure function: what a request is, what the
//! session has done, and what the replicas look like go in; a target node and the
//! reason for it come out. No sockets, no clock, no globals: the caller gathers the
//! inputs (cheaply, on the stack) and proptest can drive every rule.

mod reason;
mod route;
mod shard_map;
mod shard_plan;

pub use reason::{format_lsn, HintTarget, Reason};
pub use route::{
    route, NoRoute, Policy, ReplicaView, RequestView, Role, Route, SessionView, TargetSetting,
};
pub use shard_map::{KeyError, KeyValue, ShardMap};
pub use shard_plan::{
    bit, plan_statement, shards_in, Refusal, Resolve, ShardSet, ShardWhy, StatementPlan, Target,
    FEATURE_NOT_SUPPORTED, MAX_SHARDS,
};
