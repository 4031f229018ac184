//! `torch.Generator("cpu").manual_seed(seed)` + `torch.randn(shape, dtype=float32)`, bit for bit
//! (docs/architecture.md, "The torch-compatible RNG"; PyTorch `aten/src/ATen/core/TransformationHelper.h`,
//! `native/cpu/DistributionTemplates.h` `normal_fill`/`normal_fill_16_AVX2`,
//! `core/DistributionsHelper.h` `normal_distribution<double>`).

use ndarray::ArrayD;
use rand_mt::Mt19937GenRand32;

use super::{mathfun, NoiseSource};
use crate::Result;

/// PyTorch's CPU generator: MT19937 seeded with the low 32 bits of the seed, plus the cached
/// second Box–Muller sample of the scalar path.
#[derive(Clone)]
pub struct TorchGenerator {
    engine: Mt19937GenRand32,
    seed: u64,
    cached_normal: Option<f64>,
}

impl std::fmt::Debug for TorchGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchGenerator")
            .field("seed", &self.seed)
            .finish()
    }
}

impl TorchGenerator {
    /// `torch.Generator("cpu").manual_seed(seed)`.
    pub fn new(seed: u64) -> Self {
        TorchGenerator {
            engine: Mt19937GenRand32::new(seed as u32),
            seed,
            cached_normal: None,
        }
    }

    /// The seed given at construction.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn random(&mut self) -> u32 {
        self.engine.next_u32()
    }

    /// `random64()`: two outputs, high word first.
    fn random64(&mut self) -> u64 {
        let hi = self.random() as u64;
        let lo = self.random() as u64;
        (hi << 32) | lo
    }

    /// float32 uniform in [0, 1): 24 random bits.
    fn uniform_f32(&mut self) -> f32 {
        (self.random() & 0x00ff_ffff) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// float64 uniform in [0, 1): 53 random bits.
    fn uniform_f64(&mut self) -> f64 {
        (self.random64() & ((1u64 << 53) - 1)) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// One sample of `normal_distribution<double>` (the path for tensors of < 16 elements).
    fn normal_f64(&mut self) -> f64 {
        if let Some(cached) = self.cached_normal.take() {
            return cached;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.cached_normal = Some(r * theta.sin());
        r * theta.cos()
    }

    /// Fills `data` as torch's vectorized kernel does (n ≥ 16).
    fn fill_vectorized(&mut self, data: &mut [f32]) {
        let n = data.len();
        for x in data.iter_mut() {
            *x = self.uniform_f32();
        }
        let mut i = 0;
        while i + 16 <= n {
            transform_block(&mut data[i..i + 16]);
            i += 16;
        }
        if n % 16 != 0 {
            // The tail is redone on the last 16 slots with fresh uniforms.
            let tail = &mut data[n - 16..];
            for x in tail.iter_mut() {
                *x = self.uniform_f32();
            }
            transform_block(tail);
        }
    }
}

/// Box–Muller on one block of 16 uniforms: pairs (j, j + 8).
fn transform_block(block: &mut [f32]) {
    for j in 0..8 {
        let (n1, n2) = mathfun::box_muller(block[j], block[j + 8]);
        block[j] = n1;
        block[j + 8] = n2;
    }
}

impl NoiseSource for TorchGenerator {
    fn randn(&mut self, shape: &[usize]) -> Result<ArrayD<f32>> {
        let n = super::numel(shape)?;
        let mut data = vec![0.0f32; n];
        if n >= 16 {
            self.fill_vectorized(&mut data);
        } else {
            for x in data.iter_mut() {
                *x = self.normal_f64() as f32;
            }
        }
        super::into_array(shape, data)
    }
}
