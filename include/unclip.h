/*
 * unclip.h — C interface of unclip, an unCLIP (DALL·E 2) text-to-image runtime on ONNX Runtime.
 *
 * C99 and C++ compatible. Link with -lunclip (libunclip.so or libunclip.a; the static library
 * also needs -lpthread -ldl -lm). ONNX Runtime itself is loaded at run time (see
 * unclip_runtime_params.ort_library_path).
 *
 * Conventions
 *  - Every call that can fail returns an unclip_status; on failure
 *    unclip_last_error_message() gives a message naming the problem and the fix. The message is
 *    per thread and valid until the next unclip call on that thread.
 *  - Parameter structs carry struct_size: fill them with their *_params_init() function, then
 *    change fields. A library newer than the header reads only the fields the header knows.
 *    A struct_size that is no ABI version's size of the struct is UNCLIP_INVALID_ARGUMENT.
 *  - Output pointers are set to NULL/0 on entry, so they are safe to free after a failure.
 *  - Every *_free function accepts NULL.
 *  - No call aborts the host: invalid arguments return UNCLIP_INVALID_ARGUMENT, and internal
 *    failures (bugs) return UNCLIP_INTERNAL instead of crashing.
 *
 * Thread safety
 *  - unclip_runtime and unclip_pipeline may be shared between threads: concurrent calls on one
 *    pipeline are safe (they share its model sessions and take turns per model call).
 *  - Different pipelines run in parallel.
 *  - One ONNX Runtime library per process: the first unclip_runtime_create loads it.
 */
#ifndef UNCLIP_H
#define UNCLIP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** ABI version of this header; compare with unclip_abi_version() at run time. */
#define UNCLIP_ABI_VERSION 7u

typedef enum unclip_status {
    UNCLIP_OK = 0,
    UNCLIP_INVALID_ARGUMENT = 1,     /* NULL pointer, bad struct_size, zero size, bad UTF-8, unknown enum */
    UNCLIP_CANCELLED = 2,            /* the progress callback returned non-zero */
    UNCLIP_NOT_FOUND = 3,            /* ONNX Runtime library missing or not loadable, or a bundle missing */
    UNCLIP_BUNDLE_INVALID = 4,       /* bad bundle.json, checksum, or ONNX signature */
    UNCLIP_PROVIDER_UNAVAILABLE = 5, /* requested device not available in this ONNX Runtime */
    UNCLIP_RUNTIME_ERROR = 6,        /* ONNX Runtime failed while running */
    UNCLIP_IO_ERROR = 7,             /* file system or image I/O */
    UNCLIP_INTERNAL = 8              /* a bug in unclip (caught, not crashed): please report */
} unclip_status;

typedef enum unclip_device {
    UNCLIP_DEVICE_CPU = 0,     /* exact mode: same tensors as diffusers */
    UNCLIP_DEVICE_CUDA = 1,    /* needs onnxruntime-gpu 1.31 (CUDA 13, cuDNN 9) */
    UNCLIP_DEVICE_TENSORRT = 2, /* needs onnxruntime-gpu 1.31 and TensorRT 10 */
    UNCLIP_DEVICE_OPENVINO = 3  /* ABI 3: Intel CPU/GPU/NPU through the OpenVINO plugin EP
                                   (scripts/setup-ort --openvino); openvino_device picks one */
} unclip_device;

/** Numeric precision (ABI 3). The bundle stays fp32; the execution provider lowers it. */
typedef enum unclip_precision {
    UNCLIP_PRECISION_F32 = 0,  /* exact mode, every device */
    UNCLIP_PRECISION_BF16 = 1, /* OpenVINO CPU (fast on AMX / AVX-512-BF16) */
    UNCLIP_PRECISION_FP16 = 2, /* TensorRT, OpenVINO GPU/NPU */
    UNCLIP_PRECISION_AUTO = 3, /* the fastest the device has (CPU: int8 with VNNI, when the
                                  bundle's int8 models passed their fidelity check; ABI 6) */
    UNCLIP_PRECISION_INT8 = 4  /* ABI 6: CPU, the bundle's int8 models (export/quantize_bundle.py) */
} unclip_precision;

typedef enum unclip_rng {
    UNCLIP_RNG_FAST = 0, /* counter-based, identical on every platform */
    UNCLIP_RNG_TORCH = 1 /* bit-exact with torch.Generator("cpu").manual_seed(seed) */
} unclip_rng;

/** Schedulers a stage can run (ABI 2). DEFAULT is the one the bundle names (Karlo: UnCLIP;
 * Kandinsky 2.2: UnCLIP for the prior, DDPM for the decoder). */
typedef enum unclip_scheduler {
    UNCLIP_SCHEDULER_DEFAULT = 0,
    UNCLIP_SCHEDULER_UNCLIP = 1, /* diffusers' UnCLIPScheduler */
    UNCLIP_SCHEDULER_DDIM = 2,   /* DDIMScheduler; eta below */
    UNCLIP_SCHEDULER_DPMPP = 3,  /* DPMSolverMultistepScheduler, DPM-Solver++ 2M */
    UNCLIP_SCHEDULER_DDPM = 4    /* ABI 7: DDPMScheduler (Kandinsky 2.2's decoder) */
} unclip_scheduler;

/** Stages reported to progress callbacks; upsampler i reports UNCLIP_STAGE_UPSAMPLER + i. */
typedef enum unclip_stage {
    UNCLIP_STAGE_TEXT = 0,
    UNCLIP_STAGE_PRIOR = 1,
    UNCLIP_STAGE_DECODER = 2,
    UNCLIP_STAGE_UPSAMPLER = 3
} unclip_stage;

/** Opaque handles. */
typedef struct unclip_runtime unclip_runtime;
typedef struct unclip_pipeline unclip_pipeline;

/** An RGB8 image: width*height*channels bytes, row-major, owned by the library. */
typedef struct unclip_image {
    uint32_t width;
    uint32_t height;
    uint32_t channels; /* 3 */
    uint8_t *data;
} unclip_image;

/**
 * Called after each step: stage (unclip_stage), step (1-based), steps in the stage, and the
 * user pointer. Return non-zero to cancel the call (it then returns UNCLIP_CANCELLED).
 * Called on the thread that made the call.
 */
typedef int32_t (*unclip_progress_callback)(int32_t stage, uint32_t step, uint32_t steps, void *user_data);

typedef struct unclip_runtime_params {
    size_t struct_size;
    const char *ort_library_path;         /* NULL: ORT_DYLIB_PATH, next to the executable, ./.ort, Python onnxruntime */
    int32_t device;                       /* unclip_device; default CPU */
    int32_t device_id;                    /* GPU index; default 0 */
    uint32_t threads;                     /* intra-op threads; 0 = all cores */
    int32_t tensorrt_fp16;                /* non-zero: fp16 TensorRT engines */
    const char *tensorrt_cache_dir;       /* NULL: no engine/timing cache */
    uint64_t tensorrt_max_workspace_size; /* bytes; 0 = TensorRT's default */
    /* ABI 3 (appended): a host built against ABI 2 passes the smaller struct_size and gets the
     * defaults; check unclip_abi_version() >= 3 before relying on these. */
    int32_t precision;                    /* unclip_precision; default F32 (UNCLIP_INVALID_ARGUMENT
                                             when the device cannot run it) */
    const char *openvino_device;          /* "CPU", "GPU", "GPU.1", "NPU"; NULL: "CPU" */
    const char *openvino_cache_dir;       /* compiled-model cache; NULL: none */
    const char *openvino_plugin_path;     /* NULL: UNCLIP_OPENVINO_PLUGIN, then .ort/openvino beside ORT */
    /* ABI 4 (appended): a host built against ABI 3 passes the smaller struct_size and gets the
     * default; check unclip_abi_version() >= 4 before relying on it. */
    int32_t low_memory;                   /* non-zero: a stage's model sessions exist only while the
                                             stage runs (less peak memory, each generation loads
                                             them again); default 0 */
    /* ABI 5 (appended): a host built against ABI 4 passes the smaller struct_size and gets the
     * default; check unclip_abi_version() >= 5 before relying on it. */
    const char *graph_cache_dir;          /* CPU device: keep ONNX Runtime's optimized graphs here,
                                             so later loads skip graph optimization (as large as
                                             the weights); NULL: none. Other devices refuse it
                                             (UNCLIP_INVALID_ARGUMENT) */
} unclip_runtime_params;

typedef struct unclip_generate_params {
    size_t struct_size;
    uint32_t num_images_per_prompt; /* default 1 */
    int32_t rng;                    /* unclip_rng; default UNCLIP_RNG_FAST */
    uint64_t seed;                  /* default 0 */
    const char *negative_prompt;    /* NULL: the empty prompt (diffusers' behaviour) */
    uint32_t prior_steps;           /* 0: the bundle's default */
    uint32_t decoder_steps;         /* 0: the bundle's default */
    uint32_t super_res_steps;       /* 0: the bundle's default (every upsampler) */
    float prior_guidance_scale;     /* < 0: the bundle's default */
    float decoder_guidance_scale;   /* < 0: the bundle's default */
    unclip_progress_callback progress; /* NULL: none */
    void *progress_user_data;
    /* ABI 2 (appended): a host built against ABI 1 passes the smaller struct_size and gets the
     * defaults; check unclip_abi_version() >= 2 before relying on these. */
    int32_t prior_scheduler;        /* unclip_scheduler; default UNCLIP_SCHEDULER_DEFAULT */
    int32_t decoder_scheduler;
    int32_t super_res_scheduler;    /* every upsampler */
    float eta;                      /* DDIM's eta for stages running DDIM; default 0 */
    uint32_t output_size;           /* image side: the decoder's or an upsampler's; 0: the largest */
    /* ABI 7 (appended): a host built against ABI 2-6 passes the smaller struct_size and gets the
     * defaults; check unclip_abi_version() >= 7 before relying on these. */
    uint32_t width;                 /* image width (Karlo: as output_size; Kandinsky 2.2: any
                                       multiple of 64); 0: output_size, else the default */
    uint32_t height;                /* image height; 0: width (square). Karlo bundles make square
                                       images only (UNCLIP_INVALID_ARGUMENT otherwise) */
} unclip_generate_params;

/** ABI version of the library (UNCLIP_ABI_VERSION it was built with). */
uint32_t unclip_abi_version(void);
/** Library version, e.g. "0.1.0"; static storage. */
const char *unclip_version(void);
/** Message of the last failed call on this thread ("" after a success). */
const char *unclip_last_error_message(void);

/** Fill with defaults (sets struct_size). NULL is ignored. */
void unclip_runtime_params_init(unclip_runtime_params *params);
void unclip_generate_params_init(unclip_generate_params *params);

/** Load ONNX Runtime (once per process) and prepare a device. */
unclip_status unclip_runtime_create(const unclip_runtime_params *params, unclip_runtime **out_runtime);
void unclip_runtime_free(unclip_runtime *runtime);

/** Open and validate a bundle directory (bundle.json, checksums, model signatures). */
unclip_status unclip_pipeline_load(const unclip_runtime *runtime, const char *bundle_dir, unclip_pipeline **out_pipeline);
void unclip_pipeline_free(unclip_pipeline *pipeline);
/** Width of CLIP embeddings (0 for NULL). */
uint32_t unclip_pipeline_embedding_dim(const unclip_pipeline *pipeline);
/** Side of the final images by default (0 for NULL). */
uint32_t unclip_pipeline_image_size(const unclip_pipeline *pipeline);
/** ABI 7: the bundle's model family, "karlo" or "kandinsky2.2" (a static string, never freed;
 * NULL for NULL). */
const char *unclip_pipeline_family(const unclip_pipeline *pipeline);

/**
 * Text to image: num_prompts UTF-8 prompts → num_prompts * num_images_per_prompt images
 * (prompt-major). Free the result with unclip_image_free(*out_images, *out_count).
 */
unclip_status unclip_generate(const unclip_pipeline *pipeline, const char *const *prompts, size_t num_prompts,
                              const unclip_generate_params *params, unclip_image **out_images, size_t *out_count);

/**
 * Decode CLIP image embeddings (num_embeddings rows of dim floats, row-major) without the
 * prior, e.g. interpolated ones (unclip_slerp). Prompt-free, as image variations.
 */
unclip_status unclip_generate_from_embeddings(const unclip_pipeline *pipeline, const float *embeddings,
                                              size_t num_embeddings, size_t dim, const unclip_generate_params *params,
                                              unclip_image **out_images, size_t *out_count);

/** CLIP text embedding of a prompt into out_embedding[dim] (dim = unclip_pipeline_embedding_dim). */
unclip_status unclip_encode_text(const unclip_pipeline *pipeline, const char *prompt, float *out_embedding, size_t dim);

/**
 * Image variations (DALL·E 2 §3.1): the CLIP embedding of an RGB8 image (width*height*3 bytes,
 * row-major, no padding) decoded num_images_per_prompt times. Needs a bundle with an image
 * encoder. prior_* parameters are ignored.
 */
unclip_status unclip_generate_variations(const unclip_pipeline *pipeline, const uint8_t *rgb, uint32_t width,
                                         uint32_t height, const unclip_generate_params *params,
                                         unclip_image **out_images, size_t *out_count);

/** CLIP image embedding of an RGB8 image (as above) into out_embedding[dim]. */
unclip_status unclip_encode_image(const unclip_pipeline *pipeline, const uint8_t *rgb, uint32_t width, uint32_t height,
                                  float *out_embedding, size_t dim);

/** Spherical interpolation of two embeddings (norm interpolated linearly): out = slerp(a, b, t). */
unclip_status unclip_slerp(const float *a, const float *b, size_t dim, float t, float *out);

/** Free images returned by a generate call. NULL is ignored. */
void unclip_image_free(unclip_image *images, size_t count);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* UNCLIP_H */
