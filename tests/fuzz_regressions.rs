//! Inputs the fuzz targets in `fuzz/` found, kept as regression tests (tests/fixtures/fuzz/).

use std::path::Path;

use unclip::Error;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(name)
}

/// A 12-byte `.npy` whose v2 header claims ~2.8 GB: ndarray-npy allocated the header buffer
/// before reading it (libFuzzer: out-of-memory). Now a typed error naming the file.
#[test]
fn npy_header_length_beyond_the_file() {
    let path = fixture("npy_header_length_oom.npy");
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 12);
    for result in [
        unclip::npy::read_embeddings(&path),
        unclip::npy::embeddings_from_bytes(&bytes, &path),
    ] {
        let err = result.unwrap_err();
        assert!(
            matches!(&err, Error::Npy { reason, .. } if reason.contains("header claims")),
            "{err}"
        );
    }
}

/// A 65-byte `.npy` whose header is nested brackets (`[{[[{[[[[[[[[{[…`): ndarray-npy's parser
/// backtracked for over 10 s (libFuzzer: timeout). Now refused at once, naming the problem.
#[test]
fn npy_header_nested_brackets() {
    let path = fixture("npy_nested_brackets_timeout.npy");
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 65);
    let err = unclip::npy::embeddings_from_bytes(&bytes, &path).unwrap_err();
    assert!(
        matches!(&err, Error::Npy { reason, .. } if reason.contains("nests brackets")),
        "{err}"
    );
}

/// A valid header declaring a shape far larger than its data.
#[test]
fn npy_shape_beyond_the_data() {
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000), }";
    let mut padded = header.to_string();
    while (10 + padded.len() + 1) % 64 != 0 {
        padded.push(' ');
    }
    padded.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(padded.len() as u16).to_le_bytes());
    bytes.extend_from_slice(padded.as_bytes());
    bytes.extend_from_slice(&[0u8; 16]);
    let err = unclip::npy::embeddings_from_bytes(&bytes, Path::new("big.npy")).unwrap_err();
    assert!(
        matches!(&err, Error::Npy { reason, .. } if reason.contains("declares 10000000000 values")),
        "{err}"
    );
    // The same header with its data is read.
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }";
    let mut padded = header.to_string();
    while (10 + padded.len() + 1) % 64 != 0 {
        padded.push(' ');
    }
    padded.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(padded.len() as u16).to_le_bytes());
    bytes.extend_from_slice(padded.as_bytes());
    for v in [1.0f32, 2.0, 3.0, 4.0] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let read = unclip::npy::embeddings_from_bytes(&bytes, Path::new("ok.npy")).unwrap();
    assert_eq!(read, ndarray::array![[1.0f32, 2.0], [3.0, 4.0]]);
}

/// The same header inside a PCA basis (`.npz`): its members now go through the checked `.npy`
/// reader too (they went straight to ndarray-npy's parser).
#[test]
fn npz_member_with_nested_brackets() {
    let bytes = std::fs::read(fixture("npy_nested_brackets_timeout.npy")).unwrap();
    let dir = std::env::temp_dir().join(format!("unclip-npz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("basis.npz");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for name in ["mean.npy", "components.npy", "explained_variance.npy"] {
        zip.start_file(name, options).unwrap();
        std::io::Write::write_all(&mut zip, &bytes).unwrap();
    }
    zip.finish().unwrap();
    let err = unclip::latent::Pca::load(&path).unwrap_err();
    assert!(
        matches!(&err, Error::Npy { reason, .. } if reason.starts_with("mean: ") && reason.contains("nests brackets")),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `capi_params` input (0xA5: runtime parameters): its struct_size, the u32 at bytes 2..6 modulo
/// `size_of + 64` as the harness takes it, ended inside a pointer field (`openvino_device` with
/// the ABI 3 struct, `openvino_cache_dir` with ABI 4's 88 bytes). The library copied that many
/// bytes, so the pointer was half the host's and half zeros: a SEGV in strlen under ASan. Now any
/// size between two ABI versions' sizes is refused: the input's size as of ABI 4, and every other
/// such size of today's struct (the modulo moves with each appended field).
#[test]
fn capi_runtime_params_struct_size_inside_a_pointer() {
    use std::ffi::CString;
    use unclip::capi::*;
    let bytes = std::fs::read(fixture("capi_runtime_params_torn_pointer.bin")).unwrap();
    assert_eq!(
        (bytes[0], bytes[1] % 4),
        (0xA5, 3),
        "the harness's arbitrary-size branch"
    );
    let found = u32::from_le_bytes(bytes[2..6].try_into().unwrap()) as usize % (88 + 64);
    assert_eq!(found, 68, "inside openvino_cache_dir (64..72)");
    let full = std::mem::size_of::<unclip_runtime_params>();
    let abi_sizes = [
        RUNTIME_PARAMS_V2_SIZE,
        RUNTIME_PARAMS_V3_SIZE,
        RUNTIME_PARAMS_V4_SIZE,
        full,
    ];
    let torn: Vec<usize> = (RUNTIME_PARAMS_V2_SIZE..full)
        .filter(|s| !abi_sizes.contains(s))
        .collect();
    assert!(torn.contains(&found));
    let plugin = CString::new("/nonexistent/plugin.so").unwrap();
    for size in torn {
        let mut params = unclip_runtime_params::default();
        unsafe { unclip_runtime_params_init(&mut params) };
        params.openvino_plugin_path = plugin.as_ptr();
        params.struct_size = size;
        let mut runtime = std::ptr::null_mut();
        let status = unsafe { unclip_runtime_create(&params, &mut runtime) };
        assert_eq!(
            status,
            unclip_status::UNCLIP_INVALID_ARGUMENT,
            "size {size}"
        );
        assert!(runtime.is_null());
        let message = unsafe { std::ffi::CStr::from_ptr(unclip_last_error_message()) };
        assert!(
            message.to_str().unwrap().contains("no ABI version's size"),
            "size {size}: {message:?}"
        );
    }
}
