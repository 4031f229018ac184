//! `.npy` files: image embeddings in and out (`--image-embedding`, `--save-image-embedding`) and
//! intermediates (`--dump`), with typed errors naming the file.

use std::path::Path;

use ndarray::{Array2, ArrayD};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};

use crate::tensor::Tensor;
use crate::{Error, Result};

fn npy_error(action: &'static str, path: &Path, reason: impl ToString) -> Error {
    Error::Npy {
        action,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Reads a float32 array of any rank.
pub fn read_f32(path: &Path) -> Result<ArrayD<f32>> {
    let bytes = std::fs::read(path).map_err(|e| npy_error("read", path, e))?;
    f32_from_bytes(&bytes, path)
}

/// A float32 array from `.npy` bytes, with the header checked against the data first: a header
/// that declares more than the bytes hold is an error, not an allocation (found by fuzzing:
/// `fuzz/` target `npy_embeddings`).
pub fn f32_from_bytes(bytes: &[u8], name: &Path) -> Result<ArrayD<f32>> {
    check_header(bytes).map_err(|reason| npy_error("read", name, reason))?;
    ArrayD::<f32>::read_npy(std::io::Cursor::new(bytes)).map_err(|e| {
        npy_error(
            "read",
            name,
            format!("{e} (expected a float32 array in C order)"),
        )
    })
}

/// Brackets a `.npy` header may nest: the dict and its shape tuple, with room for a structured
/// dtype's list of tuples (which the reader then refuses as not float32).
const MAX_HEADER_NESTING: usize = 4;

/// Checks the `.npy` preamble (NEP 1): magic, version 1–3, a header inside the file, and a
/// declared `shape` whose float32 data fits in what follows.
fn check_header(bytes: &[u8]) -> std::result::Result<(), String> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (no \\x93NUMPY magic)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let end = start
        .checked_add(header_len)
        .filter(|&end| end <= bytes.len() && header_len <= 1 << 20)
        .ok_or_else(|| format!("the header claims {header_len} bytes, the file is shorter"))?;
    let header = std::str::from_utf8(&bytes[start..end])
        .map_err(|_| "the header is not text".to_string())?;
    // A NumPy header is a flat dict with one tuple in it. ndarray-npy's Python-literal parser
    // backtracks exponentially on nested brackets (65 bytes of `[{[[{[…` took over 10 s; found
    // by fuzzing), so deeper nesting is refused before it parses.
    let mut depth = 0usize;
    for c in header.chars() {
        match c {
            '{' | '[' | '(' => {
                depth += 1;
                if depth > MAX_HEADER_NESTING {
                    return Err(format!(
                        "the header nests brackets over {MAX_HEADER_NESTING} deep (a .npy header \
                         is a flat dict like {{'descr': '<f4', 'fortran_order': False, 'shape': (1, 768)}})"
                    ));
                }
            }
            '}' | ']' | ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    let shape = header
        .split_once("'shape':")
        .and_then(|(_, rest)| rest.trim_start().strip_prefix('('))
        .and_then(|rest| rest.split_once(')'))
        .map(|(dims, _)| dims)
        .ok_or_else(|| "the header has no shape".to_string())?;
    let mut count: u64 = 1;
    for dim in shape.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let dim: u64 = dim
            .parse()
            .map_err(|_| format!("shape entry {dim:?} is not an integer"))?;
        count = count
            .checked_mul(dim)
            .ok_or_else(|| "the shape overflows".to_string())?;
    }
    let data = (bytes.len() - end) as u64;
    if count.checked_mul(4).is_none_or(|need| need > data) {
        return Err(format!(
            "the header declares {count} values, the file holds {} bytes of data",
            data
        ));
    }
    Ok(())
}

/// Reads CLIP image embeddings: `(D,)` or `(N, D)` float32, finite.
pub fn read_embeddings(path: &Path) -> Result<Array2<f32>> {
    embeddings_from(read_f32(path)?, path)
}

/// [`read_embeddings`] from `.npy` bytes in memory (`name` is used in errors).
pub fn embeddings_from_bytes(bytes: &[u8], name: &Path) -> Result<Array2<f32>> {
    embeddings_from(f32_from_bytes(bytes, name)?, name)
}

fn embeddings_from(array: ArrayD<f32>, path: &Path) -> Result<Array2<f32>> {
    let shape = array.shape().to_vec();
    let embeddings = match shape.len() {
        1 => array
            .into_shape_with_order((1, shape[0]))
            .map_err(|e| npy_error("read", path, e))?,
        2 => array
            .into_dimensionality()
            .map_err(|e| npy_error("read", path, e))?,
        _ => {
            return Err(Error::Shape {
                what: format!("image embeddings in {}", path.display()),
                expected: "(D,) or (N, D)".into(),
                found: shape,
            })
        }
    };
    if embeddings.iter().any(|x| !x.is_finite()) {
        return Err(Error::NonFinite {
            what: format!("image embeddings in {}", path.display()),
        });
    }
    Ok(embeddings)
}

/// Writes a tensor (f32 or i64).
pub fn write(path: &Path, tensor: &Tensor) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let writer = std::io::BufWriter::new(file);
    match tensor {
        Tensor::F32(a) => a.write_npy(writer),
        Tensor::I64(a) => a.write_npy(writer),
    }
    .map_err(|e| npy_error("write", path, e))
}
