"""The Python package against the command line, diffusers' references and its own promises (GIL
released, Ctrl-C, exceptions, output types, batches). Run by scripts/test after the `unclip`
binary is built (it compares bytes with `target/release/unclip`)."""

from __future__ import annotations

import _thread
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import unclip

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "models" / "tiny"
TINY_KANDINSKY = REPO / "models" / "tiny-kandinsky"
CLI = REPO / "target" / "release" / "unclip"
FEW = dict(prior_num_inference_steps=2, decoder_num_inference_steps=2, super_res_num_inference_steps=2)


@pytest.fixture(scope="module")
def tiny():
    return unclip.Pipeline(TINY, progress=False)


@pytest.fixture(scope="module")
def kandinsky():
    return unclip.Pipeline(TINY_KANDINSKY, progress=False)


def close_images(actual: np.ndarray, expected: np.ndarray) -> None:
    """As tests/parity.rs: each value within one 8-bit level but for 0.1% of them."""
    assert actual.shape == expected.shape
    off = np.abs(actual.astype(int) - expected.astype(int)) > 1
    assert off.sum() <= 1e-3 * off.size, f"{off.sum()} of {off.size} values differ by more than 1"


@pytest.mark.skipif(not CLI.is_file(), reason="needs target/release/unclip (scripts/test builds it)")
@pytest.mark.parametrize("rng", ["fast", "torch"])
def test_same_bytes_as_the_cli(tiny, tmp_path, rng):
    out = tmp_path / "cli.png"
    subprocess.run(
        [str(CLI), "generate", "a red circle on a blue background", "--model", str(TINY), "--seed", "7",
         "--rng", rng, "--prior-steps", "2", "--decoder-steps", "2", "--sr-steps", "2", "-q", "-o", str(out)],
        check=True,
    )
    result = tiny("a red circle on a blue background", seed=7, rng=rng, output_type="np", **FEW)
    assert result.seed == 7
    assert np.array_equal(result.images[0], np.asarray(Image.open(out).convert("RGB")))


@pytest.mark.parametrize("bundle,case", [(TINY, "ref/basic"), (TINY_KANDINSKY, "ref-kandinsky/basic")])
def test_torch_rng_gives_diffusers_image(bundle, case):
    pipe = unclip.Pipeline(bundle, progress=False)
    ref = REPO / "tests" / "fixtures" / case
    spec = json.loads((ref / "case.json").read_text())
    expected = np.asarray(Image.open(ref / "image_0.png").convert("RGB"))
    kwargs = dict(
        prior_num_inference_steps=spec["prior_steps"],
        decoder_num_inference_steps=spec["decoder_steps"],
        prior_guidance_scale=spec["prior_guidance_scale"],
        decoder_guidance_scale=spec["decoder_guidance_scale"],
        height=expected.shape[0],
        width=expected.shape[1],
    )
    if "super_res_steps" in spec:
        kwargs["super_res_num_inference_steps"] = spec["super_res_steps"]
    result = pipe(spec["prompt"], seed=spec["seed"], rng="torch", output_type="np", **kwargs)
    close_images(result.images[0], expected)


def test_output_types_and_a_batch_of_prompts(tiny):
    pil = tiny(["a red circle", "a blue square"], num_images_per_prompt=2, seed=1, **FEW)
    assert len(pil.images) == 4 and all(isinstance(i, Image.Image) for i in pil.images)
    assert pil.images[0].size == (tiny.image_size, tiny.image_size)
    assert pil.image_embeds.shape == (4, tiny.embedding_dim) and pil.image_embeds.dtype == np.float32
    arr = tiny(["a red circle", "a blue square"], num_images_per_prompt=2, seed=1, output_type="np", **FEW)
    assert arr.images.shape == (4, tiny.image_size, tiny.image_size, 3) and arr.images.dtype == np.uint8
    assert all(np.array_equal(np.asarray(p), a) for p, a in zip(pil.images, arr.images))
    # prompt-major: the first two images are the first prompt's, as a batch of one makes them
    one = tiny("a red circle", num_images_per_prompt=2, seed=1, output_type="np", **FEW)
    assert not np.array_equal(arr.images[0], arr.images[2])
    assert one.images.shape[0] == 2
    with pytest.raises(ValueError, match="output_type"):
        tiny("x", output_type="pt", **FEW)


def test_exception_types(tiny, tmp_path):
    with pytest.raises(ValueError, match="steps"):
        tiny("x", prior_num_inference_steps=0)
    with pytest.raises(ValueError, match="guidance"):
        tiny("x", decoder_guidance_scale=float("nan"), **FEW)
    with pytest.raises(FileNotFoundError):
        unclip.Pipeline(tmp_path / "missing")
    broken = tmp_path / "broken"
    shutil.copytree(TINY, broken)
    manifest = json.loads((broken / "bundle.json").read_text())
    manifest["format_version"] = 99
    (broken / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(unclip.BundleError, match="format_version 99"):
        unclip.Pipeline(broken)
    (broken / "bundle.json").write_text(json.dumps({**manifest, "format_version": 1}))
    (broken / "prior.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="prior.onnx"):
        unclip.Pipeline(broken)
    with pytest.raises(unclip.ProviderUnavailable, match="CUDA"):
        unclip.Pipeline(TINY, device="cuda")
    with pytest.raises(ValueError, match="device"):
        unclip.Pipeline(TINY, device="tpu")
    with pytest.raises(unclip.Cancelled):
        tiny("x", callback_on_step_end=lambda stage, step, steps: stage != "decoder", **FEW)


def test_callback_sees_every_step(tiny):
    seen = []
    tiny("x", callback_on_step_end=lambda *a: seen.append(a), **FEW)
    assert [s for s in seen if s[0] == "prior"] == [("prior", 1, 2), ("prior", 2, 2)]
    assert ("decoder", 2, 2) in seen and ("upsampler0", 2, 2) in seen


def test_gil_is_released_while_models_run(tiny):
    """A Python thread counting in a loop makes progress while another thread generates."""
    stop = threading.Event()
    counts = []

    def count():
        n = 0
        while not stop.is_set():
            n += 1
        counts.append(n)

    counter = threading.Thread(target=count)
    started = time.perf_counter()
    counter.start()
    result = tiny("a red circle", prior_num_inference_steps=25, decoder_num_inference_steps=25,
                  super_res_num_inference_steps=7, seed=0, output_type="np")
    stop.set()
    counter.join()
    elapsed = time.perf_counter() - started
    assert result.library_seconds > 0.5 * elapsed
    # A pure-Python loop counts millions per second; with the GIL held by the run it would stall
    # for all of `library_seconds`.
    assert counts[0] > 100_000 * elapsed, (counts, elapsed)


def test_keyboard_interrupt_stops_a_run_between_steps(tiny):
    steps = []
    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        tiny("x", prior_num_inference_steps=1000, decoder_num_inference_steps=1000,
             callback_on_step_end=lambda *a: steps.append(a))
    timer.cancel()
    assert time.perf_counter() - started < 10
    assert 0 < len(steps) < 2000


def test_a_pipeline_is_shared_across_threads(tiny):
    expected = [tiny(f"prompt {i}", seed=i, output_type="np", **FEW).images for i in range(3)]
    results = [None] * 3

    def run(i):
        results[i] = tiny(f"prompt {i}", seed=i, output_type="np", **FEW).images

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(a, b) for a, b in zip(results, expected))


def test_embeddings_vary_decode_and_explore(tiny):
    text = tiny.encode_text(["a red circle", "a blue square"])
    assert text.shape == (2, tiny.embedding_dim) and text.dtype == np.float32
    source = np.zeros((64, 64, 3), np.uint8)
    source[16:48, 16:48] = (200, 30, 30)
    image = tiny.encode_image(Image.fromarray(source))
    assert np.allclose(image, tiny.encode_image(source))
    varied = tiny.vary(source, 2, seed=3, output_type="np", decoder_num_inference_steps=2,
                       super_res_num_inference_steps=2)
    assert varied.images.shape[0] == 2 and np.allclose(varied.image_embeds, image[[0, 0]])
    # Decoding the same two embeddings with the same seed is the variation run without its encoder.
    decoded = tiny.decode(varied.image_embeds, seed=3, output_type="np", decoder_num_inference_steps=2,
                          super_res_num_inference_steps=2)
    assert np.array_equal(decoded.images, varied.images)
    frames = tiny.interpolate("a red circle", source, 3, seed=0, output_type="np", **FEW)
    assert frames.images.shape[0] == 3
    assert np.allclose(unclip.slerp(frames.image_embeds[0], frames.image_embeds[2], 0.0), frames.image_embeds[0],
                       atol=1e-5)
    diff = tiny.textdiff(source, "a red square", "a blue square", 2, seed=0, output_type="np", **FEW)
    assert diff.images.shape[0] == 2


def test_kandinsky_sizes_img2img_and_weighted_interpolation(kandinsky):
    assert kandinsky.family == "kandinsky2.2"
    wide = kandinsky("a wide landscape", width=128, height=64, seed=0, output_type="np",
                     prior_num_inference_steps=2, decoder_num_inference_steps=2)
    assert wide.images.shape == (1, 64, 128, 3)
    ref = REPO / "tests" / "fixtures" / "ref-kandinsky" / "img2img_03"
    spec = json.loads((ref / "case.json").read_text())
    out = kandinsky(spec["prompt"], image=Image.open(ref / "source.png"), strength=spec["strength"],
                    seed=spec["seed"], rng="torch", output_type="np", height=64, width=64,
                    prior_num_inference_steps=spec["prior_steps"], decoder_num_inference_steps=spec["decoder_steps"])
    close_images(out.images[0], np.asarray(Image.open(ref / "image_0.png").convert("RGB")))
    mix = kandinsky.interpolate(["a red circle", np.asarray(Image.open(ref / "source.png"))], None,
                                weights=[0.5, 0.5], seed=0, output_type="np", height=64, width=64,
                                prior_num_inference_steps=2, decoder_num_inference_steps=2)
    assert mix.images.shape == (1, 64, 64, 3)
    with pytest.raises(ValueError, match="multiples of 64"):
        kandinsky("x", width=100, height=64)


def test_default_model_makes_a_1024_image(tmp_path):
    pipe = unclip.Pipeline(progress=False)
    assert pipe.model == unclip.default_model()
    image = pipe("a red circle on a blue background", seed=0, **FEW).images[0]
    image.save(tmp_path / "x.png")
    assert Image.open(tmp_path / "x.png").size == (1024, 1024)
