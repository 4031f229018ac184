//! Text → image: prompts → text embeddings → prior → decoder → upsamplers → RGB images
//! (docs/architecture.md; diffusers `UnCLIPPipeline.__call__`). The pipeline never owns an RNG: the
//! caller passes the [`NoiseSource`], drawn in diffusers' order.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use ndarray::{Array2, Axis};

use crate::bundle::{Bundle, Layout};
use crate::guidance;
use crate::image_io::to_rgb8;
use crate::noise::NoiseSource;
use crate::runtime::{Model, Precision, Runtime};
use crate::schedulers::SchedulerConfig;
use crate::stages::{
    Conditioning, Decoder, ImageEncoder, LatentDecoder, ModelCache, Observer, Prior, Stage,
    Upsampler,
};
use crate::text::{TextEmbeddings, TextEncoder};
use crate::{Error, Result};

mod latent;
mod metadata;
mod pixel;
mod request;
mod run;

pub(crate) use run::Release;
use run::{NoiseTap, Run, StageClock};

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
    images: ImageStages,
    options: LoadOptions,
    precision: Precision,
}

/// The stages after the prior, by the bundle's family.
enum ImageStages {
    /// Karlo: the 64×64 pixel decoder, then the upsamplers.
    Pixel {
        decoder: Decoder,
        upsamplers: Vec<Upsampler>,
    },
    /// Kandinsky 2.2: the latent UNet and MoVQ.
    Latent(LatentDecoder),
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
        let images = match &bundle.manifest.layout {
            Layout::Karlo {
                decoder,
                upsamplers,
            } => ImageStages::Pixel {
                decoder: Decoder::load(&mut models, &bundle, decoder)?,
                upsamplers: upsamplers
                    .iter()
                    .map(|entry| {
                        Upsampler::load(&mut models, entry, &bundle, options.upsampler_batch)
                    })
                    .collect::<Result<Vec<_>>>()?,
            },
            Layout::Kandinsky { decoder } => {
                ImageStages::Latent(LatentDecoder::load(&mut models, &bundle, decoder)?)
            }
        };
        drop(models);
        Ok(Pipeline {
            bundle,
            runtime: runtime.clone(),
            text,
            image_encoder,
            prior,
            images,
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

    /// The bundle's model family (`karlo` or `kandinsky2.2`).
    pub fn family(&self) -> &'static str {
        self.bundle.manifest.layout.family()
    }

    /// Karlo's 64×64 pixel decoder; an error naming the family for a latent-decoder bundle.
    pub fn decoder(&self) -> Result<&Decoder> {
        match &self.images {
            ImageStages::Pixel { decoder, .. } => Ok(decoder),
            ImageStages::Latent(_) => Err(self.karlo_only("the 64×64 pixel decoder")),
        }
    }

    /// Kandinsky 2.2's latent decoder and MoVQ, when the bundle is of that family.
    pub fn latent_decoder(&self) -> Option<&LatentDecoder> {
        match &self.images {
            ImageStages::Latent(decoder) => Some(decoder),
            ImageStages::Pixel { .. } => None,
        }
    }

    /// The upsamplers (none for a latent-decoder bundle).
    pub fn upsamplers(&self) -> &[Upsampler] {
        match &self.images {
            ImageStages::Pixel { upsamplers, .. } => upsamplers,
            ImageStages::Latent(_) => &[],
        }
    }

    /// The decoder stage's ONNX models (for timings and low-memory release).
    pub fn decoder_models(&self) -> Vec<&Model> {
        match &self.images {
            ImageStages::Pixel { decoder, .. } => decoder.models().to_vec(),
            ImageStages::Latent(decoder) => decoder.models(),
        }
    }

    /// The decoder's default steps and guidance scale, and its scheduler config.
    pub fn decoder_defaults(&self) -> (usize, f32, &SchedulerConfig) {
        match &self.images {
            ImageStages::Pixel { decoder, .. } => (
                decoder.default_steps,
                decoder.default_guidance_scale,
                decoder.scheduler_config(),
            ),
            ImageStages::Latent(decoder) => (
                decoder.default_steps,
                decoder.default_guidance_scale,
                decoder.scheduler_config(),
            ),
        }
    }

    /// The square image sizes this bundle names: the decoder's, then each upsampler's (Karlo);
    /// the default size (Kandinsky, which makes any multiple of
    /// [`LatentDecoder::size_multiple`], non-square too).
    pub fn sizes(&self) -> Vec<usize> {
        match &self.images {
            ImageStages::Pixel {
                decoder,
                upsamplers,
            } => std::iter::once(decoder.sample_size())
                .chain(upsamplers.iter().map(|u| u.sample_size()))
                .collect(),
            ImageStages::Latent(decoder) => vec![decoder.default_size()],
        }
    }

    /// Side length of the final images by default.
    pub fn output_size(&self) -> usize {
        self.sizes().last().copied().unwrap_or(0)
    }

    /// The error of a Karlo-only feature asked of another family.
    pub(crate) fn karlo_only(&self, what: &str) -> Error {
        Error::invalid(
            "model family",
            format!(
                "{what} is part of Karlo's layout; bundle {:?} is {}: use a karlo bundle",
                self.bundle.manifest.name,
                self.family()
            ),
        )
    }

    /// The text conditioning of a request: each prompt's CLIP text encoding repeated once per
    /// image, and with classifier-free guidance the negative (or empty) prompt's in front
    /// (`[uncond, cond]`, diffusers' `_encode_prompt`).
    fn condition(
        &self,
        prompts: &[&str],
        request: &TextToImage,
        settings: &ResolvedSettings,
    ) -> Result<(crate::text::Tokens, Conditioning)> {
        let n = settings.num_images_per_prompt;
        let (tokens, cond) = self.text.encode(prompts)?;
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
        let prompts: Vec<&str> = request.prompts.iter().map(String::as_str).collect();
        Ok(self.condition(&prompts, request, &settings)?.1)
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
        let prompts = self.prior_prompts(&request);
        let (_, text) = self.condition(&prompts, &request, &settings)?;
        crate::stages::report(observer, Stage::Text, 1, 1)?;
        let rows = request.prompts.len() * settings.num_images_per_prompt;
        let sampled = self
            .prior
            .sample(&text, &settings.prior_sampling(), noise, observer)?
            .image_embeddings;
        Ok(sampled.slice(ndarray::s![..rows, ..]).to_owned())
    }

    /// The prompts the prior samples: the request's, then — Kandinsky 2.2 with a negative prompt
    /// and no given embeddings — the negative prompt once per prompt (diffusers
    /// `KandinskyV22PriorPipeline.__call__`: `prompt = prompt + negative_prompt`), whose samples
    /// are the decoder's unconditional branch.
    fn prior_prompts<'a>(&self, request: &'a TextToImage) -> Vec<&'a str> {
        let mut prompts: Vec<&str> = request.prompts.iter().map(String::as_str).collect();
        if let (Some(negative), Some(_), None) = (
            request.negative_prompt.as_deref(),
            self.latent_decoder(),
            &request.image_embeddings,
        ) {
            prompts.extend(std::iter::repeat_n(negative, request.prompts.len()));
        }
        prompts
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
        let mut run = Run {
            timings: Vec::new(),
            record: request.record_intermediates,
            intermediates: BTreeMap::new(),
        };
        let mut tap = NoiseTap {
            inner: noise,
            drawn: Vec::new(),
            record: request.record_intermediates,
        };
        let n = settings.num_images_per_prompt;
        let rows = request.prompts.len() * n;
        let prior_negatives = self.latent_decoder().is_some() && request.negative_prompt.is_some();
        let prompts = self.prior_prompts(request);

        // 1. text
        let clock = StageClock::start("text", &[self.text.model()]);
        let release = Release(vec![self.text.model()]);
        let (tokens, text) = self.condition(&prompts, request, &settings)?;
        drop(release);
        let prompt_rows = ndarray::s![..request.prompts.len(), ..];
        run.keep(
            "prompt_ids",
            Tensor::I64(tokens.ids.slice(prompt_rows).to_owned().into_dyn()),
        );
        run.keep(
            "prompt_mask",
            Tensor::I64(tokens.mask.slice(prompt_rows).to_owned().into_dyn()),
        );
        run.keep("text_embeds", Tensor::F32(text.embeds.clone().into_dyn()));
        run.keep(
            "text_hidden_states",
            Tensor::F32(text.hidden_states.clone().into_dyn()),
        );
        run.keep("text_mask", Tensor::I64(text.mask.clone().into_dyn()));
        run.timings.push(clock.stop());
        crate::stages::report(observer, Stage::Text, 1, 1)?;

        // 2. prior (or the given embeddings)
        let mut negatives = None;
        let image_embeddings = match &request.image_embeddings {
            _ if request.decoder_condition == DecoderCondition::TextEmbedding => {
                // The conditional half of the text batch: one row per prompt and image.
                let all = text.embeds.nrows();
                text.embeds
                    .slice(ndarray::s![all - prompts.len() * n.., ..])
                    .slice(ndarray::s![..rows, ..])
                    .to_owned()
            }
            _ if request.decoder_condition == DecoderCondition::Caption => {
                Array2::zeros((rows, self.prior.embedding_dim()))
            }
            Some(given) => {
                // One row per prompt, or one row for all (checked in `resolve`); then per image.
                let picks: Vec<usize> = (0..rows)
                    .map(|i| if given.nrows() == 1 { 0 } else { i / n })
                    .collect();
                if prior_negatives {
                    // The negative prompt's own prior sample (diffusers `interpolate` with a
                    // `negative_prompt`).
                    let negative = request.negative_prompt.as_deref().unwrap_or_default();
                    let texts = vec![negative; request.prompts.len()];
                    let mut negative_request = request.clone();
                    negative_request.negative_prompt = None;
                    let (_, negative_text) =
                        self.condition(&texts, &negative_request, &settings)?;
                    let sampled =
                        self.run_prior(&negative_text, &settings, &mut tap, observer, &mut run)?;
                    negatives = Some(sampled);
                }
                given.select(Axis(0), &picks)
            }
            None => {
                let sampled = self.run_prior(&text, &settings, &mut tap, observer, &mut run)?;
                if prior_negatives {
                    negatives = Some(sampled.slice(ndarray::s![rows.., ..]).to_owned());
                    sampled.slice(ndarray::s![..rows, ..]).to_owned()
                } else {
                    sampled
                }
            }
        };
        run.keep(
            "image_embeddings",
            Tensor::F32(image_embeddings.clone().into_dyn()),
        );

        // 3. the family's image stages
        let images = match &self.images {
            ImageStages::Pixel {
                decoder,
                upsamplers,
            } => self.decode_pixels(
                (decoder, upsamplers),
                &image_embeddings,
                &text,
                request,
                &settings,
                &mut tap,
                observer,
                &mut run,
            )?,
            ImageStages::Latent(decoder) => self.decode_latents(
                decoder,
                &image_embeddings,
                negatives,
                request,
                &settings,
                &mut tap,
                observer,
                &mut run,
            )?,
        };
        for (i, drawn) in tap.drawn.into_iter().enumerate() {
            run.keep(&format!("noise_{i:03}"), Tensor::F32(drawn));
        }
        let images = to_rgb8(images.view());
        run.timings.push(StageTiming {
            stage: "total".into(),
            seconds: started.elapsed().as_secs_f64(),
            ort_seconds: run.timings.iter().map(|t| t.ort_seconds).sum(),
        });
        Ok(Generation {
            images,
            image_embeddings,
            settings,
            timings: run.timings,
            intermediates: run.intermediates,
            request: TextToImage {
                record_intermediates: false,
                ..request.clone()
            },
        })
    }

    /// The prior stage of a run: its image embeddings, one row per conditioned image.
    fn run_prior(
        &self,
        text: &Conditioning,
        settings: &ResolvedSettings,
        noise: &mut dyn NoiseSource,
        observer: &mut Observer<'_>,
        run: &mut Run,
    ) -> Result<Array2<f32>> {
        let clock = StageClock::start("prior", &[self.prior.model()]);
        let release = Release(vec![self.prior.model()]);
        let out = self
            .prior
            .sample(text, &settings.prior_sampling(), noise, observer)?;
        drop(release);
        run.keep("prior_latents", Tensor::F32(out.latents.into_dyn()));
        run.timings.push(clock.stop());
        Ok(out.image_embeddings)
    }
}

/// An observer that never cancels.
pub fn no_observer() -> impl FnMut(crate::stages::Progress) -> ControlFlow<()> {
    |_| ControlFlow::Continue(())
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
