"""What every shapes training script shares: flags, run directories, logging, checkpoints, EMA,
per-step random generators.

A run directory (default `export/shapes/runs/<config name>/`, git-ignored) holds
- `config.json`   the config the run started with (a resumed run must be given the same one);
- `checkpoint.pt` model, EMA and optimizer state plus the step, written atomically every
                  `save_every` steps and when the script stops (--max-steps, --max-minutes, Ctrl-C);
- `train.log`     the log lines also printed on stdout; `metrics.jsonl` the same numbers as JSON.
Starting a script on an existing run directory resumes it. Each step draws its data and noise from
generators seeded by (seed, step), so a run resumed at step k continues exactly as an
uninterrupted run would (up to float reduction order across thread counts).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"
CHECKPOINT = "checkpoint.pt"


def arguments(description: str, default_config: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=default_config,
                    help=f"name in export/shapes/configs/ or a JSON path (default {default_config})")
    ap.add_argument("--run-dir", type=Path, help="default: export/shapes/runs/<config name>")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--max-steps", type=int, help="stop at this global step (default: the config's steps)")
    ap.add_argument("--max-minutes", type=float, help="stop after this many minutes of this session")
    return ap


def add_init_from(ap: argparse.ArgumentParser) -> None:
    """`--init-from RUN`, for the scripts that fine-tune (`restore`)."""
    ap.add_argument("--init-from", type=Path,
                    help="a run directory of the same kind whose weights, EMA and optimizer start this new run "
                         "(a fine-tune with another config; ignored when the run already has a checkpoint)")


class Run:
    """A run directory: config snapshot, log, metrics and the checkpoint."""

    def __init__(self, args: argparse.Namespace, config: dict):
        torch.set_num_threads(args.threads)
        name = Path(args.config).stem
        self.dir: Path = args.run_dir or RUNS / name
        self.dir.mkdir(parents=True, exist_ok=True)
        saved = self.dir / "config.json"
        if saved.exists():
            previous = json.loads(saved.read_text())
            if previous != config:
                raise SystemExit(f"{self.dir} was started with a different config ({saved}); "
                                 "use another --run-dir or delete the run")
        else:
            saved.write_text(json.dumps(config, indent=2) + "\n")
        self.config = config
        self.train = config["train"]
        self.max_steps = args.max_steps if args.max_steps is not None else self.train["steps"]
        self.deadline = time.time() + 60 * args.max_minutes if args.max_minutes else None
        self.threads = args.threads
        self._log = open(self.dir / "train.log", "a", buffering=1)
        self._metrics = open(self.dir / "metrics.jsonl", "a", buffering=1)
        self._stop_signal = False
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame):
        if self._stop_signal:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self._stop_signal = True
        self.log("stop requested: saving at the end of this step (Ctrl-C again to abort)")

    def log(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        print(line, flush=True)
        self._log.write(line + "\n")

    def metrics(self, record: dict) -> None:
        self._metrics.write(json.dumps(record) + "\n")

    def should_stop(self, step: int) -> str | None:
        """Why to stop before running `step` (0-based count of finished steps), or None."""
        if step >= self.max_steps:
            return f"reached step {step} (--max-steps / config steps {self.max_steps})"
        if self.deadline is not None and time.time() >= self.deadline:
            return "reached --max-minutes"
        if self._stop_signal:
            return "stop requested"
        return None

    # -- checkpoints ---------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / CHECKPOINT

    def load(self) -> dict | None:
        if not self.checkpoint_path.exists():
            return None
        return torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)

    def save(self, state: dict) -> None:
        tmp = self.dir / f".{CHECKPOINT}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_path)


class EMA:
    """Exponential moving average of parameters with the usual warm-up (decay grows as
    (1 + n) / (10 + n) up to `decay`), as diffusion codebases keep for sampling."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for s, p in zip(self.shadow.parameters(), module.parameters()):
            s.lerp_(p.detach(), 1 - d)
        for s, b in zip(self.shadow.buffers(), module.buffers()):
            s.copy_(b)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "model": self.shadow.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]
        self.shadow.load_state_dict(state["model"])


def generators(seed: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """The step's data generator (numpy) and noise generator (torch), both fixed by (seed, step)."""
    rng = np.random.default_rng([seed, step])
    g = torch.Generator().manual_seed(int(rng.integers(2**62)))
    return rng, g


def learning_rate(train: dict, step: int) -> float:
    """Linear warm-up to `lr`, then constant (runs may be extended past their planned steps), or
    cosine decay to `lr * final_lr_fraction` over `steps` when `schedule` is "cosine"."""
    lr, warmup = train["lr"], train.get("warmup_steps", 0)
    if step < warmup:
        return lr * (step + 1) / warmup
    if train.get("schedule", "constant") == "cosine":
        progress = min(1.0, (step - warmup) / max(1, train["steps"] - warmup))
        floor = train.get("final_lr_fraction", 0.1)
        return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
    return lr


def optimizer(params, train: dict) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms and embeddings-like 1-D parameters."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": train.get("weight_decay", 0.0)}, {"params": no_decay, "weight_decay": 0.0}],
        lr=train["lr"], betas=tuple(train.get("betas", (0.9, 0.999))), eps=1e-8,
    )


class Meter:
    """Running means of named values between two log lines, and seconds per step."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.count = 0
        self.started = time.time()

    def add(self, **values: float) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1

    def flush(self) -> dict:
        n = max(1, self.count)
        out = {k: v / n for k, v in self.sums.items()}
        out["s_per_step"] = (time.time() - self.started) / n
        self.sums, self.count, self.started = {}, 0, time.time()
        return out


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16, Linux /proc/cpuinfo flags).
    Without it torch emulates bf16 convolutions: measured 2026-12-05 on an AVX2-only AMD EPYC, the
    decoder's bf16-autocast step took > 12 s against 0.78 s on the AVX512-BF16 machine of the day
    before."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(train: dict):
    """bf16 autocast on CPU when the config asks for it and the CPU has native bf16 (≈1.4× faster
    convolutions with AVX512-BF16; weights, optimizer and losses stay float32); float32 otherwise,
    which `Run` logs."""
    if train.get("autocast_bf16", False) and cpu_has_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def train_loop(run: Run, step_fn, state_fn, start_step: int) -> int:
    """Runs `step_fn(step) -> dict of floats` until `run.should_stop`; logs every `log_every`
    steps, saves `state_fn(step)` every `save_every` steps and at the end. Returns the step."""
    train = run.train
    meter = Meter()
    step = start_step
    run.log(f"run {run.dir} from step {step} to {run.max_steps}, threads {run.threads}")
    if train.get("autocast_bf16", False) and not cpu_has_bf16():
        run.log("autocast_bf16: this CPU has no native bf16 (AVX512-BF16, AMX), training in float32")
    while (reason := run.should_stop(step)) is None:
        values = step_fn(step)
        step += 1
        meter.add(**values)
        if step % train.get("log_every", 10) == 0 or run.should_stop(step):
            record = {"step": step, **meter.flush()}
            run.metrics(record)
            run.log(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
        if step % train["save_every"] == 0:
            run.save(state_fn(step))
    run.save(state_fn(step))
    run.log(f"stopped at step {step}: {reason}; saved {run.checkpoint_path}")
    return step


def restore(run: Run, init_from: Path | None, kind: str, model: torch.nn.Module, ema: "EMA",
            opt: torch.optim.Optimizer, check=None) -> int:
    """Resumes `run` from its checkpoint, or else starts it from `init_from`'s weights, EMA and
    optimizer (`--init-from`); returns the step to start at. `check(state, where)` may refuse a
    checkpoint (e.g. one trained on another CLIP)."""
    if (state := run.load()) is not None:
        where, start = run.dir, state["step"]
    elif init_from is not None:
        state, where, start = require_run(init_from, kind), init_from, 0
    else:
        return 0
    if check is not None:
        check(state, where)
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["optimizer"])
    if start == 0:
        run.log(f"initialized from {where} at its step {state['step']}")
    return start


def require_run(path: Path, what: str) -> dict:
    """The checkpoint of another run this script builds on (e.g. the CLIP run for the prior)."""
    ckpt = path / CHECKPOINT
    if not ckpt.exists():
        raise SystemExit(f"{what}: no {ckpt}; train it first (see export/shapes/README.md)")
    return torch.load(ckpt, map_location="cpu", weights_only=False)


def assembled_components(checkpoint: Path) -> dict:
    """An assembled checkpoint's provenance (assemble.py's shapes_unclip.json): per component, the
    run, step and config that made it."""
    return json.loads((checkpoint / "shapes_unclip.json").read_text())["components"]


def ensure_import_path() -> None:
    for p in (str(HERE), str(HERE.parent)):
        if p not in sys.path:
            sys.path.insert(0, p)
