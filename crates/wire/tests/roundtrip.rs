//! Property tests: every message the encoders can produce survives encode -> split_frame -> decode
//! unchanged, for backend messages, frontend messages and startup packets, and framing is
//! independent of how the byte stream is chunked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::ops::ControlFlow;

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use shardgate_wire::{
    decode_password_message, decode_sasl_initial_response, encode_data_row, frontend,
    parse_startup, scan_frames, split_frame, Authentication, BackendMessage, ErrorFields,
    FieldDescription, FrontendRef, RowDescription, StartupRequest, DEFAULT_MAX_MESSAGE_LEN,
};

/// Bytes without NUL, as any C-string field must be.
fn cbytes() -> impl Strategy<Value = Vec<u8>> {
    vec(1u8..=255, 0..24)
}

fn cstring() -> impl Strategy<Value = String> {
    "[^\0]{0,16}"
}

fn nonempty_cstring() -> impl Strategy<Value = String> {
    "[^\0]{1,16}"
}

fn any_bytes() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn split_one(buf: &mut BytesMut) -> (u8, Bytes) {
    let frame = split_frame(buf, DEFAULT_MAX_MESSAGE_LEN)
        .unwrap()
        .expect("whole frame");
    assert!(buf.is_empty(), "exactly one frame");
    (frame.tag, frame.body)
}

fn body_of(enc: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut buf = BytesMut::new();
    enc(&mut buf);
    split_one(&mut buf).1
}

fn field() -> impl Strategy<Value = FieldDescription> {
    (
        cstring(),
        any::<u32>(),
        any::<i16>(),
        any::<u32>(),
        any::<i16>(),
        any::<i32>(),
        0i16..=1,
    )
        .prop_map(
            |(name, table_oid, column_attr, type_oid, type_len, type_modifier, format)| {
                FieldDescription {
                    name,
                    table_oid,
                    column_attr,
                    type_oid,
                    type_len,
                    type_modifier,
                    format,
                }
            },
        )
}

fn error_fields() -> impl Strategy<Value = ErrorFields> {
    vec((1u8..=255, cstring()), 0..6).prop_map(|fields| ErrorFields { fields })
}

fn authentication() -> impl Strategy<Value = Authentication> {
    prop_oneof![
        Just(Authentication::Ok),
        Just(Authentication::CleartextPassword),
        any::<[u8; 4]>().prop_map(|salt| Authentication::Md5Password { salt }),
        vec(nonempty_cstring(), 0..4).prop_map(|mechanisms| Authentication::Sasl { mechanisms }),
        any_bytes().prop_map(Authentication::SaslContinue),
        any_bytes().prop_map(Authentication::SaslFinal),
        any::<i32>()
            .prop_filter("named codes have their own variants", |c| {
                ![0, 3, 5, 10, 11, 12].contains(c)
            })
            .prop_map(Authentication::Other),
    ]
}

fn copy_response() -> impl Strategy<Value = Bytes> {
    (any::<u8>(), vec(any::<i16>(), 0..8)).prop_map(|(overall, formats)| {
        let mut b = vec![overall];
        b.extend_from_slice(&(formats.len() as u16).to_be_bytes());
        formats
            .iter()
            .for_each(|f| b.extend_from_slice(&f.to_be_bytes()));
        Bytes::from(b)
    })
}

fn backend_message() -> impl Strategy<Value = BackendMessage> {
    use BackendMessage as M;
    prop_oneof![
        authentication().prop_map(M::Authentication),
        any::<(i32, i32)>().prop_map(|(pid, secret)| M::BackendKeyData { pid, secret }),
        (cstring(), cstring()).prop_map(|(name, value)| M::ParameterStatus { name, value }),
        prop::sample::select(vec![b'I', b'T', b'E']).prop_map(M::ReadyForQuery),
        error_fields().prop_map(M::ErrorResponse),
        error_fields().prop_map(M::NoticeResponse),
        vec(field(), 0..4).prop_map(|fields| {
            M::RowDescription(body_of(|d| RowDescription { fields }.encode(d)))
        }),
        vec(prop::option::of(vec(any::<u8>(), 0..16)), 0..6).prop_map(|values| {
            let refs: Vec<Option<&[u8]>> = values.iter().map(|v| v.as_deref()).collect();
            M::DataRow(body_of(|d| encode_data_row(&refs, d)))
        }),
        cstring().prop_map(M::CommandComplete),
        Just(M::EmptyQueryResponse),
        Just(M::ParseComplete),
        Just(M::BindComplete),
        Just(M::CloseComplete),
        Just(M::NoData),
        Just(M::PortalSuspended),
        vec(any::<u32>(), 0..8).prop_map(M::ParameterDescription),
        copy_response().prop_map(M::CopyInResponse),
        copy_response().prop_map(M::CopyOutResponse),
        copy_response().prop_map(M::CopyBothResponse),
        any_bytes().prop_map(M::CopyData),
        Just(M::CopyDone),
        (any::<i32>(), cstring(), cstring()).prop_map(|(pid, channel, payload)| {
            M::NotificationResponse {
                pid,
                channel,
                payload,
            }
        }),
        (any::<i32>(), vec(cstring(), 0..4)).prop_map(|(newest_version, unrecognized)| {
            M::NegotiateProtocolVersion {
                newest_version,
                unrecognized,
            }
        }),
    ]
}

/// An owned frontend message, written with the `frontend` encoders.
#[derive(Debug, Clone)]
enum Front {
    Query(Vec<u8>),
    Parse(Vec<u8>, Vec<u8>, Vec<u32>),
    Bind(Vec<u8>, Vec<u8>, Vec<i16>, Vec<Option<Vec<u8>>>, Vec<i16>),
    Describe(u8, Vec<u8>),
    Execute(Vec<u8>, i32),
    Close(u8, Vec<u8>),
    Sync,
    Flush,
    Terminate,
    CopyData(Vec<u8>),
    CopyDone,
    CopyFail(Vec<u8>),
    SaslInitial(String, Vec<u8>),
    PasswordMessage(String),
    FunctionCall(Vec<u8>),
}

fn bind() -> impl Strategy<Value = Front> {
    vec(prop::option::of(vec(any::<u8>(), 0..16)), 0..6).prop_flat_map(|params| {
        let n = params.len();
        // PostgreSQL accepts no formats, one for all, or exactly one per parameter.
        let formats =
            prop_oneof![Just(0), Just(1), Just(n)].prop_flat_map(|k| vec(any::<i16>(), k));
        (
            cbytes(),
            cbytes(),
            formats,
            Just(params),
            vec(any::<i16>(), 0..4),
        )
            .prop_map(|(p, s, f, v, r)| Front::Bind(p, s, f, v, r))
    })
}

fn front() -> impl Strategy<Value = Front> {
    let kind = || prop::sample::select(vec![b'S', b'P']);
    prop_oneof![
        cbytes().prop_map(Front::Query),
        (cbytes(), cbytes(), vec(any::<u32>(), 0..8)).prop_map(|(n, q, t)| Front::Parse(n, q, t)),
        bind(),
        (kind(), cbytes()).prop_map(|(k, n)| Front::Describe(k, n)),
        (cbytes(), any::<i32>()).prop_map(|(p, m)| Front::Execute(p, m)),
        (kind(), cbytes()).prop_map(|(k, n)| Front::Close(k, n)),
        Just(Front::Sync),
        Just(Front::Flush),
        Just(Front::Terminate),
        vec(any::<u8>(), 0..64).prop_map(Front::CopyData),
        Just(Front::CopyDone),
        cbytes().prop_map(Front::CopyFail),
        (cstring(), vec(any::<u8>(), 0..32)).prop_map(|(m, d)| Front::SaslInitial(m, d)),
        cstring().prop_map(Front::PasswordMessage),
        vec(any::<u8>(), 0..32).prop_map(Front::FunctionCall),
    ]
}

fn encode_front(msg: &Front, dst: &mut BytesMut) {
    match msg {
        Front::Query(sql) => frontend::query(sql, dst),
        Front::Parse(n, q, t) => frontend::parse(n, q, t, dst),
        Front::Bind(p, s, f, v, r) => {
            let refs: Vec<Option<&[u8]>> = v.iter().map(|v| v.as_deref()).collect();
            frontend::bind(p, s, f, &refs, r, dst);
        }
        Front::Describe(k, n) => frontend::describe(*k, n, dst),
        Front::Execute(p, m) => frontend::execute(p, *m, dst),
        Front::Close(k, n) => frontend::close(*k, n, dst),
        Front::Sync => frontend::sync(dst),
        Front::Flush => frontend::flush(dst),
        Front::Terminate => frontend::terminate(dst),
        Front::CopyData(d) => frontend::copy_data(d, dst),
        Front::CopyDone => frontend::copy_done(dst),
        Front::CopyFail(m) => frontend::copy_fail(m, dst),
        Front::SaslInitial(m, d) => frontend::sasl_initial_response(m, d, dst),
        Front::PasswordMessage(p) => frontend::password_message(p, dst),
        Front::FunctionCall(b) => frontend::function_call(b, dst),
    }
}

/// Checks that `got` decodes back to exactly what `msg` encoded.
fn assert_same(msg: &Front, got: FrontendRef<'_>) {
    match (msg, got) {
        (Front::Query(sql), FrontendRef::Query { sql: s }) => assert_eq!(s, &sql[..]),
        (Front::Parse(n, q, t), FrontendRef::Parse(p)) => {
            assert_eq!((p.name, p.query), (&n[..], &q[..]));
            assert_eq!(p.param_types.iter().collect::<Vec<_>>(), *t);
            assert_eq!(p.param_types.len(), t.len());
        }
        (Front::Bind(p, s, f, v, r), FrontendRef::Bind(b)) => {
            assert_eq!((b.portal, b.statement), (&p[..], &s[..]));
            assert_eq!(b.param_formats().collect::<Vec<_>>(), *f);
            let params: Vec<Option<Vec<u8>>> = b.params().map(|p| p.map(<[u8]>::to_vec)).collect();
            assert_eq!(&params, v);
            assert_eq!(b.param_count(), v.len());
            assert_eq!(b.result_formats().collect::<Vec<_>>(), *r);
        }
        (Front::Describe(k, n), FrontendRef::Describe { kind, name }) => {
            assert_eq!((kind, name), (*k, &n[..]));
        }
        (Front::Execute(p, m), FrontendRef::Execute { portal, max_rows }) => {
            assert_eq!((portal, max_rows), (&p[..], *m));
        }
        (Front::Close(k, n), FrontendRef::Close { kind, name }) => {
            assert_eq!((kind, name), (*k, &n[..]));
        }
        (Front::Sync, FrontendRef::Sync)
        | (Front::Flush, FrontendRef::Flush)
        | (Front::Terminate, FrontendRef::Terminate)
        | (Front::CopyDone, FrontendRef::CopyDone) => {}
        (Front::CopyData(d), FrontendRef::CopyData(g)) => assert_eq!(g, &d[..]),
        (Front::CopyFail(m), FrontendRef::CopyFail { message }) => assert_eq!(message, &m[..]),
        (Front::SaslInitial(m, d), FrontendRef::Password(body)) => {
            let (mech, data) = decode_sasl_initial_response(body).unwrap();
            assert_eq!((mech, data), (m.as_str(), Some(&d[..])));
        }
        (Front::PasswordMessage(p), FrontendRef::Password(body)) => {
            assert_eq!(decode_password_message(body).unwrap(), p);
        }
        (Front::FunctionCall(b), FrontendRef::FunctionCall(g)) => assert_eq!(g, &b[..]),
        (msg, got) => panic!("{msg:?} decoded as {got:?}"),
    }
}

fn startup_request() -> impl Strategy<Value = StartupRequest> {
    prop_oneof![
        (any::<u16>(), vec((nonempty_cstring(), cstring()), 0..5))
            .prop_map(|(minor, params)| StartupRequest::Startup { minor, params }),
        Just(StartupRequest::SslRequest),
        Just(StartupRequest::GssEncRequest),
        any::<(i32, i32)>().prop_map(|(pid, secret)| StartupRequest::Cancel { pid, secret }),
    ]
}

proptest! {
    #[test]
    fn backend_round_trip(msg in backend_message()) {
        let mut buf = BytesMut::new();
        msg.encode(&mut buf);
        let (tag, body) = split_one(&mut buf);
        prop_assert_eq!(BackendMessage::decode(tag, &body).unwrap(), msg);
    }

    #[test]
    fn frontend_round_trip(msg in front()) {
        let mut buf = BytesMut::new();
        encode_front(&msg, &mut buf);
        let wire = buf.clone().freeze();
        let (tag, body) = split_one(&mut buf);
        let got = FrontendRef::decode(tag, &body).unwrap();
        assert_same(&msg, got);
        // Re-encoding the view reproduces the frame byte for byte.
        let mut again = BytesMut::new();
        got.encode(&mut again);
        prop_assert_eq!(again.freeze(), wire);
    }

    #[test]
    fn startup_round_trip(req in startup_request()) {
        let mut buf = BytesMut::new();
        req.encode(&mut buf);
        prop_assert_eq!(parse_startup(&mut buf).unwrap(), Some(req));
        prop_assert!(buf.is_empty());
    }

    /// However the stream is chunked, split_frame yields the same frames and scan_frames covers
    /// exactly the complete ones.
    #[test]
    fn framing_is_chunking_independent(
        msgs in vec(backend_message(), 1..8),
        cuts in vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut stream = BytesMut::new();
        let mut bounds = vec![0];
        for m in &msgs {
            m.encode(&mut stream);
            bounds.push(stream.len());
        }
        let stream = stream.freeze();
        let mut cut_at: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        cut_at.push(stream.len());
        cut_at.sort_unstable();

        let (mut buf, mut prev, mut frames) = (BytesMut::new(), 0, Vec::new());
        for &cut in &cut_at {
            buf.extend_from_slice(&stream[prev..cut]);
            prev = cut;
            let covered = scan_frames(&buf, DEFAULT_MAX_MESSAGE_LEN, |_, _| ControlFlow::Continue(())).unwrap();
            prop_assert!(bounds.contains(&(covered + frames_len(&frames))));
            while let Some(f) = split_frame(&mut buf, DEFAULT_MAX_MESSAGE_LEN).unwrap() {
                frames.push(f);
            }
        }
        prop_assert!(buf.is_empty());
        let decoded: Vec<BackendMessage> = frames
            .iter()
            .map(|f| BackendMessage::decode(f.tag, &f.body).unwrap())
            .collect();
        prop_assert_eq!(decoded, msgs);
    }
}

fn frames_len(frames: &[shardgate_wire::Frame]) -> usize {
    frames.iter().map(|f| f.body.len() + 5).sum()
}
