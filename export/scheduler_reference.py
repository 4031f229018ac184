"""Records diffusers' UnCLIPScheduler (schedulers/scheduling_unclip.py, v0.42.1) as the ground truth
of tests/schedulers.rs.

    python export/scheduler_reference.py [--out tests/fixtures/schedulers]

Writes `<out>/unclip_reference.json` (~300 kB, deterministic: a rerun writes the same bytes):
- `betas_f64_bits`: the float64 betas of `betas_for_alpha_bar` before torch rounds them to float32
  (IEEE bits in hex, so the Rust test compares them exactly whatever its JSON float parser does);
  `betas`, `alphas`, `alphas_cumprod`: the scheduler's float32 tensors, in full (1000 values);
- `linear_betas`, `scaled_linear_betas`: `DDPMScheduler` / `DDIMScheduler` float32 betas;
- `timesteps`: `set_timesteps(N)` for several N, and `unsupported`: the N that diffusers rejects
  (N = 1 divides by zero);
- `steps`: single `UnCLIPScheduler.step` calls on fixed tensors for the three Karlo scheduler
  configurations, called as `UnCLIPPipeline.__call__` calls them (timestep and `prev_timestep` as
  0-d tensors taken from `scheduler.timesteps`, `prev_timestep=None` on the last step) or, for
  `convention == "explicit"`, with a `prev_timestep` chosen here. The variance noise is the tensor
  diffusers itself draws from a seeded generator (captured by wrapping `randn_tensor`); the Rust
  test replays it through `RecordedNoise`.

Every float32 value is written with Python's shortest round-trip repr of its float64 widening, so
parsing it as f64 and narrowing to f32 gives the exact bits back.
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO  # noqa: E402

import diffusers  # noqa: E402
import diffusers.schedulers.scheduling_unclip as scheduling_unclip  # noqa: E402
from diffusers import DDIMScheduler, DDPMScheduler, UnCLIPScheduler  # noqa: E402

# The three scheduler configurations of kakaobrain/karlo-v1-alpha (diffusers'
# scripts/convert_kakao_brain_unclip_to_diffusers.py), plus one without clipping for coverage.
CONFIGS = {
    "prior": dict(variance_type="fixed_small_log", prediction_type="sample", clip_sample=True,
                  clip_sample_range=5.0),
    "decoder": dict(variance_type="learned_range", prediction_type="epsilon", clip_sample=True,
                    clip_sample_range=1.0),
    "super_res": dict(variance_type="fixed_small_log", prediction_type="epsilon", clip_sample=True,
                      clip_sample_range=1.0),
    "super_res_noclip": dict(variance_type="fixed_small_log", prediction_type="epsilon", clip_sample=False,
                             clip_sample_range=1.0),
}
# Sample shapes: the prior works on (B, D) embeddings, the decoder and super-res on images.
SHAPES = {"prior": (2, 8), "decoder": (2, 3, 4, 4), "super_res": (2, 3, 4, 4), "super_res_noclip": (2, 3, 4, 4)}

TIMESTEP_COUNTS = [2, 3, 7, 25, 64, 250, 1000]

# (config, num_inference_steps, step_index) called with the pipeline's prev_timestep convention.
PIPELINE_STEPS = [
    ("prior", 25, 0), ("prior", 25, 12), ("prior", 25, 23), ("prior", 25, 24),
    ("decoder", 25, 0), ("decoder", 25, 12), ("decoder", 25, 24),
    ("decoder", 2, 0), ("decoder", 2, 1),
    ("decoder", 1000, 500),  # consecutive timesteps: prev_timestep == t - 1 takes betas[t]
    ("decoder", 1000, 998),
    ("super_res", 7, 0), ("super_res", 7, 3), ("super_res", 7, 5), ("super_res", 7, 6),
    ("super_res_noclip", 7, 3),
    ("super_res", 250, 100),
]
# (config, timestep, prev_timestep) called with an explicit prev_timestep (None → t − 1).
EXPLICIT_STEPS = [
    ("prior", 999, None), ("decoder", 500, None), ("decoder", 666, 333), ("super_res", 1, None),
    ("super_res", 0, None), ("decoder", 0, None),
]


def f32_list(t: torch.Tensor) -> list[float]:
    assert t.dtype == torch.float32
    return [float(v) for v in t.detach().reshape(-1).tolist()]


def tensor_json(t: torch.Tensor) -> dict:
    return {"shape": list(t.shape), "data": f32_list(t)}


def betas_f64() -> list[float]:
    """`betas_for_alpha_bar(1000)` (cosine) before its final `torch.tensor(betas, dtype=float32)`:
    the same Python float arithmetic, checked against the scheduler's float32 betas below."""
    import math

    def alpha_bar_fn(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    n = 1000
    return [min(1 - alpha_bar_fn((i + 1) / n) / alpha_bar_fn(i / n), 0.999) for i in range(n)]


def step_inputs(config: str, timestep: int, seed: int):
    """Fixed model output and sample for one step. The sample is a noised `x0` at `timestep` and the
    epsilon prediction is close to the true noise, so the predicted `x0` is of order one (some of it
    clipped, not all) rather than the huge values a random sample gives at large t."""
    g = torch.Generator("cpu").manual_seed(seed)
    shape = SHAPES[config]
    sched = UnCLIPScheduler(**CONFIGS[config])
    ac = sched.alphas_cumprod[timestep]
    x0 = torch.randn(shape, generator=g) * 0.8
    eps = torch.randn(shape, generator=g)
    sample = ac.sqrt() * x0 + (1 - ac).sqrt() * eps
    if CONFIGS[config]["prediction_type"] == "sample":
        model_output = x0 + torch.randn(shape, generator=g) * 2.5  # range 5.0 clips some values
    else:
        model_output = eps + torch.randn(shape, generator=g) * 0.3
    if CONFIGS[config]["variance_type"] == "learned_range":
        predicted_variance = torch.rand(shape, generator=g) * 2.2 - 1.1
        model_output = torch.cat([model_output, predicted_variance], dim=1)
    return model_output.contiguous(), sample.contiguous()


def run_step(config: str, n: int | None, step_index: int | None, timestep, prev_timestep, seed: int) -> dict:
    sched = UnCLIPScheduler(**CONFIGS[config])
    if n is not None:
        sched.set_timesteps(n)
        timesteps = sched.timesteps
        # exactly what UnCLIPPipeline.__call__ passes (pipelines/deprecated/unclip/pipeline_unclip.py)
        timestep = timesteps[step_index]
        prev_timestep = None if step_index == timesteps.shape[0] - 1 else timesteps[step_index + 1]
    t_int = int(timestep)
    model_output, sample = step_inputs(config, t_int, seed)

    drawn = []
    original = scheduling_unclip.randn_tensor

    def recording_randn(*args, **kwargs):
        out = original(*args, **kwargs)
        drawn.append(out.clone())
        return out

    scheduling_unclip.randn_tensor = recording_randn
    try:
        generator = torch.Generator("cpu").manual_seed(seed + 1)
        out = sched.step(model_output, timestep, sample, prev_timestep=prev_timestep, generator=generator)
    finally:
        scheduling_unclip.randn_tensor = original
    assert len(drawn) == (1 if t_int > 0 else 0), (config, t_int, len(drawn))
    return {
        "config": config,
        "convention": "pipeline" if n is not None else "explicit",
        "num_inference_steps": n,
        "step_index": step_index,
        "timestep": t_int,
        "prev_timestep": None if prev_timestep is None else int(prev_timestep),
        "model_output": tensor_json(model_output),
        "sample": tensor_json(sample),
        "noise": tensor_json(drawn[0]) if drawn else None,
        "prev_sample": tensor_json(out.prev_sample),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "schedulers")
    args = parser.parse_args()
    torch.set_num_threads(1)

    sched = UnCLIPScheduler()
    b64 = betas_f64()
    assert torch.equal(torch.tensor(b64, dtype=torch.float32), sched.betas), "betas_f64 differs from diffusers"

    timesteps = {}
    for n in TIMESTEP_COUNTS:
        s = UnCLIPScheduler()
        s.set_timesteps(n)
        timesteps[str(n)] = [int(t) for t in s.timesteps.tolist()]
    unsupported = {}
    try:
        UnCLIPScheduler().set_timesteps(1)
    except Exception as e:  # noqa: BLE001 — recording whatever diffusers raises
        unsupported["1"] = f"{type(e).__name__}: {e}"
    assert "1" in unsupported, "diffusers accepted set_timesteps(1): revisit the N = 1 definition"

    steps = []
    seed = 1000
    for config, n, i in PIPELINE_STEPS:
        steps.append(run_step(config, n, i, None, None, seed))
        seed += 10
    for config, t, prev in EXPLICIT_STEPS:
        steps.append(run_step(config, None, None, torch.tensor(t), None if prev is None else torch.tensor(prev), seed))
        seed += 10

    reference = {
        "source": "diffusers UnCLIPScheduler (schedulers/scheduling_unclip.py), written by export/scheduler_reference.py",
        "versions": {"diffusers": diffusers.__version__, "torch": torch.__version__, "numpy": np.__version__},
        "num_train_timesteps": 1000,
        "betas_f64_bits": [struct.pack(">d", b).hex() for b in b64],
        "betas": f32_list(sched.betas),
        "alphas": f32_list(sched.alphas),
        "alphas_cumprod": f32_list(sched.alphas_cumprod),
        # the linear schedules of betas.rs, as DDPMScheduler / DDIMScheduler build them
        "linear_betas": {"beta_start": 0.0001, "beta_end": 0.02, "betas": f32_list(
            DDPMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02).betas)},
        "scaled_linear_betas": {"beta_start": 0.00085, "beta_end": 0.012, "betas": f32_list(
            DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).betas)},
        "timesteps": timesteps,
        "unsupported": unsupported,
        "configs": {name: dict(UnCLIPScheduler(**cfg).config) for name, cfg in CONFIGS.items()},
        "steps": steps,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "unclip_reference.json"
    text = json.dumps(reference, indent=1, sort_keys=True)
    # one line per array of scalars: readable structure, small diffs, a third of the size
    text = re.sub(r"\[\n\s*([^\[\]{}]*?)\n\s*\]", lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]", text)
    assert json.loads(text) == reference
    path.write_text(text + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes, {len(steps)} steps)")


if __name__ == "__main__":
    main()
