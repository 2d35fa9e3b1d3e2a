//! The plans of a request's statements folded into one: which shards the request needs as a
//! whole, why (for the decision log), and a refusal when its statements need different ones.

use shardgate_router::{
    bit, shards_in, KeyValue, Refusal, ShardSet, ShardWhy, StatementPlan, Target,
};
use shardgate_wire::ErrorFields;

use super::shard_plan::{refusal_fields, Need, RequestPlan};
use super::sharding_runtime::ShardingRuntime;

/// The statements' plans folded into one.
#[derive(Default)]
pub(super) struct Combined {
    any_reference: bool,
    first: bool,
    shards: ShardSet,
    many: bool,
    all: bool,
    split: bool,
    pub(super) scatter: bool,
    scatter_write: bool,
    pub(super) refused: Option<Refusal>,
    pub(super) write: bool,
    why: Option<ShardWhy>,
    statements: usize,
    pub(super) missing: Vec<String>,
}

impl Combined {
    pub(super) fn add(&mut self, p: Result<StatementPlan, Refusal>, write: bool) {
        self.write |= write;
        let p = match p {
            Ok(p) => p,
            Err(r) => {
                self.refused.get_or_insert(r);
                return;
            }
        };
        self.statements += 1;
        match &p.target {
            Target::Any => return,
            Target::AnyReference => self.any_reference = true,
            Target::First => self.first = true,
            Target::Shards(s) => {
                self.many |= s.count_ones() > 1;
                self.shards |= s;
            }
            Target::All => self.all = true,
            Target::Scatter => self.scatter = true,
            Target::ScatterWrite => self.scatter_write = true,
            Target::Split(per) => {
                self.split = true;
                for (s, _) in per {
                    self.shards |= bit(*s);
                }
            }
        }
        if self.why.is_none() || matches!(p.why, ShardWhy::Key { .. }) {
            self.why = Some(p.why);
        }
    }

    /// The reason of a scatter: "no shard key for table ev: scatter to 2 shards".
    pub(super) fn scatter_why(&self, rt: &ShardingRuntime) -> String {
        let table = match &self.why {
            Some(ShardWhy::NoKey { table }) => table.as_str(),
            _ => "?",
        };
        format!(
            "no shard key for table {table}: scatter to {} shards",
            rt.names.len()
        )
    }

    pub(super) fn finish(self, rt: &ShardingRuntime) -> RequestPlan {
        let scatter_why = self.scatter_why(rt);
        let names = &rt.names;
        let write = self.write;
        let missing = self.missing;
        let with = |need: Need, why: String| RequestPlan {
            need,
            why,
            missing_types: missing.clone(),
            write,
        };
        if let Some(r) = self.refused {
            return with(Need::Refuse(refusal_fields(r)), String::new());
        }
        let list = |set: ShardSet| {
            shards_in(set)
                .filter_map(|i| names.get(i).map(|n| &**n))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let why_key = |set: ShardSet| match &self.why {
            Some(ShardWhy::Key {
                column,
                value,
                logical,
                count,
            }) => {
                let v = match value {
                    KeyValue::Int(i) => i.to_string(),
                    KeyValue::Text(t) => t.clone(),
                };
                if *count > 1 || set.count_ones() > 1 {
                    format!("keys {column} ({count} values) → {}", list(set))
                } else {
                    format!("key {column}={v} → logical {logical} → {}", list(set))
                }
            }
            _ => String::new(),
        };
        let all: ShardSet = if names.len() >= 64 {
            u64::MAX
        } else {
            (1u64 << names.len()) - 1
        };
        let conflict = |what: &str| {
            with(
                Need::Refuse(
                    ErrorFields::new(
                        "ERROR",
                        shardgate_router::FEATURE_NOT_SUPPORTED,
                        format!("shardgate: the statements of this request need different shards ({what})"),
                    )
                    .with(
                        b'H',
                        "Send statements for different shards as separate requests. A batch of statements that each name one shard key (several Bind/Execute, one Sync) runs each on its shard.",
                    ),
                ),
                String::new(),
            )
        };
        if self.all {
            if self.shards != 0 && self.shards != all && names.len() > 1 {
                return conflict(&format!("every shard, and {}", list(self.shards)));
            }
            let why = match self.why {
                Some(ShardWhy::Ddl) => "DDL → every shard",
                Some(ShardWhy::ReferenceWrite) => "write to a reference table → every shard",
                _ => "write to an unsharded table → every shard",
            };
            return with(
                Need::Many {
                    shards: all,
                    sum: false,
                },
                why.to_owned(),
            );
        }
        if self.scatter_write {
            if self.statements > 1 {
                return conflict("an UPDATE/DELETE on every shard and other statements");
            }
            return with(
                Need::Many {
                    shards: all,
                    sum: true,
                },
                scatter_why,
            );
        }
        if self.split {
            if self.statements > 1 {
                return with(
                    Need::Refuse(
                        ErrorFields::new(
                            "ERROR",
                            shardgate_router::FEATURE_NOT_SUPPORTED,
                            "shardgate: the statements of this request need different shards (a multi-row INSERT whose rows live on several shards, and other statements)",
                        )
                        .with(
                            b'H',
                            "Send such an INSERT as a request of its own, or insert one row per statement: a batch of statements that each name one shard key runs each on its shard (with pgjdbc, turn reWriteBatchedInserts off).",
                        ),
                    ),
                    String::new(),
                );
            }
            let why = format!("INSERT rows split by key → {}", list(self.shards));
            return with(
                Need::Split {
                    requests: Vec::new(),
                    client_parse: false,
                    rows: Vec::new(),
                    batch: Vec::new(),
                },
                why,
            );
        }
        let mut shards = self.shards;
        if self.first {
            shards |= 1;
        }
        if shards == 0 {
            return match (self.any_reference, self.first) {
                (true, _) => with(Need::AnyReference, "reads reference tables only".to_owned()),
                _ => with(Need::Any, "names no sharded table".to_owned()),
            };
        }
        if self.first && self.shards & !1 != 0 {
            return conflict(&format!(
                "an unsharded table on {}, and {}",
                list(1),
                list(self.shards)
            ));
        }
        if shards.count_ones() == 1 {
            let i = shards.trailing_zeros() as usize;
            let why = if self.shards != 0 {
                why_key(shards)
            } else {
                format!("reads an unsharded table → {}", list(shards))
            };
            return with(Need::One(i), why);
        }
        if !self.many && self.statements > 1 {
            return conflict(&list(shards));
        }
        with(Need::Many { shards, sum: true }, why_key(shards))
    }
}
