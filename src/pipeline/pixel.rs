//! Karlo's image stages in a run: the 64×64 decoder, then the upsamplers (diffusers
//! `UnCLIPPipeline.__call__`, decoder and super-resolution loops).

use super::{NoiseTap, Pipeline, Release, ResolvedSettings, Run, StageClock, TextToImage};
use crate::pipeline::Tensor;
use crate::stages::{Conditioning, Decoder, Observer, Upsampler};
use crate::Result;
use ndarray::{Array2, Axis};

impl Pipeline {
    /// Karlo's image stages: the 64×64 decoder, then the upsamplers; images in [−1, 1].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn decode_pixels(
        &self,
        (decoder, upsamplers): (&Decoder, &[Upsampler]),
        image_embeddings: &Array2<f32>,
        text: &Conditioning,
        request: &TextToImage,
        settings: &ResolvedSettings,
        tap: &mut NoiseTap<'_>,
        observer: &mut Observer<'_>,
        run: &mut Run,
    ) -> Result<ndarray::Array4<f32>> {
        let clock = StageClock::start("decoder", &decoder.models());
        let release = Release(decoder.models().to_vec());
        let initial = request.decoder_latents.as_ref().map(|given| {
            let rows: Vec<usize> = (0..image_embeddings.nrows())
                .map(|i| if given.shape()[0] == 1 { 0 } else { i })
                .collect();
            given.select(Axis(0), &rows)
        });
        let decoded = decoder.sample(
            image_embeddings.view(),
            text,
            &settings.decoder_sampling(),
            initial.as_ref().map(|a| a.view()),
            tap,
            observer,
        )?;
        drop(release);
        run.timings.push(clock.stop());
        run.keep(
            "decoder_hidden_states",
            Tensor::F32(decoded.hidden_states.into_dyn()),
        );
        run.keep(
            "additive_clip_time_embeddings",
            Tensor::F32(decoded.additive_clip_time_embeddings.into_dyn()),
        );
        run.keep("decoder_mask", Tensor::I64(decoded.mask.into_dyn()));
        run.keep(
            "decoder_out",
            Tensor::F32(decoded.images.clone().into_dyn()),
        );

        // upsamplers, each fed the previous output clamped to [−1, 1]
        let mut images = decoded.images;
        for (i, upsampler) in upsamplers.iter().enumerate().take(settings.upsamplers) {
            let clock = StageClock::start(&upsampler.name, &upsampler.models());
            let release = Release(upsampler.models().to_vec());
            if i > 0 {
                images.mapv_inplace(|x| x.clamp(-1.0, 1.0));
            }
            let out = upsampler.sample(
                i,
                images.view(),
                &settings.super_res_sampling(i),
                tap,
                observer,
            )?;
            drop(release);
            run.timings.push(clock.stop());
            let suffix = if i == 0 {
                String::new()
            } else {
                format!("_{i}")
            };
            run.keep(
                &format!("upsampled{suffix}"),
                Tensor::F32(out.upsampled.into_dyn()),
            );
            run.keep(
                &format!("sr_out{suffix}"),
                Tensor::F32(out.images.clone().into_dyn()),
            );
            images = out.images;
        }
        Ok(images)
    }
}
