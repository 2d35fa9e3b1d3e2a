//! Hand-written PostgreSQL frontend bytes and a small reader of backend messages, for tests
//! that must send what no real driver would (or look at exactly what comes back).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Protocol 3.0, as sent in a StartupMessage.
const PROTOCOL_3_0: i32 = 196_608;

/// A StartupMessage with these parameters.
pub fn startup_message(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
    for (name, value) in params {
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = i32::try_from(body.len() + 4)
        .expect("small")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(&body);
    out
}

/// A regular message: tag, a truthful length, body.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&i32::try_from(body.len() + 4).expect("small").to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A simple Query message.
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}

/// The fields of an ErrorResponse/NoticeResponse body, in order.
pub fn error_fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut fields = Vec::new();
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        fields.push((code, String::from_utf8_lossy(&tail[..end]).into_owned()));
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    fields
}

/// One field of an ErrorResponse body (`b'C'` = SQLSTATE, `b'M'` = message, `b'S'` = severity).
pub fn error_field(body: &[u8], code: u8) -> Option<String> {
    error_fields(body)
        .into_iter()
        .find(|(c, _)| *c == code)
        .map(|(_, v)| v)
}

/// A raw client connection.
pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes bytes; a write error (the peer already closed) is ignored, since what matters
    /// is what the peer answers.
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next backend message `(tag, body)`, or None once the peer closed (or reset) the
    /// connection. Panics if nothing decisive arrives within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<(u8, Vec<u8>)> {
        tokio::time::timeout(timeout, self.next_unbounded())
            .await
            .expect("no message and no close within the timeout")
    }

    async fn next_unbounded(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                let total = usize::try_from(len).expect("server sent a negative length") + 1;
                if self.buf.len() >= total {
                    let tag = self.buf[0];
                    let body = self.buf[5..total].to_vec();
                    self.buf.drain(..total);
                    return Some((tag, body));
                }
            }
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads messages until ReadyForQuery; returns them all (ReadyForQuery last). Panics if the
    /// connection closes first.
    pub async fn until_ready(&mut self, timeout: Duration) -> Vec<(u8, Vec<u8>)> {
        let mut seen = Vec::new();
        loop {
            match self.next(timeout).await {
                Some(m) => {
                    let done = m.0 == b'Z';
                    seen.push(m);
                    if done {
                        return seen;
                    }
                }
                None => panic!("connection closed before ReadyForQuery; got {seen:?}"),
            }
        }
    }

    /// Reads exactly `n` messages, each within `timeout`; a close before them fails the test.
    pub async fn read_n(&mut self, n: usize, timeout: Duration) -> Vec<(u8, Vec<u8>)> {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            match self.next(timeout).await {
                Some(m) => got.push(m),
                None => panic!("connection closed; got {got:?}"),
            }
        }
        got
    }

    /// Runs `sql` as a simple query, which must not fail; returns its messages.
    pub async fn run_ok(&mut self, sql: &str, timeout: Duration) -> Vec<(u8, Vec<u8>)> {
        self.send(&query(sql)).await;
        let got = self.until_ready(timeout).await;
        assert!(got.iter().all(|(tag, _)| *tag != b'E'), "{sql}: {got:?}");
        got
    }

    /// Whether the peer closes the connection within `timeout` (reading and discarding
    /// anything it sends first); returns the messages seen before the close.
    pub async fn closed_within(&mut self, timeout: Duration) -> Result<Vec<(u8, Vec<u8>)>, String> {
        let mut seen = Vec::new();
        let run = async {
            while let Some(m) = self.next_unbounded().await {
                seen.push(m);
            }
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(()) => Ok(seen),
            Err(_) => Err(format!("still open after {timeout:?}")),
        }
    }
}

/// Logs in a user that needs no password (`auth: trust` in shardgate's config) and reads the
/// greeting up to ReadyForQuery.
pub async fn login_trust(addr: SocketAddr, user: &str, database: &str) -> RawConn {
    let mut conn = RawConn::connect(addr).await;
    conn.send(&startup_message(&[("user", user), ("database", database)]))
        .await;
    let greeting = conn.until_ready(Duration::from_secs(10)).await;
    let (tag, body) = &greeting[0];
    assert_eq!(
        (*tag, body.as_slice()),
        (b'R', &[0u8, 0, 0, 0][..]),
        "expected AuthenticationOk"
    );
    assert!(
        greeting.iter().any(|(t, _)| *t == b'K'),
        "expected BackendKeyData"
    );
    conn
}

/// Parse of `sql` as statement `name` (empty: the unnamed one), no declared parameter types.
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    message(b'P', format!("{name}\0{sql}\0\0\0").as_bytes())
}

/// Bind of `statement` into `portal` (empty: the unnamed ones) with text parameters and
/// default (text) result formats.
pub fn bind(portal: &str, statement: &str, params: &[&str]) -> Vec<u8> {
    let mut body = format!("{portal}\0{statement}\0").into_bytes();
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&i16::try_from(params.len()).expect("few").to_be_bytes());
    for p in params {
        body.extend_from_slice(&i32::try_from(p.len()).expect("short").to_be_bytes());
        body.extend_from_slice(p.as_bytes());
    }
    body.extend_from_slice(&0i16.to_be_bytes());
    message(b'B', &body)
}

/// Describe of a statement (`b'S'`) or portal (`b'P'`).
pub fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut body = vec![kind];
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    message(b'D', &body)
}

/// Execute of `portal`, at most `max_rows` rows (0: all).
pub fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut body = format!("{portal}\0").into_bytes();
    body.extend_from_slice(&max_rows.to_be_bytes());
    message(b'E', &body)
}

pub fn sync() -> Vec<u8> {
    message(b'S', b"")
}

pub fn flush() -> Vec<u8> {
    message(b'H', b"")
}

/// Parse, Bind and Execute of `sql` (no parameters) through the unnamed statement and portal.
pub fn extended(sql: &str) -> Vec<u8> {
    let mut out = message(b'P', format!("\0{sql}\0\0\0").as_bytes());
    out.extend(message(b'B', b"\0\0\0\0\0\0\0\0"));
    out.extend(message(b'E', b"\0\0\0\0\0"));
    out
}

/// The message types of a reply, in order.
pub fn tags(got: &[(u8, Vec<u8>)]) -> Vec<u8> {
    got.iter().map(|(tag, _)| *tag).collect()
}

/// The first column of a DataRow body (count, then length), as text.
pub fn first_column(data_row: &[u8]) -> String {
    let len = i32::from_be_bytes(data_row[2..6].try_into().expect("length")) as usize;
    String::from_utf8(data_row[6..6 + len].to_vec()).expect("text")
}
