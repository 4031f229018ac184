//! Exploring CLIP's latent space with a pipeline (DALL·E 2 §3; docs/architecture.md): interpolations,
//! text diffs, PCA probes and guidance sweeps. The math is in [`crate::latent`]; this module
//! gets embeddings from images and prompts and decodes many embeddings with the decoder noise
//! fixed across frames.
//!
//! Noise conventions, chosen so every frame can be reproduced by a single command:
//! - a prompt endpoint is embedded by the prior with a fresh noise source seeded with `seed`,
//!   so it equals the embedding `unclip generate PROMPT --seed SEED` uses;
//! - frames are decoded with a fresh source seeded with `seed` behind [`SharedNoise`], so every
//!   frame gets the noise of a batch of one: frame k equals `unclip generate "" --image-embedding
//!   frame_k.npy --seed SEED` (with the same decoder prompt and settings), and frames do not
//!   depend on how they are batched.

use std::time::Instant;

use image::{DynamicImage, RgbImage};
use ndarray::{Array1, Array2, Array4, ArrayView2, Axis};

use crate::latent::{self, Pca};
use crate::noise::{noise_source, NoiseSource};
use crate::pipeline::{
    Generation, Release, Reproduction, ResolvedSettings, Seed, TextToImage, MAX_BATCH,
};
use crate::schedulers::SchedulerKind;
use crate::stages::Observer;
use crate::stages::Sampling;
use crate::{Error, Pipeline, Result, RngKind};

/// The command name in the records of decoded embeddings; the shells write their own.
const EXPLORE: &str = "explore";

/// One end of an interpolation, or the subject of a text diff or PCA probe.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// An image, through the CLIP image encoder.
    Image(DynamicImage),
    /// A prompt, through the text encoder and the prior.
    Prompt(String),
    /// A CLIP image embedding given directly `(D,)`.
    Embedding(Array1<f32>),
}

/// Settings shared by every exploration.
#[derive(Debug, Clone)]
pub struct ExploreSettings {
    /// Steps and guidance scales of the prior (for prompt endpoints), the decoder and the
    /// upsamplers, and the negative prompt. `prompts`, `num_images_per_prompt` and
    /// `image_embeddings` are ignored.
    pub request: TextToImage,
    /// The caption the decoder sees in every frame (default empty, as image variations: the
    /// embedding carries the content).
    pub decoder_prompt: String,
    pub rng: RngKind,
    pub seed: u64,
    /// Frames decoded per batch (results do not depend on it, see the module docs); default 1,
    /// since on CPU batching saves little time and costs memory linearly.
    pub batch: usize,
    /// Decode every frame from these latents `(1, 3, 64, 64)` instead of noise — the source's
    /// DDIM-inverted `x_T` ([`Pipeline::invert_images`]) for text diffs and PCA probes of an
    /// image (DALL·E 2 §3.1); the decoder then runs DDIM.
    pub decoder_latents: Option<Array4<f32>>,
}

impl ExploreSettings {
    pub fn new(rng: RngKind, seed: u64) -> Self {
        ExploreSettings {
            request: TextToImage::default(),
            decoder_prompt: String::new(),
            rng,
            seed,
            batch: 1,
            decoder_latents: None,
        }
    }
}

/// Decoded frames of an exploration.
#[derive(Debug, Clone)]
pub struct Exploration {
    /// One label per frame (`θ=0.25`, `k=4`, `prior 4 / decoder 8`).
    pub labels: Vec<String>,
    /// The value each frame was made at (θ, k or a guidance scale pair's index).
    pub values: Vec<f32>,
    /// The CLIP image embedding each frame decodes, `(frames, D)`.
    pub embeddings: Array2<f32>,
    pub images: Vec<RgbImage>,
    /// Settings of the decoder and upsamplers (for a sweep: of the last cell).
    pub settings: ResolvedSettings,
    /// What reproduces each frame ([`Pipeline::reproduce`]; its PNG metadata).
    pub records: Vec<Reproduction>,
    /// Wall time of the whole exploration.
    pub seconds: f64,
}

/// What DDIM inversion found for paper-faithful variations ([`Pipeline::vary_inverted`]).
#[derive(Debug, Clone)]
pub struct Inversion {
    /// The sources at the decoder's resolution, in [−1, 1] `(sources, 3, 64, 64)`: what the
    /// inversion started from.
    pub sources: Array4<f32>,
    /// The inverted latents `x_T` `(sources, 3, 64, 64)`.
    pub latents: Array4<f32>,
    /// Per output image: mean absolute difference between its 64×64 decoder output and its
    /// source, in [−1, 1] units (η = 0 measures the reconstruction error; η > 0 how far a
    /// variation strays).
    pub mean_abs_error: Vec<f32>,
    /// Per output image: PSNR in dB of the decoder output against the source (peak-to-peak 2).
    pub psnr: Vec<f32>,
}

/// Center-crops `image` to a square and resizes it to `size` (Catmull-Rom bicubic, filtered
/// over the whole footprint when shrinking), as a `(3, size, size)` tensor in [−1, 1].
pub fn decoder_input(image: &DynamicImage, size: usize) -> Array4<f32> {
    let rgb = image.to_rgb8();
    let side = rgb.width().min(rgb.height());
    let (x, y) = ((rgb.width() - side) / 2, (rgb.height() - side) / 2);
    let square = image::imageops::crop_imm(&rgb, x, y, side, side).to_image();
    let resized = image::imageops::resize(
        &square,
        size as u32,
        size as u32,
        image::imageops::FilterType::CatmullRom,
    );
    crate::image_io::from_rgb8(&resized).insert_axis(Axis(0))
}

impl Pipeline {
    /// Image variations (DALL·E 2 §3.1; diffusers `UnCLIPImageVariationPipeline`): each image's
    /// CLIP embedding is decoded `request.num_images_per_prompt` times, with the empty prompt
    /// as text; CFG runs iff the decoder guidance scale is above 1. `request.prompts` and
    /// `image_embeddings` are replaced.
    pub fn vary(
        &self,
        images: &[image::DynamicImage],
        request: &TextToImage,
        noise: &mut dyn NoiseSource,
        observer: &mut Observer<'_>,
    ) -> Result<Generation> {
        let encoder = self.image_encoder()?;
        let release = Release(vec![encoder.model()]);
        let embeddings = encoder.encode(images)?;
        drop(release);
        let mut variation = request.clone();
        variation.prompts = vec![String::new(); images.len()];
        variation.image_embeddings = Some(embeddings);
        // No prior runs; scale 0 keeps the CFG decision to the decoder's scale, as diffusers.
        variation.prior_guidance_scale = Some(0.0);
        self.generate(&variation, noise, observer)
    }

    /// Paper-faithful image variations (DALL·E 2 §3.1): each source is DDIM-inverted through the
    /// decoder, conditioned on its own CLIP embedding, to the `x_T` that DDIM maps back to it;
    /// then decoded from that `x_T` with DDIM at η = `request.eta` (0 reconstructs the source,
    /// larger η strays further). The inversion runs without guidance, the decode with the
    /// request's decoder guidance scale (1 gives the closest reconstruction); both use the
    /// decoder's step count with DDIM's `leading` spacing, so the two timestep lists mirror each
    /// other. `request.decoder_scheduler` must be unset or DDIM. Noise (for η > 0 and the
    /// upsamplers) comes from `noise`.
    pub fn vary_inverted(
        &self,
        images: &[DynamicImage],
        request: &TextToImage,
        noise: &mut dyn NoiseSource,
        observer: &mut Observer<'_>,
    ) -> Result<(Generation, Inversion)> {
        if images.is_empty() {
            return Err(Error::invalid("images", "give at least one image"));
        }
        if request
            .decoder_scheduler
            .is_some_and(|kind| kind != SchedulerKind::Ddim)
        {
            return Err(Error::invalid(
                "decoder scheduler",
                "DDIM-inverted variations decode with DDIM: leave the decoder scheduler unset or \
                 choose ddim",
            ));
        }
        let embeddings = self.image_encoder()?.encode(images)?;
        let size = self.decoder()?.sample_size();
        let sources: Vec<Array4<f32>> = images.iter().map(|i| decoder_input(i, size)).collect();
        let views: Vec<_> = sources.iter().map(|a| a.view()).collect();
        let sources = ndarray::concatenate(Axis(0), &views).map_err(|e| Error::Shape {
            what: format!("decoder inputs ({e})"),
            expected: format!("(N, 3, {size}, {size})"),
            found: vec![images.len()],
        })?;

        // The decode's settings first, so a bad request fails before the inversion runs.
        let n = request.num_images_per_prompt.unwrap_or(1);
        let mut decode = request.clone();
        decode.prompts = vec![String::new(); images.len()];
        decode.image_embeddings = Some(embeddings.clone());
        decode.prior_guidance_scale = Some(0.0);
        decode.decoder_scheduler = Some(SchedulerKind::Ddim);
        decode.decoder_latents = Some(Array4::zeros((images.len() * n, 3, size, size)));
        let resolved = self.resolve(&decode)?;

        let latents = self.invert(&sources, &embeddings, resolved.decoder_steps, observer)?;

        let rows: Vec<usize> = (0..images.len() * n).map(|i| i / n).collect();
        decode.decoder_latents = Some(latents.select(Axis(0), &rows));
        let record = decode.record_intermediates;
        decode.record_intermediates = true;
        let mut generation = self.generate(&decode, noise, observer)?;
        let decoded = match generation.intermediates.get("decoder_out") {
            Some(crate::pipeline::Tensor::F32(t)) => t.clone(),
            _ => {
                return Err(Error::internal(
                    "the decoder output was not recorded for the inversion",
                ))
            }
        };
        if !record {
            generation.intermediates.clear();
        }
        let mut mean_abs_error = Vec::with_capacity(rows.len());
        let mut psnr = Vec::with_capacity(rows.len());
        for (i, &source) in rows.iter().enumerate() {
            let out = decoded.index_axis(Axis(0), i);
            let src = sources.index_axis(Axis(0), source);
            let (mut abs, mut sq) = (0.0f64, 0.0f64);
            for (a, b) in out.iter().zip(src.iter()) {
                let d = (*a as f64) - (*b as f64);
                abs += d.abs();
                sq += d * d;
            }
            let count = src.len().max(1) as f64;
            mean_abs_error.push((abs / count) as f32);
            let mse = sq / count;
            psnr.push(if mse > 0.0 {
                (10.0 * (4.0 / mse).log10()) as f32
            } else {
                f32::INFINITY
            });
        }
        Ok((
            generation,
            Inversion {
                sources,
                latents,
                mean_abs_error,
                psnr,
            },
        ))
    }

    /// DDIM-inverts `images` through the decoder conditioned on their own CLIP embeddings (no
    /// guidance, `steps` DDIM steps with `leading` spacing): the `x_T` `(N, 3, 64, 64)` a DDIM
    /// decode with the same step count maps back to each image.
    pub fn invert_images(
        &self,
        images: &[DynamicImage],
        steps: usize,
        observer: &mut Observer<'_>,
    ) -> Result<Array4<f32>> {
        if images.is_empty() {
            return Err(Error::invalid("images", "give at least one image"));
        }
        let embeddings = self.image_encoder()?.encode(images)?;
        let size = self.decoder()?.sample_size();
        let sources: Vec<Array4<f32>> = images.iter().map(|i| decoder_input(i, size)).collect();
        let views: Vec<_> = sources.iter().map(|a| a.view()).collect();
        let sources = ndarray::concatenate(Axis(0), &views).map_err(|e| Error::Shape {
            what: format!("decoder inputs ({e})"),
            expected: format!("(N, 3, {size}, {size})"),
            found: vec![images.len()],
        })?;
        self.invert(&sources, &embeddings, steps, observer)
    }

    fn invert(
        &self,
        sources: &Array4<f32>,
        embeddings: &Array2<f32>,
        steps: usize,
        observer: &mut Observer<'_>,
    ) -> Result<Array4<f32>> {
        // Empty caption, the image's own embedding, no guidance.
        let plain = TextToImage {
            prompts: vec![String::new(); embeddings.nrows()],
            num_images_per_prompt: Some(1),
            prior_guidance_scale: Some(0.0),
            decoder_guidance_scale: Some(1.0),
            image_embeddings: Some(embeddings.clone()),
            ..Default::default()
        };
        let text = self.conditioning(&plain)?;
        let sampling = Sampling::new(steps, 1.0);
        self.decoder()?.invert(
            sources.view(),
            embeddings.view(),
            &text,
            &sampling,
            observer,
        )
    }

    /// The pooled CLIP text embeddings (`text_embeds`) of `captions`, `(N, D)`: the text side of
    /// CLIP's joint space, used by text diffs.
    pub fn text_embeddings(&self, captions: &[&str]) -> Result<Array2<f32>> {
        if captions.is_empty() {
            return Err(Error::invalid("captions", "give at least one caption"));
        }
        Ok(self.text_encoder().encode(captions)?.1.embeds)
    }

    /// The CLIP image embedding of an endpoint `(D,)`.
    pub fn embed(
        &self,
        endpoint: &Endpoint,
        settings: &ExploreSettings,
        observer: &mut Observer<'_>,
    ) -> Result<Array1<f32>> {
        let row = match endpoint {
            Endpoint::Image(image) => self.image_encoder()?.encode(std::slice::from_ref(image))?,
            Endpoint::Prompt(prompt) => {
                let request = TextToImage {
                    prompts: vec![prompt.clone()],
                    num_images_per_prompt: Some(1),
                    ..settings.request.clone()
                };
                let mut noise = noise_source(settings.rng, settings.seed);
                self.embed_prompts(&request, noise.as_mut(), observer)?
            }
            Endpoint::Embedding(z) => {
                if z.len() != self.prior().embedding_dim() {
                    return Err(Error::Shape {
                        what: "image embedding".into(),
                        expected: format!("({},)", self.prior().embedding_dim()),
                        found: vec![z.len()],
                    });
                }
                if z.iter().any(|x| !x.is_finite()) {
                    return Err(Error::NonFinite {
                        what: "image embedding".into(),
                    });
                }
                return Ok(z.clone());
            }
        };
        Ok(row.index_axis(Axis(0), 0).to_owned())
    }

    /// Decodes `embeddings` `(frames, D)` with the same decoder and upsampler noise for every
    /// frame (see the module docs), in batches of `settings.batch`.
    pub fn decode_embeddings(
        &self,
        embeddings: ArrayView2<'_, f32>,
        settings: &ExploreSettings,
        observer: &mut Observer<'_>,
    ) -> Result<(Vec<RgbImage>, ResolvedSettings, Vec<Reproduction>)> {
        if embeddings.nrows() == 0 {
            return Err(Error::invalid("embeddings", "nothing to decode"));
        }
        if settings.batch == 0 || settings.batch > MAX_BATCH {
            return Err(Error::invalid(
                "batch",
                format!(
                    "{}: decode 1 to {MAX_BATCH} frames at a time",
                    settings.batch
                ),
            ));
        }
        let mut images = Vec::with_capacity(embeddings.nrows());
        let mut records = Vec::with_capacity(embeddings.nrows());
        let mut resolved = None;
        let seed = Seed {
            rng: settings.rng,
            seed: settings.seed,
            shared: true,
        };
        for chunk in embeddings.axis_chunks_iter(Axis(0), settings.batch) {
            let mut request = TextToImage {
                prompts: vec![settings.decoder_prompt.clone(); chunk.nrows()],
                num_images_per_prompt: Some(1),
                image_embeddings: Some(chunk.to_owned()),
                record_intermediates: false,
                // No prior runs: CFG is the decoder's decision alone, as for variations.
                prior_guidance_scale: Some(0.0),
                ..settings.request.clone()
            };
            if let Some(latents) = &settings.decoder_latents {
                request.decoder_latents = Some(latents.clone());
                request.decoder_scheduler = Some(SchedulerKind::Ddim);
            }
            let mut noise = seed.source();
            let generation = self.generate(&request, noise.as_mut(), observer)?;
            for row in 0..generation.images.len() {
                records.push(generation.reproduction(EXPLORE, seed, row)?);
            }
            images.extend(generation.images);
            resolved = Some(generation.settings);
        }
        let resolved = resolved.ok_or_else(|| Error::invalid("embeddings", "nothing to decode"))?;
        Ok((images, resolved, records))
    }

    /// Interpolation between two endpoints (§3.2): `frames` slerps from `a` to `b`, decoded
    /// with fixed noise.
    pub fn interpolate(
        &self,
        a: &Endpoint,
        b: &Endpoint,
        frames: usize,
        settings: &ExploreSettings,
        observer: &mut Observer<'_>,
    ) -> Result<Exploration> {
        let started = Instant::now();
        latent::linspace(0.0, 1.0, frames)?;
        let za = self.embed(a, settings, observer)?;
        let zb = self.embed(b, settings, observer)?;
        let (thetas, embeddings) = latent::interpolate(za.view(), zb.view(), frames)?;
        let labels = thetas.iter().map(|t| format!("θ={t:.2}")).collect();
        self.finish(labels, thetas, embeddings, settings, observer, started)
    }

    /// diffusers' weighted interpolation (`KandinskyV22PriorPipeline.interpolate(images_and_prompts,
    /// weights)`): the plain weighted sum `Σ wᵢ · zᵢ` of the endpoints' embeddings (no
    /// normalization, no slerp; weights need not sum to 1), decoded once. An endpoint that is a
    /// prompt is embedded by the prior with the settings' seed, as [`Pipeline::interpolate`].
    pub fn weighted_mix(
        &self,
        endpoints: &[Endpoint],
        weights: &[f32],
        settings: &ExploreSettings,
        observer: &mut Observer<'_>,
    ) -> Result<Exploration> {
        let started = Instant::now();
        if endpoints.is_empty() || endpoints.len() != weights.len() {
            return Err(Error::invalid(
                "weights",
                format!(
                    "{} weights for {} endpoints: give one weight per endpoint (at least one)",
                    weights.len(),
                    endpoints.len()
                ),
            ));
        }
        if let Some(w) = weights.iter().find(|w| !w.is_finite()) {
            return Err(Error::invalid(
                "weights",
                format!("{w}: weights must be finite"),
            ));
        }
        let mut mixed = Array1::<f32>::zeros(self.prior().embedding_dim());
        for (endpoint, &w) in endpoints.iter().zip(weights) {
            let z = self.embed(endpoint, settings, observer)?;
            mixed.zip_mut_with(&z, |m, &x| *m += w * x);
        }
        let label = weights
            .iter()
            .map(|w| format!("{w}"))
            .collect::<Vec<_>>()
            .join(" + ");
        self.finish(
            vec![format!("weights {label}")],
            vec![weights.iter().sum()],
            mixed.insert_axis(Axis(0)),
            settings,
            observer,
            started,
        )
    }

    /// Text diff (§3.3): rotates the embedding of `subject` toward the direction from the CLIP
    /// text embedding of `from` to that of `to`, θ from 0 to `max_theta` over `frames` frames.
    #[allow(clippy::too_many_arguments)]
    pub fn text_diff(
        &self,
        subject: &Endpoint,
        from: &str,
        to: &str,
        frames: usize,
        max_theta: f32,
        settings: &ExploreSettings,
        observer: &mut Observer<'_>,
    ) -> Result<Exploration> {
        let started = Instant::now();
        latent::linspace(0.0, max_theta, frames)?;
        let z = self.embed(subject, settings, observer)?;
        let text = self.text_embeddings(&[from, to])?;
        if text.ncols() != z.len() {
            return Err(Error::Shape {
                what: "text embeddings for a text diff".into(),
                expected: format!("dimension {} (the image embedding's)", z.len()),
                found: text.shape().to_vec(),
            });
        }
        let (thetas, embeddings) =
            latent::text_diff(z.view(), text.row(0), text.row(1), frames, max_theta)?;
        let labels = thetas.iter().map(|t| format!("θ={t:.2}")).collect();
        self.finish(labels, thetas, embeddings, settings, observer, started)
    }

    /// PCA probe (§3.4): `source`'s embedding rebuilt from its first k components for each k of
    /// `components`, decoded with fixed noise. A k above the basis size is an error.
    pub fn pca_probe(
        &self,
        pca: &Pca,
        source: &Endpoint,
        components: &[usize],
        settings: &ExploreSettings,
        observer: &mut Observer<'_>,
    ) -> Result<Exploration> {
        let started = Instant::now();
        if components.is_empty() || components.len() > latent::MAX_FRAMES {
            return Err(Error::invalid(
                "components",
                format!("give 1 to {} component counts", latent::MAX_FRAMES),
            ));
        }
        if pca.dim() != self.prior().embedding_dim() {
            return Err(Error::Shape {
                what: "PCA basis".into(),
                expected: format!(
                    "dimension {} (this bundle's CLIP)",
                    self.prior().embedding_dim()
                ),
                found: vec![pca.dim()],
            });
        }
        let z = self.embed(source, settings, observer)?;
        let rows = components
            .iter()
            .map(|&k| pca.reconstruct(z.view(), k))
            .collect::<Result<Vec<_>>>()?;
        let embeddings = latent::stack(&rows)?;
        let labels = components.iter().map(|k| format!("k={k}")).collect();
        let values = components.iter().map(|&k| k as f32).collect();
        self.finish(labels, values, embeddings, settings, observer, started)
    }

    /// Guidance sweep: `prompt` generated at every (prior, decoder) guidance scale pair with the
    /// same seed, row-major (prior scales down, decoder scales across). Each cell is exactly
    /// `generate(prompt)` at those scales.
    pub fn guidance_sweep(
        &self,
        prompt: &str,
        prior_scales: &[f32],
        decoder_scales: &[f32],
        settings: &ExploreSettings,
        observer: &mut Observer<'_>,
    ) -> Result<Exploration> {
        let started = Instant::now();
        let cells = prior_scales.len() * decoder_scales.len();
        if cells == 0 || cells > latent::MAX_FRAMES {
            return Err(Error::invalid(
                "guidance scales",
                format!(
                    "{} × {} cells: give at least one scale per stage and at most {} cells",
                    prior_scales.len(),
                    decoder_scales.len(),
                    latent::MAX_FRAMES
                ),
            ));
        }
        // Check every cell before the first one runs.
        let cell_request = |p: f32, d: f32| TextToImage {
            prompts: vec![prompt.to_string()],
            num_images_per_prompt: Some(1),
            prior_guidance_scale: Some(p),
            decoder_guidance_scale: Some(d),
            image_embeddings: None,
            record_intermediates: false,
            ..settings.request.clone()
        };
        for &p in prior_scales {
            for &d in decoder_scales {
                self.resolve(&cell_request(p, d))?;
            }
        }
        let mut images = Vec::with_capacity(cells);
        let mut rows = Vec::with_capacity(cells);
        let mut labels = Vec::with_capacity(cells);
        let mut records = Vec::with_capacity(cells);
        let mut last = None;
        for &p in prior_scales {
            for &d in decoder_scales {
                let seed = Seed::new(settings.rng, settings.seed);
                let request = cell_request(p, d);
                let generation = self.generate(&request, seed.source().as_mut(), observer)?;
                records.push(generation.reproduction("sweep", seed, 0)?);
                images.extend(generation.images);
                rows.push(
                    generation
                        .image_embeddings
                        .index_axis(Axis(0), 0)
                        .to_owned(),
                );
                labels.push(format!("prior {p} / decoder {d}"));
                last = Some(generation.settings);
            }
        }
        let settings = last.ok_or_else(|| Error::invalid("guidance scales", "no cells"))?;
        Ok(Exploration {
            labels,
            values: (0..cells).map(|i| i as f32).collect(),
            embeddings: latent::stack(&rows)?,
            images,
            settings,
            records,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    fn finish(
        &self,
        labels: Vec<String>,
        values: Vec<f32>,
        embeddings: Array2<f32>,
        settings: &ExploreSettings,
        observer: &mut Observer<'_>,
        started: Instant,
    ) -> Result<Exploration> {
        let (images, resolved, records) =
            self.decode_embeddings(embeddings.view(), settings, observer)?;
        Ok(Exploration {
            labels,
            values,
            embeddings,
            images,
            settings: resolved,
            records,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}
