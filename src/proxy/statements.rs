//! Named prepared statements in transaction mode: a client's names map to internal
//! names derived from the SQL text and parameter types, so any server connection can
//! run them and identical statements of different clients share one server-side Parse.

use std::collections::HashMap;
use std::io::Write;
use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use shardgate_sql::Classification;
use shardgate_wire::{frontend, ParseRef};
use xxhash_rust::xxh3::Xxh3;

/// Length of an internal name: "sg_" + 32 hex digits.
const NAME_LEN: usize = 35;

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
}

impl Prepared {
    /// The statement `parse` prepares, for a client whose settings have `settings` as their
    /// fingerprint. Clients share a server-side statement only when their settings match too:
    /// the same text means another table under another `search_path`, and the server
    /// re-analyses a statement used under a changed `search_path`, failing it with 0A000
    /// ("cached plan must not change result type") when its columns differ.
    pub(crate) fn new(parse: &ParseRef<'_>, class: Arc<Classification>, settings: u64) -> Prepared {
        let mut h = Xxh3::new();
        h.update(&(parse.query.len() as u64).to_le_bytes());
        h.update(parse.query);
        h.update(parse.param_types.raw());
        h.update(&settings.to_le_bytes());
        let id = h.digest128();
        let mut name = [0u8; NAME_LEN];
        // Writing 35 bytes of ASCII into a 35-byte buffer cannot fail.
        let _ = write!(&mut name[..], "sg_{id:032x}");
        let mut frame = BytesMut::with_capacity(parse.query.len() + NAME_LEN + 16);
        frontend::parse_raw_types(&name, parse.query, parse.param_types.raw(), &mut frame);
        // Frame layout: tag, length, name, NUL, query, NUL, parameter types.
        let start = 5 + NAME_LEN + 1;
        Prepared {
            id,
            name,
            parse: frame.freeze(),
            query: start..start + parse.query.len(),
            class,
        }
    }
}

/// The named statements one client has prepared.
#[derive(Debug, Default, Clone)]
pub(crate) struct ClientStatements {
    by_name: HashMap<Bytes, Prepared>,
}

impl ClientStatements {
    pub(crate) fn insert(&mut self, client_name: &[u8], prepared: Prepared) {
        self.by_name
            .insert(Bytes::copy_from_slice(client_name), prepared);
    }

    pub(crate) fn get(&self, client_name: &[u8]) -> Option<&Prepared> {
        self.by_name.get(client_name)
    }

    pub(crate) fn remove(&mut self, client_name: &[u8]) {
        self.by_name.remove(client_name);
    }

    pub(crate) fn clear(&mut self) {
        self.by_name.clear();
    }
}
