//! `unclip bench`: per-stage timings over several runs, JSON on stdout.

use std::ops::ControlFlow;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use unclip::noise;

use crate::flags::{load, request, RuntimeArgs, SamplingArgs};

#[derive(Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    pub(crate) runtime: RuntimeArgs,
    #[command(flatten)]
    pub(crate) sampling: SamplingArgs,
    /// Timed runs.
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 1)]
    pub(crate) warmup: usize,
}

pub(crate) fn stats(values: &mut [f64]) -> serde_json::Value {
    values.sort_by(|a, b| a.total_cmp(b));
    let median = if values.is_empty() {
        0.0
    } else if values.len() % 2 == 1 {
        values[values.len() / 2]
    } else {
        (values[values.len() / 2 - 1] + values[values.len() / 2]) / 2.0
    };
    json!({
        "min": values.first().copied().unwrap_or(0.0),
        "median": median,
        "max": values.last().copied().unwrap_or(0.0),
    })
}

pub(crate) fn bench(args: BenchArgs, quiet: bool) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let load_started = Instant::now();
    let pipeline = load(&args.runtime)?;
    let load_seconds = load_started.elapsed().as_secs_f64();
    let request = request(&args.sampling, false)?;
    let seed = args.sampling.noise.seed.unwrap_or(0);
    let mut per_stage: Vec<(String, Vec<f64>)> = Vec::new();
    let (mut wall, mut ort) = (0.0, 0.0);
    let mut settings = None;
    for run in 0..args.warmup + args.runs {
        let mut noise = noise::noise_source(args.sampling.noise.rng, seed);
        let generation =
            pipeline.generate(&request, noise.as_mut(), &mut |_| ControlFlow::Continue(()))?;
        if !quiet {
            let total = generation.timings.last().map_or(0.0, |t| t.seconds);
            eprintln!(
                "run {run}{}: {total:.3} s",
                if run < args.warmup { " (warmup)" } else { "" }
            );
        }
        if run < args.warmup {
            continue;
        }
        for timing in &generation.timings {
            match per_stage
                .iter_mut()
                .find(|(stage, _)| *stage == timing.stage)
            {
                Some((_, values)) => values.push(timing.seconds),
                None => per_stage.push((timing.stage.clone(), vec![timing.seconds])),
            }
            if timing.stage == "total" {
                wall += timing.seconds;
                ort += timing.ort_seconds;
            }
        }
        settings = Some(generation.settings);
    }
    let settings = settings.context("no timed run")?;
    let mut stages = serde_json::Map::new();
    stages.insert(
        "load".into(),
        json!({"min": load_seconds, "median": load_seconds, "max": load_seconds}),
    );
    for (stage, values) in &mut per_stage {
        stages.insert(stage.clone(), stats(values));
    }
    let report = json!({
        "model": pipeline.bundle().manifest.name,
        "device": pipeline.runtime().device().to_string(),
        "precision": pipeline.precision().to_string(),
        "low_memory": pipeline.runtime().is_low_memory(),
        "upsampler_batch": pipeline.options().upsampler_batch,
        "ort_version": pipeline.runtime().ort_version(),
        "threads": pipeline.runtime().threads(),
        "spinning": pipeline.runtime().spinning(),
        "graph_cache_dir": pipeline.runtime().graph_cache_dir(),
        "prepacking": pipeline.runtime().prepacking(),
        "runs": args.runs,
        "warmup": args.warmup,
        "batch": request.prompts.len() * settings.num_images_per_prompt,
        "rng": args.sampling.noise.rng.to_string(),
        "steps": {
            "prior": if settings.ran_prior { settings.prior_steps } else { 0 },
            "decoder": settings.decoder_steps,
            "super_res": settings.super_res_steps,
        },
        "guidance": {"prior": settings.prior_guidance_scale, "decoder": settings.decoder_guidance_scale},
        "seconds": stages,
        "outside_ort_share": if wall > 0.0 { (wall - ort) / wall } else { 0.0 },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
