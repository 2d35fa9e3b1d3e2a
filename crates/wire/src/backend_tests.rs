//! Unit tests for backend decoding, the backend encoders and malformed backend bodies.
#![allow(clippy::indexing_slicing, clippy::expect_used)]

use super::*;
use crate::frame::split_frame;
use crate::rows::{encode_data_row, FieldDescription};

fn round_trip(msg: &BackendMessage) -> BackendMessage {
    let mut buf = BytesMut::new();
    msg.encode(&mut buf);
    let frame = split_frame(&mut buf, 1 << 20)
        .ok()
        .flatten()
        .expect("one frame");
    assert!(buf.is_empty());
    BackendMessage::decode(frame.tag, &frame.body).expect("decodes")
}

fn body(enc: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut buf = BytesMut::new();
    enc(&mut buf);
    split_frame(&mut buf, 1 << 20)
        .ok()
        .flatten()
        .expect("one frame")
        .body
}

#[test]
fn every_variant_round_trips() {
    let row_description = body(|d| {
        RowDescription {
            fields: vec![FieldDescription {
                name: "n".into(),
                table_oid: 0,
                column_attr: 0,
                type_oid: 25,
                type_len: -1,
                type_modifier: -1,
                format: 0,
            }],
        }
        .encode(d)
    });
    let data_row = body(|d| encode_data_row(&[Some(b"x"), None], d));
    let copy_response = Bytes::from_static(b"\0\0\x02\0\0\0\0");
    let msgs = vec![
        BackendMessage::Authentication(Authentication::Ok),
        BackendMessage::Authentication(Authentication::CleartextPassword),
        BackendMessage::Authentication(Authentication::Md5Password { salt: [1, 2, 3, 4] }),
        BackendMessage::Authentication(Authentication::Sasl {
            mechanisms: vec!["SCRAM-SHA-256".into(), "SCRAM-SHA-256-PLUS".into()],
        }),
        BackendMessage::Authentication(Authentication::SaslContinue(Bytes::from_static(b"r=x"))),
        BackendMessage::Authentication(Authentication::SaslFinal(Bytes::from_static(b"v=y"))),
        BackendMessage::Authentication(Authentication::Other(7)),
        BackendMessage::BackendKeyData {
            pid: 42,
            secret: -7,
        },
        BackendMessage::ParameterStatus {
            name: "TimeZone".into(),
            value: "UTC".into(),
        },
        BackendMessage::ReadyForQuery(b'T'),
        BackendMessage::ErrorResponse(ErrorFields::new("ERROR", "42601", "syntax error")),
        BackendMessage::NoticeResponse(ErrorFields::new("NOTICE", "00000", "hi").with(b'D', "d")),
        BackendMessage::RowDescription(row_description),
        BackendMessage::DataRow(data_row),
        BackendMessage::CommandComplete("SELECT 1".into()),
        BackendMessage::EmptyQueryResponse,
        BackendMessage::ParseComplete,
        BackendMessage::BindComplete,
        BackendMessage::CloseComplete,
        BackendMessage::NoData,
        BackendMessage::PortalSuspended,
        BackendMessage::ParameterDescription(vec![23, 25]),
        BackendMessage::CopyInResponse(copy_response.clone()),
        BackendMessage::CopyOutResponse(copy_response.clone()),
        BackendMessage::CopyBothResponse(copy_response),
        BackendMessage::CopyData(Bytes::from_static(b"a\tb\n")),
        BackendMessage::CopyDone,
        BackendMessage::NotificationResponse {
            pid: 1,
            channel: "ch".into(),
            payload: "p".into(),
        },
        BackendMessage::NegotiateProtocolVersion {
            newest_version: 0,
            unrecognized: vec!["_pq_.x".into()],
        },
    ];
    for msg in &msgs {
        assert_eq!(&round_trip(msg), msg);
    }
}

#[test]
fn synthesized_frames_are_byte_exact() {
    let mut b = BytesMut::new();
    backend::ready_for_query(b'I', &mut b);
    backend::auth_ok(&mut b);
    backend::parse_complete(&mut b);
    backend::command_complete("SET", &mut b);
    assert_eq!(
        &b[..],
        b"Z\0\0\0\x05IR\0\0\0\x08\0\0\0\x001\0\0\0\x04C\0\0\0\x08SET\0"
    );
    let mut b = BytesMut::new();
    backend::auth_sasl(&["SCRAM-SHA-256"], &mut b);
    assert_eq!(&b[..], b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0");
}

#[test]
fn malformed_bodies_are_errors() {
    let cases: &[(u8, &[u8])] = &[
        (b'R', b""),                           // no auth code
        (b'R', b"\0\0\0\0x"),                  // AuthenticationOk with data
        (b'R', b"\0\0\0\x05ab"),               // md5 salt cut short
        (b'R', b"\0\0\0\x0aSCRAM"),            // mechanism without NUL
        (b'R', b"\0\0\0\x0aSCRAM\0"),          // list without terminator
        (b'K', b"\0\0\0\x01"),                 // key cut short
        (b'K', b"\0\0\0\x01\0\0\0\x02\0"),     // trailing
        (b'S', b"name\0"),                     // value missing
        (b'Z', b""),                           // no status
        (b'Z', b"X"),                          // unknown status
        (b'Z', b"II"),                         // trailing
        (b'E', b"Mx\0"),                       // no terminator
        (b'T', b"\0\x01a\0"),                  // field cut short
        (b'D', b"\0\x01\0\0\0\x09x"),          // value cut short
        (b'C', b"SELECT 1"),                   // no NUL
        (b'1', b"x"),                          // body on a bodiless message
        (b't', b"\0\x02\0\0\0\x17"),           // one OID of two
        (b'G', b"\0\0\x02\0\0"),               // one format of two
        (b'A', b"\0\0\0\x01ch\0"),             // payload missing
        (b'v', b"\0\0\0\0\xff\xff\xff\xff"),   // negative count
        (b'v', b"\0\0\0\0\x7f\xff\xff\xff\0"), // huge count
        (b'S', b"\xff\0v\0"),                  // invalid UTF-8
    ];
    for (tag, body) in cases {
        assert!(
            matches!(
                BackendMessage::decode(*tag, body),
                Err(WireError::Malformed { .. })
            ),
            "{} {body:?}",
            *tag as char
        );
    }
    assert!(matches!(
        BackendMessage::decode(b'V', b""),
        Err(WireError::UnknownTag(b'V'))
    ));
}
