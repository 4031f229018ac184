//! The `struct_size`-versioned parameter structs: their `*_params_init()` and the checked copy
//! every entry point takes of them, so a host built against an older ABI keeps working.

use super::*;

#[no_mangle]
pub unsafe extern "C" fn unclip_runtime_params_init(params: *mut unclip_runtime_params) {
    if let Some(params) = params.as_mut() {
        *params = unclip_runtime_params::default();
    }
}

#[no_mangle]
pub unsafe extern "C" fn unclip_generate_params_init(params: *mut unclip_generate_params) {
    if let Some(params) = params.as_mut() {
        *params = unclip_generate_params::default();
    }
}

/// Checks a parameter struct's `struct_size` against the size this library knows.
fn check_size(name: &'static str, given: usize, known: usize) -> Result<(), Error> {
    if given < known {
        return Err(invalid(
            name,
            &format!("struct_size is {given}, this library needs {known}: initialize it with its *_params_init()"),
        ));
    }
    Ok(())
}

/// The caller's parameter struct, checked and copied. A host built against ABI 1 passes the
/// shorter ABI 1 struct: only `struct_size` bytes are read and the appended fields keep their
/// defaults.
pub(super) unsafe fn params_of(
    params: *const unclip_generate_params,
) -> Result<unclip_generate_params, Error> {
    let given = if params.is_null() {
        0
    } else {
        params.cast::<usize>().read_unaligned()
    };
    let mut copy: unclip_generate_params = versioned_copy(params, "unclip_generate_params")?;
    if given <= types::GENERATE_PARAMS_V2_SIZE {
        // ABI 2-6's struct ends in 4 bytes of padding where ABI 7 put `width`: never read them.
        copy.width = 0;
        copy.height = 0;
    }
    Ok(copy)
}

/// A params struct that starts with `struct_size`, of which a host built against an older ABI
/// passes one of the sizes in `ABI_SIZES`: only `struct_size` bytes are read, the fields
/// appended since keep their defaults.
pub(super) unsafe fn versioned_copy<T: Default + HasStructSize>(
    params: *const T,
    name: &'static str,
) -> Result<T, Error> {
    if params.is_null() {
        return Err(invalid("params", "is NULL"));
    }
    // struct_size is the first field of every params struct.
    let given = params.cast::<usize>().read_unaligned();
    check_size(name, given, T::ABI_SIZES[0])?;
    let known = std::mem::size_of::<T>();
    if given < known && !T::ABI_SIZES.contains(&given) {
        // A size between two ABI versions would copy part of a field: half a pointer is a wild
        // pointer (found by fuzzing `capi_params`: a SEGV in strlen on openvino_plugin_path).
        return Err(invalid(
            name,
            &format!(
                "struct_size is {given}, which is no ABI version's size of this struct ({:?} or \
                 more): initialize it with its *_params_init()",
                T::ABI_SIZES
            ),
        ));
    }
    let mut copy = T::default();
    std::ptr::copy_nonoverlapping(
        params.cast::<u8>(),
        std::ptr::addr_of_mut!(copy).cast::<u8>(),
        given.min(known),
    );
    copy.set_struct_size(known);
    Ok(copy)
}

/// Params structs whose first field is `struct_size`.
pub(super) trait HasStructSize {
    /// The struct's size in each ABI version that changed it, oldest first (the last is the
    /// current size).
    const ABI_SIZES: &'static [usize];
    fn set_struct_size(&mut self, size: usize);
}

impl HasStructSize for unclip_generate_params {
    const ABI_SIZES: &'static [usize] = &[
        types::GENERATE_PARAMS_V1_SIZE,
        types::GENERATE_PARAMS_V2_SIZE,
        std::mem::size_of::<unclip_generate_params>(),
    ];
    fn set_struct_size(&mut self, size: usize) {
        self.struct_size = size;
    }
}

impl HasStructSize for unclip_runtime_params {
    const ABI_SIZES: &'static [usize] = &[
        types::RUNTIME_PARAMS_V2_SIZE,
        types::RUNTIME_PARAMS_V3_SIZE,
        types::RUNTIME_PARAMS_V4_SIZE,
        std::mem::size_of::<unclip_runtime_params>(),
    ];
    fn set_struct_size(&mut self, size: usize) {
        self.struct_size = size;
    }
}
