//! bundle.json parsing and validation: any bytes give a Bundle or a typed error, never a panic;
//! an accepted bundle never resolves a path outside its directory.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(bundle) = unclip::Bundle::from_manifest("/bundle", data) {
        for (file, _) in bundle.files() {
            let path = bundle
                .resolve(file)
                .expect("from_manifest resolved every file");
            assert!(path.starts_with("/bundle"), "{path:?} escapes the bundle");
        }
    }
});
