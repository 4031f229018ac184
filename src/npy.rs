//! `.npy` files: image embeddings in and out (`--image-embedding`, `--save-image-embedding`) and
//! intermediates (`--dump`), with typed errors naming the file.

use std::path::Path;

use ndarray::{Array2, ArrayD};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};

use crate::pipeline::Tensor;
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
    let file = std::fs::File::open(path).map_err(|e| npy_error("read", path, e))?;
    ArrayD::<f32>::read_npy(std::io::BufReader::new(file)).map_err(|e| {
        npy_error(
            "read",
            path,
            format!("{e} (expected a float32 array in C order)"),
        )
    })
}

/// Reads CLIP image embeddings: `(D,)` or `(N, D)` float32, finite.
pub fn read_embeddings(path: &Path) -> Result<Array2<f32>> {
    let array = read_f32(path)?;
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
