//! How much of a bundle to re-hash at load (`--verify always|cached|never`).
//!
//! Hashing a multi-GB bundle at every start costs seconds to minutes, so by default a file whose
//! sha256 was verified before is trusted again while its identity is unchanged: same canonical
//! path, size, modification time (ns) and, on Unix, device and inode. The record lives in
//! `verified.json` in unclip's cache directory (`UNCLIP_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/unclip`, else `~/.cache/unclip`); it is written atomically, and a cache that
//! is missing, unreadable or unwritable only means re-hashing. A file changed in place keeps
//! neither its mtime nor (usually) its inode, so it is re-hashed and refused; a deliberate
//! tamper that restores size and mtime is caught only by `--verify always`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The verification policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verify {
    /// Hash every file at every load.
    Always,
    /// Hash files whose identity changed since they were last verified (the default).
    #[default]
    Cached,
    /// Check only that the files exist (for read-only trusted media; not recommended).
    Never,
}

impl FromStr for Verify {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "always" => Ok(Verify::Always),
            "cached" => Ok(Verify::Cached),
            "never" => Ok(Verify::Never),
            other => Err(Error::invalid(
                "verify",
                format!("{other:?}: use always, cached or never"),
            )),
        }
    }
}

impl std::fmt::Display for Verify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verify::Always => "always",
            Verify::Cached => "cached",
            Verify::Never => "never",
        })
    }
}

/// A policy with the cache file it uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    pub mode: Verify,
    /// `None`: the default location (see the module docs); no location found disables caching.
    pub cache_file: Option<PathBuf>,
}

impl Default for Verification {
    fn default() -> Self {
        Verification {
            mode: Verify::Cached,
            cache_file: None,
        }
    }
}

impl Verification {
    pub fn new(mode: Verify) -> Self {
        Verification {
            mode,
            cache_file: None,
        }
    }

    /// The cache file this policy reads and writes, if any.
    pub fn cache_path(&self) -> Option<PathBuf> {
        if self.mode != Verify::Cached {
            return None;
        }
        if let Some(path) = &self.cache_file {
            return Some(path.clone());
        }
        let dir = env_dir("UNCLIP_CACHE_DIR").or_else(user_cache_dir)?;
        Some(dir.join("verified.json"))
    }
}

/// The user's unclip cache directory: `$XDG_CACHE_HOME/unclip`, else `~/.cache/unclip`; `None`
/// when neither variable is set. The verification cache, and the CLI's graph and OpenVINO
/// caches, live under it.
pub fn user_cache_dir() -> Option<PathBuf> {
    env_dir("XDG_CACHE_HOME")
        .map(|d| d.join("unclip"))
        .or_else(|| env_dir("HOME").map(|d| d.join(".cache").join("unclip")))
}

/// A directory named by an environment variable (unset or empty: none).
fn env_dir(key: &str) -> Option<PathBuf> {
    std::env::var_os(key)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// What identifies a file's content without reading it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Identity {
    size: u64,
    mtime_ns: i64,
    device: u64,
    inode: u64,
}

impl Identity {
    pub(crate) fn of(path: &Path) -> Option<Identity> {
        let meta = std::fs::metadata(path).ok()?;
        let mtime = meta.modified().ok()?;
        let mtime_ns = match mtime.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i64,
            Err(e) => -(e.duration().as_nanos() as i64),
        };
        #[cfg(unix)]
        let (device, inode) = {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        };
        #[cfg(not(unix))]
        let (device, inode) = (0, 0);
        Some(Identity {
            size: meta.len(),
            mtime_ns,
            device,
            inode,
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    identity: Identity,
    sha256: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    /// Canonical path → the identity it had when its sha256 was computed.
    files: BTreeMap<String, Entry>,
}

/// The verified-files record, loaded once per bundle open.
pub(crate) struct VerifiedCache {
    path: Option<PathBuf>,
    file: Mutex<CacheFile>,
    dirty: Mutex<bool>,
}

impl VerifiedCache {
    pub(crate) fn load(verification: &Verification) -> VerifiedCache {
        let path = verification.cache_path();
        let file = path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        VerifiedCache {
            path,
            file: Mutex::new(file),
            dirty: Mutex::new(false),
        }
    }

    fn key(path: &Path) -> Option<String> {
        Some(
            std::fs::canonicalize(path)
                .ok()?
                .to_string_lossy()
                .into_owned(),
        )
    }

    /// Whether `path` was verified to have `sha256` and has not changed since.
    pub(crate) fn is_verified(&self, path: &Path, sha256: &str) -> bool {
        if self.path.is_none() {
            return false;
        }
        let (Some(key), Some(identity)) = (Self::key(path), Identity::of(path)) else {
            return false;
        };
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.files
            .get(&key)
            .is_some_and(|e| e.identity == identity && e.sha256.eq_ignore_ascii_case(sha256))
    }

    /// Records that `path` (with the identity it had before hashing) hashes to `sha256`.
    pub(crate) fn record(&self, path: &Path, identity: Option<Identity>, sha256: &str) {
        if self.path.is_none() {
            return;
        }
        // A file that changed while it was hashed is not recorded.
        let (Some(key), Some(before)) = (Self::key(path), identity) else {
            return;
        };
        if Identity::of(path).as_ref() != Some(&before) {
            return;
        }
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.files.insert(
            key,
            Entry {
                identity: before,
                sha256: sha256.to_ascii_lowercase(),
            },
        );
        *self.dirty.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }

    /// Writes the record back if it changed. Failure is logged, never an error: the cache is
    /// an optimization.
    pub(crate) fn save(&self) {
        let Some(path) = &self.path else { return };
        if !*self.dirty.lock().unwrap_or_else(|e| e.into_inner()) {
            return;
        }
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let result = (|| -> Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            let bytes = serde_json::to_vec_pretty(&*file)
                .map_err(|e| Error::invalid("verify cache", e.to_string()))?;
            crate::image_io::write_atomic(path, &bytes)
        })();
        if let Err(e) = result {
            tracing::warn!("cannot write the verified-files cache: {e}");
        }
    }
}
