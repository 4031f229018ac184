//! `UnCLIPScheduler`: the DDPM variant of kakaobrain's Karlo, as diffusers 0.42.1 implements it in
//! `schedulers/scheduling_unclip.py` and drives it from `UnCLIPPipeline.__call__`
//! (`pipelines/deprecated/unclip/pipeline_unclip.py`).
//!
//! Precision follows torch rather than textbook math, because parity with diffusers is the point:
//! betas are f64 rounded to f32 ([`betas::squaredcos_cap_v2`]), `alphas = 1 − betas` in f32,
//! `alphas_cumprod` is torch's CPU `cumprod` (f64 accumulator, f32 results), and every per-step
//! coefficient is f32 arithmetic on 0-d tensors, one rounding per torch operation and in torch's
//! order. Elementwise work uses one rounding per torch operation too (no fused multiply-add), so
//! a step differs from diffusers only where torch's x86 build evaluates `** 0.5`, `log` and `exp`
//! through MKL's vector math (within 1 ulp of the correctly rounded f32 result that Rust computes):
//! ≤ 1 ulp in a coefficient, ~1e-7 relative in the output.

use ndarray::{ArrayD, ArrayViewD, Zip};
use serde::Deserialize;

use super::betas::{self, BetaSchedule};
use super::{draw_noise, output_layout, timestep_at, OutputLayout, Scheduler};
use crate::noise::NoiseSource;
use crate::{Error, Result};

/// How the variance of the reverse step is chosen (`variance_type` in the JSON config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum VarianceType {
    /// The posterior variance β̃_t, clamped at 1e-20 and taken through log/exp (Karlo's prior and
    /// super-resolution).
    #[serde(rename = "fixed_small_log")]
    FixedSmallLog,
    /// Interpolated in log space between β̃_t and β_t by the model's second half of channels
    /// (Improved DDPM eq. 15; Karlo's decoder).
    #[serde(rename = "learned_range")]
    LearnedRange,
}

/// What the model predicts (`prediction_type` in the JSON config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum PredictionType {
    /// The noise ε (decoder, super-resolution).
    #[serde(rename = "epsilon")]
    Epsilon,
    /// The clean sample x₀ directly (the prior).
    #[serde(rename = "sample")]
    Sample,
}

/// `UnCLIPScheduler`'s config, field for field and default for default as
/// `UnCLIPScheduler.__init__` (`schedulers/scheduling_unclip.py`). Deserializes diffusers'
/// `scheduler_config.json`; keys it does not know (`_class_name`, `_diffusers_version`,
/// `_use_default_values`) are ignored, as diffusers' `ConfigMixin` does.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct UnCLIPSchedulerConfig {
    /// Number of diffusion steps the model was trained with.
    pub num_train_timesteps: usize,
    pub variance_type: VarianceType,
    /// Clamp the predicted x₀ to `±clip_sample_range`.
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub prediction_type: PredictionType,
    /// diffusers accepts only `squaredcos_cap_v2` here; [`UnCLIPScheduler::new`] rejects others.
    pub beta_schedule: BetaSchedule,
}

impl Default for UnCLIPSchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            variance_type: VarianceType::FixedSmallLog,
            clip_sample: true,
            clip_sample_range: 1.0,
            prediction_type: PredictionType::Epsilon,
            beta_schedule: BetaSchedule::SquaredcosCapV2,
        }
    }
}

/// diffusers' `UnCLIPScheduler` with its timesteps set (`set_timesteps(num_inference_steps)`).
#[derive(Debug, Clone)]
pub struct UnCLIPScheduler {
    config: UnCLIPSchedulerConfig,
    betas: Vec<f32>,
    alphas: Vec<f32>,
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<i64>,
}

/// The scalars of step 1 of `UnCLIPScheduler.step` ("compute alphas, betas"), as f32 0-d tensors.
#[derive(Debug, Clone, Copy)]
struct StepScalars {
    alpha_prod_t: f32,
    beta_prod_t: f32,
    alpha_prod_t_prev: f32,
    beta_prod_t_prev: f32,
    beta: f32,
    alpha: f32,
}

/// The noise term of one step, resolved to what the elementwise loop needs.
#[derive(Debug, Clone, Copy)]
enum NoiseTerm {
    /// No noise: `t = 0`, or the N = 1 step onto the clean sample.
    None,
    /// One standard deviation for every element (`fixed_small_log`).
    Fixed { std: f32 },
    /// Per-element log variance `frac·max_log + (1 − frac)·min_log` (`learned_range`).
    Learned { min_log: f32, max_log: f32 },
}

impl UnCLIPScheduler {
    /// Builds the scheduler and its timesteps for `num_inference_steps` steps.
    ///
    /// Rejected, with the value and the fix in the error: a `beta_schedule` other than
    /// `squaredcos_cap_v2` (as diffusers), `num_train_timesteps` < 2, a negative or non-finite
    /// `clip_sample_range`, `num_inference_steps` = 0, and `num_inference_steps` above
    /// `num_train_timesteps` (diffusers would repeat timesteps and take zero-width steps).
    ///
    /// `num_inference_steps` = 1 is defined here although diffusers divides by zero in
    /// `set_timesteps(1)` (`step_ratio = (T − 1) / (N − 1)`): the single timestep is T − 1 and it
    /// steps straight to ᾱ_prev = 1 (prev_timestep −1) without drawing noise, so the result is the
    /// model's clipped clean estimate x̂₀ — the limit of the schedule's last step.
    pub fn new(config: UnCLIPSchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        if config.beta_schedule != BetaSchedule::SquaredcosCapV2 {
            return Err(Error::invalid(
                "beta_schedule",
                format!(
                    "UnCLIPScheduler only supports \"squaredcos_cap_v2\", got \"{}\"",
                    config.beta_schedule.as_str()
                ),
            ));
        }
        if config.num_train_timesteps < 2 {
            return Err(Error::invalid(
                "num_train_timesteps",
                format!(
                    "must be at least 2, got {} (Karlo uses 1000)",
                    config.num_train_timesteps
                ),
            ));
        }
        if !(config.clip_sample_range.is_finite() && config.clip_sample_range >= 0.0) {
            return Err(Error::invalid(
                "clip_sample_range",
                format!(
                    "must be finite and non-negative, got {}",
                    config.clip_sample_range
                ),
            ));
        }
        let timesteps = unclip_timesteps(config.num_train_timesteps, num_inference_steps)?;
        let betas = betas::squaredcos_cap_v2(config.num_train_timesteps);
        // `self.alphas = 1.0 - self.betas`: f32 tensor arithmetic.
        let alphas: Vec<f32> = betas.iter().map(|&beta| 1.0 - beta).collect();
        let alphas_cumprod = betas::cumprod_f32(&alphas);
        Ok(Self {
            config,
            betas,
            alphas,
            alphas_cumprod,
            timesteps,
        })
    }

    /// The config this scheduler was built from.
    pub fn config(&self) -> &UnCLIPSchedulerConfig {
        &self.config
    }

    /// `UnCLIPScheduler.betas` (f32).
    pub fn betas(&self) -> &[f32] {
        &self.betas
    }

    /// `UnCLIPScheduler.alphas` (f32).
    pub fn alphas(&self) -> &[f32] {
        &self.alphas
    }

    /// `UnCLIPScheduler.alphas_cumprod` (f32): ᾱ_t for t = 0 … T − 1.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// diffusers' `UnCLIPScheduler.step(model_output, timestep, sample, prev_timestep, generator)`
    /// with its own semantics, for callers that choose the timestep pair themselves (the pipeline
    /// uses [`Scheduler::step`]): `prev_timestep = None` means `timestep − 1`, a negative
    /// `prev_timestep` means ᾱ_prev = 1, and noise is drawn whenever `timestep > 0`.
    pub fn step_to(
        &self,
        timestep: i64,
        prev_timestep: Option<i64>,
        model_output: ArrayViewD<'_, f32>,
        sample: ArrayViewD<'_, f32>,
        noise: &mut dyn NoiseSource,
    ) -> Result<ArrayD<f32>> {
        let prev_timestep = prev_timestep.unwrap_or(timestep - 1);
        self.step_impl(
            timestep,
            prev_timestep,
            timestep > 0,
            model_output,
            sample,
            noise,
        )
    }

    /// Index of `timestep` into the train-time tables, or an error naming the range.
    fn table_index(&self, name: &'static str, timestep: i64) -> Result<usize> {
        let len = self.alphas_cumprod.len();
        usize::try_from(timestep)
            .ok()
            .filter(|&index| index < len)
            .ok_or_else(|| {
                Error::invalid(
                    name,
                    format!("{timestep} is outside the trained timesteps 0..{len}"),
                )
            })
    }

    /// Step 1 of `UnCLIPScheduler.step` (and the same lines of `_get_variance`).
    fn scalars(&self, t: usize, prev_timestep: i64) -> Result<StepScalars> {
        let alpha_prod_t = self.alphas_cumprod[t];
        let alpha_prod_t_prev = if prev_timestep >= 0 {
            self.alphas_cumprod[self.table_index("prev_timestep", prev_timestep)?]
        } else {
            1.0 // `self.one`
        };
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        // A step to t − 1 reads the trained β_t; a longer jump recomputes the β it spans
        // (Karlo's "dynamically re-calculated betas").
        let (beta, alpha) = if prev_timestep == t as i64 - 1 {
            (self.betas[t], self.alphas[t])
        } else {
            let beta = 1.0 - alpha_prod_t / alpha_prod_t_prev;
            (beta, 1.0 - beta)
        };
        Ok(StepScalars {
            alpha_prod_t,
            beta_prod_t,
            alpha_prod_t_prev,
            beta_prod_t_prev,
            beta,
            alpha,
        })
    }

    /// The noise term of `UnCLIPScheduler.step` step 6 with `_get_variance`: the posterior
    /// variance β̃ = (1 − ᾱ_prev)/(1 − ᾱ_t)·β (DDPM eq. 7), then the variance-type "hacks".
    fn noise_term(&self, s: &StepScalars) -> NoiseTerm {
        let variance = s.beta_prod_t_prev / s.beta_prod_t * s.beta;
        match self.config.variance_type {
            VarianceType::FixedSmallLog => {
                // torch.exp(0.5 * torch.log(torch.clamp(variance, min=1e-20)))
                // written out rather than `max` so that NaN propagates as in torch.clamp
                let clamped = if variance < 1e-20 { 1e-20 } else { variance };
                let log_variance = clamped.ln();
                NoiseTerm::Fixed {
                    std: (0.5 * log_variance).exp(),
                }
            }
            VarianceType::LearnedRange => NoiseTerm::Learned {
                min_log: variance.ln(),
                max_log: s.beta.ln(),
            },
        }
    }

    /// `UnCLIPScheduler.step` from the split of the model output to the added noise, for the
    /// pair (`t`, `prev_timestep`); `add_noise` says whether step 6 runs.
    fn step_impl(
        &self,
        timestep: i64,
        prev_timestep: i64,
        add_noise: bool,
        model_output: ArrayViewD<'_, f32>,
        sample: ArrayViewD<'_, f32>,
        noise: &mut dyn NoiseSource,
    ) -> Result<ArrayD<f32>> {
        let t = self.table_index("timestep", timestep)?;
        let (model_output, predicted_variance) = self.split_model_output(model_output, &sample)?;
        let s = self.scalars(t, prev_timestep)?;
        tracing::trace!(timestep, prev_timestep, add_noise, "UnCLIPScheduler step");

        // 2.–5.: predicted x₀, clipped, and the posterior mean µ̃_t (DDPM eqs. 15 and 7).
        let sqrt_beta_prod_t = s.beta_prod_t.sqrt();
        let sqrt_alpha_prod_t = s.alpha_prod_t.sqrt();
        let prediction_type = self.config.prediction_type;
        let clip = self
            .config
            .clip_sample
            .then_some(self.config.clip_sample_range as f32);
        let pred_original_sample_coeff = s.alpha_prod_t_prev.sqrt() * s.beta / s.beta_prod_t;
        let current_sample_coeff = s.alpha.sqrt() * s.beta_prod_t_prev / s.beta_prod_t;
        let posterior_mean = |output: f32, x: f32| -> f32 {
            let x0 = match prediction_type {
                PredictionType::Epsilon => (x - sqrt_beta_prod_t * output) / sqrt_alpha_prod_t,
                PredictionType::Sample => output,
            };
            // torch.clamp(x0, -r, r); NaN stays NaN as in torch
            let x0 = match clip {
                Some(range) => x0.clamp(-range, range),
                None => x0,
            };
            pred_original_sample_coeff * x0 + current_sample_coeff * x
        };

        // 6.: noise of the sample's shape, drawn after the split and only when t > 0.
        let term = if add_noise {
            self.noise_term(&s)
        } else {
            NoiseTerm::None
        };
        let mut prev_sample = ArrayD::<f32>::zeros(sample.raw_dim());
        match term {
            NoiseTerm::None => {
                Zip::from(&mut prev_sample)
                    .and(&model_output)
                    .and(&sample)
                    .for_each(|out, &output, &x| *out = posterior_mean(output, x));
            }
            NoiseTerm::Fixed { std } => {
                let variance_noise = draw_noise(noise, sample.shape())?;
                Zip::from(&mut prev_sample)
                    .and(&model_output)
                    .and(&sample)
                    .and(&variance_noise)
                    .for_each(|out, &output, &x, &z| {
                        *out = posterior_mean(output, x) + std * z;
                    });
            }
            NoiseTerm::Learned { min_log, max_log } => {
                let variance_noise = draw_noise(noise, sample.shape())?;
                let predicted_variance = predicted_variance.ok_or_else(|| Error::Shape {
                    what: "model_output".into(),
                    expected: format!(
                        "2 × {} channels in dim 1 (learned_range needs the predicted variance)",
                        sample.shape()[1]
                    ),
                    found: model_output.shape().to_vec(),
                })?;
                Zip::from(&mut prev_sample)
                    .and(&model_output)
                    .and(&sample)
                    .and(&predicted_variance)
                    .and(&variance_noise)
                    .for_each(|out, &output, &x, &v, &z| {
                        let frac = (v + 1.0) / 2.0;
                        let log_variance = frac * max_log + (1.0 - frac) * min_log;
                        *out = posterior_mean(output, x) + (0.5 * log_variance).exp() * z;
                    });
            }
        }
        Ok(prev_sample)
    }

    /// `torch.split(model_output, sample.shape[1], dim=1)` when the model output has twice the
    /// sample's channels and the variance is learned; otherwise the output must match the sample.
    fn split_model_output<'a>(
        &self,
        model_output: ArrayViewD<'a, f32>,
        sample: &ArrayViewD<'_, f32>,
    ) -> Result<(ArrayViewD<'a, f32>, Option<ArrayViewD<'a, f32>>)> {
        if sample.ndim() < 2 {
            return Err(Error::Shape {
                what: "sample".into(),
                expected: "at least 2 dimensions (batch, channels, …)".into(),
                found: sample.shape().to_vec(),
            });
        }
        let channels = sample.shape()[1];
        let found = model_output.shape().to_vec();
        match output_layout(model_output, sample) {
            Some(OutputLayout::WithVariance(epsilon, variance))
                if self.config.variance_type == VarianceType::LearnedRange =>
            {
                return Ok((epsilon, Some(variance)));
            }
            Some(OutputLayout::Plain(output)) => return Ok((output, None)),
            _ => {}
        }
        let expected = match self.config.variance_type {
            VarianceType::LearnedRange => format!(
                "the sample's shape {:?} with {} (or {}) channels in dim 1",
                sample.shape(),
                2 * channels,
                channels
            ),
            VarianceType::FixedSmallLog => format!("the sample's shape {:?}", sample.shape()),
        };
        Err(Error::Shape {
            what: "model_output".into(),
            expected,
            found,
        })
    }
}

impl Scheduler for UnCLIPScheduler {
    fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    fn noising_schedule(&self) -> Option<&[f32]> {
        Some(&self.alphas_cumprod)
    }

    /// `UnCLIPScheduler.step` as `UnCLIPPipeline.__call__` calls it: `prev_timestep` is the next
    /// timestep of the list, and on the last step diffusers passes `None`, i.e. `t − 1`; the last
    /// timestep is 0 for N ≥ 2, so that is −1 (ᾱ_prev = 1) and no noise is drawn. For N = 1 the
    /// single step goes from T − 1 to −1 as well (see [`UnCLIPScheduler::new`]), also without noise.
    fn step(
        &mut self,
        step_index: usize,
        model_output: ArrayViewD<'_, f32>,
        sample: ArrayViewD<'_, f32>,
        noise: &mut dyn NoiseSource,
    ) -> Result<ArrayD<f32>> {
        let timestep = timestep_at(&self.timesteps, step_index)?;
        let prev_timestep = self.timesteps.get(step_index + 1).copied().unwrap_or(-1);
        // Same as diffusers' `t > 0` for N ≥ 2 (only the last step has t = 0 and it is the only
        // one with prev_timestep < 0); it also keeps the N = 1 step noiseless.
        let add_noise = timestep > 0 && prev_timestep >= 0;
        self.step_impl(
            timestep,
            prev_timestep,
            add_noise,
            model_output,
            sample,
            noise,
        )
    }
}

/// `UnCLIPScheduler.set_timesteps`: `round(arange(N) · (T − 1)/(N − 1))`, reversed, with numpy's
/// round-half-to-even (25 steps give …, 832, …, 166, …; half-away-from-zero would give 833 and
/// 167). The step ratio is Karlo's (T − 1)/(N − 1), not DDPM's T/N, so the list runs from T − 1
/// down to exactly 0. N = 1 (a division by zero in diffusers) is defined as `[T − 1]`.
pub fn unclip_timesteps(
    num_train_timesteps: usize,
    num_inference_steps: usize,
) -> Result<Vec<i64>> {
    if num_inference_steps == 0 {
        return Err(Error::invalid("num_inference_steps", "must be at least 1"));
    }
    if num_inference_steps > num_train_timesteps {
        return Err(Error::invalid(
            "num_inference_steps",
            format!(
                "{num_inference_steps} exceeds the {num_train_timesteps} timesteps the model was trained with"
            ),
        ));
    }
    let last = num_train_timesteps as i64 - 1;
    if num_inference_steps == 1 {
        return Ok(vec![last]);
    }
    let step_ratio = last as f64 / (num_inference_steps - 1) as f64;
    Ok((0..num_inference_steps)
        .rev()
        .map(|i| (i as f64 * step_ratio).round_ties_even() as i64)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_match_diffusers() {
        let parsed: UnCLIPSchedulerConfig =
            serde_json::from_str(r#"{"_class_name": "UnCLIPScheduler"}"#).unwrap();
        assert_eq!(parsed, UnCLIPSchedulerConfig::default());
    }

    #[test]
    fn twenty_five_steps_round_half_to_even() {
        let timesteps = unclip_timesteps(1000, 25).unwrap();
        assert!(timesteps.contains(&832) && timesteps.contains(&166));
    }
}
