//! The stream decoder resumes its scan where the previous read stopped.
//!
//! It used to scan the buffer from its first byte after every read, so a
//! packet of n bytes arriving in k reads cost O(n·k): a 64 MiB packet
//! trickling in one byte at a time meant about 2·10^15 bytes examined, and a
//! peer could pin a core by sending slowly. The scanner now keeps its place;
//! its work counter must stay within a small multiple of the packet size.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use neo_proto::packets::{AskFinishTransaction, PackRequest};
use neo_proto::{encode_frame, Oid, Packet, StreamDecoder, Tid, MAX_PACKET_SIZE};

/// An `AskFinishTransaction` of exactly `MAX_PACKET_SIZE` bytes that mixes
/// headers of every length: bin8 oids (2-byte headers), uint32 partitions
/// (5-byte headers) and fixint partitions (1 byte).
fn packet_at_the_limit() -> (Packet, Vec<u8>) {
    let mut packet = AskFinishTransaction {
        ttid: Tid(0x03e8_0000_0000_0001),
        oids: (0..2_000_000u64).map(|oid| Oid(oid * 3)).collect(),
        deleted: (0..4_000_000u32).map(|i| 0x0100_0000 + i).collect(),
        checked: Vec::new(),
        pack: Some(PackRequest {
            oids: Some(vec![Oid(1), Oid(2)]),
            pack_tid: Tid(42),
        }),
    };
    let base = encode_frame(7, &Packet::from(packet.clone())).len();
    // An empty `checked` takes 1 byte; n > 65535 fixints take 5 + n.
    let fill = MAX_PACKET_SIZE + 1 - base - 5;
    packet.checked = (0..fill).map(|i| (i % 128) as u32).collect();
    let packet = Packet::from(packet);
    let bytes = encode_frame(7, &packet);
    assert_eq!(bytes.len(), MAX_PACKET_SIZE);
    (packet, bytes)
}

#[test]
fn a_64_mib_packet_fed_one_byte_at_a_time_is_scanned_in_linear_time() {
    let (packet, bytes) = packet_at_the_limit();
    let mut decoder = StreamDecoder::after_magic();
    let (last, head) = bytes.split_last().unwrap();
    for byte in head {
        decoder.extend(std::slice::from_ref(byte));
        assert_eq!(decoder.next_frame().unwrap(), None);
    }
    decoder.extend(&[*last]);
    let frame = decoder.next_frame().unwrap().expect("the whole packet");
    assert_eq!((frame.msg_id, frame.packet == packet), (7, true));
    assert_eq!(decoder.buffered(), 0);

    // A header of k bytes costs one byte per attempt while incomplete, then
    // k: at most 2k - 1. Payloads are skipped without being examined.
    let scanned = decoder.scanned_bytes();
    let size = bytes.len() as u64;
    println!(
        "{size} bytes fed one at a time: {scanned} bytes scanned ({:.2} per byte)",
        scanned as f64 / size as f64
    );
    assert!(scanned <= 2 * size, "{scanned} bytes scanned for {size}");
    // Every header byte was examined at least once.
    assert!(scanned >= size / 2, "{scanned} bytes scanned for {size}");
}
