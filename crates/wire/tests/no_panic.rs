//! Property tests: no decoder panics on arbitrary input, whether random bytes or valid messages
//! with bytes flipped or cut off; whatever decodes re-encodes faithfully; and no framing function
//! accepts a frame over its cap.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::ops::ControlFlow;

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use shardgate_wire::{
    decode_password_message, decode_sasl_initial_response, frontend, parse_startup, peek_header,
    scan_frames, split_frame, BackendMessage, DataRow, DataRowRef, FrontendRef, RowDescription,
    WireError,
};

/// Runs every body decoder on `body` as if it carried `tag`, walking whatever views succeed.
fn decode_everything(tag: u8, body: &[u8]) {
    if let Ok(msg) = FrontendRef::decode(tag, body) {
        if let FrontendRef::Bind(b) = msg {
            b.param_formats().for_each(drop);
            b.params().for_each(drop);
            b.result_formats().for_each(drop);
        }
        if let FrontendRef::Parse(p) = msg {
            p.param_types.iter().for_each(drop);
            let _ = p.param_types.get(p.param_types.len());
        }
        // Whatever decodes re-encodes losslessly (what the proxy relies on when it rewrites).
        let mut out = BytesMut::new();
        msg.encode(&mut out);
        assert_eq!(&out[5..], body);
    }
    if let Ok(msg) = BackendMessage::decode(tag, body) {
        let mut out = BytesMut::new();
        msg.encode(&mut out);
        let again = split_frame(&mut out, usize::MAX).ok().flatten();
        let again = again.and_then(|f| BackendMessage::decode(f.tag, &f.body).ok());
        assert_eq!(again, Some(msg));
    }
    let _ = decode_sasl_initial_response(body);
    let _ = decode_password_message(body);
    let _ = RowDescription::decode(body);
    if let Ok(row) = DataRowRef::decode(body) {
        row.iter().for_each(drop);
    }
    let _ = DataRow::decode(&Bytes::copy_from_slice(body));
}

/// Structured seeds to mutate, so mutations reach deep into real layouts.
fn seeds() -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut push = |enc: &dyn Fn(&mut BytesMut)| {
        let mut b = BytesMut::new();
        enc(&mut b);
        out.push((b[0], b[5..].to_vec()));
    };
    push(&|d| frontend::bind(b"p", b"s", &[1, 0], &[Some(b"12"), None], &[1], d));
    push(&|d| frontend::parse(b"s", b"select $1", &[23, 25], d));
    push(&|d| frontend::sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc", d));
    push(&|d| frontend::execute(b"p", 5, d));
    push(&|d| shardgate_wire::encode_data_row(&[Some(b"x"), None, Some(b"yz")], d));
    push(&|d| shardgate_wire::backend::auth_sasl(&["SCRAM-SHA-256"], d));
    push(&|d| {
        shardgate_wire::backend::error_response(
            &shardgate_wire::ErrorFields::new("ERROR", "42P01", "missing"),
            d,
        )
    });
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn body_decoders_never_panic(tag in any::<u8>(), body in vec(any::<u8>(), 0..128)) {
        decode_everything(tag, &body);
    }

    #[test]
    fn mutated_messages_never_panic(
        seed in any::<prop::sample::Index>(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        keep in any::<prop::sample::Index>(),
    ) {
        let seeds = seeds();
        let (tag, mut body) = seeds[seed.index(seeds.len())].clone();
        for (at, byte) in flips {
            let i = at.index(body.len());
            body[i] = byte;
        }
        body.truncate(keep.index(body.len() + 1));
        decode_everything(tag, &body);
    }

    #[test]
    fn startup_never_panics(bytes in vec(any::<u8>(), 0..64)) {
        let mut buf = BytesMut::from(&bytes[..]);
        let before = buf.len();
        match parse_startup(&mut buf) {
            Ok(None) | Err(_) => prop_assert_eq!(buf.len(), before),
            Ok(Some(_)) => prop_assert!(buf.len() < before),
        }
    }

    #[test]
    fn framing_never_panics_and_respects_the_cap(
        bytes in vec(any::<u8>(), 0..96),
        max_len in 0usize..64,
    ) {
        match peek_header(&bytes, max_len) {
            Ok(Some(h)) => prop_assert!(h.len >= 5 && h.len <= max_len),
            Ok(None) => prop_assert!(bytes.len() < 5),
            Err(WireError::TooLarge { len, max }) => prop_assert!(len > max),
            Err(_) => {}
        }
        let covered = scan_frames(&bytes, max_len, |h, body| {
            assert_eq!(body.len() + 5, h.len);
            ControlFlow::Continue(())
        });
        if let Ok(n) = covered {
            prop_assert!(n <= bytes.len());
        }
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(f)) = split_frame(&mut buf, max_len) {
            prop_assert!(f.body.len() + 5 <= max_len);
        }
    }
}
