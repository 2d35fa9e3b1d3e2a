//! Helpers for the sharding tests: a 2-shard `sharding` config, the public hash rule computed
//! independently of shardgate (xxh3 over the documented key bytes, never `shardgate_router`),
//! direct connections to each shard's primary, and parameters in the formats tokio-postgres
//! does not send by itself (text-format integers, binary uuids).

use std::error::Error;

use bytes::{BufMut, BytesMut};
use shardgate_testkit::Topology;
use tokio_postgres::types::{Format, IsNull, ToSql, Type};

use super::{connect, direct_conn_str, Proxy, ProxyOptions};

/// `sharding.logical_shards` in every config built here.
pub const LOGICAL_SHARDS: u64 = 1024;

/// The sharded tables (table → key column) and the reference table of these configs.
pub const SHARDED_TABLES: &str =
    "  tables: {orders: user_id, users: id, items: sku, sessions: id}\n  reference_tables: [countries]\n";

/// The tables of [`SHARDED_TABLES`] plus `notes`, a table in no sharding list.
pub const SCHEMA: &str = "CREATE TABLE orders (user_id bigint NOT NULL, note text NOT NULL);
     CREATE TABLE users (id bigint PRIMARY KEY, name text);
     CREATE TABLE items (sku text NOT NULL, qty int);
     CREATE TABLE sessions (id uuid NOT NULL, tag text);
     CREATE TABLE countries (code text PRIMARY KEY, name text);
     CREATE TABLE notes (body text);";

/// The `sharding:` section: `map` is a YAML flow mapping such as
/// `{"0-511": s0, "512-1023": s1}`, or `None` for the default map.
pub fn sharding_yaml(map: Option<&str>) -> String {
    let map = map.map_or(String::new(), |m| format!("  map: {m}\n"));
    format!("sharding:\n  logical_shards: {LOGICAL_SHARDS}\n{map}{SHARDED_TABLES}")
}

/// Proxy options with a fast lag monitor and the `sharding` section of [`sharding_yaml`].
pub fn sharded_options(map: Option<&str>) -> ProxyOptions {
    ProxyOptions {
        extra_yaml: format!(
            "routing:\n  lag_check_interval_ms: 100\n{}",
            sharding_yaml(map)
        ),
        ..ProxyOptions::default()
    }
}

/// A sharded proxy (default map) with one server connection per node: every client gets the
/// connections the one before it used.
pub fn start_pool_of_one(topology: &Topology) -> Proxy {
    Proxy::start_with(
        topology,
        ProxyOptions {
            pool_size: 1,
            ..sharded_options(None)
        },
    )
}

/// The whole config text of a running sharded `proxy` (same ports) with `map`, for
/// [`Proxy::rewrite_config`].
pub fn sharded_config(topology: &Topology, proxy: &Proxy, map: Option<&str>) -> String {
    Proxy::config_yaml(
        topology,
        proxy.port,
        proxy.admin_port,
        &sharded_options(map),
    )
}

/// Whether `s` is a canonical decimal integer (`0` or `-?[1-9][0-9]*`) that fits an i64.
fn canonical_int(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let canonical = s == "0"
        || (!digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0'));
    if canonical {
        s.parse().ok()
    } else {
        None
    }
}

/// The logical shard of an integer key.
pub fn logical_of_int(key: i64) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&key.to_le_bytes()) % LOGICAL_SHARDS
}

/// The logical shard of a key given as its PostgreSQL text form (uuids lowercase): a canonical
/// integer hashes as an integer.
pub fn logical_of_text(key: &str) -> u64 {
    match canonical_int(key) {
        Some(n) => logical_of_int(n),
        None => xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % LOGICAL_SHARDS,
    }
}

/// The shard index of a logical shard under the 2-shard default map.
pub fn default_shard(logical: u64) -> usize {
    usize::try_from(logical * 2 / LOGICAL_SHARDS).expect("small")
}

/// The shard index of an integer key under the 2-shard default map.
pub fn shard_of_int(key: i64) -> usize {
    default_shard(logical_of_int(key))
}

/// The shard index of a text key under the 2-shard default map.
pub fn shard_of_text(key: &str) -> usize {
    default_shard(logical_of_text(key))
}

/// The first `n` keys from `from` upwards whose shard (default map) is `shard`.
pub fn int_keys_on(shard: usize, from: i64, n: usize) -> Vec<i64> {
    (from..)
        .filter(|k| shard_of_int(*k) == shard)
        .take(n)
        .collect()
}

/// One tokio-postgres client per shard, straight to each primary.
pub async fn primaries(topology: &Topology) -> Vec<tokio_postgres::Client> {
    let mut out = Vec::new();
    for shard in &topology.shards {
        let c = connect(&direct_conn_str(topology, &shard.primary))
            .await
            .unwrap_or_else(|e| panic!("direct connection to {}: {e}", shard.name));
        out.push(c);
    }
    out
}

/// A parameter sent in TEXT format, whatever its declared type (tokio-postgres sends every
/// built-in type in binary).
#[derive(Debug)]
pub struct TextParam(pub String);

impl ToSql for TextParam {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }

    tokio_postgres::types::to_sql_checked!();
}

/// A uuid parameter sent in BINARY format (16 bytes), from its hyphenated text form.
#[derive(Debug)]
pub struct BinUuid(pub [u8; 16]);

impl BinUuid {
    pub fn parse(text: &str) -> BinUuid {
        let hex: String = text.chars().filter(|c| *c != '-').collect();
        assert_eq!(hex.len(), 32, "not a uuid: {text}");
        let mut bytes = [0u8; 16];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex digit");
        }
        BinUuid(bytes)
    }
}

impl ToSql for BinUuid {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.put_slice(&self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::UUID
    }

    tokio_postgres::types::to_sql_checked!();
}

/// A deterministic lowercase uuid for test number `i`.
pub fn test_uuid(i: u64) -> String {
    let a = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        i & 0xfff,
        i.wrapping_mul(0x2545_f491) & 0xffff_ffff_ffff
    )
}

/// A running 2-shard topology (one replica each) with [`SCHEMA`] on both primaries, a sharded
/// proxy, a client through it and direct clients to each primary.
pub struct Sharded {
    pub topology: Topology,
    pub proxy: Proxy,
    /// Through the proxy, with `shardgate.target = 'primary'` so reads never see replica lag.
    pub client: tokio_postgres::Client,
    /// Straight to s0's and s1's primaries.
    pub direct: Vec<tokio_postgres::Client>,
}

/// Builds a [`Sharded`] setup with `map` (`None`: the default map).
pub async fn sharded_setup(map: Option<&str>) -> Sharded {
    let topology = Topology::builder()
        .shards(2)
        .replicas(1)
        .build()
        .expect("topology");
    let direct = primaries(&topology).await;
    for d in &direct {
        d.batch_execute(SCHEMA).await.expect("schema");
    }
    let proxy = Proxy::start_with(&topology, sharded_options(map));
    let client = proxy.connect(&topology).await;
    client
        .batch_execute("SET shardgate.target = 'primary'")
        .await
        .expect("target primary");
    Sharded {
        topology,
        proxy,
        client,
        direct,
    }
}

/// Every (user_id, note) of `orders` on each primary, sorted.
pub async fn orders_snapshot(direct: &[tokio_postgres::Client]) -> Vec<Vec<(i64, String)>> {
    let mut out = Vec::new();
    for d in direct {
        let rows = d
            .query("SELECT user_id, note FROM orders ORDER BY 1, 2", &[])
            .await
            .expect("snapshot");
        out.push(rows.iter().map(|r| (r.get(0), r.get(1))).collect());
    }
    out
}

/// Plants in `orders`, directly on the primaries, rows 'a' and 'b' for each key on its shard
/// (default map) and a 'decoy' row on the other shard: a statement that ran on the wrong
/// shard sees or changes the decoy.
pub async fn seed_with_decoys(direct: &[tokio_postgres::Client], keys: &[i64]) {
    for k in keys {
        let home = shard_of_int(*k);
        direct[home]
            .execute("INSERT INTO orders VALUES ($1, 'a'), ($1, 'b')", &[k])
            .await
            .expect("seed");
        direct[1 - home]
            .execute("INSERT INTO orders VALUES ($1, 'decoy')", &[k])
            .await
            .expect("seed decoy");
    }
}

/// Asserts that `r` failed with SQLSTATE `code`; returns the message.
pub fn expect_code<T: std::fmt::Debug>(
    r: Result<T, tokio_postgres::Error>,
    code: &tokio_postgres::error::SqlState,
    what: &str,
) -> String {
    let e = match r {
        Ok(v) => panic!("{what}: expected {code:?}, got success {v:?}"),
        Err(e) => e,
    };
    assert_eq!(e.code(), Some(code), "{what}: {e:?}");
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default()
}

/// Rows of `orders` with `note` on each primary.
pub async fn notes_on(direct: &[tokio_postgres::Client], note: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for d in direct {
        let n: i64 = d
            .query_one("SELECT count(*) FROM orders WHERE note = $1", &[&note])
            .await
            .expect("count")
            .get(0);
        out.push(n);
    }
    out
}

/// `orders (user_id bigint, note text)`, usable by the test user, on each primary.
pub async fn create_orders(direct: &[tokio_postgres::Client]) {
    for c in direct {
        c.batch_execute(
            "CREATE TABLE orders (user_id bigint, note text); GRANT ALL ON orders TO PUBLIC",
        )
        .await
        .expect("create orders");
    }
}

/// Each primary's `orders.note` values, sorted.
pub async fn notes_by_shard(direct: &[tokio_postgres::Client]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for c in direct {
        let rows = c
            .query("SELECT note FROM orders ORDER BY note", &[])
            .await
            .expect("read notes");
        out.push(rows.iter().map(|r| r.get(0)).collect());
    }
    out
}

/// Prepared (two-phase) transactions left on the primaries.
pub async fn prepared_xacts(direct: &[tokio_postgres::Client]) -> i64 {
    let mut n = 0;
    for c in direct {
        let row = c
            .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
            .await
            .expect("count prepared transactions");
        n += row.get::<_, i64>(0);
    }
    n
}
