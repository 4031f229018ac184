/* C test of include/unclip.h, run by tests/capi.rs (also under valgrind).
 * usage: capi_test BUNDLE_DIR OUT_RGB_FILE [--light]
 * --light: argument validation, loading, text encoding and slerp only (quick checks under
 * memory tools). Otherwise also writes the RGB8 bytes of one generated image (seed 42, torch rng, 2/2/2 steps) for the Rust
 * side to compare with its own API, and checks argument validation, cancellation, the same
 * image from a low-memory runtime (ABI 4) and two threads sharing one pipeline. Exit code 0 on
 * success. */
#include "unclip.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;
#define CHECK(cond, ...)                                                                                   \
    do {                                                                                                   \
        if (!(cond)) {                                                                                     \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                               \
            fprintf(stderr, __VA_ARGS__);                                                                  \
            fprintf(stderr, " (last error: %s)\n", unclip_last_error_message());                          \
            failures++;                                                                                    \
        }                                                                                                  \
    } while (0)

static void small_params(unclip_generate_params *p) {
    unclip_generate_params_init(p);
    p->seed = 42;
    p->rng = UNCLIP_RNG_TORCH;
    p->prior_steps = 2;
    p->decoder_steps = 2;
    p->super_res_steps = 2;
}

static int cancel_at_decoder(int32_t stage, uint32_t step, uint32_t steps, void *user) {
    int *calls = (int *)user;
    (void)step;
    (void)steps;
    (*calls)++;
    return stage == UNCLIP_STAGE_DECODER;
}

typedef struct {
    const unclip_pipeline *pipeline;
    unsigned long checksum;
    unclip_status status;
} thread_job;

static void *generate_in_thread(void *arg) {
    thread_job *job = (thread_job *)arg;
    const char *prompt = "a yellow star";
    unclip_generate_params p;
    unclip_image *images = NULL;
    size_t count = 0;
    size_t i;
    small_params(&p);
    job->status = unclip_generate(job->pipeline, &prompt, 1, &p, &images, &count);
    job->checksum = 0;
    if (job->status == UNCLIP_OK && count == 1) {
        for (i = 0; i < (size_t)images[0].width * images[0].height * 3; i++) {
            job->checksum = job->checksum * 31u + images[0].data[i];
        }
    }
    unclip_image_free(images, count);
    return NULL;
}

int main(int argc, char **argv) {
    unclip_runtime_params rp;
    unclip_runtime *runtime = NULL;
    unclip_pipeline *pipeline = NULL;
    unclip_generate_params gp;
    unclip_image *images = NULL;
    size_t count = 99;
    const char *prompt = "a red circle on a blue background";
    const char *bad_utf8 = "\xff\xfe";
    float embedding[4096];
    float mixed[4096];
    uint32_t dim;
    int calls = 0;
    FILE *out;
    pthread_t threads[2];
    thread_job jobs[2];
    int t;

    int light;

    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s BUNDLE_DIR OUT_RGB_FILE [--light]\n", argv[0]);
        return 2;
    }
    light = argc == 4 && strcmp(argv[3], "--light") == 0;
    CHECK(unclip_abi_version() == UNCLIP_ABI_VERSION, "abi %u", unclip_abi_version());
    CHECK(strlen(unclip_version()) > 0, "version");

    /* NULL-safe frees and argument validation before anything is loaded. */
    unclip_runtime_free(NULL);
    unclip_pipeline_free(NULL);
    unclip_image_free(NULL, 0);
    unclip_runtime_params_init(NULL);
    CHECK(unclip_runtime_create(NULL, &runtime) == UNCLIP_INVALID_ARGUMENT, "NULL params");
    unclip_runtime_params_init(&rp);
    CHECK(unclip_runtime_create(&rp, NULL) == UNCLIP_INVALID_ARGUMENT, "NULL out");
    rp.struct_size = 8;
    CHECK(unclip_runtime_create(&rp, &runtime) == UNCLIP_INVALID_ARGUMENT, "small struct_size");
    CHECK(strstr(unclip_last_error_message(), "struct_size") != NULL, "message names struct_size");
    unclip_runtime_params_init(&rp);
    rp.device = 7;
    CHECK(unclip_runtime_create(&rp, &runtime) == UNCLIP_INVALID_ARGUMENT, "unknown device");

    unclip_runtime_params_init(&rp);
    CHECK(unclip_runtime_create(&rp, &runtime) == UNCLIP_OK, "runtime");
    CHECK(strcmp(unclip_last_error_message(), "") == 0, "message cleared after success");
    rp.device = UNCLIP_DEVICE_CUDA;
    {
        unclip_runtime *gpu = NULL;
        unclip_status s = unclip_runtime_create(&rp, &gpu);
        CHECK(s == UNCLIP_PROVIDER_UNAVAILABLE, "cuda on a CPU build: %d", (int)s);
        CHECK(gpu == NULL, "no handle on failure");
    }
    CHECK(unclip_pipeline_load(runtime, "/nonexistent", &pipeline) == UNCLIP_NOT_FOUND, "missing bundle");
    CHECK(pipeline == NULL, "NULL on failure");
    CHECK(unclip_pipeline_load(runtime, NULL, &pipeline) == UNCLIP_INVALID_ARGUMENT, "NULL dir");
    CHECK(unclip_pipeline_load(runtime, argv[1], &pipeline) == UNCLIP_OK, "load %s", argv[1]);
    if (pipeline == NULL) {
        return 1;
    }
    dim = unclip_pipeline_embedding_dim(pipeline);
    CHECK(dim > 0 && dim <= 4096, "dim %u", dim);
    CHECK(unclip_pipeline_image_size(pipeline) == 256, "image size");

    if (light) {
        CHECK(unclip_encode_text(pipeline, prompt, embedding, dim) == UNCLIP_OK, "encode");
        CHECK(unclip_slerp(embedding, embedding, dim, 0.25f, mixed) == UNCLIP_OK, "slerp");
        small_params(&gp);
        CHECK(unclip_generate(pipeline, &bad_utf8, 1, &gp, &images, &count) == UNCLIP_INVALID_ARGUMENT, "bad UTF-8");
        unclip_pipeline_free(pipeline);
        unclip_runtime_free(runtime);
        printf(failures ? "capi_test: FAILED\n" : "capi_test: ok\n");
        return failures ? 1 : 0;
    }

    /* Bad generate arguments. */
    small_params(&gp);
    CHECK(unclip_generate(pipeline, &prompt, 0, &gp, &images, &count) == UNCLIP_INVALID_ARGUMENT, "zero prompts");
    CHECK(images == NULL && count == 0, "outputs reset");
    CHECK(unclip_generate(NULL, &prompt, 1, &gp, &images, &count) == UNCLIP_INVALID_ARGUMENT, "NULL pipeline");
    CHECK(unclip_generate(pipeline, &bad_utf8, 1, &gp, &images, &count) == UNCLIP_INVALID_ARGUMENT, "bad UTF-8");
    CHECK(strstr(unclip_last_error_message(), "UTF-8") != NULL, "message names UTF-8");
    gp.rng = 9;
    CHECK(unclip_generate(pipeline, &prompt, 1, &gp, &images, &count) == UNCLIP_INVALID_ARGUMENT, "unknown rng");
    small_params(&gp);
    gp.struct_size = 4;
    CHECK(unclip_generate(pipeline, &prompt, 1, &gp, &images, &count) == UNCLIP_INVALID_ARGUMENT, "struct_size");
    small_params(&gp);
    gp.num_images_per_prompt = 0;
    CHECK(unclip_generate(pipeline, &prompt, 1, &gp, &images, &count) == UNCLIP_INVALID_ARGUMENT, "zero images");
    small_params(&gp);
    gp.decoder_guidance_scale = 1e9f;
    CHECK(unclip_generate(pipeline, &prompt, 1, &gp, &images, &count) == UNCLIP_INVALID_ARGUMENT, "guidance");

    /* Cancellation from the progress callback. */
    small_params(&gp);
    gp.progress = cancel_at_decoder;
    gp.progress_user_data = &calls;
    CHECK(unclip_generate(pipeline, &prompt, 1, &gp, &images, &count) == UNCLIP_CANCELLED, "cancel");
    CHECK(calls == 1 + 2 + 1, "callback calls %d", calls);
    CHECK(images == NULL && count == 0, "nothing returned when cancelled");

    /* The image the Rust test compares byte for byte. */
    small_params(&gp);
    CHECK(unclip_generate(pipeline, &prompt, 1, &gp, &images, &count) == UNCLIP_OK, "generate");
    CHECK(count == 1 && images != NULL, "one image");
    if (count == 1) {
        CHECK(images[0].width == 256 && images[0].height == 256 && images[0].channels == 3, "shape");
        out = fopen(argv[2], "wb");
        CHECK(out != NULL, "open %s", argv[2]);
        if (out) {
            fwrite(images[0].data, 1, (size_t)images[0].width * images[0].height * 3, out);
            fclose(out);
        }
    }

    /* ABI 4: a low-memory runtime (sessions created and dropped per stage) makes the same bytes. */
    {
        unclip_runtime_params low_rp;
        unclip_runtime *low_runtime = NULL;
        unclip_pipeline *low_pipeline = NULL;
        unclip_image *low_images = NULL;
        size_t low_count = 0;
        unclip_runtime_params_init(&low_rp);
        CHECK(low_rp.low_memory == 0, "low_memory defaults to 0");
        low_rp.low_memory = 1;
        CHECK(unclip_runtime_create(&low_rp, &low_runtime) == UNCLIP_OK, "low-memory runtime");
        CHECK(unclip_pipeline_load(low_runtime, argv[1], &low_pipeline) == UNCLIP_OK, "low-memory load");
        small_params(&gp);
        CHECK(unclip_generate(low_pipeline, &prompt, 1, &gp, &low_images, &low_count) == UNCLIP_OK,
              "low-memory generate");
        CHECK(count == 1 && low_count == 1 &&
                  memcmp(images[0].data, low_images[0].data, (size_t)images[0].width * images[0].height * 3) == 0,
              "low-memory image equals the normal one");
        unclip_image_free(low_images, low_count);
        unclip_pipeline_free(low_pipeline);
        unclip_runtime_free(low_runtime);
    }
    unclip_image_free(images, count);

    /* Embeddings: encode, interpolate, decode. */
    CHECK(unclip_encode_text(pipeline, prompt, embedding, dim) == UNCLIP_OK, "encode");
    CHECK(unclip_encode_text(pipeline, prompt, embedding, dim + 1) == UNCLIP_INVALID_ARGUMENT, "wrong dim");
    CHECK(unclip_slerp(embedding, embedding, dim, 0.5f, mixed) == UNCLIP_OK, "slerp");
    CHECK(unclip_slerp(embedding, NULL, dim, 0.5f, mixed) == UNCLIP_INVALID_ARGUMENT, "slerp NULL");
    small_params(&gp);
    CHECK(unclip_generate_from_embeddings(pipeline, mixed, 1, dim, &gp, &images, &count) == UNCLIP_OK, "decode");
    CHECK(count == 1, "decoded one");
    unclip_image_free(images, count);
    CHECK(unclip_generate_from_embeddings(pipeline, mixed, 1, dim - 1, &gp, &images, &count) != UNCLIP_OK, "bad dim");

    /* Image variations and image embeddings from an RGB8 buffer. */
    {
        static uint8_t rgb[48 * 64 * 3];
        size_t i;
        for (i = 0; i < sizeof rgb; i++) {
            rgb[i] = (uint8_t)(i * 7u);
        }
        CHECK(unclip_encode_image(pipeline, rgb, 64, 48, embedding, dim) == UNCLIP_OK, "encode image");
        CHECK(unclip_encode_image(pipeline, NULL, 64, 48, embedding, dim) == UNCLIP_INVALID_ARGUMENT, "NULL rgb");
        CHECK(unclip_encode_image(pipeline, rgb, 0, 48, embedding, dim) == UNCLIP_INVALID_ARGUMENT, "zero width");
        small_params(&gp);
        gp.num_images_per_prompt = 2;
        CHECK(unclip_generate_variations(pipeline, rgb, 64, 48, &gp, &images, &count) == UNCLIP_OK, "variations");
        CHECK(count == 2, "two variations");
        unclip_image_free(images, count);
    }

    /* Two host threads on one pipeline give the same image as each other. */
    for (t = 0; t < 2; t++) {
        jobs[t].pipeline = pipeline;
        pthread_create(&threads[t], NULL, generate_in_thread, &jobs[t]);
    }
    for (t = 0; t < 2; t++) {
        pthread_join(threads[t], NULL);
        CHECK(jobs[t].status == UNCLIP_OK, "thread %d", t);
    }
    CHECK(jobs[0].checksum == jobs[1].checksum && jobs[0].checksum != 0, "threads agree");

    unclip_pipeline_free(pipeline);
    unclip_runtime_free(runtime);
    if (failures) {
        fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    printf("capi_test: ok\n");
    return 0;
}
