//! Golden tests: packets encoded by NEO/py itself (`shared/vectors`).
//!
//! Each packet must decode to the arguments NEO/py rendered as JSON, and the
//! typed packet must re-encode to the very same bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::PathBuf;

use bytes::Bytes;
use neo_proto::reader::Reader;
use neo_proto::scan::Scanner;
use neo_proto::{
    check_magic, decode_frame, encode_frame, packet_name, CellState, ClusterState, ErrorCode,
    MagicCheck, NodeState, NodeType, Packet, StreamDecoder, Value, MAGIC,
};
use serde_json::{json, Value as Json};

/// `shared/vectors`, beside the repository unless `NEO_VECTORS_DIR` says otherwise.
fn vectors_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NEO_VECTORS_DIR") {
        return dir.into();
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors");
    assert!(
        dir.is_dir(),
        "golden vectors not found at {}: set NEO_VECTORS_DIR",
        dir.display()
    );
    dir
}

fn read_jsonl(name: &str) -> Vec<Json> {
    let path = vectors_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn enum_name(ext_type: i8, value: u64) -> (&'static str, &'static str) {
    match ext_type {
        0 => ("CellStates", CellState::from_value(value).unwrap().name()),
        1 => (
            "ClusterStates",
            ClusterState::from_value(value).unwrap().name(),
        ),
        2 => ("ErrorCodes", ErrorCode::from_value(value).unwrap().name()),
        3 => ("NodeStates", NodeState::from_value(value).unwrap().name()),
        4 => ("NodeTypes", NodeType::from_value(value).unwrap().name()),
        other => panic!("unknown ext type {other}"),
    }
}

/// The JSON rendering of `vectors/README.md`.
fn to_json(value: &Value) -> Json {
    match value {
        Value::Nil => Json::Null,
        Value::Bool(b) => json!(b),
        Value::Int(i) => match u64::try_from(*i) {
            Ok(u) => json!(u),
            Err(_) => json!(i64::try_from(*i).unwrap()),
        },
        Value::Float(f) => json!({ "float": f }),
        Value::Str(s) => json!({ "str": s }),
        Value::Bin(b) => json!({ "hex": hex::encode(b) }),
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Map(pairs) => json!({
            "map": pairs.iter().map(|(k, v)| json!([to_json(k), to_json(v)])).collect::<Vec<_>>()
        }),
        Value::Ext(ty, payload) => {
            let Value::Int(number) = Reader::new(payload.clone()).value().unwrap() else {
                panic!("enum payload is not an int")
            };
            let number = u64::try_from(number).unwrap();
            let (enum_type, name) = enum_name(*ty, number);
            json!({ "enum": enum_type, "name": name, "value": number })
        }
    }
}

/// Decodes one packet's bytes to its raw msgpack tree.
fn raw_value(bytes: &[u8]) -> Value {
    let len = Scanner::new().resume(bytes, bytes.len()).unwrap().unwrap();
    assert_eq!(len, bytes.len());
    let mut reader = Reader::new(Bytes::copy_from_slice(bytes));
    let value = reader.value().unwrap();
    assert!(reader.is_at_end());
    value
}

/// Checks one NEO/py packet; returns its code.
fn check_packet(line: &Json) -> u16 {
    let bytes = hex::decode(line["hex"].as_str().unwrap()).unwrap();
    let name = line["name"].as_str().unwrap();
    let (msg_id, packet) =
        decode_frame(&bytes).unwrap_or_else(|e| panic!("{name}: {e} (line {line})"));
    assert_eq!(Some(u64::from(msg_id)), line["msg_id"].as_u64(), "{name}");
    assert_eq!(
        Some(u64::from(packet.code())),
        line["code"].as_u64(),
        "{name}"
    );
    assert_eq!(packet.name(), name);
    assert_eq!(packet_name(packet.code()), Some(name));

    let Value::Array(frame) = raw_value(&bytes) else {
        panic!("{name}: frame is not an array")
    };
    assert_eq!(to_json(&frame[2]), line["args_json"], "{name}: arguments");

    assert_eq!(
        hex::encode(encode_frame(msg_id, &packet)),
        line["hex"].as_str().unwrap(),
        "{name}: re-encoding differs"
    );
    packet.code()
}

#[test]
fn packets_decode_and_reencode_byte_for_byte() {
    let lines = read_jsonl("packets.jsonl");
    assert_eq!(lines[0]["name"], "Handshake");
    assert_eq!(lines[0]["hex"], hex::encode(MAGIC));
    let mut codes: Vec<u16> = lines[1..].iter().map(check_packet).collect();
    assert_eq!(lines.len() - 1, 187);
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), 111, "every packet type has a vector");
    assert_eq!(codes, {
        let mut all = neo_proto::packets::ALL_CODES.to_vec();
        all.sort_unstable();
        all
    });
}

#[test]
fn handshake_cases_are_classified_like_neo_py() {
    let path = vectors_dir().join("handshake.json");
    let spec: Json = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(spec["magic_hex"], hex::encode(MAGIC));
    for case in spec["cases"].as_array().unwrap() {
        let bytes = hex::decode(case["first_bytes_hex"].as_str().unwrap()).unwrap();
        let ours = match check_magic(&bytes) {
            MagicCheck::Match => "ok",
            MagicCheck::NeedMore => "need_more_data",
            MagicCheck::VersionMismatch(_) => "version_mismatch",
            MagicCheck::NotNeo => "not_neo",
        };
        assert_eq!(ours, case["neo_py_result"], "{}", case["description"]);
    }

    let stream = hex::decode(spec["stream_example"]["hex"].as_str().unwrap()).unwrap();
    let mut decoder = StreamDecoder::new();
    decoder.extend(&stream);
    let mut frames = Vec::new();
    while let Some(frame) = decoder.next_frame().unwrap() {
        frames.push(frame);
    }
    let expected = &spec["stream_example"]["decoded_msgpack_values"];
    assert_eq!(frames.len() + 1, expected.as_array().unwrap().len());
    assert!(matches!(frames[0].packet, Packet::RequestIdentification(_)));
    assert!(matches!(frames[1].packet, Packet::Ping(_)));
    assert_eq!((frames[0].msg_id, frames[1].msg_id), (0, 1));
}

/// Every packet of every captured session decodes and re-encodes exactly,
/// and each direction of each connection decodes as one continuous stream.
#[test]
fn sessions_decode_as_streams() {
    for session in ["basic", "replication", "restart", "backup"] {
        let lines = read_jsonl(&format!("session-{session}.jsonl"));
        assert!(!lines.is_empty());
        let mut streams: HashMap<(String, String), (StreamDecoder, usize)> = HashMap::new();
        for line in &lines {
            let key = (
                line["conn"].as_str().unwrap().to_owned(),
                line["dir"].as_str().unwrap().to_owned(),
            );
            let bytes = hex::decode(line["hex"].as_str().unwrap()).unwrap();
            let (decoder, count) = streams
                .entry(key)
                .or_insert_with(|| (StreamDecoder::new(), 0));
            // Feed in two halves to exercise the incremental path.
            let (head, tail) = bytes.split_at(bytes.len() / 2);
            decoder.extend(head);
            if line["name"] == "Handshake" {
                assert!(!decoder.check_magic().unwrap());
                decoder.extend(tail);
                assert!(
                    decoder.check_magic().unwrap(),
                    "session {session}: bad magic"
                );
                continue;
            }
            let early = decoder.next_frame().unwrap();
            assert!(early.is_none(), "half a packet decoded");
            decoder.extend(tail);
            let frame = decoder
                .next_frame()
                .unwrap_or_else(|e| panic!("session {session} seq {}: {e}", line["seq"]))
                .expect("whole packet");
            assert_eq!(decoder.buffered(), 0);
            assert_eq!(frame.packet.name(), line["name"].as_str().unwrap());
            check_packet(line);
            *count += 1;
        }
        assert!(streams.values().all(|(decoder, _)| decoder.magic_checked()));
    }
}
