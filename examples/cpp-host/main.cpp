// unclip-host: a C++17 program embedding unclip through its C ABI.
//   unclip-host BUNDLE_DIR OUT.png PROMPT [SEED]
// Generates one image (torch-compatible noise, 2/2/2 steps so the tiny bundle is quick; the
// bundle's defaults when UNCLIP_HOST_DEFAULT_STEPS is set) and writes it as PNG.
#include <unclip.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

namespace {

// Minimal PNG writer: RGB8, zlib "stored" (uncompressed) deflate blocks.
std::uint32_t crc32(const std::uint8_t *data, std::size_t len, std::uint32_t crc = 0) {
    static const auto table = [] {
        std::array<std::uint32_t, 256> t{};
        for (std::uint32_t n = 0; n < 256; ++n) {
            std::uint32_t c = n;
            for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            t[n] = c;
        }
        return t;
    }();
    crc = ~crc;
    for (std::size_t i = 0; i < len; ++i) crc = table[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

void put32(std::vector<std::uint8_t> &out, std::uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<std::uint8_t>(v >> s));
}

void chunk(std::vector<std::uint8_t> &png, const char *type, const std::vector<std::uint8_t> &data) {
    put32(png, static_cast<std::uint32_t>(data.size()));
    std::vector<std::uint8_t> body(type, type + 4);
    body.insert(body.end(), data.begin(), data.end());
    png.insert(png.end(), body.begin(), body.end());
    put32(png, crc32(body.data(), body.size()));
}

bool write_png(const std::string &path, const unclip_image &image) {
    std::vector<std::uint8_t> raw;
    const std::size_t row = static_cast<std::size_t>(image.width) * image.channels;
    for (std::uint32_t y = 0; y < image.height; ++y) {
        raw.push_back(0);  // filter: none
        raw.insert(raw.end(), image.data + y * row, image.data + (y + 1) * row);
    }
    std::vector<std::uint8_t> z = {0x78, 0x01};
    std::uint32_t a = 1, b = 0;
    for (std::uint8_t v : raw) {
        a = (a + v) % 65521;
        b = (b + a) % 65521;
    }
    for (std::size_t pos = 0; pos < raw.size(); pos += 65535) {
        const std::size_t n = std::min<std::size_t>(65535, raw.size() - pos);
        z.push_back(pos + n == raw.size() ? 1 : 0);
        z.push_back(static_cast<std::uint8_t>(n & 0xFF));
        z.push_back(static_cast<std::uint8_t>(n >> 8));
        z.push_back(static_cast<std::uint8_t>(~n & 0xFF));
        z.push_back(static_cast<std::uint8_t>((~n >> 8) & 0xFF));
        z.insert(z.end(), raw.begin() + static_cast<std::ptrdiff_t>(pos), raw.begin() + static_cast<std::ptrdiff_t>(pos + n));
    }
    put32(z, (b << 16) | a);
    std::vector<std::uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    std::vector<std::uint8_t> ihdr;
    put32(ihdr, image.width);
    put32(ihdr, image.height);
    ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});  // 8-bit RGB
    chunk(png, "IHDR", ihdr);
    chunk(png, "IDAT", z);
    chunk(png, "IEND", {});
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char *>(png.data()), static_cast<std::streamsize>(png.size()));
    return static_cast<bool>(out);
}

int fail(const char *what, unclip_status status) {
    std::fprintf(stderr, "unclip-host: %s failed (status %d): %s\n", what, static_cast<int>(status),
                 unclip_last_error_message());
    return 1;
}

struct RuntimeDeleter {
    void operator()(unclip_runtime *r) const { unclip_runtime_free(r); }
};
struct PipelineDeleter {
    void operator()(unclip_pipeline *p) const { unclip_pipeline_free(p); }
};

}  // namespace

int main(int argc, char **argv) {
    if (argc < 4 || argc > 5) {
        std::fprintf(stderr, "usage: %s BUNDLE_DIR OUT.png PROMPT [SEED]\n", argv[0]);
        return 2;
    }
    if (unclip_abi_version() != UNCLIP_ABI_VERSION) {
        std::fprintf(stderr, "unclip-host: built for ABI %u, library has %u\n", UNCLIP_ABI_VERSION,
                     unclip_abi_version());
        return 1;
    }
    unclip_runtime_params runtime_params;
    unclip_runtime_params_init(&runtime_params);
    unclip_runtime *raw_runtime = nullptr;
    if (auto s = unclip_runtime_create(&runtime_params, &raw_runtime); s != UNCLIP_OK) return fail("runtime", s);
    std::unique_ptr<unclip_runtime, RuntimeDeleter> runtime(raw_runtime);

    unclip_pipeline *raw_pipeline = nullptr;
    if (auto s = unclip_pipeline_load(runtime.get(), argv[1], &raw_pipeline); s != UNCLIP_OK) return fail("load", s);
    std::unique_ptr<unclip_pipeline, PipelineDeleter> pipeline(raw_pipeline);

    unclip_generate_params params;
    unclip_generate_params_init(&params);
    params.rng = UNCLIP_RNG_TORCH;
    params.seed = argc == 5 ? std::strtoull(argv[4], nullptr, 10) : 0;
    if (std::getenv("UNCLIP_HOST_DEFAULT_STEPS") == nullptr) {
        params.prior_steps = 2;
        params.decoder_steps = 2;
        params.super_res_steps = 2;
    }
    params.progress = [](std::int32_t stage, std::uint32_t step, std::uint32_t steps, void *) -> std::int32_t {
        std::fprintf(stderr, "\rstage %d: %u/%u", stage, step, steps);
        return 0;
    };
    const char *prompt = argv[3];
    unclip_image *images = nullptr;
    std::size_t count = 0;
    if (auto s = unclip_generate(pipeline.get(), &prompt, 1, &params, &images, &count); s != UNCLIP_OK) {
        return fail("generate", s);
    }
    std::fprintf(stderr, "\n");
    const bool ok = count == 1 && write_png(argv[2], images[0]);
    unclip_image_free(images, count);
    if (!ok) {
        std::fprintf(stderr, "unclip-host: cannot write %s\n", argv[2]);
        return 1;
    }
    std::printf("wrote %s\n", argv[2]);
    return 0;
}
