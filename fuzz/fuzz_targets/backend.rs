//! Fuzzes backend message decoding: the first byte is the tag, the rest the body. Whatever
//! decodes must re-encode and decode to the same message.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use shardgate_wire::{split_frame, BackendMessage, DataRow, RowDescription};

fuzz_target!(|data: &[u8]| {
    let Some((&tag, body)) = data.split_first() else {
        return;
    };
    let _ = RowDescription::decode(body);
    let _ = DataRow::decode(&Bytes::copy_from_slice(body));
    if let Ok(msg) = BackendMessage::decode(tag, body) {
        let mut buf = BytesMut::new();
        msg.encode(&mut buf);
        let frame = split_frame(&mut buf, usize::MAX).ok().flatten();
        let again = frame.and_then(|f| BackendMessage::decode(f.tag, &f.body).ok());
        assert_eq!(again.as_ref(), Some(&msg), "round trip");
    }
});
