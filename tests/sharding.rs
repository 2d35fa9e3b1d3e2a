//! Sharding end to end (issue 4): two shards, each with a replica, under the default map of
//! 1024 logical shards. Every row must land on the shard the public hash rule names, computed
//! here independently (support::sharded), and placement is checked on each shard's primary
//! directly: present on the right one, absent on the other. Reads through the proxy must see
//! exactly the rows of the keys asked for; "decoy" rows planted directly on the wrong shard
//! show when a statement ran where it should not.

mod support;

use std::time::Duration;

use support::port;
use support::sharded::{
    default_shard, expect_code, int_keys_on, logical_of_int, logical_of_text, orders_snapshot,
    seed_with_decoys, shard_of_int, shard_of_text, sharded_setup, test_uuid, BinUuid, TextParam,
};
use tokio::time::timeout;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};

/// Bound on each whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(45);

/// Column 0 (bigint) of every row of `sql`, sorted.
async fn ints(c: &Client, sql: &str) -> Vec<i64> {
    let mut v: Vec<i64> = c
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .iter()
        .map(|r| r.get(0))
        .collect();
    v.sort_unstable();
    v
}

/// Column 0 of every row of `sql` (simple protocol), sorted.
///
/// Extended-protocol reads through the proxy use statements prepared once and kept: a
/// `query(&str)` closes its statement with a Close + Sync it does not wait for, and the next
/// request then arrives pipelined behind it, a case `pipelined_requests_...` covers alone.
async fn texts(c: &Client, sql: &str) -> Vec<String> {
    simple(c, sql).await.0
}

/// Runs `sql` with the simple protocol; (sorted column-0 values of its rows, every
/// CommandComplete count).
async fn simple(c: &Client, sql: &str) -> (Vec<String>, Vec<u64>) {
    let (mut rows, completes) = simple_in_order(c, sql).await;
    rows.sort_unstable();
    (rows, completes)
}

/// As [`simple`], with the rows in the order they came.
async fn simple_in_order(c: &Client, sql: &str) -> (Vec<String>, Vec<u64>) {
    let msgs = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    let mut rows = Vec::new();
    let mut completes = Vec::new();
    for m in msgs {
        match m {
            SimpleQueryMessage::Row(r) => rows.push(r.get(0).unwrap_or("NULL").to_owned()),
            SimpleQueryMessage::CommandComplete(n) => completes.push(n),
            _ => {}
        }
    }
    (rows, completes)
}

/// Asserts `orders` holds exactly `keys` (with the given note) split as the rule says.
async fn assert_orders_placed(direct: &[Client], note: &str, keys: &[i64]) {
    for (i, d) in direct.iter().enumerate() {
        let got = ints(
            d,
            &format!("SELECT user_id FROM orders WHERE note = '{note}'"),
        )
        .await;
        let mut want: Vec<i64> = keys
            .iter()
            .copied()
            .filter(|k| shard_of_int(*k) == i)
            .collect();
        want.sort_unstable();
        assert!(!want.is_empty(), "keys {keys:?} all hash to one shard");
        assert_eq!(got, want, "note {note}: rows on s{i}'s primary");
    }
}

#[test]
fn the_independent_hash_matches_the_documented_vectors() {
    assert_eq!(logical_of_int(42), 968);
    assert_eq!(logical_of_int(0), 217);
    assert_eq!(logical_of_int(-1), 19);
    assert_eq!(logical_of_text("42"), 968);
    assert_eq!(logical_of_text("alice"), 688);
    assert_eq!(logical_of_text("042"), 852);
    assert_eq!(logical_of_text("-0"), 560);
    assert_eq!(logical_of_text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), 313);
    assert_eq!(default_shard(511), 0);
    assert_eq!(default_shard(512), 1);
}

#[tokio::test]
async fn simple_protocol_single_row_inserts_land_on_the_hashed_shard() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let keys: Vec<i64> = (1..=40).collect();
        for k in &keys {
            let sql = format!("INSERT INTO orders (user_id, note) VALUES ({k}, 'simple')");
            let (_, completes) = simple(&s.client, &sql).await;
            assert_eq!(completes, vec![1], "{sql}");
        }
        assert_orders_placed(&s.direct, "simple", &keys).await;
        // Negative and large keys, with a cast and a column list in another order.
        let odd = [-1i64, 0, i64::MAX, i64::MIN, 9_000_000_000];
        for k in odd {
            let sql = format!("INSERT INTO orders (note, user_id) VALUES ('odd', ({k})::int8)");
            simple(&s.client, &sql).await;
        }
        assert_orders_placed(&s.direct, "odd", &odd).await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn extended_protocol_inserts_with_binary_and_text_params() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        // One prepared statement, binary int8 parameter: it must route per Execute.
        let stmt = c
            .prepare("INSERT INTO orders (user_id, note) VALUES ($1, 'bin')")
            .await
            .expect("prepare");
        let bin: Vec<i64> = (1..=20).collect();
        for k in &bin {
            assert_eq!(c.execute(&stmt, &[k]).await.expect("insert bin"), 1);
        }
        assert_orders_placed(&s.direct, "bin", &bin).await;

        // Text-format parameters declared int8.
        let text: Vec<i64> = (21..=40).collect();
        for k in &text {
            let n = c
                .execute(
                    "INSERT INTO orders (user_id, note) VALUES ($1, 'text')",
                    &[&TextParam(k.to_string())],
                )
                .await
                .expect("insert text");
            assert_eq!(n, 1);
        }
        assert_orders_placed(&s.direct, "text", &text).await;

        // Text keys: binary `text` params (tokio-postgres) and text-format ones; canonical
        // integers in text hash as integers, "042" and "-0" as text.
        let mut skus: Vec<String> = (0..20).map(|i| format!("sku-{i}")).collect();
        skus.extend(["7", "042", "-0", "-5", "é"].map(String::from));
        let ins = c
            .prepare("INSERT INTO items (sku, qty) VALUES ($1, $2)")
            .await
            .expect("prepare");
        for (i, sku) in skus.iter().enumerate() {
            let qty = i32::try_from(i).expect("small");
            if i % 2 == 0 {
                c.execute(&ins, &[sku, &qty]).await.expect("insert item");
            } else {
                c.execute(&ins, &[&TextParam(sku.clone()), &qty])
                    .await
                    .expect("insert item (text format)");
            }
        }
        for (i, d) in s.direct.iter().enumerate() {
            let got = texts(d, "SELECT sku FROM items").await;
            let mut want: Vec<String> = skus
                .iter()
                .filter(|k| shard_of_text(k) == i)
                .cloned()
                .collect();
            want.sort_unstable();
            assert_eq!(got, want, "items on s{i}");
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn binary_int4_and_int2_parameters_hash_as_their_integer() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        // tokio-postgres sends no parameter types in Parse: the server infers int4 from the
        // cast and the value arrives as 4 big-endian bytes.
        let int4: Vec<i64> = (100..=115).collect();
        for k in &int4 {
            let k32 = i32::try_from(*k).expect("small");
            c.execute(
                "INSERT INTO orders (user_id, note) VALUES ($1::int4, 'int4')",
                &[&k32],
            )
            .await
            .expect("insert int4");
        }
        assert_orders_placed(&s.direct, "int4", &int4).await;
        let int2: Vec<i64> = (200..=215).collect();
        for k in &int2 {
            let k16 = i16::try_from(*k).expect("small");
            c.execute(
                "INSERT INTO orders (user_id, note) VALUES ($1::int2, 'int2')",
                &[&k16],
            )
            .await
            .expect("insert int2");
        }
        assert_orders_placed(&s.direct, "int2", &int2).await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn pipelined_requests_are_each_routed_by_their_own_key() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        // tokio-postgres pipelines concurrent requests on one connection.
        let stmt = c
            .prepare("INSERT INTO orders (user_id, note) VALUES ($1, 'piped')")
            .await
            .expect("prepare");
        let keys: Vec<i64> = (1..=20).collect();
        let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 1]> = keys
            .iter()
            .map(|k| [k as &(dyn tokio_postgres::types::ToSql + Sync)])
            .collect();
        let results =
            futures_util::future::join_all(params.iter().map(|p| c.execute(&stmt, p))).await;
        for r in results {
            assert_eq!(r.expect("pipelined extended insert"), 1);
        }
        assert_orders_placed(&s.direct, "piped", &keys).await;

        let keys2: Vec<i64> = (21..=40).collect();
        let sqls: Vec<String> = keys2
            .iter()
            .map(|k| format!("INSERT INTO orders (user_id, note) VALUES ({k}, 'piped2')"))
            .collect();
        let results = futures_util::future::join_all(sqls.iter().map(|q| c.simple_query(q))).await;
        for r in results {
            r.expect("pipelined simple insert");
        }
        assert_orders_placed(&s.direct, "piped2", &keys2).await;

        // query(&str) closes its statement when done (Close + Sync, not waited for): the
        // next request follows right behind it and must still be routed by its own key.
        let a = int_keys_on(0, 1000, 5);
        let b = int_keys_on(1, 1000, 5);
        seed_with_decoys(&s.direct, &[a.clone(), b.clone()].concat()).await;
        for (x, y) in a.iter().zip(&b) {
            for (first, then) in [(x, y), (y, x)] {
                let rows = c
                    .query("SELECT note FROM orders WHERE user_id = $1", &[first])
                    .await
                    .expect("extended read");
                assert_eq!(rows.len(), 2, "key {first}");
                let (rows, _) = simple(
                    c,
                    &format!("SELECT note FROM orders WHERE user_id = {then}"),
                )
                .await;
                assert_eq!(
                    rows,
                    vec!["a", "b"],
                    "key {then} read right after key {first}"
                );
            }
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn uuid_keys_hash_by_their_lowercase_text_form() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        let ids: Vec<String> = (1..=16).map(test_uuid).collect();
        for id in &ids {
            simple(
                c,
                &format!("INSERT INTO sessions (id, tag) VALUES ('{id}', 'lower')"),
            )
            .await;
            let upper = id.to_uppercase();
            simple(
                c,
                &format!("INSERT INTO sessions (id, tag) VALUES ('{upper}'::uuid, 'upper')"),
            )
            .await;
        }
        // Extended protocol: a binary uuid parameter, and an uppercase text-format one.
        let more: Vec<String> = (100..=111).map(test_uuid).collect();
        let ins = c
            .prepare("INSERT INTO sessions (id, tag) VALUES ($1, 'bin')")
            .await
            .expect("prepare");
        for (i, id) in more.iter().enumerate() {
            let n = if i % 2 == 0 {
                c.execute(&ins, &[&BinUuid::parse(id)]).await
            } else {
                c.execute(&ins, &[&TextParam(id.to_uppercase())]).await
            };
            assert_eq!(n.expect("insert uuid"), 1);
        }
        for (i, d) in s.direct.iter().enumerate() {
            let got = texts(d, "SELECT id::text || ' ' || tag FROM sessions").await;
            let mut want: Vec<String> = Vec::new();
            for id in ids.iter().filter(|id| shard_of_text(id) == i) {
                want.push(format!("{id} lower"));
                want.push(format!("{id} upper"));
            }
            for id in more.iter().filter(|id| shard_of_text(id) == i) {
                want.push(format!("{id} bin"));
            }
            want.sort_unstable();
            assert!(!want.is_empty(), "every uuid hashes to one shard");
            assert_eq!(got, want, "sessions on s{i}");
        }
        // A point read by an uppercase literal finds both rows of the key.
        let id = &ids[0];
        let (rows, _) = simple(
            c,
            &format!(
                "SELECT tag FROM sessions WHERE id = '{}'::uuid",
                id.to_uppercase()
            ),
        )
        .await;
        assert_eq!(rows, vec!["lower", "upper"]);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn multi_row_inserts_are_split_and_answered_once() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        // Simple protocol, with RETURNING: one CommandComplete with the sum, every row back.
        let keys: Vec<i64> = (1..=10).collect();
        let values: Vec<String> = keys.iter().map(|k| format!("({k}, 'multi')")).collect();
        let sql = format!(
            "INSERT INTO orders (user_id, note) VALUES {} RETURNING user_id",
            values.join(", ")
        );
        let (got, completes) = simple_in_order(c, &sql).await;
        assert_eq!(completes, vec![10], "{sql}");
        // RETURNING rows come back in VALUES order, as from one server (Django's bulk_create
        // matches them to its objects by position), though the keys alternate between shards.
        let got: Vec<i64> = got.iter().map(|r| r.parse().expect("int")).collect();
        assert_eq!(got, keys);
        assert!(
            keys.windows(2)
                .any(|w| shard_of_int(w[0]) != shard_of_int(w[1])),
            "the keys must span both shards"
        );
        assert_orders_placed(&s.direct, "multi", &keys).await;

        // Simple protocol without RETURNING, the key second in the column list.
        let keys2: Vec<i64> = (11..=20).collect();
        let values: Vec<String> = keys2.iter().map(|k| format!("('multi2', {k})")).collect();
        let sql = format!(
            "INSERT INTO orders (note, user_id) VALUES {}",
            values.join(", ")
        );
        let (rows, completes) = simple(c, &sql).await;
        assert!(rows.is_empty());
        assert_eq!(completes, vec![10], "{sql}");
        assert_orders_placed(&s.direct, "multi2", &keys2).await;

        // Extended protocol, binary parameters, rows on both shards in turn.
        let a = int_keys_on(0, 1000, 3);
        let b = int_keys_on(1, 1000, 3);
        let ext = [a[0], b[0], a[1], b[1], a[2], b[2]];
        let n = c
            .execute(
                "INSERT INTO orders (user_id, note) VALUES \
                 ($1, 'ext'), ($2, 'ext'), ($3, 'ext'), ($4, 'ext'), ($5, 'ext'), ($6, 'ext')",
                &[&ext[0], &ext[1], &ext[2], &ext[3], &ext[4], &ext[5]],
            )
            .await
            .expect("extended multi-row insert");
        assert_eq!(n, 6);
        assert_orders_placed(&s.direct, "ext", &ext).await;

        // The second shard's row first: shard order would put it last.
        let ret = [int_keys_on(1, 2000, 1)[0], int_keys_on(0, 2000, 1)[0]];
        let rows = c
            .query(
                "INSERT INTO orders (user_id, note) VALUES ($1, 'ret'), ($2, 'ret') \
                 RETURNING user_id, note",
                &[&ret[0], &ret[1]],
            )
            .await
            .expect("extended insert returning");
        let got: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(got, ret.to_vec(), "RETURNING in VALUES order");
        assert!(rows.iter().all(|r| r.get::<_, &str>(1) == "ret"));
        assert_orders_placed(&s.direct, "ret", &ret).await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn point_reads_and_in_lists_return_exactly_the_keys_rows() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        let keys: Vec<i64> = (1..=12).collect();
        seed_with_decoys(&s.direct, &keys).await;
        let point = c
            .prepare("SELECT note FROM orders WHERE user_id = $1")
            .await
            .expect("prepare");
        for k in &keys {
            let (rows, _) =
                simple(c, &format!("SELECT note FROM orders WHERE user_id = {k}")).await;
            assert_eq!(rows, vec!["a", "b"], "point read of {k} (simple)");
            let got = texts(
                c,
                &format!(
                    "SELECT o.note FROM public.orders AS o \
                     WHERE (o.user_id = {k}::bigint) AND o.note <> 'zzz'"
                ),
            )
            .await;
            assert_eq!(got, vec!["a", "b"], "point read of {k} (alias, cast)");
            let rows = c.query(&point, &[k]).await.expect("point read");
            let mut got: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            got.sort_unstable();
            assert_eq!(got, vec!["a", "b"], "point read of {k} (extended)");
        }

        let a = int_keys_on(0, 1, 2);
        let b = int_keys_on(1, 1, 2);
        // An IN list within one shard runs there only: no decoy.
        for keys in [&a, &b] {
            let (rows, _) = simple(
                c,
                &format!(
                    "SELECT user_id || ' ' || note FROM orders WHERE user_id IN ({}, {})",
                    keys[0], keys[1]
                ),
            )
            .await;
            let mut want: Vec<String> = keys
                .iter()
                .flat_map(|k| [format!("{k} a"), format!("{k} b")])
                .collect();
            want.sort_unstable();
            assert_eq!(rows, want, "IN list on one shard");
        }
        // An IN list spanning shards runs the statement on each: with the data where the
        // rule puts it (no decoys), that returns exactly the keys' rows.
        for d in &s.direct {
            d.batch_execute("DELETE FROM orders WHERE note = 'decoy'")
                .await
                .expect("drop decoys");
        }
        let list = [a[0], b[0], a[1], b[1]];
        let mut want: Vec<String> = list
            .iter()
            .flat_map(|k| [format!("{k} a"), format!("{k} b")])
            .collect();
        want.sort_unstable();
        let (rows, _) = simple(
            c,
            &format!(
                "SELECT user_id || ' ' || note FROM orders WHERE user_id IN ({}, {}, {}, {})",
                list[0], list[1], list[2], list[3]
            ),
        )
        .await;
        assert_eq!(rows, want, "IN list across shards (simple)");
        let got = texts_params(
            c,
            "SELECT user_id || ' ' || note FROM orders WHERE user_id IN ($1, $2, $3, $4)",
            &list,
        )
        .await;
        assert_eq!(got, want, "IN list across shards (extended)");

        // The same through a replica of each shard, once they have the rows.
        s.topology
            .wait_replicas_caught_up(Duration::from_secs(10))
            .expect("replicas caught up");
        let reader = s.proxy.connect(&s.topology).await;
        let got = texts_params(
            &reader,
            "SELECT user_id || ' ' || note FROM orders WHERE user_id IN ($1, $2, $3, $4)",
            &list,
        )
        .await;
        assert_eq!(got, want, "IN list across shards (replicas)");
    })
    .await
    .expect("test timed out");
}

/// Column 0 (text) of `sql` run with the i64 `params`, sorted.
async fn texts_params(c: &Client, sql: &str, params: &[i64]) -> Vec<String> {
    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
        .iter()
        .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let mut v: Vec<String> = c
        .query(sql, &refs)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .iter()
        .map(|r| r.get(0))
        .collect();
    v.sort_unstable();
    v
}

#[tokio::test]
async fn update_and_delete_by_key_touch_only_the_keys_shard() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        let k0 = int_keys_on(0, 1, 2);
        let k1 = int_keys_on(1, 1, 2);
        seed_with_decoys(&s.direct, &[k0[0], k0[1], k1[0], k1[1]]).await;

        let (_, n) = simple(
            c,
            &format!("UPDATE orders SET note = 'u' WHERE user_id = {}", k0[0]),
        )
        .await;
        assert_eq!(n, vec![2], "simple UPDATE by key");
        let update = c
            .prepare("UPDATE orders SET note = $2 WHERE user_id = $1")
            .await
            .expect("prepare");
        let n = c
            .execute(&update, &[&k1[0], &"u"])
            .await
            .expect("extended UPDATE");
        assert_eq!(n, 2, "extended UPDATE by key");
        let (_, n) = simple(c, &format!("DELETE FROM orders WHERE user_id = {}", k0[1])).await;
        assert_eq!(n, vec![2], "simple DELETE by key");
        let n = c
            .execute("DELETE FROM orders WHERE user_id = $1", &[&k1[1]])
            .await
            .expect("extended DELETE");
        assert_eq!(n, 2, "extended DELETE by key");

        let snap = orders_snapshot(&s.direct).await;
        let mut want0 = vec![
            (k0[0], "u".to_owned()),
            (k0[0], "u".to_owned()),
            (k1[0], "decoy".to_owned()),
            (k1[1], "decoy".to_owned()),
        ];
        let mut want1 = vec![
            (k0[0], "decoy".to_owned()),
            (k0[1], "decoy".to_owned()),
            (k1[0], "u".to_owned()),
            (k1[0], "u".to_owned()),
        ];
        want0.sort();
        want1.sort();
        assert_eq!(snap, vec![want0, want1]);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn key_updates_to_another_shard_and_keyless_statements_are_refused() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        let k0 = int_keys_on(0, 1, 2);
        let k1 = int_keys_on(1, 1, 1)[0];
        seed_with_decoys(&s.direct, &[k0[0], k1]).await;
        let before = orders_snapshot(&s.direct).await;

        let refused = [
            format!("UPDATE orders SET user_id = {k1} WHERE user_id = {}", k0[0]),
            format!(
                "UPDATE orders SET user_id = user_id + 1 WHERE user_id = {}",
                k0[0]
            ),
            // A keyless write that assigns the key could move rows: refused.
            "UPDATE orders SET user_id = 7".to_owned(),
        ];
        for sql in &refused {
            expect_code(
                c.simple_query(sql).await,
                &SqlState::FEATURE_NOT_SUPPORTED,
                sql,
            );
        }
        let key_update = c
            .prepare("UPDATE orders SET user_id = $1 WHERE user_id = $2")
            .await
            .expect("prepare");
        let r = c.execute(&key_update, &[&k1, &k0[0]]).await;
        expect_code(r, &SqlState::FEATURE_NOT_SUPPORTED, "extended key update");
        let keyless = c
            .prepare("SELECT note FROM orders WHERE note = $1")
            .await
            .expect("prepare");
        // Keyless reads run on every shard (scatter-gather) and see every shard's rows.
        let all: usize = before.iter().map(Vec::len).sum();
        let rows = c
            .query("SELECT user_id FROM orders", &[])
            .await
            .expect("scatter");
        assert_eq!(rows.len(), all, "a keyless read sees both shards");
        let want: usize = before
            .iter()
            .flatten()
            .filter(|(_, note)| note == "a")
            .count();
        let rows = c.query(&keyless, &[&"a"]).await.expect("extended scatter");
        assert_eq!(rows.len(), want, "extended keyless read");
        assert_eq!(orders_snapshot(&s.direct).await, before, "nothing changed");

        // Without a column list the key's position is unknown to a proxy without the catalog:
        // refused, or placed right, but never put on an arbitrary shard.
        let sql = format!("INSERT INTO orders VALUES ({k1}, 'nocols')");
        match c.simple_query(&sql).await {
            Err(e) => {
                assert_eq!(
                    e.code(),
                    Some(&SqlState::FEATURE_NOT_SUPPORTED),
                    "{sql}: {e:?}"
                );
            }
            Ok(_) => {
                let n = s.direct[1]
                    .query_one("SELECT count(*) FROM orders WHERE note = 'nocols'", &[])
                    .await
                    .expect("count")
                    .get::<_, i64>(0);
                assert_eq!(n, 1, "{sql} did not land on s1");
                s.direct[1]
                    .batch_execute("DELETE FROM orders WHERE note = 'nocols'")
                    .await
                    .expect("clean up");
            }
        }
        assert_eq!(
            orders_snapshot(&s.direct).await,
            before,
            "{sql}: nothing elsewhere"
        );

        // The session still works, and a key update staying on its shard is allowed.
        let (_, n) = simple(
            c,
            &format!(
                "UPDATE orders SET user_id = {} WHERE user_id = {}",
                k0[1], k0[0]
            ),
        )
        .await;
        assert_eq!(n, vec![2], "same-shard key update");
        let got = ints(
            &s.direct[0],
            "SELECT user_id FROM orders WHERE note <> 'decoy'",
        )
        .await;
        assert_eq!(got, vec![k0[1], k0[1]]);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn reference_and_unlisted_tables_are_written_everywhere_and_read_on_s0() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        let (_, n) = simple(
            c,
            "INSERT INTO countries VALUES ('fr', 'France'), ('jp', 'Japan')",
        )
        .await;
        assert_eq!(n, vec![2], "a reference write reports one shard's count");
        let ins = c
            .prepare("INSERT INTO countries VALUES ($1, $2)")
            .await
            .expect("prepare");
        let n = c
            .execute(&ins, &[&"de", &"Germany"])
            .await
            .expect("extended reference insert");
        assert_eq!(n, 1);
        // RETURNING: every shard returns the same row, which one server returns once.
        let (rows, n) = simple(
            c,
            "UPDATE countries SET name = 'Nippon' WHERE code = 'jp' RETURNING name",
        )
        .await;
        assert_eq!((rows, n), (vec!["Nippon".to_owned()], vec![1]));
        let rows = c
            .query(
                "UPDATE countries SET name = $1 WHERE code = 'jp' RETURNING code",
                &[&"Nippon"],
            )
            .await
            .expect("extended reference update returning");
        assert_eq!(rows.len(), 1, "one row, as from one server");
        for (i, d) in s.direct.iter().enumerate() {
            let got = texts(d, "SELECT code || '=' || name FROM countries").await;
            assert_eq!(
                got,
                vec!["de=Germany", "fr=France", "jp=Nippon"],
                "countries on s{i}"
            );
        }
        let (rows, _) = simple(c, "SELECT name FROM countries WHERE code = 'jp'").await;
        assert_eq!(rows, vec!["Nippon"]);

        // A table in no list: written everywhere, read on s0.
        simple(c, "INSERT INTO notes VALUES ('everywhere')").await;
        s.direct[1]
            .batch_execute("INSERT INTO notes VALUES ('only-s1')")
            .await
            .expect("direct");
        for (i, d) in s.direct.iter().enumerate() {
            let got = texts(d, "SELECT body FROM notes WHERE body = 'everywhere'").await;
            assert_eq!(got, vec!["everywhere"], "notes on s{i}");
        }
        assert_eq!(texts(c, "SELECT body FROM notes").await, vec!["everywhere"]);
        let p = port(c, "SELECT inet_server_port() AS port").await;
        assert_eq!(
            p,
            s.topology.shards[0].primary.port(),
            "SELECT 1 runs on s0"
        );
    })
    .await
    .expect("test timed out");
}

/// Whether `relation` exists on each primary.
async fn exists_on(direct: &[Client], relation: &str) -> Vec<bool> {
    let mut out = Vec::new();
    for d in direct {
        let row = d
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&relation])
            .await
            .expect("to_regclass");
        out.push(row.get(0));
    }
    out
}

/// The value of a one-row bigint query on each primary.
async fn counts_on(direct: &[Client], sql: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for d in direct {
        out.push(
            d.query_one(sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
                .get(0),
        );
    }
    out
}

#[tokio::test]
async fn ddl_through_the_proxy_reaches_every_shard_atomically() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        simple(c, "CREATE TABLE widgets (id bigint, v text)").await;
        assert_eq!(exists_on(&s.direct, "widgets").await, vec![true, true]);
        simple(c, "CREATE INDEX widgets_v ON widgets (v)").await;
        assert_eq!(exists_on(&s.direct, "widgets_v").await, vec![true, true]);
        simple(c, "ALTER TABLE widgets ADD COLUMN label text").await;
        let col = "SELECT count(*) FROM information_schema.columns \
                   WHERE table_name = 'widgets' AND column_name = 'label'";
        assert_eq!(counts_on(&s.direct, col).await, vec![1, 1]);
        simple(c, "ALTER TABLE orders ADD COLUMN extra int").await;
        let col = "SELECT count(*) FROM information_schema.columns \
                   WHERE table_name = 'orders' AND column_name = 'extra'";
        assert_eq!(counts_on(&s.direct, col).await, vec![1, 1]);
        let ddl = c
            .prepare("CREATE TABLE ext_ddl (x int)")
            .await
            .expect("prepare DDL");
        c.execute(&ddl, &[]).await.expect("extended DDL");
        assert_eq!(exists_on(&s.direct, "ext_ddl").await, vec![true, true]);
        simple(c, "DROP TABLE widgets").await;
        assert_eq!(exists_on(&s.direct, "widgets").await, vec![false, false]);

        seed_with_decoys(&s.direct, &[1, 2]).await;
        simple(c, "TRUNCATE orders").await;
        assert_eq!(
            counts_on(&s.direct, "SELECT count(*) FROM orders").await,
            vec![0, 0]
        );

        // Fails on s0 only: rolled back on s1 too.
        s.direct[0]
            .batch_execute("CREATE TABLE clash (x int)")
            .await
            .expect("direct");
        let r = c.simple_query("CREATE TABLE clash (y int)").await;
        expect_code(r, &SqlState::DUPLICATE_TABLE, "CREATE TABLE clash");
        assert_eq!(exists_on(&s.direct, "clash").await, vec![true, false]);
        let y = "SELECT count(*) FROM information_schema.columns \
                 WHERE table_name = 'clash' AND column_name = 'y'";
        assert_eq!(counts_on(&s.direct, y).await, vec![0, 0]);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn hints_and_session_settings_pin_the_shard() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        let p0 = s.topology.shards[0].primary.port();
        let p1 = s.topology.shards[1].primary.port();
        let here = "SELECT inet_server_port() AS port";
        assert_eq!(port(c, here).await, p0);
        assert_eq!(
            port(c, &format!("/* shardgate: shard=s1 */ {here}")).await,
            p1
        );
        assert_eq!(
            port(c, &format!("{here} /* shardgate: shard=s0 */")).await,
            p0
        );
        let k1 = int_keys_on(1, 1, 1)[0];
        let k0 = int_keys_on(0, 1, 1)[0];
        assert_eq!(
            port(c, &format!("/* shardgate: shard_key={k1} */ {here}")).await,
            p1
        );
        assert_eq!(
            port(c, &format!("/* shardgate: shard_key={k0} */ {here}")).await,
            p0
        );

        // A hint pins a write (to a table in no list) to one shard.
        simple(
            c,
            "/* shardgate: shard=s1 */ INSERT INTO notes VALUES ('pinned')",
        )
        .await;
        assert_eq!(
            counts_on(&s.direct, "SELECT count(*) FROM notes").await,
            vec![0, 1]
        );
        // A shard_key hint makes a keyless statement on a sharded table routable.
        seed_with_decoys(&s.direct, &[k1]).await;
        let got = texts(
            c,
            &format!("/* shardgate: shard_key={k1} */ SELECT note FROM orders"),
        )
        .await;
        assert_eq!(got, vec!["a", "b"]);

        // Session settings, answered locally.
        let show = |sql: &'static str| async move {
            let (rows, _) = simple(c, sql).await;
            rows
        };
        assert_eq!(show("SHOW shardgate.shard").await, vec!["auto"]);
        simple(c, "SET shardgate.shard = 's1'").await;
        assert_eq!(show("SHOW shardgate.shard").await, vec!["s1"]);
        assert_eq!(port(c, here).await, p1);
        assert_eq!(texts(c, "SELECT body FROM notes").await, vec!["pinned"]);
        simple(c, "SET shardgate.shard = 'auto'").await;
        assert_eq!(show("SHOW shardgate.shard").await, vec!["auto"]);
        assert_eq!(port(c, here).await, p0);

        simple(c, &format!("SET shardgate.shard_key = '{k1}'")).await;
        assert_eq!(port(c, here).await, p1);
        assert_eq!(texts(c, "SELECT note FROM orders").await, vec!["a", "b"]);
        simple(c, "RESET shardgate.shard_key").await;
        assert_eq!(port(c, here).await, p0);
        // Keyless again after RESET: every shard's rows.
        let all = texts(c, "SELECT note FROM orders ORDER BY note").await;
        assert!(
            all.len() > 2,
            "keyless after RESET reads every shard: {all:?}"
        );
        simple(c, "SET shardgate.shard = 's1'").await;
        simple(c, "RESET shardgate.shard").await;
        assert_eq!(port(c, here).await, p0);

        // Unknown shard names.
        expect_code(
            c.simple_query(&format!("/* shardgate: shard=s9 */ {here}"))
                .await,
            &SqlState::INVALID_PARAMETER_VALUE,
            "hint shard=s9",
        );
        expect_code(
            c.simple_query("SET shardgate.shard = 's9'").await,
            &SqlState::INVALID_PARAMETER_VALUE,
            "SET shardgate.shard = 's9'",
        );
        assert_eq!(port(c, here).await, p0);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn decisions_name_the_shards_and_the_key() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        simple(
            c,
            "SELECT note FROM orders WHERE user_id = 42 /* probe-42 */",
        )
        .await;
        let k0 = int_keys_on(0, 1, 1)[0];
        simple(
            c,
            &format!("SELECT note FROM orders WHERE user_id = {k0} /* probe-k0 */"),
        )
        .await;
        let k1 = int_keys_on(1, 1, 1)[0];
        simple(
            c,
            &format!("INSERT INTO orders (user_id, note) VALUES ({k0}, 'x'), ({k1}, 'x') /* probe-split */"),
        )
        .await;

        let all = s.proxy.admin_json("/api/decisions?limit=100");
        let list = all["decisions"].as_array().expect("decisions");
        let find = |needle: &str| {
            list.iter()
                .find(|d| d["sql"].as_str().is_some_and(|q| q.contains(needle)))
                .unwrap_or_else(|| panic!("no decision for {needle}: {all}"))
        };
        let l42 = logical_of_int(42);
        let d = find("probe-42");
        let want = format!("s{}", default_shard(l42));
        assert_eq!(d["shards"], serde_json::json!([want]), "{d}");
        assert_eq!(d["shard"], want.as_str(), "{d}");
        let reason = d["reason"].as_str().unwrap_or_default();
        let expected = format!("key user_id=42 → logical {l42} → {want}");
        assert!(
            reason.contains(&expected),
            "reason {reason:?}, expected {expected:?}"
        );

        let d = find("probe-k0");
        assert_eq!(d["shards"], serde_json::json!(["s0"]), "{d}");
        let expected = format!("key user_id={k0} → logical {} → s0", logical_of_int(k0));
        assert!(
            d["reason"].as_str().is_some_and(|r| r.contains(&expected)),
            "{d}, expected {expected:?}"
        );
        let d = find("probe-split");
        assert_eq!(d["shards"], serde_json::json!(["s0", "s1"]), "{d}");
        assert_eq!(d["shard"], "s0", "{d}");

        // What-if routing answers the same fields without running anything.
        let route = s
            .proxy
            .admin_json("/api/route?sql=SELECT%20*%20FROM%20orders%20WHERE%20user_id%20%3D%2042");
        assert_eq!(
            route["shards"],
            serde_json::json!([format!("s{}", default_shard(l42))]),
            "{route}"
        );
        assert!(
            route["reason"]
                .as_str()
                .is_some_and(|r| r.contains(&format!("logical {l42}"))),
            "{route}"
        );
    })
    .await
    .expect("test timed out");
}

/// Key types are learned at the server's default settings, not through the `search_path` a
/// previous client left on the pooled connection: a same-named table in another schema, with
/// another key type, must not decide how every client's keys hash.
#[tokio::test]
async fn key_types_are_learned_at_server_defaults() {
    timeout(TEST_TIMEOUT, async {
        let topology = shardgate_testkit::Topology::builder()
            .shards(2)
            .build()
            .expect("topology");
        let direct = support::sharded::primaries(&topology).await;
        for d in &direct {
            d.batch_execute(support::sharded::SCHEMA)
                .await
                .expect("schema");
            d.batch_execute("CREATE SCHEMA other; CREATE TABLE other.users (id text, name text)")
                .await
                .expect("other schema");
        }
        // A key whose shard differs when hashed as text: that is what a wrong type would do.
        let key = (1..200)
            .find(|k| shard_of_text(&format!("0{k}")) != shard_of_int(*k))
            .expect("a key that hashes apart");
        let proxy = support::sharded::start_pool_of_one(&topology);
        // A leaves its search_path on the only server connection to s0's primary.
        let a = proxy.connect(&topology).await;
        a.batch_execute("SET search_path TO other, public")
            .await
            .expect("set");
        a.batch_execute("/* shardgate: shard=s0 */ SELECT 1")
            .await
            .expect("use s0");
        // B's users is public.users, keyed by bigint: '0<key>' is the number key.
        let b = proxy.connect(&topology).await;
        b.batch_execute(&format!(
            "INSERT INTO users (id, name) VALUES ('0{key}', 'b')"
        ))
        .await
        .expect("insert");
        let want = shard_of_int(key);
        for (i, d) in direct.iter().enumerate() {
            let n: i64 = d
                .query_one("SELECT count(*) FROM public.users WHERE id = $1", &[&key])
                .await
                .expect("count")
                .get(0);
            assert_eq!(n, i64::from(i == want), "shard {i} for key {key}");
        }
    })
    .await
    .expect("in time");
}
