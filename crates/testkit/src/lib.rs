//! Starts real PostgreSQL topologies (shards of one primary plus streaming replicas) on loopback
//! ports in temp dirs, for shardgate's integration tests, benches and `shardgate demo`. It never
//! listens beyond 127.0.0.1 and never leaves a server running after its [`Topology`] is dropped.
//!
//! The API is synchronous (std::process, std::thread) so any caller can use it, async or not.
//!
//! ```no_run
//! # fn main() -> Result<(), shardgate_testkit::TestkitError> {
//! let topo = shardgate_testkit::Topology::builder().shards(2).replicas(1).build()?;
//! let primary = &topo.shards[0].primary;
//! primary.sql(topo.database(), "CREATE TABLE t (id int)")?;
//! println!("{}", topo.shards_yaml());
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(clippy::unwrap_used, clippy::expect_used)]
// Unit tests may unwrap: a failure there is a bug in the test, reported by the panic.
#![cfg_attr(test, allow(clippy::expect_used))]

mod conf;
mod env;
mod error;
mod node;
mod process;
mod template;
mod topology;

pub use env::{free_port, pg_bindir};
pub use error::TestkitError;
pub use node::Node;
pub use topology::{Shard, Topology, TopologyBuilder};
