//! [`SharedNoise`]: one noise draw for a whole batch, so every row of a batch sees the noise a
//! batch of one would see. Interpolations, text diffs and PCA probes decode many embeddings with
//! the decoder noise fixed across frames (DALL·E 2 §3.2), in one batched call.

use ndarray::{ArrayD, Axis};

use super::NoiseSource;
use crate::{Error, Result};

/// Draws `(1, …)` from the inner source for every `(B, …)` request and repeats it `B` times.
///
/// Row `k` of a batch run through `SharedNoise` therefore equals a batch-of-one run with the same
/// inner source (same seed), whatever `B` is: the draws happen in the same order with the same
/// shapes.
pub struct SharedNoise<S> {
    inner: S,
}

impl<S: NoiseSource> SharedNoise<S> {
    pub fn new(inner: S) -> Self {
        SharedNoise { inner }
    }

    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: NoiseSource> NoiseSource for SharedNoise<S> {
    fn randn(&mut self, shape: &[usize]) -> Result<ArrayD<f32>> {
        let Some((&batch, rest)) = shape.split_first() else {
            return Err(Error::invalid(
                "noise shape",
                "shared noise needs a batch dimension",
            ));
        };
        let mut one = Vec::with_capacity(shape.len());
        one.push(1);
        one.extend_from_slice(rest);
        let row = self.inner.randn(&one)?;
        let views = vec![row.view(); batch];
        ndarray::concatenate(Axis(0), &views).map_err(|e| Error::Shape {
            what: format!("shared noise ({e})"),
            expected: format!("{shape:?}"),
            found: row.shape().to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::TorchGenerator;

    #[test]
    fn rows_repeat_a_batch_of_one() {
        let mut shared = SharedNoise::new(TorchGenerator::new(7));
        let mut single = TorchGenerator::new(7);
        for shape in [[3usize, 2, 4], [5, 1, 3]] {
            let batch = shared.randn(&shape).unwrap();
            let one = single.randn(&[1, shape[1], shape[2]]).unwrap();
            assert_eq!(batch.shape(), &shape);
            for row in batch.axis_iter(Axis(0)) {
                assert_eq!(row, one.index_axis(Axis(0), 0));
            }
        }
        assert!(shared.randn(&[]).is_err());
    }
}
