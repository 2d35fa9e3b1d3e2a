//! The `shards` section: the PostgreSQL nodes behind the proxy, one primary and any number of
//! replicas per shard.

use serde_yaml_ng::Value;

use crate::addr::{self, NodeAddr};
use crate::error::Problems;
use crate::tree::{self, Seen, Table};

/// One shard: a primary that takes writes and replicas that may serve reads.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ShardConfig {
    pub name: String,
    pub primary: NodeAddr,
    pub replicas: Vec<NodeAddr>,
}

/// Names appear in metrics labels, logs and admin URLs, so they stay plain.
fn valid_name(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Duplicate-detection state shared by every shard in the list.
#[derive(Debug)]
struct SeenInShards {
    names: Seen<String>,
    // One node in two places would get two pools and, for a primary, two routing roles.
    nodes: Seen<NodeAddr>,
}

/// Reads the `shards` list: at least one, names unique, no node address used twice anywhere.
pub(crate) fn read(value: &Value, path: &str, problems: &mut Problems) -> Option<Vec<ShardConfig>> {
    let mut seen = SeenInShards {
        names: Seen::new("shard name"),
        nodes: Seen::new("node address"),
    };
    let shards = tree::list(value, path, problems, |item, item_path, problems| {
        read_shard(item, item_path, &mut seen, problems)
    })?;
    if shards.is_empty() {
        problems.push(path, "must list at least one shard");
        return None;
    }
    Some(shards)
}

fn read_shard(
    value: &Value,
    path: &str,
    seen: &mut SeenInShards,
    problems: &mut Problems,
) -> Option<ShardConfig> {
    let mut table = Table::open(value, path, problems)?;
    let name = table.required("name", problems, |v, name_path, problems| {
        let name = tree::non_empty_string(v, name_path, problems)?;
        if !valid_name(&name) {
            problems.push(
                name_path,
                format!("invalid shard name {name:?} (use only A-Z, a-z, 0-9, _ and -)"),
            );
            return None;
        }
        seen.names
            .insert(name.clone(), name_path, problems)
            .then_some(name)
    });
    let primary = table.required("primary", problems, |v, p, problems| {
        read_unique_node(v, p, &mut seen.nodes, problems)
    });
    let replicas = table.or_default("replicas", Vec::new(), problems, |v, p, problems| {
        tree::list(v, p, problems, |item, item_path, problems| {
            read_unique_node(item, item_path, &mut seen.nodes, problems)
        })
    });
    table.finish(problems);
    Some(ShardConfig {
        name: name?,
        primary: primary?,
        replicas: replicas?,
    })
}

fn read_unique_node(
    value: &Value,
    path: &str,
    nodes: &mut Seen<NodeAddr>,
    problems: &mut Problems,
) -> Option<NodeAddr> {
    let node = addr::read_node(value, path, problems)?;
    nodes.insert(node.clone(), path, problems).then_some(node)
}

/// Every node with its key path, in file order; used by checks that span sections.
pub(crate) fn nodes_with_paths(
    shards: &[ShardConfig],
) -> impl Iterator<Item = (String, &NodeAddr)> {
    shards.iter().enumerate().flat_map(|(i, shard)| {
        let shard_path = tree::index_path("shards", i);
        let primary = (tree::key_path(&shard_path, "primary"), &shard.primary);
        let replicas = shard.replicas.iter().enumerate().map(move |(j, replica)| {
            let replicas_path = tree::key_path(&shard_path, "replicas");
            (tree::index_path(&replicas_path, j), replica)
        });
        std::iter::once(primary).chain(replicas)
    })
}
