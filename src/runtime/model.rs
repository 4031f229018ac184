//! One ONNX model in one session, checked against the bundle manifest.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use ndarray::{ArrayD, ArrayViewD, CowArray, IxDyn};
use ort::session::{
    builder::{GraphOptimizationLevel, SessionBuilder},
    RunOptions, Session,
};
use ort::value::{TensorElementType, TensorRef, ValueType};

use super::graph_cache::{self, CachedGraph};
use super::{openvino, ort_error, tensorrt, Device, Precision, Runtime};
use crate::bundle::{Dim, ModelEntry, TensorSpec};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// A tensor fed to a model.
pub enum Input<'a> {
    F32(ArrayViewD<'a, f32>),
    I64(ArrayViewD<'a, i64>),
}

/// A loaded model. `Session::run` needs `&mut`, so the session sits behind a mutex:
/// concurrent callers of one pipeline take turns per model call. In low-memory mode
/// ([`Runtime::is_low_memory`]) the session is created by the first [`Model::run`] after a
/// [`Model::release`] and dropped by the next release.
pub struct Model {
    name: String,
    path: PathBuf,
    runtime: Runtime,
    entry: ModelEntry,
    profile: BatchProfile,
    session: Mutex<Option<Session>>,
    run_nanos: AtomicU64,
    runs: AtomicU64,
    /// Run options that give the CPU arena's free memory back after every run (below), on the
    /// devices where that is measured; `None` elsewhere.
    run_options: Option<RunOptions>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .field("path", &self.path)
            .finish()
    }
}

impl Model {
    /// Creates the session for `path` and checks its inputs and outputs against `entry`; calls
    /// will send batches as `profile` says. In low-memory mode the session is then dropped until
    /// the model first runs.
    pub fn load(
        runtime: &Runtime,
        name: &str,
        path: &Path,
        entry: &ModelEntry,
        profile: BatchProfile,
    ) -> Result<Model> {
        let session = create_session(runtime, name, path, entry, profile)?;
        // ORT's CPU arena keeps a run's activations for the next run of the same session, so every
        // session holds its largest run's memory for the life of the pipeline: at Karlo size the
        // two 256² super-res sessions hold over a GB each, most of the exact mode's peak above
        // its weights. Shrinking after each run hands it back at no measurable cost in time
        // (the next run re-grows it; docs/benchmarks.md). Measured on the CPU device and
        // OpenVINO's CPU; GPU sessions keep ORT's default.
        let run_options = match runtime.device() {
            Device::Cpu | Device::OpenVino { .. } => {
                let mut options = RunOptions::new().map_err(ort_error("creating run options"))?;
                options
                    .set("memory.enable_memory_arena_shrinkage", "cpu:0")
                    .map_err(ort_error("setting arena shrinkage"))?;
                Some(options)
            }
            _ => None,
        };
        Ok(Model {
            name: name.to_string(),
            path: path.to_path_buf(),
            runtime: runtime.clone(),
            entry: entry.clone(),
            profile,
            session: Mutex::new((!runtime.is_low_memory()).then_some(session)),
            run_nanos: AtomicU64::new(0),
            runs: AtomicU64::new(0),
            run_options,
        })
    }

    /// Low-memory mode: drops the session (the next run creates it again). Otherwise nothing.
    pub fn release(&self) {
        if self.runtime.is_low_memory() && self.lock().take().is_some() {
            tracing::debug!(model = %self.name, "released the session");
        }
    }

    /// Whether the model has a session now (always, outside low-memory mode).
    pub fn is_loaded(&self) -> bool {
        self.lock().is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Session>> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The model's key in the bundle.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The ONNX file it was loaded from (the model's int8 file at [`Precision::Int8`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Declared inputs.
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.entry.inputs
    }

    /// Declared outputs.
    pub fn outputs(&self) -> &[TensorSpec] {
        &self.entry.outputs
    }

    /// Total seconds spent inside `Session::run` so far.
    pub fn run_seconds(&self) -> f64 {
        self.run_nanos.load(Ordering::Relaxed) as f64 * 1e-9
    }

    /// Number of `Session::run` calls so far.
    pub fn run_count(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// Runs the model on `inputs` (in manifest order) and returns its f32 outputs in manifest
    /// order.
    pub fn run(&self, inputs: &[Input<'_>]) -> Result<Vec<ArrayD<f32>>> {
        if inputs.len() != self.entry.inputs.len() {
            return Err(Error::invalid(
                "model inputs",
                format!(
                    "{} takes {} inputs, got {}",
                    self.name,
                    self.entry.inputs.len(),
                    inputs.len()
                ),
            ));
        }
        let context = || format!("running {}", self.name);
        if let Some(dir) = self.runtime.capture_dir() {
            self.capture(dir, inputs)?;
        }
        // Non-contiguous views are copied once into standard layout; contiguous ones are borrowed.
        let f32s: Vec<Option<CowArray<'_, f32, IxDyn>>> = inputs
            .iter()
            .map(|i| match i {
                Input::F32(a) => Some(a.as_standard_layout()),
                Input::I64(_) => None,
            })
            .collect();
        let i64s: Vec<Option<CowArray<'_, i64, IxDyn>>> = inputs
            .iter()
            .map(|i| match i {
                Input::I64(a) => Some(a.as_standard_layout()),
                Input::F32(_) => None,
            })
            .collect();
        let mut values = Vec::with_capacity(inputs.len());
        for (k, spec) in self.entry.inputs.iter().enumerate() {
            let value: ort::session::SessionInputValue<'_> = match (&f32s[k], &i64s[k]) {
                (Some(a), _) => TensorRef::from_array_view(a.view())
                    .map_err(ort_error(context()))?
                    .into(),
                (_, Some(a)) => TensorRef::from_array_view(a.view())
                    .map_err(ort_error(context()))?
                    .into(),
                _ => unreachable!("every input is f32 or i64"),
            };
            values.push((spec.name.as_str(), value));
        }
        let mut guard = self.lock();
        let session = match &mut *guard {
            Some(session) => session,
            empty => empty.insert(create_session(
                &self.runtime,
                &self.name,
                &self.path,
                &self.entry,
                self.profile,
            )?),
        };
        let started = Instant::now();
        let outputs = match &self.run_options {
            Some(options) => session.run_with_options(values, options),
            None => session.run(values),
        }
        .map_err(ort_error(context()))?;
        let mut result = Vec::with_capacity(self.entry.outputs.len());
        for spec in &self.entry.outputs {
            let value = outputs.get(spec.name.as_str()).ok_or_else(|| Error::Ort {
                context: context(),
                message: format!("output {} missing", spec.name),
            })?;
            let array = value
                .try_extract_array::<f32>()
                .map_err(ort_error(context()))?;
            result.push(array.to_owned());
        }
        drop(outputs);
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.run_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(result)
    }
}

impl Model {
    /// Writes one call's inputs as `.npy` ([`super::RuntimeBuilder::capture_model_inputs`]).
    fn capture(&self, dir: &Path, inputs: &[Input<'_>]) -> Result<()> {
        let call = dir.join(&self.name).join(format!(
            "{}_{:06}",
            std::process::id(),
            self.runs.load(Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&call).map_err(|e| Error::io(&call, e))?;
        for (spec, input) in self.entry.inputs.iter().zip(inputs) {
            let tensor = match input {
                Input::F32(a) => Tensor::F32(a.to_owned()),
                Input::I64(a) => Tensor::I64(a.to_owned()),
            };
            crate::npy::write(&call.join(format!("{}.npy", spec.name)), &tensor)?;
        }
        Ok(())
    }
}

/// Creates the session for `path` on the runtime's device and checks its inputs and outputs
/// against `entry`.
fn create_session(
    runtime: &Runtime,
    name: &str,
    path: &Path,
    entry: &ModelEntry,
    profile: BatchProfile,
) -> Result<Session> {
    let tensorrt = tensorrt::TensorRtOptions {
        fp16: runtime.precision() == Precision::Fp16,
        ..runtime.tensorrt().clone()
    };
    let providers = tensorrt::provider_configs(
        runtime.device(),
        &tensorrt,
        trt_profiles(&entry.inputs, profile),
    );
    let context = format!("creating the session for {name}");
    let mut builder = Session::builder(runtime.environment())
        .map_err(ort_error(context.clone()))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(ort_error(context.clone()))?;
    if !runtime.prepacking() {
        // only when asked: by default the session options stay ONNX Runtime's own
        builder = builder
            .with_prepacking(false)
            .map_err(ort_error(context.clone()))?;
    }
    if let Device::OpenVino { target } = runtime.device() {
        builder = openvino::append_to_session(builder, runtime, target)?;
    } else {
        builder = builder
                .with_execution_providers(tensorrt::dispatches(&providers))
                .map_err(|e| Error::ProviderUnavailable {
                    provider: runtime.device().to_string(),
                    reason: e.to_string(),
                    fix: "check the GPU driver and the CUDA/cuDNN/TensorRT libraries (README \"Running on GPU\")"
                        .into(),
                })?;
    }
    // RuntimeBuilder::build refuses a graph cache on any device but the CPU
    let session = match runtime.graph_cache_dir() {
        Some(dir) => {
            let cached =
                CachedGraph::new(dir, name, entry, ort::info(), graph_cache::cpu_identity());
            commit_cached(builder, path, &cached)?
        }
        None => commit(builder, path)?,
    };
    check_signature(
        path,
        "input",
        session.inputs().iter().map(|o| (o.name(), o.dtype())),
        &entry.inputs,
    )?;
    check_signature(
        path,
        "output",
        session.outputs().iter().map(|o| (o.name(), o.dtype())),
        &entry.outputs,
    )?;
    Ok(session)
}

fn commit(mut builder: SessionBuilder, path: &Path) -> Result<Session> {
    builder
        .commit_from_file(path)
        .map_err(|e| Error::ModelLoad {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// Loads `path`'s optimized graph from the cache, or optimizes `path` and saves the graph there
/// (graph_cache.rs). Only the model itself can fail the load: a cache entry that does not load
/// is removed and rebuilt, a save that fails is a warning.
fn commit_cached(builder: SessionBuilder, path: &Path, cached: &CachedGraph) -> Result<Session> {
    if cached.exists() {
        let loaded = builder
            .clone()
            .with_optimization_level(GraphOptimizationLevel::Disable)
            .map_err(|e| e.to_string())
            .and_then(|mut b| b.commit_from_file(&cached.path).map_err(|e| e.to_string()));
        match loaded {
            Ok(session) => {
                tracing::debug!(graph = %cached.path.display(), "loaded the optimized graph");
                return Ok(session);
            }
            Err(e) => {
                tracing::warn!(graph = %cached.path.display(), error = %e, "the cached optimized graph did not load: optimizing the model again");
                cached.remove();
            }
        }
    }
    let staging = match cached.staging() {
        Ok(staging) => staging,
        Err(e) => {
            tracing::warn!(graph = %cached.path.display(), error = %e, "cannot write the graph cache");
            return commit(builder, path);
        }
    };
    let target = staging.join(cached.file_name());
    let saving = || -> std::result::Result<Session, String> {
        // Saving a graph optimized past ORT_ENABLE_EXTENDED makes ONNX Runtime warn that it may
        // only run on this kind of machine, once per model: expected here (the cache key holds
        // the CPU), so this session logs errors only; its other messages stay at debug level in
        // unclip's own log (UNCLIP_LOG=debug shows the cache's steps).
        let mut saving = builder
            .clone()
            .with_log_level(ort::logging::LogLevel::Error)
            .map_err(|e| e.to_string())?
            .with_optimized_model_path(&target)
            .map_err(|e| e.to_string())?;
        for (key, value) in cached.save_config() {
            saving = saving
                .with_config_entry(key, value)
                .map_err(|e| e.to_string())?;
        }
        saving.commit_from_file(path).map_err(|e| e.to_string())
    };
    match saving() {
        Ok(session) => {
            match cached.publish(&staging) {
                Ok(()) => {
                    tracing::debug!(graph = %cached.path.display(), "saved the optimized graph")
                }
                Err(e) => {
                    tracing::warn!(graph = %cached.path.display(), error = %e, "cannot write the graph cache");
                    let _ = std::fs::remove_dir_all(&staging);
                }
            }
            Ok(session)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            tracing::warn!(model = %path.display(), error = %e, "saving the optimized graph failed: loading without the cache");
            commit(builder, path)
        }
    }
}

fn dtype_name(ty: &ValueType) -> String {
    match ty {
        ValueType::Tensor { ty, .. } => match ty {
            TensorElementType::Float32 => "float32".into(),
            TensorElementType::Float16 => "float16".into(),
            TensorElementType::Int64 => "int64".into(),
            TensorElementType::Bool => "bool".into(),
            other => format!("{other:?}").to_lowercase(),
        },
        other => format!("{other:?}"),
    }
}

fn shape_of(ty: &ValueType) -> Option<Vec<i64>> {
    match ty {
        ValueType::Tensor { shape, .. } => Some(shape.iter().copied().collect()),
        _ => None,
    }
}

fn check_signature<'a>(
    path: &Path,
    kind: &str,
    actual: impl Iterator<Item = (&'a str, &'a ValueType)>,
    declared: &[TensorSpec],
) -> Result<()> {
    let actual: Vec<(&str, &ValueType)> = actual.collect();
    let mismatch = |detail: String| Error::ModelSignature {
        path: path.to_path_buf(),
        detail,
    };
    let actual_names: Vec<&str> = actual.iter().map(|(n, _)| *n).collect();
    let declared_names: Vec<&str> = declared.iter().map(|s| s.name.as_str()).collect();
    if actual_names != declared_names {
        return Err(mismatch(format!(
            "{kind}s are {actual_names:?} in the model, {declared_names:?} in the manifest"
        )));
    }
    for ((name, ty), spec) in actual.iter().zip(declared) {
        let dtype = dtype_name(ty);
        if dtype != spec.dtype {
            return Err(mismatch(format!(
                "{kind} {name} is {dtype} in the model, {} in the manifest",
                spec.dtype
            )));
        }
        if let Some(shape) = shape_of(ty) {
            let fits = shape.len() == spec.shape.len()
                && shape.iter().zip(&spec.shape).all(|(d, s)| match s {
                    Dim::Fixed(n) => *d < 0 || *d as usize == *n,
                    Dim::Symbolic(_) => true,
                });
            if !fits {
                return Err(mismatch(format!(
                    "{kind} {name} has shape {shape:?} in the model, {:?} in the manifest",
                    spec.shape
                )));
            }
        }
    }
    Ok(())
}

/// The sizes a model's symbolic (batch) dimension takes, for providers that build engines per
/// shape (TensorRT's optimization profiles): calls send 1 to `max` rows, most often `opt`. The
/// caller knows its batches (the runtime knows no diffusion); a call beyond `max` fails in
/// TensorRT, so `max` must be the largest batch a call can send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchProfile {
    /// The batch TensorRT tunes for.
    pub opt: usize,
    /// The largest batch a call sends.
    pub max: usize,
}

impl BatchProfile {
    /// Calls of 1 to `max` rows, tuned for `opt` (clamped into 1..=max).
    pub fn new(opt: usize, max: usize) -> Self {
        let max = max.max(1);
        BatchProfile {
            opt: opt.clamp(1, max),
            max,
        }
    }
}

/// TensorRT optimization profiles (min, opt, max): every symbolic dim at 1, `profile.opt` and
/// `profile.max`; `None` when every input is fixed.
fn trt_profiles(inputs: &[TensorSpec], profile: BatchProfile) -> Option<(String, String, String)> {
    if inputs
        .iter()
        .all(|i| i.shape.iter().all(|d| matches!(d, Dim::Fixed(_))))
    {
        return None;
    }
    let render = |dynamic: usize| {
        inputs
            .iter()
            .map(|i| {
                let dims: Vec<String> = i
                    .shape
                    .iter()
                    .map(|d| match d {
                        Dim::Fixed(n) => n.to_string(),
                        Dim::Symbolic(_) => dynamic.to_string(),
                    })
                    .collect();
                format!("{}:{}", i.name, dims.join("x"))
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    Some((render(1), render(profile.opt), render(profile.max)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, shape: Vec<Dim>) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype: "float32".into(),
            shape,
        }
    }

    #[test]
    fn trt_profiles_reach_the_largest_batch_a_call_sends() {
        let inputs = [
            spec(
                "sample",
                vec![
                    Dim::Symbolic("batch".into()),
                    Dim::Fixed(3),
                    Dim::Fixed(64),
                    Dim::Fixed(64),
                ],
            ),
            spec("timestep", vec![Dim::Symbolic("batch".into())]),
        ];
        // a CFG stage at 64 images per call: 128 rows
        let (min, opt, max) = trt_profiles(&inputs, BatchProfile::new(2, 128)).unwrap();
        assert_eq!(min, "sample:1x3x64x64,timestep:1");
        assert_eq!(opt, "sample:2x3x64x64,timestep:2");
        assert_eq!(max, "sample:128x3x64x64,timestep:128");
    }

    #[test]
    fn trt_profiles_clamp_opt_and_skip_fixed_models() {
        let inputs = [spec("x", vec![Dim::Symbolic("b".into()), Dim::Fixed(8)])];
        let (_, opt, max) = trt_profiles(&inputs, BatchProfile::new(4, 1)).unwrap();
        assert_eq!((opt.as_str(), max.as_str()), ("x:1x8", "x:1x8"));
        let fixed = [spec("x", vec![Dim::Fixed(1), Dim::Fixed(8)])];
        assert_eq!(trt_profiles(&fixed, BatchProfile::new(2, 128)), None);
    }
}
