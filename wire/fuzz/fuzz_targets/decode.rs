//! Arbitrary bytes through the framing decoder, with re-encode checks (`tests/harness`).
#![no_main]

#[path = "../../tests/harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness::decode_input(data);
});
