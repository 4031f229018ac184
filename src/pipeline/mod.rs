//! Text → image: prompts → text embeddings → prior → decoder → upsamplers → RGB images
//! (docs/architecture.md; diffusers `UnCLIPPipeline.__call__`). The pipeline never owns an RNG: the
//! caller passes the [`NoiseSource`], drawn in diffusers' order.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use ndarray::{Array2, ArrayD, Axis};

use crate::bundle::Bundle;
use crate::guidance;
use crate::image_io::to_rgb8;
use crate::noise::NoiseSource;
use crate::runtime::{Model, Precision, Runtime};
use crate::stages::{
    Conditioning, Decoder, ImageEncoder, ModelCache, Observer, Prior, Stage, Upsampler,
};
use crate::text::{TextEmbeddings, TextEncoder};
use crate::{Error, Result};

mod metadata;
mod request;

pub use crate::stages::MAX_BATCH;
pub use crate::tensor::Tensor;
pub use metadata::{Reproduction, Seed, UNCLIP_VERSION};
pub use request::{DecoderCondition, ResolvedSettings, TextToImage};

/// Wall and ONNX Runtime seconds of one stage.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StageTiming {
    pub stage: String,
    pub seconds: f64,
    /// Time inside `Session::run` during the stage.
    pub ort_seconds: f64,
}

/// The result of a run.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Final images, prompt-major (`prompt 0 image 0, prompt 0 image 1, …`).
    pub images: Vec<image::RgbImage>,
    /// The CLIP image embeddings decoded `(images, D)`.
    pub image_embeddings: Array2<f32>,
    pub settings: ResolvedSettings,
    pub timings: Vec<StageTiming>,
    /// Named intermediates (names as in `tests/fixtures/ref/<case>/`), when requested.
    pub intermediates: BTreeMap<String, Tensor>,
    /// The request as run (for reproduction metadata: [`Generation::png_metadata`]).
    pub request: TextToImage,
}

/// A loaded bundle, ready to generate. `Send + Sync`: concurrent calls take turns per model
/// call.
pub struct Pipeline {
    bundle: Bundle,
    runtime: Runtime,
    text: TextEncoder,
    image_encoder: Option<ImageEncoder>,
    prior: Prior,
    decoder: Decoder,
    upsamplers: Vec<Upsampler>,
    options: LoadOptions,
    precision: Precision,
}

/// What the pipeline of `bundle` runs at on `runtime` (see [`Pipeline::precision`]).
fn pipeline_precision(runtime: &Runtime, bundle: &Bundle) -> Result<Precision> {
    match runtime.precision() {
        Precision::Int8 if runtime.is_auto_precision() => Ok(if bundle.int8_preferred() {
            Precision::Int8
        } else {
            Precision::F32
        }),
        Precision::Int8 if !bundle.has_int8() => Err(Error::invalid(
            "precision",
            format!(
                "int8: bundle {:?} ({}) has no int8 models; make them with \
                 export/quantize_bundle.py, or run --precision f32",
                bundle.manifest.name,
                bundle.dir.display()
            ),
        )),
        other => Ok(other),
    }
}

/// How a [`Pipeline`] is loaded: what is fixed for its lifetime besides the runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// The most images one super-resolution model call takes (default 1): a larger batch is
    /// split into calls of this size, with the same result (every image is computed on its own;
    /// the scheduler and the noise still see the whole batch). A 256² upsampler's activations
    /// grow with the batch, so at Karlo size a few images in one call can take several times the
    /// memory of one at a time for the same seconds on a CPU. Raise it on a GPU, where a batch
    /// fills the device better. TensorRT profiles are sized from it. 0 is refused at load.
    pub upsampler_batch: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { upsampler_batch: 1 }
    }
}

impl Pipeline {
    /// Opens and validates the bundle in `dir` and creates every session (default options).
    pub fn load(runtime: &Runtime, dir: impl AsRef<Path>) -> Result<Pipeline> {
        Self::load_with(runtime, dir, &LoadOptions::default())
    }

    /// [`Pipeline::load`] with options.
    pub fn load_with(
        runtime: &Runtime,
        dir: impl AsRef<Path>,
        options: &LoadOptions,
    ) -> Result<Pipeline> {
        let bundle = Bundle::open(dir)?;
        Self::from_bundle_with(runtime, bundle, options)
    }

    /// Creates the sessions of an opened bundle (default options).
    pub fn from_bundle(runtime: &Runtime, bundle: Bundle) -> Result<Pipeline> {
        Self::from_bundle_with(runtime, bundle, &LoadOptions::default())
    }

    /// [`Pipeline::from_bundle`] with options.
    pub fn from_bundle_with(
        runtime: &Runtime,
        bundle: Bundle,
        options: &LoadOptions,
    ) -> Result<Pipeline> {
        if options.upsampler_batch == 0 {
            return Err(Error::invalid(
                "upsampler batch",
                "0 images per super-resolution call: give 1 or more",
            ));
        }
        let _span = tracing::info_span!("load", bundle = %bundle.dir.display()).entered();
        let precision = pipeline_precision(runtime, &bundle)?;
        let text = TextEncoder::load(runtime, &bundle, crate::stages::cfg_profile())?;
        let mut models = ModelCache::new(runtime, &bundle, precision == Precision::Int8);
        let image_encoder = ImageEncoder::load(&mut models, &bundle)?;
        let prior = Prior::load(&mut models, &bundle)?;
        let decoder = Decoder::load(&mut models, &bundle)?;
        let upsamplers = bundle
            .manifest
            .upsamplers
            .iter()
            .map(|entry| Upsampler::load(&mut models, entry, &bundle, options.upsampler_batch))
            .collect::<Result<Vec<_>>>()?;
        drop(models);
        Ok(Pipeline {
            bundle,
            runtime: runtime.clone(),
            text,
            image_encoder,
            prior,
            decoder,
            upsamplers,
            options: options.clone(),
            precision,
        })
    }

    /// The precision its models run at: the runtime's, except that [`Precision::Auto`] on the
    /// CPU device runs f32 for a bundle whose int8 models are absent, failed their fidelity
    /// check or were not faster ([`Bundle::int8_preferred`]).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The options it was loaded with.
    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    pub fn text_encoder(&self) -> &TextEncoder {
        &self.text
    }

    /// The CLIP image tower; an error naming the fix when the bundle has none.
    pub fn image_encoder(&self) -> Result<&ImageEncoder> {
        self.image_encoder.as_ref().ok_or_else(|| {
            Error::invalid(
                "image input",
                "this bundle has no image encoder: export it from a checkpoint with image_encoder/ and \
                 feature_extractor/ (Karlo's image-variations checkpoint)",
            )
        })
    }

    pub fn prior(&self) -> &Prior {
        &self.prior
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    pub fn upsamplers(&self) -> &[Upsampler] {
        &self.upsamplers
    }

    /// The image sizes this bundle can make: the decoder's, then each upsampler's.
    pub fn sizes(&self) -> Vec<usize> {
        std::iter::once(self.decoder.sample_size())
            .chain(self.upsamplers.iter().map(|u| u.sample_size()))
            .collect()
    }

    /// Side length of the final images.
    pub fn output_size(&self) -> usize {
        self.upsamplers
            .last()
            .map_or(self.decoder.sample_size(), |u| u.sample_size())
    }

    /// The text conditioning of a request: each prompt's CLIP text encoding repeated once per
    /// image, and with classifier-free guidance the negative (or empty) prompt's in front
    /// (`[uncond, cond]`, diffusers' `_encode_prompt`).
    fn condition(
        &self,
        request: &TextToImage,
        settings: &ResolvedSettings,
    ) -> Result<(crate::text::Tokens, Conditioning)> {
        let n = settings.num_images_per_prompt;
        let prompts: Vec<&str> = request.prompts.iter().map(String::as_str).collect();
        let (tokens, cond) = self.text.encode(&prompts)?;
        let cond = repeat_rows(&cond, n);
        let text = if settings.classifier_free_guidance {
            let negative = request.negative_prompt.as_deref().unwrap_or("");
            let (_, uncond) = self.text.encode(&[negative])?;
            let uncond = repeat_rows(&uncond, cond.embeds.nrows());
            Conditioning {
                embeds: guidance::cfg_batch(uncond.embeds.view(), cond.embeds.view())?,
                hidden_states: guidance::cfg_batch(
                    uncond.hidden_states.view(),
                    cond.hidden_states.view(),
                )?,
                mask: guidance::cfg_batch(uncond.mask.view(), cond.mask.view())?,
                cfg: true,
            }
        } else {
            Conditioning {
                embeds: cond.embeds,
                hidden_states: cond.hidden_states,
                mask: cond.mask,
                cfg: false,
            }
        };
        Ok((tokens, text))
    }

    /// The text conditioning (with the CFG half when the request's scales call for it) of a
    /// request, checked as [`Pipeline::generate`] checks it.
    pub fn conditioning(&self, request: &TextToImage) -> Result<Conditioning> {
        let settings = self.resolve(request)?;
        Ok(self.condition(request, &settings)?.1)
    }

    /// The CLIP image embeddings the prior predicts for `request.prompts` (stage 2 alone), one
    /// row per prompt and image. Draws the same noise, in the same order, as [`Pipeline::generate`]
    /// does before its decoder, so the rows equal `generate(request).image_embeddings` for the
    /// same noise source.
    pub fn embed_prompts(
        &self,
        request: &TextToImage,
        noise: &mut dyn NoiseSource,
        observer: &mut Observer<'_>,
    ) -> Result<Array2<f32>> {
        let mut request = request.clone();
        request.image_embeddings = None;
        let settings = self.resolve(&request)?;
        let (_, text) = self.condition(&request, &settings)?;
        crate::stages::report(observer, Stage::Text, 1, 1)?;
        Ok(self
            .prior
            .sample(&text, &settings.prior_sampling(), noise, observer)?
            .image_embeddings)
    }

    /// Runs text → image. `observer` sees every step and may cancel between steps.
    pub fn generate(
        &self,
        request: &TextToImage,
        noise: &mut dyn NoiseSource,
        observer: &mut Observer<'_>,
    ) -> Result<Generation> {
        let settings = self.resolve(request)?;
        let started = Instant::now();
        let mut timings = Vec::new();
        let mut intermediates = BTreeMap::new();
        let record = request.record_intermediates;
        let mut keep = |name: &str, tensor: Tensor| {
            if record {
                intermediates.insert(name.to_string(), tensor);
            }
        };
        let mut tap = NoiseTap {
            inner: noise,
            drawn: Vec::new(),
            record,
        };
        let n = settings.num_images_per_prompt;

        // 1. text
        let mut clock = StageClock::start("text", &[self.text.model()]);
        let release = Release(vec![self.text.model()]);
        let (tokens, text) = self.condition(request, &settings)?;
        drop(release);
        keep("prompt_ids", Tensor::I64(tokens.ids.clone().into_dyn()));
        keep("prompt_mask", Tensor::I64(tokens.mask.clone().into_dyn()));
        keep("text_embeds", Tensor::F32(text.embeds.clone().into_dyn()));
        keep(
            "text_hidden_states",
            Tensor::F32(text.hidden_states.clone().into_dyn()),
        );
        keep("text_mask", Tensor::I64(text.mask.clone().into_dyn()));
        timings.push(clock.stop());
        crate::stages::report(observer, Stage::Text, 1, 1)?;

        // 2. prior (or the given embeddings)
        let image_embeddings = match &request.image_embeddings {
            _ if request.decoder_condition == DecoderCondition::TextEmbedding => {
                // The conditional half of the text batch: one row per prompt and image.
                let rows = text.embeds.nrows();
                text.embeds
                    .slice(ndarray::s![rows - request.prompts.len() * n.., ..])
                    .to_owned()
            }
            _ if request.decoder_condition == DecoderCondition::Caption => {
                Array2::zeros((request.prompts.len() * n, self.prior.embedding_dim()))
            }
            Some(given) => {
                // One row per prompt, or one row for all (checked in `resolve`); then per image.
                let rows: Vec<usize> = (0..request.prompts.len() * n)
                    .map(|i| if given.nrows() == 1 { 0 } else { i / n })
                    .collect();
                given.select(Axis(0), &rows)
            }
            None => {
                clock = StageClock::start("prior", &[self.prior.model()]);
                let release = Release(vec![self.prior.model()]);
                let out =
                    self.prior
                        .sample(&text, &settings.prior_sampling(), &mut tap, observer)?;
                drop(release);
                keep("prior_latents", Tensor::F32(out.latents.into_dyn()));
                timings.push(clock.stop());
                out.image_embeddings
            }
        };
        keep(
            "image_embeddings",
            Tensor::F32(image_embeddings.clone().into_dyn()),
        );

        // 3. decoder
        clock = StageClock::start("decoder", &self.decoder.models());
        let release = Release(self.decoder.models().to_vec());
        let initial = request.decoder_latents.as_ref().map(|given| {
            let rows: Vec<usize> = (0..image_embeddings.nrows())
                .map(|i| if given.shape()[0] == 1 { 0 } else { i })
                .collect();
            given.select(Axis(0), &rows)
        });
        let decoded = self.decoder.sample(
            image_embeddings.view(),
            &text,
            &settings.decoder_sampling(),
            initial.as_ref().map(|a| a.view()),
            &mut tap,
            observer,
        )?;
        drop(release);
        timings.push(clock.stop());
        keep(
            "decoder_hidden_states",
            Tensor::F32(decoded.hidden_states.into_dyn()),
        );
        keep(
            "additive_clip_time_embeddings",
            Tensor::F32(decoded.additive_clip_time_embeddings.into_dyn()),
        );
        keep("decoder_mask", Tensor::I64(decoded.mask.into_dyn()));
        keep(
            "decoder_out",
            Tensor::F32(decoded.images.clone().into_dyn()),
        );

        // 4. upsamplers, each fed the previous output clamped to [−1, 1]
        let mut images = decoded.images;
        for (i, upsampler) in self.upsamplers.iter().enumerate().take(settings.upsamplers) {
            clock = StageClock::start(&upsampler.name, &upsampler.models());
            let release = Release(upsampler.models().to_vec());
            if i > 0 {
                images.mapv_inplace(|x| x.clamp(-1.0, 1.0));
            }
            let out = upsampler.sample(
                i,
                images.view(),
                &settings.super_res_sampling(i),
                &mut tap,
                observer,
            )?;
            drop(release);
            timings.push(clock.stop());
            let suffix = if i == 0 {
                String::new()
            } else {
                format!("_{i}")
            };
            keep(
                &format!("upsampled{suffix}"),
                Tensor::F32(out.upsampled.into_dyn()),
            );
            keep(
                &format!("sr_out{suffix}"),
                Tensor::F32(out.images.clone().into_dyn()),
            );
            images = out.images;
        }
        for (i, drawn) in tap.drawn.into_iter().enumerate() {
            keep(&format!("noise_{i:03}"), Tensor::F32(drawn));
        }
        let images = to_rgb8(images.view());
        timings.push(StageTiming {
            stage: "total".into(),
            seconds: started.elapsed().as_secs_f64(),
            ort_seconds: timings.iter().map(|t| t.ort_seconds).sum(),
        });
        Ok(Generation {
            images,
            image_embeddings,
            settings,
            timings,
            intermediates,
            request: TextToImage {
                record_intermediates: false,
                ..request.clone()
            },
        })
    }
}

/// An observer that never cancels.
pub fn no_observer() -> impl FnMut(crate::stages::Progress) -> ControlFlow<()> {
    |_| ControlFlow::Continue(())
}

/// Records the noise drawn, for `--dump`.
struct NoiseTap<'a> {
    inner: &'a mut dyn NoiseSource,
    drawn: Vec<ArrayD<f32>>,
    record: bool,
}

impl NoiseSource for NoiseTap<'_> {
    fn randn(&mut self, shape: &[usize]) -> Result<ArrayD<f32>> {
        let noise = self.inner.randn(shape)?;
        if self.record {
            self.drawn.push(noise.clone());
        }
        Ok(noise)
    }
}

/// Measures a stage's wall time and the ORT time of its models.
struct StageClock<'a> {
    stage: String,
    started: Instant,
    models: Vec<&'a Model>,
    ort_before: f64,
}

impl<'a> StageClock<'a> {
    fn start(stage: &str, models: &[&'a Model]) -> Self {
        let mut unique: Vec<&Model> = Vec::new();
        for m in models {
            if !unique.iter().any(|u| std::ptr::eq(*u, *m)) {
                unique.push(m);
            }
        }
        let ort_before = unique.iter().map(|m| m.run_seconds()).sum();
        StageClock {
            stage: stage.to_string(),
            started: Instant::now(),
            models: unique,
            ort_before,
        }
    }

    fn stop(&self) -> StageTiming {
        let ort_after: f64 = self.models.iter().map(|m| m.run_seconds()).sum();
        StageTiming {
            stage: self.stage.clone(),
            seconds: self.started.elapsed().as_secs_f64(),
            ort_seconds: ort_after - self.ort_before,
        }
    }
}

/// Low-memory mode: drops a stage's sessions when the stage ends, however it ends (a cancel or
/// an error included). Outside low-memory mode [`Model::release`] does nothing.
pub(crate) struct Release<'a>(pub(crate) Vec<&'a Model>);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        for model in &self.0 {
            model.release();
        }
    }
}

/// `repeat_interleave(n, dim=0)` of every tensor (diffusers repeats per image this way).
fn repeat_rows(text: &TextEmbeddings, n: usize) -> TextEmbeddings {
    TextEmbeddings {
        embeds: repeat_array_rows(&text.embeds, n),
        hidden_states: repeat_array_rows(&text.hidden_states, n),
        mask: repeat_array_rows(&text.mask, n),
    }
}

fn repeat_array_rows<A: Clone, D: ndarray::RemoveAxis>(
    array: &ndarray::Array<A, D>,
    n: usize,
) -> ndarray::Array<A, D> {
    let indices: Vec<usize> = (0..array.len_of(Axis(0)))
        .flat_map(|i| std::iter::repeat_n(i, n))
        .collect();
    array.select(Axis(0), &indices)
}

/// A pipeline is shared across threads (C hosts, the server): keep it `Send + Sync`.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Pipeline>();
};
