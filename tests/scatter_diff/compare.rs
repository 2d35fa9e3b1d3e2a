//! Running one query through shardgate and on the reference server, both with the simple
//! protocol (text values) and the extended one (typed parameters, binary values), and comparing
//! the answers: column names, type oids (extended), the command's row count, every value's
//! bytes, and the row order as far as the query's ORDER BY fixes it.

use std::collections::BTreeMap;
use std::error::Error;
use std::time::Duration;

use futures_util::{pin_mut, TryStreamExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

/// What the ORDER BY of a query fixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    /// Nothing: compare as multisets.
    Set,
    /// The whole row order (a total order, or every column is a sort key).
    Exact,
    /// Sort keys at these output positions, with ties: the multisets must be equal and the
    /// sequence of key values must be the same (it is unique for sorted output).
    Keys(Vec<usize>),
}

/// A typed parameter of the extended-protocol form.
#[derive(Debug, Clone)]
pub enum Param {
    I64(i64),
    I32(i32),
    Text(String),
}

impl Param {
    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Param::I64(v) => v,
            Param::I32(v) => v,
            Param::Text(v) => v,
        }
    }
}

/// One query of the corpus.
#[derive(Debug, Clone)]
pub struct Query {
    /// For the tallies: "order", "group", ...
    pub cat: &'static str,
    /// Simple-protocol text (parameters inlined as literals).
    pub simple: String,
    /// Extended-protocol text with `$n`; `params` bound to it (empty: simple protocol only).
    pub ext: String,
    pub params: Vec<Param>,
    pub order: Order,
}

impl Query {
    /// A query without parameters: the same text both ways.
    pub fn plain(cat: &'static str, sql: impl Into<String>, order: Order) -> Query {
        let sql = sql.into();
        Query {
            cat,
            simple: sql.clone(),
            ext: sql,
            params: Vec::new(),
            order,
        }
    }
}

/// One answer: column names, type oids (extended only), rows of raw values, the row count
/// the server reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub names: Vec<String>,
    pub oids: Vec<u32>,
    pub rows: Vec<Vec<Option<Vec<u8>>>>,
    pub count: Option<u64>,
}

/// Any value, as its raw bytes.
struct Raw(Option<Vec<u8>>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Raw, Box<dyn Error + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }

    fn from_sql_null(_: &Type) -> Result<Raw, Box<dyn Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Bound on one query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(20);

/// The error of a query, or a timeout (reported as a failure, never as a refusal).
#[derive(Debug)]
pub enum RunError {
    Db(tokio_postgres::Error),
    Timeout,
}

impl RunError {
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            RunError::Db(e) => e.code(),
            RunError::Timeout => None,
        }
    }

    pub fn message(&self) -> String {
        match self {
            RunError::Db(e) => e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned()),
            RunError::Timeout => format!("no answer within {QUERY_TIMEOUT:?}"),
        }
    }
}

async fn bounded<T>(
    f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, RunError> {
    match tokio::time::timeout(QUERY_TIMEOUT, f).await {
        Ok(r) => r.map_err(RunError::Db),
        Err(_) => Err(RunError::Timeout),
    }
}

/// Runs `sql` with the simple protocol.
pub async fn run_simple(c: &Client, sql: &str) -> Result<Answer, RunError> {
    let msgs = bounded(c.simple_query(sql)).await?;
    let mut a = Answer {
        names: Vec::new(),
        oids: Vec::new(),
        rows: Vec::new(),
        count: None,
    };
    for m in msgs {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                a.names = cols.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(r) => a.rows.push(
                (0..r.len())
                    .map(|i| r.get(i).map(|s| s.as_bytes().to_vec()))
                    .collect(),
            ),
            SimpleQueryMessage::CommandComplete(n) => a.count = Some(n),
            _ => {}
        }
    }
    Ok(a)
}

/// Prepares `sql` and runs it with `params`, binary results.
pub async fn run_ext(c: &Client, sql: &str, params: &[Param]) -> Result<Answer, RunError> {
    let st = bounded(c.prepare(sql)).await?;
    let names = st.columns().iter().map(|c| c.name().to_owned()).collect();
    let oids = st.columns().iter().map(|c| c.type_().oid()).collect();
    let run = async {
        let stream = c.query_raw(&st, params.iter().map(Param::as_sql)).await?;
        pin_mut!(stream);
        let mut rows = Vec::new();
        while let Some(row) = stream.try_next().await? {
            rows.push(
                (0..row.len())
                    .map(|i| row.try_get::<_, Raw>(i).map(|r| r.0))
                    .collect::<Result<Vec<_>, _>>()?,
            );
        }
        Ok((rows, stream.rows_affected()))
    };
    let (rows, count) = bounded(run).await?;
    Ok(Answer {
        names,
        oids,
        rows,
        count,
    })
}

fn show(row: &[Option<Vec<u8>>]) -> String {
    let cells: Vec<String> = row
        .iter()
        .map(|v| match v {
            None => "NULL".into(),
            Some(b) => match std::str::from_utf8(b) {
                Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s:?}"),
                _ => format!(
                    "0x{}",
                    b.iter().map(|x| format!("{x:02x}")).collect::<String>()
                ),
            },
        })
        .collect();
    format!("({})", cells.join(", "))
}

fn sorted(rows: &[Vec<Option<Vec<u8>>>]) -> Vec<Vec<Option<Vec<u8>>>> {
    let mut v = rows.to_vec();
    v.sort();
    v
}

/// The first difference between two row lists, shown.
fn first_diff(got: &[Vec<Option<Vec<u8>>>], want: &[Vec<Option<Vec<u8>>>]) -> String {
    let i = got
        .iter()
        .zip(want)
        .position(|(g, w)| g != w)
        .unwrap_or(got.len().min(want.len()));
    let g = got.get(i).map_or("(none)".into(), |r| show(r));
    let w = want.get(i).map_or("(none)".into(), |r| show(r));
    format!(
        "{} rows vs {} expected; first difference at row {i}: got {g}, expected {w}",
        got.len(),
        want.len()
    )
}

/// Ok when `got` (shardgate) is the answer `want` (reference) for a query ordered as `order`.
pub fn compare(order: &Order, got: &Answer, want: &Answer) -> Result<(), String> {
    if got.names != want.names {
        return Err(format!(
            "columns {:?}, expected {:?}",
            got.names, want.names
        ));
    }
    if got.oids != want.oids {
        return Err(format!(
            "type oids {:?}, expected {:?}",
            got.oids, want.oids
        ));
    }
    if got.count != want.count {
        return Err(format!(
            "row count {:?}, expected {:?}",
            got.count, want.count
        ));
    }
    match order {
        Order::Exact if got.rows != want.rows => {
            return Err(format!("order: {}", first_diff(&got.rows, &want.rows)))
        }
        Order::Exact => {}
        Order::Set | Order::Keys(_) => {
            let (g, w) = (sorted(&got.rows), sorted(&want.rows));
            if g != w {
                return Err(format!("multiset: {}", first_diff(&g, &w)));
            }
        }
    }
    if let Order::Keys(keys) = order {
        let project = |rows: &[Vec<Option<Vec<u8>>>]| -> Vec<Vec<Option<Vec<u8>>>> {
            rows.iter()
                .map(|r| keys.iter().map(|k| r[*k].clone()).collect())
                .collect()
        };
        let (g, w) = (project(&got.rows), project(&want.rows));
        if g != w {
            return Err(format!("sort keys out of order: {}", first_diff(&g, &w)));
        }
    }
    Ok(())
}

/// Exact and refused counts per category and protocol, the refusal messages seen, and every
/// failure (a wrong answer, or an error other than 0A000).
#[derive(Debug, Default)]
pub struct Tally {
    /// (category, protocol) → (exact, refused).
    pub counts: BTreeMap<(&'static str, &'static str), (u32, u32)>,
    /// Refusal message → how many times, and the first query refused with it.
    pub refusals: BTreeMap<String, (u32, String)>,
    pub failures: Vec<String>,
}

impl Tally {
    pub fn exact(&self) -> u32 {
        self.counts.values().map(|c| c.0).sum()
    }

    pub fn refused(&self) -> u32 {
        self.counts.values().map(|c| c.1).sum()
    }

    /// The counts, the refusals and the first failures, for the test's output.
    pub fn report(&self, title: &str) -> String {
        let mut s = format!(
            "== {title}: {} exact, {} refused (0A000), {} failures\n",
            self.exact(),
            self.refused(),
            self.failures.len()
        );
        for ((cat, proto), (e, r)) in &self.counts {
            s.push_str(&format!(
                "  {cat:<12} {proto:<8} exact {e:>4}  refused {r:>4}\n"
            ));
        }
        for (m, (n, q)) in &self.refusals {
            s.push_str(&format!("  refused x{n}: {m}\n      e.g. {q}\n"));
        }
        for f in self.failures.iter().take(25) {
            s.push_str(&format!("  FAIL {f}\n"));
        }
        s
    }
}

/// Whether the answer was exact (true) or refused with 0A000 (false); anything else is
/// recorded as a failure (and counts as neither).
pub async fn check(proxy: &Client, reference: &Client, q: &Query, tally: &mut Tally) -> Vec<bool> {
    let mut outcomes = Vec::new();
    for proto in ["simple", "extended"] {
        if proto == "extended" && q.ext.is_empty() {
            continue;
        }
        let (want, got) = if proto == "simple" {
            (
                run_simple(reference, &q.simple).await,
                run_simple(proxy, &q.simple).await,
            )
        } else {
            (
                run_ext(reference, &q.ext, &q.params).await,
                run_ext(proxy, &q.ext, &q.params).await,
            )
        };
        let sql = if proto == "simple" { &q.simple } else { &q.ext };
        let entry = tally.counts.entry((q.cat, proto)).or_default();
        let want = match want {
            Ok(w) => w,
            Err(e) => {
                tally.failures.push(format!(
                    "[{proto}] reference failed (corpus bug): {sql}: {e:?}"
                ));
                continue;
            }
        };
        match got {
            Ok(got) => match compare(&q.order, &got, &want) {
                Ok(()) => {
                    entry.0 += 1;
                    outcomes.push(true);
                }
                Err(why) => tally.failures.push(format!("[{proto}] {sql}\n      {why}")),
            },
            Err(e) if e.code() == Some(&SqlState::FEATURE_NOT_SUPPORTED) => {
                entry.1 += 1;
                outcomes.push(false);
                let seen = tally
                    .refusals
                    .entry(e.message())
                    .or_insert((0, sql.clone()));
                seen.0 += 1;
            }
            Err(e) => tally.failures.push(format!(
                "[{proto}] {sql}\n      error {:?}: {}",
                e.code().map(SqlState::code),
                e.message()
            )),
        }
    }
    outcomes
}
