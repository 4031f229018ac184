//! Training noise schedules (β₁ … β_T), computed exactly as diffusers computes them, so the
//! float32 tables of a Rust scheduler are bit-identical to the tensors of its diffusers twin.
//!
//! diffusers builds β in two ways:
//! - `squaredcos_cap_v2` (Nichol & Dhariwal 2021, "Improved DDPM", eq. 17): `betas_for_alpha_bar`
//!   in `schedulers/scheduling_ddpm.py` (copied into `scheduling_unclip.py`) evaluates the cosine
//!   ᾱ(t) in Python floats (f64) and only then rounds the list to a float32 tensor;
//! - `linear` and `scaled_linear`: `torch.linspace(..., dtype=torch.float32)` (`DDPMScheduler`,
//!   `DDIMScheduler`, `DPMSolverMultistepScheduler` `__init__`), i.e. float32 arithmetic.
//!
//! It also holds the two numpy ranges (`np.linspace`, `np.arange` with a float step) that the
//! schedulers' `set_timesteps` round into timesteps, reproduced to the last bit for the same
//! reason: a timestep one off is a different noise level.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Upper bound of a cosine-schedule β (`max_beta` of diffusers' `betas_for_alpha_bar`): without
/// it the last β would be 1 and ᾱ_T = 0 (a singular final step).
pub const MAX_BETA: f64 = 0.999;

/// The `beta_schedule` values of diffusers' scheduler configs that unclip knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum BetaSchedule {
    /// `torch.linspace(beta_start, beta_end, T)` (DDPM, Ho et al. 2020).
    #[serde(rename = "linear")]
    Linear,
    /// `torch.linspace(√beta_start, √beta_end, T) ** 2` (latent diffusion).
    #[serde(rename = "scaled_linear")]
    ScaledLinear,
    /// The capped cosine schedule of Improved DDPM; the only one `UnCLIPScheduler` accepts.
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

impl BetaSchedule {
    /// The name used in diffusers' JSON configs.
    pub fn as_str(self) -> &'static str {
        match self {
            BetaSchedule::Linear => "linear",
            BetaSchedule::ScaledLinear => "scaled_linear",
            BetaSchedule::SquaredcosCapV2 => "squaredcos_cap_v2",
        }
    }
}

/// The cosine ᾱ(t) of diffusers' `betas_for_alpha_bar` (`alpha_transform_type="cosine"`).
///
/// The operations keep diffusers' order, `(t + 0.008) / 1.008 * π / 2`, evaluated left to right in
/// f64, so the result is the same double Python computes.
fn cosine_alpha_bar(t: f64) -> f64 {
    let angle = (t + 0.008) / 1.008 * std::f64::consts::PI / 2.0;
    let c = angle.cos();
    c * c
}

/// `squaredcos_cap_v2` betas in f64, before any rounding to f32: diffusers'
/// `betas_for_alpha_bar(num_train_timesteps)` (`schedulers/scheduling_unclip.py`) up to its final
/// `torch.tensor(betas, dtype=torch.float32)`.
///
/// `t1 = i / T` and `t2 = (i + 1) / T` are float divisions. Several Rust ports divide integers
/// here, which makes every t1 zero and yields a wrong schedule (the test `integer_division_would_zero_t1` below).
pub fn squaredcos_cap_v2_f64(num_train_timesteps: usize) -> Vec<f64> {
    let steps = num_train_timesteps as f64;
    (0..num_train_timesteps)
        .map(|i| {
            let t1 = i as f64 / steps;
            let t2 = (i + 1) as f64 / steps;
            (1.0 - cosine_alpha_bar(t2) / cosine_alpha_bar(t1)).min(MAX_BETA)
        })
        .collect()
}

/// `squaredcos_cap_v2` betas as the float32 tensor diffusers stores (`UnCLIPScheduler.betas`):
/// [`squaredcos_cap_v2_f64`] rounded to nearest f32.
pub fn squaredcos_cap_v2(num_train_timesteps: usize) -> Vec<f32> {
    squaredcos_cap_v2_f64(num_train_timesteps)
        .into_iter()
        .map(|beta| beta as f32)
        .collect()
}

/// `torch.linspace(start, end, steps, dtype=torch.float32)` on the CPU, bit for bit.
///
/// ATen's `linspace_kernel` (`aten/src/ATen/native/cpu/RangeFactoriesKernel.cpp`) computes the
/// step in f32 and fills the first half forwards from `start` and the second half backwards from
/// `end`, so both endpoints are exact. x86 builds compile `start + step * i` to a fused
/// multiply-add (one rounding), which `mul_add` reproduces.
pub fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    match steps {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (end - start) / (steps - 1) as f32;
            let halfway = steps / 2;
            (0..steps)
                .map(|i| {
                    if i < halfway {
                        step.mul_add(i as f32, start)
                    } else {
                        (-step).mul_add((steps - 1 - i) as f32, end)
                    }
                })
                .collect()
        }
    }
}

/// `linear` betas: `torch.linspace(beta_start, beta_end, T, dtype=torch.float32)`
/// (`DDPMScheduler.__init__`). The Python floats become f32 before the arithmetic, as in torch.
pub fn linear(beta_start: f64, beta_end: f64, num_train_timesteps: usize) -> Vec<f32> {
    linspace_f32(beta_start as f32, beta_end as f32, num_train_timesteps)
}

/// `scaled_linear` betas: `torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=float32) ** 2`
/// (`DDIMScheduler.__init__`): square roots in f64 (Python), squares in f32 (torch).
pub fn scaled_linear(beta_start: f64, beta_end: f64, num_train_timesteps: usize) -> Vec<f32> {
    linspace_f32(
        beta_start.sqrt() as f32,
        beta_end.sqrt() as f32,
        num_train_timesteps,
    )
    .into_iter()
    .map(|root| root * root)
    .collect()
}

/// Betas of `schedule` for `num_train_timesteps` training steps; `beta_start`/`beta_end` are only
/// read by the linear schedules (diffusers ignores them for `squaredcos_cap_v2` too).
pub fn betas(
    schedule: BetaSchedule,
    num_train_timesteps: usize,
    beta_start: f64,
    beta_end: f64,
) -> Result<Vec<f32>> {
    if num_train_timesteps == 0 {
        return Err(Error::invalid(
            "num_train_timesteps",
            "must be at least 1 (diffusers' default is 1000)",
        ));
    }
    Ok(match schedule {
        BetaSchedule::Linear => linear(beta_start, beta_end, num_train_timesteps),
        BetaSchedule::ScaledLinear => scaled_linear(beta_start, beta_end, num_train_timesteps),
        BetaSchedule::SquaredcosCapV2 => squaredcos_cap_v2(num_train_timesteps),
    })
}

/// `self.alphas_cumprod` of `DDIMScheduler`, `DDIMInverseScheduler` and
/// `DPMSolverMultistepScheduler.__init__`: `torch.cumprod(1.0 - betas, dim=0)` in float32.
pub fn alphas_cumprod(
    schedule: BetaSchedule,
    num_train_timesteps: usize,
    beta_start: f64,
    beta_end: f64,
) -> Result<Vec<f32>> {
    let alphas: Vec<f32> = betas(schedule, num_train_timesteps, beta_start, beta_end)?
        .into_iter()
        .map(|beta| 1.0 - beta)
        .collect();
    Ok(cumprod_f32(&alphas))
}

/// Rejects the beta options of diffusers' `__init__` that unclip does not implement: explicit
/// `trained_betas` and `rescale_betas_zero_snr` (Lin et al. 2023, Algorithm 1). Karlo uses
/// neither; both are typed errors rather than silently different betas.
pub(crate) fn check_supported_options(
    class: &str,
    trained_betas: &Option<Vec<f64>>,
    rescale_betas_zero_snr: bool,
) -> Result<()> {
    if trained_betas.is_some() {
        return Err(Error::invalid(
            "trained_betas",
            format!("{class}: explicit trained_betas are not supported; use beta_schedule"),
        ));
    }
    if rescale_betas_zero_snr {
        return Err(Error::invalid(
            "rescale_betas_zero_snr",
            format!("{class}: zero-terminal-SNR rescaling is not supported; set it to false"),
        ));
    }
    Ok(())
}

/// `torch.cumprod(alphas, dim=0)` for a float32 tensor on the CPU.
///
/// ATen's CPU `cumprod` accumulates in `acc_type<float>` = f64 and rounds each partial product to
/// f32 (checked against torch 2.15: a running f32 product differs in 991 of 1000 entries of the
/// cosine schedule; the f64 accumulator matches all of them).
pub fn cumprod_f32(values: &[f32]) -> Vec<f32> {
    let mut product = 1.0f64;
    values
        .iter()
        .map(|&value| {
            product *= f64::from(value);
            product as f32
        })
        .collect()
}

/// `np.linspace(start, stop, num)` (float64, `endpoint=True`), bit for bit.
///
/// numpy's `linspace` (`numpy/_core/function_base.py`) computes `step = (stop − start)/(num − 1)`,
/// then `arange(num) * step + start`, and finally overwrites the last entry with `stop`; `num = 1`
/// gives `[start]`.
pub fn numpy_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    match num {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (stop - start) / (num - 1) as f64;
            let mut values: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
            values[num - 1] = stop;
            values
        }
    }
}

/// `np.arange(start, stop, step)` with a float step (float64), bit for bit, including its length.
///
/// numpy (`PyArray_ArangeObj`, `numpy/_core/src/multiarray/ctors.c`) takes
/// `ceil((stop − start)/step)` elements, stores `start` and `start + step`, and fills the rest with
/// `start + i·delta` where `delta = (start + step) − start` (`DOUBLE_fill`). The ceiling is why a
/// step like 1000/61 yields one element more than 1000/step suggests: the quotient rounds to a
/// hair above 61, and the extra element even lies past `stop` (−5.7e-13), because `delta` is not
/// `step` (see [`crate::schedulers::TimestepSpacing::Trailing`]).
pub fn numpy_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let length = ((stop - start) / step).ceil();
    if !(length.is_finite() && length > 0.0) {
        return Vec::new();
    }
    let length = length as usize;
    let second = start + step;
    let delta = second - start;
    (0..length)
        .map(|i| match i {
            0 => start,
            1 => second,
            _ => start + i as f64 * delta,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_division_would_zero_t1() {
        // The known bug of other ports: with integer division every t1 is 0 and β_0 = 1 − ᾱ(1/T)/ᾱ(0)
        // is repeated; the first two betas must differ.
        let b = squaredcos_cap_v2_f64(1000);
        assert!(b[1] > b[0]);
        assert_eq!(b[999], MAX_BETA);
    }

    #[test]
    fn linspace_endpoints_are_exact() {
        let v = linspace_f32(0.0001, 0.02, 1000);
        assert_eq!(v[0], 0.0001f32);
        assert_eq!(v[999], 0.02f32);
        assert_eq!(linspace_f32(3.0, 4.0, 1), vec![3.0]);
        assert!(linspace_f32(3.0, 4.0, 0).is_empty());
    }

    #[test]
    fn numpy_arange_overshoots_like_numpy() {
        // np.arange(1000, 0, -1000/61) has 62 elements, the last −5.7e-13 (past the stop)
        let values = numpy_arange(1000.0, 0.0, -1000.0 / 61.0);
        assert_eq!(values.len(), 62);
        assert_eq!(values[61], -5.684341886080801e-13);
        assert_eq!(numpy_arange(1000.0, 0.0, -1000.0 / 7.0).len(), 7);
        assert!(numpy_arange(0.0, 1.0, -1.0).is_empty());
        assert_eq!(numpy_linspace(0.0, 999.0, 1), vec![0.0]);
        assert_eq!(numpy_linspace(0.0, 999.0, 4)[3], 999.0);
    }
}
