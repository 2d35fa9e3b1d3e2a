//! What the admin API shows, built from the current snapshot: topology with replica
//! health, recent decisions, and what a statement would be routed to.

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{json, Value};
use shardgate_router::Role;

use crate::proxy::{explain_route, NodeRuntime, Shared};
use crate::reload::{Outcome, Reloader};

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Primary => "primary",
        Role::Replica => "replica",
    }
}

/// A primary's entry. With replicas, its shard's lag monitor asks it every check interval,
/// and its last answer decides; without (or before the first check), all that is known is
/// whether shardgate's last attempt to open a connection to it, for any user, failed.
fn primary_json(node: &NodeRuntime) -> Value {
    let checked = node.primary_check.as_ref().and_then(|c| c.status());
    let failure = match &checked {
        Some(status) => status.error.clone(),
        None => node
            .pools
            .values()
            .find_map(|p| p.connect_failure())
            .map(|e| format!("connect failed: {e}")),
    };
    let reason = failure
        .as_ref()
        .map_or_else(|| "primary".to_owned(), |e| format!("unreachable: {e}"));
    json!({
        "addr": node.addr.to_string(),
        "role": "primary",
        "healthy": failure.is_none(),
        "routable": failure.is_none(),
        "lag_bytes": 0,
        "lag_ms": 0,
        "reason": reason,
        "checked_at": checked.map(|s| rfc3339(s.checked_at)),
    })
}

/// The proxy state behind the admin API.
pub(crate) struct AdminView(pub(crate) Arc<Shared>, pub(crate) Arc<Reloader>);

impl shardgate_admin::AdminSource for AdminView {
    fn metrics_text(&self) -> String {
        self.0.metrics.render(&self.0.snapshot.load())
    }

    fn topology(&self) -> Value {
        let snapshot = self.0.snapshot.load();
        let shards: Vec<Value> = snapshot
            .shards
            .iter()
            .map(|shard| {
                let primary = primary_json(&shard.primary);
                let mut nodes = vec![primary];
                for replica in &shard.replicas {
                    let st = replica.health.as_ref().map(|h| h.status());
                    nodes.push(json!({
                        "addr": replica.addr.to_string(),
                        "role": "replica",
                        "healthy": st.as_ref().map(|s| s.healthy).unwrap_or(false),
                        "routable": st.as_ref().map(|s| s.routable).unwrap_or(false),
                        "lag_bytes": st.as_ref().and_then(|s| s.lag_bytes),
                        "lag_ms": st.as_ref().and_then(|s| s.lag_ms),
                        "replay_lsn": st.as_ref().and_then(|s| s.replay_lsn).map(shardgate_router::format_lsn),
                        "reason": st.as_ref().map(|s| s.reason.clone()).unwrap_or_default(),
                        "checked_at": st.as_ref().and_then(|s| s.checked_at).map(rfc3339),
                    }));
                }
                json!({"name": shard.name.as_ref(), "nodes": nodes})
            })
            .collect();
        json!({"config_version": snapshot.version, "shards": shards})
    }

    fn decisions(&self, limit: usize) -> Value {
        let list: Vec<Value> = self
            .0
            .decisions
            .recent(limit)
            .iter()
            .map(|d| {
                json!({
                    "at": rfc3339(d.at),
                    "session": d.session,
                    "config_version": d.config_version,
                    "sql": d.sql(),
                    "kind": d.kind.as_str(),
                    "shard": d.shard.as_ref(),
                    "shards": d.shard_names(),
                    "node": d.node.to_string(),
                    "role": role_name(d.role),
                    "reason": d.reason_text(),
                })
            })
            .collect();
        json!({"decisions": list})
    }

    fn reload(&self) -> (u16, Value) {
        match self.1.reload("POST /api/reload") {
            Outcome::Applied {
                version,
                restart_required,
            } => (
                200,
                json!({"config_version": version, "restart_required": restart_required}),
            ),
            Outcome::Refused { error, problems } => {
                let problems: Vec<Value> = problems
                    .iter()
                    .map(|p| json!({"path": p.path, "message": p.message}))
                    .collect();
                (422, json!({"error": error, "problems": problems}))
            }
        }
    }

    fn config(&self) -> Value {
        let snapshot = self.0.snapshot.load();
        json!({
            "config_version": snapshot.version,
            "loaded_at": rfc3339(snapshot.loaded_at),
            "path": self.1.path().map(|p| p.display().to_string()),
            "file_sha256": self.1.file_sha256(),
            "config": serde_json::to_value(snapshot.config.redacted()).unwrap_or(Value::Null),
        })
    }

    fn route(&self, sql: &str) -> Value {
        let snapshot = self.0.snapshot.load();
        let e = explain_route(&snapshot, None, sql);
        json!({
            "config_version": snapshot.version,
            "sql": sql.chars().take(crate::decisions::SQL_PREFIX).collect::<String>(),
            "kind": e.kind.as_str(),
            "shard": e.shards.first().map(|s| s.as_ref()),
            "shards": e.shards.iter().map(|s| s.as_ref()).collect::<Vec<_>>(),
            "node": e.node,
            "role": e.role.map(role_name),
            "reason": e.reason,
            "parsed": e.class.parsed,
            "statements": e.class.statements,
        })
    }
}
