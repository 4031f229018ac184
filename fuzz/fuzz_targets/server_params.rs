//! Server request bodies: arbitrary JSON into the Images API parameters (the part of a request
//! decoded before any model runs). A typed serde error or parameters, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<unclip::server::ImageParams>(data);
    let _ = serde_json::from_slice::<unclip::server::EmbeddingRequest>(data);
});
