//! Replays the stream-decoder fuzz corpus (`fuzz/corpus/stream_decoder`),
//! so every input the fuzzer found interesting is re-checked on stable Rust.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

#[test]
fn fuzz_corpus_replays_cleanly() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/stream_decoder");
    let mut inputs = 0;
    let mut packets = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        packets += neo_proto::fuzzing::check_stream(&data);
        inputs += 1;
    }
    // The corpus is seeded with every packet of shared/vectors.
    assert!(
        inputs >= 187,
        "only {inputs} corpus inputs in {}",
        dir.display()
    );
    assert!(packets >= 187, "only {packets} packets decoded");
}
