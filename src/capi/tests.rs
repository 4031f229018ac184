//! What a host cannot see through the opaque handles: which runtime mode `unclip_runtime_params`
//! produced, and whether the pipeline's sessions are loaded. The host-visible side (sizes,
//! statuses, identical images) is in tests/capi_abi2.rs.

use std::ffi::CString;

use super::params::versioned_copy;
use super::*;

/// `unclip_runtime_create`, `unclip_pipeline_load` on `models/tiny` and one short
/// `unclip_generate`; the handles are the caller's to free.
unsafe fn generate_once(
    runtime_params: &unclip_runtime_params,
) -> (*mut unclip_runtime, *mut unclip_pipeline) {
    let mut runtime = std::ptr::null_mut();
    assert_eq!(
        unclip_runtime_create(runtime_params, &mut runtime),
        unclip_status::UNCLIP_OK
    );
    let dir = CString::new(concat!(env!("CARGO_MANIFEST_DIR"), "/models/tiny")).unwrap();
    let mut pipeline = std::ptr::null_mut();
    assert_eq!(
        unclip_pipeline_load(runtime, dir.as_ptr(), &mut pipeline),
        unclip_status::UNCLIP_OK
    );
    let prompt = CString::new("a green square").unwrap();
    let params = unclip_generate_params {
        prior_steps: 2,
        decoder_steps: 2,
        super_res_steps: 1,
        ..Default::default()
    };
    let (mut images, mut count) = (std::ptr::null_mut(), 0usize);
    assert_eq!(
        unclip_generate(
            pipeline,
            &prompt.as_ptr(),
            1,
            &params,
            &mut images,
            &mut count
        ),
        unclip_status::UNCLIP_OK
    );
    assert_eq!(count, 1);
    unclip_image_free(images, count);
    (runtime, pipeline)
}

/// Whether each of the pipeline's models has a session now.
fn sessions_loaded(pipeline: &Pipeline) -> Vec<(String, bool)> {
    std::iter::once(pipeline.text_encoder().model())
        .chain(std::iter::once(pipeline.prior().model()))
        .chain(pipeline.decoder_models())
        .chain(pipeline.upsamplers().iter().flat_map(|u| u.models()))
        .map(|m| (m.name().to_string(), m.is_loaded()))
        .collect()
}

#[test]
fn low_memory_sessions_exist_only_while_their_stage_runs() {
    let defaults = unclip_runtime_params::default();
    for (low_memory, loaded_after) in [(0, true), (1, false)] {
        let params = unclip_runtime_params {
            low_memory,
            ..defaults
        };
        unsafe {
            let (runtime, pipeline) = generate_once(&params);
            assert_eq!((*runtime).runtime.is_low_memory(), low_memory != 0);
            let sessions = sessions_loaded(&(*pipeline).pipeline);
            assert!(sessions.len() >= 7, "{sessions:?}");
            assert!(
                sessions.iter().all(|(_, loaded)| *loaded == loaded_after),
                "low_memory = {low_memory}, after a generation: {sessions:?}"
            );
            unclip_pipeline_free(pipeline);
            unclip_runtime_free(runtime);
        }
    }
}

#[test]
fn abi3_runtime_params_get_low_memory_off() {
    // Bytes after the ABI 3 struct are the host's, not ours: never read.
    let abi3_host = unclip_runtime_params {
        struct_size: RUNTIME_PARAMS_V3_SIZE,
        low_memory: 1,
        ..Default::default()
    };
    let copy = unsafe { versioned_copy(&abi3_host, "unclip_runtime_params") }.unwrap();
    assert_eq!(copy.low_memory, 0);
    assert_eq!(
        copy.struct_size,
        std::mem::size_of::<unclip_runtime_params>()
    );
    let mut runtime = std::ptr::null_mut();
    unsafe {
        assert_eq!(
            unclip_runtime_create(&abi3_host, &mut runtime),
            unclip_status::UNCLIP_OK
        );
        assert!(!(*runtime).runtime.is_low_memory());
        unclip_runtime_free(runtime);
    }
}
