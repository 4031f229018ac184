//! Progress bars on stderr and Ctrl-C: a run stops at the next denoising step.

use std::ops::ControlFlow;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use unclip::stages::{Progress, Stage};

/// Set by Ctrl-C (SIGINT): the running command stops at the next denoising step and
/// writes nothing.
pub(crate) static INTERRUPTED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Progress bars, one per stage, on stderr.
pub(crate) struct Bars {
    pub(crate) multi: Option<MultiProgress>,
    pub(crate) current: Option<(Stage, ProgressBar)>,
}

impl Bars {
    pub(crate) fn new(quiet: bool) -> Self {
        Bars {
            multi: (!quiet).then(MultiProgress::new),
            current: None,
        }
    }

    pub(crate) fn update(&mut self, p: Progress) -> ControlFlow<()> {
        if INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
            return ControlFlow::Break(());
        }
        let Some(multi) = &self.multi else {
            return ControlFlow::Continue(());
        };
        if p.stage == Stage::Text {
            return ControlFlow::Continue(());
        }
        if self
            .current
            .as_ref()
            .is_none_or(|(stage, _)| *stage != p.stage)
        {
            if let Some((_, bar)) = self.current.take() {
                bar.finish();
            }
            let bar = multi.add(ProgressBar::new(p.steps as u64));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>10} [{bar:30}] {pos}/{len} {elapsed_precise}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(p.stage.to_string());
            self.current = Some((p.stage, bar));
        }
        if let Some((_, bar)) = &self.current {
            bar.set_position(p.step as u64);
        }
        ControlFlow::Continue(())
    }

    pub(crate) fn finish(&mut self) {
        if let Some((_, bar)) = self.current.take() {
            bar.finish();
        }
    }
}
