//! DDIM (with η), DDIM inversion and DPM-Solver++ against diffusers 0.42.1: config conversions,
//! tables and timesteps bit for bit, single steps on fixed tensors (DDIM's noise replayed), full
//! loops of a synthetic model that prove DPM-Solver++'s multistep state and `lower_order_final`,
//! DDIM round trips, every step count of every spacing, and the laws the schedules keep.
//! Fixture: `tests/fixtures/schedulers/solvers_reference.json`, written by
//! `export/scheduler_reference.py` (see `write_solvers_reference` there).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use ndarray::{concatenate, ArrayD, Axis, IxDyn};
use serde::Deserialize;
use unclip::noise::{NoiseSource, RecordedNoise};
use unclip::schedulers::{
    scheduler_from_config, BetaSchedule, DDIMInverseScheduler, DDIMInverseSchedulerConfig,
    DDIMScheduler, DDIMSchedulerConfig, DPMSolverMultistepScheduler,
    DPMSolverMultistepSchedulerConfig, FinalSigmasType, Scheduler, SchedulerConfig, SchedulerKind,
    TimestepSpacing, VarianceType,
};
use unclip::Error;

/// Largest absolute difference allowed between one Rust step and diffusers' step, as in
/// `tests/schedulers.rs`: the per-step coefficients are f32 0-d tensor arithmetic in diffusers'
/// order, so what remains is torch's `log`/`exp`/`** 0.5` on 0-d tensors against Rust's libm
/// (≤ 1 ulp in a coefficient, ~1e-7 relative in the output on values of order one).
const STEP_TOLERANCE: f32 = 1e-6;

/// Largest difference allowed along a full loop, relative to max(1, |diffusers' value|). A
/// coefficient 1 ulp off in one step is carried into the later ones (and DPM-Solver++'s second
/// order scales the difference of two predictions by 1/r₀), so the loops drift a little further
/// than one step: measured ≤ 7e-7 over every recorded loop (25 steps at most; see the
/// `eprintln!`s of `loops_match_diffusers` with `-- --nocapture`), allowed 2e-6.
const LOOP_TOLERANCE: f32 = 2e-6;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/schedulers/solvers_reference.json"
);
const UNCLIP_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/schedulers/unclip_reference.json"
);

#[derive(Deserialize)]
struct Reference {
    alphas_cumprod: BTreeMap<String, Vec<f64>>,
    configs: BTreeMap<String, serde_json::Value>,
    conversions: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    python_built_unclip_to_ddim: serde_json::Value,
    init_keys: BTreeMap<String, Vec<String>>,
    timesteps: BTreeMap<String, BTreeMap<String, TimestepEntry>>,
    rejected: BTreeMap<String, BTreeMap<String, String>>,
    sigmas: BTreeMap<String, BTreeMap<String, Vec<f64>>>,
    steps: Vec<StepCase>,
    loops: Vec<LoopCase>,
    round_trips: Vec<RoundTrip>,
    sweeps: Vec<Sweep>,
    facts: Facts,
}

#[derive(Deserialize)]
struct TimestepEntry {
    usable: bool,
    len: usize,
    timesteps: Option<Vec<i64>>,
}

#[derive(Deserialize)]
struct StepCase {
    class: String,
    config: String,
    num_inference_steps: usize,
    step_index: usize,
    timestep: i64,
    eta: Option<f32>,
    model_output: Tensor,
    sample: Tensor,
    noise: Option<Tensor>,
    prev_sample: Tensor,
}

#[derive(Deserialize)]
struct LoopCase {
    class: String,
    config: String,
    num_inference_steps: usize,
    eta: Option<f32>,
    timesteps: Vec<i64>,
    start: Tensor,
    noise: Vec<Tensor>,
    samples: Vec<Tensor>,
}

#[derive(Deserialize)]
struct RoundTrip {
    inverse_config: String,
    ddim_config: String,
    num_inference_steps: usize,
    x0: Tensor,
    inverted: Tensor,
    reconstructed: Tensor,
}

#[derive(Deserialize)]
struct Sweep {
    class: String,
    config: serde_json::Value,
    hash: u64,
    usable: usize,
    unusable: BTreeMap<String, String>,
    rejected: Vec<Rejection>,
}

#[derive(Deserialize)]
struct Rejection {
    message: String,
    n: Vec<usize>,
}

#[derive(Deserialize)]
struct Facts {
    inverse_sample_prediction_first_step_finite: bool,
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

/// `UnCLIPScheduler.alphas_cumprod` from the other fixture: diffusers' cosine table, which the
/// export script asserts equal for all three classes.
fn cosine_alphas_cumprod() -> Vec<f32> {
    #[derive(Deserialize)]
    struct UnclipReference {
        alphas_cumprod: Vec<f64>,
    }
    let text = std::fs::read_to_string(UNCLIP_FIXTURE).expect("unclip fixture");
    let parsed: UnclipReference = serde_json::from_str(&text).expect("unclip fixture parses");
    f32s(&parsed.alphas_cumprod)
}

/// Max |actual − expected| / max(1, |expected|) (`relative = true`) or max |actual − expected|;
/// asserts it is within `tolerance` and returns it. NaN counts as a failure.
fn assert_close(
    actual: &ArrayD<f32>,
    expected: &ArrayD<f32>,
    tolerance: f32,
    relative: bool,
    what: &str,
) -> f32 {
    assert_eq!(actual.shape(), expected.shape(), "{what}: shape");
    let max_diff = actual
        .iter()
        .zip(expected.iter())
        .map(|(a, e)| {
            let scale = if relative { e.abs().max(1.0) } else { 1.0 };
            (a - e).abs() / scale
        })
        .fold(0.0f32, |m, d| if d.is_nan() || d > m { d } else { m });
    assert!(
        max_diff <= tolerance,
        "{what}: max |Δ| = {max_diff:e} > {tolerance:e}"
    );
    max_diff
}

/// A noise source that counts draws.
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

/// A noise source for schedulers that must not draw.
struct NoNoise;

impl NoiseSource for NoNoise {
    fn randn(&mut self, shape: &[usize]) -> unclip::Result<ArrayD<f32>> {
        panic!("this step must not draw noise (asked for {shape:?})")
    }
}

fn config(name: &str) -> SchedulerConfig {
    SchedulerConfig::from_json(&reference().configs[name]).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The fixture's config `name`, with DDIM's η when the case has one.
fn build(name: &str, eta: Option<f32>, n: usize) -> Box<dyn Scheduler> {
    let mut config = config(name);
    if let Some(eta) = eta {
        config = config.with_eta(eta).unwrap();
    }
    config
        .build(n)
        .unwrap_or_else(|e| panic!("{name} N={n}: {e}"))
}

/// The loops' stand-in for a network, as `synthetic_model` of the export script:
/// `0.9·x + 0.1·f32(sin(t/100))` in f32 (Python's `math.sin` and Rust's `f64::sin` are both libm).
fn synthetic_model(sample: &ArrayD<f32>, timestep: i64) -> ArrayD<f32> {
    let bias = (timestep as f64 / 100.0).sin() as f32;
    sample.mapv(|x| 0.9 * x + 0.1 * bias)
}

/// Karlo's decoder emits `[ε, learned variance]`: for decoder configs every scheduler gets the
/// 6-channel output here (diffusers' DDIM got the 3 channels, its DPM-Solver++ the 6), proving the
/// split convention of `schedulers/mod.rs` on every step.
fn with_variance_channels(config: &str, output: ArrayD<f32>, sample: &ArrayD<f32>) -> ArrayD<f32> {
    if config.contains("decoder") {
        concatenate(Axis(1), &[output.view(), sample.mapv(f32::tanh).view()]).unwrap()
    } else {
        output
    }
}

fn karlo_config_json(stage: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny-karlo")
        .join(format!("{stage}_scheduler"))
        .join("scheduler_config.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).expect("scheduler_config.json parses")
}

fn kind_of_class(class: &str) -> SchedulerKind {
    match class {
        "ddim" => SchedulerKind::Ddim,
        "ddim_inverse" => SchedulerKind::DdimInverse,
        "dpm++" => SchedulerKind::DpmSolverPP,
        other => panic!("unknown class {other}"),
    }
}

fn invalid_reason<T>(result: unclip::Result<T>) -> String {
    match result {
        Err(Error::InvalidArgument { name, reason }) => format!("{name}: {reason}"),
        Err(other) => panic!("expected InvalidArgument, got {other}"),
        Ok(_) => panic!("expected an error"),
    }
}

// ---- configs ------------------------------------------------------------------------------------

#[test]
fn karlo_conversions_match_diffusers_from_config() {
    let r = reference();
    for (stage, entry) in &r.conversions {
        let unclip = SchedulerConfig::from_json(&entry["unclip"]).unwrap();
        assert_eq!(unclip.kind(), SchedulerKind::UnCLIP);
        for (class, expected) in entry.iter().filter(|(class, _)| *class != "unclip") {
            let converted = unclip.to_kind(kind_of_class(class)).unwrap();
            let expected = SchedulerConfig::from_json(expected).unwrap();
            assert_eq!(converted, expected, "{stage} → {class}");
        }
    }
    // what carries over, spelled out
    let decoder = SchedulerConfig::from_json(&karlo_config_json("decoder")).unwrap();
    let SchedulerConfig::Ddim(ddim) = decoder.to_kind(SchedulerKind::Ddim).unwrap() else {
        panic!("not DDIM")
    };
    assert_eq!(ddim.beta_schedule, BetaSchedule::SquaredcosCapV2);
    assert!(ddim.clip_sample);
    assert_eq!(ddim.timestep_spacing, TimestepSpacing::Leading);
    assert_eq!(ddim.eta, 0.0);
    let SchedulerConfig::DpmSolverMultistep(dpm) =
        decoder.to_kind(SchedulerKind::DpmSolverPP).unwrap()
    else {
        panic!("not DPM-Solver++")
    };
    assert_eq!(dpm.variance_type.as_deref(), Some("learned_range"));
    assert_eq!(dpm.timestep_spacing, TimestepSpacing::Linspace);
    assert!(!r.init_keys["dpm++"].contains(&"clip_sample".to_string()));
}

#[test]
fn python_built_configs_lose_their_default_keys_in_diffusers() {
    // documented departure of `to_kind`: diffusers drops keys a Python-built config left at
    // their defaults, so DDIM gets linear betas; unclip converts as from a complete JSON file
    let python_built = &reference().python_built_unclip_to_ddim;
    assert_eq!(python_built["beta_schedule"], "linear");
    let decoder = SchedulerConfig::from_json(&karlo_config_json("decoder")).unwrap();
    let SchedulerConfig::Ddim(ddim) = decoder.to_kind(SchedulerKind::Ddim).unwrap() else {
        panic!("not DDIM")
    };
    assert_eq!(ddim.beta_schedule, BetaSchedule::SquaredcosCapV2);
}

#[test]
fn config_fields_are_diffusers_init_keys() {
    let r = reference();
    let keys = |value: serde_json::Value| -> Vec<String> {
        value.as_object().unwrap().keys().cloned().collect()
    };
    for (class, rust_keys, extension, omitted) in [
        (
            "ddim",
            keys(serde_json::to_value(DDIMSchedulerConfig::default()).unwrap()),
            &["eta"][..],
            &[][..],
        ),
        (
            "ddim_inverse",
            keys(serde_json::to_value(DDIMInverseSchedulerConfig::default()).unwrap()),
            &[][..],
            &[][..],
        ),
        (
            "dpm++",
            keys(serde_json::to_value(DPMSolverMultistepSchedulerConfig::default()).unwrap()),
            &[][..],
            // flow matching only: no effect without use_flow_sigmas (rejected) or a `mu`
            &["flow_shift", "time_shift_type", "use_dynamic_shifting"][..],
        ),
    ] {
        let init = &r.init_keys[class];
        for key in &rust_keys {
            assert!(
                init.contains(key) || extension.contains(&key.as_str()),
                "{class}: {key} is not a diffusers key"
            );
        }
        let missing: Vec<&String> = init.iter().filter(|k| !rust_keys.contains(k)).collect();
        assert_eq!(missing, omitted, "{class}: diffusers keys without a field");
    }
}

#[test]
fn every_karlo_config_converts_to_every_kind_and_builds() {
    for stage in ["prior", "decoder", "super_res"] {
        let json = karlo_config_json(stage);
        let config = SchedulerConfig::from_json(&json).unwrap();
        for kind in SchedulerKind::ALL {
            let converted = config.to_kind(kind).unwrap();
            assert_eq!(converted.kind(), kind);
            assert_eq!(converted.class_name(), kind.class_name());
            let scheduler = converted
                .build(25)
                .unwrap_or_else(|e| panic!("{stage} {kind}: {e}"));
            assert_eq!(scheduler.timesteps().len(), 25);
            assert_eq!(scheduler.init_noise_sigma(), 1.0);
            // and back. Each class keeps only its own keys (diffusers also keeps the others as
            // hidden config entries and would restore them): DPM-Solver++ keeps variance_type but
            // has no clip_sample_range; DDIM has no variance_type.
            let SchedulerConfig::UnCLIP(back) = converted.to_kind(SchedulerKind::UnCLIP).unwrap()
            else {
                panic!("not UnCLIP")
            };
            let SchedulerConfig::UnCLIP(original) = &config else {
                unreachable!()
            };
            let (variance_type, clip_sample_range) = match kind {
                SchedulerKind::UnCLIP => (original.variance_type, original.clip_sample_range),
                SchedulerKind::Ddpm => (original.variance_type, original.clip_sample_range),
                SchedulerKind::DpmSolverPP => (original.variance_type, 1.0),
                SchedulerKind::Ddim | SchedulerKind::DdimInverse => {
                    (VarianceType::FixedSmallLog, original.clip_sample_range)
                }
            };
            assert_eq!(back.variance_type, variance_type, "{stage} {kind}");
            assert_eq!(back.clip_sample_range, clip_sample_range, "{stage} {kind}");
            assert_eq!(back.prediction_type, original.prediction_type);
        }
    }
}

#[test]
fn scheduler_kinds_parse_and_print() {
    for kind in SchedulerKind::ALL {
        assert_eq!(kind.to_string().parse::<SchedulerKind>().unwrap(), kind);
    }
    assert_eq!(
        "dpmsolver++".parse::<SchedulerKind>().unwrap(),
        SchedulerKind::DpmSolverPP
    );
    assert_eq!(
        " DDIM ".parse::<SchedulerKind>().unwrap(),
        SchedulerKind::Ddim
    );
    let reason = invalid_reason("euler".parse::<SchedulerKind>());
    for choice in ["unclip", "ddpm", "ddim", "ddim-inverse", "dpm++"] {
        assert!(reason.contains(choice), "{reason}");
    }
}

#[test]
fn eta_is_checked_and_only_ddim_takes_it() {
    let ddim = config("ddim_decoder");
    let SchedulerConfig::Ddim(with) = ddim.clone().with_eta(0.5).unwrap() else {
        panic!("not DDIM")
    };
    assert_eq!(with.eta, 0.5);
    for bad in [f32::NAN, f32::INFINITY, -0.1, 1.5] {
        assert!(invalid_reason(ddim.clone().with_eta(bad)).starts_with("eta"));
    }
    let dpm = config("dpm_decoder");
    assert_eq!(dpm.clone().with_eta(0.0).unwrap(), dpm);
    assert!(invalid_reason(dpm.with_eta(0.5)).contains("DDIMScheduler"));
    // η set in the JSON is validated at build
    let mut json = reference().configs["ddim_decoder"].clone();
    json["eta"] = (-1.0).into();
    assert!(invalid_reason(scheduler_from_config(&json, 25)).starts_with("eta"));
}

#[test]
fn unsupported_options_are_errors_naming_them() {
    let cases: [(&str, &str, serde_json::Value); 12] = [
        ("ddim_decoder", "thresholding", true.into()),
        ("ddim_decoder", "rescale_betas_zero_snr", true.into()),
        (
            "ddim_decoder",
            "trained_betas",
            serde_json::json!([0.1, 0.2]),
        ),
        ("inverse_decoder", "timestep_spacing", "linspace".into()),
        ("inverse_decoder", "rescale_betas_zero_snr", true.into()),
        ("dpm_decoder", "use_karras_sigmas", true.into()),
        ("dpm_decoder", "use_lu_lambdas", true.into()),
        ("dpm_decoder", "use_flow_sigmas", true.into()),
        ("dpm_decoder", "algorithm_type", "sde-dpmsolver++".into()),
        ("dpm_decoder", "solver_order", 3.into()),
        ("dpm_decoder", "thresholding", true.into()),
        ("dpm_decoder", "prediction_type", "v_prediction".into()),
    ];
    for (name, key, value) in cases {
        let mut json = reference().configs[name].clone();
        json[key] = value.clone();
        let reason = invalid_reason(scheduler_from_config(&json, 25));
        let value_text = value
            .as_str()
            .map(str::to_string)
            .unwrap_or(value.to_string());
        assert!(
            reason.contains(key) || reason.contains(&value_text),
            "{name} {key}={value}: {reason}"
        );
    }
}

// ---- tables and timesteps: exact ------------------------------------------------------------

#[test]
fn alphas_cumprod_are_bit_equal() {
    let r = reference();
    let cosine = cosine_alphas_cumprod();
    for name in r.configs.keys() {
        let scheduler_config = config(name);
        let (schedule, actual) = match &scheduler_config {
            SchedulerConfig::Ddim(c) => (
                c.beta_schedule,
                DDIMScheduler::new(c.clone(), 5)
                    .unwrap()
                    .alphas_cumprod()
                    .to_vec(),
            ),
            SchedulerConfig::DdimInverse(c) => (
                c.beta_schedule,
                DDIMInverseScheduler::new(c.clone(), 5)
                    .unwrap()
                    .alphas_cumprod()
                    .to_vec(),
            ),
            SchedulerConfig::DpmSolverMultistep(c) => (
                c.beta_schedule,
                DPMSolverMultistepScheduler::new(c.clone(), 5)
                    .unwrap()
                    .alphas_cumprod()
                    .to_vec(),
            ),
            other => panic!("{name}: unexpected {}", other.class_name()),
        };
        let expected = match schedule {
            BetaSchedule::SquaredcosCapV2 => cosine.clone(),
            BetaSchedule::Linear => f32s(&r.alphas_cumprod["linear"]),
            BetaSchedule::ScaledLinear => f32s(&r.alphas_cumprod["scaled_linear"]),
        };
        let mismatches = (0..1000)
            .filter(|&i| actual[i].to_bits() != expected[i].to_bits())
            .count();
        assert_eq!(mismatches, 0, "{name}: {mismatches} entries differ");
    }
}

#[test]
fn timesteps_equal_diffusers_or_are_rejected() {
    let r = reference();
    for (name, counts) in &r.timesteps {
        for (n, entry) in counts {
            let n: usize = n.parse().unwrap();
            let built = config(name).build(n);
            if !entry.usable {
                let reason = invalid_reason(built);
                assert!(
                    reason.contains("num_inference_steps"),
                    "{name} N={n}: {reason}"
                );
                continue;
            }
            let scheduler = built.unwrap_or_else(|e| panic!("{name} N={n}: {e}"));
            assert_eq!(scheduler.timesteps().len(), entry.len, "{name} N={n}");
            if let Some(expected) = &entry.timesteps {
                assert_eq!(scheduler.timesteps(), expected.as_slice(), "{name} N={n}");
            }
        }
    }
    for (name, counts) in &r.rejected {
        for n in counts.keys() {
            let n: usize = n.parse().unwrap();
            invalid_reason(config(name).build(n));
        }
    }
}

/// Distance in units in the last place between two finite f32 of the same sign.
fn ulps(a: f32, b: f32) -> u32 {
    (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
}

#[test]
fn dpm_sigmas_are_within_one_ulp() {
    // `((1 - ac) / ac) ** 0.5`: the division is IEEE in both, but torch's x86 build takes the
    // square root through MKL's vector math, which is not correctly rounded (it differs from
    // the correctly rounded f32 square root in ~20 % of inputs, by 1 ulp); Rust's `sqrt` is exact
    let r = reference();
    assert!(r.sigmas.len() >= 8);
    let (mut exact, mut total) = (0usize, 0usize);
    for (name, counts) in &r.sigmas {
        let SchedulerConfig::DpmSolverMultistep(c) = config(name) else {
            panic!("{name}: not DPM-Solver++")
        };
        for (n, expected) in counts {
            let n: usize = n.parse().unwrap();
            let scheduler = DPMSolverMultistepScheduler::new(c.clone(), n).unwrap();
            let expected = f32s(expected);
            let actual = scheduler.sigmas();
            assert_eq!(actual.len(), expected.len(), "{name} N={n}");
            for (i, (&a, &e)) in actual.iter().zip(&expected).enumerate() {
                assert!(ulps(a, e) <= 1, "{name} N={n} sigma[{i}]: {a} vs {e}");
                exact += usize::from(a == e);
                total += 1;
            }
        }
    }
    eprintln!("sigmas: {exact} of {total} bit-equal, the rest 1 ulp apart");
}

/// The sweeps' hash of the usable timestep lists (`sweep` in the export script):
/// h ← (h·1000003 + v) mod 2⁶¹ − 1 over N, then every t + 2.
fn mix(hash: u64, value: i64) -> u64 {
    const PRIME: u128 = (1 << 61) - 1;
    ((u128::from(hash) * 1_000_003 + value as u128) % PRIME) as u64
}

#[test]
fn every_step_count_matches_diffusers_or_is_a_typed_error() {
    let r = reference();
    assert_eq!(r.sweeps.len(), 15);
    for sweep in &r.sweeps {
        let config = SchedulerConfig::from_json(&sweep.config).unwrap();
        assert_eq!(config.kind(), kind_of_class(&sweep.class));
        let label = format!("{} {}", sweep.class, sweep.config);
        let rejected: Vec<usize> = sweep.rejected.iter().flat_map(|r| r.n.clone()).collect();
        let (mut hash, mut usable) = (0u64, 0usize);
        for n in 1..=1000usize {
            let built = config.build(n);
            if sweep.unusable.contains_key(&n.to_string()) || rejected.contains(&n) {
                let reason = invalid_reason(built);
                assert!(
                    reason.contains("timestep_spacing"),
                    "{label} N={n}: {reason}"
                );
                continue;
            }
            let scheduler = built.unwrap_or_else(|e| panic!("{label} N={n}: {e}"));
            usable += 1;
            hash = mix(hash, n as i64);
            for &t in scheduler.timesteps() {
                hash = mix(hash, t + 2);
            }
        }
        assert_eq!(usable, sweep.usable, "{label}");
        assert_eq!(hash, sweep.hash, "{label}: timestep lists differ");
        for rejection in &sweep.rejected {
            eprintln!(
                "{label}: diffusers rejects {} N: {}",
                rejection.n.len(),
                rejection.message
            );
        }
    }
}

// ---- single steps against diffusers -----------------------------------------------------------

#[test]
fn steps_match_diffusers() {
    let r = reference();
    let mut overall = BTreeMap::<&str, f32>::new();
    for case in &r.steps {
        let label = format!(
            "{} N={} i={} t={} eta={:?}",
            case.config, case.num_inference_steps, case.step_index, case.timestep, case.eta
        );
        let mut scheduler = build(&case.config, case.eta, case.num_inference_steps);
        assert_eq!(
            scheduler.timesteps()[case.step_index],
            case.timestep,
            "{label}"
        );
        let model_output = case.model_output.array();
        let sample = case.sample.array();
        let recorded: Vec<ArrayD<f32>> = case.noise.iter().map(Tensor::array).collect();
        let mut noise = CountingNoise {
            inner: RecordedNoise::from_arrays(recorded.clone()),
            draws: 0,
        };
        let actual = scheduler
            .step(
                case.step_index,
                model_output.view(),
                sample.view(),
                &mut noise,
            )
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(noise.draws, recorded.len(), "{label}: draws");
        let diff = assert_close(
            &actual,
            &case.prev_sample.array(),
            STEP_TOLERANCE,
            false,
            &label,
        );
        eprintln!("{label}: max |Δ| = {diff:e}");
        let worst = overall.entry(case.class.as_str()).or_default();
        *worst = worst.max(diff);

        // the learned-variance channels change nothing (diffusers' DDIM could not take them)
        if case.config.contains("decoder") && model_output.shape()[1] == sample.shape()[1] {
            let mut again = build(&case.config, case.eta, case.num_inference_steps);
            let widened = with_variance_channels(&case.config, model_output.clone(), &sample);
            let mut noise = RecordedNoise::from_arrays(recorded);
            let split = again
                .step(case.step_index, widened.view(), sample.view(), &mut noise)
                .unwrap();
            assert_eq!(split, actual, "{label}: with variance channels");
        }
    }
    eprintln!("single steps, max |Δ| per class: {overall:?} (tolerance {STEP_TOLERANCE:e})");
}

// ---- full loops: the multistep state and lower_order_final -------------------------------------

/// Runs `config` for `n` steps with the synthetic model from `start`, returning every sample.
fn run_loop(
    config: &str,
    eta: Option<f32>,
    n: usize,
    start: ArrayD<f32>,
    noise: &mut dyn NoiseSource,
) -> Vec<ArrayD<f32>> {
    let mut scheduler = build(config, eta, n);
    let timesteps = scheduler.timesteps().to_vec();
    let mut sample = start;
    let mut samples = Vec::new();
    for (i, &t) in timesteps.iter().enumerate() {
        let output = with_variance_channels(config, synthetic_model(&sample, t), &sample);
        sample = scheduler
            .step(i, output.view(), sample.view(), noise)
            .unwrap_or_else(|e| panic!("{config} N={n} step {i}: {e}"));
        samples.push(sample.clone());
    }
    samples
}

#[test]
fn loops_match_diffusers() {
    let r = reference();
    let mut overall = BTreeMap::<&str, f32>::new();
    for case in &r.loops {
        let label = format!(
            "{} N={} eta={:?}",
            case.config, case.num_inference_steps, case.eta
        );
        let scheduler = build(&case.config, case.eta, case.num_inference_steps);
        assert_eq!(scheduler.timesteps(), case.timesteps.as_slice(), "{label}");
        let recorded: Vec<ArrayD<f32>> = case.noise.iter().map(Tensor::array).collect();
        let mut noise = CountingNoise {
            inner: RecordedNoise::from_arrays(recorded),
            draws: 0,
        };
        let samples = run_loop(
            &case.config,
            case.eta,
            case.num_inference_steps,
            case.start.array(),
            &mut noise,
        );
        assert_eq!(noise.draws, case.noise.len(), "{label}: draws");
        assert_eq!(samples.len(), case.samples.len(), "{label}");
        let mut worst = 0.0f32;
        for (i, (actual, expected)) in samples.iter().zip(&case.samples).enumerate() {
            let what = format!("{label} after step {i}");
            worst = worst.max(assert_close(
                actual,
                &expected.array(),
                LOOP_TOLERANCE,
                true,
                &what,
            ));
        }
        eprintln!("{label}: max relative |Δ| over the loop = {worst:e}");
        let class_worst = overall.entry(case.class.as_str()).or_default();
        *class_worst = class_worst.max(worst);
    }
    eprintln!("loops, max relative |Δ| per class: {overall:?} (tolerance {LOOP_TOLERANCE:e})");
}

#[test]
fn round_trips_match_diffusers() {
    for case in &reference().round_trips {
        let label = format!(
            "{} → {} N={}",
            case.inverse_config, case.ddim_config, case.num_inference_steps
        );
        let n = case.num_inference_steps;
        let inverted = run_loop(&case.inverse_config, None, n, case.x0.array(), &mut NoNoise);
        let inverted = inverted.last().unwrap().clone();
        let d1 = assert_close(
            &inverted,
            &case.inverted.array(),
            LOOP_TOLERANCE,
            true,
            &label,
        );
        let back = run_loop(&case.ddim_config, Some(0.0), n, inverted, &mut NoNoise);
        let d2 = assert_close(
            back.last().unwrap(),
            &case.reconstructed.array(),
            LOOP_TOLERANCE,
            true,
            &label,
        );
        eprintln!("{label}: inverted {d1:e}, reconstructed {d2:e}");
    }
}

#[test]
fn inverting_a_sample_prediction_from_alpha_one_is_not_finite_as_in_diffusers() {
    assert!(
        !reference()
            .facts
            .inverse_sample_prediction_first_step_finite
    );
    let mut scheduler = build("inverse_prior", None, 5);
    let x = ArrayD::from_elem(IxDyn(&[2, 4]), 0.5f32);
    let t = scheduler.timesteps()[0];
    let out = scheduler
        .step(0, synthetic_model(&x, t).view(), x.view(), &mut NoNoise)
        .unwrap();
    assert!(out.iter().any(|v| !v.is_finite()));
}

// ---- laws ----------------------------------------------------------------------------------------

/// Every (class, spacing, offset) of this crate for `num_train_timesteps` = `train`.
fn spacing_configs(train: usize) -> Vec<(String, SchedulerConfig)> {
    let mut configs = Vec::new();
    for spacing in ["linspace", "leading", "trailing"] {
        for offset in [0, 1] {
            for (class, extra) in [
                ("DDIMScheduler", serde_json::json!({})),
                ("DDIMInverseScheduler", serde_json::json!({})),
                ("DPMSolverMultistepScheduler", serde_json::json!({})),
                (
                    "DPMSolverMultistepScheduler",
                    serde_json::json!({"lambda_min_clipped": -5.1}),
                ),
            ] {
                let mut json = serde_json::json!({
                    "_class_name": class,
                    "num_train_timesteps": train,
                    "beta_schedule": "squaredcos_cap_v2",
                    "timestep_spacing": spacing,
                    "steps_offset": offset,
                });
                for (key, value) in extra.as_object().unwrap() {
                    json[key] = value.clone();
                }
                configs.push((json.to_string(), SchedulerConfig::from_json(&json).unwrap()));
            }
        }
    }
    configs
}

#[test]
fn timesteps_are_strictly_monotone_and_trained_or_a_typed_error() {
    for train in [1000usize, 50, 7] {
        for (label, config) in spacing_configs(train) {
            let increasing = config.kind() == SchedulerKind::DdimInverse;
            for n in 1..=train {
                let scheduler = match config.build(n) {
                    Ok(scheduler) => scheduler,
                    Err(Error::InvalidArgument { name, reason }) => {
                        assert!(
                            ["num_inference_steps", "timestep_spacing"].contains(&name),
                            "{label} N={n}: {name}: {reason}"
                        );
                        // a suggested step count works
                        if let Some(rest) = reason.split("; ").nth(1) {
                            let suggested: usize = rest.split(' ').next().unwrap().parse().unwrap();
                            assert!(config.build(suggested).is_ok(), "{label}: {reason}");
                        }
                        continue;
                    }
                    Err(other) => panic!("{label} N={n}: {other}"),
                };
                let t = scheduler.timesteps();
                assert!(!t.is_empty(), "{label} N={n}");
                assert!(t.len() <= n, "{label} N={n}");
                assert!(
                    t.iter().all(|&t| (0..train as i64).contains(&t)),
                    "{label} N={n}: {t:?}"
                );
                assert!(
                    t.windows(2)
                        .all(|w| if increasing { w[0] < w[1] } else { w[0] > w[1] }),
                    "{label} N={n}: {t:?}"
                );
            }
            assert!(config.build(0).is_err(), "{label} N=0");
            assert!(config.build(train + 1).is_err(), "{label} N={}", train + 1);
            assert!(config.build(usize::MAX).is_err(), "{label} N=usize::MAX");
        }
    }
}

#[test]
fn trailing_overshoot_is_explained() {
    let reason = invalid_reason(config("ddim_decoder_trailing").build(61));
    assert!(
        reason.contains("62 timesteps") && reason.contains("60 or 62"),
        "{reason}"
    );
}

#[test]
fn ddim_then_inversion_on_the_same_model_is_deterministic() {
    let x0 = ArrayD::from_shape_fn(IxDyn(&[1, 3, 2, 2]), |ix| {
        (ix[1] * 4 + ix[2] * 2 + ix[3]) as f32 / 12.0 - 0.4
    });
    for (inverse, ddim) in [
        ("inverse_super_res", "ddim_super_res"),
        ("inverse_decoder_trailing", "ddim_decoder_trailing"),
        ("inverse_linear", "ddim_linear"),
    ] {
        // steps_offset 1 (the linear configs) puts the 1000th timestep at T
        let largest = if inverse == "inverse_linear" {
            999
        } else {
            1000
        };
        for n in [1, 2, 5, 25, largest] {
            let round_trip = || {
                let inverted = run_loop(inverse, None, n, x0.clone(), &mut NoNoise);
                let noise = inverted.last().unwrap().clone();
                let back = run_loop(ddim, Some(0.0), n, noise.clone(), &mut NoNoise);
                (noise, back.last().unwrap().clone())
            };
            let (first, second) = (round_trip(), round_trip());
            assert_eq!(first, second, "{inverse} N={n}");
            assert!(first.0.iter().chain(first.1.iter()).all(|v| v.is_finite()));
        }
    }
}

#[test]
fn ddim_inversion_with_leading_spacing_mirrors_ddim_levels() {
    for n in [1, 2, 7, 25, 1000] {
        let SchedulerConfig::Ddim(ddim_config) = config("ddim_super_res") else {
            unreachable!()
        };
        let SchedulerConfig::DdimInverse(inverse_config) = config("inverse_super_res") else {
            unreachable!()
        };
        let ddim = DDIMScheduler::new(ddim_config, n).unwrap();
        let inverse = DDIMInverseScheduler::new(inverse_config, n).unwrap();
        let mut forward: Vec<i64> = inverse.timesteps().to_vec();
        forward.reverse();
        assert_eq!(forward, ddim.timesteps(), "N={n}");
        for i in 0..n {
            // DDIM step i goes t → prev; the inverse step n−1−i goes prev → t
            assert_eq!(
                inverse.source_timestep(n - 1 - i).unwrap(),
                ddim.prev_timestep(i).unwrap(),
                "N={n} i={i}"
            );
        }
    }
}

#[test]
fn ddim_with_eta_draws_on_every_step_including_the_last() {
    for (eta, expected_draws) in [(0.0, 0usize), (0.3, 1)] {
        let mut scheduler = build("ddim_super_res", Some(eta), 7);
        let mut sample = ArrayD::<f32>::zeros(IxDyn(&[1, 3, 2, 2]));
        for i in 0..7 {
            let t = scheduler.timesteps()[i];
            let recorded = vec![ArrayD::from_elem(IxDyn(&[1, 3, 2, 2]), 1.0f32)];
            let mut noise = CountingNoise {
                inner: RecordedNoise::from_arrays(recorded),
                draws: 0,
            };
            let output = synthetic_model(&sample, t);
            sample = scheduler
                .step(i, output.view(), sample.view(), &mut noise)
                .unwrap();
            assert_eq!(noise.draws, expected_draws, "eta {eta} step {i}");
        }
    }
}

#[test]
fn dpm_solver_orders_follow_diffusers() {
    let SchedulerConfig::DpmSolverMultistep(base) = config("dpm_super_res") else {
        unreachable!()
    };
    let orders = |config: DPMSolverMultistepSchedulerConfig, n: usize| -> Vec<usize> {
        let scheduler = DPMSolverMultistepScheduler::new(config, n).unwrap();
        (0..n)
            .map(|i| if scheduler.is_first_order(i) { 1 } else { 2 })
            .collect()
    };
    // final sigma zero: the last step is always first order (it returns x̂₀)
    assert_eq!(orders(base.clone(), 5), [1, 2, 2, 2, 1]);
    assert_eq!(orders(base.clone(), 25).last(), Some(&1));
    // sigma_min: lower_order_final only below 15 steps
    let sigma_min = DPMSolverMultistepSchedulerConfig {
        final_sigmas_type: FinalSigmasType::SigmaMin,
        ..base.clone()
    };
    assert_eq!(orders(sigma_min.clone(), 5), [1, 2, 2, 2, 1]);
    assert_eq!(orders(sigma_min.clone(), 25).last(), Some(&2));
    let no_lower = DPMSolverMultistepSchedulerConfig {
        lower_order_final: false,
        ..sigma_min.clone()
    };
    assert_eq!(orders(no_lower.clone(), 5), [1, 2, 2, 2, 2]);
    let euler = DPMSolverMultistepSchedulerConfig {
        euler_at_final: true,
        ..no_lower
    };
    assert_eq!(orders(euler, 5), [1, 2, 2, 2, 1]);
    let order1 = DPMSolverMultistepSchedulerConfig {
        solver_order: 1,
        ..base
    };
    assert_eq!(orders(order1, 5), [1; 5]);
}

#[test]
fn dpm_steps_come_in_order_and_zero_restarts() {
    let mut scheduler = build("dpm_super_res", None, 5);
    let x = ArrayD::from_shape_fn(IxDyn(&[1, 3, 2, 2]), |ix| ix[1] as f32 * 0.3 - 0.2);
    let out = |scheduler: &mut Box<dyn Scheduler>, i: usize, x: &ArrayD<f32>| {
        let t = scheduler.timesteps()[i];
        scheduler.step(i, synthetic_model(x, t).view(), x.view(), &mut NoNoise)
    };
    let first = out(&mut scheduler, 0, &x).unwrap();
    let second = out(&mut scheduler, 1, &first).unwrap();
    assert!(invalid_reason(out(&mut scheduler, 3, &second)).contains("expected 2"));
    assert!(invalid_reason(out(&mut scheduler, 1, &second)).contains("expected 2"));
    // restart: the same two steps give the same bits
    assert_eq!(out(&mut scheduler, 0, &x).unwrap(), first);
    assert_eq!(out(&mut scheduler, 1, &first).unwrap(), second);
}

#[test]
fn wrong_shapes_are_typed_errors() {
    let sample = ArrayD::<f32>::zeros(IxDyn(&[1, 3, 4, 4]));
    for name in ["ddim_decoder", "inverse_decoder", "dpm_decoder"] {
        for shape in [[1, 4, 4, 4], [1, 3, 4, 2], [2, 3, 4, 4], [1, 6, 4, 2]] {
            let mut scheduler = build(name, None, 5);
            let output = ArrayD::<f32>::zeros(IxDyn(&shape));
            let result = scheduler.step(0, output.view(), sample.view(), &mut NoNoise);
            assert!(
                matches!(result, Err(Error::Shape { .. })),
                "{name} {shape:?}"
            );
        }
        let flat = ArrayD::<f32>::zeros(IxDyn(&[4]));
        let wide = ArrayD::<f32>::zeros(IxDyn(&[8]));
        let mut scheduler = build(name, None, 5);
        assert!(matches!(
            scheduler.step(0, wide.view(), flat.view(), &mut NoNoise),
            Err(Error::Shape { .. })
        ));
        // a 1-d sample with a matching output is fine
        scheduler
            .step(0, flat.view(), flat.view(), &mut NoNoise)
            .unwrap();
        let mut scheduler = build(name, None, 5);
        assert!(
            invalid_reason(scheduler.step(5, sample.view(), sample.view(), &mut NoNoise))
                .starts_with("step_index")
        );
    }
    // DDIM's noise must have the sample's shape, not be broadcast
    let mut scheduler = build("ddim_super_res", Some(0.5), 5);
    let mut noise = RecordedNoise::from_arrays(vec![ArrayD::zeros(IxDyn(&[1, 3, 4, 1]))]);
    assert!(scheduler
        .step(0, sample.view(), sample.view(), &mut noise)
        .is_err());
}

#[test]
fn schedulers_are_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<DDIMScheduler>();
    assert_send_sync::<DDIMInverseScheduler>();
    assert_send_sync::<DPMSolverMultistepScheduler>();
}
