//! The property the stream-decoder fuzz target checks, shared with the test
//! that replays its corpus in CI.

use crate::frame::{decode_frame, encode_frame, StreamDecoder};

/// Feeds `data` to a stream decoder and checks every packet it accepts.
///
/// The first byte sets the chunk size, so the fuzzer explores how packets
/// are split across reads. The decoder must never panic nor allocate past
/// its (here lowered) limit, and every packet it accepts must re-encode to
/// bytes that decode to the same packet and encode the same again.
/// Returns the number of packets decoded.
pub fn check_stream(data: &[u8]) -> usize {
    let Some((&chunk, stream)) = data.split_first() else {
        return 0;
    };
    let chunk = usize::from(chunk).max(1);
    let mut decoder = StreamDecoder::new().with_max_packet_size(1 << 16);
    let mut decoded = 0;
    for piece in stream.chunks(chunk) {
        decoder.extend(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    let bytes = encode_frame(frame.msg_id, &frame.packet);
                    let (msg_id, packet) = match decode_frame(&bytes) {
                        Ok(decoded) => decoded,
                        Err(error) => panic!("own encoding of {:?} fails: {error}", frame.packet),
                    };
                    assert_eq!(msg_id, frame.msg_id);
                    assert_eq!(bytes, encode_frame(msg_id, &packet), "encoding is stable");
                    decoded += 1;
                }
                Ok(None) => break,
                Err(_) => return decoded,
            }
        }
    }
    decoded
}
