//! Noise replayed from tensors recorded elsewhere (diffusers reference dumps, `--dump`).

use std::collections::VecDeque;
use std::path::Path;

use ndarray::ArrayD;

use super::NoiseSource;
use crate::{Error, Result};

/// Returns recorded tensors in order; each draw must ask for the recorded shape.
#[derive(Clone, Debug, Default)]
pub struct RecordedNoise {
    tensors: VecDeque<ArrayD<f32>>,
    drawn: usize,
}

impl RecordedNoise {
    pub fn from_arrays(tensors: Vec<ArrayD<f32>>) -> Self {
        RecordedNoise {
            tensors: tensors.into(),
            drawn: 0,
        }
    }

    /// Reads `noise_000.npy`, `noise_001.npy`, … from `dir` until the first missing index.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let mut tensors = Vec::new();
        loop {
            let path = dir.join(format!("noise_{:03}.npy", tensors.len()));
            if !path.exists() {
                break;
            }
            tensors.push(crate::npy::read_f32(&path)?);
        }
        if tensors.is_empty() {
            return Err(Error::RecordedNoise(format!(
                "no noise_000.npy in {}",
                dir.display()
            )));
        }
        Ok(Self::from_arrays(tensors))
    }

    /// Tensors not drawn yet.
    pub fn remaining(&self) -> usize {
        self.tensors.len()
    }
}

impl NoiseSource for RecordedNoise {
    fn randn(&mut self, shape: &[usize]) -> Result<ArrayD<f32>> {
        let index = self.drawn;
        let next = self.tensors.front().ok_or_else(|| {
            Error::RecordedNoise(format!(
                "draw {index} of shape {shape:?} asked for, but only {index} tensors were recorded"
            ))
        })?;
        if next.shape() != shape {
            return Err(Error::RecordedNoise(format!(
                "draw {index}: recorded shape {:?}, asked for {shape:?} (different settings than when recorded?)",
                next.shape()
            )));
        }
        self.drawn += 1;
        Ok(self.tensors.pop_front().expect("checked above"))
    }
}
