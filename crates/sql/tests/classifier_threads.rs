//! The classifier's per-thread caches. Alone in its own test binary: threads take caches in
//! the order they first classify, process-wide, so no other test may classify meanwhile.

use shardgate_sql::Classifier;

#[test]
fn each_thread_keeps_its_own_cache_and_every_cache_answers_the_same() {
    let c = Classifier::with_caches(16, 2, &[]);
    // The first thread to classify takes cache 0. Both texts below are one key each: the
    // key blanks literals.
    assert!(!c.classify(b"INSERT INTO t VALUES (1)").is_read());
    assert_eq!(c.cache_stats(), (0, 1));
    // The next two threads take caches 1 and 0, in either order, and they run after the
    // first thread is done with cache 0: no two threads race on one cache.
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..3 {
                    assert!(!c.classify(b"INSERT INTO t VALUES (2)").is_read());
                    assert!(c.classify(b"SELECT 1").is_read());
                }
            });
        }
    });
    // Cache 0 missed the INSERT once (first thread) and the SELECT once; cache 1 missed each
    // once. A single shared cache would have missed two times in all.
    assert_eq!(c.cache_stats(), (9, 4));
    assert!(Classifier::with_caches(0, 4, &[])
        .classify(b"SELECT 1")
        .is_read());
}
