//! Unit tests for frontend decoding and the frontend encoders, including malformed bodies.
#![allow(clippy::indexing_slicing, clippy::expect_used)]

use bytes::BytesMut;

use super::*;
use crate::frame::split_frame;
use crate::DEFAULT_MAX_MESSAGE_LEN;

/// Encodes with `enc`, splits the frame back off and decodes it.
fn via_wire(enc: impl FnOnce(&mut BytesMut)) -> (u8, bytes::Bytes) {
    let mut buf = BytesMut::new();
    enc(&mut buf);
    let frame = split_frame(&mut buf, DEFAULT_MAX_MESSAGE_LEN)
        .ok()
        .flatten()
        .expect("one whole frame");
    assert!(buf.is_empty(), "encoder wrote exactly one frame");
    (frame.tag, frame.body)
}

fn decode(tag: u8, body: &[u8]) -> Result<FrontendRef<'_>> {
    FrontendRef::decode(tag, body)
}

#[test]
fn query() {
    let (t, b) = via_wire(|d| frontend::query(b"select 1", d));
    assert_eq!(
        decode(t, &b).ok(),
        Some(FrontendRef::Query { sql: b"select 1" })
    );
    assert!(decode(b'Q', b"select 1").is_err(), "missing NUL");
    assert!(decode(b'Q', b"select 1\0\0").is_err(), "trailing bytes");
}

#[test]
fn parse_with_types() {
    let (t, b) = via_wire(|d| frontend::parse(b"s1", b"select $1, $2", &[23, 0], d));
    let Ok(FrontendRef::Parse(p)) = decode(t, &b) else {
        panic!("not a Parse");
    };
    assert_eq!((p.name, p.query), (&b"s1"[..], &b"select $1, $2"[..]));
    assert_eq!(p.param_types.len(), 2);
    assert_eq!(p.param_types.iter().collect::<Vec<_>>(), vec![23, 0]);
    assert_eq!(
        (p.param_types.get(0), p.param_types.get(2)),
        (Some(23), None)
    );
    assert_eq!(p.param_types.get(usize::MAX), None);
    assert_eq!(p.param_types.raw(), &[0, 2, 0, 0, 0, 23, 0, 0, 0, 0]);

    // Re-encoding under another name keeps the types byte for byte.
    let (t2, b2) = via_wire(|d| frontend::parse_raw_types(b"x", p.query, p.param_types.raw(), d));
    let Ok(FrontendRef::Parse(p2)) = decode(t2, &b2) else {
        panic!("not a Parse");
    };
    assert_eq!((p2.name, p2.param_types), (&b"x"[..], p.param_types));
}

#[test]
fn parse_rejects_lying_counts() {
    assert!(
        decode(b'P', b"\0q\0\0\x02\0\0\0\x17").is_err(),
        "2 types, 1 present"
    );
    assert!(decode(b'P', b"\0q\0\0\0\0").is_err(), "trailing byte");
    assert!(decode(b'P', b"\0q\0\0").is_err(), "count cut short");
    assert!(decode(b'P', b"\0q").is_err(), "query without NUL");
}

#[test]
fn bind_round_trip() {
    let params: [Option<&[u8]>; 3] = [Some(b"42"), None, Some(b"")];
    let (t, b) = via_wire(|d| frontend::bind(b"p", b"s", &[1], &params, &[0, 1], d));
    let Ok(FrontendRef::Bind(bind)) = decode(t, &b) else {
        panic!("not a Bind");
    };
    assert_eq!((bind.portal, bind.statement), (&b"p"[..], &b"s"[..]));
    assert_eq!(bind.param_formats().collect::<Vec<_>>(), vec![1]);
    assert_eq!(bind.param_count(), 3);
    assert_eq!(bind.params().collect::<Vec<_>>(), params.to_vec());
    assert_eq!(bind.result_formats().collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(&b[4..], bind.rest());

    let (t2, b2) = via_wire(|d| frontend::bind_renamed(b"", b"renamed", bind.rest(), d));
    let Ok(FrontendRef::Bind(bind2)) = decode(t2, &b2) else {
        panic!("not a Bind");
    };
    assert_eq!(bind2.statement, b"renamed");
    assert_eq!(bind2.params().collect::<Vec<_>>(), params.to_vec());
}

#[test]
fn bind_huge_declared_count_is_an_error_not_an_allocation() {
    // 65535 parameters declared in a 16-byte body.
    let body = b"\0\0\0\0\xff\xff\0\0\0\x01x\0\0\0\0";
    assert!(decode(b'B', body).is_err());
    // A value length far beyond the body.
    let body = b"\0\0\0\0\0\x01\x3b\x9a\xca\x00x\0\0";
    assert!(decode(b'B', body).is_err());
}

#[test]
fn bind_rejects_malformed() {
    let cases: &[&[u8]] = &[
        b"\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0", // length -2
        b"\0\0\0\0\0\0\0\0x",                  // trailing byte
        b"\0\0\0\0\0\0",                       // result count missing
        b"\0\0\0\x02\0\0\0\0\0\0\0\0",         // 2 formats for 0 params
        b"p\0s",                               // statement name without NUL
    ];
    for case in cases {
        assert!(decode(b'B', case).is_err(), "{case:?}");
    }
    assert!(decode(b'B', b"\0\0\0\0\0\0\0\0").is_ok(), "minimal Bind");
}

#[test]
fn describe_execute_close() {
    let (t, b) = via_wire(|d| frontend::describe(b'S', b"s1", d));
    assert_eq!(
        decode(t, &b).ok(),
        Some(FrontendRef::Describe {
            kind: b'S',
            name: b"s1"
        })
    );
    let (t, b) = via_wire(|d| frontend::execute(b"", 100, d));
    assert_eq!(
        decode(t, &b).ok(),
        Some(FrontendRef::Execute {
            portal: b"",
            max_rows: 100
        })
    );
    let (t, b) = via_wire(|d| frontend::close(b'P', b"p", d));
    assert_eq!(
        decode(t, &b).ok(),
        Some(FrontendRef::Close {
            kind: b'P',
            name: b"p"
        })
    );

    assert!(decode(b'D', b"Xs1\0").is_err(), "bad kind");
    assert!(decode(b'D', b"").is_err(), "empty");
    assert!(decode(b'C', b"Ss1").is_err(), "missing NUL");
    assert!(decode(b'E', b"\0\0\0").is_err(), "max_rows cut short");
    assert!(decode(b'E', b"\0\0\0\0\0\0").is_err(), "trailing");
}

#[test]
fn bodiless_messages() {
    type Enc = fn(&mut BytesMut);
    let cases: [(Enc, FrontendRef<'static>); 4] = [
        (frontend::sync, FrontendRef::Sync),
        (frontend::flush, FrontendRef::Flush),
        (frontend::terminate, FrontendRef::Terminate),
        (frontend::copy_done, FrontendRef::CopyDone),
    ];
    for (enc, want) in cases {
        let (t, b) = via_wire(enc);
        assert_eq!(b.len(), 0);
        assert_eq!(decode(t, &b).ok(), Some(want));
        assert!(decode(t, b"x").is_err(), "{want:?} with a body");
    }
}

#[test]
fn copy_and_raw_messages() {
    let (t, b) = via_wire(|d| frontend::copy_data(b"1\t2\n", d));
    assert_eq!(decode(t, &b).ok(), Some(FrontendRef::CopyData(b"1\t2\n")));
    let (t, b) = via_wire(|d| frontend::copy_fail(b"abort", d));
    assert_eq!(
        decode(t, &b).ok(),
        Some(FrontendRef::CopyFail { message: b"abort" })
    );
    let (t, b) = via_wire(|d| frontend::function_call(b"\0\0\0\x01", d));
    assert_eq!(
        decode(t, &b).ok(),
        Some(FrontendRef::FunctionCall(b"\0\0\0\x01"))
    );
    assert!(matches!(
        decode(b'?', b""),
        Err(WireError::UnknownTag(b'?'))
    ));
}

#[test]
fn password_messages() {
    let (t, b) = via_wire(|d| frontend::password_message("md5abc", d));
    assert_eq!(decode(t, &b).ok(), Some(FrontendRef::Password(b"md5abc\0")));
    assert_eq!(decode_password_message(&b).ok(), Some("md5abc"));
    assert!(decode_password_message(b"secret").is_err(), "missing NUL");
    assert!(decode_password_message(b"a\0b\0").is_err(), "trailing");

    let (_, b) = via_wire(|d| frontend::sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=x", d));
    assert_eq!(
        decode_sasl_initial_response(&b).ok(),
        Some(("SCRAM-SHA-256", Some(&b"n,,n=,r=x"[..])))
    );
    assert_eq!(
        decode_sasl_initial_response(b"M\0\xff\xff\xff\xff").ok(),
        Some(("M", None))
    );
    assert!(
        decode_sasl_initial_response(b"M\0\0\0\0\x05abc").is_err(),
        "short data"
    );
    assert!(
        decode_sasl_initial_response(b"M\0\xff\xff\xff\xfe").is_err(),
        "length -2"
    );

    let (t, b) = via_wire(|d| frontend::sasl_response(b"c=biws", d));
    assert_eq!(decode(t, &b).ok(), Some(FrontendRef::Password(b"c=biws")));
}

#[test]
fn encode_matches_the_wire() {
    let mut buf = BytesMut::new();
    frontend::query(b"select 1", &mut buf);
    let frame = buf.clone().freeze();
    let (t, b) = via_wire(|d| d.extend_from_slice(&frame));
    let msg = decode(t, &b).expect("query");
    let mut again = BytesMut::new();
    msg.encode(&mut again);
    assert_eq!(again, frame);
    assert_eq!(msg.tag(), crate::tag::QUERY);
}
