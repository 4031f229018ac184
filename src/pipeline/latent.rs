//! The Kandinsky 2.2 family's image stages in a run: the latent decoder (text-to-image or
//! img2img) and MoVQ (diffusers `KandinskyV22CombinedPipeline` and
//! `KandinskyV22Img2ImgCombinedPipeline`, decoder half).

use ndarray::{Array2, Array4, Axis};

use super::{NoiseTap, Pipeline, Release, ResolvedSettings, Run, StageClock, TextToImage};
use crate::pipeline::Tensor;
use crate::stages::{InitLatents, LatentDecoder, Observer};
use crate::vision::{pil_resize, PilFilter};
use crate::Result;

impl Pipeline {
    /// Decodes `image_embeddings` (one row per image) to images in about [−1, 1]. `negatives`
    /// are the prior's samples of the negative prompt, else the zero-image embedding is the
    /// unconditional branch.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn decode_latents(
        &self,
        decoder: &LatentDecoder,
        image_embeddings: &Array2<f32>,
        negatives: Option<Array2<f32>>,
        request: &TextToImage,
        settings: &ResolvedSettings,
        tap: &mut NoiseTap<'_>,
        observer: &mut Observer<'_>,
        run: &mut Run,
    ) -> Result<Array4<f32>> {
        let models = decoder.models();
        let clock = StageClock::start("decoder", &models);
        let release = Release(models.clone());
        let batch = image_embeddings.nrows();
        let negatives = negatives.unwrap_or_else(|| decoder.zero_negatives(batch));
        let size = (settings.output_height, settings.output_size);
        let init_latents = match (&request.init_image, settings.strength) {
            (Some(image), Some(_)) => {
                let pixels = init_pixels(image, size);
                let encoded = decoder.encode(pixels.view())?;
                // One init image for every row (diffusers encodes the tiled image list: the
                // same latents in every row).
                let rows = vec![0; batch];
                Some(encoded.select(Axis(0), &rows))
            }
            _ => None,
        };
        let out = decoder.sample(
            image_embeddings.view(),
            negatives.view(),
            settings.decoder_guidance,
            &settings.decoder_sampling(),
            size,
            init_latents.as_ref().map(|latents| InitLatents {
                latents: latents.view(),
                strength: settings.strength.unwrap_or(1.0),
            }),
            tap,
            observer,
        )?;
        drop(release);
        run.timings.push(clock.stop());
        run.keep(
            "decoder_image_embeds",
            Tensor::F32(out.image_embeds.into_dyn()),
        );
        run.keep(
            "decoder_timesteps",
            Tensor::I64(ndarray::Array1::from(out.timesteps).into_dyn()),
        );
        run.keep("decoder_latents", Tensor::F32(out.latents.into_dyn()));
        run.keep("movq_out", Tensor::F32(out.images.clone().into_dyn()));
        Ok(out.images)
    }
}

/// An init image as MoVQ takes it: resized to `(height, width)` with Pillow's BICUBIC when its
/// size differs, then `2 · (v / 255) − 1` in f32, `(1, 3, H, W)` (diffusers
/// `VaeImageProcessor.preprocess`; its integer pre-reduction for downscales of 2× and more,
/// `reducing_gap=1`, is not reproduced).
fn init_pixels(image: &image::RgbImage, (height, width): (usize, usize)) -> Array4<f32> {
    let resized;
    let image = if image.dimensions() == (width as u32, height as u32) {
        image
    } else {
        resized = pil_resize(image, width as u32, height as u32, PilFilter::Bicubic);
        &resized
    };
    Array4::from_shape_fn((1, 3, height, width), |(_, c, y, x)| {
        let v = f32::from(image.get_pixel(x as u32, y as u32)[c]) / 255.0;
        2.0 * v - 1.0
    })
}
