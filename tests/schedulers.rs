//! Schedulers against diffusers 0.42.1: tables and timesteps bit for bit, single steps on fixed
//! tensors with diffusers' own variance noise replayed, and the laws every schedule must keep.
//! Fixture: `tests/fixtures/schedulers/unclip_reference.json`, written by
//! `export/scheduler_reference.py`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use serde::Deserialize;
use unclip::noise::{NoiseSource, RecordedNoise};
use unclip::schedulers::{
    betas, scheduler_from_config, unclip::unclip_timesteps, BetaSchedule, PredictionType,
    Scheduler, SchedulerConfig, UnCLIPScheduler, UnCLIPSchedulerConfig, VarianceType,
};
use unclip::Error;

/// Largest absolute difference allowed between a Rust step and diffusers' step. The remaining
/// difference comes from torch's x86 build evaluating `** 0.5`, `log` and `exp` through MKL
/// (≤ 1 ulp off the correctly rounded f32 that Rust computes), i.e. ~1e-7 relative on values of
/// order one.
const STEP_TOLERANCE: f32 = 1e-6;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/schedulers/unclip_reference.json"
);

#[derive(Deserialize)]
struct Reference {
    num_train_timesteps: usize,
    betas_f64_bits: Vec<String>,
    betas: Vec<f64>,
    alphas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    linear_betas: LinearBetas,
    scaled_linear_betas: LinearBetas,
    timesteps: BTreeMap<String, Vec<i64>>,
    unsupported: BTreeMap<String, String>,
    configs: BTreeMap<String, serde_json::Value>,
    steps: Vec<StepCase>,
}

#[derive(Deserialize)]
struct LinearBetas {
    beta_start: f64,
    beta_end: f64,
    betas: Vec<f64>,
}

#[derive(Deserialize)]
struct StepCase {
    config: String,
    convention: String,
    num_inference_steps: Option<usize>,
    step_index: Option<usize>,
    timestep: i64,
    prev_timestep: Option<i64>,
    model_output: Tensor,
    sample: Tensor,
    noise: Option<Tensor>,
    prev_sample: Tensor,
}

#[derive(Deserialize)]
struct Tensor {
    shape: Vec<usize>,
    data: Vec<f64>,
}

impl Tensor {
    /// The recorded float32 tensor (every value was written as the exact widening of an f32).
    fn array(&self) -> ArrayD<f32> {
        ArrayD::from_shape_vec(IxDyn(&self.shape), f32s(&self.data)).expect("fixture shape")
    }
}

fn f32s(values: &[f64]) -> Vec<f32> {
    values.iter().map(|&v| v as f32).collect()
}

fn reference() -> &'static Reference {
    static REFERENCE: OnceLock<Reference> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let text = std::fs::read_to_string(FIXTURE)
            .unwrap_or_else(|e| panic!("{FIXTURE}: {e} (run export/scheduler_reference.py)"));
        serde_json::from_str(&text).expect("fixture parses")
    })
}

/// Asserts `actual` is within `tolerance` of `expected` everywhere; returns the max difference.
fn assert_close(actual: &ArrayD<f32>, expected: &ArrayD<f32>, tolerance: f32, what: &str) -> f32 {
    assert_eq!(actual.shape(), expected.shape(), "{what}: shape");
    let max_diff = actual
        .iter()
        .zip(expected.iter())
        .map(|(a, e)| (a - e).abs())
        .fold(0.0f32, |m, d| if d.is_nan() || d > m { d } else { m });
    assert!(
        max_diff <= tolerance,
        "{what}: max |Δ| = {max_diff:e} > {tolerance:e}"
    );
    max_diff
}

/// A noise source that counts draws, around the recorded noise of one step.
struct CountingNoise<N> {
    inner: N,
    draws: usize,
}

impl<N: NoiseSource> NoiseSource for CountingNoise<N> {
    fn randn(&mut self, shape: &[usize]) -> unclip::Result<ArrayD<f32>> {
        self.draws += 1;
        self.inner.randn(shape)
    }
}

/// A noise source for steps that must not draw.
struct NoNoise;

impl NoiseSource for NoNoise {
    fn randn(&mut self, shape: &[usize]) -> unclip::Result<ArrayD<f32>> {
        panic!("this step must not draw noise (asked for {shape:?})")
    }
}

fn config(name: &str) -> UnCLIPSchedulerConfig {
    serde_json::from_value(reference().configs[name].clone()).expect("config parses")
}

fn karlo_config_json(stage: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny-karlo")
        .join(format!("{stage}_scheduler"))
        .join("scheduler_config.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).expect("scheduler_config.json parses")
}

// ---- tables and timesteps: exact ---------------------------------------------------------------

#[test]
fn squaredcos_betas_f64_are_bit_equal() {
    let r = reference();
    let betas = betas::squaredcos_cap_v2_f64(r.num_train_timesteps);
    assert_eq!(betas.len(), r.betas_f64_bits.len());
    for (i, (beta, bits)) in betas.iter().zip(&r.betas_f64_bits).enumerate() {
        let expected = f64::from_bits(u64::from_str_radix(bits, 16).expect("hex bits"));
        assert_eq!(
            beta.to_bits(),
            expected.to_bits(),
            "beta[{i}]: {beta:e} vs {expected:e}"
        );
    }
}

#[test]
fn scheduler_tables_are_bit_equal() {
    let r = reference();
    let scheduler = UnCLIPScheduler::new(UnCLIPSchedulerConfig::default(), 25).unwrap();
    for (name, actual, expected) in [
        ("betas", scheduler.betas(), &r.betas),
        ("alphas", scheduler.alphas(), &r.alphas),
        (
            "alphas_cumprod",
            scheduler.alphas_cumprod(),
            &r.alphas_cumprod,
        ),
    ] {
        let expected = f32s(expected);
        assert_eq!(actual.len(), 1000, "{name}");
        let mismatches: Vec<usize> = (0..expected.len())
            .filter(|&i| actual[i].to_bits() != expected[i].to_bits())
            .collect();
        assert!(mismatches.is_empty(), "{name} differs at {mismatches:?}");
    }
}

#[test]
fn linear_schedules_are_bit_equal() {
    let r = reference();
    for (schedule, reference_betas) in [
        (BetaSchedule::Linear, &r.linear_betas),
        (BetaSchedule::ScaledLinear, &r.scaled_linear_betas),
    ] {
        let actual = betas::betas(
            schedule,
            r.num_train_timesteps,
            reference_betas.beta_start,
            reference_betas.beta_end,
        )
        .unwrap();
        let expected = f32s(&reference_betas.betas);
        let mismatches = (0..expected.len())
            .filter(|&i| actual[i].to_bits() != expected[i].to_bits())
            .count();
        assert_eq!(mismatches, 0, "{schedule:?}: {mismatches} betas differ");
    }
}

#[test]
fn timesteps_equal_diffusers() {
    let r = reference();
    assert!(!r.timesteps.is_empty());
    for (n, expected) in &r.timesteps {
        let n: usize = n.parse().unwrap();
        let scheduler = UnCLIPScheduler::new(UnCLIPSchedulerConfig::default(), n).unwrap();
        assert_eq!(scheduler.timesteps(), expected.as_slice(), "N = {n}");
    }
}

// ---- single steps against diffusers ----------------------------------------------------------

#[test]
fn steps_match_diffusers() {
    let r = reference();
    let mut overall = 0.0f32;
    for case in &r.steps {
        let label = format!(
            "{} {} N={:?} i={:?} t={} prev={:?}",
            case.config,
            case.convention,
            case.num_inference_steps,
            case.step_index,
            case.timestep,
            case.prev_timestep
        );
        let model_output = case.model_output.array();
        let sample = case.sample.array();
        let recorded: Vec<ArrayD<f32>> = case.noise.iter().map(Tensor::array).collect();
        let mut noise = CountingNoise {
            inner: RecordedNoise::from_arrays(recorded),
            draws: 0,
        };
        let actual = match case.convention.as_str() {
            "pipeline" => {
                let n = case.num_inference_steps.unwrap();
                let i = case.step_index.unwrap();
                let mut scheduler: Box<dyn Scheduler> =
                    Box::new(UnCLIPScheduler::new(config(&case.config), n).unwrap());
                assert_eq!(scheduler.timesteps()[i], case.timestep, "{label}");
                scheduler
                    .step(i, model_output.view(), sample.view(), &mut noise)
                    .unwrap_or_else(|e| panic!("{label}: {e}"))
            }
            "explicit" => UnCLIPScheduler::new(config(&case.config), 25)
                .unwrap()
                .step_to(
                    case.timestep,
                    case.prev_timestep,
                    model_output.view(),
                    sample.view(),
                    &mut noise,
                )
                .unwrap_or_else(|e| panic!("{label}: {e}")),
            other => panic!("unknown convention {other}"),
        };
        assert_eq!(
            noise.draws,
            usize::from(case.noise.is_some()),
            "{label}: draws"
        );
        let diff = assert_close(&actual, &case.prev_sample.array(), STEP_TOLERANCE, &label);
        eprintln!("{label}: max |Δ| = {diff:e}");
        overall = overall.max(diff);
    }
    eprintln!(
        "{} steps, max |Δ| over all = {overall:e} (tolerance {STEP_TOLERANCE:e})",
        r.steps.len()
    );
}

#[test]
fn learned_range_may_omit_variance_channels_only_at_t0() {
    let mut scheduler = UnCLIPScheduler::new(config("decoder"), 25).unwrap();
    let sample = ArrayD::<f32>::from_elem(IxDyn(&[1, 3, 2, 2]), 0.25);
    let epsilon = ArrayD::<f32>::from_elem(IxDyn(&[1, 3, 2, 2]), 0.1);
    // last step (t = 0): no noise, no variance needed — diffusers accepts this too
    scheduler
        .step(24, epsilon.view(), sample.view(), &mut NoNoise)
        .unwrap();
    let mut noise = RecordedNoise::from_arrays(vec![ArrayD::zeros(IxDyn(&[1, 3, 2, 2]))]);
    let err = scheduler
        .step(0, epsilon.view(), sample.view(), &mut noise)
        .unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
}

// ---- N = 1: defined here, a division by zero in diffusers -----------------------------------

#[test]
fn one_step_is_rejected_by_diffusers() {
    let r = reference();
    assert!(r.unsupported["1"].contains("ZeroDivisionError"));
    assert!(!r.timesteps.contains_key("1"));
}

#[test]
fn one_step_is_the_single_timestep_t_minus_1() {
    let scheduler = UnCLIPScheduler::new(UnCLIPSchedulerConfig::default(), 1).unwrap();
    assert_eq!(scheduler.timesteps(), &[999]);
    assert_eq!(unclip_timesteps(50, 1).unwrap(), vec![49]);
}

#[test]
fn one_step_returns_the_clipped_clean_estimate_without_noise() {
    // epsilon prediction (super-res config): x̂₀ = clamp((x − √(1−ᾱ)·ε)/√ᾱ, ±1) exactly
    let mut scheduler = UnCLIPScheduler::new(config("super_res"), 1).unwrap();
    let a = scheduler.alphas_cumprod()[999];
    let sample = ArrayD::from_shape_fn(IxDyn(&[2, 3, 2, 2]), |ix| ix[3] as f32 * 0.5 - 0.25);
    let epsilon = ArrayD::from_shape_fn(IxDyn(&[2, 3, 2, 2]), |ix| ix[1] as f32 * 0.3 - 0.3);
    let out = scheduler
        .step(0, epsilon.view(), sample.view(), &mut NoNoise)
        .unwrap();
    let expected = ndarray::Zip::from(&sample)
        .and(&epsilon)
        .map_collect(|&x, &e| ((x - (1.0 - a).sqrt() * e) / a.sqrt()).clamp(-1.0, 1.0));
    assert_eq!(out, expected);

    // sample prediction (prior config, range 5): the clipped model output itself
    let mut prior = UnCLIPScheduler::new(config("prior"), 1).unwrap();
    let sample = ArrayD::from_elem(IxDyn(&[2, 8]), 3.0f32);
    let predicted = ArrayD::from_shape_fn(IxDyn(&[2, 8]), |ix| ix[1] as f32 * 1.7 - 6.0);
    let out = prior
        .step(0, predicted.view(), sample.view(), &mut NoNoise)
        .unwrap();
    assert_eq!(out, predicted.mapv(|v| v.clamp(-5.0, 5.0)));

    // learned range: the variance channels are split off and unused
    let mut decoder = UnCLIPScheduler::new(config("decoder"), 1).unwrap();
    let model_output = ArrayD::from_elem(IxDyn(&[1, 6, 2, 2]), 1.0f32);
    let sample = ArrayD::from_elem(IxDyn(&[1, 3, 2, 2]), 0.0f32);
    let out = decoder
        .step(0, model_output.view(), sample.view(), &mut NoNoise)
        .unwrap();
    assert!(out.iter().all(|&v| v == -1.0), "{out}");
}

// ---- laws --------------------------------------------------------------------------------------

#[test]
fn timesteps_decrease_strictly_from_t_minus_1_to_0() {
    for train in [2usize, 3, 10, 50, 1000] {
        for n in 2..=train {
            let t = unclip_timesteps(train, n).unwrap();
            assert_eq!(t.len(), n);
            assert_eq!(t[0], train as i64 - 1, "T={train} N={n}");
            assert_eq!(*t.last().unwrap(), 0, "T={train} N={n}");
            assert!(t.windows(2).all(|w| w[0] > w[1]), "T={train} N={n}: {t:?}");
        }
    }
}

#[test]
fn every_step_but_the_last_draws_noise_of_the_sample_shape() {
    for (name, channels_out) in [("prior", 8), ("decoder", 6), ("super_res", 3)] {
        let mut scheduler = UnCLIPScheduler::new(config(name), 7).unwrap();
        let (sample_shape, output_shape): (Vec<usize>, Vec<usize>) = if name == "prior" {
            (vec![2, 8], vec![2, channels_out])
        } else {
            (vec![2, 3, 4, 4], vec![2, channels_out, 4, 4])
        };
        let mut sample = ArrayD::<f32>::zeros(IxDyn(&sample_shape));
        let output = ArrayD::<f32>::from_elem(IxDyn(&output_shape), 0.1);
        for i in 0..scheduler.timesteps().len() {
            let recorded = vec![ArrayD::<f32>::from_elem(IxDyn(&sample_shape), 1.0)];
            let mut noise = CountingNoise {
                inner: RecordedNoise::from_arrays(recorded),
                draws: 0,
            };
            sample = scheduler
                .step(i, output.view(), sample.view(), &mut noise)
                .unwrap();
            let expected = usize::from(i + 1 < scheduler.timesteps().len());
            assert_eq!(noise.draws, expected, "{name} step {i}");
            assert!(sample.iter().all(|v| v.is_finite()), "{name} step {i}");
        }
    }
}

// ---- configs -------------------------------------------------------------------------------

#[test]
fn karlo_scheduler_configs_parse() {
    let expected = [
        (
            "prior",
            VarianceType::FixedSmallLog,
            PredictionType::Sample,
            5.0,
        ),
        (
            "decoder",
            VarianceType::LearnedRange,
            PredictionType::Epsilon,
            1.0,
        ),
        (
            "super_res",
            VarianceType::FixedSmallLog,
            PredictionType::Epsilon,
            1.0,
        ),
    ];
    for (stage, variance_type, prediction_type, range) in expected {
        let json = karlo_config_json(stage);
        let SchedulerConfig::UnCLIP(config) = SchedulerConfig::from_json(&json).unwrap() else {
            panic!("{stage}: not an UnCLIPScheduler config");
        };
        assert_eq!(config.variance_type, variance_type, "{stage}");
        assert_eq!(config.prediction_type, prediction_type, "{stage}");
        assert_eq!(config.clip_sample_range, range, "{stage}");
        assert!(config.clip_sample);
        assert_eq!(config.num_train_timesteps, 1000);
        assert_eq!(config.beta_schedule, BetaSchedule::SquaredcosCapV2);
        let scheduler = scheduler_from_config(&json, 25).unwrap();
        assert_eq!(scheduler.timesteps().len(), 25);
        assert_eq!(scheduler.init_noise_sigma(), 1.0);
    }
}

#[test]
fn config_defaults_are_diffusers_defaults() {
    let json =
        serde_json::json!({"_class_name": "UnCLIPScheduler", "_diffusers_version": "0.42.1"});
    let SchedulerConfig::UnCLIP(config) = SchedulerConfig::from_json(&json).unwrap() else {
        unreachable!()
    };
    assert_eq!(
        config,
        UnCLIPSchedulerConfig {
            num_train_timesteps: 1000,
            variance_type: VarianceType::FixedSmallLog,
            clip_sample: true,
            clip_sample_range: 1.0,
            prediction_type: PredictionType::Epsilon,
            beta_schedule: BetaSchedule::SquaredcosCapV2,
        }
    );
}

fn invalid_reason(result: unclip::Result<Box<dyn Scheduler>>) -> String {
    match result {
        Err(Error::InvalidArgument { name, reason }) => format!("{name}: {reason}"),
        Err(other) => panic!("expected InvalidArgument, got {other}"),
        Ok(_) => panic!("expected an error"),
    }
}

#[test]
fn unknown_class_is_an_error_naming_it() {
    let json = serde_json::json!({"_class_name": "EulerDiscreteScheduler"});
    let reason = invalid_reason(scheduler_from_config(&json, 25));
    assert!(reason.contains("EulerDiscreteScheduler"), "{reason}");
    assert!(reason.contains("UnCLIPScheduler"), "{reason}");
    let reason = invalid_reason(scheduler_from_config(&serde_json::json!({}), 25));
    assert!(reason.contains("_class_name"), "{reason}");
}

#[test]
fn unsupported_values_are_errors_naming_them() {
    let mut json = karlo_config_json("decoder");
    json["variance_type"] = "fixed_large".into();
    let reason = invalid_reason(scheduler_from_config(&json, 25));
    assert!(reason.contains("fixed_large"), "{reason}");

    let mut json = karlo_config_json("decoder");
    json["prediction_type"] = "v_prediction".into();
    let reason = invalid_reason(scheduler_from_config(&json, 25));
    assert!(reason.contains("v_prediction"), "{reason}");

    let mut json = karlo_config_json("decoder");
    json["beta_schedule"] = "linear".into();
    let reason = invalid_reason(scheduler_from_config(&json, 25));
    assert!(
        reason.contains("beta_schedule") && reason.contains("linear"),
        "{reason}"
    );

    let mut json = karlo_config_json("prior");
    json["clip_sample_range"] = (-1.0).into();
    let reason = invalid_reason(scheduler_from_config(&json, 25));
    assert!(reason.contains("clip_sample_range"), "{reason}");
}

#[test]
fn step_counts_out_of_range_are_errors() {
    let json = karlo_config_json("decoder");
    assert!(invalid_reason(scheduler_from_config(&json, 0)).contains("num_inference_steps"));
    assert!(invalid_reason(scheduler_from_config(&json, 1001)).contains("1001"));
    assert_eq!(
        scheduler_from_config(&json, 1000).unwrap().timesteps()[0],
        999
    );
}

#[test]
fn bad_step_inputs_are_errors() {
    let mut scheduler = UnCLIPScheduler::new(config("super_res"), 7).unwrap();
    let sample = ArrayD::<f32>::zeros(IxDyn(&[1, 3, 2, 2]));
    let wrong = ArrayD::<f32>::zeros(IxDyn(&[1, 6, 2, 2])); // 2× channels, but variance is fixed
    let view: ArrayViewD<f32> = wrong.view();
    assert!(matches!(
        scheduler.step(1, view, sample.view(), &mut NoNoise),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        scheduler.step(7, sample.view(), sample.view(), &mut NoNoise),
        Err(Error::InvalidArgument {
            name: "step_index",
            ..
        })
    ));
    assert!(matches!(
        scheduler.step_to(1000, None, sample.view(), sample.view(), &mut NoNoise),
        Err(Error::InvalidArgument {
            name: "timestep",
            ..
        })
    ));
    let flat = ArrayD::<f32>::zeros(IxDyn(&[4]));
    assert!(matches!(
        scheduler.step(6, flat.view(), flat.view(), &mut NoNoise),
        Err(Error::Shape { .. })
    ));
    // noise of the wrong shape is refused, not broadcast
    let mut noise = RecordedNoise::from_arrays(vec![ArrayD::zeros(IxDyn(&[1, 3, 2, 1]))]);
    assert!(scheduler
        .step(0, sample.view(), sample.view(), &mut noise)
        .is_err());
}

#[test]
fn schedulers_are_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Box<dyn Scheduler>>();
    assert_send_sync::<UnCLIPScheduler>();
}
