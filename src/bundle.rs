//! Model bundles: `bundle.json` and the files it names (docs/architecture.md, "Bundle format").
//!
//! [`Bundle::open`] validates everything that can be checked without ONNX Runtime before the
//! first run: the manifest parses, its format and version are known, every file path stays
//! inside the bundle, every file exists and has the sha256 the manifest records. The ONNX
//! signatures are checked against the manifest when sessions are created
//! ([`crate::runtime::Model::load`]).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::verify::{Identity, Verification, VerifiedCache, Verify};
use crate::{Error, Result};

/// The `format` string of every bundle.
pub const FORMAT: &str = "unclip-bundle";
/// The newest manifest version this unclip reads: 1 (the Karlo layout) and 2 (which names its
/// model `family`: `karlo` or `kandinsky2.2`) both load.
pub const FORMAT_VERSION: u64 = 2;
/// The manifest's file name inside a bundle directory.
pub const MANIFEST: &str = "bundle.json";

/// A dimension: fixed size or a symbolic name (`batch`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(usize),
    Symbolic(String),
}

/// Name, element type and shape of one model input or output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    /// `float32`, `float16` or `int64`.
    pub dtype: String,
    pub shape: Vec<Dim>,
}

/// A file with its checksum.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileEntry {
    pub file: String,
    pub sha256: String,
}

/// One ONNX model of the bundle.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelEntry {
    pub file: String,
    pub sha256: String,
    /// Weights stored beside the graph (models over protobuf's 2 GB limit).
    #[serde(default)]
    pub external_data: Vec<FileEntry>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// The same model quantized to int8 (QDQ), for `--precision int8` on the CPU device
    /// (`export/quantize_bundle.py`); same inputs and outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8: Option<VariantEntry>,
}

/// Another file of the same model (same inputs and outputs), such as its int8 quantization.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VariantEntry {
    pub file: String,
    pub sha256: String,
    #[serde(default)]
    pub external_data: Vec<FileEntry>,
}

/// Tokenizer settings (CLIP BPE, padded and truncated to `max_length`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenizerEntry {
    pub file: String,
    pub sha256: String,
    pub max_length: usize,
    pub pad_token: String,
    pub pad_id: u32,
}

/// CLIP image preprocessing constants.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageProcessorEntry {
    pub shortest_edge: usize,
    pub crop_size: usize,
    pub resample: String,
    pub rescale_factor: f64,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// A stage that runs one model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimpleStage {
    pub model: String,
}

/// The diffusion prior.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PriorEntry {
    pub model: String,
    /// diffusers `scheduler_config.json`.
    pub scheduler: serde_json::Value,
    pub default_steps: usize,
    pub default_guidance_scale: f32,
    pub clip_mean: Vec<f32>,
    pub clip_std: Vec<f32>,
    /// The image embedding guidance pushes away from when no negative prompt is given
    /// (`.npy`, `(D,)` or `(1, D)`): Kandinsky 2.2's embedding of an all-zero image
    /// (diffusers `KandinskyV22PriorPipeline.get_zero_embed`), a constant of the weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_image_embed: Option<FileEntry>,
}

/// The 64×64 decoder with its text projection.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DecoderEntry {
    pub model: String,
    pub text_proj: String,
    pub text_proj_cfg: String,
    pub scheduler: serde_json::Value,
    pub default_steps: usize,
    pub default_guidance_scale: f32,
    pub sample_size: usize,
    pub in_channels: usize,
    pub clip_extra_context_tokens: usize,
}

/// The latent decoder of the Kandinsky 2.2 family: a UNet conditioned on the image embedding
/// alone, then the MoVQ image decoder (diffusers `KandinskyV22Pipeline`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LatentDecoderEntry {
    /// The UNet: `(sample, timestep, image_embeds)` → ε and the learned variance.
    pub model: String,
    pub scheduler: serde_json::Value,
    pub default_steps: usize,
    pub default_guidance_scale: f32,
    /// Side of the images made when no size is asked.
    pub default_size: usize,
    pub latent_channels: usize,
    /// The UNet's output channels: twice `latent_channels` with a learned variance.
    pub out_channels: usize,
    /// MoVQ decoder: latents → image in [−1, 1].
    pub movq_decoder: String,
    /// MoVQ encoder (img2img): image in [−1, 1] → latents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub movq_encoder: Option<String>,
    /// Pixels per latent along each side.
    pub movq_scale_factor: usize,
}

/// The model family: which stages follow the prior.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "family")]
pub enum Layout {
    /// DALL·E 2 as Karlo publishes it: a 64×64 pixel decoder with its text projection, then
    /// diffusion upsamplers.
    #[serde(rename = "karlo")]
    Karlo {
        decoder: DecoderEntry,
        upsamplers: Vec<UpsamplerEntry>,
    },
    /// Kandinsky 2.2: a latent decoder UNet, then the MoVQ image decoder.
    #[serde(rename = "kandinsky2.2")]
    Kandinsky { decoder: LatentDecoderEntry },
}

impl Layout {
    /// The family's name in `bundle.json`.
    pub fn family(&self) -> &'static str {
        match self {
            Layout::Karlo { .. } => "karlo",
            Layout::Kandinsky { .. } => "kandinsky2.2",
        }
    }
}

/// The families this unclip runs.
pub const FAMILIES: &[&str] = &["karlo", "kandinsky2.2"];

/// A super-resolution stage.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpsamplerEntry {
    pub name: String,
    /// Model for every step but the last.
    pub first: String,
    /// Model for the last step.
    pub last: String,
    pub scheduler: serde_json::Value,
    pub default_steps: usize,
    pub sample_size: usize,
    pub in_channels: usize,
}

/// `bundle.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u64,
    pub name: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub exporter: serde_json::Value,
    pub dtype: String,
    pub embedding_dim: usize,
    pub tokenizer: TokenizerEntry,
    pub image_processor: ImageProcessorEntry,
    pub models: BTreeMap<String, ModelEntry>,
    pub text_encoder: SimpleStage,
    #[serde(default)]
    pub image_encoder: Option<SimpleStage>,
    pub prior: PriorEntry,
    /// The stages after the prior, by family (`family`, `decoder`, `upsamplers`).
    #[serde(flatten)]
    pub layout: Layout,
    /// How the int8 models were made (calibration, nodes kept in fp32) and the fidelity the
    /// exporter measured (`quantization.int8.fidelity.passed`), as `export/quantize_bundle.py`
    /// writes it; absent without int8 models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<serde_json::Value>,
}

/// A validated bundle on disk.
#[derive(Clone, Debug)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// sha256 of `bundle.json` itself: identifies the model in PNG metadata.
    pub manifest_sha256: String,
}

impl Bundle {
    /// Opens and validates the bundle in `dir` (see the module doc), re-hashing only files that
    /// changed since they were last verified ([`Verify::Cached`]).
    pub fn open(dir: impl AsRef<Path>) -> Result<Bundle> {
        Self::open_with(dir, &Verification::default())
    }

    /// [`Bundle::open`] with an explicit verification policy.
    pub fn open_with(dir: impl AsRef<Path>, verification: &Verification) -> Result<Bundle> {
        let dir = dir.as_ref().to_path_buf();
        let manifest_path = dir.join(MANIFEST);
        let bytes = match std::fs::read(&manifest_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::BundleFileMissing {
                    path: manifest_path,
                })
            }
            Err(e) => return Err(Error::io(manifest_path, e)),
        };
        let bundle = Self::from_manifest(dir, &bytes)?;
        bundle.verify_files_with(verification)?;
        Ok(bundle)
    }

    /// Parses and checks `bundle.json` content as if it were in `dir`, without touching the
    /// files it names (every check of [`Bundle::open`] but existence and sha256).
    pub fn from_manifest(dir: impl AsRef<Path>, bytes: &[u8]) -> Result<Bundle> {
        let dir = dir.as_ref().to_path_buf();
        let manifest_path = dir.join(MANIFEST);
        let manifest = parse_manifest(&manifest_path, bytes)?;
        let bundle = Bundle {
            manifest_sha256: hex(&Sha256::digest(bytes)),
            dir,
            manifest,
        };
        bundle.check_references(&manifest_path)?;
        for (file, _) in bundle.files() {
            bundle.resolve(file)?;
        }
        Ok(bundle)
    }

    /// Absolute path of a file named in the manifest, refusing paths that leave the bundle.
    pub fn resolve(&self, file: &str) -> Result<PathBuf> {
        let relative = Path::new(file);
        let escapes = file.is_empty()
            || relative.is_absolute()
            || relative
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
        if escapes {
            return Err(Error::BundlePathEscape {
                path: file.to_string(),
            });
        }
        Ok(self.dir.join(relative))
    }

    /// The manifest entry of model `key`.
    pub fn model(&self, key: &str) -> Result<&ModelEntry> {
        self.manifest
            .models
            .get(key)
            .ok_or_else(|| Error::BundleInvalid {
                path: self.dir.join(MANIFEST),
                reason: format!("stage refers to model {key:?}, which `models` does not define"),
            })
    }

    /// Every (file, sha256) the manifest lists, int8 models included.
    pub fn files(&self) -> Vec<(&str, &str)> {
        let m = &self.manifest;
        let mut files = vec![(m.tokenizer.file.as_str(), m.tokenizer.sha256.as_str())];
        files.extend(
            m.prior
                .negative_image_embed
                .iter()
                .map(|f| (f.file.as_str(), f.sha256.as_str())),
        );
        for model in m.models.values() {
            files.push((model.file.as_str(), model.sha256.as_str()));
            files.extend(
                model
                    .external_data
                    .iter()
                    .map(|f| (f.file.as_str(), f.sha256.as_str())),
            );
            if let Some(int8) = &model.int8 {
                files.push((int8.file.as_str(), int8.sha256.as_str()));
                files.extend(
                    int8.external_data
                        .iter()
                        .map(|f| (f.file.as_str(), f.sha256.as_str())),
                );
            }
        }
        files
    }

    /// Whether any model has an int8 quantization.
    pub fn has_int8(&self) -> bool {
        self.manifest.models.values().any(|m| m.int8.is_some())
    }

    /// Whether `--precision auto` takes the int8 models: the exporter's fidelity check passed
    /// (`quantization.int8.fidelity.passed`) and int8 was faster than f32 there
    /// (`fidelity.speedup` above 1; small models can be slower in int8).
    pub fn int8_preferred(&self) -> bool {
        let fidelity = |key: &str| {
            self.manifest
                .quantization
                .as_ref()
                .and_then(|q| q.pointer(&format!("/int8/fidelity/{key}")))
                .cloned()
        };
        self.has_int8()
            && fidelity("passed").and_then(|v| v.as_bool()) == Some(true)
            && fidelity("speedup")
                .and_then(|v| v.as_f64())
                .is_some_and(|s| s > 1.0)
    }

    /// The entry of model `key` to load: its int8 quantization when `int8` and the model has one
    /// (models without one, such as the text encoder, stay f32), else the model itself.
    pub fn model_for(&self, key: &str, int8: bool) -> Result<ModelEntry> {
        let entry = self.model(key)?;
        Ok(match (&entry.int8, int8) {
            (Some(variant), true) => ModelEntry {
                file: variant.file.clone(),
                sha256: variant.sha256.clone(),
                external_data: variant.external_data.clone(),
                inputs: entry.inputs.clone(),
                outputs: entry.outputs.clone(),
                int8: None,
            },
            _ => entry.clone(),
        })
    }

    fn check_references(&self, manifest_path: &Path) -> Result<()> {
        let m = &self.manifest;
        let mut keys = vec![&m.text_encoder.model, &m.prior.model];
        keys.extend(m.image_encoder.iter().map(|s| &s.model));
        match &m.layout {
            Layout::Karlo {
                decoder,
                upsamplers,
            } => {
                keys.extend([&decoder.model, &decoder.text_proj, &decoder.text_proj_cfg]);
                for up in upsamplers {
                    keys.extend([&up.first, &up.last]);
                }
            }
            Layout::Kandinsky { decoder } => {
                keys.extend([&decoder.model, &decoder.movq_decoder]);
                keys.extend(decoder.movq_encoder.as_ref());
            }
        }
        for key in keys {
            self.model(key)?;
        }
        let invalid = |reason: String| Error::BundleInvalid {
            path: manifest_path.to_path_buf(),
            reason,
        };
        if let Layout::Kandinsky { decoder } = &m.layout {
            if m.prior.negative_image_embed.is_none() {
                return Err(invalid(
                    "a kandinsky2.2 bundle needs prior.negative_image_embed (the zero-image \
                     embedding): re-export it with export/export_bundle.py"
                        .into(),
                ));
            }
            let lc = decoder.latent_channels;
            if lc == 0 || !(decoder.out_channels == lc || decoder.out_channels == 2 * lc) {
                return Err(invalid(format!(
                    "decoder out_channels {} must be latent_channels ({lc}) or twice it",
                    decoder.out_channels
                )));
            }
            let step = decoder.movq_scale_factor * 8;
            if decoder.movq_scale_factor == 0
                || decoder.default_size == 0
                || decoder.default_size % step != 0
            {
                return Err(invalid(format!(
                    "decoder default_size {} must be a positive multiple of 8 × movq_scale_factor ({})",
                    decoder.default_size, decoder.movq_scale_factor
                )));
            }
        }
        if m.prior.clip_mean.len() != m.embedding_dim || m.prior.clip_std.len() != m.embedding_dim {
            return Err(invalid(format!(
                "prior clip_mean/clip_std have {}/{} values, embedding_dim is {}",
                m.prior.clip_mean.len(),
                m.prior.clip_std.len(),
                m.embedding_dim
            )));
        }
        // The stages make RGB images: the decoder's and every upsampler's samples have 3
        // channels (`image_io::to_rgb8` converts exactly 3).
        if let Layout::Karlo {
            decoder,
            upsamplers,
        } = &m.layout
        {
            if decoder.in_channels != 3 {
                return Err(invalid(format!(
                    "decoder in_channels is {}: unclip decodes RGB images (3 channels)",
                    decoder.in_channels
                )));
            }
            if let Some(up) = upsamplers.iter().find(|up| up.in_channels != 3) {
                return Err(invalid(format!(
                    "upsampler {} in_channels is {}: unclip upsamples RGB images (3 channels)",
                    up.name, up.in_channels
                )));
            }
        }
        if m.tokenizer.max_length == 0 {
            return Err(invalid("tokenizer max_length is 0".into()));
        }
        if m.dtype != "float32" && m.dtype != "float16" {
            return Err(invalid(format!(
                "dtype {:?} is not float32 or float16",
                m.dtype
            )));
        }
        Ok(())
    }

    /// Checks that every file exists and matches its sha256 (files hashed in parallel).
    pub fn verify_files(&self) -> Result<()> {
        self.verify_files_with(&Verification::new(Verify::Always))
    }

    /// Checks that every file exists and, as `verification` says, matches its sha256.
    pub fn verify_files_with(&self, verification: &Verification) -> Result<()> {
        let files = self.files();
        let resolved = files
            .iter()
            .map(|(file, sha)| Ok((self.resolve(file)?, *sha)))
            .collect::<Result<Vec<_>>>()?;
        for (path, _) in &resolved {
            if !path.is_file() {
                return Err(Error::BundleFileMissing { path: path.clone() });
            }
        }
        if verification.mode == Verify::Never {
            return Ok(());
        }
        let cache = VerifiedCache::load(verification);
        let result = resolved.par_iter().try_for_each(|(path, expected)| {
            if cache.is_verified(path, expected) {
                return Ok(());
            }
            let identity = Identity::of(path);
            let actual = sha256_file(path)?;
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(Error::ChecksumMismatch {
                    path: path.clone(),
                    expected: expected.to_string(),
                    actual,
                });
            }
            cache.record(path, identity, &actual);
            Ok(())
        });
        cache.save();
        result
    }
}

fn parse_manifest(path: &Path, bytes: &[u8]) -> Result<Manifest> {
    let invalid = |reason: String| Error::BundleInvalid {
        path: path.to_path_buf(),
        reason,
    };
    // Format and version first, so a newer bundle gets the version error, not a field error.
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
    let format = value.get("format").and_then(|f| f.as_str());
    if format != Some(FORMAT) {
        return Err(invalid(format!(
            "`format` is {format:?}, expected {FORMAT:?}"
        )));
    }
    let version = value
        .get("format_version")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| invalid("`format_version` missing or not an integer".into()))?;
    if !(1..=FORMAT_VERSION).contains(&version) {
        return Err(Error::BundleVersion {
            path: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let mut value = value;
    match value.get("family") {
        // Version 1 predates families: every version-1 bundle is Karlo's layout.
        None if version == 1 => value["family"] = "karlo".into(),
        None => return Err(invalid("`family` missing (version 2 names it)".into())),
        Some(family) => {
            if version == 1 {
                return Err(invalid(
                    "`family` is a version-2 field: set format_version 2".into(),
                ));
            }
            if !family.as_str().is_some_and(|f| FAMILIES.contains(&f)) {
                return Err(invalid(format!(
                    "`family` is {family}: this unclip runs {}",
                    FAMILIES.join(" and ")
                )));
            }
        }
    }
    serde_json::from_value(value).map_err(|e| invalid(e.to_string()))
}

/// sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
