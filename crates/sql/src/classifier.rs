//! The read/write classifier the router asks about every Query message: splits the message with
//! the crate's lexer, classifies each statement, combines the answers (any write makes the whole
//! message a write), and caches the result so that a repeated query costs one lexer pass, one
//! hash and one map lookup. It fails closed: whatever it cannot prove read-only is a write.
//!
//! The cache key is the text with its number and single-quoted string literals blanked out:
//! clients that inline values (pgbench's simple mode, ORMs without bind parameters) send a new
//! text per query, and a literal's value never decides whether a statement writes. Comments
//! (hints), identifiers, keywords and dollar-quoted bodies (DO blocks are scanned) stay as they
//! are, and SET/RESET/SHOW keep their exact text because shardgate's own settings carry their
//! value in a literal.

use crate::cache_key::cache_key;
use crate::classification::{find_hint, Classification, TxnControl, WhyWrite};
use crate::guards::WriteFunctions;
use crate::lexer::{for_each_statement, LexOptions};
use crate::statement::{classify_statement, StatementFacts};
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

/// Texts longer than this are classified every time instead of cached, so the cache's memory is
/// bounded by `capacity * MAX_CACHED_LEN` rather than by what clients send.
const MAX_CACHED_LEN: usize = 64 * 1024;

/// One cache: normalized SQL (see the module doc) to its classification, and its counts.
/// Aligned to its own cache lines, so threads using neighbouring caches do not share one.
#[repr(align(128))]
struct Cache(Mutex<CacheState>);

struct CacheState {
    lru: LruCache<Box<[u8]>, Arc<Classification>>,
    hits: u64,
    misses: u64,
}

thread_local! {
    /// Scratch space for cache keys, so a hit allocates nothing.
    static KEY: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Which cache this thread uses in a classifier built with several (see
    /// [`bind_thread_cache`]).
    static THREAD_SLOT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Makes the calling thread use cache `slot` (modulo their number) of every classifier built
/// with several. shardgate's worker thread `i` binds slot `i`, as it binds pool lane `i`, so no
/// two workers share a cache; threads that never bind use cache 0.
pub fn bind_thread_cache(slot: usize) {
    THREAD_SLOT.with(|s| s.set(slot));
}

/// Classifies SQL text as read-only or write, with bounded LRU caches keyed by the text up to
/// its literals.
pub struct Classifier {
    /// Empty when built with capacity 0. With several, each thread uses the one it is bound to
    /// ([`bind_thread_cache`]), so worker threads on different cores do not take the same lock
    /// and move entries in the same list on every query.
    caches: Box<[Cache]>,
    functions: WriteFunctions,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (hits, misses) = self.cache_stats();
        f.debug_struct("Classifier")
            .field("functions", &self.functions)
            .field("hits", &hits)
            .field("misses", &misses)
            .finish_non_exhaustive()
    }
}

impl Classifier {
    /// A classifier caching up to `cache_capacity` distinct texts (0 disables the cache).
    /// `write_functions` adds function names, case-insensitive and possibly schema-qualified, to
    /// the built-in list of functions that make a query a write.
    pub fn new(cache_capacity: usize, write_functions: &[String]) -> Classifier {
        Classifier::with_caches(cache_capacity, 1, write_functions)
    }

    /// [`Classifier::new`] with `caches` caches of `cache_capacity` texts each (at least one),
    /// for `caches` threads classifying at once, each bound to its own with
    /// [`bind_thread_cache`]: one per worker thread.
    pub fn with_caches(
        cache_capacity: usize,
        caches: usize,
        write_functions: &[String],
    ) -> Classifier {
        let caches = match NonZeroUsize::new(cache_capacity) {
            None => Box::default(),
            Some(n) => (0..caches.max(1))
                .map(|_| {
                    Cache(Mutex::new(CacheState {
                        lru: LruCache::new(n),
                        hits: 0,
                        misses: 0,
                    }))
                })
                .collect(),
        };
        Classifier {
            caches,
            functions: WriteFunctions::new(write_functions),
        }
    }

    /// The calling thread's cache, if caching is on.
    fn cache(&self) -> Option<&Cache> {
        match self.caches.len() {
            0 => None,
            1 => self.caches.first(),
            n => self.caches.get(THREAD_SLOT.with(std::cell::Cell::get) % n),
        }
    }

    /// The classification of `sql`, from the cache when the same text up to literal values
    /// was seen recently.
    pub fn classify(&self, sql: &[u8]) -> Arc<Classification> {
        let Some(cache) = self.cache() else {
            return Arc::new(self.classify_uncached(sql));
        };
        if sql.len() > MAX_CACHED_LEN {
            lock(&cache.0).misses += 1;
            return Arc::new(self.classify_uncached(sql));
        }
        KEY.with(|key| {
            let mut key = key.borrow_mut();
            cache_key(sql, &mut key);
            {
                let mut state = lock(&cache.0);
                if let Some(hit) = state.lru.get(key.as_slice()).cloned() {
                    state.hits += 1;
                    return hit;
                }
                state.misses += 1;
            }
            // Classify outside the lock: parsing takes microseconds and other sessions' hits
            // must not wait for it. Two sessions may race to classify the same text; both get
            // the same answer.
            let fresh = Arc::new(self.classify_uncached(sql));
            lock(&cache.0)
                .lru
                .put(key.as_slice().into(), Arc::clone(&fresh));
            fresh
        })
    }

    /// Classifies `sql` without touching the cache.
    pub fn classify_uncached(&self, sql: &[u8]) -> Classification {
        let mut out = Classification {
            write: None,
            txn: Vec::new(),
            hint: find_hint(sql),
            sticky_primary: false,
            pins_session: None,
            parsed: true,
            statements: 0,
            shardgate: None,
        };
        let mut pending_copy_stdin = false;
        let mut shardgate_seen = false;
        for_each_statement(sql, LexOptions::default(), |range| {
            let facts = classify_statement(sql.get(range).unwrap_or_default(), &self.functions);
            out.statements += 1;
            absorb(
                &mut out,
                facts,
                &mut pending_copy_stdin,
                &mut shardgate_seen,
            );
        });
        if out.statements > 1 && shardgate_seen {
            // shardgate's commands are answered by the proxy and must come alone; mixed with
            // other statements the message is refused the shortcut and goes to the primary.
            out.shardgate = None;
            out.write.get_or_insert(WhyWrite::Other(
                "shardgate command in a multi-statement message",
            ));
        }
        out
    }

    /// Cache hits and misses so far, over all caches.
    pub fn cache_stats(&self) -> (u64, u64) {
        self.caches.iter().fold((0, 0), |(hits, misses), cache| {
            let state = lock(&cache.0);
            (hits + state.hits, misses + state.misses)
        })
    }
}

/// A poisoned lock only means another thread panicked mid-update of an LRU; the map is still a
/// valid map, and a proxy must not stop routing because of it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Folds one statement's facts into the message's classification.
fn absorb(
    out: &mut Classification,
    facts: StatementFacts,
    pending_copy_stdin: &mut bool,
    shardgate_seen: &mut bool,
) {
    if *pending_copy_stdin {
        // Any statement after `COPY ... FROM STDIN` in the same message: the server would
        // expect copy data first, which the proxy cannot relay mid-message.
        out.write = Some(WhyWrite::CopyFromStdinThenMore);
    }
    *pending_copy_stdin = facts.copy_from_stdin;
    if out.write.is_none() {
        out.write = facts.write;
    }
    if let Some(t) = facts.txn {
        out.txn.push(t);
        if facts.chained {
            // The chained transaction keeps the old one's modes, which this text does not show;
            // read-write is the answer that cannot send a write to a replica.
            out.txn.push(TxnControl::Begin { read_only: false });
        }
    }
    out.sticky_primary |= facts.sticky;
    if out.pins_session.is_none() {
        out.pins_session = facts.pins;
    }
    out.parsed &= facts.parsed;
    if let Some(cmd) = facts.shardgate {
        *shardgate_seen = true;
        out.shardgate = Some(cmd);
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;

    fn key(sql: &str) -> Vec<u8> {
        let mut out = Vec::new();
        cache_key(sql.as_bytes(), &mut out);
        out
    }

    #[test]
    fn literals_are_blanked_and_the_rest_kept() {
        assert_eq!(
            key("SELECT a FROM t WHERE id = 42"),
            key("SELECT a FROM t WHERE id = 7")
        );
        assert_eq!(
            key("SELECT 'x' /* shardgate: replica */"),
            key("SELECT 'yy' /* shardgate: replica */")
        );
        assert_ne!(
            key("SELECT 1 /* shardgate: replica */"),
            key("SELECT 1 /* shardgate: primary */")
        );
        assert_ne!(key("SELECT nextval('a')"), key("SELECT currval('a')"));
        assert_ne!(
            key("DO $$ CREATE TEMP TABLE x() $$"),
            key("DO $$ SELECT 1 $$")
        );
        assert_ne!(
            key("SET shardgate.target = 'primary'"),
            key("SET shardgate.target = 'replica'")
        );
    }

    #[test]
    fn cached_answers_follow_the_shape_not_the_values() {
        let c = Classifier::new(16, &[]);
        assert!(c.classify(b"SELECT * FROM t WHERE id = 1").is_read());
        assert!(c.classify(b"SELECT * FROM t WHERE id = 2").is_read());
        assert_eq!(c.cache_stats(), (1, 1));
        assert!(!c
            .classify(b"SELECT * FROM t WHERE id = 2 FOR UPDATE")
            .is_read());
        let s = c.classify(b"SET shardgate.target = 'replica'");
        let t = c.classify(b"SET shardgate.target = 'primary'");
        assert_ne!(s.shardgate, t.shardgate);
    }
}
