//! Fuzzes startup packet parsing, the first thing an unauthenticated client reaches.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shardgate_wire::parse_startup;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(req)) = parse_startup(&mut buf) {
        let mut out = BytesMut::new();
        req.encode(&mut out);
        assert_eq!(
            parse_startup(&mut out).ok().flatten(),
            Some(req),
            "round trip"
        );
    }
});
