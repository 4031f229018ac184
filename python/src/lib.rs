//! `unclip._unclip`: the Python extension over the core library (PyO3, abi3). The Python package
//! (`python/unclip/__init__.py`) wraps it with PIL images, tqdm progress and diffusers' argument
//! names; this module takes and returns numpy arrays and plain values only.
//!
//! Every model call runs with the GIL released (`Python::detach`); the observer re-attaches once
//! per denoising step to check for Ctrl-C (`check_signals`) and to call the progress callback, so
//! a second Python thread runs meanwhile and a KeyboardInterrupt stops a run between steps.

use std::ops::ControlFlow;
use std::path::PathBuf;

use ndarray::{Array1, Array2, Array4, Axis};
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyArray4, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArray4,
};
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use unclip::explore::{Endpoint, Exploration, ExploreSettings};
use unclip::pipeline::{Generation, TextToImage};
use unclip::runtime::Precision;
use unclip::schedulers::SchedulerKind;
use unclip::stages::Progress;
use unclip::{Device, ErrorKind, Pipeline, RngKind, Runtime};

pyo3::create_exception!(
    _unclip,
    BundleError,
    PyException,
    "A model bundle that breaks its format: manifest, checksum, model signature."
);
pyo3::create_exception!(
    _unclip,
    ProviderUnavailable,
    PyException,
    "The requested device (execution provider) cannot run here."
);
pyo3::create_exception!(
    _unclip,
    Cancelled,
    PyException,
    "The run was stopped by its progress callback."
);

/// The library's error as the Python exception its kind calls for, with its message.
fn to_py(error: unclip::Error) -> PyErr {
    let message = error.to_string();
    match error.kind() {
        ErrorKind::InvalidInput => PyValueError::new_err(message),
        ErrorKind::NotFound => PyFileNotFoundError::new_err(message),
        ErrorKind::BundleInvalid => BundleError::new_err(message),
        ErrorKind::ProviderUnavailable => ProviderUnavailable::new_err(message),
        ErrorKind::Cancelled => Cancelled::new_err(message),
        _ => PyRuntimeError::new_err(message),
    }
}

fn parse<T: std::str::FromStr<Err = unclip::Error>>(value: &str) -> PyResult<T> {
    value.parse().map_err(to_py)
}

/// The per-call settings shared by every generating method (diffusers' names).
#[derive(Clone, Default)]
#[pyclass(frozen, module = "unclip._unclip", name = "_Settings")]
pub struct Settings {
    negative_prompt: Option<String>,
    num_images_per_prompt: usize,
    prior_steps: Option<usize>,
    decoder_steps: Option<usize>,
    super_res_steps: Option<usize>,
    prior_guidance_scale: Option<f32>,
    decoder_guidance_scale: Option<f32>,
    prior_scheduler: Option<String>,
    decoder_scheduler: Option<String>,
    width: Option<usize>,
    height: Option<usize>,
    seed: u64,
    rng: String,
    strength: Option<f64>,
}

#[pymethods]
impl Settings {
    #[new]
    #[pyo3(signature = (*, negative_prompt=None, num_images_per_prompt=1, prior_steps=None,
        decoder_steps=None, super_res_steps=None, prior_guidance_scale=None,
        decoder_guidance_scale=None, prior_scheduler=None, decoder_scheduler=None, width=None,
        height=None, seed=0, rng="fast".to_string(), strength=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        negative_prompt: Option<String>,
        num_images_per_prompt: usize,
        prior_steps: Option<usize>,
        decoder_steps: Option<usize>,
        super_res_steps: Option<usize>,
        prior_guidance_scale: Option<f32>,
        decoder_guidance_scale: Option<f32>,
        prior_scheduler: Option<String>,
        decoder_scheduler: Option<String>,
        width: Option<usize>,
        height: Option<usize>,
        seed: u64,
        rng: String,
        strength: Option<f64>,
    ) -> Self {
        Settings {
            negative_prompt,
            num_images_per_prompt,
            prior_steps,
            decoder_steps,
            super_res_steps,
            prior_guidance_scale,
            decoder_guidance_scale,
            prior_scheduler,
            decoder_scheduler,
            width,
            height,
            seed,
            rng,
            strength,
        }
    }
}

impl Settings {
    fn request(&self, prompts: Vec<String>) -> PyResult<TextToImage> {
        let scheduler = |s: &Option<String>| -> PyResult<Option<SchedulerKind>> {
            s.as_deref().map(parse).transpose()
        };
        Ok(TextToImage {
            prompts,
            negative_prompt: self.negative_prompt.clone(),
            num_images_per_prompt: Some(self.num_images_per_prompt),
            prior_steps: self.prior_steps,
            decoder_steps: self.decoder_steps,
            super_res_steps: self.super_res_steps.into_iter().collect(),
            prior_guidance_scale: self.prior_guidance_scale,
            decoder_guidance_scale: self.decoder_guidance_scale,
            prior_scheduler: scheduler(&self.prior_scheduler)?,
            decoder_scheduler: scheduler(&self.decoder_scheduler)?,
            output_size: self.width,
            output_height: self.height,
            strength: self.strength,
            ..Default::default()
        })
    }

    fn rng(&self) -> PyResult<RngKind> {
        parse(&self.rng)
    }

    fn explore(&self) -> PyResult<ExploreSettings> {
        let mut settings = ExploreSettings::new(self.rng()?, self.seed);
        settings.request = self.request(Vec::new())?;
        Ok(settings)
    }
}

/// What a step callback and Ctrl-C do to a run: checked once per denoising step, with the GIL.
struct StepHook<'a> {
    callback: Option<&'a Py<PyAny>>,
    /// A Python exception raised by the callback or a signal handler (KeyboardInterrupt): the
    /// run stops and it is re-raised.
    raised: Option<PyErr>,
}

impl StepHook<'_> {
    fn observe(&mut self, progress: Progress) -> ControlFlow<()> {
        let outcome = Python::attach(|py| -> PyResult<bool> {
            py.check_signals()?;
            match self.callback {
                None => Ok(true),
                Some(callback) => {
                    let stage = progress.stage.to_string();
                    let result = callback.call1(py, (stage, progress.step, progress.steps))?;
                    // `False` stops the run; anything else (None included) goes on.
                    Ok(!matches!(result.extract::<bool>(py), Ok(false)))
                }
            }
        });
        match outcome {
            Ok(true) => ControlFlow::Continue(()),
            Ok(false) => ControlFlow::Break(()),
            Err(err) => {
                self.raised = Some(err);
                ControlFlow::Break(())
            }
        }
    }

    /// The run's result, with a Python exception raised in a step taking precedence.
    fn finish<T>(self, result: unclip::Result<T>) -> PyResult<T> {
        match (self.raised, result) {
            (Some(err), _) => Err(err),
            (None, result) => result.map_err(to_py),
        }
    }
}

/// Runs `f` with the GIL released, giving it an observer tied to `callback`.
fn detached<T: Send>(
    py: Python<'_>,
    callback: Option<Py<PyAny>>,
    f: impl FnOnce(&mut dyn FnMut(Progress) -> ControlFlow<()>) -> unclip::Result<T> + Send,
) -> PyResult<T> {
    py.detach(|| {
        let mut hook = StepHook {
            callback: callback.as_ref(),
            raised: None,
        };
        let result = f(&mut |p| hook.observe(p));
        hook.finish(result)
    })
}

/// `(images (N, H, W, 3) uint8, image_embeds (N, D) float32, seconds in the library)`.
type Images<'py> = (Bound<'py, PyArray4<u8>>, Bound<'py, PyArray2<f32>>, f64);

fn images_to_numpy<'py>(
    py: Python<'py>,
    images: &[image::RgbImage],
    embeds: Array2<f32>,
    seconds: f64,
) -> PyResult<Images<'py>> {
    let (width, height) = images.first().map_or((0, 0), |i| i.dimensions());
    let mut bytes = Vec::with_capacity(images.len() * (width * height * 3) as usize);
    for image in images {
        bytes.extend_from_slice(image.as_raw());
    }
    let array = Array4::from_shape_vec((images.len(), height as usize, width as usize, 3), bytes)
        .map_err(|e| PyRuntimeError::new_err(format!("images of different sizes: {e}")))?;
    Ok((array.into_pyarray(py), embeds.into_pyarray(py), seconds))
}

fn generation_to_numpy(py: Python<'_>, generation: Generation) -> PyResult<Images<'_>> {
    let seconds = generation
        .timings
        .iter()
        .find(|t| t.stage == "total")
        .map_or(0.0, |t| t.seconds);
    images_to_numpy(py, &generation.images, generation.image_embeddings, seconds)
}

fn exploration_to_numpy(py: Python<'_>, exploration: Exploration) -> PyResult<Images<'_>> {
    images_to_numpy(
        py,
        &exploration.images,
        exploration.embeddings,
        exploration.seconds,
    )
}

/// `(N, H, W, 3)` uint8 arrays → RGB images (one copy, into the image buffers).
fn images_from_numpy(array: &PyReadonlyArray4<'_, u8>) -> PyResult<Vec<image::DynamicImage>> {
    let view = array.as_array();
    let (n, h, w, c) = view.dim();
    if c != 3 {
        return Err(PyValueError::new_err(format!(
            "images must be (N, H, W, 3) uint8 RGB, got {c} channels"
        )));
    }
    (0..n)
        .map(|i| {
            let pixels: Vec<u8> = view.index_axis(Axis(0), i).iter().copied().collect();
            image::RgbImage::from_raw(w as u32, h as u32, pixels)
                .map(image::DynamicImage::ImageRgb8)
                .ok_or_else(|| PyValueError::new_err("image buffer of the wrong size"))
        })
        .collect()
}

/// An endpoint of `interpolate` / `textdiff`: a prompt, an `(H, W, 3)` uint8 image or a `(D,)`
/// float32 embedding.
fn endpoint(value: &Bound<'_, PyAny>) -> PyResult<Endpoint> {
    if let Ok(prompt) = value.extract::<String>() {
        return Ok(Endpoint::Prompt(prompt));
    }
    if let Ok(image) = value.extract::<numpy::PyReadonlyArray3<'_, u8>>() {
        let view = image.as_array();
        let (h, w, c) = view.dim();
        if c != 3 {
            return Err(PyValueError::new_err(format!(
                "an image endpoint must be (H, W, 3) uint8 RGB, got {c} channels"
            )));
        }
        let pixels: Vec<u8> = view.iter().copied().collect();
        let image = image::RgbImage::from_raw(w as u32, h as u32, pixels)
            .ok_or_else(|| PyValueError::new_err("image buffer of the wrong size"))?;
        return Ok(Endpoint::Image(image::DynamicImage::ImageRgb8(image)));
    }
    if let Ok(embedding) = value.extract::<PyReadonlyArray1<'_, f32>>() {
        return Ok(Endpoint::Embedding(embedding.as_array().to_owned()));
    }
    Err(PyValueError::new_err(
        "an endpoint is a prompt (str), an image (PIL or (H, W, 3) uint8 array) or an embedding \
         ((D,) float32 array)",
    ))
}

/// A loaded bundle (`unclip.Pipeline` wraps it). Shareable across threads: concurrent calls take
/// turns per model call.
#[pyclass(frozen, module = "unclip._unclip", name = "_Pipeline")]
pub struct PyPipeline {
    pipeline: Pipeline,
}

#[pymethods]
impl PyPipeline {
    #[new]
    #[pyo3(signature = (model, device="cpu", precision="f32", threads=None, low_memory=false, ort_library=None))]
    fn new(
        py: Python<'_>,
        model: PathBuf,
        device: &str,
        precision: &str,
        threads: Option<usize>,
        low_memory: bool,
        ort_library: Option<PathBuf>,
    ) -> PyResult<Self> {
        let device: Device = parse(device)?;
        let precision: Precision = parse(precision)?;
        py.detach(|| {
            let mut builder = Runtime::builder()
                .device(device)
                .precision(precision)
                .low_memory(low_memory);
            if let Some(threads) = threads {
                builder = builder.threads(threads);
            }
            if let Some(path) = ort_library {
                builder = builder.library(path);
            }
            let runtime = builder.build()?;
            Ok(PyPipeline {
                pipeline: Pipeline::load(&runtime, &model)?,
            })
        })
        .map_err(to_py)
    }

    /// Text to image: `(images (N, H, W, 3) uint8, image_embeds (N, D) float32)`, prompt-major.
    #[pyo3(signature = (prompts, settings, init_image=None, callback=None))]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        prompts: Vec<String>,
        settings: &Settings,
        init_image: Option<PyReadonlyArray4<'py, u8>>,
        callback: Option<Py<PyAny>>,
    ) -> PyResult<Images<'py>> {
        let mut request = settings.request(prompts)?;
        if let Some(image) = init_image {
            let mut images = images_from_numpy(&image)?;
            if images.len() != 1 {
                return Err(PyValueError::new_err("give one init image"));
            }
            request.init_image = Some(images.remove(0).to_rgb8());
        }
        let rng = settings.rng()?;
        let seed = settings.seed;
        let generation = detached(py, callback, |observer| {
            let mut noise = unclip::noise::noise_source(rng, seed);
            self.pipeline.generate(&request, noise.as_mut(), observer)
        })?;
        generation_to_numpy(py, generation)
    }

    /// Variations: each image's CLIP embedding decoded `settings.num_images_per_prompt` times.
    #[pyo3(signature = (images, settings, callback=None))]
    fn vary<'py>(
        &self,
        py: Python<'py>,
        images: PyReadonlyArray4<'py, u8>,
        settings: &Settings,
        callback: Option<Py<PyAny>>,
    ) -> PyResult<Images<'py>> {
        let images = images_from_numpy(&images)?;
        let request = settings.request(Vec::new())?;
        let rng = settings.rng()?;
        let seed = settings.seed;
        let generation = detached(py, callback, |observer| {
            let mut noise = unclip::noise::noise_source(rng, seed);
            self.pipeline
                .vary(&images, &request, noise.as_mut(), observer)
        })?;
        generation_to_numpy(py, generation)
    }

    /// Decodes given CLIP image embeddings `(N, D)` (no prior), one image each.
    #[pyo3(signature = (image_embeds, settings, callback=None))]
    fn decode<'py>(
        &self,
        py: Python<'py>,
        image_embeds: PyReadonlyArray2<'py, f32>,
        settings: &Settings,
        callback: Option<Py<PyAny>>,
    ) -> PyResult<Images<'py>> {
        let embeds = image_embeds.as_array().to_owned();
        let mut request = settings.request(vec![String::new(); embeds.nrows().max(1)])?;
        request.image_embeddings = Some(embeds);
        request.num_images_per_prompt = Some(1);
        // No prior runs: scale 0 leaves the CFG decision to the decoder's scale.
        request.prior_guidance_scale = Some(0.0);
        let rng = settings.rng()?;
        let seed = settings.seed;
        let generation = detached(py, callback, |observer| {
            let mut noise = unclip::noise::noise_source(rng, seed);
            self.pipeline.generate(&request, noise.as_mut(), observer)
        })?;
        generation_to_numpy(py, generation)
    }

    /// CLIP text embeddings `(N, D)`.
    fn encode_text<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let embeds = py
            .detach(|| {
                let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
                self.pipeline.text_embeddings(&texts)
            })
            .map_err(to_py)?;
        Ok(embeds.into_pyarray(py))
    }

    /// CLIP image embeddings `(N, D)` of `(N, H, W, 3)` uint8 images.
    fn encode_image<'py>(
        &self,
        py: Python<'py>,
        images: PyReadonlyArray4<'py, u8>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let images = images_from_numpy(&images)?;
        let embeds = py
            .detach(|| self.pipeline.image_encoder()?.encode(&images))
            .map_err(to_py)?;
        Ok(embeds.into_pyarray(py))
    }

    /// Slerp frames between two endpoints (DALL·E 2 §3.2), the same decoder noise in every frame.
    #[pyo3(signature = (a, b, frames, settings, callback=None))]
    fn interpolate<'py>(
        &self,
        py: Python<'py>,
        a: &Bound<'py, PyAny>,
        b: &Bound<'py, PyAny>,
        frames: usize,
        settings: &Settings,
        callback: Option<Py<PyAny>>,
    ) -> PyResult<Images<'py>> {
        let (a, b) = (endpoint(a)?, endpoint(b)?);
        let explore = settings.explore()?;
        let exploration = detached(py, callback, |observer| {
            self.pipeline
                .interpolate(&a, &b, frames, &explore, observer)
        })?;
        exploration_to_numpy(py, exploration)
    }

    /// diffusers' weighted interpolation: one image of `Σ wᵢ · zᵢ`.
    #[pyo3(signature = (endpoints, weights, settings, callback=None))]
    fn weighted_mix<'py>(
        &self,
        py: Python<'py>,
        endpoints: Vec<Bound<'py, PyAny>>,
        weights: Vec<f32>,
        settings: &Settings,
        callback: Option<Py<PyAny>>,
    ) -> PyResult<Images<'py>> {
        let endpoints = endpoints
            .iter()
            .map(endpoint)
            .collect::<PyResult<Vec<_>>>()?;
        let explore = settings.explore()?;
        let exploration = detached(py, callback, |observer| {
            self.pipeline
                .weighted_mix(&endpoints, &weights, &explore, observer)
        })?;
        exploration_to_numpy(py, exploration)
    }

    /// Text diff frames (DALL·E 2 §3.3): `subject`'s embedding rotated toward `to − from`.
    #[pyo3(signature = (subject, from_, to, frames, max_theta, settings, callback=None))]
    #[allow(clippy::too_many_arguments)]
    fn textdiff<'py>(
        &self,
        py: Python<'py>,
        subject: &Bound<'py, PyAny>,
        from_: String,
        to: String,
        frames: usize,
        max_theta: f32,
        settings: &Settings,
        callback: Option<Py<PyAny>>,
    ) -> PyResult<Images<'py>> {
        let subject = endpoint(subject)?;
        let explore = settings.explore()?;
        let exploration = detached(py, callback, |observer| {
            self.pipeline
                .text_diff(&subject, &from_, &to, frames, max_theta, &explore, observer)
        })?;
        exploration_to_numpy(py, exploration)
    }

    #[getter]
    fn embedding_dim(&self) -> usize {
        self.pipeline.prior().embedding_dim()
    }

    /// Side of the images made by default.
    #[getter]
    fn image_size(&self) -> usize {
        self.pipeline.output_size()
    }

    #[getter]
    fn family(&self) -> &'static str {
        self.pipeline.family()
    }

    #[getter]
    fn model_name(&self) -> String {
        self.pipeline.bundle().manifest.name.clone()
    }

    #[getter]
    fn precision(&self) -> String {
        self.pipeline.precision().to_string()
    }

    /// The decoder's default steps (for progress bars sized before the run).
    #[getter]
    fn defaults<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let (decoder_steps, decoder_scale, _) = self.pipeline.decoder_defaults();
        let prior = self.pipeline.prior();
        let sr: Vec<usize> = self
            .pipeline
            .upsamplers()
            .iter()
            .map(|u| u.default_steps)
            .collect();
        PyTuple::new(
            py,
            [
                prior.default_steps.into_pyobject(py)?.into_any(),
                decoder_steps.into_pyobject(py)?.into_any(),
                sr.into_pyobject(py)?.into_any(),
                prior.default_guidance_scale.into_pyobject(py)?.into_any(),
                decoder_scale.into_pyobject(py)?.into_any(),
            ],
        )
    }
}

/// Spherical interpolation of two embeddings (unclip's `latent::slerp`: the direction slerped,
/// the norm interpolated linearly).
#[pyfunction]
fn slerp<'py>(
    py: Python<'py>,
    a: PyReadonlyArray1<'py, f32>,
    b: PyReadonlyArray1<'py, f32>,
    t: f32,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let out: Array1<f32> = unclip::latent::slerp(a.as_array(), b.as_array(), t).map_err(to_py)?;
    Ok(out.into_pyarray(py))
}

/// The source tree this extension was built from (its `models/` are the last default bundles
/// tried, as the command line does).
#[pyfunction]
fn source_dir() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/..")
}

/// The unclip version this extension was built from.
#[pyfunction]
fn version() -> &'static str {
    unclip::pipeline::UNCLIP_VERSION
}

#[pymodule]
fn _unclip(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPipeline>()?;
    m.add_class::<Settings>()?;
    m.add_function(wrap_pyfunction!(slerp, m)?)?;
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_function(wrap_pyfunction!(source_dir, m)?)?;
    m.add("BundleError", m.py().get_type::<BundleError>())?;
    m.add(
        "ProviderUnavailable",
        m.py().get_type::<ProviderUnavailable>(),
    )?;
    m.add("Cancelled", m.py().get_type::<Cancelled>())?;
    Ok(())
}
