//! Faults a user meets, each reproduced: a `kill -9` at any moment of a run leaves no partial or
//! corrupt image under an output name; a full disk is a typed error naming the path, exit 1 and
//! nothing written; caches on a full disk cost a warning and the run goes on. The disk tests mount
//! a small tmpfs and are skipped, with a message, where this process may not mount one.
#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

/// Images per run in the kill test: the outputs are written one after the other at the end.
const IMAGES: usize = 3;
/// `kill -9` trials (the bar).
const KILLS: usize = 50;

fn unclip() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_unclip"));
    command.env_remove("UNCLIP_MODEL");
    command
}

fn model() -> String {
    common::tiny_bundle().display().to_string()
}

/// A short tiny-bundle run (64², the decoder's size) writing `IMAGES` images as `out_0.png`, …;
/// no cache written, so each trial is the same work and nothing outside `dir` changes.
fn generate(dir: &Path) -> Command {
    let mut command = unclip();
    command.args([
        "-q",
        "generate",
        "a red circle on a blue background",
        "--model",
        &model(),
        "--seed",
        "7",
        "--num-images",
        &IMAGES.to_string(),
        "--prior-steps",
        "5",
        "--decoder-steps",
        "5",
        "--size",
        "64",
        "--graph-cache-dir",
        "none",
        "--verify",
        "never",
        "-o",
    ]);
    command.arg(dir.join("out.png"));
    command
}

fn output_name(i: usize) -> String {
    format!("out_{i}.png")
}

#[test]
fn kill_9_at_any_moment_leaves_no_partial_image() {
    // The reference run: its images, and how long a run takes here.
    let reference_dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let done = generate(reference_dir.path()).output().unwrap();
    let duration = started.elapsed();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let reference: Vec<Vec<u8>> = (0..IMAGES)
        .map(|i| std::fs::read(reference_dir.path().join(output_name(i))).unwrap())
        .collect();

    // Kill points spread evenly over [0, 2 × duration) (golden-ratio sequence: every part of the
    // run is hit, reproducibly; up to twice the reference's time, as runs here may be slower while
    // other tests run), each in a fresh directory.
    let mut outcomes = [0usize; IMAGES + 1];
    let mut temporaries_left = 0;
    for trial in 0..KILLS {
        let fraction = (trial as f64 * 0.618_033_988_75).fract() * 2.0;
        let dir = tempfile::tempdir().unwrap();
        let mut child = generate(dir.path()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(duration.mul_f64(fraction));
        let _ = child.kill(); // SIGKILL; an error only means it had exited already
        child.wait().unwrap();

        let mut complete = 0;
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if let Some(i) = (0..IMAGES).find(|&i| name == output_name(i)) {
                let bytes = std::fs::read(dir.path().join(&name)).unwrap();
                assert!(
                    bytes == reference[i],
                    "trial {trial} (killed at {fraction:.2} of a run): {name} differs from the \
                     complete image ({} bytes, {} expected)",
                    bytes.len(),
                    reference[i].len()
                );
                complete += 1;
            } else {
                // The killed process's temporary file, never an output name.
                assert!(
                    (0..IMAGES).any(|i| name.starts_with(&format!("{}.tmp-", output_name(i)))),
                    "trial {trial}: unexpected file {name}"
                );
                temporaries_left += 1;
            }
        }
        outcomes[complete] += 1;
    }
    eprintln!(
        "{KILLS} kills over a {:.2} s run: trials with 0..={IMAGES} complete images {outcomes:?}, \
         temporary files left {temporaries_left}",
        duration.as_secs_f64()
    );
    // The kills landed both before the images were written and after: the window was exercised.
    assert!(outcomes[0] > 0 && outcomes[IMAGES] > 0, "{outcomes:?}");
}

/// A tmpfs of `size` mounted on a temporary directory, unmounted on drop; `None` (and a message)
/// where mounting is not permitted.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)");
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system: a file as large as it takes.
    fn fill(&self) -> PathBuf {
        let filler = self.path().join("filler");
        let _ = std::fs::write(&filler, vec![0u8; 1 << 20]); // ENOSPC expected
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn full_disk_is_a_typed_error_and_writes_nothing() {
    let Some(disk) = Tmpfs::mount("64k") else {
        return;
    };
    disk.fill();
    let out = disk.path().join("out.png");
    let output = unclip()
        .args([
            "-q",
            "generate",
            "a red circle",
            "--model",
            &model(),
            "--seed",
            "1",
            "--prior-steps",
            "2",
            "--decoder-steps",
            "2",
            "--sr-steps",
            "2",
            "--graph-cache-dir",
            "none",
            "-o",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(
        message.contains(&out.display().to_string()) && message.contains("No space left on device"),
        "{message}"
    );
    assert_eq!(message.trim().lines().count(), 1, "one line: {message}");
    assert_eq!(
        names(disk.path()),
        ["filler"],
        "nothing written, no temporary left"
    );
}

#[test]
fn caches_on_a_full_disk_cost_a_warning_and_the_run_goes_on() {
    let Some(disk) = Tmpfs::mount("64k") else {
        return;
    };
    disk.fill();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = elsewhere.path().join("out.png");
    // The verified-files cache under $XDG_CACHE_HOME and the graph cache, both on the full disk.
    let output = unclip()
        .env("XDG_CACHE_HOME", disk.path())
        .args([
            "generate",
            "a red circle",
            "--model",
            &model(),
            "--seed",
            "1",
            "--prior-steps",
            "2",
            "--decoder-steps",
            "2",
            "--sr-steps",
            "2",
            "--verify",
            "cached",
            "--graph-cache-dir",
        ])
        .arg(disk.path().join("graphs"))
        .arg("-o")
        .arg(&out)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let message = stderr(&output);
    assert!(output.status.success(), "{message}");
    assert!(out.exists());
    assert!(
        message.contains("cannot write the verified-files cache"),
        "no warning about the verification cache: {message}"
    );
    assert!(
        message.contains("graph cache") || message.contains("saving the optimized graph failed"),
        "no warning about the graph cache: {message}"
    );
}
