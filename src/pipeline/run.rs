//! What a run carries besides its stages: timings and intermediates, the noise tap for `--dump`,
//! per-stage clocks, and low-memory release of a stage's sessions.

use std::collections::BTreeMap;
use std::time::Instant;

use ndarray::ArrayD;

use super::{StageTiming, Tensor};
use crate::noise::NoiseSource;
use crate::runtime::Model;
use crate::Result;

/// What a run collects besides its images: stage timings and, when asked, intermediates.
pub(super) struct Run {
    pub(super) timings: Vec<StageTiming>,
    pub(super) record: bool,
    pub(super) intermediates: BTreeMap<String, Tensor>,
}

impl Run {
    pub(super) fn keep(&mut self, name: &str, tensor: Tensor) {
        if self.record {
            self.intermediates.insert(name.to_string(), tensor);
        }
    }
}

/// Records the noise drawn, for `--dump`.
pub(super) struct NoiseTap<'a> {
    pub(super) inner: &'a mut dyn NoiseSource,
    pub(super) drawn: Vec<ArrayD<f32>>,
    pub(super) record: bool,
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
pub(super) struct StageClock<'a> {
    stage: String,
    started: Instant,
    models: Vec<&'a Model>,
    ort_before: f64,
}

impl<'a> StageClock<'a> {
    pub(super) fn start(stage: &str, models: &[&'a Model]) -> Self {
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

    pub(super) fn stop(&self) -> StageTiming {
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
