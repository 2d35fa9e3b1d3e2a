//! Binary results of a request that describes its statement and runs it at once (Parse,
//! Describe of the statement, Bind asking for binary results, Execute, Sync). The statement's
//! description says text for every column (a statement does not know its result formats), so
//! the merge must decode rows with the formats the Bind asked for: the merged binary values,
//! in ORDER BY order, must equal the reference server's.

use std::time::Duration;

use tokio::time::timeout;

use super::compare::run_ext;
use super::support::raw::{error_field, login_trust, message};
use super::{env, ROWS, TEST_TIMEOUT};

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Parse, Describe(S), Bind (no parameters, every result column binary), Execute, Sync.
fn describe_then_run_binary(sql: &str) -> Vec<u8> {
    let mut parse = cstr("");
    parse.extend(cstr(sql));
    parse.extend(0i16.to_be_bytes());
    let mut bind = cstr("");
    bind.extend(cstr(""));
    bind.extend(0i16.to_be_bytes());
    bind.extend(0i16.to_be_bytes());
    bind.extend(1i16.to_be_bytes());
    bind.extend(1i16.to_be_bytes());
    let mut execute = cstr("");
    execute.extend(0i32.to_be_bytes());
    let mut out = message(b'P', &parse);
    out.extend(message(b'D', b"S\0"));
    out.extend(message(b'B', &bind));
    out.extend(message(b'E', &execute));
    out.extend(message(b'S', &[]));
    out
}

fn data_row(body: &[u8]) -> Vec<Option<Vec<u8>>> {
    let n = i16::from_be_bytes([body[0], body[1]]);
    let mut pos = 2;
    (0..n)
        .map(|_| {
            let len = i32::from_be_bytes(body[pos..pos + 4].try_into().expect("4 bytes"));
            pos += 4;
            if len < 0 {
                return None;
            }
            let v = body[pos..pos + len as usize].to_vec();
            pos += len as usize;
            Some(v)
        })
        .collect()
}

/// The format code of each column of a RowDescription body.
fn formats(body: &[u8]) -> Vec<i16> {
    let n = i16::from_be_bytes([body[0], body[1]]);
    let mut pos = 2;
    (0..n)
        .map(|_| {
            pos += body[pos..].iter().position(|&b| b == 0).expect("name") + 1;
            pos += 4 + 2 + 4 + 2 + 4;
            let f = i16::from_be_bytes([body[pos], body[pos + 1]]);
            pos += 2;
            f
        })
        .collect()
}

#[tokio::test]
async fn described_statement_with_binary_results_merges_like_one_server() {
    timeout(TEST_TIMEOUT, async {
        let env = env(ROWS / 2, true).await;
        let mut raw = login_trust(env.proxy.addr(), env.a.user(), env.a.database()).await;
        for sql in [
            "SELECT id, i8, n, ts, tz, d FROM ev ORDER BY i8, id",
            "SELECT n, id FROM ev ORDER BY n DESC NULLS LAST, id LIMIT 50",
            "SELECT ts, tz, id FROM ev ORDER BY ts, tz, id",
            "SELECT g, sum(i8), min(ts), max(n), count(*) FROM ev GROUP BY g ORDER BY g",
            "SELECT DISTINCT d FROM ev ORDER BY d",
        ] {
            let want = run_ext(&env.pb, sql, &[]).await.expect("reference");
            raw.send(&describe_then_run_binary(sql)).await;
            let msgs = raw.until_ready(Duration::from_secs(20)).await;
            if let Some(e) = msgs.iter().find(|m| m.0 == b'E') {
                panic!(
                    "{sql}: {:?} {:?}",
                    error_field(&e.1, b'C'),
                    error_field(&e.1, b'M')
                );
            }
            let tags: Vec<u8> = msgs.iter().map(|m| m.0).filter(|t| *t != b'D').collect();
            assert_eq!(tags, b"1tT2CZ".to_vec(), "{sql}: reply sequence");
            let rd = msgs.iter().find(|m| m.0 == b'T').expect("RowDescription");
            let described = formats(&rd.1);
            assert_eq!(
                described,
                vec![0; want.oids.len()],
                "{sql}: a statement is described in text"
            );
            let got: Vec<_> = msgs
                .iter()
                .filter(|m| m.0 == b'D')
                .map(|m| data_row(&m.1))
                .collect();
            assert_eq!(got.len(), want.rows.len(), "{sql}: row count");
            let first_diff = got.iter().zip(&want.rows).position(|(g, w)| g != w);
            assert_eq!(
                first_diff, None,
                "{sql}: binary rows differ from the reference's"
            );
        }
    })
    .await
    .expect("test timed out");
}
