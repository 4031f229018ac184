//! `.npy` embedding files: a typed error or finite (N, D) float32 embeddings.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(embeddings) =
        unclip::npy::embeddings_from_bytes(data, std::path::Path::new("fuzz.npy"))
    {
        assert!(embeddings.iter().all(|x| x.is_finite()));
    }
});
