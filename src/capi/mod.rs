//! The C ABI (`include/unclip.h`): opaque handles, `struct_size`-versioned parameter
//! structs, a status code from every call, the last error message per thread, progress
//! callbacks that can cancel, NULL-safe frees. No panic crosses the boundary: every entry point
//! runs inside `catch_unwind` and reports a panic as `UNCLIP_INTERNAL`.
//!
//! Thread safety: a runtime and a pipeline may be used from several threads at once
//! (`Pipeline` is `Send + Sync`; calls share its sessions and take turns per model call).
//! The last error message is per thread.
//!
//! This module owns what every entry point shares: the status and last-error plumbing (`guard`),
//! C string arguments, the opaque handles and the version queries. The entry points live by what
//! they act on: `params.rs` (the versioned parameter structs), `runtime.rs`, `pipeline.rs`
//! (loading and generating), `embeddings.rs` (encoding and mixing embeddings), `images.rs`
//! (images passed in and out); `types.rs` holds the `#[repr(C)]` types.

#![allow(clippy::missing_safety_doc)] // every function's safety contract is in unclip.h
#![allow(non_camel_case_types)] // the C names

mod embeddings;
mod images;
mod params;
mod pipeline;
mod runtime;
#[cfg(test)]
mod tests;
mod types;

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::{Error, ErrorKind, Pipeline, Runtime};

pub use embeddings::{unclip_encode_image, unclip_encode_text, unclip_slerp};
pub use images::unclip_image_free;
pub use params::{unclip_generate_params_init, unclip_runtime_params_init};
pub use pipeline::{
    unclip_generate, unclip_generate_from_embeddings, unclip_generate_variations,
    unclip_pipeline_embedding_dim, unclip_pipeline_family, unclip_pipeline_free,
    unclip_pipeline_image_size, unclip_pipeline_load,
};
pub use runtime::{unclip_runtime_create, unclip_runtime_free};
pub use types::*;

/// The ABI version of this library (`UNCLIP_ABI_VERSION` in the header).
pub const ABI_VERSION: u32 = 7;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|cell| *cell.borrow_mut() = message);
}

/// The status for a library error: [`Error::kind`], the classification every shell shares.
fn status_of(error: &Error) -> unclip_status {
    match error.kind() {
        ErrorKind::InvalidInput => unclip_status::UNCLIP_INVALID_ARGUMENT,
        ErrorKind::Cancelled => unclip_status::UNCLIP_CANCELLED,
        ErrorKind::NotFound => unclip_status::UNCLIP_NOT_FOUND,
        ErrorKind::BundleInvalid => unclip_status::UNCLIP_BUNDLE_INVALID,
        ErrorKind::ProviderUnavailable => unclip_status::UNCLIP_PROVIDER_UNAVAILABLE,
        ErrorKind::Runtime => unclip_status::UNCLIP_RUNTIME_ERROR,
        ErrorKind::Io => unclip_status::UNCLIP_IO_ERROR,
        ErrorKind::Internal => unclip_status::UNCLIP_INTERNAL,
    }
}

/// Runs `body`, turning errors and panics into a status and the thread's last error.
fn guard(body: impl FnOnce() -> Result<(), Error>) -> unclip_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            set_last_error("");
            unclip_status::UNCLIP_OK
        }
        Ok(Err(error)) => {
            set_last_error(&error.to_string());
            status_of(&error)
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!(
                "internal error (a bug in unclip, please report it): {message}"
            ));
            unclip_status::UNCLIP_INTERNAL
        }
    }
}

fn invalid(name: &'static str, reason: &str) -> Error {
    Error::invalid(name, reason.to_string())
}

/// Reads a NUL-terminated UTF-8 string; NULL → `None`.
unsafe fn opt_str<'a>(ptr: *const c_char, name: &'static str) -> Result<Option<&'a str>, Error> {
    if ptr.is_null() {
        return Ok(None);
    }
    CStr::from_ptr(ptr)
        .to_str()
        .map(Some)
        .map_err(|_| invalid(name, "is not valid UTF-8"))
}

unsafe fn req_str<'a>(ptr: *const c_char, name: &'static str) -> Result<&'a str, Error> {
    opt_str(ptr, name)?.ok_or_else(|| invalid(name, "is NULL"))
}

#[no_mangle]
pub extern "C" fn unclip_abi_version() -> u32 {
    ABI_VERSION
}

#[no_mangle]
pub extern "C" fn unclip_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[no_mangle]
pub extern "C" fn unclip_last_error_message() -> *const c_char {
    LAST_ERROR.with(|cell| cell.borrow().as_ptr())
}

/// Opaque runtime handle.
pub struct unclip_runtime {
    runtime: Runtime,
}

/// Opaque pipeline handle.
pub struct unclip_pipeline {
    pipeline: Pipeline,
}
