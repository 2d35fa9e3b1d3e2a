//! Unit tests for RowDescription and DataRow.
#![allow(clippy::indexing_slicing, clippy::expect_used)]

use super::*;
use crate::frame::split_frame;

fn field(name: &str) -> FieldDescription {
    FieldDescription {
        name: name.into(),
        table_oid: 16_384,
        column_attr: 1,
        type_oid: 23,
        type_len: 4,
        type_modifier: -1,
        format: 0,
    }
}

fn body_of(enc: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut buf = BytesMut::new();
    enc(&mut buf);
    split_frame(&mut buf, 1 << 20)
        .ok()
        .flatten()
        .expect("one frame")
        .body
}

#[test]
fn row_description_round_trip() {
    let rd = RowDescription {
        fields: vec![field("id"), field("name")],
    };
    let body = body_of(|d| rd.encode(d));
    assert_eq!(RowDescription::decode(&body).ok(), Some(rd));
    assert!(RowDescription::validate(&body).is_ok());
}

#[test]
fn row_description_malformed() {
    let good = body_of(|d| {
        RowDescription {
            fields: vec![field("a")],
        }
        .encode(d)
    });
    assert!(
        RowDescription::decode(&good[..good.len() - 1]).is_err(),
        "truncated"
    );
    let mut long = good.to_vec();
    long.push(0);
    assert!(RowDescription::decode(&long).is_err(), "trailing");
    assert!(
        RowDescription::decode(b"\xff\xff").is_err(),
        "65535 fields, none present"
    );
    let mut bad_name = good.to_vec();
    bad_name[2] = 0xff;
    assert!(RowDescription::decode(&bad_name).is_err(), "non-UTF-8 name");
    assert!(
        RowDescription::validate(&bad_name).is_ok(),
        "layout is still fine"
    );
}

#[test]
fn data_row_round_trip_is_zero_copy() {
    let values: [Option<&[u8]>; 3] = [Some(b"1"), None, Some(b"")];
    let body = body_of(|d| encode_data_row(&values, d));
    let row = DataRow::decode(&body).expect("valid row");
    assert_eq!(row.values.len(), 3);
    let first = row.values[0].as_ref().expect("not null");
    assert_eq!(
        first.as_ptr(),
        body[6..].as_ptr(),
        "value shares the body's memory"
    );
    assert_eq!(body_of(|d| row.encode(d)), body);

    let view = DataRowRef::decode(&body).expect("valid row");
    assert_eq!((view.len(), view.is_empty()), (3, false));
    assert_eq!(view.iter().collect::<Vec<_>>(), values.to_vec());
}

#[test]
fn data_row_malformed() {
    let cases: &[&[u8]] = &[
        b"",                         // no count
        b"\0\x01",                   // value missing
        b"\0\x01\0\0\0\x05abc",      // value cut short
        b"\0\x01\xff\xff\xff\xfe",   // length -2
        b"\0\x01\xff\xff\xff\xffx",  // trailing byte
        b"\xff\xff\0\0\0\0",         // 65535 columns declared
        b"\0\x01\x7f\xff\xff\xff\0", // huge length
    ];
    for case in cases {
        assert!(DataRowRef::decode(case).is_err(), "{case:?}");
        assert!(DataRow::decode(&Bytes::copy_from_slice(case)).is_err());
    }
    assert_eq!(
        DataRowRef::decode(b"\0\0").map(|r| r.is_empty()).ok(),
        Some(true)
    );
}
