//! Prompt → tokens with the tiny bundle's CLIP tokenizer: arbitrary bytes (lossy UTF-8) and
//! valid UTF-8 split into several prompts; the output is always (prompts, 77) with BOS/EOS.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use unclip::text::ClipTokenizer;

fn tokenizer() -> &'static ClipTokenizer {
    static TOKENIZER: OnceLock<ClipTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/tiny");
        let bundle = unclip::Bundle::open(dir).expect("models/tiny");
        let t = &bundle.manifest.tokenizer;
        ClipTokenizer::from_file(
            &bundle.resolve(&t.file).unwrap(),
            t.max_length,
            &t.pad_token,
            t.pad_id,
        )
        .expect("tokenizer")
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let prompts: Vec<&str> = text.split('\u{1}').take(8).collect();
    let tokens = tokenizer().tokenize(&prompts).expect("any UTF-8 tokenizes");
    assert_eq!(tokens.ids.dim(), (prompts.len(), 77));
    for row in tokens.ids.outer_iter() {
        assert_eq!(row[0], 49406, "BOS first");
    }
});
