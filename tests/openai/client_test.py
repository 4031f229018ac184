"""The official `openai` Python client against `unclip serve` (run by tests/server.rs).

    python tests/openai/client_test.py BASE_URL API_KEY IMAGE_PATH

Exits non-zero with a message on the first failed expectation.
"""

import base64
import io
import struct
import sys

import openai

base_url, api_key, image_path = sys.argv[1:4]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
FAST = {"prior_steps": 2, "decoder_steps": 2, "super_res_steps": [2], "seed": 5, "rng": "torch"}


def png_size(b64: str) -> tuple[int, int]:
    data = base64.b64decode(b64)
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


models = [m.id for m in client.models.list().data]
assert "clip-text" in models, models

# n = 2, b64 PNGs of the asked size; the seed extension makes them reproducible.
result = client.images.generate(
    prompt="a red circle on a blue background", n=2, size="256x256",
    response_format="b64_json", extra_body=FAST,
)
assert len(result.data) == 2, result
assert all(png_size(d.b64_json) == (256, 256) for d in result.data)
again = client.images.generate(
    prompt="a red circle on a blue background", n=2, size="256x256",
    response_format="b64_json", extra_body=FAST,
)
assert [d.b64_json for d in again.data] == [d.b64_json for d in result.data], "same seed, same images"
assert result.data[0].b64_json != result.data[1].b64_json, "two images differ"

small = client.images.generate(prompt="a cat", size="64x64", response_format="b64_json", extra_body=FAST)
assert png_size(small.data[0].b64_json) == (64, 64)

# A variation of an uploaded image.
with open(image_path, "rb") as f:
    variation = client.images.create_variation(
        image=f, n=1, size="256x256", response_format="b64_json",
        extra_body={"decoder_steps": 2, "super_res_steps": "2", "seed": 1},
    )
assert png_size(variation.data[0].b64_json) == (256, 256)

# CLIP text embeddings.
emb = client.embeddings.create(input=["a cat", "a dog"], model="clip-text")
assert len(emb.data) == 2 and len(emb.data[0].embedding) > 0

# Documented errors: a size the model cannot make → 400 naming `size`.
try:
    client.images.generate(prompt="a cat", size="1792x1024", response_format="b64_json")
    raise AssertionError("bad size accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400, e
    assert e.body and e.body.get("param") == "size", e.body

# URL responses are not available → 400 naming `response_format`.
try:
    client.images.generate(prompt="a cat", response_format="url")
    raise AssertionError("url accepted")
except openai.BadRequestError as e:
    assert e.body.get("param") == "response_format", e.body

# A wrong key → 401.
bad = openai.OpenAI(base_url=base_url, api_key="wrong-key", max_retries=0)
try:
    bad.models.list()
    raise AssertionError("bad key accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401, e
    assert e.body.get("code") == "invalid_api_key", e.body

print("openai client: ok")
