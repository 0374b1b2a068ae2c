//! NEO protocol version 5: every packet type as a Rust struct, and the
//! msgpack codec that is byte-compatible with NEO/py.
//!
//! This crate does no I/O. A connection feeds received bytes to a
//! [`StreamDecoder`] and writes what [`encode_frame`] returns. Everything a
//! peer controls is bounded: packet size ([`MAX_PACKET_SIZE`]), nesting
//! ([`value::MAX_DEPTH`]), and no allocation is made before the bytes that
//! justify it have arrived.
//!
//! Layers, bottom up:
//! - [`value`]: the msgpack subset NEO uses ([`Value`]) and its decoder;
//! - [`scan`]: where a packet ends, found without allocating, resumably;
//! - [`field`]: how each argument type maps to msgpack;
//! - [`packets`]: the 111 packet types and the [`Packet`] enum;
//! - [`frame`]: handshake magic, `[msg_id, code, args]` framing, stream decoder.

pub mod field;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod packets;
pub mod scan;
pub mod types;
pub mod value;

#[cfg(test)]
mod arb;

pub use field::{Field, FieldError, Map};
pub use frame::{
    check_magic, decode_frame, encode_frame, encode_frame_into, Frame, FrameError, MagicCheck,
    StreamDecoder, MAGIC, MAX_PACKET_SIZE,
};
pub use packets::{
    answer_code, packet_kind, packet_name, Packet, PacketError, PacketKind, Request,
};
pub use types::*;
pub use value::Value;
