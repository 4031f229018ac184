//! Noise sources: the torch-compatible generator equals every vector PyTorch produced
//! (f32 bits, not a tolerance); the fast generator is deterministic and standard normal.

mod common;

use unclip::noise::{noise_source, FastNoise, NoiseSource, RecordedNoise, RngKind, TorchGenerator};

#[test]
fn torch_generator_is_bit_exact_with_pytorch() {
    let dir = common::repo().join("tests/fixtures/rng");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let mut values = 0;
    for run in manifest["runs"].as_array().unwrap() {
        let name = run["name"].as_str().unwrap();
        let mut generator = TorchGenerator::new(run["seed"].as_u64().unwrap());
        for draw in run["draws"].as_array().unwrap() {
            let shape: Vec<usize> = draw["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let expected = common::read_f32(&dir.join(draw["file"].as_str().unwrap()));
            let actual = generator.randn(&shape).unwrap();
            assert_eq!(actual.shape(), expected.shape());
            if let Some((i, (a, e))) = actual
                .iter()
                .zip(expected.iter())
                .enumerate()
                .find(|(_, (a, e))| a.to_bits() != e.to_bits())
            {
                panic!("{name} {shape:?}: first mismatch at {i}: {a:e} vs torch {e:e}");
            }
            values += actual.len();
        }
    }
    assert!(values > 200_000, "{values} values compared");
}

#[test]
fn seeds_use_the_low_32_bits() {
    let a = TorchGenerator::new(5).randn(&[40]).unwrap();
    let b = TorchGenerator::new((1u64 << 32) + 5).randn(&[40]).unwrap();
    assert_eq!(a, b);
}

#[test]
fn fast_noise_is_deterministic_and_standard_normal() {
    let a = FastNoise::new(7).randn(&[1 << 20]).unwrap();
    let b = FastNoise::new(7).randn(&[1 << 20]).unwrap();
    assert_eq!(a, b);
    let n = a.len() as f64;
    let mean = a.iter().map(|x| *x as f64).sum::<f64>() / n;
    let var = a.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / n;
    let kurt = a.iter().map(|x| (*x as f64 - mean).powi(4)).sum::<f64>() / n / (var * var);
    assert!(mean.abs() < 5e-3, "mean {mean}");
    assert!((var - 1.0).abs() < 5e-3, "variance {var}");
    assert!((kurt - 3.0).abs() < 3e-2, "kurtosis {kurt}");
    let beyond3 = a.iter().filter(|x| x.abs() > 3.0).count() as f64 / n;
    assert!((beyond3 - 0.0027).abs() < 3e-4, "P(|x| > 3) = {beyond3}");
}

#[test]
fn fast_noise_differs_across_seeds_and_calls_and_matches_across_thread_counts() {
    let mut g = FastNoise::new(1);
    let first = g.randn(&[4096]).unwrap();
    let second = g.randn(&[4096]).unwrap();
    assert_ne!(first, second);
    assert_ne!(first, FastNoise::new(2).randn(&[4096]).unwrap());
    // Large draws run in parallel chunks: a one-thread pool gives the same bits.
    let big_parallel = FastNoise::new(3).randn(&[3, 256, 256]).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let big_serial = pool.install(|| FastNoise::new(3).randn(&[3, 256, 256]).unwrap());
    assert_eq!(big_parallel, big_serial);
    // A prefix property: element i does not depend on the tensor size.
    let short = FastNoise::new(3).randn(&[100]).unwrap();
    assert_eq!(
        short.as_slice().unwrap(),
        &big_parallel.as_slice().unwrap()[..100]
    );
}

#[test]
fn recorded_noise_replays_and_checks_shapes() {
    let a = ndarray::ArrayD::from_elem(vec![2, 3], 1.5f32);
    let mut recorded = RecordedNoise::from_arrays(vec![a.clone()]);
    assert!(recorded.randn(&[3, 2]).is_err(), "wrong shape");
    assert_eq!(recorded.randn(&[2, 3]).unwrap(), a);
    assert_eq!(recorded.remaining(), 0);
    let err = recorded.randn(&[2, 3]).unwrap_err();
    assert!(matches!(err, unclip::Error::RecordedNoise(_)), "{err}");
    let from_dir = RecordedNoise::from_dir(&common::ref_dir().join("basic")).unwrap();
    assert_eq!(from_dir.remaining(), 12);
}

#[test]
fn rng_kinds_parse() {
    assert_eq!("torch".parse::<RngKind>().unwrap(), RngKind::Torch);
    assert_eq!("FAST".parse::<RngKind>().unwrap(), RngKind::Fast);
    assert!("mt".parse::<RngKind>().is_err());
    let mut g = noise_source(RngKind::Torch, 42);
    assert_eq!(
        g.randn(&[16]).unwrap(),
        TorchGenerator::new(42).randn(&[16]).unwrap()
    );
}
