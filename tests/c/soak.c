/* C ABI soak (scripts/soak --capi): two host threads share one pipeline and make CALLS calls in
 * all (a cycle of generate, vary, encode_text, encode_image, 64x64 images, 1 step each) while the
 * main thread samples the process's resident memory. Prints one JSON object: the samples
 * (calls done, RSS KiB) and the failures. Built once plainly (for RSS) and once under
 * AddressSanitizer with LeakSanitizer (leaks over the whole sequence are reported at exit).
 * usage: soak BUNDLE_DIR CALLS */
#define _POSIX_C_SOURCE 200809L
#include "unclip.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static atomic_int calls_done = 0;
static atomic_int failures = 0;
static int calls_total = 0;
static unclip_pipeline *pipeline = NULL;

static long rss_kib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    if (!f) return -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kib = strtol(line + 6, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kib;
}

static void fail(const char *what) {
    atomic_fetch_add(&failures, 1);
    fprintf(stderr, "soak: %s failed: %s\n", what, unclip_last_error_message());
}

static void *worker(void *arg) {
    unsigned id = (unsigned)(size_t)arg;
    const char *prompts[] = {"a red circle on a blue background", "a green square"};
    unsigned char pixels[32 * 32 * 3];
    float embedding[1024];
    size_t dim = unclip_pipeline_embedding_dim(pipeline);
    if (dim == 0 || dim > 1024) {
        fail("embedding_dim");
        return NULL;
    }
    for (size_t i = 0; i < sizeof pixels; i++) pixels[i] = (unsigned char)(i * 7 + id);
    for (;;) {
        int n = atomic_fetch_add(&calls_done, 1);
        if (n >= calls_total) break;
        unclip_generate_params p;
        unclip_generate_params_init(&p);
        p.seed = (uint64_t)n;
        p.prior_steps = 1;
        p.decoder_steps = 1;
        p.output_size = 64;
        unclip_image *images = NULL;
        size_t count = 0;
        switch (n % 4) {
        case 0:
            if (unclip_generate(pipeline, prompts, 2, &p, &images, &count) != UNCLIP_OK) fail("generate");
            unclip_image_free(images, count);
            break;
        case 1:
            if (unclip_generate_variations(pipeline, pixels, 32, 32, &p, &images, &count) != UNCLIP_OK)
                fail("vary");
            unclip_image_free(images, count);
            break;
        case 2:
            if (unclip_encode_text(pipeline, prompts[n % 2], embedding, dim) != UNCLIP_OK) fail("encode_text");
            /* an error path too: its message is a per-thread string */
            if (unclip_encode_text(pipeline, NULL, embedding, dim) == UNCLIP_OK) fail("bad encode_text");
            break;
        default:
            if (unclip_encode_image(pipeline, pixels, 32, 32, embedding, dim) != UNCLIP_OK) fail("encode_image");
            break;
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s BUNDLE_DIR CALLS\n", argv[0]);
        return 2;
    }
    calls_total = atoi(argv[2]);
    unclip_runtime_params rp;
    unclip_runtime_params_init(&rp);
    rp.threads = 1;
    unclip_runtime *runtime = NULL;
    if (unclip_runtime_create(&rp, &runtime) != UNCLIP_OK || unclip_pipeline_load(runtime, argv[1], &pipeline) != UNCLIP_OK) {
        fprintf(stderr, "soak: load failed: %s\n", unclip_last_error_message());
        return 1;
    }
    pthread_t threads[2];
    for (size_t t = 0; t < 2; t++) pthread_create(&threads[t], NULL, worker, (void *)t);
    printf("{\"calls\": %d, \"samples\": [", calls_total);
    int first = 1;
    for (;;) {
        int done = atomic_load(&calls_done);
        if (done > calls_total) done = calls_total;
        printf("%s[%d, %ld]", first ? "" : ", ", done, rss_kib());
        fflush(stdout);
        first = 0;
        if (done >= calls_total) break;
        struct timespec pause = {0, 200 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    for (size_t t = 0; t < 2; t++) pthread_join(threads[t], NULL);
    printf(", [%d, %ld]], \"failures\": %d}\n", calls_total, rss_kib(), atomic_load(&failures));
    unclip_pipeline_free(pipeline);
    unclip_runtime_free(runtime);
    return atomic_load(&failures) == 0 ? 0 : 1;
}
