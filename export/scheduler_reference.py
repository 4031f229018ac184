"""Records diffusers' schedulers (v0.42.1) as the ground truth of tests/schedulers.rs and
tests/solvers.rs.

    python export/scheduler_reference.py [--out tests/fixtures/schedulers]

Writes two files, deterministic (a rerun writes the same bytes):

`<out>/unclip_reference.json` (~300 kB), UnCLIPScheduler (schedulers/scheduling_unclip.py):
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

`<out>/solvers_reference.json` (~300 kB), DDIMScheduler, DDIMInverseScheduler and
DPMSolverMultistepScheduler (see `write_solvers_reference`): `from_config` conversions of Karlo's
configs, timesteps, sigmas, single steps, full loops of a synthetic model, DDIM round trips, and
sweeps of every N in 1..=1000.

`<out>/ddpm_reference.json` (~100 kB), DDPMScheduler (see `write_ddpm_reference`): its `__init__`
keys, `from_config` of Karlo's configs, timesteps, single steps of every variance type with the
noise diffusers draws, full loops of the synthetic model, and `add_noise`.

Every float32 value is written with Python's shortest round-trip repr of its float64 widening, so
parsing it as f64 and narrowing to f32 gives the exact bits back.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import re
import struct
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, TINY_KARLO  # noqa: E402

import diffusers  # noqa: E402
import diffusers.schedulers.scheduling_unclip as scheduling_unclip  # noqa: E402
import diffusers.schedulers.scheduling_ddim as scheduling_ddim  # noqa: E402
import diffusers.schedulers.scheduling_ddpm as scheduling_ddpm  # noqa: E402
from diffusers import (  # noqa: E402
    DDIMInverseScheduler,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UnCLIPScheduler,
)
from diffusers.utils import logging as diffusers_logging  # noqa: E402

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


def unclip_config(cfg: dict) -> dict:
    """`UnCLIPScheduler(**cfg).config`, with `_use_default_values` (built from a set, so in hash
    order) listed in `__init__` order to make the file deterministic."""
    config = dict(UnCLIPScheduler(**cfg).config)
    order = list(inspect.signature(UnCLIPScheduler.__init__).parameters)
    config["_use_default_values"] = sorted(config["_use_default_values"], key=order.index)
    return config


def write_unclip_reference(args: argparse.Namespace) -> None:

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
        "configs": {name: unclip_config(cfg) for name, cfg in CONFIGS.items()},
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


# ---- solvers_reference.json: DDIM, DDIM inversion, DPM-Solver++ ---------------------------------

SOLVER_CLASSES = {"ddim": DDIMScheduler, "ddim_inverse": DDIMInverseScheduler, "dpm++": DPMSolverMultistepScheduler}
KARLO_STAGES = ["prior", "decoder", "super_res"]


def karlo_config_json(stage: str) -> dict:
    return json.loads((TINY_KARLO / f"{stage}_scheduler" / "scheduler_config.json").read_text())


def from_karlo(cls, stage: str, **overrides):
    """`cls.from_config(UnCLIPScheduler.from_config(<Karlo scheduler_config.json>).config)`: how a
    diffusers user swaps the scheduler of a Karlo pipeline. Loading from the JSON matters: every
    key of the file counts as given, so `beta_schedule: squaredcos_cap_v2` carries over."""
    unclip = UnCLIPScheduler.from_config(karlo_config_json(stage))
    return cls.from_config(unclip.config, **overrides)


# name → factory. Karlo's three stages converted, variations of spacing and solver options, and
# configs with linear / scaled_linear betas.
SOLVER_CONFIGS = {
    "ddim_prior": lambda: from_karlo(DDIMScheduler, "prior"),
    "ddim_decoder": lambda: from_karlo(DDIMScheduler, "decoder"),
    "ddim_super_res": lambda: from_karlo(DDIMScheduler, "super_res"),
    "ddim_decoder_linspace": lambda: from_karlo(DDIMScheduler, "decoder", timestep_spacing="linspace"),
    "ddim_decoder_trailing": lambda: from_karlo(DDIMScheduler, "decoder", timestep_spacing="trailing"),
    "ddim_linear": lambda: DDIMScheduler(beta_schedule="linear", clip_sample=False, set_alpha_to_one=False,
                                         steps_offset=1),
    "ddim_scaled_trailing": lambda: DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                                  clip_sample=False, prediction_type="sample",
                                                  timestep_spacing="trailing"),
    "inverse_prior": lambda: from_karlo(DDIMInverseScheduler, "prior"),
    "inverse_decoder": lambda: from_karlo(DDIMInverseScheduler, "decoder"),
    "inverse_super_res": lambda: from_karlo(DDIMInverseScheduler, "super_res"),
    "inverse_decoder_trailing": lambda: from_karlo(DDIMInverseScheduler, "decoder", timestep_spacing="trailing"),
    "inverse_linear": lambda: DDIMInverseScheduler(beta_schedule="linear", clip_sample=False, set_alpha_to_one=False,
                                                   steps_offset=1),
    "dpm_prior": lambda: from_karlo(DPMSolverMultistepScheduler, "prior"),
    "dpm_decoder": lambda: from_karlo(DPMSolverMultistepScheduler, "decoder"),
    "dpm_super_res": lambda: from_karlo(DPMSolverMultistepScheduler, "super_res"),
    "dpm_linear_leading": lambda: DPMSolverMultistepScheduler(beta_schedule="linear", timestep_spacing="leading",
                                                              steps_offset=1),
    "dpm_heun_trailing": lambda: from_karlo(DPMSolverMultistepScheduler, "decoder", solver_type="heun",
                                            timestep_spacing="trailing"),
    "dpm_order1": lambda: from_karlo(DPMSolverMultistepScheduler, "super_res", solver_order=1),
    "dpm_sigma_min": lambda: from_karlo(DPMSolverMultistepScheduler, "super_res", final_sigmas_type="sigma_min"),
    "dpm_clipped": lambda: from_karlo(DPMSolverMultistepScheduler, "super_res", lambda_min_clipped=-5.1,
                                      euler_at_final=True),
}
TIMESTEP_COUNTS_SOLVERS = [1, 2, 5, 7, 25, 61, 1000, 1001]

# Single steps: (config, N, step_index, eta). DPM-Solver++ steps start from a fresh solver
# (step 0); its later steps are covered by the loops.
SOLVER_STEPS = [
    ("ddim_prior", 25, 0, 0.0), ("ddim_prior", 25, 24, 0.0), ("ddim_decoder", 25, 12, 0.0),
    ("ddim_decoder", 25, 12, 0.5), ("ddim_decoder", 25, 24, 1.0), ("ddim_super_res", 7, 3, 1.0),
    ("ddim_decoder_trailing", 7, 6, 0.0), ("ddim_decoder_linspace", 25, 1, 0.3), ("ddim_linear", 7, 6, 0.0),
    ("ddim_scaled_trailing", 5, 2, 0.7),
    ("inverse_decoder", 25, 0, None), ("inverse_decoder", 25, 24, None), ("inverse_super_res", 7, 3, None),
    ("inverse_decoder_trailing", 7, 0, None), ("inverse_linear", 7, 0, None),
    ("dpm_prior", 25, 0, None), ("dpm_decoder", 25, 0, None), ("dpm_super_res", 1, 0, None),
    ("dpm_linear_leading", 7, 0, None),
]
# Full loops of the synthetic model: (config, N, eta).
SOLVER_LOOPS = (
    [("ddim_prior", n, 0.0) for n in (2, 5, 25)] + [("ddim_decoder", n, 0.0) for n in (2, 5, 25)]
    + [("ddim_super_res", 5, 0.0), ("ddim_linear", 5, 0.0), ("ddim_linear", 25, 0.0),
       ("ddim_decoder_trailing", 5, 0.0), ("ddim_decoder_trailing", 25, 0.0), ("ddim_decoder_linspace", 25, 0.0),
       ("ddim_scaled_trailing", 7, 0.0),
       ("ddim_super_res", 5, 0.5), ("ddim_decoder", 25, 1.0), ("ddim_decoder_trailing", 7, 0.8)]
    + [("inverse_decoder", 5, None), ("inverse_decoder", 25, None), ("inverse_super_res", 5, None),
       ("inverse_decoder_trailing", 5, None), ("inverse_decoder_trailing", 25, None), ("inverse_linear", 5, None)]
    + [("dpm_prior", n, None) for n in (2, 5, 25)] + [("dpm_decoder", n, None) for n in (2, 5, 25)]
    + [("dpm_super_res", 5, None), ("dpm_linear_leading", 5, None), ("dpm_linear_leading", 25, None),
       ("dpm_heun_trailing", 5, None), ("dpm_heun_trailing", 25, None), ("dpm_order1", 5, None),
       ("dpm_sigma_min", 5, None), ("dpm_sigma_min", 25, None), ("dpm_clipped", 25, None)]
)
# DDIM inversion then DDIM back (η = 0, same N and spacing): (inverse config, DDIM config, N).
ROUND_TRIPS = [
    ("inverse_super_res", "ddim_super_res", 5), ("inverse_super_res", "ddim_super_res", 25),
    ("inverse_decoder_trailing", "ddim_decoder_trailing", 7), ("inverse_linear", "ddim_linear", 25),
]
# Every N in 1..=1000 for each spacing (cosine betas, T = 1000).
SWEEPS = (
    [("ddim", dict(timestep_spacing=sp)) for sp in ("linspace", "leading", "trailing")]
    + [("ddim", dict(timestep_spacing="leading", steps_offset=1))]
    + [("ddim_inverse", dict(timestep_spacing=sp)) for sp in ("linspace", "leading", "trailing")]
    + [("ddim_inverse", dict(timestep_spacing="leading", steps_offset=1))]
    + [("dpm++", dict(timestep_spacing=sp)) for sp in ("linspace", "leading", "trailing")]
    + [("dpm++", dict(timestep_spacing="leading", steps_offset=1))]
    + [("dpm++", dict(timestep_spacing=sp, lambda_min_clipped=-5.1)) for sp in ("linspace", "leading", "trailing")]
)
HASH_PRIME = 2**61 - 1


def config_json(scheduler) -> dict:
    """The scheduler's config as diffusers would save it, with −∞ (`lambda_min_clipped`'s
    default, written `-Infinity` by Python, which is not JSON) as null."""
    config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    config["_class_name"] = type(scheduler).__name__
    for key, value in config.items():
        if isinstance(value, float) and math.isinf(value):
            assert value < 0, (key, value)
            config[key] = None
    return config


def class_key(name: str) -> str:
    return "ddim_inverse" if name.startswith("inverse") else "dpm++" if name.startswith("dpm") else "ddim"


def shape_for(name: str, loop: bool) -> tuple:
    """The prior works on (B, D) embeddings, the other stages on images; loops use smaller tensors."""
    if "prior" in name:
        return (2, 4) if loop else (2, 8)
    return (1, 3, 2, 2) if loop else (1, 3, 4, 4)


def usable(timesteps: list[int], increasing: bool) -> str | None:
    """None when the list is a schedule; else why not (mirrors `timestep_problem` in Rust)."""
    if not timesteps:
        return "empty"
    if any(t < 0 or t >= 1000 for t in timesteps):
        return "out of range"
    pairs = list(zip(timesteps, timesteps[1:]))
    if not all((a < b) if increasing else (a > b) for a, b in pairs):
        return "repeats"
    return None


def synthetic_model(sample: torch.Tensor, timestep) -> torch.Tensor:
    """The deterministic stand-in for a network of the loops, computable bit for bit in Rust:
    `0.9·x + 0.1·f32(sin(t/100))` in float32."""
    bias = torch.tensor(math.sin(int(timestep) / 100.0), dtype=torch.float32)
    return 0.9 * sample + 0.1 * bias


def with_variance_channels(name: str, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """DPM-Solver++ with Karlo's decoder config (`variance_type: learned_range`) takes the 6-channel
    output and slices `[:, :3]`; DDIM would fail to broadcast it, so it gets the 3 channels."""
    if name.startswith("dpm") and "decoder" in name:
        return torch.cat([model_output, torch.tanh(sample)], dim=1)
    return model_output


class DrawRecorder:
    """Captures the tensors `DDIMScheduler.step` draws (its module-level `randn_tensor`)."""

    def __init__(self):
        self.drawn = []

    def __enter__(self):
        self.original = scheduling_ddim.randn_tensor

        def recording_randn(*args, **kwargs):
            out = self.original(*args, **kwargs)
            self.drawn.append(out.clone())
            return out

        scheduling_ddim.randn_tensor = recording_randn
        return self

    def __exit__(self, *exc):
        scheduling_ddim.randn_tensor = self.original


def solver_step(sched, name: str, t, model_output, sample, eta, generator):
    if class_key(name) == "ddim":
        return sched.step(model_output, t, sample, eta=eta, generator=generator).prev_sample
    return sched.step(model_output, t, sample).prev_sample


def run_solver_step(name: str, n: int, index: int, eta, seed: int) -> dict:
    sched = SOLVER_CONFIGS[name]()
    sched.set_timesteps(n)
    t = sched.timesteps[index]
    g = torch.Generator("cpu").manual_seed(seed)
    shape = shape_for(name, loop=False)
    ac = sched.alphas_cumprod[int(t)]
    x0 = torch.randn(shape, generator=g) * 0.8
    eps = torch.randn(shape, generator=g)
    sample = (ac.sqrt() * x0 + (1 - ac).sqrt() * eps).contiguous()
    if sched.config.prediction_type == "sample":
        model_output = x0 + torch.randn(shape, generator=g) * 2.5
    else:
        model_output = eps + torch.randn(shape, generator=g) * 0.3
    model_output = with_variance_channels(name, model_output, sample).contiguous()
    with DrawRecorder() as recorder:
        out = solver_step(sched, name, t, model_output, sample, eta, torch.Generator("cpu").manual_seed(seed + 1))
    assert len(recorder.drawn) == (1 if eta else 0), (name, eta, len(recorder.drawn))
    return {
        "class": class_key(name), "config": name, "num_inference_steps": n, "step_index": index,
        "timestep": int(t), "eta": eta, "model_output": tensor_json(model_output), "sample": tensor_json(sample),
        "noise": tensor_json(recorder.drawn[0]) if recorder.drawn else None, "prev_sample": tensor_json(out),
    }


def run_loop(name: str, n: int, eta, seed: int, start: torch.Tensor | None = None) -> dict:
    sched = SOLVER_CONFIGS[name]()
    sched.set_timesteps(n)
    shape = shape_for(name, loop=True)
    if start is None:
        start = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))
        if class_key(name) == "ddim_inverse":
            start = start * 0.5
    generator = torch.Generator("cpu").manual_seed(seed + 1)
    sample, samples = start, []
    with DrawRecorder() as recorder:
        for t in sched.timesteps:
            model_output = with_variance_channels(name, synthetic_model(sample, t), sample)
            sample = solver_step(sched, name, t, model_output, sample, eta, generator)
            samples.append(sample)
    assert len(recorder.drawn) == (len(samples) if eta else 0)
    assert all(torch.isfinite(s).all() for s in samples), name
    return {
        "class": class_key(name), "config": name, "num_inference_steps": n, "eta": eta,
        "timesteps": [int(t) for t in sched.timesteps], "start": tensor_json(start),
        "noise": [tensor_json(z) for z in recorder.drawn], "samples": [tensor_json(s) for s in samples],
    }


def sweep(key: str, overrides: dict) -> dict:
    """set_timesteps(N) for every N in 1..=1000: the usable lists as one hash (h ← h·1000003 + v
    mod 2⁶¹ − 1 over N, then each t + 2), the unusable N with why, and the N diffusers rejects."""
    cls = SOLVER_CLASSES[key]
    config = config_json(cls(beta_schedule="squaredcos_cap_v2", **overrides))
    h, count, unusable, rejected = 0, 0, {}, {}
    for n in range(1, 1001):
        sched = cls(beta_schedule="squaredcos_cap_v2", **overrides)
        try:
            sched.set_timesteps(n)
        except Exception as e:  # noqa: BLE001 — recording whatever diffusers raises
            rejected.setdefault(f"{type(e).__name__}: {e}", []).append(n)
            continue
        timesteps = [int(t) for t in sched.timesteps]
        problem = usable(timesteps, increasing=key == "ddim_inverse")
        if problem:
            unusable[str(n)] = problem
            continue
        count += 1
        h = (h * 1000003 + n) % HASH_PRIME
        for t in timesteps:
            h = (h * 1000003 + t + 2) % HASH_PRIME
    return {"class": key, "config": config, "hash": h, "usable": count, "unusable": unusable,
            "rejected": [{"message": m, "n": ns} for m, ns in rejected.items()]}


def write_solvers_reference(out: Path) -> None:
    diffusers_logging.set_verbosity_error()  # from_config's notes on ignored keys
    configs = {name: config_json(factory()) for name, factory in SOLVER_CONFIGS.items()}
    for cls in SOLVER_CLASSES.values():
        assert torch.equal(cls(beta_schedule="squaredcos_cap_v2").alphas_cumprod, UnCLIPScheduler().alphas_cumprod)

    conversions = {}
    for stage in KARLO_STAGES:
        unclip = UnCLIPScheduler.from_config(karlo_config_json(stage))
        entry = {"unclip": karlo_config_json(stage)}
        for key, cls in SOLVER_CLASSES.items():
            entry[key] = config_json(cls.from_config(unclip.config))
        conversions[stage] = entry
    # Built in Python without naming beta_schedule, the UnCLIPScheduler lists it in
    # `_use_default_values` and from_config drops it: DDIM gets linear betas.
    python_built = config_json(DDIMScheduler.from_config(UnCLIPScheduler(**CONFIGS["decoder"]).config))
    assert python_built["beta_schedule"] == "linear"
    assert conversions["decoder"]["ddim"]["beta_schedule"] == "squaredcos_cap_v2"
    init_keys = {key: sorted(k for k in inspect.signature(cls.__init__).parameters if k not in ("self", "kwargs"))
                 for key, cls in SOLVER_CLASSES.items()}

    timesteps, rejected, sigmas = {}, {}, {}
    for name, factory in SOLVER_CONFIGS.items():
        timesteps[name], sigmas[name] = {}, {}
        for n in TIMESTEP_COUNTS_SOLVERS:
            sched = factory()
            try:
                sched.set_timesteps(n)
            except Exception as e:  # noqa: BLE001
                rejected.setdefault(name, {})[str(n)] = f"{type(e).__name__}: {e}"
                continue
            listed = [int(t) for t in sched.timesteps]
            entry = {"usable": usable(listed, class_key(name) == "ddim_inverse") is None, "len": len(listed)}
            if n <= 100:  # the long lists are covered by the sweeps' hashes
                entry["timesteps"] = listed
            timesteps[name][str(n)] = entry
            if class_key(name) == "dpm++" and n <= 100 and entry["usable"]:
                sigmas[name][str(n)] = f32_list(sched.sigmas)
        if not sigmas[name]:
            del sigmas[name]

    steps = [run_solver_step(name, n, i, eta, 5000 + 10 * k) for k, (name, n, i, eta) in enumerate(SOLVER_STEPS)]
    loops = [run_loop(name, n, eta, 7000 + 10 * k) for k, (name, n, eta) in enumerate(SOLVER_LOOPS)]

    round_trips = []
    for k, (inverse, ddim, n) in enumerate(ROUND_TRIPS):
        x0 = torch.randn(shape_for(inverse, loop=True), generator=torch.Generator("cpu").manual_seed(9000 + k)) * 0.5
        forward = run_loop(inverse, n, None, 0, start=x0)
        back = run_loop(ddim, n, 0.0, 0, start=forward_end(forward))
        round_trips.append({"inverse_config": inverse, "ddim_config": ddim, "num_inference_steps": n,
                            "x0": tensor_json(x0), "inverted": forward["samples"][-1],
                            "reconstructed": back["samples"][-1]})

    # DDIM inversion of a sample prediction from ᾱ = 1 divides by √(1 − 1) = 0.
    inverse_prior = SOLVER_CONFIGS["inverse_prior"]()
    inverse_prior.set_timesteps(5)
    x = torch.full((2, 4), 0.5)
    first = inverse_prior.step(synthetic_model(x, inverse_prior.timesteps[0]), inverse_prior.timesteps[0], x)
    facts = {"inverse_sample_prediction_first_step_finite": bool(torch.isfinite(first.prev_sample).all())}

    reference = {
        "source": "diffusers DDIMScheduler, DDIMInverseScheduler, DPMSolverMultistepScheduler, written by "
                  "export/scheduler_reference.py",
        "versions": {"diffusers": diffusers.__version__, "torch": torch.__version__, "numpy": np.__version__},
        # squaredcos_cap_v2: UnCLIPScheduler's table in unclip_reference.json (asserted equal above)
        "alphas_cumprod": {
            "linear": f32_list(DDIMScheduler(beta_schedule="linear").alphas_cumprod),
            "scaled_linear": f32_list(SOLVER_CONFIGS["ddim_scaled_trailing"]().alphas_cumprod),
        },
        "configs": configs,
        "conversions": conversions,
        "python_built_unclip_to_ddim": python_built,
        "init_keys": init_keys,
        "timesteps": timesteps,
        "rejected": rejected,
        "sigmas": sigmas,
        "steps": steps,
        "loops": loops,
        "round_trips": round_trips,
        "sweeps": [sweep(key, overrides) for key, overrides in SWEEPS],
        "facts": facts,
    }
    path = out / "solvers_reference.json"
    path.write_text(compact_json(reference))
    print(f"wrote {path} ({path.stat().st_size} bytes, {len(steps)} steps, {len(loops)} loops)")


def forward_end(loop: dict) -> torch.Tensor:
    last = loop["samples"][-1]
    return torch.tensor(last["data"], dtype=torch.float32).reshape(last["shape"])


def compact_json(reference: dict) -> str:
    """`json.dumps` with one line per array of scalars (as `unclip_reference.json`)."""
    text = json.dumps(reference, indent=1, sort_keys=True, allow_nan=False)
    text = re.sub(r"\[\n\s*([^\[\]{}]*?)\n\s*\]", lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]", text)
    assert json.loads(text) == reference
    return text + "\n"


# ---- ddpm_reference.json: DDPMScheduler ---------------------------------------------------------

# Kandinsky 2.2's decoder scheduler as the published checkpoint's diffusers config describes it
# (DDPMScheduler, linear betas 0.00085 → 0.012, no clipping, steps_offset 1, leading spacing,
# learned_range), and variations of each option the step reads.
KANDINSKY_DDPM = dict(beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                      steps_offset=1, timestep_spacing="leading", variance_type="learned_range")
DDPM_CONFIGS = {
    "kandinsky": lambda: DDPMScheduler(**KANDINSKY_DDPM),
    "kandinsky_fixed_small": lambda: DDPMScheduler(**{**KANDINSKY_DDPM, "variance_type": "fixed_small"}),
    "default": lambda: DDPMScheduler(),
    "fixed_small_log_sample": lambda: DDPMScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                                    clip_sample_range=2.0),
    "fixed_large_trailing": lambda: DDPMScheduler(variance_type="fixed_large", timestep_spacing="trailing",
                                                  beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "learned_linspace": lambda: DDPMScheduler(variance_type="learned", timestep_spacing="linspace",
                                              beta_schedule="squaredcos_cap_v2"),
    "karlo_decoder": lambda: DDPMScheduler.from_config(UnCLIPScheduler.from_config(karlo_config_json("decoder")).config),
    "karlo_prior": lambda: DDPMScheduler.from_config(UnCLIPScheduler.from_config(karlo_config_json("prior")).config),
}
# (config, N, step_index): first, middle and last steps (the last of `leading` + offset 1 is t = 1,
# which still draws noise; of the others t = 0, which does not).
DDPM_STEPS = [
    ("kandinsky", 100, 0), ("kandinsky", 100, 50), ("kandinsky", 100, 99), ("kandinsky", 25, 24),
    ("kandinsky_fixed_small", 25, 3), ("default", 10, 0), ("default", 10, 9),
    ("fixed_small_log_sample", 7, 2), ("fixed_large_trailing", 7, 3), ("fixed_large_trailing", 7, 6),
    ("learned_linspace", 5, 1), ("learned_linspace", 5, 4), ("karlo_decoder", 25, 12), ("karlo_prior", 25, 0),
]
DDPM_LOOPS = [("kandinsky", 5), ("kandinsky", 25), ("kandinsky_fixed_small", 5), ("default", 5),
              ("fixed_large_trailing", 7), ("learned_linspace", 5), ("karlo_decoder", 25)]
DDPM_TIMESTEP_COUNTS = [1, 2, 5, 7, 25, 100, 1000]


def ddpm_learned(sched) -> bool:
    return sched.config.variance_type in ("learned", "learned_range")


def ddpm_shape(name: str, loop: bool) -> tuple:
    if "prior" in name:
        return (2, 4) if loop else (2, 8)
    return (1, 4, 2, 2) if loop else (2, 4, 4, 4)


class DdpmDrawRecorder:
    """Captures the tensors `DDPMScheduler.step` draws (its module-level `randn_tensor`)."""

    def __enter__(self):
        self.drawn = []
        self.original = scheduling_ddpm.randn_tensor

        def recording_randn(*args, **kwargs):
            out = self.original(*args, **kwargs)
            self.drawn.append(out.clone())
            return out

        scheduling_ddpm.randn_tensor = recording_randn
        return self

    def __exit__(self, *exc):
        scheduling_ddpm.randn_tensor = self.original


def ddpm_output(sched, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """A learned variance rides in a second half of channels, in [-1, 1] for `learned_range`
    (the model's range) and positive for `learned` (a variance)."""
    if sched.config.variance_type == "learned_range":
        return torch.cat([model_output, torch.tanh(sample)], dim=1)
    if sched.config.variance_type == "learned":
        return torch.cat([model_output, 0.01 * torch.sigmoid(sample)], dim=1)
    return model_output


def run_ddpm_step(name: str, n: int, index: int, seed: int) -> dict:
    sched = DDPM_CONFIGS[name]()
    sched.set_timesteps(n)
    t = sched.timesteps[index]
    g = torch.Generator("cpu").manual_seed(seed)
    shape = ddpm_shape(name, loop=False)
    ac = sched.alphas_cumprod[int(t)]
    x0 = torch.randn(shape, generator=g) * 0.8
    eps = torch.randn(shape, generator=g)
    sample = ac.sqrt() * x0 + (1 - ac).sqrt() * eps
    prediction = x0 if sched.config.prediction_type == "sample" else eps
    model_output = ddpm_output(sched, prediction + 0.05 * torch.randn(shape, generator=g), sample)
    step_generator = torch.Generator("cpu").manual_seed(seed + 1)
    with DdpmDrawRecorder() as rec:
        prev = sched.step(model_output, t, sample, generator=step_generator).prev_sample
    return {"config": name, "num_inference_steps": n, "step_index": index, "timestep": int(t),
            "sample": tensor_json(sample), "model_output": tensor_json(model_output),
            "noise": [tensor_json(d) for d in rec.drawn], "prev_sample": tensor_json(prev)}


def run_ddpm_loop(name: str, n: int, seed: int) -> dict:
    sched = DDPM_CONFIGS[name]()
    sched.set_timesteps(n)
    g = torch.Generator("cpu").manual_seed(seed)
    sample = torch.randn(ddpm_shape(name, loop=True), generator=g)
    start = sample.clone()
    draws = []
    with DdpmDrawRecorder() as rec:
        for t in sched.timesteps:
            model_output = ddpm_output(sched, synthetic_model(sample, t), sample)
            sample = sched.step(model_output, t, sample, generator=g).prev_sample
        draws = rec.drawn
    return {"config": name, "num_inference_steps": n, "start": tensor_json(start),
            "noise": [tensor_json(d) for d in draws], "end": tensor_json(sample)}


def write_ddpm_reference(out: Path) -> None:
    init_keys = [k for k in inspect.signature(DDPMScheduler.__init__).parameters if k != "self"]
    configs = {name: config_json(make()) for name, make in DDPM_CONFIGS.items()}
    timesteps = {name: {str(n): [int(t) for t in (lambda s: (s.set_timesteps(n), s.timesteps)[1])(make())]
                        for n in DDPM_TIMESTEP_COUNTS} for name, make in DDPM_CONFIGS.items()}
    steps = [run_ddpm_step(name, n, i, seed=300 + k) for k, (name, n, i) in enumerate(DDPM_STEPS)]
    loops = [run_ddpm_loop(name, n, seed=400 + k) for k, (name, n) in enumerate(DDPM_LOOPS)]
    sched = DDPM_CONFIGS["kandinsky"]()
    g = torch.Generator("cpu").manual_seed(500)
    x0, noise = torch.randn((2, 4, 3, 3), generator=g), torch.randn((2, 4, 3, 3), generator=g)
    add_noise = [{"timestep": t, "original": tensor_json(x0), "noise": tensor_json(noise),
                  "noisy": tensor_json(sched.add_noise(x0, noise, torch.tensor([t])))} for t in (0, 1, 250, 999)]
    reference = {"diffusers_version": diffusers.__version__, "init_keys": init_keys, "configs": configs,
                 "alphas_cumprod": {name: f32_list(make().alphas_cumprod) for name, make in DDPM_CONFIGS.items()
                                    if name in ("kandinsky", "default", "fixed_large_trailing")},
                 "timesteps": timesteps, "steps": steps, "loops": loops, "add_noise": add_noise}
    path = out / "ddpm_reference.json"
    path.write_text(compact_json(reference))
    print(f"wrote {path} ({path.stat().st_size} bytes, {len(steps)} steps, {len(loops)} loops)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "schedulers")
    args = parser.parse_args()
    torch.set_num_threads(1)
    write_unclip_reference(args)
    write_solvers_reference(args.out)
    write_ddpm_reference(args.out)


if __name__ == "__main__":
    main()
