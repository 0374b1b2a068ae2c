//! What decoding a packet allocates is bounded by the packet's size.
//!
//! The decoder used to turn every packet into a generic msgpack tree first,
//! about 48 bytes per item: a 64 MiB packet of one-byte integers cost some
//! 3 GiB before its arguments were even looked at, so a few peers could
//! exhaust a node's memory. Arguments are now decoded straight from the
//! bytes, and every allocation is charged to a budget of 8 bytes per packet
//! byte plus 1 MiB; past it, decoding stops with an error naming the packet
//! and argument. A counting global allocator measures what `next_frame`
//! really allocates; it counts for the whole test binary, hence this file
//! of its own and the tests run one at a time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;
use std::sync::Mutex;

use bytes::Bytes;
use neo_proto::packets::{AnswerObject, AnswerTIDs};
use neo_proto::{
    encode_frame, value, Checksum, Frame, FrameError, Oid, Packet, StreamDecoder, Tid,
    MAX_PACKET_SIZE,
};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The allocator's counters are global: one measurement at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// What decoding a packet of `len` bytes may allocate: 8 bytes per byte
/// plus 1 MiB of budget slack, plus 64 KiB for what is not charged (the
/// shared buffer's header, error messages).
fn allowed(len: usize) -> usize {
    8 * len + (1 << 20) + (64 << 10)
}

/// A packet of `MAX_PACKET_SIZE` bytes (less what `item` does not divide):
/// `head` (the arguments up to the big container), an array32 or map32
/// (`container`) of as many copies of `item` as fit, then `tail`.
fn hostile(code: u16, head: &[u8], container: u8, item: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_PACKET_SIZE);
    value::write_array_len(&mut out, 3);
    value::write_uint(&mut out, 1);
    value::write_uint(&mut out, code.into());
    out.extend_from_slice(head);
    let count = (MAX_PACKET_SIZE - out.len() - 5 - tail.len()) / item.len();
    out.push(container);
    out.extend_from_slice(&u32::try_from(count).unwrap().to_be_bytes());
    out.extend(item.iter().cycle().take(count * item.len()));
    out.extend_from_slice(tail);
    assert!(MAX_PACKET_SIZE - out.len() < item.len());
    out
}

/// Decodes `bytes` as one packet and returns the outcome with the bytes
/// allocated meanwhile (the buffer filled beforehand).
fn decode_measured(bytes: &[u8]) -> (Result<Option<Frame>, FrameError>, usize) {
    let mut decoder = StreamDecoder::after_magic();
    decoder.extend(bytes);
    let region = Region::new(GLOBAL);
    let outcome = decoder.next_frame();
    let allocated = region.change().bytes_allocated;
    (outcome, allocated)
}

fn report(name: &str, len: usize, allocated: usize) {
    println!(
        "{name}: {len} bytes, {allocated} bytes allocated ({:.2} per byte)",
        allocated as f64 / len as f64
    );
}

/// `RequestIdentification(STORAGE, nil, nil, "c", nil, extra)` up to `extra`.
const IDENTIFICATION_HEAD: &[u8] = &[0x96, 0xd4, 0x04, 0x01, 0xc0, 0xc0, 0xc4, 0x01, b'c', 0xc0];

#[test]
fn hostile_packets_of_tiny_elements_stay_within_the_budget() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let refused = [
        // extra = {"x": [1, 1, ...]}: 48 bytes per 1-byte `Value`.
        (
            "RequestIdentification",
            "extra",
            hostile(
                0x0001,
                &[IDENTIFICATION_HEAD, &[0x81, 0xc4, 0x01, b'x']].concat(),
                0xdd,
                &[0x01],
                &[],
            ),
        ),
        // extra = {"x": [[1 × 255], [1 × 255], ...]}: each inner array
        // fits in the budget, all of them do not: refused once the budget
        // is spent, which is the most a packet can make us allocate.
        (
            "RequestIdentification",
            "extra",
            hostile(
                0x0001,
                &[IDENTIFICATION_HEAD, &[0x81, 0xc4, 0x01, b'x']].concat(),
                0xdd,
                &[&[0xdc, 0x00, 0xff][..], &[0x01; 255]].concat(),
                &[],
            ),
        ),
        // extra = {"": 1, "": 1, ...}: 72 bytes per 3-byte entry.
        (
            "RequestIdentification",
            "extra",
            hostile(0x0001, IDENTIFICATION_HEAD, 0xdf, &[0xc4, 0x00, 0x01], &[]),
        ),
        // info = {"x": {1: 2, 1: 2, ...}}: 96 bytes per 2-byte pair.
        (
            "NotifyMonitorInformation",
            "info",
            hostile(
                0x0048,
                &[0x91, 0x81, 0xc4, 0x01, b'x'],
                0xdf,
                &[0x01, 0x02],
                &[],
            ),
        ),
        // rows = [[], [], ...]: 24 bytes per 1-byte row.
        (
            "SendPartitionTable",
            "rows",
            hostile(0x000a, &[0x93, 0xc0, 0x01], 0xdd, &[0x90], &[]),
        ),
        // warning = [nil, nil, ...]: 24 bytes per 1-byte `Option<String>`.
        (
            "AnswerMonitorInformation",
            "warning",
            hostile(0x8047, &[0x93], 0xdd, &[0xc0], &[0x90, 0xc4, 0x00]),
        ),
    ];
    for (packet, argument, bytes) in refused {
        let (outcome, allocated) = decode_measured(&bytes);
        report(&format!("{packet}.{argument}"), bytes.len(), allocated);
        let error = outcome.expect_err("refused").to_string();
        let reason = format!(
            "decoding needs more memory than a packet of {} bytes justifies",
            bytes.len()
        );
        let prefix = format!("bad packet (msg_id 1): {packet}: argument {argument}: ");
        assert!(
            error.starts_with(&prefix) && error.ends_with(&reason),
            "{error}"
        );
        assert!(allocated <= allowed(bytes.len()), "{packet}: {allocated}");
    }

    // deleted = [5, 5, ...]: 4 bytes per 1-byte partition, within budget.
    let ttid = [0xc4, 0x08, 0, 0, 0, 0, 0, 0, 0, 1];
    let bytes = hostile(
        0x0014,
        &[&[0x95][..], &ttid, &[0x90]].concat(),
        0xdd,
        &[0x05],
        &[0x90, 0xc0],
    );
    let (outcome, allocated) = decode_measured(&bytes);
    report("AskFinishTransaction.deleted", bytes.len(), allocated);
    let Packet::AskFinishTransaction(packet) = outcome.unwrap().unwrap().packet else {
        panic!("not an AskFinishTransaction")
    };
    // Everything but the 22 bytes of the frame and the other arguments.
    assert_eq!(packet.deleted.len(), MAX_PACKET_SIZE - 22);
    assert!(packet.deleted.iter().all(|partition| *partition == 5));
    assert!(allocated <= allowed(bytes.len()), "{allocated}");
}

#[test]
fn legitimate_large_packets_decode_within_the_budget() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // 60 MiB of object data: the bytes are not copied.
    let object = Packet::from(AnswerObject {
        oid: Oid(1),
        serial: Tid(2),
        next_serial: None,
        compression: Some(0),
        checksum: Checksum([7; 20]),
        data: Bytes::from(vec![0x5a; 60 << 20]),
        data_serial: None,
    });
    let bytes = encode_frame(3, &object);
    let (outcome, allocated) = decode_measured(&bytes);
    report("AnswerObject", bytes.len(), allocated);
    assert_eq!(outcome.unwrap().unwrap().packet, object);
    assert!(
        allocated < 64 << 10,
        "{allocated} bytes for a zero-copy bin"
    );

    // 6M TIDs: 8 bytes each in memory for 10 on the wire.
    let tids = Packet::from(AnswerTIDs {
        tids: (0..6_000_000).map(Tid).collect(),
    });
    let bytes = encode_frame(4, &tids);
    let (outcome, allocated) = decode_measured(&bytes);
    report("AnswerTIDs", bytes.len(), allocated);
    assert_eq!(outcome.unwrap().unwrap().packet, tids);
    assert!(
        allocated >= 6_000_000 * 8,
        "{allocated}: the TIDs were counted"
    );
    assert!(allocated <= bytes.len(), "{allocated}");
}

#[test]
fn nothing_is_allocated_for_an_incomplete_packet() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bytes = hostile(0x000a, &[0x93, 0xc0, 0x01], 0xdd, &[0x90], &[]);
    let mut decoder = StreamDecoder::after_magic();
    let mut allocated = 0;
    let (head, last) = bytes.split_at(bytes.len() - 1);
    for piece in head.chunks(64 << 10) {
        decoder.extend(piece);
        let region = Region::new(GLOBAL);
        assert_eq!(decoder.next_frame(), Ok(None));
        allocated += region.change().bytes_allocated;
    }
    assert_eq!(allocated, 0, "allocated while the packet was incomplete");
    decoder.extend(last);
    assert!(decoder.next_frame().is_err(), "empty rows over the budget");
}
