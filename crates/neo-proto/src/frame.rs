//! The byte stream of a connection: the handshake magic, then packets as
//! `[msg_id, code, args]` msgpack arrays (protocol.md §1.2, §2).
//!
//! [`StreamDecoder`] takes received bytes in pieces of any size. A
//! [`Scanner`] kept across reads finds where the packet at the head of the
//! buffer ends without allocating, examining each byte a bounded number of
//! times however the packet was cut; then a [`Reader`] over exactly that
//! packet decodes it into typed arguments, its allocations bounded by the
//! packet's size.

use bytes::{Buf, Bytes, BytesMut};

use crate::packets::{Packet, PacketError};
use crate::reader::{Reader, Token};
use crate::scan::Scanner;
use crate::types::PROTOCOL_VERSION;
use crate::value::{self, ValueError};

/// What both ends send first: msgpack `["NEO", 5]` with `"NEO"` as a str.
pub const MAGIC: [u8; 6] = [0x92, 0xa3, b'N', b'E', b'O', PROTOCOL_VERSION];

/// Largest packet accepted from a peer (NEO/py's unpacker buffer size).
pub const MAX_PACKET_SIZE: usize = 64 << 20;

/// How the first bytes of a stream compare with [`MAGIC`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MagicCheck {
    /// The magic of protocol 5: packets follow.
    Match,
    /// A prefix of the magic: wait for more bytes.
    NeedMore,
    /// A NEO peer speaking another protocol version (the byte it sent).
    VersionMismatch(u8),
    /// Not a NEO stream (or a TLS ClientHello on a plain connection).
    NotNeo,
}

/// Classifies the first bytes received on a connection.
pub fn check_magic(received: &[u8]) -> MagicCheck {
    let len = received.len().min(MAGIC.len());
    if received[..len] == MAGIC[..len] {
        return if len == MAGIC.len() {
            MagicCheck::Match
        } else {
            MagicCheck::NeedMore
        };
    }
    if len == MAGIC.len() && received[..5] == MAGIC[..5] {
        MagicCheck::VersionMismatch(received[5])
    } else {
        MagicCheck::NotNeo
    }
}

/// Why a stream cannot be decoded further; the connection must be closed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    /// The peer's magic names another protocol version.
    #[error(
        "peer speaks NEO protocol version {peer}, this node speaks version {PROTOCOL_VERSION}"
    )]
    VersionMismatch {
        /// Version byte the peer sent.
        peer: u8,
    },
    /// The stream does not start with NEO's magic.
    #[error("not a NEO stream (first bytes {first_bytes})")]
    NotNeo {
        /// Hex of the first bytes received.
        first_bytes: String,
    },
    /// Bytes that are not msgpack, or over a limit.
    #[error("malformed packet: {0}")]
    Value(#[from] ValueError),
    /// A msgpack value that is not a `[msg_id, code, args]` frame.
    #[error("malformed packet: {0}")]
    Frame(String),
    /// A well-formed frame whose packet is unknown or has bad arguments.
    #[error("bad packet (msg_id {msg_id}): {error}")]
    Packet {
        /// msg_id of the offending frame.
        msg_id: u32,
        /// What was wrong.
        error: PacketError,
    },
}

/// One decoded packet with its msg_id.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    /// Request/notification counter value, or the id of the request answered.
    pub msg_id: u32,
    /// The packet.
    pub packet: Packet,
}

/// Appends the wire form of `packet` sent with `msg_id`.
pub fn encode_frame_into(out: &mut Vec<u8>, msg_id: u32, packet: &Packet) {
    value::write_array_len(out, 3);
    value::write_uint(out, msg_id.into());
    value::write_uint(out, packet.code().into());
    packet.encode_args(out);
}

/// The wire form of `packet` sent with `msg_id`.
pub fn encode_frame(msg_id: u32, packet: &Packet) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame_into(&mut out, msg_id, packet);
    out
}

/// Decodes bytes that hold exactly one packet.
pub fn decode_frame(bytes: &[u8]) -> Result<(u32, Packet), FrameError> {
    let mut decoder = StreamDecoder::after_magic();
    decoder.extend(bytes);
    match decoder.next_frame()? {
        Some(frame) if decoder.buffered() == 0 => Ok((frame.msg_id, frame.packet)),
        Some(_) => Err(FrameError::Frame("trailing bytes after the packet".into())),
        None => Err(FrameError::Frame("truncated packet".into())),
    }
}

/// Decodes one whole packet: checks the `[msg_id, code, args]` shape and
/// builds the packet from its arguments.
fn decode_packet(bytes: Bytes) -> Result<Frame, FrameError> {
    let mut reader = Reader::new(bytes);
    match reader.token()? {
        Token::Array(3) => {}
        Token::Array(_) => return Err(FrameError::Frame("packet is not a 3-element array".into())),
        other => {
            return Err(FrameError::Frame(format!(
                "expected [msg_id, code, args], found {}",
                other.type_name()
            )))
        }
    }
    let msg_id = match reader.token()? {
        Token::Int(i) => u32::try_from(i).ok(),
        _ => None,
    }
    .ok_or_else(|| FrameError::Frame("msg_id is not a 32-bit unsigned integer".into()))?;
    let code = match reader.token()? {
        Token::Int(i) => u16::try_from(i).ok(),
        _ => None,
    }
    .ok_or_else(|| {
        FrameError::Frame(format!(
            "msg_id {msg_id}: code is not a 16-bit unsigned integer"
        ))
    })?;
    let packet =
        Packet::decode(code, &mut reader).map_err(|error| FrameError::Packet { msg_id, error })?;
    debug_assert!(
        reader.is_at_end(),
        "the scanner found where the packet ends"
    );
    Ok(Frame { msg_id, packet })
}

/// Incremental decoder of one direction of a connection: feed it bytes as
/// they arrive, take whole packets out.
#[derive(Debug)]
pub struct StreamDecoder {
    /// Received bytes not yet decoded.
    buf: BytesMut,
    /// Whether the magic was checked; packets start after it.
    magic_checked: bool,
    /// Limit on one packet's size, so a peer cannot make us buffer without end.
    max_packet_size: usize,
    /// How far the packet at the head of `buf` was scanned, so that each
    /// read costs its own bytes rather than the whole packet again.
    scanner: Scanner,
}

impl Default for StreamDecoder {
    fn default() -> Self {
        StreamDecoder::new()
    }
}

impl StreamDecoder {
    /// A decoder for a new connection: expects the magic first.
    pub fn new() -> Self {
        StreamDecoder {
            buf: BytesMut::new(),
            magic_checked: false,
            max_packet_size: MAX_PACKET_SIZE,
            scanner: Scanner::new(),
        }
    }

    /// A decoder for a stream whose magic was already consumed.
    pub fn after_magic() -> Self {
        StreamDecoder {
            magic_checked: true,
            ..StreamDecoder::new()
        }
    }

    /// Lowers the per-packet limit (default [`MAX_PACKET_SIZE`]).
    pub fn with_max_packet_size(mut self, max_packet_size: usize) -> Self {
        self.max_packet_size = max_packet_size;
        self
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The receive buffer, for reading from a socket without a copy. Only
    /// append to it: the scan of the packet in progress is kept.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes received and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes the packet scanner examined since the decoder was created: the
    /// work done to find where packets end, at most about twice the bytes
    /// received however they were split.
    pub fn scanned_bytes(&self) -> u64 {
        self.scanner.examined()
    }

    /// Whether the magic was received and checked.
    pub fn magic_checked(&self) -> bool {
        self.magic_checked
    }

    /// Checks the magic if still needed. `Ok(false)`: more bytes needed.
    pub fn check_magic(&mut self) -> Result<bool, FrameError> {
        if self.magic_checked {
            return Ok(true);
        }
        match check_magic(&self.buf) {
            MagicCheck::Match => {
                self.buf.advance(MAGIC.len());
                self.magic_checked = true;
                Ok(true)
            }
            MagicCheck::NeedMore => Ok(false),
            MagicCheck::VersionMismatch(peer) => Err(FrameError::VersionMismatch { peer }),
            MagicCheck::NotNeo => {
                let shown = &self.buf[..self.buf.len().min(8)];
                let first_bytes = shown.iter().map(|b| format!("{b:02x}")).collect();
                Err(FrameError::NotNeo { first_bytes })
            }
        }
    }

    /// The next whole packet, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if !self.check_magic()? {
            return Ok(None);
        }
        let Some(len) = self.scanner.resume(&self.buf, self.max_packet_size)? else {
            return Ok(None);
        };
        self.scanner.restart();
        decode_packet(self.buf.split_to(len).freeze()).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packets::{AskObject, Ping};
    use crate::types::Oid;

    #[test]
    fn magic_is_classified_like_neo_py() {
        assert_eq!(check_magic(&MAGIC), MagicCheck::Match);
        assert_eq!(check_magic(&MAGIC[..3]), MagicCheck::NeedMore);
        assert_eq!(check_magic(&[]), MagicCheck::NeedMore);
        assert_eq!(
            check_magic(&[0x92, 0xa3, b'N', b'E', b'O', 4]),
            MagicCheck::VersionMismatch(4)
        );
        assert_eq!(check_magic(&[0x16, 3, 1, 2, 0, 1]), MagicCheck::NotNeo);
        assert_eq!(
            check_magic(&[0x92, 0xc4, 3, b'N', b'E', b'O', 5]),
            MagicCheck::NotNeo
        );
    }

    #[test]
    fn stream_yields_packets_split_anywhere() {
        let mut stream = MAGIC.to_vec();
        let ping = Packet::from(Ping {});
        let ask = Packet::from(AskObject {
            oid: Oid(7),
            at: None,
            before: None,
        });
        encode_frame_into(&mut stream, 0, &ping);
        encode_frame_into(&mut stream, 1, &ask);
        for split in 0..stream.len() {
            let mut decoder = StreamDecoder::new();
            let mut frames = Vec::new();
            for chunk in [&stream[..split], &stream[split..]] {
                decoder.extend(chunk);
                while let Some(frame) = decoder.next_frame().expect("valid stream") {
                    frames.push(frame);
                }
            }
            assert_eq!(
                frames,
                vec![
                    Frame {
                        msg_id: 0,
                        packet: ping.clone()
                    },
                    Frame {
                        msg_id: 1,
                        packet: ask.clone()
                    },
                ],
                "split at {split}"
            );
            assert_eq!(decoder.buffered(), 0);
        }
    }

    #[test]
    fn oversized_packets_are_refused_before_buffering_them() {
        let mut decoder = StreamDecoder::after_magic().with_max_packet_size(1024);
        // [0, 28, [<bin of 1 MiB ...
        decoder.extend(&[0x93, 0x00, 0x1c, 0x97, 0xc6, 0x00, 0x10, 0x00, 0x00]);
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::Value(ValueError::TooLarge(1024)))
        );
    }

    #[test]
    fn frames_of_the_wrong_shape_are_errors() {
        assert!(matches!(
            decode_frame(&[0x92, 0x00, 0x02]),
            Err(FrameError::Frame(_))
        ));
        assert!(matches!(
            decode_frame(&[0x93, 0xff, 0x02, 0x90]),
            Err(FrameError::Frame(_))
        ));
        assert!(matches!(
            decode_frame(&[0x93, 0x00, 0x00, 0x90]),
            Err(FrameError::Packet { msg_id: 0, .. })
        ));
        assert!(matches!(
            decode_frame(&[0x93, 0x00, 0x02, 0x90, 0xc0]),
            Err(FrameError::Frame(_))
        ));
    }
}
