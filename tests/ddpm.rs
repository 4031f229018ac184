//! `DDPMScheduler` against diffusers 0.42.1: its config keys and `from_config` of Karlo's configs,
//! ᾱ tables and timesteps bit for bit, single steps of every variance type on fixed tensors (the
//! noise diffusers drew, replayed), full loops of a synthetic model, and `add_noise`.
//! Fixture: `tests/fixtures/schedulers/ddpm_reference.json`, written by
//! `export/scheduler_reference.py` (see `write_ddpm_reference` there).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use ndarray::{concatenate, ArrayD, Axis, IxDyn};
use serde::Deserialize;
use unclip::noise::{NoiseSource, RecordedNoise};
use unclip::schedulers::{
    DDPMScheduler, DDPMSchedulerConfig, DdpmVarianceType, Scheduler, SchedulerConfig, SchedulerKind,
};

/// As `tests/solvers.rs`: per-step scalars are f32 0-d tensor arithmetic in diffusers' order, so
/// what remains is torch's `log`/`exp`/`** 0.5` against Rust's libm (≤ 1 ulp in a coefficient).
const STEP_TOLERANCE: f32 = 1e-6;
/// Along a loop, relative to max(1, |diffusers' value|), as `tests/solvers.rs`.
const LOOP_TOLERANCE: f32 = 2e-6;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/schedulers/ddpm_reference.json"
);

#[derive(Deserialize)]
struct Reference {
    init_keys: Vec<String>,
    configs: BTreeMap<String, serde_json::Value>,
    alphas_cumprod: BTreeMap<String, Vec<f64>>,
    timesteps: BTreeMap<String, BTreeMap<String, Vec<i64>>>,
    steps: Vec<StepCase>,
    loops: Vec<LoopCase>,
    add_noise: Vec<AddNoiseCase>,
}

#[derive(Deserialize)]
struct StepCase {
    config: String,
    num_inference_steps: usize,
    step_index: usize,
    timestep: i64,
    sample: Tensor,
    model_output: Tensor,
    noise: Vec<Tensor>,
    prev_sample: Tensor,
}

#[derive(Deserialize)]
struct LoopCase {
    config: String,
    num_inference_steps: usize,
    start: Tensor,
    noise: Vec<Tensor>,
    end: Tensor,
}

#[derive(Deserialize)]
struct AddNoiseCase {
    timestep: i64,
    original: Tensor,
    noise: Tensor,
    noisy: Tensor,
}

#[derive(Deserialize)]
struct Tensor {
    shape: Vec<usize>,
    data: Vec<f64>,
}

impl Tensor {
    /// The recorded float32 tensor (every value was written as the exact widening of an f32).
    fn array(&self) -> ArrayD<f32> {
        let data = self.data.iter().map(|&v| v as f32).collect();
        ArrayD::from_shape_vec(IxDyn(&self.shape), data).expect("fixture shape")
    }
}

fn reference() -> &'static Reference {
    static REFERENCE: OnceLock<Reference> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let text = std::fs::read_to_string(Path::new(FIXTURE))
            .unwrap_or_else(|e| panic!("{FIXTURE}: {e} (export/scheduler_reference.py writes it)"));
        serde_json::from_str(&text).expect("ddpm_reference.json parses")
    })
}

fn config(name: &str) -> SchedulerConfig {
    let json = &reference().configs[name];
    let config = SchedulerConfig::from_json(json).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(config.kind(), SchedulerKind::Ddpm, "{name}");
    config
}

fn ddpm(name: &str, steps: usize) -> DDPMScheduler {
    let SchedulerConfig::Ddpm(config) = config(name) else {
        unreachable!()
    };
    DDPMScheduler::new(config, steps).unwrap_or_else(|e| panic!("{name} N={steps}: {e}"))
}

fn max_abs_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Fails with the step's name unless every element is within `tolerance`.
fn assert_close(what: &str, ours: &ArrayD<f32>, theirs: &ArrayD<f32>, tolerance: f32) {
    let diff = max_abs_diff(ours, theirs);
    assert!(
        diff <= tolerance,
        "{what}: max |unclip − diffusers| = {diff:e} > {tolerance:e}"
    );
}

#[test]
fn every_diffusers_key_has_a_field() {
    let r = reference();
    let rust = serde_json::to_value(DDPMSchedulerConfig::default()).unwrap();
    let rust_keys: Vec<&String> = rust.as_object().unwrap().keys().collect();
    for key in &rust_keys {
        assert!(r.init_keys.contains(key), "{key} is not a diffusers key");
    }
    let missing: Vec<&String> = r
        .init_keys
        .iter()
        .filter(|k| !rust_keys.contains(k))
        .collect();
    assert!(
        missing.is_empty(),
        "diffusers keys without a field: {missing:?}"
    );
}

#[test]
fn karlo_configs_convert_as_diffusers_from_config() {
    // DDPMScheduler.from_config(UnCLIPScheduler config): the keys the two classes share carry
    // over, the rest take DDPM's defaults.
    for stage in ["decoder", "prior"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tiny-karlo")
            .join(format!("{stage}_scheduler/scheduler_config.json"));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let converted = SchedulerConfig::from_json(&json)
            .unwrap()
            .to_kind(SchedulerKind::Ddpm)
            .unwrap();
        let expected = config(&format!("karlo_{stage}"));
        assert_eq!(converted, expected, "{stage}");
    }
}

#[test]
fn alphas_cumprod_match_bit_for_bit() {
    for (name, expected) in &reference().alphas_cumprod {
        let ours = ddpm(name, 10).alphas_cumprod().to_vec();
        let theirs: Vec<f32> = expected.iter().map(|&v| v as f32).collect();
        assert_eq!(ours, theirs, "{name}");
    }
}

#[test]
fn timesteps_match_or_are_refused() {
    for (name, counts) in &reference().timesteps {
        for (n, expected) in counts {
            let n: usize = n.parse().unwrap();
            let SchedulerConfig::Ddpm(config) = config(name) else {
                unreachable!()
            };
            // diffusers lists timesteps ≥ T for leading + steps_offset at N = T: unclip refuses them
            let usable = expected.iter().all(|&t| (0..1000).contains(&t));
            match DDPMScheduler::new(config, n) {
                Ok(s) => {
                    assert!(
                        usable,
                        "{name} N={n}: diffusers' list {expected:?} is not usable"
                    );
                    assert_eq!(s.timesteps(), expected.as_slice(), "{name} N={n}");
                }
                Err(e) => assert!(
                    !usable,
                    "{name} N={n}: refused ({e}) but diffusers' list is usable"
                ),
            }
        }
    }
}

#[test]
fn single_steps_match_diffusers() {
    for case in &reference().steps {
        let what = format!(
            "{} N={} step {} (t={})",
            case.config, case.num_inference_steps, case.step_index, case.timestep
        );
        let mut scheduler = ddpm(&case.config, case.num_inference_steps);
        assert_eq!(
            scheduler.timesteps()[case.step_index],
            case.timestep,
            "{what}"
        );
        let recorded: Vec<ArrayD<f32>> = case.noise.iter().map(Tensor::array).collect();
        // diffusers draws exactly when t > 0
        assert_eq!(recorded.len(), usize::from(case.timestep > 0), "{what}");
        let mut noise = RecordedNoise::from_arrays(recorded);
        let prev = scheduler
            .step(
                case.step_index,
                case.model_output.array().view(),
                case.sample.array().view(),
                &mut noise,
            )
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_close(&what, &prev, &case.prev_sample.array(), STEP_TOLERANCE);
        assert!(
            noise.randn(&[1]).is_err(),
            "{what}: a recorded draw was not used"
        );
    }
}

fn synthetic_model(sample: &ArrayD<f32>, timestep: i64) -> ArrayD<f32> {
    let bias = (timestep as f64 / 100.0).sin() as f32;
    sample.mapv(|x| 0.9 * x + 0.1 * bias)
}

/// `ddpm_output` of the fixture script: the learned variance in a second half of channels.
fn with_variance(
    variance_type: DdpmVarianceType,
    output: ArrayD<f32>,
    sample: &ArrayD<f32>,
) -> ArrayD<f32> {
    let second = match variance_type {
        DdpmVarianceType::LearnedRange => sample.mapv(f32::tanh),
        DdpmVarianceType::Learned => sample.mapv(|x| 0.01 * (1.0 / (1.0 + (-x).exp()))),
        _ => return output,
    };
    concatenate(Axis(1), &[output.view(), second.view()]).unwrap()
}

#[test]
fn loops_match_diffusers() {
    for case in &reference().loops {
        let what = format!("{} N={}", case.config, case.num_inference_steps);
        let mut scheduler = ddpm(&case.config, case.num_inference_steps);
        let variance_type = scheduler.config().variance_type;
        let mut noise = RecordedNoise::from_arrays(case.noise.iter().map(Tensor::array).collect());
        let mut sample = case.start.array();
        let timesteps = scheduler.timesteps().to_vec();
        for (i, &t) in timesteps.iter().enumerate() {
            let output = with_variance(variance_type, synthetic_model(&sample, t), &sample);
            sample = scheduler
                .step(i, output.view(), sample.view(), &mut noise)
                .unwrap_or_else(|e| panic!("{what} step {i}: {e}"));
        }
        let expected = case.end.array();
        let worst = sample
            .iter()
            .zip(expected.iter())
            .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
            .fold(0.0, f32::max);
        assert!(
            worst <= LOOP_TOLERANCE,
            "{what}: relative difference {worst:e}"
        );
        assert!(
            noise.randn(&[1]).is_err(),
            "{what}: a recorded draw was not used"
        );
    }
}

#[test]
fn add_noise_matches_diffusers() {
    let scheduler = ddpm("kandinsky", 25);
    for case in &reference().add_noise {
        let noisy = scheduler
            .add_noise(
                case.original.array().view(),
                case.noise.array().view(),
                case.timestep,
            )
            .unwrap();
        assert_close(
            &format!("add_noise t={}", case.timestep),
            &noisy,
            &case.noisy.array(),
            STEP_TOLERANCE,
        );
    }
    let err = scheduler
        .add_noise(
            ArrayD::zeros(IxDyn(&[1, 4])).view(),
            ArrayD::zeros(IxDyn(&[1, 4])).view(),
            1000,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("1000"), "{err}");
}

#[test]
fn learned_variance_needs_the_second_half() {
    let mut scheduler = ddpm("kandinsky", 25);
    let sample = ArrayD::<f32>::zeros(IxDyn(&[1, 4, 2, 2]));
    let mut noise = RecordedNoise::from_arrays(vec![ArrayD::zeros(IxDyn(&[1, 4, 2, 2]))]);
    let err = scheduler
        .step(0, sample.view(), sample.view(), &mut noise)
        .unwrap_err()
        .to_string();
    assert!(err.contains("learned_range"), "{err}");
}
