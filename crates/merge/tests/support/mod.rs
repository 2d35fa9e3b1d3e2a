//! Shared helpers for the differential tests: a real PostgreSQL 15 from the test kit, raw
//! binary cells from tokio-postgres, and a seeded generator.
#![allow(dead_code)]

use bytes::Bytes;
use shardgate_merge::{Column, FORMAT_BINARY, FORMAT_TEXT};
use shardgate_testkit::Topology;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// A cell's raw binary bytes, whatever its type.
#[derive(Debug)]
pub struct Raw(pub Bytes);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Bytes::copy_from_slice(raw)))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

pub use shardgate_merge::Row;

/// Starts one server and connects to it.
pub async fn server() -> (Topology, Client) {
    let topology = Topology::builder().build().expect("topology");
    let conn = format!(
        "host=127.0.0.1 port={} user={} password={} dbname={}",
        topology.shards[0].primary.port(),
        topology.user(),
        topology.password(),
        topology.database()
    );
    let (client, connection) = tokio_postgres::connect(&conn, NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    (topology, client)
}

/// Runs `sql` in the binary format: columns (with type oids) and raw rows.
pub async fn binary(client: &Client, sql: &str) -> (Vec<Column>, Vec<Row>) {
    let stmt = client.prepare(sql).await.expect(sql);
    let cols = stmt
        .columns()
        .iter()
        .map(|c| Column::new(c.type_().oid(), FORMAT_BINARY))
        .collect();
    let rows = client.query(&stmt, &[]).await.expect(sql);
    let rows = rows
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.get::<_, Option<Raw>>(i).map(|raw| raw.0))
                .collect()
        })
        .collect();
    (cols, rows)
}

/// Runs `sql` with the simple protocol (text format); column types come from a prepare.
pub async fn text(client: &Client, sql: &str) -> (Vec<Column>, Vec<Row>) {
    let stmt = client.prepare(sql).await.expect(sql);
    let cols = stmt
        .columns()
        .iter()
        .map(|c| Column::new(c.type_().oid(), FORMAT_TEXT))
        .collect();
    let mut rows = Vec::new();
    for msg in client.simple_query(sql).await.expect(sql) {
        if let SimpleQueryMessage::Row(r) = msg {
            rows.push(
                (0..r.len())
                    .map(|i| r.get(i).map(|s| Bytes::copy_from_slice(s.as_bytes())))
                    .collect(),
            );
        }
    }
    (cols, rows)
}

/// Both formats.
pub async fn both(client: &Client, sql: &str) -> [(Vec<Column>, Vec<Row>); 2] {
    [text(client, sql).await, binary(client, sql).await]
}

/// xorshift64*: seeded, dependency-free.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Printable form of a row for assertion messages.
pub fn show(rows: &[Row]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| {
            r.iter()
                .map(|c| match c {
                    None => "NULL".into(),
                    Some(b) => format!("{:?}", String::from_utf8_lossy(b)),
                })
                .collect()
        })
        .collect()
}
