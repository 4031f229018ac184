"""diffusers and unclip side by side on the same checkpoint/bundle, prompt, seed, steps and threads,
in one invocation; writes `docs/benchmarks.md` (table) and `docs/benchmarks.json` (every number).
Run through `scripts/bench-compare`.

    python export/bench_compare.py CHECKPOINT BUNDLE [--unclip target/release/unclip] [--threads 2]
        [--runs 1] [--configs 25/25/7x1,5/5/2x1,5/5/2x4] [--out docs/benchmarks] [--title TEXT]

Modes: diffusers fp32 and diffusers bf16 autocast (its fastest CPU setting, `bench_diffusers.py`);
unclip exact (`--device cpu`, f32) and fast (`--device openvino --precision auto`). A mode that
cannot run here (the OpenVINO plugin offers Intel devices only) is reported with the reason, never
replaced by another mode.

Per mode and config: one cold process (load + one generation: the cold start, the image, the
peak RSS from the kernel's rusage of that child) and one warm process (`unclip bench` /
`bench_diffusers.py`, one warmup then --runs timed runs: per-stage and end-to-end medians). Images
use the torch RNG (`--rng torch`), so each mode's first image is compared with diffusers fp32's
pixel by pixel (uint8 as both write PNGs: max and mean absolute difference).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PROMPT = "a red circle on a blue background"
SEED = 0


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """Runs `cmd` to completion: wall seconds, the peak RSS of exactly this child in MiB (wait4,
    not RUSAGE_CHILDREN, which keeps the maximum over every child so far), stdout."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}):\n{stderr[-3000:]}")
    return wall, usage.ru_maxrss / 1024, stdout


def parse_config(text: str) -> dict:
    """`25/25/7x1` → prior, decoder, super-res steps and batch."""
    steps, _, batch = text.partition("x")
    prior, decoder, sr = (int(s) for s in steps.split("/"))
    return {"name": text, "prior": prior, "decoder": decoder, "sr": sr, "batch": int(batch or 1)}


def diffusers_mode(args, config: dict, autocast: bool, work: Path) -> dict:
    base = [args.python, str(HERE / "bench_diffusers.py"), str(args.checkpoint), "--prompt", PROMPT,
            "--seed", str(SEED), "--threads", str(args.threads), "--num-images", str(config["batch"]),
            "--prior-steps", str(config["prior"]), "--decoder-steps", str(config["decoder"]),
            "--sr-steps", str(config["sr"])]
    if autocast:
        base += ["--autocast", "bf16"]
    image = work / f"diffusers-{'bf16' if autocast else 'fp32'}-{config['name'].replace('/', '_')}.npy"
    cold, rss, _ = run_measured(base + ["--runs", "1", "--warmup", "0", "--save-image", str(image)])
    _, _, stdout = run_measured(base + ["--runs", str(args.runs), "--warmup", "1"])
    warm = json.loads(stdout)
    pixels = (np.load(image)[0] * 255).round().astype(np.uint8)  # diffusers' numpy_to_pil
    return {"cold_seconds": cold, "peak_rss_mib": rss, "total": warm["total"]["median"],
            "stages": {k: v["median"] for k, v in warm["stages"].items()}, "pixels": pixels}


def unclip_mode(args, config: dict, device_flags: list[str], work: Path) -> dict:
    common = ["--model", str(args.bundle), "--rng", "torch", "--seed", str(SEED), "--threads", str(args.threads),
              "--num-images", str(config["batch"]), "--prior-steps", str(config["prior"]),
              "--decoder-steps", str(config["decoder"]), "--sr-steps", str(config["sr"]), "--size", "256",
              *device_flags]
    image = work / f"unclip-{'_'.join(device_flags) or 'cpu'}-{config['name'].replace('/', '_')}.png"
    cold, rss, _ = run_measured([args.unclip, "-q", "generate", PROMPT, "-o", str(image), *common])
    _, _, stdout = run_measured([args.unclip, "-q", "bench", "--runs", str(args.runs), "--warmup", "1", PROMPT,
                                 *common])
    warm = json.loads(stdout)
    first = image if config["batch"] == 1 else image.with_name(f"{image.stem}_0{image.suffix}")
    stages = {k: v["median"] for k, v in warm["seconds"].items() if k not in ("total", "load")}
    return {"cold_seconds": cold, "peak_rss_mib": rss, "total": warm["seconds"]["total"]["median"],
            "stages": stages, "outside_ort_share": warm.get("outside_ort_share"),
            "precision": warm.get("precision"), "pixels": np.asarray(Image.open(first).convert("RGB"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path, help="Karlo-layout diffusers checkpoint")
    ap.add_argument("bundle", type=Path, help="the unclip bundle exported from it")
    ap.add_argument("--unclip", default=str(REPO / "target" / "release" / "unclip"))
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--configs", default="25/25/7x1,5/5/2x1,5/5/2x4")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks", help="writes OUT.md and OUT.json")
    ap.add_argument("--title", default=None, help="what was benchmarked (default: the checkpoint's name)")
    args = ap.parse_args()
    configs = [parse_config(c) for c in args.configs.split(",")]
    modes = {
        "diffusers fp32": lambda c, w: diffusers_mode(args, c, False, w),
        "diffusers bf16 autocast": lambda c, w: diffusers_mode(args, c, True, w),
        "unclip exact (cpu f32)": lambda c, w: unclip_mode(args, c, [], w),
        "unclip fast (openvino auto)": lambda c, w: unclip_mode(args, c, ["--device", "openvino", "--precision", "auto"], w),
    }
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for config in configs:
            reference = None
            for mode, measure in modes.items():
                print(f"{config['name']}: {mode} …", file=sys.stderr, flush=True)
                try:
                    r = measure(config, work)
                except RuntimeError as e:
                    reason = str(e).strip().splitlines()[-1].removeprefix("error: ")
                    print(f"  unavailable: {reason}", file=sys.stderr)
                    results.append({"config": config["name"], "mode": mode, "unavailable": reason})
                    continue
                pixels = r.pop("pixels")
                if reference is None:
                    reference = pixels.astype(np.int16)
                if pixels.shape == reference.shape:
                    diff = np.abs(pixels.astype(np.int16) - reference)
                    r["pixel_diff_vs_diffusers_fp32"] = {"max": int(diff.max()), "mean": float(diff.mean())}
                print(f"  {r['total']:.2f} s warm, {r['cold_seconds']:.2f} s cold, {r['peak_rss_mib']:.0f} MiB",
                      file=sys.stderr)
                results.append({"config": config["name"], "mode": mode, **r})
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    report = {"title": args.title or args.checkpoint.name, "prompt": PROMPT, "seed": SEED, "threads": args.threads,
              "runs": args.runs, "cpu": cpu, "date": time.strftime("%Y-%m-%d"), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {args.out.with_suffix('.md')} and {args.out.with_suffix('.json')}", file=sys.stderr)


def markdown(report: dict) -> str:
    lines = [
        f"# Benchmarks: {report['title']}",
        "",
        f"Written by `scripts/bench-compare` on {report['date']}: {report['cpu']}, {report['threads']} threads, "
        f"prompt \"{report['prompt']}\", seed {report['seed']}, torch RNG, median of {report['runs']} warm run(s) "
        "after one warmup. Steps are prior/decoder/super-res × batch. Stage seconds are model time; "
        "`vs fp32` is diffusers fp32's warm total over the mode's. Pixel differences are against "
        "diffusers fp32's first image (uint8).",
        "",
        "| steps × batch | mode | total (s) | vs fp32 | cold start (s) | peak RSS (MiB) | text | prior | decoder "
        "| sr256 | pixel diff max / mean |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fp32 = {r["config"]: r["total"] for r in report["results"] if r["mode"] == "diffusers fp32" and "total" in r}
    for r in report["results"]:
        if "unavailable" in r:
            lines.append(f"| {r['config']} | {r['mode']} | unavailable: {r['unavailable']} |||||||||")
            continue
        s = r["stages"]
        diff = r.get("pixel_diff_vs_diffusers_fp32")
        ratio = fp32.get(r["config"], float("nan")) / r["total"]
        pixel = f"{diff['max']} / {diff['mean']:.3f}" if diff else "—"
        lines.append(
            f"| {r['config']} | {r['mode']} | {r['total']:.2f} | {ratio:.2f}× | {r['cold_seconds']:.2f} | "
            f"{r['peak_rss_mib']:.0f} | {s.get('text', 0):.2f} | {s.get('prior', 0):.2f} | {s.get('decoder', 0):.2f} | "
            f"{s.get('sr256', 0):.2f} | {pixel} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
