//! The library's one error type. Every variant names what was wrong and, where there is one,
//! the fix. [`Error::kind`] is the one classification of errors (whose fault, which class); the
//! shells map a kind to their codes: the CLI to exit codes, the server to HTTP statuses, the C
//! ABI to `unclip_status`.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in unclip.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- ONNX Runtime library and sessions -------------------------------------------------
    /// The ONNX Runtime shared library could not be found in any searched place.
    #[error(
        "ONNX Runtime library not found (searched: {searched}). Install it with `scripts/setup-ort` \
         (downloads onnxruntime==1.31.1 from PyPI into ./.ort) or set ORT_DYLIB_PATH to libonnxruntime.so"
    )]
    OrtNotFound { searched: String },
    /// The library was found but could not be loaded, or has the wrong version.
    #[error("cannot load ONNX Runtime from {path}: {reason}. Install 1.31.x with `scripts/setup-ort` or point ORT_DYLIB_PATH at it")]
    OrtLoad { path: PathBuf, reason: String },
    /// An error reported by ONNX Runtime itself.
    #[error("ONNX Runtime error in {context}: {message}")]
    Ort { context: String, message: String },
    /// ONNX Runtime could not load a model file (truncated, corrupt, or unsupported operators).
    #[error("cannot load ONNX model {path}: {message}; the file may be truncated or corrupt, re-export the bundle")]
    ModelLoad { path: PathBuf, message: String },
    /// A requested execution provider is not available in this ONNX Runtime build.
    #[error("execution provider {provider} is not available: {reason}. {fix}")]
    ProviderUnavailable {
        provider: String,
        reason: String,
        fix: String,
    },
    /// A `--device` string that does not parse.
    #[error("unknown device {0:?}: expected cpu, cuda[:N], tensorrt[:N] (N = GPU index) or openvino[:CPU|GPU[.N]|NPU]")]
    UnknownDevice(String),

    // ---- bundles --------------------------------------------------------------------------
    /// A bundle file is missing.
    #[error("bundle file missing: {path} (re-export the bundle with export/export_bundle.py)")]
    BundleFileMissing { path: PathBuf },
    /// `bundle.json` does not parse or breaks a rule of the format.
    #[error(
        "no model bundle given and no default bundle found (searched: {searched}); pass --model DIR \
         or set UNCLIP_MODEL to a bundle directory (one written by export/export_bundle.py)"
    )]
    NoDefaultBundle { searched: String },
    #[error("invalid bundle file {path}: {reason}")]
    BundleInvalid { path: PathBuf, reason: String },
    /// The bundle was written by a newer (or unknown) exporter.
    #[error("unsupported bundle format_version {found} in {path}: this unclip reads versions 1 to {supported}; upgrade unclip or re-export the bundle")]
    BundleVersion {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    /// A file named by the manifest escapes the bundle directory.
    #[error("bundle file path {path:?} escapes the bundle directory: paths must be relative and stay inside it")]
    BundlePathEscape { path: String },
    /// A file's sha256 differs from the manifest.
    #[error("sha256 mismatch for {path}: manifest says {expected}, file has {actual}; the file was modified or corrupted, re-export or re-download the bundle")]
    ChecksumMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// An ONNX model's inputs or outputs differ from what the manifest declares.
    #[error("ONNX model {path} does not match bundle.json: {detail}")]
    ModelSignature { path: PathBuf, detail: String },

    // ---- inputs ---------------------------------------------------------------------------
    /// A request parameter is out of range or inconsistent.
    #[error("invalid {name}: {reason}")]
    InvalidArgument { name: &'static str, reason: String },
    /// A tensor with the wrong shape.
    #[error("{what} has shape {found:?}, expected {expected}")]
    Shape {
        what: String,
        expected: String,
        found: Vec<usize>,
    },
    /// NaN or infinity where finite values are required.
    #[error("{what} contains NaN or infinite values")]
    NonFinite { what: String },
    /// The tokenizer failed.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// Reading or writing a `.npy` file failed.
    #[error("cannot {action} .npy file {path}: {reason}")]
    Npy {
        action: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// Recorded noise ran out or had the wrong shape.
    #[error("recorded noise: {0}")]
    RecordedNoise(String),
    /// An image could not be decoded or encoded.
    #[error("image error ({path}): {reason}")]
    Image { path: String, reason: String },
    /// File system errors, with the path involved.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    // ---- control --------------------------------------------------------------------------
    /// The caller cancelled the run through the progress callback.
    #[error("cancelled")]
    Cancelled,

    // ---- bugs -----------------------------------------------------------------------------
    /// An invariant of unclip's own code does not hold: a bug, never the caller's input.
    #[error("internal error (a bug in unclip, please report it): {0}")]
    Internal(String),
}

/// What kind of failure an [`Error`] is: the one classification every shell maps to its own
/// codes (docs/errors.md). Only [`ErrorKind::InvalidInput`] is the caller's to fix by changing
/// the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A bad argument, prompt, image, tensor or device name in the request.
    InvalidInput,
    /// The caller stopped the run.
    Cancelled,
    /// ONNX Runtime or a bundle file is not there.
    NotFound,
    /// A bundle that breaks its format (manifest, checksum, model signature, unreadable model).
    BundleInvalid,
    /// The requested execution provider cannot run here.
    ProviderUnavailable,
    /// ONNX Runtime failed while running.
    Runtime,
    /// Reading or writing a file failed.
    Io,
    /// A bug in unclip.
    Internal,
}

impl Error {
    /// The kind of failure: what every shell's status is computed from.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument { .. }
            | Error::Shape { .. }
            | Error::NonFinite { .. }
            | Error::UnknownDevice(_)
            | Error::Tokenizer(_)
            | Error::Image { .. }
            | Error::RecordedNoise(_) => ErrorKind::InvalidInput,
            Error::Cancelled => ErrorKind::Cancelled,
            Error::OrtNotFound { .. }
            | Error::OrtLoad { .. }
            | Error::BundleFileMissing { .. }
            | Error::NoDefaultBundle { .. } => ErrorKind::NotFound,
            Error::BundleInvalid { .. }
            | Error::BundleVersion { .. }
            | Error::BundlePathEscape { .. }
            | Error::ChecksumMismatch { .. }
            | Error::ModelSignature { .. }
            | Error::ModelLoad { .. } => ErrorKind::BundleInvalid,
            Error::ProviderUnavailable { .. } => ErrorKind::ProviderUnavailable,
            Error::Ort { .. } => ErrorKind::Runtime,
            Error::Io { .. } | Error::Npy { .. } => ErrorKind::Io,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Builds an [`Error::Internal`]: `what` names the invariant that broke.
    pub fn internal(what: impl Into<String>) -> Self {
        Error::Internal(what.into())
    }

    /// Builds an [`Error::InvalidArgument`].
    pub fn invalid(name: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            name,
            reason: reason.into(),
        }
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_errors_and_bugs_are_told_apart() {
        assert_eq!(Error::invalid("steps", "0").kind(), ErrorKind::InvalidInput);
        assert_eq!(Error::internal("x").kind(), ErrorKind::Internal);
        assert_eq!(Error::Cancelled.kind(), ErrorKind::Cancelled);
        let image = Error::Image {
            path: "a.png".into(),
            reason: "truncated".into(),
        };
        assert_eq!(image.kind(), ErrorKind::InvalidInput);
        assert!(Error::internal("parts differ in shape")
            .to_string()
            .starts_with("internal error (a bug in unclip"));
    }
}
