//! ONNX Runtime's optimized graphs kept on disk (`--graph-cache-dir`, CPU device).
//!
//! Creating a session runs ORT's graph optimizer over the whole model: constant folding, fusions
//! and, at level All, the NCHWc layout transformer that re-lays out every convolution's weights.
//! ORT can serialize the graph it ends with (`SessionOptions::optimized_model_filepath`, "offline
//! mode" in ONNX Runtime's docs, Performance → Graph optimizations); loading that file with
//! optimization off skips the work. The file is tied to the machine that wrote it (ORT warns
//! that an NCHWc graph "should only be used in the same environment the model was optimized
//! in": the block size follows the CPU's vector width), so its name carries a key over the
//! model's content hashes, the ONNX Runtime build and the CPU's model name and flags. A cache
//! file that fails to load, or a save that fails, costs a warning and a normal load, never the
//! session.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::bundle::ModelEntry;

/// Size above which a tensor of the saved graph goes to its external data file: protobuf
/// refuses a single file over 2 GB, and a Karlo-size model is 13.7 GB.
const EXTERNAL_MIN_BYTES: &str = "1024";

/// Where one model's optimized graph lives in the cache directory.
#[derive(Debug)]
pub(crate) struct CachedGraph {
    /// `<dir>/<model>-<key>.onnx`; its weights are beside it in `<file>.data`.
    pub path: PathBuf,
}

impl CachedGraph {
    /// The cache entry of model `name` (manifest `entry`) for this ONNX Runtime build and CPU.
    pub fn new(dir: &Path, name: &str, entry: &ModelEntry, ort_build: &str, cpu: &str) -> Self {
        let mut hasher = Sha256::new();
        for part in [
            "unclip graph cache v1",
            "level=all",
            ort_build,
            cpu,
            &entry.sha256,
        ] {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
        for data in &entry.external_data {
            hasher.update(data.sha256.as_bytes());
            hasher.update([0]);
        }
        let key: String = hasher
            .finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        CachedGraph {
            path: dir.join(format!("{name}-{key}.onnx")),
        }
    }

    /// The saved graph exists (written whole: it is renamed into place last).
    pub fn exists(&self) -> bool {
        self.path.is_file()
    }

    /// The file name of the graph's external data, as the graph refers to it.
    pub fn data_file_name(&self) -> String {
        format!("{}.data", self.file_name())
    }

    /// The graph's file name (`<model>-<key>.onnx`).
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// A fresh staging directory inside the cache directory for this process to write into
    /// (ORT writes the graph and its data file there; [`CachedGraph::publish`] moves them in).
    pub fn staging(&self) -> std::io::Result<PathBuf> {
        let staging = self.dir().join(format!(
            ".staging-{}-{}",
            std::process::id(),
            self.file_name()
        ));
        std::fs::create_dir_all(&staging)?;
        Ok(staging)
    }

    /// Moves a staged graph into place: the data file first, the graph last, so a graph that
    /// exists always has its data; then removes the staging directory.
    pub fn publish(&self, staging: &Path) -> std::io::Result<()> {
        let data = staging.join(self.data_file_name());
        if data.is_file() {
            std::fs::rename(&data, self.dir().join(self.data_file_name()))?;
        }
        std::fs::rename(staging.join(self.file_name()), &self.path)?;
        std::fs::remove_dir_all(staging)
    }

    /// Removes a cache entry that failed to load (best effort).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(self.dir().join(self.data_file_name()));
    }

    /// ORT's session config entries that send the saved graph's weights to one data file.
    pub fn save_config(&self) -> [(&'static str, String); 2] {
        [
            (
                "session.optimized_model_external_initializers_file_name",
                self.data_file_name(),
            ),
            (
                "session.optimized_model_external_initializers_min_size_in_bytes",
                EXTERNAL_MIN_BYTES.to_string(),
            ),
        ]
    }
}

/// What the saved graph depends on in this CPU: its model name and feature flags (the first
/// processor's, from `/proc/cpuinfo`, read once per process; empty elsewhere, where the key then
/// rests on the rest).
pub(crate) fn cpu_identity() -> &'static str {
    static IDENTITY: OnceLock<String> = OnceLock::new();
    IDENTITY.get_or_init(|| {
        std::fs::read_to_string("/proc/cpuinfo")
            .map(|info| cpu_identity_from(&info))
            .unwrap_or_default()
    })
}

fn cpu_identity_from(info: &str) -> String {
    let field = |name: &str| {
        info.lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == name).then(|| value.trim().to_string())
            })
            .unwrap_or_default()
    };
    format!("{}\n{}", field("model name"), field("flags"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::FileEntry;

    fn entry(sha: &str, data: &[&str]) -> ModelEntry {
        ModelEntry {
            int8: None,
            file: "decoder.onnx".into(),
            sha256: sha.into(),
            external_data: data
                .iter()
                .map(|s| FileEntry {
                    file: "decoder.onnx.data".into(),
                    sha256: s.to_string(),
                })
                .collect(),
            inputs: vec![],
            outputs: vec![],
        }
    }

    #[test]
    fn the_key_follows_weights_library_and_cpu() {
        let dir = Path::new("/cache");
        let base = CachedGraph::new(dir, "decoder", &entry("aa", &["bb"]), "ort 1", "cpu 1").path;
        assert_eq!(base.parent(), Some(dir));
        let name = base.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("decoder-") && name.ends_with(".onnx"),
            "{name}"
        );
        assert_eq!(name.len(), "decoder-".len() + 16 + ".onnx".len());
        let same = CachedGraph::new(dir, "decoder", &entry("aa", &["bb"]), "ort 1", "cpu 1").path;
        assert_eq!(base, same);
        for other in [
            CachedGraph::new(dir, "decoder", &entry("ab", &["bb"]), "ort 1", "cpu 1"),
            CachedGraph::new(dir, "decoder", &entry("aa", &["bc"]), "ort 1", "cpu 1"),
            CachedGraph::new(dir, "decoder", &entry("aa", &[]), "ort 1", "cpu 1"),
            CachedGraph::new(dir, "decoder", &entry("aa", &["bb"]), "ort 2", "cpu 1"),
            CachedGraph::new(dir, "decoder", &entry("aa", &["bb"]), "ort 1", "cpu 2"),
        ] {
            assert_ne!(other.path, base);
        }
    }

    #[test]
    fn cpu_identity_reads_the_first_processor() {
        let info = "processor\t: 0\nmodel name\t: Xeon X\nflags\t\t: fpu avx512f amx_bf16\n\n\
                    processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n";
        assert_eq!(cpu_identity_from(info), "Xeon X\nfpu avx512f amx_bf16");
        assert_eq!(cpu_identity_from(""), "\n");
    }

    #[test]
    fn publish_moves_graph_and_data_into_place() {
        let dir = std::env::temp_dir().join(format!("unclip-graph-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cached = CachedGraph::new(&dir, "prior", &entry("aa", &[]), "ort", "cpu");
        assert!(!cached.exists());
        let staging = cached.staging().unwrap();
        std::fs::write(staging.join(cached.file_name()), b"graph").unwrap();
        std::fs::write(staging.join(cached.data_file_name()), b"weights").unwrap();
        cached.publish(&staging).unwrap();
        assert!(cached.exists());
        assert!(!staging.exists());
        assert_eq!(
            std::fs::read(dir.join(cached.data_file_name())).unwrap(),
            b"weights"
        );
        cached.remove();
        assert!(!cached.exists());
        assert!(!dir.join(cached.data_file_name()).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
