//! The fast default generator: counter-based, parallel, identical on every platform and for
//! every thread count.
//!
//! Algorithm (stable; changing it changes every image of a seed, so it is versioned here as
//! `fast-v1`): call `c` (0, 1, 2, … per generator) has key `k = mix(seed ⊕ mix(c + 1))`, with
//! `mix` SplitMix64's finalizer. Output pair `p` of the call comes from `w = mix(k + (p + 1) ·
//! 0x9E3779B97F4A7C15)`: `u1 = (w & 0xFFFFFF)·2⁻²⁴`, `u2 = ((w >> 32) & 0xFFFFFF)·2⁻²⁴`, and
//! Box–Muller with the polynomial log/sincos of [`super::mathfun`] (plain f32 arithmetic and
//! IEEE fused multiply-adds: no platform libm) gives elements `2p` and `2p + 1`. Elements are
//! independent of each other, so chunks are filled in parallel with rayon.

use ndarray::ArrayD;
use rayon::prelude::*;

use super::{mathfun, NoiseSource};
use crate::Result;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
/// Pairs per parallel chunk (small tensors stay on the calling thread).
const CHUNK_PAIRS: usize = 1 << 14;

/// SplitMix64's output function (Steele, Lea, Flood 2014).
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The fast generator (`--rng fast`).
#[derive(Clone, Debug)]
pub struct FastNoise {
    seed: u64,
    calls: u64,
}

impl FastNoise {
    pub fn new(seed: u64) -> Self {
        FastNoise { seed, calls: 0 }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }
}

#[inline]
fn pair(key: u64, p: usize) -> (f32, f32) {
    let w = mix(key.wrapping_add((p as u64 + 1).wrapping_mul(GOLDEN)));
    let scale = 1.0 / (1u32 << 24) as f32;
    let u1 = (w & 0x00ff_ffff) as f32 * scale;
    let u2 = ((w >> 32) & 0x00ff_ffff) as f32 * scale;
    mathfun::box_muller(u1, u2)
}

fn fill(key: u64, first_pair: usize, out: &mut [f32]) {
    for (k, chunk) in out.chunks_mut(2).enumerate() {
        let (a, b) = pair(key, first_pair + k);
        chunk[0] = a;
        if chunk.len() > 1 {
            chunk[1] = b;
        }
    }
}

impl NoiseSource for FastNoise {
    fn randn(&mut self, shape: &[usize]) -> Result<ArrayD<f32>> {
        let n = super::numel(shape)?;
        self.calls += 1;
        let key = mix(self.seed ^ mix(self.calls));
        let mut data = vec![0.0f32; n];
        if n <= 2 * CHUNK_PAIRS {
            fill(key, 0, &mut data);
        } else {
            data.par_chunks_mut(2 * CHUNK_PAIRS)
                .enumerate()
                .for_each(|(c, chunk)| fill(key, c * CHUNK_PAIRS, chunk));
        }
        super::into_array(shape, data)
    }
}
