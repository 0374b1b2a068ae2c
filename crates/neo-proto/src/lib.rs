//! NEO protocol version 5: every packet type as a Rust struct, and the
//! msgpack codec that is byte-compatible with NEO/py.
//!
//! This crate does no I/O. A connection feeds received bytes to a
//! [`StreamDecoder`] and writes what [`encode_frame`] returns. Everything a
//! peer controls is bounded: packet size ([`MAX_PACKET_SIZE`]), nesting
//! ([`value::MAX_DEPTH`]), the work of finding where a packet ends (linear
//! in its size however it is cut), and memory: nothing is allocated for an
//! incomplete packet, and decoding a whole one allocates at most
//! [`reader::MEMORY_PER_BYTE`] bytes per byte plus [`reader::MEMORY_SLACK`].
//!
//! Layers, bottom up:
//! - [`value`]: the msgpack subset NEO uses: encoders, headers, [`Value`];
//! - [`scan`]: where a packet ends, found without allocating, resumably;
//! - [`reader`]: a cursor over one packet, with its memory budget;
//! - [`field`]: how each argument type maps to msgpack;
//! - [`packets`]: the 111 packet types and the [`Packet`] enum;
//! - [`frame`]: handshake magic, `[msg_id, code, args]` framing, stream decoder.

pub mod field;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod packets;
pub mod reader;
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
