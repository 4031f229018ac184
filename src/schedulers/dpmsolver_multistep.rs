//! `DPMSolverMultistepScheduler` with `algorithm_type: "dpmsolver++"` (Lu et al. 2022,
//! "DPM-Solver++", Algorithm 2 — multistep, data prediction), as diffusers 0.42.1 implements it in
//! `schedulers/scheduling_dpmsolver_multistep.py`. Orders 1 and 2, `midpoint` and `heun` second
//! order updates, final sigma `zero` or `sigma_min`.
//!
//! The solver is deterministic but stateful: order 2 combines the data prediction x̂₀ of this step
//! with the previous step's (`model_outputs` in diffusers), which is why steps must come in order
//! from 0. The first step, and the last one when `lower_order_final` applies, are first order
//! (the DDIM update in λ = log(α/σ) time).
//!
//! Precision follows torch as in `unclip.rs`: the σ table is float32 tensor arithmetic,
//! `_sigma_to_alpha_sigma_t`, λ, h, r₀ and the update coefficients are f32 0-d tensor operations
//! in diffusers' order (`log` and `exp` on 0-d tensors may differ by 1 ulp between torch's CPU
//! kernels and Rust's libm), and elementwise work is one rounding per torch operation.

use std::cmp::Ordering;

use ndarray::{ArrayD, ArrayViewD, Zip};
use serde::{Deserialize, Serialize};

use super::betas::{self, BetaSchedule};
use super::{
    checked_timesteps, serialize_prediction_type, timestep_at, without_learned_variance,
    PredictionType, Scheduler, TimestepSpacing,
};
use crate::noise::NoiseSource;
use crate::{Error, Result};

/// `algorithm_type`. Only DPM-Solver++ is implemented; the others parse so that the error names
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum AlgorithmType {
    /// DPM-Solver++ (data prediction). diffusers maps the legacy `deis` to it.
    #[serde(rename = "dpmsolver++", alias = "deis")]
    DpmSolverPlusPlus,
    /// DPM-Solver (noise prediction; deprecated in diffusers). Not implemented.
    #[serde(rename = "dpmsolver")]
    DpmSolver,
    /// SDE variant of DPM-Solver++ (draws noise). Not implemented.
    #[serde(rename = "sde-dpmsolver++")]
    SdeDpmSolverPlusPlus,
    /// SDE variant of DPM-Solver. Not implemented.
    #[serde(rename = "sde-dpmsolver")]
    SdeDpmSolver,
}

/// `solver_type`: how order 2 weights the difference of the last two data predictions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum SolverType {
    /// `−½ (α_t (e^{−h} − 1)) D₁`. diffusers maps UniPC's `logrho`, `bh1`, `bh2` to it.
    #[serde(rename = "midpoint", alias = "logrho", alias = "bh1", alias = "bh2")]
    Midpoint,
    /// `+ α_t ((e^{−h} − 1)/h + 1) D₁`.
    #[serde(rename = "heun")]
    Heun,
}

/// `final_sigmas_type`: the σ the last step lands on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum FinalSigmasType {
    /// σ = 0: the last step returns the data prediction x̂₀ (and is always first order).
    #[serde(rename = "zero")]
    Zero,
    /// σ of timestep 0, `√((1 − ᾱ₀)/ᾱ₀)`.
    #[serde(rename = "sigma_min")]
    SigmaMin,
}

/// `DPMSolverMultistepScheduler`'s config, field for field and default for default as its
/// `__init__`, minus the flow-matching keys (`flow_shift`, `use_dynamic_shifting`,
/// `time_shift_type`: without `use_flow_sigmas` or a `mu` they have no effect). Unknown keys are
/// ignored, as diffusers' `ConfigMixin` ignores them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct DPMSolverMultistepSchedulerConfig {
    /// Number of diffusion steps the model was trained with.
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    /// diffusers' default is `linear`; Karlo's converted configs carry `squaredcos_cap_v2`.
    pub beta_schedule: BetaSchedule,
    /// Not supported: [`DPMSolverMultistepScheduler::new`] rejects a value.
    pub trained_betas: Option<Vec<f64>>,
    /// 1 or 2 (diffusers also has 3; not implemented).
    pub solver_order: usize,
    /// `epsilon` or `sample`. DPM-Solver++ never clips x̂₀ (there is no `clip_sample`), so
    /// Karlo's prior range of 5 does not apply.
    #[serde(serialize_with = "serialize_prediction_type")]
    pub prediction_type: PredictionType,
    /// Not supported: rejects `true`.
    pub thresholding: bool,
    /// Read only by thresholding.
    pub dynamic_thresholding_ratio: f64,
    /// Read only by thresholding.
    pub sample_max_value: f64,
    /// Only `dpmsolver++` runs.
    pub algorithm_type: AlgorithmType,
    pub solver_type: SolverType,
    /// First order on the last step when there are fewer than 15 steps (diffusers'
    /// "numerical stability for small number of steps").
    pub lower_order_final: bool,
    /// First order on the last step, always.
    pub euler_at_final: bool,
    /// Not supported: rejects `true` (as the other sigma schedules below).
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub use_lu_lambdas: bool,
    pub use_flow_sigmas: bool,
    pub final_sigmas_type: FinalSigmasType,
    /// Timesteps whose λ = log(α/σ) falls below this are cut from the schedule
    /// (`set_timesteps`' `clipped_idx`). `None` (JSON `null`) is diffusers' default −∞: nothing
    /// is cut. (diffusers writes −∞ as `-Infinity`, which is not JSON; use `null`.)
    pub lambda_min_clipped: Option<f64>,
    /// `learned` / `learned_range` make diffusers slice `model_output[:, :3]` for ε prediction.
    /// Read for conversions only: unclip splits any model output with twice the sample's
    /// channels whatever this says (`without_learned_variance` in `schedulers/mod.rs`).
    pub variance_type: Option<String>,
    pub timestep_spacing: TimestepSpacing,
    /// Added to the `leading` timesteps.
    pub steps_offset: usize,
    /// Not supported: rejects `true`.
    pub rescale_betas_zero_snr: bool,
}

impl Default for DPMSolverMultistepSchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            solver_order: 2,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
            algorithm_type: AlgorithmType::DpmSolverPlusPlus,
            solver_type: SolverType::Midpoint,
            lower_order_final: true,
            euler_at_final: false,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            use_lu_lambdas: false,
            use_flow_sigmas: false,
            final_sigmas_type: FinalSigmasType::Zero,
            lambda_min_clipped: None,
            variance_type: None,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
            rescale_betas_zero_snr: false,
        }
    }
}

/// `_sigma_to_alpha_sigma_t` for VP schedules: `α = 1 / (σ² + 1) ** 0.5`, `σ_t = σ · α`.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// λ = log α − log σ (`torch.log(alpha_t) - torch.log(sigma_t)`); +∞ at σ = 0.
fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

/// diffusers' `DPMSolverMultistepScheduler` (DPM-Solver++) with its timesteps set, and the data
/// predictions of the steps taken so far.
#[derive(Debug, Clone)]
pub struct DPMSolverMultistepScheduler {
    config: DPMSolverMultistepSchedulerConfig,
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<i64>,
    /// σ of each timestep, then the final σ: one more entry than `timesteps`.
    sigmas: Vec<f32>,
    /// x̂₀ of the previous step (the second-to-last of diffusers' `model_outputs`), kept for
    /// order 2.
    previous_data_prediction: Option<ArrayD<f32>>,
    /// The step that may come next (besides 0, which restarts).
    next_step: usize,
}

impl DPMSolverMultistepScheduler {
    /// Builds the solver and its timesteps for `num_inference_steps` steps
    /// (`DPMSolverMultistepScheduler.set_timesteps`), with `last = T − clipped_idx`
    /// (`lambda_min_clipped`):
    /// - `linspace`: `np.linspace(0, last − 1, N + 1).round()[::-1][:-1]`;
    /// - `leading`: `arange(N + 1) · (last // (N + 1))` reversed without its final 0, plus
    ///   `steps_offset`;
    /// - `trailing`: `np.arange(last, 0, −T/N).round() − 1` (fewer than N timesteps when λ is
    ///   clipped: [`Scheduler::timesteps`] is authoritative, as diffusers' `len(timesteps)`).
    ///
    /// Rejected with an [`Error::InvalidArgument`] naming the value: an `algorithm_type` other
    /// than `dpmsolver++`, `solver_order` other than 1 or 2, `thresholding`, `trained_betas`,
    /// `rescale_betas_zero_snr`, any of `use_karras_sigmas`, `use_exponential_sigmas`,
    /// `use_beta_sigmas`, `use_lu_lambdas`, `use_flow_sigmas`, a NaN `lambda_min_clipped`, and
    /// step counts whose timesteps repeat or leave 0..T (diffusers accepts e.g. `linspace` with
    /// N = 1000, which repeats timesteps, and `leading` with N = 1000, which is all zeros).
    pub fn new(
        config: DPMSolverMultistepSchedulerConfig,
        num_inference_steps: usize,
    ) -> Result<Self> {
        check_supported(&config)?;
        let alphas_cumprod = betas::alphas_cumprod(
            config.beta_schedule,
            config.num_train_timesteps,
            config.beta_start,
            config.beta_end,
        )?;
        let train = config.num_train_timesteps;
        if num_inference_steps > train {
            // diffusers accepts this, but more than T timesteps out of 0..T must repeat
            return Err(Error::invalid(
                "num_inference_steps",
                format!(
                    "{num_inference_steps} exceeds the {train} timesteps the model was trained with"
                ),
            ));
        }
        let last_timestep = train - clipped_count(&alphas_cumprod, config.lambda_min_clipped);
        let timesteps = checked_timesteps(
            "DPMSolverMultistepScheduler",
            config.timestep_spacing,
            train,
            num_inference_steps,
            false,
            |n| dpm_timesteps(&config, last_timestep, n),
        )?;
        // `((1 - alphas_cumprod) / alphas_cumprod) ** 0.5`, read at the timesteps (np.interp at
        // integer points returns the table entry exactly); timesteps are validated to lie in 0..T.
        let sigma_of = |t: usize| ((1.0 - alphas_cumprod[t]) / alphas_cumprod[t]).sqrt();
        let mut sigmas: Vec<f32> = timesteps.iter().map(|&t| sigma_of(t as usize)).collect();
        sigmas.push(match config.final_sigmas_type {
            FinalSigmasType::Zero => 0.0,
            FinalSigmasType::SigmaMin => sigma_of(0),
        });
        Ok(Self {
            config,
            alphas_cumprod,
            timesteps,
            sigmas,
            previous_data_prediction: None,
            next_step: 0,
        })
    }

    /// The config this scheduler was built from.
    pub fn config(&self) -> &DPMSolverMultistepSchedulerConfig {
        &self.config
    }

    /// `alphas_cumprod` (f32): ᾱ_t for t = 0 … T − 1.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// diffusers' `sigmas` after `set_timesteps`: σ = √((1 − ᾱ)/ᾱ) at each timestep, then the
    /// final σ (0 or σ_min).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// Whether step `step_index` is first order (diffusers' `step`: order 1, the first step, or
    /// the last one under `lower_order_final` / `euler_at_final` / `final_sigmas_type: zero`).
    pub fn is_first_order(&self, step_index: usize) -> bool {
        let len = self.timesteps.len();
        let lower_order_final = step_index + 1 == len
            && (self.config.euler_at_final
                || (self.config.lower_order_final && len < 15)
                || self.config.final_sigmas_type == FinalSigmasType::Zero);
        self.config.solver_order == 1 || step_index == 0 || lower_order_final
    }
}

/// The options of [`DPMSolverMultistepSchedulerConfig`] that unclip does not implement.
fn check_supported(config: &DPMSolverMultistepSchedulerConfig) -> Result<()> {
    const CLASS: &str = "DPMSolverMultistepScheduler";
    betas::check_supported_options(CLASS, &config.trained_betas, config.rescale_betas_zero_snr)?;
    if config.algorithm_type != AlgorithmType::DpmSolverPlusPlus {
        return Err(Error::invalid(
            "algorithm_type",
            format!(
                "{CLASS}: only \"dpmsolver++\" is implemented, got {:?}",
                config.algorithm_type
            ),
        ));
    }
    if !(1..=2).contains(&config.solver_order) {
        return Err(Error::invalid(
            "solver_order",
            format!(
                "{CLASS}: orders 1 and 2 are implemented, got {}",
                config.solver_order
            ),
        ));
    }
    if config.thresholding {
        return Err(Error::invalid(
            "thresholding",
            format!("{CLASS}: dynamic thresholding is not supported"),
        ));
    }
    for (name, set) in [
        ("use_karras_sigmas", config.use_karras_sigmas),
        ("use_exponential_sigmas", config.use_exponential_sigmas),
        ("use_beta_sigmas", config.use_beta_sigmas),
        ("use_lu_lambdas", config.use_lu_lambdas),
        ("use_flow_sigmas", config.use_flow_sigmas),
    ] {
        if set {
            return Err(Error::invalid(
                name,
                format!("{CLASS}: only the training sigmas are supported; set {name} to false"),
            ));
        }
    }
    if config.lambda_min_clipped.is_some_and(f64::is_nan) {
        return Err(Error::invalid("lambda_min_clipped", "is NaN"));
    }
    Ok(())
}

/// `clipped_idx = torch.searchsorted(torch.flip(lambda_t, [0]), lambda_min_clipped)`: ATen's
/// lower bound (first index whose value is not below the bound) over λ from t = T − 1 down to 0,
/// with `lambda_t = log(√ᾱ) − log(√(1 − ᾱ))` in f32 and the bound converted to f32 as torch does.
fn clipped_count(alphas_cumprod: &[f32], lambda_min_clipped: Option<f64>) -> usize {
    let Some(bound) = lambda_min_clipped else {
        return 0;
    };
    let bound = bound as f32;
    let flipped: Vec<f32> = alphas_cumprod
        .iter()
        .rev()
        .map(|&a| lambda(a.sqrt(), (1.0 - a).sqrt()))
        .collect();
    let (mut start, mut end) = (0, flipped.len());
    while start < end {
        let mid = start + (end - start) / 2;
        // ATen's `if (!(mid_val >= val))`: a NaN λ counts as below the bound
        match flipped[mid].partial_cmp(&bound) {
            Some(Ordering::Less) | None => start = mid + 1,
            Some(Ordering::Equal | Ordering::Greater) => end = mid,
        }
    }
    start
}

/// `set_timesteps`' three spacings (see [`DPMSolverMultistepScheduler::new`]), unchecked.
fn dpm_timesteps(
    config: &DPMSolverMultistepSchedulerConfig,
    last_timestep: usize,
    num_inference_steps: usize,
) -> Vec<i64> {
    let last = last_timestep as f64;
    match config.timestep_spacing {
        TimestepSpacing::Linspace => {
            betas::numpy_linspace(0.0, last - 1.0, num_inference_steps + 1)
                .into_iter()
                .skip(1)
                .rev()
                .map(|t| t.round_ties_even() as i64)
                .collect()
        }
        TimestepSpacing::Leading => {
            let step_ratio = last_timestep / (num_inference_steps + 1);
            (1..=num_inference_steps)
                .rev()
                .map(|i| (i * step_ratio + config.steps_offset) as i64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let step_ratio = config.num_train_timesteps as f64 / num_inference_steps as f64;
            betas::numpy_arange(last, 0.0, -step_ratio)
                .into_iter()
                .map(|t| t.round_ties_even() as i64 - 1)
                .collect()
        }
    }
}

impl Scheduler for DPMSolverMultistepScheduler {
    fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    /// `DPMSolverMultistepScheduler.step(model_output, timesteps[step_index], sample)`: from
    /// `sigmas[i]` to `sigmas[i + 1]`, first or second order ([`Self::is_first_order`]). Never
    /// draws noise. Steps must come in order; `step(0, …)` restarts the solver (diffusers'
    /// `set_timesteps` resets it the same way), any other out-of-order index is an
    /// [`Error::InvalidArgument`].
    fn step(
        &mut self,
        step_index: usize,
        model_output: ArrayViewD<'_, f32>,
        sample: ArrayViewD<'_, f32>,
        _noise: &mut dyn NoiseSource,
    ) -> Result<ArrayD<f32>> {
        let timestep = timestep_at(&self.timesteps, step_index)?;
        if step_index != 0 && step_index != self.next_step {
            return Err(Error::invalid(
                "step_index",
                format!(
                    "DPM-Solver++ combines each step with the previous one, so steps come in order: \
                     expected {} (or 0 to restart), got {step_index}",
                    self.next_step
                ),
            ));
        }
        let model_output =
            without_learned_variance("DPMSolverMultistepScheduler", model_output, &sample)?;
        let first_order = self.is_first_order(step_index);
        tracing::trace!(
            timestep,
            step_index,
            first_order,
            "DPMSolverMultistepScheduler step"
        );

        // `convert_model_output`: the data prediction x̂₀ at σ_s0
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[step_index]);
        let data_prediction = match self.config.prediction_type {
            PredictionType::Epsilon => Zip::from(&sample)
                .and(&model_output)
                .map_collect(|&x, &epsilon| (x - sigma_s0 * epsilon) / alpha_s0),
            PredictionType::Sample => model_output.to_owned(),
        };

        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[step_index + 1]);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let h = lambda_t - lambda_s0;
        let sample_coeff = sigma_t / sigma_s0;
        let data_coeff = alpha_t * ((-h).exp() - 1.0);

        let mut prev_sample = ArrayD::<f32>::zeros(sample.raw_dim());
        match (&self.previous_data_prediction, first_order) {
            // `dpm_solver_first_order_update`
            (_, true) | (None, false) => {
                Zip::from(&mut prev_sample)
                    .and(&sample)
                    .and(&data_prediction)
                    .for_each(|out, &x, &d0| *out = sample_coeff * x - data_coeff * d0);
            }
            // `multistep_dpm_solver_second_order_update`
            (Some(previous), false) => {
                let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[step_index - 1]);
                let h_0 = lambda_s0 - lambda(alpha_s1, sigma_s1);
                let r0 = h_0 / h;
                let d1_scale = 1.0 / r0;
                let d1_coeff = match self.config.solver_type {
                    SolverType::Midpoint => 0.5 * data_coeff,
                    SolverType::Heun => alpha_t * (((-h).exp() - 1.0) / h + 1.0),
                };
                let solver_type = self.config.solver_type;
                Zip::from(&mut prev_sample)
                    .and(&sample)
                    .and(&data_prediction)
                    .and(previous)
                    .for_each(|out, &x, &m0, &m1| {
                        let d1 = d1_scale * (m0 - m1);
                        let first = sample_coeff * x - data_coeff * m0;
                        *out = match solver_type {
                            SolverType::Midpoint => first - d1_coeff * d1,
                            SolverType::Heun => first + d1_coeff * d1,
                        };
                    });
            }
        }
        self.previous_data_prediction = (self.config.solver_order > 1).then_some(data_prediction);
        self.next_step = step_index + 1;
        Ok(prev_sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_match_diffusers() {
        let parsed: DPMSolverMultistepSchedulerConfig =
            serde_json::from_str(r#"{"_class_name": "DPMSolverMultistepScheduler"}"#).unwrap();
        assert_eq!(parsed, DPMSolverMultistepSchedulerConfig::default());
    }

    #[test]
    fn legacy_names_map_as_in_diffusers() {
        let parsed: DPMSolverMultistepSchedulerConfig =
            serde_json::from_str(r#"{"algorithm_type": "deis", "solver_type": "bh2"}"#).unwrap();
        assert_eq!(parsed.algorithm_type, AlgorithmType::DpmSolverPlusPlus);
        assert_eq!(parsed.solver_type, SolverType::Midpoint);
    }
}
