//! Noise sources (docs/architecture.md, "Noise"). The pipeline never owns an RNG: every random tensor comes from a
//! [`NoiseSource`] the caller passes, drawn in diffusers' order.
//!
//! - [`TorchGenerator`]: bit-exact with PyTorch's CPU generator (`--rng torch`), so a seed gives
//!   the image diffusers gives;
//! - [`FastNoise`]: the default, counter-based and parallel, the same on every platform;
//! - [`RecordedNoise`]: replays tensors (parity tests, DDIM inversion);
//! - [`SharedNoise`]: wraps another source so every row of a batch gets the same noise.

mod batch;
mod fast;
pub mod mathfun;
mod recorded;
mod shared;
mod torch;

use std::fmt;
use std::str::FromStr;

use ndarray::{ArrayD, IxDyn};

pub use batch::BatchNoise;
pub use fast::FastNoise;
pub use recorded::RecordedNoise;
pub use shared::SharedNoise;
pub use torch::TorchGenerator;

use crate::{Error, Result};

/// A source of standard normal f32 tensors.
pub trait NoiseSource: Send {
    /// Draws a tensor of `shape` (row-major) with i.i.d. N(0, 1) values.
    fn randn(&mut self, shape: &[usize]) -> Result<ArrayD<f32>>;
}

impl<T: NoiseSource + ?Sized> NoiseSource for &mut T {
    fn randn(&mut self, shape: &[usize]) -> Result<ArrayD<f32>> {
        (**self).randn(shape)
    }
}

impl<T: NoiseSource + ?Sized> NoiseSource for Box<T> {
    fn randn(&mut self, shape: &[usize]) -> Result<ArrayD<f32>> {
        (**self).randn(shape)
    }
}

/// A source for deterministic runs (DDIM inversion): any draw is an error, so a run that was
/// meant to be noiseless cannot silently become random.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoNoise;

impl NoiseSource for NoNoise {
    fn randn(&mut self, shape: &[usize]) -> Result<ArrayD<f32>> {
        Err(Error::invalid(
            "noise",
            format!("a deterministic run asked for noise of shape {shape:?}"),
        ))
    }
}

/// Which generator `--rng` selects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RngKind {
    /// Bit-exact with `torch.Generator("cpu")`.
    Torch,
    /// [`FastNoise`].
    #[default]
    Fast,
}

impl FromStr for RngKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "torch" => Ok(RngKind::Torch),
            "fast" => Ok(RngKind::Fast),
            other => Err(Error::invalid(
                "rng",
                format!("{other:?}: choose torch or fast"),
            )),
        }
    }
}

impl fmt::Display for RngKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RngKind::Torch => "torch",
            RngKind::Fast => "fast",
        })
    }
}

/// A seed for a run the caller gave none: different on every call (the clock through a randomly
/// keyed hash). Record it with the images: it is what reproduces them.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// A fresh generator of `kind` seeded with `seed`.
pub fn noise_source(kind: RngKind, seed: u64) -> Box<dyn NoiseSource> {
    match kind {
        RngKind::Torch => Box::new(TorchGenerator::new(seed)),
        RngKind::Fast => Box::new(FastNoise::new(seed)),
    }
}

/// Largest tensor a generator draws (elements): 4 × 3 × 1024² × 64 images.
const MAX_ELEMENTS: usize = 1 << 30;

fn numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, d| n.checked_mul(*d))
        .filter(|n| *n <= MAX_ELEMENTS)
        .ok_or_else(|| Error::invalid("noise shape", format!("{shape:?} is too large")))
}

fn into_array(shape: &[usize], data: Vec<f32>) -> Result<ArrayD<f32>> {
    ArrayD::from_shape_vec(IxDyn(shape), data)
        .map_err(|e| Error::invalid("noise shape", e.to_string()))
}
