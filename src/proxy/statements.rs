//! Named prepared statements in transaction mode: a client's names map to internal
//! names derived from the SQL text and parameter types, so any server connection can
//! run them and identical statements of different clients share one server-side Parse.

use std::collections::HashMap;
use std::io::Write;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use shardgate_sql::Classification;
use shardgate_wire::{frontend, ParseRef};
use xxhash_rust::xxh3::Xxh3;

/// Length of an internal name: "sg_" + 32 hex digits.
pub(crate) const NAME_LEN: usize = 35;

/// One client statement, as shardgate re-creates it on server connections.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    /// Identity of (SQL, parameter types, the client's settings when it prepared); also what
    /// server connections remember.
    pub(crate) id: u128,
    pub(crate) name: [u8; NAME_LEN],
    /// The complete Parse frame under the internal name, replayed on other servers.
    pub(crate) parse: Bytes,
    /// Where the query text is inside `parse`.
    pub(crate) query: Range<usize>,
    /// How the query routes (classified once, at Parse).
    pub(crate) class: Arc<Classification>,
    /// The fingerprint of the settings the server analyses it under (see [`unshared_settings`]).
    pub(crate) settings: u64,
    /// The [`PlanEpoch`] it was named in.
    pub(crate) epoch: u64,
    /// The row shape the server gave the client's Parse (see [`Shape`]): what a re-created copy
    /// must still return. None until the server answers.
    pub(crate) shape: Option<Shape>,
    /// [`shape_key`] of `shape` (0: not known), compared with that of a connection's copy.
    pub(crate) shape_key: u64,
    /// A re-created copy returned another row shape: as on a single server, every Bind and
    /// Describe of the statement fails with 0A000 until the client prepares it again.
    pub(crate) stale: bool,
}

/// A statement's result as a server describes it: a RowDescription body behind a `T`, or a
/// lone `n` (NoData). PostgreSQL fails a prepared statement whose result type changed
/// (`RevalidateCachedQuery` compares the result tuple descriptors); [`same_shape`] compares what
/// the protocol shows of them.
pub(crate) type Shape = Bytes;

/// A [`Shape`] from a server's RowDescription (`tag` `T`, `body`) or NoData (`n`).
pub(crate) fn shape_of(tag: u8, body: &[u8]) -> Shape {
    let mut b = BytesMut::with_capacity(body.len() + 1);
    b.extend_from_slice(&[tag]);
    b.extend_from_slice(body);
    b.freeze()
}

/// Whether two shapes have the same columns: count, names, type OIDs, type lengths and type
/// modifiers. Not the source table and column, which PostgreSQL does not compare either (a
/// column dropped and added again under its name and type is the same result type), nor the
/// format code, always text in a statement's description. A collation is not on the wire: a
/// change of collation alone is not seen.
pub(crate) fn same_shape(a: &[u8], b: &[u8]) -> bool {
    /// Name, then table OID (4), column number (2), type OID (4), type length (2), type
    /// modifier (4), format (2).
    fn field(b: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
        let end = memchr::memchr(0, b)?;
        Some((&b[..end], b.get(end + 7..end + 17)?, b.get(end + 19..)?))
    }
    match (a.split_first(), b.split_first()) {
        (Some((b'T', a)), Some((b'T', b))) => {
            if a.len() < 2 || a.get(..2) != b.get(..2) {
                return false;
            }
            let count = i16::from_be_bytes([a[0], a[1]]);
            let (mut a, mut b) = (&a[2..], &b[2..]);
            for _ in 0..count {
                let (Some((na, ta, ra)), Some((nb, tb, rb))) = (field(a), field(b)) else {
                    return false;
                };
                if na != nb || ta != tb {
                    return false;
                }
                (a, b) = (ra, rb);
            }
            true
        }
        (Some((b'n', _)), Some((b'n', _))) => true,
        _ => false,
    }
}

/// A key of what [`same_shape`] compares of `shape`: shapes the same have the same key. Never
/// 0, which stands for a shape not known (see `ServerConn::prepared`).
pub(crate) fn shape_key(shape: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    let mut rest = shape;
    if let Some((b'T', body)) = shape.split_first() {
        if let Some(count) = body.get(..2) {
            h.update(count);
            rest = &body[2..];
            let count = i16::from_be_bytes([count[0], count[1]]);
            for _ in 0..count {
                let Some(end) = memchr::memchr(0, rest) else {
                    break;
                };
                let (Some(name), Some(types)) = (rest.get(..=end), rest.get(end + 7..end + 17))
                else {
                    break;
                };
                h.update(name);
                h.update(types);
                rest = rest.get(end + 19..).unwrap_or_default();
            }
        }
        // Whatever does not parse as columns counts whole.
        h.update(rest);
    } else {
        h.update(shape.get(..1).unwrap_or_default());
    }
    h.digest().max(1)
}

/// A counter in every internal name, moved on whenever a server reports that a statement
/// shardgate prepared no longer matches its tables (0A000 "cached plan must not change result
/// type", after an `ALTER TABLE` say). The server keeps failing that statement until it is
/// prepared again, and every server connection that has it fails it alike: statements named
/// from then on get names no server has yet, so a client that prepares again (asyncpg does on
/// InvalidCachedStatementError) gets a fresh Parse on whichever connection it lands on.
#[derive(Debug, Default)]
pub(crate) struct PlanEpoch(AtomicU64);

impl PlanEpoch {
    pub(crate) fn current(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn advance(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// A settings key no other statement has: for a statement whose settings at analysis are not
/// known (a SET not yet answered is ahead of it), so that no other client shares it. Even,
/// where a client's fingerprint is odd.
pub(crate) fn unshared_settings() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed) << 1
}

impl Prepared {
    /// The statement `parse` prepares, for a client whose settings have `settings` as their
    /// fingerprint. Clients share a server-side statement only when their settings match too:
    /// the same text means another table under another `search_path`, and the server
    /// re-analyses a statement used under a changed `search_path`, failing it with 0A000
    /// ("cached plan must not change result type") when its columns differ.
    /// `epoch` is the [`PlanEpoch`] now.
    pub(crate) fn new(
        parse: &ParseRef<'_>,
        class: Arc<Classification>,
        settings: u64,
        epoch: u64,
    ) -> Prepared {
        Prepared::build(parse.query, parse.param_types.raw(), class, settings, epoch)
    }

    fn build(
        query: &[u8],
        types: &[u8],
        class: Arc<Classification>,
        settings: u64,
        epoch: u64,
    ) -> Prepared {
        let mut h = Xxh3::new();
        h.update(&(query.len() as u64).to_le_bytes());
        h.update(query);
        h.update(types);
        h.update(&settings.to_le_bytes());
        h.update(&epoch.to_le_bytes());
        let id = h.digest128();
        let mut name = [0u8; NAME_LEN];
        // Writing 35 bytes of ASCII into a 35-byte buffer cannot fail.
        let _ = write!(&mut name[..], "sg_{id:032x}");
        let mut frame = BytesMut::with_capacity(query.len() + NAME_LEN + 16);
        frontend::parse_raw_types(&name, query, types, &mut frame);
        // Frame layout: tag, length, name, NUL, query, NUL, parameter types.
        let start = 5 + NAME_LEN + 1;
        Prepared {
            id,
            name,
            parse: frame.freeze(),
            query: start..start + query.len(),
            class,
            settings,
            epoch,
            shape: None,
            shape_key: 0,
            stale: false,
        }
    }

    /// The same statement for a client whose settings are now `settings`, in plan epoch
    /// `epoch`. A server analyses a statement under the settings of the moment it is parsed:
    /// re-created after the client changed them, it is another statement, never to be shared
    /// with clients whose settings are those it was first prepared under.
    fn under(&self, settings: u64, epoch: u64) -> Prepared {
        let query = self.parse.get(self.query.clone()).unwrap_or_default();
        let types = self.parse.get(self.query.end + 1..).unwrap_or_default();
        Prepared {
            shape: self.shape.clone(),
            shape_key: self.shape_key,
            stale: self.stale,
            ..Prepared::build(query, types, self.class.clone(), settings, epoch)
        }
    }
}

/// The named statements one client has prepared.
#[derive(Debug, Default, Clone)]
pub(crate) struct ClientStatements {
    by_name: HashMap<Bytes, Prepared>,
    /// The Parse frame of the client's unnamed statement (empty: none), kept to re-create it
    /// on another server connection (see `Flight::restore_unnamed`).
    unnamed: Vec<u8>,
    /// Names this client's current unnamed statement among all clients' (0: none): the
    /// client's id in the high half, a count of its unnamed Parses in the low one.
    unnamed_token: u128,
}

/// Client ids for unnamed-statement tokens.
static NEXT_CLIENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl ClientStatements {
    /// The client parsed its unnamed statement with `frame`: its token, which the server
    /// connection now holds.
    pub(crate) fn parsed_unnamed(&mut self, frame: &[u8]) -> u128 {
        self.unnamed.clear();
        self.unnamed.extend_from_slice(frame);
        if self.unnamed_token >> 64 == 0 {
            let id = NEXT_CLIENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.unnamed_token = u128::from(id) << 64;
        }
        self.unnamed_token = (self.unnamed_token & !u128::from(u64::MAX))
            | u128::from((self.unnamed_token as u64).wrapping_add(1).max(1));
        self.unnamed_token
    }

    /// The client's unnamed statement is gone (a simple query, or its Close).
    pub(crate) fn forget_unnamed(&mut self) {
        self.unnamed.clear();
    }

    /// Whether a server connection whose unnamed statement is `owner`'s holds this client's.
    pub(crate) fn owns_unnamed(&self, owner: u128) -> bool {
        !self.unnamed.is_empty() && owner == self.unnamed_token
    }

    pub(crate) fn unnamed_parse(&self) -> Option<&[u8]> {
        (!self.unnamed.is_empty()).then_some(self.unnamed.as_slice())
    }

    /// Tracks the client's named statement `p`, analysed under `settings` in plan `epoch`.
    pub(crate) fn remember(
        &mut self,
        p: &ParseRef<'_>,
        class: Arc<Classification>,
        settings: u64,
        epoch: u64,
    ) {
        self.insert(p.name, Prepared::new(p, class, settings, epoch));
    }

    /// Whether the client has no named statement.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub(crate) fn unnamed_token(&self) -> u128 {
        self.unnamed_token
    }

    pub(crate) fn insert(&mut self, client_name: &[u8], prepared: Prepared) {
        self.by_name
            .insert(Bytes::copy_from_slice(client_name), prepared);
    }

    pub(crate) fn get(&self, client_name: &[u8]) -> Option<&Prepared> {
        self.by_name.get(client_name)
    }

    /// The statement behind `client_name`, to be run on a server holding the statements in
    /// `on_server`, for a client whose settings are now `settings()`, in plan epoch `epoch`:
    /// one the server lacks is re-created under those settings and named in that epoch.
    pub(crate) fn for_server(
        &mut self,
        client_name: &[u8],
        on_server: &std::collections::HashMap<u128, u64>,
        settings: impl FnOnce() -> u64,
        epoch: u64,
    ) -> Option<&Prepared> {
        let prep = self.by_name.get_mut(client_name)?;
        // Settings first: they almost always match, and then the server set is not hashed.
        let now = settings();
        if (now != prep.settings || epoch != prep.epoch) && !on_server.contains_key(&prep.id) {
            *prep = prep.under(now, epoch);
        }
        Some(prep)
    }

    /// The server described statement `id` right after the client's Parse of it: the shape its
    /// copies must keep.
    pub(crate) fn learn_shape(&mut self, id: u128, shape: &[u8]) {
        for prep in self.by_name.values_mut() {
            if prep.id == id && prep.shape.is_none() {
                prep.shape = Some(Bytes::copy_from_slice(shape));
                prep.shape_key = shape_key(shape);
            }
        }
    }

    /// The server described statement `id`, just re-created on its connection, as `shape`:
    /// the client's statements that expected another shape go stale. Returns whether any did.
    pub(crate) fn check_shape(&mut self, id: u128, shape: &[u8]) -> bool {
        let mut changed = false;
        for prep in self.by_name.values_mut() {
            if prep.id == id && prep.shape.as_deref().is_some_and(|s| !same_shape(s, shape)) {
                prep.stale = true;
                changed = true;
            }
        }
        changed
    }

    pub(crate) fn remove(&mut self, client_name: &[u8]) {
        self.by_name.remove(client_name);
    }

    pub(crate) fn clear(&mut self) {
        self.by_name.clear();
    }
}

#[cfg(test)]
mod shape_tests {
    use super::{same_shape, shape_key, shape_of};

    /// A RowDescription body: (name, table OID, column number, type OID, type modifier).
    fn row_description(columns: &[(&str, u32, i16, u32, i32)], format: i16) -> Vec<u8> {
        let mut b = (columns.len() as i16).to_be_bytes().to_vec();
        for (name, table, column, oid, typmod) in columns {
            b.extend_from_slice(name.as_bytes());
            b.push(0);
            b.extend_from_slice(&table.to_be_bytes());
            b.extend_from_slice(&column.to_be_bytes());
            b.extend_from_slice(&oid.to_be_bytes());
            b.extend_from_slice(&(-1i16).to_be_bytes());
            b.extend_from_slice(&typmod.to_be_bytes());
            b.extend_from_slice(&format.to_be_bytes());
        }
        shape_of(b'T', &b).to_vec()
    }

    #[test]
    fn shapes_compare_names_types_and_modifiers_only() {
        let before = row_description(&[("id", 7, 1, 23, -1), ("a", 7, 2, 25, -1)], 0);
        // Another source column (dropped and added again) and format: the same result type.
        let readded = row_description(&[("id", 7, 1, 23, -1), ("a", 7, 4, 25, -1)], 1);
        assert!(same_shape(&before, &readded));
        for changed in [
            row_description(&[("id", 7, 1, 23, -1), ("c", 7, 4, 25, -1)], 0),
            row_description(&[("id", 7, 1, 23, -1), ("a", 7, 2, 1043, -1)], 0),
            row_description(&[("id", 7, 1, 23, -1), ("a", 7, 2, 25, 14)], 0),
            row_description(&[("id", 7, 1, 23, -1)], 0),
            shape_of(b'n', b"").to_vec(),
        ] {
            assert!(!same_shape(&before, &changed), "{changed:?}");
            assert_ne!(shape_key(&before), shape_key(&changed), "{changed:?}");
        }
        assert_eq!(shape_key(&before), shape_key(&readded));
        assert_ne!(shape_key(&shape_of(b'n', b"")), 0);
        assert!(same_shape(&shape_of(b'n', b""), &shape_of(b'n', b"")));
        // A truncated description is never the same.
        assert!(!same_shape(&before, &before[..before.len() - 3]));
    }
}
