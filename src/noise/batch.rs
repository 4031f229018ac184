//! [`BatchNoise`]: one noise source per group of rows, so requests batched together get exactly
//! the noise each would get alone (the server batches compatible requests with their own seeds).

use ndarray::{ArrayD, Axis};

use super::NoiseSource;
use crate::{Error, Result};

/// Splits every `(B, …)` draw into consecutive row groups, each drawn from its own source.
pub struct BatchNoise {
    groups: Vec<(usize, Box<dyn NoiseSource>)>,
}

impl BatchNoise {
    /// `groups`: (rows, source) in batch order.
    pub fn new(groups: Vec<(usize, Box<dyn NoiseSource>)>) -> Self {
        BatchNoise { groups }
    }

    /// Total rows.
    pub fn rows(&self) -> usize {
        self.groups.iter().map(|(n, _)| n).sum()
    }
}

impl NoiseSource for BatchNoise {
    fn randn(&mut self, shape: &[usize]) -> Result<ArrayD<f32>> {
        let rows = self.rows();
        if shape.first() != Some(&rows) {
            return Err(Error::Shape {
                what: "batched noise".into(),
                expected: format!("{rows} rows"),
                found: shape.to_vec(),
            });
        }
        let mut parts = Vec::with_capacity(self.groups.len());
        for (n, source) in &mut self.groups {
            let mut group_shape = shape.to_vec();
            group_shape[0] = *n;
            parts.push(source.randn(&group_shape)?);
        }
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        ndarray::concatenate(Axis(0), &views).map_err(|e| Error::Shape {
            what: format!("batched noise ({e})"),
            expected: format!("{shape:?}"),
            found: vec![parts.len()],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::TorchGenerator;

    #[test]
    fn groups_draw_what_they_would_alone() {
        let mut batch = BatchNoise::new(vec![
            (2, Box::new(TorchGenerator::new(1))),
            (1, Box::new(TorchGenerator::new(2))),
        ]);
        let (mut a, mut b) = (TorchGenerator::new(1), TorchGenerator::new(2));
        for _ in 0..2 {
            let drawn = batch.randn(&[3, 4]).unwrap();
            assert_eq!(
                drawn.slice(ndarray::s![0..2, ..]).into_dyn(),
                a.randn(&[2, 4]).unwrap()
            );
            assert_eq!(
                drawn.slice(ndarray::s![2..3, ..]).into_dyn(),
                b.randn(&[1, 4]).unwrap()
            );
        }
        assert!(batch.randn(&[2, 4]).is_err());
    }
}
