//! ABI 2 to 7 of the C interface, through the exported functions: the appended scheduler, η
//! and size fields (ABI 2), precision and OpenVINO fields (ABI 3), low-memory mode (ABI 4), the
//! int8 precision (ABI 6), width/height, DDPM and the model family (ABI 7, Kandinsky 2.2), and
//! hosts built against older ABIs (shorter params structs) still served.

mod common;

use std::ffi::CString;

use unclip::capi::*;
use unclip::noise::TorchGenerator;
use unclip::pipeline::{no_observer, TextToImage};
use unclip::schedulers::SchedulerKind;

/// Runs `unclip_generate` for one prompt; returns the status and the first image's RGB bytes.
unsafe fn generate(
    pipeline: *const unclip_pipeline,
    params: *const unclip_generate_params,
) -> (unclip_status, Option<(u32, Vec<u8>)>) {
    let prompt = CString::new("a purple triangle").unwrap();
    let prompts = [prompt.as_ptr()];
    let mut images: *mut unclip_image = std::ptr::null_mut();
    let mut count = 0usize;
    let status = unclip_generate(
        pipeline,
        prompts.as_ptr(),
        1,
        params,
        &mut images,
        &mut count,
    );
    if status != unclip_status::UNCLIP_OK {
        return (status, None);
    }
    let image = &*images;
    let len = (image.width * image.height * image.channels) as usize;
    let bytes = std::slice::from_raw_parts(image.data, len).to_vec();
    let side = image.width;
    unclip_image_free(images, count);
    (status, Some((side, bytes)))
}

#[test]
fn schedulers_eta_size_and_abi1_hosts() {
    unsafe {
        assert_eq!(unclip_abi_version(), 7);
        let mut rp = std::mem::zeroed::<unclip_runtime_params>();
        unclip_runtime_params_init(&mut rp);
        let (runtime, pipeline) = tiny_pipeline(&rp);

        let mut params = std::mem::zeroed::<unclip_generate_params>();
        unclip_generate_params_init(&mut params);
        params.rng = 1; // torch
        params.seed = 8;
        params.prior_steps = 2;
        params.decoder_steps = 3;
        params.super_res_steps = 2;
        let (_, defaults) = generate(pipeline, &params);
        let (side, defaults) = defaults.unwrap();
        assert_eq!(side, 256);

        // An ABI 1 host: struct_size of the old struct, garbage after it is never read.
        let mut old = params;
        old.struct_size = GENERATE_PARAMS_V1_SIZE;
        old.decoder_scheduler = 99;
        old.output_size = 12345;
        let (status, image) = generate(pipeline, &old);
        assert_eq!(status, unclip_status::UNCLIP_OK);
        assert_eq!(image.unwrap().1, defaults, "ABI 1 callers get the defaults");
        let mut short = params;
        short.struct_size = GENERATE_PARAMS_V1_SIZE - 8;
        assert_eq!(
            generate(pipeline, &short).0,
            unclip_status::UNCLIP_INVALID_ARGUMENT
        );

        // DDIM with η on the decoder, DPM++ on the prior, a 64×64 image: what the library makes.
        let mut custom = params;
        custom.prior_scheduler = 3;
        custom.decoder_scheduler = 2;
        custom.eta = 0.5;
        custom.output_size = 64;
        let (status, image) = generate(pipeline, &custom);
        assert_eq!(status, unclip_status::UNCLIP_OK);
        let (side, bytes) = image.unwrap();
        assert_eq!(side, 64);
        let library = unclip::Pipeline::load(&common::runtime(), common::tiny_bundle())
            .unwrap()
            .generate(
                &TextToImage {
                    prompts: vec!["a purple triangle".into()],
                    prior_steps: Some(2),
                    decoder_steps: Some(3),
                    super_res_steps: vec![2],
                    prior_scheduler: Some(SchedulerKind::DpmSolverPP),
                    decoder_scheduler: Some(SchedulerKind::Ddim),
                    eta: Some(0.5),
                    output_size: Some(64),
                    ..Default::default()
                },
                &mut TorchGenerator::new(8),
                &mut no_observer(),
            )
            .unwrap();
        assert!(bytes == library.images[0].as_raw().as_slice());

        for bad in [
            unclip_generate_params {
                decoder_scheduler: 7,
                ..params
            },
            unclip_generate_params { eta: 0.5, ..params },
            unclip_generate_params {
                output_size: 100,
                ..params
            },
        ] {
            assert_eq!(
                generate(pipeline, &bad).0,
                unclip_status::UNCLIP_INVALID_ARGUMENT
            );
            let message = std::ffi::CStr::from_ptr(unclip_last_error_message());
            assert!(!message.to_bytes().is_empty());
        }
        unclip_pipeline_free(pipeline);
        unclip_runtime_free(runtime);
    }
}

/// `unclip_runtime_create` with `params`: the status and the last error message.
unsafe fn create(params: &unclip_runtime_params) -> (unclip_status, String) {
    let mut runtime: *mut unclip_runtime = std::ptr::null_mut();
    let status = unclip_runtime_create(params, &mut runtime);
    let message = std::ffi::CStr::from_ptr(unclip_last_error_message())
        .to_string_lossy()
        .into_owned();
    unclip_runtime_free(runtime);
    (status, message)
}

#[test]
fn abi3_precision_and_openvino_fields() {
    unsafe {
        let mut rp = std::mem::zeroed::<unclip_runtime_params>();
        unclip_runtime_params_init(&mut rp);
        assert_eq!(rp.precision, 0);
        assert!(rp.openvino_device.is_null());
        assert_eq!(create(&rp).0, unclip_status::UNCLIP_OK);

        // An ABI 2 host: the fields after tensorrt_max_workspace_size are never read.
        let mut old = rp;
        old.struct_size = RUNTIME_PARAMS_V2_SIZE;
        old.precision = 77;
        old.device = 0;
        assert_eq!(create(&old).0, unclip_status::UNCLIP_OK);
        old.struct_size = RUNTIME_PARAMS_V2_SIZE - 8;
        let (status, message) = create(&old);
        assert_eq!(status, unclip_status::UNCLIP_INVALID_ARGUMENT);
        assert!(message.contains("struct_size"), "{message}");

        // Precision is checked against the device; auto and int8 (ABI 6) run on the CPU
        // provider, int8 on no other.
        for (precision, status, says) in [
            (3, unclip_status::UNCLIP_OK, ""),
            (4, unclip_status::UNCLIP_OK, ""),
            (
                1,
                unclip_status::UNCLIP_INVALID_ARGUMENT,
                "--device openvino",
            ),
            (
                9,
                unclip_status::UNCLIP_INVALID_ARGUMENT,
                "9 is not a unclip_precision",
            ),
        ] {
            let (got, message) = create(&unclip_runtime_params { precision, ..rp });
            assert_eq!(got, status, "{message}");
            assert!(message.contains(says), "{message}");
        }

        // OpenVINO: a plugin that is not there, and a device name OpenVINO does not have.
        let missing =
            CString::new("/nonexistent/libonnxruntime_providers_openvino_plugin.so").unwrap();
        let (status, message) = create(&unclip_runtime_params {
            device: 3,
            openvino_plugin_path: missing.as_ptr(),
            ..rp
        });
        assert_eq!(status, unclip_status::UNCLIP_PROVIDER_UNAVAILABLE);
        assert!(
            message.contains("no plugin library at /nonexistent/")
                && message.contains("scripts/setup-ort --openvino"),
            "{message}"
        );
        let (status, message) = create(&unclip_runtime_params {
            device: 1,
            precision: 4,
            ..rp
        });
        assert_eq!(status, unclip_status::UNCLIP_INVALID_ARGUMENT);
        assert!(
            message.contains("int8 models run on --device cpu"),
            "{message}"
        );
        let tpu = CString::new("TPU").unwrap();
        let (status, message) = create(&unclip_runtime_params {
            device: 3,
            openvino_device: tpu.as_ptr(),
            ..rp
        });
        assert_eq!(status, unclip_status::UNCLIP_INVALID_ARGUMENT);
        assert!(message.contains("openvino:TPU"), "{message}");
    }
}

/// A runtime from `runtime_params` and a pipeline on `models/tiny`; the caller frees both.
unsafe fn tiny_pipeline(
    runtime_params: &unclip_runtime_params,
) -> (*mut unclip_runtime, *mut unclip_pipeline) {
    load_pipeline(runtime_params, &common::tiny_bundle())
}

unsafe fn load_pipeline(
    runtime_params: &unclip_runtime_params,
    bundle: &std::path::Path,
) -> (*mut unclip_runtime, *mut unclip_pipeline) {
    let mut runtime: *mut unclip_runtime = std::ptr::null_mut();
    assert_eq!(
        unclip_runtime_create(runtime_params, &mut runtime),
        unclip_status::UNCLIP_OK
    );
    let dir = CString::new(bundle.to_str().unwrap()).unwrap();
    let mut pipeline: *mut unclip_pipeline = std::ptr::null_mut();
    assert_eq!(
        unclip_pipeline_load(runtime, dir.as_ptr(), &mut pipeline),
        unclip_status::UNCLIP_OK
    );
    (runtime, pipeline)
}

/// Runtime and pipeline on `models/tiny` from `params`, then one generation: its status, the
/// first image's bytes; the handles are freed.
unsafe fn generate_with_runtime(
    runtime_params: &unclip_runtime_params,
    params: &unclip_generate_params,
) -> (unclip_status, Option<(u32, Vec<u8>)>) {
    let (runtime, pipeline) = tiny_pipeline(runtime_params);
    let generated = generate(pipeline, params);
    unclip_pipeline_free(pipeline);
    unclip_runtime_free(runtime);
    generated
}

/// Generate params for the torch generator with `seed`: 2 prior steps, `decoder_steps`, 2
/// super-resolution steps.
unsafe fn torch_params(seed: u64, decoder_steps: u32) -> unclip_generate_params {
    let mut params = std::mem::zeroed::<unclip_generate_params>();
    unclip_generate_params_init(&mut params);
    params.rng = 1; // torch
    params.seed = seed;
    params.prior_steps = 2;
    params.decoder_steps = decoder_steps;
    params.super_res_steps = 2;
    params
}

#[test]
fn abi4_low_memory_field_and_abi3_hosts() {
    unsafe {
        let mut rp = std::mem::zeroed::<unclip_runtime_params>();
        unclip_runtime_params_init(&mut rp);
        assert_eq!(rp.low_memory, 0);
        let full = std::mem::size_of::<unclip_runtime_params>();
        assert_eq!(rp.struct_size, full);
        #[cfg(target_pointer_width = "64")]
        assert_eq!(
            (
                RUNTIME_PARAMS_V2_SIZE,
                RUNTIME_PARAMS_V3_SIZE,
                RUNTIME_PARAMS_V4_SIZE,
                full
            ),
            (48, 80, 88, 96)
        );

        // An ABI 3 host: its struct ends before low_memory, whatever follows is never read
        // (src/capi/tests.rs checks the runtime it gets is not in low-memory mode).
        let old = unclip_runtime_params {
            struct_size: RUNTIME_PARAMS_V3_SIZE,
            low_memory: 1,
            ..rp
        };
        assert_eq!(create(&old), (unclip_status::UNCLIP_OK, String::new()));

        // Between the ABI 3 and ABI 4 sizes: refused, naming the sizes this library takes.
        let torn = unclip_runtime_params {
            struct_size: RUNTIME_PARAMS_V3_SIZE + 4,
            ..rp
        };
        assert_eq!(
            create(&torn),
            (
                unclip_status::UNCLIP_INVALID_ARGUMENT,
                format!(
                    "invalid unclip_runtime_params: struct_size is {}, which is no ABI version's \
                     size of this struct ([{RUNTIME_PARAMS_V2_SIZE}, {RUNTIME_PARAMS_V3_SIZE}, \
                     {RUNTIME_PARAMS_V4_SIZE}, {full}] or more): initialize it with its *_params_init()",
                    RUNTIME_PARAMS_V3_SIZE + 4
                )
            )
        );

        // Low-memory mode makes the same image, byte for byte.
        let params = torch_params(11, 3);
        let (status, normal) = generate_with_runtime(&rp, &params);
        assert_eq!(status, unclip_status::UNCLIP_OK);
        let (status, low) = generate_with_runtime(
            &unclip_runtime_params {
                low_memory: 1,
                ..rp
            },
            &params,
        );
        assert_eq!(status, unclip_status::UNCLIP_OK);
        let (normal, low) = (normal.unwrap(), low.unwrap());
        assert_eq!((normal.0, low.0), (256, 256));
        assert_eq!(normal.1.len(), 256 * 256 * 3);
        assert!(low.1 == normal.1, "low_memory = 1 changed the image");
    }
}

#[test]
fn abi5_graph_cache_dir_and_abi4_hosts() {
    unsafe {
        let mut rp = std::mem::zeroed::<unclip_runtime_params>();
        unclip_runtime_params_init(&mut rp);
        assert!(rp.graph_cache_dir.is_null());
        let dir = std::env::temp_dir().join(format!("unclip-capi-graphs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let dir_c = CString::new(dir.to_str().unwrap()).unwrap();

        // An ABI 4 host: its struct ends before graph_cache_dir, which is never read.
        let old = unclip_runtime_params {
            struct_size: RUNTIME_PARAMS_V4_SIZE,
            graph_cache_dir: dir_c.as_ptr(),
            ..rp
        };
        let params = torch_params(12, 2);
        let (status, plain) = generate_with_runtime(&old, &params);
        assert_eq!(status, unclip_status::UNCLIP_OK);
        assert!(!dir.exists(), "an ABI 4 struct_size read graph_cache_dir");

        // ABI 5: the graphs are saved there, and the image is the same byte for byte.
        let cached = unclip_runtime_params {
            graph_cache_dir: dir_c.as_ptr(),
            ..rp
        };
        for _ in 0..2 {
            let (status, image) = generate_with_runtime(&cached, &params);
            assert_eq!(status, unclip_status::UNCLIP_OK);
            assert!(image == plain, "graph_cache_dir changed the image");
        }
        let graphs = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".onnx")
            })
            .count();
        assert!(graphs >= 6, "{graphs} graphs saved");
        std::fs::remove_dir_all(&dir).unwrap();

        // Off the CPU device it is refused, naming the device's own cache.
        let openvino = unclip_runtime_params {
            device: 3,
            graph_cache_dir: dir_c.as_ptr(),
            ..rp
        };
        let (status, message) = create(&openvino);
        assert_eq!(status, unclip_status::UNCLIP_INVALID_ARGUMENT, "{message}");
        assert!(message.contains("--openvino-cache-dir"), "{message}");
    }
}

/// ABI 7: a Kandinsky 2.2 bundle from C: its family, a non-square image from width/height with
/// the DDPM decoder scheduler — the library's bytes; an ABI 6 host (the shorter struct, whose
/// tail padding holds garbage where `width` now is) gets the default size; bad combinations are
/// refused.
#[test]
fn abi7_width_height_ddpm_and_family() {
    unsafe {
        let mut rp = std::mem::zeroed::<unclip_runtime_params>();
        unclip_runtime_params_init(&mut rp);
        let bundle = common::repo().join("models/tiny-kandinsky");
        let (runtime, pipeline) = load_pipeline(&rp, &bundle);
        let family = std::ffi::CStr::from_ptr(unclip_pipeline_family(pipeline));
        assert_eq!(family.to_str().unwrap(), "kandinsky2.2");
        assert!(unclip_pipeline_family(std::ptr::null()).is_null());
        assert_eq!(unclip_pipeline_image_size(pipeline), 512);

        let mut params = std::mem::zeroed::<unclip_generate_params>();
        unclip_generate_params_init(&mut params);
        assert_eq!((params.width, params.height), (0, 0));
        params.rng = 1;
        params.seed = 3;
        params.prior_steps = 2;
        params.decoder_steps = 3;
        params.decoder_scheduler = 4; // DDPM
        params.width = 128;
        params.height = 64;
        let (status, image) = generate(pipeline, &params);
        assert_eq!(status, unclip_status::UNCLIP_OK);
        let (width, bytes) = image.unwrap();
        assert_eq!((width, bytes.len()), (128, 128 * 64 * 3));
        let library = unclip::Pipeline::load(&common::runtime(), &bundle)
            .unwrap()
            .generate(
                &TextToImage {
                    prompts: vec!["a purple triangle".into()],
                    prior_steps: Some(2),
                    decoder_steps: Some(3),
                    decoder_scheduler: Some(SchedulerKind::Ddpm),
                    output_size: Some(128),
                    output_height: Some(64),
                    ..Default::default()
                },
                &mut TorchGenerator::new(3),
                &mut no_observer(),
            )
            .unwrap();
        assert!(bytes == library.images[0].as_raw().as_slice());

        // An ABI 2-6 host: struct_size of the old struct; its padding is never read as width.
        let mut old = params;
        old.struct_size = GENERATE_PARAMS_V2_SIZE;
        old.width = 77;
        old.height = 9;
        old.output_size = 64;
        let (status, image) = generate(pipeline, &old);
        assert_eq!(status, unclip_status::UNCLIP_OK);
        assert_eq!(image.unwrap().1.len(), 64 * 64 * 3);

        for bad in [
            unclip_generate_params {
                width: 100,
                ..params
            },
            unclip_generate_params {
                width: 0,
                output_size: 0,
                ..params
            },
            unclip_generate_params {
                output_size: 64,
                ..params
            },
            unclip_generate_params {
                decoder_scheduler: 5,
                ..params
            },
        ] {
            assert_eq!(
                generate(pipeline, &bad).0,
                unclip_status::UNCLIP_INVALID_ARGUMENT
            );
        }
        unclip_pipeline_free(pipeline);
        unclip_runtime_free(runtime);
    }
}
