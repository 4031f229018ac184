//! Diffusion super-resolution (DALL·E 2 §2.1; diffusers `UnCLIPPipeline.__call__`, super-res
//! loop): the low-res image, upsampled with torch's antialiased bicubic, is concatenated to the
//! noisy sample on the channel axis; `first` runs every step but the last, `last` the last one;
//! no guidance.

use std::sync::Arc;

use ndarray::{concatenate, s, Array4, ArrayView4, Axis};

use super::{report, timestep_batch, ModelCache, Observer, Sampling, Stage};
use crate::bundle::{Bundle, UpsamplerEntry};
use crate::image_io::resize_bicubic_antialias;
use crate::noise::NoiseSource;
use crate::runtime::{BatchProfile, Input, Model};
use crate::schedulers::SchedulerConfig;
use crate::text::into_dim;
use crate::{Error, Result};

/// What an upsampler produced.
#[derive(Clone, Debug)]
pub struct UpsamplerOutput {
    /// The low-res input after bicubic upsampling `(batch, 3, S, S)`.
    pub upsampled: Array4<f32>,
    /// The super-resolved images, not clamped `(batch, 3, S, S)`.
    pub images: Array4<f32>,
}

/// One super-resolution stage.
pub struct Upsampler {
    /// Name from the bundle (`sr256`).
    pub name: String,
    first: Arc<Model>,
    last: Arc<Model>,
    scheduler: SchedulerConfig,
    sample_size: usize,
    channels: usize,
    /// Most images per model call ([`crate::pipeline::LoadOptions::upsampler_batch`]).
    call_batch: usize,
    pub default_steps: usize,
}

impl Upsampler {
    /// The scheduler config the bundle names for this stage.
    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler
    }

    pub(crate) fn load(
        models: &mut ModelCache<'_>,
        entry: &UpsamplerEntry,
        bundle: &Bundle,
        call_batch: usize,
    ) -> Result<Self> {
        // calls carry up to `call_batch` images, no guidance
        let profile = BatchProfile::new(1, call_batch.min(super::MAX_BATCH));
        Ok(Upsampler {
            name: entry.name.clone(),
            first: models.get(&entry.first, profile)?,
            last: models.get(&entry.last, profile)?,
            scheduler: super::parse_scheduler(bundle, &entry.name, &entry.scheduler)?,
            sample_size: entry.sample_size,
            channels: entry.in_channels,
            call_batch,
            default_steps: entry.default_steps,
        })
    }

    /// The ONNX models (for timings; the same model twice when first == last).
    pub fn models(&self) -> [&Model; 2] {
        [&self.first, &self.last]
    }

    /// Output resolution (square).
    pub fn sample_size(&self) -> usize {
        self.sample_size
    }

    /// Super-resolves `low_res` `(batch, 3, s, s)` (already clamped to [−1, 1]). Draws the
    /// `(batch, 3, S, S)` latents, then one noise tensor per step with t > 0.
    pub fn sample(
        &self,
        index: usize,
        low_res: ArrayView4<'_, f32>,
        sampling: &Sampling,
        noise: &mut dyn NoiseSource,
        observer: &mut Observer<'_>,
    ) -> Result<UpsamplerOutput> {
        let steps = sampling.steps;
        let _span = tracing::info_span!("upsampler", name = %self.name, steps).entered();
        let batch = low_res.shape()[0];
        if low_res.shape()[1] != self.channels {
            return Err(Error::Shape {
                what: format!("{} input", self.name),
                expected: format!("{} channels", self.channels),
                found: low_res.shape().to_vec(),
            });
        }
        let mut scheduler = sampling.build("super-resolution steps", &self.scheduler)?;
        let size = self.sample_size;
        let mut latents: Array4<f32> = into_dim(
            Some(noise.randn(&[batch, self.channels, size, size])?),
            "super-res latents",
        )?;
        let sigma = scheduler.init_noise_sigma();
        if sigma != 1.0 {
            latents.mapv_inplace(|x| x * sigma);
        }
        let upsampled = resize_bicubic_antialias(low_res, size, size);
        let timesteps = scheduler.timesteps().to_vec();
        for (i, &t) in timesteps.iter().enumerate() {
            let model = if i + 1 == timesteps.len() {
                &self.last
            } else {
                &self.first
            };
            let input =
                concatenate(Axis(1), &[latents.view(), upsampled.view()]).map_err(|_| {
                    Error::internal(
                        "super-res input: the latents and the upsampled image differ in shape",
                    )
                })?;
            let prediction = self.predict(model, input.view(), t)?;
            latents = into_dim(
                Some(scheduler.step(
                    i,
                    prediction.view().into_dyn(),
                    latents.view().into_dyn(),
                    noise,
                )?),
                "super-res latents",
            )?;
            report(observer, Stage::Upsampler(index), i + 1, timesteps.len())?;
        }
        Ok(UpsamplerOutput {
            upsampled,
            images: latents,
        })
    }

    /// The model's prediction for `input` `(batch, 2·channels, S, S)` at timestep `t`, in calls
    /// of at most `call_batch` images: no guidance couples the images, so each one's prediction
    /// is the same whichever call computes it.
    fn predict(&self, model: &Model, input: ArrayView4<'_, f32>, t: i64) -> Result<Array4<f32>> {
        let batch = input.shape()[0];
        let mut parts = Vec::with_capacity(batch.div_ceil(self.call_batch));
        for start in (0..batch).step_by(self.call_batch) {
            let end = (start + self.call_batch).min(batch);
            let timestep = timestep_batch(t, end - start);
            let mut out = model.run(&[
                Input::F32(input.slice(s![start..end, .., .., ..]).into_dyn()),
                Input::I64(timestep.view().into_dyn()),
            ])?;
            parts.push(into_dim::<ndarray::Ix4>(out.pop(), "super-res prediction")?);
        }
        if parts.len() == 1 {
            return Ok(parts.pop().expect("one part"));
        }
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        concatenate(Axis(0), &views).map_err(|_| {
            Error::internal("super-res prediction: the split calls' parts differ in shape")
        })
    }
}
