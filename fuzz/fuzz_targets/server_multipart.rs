//! Server multipart bodies: arbitrary bytes as a `POST /v1/images/variations` form (framing,
//! fields, parameters), then each upload through the image decoder with the server's limits.
//! The first input byte picks the boundary, so the fuzzer can both match and break it.
#![no_main]
use libfuzzer_sys::fuzz_target;

const BOUNDARIES: [&str; 4] = ["X", "----unclipfuzz", "a b", ""];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let boundary = BOUNDARIES[usize::from(pick) % BOUNDARIES.len()];
    let content_type = format!("multipart/form-data; boundary={boundary}");
    if let Ok((uploads, _params)) = unclip::server::parse_variation_body(&content_type, body.to_vec()) {
        assert_eq!(uploads.len(), 1, "the form is accepted with exactly one image");
        let limits = unclip::vision::ImageLimits::default();
        let _ = unclip::vision::decode_image(&uploads[0], &limits);
    }
});
