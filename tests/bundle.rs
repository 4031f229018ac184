//! Bundle loading: every way a bundle can be broken gives its typed error (issue: runtime §2).

mod common;

use std::path::{Path, PathBuf};

use unclip::bundle::{sha256_file, Bundle};
use unclip::{Error, Pipeline};

/// A scratch copy of models/tiny.
fn copy_bundle() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(common::tiny_bundle()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    (tmp, dir)
}

fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("bundle.json");
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(&path, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
}

#[test]
fn committed_tiny_bundle_matches_its_checksums() {
    let bundle = Bundle::open(common::tiny_bundle()).expect("models/tiny must validate");
    assert_eq!(bundle.manifest.name, "tiny");
    assert!(bundle.files().len() >= 9, "tokenizer + 8 models");
    for (file, sha) in bundle.files() {
        assert_eq!(
            sha256_file(&bundle.resolve(file).unwrap()).unwrap(),
            sha,
            "{file}"
        );
    }
}

#[test]
fn missing_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let err = Bundle::open(tmp.path()).unwrap_err();
    assert!(
        matches!(&err, Error::BundleFileMissing { path } if path.ends_with("bundle.json")),
        "{err}"
    );
}

#[test]
fn unknown_format_version() {
    let (_tmp, dir) = copy_bundle();
    edit_manifest(&dir, |m| m["format_version"] = 99.into());
    let err = Bundle::open(&dir).unwrap_err();
    assert!(
        matches!(
            err,
            Error::BundleVersion {
                found: 99,
                supported: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("re-export"), "{err}");
}

#[test]
fn wrong_format_and_bad_json() {
    let (_tmp, dir) = copy_bundle();
    edit_manifest(&dir, |m| m["format"] = "something-else".into());
    assert!(matches!(
        Bundle::open(&dir).unwrap_err(),
        Error::BundleInvalid { .. }
    ));
    std::fs::write(dir.join("bundle.json"), b"{ not json").unwrap();
    let err = Bundle::open(&dir).unwrap_err();
    assert!(
        matches!(&err, Error::BundleInvalid { reason, .. } if reason.contains("JSON")),
        "{err}"
    );
}

/// The stages make RGB images: a bundle whose decoder or upsampler samples have another channel
/// count is refused at load, naming the stage, before any model runs.
#[test]
fn non_rgb_channels_are_refused_at_load() {
    let (_tmp, dir) = copy_bundle();
    edit_manifest(&dir, |m| m["decoder"]["in_channels"] = 4.into());
    let err = Bundle::open(&dir).unwrap_err();
    assert!(
        matches!(&err, Error::BundleInvalid { reason, .. } if reason.contains("decoder in_channels is 4")),
        "{err}"
    );
    let (_tmp, dir) = copy_bundle();
    edit_manifest(&dir, |m| m["upsamplers"][0]["in_channels"] = 1.into());
    let err = Bundle::open(&dir).unwrap_err();
    assert!(
        matches!(&err, Error::BundleInvalid { reason, .. } if reason.contains("in_channels is 1")),
        "{err}"
    );
}

#[test]
fn missing_onnx_file() {
    let (_tmp, dir) = copy_bundle();
    std::fs::remove_file(dir.join("decoder.onnx")).unwrap();
    let err = Bundle::open(&dir).unwrap_err();
    assert!(
        matches!(&err, Error::BundleFileMissing { path } if path.ends_with("decoder.onnx")),
        "{err}"
    );
}

#[test]
fn checksum_mismatch() {
    let (_tmp, dir) = copy_bundle();
    let path = dir.join("prior.onnx");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();
    let err = Bundle::open(&dir).unwrap_err();
    assert!(
        matches!(&err, Error::ChecksumMismatch { path, .. } if path.ends_with("prior.onnx")),
        "{err}"
    );
}

#[test]
fn paths_escaping_the_bundle() {
    for escape in ["../x.onnx", "/etc/passwd", "a/../../x.onnx", ""] {
        let (_tmp, dir) = copy_bundle();
        edit_manifest(&dir, |m| m["models"]["prior"]["file"] = escape.into());
        let err = Bundle::open(&dir).unwrap_err();
        assert!(
            matches!(&err, Error::BundlePathEscape { path } if path == escape),
            "{escape}: {err}"
        );
    }
}

#[test]
fn truncated_onnx_with_matching_checksum_fails_at_load() {
    let (_tmp, dir) = copy_bundle();
    let path = dir.join("decoder.onnx");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
    let sha = sha256_file(&path).unwrap();
    edit_manifest(&dir, |m| m["models"]["decoder"]["sha256"] = sha.into());
    let err = Pipeline::load(&common::runtime(), &dir)
        .err()
        .expect("truncated model must not load");
    assert!(
        matches!(&err, Error::ModelLoad { path, .. } if path.ends_with("decoder.onnx")),
        "{err}"
    );
}

#[test]
fn onnx_input_name_differs_from_manifest() {
    let (_tmp, dir) = copy_bundle();
    edit_manifest(&dir, |m| {
        m["models"]["prior"]["inputs"][1]["name"] = "t".into()
    });
    let err = Pipeline::load(&common::runtime(), &dir)
        .err()
        .expect("signature mismatch");
    assert!(
        matches!(&err, Error::ModelSignature { path, detail } if path.ends_with("prior.onnx") && detail.contains("timestep")),
        "{err}"
    );
}

#[test]
fn onnx_output_dtype_differs_from_manifest() {
    let (_tmp, dir) = copy_bundle();
    edit_manifest(&dir, |m| {
        m["models"]["decoder"]["outputs"][0]["dtype"] = "int64".into()
    });
    let err = Pipeline::load(&common::runtime(), &dir)
        .err()
        .expect("dtype mismatch");
    assert!(
        matches!(&err, Error::ModelSignature { detail, .. } if detail.contains("float32") && detail.contains("int64")),
        "{err}"
    );
}

#[test]
fn onnx_fixed_dimension_differs_from_manifest() {
    let (_tmp, dir) = copy_bundle();
    edit_manifest(&dir, |m| {
        m["models"]["decoder"]["inputs"][0]["shape"][2] = 32.into()
    });
    let err = Pipeline::load(&common::runtime(), &dir)
        .err()
        .expect("shape mismatch");
    assert!(
        matches!(&err, Error::ModelSignature { detail, .. } if detail.contains("shape")),
        "{err}"
    );
}

#[test]
fn stage_refers_to_an_undefined_model() {
    let (_tmp, dir) = copy_bundle();
    edit_manifest(&dir, |m| m["decoder"]["model"] = "nope".into());
    let err = Bundle::open(&dir).unwrap_err();
    assert!(
        matches!(&err, Error::BundleInvalid { reason, .. } if reason.contains("nope")),
        "{err}"
    );
}

/// `--verify cached`: a verified file is trusted while its size, mtime and inode are unchanged;
/// a file modified in place is re-hashed and refused; `always` re-hashes everything.
#[test]
fn verified_cache_skips_unchanged_files_and_catches_changed_ones() {
    use unclip::verify::{Verification, Verify};
    let (tmp, dir) = copy_bundle();
    let cached = Verification {
        mode: Verify::Cached,
        cache_file: Some(tmp.path().join("cache/verified.json")),
    };
    Bundle::open_with(&dir, &cached).unwrap();
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("cache/verified.json")).unwrap())
            .unwrap();
    let bundle = Bundle::open(&dir).unwrap();
    assert_eq!(
        record["files"].as_object().unwrap().len(),
        bundle.files().len(),
        "one entry per file"
    );

    // Same size, same mtime, same inode, different bytes: only `always` can tell.
    let path = dir.join("prior.onnx");
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    {
        use std::io::{Seek, Write};
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.seek(std::io::SeekFrom::Start(0)).unwrap();
        file.write_all(&bytes).unwrap();
        file.set_modified(modified).unwrap();
    }
    Bundle::open_with(&dir, &cached).expect("identity unchanged: trusted from the cache");
    let err = Bundle::open_with(&dir, &Verification::new(Verify::Always)).unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
    // `never` checks existence only.
    Bundle::open_with(&dir, &Verification::new(Verify::Never)).unwrap();

    // An ordinary change moves the mtime: the cache re-hashes and refuses it.
    std::fs::write(&path, &bytes).unwrap();
    let later = modified + std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let err = Bundle::open_with(&dir, &cached).unwrap_err();
    assert!(
        matches!(&err, Error::ChecksumMismatch { path, .. } if path.ends_with("prior.onnx")),
        "{err}"
    );
    std::fs::remove_file(dir.join("decoder.onnx")).unwrap();
    assert!(matches!(
        Bundle::open_with(&dir, &Verification::new(Verify::Never)).unwrap_err(),
        Error::BundleFileMissing { .. }
    ));
    assert!("sometimes".parse::<Verify>().is_err());
}

/// Format version 2 names the family; version 1 is Karlo's layout without the key. A family this
/// unclip does not run, a version-2 manifest without one and a version-1 manifest with one are
/// refused, each naming the field.
#[test]
fn families_and_format_versions() {
    let kandinsky = Bundle::open(common::repo().join("models/tiny-kandinsky")).unwrap();
    assert_eq!(kandinsky.manifest.format_version, 2);
    assert_eq!(kandinsky.manifest.layout.family(), "kandinsky2.2");
    let karlo = Bundle::open(common::tiny_bundle()).unwrap();
    assert_eq!(karlo.manifest.layout.family(), "karlo");

    let (_tmp, dir) = copy_bundle();
    for (edit, needle) in [
        (
            (|m: &mut serde_json::Value| m["family"] = "karlo".into())
                as fn(&mut serde_json::Value),
            "`family` is a version-2 field",
        ),
        (
            |m| {
                m["format_version"] = 2.into();
            },
            "`family` missing",
        ),
        (
            |m| {
                m["format_version"] = 2.into();
                m["family"] = "stable-diffusion".into();
            },
            "this unclip runs karlo and kandinsky2.2",
        ),
    ] {
        let original = std::fs::read(dir.join("bundle.json")).unwrap();
        edit_manifest(&dir, edit);
        let err = Bundle::open(&dir).unwrap_err();
        assert!(matches!(err, Error::BundleInvalid { .. }), "{err}");
        assert!(err.to_string().contains(needle), "{err}");
        std::fs::write(dir.join("bundle.json"), original).unwrap();
    }
    // Version 2 with the karlo family loads as version 1 does.
    edit_manifest(&dir, |m| {
        m["format_version"] = 2.into();
        m["family"] = "karlo".into();
    });
    assert_eq!(
        Bundle::open(&dir).unwrap().manifest.layout.family(),
        "karlo"
    );
}
