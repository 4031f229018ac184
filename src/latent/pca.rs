//! PCA probing of CLIP image embeddings (DALL·E 2 §3.4): fit principal components on a set of
//! embeddings, reconstruct an embedding from its first k components, decode each
//! reconstruction with the same noise to see what the leading directions encode.
//!
//! The decomposition is nalgebra's SVD of the centered data matrix (no hand-written eigen
//! solver); components come out sorted by decreasing singular value, as scikit-learn's `PCA`.
//! The basis is stored as a `.npz` with `mean` (D,), `components` (K, D) and
//! `explained_variance` (K,), the same names and layout as scikit-learn's attributes.

use std::path::Path;

use nalgebra::DMatrix;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use ndarray_npy::NpzWriter;

use crate::{Error, Result};

/// A fitted PCA basis.
#[derive(Debug, Clone, PartialEq)]
pub struct Pca {
    /// Mean of the fitted embeddings, `(D,)`.
    pub mean: Array1<f32>,
    /// Orthonormal principal directions, `(K, D)`, by decreasing explained variance.
    pub components: Array2<f32>,
    /// Variance along each component (`s² / (N − 1)`), `(K,)`.
    pub explained_variance: Array1<f32>,
}

/// Largest array a PCA basis file may hold (a 4096 × 4096 float32 basis is 64 MiB).
const MAX_NPZ_MEMBER_BYTES: u64 = 256 << 20;

impl Pca {
    /// Fits on `embeddings` `(N, D)`, N ≥ 2. Keeps `min(N, D)` components.
    pub fn fit(embeddings: ArrayView2<'_, f32>) -> Result<Pca> {
        let (n, d) = embeddings.dim();
        if n < 2 || d == 0 {
            return Err(Error::invalid(
                "PCA data",
                format!("{n} embeddings of dimension {d}: need at least 2 embeddings"),
            ));
        }
        if embeddings.iter().any(|x| !x.is_finite()) {
            return Err(Error::NonFinite {
                what: "PCA data".into(),
            });
        }
        let data = embeddings.mapv(f64::from);
        let mean = data
            .mean_axis(Axis(0))
            .ok_or_else(|| Error::invalid("PCA data", "no rows"))?;
        let centered = &data - &mean;
        let matrix = DMatrix::from_row_iterator(n, d, centered.iter().copied());
        let svd = matrix.svd(false, true);
        let v_t = svd
            .v_t
            .ok_or_else(|| Error::invalid("PCA data", "the SVD did not converge"))?;
        let mut order: Vec<usize> = (0..svd.singular_values.len()).collect();
        order.sort_by(|&a, &b| svd.singular_values[b].total_cmp(&svd.singular_values[a]));
        let k = order.len();
        let mut components = Array2::<f32>::zeros((k, d));
        let mut explained_variance = Array1::<f32>::zeros(k);
        for (row, &i) in order.iter().enumerate() {
            for j in 0..d {
                components[[row, j]] = v_t[(i, j)] as f32;
            }
            explained_variance[row] = (svd.singular_values[i].powi(2) / (n - 1) as f64) as f32;
        }
        Ok(Pca {
            mean: mean.mapv(|x| x as f32),
            components,
            explained_variance,
        })
    }

    /// Embedding dimension D.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Number of components K.
    pub fn num_components(&self) -> usize {
        self.components.nrows()
    }

    /// Coordinates of `z` on every component: `C (z − μ)`, `(K,)`.
    pub fn project(&self, z: ArrayView1<'_, f32>) -> Result<Array1<f32>> {
        self.check(z)?;
        let centered = z.mapv(f64::from) - self.mean.mapv(f64::from);
        Ok(self
            .components
            .outer_iter()
            .map(|c| {
                c.iter()
                    .zip(&centered)
                    .map(|(a, b)| *a as f64 * b)
                    .sum::<f64>() as f32
            })
            .collect())
    }

    /// `z` rebuilt from its first `k` components: `μ + Σ_{i<k} ⟨z − μ, c_i⟩ c_i`. `k = 0` gives
    /// the mean; `k = K` gives `z` back when `z` lies in the span of the fitted data.
    pub fn reconstruct(&self, z: ArrayView1<'_, f32>, k: usize) -> Result<Array1<f32>> {
        if k > self.num_components() {
            return Err(Error::invalid(
                "PCA components",
                format!(
                    "{k} requested, the basis has {} (fit on more embeddings for more)",
                    self.num_components()
                ),
            ));
        }
        let coords = self.project(z)?;
        let mut out = self.mean.mapv(f64::from);
        for (c, &w) in self.components.outer_iter().zip(&coords).take(k) {
            out.zip_mut_with(&c, |o, &ci| *o += w as f64 * ci as f64);
        }
        Ok(out.mapv(|x| x as f32))
    }

    /// Writes the basis as `.npz` (`mean`, `components`, `explained_variance`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        let npz_error = |e: &dyn std::fmt::Display| Error::Npy {
            action: "write",
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let mut npz = NpzWriter::new(std::io::BufWriter::new(file));
        npz.add_array("mean", &self.mean)
            .map_err(|e| npz_error(&e))?;
        npz.add_array("components", &self.components)
            .map_err(|e| npz_error(&e))?;
        npz.add_array("explained_variance", &self.explained_variance)
            .map_err(|e| npz_error(&e))?;
        npz.finish().map_err(|e| npz_error(&e))?;
        Ok(())
    }

    /// Reads a basis written by [`Pca::save`] (or by numpy: `np.savez(path, mean=…,
    /// components=…, explained_variance=…)` with float32 arrays), checking shapes and values.
    pub fn load(path: &Path) -> Result<Pca> {
        let bad = |reason: String| Error::Npy {
            action: "read",
            path: path.to_path_buf(),
            reason,
        };
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // Each member goes through the same checked `.npy` reader as embeddings (header length,
        // nesting and declared shape checked before ndarray-npy parses: found by fuzzing).
        let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
            .map_err(|e| bad(format!("{e} (expected a .npz written by `unclip pca`)")))?;
        let mut array = |name: &str| -> Result<ndarray::ArrayD<f32>> {
            let expected = "expected float32 arrays mean, components, explained_variance";
            let member = zip
                .index_for_name(&format!("{name}.npy"))
                .or_else(|| zip.index_for_name(name))
                .ok_or_else(|| bad(format!("{name}: missing ({expected})")))?;
            let mut entry = zip
                .by_index(member)
                .map_err(|e| bad(format!("{name}: {e}")))?;
            if entry.size() > MAX_NPZ_MEMBER_BYTES {
                return Err(bad(format!(
                    "{name}: {} bytes, over the {MAX_NPZ_MEMBER_BYTES}-byte limit for a PCA basis",
                    entry.size()
                )));
            }
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            std::io::Read::read_to_end(
                &mut std::io::Read::take(&mut entry, MAX_NPZ_MEMBER_BYTES),
                &mut bytes,
            )
            .map_err(|e| bad(format!("{name}: {e}")))?;
            crate::npy::f32_from_bytes(&bytes, path).map_err(|e| match e {
                Error::Npy { reason, .. } => bad(format!("{name}: {reason} ({expected})")),
                other => other,
            })
        };
        let mean = array("mean")?;
        let components = array("components")?;
        let explained = array("explained_variance")?;
        let mean: Array1<f32> = mean
            .into_dimensionality()
            .map_err(|_| bad("mean is not a vector".into()))?;
        let components: Array2<f32> = components
            .into_dimensionality()
            .map_err(|_| bad("components is not a matrix".into()))?;
        let explained_variance: Array1<f32> = explained
            .into_dimensionality()
            .map_err(|_| bad("explained_variance is not a vector".into()))?;
        if components.ncols() != mean.len()
            || explained_variance.len() != components.nrows()
            || mean.is_empty()
        {
            return Err(bad(format!(
                "shapes do not agree: mean {:?}, components {:?}, explained_variance {:?}",
                mean.shape(),
                components.shape(),
                explained_variance.shape()
            )));
        }
        if mean
            .iter()
            .chain(components.iter())
            .chain(explained_variance.iter())
            .any(|x| !x.is_finite())
        {
            return Err(Error::NonFinite {
                what: format!("PCA basis {}", path.display()),
            });
        }
        Ok(Pca {
            mean,
            components,
            explained_variance,
        })
    }

    fn check(&self, z: ArrayView1<'_, f32>) -> Result<()> {
        if z.len() != self.dim() {
            return Err(Error::Shape {
                what: "embedding to probe".into(),
                expected: format!("({},) like the PCA basis", self.dim()),
                found: vec![z.len()],
            });
        }
        if z.iter().any(|x| !x.is_finite()) {
            return Err(Error::NonFinite {
                what: "embedding to probe".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic data with decreasing variance per direction.
    fn data(n: usize, d: usize) -> Array2<f32> {
        Array2::from_shape_fn((n, d), |(i, j)| {
            let x = ((i as f32 * 12.9898 + j as f32 * 78.233).sin() * 43758.547).fract() - 0.5;
            x * (d - j) as f32 + 0.25 * j as f32
        })
    }

    fn distance(a: &Array1<f32>, b: ArrayView1<'_, f32>) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
            .sum::<f64>()
            .sqrt()
    }

    #[test]
    fn reconstruction_error_falls_to_zero_at_full_rank() {
        let (n, d) = (40, 12);
        let x = data(n, d);
        let pca = Pca::fit(x.view()).unwrap();
        assert_eq!(pca.num_components(), d);
        // Orthonormal components, variances sorted and summing to the total variance.
        let gram = pca.components.dot(&pca.components.t());
        for i in 0..d {
            for j in 0..d {
                let expected = if i == j { 1.0 } else { 0.0 };
                assert!((gram[[i, j]] - expected).abs() < 1e-5);
            }
        }
        assert!(pca
            .explained_variance
            .windows(2)
            .into_iter()
            .all(|w| w[0] >= w[1]));
        let mean = x.mean_axis(Axis(0)).unwrap();
        let total: f64 = x
            .outer_iter()
            .map(|r| distance(&mean, r).powi(2))
            .sum::<f64>()
            / (n - 1) as f64;
        let explained: f64 = pca.explained_variance.iter().map(|&v| v as f64).sum();
        assert!((explained - total).abs() < 1e-4 * total);
        for row in [0, 17, 39] {
            let z = x.row(row);
            let errors: Vec<f64> = (0..=d)
                .map(|k| distance(&pca.reconstruct(z, k).unwrap(), z))
                .collect();
            assert!(errors.windows(2).all(|w| w[1] <= w[0] + 1e-6), "{errors:?}");
            assert!(errors[d] < 1e-4, "k = D error {}", errors[d]);
            assert!(errors[0] > 1.0);
        }
        assert!(pca.reconstruct(x.row(0), d + 1).is_err());
        assert!(pca.reconstruct(Array1::zeros(d + 1).view(), 1).is_err());
    }

    #[test]
    fn first_component_finds_the_dominant_direction() {
        // Points on a line along (3, 4)/5 plus tiny noise.
        let x = Array2::from_shape_fn((20, 2), |(i, j)| {
            let t = i as f32 - 10.0;
            let noise = if (i + j) % 2 == 0 { 1e-3 } else { -1e-3 };
            t * [0.6, 0.8][j] + noise
        });
        let pca = Pca::fit(x.view()).unwrap();
        let c = pca.components.row(0);
        assert!((c[0].abs() - 0.6).abs() < 1e-3 && (c[1].abs() - 0.8).abs() < 1e-3);
        assert!(pca.explained_variance[0] > 1e4 * pca.explained_variance[1]);
    }

    #[test]
    fn save_load_round_trip_and_bad_input() {
        let pca = Pca::fit(data(10, 6).view()).unwrap();
        let dir = std::env::temp_dir().join(format!("unclip-pca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("basis.npz");
        pca.save(&path).unwrap();
        assert_eq!(Pca::load(&path).unwrap(), pca);
        std::fs::write(dir.join("bad.npz"), b"not a zip").unwrap();
        assert!(matches!(
            Pca::load(&dir.join("bad.npz")),
            Err(Error::Npy { .. })
        ));
        assert!(Pca::load(&dir.join("missing.npz")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(Pca::fit(data(1, 6).view()).is_err());
        let mut nan = data(4, 3);
        nan[[1, 1]] = f32::NAN;
        assert!(matches!(Pca::fit(nan.view()), Err(Error::NonFinite { .. })));
    }
}
