//! `DDIMScheduler` (Song et al. 2021, "Denoising Diffusion Implicit Models", eqs. 12 and 16) as
//! diffusers 0.42.1 implements it in `schedulers/scheduling_ddim.py`, with η.
//!
//! Precision follows torch as in `unclip.rs`: f32 tables (`betas.rs`), per-step coefficients as
//! f32 0-d tensor arithmetic in diffusers' order, one rounding per elementwise torch operation
//! (no fused multiply-add).
//!
//! Two behaviours of diffusers that look like slips but are kept, because parity is the point:
//! - a step from `t` lands on `t − T/N` (integer division), not on the next timestep of the list.
//!   With `leading` spacing they agree; with `linspace` and `trailing` they do not (N = 25,
//!   linspace: 999 steps to 959 while the next model call is at 957), and with `trailing` the
//!   last step lands on `alphas_cumprod[0]` rather than on `final_alpha_cumprod`;
//! - with η > 0 diffusers draws one noise tensor on every step, the last one included (where
//!   σ_t = 0 when it lands on ᾱ = 1), so a replay of diffusers' noise stays aligned.

use ndarray::{ArrayD, ArrayViewD, Zip};
use serde::{Deserialize, Serialize};

use super::betas::{self, BetaSchedule};
use super::{
    checked_timesteps, draw_noise, serialize_prediction_type, timestep_at,
    without_learned_variance, PredictionType, Scheduler, TimestepSpacing,
};
use crate::noise::NoiseSource;
use crate::{Error, Result};

/// `DDIMScheduler`'s config, field for field and default for default as `DDIMScheduler.__init__`,
/// plus unclip's `eta`. Unknown keys (`_class_name`, `variance_type` of a converted
/// `UnCLIPScheduler` config, …) are ignored, as diffusers' `ConfigMixin` ignores them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct DDIMSchedulerConfig {
    /// Number of diffusion steps the model was trained with.
    pub num_train_timesteps: usize,
    /// First β of the `linear` / `scaled_linear` schedules (unused by `squaredcos_cap_v2`).
    pub beta_start: f64,
    /// Last β of the `linear` / `scaled_linear` schedules.
    pub beta_end: f64,
    /// diffusers' default is `linear`; Karlo's converted configs carry `squaredcos_cap_v2`.
    pub beta_schedule: BetaSchedule,
    /// Not supported: [`DDIMScheduler::new`] rejects a value.
    pub trained_betas: Option<Vec<f64>>,
    /// Clamp the predicted x₀ to `±clip_sample_range`.
    pub clip_sample: bool,
    /// The ᾱ a step below timestep 0 lands on: 1 (`true`), or ᾱ₀.
    pub set_alpha_to_one: bool,
    /// Added to the `leading` timesteps.
    pub steps_offset: usize,
    #[serde(serialize_with = "serialize_prediction_type")]
    pub prediction_type: PredictionType,
    /// Not supported (dynamic thresholding, Imagen): [`DDIMScheduler::new`] rejects `true`.
    pub thresholding: bool,
    /// Read only by thresholding; kept so configs convert and round-trip.
    pub dynamic_thresholding_ratio: f64,
    pub clip_sample_range: f64,
    /// Read only by thresholding.
    pub sample_max_value: f64,
    pub timestep_spacing: TimestepSpacing,
    /// Not supported: [`DDIMScheduler::new`] rejects `true`.
    pub rescale_betas_zero_snr: bool,
    /// η of DDIM eq. 16 — unclip's extension key, not diffusers': diffusers passes `eta` to every
    /// `step()` call; unclip carries it in the config so that [`super::SchedulerConfig::build`]
    /// needs no extra argument. 0 (default) is deterministic DDIM, 1 has the DDPM posterior
    /// variance. Must be in [0, 1]: above 1, σ_t² exceeds 1 − ᾱ_prev and diffusers takes the
    /// square root of a negative number (NaN samples).
    pub eta: f32,
}

impl Default for DDIMSchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            clip_sample: true,
            set_alpha_to_one: true,
            steps_offset: 0,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            clip_sample_range: 1.0,
            sample_max_value: 1.0,
            timestep_spacing: TimestepSpacing::Leading,
            rescale_betas_zero_snr: false,
            eta: 0.0,
        }
    }
}

/// Checks η for [`DDIMSchedulerConfig::eta`]: finite and in [0, 1].
pub(crate) fn check_eta(eta: f32) -> Result<()> {
    if !(eta.is_finite() && (0.0..=1.0).contains(&eta)) {
        return Err(Error::invalid(
            "eta",
            format!(
                "must be in [0, 1], got {eta} (0: deterministic DDIM, 1: DDPM-like; above 1 the \
                 step takes the square root of a negative number)"
            ),
        ));
    }
    Ok(())
}

/// Checks `clip_sample_range` as `UnCLIPScheduler::new` does: finite and non-negative, which also
/// makes `f32::clamp(−r, r)` panic-free.
pub(crate) fn check_clip_sample_range(range: f64) -> Result<()> {
    if !(range.is_finite() && range >= 0.0) {
        return Err(Error::invalid(
            "clip_sample_range",
            format!("must be finite and non-negative, got {range}"),
        ));
    }
    Ok(())
}

/// `DDIMScheduler.set_timesteps` (decreasing), for `num_inference_steps` ≥ 1, including the lists
/// diffusers would produce but cannot use (see [`checked_timesteps`]):
/// - `linspace`: `np.linspace(0, T − 1, N).round()[::-1]`;
/// - `leading`: `arange(N) · (T // N)` reversed, plus `steps_offset`;
/// - `trailing`: `np.round(np.arange(T, 0, −T/N)) − 1`.
///
/// `DDIMInverseScheduler` uses the same lists in increasing order.
pub(crate) fn ddim_timesteps(
    spacing: TimestepSpacing,
    num_train_timesteps: usize,
    steps_offset: usize,
    num_inference_steps: usize,
) -> Vec<i64> {
    let train = num_train_timesteps as f64;
    match spacing {
        TimestepSpacing::Linspace => betas::numpy_linspace(0.0, train - 1.0, num_inference_steps)
            .into_iter()
            .rev()
            .map(|t| t.round_ties_even() as i64)
            .collect(),
        TimestepSpacing::Leading => {
            let step_ratio = num_train_timesteps / num_inference_steps;
            (0..num_inference_steps)
                .rev()
                .map(|i| (i * step_ratio + steps_offset) as i64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let step_ratio = train / num_inference_steps as f64;
            betas::numpy_arange(train, 0.0, -step_ratio)
                .into_iter()
                .map(|t| t.round_ties_even() as i64 - 1)
                .collect()
        }
    }
}

/// The elementwise part of a DDIM step (eq. 12), shared with [`super::DDIMInverseScheduler`]:
/// x̂₀ and ε̂ from the model output, x̂₀ clipped, then `√ᾱ_prev · x̂₀ + direction · ε̂`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DdimUpdate {
    pub prediction_type: PredictionType,
    /// `clip_sample_range` as f32 (torch's `clamp` converts its Python-float bounds), when
    /// `clip_sample` is on; finite and non-negative ([`check_clip_sample_range`]).
    pub clip: Option<f32>,
    /// `alpha_prod_t ** 0.5`
    pub sqrt_alpha_prod_t: f32,
    /// `beta_prod_t ** 0.5`
    pub sqrt_beta_prod_t: f32,
    /// `alpha_prod_t_prev ** 0.5`
    pub sqrt_alpha_prod_t_prev: f32,
    /// The coefficient of ε̂ in "direction pointing to x_t".
    pub direction: f32,
}

impl DdimUpdate {
    /// One element of `prev_sample` before the noise, in diffusers' operation order. ε̂ of a
    /// `sample` prediction comes from the unclipped x̂₀ (`use_clipped_model_output=False`).
    #[inline]
    pub fn apply(&self, output: f32, x: f32) -> f32 {
        let (x0, epsilon) = match self.prediction_type {
            PredictionType::Epsilon => (
                (x - self.sqrt_beta_prod_t * output) / self.sqrt_alpha_prod_t,
                output,
            ),
            PredictionType::Sample => (
                output,
                (x - self.sqrt_alpha_prod_t * output) / self.sqrt_beta_prod_t,
            ),
        };
        // torch.clamp keeps NaN, as f32::clamp does
        let x0 = match self.clip {
            Some(range) => x0.clamp(-range, range),
            None => x0,
        };
        self.sqrt_alpha_prod_t_prev * x0 + self.direction * epsilon
    }

    /// `prev_sample` for a whole tensor (shapes checked by the caller).
    pub fn apply_all(
        &self,
        output: &ArrayViewD<'_, f32>,
        sample: &ArrayViewD<'_, f32>,
    ) -> ArrayD<f32> {
        let mut prev_sample = ArrayD::<f32>::zeros(sample.raw_dim());
        Zip::from(&mut prev_sample)
            .and(output)
            .and(sample)
            .for_each(|out, &m, &x| *out = self.apply(m, x));
        prev_sample
    }
}

/// diffusers' `DDIMScheduler` with its timesteps set (`set_timesteps(num_inference_steps)`) and η
/// from the config.
#[derive(Debug, Clone)]
pub struct DDIMScheduler {
    config: DDIMSchedulerConfig,
    alphas_cumprod: Vec<f32>,
    /// `final_alpha_cumprod`: 1, or ᾱ₀ when `set_alpha_to_one` is false.
    final_alpha_cumprod: f32,
    /// `T // N`, the distance from a step's timestep to the level it lands on.
    step_ratio: i64,
    timesteps: Vec<i64>,
}

impl DDIMScheduler {
    /// Builds the scheduler and its timesteps for `num_inference_steps` steps.
    ///
    /// Rejected, each with an [`Error::InvalidArgument`] naming the value: `trained_betas`,
    /// `thresholding`, `rescale_betas_zero_snr` (not implemented), η outside [0, 1], a negative
    /// or non-finite `clip_sample_range`, `num_inference_steps` = 0 or above
    /// `num_train_timesteps` (diffusers raises `ValueError` too), and step counts whose timesteps
    /// diffusers lists but cannot use (`trailing` overshoots, `leading` with `steps_offset`
    /// reaching T; see [`super::TimestepSpacing`]).
    pub fn new(config: DDIMSchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        betas::check_supported_options(
            "DDIMScheduler",
            &config.trained_betas,
            config.rescale_betas_zero_snr,
        )?;
        if config.thresholding {
            return Err(Error::invalid(
                "thresholding",
                "DDIMScheduler: dynamic thresholding is not supported; use clip_sample",
            ));
        }
        check_eta(config.eta)?;
        check_clip_sample_range(config.clip_sample_range)?;
        let alphas_cumprod = betas::alphas_cumprod(
            config.beta_schedule,
            config.num_train_timesteps,
            config.beta_start,
            config.beta_end,
        )?;
        let train = config.num_train_timesteps;
        if num_inference_steps > train {
            return Err(Error::invalid(
                "num_inference_steps",
                format!("{num_inference_steps} exceeds the {train} timesteps the model was trained with"),
            ));
        }
        let timesteps = checked_timesteps(
            "DDIMScheduler",
            config.timestep_spacing,
            train,
            num_inference_steps,
            false,
            |n| ddim_timesteps(config.timestep_spacing, train, config.steps_offset, n),
        )?;
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Ok(Self {
            step_ratio: (train / num_inference_steps) as i64,
            config,
            alphas_cumprod,
            final_alpha_cumprod,
            timesteps,
        })
    }

    /// The config this scheduler was built from.
    pub fn config(&self) -> &DDIMSchedulerConfig {
        &self.config
    }

    /// `DDIMScheduler.alphas_cumprod` (f32): ᾱ_t for t = 0 … T − 1.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// The timestep step `step_index` lands on, as diffusers computes it:
    /// `timesteps[step_index] − T // N`; negative means `final_alpha_cumprod`.
    pub fn prev_timestep(&self, step_index: usize) -> Result<i64> {
        Ok(timestep_at(&self.timesteps, step_index)? - self.step_ratio)
    }
}

impl Scheduler for DDIMScheduler {
    fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    fn noising_schedule(&self) -> Option<&[f32]> {
        Some(&self.alphas_cumprod)
    }

    /// `DDIMScheduler.step(model_output, timesteps[step_index], sample, eta)` with
    /// `use_clipped_model_output=False`: from ᾱ_t to ᾱ_prev at `t − T // N`
    /// ([`DDIMScheduler::prev_timestep`]). With η > 0 one noise tensor of the sample's shape is
    /// drawn on every step (diffusers' `randn_tensor(model_output.shape)`).
    fn step(
        &mut self,
        step_index: usize,
        model_output: ArrayViewD<'_, f32>,
        sample: ArrayViewD<'_, f32>,
        noise: &mut dyn NoiseSource,
    ) -> Result<ArrayD<f32>> {
        let timestep = timestep_at(&self.timesteps, step_index)?;
        let prev_timestep = timestep - self.step_ratio;
        let model_output = without_learned_variance("DDIMScheduler", model_output, &sample)?;
        tracing::trace!(
            timestep,
            prev_timestep,
            eta = self.config.eta,
            "DDIMScheduler step"
        );

        // 2. alphas, betas (0-d f32 tensors); timesteps are validated to lie in 0..T
        let alpha_prod_t = self.alphas_cumprod[timestep as usize];
        let alpha_prod_t_prev = if prev_timestep >= 0 {
            self.alphas_cumprod[prev_timestep as usize]
        } else {
            self.final_alpha_cumprod
        };
        let beta_prod_t = 1.0 - alpha_prod_t;
        // 5. `_get_variance`, then σ_t = η · variance ** 0.5 (eq. 16)
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let variance = (beta_prod_t_prev / beta_prod_t) * (1.0 - alpha_prod_t / alpha_prod_t_prev);
        let std_dev_t = self.config.eta * variance.sqrt();
        // 6. `(1 - alpha_prod_t_prev - std_dev_t**2) ** 0.5`
        let direction = (1.0 - alpha_prod_t_prev - std_dev_t * std_dev_t).sqrt();
        let update = DdimUpdate {
            prediction_type: self.config.prediction_type,
            clip: self
                .config
                .clip_sample
                .then_some(self.config.clip_sample_range as f32),
            sqrt_alpha_prod_t: alpha_prod_t.sqrt(),
            sqrt_beta_prod_t: beta_prod_t.sqrt(),
            sqrt_alpha_prod_t_prev: alpha_prod_t_prev.sqrt(),
            direction,
        };
        // 7. x_{t−1} without noise, then `prev_sample + std_dev_t * variance_noise` when η > 0
        if self.config.eta > 0.0 {
            let variance_noise = draw_noise(noise, sample.shape())?;
            let mut prev_sample = ArrayD::<f32>::zeros(sample.raw_dim());
            Zip::from(&mut prev_sample)
                .and(&model_output)
                .and(&sample)
                .and(&variance_noise)
                .for_each(|out, &m, &x, &z| *out = update.apply(m, x) + std_dev_t * z);
            Ok(prev_sample)
        } else {
            Ok(update.apply_all(&model_output, &sample))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_match_diffusers() {
        let parsed: DDIMSchedulerConfig =
            serde_json::from_str(r#"{"_class_name": "DDIMScheduler"}"#).unwrap();
        assert_eq!(parsed, DDIMSchedulerConfig::default());
    }

    #[test]
    fn trailing_lands_the_last_step_on_alpha_0() {
        let config = DDIMSchedulerConfig {
            timestep_spacing: TimestepSpacing::Trailing,
            ..Default::default()
        };
        let scheduler = DDIMScheduler::new(config, 7).unwrap();
        assert_eq!(scheduler.timesteps(), &[999, 856, 713, 570, 428, 285, 142]);
        assert_eq!(scheduler.prev_timestep(6).unwrap(), 0);
        assert_eq!(scheduler.prev_timestep(0).unwrap(), 857);
    }
}
