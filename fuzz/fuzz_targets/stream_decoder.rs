//! Arbitrary bytes, cut in arbitrary chunks, through the stream decoder:
//! see `neo_proto::fuzzing::check_stream` for the property checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    neo_proto::fuzzing::check_stream(data);
});
