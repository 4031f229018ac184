# unclip serve as a container: a build stage (Rust + Python for the ONNX Runtime wheel) and a slim
# runtime stage carrying the binary, libonnxruntime and a bundle mount point.
#
#   docker build -t unclip .
#   docker run -p 8080:8080 -v /path/to/bundle:/models/default:ro unclip
#
# Without a mounted bundle the image serves models/shapes (the default bundle, README "Models").

FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# ONNX Runtime's shared library from the PyPI wheel (ort's CDN download is not used).
RUN scripts/setup-ort && cargo build --release --locked --bin unclip

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent unclip
COPY --from=build /src/target/release/unclip /usr/local/bin/unclip
COPY --from=build /src/.ort/libonnxruntime.so.1.31.1 /opt/onnxruntime/libonnxruntime.so.1.31.1
COPY --from=build /src/models/shapes /models/default
# MALLOC_ARENA_MAX=2: glibc's per-thread arenas otherwise fragment under hours of load
# and memory creeps up; two arenas keep it flat (docs/reliability.md, "Server soak").
ENV ORT_DYLIB_PATH=/opt/onnxruntime/libonnxruntime.so.1.31.1 \
    MALLOC_ARENA_MAX=2 \
    UNCLIP_MODEL=/models/default \
    UNCLIP_CACHE_DIR=/tmp/unclip-cache
USER unclip
EXPOSE 8080
# The server binds every interface inside the container; publish the port deliberately.
ENTRYPOINT ["unclip", "serve", "--host", "0.0.0.0", "--port", "8080"]
