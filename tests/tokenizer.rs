//! Tokenizer parity: ids and masks equal to transformers' CLIPTokenizer for every reference
//! case (empty prompt, truncation at 77, unicode, batches).

mod common;

use unclip::bundle::Bundle;
use unclip::text::ClipTokenizer;

fn tokenizer() -> ClipTokenizer {
    let bundle = Bundle::open(common::tiny_bundle()).unwrap();
    let t = &bundle.manifest.tokenizer;
    ClipTokenizer::from_file(
        &bundle.resolve(&t.file).unwrap(),
        t.max_length,
        &t.pad_token,
        t.pad_id,
    )
    .unwrap()
}

fn prompts_of(case: &serde_json::Value) -> Vec<String> {
    match &case["prompt"] {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(a) => a.iter().map(|p| p.as_str().unwrap().to_string()).collect(),
        _ => vec![String::new()], // variations encode the empty prompt
    }
}

#[test]
fn ids_and_masks_match_transformers_for_every_case() {
    let tokenizer = tokenizer();
    let mut cases = 0;
    for entry in std::fs::read_dir(common::ref_dir()).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(dir.join("case.json")) else {
            continue;
        };
        let case: serde_json::Value = serde_json::from_str(&text).unwrap();
        let prompts = prompts_of(&case);
        let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let tokens = tokenizer.tokenize(&refs).unwrap();
        let ids = common::read_i64(&dir.join("prompt_ids.npy"));
        let mask = common::read_i64(&dir.join("prompt_mask.npy"));
        assert_eq!(tokens.ids.into_dyn(), ids, "{}: ids", dir.display());
        assert_eq!(tokens.mask.into_dyn(), mask, "{}: mask", dir.display());
        cases += 1;
    }
    assert!(cases >= 10, "found only {cases} reference cases");
}

#[test]
fn known_clip_ids() {
    // CLIP BPE ids of this prompt (the real CLIP BPE vocabulary), padded with "!" (id 0) as Karlo.
    let tokens = tokenizer()
        .tokenize(&["a red circle on a blue background"])
        .unwrap();
    let expected = [49406, 320, 736, 7117, 525, 320, 1746, 5994, 49407, 0];
    assert_eq!(
        tokens
            .ids
            .row(0)
            .iter()
            .take(10)
            .copied()
            .collect::<Vec<i64>>(),
        expected
    );
    assert_eq!(tokens.mask.row(0).sum(), 9);
    assert_eq!(tokens.ids.ncols(), 77);
}

#[test]
fn empty_and_overlong_prompts() {
    let t = tokenizer();
    let empty = t.tokenize(&[""]).unwrap();
    assert_eq!(
        empty
            .ids
            .row(0)
            .iter()
            .take(3)
            .copied()
            .collect::<Vec<i64>>(),
        [49406, 49407, 0]
    );
    assert_eq!(empty.mask.row(0).sum(), 2);
    let long = "red ".repeat(200);
    let tokens = t.tokenize(&[&long]).unwrap();
    assert_eq!(
        tokens.mask.row(0).sum(),
        77,
        "truncated to exactly 77 tokens"
    );
    assert_eq!(
        tokens.ids[[0, 76]],
        49407,
        "the last token is <|endoftext|>"
    );
    assert!(t.untruncated_len(&long).unwrap() > 77);
}
