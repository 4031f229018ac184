//! `DDIMInverseScheduler`: deterministic DDIM run backwards, clean sample → noise ("DDIM
//! inversion", Song et al. 2021 §4.3 eq. 13; Dhariwal & Nichol 2021), as diffusers 0.42.1
//! implements it in `schedulers/scheduling_ddim_inverse.py`.
//!
//! Timesteps increase. Step i maps the sample from the noise level `timesteps[i] − T // N`
//! (ᾱ = 1, or ᾱ₀ without `set_alpha_to_one`, below timestep 0) up to `timesteps[i]`, with the
//! model evaluated at `timesteps[i]` — diffusers' pipelines (`StableDiffusionDiffEditPipeline`,
//! pix2pix-zero) call it that way, so the model sees the target level while the sample is still
//! at the source level. With `leading` spacing this undoes [`super::DDIMScheduler`] at η = 0
//! step for step (same levels, in reverse); precision follows `ddim.rs`.

use ndarray::{ArrayD, ArrayViewD};
use serde::{Deserialize, Serialize};

use super::betas::{self, BetaSchedule};
use super::ddim::{check_clip_sample_range, ddim_timesteps, DdimUpdate};
use super::{
    checked_timesteps, serialize_prediction_type, timestep_at, without_learned_variance,
    PredictionType, Scheduler, TimestepSpacing,
};
use crate::noise::NoiseSource;
use crate::{Error, Result};

/// `DDIMInverseScheduler`'s config, field for field and default for default as its `__init__`
/// (which has no thresholding). Unknown keys are ignored, as diffusers' `ConfigMixin` does
/// (diffusers also accepts the deprecated `set_alpha_to_zero` for `set_alpha_to_one`; unclip does
/// not).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct DDIMInverseSchedulerConfig {
    /// Number of diffusion steps the model was trained with.
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    /// diffusers' default is `linear`; Karlo's converted configs carry `squaredcos_cap_v2`.
    pub beta_schedule: BetaSchedule,
    /// Not supported: [`DDIMInverseScheduler::new`] rejects a value.
    pub trained_betas: Option<Vec<f64>>,
    /// Clamp the predicted x₀ to `±clip_sample_range` (Karlo's configs carry `true`).
    pub clip_sample: bool,
    /// The ᾱ the first `leading` step starts from: 1 (`true`), or ᾱ₀.
    pub set_alpha_to_one: bool,
    /// Added to the `leading` timesteps.
    pub steps_offset: usize,
    #[serde(serialize_with = "serialize_prediction_type")]
    pub prediction_type: PredictionType,
    pub clip_sample_range: f64,
    /// `leading` or `trailing`; diffusers raises `ValueError` for `linspace`, and so does
    /// [`DDIMInverseScheduler::new`].
    pub timestep_spacing: TimestepSpacing,
    /// Not supported: [`DDIMInverseScheduler::new`] rejects `true`.
    pub rescale_betas_zero_snr: bool,
}

impl Default for DDIMInverseSchedulerConfig {
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
            clip_sample_range: 1.0,
            timestep_spacing: TimestepSpacing::Leading,
            rescale_betas_zero_snr: false,
        }
    }
}

/// diffusers' `DDIMInverseScheduler` with its timesteps set.
#[derive(Debug, Clone)]
pub struct DDIMInverseScheduler {
    config: DDIMInverseSchedulerConfig,
    alphas_cumprod: Vec<f32>,
    /// `initial_alpha_cumprod`: 1, or ᾱ₀ when `set_alpha_to_one` is false.
    initial_alpha_cumprod: f32,
    /// `T // N`.
    step_ratio: i64,
    timesteps: Vec<i64>,
}

impl DDIMInverseScheduler {
    /// Builds the scheduler and its (increasing) timesteps for `num_inference_steps` steps:
    /// `leading` `arange(N) · (T // N) + steps_offset`, `trailing` the reversed
    /// `round(np.arange(T, 0, −T/N)) − 1` — [`super::DDIMScheduler`]'s lists in reverse order.
    ///
    /// Rejected as by [`super::DDIMScheduler::new`], plus `timestep_spacing: "linspace"`.
    pub fn new(config: DDIMInverseSchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        betas::check_supported_options(
            "DDIMInverseScheduler",
            &config.trained_betas,
            config.rescale_betas_zero_snr,
        )?;
        check_clip_sample_range(config.clip_sample_range)?;
        if config.timestep_spacing == TimestepSpacing::Linspace {
            return Err(Error::invalid(
                "timestep_spacing",
                "DDIMInverseScheduler supports \"leading\" and \"trailing\", not \"linspace\" \
                 (diffusers raises ValueError too)",
            ));
        }
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
            "DDIMInverseScheduler",
            config.timestep_spacing,
            train,
            num_inference_steps,
            true,
            |n| {
                let mut timesteps =
                    ddim_timesteps(config.timestep_spacing, train, config.steps_offset, n);
                timesteps.reverse();
                timesteps
            },
        )?;
        let initial_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Ok(Self {
            step_ratio: (train / num_inference_steps) as i64,
            config,
            alphas_cumprod,
            initial_alpha_cumprod,
            timesteps,
        })
    }

    /// The config this scheduler was built from.
    pub fn config(&self) -> &DDIMInverseSchedulerConfig {
        &self.config
    }

    /// `alphas_cumprod` (f32): ᾱ_t for t = 0 … T − 1.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// The noise level step `step_index` starts from, as diffusers computes it:
    /// `min(timesteps[step_index] − T // N, T − 1)`; negative means `initial_alpha_cumprod`.
    pub fn source_timestep(&self, step_index: usize) -> Result<i64> {
        let target = timestep_at(&self.timesteps, step_index)?;
        Ok((target - self.step_ratio).min(self.config.num_train_timesteps as i64 - 1))
    }
}

impl Scheduler for DDIMInverseScheduler {
    fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    /// `DDIMInverseScheduler.step(model_output, timesteps[step_index], sample)`: from the level
    /// [`DDIMInverseScheduler::source_timestep`] to `timesteps[step_index]` (eq. 12 with σ = 0 and
    /// the roles of t and t − 1 swapped). Never draws noise.
    ///
    /// With `prediction_type: "sample"` and the first `leading` step starting from ᾱ = 1, ε̂
    /// divides by √(1 − ᾱ) = 0 and the result is not finite — in diffusers as here.
    fn step(
        &mut self,
        step_index: usize,
        model_output: ArrayViewD<'_, f32>,
        sample: ArrayViewD<'_, f32>,
        _noise: &mut dyn NoiseSource,
    ) -> Result<ArrayD<f32>> {
        let target = timestep_at(&self.timesteps, step_index)?;
        let source = self.source_timestep(step_index)?;
        let model_output = without_learned_variance("DDIMInverseScheduler", model_output, &sample)?;
        tracing::trace!(source, target, "DDIMInverseScheduler step");

        // 2. diffusers' names: `alpha_prod_t` is the source level, `alpha_prod_t_prev` the target
        let alpha_prod_t = if source >= 0 {
            self.alphas_cumprod[source as usize]
        } else {
            self.initial_alpha_cumprod
        };
        // timesteps are validated to lie in 0..T
        let alpha_prod_t_prev = self.alphas_cumprod[target as usize];
        let beta_prod_t = 1.0 - alpha_prod_t;
        let update = DdimUpdate {
            prediction_type: self.config.prediction_type,
            clip: self
                .config
                .clip_sample
                .then_some(self.config.clip_sample_range as f32),
            sqrt_alpha_prod_t: alpha_prod_t.sqrt(),
            sqrt_beta_prod_t: beta_prod_t.sqrt(),
            sqrt_alpha_prod_t_prev: alpha_prod_t_prev.sqrt(),
            // 5. `(1 - alpha_prod_t_prev) ** 0.5`
            direction: (1.0 - alpha_prod_t_prev).sqrt(),
        };
        Ok(update.apply_all(&model_output, &sample))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_match_diffusers() {
        let parsed: DDIMInverseSchedulerConfig =
            serde_json::from_str(r#"{"_class_name": "DDIMInverseScheduler"}"#).unwrap();
        assert_eq!(parsed, DDIMInverseSchedulerConfig::default());
    }

    #[test]
    fn leading_starts_from_alpha_one() {
        let scheduler =
            DDIMInverseScheduler::new(DDIMInverseSchedulerConfig::default(), 25).unwrap();
        assert_eq!(scheduler.timesteps()[..3], [0, 40, 80]);
        assert_eq!(scheduler.source_timestep(0).unwrap(), -40);
        assert_eq!(scheduler.source_timestep(24).unwrap(), 920);
    }
}
