//! Classifier-free guidance mixing (diffusers `UnCLIPPipeline.__call__`; docs/architecture.md).
//!
//! CFG batches are `[uncond, cond]` along axis 0 — the order of diffusers'
//! `UnCLIPPipeline._encode_prompt` (`torch.cat([negative_prompt_embeds, prompt_embeds])`); this
//! module is the one place that knows it. Arithmetic is f32, element by element, in torch's
//! order: `uncond + scale * (cond - uncond)`.

use ndarray::{concatenate, s, Array, ArrayView, Axis, Dimension, RemoveAxis, Zip};

use crate::{Error, Result};

/// Stacks the unconditional and conditional halves of a CFG batch in the order models expect.
pub fn cfg_batch<A: Clone, D: RemoveAxis>(
    uncond: ArrayView<'_, A, D>,
    cond: ArrayView<'_, A, D>,
) -> Result<Array<A, D>> {
    let (uncond_shape, cond_shape) = (uncond.shape().to_vec(), cond.shape().to_vec());
    concatenate(Axis(0), &[uncond, cond]).map_err(|_| Error::Shape {
        what: "classifier-free guidance batch".into(),
        expected: format!("halves of equal shape, got {uncond_shape:?}"),
        found: cond_shape,
    })
}

/// Splits a model output over a CFG batch into `(uncond, cond)` views.
pub fn split<A, D: Dimension>(
    prediction: ArrayView<'_, A, D>,
) -> Result<(ArrayView<'_, A, D>, ArrayView<'_, A, D>)> {
    let rows = prediction.shape().first().copied().unwrap_or(0);
    if rows == 0 || rows % 2 != 0 {
        return Err(Error::Shape {
            what: "classifier-free guidance output".into(),
            expected: "an even, nonzero batch [uncond, cond]".into(),
            found: prediction.shape().to_vec(),
        });
    }
    Ok(prediction.split_at(Axis(0), rows / 2))
}

/// `uncond + scale * (cond - uncond)` (diffusers `UnCLIPPipeline.__call__`, prior and decoder).
pub fn mix<D: Dimension>(
    uncond: ArrayView<'_, f32, D>,
    cond: ArrayView<'_, f32, D>,
    scale: f32,
) -> Array<f32, D> {
    Zip::from(&uncond)
        .and(&cond)
        .map_collect(|&u, &c| u + scale * (c - u))
}

/// Guidance for the prior: mixes the two halves of its prediction.
pub fn guide<D: Dimension>(prediction: ArrayView<'_, f32, D>, scale: f32) -> Result<Array<f32, D>> {
    let (uncond, cond) = split(prediction)?;
    Ok(mix(uncond, cond, scale))
}

/// Guidance for a decoder with learned variance: the output has `2 × channels` channels
/// (epsilon, then variance); only epsilon is mixed, and the variance comes from the conditional
/// half (diffusers `UnCLIPPipeline.__call__`, decoder loop).
pub fn guide_learned_variance(
    prediction: ArrayView<'_, f32, ndarray::Ix4>,
    channels: usize,
    scale: f32,
) -> Result<Array<f32, ndarray::Ix4>> {
    let (uncond, cond) = split(prediction)?;
    if cond.shape()[1] != 2 * channels {
        return Err(Error::Shape {
            what: "decoder output".into(),
            expected: format!("{} channels (epsilon and learned variance)", 2 * channels),
            found: prediction.shape().to_vec(),
        });
    }
    let epsilon = mix(
        uncond.slice(s![.., ..channels, .., ..]),
        cond.slice(s![.., ..channels, .., ..]),
        scale,
    );
    concatenate(
        Axis(1),
        &[epsilon.view(), cond.slice(s![.., channels.., .., ..])],
    )
    .map_err(|_| Error::Shape {
        what: "decoder output".into(),
        expected: "epsilon and variance of equal shape".into(),
        found: prediction.shape().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{arr2, Array4};

    #[test]
    fn mixes_uncond_toward_cond() {
        let pred = arr2(&[[1.0f32, 2.0], [3.0, 6.0]]);
        let out = guide(pred.view(), 2.0).unwrap();
        assert_eq!(out, arr2(&[[5.0f32, 10.0]]));
        // scale 1 gives cond; scale 0 gives uncond.
        assert_eq!(guide(pred.view(), 1.0).unwrap(), arr2(&[[3.0f32, 6.0]]));
        assert_eq!(guide(pred.view(), 0.0).unwrap(), arr2(&[[1.0f32, 2.0]]));
    }

    #[test]
    fn learned_variance_comes_from_cond() {
        let mut pred = Array4::<f32>::zeros((2, 6, 1, 1));
        for c in 0..6 {
            pred[[0, c, 0, 0]] = c as f32; // uncond
            pred[[1, c, 0, 0]] = 10.0 + c as f32; // cond
        }
        let out = guide_learned_variance(pred.view(), 3, 3.0).unwrap();
        assert_eq!(out.shape(), &[1, 6, 1, 1]);
        for c in 0..3 {
            assert_eq!(out[[0, c, 0, 0]], c as f32 + 3.0 * 10.0);
        }
        for c in 3..6 {
            assert_eq!(out[[0, c, 0, 0]], 10.0 + c as f32);
        }
    }

    #[test]
    fn rejects_odd_batches_and_wrong_channels() {
        assert!(guide(arr2(&[[1.0f32]]).view(), 2.0).is_err());
        assert!(guide_learned_variance(Array4::<f32>::zeros((2, 4, 1, 1)).view(), 3, 1.0).is_err());
    }

    #[test]
    fn cfg_batch_puts_uncond_first() {
        let u = arr2(&[[0.0f32]]);
        let c = arr2(&[[1.0f32]]);
        assert_eq!(
            cfg_batch(u.view(), c.view()).unwrap(),
            arr2(&[[0.0f32], [1.0]])
        );
    }
}
