//! The shard SQL through a real PostgreSQL server: for corpus `SELECT`s that read only catalog
//! relations (which exist on any server) and a few written here to exercise every rewrite, the
//! shard statement must prepare wherever the client's does, describe exactly `shard_columns`
//! columns, give each client column the type the client's statement gives it, and take the same
//! parameters with the same types.

mod common;

use shardgate_sql::leading_keywords;
use shardgate_sql::scatter::{scatter_select, AggFn, OutputCol, ScatterSelect};
use shardgate_testkit::Topology;
use sqlparser::ast::{ObjectNamePart, SetExpr, Statement, TableFactor};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::collections::HashSet;
use std::error::Error;
use std::time::{Duration, Instant};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls};

const MAX_STATEMENTS: usize = 20_000;
const MAX_TIME: Duration = Duration::from_secs(120);

/// Written for this test: each rewrite, with parameters, over catalog tables.
const OWN: &[&str] = &[
    "SELECT relname FROM pg_class ORDER BY relpages DESC, oid LIMIT $1 OFFSET $2",
    "SELECT relname FROM pg_class WHERE relname <> 'it''s' ORDER BY relkind, 1 OFFSET $1",
    "SELECT relname AS n FROM pg_class ORDER BY lower(relname) COLLATE \"C\" LIMIT 10 OFFSET 3",
    "SELECT relkind, avg(relpages), count(*) FROM pg_class GROUP BY 1 \
     HAVING sum(reltuples) > $1 AND max(relname) <> $$x$$ ORDER BY 2 DESC LIMIT $2",
    "SELECT avg(relpages) AS a, relkind FROM pg_class GROUP BY 2 HAVING avg(reltuples) >= 0",
    "SELECT count(*) FROM pg_class GROUP BY relkind, relnamespace ORDER BY relkind",
    "SELECT count(*), count(relname), sum(relpages), min(oid), max(relname), bool_and(relhasindex), \
     bool_or(relispartition), every(relispopulated), avg(reltuples) FROM pg_class WHERE relname > E'a\\'b'",
    "SELECT DISTINCT relkind FROM pg_class ORDER BY relkind LIMIT $1",
    "SELECT relname, /* comment, with a comma */ oid -- trailing\n FROM pg_class ORDER BY reltype LIMIT 1",
    "SELECT * FROM pg_namespace LIMIT 3 OFFSET $1",
];

/// Every `FROM` item is a `pg_*` or `information_schema` relation.
fn catalog_only(stmt: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(stmt) else {
        return false;
    };
    let Ok(mut v) = Parser::parse_sql(&PostgreSqlDialect {}, text) else {
        return false;
    };
    let Some(Statement::Query(q)) = v.pop() else {
        return false;
    };
    let SetExpr::Select(s) = q.body.as_ref() else {
        return false;
    };
    s.from.iter().all(|twj| {
        std::iter::once(&twj.relation)
            .chain(twj.joins.iter().map(|j| &j.relation))
            .all(|f| match f {
                TableFactor::Table { name, .. } => {
                    let parts: Vec<String> = name
                        .0
                        .iter()
                        .map(|p| match p {
                            ObjectNamePart::Identifier(i) => i.value.to_ascii_lowercase(),
                            ObjectNamePart::Function(_) => String::new(),
                        })
                        .collect();
                    parts.first().is_some_and(|f| f == "information_schema")
                        || parts.last().is_some_and(|l| l.starts_with("pg_"))
                }
                _ => false,
            })
    })
}

/// What is wrong with the shard statement of `sql`, if anything; `Ok(false)` when the client's
/// own statement does not prepare (skipped).
async fn check(client: &Client, sql: &str, s: &ScatterSelect) -> Result<bool, String> {
    let Ok(orig) = client.prepare(sql).await else {
        return Ok(false);
    };
    let shard_sql = String::from_utf8_lossy(&s.shard_sql);
    let shard = client
        .prepare(&shard_sql)
        .await
        .map_err(|e| format!("shard SQL fails: {e}\n  {sql}\n  => {shard_sql}"))?;
    let fail = |what: String| Err(format!("{what}\n  {sql}\n  => {shard_sql}"));
    let width = if s.wildcard {
        // Each `*` counts as one item; the rest are hidden sort keys after the real columns.
        orig.columns().len() + s.shard_columns - s.outputs.len()
    } else {
        s.shard_columns
    };
    if shard.columns().len() != width {
        return fail(format!(
            "{} columns, shard_columns {}",
            shard.columns().len(),
            s.shard_columns
        ));
    }
    if orig.params() != shard.params() {
        return fail(format!(
            "params {:?} vs {:?}",
            orig.params(),
            shard.params()
        ));
    }
    if s.wildcard {
        return Ok(true);
    }
    for (j, out) in s.outputs.iter().enumerate() {
        let want = orig.columns().get(j).map(|c| c.type_().clone());
        let got = match out {
            OutputCol::Column(i) | OutputCol::Constant(i) => shard.columns().get(*i),
            // avg's type is the merge's to rebuild; its second shard column is the count.
            OutputCol::Agg {
                kind: AggFn::Avg,
                columns,
            } => {
                let count = columns.get(1).and_then(|&i| shard.columns().get(i));
                if count.map(|c| c.type_()) != Some(&Type::INT8) {
                    return fail(format!("column {j}: avg's count is {count:?}"));
                }
                continue;
            }
            OutputCol::Agg { columns, .. } => columns.first().and_then(|&i| shard.columns().get(i)),
        }
        .map(|c| c.type_().clone());
        if want.is_none() || want != got {
            return fail(format!("column {j}: {want:?} vs {got:?}"));
        }
    }
    Ok(true)
}

#[test]
fn shard_sql_prepares_on_a_real_server() -> Result<(), Box<dyn Error>> {
    let mut statements: Vec<String> = OWN.iter().map(|s| (*s).to_owned()).collect();
    let mut seen = HashSet::new();
    common::for_each_corpus_statement(|stmt| {
        if leading_keywords(stmt).starts_with(&["SELECT"])
            && catalog_only(stmt)
            && scatter_select(stmt).is_ok()
            && seen.insert(stmt.to_vec())
        {
            statements.push(String::from_utf8_lossy(stmt).into_owned());
        }
    });
    statements.truncate(MAX_STATEMENTS);

    let topo = Topology::builder().build()?;
    let node = &topo.shards.first().ok_or("no shard")?.primary;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(node.port())
            .user(topo.user())
            .password(topo.password())
            .dbname(topo.database())
            .connect(NoTls)
            .await?;
        tokio::spawn(conn);
        let start = Instant::now();
        let (mut checked, mut skipped, mut failures) = (0, 0, Vec::new());
        for (n, sql) in statements.iter().enumerate() {
            if start.elapsed() > MAX_TIME {
                break;
            }
            let s = scatter_select(sql.as_bytes()).map_err(|e| format!("{sql}: {e}"))?;
            match check(&client, sql, &s).await {
                Ok(true) => checked += 1,
                // The statements written here must all prepare.
                Ok(false) if n < OWN.len() => failures.push(format!("does not prepare: {sql}")),
                Ok(false) => skipped += 1,
                Err(e) => failures.push(e),
            }
        }
        eprintln!(
            "{} candidates: {checked} checked, {skipped} skipped (the original fails), {} failed",
            statements.len(),
            failures.len()
        );
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        assert!(checked >= OWN.len());
        Ok::<(), Box<dyn Error>>(())
    })
}
