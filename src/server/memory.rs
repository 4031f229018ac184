//! The server's memory budget: work that would need more memory than the budget is refused
//! before it runs (a 400 naming the largest `n` that fits), and batches never grow past it,
//! instead of the process running out of memory mid-run.
//!
//! The cost of a run is measured, not guessed: when a budget is set, the server calibrates at
//! start with one-step runs of every stage at the largest output size, with 1, 2 and 4 images,
//! and reads the process's peak resident set after each (`VmHWM`, reset between runs through
//! `/proc/self/clear_refs`). A run of `k` images is then estimated at `base + k · per_image`,
//! with the steepest measured slope and a base that keeps every measured peak under the line, at
//! the largest size: smaller sizes are overestimated (safe).

use crate::pipeline::{no_observer, TextToImage};
use crate::{Error, Pipeline, Result};

/// What a run of the served pipeline costs in resident memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryModel {
    /// Peak resident bytes of the process for a one-image run (includes the loaded weights).
    pub base_bytes: u64,
    /// Extra peak resident bytes per image in a run.
    pub per_image_bytes: u64,
}

impl MemoryModel {
    /// Measures the model with short runs of 1, 2 and 4 images (see the module docs). Linux only.
    pub fn calibrate(pipeline: &Pipeline) -> Result<Self> {
        let run = |images: usize| -> Result<u64> {
            let request = TextToImage {
                prompts: vec![String::new(); images],
                prior_steps: Some(1),
                decoder_steps: Some(1),
                super_res_steps: vec![1; pipeline.sizes().len() - 1],
                ..Default::default()
            };
            reset_peak_rss();
            pipeline.generate(
                &request,
                &mut crate::noise::FastNoise::new(0),
                &mut no_observer(),
            )?;
            peak_rss().ok_or_else(|| {
                Error::invalid(
                    "memory budget",
                    "needs /proc/self/status (Linux) to measure the model's memory; \
                     run without --memory-budget-mib on this system",
                )
            })
        };
        let peaks = [(1u64, run(1)?), (2, run(2)?), (4, run(4)?)];
        // The output images alone are a floor for the per-image cost (three channels, f32, at
        // every stage), whatever the arena happened to hold already.
        let floor: u64 = pipeline
            .sizes()
            .iter()
            .map(|&s| (3 * s * s * 4) as u64)
            .sum();
        // The steepest measured slope, and the base that puts every measured peak under the line:
        // an upper bound wherever growth is linear or slower (measured: tiny bundle, 1/2/4 images
        // at 256², 295/668/1248 MiB).
        let per_image = peaks
            .windows(2)
            .map(|w| w[1].1.saturating_sub(w[0].1) / (w[1].0 - w[0].0))
            .max()
            .unwrap_or(0)
            .max(floor);
        let base = peaks
            .iter()
            .map(|&(k, peak)| peak.saturating_sub(k * per_image))
            .max()
            .unwrap_or(0);
        Ok(MemoryModel {
            base_bytes: base,
            per_image_bytes: per_image,
        })
    }

    /// Estimated peak resident bytes of a run of `images` images.
    pub fn estimate(&self, images: usize) -> u64 {
        self.base_bytes
            .saturating_add(self.per_image_bytes.saturating_mul(images as u64))
    }

    /// The most images one run may hold within `budget` bytes (0: not even one).
    pub fn max_images(&self, budget: u64) -> usize {
        if budget < self.base_bytes || self.per_image_bytes == 0 {
            return if budget >= self.base_bytes {
                usize::MAX
            } else {
                0
            };
        }
        ((budget - self.base_bytes) / self.per_image_bytes) as usize
    }
}

/// The process's peak resident set in bytes (`VmHWM`), if the system reports it.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resets the peak resident set to the current one (Linux ≥ 4.0); false when not possible, in
/// which case the next peak also covers what came before (an overestimate).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_and_max_images_agree() {
        let m = MemoryModel {
            base_bytes: 1000,
            per_image_bytes: 100,
        };
        assert_eq!(m.estimate(3), 1300);
        assert_eq!(m.max_images(1300), 3);
        assert_eq!(m.max_images(1299), 2);
        assert_eq!(m.max_images(999), 0);
        assert!(m.estimate(m.max_images(5000)) <= 5000);
        assert!(m.estimate(m.max_images(5000) + 1) > 5000);
    }

    #[test]
    fn peak_rss_is_reported_on_linux() {
        let peak = peak_rss().expect("VmHWM in /proc/self/status");
        // A test binary with its allocator and threads holds at least a megabyte.
        assert!(peak > 1 << 20, "{peak}");
    }
}
