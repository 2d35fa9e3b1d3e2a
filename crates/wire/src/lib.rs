//! Sans-IO codec for the PostgreSQL v3 wire protocol: frames, startup packets and every frontend and
//! backend message. It owns byte layout only; it never touches a socket, a clock or a runtime.
//!
//! The proxy's hot path uses [`peek_header`], [`split_frame`] and [`scan_frames`] to forward bytes
//! it does not need to understand, and the zero-copy views ([`FrontendRef`], [`BindRef`]) when it
//! does. Those never allocate. The owned types ([`BackendMessage`], [`StartupRequest`]) are for the
//! low-rate parts of a session (startup, auth, synthesized replies).
//!
//! Every decoder checks each length against the bytes that are actually there before it slices or
//! allocates, never panics on any input, and rejects trailing bytes where PostgreSQL would.
//!
//! Encoders are infallible. Strings are written up to their first NUL (a NUL inside a C string
//! cannot be represented, and writing it would desynchronise the stream), and a message body must
//! stay below `i32::MAX` bytes, which every decoded input does because frames are capped by
//! `max_len`; a larger body is a programming error and panics.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod backend;
mod backend_msg;
mod error;
mod error_fields;
mod frame;
pub mod frontend;
mod frontend_ref;
mod reader;
mod rows;
mod startup;
pub mod tag;

pub use backend_msg::{Authentication, BackendMessage};
pub use error::{Result, WireError};
pub use error_fields::ErrorFields;
pub use frame::{peek_header, scan_frames, split_frame, Frame, FrameHeader};
pub use frontend_ref::{
    decode_password_message, decode_sasl_initial_response, BindRef, FrontendRef, ParamTypes,
    ParseRef,
};
pub use rows::{encode_data_row, DataRow, DataRowRef, FieldDescription, RowDescription};
pub use startup::{parse_startup, StartupRequest};

/// Largest regular message accepted by default (total frame bytes). The proxy may pass its own cap.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 64 * 1024 * 1024;

/// Largest startup packet accepted, the same limit PostgreSQL applies (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_LEN: usize = 10_000;
