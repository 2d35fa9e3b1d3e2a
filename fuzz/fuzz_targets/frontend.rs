//! Fuzzes the client-facing path: split frames off a buffer and decode each as a frontend message,
//! walking every view, exactly as the proxy does with untrusted client bytes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shardgate_wire::{
    decode_password_message, decode_sasl_initial_response, split_frame, FrontendRef,
};

/// Small cap so the fuzzer also exercises the TooLarge path.
const MAX_LEN: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = split_frame(&mut buf, MAX_LEN) {
        let Ok(msg) = FrontendRef::decode(frame.tag, &frame.body) else {
            continue;
        };
        match msg {
            FrontendRef::Bind(b) => {
                b.param_formats().for_each(drop);
                b.params().for_each(drop);
                b.result_formats().for_each(drop);
            }
            FrontendRef::Parse(p) => p.param_types.iter().for_each(drop),
            FrontendRef::Password(body) => {
                let _ = decode_password_message(body);
                let _ = decode_sasl_initial_response(body);
            }
            _ => {}
        }
        let mut out = BytesMut::new();
        msg.encode(&mut out);
        assert_eq!(
            &out[5..],
            &frame.body[..],
            "re-encoding a decoded message is lossless"
        );
    }
});
