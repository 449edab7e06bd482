//! Scripts of frames between a client and a server state machine (`tests/harness`).
#![no_main]

#[path = "../../tests/harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = harness::drive_connection(data);
});
