//! Diffusion schedulers: pure numerics on `ndarray`, configured from diffusers'
//! `scheduler_config.json` and bit-compatible with diffusers where torch's arithmetic allows.
//!
//! One file per scheduler, each mirroring one diffusers file: `unclip.rs`
//! (`schedulers/scheduling_unclip.py`), `ddpm.rs` (`scheduling_ddpm.py`), `ddim.rs`
//! (`scheduling_ddim.py`), `ddim_inverse.rs`
//! (`scheduling_ddim_inverse.py`), `dpmsolver_multistep.rs` (`scheduling_dpmsolver_multistep.py`);
//! `betas.rs` holds the training noise schedules and numpy ranges they share. Every scheduler is
//! driven through [`Scheduler`] by step index, so the pipeline's denoising loop is the same for
//! all of them and the convention of which timestep a step lands on lives in the scheduler, next
//! to the math that depends on it.
//!
//! [`SchedulerConfig::to_kind`] swaps a stage's scheduler the way diffusers users do
//! (`DDIMScheduler.from_config(pipe.scheduler.config)`), so a Karlo bundle's `UnCLIPScheduler`
//! configs also drive DDPM, DDIM (η), DDIM inversion and DPM-Solver++.

pub mod betas;
pub mod ddim;
pub mod ddim_inverse;
pub mod ddpm;
pub mod dpmsolver_multistep;
pub mod unclip;

use std::fmt;
use std::str::FromStr;

use ndarray::{ArrayD, ArrayViewD, Axis};
use serde::{Deserialize, Serialize, Serializer};

pub use betas::BetaSchedule;
pub use ddim::{DDIMScheduler, DDIMSchedulerConfig};
pub use ddim_inverse::{DDIMInverseScheduler, DDIMInverseSchedulerConfig};
pub use ddpm::{DDPMScheduler, DDPMSchedulerConfig, DdpmVarianceType};
pub use dpmsolver_multistep::{
    AlgorithmType, DPMSolverMultistepScheduler, DPMSolverMultistepSchedulerConfig, FinalSigmasType,
    SolverType,
};
pub use unclip::{PredictionType, UnCLIPScheduler, UnCLIPSchedulerConfig, VarianceType};

use crate::noise::NoiseSource;
use crate::{Error, Result};

/// A scheduler whose timesteps are fixed at construction (diffusers' `set_timesteps`).
///
/// One scheduler drives one denoising loop: it is built per run (cheap: a 1000-entry table), and
/// `step` takes `&mut self` because multistep solvers (DPM-Solver++) remember the model outputs
/// of earlier steps, as diffusers' scheduler objects do. Steps must be taken in order, from
/// index 0.
pub trait Scheduler: Send + Sync {
    /// The timesteps of the loop, first to last: decreasing for the samplers, increasing for
    /// [`DDIMInverseScheduler`]. The model is evaluated at `timesteps()[i]` before `step(i, …)`.
    fn timesteps(&self) -> &[i64];

    /// Advances `sample` from `timesteps()[step_index]` to the next noise level of the schedule
    /// (after the last step, to the clean sample), given the model's output at the current
    /// timestep. Which level that is follows the diffusers class exactly (e.g. DDIM steps to
    /// `t − T/N`, which is not always the next entry of the list); each scheduler documents it.
    ///
    /// `model_output` may carry twice the sample's channels (dim 1), the learned variance of
    /// Karlo's decoder: it is split there as `UnCLIPPipeline` splits it, and the second half is
    /// read only by a scheduler that uses it (`UnCLIPScheduler` with `learned_range`). Random
    /// draws come from `noise`, in diffusers' order and with the sample's shape, only on steps
    /// where diffusers draws.
    fn step(
        &mut self,
        step_index: usize,
        model_output: ArrayViewD<'_, f32>,
        sample: ArrayViewD<'_, f32>,
        noise: &mut dyn NoiseSource,
    ) -> Result<ArrayD<f32>>;

    /// Standard deviation of the initial noise (diffusers' `init_noise_sigma`): the pipeline
    /// multiplies its starting latents by it (`prepare_latents`). 1 for DDPM-style schedulers.
    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    /// ᾱ_t (t = 0 … T − 1) when a loop may start mid-schedule from a noised image (img2img:
    /// [`add_noise`] at the first timestep run, then `step` from that index on), as the
    /// single-step DDPM-family schedulers can; `None` for the others (DPM-Solver++'s multistep
    /// history starts at its first step).
    fn noising_schedule(&self) -> Option<&[f32]> {
        None
    }
}

/// diffusers `DDPMScheduler.add_noise(original_samples, noise, timesteps)` for one timestep
/// (img2img's start; DDIM's and UnCLIP's are the same formula): `√ᾱ_t · x₀ + √(1 − ᾱ_t) · ε`,
/// in f32 as torch computes it.
pub fn add_noise(
    alphas_cumprod: &[f32],
    original: ArrayViewD<'_, f32>,
    noise: ArrayViewD<'_, f32>,
    timestep: i64,
) -> Result<ArrayD<f32>> {
    if original.shape() != noise.shape() {
        return Err(Error::Shape {
            what: "add_noise noise".into(),
            expected: format!("{:?}", original.shape()),
            found: noise.shape().to_vec(),
        });
    }
    let alpha_prod = usize::try_from(timestep)
        .ok()
        .and_then(|t| alphas_cumprod.get(t).copied())
        .ok_or_else(|| {
            Error::invalid(
                "timestep",
                format!(
                    "{timestep} is outside the trained timesteps 0..{}",
                    alphas_cumprod.len()
                ),
            )
        })?;
    let sqrt_alpha_prod = alpha_prod.sqrt();
    let sqrt_one_minus_alpha_prod = (1.0 - alpha_prod).sqrt();
    let mut noisy = ArrayD::<f32>::zeros(original.raw_dim());
    ndarray::Zip::from(&mut noisy)
        .and(&original)
        .and(&noise)
        .for_each(|out, &x, &z| *out = sqrt_alpha_prod * x + sqrt_one_minus_alpha_prod * z);
    Ok(noisy)
}

/// How `set_timesteps` spreads N inference timesteps over the T trained ones (`timestep_spacing`;
/// Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2). Each
/// scheduler file states its own formula: they differ between diffusers classes (DPM-Solver
/// spaces N + 1 points and drops the last).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum TimestepSpacing {
    /// Evenly spaced from T − 1 down to 0, rounded half to even (`np.linspace(...).round()`).
    #[serde(rename = "linspace")]
    Linspace,
    /// Multiples of an integer ratio from 0, plus `steps_offset` (DDIM's original spacing).
    #[serde(rename = "leading")]
    Leading,
    /// `round(np.arange(T, 0, −T/N)) − 1`: starts at T − 1. numpy's float `arange` overshoots
    /// for some N (61, 103, 121, 122, 201, … of 1..=1000 with T = 1000: 62 of them) and diffusers
    /// then lists N + 1 timesteps ending at −1; unclip rejects those N with an error naming the
    /// nearest N that works.
    #[serde(rename = "trailing")]
    Trailing,
}

impl TimestepSpacing {
    /// The name used in diffusers' JSON configs.
    pub fn as_str(self) -> &'static str {
        match self {
            TimestepSpacing::Linspace => "linspace",
            TimestepSpacing::Leading => "leading",
            TimestepSpacing::Trailing => "trailing",
        }
    }
}

/// What is wrong with a timestep list, if anything: it must be non-empty, strictly monotone in
/// the scheduler's direction, and made of trained timesteps (0 ≤ t < T).
fn timestep_problem(
    timesteps: &[i64],
    num_train_timesteps: usize,
    increasing: bool,
) -> Option<String> {
    if timesteps.is_empty() {
        return Some("no timesteps".into());
    }
    if let Some(&t) = timesteps
        .iter()
        .find(|&&t| t < 0 || t >= num_train_timesteps as i64)
    {
        return Some(format!(
            "timestep {t} is outside the trained timesteps 0..{num_train_timesteps}"
        ));
    }
    let monotone = timesteps
        .windows(2)
        .all(|w| if increasing { w[0] < w[1] } else { w[0] > w[1] });
    (!monotone).then(|| "timesteps repeat (zero-width steps)".into())
}

/// Runs a scheduler's `set_timesteps` formula (`compute`, which mirrors diffusers including the
/// cases where diffusers returns an unusable list) and turns an unusable list into an
/// [`Error::InvalidArgument`] that says why and names the nearest step counts that work.
///
/// diffusers accepts these lists silently; what it does with them is not a schedule: a −1 from
/// the `trailing` overshoot indexes `alphas_cumprod[-1]` (the noisiest level) on the last step,
/// a timestep ≥ T raises `IndexError` mid-loop, and repeated timesteps take zero-width steps
/// (DPM-Solver++ then divides by h = 0).
pub(crate) fn checked_timesteps(
    class: &'static str,
    spacing: TimestepSpacing,
    num_train_timesteps: usize,
    num_inference_steps: usize,
    increasing: bool,
    compute: impl Fn(usize) -> Vec<i64>,
) -> Result<Vec<i64>> {
    if num_inference_steps == 0 {
        return Err(Error::invalid("num_inference_steps", "must be at least 1"));
    }
    let timesteps = compute(num_inference_steps);
    let Some(problem) = timestep_problem(&timesteps, num_train_timesteps, increasing) else {
        return Ok(timesteps);
    };
    let works = |n: usize| timestep_problem(&compute(n), num_train_timesteps, increasing).is_none();
    let below = (num_inference_steps.saturating_sub(64).max(1)..num_inference_steps)
        .rev()
        .find(|&n| works(n));
    let above = (num_inference_steps + 1..=num_inference_steps + 64).find(|&n| works(n));
    let suggestion = match (below, above) {
        (Some(b), Some(a)) => format!("; {b} or {a} steps work"),
        (Some(b), None) => format!("; {b} steps work"),
        (None, Some(a)) => format!("; {a} steps work"),
        (None, None) => String::new(),
    };
    let overshoot = if spacing == TimestepSpacing::Trailing && timesteps.last() == Some(&-1) {
        format!(
            " (np.arange's float step overshoots: {} timesteps, the last −1, which diffusers \
             would read as alphas_cumprod[-1])",
            timesteps.len()
        )
    } else {
        String::new()
    };
    Err(Error::invalid(
        "num_inference_steps",
        format!(
            "{class} with timestep_spacing \"{}\" cannot take {num_inference_steps} steps of \
             {num_train_timesteps}: {problem}{overshoot}{suggestion}",
            spacing.as_str()
        ),
    ))
}

/// `timesteps[step_index]`, or an error naming the number of steps.
pub(crate) fn timestep_at(timesteps: &[i64], step_index: usize) -> Result<i64> {
    timesteps.get(step_index).copied().ok_or_else(|| {
        Error::invalid(
            "step_index",
            format!(
                "{step_index} is past the last of {} inference steps",
                timesteps.len()
            ),
        )
    })
}

/// One `randn_tensor(model_output.shape)` of a scheduler step, checked for shape.
pub(crate) fn draw_noise(noise: &mut dyn NoiseSource, shape: &[usize]) -> Result<ArrayD<f32>> {
    let drawn = noise.randn(shape)?;
    if drawn.shape() != shape {
        return Err(Error::Shape {
            what: "scheduler variance noise".into(),
            expected: format!("{shape:?}"),
            found: drawn.shape().to_vec(),
        });
    }
    Ok(drawn)
}

/// Convention for the samplers that do not model the variance (DDIM, DDIM inversion,
/// DPM-Solver++): a `model_output` with twice the sample's channels in dim 1 is Karlo's decoder
/// output `[ε, learned variance]`; it is split there as `UnCLIPPipeline.__call__` splits it and the
/// variance half is unused (these samplers fix their variance: 0, or η·σ_t for DDIM). diffusers'
/// `DDIMScheduler` and `DDIMInverseScheduler` would not accept that shape (their arithmetic fails to
/// broadcast); `DPMSolverMultistepScheduler` slices `[:, :3]` when its config has
/// `variance_type: learned(_range)`, which is the same split for 3-channel images. Any other
/// mismatch is an [`Error::Shape`].
pub(crate) fn without_learned_variance<'a>(
    class: &str,
    model_output: ArrayViewD<'a, f32>,
    sample: &ArrayViewD<'_, f32>,
) -> Result<ArrayViewD<'a, f32>> {
    let found = model_output.shape().to_vec();
    if let Some(OutputLayout::Plain(prediction) | OutputLayout::WithVariance(prediction, _)) =
        output_layout(model_output, sample)
    {
        return Ok(prediction);
    }
    Err(Error::Shape {
        what: format!("{class} model_output"),
        expected: format!(
            "the sample's shape {:?}, or twice its channels in dim 1 (a learned variance, unused)",
            sample.shape()
        ),
        found,
    })
}

/// How a model output lines up with the sample a scheduler steps.
pub(crate) enum OutputLayout<'a> {
    /// The sample's shape.
    Plain(ArrayViewD<'a, f32>),
    /// Twice the sample's channels in dim 1, every other dim equal: the prediction and the
    /// variance half, `torch.split(model_output, sample.shape[1], dim=1)` as the pipelines split it.
    WithVariance(ArrayViewD<'a, f32>, ArrayViewD<'a, f32>),
}

/// The [`OutputLayout`] of `model_output` against `sample`, or `None` when it is neither.
pub(crate) fn output_layout<'a>(
    model_output: ArrayViewD<'a, f32>,
    sample: &ArrayViewD<'_, f32>,
) -> Option<OutputLayout<'a>> {
    if model_output.shape() == sample.shape() {
        return Some(OutputLayout::Plain(model_output));
    }
    let doubled = sample.ndim() >= 2
        && model_output.ndim() == sample.ndim()
        && model_output.shape()[1] == 2 * sample.shape()[1]
        && model_output
            .shape()
            .iter()
            .zip(sample.shape())
            .enumerate()
            .all(|(axis, (a, b))| axis == 1 || a == b);
    doubled.then(|| {
        let (prediction, variance) = model_output.split_at(Axis(1), sample.shape()[1]);
        OutputLayout::WithVariance(prediction, variance)
    })
}

/// The name of a [`PredictionType`] in diffusers' JSON configs.
pub fn prediction_type_name(prediction_type: PredictionType) -> &'static str {
    match prediction_type {
        PredictionType::Epsilon => "epsilon",
        PredictionType::Sample => "sample",
    }
}

/// `serialize_with` for the `prediction_type` fields ([`PredictionType`] lives in `unclip.rs`,
/// which derives only `Deserialize`).
pub(crate) fn serialize_prediction_type<S: Serializer>(
    prediction_type: &PredictionType,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    serializer.serialize_str(prediction_type_name(*prediction_type))
}

/// The scheduler classes unclip implements, by diffusers' `_class_name`.
pub const SUPPORTED_SCHEDULERS: &[&str] = &[
    "UnCLIPScheduler",
    "DDPMScheduler",
    "DDIMScheduler",
    "DDIMInverseScheduler",
    "DPMSolverMultistepScheduler",
];

/// A scheduler to run a stage with, whatever its bundle's config names (`--scheduler`): the
/// config is converted with [`SchedulerConfig::to_kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    /// `UnCLIPScheduler`: Karlo's DDPM (the bundle's own).
    UnCLIP,
    /// `DDPMScheduler`: ancestral DDPM with diffusers' variance types (Kandinsky 2.2's decoder).
    Ddpm,
    /// `DDIMScheduler`, deterministic at η = 0, DDPM-like at η = 1.
    Ddim,
    /// `DDIMInverseScheduler`: clean sample → noise (DDIM inversion).
    DdimInverse,
    /// `DPMSolverMultistepScheduler` with `algorithm_type: "dpmsolver++"`.
    DpmSolverPP,
}

impl SchedulerKind {
    /// Every kind, in the order of [`SUPPORTED_SCHEDULERS`].
    pub const ALL: [SchedulerKind; 5] = [
        SchedulerKind::UnCLIP,
        SchedulerKind::Ddpm,
        SchedulerKind::Ddim,
        SchedulerKind::DdimInverse,
        SchedulerKind::DpmSolverPP,
    ];

    /// The canonical name (`unclip`, `ddpm`, `ddim`, `ddim-inverse`, `dpm++`).
    pub fn as_str(self) -> &'static str {
        match self {
            SchedulerKind::UnCLIP => "unclip",
            SchedulerKind::Ddpm => "ddpm",
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::DdimInverse => "ddim-inverse",
            SchedulerKind::DpmSolverPP => "dpm++",
        }
    }

    /// diffusers' `_class_name` of this kind.
    pub fn class_name(self) -> &'static str {
        match self {
            SchedulerKind::UnCLIP => "UnCLIPScheduler",
            SchedulerKind::Ddpm => "DDPMScheduler",
            SchedulerKind::Ddim => "DDIMScheduler",
            SchedulerKind::DdimInverse => "DDIMInverseScheduler",
            SchedulerKind::DpmSolverPP => "DPMSolverMultistepScheduler",
        }
    }
}

impl FromStr for SchedulerKind {
    type Err = Error;

    /// `unclip`, `ddpm`, `ddim`, `ddim-inverse`, `dpm++` (or `dpmsolver++`), case-insensitive.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "unclip" => Ok(SchedulerKind::UnCLIP),
            "ddpm" => Ok(SchedulerKind::Ddpm),
            "ddim" => Ok(SchedulerKind::Ddim),
            "ddim-inverse" => Ok(SchedulerKind::DdimInverse),
            "dpm++" | "dpmsolver++" => Ok(SchedulerKind::DpmSolverPP),
            other => Err(Error::invalid(
                "scheduler",
                format!("{other:?}: choose unclip, ddpm, ddim, ddim-inverse or dpm++"),
            )),
        }
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A diffusers scheduler config (`scheduler_config.json`), tagged by its `_class_name`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "_class_name")]
#[non_exhaustive]
pub enum SchedulerConfig {
    /// `UnCLIPScheduler` (Karlo's prior, decoder and super-resolution).
    #[serde(rename = "UnCLIPScheduler")]
    UnCLIP(UnCLIPSchedulerConfig),
    /// `DDPMScheduler`.
    #[serde(rename = "DDPMScheduler")]
    Ddpm(DDPMSchedulerConfig),
    /// `DDIMScheduler`, plus unclip's `eta` key.
    #[serde(rename = "DDIMScheduler")]
    Ddim(DDIMSchedulerConfig),
    /// `DDIMInverseScheduler`.
    #[serde(rename = "DDIMInverseScheduler")]
    DdimInverse(DDIMInverseSchedulerConfig),
    /// `DPMSolverMultistepScheduler` (DPM-Solver++ only).
    #[serde(rename = "DPMSolverMultistepScheduler")]
    DpmSolverMultistep(DPMSolverMultistepSchedulerConfig),
}

impl SchedulerConfig {
    /// Parses a config from diffusers' JSON. An unknown or missing `_class_name`, or a value the
    /// class does not accept (e.g. `variance_type: "fixed_large"`), is an
    /// [`Error::InvalidArgument`] naming it. Keys the class does not know are ignored, as
    /// diffusers' `ConfigMixin` ignores them.
    pub fn from_json(json: &serde_json::Value) -> Result<Self> {
        let class_name = json
            .get("_class_name")
            .ok_or_else(|| {
                Error::invalid(
                    "scheduler config",
                    "no \"_class_name\": expected a diffusers scheduler_config.json",
                )
            })?
            .as_str()
            .ok_or_else(|| Error::invalid("scheduler config", "\"_class_name\" is not a string"))?;
        if !SUPPORTED_SCHEDULERS.contains(&class_name) {
            return Err(Error::invalid(
                "scheduler class",
                format!(
                    "{class_name:?} is not supported (supported: {})",
                    SUPPORTED_SCHEDULERS.join(", ")
                ),
            ));
        }
        Self::deserialize(json)
            .map_err(|e| Error::invalid("scheduler config", format!("{class_name}: {e}")))
    }

    /// diffusers' `_class_name` of this config.
    pub fn class_name(&self) -> &'static str {
        self.kind().class_name()
    }

    /// Which scheduler this config builds.
    pub fn kind(&self) -> SchedulerKind {
        match self {
            SchedulerConfig::UnCLIP(_) => SchedulerKind::UnCLIP,
            SchedulerConfig::Ddpm(_) => SchedulerKind::Ddpm,
            SchedulerConfig::Ddim(_) => SchedulerKind::Ddim,
            SchedulerConfig::DdimInverse(_) => SchedulerKind::DdimInverse,
            SchedulerConfig::DpmSolverMultistep(_) => SchedulerKind::DpmSolverPP,
        }
    }

    /// Builds the scheduler with its timesteps for `num_inference_steps` steps.
    pub fn build(&self, num_inference_steps: usize) -> Result<Box<dyn Scheduler>> {
        Ok(match self {
            SchedulerConfig::UnCLIP(config) => {
                Box::new(UnCLIPScheduler::new(config.clone(), num_inference_steps)?)
            }
            SchedulerConfig::Ddpm(config) => {
                Box::new(DDPMScheduler::new(config.clone(), num_inference_steps)?)
            }
            SchedulerConfig::Ddim(config) => {
                Box::new(DDIMScheduler::new(config.clone(), num_inference_steps)?)
            }
            SchedulerConfig::DdimInverse(config) => Box::new(DDIMInverseScheduler::new(
                config.clone(),
                num_inference_steps,
            )?),
            SchedulerConfig::DpmSolverMultistep(config) => Box::new(
                DPMSolverMultistepScheduler::new(config.clone(), num_inference_steps)?,
            ),
        })
    }

    /// What diffusers' `<Class>.from_config(self.config)` gives: keys the two classes share
    /// (num_train_timesteps, beta_schedule, beta_start/end, clip_sample, clip_sample_range,
    /// prediction_type, timestep_spacing, steps_offset, ...) carry over, the rest take the target
    /// class's defaults. Converting an `UnCLIPScheduler` config (squaredcos_cap_v2,
    /// `variance_type` ignored by DDIM, kept but without effect by DPM-Solver++) works for every
    /// kind; the fixture of `tests/solvers.rs` records diffusers' conversions of Karlo's configs.
    ///
    /// Two departures, both where diffusers' result is not a usable scheduler:
    /// - every key of `self` carries over, as for a config diffusers loaded from a complete
    ///   `scheduler_config.json` (diffusers writes every key). A config *built in Python* without
    ///   naming a key lists it in `_use_default_values` and `from_config` then drops it: e.g.
    ///   `DDIMScheduler.from_config(UnCLIPScheduler().config)` gets DDIM's default `linear` betas,
    ///   not the cosine schedule the model was trained with.
    /// - keys whose value is `null` take the target's default. (diffusers would pass the `None`:
    ///   DPM-Solver++'s `variance_type: null` makes an `UnCLIPScheduler` that raises at its first
    ///   noisy step.)
    ///
    /// unclip's `eta` key stays with DDIM configs; converting to the same kind returns a copy.
    /// A value the target class does not accept (DPM-Solver++'s `variance_type: "learned"` into
    /// `UnCLIPScheduler`) is an [`Error::InvalidArgument`]; values a class parses but cannot run
    /// (`timestep_spacing: "linspace"` for DDIM inversion) are rejected by [`Self::build`].
    pub fn to_kind(&self, kind: SchedulerKind) -> Result<SchedulerConfig> {
        if kind == self.kind() {
            return Ok(self.clone());
        }
        let mut keys = self.diffusers_keys()?;
        keys.retain(|_, value| !value.is_null());
        let keys = serde_json::Value::Object(keys);
        let converted = |e: serde_json::Error| {
            Error::invalid(
                "scheduler config",
                format!(
                    "{} cannot become {}: {e}",
                    self.class_name(),
                    kind.class_name()
                ),
            )
        };
        Ok(match kind {
            SchedulerKind::UnCLIP => {
                SchedulerConfig::UnCLIP(Deserialize::deserialize(&keys).map_err(converted)?)
            }
            SchedulerKind::Ddpm => {
                SchedulerConfig::Ddpm(Deserialize::deserialize(&keys).map_err(converted)?)
            }
            SchedulerKind::Ddim => {
                let mut config: DDIMSchedulerConfig =
                    Deserialize::deserialize(&keys).map_err(converted)?;
                config.eta = 0.0;
                SchedulerConfig::Ddim(config)
            }
            SchedulerKind::DdimInverse => {
                SchedulerConfig::DdimInverse(Deserialize::deserialize(&keys).map_err(converted)?)
            }
            SchedulerKind::DpmSolverPP => SchedulerConfig::DpmSolverMultistep(
                Deserialize::deserialize(&keys).map_err(converted)?,
            ),
        })
    }

    /// Sets DDIM's η (unclip's `eta` key; diffusers passes it to every `step`). η must be finite
    /// and in [0, 1] (see [`DDIMSchedulerConfig::eta`]); any other kind accepts only η = 0, since
    /// it has no η to set.
    pub fn with_eta(self, eta: f32) -> Result<SchedulerConfig> {
        ddim::check_eta(eta)?;
        match self {
            SchedulerConfig::Ddim(mut config) => {
                config.eta = eta;
                Ok(SchedulerConfig::Ddim(config))
            }
            other if eta == 0.0 => Ok(other),
            other => Err(Error::invalid(
                "eta",
                format!(
                    "{eta} given, but {} has no η: only DDIMScheduler (ddim) takes it",
                    other.class_name()
                ),
            )),
        }
    }

    /// The config as diffusers' keys (without `_class_name`), the input of [`Self::to_kind`].
    fn diffusers_keys(&self) -> Result<serde_json::Map<String, serde_json::Value>> {
        let value = match self {
            SchedulerConfig::UnCLIP(config) => Ok(serde_json::json!({
                "num_train_timesteps": config.num_train_timesteps,
                "variance_type": match config.variance_type {
                    VarianceType::FixedSmallLog => "fixed_small_log",
                    VarianceType::LearnedRange => "learned_range",
                },
                "clip_sample": config.clip_sample,
                "clip_sample_range": config.clip_sample_range,
                "prediction_type": prediction_type_name(config.prediction_type),
                "beta_schedule": config.beta_schedule.as_str(),
            })),
            SchedulerConfig::Ddpm(config) => serde_json::to_value(config),
            SchedulerConfig::Ddim(config) => serde_json::to_value(config),
            SchedulerConfig::DdimInverse(config) => serde_json::to_value(config),
            SchedulerConfig::DpmSolverMultistep(config) => serde_json::to_value(config),
        }
        .map_err(|e| Error::invalid("scheduler config", format!("{}: {e}", self.class_name())))?;
        match value {
            serde_json::Value::Object(keys) => Ok(keys),
            other => Err(Error::invalid(
                "scheduler config",
                format!("{} serialized to {other}, not an object", self.class_name()),
            )),
        }
    }
}

/// Builds a scheduler from diffusers' `scheduler_config.json` content, dispatching on
/// `_class_name`. See [`SchedulerConfig::from_json`] for the errors.
pub fn scheduler_from_config(
    json: &serde_json::Value,
    num_inference_steps: usize,
) -> Result<Box<dyn Scheduler>> {
    SchedulerConfig::from_json(json)?.build(num_inference_steps)
}
