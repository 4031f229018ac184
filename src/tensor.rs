//! [`Tensor`]: an array of one of the element types the models exchange. The bottom of the
//! crate: it imports nothing from it, so every layer (npy files, noise, stages, the pipeline) can
//! use it.

use ndarray::ArrayD;

/// A tensor of either element type the models use (kept for `--dump`, read from `.npy`).
#[derive(Clone, Debug)]
pub enum Tensor {
    F32(ArrayD<f32>),
    I64(ArrayD<i64>),
}
